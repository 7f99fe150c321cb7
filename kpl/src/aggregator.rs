//! The aggregator: one open KPL aggregate per predicted shard, never mixing shards.
//!
//! It encodes the aggregation format itself (byte for byte what
//! [`AggregateBuilder`](crate::aggregation::AggregateBuilder) writes) from the records
//! it holds, so a user record costs no copy of its partition key: keys are interned by
//! the MD5 hash the producer already computed to place the record.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use md5::{Digest, Md5};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use tokio::time::Instant;

use crate::aggregation::{AGGREGATE_PARTITION_KEY, DIGEST_LEN, MAGIC};
use crate::pending::{Carried, Outgoing, Pending};
use crate::HashKey;

/// Hashes a `u64` that is already uniformly distributed (bits of an MD5) as itself.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdentityMap<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// Length of a length-delimited protobuf field with a one-byte tag.
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Length of a varint protobuf field with a one-byte tag.
fn varint_field_len(value: u64) -> usize {
    1 + encoded_len_varint(value)
}

/// Digits of a hash key written in decimal.
fn decimal_len(key: HashKey) -> usize {
    key.0.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Length of a user record's `Record` message.
fn record_len(key_index: u32, hash_key_index: Option<u32>, data_len: usize) -> usize {
    varint_field_len(u64::from(key_index))
        + hash_key_index.map_or(0, |i| varint_field_len(u64::from(i)))
        + delimited_len(data_len)
}

/// An aggregate being filled for one shard.
#[derive(Debug, Default)]
struct OpenAggregate {
    shard: Option<Arc<str>>,
    records: Vec<Pending>,
    /// Per record: its index in the partition key table, and in the explicit hash key
    /// table if it has one.
    indexes: Vec<(u32, Option<u32>)>,
    /// The partition key table: for each distinct key, the first record holding it.
    keys: Vec<u32>,
    /// Key table indexes by 64 bits of the key's MD5 (the first key with those bits).
    key_lookup: IdentityMap<u32>,
    /// The explicit hash key table, and its indexes by the key's low 64 bits.
    hash_keys: Vec<HashKey>,
    hash_key_lookup: IdentityMap<u32>,
    /// Encoded length of the protobuf message so far.
    message_len: usize,
    deadline: Option<Instant>,
    /// Lowest id of its records (a flush forces aggregates holding older records).
    min_id: u64,
}

impl OpenAggregate {
    /// 64 bits identifying the partition key: from the MD5 the record is placed by, or
    /// computed when it is placed by an explicit hash key.
    fn key_bits(record: &Pending) -> u64 {
        if record.explicit {
            HashKey::from_partition_key(&record.partition_key).0 as u64
        } else {
            record.hash_key.0 as u64
        }
    }

    /// The partition key table index of `record`'s key, if present.
    fn key_index(&self, record: &Pending, bits: u64) -> Option<u32> {
        let same = |i: u32| {
            self.records[self.keys[i as usize] as usize].partition_key == record.partition_key
        };
        match self.key_lookup.get(&bits) {
            Some(&i) if same(i) => Some(i),
            // Two keys with the same MD5 bits: rare enough for a scan.
            Some(_) => (0..self.keys.len() as u32).find(|&i| same(i)),
            None => None,
        }
    }

    fn hash_key_index(&self, key: HashKey) -> Option<u32> {
        match self.hash_key_lookup.get(&(key.0 as u64)) {
            Some(&i) if self.hash_keys[i as usize] == key => Some(i),
            Some(_) => {
                (0..self.hash_keys.len() as u32).find(|&i| self.hash_keys[i as usize] == key)
            }
            None => None,
        }
    }

    /// Bytes the aggregate's data would have with `record` added.
    fn encoded_len_with(&self, record: &Pending, bits: u64) -> usize {
        let (key_index, key_added) = match self.key_index(record, bits) {
            Some(i) => (i, 0),
            None => (
                self.keys.len() as u32,
                delimited_len(record.partition_key.len()),
            ),
        };
        let (hash_index, hash_added) = match record.explicit_hash_key() {
            Some(key) => match self.hash_key_index(key) {
                Some(i) => (Some(i), 0),
                None => (
                    Some(self.hash_keys.len() as u32),
                    delimited_len(decimal_len(key)),
                ),
            },
            None => (None, 0),
        };
        let added = key_added
            + hash_added
            + delimited_len(record_len(key_index, hash_index, record.data.len()));
        MAGIC.len() + self.message_len + added + DIGEST_LEN
    }

    fn push(&mut self, record: Pending, bits: u64) {
        let key_index = match self.key_index(&record, bits) {
            Some(i) => i,
            None => {
                let i = self.keys.len() as u32;
                self.message_len += delimited_len(record.partition_key.len());
                self.keys.push(self.records.len() as u32);
                self.key_lookup.entry(bits).or_insert(i);
                i
            }
        };
        let hash_index = record.explicit_hash_key().map(|key| {
            self.hash_key_index(key).unwrap_or_else(|| {
                let i = self.hash_keys.len() as u32;
                self.message_len += delimited_len(decimal_len(key));
                self.hash_keys.push(key);
                self.hash_key_lookup.entry(key.0 as u64).or_insert(i);
                i
            })
        });
        self.message_len += delimited_len(record_len(key_index, hash_index, record.data.len()));
        self.indexes.push((key_index, hash_index));
        self.records.push(record);
    }

    /// Encodes the held records as one Kinesis record (a single record goes as itself,
    /// as the KPL sends it) and empties the aggregate.
    fn finish(&mut self) -> Option<Outgoing> {
        let deadline = self.deadline.take()?;
        let shard = self.shard.clone();
        let count = self.records.len();
        let keys = self.keys.len();
        let hash_keys = self.hash_keys.len();
        self.key_lookup.clear();
        self.hash_key_lookup.clear();
        let message_len = std::mem::take(&mut self.message_len);
        let outgoing = if count == 1 {
            let record = self.records.pop()?;
            Outgoing::single(shard, record, deadline)
        } else {
            let oldest = self.records.iter().map(|r| r.arrived).min()?;
            let mut explicit_keys = Vec::new();
            let (encoded, carried) = self.encode(message_len, oldest, &mut explicit_keys)?;
            Outgoing::carrying(shard, encoded, carried, deadline, oldest, explicit_keys)
        };
        // The lists keep room for about as many records as this aggregate held: the
        // next one of a busy shard fills without regrowing them by doubling, an idle
        // shard's hold little.
        fn reset<T>(list: &mut Vec<T>, used: usize) {
            list.clear();
            if list.capacity() > 2 * used + 8 {
                list.shrink_to(used);
            }
        }
        reset(&mut self.records, count);
        reset(&mut self.indexes, count);
        reset(&mut self.keys, keys);
        reset(&mut self.hash_keys, hash_keys);
        Some(outgoing)
    }

    /// The aggregate of the held records (at least two), and each record as it is
    /// carried in it: its key and data are read from the aggregate from now on, and
    /// the user's own buffers are freed.
    fn encode(
        &mut self,
        message_len: usize,
        oldest: Instant,
        explicit_keys: &mut Vec<(u64, HashKey)>,
    ) -> Option<(crate::aggregation::EncodedRecord, Vec<Carried>)> {
        let mut data = BytesMut::with_capacity(MAGIC.len() + message_len + DIGEST_LEN);
        data.put_slice(&MAGIC);
        let mut key_offsets = Vec::with_capacity(self.keys.len());
        for &first in &self.keys {
            let key = &self.records[first as usize].partition_key;
            encode_key(1, WireType::LengthDelimited, &mut data);
            encode_varint(key.len() as u64, &mut data);
            key_offsets.push(data.len() as u32);
            data.put_slice(key.as_bytes());
        }
        for key in &self.hash_keys {
            let decimal = key.to_string();
            encode_key(2, WireType::LengthDelimited, &mut data);
            encode_varint(decimal.len() as u64, &mut data);
            data.put_slice(decimal.as_bytes());
        }
        let mut data_offsets = Vec::with_capacity(self.records.len());
        for (record, &(key_index, hash_index)) in self.records.iter().zip(&self.indexes) {
            encode_key(3, WireType::LengthDelimited, &mut data);
            encode_varint(
                record_len(key_index, hash_index, record.data.len()) as u64,
                &mut data,
            );
            encode_key(1, WireType::Varint, &mut data);
            encode_varint(u64::from(key_index), &mut data);
            if let Some(index) = hash_index {
                encode_key(2, WireType::Varint, &mut data);
                encode_varint(u64::from(index), &mut data);
            }
            encode_key(3, WireType::LengthDelimited, &mut data);
            encode_varint(record.data.len() as u64, &mut data);
            // An aggregate is at most 10 MiB (checked at build).
            data_offsets.push(data.len() as u32);
            data.put_slice(&record.data);
        }
        debug_assert_eq!(data.len(), MAGIC.len() + message_len);
        let digest = Md5::digest(&data[MAGIC.len()..]);
        data.put_slice(&digest);
        let first_hash_key = self.records.first().map(|r| r.hash_key)?;
        let carried = self
            .records
            .drain(..)
            .zip(&self.indexes)
            .zip(data_offsets)
            .map(|((mut record, &(key_index, _)), data_at)| {
                record.carried(
                    key_offsets[key_index as usize],
                    data_at,
                    oldest,
                    explicit_keys,
                )
            })
            .collect();
        let encoded = crate::aggregation::EncodedRecord::new(
            AGGREGATE_PARTITION_KEY,
            Some(first_hash_key.to_string()),
            data.freeze(),
            self.indexes.len(),
        );
        Some((encoded, carried))
    }
}

/// Packs user records predicted for the same shard into aggregates of at most
/// `max_count` records and `max_size` bytes of data. Aggregates are kept by the
/// shard's position in the shard map (the map changes only with the aggregator empty).
#[derive(Debug)]
pub(crate) struct Aggregator {
    max_count: usize,
    max_size: usize,
    open: Vec<OpenAggregate>,
    /// Positions of the aggregates holding records.
    active: Vec<usize>,
    /// User records in open aggregates.
    records: usize,
}

impl Aggregator {
    pub fn new(max_count: usize, max_size: usize) -> Self {
        Aggregator {
            max_count: max_count.max(1),
            max_size,
            open: Vec::new(),
            active: Vec::new(),
            records: 0,
        }
    }

    /// Adds a record predicted for `shard`, at position `slot` of the shard map, due to
    /// be sent by `deadline`. Aggregates that become full go to `out`.
    pub fn add(
        &mut self,
        slot: usize,
        shard: &Arc<str>,
        record: Pending,
        deadline: Instant,
        out: &mut Vec<Outgoing>,
    ) {
        if slot >= self.open.len() {
            self.open.resize_with(slot + 1, OpenAggregate::default);
        }
        let open = &mut self.open[slot];
        let bits = OpenAggregate::key_bits(&record);
        if open.encoded_len_with(&record, bits) > self.max_size {
            let alone = OpenAggregate::default().encoded_len_with(&record, bits);
            if alone > self.max_size {
                // Too big to share an aggregate: it goes alone, as itself, after the
                // shard's open aggregate, which holds records sent before it (of its key,
                // perhaps: per-key order is the order records leave here).
                if !open.records.is_empty() {
                    self.records -= open.records.len();
                    out.extend(open.finish());
                }
                out.push(Outgoing::single(Some(shard.clone()), record, deadline));
                return;
            }
            if !open.records.is_empty() {
                self.records -= open.records.len();
                out.extend(open.finish());
            }
        } else if open.records.len() >= self.max_count {
            self.records -= open.records.len();
            out.extend(open.finish());
        }
        if open.records.is_empty() {
            if open.shard.as_ref() != Some(shard) {
                open.shard = Some(shard.clone());
            }
            open.min_id = record.id;
            open.deadline = Some(deadline);
            if !self.active.contains(&slot) {
                self.active.push(slot);
            }
        } else {
            open.min_id = open.min_id.min(record.id);
            open.deadline = open.deadline.map(|d| d.min(deadline));
        }
        open.push(record, bits);
        self.records += 1;
        if open.records.len() >= self.max_count {
            self.records -= open.records.len();
            out.extend(open.finish());
        }
    }

    /// Finishes the aggregates due by `now` or holding a record with an id below
    /// `force_before`; every one when `all`.
    pub fn flush(&mut self, now: Instant, force_before: u64, all: bool, out: &mut Vec<Outgoing>) {
        if self.records == 0 {
            self.active.clear();
            return;
        }
        let open = &mut self.open;
        let records = &mut self.records;
        self.active.retain(|&slot| {
            let aggregate = &mut open[slot];
            let due = aggregate
                .deadline
                .is_some_and(|d| all || d <= now || aggregate.min_id < force_before);
            if due {
                *records -= aggregate.records.len();
                out.extend(aggregate.finish());
            }
            !aggregate.records.is_empty()
        });
    }

    /// When the next aggregate is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active
            .iter()
            .filter_map(|&slot| self.open[slot].deadline)
            .min()
    }

    /// User records waiting in open aggregates.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Takes every user record out of the open aggregates, unsent (after a shard map
    /// change their predictions may be wrong). Positions are forgotten: the next map
    /// may order its shards differently.
    pub fn drain_records(&mut self) -> Vec<Pending> {
        self.records = 0;
        self.active.clear();
        let mut records: Vec<Pending> = std::mem::take(&mut self.open)
            .into_iter()
            .flat_map(|open| open.records)
            .collect();
        records.sort_by_key(|r| r.id);
        records
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::aggregation::deaggregate;
    use crate::pending::Pending;

    pub(crate) fn pending(id: u64, key: &str, len: usize) -> Pending {
        let now = Instant::now();
        Pending {
            id,
            partition_key: key.to_owned(),
            data: Bytes::from(vec![b'x'; len]),
            hash_key: crate::HashKey::from_partition_key(key),
            explicit: false,
            user_hash_key: false,
            arrived: now,
            attempts: None,
            completion: None,
        }
    }

    fn shard(id: &str) -> Arc<str> {
        Arc::from(id)
    }

    #[tokio::test]
    async fn never_mixes_shards() {
        let mut aggregator = Aggregator::new(usize::MAX, 51_200);
        let mut out = Vec::new();
        let now = Instant::now();
        for i in 0..10u64 {
            let s = if i % 2 == 0 { "even" } else { "odd" };
            let slot = if s == "even" { 0 } else { 1 };
            aggregator.add(
                slot,
                &shard(s),
                pending(i, &format!("k{i}"), 10),
                now,
                &mut out,
            );
        }
        assert!(out.is_empty());
        aggregator.flush(now, 0, true, &mut out);
        assert_eq!(out.len(), 2);
        for o in &out {
            let expected_parity = if &**o.shard.as_ref().expect("shard") == "even" {
                0
            } else {
                1
            };
            assert!(o.records.iter().all(|r| r.id % 2 == expected_parity));
            let users = deaggregate(&o.encoded.partition_key, None, o.encoded.data.clone());
            assert_eq!(users.len(), 5);
        }
    }

    #[tokio::test]
    async fn respects_count_and_size_limits() {
        let mut aggregator = Aggregator::new(3, 51_200);
        let mut out = Vec::new();
        let now = Instant::now();
        for i in 0..7 {
            aggregator.add(0, &shard("s"), pending(i, "k", 10), now, &mut out);
        }
        assert_eq!(
            out.iter().map(|o| o.records.len()).collect::<Vec<_>>(),
            [3, 3]
        );

        let mut aggregator = Aggregator::new(usize::MAX, 1_000);
        let mut out = Vec::new();
        for i in 0..100 {
            aggregator.add(0, &shard("s"), pending(i, "k", 100), now, &mut out);
        }
        aggregator.flush(now, 0, true, &mut out);
        assert!(out.iter().all(|o| o.encoded.data.len() <= 1_000));
        assert_eq!(out.iter().map(|o| o.records.len()).sum::<usize>(), 100);
        let ids: Vec<u64> = out
            .iter()
            .flat_map(|o| o.records.iter().map(|r| r.id))
            .collect();
        assert_eq!(ids, (0..100).collect::<Vec<_>>(), "order kept");
    }

    #[tokio::test]
    async fn oversized_records_go_alone_and_raw_after_what_came_before() {
        let mut aggregator = Aggregator::new(usize::MAX, 1_000);
        let mut out = Vec::new();
        let now = Instant::now();
        aggregator.add(0, &shard("s"), pending(0, "k", 10), now, &mut out);
        aggregator.add(1, &shard("t"), pending(1, "k", 10), now, &mut out);
        aggregator.add(0, &shard("s"), pending(2, "big", 5_000), now, &mut out);
        // The shard's open aggregate goes first, so the big record does not overtake the
        // record sent before it; the other shard's stays open.
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].records.iter().map(|r| r.id).collect::<Vec<_>>(), [0]);
        assert_eq!(out[1].encoded.partition_key, "big");
        assert_eq!(out[1].encoded.data.len(), 5_000);
        assert_eq!(out[1].records[0].id, 2);
        assert_eq!(aggregator.len(), 1);
    }

    proptest::proptest! {
        /// The aggregator writes the very bytes the public `AggregateBuilder` writes,
        /// partition keys shared or not, explicit hash keys or not.
        #[test]
        fn encodes_exactly_as_the_aggregate_builder(
            records in proptest::collection::vec(
                (0usize..20, proptest::option::of(0u128..5), proptest::collection::vec(0u8..255, 0..300)),
                2..80,
            )
        ) {
            let now = Instant::now();
            let mut aggregator = Aggregator::new(usize::MAX, 1_000_000);
            let mut builder = crate::aggregation::AggregateBuilder::new();
            let mut out = Vec::new();
            for (i, (key, hash, data)) in records.iter().enumerate() {
                let key = format!("key-{key}");
                let mut record = pending(i as u64, &key, 0);
                record.data = Bytes::from(data.clone());
                record.set_explicit_hash_key(hash.map(|h| HashKey(h * 1_000_003)));
                builder.push(&key, record.explicit_hash_key(), record.data.clone());
                aggregator.add(0, &shard("s"), record, now, &mut out);
            }
            aggregator.flush(now, 0, true, &mut out);
            proptest::prop_assert_eq!(out.len(), 1);
            let expected = builder.finish().expect("records");
            proptest::prop_assert_eq!(&out[0].encoded, &expected);
            for (record, (key, _, data)) in out[0].records.iter().zip(&records) {
                proptest::prop_assert_eq!(&out[0].data_of(record)[..], &data[..], "payload slice");
                proptest::prop_assert_eq!(out[0].key_of(record), format!("key-{key}"));
            }
        }
    }

    #[tokio::test]
    async fn unpacked_records_keep_their_hash_key_arrival_and_receipt() {
        let mut aggregator = Aggregator::new(usize::MAX, 51_200);
        let mut slots = crate::receipt::ReceiptSlots::default();
        let mut receipts = Vec::new();
        let mut out = Vec::new();
        let t0 = Instant::now();
        let mut expected = Vec::new();
        for i in 0..6u64 {
            let mut record = pending(i, &format!("k{}", i % 3), 10);
            record.arrived = t0 + Duration::from_millis(7 * i);
            if i % 2 == 1 {
                record.set_explicit_hash_key(Some(HashKey(u128::from(i) << 100)));
            }
            let (receipt, completion) = slots.next();
            receipts.push(receipt);
            record.completion = Some(completion);
            expected.push((record.hash_key, record.explicit, record.arrived));
            aggregator.add(0, &shard("s"), record, t0, &mut out);
        }
        aggregator.flush(t0, 0, true, &mut out);
        let aggregate = out.pop().expect("one aggregate");
        assert_eq!(aggregate.oldest, t0);
        let unpacked = aggregate.into_records();
        let got: Vec<_> = unpacked
            .iter()
            .map(|r| (r.hash_key, r.explicit, r.arrived))
            .collect();
        assert_eq!(got, expected);
        // The receipts follow the records: dropped unfinished, they are abandoned.
        drop(unpacked);
        for receipt in receipts {
            assert_eq!(receipt.await, Err(crate::RecordError::Abandoned));
        }
    }

    #[tokio::test]
    async fn flushes_by_deadline() {
        let mut aggregator = Aggregator::new(usize::MAX, 51_200);
        let mut out = Vec::new();
        let now = Instant::now();
        let later = now + Duration::from_millis(100);
        aggregator.add(0, &shard("a"), pending(0, "k", 10), now, &mut out);
        aggregator.add(1, &shard("b"), pending(1, "k", 10), later, &mut out);
        assert_eq!(aggregator.next_deadline(), Some(now));
        aggregator.flush(now, 0, false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(aggregator.next_deadline(), Some(later));
        let drained = aggregator.drain_records();
        assert_eq!(drained.len(), 1);
        assert_eq!(aggregator.next_deadline(), None);
    }
}
