//! The lease table interface: every write is conditional, so one worker owns a lease at a
//! time.

use async_trait::async_trait;

use crate::error::ServiceError;
use crate::lease::{ExtendedSequenceNumber, Lease};

/// Why a lease table operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseStoreError {
    /// The write's condition failed: the lease changed (another worker took it, or it was
    /// renewed, updated or deleted) since it was read.
    #[error("lease {0} changed since it was read (condition failed)")]
    ConditionFailed(String),
    /// The table throttled the request (it was not applied).
    #[error("lease table throttled the request")]
    Throttled(#[source] ServiceError),
    /// An item in the table does not have the expected attributes.
    #[error("malformed lease item: {0}")]
    Malformed(String),
    /// The call did not answer within its timeout: whether a write was applied is unknown.
    #[error("lease table call timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The lease kept changing under a write that was retried (another writer of the
    /// same lease, such as a checkpoint racing a renewal, won every time).
    #[error("lease {0} kept changing under the write")]
    Contended(String),
    /// The table did not become ACTIVE in time after it was created.
    #[error("lease table {table} not ACTIVE after {waited:?}")]
    NotActive {
        /// The table.
        table: String,
        /// How long was waited.
        waited: std::time::Duration,
    },
    /// Any other failure of the table's service: [`ServiceError::kind`] tells a missing
    /// table ([`ErrorKind::NotFound`](crate::ErrorKind::NotFound)) from missing permissions
    /// or an unreachable endpoint; the SDK's error is its source.
    #[error(transparent)]
    Service(ServiceError),
}

impl LeaseStoreError {
    /// The failed service call behind it, if any.
    pub fn service_error(&self) -> Option<&ServiceError> {
        match self {
            LeaseStoreError::Throttled(error) | LeaseStoreError::Service(error) => Some(error),
            _ => None,
        }
    }
}

/// What a checkpoint write sets on a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointUpdate {
    /// The new committed checkpoint.
    pub checkpoint: ExtendedSequenceNumber,
    /// The new pending (prepared) checkpoint; `None` clears it.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// Application state stored with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
}

impl CheckpointUpdate {
    /// Commits `checkpoint` and clears any pending checkpoint.
    pub fn commit(checkpoint: ExtendedSequenceNumber) -> Self {
        CheckpointUpdate {
            checkpoint,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
        }
    }

    /// Keeps `checkpoint` and stores `pending` (with application `state`) as prepared but
    /// not committed (the Java KCL's two-phase checkpoint).
    pub fn prepare(
        checkpoint: ExtendedSequenceNumber,
        pending: ExtendedSequenceNumber,
        state: Option<Vec<u8>>,
    ) -> Self {
        CheckpointUpdate {
            checkpoint,
            pending_checkpoint: Some(pending),
            pending_checkpoint_state: state,
        }
    }
}

/// A lease table. Implementations must make every write conditional as documented, so that
/// concurrent workers never both believe they own a lease.
///
/// Write methods take the lease as the caller last saw it and return the lease as written
/// (with `lease_counter` bumped), or [`LeaseStoreError::ConditionFailed`]. "Owner
/// unchanged" means both owner attributes: `leaseOwner`, and `checkpointOwner` (set only
/// while a graceful handoff is under way).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Creates the table when it does not exist and waits until it can be used.
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError>;

    /// Every lease in the table. Items that cannot be read as leases are skipped (with an
    /// error log and the metric `kinesis_consumer_lease_items_malformed`), never failing the whole list.
    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError>;

    /// Every lease, read eventually consistently: half the read cost of
    /// [`list_leases`](Self::list_leases), and a lease changed a moment ago may show its
    /// state before. The leader reads the table this way: each of its writes is
    /// conditional on the lease as it saw it, so a stale view costs a failed write, never
    /// a wrong one. The default lists consistently.
    async fn list_leases_eventually_consistent(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.list_leases().await
    }

    /// Keys of the leases the table names `owner` the owner of. The DynamoDB store queries
    /// the `LeaseOwnerToLeaseKeyIndex` when the table has it (an index is eventually
    /// consistent: a lease moved a moment ago may be missing or still listed); the default
    /// lists every lease.
    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, LeaseStoreError> {
        Ok(owned_keys(self.list_leases().await?, owner))
    }

    /// Whether [`list_lease_keys_owned_by`](Self::list_lease_keys_owned_by) is cheap
    /// enough to call every fraction of a second (an index query, not a scan): workers
    /// then look for leases handed to them at the lease discovery interval.
    fn lists_owned_keys_cheaply(&self) -> bool {
        false
    }

    /// One lease, if it exists.
    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, LeaseStoreError>;

    /// Creates `lease` unless a lease with its key exists. Returns whether it was created.
    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError>;

    /// Bumps the counter, and writes the lease's `throughput_kbps` when it has one (as the
    /// Java KCL 3 renews). Condition: counter and owner unchanged.
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError>;

    /// Makes `owner` the owner, ends any handoff under way (removes `checkpointOwner`) and
    /// bumps the counter (and `ownerSwitchesSinceCheckpoint` when the worker processing the
    /// shard changes). Condition: counter unchanged.
    async fn take_lease(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseStoreError>;

    /// Removes the owner and bumps the counter, so any worker may take it at once (during a
    /// handoff, as the Java KCL 3 does: removes `checkpointOwner`, leaving the lease to the
    /// worker it was going to). Condition: counter and owner unchanged.
    async fn evict_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError>;

    /// Writes a checkpoint, resets `ownerSwitchesSinceCheckpoint` and bumps the counter.
    /// Condition: counter and owner unchanged.
    async fn update_checkpoint(
        &self,
        lease: &Lease,
        update: &CheckpointUpdate,
    ) -> Result<Lease, LeaseStoreError>;

    /// Asks the lease's holder to hand it over to `to` (the Java KCL 3 graceful handoff):
    /// sets `leaseOwner` to `to` and `checkpointOwner` to the holder, without bumping the
    /// counter (and removes any `handoffAcceptedBy`). Condition: `leaseOwner` unchanged
    /// and no handoff under way.
    async fn request_handoff(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError>;

    /// The holder's last write: makes `to` the owner, removes `checkpointOwner`, bumps the
    /// counter (and `ownerSwitchesSinceCheckpoint`), and records the new counter in
    /// `handoffCounter` so that `to` starts at once. Condition: counter and owner
    /// unchanged.
    async fn hand_over(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError>;

    /// The worker a lease is offered to (`leaseOwner` during a handoff its holder started,
    /// shutting down) says it is running and will take it: sets `handoffAcceptedBy` to
    /// the owner, without bumping the counter. Condition: both owner attributes unchanged.
    async fn accept_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError>;

    /// Undoes a handoff under way: the holder (`checkpointOwner`) is the owner again, and
    /// `checkpointOwner` and `handoffAcceptedBy` are removed, without bumping the counter.
    /// Condition: both owner attributes unchanged.
    async fn cancel_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError>;

    /// Sets `childShardIds` and bumps the counter. Condition: counter and owner unchanged.
    async fn update_child_shards(
        &self,
        lease: &Lease,
        child_shard_ids: &std::collections::BTreeSet<String>,
    ) -> Result<Lease, LeaseStoreError>;

    /// Deletes the lease. Condition: counter unchanged.
    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError>;
}

/// Keys of the leases owned by `owner`.
pub(crate) fn owned_keys(leases: Vec<Lease>, owner: &str) -> Vec<String> {
    leases
        .into_iter()
        .filter(|lease| lease.is_owned_by(owner))
        .map(|lease| lease.lease_key)
        .collect()
}
