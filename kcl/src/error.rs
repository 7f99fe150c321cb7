//! Failed calls to Kinesis and DynamoDB, kept with their cause and sorted by what a caller
//! can do about them: the error model of the `kinesis-errors` crate, which the producer
//! shares, so both crates sort a failure the same way.

pub use kinesis_errors::{ErrorChain, ErrorKind, ServiceError};

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::error::SdkError;
    use aws_sdk_kinesis::operation::list_shards::ListShardsError;
    use aws_sdk_kinesis::types::error::ResourceNotFoundException;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use std::error::Error;

    fn service() -> ServiceError {
        let sdk: SdkError<ListShardsError, Response> = SdkError::service_error(
            ListShardsError::generic(
                aws_smithy_types::error::ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("not authorized to perform kinesis:ListShards")
                    .build(),
            ),
            Response::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        );
        ServiceError::from_sdk("ListShards", sdk)
    }

    /// Every public error kind of the crate: no level of its chain repeats the text of
    /// the level below it (down to the SDK's error).
    #[test]
    fn no_error_repeats_its_cause() {
        use crate::leases::LeaseStoreError;
        use crate::{
            CheckpointError, ExtendedSequenceNumber, FanOutError, FetchError, SchedulerError,
        };
        use std::time::Duration;
        let store_errors = || {
            vec![
                LeaseStoreError::ConditionFailed("shardId-1".into()),
                LeaseStoreError::Throttled(service()),
                LeaseStoreError::Malformed("no leaseKey".into()),
                LeaseStoreError::Timeout(Duration::from_secs(1)),
                LeaseStoreError::Contended("shardId-1".into()),
                LeaseStoreError::NotActive {
                    table: "app".into(),
                    waited: Duration::from_secs(1),
                },
                LeaseStoreError::Service(service()),
            ]
        };
        let fan_out_errors = || {
            vec![
                FanOutError::Describe {
                    consumer: "app".into(),
                    error: service(),
                },
                FanOutError::Register {
                    consumer: "app".into(),
                    error: service(),
                },
                FanOutError::NotActive {
                    consumer: "app".into(),
                    waited: Duration::from_secs(1),
                    status: "CREATING".into(),
                },
            ]
        };
        let mut errors: Vec<Box<dyn Error>> = vec![Box::new(service())];
        errors.extend(
            store_errors()
                .into_iter()
                .map(|e| Box::new(e) as Box<dyn Error>),
        );
        errors.extend(
            fan_out_errors()
                .into_iter()
                .map(|e| Box::new(e) as Box<dyn Error>),
        );
        errors.extend(
            store_errors()
                .into_iter()
                .map(|e| Box::new(SchedulerError::LeaseTable(e)) as Box<dyn Error>),
        );
        errors.extend(
            store_errors()
                .into_iter()
                .map(|e| Box::new(CheckpointError::Store(e)) as Box<dyn Error>),
        );
        errors.extend(
            fan_out_errors()
                .into_iter()
                .map(|e| Box::new(SchedulerError::FanOut(e)) as Box<dyn Error>),
        );
        errors.extend([
            Box::new(SchedulerError::MissingSetting("stream")) as Box<dyn Error>,
            Box::new(SchedulerError::InvalidConfig {
                setting: "max_records",
                reason: "above 10,000".into(),
            }),
            Box::new(SchedulerError::StreamNotFound {
                stream: "orders".into(),
                error: service(),
            }),
            Box::new(SchedulerError::Kinesis(service())),
            Box::new(SchedulerError::Panicked {
                stream: "orders".into(),
                message: "boom".into(),
            }),
            Box::new(CheckpointError::LeaseLost("shardId-1".into())),
            Box::new(CheckpointError::Throttled(service())),
            Box::new(CheckpointError::InvalidSequence {
                requested: ExtendedSequenceNumber::trim_horizon(),
                reason: "behind the checkpoint".into(),
            }),
            Box::new(FetchError::CheckpointRejected("42".into())),
            Box::new(FetchError::StreamNotFound(service())),
        ]);
        {
            use crate::leases::reset::ResetError;
            errors.extend([
                Box::new(ResetError::InvalidTarget("soon".into())) as Box<dyn Error>,
                Box::new(ResetError::StreamRequired),
                Box::new(ResetError::FutureTimestamp("2099-01-01T00:00:00Z".into())),
                Box::new(ResetError::Stream {
                    stream: "orders".into(),
                    error: service(),
                }),
                Box::new(ResetError::Read {
                    shard: "shardId-1".into(),
                    error: service(),
                }),
                Box::new(ResetError::Deleted("shardId-1".into())),
            ]);
            errors.extend(
                store_errors()
                    .into_iter()
                    .map(|e| Box::new(ResetError::Store(e)) as Box<dyn Error>),
            );
        }
        let problems: Vec<String> = errors
            .iter()
            .filter_map(|error| kinesis_errors::report_problem(error.as_ref()))
            .collect();
        assert_eq!(problems, Vec::<String>::new());
        // What the one line of a service error holds: operation, code and message once.
        let line = ErrorChain::new(&SchedulerError::Kinesis(service())).to_string();
        assert_eq!(
            line,
            "ListShards failed: AccessDeniedException: not authorized to perform kinesis:ListShards"
        );
    }

    #[test]
    fn a_kinesis_error_keeps_its_code_kind_and_source() {
        let message = "Stream s under account 000000000000 not found.";
        let service = ListShardsError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .message(message)
                .meta(
                    aws_smithy_types::error::ErrorMetadata::builder()
                        .code("ResourceNotFoundException")
                        .message(message)
                        .build(),
                )
                .build(),
        );
        let sdk = SdkError::service_error(
            service,
            Response::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        );
        let error = ServiceError::from_sdk("ListShards", sdk);
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert_eq!(error.code(), Some("ResourceNotFoundException"));
        assert_eq!(
            error.to_string(),
            format!("ListShards failed: ResourceNotFoundException: {message}")
        );
        let source = error.source().expect("the SDK error is the source");
        assert!(source
            .downcast_ref::<SdkError<ListShardsError, Response>>()
            .is_some_and(|sdk| matches!(
                sdk.as_service_error(),
                Some(ListShardsError::ResourceNotFoundException(_))
            )));
    }
}
