//! `kinesis consume`: one JSON line per user record on standard output (or a file).
//!
//! Two modes:
//!
//! - **Group** (`--app A`): a `kinesis-consumer` worker; several processes with the same
//!   `--app` share the stream through the lease table. It checkpoints after writing (and
//!   flushing) each batch, and only what it wrote:
//!   - Ctrl-C or SIGTERM: graceful stop: final checkpoints of what was written, leases
//!     released.
//!   - A write error (disk full, `/dev/full`): stop at once, no further checkpoint of any
//!     kind, exit status 1.
//!   - Standard output closed by its reader (`kinesis consume ... | head -1`): stop at once
//!     and cleanly (exit 0); the final checkpoints cover what was written before.
//!   - A batch handed over after the lease's local deadline passed is not written.
//!   - `--count N`: stops gracefully once N records are written (the batch that reaches N
//!     is written only up to it, and checkpointed there).
//!
//!   `--stream` given more than once consumes every one of the streams with one lease
//!   table (the library's multi-stream scheduler); each line then names its stream.
//! - **Tail** (neither `--app` nor `--shard`, like `kcat -C`): every shard of the stream,
//!   following resharding (a parent's records before its children's), through the same
//!   scheduler with its leases and checkpoints in memory: no table, nothing kept at exit.
//! - **Standalone** (`--shard S`): reads one shard with GetRecords, no lease table and no
//!   checkpoints; stops at the shard's end, after `--count` records, or once caught up for
//!   `--exit-after-idle`.
//!
//! Failing records (group and tail mode): `--require-json` fails the records whose data is
//! not JSON. They are not written, and nothing from the first of them on is checkpointed.
//! With `--dead-letter-file F` or `--dead-letter-stream S`, the failed records are
//! delivered again after a backoff (1 s doubling up to 5 minutes) and after
//! `--max-attempts N` (default 3) attempts go there (one JSON envelope each, see
//! `kinesis_consumer::dead_letter::DeadLetterEnvelope`), and the shard is checkpointed
//! past them; the records after them are written at once. Without either, nothing after
//! a failed record is written and the shard is read again from its checkpoint after a
//! backoff, for as long as the lease is held: it stops at the first failed record.
//!
//! Each line: `{"shard_id", "sequence_number", "sub_sequence_number", "partition_key",
//! "data"}`, with `data` as UTF-8 text when it is valid UTF-8 and otherwise base64 with
//! `"data_base64": true`, and `"stream"` when several streams are consumed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use clap::Args as ClapArgs;
use kinesis_consumer::dead_letter::JsonLinesFileSink;
use kinesis_consumer::{
    DeadLetterPolicy, ExtendedSequenceNumber, FailedRecord, InitialPosition, KinesisClientRecord,
    ProcessRecordsInput, ProcessResult, ProcessingError, RecordProcessor, Scheduler,
    SchedulerBuilder, ShardEndedInput, ShutdownHandle, ShutdownRequestedInput,
};
use kinesis_dead_letter::StreamSink;

use crate::{parse_duration, Error};

/// Where reading starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    /// The oldest record in the shard.
    TrimHorizon,
    /// Only records written from now on.
    Latest,
    /// Records written at or after this time.
    AtTimestamp(SystemTime),
    /// At this record (standalone mode only: a sequence number belongs to one shard).
    Sequence(String),
}

impl From {
    /// Parses `trim-horizon`, `latest`, `at-timestamp=<RFC 3339 or epoch seconds>` or
    /// `sequence=<sequence number>`.
    pub fn parse(value: &str) -> Result<From, String> {
        let (kind, argument) = match value.split_once('=') {
            Some((kind, argument)) => (kind, Some(argument)),
            None => (value, None),
        };
        match (kind.to_ascii_lowercase().replace('_', "-").as_str(), argument) {
            ("trim-horizon", None) => Ok(From::TrimHorizon),
            ("latest", None) => Ok(From::Latest),
            ("at-timestamp", Some(time)) => parse_time(time).map(From::AtTimestamp),
            ("sequence", Some(seq)) if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(From::Sequence(seq.to_owned()))
            }
            _ => Err(format!(
                "{value:?}: expected trim-horizon, latest, at-timestamp=<RFC 3339 or epoch seconds> \
                 or sequence=<sequence number>"
            )),
        }
    }

    /// The scheduler's initial position (group mode).
    fn initial_position(&self) -> Result<InitialPosition, Error> {
        match self {
            From::TrimHorizon => Ok(InitialPosition::TrimHorizon),
            From::Latest => Ok(InitialPosition::Latest),
            From::AtTimestamp(time) => Ok(InitialPosition::AtTimestamp(*time)),
            From::Sequence(_) => Err(
                "--from sequence=... needs --shard (a sequence number belongs to one shard)".into(),
            ),
        }
    }
}

/// An RFC 3339 time (any offset) or seconds since the epoch: the rule of
/// `kinesis leases reset --to at-timestamp=...`, the library's.
fn parse_time(value: &str) -> Result<SystemTime, String> {
    use kinesis_consumer::leases::reset::ResetTarget;
    match ResetTarget::parse(&format!("at-timestamp={value}")) {
        Ok(ResetTarget::AtTimestamp(time)) => Ok(time),
        _ => Err(format!(
            "{value:?}: expected an RFC 3339 time (2026-11-24T08:00:00Z, \
             2026-11-24T09:00:00+01:00) or seconds since the epoch"
        )),
    }
}

/// Consumes a stream and writes one JSON line per user record.
#[derive(ClapArgs, Debug, Clone)]
#[command(group(clap::ArgGroup::new("dead_letter").args(["dead_letter_file", "dead_letter_stream"])))]
pub struct Args {
    /// Stream name or ARN. More than once (group mode): consume all of them with one lease
    /// table, each line naming its stream.
    #[arg(long, required = true)]
    pub stream: Vec<String>,
    /// Group mode: the application name (the lease table's name), shared by cooperating
    /// workers. Without it and without `--shard`: tail every shard, with no lease table.
    #[arg(long, conflicts_with = "shard")]
    pub app: Option<String>,
    /// Group mode: the lease table's name when it is not the application name.
    // `conflicts_with` as well: clap skips `requires = "app"` when `--shard` (which
    // conflicts with `--app`) is given.
    #[arg(long, value_name = "TABLE", requires = "app", conflicts_with = "shard")]
    pub lease_table: Option<String>,
    /// Standalone mode: read this one shard, without a lease table or checkpoints.
    #[arg(long, value_name = "SHARD_ID")]
    pub shard: Option<String>,
    /// Where to start: `trim-horizon`, `latest`, `at-timestamp=<RFC 3339 or epoch seconds>`,
    /// `sequence=<number>` (standalone only). In group mode it applies to shards without a
    /// checkpoint.
    #[arg(long, value_name = "POSITION", value_parser = From::parse, default_value = "trim-horizon")]
    pub from: From,
    /// This worker's id (group mode; default: host name, process id and a random suffix).
    #[arg(long, conflicts_with = "shard")]
    pub worker_id: Option<String>,
    /// Write the JSON lines here instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Stop (gracefully) once idle for this long: no record for this long, and every shard
    /// read to its tip (an empty read with millis_behind_latest 0).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub exit_after_idle: Option<Duration>,
    /// Stop after writing this many records (in group mode gracefully, checkpointing only
    /// what was written).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Read with GetRecords polling (the default).
    #[arg(long, conflicts_with = "fan_out")]
    pub polling: bool,
    /// Read with enhanced fan-out (SubscribeToShard; group mode), through a stream consumer
    /// named after `--app` (registered if missing, kept at exit).
    #[arg(long, conflicts_with = "shard")]
    pub fan_out: bool,
    /// Lease failover time (group mode; Java KCL default 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub failover: Duration,
    /// Pause between GetRecords calls per shard (Java KCL default 1500ms; polling only).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1500ms")]
    pub idle_between_reads: Duration,
    /// Most records per GetRecords call (Java KCL default 10,000; polling only).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_records: i32,
    /// Lag-aware pauses between GetRecords calls (group mode, polling only): 200 ms while
    /// behind, doubling from `--idle-between-reads` up to 10 s on a quiet shard.
    #[arg(long, conflicts_with_all = ["fan_out", "shard"])]
    pub lag_aware: bool,
    /// How the workers share the leases (group mode): `leader` (default: a leader assigns
    /// them, the Java KCL 3's design) or `workers` (every worker scans the lease table and
    /// takes its share, the Java KCL 2.x's design).
    #[arg(long, value_name = "DESIGN", value_parser = ["leader", "workers"], default_value = "leader", conflicts_with = "shard")]
    pub coordination: String,
    /// Serve the consumer's metrics in the Prometheus text format at
    /// http://ADDR/metrics while it runs (e.g. 127.0.0.1:9100; group mode).
    #[arg(long, value_name = "ADDR", conflicts_with = "shard")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Fail the records whose data is not JSON (group and tail mode): they are not
    /// written, and nothing from the first of them on is checkpointed until they are
    /// dead-lettered (--dead-letter-file or --dead-letter-stream); without either, the
    /// shard stops at the first of them (read again from its checkpoint after a backoff).
    #[arg(long, conflicts_with = "shard")]
    pub require_json: bool,
    /// Append the records that still fail after --max-attempts to this file, one JSON
    /// envelope a line (the data in base64, with stream, shard, sequence numbers, partition
    /// key, error, attempts), then checkpoint past them.
    #[arg(long, value_name = "FILE", conflicts_with = "shard")]
    pub dead_letter_file: Option<PathBuf>,
    /// Write the records that still fail after --max-attempts to this stream (one JSON
    /// envelope a record, under the original partition key), then checkpoint past them.
    #[arg(long, value_name = "STREAM", conflicts_with = "shard")]
    pub dead_letter_stream: Option<String>,
    /// Attempts of a failing batch before its failed records are dead-lettered (default
    /// 3; Lambda's MaximumRetryAttempts plus one).
    #[arg(long, value_name = "N", requires = "dead_letter", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
}

/// Attempts of a failing batch before it is dead-lettered, without --max-attempts.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Where records given up on go (`--dead-letter-file`, `--dead-letter-stream`).
struct DeadLetter {
    policy: DeadLetterPolicy,
    /// The stream sink's producer, shut down at the end.
    stream: Option<StreamSink>,
}

impl DeadLetter {
    async fn new(args: &Args, config: &aws_config::SdkConfig) -> Result<Option<DeadLetter>, Error> {
        let max_attempts = args.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if let Some(path) = &args.dead_letter_file {
            let sink = JsonLinesFileSink::open(path)
                .map_err(|e| format!("cannot open dead-letter file {}: {e}", path.display()))?;
            return Ok(Some(DeadLetter {
                policy: DeadLetterPolicy::new(max_attempts, sink),
                stream: None,
            }));
        }
        if let Some(stream) = &args.dead_letter_stream {
            let sink = StreamSink::connect(config, stream.as_str())
                .await
                .map_err(|e| {
                    format!(
                        "dead-letter stream {stream}: {}",
                        kinesis_errors::ErrorChain::new(&e)
                    )
                })?;
            return Ok(Some(DeadLetter {
                policy: DeadLetterPolicy::new(max_attempts, sink.clone()),
                stream: Some(sink),
            }));
        }
        Ok(None)
    }

    /// Sends what the stream sink's producer still holds.
    async fn finish(dead_letter: Option<DeadLetter>) {
        if let Some(sink) = dead_letter.and_then(|d| d.stream) {
            sink.shutdown().await;
        }
    }
}

/// Runs `kinesis consume` until it stops (see the module documentation).
pub async fn run(args: Args) -> Result<(), Error> {
    if args.stream.len() > 1 && args.app.is_none() {
        return Err("several --stream need --app (one lease table for all of them)".into());
    }
    match (&args.app, &args.shard) {
        (Some(app), _) if args.stream.len() > 1 => {
            let app = app.clone();
            run_streams(args, app).await
        }
        (Some(app), _) => {
            let app = app.clone();
            run_group(args, Some(app)).await
        }
        (None, Some(shard)) => {
            let shard = shard.clone();
            crate::shard_reader::run(args, shard).await
        }
        (None, None) => run_group(args, None).await,
    }
}

impl Args {
    /// The one stream of every mode but several streams in group mode.
    pub(crate) fn the_stream(&self) -> &str {
        self.stream.first().map_or("", String::as_str)
    }

    /// The lease table named by `--lease-table`, if given.
    fn lease_table_config(&self) -> Option<kinesis_consumer::LeaseTableConfig> {
        self.lease_table.as_ref().map(|table| {
            let mut config = kinesis_consumer::LeaseTableConfig::default();
            config.table_name = Some(table.clone());
            config
        })
    }
}

/// The application name of tail mode: it names the metrics, and no table.
const TAIL_APPLICATION: &str = "kinesis-consume-tail";

/// Where the JSON lines go.
pub(crate) fn output(path: Option<&PathBuf>) -> Result<Output, Error> {
    Ok(match path {
        Some(path) => Arc::new(Mutex::new(Box::new(BufWriter::new(File::create(path)?)))),
        None => Arc::new(Mutex::new(Box::new(BufWriter::new(std::io::stdout())))),
    })
}

/// Where the processors find what they share: set once the scheduler (and its shutdown
/// handle) exists, before it runs.
type SharedSlot = Arc<Mutex<Option<Arc<Shared>>>>;

/// A processor factory writing to the slot's output; `stream` names each line's stream
/// when several are consumed.
fn json_lines(
    slot: &SharedSlot,
    stream: Option<String>,
    failing: Failing,
) -> impl Fn() -> JsonLines + Send + Sync {
    let slot = slot.clone();
    move || JsonLines {
        failing,
        shared: slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .expect("set before the scheduler runs"),
        stream: stream.clone(),
        shard: String::new(),
        key: String::new(),
        last_written: None,
        unwritten: false,
        lines: Vec::new(),
    }
}

/// The settings of every consumed stream (group and tail mode).
fn configure(
    mut builder: SchedulerBuilder,
    args: &Args,
    dead_letter: Option<&DeadLetter>,
) -> SchedulerBuilder {
    if let Some(dead_letter) = dead_letter {
        builder = builder.dead_letter(dead_letter.policy.clone());
    }
    builder = builder
        .failover_time(args.failover)
        // Empty reads tell when a shard is read to its tip (--exit-after-idle).
        .call_process_records_even_for_empty_list(true);
    if args.coordination == "workers" {
        builder = builder.coordination(kinesis_consumer::leases::Coordination::Workers);
    }
    if args.fan_out {
        // The stream consumer is named after the application, registered if missing and
        // kept at exit.
        builder.fan_out()
    } else {
        let builder = builder
            .idle_time_between_reads(args.idle_between_reads)
            .max_records(args.max_records);
        if args.lag_aware {
            builder.lag_aware_polling(kinesis_consumer::LagAwarePolling::default())
        } else {
            builder
        }
    }
}

/// One stream in group mode (`app`), or tailed with no lease table (`None`).
async fn run_group(args: Args, app: Option<String>) -> Result<(), Error> {
    crate::metrics::serve(args.metrics_listen)?;
    let config = crate::aws_config().await?;
    let output = output(args.output.as_ref())?;
    let mut builder = Scheduler::builder(&config)
        .stream(args.the_stream())
        .initial_position(args.from.initial_position()?);
    builder = match &app {
        Some(app) => builder.application_name(app),
        None => {
            if args.fan_out {
                return Err("--fan-out needs --app (the stream consumer is named after it)".into());
            }
            // One worker holding every lease, in memory: all shards, parents first.
            builder
                .application_name(TAIL_APPLICATION)
                .worker_id("tail")
                .lease_store(Arc::new(kinesis_consumer::leases::MemoryLeaseStore::new()))
        }
    };
    let dead_letter = DeadLetter::new(&args, &config).await?;
    builder = configure(builder, &args, dead_letter.as_ref());
    if app.is_none() {
        builder = builder.coordination(kinesis_consumer::leases::Coordination::Workers);
    }
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id);
    }
    if let Some(lease_table) = args.lease_table_config() {
        builder = builder.lease_table(lease_table);
    }
    let slot = SharedSlot::default();
    let scheduler = builder
        .processor_factory(json_lines(&slot, None, Failing::of(&args)))
        .build()
        .await?;
    let stop = scheduler.shutdown_handle();
    let shared = Shared::new(output.clone(), stop.clone(), args.count);
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
    tracing::info!(
        worker = scheduler.worker_id(),
        stream = %args.the_stream(),
        application = app.as_deref().unwrap_or("(none: tail)"),
        "consuming"
    );
    stop_on_signal(&stop);
    if let Some(idle) = args.exit_after_idle {
        let held = scheduler.held_shards();
        stop_when_idle(
            idle,
            args.failover,
            move || held.shard_ids(),
            &shared,
            &stop,
        );
    }
    let ran = scheduler.run().await;
    DeadLetter::finish(dead_letter).await;
    ran?;
    finish(&shared, &output)
}

/// Several streams in group mode: one lease table, each line naming its stream.
async fn run_streams(args: Args, app: String) -> Result<(), Error> {
    use kinesis_consumer::multi_stream::{MultiStreamScheduler, StreamConfig};
    crate::metrics::serve(args.metrics_listen)?;
    let config = crate::aws_config().await?;
    let output = output(args.output.as_ref())?;
    let initial_position = args.from.initial_position()?;
    let streams: Vec<StreamConfig> = args
        .stream
        .iter()
        .map(|stream| StreamConfig::new(stream, initial_position))
        .collect();
    let slot = SharedSlot::default();
    let dead_letter = DeadLetter::new(&args, &config).await?.map(Arc::new);
    let mut builder = MultiStreamScheduler::builder(&config)
        .application_name(&app)
        .tracker(streams)
        .configure_stream({
            let (slot, args, dead_letter) = (slot.clone(), args.clone(), dead_letter.clone());
            move |identifier, builder| {
                let stream = identifier.stream_name().to_owned();
                configure(builder, &args, dead_letter.as_deref()).processor_factory(json_lines(
                    &slot,
                    Some(stream),
                    Failing::of(&args),
                ))
            }
        });
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id);
    }
    if let Some(lease_table) = args.lease_table_config() {
        builder = builder.lease_table(lease_table);
    }
    let scheduler = builder.build().await?;
    let stop = scheduler.shutdown_handle();
    let shared = Shared::new(output.clone(), stop.clone(), args.count);
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
    tracing::info!(
        worker = scheduler.worker_id(),
        streams = ?args.stream,
        application = %app,
        "consuming"
    );
    stop_on_signal(&stop);
    if let Some(idle) = args.exit_after_idle {
        let held = scheduler.held_shards();
        let keys = move || {
            held.shard_ids()
                .into_iter()
                .flat_map(|(stream, shards)| {
                    let name = stream.stream_name().to_owned();
                    shards
                        .into_iter()
                        .map(move |shard| format!("{name}/{shard}"))
                })
                .collect()
        };
        stop_when_idle(idle, args.failover, keys, &shared, &stop);
    }
    let ran = scheduler.run().await;
    if let Some(sink) = dead_letter.as_ref().and_then(|d| d.stream.as_ref()) {
        sink.shutdown().await;
    }
    ran?;
    finish(&shared, &output)
}

/// Ctrl-C or SIGTERM stops gracefully; a second one aborts.
pub(crate) fn stop_on_signal(stop: &ShutdownHandle) {
    let stop = stop.clone();
    tokio::spawn(async move {
        crate::signal::stop_signal().await;
        crate::signal::abort_on_next_signal();
        tracing::info!("signal received, stopping (a second one aborts at once)");
        stop.shutdown();
    });
}

/// `--exit-after-idle`: stops gracefully once every shard this worker holds (`held`, by
/// their keys in `Shared::caught_up`) was read to its tip and no record came for `idle`.
fn stop_when_idle(
    idle: Duration,
    failover: Duration,
    held: impl Fn() -> Vec<String> + Send + 'static,
    shared: &Arc<Shared>,
    stop: &ShutdownHandle,
) {
    let (shared, stop) = (shared.clone(), stop.clone());
    let started = Instant::now();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            // Caught up: every shard this worker holds was read to its tip (its last read
            // was empty with millis_behind_latest 0) and nothing came since. A worker
            // holding nothing is caught up only once it has had a failover time to be given
            // leases (the leader assigns them after its first round).
            let caught_up = {
                let map = shared.caught_up();
                let shards = held();
                (!shards.is_empty() || started.elapsed() >= failover)
                    && shards
                        .iter()
                        .all(|shard| map.get(shard).copied().unwrap_or(false))
            };
            let last_record = *shared.last_record.lock().unwrap_or_else(|e| e.into_inner());
            // Idle counts from the last record, not from the read that found the tip: that
            // read comes up to an `--idle-between-reads` later.
            if caught_up && last_record.elapsed() >= idle {
                tracing::info!(?idle, "caught up, stopping");
                stop.shutdown();
                return;
            }
        }
    });
}

/// The exit status once the scheduler stopped: a failed write is an error; the output is
/// flushed (a reader that went away is not an error).
fn finish(shared: &Shared, output: &Output) -> Result<(), Error> {
    if shared.failed.load(Ordering::SeqCst) {
        return Err("a write failed: stopped without checkpointing what was not written".into());
    }
    let flushed = output.lock().unwrap_or_else(|e| e.into_inner()).flush();
    match flushed {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The shared output of every processor.
pub(crate) type Output = Arc<Mutex<Box<dyn Write + Send>>>;

/// What every processor of this worker shares.
struct Shared {
    output: Output,
    stop: ShutdownHandle,
    /// A write failed: no further checkpoint of any kind, exit non-zero.
    failed: AtomicBool,
    /// The reader of standard output went away (EPIPE): stop cleanly.
    closed: AtomicBool,
    /// Per started shard (`stream/shard` with several streams): whether its last read was
    /// empty at the tip.
    caught_up: Mutex<HashMap<String, bool>>,
    /// When the last record was delivered.
    last_record: Mutex<Instant>,
    /// `--count`: records to write at most.
    limit: Option<u64>,
    /// Records written so far, or on their way ([`Shared::reserve`]).
    written: AtomicU64,
}

impl Shared {
    fn new(output: Output, stop: ShutdownHandle, limit: Option<u64>) -> Arc<Shared> {
        Arc::new(Shared {
            output,
            stop,
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            caught_up: Mutex::new(HashMap::new()),
            last_record: Mutex::new(Instant::now()),
            limit,
            written: AtomicU64::new(0),
        })
    }

    fn stopping(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
            || self.closed.load(Ordering::SeqCst)
            || self.limit_reached()
    }

    /// Counts `records` more as written, or as many as `--count` still allows; returns
    /// how many.
    fn reserve(&self, records: usize) -> usize {
        let Some(limit) = self.limit else {
            self.written.fetch_add(records as u64, Ordering::SeqCst);
            return records;
        };
        let mut allowed = 0;
        let _ = self
            .written
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |written| {
                allowed = records
                    .min(usize::try_from(limit.saturating_sub(written)).unwrap_or(usize::MAX));
                Some(written + allowed as u64)
            });
        allowed
    }

    /// `--count` records were written: write nothing more.
    fn limit_reached(&self) -> bool {
        self.limit
            .is_some_and(|limit| self.written.load(Ordering::SeqCst) >= limit)
    }

    fn caught_up(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.caught_up.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which records fail, and what becomes of them.
#[derive(Clone, Copy, Debug)]
struct Failing {
    /// `--require-json`: records whose data is not JSON fail.
    require_json: bool,
    /// A dead-letter target: the failed records alone are delivered again, so the
    /// records after them in a batch are written at once. Without one the shard is read
    /// again from its checkpoint, so nothing after a failed record is written.
    dead_letter: bool,
}

impl Failing {
    fn of(args: &Args) -> Self {
        Failing {
            require_json: args.require_json,
            dead_letter: args.dead_letter_file.is_some() || args.dead_letter_stream.is_some(),
        }
    }
}

struct JsonLines {
    shared: Arc<Shared>,
    /// Which records fail.
    failing: Failing,
    /// The stream, named in each line when several are consumed.
    stream: Option<String>,
    shard: String,
    /// The shard's key in `Shared::caught_up`.
    key: String,
    /// The last record written (and flushed): the most a checkpoint may cover.
    last_written: Option<(String, u64)>,
    /// A delivered batch was not written.
    unwritten: bool,
    /// Where the output lines are serialized before they are written (kept to reuse its
    /// allocation).
    lines: Vec<u8>,
}

/// Where records come from, as their lines name it: the shard, and the stream when several
/// are consumed.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The stream, named in each line only when several streams are consumed.
    pub stream: Option<&'a str>,
    /// The shard the records were read from.
    pub shard: &'a str,
}

/// Writes one output line for a record, newline included: `data` as UTF-8 text when it
/// is valid UTF-8, otherwise base64 with `"data_base64":true`.
///
/// The fields are in the order the lines have always had (that of a `serde_json::Value`
/// object: sorted), `data_base64` appears only when true and `stream` only when several
/// streams are consumed. The field names are written as they are and only the values go
/// through serde_json's escaping: escaping the names too was a third of the line's cost.
pub(crate) fn write_json_line(
    out: &mut impl Write,
    source: Source<'_>,
    record: &KinesisClientRecord,
) -> std::io::Result<()> {
    let encoded;
    let (data, data_base64) = match std::str::from_utf8(&record.data) {
        Ok(text) => (text, false),
        Err(_) => {
            encoded = base64_simd::STANDARD.encode_to_string(&record.data);
            (encoded.as_str(), true)
        }
    };
    out.write_all(b"{\"data\":")?;
    serde_json::to_writer(&mut *out, data)?;
    if data_base64 {
        out.write_all(b",\"data_base64\":true")?;
    }
    out.write_all(b",\"partition_key\":")?;
    serde_json::to_writer(&mut *out, &*record.partition_key)?;
    out.write_all(b",\"sequence_number\":")?;
    serde_json::to_writer(&mut *out, &*record.sequence_number)?;
    out.write_all(b",\"shard_id\":")?;
    serde_json::to_writer(&mut *out, source.shard)?;
    if let Some(stream) = source.stream {
        out.write_all(b",\"stream\":")?;
        serde_json::to_writer(&mut *out, stream)?;
    }
    out.write_all(b",\"sub_sequence_number\":")?;
    serde_json::to_writer(&mut *out, &record.sub_sequence_number)?;
    out.write_all(b"}\n")
}

/// Writes the output lines of `records` to `out`, serialized into `buffer` first (its
/// allocation is reused from batch to batch) and written in blocks of about
/// 64 KiB: one call to `out` per block rather than one per JSON token.
pub fn write_json_lines(
    out: &mut (impl Write + ?Sized),
    buffer: &mut Vec<u8>,
    source: Source<'_>,
    records: &[KinesisClientRecord],
) -> std::io::Result<()> {
    buffer.clear();
    for record in records {
        write_json_line(buffer, source, record)?;
        if buffer.len() >= WRITE_BLOCK {
            out.write_all(buffer)?;
            buffer.clear();
        }
    }
    out.write_all(buffer)?;
    buffer.clear();
    Ok(())
}

/// The size of the blocks [`write_json_lines`] writes (it keeps one line more at most).
const WRITE_BLOCK: usize = 64 * 1024;

/// The records whose data is not JSON (`--require-json`): their indexes and why.
fn not_json(records: &[KinesisClientRecord]) -> Vec<(usize, String)> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, record)| {
            serde_json::from_slice::<serde::de::IgnoredAny>(&record.data)
                .err()
                .map(|error| (i, format!("not JSON: {error}")))
        })
        .collect()
}

impl JsonLines {
    /// Writes the first `count` records, or as many as `--count` still allows; returns
    /// how many, and the records.
    ///
    /// The lines are serialized, written and flushed on a blocking thread: a reader that
    /// stops reading holds this processor back, never the runtime that renews the leases.
    async fn write(
        &mut self,
        records: Vec<KinesisClientRecord>,
        count: usize,
    ) -> (std::io::Result<usize>, Vec<KinesisClientRecord>) {
        let allowed = self.shared.reserve(count);
        let mut buffer = std::mem::take(&mut self.lines);
        let output = self.shared.output.clone();
        let (stream, shard) = (self.stream.clone(), self.shard.clone());
        let written = tokio::task::spawn_blocking(move || {
            let source = Source {
                stream: stream.as_deref(),
                shard: &shard,
            };
            let mut output = output.lock().unwrap_or_else(|e| e.into_inner());
            let result = write_json_lines(&mut **output, &mut buffer, source, &records[..allowed])
                .and_then(|()| output.flush());
            (result, records, buffer)
        })
        .await;
        match written {
            Ok((result, records, buffer)) => {
                self.lines = buffer;
                (result.map(|()| allowed), records)
            }
            Err(error) => (Err(std::io::Error::other(error)), Vec::new()),
        }
    }
}

#[async_trait]
impl RecordProcessor for JsonLines {
    async fn initialize(&mut self, input: kinesis_consumer::InitializeInput) {
        self.shard = input.shard_id;
        self.key = match &self.stream {
            Some(stream) => format!("{stream}/{}", self.shard),
            None => self.shard.clone(),
        };
        self.shared.caught_up().insert(self.key.clone(), false);
    }

    async fn process_records(&mut self, mut input: ProcessRecordsInput) -> ProcessResult {
        if self.shared.stopping() {
            self.unwritten |= !input.records.is_empty();
            return Ok(());
        }
        if input.records.is_empty() {
            // An empty read: at the tip when millis_behind_latest is 0.
            let at_tip = input.millis_behind_latest == Some(0);
            self.shared.caught_up().insert(self.key.clone(), at_tip);
            return Ok(());
        }
        self.shared.caught_up().insert(self.key.clone(), false);
        *self
            .shared
            .last_record
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        // Past the lease's deadline another worker may have the shard: write nothing.
        if !input.checkpointer.is_lease_held() {
            self.unwritten = true;
            return Ok(());
        }
        // --require-json: the records that are not JSON fail; the others are written.
        let failed = if self.failing.require_json {
            not_json(&input.records)
        } else {
            Vec::new()
        };
        // The records to write, the first `count` of them: all but the failed ones when
        // they go to the dead-letter target, else up to the first failed one (the shard
        // is read again from the checkpoint).
        let dead_lettered = !failed.is_empty() && self.failing.dead_letter;
        let (records, count) = if dead_lettered {
            let mut bad = vec![false; input.records.len()];
            for (i, _) in &failed {
                bad[*i] = true;
            }
            let records: Vec<KinesisClientRecord> = input
                .records
                .iter()
                .zip(bad)
                .filter(|(_, bad)| !bad)
                .map(|(record, _)| record.clone())
                .collect();
            let count = records.len();
            (records, count)
        } else {
            let count = failed.first().map_or(input.records.len(), |(i, _)| *i);
            (std::mem::take(&mut input.records), count)
        };
        let (written, records) = self.write(records, count).await;
        let written = match written {
            Ok(written) => written,
            Err(error) => {
                self.unwritten = true;
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    eprintln!("kinesis consume: output closed; stopping");
                    self.shared.closed.store(true, Ordering::SeqCst);
                } else {
                    eprintln!("kinesis consume: cannot write records of {}: {error}; stopping without any further checkpoint", self.shard);
                    self.shared.failed.store(true, Ordering::SeqCst);
                }
                self.shared.stop.shutdown();
                return Ok(());
            }
        };
        let kept;
        let valid: &[KinesisClientRecord] = if dead_lettered {
            kept = records;
            &kept
        } else {
            input.records = records;
            &input.records[..count]
        };
        if written < valid.len() {
            self.unwritten = true;
        }
        if self.shared.limit_reached() {
            self.shared.stop.shutdown();
        }
        let failure = (!failed.is_empty()).then(|| {
            ProcessingError::records(
                failed
                    .iter()
                    .map(|(i, error)| FailedRecord::new(&input.records[*i], error)),
            )
        });
        // Every record before the first failed one is valid: the checkpoint covers the
        // written records up to it, never past it.
        let safe = failed
            .first()
            .map_or(written, |(first, _)| written.min(*first));
        let Some(last) = valid[..safe].last() else {
            return failure.map_or(Ok(()), Err);
        };
        let position = (last.sequence_number.to_string(), last.sub_sequence_number);
        self.last_written = Some(position.clone());
        // Checkpoint only what is safely written: at least once.
        if let Err(error) = input
            .checkpointer
            .checkpoint_at(&position.0, position.1)
            .await
        {
            eprintln!(
                "kinesis consume: checkpoint of {} failed: {error}",
                self.shard
            );
        }
        failure.map_or(Ok(()), Err)
    }

    async fn lease_lost(&mut self, _input: kinesis_consumer::LeaseLostInput) {
        self.shared.caught_up().remove(&self.key);
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        self.shared.caught_up().remove(&self.key);
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
        self.shared.caught_up().remove(&self.key);
        if self.shared.failed.load(Ordering::SeqCst) {
            return;
        }
        let Some((sequence_number, sub)) = &self.last_written else {
            return;
        };
        // A dead-lettered batch was checkpointed past by the consumer: nothing to add.
        let written = ExtendedSequenceNumber::new(sequence_number.as_str(), *sub);
        if input.checkpointer.current().await.compare(&written) != Some(std::cmp::Ordering::Less) {
            return;
        }
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
    fn positions_parse() {
        assert_eq!(From::parse("trim-horizon"), Ok(From::TrimHorizon));
        assert_eq!(From::parse("TRIM_HORIZON"), Ok(From::TrimHorizon));
        assert_eq!(From::parse("latest"), Ok(From::Latest));
        assert_eq!(
            From::parse("at-timestamp=1700000000"),
            Ok(From::AtTimestamp(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
            ))
        );
        assert_eq!(
            From::parse("at-timestamp=2023-11-14T22:13:20Z"),
            Ok(From::AtTimestamp(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
            ))
        );
        assert_eq!(
            From::parse("at-timestamp=2023-11-14T23:13:20.5+01:00"),
            Ok(From::AtTimestamp(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)
            )),
            "an offset, as leases reset takes it"
        );
        assert_eq!(
            From::parse("sequence=4959"),
            Ok(From::Sequence("4959".into()))
        );
        for bad in [
            "sequence=",
            "sequence=abc",
            "at-timestamp=yesterday",
            "oldest",
            "latest=1",
        ] {
            assert!(From::parse(bad).is_err(), "{bad}");
        }
        assert!(From::Sequence("1".into()).initial_position().is_err());
    }

    /// The line as `kinesis consume` wrote it before lines were serialized from a borrowed
    /// struct: a JSON object with its keys sorted (a `serde_json::Value` object's order
    /// unless some crate in the build turns on serde_json's `preserve_order`, so the
    /// reference is a `BTreeMap`, sorted whatever the features).
    const SHARD_1: Source<'static> = Source {
        stream: None,
        shard: "shardId-1",
    };

    fn value_line(source: Source<'_>, record: &KinesisClientRecord) -> String {
        let mut line = std::collections::BTreeMap::<&str, serde_json::Value>::new();
        line.insert("shard_id", source.shard.into());
        if let Some(stream) = source.stream {
            line.insert("stream", stream.into());
        }
        line.insert("sequence_number", (*record.sequence_number).into());
        line.insert("sub_sequence_number", record.sub_sequence_number.into());
        line.insert("partition_key", (*record.partition_key).into());
        match std::str::from_utf8(&record.data) {
            Ok(text) => {
                line.insert("data", text.into());
            }
            Err(_) => {
                line.insert(
                    "data",
                    base64_simd::STANDARD.encode_to_string(&record.data).into(),
                );
                line.insert("data_base64", true.into());
            }
        }
        format!("{}\n", serde_json::to_string(&line).unwrap())
    }

    fn line(source: Source<'_>, record: &KinesisClientRecord) -> String {
        let mut out = Vec::new();
        write_json_line(&mut out, source, record).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_stays_text_and_binary_is_base64() {
        let text: serde_json::Value =
            serde_json::from_str(&line(SHARD_1, &record(b"hello"))).unwrap();
        assert_eq!(text["data"], "hello");
        assert_eq!(text["sub_sequence_number"], 3);
        assert!(text.get("data_base64").is_none());
        let binary: serde_json::Value =
            serde_json::from_str(&line(SHARD_1, &record(&[0xff, 0x00]))).unwrap();
        assert_eq!(binary["data"], "/wA=");
        assert_eq!(binary["data_base64"], true);
    }

    /// The output format is unchanged byte for byte: field order, escapes (quotes,
    /// backslashes, control characters, non-ASCII), base64.
    #[test]
    fn lines_are_byte_for_byte_those_of_a_json_value() {
        let mut records = vec![
            record(b"hello"),
            record(&[0xff, 0x00]),
            record(b""),
            record("{\"q\":\"a\\\"b\\\\c\"}\n\t\u{1}\u{7f} \u{e9}\u{1F600}\u{2028}".as_bytes()),
            KinesisClientRecord::new("1", "", bytes::Bytes::from_static(b"plain")),
        ];
        let mut keyed = record(b"x");
        keyed.partition_key = "k\"\\\u{0}\u{e9}".into();
        keyed.sequence_number = "49680860314824985401231118657019531693487739223058415618".into();
        keyed.sub_sequence_number = u64::MAX;
        records.push(keyed);
        let sources = [
            ("shardId-000000000003", None),
            ("s\"\\", None),
            ("shardId-000000000003", Some("orders")),
            ("s", Some("a\"\\stream")),
        ];
        for (shard, stream) in sources {
            let source = Source { stream, shard };
            let mut expected = String::new();
            for record in &records {
                assert_eq!(line(source, record), value_line(source, record));
                expected.push_str(&value_line(source, record));
            }
            // A batch, in blocks: several blocks and a partial one.
            let many: Vec<KinesisClientRecord> = std::iter::repeat_n(records.clone(), 2000)
                .flatten()
                .collect();
            let mut out = Vec::new();
            let mut buffer = Vec::new();
            write_json_lines(&mut out, &mut buffer, source, &many).unwrap();
            assert!(out.len() > 2 * WRITE_BLOCK);
            assert_eq!(String::from_utf8(out).unwrap(), expected.repeat(2000));
        }
    }
}
