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
//! | `kinesis_consumer_lease_renewals` | counter | `worker`, `outcome` (`success`, `failure`) | RenewLease.Success |
//! | `kinesis_consumer_checkpoints` | counter | `shard`, `outcome` | Checkpoint / CheckpointerCheckpoint.Success |
//! | `kinesis_consumer_get_records` | counter | `stream`, `shard`, `outcome` | GetRecords.Success |
//! | `kinesis_consumer_get_records_time_seconds` | histogram, seconds | `stream`, `shard` | GetRecords.Time |
//! | `kinesis_consumer_subscribe_to_shard` | counter | `stream`, `shard`, `outcome` | SubscribeToShard.Success |
//! | `kinesis_consumer_subscribe_to_shard_time_seconds` | histogram, seconds until the subscription is open | `stream`, `shard` | SubscribeToShard.Time |
//!
//! A timed-out request counts as a `failure`. The diagnostic counters of earlier versions
//! (`LeaseItemsMalformed`, `LeasesExpiredLocally`, `RecordProcessorFailures`,
//! `CheckpointTrimHorizonFallbacks`, `AggregatesDropped`, `ShardsGoneFromStream`,
//! `SubscriptionStalls`) are unchanged.

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

pub(crate) const MILLIS_BEHIND_LATEST: &str = "kinesis_consumer_millis_behind_latest";
pub(crate) const RECORDS_PROCESSED: &str = "kinesis_consumer_records_processed";
pub(crate) const DATA_BYTES_PROCESSED: &str = "kinesis_consumer_data_bytes_processed";
pub(crate) const PROCESS_RECORDS_TIME: &str = "kinesis_consumer_process_records_time_seconds";
pub(crate) const CURRENT_LEASES: &str = "kinesis_consumer_current_leases";
pub(crate) const TAKEN_LEASES: &str = "kinesis_consumer_taken_leases";
pub(crate) const LOST_LEASES: &str = "kinesis_consumer_lost_leases";
pub(crate) const LEASE_RENEWALS: &str = "kinesis_consumer_lease_renewals";
pub(crate) const CHECKPOINTS: &str = "kinesis_consumer_checkpoints";
pub(crate) const GET_RECORDS: &str = "kinesis_consumer_get_records";
pub(crate) const GET_RECORDS_TIME: &str = "kinesis_consumer_get_records_time_seconds";
pub(crate) const SUBSCRIBE_TO_SHARD: &str = "kinesis_consumer_subscribe_to_shard";
pub(crate) const SUBSCRIBE_TO_SHARD_TIME: &str = "kinesis_consumer_subscribe_to_shard_time_seconds";

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
        describe_counter!(LEASE_RENEWALS, Unit::Count, "Lease renewals, by outcome");
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

/// `success` or `failure`.
pub(crate) fn outcome(ok: bool) -> &'static str {
    if ok {
        "success"
    } else {
        "failure"
    }
}

/// One batch handed to the record processor.
pub(crate) fn batch_processed(
    stream: &str,
    shard: &str,
    records: u64,
    bytes: u64,
    millis_behind_latest: Option<i64>,
    took: Duration,
) {
    let labels = [("stream", stream.to_owned()), ("shard", shard.to_owned())];
    counter!(RECORDS_PROCESSED, &labels).increment(records);
    counter!(DATA_BYTES_PROCESSED, &labels).increment(bytes);
    histogram!(PROCESS_RECORDS_TIME, &labels).record(took.as_secs_f64());
    if let Some(behind) = millis_behind_latest {
        gauge!(MILLIS_BEHIND_LATEST, &labels).set(behind as f64);
    }
}

/// One read request (GetRecords or SubscribeToShard): its outcome and, when it succeeded,
/// its duration.
pub(crate) fn read_request(
    count: &'static str,
    time: &'static str,
    stream: &str,
    shard: &str,
    took: Option<Duration>,
) {
    counter!(
        count,
        "stream" => stream.to_owned(),
        "shard" => shard.to_owned(),
        "outcome" => outcome(took.is_some())
    )
    .increment(1);
    if let Some(took) = took {
        histogram!(time, "stream" => stream.to_owned(), "shard" => shard.to_owned())
            .record(took.as_secs_f64());
    }
}
