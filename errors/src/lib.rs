#![forbid(unsafe_code)]
// Unit tests may unwrap: a panic is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![doc = include_str!("../README.md")]

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// What kind of failure a call to an AWS service had: match on it instead of reading
/// error messages. The producer and the consumer sort every failure with the same rule
/// ([`ErrorKind::from_code`] and [`ErrorKind::of_sdk_error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The stream, shard, table or consumer does not exist (`ResourceNotFoundException`).
    NotFound,
    /// The credentials are missing, invalid or lack a permission (`AccessDeniedException`,
    /// `UnrecognizedClientException`, expired tokens, KMS access, no credentials found).
    AccessDenied,
    /// The service throttled the call: the codes of the AWS SDK's own throttling list
    /// (`ProvisionedThroughputExceededException`, `LimitExceededException`,
    /// `ThrottlingException`, `RequestLimitExceeded`, ...) and `KMSThrottlingException`.
    Throttled,
    /// The request was refused as invalid (`ValidationException`,
    /// `InvalidArgumentException`, `SerializationException`).
    InvalidRequest,
    /// The call did not answer in time: whether a write was applied is unknown (also the
    /// SDK's transient `RequestTimeout` codes).
    TimedOut,
    /// The endpoint could not be reached (connection refused, DNS, TLS).
    Unreachable,
    /// Anything else: a server error, an unreadable response, a resource in a passing
    /// state (`ResourceInUseException`).
    Other,
}

/// Codes of a resource that does not exist.
const NOT_FOUND: &[&str] = &["ResourceNotFoundException"];

/// Codes of missing, invalid or insufficient credentials, and of KMS keys the caller
/// cannot use.
const ACCESS_DENIED: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "ExpiredToken",
    "MissingAuthenticationTokenException",
    "MissingAuthenticationToken",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSNotFoundException",
    "KMSInvalidStateException",
    "KMSOptInRequired",
];

/// Throttling codes beyond the SDK's list.
const MORE_THROTTLING: &[&str] = &["KMSThrottlingException"];

/// Codes of a request the service refused as invalid.
const INVALID_REQUEST: &[&str] = &[
    "ValidationException",
    "InvalidArgumentException",
    "SerializationException",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "MissingParameter",
];

impl ErrorKind {
    /// The kind of a service error code. Throttling and transient codes are the AWS SDK's
    /// own lists (`aws_runtime::retries::classifiers::THROTTLING_ERRORS` and
    /// `TRANSIENT_ERRORS`), so the SDK's retries and this rule agree.
    pub fn from_code(code: &str) -> ErrorKind {
        use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
        if NOT_FOUND.contains(&code) {
            ErrorKind::NotFound
        } else if ACCESS_DENIED.contains(&code) {
            ErrorKind::AccessDenied
        } else if THROTTLING_ERRORS.contains(&code) || MORE_THROTTLING.contains(&code) {
            ErrorKind::Throttled
        } else if INVALID_REQUEST.contains(&code) {
            ErrorKind::InvalidRequest
        } else if TRANSIENT_ERRORS.contains(&code) {
            ErrorKind::TimedOut
        } else {
            ErrorKind::Other
        }
    }

    /// The kind of a failed SDK call: by the service's error code when it answered with
    /// one, else by how the call failed (timeout, connection, credentials).
    pub fn of_sdk_error<E, R>(error: &SdkError<E, R>) -> ErrorKind
    where
        E: ProvideErrorMetadata + Error + 'static,
        R: fmt::Debug + 'static,
    {
        if let Some(code) = error.code() {
            return ErrorKind::from_code(code);
        }
        match error {
            SdkError::TimeoutError(_) => ErrorKind::TimedOut,
            SdkError::DispatchFailure(failure) => {
                if let Some(credentials) = credentials_error(error) {
                    return match credentials {
                        CredentialsError::ProviderTimedOut(_) => ErrorKind::TimedOut,
                        _ => ErrorKind::AccessDenied,
                    };
                }
                if failure.is_timeout() {
                    ErrorKind::TimedOut
                } else if failure.is_io() {
                    ErrorKind::Unreachable
                } else {
                    ErrorKind::Other
                }
            }
            SdkError::ConstructionFailure(_) => ErrorKind::InvalidRequest,
            _ => ErrorKind::Other,
        }
    }

    /// Whether retrying cannot fix it: the resource does not exist, access is denied, or
    /// the request is invalid. The producer fails such records at once (unless
    /// `retry_permanent_errors`), and gives up building.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorKind::NotFound | ErrorKind::AccessDenied | ErrorKind::InvalidRequest
        )
    }

    /// The kind's name, as in the enum (`NotFound`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NotFound",
            ErrorKind::AccessDenied => "AccessDenied",
            ErrorKind::Throttled => "Throttled",
            ErrorKind::InvalidRequest => "InvalidRequest",
            ErrorKind::TimedOut => "TimedOut",
            ErrorKind::Unreachable => "Unreachable",
            ErrorKind::Other => "Other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The credentials provider's error somewhere in an error's causes: the call failed
/// before it was sent because no credentials could be loaded.
pub fn credentials_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a CredentialsError> {
    causes(error).find_map(|e| e.downcast_ref::<CredentialsError>())
}

/// What is wrong with how an error reads, if anything: a level of its chain whose text
/// holds the whole text of the level below it (a reader would see it twice; the walk
/// ends at the AWS SDK's own error, whose internals are the SDK's), or `Debug` output
/// (braces) in its one line. For tests of error types.
pub fn report_problem(error: &(dyn Error + 'static)) -> Option<String> {
    let texts: Vec<String> = causes(error).map(|e| e.to_string()).collect();
    let repeat = texts
        .windows(2)
        .take_while(|pair| !SDK_ENVELOPES.contains(&pair[0].as_str()))
        .find(|pair| !pair[1].trim().is_empty() && pair[0].contains(pair[1].trim()));
    if let Some(pair) = repeat {
        return Some(format!("{:?} repeats its cause {:?}", pair[0], pair[1]));
    }
    let line = ErrorChain::new(error).to_string();
    line.contains('{')
        .then(|| format!("Debug output in {line:?}"))
}

/// An error and its causes, outermost first.
pub fn causes<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// What went wrong in a failed SDK call, in a few words and without the SDK's `Debug`
/// output: the service's message when it answered, else the deepest cause (the refused
/// connection, the credentials provider's complaint).
pub fn sdk_error_message<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + Error + 'static,
    R: fmt::Debug + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            return match service.err().message() {
                Some(message) => message.to_owned(),
                None => String::from("the service gave no message"),
            }
        }
        SdkError::TimeoutError(_) => return String::from("no answer in time"),
        _ => {}
    }
    let error: &(dyn Error + 'static) = error;
    if let Some(credentials) = credentials_error(error) {
        let detail = causes(credentials)
            .skip(1)
            .last()
            .map(|e| format!(": {}", first_line(&e.to_string())))
            .unwrap_or_default();
        let credentials = first_line(&credentials.to_string());
        return format!("cannot load credentials ({credentials}{detail})");
    }
    match causes(error).last() {
        Some(deepest) => first_line(&deepest.to_string()),
        None => error.to_string(),
    }
}

/// The first line of a text (a credentials chain lists every provider it tried on lines
/// of their own, after "Attempted:"; `ErrorChain::verbose` shows them).
fn first_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default().trim();
    first
        .strip_suffix("Attempted:")
        .unwrap_or(first)
        .trim_end()
        .to_owned()
}

/// A failed call to an AWS service (Kinesis, DynamoDB, CloudWatch): which operation, what
/// [`kind`](Self::kind) of failure, the service's error code and message when it
/// answered; the SDK's error is its [`source`](Error::source). It displays as
/// `Operation failed: Code: message`, each part once.
///
/// ```
/// # use kinesis_errors::{ErrorKind, ServiceError};
/// let error = ServiceError::new("ListShards", ErrorKind::NotFound, "Stream orders not found")
///     .with_code("ResourceNotFoundException");
/// assert_eq!(
///     error.to_string(),
///     "ListShards failed: ResourceNotFoundException: Stream orders not found"
/// );
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

    /// The error of an SDK call, sorted by [`ErrorKind::of_sdk_error`].
    pub fn from_sdk<E, R>(operation: &'static str, error: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        ServiceError {
            operation,
            kind: ErrorKind::of_sdk_error(&error),
            code: error.code().map(str::to_owned),
            message: sdk_error_message(&error),
            source: Some(Arc::new(error)),
        }
    }

    /// A call that did not answer within `timeout` (a timeout of the caller's own,
    /// around the SDK's).
    pub fn timed_out(operation: &'static str, timeout: std::time::Duration) -> Self {
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

    /// The service's message, or what failed on the way (no answer in time, the refused
    /// connection, the credentials): without the code, the operation or the SDK's
    /// `Debug` output.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: ", self.operation)?;
        match &self.code {
            // Some services start their message with the code: say it once.
            Some(code) if !self.message.starts_with(code.as_str()) => {
                write!(f, "{code}: {}", self.message)
            }
            _ => f.write_str(&self.message),
        }
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

/// What the AWS SDK's `SdkError` displays, whatever the failure: the envelope around the
/// detail that [`ServiceError`] and the crates' errors already give.
const SDK_ENVELOPES: &[&str] = &[
    "service error",
    "dispatch failure",
    "request has timed out",
    "failed to construct request",
    "response error",
];

/// Displays an error and its causes on one line, `outer: inner: ...`, leaving out a
/// cause whose text the line already holds (the SDK's errors repeat their causes'
/// text). Unless `verbose`, it stops after a [`ServiceError`] and before the SDK's own
/// error (`service error`, `dispatch failure`, ...), whose detail the levels above
/// already give.
///
/// ```
/// # use kinesis_errors::{ErrorChain, ErrorKind, ServiceError};
/// let error = ServiceError::new("ListShards", ErrorKind::NotFound, "no stream s");
/// assert_eq!(ErrorChain::new(&error).to_string(), "ListShards failed: no stream s");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a> {
    error: &'a (dyn Error + 'static),
    verbose: bool,
}

impl<'a> ErrorChain<'a> {
    /// The chain of `error`, down to the first [`ServiceError`].
    pub fn new(error: &'a (dyn Error + 'static)) -> Self {
        ErrorChain {
            error,
            verbose: false,
        }
    }

    /// Every cause, the SDK's included (still without repeated text).
    pub fn verbose(mut self) -> Self {
        self.verbose = true;
        self
    }

    /// The texts of the chain's levels that add something, outermost first.
    pub fn parts(&self) -> Vec<String> {
        let mut parts: Vec<String> = Vec::new();
        for error in causes(self.error) {
            let text = error.to_string();
            let text = text.trim();
            if !self.verbose && !parts.is_empty() && SDK_ENVELOPES.contains(&text) {
                break;
            }
            if !text.is_empty() && !parts.iter().any(|part| part.contains(text)) {
                parts.push(text.to_owned());
            }
            if !self.verbose && error.downcast_ref::<ServiceError>().is_some() {
                break;
            }
        }
        parts
    }
}

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts().join(": "))
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    type Sdk = SdkError<ErrorMetadata, Response>;

    fn service(code: &str, message: &str) -> Sdk {
        SdkError::service_error(
            ErrorMetadata::builder().code(code).message(message).build(),
            Response::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn a_service_error_says_operation_code_and_message_once() {
        let error = ServiceError::from_sdk(
            "DescribeStreamSummary",
            service("ResourceNotFoundException", "Stream nosuch not found"),
        );
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert_eq!(
            error.to_string(),
            "DescribeStreamSummary failed: ResourceNotFoundException: Stream nosuch not found"
        );
        assert!(error.source().unwrap().downcast_ref::<Sdk>().is_some());
        assert_eq!(
            ErrorChain::new(&error).to_string(),
            error.to_string(),
            "the SDK's levels add nothing"
        );
    }

    #[test]
    fn transport_failures_are_sorted_and_described_without_debug_output() {
        let refused: Sdk = SdkError::dispatch_failure(ConnectorError::io(Box::new(
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"),
        )));
        let error = ServiceError::from_sdk("ListStreams", refused);
        assert_eq!(error.kind(), ErrorKind::Unreachable);
        assert_eq!(error.to_string(), "ListStreams failed: Connection refused");
        let slow: Sdk =
            SdkError::timeout_error(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut)));
        let error = ServiceError::from_sdk("ListStreams", slow);
        assert_eq!(error.kind(), ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "ListStreams failed: no answer in time");
        let no_credentials: Sdk = SdkError::dispatch_failure(ConnectorError::other(
            Box::new(CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            )),
            None,
        ));
        let error = ServiceError::from_sdk("ListStreams", no_credentials);
        assert_eq!(error.kind(), ErrorKind::AccessDenied);
        assert!(
            error
                .to_string()
                .starts_with("ListStreams failed: cannot load credentials"),
            "{error}"
        );
        assert!(credentials_error(&error).is_some());
    }

    #[test]
    fn codes_follow_the_sdks_lists() {
        for code in aws_runtime::retries::classifiers::THROTTLING_ERRORS {
            assert_eq!(ErrorKind::from_code(code), ErrorKind::Throttled, "{code}");
        }
        for (code, kind) in [
            ("KMSThrottlingException", ErrorKind::Throttled),
            ("RequestTimeout", ErrorKind::TimedOut),
            ("KMSOptInRequired", ErrorKind::AccessDenied),
            ("ResourceNotFoundException", ErrorKind::NotFound),
            ("ResourceInUseException", ErrorKind::Other),
            ("InvalidArgumentException", ErrorKind::InvalidRequest),
            ("InternalFailure", ErrorKind::Other),
        ] {
            assert_eq!(ErrorKind::from_code(code), kind, "{code}");
        }
        assert!(ErrorKind::AccessDenied.is_permanent());
        assert!(!ErrorKind::Throttled.is_permanent());
        assert!(!ErrorKind::Other.is_permanent());
    }

    #[test]
    fn a_message_that_starts_with_its_code_says_it_once() {
        let error = ServiceError::new("PutRecords", ErrorKind::Other, "InternalFailure: boom")
            .with_code("InternalFailure");
        assert_eq!(
            error.to_string(),
            "PutRecords failed: InternalFailure: boom"
        );
    }
}
