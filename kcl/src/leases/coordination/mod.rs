//! The coordinator tables beside the lease table, as the Java KCL 3 (3.0 to 3.4) lays them
//! out: the *coordinator state* table, whose `Leader` item is the leader lock (in the
//! format of the DynamoDB lock client the Java KCL uses), and the *worker metrics* table,
//! one row per worker. This crate's workers write their heartbeat (and, optionally, their
//! CPU utilisation) in their row; the leader reads the rows to tell live workers from dead
//! ones and to balance.
//!
//! [`CoordinatorStore`] is the interface, implemented in DynamoDB
//! ([`DynamoDbCoordinatorStore`]) and in memory ([`MemoryCoordinatorStore`], for tests and
//! simulations). Every write that decides something is conditional.

pub(crate) mod dynamodb;
mod memory;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

pub use dynamodb::DynamoDbCoordinatorStore;
pub use memory::MemoryCoordinatorStore;

use super::store::LeaseStoreError;

/// The key of the leader lock item (the Java KCL 3's).
pub const LEADER_LOCK_KEY: &str = "Leader";

/// The leader lock: the coordinator state table's `Leader` item.
///
/// Attributes as the DynamoDB lock client writes them: `ownerName`, `leaseDuration`
/// (milliseconds, as a string), `recordVersionNumber` (a fresh UUID at every write) and
/// `isReleased`; plus this crate's `successors`. A lock is free when it is absent or
/// released, and expired for a worker that has seen the same record version for longer
/// than its lease duration (by that worker's own clock).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockItem {
    /// `key`: the item's key, [`LEADER_LOCK_KEY`] (a multi-stream worker's streams each
    /// have their own, `Leader:` and the stream identifier).
    pub key: String,
    /// `ownerName`: the leader's worker id.
    pub owner: String,
    /// `recordVersionNumber`: changed by every write of the holder.
    pub record_version: String,
    /// `leaseDuration`: how long the same record version must be seen before the lock
    /// may be taken over.
    pub lease_duration: Duration,
    /// `isReleased`: the holder gave the lock up.
    pub released: bool,
    /// `successors` (this crate's own attribute): the workers the leader names to take
    /// over first if it stops. They keep the observations a leader needs.
    pub successors: Vec<String>,
}

impl LockItem {
    /// The lock `key` held by `owner` at a new record version.
    pub fn new(
        key: impl Into<String>,
        owner: impl Into<String>,
        lease_duration: Duration,
        successors: Vec<String>,
    ) -> Self {
        LockItem {
            key: key.into(),
            owner: owner.into(),
            record_version: new_record_version(),
            lease_duration,
            released: false,
            successors,
        }
    }

    /// The same holder at a new record version, with `successors`.
    pub fn renewed(&self, successors: Vec<String>) -> Self {
        LockItem {
            record_version: new_record_version(),
            successors,
            ..self.clone()
        }
    }
}

/// A fresh record version: a random UUID, as the lock client writes it.
fn new_record_version() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One worker's row in the worker metrics table (`wid` the hash key).
///
/// The Java KCL 3's attributes, so that a Java leader counts this crate's workers as
/// active: `lut` (the last update, epoch seconds), `sts` (metric name to the last values
/// reported; `C` is CPU utilisation in percent) and `opr` (metric name to its operating
/// range). This crate's own (the Java KCL ignores them): `heartbeat`, a counter bumped by
/// every write of the worker, each conditional on the value before; `fencedAt`, the
/// heartbeat at which a leader found the worker dead (its later heartbeats then fail until
/// it starts afresh); `stopping`; `maxLeases`; `successorOf`, the lock keys whose leader
/// named this worker a successor (written by the leader, kept by the worker's writes).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct WorkerRow {
    /// `wid`: the worker id, as it appears in `leaseOwner`.
    pub worker_id: String,
    /// `lut`: when the worker last wrote its row, epoch seconds (its own clock; only the
    /// Java KCL compares it with another clock).
    pub last_update_epoch_seconds: Option<i64>,
    /// `sts`: metric name to the last values reported (oldest first).
    pub stats: BTreeMap<String, Vec<f64>>,
    /// `opr`: metric name to its operating range (the Java KCL writes one value, the
    /// maximum utilisation, 100).
    pub operating_range: BTreeMap<String, Vec<f64>>,
    /// `heartbeat`: the worker's write counter; `None` in rows of other libraries.
    pub heartbeat: Option<u64>,
    /// `fencedAt`: set by a leader that judged the worker dead at this heartbeat.
    pub fenced_at: Option<u64>,
    /// `stopping`: the worker is shutting down and takes no more leases.
    pub stopping: bool,
    /// `maxLeases`: the most leases the worker takes, when limited.
    pub max_leases: Option<u64>,
    /// `successorOf`: the lock keys whose leader named this worker a successor.
    pub successor_of: std::collections::BTreeSet<String>,
    /// `streams`: the streams a multi-stream worker consumes (their identifiers); `None`
    /// (a single-stream worker, another library's) consumes whatever its lease table
    /// holds.
    pub streams: Option<std::collections::BTreeSet<String>>,
}

impl WorkerRow {
    /// The row of a worker of this crate.
    pub fn new(worker_id: impl Into<String>) -> Self {
        WorkerRow {
            worker_id: worker_id.into(),
            ..WorkerRow::default()
        }
    }

    /// Whether the row was written by this crate (it has a heartbeat).
    pub fn is_heartbeating(&self) -> bool {
        self.heartbeat.is_some()
    }

    /// Whether a leader fenced the worker at its current heartbeat.
    pub fn is_fenced(&self) -> bool {
        self.fenced_at.is_some() && self.fenced_at == self.heartbeat
    }

    /// Whether the worker consumes `stream` (an identifier): a row that names no streams
    /// consumes every stream.
    pub fn consumes(&self, stream: &str) -> bool {
        self.streams.as_ref().is_none_or(|s| s.contains(stream))
    }

    /// The latest CPU utilisation reported (`sts.C`), percent.
    pub fn cpu_percent(&self) -> Option<f64> {
        self.stats
            .get(CPU_METRIC)
            .and_then(|values| values.iter().rev().find(|v| **v >= 0.0).copied())
    }
}

/// The Java KCL 3's short name of the CPU utilisation metric.
pub const CPU_METRIC: &str = "C";

/// The coordinator tables: the leader lock and the worker rows.
#[async_trait]
pub trait CoordinatorStore: Send + Sync {
    /// Creates the tables when they do not exist and waits until they can be used.
    async fn create_tables_if_missing(&self) -> Result<(), LeaseStoreError>;

    /// The lock item `key`, if it exists (consistent read).
    async fn read_lock(&self, key: &str) -> Result<Option<LockItem>, LeaseStoreError>;

    /// Writes `lock` whole (at `lock.key`). Condition: with `previous` `None`, no lock item exists;
    /// otherwise the item still has `previous`'s record version (a released or expired
    /// lock taken over).
    async fn acquire_lock(
        &self,
        previous: Option<&LockItem>,
        lock: &LockItem,
    ) -> Result<(), LeaseStoreError>;

    /// The holder's heartbeat: writes `renewed`'s record version, lease duration and
    /// successors. Condition: record version and owner still `current`'s.
    async fn renew_lock(
        &self,
        current: &LockItem,
        renewed: &LockItem,
    ) -> Result<(), LeaseStoreError>;

    /// The holder gives the lock up: deletes the item, as the Java KCL does. Condition:
    /// record version and owner still `current`'s.
    async fn release_lock(&self, current: &LockItem) -> Result<(), LeaseStoreError>;

    /// One worker's row, if it exists (consistent read).
    async fn read_worker(&self, worker_id: &str) -> Result<Option<WorkerRow>, LeaseStoreError>;

    /// Writes `row`: the attributes the worker owns (every one but `successorOf`, which
    /// is kept, as are attributes this crate does not know), and returns the row as
    /// written. Condition: with `previous` `None`, no row exists for the worker; otherwise
    /// the row still has `previous`'s heartbeat and fence.
    async fn write_worker(
        &self,
        row: &WorkerRow,
        previous: Option<&WorkerRow>,
    ) -> Result<WorkerRow, LeaseStoreError>;

    /// A leader names a worker a successor for the lock `lock_key` (`named`), or no longer:
    /// adds the key to, or removes it from, the worker's `successorOf`. The worker learns it
    /// at its next heartbeat. Condition: the row exists.
    async fn name_successor(
        &self,
        worker_id: &str,
        lock_key: &str,
        named: bool,
    ) -> Result<(), LeaseStoreError>;

    /// Every worker row. Rows that cannot be read are skipped (with an error log).
    async fn list_workers(&self) -> Result<Vec<WorkerRow>, LeaseStoreError>;

    /// A leader found the worker dead: sets `fencedAt` to `heartbeat`. Condition: the row's
    /// heartbeat is still `heartbeat`.
    async fn fence_worker(&self, worker_id: &str, heartbeat: u64) -> Result<(), LeaseStoreError>;

    /// Deletes a row left by a worker long gone. Condition: the row is still as `row`
    /// (heartbeat and last update).
    async fn delete_worker(&self, row: &WorkerRow) -> Result<(), LeaseStoreError>;
}
