//! Hot-key spreading: when a shard runs near its write limits (or is throttled) and one
//! partition key carries a large share of that load, the key's records are spread over
//! several shards through explicit hash keys.
//!
//! Load is measured as Kinesis counts it, after aggregation: Kinesis records per second
//! against 1,000 and bytes per second against 1 MiB per shard. A busy key on a shard with
//! room to spare is left alone.
//!
//! This trades per-key ordering for throughput: records of a spread key land on
//! different shards and consumers may see them out of order. It is off by default.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::limiter::{SHARD_BYTES_PER_SECOND, SHARD_RECORDS_PER_SECOND};
use crate::shard_map::{ShardMap, ShardRange};
use crate::HashKey;

/// When and how to spread hot partition keys (see [`ProducerBuilder::hot_key_spread`](crate::ProducerBuilder::hot_key_spread)).
///
/// Each second the producer measures, per shard, the Kinesis records and bytes it put
/// (after aggregation) and the throttling it was answered; and, per partition key, the
/// bytes and records it was given. A key is spread when its own shard is hot (its load
/// reached `threshold` of the shard's limits, or it was throttled) and the key alone
/// carries at least `key_share` of a shard's limits. It stays spread while it carries
/// that much, wherever its records land. Its records then go round-robin to its own
/// shard and the `shards_per_key - 1` least loaded eligible shards.
///
/// ```
/// use kinesis_producer::HotKeySpread;
/// let spread = HotKeySpread::default().threshold(0.9).key_share(0.2).shards_per_key(8);
/// assert_eq!(spread.shards_per_key, 8);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HotKeySpread {
    /// Share of a shard's write limits (1,000 Kinesis records/s or 1 MiB/s, whichever is
    /// closer) at which the shard counts as hot. Default 0.8. A shard that was throttled
    /// in the last second is hot whatever its load.
    pub threshold: f64,
    /// Share of a shard's write limits one key must carry to be spread off a hot shard.
    /// Default 0.1: many small keys on a hot shard are left alone, since spreading them
    /// would give up their ordering for little relief.
    pub key_share: f64,
    /// How many shards a hot key is spread over, its own included. Default 4.
    pub shards_per_key: usize,
    /// The shards hot keys may be spread to; `None` (the default) means every open shard.
    pub eligible_shards: Option<HashSet<String>>,
}

impl Default for HotKeySpread {
    fn default() -> Self {
        HotKeySpread {
            threshold: 0.8,
            key_share: 0.1,
            shards_per_key: 4,
            eligible_shards: None,
        }
    }
}

impl HotKeySpread {
    /// Sets [`threshold`](Self::threshold).
    pub fn threshold(mut self, share: f64) -> Self {
        self.threshold = share;
        self
    }

    /// Sets [`key_share`](Self::key_share).
    pub fn key_share(mut self, share: f64) -> Self {
        self.key_share = share;
        self
    }

    /// Sets [`shards_per_key`](Self::shards_per_key).
    pub fn shards_per_key(mut self, shards: usize) -> Self {
        self.shards_per_key = shards.max(1);
        self
    }

    /// Sets [`eligible_shards`](Self::eligible_shards).
    pub fn eligible_shards<I, S>(mut self, shards: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.eligible_shards = Some(shards.into_iter().map(Into::into).collect());
        self
    }
}

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone, Copy)]
struct ShardCounts {
    kinesis_records: u64,
    bytes: u64,
    throttled: u64,
}

impl ShardCounts {
    /// Share of the shard's limits used, the closer of the two.
    fn load(&self, seconds: f64) -> f64 {
        (self.kinesis_records as f64 / SHARD_RECORDS_PER_SECOND)
            .max(self.bytes as f64 / SHARD_BYTES_PER_SECOND)
            / seconds
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyCounts {
    records: u64,
    bytes: u64,
}

/// A spread key: where its records go, and whose turn it is.
#[derive(Debug)]
struct Spread {
    targets: Vec<HashKey>,
    turn: usize,
}

/// Measures shard and key load and picks hash keys for hot keys.
#[derive(Debug)]
pub(crate) struct Spreader {
    config: HotKeySpread,
    aggregation: bool,
    window_start: Instant,
    shards: HashMap<Arc<str>, ShardCounts>,
    keys: HashMap<String, KeyCounts>,
    /// Load of each shard in the last finished window.
    last_load: HashMap<Arc<str>, f64>,
    /// Shards hot in the last finished window.
    hot_shards: HashSet<Arc<str>>,
    spread: HashMap<String, Spread>,
    /// The open shards hot keys may go to, by hash range.
    eligible: Vec<ShardRange>,
    map: ShardMap,
    /// Keys spread since the last [`take_newly_spread`](Self::take_newly_spread).
    newly_spread: HashSet<String>,
}

impl Spreader {
    pub fn new(config: HotKeySpread, aggregation: bool, now: Instant) -> Self {
        Spreader {
            config,
            aggregation,
            window_start: now,
            shards: HashMap::new(),
            keys: HashMap::new(),
            last_load: HashMap::new(),
            hot_shards: HashSet::new(),
            spread: HashMap::new(),
            eligible: Vec::new(),
            map: ShardMap::default(),
            newly_spread: HashSet::new(),
        }
    }

    /// Takes the shards of a new shard map.
    pub fn set_map(&mut self, map: &ShardMap) {
        let allowed = self.config.eligible_shards.as_ref();
        self.eligible = map
            .shards()
            .iter()
            .filter(|s| allowed.is_none_or(|set| set.contains(&*s.id)))
            .cloned()
            .collect();
        self.map = map.clone();
        self.spread.clear();
    }

    /// A Kinesis record of `bytes` was put on `shard`.
    pub fn put(&mut self, shard: &Arc<str>, bytes: usize) {
        let counts = self.shard_counts(shard);
        counts.kinesis_records += 1;
        counts.bytes += bytes as u64;
    }

    /// A Kinesis record predicted for `shard` was throttled.
    pub fn throttled(&mut self, shard: &Arc<str>) {
        self.shard_counts(shard).throttled += 1;
    }

    fn shard_counts(&mut self, shard: &Arc<str>) -> &mut ShardCounts {
        if !self.shards.contains_key(shard) {
            self.shards.insert(shard.clone(), ShardCounts::default());
        }
        self.shards.entry(shard.clone()).or_default()
    }

    /// A key's share of a shard's limits, as Kinesis will count it: with aggregation its
    /// records share Kinesis records, so bytes decide.
    fn key_load(&self, counts: &KeyCounts, seconds: f64) -> f64 {
        let bytes = counts.bytes as f64 / SHARD_BYTES_PER_SECOND;
        let records = if self.aggregation {
            0.0
        } else {
            counts.records as f64 / SHARD_RECORDS_PER_SECOND
        };
        bytes.max(records) / seconds
    }

    fn roll_window(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        let threshold = self.config.threshold;
        self.last_load = self
            .shards
            .iter()
            .map(|(shard, c)| (shard.clone(), c.load(seconds)))
            .collect();
        self.hot_shards = self
            .shards
            .drain()
            .filter(|(_, c)| c.throttled > 0 || c.load(seconds) >= threshold)
            .map(|(shard, _)| shard)
            .collect();
        let keys = std::mem::take(&mut self.keys);
        let mut spread = std::mem::take(&mut self.spread);
        for (key, counts) in keys {
            let heavy = self.key_load(&counts, seconds) >= self.config.key_share;
            if !heavy {
                continue;
            }
            if let Some(existing) = spread.remove(&key) {
                self.spread.insert(key, existing);
                continue;
            }
            let own = HashKey::from_partition_key(&key);
            let own_shard = self.map.shard_for(own).map(|s| s.id.clone());
            if own_shard
                .as_ref()
                .is_some_and(|s| self.hot_shards.contains(s))
            {
                let targets = self.targets(own, own_shard.as_ref());
                if targets.len() > 1 {
                    self.newly_spread.insert(key.clone());
                    self.spread.insert(key, Spread { targets, turn: 0 });
                }
            }
        }
        self.window_start = now;
    }

    /// The key's own hash key, then the least loaded eligible shards' midpoints.
    fn targets(&self, own: HashKey, own_shard: Option<&Arc<str>>) -> Vec<HashKey> {
        let mut others: Vec<&ShardRange> = self
            .eligible
            .iter()
            .filter(|s| Some(&s.id) != own_shard)
            .collect();
        let load = |s: &ShardRange| {
            let hot = if self.hot_shards.contains(&s.id) {
                1.0
            } else {
                0.0
            };
            hot + self.last_load.get(&s.id).copied().unwrap_or(0.0)
        };
        others.sort_by(|a, b| load(a).total_cmp(&load(b)));
        std::iter::once(own)
            .chain(
                others
                    .into_iter()
                    .take(self.config.shards_per_key.saturating_sub(1))
                    .map(ShardRange::midpoint),
            )
            .collect()
    }

    /// The hash key to send a record of `partition_key` and `size` bytes with, or
    /// `None` to route it by its own hash.
    pub fn route(&mut self, partition_key: &str, size: usize, now: Instant) -> Option<HashKey> {
        self.roll_window(now);
        match self.keys.get_mut(partition_key) {
            Some(counts) => {
                counts.records += 1;
                counts.bytes += size as u64;
            }
            None => {
                self.keys.insert(
                    partition_key.to_owned(),
                    KeyCounts {
                        records: 1,
                        bytes: size as u64,
                    },
                );
            }
        }
        self.next_target(partition_key)
    }

    /// Keys that started being spread since the last call: their records still queued
    /// for their hot shard should be spread too.
    pub fn take_newly_spread(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.newly_spread)
    }

    /// Whether `partition_key` is being spread.
    pub fn is_spread(&self, partition_key: &str) -> bool {
        self.spread.contains_key(partition_key)
    }

    /// The next hash key of a spread key (`None`: its own), without counting a record.
    pub fn next_target(&mut self, partition_key: &str) -> Option<HashKey> {
        let spread = self.spread.get_mut(partition_key)?;
        let index = spread.turn % spread.targets.len();
        spread.turn = spread.turn.wrapping_add(1);
        // Index 0 is the key's own hash key: route it as usual.
        (index != 0).then(|| spread.targets[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(shards: u128) -> ShardMap {
        let width = u128::MAX / shards;
        ShardMap::new(
            (0..shards)
                .map(|i| ShardRange {
                    id: Arc::from(format!("shard-{i}")),
                    start: HashKey(if i == 0 { 0 } else { i * width + 1 }),
                    end: HashKey(if i + 1 == shards {
                        u128::MAX
                    } else {
                        (i + 1) * width
                    }),
                })
                .collect(),
        )
    }

    /// Sends `records` of `size` bytes of `key` over one window, with the key's shard
    /// put at `shard_bytes` and throttled `throttles` times; returns the shards used in
    /// the next window.
    fn run(spread: HotKeySpread, shard_bytes: usize, throttles: usize) -> HashSet<Arc<str>> {
        let map = map(8);
        let start = Instant::now();
        let mut spreader = Spreader::new(spread, true, start);
        spreader.set_map(&map);
        let own = map
            .shard_for(HashKey::from_partition_key("hot"))
            .expect("covered")
            .id
            .clone();
        for _ in 0..1_000 {
            assert_eq!(spreader.route("hot", 1_024, start), None);
        }
        for _ in 0..shard_bytes / 50_000 {
            spreader.put(&own, 50_000);
        }
        for _ in 0..throttles {
            spreader.throttled(&own);
        }
        let next = start + WINDOW;
        (0..1_000)
            .map(|_| {
                let key = spreader
                    .route("hot", 1_024, next)
                    .unwrap_or_else(|| HashKey::from_partition_key("hot"));
                map.shard_for(key).expect("covered").id.clone()
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_heavy_key_on_a_throttled_shard_spreads_over_the_configured_shards() {
        let shards = run(HotKeySpread::default().shards_per_key(4), 1_000_000, 10);
        assert_eq!(shards.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heavy_key_on_a_shard_near_its_byte_limit_spreads() {
        let shards = run(HotKeySpread::default(), 900_000, 0);
        assert_eq!(shards.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_key_on_an_idle_shard_is_not_spread() {
        // 1,000 records/s of 1 KiB: a user-record count far above any share of 1,000
        // records/s, yet one aggregated shard takes it easily.
        let shards = run(HotKeySpread::default(), 1_024_000 / 2, 0);
        assert_eq!(shards.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn small_keys_on_a_hot_shard_are_not_spread() {
        let shards = run(HotKeySpread::default().key_share(2.0), 1_000_000, 10);
        assert_eq!(shards.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn only_eligible_shards_receive_spread_records() {
        let spread = HotKeySpread::default()
            .shards_per_key(8)
            .eligible_shards(["shard-1", "shard-2"]);
        let shards = run(spread, 1_000_000, 10);
        let own = map(8)
            .shard_for(HashKey::from_partition_key("hot"))
            .expect("covered")
            .id
            .clone();
        assert!(
            shards
                .iter()
                .all(|s| s == &own || &**s == "shard-1" || &**s == "shard-2"),
            "{shards:?}"
        );
        assert!(shards.len() >= 2);
    }
}
