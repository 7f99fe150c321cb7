//! Producer settings, named after AWS's KPL where the KPL has the same setting, with the
//! same defaults.

use std::time::Duration;

use crate::collector::{PUT_RECORDS_MAX_COUNT, PUT_RECORDS_MAX_SIZE};

/// Settings of a [`Producer`](crate::Producer); set them through
/// [`ProducerBuilder`](crate::ProducerBuilder). Each field's documentation gives its
/// default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// Pack user records predicted for the same shard into KPL aggregates
    /// (KPL `AggregationEnabled`). Default `true`.
    pub aggregation_enabled: bool,
    /// Most user records in one aggregate (KPL `AggregationMaxCount`). Default
    /// 4,294,967,295.
    pub aggregation_max_count: usize,
    /// Most bytes of data in one aggregate (KPL `AggregationMaxSize`). Default 51,200;
    /// at least 64, and at most `max_record_size` less the aggregate's one-byte
    /// partition key, so an aggregate is never refused as too large. A user record
    /// bigger than this is sent alone.
    pub aggregation_max_size: usize,
    /// Most Kinesis records in one PutRecords call (KPL `CollectionMaxCount`). Default
    /// and maximum 500.
    pub collection_max_count: usize,
    /// Most bytes in one PutRecords call (KPL `CollectionMaxSize`). Default and maximum
    /// 5 MiB. With `adaptive_request_timeout` (the default) calls start smaller and grow
    /// to this while the endpoint answers quickly.
    pub collection_max_size: usize,
    /// Longest a user record waits in buffers to be aggregated and collected before it is
    /// sent (KPL `RecordMaxBufferedTime`). Default 100 ms.
    pub record_max_buffered_time: Duration,
    /// Longest a user record may take to reach the stream, retries included, before it
    /// fails with [`RecordError::Expired`](crate::RecordError::Expired) (KPL
    /// `RecordTtl`). Default 30 s.
    pub record_ttl: Duration,
    /// Share of a shard's write limits (1,000 records/s, 1 MiB/s) the producer's
    /// per-shard rate limiter allows, in percent (KPL `RateLimit`). Default 150: above
    /// 100 lets the producer use the burst Kinesis tolerates and lets Kinesis's own
    /// throttling, which is retried, arbitrate.
    pub rate_limit: u32,
    /// Fail a throttled user record at once with
    /// [`RecordError::Throttled`](crate::RecordError::Throttled) instead of retrying it
    /// (KPL `FailIfThrottled`). Default `false`.
    pub fail_if_throttled: bool,
    /// Retry errors that retrying cannot fix (the stream does not exist, access or its
    /// KMS key is denied or disabled, a validation error) until `record_ttl`, as the KPL
    /// does. Default `false`: such an error fails the record at once with
    /// [`RecordError::Rejected`](crate::RecordError::Rejected).
    pub retry_permanent_errors: bool,
    /// Most PutRecords calls in flight at once (KPL `MaxConnections`). Default 24. While
    /// calls time out, the producer halves its own limit and grows it back by one per
    /// window of answered calls, up to this. With `adaptive_request_timeout` (the
    /// default) the limit starts at 4, grows by one per answered call until the first
    /// decrease, and also halves on calls answered after half of `request_timeout`.
    pub max_connections: usize,
    /// Shortest timeout of one PutRecords call (KPL `RequestTimeout`, which is the KPL's
    /// fixed timeout). Default 6 s. A call that times out may still have succeeded: its
    /// records are retried and can then appear twice in the stream. With
    /// `adaptive_request_timeout` (the default) this is the floor of each call's timeout;
    /// without, every call's timeout, as in the KPL. ListShards calls always use it.
    pub request_timeout: Duration,
    /// Adapt each PutRecords call to the endpoint's latency. Default `true`; `false` is
    /// the KPL's behaviour: every call gets `request_timeout` and carries up to
    /// `collection_max_size`.
    ///
    /// - **Timeout**: 3 times the 99th percentile of the latency of the last 64 calls of
    ///   the same size (by power-of-two byte ranges; a size without calls yet borrows
    ///   from the nearest larger size, else from the nearest smaller one doubled per
    ///   doubling of size), at least `request_timeout`, at
    ///   most `record_ttl` and [`MAX_CALL_TIMEOUT`](crate::MAX_CALL_TIMEOUT) (2 minutes;
    ///   never below `request_timeout`). A timed-out call counts as a latency of the
    ///   timeout it had, so calls that all time out get longer timeouts, threefold each
    ///   time. Against Kinesis calls answer well within 6 s: timeouts stay at
    ///   `request_timeout`. Against a slower endpoint calls are given the time they need
    ///   instead of being timed out and retried although they landed (duplicates).
    /// - **Size**: calls start at 256 KiB and grow by 256 KiB per round trip (once a call
    ///   started after the last change is answered within a quarter of
    ///   `request_timeout`), up to `collection_max_size`; a call that times out or takes
    ///   more than half of `request_timeout` halves the size (once per window of calls in
    ///   flight), not below 256 KiB.
    /// - **Calls in flight**: start at 4 and grow by one per answered call up to
    ///   `max_connections` until the first timeout or slow answer (TCP's slow start);
    ///   slow answers (after half of `request_timeout`) halve them as timeouts do.
    ///
    /// An endpoint that takes in so many bytes per second answers later the more bytes
    /// are in flight: smaller and fewer calls keep its latency away from the timeout at
    /// the same throughput.
    ///
    /// Each timeout is logged (warning, with the call's bytes, records, timeout and the
    /// latency estimate of its size) and counted
    /// ([`ProducerStats::put_records_timeouts`](crate::ProducerStats::put_records_timeouts),
    /// the metric `kinesis_producer_put_records_timeouts`), adaptive or not.
    pub adaptive_request_timeout: bool,
    /// Largest user record, data plus partition key, in bytes, at most 10 MiB. Default
    /// `None`: the stream's own maximum, read once when the producer is built
    /// (DescribeStreamSummary's `MaxRecordSizeInKiB`: 1 MiB unless raised with
    /// `UpdateMaxRecordSize`), or 1 MiB if the stream does not say or the call fails (for
    /// example without `kinesis:DescribeStreamSummary`: a warning is logged).
    pub max_record_size: Option<usize>,
    /// Most user records accepted and not yet completed. `send` waits while this many
    /// are outstanding (backpressure); `try_send` fails. Default 100,000. The KPL has no
    /// such bound.
    pub max_outstanding_records: usize,
    /// Most bytes of user records (data plus partition key) accepted and not yet
    /// completed; as `max_outstanding_records`. Default 256 MiB.
    ///
    /// What else the producer holds: about 80 bytes of bookkeeping per outstanding user
    /// record (its place in its Kinesis record, its receipt's slot, its arrival; a
    /// record not yet packed into one holds its own partition key and some 130 bytes
    /// for the moment), the open aggregates' encoding
    /// buffers (payloads packed into an aggregate are held once, as slices of it), and
    /// the requests of PutRecords calls in flight. The producer writes PutRecords bodies
    /// itself, in chunks as the connection sends them (`put_records_fast_path`), so a
    /// call in flight holds little beyond its records; through the SDK's serializer
    /// (fast path off or refused) a call holds a copy of its data and a base64 JSON body
    /// of 1.33 times it. The data in flight is kept under an eighth of this limit (at
    /// least one full call).
    pub max_outstanding_bytes: usize,
    /// Shortest wait before the first retry of a failed record; later retries wait up to
    /// twice as long each time, with full jitter. Default 100 ms.
    pub min_backoff: Duration,
    /// Longest wait between retries. Default 5 s.
    pub max_backoff: Duration,
    /// Shortest time between two ListShards refreshes of the shard map. Default 1 s.
    pub shard_map_min_refresh_interval: Duration,
    /// Spreading of hot partition keys over several shards; `None` (the default) keeps
    /// every key on its own shard.
    pub hot_key_spread: Option<crate::HotKeySpread>,
    /// Ordered mode: the user records of a partition key are written in `send` order
    /// through throttling, partial failures, timeouts and reshards (default `false`, as
    /// the KPL, which may reorder records when it retries them).
    ///
    /// Each shard then has one Kinesis record (an aggregate, or a record sent alone) at a
    /// time on its way to Kinesis: the next goes once the previous one was answered. A
    /// record that failed is retried before anything newer of its shard; when records must
    /// be predicted again (a reshard), nothing new goes until the calls in flight are
    /// answered. Records of different shards still share calls, and calls run in
    /// parallel. What it cannot prevent: a call whose answer is lost (a timeout after
    /// Kinesis stored it) is sent again, so the stream may hold a record twice, but the
    /// copies are in order (A, A, B rather than A, B, A). The cost is throughput per shard:
    /// at most one aggregate per round trip (see BENCHMARKS.md); a larger
    /// `aggregation_max_size` recovers much of it. Not with `hot_key_spread`, which gives
    /// up per-key order.
    pub ordered: bool,
    /// Labels of the producer's metrics (KPL `MetricsGranularity`): per stream (the
    /// default here; the KPL's default is shard) or also per shard.
    pub metrics_granularity: crate::MetricsGranularity,
    /// Write PutRecords bodies directly (base64 straight from the payloads, no copy of
    /// the data per call) instead of through the SDK's serializer. Default `true`. The
    /// producer checks each request is the awsJson 1.1 PutRecords it writes bodies for
    /// (content type and target) and otherwise uses the SDK's serializer, with the
    /// metric `kinesis_producer_put_records_fast_path_fallbacks` and a debug log; `false`
    /// always uses the SDK's serializer.
    pub put_records_fast_path: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            aggregation_enabled: true,
            aggregation_max_count: 4_294_967_295,
            aggregation_max_size: 51_200,
            collection_max_count: PUT_RECORDS_MAX_COUNT,
            collection_max_size: PUT_RECORDS_MAX_SIZE,
            record_max_buffered_time: Duration::from_millis(100),
            record_ttl: Duration::from_secs(30),
            rate_limit: 150,
            fail_if_throttled: false,
            retry_permanent_errors: false,
            max_connections: 24,
            request_timeout: Duration::from_secs(6),
            adaptive_request_timeout: true,
            max_record_size: None,
            max_outstanding_records: 100_000,
            max_outstanding_bytes: 256 * 1024 * 1024,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            shard_map_min_refresh_interval: Duration::from_secs(1),
            hot_key_spread: None,
            ordered: false,
            metrics_granularity: crate::MetricsGranularity::Stream,
            put_records_fast_path: true,
        }
    }
}
