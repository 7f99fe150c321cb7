//! Getting records from Kinesis: polling (GetRecords) or enhanced fan-out
//! (SubscribeToShard), both into the same bounded queue of [`RecordBatch`]es.

pub mod fan_out;
mod pacing;
pub mod polling;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::types::{ChildShard, HashKeyRange};
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::error::{ErrorKind, ServiceError};
use crate::metrics::{ShardLabels, SHARDS_GONE_FROM_STREAM};
use crate::stream::StreamRef;

pub use fan_out::{register_consumer, FanOutConfig, FanOutError, FanOutFetcher};
pub use pacing::LagAwarePolling;
pub use polling::{PollingConfig, PollingFetcher, RecordBatch, StartingPosition};

/// How a worker reads its shards; see [`SchedulerBuilder::retrieval_mode`](crate::SchedulerBuilder::retrieval_mode).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RetrievalMode {
    /// GetRecords polling (the default; Java KCL `PollingConfig`). Every consumer of the
    /// stream shares each shard's 2 MiB/s and 5 GetRecords calls/s.
    Polling(PollingConfig),
    /// Enhanced fan-out (Java KCL `FanOutConfig`, its default retrieval): a registered
    /// stream consumer with its own 2 MiB/s per shard, records pushed over SubscribeToShard
    /// (~70 ms propagation instead of ~200 ms+). Costs extra on AWS.
    FanOut(FanOutConfig),
}

impl Default for RetrievalMode {
    fn default() -> Self {
        RetrievalMode::Polling(PollingConfig::default())
    }
}

impl RetrievalMode {
    /// Batches read ahead per shard, whichever the mode.
    pub fn prefetch_batches(&self) -> usize {
        match self {
            RetrievalMode::Polling(polling) => polling.prefetch_batches,
            RetrievalMode::FanOut(fan_out) => fan_out.prefetch_batches,
        }
    }
}

/// What to do when Kinesis rejects the checkpointed sequence number (the record left the
/// retention period, or the checkpoint is not of this shard).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrimmedCheckpoint {
    /// Read from `TRIM_HORIZON`, the oldest record still there (the Java KCL's behaviour),
    /// with an error log and the metric `kinesis_consumer_checkpoint_trim_horizon_fallbacks`.
    #[default]
    ReadFromTrimHorizon,
    /// Do not read the shard: the shard consumer fails (error log, same metric) and is
    /// retried with backoff, until an operator resets the checkpoint (`leases --reset-to`).
    Fail,
}

/// Why a shard cannot be read.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The checkpointed sequence number was rejected and [`TrimmedCheckpoint::Fail`] is
    /// set.
    #[error(
        "the checkpointed position {0} was rejected (trimmed?); not falling back to TRIM_HORIZON"
    )]
    CheckpointRejected(String),
    /// The stream does not exist any more (a read said the shard was not found, and
    /// ListShards said the same of the stream).
    #[error("the stream is gone")]
    StreamNotFound(#[source] ServiceError),
}

/// Settings every fetcher shares, from the scheduler's configuration.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Timeout of one Kinesis call (GetShardIterator, GetRecords, ListShards, the start of
    /// SubscribeToShard).
    pub request_timeout: Duration,
    /// What a rejected checkpoint does.
    pub on_trimmed_checkpoint: TrimmedCheckpoint,
    /// Most bytes (record data and partition keys) read ahead and not yet taken by the
    /// processor.
    pub prefetch_bytes: usize,
    /// Deliver batches without records too (so the processor sees `millis_behind_latest`
    /// at the tip).
    pub deliver_empty_batches: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            request_timeout: Duration::from_secs(30),
            on_trimmed_checkpoint: TrimmedCheckpoint::default(),
            prefetch_bytes: 8 * 1024 * 1024,
            deliver_empty_batches: false,
        }
    }
}

type Item = (
    Result<RecordBatch, FetchError>,
    Option<OwnedSemaphorePermit>,
);

/// The receiving end of a shard's read-ahead queue, bounded in batches and in bytes.
#[derive(Debug)]
pub struct Prefetched {
    rx: mpsc::Receiver<Item>,
}

impl Prefetched {
    /// The next batch, or why the shard cannot be read; `None` when the fetcher stopped.
    /// Taking a batch frees its bytes for read-ahead.
    pub async fn recv(&mut self) -> Option<Result<RecordBatch, FetchError>> {
        let (item, _bytes) = self.rx.recv().await?;
        Some(item)
    }
}

/// The sending end of a read-ahead queue.
#[derive(Debug)]
pub(crate) struct PrefetchSender {
    tx: mpsc::Sender<Item>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

pub(crate) fn prefetch_queue(batches: usize, max_bytes: usize) -> (PrefetchSender, Prefetched) {
    let (tx, rx) = mpsc::channel(batches.max(1));
    let max_bytes = max_bytes.clamp(1, Semaphore::MAX_PERMITS);
    (
        PrefetchSender {
            tx,
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        },
        Prefetched { rx },
    )
}

/// Bytes a batch holds: record data and partition keys.
pub(crate) fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .records
        .iter()
        .map(|r| r.data().as_ref().len() + r.partition_key().map_or(0, str::len))
        .sum()
}

/// The receiver is gone.
#[derive(Debug)]
pub(crate) struct Closed;

impl PrefetchSender {
    /// Queues a batch once its bytes fit (a batch larger than the whole budget waits for
    /// an empty queue).
    pub(crate) async fn send(&self, batch: RecordBatch) -> Result<(), Closed> {
        let size = batch_bytes(&batch).clamp(1, self.max_bytes) as u32;
        let permit = tokio::select! {
            permit = self.bytes.clone().acquire_many_owned(size) => permit.map_err(|_| Closed)?,
            _ = self.tx.closed() => return Err(Closed),
        };
        self.tx
            .send((Ok(batch), Some(permit)))
            .await
            .map_err(|_| Closed)
    }

    pub(crate) async fn fail(&self, error: FetchError) {
        let _ = self.tx.send((Err(error), None)).await;
    }

    pub(crate) async fn closed(&self) {
        self.tx.closed().await
    }
}

/// What ListShards says of a shard a read did not find.
#[derive(Debug)]
pub(crate) enum ShardCheck {
    /// The shard is still listed, or the listing failed for another reason: retry.
    Unconfirmed,
    /// The shard left the stream (it aged out of the retention period); its children as
    /// ListShards shows them.
    Gone(Vec<ChildShard>),
    /// The stream itself is gone.
    StreamGone(ServiceError),
}

/// After a ResourceNotFoundException for `shard_id`: lists the stream's shards to tell a
/// shard that left the stream from a deleted stream from a passing error.
pub(crate) async fn confirm_shard_gone(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    shard_id: &str,
    metrics: &ShardLabels,
    timeout: Duration,
) -> ShardCheck {
    let shards = match tokio::time::timeout(timeout, list_shards(client, stream)).await {
        Ok(Ok(shards)) => shards,
        Ok(Err(error)) if error.kind() == ErrorKind::NotFound => {
            tracing::error!(shard = %shard_id, %error, "the stream is gone");
            return ShardCheck::StreamGone(error);
        }
        Ok(Err(error)) => {
            tracing::warn!(shard = %shard_id, %error, "ListShards failed while checking whether the shard left the stream");
            return ShardCheck::Unconfirmed;
        }
        Err(_) => {
            tracing::warn!(shard = %shard_id, "ListShards timed out while checking whether the shard left the stream");
            return ShardCheck::Unconfirmed;
        }
    };
    if shards.iter().any(|s| s.shard_id() == shard_id) {
        return ShardCheck::Unconfirmed;
    }
    let children = shards
        .iter()
        .filter(|s| {
            s.parent_shard_id() == Some(shard_id) || s.adjacent_parent_shard_id() == Some(shard_id)
        })
        .filter_map(|s| {
            let range = s.hash_key_range()?;
            ChildShard::builder()
                .shard_id(s.shard_id())
                .set_parent_shards(Some(
                    s.parent_shard_id()
                        .into_iter()
                        .chain(s.adjacent_parent_shard_id())
                        .map(str::to_owned)
                        .collect(),
                ))
                .hash_key_range(
                    HashKeyRange::builder()
                        .starting_hash_key(range.starting_hash_key())
                        .ending_hash_key(range.ending_hash_key())
                        .build()
                        .ok()?,
                )
                .build()
                .ok()
        })
        .collect();
    metrics.counter(SHARDS_GONE_FROM_STREAM).increment(1);
    tracing::warn!(shard = %shard_id, "the shard is no longer in the stream (retention): treating it as ended");
    ShardCheck::Gone(children)
}

/// Every shard of the stream, following pagination.
pub(crate) async fn list_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
) -> Result<Vec<aws_sdk_kinesis::types::Shard>, ServiceError> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => stream.list_shards(client),
        };
        let page = request
            .send()
            .await
            .map_err(|e| ServiceError::from_sdk("ListShards", e))?;
        shards.extend(page.shards().iter().cloned());
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(shards);
        }
    }
}

/// Exponential backoff with jitter between `min` and `max`, never giving up: retrieval
/// retries until the lease is lost or the worker stops.
pub(crate) fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}
