//! One worker consuming several streams with one lease table, as the Java KCL's
//! multi-stream mode: lease keys `account:stream:creationEpoch:shardId`, streams added and
//! removed at run time by a user-supplied [`StreamTracker`], each with its own initial
//! position.
//!
//! Each tracked stream runs as a [`Scheduler`] of its own (same worker id, same lease
//! table through a [`StreamLeaseStore`]), so everything a single-stream scheduler
//! guarantees holds per stream: leases, balancing, graceful handoff, resharding,
//! checkpoints.

mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_types::SdkConfig;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use store::StreamLeaseStore;

use crate::error::{ErrorKind, ServiceError};
use crate::leases::{LeaseStore, LeaseTableConfig};
use crate::metrics::WorkerLabels;
use crate::scheduler::builder::{default_worker_id, prepare_lease_store, SharedPresence};
use crate::scheduler::{HeldShards, InitialPosition, Scheduler, SchedulerBuilder, SchedulerError};
use crate::stream::StreamRef;

/// A stream as the Java KCL's multi-stream leases name it: `account:stream:creationEpoch`.
/// The creation epoch (seconds) tells a stream from an earlier one of the same name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamIdentifier {
    account_id: String,
    stream_name: String,
    creation_epoch: i64,
}

impl StreamIdentifier {
    /// The stream `stream_name` of `account_id`, created at `creation_epoch` (seconds).
    pub fn new(
        account_id: impl Into<String>,
        stream_name: impl Into<String>,
        creation_epoch: i64,
    ) -> Self {
        StreamIdentifier {
            account_id: account_id.into(),
            stream_name: stream_name.into(),
            creation_epoch,
        }
    }

    /// Reads `account:stream:creationEpoch`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(':');
        let (account, stream, epoch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || account.is_empty() || stream.is_empty() {
            return None;
        }
        Some(StreamIdentifier::new(account, stream, epoch.parse().ok()?))
    }

    /// The account that owns the stream.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// When the stream was created, in seconds since the Unix epoch.
    pub fn creation_epoch(&self) -> i64 {
        self.creation_epoch
    }

    /// The lease key of one of the stream's shards.
    pub fn lease_key(&self, shard_id: &str) -> String {
        format!("{self}:{shard_id}")
    }

    /// The identifier of the stream `stream` (a name or an ARN) names, from
    /// DescribeStreamSummary (the account from the stream's ARN).
    pub(crate) async fn describe(
        kinesis: &aws_sdk_kinesis::Client,
        stream: &StreamRef,
        timeout: Duration,
    ) -> Result<Self, SchedulerError> {
        let summary = tokio::time::timeout(timeout, stream.describe_summary(kinesis).send())
            .await
            .map_err(|_| {
                SchedulerError::Kinesis(ServiceError::timed_out("DescribeStreamSummary", timeout))
            })?
            .map_err(|e| {
                SchedulerError::kinesis(stream, ServiceError::from_sdk("DescribeStreamSummary", e))
            })?;
        let unexpected = |what: &str| {
            SchedulerError::Kinesis(ServiceError::new(
                "DescribeStreamSummary",
                ErrorKind::Other,
                format!("the answer has no {what}"),
            ))
        };
        let summary = summary
            .stream_description_summary()
            .ok_or_else(|| unexpected("stream description"))?;
        // arn:partition:kinesis:region:account:stream/name
        let account = summary
            .stream_arn()
            .split(':')
            .nth(4)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| unexpected("account in the stream ARN"))?;
        Ok(StreamIdentifier::new(
            account,
            summary.stream_name(),
            summary.stream_creation_timestamp().secs(),
        ))
    }
}

impl std::fmt::Display for StreamIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.account_id, self.stream_name, self.creation_epoch
        )
    }
}

/// One stream to consume: a name in the client's account and region, or an ARN (also of
/// another account the credentials may read), and where a shard without a lease starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// The stream's name or ARN.
    pub stream: String,
    /// Where its shards without a lease start (default `LATEST`, as the Java KCL).
    pub initial_position: InitialPosition,
}

impl StreamConfig {
    /// `stream` (a name or an ARN), starting at `initial_position`.
    pub fn new(stream: impl Into<String>, initial_position: InitialPosition) -> Self {
        StreamConfig {
            stream: stream.into(),
            initial_position,
        }
    }
}

/// The streams to consume, asked again at every stream poll (the Java KCL's
/// `MultiStreamTracker`). A stream that appears is started; one that disappears is shut
/// down gracefully (its leases handed over or released, and kept in the table: they are
/// the checkpoints if it comes back).
#[async_trait]
pub trait StreamTracker: Send + Sync + 'static {
    /// The streams to consume now.
    async fn streams(&self) -> Vec<StreamConfig>;
}

#[async_trait]
impl StreamTracker for Vec<StreamConfig> {
    async fn streams(&self) -> Vec<StreamConfig> {
        self.clone()
    }
}

/// Per-stream settings: gets each stream's identifier and a [`SchedulerBuilder`] with the
/// stream, application, worker id, initial position and lease store already set, and
/// returns it with the processor factory and any other setting.
pub type ConfigureStream =
    Arc<dyn Fn(&StreamIdentifier, SchedulerBuilder) -> SchedulerBuilder + Send + Sync>;

/// Builds a [`MultiStreamScheduler`].
pub struct MultiStreamSchedulerBuilder {
    sdk_config: SdkConfig,
    application_name: Option<String>,
    worker_id: Option<String>,
    tracker: Option<Arc<dyn StreamTracker>>,
    configure: Option<ConfigureStream>,
    lease_table: LeaseTableConfig,
    lease_store: Option<Arc<dyn LeaseStore>>,
    stream_poll_interval: Duration,
    kinesis_client: Option<aws_sdk_kinesis::Client>,
    kinesis_request_timeout: Duration,
}

impl std::fmt::Debug for MultiStreamSchedulerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiStreamSchedulerBuilder")
            .field("application_name", &self.application_name)
            .field("worker_id", &self.worker_id)
            .field("stream_poll_interval", &self.stream_poll_interval)
            .finish_non_exhaustive()
    }
}

impl MultiStreamSchedulerBuilder {
    /// The application: names the lease table (unless [`lease_table`](Self::lease_table)
    /// names it) and the enhanced fan-out consumers.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// This worker's id, the same for every stream (default: host name, process id and a
    /// random suffix).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// The streams to consume (required).
    pub fn tracker(mut self, tracker: impl StreamTracker) -> Self {
        self.tracker = Some(Arc::new(tracker));
        self
    }

    /// Per-stream settings (required: it sets the processor factory). Do not set the
    /// stream, the application, the worker id or the lease store there.
    pub fn configure_stream(
        mut self,
        configure: impl Fn(&StreamIdentifier, SchedulerBuilder) -> SchedulerBuilder
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.configure = Some(Arc::new(configure));
        self
    }

    /// How the shared DynamoDB lease table is named and created (see
    /// [`SchedulerBuilder::lease_table`]).
    pub fn lease_table(mut self, config: LeaseTableConfig) -> Self {
        self.lease_table = config;
        self
    }

    /// Uses another lease table (for example [`crate::leases::MemoryLeaseStore`]).
    pub fn lease_store(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.lease_store = Some(store);
        self
    }

    /// How often the tracker is asked for the streams (default 60 s, the Java KCL's shard
    /// sync interval).
    pub fn stream_poll_interval(mut self, interval: Duration) -> Self {
        self.stream_poll_interval = interval;
        self
    }

    /// Uses this Kinesis client (for DescribeStreamSummary, and for every stream unless
    /// [`configure_stream`](Self::configure_stream) sets another).
    pub fn kinesis_client(mut self, client: aws_sdk_kinesis::Client) -> Self {
        self.kinesis_client = Some(client);
        self
    }

    /// Checks the settings and creates the lease table if missing. Streams are described
    /// and started when [`MultiStreamScheduler::run`] polls the tracker.
    pub async fn build(self) -> Result<MultiStreamScheduler, SchedulerError> {
        let application = self
            .application_name
            .ok_or(SchedulerError::MissingSetting("application_name"))?;
        let tracker = self
            .tracker
            .ok_or(SchedulerError::MissingSetting("tracker"))?;
        let configure = self
            .configure
            .ok_or(SchedulerError::MissingSetting("configure_stream"))?;
        if self.stream_poll_interval.is_zero() {
            return Err(SchedulerError::InvalidConfig {
                setting: "stream_poll_interval",
                reason: "must be positive".into(),
            });
        }
        let dynamodb = aws_sdk_dynamodb::Client::new(&self.sdk_config);
        let store =
            prepare_lease_store(&dynamodb, &application, self.lease_table, self.lease_store)
                .await?;
        let kinesis = self
            .kinesis_client
            .unwrap_or_else(|| aws_sdk_kinesis::Client::new(&self.sdk_config));
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        Ok(MultiStreamScheduler {
            sdk_config: self.sdk_config,
            tracker,
            configure,
            store,
            kinesis,
            kinesis_request_timeout: self.kinesis_request_timeout,
            stream_poll_interval: self.stream_poll_interval,
            shutdown: Arc::new(watch::channel(false).0),
            presence: SharedPresence::default(),
            held: MultiHeldShards::default(),
            metrics: WorkerLabels::new(&application, &worker_id),
            application,
            worker_id,
        })
    }
}

/// A worker consuming the streams a [`StreamTracker`] names, with one lease table.
///
/// ```no_run
/// use kinesis_consumer::multi_stream::{MultiStreamScheduler, StreamConfig};
/// use kinesis_consumer::{
///     InitialPosition, ProcessRecordsInput, ProcessResult, RecordProcessor, ShardEndedInput,
/// };
///
/// struct Printer;
///
/// #[async_trait::async_trait]
/// impl RecordProcessor for Printer {
///     async fn process_records(&mut self, input: ProcessRecordsInput) -> ProcessResult {
///         println!("{} records", input.records.len());
///         let _ = input.checkpointer.checkpoint().await;
///         Ok(())
///     }
///
///     async fn shard_ended(&mut self, input: ShardEndedInput) {
///         let _ = input.checkpointer.checkpoint().await;
///     }
/// }
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let sdk_config = aws_config::load_from_env().await;
/// let streams = vec![
///     StreamConfig::new("orders", InitialPosition::TrimHorizon),
///     StreamConfig::new("arn:aws:kinesis:eu-west-1:123456789012:stream/clicks", InitialPosition::Latest),
/// ];
/// let scheduler = MultiStreamScheduler::builder(&sdk_config)
///     .application_name("order-indexer")
///     .tracker(streams)
///     .configure_stream(|_stream, builder| builder.processor_factory(|| Printer))
///     .build()
///     .await?;
/// scheduler.run_until(tokio::signal::ctrl_c()).await?;
/// # Ok(()) }
/// ```
pub struct MultiStreamScheduler {
    sdk_config: SdkConfig,
    application: String,
    worker_id: String,
    tracker: Arc<dyn StreamTracker>,
    configure: ConfigureStream,
    store: Arc<dyn LeaseStore>,
    kinesis: aws_sdk_kinesis::Client,
    kinesis_request_timeout: Duration,
    stream_poll_interval: Duration,
    shutdown: Arc<watch::Sender<bool>>,
    /// This worker's presence (its row in the worker metrics table), shared by its
    /// streams; each stream has a leader lock of its own.
    presence: SharedPresence,
    /// The labels and gauges of this worker's metrics, shared by its streams.
    metrics: WorkerLabels,
    /// The leases held, per stream consumed.
    held: MultiHeldShards,
}

/// Tells which shards a running [`MultiStreamScheduler`] holds leases for, per stream it
/// consumes. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct MultiHeldShards(Arc<std::sync::Mutex<HashMap<StreamIdentifier, HeldShards>>>);

impl MultiHeldShards {
    /// Each stream consumed now and the shard ids whose leases this worker holds (including
    /// leases whose processor has not started yet, such as a child waiting for its
    /// parents).
    pub fn shard_ids(&self) -> Vec<(StreamIdentifier, Vec<String>)> {
        self.streams()
            .iter()
            .map(|(stream, held)| (stream.clone(), held.shard_ids()))
            .collect()
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamIdentifier, HeldShards>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for MultiStreamScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiStreamScheduler")
            .field("application", &self.application)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

/// A stream being consumed.
struct Running {
    identifier: StreamIdentifier,
    stop: crate::ShutdownHandle,
}

impl MultiStreamScheduler {
    /// A builder; `application_name`, `tracker` and `configure_stream` are required.
    pub fn builder(sdk_config: &SdkConfig) -> MultiStreamSchedulerBuilder {
        MultiStreamSchedulerBuilder {
            sdk_config: sdk_config.clone(),
            application_name: None,
            worker_id: None,
            tracker: None,
            configure: None,
            lease_table: LeaseTableConfig::default(),
            lease_store: None,
            stream_poll_interval: Duration::from_secs(60),
            kinesis_client: None,
            kinesis_request_timeout: Duration::from_secs(30),
        }
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// A handle that stops [`run`](Self::run) gracefully.
    pub fn shutdown_handle(&self) -> crate::ShutdownHandle {
        crate::ShutdownHandle::new(self.shutdown.clone())
    }

    /// A handle that tells which shards this worker holds leases for, per stream.
    pub fn held_shards(&self) -> MultiHeldShards {
        self.held.clone()
    }

    /// Consumes the tracked streams until a shutdown is requested: asks the tracker at once
    /// and then every stream poll interval, starts the streams that appeared, and shuts
    /// down gracefully those that disappeared. A stream that cannot be started (not found,
    /// no permission) is logged and tried again at the next poll, as is one whose scheduler
    /// stopped with an error. At shutdown every stream is shut down gracefully; returns the
    /// first error one of them stopped with, if any.
    pub async fn run(self) -> Result<(), SchedulerError> {
        let mut shutdown = self.shutdown.subscribe();
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut tasks = Tasks::default();
        let mut poll = tokio::time::interval(self.stream_poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
                _ = poll.tick() => {
                    // A poll (the tracker, a stream's description, its lease table) that
                    // hangs does not hold up a shutdown; cancelled, it starts nothing.
                    tokio::select! {
                        _ = self.poll(&mut running, &mut tasks) => {}
                        _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
                    }
                }
                Some((stream, result)) = tasks.next() => {
                    let identifier = running.remove(&stream).map(|r| r.identifier);
                    if let Some(identifier) = &identifier {
                        self.held.streams().remove(identifier);
                    }
                    match result {
                        Ok(()) => tracing::info!(%stream, ?identifier, "stream no longer consumed"),
                        Err(error) => tracing::error!(%stream, %error, "stream stopped with an error; starting it again at the next stream poll"),
                    }
                }
            }
        }
        for consuming in running.values() {
            consuming.stop.shutdown();
        }
        let mut first_error = None;
        while let Some((stream, result)) = tasks.next().await {
            if let Err(error) = result {
                tracing::warn!(%stream, %error, "stream stopped with an error");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`run`](Self::run) until `signal` completes, then shuts down gracefully.
    pub async fn run_until<F>(self, signal: F) -> Result<(), SchedulerError>
    where
        F: std::future::Future + Send,
    {
        let handle = self.shutdown_handle();
        crate::scheduler::run_until_signal(self.run(), handle, signal).await
    }

    async fn poll(&self, running: &mut HashMap<String, Running>, tasks: &mut Tasks) {
        let wanted = match tokio::time::timeout(
            self.kinesis_request_timeout,
            self.tracker.streams(),
        )
        .await
        {
            Ok(wanted) => wanted,
            Err(_) => {
                tracing::warn!(timeout = ?self.kinesis_request_timeout, "the stream tracker did not answer; asking again at the next stream poll");
                return;
            }
        };
        for (stream, consuming) in running.iter() {
            if !wanted.iter().any(|w| &w.stream == stream) {
                tracing::info!(%stream, identifier = %consuming.identifier, "stream no longer tracked: shutting it down");
                consuming.stop.shutdown();
            }
        }
        for config in wanted {
            if running.contains_key(&config.stream) {
                continue;
            }
            match self.start(&config).await {
                Ok((identifier, scheduler)) => {
                    tracing::info!(stream = %config.stream, %identifier, "consuming stream");
                    let stop = scheduler.shutdown_handle();
                    self.held
                        .streams()
                        .insert(identifier.clone(), scheduler.held_shards());
                    tasks.spawn(config.stream.clone(), scheduler.run());
                    running.insert(config.stream, Running { identifier, stop });
                }
                Err(error) => {
                    tracing::warn!(stream = %config.stream, %error, "cannot consume stream; trying again at the next stream poll")
                }
            }
        }
    }

    async fn start(
        &self,
        config: &StreamConfig,
    ) -> Result<(StreamIdentifier, Scheduler), SchedulerError> {
        let stream = StreamRef::new(&config.stream);
        let identifier =
            StreamIdentifier::describe(&self.kinesis, &stream, self.kinesis_request_timeout)
                .await?;
        let store = Arc::new(StreamLeaseStore::new(
            self.store.clone(),
            identifier.clone(),
        ));
        let builder = Scheduler::builder(&self.sdk_config)
            .stream(&config.stream)
            .application_name(&self.application)
            .worker_id(&self.worker_id)
            .initial_position(config.initial_position)
            .kinesis_client(self.kinesis.clone())
            .lease_store(store)
            .stream_of_many(
                self.presence.clone(),
                identifier.to_string(),
                self.metrics.clone(),
            );
        let scheduler = (self.configure)(&identifier, builder).build().await?;
        Ok((identifier, scheduler))
    }
}

/// The streams' scheduler tasks, each known by its stream.
#[derive(Default)]
struct Tasks {
    set: JoinSet<Result<(), SchedulerError>>,
    streams: HashMap<tokio::task::Id, String>,
}

impl Tasks {
    fn spawn(
        &mut self,
        stream: String,
        run: impl std::future::Future<Output = Result<(), SchedulerError>> + Send + 'static,
    ) {
        let id = self.set.spawn(run).id();
        self.streams.insert(id, stream);
    }

    /// The next task to end: its stream and result (a panic is an error). `None` when no
    /// task runs.
    async fn next(&mut self) -> Option<(String, Result<(), SchedulerError>)> {
        let (id, result) = match self.set.join_next_with_id().await? {
            Ok((id, result)) => (id, result),
            Err(error) => {
                let id = error.id();
                let failure = SchedulerError::Panicked {
                    stream: self.streams.get(&id).cloned().unwrap_or_default(),
                    message: error.to_string(),
                };
                (id, Err(failure))
            }
        };
        let stream = self.streams.remove(&id).unwrap_or_default();
        Some((stream, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker that never answers.
    struct Hanging;

    #[async_trait]
    impl StreamTracker for Hanging {
        async fn streams(&self) -> Vec<StreamConfig> {
            std::future::pending().await
        }
    }

    /// A tracker that hangs costs one poll (the call times out) and never holds up a
    /// shutdown.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_tracker_does_not_hold_up_a_shutdown() {
        let sdk_config = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_types::region::Region::new("us-east-1"))
            .build();
        let scheduler = MultiStreamScheduler::builder(&sdk_config)
            .application_name("app")
            .tracker(Hanging)
            .configure_stream(|_, builder| builder)
            .lease_store(Arc::new(crate::leases::MemoryLeaseStore::new()))
            .build()
            .await
            .unwrap();
        let stop = scheduler.shutdown_handle();
        let run = tokio::spawn(scheduler.run());
        tokio::time::sleep(Duration::from_secs(95)).await;
        assert!(!run.is_finished());
        let asked = tokio::time::Instant::now();
        stop.shutdown();
        run.await.unwrap().unwrap();
        assert!(asked.elapsed() < Duration::from_millis(10));
    }

    #[test]
    fn identifiers_read_and_write_the_java_kcl_form() {
        let id = StreamIdentifier::new("123456789012", "orders", 1_700_000_000);
        assert_eq!(id.to_string(), "123456789012:orders:1700000000");
        assert_eq!(
            id.lease_key("shardId-000000000003"),
            "123456789012:orders:1700000000:shardId-000000000003"
        );
        assert_eq!(StreamIdentifier::parse(&id.to_string()), Some(id));
        for bad in [
            "orders",
            "1:orders",
            "1:orders:x",
            "1:orders:1:2",
            ":orders:1",
            "1::1",
        ] {
            assert_eq!(StreamIdentifier::parse(bad), None, "{bad}");
        }
    }
}
