//! The lease item codec: a [`Lease`] as a DynamoDB item in the Java KCL 2.x schema (with
//! the Java KCL 3's and this crate's own attributes), and back.

use std::collections::{BTreeSet, HashMap};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::lease::{ExtendedSequenceNumber, Lease, SequencePosition};
use crate::leases::store::LeaseStoreError;

/// Attribute names of the Java KCL 2.x lease table.
pub mod attributes {
    /// Hash key: the shard id.
    pub const LEASE_KEY: &str = "leaseKey";
    /// Owner worker id (absent when unassigned).
    pub const LEASE_OWNER: &str = "leaseOwner";
    /// Fencing counter.
    pub const LEASE_COUNTER: &str = "leaseCounter";
    /// Checkpoint sequence number or sentinel.
    pub const CHECKPOINT: &str = "checkpoint";
    /// Checkpoint sub-sequence number.
    pub const CHECKPOINT_SUB_SEQUENCE_NUMBER: &str = "checkpointSubSequenceNumber";
    /// Prepared checkpoint.
    pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
    /// Prepared checkpoint sub-sequence number.
    pub const PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER: &str = "pendingCheckpointSubSequenceNumber";
    /// Application state of the prepared checkpoint.
    pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
    /// Lease moves since the last checkpoint.
    pub const OWNER_SWITCHES_SINCE_CHECKPOINT: &str = "ownerSwitchesSinceCheckpoint";
    /// Parent shard ids (string set; the name is singular as in the Java KCL).
    pub const PARENT_SHARD_ID: &str = "parentShardId";
    /// Child shard ids (string set).
    pub const CHILD_SHARD_IDS: &str = "childShardIds";
    /// First hash key of the shard (decimal).
    pub const STARTING_HASH_KEY: &str = "startingHashKey";
    /// Last hash key of the shard (decimal).
    pub const ENDING_HASH_KEY: &str = "endingHashKey";
    /// The worker that still processes the shard during a graceful handoff (Java KCL 3).
    pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
    /// The counter written by a completed graceful handoff (this crate's own attribute).
    pub const HANDOFF_COUNTER: &str = "handoffCounter";
    /// The worker that accepted a lease offered to it by a holder shutting down (this
    /// crate's own attribute).
    pub const HANDOFF_ACCEPTED_BY: &str = "handoffAcceptedBy";
    /// The data read from the shard, KiB per second (Java KCL 3).
    pub const THROUGHPUT_KBPS: &str = "throughputKBps";
    /// The stream identifier (`account:stream:creationEpoch`) of a multi-stream lease.
    pub const STREAM_NAME: &str = "streamName";
    /// The shard id of a multi-stream lease.
    pub const SHARD_ID: &str = "shardId";
    /// What an item is, in a lease table the Java KCL 3.5 shares with its leader lock and
    /// worker metrics (absent or `LEASE` for a lease).
    pub const ENTITY_TYPE: &str = "entityType";
}

use attributes::*;

/// Whether an item of the lease table is a lease: the Java KCL 3.5 keeps other items there
/// (its leader lock, worker metrics, migration state), marked by `entityType`. They are
/// neither read as leases nor ever written.
pub fn is_lease_item(item: &HashMap<String, AttributeValue>) -> bool {
    match item.get(ENTITY_TYPE) {
        None => true,
        Some(AttributeValue::S(kind)) => kind == "LEASE",
        Some(_) => false,
    }
}

/// The lease an UpdateItem with `ReturnValues=ALL_NEW` wrote.
pub(crate) fn written_lease(
    output: &aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
) -> Result<Lease, LeaseStoreError> {
    let item = output
        .attributes()
        .ok_or_else(|| LeaseStoreError::Malformed("update returned no item".into()))?;
    lease_from_item(item)
}

/// The DynamoDB item for a lease, attribute for attribute as the Java KCL writes it.
pub fn lease_to_item(lease: &Lease) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::new();
    item.insert(LEASE_KEY.into(), AttributeValue::S(lease.lease_key.clone()));
    if let Some(owner) = &lease.lease_owner {
        item.insert(LEASE_OWNER.into(), AttributeValue::S(owner.clone()));
    }
    item.insert(
        LEASE_COUNTER.into(),
        AttributeValue::N(lease.lease_counter.to_string()),
    );
    item.insert(
        CHECKPOINT.into(),
        AttributeValue::S(lease.checkpoint.position.as_str().to_owned()),
    );
    item.insert(
        CHECKPOINT_SUB_SEQUENCE_NUMBER.into(),
        AttributeValue::N(lease.checkpoint.sub_sequence_number.to_string()),
    );
    if let Some(pending) = &lease.pending_checkpoint {
        item.insert(
            PENDING_CHECKPOINT.into(),
            AttributeValue::S(pending.position.as_str().to_owned()),
        );
        item.insert(
            PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER.into(),
            AttributeValue::N(pending.sub_sequence_number.to_string()),
        );
    }
    if let Some(state) = &lease.pending_checkpoint_state {
        item.insert(
            PENDING_CHECKPOINT_STATE.into(),
            AttributeValue::B(Blob::new(state.clone())),
        );
    }
    item.insert(
        OWNER_SWITCHES_SINCE_CHECKPOINT.into(),
        AttributeValue::N(lease.owner_switches_since_checkpoint.to_string()),
    );
    // DynamoDB rejects empty sets: absent means empty.
    if !lease.parent_shard_ids.is_empty() {
        item.insert(
            PARENT_SHARD_ID.into(),
            AttributeValue::Ss(lease.parent_shard_ids.iter().cloned().collect()),
        );
    }
    if !lease.child_shard_ids.is_empty() {
        item.insert(
            CHILD_SHARD_IDS.into(),
            AttributeValue::Ss(lease.child_shard_ids.iter().cloned().collect()),
        );
    }
    if let Some((start, end)) = &lease.hash_key_range {
        item.insert(STARTING_HASH_KEY.into(), AttributeValue::S(start.clone()));
        item.insert(ENDING_HASH_KEY.into(), AttributeValue::S(end.clone()));
    }
    if let Some(owner) = &lease.checkpoint_owner {
        item.insert(CHECKPOINT_OWNER.into(), AttributeValue::S(owner.clone()));
    }
    if let Some(counter) = lease.handoff_counter {
        item.insert(
            HANDOFF_COUNTER.into(),
            AttributeValue::N(counter.to_string()),
        );
    }
    if let Some(worker) = &lease.handoff_accepted_by {
        item.insert(
            HANDOFF_ACCEPTED_BY.into(),
            AttributeValue::S(worker.clone()),
        );
    }
    if let Some(throughput) = lease.throughput_kbps {
        item.insert(
            THROUGHPUT_KBPS.into(),
            AttributeValue::N(throughput.to_string()),
        );
    }
    if let Some((stream, shard)) = &lease.multi_stream {
        item.insert(STREAM_NAME.into(), AttributeValue::S(stream.clone()));
        item.insert(SHARD_ID.into(), AttributeValue::S(shard.clone()));
    }
    item
}

/// Reads a lease from a DynamoDB item in the Java KCL 2.x schema. Attributes other than
/// `leaseKey` and `leaseCounter` may be absent.
pub fn lease_from_item(item: &HashMap<String, AttributeValue>) -> Result<Lease, LeaseStoreError> {
    let string = |name: &str| -> Result<Option<String>, LeaseStoreError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
            Some(other) => Err(LeaseStoreError::Malformed(format!(
                "{name} is not a string: {other:?}"
            ))),
        }
    };
    let number = |name: &str| -> Result<Option<u64>, LeaseStoreError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| LeaseStoreError::Malformed(format!("{name} is not a u64: {n}"))),
            Some(other) => Err(LeaseStoreError::Malformed(format!(
                "{name} is not a number: {other:?}"
            ))),
        }
    };
    let set = |name: &str| -> Result<BTreeSet<String>, LeaseStoreError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(BTreeSet::new()),
            Some(AttributeValue::Ss(values)) => Ok(values.iter().cloned().collect()),
            Some(other) => Err(LeaseStoreError::Malformed(format!(
                "{name} is not a string set: {other:?}"
            ))),
        }
    };
    let position = |name: &str| -> Result<Option<SequencePosition>, LeaseStoreError> {
        string(name)?
            .map(|s| {
                SequencePosition::parse(&s)
                    .ok_or_else(|| LeaseStoreError::Malformed(format!("{name} is {s:?}")))
            })
            .transpose()
    };
    let lease_key = string(LEASE_KEY)?
        .ok_or_else(|| LeaseStoreError::Malformed(format!("item without {LEASE_KEY}")))?;
    let checkpoint = ExtendedSequenceNumber {
        position: position(CHECKPOINT)?.unwrap_or(SequencePosition::TrimHorizon),
        sub_sequence_number: number(CHECKPOINT_SUB_SEQUENCE_NUMBER)?.unwrap_or(0),
    };
    let pending_checkpoint = position(PENDING_CHECKPOINT)?.map(|p| ExtendedSequenceNumber {
        position: p,
        sub_sequence_number: 0,
    });
    let pending_checkpoint = match pending_checkpoint {
        Some(mut p) => {
            p.sub_sequence_number = number(PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER)?.unwrap_or(0);
            Some(p)
        }
        None => None,
    };
    let pending_checkpoint_state = match item.get(PENDING_CHECKPOINT_STATE) {
        None | Some(AttributeValue::Null(_)) => None,
        Some(AttributeValue::B(b)) => Some(b.as_ref().to_vec()),
        Some(other) => {
            return Err(LeaseStoreError::Malformed(format!(
                "{PENDING_CHECKPOINT_STATE} is not binary: {other:?}"
            )))
        }
    };
    let hash_key_range = match (string(STARTING_HASH_KEY)?, string(ENDING_HASH_KEY)?) {
        (Some(start), Some(end)) => Some((start, end)),
        _ => None,
    };
    Ok(Lease {
        lease_key,
        lease_owner: string(LEASE_OWNER)?,
        lease_counter: number(LEASE_COUNTER)?.unwrap_or(0),
        checkpoint,
        pending_checkpoint,
        pending_checkpoint_state,
        owner_switches_since_checkpoint: number(OWNER_SWITCHES_SINCE_CHECKPOINT)?.unwrap_or(0),
        parent_shard_ids: set(PARENT_SHARD_ID)?,
        child_shard_ids: set(CHILD_SHARD_IDS)?,
        hash_key_range,
        checkpoint_owner: string(CHECKPOINT_OWNER)?,
        handoff_counter: number(HANDOFF_COUNTER)?,
        handoff_accepted_by: string(HANDOFF_ACCEPTED_BY)?,
        // A measurement, not state: a value that is not a number is ignored.
        throughput_kbps: item
            .get(THROUGHPUT_KBPS)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|t| t.is_finite()),
        multi_stream: string(STREAM_NAME)?.zip(string(SHARD_ID)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_round_trip() {
        let mut lease = Lease::new(
            "shardId-000000000001",
            ExtendedSequenceNumber::new("123", 4),
        );
        lease.lease_owner = Some("worker-a".into());
        lease.lease_counter = 17;
        lease.pending_checkpoint = Some(ExtendedSequenceNumber::new("130", 0));
        lease.pending_checkpoint_state = Some(b"state".to_vec());
        lease.owner_switches_since_checkpoint = 2;
        lease.parent_shard_ids = BTreeSet::from(["shardId-000000000000".to_owned()]);
        lease.child_shard_ids = BTreeSet::from(["shardId-000000000002".to_owned()]);
        lease.hash_key_range = Some(("0".into(), "340282366920938463463374607431768211455".into()));
        lease.checkpoint_owner = Some("worker-b".into());
        lease.handoff_counter = Some(12);
        lease.handoff_accepted_by = Some("worker-a".into());
        lease.throughput_kbps = Some(12.5);
        lease.multi_stream = Some((
            "123456789012:orders:1700000000".into(),
            "shardId-000000000001".into(),
        ));
        let item = lease_to_item(&lease);
        assert_eq!(
            item.get(CHECKPOINT_OWNER),
            Some(&AttributeValue::S("worker-b".into()))
        );
        assert_eq!(item.get(CHECKPOINT), Some(&AttributeValue::S("123".into())));
        assert_eq!(
            item.get(LEASE_COUNTER),
            Some(&AttributeValue::N("17".into()))
        );
        assert!(matches!(
            item.get(PARENT_SHARD_ID),
            Some(AttributeValue::Ss(_))
        ));
        assert_eq!(lease_from_item(&item).unwrap(), lease);

        let bare = Lease::new("s", ExtendedSequenceNumber::shard_end());
        let item = lease_to_item(&bare);
        assert!(!item.contains_key(LEASE_OWNER));
        assert!(!item.contains_key(PARENT_SHARD_ID));
        assert!(!item.contains_key(CHECKPOINT_OWNER));
        assert_eq!(lease_from_item(&item).unwrap(), bare);
    }
}
