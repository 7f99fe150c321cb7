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
//! - **Standalone** (`--shard S`): reads one shard with GetRecords, no lease table and no
//!   checkpoints; stops at the shard's end, after `--count` records, or once caught up for
//!   `--exit-after-idle`.
//!
//! Each line: `{"shard_id", "sequence_number", "sub_sequence_number", "partition_key",
//! "data"}`, with `data` as UTF-8 text when it is valid UTF-8 and otherwise base64 with
//! `"data_base64": true`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use clap::Args as ClapArgs;
use kinesis_consumer::{
    InitialPosition, KinesisClientRecord, ProcessRecordsInput, RecordProcessor, Scheduler,
    ShardEndedInput, ShutdownHandle, ShutdownRequestedInput,
};

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

fn parse_time(value: &str) -> Result<SystemTime, String> {
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(seconds));
        }
    }
    humantime::parse_rfc3339_weak(value).map_err(|e| format!("{value:?}: {e}"))
}

/// Consumes a stream and writes one JSON line per user record.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// Stream name or ARN.
    #[arg(long)]
    pub stream: String,
    /// Group mode: the application name (the lease table's name), shared by cooperating
    /// workers.
    #[arg(long, required_unless_present = "shard", conflicts_with = "shard")]
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
    /// Stop (gracefully) once caught up for this long: every shard read to its tip (an
    /// empty read with millis_behind_latest 0) and no record since.
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
}

/// Runs `kinesis consume` until it stops (see the module documentation).
pub async fn run(args: Args) -> Result<(), Error> {
    match (&args.app, &args.shard) {
        (Some(app), _) => {
            let app = app.clone();
            run_group(args, app).await
        }
        (None, Some(shard)) => {
            let shard = shard.clone();
            crate::shard_reader::run(args, shard).await
        }
        (None, None) => Err("--app (group mode) or --shard (standalone) is required".into()),
    }
}

/// Where the JSON lines go.
pub(crate) fn output(path: Option<&PathBuf>) -> Result<Output, Error> {
    Ok(match path {
        Some(path) => Arc::new(Mutex::new(Box::new(BufWriter::new(File::create(path)?)))),
        None => Arc::new(Mutex::new(Box::new(BufWriter::new(std::io::stdout())))),
    })
}

async fn run_group(args: Args, app: String) -> Result<(), Error> {
    crate::metrics::serve(args.metrics_listen)?;
    let config = crate::aws_config().await?;
    let output = output(args.output.as_ref())?;
    let mut builder = Scheduler::builder(&config)
        .stream(&args.stream)
        .application_name(&app)
        .initial_position(args.from.initial_position()?)
        .failover_time(args.failover)
        // Empty reads tell when a shard is read to its tip (--exit-after-idle).
        .call_process_records_even_for_empty_list(true);
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id);
    }
    if args.coordination == "workers" {
        builder = builder.coordination(kinesis_consumer::leases::Coordination::Workers);
    }
    if let Some(table) = &args.lease_table {
        let mut lease_table = kinesis_consumer::LeaseTableConfig::default();
        lease_table.table_name = Some(table.clone());
        builder = builder.lease_table(lease_table);
    }
    builder = if args.fan_out {
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
            lines: Vec::new(),
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
        limit: args.count,
        written: AtomicU64::new(0),
    });
    *shared_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
    tracing::info!(
        worker = scheduler.worker_id(),
        stream = %args.stream,
        application = %app,
        "consuming"
    );

    {
        let stop = stop.clone();
        tokio::spawn(async move {
            crate::signal::stop_signal().await;
            crate::signal::abort_on_next_signal();
            tracing::info!("signal received, stopping (a second one aborts at once)");
            stop.shutdown();
        });
    }
    if let Some(idle) = args.exit_after_idle {
        let held = scheduler.held_shards();
        let shared = shared.clone();
        let started = Instant::now();
        let failover = args.failover;
        tokio::spawn(async move {
            let mut since: Option<Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                // Caught up: every shard this worker holds was read to its tip (its last
                // read was empty with millis_behind_latest 0) and nothing came since. A
                // worker holding nothing is caught up only once it has had a failover time
                // to be given leases (the leader assigns them after its first round).
                let caught_up = {
                    let map = shared.caught_up();
                    let shards = held.shard_ids();
                    (!shards.is_empty() || started.elapsed() >= failover)
                        && shards
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
                    tracing::info!(?idle, "caught up, stopping");
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
    /// Per started shard: whether its last read was empty at the tip.
    caught_up: Mutex<HashMap<String, bool>>,
    /// When the last record was delivered.
    last_record: Mutex<Instant>,
    /// `--count`: records to write at most.
    limit: Option<u64>,
    /// Records written so far (changed under the output lock).
    written: AtomicU64,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
            || self.closed.load(Ordering::SeqCst)
            || self.limit_reached()
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

struct JsonLines {
    shared: Arc<Shared>,
    shard: String,
    /// The last record written (and flushed): the most a checkpoint may cover.
    last_written: Option<(String, u64)>,
    /// A delivered batch was not written.
    unwritten: bool,
    /// Where the output lines are serialized before they are written (kept to reuse its
    /// allocation).
    lines: Vec<u8>,
}

/// One output line of a record, borrowed from it: serialized straight into the output
/// buffer, with no intermediate `serde_json::Value` (a map and an owned string per field).
///
/// The fields are in the order the lines have always had (that of a `serde_json::Value`
/// object: sorted), and `data_base64` appears only when true.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    data: Cow<'a, str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    data_base64: bool,
    partition_key: &'a str,
    sequence_number: &'a str,
    shard_id: &'a str,
    sub_sequence_number: u64,
}

/// Writes one output line for a record, newline included: `data` as UTF-8 text when it
/// is valid UTF-8, otherwise base64 with `"data_base64":true`.
pub(crate) fn write_json_line(
    out: &mut impl Write,
    shard: &str,
    record: &KinesisClientRecord,
) -> std::io::Result<()> {
    let (data, data_base64) = match std::str::from_utf8(&record.data) {
        Ok(text) => (Cow::Borrowed(text), false),
        Err(_) => (
            Cow::Owned(base64_simd::STANDARD.encode_to_string(&record.data)),
            true,
        ),
    };
    let line = JsonLine {
        data,
        data_base64,
        partition_key: &record.partition_key,
        sequence_number: &record.sequence_number,
        shard_id: shard,
        sub_sequence_number: record.sub_sequence_number,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// Writes the output lines of `records` to `out`, serialized into `buffer` first (its
/// allocation is reused from batch to batch) and written in blocks of about
/// [`WRITE_BLOCK`] bytes: one call to `out` per block rather than one per JSON token.
pub(crate) fn write_json_lines(
    out: &mut (impl Write + ?Sized),
    buffer: &mut Vec<u8>,
    shard: &str,
    records: &[KinesisClientRecord],
) -> std::io::Result<()> {
    buffer.clear();
    for record in records {
        write_json_line(buffer, shard, record)?;
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

impl JsonLines {
    /// Writes the records, or as many as `--count` still allows; returns how many.
    fn write(&mut self, records: &[KinesisClientRecord]) -> std::io::Result<usize> {
        let mut output = self.shared.output.lock().unwrap_or_else(|e| e.into_inner());
        let written = self.shared.written.load(Ordering::SeqCst);
        let allowed = match self.shared.limit {
            Some(limit) => records
                .len()
                .min(usize::try_from(limit.saturating_sub(written)).unwrap_or(usize::MAX)),
            None => records.len(),
        };
        write_json_lines(
            &mut *output,
            &mut self.lines,
            &self.shard,
            &records[..allowed],
        )?;
        output.flush()?;
        self.shared
            .written
            .store(written + allowed as u64, Ordering::SeqCst);
        Ok(allowed)
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
        if input.records.is_empty() {
            // An empty read: at the tip when millis_behind_latest is 0.
            let at_tip = input.millis_behind_latest == Some(0);
            self.shared.caught_up().insert(self.shard.clone(), at_tip);
            return;
        }
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
        let written = match self.write(&input.records) {
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
                return;
            }
        };
        if written < input.records.len() {
            self.unwritten = true;
        }
        if self.shared.limit_reached() {
            self.shared.stop.shutdown();
        }
        let Some(last) = input.records[..written].last() else {
            return;
        };
        let position = (last.sequence_number.clone(), last.sub_sequence_number);
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
    fn value_line(shard: &str, record: &KinesisClientRecord) -> String {
        let mut line = std::collections::BTreeMap::<&str, serde_json::Value>::new();
        line.insert("shard_id", shard.into());
        line.insert("sequence_number", record.sequence_number.as_str().into());
        line.insert("sub_sequence_number", record.sub_sequence_number.into());
        line.insert("partition_key", record.partition_key.as_str().into());
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

    fn line(shard: &str, record: &KinesisClientRecord) -> String {
        let mut out = Vec::new();
        write_json_line(&mut out, shard, record).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_stays_text_and_binary_is_base64() {
        let text: serde_json::Value =
            serde_json::from_str(&line("shardId-1", &record(b"hello"))).unwrap();
        assert_eq!(text["data"], "hello");
        assert_eq!(text["sub_sequence_number"], 3);
        assert!(text.get("data_base64").is_none());
        let binary: serde_json::Value =
            serde_json::from_str(&line("shardId-1", &record(&[0xff, 0x00]))).unwrap();
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
        keyed.partition_key = "k\"\\\u{0}\u{e9}".to_owned();
        keyed.sequence_number = "49680860314824985401231118657019531693487739223058415618".into();
        keyed.sub_sequence_number = u64::MAX;
        records.push(keyed);
        for shard in ["shardId-000000000003", "s\"\\"] {
            let mut expected = String::new();
            for record in &records {
                assert_eq!(line(shard, record), value_line(shard, record));
                expected.push_str(&value_line(shard, record));
            }
            // A batch, in blocks: several blocks and a partial one.
            let many: Vec<KinesisClientRecord> = std::iter::repeat_n(records.clone(), 2000)
                .flatten()
                .collect();
            let mut out = Vec::new();
            let mut buffer = Vec::new();
            write_json_lines(&mut out, &mut buffer, shard, &many).unwrap();
            assert!(out.len() > 2 * WRITE_BLOCK);
            assert_eq!(String::from_utf8(out).unwrap(), expected.repeat(2000));
        }
    }
}
