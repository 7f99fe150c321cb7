//! The coordinator tables in memory, with the conditions of the DynamoDB ones.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{CoordinatorStore, LockItem, WorkerRow};
use crate::leases::store::LeaseStoreError;

/// An in-memory [`CoordinatorStore`].
#[derive(Debug, Default)]
pub struct MemoryCoordinatorStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    locks: BTreeMap<String, LockItem>,
    workers: BTreeMap<String, WorkerRow>,
}

impl MemoryCoordinatorStore {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every operation replaces whole values: a panic cannot leave one half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the lock item `key`.
    pub fn lock_item(&self, key: &str) -> Option<LockItem> {
        self.lock().locks.get(key).cloned()
    }

    /// A copy of every worker row.
    pub fn worker_rows(&self) -> Vec<WorkerRow> {
        self.lock().workers.values().cloned().collect()
    }

    /// Puts a lock item as it is (a test's hand-written item, another library's lock).
    pub fn put_lock_item(&self, lock: LockItem) {
        self.lock().locks.insert(lock.key.clone(), lock);
    }

    /// Replaces a worker row as it is (a test's hand-written row, another library's row).
    pub fn put_worker_row(&self, row: WorkerRow) {
        self.lock().workers.insert(row.worker_id.clone(), row);
    }
}

fn condition_failed(key: &str) -> LeaseStoreError {
    LeaseStoreError::ConditionFailed(key.to_owned())
}

#[async_trait]
impl CoordinatorStore for MemoryCoordinatorStore {
    async fn create_tables_if_missing(&self) -> Result<(), LeaseStoreError> {
        Ok(())
    }

    async fn read_lock(&self, key: &str) -> Result<Option<LockItem>, LeaseStoreError> {
        Ok(self.lock().locks.get(key).cloned())
    }

    async fn acquire_lock(
        &self,
        previous: Option<&LockItem>,
        lock: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        let mut inner = self.lock();
        let holds = match (inner.locks.get(&lock.key), previous) {
            (None, None) => true,
            (Some(current), Some(previous)) => current.record_version == previous.record_version,
            _ => false,
        };
        if !holds {
            return Err(condition_failed(&lock.key));
        }
        inner.locks.insert(lock.key.clone(), lock.clone());
        Ok(())
    }

    async fn renew_lock(
        &self,
        current: &LockItem,
        renewed: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        let mut inner = self.lock();
        match inner.locks.get_mut(&current.key) {
            Some(item)
                if item.record_version == current.record_version && item.owner == current.owner =>
            {
                item.record_version = renewed.record_version.clone();
                item.lease_duration = renewed.lease_duration;
                item.successors = renewed.successors.clone();
                Ok(())
            }
            _ => Err(condition_failed(&current.key)),
        }
    }

    async fn release_lock(&self, current: &LockItem) -> Result<(), LeaseStoreError> {
        let mut inner = self.lock();
        match inner.locks.get(&current.key) {
            Some(item)
                if item.record_version == current.record_version && item.owner == current.owner =>
            {
                inner.locks.remove(&current.key);
                Ok(())
            }
            _ => Err(condition_failed(&current.key)),
        }
    }

    async fn read_worker(&self, worker_id: &str) -> Result<Option<WorkerRow>, LeaseStoreError> {
        Ok(self.lock().workers.get(worker_id).cloned())
    }

    async fn write_worker(
        &self,
        row: &WorkerRow,
        previous: Option<&WorkerRow>,
    ) -> Result<WorkerRow, LeaseStoreError> {
        let mut inner = self.lock();
        let current = inner.workers.get(&row.worker_id);
        let holds = match (current, previous) {
            (None, None) => true,
            (Some(current), Some(previous)) => {
                current.heartbeat == previous.heartbeat && current.fenced_at == previous.fenced_at
            }
            _ => false,
        };
        if !holds {
            return Err(condition_failed(&row.worker_id));
        }
        let mut written = row.clone();
        written.successor_of = current.map(|c| c.successor_of.clone()).unwrap_or_default();
        inner.workers.insert(row.worker_id.clone(), written.clone());
        Ok(written)
    }

    async fn name_successor(
        &self,
        worker_id: &str,
        lock_key: &str,
        named: bool,
    ) -> Result<(), LeaseStoreError> {
        let mut inner = self.lock();
        let row = inner
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| condition_failed(worker_id))?;
        if named {
            row.successor_of.insert(lock_key.to_owned());
        } else {
            row.successor_of.remove(lock_key);
        }
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRow>, LeaseStoreError> {
        Ok(self.worker_rows())
    }

    async fn fence_worker(&self, worker_id: &str, heartbeat: u64) -> Result<(), LeaseStoreError> {
        let mut inner = self.lock();
        match inner.workers.get_mut(worker_id) {
            Some(row) if row.heartbeat == Some(heartbeat) => {
                row.fenced_at = Some(heartbeat);
                Ok(())
            }
            _ => Err(condition_failed(worker_id)),
        }
    }

    async fn delete_worker(&self, row: &WorkerRow) -> Result<(), LeaseStoreError> {
        let mut inner = self.lock();
        match inner.workers.get(&row.worker_id) {
            Some(current)
                if current.heartbeat == row.heartbeat
                    && current.last_update_epoch_seconds == row.last_update_epoch_seconds =>
            {
                inner.workers.remove(&row.worker_id);
                Ok(())
            }
            _ => Err(condition_failed(&row.worker_id)),
        }
    }
}
