//! What this worker has seen of leases (or of other workers' rows): the version each one
//! showed and when this worker first saw it at that version, by its own clock. Something
//! whose version has not been seen to change for the failover time is stale: that is how
//! a lease expires, as AWS's Java KCL judges it. Clocks of different machines are never
//! compared: only this worker's observations count.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Seen<V> {
    version: V,
    since: Instant,
}

/// Versions seen per key, and since when (this worker's clock).
#[derive(Debug)]
pub(crate) struct Observations<V> {
    seen: HashMap<String, Seen<V>>,
}

impl<V> Default for Observations<V> {
    fn default() -> Self {
        Observations {
            seen: HashMap::new(),
        }
    }
}

impl<V: PartialEq + Clone> Observations<V> {
    /// Notes that `key` shows `version` at `now`; returns since when this worker has seen
    /// that version (now when it is new).
    pub fn observe(&mut self, key: &str, version: &V, now: Instant) -> Instant {
        match self.seen.get_mut(key) {
            Some(seen) if seen.version == *version => seen.since,
            Some(seen) => {
                seen.version = version.clone();
                seen.since = now;
                now
            }
            None => {
                self.seen.insert(
                    key.to_owned(),
                    Seen {
                        version: version.clone(),
                        since: now,
                    },
                );
                now
            }
        }
    }

    /// Since when `key` has shown the version last seen, if it was seen.
    pub fn since(&self, key: &str) -> Option<Instant> {
        self.seen.get(key).map(|seen| seen.since)
    }

    /// Whether `key` was last seen at `version`, unchanged for more than `stale_after`.
    pub fn is_stale(&self, key: &str, version: &V, now: Instant, stale_after: Duration) -> bool {
        self.seen.get(key).is_some_and(|seen| {
            seen.version == *version && now.duration_since(seen.since) > stale_after
        })
    }

    /// Forgets every key `keep` says no.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.seen.retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_version_is_dated_from_when_it_was_first_seen() {
        let mut seen = Observations::default();
        let start = Instant::now();
        assert_eq!(seen.observe("a", &1, start), start);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(seen.observe("a", &1, Instant::now()), start);
        assert!(!seen.is_stale("a", &1, Instant::now(), Duration::from_secs(5)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(seen.is_stale("a", &1, Instant::now(), Duration::from_secs(5)));
        assert!(!seen.is_stale("a", &2, Instant::now(), Duration::from_secs(5)));
        let changed = Instant::now();
        assert_eq!(seen.observe("a", &2, changed), changed);
        seen.retain(|key| key != "a");
        assert_eq!(seen.since("a"), None);
    }
}
