//! A small cache of partition key → hash key (the key's MD5), kept by the pipeline task.
//!
//! Producers usually cycle through a bounded set of partition keys (user ids, device
//! ids, tenants), so most records' keys were hashed moments ago. An MD5 costs about
//! 100 ns, a lookup here a fraction of that: a 64-bit hash of the key picks a set of
//! [`WAYS`] entries, whose hashes sit together in one cache line, compared by that hash,
//! then by the key itself. A miss replaces the set's entries in turn, reusing their
//! string buffers, so a miss costs a lookup and a copy of the key, and no allocation
//! once the buffers fit.
//!
//! A miss costs about half what a hit saves, so the cache steps aside when it does not
//! pay: when fewer than a third of a window of lookups hit (keys that never repeat, or
//! more keys in rotation than it holds), the next fifteen windows of keys are hashed
//! directly, then it tries again.

use crate::HashKey;

/// Entries per set.
const WAYS: usize = 4;
/// Sets: 4,096 entries in all, some 200 KiB plus the keys, allocated on first use.
const SETS: usize = 1_024;
/// Lookups between two checks of the hit rate.
const WINDOW: u32 = 4_096;
/// Windows of keys hashed without the cache after a window of too few hits.
const BYPASS_WINDOWS: u32 = 15;

#[derive(Debug, Default)]
struct Entry {
    /// The hash key's high and low halves (two words: a `u128` would pad the entry).
    hash_key: [u64; 2],
    key: String,
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
    // The set comes from the high bits, which the multiply mixes best; never 0.
    hash | 1
}

impl HashKeyCache {
    /// The hash key of `partition_key`: its MD5, as [`HashKey::from_partition_key`].
    pub fn get(&mut self, partition_key: &str) -> HashKey {
        if self.bypass > 0 {
            self.bypass -= 1;
            return HashKey::from_partition_key(partition_key);
        }
        self.lookups += 1;
        if self.lookups == WINDOW {
            if self.hits < WINDOW / 3 {
                self.bypass = BYPASS_WINDOWS * WINDOW;
            }
            self.lookups = 0;
            self.hits = 0;
        }
        if self.sets.is_empty() {
            self.sets.resize_with(SETS, Set::default);
            self.entries.resize_with(SETS * WAYS, Entry::default);
        }
        let fingerprint = fingerprint(partition_key.as_bytes());
        // The top bits pick the set: below SETS.
        let index = (fingerprint >> (64 - SETS.trailing_zeros())) as usize;
        let set = &mut self.sets[index];
        let entries = &mut self.entries[index * WAYS..][..WAYS];
        let hit = (0..WAYS)
            .find(|&way| set.fingerprints[way] == fingerprint && entries[way].key == partition_key);
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
                entry.key.clear();
                entry.key.push_str(partition_key);
                entry.hash_key
            }
        };
        HashKey((u128::from(hash_key[0]) << 64) | u128::from(hash_key[1]))
    }
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
        for len in 1..40 {
            let key = "é".repeat(len);
            assert_eq!(cache.get(&key), HashKey::from_partition_key(&key));
            assert_eq!(cache.get(&key[..2]), HashKey::from_partition_key(&key[..2]));
        }
    }

    #[test]
    fn steps_aside_while_keys_do_not_repeat() {
        let mut cache = HashKeyCache::default();
        for i in 0..WINDOW {
            let key = format!("once-{i}");
            assert_eq!(cache.get(&key), HashKey::from_partition_key(&key));
        }
        assert_eq!(cache.bypass, BYPASS_WINDOWS * WINDOW);
        assert_eq!(cache.get("k"), HashKey::from_partition_key("k"));
        // Keys that repeat keep it in use.
        let mut cache = HashKeyCache::default();
        for i in 0..10 * WINDOW {
            cache.get(&format!("key-{}", i % 1_000));
        }
        assert_eq!(cache.bypass, 0);
    }

    #[test]
    fn keys_sharing_a_fingerprint_are_still_told_apart() {
        let mut cache = HashKeyCache::default();
        cache.get("a");
        // Plant a different key under "b"'s fingerprint, in "b"'s set.
        let fingerprint = fingerprint(b"b");
        let set = (fingerprint >> (64 - SETS.trailing_zeros())) as usize;
        cache.sets[set].fingerprints[0] = fingerprint;
        let entry = &mut cache.entries[set * WAYS];
        entry.key = "not b".to_owned();
        entry.hash_key = [0, 0];
        assert_eq!(cache.get("b"), HashKey::from_partition_key("b"));
    }
}
