//! Discovery: between taker (or assignment) rounds, a worker looks for leases the table
//! names it the owner of (through the owner index), handoffs asked of it, and handoffs to
//! it under way, so that a lease moves in a fraction of a second.

use std::collections::{BTreeSet, HashSet};

use tokio::time::Instant;

use super::super::held::timed;
use super::LeaseCoordinator;
use crate::lease::Lease;

impl LeaseCoordinator {
    /// Looks for handoffs between rounds, so that a lease moves in a fraction of a second:
    /// leases the table names this worker the owner of that it does not hold (when the
    /// store lists a worker's leases cheaply, by the owner index), held leases it no longer
    /// names this worker's (a handoff request), and handoffs to this worker under way
    /// (one consistent read each). A lease handed over is taken and starts at once; a
    /// handoff whose holder stopped renewing is taken once it expired; one its holder has
    /// not completed within the graceful handoff timeout plus the failover time is taken
    /// as a steal. Returns the keys taken.
    pub async fn discover(&self) -> Vec<String> {
        let me = self.config.worker_id.as_str();
        let timeout = self.config.request_timeout();
        let mut check: BTreeSet<String> = self.pending_map().keys().cloned().collect();
        if self.store.lists_owned_keys_cheaply() {
            match timed(timeout, self.store.list_lease_keys_owned_by(me)).await {
                Ok(keys) => {
                    let named: HashSet<String> = keys.into_iter().collect();
                    let held: HashSet<String> = self.held_map().keys().cloned().collect();
                    check.extend(named.symmetric_difference(&held).cloned());
                }
                Err(error) => tracing::debug!(%error, "listing this worker's leases failed"),
            }
        }
        let mut taken = Vec::new();
        for key in check {
            let lease = match timed(timeout, self.store.get_lease(&key)).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    self.pending_map().remove(&key);
                    continue;
                }
                Err(error) => {
                    tracing::debug!(shard = %key, %error, "reading a lease failed");
                    continue;
                }
            };
            let now = Instant::now();
            let changed_at = {
                self.observations()
                    .observe(&lease.lease_key, &lease.lease_counter, now)
            };
            if self.held_lease(&key).is_some() {
                self.reconcile_held(&lease);
                continue;
            }
            if !lease.is_owned_by(me) || lease.is_finished() {
                self.pending_map().remove(&key);
                continue;
            }
            if lease.handoff_pending() {
                let since = *self.pending_map().entry(key.clone()).or_insert(now);
                if !lease.is_handoff_accepted() {
                    self.accept(&lease).await;
                }
                let failover = self.config.failover_time;
                let not_before = if now.duration_since(changed_at) > failover {
                    // Its holder stopped renewing: expired.
                    now
                } else if self
                    .config
                    .graceful_handoff_timeout
                    .is_some_and(|timeout| now.duration_since(since) > timeout + failover)
                {
                    tracing::warn!(shard = %key, holder = ?lease.checkpoint_owner, "the holder did not complete the handoff in time: taking the lease");
                    self.holder_deadline(&key, now)
                } else {
                    continue;
                };
                if let Some(key) = self.take_one(&lease, not_before, true).await {
                    taken.push(key);
                }
                continue;
            }
            let not_before = self.assigned_not_before(&lease, now);
            if let Some(key) = self.take_one(&lease, not_before, false).await {
                taken.push(key);
            }
        }
        taken
    }

    /// Completes when a lease was taken, or a held lease's handoff requested (see
    /// [`HeldLease::is_handoff_requested`]).
    pub async fn changed(&self) {
        self.changes.notified().await;
    }

    /// Accepts a lease offered to this worker (by a holder shutting down) while it runs,
    /// has room for it, and is not shutting down itself. A request this worker made is
    /// accepted too: the holder does not need it, but the table then shows it.
    async fn accept(&self, lease: &Lease) {
        let room =
            self.held_map().len() + self.pending_map().len() <= self.config.max_leases_per_worker;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) || !room {
            return;
        }
        let call = self.store.accept_handoff(lease);
        match timed(self.config.request_timeout(), call).await {
            Ok(_) => {
                tracing::debug!(shard = %lease.lease_key, from = ?lease.checkpoint_owner, "accepted handoff")
            }
            Err(error) => {
                tracing::debug!(shard = %lease.lease_key, %error, "accepting a handoff failed")
            }
        }
    }

    /// Whether a handoff to this worker is under way (the scheduler then looks for its
    /// completion more often than at the discovery interval).
    pub fn awaiting_handoff(&self) -> bool {
        !self.pending_map().is_empty()
    }

    /// When a lease the table assigns to this worker may start: at once when its previous
    /// holder handed it over (or completed a handoff this worker was waiting for), or was
    /// nobody; otherwise after that holder's deadline.
    pub(super) fn assigned_not_before(&self, lease: &Lease, now: Instant) -> Instant {
        let was_pending = self.pending_map().remove(&lease.lease_key).is_some();
        if lease.is_handed_over() || (was_pending && !lease.handoff_pending()) {
            now
        } else {
            self.holder_deadline(&lease.lease_key, now)
        }
    }
}
