//! One stream's view of a lease table shared by several streams: lease keys
//! `account:stream:creationEpoch:shardId`, as the Java KCL's multi-stream leases.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::StreamIdentifier;
use crate::lease::Lease;
use crate::leases::{CheckpointUpdate, LeaseStore, LeaseStoreError};

/// The leases of one stream in a shared table. Inside, lease keys are the stream's shard
/// ids, as in a single-stream table; in the table they are prefixed with the stream
/// identifier and the item carries `streamName` and `shardId`. Leases of other streams
/// are invisible. Parent and child shard ids stay bare shard ids, as the Java KCL keeps
/// them.
#[derive(Clone)]
pub struct StreamLeaseStore {
    inner: Arc<dyn LeaseStore>,
    stream: StreamIdentifier,
    prefix: String,
}

impl std::fmt::Debug for StreamLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLeaseStore")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl StreamLeaseStore {
    /// The leases of `stream` in `inner`.
    pub fn new(inner: Arc<dyn LeaseStore>, stream: StreamIdentifier) -> Self {
        let prefix = format!("{stream}:");
        StreamLeaseStore {
            inner,
            stream,
            prefix,
        }
    }

    /// The stream.
    pub fn stream(&self) -> &StreamIdentifier {
        &self.stream
    }

    /// The lease as the table holds it.
    fn outer(&self, lease: &Lease) -> Lease {
        let mut outer = lease.clone();
        outer.lease_key = format!("{}{}", self.prefix, lease.lease_key);
        outer.multi_stream = Some((self.stream.to_string(), lease.lease_key.clone()));
        outer
    }

    /// The lease as this stream sees it, if it is one of this stream's.
    fn inner_lease(&self, mut lease: Lease) -> Option<Lease> {
        let shard = lease.lease_key.strip_prefix(&self.prefix)?.to_owned();
        lease.lease_key = shard;
        lease.multi_stream = None;
        Some(lease)
    }

    fn written(&self, lease: Lease) -> Result<Lease, LeaseStoreError> {
        let key = lease.lease_key.clone();
        self.inner_lease(lease)
            .ok_or_else(|| LeaseStoreError::Malformed(format!("{key}: not a lease of this stream")))
    }
}

#[async_trait]
impl LeaseStore for StreamLeaseStore {
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError> {
        self.inner.create_table_if_missing().await
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        Ok(self
            .inner
            .list_leases()
            .await?
            .into_iter()
            .filter_map(|lease| self.inner_lease(lease))
            .collect())
    }

    async fn list_leases_eventually_consistent(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        Ok(self
            .inner
            .list_leases_eventually_consistent()
            .await?
            .into_iter()
            .filter_map(|lease| self.inner_lease(lease))
            .collect())
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, LeaseStoreError> {
        Ok(self
            .inner
            .list_lease_keys_owned_by(owner)
            .await?
            .into_iter()
            .filter_map(|key| key.strip_prefix(&self.prefix).map(str::to_owned))
            .collect())
    }

    fn lists_owned_keys_cheaply(&self) -> bool {
        self.inner.lists_owned_keys_cheaply()
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        let key = format!("{}{lease_key}", self.prefix);
        Ok(self
            .inner
            .get_lease(&key)
            .await?
            .and_then(|lease| self.inner_lease(lease)))
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        self.inner.create_lease_if_absent(&self.outer(lease)).await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.written(self.inner.renew_lease(&self.outer(lease)).await?)
    }

    async fn take_lease(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseStoreError> {
        self.written(self.inner.take_lease(&self.outer(lease), owner).await?)
    }

    async fn evict_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.written(self.inner.evict_lease(&self.outer(lease)).await?)
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        update: &CheckpointUpdate,
    ) -> Result<Lease, LeaseStoreError> {
        self.written(
            self.inner
                .update_checkpoint(&self.outer(lease), update)
                .await?,
        )
    }

    async fn request_handoff(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.written(self.inner.request_handoff(&self.outer(lease), to).await?)
    }

    async fn hand_over(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.written(self.inner.hand_over(&self.outer(lease), to).await?)
    }

    async fn accept_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.written(self.inner.accept_handoff(&self.outer(lease)).await?)
    }

    async fn cancel_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.written(self.inner.cancel_handoff(&self.outer(lease)).await?)
    }

    async fn update_child_shards(
        &self,
        lease: &Lease,
        child_shard_ids: &BTreeSet<String>,
    ) -> Result<Lease, LeaseStoreError> {
        self.written(
            self.inner
                .update_child_shards(&self.outer(lease), child_shard_ids)
                .await?,
        )
    }

    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError> {
        self.inner.delete_lease(&self.outer(lease)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::ExtendedSequenceNumber;
    use crate::leases::MemoryLeaseStore;

    #[tokio::test]
    async fn streams_sharing_a_table_see_only_their_own_leases() {
        let table = Arc::new(MemoryLeaseStore::new());
        let orders = StreamLeaseStore::new(
            table.clone(),
            StreamIdentifier::new("123456789012", "orders", 1_700_000_000),
        );
        let clicks = StreamLeaseStore::new(
            table.clone(),
            StreamIdentifier::new("123456789012", "clicks", 1_700_000_001),
        );
        let mut lease = Lease::new(
            "shardId-000000000001",
            ExtendedSequenceNumber::trim_horizon(),
        );
        lease.parent_shard_ids = BTreeSet::from(["shardId-000000000000".to_owned()]);
        assert!(orders.create_lease_if_absent(&lease).await.unwrap());
        assert!(clicks.create_lease_if_absent(&lease).await.unwrap());

        let raw = table.snapshot();
        let keys: Vec<&str> = raw.iter().map(|l| l.lease_key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "123456789012:clicks:1700000001:shardId-000000000001",
                "123456789012:orders:1700000000:shardId-000000000001",
            ]
        );
        assert_eq!(
            raw[1].multi_stream,
            Some((
                "123456789012:orders:1700000000".to_owned(),
                "shardId-000000000001".to_owned()
            ))
        );
        assert_eq!(raw[1].parent_shard_ids, lease.parent_shard_ids, "bare");

        let listed = orders.list_leases().await.unwrap();
        assert_eq!(listed, vec![lease.clone()]);
        let taken = orders.take_lease(&listed[0], "w1").await.unwrap();
        assert_eq!(taken.lease_key, "shardId-000000000001");
        assert!(taken.is_owned_by("w1"));
        assert_eq!(
            orders.list_lease_keys_owned_by("w1").await.unwrap(),
            vec!["shardId-000000000001".to_owned()]
        );
        assert!(clicks
            .list_lease_keys_owned_by("w1")
            .await
            .unwrap()
            .is_empty());
        let other = clicks
            .get_lease("shardId-000000000001")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            other.lease_owner, None,
            "the other stream's lease is untouched"
        );
        orders.renew_lease(&taken).await.unwrap();
        assert!(matches!(
            orders.renew_lease(&taken).await,
            Err(LeaseStoreError::ConditionFailed(_))
        ));
    }
}
