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
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let code = match kinesis_cli::produce::run(Cli::parse().args).await {
        Ok(summary) => {
            println!("{summary}");
            let ok = kinesis_cli::produce::succeeded(&summary);
            if ok {
                0
            } else {
                kinesis_cli::exit::FAILED
            }
        }
        Err(error) => {
            eprintln!("produce: {}", kinesis_cli::ErrorChain::new(&*error));
            kinesis_cli::exit::FAILED
        }
    };
    // Exit here rather than by dropping the runtime, which would wait for a blocking read
    // of standard input still under way after a signal.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(i32::from(code))
}
