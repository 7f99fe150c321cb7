//! The per-shard rate limiter: token buckets for records/s and bytes/s, so a healthy
//! producer stays under the shard's write limits instead of being throttled.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::pending::Outgoing;

/// Kinesis's write limit per shard, in records per second.
pub const SHARD_RECORDS_PER_SECOND: f64 = 1_000.0;
/// Kinesis's write limit per shard, in bytes per second.
pub const SHARD_BYTES_PER_SECOND: f64 = 1_048_576.0;

/// A backlogged shard's records leave in waves of this share of a second's tokens, not
/// one by one as tokens trickle in: records queued here are late already, and a wave
/// fills PutRecords calls where single records would each make, or wake, a call of
/// their own. Waves are timed on a common clock of ticks of this length, so those of
/// every shard come due together and share a call. The rate stays the bucket's; a
/// backlogged record waits at most two ticks longer.
const WAVE: f64 = 1.0 / 8.0;

/// Tokens refilled continuously at `rate` per second, up to one second's worth.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
    }

    /// Whether `cost` can be taken now. A cost above the capacity is allowed from a full
    /// bucket (the bucket then goes negative), so no record waits forever.
    fn allows(&self, cost: f64) -> bool {
        self.tokens >= cost.min(self.rate)
    }

    /// Time until `cost` can be taken.
    fn wait(&self, cost: f64) -> Duration {
        let missing = cost.min(self.rate) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate)
        }
    }
}

#[derive(Debug)]
struct ShardQueue {
    records: TokenBucket,
    bytes: TokenBucket,
    queue: VecDeque<Outgoing>,
    /// Bytes of the records in `queue`.
    queued_bytes: usize,
}

impl ShardQueue {
    /// Tokens of each bucket a release needs: the whole queue, or a wave of a
    /// backlogged one.
    fn wave(&self) -> (f64, f64) {
        (
            (self.queue.len() as f64).min(self.records.rate * WAVE),
            (self.queued_bytes as f64).min(self.bytes.rate * WAVE),
        )
    }

    /// Whether the buckets hold a wave's tokens.
    fn wave_allowed(&self) -> bool {
        let (records, bytes) = self.wave();
        self.records.allows(records) && self.bytes.allows(bytes)
    }
}

/// Holds Kinesis records until their shard's buckets allow them.
#[derive(Debug)]
pub(crate) struct Limiter {
    records_per_second: f64,
    bytes_per_second: f64,
    shards: HashMap<Arc<str>, ShardQueue>,
    queued: usize,
    /// The queue of records the shard map could not place, limited like one shard.
    unmapped: Arc<str>,
    /// Start of the wave clock: the first record's arrival.
    epoch: Option<Instant>,
}

impl Limiter {
    /// A limiter allowing `percent` % of a shard's write limits.
    pub fn new(percent: u32) -> Self {
        let factor = f64::from(percent.max(1)) / 100.0;
        Limiter {
            records_per_second: SHARD_RECORDS_PER_SECOND * factor,
            bytes_per_second: SHARD_BYTES_PER_SECOND * factor,
            shards: HashMap::new(),
            queued: 0,
            unmapped: Arc::from(""),
            epoch: None,
        }
    }

    /// Queues a record behind its shard's earlier ones (records with no predicted shard
    /// share one queue, limited like a shard). Records allowed now go to `out`.
    pub fn push(&mut self, record: Outgoing, now: Instant, out: &mut Vec<Outgoing>) {
        self.epoch.get_or_insert(now);
        let shard = record.shard.as_ref().unwrap_or(&self.unmapped);
        let (records_rate, bytes_rate) = (self.records_per_second, self.bytes_per_second);
        let queue = match self.shards.get_mut(shard) {
            Some(queue) => queue,
            None => self
                .shards
                .entry(shard.clone())
                .or_insert_with(|| ShardQueue {
                    records: TokenBucket::new(records_rate, now),
                    bytes: TokenBucket::new(bytes_rate, now),
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                }),
        };
        queue.queued_bytes += record.size();
        queue.queue.push_back(record);
        self.queued += 1;
        self.queued -= Self::drain_queue(queue, now, out);
    }

    /// Releases the head records the buckets allow, once they allow a wave.
    fn drain_queue(queue: &mut ShardQueue, now: Instant, out: &mut Vec<Outgoing>) -> usize {
        queue.records.refill(now);
        queue.bytes.refill(now);
        if !queue.wave_allowed() {
            return 0;
        }
        let mut released = 0;
        while let Some(head) = queue.queue.front() {
            let size = head.size();
            if !(queue.records.allows(1.0) && queue.bytes.allows(size as f64)) {
                break;
            }
            queue.records.tokens -= 1.0;
            queue.bytes.tokens -= size as f64;
            queue.queued_bytes -= size;
            out.extend(queue.queue.pop_front());
            released += 1;
        }
        released
    }

    /// Releases every queued record its shard's buckets now allow.
    pub fn drain(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if self.queued == 0 {
            return;
        }
        for queue in self.shards.values_mut() {
            if !queue.queue.is_empty() {
                self.queued -= Self::drain_queue(queue, now, out);
            }
        }
    }

    /// When the next queued record will be allowed: the first tick of the wave clock at
    /// which a shard's buckets allow a wave.
    pub fn next_ready(&self, now: Instant) -> Option<Instant> {
        if self.queued == 0 {
            return None;
        }
        let epoch = self.epoch.unwrap_or(now);
        let tick = |at: Instant| {
            let ticks = (at.saturating_duration_since(epoch).as_secs_f64() / WAVE).ceil();
            epoch + Duration::from_secs_f64(ticks * WAVE)
        };
        self.shards
            .values()
            .filter_map(|q| {
                let head = q.queue.front()?;
                let (records, bytes) = q.wave();
                let wait = q
                    .records
                    .wait(records.max(1.0))
                    .max(q.bytes.wait(bytes.max(head.size() as f64)));
                Some(tick(now + wait))
            })
            .min()
    }

    /// Records waiting for tokens.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Takes every queued record out (after a shard map change).
    pub fn drain_all(&mut self) -> Vec<Outgoing> {
        self.queued = 0;
        self.shards
            .values_mut()
            .flat_map(|q| {
                q.queued_bytes = 0;
                q.queue.drain(..)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregation::EncodedRecord;
    use bytes::Bytes;

    fn outgoing(shard: Option<&str>, len: usize) -> Outgoing {
        Outgoing::new(
            shard.map(Arc::from),
            EncodedRecord::new("k", None, Bytes::from(vec![0; len]), 1),
            Vec::new(),
            Instant::now(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn allows_the_configured_records_per_second() {
        let mut limiter = Limiter::new(100);
        let mut out = Vec::new();
        let start = Instant::now();
        for _ in 0..3_000 {
            limiter.push(outgoing(Some("s"), 10), start, &mut out);
        }
        assert_eq!(out.len(), 1_000, "one second's worth at once");
        assert_eq!(limiter.len(), 2_000);
        // The backlog leaves in waves of an eighth of a second's tokens.
        let ready = limiter.next_ready(start).expect("queued");
        assert_eq!(ready, start + Duration::from_millis(125));
        limiter.drain(start + Duration::from_millis(124), &mut out);
        assert_eq!(out.len(), 1_000, "no record before a wave's tokens");
        limiter.drain(ready, &mut out);
        assert_eq!(out.len(), 1_125, "a wave at once");

        let mut now = start;
        while limiter.len() > 0 {
            now += Duration::from_millis(100);
            limiter.drain(now, &mut out);
        }
        let elapsed = now - start;
        assert!(
            elapsed >= Duration::from_millis(1_900) && elapsed <= Duration::from_millis(2_100),
            "{elapsed:?}"
        );
        assert_eq!(out.len(), 3_000);
    }

    #[tokio::test(start_paused = true)]
    async fn limits_bytes_and_lets_huge_records_through_a_full_bucket() {
        let mut limiter = Limiter::new(150);
        let mut out = Vec::new();
        let now = Instant::now();
        for _ in 0..3 {
            limiter.push(outgoing(Some("s"), 1_000_000), now, &mut out);
        }
        assert_eq!(out.len(), 1, "1.5 MiB allows one 1 MB record, not two");
        let mut limiter = Limiter::new(100);
        let mut out = Vec::new();
        limiter.push(outgoing(Some("s"), 5_000_000), now, &mut out);
        assert_eq!(
            out.len(),
            1,
            "a record larger than the bucket passes a full bucket"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shards_are_independent_and_unknown_shards_share_one_queue() {
        let mut limiter = Limiter::new(100);
        let mut out = Vec::new();
        let now = Instant::now();
        for _ in 0..1_500 {
            limiter.push(outgoing(Some("a"), 1), now, &mut out);
            limiter.push(outgoing(Some("b"), 1), now, &mut out);
            limiter.push(outgoing(None, 1), now, &mut out);
        }
        assert_eq!(out.len(), 1_000 + 1_000 + 1_000);
        assert_eq!(limiter.drain_all().len(), 1_500);
        assert_eq!(limiter.next_ready(now), None);
    }
}
