//! What a running producer reports about itself: outstanding records, totals, and the
//! load it puts on each shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// User records accepted and not yet completed (see
/// [`Producer::outstanding`](crate::Producer::outstanding)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outstanding {
    /// How many.
    pub records: usize,
    /// Their bytes (data plus partition key).
    pub bytes: usize,
    /// How long ago the oldest of them was accepted.
    pub oldest_age: Option<Duration>,
}

/// Totals since the producer started (see [`Producer::stats`](crate::Producer::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerStats {
    /// User records that reached the stream.
    pub user_records_put: u64,
    /// User records that failed (expired or throttled).
    pub user_records_failed: u64,
    /// Kinesis records (aggregates or single user records) that reached the stream.
    pub kinesis_records_put: u64,
    /// PutRecords calls made.
    pub put_records_calls: u64,
    /// Failed attempts of Kinesis records, each followed by a retry or a failure.
    pub failed_attempts: u64,
    /// PutRecords calls that timed out (their records are retried; they may have
    /// landed, so their records can appear twice in the stream).
    pub put_records_timeouts: u64,
}

/// The load the producer put on one shard over the last second.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ShardLoad {
    /// The shard.
    pub shard_id: Arc<str>,
    /// User records per second that landed on it.
    pub user_records_per_second: f64,
    /// Kinesis records per second (what its 1,000 records/s limit counts).
    pub kinesis_records_per_second: f64,
    /// Bytes per second (what its 1 MiB/s limit counts).
    pub bytes_per_second: f64,
    /// Kinesis records per second it refused with throttling.
    pub throttled_per_second: f64,
}

/// Buffer space of completed user records not yet given back.
#[derive(Debug, Default)]
pub(crate) struct Released {
    records: usize,
    bytes: usize,
}

impl Released {
    /// A user record of `size` bytes completed.
    pub fn add(&mut self, size: usize) {
        self.records += 1;
        self.bytes += size;
    }
}

/// State shared by the producer handles and the pipeline task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub records: Arc<Semaphore>,
    pub bytes: Arc<Semaphore>,
    pub max_records: usize,
    pub max_bytes: usize,
    epoch: Instant,
    /// Nanoseconds after `epoch` when the oldest outstanding record arrived, or
    /// `u64::MAX` when none is outstanding.
    oldest: AtomicU64,
    user_records_put: AtomicU64,
    user_records_failed: AtomicU64,
    kinesis_records_put: AtomicU64,
    put_records_calls: AtomicU64,
    failed_attempts: AtomicU64,
    put_records_timeouts: AtomicU64,
    shard_load: Mutex<Vec<ShardLoad>>,
}

impl Shared {
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Shared {
            records: Arc::new(Semaphore::new(max_records)),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_records,
            max_bytes,
            epoch: Instant::now(),
            oldest: AtomicU64::new(u64::MAX),
            user_records_put: AtomicU64::new(0),
            user_records_failed: AtomicU64::new(0),
            kinesis_records_put: AtomicU64::new(0),
            put_records_calls: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            put_records_timeouts: AtomicU64::new(0),
            shard_load: Mutex::new(Vec::new()),
        }
    }

    pub fn outstanding(&self) -> Outstanding {
        let oldest = self.oldest.load(Ordering::Relaxed);
        Outstanding {
            records: self.max_records - self.records.available_permits(),
            bytes: self.max_bytes - self.bytes.available_permits(),
            oldest_age: (oldest != u64::MAX).then(|| {
                Instant::now().saturating_duration_since(self.epoch + Duration::from_nanos(oldest))
            }),
        }
    }

    /// Gives back the buffer space of completed user records.
    pub fn release(&self, released: &mut Released) {
        if released.records > 0 {
            self.records.add_permits(released.records);
            self.bytes.add_permits(released.bytes);
            *released = Released::default();
        }
    }

    /// Closes the buffer: `send` fails with `Closed` from now on.
    pub fn close(&self) {
        self.records.close();
        self.bytes.close();
    }

    pub fn set_oldest(&self, arrived: Option<Instant>) {
        let nanos = arrived.map_or(u64::MAX, |a| {
            a.saturating_duration_since(self.epoch).as_nanos() as u64
        });
        self.oldest.store(nanos, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ProducerStats {
        ProducerStats {
            user_records_put: self.user_records_put.load(Ordering::Relaxed),
            user_records_failed: self.user_records_failed.load(Ordering::Relaxed),
            kinesis_records_put: self.kinesis_records_put.load(Ordering::Relaxed),
            put_records_calls: self.put_records_calls.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            put_records_timeouts: self.put_records_timeouts.load(Ordering::Relaxed),
        }
    }

    pub fn count_put(&self, user_records: usize) {
        self.kinesis_records_put.fetch_add(1, Ordering::Relaxed);
        self.user_records_put
            .fetch_add(user_records as u64, Ordering::Relaxed);
    }

    pub fn count_failed(&self, user_records: usize) {
        self.user_records_failed
            .fetch_add(user_records as u64, Ordering::Relaxed);
    }

    pub fn count_call(&self) {
        self.put_records_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_timeout(&self) {
        self.put_records_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_failed_attempt(&self) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn shard_load(&self) -> Vec<ShardLoad> {
        self.shard_load
            .lock()
            .map(|load| load.clone())
            .unwrap_or_default()
    }

    fn set_shard_load(&self, load: Vec<ShardLoad>) {
        if let Ok(mut current) = self.shard_load.lock() {
            *current = load;
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    user_records: u64,
    kinesis_records: u64,
    bytes: u64,
    throttled: u64,
}

/// Counts per shard over one-second windows, published to [`Shared`].
#[derive(Debug)]
pub(crate) struct LoadTracker {
    window_start: Instant,
    counts: HashMap<Arc<str>, Counts>,
}

impl LoadTracker {
    pub fn new(now: Instant) -> Self {
        LoadTracker {
            window_start: now,
            counts: HashMap::new(),
        }
    }

    pub fn put(&mut self, shard: &Arc<str>, user_records: usize, bytes: usize) {
        let counts = self.counts.entry(shard.clone()).or_default();
        counts.user_records += user_records as u64;
        counts.kinesis_records += 1;
        counts.bytes += bytes as u64;
    }

    pub fn throttled(&mut self, shard: &Arc<str>) {
        self.counts.entry(shard.clone()).or_default().throttled += 1;
    }

    /// When the current window ends.
    pub fn window_end(&self) -> Instant {
        self.window_start + Duration::from_secs(1)
    }

    /// Publishes the finished window, if it is over.
    pub fn publish(&mut self, now: Instant, shared: &Shared) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        let mut load: Vec<ShardLoad> = self
            .counts
            .drain()
            .map(|(shard_id, c)| ShardLoad {
                shard_id,
                user_records_per_second: c.user_records as f64 / seconds,
                kinesis_records_per_second: c.kinesis_records as f64 / seconds,
                bytes_per_second: c.bytes as f64 / seconds,
                throttled_per_second: c.throttled as f64 / seconds,
            })
            .collect();
        load.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        shared.set_shard_load(load);
        self.window_start = now;
    }
}

/// Arrival times of outstanding user records, by arrival order, to answer "how old is
/// the oldest?" and "has everything accepted before X completed?" in constant time.
///
/// A window of slots from the oldest outstanding id on; a record that keeps the window
/// long while newer ones complete (one in a long backoff) moves to a side map, so the
/// memory follows the records outstanding, not the span of their ids.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    first: u64,
    /// Per record of the window: [`COMPLETED`], or when it arrived (8 bytes rather than
    /// an `Option<Instant>`'s 16: every outstanding record has a slot).
    slots: std::collections::VecDeque<u64>,
    /// What arrivals are counted from: the first record's.
    epoch: Option<Instant>,
    /// Outstanding records moved out of the window, by id.
    stragglers: std::collections::BTreeMap<u64, Instant>,
    count: usize,
}

/// A [`Tracker`] slot whose record completed.
const COMPLETED: u64 = 0;

impl Tracker {
    /// Registers a record; returns its id.
    pub fn add(&mut self, arrived: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(arrived);
        // Nanoseconds after the epoch, plus one: never COMPLETED; below 2^64 for 584
        // years.
        let at = arrived.saturating_duration_since(epoch).as_nanos() as u64;
        self.slots.push_back(at.saturating_add(1));
        self.count += 1;
        if self.slots.len() > 4 * self.count + 4_096 {
            self.shrink();
        }
        self.first + self.slots.len() as u64 - 1
    }

    /// Moves outstanding records at the front of a long window to the side map.
    fn shrink(&mut self) {
        while self.slots.len() > 2 * self.count + 1_024 {
            let Some(front) = self.slots.pop_front() else {
                break;
            };
            if let Some(arrived) = self.arrival(front) {
                self.stragglers.insert(self.first, arrived);
            }
            self.first += 1;
        }
        self.pop_completed();
    }

    fn pop_completed(&mut self) {
        while self.slots.front() == Some(&COMPLETED) {
            self.slots.pop_front();
            self.first += 1;
        }
    }

    /// The id the next record will get.
    pub fn next_id(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    pub fn complete(&mut self, id: u64) {
        let Some(index) = id.checked_sub(self.first) else {
            if self.stragglers.remove(&id).is_some() {
                self.count -= 1;
            }
            return;
        };
        if let Some(slot) = self.slots.get_mut(index as usize) {
            if std::mem::replace(slot, COMPLETED) != COMPLETED {
                self.count -= 1;
            }
        }
        self.pop_completed();
    }

    /// Whether every record with an id below `id` has completed.
    pub fn done_before(&self, id: u64) -> bool {
        if self.count == 0 {
            return true;
        }
        let oldest = match self.stragglers.first_key_value() {
            Some((&straggler, _)) => straggler,
            None => self.first,
        };
        oldest >= id
    }

    pub fn oldest(&self) -> Option<Instant> {
        match self.stragglers.first_key_value() {
            Some((_, &arrived)) => Some(arrived),
            None => self.arrival(*self.slots.front()?),
        }
    }

    /// The arrival a slot holds, `None` if it completed.
    fn arrival(&self, slot: u64) -> Option<Instant> {
        let after = slot.checked_sub(1)?;
        Some(self.epoch? + Duration::from_nanos(after))
    }

    pub fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracker_knows_the_oldest_and_what_completed() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let ids: Vec<u64> = (0..5)
            .map(|i| tracker.add(t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        tracker.complete(1);
        tracker.complete(3);
        assert_eq!(tracker.oldest(), Some(t0));
        assert!(!tracker.done_before(2));
        tracker.complete(0);
        assert_eq!(tracker.oldest(), Some(t0 + Duration::from_millis(2)));
        assert!(tracker.done_before(2));
        assert!(!tracker.done_before(5));
        tracker.complete(2);
        tracker.complete(4);
        tracker.complete(4);
        assert_eq!(tracker.len(), 0);
        assert!(tracker.done_before(5));
        assert_eq!(tracker.next_id(), 5);
        assert_eq!(tracker.oldest(), None);
    }

    #[tokio::test]
    async fn a_straggler_does_not_keep_a_slot_per_later_record() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let straggler = tracker.add(t0);
        for _ in 0..1_000_000 {
            let id = tracker.add(t0);
            tracker.complete(id);
        }
        assert!(tracker.slots.len() <= 4 + 4_096, "{}", tracker.slots.len());
        assert_eq!(tracker.len(), 1);
        assert_eq!(tracker.oldest(), Some(t0));
        assert!(!tracker.done_before(straggler + 1));
        assert!(tracker.done_before(straggler));
        tracker.complete(straggler);
        assert_eq!(tracker.len(), 0);
        assert!(tracker.done_before(tracker.next_id()));
    }

    #[tokio::test]
    async fn load_is_published_per_second() {
        let t0 = Instant::now();
        let shared = Shared::new(10, 10);
        let mut load = LoadTracker::new(t0);
        let shard: Arc<str> = Arc::from("s");
        load.put(&shard, 10, 1_000);
        load.throttled(&shard);
        load.publish(t0 + Duration::from_millis(500), &shared);
        assert!(shared.shard_load().is_empty());
        load.publish(t0 + Duration::from_secs(2), &shared);
        let published = shared.shard_load();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].user_records_per_second, 5.0);
        assert_eq!(published[0].bytes_per_second, 500.0);
        assert_eq!(published[0].throttled_per_second, 0.5);
    }
}
