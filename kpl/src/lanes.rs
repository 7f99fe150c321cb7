//! Ordered mode ([`ProducerConfig::ordered`](crate::ProducerConfig::ordered)): one lane
//! per predicted shard, each letting one Kinesis record at a time go on to the rate
//! limiter and PutRecords.
//!
//! A record of a lane is *out* from its release until its call's answer (or its expiry)
//! comes back; only then may the lane's next record go. A record that failed comes back
//! into its lane with its backoff, ahead of everything newer (a lane is ordered by the
//! lowest user record id a Kinesis record holds), so a failed record's successors on its
//! shard wait until it is resolved. Records of different shards go independently.
//!
//! The pipeline keeps the rest: it routes records into lanes, tells a lane when its
//! record is back ([`Lanes::returned`]), and rebuilds the lanes when records must be
//! predicted again (a reshard, an aggregate that landed on an unexpected shard).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

use crate::pending::Outgoing;

/// A lane's key: the predicted shard (`None`: records the shard map could not place).
type LaneKey = Option<Arc<str>>;

#[derive(Debug, Default)]
struct Lane {
    /// Waiting Kinesis records, by the lowest id of their user records.
    waiting: BTreeMap<u64, Outgoing>,
    /// Records released and not back yet (0 or 1, but counted rather than assumed).
    out: usize,
    /// A record back from a failed attempt waits for its backoff until then.
    not_before: Option<Instant>,
}

/// The lanes of every predicted shard.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    lanes: HashMap<LaneKey, Lane>,
    waiting: usize,
}

impl Lanes {
    /// Queues a Kinesis record in its shard's lane.
    pub fn push(&mut self, record: Outgoing) {
        let lane = self.lanes.entry(record.shard.clone()).or_default();
        lane.waiting.insert(record.min_id, record);
        self.waiting += 1;
    }

    /// A record whose attempt failed, back in its lane, first, not before `at`.
    pub fn push_retry(&mut self, record: Outgoing, at: Instant) {
        let lane = self.lanes.entry(record.shard.clone()).or_default();
        lane.not_before = Some(lane.not_before.map_or(at, |t| t.max(at)));
        lane.waiting.insert(record.min_id, record);
        self.waiting += 1;
    }

    /// A released record of `shard`'s lane is back (answered, expired, or taken back).
    pub fn returned(&mut self, shard: &LaneKey) {
        if let Some(lane) = self.lanes.get_mut(shard) {
            lane.out = lane.out.saturating_sub(1);
        }
    }

    /// Releases the first record of every lane that has none out and whose backoff
    /// ended by `now`.
    pub fn release(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if self.waiting == 0 {
            return;
        }
        for lane in self.lanes.values_mut() {
            if lane.out > 0 || lane.not_before.is_some_and(|t| t > now) {
                continue;
            }
            if let Some((_, record)) = lane.waiting.pop_first() {
                lane.out += 1;
                lane.not_before = None;
                self.waiting -= 1;
                out.push(record);
            }
        }
        if self.lanes.len() > 64 {
            self.lanes
                .retain(|_, lane| lane.out > 0 || !lane.waiting.is_empty());
        }
    }

    /// When a lane waiting only for a backoff may release.
    pub fn next_ready(&self) -> Option<Instant> {
        self.lanes
            .values()
            .filter(|lane| lane.out == 0 && !lane.waiting.is_empty())
            .filter_map(|lane| lane.not_before)
            .min()
    }

    /// Whether a lane could release now (no backoff pending).
    pub fn has_ready(&self, now: Instant) -> bool {
        self.waiting > 0
            && self.lanes.values().any(|lane| {
                lane.out == 0
                    && !lane.waiting.is_empty()
                    && lane.not_before.is_none_or(|t| t <= now)
            })
    }

    /// Takes every waiting record out (to be predicted again); what is out stays out.
    pub fn drain_waiting(&mut self) -> Vec<Outgoing> {
        self.waiting = 0;
        let mut records = Vec::new();
        for lane in self.lanes.values_mut() {
            lane.not_before = None;
            records.extend(std::mem::take(&mut lane.waiting).into_values());
        }
        records
    }

    /// Kinesis records waiting in lanes.
    pub fn len(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::aggregation::EncodedRecord;

    fn record(shard: &str, min_id: u64) -> Outgoing {
        let mut record = Outgoing::new(
            Some(Arc::from(shard)),
            EncodedRecord::new("k", None, Bytes::from_static(b"x"), 1),
            Vec::new(),
            Instant::now(),
        );
        record.min_id = min_id;
        record
    }

    fn ids(records: &[Outgoing]) -> Vec<u64> {
        records.iter().map(|r| r.min_id).collect()
    }

    #[test]
    fn one_record_per_shard_is_out_and_the_next_waits_for_its_return() {
        let now = Instant::now();
        let mut lanes = Lanes::default();
        for (shard, id) in [("a", 1), ("a", 2), ("b", 3), ("a", 4)] {
            lanes.push(record(shard, id));
        }
        let mut out = Vec::new();
        lanes.release(now, &mut out);
        let mut released = ids(&out);
        released.sort_unstable();
        assert_eq!(released, [1, 3]);
        out.clear();
        lanes.release(now, &mut out);
        assert!(out.is_empty(), "nothing more until a record is back");
        lanes.returned(&Some(Arc::from("a")));
        lanes.release(now, &mut out);
        assert_eq!(ids(&out), [2]);
        assert_eq!(lanes.len(), 1);
    }

    #[test]
    fn a_failed_record_goes_first_after_its_backoff() {
        let now = Instant::now();
        let mut lanes = Lanes::default();
        lanes.push(record("a", 1));
        let mut out = Vec::new();
        lanes.release(now, &mut out);
        lanes.push(record("a", 5));
        lanes.push(record("a", 9));
        // Record 1 failed: it comes back, and waits for its backoff.
        let failed = out.pop().expect("released");
        lanes.returned(&failed.shard);
        let at = now + Duration::from_millis(100);
        lanes.push_retry(failed, at);
        lanes.release(now, &mut out);
        assert!(out.is_empty(), "its successors wait too");
        assert_eq!(lanes.next_ready(), Some(at));
        assert!(!lanes.has_ready(now));
        lanes.release(at, &mut out);
        assert_eq!(ids(&out), [1], "the failed record first");
    }

    #[test]
    fn draining_takes_what_waits_and_leaves_what_is_out() {
        let now = Instant::now();
        let mut lanes = Lanes::default();
        lanes.push(record("a", 1));
        lanes.push(record("a", 2));
        let mut out = Vec::new();
        lanes.release(now, &mut out);
        assert_eq!(ids(&lanes.drain_waiting()), [2]);
        assert_eq!(lanes.len(), 0);
        lanes.push(record("a", 3));
        out.clear();
        lanes.release(now, &mut out);
        assert!(out.is_empty(), "record 1 is still out");
    }
}
