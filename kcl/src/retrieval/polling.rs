//! Polling retrieval: GetShardIterator + GetRecords for one shard, with a bounded prefetch
//! queue, iterator renewal and backoff.

use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

use crate::error::{ErrorChain, ErrorKind};
use aws_sdk_kinesis::operation::get_shard_iterator::builders::GetShardIteratorFluentBuilder;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{ChildShard, Record, ShardIteratorType};
use aws_sdk_kinesis::Client;

use crate::stream::StreamRef;

use super::pacing::{LagAwarePolling, Pacer, ReadOutcome};
use super::{
    confirm_shard_gone, prefetch_queue, FetchError, FetchOptions, PrefetchSender, Prefetched,
    ShardCheck, TrimmedCheckpoint,
};
use crate::metrics::{ReadMetrics, ShardLabels, CHECKPOINT_TRIM_HORIZON_FALLBACKS};

/// Settings of polling retrieval.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PollingConfig {
    /// Most records per GetRecords call (Java KCL `maxRecords`, default 10,000, the
    /// service's maximum).
    pub max_records: i32,
    /// Pause after each GetRecords call (Java KCL `idleTimeBetweenReadsInMillis`,
    /// default 1,500 ms). Kinesis allows 5 GetRecords calls per second per shard, shared
    /// by every consumer of the stream.
    pub idle_time_between_reads: Duration,
    /// Batches fetched ahead of the processor (Java KCL `maxPendingProcessRecordsInput`,
    /// default 3).
    pub prefetch_batches: usize,
    /// Lag-aware pauses between calls instead of the fixed `idle_time_between_reads`
    /// (default `None`: fixed, as the Java KCL); see [`LagAwarePolling`].
    pub lag_aware: Option<LagAwarePolling>,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            max_records: 10_000,
            idle_time_between_reads: Duration::from_millis(1_500),
            prefetch_batches: 3,
            lag_aware: None,
        }
    }
}

/// Where reading a shard starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record.
    TrimHorizon,
    /// After the newest record.
    Latest,
    /// The first record at or after a time.
    AtTimestamp(SystemTime),
    /// At a record (used to resume inside a KPL aggregate).
    AtSequenceNumber(String),
    /// Right after a record.
    AfterSequenceNumber(String),
}

impl StartingPosition {
    /// Whether the position is a sequence number (which Kinesis rejects once the record
    /// has left the retention period).
    pub(crate) fn names_a_record(&self) -> bool {
        matches!(
            self,
            StartingPosition::AtSequenceNumber(_) | StartingPosition::AfterSequenceNumber(_)
        )
    }

    /// Sets this position on a GetShardIterator request.
    pub(crate) fn shard_iterator_request(
        &self,
        request: GetShardIteratorFluentBuilder,
    ) -> GetShardIteratorFluentBuilder {
        match self {
            StartingPosition::TrimHorizon => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            StartingPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartingPosition::AtTimestamp(time) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*time)),
            StartingPosition::AtSequenceNumber(seq) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
            StartingPosition::AfterSequenceNumber(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        }
    }
}

/// One GetRecords result.
#[derive(Clone, Debug)]
pub struct RecordBatch {
    /// The Kinesis records (not yet deaggregated).
    pub records: Vec<Record>,
    /// How far behind the tip of the shard this read was.
    pub millis_behind_latest: Option<i64>,
    /// `Some` when the shard is closed and this was its last batch: the child shards.
    pub shard_end: Option<Vec<ChildShard>>,
}

/// Reads one shard into a bounded read-ahead queue until the shard ends or the receiver
/// is dropped.
#[derive(Clone, Debug)]
pub struct PollingFetcher {
    client: Client,
    stream: StreamRef,
    shard_id: String,
    config: PollingConfig,
    options: FetchOptions,
    metrics: ShardLabels,
}

enum Failure {
    /// The iterator expired or is bad: get a new one from the last delivered record.
    Iterator,
    Throttled,
    /// The shard is not in the stream (or the stream is gone).
    NotFound,
    Other,
}

fn classify<E, R>(error: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata,
{
    match error.code() {
        Some("ExpiredIteratorException") => Failure::Iterator,
        Some("InvalidArgumentException") => Failure::Iterator,
        Some(code) => match ErrorKind::from_code(code) {
            ErrorKind::Throttled => Failure::Throttled,
            ErrorKind::NotFound => Failure::NotFound,
            _ => Failure::Other,
        },
        // kinesis-mock answers a bad iterator with HTTP 500 and an empty body.
        None if matches!(error, SdkError::ServiceError(_)) => Failure::Iterator,
        _ => Failure::Other,
    }
}

/// Backoff of GetShardIterator and GetRecords retries.
fn backoff() -> impl Iterator<Item = Duration> {
    super::backoff(Duration::from_millis(100), Duration::from_secs(5))
}

/// Why reading stops.
enum Stop {
    /// The receiver is gone.
    Closed,
    /// The shard left the stream: its end, with the children ListShards shows.
    Gone(Vec<ChildShard>),
    /// The shard cannot be read.
    Failed(FetchError),
}

impl PollingFetcher {
    /// A fetcher for one shard, whose metrics are labelled `metrics`.
    pub(crate) fn new(
        client: Client,
        stream: StreamRef,
        shard_id: String,
        config: PollingConfig,
        options: FetchOptions,
        metrics: ShardLabels,
    ) -> Self {
        PollingFetcher {
            client,
            stream,
            shard_id,
            config,
            options,
            metrics,
        }
    }

    /// Starts reading at `start`; returns the receiving end of the read-ahead queue. The
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

    async fn pause(&self, delay: Duration, tx: &PrefetchSender) -> Result<(), Stop> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = tx.closed() => Err(Stop::Closed),
        }
    }

    async fn shard_iterator(
        &self,
        position: &StartingPosition,
        tx: &PrefetchSender,
    ) -> Result<String, Stop> {
        let mut delays = backoff();
        let mut position = position.clone();
        loop {
            let request = self
                .stream
                .get_shard_iterator(&self.client)
                .shard_id(&self.shard_id);
            let request = position.shard_iterator_request(request);
            let sent = tokio::select! {
                sent = tokio::time::timeout(self.options.request_timeout, request.send()) => sent,
                _ = tx.closed() => return Err(Stop::Closed),
            };
            match sent {
                Ok(Ok(out)) => {
                    if let Some(iterator) = out.shard_iterator {
                        return Ok(iterator);
                    }
                    tracing::warn!(shard = %self.shard_id, "GetShardIterator returned no iterator");
                }
                Ok(Err(error))
                    if error.code() == Some("InvalidArgumentException")
                        && position.names_a_record() =>
                {
                    self.metrics
                        .counter(CHECKPOINT_TRIM_HORIZON_FALLBACKS)
                        .increment(1);
                    if self.options.on_trimmed_checkpoint == TrimmedCheckpoint::Fail {
                        tracing::error!(shard = %self.shard_id, ?position, error = %ErrorChain::new(&error), "sequence number rejected (trimmed?); not reading the shard (TrimmedCheckpoint::Fail)");
                        return Err(Stop::Failed(FetchError::CheckpointRejected(format!(
                            "{position:?}"
                        ))));
                    }
                    // The checkpointed record is gone (older than the retention period):
                    // every record after it that still exists starts at the trim horizon.
                    // Records between the checkpoint and the trim horizon are lost: say so.
                    tracing::error!(shard = %self.shard_id, ?position, error = %ErrorChain::new(&error), "sequence number rejected (trimmed?); reading from TRIM_HORIZON: records between the checkpoint and the oldest record still in the shard are not delivered");
                    position = StartingPosition::TrimHorizon;
                    continue;
                }
                Ok(Err(error)) if error.code() == Some("ResourceNotFoundException") => {
                    match confirm_shard_gone(
                        &self.client,
                        &self.stream,
                        &self.shard_id,
                        &self.metrics,
                        self.options.request_timeout,
                    )
                    .await
                    {
                        ShardCheck::Gone(children) => return Err(Stop::Gone(children)),
                        ShardCheck::StreamGone(error) => {
                            return Err(Stop::Failed(FetchError::StreamNotFound(error)))
                        }
                        ShardCheck::Unconfirmed => {}
                    }
                    tracing::warn!(shard = %self.shard_id, error = %ErrorChain::new(&error), "GetShardIterator: not found, but the shard is still listed; retrying");
                }
                Ok(Err(error)) => {
                    tracing::warn!(shard = %self.shard_id, error = %ErrorChain::new(&error), "GetShardIterator failed; retrying");
                }
                Err(_) => {
                    tracing::warn!(shard = %self.shard_id, timeout = ?self.options.request_timeout, "GetShardIterator timed out; retrying");
                }
            }
            self.pause(delays.next().unwrap_or(Duration::from_secs(5)), tx)
                .await?;
        }
    }

    async fn run(self, start: StartingPosition, tx: PrefetchSender) {
        match self.read(start, &tx).await {
            Ok(()) | Err(Stop::Closed) => {}
            Err(Stop::Gone(children)) => {
                let _ = tx
                    .send(RecordBatch {
                        records: Vec::new(),
                        millis_behind_latest: None,
                        shard_end: Some(children),
                    })
                    .await;
            }
            Err(Stop::Failed(error)) => tx.fail(error).await,
        }
    }

    async fn read(&self, start: StartingPosition, tx: &PrefetchSender) -> Result<(), Stop> {
        let metrics = ReadMetrics::get_records(&self.metrics);
        let mut iterator = self.shard_iterator(&start, tx).await?;
        let mut last_sequence: Option<String> = None;
        let mut delays = backoff();
        let mut pacer = Pacer::new(
            self.config.idle_time_between_reads,
            self.config.lag_aware.clone(),
        );
        loop {
            let request = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(self.config.max_records)
                .send();
            let sent = std::time::Instant::now();
            let result = tokio::select! {
                result = tokio::time::timeout(self.options.request_timeout, request) => result,
                _ = tx.closed() => return Err(Stop::Closed),
            };
            metrics.record(matches!(result, Ok(Ok(_))).then(|| sent.elapsed()));
            let result = match result {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(shard = %self.shard_id, timeout = ?self.options.request_timeout, "GetRecords timed out; retrying");
                    self.pause(delays.next().unwrap_or(Duration::from_secs(5)), tx)
                        .await?;
                    continue;
                }
            };
            match result {
                Ok(out) => {
                    delays = backoff();
                    if let Some(last) = out.records().last() {
                        last_sequence = Some(last.sequence_number().to_owned());
                    }
                    let next = out.next_shard_iterator.clone();
                    let pause = pacer.after(ReadOutcome {
                        records: out.records().len(),
                        limit: usize::try_from(self.config.max_records).unwrap_or(usize::MAX),
                        millis_behind_latest: out.millis_behind_latest,
                    });
                    let batch = RecordBatch {
                        millis_behind_latest: out.millis_behind_latest,
                        shard_end: next.is_none().then(|| out.child_shards().to_vec()),
                        records: out.records,
                    };
                    let ended = batch.shard_end.is_some();
                    if (!batch.records.is_empty() || ended || self.options.deliver_empty_batches)
                        && tx.send(batch).await.is_err()
                    {
                        return Err(Stop::Closed);
                    }
                    match next {
                        Some(next) if !ended => iterator = next,
                        _ => return Ok(()),
                    }
                    self.pause(pause, tx).await?;
                }
                Err(error) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    match classify(&error) {
                        Failure::Iterator => {
                            self.pause(delay, tx).await?;
                            tracing::info!(shard = %self.shard_id, error = %ErrorChain::new(&error), "shard iterator expired or invalid; renewing it");
                            let position = match &last_sequence {
                                Some(seq) => StartingPosition::AfterSequenceNumber(seq.clone()),
                                None => start.clone(),
                            };
                            iterator = self.shard_iterator(&position, tx).await?;
                        }
                        Failure::NotFound => {
                            match confirm_shard_gone(
                                &self.client,
                                &self.stream,
                                &self.shard_id,
                                &self.metrics,
                                self.options.request_timeout,
                            )
                            .await
                            {
                                ShardCheck::Gone(children) => return Err(Stop::Gone(children)),
                                ShardCheck::StreamGone(error) => {
                                    return Err(Stop::Failed(FetchError::StreamNotFound(error)))
                                }
                                ShardCheck::Unconfirmed => {}
                            }
                            tracing::warn!(shard = %self.shard_id, error = %ErrorChain::new(&error), ?delay, "GetRecords: not found, but the shard is still listed; retrying");
                            self.pause(delay, tx).await?;
                        }
                        Failure::Throttled => {
                            tracing::debug!(shard = %self.shard_id, ?delay, "GetRecords throttled; backing off");
                            self.pause(delay, tx).await?;
                        }
                        Failure::Other => {
                            tracing::warn!(shard = %self.shard_id, error = %ErrorChain::new(&error), ?delay, "GetRecords failed; retrying");
                            self.pause(delay, tx).await?;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
    use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorOutput;
    use aws_sdk_kinesis::primitives::Blob;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    use super::*;

    /// The labels of the metrics of the shard the tests read.
    fn labels() -> ShardLabels {
        crate::metrics::WorkerLabels::new("app", "w1")
            .stream("stream")
            .shard("shardId-0")
    }

    /// Read-ahead stops at `prefetch_bytes` even when many more batches would be allowed:
    /// with 2 MiB per GetRecords and the 8 MiB default, four batches wait in the queue and
    /// the fetcher holds a fifth.
    #[tokio::test]
    async fn prefetch_is_bounded_by_bytes() {
        let iterator = mock!(Client::get_shard_iterator).then_output(|| {
            GetShardIteratorOutput::builder()
                .shard_iterator("it")
                .build()
        });
        let records = mock!(Client::get_records).then_output(|| {
            GetRecordsOutput::builder()
                .set_records(Some(
                    (0..2)
                        .map(|i| {
                            Record::builder()
                                .sequence_number(i.to_string())
                                .partition_key("k")
                                .data(Blob::new(vec![0u8; 1 << 20]))
                                .build()
                                .unwrap()
                        })
                        .collect(),
                ))
                .next_shard_iterator("it")
                .millis_behind_latest(1_000)
                .build()
                .unwrap()
        });
        let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&iterator, &records]);
        let config = PollingConfig {
            prefetch_batches: 100,
            idle_time_between_reads: Duration::ZERO,
            ..PollingConfig::default()
        };
        let fetcher = PollingFetcher::new(
            client,
            StreamRef::new("stream"),
            "shardId-0".into(),
            config,
            FetchOptions::default(),
            labels(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        let batches = fetcher.spawn(StartingPosition::TrimHorizon, &mut tasks);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let calls = records.num_calls();
        assert!(calls <= 5, "{calls} GetRecords calls of 2 MiB read ahead");
        drop(batches);
    }

    /// With `TrimmedCheckpoint::Fail`, a rejected checkpoint is reported, not read past:
    /// no TRIM_HORIZON iterator is asked for.
    #[tokio::test]
    async fn a_trimmed_checkpoint_fails_when_asked_to() {
        let rejected = mock!(Client::get_shard_iterator)
            .match_requests(|r| r.shard_iterator_type() == Some(&ShardIteratorType::AtSequenceNumber))
            .then_http_response(|| {
                aws_smithy_runtime_api::http::Response::new(
                    aws_smithy_runtime_api::http::StatusCode::try_from(400).unwrap(),
                    aws_smithy_types::body::SdkBody::from(
                        r#"{"__type":"InvalidArgumentException","message":"sequence number trimmed"}"#,
                    ),
                )
            });
        let trim_horizon = mock!(Client::get_shard_iterator)
            .match_requests(|r| r.shard_iterator_type() == Some(&ShardIteratorType::TrimHorizon))
            .then_output(|| {
                GetShardIteratorOutput::builder()
                    .shard_iterator("it")
                    .build()
            });
        let client = mock_client!(
            aws_sdk_kinesis,
            RuleMode::MatchAny,
            [&rejected, &trim_horizon]
        );
        let fetcher = PollingFetcher::new(
            client,
            StreamRef::new("stream"),
            "shardId-0".into(),
            PollingConfig::default(),
            FetchOptions {
                on_trimmed_checkpoint: TrimmedCheckpoint::Fail,
                ..FetchOptions::default()
            },
            labels(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        let mut batches = fetcher.spawn(StartingPosition::AtSequenceNumber("3".into()), &mut tasks);
        let result = tokio::time::timeout(Duration::from_secs(5), batches.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(result, Err(FetchError::CheckpointRejected(_))),
            "{result:?}"
        );
        assert_eq!(rejected.num_calls(), 1);
        assert_eq!(trim_horizon.num_calls(), 0);
    }

    /// A throttled GetRecords is counted as a failure (and not timed), the retry as a
    /// success.
    #[test]
    fn get_records_outcomes_are_counted() {
        let recorder = crate::test_util::CountingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let iterator = mock!(Client::get_shard_iterator).then_output(|| {
                        GetShardIteratorOutput::builder().shard_iterator("it").build()
                    });
                    let throttled = mock!(Client::get_records).then_http_response(|| {
                        aws_smithy_runtime_api::http::Response::new(
                            aws_smithy_runtime_api::http::StatusCode::try_from(400).unwrap(),
                            aws_smithy_types::body::SdkBody::from(
                                r#"{"__type":"ProvisionedThroughputExceededException","message":"slow down"}"#,
                            ),
                        )
                    });
                    // The shard's last records: no next iterator, so the fetcher ends.
                    let last = mock!(Client::get_records).then_output(|| {
                        GetRecordsOutput::builder()
                            .records(
                                Record::builder()
                                    .sequence_number("1")
                                    .partition_key("k")
                                    .data(Blob::new("x"))
                                    .build()
                                    .unwrap(),
                            )
                            .millis_behind_latest(0)
                            .build()
                            .unwrap()
                    });
                    let client = mock_client!(
                        aws_sdk_kinesis,
                        RuleMode::Sequential,
                        [&iterator, &throttled, &last]
                    );
                    let fetcher = PollingFetcher::new(
                        client,
                        StreamRef::new("stream"),
                        "shardId-0".into(),
                        PollingConfig::default(),
                        FetchOptions::default(),
                        labels(),
                    );
                    let mut tasks = tokio::task::JoinSet::new();
                    let mut batches = fetcher.spawn(StartingPosition::TrimHorizon, &mut tasks);
                    let batch = tokio::time::timeout(Duration::from_secs(5), batches.recv())
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    assert_eq!(batch.records.len(), 1);
                    while tasks.join_next().await.is_some() {}
                })
        });
        let count = |outcome: &str| {
            recorder.counter(
                "kinesis_consumer_get_records",
                &[
                    ("application", "app"),
                    ("stream", "stream"),
                    ("shard", "shardId-0"),
                    ("outcome", outcome),
                ],
            )
        };
        assert_eq!(count("failure"), 1);
        assert_eq!(count("success"), 1);
    }

    /// The fallback to TRIM_HORIZON is counted in `kinesis_consumer_checkpoint_trim_horizon_fallbacks`.
    #[test]
    fn the_fallback_to_trim_horizon_is_counted() {
        let recorder = crate::test_util::CountingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(a_trimmed_checkpoint_falls_back_to_trim_horizon_body())
        });
        assert_eq!(
            recorder.counter(
                "kinesis_consumer_checkpoint_trim_horizon_fallbacks",
                &[
                    ("application", "app"),
                    ("stream", "stream"),
                    ("shard", "shardId-0")
                ]
            ),
            1
        );
    }

    #[tokio::test]
    async fn a_trimmed_checkpoint_falls_back_to_trim_horizon() {
        a_trimmed_checkpoint_falls_back_to_trim_horizon_body().await;
    }

    async fn a_trimmed_checkpoint_falls_back_to_trim_horizon_body() {
        // Kinesis rejects a sequence number that left the retention period.
        let rejected = mock!(Client::get_shard_iterator)
            .match_requests(|r| r.shard_iterator_type() == Some(&ShardIteratorType::AfterSequenceNumber))
            .then_http_response(|| {
                aws_smithy_runtime_api::http::Response::new(
                    aws_smithy_runtime_api::http::StatusCode::try_from(400).unwrap(),
                    aws_smithy_types::body::SdkBody::from(
                        r#"{"__type":"InvalidArgumentException","message":"sequence number trimmed"}"#,
                    ),
                )
            });
        let trim_horizon = mock!(Client::get_shard_iterator)
            .match_requests(|r| r.shard_iterator_type() == Some(&ShardIteratorType::TrimHorizon))
            .then_output(|| {
                GetShardIteratorOutput::builder()
                    .shard_iterator("it-1")
                    .build()
            });
        let records = mock!(Client::get_records)
            .match_requests(|r| r.shard_iterator() == Some("it-1"))
            .then_output(|| {
                GetRecordsOutput::builder()
                    .records(
                        Record::builder()
                            .sequence_number("7")
                            .partition_key("k")
                            .data(Blob::new("oldest still there"))
                            .build()
                            .unwrap(),
                    )
                    .millis_behind_latest(0)
                    .build()
                    .unwrap()
            });
        let client = mock_client!(
            aws_sdk_kinesis,
            RuleMode::MatchAny,
            [&rejected, &trim_horizon, &records]
        );
        let fetcher = PollingFetcher::new(
            client,
            StreamRef::new("stream"),
            "shardId-0".into(),
            PollingConfig::default(),
            FetchOptions::default(),
            labels(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        let mut batches = fetcher.spawn(
            StartingPosition::AfterSequenceNumber("3".into()),
            &mut tasks,
        );
        let batch = tokio::time::timeout(Duration::from_secs(5), batches.recv())
            .await
            .expect("a batch, not endless retries of the rejected position")
            .unwrap()
            .unwrap();
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.records[0].sequence_number(), "7");
        assert!(
            batch.shard_end.is_some(),
            "no next iterator: the shard ended"
        );
        assert_eq!(rejected.num_calls(), 1);
        assert_eq!(trim_horizon.num_calls(), 1);
    }
}
