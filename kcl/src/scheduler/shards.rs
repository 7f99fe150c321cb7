//! The shard consumers of the scheduler's loop: one [`ShardState`] per shard, the start of
//! a consumer for each held lease that is ready, what its end means, and graceful
//! handoffs of running shards.

use std::collections::HashMap;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::resharding::Resharding;
use super::{InitialPosition, Scheduler, SchedulerError};
use crate::lease::{ExtendedSequenceNumber, SequencePosition};
use crate::metrics::RECORD_PROCESSOR_FAILURES;
use crate::retrieval::FetchError;
use crate::shard_consumer::{ShardConsumer, ShardOutcome};

/// A shard consumer's task, while it runs.
pub(super) struct Running {
    shutdown: watch::Sender<bool>,
    abort: tokio::task::AbortHandle,
    /// The checkpoint when the consumer started: a failure after progress starts the
    /// backoff afresh.
    started_at: ExtendedSequenceNumber,
}

impl Running {
    /// Asks the processor to finish (`shutdown_requested`).
    pub fn ask_to_finish(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Where a graceful handoff of a running shard consumer stands.
#[derive(Clone, Copy, Debug)]
pub(super) enum HandoffStage {
    /// Asked to finish; aborted at this time if still running.
    Finishing(Instant),
    /// Aborted; left to expire at this time if its task has still not ended.
    Aborted(Instant),
}

impl HandoffStage {
    fn at(self) -> Instant {
        match self {
            HandoffStage::Finishing(at) | HandoffStage::Aborted(at) => at,
        }
    }
}

/// What the scheduler knows of one shard.
#[derive(Default)]
pub(super) struct ShardState {
    pub running: Option<Running>,
    /// Not to start before this time (backoff after a failure).
    pub retry_after: Option<Instant>,
    /// Consecutive failures.
    pub failures: u32,
    /// When its parents were last checked (a child waiting for them).
    pub parents_checked: Option<Instant>,
    /// A graceful handoff under way: its processor was asked to finish.
    pub handoff: Option<HandoffStage>,
}

impl ShardState {
    /// Whether nothing worth keeping is left.
    fn is_idle(&self) -> bool {
        self.running.is_none()
            && self.retry_after.is_none()
            && self.failures == 0
            && self.handoff.is_none()
    }
}

/// The shard consumers' tasks and every shard's state.
#[derive(Default)]
pub(super) struct Consumers {
    pub tasks: JoinSet<ShardOutcome>,
    keys: HashMap<tokio::task::Id, String>,
    pub shards: HashMap<String, ShardState>,
}

impl Consumers {
    fn shard(&mut self, key: &str) -> &mut ShardState {
        self.shards.entry(key.to_owned()).or_default()
    }

    /// The shard of a task that ended, and its state (the consumer no longer runs).
    pub fn ended(
        &mut self,
        id: tokio::task::Id,
    ) -> Option<(String, Option<Running>, Option<HandoffStage>)> {
        let key = self.keys.remove(&id)?;
        let shard = self.shard(&key);
        let running = shard.running.take();
        let handoff = shard.handoff.take();
        Some((key, running, handoff))
    }

    /// Shards whose consumer is running.
    pub fn running(&self) -> impl Iterator<Item = (&String, &Running)> {
        self.shards
            .iter()
            .filter_map(|(key, shard)| shard.running.as_ref().map(|r| (key, r)))
    }
}

impl Scheduler {
    /// Starts a consumer for each held lease that is ready; returns when to look again for
    /// leases that will be ready later (after a backoff, or a stolen lease's wait).
    pub(super) async fn start_ready(
        &self,
        consumers: &mut Consumers,
        resharding: &mut Resharding,
    ) -> Option<Instant> {
        let coordinator = self.leases.coordinator();
        let held = coordinator.held_leases();
        let now = Instant::now();
        let mut wake: Option<Instant> = consumers
            .shards
            .values()
            .filter_map(|s| s.retry_after)
            .min();
        for shard in consumers.shards.values_mut() {
            shard.retry_after = shard.retry_after.filter(|at| *at > now);
        }
        consumers.shards.retain(|key, shard| {
            let is_held = held.iter().any(|h| h.key() == key);
            if !is_held {
                shard.parents_checked = None;
            }
            is_held || !shard.is_idle()
        });
        for held in held {
            let key = held.key().to_owned();
            let shard = consumers.shard(&key);
            if shard.running.is_some()
                || shard.retry_after.is_some()
                || held.is_lost()
                || held.is_handoff_requested()
            {
                continue;
            }
            if held.not_before() > now {
                wake = Some(wake.map_or(held.not_before(), |w| w.min(held.not_before())));
                continue;
            }
            let lease = held.copy();
            if lease.is_finished() {
                self.shard_ended(&key, Vec::new(), resharding).await;
                continue;
            }
            // A lease that has checkpointed a record started after its parents were done
            // (and since then their leases may have been cleaned up): only a lease still at
            // its initial position waits for its parents.
            let not_started = matches!(
                lease.checkpoint.position,
                SequencePosition::TrimHorizon
                    | SequencePosition::Latest
                    | SequencePosition::AtTimestamp
            );
            if not_started && !lease.parent_shard_ids.is_empty() {
                // Parents are read (one GetItem each) at most once per poll interval.
                let poll = self.config.parent_shard_poll_interval;
                if shard.parents_checked.is_some_and(|at| at.elapsed() < poll) {
                    continue;
                }
                shard.parents_checked = Some(Instant::now());
                if !self.parents_done(&lease, resharding).await {
                    continue;
                }
            }
            let (stop, stop_rx) = watch::channel(false);
            let consumer = ShardConsumer {
                held: held.clone(),
                processor: self.factory.create_processor(),
                client: self.kinesis.clone(),
                stream: self.stream.clone(),
                retrieval: self.retrieval.clone(),
                options: self.fetch_options(),
                initial_timestamp: match self.initial_position {
                    InitialPosition::AtTimestamp(t) => Some(t),
                    _ => None,
                },
                shutdown: stop_rx,
                dead_letter: self.config.dead_letter.clone(),
                application: self.metrics.worker().application().to_owned(),
                retry_backoff: (
                    self.config.failure_backoff_min,
                    self.config.failure_backoff_max,
                ),
            };
            tracing::info!(shard = %key, worker = %self.worker_id, checkpoint = %lease.checkpoint, "starting shard consumer");
            let task = consumers.tasks.spawn(
                consumer
                    .run()
                    .instrument(tracing::info_span!("shard", shard = %key)),
            );
            consumers.keys.insert(task.id(), key.clone());
            consumers.shard(&key).running = Some(Running {
                shutdown: stop,
                abort: task,
                started_at: lease.checkpoint,
            });
        }
        wake
    }

    /// Acts on how a shard consumer finished; returns whether its shard ended.
    pub(super) async fn finished(
        &self,
        key: &str,
        outcome: ShardOutcome,
        running: Option<Running>,
        consumers: &mut Consumers,
        resharding: &mut Resharding,
    ) -> Result<bool, SchedulerError> {
        Ok(match outcome {
            ShardOutcome::Ended(children) => {
                consumers.shard(key).failures = 0;
                self.shard_ended(key, children, resharding).await;
                true
            }
            ShardOutcome::BatchFailed => {
                self.failed(key, "batch_failed", running, consumers);
                false
            }
            ShardOutcome::EndNotCheckpointed => {
                self.failed(key, "shard_end_not_checkpointed", running, consumers);
                false
            }
            ShardOutcome::ReadFailed(FetchError::StreamNotFound(error)) => {
                // The lease is released at shutdown, with every other one.
                return Err(SchedulerError::kinesis(&self.stream, error));
            }
            ShardOutcome::ReadFailed(error) => {
                tracing::error!(shard = %key, %error, "the shard cannot be read");
                self.failed(key, "read_failed", running, consumers);
                false
            }
            ShardOutcome::LeaseLost => {
                self.leases.coordinator().drop_if_lost(key);
                false
            }
            ShardOutcome::Shutdown => false,
        })
    }

    /// A shard consumer failed (processor panic, no `SHARD_END` checkpoint, unreadable
    /// shard): retry it after an exponential backoff, reset when it had made progress.
    pub(super) fn failed(
        &self,
        key: &str,
        reason: &'static str,
        running: Option<Running>,
        consumers: &mut Consumers,
    ) {
        let coordinator = self.leases.coordinator();
        let progressed = match (running, coordinator.held_lease(key)) {
            (Some(running), Some(held)) => held.copy().checkpoint != running.started_at,
            _ => false,
        };
        let shard = consumers.shard(key);
        if progressed {
            shard.failures = 0;
        }
        shard.failures += 1;
        let failures = shard.failures;
        let exponent = (failures - 1).min(20);
        let delay = self
            .config
            .failure_backoff_min
            .saturating_mul(1 << exponent)
            .min(self.config.failure_backoff_max);
        shard.retry_after = Some(Instant::now() + delay);
        self.metrics
            .shard(key)
            .counter_with(RECORD_PROCESSOR_FAILURES, "reason", reason)
            .increment(1);
        tracing::error!(shard = %key, reason, failures, retry_in = ?delay, "shard consumer failed; retrying after a backoff");
        coordinator.drop_if_lost(key);
    }

    /// Gives up a lease nothing acts on any more: handed over when asked for, else released
    /// (see [`LeaseCoordinator::release_lease`](crate::leases::LeaseCoordinator::release_lease)).
    pub(super) async fn release(&self, key: &str) {
        if let Err(error) = self.leases.coordinator().release_lease(key).await {
            tracing::warn!(shard = %key, %error, "handing over or releasing lease failed");
        }
    }

    /// Acts on handoff requests: asks the processor of each requested lease to finish (or
    /// hands the lease over at once when it has none), stops processors that did not
    /// finish within the handoff timeout, and leaves a lease whose processor cannot be
    /// stopped to expire. Returns when to look again.
    pub(super) async fn hand_off_requested(&self, consumers: &mut Consumers) -> Option<Instant> {
        let now = Instant::now();
        let timeout = self
            .config
            .graceful_lease_handoff_timeout
            .unwrap_or(self.config.shutdown_timeout);
        let coordinator = self.leases.coordinator();
        for held in coordinator.held_leases() {
            let key = held.key();
            if !held.is_handoff_requested() || held.is_lost() {
                continue;
            }
            let shard = consumers.shard(key);
            match (&shard.running, shard.handoff) {
                (Some(running), None) => {
                    tracing::info!(shard = %key, to = ?held.handoff_target(), "handing off: asking the processor to finish");
                    running.ask_to_finish();
                    shard.handoff = Some(HandoffStage::Finishing(now + timeout));
                }
                (Some(running), Some(HandoffStage::Finishing(at))) if at <= now => {
                    tracing::warn!(shard = %key, ?timeout, "the processor did not finish within the graceful handoff timeout: stopping it");
                    running.abort.abort();
                    let grace = now + self.config.failover_time;
                    shard.handoff = Some(HandoffStage::Aborted(grace));
                }
                (Some(_), Some(HandoffStage::Aborted(at))) if at <= now => {
                    tracing::error!(shard = %key, "a record processor is still running (blocking its thread?): its lease is not handed over and expires for the next owner after the failover time");
                    coordinator.abandon(key);
                    shard.handoff = None;
                }
                (Some(_), Some(_)) => {}
                (None, _) => {
                    // Not started (waiting for its parents, a backoff or a previous
                    // holder's deadline): nothing to finish.
                    shard.retry_after = None;
                    self.release(key).await;
                }
            }
        }
        consumers
            .shards
            .values()
            .filter_map(|s| s.handoff.map(HandoffStage::at))
            .min()
    }
}
