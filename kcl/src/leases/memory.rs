//! An in-memory lease table with the same conditional semantics as the DynamoDB one, for
//! tests of the lease algorithm; it can fail requests on purpose.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::store::{CheckpointUpdate, LeaseStore, LeaseStoreError};
use crate::error::{ErrorKind, ServiceError};
use crate::lease::Lease;

/// An in-memory [`LeaseStore`].
#[derive(Debug)]
pub struct MemoryLeaseStore {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    leases: BTreeMap<String, Lease>,
    /// The owner index: lease keys per `leaseOwner`, kept in step with `leases`.
    owners: HashMap<String, BTreeSet<String>>,
    failure_rate: f64,
    fail_next: u32,
    rng: StdRng,
    requests: u64,
}

impl Default for MemoryLeaseStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLeaseStore {
    /// An empty store that never fails.
    pub fn new() -> Self {
        MemoryLeaseStore {
            inner: Mutex::new(Inner {
                leases: BTreeMap::new(),
                owners: HashMap::new(),
                failure_rate: 0.0,
                fail_next: 0,
                rng: StdRng::seed_from_u64(0),
                requests: 0,
            }),
        }
    }

    /// Fails each later request with a server error with probability `rate`, drawn from a
    /// generator seeded with `seed` (deterministic). For this crate's tests; applications
    /// inject faults with `test_util::FaultyLeaseStore`.
    #[cfg(test)]
    pub(crate) fn set_failure_rate(&self, rate: f64, seed: u64) {
        let mut inner = self.lock();
        inner.failure_rate = rate;
        inner.rng = StdRng::seed_from_u64(seed);
    }

    /// Fails the next `n` requests with a server error.
    #[cfg(test)]
    pub(crate) fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    /// A copy of every lease.
    pub fn snapshot(&self) -> Vec<Lease> {
        self.lock().leases.values().cloned().collect()
    }

    /// How many requests succeeded so far.
    pub fn successful_requests(&self) -> u64 {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a lease half-written: every
        // operation replaces whole values.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Leases<'_>) -> Result<T, LeaseStoreError>,
    ) -> Result<T, LeaseStoreError> {
        let mut inner = self.lock();
        if inner.fail_next > 0 {
            inner.fail_next -= 1;
            return Err(injected());
        }
        if inner.failure_rate > 0.0 {
            let rate = inner.failure_rate;
            if inner.rng.random_bool(rate.clamp(0.0, 1.0)) {
                return Err(injected());
            }
        }
        let Inner { leases, owners, .. } = &mut *inner;
        let result = f(&mut Leases { leases, owners });
        if result.is_ok() {
            inner.requests += 1;
        }
        result
    }

    /// Applies `change` to the lease with `lease`'s key if `holds` for it as stored.
    fn update_if(
        &self,
        lease: &Lease,
        holds: impl FnOnce(&Lease) -> bool,
        change: impl FnOnce(&mut Lease),
    ) -> Result<Lease, LeaseStoreError> {
        self.with(|leases| {
            let current = leases
                .leases
                .get_mut(&lease.lease_key)
                .filter(|c| holds(c))
                .ok_or_else(|| LeaseStoreError::ConditionFailed(lease.lease_key.clone()))?;
            let owner_before = current.lease_owner.clone();
            change(current);
            let written = current.clone();
            if written.lease_owner != owner_before {
                leases.reindex(
                    &written.lease_key,
                    owner_before.as_deref(),
                    written.lease_owner.as_deref(),
                );
            }
            Ok(written)
        })
    }

    /// Bumps the counter after `change`. Condition: counter (and, with `check_owner`, both
    /// owner attributes) unchanged.
    fn conditional(
        &self,
        lease: &Lease,
        check_owner: bool,
        change: impl FnOnce(&mut Lease),
    ) -> Result<Lease, LeaseStoreError> {
        self.update_if(
            lease,
            |c| c.lease_counter == lease.lease_counter && (!check_owner || same_owners(c, lease)),
            |current| {
                change(current);
                current.lease_counter += 1;
            },
        )
    }

    /// Changes the owner fields of a handoff under way, without a counter bump.
    fn handoff_fields(
        &self,
        lease: &Lease,
        change: impl FnOnce(&mut Lease),
    ) -> Result<Lease, LeaseStoreError> {
        self.update_if(
            lease,
            |c| c.checkpoint_owner.is_some() && same_owners(c, lease),
            change,
        )
    }
}

/// The leases and their owner index, changed together.
struct Leases<'a> {
    leases: &'a mut BTreeMap<String, Lease>,
    owners: &'a mut HashMap<String, BTreeSet<String>>,
}

impl Leases<'_> {
    fn get(&self, key: &str) -> Option<&Lease> {
        self.leases.get(key)
    }

    /// Moves `key` in the owner index from `before` to `after`.
    fn reindex(&mut self, key: &str, before: Option<&str>, after: Option<&str>) {
        if let Some(before) = before {
            if let Some(keys) = self.owners.get_mut(before) {
                keys.remove(key);
                if keys.is_empty() {
                    self.owners.remove(before);
                }
            }
        }
        if let Some(after) = after {
            self.owners
                .entry(after.to_owned())
                .or_default()
                .insert(key.to_owned());
        }
    }

    fn put(&mut self, lease: Lease) {
        let before = self
            .leases
            .get(&lease.lease_key)
            .and_then(|l| l.lease_owner.clone());
        self.reindex(
            &lease.lease_key,
            before.as_deref(),
            lease.lease_owner.as_deref(),
        );
        self.leases.insert(lease.lease_key.clone(), lease);
    }

    fn remove(&mut self, key: &str) {
        if let Some(lease) = self.leases.remove(key) {
            self.reindex(key, lease.lease_owner.as_deref(), None);
        }
    }
}

fn same_owners(a: &Lease, b: &Lease) -> bool {
    a.lease_owner == b.lease_owner && a.checkpoint_owner == b.checkpoint_owner
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError> {
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.with(|leases| Ok(leases.leases.values().cloned().collect()))
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, LeaseStoreError> {
        self.with(|leases| {
            Ok(leases
                .owners
                .get(owner)
                .map(|keys| keys.iter().cloned().collect())
                .unwrap_or_default())
        })
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        self.with(|leases| Ok(leases.get(lease_key).cloned()))
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        self.with(|leases| {
            if leases.get(&lease.lease_key).is_some() {
                return Ok(false);
            }
            leases.put(lease.clone());
            Ok(true)
        })
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.conditional(lease, true, |current| {
            if lease.throughput_kbps.is_some() {
                current.throughput_kbps = lease.throughput_kbps;
            }
        })
    }

    fn lists_owned_keys_cheaply(&self) -> bool {
        true
    }

    async fn take_lease(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseStoreError> {
        self.conditional(lease, false, |current| {
            if current.actual_owner() != Some(owner) {
                current.owner_switches_since_checkpoint += 1;
            }
            current.lease_owner = Some(owner.to_owned());
            current.checkpoint_owner = None;
            current.handoff_accepted_by = None;
        })
    }

    async fn evict_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.conditional(lease, true, |current| {
            if current.checkpoint_owner.take().is_none() {
                current.lease_owner = None;
            }
            current.handoff_accepted_by = None;
        })
    }

    async fn request_handoff(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.update_if(
            lease,
            |c| {
                c.lease_owner.is_some()
                    && c.lease_owner == lease.lease_owner
                    && c.checkpoint_owner.is_none()
            },
            |current| {
                current.checkpoint_owner = current.lease_owner.replace(to.to_owned());
                current.handoff_accepted_by = None;
            },
        )
    }

    async fn accept_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.handoff_fields(lease, |current| {
            current.handoff_accepted_by = current.lease_owner.clone();
        })
    }

    async fn cancel_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.handoff_fields(lease, |current| {
            current.lease_owner = current.checkpoint_owner.take();
            current.handoff_accepted_by = None;
        })
    }

    async fn hand_over(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        let counter = lease.lease_counter + 1;
        self.conditional(lease, true, |current| {
            if current.actual_owner() != Some(to) {
                current.owner_switches_since_checkpoint += 1;
            }
            current.lease_owner = Some(to.to_owned());
            current.checkpoint_owner = None;
            current.handoff_accepted_by = None;
            current.handoff_counter = Some(counter);
        })
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        update: &CheckpointUpdate,
    ) -> Result<Lease, LeaseStoreError> {
        self.conditional(lease, true, |current| {
            current.checkpoint = update.checkpoint.clone();
            current.pending_checkpoint = update.pending_checkpoint.clone();
            current.pending_checkpoint_state = update.pending_checkpoint_state.clone();
            current.owner_switches_since_checkpoint = 0;
        })
    }

    async fn update_child_shards(
        &self,
        lease: &Lease,
        child_shard_ids: &BTreeSet<String>,
    ) -> Result<Lease, LeaseStoreError> {
        self.conditional(lease, true, |current| {
            current.child_shard_ids = child_shard_ids.clone();
        })
    }

    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError> {
        self.with(|leases| {
            match leases.get(&lease.lease_key) {
                Some(current) if current.lease_counter == lease.lease_counter => {}
                _ => return Err(LeaseStoreError::ConditionFailed(lease.lease_key.clone())),
            }
            leases.remove(&lease.lease_key);
            Ok(())
        })
    }
}

fn injected() -> LeaseStoreError {
    LeaseStoreError::Service(ServiceError::new(
        "MemoryLeaseStore",
        ErrorKind::Other,
        "injected failure",
    ))
}
