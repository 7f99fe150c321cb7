//! A shard lease as the lease table stores it, and checkpoint positions.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

/// Where a checkpoint stands in a shard: a sequence number, or one of the Java KCL's
/// sentinels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SequencePosition {
    /// A Kinesis sequence number (decimal digits).
    Sequence(String),
    /// Nothing processed yet; start at the oldest record (`TRIM_HORIZON`).
    TrimHorizon,
    /// Nothing processed yet; start after the newest record (`LATEST`).
    Latest,
    /// Nothing processed yet; start at the configured timestamp (`AT_TIMESTAMP`).
    AtTimestamp,
    /// The shard is closed and every record of it was processed (`SHARD_END`).
    ShardEnd,
}

impl SequencePosition {
    /// The string stored in the lease table's `checkpoint` attribute.
    pub fn as_str(&self) -> &str {
        match self {
            SequencePosition::Sequence(s) => s,
            SequencePosition::TrimHorizon => "TRIM_HORIZON",
            SequencePosition::Latest => "LATEST",
            SequencePosition::AtTimestamp => "AT_TIMESTAMP",
            SequencePosition::ShardEnd => "SHARD_END",
        }
    }

    /// Parses the lease table's `checkpoint` attribute: a sentinel or a sequence number.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "TRIM_HORIZON" => SequencePosition::TrimHorizon,
            "LATEST" => SequencePosition::Latest,
            "AT_TIMESTAMP" => SequencePosition::AtTimestamp,
            "SHARD_END" => SequencePosition::ShardEnd,
            digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                SequencePosition::Sequence(digits.to_owned())
            }
            _ => return None,
        })
    }
}

/// A checkpoint: a position plus the sub-sequence number of the user record inside a KPL
/// aggregate (0 for plain records).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExtendedSequenceNumber {
    /// The Kinesis record (or sentinel).
    pub position: SequencePosition,
    /// The user record inside the Kinesis record's aggregate.
    pub sub_sequence_number: u64,
}

impl ExtendedSequenceNumber {
    /// A checkpoint at a sequence number and sub-sequence number.
    pub fn new(sequence_number: impl Into<String>, sub_sequence_number: u64) -> Self {
        ExtendedSequenceNumber {
            position: SequencePosition::Sequence(sequence_number.into()),
            sub_sequence_number,
        }
    }

    /// A sentinel checkpoint (sub-sequence 0).
    pub fn sentinel(position: SequencePosition) -> Self {
        ExtendedSequenceNumber {
            position,
            sub_sequence_number: 0,
        }
    }

    /// `TRIM_HORIZON`.
    pub fn trim_horizon() -> Self {
        Self::sentinel(SequencePosition::TrimHorizon)
    }

    /// `SHARD_END`.
    pub fn shard_end() -> Self {
        Self::sentinel(SequencePosition::ShardEnd)
    }

    /// Whether this is `SHARD_END`.
    pub fn is_shard_end(&self) -> bool {
        self.position == SequencePosition::ShardEnd
    }

    /// The sequence number, when this is not a sentinel.
    pub fn sequence_number(&self) -> Option<&str> {
        match &self.position {
            SequencePosition::Sequence(s) => Some(s),
            _ => None,
        }
    }

    /// Orders two checkpoints when both are real sequence numbers (sentinels do not order
    /// against sequence numbers).
    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        match (self.sequence_number(), other.sequence_number()) {
            (Some(a), Some(b)) => Some(
                compare_sequence_numbers(a, b)
                    .then(self.sub_sequence_number.cmp(&other.sub_sequence_number)),
            ),
            _ => None,
        }
    }
}

impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.position.as_str(), self.sub_sequence_number)
    }
}

/// Compares two decimal sequence numbers numerically (they exceed 128 bits).
pub fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// One shard's lease: who holds it, its fencing counter and its checkpoint. Field names
/// follow the Java KCL 2.x lease table attributes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Lease {
    /// `leaseKey`: the shard id.
    pub lease_key: String,
    /// `leaseOwner`: the worker holding it; `None` when unassigned.
    pub lease_owner: Option<String>,
    /// `leaseCounter`: bumped by every write; every write is conditional on it.
    pub lease_counter: u64,
    /// `checkpoint` + `checkpointSubSequenceNumber`.
    pub checkpoint: ExtendedSequenceNumber,
    /// `pendingCheckpoint` + `pendingCheckpointSubSequenceNumber`: a prepared, uncommitted
    /// checkpoint.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// `pendingCheckpointState`: application state prepared with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
    /// `ownerSwitchesSinceCheckpoint`.
    pub owner_switches_since_checkpoint: u64,
    /// `parentShardId`: the shards this one was split or merged from.
    pub parent_shard_ids: BTreeSet<String>,
    /// `childShardIds`: the shards this one was split or merged into (set at shard end).
    pub child_shard_ids: BTreeSet<String>,
    /// `startingHashKey` and `endingHashKey` (decimal).
    pub hash_key_range: Option<(String, String)>,
    /// `checkpointOwner` (the Java KCL 3 attribute): set while a graceful handoff is under
    /// way. It names the worker that still processes the shard and must checkpoint and
    /// hand the lease over; `lease_owner` then names the worker it goes to.
    pub checkpoint_owner: Option<String>,
    /// `handoffCounter`: the lease counter written by a completed graceful handoff. While
    /// the counter still has this value, the previous holder has stopped processing and
    /// the new owner may start at once. This crate's own attribute; the Java KCL ignores
    /// it.
    pub handoff_counter: Option<u64>,
    /// `handoffAcceptedBy`: set by the worker a lease is offered to (by a holder shutting
    /// down) to say it is running and will take the lease; the holder hands the lease over
    /// only then. This crate's own attribute; the Java KCL ignores it.
    pub handoff_accepted_by: Option<String>,
    /// `throughputKBps` (the Java KCL 3 attribute): the data its holder read from the
    /// shard, in KiB per second, smoothed over the last renewal periods; written with
    /// each renewal.
    pub throughput_kbps: Option<f64>,
    /// `streamName` and `shardId` (the Java KCL's multi-stream lease attributes): the
    /// stream identifier (`account:stream:creationEpoch`) and the shard of a lease whose
    /// key is `account:stream:creationEpoch:shardId`; `None` in a single-stream table.
    pub multi_stream: Option<(String, String)>,
}

impl Lease {
    /// A new, unassigned lease for a shard starting at `checkpoint`.
    pub fn new(lease_key: impl Into<String>, checkpoint: ExtendedSequenceNumber) -> Self {
        Lease {
            lease_key: lease_key.into(),
            lease_owner: None,
            lease_counter: 0,
            checkpoint,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: BTreeSet::new(),
            child_shard_ids: BTreeSet::new(),
            hash_key_range: None,
            checkpoint_owner: None,
            handoff_counter: None,
            handoff_accepted_by: None,
            throughput_kbps: None,
            multi_stream: None,
        }
    }

    /// Whether the table names `worker` the lease's owner (during a graceful handoff: the
    /// worker it goes to).
    pub fn is_owned_by(&self, worker: &str) -> bool {
        self.lease_owner.as_deref() == Some(worker)
    }

    /// The worker processing the shard: the `checkpoint_owner` while a graceful handoff is
    /// under way, otherwise the owner.
    pub fn actual_owner(&self) -> Option<&str> {
        self.checkpoint_owner
            .as_deref()
            .or(self.lease_owner.as_deref())
    }

    /// Whether a graceful handoff was requested and not completed yet.
    pub fn handoff_pending(&self) -> bool {
        self.checkpoint_owner.is_some()
    }

    /// Whether the worker the lease is going to during a handoff has accepted it.
    pub fn is_handoff_accepted(&self) -> bool {
        self.handoff_pending()
            && self.handoff_accepted_by.is_some()
            && self.handoff_accepted_by == self.lease_owner
    }

    /// Whether the last write was a completed graceful handoff: the previous holder has
    /// stopped, and the owner may start at once.
    pub fn is_handed_over(&self) -> bool {
        self.checkpoint_owner.is_none() && self.handoff_counter == Some(self.lease_counter)
    }

    /// Whether the shard was processed to its end.
    pub fn is_finished(&self) -> bool {
        self.checkpoint.is_shard_end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_round_trip() {
        for p in [
            SequencePosition::TrimHorizon,
            SequencePosition::Latest,
            SequencePosition::AtTimestamp,
            SequencePosition::ShardEnd,
            SequencePosition::Sequence(
                "49590338271490256608559692538361571095921575989136588898".into(),
            ),
        ] {
            assert_eq!(SequencePosition::parse(p.as_str()), Some(p));
        }
        assert_eq!(SequencePosition::parse("garbage"), None);
        assert_eq!(SequencePosition::parse(""), None);
    }

    #[test]
    fn sequence_numbers_compare_numerically() {
        assert_eq!(compare_sequence_numbers("9", "10"), Ordering::Less);
        assert_eq!(compare_sequence_numbers("010", "10"), Ordering::Equal);
        assert_eq!(compare_sequence_numbers("200", "199"), Ordering::Greater);
        let a = ExtendedSequenceNumber::new("5", 3);
        let b = ExtendedSequenceNumber::new("5", 4);
        assert_eq!(a.compare(&b), Some(Ordering::Less));
        assert_eq!(a.compare(&ExtendedSequenceNumber::trim_horizon()), None);
    }
}
