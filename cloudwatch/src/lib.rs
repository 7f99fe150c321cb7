#![forbid(unsafe_code)]
// Unit tests may unwrap: a panic is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![doc = include_str!("../README.md")]

mod names;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
use aws_sdk_cloudwatch::Client;
use kinesis_errors::ServiceError;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
    SharedString, Unit,
};
use tokio::sync::{mpsc, oneshot};

pub use names::{mapping, Mapping};

/// Most metric data in one PutMetricData request (the service's limit).
pub const MAX_DATUMS_PER_REQUEST: usize = 1_000;

/// Which metrics are published (KPL `MetricsLevel`, KCL `metricsLevel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MetricsLevel {
    /// Nothing.
    None,
    /// The summary metrics only (records put or processed, errors, lag, leases).
    Summary,
    /// Every metric (the KPL's and the KCL's default).
    #[default]
    Detailed,
}

/// Which dimension sets each metric is published with (KPL `MetricsGranularity`): every
/// level up to the one chosen, as the KPL does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Granularity {
    /// Without `StreamName` and `ShardId`.
    Global,
    /// Also with `StreamName`.
    Stream,
    /// Also with `StreamName` and `ShardId` (the KPL's default).
    #[default]
    Shard,
}

/// Settings of a [`CloudWatchRecorder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CloudWatchConfig {
    /// The CloudWatch namespace: the KPL's `KinesisProducerLibrary` by default; the KCL
    /// publishes under the application's name ([`CloudWatchConfig::consumer`]).
    pub namespace: String,
    /// Which metrics are published. Default [`MetricsLevel::Detailed`].
    pub level: MetricsLevel,
    /// Which dimension sets. Default [`Granularity::Shard`].
    pub granularity: Granularity,
    /// How often the values gathered are sent (KPL `MetricsUploadDelay`, 60 s). Each
    /// series is sent as one statistic set (count, sum, minimum, maximum) per interval.
    pub interval: Duration,
    /// Timeout of one PutMetricData call. Default 10 s.
    pub request_timeout: Duration,
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        CloudWatchConfig {
            namespace: String::from("KinesisProducerLibrary"),
            level: MetricsLevel::Detailed,
            granularity: Granularity::Shard,
            interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl CloudWatchConfig {
    /// The producer's settings: namespace `KinesisProducerLibrary`, as the KPL.
    pub fn producer() -> Self {
        Self::default()
    }

    /// A consumer application's settings: its name as the namespace, as the KCL.
    pub fn consumer(application: impl Into<String>) -> Self {
        CloudWatchConfig {
            namespace: application.into(),
            ..Self::default()
        }
    }
}

/// What the publisher did, for monitoring the monitoring: its failures are logged and
/// counted here, never raised to the pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// PutMetricData calls that succeeded.
    pub requests: u64,
    /// PutMetricData calls that failed or timed out (their data is dropped).
    pub failed_requests: u64,
    /// Metric data sent.
    pub datums: u64,
    /// Metric data dropped with failed calls.
    pub dropped_datums: u64,
}

#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    failed_requests: AtomicU64,
    datums: AtomicU64,
    dropped_datums: AtomicU64,
}

/// The statistics of one series since the last upload.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stats {
    count: f64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn one(value: f64) -> Self {
        Stats {
            count: 1.0,
            sum: value,
            min: value,
            max: value,
        }
    }

    fn merge(&mut self, other: Stats) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// CloudWatch dimensions, sorted by name.
type Dimensions = Vec<(&'static str, String)>;

/// One series: a CloudWatch metric name with its full dimension set.
#[derive(Debug)]
struct Series {
    mapping: Mapping,
    dimensions: Vec<(&'static str, String)>,
    /// For a `.Success` metric: whether this label set counts successes (1) or failures
    /// (0); each increment adds that many samples.
    success: Option<bool>,
    state: Mutex<SeriesState>,
}

#[derive(Debug, Default)]
struct SeriesState {
    stats: Option<Stats>,
    /// A gauge's current value: sent every interval.
    gauge: Option<f64>,
}

impl Series {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeriesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, stats: Stats) {
        let mut state = self.lock();
        match &mut state.stats {
            Some(current) => current.merge(stats),
            None => state.stats = Some(stats),
        }
    }

    /// What to send for this interval, and the state reset for the next.
    fn take(&self) -> Option<Stats> {
        let mut state = self.lock();
        let stats = state.stats.take();
        match (stats, state.gauge) {
            (Some(stats), _) => Some(stats),
            (None, Some(value)) => Some(Stats::one(value)),
            (None, None) => None,
        }
    }
}

impl CounterFn for Series {
    fn increment(&self, value: u64) {
        let value = value as f64;
        match self.success {
            // n calls: n samples of 1 (success) or 0 (failure); the average is the rate.
            Some(success) => {
                let one = if success { 1.0 } else { 0.0 };
                self.add(Stats {
                    count: value,
                    sum: one * value,
                    min: one,
                    max: one,
                });
            }
            None => self.add(Stats::one(value * self.mapping.scale)),
        }
    }

    fn absolute(&self, value: u64) {
        CounterFn::increment(self, value);
    }
}

impl GaugeFn for Series {
    fn increment(&self, value: f64) {
        let mut state = self.lock();
        let next = state.gauge.unwrap_or(0.0) + value;
        state.gauge = Some(next);
        drop(state);
        self.add(Stats::one(next * self.mapping.scale));
    }

    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }

    fn set(&self, value: f64) {
        self.lock().gauge = Some(value);
        self.add(Stats::one(value * self.mapping.scale));
    }
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        self.add(Stats::one(value * self.mapping.scale));
    }
}

/// A `metrics` recorder that gathers the producer's and the consumer's metrics and has
/// them published to CloudWatch by a background task ([`CloudWatchPublisher`]). Recording
/// only updates memory (one short lock per series): it never waits for CloudWatch.
#[derive(Clone, Debug)]
pub struct CloudWatchRecorder {
    config: Arc<CloudWatchConfig>,
    series: Arc<RwLock<HashMap<Key, Arc<Series>>>>,
}

/// The background task that sends what a [`CloudWatchRecorder`] gathered, every
/// interval, in PutMetricData calls of at most [`MAX_DATUMS_PER_REQUEST`] data. Dropping
/// it stops the task without a last upload: call [`shutdown`](Self::shutdown) first.
#[derive(Debug)]
pub struct CloudWatchPublisher {
    commands: mpsc::Sender<oneshot::Sender<()>>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl CloudWatchRecorder {
    /// A recorder publishing with a CloudWatch client made from `sdk_config`, and its
    /// publisher task (spawned on the current Tokio runtime).
    pub fn new(
        sdk_config: &aws_types::SdkConfig,
        config: CloudWatchConfig,
    ) -> (CloudWatchRecorder, CloudWatchPublisher) {
        Self::with_client(Client::new(sdk_config), config)
    }

    /// As [`new`](Self::new), with a client of your own.
    pub fn with_client(
        client: Client,
        config: CloudWatchConfig,
    ) -> (CloudWatchRecorder, CloudWatchPublisher) {
        let recorder = CloudWatchRecorder {
            config: Arc::new(config),
            series: Arc::default(),
        };
        let counts = Arc::new(Counts::default());
        let (commands, receiver) = mpsc::channel(8);
        let task = tokio::spawn(publish_loop(
            recorder.clone(),
            client,
            counts.clone(),
            receiver,
        ));
        let publisher = CloudWatchPublisher {
            commands,
            counts,
            task,
        };
        (recorder, publisher)
    }

    fn register(&self, key: &Key, kind: Kind) -> Option<Arc<Series>> {
        let mapping = names::mapping(key.name())?;
        if mapping.level > self.config.level || kind != mapping.kind {
            return None;
        }
        if let Some(series) = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return Some(series.clone());
        }
        let mut dimensions: Vec<(&'static str, String)> = Vec::new();
        let mut success = None;
        for label in key.labels() {
            match (label.key(), names::dimension(label.key())) {
                ("outcome", _) if mapping.success => success = Some(label.value() == "success"),
                (_, Some(name)) => dimensions.push((name, label.value().to_owned())),
                (_, None) => {}
            }
        }
        if let Some(operation) = mapping.operation {
            dimensions.push(("Operation", operation.to_owned()));
        }
        dimensions.sort();
        let series = Arc::new(Series {
            mapping,
            dimensions,
            success,
            state: Mutex::default(),
        });
        self.series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert(series)
            .clone()
            .into()
    }

    /// The metric data of the interval that ended, every granularity up to the
    /// configured one, merged per metric name and dimension set.
    fn take_datums(&self) -> Vec<MetricDatum> {
        let mut merged: BTreeMap<(&'static str, Dimensions), (Mapping, Stats)> = BTreeMap::new();
        let series: Vec<Arc<Series>> = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for series in series {
            let Some(stats) = series.take() else {
                continue;
            };
            if !(stats.sum.is_finite() && stats.min.is_finite() && stats.max.is_finite()) {
                continue;
            }
            for dimensions in granularities(&series.dimensions, self.config.granularity) {
                merged
                    .entry((series.mapping.name, dimensions))
                    .and_modify(|(_, total)| total.merge(stats))
                    .or_insert((series.mapping, stats));
            }
        }
        let timestamp = aws_sdk_cloudwatch::primitives::DateTime::from(SystemTime::now());
        merged
            .into_iter()
            .map(|((name, dimensions), (mapping, stats))| {
                let dimensions = dimensions
                    .into_iter()
                    .map(|(name, value)| Dimension::builder().name(name).value(value).build())
                    .collect();
                MetricDatum::builder()
                    .metric_name(name)
                    .set_dimensions(Some(dimensions))
                    .unit(StandardUnit::from(mapping.unit))
                    .timestamp(timestamp)
                    .statistic_values(
                        StatisticSet::builder()
                            .sample_count(stats.count)
                            .sum(stats.sum)
                            .minimum(stats.min)
                            .maximum(stats.max)
                            .build(),
                    )
                    .build()
            })
            .collect()
    }
}

/// The dimension sets of a series at every granularity up to `granularity`, without
/// repeats: global drops `StreamName` and `ShardId`, stream drops `ShardId`.
fn granularities(
    dimensions: &[(&'static str, String)],
    granularity: Granularity,
) -> Vec<Vec<(&'static str, String)>> {
    let without = |dropped: &[&str]| -> Vec<(&'static str, String)> {
        dimensions
            .iter()
            .filter(|(name, _)| !dropped.contains(name))
            .cloned()
            .collect()
    };
    let mut sets = vec![without(&["StreamName", "ShardId"])];
    if granularity >= Granularity::Stream {
        sets.push(without(&["ShardId"]));
    }
    if granularity >= Granularity::Shard {
        sets.push(dimensions.to_vec());
    }
    sets.dedup();
    sets
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl metrics::Recorder for CloudWatchRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.register(key, Kind::Counter)
            .map_or_else(Counter::noop, Counter::from_arc)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.register(key, Kind::Gauge)
            .map_or_else(Gauge::noop, Gauge::from_arc)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.register(key, Kind::Histogram)
            .map_or_else(Histogram::noop, Histogram::from_arc)
    }
}

impl CloudWatchPublisher {
    /// Sends what was gathered so far now, and waits until it was sent (or failed).
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(reply).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Sends what was gathered, then stops the task.
    pub async fn shutdown(self) {
        self.flush().await;
        self.task.abort();
    }

    /// What the publisher did so far.
    pub fn stats(&self) -> PublisherStats {
        PublisherStats {
            requests: self.counts.requests.load(Ordering::Relaxed),
            failed_requests: self.counts.failed_requests.load(Ordering::Relaxed),
            datums: self.counts.datums.load(Ordering::Relaxed),
            dropped_datums: self.counts.dropped_datums.load(Ordering::Relaxed),
        }
    }
}

async fn publish_loop(
    recorder: CloudWatchRecorder,
    client: Client,
    counts: Arc<Counts>,
    mut commands: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut ticks = tokio::time::interval(recorder.config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let reply = tokio::select! {
            _ = ticks.tick() => None,
            command = commands.recv() => match command {
                Some(reply) => Some(reply),
                None => return,
            },
        };
        publish(&recorder, &client, &counts).await;
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }
}

/// Sends the interval's data in calls of at most [`MAX_DATUMS_PER_REQUEST`]; a failed
/// call is logged and counted, and its data dropped.
async fn publish(recorder: &CloudWatchRecorder, client: &Client, counts: &Counts) {
    let datums = recorder.take_datums();
    for chunk in datums.chunks(MAX_DATUMS_PER_REQUEST) {
        let call = client
            .put_metric_data()
            .namespace(&recorder.config.namespace)
            .set_metric_data(Some(chunk.to_vec()))
            .send();
        let failure = match tokio::time::timeout(recorder.config.request_timeout, call).await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(ServiceError::from_sdk("PutMetricData", error).to_string()),
            Err(_) => Some(format!(
                "no answer within {:?}",
                recorder.config.request_timeout
            )),
        };
        match failure {
            None => {
                counts.requests.fetch_add(1, Ordering::Relaxed);
                counts
                    .datums
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Some(error) => {
                counts.failed_requests.fetch_add(1, Ordering::Relaxed);
                counts
                    .dropped_datums
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    namespace = %recorder.config.namespace,
                    datums = chunk.len(),
                    %error,
                    "PutMetricData failed; these metric data are dropped"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granularities_add_dimensions_up_to_the_one_chosen() {
        let dims = vec![
            ("ShardId", "shardId-1".to_owned()),
            ("StreamName", "orders".to_owned()),
        ];
        assert_eq!(granularities(&dims, Granularity::Global), vec![vec![]]);
        assert_eq!(granularities(&dims, Granularity::Shard).len(), 3);
        let stream_only = vec![("StreamName", "orders".to_owned())];
        assert_eq!(
            granularities(&stream_only, Granularity::Shard),
            vec![vec![], stream_only.clone()],
            "no repeated set"
        );
    }
}
