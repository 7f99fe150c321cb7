//! Test support (feature `test-util`): a fault-injecting [`LeaseStore`] wrapper and a
//! metrics recorder that counts.
//!
//! [`FaultyLeaseStore`] wraps any lease store (the real DynamoDB one in integration tests,
//! the in-memory one in unit tests) and, per operation, for a fraction of the calls, for a
//! number of calls or for a time window, delays a call, hangs it, applies it and loses the
//! answer, or answers with throttling or a server error, without reaching the table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::error::{ErrorKind, ServiceError};
use crate::lease::Lease;
use crate::leases::{CheckpointUpdate, LeaseStore, LeaseStoreError};

/// Orders two Kinesis sequence numbers (decimal strings of up to 128 bits).
pub use crate::lease::compare_sequence_numbers;
/// The lease item (de)serializers of the DynamoDB store and its attribute names, for
/// fuzzing and for tests that write items by hand.
pub use crate::leases::dynamodb::codec::{attributes, lease_from_item, lease_to_item};

/// One [`LeaseStore`] operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `create_table_if_missing`.
    CreateTable,
    /// `list_leases` (a table scan).
    ListLeases,
    /// `get_lease`.
    GetLease,
    /// `create_lease_if_absent`.
    CreateLease,
    /// `renew_lease`.
    RenewLease,
    /// `take_lease`.
    TakeLease,
    /// `evict_lease`.
    EvictLease,
    /// `update_checkpoint`.
    UpdateCheckpoint,
    /// `update_child_shards`.
    UpdateChildShards,
    /// `delete_lease`.
    DeleteLease,
    /// `list_lease_keys_owned_by`.
    ListOwnedKeys,
    /// `request_handoff`.
    RequestHandoff,
    /// `hand_over`.
    HandOver,
    /// `accept_handoff`.
    AcceptHandoff,
    /// `cancel_handoff`.
    CancelHandoff,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 15] = [
        Operation::CreateTable,
        Operation::ListLeases,
        Operation::GetLease,
        Operation::CreateLease,
        Operation::RenewLease,
        Operation::TakeLease,
        Operation::EvictLease,
        Operation::UpdateCheckpoint,
        Operation::UpdateChildShards,
        Operation::DeleteLease,
        Operation::ListOwnedKeys,
        Operation::RequestHandoff,
        Operation::HandOver,
        Operation::AcceptHandoff,
        Operation::CancelHandoff,
    ];

    /// The operation's name, as errors name the failed call.
    pub fn name(self) -> &'static str {
        match self {
            Operation::CreateTable => "create_table_if_missing",
            Operation::ListLeases => "list_leases",
            Operation::GetLease => "get_lease",
            Operation::CreateLease => "create_lease_if_absent",
            Operation::RenewLease => "renew_lease",
            Operation::TakeLease => "take_lease",
            Operation::EvictLease => "evict_lease",
            Operation::UpdateCheckpoint => "update_checkpoint",
            Operation::UpdateChildShards => "update_child_shards",
            Operation::DeleteLease => "delete_lease",
            Operation::ListOwnedKeys => "list_lease_keys_owned_by",
            Operation::RequestHandoff => "request_handoff",
            Operation::HandOver => "hand_over",
            Operation::AcceptHandoff => "accept_handoff",
            Operation::CancelHandoff => "cancel_handoff",
        }
    }

    /// Whether the operation changes the table.
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            Operation::CreateTable
                | Operation::ListLeases
                | Operation::GetLease
                | Operation::ListOwnedKeys
        )
    }
}

/// What an injected fault does to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Waits this long, then makes the call.
    Delay(Duration),
    /// Never answers (the caller's timeout, if any, is what ends it).
    Hang,
    /// Makes the call, then loses the answer: the caller gets a timed-out
    /// [`LeaseStoreError::Service`] although the write was applied.
    LoseAnswer,
    /// Makes the call, loses the answer and sends the same request again, as an SDK's
    /// retry does; the caller gets the second answer (for a conditional write: the
    /// condition failed, because the first attempt changed the lease).
    LoseAnswerThenRetry,
    /// Answers [`LeaseStoreError::Throttled`] without making the call.
    Throttle,
    /// Answers [`LeaseStoreError::Service`] (a 5xx) without making the call.
    ServerError,
}

/// When a fault applies.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// The operations it applies to.
    pub operations: BTreeSet<Operation>,
    /// The fault.
    pub fault: Fault,
    /// The fraction of matching calls it hits (1.0: every one).
    pub probability: f64,
    /// At most this many calls (`None`: no limit).
    pub remaining: Option<u64>,
    /// Only from this time on.
    pub from: Option<Instant>,
    /// Only before this time.
    pub until: Option<Instant>,
}

impl FaultRule {
    /// `fault` on every call of `operations`.
    pub fn new(operations: impl IntoIterator<Item = Operation>, fault: Fault) -> Self {
        FaultRule {
            operations: operations.into_iter().collect(),
            fault,
            probability: 1.0,
            remaining: None,
            from: None,
            until: None,
        }
    }

    /// `fault` on every call of every operation.
    pub fn all(fault: Fault) -> Self {
        Self::new(Operation::ALL, fault)
    }

    /// Only a fraction of the matching calls.
    pub fn probability(mut self, probability: f64) -> Self {
        self.probability = probability.clamp(0.0, 1.0);
        self
    }

    /// Only the next `n` matching calls.
    pub fn times(mut self, n: u64) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Only during `[from, until)`.
    pub fn window(mut self, from: Instant, until: Instant) -> Self {
        self.from = Some(from);
        self.until = Some(until);
        self
    }
}

#[derive(Debug)]
struct Rules {
    rules: Vec<FaultRule>,
    rng: StdRng,
}

/// A [`LeaseStore`] that injects [`Fault`]s into calls of the store it wraps and counts
/// calls per operation.
pub struct FaultyLeaseStore {
    inner: Arc<dyn LeaseStore>,
    rules: Mutex<Rules>,
    calls: Mutex<BTreeMap<Operation, u64>>,
    injected: AtomicU64,
}

impl std::fmt::Debug for FaultyLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyLeaseStore")
            .field("rules", &self.lock_rules().rules)
            .finish_non_exhaustive()
    }
}

impl FaultyLeaseStore {
    /// Wraps `inner`; no fault until one is injected.
    pub fn new(inner: Arc<dyn LeaseStore>) -> Self {
        FaultyLeaseStore {
            inner,
            rules: Mutex::new(Rules {
                rules: Vec::new(),
                rng: StdRng::seed_from_u64(7),
            }),
            calls: Mutex::new(BTreeMap::new()),
            injected: AtomicU64::new(0),
        }
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a rule; the first matching rule decides a call's fault.
    pub fn inject(&self, rule: FaultRule) {
        self.lock_rules().rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock_rules().rules.clear();
    }

    /// Seeds the generator that decides probabilistic faults.
    pub fn seed(&self, seed: u64) {
        self.lock_rules().rng = StdRng::seed_from_u64(seed);
    }

    /// Calls per operation so far (faulted or not).
    pub fn calls(&self) -> BTreeMap<Operation, u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many calls a fault hit so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn fault_for(&self, operation: Operation) -> Option<Fault> {
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(operation)
            .or_default() += 1;
        let now = Instant::now();
        let mut rules = self.lock_rules();
        let Rules { rules, rng } = &mut *rules;
        for rule in rules.iter_mut() {
            let in_window = rule.from.is_none_or(|from| now >= from)
                && rule.until.is_none_or(|until| now < until);
            if !rule.operations.contains(&operation)
                || !in_window
                || rule.remaining == Some(0)
                || !rng.random_bool(rule.probability)
            {
                continue;
            }
            if let Some(n) = &mut rule.remaining {
                *n -= 1;
            }
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Some(rule.fault);
        }
        None
    }

    async fn call<T, F, Fut>(&self, operation: Operation, call: F) -> Result<T, LeaseStoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, LeaseStoreError>>,
    {
        match self.fault_for(operation) {
            None => call().await,
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                call().await
            }
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::LoseAnswer) => {
                let _ = call().await;
                Err(LeaseStoreError::Service(ServiceError::new(
                    operation.name(),
                    ErrorKind::TimedOut,
                    "injected: the answer was lost",
                )))
            }
            Some(Fault::LoseAnswerThenRetry) => {
                let _ = call().await;
                call().await
            }
            Some(Fault::Throttle) => Err(LeaseStoreError::Throttled(
                ServiceError::new(operation.name(), ErrorKind::Throttled, "injected")
                    .with_code("ProvisionedThroughputExceededException"),
            )),
            Some(Fault::ServerError) => Err(LeaseStoreError::Service(
                ServiceError::new(operation.name(), ErrorKind::Other, "injected: HTTP 500")
                    .with_code("InternalServerError"),
            )),
        }
    }
}

#[async_trait]
impl LeaseStore for FaultyLeaseStore {
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError> {
        self.call(Operation::CreateTable, || {
            self.inner.create_table_if_missing()
        })
        .await
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.call(Operation::ListLeases, || self.inner.list_leases())
            .await
    }

    async fn list_leases_eventually_consistent(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.call(Operation::ListLeases, || {
            self.inner.list_leases_eventually_consistent()
        })
        .await
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        self.call(Operation::GetLease, || self.inner.get_lease(lease_key))
            .await
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        self.call(Operation::CreateLease, || {
            self.inner.create_lease_if_absent(lease)
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::RenewLease, || self.inner.renew_lease(lease))
            .await
    }

    async fn take_lease(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::TakeLease, || self.inner.take_lease(lease, owner))
            .await
    }

    async fn evict_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::EvictLease, || self.inner.evict_lease(lease))
            .await
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        update: &CheckpointUpdate,
    ) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::UpdateCheckpoint, || {
            self.inner.update_checkpoint(lease, update)
        })
        .await
    }

    async fn update_child_shards(
        &self,
        lease: &Lease,
        child_shard_ids: &BTreeSet<String>,
    ) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::UpdateChildShards, || {
            self.inner.update_child_shards(lease, child_shard_ids)
        })
        .await
    }

    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError> {
        self.call(Operation::DeleteLease, || self.inner.delete_lease(lease))
            .await
    }

    fn lists_owned_keys_cheaply(&self) -> bool {
        self.inner.lists_owned_keys_cheaply()
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, LeaseStoreError> {
        self.call(Operation::ListOwnedKeys, || {
            self.inner.list_lease_keys_owned_by(owner)
        })
        .await
    }

    async fn request_handoff(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::RequestHandoff, || {
            self.inner.request_handoff(lease, to)
        })
        .await
    }

    async fn hand_over(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::HandOver, || self.inner.hand_over(lease, to))
            .await
    }

    async fn accept_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::AcceptHandoff, || {
            self.inner.accept_handoff(lease)
        })
        .await
    }

    async fn cancel_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.call(Operation::CancelHandoff, || {
            self.inner.cancel_handoff(lease)
        })
        .await
    }
}

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
