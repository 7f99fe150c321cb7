//! Failed batches: how a record processor reports a failure without panicking, the policy
//! that gives up on a batch after a number of attempts, and the sinks that keep what was
//! given up on (see the crate documentation, "Failed records and dead-lettering").

use std::error::Error as StdError;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::lease::ExtendedSequenceNumber;
use crate::processor::KinesisClientRecord;

/// A boxed error, as a [`DeadLetterSink`] returns it.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What [`RecordProcessor::process_records`](crate::RecordProcessor::process_records)
/// returns.
pub type ProcessResult = Result<(), ProcessingError>;

/// A record processor could not process a batch, or some records of it.
///
/// Returned from [`RecordProcessor::process_records`](crate::RecordProcessor::process_records).
///
/// - With a [`DeadLetterPolicy`], the records it names (all of them with
///   [`ProcessingError::batch`]) are delivered again to the same processor after a
///   backoff, with [`ProcessRecordsInput::attempt`](crate::ProcessRecordsInput::attempt)
///   one higher; the others count as processed. The records still failing at the last
///   attempt go to the policy's sink and the shard is checkpointed past the batch.
///   Meanwhile [`Checkpointer::checkpoint`](crate::Checkpointer::checkpoint) covers only
///   the records before the first failed one.
/// - Without one (the default), the batch fails the shard consumer as a panic does: no
///   checkpoint of any record of the batch is taken any more, and after a backoff a new
///   processor resumes from the last checkpoint, for as long as the lease is held.
///
/// A processor can still checkpoint past a record it reports as failed with an explicit
/// position (`checkpoint_at`), or with `checkpoint()` before it returns: it should not.
#[derive(Clone, Debug)]
pub struct ProcessingError {
    error: String,
    records: Vec<FailedRecord>,
}

/// One record a processor could not process, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecord {
    /// The record's position (sequence number and sub-sequence number).
    pub position: ExtendedSequenceNumber,
    /// Why it failed, one line.
    pub error: String,
}

impl FailedRecord {
    /// A delivered record that failed, and why.
    pub fn new(record: &KinesisClientRecord, error: impl fmt::Display) -> Self {
        FailedRecord {
            position: record.position(),
            error: one_line(&error.to_string()),
        }
    }
}

impl ProcessingError {
    /// The whole batch failed (every record not yet processed in it).
    pub fn batch(error: impl fmt::Display) -> Self {
        ProcessingError {
            error: one_line(&error.to_string()),
            records: Vec::new(),
        }
    }

    /// These records of the batch failed; the others were processed. Records not in the
    /// batch are ignored; when none of them is, the whole batch counts as failed.
    pub fn records(records: impl IntoIterator<Item = FailedRecord>) -> Self {
        let records: Vec<FailedRecord> = records.into_iter().collect();
        let error = match records.as_slice() {
            [] => "the batch failed".to_owned(),
            [one] => format!("record {} failed: {}", one.position, one.error),
            [first, ..] => format!(
                "{} records failed, the first {}: {}",
                records.len(),
                first.position,
                first.error
            ),
        };
        ProcessingError { error, records }
    }

    /// The records named as failed; empty when the whole batch failed.
    pub fn failed_records(&self) -> &[FailedRecord] {
        &self.records
    }

    /// Whether the error names the whole batch rather than some records.
    pub fn is_whole_batch(&self) -> bool {
        self.records.is_empty()
    }

    /// The error of one record: its own when the processor named it, else the batch's.
    pub(crate) fn error_of(&self, position: &ExtendedSequenceNumber) -> &str {
        self.records
            .iter()
            .find(|failed| &failed.position == position)
            .map_or(self.error.as_str(), |failed| failed.error.as_str())
    }
}

impl fmt::Display for ProcessingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl StdError for ProcessingError {}

/// Errors read by people are one line.
fn one_line(text: &str) -> String {
    if text.contains(['\n', '\r']) {
        text.split(['\n', '\r'])
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        text.to_owned()
    }
}

/// One record given up on, with the error of its last attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterRecord {
    /// The record as it was delivered.
    pub record: KinesisClientRecord,
    /// Why its last attempt failed.
    pub error: String,
}

impl DeadLetterRecord {
    /// A record and its error.
    pub fn new(record: KinesisClientRecord, error: impl Into<String>) -> Self {
        DeadLetterRecord {
            record,
            error: error.into(),
        }
    }
}

/// The records of a batch that still failed after the policy's last attempt, handed to a
/// [`DeadLetterSink`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetterBatch {
    /// The application (the scheduler's application name).
    pub application: String,
    /// The stream the records were read from: its name (the name part of an ARN).
    pub stream: String,
    /// The shard they were read from.
    pub shard_id: String,
    /// The failed records, in shard order.
    pub records: Vec<DeadLetterRecord>,
    /// How many times the processor was given them.
    pub attempts: u32,
    /// The error of the last attempt.
    pub error: String,
    /// When the batch was given up on.
    pub dead_lettered_at: SystemTime,
}

impl DeadLetterBatch {
    /// An empty batch of a shard (for tests of sinks; the consumer makes the real ones).
    pub fn new(
        application: impl Into<String>,
        stream: impl Into<String>,
        shard_id: impl Into<String>,
    ) -> Self {
        DeadLetterBatch {
            application: application.into(),
            stream: stream.into(),
            shard_id: shard_id.into(),
            records: Vec::new(),
            attempts: 0,
            error: String::new(),
            dead_lettered_at: SystemTime::now(),
        }
    }

    /// One [`DeadLetterEnvelope`] per record, in shard order.
    pub fn envelopes(&self) -> impl Iterator<Item = DeadLetterEnvelope> + '_ {
        self.records
            .iter()
            .map(move |failed| DeadLetterEnvelope::new(self, failed))
    }
}

/// Keeps the records a [`DeadLetterPolicy`] gave up on. Shared by every shard of a
/// scheduler: `dead_letter` may be called for several shards at once.
///
/// Return `Ok` only once the batch is stored durably: the shard is then checkpointed past
/// it. On an error the consumer calls again, with the same batch, after a backoff, and
/// checkpoints nothing past it meanwhile (for as long as the lease is held).
#[async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Stores a batch of failed records.
    async fn dead_letter(&self, batch: &DeadLetterBatch) -> Result<(), BoxError>;
}

/// When to give up on a failing batch, and where its records go: after `max_attempts`
/// failed attempts of the same batch, its failed records are handed to the sink and the
/// shard is checkpointed past the batch.
///
/// Without a policy (the default) a failed batch is read again from the last checkpoint
/// after a backoff, for as long as the lease is held. The copy of each batch kept for the
/// retries costs about as much as the records' `String`s (tenths of a microsecond per
/// record). AWS Lambda's Kinesis event source mapping is the nearest AWS setting:
/// `MaximumRetryAttempts` (retries, so `max_attempts` is it plus one) with an
/// `OnFailure` destination; the Java KCL has none.
#[derive(Clone)]
pub struct DeadLetterPolicy {
    max_attempts: u32,
    sink: Arc<dyn DeadLetterSink>,
}

impl fmt::Debug for DeadLetterPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterPolicy")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl DeadLetterPolicy {
    /// Gives a batch up to `sink` after `max_attempts` failed attempts (at least 1,
    /// checked when the scheduler is built).
    pub fn new(max_attempts: u32, sink: impl DeadLetterSink) -> Self {
        Self::with_sink(max_attempts, Arc::new(sink))
    }

    /// As [`new`](Self::new), with a sink shared with others.
    pub fn with_sink(max_attempts: u32, sink: Arc<dyn DeadLetterSink>) -> Self {
        DeadLetterPolicy { max_attempts, sink }
    }

    /// Attempts of a batch before it is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The sink.
    pub fn sink(&self) -> &Arc<dyn DeadLetterSink> {
        &self.sink
    }
}

/// One dead-lettered record as the built-in sinks write it: a JSON object (one line in
/// [`JsonLinesFileSink`], the data of one Kinesis record in `kinesis-dead-letter`'s
/// stream sink).
///
/// ```json
/// {"application":"orders-indexer","stream":"orders","shard_id":"shardId-000000000001",
///  "sequence_number":"4968...","sub_sequence_number":0,"partition_key":"customer-7",
///  "approximate_arrival_timestamp_ms":1764950400000,"aggregated":false,
///  "data":"bm90IGpzb24=","data_size":8,"error":"not JSON: expected value at line 1 column 1",
///  "attempts":3,"dead_lettered_at_ms":1764950403100}
/// ```
///
/// `data` is the record's data in standard base64; it is absent (`null`) when the sink
/// had to leave it out (`data_omitted: true`, see [`without_data`](Self::without_data)).
/// `explicit_hash_key` and `approximate_arrival_timestamp_ms` are left out when unknown.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct DeadLetterEnvelope {
    /// The consuming application.
    pub application: String,
    /// The stream the record was read from.
    pub stream: String,
    /// Its shard.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
    /// Its sub-sequence number (its place in a KPL aggregate; 0 for a plain record).
    pub sub_sequence_number: u64,
    /// Its partition key.
    pub partition_key: String,
    /// Its explicit hash key, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explicit_hash_key: Option<String>,
    /// When Kinesis received it, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximate_arrival_timestamp_ms: Option<u64>,
    /// Whether it came out of a KPL aggregate.
    pub aggregated: bool,
    /// Its data, base64 (standard alphabet, padded); `None` when left out.
    pub data: Option<String>,
    /// The size of its data in bytes.
    pub data_size: usize,
    /// Whether the data was left out (too large for the sink).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_omitted: bool,
    /// Why its last attempt failed.
    pub error: String,
    /// How many times the processor was given it.
    pub attempts: u32,
    /// When it was given up on, milliseconds since the Unix epoch.
    pub dead_lettered_at_ms: u64,
}

fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The envelope could not be read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not a JSON envelope.
    #[error("not a dead-letter envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// Its `data` is not base64.
    #[error("dead-letter envelope data is not base64: {0}")]
    Base64(String),
}

impl DeadLetterEnvelope {
    /// The envelope of one record of a batch.
    pub fn new(batch: &DeadLetterBatch, failed: &DeadLetterRecord) -> Self {
        let record = &failed.record;
        DeadLetterEnvelope {
            application: batch.application.clone(),
            stream: batch.stream.clone(),
            shard_id: batch.shard_id.clone(),
            sequence_number: record.sequence_number.to_string(),
            sub_sequence_number: record.sub_sequence_number,
            partition_key: record.partition_key.to_string(),
            explicit_hash_key: record.explicit_hash_key.clone(),
            approximate_arrival_timestamp_ms: record
                .approximate_arrival_timestamp
                .map(epoch_millis),
            aggregated: record.aggregated,
            data: Some(base64_simd::STANDARD.encode_to_string(&record.data)),
            data_size: record.data.len(),
            data_omitted: false,
            error: failed.error.clone(),
            attempts: batch.attempts,
            dead_lettered_at_ms: epoch_millis(batch.dead_lettered_at),
        }
    }

    /// The same envelope without the data (`data_omitted: true`): what a sink with a size
    /// limit stores when the whole envelope would exceed it. The record can still be read
    /// from its stream by its sequence number while the stream retains it.
    pub fn without_data(mut self) -> Self {
        self.data = None;
        self.data_omitted = true;
        self
    }

    /// The envelope as JSON (one line: JSON strings escape line breaks).
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, numbers and booleans cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an envelope from its JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(serde_json::from_slice(json)?)
    }

    /// The record's data, decoded; `None` when it was left out.
    pub fn decoded_data(&self) -> Result<Option<Vec<u8>>, EnvelopeError> {
        self.data
            .as_deref()
            .map(|data| {
                base64_simd::STANDARD
                    .decode_to_vec(data)
                    .map_err(|e| EnvelopeError::Base64(e.to_string()))
            })
            .transpose()
    }
}

/// A [`DeadLetterSink`] appending one [`DeadLetterEnvelope`] per record, one JSON line
/// each, to a file (`kinesis consume --dead-letter-file`). Each batch is written at once
/// and synced to disk (`fsync`) before the shard is checkpointed past it.
#[derive(Clone, Debug)]
pub struct JsonLinesFileSink {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl JsonLinesFileSink {
    /// Opens `path` for appending, creating it if missing.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_owned();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(JsonLinesFileSink {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A write to the dead-letter file failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to dead-letter file {path}: {source}")]
pub struct FileSinkError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

#[async_trait]
impl DeadLetterSink for JsonLinesFileSink {
    async fn dead_letter(&self, batch: &DeadLetterBatch) -> Result<(), BoxError> {
        let mut lines = Vec::new();
        for envelope in batch.envelopes() {
            lines.extend_from_slice(envelope.to_json().as_bytes());
            lines.push(b'\n');
        }
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            file.write_all(&lines)?;
            file.sync_data()
        })
        .await
        .map_err(|join| std::io::Error::other(join.to_string()))
        .and_then(|result| result);
        written.map_err(|source| {
            Box::new(FileSinkError {
                path: self.path.clone(),
                source,
            }) as BoxError
        })
    }
}

/// The panic message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(not a string)".to_owned()
    }
}

/// The delays between attempts of a failing batch, and between calls of a failing sink.
pub(crate) fn retry_delays(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    crate::retrieval::backoff(min, max)
}

// Shared between the shard consumers' tasks: a change that loses `Send` or `Sync` must
// fail to compile here.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ProcessingError>();
    send_sync::<DeadLetterPolicy>();
    send_sync::<DeadLetterBatch>();
    send_sync::<JsonLinesFileSink>();
    send_sync::<EnvelopeError>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: &str, data: &'static [u8]) -> KinesisClientRecord {
        KinesisClientRecord::new(seq, "key", bytes::Bytes::from_static(data))
    }

    #[test]
    fn errors_are_one_line_and_name_their_records() {
        let error = ProcessingError::batch("first\nsecond\r\n third");
        assert_eq!(error.to_string(), "first second third");
        assert!(error.is_whole_batch());

        let a = record("1", b"a");
        let b = record("2", b"b");
        let error = ProcessingError::records([
            FailedRecord::new(&a, "bad a"),
            FailedRecord::new(&b, "bad b"),
        ]);
        assert_eq!(error.to_string(), "2 records failed, the first 1/0: bad a");
        assert_eq!(error.error_of(&b.position()), "bad b");
        assert_eq!(
            error.error_of(&record("3", b"c").position()),
            error.to_string()
        );
    }

    #[test]
    fn envelopes_round_trip_with_their_metadata() {
        let mut batch = DeadLetterBatch::new("app", "orders", "shardId-1");
        batch.attempts = 3;
        let mut poison = record("49000", b"\xffnot json");
        poison.sub_sequence_number = 4;
        poison.aggregated = true;
        poison.approximate_arrival_timestamp =
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_950_400_123));
        batch
            .records
            .push(DeadLetterRecord::new(poison, "not JSON"));
        let envelope = batch.envelopes().next().unwrap();
        let json = envelope.to_json();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["shard_id"], "shardId-1");
        assert_eq!(value["sequence_number"], "49000");
        assert_eq!(value["sub_sequence_number"], 4);
        assert_eq!(value["attempts"], 3);
        assert_eq!(value["error"], "not JSON");
        assert_eq!(
            value["approximate_arrival_timestamp_ms"],
            1_764_950_400_123_u64
        );
        assert!(value.get("explicit_hash_key").is_none());
        let back = DeadLetterEnvelope::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, envelope);
        assert_eq!(
            back.decoded_data().unwrap().unwrap(),
            b"\xffnot json".to_vec()
        );
        let bare = back.without_data();
        assert_eq!(bare.decoded_data().unwrap(), None);
        assert!(bare.to_json().contains("\"data_omitted\":true"));
    }

    #[tokio::test]
    async fn the_file_sink_appends_one_line_per_record() {
        let dir = std::env::temp_dir().join(format!("kcl-dead-letter-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dead.jsonl");
        let sink = JsonLinesFileSink::open(&path).unwrap();
        let mut batch = DeadLetterBatch::new("app", "orders", "shardId-1");
        batch.records = vec![
            DeadLetterRecord::new(record("1", b"x"), "e1"),
            DeadLetterRecord::new(record("2", b"y"), "e2"),
        ];
        sink.dead_letter(&batch).await.unwrap();
        sink.dead_letter(&batch).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<DeadLetterEnvelope> = text
            .lines()
            .map(|line| DeadLetterEnvelope::from_json(line.as_bytes()).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].sequence_number, "2");
        assert_eq!(lines[1].error, "e2");
        std::fs::remove_dir_all(&dir).unwrap();

        // A sink whose file cannot be written reports it.
        let full = JsonLinesFileSink {
            path: "/dev/full".into(),
            file: Arc::new(Mutex::new(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open("/dev/full")
                    .unwrap(),
            )),
        };
        let error = full.dead_letter(&batch).await.unwrap_err();
        assert!(error
            .to_string()
            .starts_with("cannot write to dead-letter file /dev/full"));
    }
}
