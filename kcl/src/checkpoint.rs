//! Checkpoints: how a record processor records its progress in the lease table.

use std::cmp::Ordering;
use std::sync::{Arc, Mutex};

use crate::error::ServiceError;
use crate::lease::{ExtendedSequenceNumber, Lease};
use crate::leases::{CheckpointUpdate, HeldLease, LeaseStoreError};
use crate::metrics::Outcomes;

/// Why a checkpoint was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// This worker no longer holds the shard's lease; another worker continues from the
    /// last checkpoint. Stop processing this shard.
    #[error("lease for shard {0} is no longer held by this worker")]
    LeaseLost(String),
    /// The lease table throttled the write (it was not applied); try again later.
    #[error("checkpoint throttled")]
    Throttled(#[source] ServiceError),
    /// The position is behind the stored checkpoint, or beyond the last record delivered
    /// to the processor.
    #[error("invalid checkpoint {requested}: {reason}")]
    InvalidSequence {
        /// The position asked for.
        requested: ExtendedSequenceNumber,
        /// Why it was refused.
        reason: String,
    },
    /// Any other lease table failure.
    #[error(transparent)]
    Store(#[from] LeaseStoreError),
}

/// One conditional checkpoint write; positions are validated under the lease's lock.
enum Write {
    /// Move the checkpoint; clears any pending one.
    Commit(ExtendedSequenceNumber),
    /// `SHARD_END`, after every record was delivered.
    ShardEnd,
    /// Store a pending checkpoint (and state), keeping the checkpoint.
    Prepare(ExtendedSequenceNumber, Option<Vec<u8>>),
}

#[derive(Debug, Default)]
struct Progress {
    /// The last user record handed to the processor.
    last_delivered: Option<ExtendedSequenceNumber>,
    /// The shard's end was reached and every record was delivered.
    shard_ended: bool,
}

/// Writes checkpoints for one shard. Cheap to clone; clones share state.
///
/// A checkpoint can never move backwards nor beyond the last record delivered to the
/// processor, and is written only while this worker holds the lease (the write is
/// conditional on the lease counter and owner).
#[derive(Clone)]
pub struct Checkpointer {
    held: Arc<HeldLease>,
    progress: Arc<Mutex<Progress>>,
    checkpoints: Outcomes,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("shard_id", &self.held.key())
            .finish_non_exhaustive()
    }
}

/// A checkpoint written as pending by [`Checkpointer::prepare_checkpoint`]; commit it with
/// [`PreparedCheckpoint::checkpoint`] once the application's side effects are done.
#[derive(Debug)]
pub struct PreparedCheckpoint {
    checkpointer: Checkpointer,
    position: ExtendedSequenceNumber,
}

impl PreparedCheckpoint {
    /// The prepared position.
    pub fn position(&self) -> &ExtendedSequenceNumber {
        &self.position
    }

    /// Commits the prepared checkpoint and clears the pending one.
    pub async fn checkpoint(self) -> Result<(), CheckpointError> {
        self.checkpointer.write(Write::Commit(self.position)).await
    }
}

impl Checkpointer {
    pub(crate) fn new(held: Arc<HeldLease>) -> Self {
        Checkpointer {
            checkpoints: crate::metrics::checkpoints(held.metrics()),
            held,
            progress: Arc::new(Mutex::new(Progress::default())),
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn delivered(&self, last: ExtendedSequenceNumber) {
        self.progress().last_delivered = Some(last);
    }

    /// Sets the most a checkpoint may cover: back before a failed record, or `None` when
    /// nothing delivered may be checkpointed.
    pub(crate) fn delivered_up_to(&self, last: Option<ExtendedSequenceNumber>) {
        self.progress().last_delivered = last;
    }

    pub(crate) fn set_shard_ended(&self) {
        self.progress().shard_ended = true;
    }

    /// The shard this checkpointer writes for.
    pub fn shard_id(&self) -> &str {
        self.held.key()
    }

    /// The last user record delivered to the processor.
    pub fn last_delivered(&self) -> Option<ExtendedSequenceNumber> {
        self.progress().last_delivered.clone()
    }

    /// The checkpoint stored in the lease now.
    pub async fn current(&self) -> ExtendedSequenceNumber {
        self.held.copy().checkpoint
    }

    /// Checkpoints everything delivered so far. In
    /// [`RecordProcessor::shard_ended`](crate::RecordProcessor::shard_ended) this writes
    /// `SHARD_END`, which lets the child shards start. Does nothing when nothing was
    /// delivered yet.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        let (last, ended) = {
            let progress = self.progress();
            (progress.last_delivered.clone(), progress.shard_ended)
        };
        if ended {
            return self.write(Write::ShardEnd).await;
        }
        match last {
            Some(position) => self.write(Write::Commit(position)).await,
            None => Ok(()),
        }
    }

    /// Checkpoints up to and including the user record `(sequence_number,
    /// sub_sequence_number)`, which must have been delivered.
    pub async fn checkpoint_at(
        &self,
        sequence_number: &str,
        sub_sequence_number: u64,
    ) -> Result<(), CheckpointError> {
        let position = ExtendedSequenceNumber::new(sequence_number, sub_sequence_number);
        self.write(Write::Commit(position)).await
    }

    /// First phase of a two-phase checkpoint at the last delivered record: stores it as
    /// `pendingCheckpoint` (with optional application state) without moving the
    /// checkpoint.
    pub async fn prepare_checkpoint(
        &self,
        state: Option<Vec<u8>>,
    ) -> Result<PreparedCheckpoint, CheckpointError> {
        let position = self
            .last_delivered()
            .ok_or_else(|| CheckpointError::InvalidSequence {
                requested: ExtendedSequenceNumber::trim_horizon(),
                reason: "no record was delivered yet".into(),
            })?;
        self.prepare_checkpoint_at(position, state).await
    }

    /// First phase of a two-phase checkpoint at a delivered position.
    pub async fn prepare_checkpoint_at(
        &self,
        position: ExtendedSequenceNumber,
        state: Option<Vec<u8>>,
    ) -> Result<PreparedCheckpoint, CheckpointError> {
        self.write(Write::Prepare(position.clone(), state)).await?;
        Ok(PreparedCheckpoint {
            checkpointer: self.clone(),
            position,
        })
    }

    fn validate(
        &self,
        requested: &ExtendedSequenceNumber,
        current: &ExtendedSequenceNumber,
    ) -> Result<(), CheckpointError> {
        let invalid = |reason: &str| CheckpointError::InvalidSequence {
            requested: requested.clone(),
            reason: reason.to_owned(),
        };
        if requested.sequence_number().is_none() {
            return Err(invalid("not a sequence number"));
        }
        if current.is_shard_end() {
            return Err(invalid("the shard is already checkpointed at SHARD_END"));
        }
        if requested.compare(current) == Some(Ordering::Less) {
            return Err(invalid(&format!("behind the stored checkpoint {current}")));
        }
        match self.last_delivered() {
            Some(last) if requested.compare(&last) != Some(Ordering::Greater) => Ok(()),
            Some(last) => Err(invalid(&format!("beyond the last delivered record {last}"))),
            None => Err(invalid("no record was delivered yet")),
        }
    }

    async fn write(&self, write: Write) -> Result<(), CheckpointError> {
        let shard = self.held.key().to_owned();
        let written = self
            .held
            .write_checkpoint(|lease: &Lease| {
                Ok::<_, CheckpointError>(match write {
                    Write::Commit(position) => {
                        self.validate(&position, &lease.checkpoint)?;
                        CheckpointUpdate {
                            checkpoint: position,
                            pending_checkpoint: None,
                            pending_checkpoint_state: None,
                        }
                    }
                    Write::ShardEnd => CheckpointUpdate {
                        checkpoint: ExtendedSequenceNumber::shard_end(),
                        pending_checkpoint: None,
                        pending_checkpoint_state: None,
                    },
                    Write::Prepare(position, state) => {
                        self.validate(&position, &lease.checkpoint)?;
                        CheckpointUpdate {
                            checkpoint: lease.checkpoint.clone(),
                            pending_checkpoint: Some(position),
                            pending_checkpoint_state: state,
                        }
                    }
                })
            })
            .await?;
        self.checkpoints.record(written.is_ok());
        match written {
            Ok(()) => Ok(()),
            Err(LeaseStoreError::ConditionFailed(_)) => Err(CheckpointError::LeaseLost(shard)),
            Err(LeaseStoreError::Throttled(error)) => Err(CheckpointError::Throttled(error)),
            Err(other) => Err(other.into()),
        }
    }

    /// Whether this worker still holds the shard's lease: `false` once it was lost or its
    /// local deadline passed (then checkpoints fail with [`CheckpointError::LeaseLost`]
    /// without any call). A processor about to make a side effect it cannot undo may check
    /// it first.
    pub fn is_lease_held(&self) -> bool {
        !self.held.is_lost()
    }

    pub(crate) fn lease(&self) -> Lease {
        self.held.copy()
    }

    /// Gives the lease up without a checkpoint (handed over during a handoff, else
    /// released); it is lost locally whatever the outcome. For a processor that nobody
    /// consumes any more.
    pub(crate) async fn release_lease(&self) -> Result<bool, LeaseStoreError> {
        self.held.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::coordinator::LeaseCoordinator;
    use crate::leases::{LeaseCoordinatorConfig, LeaseStore, MemoryLeaseStore};

    async fn setup() -> (Arc<MemoryLeaseStore>, LeaseCoordinator, Checkpointer) {
        let store = Arc::new(MemoryLeaseStore::new());
        store
            .create_lease_if_absent(&Lease::new(
                "shard-0",
                ExtendedSequenceNumber::trim_horizon(),
            ))
            .await
            .unwrap();
        let dyn_store: Arc<dyn LeaseStore> = store.clone();
        let coordinator =
            LeaseCoordinator::new(dyn_store.clone(), LeaseCoordinatorConfig::new("w"));
        coordinator.take_leases().await.unwrap();
        let held = coordinator.held_lease("shard-0").unwrap();
        (store, coordinator, Checkpointer::new(held))
    }

    fn stored(store: &MemoryLeaseStore) -> Lease {
        store.snapshot().remove(0)
    }

    #[tokio::test]
    async fn checkpoints_only_what_was_delivered_and_never_backwards() {
        let (store, _coordinator, checkpointer) = setup().await;
        checkpointer.checkpoint().await.unwrap(); // nothing delivered: no-op
        assert_eq!(
            stored(&store).checkpoint,
            ExtendedSequenceNumber::trim_horizon()
        );
        assert!(matches!(
            checkpointer.checkpoint_at("100", 0).await,
            Err(CheckpointError::InvalidSequence { .. })
        ));
        checkpointer.delivered(ExtendedSequenceNumber::new("200", 3));
        checkpointer.checkpoint_at("150", 0).await.unwrap();
        assert_eq!(
            stored(&store).checkpoint,
            ExtendedSequenceNumber::new("150", 0)
        );
        assert!(matches!(
            checkpointer.checkpoint_at("120", 0).await,
            Err(CheckpointError::InvalidSequence { .. })
        ));
        assert!(matches!(
            checkpointer.checkpoint_at("200", 4).await,
            Err(CheckpointError::InvalidSequence { .. })
        ));
        checkpointer.checkpoint().await.unwrap();
        assert_eq!(
            stored(&store).checkpoint,
            ExtendedSequenceNumber::new("200", 3)
        );
        checkpointer.set_shard_ended();
        checkpointer.checkpoint().await.unwrap();
        assert!(stored(&store).checkpoint.is_shard_end());
    }

    #[tokio::test]
    async fn two_phase_checkpoint_with_state() {
        let (store, _coordinator, checkpointer) = setup().await;
        checkpointer.delivered(ExtendedSequenceNumber::new("42", 0));
        let prepared = checkpointer
            .prepare_checkpoint(Some(b"app".to_vec()))
            .await
            .unwrap();
        let lease = stored(&store);
        assert_eq!(lease.checkpoint, ExtendedSequenceNumber::trim_horizon());
        assert_eq!(
            lease.pending_checkpoint,
            Some(ExtendedSequenceNumber::new("42", 0))
        );
        assert_eq!(lease.pending_checkpoint_state.as_deref(), Some(&b"app"[..]));
        prepared.checkpoint().await.unwrap();
        let lease = stored(&store);
        assert_eq!(lease.checkpoint, ExtendedSequenceNumber::new("42", 0));
        assert_eq!(lease.pending_checkpoint, None);
        assert_eq!(lease.pending_checkpoint_state, None);

        // A prepared checkpoint overtaken by a later one cannot move the checkpoint back.
        checkpointer.delivered(ExtendedSequenceNumber::new("50", 0));
        let stale = checkpointer.prepare_checkpoint(None).await.unwrap();
        checkpointer.delivered(ExtendedSequenceNumber::new("60", 0));
        checkpointer.checkpoint().await.unwrap();
        assert!(matches!(
            stale.checkpoint().await,
            Err(CheckpointError::InvalidSequence { .. })
        ));
        assert_eq!(
            stored(&store).checkpoint,
            ExtendedSequenceNumber::new("60", 0)
        );
    }

    /// A checkpoint the table applied but whose answer was lost, retried by the SDK (the
    /// retry's condition fails), succeeded: the lease is kept and the checkpoint stored.
    #[tokio::test]
    async fn a_checkpoint_whose_answer_was_lost_succeeded() {
        use crate::test_util::{Fault, FaultRule, FaultyLeaseStore, Operation};

        let memory = Arc::new(MemoryLeaseStore::new());
        memory
            .create_lease_if_absent(&Lease::new(
                "shard-0",
                ExtendedSequenceNumber::trim_horizon(),
            ))
            .await
            .unwrap();
        let faulty = Arc::new(FaultyLeaseStore::new(memory.clone()));
        let store: Arc<dyn LeaseStore> = faulty.clone();
        let coordinator = LeaseCoordinator::new(store.clone(), LeaseCoordinatorConfig::new("w"));
        coordinator.take_leases().await.unwrap();
        let held = coordinator.held_lease("shard-0").unwrap();
        let checkpointer = Checkpointer::new(held.clone());
        checkpointer.delivered(ExtendedSequenceNumber::new("42", 0));
        faulty.inject(
            FaultRule::new([Operation::UpdateCheckpoint], Fault::LoseAnswerThenRetry).times(1),
        );
        checkpointer.checkpoint().await.unwrap();
        assert_eq!(
            stored(&memory).checkpoint,
            ExtendedSequenceNumber::new("42", 0)
        );
        assert!(!held.is_lost());
        // The lease's counter was adopted: the next write goes through.
        checkpointer.delivered(ExtendedSequenceNumber::new("43", 0));
        checkpointer.checkpoint().await.unwrap();
        assert_eq!(
            stored(&memory).checkpoint,
            ExtendedSequenceNumber::new("43", 0)
        );
        assert!(coordinator.renew_leases().await.is_empty());
    }

    #[tokio::test]
    async fn a_lost_lease_refuses_checkpoints() {
        let (store, coordinator, checkpointer) = setup().await;
        checkpointer.delivered(ExtendedSequenceNumber::new("42", 0));
        // Another worker takes the lease.
        let current = stored(&store);
        store.take_lease(&current, "other").await.unwrap();
        assert!(matches!(
            checkpointer.checkpoint().await,
            Err(CheckpointError::LeaseLost(_))
        ));
        assert_eq!(coordinator.renew_leases().await, vec!["shard-0".to_owned()]);
        assert!(coordinator.held_leases().is_empty());
    }
}
