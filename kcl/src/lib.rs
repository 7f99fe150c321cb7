#![forbid(unsafe_code)]
// Unit tests may unwrap: a panic is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![doc = include_str!("../README.md")]

mod checkpoint;
pub mod dead_letter;
mod error;
mod lease;
pub mod leases;
mod metrics;
pub mod multi_stream;
mod processor;
mod retrieval;
mod scheduler;
mod shard_consumer;
pub mod shard_streams;
mod shard_sync;
mod stream;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use checkpoint::{CheckpointError, Checkpointer, PreparedCheckpoint};
pub use dead_letter::{
    DeadLetterBatch, DeadLetterPolicy, DeadLetterSink, FailedRecord, ProcessResult, ProcessingError,
};
pub use error::{ErrorChain, ErrorKind, ServiceError};
pub use kinesis_aggregation::{deaggregate, UserRecord};
pub use lease::{ExtendedSequenceNumber, Lease, SequencePosition};
pub use leases::{LeaseTableBilling, LeaseTableConfig};
pub use processor::{
    InitializeInput, KinesisClientRecord, LeaseLostInput, ProcessRecordsInput, ProcessorFactory,
    RecordProcessor, ShardEndedInput, ShutdownRequestedInput,
};
pub use retrieval::{
    FanOutConfig, FanOutError, FetchError, LagAwarePolling, PollingConfig, RetrievalMode,
    TrimmedCheckpoint,
};
pub use scheduler::{
    HeldShards, InitialPosition, Scheduler, SchedulerBuilder, SchedulerConfig, SchedulerError,
    ShutdownHandle,
};

// Public handles move between tasks and threads: a change that loses `Send` or `Sync`
// must fail to compile here, not in a user's program.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send::<Scheduler>();
    send_sync::<SchedulerBuilder>();
    send_sync::<ShutdownHandle>();
    send_sync::<Checkpointer>();
    send_sync::<HeldShards>();
    send_sync::<KinesisClientRecord>();
    send_sync::<SchedulerError>();
    send_sync::<CheckpointError>();
    send_sync::<FetchError>();
};
