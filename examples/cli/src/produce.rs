//! `kinesis produce`: records from standard input, files or a generator, through
//! `kinesis-producer`; one JSON summary line on standard output.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use clap::{Args as ClapArgs, ValueEnum};
use kinesis_producer::{Producer, Record, RecordReceipt};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::{parse_duration, Error};

/// How input lines become records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Each line is one record's data, as is.
    Lines,
    /// Each line is a JSON value, sent as is (`--key-field` picks its partition key).
    Json,
}

/// Puts records into a stream: lines of standard input or files, or `--records N`
/// generated ones. Prints one JSON summary line.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// Stream name or ARN.
    #[arg(long)]
    pub stream: String,
    /// Create the stream with this many shards first (and wait until it is active).
    #[arg(long, value_name = "N")]
    pub create_shards: Option<i32>,
    /// Read records from these files (`-` is standard input; default: standard input).
    #[arg(long = "input", value_name = "FILE", conflicts_with = "records")]
    pub inputs: Vec<PathBuf>,
    /// How input lines become records. Empty lines are skipped.
    #[arg(long, value_enum, default_value_t = Format::Lines)]
    pub format: Format,
    /// With `--format json`: the partition key is this field of each record (a string or
    /// a number; `a.b` for nested fields). A record without it is invalid: reported, not
    /// sent, and the exit code is 1.
    #[arg(long, value_name = "FIELD", conflicts_with = "key")]
    pub key_field: Option<String>,
    /// The partition key of every record (default: a random key per record, which spreads
    /// records over the shards).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Generate this many records instead of reading input: JSON objects
    /// `{"id": 0..N-1, "key": ..., "pad": "..."}` padded to `--size`, over `--keys` keys.
    #[arg(long, value_name = "N")]
    pub records: Option<u64>,
    /// Size of each generated record in bytes.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 100,
        requires = "records"
    )]
    pub size: usize,
    /// Number of distinct partition keys of generated records.
    #[arg(long, value_name = "K", default_value_t = 1_000, requires = "records")]
    pub keys: u64,
    /// Records per second at most (default: as fast as the producer admits them).
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// PutRecords calls in flight at most (the producer's `max_connections`).
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub max_connections: usize,
    /// Shortest timeout of one PutRecords call (the producer's `request_timeout`): calls
    /// get longer ones while the endpoint answers slowly, unless --fixed-request-timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "6s")]
    pub request_timeout: Duration,
    /// Give every PutRecords call --request-timeout and up to --collection-max-size
    /// bytes, as the KPL does (the producer's `adaptive_request_timeout` off).
    #[arg(long)]
    pub fixed_request_timeout: bool,
    /// User records accepted and not yet completed, at most (the producer's
    /// `max_outstanding_records`; default 100,000).
    #[arg(long, value_name = "N")]
    pub max_outstanding_records: Option<usize>,
    /// How long a record may wait to be aggregated and batched (the producer's
    /// `record_max_buffered_time`; default the KPL's 100ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub buffer_time: Option<Duration>,
    /// How long a record may be retried before it fails (the producer's `record_ttl`;
    /// default the KPL's 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub record_ttl: Option<Duration>,
    /// Bytes of one PutRecords call at most (the producer's `collection_max_size`; default
    /// the KPL's 5 MiB).
    #[arg(long, value_name = "BYTES")]
    pub collection_max_size: Option<usize>,
    /// Write the records of each partition key in input order even through retries and
    /// reshards (the producer's `ordered` mode: one Kinesis record per shard at a time).
    #[arg(long)]
    pub ordered: bool,
    /// Largest record, data plus partition key, in bytes (the producer's
    /// `max_record_size`; default: the stream's own, from DescribeStreamSummary).
    #[arg(long, value_name = "BYTES")]
    pub max_record_size: Option<usize>,
    /// Send every record as its own Kinesis record (the producer's `aggregation_enabled`
    /// off).
    #[arg(long)]
    pub no_aggregation: bool,
    /// On Ctrl-C or SIGTERM: stop reading input and wait this long for what is buffered
    /// to be sent; what is still unsent then is abandoned (counted in the summary). A
    /// second Ctrl-C aborts at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub stop_timeout: Duration,
    /// Serve the producer's metrics in the Prometheus text format at
    /// http://ADDR/metrics while it runs (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Write the data of every record that fails for good (expired after --record-ttl, or
    /// rejected by Kinesis) to this file, one per line as it was read or generated:
    /// `kinesis produce --input FILE` with the same flags sends them again.
    #[arg(long, value_name = "FILE")]
    pub failed_file: Option<PathBuf>,
}

/// Writes `--records N` records: JSON objects `{"id":…,"key":"…","pad":"…"}` padded with
/// dots to `size` bytes when shorter.
///
/// Payloads are written side by side into one shared buffer and handed out as slices of
/// it, so a record's data costs no allocation of its own (the producer copies it into an
/// aggregate and drops the slice); the keys are formatted once and cloned.
pub struct Generator {
    keys: Vec<String>,
    size: usize,
    buffer: BytesMut,
}

/// Bytes of the shared buffer the generated payloads are written into, at least.
const GENERATOR_BUFFER: usize = 64 * 1024;

impl Generator {
    /// Records of `size` bytes over `keys` distinct partition keys (at least one).
    pub fn new(size: usize, keys: u64) -> Self {
        Generator {
            keys: (0..keys.max(1)).map(|k| format!("key-{k}")).collect(),
            size,
            buffer: BytesMut::new(),
        }
    }

    /// Record `id`: its key is key number `id % keys`.
    pub fn record(&mut self, id: u64) -> Record {
        // Below `keys`, itself a u64 whose keys were all formatted.
        let key = &self.keys[(id % self.keys.len() as u64) as usize];
        let digits = id.checked_ilog10().map_or(1, |d| d as usize + 1);
        let bare = r#"{"id":,"key":"","pad":""}"#.len() + digits + key.len();
        let len = self.size.max(bare);
        if self.buffer.capacity() < len {
            self.buffer = BytesMut::with_capacity(len.max(GENERATOR_BUFFER));
        }
        let out = &mut self.buffer;
        out.put_slice(br#"{"id":"#);
        out.put_slice(itoa_u64(id, &mut [0; 20]));
        out.put_slice(br#","key":""#);
        out.put_slice(key.as_bytes());
        out.put_slice(br#"","pad":""#);
        out.put_bytes(b'.', len - bare);
        out.put_slice(br#""}"#);
        Record::new(key.clone(), out.split().freeze())
    }
}

/// `n` in decimal, written at the end of `buffer`.
fn itoa_u64(mut n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        // A digit: below 10.
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[at..];
        }
    }
}

/// The partition key of a JSON record: the string or number at `field` (`a.b` nests).
fn key_of(value: &serde_json::Value, field: &str) -> Option<String> {
    let found = field
        .split('.')
        .try_fold(value, |value, part| value.get(part))?;
    match found {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Turns input lines into records; counts what cannot be one.
struct Lines<'a> {
    args: &'a Args,
    line: u64,
    invalid: u64,
}

impl Lines<'_> {
    fn record(&mut self, text: &str) -> Option<Record> {
        self.line += 1;
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return None;
        }
        let key = match (self.args.format, &self.args.key_field, &self.args.key) {
            (_, _, Some(key)) => key.clone(),
            (Format::Json, field, None) => {
                let value: serde_json::Value = match serde_json::from_str(text) {
                    Ok(value) => value,
                    Err(error) => return self.invalid(format!("not JSON: {error}")),
                };
                match field {
                    Some(field) => match key_of(&value, field) {
                        Some(key) => key,
                        None => return self.invalid(format!("no string or number at {field:?}")),
                    },
                    None => random_key(),
                }
            }
            (Format::Lines, Some(_), None) => {
                return self.invalid("--key-field needs --format json".into())
            }
            (Format::Lines, None, None) => random_key(),
        };
        Some(Record::new(key, text.to_owned()))
    }

    fn invalid(&mut self, why: String) -> Option<Record> {
        if self.invalid < 10 {
            eprintln!("kinesis produce: line {}: {why}; not sent", self.line);
        }
        self.invalid += 1;
        None
    }
}

fn random_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// `--failed-file`: the data of each failed record, a line each. Writing is blocking,
/// which is fine for what should be rare; a write error is reported once, and the
/// records are still counted as failed.
struct FailedFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    broken: bool,
}

impl FailedFile {
    fn create(path: &std::path::Path) -> Result<Self, Error> {
        let file = std::fs::File::create(path)
            .map_err(|error| format!("cannot create --failed-file {}: {error}", path.display()))?;
        Ok(FailedFile {
            path: path.to_owned(),
            out: std::io::BufWriter::new(file),
            broken: false,
        })
    }

    fn write(&mut self, record: &Record) {
        use std::io::Write;
        let written = self
            .out
            .write_all(record.data())
            .and_then(|()| self.out.write_all(b"\n"));
        self.report(written);
    }

    fn finish(mut self) {
        use std::io::Write;
        let flushed = self.out.flush();
        self.report(flushed);
    }

    fn report(&mut self, result: std::io::Result<()>) {
        if let Err(error) = result {
            if !std::mem::replace(&mut self.broken, true) {
                eprintln!(
                    "kinesis produce: cannot write failed records to {}: {error}",
                    self.path.display()
                );
            }
        }
    }
}

/// Admits records at the requested rate, keeping each receipt for the counting task.
struct Sender {
    producer: Producer,
    receipts: mpsc::UnboundedSender<RecordReceipt>,
    rate: Option<f64>,
    started: Instant,
    sent: Arc<AtomicU64>,
}

impl Sender {
    async fn send(&self, record: Record) -> Result<(), Error> {
        let n = self.sent.load(Ordering::Relaxed);
        if let Some(rate) = self.rate.filter(|r| *r > 0.0) {
            let due = self.started + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let receipt = self.producer.send(record).await?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        // The counting task ends only after this sender is dropped.
        let _ = self.receipts.send(receipt);
        Ok(())
    }
}

async fn send_lines(
    sender: &Sender,
    lines: &mut Lines<'_>,
    input: impl AsyncBufRead + Unpin,
) -> Result<(), Error> {
    let mut input = input.lines();
    while let Some(line) = input.next_line().await? {
        if let Some(record) = lines.record(&line) {
            sender.send(record).await?;
        }
    }
    Ok(())
}

/// Runs `kinesis produce`; returns the summary (its `failed`, `invalid` and `abandoned`
/// counts decide the exit code).
pub async fn run(args: Args) -> Result<serde_json::Value, Error> {
    crate::metrics::serve(args.metrics_listen)?;
    let config = crate::aws_config().await?;
    if let Some(shards) = args.create_shards {
        let client = aws_sdk_kinesis::Client::new(&config);
        crate::streams::create(&client, &args.stream, Some(shards), Duration::from_secs(60))
            .await?;
    }
    let mut builder = Producer::builder(&config)
        .stream(&args.stream)
        .max_connections(args.max_connections)
        .request_timeout(args.request_timeout)
        .adaptive_request_timeout(!args.fixed_request_timeout);
    if let Some(records) = args.max_outstanding_records {
        builder = builder.max_outstanding_records(records);
    }
    if let Some(time) = args.buffer_time {
        builder = builder.record_max_buffered_time(time);
    }
    if let Some(ttl) = args.record_ttl {
        builder = builder.record_ttl(ttl);
    }
    if let Some(bytes) = args.collection_max_size {
        builder = builder.collection_max_size(bytes);
    }
    if args.ordered {
        builder = builder.ordered(true);
    }
    if let Some(bytes) = args.max_record_size {
        builder = builder.max_record_size(bytes);
    }
    if args.no_aggregation {
        builder = builder.aggregation_enabled(false);
    }
    let producer = builder.build().await?;

    // Receipts complete roughly in order: one task awaits them while records go in.
    let (receipts, mut completed) = mpsc::unbounded_channel::<RecordReceipt>();
    let failed = Arc::new(AtomicU64::new(0));
    let mut failed_file = match &args.failed_file {
        Some(path) => Some(FailedFile::create(path)?),
        None => None,
    };
    let counter = {
        let failed = failed.clone();
        tokio::spawn(async move {
            while let Some(receipt) = completed.recv().await {
                if let Err(error) = receipt.await {
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("kinesis produce: a record failed: {error}");
                    }
                    if let (Some(file), Some(record)) = (&mut failed_file, error.record()) {
                        file.write(record);
                    }
                }
            }
            if let Some(file) = failed_file {
                file.finish();
            }
        })
    };
    let started = Instant::now();
    let sender = Sender {
        producer: producer.clone(),
        receipts,
        rate: args.rate,
        started,
        sent: Arc::new(AtomicU64::new(0)),
    };
    let ticker = crate::progress_enabled().then(|| {
        let (sent, failed, producer) = (sender.sent.clone(), failed.clone(), producer.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let put = producer.stats().user_records_put;
                let seconds = started.elapsed().as_secs_f64().max(0.001);
                crate::progress(format_args!(
                    "sent {} put {put} failed {} ({:.0} records/s)",
                    sent.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                    put as f64 / seconds
                ));
            }
        })
    });

    let mut lines = Lines {
        args: &args,
        line: 0,
        invalid: 0,
    };
    let admitted = sender.sent.clone();
    let input = async {
        match args.records {
            Some(records) => {
                let mut generator = Generator::new(args.size, args.keys);
                for id in 0..records {
                    sender.send(generator.record(id)).await?;
                }
                Ok(())
            }
            None if args.inputs.is_empty() => {
                send_lines(&sender, &mut lines, BufReader::new(tokio::io::stdin())).await
            }
            None => {
                let mut result = Ok(());
                for path in &args.inputs {
                    result = if path.as_os_str() == "-" {
                        send_lines(&sender, &mut lines, BufReader::new(tokio::io::stdin())).await
                    } else {
                        match tokio::fs::File::open(path).await {
                            Ok(file) => send_lines(&sender, &mut lines, BufReader::new(file)).await,
                            Err(error) => Err(format!("{}: {error}", path.display()).into()),
                        }
                    };
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        }
    };
    // Ctrl-C or SIGTERM: stop reading input, then send what was admitted, within
    // --stop-timeout; a second signal aborts at once.
    let (sent, interrupted) = tokio::select! {
        sent = input => (sent, false),
        () = crate::signal::stop_signal() => {
            crate::signal::abort_on_next_signal();
            eprintln!(
                "kinesis produce: stopping: input closed, sending what is buffered (up to {:?}; \
                 Ctrl-C again to abort)",
                args.stop_timeout
            );
            (Ok(()), true)
        }
    };
    drop(sender);
    // What was admitted is sent (or fails) before the summary, even after an input error.
    let flushed = if interrupted {
        tokio::time::timeout(args.stop_timeout, producer.shutdown())
            .await
            .is_ok()
    } else {
        producer.shutdown().await;
        true
    };
    if flushed {
        counter.await?;
    } else {
        counter.abort();
    }
    if let Some(ticker) = ticker {
        ticker.abort();
        crate::progress_done();
    }
    sent?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = producer.stats();
    let failed = failed.load(Ordering::Relaxed);
    // Admitted, neither put nor failed: still buffered when --stop-timeout ran out.
    let abandoned = admitted
        .load(Ordering::Relaxed)
        .saturating_sub(stats.user_records_put + failed);
    Ok(serde_json::json!({
        "stream": args.stream,
        "user_records": stats.user_records_put,
        "kinesis_records": stats.kinesis_records_put,
        "put_records_calls": stats.put_records_calls,
        "failed": failed,
        "abandoned": abandoned,
        "interrupted": interrupted,
        "invalid": lines.invalid,
        "retries": stats.failed_attempts,
        "timeouts": stats.put_records_timeouts,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "records_per_second": (stats.user_records_put as f64 / seconds.max(0.001)).round(),
    }))
}

/// Whether a summary reports every record sent.
pub fn succeeded(summary: &serde_json::Value) -> bool {
    ["failed", "invalid", "abandoned"]
        .iter()
        .all(|count| summary[*count].as_u64() == Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        Cli::parse_from(["produce", "--stream", "s"].iter().chain(extra)).args
    }

    #[test]
    fn generated_records_are_json_of_the_requested_size() {
        let mut generator = Generator::new(100, 10);
        let record = generator.record(42);
        assert_eq!(record.partition_key(), "key-2");
        assert_eq!(record.data().len(), 100);
        let value: serde_json::Value = serde_json::from_slice(record.data()).expect("valid JSON");
        assert_eq!(value["id"], 42);
        assert_eq!(value["key"], "key-2");
        assert!(
            Generator::new(5, 1).record(1).data().len() > 5,
            "never truncated"
        );
        for (id, size) in [
            (0, 0),
            (9, 31),
            (10, 100),
            (123_456, 1000),
            (u64::MAX, 70_000),
        ] {
            let record = Generator::new(size, 3).record(id);
            let data = record.data();
            assert_eq!(data.len(), size.max(data.len()));
            let value: serde_json::Value = serde_json::from_slice(data).expect("valid JSON");
            assert_eq!(value["id"], id);
            assert_eq!(value["key"], format!("key-{}", id % 3));
        }
        // Consecutive payloads share the buffer, each its own bytes.
        let mut generator = Generator::new(30, 1);
        let records: Vec<_> = (0..5_000).map(|id| generator.record(id)).collect();
        for (id, record) in records.iter().enumerate() {
            let value: serde_json::Value =
                serde_json::from_slice(record.data()).expect("valid JSON");
            assert_eq!(value["id"], id);
        }
    }

    #[test]
    fn json_lines_take_their_key_from_a_field() {
        let args = args(&["--format", "json", "--key-field", "user.id"]);
        let mut lines = Lines {
            args: &args,
            line: 0,
            invalid: 0,
        };
        let record = lines.record(r#"{"user":{"id":17},"x":1}"#).unwrap();
        assert_eq!(record.partition_key(), "17");
        assert_eq!(&record.data()[..], br#"{"user":{"id":17},"x":1}"#);
        assert!(lines.record(r#"{"user":{}}"#).is_none());
        assert!(lines.record("not json").is_none());
        assert!(lines.record("").is_none(), "empty lines are skipped");
        assert_eq!(lines.invalid, 2);
    }

    #[test]
    fn plain_lines_get_a_fixed_or_random_key() {
        let fixed = args(&["--key", "k"]);
        let mut lines = Lines {
            args: &fixed,
            line: 0,
            invalid: 0,
        };
        assert_eq!(lines.record("hello\r").unwrap().partition_key(), "k");
        let random = args(&[]);
        let mut lines = Lines {
            args: &random,
            line: 0,
            invalid: 0,
        };
        let a = lines.record("a").unwrap();
        let b = lines.record("b").unwrap();
        assert_ne!(a.partition_key(), b.partition_key());
        assert_eq!(&a.data()[..], b"a");
    }
}
