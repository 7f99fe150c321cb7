//! A `kinesis-consumer` worker that writes one JSON line per user record.
//!
//! Several `consume` processes with the same `--app` share the stream through the lease
//! table. Endpoint, region and credentials come from the standard AWS configuration:
//!
//! ```text
//! eval "$(localstack/start)"
//! cargo run -p examples --bin consume -- --stream demo --app indexer --output records.jsonl --exit-after-idle 10
//! ```
//!
//! Each line: `{"shard_id", "sequence_number", "sub_sequence_number", "partition_key",
//! "data"}`, with `data` as UTF-8 text when it is valid UTF-8 and otherwise base64 with
//! `"data_base64": true`. The worker checkpoints after writing (and flushing) each batch.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use clap::{Parser, ValueEnum};
use kinesis_consumer::{
    InitialPosition, KinesisClientRecord, ProcessRecordsInput, RecordProcessor, Scheduler,
    ShardEndedInput, ShutdownRequestedInput,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where a new application starts on shards it has no checkpoint for.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Start {
    /// The oldest record in the stream.
    TrimHorizon,
    /// Only records written from now on.
    Latest,
}

/// Consumes a Kinesis stream and writes one JSON line per user record.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Stream name.
    #[arg(long)]
    stream: String,
    /// Application name: the lease table's name, shared by cooperating workers.
    #[arg(long)]
    app: String,
    /// This worker's id (default: host name, process id and a random suffix).
    #[arg(long)]
    worker_id: Option<String>,
    /// Write the JSON lines here instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Stop gracefully (final checkpoints, leases released) after this many seconds
    /// without a record.
    #[arg(long, value_name = "SECS")]
    exit_after_idle: Option<u64>,
    /// Read with GetRecords polling (the default).
    #[arg(long, conflicts_with = "fan_out")]
    polling: bool,
    /// Read with enhanced fan-out (SubscribeToShard), through a stream consumer named after
    /// `--app` (registered if missing, kept at exit).
    #[arg(long)]
    fan_out: bool,
    /// Where to start on shards without a checkpoint.
    #[arg(long, value_enum, default_value_t = Start::TrimHorizon)]
    initial_position: Start,
    /// Lease failover time in milliseconds (Java KCL default 10,000).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    failover_ms: u64,
    /// Pause between GetRecords calls per shard in milliseconds (Java KCL default 1,500;
    /// polling only).
    #[arg(long, value_name = "MS", default_value_t = 1_500)]
    idle_between_reads_ms: u64,
}

type Output = Arc<Mutex<Box<dyn Write + Send>>>;

struct JsonLines {
    output: Output,
    shard: String,
    /// Milliseconds since `started` when the last record arrived.
    last_record: Arc<AtomicU64>,
    started: Instant,
}

/// One output line for a record.
fn json_line(shard: &str, record: &KinesisClientRecord) -> serde_json::Value {
    let mut line = serde_json::json!({
        "shard_id": shard,
        "sequence_number": record.sequence_number,
        "sub_sequence_number": record.sub_sequence_number,
        "partition_key": record.partition_key,
    });
    match std::str::from_utf8(&record.data) {
        Ok(text) => line["data"] = text.into(),
        Err(_) => {
            line["data"] = base64::engine::general_purpose::STANDARD
                .encode(&record.data)
                .into();
            line["data_base64"] = true.into();
        }
    }
    line
}

impl JsonLines {
    fn write(&self, records: &[KinesisClientRecord]) -> std::io::Result<()> {
        let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            writeln!(output, "{}", json_line(&self.shard, record))?;
        }
        output.flush()
    }
}

#[async_trait]
impl RecordProcessor for JsonLines {
    async fn initialize(&mut self, input: kinesis_consumer::InitializeInput) {
        self.shard = input.shard_id;
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) {
        if input.records.is_empty() {
            return;
        }
        self.last_record
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        // Checkpoint only what is safely written: at least once.
        if let Err(error) = self.write(&input.records) {
            eprintln!("consume: cannot write records of {}: {error}", self.shard);
            return;
        }
        if let Err(error) = input.checkpointer.checkpoint().await {
            eprintln!("consume: checkpoint of {} failed: {error}", self.shard);
        }
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        if let Err(error) = input.checkpointer.checkpoint().await {
            eprintln!(
                "consume: shard-end checkpoint of {} failed: {error}",
                self.shard
            );
        }
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput) {
        if let Err(error) = input.checkpointer.checkpoint().await {
            eprintln!(
                "consume: final checkpoint of {} failed: {error}",
                self.shard
            );
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let config = aws_config::load_from_env().await;
    let output: Output = match &args.output {
        Some(path) => Arc::new(Mutex::new(Box::new(BufWriter::new(File::create(path)?)))),
        None => Arc::new(Mutex::new(Box::new(std::io::stdout()))),
    };
    let started = Instant::now();
    let last_record = Arc::new(AtomicU64::new(0));
    let factory = {
        let (output, last_record) = (output.clone(), last_record.clone());
        move || JsonLines {
            output: output.clone(),
            shard: String::new(),
            last_record: last_record.clone(),
            started,
        }
    };
    let failover = Duration::from_millis(args.failover_ms);
    let mut builder = Scheduler::builder(config)
        .stream(&args.stream)
        .application_name(&args.app)
        .initial_position(match args.initial_position {
            Start::TrimHorizon => InitialPosition::TrimHorizon,
            Start::Latest => InitialPosition::Latest,
        })
        .failover_time(failover)
        .idle_time_between_reads(Duration::from_millis(args.idle_between_reads_ms))
        .processor_factory(factory);
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id);
    }
    if args.fan_out {
        // The stream consumer is named after the application, registered if missing and
        // kept at exit.
        builder = builder.fan_out();
    }
    let scheduler = builder.build().await?;
    eprintln!(
        "consume: worker {} on {} (application {})",
        scheduler.worker_id(),
        args.stream,
        args.app
    );

    let stop = scheduler.shutdown_handle();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.shutdown();
        }
    });
    if let Some(idle) = args.exit_after_idle {
        let idle = Duration::from_secs(idle);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let last = Duration::from_millis(last_record.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(last) >= idle {
                    eprintln!("consume: idle for {idle:?}, stopping");
                    stop.shutdown();
                    return;
                }
            }
        });
    }
    scheduler.run().await?;
    output.lock().unwrap_or_else(|e| e.into_inner()).flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consume: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(data: &'static [u8]) -> KinesisClientRecord {
        KinesisClientRecord {
            sequence_number: "42".into(),
            sub_sequence_number: 3,
            partition_key: "k".into(),
            explicit_hash_key: None,
            approximate_arrival_timestamp: None,
            data: bytes::Bytes::from_static(data),
            aggregated: true,
        }
    }

    #[test]
    fn text_stays_text_and_binary_is_base64() {
        let line = json_line("shardId-1", &record(b"hello"));
        assert_eq!(line["data"], "hello");
        assert_eq!(line["sub_sequence_number"], 3);
        assert!(line.get("data_base64").is_none());
        let line = json_line("shardId-1", &record(&[0xff, 0x00]));
        assert_eq!(line["data"], "/wA=");
        assert_eq!(line["data_base64"], true);
    }
}
