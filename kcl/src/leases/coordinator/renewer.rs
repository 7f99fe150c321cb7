//! Renewal: every held lease is renewed each renewal interval, each on its own, on a task
//! of its own apart from the scheduler's loop.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::super::held::Renewal;
use super::LeaseCoordinator;

/// Renews the held leases every `interval`: each round runs on its own (a hung call never
/// delays the next round; a lease whose renewal is still running is skipped), and a round
/// that starts late says so, since it means the runtime is starved (a record processor
/// blocking a thread).
pub(crate) async fn renew_forever(coordinator: Arc<LeaseCoordinator>, interval: Duration) {
    let mut rounds = JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut expected = Instant::now();
    loop {
        tick.tick().await;
        let late = expected.elapsed();
        if late > interval / 2 {
            tracing::warn!(?late, "lease renewal ran late: the runtime is starved (does a record processor block a thread? offload blocking work with tokio::task::spawn_blocking)");
        }
        expected = Instant::now() + interval;
        while rounds.try_join_next().is_some() {}
        let coordinator = coordinator.clone();
        rounds.spawn(async move {
            coordinator.renew_leases().await;
        });
    }
}

impl LeaseCoordinator {
    /// Renews every held lease once, each on its own (a slow renewal of one lease never
    /// delays another's, and never waits for a checkpoint); every call is bounded by the
    /// request timeout. Leases whose renewal found them taken, and leases past their local
    /// deadline, are marked lost and dropped. Returns the keys of the leases lost.
    pub async fn renew_leases(&self) -> Vec<String> {
        let held = self.held_leases();
        let renewals = &self.metrics.renewals;
        let results = join_all(held.iter().map(|held| async move {
            let renewal = held.renew().await;
            renewals.record(matches!(renewal, Renewal::Renewed));
            match renewal {
                Renewal::Renewed => false,
                Renewal::Lost => true,
                Renewal::Failed(error) => {
                    tracing::warn!(shard = %held.key(), %error, deadline_in = ?held.deadline().saturating_duration_since(Instant::now()), "lease renewal failed");
                    held.is_lost()
                }
            }
        }))
        .await;
        let mut lost = Vec::new();
        for (held, is_lost) in held.iter().zip(results) {
            if is_lost || held.is_lost() {
                self.forget_lost(held.key());
                lost.push(held.key().to_owned());
            }
        }
        lost
    }
}
