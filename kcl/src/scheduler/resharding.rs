//! Resharding: keeping the lease table in step with the stream's shards (shard sync),
//! finishing a shard (its children's leases, its own released), and holding a child back
//! until its parents are done.

use std::collections::{BTreeSet, HashSet};

use aws_sdk_kinesis::types::{ChildShard, Shard};
use tokio::time::Instant;

use super::{Scheduler, SchedulerError};
use crate::error::ServiceError;
use crate::lease::{ExtendedSequenceNumber, Lease};
use crate::leases::{timed, LeaseStoreError};
use crate::retrieval::list_shards;
use crate::shard_sync::plan_shard_sync;

/// The shards ListShards showed, and when.
pub(super) struct ShardList {
    pub at: Instant,
    pub ids: HashSet<String>,
}

/// What the scheduler keeps between syncs.
#[derive(Default)]
pub(super) struct Resharding {
    /// The last listing of the stream's shards.
    pub shards: Option<ShardList>,
    /// A hole was found (a parent without a lease, a child whose create failed): sync at
    /// the next parent poll rather than the next periodic sync.
    pub sync_needed: bool,
}

impl Scheduler {
    /// A shard was processed to its end: create the children's leases, record them on the
    /// parent, and release the parent's lease (finished leases are neither counted nor
    /// taken). A child lease that could not be created is left to shard sync, which runs
    /// soon: its parent stays until every child has started, so nothing is skipped.
    pub(super) async fn shard_ended(
        &self,
        key: &str,
        children: Vec<ChildShard>,
        resharding: &mut Resharding,
    ) {
        let Some(held) = self.leases.coordinator().held_lease(key) else {
            return;
        };
        for child in &children {
            let mut lease = Lease::new(child.shard_id(), ExtendedSequenceNumber::trim_horizon());
            lease.parent_shard_ids = child.parent_shards().iter().cloned().collect();
            lease.hash_key_range = child.hash_key_range().map(|r| {
                (
                    r.starting_hash_key().to_owned(),
                    r.ending_hash_key().to_owned(),
                )
            });
            let created = timed(
                self.leases.coordinator().config().request_timeout(),
                self.store.create_lease_if_absent(&lease),
            )
            .await;
            if let Err(error) = created {
                tracing::warn!(shard = %child.shard_id(), %error, "creating child lease failed; shard sync will");
                resharding.sync_needed = true;
            }
        }
        let ids: BTreeSet<String> = children.iter().map(|c| c.shard_id().to_owned()).collect();
        if !ids.is_empty() {
            if let Err(error) = held.set_child_shards(&ids).await {
                tracing::warn!(shard = %key, %error, "recording child shards failed");
            }
        }
        tracing::info!(shard = %key, children = ?ids, "shard finished");
        if let Err(error) = self.leases.coordinator().release_lease(key).await {
            tracing::warn!(shard = %key, %error, "releasing finished lease failed");
        }
    }

    /// Whether every parent of `lease` is finished: its lease is at `SHARD_END`, or it has
    /// no lease and ListShards (fresh) no longer lists it. A parent without a lease that is
    /// still in the stream is a hole: the shard waits and shard sync repairs it.
    pub(super) async fn parents_done(&self, lease: &Lease, resharding: &mut Resharding) -> bool {
        for parent in &lease.parent_shard_ids {
            let timeout = self.leases.coordinator().config().request_timeout();
            match timed(timeout, self.store.get_lease(parent)).await {
                Ok(Some(parent_lease)) if parent_lease.is_finished() => continue,
                Ok(Some(_)) => {
                    tracing::debug!(shard = %lease.lease_key, %parent, "waiting for parent shard");
                    return false;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(shard = %lease.lease_key, %parent, %error, "reading parent lease failed");
                    return false;
                }
            }
            let fresh = resharding
                .shards
                .as_ref()
                .is_some_and(|list| list.at.elapsed() < self.config.parent_shard_poll_interval);
            if !fresh {
                match self.list_all_shards().await {
                    Ok(list) => {
                        resharding.shards = Some(ShardList {
                            at: Instant::now(),
                            ids: list.iter().map(|s| s.shard_id().to_owned()).collect(),
                        })
                    }
                    Err(error) => {
                        tracing::warn!(%error, "ListShards failed while checking parents");
                        return false;
                    }
                }
            }
            if resharding
                .shards
                .as_ref()
                .is_some_and(|list| list.ids.contains(parent))
            {
                tracing::warn!(shard = %lease.lease_key, %parent, "parent shard has no lease: waiting for shard sync to create it");
                resharding.sync_needed = true;
                return false;
            }
        }
        true
    }

    pub(super) async fn list_all_shards(&self) -> Result<Vec<Shard>, SchedulerError> {
        let timeout = self.config.kinesis_request_timeout;
        tokio::time::timeout(timeout, list_shards(&self.kinesis, &self.stream))
            .await
            .map_err(|_| SchedulerError::Kinesis(ServiceError::timed_out("ListShards", timeout)))?
            .map_err(|error| SchedulerError::kinesis(&self.stream, error))
    }

    /// Creates missing leases (parents first, holes repaired) and deletes finished leases
    /// whose children have all started or that left the stream.
    pub(super) async fn sync_shards(
        &self,
        resharding: &mut Resharding,
    ) -> Result<(), SchedulerError> {
        let timeout = self.leases.coordinator().config().request_timeout();
        // Leases first: every lease read existed before the listing, so a lease whose
        // shard is not listed is of a shard that left the stream.
        let leases = timed(timeout, self.store.list_leases()).await?;
        let listed = self.list_all_shards().await?;
        resharding.shards = Some(ShardList {
            at: Instant::now(),
            ids: listed.iter().map(|s| s.shard_id().to_owned()).collect(),
        });
        let plan = plan_shard_sync(&listed, &leases, self.initial_position);
        let mut created = false;
        for lease in plan.create {
            if timed(timeout, self.store.create_lease_if_absent(&lease)).await? {
                tracing::info!(shard = %lease.lease_key, checkpoint = %lease.checkpoint, "created lease");
                created = true;
            }
        }
        if created {
            self.leases.leases_created();
        }
        for lease in plan.delete {
            match timed(timeout, self.store.delete_lease(&lease)).await {
                Ok(()) => tracing::info!(shard = %lease.lease_key, "deleted finished lease"),
                Err(LeaseStoreError::ConditionFailed(_)) => {}
                Err(error) => {
                    tracing::warn!(shard = %lease.lease_key, %error, "deleting lease failed")
                }
            }
        }
        resharding.sync_needed = false;
        Ok(())
    }
}
