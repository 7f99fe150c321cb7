//! One error model: the producer and the consumer sort every AWS error code the same way
//! (issue 23), each through its own calls: the producer's ListShards (shard map) and the
//! consumer's lease table Scan, against canned service answers.

#![allow(clippy::unwrap_used, missing_docs)] // A panic is how a test reports failure.

use aws_sdk_dynamodb::config::retry::RetryConfig as DynamoDbRetry;
use aws_sdk_kinesis::config::retry::RetryConfig as KinesisRetry;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_producer::{ShardMap, StreamId};

/// The same type in both crates.
type Kind = kinesis_consumer::ErrorKind;
const _: fn(kinesis_producer::ErrorKind) -> Kind = |kind| kind;

/// Codes both services answer with, and their kinds.
const CODES: &[(&str, Kind)] = &[
    ("ResourceNotFoundException", Kind::NotFound),
    ("AccessDeniedException", Kind::AccessDenied),
    ("UnrecognizedClientException", Kind::AccessDenied),
    ("ExpiredTokenException", Kind::AccessDenied),
    ("KMSAccessDeniedException", Kind::AccessDenied),
    ("KMSDisabledException", Kind::AccessDenied),
    ("KMSOptInRequired", Kind::AccessDenied),
    ("KMSThrottlingException", Kind::Throttled),
    ("ProvisionedThroughputExceededException", Kind::Throttled),
    ("LimitExceededException", Kind::Throttled),
    ("ThrottlingException", Kind::Throttled),
    ("RequestLimitExceeded", Kind::Throttled),
    ("ValidationException", Kind::InvalidRequest),
    ("InvalidArgumentException", Kind::InvalidRequest),
    ("RequestTimeoutException", Kind::TimedOut),
    ("ResourceInUseException", Kind::Other),
    ("InternalFailure", Kind::Other),
    ("ServiceUnavailable", Kind::Other),
];

fn answer(code: &str) -> aws_smithy_runtime_api::http::Response {
    let body = format!(r#"{{"__type":"{code}","message":"canned {code}"}}"#);
    aws_smithy_runtime_api::http::Response::new(
        aws_smithy_runtime_api::http::StatusCode::try_from(400).unwrap(),
        aws_smithy_types::body::SdkBody::from(body),
    )
}

async fn producer_kind(code: &'static str) -> Kind {
    let rule = mock!(aws_sdk_kinesis::Client::list_shards)
        .sequence()
        .http_response(move || answer(code))
        .repeatedly()
        .build();
    let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&rule], |c| c
        .retry_config(KinesisRetry::disabled()));
    ShardMap::load(&client, &StreamId::new("orders"))
        .await
        .unwrap_err()
        .kind()
}

async fn consumer_kind(code: &'static str) -> Kind {
    let rule = mock!(aws_sdk_dynamodb::Client::scan)
        .sequence()
        .http_response(move || answer(code))
        .repeatedly()
        .build();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule], |c| c
        .retry_config(DynamoDbRetry::disabled()));
    let error = DynamoDbLeaseStore::new(client, "app")
        .list_leases()
        .await
        .unwrap_err();
    error
        .service_error()
        .unwrap_or_else(|| panic!("{code}: not a service error: {error:?}"))
        .kind()
}

#[tokio::test]
async fn producer_and_consumer_sort_every_code_alike() {
    let throttling = aws_runtime::retries::classifiers::THROTTLING_ERRORS
        .iter()
        .map(|code| (*code, Kind::Throttled));
    for (code, expected) in CODES.iter().copied().chain(throttling) {
        let producer = producer_kind(code).await;
        let consumer = consumer_kind(code).await;
        assert_eq!(producer, consumer, "{code}: the crates disagree");
        assert_eq!(producer, expected, "{code}");
        assert_eq!(Kind::from_code(code), expected, "{code}");
    }
}
