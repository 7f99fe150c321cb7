//! `kinesis`: produce, consume, inspect leases and manage Kinesis Data Streams.

#![forbid(unsafe_code)]

use clap::CommandFactory;
use clap::{Parser, Subcommand};
use kinesis_cli::{consume, consumers, demo, exit, leases, multilang, produce, streams};

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
    #[command(flatten)]
    aws: kinesis_cli::AwsOptions,
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
    /// Shows, watches, resets or moves the leases of a consumer application.
    #[command(after_help = exit::HELP)]
    Leases(leases::Args),
    /// Lists, describes, creates, deletes or reshards streams; sets their retention.
    #[command(after_help = exit::HELP)]
    Streams(streams::Args),
    /// Runs a KCL MultiLang application (amazon-kclpy, aws-kcl) from the Java
    /// MultiLangDaemon's properties file: one child process per shard, no JVM.
    #[command(after_help = exit::HELP)]
    Multilang(multilang::Args),
    /// Lists or deregisters a stream's enhanced fan-out consumers.
    #[command(after_help = exit::HELP)]
    Consumers(consumers::Args),
    /// Prints a completion script for a shell: `kinesis completions bash >
    /// /etc/bash_completion.d/kinesis`, `kinesis completions zsh > ~/.zfunc/_kinesis`,
    /// `kinesis completions fish > ~/.config/fish/completions/kinesis.fish`.
    #[command(after_help = exit::HELP)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Runs the end-to-end demo against local emulators (started for it unless the AWS
    /// configuration names endpoints).
    #[command(after_help = exit::HELP)]
    Demo(demo::Args),
}

fn init_logging(verbose: u8, quiet: bool) {
    // aws-config logs every failed probe of its credentials and region chains (instance
    // metadata, SSO, ...) as a warning, kilobytes each, before the call fails anyway with
    // the error reported below: only -v shows them.
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,aws_config=error",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(kinesis_cli::colours_enabled())
        .init();
}

/// Whether `-v` was given: the report then lists every cause.
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn failed(command: &str, error: &kinesis_cli::Error) -> u8 {
    let verbose = VERBOSE.load(std::sync::atomic::Ordering::Relaxed);
    let context = kinesis_cli::context();
    let error: &(dyn std::error::Error + 'static) = &**error;
    eprintln!(
        "{}",
        kinesis_cli::report::render(command, error, &context, verbose)
    );
    exit::FAILED
}

fn summary(command: &str, value: serde_json::Value, ok: bool) -> u8 {
    println!("{value}");
    if ok {
        exit::OK
    } else {
        eprintln!("kinesis {command}: not every record made it (see the summary)");
        exit::FAILED
    }
}

fn main() {
    let cli = Cli::parse();
    // `produce` runs on one thread: the generator or reader and the producer's pipeline
    // take turns (a send yields every so often), so records pass from one to the other
    // without waking another thread for each batch, and the producer's inbox holds a
    // turn's records rather than whatever a faster reader thread piled up. `consume` too:
    // its work is reading, deaggregating and serializing lines (its writes go to a
    // blocking thread), and one thread does it with fewer wake-ups than two.
    let mut runtime = if matches!(cli.command, Command::Produce(_) | Command::Consume(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kinesis: cannot start the async runtime: {error}");
            std::process::exit(i32::from(exit::FAILED));
        }
    };
    let code = runtime.block_on(run(cli));
    // Exit with the runtime still alive: dropping it would wait for blocking reads still
    // under way (standard input, open after a Ctrl-C or SIGTERM).
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(i32::from(code));
}

async fn run(cli: Cli) -> u8 {
    init_logging(cli.verbose, cli.quiet);
    VERBOSE.store(cli.verbose > 0, std::sync::atomic::Ordering::Relaxed);
    kinesis_cli::set_aws_options(cli.aws.clone());
    match cli.command {
        Command::Produce(args) => match produce::run(args).await {
            Ok(value) => {
                let ok = produce::succeeded(&value);
                summary("produce", value, ok)
            }
            Err(error) => failed("produce", &error),
        },
        Command::Consume(args) => match consume::run(args).await {
            Ok(()) => exit::OK,
            Err(error) => failed("consume", &error),
        },
        Command::Leases(args) => match leases::run(args).await {
            Ok(()) => exit::OK,
            Err(error) => failed("leases", &error),
        },
        Command::Streams(args) => match streams::run(args).await {
            Ok(()) => exit::OK,
            Err(error) => failed("streams", &error),
        },
        Command::Multilang(args) => match multilang::run(args).await {
            Ok(()) => exit::OK,
            Err(error) => failed("multilang", &error),
        },
        Command::Consumers(args) => match consumers::run(args).await {
            Ok(()) => exit::OK,
            Err(error) => failed("consumers", &error),
        },
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kinesis",
                &mut std::io::stdout(),
            );
            exit::OK
        }
        Command::Demo(args) => match demo::run(args).await {
            Ok(value) => {
                let ok = value["lost"].as_u64() == Some(0);
                summary("demo", value, ok)
            }
            Err(error) => failed("demo", &error),
        },
    }
}
