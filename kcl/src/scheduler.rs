//! The worker: holds its share of the leases, runs one shard consumer per held lease,
//! keeps the lease table in step with the stream's shards, and shuts down gracefully.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::SystemTime;

use aws_config::SdkConfig;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::types::{ChildShard, Shard};
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::lease::{ExtendedSequenceNumber, Lease};
use crate::leases::{LeaseCoordinator, LeaseStore, LeaseStoreError};
use crate::processor::ProcessorFactory;
use crate::retrieval::FanOutError;
use crate::shard_consumer::{Retrieval, ShardConsumer, ShardOutcome};
use crate::shard_sync::plan_shard_sync;

mod builder;

pub use builder::{SchedulerBuilder, SchedulerConfig};

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
pub enum SchedulerError {
    /// A required builder setting is missing.
    #[error("scheduler configuration: {0}")]
    Config(&'static str),
    /// The lease table could not be created or read.
    #[error("lease table: {0}")]
    LeaseTable(#[from] LeaseStoreError),
    /// Kinesis could not be reached or the stream does not exist.
    #[error("kinesis: {0}")]
    Kinesis(String),
    /// The enhanced fan-out stream consumer could not be found or registered.
    #[error("enhanced fan-out: {0}")]
    FanOut(#[from] FanOutError),
}

/// Requests a graceful shutdown of a running [`Scheduler`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Asks the scheduler to stop: every processor gets `shutdown_requested`, then every
    /// lease is released. [`Scheduler::run`] returns when that is done.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
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
/// let scheduler = Scheduler::builder(config)
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
    stream: String,
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
}

impl Scheduler {
    /// A builder using `sdk_config` for the Kinesis and DynamoDB clients.
    pub fn builder(sdk_config: SdkConfig) -> SchedulerBuilder {
        SchedulerBuilder::new(sdk_config)
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The settings in effect.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// A handle that stops [`run`](Scheduler::run) gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs the worker until a shutdown is requested through a [`ShutdownHandle`]. Then
    /// every processor gets `shutdown_requested` (and may checkpoint), and every lease is
    /// released so other workers take them at once.
    ///
    /// Dropping or aborting the future stops everything at once without releasing leases
    /// (like a crash): other workers take them after the failover time.
    pub async fn run(self) -> Result<(), SchedulerError> {
        let mut background = JoinSet::new();
        {
            let coordinator = self.coordinator.clone();
            let interval = self.config.lease_renewal_interval;
            background.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    coordinator.renew_leases().await;
                }
            });
        }

        let mut consumers: JoinSet<(String, ShardOutcome)> = JoinSet::new();
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut retry_after: HashMap<String, Instant> = HashMap::new();
        let mut shutdown = self.shutdown.subscribe();

        if let Err(error) = self.sync_shards().await {
            tracing::warn!(%error, "initial shard sync failed; retrying at the next interval");
        }
        let mut take_tick = tokio::time::interval(self.config.lease_taker_interval);
        let mut sync_tick = tokio::time::interval(self.config.shard_sync_interval);
        let mut parent_tick = tokio::time::interval(self.config.parent_shard_poll_interval);
        for tick in [&mut take_tick, &mut sync_tick, &mut parent_tick] {
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        sync_tick.tick().await;

        loop {
            let leases = tokio::select! {
                _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
                _ = take_tick.tick() => match self.coordinator.take_leases().await {
                    Ok(round) => Some(round.leases),
                    Err(error) => {
                        tracing::warn!(%error, "lease taking failed");
                        None
                    }
                },
                _ = parent_tick.tick() => self.list_leases_logged().await,
                _ = sync_tick.tick() => {
                    if let Err(error) = self.sync_shards().await {
                        tracing::warn!(%error, "shard sync failed");
                    }
                    self.list_leases_logged().await
                }
                Some(done) = consumers.join_next() => {
                    let ended = match done {
                        Ok((key, outcome)) => {
                            running.remove(&key);
                            self.finished(&key, outcome, &mut retry_after).await
                        }
                        Err(error) => {
                            tracing::error!(%error, "shard consumer task failed");
                            false
                        }
                    };
                    if ended {
                        // The children's leases were just created: take them now rather
                        // than at the next taker round.
                        match self.coordinator.take_leases().await {
                            Ok(round) => Some(round.leases),
                            Err(error) => {
                                tracing::warn!(%error, "lease taking failed");
                                None
                            }
                        }
                    } else {
                        self.list_leases_logged().await
                    }
                }
            };
            if let Some(leases) = leases {
                self.start_ready(&leases, &mut consumers, &mut running, &mut retry_after)
                    .await;
            }
        }

        tracing::info!(worker = %self.worker_id, "shutting down");
        for consumer in running.values() {
            consumer.shutdown.send_replace(true);
        }
        let drained = tokio::time::timeout(self.config.shutdown_timeout, async {
            while let Some(done) = consumers.join_next().await {
                if let Ok((key, ShardOutcome::Ended(children))) = done {
                    self.shard_ended(&key, children).await;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("processors did not finish within the shutdown timeout");
            consumers.abort_all();
        }
        background.abort_all();
        self.coordinator.release_all().await?;
        tracing::info!(worker = %self.worker_id, "shut down; leases released");
        Ok(())
    }

    /// [`run`](Scheduler::run) until `signal` completes (for example
    /// `tokio::signal::ctrl_c()`), then shuts down gracefully.
    pub async fn run_until<F>(self, signal: F) -> Result<(), SchedulerError>
    where
        F: std::future::Future + Send,
    {
        let handle = self.shutdown_handle();
        let run = self.run();
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => return result,
            _ = signal => handle.shutdown(),
        }
        run.await
    }

    async fn list_leases_logged(&self) -> Option<Vec<Lease>> {
        match self.store.list_leases().await {
            Ok(leases) => Some(leases),
            Err(error) => {
                tracing::warn!(%error, "listing leases failed");
                None
            }
        }
    }

    /// Acts on how a shard consumer finished; returns whether its shard ended.
    async fn finished(
        &self,
        key: &str,
        outcome: ShardOutcome,
        retry_after: &mut HashMap<String, Instant>,
    ) -> bool {
        match outcome {
            ShardOutcome::Ended(children) => {
                self.shard_ended(key, children).await;
                true
            }
            ShardOutcome::EndNotCheckpointed => {
                retry_after.insert(
                    key.to_owned(),
                    Instant::now() + self.config.parent_shard_poll_interval,
                );
                false
            }
            ShardOutcome::LeaseLost | ShardOutcome::Shutdown => false,
        }
    }

    /// A shard was processed to its end: create the children's leases, record them on the
    /// parent, and release the parent's lease (finished leases are neither counted nor
    /// taken).
    async fn shard_ended(&self, key: &str, children: Vec<ChildShard>) {
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
            if let Err(error) = self.store.create_lease_if_absent(&lease).await {
                tracing::warn!(shard = %child.shard_id(), %error, "creating child lease failed; shard sync will");
            }
        }
        let ids: BTreeSet<String> = children.iter().map(|c| c.shard_id().to_owned()).collect();
        if !ids.is_empty() {
            let mut lease = held.lock().await;
            match self.store.update_child_shards(&lease, &ids).await {
                Ok(written) => *lease = written,
                Err(error) => tracing::warn!(shard = %key, %error, "recording child shards failed"),
            }
        }
        tracing::info!(shard = %key, children = ?ids, "shard finished");
        if let Err(error) = self.coordinator.release_lease(key).await {
            tracing::warn!(shard = %key, %error, "releasing finished lease failed");
        }
    }

    async fn start_ready(
        &self,
        leases: &[Lease],
        consumers: &mut JoinSet<(String, ShardOutcome)>,
        running: &mut HashMap<String, Running>,
        retry_after: &mut HashMap<String, Instant>,
    ) {
        let table: HashMap<&str, &Lease> =
            leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
        let now = Instant::now();
        retry_after.retain(|_, at| *at > now);
        for held in self.coordinator.held_leases() {
            let key = held.key().to_owned();
            if running.contains_key(&key) || retry_after.contains_key(&key) || held.is_lost() {
                continue;
            }
            let lease = held.snapshot().await;
            if lease.is_finished() {
                self.shard_ended(&key, Vec::new()).await;
                continue;
            }
            let waiting: Vec<&String> = lease
                .parent_shard_ids
                .iter()
                .filter(|p| table.get(p.as_str()).is_some_and(|l| !l.is_finished()))
                .collect();
            if !waiting.is_empty() {
                tracing::debug!(shard = %key, parents = ?waiting, "waiting for parent shards");
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let consumer = ShardConsumer {
                held: held.clone(),
                store: self.store.clone(),
                processor: self.factory.create_processor(),
                client: self.kinesis.clone(),
                stream: self.stream.clone(),
                retrieval: self.retrieval.clone(),
                initial_timestamp: match self.initial_position {
                    InitialPosition::AtTimestamp(t) => Some(t),
                    _ => None,
                },
                shutdown: stop_rx,
            };
            tracing::info!(shard = %key, worker = %self.worker_id, checkpoint = %lease.checkpoint, "starting shard consumer");
            consumers.spawn({
                let key = key.clone();
                async move {
                    let outcome = AssertUnwindSafe(consumer.run()).catch_unwind().await;
                    let outcome = outcome.unwrap_or_else(|_| {
                        tracing::error!(shard = %key, "record processor panicked; the shard is retried");
                        ShardOutcome::EndNotCheckpointed
                    });
                    (key, outcome)
                }
            });
            running.insert(key, Running { shutdown: stop });
        }
    }

    async fn list_all_shards(&self) -> Result<Vec<Shard>, SchedulerError> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let request = match &next {
                Some(token) => self.kinesis.list_shards().next_token(token),
                None => self.kinesis.list_shards().stream_name(&self.stream),
            };
            let page = request
                .send()
                .await
                .map_err(|e| SchedulerError::Kinesis(DisplayErrorContext(&e).to_string()))?;
            shards.extend(page.shards().iter().cloned());
            next = page.next_token().map(str::to_owned);
            if next.is_none() {
                return Ok(shards);
            }
        }
    }

    /// Creates leases for shards that have none (parents before children) and deletes
    /// finished leases whose children have all started.
    async fn sync_shards(&self) -> Result<(), SchedulerError> {
        let shards = self.list_all_shards().await?;
        let leases = self.store.list_leases().await?;
        let plan = plan_shard_sync(&shards, &leases, self.initial_position);
        for lease in plan.create {
            if self.store.create_lease_if_absent(&lease).await? {
                tracing::info!(shard = %lease.lease_key, checkpoint = %lease.checkpoint, "created lease");
            }
        }
        for lease in plan.delete {
            match self.store.delete_lease(&lease).await {
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
