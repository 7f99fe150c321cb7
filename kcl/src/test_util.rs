//! Test support (feature `test-util`): fault-injecting wrappers of the lease store and of
//! the coordinator tables, simulated workers running the real lease layer ([`fleet`]),
//! and a metrics recorder that counts.
//!
//! [`FaultyLeaseStore`] wraps any lease store (the real DynamoDB one in integration tests,
//! the in-memory one in unit tests) and, per operation, for a fraction of the calls, for a
//! number of calls or for a time window, delays a call, hangs it, applies it and loses the
//! answer, or answers with throttling or a server error, without reaching the table.
//! [`FaultyCoordinatorStore`] does the same for the leader lock and the worker rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Orders two Kinesis sequence numbers (decimal strings of up to 128 bits).
pub use crate::lease::compare_sequence_numbers;
/// The coordinator tables' item codecs.
pub use crate::leases::coordination::dynamodb::{lock_to_item, worker_to_item};
/// The lease item (de)serializers of the DynamoDB store and its attribute names, for
/// fuzzing and for tests that write items by hand.
pub use crate::leases::dynamodb::codec::{attributes, lease_from_item, lease_to_item};

mod faults;
pub mod fleet;

pub use faults::{
    CoordinatorOperation, Fault, FaultRule, FaultyCoordinatorStore, FaultyLeaseStore, Operation,
    StoreOperation,
};

/// A [`metrics::Recorder`] that keeps counters in memory, for asserting that a metric was
/// emitted. Gauges and histograms are ignored.
///
/// Install it for one thread with [`metrics::with_local_recorder`] (with a current-thread
/// runtime) or process-wide with [`metrics::set_global_recorder`].
#[derive(Clone, Debug, Default)]
pub struct CountingRecorder {
    counters: Arc<Mutex<HashMap<metrics::Key, Arc<AtomicU64>>>>,
}

struct SharedCounter(Arc<AtomicU64>);

impl metrics::CounterFn for SharedCounter {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

impl CountingRecorder {
    /// A recorder with no counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sum of the counter `name` over every label set whose labels include all of
    /// `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(key, _)| {
                key.name() == name
                    && labels.iter().all(|(k, v)| {
                        key.labels()
                            .any(|label| label.key() == *k && label.value() == *v)
                    })
            })
            .map(|(_, value)| value.load(Ordering::SeqCst))
            .sum()
    }
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(
        &self,
        _key: metrics::KeyName,
        _unit: Option<metrics::Unit>,
        _description: metrics::SharedString,
    ) {
    }

    fn describe_gauge(
        &self,
        _key: metrics::KeyName,
        _unit: Option<metrics::Unit>,
        _description: metrics::SharedString,
    ) {
    }

    fn describe_histogram(
        &self,
        _key: metrics::KeyName,
        _unit: Option<metrics::Unit>,
        _description: metrics::SharedString,
    ) {
    }

    fn register_counter(
        &self,
        key: &metrics::Key,
        _metadata: &metrics::Metadata<'_>,
    ) -> metrics::Counter {
        let value = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        metrics::Counter::from_arc(Arc::new(SharedCounter(value)))
    }

    fn register_gauge(
        &self,
        _key: &metrics::Key,
        _metadata: &metrics::Metadata<'_>,
    ) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _key: &metrics::Key,
        _metadata: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
