//! Failed calls to Kinesis and DynamoDB, kept with their cause and sorted by what a caller
//! can do about them.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// What kind of failure a call to an AWS service had: match on it instead of reading
/// error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The stream, shard, table or consumer does not exist (`ResourceNotFoundException`).
    NotFound,
    /// The credentials are missing, invalid or lack a permission (`AccessDeniedException`,
    /// `UnrecognizedClientException`, expired tokens, KMS access).
    AccessDenied,
    /// The service throttled the call (`ProvisionedThroughputExceededException`,
    /// `LimitExceededException`, `ThrottlingException`, `RequestLimitExceeded`).
    Throttled,
    /// The request was refused as invalid (`ValidationException`,
    /// `InvalidArgumentException`, `ResourceInUseException`).
    InvalidRequest,
    /// The call did not answer in time: whether a write was applied is unknown.
    TimedOut,
    /// The endpoint could not be reached (connection refused, DNS, TLS).
    Unreachable,
    /// Anything else: a server error, an unreadable response.
    Other,
}

impl ErrorKind {
    /// The kind of a service error code.
    pub fn from_code(code: &str) -> ErrorKind {
        match code {
            "ResourceNotFoundException" => ErrorKind::NotFound,
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "MissingAuthenticationTokenException"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSNotFoundException"
            | "KMSInvalidStateException" => ErrorKind::AccessDenied,
            "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "KMSThrottlingException" => ErrorKind::Throttled,
            "ValidationException" | "InvalidArgumentException" | "ResourceInUseException" => {
                ErrorKind::InvalidRequest
            }
            _ => ErrorKind::Other,
        }
    }
}

/// A failed call to Kinesis or DynamoDB: which operation, what [`kind`](Self::kind) of
/// failure, the service's error code when it answered, and the SDK's error as
/// [`source`](Error::source).
///
/// ```
/// # use kinesis_consumer::{ErrorKind, ServiceError};
/// let error = ServiceError::new("ListShards", ErrorKind::NotFound, "Stream orders not found");
/// match error.kind() {
///     ErrorKind::NotFound => { /* the stream is gone */ }
///     ErrorKind::Throttled | ErrorKind::TimedOut => { /* try again later */ }
///     _ => { /* report it */ }
/// }
/// ```
#[derive(Clone)]
pub struct ServiceError {
    operation: &'static str,
    kind: ErrorKind,
    code: Option<String>,
    message: String,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl ServiceError {
    /// An error without an SDK cause (for lease stores of your own, and tests).
    pub fn new(operation: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
            operation,
            kind,
            code: None,
            message: message.into(),
            source: None,
        }
    }

    /// Sets the service's error code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Sets the underlying error.
    pub fn with_source(mut self, source: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The error of an SDK call, sorted by its code or by how the call failed.
    pub(crate) fn from_sdk<E, R>(operation: &'static str, error: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        let code = error.code().map(str::to_owned);
        let kind = match (&error, code.as_deref()) {
            (_, Some(code)) => ErrorKind::from_code(code),
            (SdkError::TimeoutError(_), None) => ErrorKind::TimedOut,
            (SdkError::DispatchFailure(failure), None) if failure.is_timeout() => {
                ErrorKind::TimedOut
            }
            (SdkError::DispatchFailure(failure), None) if failure.is_io() => ErrorKind::Unreachable,
            _ => ErrorKind::Other,
        };
        ServiceError {
            operation,
            kind,
            code,
            message: DisplayErrorContext(&error).to_string(),
            source: Some(Arc::new(error)),
        }
    }

    /// A call that did not answer within `timeout` (our own timeout, around the SDK's).
    pub(crate) fn timed_out(operation: &'static str, timeout: std::time::Duration) -> Self {
        ServiceError::new(
            operation,
            ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )
    }

    /// The API operation that failed, such as `ListShards` or `UpdateItem`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// What kind of failure it was.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The service's error code (`ResourceNotFoundException`, ...), when it answered.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The error's text as the SDK gives it, causes included.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.message)
    }
}

impl fmt::Debug for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceError")
            .field("operation", &self.operation)
            .field("kind", &self.kind)
            .field("code", &self.code)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Error for ServiceError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::operation::list_shards::ListShardsError;
    use aws_sdk_kinesis::types::error::ResourceNotFoundException;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;

    fn not_found() -> SdkError<ListShardsError, Response> {
        let service = ListShardsError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .message("Stream s under account 000000000000 not found.")
                .meta(
                    aws_smithy_types::error::ErrorMetadata::builder()
                        .code("ResourceNotFoundException")
                        .message("Stream s under account 000000000000 not found.")
                        .build(),
                )
                .build(),
        );
        SdkError::service_error(
            service,
            Response::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn an_sdk_error_keeps_its_code_kind_and_source() {
        let error = ServiceError::from_sdk("ListShards", not_found());
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert_eq!(error.code(), Some("ResourceNotFoundException"));
        assert_eq!(error.operation(), "ListShards");
        let source = error.source().expect("the SDK error is the source");
        assert!(source
            .downcast_ref::<SdkError<ListShardsError, Response>>()
            .is_some_and(|sdk| matches!(
                sdk.as_service_error(),
                Some(ListShardsError::ResourceNotFoundException(_))
            )));
        assert!(
            error.to_string().starts_with("ListShards failed: "),
            "{error}"
        );
    }

    #[test]
    fn transport_failures_are_sorted_without_a_code() {
        let refused: SdkError<ListShardsError, Response> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))));
        assert_eq!(
            ServiceError::from_sdk("ListShards", refused).kind(),
            ErrorKind::Unreachable
        );
        let slow: SdkError<ListShardsError, Response> =
            SdkError::timeout_error(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut)));
        assert_eq!(
            ServiceError::from_sdk("ListShards", slow).kind(),
            ErrorKind::TimedOut
        );
    }

    #[test]
    fn codes_of_both_services_are_sorted() {
        for (code, kind) in [
            (
                "ProvisionedThroughputExceededException",
                ErrorKind::Throttled,
            ),
            ("RequestLimitExceeded", ErrorKind::Throttled),
            ("AccessDeniedException", ErrorKind::AccessDenied),
            ("KMSAccessDeniedException", ErrorKind::AccessDenied),
            ("ResourceNotFoundException", ErrorKind::NotFound),
            ("ValidationException", ErrorKind::InvalidRequest),
            ("InternalFailure", ErrorKind::Other),
        ] {
            assert_eq!(ErrorKind::from_code(code), kind, "{code}");
        }
    }
}
