//! The worker: holds its share of the leases, runs one shard consumer per held lease,
//! keeps the lease table in step with the stream's shards, and shuts down gracefully.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::types::{ChildShard, Shard};
use aws_types::SdkConfig;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::error::{ErrorKind, ServiceError};
use crate::lease::{ExtendedSequenceNumber, Lease, SequencePosition};
use crate::leases::{next_take_at, timed, LeaseCoordinator, LeaseStore, LeaseStoreError};
use crate::processor::ProcessorFactory;
use crate::retrieval::{list_shards, FanOutError, FetchError, FetchOptions};
use crate::shard_consumer::{Retrieval, ShardConsumer, ShardOutcome};
use crate::shard_sync::plan_shard_sync;
use crate::stream::StreamRef;

pub(crate) mod builder;

pub use builder::{SchedulerBuilder, SchedulerConfig};

/// Renews the held leases every `interval` on this task, apart from the scheduler's loop:
/// each round runs on its own (a hung call never delays the next round; a lease whose
/// renewal is still running is skipped), and a round that starts late says so, since it
/// means the runtime is starved (a record processor blocking a thread).
/// Runs `run` until `signal` completes, then asks it to stop through `handle` and waits
/// for it.
pub(crate) async fn run_until_signal<F>(
    run: impl std::future::Future<Output = Result<(), SchedulerError>>,
    handle: ShutdownHandle,
    signal: F,
) -> Result<(), SchedulerError>
where
    F: std::future::Future + Send,
{
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => return result,
        _ = signal => handle.shutdown(),
    }
    run.await
}

/// How often a worker looks for the completion of a handoff to it that is under way.
const HANDOFF_POLL_INTERVAL: Duration = Duration::from_millis(100);

async fn renew_forever(coordinator: Arc<LeaseCoordinator>, interval: Duration) {
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

/// Where a new application starts reading shards that have no lease yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record still in the stream (Java KCL `TRIM_HORIZON`).
    TrimHorizon,
    /// Only records written after the worker started (Java KCL default, `LATEST`).
    #[default]
    Latest,
    /// Records written at or after this time (`AT_TIMESTAMP`).
    AtTimestamp(SystemTime),
}

/// Why a scheduler could not be built or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// A required builder setting is missing.
    #[error("scheduler configuration: {0} is required")]
    MissingSetting(&'static str),
    /// A builder setting is out of range or does not apply to the chosen retrieval mode.
    #[error("scheduler configuration: {setting}: {reason}")]
    InvalidConfig {
        /// The setting, as the builder method that sets it is named.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The lease table could not be created or read.
    #[error("lease table")]
    LeaseTable(#[from] LeaseStoreError),
    /// The stream does not exist (when building), or no longer exists (when running: a
    /// read found its shard missing and ListShards the stream; `run` then shuts down
    /// gracefully and returns this).
    #[error("stream {stream} not found")]
    StreamNotFound {
        /// The stream, as given to the builder.
        stream: String,
        /// The call that said so.
        #[source]
        error: ServiceError,
    },
    /// Any other failed Kinesis call; [`ServiceError::kind`] tells missing permissions
    /// from throttling or an unreachable endpoint.
    #[error(transparent)]
    Kinesis(ServiceError),
    /// The enhanced fan-out stream consumer could not be found or registered.
    #[error("enhanced fan-out")]
    FanOut(#[from] FanOutError),
    /// A stream's scheduler in a [`MultiStreamScheduler`](crate::multi_stream::MultiStreamScheduler)
    /// panicked (a bug); the stream is started again at the next stream poll.
    #[error("the scheduler of stream {stream} panicked: {message}")]
    Panicked {
        /// The stream.
        stream: String,
        /// What the panic said.
        message: String,
    },
}

impl SchedulerError {
    /// A failed Kinesis call about `stream`: [`StreamNotFound`](Self::StreamNotFound) when
    /// the service said the stream does not exist.
    pub(crate) fn kinesis(stream: &StreamRef, error: ServiceError) -> Self {
        if error.kind() == ErrorKind::NotFound {
            SchedulerError::StreamNotFound {
                stream: stream.to_string(),
                error,
            }
        } else {
            SchedulerError::Kinesis(error)
        }
    }
}

/// Requests a graceful shutdown of a running [`Scheduler`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub(crate) fn new(sender: Arc<watch::Sender<bool>>) -> Self {
        ShutdownHandle(sender)
    }

    /// Asks the scheduler to stop: every processor gets `shutdown_requested`, then every
    /// lease is handed over to a worker that accepted it, or released. [`Scheduler::run`]
    /// returns when that is done.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// Tells which shards a running [`Scheduler`] holds leases for. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HeldShards(Arc<LeaseCoordinator>);

impl HeldShards {
    /// The shard ids whose leases this worker holds now (including leases whose processor
    /// has not started yet, such as a child waiting for its parents).
    pub fn shard_ids(&self) -> Vec<String> {
        self.0
            .held_leases()
            .iter()
            .filter(|held| !held.is_lost())
            .map(|held| held.key().to_owned())
            .collect()
    }
}

/// A KCL worker. Build it with [`Scheduler::builder`], then [`run`](Scheduler::run) it.
///
/// ```no_run
/// use async_trait::async_trait;
/// use kinesis_consumer::{
///     InitialPosition, ProcessRecordsInput, RecordProcessor, Scheduler, ShardEndedInput,
/// };
///
/// struct Printer;
///
/// #[async_trait]
/// impl RecordProcessor for Printer {
///     async fn process_records(&mut self, input: ProcessRecordsInput) {
///         for record in &input.records {
///             println!("{} {:?}", record.partition_key, record.data);
///         }
///         if let Err(e) = input.checkpointer.checkpoint().await {
///             eprintln!("checkpoint failed: {e}");
///         }
///     }
///
///     async fn shard_ended(&mut self, input: ShardEndedInput) {
///         // Required: lets the child shards start.
///         let _ = input.checkpointer.checkpoint().await;
///     }
/// }
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
/// let scheduler = Scheduler::builder(&config)
///     .stream("orders")
///     .application_name("order-indexer")
///     .initial_position(InitialPosition::TrimHorizon)
///     .processor_factory(|| Printer)
///     .build()
///     .await?;
/// let stop = scheduler.shutdown_handle();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     stop.shutdown();
/// });
/// scheduler.run().await?;
/// # Ok(()) }
/// ```
pub struct Scheduler {
    stream: StreamRef,
    worker_id: String,
    initial_position: InitialPosition,
    factory: Arc<dyn ProcessorFactory>,
    config: SchedulerConfig,
    store: Arc<dyn LeaseStore>,
    kinesis: aws_sdk_kinesis::Client,
    retrieval: Retrieval,
    coordinator: Arc<LeaseCoordinator>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("stream", &self.stream)
            .field("worker_id", &self.worker_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Running {
    shutdown: watch::Sender<bool>,
    abort: tokio::task::AbortHandle,
    /// The checkpoint when the consumer started: a failure after progress starts the
    /// backoff afresh.
    started_at: ExtendedSequenceNumber,
}

/// The state of the main loop.
#[derive(Default)]
struct Consumers {
    tasks: JoinSet<ShardOutcome>,
    keys: HashMap<tokio::task::Id, String>,
    running: HashMap<String, Running>,
    /// Shards not to start before this time (backoff after a failure).
    retry_after: HashMap<String, Instant>,
    /// Consecutive failures per shard.
    failures: HashMap<String, u32>,
    /// When the parents of a waiting lease were last checked.
    parents_checked: HashMap<String, Instant>,
    /// Leases being handed over whose processor was asked to finish: when it is stopped
    /// (aborted), or, once aborted, when the lease is left to expire.
    handing_off: HashMap<String, HandoffStage>,
}

/// Where a graceful handoff of a running shard consumer stands.
#[derive(Clone, Copy, Debug)]
enum HandoffStage {
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

/// The shards ListShards showed, and when.
struct ShardList {
    at: Instant,
    ids: HashSet<String>,
}

impl Scheduler {
    /// A builder using `sdk_config` (region, credentials, endpoints) for the Kinesis and
    /// DynamoDB clients, as [`Producer::builder`] takes it.
    ///
    /// [`Producer::builder`]: https://docs.rs/kinesis-producer/latest/kinesis_producer/struct.Producer.html#method.builder
    pub fn builder(sdk_config: &SdkConfig) -> SchedulerBuilder {
        SchedulerBuilder::new(sdk_config.clone())
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The settings in effect.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// A handle that tells which shards this worker holds while it runs.
    pub fn held_shards(&self) -> HeldShards {
        HeldShards(self.coordinator.clone())
    }

    /// A handle that stops [`run`](Scheduler::run) gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs the worker until a shutdown is requested through a [`ShutdownHandle`]. Then
    /// each lease is offered to a running worker, every processor gets
    /// `shutdown_requested` (and may checkpoint), and each lease is handed over (when that
    /// worker accepted it in time) or released once its processor's task is gone. A processor still running after the
    /// shutdown timeout is aborted; one that cannot be aborted (it blocks its thread) keeps
    /// its lease unreleased, so that nobody else starts on the shard while it may still run:
    /// the lease expires for the others after the failover time.
    ///
    /// Dropping or aborting the future stops everything at once without releasing leases
    /// (like a crash): other workers take them after the failover time.
    ///
    /// Everything it logs, its shard consumers' logs included, is inside a `worker` span
    /// (fields `worker` and `stream`), and each shard consumer's inside a `shard` span
    /// (field `shard`), so that two workers in one process have attributable logs.
    pub async fn run(self) -> Result<(), SchedulerError> {
        let span = tracing::info_span!(
            "worker",
            worker = %self.worker_id,
            stream = %self.stream.as_str()
        );
        self.run_in_span().instrument(span).await
    }

    async fn run_in_span(self) -> Result<(), SchedulerError> {
        let mut background = JoinSet::new();
        background.spawn(
            renew_forever(self.coordinator.clone(), self.config.lease_renewal_interval)
                .in_current_span(),
        );

        let mut consumers = Consumers::default();
        let mut shutdown = self.shutdown.subscribe();
        let mut shards: Option<ShardList> = None;
        let mut sync_needed = false;
        let mut leader = true;

        let mut stopped_by: Option<SchedulerError> = None;
        match self.sync_shards(&mut shards).await {
            Ok(()) => {}
            Err(error @ SchedulerError::StreamNotFound { .. }) => stopped_by = Some(error),
            Err(error) => {
                tracing::warn!(%error, "initial shard sync failed; retrying at the next interval")
            }
        }
        // The first taker round at once, then at the taker interval or when the first
        // observed lease expires (see `next_take_at`).
        let mut next_take = Instant::now();
        let mut sync_tick = tokio::time::interval(self.config.shard_sync_interval);
        let mut parent_tick = tokio::time::interval(self.config.parent_shard_poll_interval);
        for tick in [&mut sync_tick, &mut parent_tick] {
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        sync_tick.tick().await;

        let mut discovery_tick = tokio::time::interval(self.config.lease_discovery_interval);
        discovery_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut wake: Option<Instant> = None;
        while stopped_by.is_none() {
            tokio::select! {
                _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
                _ = self.coordinator.handoff_requested() => {}
                _ = discovery_tick.tick() => {
                    self.coordinator.discover().await;
                    if self.coordinator.awaiting_handoff() {
                        // A handoff to this worker completes in a fraction of a second.
                        discovery_tick.reset_after(
                            self.config.lease_discovery_interval.min(HANDOFF_POLL_INTERVAL),
                        );
                    }
                }
                _ = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep_until(next_take) => {
                    next_take = self.take(&mut leader).await;
                }
                _ = parent_tick.tick() => {
                    // A hole (a parent without a lease, a failed child create) is repaired
                    // without waiting for the periodic sync.
                    if sync_needed {
                        match self.sync_shards(&mut shards).await {
                            Ok(()) => sync_needed = false,
                            Err(error @ SchedulerError::StreamNotFound { .. }) => {
                                stopped_by = Some(error);
                                continue;
                            }
                            Err(error) => tracing::warn!(%error, "shard sync failed"),
                        }
                    }
                }
                _ = sync_tick.tick() => {
                    // Shard sync by one worker at a time: the one whose id sorts first
                    // among the owners in the last taker round (every worker when nobody
                    // owns anything yet), or any worker that saw a hole.
                    if leader || sync_needed {
                        match self.sync_shards(&mut shards).await {
                            Ok(()) => sync_needed = false,
                            Err(error @ SchedulerError::StreamNotFound { .. }) => {
                                stopped_by = Some(error);
                                continue;
                            }
                            Err(error) => tracing::warn!(%error, "shard sync failed"),
                        }
                    }
                }
                Some(done) = consumers.tasks.join_next_with_id() => {
                    let (id, outcome) = match done {
                        Ok((id, outcome)) => (id, Ok(outcome)),
                        Err(error) => (error.id(), Err(error)),
                    };
                    let Some(key) = consumers.keys.remove(&id) else { continue };
                    let running = consumers.running.remove(&key);
                    if consumers.handing_off.remove(&key).is_some()
                        && !matches!(outcome, Ok(ShardOutcome::Ended(_)))
                    {
                        self.release(&key).await;
                        continue;
                    }
                    let ended = match outcome {
                        Ok(outcome) => {
                            match self
                                .finished(&key, outcome, running, &mut consumers, &mut sync_needed)
                                .await
                            {
                                Ok(ended) => ended,
                                Err(error) => {
                                    stopped_by = Some(error);
                                    break;
                                }
                            }
                        }
                        Err(error) => {
                            let reason = if error.is_panic() { "panic" } else { "cancelled" };
                            self.failed(&key, reason, running, &mut consumers);
                            false
                        }
                    };
                    if ended {
                        // The children's leases were just created: take them now rather
                        // than at the next taker round.
                        next_take = self.take(&mut leader).await;
                    }
                }
            }
            let handoff_wake = self.hand_off_requested(&mut consumers).await;
            wake = self
                .start_ready(&mut consumers, &mut shards, &mut sync_needed)
                .await;
            if let Some(at) = handoff_wake {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }

        match &stopped_by {
            Some(error) => tracing::error!(worker = %self.worker_id, %error, "shutting down"),
            None => tracing::info!(worker = %self.worker_id, "shutting down"),
        }
        self.coordinator.begin_shutdown().await;
        for consumer in consumers.running.values() {
            consumer.shutdown.send_replace(true);
        }
        let deadline = Instant::now() + self.config.shutdown_timeout;
        self.drain(&mut consumers, deadline, &mut sync_needed).await;
        if !consumers.tasks.is_empty() {
            tracing::warn!(
                remaining = consumers.tasks.len(),
                "processors did not finish within the shutdown timeout; aborting them"
            );
            consumers.tasks.abort_all();
            // Aborted tasks end at their next await; one blocking its thread does not.
            let grace = Instant::now() + self.config.failover_time;
            self.drain(&mut consumers, grace, &mut sync_needed).await;
        }
        for key in consumers.running.keys() {
            tracing::error!(shard = %key, "a record processor is still running (blocking its thread?): its lease is not released and expires for other workers after the failover time");
            self.coordinator.abandon(key);
        }
        background.abort_all();
        let mut first_error = None;
        for held in self.coordinator.held_leases() {
            if let Err(error) = self.coordinator.release_lease(held.key()).await {
                tracing::warn!(shard = %held.key(), %error, "handing over or releasing lease failed");
                first_error.get_or_insert(error);
            }
        }
        tracing::info!(worker = %self.worker_id, "shut down; leases handed over or released");
        match (stopped_by, first_error) {
            (Some(error), _) => Err(error),
            (None, Some(error)) => Err(error.into()),
            (None, None) => Ok(()),
        }
    }

    /// Waits for consumer tasks until `until`, handling each as it ends (releasing its
    /// lease: its task is gone).
    async fn drain(&self, consumers: &mut Consumers, until: Instant, sync_needed: &mut bool) {
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
            let Some(key) = consumers.keys.remove(&id) else {
                continue;
            };
            consumers.running.remove(&key);
            consumers.handing_off.remove(&key);
            match outcome {
                Some(ShardOutcome::Ended(children)) => {
                    self.shard_ended(&key, children, sync_needed).await
                }
                _ => self.release(&key).await,
            }
        }
    }

    /// Gives up a lease nothing acts on any more: handed over when asked for, else released
    /// (see [`LeaseCoordinator::release_lease`]).
    async fn release(&self, key: &str) {
        if let Err(error) = self.coordinator.release_lease(key).await {
            tracing::warn!(shard = %key, %error, "handing over or releasing lease failed");
        }
    }

    /// Acts on handoff requests: asks the processor of each requested lease to finish (or
    /// hands the lease over at once when it has none), stops processors that did not
    /// finish within the handoff timeout, and leaves a lease whose processor cannot be
    /// stopped to expire. Returns when to look again.
    async fn hand_off_requested(&self, consumers: &mut Consumers) -> Option<Instant> {
        let now = Instant::now();
        let timeout = self
            .config
            .graceful_lease_handoff_timeout
            .unwrap_or(self.config.shutdown_timeout);
        for held in self.coordinator.held_leases() {
            let key = held.key();
            if !held.is_handoff_requested() || held.is_lost() {
                continue;
            }
            match (consumers.running.get(key), consumers.handing_off.get(key)) {
                (Some(running), None) => {
                    tracing::info!(shard = %key, to = ?held.handoff_target(), "handing off: asking the processor to finish");
                    running.shutdown.send_replace(true);
                    consumers
                        .handing_off
                        .insert(key.to_owned(), HandoffStage::Finishing(now + timeout));
                }
                (Some(running), Some(HandoffStage::Finishing(at))) if *at <= now => {
                    tracing::warn!(shard = %key, ?timeout, "the processor did not finish within the graceful handoff timeout: stopping it");
                    running.abort.abort();
                    let grace = now + self.config.failover_time;
                    consumers
                        .handing_off
                        .insert(key.to_owned(), HandoffStage::Aborted(grace));
                }
                (Some(_), Some(HandoffStage::Aborted(at))) if *at <= now => {
                    tracing::error!(shard = %key, "a record processor is still running (blocking its thread?): its lease is not handed over and expires for the next owner after the failover time");
                    self.coordinator.abandon(key);
                    consumers.handing_off.remove(key);
                }
                (Some(_), Some(_)) => {}
                (None, _) => {
                    // Not started (waiting for its parents, a backoff or a previous
                    // holder's deadline): nothing to finish.
                    consumers.retry_after.remove(key);
                    self.release(key).await;
                }
            }
        }
        consumers.handing_off.values().map(|stage| stage.at()).min()
    }

    /// One taker round; updates whether this worker leads shard syncs and returns when the
    /// next round is due.
    async fn take(&self, leader: &mut bool) -> Instant {
        let interval = self.config.lease_taker_interval;
        match self.coordinator.take_leases().await {
            Ok(round) => {
                let first_owner = round
                    .leases
                    .iter()
                    .filter(|l| !l.is_finished())
                    .filter_map(|l| l.lease_owner.as_deref())
                    .min();
                *leader = first_owner.is_none_or(|first| first >= self.worker_id.as_str());
                next_take_at(Instant::now(), interval, round.next_expiry)
            }
            Err(error) => {
                tracing::warn!(%error, "lease taking failed");
                Instant::now() + interval
            }
        }
    }

    /// [`run`](Scheduler::run) until `signal` completes (for example
    /// `tokio::signal::ctrl_c()`), then shuts down gracefully.
    pub async fn run_until<F>(self, signal: F) -> Result<(), SchedulerError>
    where
        F: std::future::Future + Send,
    {
        let handle = self.shutdown_handle();
        run_until_signal(self.run(), handle, signal).await
    }

    /// Acts on how a shard consumer finished; returns whether its shard ended.
    async fn finished(
        &self,
        key: &str,
        outcome: ShardOutcome,
        running: Option<Running>,
        consumers: &mut Consumers,
        sync_needed: &mut bool,
    ) -> Result<bool, SchedulerError> {
        Ok(match outcome {
            ShardOutcome::Ended(children) => {
                consumers.failures.remove(key);
                self.shard_ended(key, children, sync_needed).await;
                true
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
                self.coordinator.drop_if_lost(key);
                false
            }
            ShardOutcome::Shutdown => false,
        })
    }

    /// A shard consumer failed (processor panic, no `SHARD_END` checkpoint, unreadable
    /// shard): retry it after an exponential backoff, reset when it had made progress.
    fn failed(
        &self,
        key: &str,
        reason: &'static str,
        running: Option<Running>,
        consumers: &mut Consumers,
    ) {
        let progressed = match (running, self.coordinator.held_lease(key)) {
            (Some(running), Some(held)) => held.copy().checkpoint != running.started_at,
            _ => false,
        };
        let failures = consumers.failures.entry(key.to_owned()).or_default();
        if progressed {
            *failures = 0;
        }
        *failures += 1;
        let exponent = (*failures - 1).min(20);
        let delay = self
            .config
            .failure_backoff_min
            .saturating_mul(1 << exponent)
            .min(self.config.failure_backoff_max);
        consumers
            .retry_after
            .insert(key.to_owned(), Instant::now() + delay);
        metrics::counter!("kinesis_consumer_record_processor_failures", "shard" => key.to_owned(), "reason" => reason)
            .increment(1);
        tracing::error!(shard = %key, reason, failures = *failures, retry_in = ?delay, "shard consumer failed; retrying after a backoff");
        self.coordinator.drop_if_lost(key);
    }

    /// A shard was processed to its end: create the children's leases, record them on the
    /// parent, and release the parent's lease (finished leases are neither counted nor
    /// taken). A child lease that could not be created is left to shard sync, which runs
    /// soon: its parent stays until every child has started, so nothing is skipped.
    async fn shard_ended(&self, key: &str, children: Vec<ChildShard>, sync_needed: &mut bool) {
        let Some(held) = self.coordinator.held_lease(key) else {
            return;
        };
        for child in &children {
            let mut lease = Lease::new(child.shard_id(), ExtendedSequenceNumber::trim_horizon());
            lease.parent_shard_ids = child.parent_shards().iter().cloned().collect();
            lease.hash_key_range = child.hash_key_range().map(|r| {
                (
                    r.starting_hash_key().to_owned(),
                    r.ending_hash_key().to_owned(),
                )
            });
            let created = timed(
                self.coordinator.config().request_timeout(),
                self.store.create_lease_if_absent(&lease),
            )
            .await;
            if let Err(error) = created {
                tracing::warn!(shard = %child.shard_id(), %error, "creating child lease failed; shard sync will");
                *sync_needed = true;
            }
        }
        let ids: BTreeSet<String> = children.iter().map(|c| c.shard_id().to_owned()).collect();
        if !ids.is_empty() {
            if let Err(error) = held.set_child_shards(&ids).await {
                tracing::warn!(shard = %key, %error, "recording child shards failed");
            }
        }
        tracing::info!(shard = %key, children = ?ids, "shard finished");
        if let Err(error) = self.coordinator.release_lease(key).await {
            tracing::warn!(shard = %key, %error, "releasing finished lease failed");
        }
    }

    /// Whether every parent of `lease` is finished: its lease is at `SHARD_END`, or it has
    /// no lease and ListShards (fresh) no longer lists it. A parent without a lease that is
    /// still in the stream is a hole: the shard waits and shard sync repairs it.
    async fn parents_done(
        &self,
        lease: &Lease,
        shards: &mut Option<ShardList>,
        sync_needed: &mut bool,
    ) -> bool {
        for parent in &lease.parent_shard_ids {
            let timeout = self.coordinator.config().request_timeout();
            match timed(timeout, self.store.get_lease(parent)).await {
                Ok(Some(parent_lease)) if parent_lease.is_finished() => continue,
                Ok(Some(_)) => {
                    tracing::debug!(shard = %lease.lease_key, %parent, "waiting for parent shard");
                    return false;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(shard = %lease.lease_key, %parent, %error, "reading parent lease failed");
                    return false;
                }
            }
            let fresh = shards
                .as_ref()
                .is_some_and(|list| list.at.elapsed() < self.config.parent_shard_poll_interval);
            if !fresh {
                match self.list_all_shards().await {
                    Ok(list) => {
                        *shards = Some(ShardList {
                            at: Instant::now(),
                            ids: list.iter().map(|s| s.shard_id().to_owned()).collect(),
                        })
                    }
                    Err(error) => {
                        tracing::warn!(%error, "ListShards failed while checking parents");
                        return false;
                    }
                }
            }
            if shards
                .as_ref()
                .is_some_and(|list| list.ids.contains(parent))
            {
                tracing::warn!(shard = %lease.lease_key, %parent, "parent shard has no lease: waiting for shard sync to create it");
                *sync_needed = true;
                return false;
            }
        }
        true
    }

    /// Starts a consumer for each held lease that is ready; returns when to look again
    /// for leases that will be ready later (after a backoff, or a stolen lease's wait).
    async fn start_ready(
        &self,
        consumers: &mut Consumers,
        shards: &mut Option<ShardList>,
        sync_needed: &mut bool,
    ) -> Option<Instant> {
        let mut wake: Option<Instant> = consumers.retry_after.values().min().copied();
        let now = Instant::now();
        consumers.retry_after.retain(|_, at| *at > now);
        let held_keys: HashSet<String> = self
            .coordinator
            .held_leases()
            .iter()
            .map(|h| h.key().to_owned())
            .collect();
        consumers
            .parents_checked
            .retain(|k, _| held_keys.contains(k));
        for held in self.coordinator.held_leases() {
            let key = held.key().to_owned();
            if consumers.running.contains_key(&key)
                || consumers.retry_after.contains_key(&key)
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
                self.shard_ended(&key, Vec::new(), sync_needed).await;
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
                if consumers
                    .parents_checked
                    .get(&key)
                    .is_some_and(|at| at.elapsed() < self.config.parent_shard_poll_interval)
                {
                    continue;
                }
                consumers
                    .parents_checked
                    .insert(key.clone(), Instant::now());
                if !self.parents_done(&lease, shards, sync_needed).await {
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
            };
            tracing::info!(shard = %key, worker = %self.worker_id, checkpoint = %lease.checkpoint, "starting shard consumer");
            let task = consumers.tasks.spawn(
                consumer
                    .run()
                    .instrument(tracing::info_span!("shard", shard = %key)),
            );
            consumers.keys.insert(task.id(), key.clone());
            consumers.running.insert(
                key,
                Running {
                    shutdown: stop,
                    abort: task,
                    started_at: lease.checkpoint,
                },
            );
        }
        wake
    }

    fn fetch_options(&self) -> FetchOptions {
        FetchOptions {
            request_timeout: self.config.kinesis_request_timeout,
            on_trimmed_checkpoint: self.config.on_trimmed_checkpoint,
            prefetch_bytes: self.config.prefetch_bytes,
            deliver_empty_batches: self.config.call_process_records_even_for_empty_list,
        }
    }

    async fn list_all_shards(&self) -> Result<Vec<Shard>, SchedulerError> {
        let timeout = self.config.kinesis_request_timeout;
        tokio::time::timeout(timeout, list_shards(&self.kinesis, &self.stream))
            .await
            .map_err(|_| SchedulerError::Kinesis(ServiceError::timed_out("ListShards", timeout)))?
            .map_err(|error| SchedulerError::kinesis(&self.stream, error))
    }

    /// Creates missing leases (parents first, holes repaired) and deletes finished leases
    /// whose children have all started or that left the stream.
    async fn sync_shards(&self, shards: &mut Option<ShardList>) -> Result<(), SchedulerError> {
        let timeout = self.coordinator.config().request_timeout();
        // Leases first: every lease read existed before the listing, so a lease whose
        // shard is not listed is of a shard that left the stream.
        let leases = timed(timeout, self.store.list_leases()).await?;
        let listed = self.list_all_shards().await?;
        *shards = Some(ShardList {
            at: Instant::now(),
            ids: listed.iter().map(|s| s.shard_id().to_owned()).collect(),
        });
        let plan = plan_shard_sync(&listed, &leases, self.initial_position);
        for lease in plan.create {
            if timed(timeout, self.store.create_lease_if_absent(&lease)).await? {
                tracing::info!(shard = %lease.lease_key, checkpoint = %lease.checkpoint, "created lease");
            }
        }
        for lease in plan.delete {
            match timed(timeout, self.store.delete_lease(&lease)).await {
                Ok(()) => tracing::info!(shard = %lease.lease_key, "deleted finished lease"),
                Err(LeaseStoreError::ConditionFailed(_)) => {}
                Err(error) => {
                    tracing::warn!(shard = %lease.lease_key, %error, "deleting lease failed")
                }
            }
        }
        Ok(())
    }
}
