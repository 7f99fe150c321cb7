//! The consumer's metrics, through the `metrics` facade, named after the Java KCL's: install
//! any recorder (Prometheus, StatsD, CloudWatch...) to collect them; without one they cost
//! next to nothing. Every call site records per batch, per request or per lease, never per
//! record.
//!
//! | metric | kind, unit | labels | Java KCL name |
//! |---|---|---|---|
//! | `kinesis_consumer_millis_behind_latest` | gauge, milliseconds | `stream`, `shard` | MillisBehindLatest |
//! | `kinesis_consumer_records_processed` | counter | `stream`, `shard` | RecordsProcessed |
//! | `kinesis_consumer_data_bytes_processed` | counter, bytes (user record data) | `stream`, `shard` | DataBytesProcessed |
//! | `kinesis_consumer_process_records_time_seconds` | histogram, seconds | `stream`, `shard` | RecordProcessor.processRecords.Time |
//! | `kinesis_consumer_current_leases` | gauge | `worker` | CurrentLeases (LeasesHeld) |
//! | `kinesis_consumer_taken_leases` | counter | `worker` | TakenLeases |
//! | `kinesis_consumer_lost_leases` | counter | `worker` | LostLeases |
//! | `kinesis_consumer_handoffs_requested` | counter | `worker` | (KCL 3: graceful handoffs the leader initiated) |
//! | `kinesis_consumer_leases_handed_over` | counter | `worker` | (KCL 3: leases transferred after a graceful shutdown) |
//! | `kinesis_consumer_lease_renewals` | counter | `worker`, `outcome` (`success`, `failure`) | RenewLease.Success |
//! | `kinesis_consumer_leader` | gauge | `worker` | (KCL 3: `LeaderDecider` metrics) |
//! | `kinesis_consumer_leader_writes` | counter | `worker`, `kind` (`assign`, `move`, `steal`, `fence`, `cancel`) | (KCL 3: `LeaseAssignmentManager` metrics) |
//! | `kinesis_consumer_heartbeats` | counter | `worker`, `outcome` (`success`, `failure`, `fenced`) | (KCL 3: `WorkerMetricStatsReporter`) |
//! | `kinesis_consumer_checkpoints` | counter | `shard`, `outcome` | Checkpoint / CheckpointerCheckpoint.Success |
//! | `kinesis_consumer_get_records` | counter | `stream`, `shard`, `outcome` | GetRecords.Success |
//! | `kinesis_consumer_get_records_time_seconds` | histogram, seconds | `stream`, `shard` | GetRecords.Time |
//! | `kinesis_consumer_subscribe_to_shard` | counter | `stream`, `shard`, `outcome` | SubscribeToShard.Success |
//! | `kinesis_consumer_subscribe_to_shard_time_seconds` | histogram, seconds until the subscription is open | `stream`, `shard` | SubscribeToShard.Time |
//!
//! A timed-out request counts as a `failure`. Handles are registered when a scheduler, a
//! shard consumer or a fetcher is made: install the recorder before building the scheduler.
//! The diagnostic counters (`kinesis_consumer_lease_items_malformed`,
//! `kinesis_consumer_leases_expired_locally`, `kinesis_consumer_record_processor_failures`,
//! `kinesis_consumer_checkpoint_trim_horizon_fallbacks`, `kinesis_consumer_aggregates_dropped`,
//! `kinesis_consumer_shards_gone_from_stream`, `kinesis_consumer_subscription_stalls`; label
//! `shard`, and `reason` for failures) were CamelCase (`LeaseItemsMalformed`, ...) with a
//! `ShardId` label before 0.2.

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

/// A worker's lease metrics.
pub(crate) struct LeaseMetrics {
    pub(crate) current: Gauge,
    pub(crate) taken: Counter,
    pub(crate) lost: Counter,
    pub(crate) handoffs_requested: Counter,
    pub(crate) handed_over: Counter,
    pub(crate) renewals: Outcomes,
}

impl LeaseMetrics {
    pub(crate) fn new(worker: &str) -> Self {
        let labels = [("worker", worker.to_owned())];
        LeaseMetrics {
            current: gauge!(CURRENT_LEASES, &labels),
            taken: counter!(TAKEN_LEASES, &labels),
            lost: counter!(LOST_LEASES, &labels),
            handoffs_requested: counter!(HANDOFFS_REQUESTED, &labels),
            handed_over: counter!(LEASES_HANDED_OVER, &labels),
            renewals: Outcomes::new(LEASE_RENEWALS, &labels),
        }
    }
}

/// A worker's part in the leader-based coordination.
pub(crate) struct CoordinationMetrics {
    pub(crate) leader: Gauge,
    worker: String,
}

impl CoordinationMetrics {
    pub(crate) fn new(worker: &str) -> Self {
        CoordinationMetrics {
            leader: gauge!(LEADER, "worker" => worker.to_owned()),
            worker: worker.to_owned(),
        }
    }

    /// Counts leader writes of `kind` that took effect.
    pub(crate) fn leader_writes(&self, kind: &'static str, n: usize) {
        if n > 0 {
            counter!(LEADER_WRITES, "worker" => self.worker.clone(), "kind" => kind)
                .increment(n as u64);
        }
    }

    /// Counts one heartbeat by outcome.
    pub(crate) fn heartbeat(&self, outcome: &'static str) {
        counter!(HEARTBEATS, "worker" => self.worker.clone(), "outcome" => outcome).increment(1);
    }
}

/// The checkpoint writes of one lease: labelled `shard`, and `stream` as well for a
/// multi-stream lease (key `account:stream:creationEpoch:shardId`), whose shard ids
/// repeat from one stream to the next.
pub(crate) fn checkpoints(lease_key: &str) -> Outcomes {
    Outcomes::new(CHECKPOINTS, &checkpoint_labels(lease_key))
}

fn checkpoint_labels(lease_key: &str) -> Vec<(&'static str, String)> {
    let parts: Vec<&str> = lease_key.split(':').collect();
    match parts.as_slice() {
        [_account, stream, _epoch, shard] => vec![
            ("stream", (*stream).to_owned()),
            ("shard", (*shard).to_owned()),
        ],
        _ => vec![("shard", lease_key.to_owned())],
    }
}

fn shard_labels(stream: &str, shard: &str) -> [(&'static str, String); 2] {
    [("stream", stream.to_owned()), ("shard", shard.to_owned())]
}

/// What one shard consumer hands to its record processor.
pub(crate) struct ShardMetrics {
    records: Counter,
    bytes: Counter,
    time: Histogram,
    millis_behind_latest: Gauge,
}

impl ShardMetrics {
    pub(crate) fn new(stream: &str, shard: &str) -> Self {
        let labels = shard_labels(stream, shard);
        ShardMetrics {
            records: counter!(RECORDS_PROCESSED, &labels),
            bytes: counter!(DATA_BYTES_PROCESSED, &labels),
            time: histogram!(PROCESS_RECORDS_TIME, &labels),
            millis_behind_latest: gauge!(MILLIS_BEHIND_LATEST, &labels),
        }
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
    pub(crate) fn get_records(stream: &str, shard: &str) -> Self {
        Self::new(GET_RECORDS, GET_RECORDS_TIME, stream, shard)
    }

    /// SubscribeToShard calls.
    pub(crate) fn subscribe_to_shard(stream: &str, shard: &str) -> Self {
        Self::new(SUBSCRIBE_TO_SHARD, SUBSCRIBE_TO_SHARD_TIME, stream, shard)
    }

    fn new(count: &'static str, time: &'static str, stream: &str, shard: &str) -> Self {
        let labels = shard_labels(stream, shard);
        ReadMetrics {
            outcomes: Outcomes::new(count, &labels),
            time: histogram!(time, &labels),
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
mod checkpoint_label_tests {
    use super::*;

    #[test]
    fn multi_stream_leases_are_labelled_with_their_stream() {
        assert_eq!(
            checkpoint_labels("123456789012:orders:1700000000:shardId-000000000001"),
            vec![
                ("stream", "orders".to_owned()),
                ("shard", "shardId-000000000001".to_owned())
            ]
        );
        assert_eq!(
            checkpoint_labels("shardId-000000000001"),
            vec![("shard", "shardId-000000000001".to_owned())]
        );
    }
}
