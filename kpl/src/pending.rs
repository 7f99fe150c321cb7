//! User records and Kinesis records while they move through the pipeline.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::aggregation::{AggregateBuilder, EncodedRecord};
use crate::receipt::{Attempt, RecordError, RecordResult};
use crate::HashKey;

/// Where a user record's result goes once known.
pub(crate) type Reply = oneshot::Sender<Result<RecordResult, RecordError>>;

/// Buffer space a user record holds until it completes: released on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    _records: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl Permit {
    pub(crate) fn new(records: OwnedSemaphorePermit, bytes: OwnedSemaphorePermit) -> Self {
        Permit {
            _records: records,
            _bytes: bytes,
        }
    }
}

/// A user record accepted by the producer and not yet completed.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Position in arrival order, assigned by the pipeline.
    pub id: u64,
    pub partition_key: String,
    pub data: Bytes,
    /// The explicit hash key sent to Kinesis, if any (the user's, or one assigned to
    /// spread a hot key).
    pub explicit_hash_key: Option<HashKey>,
    pub arrived: Instant,
    pub expires: Instant,
    pub attempts: Vec<Attempt>,
    pub reply: Option<Reply>,
    pub permit: Option<Permit>,
}

impl Pending {
    /// The hash key that places the record on a shard.
    pub fn hash_key(&self) -> HashKey {
        self.explicit_hash_key
            .unwrap_or_else(|| HashKey::from_partition_key(&self.partition_key))
    }

    /// Sends the outcome to the waiting receipt and releases the buffer space.
    pub fn complete(&mut self, outcome: Result<RecordResult, RecordError>) {
        if let Some(reply) = self.reply.take() {
            // The user may have dropped the receipt: nothing to tell then.
            let _ = reply.send(outcome);
        }
        self.permit = None;
    }

    pub fn take_attempts(&mut self) -> Vec<Attempt> {
        std::mem::take(&mut self.attempts)
    }
}

/// A Kinesis record (one user record, or an aggregate of several predicted for the same
/// shard) on its way to PutRecords.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The shard it is predicted to land on; `None` when the shard map does not know.
    pub shard: Option<Arc<str>>,
    pub encoded: EncodedRecord,
    /// The user records it carries, in sub-sequence order.
    pub records: Vec<Pending>,
    /// When it must be sent at the latest: its first user record's arrival plus the
    /// maximum buffering time.
    pub deadline: Instant,
    /// Failed attempts so far, for the backoff.
    pub failures: u32,
}

impl Outgoing {
    /// One user record sent as it is.
    pub fn single(shard: Option<Arc<str>>, record: Pending, deadline: Instant) -> Self {
        let encoded = EncodedRecord {
            partition_key: record.partition_key.clone(),
            explicit_hash_key: record.explicit_hash_key.map(|k| k.to_string()),
            data: record.data.clone(),
            user_records: 1,
        };
        Outgoing {
            shard,
            encoded,
            records: vec![record],
            deadline,
            failures: 0,
        }
    }

    /// An aggregate (or a single raw record) finished by `builder`.
    pub fn from_builder(
        shard: Option<Arc<str>>,
        builder: &mut AggregateBuilder,
        records: Vec<Pending>,
        deadline: Instant,
    ) -> Option<Self> {
        Some(Outgoing {
            shard,
            encoded: builder.finish()?,
            records,
            deadline,
            failures: 0,
        })
    }

    /// Bytes it counts for in PutRecords and against shard limits: data plus
    /// partition key.
    pub fn size(&self) -> usize {
        self.encoded.data.len() + self.encoded.partition_key.len()
    }

    /// Whether it carries several user records in the aggregation format.
    pub fn is_aggregate(&self) -> bool {
        self.encoded.user_records > 1
    }

    /// The earliest expiry of its user records.
    pub fn expires(&self) -> Option<Instant> {
        self.records.iter().map(|r| r.expires).min()
    }
}
