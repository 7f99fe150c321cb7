//! The worker: holds its share of the leases, runs one shard consumer per held lease,
//! keeps the lease table in step with the stream's shards, and shuts down gracefully.
//!
//! The loop reacts to the lease layer ([`LeaseWorker`]: a lease taken, a handoff asked),
//! to shard consumers ending ([`shards`]), to shard sync and parent polls
//! ([`resharding`]), and to a shutdown request ([`shutdown`]).

use std::sync::Arc;
use std::time::SystemTime;

use aws_types::SdkConfig;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::error::{ErrorKind, ServiceError};
use crate::leases::worker::LeaseWorker;
use crate::leases::{LeaseStore, LeaseStoreError};
use crate::metrics::StreamLabels;
use crate::processor::ProcessorFactory;
use crate::retrieval::{FanOutError, FetchOptions};
use crate::shard_consumer::{Retrieval, ShardOutcome};
use crate::stream::StreamRef;

pub(crate) mod builder;
mod resharding;
mod shards;
mod shutdown;

pub use builder::{SchedulerBuilder, SchedulerConfig};
use resharding::Resharding;
use shards::Consumers;

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
pub struct HeldShards(Arc<LeaseWorker>);

impl HeldShards {
    /// The shard ids whose leases this worker holds now (including leases whose processor
    /// has not started yet, such as a child waiting for its parents).
    pub fn shard_ids(&self) -> Vec<String> {
        self.0
            .coordinator()
            .held_leases()
            .iter()
            .filter(|held| !held.is_lost())
            .map(|held| held.key().to_owned())
            .collect()
    }

    /// The worker that leads the assignment of leases, as this worker last saw the lock
    /// (itself when it leads); `None` without a leader
    /// ([`Coordination::Workers`](crate::leases::Coordination::Workers)) or before one is
    /// known.
    pub fn leader(&self) -> Option<String> {
        self.0.leader_id()
    }
}

/// A KCL worker. Build it with [`Scheduler::builder`], then [`run`](Scheduler::run) it.
///
/// ```no_run
/// use async_trait::async_trait;
/// use kinesis_consumer::{
///     InitialPosition, ProcessRecordsInput, ProcessResult, RecordProcessor, Scheduler,
///     ShardEndedInput,
/// };
///
/// struct Printer;
///
/// #[async_trait]
/// impl RecordProcessor for Printer {
///     async fn process_records(&mut self, input: ProcessRecordsInput) -> ProcessResult {
///         for record in &input.records {
///             println!("{} {:?}", record.partition_key, record.data);
///         }
///         if let Err(e) = input.checkpointer.checkpoint().await {
///             eprintln!("checkpoint failed: {e}");
///         }
///         Ok(())
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
    leases: Arc<LeaseWorker>,
    shutdown: Arc<watch::Sender<bool>>,
    /// The labels of this worker's metrics.
    metrics: StreamLabels,
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
        HeldShards(self.leases.clone())
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
        let mut consumers = Consumers::default();
        let mut resharding = Resharding::default();
        let mut shutdown = self.shutdown.subscribe();
        let mut stopped_by: Option<SchedulerError> = None;
        let mut leadership = self.leases.leadership();
        if leadership.is_none() {
            // Every worker takes its own leases: the leases of a new application exist
            // before the first taker round. (With a leader, the leader syncs.)
            match self.sync_shards(&mut resharding).await {
                Ok(()) => {}
                Err(error @ SchedulerError::StreamNotFound { .. }) => stopped_by = Some(error),
                Err(error) => {
                    tracing::warn!(%error, "initial shard sync failed; retrying at the next interval")
                }
            }
        }
        let mut renewals = JoinSet::new();
        let mut tasks = JoinSet::new();
        self.leases.spawn(&mut renewals, &mut tasks);
        let mut sync_tick = tokio::time::interval(self.config.shard_sync_interval);
        let mut parent_tick = tokio::time::interval(self.config.parent_shard_poll_interval);
        for tick in [&mut sync_tick, &mut parent_tick] {
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        sync_tick.tick().await;
        let mut wake: Option<Instant> = None;
        while stopped_by.is_none() {
            let mut sync = false;
            tokio::select! {
                _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
                _ = self.leases.changed() => {}
                _ = became_leader(&mut leadership) => sync = true,
                _ = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                // A hole (a parent without a lease, a failed child create) is repaired
                // without waiting for the periodic sync.
                _ = parent_tick.tick() => sync = resharding.sync_needed,
                // Shard sync by one worker at a time: the leader (without one, the worker
                // whose id sorts first among the owners), or any worker that saw a hole.
                _ = sync_tick.tick() => {
                    sync = self.leases.leads_shard_sync() || resharding.sync_needed;
                }
                Some(done) = consumers.tasks.join_next_with_id() => {
                    let (id, outcome) = match done {
                        Ok((id, outcome)) => (id, Ok(outcome)),
                        Err(error) => (error.id(), Err(error)),
                    };
                    let Some((key, running, handoff)) = consumers.ended(id) else { continue };
                    if handoff.is_some() && !matches!(outcome, Ok(ShardOutcome::Ended(_))) {
                        self.release(&key).await;
                        continue;
                    }
                    let ended = match outcome {
                        Ok(outcome) => {
                            match self
                                .finished(&key, outcome, running, &mut consumers, &mut resharding)
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
                        // The children's leases were just created.
                        self.leases.leases_created();
                    }
                }
            }
            if sync {
                match self.sync_shards(&mut resharding).await {
                    Ok(()) => {}
                    Err(error @ SchedulerError::StreamNotFound { .. }) => {
                        stopped_by = Some(error);
                        continue;
                    }
                    Err(error) => tracing::warn!(%error, "shard sync failed"),
                }
            }
            let handoff_wake = self.hand_off_requested(&mut consumers).await;
            wake = self.start_ready(&mut consumers, &mut resharding).await;
            if let Some(at) = handoff_wake {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        self.shut_down(consumers, resharding, stopped_by, renewals, tasks)
            .await
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

    fn fetch_options(&self) -> FetchOptions {
        FetchOptions {
            request_timeout: self.config.kinesis_request_timeout,
            on_trimmed_checkpoint: self.config.on_trimmed_checkpoint,
            prefetch_bytes: self.config.prefetch_bytes,
            deliver_empty_batches: self.config.call_process_records_even_for_empty_list,
        }
    }
}

/// Completes when this worker becomes the leader (never without a leader).
async fn became_leader(leadership: &mut Option<watch::Receiver<bool>>) {
    let Some(leadership) = leadership else {
        return std::future::pending().await;
    };
    loop {
        if leadership.changed().await.is_err() {
            return std::future::pending().await;
        }
        if *leadership.borrow_and_update() {
            return;
        }
    }
}
