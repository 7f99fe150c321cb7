//! Polling retrieval: GetShardIterator + GetRecords for one shard, with a bounded prefetch
//! queue, iterator renewal and backoff.

use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_shard_iterator::builders::GetShardIteratorFluentBuilder;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{ChildShard, Record, ShardIteratorType};
use aws_sdk_kinesis::Client;
use tokio::sync::mpsc;

/// Settings of polling retrieval.
#[derive(Clone, Debug)]
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
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            max_records: 10_000,
            idle_time_between_reads: Duration::from_millis(1_500),
            prefetch_batches: 3,
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

/// Reads one shard into a bounded channel until the shard ends or the receiver is
/// dropped.
#[derive(Clone, Debug)]
pub struct PollingFetcher {
    client: Client,
    stream: String,
    shard_id: String,
    config: PollingConfig,
}

enum Failure {
    /// The iterator expired or is bad: get a new one from the last delivered record.
    Iterator,
    Throttled,
    Other,
}

fn classify<E, R>(error: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata,
{
    match error.code() {
        Some("ExpiredIteratorException") => Failure::Iterator,
        Some("ProvisionedThroughputExceededException" | "LimitExceededException")
        | Some("KMSThrottlingException") => Failure::Throttled,
        Some("InvalidArgumentException") => Failure::Iterator,
        // kinesis-mock answers a bad iterator with HTTP 500 and an empty body.
        None if matches!(error, SdkError::ServiceError(_)) => Failure::Iterator,
        _ => Failure::Other,
    }
}

/// Backoff of GetShardIterator and GetRecords retries.
fn backoff() -> impl Iterator<Item = Duration> {
    super::backoff(Duration::from_millis(100), Duration::from_secs(5))
}

impl PollingFetcher {
    /// A fetcher for one shard.
    pub fn new(client: Client, stream: String, shard_id: String, config: PollingConfig) -> Self {
        PollingFetcher {
            client,
            stream,
            shard_id,
            config,
        }
    }

    /// Starts reading at `start`; returns the receiving end of the prefetch queue. The
    /// reading task stops when the receiver is dropped or the shard ended.
    pub fn spawn(
        self,
        start: StartingPosition,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> mpsc::Receiver<RecordBatch> {
        let (tx, rx) = mpsc::channel(self.config.prefetch_batches.max(1));
        tasks.spawn(async move { self.run(start, tx).await });
        rx
    }

    async fn shard_iterator(&self, position: &StartingPosition) -> String {
        let mut delays = backoff();
        let mut position = position.clone();
        loop {
            let request = self
                .client
                .get_shard_iterator()
                .stream_name(&self.stream)
                .shard_id(&self.shard_id);
            let request = position.shard_iterator_request(request);
            match request.send().await {
                Ok(out) => {
                    if let Some(iterator) = out.shard_iterator {
                        return iterator;
                    }
                    tracing::warn!(shard = %self.shard_id, "GetShardIterator returned no iterator");
                }
                Err(error)
                    if error.code() == Some("InvalidArgumentException")
                        && position.names_a_record() =>
                {
                    // The checkpointed record is gone (older than the retention period):
                    // every record after it that still exists starts at the trim horizon.
                    tracing::warn!(shard = %self.shard_id, ?position, error = %DisplayErrorContext(&error), "sequence number rejected; reading from TRIM_HORIZON");
                    position = StartingPosition::TrimHorizon;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(shard = %self.shard_id, error = %DisplayErrorContext(&error), "GetShardIterator failed; retrying");
                }
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
        }
    }

    async fn run(self, start: StartingPosition, tx: mpsc::Sender<RecordBatch>) {
        let mut iterator = self.shard_iterator(&start).await;
        let mut last_sequence: Option<String> = None;
        let mut delays = backoff();
        loop {
            let result = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(self.config.max_records)
                .send()
                .await;
            match result {
                Ok(out) => {
                    delays = backoff();
                    if let Some(last) = out.records().last() {
                        last_sequence = Some(last.sequence_number().to_owned());
                    }
                    let next = out.next_shard_iterator.clone();
                    let batch = RecordBatch {
                        millis_behind_latest: out.millis_behind_latest,
                        shard_end: next.is_none().then(|| out.child_shards().to_vec()),
                        records: out.records,
                    };
                    let ended = batch.shard_end.is_some();
                    if (!batch.records.is_empty() || ended) && tx.send(batch).await.is_err() {
                        return;
                    }
                    match next {
                        Some(next) if !ended => iterator = next,
                        _ => return,
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.idle_time_between_reads) => {}
                        _ = tx.closed() => return,
                    }
                }
                Err(error) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    match classify(&error) {
                        Failure::Iterator => {
                            tokio::time::sleep(delay).await;
                            tracing::info!(shard = %self.shard_id, error = %DisplayErrorContext(&error), "shard iterator expired or invalid; renewing it");
                            let position = match &last_sequence {
                                Some(seq) => StartingPosition::AfterSequenceNumber(seq.clone()),
                                None => start.clone(),
                            };
                            iterator = self.shard_iterator(&position).await;
                        }
                        Failure::Throttled => {
                            tracing::debug!(shard = %self.shard_id, ?delay, "GetRecords throttled; backing off");
                            tokio::time::sleep(delay).await;
                        }
                        Failure::Other => {
                            tracing::warn!(shard = %self.shard_id, error = %DisplayErrorContext(&error), ?delay, "GetRecords failed; retrying");
                            tokio::time::sleep(delay).await;
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

    #[tokio::test]
    async fn a_trimmed_checkpoint_falls_back_to_trim_horizon() {
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
            "stream".into(),
            "shardId-0".into(),
            PollingConfig::default(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        let mut batches = fetcher.spawn(
            StartingPosition::AfterSequenceNumber("3".into()),
            &mut tasks,
        );
        let batch = tokio::time::timeout(Duration::from_secs(5), batches.recv())
            .await
            .expect("a batch, not endless retries of the rejected position")
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
