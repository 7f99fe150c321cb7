//! What the producer reports for each user record: where it landed, or why it failed,
//! and every attempt it took.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use kinesis_errors::ErrorKind;

use crate::Record;

/// A user record that reached the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
pub struct AttemptError {
    /// Error code: Kinesis's (`ProvisionedThroughputExceededException`,
    /// `InternalFailure`, `ResourceNotFoundException`, ...), or the producer's own
    /// (`Timeout`, `Dispatch`, `WrongShard`, `MissingResult`).
    pub code: String,
    /// Human-readable detail: the service's message, or what failed on the way.
    pub message: String,
    kind: ErrorKind,
}

/// The producer's own attempt error codes and their kinds; any other code is Kinesis's,
/// sorted by [`ErrorKind::from_code`].
const OWN_CODES: &[(&str, ErrorKind)] = &[
    ("Timeout", ErrorKind::TimedOut),
    ("Dispatch", ErrorKind::Unreachable),
    ("Construction", ErrorKind::InvalidRequest),
    ("ResponseError", ErrorKind::Other),
    ("WrongShard", ErrorKind::Other),
    ("MissingResult", ErrorKind::Other),
];

impl AttemptError {
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Arc<Self> {
        let code = code.into();
        let kind = OWN_CODES
            .iter()
            .find(|(own, _)| *own == code)
            .map_or_else(|| ErrorKind::from_code(&code), |(_, kind)| *kind);
        Self::with_kind(code, message, kind)
    }

    pub(crate) fn with_kind(
        code: impl Into<String>,
        message: impl Into<String>,
        kind: ErrorKind,
    ) -> Arc<Self> {
        Arc::new(AttemptError {
            code: code.into(),
            message: message.into(),
            kind,
        })
    }

    /// What kind of failure it was, by the rule the consumer uses too
    /// ([`ErrorKind::from_code`] for Kinesis's codes; `Timeout` is
    /// [`TimedOut`](ErrorKind::TimedOut), `Dispatch` is
    /// [`Unreachable`](ErrorKind::Unreachable) or, when no credentials could be loaded,
    /// [`AccessDenied`](ErrorKind::AccessDenied)).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl std::error::Error for AttemptError {}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.starts_with(self.code.as_str()) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// Why a user record did not reach the stream.
///
/// A record that fails for good comes back with the error ([`RecordError::record`],
/// [`RecordError::into_record`]), so the caller can send it somewhere else (a dead-letter
/// stream, a file) without keeping a copy of every record it sends. Its data is a slice
/// of the bytes the producer sent (no copy; it keeps the aggregate it travelled in, at
/// most 1 MiB, alive while held).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Its time to live (`record_ttl`) passed before any attempt succeeded.
    #[error("record expired after {} attempt(s){}", .attempts.len(), last_error(.attempts))]
    #[non_exhaustive]
    Expired {
        /// Every attempt made, with its error.
        attempts: Vec<Attempt>,
        /// The record, as it was sent: partition key, data, and the explicit hash key
        /// the caller gave, if any.
        record: Box<Record>,
    },
    /// It was throttled and the producer is configured with `fail_if_throttled`.
    #[error("record throttled{}", last_error(.attempts))]
    #[non_exhaustive]
    Throttled {
        /// Every attempt made, with its error.
        attempts: Vec<Attempt>,
        /// The record, as it was sent.
        record: Box<Record>,
    },
    /// Kinesis refused it with an error that retrying cannot fix (the stream does not
    /// exist, access or its KMS key is denied, the request is invalid): it fails at once
    /// unless the producer is configured with `retry_permanent_errors`.
    #[error("record rejected{}", last_error(.attempts))]
    #[non_exhaustive]
    Rejected {
        /// Every attempt made, the rejected one last.
        attempts: Vec<Attempt>,
        /// The record, as it was sent.
        record: Box<Record>,
    },
    /// The producer's pipeline stopped before the record completed (a bug, or a panic
    /// in the runtime). The record is not given back: it went with the pipeline.
    #[error("the producer stopped before the record completed")]
    Abandoned,
}

impl RecordError {
    /// Every attempt made for the record.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            RecordError::Expired { attempts, .. }
            | RecordError::Throttled { attempts, .. }
            | RecordError::Rejected { attempts, .. } => attempts,
            RecordError::Abandoned => &[],
        }
    }

    /// The record that failed (all but [`Abandoned`](RecordError::Abandoned)).
    pub fn record(&self) -> Option<&Record> {
        match self {
            RecordError::Expired { record, .. }
            | RecordError::Throttled { record, .. }
            | RecordError::Rejected { record, .. } => Some(record),
            RecordError::Abandoned => None,
        }
    }

    /// The record that failed, taken out of the error (all but
    /// [`Abandoned`](RecordError::Abandoned)).
    pub fn into_record(self) -> Option<Record> {
        match self {
            RecordError::Expired { record, .. }
            | RecordError::Throttled { record, .. }
            | RecordError::Rejected { record, .. } => Some(*record),
            RecordError::Abandoned => None,
        }
    }
}

fn last_error(attempts: &[Attempt]) -> String {
    match attempts.iter().rev().find_map(|a| a.error.as_ref()) {
        Some(e) => format!("; last error {e}"),
        None => String::new(),
    }
}

/// Where the user records of one Kinesis record landed, shared by their receipts (a
/// record with attempts of its own, made in earlier Kinesis records, gets its own).
#[derive(Debug)]
pub(crate) struct Delivered {
    pub shard_id: Arc<str>,
    pub sequence_number: Arc<str>,
    pub aggregated: bool,
    pub attempts: Arc<[Attempt]>,
}

/// How a user record completed.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It reached the stream at this sub-sequence number of a Kinesis record.
    Delivered(Arc<Delivered>, u32),
    Failed(RecordError),
}

/// What a user record's receipt waits for (16 bytes: a receipt's share of the memory
/// of an outstanding record is small). The waker of a receipt that waits is kept beside
/// the slots of its chunk, not in its slot: few receipts of a chunk are polled at once.
#[derive(Debug)]
enum Slot {
    /// Not completed yet.
    Waiting,
    /// Completed, not taken by the receipt yet.
    Delivered(Arc<Delivered>, u32),
    Failed(Box<RecordError>),
    /// Taken by the receipt, or the receipt was dropped: nobody will read it.
    Closed,
}

impl Slot {
    /// The outcome of a completed slot, as the receipt gives it.
    fn take(&mut self) -> Option<Result<RecordResult, RecordError>> {
        match std::mem::replace(self, Slot::Closed) {
            Slot::Delivered(landed, sub_sequence_number) => Some(Ok(RecordResult {
                shard_id: landed.shard_id.clone(),
                sequence_number: landed.sequence_number.clone(),
                sub_sequence_number: u64::from(sub_sequence_number),
                aggregated: landed.aggregated,
                attempts: landed.attempts.clone(),
            })),
            Slot::Failed(error) => Some(Err(*error)),
            Slot::Closed => Some(Err(RecordError::Abandoned)),
            Slot::Waiting => {
                *self = Slot::Waiting;
                None
            }
        }
    }
}

/// The slots of a chunk and the wakers of its receipts that wait.
#[derive(Debug)]
struct ChunkState {
    slots: [Slot; SLOTS_PER_CHUNK],
    /// Slot index and waker of each receipt that was polled before its outcome came.
    wakers: Vec<(u8, Waker)>,
}

impl ChunkState {
    fn take_waker(&mut self, index: u8) -> Option<Waker> {
        let at = self.wakers.iter().position(|(i, _)| *i == index)?;
        Some(self.wakers.swap_remove(at).1)
    }
}

/// Receipts allocated together: [`SLOTS_PER_CHUNK`] consecutive records share one
/// allocation and one lock instead of a channel each. A chunk is freed once every
/// receipt and every record of it is gone.
#[derive(Debug)]
pub(crate) struct ReceiptChunk {
    state: Mutex<ChunkState>,
}

/// Records whose receipts share one allocation.
pub(crate) const SLOTS_PER_CHUNK: usize = 64;

impl ReceiptChunk {
    fn new() -> Arc<Self> {
        Arc::new(ReceiptChunk {
            state: Mutex::new(ChunkState {
                slots: std::array::from_fn(|_| Slot::Waiting),
                wakers: Vec::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, ChunkState> {
        // A panic while the chunk is locked cannot leave it half-written: every write
        // is one assignment, push or removal.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Hands out receipt slots, a chunk at a time.
#[derive(Debug)]
pub(crate) struct ReceiptSlots {
    chunk: Arc<ReceiptChunk>,
    next: usize,
}

impl Default for ReceiptSlots {
    fn default() -> Self {
        ReceiptSlots {
            chunk: ReceiptChunk::new(),
            next: 0,
        }
    }
}

impl ReceiptSlots {
    /// A new record's receipt, and where its outcome goes.
    pub fn next(&mut self) -> (RecordReceipt, Completion) {
        if self.next == SLOTS_PER_CHUNK {
            self.chunk = ReceiptChunk::new();
            self.next = 0;
        }
        // Below SLOTS_PER_CHUNK (64).
        let index = self.next as u8;
        self.next += 1;
        (
            RecordReceipt {
                chunk: self.chunk.clone(),
                index,
            },
            Completion {
                chunk: Some(self.chunk.clone()),
                index,
            },
        )
    }
}

/// Where a user record's outcome goes: its receipt's slot. Dropped without
/// [`complete`](Self::complete) (the pipeline stopped), the receipt resolves to
/// [`RecordError::Abandoned`].
#[derive(Debug)]
pub(crate) struct Completion {
    /// `None` once completed.
    chunk: Option<Arc<ReceiptChunk>>,
    index: u8,
}

impl Completion {
    /// Hands the outcome to the receipt (dropped if the receipt is gone).
    pub fn complete(mut self, outcome: Outcome) {
        if let Some(chunk) = self.chunk.take() {
            Self::store(&chunk, self.index, outcome);
        }
    }

    /// Its chunk and slot index, for a record that keeps them in fewer bytes
    /// ([`Carried`](crate::pending::Carried)); [`from_parts`](Self::from_parts) gives it
    /// back.
    pub fn into_parts(mut self) -> (Option<Arc<ReceiptChunk>>, u8) {
        (self.chunk.take(), self.index)
    }

    pub fn from_parts(chunk: Arc<ReceiptChunk>, index: u8) -> Self {
        Completion {
            chunk: Some(chunk),
            index,
        }
    }

    fn store(chunk: &ReceiptChunk, index: u8, outcome: Outcome) {
        let waker = {
            let mut state = chunk.state();
            let slot = &mut state.slots[usize::from(index)];
            match slot {
                Slot::Waiting => {
                    *slot = match outcome {
                        Outcome::Delivered(landed, sub) => Slot::Delivered(landed, sub),
                        Outcome::Failed(error) => Slot::Failed(Box::new(error)),
                    };
                    state.take_waker(index)
                }
                // The receipt was dropped (or, impossibly, completed twice).
                _ => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(chunk) = self.chunk.take() {
            Self::store(&chunk, self.index, Outcome::Failed(RecordError::Abandoned));
        }
    }
}

/// A future that resolves when a user record has reached the stream or failed.
///
/// Dropping it does not cancel the record: the producer still sends it.
#[must_use = "a receipt tells whether the record reached the stream"]
pub struct RecordReceipt {
    chunk: Arc<ReceiptChunk>,
    index: u8,
}

impl std::fmt::Debug for RecordReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.chunk.state().slots[usize::from(self.index)] {
            Slot::Waiting => "waiting",
            Slot::Delivered(..) | Slot::Failed(_) => "done",
            Slot::Closed => "taken",
        };
        f.debug_struct("RecordReceipt")
            .field("state", &state)
            .finish()
    }
}

impl Future for RecordReceipt {
    type Output = Result<RecordResult, RecordError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = self.index;
        let mut state = self.chunk.state();
        if let Some(outcome) = state.slots[usize::from(index)].take() {
            return Poll::Ready(outcome);
        }
        match state.wakers.iter_mut().find(|(i, _)| *i == index) {
            Some((_, waker)) if waker.will_wake(cx.waker()) => {}
            Some((_, waker)) => *waker = cx.waker().clone(),
            None => state.wakers.push((index, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for RecordReceipt {
    /// Frees the outcome early: nobody will read it.
    fn drop(&mut self) {
        let (slot, waker) = {
            let mut state = self.chunk.state();
            let slot = std::mem::replace(&mut state.slots[usize::from(self.index)], Slot::Closed);
            (slot, state.take_waker(self.index))
        };
        // Dropped outside the lock: nothing they drop can come back to this chunk.
        drop((slot, waker));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered() -> Arc<Delivered> {
        Arc::new(Delivered {
            shard_id: Arc::from("shardId-000000000000"),
            sequence_number: Arc::from("1"),
            aggregated: true,
            attempts: Arc::from(Vec::new()),
        })
    }

    fn ok(sub_sequence_number: u32) -> Outcome {
        Outcome::Delivered(delivered(), sub_sequence_number)
    }

    #[test]
    fn a_slot_is_small() {
        assert!(
            std::mem::size_of::<Slot>() <= 16,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[tokio::test]
    async fn receipts_resolve_with_their_own_outcome() {
        let mut slots = ReceiptSlots::default();
        let pairs: Vec<_> = (0..3 * SLOTS_PER_CHUNK).map(|_| slots.next()).collect();
        let (receipts, completions): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        let waiting = tokio::spawn(async move {
            let mut subs = Vec::new();
            for receipt in receipts {
                subs.push(receipt.await.expect("completed").sub_sequence_number);
            }
            subs
        });
        tokio::task::yield_now().await;
        for (i, completion) in completions.into_iter().enumerate().rev() {
            completion.complete(ok(i as u32));
        }
        let subs = waiting.await.expect("task");
        assert_eq!(subs, (0..3 * SLOTS_PER_CHUNK as u64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_record_dropped_unfinished_abandons_its_receipt() {
        let mut slots = ReceiptSlots::default();
        let (receipt, completion) = slots.next();
        drop(completion);
        assert_eq!(receipt.await, Err(RecordError::Abandoned));
    }

    #[tokio::test]
    async fn a_dropped_receipt_frees_its_outcome() {
        let mut slots = ReceiptSlots::default();
        let (receipt, completion) = slots.next();
        let landed = delivered();
        completion.complete(Outcome::Delivered(landed.clone(), 0));
        assert_eq!(Arc::strong_count(&landed), 2, "held by the slot");
        drop(receipt);
        assert_eq!(Arc::strong_count(&landed), 1, "freed with the receipt");
        // Completing after the receipt is gone keeps nothing either.
        let (receipt, completion) = slots.next();
        drop(receipt);
        completion.complete(ok(1));
        assert!(matches!(slots.chunk.state().slots[1], Slot::Closed));
    }
}
