//! Scheduler settings and the builder that checks them and prepares the lease table.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_types::SdkConfig;
use tokio::sync::watch;

use super::{InitialPosition, Scheduler, SchedulerError};
use crate::leases::{
    DynamoDbLeaseStore, LeaseCoordinator, LeaseCoordinatorConfig, LeaseStore, LeaseStoreError,
};
use crate::processor::ProcessorFactory;
use crate::retrieval::{
    register_consumer, FanOutConfig, FanOutError, RetrievalMode, TrimmedCheckpoint,
};
use crate::shard_consumer::Retrieval;

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
    /// `TRIM_HORIZON`, with an error log and the metric `CheckpointTrimHorizonFallbacks`).
    pub on_trimmed_checkpoint: TrimmedCheckpoint,
    /// Give the processor batches without records too, with their `millis_behind_latest`
    /// (Java KCL `callProcessRecordsEvenForEmptyRecordList`, default false): an empty batch
    /// with `millis_behind_latest == Some(0)` says the shard is read to its tip.
    pub call_process_records_even_for_empty_list: bool,
    /// First retry delay of a shard whose consumer failed: the processor panicked, did
    /// not checkpoint at shard end, or the shard could not be read (default 1 s). It
    /// doubles on each consecutive failure, up to `failure_backoff_max`, and starts over
    /// after progress (a checkpoint).
    pub failure_backoff_min: Duration,
    /// Longest retry delay of a failing shard consumer (default 5 minutes).
    pub failure_backoff_max: Duration,
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
    margin_set: bool,
    dynamodb_timeout_set: bool,
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
            kinesis_client: None,
            dynamodb_client: None,
            lease_store: None,
        }
    }

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
    /// [`idle_time_between_reads`](Self::idle_time_between_reads)) change the polling mode
    /// only; [`prefetch_batches`](Self::prefetch_batches) applies to both.
    pub fn retrieval_mode(mut self, mode: RetrievalMode) -> Self {
        self.config.retrieval = mode;
        self
    }

    /// Enhanced fan-out with the consumer named after the application (shorthand for
    /// [`retrieval_mode`](Self::retrieval_mode)`(RetrievalMode::FanOut(..))`, keeping the
    /// prefetch setting).
    pub fn fan_out(mut self) -> Self {
        self.config.retrieval = RetrievalMode::FanOut(FanOutConfig {
            prefetch_batches: self.config.retrieval.prefetch_batches(),
            ..FanOutConfig::default()
        });
        self
    }

    /// Most records per GetRecords call (default 10,000; polling only).
    pub fn max_records(mut self, max: i32) -> Self {
        if let RetrievalMode::Polling(polling) = &mut self.config.retrieval {
            polling.max_records = max.clamp(1, 10_000);
        }
        self
    }

    /// Pause after each GetRecords call (default 1,500 ms; polling only).
    pub fn idle_time_between_reads(mut self, idle: Duration) -> Self {
        if let RetrievalMode::Polling(polling) = &mut self.config.retrieval {
            polling.idle_time_between_reads = idle;
        }
        self
    }

    /// Batches read ahead per shard (default 3).
    pub fn prefetch_batches(mut self, batches: usize) -> Self {
        let batches = batches.max(1);
        match &mut self.config.retrieval {
            RetrievalMode::Polling(polling) => polling.prefetch_batches = batches,
            RetrievalMode::FanOut(fan_out) => fan_out.prefetch_batches = batches,
        }
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

    /// Most bytes read ahead per shard (default 8 MiB).
    pub fn prefetch_bytes(mut self, bytes: usize) -> Self {
        self.config.prefetch_bytes = bytes.max(1);
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

    /// Retry delays of a failing shard consumer (default 1 s doubling up to 5 minutes).
    pub fn failure_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.failure_backoff_min = min;
        self.config.failure_backoff_max = max.max(min);
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

    /// Checks the settings, creates the lease table if missing, checks that the stream
    /// exists and, with enhanced fan-out, registers the stream consumer if missing and waits
    /// until it is ACTIVE.
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
        if !self.margin_set {
            config.lease_safety_margin = config.failover_time / 5;
        }
        if !self.dynamodb_timeout_set {
            config.dynamodb_request_timeout = config.failover_time / 4;
        }
        if config.lease_renewal_interval >= config.failover_time {
            return Err(SchedulerError::Config(
                "lease_renewal_interval must be shorter than failover_time",
            ));
        }
        if config.lease_safety_margin + config.lease_renewal_interval >= config.failover_time {
            return Err(SchedulerError::Config(
                "lease_safety_margin + lease_renewal_interval must be shorter than failover_time \
                 (a lease would expire locally before its next renewal)",
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

        // It waits up to 2 minutes for a new table to become ACTIVE; bound hung calls too.
        tokio::time::timeout(Duration::from_secs(180), store.create_table_if_missing())
            .await
            .map_err(|_| LeaseStoreError::Timeout(Duration::from_secs(180)))??;
        let summary = tokio::time::timeout(
            config.kinesis_request_timeout,
            kinesis
                .describe_stream_summary()
                .stream_name(&stream)
                .send(),
        )
        .await
        .map_err(|_| SchedulerError::Kinesis("DescribeStreamSummary timed out".into()))?
        .map_err(|e| SchedulerError::Kinesis(DisplayErrorContext(&e).to_string()))?;
        let retrieval = match &config.retrieval {
            RetrievalMode::Polling(polling) => Retrieval::Polling(polling.clone()),
            RetrievalMode::FanOut(fan_out) => {
                let stream_arn = summary
                    .stream_description_summary()
                    .map(|s| s.stream_arn().to_owned())
                    .ok_or_else(|| {
                        SchedulerError::Kinesis("DescribeStreamSummary returned no stream".into())
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

        let coordinator = Arc::new(LeaseCoordinator::new(
            store.clone(),
            LeaseCoordinatorConfig {
                worker_id: worker_id.clone(),
                failover_time: config.failover_time,
                safety_margin: Some(config.lease_safety_margin),
                request_timeout: Some(config.dynamodb_request_timeout),
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
            retrieval,
            coordinator,
            shutdown: Arc::new(watch::channel(false).0),
        })
    }
}

/// The host name as the operating system reports it (not `$HOSTNAME`, which only
/// interactive shells set), the process id and a random suffix: stable enough to tell in
/// the lease table which machine and process hold a lease, unique across restarts.
fn default_worker_id() -> String {
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
    use super::default_worker_id;

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
