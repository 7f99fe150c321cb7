//! The application's side: a record processor per shard lease, and the factory that makes
//! them.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::checkpoint::Checkpointer;
use crate::dead_letter::ProcessResult;
use crate::lease::ExtendedSequenceNumber;

/// One user record: a plain Kinesis record, or one record out of a KPL aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KinesisClientRecord {
    /// The Kinesis record's sequence number (shared by all user records of an aggregate:
    /// one allocation for all of them).
    pub sequence_number: Arc<str>,
    /// The position inside the aggregate (0 for a plain record).
    pub sub_sequence_number: u64,
    /// The user record's partition key (shared by the user records of an aggregate that
    /// have the same key).
    pub partition_key: Arc<str>,
    /// The user record's explicit hash key, if the producer set one (aggregates only:
    /// GetRecords does not return explicit hash keys).
    pub explicit_hash_key: Option<String>,
    /// When Kinesis received the record.
    pub approximate_arrival_timestamp: Option<SystemTime>,
    /// The payload.
    pub data: Bytes,
    /// Whether it came out of a KPL aggregate.
    pub aggregated: bool,
}

impl KinesisClientRecord {
    /// A plain (not aggregated) record, for tests of record processors; set the other
    /// fields after.
    pub fn new(
        sequence_number: impl Into<Arc<str>>,
        partition_key: impl Into<Arc<str>>,
        data: impl Into<Bytes>,
    ) -> Self {
        KinesisClientRecord {
            sequence_number: sequence_number.into(),
            sub_sequence_number: 0,
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            approximate_arrival_timestamp: None,
            data: data.into(),
            aggregated: false,
        }
    }

    /// The checkpoint position of this record.
    pub fn position(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(self.sequence_number.to_string(), self.sub_sequence_number)
    }
}

/// Given to [`RecordProcessor::initialize`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InitializeInput {
    /// The shard this processor consumes.
    pub shard_id: String,
    /// Where processing resumes: records after this checkpoint are delivered.
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared, uncommitted checkpoint left by the previous holder, if any.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// The application state prepared with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
}

/// Given to [`RecordProcessor::process_records`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ProcessRecordsInput {
    /// The records, deaggregated, in shard order.
    pub records: Vec<KinesisClientRecord>,
    /// How far behind the tip of the shard the last read was, in milliseconds. With
    /// [`call_process_records_even_for_empty_list`](crate::SchedulerBuilder::call_process_records_even_for_empty_list),
    /// an empty batch with `Some(0)` means the shard is read to its tip.
    pub millis_behind_latest: Option<i64>,
    /// Checkpoints progress on this shard.
    pub checkpointer: Checkpointer,
    /// Which attempt this is at these records: 1 for a new batch, more when the records
    /// failed before ([`ProcessingError`](crate::ProcessingError)) and are delivered
    /// again under a [`DeadLetterPolicy`](crate::DeadLetterPolicy). A retry delivers only
    /// the records that failed. Always 1 without a policy (a failed batch is read again
    /// from the checkpoint by a new processor).
    pub attempt: u32,
}

/// Given to [`RecordProcessor::lease_lost`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LeaseLostInput {
    /// The shard whose lease was lost.
    pub shard_id: String,
}

/// Given to [`RecordProcessor::shard_ended`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ShardEndedInput {
    /// The shard that ended.
    pub shard_id: String,
    /// Call [`Checkpointer::checkpoint`] with it: that writes `SHARD_END`.
    pub checkpointer: Checkpointer,
}

/// Given to [`RecordProcessor::shutdown_requested`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ShutdownRequestedInput {
    /// The shard being shut down.
    pub shard_id: String,
    /// Checkpoint here to make the next worker start right after what was processed.
    pub checkpointer: Checkpointer,
}

/// Processes the records of one shard. One instance per shard lease; its methods are
/// called one at a time.
///
/// Delivery is at least once: after a failover or a restart, the records after the last
/// checkpoint are delivered again.
///
/// **Do not block the runtime.** The methods run as tasks on the Tokio runtime that also
/// renews the leases. A processor that blocks a thread (synchronous I/O, heavy CPU work,
/// `std::thread::sleep`) can starve renewals; the lease then expires locally (the worker
/// stops delivering and checkpoints fail with `LeaseLost`) rather than ever being held by
/// two workers, but the shard moves. Offload blocking work with
/// `tokio::task::spawn_blocking(..).await` (or `tokio::task::block_in_place` on a
/// multi-thread runtime). A late renewal is logged ("lease renewal ran late").
///
/// A batch that cannot be processed is reported by returning a
/// [`ProcessingError`](crate::ProcessingError) from `process_records`: without a
/// [`DeadLetterPolicy`](crate::DeadLetterPolicy) it fails the shard consumer as a panic
/// does; with one, its failed records are delivered again after a backoff and handed to a
/// dead-letter sink after the last attempt.
///
/// A panic in any method is caught by the scheduler: the shard is retried after a backoff
/// (see [`SchedulerConfig::failure_backoff_min`](crate::SchedulerConfig::failure_backoff_min)),
/// counted in the metric `kinesis_consumer_record_processor_failures`. With a
/// `DeadLetterPolicy`, a panic in `process_records` is instead caught by the shard
/// consumer and counts as a failed attempt of the whole batch, retried with the same
/// processor.
#[async_trait]
pub trait RecordProcessor: Send {
    /// Called once before any records.
    async fn initialize(&mut self, input: InitializeInput) {
        let _ = input;
    }

    /// Called with each batch of records. Checkpoint through `input.checkpointer` as
    /// often as the application can afford to redo work.
    ///
    /// Return `Err` when the batch, or some of its records, could not be processed (see
    /// [`ProcessingError`](crate::ProcessingError)): they are delivered again after a
    /// backoff, and never checkpointed past by the consumer until they are processed or
    /// dead-lettered.
    async fn process_records(&mut self, input: ProcessRecordsInput) -> ProcessResult;

    /// The lease was taken by another worker, or its local deadline passed (it could not be
    /// renewed in time): stop; checkpoints are no longer possible. No batch is handed to
    /// the processor after the deadline.
    async fn lease_lost(&mut self, input: LeaseLostInput) {
        let _ = input;
    }

    /// Every record of the shard was delivered. **The processor must call
    /// `input.checkpointer.checkpoint()`** here: that stores `SHARD_END`, which is what
    /// lets the shard's children start. If it does not, an error is logged, the shard is
    /// not considered finished, and it is consumed again later from its last checkpoint
    /// (so its children stay blocked rather than lose order).
    async fn shard_ended(&mut self, input: ShardEndedInput);

    /// The worker is shutting down gracefully. Checkpoint here so that the next worker
    /// resumes right after what was processed.
    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput) {
        let _ = input;
    }
}

/// Makes a [`RecordProcessor`] for each shard lease the worker starts.
///
/// Implemented for every `Fn() -> P` closure.
pub trait ProcessorFactory: Send + Sync + 'static {
    /// A new processor.
    fn create_processor(&self) -> Box<dyn RecordProcessor>;
}

impl<F, P> ProcessorFactory for F
where
    F: Fn() -> P + Send + Sync + 'static,
    P: RecordProcessor + 'static,
{
    fn create_processor(&self) -> Box<dyn RecordProcessor> {
        Box::new(self())
    }
}
