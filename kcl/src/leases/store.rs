//! The lease table interface: every write is conditional, so one worker owns a lease at a
//! time.

use async_trait::async_trait;

use crate::lease::{ExtendedSequenceNumber, Lease};

/// Why a lease table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    /// The write's condition failed: the lease changed (another worker took it, or it was
    /// renewed, updated or deleted) since it was read.
    #[error("lease {0} changed since it was read (condition failed)")]
    ConditionFailed(String),
    /// The table throttled the request.
    #[error("lease table throttled the request: {0}")]
    Throttled(String),
    /// An item in the table does not have the expected attributes.
    #[error("malformed lease item: {0}")]
    Malformed(String),
    /// The call did not answer within its timeout: whether a write was applied is unknown.
    #[error("lease table call timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Any other failure (network, permissions, table missing).
    #[error("lease table error: {0}")]
    Other(String),
}

/// What a checkpoint write sets on a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointUpdate {
    /// The new committed checkpoint.
    pub checkpoint: ExtendedSequenceNumber,
    /// The new pending (prepared) checkpoint; `None` clears it.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// Application state stored with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
}

/// A lease table. Implementations must make every write conditional as documented, so that
/// concurrent workers never both believe they own a lease.
///
/// Write methods take the lease as the caller last saw it and return the lease as written
/// (with `lease_counter` bumped), or [`LeaseStoreError::ConditionFailed`].
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Creates the table when it does not exist and waits until it can be used.
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError>;

    /// Every lease in the table. Items that cannot be read as leases are skipped (with an
    /// error log and the metric `LeaseItemsMalformed`), never failing the whole list.
    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError>;

    /// One lease, if it exists.
    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, LeaseStoreError>;

    /// Creates `lease` unless a lease with its key exists. Returns whether it was created.
    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError>;

    /// Bumps the counter. Condition: counter and owner unchanged.
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError>;

    /// Makes `owner` the owner and bumps the counter (and `ownerSwitchesSinceCheckpoint`
    /// when the owner changes). Condition: counter unchanged.
    async fn take_lease(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseStoreError>;

    /// Removes the owner and bumps the counter, so any worker may take it at once.
    /// Condition: counter and owner unchanged.
    async fn evict_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError>;

    /// Writes a checkpoint, resets `ownerSwitchesSinceCheckpoint` and bumps the counter.
    /// Condition: counter and owner unchanged.
    async fn update_checkpoint(
        &self,
        lease: &Lease,
        update: &CheckpointUpdate,
    ) -> Result<Lease, LeaseStoreError>;

    /// Sets `childShardIds` and bumps the counter. Condition: counter and owner unchanged.
    async fn update_child_shards(
        &self,
        lease: &Lease,
        child_shard_ids: &std::collections::BTreeSet<String>,
    ) -> Result<Lease, LeaseStoreError>;

    /// Deletes the lease. Condition: counter unchanged.
    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError>;
}
