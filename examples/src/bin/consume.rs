//! `consume`: the same program as `kinesis consume` (crate `kinesis-cli`), kept as its own
//! binary for the chaos harness, which runs it beside itself.

use clap::Parser;

/// Writes one JSON line per user record (as `kinesis consume`).
#[derive(Parser, Debug)]
#[command(version, about, after_help = kinesis_cli::exit::HELP)]
struct Cli {
    #[command(flatten)]
    args: kinesis_cli::consume::Args,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match kinesis_cli::consume::run(Cli::parse().args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consume: {}", kinesis_cli::ErrorChain::new(&*error));
            std::process::ExitCode::from(kinesis_cli::exit::FAILED)
        }
    }
}
