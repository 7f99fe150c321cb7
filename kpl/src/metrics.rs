//! The KPL's summary metrics, through the `metrics` facade: install any recorder
//! (Prometheus, StatsD, CloudWatch...) to collect them; without one they cost next to
//! nothing.
//!
//! | metric | kind | KPL name |
//! |---|---|---|
//! | `kinesis_producer_user_records_put` | counter | UserRecordsPut |
//! | `kinesis_producer_kinesis_records_put` | counter | KinesisRecordsPut |
//! | `kinesis_producer_errors` (label `code`) | counter | ErrorsByCode, AllErrors |
//! | `kinesis_producer_user_records_expired` | counter | UserRecordExpired |
//! | `kinesis_producer_user_records_pending` | gauge | UserRecordsPending |
//! | `kinesis_producer_buffering_time_seconds` | histogram | BufferingTime |
//! | `kinesis_producer_retries_per_record` | histogram | RetriesPerRecord |
//! | `kinesis_producer_request_time_seconds` | histogram | RequestTime |
//! | `kinesis_producer_user_records_per_kinesis_record` | histogram | UserRecordsPerKinesisRecord |
//! | `kinesis_producer_kinesis_records_per_request` | histogram | KinesisRecordsPerPutRecordsRequest |
//!
//! Every metric carries a `stream` label.

use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// Metric handles, registered once per producer.
#[derive(Clone)]
pub(crate) struct Metrics {
    stream: String,
    user_records_put: Counter,
    kinesis_records_put: Counter,
    expired: Counter,
    pending: Gauge,
    buffering_time: Histogram,
    retries_per_record: Histogram,
    request_time: Histogram,
    user_records_per_kinesis_record: Histogram,
    kinesis_records_per_request: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("stream", &self.stream)
            .finish()
    }
}

impl Metrics {
    pub fn new(stream: &str) -> Self {
        let labels = [("stream", stream.to_owned())];
        Metrics {
            stream: stream.to_owned(),
            user_records_put: counter!("kinesis_producer_user_records_put", &labels),
            kinesis_records_put: counter!("kinesis_producer_kinesis_records_put", &labels),
            expired: counter!("kinesis_producer_user_records_expired", &labels),
            pending: gauge!("kinesis_producer_user_records_pending", &labels),
            buffering_time: histogram!("kinesis_producer_buffering_time_seconds", &labels),
            retries_per_record: histogram!("kinesis_producer_retries_per_record", &labels),
            request_time: histogram!("kinesis_producer_request_time_seconds", &labels),
            user_records_per_kinesis_record: histogram!(
                "kinesis_producer_user_records_per_kinesis_record",
                &labels
            ),
            kinesis_records_per_request: histogram!(
                "kinesis_producer_kinesis_records_per_request",
                &labels
            ),
        }
    }

    /// A user record reached the stream after `buffered` in buffers and `retries` retries.
    pub fn user_record_put(&self, buffered: Duration, retries: usize) {
        self.user_records_put.increment(1);
        self.buffering_time.record(buffered.as_secs_f64());
        self.retries_per_record.record(retries as f64);
    }

    /// A Kinesis record carrying `user_records` reached the stream.
    pub fn kinesis_record_put(&self, user_records: usize) {
        self.kinesis_records_put.increment(1);
        self.user_records_per_kinesis_record
            .record(user_records as f64);
    }

    /// A PutRecords call of `records` Kinesis records took `duration`.
    pub fn request(&self, records: usize, duration: Duration) {
        self.kinesis_records_per_request.record(records as f64);
        self.request_time.record(duration.as_secs_f64());
    }

    /// An attempt failed with `code` (for each Kinesis record, or once per call).
    pub fn error(&self, code: &str) {
        counter!("kinesis_producer_errors", "stream" => self.stream.clone(), "code" => code.to_owned())
            .increment(1);
    }

    /// `records` user records expired.
    pub fn expired(&self, records: usize) {
        self.expired.increment(records as u64);
    }

    /// User records accepted and not yet completed.
    pub fn pending(&self, records: usize) {
        self.pending.set(records as f64);
    }
}
