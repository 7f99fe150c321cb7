#![forbid(unsafe_code)]
// Unit tests may unwrap: a panic is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![doc = include_str!("../README.md")]

pub mod checkpoint;
pub mod lease;
pub mod leases;
pub mod processor;
pub mod retrieval;
pub mod scheduler;
mod shard_consumer;
mod shard_sync;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use checkpoint::{CheckpointError, Checkpointer, PreparedCheckpoint};
pub use kinesis_aggregation::{deaggregate, UserRecord};
pub use lease::{ExtendedSequenceNumber, Lease, SequencePosition};
pub use processor::{
    InitializeInput, KinesisClientRecord, LeaseLostInput, ProcessRecordsInput, ProcessorFactory,
    RecordProcessor, ShardEndedInput, ShutdownRequestedInput,
};
pub use retrieval::{
    FanOutConfig, FanOutError, FetchError, PollingConfig, RetrievalMode, TrimmedCheckpoint,
};
pub use scheduler::{
    HeldShards, InitialPosition, Scheduler, SchedulerBuilder, SchedulerConfig, SchedulerError,
    ShutdownHandle,
};
