//! The collector: groups Kinesis records into PutRecords requests.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::pending::Outgoing;

/// Most records PutRecords accepts in one request.
pub const PUT_RECORDS_MAX_COUNT: usize = 500;
/// Most bytes (data plus partition keys) PutRecords accepts in one request.
pub const PUT_RECORDS_MAX_SIZE: usize = 5 * 1024 * 1024;
/// A Kinesis record above this many bytes (Kinesis's default record limit) is a large
/// record, of a stream whose limit was raised: it goes in a request of its own, so the
/// request stays within the PutRecords limit of every stream that accepts the record, and
/// its latency (which adaptive timeouts learn by request size) is its own.
pub(crate) const LARGE_RECORD: usize = 1024 * 1024;
/// Bytes buffered for one shard that make a request go at once, as the KPL does: a big
/// request to one shard is likely to be throttled, so it is better sent early.
pub(crate) const SHARD_EARLY_FLUSH_BYTES: usize = 256 * 1024;
/// The KPL's minimum buffer time: a record that arrives already due still waits this
/// long, so records that come due one after another share a request.
pub(crate) const MIN_BUFFER_TIME: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Queued {
    record: Outgoing,
    /// When it must go: its deadline, but no sooner than `min_buffer` after it arrived.
    due: Instant,
}

/// Holds Kinesis records until a PutRecords request is worth sending, and fills requests
/// of up to `max_count` records and `max_size` bytes (the KPL's collector and reducer).
///
/// A request is due when the records fill one, when one shard holds
/// [`SHARD_EARLY_FLUSH_BYTES`], when the earliest record is due, or when a flush forces
/// a record it holds. Records keep merging while no connection is free, so requests
/// waiting for a connection go out full.
#[derive(Debug)]
pub(crate) struct Collector {
    max_count: usize,
    max_size: usize,
    min_buffer: Duration,
    queue: VecDeque<Queued>,
    size: usize,
    shard_bytes: HashMap<Arc<str>, usize>,
    /// Shards holding at least [`SHARD_EARLY_FLUSH_BYTES`].
    full_shards: usize,
    earliest_due: Option<Instant>,
    min_id: u64,
    /// Everything held goes as soon as a connection is free (an aggregate's buffering
    /// time ran out and the open aggregates were pulled along).
    send_now: bool,
}

impl Collector {
    pub fn new(max_count: usize, max_size: usize, min_buffer: Duration) -> Self {
        Collector {
            max_count: max_count.clamp(1, PUT_RECORDS_MAX_COUNT),
            max_size: max_size.clamp(1, PUT_RECORDS_MAX_SIZE),
            min_buffer,
            queue: VecDeque::new(),
            size: 0,
            shard_bytes: HashMap::new(),
            full_shards: 0,
            earliest_due: None,
            min_id: u64::MAX,
            send_now: false,
        }
    }

    /// Fills requests of up to `max_size` bytes from now on (the call size adapted to
    /// latency, see `call_size`); at most [`PUT_RECORDS_MAX_SIZE`].
    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size.clamp(1, PUT_RECORDS_MAX_SIZE);
    }

    /// Adds a record that arrived `now`.
    pub fn push(&mut self, record: Outgoing, now: Instant) {
        let due = record.deadline.max(now + self.min_buffer);
        let size = record.size();
        self.size += size;
        if let Some(shard) = &record.shard {
            let bytes = match self.shard_bytes.get_mut(shard) {
                Some(bytes) => bytes,
                None => self.shard_bytes.entry(shard.clone()).or_insert(0),
            };
            let was_full = *bytes >= SHARD_EARLY_FLUSH_BYTES;
            *bytes += size;
            if !was_full && *bytes >= SHARD_EARLY_FLUSH_BYTES {
                self.full_shards += 1;
            }
        }
        self.earliest_due = Some(self.earliest_due.map_or(due, |d| d.min(due)));
        self.min_id = self.min_id.min(record.min_id);
        self.queue.push_back(Queued { record, due });
    }

    /// Sends everything held as soon as a connection is free.
    pub fn send_now(&mut self) {
        if !self.queue.is_empty() {
            self.send_now = true;
        }
    }

    /// Whether a request should go now.
    pub fn is_due(&self, now: Instant, force_before: u64) -> bool {
        !self.queue.is_empty()
            && (self.send_now
                || self.queue.len() >= self.max_count
                || self.size >= self.max_size
                || self.full_shards > 0
                || self.min_id < force_before
                || self.earliest_due.is_some_and(|d| d <= now))
    }

    /// Takes the next request: records in arrival order, up to the count and size
    /// limits (a record bigger than the size limit, or a large record, goes alone).
    pub fn take(&mut self) -> Vec<Outgoing> {
        let mut batch = Vec::new();
        let mut size = 0;
        while let Some(head) = self.queue.front() {
            let record_size = head.record.size();
            if batch.len() >= self.max_count
                || (!batch.is_empty()
                    && (size + record_size > self.max_size
                        || record_size > LARGE_RECORD
                        || size > LARGE_RECORD))
            {
                break;
            }
            size += record_size;
            let Some(queued) = self.queue.pop_front() else {
                break;
            };
            if let Some(shard) = &queued.record.shard {
                if let Some(bytes) = self.shard_bytes.get_mut(shard) {
                    let was_full = *bytes >= SHARD_EARLY_FLUSH_BYTES;
                    *bytes -= record_size;
                    if was_full && *bytes < SHARD_EARLY_FLUSH_BYTES {
                        self.full_shards -= 1;
                    }
                }
            }
            batch.push(queued.record);
        }
        self.size -= size;
        self.earliest_due = self.queue.iter().map(|q| q.due).min();
        self.min_id = self
            .queue
            .iter()
            .map(|q| q.record.min_id)
            .min()
            .unwrap_or(u64::MAX);
        if self.queue.is_empty() {
            self.send_now = false;
            self.shard_bytes.clear();
        }
        batch
    }

    /// Takes every record held (to be predicted again).
    pub fn drain_all(&mut self) -> Vec<Outgoing> {
        self.size = 0;
        self.shard_bytes.clear();
        self.full_shards = 0;
        self.earliest_due = None;
        self.min_id = u64::MAX;
        self.send_now = false;
        self.queue.drain(..).map(|queued| queued.record).collect()
    }

    /// When a request will be due, absent new records.
    pub fn next_due(&self) -> Option<Instant> {
        self.earliest_due
    }

    /// Kinesis records held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregation::EncodedRecord;
    use bytes::Bytes;

    #[test]
    fn a_large_record_goes_in_a_request_of_its_own_in_its_turn() {
        let now = Instant::now();
        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE, MIN);
        for len in [100, 200, 2 * LARGE_RECORD, 300, LARGE_RECORD + 1, 400] {
            collector.push(outgoing("s", len, now), now);
        }
        let mut requests = Vec::new();
        while collector.len() > 0 {
            let sizes: Vec<usize> = collector
                .take()
                .iter()
                .map(|o| o.encoded.data.len())
                .collect();
            requests.push(sizes);
        }
        assert_eq!(
            requests,
            [
                vec![100, 200],
                vec![2 * LARGE_RECORD],
                vec![300],
                vec![LARGE_RECORD + 1],
                vec![400]
            ]
        );
    }

    fn outgoing(shard: &str, len: usize, deadline: Instant) -> Outgoing {
        Outgoing::new(
            Some(Arc::from(shard)),
            EncodedRecord::new("k", None, Bytes::from(vec![0; len]), 1),
            Vec::new(),
            deadline,
        )
    }

    const MIN: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn requests_hold_at_most_500_records_and_5_mib() {
        let now = Instant::now() + Duration::from_secs(1);
        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE, MIN);
        for i in 0..1_200 {
            collector.push(outgoing(&format!("s{}", i % 64), 10, now), now);
        }
        let mut sizes = Vec::new();
        while collector.is_due(now, 0) {
            sizes.push(collector.take().len());
        }
        assert_eq!(sizes, [500, 500]);
        assert_eq!(collector.len(), 200);

        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE, MIN);
        for i in 0..12 {
            collector.push(outgoing(&format!("s{i}"), 1_000_000, now), now);
        }
        let mut taken = 0;
        while collector.len() > 0 {
            let request = collector.take();
            let size: usize = request.iter().map(Outgoing::size).sum();
            assert!(size <= PUT_RECORDS_MAX_SIZE, "{size}");
            taken += request.len();
        }
        assert_eq!(taken, 12);
    }

    #[tokio::test]
    async fn a_lowered_size_limit_makes_smaller_requests() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE, MIN);
        collector.set_max_size(100_000);
        for i in 0..10 {
            collector.push(outgoing(&format!("s{i}"), 30_000, later), now);
        }
        assert!(collector.is_due(now, 0), "300 KB held, 100 KB allowed");
        assert_eq!(collector.take().len(), 3);
        collector.set_max_size(usize::MAX);
        assert!(!collector.is_due(now, 0), "210 KB held, 5 MiB allowed");
        assert_eq!(collector.take().len(), 7);
    }

    #[tokio::test]
    async fn due_records_still_wait_the_minimum_buffer_time() {
        let now = Instant::now();
        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE, MIN);
        collector.push(outgoing("a", 1, now), now);
        assert!(!collector.is_due(now, 0), "already due, yet it waits");
        collector.push(outgoing("b", 1, now), now + Duration::from_millis(10));
        assert_eq!(collector.next_due(), Some(now + MIN));
        assert!(collector.is_due(now + MIN, 0));
        assert_eq!(collector.take().len(), 2, "both in one request");
        assert_eq!(collector.next_due(), None);
    }

    #[tokio::test]
    async fn one_shard_holding_256_kib_sends_early() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE, MIN);
        for _ in 0..5 {
            collector.push(outgoing("a", 51_200, later), now);
        }
        assert!(!collector.is_due(now, 0));
        collector.push(outgoing("a", 51_200, later), now);
        assert!(collector.is_due(now, 0), "6 x 51,200 B > 256 KiB");
        assert_eq!(collector.take().len(), 6);
        assert!(!collector.is_due(now, 0));
    }

    #[tokio::test]
    async fn a_flush_forces_only_older_records() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE, MIN);
        let mut record = outgoing("a", 1, later);
        record.min_id = 7;
        collector.push(record, now);
        assert!(
            !collector.is_due(now, 7),
            "a flush of ids below 7 does not force id 7"
        );
        assert!(collector.is_due(now, 8));
    }
}
