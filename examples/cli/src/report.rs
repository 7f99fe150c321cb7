//! How `kinesis` reports a failure: one line (what failed, on what, the service's code and
//! message once), then a hint where the fix is known, and with `-v` every cause.

use std::error::Error as StdError;

use kinesis_consumer::leases::LeaseStoreError;
use kinesis_consumer::SchedulerError;
use kinesis_errors::{credentials_error, ErrorChain, ErrorKind, ServiceError};

/// The operations of the DynamoDB lease table, as opposed to Kinesis's.
const DYNAMODB_OPERATIONS: &[&str] = &[
    "CreateTable",
    "DescribeTable",
    "DescribeContinuousBackups",
    "UpdateContinuousBackups",
    "Scan",
    "Query",
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
];

/// Where the configuration of this run points: for hints.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The region in use, if any.
    pub region: Option<String>,
    /// `--endpoint-url`, if given.
    pub endpoint_url: Option<String>,
}

/// The failed AWS call somewhere in an error's causes, and what kind of failure it was.
fn failed_call<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<(ErrorKind, Option<&'a ServiceError>)> {
    for cause in kinesis_errors::causes(error) {
        if let Some(service) = cause.downcast_ref::<ServiceError>() {
            return Some((service.kind(), Some(service)));
        }
        // Variants that show a ServiceError as their own text.
        if let Some(store) = cause.downcast_ref::<LeaseStoreError>() {
            if let Some(service) = store.service_error() {
                return Some((service.kind(), Some(service)));
            }
        }
        if let Some(SchedulerError::Kinesis(service)) = cause.downcast_ref::<SchedulerError>() {
            return Some((service.kind(), Some(service)));
        }
        if let Some(map) = cause.downcast_ref::<kinesis_producer::ShardMapError>() {
            return Some((map.kind(), None));
        }
        if let Some(attempt) = cause.downcast_ref::<kinesis_producer::AttemptError>() {
            return Some((attempt.kind(), None));
        }
    }
    credentials_error(error).map(|_| (ErrorKind::AccessDenied, None))
}

/// What to do about an error, when it is known.
pub fn hint(error: &(dyn StdError + 'static), context: &Context) -> Option<String> {
    let emulators = "against the local emulators: eval \"$(localstack/start)\"";
    if error.downcast_ref::<NoRegion>().is_some() {
        return Some(format!(
            "set AWS_REGION, pass --region, or name a profile that has one (--profile or \
             AWS_PROFILE); {emulators}"
        ));
    }
    if credentials_error(error).is_some() {
        return Some(format!(
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name \
             a profile with --profile or AWS_PROFILE (run `aws sso login` for an SSO profile); \
             {emulators}"
        ));
    }
    let (kind, service) = failed_call(error)?;
    let operation = service.map(ServiceError::operation);
    let dynamodb = operation.is_some_and(|op| DYNAMODB_OPERATIONS.contains(&op));
    let region = context.region.as_deref().unwrap_or("none");
    let code = service.and_then(ServiceError::code).unwrap_or("");
    Some(match kind {
        ErrorKind::NotFound if dynamodb => format!(
            "the lease table is named after --app (or --lease-table), in region {region}; \
             `kinesis leases show --app NAME` reads it"
        ),
        ErrorKind::NotFound => format!(
            "check the name (or ARN) and the region ({region}); `kinesis streams list` lists \
             the streams there"
        ),
        ErrorKind::AccessDenied
            if code.starts_with("Expired") || code == "UnrecognizedClientException" =>
        {
            "the credentials are expired or not valid here: refresh them (`aws sso login` for \
             an SSO profile) or check --profile / AWS_PROFILE and the region"
                .to_owned()
        }
        ErrorKind::AccessDenied => match operation {
            Some(op) => format!(
                "the credentials lack the IAM action {}:{op}: see the policies in the kinesis-cli \
                 README (Operating it)",
                if dynamodb { "dynamodb" } else { "kinesis" }
            ),
            None => "the credentials lack a permission: see the IAM policies in the kinesis-cli \
                     README (Operating it)"
                .to_owned(),
        },
        ErrorKind::Unreachable | ErrorKind::TimedOut => format!(
            "cannot reach {}: check --endpoint-url, AWS_ENDPOINT_URL_KINESIS, \
             AWS_ENDPOINT_URL_DYNAMODB and the network; {emulators}",
            context
                .endpoint_url
                .as_deref()
                .map_or_else(|| format!("the endpoint (region {region})"), str::to_owned)
        ),
        ErrorKind::Throttled => "the service throttled the calls: try again later, or give the \
                                 stream more shards (or the lease table more capacity)"
            .to_owned(),
        _ => return None,
    })
}

/// The report of a failed subcommand: its one line, then the hint, then (verbose) every
/// cause the line leaves out.
pub fn render(
    command: &str,
    error: &(dyn StdError + 'static),
    context: &Context,
    verbose: bool,
) -> String {
    let line = ErrorChain::new(error).to_string();
    let mut out = format!("kinesis {command}: {line}");
    if let Some(hint) = hint(error, context) {
        out.push_str("\n  hint: ");
        out.push_str(&hint);
    }
    if verbose {
        for part in ErrorChain::new(error).verbose().parts() {
            if !line.contains(&part) {
                out.push_str("\n  caused by: ");
                out.push_str(&part);
            }
        }
    }
    out
}

/// An error with what it happened to (`lease table orders-app`), the error as its
/// source.
#[derive(Debug)]
pub struct About {
    what: String,
    source: crate::Error,
}

impl std::fmt::Display for About {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl StdError for About {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// `error`, said to be about `what`.
pub fn context(what: String, error: crate::Error) -> crate::Error {
    Box::new(About {
        what,
        source: error,
    })
}

/// A run without a region: every call would fail.
#[derive(Debug)]
pub struct NoRegion;

impl std::fmt::Display for NoRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no AWS region configured")
    }
}

impl StdError for NoRegion {}

/// The error of a run without a region.
pub fn no_region() -> crate::Error {
    Box::new(NoRegion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_stream_is_one_line_and_a_hint() {
        let error = ServiceError::new(
            "DescribeStreamSummary",
            ErrorKind::NotFound,
            "Stream s not found",
        )
        .with_code("ResourceNotFoundException");
        let context = Context {
            region: Some("eu-west-1".into()),
            endpoint_url: None,
        };
        let report = render("consume", &error, &context, false);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[0],
            "kinesis consume: DescribeStreamSummary failed: ResourceNotFoundException: Stream s not found"
        );
        assert!(lines[1].contains("eu-west-1"), "{report}");
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn a_denied_call_names_the_iam_action() {
        let error = ServiceError::new("Scan", ErrorKind::AccessDenied, "not authorized")
            .with_code("AccessDeniedException");
        let hint = hint(&error, &Context::default()).unwrap();
        assert!(hint.contains("dynamodb:Scan"), "{hint}");
    }
}
