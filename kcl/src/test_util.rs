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

/// A [`metrics::Recorder`] that keeps counters and gauges in memory, for asserting that a
/// metric was emitted. Histograms are ignored.
///
/// Install it for one thread with [`metrics::with_local_recorder`] (with a current-thread
/// runtime) or process-wide with [`metrics::set_global_recorder`].
#[derive(Clone, Debug, Default)]
pub struct CountingRecorder {
    counters: Arc<Mutex<HashMap<metrics::Key, Arc<AtomicU64>>>>,
    gauges: Arc<Mutex<HashMap<metrics::Key, GaugeValue>>>,
}

/// A gauge's value, `None` until it is first changed.
type GaugeValue = Arc<Mutex<Option<f64>>>;

struct SharedCounter(Arc<AtomicU64>);

impl metrics::CounterFn for SharedCounter {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

struct SharedGauge(GaugeValue);

impl SharedGauge {
    fn update(&self, change: impl FnOnce(f64) -> f64) {
        let mut value = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *value = Some(change(value.unwrap_or(0.0)));
    }
}

impl metrics::GaugeFn for SharedGauge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

/// The value kept for `key`, made at its first registration.
fn value_of<T: Default>(
    values: &Mutex<HashMap<metrics::Key, Arc<T>>>,
    key: &metrics::Key,
) -> Arc<T> {
    values
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.clone())
        .or_default()
        .clone()
}

/// Whether `key` is named `name` and has every one of `labels`.
fn matches(key: &metrics::Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels.iter().all(|(k, v)| {
            key.labels()
                .any(|label| label.key() == *k && label.value() == *v)
        })
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
            .filter(|(key, _)| matches(key, name, labels))
            .map(|(_, value)| value.load(Ordering::SeqCst))
            .sum()
    }

    /// The sum of the values of the gauge `name` over every label set whose labels include
    /// all of `labels`; `None` when none of them was ever set.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(key, _)| matches(key, name, labels))
            .filter_map(|(_, value)| *value.lock().unwrap_or_else(|e| e.into_inner()))
            .reduce(|sum, value| sum + value)
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
        let value = value_of(&self.counters, key);
        metrics::Counter::from_arc(Arc::new(SharedCounter(value)))
    }

    fn register_gauge(
        &self,
        key: &metrics::Key,
        _metadata: &metrics::Metadata<'_>,
    ) -> metrics::Gauge {
        let value = value_of(&self.gauges, key);
        metrics::Gauge::from_arc(Arc::new(SharedGauge(value)))
    }

    fn register_histogram(
        &self,
        _key: &metrics::Key,
        _metadata: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
