#![forbid(unsafe_code)]
// Unit tests may unwrap: a panic is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![doc = include_str!("../README.md")]

pub mod consume;
pub mod consumers;
pub mod demo;
pub mod leases;
pub mod metrics;
pub mod multilang;
pub mod produce;
pub mod report;
mod shard_reader;
mod signal;
pub mod streams;

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

pub use kinesis_errors::ErrorChain;

/// Any failure of a subcommand; `main` prints it and exits with [`exit::FAILED`].
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The exit codes of `kinesis`.
pub mod exit {
    /// Success; also a graceful stop on Ctrl-C or SIGTERM.
    pub const OK: u8 = 0;
    /// A failure: an AWS call failed (missing stream, permissions, endpoint), records
    /// failed, or the output could not be written.
    pub const FAILED: u8 = 1;
    /// Invalid arguments.
    pub const USAGE: u8 = 2;

    /// The `--help` text that documents them.
    pub const HELP: &str = "Exit codes: 0 success (also a graceful stop on Ctrl-C or SIGTERM), \
        1 failure (an AWS call failed, records failed, output not writable), 2 invalid arguments.\n\
        Endpoints, region and credentials come from the standard AWS configuration \
        (AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL_DYNAMODB, AWS_REGION, profiles).";
}

/// Parses a duration as `10s`, `500ms`, `2m`, `1h 30m` (a bare `0` is zero).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    if value.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value).map_err(|e| format!("{e} (expected e.g. 10s, 500ms, 2m)"))
}

/// `--profile`, `--region` and `--endpoint-url`: where the AWS configuration of this run
/// differs from the standard one.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AwsOptions {
    /// The named profile of ~/.aws/config and ~/.aws/credentials to use (SSO and
    /// credential_process profiles included); default AWS_PROFILE, else `default`.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// The AWS region (default: AWS_REGION, else the profile's).
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// One endpoint for every service (Kinesis and DynamoDB), such as LocalStack's
    /// http://localhost:4566; default AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL_DYNAMODB,
    /// AWS_ENDPOINT_URL, else AWS's.
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

static AWS_OPTIONS: OnceLock<AwsOptions> = OnceLock::new();
static CONTEXT: OnceLock<report::Context> = OnceLock::new();

/// Sets the options every later [`aws_config()`] applies (once, before a subcommand runs).
pub fn set_aws_options(options: AwsOptions) {
    let _ = AWS_OPTIONS.set(options);
}

/// The region and endpoint of this run, once [`aws_config()`] loaded them: for hints.
pub fn context() -> report::Context {
    CONTEXT.get().cloned().unwrap_or_default()
}

/// The standard AWS configuration (environment, profiles, endpoints) with `--profile`,
/// `--region` and `--endpoint-url` applied. Without a region it fails: every call would.
pub async fn aws_config() -> Result<aws_config::SdkConfig, Error> {
    aws_config_with(None).await
}

/// The `--profile`, `--region` and `--endpoint-url` of this run.
pub fn aws_options() -> AwsOptions {
    AWS_OPTIONS.get().cloned().unwrap_or_default()
}

/// [`aws_config()`] with a region that `--region` overrides and that overrides the
/// standard chain's (`kinesis multilang`'s properties file).
pub async fn aws_config_with(region: Option<String>) -> Result<aws_config::SdkConfig, Error> {
    let mut options = aws_options();
    options.region = options.region.or(region);
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(profile) = &options.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &options.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &options.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let _ = CONTEXT.set(report::Context {
        region: config.region().map(ToString::to_string),
        endpoint_url: options.endpoint_url.clone(),
    });
    if config.region().is_none() {
        return Err(report::no_region());
    }
    Ok(config)
}

/// Whether standard error may carry colours: a terminal, and `NO_COLOR` unset.
pub fn colours_enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether progress lines may be drawn: only when standard error is a terminal.
pub fn progress_enabled() -> bool {
    std::io::stderr().is_terminal()
}

/// Redraws one progress line on standard error (a terminal only).
pub fn progress(line: std::fmt::Arguments<'_>) {
    eprint!("\r\x1b[2K{line}");
}

/// Ends the progress line, if one was drawn.
pub fn progress_done() {
    if progress_enabled() {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err(), "a unit is required");
        assert!(parse_duration("soon").is_err());
    }
}
