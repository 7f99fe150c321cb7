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
