#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

mod aggregator;
mod call_size;
mod call_timeout;
mod collector;
mod concurrency;
mod config;
mod inbox;
mod key_cache;
mod lanes;
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

pub use call_timeout::MAX_CALL_TIMEOUT;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::error::Error;
    use std::sync::Arc;

    use aws_sdk_kinesis::error::SdkError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn list_shards_failed() -> ShardMapError {
        let metadata = ErrorMetadata::builder()
            .code("ResourceNotFoundException")
            .message("Stream orders not found");
        let response = Response::new(StatusCode::try_from(400).unwrap(), SdkBody::empty());
        let sdk: SdkError<ErrorMetadata, Response> =
            SdkError::service_error(metadata.build(), response);
        ShardMapError::list_shards(sdk)
    }

    /// Every public error kind of the crate: no level of its chain repeats the text of
    /// the level below it (down to the SDK's error), and none prints `Debug` output.
    #[test]
    fn no_error_repeats_its_cause() {
        let attempt = |code: &str, message: &str| Attempt {
            started: std::time::SystemTime::now(),
            duration: std::time::Duration::from_millis(5),
            error: Some(AttemptError::new(code, message)),
        };
        let attempts = vec![
            attempt("ProvisionedThroughputExceededException", "Rate exceeded"),
            attempt("ResourceNotFoundException", "Stream orders not found"),
        ];
        let invalid = [
            InvalidRecord::EmptyPartitionKey,
            Record::new("k".repeat(300), "x")
                .validate(1024)
                .unwrap_err(),
        ];
        let mut errors: Vec<Box<dyn Error>> = vec![
            Box::new(list_shards_failed()),
            Box::new(ShardMapError::BadRange {
                shard: "shardId-1".into(),
            }),
            Box::new(BuildError::MissingStream),
            Box::new(BuildError::InvalidConfig {
                setting: "request_timeout",
                reason: "zero".into(),
            }),
            Box::new(BuildError::ShardMap(list_shards_failed())),
            Box::new(SendError::Full),
            Box::new(SendError::Closed),
            Box::new(RecordError::Abandoned),
            Box::new(RecordError::Expired {
                attempts: attempts.clone(),
                record: Box::new(Record::new("k", "v")),
            }),
            Box::new(RecordError::Throttled {
                attempts: attempts.clone(),
                record: Box::new(Record::new("k", "v")),
            }),
            Box::new(ProduceError::Record(RecordError::Rejected {
                attempts: attempts.clone(),
                record: Box::new(Record::new("k", "v")),
            })),
            Box::new(Arc::unwrap_or_clone(AttemptError::new(
                "Timeout",
                "no answer",
            ))),
        ];
        for invalid in invalid {
            errors.push(Box::new(invalid.clone()));
            errors.push(Box::new(SendError::Invalid(invalid.clone())));
            errors.push(Box::new(ProduceError::Send(SendError::Invalid(invalid))));
        }
        let problems: Vec<String> = errors
            .iter()
            .filter_map(|error| kinesis_errors::report_problem(error.as_ref()))
            .collect();
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(
            ErrorChain::new(&BuildError::ShardMap(list_shards_failed())).to_string(),
            "cannot list the stream's shards: ListShards failed: ResourceNotFoundException: \
             Stream orders not found"
        );
        assert_eq!(list_shards_failed().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn attempt_errors_are_sorted_by_the_shared_rule() {
        for code in [
            "ProvisionedThroughputExceededException",
            "KMSOptInRequired",
            "KMSThrottlingException",
            "InternalFailure",
            "ResourceNotFoundException",
        ] {
            assert_eq!(
                AttemptError::new(code, "m").kind(),
                ErrorKind::from_code(code)
            );
        }
        assert_eq!(
            AttemptError::new("Timeout", "m").kind(),
            ErrorKind::TimedOut
        );
        assert_eq!(
            AttemptError::new("WrongShard", "m").kind(),
            ErrorKind::Other
        );
        assert!(AttemptError::new("Construction", "m").kind().is_permanent());
    }
}
