//! What the producer reports for each user record: where it landed, or why it failed,
//! and every attempt it took.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

/// A user record that reached the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordResult {
    /// Shard the record landed on.
    pub shard_id: Arc<str>,
    /// Sequence number of the Kinesis record that carries it (shared by the user records
    /// of one aggregate).
    pub sequence_number: Arc<str>,
    /// Position of the user record inside an aggregate (0 when sent alone). Consumers
    /// that deaggregate see it as the sub-sequence number.
    pub sub_sequence_number: u64,
    /// Whether it was sent inside a KPL aggregate with other user records.
    pub aggregated: bool,
    /// Every attempt to put it, the successful one last. Shared by the user records
    /// that travelled together (one list per Kinesis record, not one per user record).
    pub attempts: Arc<[Attempt]>,
}

/// One PutRecords attempt that carried a user record (as the KPL's `Attempt`: start,
/// duration, outcome).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// When the PutRecords call started (wall clock).
    pub started: SystemTime,
    /// How long the PutRecords call took.
    pub duration: Duration,
    /// Why the attempt failed; `None` if it succeeded. Shared by every user record the
    /// failed call carried, so a failure costs one allocation, not one per record.
    pub error: Option<Arc<AttemptError>>,
}

impl Attempt {
    /// Whether the attempt succeeded.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptError {
    /// Error code: Kinesis's (`ProvisionedThroughputExceededException`,
    /// `InternalFailure`, `ResourceNotFoundException`, ...), or the producer's own
    /// (`Timeout`, `Dispatch`, `WrongShard`, `MissingResult`).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

impl AttemptError {
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Arc<Self> {
        Arc::new(AttemptError {
            code: code.into(),
            message: message.into(),
        })
    }
}

/// Why a user record did not reach the stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Its time to live (`record_ttl`) passed before any attempt succeeded.
    #[error("record expired after {} attempt(s){}", .attempts.len(), last_error(.attempts))]
    Expired {
        /// Every attempt made, with its error.
        attempts: Vec<Attempt>,
    },
    /// It was throttled and the producer is configured with `fail_if_throttled`.
    #[error("record throttled{}", last_error(.attempts))]
    Throttled {
        /// Every attempt made, with its error.
        attempts: Vec<Attempt>,
    },
    /// Kinesis refused it with an error that retrying cannot fix (the stream does not
    /// exist, access or its KMS key is denied, the request is invalid): it fails at once
    /// unless the producer is configured with `retry_permanent_errors`.
    #[error("record rejected{}", last_error(.attempts))]
    Rejected {
        /// Every attempt made, the rejected one last.
        attempts: Vec<Attempt>,
    },
    /// The producer's pipeline stopped before the record completed (a bug, or a panic
    /// in the runtime).
    #[error("the producer stopped before the record completed")]
    Abandoned,
}

impl RecordError {
    /// Every attempt made for the record.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            RecordError::Expired { attempts }
            | RecordError::Throttled { attempts }
            | RecordError::Rejected { attempts } => attempts,
            RecordError::Abandoned => &[],
        }
    }
}

fn last_error(attempts: &[Attempt]) -> String {
    match attempts.iter().rev().find_map(|a| a.error.as_ref()) {
        Some(e) => format!("; last error {}: {}", e.code, e.message),
        None => String::new(),
    }
}

/// A future that resolves when a user record has reached the stream or failed.
///
/// Dropping it does not cancel the record: the producer still sends it.
#[derive(Debug)]
#[must_use = "a receipt tells whether the record reached the stream"]
pub struct RecordReceipt {
    rx: oneshot::Receiver<Result<RecordResult, RecordError>>,
}

impl RecordReceipt {
    pub(crate) fn new(rx: oneshot::Receiver<Result<RecordResult, RecordError>>) -> Self {
        RecordReceipt { rx }
    }
}

impl Future for RecordReceipt {
    type Output = Result<RecordResult, RecordError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(RecordError::Abandoned)))
    }
}
