#![forbid(unsafe_code)]
// Unit tests may unwrap: a panic is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![doc = include_str!("../README.md")]

pub mod consume;
pub mod demo;
pub mod leases;
pub mod produce;
mod shard_reader;
mod signal;
pub mod streams;

use std::io::IsTerminal;
use std::time::Duration;

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

/// The standard AWS configuration: environment, profiles, endpoints.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
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
