//! A graceful shutdown: offer the leases to running workers, let the processors finish
//! (`shutdown_requested`), abort what does not finish in time, and hand over or release
//! every lease whose task is gone.

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::resharding::Resharding;
use super::shards::Consumers;
use super::{Scheduler, SchedulerError};
use crate::shard_consumer::ShardOutcome;

impl Scheduler {
    /// Stops everything gracefully once the loop has ended (`stopped_by` is the error that
    /// ended it, if any): the lease layer's `tasks` at once, its `renewals` once every
    /// processor has finished.
    pub(super) async fn shut_down(
        &self,
        mut consumers: Consumers,
        mut resharding: Resharding,
        stopped_by: Option<SchedulerError>,
        mut renewals: JoinSet<()>,
        mut tasks: JoinSet<()>,
    ) -> Result<(), SchedulerError> {
        match &stopped_by {
            Some(error) => tracing::error!(worker = %self.worker_id, %error, "shutting down"),
            None => tracing::info!(worker = %self.worker_id, "shutting down"),
        }
        // Nothing more is taken or assigned.
        tasks.abort_all();
        self.leases.begin_shutdown().await;
        for (_, running) in consumers.running() {
            running.ask_to_finish();
        }
        let deadline = Instant::now() + self.config.shutdown_timeout;
        self.drain(&mut consumers, deadline, &mut resharding).await;
        if !consumers.tasks.is_empty() {
            tracing::warn!(
                remaining = consumers.tasks.len(),
                "processors did not finish within the shutdown timeout; aborting them"
            );
            consumers.tasks.abort_all();
            // Aborted tasks end at their next await; one blocking its thread does not.
            let grace = Instant::now() + self.config.failover_time;
            self.drain(&mut consumers, grace, &mut resharding).await;
        }
        let coordinator = self.leases.coordinator();
        for (key, _) in consumers.running() {
            tracing::error!(shard = %key, "a record processor is still running (blocking its thread?): its lease is not released and expires for other workers after the failover time");
            coordinator.abandon(key);
        }
        renewals.abort_all();
        let mut first_error = None;
        for held in coordinator.held_leases() {
            if let Err(error) = coordinator.release_lease(held.key()).await {
                tracing::warn!(shard = %held.key(), %error, "handing over or releasing lease failed");
                first_error.get_or_insert(error);
            }
        }
        self.leases.finish_shutdown().await;
        tracing::info!(worker = %self.worker_id, "shut down; leases handed over or released");
        match (stopped_by, first_error) {
            (Some(error), _) => Err(error),
            (None, Some(error)) => Err(error.into()),
            (None, None) => Ok(()),
        }
    }

    /// Waits for consumer tasks until `until`, handling each as it ends (releasing its
    /// lease: its task is gone).
    async fn drain(&self, consumers: &mut Consumers, until: Instant, resharding: &mut Resharding) {
        loop {
            let done = tokio::select! {
                done = consumers.tasks.join_next_with_id() => done,
                _ = tokio::time::sleep_until(until) => return,
            };
            let Some(done) = done else { return };
            let (id, outcome) = match done {
                Ok((id, outcome)) => (id, Some(outcome)),
                Err(error) => (error.id(), None),
            };
            let Some((key, _, _)) = consumers.ended(id) else {
                continue;
            };
            match outcome {
                Some(ShardOutcome::Ended(children)) => {
                    self.shard_ended(&key, children, resharding).await
                }
                _ => self.release(&key).await,
            }
        }
    }
}
