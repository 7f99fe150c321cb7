//! A small cache of partition key → hash key (the key's MD5), kept by the pipeline task.
//!
//! Producers usually cycle through a bounded set of partition keys (user ids, device
//! ids, tenants), so most records' keys were hashed moments ago. An MD5 costs about
//! 100 ns, a lookup here a fraction of that: a 64-bit hash of the key picks a set of
//! [`WAYS`] entries, whose hashes sit together in one cache line, compared by that hash,
//! then by the key itself, kept in its entry's own cache line beside its hash key (keys
//! up to [`INLINE`] bytes; longer ones are hashed directly). A miss replaces the set's
//! entries in turn.
//!
//! The cache grows to the keys in rotation: when fewer than three quarters of a window of
//! lookups hit, it doubles (from 4,096 entries up to 16,384, 1.25 MiB),
//! and the windows that refill it are not judged. A miss costs about half what a hit
//! saves, so at its largest the cache steps aside when it does not pay: when fewer than
//! a third of a window of lookups hit (keys that never repeat, or more keys in rotation
//! than it holds), the next fifteen windows of keys are hashed directly, then it tries
//! again.

use crate::HashKey;

/// Entries per set.
const WAYS: usize = 4;
/// Sets at first: 4,096 entries, 320 KiB, allocated on first use.
const FIRST_SETS: usize = 1_024;
/// Sets at most: 16,384 entries, 1.25 MiB.
const MAX_SETS: usize = 4 * FIRST_SETS;
/// Lookups between two checks of the hit rate.
const WINDOW: u32 = 4_096;
/// Windows of keys hashed without the cache after a window of too few hits.
const BYPASS_WINDOWS: u32 = 15;
/// Below this many hits in a window the cache grows, if it may.
const GROW_BELOW: u32 = WINDOW / 4 * 3;
/// Below this many hits in a window at its largest, the cache steps aside.
const BYPASS_BELOW: u32 = WINDOW / 3;

/// The longest key an entry holds: an entry is one cache line.
const INLINE: usize = 47;

#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Entry {
    /// The hash key's high and low halves (two words: a `u128` would pad the entry).
    hash_key: [u64; 2],
    len: u8,
    key: [u8; INLINE],
}

impl Entry {
    const EMPTY: Entry = Entry {
        hash_key: [0; 2],
        len: 0,
        key: [0; INLINE],
    };

    fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.len)]
    }
}

/// The [`fingerprint`]s of a set's entries (0: empty), in one cache line, and which
/// entry the next miss replaces.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Set {
    fingerprints: [u64; WAYS],
    next: usize,
}

/// Partition key → hash key, for recently used keys.
#[derive(Debug, Default)]
pub(crate) struct HashKeyCache {
    sets: Vec<Set>,
    /// `WAYS` entries per set.
    entries: Vec<Entry>,
    /// Lookups and hits in the current window.
    lookups: u32,
    hits: u32,
    /// Keys still to hash without the cache.
    bypass: u32,
    /// Lookups still to go before a window is judged again (the cache refilling after it
    /// grew).
    warming: u32,
}

/// A 64-bit hash of `key` (FxHash's multiply and rotate, eight bytes at a time): cheap,
/// and spread enough to pick a set and tell keys apart before comparing them.
fn fingerprint(key: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut hash = key.len() as u64;
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(bytes)).wrapping_mul(K);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut bytes = [0; 8];
        bytes[..rest.len()].copy_from_slice(rest);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(bytes)).wrapping_mul(K);
    }
    // Never 0, which marks an empty entry.
    hash | 1
}

impl HashKeyCache {
    /// The hash key of `partition_key`: its MD5, as [`HashKey::from_partition_key`].
    pub fn get(&mut self, partition_key: &str) -> HashKey {
        if self.bypass > 0 || partition_key.len() > INLINE {
            self.bypass = self.bypass.saturating_sub(1);
            return HashKey::from_partition_key(partition_key);
        }
        if self.sets.is_empty() {
            self.allocate(FIRST_SETS);
        }
        if self.warming > 0 {
            self.warming -= 1;
        } else {
            self.lookups += 1;
            if self.lookups == WINDOW {
                self.judge_window();
            }
        }
        let key = partition_key.as_bytes();
        let fingerprint = fingerprint(key);
        let index = set_index(fingerprint, self.sets.len());
        let set = &mut self.sets[index];
        let entries = &mut self.entries[index * WAYS..][..WAYS];
        let hit = (0..WAYS)
            .find(|&way| set.fingerprints[way] == fingerprint && entries[way].key() == key);
        let hash_key = match hit {
            Some(way) => {
                self.hits += 1;
                entries[way].hash_key
            }
            None => {
                let hash_key = HashKey::from_partition_key(partition_key).0;
                let way = set.next;
                set.next = (way + 1) % WAYS;
                set.fingerprints[way] = fingerprint;
                let entry = &mut entries[way];
                entry.hash_key = [(hash_key >> 64) as u64, hash_key as u64];
                entry.key[..key.len()].copy_from_slice(key);
                entry.len = key.len() as u8; // at most INLINE
                entry.hash_key
            }
        };
        HashKey((u128::from(hash_key[0]) << 64) | u128::from(hash_key[1]))
    }

    /// At the end of a window: grow, step aside or go on.
    fn judge_window(&mut self) {
        let hits = self.hits;
        self.lookups = 0;
        self.hits = 0;
        if hits < GROW_BELOW && self.sets.len() < MAX_SETS {
            let sets = self.sets.len() * 2;
            self.allocate(sets);
            // Keys in rotation come back once the cache has had a lookup per entry.
            self.warming = u32::try_from(sets * WAYS).unwrap_or(u32::MAX);
        } else if hits < BYPASS_BELOW {
            self.bypass = BYPASS_WINDOWS * WINDOW;
        }
    }

    /// Empties the cache into `sets` sets.
    fn allocate(&mut self, sets: usize) {
        self.sets.clear();
        self.sets.resize_with(sets, Set::default);
        self.entries.clear();
        self.entries.resize(sets * WAYS, Entry::EMPTY);
    }
}

/// The set of `fingerprint` among `sets` (a power of two): its top bits, which the
/// multiply mixes best.
fn set_index(fingerprint: u64, sets: usize) -> usize {
    (fingerprint >> (64 - sets.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_the_md5_of_every_key_however_they_repeat() {
        let mut cache = HashKeyCache::default();
        let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
        // Few keys (hits), then more keys than entries (misses and evictions), then
        // few keys again, with keys of every length up to a few words.
        let order = (0..5_000)
            .map(|i| i % 100)
            .chain(0..20_000)
            .chain((0..5_000).map(|i| (i * 7) % 300));
        for i in order {
            let key = &keys[i];
            assert_eq!(cache.get(key), HashKey::from_partition_key(key), "{key}");
        }
        for len in 1..60 {
            let key = "é".repeat(len);
            assert_eq!(cache.get(&key), HashKey::from_partition_key(&key));
            assert_eq!(cache.get(&key[..2]), HashKey::from_partition_key(&key[..2]));
            let key = "k".repeat(len);
            assert_eq!(cache.get(&key), HashKey::from_partition_key(&key));
            assert_eq!(cache.get(&key), HashKey::from_partition_key(&key));
        }
    }

    #[test]
    fn grows_then_steps_aside_while_keys_do_not_repeat() {
        let mut cache = HashKeyCache::default();
        let mut i = 0;
        while cache.bypass == 0 {
            let key = format!("once-{i}");
            assert_eq!(cache.get(&key), HashKey::from_partition_key(&key));
            i += 1;
            assert!(i < 20 * WINDOW, "never stepped aside");
        }
        assert_eq!(cache.sets.len(), MAX_SETS);
        assert_eq!(cache.bypass, BYPASS_WINDOWS * WINDOW);
        assert_eq!(cache.get("k"), HashKey::from_partition_key("k"));
    }

    #[test]
    fn keys_that_fit_keep_it_small() {
        let mut cache = HashKeyCache::default();
        for i in 0..10 * WINDOW {
            cache.get(&format!("key-{}", i % 1_000));
        }
        assert_eq!((cache.sets.len(), cache.bypass), (FIRST_SETS, 0));
    }

    #[test]
    fn grows_to_hold_more_keys_in_rotation_than_it_first_could() {
        let mut cache = HashKeyCache::default();
        let keys: Vec<String> = (0..10_000).map(|i| format!("partition-key-{i}")).collect();
        for key in keys.iter().cycle().take(10 * keys.len()) {
            assert_eq!(cache.get(key), HashKey::from_partition_key(key));
        }
        assert_eq!(cache.bypass, 0);
        assert_eq!(cache.sets.len(), MAX_SETS);
        assert_eq!(cache.warming, 0);
        (cache.lookups, cache.hits) = (0, 0);
        for key in keys.iter().cycle().take(WINDOW as usize - 1) {
            cache.get(key);
        }
        let hits = f64::from(cache.hits) / f64::from(WINDOW - 1);
        assert!(hits > 0.7, "hit rate {hits}");
    }

    #[test]
    fn keys_sharing_a_fingerprint_are_still_told_apart() {
        let mut cache = HashKeyCache::default();
        cache.get("a");
        // Plant a different key under "b"'s fingerprint, in "b"'s set.
        let fingerprint = fingerprint(b"b");
        let set = set_index(fingerprint, cache.sets.len());
        cache.sets[set].fingerprints[0] = fingerprint;
        let entry = &mut cache.entries[set * WAYS];
        entry.key[..5].copy_from_slice(b"not b");
        entry.len = 5;
        entry.hash_key = [0, 0];
        assert_eq!(cache.get("b"), HashKey::from_partition_key("b"));
    }
}
