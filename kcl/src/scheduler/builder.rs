//! Scheduler settings and the builder that checks them and prepares the lease table.

use std::sync::Arc;
use std::time::Duration;

use aws_types::SdkConfig;
use tokio::sync::watch;

use super::{InitialPosition, Scheduler, SchedulerError};
use crate::error::{ErrorKind, ServiceError};
use crate::leases::coordination::{CoordinatorStore, DynamoDbCoordinatorStore, LEADER_LOCK_KEY};
use crate::leases::worker::{LeaseWorker, LeaseWorkerConfig, Presence, PresenceConfig};
use crate::leases::{
    Coordination, DynamoDbLeaseStore, LeaderConfig, LeaseCoordinatorConfig, LeaseStore,
    LeaseStoreError, LeaseTableBilling, LeaseTableConfig,
};
use crate::metrics::WorkerLabels;
use crate::processor::ProcessorFactory;
use crate::retrieval::{
    register_consumer, FanOutConfig, FanOutError, RetrievalMode, TrimmedCheckpoint,
};
use crate::shard_consumer::Retrieval;
use crate::stream::StreamRef;

/// Tuning knobs, with the Java KCL's defaults unless noted.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// How records are read: polling (default) or enhanced fan-out.
    pub retrieval: RetrievalMode,
    /// How long a graceful shutdown waits for processors to finish (30 s).
    pub shutdown_timeout: Duration,
    /// How long before other workers may take a lease this worker stops acting on it
    /// (default a fifth of the failover time, 2 s). A held lease's local deadline is the
    /// send time of its last successful renewal (or take, or checkpoint) plus the failover
    /// time minus this margin: past it the processor gets `lease_lost` and checkpoints fail
    /// without any call. It bounds how long a batch handed to the processor just before the
    /// deadline may run before another worker can start on the shard.
    pub lease_safety_margin: Duration,
    /// Timeout of each lease table (DynamoDB) call (default a quarter of the failover time,
    /// 2.5 s): a hung renewal ends before the next one is due, so one hung call never costs
    /// a lease.
    pub dynamodb_request_timeout: Duration,
    /// Timeout of each Kinesis call: GetShardIterator, GetRecords, ListShards, the start of
    /// SubscribeToShard (default 30 s, the Java KCL's `kinesisRequestTimeout`). A hung read
    /// never costs the lease: renewals do not depend on it.
    pub kinesis_request_timeout: Duration,
    /// Most bytes (data and partition keys) read ahead per shard and not yet given to the
    /// processor (default 8 MiB, the Java KCL's `maxByteSize` of its prefetch cache), on top
    /// of [`RetrievalMode::prefetch_batches`].
    pub prefetch_bytes: usize,
    /// What a checkpoint that Kinesis rejects (trimmed) does (default: read from
    /// `TRIM_HORIZON`, with an error log and the metric `kinesis_consumer_checkpoint_trim_horizon_fallbacks`).
    pub on_trimmed_checkpoint: TrimmedCheckpoint,
    /// Give the processor batches without records too, with their `millis_behind_latest`
    /// (Java KCL `callProcessRecordsEvenForEmptyRecordList`, default false): an empty batch
    /// with `millis_behind_latest == Some(0)` says the shard is read to its tip.
    pub call_process_records_even_for_empty_list: bool,
    /// First retry delay of a shard whose consumer failed: the processor panicked, did
    /// not checkpoint at shard end, or the shard could not be read (default 1 s). It
    /// doubles on each consecutive failure, up to `failure_backoff_max`, and starts over
    /// after progress (a checkpoint). Under a dead-letter policy, also the first delay
    /// (with jitter) before the records of a failed batch are delivered again, and between
    /// calls of a failing dead-letter sink.
    pub failure_backoff_min: Duration,
    /// Longest retry delay of a failing shard consumer (default 5 minutes).
    pub failure_backoff_max: Duration,
    /// Graceful lease handoff (Java KCL 3 `GracefulLeaseHandoffConfig`, on by default with
    /// a 30 s timeout): a lease asked for by another worker (balancing, `kinesis leases
    /// move`, a Java KCL 3 leader) is handed over by its holder once its processor finished the batch in hand and
    /// checkpointed in `shutdown_requested`, and its next owner starts at once from that
    /// checkpoint. A processor not done within the timeout is stopped (its task aborted)
    /// and the lease handed over; one that cannot be stopped keeps the lease until it
    /// expires. `None`: leases taken from live workers are taken at once and processed
    /// after the holder's deadline. A worker shutting down offers its leases to a running
    /// worker and hands them over once accepted; with `None` it releases them.
    pub graceful_lease_handoff_timeout: Option<Duration>,
    /// Balancing workers' throughput (their leases' `throughputKBps`) as well as their lease
    /// counts (default on: 10 % threshold, 100 KiB/s least gap, as the Java KCL 3 balances
    /// throughput); `None`: by count only, as the Java KCL 2. See
    /// [`ThroughputBalancing`](crate::leases::ThroughputBalancing).
    pub throughput_balancing: Option<crate::leases::ThroughputBalancing>,
    /// How often a worker looks for leases handed to it and for handoff requests between
    /// taker rounds (default 500 ms; this crate's own setting). Each look is one query of
    /// the lease table's owner index (when the table has it) plus one consistent read per
    /// lease in transit, so a lease moves in well under a second.
    pub lease_discovery_interval: Duration,
    /// How the leases are shared out: a leader assigns them (default, the Java KCL 3's
    /// design), or every worker takes its own (the Java KCL 2.x's). See
    /// [`Coordination`](crate::leases::Coordination).
    pub coordination: Coordination,
    /// What happens to a batch the processor keeps failing on (returns
    /// [`ProcessingError`](crate::ProcessingError) for, or panics on): `None` (default),
    /// the shard consumer fails and the shard is read again from its last checkpoint after
    /// a backoff (`failure_backoff`), for as long as the lease is held; with a
    /// [`DeadLetterPolicy`](crate::DeadLetterPolicy), its failed records are delivered
    /// again to the same processor, go to the policy's sink after `max_attempts` attempts,
    /// and the shard is checkpointed past the batch. The nearest AWS settings are Lambda's `MaximumRetryAttempts` and
    /// `OnFailure` destination for Kinesis; the Java KCL has none.
    pub dead_letter: Option<crate::DeadLetterPolicy>,
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
            retrieval: RetrievalMode::default(),
            shutdown_timeout: Duration::from_secs(30),
            lease_safety_margin: failover_time / 5,
            dynamodb_request_timeout: failover_time / 4,
            kinesis_request_timeout: Duration::from_secs(30),
            prefetch_bytes: 8 * 1024 * 1024,
            on_trimmed_checkpoint: TrimmedCheckpoint::default(),
            call_process_records_even_for_empty_list: false,
            failure_backoff_min: Duration::from_secs(1),
            failure_backoff_max: Duration::from_secs(300),
            graceful_lease_handoff_timeout: Some(Duration::from_secs(30)),
            throughput_balancing: Some(crate::leases::ThroughputBalancing::default()),
            lease_discovery_interval: Duration::from_millis(500),
            coordination: Coordination::default(),
            dead_letter: None,
        }
    }
}

/// Builds a [`Scheduler`]; see [`Scheduler::builder`].
pub struct SchedulerBuilder {
    sdk_config: SdkConfig,
    stream: Option<StreamRef>,
    application_name: Option<String>,
    worker_id: Option<String>,
    initial_position: InitialPosition,
    factory: Option<Arc<dyn ProcessorFactory>>,
    config: SchedulerConfig,
    renewal_set: bool,
    taker_set: bool,
    margin_set: bool,
    dynamodb_timeout_set: bool,
    polling: PollingSettings,
    kinesis_client: Option<aws_sdk_kinesis::Client>,
    dynamodb_client: Option<aws_sdk_dynamodb::Client>,
    lease_store: Option<Arc<dyn LeaseStore>>,
    lease_table: LeaseTableConfig,
    coordinator_store: Option<Arc<dyn CoordinatorStore>>,
    /// The streams of a multi-stream worker share one presence (one worker row).
    shared_presence: Option<SharedPresence>,
    /// The leader lock's key (one per stream of a multi-stream worker).
    lock_key: String,
    /// The stream's identifier, in a multi-stream worker.
    stream_identifier: Option<String>,
    /// The labels and gauges of the worker's metrics, shared by the streams of a
    /// multi-stream worker.
    shared_metrics: Option<WorkerLabels>,
}

/// A worker's presence, made by the first stream of a multi-stream worker that needs it
/// and shared by the others.
pub(crate) type SharedPresence = Arc<std::sync::Mutex<Option<Arc<Presence>>>>;

impl std::fmt::Debug for SchedulerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerBuilder")
            .field("stream", &self.stream)
            .field("application_name", &self.application_name)
            .field("worker_id", &self.worker_id)
            .field("config", &self.config)
            .field("lease_table", &self.lease_table)
            .finish_non_exhaustive()
    }
}

impl SchedulerBuilder {
    pub(super) fn new(sdk_config: SdkConfig) -> Self {
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
            margin_set: false,
            dynamodb_timeout_set: false,
            polling: PollingSettings::default(),
            kinesis_client: None,
            dynamodb_client: None,
            lease_store: None,
            lease_table: LeaseTableConfig::default(),
            coordinator_store: None,
            shared_presence: None,
            lock_key: LEADER_LOCK_KEY.to_owned(),
            stream_identifier: None,
            shared_metrics: None,
        }
    }

    /// The stream to consume (required), by name or by ARN
    /// (`arn:aws:kinesis:<region>:<account>:stream/<name>`; an ARN of another account reads
    /// that account's stream, as far as the credentials are allowed).
    pub fn stream(mut self, name_or_arn: impl Into<String>) -> Self {
        self.stream = Some(StreamRef::new(name_or_arn));
        self
    }

    /// The application name (required): names the lease table, and workers with the same
    /// name share the stream's shards.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// This worker's id, unique among the application's workers (default: the host name the OS reports,
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

    /// Most leases this worker holds (default unlimited; at least 1).
    pub fn max_leases_per_worker(mut self, max: usize) -> Self {
        self.config.max_leases_per_worker = max;
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

    /// How records are read (default [`RetrievalMode::Polling`] with
    /// [`PollingConfig::default()`](crate::retrieval::PollingConfig)).
    ///
    /// [`RetrievalMode::FanOut`] is enhanced fan-out, the Java KCL's default
    /// (`RetrievalConfig.retrievalSpecificConfig(new FanOutConfig(kinesisClient)
    /// .consumerName(...))`; polling there is `new PollingConfig(streamName, kinesisClient)`).
    /// With fan-out, [`build`](Self::build) finds the stream consumer named
    /// [`FanOutConfig::consumer_name`] (default: the application name), registers it if it
    /// does not exist (a race with other workers registering it is fine) and waits until
    /// it is ACTIVE. Shutting down never deregisters it: other workers and the next run use
    /// it. Deregister it yourself (DeregisterStreamConsumer) when the application is
    /// retired.
    ///
    /// The polling setters ([`max_records`](Self::max_records),
    /// [`idle_time_between_reads`](Self::idle_time_between_reads),
    /// [`lag_aware_polling`](Self::lag_aware_polling)) apply to polling only:
    /// with fan-out, [`build`](Self::build) rejects them.
    /// [`prefetch_batches`](Self::prefetch_batches) applies to both. Builder setters win
    /// over the values in `mode`, whatever the order of the calls.
    pub fn retrieval_mode(mut self, mode: RetrievalMode) -> Self {
        self.config.retrieval = mode;
        self
    }

    /// Enhanced fan-out with the consumer named after the application (shorthand for
    /// [`retrieval_mode`](Self::retrieval_mode)`(RetrievalMode::FanOut(FanOutConfig::default()))`).
    pub fn fan_out(mut self) -> Self {
        self.config.retrieval = RetrievalMode::FanOut(FanOutConfig::default());
        self
    }

    /// Most records per GetRecords call (default 10,000, the service's maximum; 1 ..=
    /// 10,000; polling only).
    pub fn max_records(mut self, max: i32) -> Self {
        self.polling.max_records = Some(max);
        self
    }

    /// Pause after each GetRecords call (default 1,500 ms; polling only).
    pub fn idle_time_between_reads(mut self, idle: Duration) -> Self {
        self.polling.idle_time_between_reads = Some(idle);
        self
    }

    /// Lag-aware pauses between GetRecords calls: fast while behind, longer and longer on a
    /// quiet shard (default off: a fixed `idle_time_between_reads`, as the Java KCL;
    /// polling only). See [`LagAwarePolling`](crate::LagAwarePolling).
    pub fn lag_aware_polling(mut self, lag_aware: crate::LagAwarePolling) -> Self {
        self.polling.lag_aware = Some(lag_aware);
        self
    }

    /// Batches read ahead per shard (default 3; at least 1).
    pub fn prefetch_batches(mut self, batches: usize) -> Self {
        self.polling.prefetch_batches = Some(batches);
        self
    }

    /// Throughput-aware balancing (default on), or `None` to balance lease counts only; see
    /// [`SchedulerConfig::throughput_balancing`].
    pub fn throughput_balancing(
        mut self,
        balancing: Option<crate::leases::ThroughputBalancing>,
    ) -> Self {
        self.config.throughput_balancing = balancing;
        self
    }

    /// Graceful lease handoff timeout (default 30 s), or `None` to turn graceful handoff
    /// off; see [`SchedulerConfig::graceful_lease_handoff_timeout`].
    pub fn graceful_lease_handoff_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.graceful_lease_handoff_timeout = timeout;
        self
    }

    /// How often handed-over leases and handoff requests are looked for (default 500 ms).
    pub fn lease_discovery_interval(mut self, interval: Duration) -> Self {
        self.config.lease_discovery_interval = interval;
        self
    }

    /// How long a graceful shutdown waits for processors (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Safety margin of the lease deadline (default a fifth of the failover time); see
    /// [`SchedulerConfig::lease_safety_margin`].
    pub fn lease_safety_margin(mut self, margin: Duration) -> Self {
        self.config.lease_safety_margin = margin;
        self.margin_set = true;
        self
    }

    /// Timeout of each lease table call (default a quarter of the failover time).
    pub fn dynamodb_request_timeout(mut self, timeout: Duration) -> Self {
        self.config.dynamodb_request_timeout = timeout;
        self.dynamodb_timeout_set = true;
        self
    }

    /// Timeout of each Kinesis call (default 30 s).
    pub fn kinesis_request_timeout(mut self, timeout: Duration) -> Self {
        self.config.kinesis_request_timeout = timeout;
        self
    }

    /// Most bytes read ahead per shard (default 8 MiB; at least 1).
    pub fn prefetch_bytes(mut self, bytes: usize) -> Self {
        self.config.prefetch_bytes = bytes;
        self
    }

    /// What a rejected (trimmed) checkpoint does (default: read from `TRIM_HORIZON`).
    pub fn on_trimmed_checkpoint(mut self, action: TrimmedCheckpoint) -> Self {
        self.config.on_trimmed_checkpoint = action;
        self
    }

    /// Also give the processor batches without records (default false); see
    /// [`SchedulerConfig::call_process_records_even_for_empty_list`].
    pub fn call_process_records_even_for_empty_list(mut self, call: bool) -> Self {
        self.config.call_process_records_even_for_empty_list = call;
        self
    }

    /// Gives up on a batch the processor keeps failing on after the policy's
    /// `max_attempts` attempts: its failed records go to the policy's dead-letter sink and
    /// the shard is checkpointed past it (see
    /// [`SchedulerConfig::dead_letter`](crate::SchedulerConfig::dead_letter)). Default:
    /// no policy, the shard read again from its checkpoint for as long as the lease is
    /// held.
    pub fn dead_letter(mut self, policy: crate::DeadLetterPolicy) -> Self {
        self.config.dead_letter = Some(policy);
        self
    }

    /// Retry delays of a failing shard consumer, of a failed batch and of a failing
    /// dead-letter sink (default 1 s doubling up to 5 minutes; `min` at most `max`).
    pub fn failure_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.failure_backoff_min = min;
        self.config.failure_backoff_max = max;
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

    /// How the DynamoDB lease table is named and created (default: named after the
    /// application, on-demand, with the owner index; see [`LeaseTableConfig`]). Setting it
    /// together with [`lease_store`](Self::lease_store) is an error at `build`.
    pub fn lease_table(mut self, config: LeaseTableConfig) -> Self {
        self.lease_table = config;
        self
    }

    /// Uses another lease store (for example [`crate::leases::MemoryLeaseStore`]).
    pub fn lease_store(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.lease_store = Some(store);
        self
    }

    /// How the leases are shared out among the workers (default
    /// [`Coordination::Leader`](crate::leases::Coordination::Leader) with
    /// [`LeaderConfig::default()`](crate::leases::LeaderConfig)).
    pub fn coordination(mut self, coordination: Coordination) -> Self {
        self.config.coordination = coordination;
        self
    }

    /// Uses another store for the coordinator tables (the leader lock and the worker rows)
    /// instead of the DynamoDB tables named after the application (for example
    /// [`MemoryCoordinatorStore`](crate::leases::coordination::MemoryCoordinatorStore), or
    /// a [`DynamoDbCoordinatorStore`] with other table names).
    pub fn coordinator_store(mut self, store: Arc<dyn CoordinatorStore>) -> Self {
        self.coordinator_store = Some(store);
        self
    }

    /// A multi-stream worker's stream (`identifier`, the Java KCL's form): its presence and
    /// the labels and gauges of its metrics are shared with the other streams, its leader
    /// lock is its own, and its leases go only to the workers that consume it.
    pub(crate) fn stream_of_many(
        mut self,
        presence: SharedPresence,
        identifier: String,
        metrics: WorkerLabels,
    ) -> Self {
        self.shared_presence = Some(presence);
        self.lock_key = format!("{LEADER_LOCK_KEY}:{identifier}");
        self.stream_identifier = Some(identifier);
        self.shared_metrics = Some(metrics);
        self
    }

    /// Checks the settings, creates the lease table if missing, checks that the stream
    /// exists and, with enhanced fan-out, registers the stream consumer if missing and waits
    /// until it is ACTIVE.
    pub async fn build(self) -> Result<Scheduler, SchedulerError> {
        crate::metrics::describe();
        let stream = self
            .stream
            .ok_or(SchedulerError::MissingSetting("stream"))?;
        let application = self
            .application_name
            .ok_or(SchedulerError::MissingSetting("application_name"))?;
        let factory = self
            .factory
            .ok_or(SchedulerError::MissingSetting("processor_factory"))?;
        let mut config = self.config;
        self.polling.apply(&mut config.retrieval)?;
        if !self.renewal_set {
            config.lease_renewal_interval = config.failover_time / 3;
        }
        if !self.taker_set {
            config.lease_taker_interval = config.failover_time;
        }
        if !self.margin_set {
            config.lease_safety_margin = config.failover_time / 5;
        }
        if !self.dynamodb_timeout_set {
            config.dynamodb_request_timeout = config.failover_time / 4;
        }
        validate(&config)?;
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        let metrics = self
            .shared_metrics
            .unwrap_or_else(|| WorkerLabels::new(&application, &worker_id))
            .stream(stream.name());
        let dynamodb = self
            .dynamodb_client
            .unwrap_or_else(|| aws_sdk_dynamodb::Client::new(&self.sdk_config));
        let store = prepare_lease_store(
            &dynamodb,
            &application,
            self.lease_table.clone(),
            self.lease_store,
        )
        .await?;
        let kinesis = self
            .kinesis_client
            .unwrap_or_else(|| aws_sdk_kinesis::Client::new(&self.sdk_config));

        let timeout = config.kinesis_request_timeout;
        let summary = tokio::time::timeout(timeout, stream.describe_summary(&kinesis).send())
            .await
            .map_err(|_| {
                SchedulerError::Kinesis(ServiceError::timed_out("DescribeStreamSummary", timeout))
            })?
            .map_err(|e| {
                SchedulerError::kinesis(&stream, ServiceError::from_sdk("DescribeStreamSummary", e))
            })?;
        let retrieval = match &config.retrieval {
            RetrievalMode::Polling(polling) => Retrieval::Polling(polling.clone()),
            RetrievalMode::FanOut(fan_out) => {
                let stream_arn = summary
                    .stream_description_summary()
                    .map(|s| s.stream_arn().to_owned())
                    .ok_or_else(|| {
                        SchedulerError::Kinesis(ServiceError::new(
                            "DescribeStreamSummary",
                            ErrorKind::Other,
                            "the answer has no stream description",
                        ))
                    })?;
                let name = fan_out.consumer_name.as_deref().unwrap_or(&application);
                let waited = fan_out.registration_timeout + config.kinesis_request_timeout;
                let consumer_arn = tokio::time::timeout(
                    waited,
                    register_consumer(&kinesis, &stream_arn, name, fan_out.registration_timeout),
                )
                .await
                .map_err(|_| FanOutError::NotActive {
                    consumer: name.to_owned(),
                    waited,
                    status: "a call did not answer".into(),
                })??;
                tracing::info!(consumer = %name, arn = %consumer_arn, "reading with enhanced fan-out");
                Retrieval::FanOut {
                    consumer_arn,
                    config: fan_out.clone(),
                }
            }
        };

        let lease_worker = LeaseWorkerConfig {
            coordinator: LeaseCoordinatorConfig {
                worker_id: worker_id.clone(),
                failover_time: config.failover_time,
                safety_margin: Some(config.lease_safety_margin),
                request_timeout: Some(config.dynamodb_request_timeout),
                max_leases_per_worker: config.max_leases_per_worker,
                max_leases_to_steal_at_once: config.max_leases_to_steal_at_once,
                graceful_handoff_timeout: config.graceful_lease_handoff_timeout,
                handoff_accept_wait: config.lease_discovery_interval * 3,
                throughput_balancing: config.throughput_balancing.clone(),
                metrics: metrics.clone(),
            },
            renewal_interval: config.lease_renewal_interval,
            discovery_interval: config.lease_discovery_interval,
            taker_interval: config.lease_taker_interval,
        };
        let leader = match &config.coordination {
            Coordination::Leader(leader) if store.lists_owned_keys_cheaply() => Some(leader),
            Coordination::Leader(_) => {
                tracing::warn!("the lease table has no owner index (LeaseOwnerToLeaseKeyIndex): every worker takes its own leases, scanning the table (Coordination::Workers)");
                None
            }
            Coordination::Workers => None,
        };
        let leases = match leader {
            None => LeaseWorker::workers(store.clone(), lease_worker),
            Some(leader) => {
                // Run only when no other stream of this worker made the presence yet.
                let new_presence = async {
                    let store = coordinator_store(
                        self.coordinator_store,
                        &dynamodb,
                        &application,
                        &self.lease_table,
                    )?;
                    make_presence(store, &config, &worker_id, leader, metrics.worker()).await
                };
                let presence = match &self.shared_presence {
                    Some(shared) => {
                        let existing = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        match existing {
                            Some(presence) => presence,
                            None => {
                                let presence = new_presence.await?;
                                *shared.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(presence.clone());
                                presence
                            }
                        }
                    }
                    None => new_presence.await?,
                };
                LeaseWorker::with_leader(
                    store.clone(),
                    presence,
                    leader,
                    self.lock_key,
                    self.stream_identifier,
                    lease_worker,
                )
            }
        };
        Ok(Scheduler {
            stream,
            worker_id,
            initial_position: self.initial_position,
            factory,
            config,
            store,
            kinesis,
            retrieval,
            leases: Arc::new(leases),
            shutdown: Arc::new(watch::channel(false).0),
            metrics,
        })
    }
}

/// Polling settings made through the builder's own setters: applied over the retrieval
/// mode at build time, so the order of the calls does not matter.
#[derive(Clone, Debug, Default)]
struct PollingSettings {
    max_records: Option<i32>,
    idle_time_between_reads: Option<Duration>,
    prefetch_batches: Option<usize>,
    lag_aware: Option<crate::LagAwarePolling>,
}

impl PollingSettings {
    fn apply(&self, mode: &mut RetrievalMode) -> Result<(), SchedulerError> {
        match mode {
            RetrievalMode::Polling(polling) => {
                if let Some(max) = self.max_records {
                    polling.max_records = max;
                }
                if let Some(idle) = self.idle_time_between_reads {
                    polling.idle_time_between_reads = idle;
                }
                if let Some(batches) = self.prefetch_batches {
                    polling.prefetch_batches = batches;
                }
                if let Some(lag_aware) = &self.lag_aware {
                    polling.lag_aware = Some(lag_aware.clone());
                }
            }
            RetrievalMode::FanOut(fan_out) => {
                let polling_only = [
                    ("max_records", self.max_records.is_some()),
                    (
                        "idle_time_between_reads",
                        self.idle_time_between_reads.is_some(),
                    ),
                    ("lag_aware_polling", self.lag_aware.is_some()),
                ];
                if let Some((setting, _)) = polling_only.into_iter().find(|(_, set)| *set) {
                    return Err(SchedulerError::InvalidConfig {
                        setting,
                        reason: "applies to polling only, and the retrieval mode is enhanced \
                                 fan-out (records are pushed: there are no GetRecords calls)"
                            .into(),
                    });
                }
                if let Some(batches) = self.prefetch_batches {
                    fan_out.prefetch_batches = batches;
                }
            }
        }
        Ok(())
    }
}

/// How long building waits for a new table to be ACTIVE (it waits up to 2 minutes; hung
/// calls are bounded too).
const TABLE_SETUP_TIMEOUT: Duration = Duration::from_secs(180);

/// The lease store a scheduler (or a multi-stream worker) uses: `custom` as it is, or the
/// DynamoDB lease table named after the application (unless `lease_table` names it),
/// checked and created if missing.
pub(crate) async fn prepare_lease_store(
    dynamodb: &aws_sdk_dynamodb::Client,
    application: &str,
    lease_table: LeaseTableConfig,
    custom: Option<Arc<dyn LeaseStore>>,
) -> Result<Arc<dyn LeaseStore>, SchedulerError> {
    let store: Arc<dyn LeaseStore> = match custom {
        Some(store) => {
            if lease_table != LeaseTableConfig::default() {
                return Err(SchedulerError::InvalidConfig {
                    setting: "lease_table",
                    reason: "it configures the DynamoDB lease table, and a lease_store is set"
                        .into(),
                });
            }
            store
        }
        None => {
            let table = lease_table
                .table_name
                .clone()
                .unwrap_or_else(|| application.to_owned());
            validate_lease_table(&table, &lease_table)?;
            Arc::new(
                DynamoDbLeaseStore::with_config(dynamodb.clone(), table, lease_table)
                    .with_application(application),
            )
        }
    };
    tokio::time::timeout(TABLE_SETUP_TIMEOUT, store.create_table_if_missing())
        .await
        .map_err(|_| LeaseStoreError::Timeout(TABLE_SETUP_TIMEOUT))??;
    Ok(store)
}

/// The coordinator tables: `custom`, or the DynamoDB tables named after the application.
fn coordinator_store(
    custom: Option<Arc<dyn CoordinatorStore>>,
    dynamodb: &aws_sdk_dynamodb::Client,
    application: &str,
    lease_table: &LeaseTableConfig,
) -> Result<Arc<dyn CoordinatorStore>, SchedulerError> {
    if let Some(store) = custom {
        return Ok(store);
    }
    let store = DynamoDbCoordinatorStore::new(dynamodb.clone(), application, lease_table.clone());
    for table in [store.state_table(), store.workers_table()] {
        if table.len() > 255 {
            return Err(SchedulerError::InvalidConfig {
                setting: "application_name",
                reason: format!(
                    "names the coordinator table {table:?}, longer than DynamoDB's 255 characters"
                ),
            });
        }
    }
    Ok(Arc::new(store))
}

/// A worker's presence (its row, liveness and watch of the fleet) in the coordinator
/// tables `store`, created if missing like the lease table.
async fn make_presence(
    store: Arc<dyn CoordinatorStore>,
    config: &SchedulerConfig,
    worker_id: &str,
    leader: &LeaderConfig,
    metrics: &WorkerLabels,
) -> Result<Arc<Presence>, SchedulerError> {
    tokio::time::timeout(TABLE_SETUP_TIMEOUT, store.create_tables_if_missing())
        .await
        .map_err(|_| LeaseStoreError::Timeout(TABLE_SETUP_TIMEOUT))??;
    let max_leases = (config.max_leases_per_worker != usize::MAX)
        .then(|| u64::try_from(config.max_leases_per_worker).unwrap_or(u64::MAX));
    Ok(Arc::new(Presence::new(
        store,
        PresenceConfig {
            worker_id: worker_id.to_owned(),
            failover_time: config.failover_time,
            safety_margin: config.lease_safety_margin,
            renewal_interval: config.lease_renewal_interval,
            request_timeout: config.dynamodb_request_timeout,
            max_leases,
            report_cpu: leader.cpu_balancing.is_some(),
            metrics: metrics.clone(),
        },
    )))
}

/// The lease table's name (the application name unless set) is 3 to 255 characters of
/// `a-z A-Z 0-9 _ . -`, and provisioned capacities are positive. Checked here so a bad
/// setting fails with its name instead of a ValidationException from the first DynamoDB
/// call.
fn validate_lease_table(name: &str, config: &LeaseTableConfig) -> Result<(), SchedulerError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !(3..=255).contains(&name.len()) || !name.chars().all(allowed) {
        return Err(SchedulerError::InvalidConfig {
            setting: if config.table_name.is_some() {
                "lease_table.table_name"
            } else {
                "application_name"
            },
            reason: format!(
                "{name:?} names the DynamoDB lease table: 3 to 255 characters of a-z, A-Z, \
                 0-9, '_', '.' and '-'"
            ),
        });
    }
    if let LeaseTableBilling::Provisioned {
        read_capacity_units,
        write_capacity_units,
    } = config.billing
    {
        if read_capacity_units < 1 || write_capacity_units < 1 {
            return Err(SchedulerError::InvalidConfig {
                setting: "lease_table.billing",
                reason: "provisioned read and write capacity units must be at least 1".into(),
            });
        }
    }
    Ok(())
}

/// Every setting in range and consistent with the others; nothing is clamped.
fn validate(config: &SchedulerConfig) -> Result<(), SchedulerError> {
    let invalid = |setting: &'static str, reason: &str| {
        Err(SchedulerError::InvalidConfig {
            setting,
            reason: reason.to_owned(),
        })
    };
    if config.failover_time.is_zero() {
        return invalid("failover_time", "must be positive");
    }
    if config.lease_renewal_interval.is_zero()
        || config.lease_renewal_interval >= config.failover_time
    {
        return invalid(
            "lease_renewal_interval",
            "must be positive and shorter than failover_time",
        );
    }
    if config.lease_safety_margin + config.lease_renewal_interval >= config.failover_time {
        return invalid(
            "lease_safety_margin",
            "lease_safety_margin + lease_renewal_interval must be shorter than failover_time \
             (a lease would expire locally before its next renewal)",
        );
    }
    for (setting, interval) in [
        ("lease_taker_interval", config.lease_taker_interval),
        ("shard_sync_interval", config.shard_sync_interval),
        (
            "parent_shard_poll_interval",
            config.parent_shard_poll_interval,
        ),
        ("dynamodb_request_timeout", config.dynamodb_request_timeout),
        ("kinesis_request_timeout", config.kinesis_request_timeout),
        ("lease_discovery_interval", config.lease_discovery_interval),
        (
            "graceful_lease_handoff_timeout",
            config
                .graceful_lease_handoff_timeout
                .unwrap_or(Duration::from_secs(1)),
        ),
    ] {
        if interval.is_zero() {
            return invalid(setting, "must be positive");
        }
    }
    if config.max_leases_per_worker == 0 {
        return invalid("max_leases_per_worker", "must be at least 1");
    }
    if let Some(balancing) = &config.throughput_balancing {
        if !(0.0..1.0).contains(&balancing.threshold) {
            return invalid("throughput_balancing", "threshold must be within 0 ..< 1");
        }
        if !(balancing.min_gap_kbps.is_finite() && balancing.min_gap_kbps >= 0.0) {
            return invalid("throughput_balancing", "min_gap_kbps must be 0 or more");
        }
    }
    if config.prefetch_bytes == 0 {
        return invalid("prefetch_bytes", "must be at least 1 byte");
    }
    if config.failure_backoff_min > config.failure_backoff_max {
        return invalid("failure_backoff", "min must not exceed max");
    }
    if config
        .dead_letter
        .as_ref()
        .is_some_and(|policy| policy.max_attempts() == 0)
    {
        return invalid("dead_letter", "max_attempts must be at least 1");
    }
    match &config.retrieval {
        RetrievalMode::Polling(polling) => {
            if !(1..=10_000).contains(&polling.max_records) {
                return invalid(
                    "max_records",
                    "must be within 1 ..= 10,000 (GetRecords' limit)",
                );
            }
            if polling.prefetch_batches == 0 {
                return invalid("prefetch_batches", "must be at least 1");
            }
        }
        RetrievalMode::FanOut(fan_out) => {
            if fan_out.prefetch_batches == 0 {
                return invalid("prefetch_batches", "must be at least 1");
            }
        }
    }
    Ok(())
}

/// The host name as the operating system reports it (not `$HOSTNAME`, which only
/// interactive shells set), the process id and a random suffix: stable enough to tell in
/// the lease table which machine and process hold a lease, unique across restarts.
pub(crate) fn default_worker_id() -> String {
    let host = gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_types::SdkConfig;

    use super::default_worker_id;
    use crate::leases::{LeaseTableBilling, LeaseTableConfig};
    use crate::processor::{ProcessRecordsInput, RecordProcessor, ShardEndedInput};
    use crate::{RetrievalMode, Scheduler, SchedulerBuilder, SchedulerError};

    struct NoOp;

    #[async_trait::async_trait]
    impl RecordProcessor for NoOp {
        async fn process_records(&mut self, _input: ProcessRecordsInput) -> crate::ProcessResult {
            Ok(())
        }
        async fn shard_ended(&mut self, _input: ShardEndedInput) {}
    }

    /// A builder whose clients point nowhere: settings are checked before any call.
    fn builder() -> SchedulerBuilder {
        let config = SdkConfig::builder().build();
        Scheduler::builder(&config)
            .stream("s")
            .application_name("app")
            .processor_factory(|| NoOp)
    }

    async fn rejected(builder: SchedulerBuilder) -> (&'static str, String) {
        match builder.build().await {
            Err(SchedulerError::InvalidConfig { setting, reason }) => (setting, reason),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn out_of_range_settings_are_errors_not_clamped() {
        for (builder, expected) in [
            (builder().max_records(0), "max_records"),
            (builder().max_records(10_001), "max_records"),
            (builder().prefetch_batches(0), "prefetch_batches"),
            (builder().prefetch_bytes(0), "prefetch_bytes"),
            (builder().max_leases_per_worker(0), "max_leases_per_worker"),
            (
                builder().failure_backoff(Duration::from_secs(10), Duration::from_secs(1)),
                "failure_backoff",
            ),
            (
                builder().lease_renewal_interval(Duration::from_secs(10)),
                "lease_renewal_interval",
            ),
            (
                builder().shard_sync_interval(Duration::ZERO),
                "shard_sync_interval",
            ),
            (
                builder().dead_letter(crate::DeadLetterPolicy::new(
                    0,
                    crate::dead_letter::JsonLinesFileSink::open("/dev/null").unwrap(),
                )),
                "dead_letter",
            ),
        ] {
            assert_eq!(rejected(builder).await.0, expected);
        }
    }

    #[tokio::test]
    async fn application_names_that_cannot_name_a_table_are_rejected() {
        for name in ["ab", "my app", "app/1", &"x".repeat(256)] {
            let (setting, reason) = rejected(builder().application_name(name)).await;
            assert_eq!(setting, "application_name");
            assert!(reason.contains("lease table"), "{reason}");
        }
        let table = LeaseTableConfig {
            table_name: Some("my table".into()),
            ..Default::default()
        };
        let (setting, _) = rejected(builder().application_name("my app").lease_table(table)).await;
        assert_eq!(setting, "lease_table.table_name");
        let table = LeaseTableConfig {
            billing: LeaseTableBilling::Provisioned {
                read_capacity_units: 0,
                write_capacity_units: 5,
            },
            ..Default::default()
        };
        let (setting, _) = rejected(builder().application_name("app").lease_table(table)).await;
        assert_eq!(setting, "lease_table.billing");
        let table = LeaseTableConfig {
            deletion_protection: true,
            ..Default::default()
        };
        let store = std::sync::Arc::new(crate::leases::MemoryLeaseStore::new());
        let (setting, _) = rejected(builder().lease_store(store).lease_table(table)).await;
        assert_eq!(setting, "lease_table");
    }

    #[tokio::test]
    async fn polling_settings_with_fan_out_are_rejected_in_either_order() {
        for builder in [
            builder().max_records(100).fan_out(),
            builder().fan_out().max_records(100),
            builder()
                .idle_time_between_reads(Duration::from_millis(200))
                .retrieval_mode(RetrievalMode::FanOut(Default::default())),
        ] {
            let (setting, reason) = rejected(builder).await;
            assert!(
                setting == "max_records" || setting == "idle_time_between_reads",
                "{setting}"
            );
            assert!(reason.contains("fan-out"), "{reason}");
        }
    }

    #[test]
    fn builder_polling_settings_win_over_the_mode_whatever_the_order() {
        let mut mode = RetrievalMode::default();
        super::PollingSettings {
            max_records: Some(7),
            idle_time_between_reads: None,
            prefetch_batches: Some(2),
            lag_aware: None,
        }
        .apply(&mut mode)
        .unwrap();
        match mode {
            RetrievalMode::Polling(polling) => {
                assert_eq!(polling.max_records, 7);
                assert_eq!(polling.prefetch_batches, 2);
                assert_eq!(polling.idle_time_between_reads, Duration::from_millis(1500));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_worker_id_is_the_os_host_name_with_a_unique_suffix() {
        let first = default_worker_id();
        let second = default_worker_id();
        assert_ne!(
            first, second,
            "two workers of one process get different ids"
        );
        let pid = std::process::id().to_string();
        for id in [&first, &second] {
            let mut parts = id.rsplitn(3, '-');
            let suffix = parts.next().unwrap_or_default();
            assert_eq!(parts.next(), Some(pid.as_str()), "{id}");
            assert_eq!(suffix.len(), 8, "{id}");
        }
        // What the kernel says, whatever the environment says.
        #[cfg(target_os = "linux")]
        {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .expect("Linux reports its host name");
            let host = host.trim();
            assert!(
                first.starts_with(&format!("{host}-{pid}-")),
                "{first} should start with the host name {host}"
            );
        }
    }
}
