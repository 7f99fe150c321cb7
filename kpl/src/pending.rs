//! User records and Kinesis records while they move through the pipeline.
//!
//! A user record is a [`Pending`] until it is packed into a Kinesis record, then a
//! [`Carried`]: what completing it or sending it again needs, its partition key and
//! data read from the Kinesis record's own bytes. Most outstanding records wait inside
//! Kinesis records (collected, rate limited, in flight, backing off), so this is what
//! the producer holds per outstanding record: 64 bytes, and no copy of its key or data.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::aggregation::EncodedRecord;
use crate::key_cache::HashKeyCache;
use crate::receipt::{Attempt, Completion, Outcome, ReceiptChunk};
use crate::stats::Released;
use crate::{HashKey, Record};

/// Attempts a user record made in earlier Kinesis records (before a resend or a
/// re-aggregation), `None` for most records; the current Kinesis record holds the later
/// ones.
pub(crate) type EarlierAttempts = Option<Box<Vec<Attempt>>>;

/// Every attempt: the record's earlier ones, then those of the Kinesis record that
/// carried it last.
fn all_attempts(earlier: &mut EarlierAttempts, carrier: &[Attempt]) -> Vec<Attempt> {
    let mut attempts = earlier.take().map(|a| *a).unwrap_or_default();
    attempts.extend_from_slice(carrier);
    attempts
}

/// A user record admitted by a producer handle, on its way to the pipeline, which gives
/// it its id, arrival time and, unless the user gave one, its hash key.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub partition_key: String,
    pub data: Bytes,
    /// The user's explicit hash key, if any (two words rather than a `u128`, whose
    /// alignment would pad the struct); else the pipeline hashes the partition key,
    /// through its cache of recent keys.
    explicit_hash_key: Option<[u64; 2]>,
    pub completion: Option<Completion>,
}

impl Admitted {
    pub fn new(partition_key: String, data: Bytes, explicit_hash_key: Option<HashKey>) -> Self {
        Admitted {
            partition_key,
            data,
            explicit_hash_key: explicit_hash_key.map(|k| [(k.0 >> 64) as u64, k.0 as u64]),
            completion: None,
        }
    }

    /// Bytes it counts for: data plus partition key.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// The record as the pipeline accepts it: `id` in arrival order, `arrived` now, its
    /// hash key the user's or its partition key's MD5 (from `hash_keys`).
    pub fn accept(self, id: u64, arrived: Instant, hash_keys: &mut HashKeyCache) -> Pending {
        let hash_key = match self.explicit_hash_key {
            Some([high, low]) => HashKey((u128::from(high) << 64) | u128::from(low)),
            None => hash_keys.get(&self.partition_key),
        };
        let user_hash_key = self.explicit_hash_key.is_some();
        Pending {
            id,
            partition_key: self.partition_key,
            data: self.data,
            hash_key,
            explicit: user_hash_key,
            user_hash_key,
            arrived,
            attempts: None,
            completion: self.completion,
        }
    }
}

/// A user record accepted by the pipeline and not yet packed into a Kinesis record.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Position in arrival order, assigned by the pipeline.
    pub id: u64,
    pub partition_key: String,
    pub data: Bytes,
    /// The hash key that places the record on a shard, computed once.
    pub hash_key: HashKey,
    /// Whether `hash_key` is sent as the explicit hash key (the user's, or one
    /// assigned to spread a hot key) rather than derived from the partition key.
    pub explicit: bool,
    /// Whether the user gave the explicit hash key (a hot-key spread never moves it).
    pub user_hash_key: bool,
    /// When the pipeline accepted it.
    pub arrived: Instant,
    pub attempts: EarlierAttempts,
    /// Where the outcome goes. While it is set, the record holds one permit of the
    /// producer's record semaphore and `size()` of its byte semaphore.
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

    /// The record as carried at `data_at` of its Kinesis record's data, its partition
    /// key at `key_at` ([`OWN_KEY`]: the Kinesis record's own partition key), in a
    /// Kinesis record whose oldest user record arrived at `oldest`. Its completion and
    /// attempts move to it; its key and data stay for the caller to drop or move into
    /// the Kinesis record. A record placed by an explicit hash key adds it to
    /// `explicit_keys` (the Kinesis record's [`Outgoing::explicit_keys`]).
    pub fn carried(
        &mut self,
        key_at: u32,
        data_at: u32,
        oldest: Instant,
        explicit_keys: &mut Vec<(u64, HashKey)>,
    ) -> Carried {
        let (receipt, slot) = match self.completion.take() {
            Some(completion) => completion.into_parts(),
            None => (None, 0),
        };
        let mut flags = 0;
        if self.explicit {
            flags |= EXPLICIT;
            explicit_keys.push((self.id, self.hash_key));
        }
        if self.user_hash_key {
            flags |= USER_HASH_KEY;
        }
        Carried {
            id: self.id,
            // Below 2^64 ns (584 years).
            arrived_after: self.arrived.saturating_duration_since(oldest).as_nanos() as u64,
            receipt,
            attempts: self.attempts.take(),
            key_at,
            // Kinesis partition keys have at most 256 characters (1,024 bytes), and
            // records at most 10 MiB: both were checked when the record was accepted.
            key_len: self.partition_key.len() as u16,
            data_at,
            data_len: self.data.len() as u32,
            slot,
            flags,
        }
    }
}

/// `key_at` of a user record sent as its own Kinesis record.
pub(crate) const OWN_KEY: u32 = u32::MAX;

/// [`Carried::flags`]: its hash key is sent as the explicit hash key.
const EXPLICIT: u8 = 1;
/// [`Carried::flags`]: the user gave the explicit hash key.
const USER_HASH_KEY: u8 = 2;

/// A user record inside a Kinesis record (see the module's documentation): 48 bytes,
/// so its fields are packed (times as offsets, flags as bits, its receipt's chunk and
/// slot rather than a [`Completion`]), and its hash key is not kept: its partition
/// key's MD5, computed again on the rare paths that need it, or an explicit hash key
/// kept by its Kinesis record ([`Outgoing::hash_key_of`]).
#[derive(Debug)]
pub(crate) struct Carried {
    pub id: u64,
    /// When it arrived: nanoseconds after its Kinesis record's `oldest`.
    arrived_after: u64,
    /// Its receipt's chunk, `None` once completed, and its slot there: where the
    /// outcome goes (see [`Pending::completion`]).
    receipt: Option<Arc<ReceiptChunk>>,
    pub attempts: EarlierAttempts,
    key_at: u32,
    data_at: u32,
    data_len: u32,
    key_len: u16,
    slot: u8,
    /// [`EXPLICIT`], [`USER_HASH_KEY`].
    flags: u8,
}

impl Drop for Carried {
    /// Dropped before it completed (the pipeline stopped): its receipt resolves to
    /// [`RecordError::Abandoned`](crate::RecordError::Abandoned).
    fn drop(&mut self) {
        drop(self.completion());
    }
}

impl Carried {
    /// Whether its hash key is sent as the explicit hash key.
    pub fn explicit(&self) -> bool {
        self.flags & EXPLICIT != 0
    }

    /// Whether the user gave the explicit hash key.
    pub fn user_hash_key(&self) -> bool {
        self.flags & USER_HASH_KEY != 0
    }

    /// Where the outcome goes, taken (`None` once taken or completed).
    fn completion(&mut self) -> Option<Completion> {
        let chunk = self.receipt.take()?;
        Some(Completion::from_parts(chunk, self.slot))
    }

    /// Bytes it counts for: data plus partition key.
    pub fn size(&self) -> usize {
        self.data_len as usize + usize::from(self.key_len)
    }

    /// Whether it made no attempt before its current Kinesis record.
    pub fn is_fresh(&self) -> bool {
        self.attempts.is_none()
    }

    /// Every attempt: its own earlier ones, then those of the Kinesis record that
    /// carried it last.
    pub fn all_attempts(&mut self, carrier: &[Attempt]) -> Vec<Attempt> {
        all_attempts(&mut self.attempts, carrier)
    }

    /// Sends the outcome to the waiting receipt and releases the buffer space.
    pub fn complete(&mut self, outcome: Outcome, released: &mut Released) {
        if let Some(completion) = self.completion() {
            released.add(self.size());
            completion.complete(outcome);
        }
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
    pub records: Vec<Carried>,
    /// When it must be sent at the latest: its first user record's arrival plus the
    /// maximum buffering time.
    pub deadline: Instant,
    /// The earliest arrival of its user records (the first to expire).
    pub oldest: Instant,
    /// The explicit hash keys of its user records placed by one, by id (empty for
    /// most).
    explicit_keys: Vec<(u64, HashKey)>,
    /// The lowest id of its user records (what a flush forces).
    pub min_id: u64,
    /// Failed attempts so far, for the backoff.
    pub failures: u32,
    /// Attempts of this Kinesis record (shared history of its user records).
    pub attempts: Vec<Attempt>,
}

impl Outgoing {
    /// One user record sent as it is.
    pub fn single(shard: Option<Arc<str>>, mut record: Pending, deadline: Instant) -> Self {
        let oldest = record.arrived;
        let mut explicit_keys = Vec::new();
        let carried = record.carried(OWN_KEY, 0, oldest, &mut explicit_keys);
        let explicit_hash_key = record.explicit_hash_key().map(|k| k.to_string());
        let encoded = EncodedRecord::new(record.partition_key, explicit_hash_key, record.data, 1);
        Outgoing::carrying(
            shard,
            encoded,
            vec![carried],
            deadline,
            oldest,
            explicit_keys,
        )
    }

    /// The hash key that places `record`, one of its user records.
    pub fn hash_key_of(&self, record: &Carried) -> HashKey {
        if record.explicit() {
            if let Some((_, key)) = self.explicit_keys.iter().find(|(id, _)| *id == record.id) {
                return *key;
            }
        }
        HashKey::from_partition_key(self.key_of(record))
    }

    /// When `record`, one of its user records, arrived.
    pub fn arrival_of(&self, record: &Carried) -> Instant {
        self.oldest + Duration::from_nanos(record.arrived_after)
    }

    /// A Kinesis record without user records (tests of the stages that only look at
    /// its bytes).
    #[cfg(test)]
    pub fn new(
        shard: Option<Arc<str>>,
        encoded: EncodedRecord,
        records: Vec<Carried>,
        deadline: Instant,
    ) -> Self {
        assert!(records.is_empty());
        Outgoing::carrying(shard, encoded, records, deadline, deadline, Vec::new())
    }

    /// A Kinesis record carrying `records`, encoded as `encoded`; `oldest` is the
    /// earliest arrival of its user records (their arrivals are kept relative to it),
    /// `explicit_keys` the hash keys of those placed by an explicit one.
    pub fn carrying(
        shard: Option<Arc<str>>,
        encoded: EncodedRecord,
        records: Vec<Carried>,
        deadline: Instant,
        oldest: Instant,
        explicit_keys: Vec<(u64, HashKey)>,
    ) -> Self {
        let min_id = records.iter().map(|r| r.id).min().unwrap_or(u64::MAX);
        Outgoing {
            shard,
            encoded,
            records,
            deadline,
            oldest,
            explicit_keys,
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

    /// The partition key of `record`, one of its user records.
    pub fn key_of(&self, record: &Carried) -> &str {
        if record.key_at == OWN_KEY {
            return &self.encoded.partition_key;
        }
        let at = record.key_at as usize;
        self.encoded
            .data
            .get(at..at + usize::from(record.key_len))
            .and_then(|key| std::str::from_utf8(key).ok())
            .unwrap_or_default()
    }

    /// The data of `record`, one of its user records (a slice of its own data).
    pub fn data_of(&self, record: &Carried) -> Bytes {
        let at = record.data_at as usize;
        self.encoded.data.slice(at..at + record.data_len as usize)
    }

    /// `record`, one of its user records, as the caller sent it (given back when it
    /// fails): its key, a slice of the data, and the hash key if the caller gave one.
    pub fn user_record(&self, record: &Carried) -> Box<Record> {
        let user = Record::new(self.key_of(record), self.data_of(record));
        Box::new(if record.user_hash_key() {
            user.with_hash_key(self.hash_key_of(record))
        } else {
            user
        })
    }

    /// Its user records, unpacked, each holding every attempt so far (to be routed
    /// again).
    pub fn into_records(mut self) -> Vec<Pending> {
        let carried = std::mem::take(&mut self.records);
        carried
            .into_iter()
            .map(|mut record| {
                let mut attempts = record.attempts.take();
                if !self.attempts.is_empty() {
                    attempts
                        .get_or_insert_with(Box::default)
                        .extend_from_slice(&self.attempts);
                }
                Pending {
                    id: record.id,
                    partition_key: self.key_of(&record).to_owned(),
                    data: self.data_of(&record),
                    hash_key: self.hash_key_of(&record),
                    explicit: record.explicit(),
                    user_hash_key: record.user_hash_key(),
                    arrived: self.arrival_of(&record),
                    attempts,
                    completion: record.completion(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_record_is_small() {
        // What the producer holds per outstanding user record besides its receipt.
        assert!(
            std::mem::size_of::<Carried>() <= 48,
            "{}",
            std::mem::size_of::<Carried>()
        );
    }
}
