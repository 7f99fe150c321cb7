//! A graceful stop of the lease layer: hand back what is on its way to this worker, and
//! offer each held lease to a live worker, which must accept it (see
//! [`LeaseCoordinator::begin_shutdown`]).

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use tokio::time::Instant;

use super::super::held::timed;
use super::super::store::LeaseStoreError;
use super::LeaseCoordinator;
use crate::leases::coordination::CoordinatorStore;

impl LeaseCoordinator {
    /// The first step of a graceful shutdown, before the processors are asked to finish.
    /// This worker stops accepting leases; hands back every lease it was to receive (a
    /// handoff it asked for or accepted is cancelled, a lease handed to it that it has not
    /// taken yet is released), so that nothing waits for a worker that is leaving; and
    /// offers each lease it holds to a live worker, the least loaded first.
    /// [`release_lease`](Self::release_lease) then hands each one over once its processor
    /// has finished, if that worker accepted it in time (within
    /// [`handoff_accept_wait`](LeaseCoordinatorConfig::handoff_accept_wait)), so it starts
    /// there at once; otherwise releases it. A worker that is shutting down itself never
    /// accepts, so a lease is never handed to a worker that is leaving. Without graceful
    /// handoff nothing is offered.
    pub async fn begin_shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.hand_back_incoming().await;
        if self.config.graceful_handoff_timeout.is_none() {
            return;
        }
        let mut live = self.live_candidates().await;
        let now = Instant::now();
        let mut offers = Vec::new();
        {
            for held in self.held_leases() {
                if held.is_lost()
                    || held.is_handoff_requested()
                    || held.not_before() > now
                    || held.copy().is_finished()
                {
                    continue;
                }
                let Some((worker, count)) = live
                    .iter_mut()
                    .min_by(|a, b| (*a.1).cmp(&*b.1).then(a.0.cmp(b.0)))
                else {
                    break;
                };
                *count += 1;
                offers.push((held, worker.clone()));
            }
        }
        join_all(offers.iter().map(|(held, to)| held.offer(to))).await;
    }

    /// The workers a lease may be offered to, with the leases each holds: the owners of
    /// unfinished leases in a fresh listing of the table (a worker that joined since the
    /// last taker round included), but for owners whose lease this worker has seen
    /// unchanged for the failover time (presumed dead). The last taker round's view when
    /// the listing fails. An owner that is not running does not accept, which costs the
    /// accept wait, not the lease.
    async fn live_candidates(&self) -> BTreeMap<String, usize> {
        let me = self.config.worker_id.as_str();
        if let Some(coordination) = &self.coordination {
            return self.live_rows(coordination.as_ref()).await;
        }
        let listed = timed(self.config.request_timeout(), self.store.list_leases()).await;
        let Ok(leases) = listed else {
            return self
                .live_workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        };
        let now = Instant::now();
        let observed = self.observations();
        let mut candidates: BTreeMap<String, usize> = BTreeMap::new();
        for lease in leases.iter().filter(|l| !l.is_finished()) {
            let Some(owner) = lease.lease_owner.as_deref().filter(|o| *o != me) else {
                continue;
            };
            let stale = observed.is_stale(
                &lease.lease_key,
                &lease.lease_counter,
                now,
                self.config.failover_time,
            );
            if !stale {
                *candidates.entry(owner.to_owned()).or_default() += 1;
            }
        }
        candidates
    }

    /// With a leader: the workers of this crate whose row is neither stopping nor fenced,
    /// names this stream when the worker consumes several, and was written within twice the
    /// failover time by this machine's clock (a guess, used
    /// only to pick whom to offer to: a worker that does not answer costs the accept wait,
    /// not the lease). Each counts as holding nothing, so offers go round the candidates.
    async fn live_rows(&self, coordination: &dyn CoordinatorStore) -> BTreeMap<String, usize> {
        let me = self.config.worker_id.as_str();
        let Ok(rows) = timed(self.config.request_timeout(), coordination.list_workers()).await
        else {
            return BTreeMap::new();
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let recent = |lut: Option<i64>| {
            lut.and_then(|t| u64::try_from(t).ok()).is_some_and(|t| {
                now.saturating_sub(t) <= 2 * self.config.failover_time.as_secs().max(1)
            })
        };
        rows.into_iter()
            .filter(|row| {
                row.worker_id != me
                    && row.is_heartbeating()
                    && !row.stopping
                    && !row.is_fenced()
                    && self.stream.as_deref().is_none_or(|s| row.consumes(s))
                    && recent(row.last_update_epoch_seconds)
            })
            .map(|row| (row.worker_id, 0))
            .collect()
    }

    /// Cancels the handoffs to this worker under way and releases the leases the table
    /// names this worker the owner of that it does not hold (but for abandoned ones, which
    /// must expire).
    pub(crate) async fn hand_back_incoming(&self) {
        let me = self.config.worker_id.as_str();
        let timeout = self.config.request_timeout();
        let mut keys: BTreeSet<String> = self.pending_map().drain().map(|(key, _)| key).collect();
        if let Ok(owned) = timed(timeout, self.store.list_lease_keys_owned_by(me)).await {
            keys.extend(owned);
        }
        let abandoned = self
            .abandoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for key in keys {
            if self.held_lease(&key).is_some() || abandoned.contains(&key) {
                continue;
            }
            // Twice: a handoff completed just before its cancellation is then released.
            for _ in 0..2 {
                let lease = match timed(timeout, self.store.get_lease(&key)).await {
                    Ok(Some(lease)) if lease.is_owned_by(me) => lease,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(shard = %key, %error, "reading a lease handed to this worker failed: it expires for the others");
                        break;
                    }
                };
                let call = if lease.handoff_pending() {
                    self.store.cancel_handoff(&lease)
                } else {
                    self.store.evict_lease(&lease)
                };
                match timed(timeout, call).await {
                    Ok(_) => {
                        tracing::info!(shard = %key, "shutting down: handed back a lease on its way to this worker");
                        break;
                    }
                    Err(LeaseStoreError::ConditionFailed(_)) => continue,
                    Err(error) => {
                        tracing::warn!(shard = %key, %error, "handing back a lease on its way to this worker failed: it expires for the others");
                        break;
                    }
                }
            }
        }
    }
}
