//! The worker: holds its share of the leases, runs one shard consumer per held lease,
//! keeps the lease table in step with the stream's shards, and shuts down gracefully.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::types::{ChildShard, Shard};
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::lease::{ExtendedSequenceNumber, Lease, SequencePosition};
use crate::leases::{
    DynamoDbLeaseStore, LeaseCoordinator, LeaseCoordinatorConfig, LeaseStore, LeaseStoreError,
};
use crate::processor::ProcessorFactory;
use crate::retrieval::PollingConfig;
use crate::shard_consumer::{ShardConsumer, ShardOutcome};

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
}

/// Tuning knobs, with the Java KCL's defaults unless noted.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// A lease whose counter did not change for this long is taken over (Java
    /// `failoverTimeMillis`, 10 s).
    pub failover_time: Duration,
    /// How often held leases are renewed (Java: a third of the failover time).
    pub lease_renewal_interval: Duration,
    /// How often the lease table is scanned to take and balance leases. Java uses twice the
    /// failover time; the default here is the failover time, which bounds the takeover of
    /// a dead worker's shards to about twice the failover time.
    pub lease_taker_interval: Duration,
    /// Most leases one worker holds (Java `maxLeasesForWorker`, unlimited).
    pub max_leases_per_worker: usize,
    /// Most leases stolen from a live worker per taker round (Java
    /// `maxLeasesToStealAtOneTime`, 1).
    pub max_leases_to_steal_at_once: usize,
    /// How often ListShards is compared with the lease table (Java
    /// `shardSyncIntervalMillis`, 60 s). Shards seen in GetRecords' ChildShards get leases
    /// at once, without waiting for it.
    pub shard_sync_interval: Duration,
    /// How often held leases waiting for their parents are checked (Java
    /// `parentShardPollIntervalMillis`, 10 s).
    pub parent_shard_poll_interval: Duration,
    /// Polling retrieval settings.
    pub polling: PollingConfig,
    /// How long a graceful shutdown waits for processors to finish (30 s).
    pub shutdown_timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let failover_time = Duration::from_secs(10);
        SchedulerConfig {
            failover_time,
            lease_renewal_interval: failover_time / 3,
            lease_taker_interval: failover_time,
            max_leases_per_worker: usize::MAX,
            max_leases_to_steal_at_once: 1,
            shard_sync_interval: Duration::from_secs(60),
            parent_shard_poll_interval: Duration::from_secs(10),
            polling: PollingConfig::default(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Builds a [`Scheduler`]; see [`Scheduler::builder`].
pub struct SchedulerBuilder {
    sdk_config: SdkConfig,
    stream: Option<String>,
    application_name: Option<String>,
    worker_id: Option<String>,
    initial_position: InitialPosition,
    factory: Option<Arc<dyn ProcessorFactory>>,
    config: SchedulerConfig,
    renewal_set: bool,
    taker_set: bool,
    kinesis_client: Option<aws_sdk_kinesis::Client>,
    dynamodb_client: Option<aws_sdk_dynamodb::Client>,
    lease_store: Option<Arc<dyn LeaseStore>>,
}

impl std::fmt::Debug for SchedulerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerBuilder")
            .field("stream", &self.stream)
            .field("application_name", &self.application_name)
            .field("worker_id", &self.worker_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SchedulerBuilder {
    /// The stream to consume (required).
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// The application name (required): names the lease table, and workers with the same
    /// name share the stream's shards.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// This worker's id, unique among the application's workers (default: host name,
    /// process id and a random suffix).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Where shards without a checkpoint start (default [`InitialPosition::Latest`], as in
    /// the Java KCL).
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = position;
        self
    }

    /// Makes one record processor per shard lease (required).
    pub fn processor_factory(mut self, factory: impl ProcessorFactory) -> Self {
        self.factory = Some(Arc::new(factory));
        self
    }

    /// Failover time (default 10 s). Unless set explicitly, the renewal interval follows
    /// at a third of it and the taker interval at the same value.
    pub fn failover_time(mut self, time: Duration) -> Self {
        self.config.failover_time = time;
        self
    }

    /// Lease renewal interval (default a third of the failover time).
    pub fn lease_renewal_interval(mut self, interval: Duration) -> Self {
        self.config.lease_renewal_interval = interval;
        self.renewal_set = true;
        self
    }

    /// Lease taker interval (default the failover time).
    pub fn lease_taker_interval(mut self, interval: Duration) -> Self {
        self.config.lease_taker_interval = interval;
        self.taker_set = true;
        self
    }

    /// Most leases this worker holds (default unlimited).
    pub fn max_leases_per_worker(mut self, max: usize) -> Self {
        self.config.max_leases_per_worker = max.max(1);
        self
    }

    /// Most leases stolen per taker round (default 1).
    pub fn max_leases_to_steal_at_once(mut self, max: usize) -> Self {
        self.config.max_leases_to_steal_at_once = max;
        self
    }

    /// Shard sync interval (default 60 s).
    pub fn shard_sync_interval(mut self, interval: Duration) -> Self {
        self.config.shard_sync_interval = interval;
        self
    }

    /// How often waiting child shards check their parents (default 10 s).
    pub fn parent_shard_poll_interval(mut self, interval: Duration) -> Self {
        self.config.parent_shard_poll_interval = interval;
        self
    }

    /// Most records per GetRecords call (default 10,000).
    pub fn max_records(mut self, max: i32) -> Self {
        self.config.polling.max_records = max.clamp(1, 10_000);
        self
    }

    /// Pause after each GetRecords call (default 1,500 ms).
    pub fn idle_time_between_reads(mut self, idle: Duration) -> Self {
        self.config.polling.idle_time_between_reads = idle;
        self
    }

    /// Batches read ahead per shard (default 3).
    pub fn prefetch_batches(mut self, batches: usize) -> Self {
        self.config.polling.prefetch_batches = batches.max(1);
        self
    }

    /// How long a graceful shutdown waits for processors (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Uses this Kinesis client instead of one made from the SDK configuration.
    pub fn kinesis_client(mut self, client: aws_sdk_kinesis::Client) -> Self {
        self.kinesis_client = Some(client);
        self
    }

    /// Uses this DynamoDB client for the lease table instead of one made from the SDK
    /// configuration.
    pub fn dynamodb_client(mut self, client: aws_sdk_dynamodb::Client) -> Self {
        self.dynamodb_client = Some(client);
        self
    }

    /// Uses another lease store (for example [`crate::leases::MemoryLeaseStore`]).
    pub fn lease_store(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.lease_store = Some(store);
        self
    }

    /// Checks the settings, creates the lease table if missing and checks that the stream
    /// exists.
    pub async fn build(self) -> Result<Scheduler, SchedulerError> {
        let stream = self
            .stream
            .ok_or(SchedulerError::Config("stream is required"))?;
        let application = self
            .application_name
            .ok_or(SchedulerError::Config("application_name is required"))?;
        let factory = self
            .factory
            .ok_or(SchedulerError::Config("processor_factory is required"))?;
        let mut config = self.config;
        if !self.renewal_set {
            config.lease_renewal_interval = config.failover_time / 3;
        }
        if !self.taker_set {
            config.lease_taker_interval = config.failover_time;
        }
        if config.lease_renewal_interval >= config.failover_time {
            return Err(SchedulerError::Config(
                "lease_renewal_interval must be shorter than failover_time",
            ));
        }
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        let store: Arc<dyn LeaseStore> = match self.lease_store {
            Some(store) => store,
            None => Arc::new(DynamoDbLeaseStore::new(
                self.dynamodb_client
                    .unwrap_or_else(|| aws_sdk_dynamodb::Client::new(&self.sdk_config)),
                application.clone(),
            )),
        };
        let kinesis = self
            .kinesis_client
            .unwrap_or_else(|| aws_sdk_kinesis::Client::new(&self.sdk_config));

        store.create_table_if_missing().await?;
        kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .map_err(|e| SchedulerError::Kinesis(DisplayErrorContext(&e).to_string()))?;

        let coordinator = Arc::new(LeaseCoordinator::new(
            store.clone(),
            LeaseCoordinatorConfig {
                worker_id: worker_id.clone(),
                failover_time: config.failover_time,
                max_leases_per_worker: config.max_leases_per_worker,
                max_leases_to_steal_at_once: config.max_leases_to_steal_at_once,
            },
        ));
        Ok(Scheduler {
            stream,
            worker_id,
            initial_position: self.initial_position,
            factory,
            config,
            store,
            kinesis,
            coordinator,
            shutdown: Arc::new(watch::channel(false).0),
        })
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
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
        SchedulerBuilder {
            sdk_config,
            stream: None,
            application_name: None,
            worker_id: None,
            initial_position: InitialPosition::default(),
            factory: None,
            config: SchedulerConfig::default(),
            renewal_set: false,
            taker_set: false,
            kinesis_client: None,
            dynamodb_client: None,
            lease_store: None,
        }
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
                polling: self.config.polling.clone(),
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

/// What a shard sync writes.
#[derive(Debug, Default)]
pub(crate) struct SyncPlan {
    pub create: Vec<Lease>,
    pub delete: Vec<Lease>,
}

fn parents(shard: &Shard) -> BTreeSet<String> {
    shard
        .parent_shard_id()
        .into_iter()
        .chain(shard.adjacent_parent_shard_id())
        .map(str::to_owned)
        .collect()
}

/// Decides which leases a shard sync creates and deletes.
///
/// - A shard without a lease gets one, parents first. Its checkpoint is `TRIM_HORIZON`
///   when one of its parents has a lease (its parents' records come first, then all of
///   its own), otherwise the initial position.
/// - A closed shard gets no lease when one of its descendants has one (it was processed
///   and cleaned up), nor, with [`InitialPosition::Latest`], when none of its parents
///   has one (a new application reading from the tip does not need closed history).
/// - A finished lease is deleted once every child shard has a lease that has
///   checkpointed something.
pub(crate) fn plan_shard_sync(
    shards: &[Shard],
    leases: &[Lease],
    initial: InitialPosition,
) -> SyncPlan {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for shard in shards {
        for parent in parents(shard) {
            children
                .entry(parent)
                .or_default()
                .push(shard.shard_id().to_owned());
        }
    }
    fn has_leased_descendant(
        shard: &str,
        children: &HashMap<String, Vec<String>>,
        leased: &HashSet<String>,
        depth: usize,
    ) -> bool {
        depth < 64
            && children.get(shard).is_some_and(|kids| {
                kids.iter().any(|k| {
                    leased.contains(k) || has_leased_descendant(k, children, leased, depth + 1)
                })
            })
    }

    // Parents before children.
    let mut ordered: Vec<&Shard> = Vec::with_capacity(shards.len());
    let mut placed: HashSet<&str> = HashSet::new();
    let known: HashSet<&str> = shards.iter().map(|s| s.shard_id()).collect();
    while ordered.len() < shards.len() {
        let before = ordered.len();
        for shard in shards {
            if placed.contains(shard.shard_id()) {
                continue;
            }
            let ready = parents(shard)
                .iter()
                .all(|p| !known.contains(p.as_str()) || placed.contains(p.as_str()));
            if ready {
                placed.insert(shard.shard_id());
                ordered.push(shard);
            }
        }
        if ordered.len() == before {
            break; // a cycle cannot happen in Kinesis; do not loop forever on bad input
        }
    }

    let mut leased: HashSet<String> = by_key.keys().map(|k| (*k).to_owned()).collect();
    let mut plan = SyncPlan::default();
    for shard in ordered {
        let id = shard.shard_id();
        if leased.contains(id) {
            continue;
        }
        let closed = shard
            .sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_some();
        let parent_leased = parents(shard).iter().any(|p| leased.contains(p));
        if closed && has_leased_descendant(id, &children, &leased, 0) {
            continue;
        }
        if closed && !parent_leased && initial == InitialPosition::Latest {
            continue;
        }
        let checkpoint = if parent_leased {
            SequencePosition::TrimHorizon
        } else {
            match initial {
                InitialPosition::TrimHorizon => SequencePosition::TrimHorizon,
                InitialPosition::Latest => SequencePosition::Latest,
                InitialPosition::AtTimestamp(_) => SequencePosition::AtTimestamp,
            }
        };
        let mut lease = Lease::new(id, ExtendedSequenceNumber::sentinel(checkpoint));
        lease.parent_shard_ids = parents(shard);
        lease.hash_key_range = shard.hash_key_range().map(|r| {
            (
                r.starting_hash_key().to_owned(),
                r.ending_hash_key().to_owned(),
            )
        });
        leased.insert(id.to_owned());
        plan.create.push(lease);
    }

    for lease in leases.iter().filter(|l| l.is_finished()) {
        let mut kids: BTreeSet<String> = lease.child_shard_ids.clone();
        if let Some(listed) = children.get(&lease.lease_key) {
            kids.extend(listed.iter().cloned());
        }
        let started = |kid: &String| {
            by_key.get(kid.as_str()).is_some_and(|l| {
                matches!(
                    l.checkpoint.position,
                    SequencePosition::Sequence(_) | SequencePosition::ShardEnd
                )
            })
        };
        if !kids.is_empty() && kids.iter().all(started) {
            plan.delete.push(lease.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::types::{HashKeyRange, SequenceNumberRange};

    fn shard(id: &str, parents: &[&str], closed: bool) -> Shard {
        Shard::builder()
            .shard_id(id)
            .set_parent_shard_id(parents.first().map(|p| p.to_string()))
            .set_adjacent_parent_shard_id(parents.get(1).map(|p| p.to_string()))
            .hash_key_range(
                HashKeyRange::builder()
                    .starting_hash_key("0")
                    .ending_hash_key("9")
                    .build()
                    .unwrap(),
            )
            .sequence_number_range(
                SequenceNumberRange::builder()
                    .starting_sequence_number("1")
                    .set_ending_sequence_number(closed.then(|| "2".to_owned()))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn keys(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.lease_key.as_str()).collect()
    }

    #[test]
    fn new_application_gets_leases_parents_first() {
        // 0 split into 1 and 2; 1 and 2 merged into 3 (listed out of order).
        let shards = vec![
            shard("s3", &["s1", "s2"], false),
            shard("s0", &[], true),
            shard("s1", &["s0"], true),
            shard("s2", &["s0"], true),
        ];
        let plan = plan_shard_sync(&shards, &[], InitialPosition::TrimHorizon);
        assert_eq!(keys(&plan.create), vec!["s0", "s1", "s2", "s3"]);
        assert_eq!(
            plan.create[3].parent_shard_ids,
            BTreeSet::from(["s1".to_owned(), "s2".to_owned()])
        );
        assert!(plan
            .create
            .iter()
            .all(|l| l.checkpoint == ExtendedSequenceNumber::trim_horizon()));

        // LATEST: closed history is skipped, the open shard starts at LATEST.
        let plan = plan_shard_sync(&shards, &[], InitialPosition::Latest);
        assert_eq!(keys(&plan.create), vec!["s3"]);
        assert_eq!(plan.create[0].checkpoint.position, SequencePosition::Latest);
    }

    #[test]
    fn children_of_leased_shards_start_at_trim_horizon_and_cleaned_up_shards_stay_gone() {
        let shards = vec![
            shard("s0", &[], true),
            shard("s1", &["s0"], false),
            shard("s2", &["s0"], false),
        ];
        let parent = Lease::new("s0", ExtendedSequenceNumber::new("5", 0));
        let plan = plan_shard_sync(&shards, &[parent], InitialPosition::Latest);
        assert_eq!(keys(&plan.create), vec!["s1", "s2"]);
        assert!(plan
            .create
            .iter()
            .all(|l| l.checkpoint == ExtendedSequenceNumber::trim_horizon()));

        // Parent finished and both children started: the parent is deleted, and once it
        // is gone it is not created again.
        let mut parent = Lease::new("s0", ExtendedSequenceNumber::shard_end());
        parent.child_shard_ids = BTreeSet::from(["s1".to_owned(), "s2".to_owned()]);
        let started = Lease::new("s1", ExtendedSequenceNumber::new("7", 0));
        let not_started = Lease::new("s2", ExtendedSequenceNumber::trim_horizon());
        let plan = plan_shard_sync(
            &shards,
            &[parent.clone(), started.clone(), not_started],
            InitialPosition::TrimHorizon,
        );
        assert!(plan.delete.is_empty());
        let started2 = Lease::new("s2", ExtendedSequenceNumber::new("8", 0));
        let plan = plan_shard_sync(
            &shards,
            &[parent, started.clone(), started2.clone()],
            InitialPosition::TrimHorizon,
        );
        assert_eq!(keys(&plan.delete), vec!["s0"]);
        let plan = plan_shard_sync(&shards, &[started, started2], InitialPosition::TrimHorizon);
        assert!(plan.create.is_empty());
    }
}
