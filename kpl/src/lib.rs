#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

mod aggregator;
mod collector;
mod concurrency;
mod config;
mod inbox;
mod limiter;
pub mod metrics;
mod pending;
mod pipeline;
mod producer;
mod receipt;
mod record;
mod request;
mod retrier;
mod shard_map;
mod sink;
mod spread;
mod stats;
mod stream_id;

/// The KPL aggregated-record format (the `kinesis-aggregation` crate): what the producer
/// writes, for code that builds or unpacks aggregates itself.
pub use kinesis_aggregation as aggregation;
pub use kinesis_aggregation::{HashKey, HashKeyError, MAX_PARTITION_KEY_CHARS};

pub use collector::{PUT_RECORDS_MAX_COUNT, PUT_RECORDS_MAX_SIZE};
pub use config::ProducerConfig;
/// The error model shared with `kinesis-consumer` (the `kinesis-errors` crate): one
/// [`ErrorKind`] and one rule sorting AWS error codes into it.
pub use kinesis_errors::{ErrorChain, ErrorKind};
pub use limiter::{SHARD_BYTES_PER_SECOND, SHARD_RECORDS_PER_SECOND};
pub use metrics::MetricsGranularity;
pub use producer::{BuildError, ClientSource, ProduceError, Producer, ProducerBuilder, SendError};
pub use receipt::{Attempt, AttemptError, RecordError, RecordReceipt, RecordResult};
pub use record::{InvalidRecord, Record, DEFAULT_MAX_RECORD_SIZE, MAX_RECORD_SIZE_LIMIT};
pub use shard_map::{ShardMap, ShardMapError, ShardRange};
pub use sink::ProducerSink;
pub use spread::HotKeySpread;
pub use stats::{Outstanding, ProducerStats, ShardLoad};
pub use stream_id::StreamId;

// Public handles move between tasks and threads: a change that loses `Send` or `Sync`
// must fail to compile here, not in a user's program.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Producer>();
    send_sync::<ProducerBuilder>();
    send_sync::<ProducerConfig>();
    send::<RecordReceipt>();
    send_sync::<RecordResult>();
    send_sync::<Record>();
    send_sync::<SendError>();
    send_sync::<ProduceError>();
    send_sync::<RecordError>();
    send_sync::<BuildError>();
    send::<ProducerSink>();
};
