//! Enhanced fan-out retrieval: a registered stream consumer and one SubscribeToShard
//! subscription per shard, renewed when it ends, into the same bounded batch queue as
//! polling.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ChildShard, ConsumerStatus, ShardIteratorType, StartingPosition as KinesisStartingPosition,
    SubscribeToShardEvent, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;

use crate::error::{ErrorChain, ErrorKind, ServiceError};
use tokio::time::Instant;

use crate::stream::StreamRef;

use super::{
    backoff, confirm_shard_gone, prefetch_queue, FetchError, FetchOptions, PrefetchSender,
    Prefetched, RecordBatch, ShardCheck, StartingPosition, TrimmedCheckpoint,
};
use crate::metrics::{
    ReadMetrics, ShardLabels, CHECKPOINT_TRIM_HORIZON_FALLBACKS, SUBSCRIPTION_STALLS,
};

/// Settings of enhanced fan-out retrieval.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FanOutConfig {
    /// The stream consumer's name (Java KCL `consumerName` in `FanOutConfig`); `None`
    /// uses the application name, as the Java KCL does. Every application needs its own
    /// consumer: two applications sharing one would take each other's subscriptions.
    pub consumer_name: Option<String>,
    /// Batches (SubscribeToShard events with records) read ahead of the processor. The
    /// subscription is not read further while the queue is full.
    pub prefetch_batches: usize,
    /// How long building the scheduler waits for the consumer to become ACTIVE after
    /// registering it (default 2 minutes; registration takes seconds on AWS).
    pub registration_timeout: Duration,
    /// After this long without records on a subscription, one GetShardIterator +
    /// GetRecords call at the current position checks whether the shard was closed and
    /// fully read (default 30 s; `None` disables the check). AWS reports a shard's end
    /// through the subscription, but kinesis-mock never does (a closed shard keeps
    /// sending empty events), and a missed end would keep the children waiting forever.
    pub shard_end_check: Option<Duration>,
    /// A subscription that delivers no event at all (not even an empty one) for this long
    /// while the read-ahead queue has room is considered stalled and replaced by a new one
    /// from the last position (default 35 s; `None` disables it). Kinesis sends an event at
    /// least every few seconds on an open shard, so only a stuck connection is silent that
    /// long; the Java KCL has no such check and such subscriptions stall its shards.
    pub stall_timeout: Option<Duration>,
}

impl Default for FanOutConfig {
    fn default() -> Self {
        FanOutConfig {
            consumer_name: None,
            prefetch_batches: 3,
            registration_timeout: Duration::from_secs(120),
            shard_end_check: Some(Duration::from_secs(30)),
            stall_timeout: Some(Duration::from_secs(35)),
        }
    }
}

/// Why the stream consumer could not be found or registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FanOutError {
    /// DescribeStreamConsumer failed with something other than "not found" or throttling.
    #[error("describing stream consumer {consumer}")]
    Describe {
        /// The consumer name.
        consumer: String,
        /// The failed call.
        #[source]
        error: ServiceError,
    },
    /// RegisterStreamConsumer failed with something other than "already registered" or
    /// throttling.
    #[error("registering stream consumer {consumer}")]
    Register {
        /// The consumer name.
        consumer: String,
        /// The failed call.
        #[source]
        error: ServiceError,
    },
    /// The consumer did not become ACTIVE in time.
    #[error("stream consumer {consumer} not ACTIVE after {waited:?} (last status: {status})")]
    NotActive {
        /// The consumer name.
        consumer: String,
        /// How long was waited.
        waited: Duration,
        /// The last status seen (`none` when it was not found).
        status: String,
    },
}

fn is_throttling(code: Option<&str>) -> bool {
    code.is_some_and(|code| ErrorKind::from_code(code) == ErrorKind::Throttled)
}

/// Finds the stream consumer `name` of the stream `stream_arn`, registers it when it does
/// not exist, and waits until it is ACTIVE; returns its ARN.
///
/// Several workers may do this at once: a registration that fails because another worker
/// registered the same name first (`ResourceInUseException`) is followed by another
/// describe. The consumer is never deregistered here: other workers, and this
/// application's next run, use it (as in the Java KCL).
pub async fn register_consumer(
    client: &Client,
    stream_arn: &str,
    name: &str,
    timeout: Duration,
) -> Result<String, FanOutError> {
    let started = Instant::now();
    let mut delays = backoff(Duration::from_millis(50), Duration::from_secs(2));
    let mut status = String::from("none");
    loop {
        let described = client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await;
        match described {
            Ok(out) => match out.consumer_description {
                Some(consumer) if consumer.consumer_status == ConsumerStatus::Active => {
                    tracing::debug!(consumer = %name, arn = %consumer.consumer_arn, "stream consumer is ACTIVE");
                    return Ok(consumer.consumer_arn);
                }
                Some(consumer) => {
                    status = consumer.consumer_status.as_str().to_owned();
                    tracing::debug!(consumer = %name, %status, "waiting for the stream consumer");
                }
                None => {
                    return Err(FanOutError::Describe {
                        consumer: name.to_owned(),
                        error: ServiceError::new(
                            "DescribeStreamConsumer",
                            ErrorKind::Other,
                            "no consumer description in the answer",
                        ),
                    })
                }
            },
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                status = String::from("none");
                let registered = client
                    .register_stream_consumer()
                    .stream_arn(stream_arn)
                    .consumer_name(name)
                    .send()
                    .await;
                match registered {
                    Ok(_) => tracing::info!(consumer = %name, "registered stream consumer"),
                    Err(error)
                        if error
                            .as_service_error()
                            .is_some_and(|e| e.is_resource_in_use_exception()) =>
                    {
                        // Another worker registered it first: describe it again.
                        tracing::debug!(consumer = %name, "stream consumer registered concurrently");
                    }
                    Err(error)
                        if error
                            .as_service_error()
                            .is_some_and(|e| e.is_limit_exceeded_exception())
                            || is_throttling(error.code()) =>
                    {
                        tracing::debug!(consumer = %name, "RegisterStreamConsumer throttled");
                    }
                    Err(error) => {
                        return Err(FanOutError::Register {
                            consumer: name.to_owned(),
                            error: ServiceError::from_sdk("RegisterStreamConsumer", error),
                        })
                    }
                }
            }
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_limit_exceeded_exception())
                    || is_throttling(error.code()) =>
            {
                tracing::debug!(consumer = %name, "DescribeStreamConsumer throttled");
            }
            Err(error) => {
                return Err(FanOutError::Describe {
                    consumer: name.to_owned(),
                    error: ServiceError::from_sdk("DescribeStreamConsumer", error),
                })
            }
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(FanOutError::NotActive {
                consumer: name.to_owned(),
                waited,
                status,
            });
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(2));
        tokio::time::sleep(delay.min(timeout - waited)).await;
    }
}

/// What one SubscribeToShard event means for the reader: the batch to deliver (if any)
/// and where a new subscription must start.
///
/// The position moves to `AFTER_SEQUENCE_NUMBER` of the event's last record, or of its
/// continuation sequence number when it carries no records (progress on an idle shard).
/// An event without a continuation sequence number is the shard's end: its batch carries
/// the child shards (possibly none, when they were trimmed).
pub(crate) fn apply_event(
    event: SubscribeToShardEvent,
    position: &mut StartingPosition,
    deliver_empty: bool,
) -> Option<RecordBatch> {
    let SubscribeToShardEvent {
        records,
        continuation_sequence_number,
        millis_behind_latest,
        child_shards,
        ..
    } = event;
    let ended = continuation_sequence_number.is_empty();
    if let Some(last) = records.last() {
        *position = StartingPosition::AfterSequenceNumber(last.sequence_number().to_owned());
    } else if !ended {
        *position = StartingPosition::AfterSequenceNumber(continuation_sequence_number);
    }
    if records.is_empty() && !ended && !deliver_empty {
        return None;
    }
    Some(RecordBatch {
        records,
        millis_behind_latest: Some(millis_behind_latest),
        shard_end: ended.then(|| child_shards.unwrap_or_default()),
    })
}

/// The SubscribeToShard starting position for `position`.
fn kinesis_position(
    position: &StartingPosition,
) -> Result<KinesisStartingPosition, aws_sdk_kinesis::error::BuildError> {
    let builder = KinesisStartingPosition::builder();
    let builder = match position {
        StartingPosition::TrimHorizon => builder.r#type(ShardIteratorType::TrimHorizon),
        StartingPosition::Latest => builder.r#type(ShardIteratorType::Latest),
        StartingPosition::AtTimestamp(time) => builder
            .r#type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from(*time)),
        StartingPosition::AtSequenceNumber(seq) => builder
            .r#type(ShardIteratorType::AtSequenceNumber)
            .sequence_number(seq),
        StartingPosition::AfterSequenceNumber(seq) => builder
            .r#type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(seq),
    };
    builder.build()
}

/// Reads one shard through SubscribeToShard into a bounded channel until the shard ends
/// or the receiver is dropped.
#[derive(Clone, Debug)]
pub struct FanOutFetcher {
    client: Client,
    stream: StreamRef,
    consumer_arn: String,
    shard_id: String,
    config: FanOutConfig,
    options: FetchOptions,
    metrics: ShardLabels,
}

/// SubscribeToShard allows one call per second per consumer and shard.
const MIN_SUBSCRIBE_INTERVAL: Duration = Duration::from_secs(1);

impl FanOutFetcher {
    /// A fetcher for one shard of `stream` through the registered consumer
    /// `consumer_arn` (see [`register_consumer`]); the consumer name of `config` is not
    /// used here. Its metrics are labelled `metrics`.
    pub(crate) fn new(
        client: Client,
        stream: StreamRef,
        consumer_arn: String,
        shard_id: String,
        config: FanOutConfig,
        options: FetchOptions,
        metrics: ShardLabels,
    ) -> Self {
        FanOutFetcher {
            client,
            stream,
            consumer_arn,
            shard_id,
            config,
            options,
            metrics,
        }
    }

    /// Whether the shard is closed and nothing is left after `position`: its children
    /// when so, `None` when it is open, records remain, or the check failed.
    async fn closed_shard_children(&self, position: &StartingPosition) -> Option<Vec<ChildShard>> {
        let request = self
            .stream
            .get_shard_iterator(&self.client)
            .shard_id(&self.shard_id);
        let request = position.shard_iterator_request(request);
        let timeout = self.options.request_timeout;
        let iterator = match tokio::time::timeout(timeout, request.send()).await.ok()? {
            Ok(out) => out.shard_iterator?,
            Err(error) => {
                tracing::debug!(shard = %self.shard_id, error = %ErrorChain::new(&error), "shard end check: GetShardIterator failed");
                return None;
            }
        };
        let records = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(1)
            .send();
        match tokio::time::timeout(timeout, records).await.ok()? {
            Ok(out) if out.records().is_empty() && out.next_shard_iterator().is_none() => {
                Some(out.child_shards.unwrap_or_default())
            }
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(shard = %self.shard_id, error = %ErrorChain::new(&error), "shard end check: GetRecords failed");
                None
            }
        }
    }

    /// Starts reading at `start`; returns the receiving end of the prefetch queue. The
    /// reading task stops when the receiver is dropped or the shard ended.
    pub fn spawn(
        self,
        start: StartingPosition,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Prefetched {
        let (tx, rx) = prefetch_queue(self.config.prefetch_batches, self.options.prefetch_bytes);
        tasks.spawn(async move { self.run(start, tx).await });
        rx
    }

    async fn run(self, start: StartingPosition, tx: PrefetchSender) {
        let metrics = ReadMetrics::subscribe_to_shard(&self.metrics);
        let new_backoff = || backoff(Duration::from_millis(200), Duration::from_secs(5));
        let mut position = start;
        let mut delays = new_backoff();
        let mut last_call: Option<Instant> = None;
        loop {
            let mut pause = Duration::ZERO;
            if let Some(at) = last_call {
                pause = (at + MIN_SUBSCRIBE_INTERVAL).saturating_duration_since(Instant::now());
            }
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tx.closed() => return,
                }
            }
            last_call = Some(Instant::now());
            // Only a missing type fails to build, and every position sets one.
            let starting_position = match kinesis_position(&position) {
                Ok(starting_position) => starting_position,
                Err(error) => {
                    tracing::error!(shard = %self.shard_id, %error, "invalid starting position");
                    return;
                }
            };
            let subscribe = self
                .client
                .subscribe_to_shard()
                .consumer_arn(&self.consumer_arn)
                .shard_id(&self.shard_id)
                .starting_position(starting_position)
                .send();
            let sent = std::time::Instant::now();
            let subscribed = tokio::select! {
                result = tokio::time::timeout(self.options.request_timeout, subscribe) => result,
                _ = tx.closed() => return,
            };
            metrics.record(matches!(subscribed, Ok(Ok(_))).then(|| sent.elapsed()));
            let Ok(subscribed) = subscribed else {
                tracing::warn!(shard = %self.shard_id, timeout = ?self.options.request_timeout, "SubscribeToShard timed out; subscribing again");
                continue;
            };
            let mut events = match subscribed {
                Ok(out) => out.event_stream,
                Err(error) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    let service = error.as_service_error();
                    match error.code() {
                        _ if service.is_some_and(|e| e.is_invalid_argument_exception())
                            && position.names_a_record() =>
                        {
                            self.metrics
                                .counter(CHECKPOINT_TRIM_HORIZON_FALLBACKS)
                                .increment(1);
                            if self.options.on_trimmed_checkpoint == TrimmedCheckpoint::Fail {
                                tracing::error!(shard = %self.shard_id, ?position, error = %ErrorChain::new(&error), "sequence number rejected (trimmed?); not reading the shard (TrimmedCheckpoint::Fail)");
                                tx.fail(FetchError::CheckpointRejected(format!("{position:?}")))
                                    .await;
                                return;
                            }
                            // The record is gone (older than the retention period): what
                            // follows it and still exists starts at the trim horizon.
                            tracing::error!(shard = %self.shard_id, ?position, error = %ErrorChain::new(&error), "sequence number rejected (trimmed?); subscribing from TRIM_HORIZON: records between the checkpoint and the oldest record still in the shard are not delivered");
                            position = StartingPosition::TrimHorizon;
                            continue;
                        }
                        _ if service.is_some_and(|e| e.is_resource_not_found_exception()) => {
                            match confirm_shard_gone(
                                &self.client,
                                &self.stream,
                                &self.shard_id,
                                &self.metrics,
                                self.options.request_timeout,
                            )
                            .await
                            {
                                ShardCheck::Gone(children) => {
                                    let _ = tx
                                        .send(RecordBatch {
                                            records: Vec::new(),
                                            millis_behind_latest: None,
                                            shard_end: Some(children),
                                        })
                                        .await;
                                    return;
                                }
                                ShardCheck::StreamGone(error) => {
                                    tx.fail(FetchError::StreamNotFound(error)).await;
                                    return;
                                }
                                ShardCheck::Unconfirmed => {}
                            }
                            tracing::warn!(shard = %self.shard_id, error = %ErrorChain::new(&error), "SubscribeToShard: not found, but the shard is still listed; retrying");
                        }
                        // Subscribed again too soon, or a subscription of another worker
                        // is still being taken over; or throttled.
                        _ if service.is_some_and(|e| e.is_resource_in_use_exception()) => {
                            tracing::debug!(shard = %self.shard_id, ?delay, "subscription in use; retrying");
                        }
                        code if is_throttling(code)
                            || service.is_some_and(|e| e.is_limit_exceeded_exception()) =>
                        {
                            tracing::debug!(shard = %self.shard_id, ?delay, "SubscribeToShard throttled; backing off");
                        }
                        _ => {
                            tracing::warn!(shard = %self.shard_id, error = %ErrorChain::new(&error), ?delay, "SubscribeToShard failed; retrying");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = tx.closed() => return,
                    }
                    continue;
                }
            };
            tracing::debug!(shard = %self.shard_id, ?position, "subscribed");
            let mut last_records = Instant::now();
            let mut last_event = Instant::now();
            loop {
                let check_at = self
                    .config
                    .shard_end_check
                    .map(|every| last_records + every);
                let stall_at = self.config.stall_timeout.map(|after| last_event + after);
                let next = tokio::select! {
                    next = events.recv() => next,
                    _ = tx.closed() => return,
                    _ = async {
                        match stall_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        tracing::warn!(shard = %self.shard_id, silent = ?self.config.stall_timeout, "subscription stalled (no event); subscribing again");
                        self.metrics.counter(SUBSCRIPTION_STALLS).increment(1);
                        break;
                    }
                    _ = async {
                        match check_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        last_records = Instant::now();
                        if let Some(children) = self.closed_shard_children(&position).await {
                            tracing::info!(shard = %self.shard_id, "the shard is closed and fully read, but its subscription did not say so; ending it");
                            let batch = RecordBatch {
                                records: Vec::new(),
                                millis_behind_latest: None,
                                shard_end: Some(children),
                            };
                            let _ = tx.send(batch).await;
                            return;
                        }
                        continue;
                    }
                };
                match next {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                        delays = new_backoff();
                        last_event = Instant::now();
                        let had_records = !event.records.is_empty();
                        let Some(batch) =
                            apply_event(event, &mut position, self.options.deliver_empty_batches)
                        else {
                            continue;
                        };
                        if had_records {
                            last_records = Instant::now();
                        }
                        let ended = batch.shard_end.is_some();
                        if tx.send(batch).await.is_err() || ended {
                            return;
                        }
                        // Waiting for room in the queue is not a stall.
                        last_event = Instant::now();
                    }
                    Ok(Some(other)) => {
                        tracing::debug!(shard = %self.shard_id, event = ?other, "ignoring an unknown event");
                    }
                    Ok(None) => {
                        tracing::debug!(shard = %self.shard_id, "subscription ended; subscribing again");
                        break;
                    }
                    Err(error) => {
                        let delay = delays.next().unwrap_or(Duration::from_secs(5));
                        if matches!(
                            error.as_service_error(),
                            Some(SubscribeToShardEventStreamError::ResourceInUseException(_))
                        ) {
                            // Another subscription (of this worker's previous lease
                            // holder, or one not yet closed) still holds the shard.
                            tracing::debug!(shard = %self.shard_id, ?delay, "subscription in use; retrying");
                        } else {
                            tracing::warn!(shard = %self.shard_id, error = %ErrorChain::new(&error), ?delay, "subscription failed; subscribing again");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = tx.closed() => return,
                        }
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::{ChildShard, HashKeyRange, Record};

    fn record(seq: &str) -> Record {
        Record::builder()
            .sequence_number(seq)
            .partition_key("k")
            .data(Blob::new(b"x".to_vec()))
            .build()
            .unwrap()
    }

    fn event(
        records: &[&str],
        continuation: &str,
        children: Option<Vec<ChildShard>>,
    ) -> SubscribeToShardEvent {
        SubscribeToShardEvent::builder()
            .set_records(Some(records.iter().map(|s| record(s)).collect()))
            .continuation_sequence_number(continuation)
            .millis_behind_latest(42)
            .set_child_shards(children)
            .build()
            .unwrap()
    }

    fn child(id: &str) -> ChildShard {
        ChildShard::builder()
            .shard_id(id)
            .parent_shards("shardId-000000000000")
            .hash_key_range(
                HashKeyRange::builder()
                    .starting_hash_key("0")
                    .ending_hash_key("1")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn records_become_a_batch_and_move_the_position_after_the_last_record() {
        let mut position = StartingPosition::AtSequenceNumber("1".into());
        let batch = apply_event(event(&["1", "2", "3"], "3", None), &mut position, false).unwrap();
        let seqs: Vec<&str> = batch.records.iter().map(|r| r.sequence_number()).collect();
        assert_eq!(seqs, ["1", "2", "3"]);
        assert_eq!(batch.millis_behind_latest, Some(42));
        assert!(batch.shard_end.is_none());
        assert_eq!(position, StartingPosition::AfterSequenceNumber("3".into()));
    }

    #[test]
    fn an_empty_event_delivers_nothing_but_keeps_the_continuation() {
        let mut position = StartingPosition::TrimHorizon;
        assert!(apply_event(event(&[], "7", None), &mut position, false).is_none());
        assert_eq!(position, StartingPosition::AfterSequenceNumber("7".into()));
    }

    #[test]
    fn an_event_without_continuation_is_the_shard_end_with_its_children() {
        let mut position = StartingPosition::AfterSequenceNumber("5".into());
        let batch = apply_event(
            event(&["6"], "", Some(vec![child("c1"), child("c2")])),
            &mut position,
            false,
        )
        .unwrap();
        assert_eq!(batch.records.len(), 1);
        let children: Vec<&str> = batch
            .shard_end
            .as_deref()
            .unwrap()
            .iter()
            .map(|c| c.shard_id())
            .collect();
        assert_eq!(children, ["c1", "c2"]);
        assert_eq!(position, StartingPosition::AfterSequenceNumber("6".into()));

        // With no records and no children listed, it still ends the shard.
        let mut position = StartingPosition::AfterSequenceNumber("6".into());
        let batch = apply_event(event(&[], "", None), &mut position, false).unwrap();
        assert!(batch.records.is_empty());
        assert_eq!(batch.shard_end.as_deref().map(<[_]>::len), Some(0));
        assert_eq!(position, StartingPosition::AfterSequenceNumber("6".into()));
    }

    mod registration {
        use super::super::*;
        use aws_sdk_kinesis::operation::describe_stream_consumer::DescribeStreamConsumerOutput;
        use aws_sdk_kinesis::operation::register_stream_consumer::RegisterStreamConsumerOutput;
        use aws_sdk_kinesis::types::{Consumer, ConsumerDescription};
        use aws_smithy_mocks::{mock, mock_client, RuleMode};

        /// The SDK derives the endpoint from the ARN: it must parse.
        const STREAM_ARN: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/s";

        fn described(status: ConsumerStatus) -> DescribeStreamConsumerOutput {
            DescribeStreamConsumerOutput::builder()
                .consumer_description(
                    ConsumerDescription::builder()
                        .consumer_name("app")
                        .consumer_arn("arn:consumer")
                        .consumer_status(status)
                        .consumer_creation_timestamp(DateTime::from_secs(0))
                        .stream_arn(STREAM_ARN)
                        .build()
                        .unwrap(),
                )
                .build()
        }

        /// A service error as Kinesis sends it (awsJson1.1), parsed like a real one.
        fn error_body(code: &str) -> Option<String> {
            Some(format!(r#"{{"__type":"{code}","message":"injected"}}"#))
        }

        #[tokio::test]
        async fn a_missing_consumer_is_registered_then_awaited() {
            let describe = mock!(Client::describe_stream_consumer)
                .sequence()
                .http_status(400, error_body("ResourceNotFoundException"))
                .output(|| described(ConsumerStatus::Creating))
                .output(|| described(ConsumerStatus::Active))
                .build();
            let register = mock!(Client::register_stream_consumer)
                .match_requests(|r| {
                    r.stream_arn() == Some(STREAM_ARN) && r.consumer_name() == Some("app")
                })
                .then_output(|| {
                    RegisterStreamConsumerOutput::builder()
                        .consumer(
                            Consumer::builder()
                                .consumer_name("app")
                                .consumer_arn("arn:consumer")
                                .consumer_status(ConsumerStatus::Creating)
                                .consumer_creation_timestamp(DateTime::from_secs(0))
                                .build()
                                .unwrap(),
                        )
                        .build()
                });
            let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&describe, &register]);
            let arn = register_consumer(&client, STREAM_ARN, "app", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(arn, "arn:consumer");
            assert_eq!(describe.num_calls(), 3);
            assert_eq!(register.num_calls(), 1);
        }

        #[tokio::test]
        async fn losing_the_registration_race_describes_again() {
            let describe = mock!(Client::describe_stream_consumer)
                .sequence()
                .http_status(400, error_body("ResourceNotFoundException"))
                .output(|| described(ConsumerStatus::Active))
                .build();
            let register = mock!(Client::register_stream_consumer)
                .sequence()
                .http_status(400, error_body("ResourceInUseException"))
                .build();
            let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&describe, &register]);
            let arn = register_consumer(&client, STREAM_ARN, "app", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(arn, "arn:consumer");
            assert_eq!((describe.num_calls(), register.num_calls()), (2, 1));
        }

        #[tokio::test]
        async fn an_active_consumer_is_not_registered_again() {
            let describe = mock!(Client::describe_stream_consumer)
                .then_output(|| described(ConsumerStatus::Active));
            let register = mock!(Client::register_stream_consumer)
                .sequence()
                .http_status(400, error_body("ResourceInUseException"))
                .build();
            let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&describe, &register]);
            register_consumer(&client, STREAM_ARN, "app", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!((describe.num_calls(), register.num_calls()), (1, 0));
        }

        #[tokio::test]
        async fn a_consumer_that_stays_creating_is_a_typed_error() {
            let describe = mock!(Client::describe_stream_consumer)
                .then_output(|| described(ConsumerStatus::Creating));
            let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&describe]);
            let error = register_consumer(&client, STREAM_ARN, "app", Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(
                matches!(&error, FanOutError::NotActive { consumer, status, .. } if consumer == "app" && status == "CREATING"),
                "{error:?}"
            );
        }

        #[tokio::test]
        async fn a_rejected_registration_is_a_typed_error() {
            let describe = mock!(Client::describe_stream_consumer)
                .sequence()
                .http_status(400, error_body("ResourceNotFoundException"))
                .build();
            let register = mock!(Client::register_stream_consumer)
                .sequence()
                .http_status(400, error_body("InvalidArgumentException"))
                .build();
            let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&describe, &register]);
            let error = register_consumer(&client, STREAM_ARN, "app", Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(matches!(error, FanOutError::Register { .. }), "{error:?}");
        }
    }

    #[test]
    fn starting_positions_map_to_subscribe_to_shard_types() {
        let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let cases = [
            (
                StartingPosition::TrimHorizon,
                ShardIteratorType::TrimHorizon,
                None,
                None,
            ),
            (
                StartingPosition::Latest,
                ShardIteratorType::Latest,
                None,
                None,
            ),
            (
                StartingPosition::AtTimestamp(at),
                ShardIteratorType::AtTimestamp,
                None,
                Some(DateTime::from(at)),
            ),
            (
                StartingPosition::AtSequenceNumber("9".into()),
                ShardIteratorType::AtSequenceNumber,
                Some("9"),
                None,
            ),
            (
                StartingPosition::AfterSequenceNumber("9".into()),
                ShardIteratorType::AfterSequenceNumber,
                Some("9"),
                None,
            ),
        ];
        for (position, kind, seq, timestamp) in cases {
            let built = kinesis_position(&position).unwrap();
            assert_eq!(built.r#type(), &kind);
            assert_eq!(built.sequence_number(), seq);
            assert_eq!(built.timestamp(), timestamp.as_ref());
        }
    }
}
