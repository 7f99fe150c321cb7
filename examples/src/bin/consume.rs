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
//! `"data_base64": true`. The worker checkpoints after writing (and flushing) each batch,
//! and only what it wrote:
//!
//! - Ctrl-C or SIGTERM: graceful stop: final checkpoints of what was written, leases
//!   released.
//! - A write error (disk full, `/dev/full`): stop at once, no further checkpoint of any
//!   kind, exit status 1.
//! - Standard output closed by its reader (`consume ... | head -1`): stop at once and
//!   cleanly (exit 0); the final checkpoints cover what was written before.
//! - A batch handed over after the lease's local deadline passed is not written.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use clap::{Parser, ValueEnum};
use kinesis_consumer::{
    InitialPosition, KinesisClientRecord, ProcessRecordsInput, RecordProcessor, Scheduler,
    ShardEndedInput, ShutdownHandle, ShutdownRequestedInput,
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
    /// Stop gracefully (final checkpoints, leases released) once caught up for this many
    /// seconds: every shard this worker holds read to its tip (an empty read with
    /// millis_behind_latest 0) and no record since.
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
    /// Most records per GetRecords call (Java KCL default 10,000; polling only).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_records: i32,
}

type Output = Arc<Mutex<Box<dyn Write + Send>>>;

/// What every processor of this worker shares.
struct Shared {
    output: Output,
    stop: ShutdownHandle,
    /// A write failed: no further checkpoint of any kind, exit non-zero.
    failed: AtomicBool,
    /// The reader of standard output went away (EPIPE): stop cleanly.
    closed: AtomicBool,
    /// Per started shard: whether its last read was empty at the tip.
    caught_up: Mutex<HashMap<String, bool>>,
    /// When the last record was delivered.
    last_record: Mutex<Instant>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.failed.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst)
    }

    fn caught_up(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.caught_up.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct JsonLines {
    shared: Arc<Shared>,
    shard: String,
    /// The last record written (and flushed): the most a checkpoint may cover.
    last_written: Option<(String, u64)>,
    /// A delivered batch was not written.
    unwritten: bool,
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
        let mut output = self.shared.output.lock().unwrap_or_else(|e| e.into_inner());
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
        self.shared.caught_up().insert(self.shard.clone(), false);
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) {
        if self.shared.stopping() {
            self.unwritten |= !input.records.is_empty();
            return;
        }
        let Some(last) = input.records.last() else {
            // An empty read: at the tip when millis_behind_latest is 0.
            let at_tip = input.millis_behind_latest == Some(0);
            self.shared.caught_up().insert(self.shard.clone(), at_tip);
            return;
        };
        self.shared.caught_up().insert(self.shard.clone(), false);
        *self
            .shared
            .last_record
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        // Past the lease's deadline another worker may have the shard: write nothing.
        if !input.checkpointer.is_lease_held() {
            self.unwritten = true;
            return;
        }
        if let Err(error) = self.write(&input.records) {
            self.unwritten = true;
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                eprintln!("consume: output closed; stopping");
                self.shared.closed.store(true, Ordering::SeqCst);
            } else {
                eprintln!("consume: cannot write records of {}: {error}; stopping without any further checkpoint", self.shard);
                self.shared.failed.store(true, Ordering::SeqCst);
            }
            self.shared.stop.shutdown();
            return;
        }
        let position = (last.sequence_number.clone(), last.sub_sequence_number);
        self.last_written = Some(position.clone());
        // Checkpoint only what is safely written: at least once.
        if let Err(error) = input
            .checkpointer
            .checkpoint_at(&position.0, position.1)
            .await
        {
            eprintln!("consume: checkpoint of {} failed: {error}", self.shard);
        }
    }

    async fn lease_lost(&mut self, _input: kinesis_consumer::LeaseLostInput) {
        self.shared.caught_up().remove(&self.shard);
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        self.shared.caught_up().remove(&self.shard);
        // SHARD_END only when every record of the shard was written.
        if self.shared.stopping() || self.unwritten {
            return;
        }
        if let Err(error) = input.checkpointer.checkpoint().await {
            eprintln!(
                "consume: shard-end checkpoint of {} failed: {error}",
                self.shard
            );
        }
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput) {
        self.shared.caught_up().remove(&self.shard);
        if self.shared.failed.load(Ordering::SeqCst) {
            return;
        }
        let Some((sequence_number, sub)) = &self.last_written else {
            return;
        };
        if let Err(error) = input
            .checkpointer
            .checkpoint_at(sequence_number, *sub)
            .await
        {
            eprintln!(
                "consume: final checkpoint of {} failed: {error}",
                self.shard
            );
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                eprintln!("consume: cannot listen for SIGTERM: {error}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let config = aws_config::load_from_env().await;
    let output: Output = match &args.output {
        Some(path) => Arc::new(Mutex::new(Box::new(BufWriter::new(File::create(path)?)))),
        None => Arc::new(Mutex::new(Box::new(BufWriter::new(std::io::stdout())))),
    };
    let failover = Duration::from_millis(args.failover_ms);
    let mut builder = Scheduler::builder(&config)
        .stream(&args.stream)
        .application_name(&args.app)
        .initial_position(match args.initial_position {
            Start::TrimHorizon => InitialPosition::TrimHorizon,
            Start::Latest => InitialPosition::Latest,
        })
        .failover_time(failover)
        // Empty reads tell when a shard is read to its tip (--exit-after-idle).
        .call_process_records_even_for_empty_list(true);
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id);
    }
    builder = if args.fan_out {
        // The stream consumer is named after the application, registered if missing and
        // kept at exit.
        builder.fan_out()
    } else {
        builder
            .idle_time_between_reads(Duration::from_millis(args.idle_between_reads_ms))
            .max_records(args.max_records)
    };
    // The processors need the shutdown handle, which exists once the scheduler is built:
    // the factory reads it from here.
    let shared_slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
    let factory = {
        let slot = shared_slot.clone();
        move || JsonLines {
            shared: slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .expect("set before the scheduler runs"),
            shard: String::new(),
            last_written: None,
            unwritten: false,
        }
    };
    let scheduler = builder.processor_factory(factory).build().await?;
    let stop = scheduler.shutdown_handle();
    let shared = Arc::new(Shared {
        output: output.clone(),
        stop: stop.clone(),
        failed: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        caught_up: Mutex::new(HashMap::new()),
        last_record: Mutex::new(Instant::now()),
    });
    *shared_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
    eprintln!(
        "consume: worker {} on {} (application {})",
        scheduler.worker_id(),
        args.stream,
        args.app
    );

    {
        let stop = stop.clone();
        tokio::spawn(async move {
            stop_signal().await;
            eprintln!("consume: signal received, stopping");
            stop.shutdown();
        });
    }
    if let Some(idle) = args.exit_after_idle {
        let idle = Duration::from_secs(idle);
        let held = scheduler.held_shards();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut since: Option<Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                // Caught up: every shard this worker holds was read to its tip (its last
                // read was empty with millis_behind_latest 0) and nothing came since.
                let caught_up = {
                    let map = shared.caught_up();
                    held.shard_ids()
                        .iter()
                        .all(|shard| map.get(shard).copied().unwrap_or(false))
                };
                let last_record = *shared.last_record.lock().unwrap_or_else(|e| e.into_inner());
                if !caught_up {
                    since = None;
                    continue;
                }
                let since = *since.get_or_insert_with(Instant::now);
                if since.elapsed() >= idle && last_record.elapsed() >= idle {
                    eprintln!("consume: caught up for {idle:?}, stopping");
                    stop.shutdown();
                    return;
                }
            }
        });
    }
    scheduler.run().await?;
    if shared.failed.load(Ordering::SeqCst) {
        return Err("a write failed: stopped without checkpointing what was not written".into());
    }
    let flushed = output.lock().unwrap_or_else(|e| e.into_inner()).flush();
    match flushed {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
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
        let mut record = KinesisClientRecord::new("42", "k", bytes::Bytes::from_static(data));
        record.sub_sequence_number = 3;
        record.aggregated = true;
        record
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
