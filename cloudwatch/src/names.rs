//! The KPL's and the KCL's CloudWatch names, units, levels and dimensions of this
//! project's metrics.

use crate::{Kind, MetricsLevel};

/// How one of the libraries' metrics is published.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Mapping {
    /// The CloudWatch metric name (the KPL's or the KCL's).
    pub name: &'static str,
    /// The CloudWatch unit (`Count`, `Bytes`, `Milliseconds`).
    pub unit: &'static str,
    /// What each recorded value is multiplied by (seconds to milliseconds: 1,000).
    pub scale: f64,
    /// The least level that publishes it.
    pub level: MetricsLevel,
    /// The KCL's `Operation` dimension, for the consumer's metrics.
    pub operation: Option<&'static str>,
    /// A `.Success` metric: the `outcome` label's calls become samples of 1 (success)
    /// and 0 (failure), so its average is the success rate, as the KCL publishes it.
    pub success: bool,
    pub(crate) kind: Kind,
}

const fn map(name: &'static str, unit: &'static str, level: MetricsLevel, kind: Kind) -> Mapping {
    Mapping {
        name,
        unit,
        scale: 1.0,
        level,
        operation: None,
        success: false,
        kind,
    }
}

const fn millis(mut mapping: Mapping) -> Mapping {
    mapping.unit = "Milliseconds";
    mapping.scale = 1_000.0;
    mapping
}

const fn operation(mut mapping: Mapping, operation: &'static str) -> Mapping {
    mapping.operation = Some(operation);
    mapping
}

const fn success(mut mapping: Mapping) -> Mapping {
    mapping.success = true;
    mapping
}

use Kind::{Counter, Gauge, Histogram};
use MetricsLevel::{Detailed, Summary};

/// Every published metric: the library's name, then how CloudWatch gets it.
const TABLE: &[(&str, Mapping)] = &[
    // The KPL's (namespace KinesisProducerLibrary).
    (
        "kinesis_producer_user_records_received",
        map("UserRecordsReceived", "Count", Detailed, Counter),
    ),
    (
        "kinesis_producer_user_records_pending",
        map("UserRecordsPending", "Count", Detailed, Gauge),
    ),
    (
        "kinesis_producer_user_records_put",
        map("UserRecordsPut", "Count", Summary, Counter),
    ),
    (
        "kinesis_producer_user_records_data_put_bytes",
        map("UserRecordsDataPut", "Bytes", Detailed, Counter),
    ),
    (
        "kinesis_producer_kinesis_records_put",
        map("KinesisRecordsPut", "Count", Summary, Counter),
    ),
    (
        "kinesis_producer_kinesis_records_data_put_bytes",
        map("KinesisRecordsDataPut", "Bytes", Detailed, Counter),
    ),
    (
        "kinesis_producer_errors",
        map("ErrorsByCode", "Count", Summary, Counter),
    ),
    (
        "kinesis_producer_all_errors",
        map("AllErrors", "Count", Summary, Counter),
    ),
    (
        "kinesis_producer_retries_per_record",
        map("RetriesPerRecord", "Count", Detailed, Histogram),
    ),
    (
        "kinesis_producer_user_records_expired",
        map("UserRecordExpired", "Count", Summary, Counter),
    ),
    (
        "kinesis_producer_buffering_time_seconds",
        millis(map("BufferingTime", "", Summary, Histogram)),
    ),
    (
        "kinesis_producer_request_time_seconds",
        millis(map("RequestTime", "", Detailed, Histogram)),
    ),
    (
        "kinesis_producer_user_records_per_kinesis_record",
        map("UserRecordsPerKinesisRecord", "Count", Detailed, Histogram),
    ),
    (
        "kinesis_producer_kinesis_records_per_request",
        map(
            "KinesisRecordsPerPutRecordsRequest",
            "Count",
            Detailed,
            Histogram,
        ),
    ),
    // The KCL's (namespace: the application's name).
    (
        "kinesis_consumer_millis_behind_latest",
        operation(
            map("MillisBehindLatest", "Milliseconds", Summary, Gauge),
            "ProcessTask",
        ),
    ),
    (
        "kinesis_consumer_records_processed",
        operation(
            map("RecordsProcessed", "Count", Summary, Counter),
            "ProcessTask",
        ),
    ),
    (
        "kinesis_consumer_data_bytes_processed",
        operation(
            map("DataBytesProcessed", "Bytes", Summary, Counter),
            "ProcessTask",
        ),
    ),
    (
        "kinesis_consumer_process_records_time_seconds",
        operation(
            millis(map(
                "RecordProcessor.processRecords.Time",
                "",
                Detailed,
                Histogram,
            )),
            "ProcessTask",
        ),
    ),
    (
        "kinesis_consumer_get_records",
        operation(
            success(map("GetRecords.Success", "Count", Detailed, Counter)),
            "ProcessTask",
        ),
    ),
    (
        "kinesis_consumer_get_records_time_seconds",
        operation(
            millis(map("GetRecords.Time", "", Detailed, Histogram)),
            "ProcessTask",
        ),
    ),
    (
        "kinesis_consumer_subscribe_to_shard",
        operation(
            success(map("SubscribeToShard.Success", "Count", Detailed, Counter)),
            "ProcessTask",
        ),
    ),
    (
        "kinesis_consumer_subscribe_to_shard_time_seconds",
        operation(
            millis(map("SubscribeToShard.Time", "", Detailed, Histogram)),
            "ProcessTask",
        ),
    ),
    (
        "kinesis_consumer_current_leases",
        operation(
            map("CurrentLeases", "Count", Summary, Gauge),
            "RenewAllLeases",
        ),
    ),
    (
        "kinesis_consumer_lease_renewals",
        operation(
            success(map("RenewLease.Success", "Count", Detailed, Counter)),
            "RenewAllLeases",
        ),
    ),
    (
        "kinesis_consumer_lost_leases",
        operation(
            map("LostLeases", "Count", Summary, Counter),
            "RenewAllLeases",
        ),
    ),
    (
        "kinesis_consumer_taken_leases",
        operation(map("TakenLeases", "Count", Summary, Counter), "TakeLeases"),
    ),
    (
        "kinesis_consumer_checkpoints",
        operation(
            success(map("UpdateLease.Success", "Count", Detailed, Counter)),
            "Checkpoint",
        ),
    ),
];

/// How the metric `name` of the producer or the consumer is published; `None` for the
/// metrics CloudWatch does not get (this library's own diagnostics).
pub fn mapping(name: &str) -> Option<Mapping> {
    TABLE
        .iter()
        .find(|(ours, _)| *ours == name)
        .map(|(_, mapping)| *mapping)
}

/// The CloudWatch dimension of a label. The consumer's `application` label has none: the
/// KCL has no such dimension, it publishes each application's metrics under a namespace
/// named after it ([`CloudWatchConfig::consumer`](crate::CloudWatchConfig::consumer)).
pub(crate) fn dimension(label: &str) -> Option<&'static str> {
    match label {
        "stream" => Some("StreamName"),
        "shard" => Some("ShardId"),
        "code" => Some("ErrorCode"),
        "worker" => Some("WorkerIdentifier"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_mapped_once_with_a_unit() {
        for (i, (ours, mapping)) in TABLE.iter().enumerate() {
            assert!(!mapping.unit.is_empty(), "{ours}");
            assert!(
                TABLE[i + 1..].iter().all(|(other, _)| other != ours),
                "{ours} twice"
            );
        }
        let time = mapping("kinesis_producer_request_time_seconds").unwrap();
        assert_eq!(
            (time.name, time.unit, time.scale),
            ("RequestTime", "Milliseconds", 1_000.0)
        );
        assert!(mapping("kinesis_consumer_lease_items_malformed").is_none());
    }

    #[test]
    fn the_consumers_labels_map_to_the_kcls_dimensions() {
        assert_eq!(dimension("stream"), Some("StreamName"));
        assert_eq!(dimension("shard"), Some("ShardId"));
        assert_eq!(dimension("worker"), Some("WorkerIdentifier"));
        assert_eq!(dimension("application"), None, "the namespace names it");
        assert_eq!(dimension("outcome"), None);
    }
}
