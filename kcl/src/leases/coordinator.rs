//! Lease renewal, expiry, taking and balancing: what one worker does to hold its share of
//! the leases, and only while it holds them.
//!
//! Expiry is judged as AWS's Java KCL judges it: a lease whose counter this worker has not
//! seen change for the failover time, by this worker's own clock, is expired. Clocks of
//! different machines are never compared.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{LeaseStore, LeaseStoreError};
use crate::lease::Lease;

/// Settings of the lease algorithm.
#[derive(Clone, Debug)]
pub struct LeaseCoordinatorConfig {
    /// This worker's id, written as `leaseOwner`.
    pub worker_id: String,
    /// A lease whose counter did not change for this long is expired and may be taken
    /// (Java KCL `failoverTimeMillis`, default 10 s). Held leases are renewed every third
    /// of it.
    pub failover_time: Duration,
    /// The most leases this worker holds (Java KCL `maxLeasesForWorker`, default
    /// unlimited).
    pub max_leases_per_worker: usize,
    /// The most leases taken from another live worker in one round (Java KCL
    /// `maxLeasesToStealAtOneTime`, default 1).
    pub max_leases_to_steal_at_once: usize,
}

impl LeaseCoordinatorConfig {
    /// Java KCL defaults for `worker_id`.
    pub fn new(worker_id: impl Into<String>) -> Self {
        LeaseCoordinatorConfig {
            worker_id: worker_id.into(),
            failover_time: Duration::from_secs(10),
            max_leases_per_worker: usize::MAX,
            max_leases_to_steal_at_once: 1,
        }
    }
}

/// A lease this worker holds: the authoritative copy (every write to the lease goes
/// through it, so the fencing counter stays right) and a flag raised when it is lost.
#[derive(Debug)]
pub struct HeldLease {
    key: String,
    lease: tokio::sync::Mutex<Lease>,
    lost: watch::Sender<bool>,
    last_renewed: Mutex<Instant>,
}

impl HeldLease {
    fn new(lease: Lease, taken_at: Instant) -> Self {
        HeldLease {
            key: lease.lease_key.clone(),
            lease: tokio::sync::Mutex::new(lease),
            lost: watch::channel(false).0,
            last_renewed: Mutex::new(taken_at),
        }
    }

    /// The shard id.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A copy of the lease as last written.
    pub async fn snapshot(&self) -> Lease {
        self.lease.lock().await.clone()
    }

    /// Exclusive access for a conditional write; the caller stores the written lease back.
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Lease> {
        self.lease.lock().await
    }

    /// Whether the lease was lost (taken by another worker, or not renewed in time).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// A receiver that sees `true` once the lease is lost.
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.lost.subscribe()
    }

    pub(crate) fn mark_lost(&self) {
        self.lost.send_replace(true);
    }

    fn renewed(&self, at: Instant) {
        *self.last_renewed.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    fn since_renewed(&self) -> Duration {
        self.last_renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

#[derive(Debug)]
struct Observed {
    counter: u64,
    changed_at: Instant,
}

/// Renews, takes and releases one worker's leases.
pub struct LeaseCoordinator {
    store: Arc<dyn LeaseStore>,
    config: LeaseCoordinatorConfig,
    held: Mutex<BTreeMap<String, Arc<HeldLease>>>,
    observed: Mutex<HashMap<String, Observed>>,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for LeaseCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseCoordinator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one round of [`LeaseCoordinator::take_leases`] saw and did.
#[derive(Debug, Default)]
pub struct TakeRound {
    /// Every lease in the table, as listed at the start of the round.
    pub leases: Vec<Lease>,
    /// Keys of the leases taken in this round.
    pub taken: Vec<String>,
    /// How many of the taken leases were stolen from a live worker.
    pub stolen: usize,
}

impl LeaseCoordinator {
    /// A coordinator holding nothing yet.
    pub fn new(store: Arc<dyn LeaseStore>, config: LeaseCoordinatorConfig) -> Self {
        let mut hasher = DefaultHasher::new();
        config.worker_id.hash(&mut hasher);
        LeaseCoordinator {
            store,
            rng: Mutex::new(StdRng::seed_from_u64(hasher.finish())),
            config,
            held: Mutex::new(BTreeMap::new()),
            observed: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseCoordinatorConfig {
        &self.config
    }

    /// The lease store.
    pub fn store(&self) -> &Arc<dyn LeaseStore> {
        &self.store
    }

    fn held_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<HeldLease>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leases held now.
    pub fn held_leases(&self) -> Vec<Arc<HeldLease>> {
        self.held_map().values().cloned().collect()
    }

    /// The lease with this key, if held.
    pub fn held_lease(&self, key: &str) -> Option<Arc<HeldLease>> {
        self.held_map().get(key).cloned()
    }

    fn forget(&self, key: &str) {
        if let Some(held) = self.held_map().remove(key) {
            held.mark_lost();
        }
    }

    /// Renews every held lease once. Leases whose renewal's condition failed (another
    /// worker took them), or that could not be renewed for the failover time, are marked
    /// lost and dropped. Returns the keys of the leases lost.
    pub async fn renew_leases(&self) -> Vec<String> {
        let held = self.held_leases();
        let results = join_all(held.iter().map(|held| async move {
            if held.is_lost() {
                return true;
            }
            let mut lease = held.lock().await;
            // The time the write was sent, not when it was acknowledged: other workers
            // date the counter change no earlier than the write itself, so the local view
            // of the lease never outlives theirs.
            let sent = Instant::now();
            match self.store.renew_lease(&lease).await {
                Ok(renewed) => {
                    *lease = renewed;
                    held.renewed(sent);
                    false
                }
                Err(LeaseStoreError::ConditionFailed(_)) => {
                    tracing::info!(shard = %held.key, worker = %self.config.worker_id, "lease lost: taken by another worker");
                    true
                }
                Err(error) => {
                    let expired = held.since_renewed() >= self.config.failover_time;
                    tracing::warn!(shard = %held.key, %error, expired, "lease renewal failed");
                    expired
                }
            }
        }))
        .await;
        let mut lost = Vec::new();
        for (held, is_lost) in held.iter().zip(results) {
            if is_lost {
                self.forget(&held.key);
                lost.push(held.key.clone());
            }
        }
        lost
    }

    /// One round of lease taking: lists the table, takes expired and unassigned leases
    /// first (up to `ceil(leases / workers)`, capped by `max_leases_per_worker`), and when
    /// there are none, steals at most `max_leases_to_steal_at_once` from the most loaded
    /// live worker, and only while that worker holds at least two more leases than this
    /// one, so the spread ends within one lease and never oscillates. Finished leases (checkpoint `SHARD_END`) are neither
    /// counted nor taken.
    pub async fn take_leases(&self) -> Result<TakeRound, LeaseStoreError> {
        let leases = self.store.list_leases().await?;
        let now = Instant::now();
        let me = self.config.worker_id.as_str();
        let held_keys: HashSet<String> = self.held_map().keys().cloned().collect();

        let expired: HashSet<String> = {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            observed.retain(|key, _| leases.iter().any(|l| &l.lease_key == key));
            leases
                .iter()
                .filter(|lease| {
                    let seen = observed.entry(lease.lease_key.clone()).or_insert(Observed {
                        counter: lease.lease_counter,
                        changed_at: now,
                    });
                    if seen.counter != lease.lease_counter {
                        seen.counter = lease.lease_counter;
                        seen.changed_at = now;
                    }
                    lease.lease_owner.is_none()
                        || now.duration_since(seen.changed_at) > self.config.failover_time
                })
                .map(|lease| lease.lease_key.clone())
                .collect()
        };

        let active: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
        let mut counts: HashMap<&str, Vec<&Lease>> = HashMap::new();
        for lease in &active {
            if let Some(owner) = lease.lease_owner.as_deref() {
                if owner != me && !expired.contains(&lease.lease_key) {
                    counts.entry(owner).or_default().push(lease);
                }
            }
        }
        let mine = held_keys.len();
        let workers = counts.len() + 1;
        let target = active
            .len()
            .div_ceil(workers)
            .min(self.config.max_leases_per_worker);
        let needed = target.saturating_sub(mine);
        let mut round = TakeRound::default();
        if needed == 0 && target == self.config.max_leases_per_worker {
            let unprocessed = active
                .iter()
                .filter(|l| !held_keys.contains(&l.lease_key) && expired.contains(&l.lease_key))
                .count();
            if unprocessed > 0 {
                tracing::warn!(
                    worker = %me,
                    unprocessed,
                    max = self.config.max_leases_per_worker,
                    "leases left without a worker: this worker is at max_leases_per_worker"
                );
            }
        }
        if needed == 0 {
            round.leases = leases;
            return Ok(round);
        }

        let mut available: Vec<&Lease> = active
            .iter()
            .copied()
            .filter(|l| !held_keys.contains(&l.lease_key) && expired.contains(&l.lease_key))
            .collect();
        let mut to_take: Vec<Lease>;
        let mut stealing = false;
        {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            if !available.is_empty() {
                available.shuffle(&mut *rng);
                to_take = available.into_iter().take(needed).cloned().collect();
            } else {
                // Most loaded live worker; ties broken by name so every worker agrees.
                let victim = counts
                    .iter()
                    .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)));
                to_take = Vec::new();
                if let Some((_, victim_leases)) = victim {
                    // Steal only while the victim keeps more than this worker will have:
                    // every move then narrows the spread, so moves stop once the spread
                    // is at most one lease and no lease goes back and forth.
                    let spare = victim_leases.len().saturating_sub(mine) / 2;
                    let count = needed
                        .min(spare)
                        .min(self.config.max_leases_to_steal_at_once);
                    let mut candidates = victim_leases.clone();
                    candidates.shuffle(&mut *rng);
                    to_take = candidates.into_iter().take(count).cloned().collect();
                    stealing = true;
                }
            }
        }

        for lease in to_take {
            let sent = Instant::now();
            match self.store.take_lease(&lease, me).await {
                Ok(taken) => {
                    tracing::info!(shard = %taken.lease_key, worker = %me, previous_owner = ?lease.lease_owner, stolen = stealing, "took lease");
                    let key = taken.lease_key.clone();
                    self.held_map()
                        .insert(key.clone(), Arc::new(HeldLease::new(taken, sent)));
                    round.taken.push(key);
                    if stealing {
                        round.stolen += 1;
                    }
                }
                Err(LeaseStoreError::ConditionFailed(_)) => {
                    tracing::debug!(shard = %lease.lease_key, "lease changed before it could be taken");
                }
                Err(error) => {
                    tracing::warn!(shard = %lease.lease_key, %error, "taking lease failed");
                }
            }
        }
        round.leases = leases;
        Ok(round)
    }

    /// Gives up a held lease: removes the owner so another worker can take it at once,
    /// and marks it lost locally.
    pub async fn release_lease(&self, key: &str) -> Result<(), LeaseStoreError> {
        let Some(held) = self.held_lease(key) else {
            return Ok(());
        };
        let result = {
            let mut lease = held.lock().await;
            match self.store.evict_lease(&lease).await {
                Ok(released) => {
                    *lease = released;
                    Ok(())
                }
                // Someone else holds it now: nothing to release.
                Err(LeaseStoreError::ConditionFailed(_)) => Ok(()),
                Err(e) => Err(e),
            }
        };
        self.forget(key);
        result
    }

    /// Releases every held lease; returns the first error after trying them all.
    pub async fn release_all(&self) -> Result<(), LeaseStoreError> {
        let keys: Vec<String> = self.held_map().keys().cloned().collect();
        let results = join_all(keys.iter().map(|k| self.release_lease(k))).await;
        results.into_iter().collect()
    }

    /// Stops holding every lease without writing anything (they expire for others after
    /// the failover time). What a crashed worker amounts to.
    pub fn abandon_all(&self) {
        let keys: Vec<String> = self.held_map().keys().cloned().collect();
        for key in keys {
            self.forget(&key);
        }
    }
}

#[cfg(test)]
mod tests;
