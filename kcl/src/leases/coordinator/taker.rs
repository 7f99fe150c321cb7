//! The taker round when every worker takes its own leases (the Java KCL 2.x way): list the
//! table, note what changed, decide ([`plan_take`]) and take or ask.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::super::held::timed;
use super::super::store::LeaseStoreError;
use super::plan::{plan_take, TakerView};
use super::LeaseCoordinator;
use crate::lease::Lease;

/// What one round of [`LeaseCoordinator::take_leases`] saw and did.
#[derive(Debug, Default)]
pub struct TakeRound {
    /// Every lease in the table, as listed at the start of the round.
    pub leases: Vec<Lease>,
    /// Keys of the leases taken in this round.
    pub taken: Vec<String>,
    /// How many of the taken leases were stolen from a live worker.
    pub stolen: usize,
    /// Keys of the leases whose graceful handoff to this worker was requested in this
    /// round.
    pub handoffs_requested: Vec<String>,
    /// When the first lease another worker holds expires if its counter does not change
    /// again: the time this round first saw its current counter plus the failover time.
    /// `None` when no other worker holds an unexpired lease.
    pub next_expiry: Option<Instant>,
}

/// Below this gap between taker rounds the next one is not brought forward.
const MIN_TAKER_GAP: Duration = Duration::from_millis(100);

/// When the next taker round should run, given the end of this one: after the taker
/// interval, or as soon as the first observed lease expires, whichever is first.
///
/// A lease is expired once its counter has not been seen to change for the failover time;
/// a round at a fixed interval finds it up to one interval after that (and when the
/// interval equals the failover time, a round that lands exactly on the expiry misses it
/// by a hair and the next one takes it: up to 3x the failover time after the holder's
/// last renewal). Looking at the moment of expiry takes it between 1x and 2x (the first
/// round that sees the final counter is up to one interval after it was written), with
/// no more rounds than before in a healthy fleet: live leases change between rounds, so
/// their expiry is one failover time after the latest round, which is the next periodic one.
pub(crate) fn next_take_at(
    round_end: Instant,
    interval: Duration,
    next_expiry: Option<Instant>,
) -> Instant {
    let periodic = round_end + interval;
    match next_expiry {
        // Just past the expiry: `take_leases` requires strictly more than the failover time.
        Some(expiry) => periodic
            .min((expiry + Duration::from_millis(1)).max(round_end + MIN_TAKER_GAP.min(interval))),
        None => periodic,
    }
}

impl LeaseCoordinator {
    /// One round of lease taking: lists the table, takes expired and unassigned leases
    /// first (up to `ceil(leases / workers)`, capped by `max_leases_per_worker`), and when
    /// there are none, steals at most `max_leases_to_steal_at_once` from the most loaded
    /// live worker, and only while that worker holds at least two more leases than this
    /// one, so the spread ends within one lease and never oscillates. With graceful handoff
    /// a steal is a request: the holder finishes and hands the lease over (see
    /// [`discover`](Self::discover)). Finished leases (checkpoint `SHARD_END`) are neither
    /// counted nor taken.
    pub async fn take_leases(&self) -> Result<TakeRound, LeaseStoreError> {
        let leases = timed(self.config.request_timeout(), self.store.list_leases()).await?;
        let now = Instant::now();
        let me = self.config.worker_id.as_str();
        for lease in &leases {
            self.reconcile_held(lease);
        }
        let held: HashSet<String> = self.held_map().keys().cloned().collect();

        let failover = self.config.failover_time;
        let mut next_expiry: Option<Instant> = None;
        let expired: HashSet<String> = {
            let mut observed = self.observations();
            let listed: HashSet<&str> = leases.iter().map(|l| l.lease_key.as_str()).collect();
            observed.retain(|key| listed.contains(key));
            leases
                .iter()
                .filter(|lease| {
                    let changed_at = observed.observe(&lease.lease_key, &lease.lease_counter, now);
                    let expired =
                        lease.lease_owner.is_none() || now.duration_since(changed_at) > failover;
                    if !expired && lease.actual_owner() != Some(me) && !lease.is_finished() {
                        let expiry = changed_at + failover;
                        next_expiry = Some(next_expiry.map_or(expiry, |e| e.min(expiry)));
                    }
                    expired
                })
                .map(|lease| lease.lease_key.clone())
                .collect()
        };
        let waiting: HashSet<String> = self.pending_map().keys().cloned().collect();
        let plan = {
            let view = TakerView {
                me,
                leases: &leases,
                expired: &expired,
                held: &held,
                waiting: &waiting,
            };
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            plan_take(view, &self.config, &mut *rng)
        };
        *self.live_workers.lock().unwrap_or_else(|e| e.into_inner()) = plan.live_workers;
        {
            let mut pending = self.pending_map();
            for key in plan.wait_for {
                pending.entry(key).or_insert(now);
            }
        }
        if plan.unprocessed > 0 {
            tracing::warn!(
                worker = %me,
                unprocessed = plan.unprocessed,
                max = self.config.max_leases_per_worker,
                "leases left without a worker: this worker is at max_leases_per_worker"
            );
        }
        let mut round = TakeRound {
            next_expiry,
            ..TakeRound::default()
        };
        for lease in plan.assigned {
            let not_before = self.assigned_not_before(&lease, now);
            if let Some(key) = self.take_one(&lease, not_before, false).await {
                round.taken.push(key);
            }
        }
        for lease in plan.take {
            let not_before = match lease.lease_owner {
                None => Instant::now(),
                Some(_) => self.holder_deadline(&lease.lease_key, now),
            };
            if let Some(key) = self.take_one(&lease, not_before, false).await {
                round.taken.push(key);
            }
        }
        for lease in plan.steal {
            if self.config.graceful_handoff_timeout.is_some() {
                if self.request_handoff(&lease).await {
                    round.handoffs_requested.push(lease.lease_key.clone());
                }
                continue;
            }
            let not_before = self.holder_deadline(&lease.lease_key, now);
            if let Some(key) = self.take_one(&lease, not_before, true).await {
                round.taken.push(key);
                round.stolen += 1;
            }
        }
        round.leases = leases;
        Ok(round)
    }
}
