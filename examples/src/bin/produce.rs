//! `produce`: the same program as `kinesis produce` (crate `kinesis-cli`), kept as its own
//! binary for the chaos harness, which runs it beside itself.

use clap::Parser;

/// Puts records into a stream and prints a JSON summary (as `kinesis produce`).
#[derive(Parser, Debug)]
#[command(version, about, after_help = kinesis_cli::exit::HELP)]
struct Cli {
    #[command(flatten)]
    args: kinesis_cli::produce::Args,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match kinesis_cli::produce::run(Cli::parse().args).await {
        Ok(summary) => {
            println!("{summary}");
            let ok = kinesis_cli::produce::succeeded(&summary);
            std::process::ExitCode::from(if ok { 0 } else { kinesis_cli::exit::FAILED })
        }
        Err(error) => {
            eprintln!("produce: {error}");
            std::process::ExitCode::from(kinesis_cli::exit::FAILED)
        }
    }
}
