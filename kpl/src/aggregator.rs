//! The aggregator: one open KPL aggregate per predicted shard, never mixing shards.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::aggregation::AggregateBuilder;
use crate::pending::{Outgoing, Pending};

/// An aggregate being filled for one shard.
#[derive(Debug, Default)]
struct OpenAggregate {
    builder: AggregateBuilder,
    records: Vec<Pending>,
    deadline: Option<Instant>,
    /// Lowest id of its records (a flush forces aggregates holding older records).
    min_id: u64,
}

/// Packs user records predicted for the same shard into aggregates of at most
/// `max_count` records and `max_size` bytes of data.
#[derive(Debug)]
pub(crate) struct Aggregator {
    max_count: usize,
    max_size: usize,
    open: HashMap<Arc<str>, OpenAggregate>,
    /// User records in open aggregates.
    records: usize,
    offsets: Vec<usize>,
}

impl Aggregator {
    pub fn new(max_count: usize, max_size: usize) -> Self {
        Aggregator {
            max_count: max_count.max(1),
            max_size,
            open: HashMap::new(),
            records: 0,
            offsets: Vec::new(),
        }
    }

    /// Adds a record predicted for `shard`, due to be sent by `deadline`. Aggregates that
    /// become full go to `out`.
    pub fn add(
        &mut self,
        shard: Arc<str>,
        record: Pending,
        deadline: Instant,
        out: &mut Vec<Outgoing>,
    ) {
        let open = match self.open.get_mut(&shard) {
            Some(open) => open,
            None => self.open.entry(shard.clone()).or_default(),
        };
        let fits = open.builder.fits(
            &record.partition_key,
            record.explicit_hash_key().as_ref(),
            record.data.len(),
            self.max_size,
        );
        if !fits {
            let alone_len = AggregateBuilder::new().encoded_len_with(
                &record.partition_key,
                record.explicit_hash_key().as_ref(),
                record.data.len(),
            );
            if alone_len > self.max_size {
                // Too big to share an aggregate: it goes alone, as itself.
                out.push(Outgoing::single(Some(shard), record, deadline));
                return;
            }
        }
        if (!fits || open.records.len() >= self.max_count) && !open.records.is_empty() {
            self.records -= open.records.len();
            out.extend(Self::finish(shard.clone(), open, &mut self.offsets));
        }
        open.builder.push_hashed(
            &record.partition_key,
            record.explicit_hash_key(),
            record.hash_key,
            record.data.clone(),
        );
        if open.records.is_empty() {
            open.min_id = record.id;
            open.deadline = Some(deadline);
        } else {
            open.min_id = open.min_id.min(record.id);
            open.deadline = open.deadline.map(|d| d.min(deadline));
        }
        open.records.push(record);
        self.records += 1;
        if open.records.len() >= self.max_count {
            self.records -= open.records.len();
            out.extend(Self::finish(shard, open, &mut self.offsets));
        }
    }

    fn finish(
        shard: Arc<str>,
        open: &mut OpenAggregate,
        offsets: &mut Vec<usize>,
    ) -> Option<Outgoing> {
        // The next aggregate of this shard likely holds as many: size its list once
        // instead of growing it by doubling (copies, and up to twice the memory).
        let next = Vec::with_capacity(open.records.len());
        let mut records = std::mem::replace(&mut open.records, next);
        let deadline = open.deadline.take()?;
        let encoded = open.builder.finish_with_offsets(offsets)?;
        if encoded.user_records > 1 {
            // Hold each payload as a slice of the aggregate: the user's buffer is freed
            // and the bytes are held once.
            for (record, &offset) in records.iter_mut().zip(offsets.iter()) {
                let len = record.data.len();
                record.data = encoded.data.slice(offset..offset + len);
            }
        }
        Some(Outgoing::new(Some(shard), encoded, records, deadline))
    }

    /// Finishes the aggregates due by `now` or holding a record with an id below
    /// `force_before`; every one when `all`.
    pub fn flush(&mut self, now: Instant, force_before: u64, all: bool, out: &mut Vec<Outgoing>) {
        if self.records == 0 {
            return;
        }
        for (shard, open) in &mut self.open {
            let due = open
                .deadline
                .is_some_and(|d| all || d <= now || open.min_id < force_before);
            if due {
                self.records -= open.records.len();
                out.extend(Self::finish(shard.clone(), open, &mut self.offsets));
            }
        }
        // Forget shards that went quiet so a resharded stream does not leave garbage.
        if self.open.len() > 2 * (self.records.max(1)) + 64 {
            self.open.retain(|_, open| !open.records.is_empty());
        }
    }

    /// When the next aggregate is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.records == 0 {
            return None;
        }
        self.open.values().filter_map(|o| o.deadline).min()
    }

    /// User records waiting in open aggregates.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Takes every user record out of the open aggregates, unsent (after a shard map
    /// change their predictions may be wrong).
    pub fn drain_records(&mut self) -> Vec<Pending> {
        self.records = 0;
        let mut records: Vec<Pending> = self
            .open
            .drain()
            .flat_map(|(_, mut open)| {
                open.builder = AggregateBuilder::new();
                open.records
            })
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
            expires: now + Duration::from_secs(30),
            attempts: Vec::new(),
            reply: None,
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
            aggregator.add(shard(s), pending(i, &format!("k{i}"), 10), now, &mut out);
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
            aggregator.add(shard("s"), pending(i, "k", 10), now, &mut out);
        }
        assert_eq!(
            out.iter().map(|o| o.records.len()).collect::<Vec<_>>(),
            [3, 3]
        );

        let mut aggregator = Aggregator::new(usize::MAX, 1_000);
        let mut out = Vec::new();
        for i in 0..100 {
            aggregator.add(shard("s"), pending(i, "k", 100), now, &mut out);
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
    async fn oversized_records_go_alone_and_raw() {
        let mut aggregator = Aggregator::new(usize::MAX, 1_000);
        let mut out = Vec::new();
        let now = Instant::now();
        aggregator.add(shard("s"), pending(0, "k", 10), now, &mut out);
        aggregator.add(shard("s"), pending(1, "big", 5_000), now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].encoded.partition_key, "big");
        assert_eq!(out[0].encoded.data.len(), 5_000);
        assert_eq!(aggregator.len(), 1);
    }

    #[tokio::test]
    async fn flushes_by_deadline() {
        let mut aggregator = Aggregator::new(usize::MAX, 51_200);
        let mut out = Vec::new();
        let now = Instant::now();
        let later = now + Duration::from_millis(100);
        aggregator.add(shard("a"), pending(0, "k", 10), now, &mut out);
        aggregator.add(shard("b"), pending(1, "k", 10), later, &mut out);
        assert_eq!(aggregator.next_deadline(), Some(now));
        aggregator.flush(now, 0, false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(aggregator.next_deadline(), Some(later));
        let drained = aggregator.drain_records();
        assert_eq!(drained.len(), 1);
        assert_eq!(aggregator.next_deadline(), None);
    }
}
