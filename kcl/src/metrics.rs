//! The consumer's metrics, through the `metrics` facade, named after the Java KCL's: install
//! any recorder (Prometheus, StatsD, CloudWatch...) to collect them; without one they cost
//! next to nothing. Every call site records per batch, per request or per lease, never per
//! record.
//!
//! Every metric carries `application`, the application name the scheduler was built with,
//! so that two applications in one process have series of their own. Per-shard metrics
//! also carry `stream` (the stream's name, also for a stream given by ARN; for a
//! multi-stream scheduler, the name part of the stream identifier) and `shard` (the shard
//! id), so that the streams of a multi-stream scheduler, whose shard ids repeat from one
//! stream to the next, have series of their own. Per-worker metrics carry `worker` and no
//! `stream`: a multi-stream worker's gauges are the sum over its streams (`current_leases`
//! counts every lease it holds, `leader` the streams whose leases it assigns).
//!
//! | metric | kind, unit | labels | Java KCL name |
//! |---|---|---|---|
//! | `kinesis_consumer_millis_behind_latest` | gauge, milliseconds | `application`, `stream`, `shard` | MillisBehindLatest |
//! | `kinesis_consumer_records_processed` | counter | `application`, `stream`, `shard` | RecordsProcessed |
//! | `kinesis_consumer_data_bytes_processed` | counter, bytes (user record data) | `application`, `stream`, `shard` | DataBytesProcessed |
//! | `kinesis_consumer_process_records_time_seconds` | histogram, seconds | `application`, `stream`, `shard` | RecordProcessor.processRecords.Time |
//! | `kinesis_consumer_current_leases` | gauge | `application`, `worker` | CurrentLeases (LeasesHeld) |
//! | `kinesis_consumer_taken_leases` | counter | `application`, `worker` | TakenLeases |
//! | `kinesis_consumer_lost_leases` | counter | `application`, `worker` | LostLeases |
//! | `kinesis_consumer_handoffs_requested` | counter | `application`, `worker` | (KCL 3: graceful handoffs the leader initiated) |
//! | `kinesis_consumer_leases_handed_over` | counter | `application`, `worker` | (KCL 3: leases transferred after a graceful shutdown) |
//! | `kinesis_consumer_lease_renewals` | counter | `application`, `worker`, `outcome` (`success`, `failure`) | RenewLease.Success |
//! | `kinesis_consumer_leader` | gauge | `application`, `worker` | (KCL 3: `LeaderDecider` metrics) |
//! | `kinesis_consumer_leader_writes` | counter | `application`, `worker`, `kind` (`assign`, `move`, `steal`, `fence`, `cancel`) | (KCL 3: `LeaseAssignmentManager` metrics) |
//! | `kinesis_consumer_heartbeats` | counter | `application`, `worker`, `outcome` (`success`, `failure`, `fenced`) | (KCL 3: `WorkerMetricStatsReporter`) |
//! | `kinesis_consumer_checkpoints` | counter | `application`, `stream`, `shard`, `outcome` | Checkpoint / CheckpointerCheckpoint.Success |
//! | `kinesis_consumer_get_records` | counter | `application`, `stream`, `shard`, `outcome` | GetRecords.Success |
//! | `kinesis_consumer_get_records_time_seconds` | histogram, seconds | `application`, `stream`, `shard` | GetRecords.Time |
//! | `kinesis_consumer_subscribe_to_shard` | counter | `application`, `stream`, `shard`, `outcome` | SubscribeToShard.Success |
//! | `kinesis_consumer_subscribe_to_shard_time_seconds` | histogram, seconds until the subscription is open | `application`, `stream`, `shard` | SubscribeToShard.Time |
//!
//! A timed-out request counts as a `failure`. Handles are registered when a scheduler, a
//! shard consumer or a fetcher is made: install the recorder before building the scheduler.
//!
//! The diagnostic counters:
//!
//! | counter | labels |
//! |---|---|
//! | `kinesis_consumer_lease_items_malformed` | `application` (for a [`DynamoDbLeaseStore`](crate::leases::DynamoDbLeaseStore) made outside a scheduler: its table name) |
//! | `kinesis_consumer_leases_expired_locally` | `application`, `stream`, `shard` |
//! | `kinesis_consumer_record_processor_failures` | `application`, `stream`, `shard`, `reason` |
//! | `kinesis_consumer_checkpoint_trim_horizon_fallbacks` | `application`, `stream`, `shard` |
//! | `kinesis_consumer_aggregates_dropped` | `application`, `stream`, `shard` |
//! | `kinesis_consumer_shards_gone_from_stream` | `application`, `stream`, `shard` |
//! | `kinesis_consumer_subscription_stalls` | `application`, `stream`, `shard` |
//!
//! Failed batches and dead-lettering (no Java KCL equivalent):
//!
//! | counter | labels | counts |
//! |---|---|---|
//! | `kinesis_consumer_batch_failures` | `application`, `stream`, `shard`, `reason` (`error`, `panic`) | failed attempts of a batch (`process_records` returned an error, or panicked with a dead-letter policy) |
//! | `kinesis_consumer_records_dead_lettered` | `application`, `stream`, `shard` | user records handed to the dead-letter sink (after it took them) |
//! | `kinesis_consumer_dead_letter_batches` | `application`, `stream`, `shard`, `outcome` (`success`, `failure`) | calls of the dead-letter sink |
//!
//! They were CamelCase (`LeaseItemsMalformed`, ...) with a `ShardId` label before 0.2.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

const MILLIS_BEHIND_LATEST: &str = "kinesis_consumer_millis_behind_latest";
const RECORDS_PROCESSED: &str = "kinesis_consumer_records_processed";
const DATA_BYTES_PROCESSED: &str = "kinesis_consumer_data_bytes_processed";
const PROCESS_RECORDS_TIME: &str = "kinesis_consumer_process_records_time_seconds";
const CURRENT_LEASES: &str = "kinesis_consumer_current_leases";
const TAKEN_LEASES: &str = "kinesis_consumer_taken_leases";
const LOST_LEASES: &str = "kinesis_consumer_lost_leases";
const HANDOFFS_REQUESTED: &str = "kinesis_consumer_handoffs_requested";
const LEASES_HANDED_OVER: &str = "kinesis_consumer_leases_handed_over";
const LEASE_RENEWALS: &str = "kinesis_consumer_lease_renewals";
const LEADER: &str = "kinesis_consumer_leader";
const LEADER_WRITES: &str = "kinesis_consumer_leader_writes";
const HEARTBEATS: &str = "kinesis_consumer_heartbeats";
const CHECKPOINTS: &str = "kinesis_consumer_checkpoints";
const GET_RECORDS: &str = "kinesis_consumer_get_records";
const GET_RECORDS_TIME: &str = "kinesis_consumer_get_records_time_seconds";
const SUBSCRIBE_TO_SHARD: &str = "kinesis_consumer_subscribe_to_shard";
const SUBSCRIBE_TO_SHARD_TIME: &str = "kinesis_consumer_subscribe_to_shard_time_seconds";

// The diagnostic counters.
pub(crate) const LEASE_ITEMS_MALFORMED: &str = "kinesis_consumer_lease_items_malformed";
pub(crate) const LEASES_EXPIRED_LOCALLY: &str = "kinesis_consumer_leases_expired_locally";
pub(crate) const RECORD_PROCESSOR_FAILURES: &str = "kinesis_consumer_record_processor_failures";
pub(crate) const CHECKPOINT_TRIM_HORIZON_FALLBACKS: &str =
    "kinesis_consumer_checkpoint_trim_horizon_fallbacks";
pub(crate) const AGGREGATES_DROPPED: &str = "kinesis_consumer_aggregates_dropped";
pub(crate) const SHARDS_GONE_FROM_STREAM: &str = "kinesis_consumer_shards_gone_from_stream";
pub(crate) const SUBSCRIPTION_STALLS: &str = "kinesis_consumer_subscription_stalls";
const BATCH_FAILURES: &str = "kinesis_consumer_batch_failures";
const RECORDS_DEAD_LETTERED: &str = "kinesis_consumer_records_dead_lettered";
const DEAD_LETTER_BATCHES: &str = "kinesis_consumer_dead_letter_batches";

/// Describes every metric (name, unit, help text) to the installed recorder (each
/// scheduler does when it is built).
pub(crate) fn describe() {
    {
        describe_gauge!(
            MILLIS_BEHIND_LATEST,
            Unit::Milliseconds,
            "How far the last batch read from the shard is behind its newest record"
        );
        describe_counter!(
            RECORDS_PROCESSED,
            Unit::Count,
            "User records handed to the record processor"
        );
        describe_counter!(
            DATA_BYTES_PROCESSED,
            Unit::Bytes,
            "Data bytes of the user records handed to the record processor"
        );
        describe_histogram!(
            PROCESS_RECORDS_TIME,
            Unit::Seconds,
            "Time the record processor took for one batch"
        );
        describe_gauge!(CURRENT_LEASES, Unit::Count, "Leases this worker holds");
        describe_counter!(
            BATCH_FAILURES,
            Unit::Count,
            "Failed attempts of a batch (the record processor returned an error or panicked)"
        );
        describe_counter!(
            RECORDS_DEAD_LETTERED,
            Unit::Count,
            "User records handed to the dead-letter sink after their last attempt"
        );
        describe_counter!(
            DEAD_LETTER_BATCHES,
            Unit::Count,
            "Calls of the dead-letter sink, by outcome"
        );
        describe_counter!(TAKEN_LEASES, Unit::Count, "Leases this worker took");
        describe_counter!(
            LOST_LEASES,
            Unit::Count,
            "Leases this worker lost (taken by another worker, or past their local deadline)"
        );
        describe_counter!(
            HANDOFFS_REQUESTED,
            Unit::Count,
            "Graceful handoffs this worker asked another worker for"
        );
        describe_counter!(
            LEASES_HANDED_OVER,
            Unit::Count,
            "Leases this worker handed over to another worker after its processor finished"
        );
        describe_counter!(LEASE_RENEWALS, Unit::Count, "Lease renewals, by outcome");
        describe_gauge!(
            LEADER,
            Unit::Count,
            "1 while this worker leads the assignment of leases, else 0"
        );
        describe_counter!(
            LEADER_WRITES,
            Unit::Count,
            "The leader's writes that took effect, by kind (assign, move, steal, fence, cancel)"
        );
        describe_counter!(
            HEARTBEATS,
            Unit::Count,
            "This worker's heartbeats (its worker metrics row), by outcome (success, failure, fenced)"
        );
        describe_counter!(
            CHECKPOINTS,
            Unit::Count,
            "Checkpoint writes (commit, prepare, shard end), by outcome"
        );
        describe_counter!(GET_RECORDS, Unit::Count, "GetRecords calls, by outcome");
        describe_histogram!(
            GET_RECORDS_TIME,
            Unit::Seconds,
            "Duration of GetRecords calls"
        );
        describe_counter!(
            SUBSCRIBE_TO_SHARD,
            Unit::Count,
            "SubscribeToShard calls, by outcome"
        );
        describe_histogram!(
            SUBSCRIBE_TO_SHARD_TIME,
            Unit::Seconds,
            "Time until a SubscribeToShard subscription is open"
        );
    }
}

/// A counter per outcome (`success`, `failure`) of one operation, registered once.
#[derive(Clone)]
pub(crate) struct Outcomes {
    success: Counter,
    failure: Counter,
}

impl Outcomes {
    fn new(name: &'static str, labels: &[(&'static str, String)]) -> Self {
        let with = |outcome: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(("outcome", outcome.to_owned()));
            counter!(name, &labels)
        };
        Outcomes {
            success: with("success"),
            failure: with("failure"),
        }
    }

    /// Counts one call.
    pub(crate) fn record(&self, ok: bool) {
        if ok { &self.success } else { &self.failure }.increment(1);
    }
}

/// A gauge that several parts of one worker set: each part (a stream of a multi-stream
/// worker, with leases and a leader lock of its own) sets its own value, and the gauge
/// shows their sum, so that the parts do not overwrite one another's values.
#[derive(Debug)]
struct SummedGauge {
    gauge: Gauge,
    /// The last id given out, and each live part's value.
    parts: Mutex<(u64, BTreeMap<u64, f64>)>,
}

impl SummedGauge {
    fn new(gauge: Gauge) -> Arc<Self> {
        Arc::new(SummedGauge {
            gauge,
            parts: Mutex::default(),
        })
    }

    fn part(self: &Arc<Self>) -> GaugePart {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.0 += 1;
        let id = parts.0;
        parts.1.insert(id, 0.0);
        GaugePart {
            sum: self.clone(),
            id,
        }
    }

    /// Sets (`None`: removes) one part's value, and the gauge to the sum.
    fn set(&self, id: u64, value: Option<f64>) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        match value {
            Some(value) => parts.1.insert(id, value),
            None => parts.1.remove(&id),
        };
        self.gauge.set(parts.1.values().sum::<f64>());
    }
}

/// One part's share of a worker's gauge; dropped, it takes its value out of the sum.
#[derive(Debug)]
pub(crate) struct GaugePart {
    sum: Arc<SummedGauge>,
    id: u64,
}

impl GaugePart {
    /// Sets this part's value.
    pub(crate) fn set(&self, value: f64) {
        self.sum.set(self.id, Some(value));
    }
}

impl Drop for GaugePart {
    fn drop(&mut self) {
        self.sum.set(self.id, None);
    }
}

/// The labels of one worker's metrics (`application`, `worker`) and the gauges its parts
/// share. Made once by a scheduler when it is built, or once by a multi-stream scheduler
/// and shared by its streams. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct WorkerLabels(Arc<WorkerShared>);

#[derive(Debug)]
struct WorkerShared {
    labels: [(&'static str, String); 2],
    current_leases: Arc<SummedGauge>,
    leader: Arc<SummedGauge>,
}

impl WorkerLabels {
    /// The worker `worker` of the application `application`. Registers its gauges with
    /// the recorder installed now.
    pub(crate) fn new(application: &str, worker: &str) -> Self {
        let labels = [
            ("application", application.to_owned()),
            ("worker", worker.to_owned()),
        ];
        WorkerLabels(Arc::new(WorkerShared {
            current_leases: SummedGauge::new(gauge!(CURRENT_LEASES, &labels)),
            leader: SummedGauge::new(gauge!(LEADER, &labels)),
            labels,
        }))
    }

    fn labels(&self) -> &[(&'static str, String)] {
        &self.0.labels
    }

    fn with(&self, key: &'static str, value: &str) -> Vec<(&'static str, String)> {
        let mut labels = self.labels().to_vec();
        labels.push((key, value.to_owned()));
        labels
    }

    /// The application.
    pub(crate) fn application(&self) -> &str {
        &self.0.labels[0].1
    }

    /// The labels of the metrics of the worker's stream `stream` (its name).
    pub(crate) fn stream(&self, stream: &str) -> StreamLabels {
        StreamLabels {
            worker: self.clone(),
            stream: stream.to_owned(),
        }
    }
}

/// The labels of one scheduler's metrics: its worker's, and the stream its per-shard
/// metrics are labelled with. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct StreamLabels {
    worker: WorkerLabels,
    stream: String,
}

impl StreamLabels {
    /// The worker's labels (per-worker metrics carry no `stream`: a multi-stream worker's
    /// leases span its streams).
    pub(crate) fn worker(&self) -> &WorkerLabels {
        &self.worker
    }

    /// The labels of the metrics of one shard: `application`, `stream`, `shard`.
    pub(crate) fn shard(&self, shard: &str) -> ShardLabels {
        ShardLabels(Arc::from(vec![
            ("application", self.worker.application().to_owned()),
            ("stream", self.stream.clone()),
            ("shard", shard.to_owned()),
        ]))
    }
}

/// The labels of one shard's metrics (`application`, `stream`, `shard`). Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct ShardLabels(Arc<[(&'static str, String)]>);

impl ShardLabels {
    /// The counter `name` of this shard.
    pub(crate) fn counter(&self, name: &'static str) -> Counter {
        counter!(name, self.0.as_ref())
    }

    /// The counter `name` of this shard with one more label.
    pub(crate) fn counter_with(
        &self,
        name: &'static str,
        key: &'static str,
        value: &'static str,
    ) -> Counter {
        let mut labels = self.0.to_vec();
        labels.push((key, value.to_owned()));
        counter!(name, &labels)
    }
}

/// A worker's lease metrics (of one stream, for a multi-stream worker: the gauge sums
/// its streams').
pub(crate) struct LeaseMetrics {
    pub(crate) current: GaugePart,
    pub(crate) taken: Counter,
    pub(crate) lost: Counter,
    pub(crate) handoffs_requested: Counter,
    pub(crate) handed_over: Counter,
    pub(crate) renewals: Outcomes,
}

impl LeaseMetrics {
    pub(crate) fn new(worker: &WorkerLabels) -> Self {
        let labels = worker.labels();
        LeaseMetrics {
            current: worker.0.current_leases.part(),
            taken: counter!(TAKEN_LEASES, labels),
            lost: counter!(LOST_LEASES, labels),
            handoffs_requested: counter!(HANDOFFS_REQUESTED, labels),
            handed_over: counter!(LEASES_HANDED_OVER, labels),
            renewals: Outcomes::new(LEASE_RENEWALS, labels),
        }
    }
}

/// A worker's part in the leader-based coordination (for a multi-stream worker, in one
/// stream's: the `leader` gauge sums its streams', the number of streams it leads).
pub(crate) struct CoordinationMetrics {
    pub(crate) leader: GaugePart,
    worker: WorkerLabels,
}

impl CoordinationMetrics {
    pub(crate) fn new(worker: &WorkerLabels) -> Self {
        CoordinationMetrics {
            leader: worker.0.leader.part(),
            worker: worker.clone(),
        }
    }

    /// Counts leader writes of `kind` that took effect.
    pub(crate) fn leader_writes(&self, kind: &'static str, n: usize) {
        if n > 0 {
            counter!(LEADER_WRITES, &self.worker.with("kind", kind)).increment(n as u64);
        }
    }

    /// Counts one heartbeat by outcome.
    pub(crate) fn heartbeat(&self, outcome: &'static str) {
        counter!(HEARTBEATS, &self.worker.with("outcome", outcome)).increment(1);
    }
}

/// The checkpoint writes of one lease.
pub(crate) fn checkpoints(shard: &ShardLabels) -> Outcomes {
    Outcomes::new(CHECKPOINTS, &shard.0)
}

/// What one shard consumer hands to its record processor.
pub(crate) struct ShardMetrics {
    records: Counter,
    bytes: Counter,
    time: Histogram,
    millis_behind_latest: Gauge,
    /// KPL aggregates dropped for user records outside the shard's hash key range.
    pub(crate) aggregates_dropped: Counter,
    failed_with_error: Counter,
    failed_with_panic: Counter,
    dead_lettered: Counter,
    dead_letter_calls: Outcomes,
}

impl ShardMetrics {
    pub(crate) fn new(shard: &ShardLabels) -> Self {
        let labels = shard.0.as_ref();
        ShardMetrics {
            records: counter!(RECORDS_PROCESSED, labels),
            bytes: counter!(DATA_BYTES_PROCESSED, labels),
            time: histogram!(PROCESS_RECORDS_TIME, labels),
            millis_behind_latest: gauge!(MILLIS_BEHIND_LATEST, labels),
            aggregates_dropped: counter!(AGGREGATES_DROPPED, labels),
            failed_with_error: shard.counter_with(BATCH_FAILURES, "reason", "error"),
            failed_with_panic: shard.counter_with(BATCH_FAILURES, "reason", "panic"),
            dead_lettered: counter!(RECORDS_DEAD_LETTERED, labels),
            dead_letter_calls: Outcomes::new(DEAD_LETTER_BATCHES, labels),
        }
    }

    /// An attempt of a batch failed: `reason` is `panic` or `error`.
    pub(crate) fn batch_failed(&self, reason: &'static str) {
        match reason {
            "panic" => &self.failed_with_panic,
            _ => &self.failed_with_error,
        }
        .increment(1);
    }

    /// A call of the dead-letter sink.
    pub(crate) fn dead_letter_call(&self, ok: bool) {
        self.dead_letter_calls.record(ok);
    }

    /// Records the dead-letter sink took.
    pub(crate) fn dead_lettered(&self, records: u64) {
        self.dead_lettered.increment(records);
    }

    /// One batch handed to the record processor.
    pub(crate) fn batch_processed(
        &self,
        records: u64,
        bytes: u64,
        millis_behind_latest: Option<i64>,
        took: Duration,
    ) {
        self.records.increment(records);
        self.bytes.increment(bytes);
        self.time.record(took.as_secs_f64());
        if let Some(behind) = millis_behind_latest {
            self.millis_behind_latest.set(behind as f64);
        }
    }
}

/// The read requests (GetRecords or SubscribeToShard) of one shard.
pub(crate) struct ReadMetrics {
    outcomes: Outcomes,
    time: Histogram,
}

impl ReadMetrics {
    /// GetRecords calls.
    pub(crate) fn get_records(shard: &ShardLabels) -> Self {
        Self::new(GET_RECORDS, GET_RECORDS_TIME, shard)
    }

    /// SubscribeToShard calls.
    pub(crate) fn subscribe_to_shard(shard: &ShardLabels) -> Self {
        Self::new(SUBSCRIBE_TO_SHARD, SUBSCRIBE_TO_SHARD_TIME, shard)
    }

    fn new(count: &'static str, time: &'static str, shard: &ShardLabels) -> Self {
        ReadMetrics {
            outcomes: Outcomes::new(count, &shard.0),
            time: histogram!(time, shard.0.as_ref()),
        }
    }

    /// One request: `took` is its duration when it succeeded, `None` when it failed or
    /// timed out.
    pub(crate) fn record(&self, took: Option<Duration>) {
        self.outcomes.record(took.is_some());
        if let Some(took) = took {
            self.time.record(took.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::CountingRecorder;

    #[test]
    fn per_shard_metrics_carry_application_stream_and_shard() {
        let recorder = CountingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            let worker = WorkerLabels::new("app", "w1");
            for stream in ["orders", "clicks"] {
                let shard = worker.stream(stream).shard("shardId-000000000001");
                checkpoints(&shard).record(true);
                shard.counter(SHARDS_GONE_FROM_STREAM).increment(1);
                shard
                    .counter_with(RECORD_PROCESSOR_FAILURES, "reason", "panic")
                    .increment(1);
            }
            let other = WorkerLabels::new("other-app", "w1");
            checkpoints(&other.stream("orders").shard("shardId-000000000001")).record(true);
        });
        let checkpoints = |application: &str, stream: &str| {
            recorder.counter(
                CHECKPOINTS,
                &[
                    ("application", application),
                    ("stream", stream),
                    ("shard", "shardId-000000000001"),
                    ("outcome", "success"),
                ],
            )
        };
        assert_eq!(checkpoints("app", "orders"), 1);
        assert_eq!(checkpoints("app", "clicks"), 1);
        assert_eq!(checkpoints("other-app", "orders"), 1);
        assert_eq!(recorder.counter(CHECKPOINTS, &[("application", "app")]), 2);
        for name in [SHARDS_GONE_FROM_STREAM, RECORD_PROCESSOR_FAILURES] {
            assert_eq!(
                recorder.counter(name, &[("application", "app"), ("stream", "clicks")]),
                1,
                "{name}"
            );
        }
        assert_eq!(
            recorder.counter(RECORD_PROCESSOR_FAILURES, &[("reason", "panic")]),
            2
        );
    }

    #[test]
    fn per_worker_metrics_carry_application_and_worker() {
        let recorder = CountingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            for application in ["app", "other-app"] {
                let worker = WorkerLabels::new(application, "w1");
                LeaseMetrics::new(&worker).taken.increment(1);
                CoordinationMetrics::new(&worker).heartbeat("success");
            }
        });
        for application in ["app", "other-app"] {
            let labels = [("application", application), ("worker", "w1")];
            assert_eq!(recorder.counter(TAKEN_LEASES, &labels), 1);
            assert_eq!(recorder.counter(HEARTBEATS, &labels), 1);
        }
    }

    /// The streams of a multi-stream worker each set their share of its gauges: the gauge
    /// is the sum, and a stream that stops takes its share out.
    #[test]
    fn a_workers_gauges_sum_the_shares_of_its_streams() {
        let recorder = CountingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            let worker = WorkerLabels::new("app", "w1");
            let orders = LeaseMetrics::new(&worker);
            let clicks = LeaseMetrics::new(&worker);
            let held =
                || recorder.gauge(CURRENT_LEASES, &[("application", "app"), ("worker", "w1")]);
            orders.current.set(2.0);
            clicks.current.set(1.0);
            assert_eq!(held(), Some(3.0));
            orders.current.set(1.0);
            assert_eq!(held(), Some(2.0));
            drop(clicks);
            assert_eq!(held(), Some(1.0));
            let leader = CoordinationMetrics::new(&WorkerLabels::new("other-app", "w1"));
            leader.leader.set(1.0);
            assert_eq!(held(), Some(1.0), "another application's worker");
            assert_eq!(
                recorder.gauge(LEADER, &[("application", "other-app")]),
                Some(1.0)
            );
        });
    }
}
