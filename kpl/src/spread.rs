//! Hot-key spreading: when one partition key sends more than a share of a shard's
//! record limit, its records are spread over several shards through explicit hash keys.
//!
//! This trades per-key ordering for throughput: records of a spread key land on
//! different shards and consumers may see them out of order. It is off by default.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::limiter::SHARD_RECORDS_PER_SECOND;
use crate::shard_map::{ShardMap, ShardRange};
use crate::HashKey;

/// When and how to spread hot partition keys (see [`ProducerBuilder::hot_key_spread`](crate::ProducerBuilder::hot_key_spread)).
///
/// ```
/// use kinesis_producer::HotKeySpread;
/// let spread = HotKeySpread::default().threshold(0.25).shards_per_key(8);
/// assert_eq!(spread.shards_per_key, 8);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HotKeySpread {
    /// Share of a shard's record limit (1,000 records/s) one key may use, measured over
    /// one-second windows, before its records are spread. Default 0.5.
    pub threshold: f64,
    /// How many shards a hot key is spread over, starting with its own. Default 4.
    pub shards_per_key: usize,
    /// The shards hot keys may be spread to; `None` (the default) means every open shard.
    pub eligible_shards: Option<HashSet<String>>,
}

impl Default for HotKeySpread {
    fn default() -> Self {
        HotKeySpread {
            threshold: 0.5,
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

/// Counts records per partition key and picks hash keys for hot ones.
#[derive(Debug)]
pub(crate) struct Spreader {
    config: HotKeySpread,
    limit: u32,
    window_start: Instant,
    counts: HashMap<String, u32>,
    /// Keys hot in the previous window, with a round-robin counter.
    hot: HashMap<String, usize>,
    /// The open shards hot keys may go to, by hash range.
    eligible: Vec<ShardRange>,
}

impl Spreader {
    pub fn new(config: HotKeySpread, now: Instant) -> Self {
        let limit = (SHARD_RECORDS_PER_SECOND * config.threshold.max(0.0)).ceil() as u32;
        Spreader {
            config,
            limit,
            window_start: now,
            counts: HashMap::new(),
            hot: HashMap::new(),
            eligible: Vec::new(),
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
    }

    fn roll_window(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) < WINDOW {
            return;
        }
        let limit = self.limit;
        let previous = std::mem::take(&mut self.hot);
        self.hot = self
            .counts
            .drain()
            .filter(|(_, count)| *count > limit)
            .map(|(key, _)| {
                let turn = previous.get(&key).copied().unwrap_or(0);
                (key, turn)
            })
            .collect();
        self.window_start = now;
    }

    /// The hash key to send a record of `partition_key` with, or `None` to route it by
    /// its own hash.
    pub fn route(&mut self, partition_key: &str, now: Instant) -> Option<HashKey> {
        self.roll_window(now);
        let count = match self.counts.get_mut(partition_key) {
            Some(count) => {
                *count += 1;
                *count
            }
            None => {
                self.counts.insert(partition_key.to_owned(), 1);
                1
            }
        };
        if count > self.limit && !self.hot.contains_key(partition_key) {
            self.hot.insert(partition_key.to_owned(), 0);
        }
        let turn = self.hot.get_mut(partition_key)?;
        let eligible = &self.eligible;
        if eligible.is_empty() {
            return None;
        }
        let own = HashKey::from_partition_key(partition_key);
        let start = eligible
            .iter()
            .position(|s| s.start <= own && own <= s.end)
            .unwrap_or((own.0 % eligible.len() as u128) as usize);
        let width = self.config.shards_per_key.clamp(1, eligible.len());
        let target = &eligible[(start + *turn % width) % eligible.len()];
        *turn = turn.wrapping_add(1);
        if target.start <= own && own <= target.end {
            None
        } else {
            Some(target.midpoint())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::shard_map::ShardRange;

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

    #[tokio::test(start_paused = true)]
    async fn cold_keys_keep_their_shard() {
        let map = map(4);
        let mut spreader = Spreader::new(HotKeySpread::default(), Instant::now());
        spreader.set_map(&map);
        for i in 0..10_000 {
            assert_eq!(spreader.route(&format!("key-{i}"), Instant::now()), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hot_key_spreads_over_the_configured_number_of_shards() {
        let map = map(8);
        let mut spreader = Spreader::new(HotKeySpread::default().shards_per_key(4), Instant::now());
        spreader.set_map(&map);
        let now = Instant::now();
        let mut shards = HashSet::new();
        for _ in 0..2_000 {
            let key = spreader
                .route("hot", now)
                .unwrap_or_else(|| HashKey::from_partition_key("hot"));
            shards.insert(map.shard_for(key).expect("covered").id.clone());
        }
        assert_eq!(shards.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn only_eligible_shards_receive_spread_records() {
        let map = map(8);
        let spread = HotKeySpread::default()
            .shards_per_key(8)
            .eligible_shards(["shard-1", "shard-2"]);
        let mut spreader = Spreader::new(spread, Instant::now());
        spreader.set_map(&map);
        let now = Instant::now();
        let mut shards = HashSet::new();
        for _ in 0..2_000 {
            if let Some(key) = spreader.route("hot", now) {
                shards.insert(map.shard_for(key).expect("covered").id.to_string());
            }
        }
        assert!(!shards.is_empty());
        assert!(
            shards.iter().all(|s| s == "shard-1" || s == "shard-2"),
            "{shards:?}"
        );
    }
}
