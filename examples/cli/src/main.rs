//! `kinesis`: produce, consume, inspect leases and manage Kinesis Data Streams.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kinesis_cli::{consume, demo, exit, leases, produce, streams};

/// Kinesis Data Streams from the terminal: produce, consume, leases, streams, demo.
#[derive(Parser, Debug)]
#[command(name = "kinesis", version, about, after_help = exit::HELP)]
struct Cli {
    /// More log output on standard error (-v info, -vv debug, -vvv trace). RUST_LOG, when
    /// set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Errors only on standard error.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Puts records from standard input, files or a generator; prints a JSON summary.
    #[command(after_help = exit::HELP)]
    Produce(produce::Args),
    /// Writes one JSON line per user record: a worker of a group (`--app`) or one shard
    /// (`--shard`).
    #[command(after_help = exit::HELP)]
    Consume(consume::Args),
    /// Shows, resets or moves the leases of a consumer application.
    #[command(after_help = exit::HELP)]
    Leases(leases::Args),
    /// Lists, describes, creates or reshards streams.
    #[command(after_help = exit::HELP)]
    Streams(streams::Args),
    /// Runs the end-to-end demo against local emulators (started for it unless the AWS
    /// configuration names endpoints).
    #[command(after_help = exit::HELP)]
    Demo(demo::Args),
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn failed(command: &str, error: &kinesis_cli::Error) -> ExitCode {
    eprintln!("kinesis {command}: {error}");
    ExitCode::from(exit::FAILED)
}

fn summary(command: &str, value: serde_json::Value, ok: bool) -> ExitCode {
    println!("{value}");
    if ok {
        ExitCode::from(exit::OK)
    } else {
        eprintln!("kinesis {command}: not every record made it (see the summary)");
        ExitCode::from(exit::FAILED)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match cli.command {
        Command::Produce(args) => match produce::run(args).await {
            Ok(value) => {
                let ok = produce::succeeded(&value);
                summary("produce", value, ok)
            }
            Err(error) => failed("produce", &error),
        },
        Command::Consume(args) => match consume::run(args).await {
            Ok(()) => ExitCode::from(exit::OK),
            Err(error) => failed("consume", &error),
        },
        Command::Leases(args) => match leases::run(args).await {
            Ok(()) => ExitCode::from(exit::OK),
            Err(error) => failed("leases", &error),
        },
        Command::Streams(args) => match streams::run(args).await {
            Ok(()) => ExitCode::from(exit::OK),
            Err(error) => failed("streams", &error),
        },
        Command::Demo(args) => match demo::run(args).await {
            Ok(value) => {
                let ok = value["lost"].as_u64() == Some(0);
                summary("demo", value, ok)
            }
            Err(error) => failed("demo", &error),
        },
    }
}
