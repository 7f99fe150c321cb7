//! Fault injection: wrappers of a lease store and of the coordinator tables that delay,
//! hang, throttle or fail calls, or apply them and lose the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::error::{ErrorKind, ServiceError};
use crate::lease::Lease;
use crate::leases::coordination::{CoordinatorStore, LockItem, WorkerRow};
use crate::leases::{CheckpointUpdate, LeaseStore, LeaseStoreError};

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

/// An operation a fault can be injected into.
pub trait StoreOperation: Copy + Ord + std::fmt::Debug + Send + Sync + 'static {
    /// Every operation of its store.
    fn all() -> &'static [Self];
    /// The operation's name, as errors name the failed call.
    fn name(self) -> &'static str;
}

impl StoreOperation for Operation {
    fn all() -> &'static [Self] {
        &Operation::ALL
    }

    fn name(self) -> &'static str {
        Operation::name(self)
    }
}

/// One [`CoordinatorStore`] operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CoordinatorOperation {
    /// `create_tables_if_missing`.
    CreateTables,
    /// `read_lock`.
    ReadLock,
    /// `acquire_lock`.
    AcquireLock,
    /// `renew_lock`.
    RenewLock,
    /// `release_lock`.
    ReleaseLock,
    /// `read_worker`.
    ReadWorker,
    /// `write_worker` (the heartbeat).
    WriteWorker,
    /// `list_workers`.
    ListWorkers,
    /// `name_successor`.
    NameSuccessor,
    /// `fence_worker`.
    FenceWorker,
    /// `delete_worker`.
    DeleteWorker,
}

impl CoordinatorOperation {
    /// Every operation.
    pub const ALL: [CoordinatorOperation; 11] = [
        CoordinatorOperation::CreateTables,
        CoordinatorOperation::ReadLock,
        CoordinatorOperation::AcquireLock,
        CoordinatorOperation::RenewLock,
        CoordinatorOperation::ReleaseLock,
        CoordinatorOperation::ReadWorker,
        CoordinatorOperation::WriteWorker,
        CoordinatorOperation::ListWorkers,
        CoordinatorOperation::NameSuccessor,
        CoordinatorOperation::FenceWorker,
        CoordinatorOperation::DeleteWorker,
    ];
}

impl StoreOperation for CoordinatorOperation {
    fn all() -> &'static [Self] {
        &CoordinatorOperation::ALL
    }

    fn name(self) -> &'static str {
        match self {
            CoordinatorOperation::CreateTables => "create_tables_if_missing",
            CoordinatorOperation::ReadLock => "read_lock",
            CoordinatorOperation::AcquireLock => "acquire_lock",
            CoordinatorOperation::RenewLock => "renew_lock",
            CoordinatorOperation::ReleaseLock => "release_lock",
            CoordinatorOperation::ReadWorker => "read_worker",
            CoordinatorOperation::WriteWorker => "write_worker",
            CoordinatorOperation::ListWorkers => "list_workers",
            CoordinatorOperation::NameSuccessor => "name_successor",
            CoordinatorOperation::FenceWorker => "fence_worker",
            CoordinatorOperation::DeleteWorker => "delete_worker",
        }
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

/// When a fault applies (to the operations of a [`FaultyLeaseStore`], or of a
/// [`FaultyCoordinatorStore`] with `Op` = [`CoordinatorOperation`]).
#[derive(Clone, Debug)]
pub struct FaultRule<Op = Operation> {
    /// The operations it applies to.
    pub operations: BTreeSet<Op>,
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

impl<Op: StoreOperation> FaultRule<Op> {
    /// `fault` on every call of `operations`.
    pub fn new(operations: impl IntoIterator<Item = Op>, fault: Fault) -> Self {
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
        Self::new(Op::all().iter().copied(), fault)
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
struct Rules<Op> {
    rules: Vec<FaultRule<Op>>,
    rng: StdRng,
}

/// The fault rules of a store, and its call counts.
#[derive(Debug)]
struct Faults<Op> {
    rules: Mutex<Rules<Op>>,
    calls: Mutex<BTreeMap<Op, u64>>,
    injected: AtomicU64,
}

impl<Op: StoreOperation> Faults<Op> {
    fn new() -> Self {
        Faults {
            rules: Mutex::new(Rules {
                rules: Vec::new(),
                rng: StdRng::seed_from_u64(7),
            }),
            calls: Mutex::new(BTreeMap::new()),
            injected: AtomicU64::new(0),
        }
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, Rules<Op>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fault_for(&self, operation: Op) -> Option<Fault> {
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

    async fn call<T, F, Fut>(&self, operation: Op, call: F) -> Result<T, LeaseStoreError>
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

/// A [`LeaseStore`] that injects [`Fault`]s into calls of the store it wraps and counts
/// calls per operation.
pub struct FaultyLeaseStore {
    inner: Arc<dyn LeaseStore>,
    faults: Faults<Operation>,
}

impl std::fmt::Debug for FaultyLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyLeaseStore")
            .field("rules", &self.faults.lock_rules().rules)
            .finish_non_exhaustive()
    }
}

/// The fault-injection methods of a faulty store.
macro_rules! fault_controls {
    ($op:ty) => {
        /// Adds a rule; the first matching rule decides a call's fault.
        pub fn inject(&self, rule: FaultRule<$op>) {
            self.faults.lock_rules().rules.push(rule);
        }

        /// Removes every rule.
        pub fn clear(&self) {
            self.faults.lock_rules().rules.clear();
        }

        /// Seeds the generator that decides probabilistic faults.
        pub fn seed(&self, seed: u64) {
            self.faults.lock_rules().rng = StdRng::seed_from_u64(seed);
        }

        /// Calls per operation so far (faulted or not).
        pub fn calls(&self) -> BTreeMap<$op, u64> {
            self.faults
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }

        /// How many calls a fault hit so far.
        pub fn injected(&self) -> u64 {
            self.faults.injected.load(Ordering::SeqCst)
        }
    };
}

impl FaultyLeaseStore {
    /// Wraps `inner`; no fault until one is injected.
    pub fn new(inner: Arc<dyn LeaseStore>) -> Self {
        FaultyLeaseStore {
            inner,
            faults: Faults::new(),
        }
    }

    fault_controls!(Operation);

    async fn call<T, F, Fut>(&self, operation: Operation, call: F) -> Result<T, LeaseStoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, LeaseStoreError>>,
    {
        self.faults.call(operation, call).await
    }
}

/// A [`CoordinatorStore`] that injects [`Fault`]s into calls of the store it wraps (rules
/// of [`CoordinatorOperation`]s) and counts calls per operation.
pub struct FaultyCoordinatorStore {
    inner: Arc<dyn CoordinatorStore>,
    faults: Faults<CoordinatorOperation>,
}

impl std::fmt::Debug for FaultyCoordinatorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyCoordinatorStore")
            .field("rules", &self.faults.lock_rules().rules)
            .finish_non_exhaustive()
    }
}

impl FaultyCoordinatorStore {
    /// Wraps `inner`; no fault until one is injected.
    pub fn new(inner: Arc<dyn CoordinatorStore>) -> Self {
        FaultyCoordinatorStore {
            inner,
            faults: Faults::new(),
        }
    }

    fault_controls!(CoordinatorOperation);
}

#[async_trait]
impl CoordinatorStore for FaultyCoordinatorStore {
    async fn create_tables_if_missing(&self) -> Result<(), LeaseStoreError> {
        let op = CoordinatorOperation::CreateTables;
        self.faults
            .call(op, || self.inner.create_tables_if_missing())
            .await
    }

    async fn read_lock(&self, key: &str) -> Result<Option<LockItem>, LeaseStoreError> {
        let op = CoordinatorOperation::ReadLock;
        self.faults.call(op, || self.inner.read_lock(key)).await
    }

    async fn acquire_lock(
        &self,
        previous: Option<&LockItem>,
        lock: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        let op = CoordinatorOperation::AcquireLock;
        self.faults
            .call(op, || self.inner.acquire_lock(previous, lock))
            .await
    }

    async fn renew_lock(
        &self,
        current: &LockItem,
        renewed: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        let op = CoordinatorOperation::RenewLock;
        self.faults
            .call(op, || self.inner.renew_lock(current, renewed))
            .await
    }

    async fn release_lock(&self, current: &LockItem) -> Result<(), LeaseStoreError> {
        let op = CoordinatorOperation::ReleaseLock;
        self.faults
            .call(op, || self.inner.release_lock(current))
            .await
    }

    async fn read_worker(&self, worker_id: &str) -> Result<Option<WorkerRow>, LeaseStoreError> {
        let op = CoordinatorOperation::ReadWorker;
        self.faults
            .call(op, || self.inner.read_worker(worker_id))
            .await
    }

    async fn write_worker(
        &self,
        row: &WorkerRow,
        previous: Option<&WorkerRow>,
    ) -> Result<WorkerRow, LeaseStoreError> {
        let op = CoordinatorOperation::WriteWorker;
        self.faults
            .call(op, || self.inner.write_worker(row, previous))
            .await
    }

    async fn name_successor(
        &self,
        worker_id: &str,
        lock_key: &str,
        named: bool,
    ) -> Result<(), LeaseStoreError> {
        let op = CoordinatorOperation::NameSuccessor;
        self.faults
            .call(op, || self.inner.name_successor(worker_id, lock_key, named))
            .await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRow>, LeaseStoreError> {
        let op = CoordinatorOperation::ListWorkers;
        self.faults.call(op, || self.inner.list_workers()).await
    }

    async fn fence_worker(&self, worker_id: &str, heartbeat: u64) -> Result<(), LeaseStoreError> {
        let op = CoordinatorOperation::FenceWorker;
        self.faults
            .call(op, || self.inner.fence_worker(worker_id, heartbeat))
            .await
    }

    async fn delete_worker(&self, row: &WorkerRow) -> Result<(), LeaseStoreError> {
        let op = CoordinatorOperation::DeleteWorker;
        self.faults.call(op, || self.inner.delete_worker(row)).await
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
