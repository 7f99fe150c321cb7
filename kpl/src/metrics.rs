//! The KPL's metrics, through the `metrics` facade: install any recorder (Prometheus,
//! StatsD, CloudWatch...) to collect them; without one they cost next to nothing.
//!
//! | metric | kind, unit | KPL name |
//! |---|---|---|
//! | `kinesis_producer_user_records_received` | counter | UserRecordsReceived |
//! | `kinesis_producer_user_records_put` | counter | UserRecordsPut |
//! | `kinesis_producer_user_records_data_put_bytes` | counter, bytes (data + partition key) | UserRecordsDataPut |
//! | `kinesis_producer_kinesis_records_put` | counter | KinesisRecordsPut |
//! | `kinesis_producer_kinesis_records_data_put_bytes` | counter, bytes (data + partition key) | KinesisRecordsDataPut |
//! | `kinesis_producer_errors` (label `code`) | counter, per Kinesis record of a failed attempt (a failed call counts each record it carried) | ErrorsByCode |
//! | `kinesis_producer_all_errors` | counter | AllErrors |
//! | `kinesis_producer_user_records_expired` | counter | UserRecordExpired |
//! | `kinesis_producer_user_records_pending` | gauge | UserRecordsPending |
//! | `kinesis_producer_buffering_time_seconds` | histogram, seconds from arrival to first attempt | BufferingTime |
//! | `kinesis_producer_retries_per_record` | histogram, per completed user record (put, expired or failed) | RetriesPerRecord |
//! | `kinesis_producer_request_time_seconds` | histogram, seconds | RequestTime |
//! | `kinesis_producer_user_records_per_kinesis_record` | histogram | UserRecordsPerKinesisRecord |
//! | `kinesis_producer_kinesis_records_per_request` | histogram | KinesisRecordsPerPutRecordsRequest |
//! | `kinesis_producer_user_records_per_request` | histogram | (user records per PutRecords call) |
//! | `kinesis_producer_put_records_timeouts` | counter: PutRecords calls that timed out (retried; they may have landed) | — |
//! | `kinesis_producer_put_records_fast_path_fallbacks` | counter: the SDK built a PutRecords request the producer's own body is not written for, so its calls go through the SDK's serializer | — |
//!
//! Every metric carries a `stream` label. The default granularity is per stream
//! ([`MetricsGranularity::Stream`]); the KPL's default is shard: set
//! [`MetricsGranularity::Shard`] for the KPL's series. With it the
//! per-record metrics (records and bytes put, errors, retries, user records per Kinesis
//! record) also carry a `shard` label (the predicted shard, or the one the record landed
//! on), as the KPL's `MetricsGranularity = shard`; sum over it for stream totals.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

/// Which labels the producer's metrics carry (KPL `MetricsGranularity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsGranularity {
    /// A `stream` label (the default).
    #[default]
    Stream,
    /// A `stream` label, and a `shard` label on the per-record metrics.
    Shard,
}

const USER_RECORDS_RECEIVED: &str = "kinesis_producer_user_records_received";
const USER_RECORDS_PUT: &str = "kinesis_producer_user_records_put";
const USER_RECORDS_DATA_PUT: &str = "kinesis_producer_user_records_data_put_bytes";
const KINESIS_RECORDS_PUT: &str = "kinesis_producer_kinesis_records_put";
const KINESIS_RECORDS_DATA_PUT: &str = "kinesis_producer_kinesis_records_data_put_bytes";
const ERRORS: &str = "kinesis_producer_errors";
const ALL_ERRORS: &str = "kinesis_producer_all_errors";
const EXPIRED: &str = "kinesis_producer_user_records_expired";
const PENDING: &str = "kinesis_producer_user_records_pending";
const BUFFERING_TIME: &str = "kinesis_producer_buffering_time_seconds";
const RETRIES_PER_RECORD: &str = "kinesis_producer_retries_per_record";
const REQUEST_TIME: &str = "kinesis_producer_request_time_seconds";
const USER_PER_KINESIS: &str = "kinesis_producer_user_records_per_kinesis_record";
const KINESIS_PER_REQUEST: &str = "kinesis_producer_kinesis_records_per_request";
const USER_PER_REQUEST: &str = "kinesis_producer_user_records_per_request";
const FAST_PATH_FALLBACKS: &str = "kinesis_producer_put_records_fast_path_fallbacks";
const TIMEOUTS: &str = "kinesis_producer_put_records_timeouts";

/// The SDK built a PutRecords request the producer's own body is not written for: the
/// calls go through the SDK's serializer from now on.
pub(crate) fn fast_path_fallback(stream: &str) {
    counter!(FAST_PATH_FALLBACKS, "stream" => stream.to_owned()).increment(1);
}

fn describe() {
    describe_counter!(
        USER_RECORDS_RECEIVED,
        Unit::Count,
        "User records accepted by the producer"
    );
    describe_counter!(
        USER_RECORDS_PUT,
        Unit::Count,
        "User records that reached the stream"
    );
    describe_counter!(
        USER_RECORDS_DATA_PUT,
        Unit::Bytes,
        "Bytes (data plus partition key) of user records that reached the stream"
    );
    describe_counter!(
        KINESIS_RECORDS_PUT,
        Unit::Count,
        "Kinesis records (aggregates or single user records) that reached the stream"
    );
    describe_counter!(
        KINESIS_RECORDS_DATA_PUT,
        Unit::Bytes,
        "Bytes (data plus partition key) of Kinesis records that reached the stream"
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Failed attempts, by error code, per Kinesis record (a failed call counts each record it carried)"
    );
    describe_counter!(ALL_ERRORS, Unit::Count, "Failed attempts, all codes");
    describe_counter!(
        FAST_PATH_FALLBACKS,
        Unit::Count,
        "Producers whose PutRecords calls left the fast path for the SDK's serializer (a request shape the producer does not write)"
    );
    describe_counter!(
        TIMEOUTS,
        Unit::Count,
        "PutRecords calls that timed out (their records are retried; they may have landed)"
    );
    describe_counter!(
        EXPIRED,
        Unit::Count,
        "User records that failed because their time to live passed"
    );
    describe_gauge!(
        PENDING,
        Unit::Count,
        "User records accepted and not yet completed"
    );
    describe_histogram!(
        BUFFERING_TIME,
        Unit::Seconds,
        "Time from a user record's arrival to its first attempt"
    );
    describe_histogram!(
        RETRIES_PER_RECORD,
        Unit::Count,
        "Retries of each completed user record (put, expired or failed)"
    );
    describe_histogram!(REQUEST_TIME, Unit::Seconds, "Duration of PutRecords calls");
    describe_histogram!(
        USER_PER_KINESIS,
        Unit::Count,
        "User records per Kinesis record put"
    );
    describe_histogram!(
        KINESIS_PER_REQUEST,
        Unit::Count,
        "Kinesis records per PutRecords call"
    );
    describe_histogram!(
        USER_PER_REQUEST,
        Unit::Count,
        "User records per PutRecords call"
    );
}

/// Handles of the per-record metrics for one label set.
#[derive(Clone)]
struct RecordMetrics {
    user_records_put: Counter,
    user_records_data_put: Counter,
    kinesis_records_put: Counter,
    kinesis_records_data_put: Counter,
    retries_per_record: Histogram,
    user_records_per_kinesis_record: Histogram,
    all_errors: Counter,
}

impl RecordMetrics {
    fn new(labels: &[(&'static str, String)]) -> Self {
        RecordMetrics {
            user_records_put: counter!(USER_RECORDS_PUT, labels),
            user_records_data_put: counter!(USER_RECORDS_DATA_PUT, labels),
            kinesis_records_put: counter!(KINESIS_RECORDS_PUT, labels),
            kinesis_records_data_put: counter!(KINESIS_RECORDS_DATA_PUT, labels),
            retries_per_record: histogram!(RETRIES_PER_RECORD, labels),
            user_records_per_kinesis_record: histogram!(USER_PER_KINESIS, labels),
            all_errors: counter!(ALL_ERRORS, labels),
        }
    }
}

/// Metric handles, registered once per producer (and once per shard with
/// [`MetricsGranularity::Shard`]).
pub(crate) struct Metrics {
    stream: String,
    granularity: MetricsGranularity,
    /// Registered on first use, so shard granularity shows no unlabelled series.
    stream_level: Option<RecordMetrics>,
    shards: HashMap<Arc<str>, RecordMetrics>,
    errors: HashMap<(Option<Arc<str>>, String), Counter>,
    received: Counter,
    expired: Counter,
    timeouts: Counter,
    pending: Gauge,
    buffering_time: Histogram,
    request_time: Histogram,
    kinesis_records_per_request: Histogram,
    user_records_per_request: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("stream", &self.stream)
            .field("granularity", &self.granularity)
            .finish()
    }
}

impl Metrics {
    pub fn new(stream: &str, granularity: MetricsGranularity) -> Self {
        describe();
        let labels = [("stream", stream.to_owned())];
        Metrics {
            stream: stream.to_owned(),
            granularity,
            stream_level: None,
            shards: HashMap::new(),
            errors: HashMap::new(),
            received: counter!(USER_RECORDS_RECEIVED, &labels),
            expired: counter!(EXPIRED, &labels),
            timeouts: counter!(TIMEOUTS, &labels),
            pending: gauge!(PENDING, &labels),
            buffering_time: histogram!(BUFFERING_TIME, &labels),
            request_time: histogram!(REQUEST_TIME, &labels),
            kinesis_records_per_request: histogram!(KINESIS_PER_REQUEST, &labels),
            user_records_per_request: histogram!(USER_PER_REQUEST, &labels),
        }
    }

    fn for_shard(&mut self, shard: Option<&Arc<str>>) -> &RecordMetrics {
        match (self.granularity, shard) {
            (MetricsGranularity::Shard, Some(shard)) => {
                if !self.shards.contains_key(shard) {
                    let labels = [
                        ("stream", self.stream.clone()),
                        ("shard", shard.to_string()),
                    ];
                    self.shards
                        .insert(shard.clone(), RecordMetrics::new(&labels));
                }
                &self.shards[shard]
            }
            _ => {
                let stream = &self.stream;
                self.stream_level
                    .get_or_insert_with(|| RecordMetrics::new(&[("stream", stream.clone())]))
            }
        }
    }

    /// A user record was accepted.
    pub fn received(&self) {
        self.received.increment(1);
    }

    /// A user record is attempted for the first time, `buffered` after it arrived.
    pub fn first_attempt(&self, buffered: Duration) {
        self.buffering_time.record(buffered.as_secs_f64());
    }

    /// A Kinesis record of `bytes` carrying `user_records` (of `user_bytes`) reached
    /// `shard`.
    pub fn kinesis_record_put(
        &mut self,
        shard: &Arc<str>,
        user_records: usize,
        user_bytes: usize,
        bytes: usize,
    ) {
        let m = self.for_shard(Some(shard));
        m.kinesis_records_put.increment(1);
        m.kinesis_records_data_put.increment(bytes as u64);
        m.user_records_put.increment(user_records as u64);
        m.user_records_data_put.increment(user_bytes as u64);
        m.user_records_per_kinesis_record
            .record(user_records as f64);
    }

    /// A user record completed (put or failed) after `retries` retries.
    pub fn completed(&mut self, shard: Option<&Arc<str>>, retries: usize) {
        self.for_shard(shard)
            .retries_per_record
            .record(retries as f64);
    }

    /// A PutRecords call of `records` Kinesis records carrying `user_records` took
    /// `duration`.
    pub fn request(&self, records: usize, user_records: usize, duration: Duration) {
        self.kinesis_records_per_request.record(records as f64);
        self.user_records_per_request.record(user_records as f64);
        self.request_time.record(duration.as_secs_f64());
    }

    /// An attempt of a Kinesis record failed with `code`.
    pub fn error(&mut self, shard: Option<&Arc<str>>, code: &str) {
        let shard = match self.granularity {
            MetricsGranularity::Shard => shard.cloned(),
            MetricsGranularity::Stream => None,
        };
        self.for_shard(shard.as_ref()).all_errors.increment(1);
        let key = (shard, code.to_owned());
        if let Some(counter) = self.errors.get(&key) {
            counter.increment(1);
            return;
        }
        let mut labels = vec![("stream", self.stream.clone()), ("code", code.to_owned())];
        if let Some(shard) = &key.0 {
            labels.push(("shard", shard.to_string()));
        }
        let counter = counter!(ERRORS, &labels);
        counter.increment(1);
        self.errors.insert(key, counter);
    }

    /// A PutRecords call timed out.
    pub fn timeout(&self) {
        self.timeouts.increment(1);
    }

    /// `records` user records expired.
    pub fn expired(&self, records: usize) {
        self.expired.increment(records as u64);
    }

    /// User records accepted and not yet completed.
    pub fn pending(&self, records: usize) {
        self.pending.set(records as f64);
    }
}
