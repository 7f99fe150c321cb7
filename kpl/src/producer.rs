//! The producer handle and its builder.

use std::sync::Arc;

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::Client;
use aws_types::SdkConfig;
use backon::{ExponentialBuilder, Retryable};
use futures::{Stream, StreamExt};
use tokio::sync::{oneshot, TryAcquireError};

use crate::config::ProducerConfig;
use crate::inbox::{Command, Inbox};
use crate::pending::Admitted;
use crate::pipeline::Pipeline;
use crate::receipt::{RecordError, RecordReceipt, RecordResult};
use crate::record::{InvalidRecord, Record, DEFAULT_MAX_RECORD_SIZE, MAX_RECORD_SIZE_LIMIT};
use crate::shard_map::{ShardMap, ShardMapError};
use crate::stats::{Outstanding, ProducerStats, ShardLoad, Shared};
use crate::{HotKeySpread, StreamId};

/// Why a record was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The record breaks Kinesis's rules.
    #[error("invalid record")]
    Invalid(#[from] InvalidRecord),
    /// The buffer is full (only from [`Producer::try_send`]).
    #[error("the producer's buffer is full")]
    Full,
    /// The producer was shut down.
    #[error("the producer is shut down")]
    Closed,
}

/// Why a record piped through [`Producer::send_stream`] did not reach the stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// It was not accepted.
    #[error(transparent)]
    Send(#[from] SendError),
    /// It was accepted but failed.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Why a producer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No stream was named.
    #[error("no stream given: call ProducerBuilder::stream")]
    MissingStream,
    /// A setting is out of range or inconsistent with another.
    #[error("invalid setting {setting}: {reason}")]
    InvalidConfig {
        /// The setting, named as its [`ProducerConfig`] field and builder method.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The stream's shards could not be listed (the stream does not exist, the
    /// credentials lack `kinesis:ListShards`, or the endpoint cannot be reached).
    #[error("cannot list the stream's shards")]
    ShardMap(#[from] ShardMapError),
}

/// Where the producer gets its Kinesis client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientSource {
    /// Build a client from this SDK configuration.
    Config(Box<SdkConfig>),
    /// Derive a client from this one (its configuration, with the producer's retry and
    /// timeout settings).
    Client(Client),
}

impl From<&SdkConfig> for ClientSource {
    fn from(config: &SdkConfig) -> Self {
        ClientSource::Config(Box::new(config.clone()))
    }
}

impl From<SdkConfig> for ClientSource {
    fn from(config: SdkConfig) -> Self {
        ClientSource::Config(Box::new(config))
    }
}

impl From<Client> for ClientSource {
    fn from(client: Client) -> Self {
        ClientSource::Client(client)
    }
}

impl From<&Client> for ClientSource {
    fn from(client: &Client) -> Self {
        ClientSource::Client(client.clone())
    }
}

/// Builds a [`Producer`]. Every setting has the AWS KPL's default where the KPL has it;
/// see [`ProducerConfig`] for each.
#[derive(Debug)]
#[must_use]
pub struct ProducerBuilder {
    source: ClientSource,
    stream: Option<StreamId>,
    config: ProducerConfig,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl ProducerBuilder {
    /// The stream to put records into, by name or ARN.
    pub fn stream(mut self, name_or_arn: impl Into<String>) -> Self {
        self.stream = Some(StreamId::new(name_or_arn));
        self
    }

    /// Replaces every setting at once.
    pub fn config(mut self, config: ProducerConfig) -> Self {
        self.config = config;
        self
    }

    setter!(
        /// See [`ProducerConfig::aggregation_enabled`] (default `true`).
        aggregation_enabled: bool
    );
    setter!(
        /// See [`ProducerConfig::aggregation_max_count`] (default 4,294,967,295).
        aggregation_max_count: usize
    );
    setter!(
        /// See [`ProducerConfig::aggregation_max_size`] (default 51,200 bytes).
        aggregation_max_size: usize
    );
    setter!(
        /// See [`ProducerConfig::collection_max_count`] (default 500).
        collection_max_count: usize
    );
    setter!(
        /// See [`ProducerConfig::collection_max_size`] (default 5 MiB).
        collection_max_size: usize
    );
    setter!(
        /// See [`ProducerConfig::record_max_buffered_time`] (default 100 ms).
        record_max_buffered_time: std::time::Duration
    );
    setter!(
        /// See [`ProducerConfig::record_ttl`] (default 30 s).
        record_ttl: std::time::Duration
    );
    setter!(
        /// See [`ProducerConfig::rate_limit`] (default 150 %).
        rate_limit: u32
    );
    setter!(
        /// See [`ProducerConfig::fail_if_throttled`] (default `false`).
        fail_if_throttled: bool
    );
    setter!(
        /// See [`ProducerConfig::retry_permanent_errors`] (default `false`).
        retry_permanent_errors: bool
    );
    setter!(
        /// See [`ProducerConfig::metrics_granularity`] (default per stream).
        metrics_granularity: crate::MetricsGranularity
    );
    setter!(
        /// See [`ProducerConfig::put_records_fast_path`] (default `true`).
        put_records_fast_path: bool
    );
    setter!(
        /// See [`ProducerConfig::max_connections`] (default 24).
        max_connections: usize
    );
    setter!(
        /// See [`ProducerConfig::request_timeout`] (default 6 s): the shortest timeout of
        /// a PutRecords call, or every call's with `adaptive_request_timeout(false)`.
        request_timeout: std::time::Duration
    );
    setter!(
        /// See [`ProducerConfig::adaptive_request_timeout`] (default `true`): each call's
        /// timeout and size follow the endpoint's latency; `false` keeps the KPL's fixed
        /// `request_timeout` and `collection_max_size`.
        adaptive_request_timeout: bool
    );
    /// Largest user record, data plus partition key, in bytes (at most 10 MiB). See
    /// [`ProducerConfig::max_record_size`]: by default, the stream's own maximum, read when
    /// the producer is built.
    pub fn max_record_size(mut self, bytes: usize) -> Self {
        self.config.max_record_size = Some(bytes);
        self
    }
    setter!(
        /// See [`ProducerConfig::max_outstanding_records`] (default 100,000).
        max_outstanding_records: usize
    );
    setter!(
        /// See [`ProducerConfig::max_outstanding_bytes`] (default 256 MiB).
        max_outstanding_bytes: usize
    );
    setter!(
        /// See [`ProducerConfig::min_backoff`] (default 100 ms).
        min_backoff: std::time::Duration
    );
    setter!(
        /// See [`ProducerConfig::max_backoff`] (default 5 s).
        max_backoff: std::time::Duration
    );
    setter!(
        /// See [`ProducerConfig::shard_map_min_refresh_interval`] (default 1 s).
        shard_map_min_refresh_interval: std::time::Duration
    );

    setter!(
        /// See [`ProducerConfig::ordered`] (default `false`): the records of a partition
        /// key are written in `send` order even through retries and reshards.
        ordered: bool
    );

    /// Spreads hot partition keys over several shards (off by default). This gives up
    /// per-key ordering for the spread keys: see [`HotKeySpread`].
    pub fn hot_key_spread(mut self, spread: HotKeySpread) -> Self {
        self.config.hot_key_spread = Some(spread);
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        let c = &self.config;
        let invalid = |setting: &'static str, reason: &str| {
            Err(BuildError::InvalidConfig {
                setting,
                reason: reason.to_owned(),
            })
        };
        // Without max_record_size, what depends on it is checked against the largest a
        // stream allows here, and against the stream's once it is known.
        match c.max_record_size {
            Some(size) => {
                if !(1..=MAX_RECORD_SIZE_LIMIT).contains(&size) {
                    return invalid("max_record_size", "must be within 1 B ..= 10 MiB");
                }
                Self::check_record_size(c, size)?;
            }
            None => Self::check_aggregation_size(c, MAX_RECORD_SIZE_LIMIT)?,
        }
        if c.ordered && c.hot_key_spread.is_some() {
            return invalid(
                "ordered",
                "cannot be combined with hot_key_spread, which gives up per-key order",
            );
        }
        if c.aggregation_max_count == 0 {
            return invalid("aggregation_max_count", "must be at least 1");
        }
        if !(1..=crate::collector::PUT_RECORDS_MAX_COUNT).contains(&c.collection_max_count) {
            return invalid("collection_max_count", "must be within 1 ..= 500");
        }
        if !(1..=crate::collector::PUT_RECORDS_MAX_SIZE).contains(&c.collection_max_size) {
            return invalid("collection_max_size", "must be within 1 B ..= 5 MiB");
        }
        if c.max_outstanding_records == 0
            || c.max_outstanding_records > tokio::sync::Semaphore::MAX_PERMITS
        {
            return invalid("max_outstanding_records", "must be positive");
        }
        if c.max_outstanding_bytes > u32::MAX as usize {
            return invalid("max_outstanding_bytes", "must be below 4 GiB");
        }
        if c.max_connections == 0 {
            return invalid("max_connections", "must be positive");
        }
        if c.rate_limit == 0 {
            return invalid("rate_limit", "must be positive");
        }
        if c.record_ttl.is_zero() {
            return invalid("record_ttl", "must be positive");
        }
        if c.request_timeout.is_zero() {
            return invalid("request_timeout", "must be positive");
        }
        if c.min_backoff.is_zero() || c.min_backoff > c.max_backoff {
            return invalid("min_backoff", "must be positive and at most max_backoff");
        }
        Ok(())
    }

    /// The settings that depend on the largest record, `max_record_size` bytes.
    fn check_record_size(c: &ProducerConfig, max_record_size: usize) -> Result<(), BuildError> {
        Self::check_aggregation_size(c, max_record_size)?;
        if c.max_outstanding_bytes < max_record_size {
            return Err(BuildError::InvalidConfig {
                setting: "max_outstanding_bytes",
                reason: format!("must be at least the largest record, {max_record_size} B"),
            });
        }
        Ok(())
    }

    /// `aggregation_max_size` against the largest record, `max_record_size` bytes.
    fn check_aggregation_size(
        c: &ProducerConfig,
        max_record_size: usize,
    ) -> Result<(), BuildError> {
        // An aggregate goes out with a one-byte partition key, which counts against the
        // record limit: a bigger aggregate would make Kinesis refuse the whole call.
        let aggregation_limit =
            max_record_size.saturating_sub(crate::aggregation::AGGREGATE_PARTITION_KEY.len());
        if c.aggregation_max_size < 64 || c.aggregation_max_size > aggregation_limit {
            return Err(BuildError::InvalidConfig {
                setting: "aggregation_max_size",
                reason: format!(
                    "must be within 64 B ..= {aggregation_limit} B \
                     (the largest record, {max_record_size} B, less the aggregate's 1-byte \
                     partition key)"
                ),
            });
        }
        Ok(())
    }

    /// Checks the settings, reads the stream's maximum record size unless
    /// `max_record_size` is set (DescribeStreamSummary), loads the stream's shard map
    /// (ListShards, retried a few times), and starts the producer's pipeline on the
    /// current Tokio runtime.
    pub async fn build(self) -> Result<Producer, BuildError> {
        self.validate()?;
        let stream = self.stream.clone().ok_or(BuildError::MissingStream)?;
        let kinesis_config = match &self.source {
            ClientSource::Config(sdk) => aws_sdk_kinesis::config::Builder::from(sdk.as_ref()),
            ClientSource::Client(client) => client.config().to_builder(),
        };
        // The producer retries on its own terms (backoff until the record TTL), so the
        // SDK must not retry behind its back. Each PutRecords call overrides the attempt
        // timeout with its own (see `call_timeout`); ListShards keeps this one.
        let client = Client::from_conf(
            kinesis_config
                .retry_config(RetryConfig::disabled())
                .timeout_config(
                    TimeoutConfig::builder()
                        .operation_attempt_timeout(self.config.request_timeout)
                        .build(),
                )
                .build(),
        );
        let map = (|| ShardMap::load(&client, &stream))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(100))
                    .with_max_times(3)
                    .with_jitter(),
            )
            .when(|e| !e.is_permanent())
            .await?;

        let mut config = self.config;
        let max_record_size = match config.max_record_size {
            Some(size) => size,
            None => stream_max_record_size(&client, &stream).await,
        };
        Self::check_record_size(&config, max_record_size)?;
        config.max_record_size = Some(max_record_size);
        let shared = Arc::new(Shared::new(
            config.max_outstanding_records,
            config.max_outstanding_bytes,
        ));
        let inbox = Arc::new(Inbox::default());
        let pipeline = Pipeline::new(
            config.clone(),
            client,
            stream.clone(),
            map,
            shared.clone(),
            inbox.clone(),
        );
        tokio::spawn(pipeline.run());
        Ok(Producer {
            inner: Arc::new(Inner {
                inbox,
                shared,
                config,
                stream,
            }),
        })
    }
}

/// The stream's maximum record size (data plus partition key), from DescribeStreamSummary;
/// Kinesis's default 1 MiB when the stream does not say (it was never raised, or an
/// emulator) or the call fails: records above it are then refused at `send` with a typed
/// error, none is lost, and a warning names the fix.
async fn stream_max_record_size(client: &Client, stream: &StreamId) -> usize {
    match stream.describe_stream_summary(client).send().await {
        Ok(output) => output
            .stream_description_summary()
            .and_then(|summary| summary.max_record_size_in_kib())
            .and_then(|kib| usize::try_from(kib).ok())
            .map_or(DEFAULT_MAX_RECORD_SIZE, |kib| {
                (kib * 1024).clamp(1, MAX_RECORD_SIZE_LIMIT)
            }),
        Err(error) => {
            let error = kinesis_errors::ServiceError::from_sdk("DescribeStreamSummary", error);
            tracing::warn!(
                stream = stream.as_str(),
                "cannot read the stream's maximum record size ({error}); records are \
                 limited to 1 MiB (set max_record_size, or allow \
                 kinesis:DescribeStreamSummary)"
            );
            DEFAULT_MAX_RECORD_SIZE
        }
    }
}

#[derive(Debug)]
struct Inner {
    inbox: Arc<Inbox>,
    shared: Arc<Shared>,
    config: ProducerConfig,
    stream: StreamId,
}

impl Drop for Inner {
    /// The last handle is gone: the pipeline sends what it holds and stops.
    fn drop(&mut self) {
        self.inbox.handles_gone();
    }
}

/// An async Kinesis producer: aggregation, batching, per-shard rate limiting and retries,
/// with backpressure. Cheap to clone; clones share one pipeline.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use kinesis_producer::{Producer, Record};
///
/// let sdk_config = aws_config::load_from_env().await;
/// let producer = Producer::builder(&sdk_config).stream("orders").build().await?;
///
/// // The first await admits the record (waiting while the buffer is full) ...
/// let receipt = producer.send(Record::new("customer-17", "order #1")).await?;
/// // ... the second tells where it landed.
/// let result = receipt.await?;
/// println!("{} {} after {} attempt(s)", result.shard_id, result.sequence_number, result.attempts.len());
///
/// producer.shutdown().await;
/// # Ok(())
/// # }
/// ```
///
/// # Dropping
///
/// Dropping every clone without [`shutdown`](Self::shutdown) lets the pipeline, a task on
/// the Tokio runtime the producer was built in, send what it holds and stop — only while
/// that runtime keeps running. When the runtime shuts down (for example when `main`
/// returns), records still buffered or in flight are not sent and their receipts resolve
/// to [`RecordError::Abandoned`]. Call `shutdown` (and await it) before a program ends.
#[derive(Clone, Debug)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl Producer {
    /// Starts building a producer that uses this SDK configuration or Kinesis client
    /// (endpoint, region and credentials come from the standard AWS configuration).
    pub fn builder(client: impl Into<ClientSource>) -> ProducerBuilder {
        ProducerBuilder {
            source: client.into(),
            stream: None,
            config: ProducerConfig::default(),
        }
    }

    /// The stream this producer writes to.
    pub fn stream(&self) -> &str {
        self.inner.stream.as_str()
    }

    /// The producer's settings.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Validates a record and admits it, waiting while the buffer is full. The receipt
    /// resolves once the record reached the stream or failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in tokio's sense: if the future is dropped before it completes (a
    /// losing `tokio::select!` branch, a timeout), the record was not admitted and will
    /// not be sent, and the buffer space it waited for is not taken; the record itself,
    /// moved into the call, is dropped. Once it returns `Ok`, the record is the
    /// producer's: dropping the receipt does not withdraw it.
    pub async fn send(&self, record: Record) -> Result<RecordReceipt, SendError> {
        let size = self.check(&record)?;
        // A loop of sends that never has to wait still yields now and then (Tokio's
        // cooperative budget), so the pipeline runs alongside it on a single thread.
        tokio::task::coop::consume_budget().await;
        let shared = &self.inner.shared;
        // Room in the buffer is the common case: take it without the waiting machinery.
        if let Ok(records) = shared.records.try_acquire() {
            match shared.bytes.try_acquire_many(size) {
                Ok(bytes) => {
                    records.forget();
                    bytes.forget();
                    return self.enqueue(record);
                }
                Err(_) => drop(records),
            }
        }
        let records = shared
            .records
            .acquire()
            .await
            .map_err(|_| SendError::Closed)?;
        let bytes = shared
            .bytes
            .acquire_many(size)
            .await
            .map_err(|_| SendError::Closed)?;
        records.forget();
        bytes.forget();
        self.enqueue(record)
    }

    /// As [`send`](Self::send), but fails with [`SendError::Full`] instead of waiting.
    pub fn try_send(&self, record: Record) -> Result<RecordReceipt, SendError> {
        let size = self.check(&record)?;
        let shared = &self.inner.shared;
        let map = |e: TryAcquireError| match e {
            TryAcquireError::Closed => SendError::Closed,
            TryAcquireError::NoPermits => SendError::Full,
        };
        let records = shared.records.try_acquire().map_err(map)?;
        let bytes = shared.bytes.try_acquire_many(size).map_err(map)?;
        records.forget();
        bytes.forget();
        self.enqueue(record)
    }

    /// Sends every record of a stream, admitting them in order with backpressure, and
    /// yields their outcomes in the same order.
    ///
    /// ```no_run
    /// # async fn example(producer: kinesis_producer::Producer) {
    /// use futures::StreamExt;
    /// use kinesis_producer::Record;
    ///
    /// let records = futures::stream::iter((0..1_000).map(|i| Record::new(format!("k{i}"), "v")));
    /// let failed = producer.send_stream(records).filter(|r| futures::future::ready(r.is_err())).count().await;
    /// assert_eq!(failed, 0);
    /// # }
    /// ```
    pub fn send_stream<S>(
        &self,
        records: S,
    ) -> impl Stream<Item = Result<RecordResult, ProduceError>> + '_
    where
        S: Stream<Item = Record> + 'static,
    {
        let window = self.inner.config.max_outstanding_records;
        records
            .then(move |record| self.send(record))
            .map(|admitted| async move {
                match admitted {
                    Ok(receipt) => receipt.await.map_err(ProduceError::from),
                    Err(e) => Err(ProduceError::from(e)),
                }
            })
            .buffered(window)
    }

    /// A [`Sink`](futures::Sink) of records into this producer (see [`ProducerSink`]).
    ///
    /// [`ProducerSink`]: crate::ProducerSink
    pub fn sink(&self) -> crate::ProducerSink {
        crate::ProducerSink::new(self.clone())
    }

    fn check(&self, record: &Record) -> Result<u32, SendError> {
        record.validate(
            self.inner
                .config
                .max_record_size
                .unwrap_or(DEFAULT_MAX_RECORD_SIZE),
        )?;
        // `validate` bounds the size by max_record_size, itself bounded by 10 MiB.
        Ok(u32::try_from(record.size()).unwrap_or(u32::MAX))
    }

    /// Hands an admitted record (its buffer permits taken and forgotten: the pipeline
    /// gives them back when it completes) to the pipeline.
    fn enqueue(&self, record: Record) -> Result<RecordReceipt, SendError> {
        let (partition_key, data, explicit_hash_key) = record.into_parts();
        let admitted = Admitted::new(partition_key, data, explicit_hash_key);
        self.inner.inbox.push_record(admitted).map_err(|size| {
            let mut released = crate::stats::Released::default();
            released.add(size);
            self.inner.shared.release(&mut released);
            SendError::Closed
        })
    }

    /// Waits until every record accepted before this call has reached the stream or
    /// failed. Buffered records are sent at once instead of waiting for their buffering
    /// time; the rate limiter still applies.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops only the waiting. Once it has been polled,
    /// the records buffered before the call are sent early whether or not it is awaited
    /// to the end.
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.inbox.push(Command::Flush(reply)) {
            let _ = done.await;
        }
    }

    /// Stops accepting records, sends everything accepted (retrying until each record's
    /// TTL), and stops the pipeline. Every receipt resolves before this returns. Other
    /// clones get [`SendError::Closed`] afterwards.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops only the waiting. Once it has been polled,
    /// the producer accepts no more records and the pipeline goes on sending what it
    /// holds (see the type's *Dropping* section for what happens when the runtime ends
    /// first).
    pub async fn shutdown(&self) {
        self.inner.shared.close();
        let (reply, done) = oneshot::channel();
        if self.inner.inbox.push(Command::Shutdown(reply)) {
            let _ = done.await;
        }
    }

    /// User records accepted and not yet completed, and the age of the oldest.
    pub fn outstanding(&self) -> Outstanding {
        self.inner.shared.outstanding()
    }

    /// Totals since the producer started.
    pub fn stats(&self) -> ProducerStats {
        self.inner.shared.stats()
    }

    /// The load this producer put on each shard over the last second: spot hot shards.
    pub fn shard_load(&self) -> Vec<ShardLoad> {
        self.inner.shared.shard_load()
    }
}
