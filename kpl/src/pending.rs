//! User records and Kinesis records while they move through the pipeline.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::aggregation::EncodedRecord;
use crate::receipt::{Attempt, Completion, RecordError, RecordResult};
use crate::stats::Released;
use crate::HashKey;

/// A user record accepted by the producer and not yet completed.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Position in arrival order, assigned by the pipeline.
    pub id: u64,
    pub partition_key: String,
    /// The payload. Once packed into an aggregate, a slice of the aggregate's bytes (the
    /// user's buffer is released, so the payload is held once).
    pub data: Bytes,
    /// The hash key that places the record on a shard, computed once.
    pub hash_key: HashKey,
    /// Whether `hash_key` is sent as the explicit hash key (the user's, or one
    /// assigned to spread a hot key) rather than derived from the partition key.
    pub explicit: bool,
    /// Whether the user gave the explicit hash key (a hot-key spread never moves it).
    pub user_hash_key: bool,
    /// When the pipeline accepted it (set then).
    pub arrived: Instant,
    pub expires: Instant,
    /// Attempts made while it travelled in earlier Kinesis records (before a resend or
    /// a re-aggregation); the current Kinesis record holds the later ones.
    pub attempts: Vec<Attempt>,
    /// Where the outcome goes; `None` once completed. While it is set, the record holds
    /// one permit of the producer's record semaphore and `size()` of its byte semaphore.
    pub completion: Option<Completion>,
}

impl Pending {
    /// Bytes it counts for: data plus partition key.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// The explicit hash key sent to Kinesis, if any.
    pub fn explicit_hash_key(&self) -> Option<HashKey> {
        self.explicit.then_some(self.hash_key)
    }

    /// Routes the record by `key` (`None`: by its partition key's hash).
    pub fn set_explicit_hash_key(&mut self, key: Option<HashKey>) {
        self.explicit = key.is_some();
        self.hash_key = key.unwrap_or_else(|| HashKey::from_partition_key(&self.partition_key));
    }

    /// Sends the outcome to the waiting receipt and releases the buffer space.
    pub fn complete(
        &mut self,
        outcome: Result<RecordResult, RecordError>,
        released: &mut Released,
    ) {
        if let Some(completion) = self.completion.take() {
            released.add(self.size());
            completion.complete(outcome);
        }
    }

    /// Every attempt: its own earlier ones, then those of the Kinesis record that
    /// carried it last.
    pub fn all_attempts(&mut self, carrier: &[Attempt]) -> Vec<Attempt> {
        let mut attempts = std::mem::take(&mut self.attempts);
        attempts.extend_from_slice(carrier);
        attempts
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
    /// The earliest expiry of its user records.
    pub expires: Instant,
    /// The lowest id of its user records (what a flush forces).
    pub min_id: u64,
    /// Failed attempts so far, for the backoff.
    pub failures: u32,
    /// Attempts of this Kinesis record (shared history of its user records).
    pub attempts: Vec<Attempt>,
}

impl Outgoing {
    /// One user record sent as it is.
    pub fn single(shard: Option<Arc<str>>, record: Pending, deadline: Instant) -> Self {
        let encoded = EncodedRecord {
            partition_key: record.partition_key.clone(),
            explicit_hash_key: record.explicit_hash_key().map(|k| k.to_string()),
            data: record.data.clone(),
            user_records: 1,
        };
        Outgoing {
            shard,
            encoded,
            expires: record.expires,
            min_id: record.id,
            records: vec![record],
            deadline,
            failures: 0,
            attempts: Vec::new(),
        }
    }

    /// A Kinesis record carrying `records`, encoded as `encoded`.
    pub fn new(
        shard: Option<Arc<str>>,
        encoded: EncodedRecord,
        records: Vec<Pending>,
        deadline: Instant,
    ) -> Self {
        let expires = records.iter().map(|r| r.expires).min().unwrap_or(deadline);
        let min_id = records.iter().map(|r| r.id).min().unwrap_or(u64::MAX);
        Outgoing {
            shard,
            encoded,
            records,
            deadline,
            expires,
            min_id,
            failures: 0,
            attempts: Vec::new(),
        }
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

    /// Its user records, each holding every attempt so far (to be routed again).
    pub fn into_records(self) -> Vec<Pending> {
        let mut records = self.records;
        if !self.attempts.is_empty() {
            for record in &mut records {
                record.attempts.extend_from_slice(&self.attempts);
            }
        }
        records
    }
}
