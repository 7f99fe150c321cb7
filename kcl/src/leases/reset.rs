//! Replay: moving the checkpoint of every lease of an application at once, to the oldest
//! record, to the newest, or to the first record at or after a time (what `kinesis leases
//! reset --all` does).
//!
//! ```no_run
//! use kinesis_consumer::leases::reset::{LeaseReset, ResetTarget};
//! use kinesis_consumer::leases::DynamoDbLeaseStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), "order-indexer");
//! let target: ResetTarget = "at-timestamp=2026-11-24T08:00:00Z".parse()?;
//! let reset = LeaseReset::new(&store, target)
//!     .stream(aws_sdk_kinesis::Client::new(&config), "orders");
//! // What would change, without changing anything:
//! let plan = reset.plan().await?;
//! for lease in plan.leases() {
//!     println!("{}: {} -> {:?} ({})", lease.shard_id(), lease.checkpoint(), lease.new_checkpoint(), lease.reason());
//! }
//! // Do it: one conditional write per lease, parents before children.
//! for outcome in plan.apply(&store).await {
//!     if let Err(error) = &outcome.result {
//!         eprintln!("{}: {error}", outcome.shard_id);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # What a reset to a time writes
//!
//! A checkpoint is the last record processed, and a worker resumes after it. So to resume
//! at the first record at or after the time, *R*, the checkpoint written is the record just
//! before *R* in the shard, with the sub-sequence number of its last user record when it is
//! a KPL aggregate: a checkpoint the Java KCL reads the same way (it reads
//! `AT_SEQUENCE_NUMBER` and drops what is at or before the checkpoint, as this library
//! does). When *R* is the oldest record the shard still holds, the checkpoint is
//! `TRIM_HORIZON`. The record before *R* is found by reading the shard from a little
//! before the time (`AT_TIMESTAMP`), looking twice as far back each time nothing is there,
//! and from `TRIM_HORIZON` once that is as far back as the shard goes: a few calls, and at
//! most twice the data between that record and the time.
//!
//! The Java KCL's `AT_TIMESTAMP` checkpoint is never written: it means "the application's
//! configured initial timestamp", which the lease table does not hold, so it cannot carry
//! an arbitrary time.
//!
//! Per shard ([`ResetReason`]):
//!
//! - a shard with a record at or after the time: the record before it (or `TRIM_HORIZON`),
//!   also when its lease is finished (`SHARD_END`), so a parent shard whose records before
//!   its split are after the time is read again, and its children after it;
//! - an open shard with no record at or after the time: its newest record (nothing old is
//!   delivered again, every record written after the reset is delivered), or
//!   `TRIM_HORIZON` when it holds none;
//! - a closed shard with no record at or after the time: unchanged if finished, else its
//!   last record (the worker then sees the shard end at once and the processor
//!   checkpoints `SHARD_END`);
//! - a shard no longer in the stream: unchanged.
//!
//! Parents before children: a lease whose checkpoint becomes a sequence number does not
//! wait for its parents, so when one of its parents is read again (which takes arrival
//! times out of order across a reshard, as Kinesis only approximates them), it is set to
//! `TRIM_HORIZON` instead, and waits for them. Leases are written parents first.
//!
//! # With workers running
//!
//! Each lease is written with one conditional write on its counter and owner, as any
//! checkpoint, keeping its owner. The worker holding it sees, at its next renewal or
//! checkpoint, a checkpoint it did not write, and loses the lease (its processor gets
//! `lease_lost`); the lease is then taken again and read from the new checkpoint. A write
//! whose condition fails (a renewal or checkpoint came in between) reads the lease again
//! and decides again; after [`LeaseReset::attempts`] failed conditions the lease is
//! reported as failed ([`LeaseStoreError::Contended`]), never skipped. Records the worker
//! delivered between the write and the loss of the lease are delivered again (at least
//! once). Leases created during the reset (new shards) keep their initial position.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;

use super::store::{CheckpointUpdate, LeaseStore, LeaseStoreError};
use crate::error::{ErrorKind, ServiceError};
use crate::lease::{ExtendedSequenceNumber, Lease, SequencePosition};
use crate::stream::StreamRef;

/// Where [`LeaseReset`] moves every lease's checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTarget {
    /// The oldest record of every shard (`TRIM_HORIZON`, finished leases included: the
    /// whole retained stream is read again, parents before children).
    TrimHorizon,
    /// After the newest record of every shard when its worker starts reading (the `LATEST`
    /// sentinel on every unfinished lease, as a one-shard reset to `latest`): records
    /// written between the reset and that start are not delivered. `AtTimestamp(now)`
    /// delivers them.
    Latest,
    /// The first record at or after this time, in every shard (the time must not be in
    /// the future).
    AtTimestamp(SystemTime),
}

impl ResetTarget {
    /// Parses `trim-horizon`, `latest` or `at-timestamp=<time>`, where the time is RFC 3339
    /// (`2026-11-24T08:00:00Z`, `2026-11-24T09:00:00.250+01:00`) or seconds since the Unix
    /// epoch (`1795507200`, `1795507200.25`). `_` may replace `-`, and case does not
    /// matter in the names.
    pub fn parse(value: &str) -> Result<Self, ResetError> {
        let invalid = || ResetError::InvalidTarget(value.to_owned());
        let (kind, argument) = match value.split_once('=') {
            Some((kind, argument)) => (kind, Some(argument.trim())),
            None => (value, None),
        };
        match (
            kind.trim().to_ascii_lowercase().replace('_', "-").as_str(),
            argument,
        ) {
            ("trim-horizon", None) => Ok(ResetTarget::TrimHorizon),
            ("latest", None) => Ok(ResetTarget::Latest),
            ("at-timestamp", Some(time)) => parse_time(time)
                .map(ResetTarget::AtTimestamp)
                .ok_or_else(invalid),
            _ => Err(invalid()),
        }
    }
}

impl FromStr for ResetTarget {
    type Err = ResetError;

    fn from_str(value: &str) -> Result<Self, ResetError> {
        ResetTarget::parse(value)
    }
}

impl fmt::Display for ResetTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetTarget::TrimHorizon => f.write_str("trim-horizon"),
            ResetTarget::Latest => f.write_str("latest"),
            ResetTarget::AtTimestamp(time) => write!(f, "at-timestamp={}", format_time(*time)),
        }
    }
}

/// An RFC 3339 time (any offset) or seconds since the epoch (with up to nine decimals).
fn parse_time(value: &str) -> Option<SystemTime> {
    if let Some(first) = value.bytes().next() {
        if first.is_ascii_digit() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let (seconds, fraction) = value.split_once('.').unwrap_or((value, ""));
            if fraction.len() > 9 || (value.contains('.') && fraction.is_empty()) {
                return None;
            }
            let seconds: u64 = seconds.parse().ok()?;
            let nanos: u32 = if fraction.is_empty() {
                0
            } else {
                format!("{fraction:0<9}").parse().ok()?
            };
            return SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos));
        }
    }
    let time = DateTime::from_str(value, DateTimeFormat::DateTimeWithOffset).ok()?;
    SystemTime::try_from(time).ok()
}

/// RFC 3339 in UTC, with milliseconds when there are any.
fn format_time(time: SystemTime) -> String {
    DateTime::from(time)
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{time:?}"))
}

/// Why a reset failed, as a whole or for one lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    /// The target could not be parsed.
    #[error(
        "reset target {0:?}: expected trim-horizon, latest or at-timestamp=<RFC 3339 or epoch seconds>"
    )]
    InvalidTarget(String),
    /// A reset to a time needs the stream, to find each shard's record at that time.
    #[error("a reset to a time needs the stream (LeaseReset::stream)")]
    StreamRequired,
    /// The time is in the future: no record at or after it exists yet.
    #[error("{0} is in the future: no record at or after it exists yet (reset to latest instead)")]
    FutureTimestamp(String),
    /// A lease table call failed.
    #[error(transparent)]
    Store(#[from] LeaseStoreError),
    /// The stream's shards could not be listed.
    #[error("stream {stream}")]
    Stream {
        /// The stream, as given.
        stream: String,
        /// The failed call.
        #[source]
        error: ServiceError,
    },
    /// A shard could not be read.
    #[error("reading shard {shard}")]
    Read {
        /// The shard.
        shard: String,
        /// The failed call.
        #[source]
        error: ServiceError,
    },
    /// The lease was deleted between the plan and its write.
    #[error("lease {0} was deleted during the reset")]
    Deleted(String),
}

/// What a shard holds around the time of a reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardAtTime {
    /// The shard has a record at or after the time; `previous` is the record just before
    /// it, as a checkpoint (`None`: that record is the oldest the shard holds).
    RecordsFrom {
        /// The record before the first one at or after the time.
        previous: Option<ExtendedSequenceNumber>,
    },
    /// The shard has no record at or after the time.
    NoRecordsFrom {
        /// Its newest record, as a checkpoint (`None`: it holds no record).
        last: Option<ExtendedSequenceNumber>,
        /// Whether the shard is closed (split or merged): no record will come.
        closed: bool,
    },
    /// The shard is no longer in the stream (older than the retention period).
    Gone,
}

/// Why a lease gets its new checkpoint (or keeps its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetReason {
    /// Reset to the oldest record.
    TrimHorizon,
    /// Reset to the newest record (the `LATEST` sentinel).
    Latest,
    /// A finished lease is not reset to `latest`: nothing of its shard is newer.
    Finished,
    /// The record before the first one at or after the time.
    BeforeTime,
    /// The first record at or after the time is the oldest the shard holds.
    OldestAtTime,
    /// No record at or after the time: the newest record of an open shard.
    NewestBeforeTime,
    /// No record at or after the time, and none at all: the shard's start.
    Empty,
    /// A closed shard whose records are all before the time, its lease unfinished: its
    /// last record (the shard end follows at once).
    ClosedBeforeTime,
    /// A closed shard whose records are all before the time, its lease finished.
    FinishedBeforeTime,
    /// A parent of the shard is read again: the child starts over after it.
    ParentReplays,
    /// The shard is no longer in the stream.
    Gone,
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResetReason::TrimHorizon => "oldest record",
            ResetReason::Latest => "newest record when read",
            ResetReason::Finished => "finished: nothing newer",
            ResetReason::BeforeTime => "the record before the first at or after the time",
            ResetReason::OldestAtTime => "the first record at or after the time is the oldest",
            ResetReason::NewestBeforeTime => "no record at or after the time: the newest record",
            ResetReason::Empty => "no record in the shard",
            ResetReason::ClosedBeforeTime => {
                "closed, every record before the time: its last record"
            }
            ResetReason::FinishedBeforeTime => "finished, every record before the time",
            ResetReason::ParentReplays => "a parent is read again: starts over after it",
            ResetReason::Gone => "the shard is no longer in the stream",
        })
    }
}

/// What [`decide`] says to do with one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The checkpoint to write; `None`: the lease is left as it is.
    pub checkpoint: Option<ExtendedSequenceNumber>,
    /// Why.
    pub reason: ResetReason,
}

/// What to write on one lease for a reset to `target`: a pure function of the lease as
/// read, what its shard holds around the time (`shard`, for a reset to a time), and
/// whether one of its parents is read again (`parent_replays`). A lease whose checkpoint
/// already is the one to write, with no pending checkpoint, is left as it is.
pub fn decide(
    target: &ResetTarget,
    lease: &Lease,
    shard: Option<&ShardAtTime>,
    parent_replays: bool,
) -> Decision {
    use ResetReason as Why;
    let write = |checkpoint: ExtendedSequenceNumber, reason| Decision {
        checkpoint: Some(checkpoint),
        reason,
    };
    let keep = |reason| Decision {
        checkpoint: None,
        reason,
    };
    let trim = ExtendedSequenceNumber::trim_horizon;
    let decision = match (target, shard) {
        (ResetTarget::TrimHorizon, _) => write(trim(), Why::TrimHorizon),
        (ResetTarget::Latest, _) if lease.is_finished() => keep(Why::Finished),
        (ResetTarget::Latest, _) => write(
            ExtendedSequenceNumber::sentinel(SequencePosition::Latest),
            Why::Latest,
        ),
        (ResetTarget::AtTimestamp(_), None | Some(ShardAtTime::Gone)) => keep(Why::Gone),
        (ResetTarget::AtTimestamp(_), Some(ShardAtTime::RecordsFrom { previous })) => {
            match previous {
                Some(previous) => write(previous.clone(), Why::BeforeTime),
                None => write(trim(), Why::OldestAtTime),
            }
        }
        (ResetTarget::AtTimestamp(_), Some(ShardAtTime::NoRecordsFrom { last, closed })) => {
            match (last, closed) {
                (_, true) if lease.is_finished() => keep(Why::FinishedBeforeTime),
                (Some(last), true) => write(last.clone(), Why::ClosedBeforeTime),
                (Some(last), false) => write(last.clone(), Why::NewestBeforeTime),
                (None, _) => write(trim(), Why::Empty),
            }
        }
    };
    let decision = match &decision.checkpoint {
        Some(checkpoint) if parent_replays && checkpoint.sequence_number().is_some() => {
            write(trim(), Why::ParentReplays)
        }
        _ => decision,
    };
    match &decision.checkpoint {
        Some(checkpoint)
            if *checkpoint == lease.checkpoint && lease.pending_checkpoint.is_none() =>
        {
            keep(decision.reason)
        }
        _ => decision,
    }
}

/// One lease of a [`ResetPlan`].
#[derive(Clone, Debug)]
pub struct PlannedReset {
    lease: Lease,
    shard_id: String,
    shard: Option<ShardAtTime>,
    parent_replays: bool,
    decision: Decision,
}

impl PlannedReset {
    /// The lease's key (the shard id; in a multi-stream table, prefixed with the stream).
    pub fn lease_key(&self) -> &str {
        &self.lease.lease_key
    }

    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The lease as it was read for the plan.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Its checkpoint when it was read.
    pub fn checkpoint(&self) -> &ExtendedSequenceNumber {
        &self.lease.checkpoint
    }

    /// The checkpoint to write; `None`: left as it is.
    pub fn new_checkpoint(&self) -> Option<&ExtendedSequenceNumber> {
        self.decision.checkpoint.as_ref()
    }

    /// Why.
    pub fn reason(&self) -> ResetReason {
        self.decision.reason
    }

    /// What the shard holds around the time (a reset to a time only).
    pub fn shard_at_time(&self) -> Option<&ShardAtTime> {
        self.shard.as_ref()
    }
}

/// What [`ResetPlan::apply`] did to one lease.
#[derive(Debug)]
#[non_exhaustive]
pub struct ResetOutcome {
    /// The lease's key.
    pub lease_key: String,
    /// The shard.
    pub shard_id: String,
    /// The checkpoint before the reset (as last read).
    pub previous: ExtendedSequenceNumber,
    /// The worker that held the lease when it was written (it loses it), if any.
    pub owner: Option<String>,
    /// Why.
    pub reason: ResetReason,
    /// The checkpoint written (`Some`), or left as it was (`None`); or why the lease could
    /// not be written.
    pub result: Result<Option<ExtendedSequenceNumber>, ResetError>,
}

/// Every lease a reset would change, in the order they are written (parents first).
#[derive(Clone, Debug)]
pub struct ResetPlan {
    target: ResetTarget,
    leases: Vec<PlannedReset>,
    attempts: u32,
}

impl ResetPlan {
    /// The target.
    pub fn target(&self) -> ResetTarget {
        self.target
    }

    /// The leases, parents before children.
    pub fn leases(&self) -> &[PlannedReset] {
        &self.leases
    }

    /// Writes the plan: each lease is read again, decided again ([`decide`], with what its
    /// shard holds as planned) and written with a conditional write; a failed condition
    /// starts over with the lease read again, up to the plan's number of attempts.
    /// Returns one outcome per lease, in the plan's order; a failed lease does not stop
    /// the others.
    pub async fn apply(&self, store: &dyn LeaseStore) -> Vec<ResetOutcome> {
        let mut outcomes = Vec::with_capacity(self.leases.len());
        for planned in &self.leases {
            outcomes.push(self.apply_one(store, planned).await);
        }
        outcomes
    }

    async fn apply_one(&self, store: &dyn LeaseStore, planned: &PlannedReset) -> ResetOutcome {
        let key = planned.lease_key().to_owned();
        let mut outcome = ResetOutcome {
            lease_key: key.clone(),
            shard_id: planned.shard_id.clone(),
            previous: planned.lease.checkpoint.clone(),
            owner: planned.lease.lease_owner.clone(),
            reason: planned.decision.reason,
            result: Ok(None),
        };
        // A write whose answer was lost (timeout) may have been applied: when the lease
        // then holds what was to be written, it was.
        let mut maybe_written: Option<ExtendedSequenceNumber> = None;
        let mut delays =
            crate::retrieval::backoff(Duration::from_millis(50), Duration::from_secs(2));
        let mut attempts = 0;
        loop {
            let lease = match store.get_lease(&key).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    outcome.result = Err(ResetError::Deleted(key));
                    return outcome;
                }
                Err(error) => {
                    outcome.result = Err(error.into());
                    return outcome;
                }
            };
            let decision = decide(
                &self.target,
                &lease,
                planned.shard.as_ref(),
                planned.parent_replays,
            );
            outcome.reason = decision.reason;
            let Some(checkpoint) = decision.checkpoint else {
                // A write whose answer was lost and that was applied: it was written.
                let written = maybe_written.filter(|written| *written == lease.checkpoint);
                if written.is_none() {
                    outcome.previous = lease.checkpoint;
                    outcome.owner = lease.lease_owner;
                }
                outcome.result = Ok(written);
                return outcome;
            };
            outcome.previous = lease.checkpoint.clone();
            outcome.owner = lease.lease_owner.clone();
            let update = CheckpointUpdate::commit(checkpoint.clone());
            match store.update_checkpoint(&lease, &update).await {
                Ok(_) => {
                    outcome.result = Ok(Some(checkpoint));
                    return outcome;
                }
                Err(LeaseStoreError::ConditionFailed(_)) => {
                    attempts += 1;
                    if attempts >= self.attempts {
                        outcome.result = Err(LeaseStoreError::Contended(key).into());
                        return outcome;
                    }
                }
                // No answer: applied or not, the lease read again tells (and the write
                // is decided again).
                Err(error) if attempts + 1 < self.attempts && outcome_unknown(&error) => {
                    attempts += 1;
                    maybe_written = Some(checkpoint);
                }
                Err(LeaseStoreError::Throttled(_)) if attempts + 1 < self.attempts => {
                    attempts += 1;
                }
                Err(error) => {
                    outcome.result = Err(error.into());
                    return outcome;
                }
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
        }
    }
}

/// Whether a failed write may have been applied: no answer came.
fn outcome_unknown(error: &LeaseStoreError) -> bool {
    match error {
        LeaseStoreError::Timeout(_) => true,
        LeaseStoreError::Service(error) => {
            matches!(error.kind(), ErrorKind::TimedOut | ErrorKind::Unreachable)
        }
        _ => false,
    }
}

/// A reset of every lease of an application's table (of one stream's leases in a
/// multi-stream table): see the [module documentation](self).
pub struct LeaseReset<'a> {
    store: &'a dyn LeaseStore,
    target: ResetTarget,
    stream: Option<(aws_sdk_kinesis::Client, StreamRef)>,
    attempts: u32,
    concurrency: usize,
}

impl<'a> LeaseReset<'a> {
    /// A reset of the leases in `store` to `target`.
    pub fn new(store: &'a dyn LeaseStore, target: ResetTarget) -> Self {
        LeaseReset {
            store,
            target,
            stream: None,
            attempts: 10,
            concurrency: 8,
        }
    }

    /// The stream (name or ARN) and a client to read it: required for a reset to a time;
    /// in a multi-stream table, only that stream's leases are reset.
    pub fn stream(mut self, client: aws_sdk_kinesis::Client, stream: impl Into<String>) -> Self {
        self.stream = Some((client, StreamRef::new(stream)));
        self
    }

    /// Writes tried per lease when their conditions fail because the lease changed in
    /// between (default 10).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Shards read at the same time for a reset to a time (default 8).
    pub fn concurrency(mut self, shards: usize) -> Self {
        self.concurrency = shards.max(1);
        self
    }

    /// Reads the lease table (and, for a reset to a time, each shard) and says what would
    /// be written; changes nothing.
    pub async fn plan(&self) -> Result<ResetPlan, ResetError> {
        let at = match self.target {
            ResetTarget::AtTimestamp(at) => {
                if at > SystemTime::now() {
                    return Err(ResetError::FutureTimestamp(format_time(at)));
                }
                Some(at)
            }
            _ => None,
        };
        let leases = self.store.list_leases().await?;
        let stream = self.stream.as_ref().map(|(_, stream)| stream);
        let leases: Vec<(String, Lease)> = leases
            .into_iter()
            .filter_map(|lease| {
                let shard = shard_of(&lease, stream)?;
                Some((shard, lease))
            })
            .collect();
        let positions = match at {
            None => HashMap::new(),
            Some(at) => {
                let (client, stream) = self.stream.as_ref().ok_or(ResetError::StreamRequired)?;
                let shards: Vec<&str> = leases.iter().map(|(shard, _)| shard.as_str()).collect();
                positions(client, stream, &shards, at, self.concurrency).await?
            }
        };
        Ok(plan_leases(self.target, leases, &positions, self.attempts))
    }

    /// [`plan`](Self::plan), then [`ResetPlan::apply`].
    pub async fn run(&self) -> Result<Vec<ResetOutcome>, ResetError> {
        Ok(self.plan().await?.apply(self.store).await)
    }
}

/// The shard of a lease, if the lease belongs to `stream` (in a multi-stream table, its
/// stream identifier names it; every lease of a single-stream table belongs to it).
fn shard_of(lease: &Lease, stream: Option<&StreamRef>) -> Option<String> {
    match (&lease.multi_stream, stream) {
        (None, _) => Some(lease.lease_key.clone()),
        (Some((_, shard)), None) => Some(shard.clone()),
        (Some((identifier, shard)), Some(stream)) => {
            (identifier.split(':').nth(1) == Some(stream.name())).then(|| shard.clone())
        }
    }
}

/// The lease key of a parent shard of `lease`: in a multi-stream table, the parent's
/// lease is the same stream's.
fn parent_key(lease: &Lease, parent: &str) -> String {
    match &lease.multi_stream {
        Some((identifier, _)) => format!("{identifier}:{parent}"),
        None => parent.to_owned(),
    }
}

/// Orders the leases parents first and decides each one.
fn plan_leases(
    target: ResetTarget,
    leases: Vec<(String, Lease)>,
    positions: &HashMap<String, ShardAtTime>,
    attempts: u32,
) -> ResetPlan {
    let by_key: HashMap<&str, &Lease> = leases
        .iter()
        .map(|(_, lease)| (lease.lease_key.as_str(), lease))
        .collect();
    let mut depths: HashMap<String, usize> = HashMap::new();
    for (_, lease) in &leases {
        depth(&lease.lease_key, &by_key, &mut depths, 0);
    }
    let mut ordered: Vec<(usize, String, Lease)> = leases
        .into_iter()
        .map(|(shard, lease)| {
            let depth = depths.get(&lease.lease_key).copied().unwrap_or(0);
            (depth, shard, lease)
        })
        .collect();
    ordered.sort_by(|a, b| (a.0, &a.2.lease_key).cmp(&(b.0, &b.2.lease_key)));
    let at_time = matches!(target, ResetTarget::AtTimestamp(_));
    // Per lease key: whether its shard's records are read again from before its end.
    let mut replays: HashMap<String, bool> = HashMap::new();
    let mut planned = Vec::with_capacity(ordered.len());
    for (_, shard_id, lease) in ordered {
        let shard = positions.get(&shard_id).cloned();
        let parent_replays = at_time
            && lease.parent_shard_ids.iter().any(|parent| {
                replays
                    .get(&parent_key(&lease, parent))
                    .copied()
                    .unwrap_or(false)
            });
        let decision = decide(&target, &lease, shard.as_ref(), parent_replays);
        let replayed = matches!(shard, Some(ShardAtTime::RecordsFrom { .. }))
            || decision.reason == ResetReason::ParentReplays;
        replays.insert(lease.lease_key.clone(), replayed);
        planned.push(PlannedReset {
            lease,
            shard_id,
            shard,
            parent_replays,
            decision,
        });
    }
    ResetPlan {
        target,
        leases: planned,
        attempts,
    }
}

/// How many generations of parents in the table a lease has.
fn depth(
    key: &str,
    by_key: &HashMap<&str, &Lease>,
    depths: &mut HashMap<String, usize>,
    guard: usize,
) -> usize {
    if let Some(depth) = depths.get(key) {
        return *depth;
    }
    let Some(lease) = by_key.get(key) else {
        return 0;
    };
    if guard > by_key.len() {
        return 0; // a cycle: no real table has one
    }
    let depth = lease
        .parent_shard_ids
        .iter()
        .map(|parent| parent_key(lease, parent))
        .filter(|parent| by_key.contains_key(parent.as_str()))
        .map(|parent| depth(&parent, by_key, depths, guard + 1) + 1)
        .max()
        .unwrap_or(0);
    depths.insert(key.to_owned(), depth);
    depth
}

/// A record as the search for a position needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    sequence_number: String,
    users: Users,
    arrival: Option<SystemTime>,
}

/// The user records of a [`Seen`] record, as far as the checkpoint needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Users {
    /// The sub-sequence number of its last user record is known (0: a plain record).
    Last(u64),
    /// Maybe a KPL aggregate (it starts with the magic): unpacked only if it becomes the
    /// checkpoint, so scanning a shard neither copies nor unpacks what it reads.
    Aggregate { partition_key: String, data: Bytes },
}

impl Seen {
    /// A checkpoint at this record's last user record.
    fn checkpoint(&self) -> ExtendedSequenceNumber {
        let last = match &self.users {
            Users::Last(last) => *last,
            Users::Aggregate {
                partition_key,
                data,
            } => kinesis_aggregation::deaggregate(partition_key, None, data.clone())
                .iter()
                .map(|user| user.sub_sequence_number)
                .max()
                .unwrap_or(0),
        };
        ExtendedSequenceNumber::new(self.sequence_number.clone(), last)
    }

    fn of(record: aws_sdk_kinesis::types::Record) -> Self {
        let arrival = record
            .approximate_arrival_timestamp()
            .and_then(|t| SystemTime::try_from(*t).ok());
        let users = if record
            .data()
            .as_ref()
            .starts_with(&kinesis_aggregation::MAGIC)
        {
            Users::Aggregate {
                data: Bytes::from(record.data.into_inner()),
                partition_key: record.partition_key.unwrap_or_default(),
            }
        } else {
            Users::Last(0)
        };
        Seen {
            sequence_number: record.sequence_number,
            users,
            arrival,
        }
    }
}

/// Where reading starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    TrimHorizon,
    AtTimestamp(SystemTime),
}

/// One GetRecords page.
#[derive(Debug)]
struct Page {
    records: Vec<Seen>,
    next: Option<String>,
    millis_behind_latest: Option<i64>,
}

impl Page {
    /// Whether nothing follows this (empty) page for now: the shard's end, or the tip of
    /// an open shard.
    fn is_end(&self) -> bool {
        self.next.is_none() || matches!(self.millis_behind_latest, Some(0) | None)
    }
}

/// The reads of one shard.
#[async_trait]
trait ShardReads: Send + Sync {
    async fn iterator(&self, start: Start) -> Result<String, ResetError>;
    async fn page(&self, iterator: &str) -> Result<Page, ResetError>;
}

/// The first record from `start`, if any.
async fn first_record(reads: &dyn ShardReads, start: Start) -> Result<Option<Seen>, ResetError> {
    let mut iterator = reads.iterator(start).await?;
    loop {
        let page = reads.page(&iterator).await?;
        let end = page.is_end();
        if let Some(first) = page.records.into_iter().next() {
            return Ok(Some(first));
        }
        match page.next {
            Some(next) if !end => iterator = next,
            _ => return Ok(None),
        }
    }
}

/// Reads from `start` up to the first record that is `bound` or arrived at or after `at`
/// (or the end of the data); returns the last record before it and whether one was found.
async fn last_before(
    reads: &dyn ShardReads,
    start: Start,
    bound: Option<&Seen>,
    at: SystemTime,
) -> Result<(Option<Seen>, bool), ResetError> {
    let mut iterator = reads.iterator(start).await?;
    let mut last = None;
    loop {
        let page = reads.page(&iterator).await?;
        let empty = page.records.is_empty();
        let end = page.is_end();
        for record in page.records {
            let is_bound = bound.is_some_and(|b| {
                crate::lease::compare_sequence_numbers(&record.sequence_number, &b.sequence_number)
                    .is_ge()
            });
            if is_bound || record.arrival.is_some_and(|a| a >= at) {
                return Ok((last, true));
            }
            last = Some(record);
        }
        match page.next {
            Some(next) if !(empty && end) => iterator = next,
            _ => return Ok((last, false)),
        }
    }
}

/// What a shard holds around `at` (see the module documentation).
async fn shard_at(
    reads: &dyn ShardReads,
    at: SystemTime,
    closed: bool,
) -> Result<ShardAtTime, ResetError> {
    let Some(oldest) = first_record(reads, Start::TrimHorizon).await? else {
        return Ok(ShardAtTime::NoRecordsFrom { last: None, closed });
    };
    let first = first_record(reads, Start::AtTimestamp(at)).await?;
    if first.as_ref() == Some(&oldest) {
        return Ok(ShardAtTime::RecordsFrom { previous: None });
    }
    let mut back = Duration::from_secs(1);
    loop {
        let from = at.checked_sub(back);
        let start = match (from, oldest.arrival) {
            (Some(from), Some(oldest)) if from > oldest => Start::AtTimestamp(from),
            _ => Start::TrimHorizon,
        };
        let (last, stopped) = last_before(reads, start, first.as_ref(), at).await?;
        if last.is_some() || start == Start::TrimHorizon {
            let previous = last.map(|seen| seen.checkpoint());
            return Ok(if first.is_some() || stopped {
                ShardAtTime::RecordsFrom { previous }
            } else {
                ShardAtTime::NoRecordsFrom {
                    last: previous,
                    closed,
                }
            });
        }
        back = back.saturating_mul(2);
    }
}

/// Reads of a shard through Kinesis, each call timed out, throttled calls retried, and
/// GetRecords paced at five calls per second (the shard's limit, shared with its workers).
struct KinesisReads<'a> {
    client: &'a aws_sdk_kinesis::Client,
    stream: &'a StreamRef,
    shard: &'a str,
    last_read: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_ATTEMPTS: usize = 8;
const READ_INTERVAL: Duration = Duration::from_millis(200);

impl KinesisReads<'_> {
    fn failed(&self, error: ServiceError) -> ResetError {
        ResetError::Read {
            shard: self.shard.to_owned(),
            error,
        }
    }

    /// Runs `call` until it succeeds, fails for good or runs out of attempts.
    async fn retried<T, F, Fut>(
        &self,
        operation: &'static str,
        mut call: F,
    ) -> Result<T, ResetError>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, ServiceError>> + Send,
        T: Send,
    {
        let mut delays =
            crate::retrieval::backoff(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match tokio::time::timeout(CALL_TIMEOUT, call()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(_) => ServiceError::timed_out(operation, CALL_TIMEOUT),
            };
            let transient = matches!(
                error.kind(),
                ErrorKind::Throttled | ErrorKind::TimedOut | ErrorKind::Unreachable
            );
            if !transient || attempt >= CALL_ATTEMPTS {
                return Err(self.failed(error));
            }
            tracing::debug!(shard = %self.shard, operation, %error, "retrying");
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
        }
    }
}

#[async_trait]
impl ShardReads for KinesisReads<'_> {
    async fn iterator(&self, start: Start) -> Result<String, ResetError> {
        let (client, stream, shard) = (self.client, self.stream, self.shard);
        let iterator = self
            .retried("GetShardIterator", move || async move {
                let request = stream.get_shard_iterator(client).shard_id(shard);
                let request = match start {
                    Start::TrimHorizon => {
                        request.shard_iterator_type(ShardIteratorType::TrimHorizon)
                    }
                    Start::AtTimestamp(at) => request
                        .shard_iterator_type(ShardIteratorType::AtTimestamp)
                        .timestamp(DateTime::from(at)),
                };
                request
                    .send()
                    .await
                    .map_err(|e| ServiceError::from_sdk("GetShardIterator", e))
            })
            .await?;
        iterator.shard_iterator.ok_or_else(|| {
            self.failed(ServiceError::new(
                "GetShardIterator",
                ErrorKind::Other,
                "no shard iterator in the answer",
            ))
        })
    }

    async fn page(&self, iterator: &str) -> Result<Page, ResetError> {
        {
            let mut last = self.last_read.lock().await;
            if let Some(last) = *last {
                tokio::time::sleep_until(last + READ_INTERVAL).await;
            }
            *last = Some(tokio::time::Instant::now());
        }
        let client = self.client;
        let out = self
            .retried("GetRecords", move || async move {
                client
                    .get_records()
                    .shard_iterator(iterator)
                    .limit(10_000)
                    .send()
                    .await
                    .map_err(|e| ServiceError::from_sdk("GetRecords", e))
            })
            .await?;
        Ok(Page {
            millis_behind_latest: out.millis_behind_latest(),
            records: out.records.into_iter().map(Seen::of).collect(),
            next: out.next_shard_iterator,
        })
    }
}

/// What each shard holds around `at`; shards not in the stream are [`ShardAtTime::Gone`].
async fn positions(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    shards: &[&str],
    at: SystemTime,
    concurrency: usize,
) -> Result<HashMap<String, ShardAtTime>, ResetError> {
    use futures::StreamExt;
    let listed = list_shards(client, stream).await?;
    let results: Vec<Result<(String, ShardAtTime), ResetError>> =
        futures::stream::iter(shards.iter().map(|shard| {
            let closed = listed.get(*shard).copied();
            async move {
                let Some(closed) = closed else {
                    return Ok(((*shard).to_owned(), ShardAtTime::Gone));
                };
                let reads = KinesisReads {
                    client,
                    stream,
                    shard,
                    last_read: tokio::sync::Mutex::new(None),
                };
                let position = shard_at(&reads, at, closed).await?;
                tracing::debug!(shard, ?position, "position at the time");
                Ok(((*shard).to_owned(), position))
            }
        }))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Every shard of the stream, and whether it is closed.
async fn list_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
) -> Result<HashMap<String, bool>, ResetError> {
    let listed = tokio::time::timeout(CALL_TIMEOUT, crate::retrieval::list_shards(client, stream))
        .await
        .unwrap_or_else(|_| Err(ServiceError::timed_out("ListShards", CALL_TIMEOUT)))
        .map_err(|error| ResetError::Stream {
            stream: stream.to_string(),
            error,
        })?;
    Ok(listed
        .iter()
        .map(|shard| {
            let closed = shard
                .sequence_number_range()
                .is_some_and(|range| range.ending_sequence_number().is_some());
            (shard.shard_id().to_owned(), closed)
        })
        .collect())
}

#[cfg(test)]
mod tests;
