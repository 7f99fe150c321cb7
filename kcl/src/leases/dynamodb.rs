//! The lease table in DynamoDB, with the item schema of AWS's Java KCL 2.x so that an
//! application can move between the two libraries without losing its place.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, IndexStatus,
    KeySchemaElement, KeyType, PointInTimeRecoverySpecification, PointInTimeRecoveryStatus,
    Projection, ProjectionType, ProvisionedThroughput, ScalarAttributeType, TableDescription,
    TableStatus, Tag,
};
use aws_sdk_dynamodb::Client;

use super::store::{owned_keys, CheckpointUpdate, LeaseStore, LeaseStoreError};
use super::table::{LeaseTableBilling, LeaseTableConfig, OWNER_INDEX_NAME};
use crate::error::{ErrorKind, ServiceError};
use crate::lease::{ExtendedSequenceNumber, Lease, SequencePosition};

/// Attribute names of the Java KCL 2.x lease table.
pub mod attributes {
    /// Hash key: the shard id.
    pub const LEASE_KEY: &str = "leaseKey";
    /// Owner worker id (absent when unassigned).
    pub const LEASE_OWNER: &str = "leaseOwner";
    /// Fencing counter.
    pub const LEASE_COUNTER: &str = "leaseCounter";
    /// Checkpoint sequence number or sentinel.
    pub const CHECKPOINT: &str = "checkpoint";
    /// Checkpoint sub-sequence number.
    pub const CHECKPOINT_SUB_SEQUENCE_NUMBER: &str = "checkpointSubSequenceNumber";
    /// Prepared checkpoint.
    pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
    /// Prepared checkpoint sub-sequence number.
    pub const PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER: &str = "pendingCheckpointSubSequenceNumber";
    /// Application state of the prepared checkpoint.
    pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
    /// Lease moves since the last checkpoint.
    pub const OWNER_SWITCHES_SINCE_CHECKPOINT: &str = "ownerSwitchesSinceCheckpoint";
    /// Parent shard ids (string set; the name is singular as in the Java KCL).
    pub const PARENT_SHARD_ID: &str = "parentShardId";
    /// Child shard ids (string set).
    pub const CHILD_SHARD_IDS: &str = "childShardIds";
    /// First hash key of the shard (decimal).
    pub const STARTING_HASH_KEY: &str = "startingHashKey";
    /// Last hash key of the shard (decimal).
    pub const ENDING_HASH_KEY: &str = "endingHashKey";
    /// The worker that still processes the shard during a graceful handoff (Java KCL 3).
    pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
    /// The counter written by a completed graceful handoff (this crate's own attribute).
    pub const HANDOFF_COUNTER: &str = "handoffCounter";
    /// The worker that accepted a lease offered to it by a holder shutting down (this
    /// crate's own attribute).
    pub const HANDOFF_ACCEPTED_BY: &str = "handoffAcceptedBy";
    /// The data read from the shard, KiB per second (Java KCL 3).
    pub const THROUGHPUT_KBPS: &str = "throughputKBps";
    /// The stream identifier (`account:stream:creationEpoch`) of a multi-stream lease.
    pub const STREAM_NAME: &str = "streamName";
    /// The shard id of a multi-stream lease.
    pub const SHARD_ID: &str = "shardId";
}

use attributes::*;

/// How long [`LeaseStore::create_table_if_missing`] waits for a new table to be ACTIVE.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// A [`LeaseStore`] backed by a DynamoDB table, created if missing as
/// [`LeaseTableConfig`] says (default: on-demand, with the owner index).
#[derive(Clone, Debug)]
pub struct DynamoDbLeaseStore {
    client: Client,
    table: String,
    config: LeaseTableConfig,
    /// Whether the table has an ACTIVE owner index (learnt when the table is checked).
    owner_index: Arc<AtomicBool>,
}

impl DynamoDbLeaseStore {
    /// A store using `table` (by convention the application name), created with the
    /// default [`LeaseTableConfig`] if missing.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self::with_config(client, table, LeaseTableConfig::default())
    }

    /// A store using `table`, created as `config` says if missing (`config.table_name` is
    /// not consulted: `table` is the name).
    pub fn with_config(client: Client, table: impl Into<String>, config: LeaseTableConfig) -> Self {
        DynamoDbLeaseStore {
            client,
            table: table.into(),
            config,
            owner_index: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether [`LeaseStore::list_lease_keys_owned_by`] queries the owner index (known once
    /// [`LeaseStore::create_table_if_missing`] has checked the table).
    pub fn uses_owner_index(&self) -> bool {
        self.owner_index.load(Ordering::Relaxed)
    }

    /// Reads the table's description, without creating the table, to learn whether the
    /// owner index is there and active (for a store that will not call
    /// [`LeaseStore::create_table_if_missing`], such as an operator's tool). Returns whether
    /// [`LeaseStore::list_lease_keys_owned_by`] now queries the index.
    pub async fn check_owner_index(&self) -> Result<bool, LeaseStoreError> {
        let index = self.describe().await?.is_some_and(|t| has_owner_index(&t));
        self.owner_index.store(index, Ordering::Relaxed);
        Ok(index)
    }

    async fn describe(&self) -> Result<Option<TableDescription>, LeaseStoreError> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(out) => Ok(out.table().cloned()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify("DescribeTable", &self.table, e)),
        }
    }

    /// The configured tags, as the SDK takes them.
    fn tags(&self) -> Result<Vec<Tag>, BuildError> {
        self.config
            .tags
            .iter()
            .map(|(name, value)| Tag::builder().key(name).value(value).build())
            .collect()
    }

    async fn create_table(&self) -> Result<(), LeaseStoreError> {
        let invalid = unbuildable("CreateTable");
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(invalid)
        };
        let key = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .map_err(invalid)
        };
        let throughput = match self.config.billing {
            LeaseTableBilling::OnDemand => None,
            LeaseTableBilling::Provisioned {
                read_capacity_units,
                write_capacity_units,
            } => Some(
                ProvisionedThroughput::builder()
                    .read_capacity_units(read_capacity_units)
                    .write_capacity_units(write_capacity_units)
                    .build()
                    .map_err(invalid)?,
            ),
        };
        let mut request = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute(LEASE_KEY)?)
            .key_schema(key(LEASE_KEY, KeyType::Hash)?)
            .deletion_protection_enabled(self.config.deletion_protection);
        request = match &throughput {
            None => request.billing_mode(BillingMode::PayPerRequest),
            Some(throughput) => request
                .billing_mode(BillingMode::Provisioned)
                .provisioned_throughput(throughput.clone()),
        };
        if self.config.owner_index {
            request = request
                .attribute_definitions(attribute(LEASE_OWNER)?)
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(OWNER_INDEX_NAME)
                        .key_schema(key(LEASE_OWNER, KeyType::Hash)?)
                        .key_schema(key(LEASE_KEY, KeyType::Range)?)
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::KeysOnly)
                                .build(),
                        )
                        .set_provisioned_throughput(throughput)
                        .build()
                        .map_err(invalid)?,
                );
        }
        if !self.config.tags.is_empty() {
            request = request.set_tags(Some(self.tags().map_err(invalid)?));
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(table = %self.table, "created lease table");
                Ok(())
            }
            // Another worker created it at the same time.
            Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(classify("CreateTable", &self.table, e)),
        }
    }

    /// Puts the configured tags on the table. They were sent with CreateTable; this makes
    /// sure of them (some emulators drop them there), and DynamoDB lets whoever may tag on
    /// create also call TagResource.
    async fn tag_table(&self, arn: &str) -> Result<(), LeaseStoreError> {
        let tags = self.tags().map_err(unbuildable("TagResource"))?;
        self.client
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| classify("TagResource", &self.table, e))?;
        Ok(())
    }

    async fn ensure_point_in_time_recovery(&self) -> Result<(), LeaseStoreError> {
        let described = self
            .client
            .describe_continuous_backups()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| classify("DescribeContinuousBackups", &self.table, e))?;
        let status = described
            .continuous_backups_description()
            .and_then(|d| d.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status());
        if status == Some(&PointInTimeRecoveryStatus::Enabled) {
            return Ok(());
        }
        let specification = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(unbuildable("UpdateContinuousBackups"))?;
        self.client
            .update_continuous_backups()
            .table_name(&self.table)
            .point_in_time_recovery_specification(specification)
            .send()
            .await
            .map_err(|e| classify("UpdateContinuousBackups", &self.table, e))?;
        tracing::info!(table = %self.table, "enabled point-in-time recovery of the lease table");
        Ok(())
    }

    /// An update of a handoff's owner fields (`:to` is the worker the lease goes to, `:from`
    /// its holder), without a counter bump. Condition: that handoff is still under way.
    async fn owner_fields_update(
        &self,
        lease: &Lease,
        update: &str,
    ) -> Result<Lease, LeaseStoreError> {
        let (Some(to), Some(from)) = (&lease.lease_owner, &lease.checkpoint_owner) else {
            return Err(LeaseStoreError::ConditionFailed(lease.lease_key.clone()));
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(lease.lease_key.clone()))
            .update_expression(update)
            .condition_expression("#owner = :to AND #checkpoint_owner = :from")
            .expression_attribute_names("#owner", LEASE_OWNER)
            .expression_attribute_names("#checkpoint_owner", CHECKPOINT_OWNER)
            .expression_attribute_names("#accepted", HANDOFF_ACCEPTED_BY)
            .expression_attribute_values(":to", AttributeValue::S(to.clone()))
            .expression_attribute_values(":from", AttributeValue::S(from.clone()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify("UpdateItem", &lease.lease_key, e))?;
        written_lease(&result)
    }

    async fn conditional_update(
        &self,
        lease: &Lease,
        check_owner: bool,
        set: &str,
        mut values: HashMap<String, AttributeValue>,
        remove: Option<&str>,
    ) -> Result<Lease, LeaseStoreError> {
        let mut condition = "#counter = :old_counter".to_owned();
        values.insert(
            ":old_counter".into(),
            AttributeValue::N(lease.lease_counter.to_string()),
        );
        values.insert(":one".into(), AttributeValue::N("1".into()));
        let mut names = HashMap::from([("#counter".to_owned(), LEASE_COUNTER.to_owned())]);
        if check_owner {
            names.insert("#owner".into(), LEASE_OWNER.into());
            match &lease.lease_owner {
                Some(owner) => {
                    condition.push_str(" AND #owner = :old_owner");
                    values.insert(":old_owner".into(), AttributeValue::S(owner.clone()));
                }
                None => condition.push_str(" AND attribute_not_exists(#owner)"),
            }
            names.insert("#old_checkpoint_owner".into(), CHECKPOINT_OWNER.into());
            match &lease.checkpoint_owner {
                Some(owner) => {
                    condition.push_str(" AND #old_checkpoint_owner = :old_checkpoint_owner");
                    values.insert(
                        ":old_checkpoint_owner".into(),
                        AttributeValue::S(owner.clone()),
                    );
                }
                None => condition.push_str(" AND attribute_not_exists(#old_checkpoint_owner)"),
            }
        }
        let mut expression = format!("SET #counter = #counter + :one{set}");
        if let Some(remove) = remove {
            expression.push_str(" REMOVE ");
            expression.push_str(remove);
        }
        // Names used only in `set`/`remove` must be declared too.
        for attribute in [
            LEASE_OWNER,
            CHECKPOINT,
            CHECKPOINT_SUB_SEQUENCE_NUMBER,
            PENDING_CHECKPOINT,
            PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER,
            PENDING_CHECKPOINT_STATE,
            OWNER_SWITCHES_SINCE_CHECKPOINT,
            CHILD_SHARD_IDS,
            CHECKPOINT_OWNER,
            HANDOFF_COUNTER,
            HANDOFF_ACCEPTED_BY,
            THROUGHPUT_KBPS,
        ] {
            let placeholder = format!("#{attribute}");
            if mentions(&expression, &placeholder) {
                names.insert(placeholder, attribute.to_owned());
            }
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(lease.lease_key.clone()))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify("UpdateItem", &lease.lease_key, e))?;
        written_lease(&result)
    }
}

/// The lease an UpdateItem with `ReturnValues=ALL_NEW` wrote.
fn written_lease(
    output: &aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
) -> Result<Lease, LeaseStoreError> {
    let item = output
        .attributes()
        .ok_or_else(|| LeaseStoreError::Malformed("update returned no item".into()))?;
    lease_from_item(item)
}

fn classify<E, R>(operation: &'static str, key: &str, error: SdkError<E, R>) -> LeaseStoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if error.code() == Some("ConditionalCheckFailedException") {
        return LeaseStoreError::ConditionFailed(key.into());
    }
    let error = ServiceError::from_sdk(operation, error);
    match error.kind() {
        ErrorKind::Throttled => LeaseStoreError::Throttled(error),
        _ => LeaseStoreError::Service(error),
    }
}

/// The DynamoDB item for a lease, attribute for attribute as the Java KCL writes it.
pub fn lease_to_item(lease: &Lease) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::new();
    item.insert(LEASE_KEY.into(), AttributeValue::S(lease.lease_key.clone()));
    if let Some(owner) = &lease.lease_owner {
        item.insert(LEASE_OWNER.into(), AttributeValue::S(owner.clone()));
    }
    item.insert(
        LEASE_COUNTER.into(),
        AttributeValue::N(lease.lease_counter.to_string()),
    );
    item.insert(
        CHECKPOINT.into(),
        AttributeValue::S(lease.checkpoint.position.as_str().to_owned()),
    );
    item.insert(
        CHECKPOINT_SUB_SEQUENCE_NUMBER.into(),
        AttributeValue::N(lease.checkpoint.sub_sequence_number.to_string()),
    );
    if let Some(pending) = &lease.pending_checkpoint {
        item.insert(
            PENDING_CHECKPOINT.into(),
            AttributeValue::S(pending.position.as_str().to_owned()),
        );
        item.insert(
            PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER.into(),
            AttributeValue::N(pending.sub_sequence_number.to_string()),
        );
    }
    if let Some(state) = &lease.pending_checkpoint_state {
        item.insert(
            PENDING_CHECKPOINT_STATE.into(),
            AttributeValue::B(Blob::new(state.clone())),
        );
    }
    item.insert(
        OWNER_SWITCHES_SINCE_CHECKPOINT.into(),
        AttributeValue::N(lease.owner_switches_since_checkpoint.to_string()),
    );
    // DynamoDB rejects empty sets: absent means empty.
    if !lease.parent_shard_ids.is_empty() {
        item.insert(
            PARENT_SHARD_ID.into(),
            AttributeValue::Ss(lease.parent_shard_ids.iter().cloned().collect()),
        );
    }
    if !lease.child_shard_ids.is_empty() {
        item.insert(
            CHILD_SHARD_IDS.into(),
            AttributeValue::Ss(lease.child_shard_ids.iter().cloned().collect()),
        );
    }
    if let Some((start, end)) = &lease.hash_key_range {
        item.insert(STARTING_HASH_KEY.into(), AttributeValue::S(start.clone()));
        item.insert(ENDING_HASH_KEY.into(), AttributeValue::S(end.clone()));
    }
    if let Some(owner) = &lease.checkpoint_owner {
        item.insert(CHECKPOINT_OWNER.into(), AttributeValue::S(owner.clone()));
    }
    if let Some(counter) = lease.handoff_counter {
        item.insert(
            HANDOFF_COUNTER.into(),
            AttributeValue::N(counter.to_string()),
        );
    }
    if let Some(worker) = &lease.handoff_accepted_by {
        item.insert(
            HANDOFF_ACCEPTED_BY.into(),
            AttributeValue::S(worker.clone()),
        );
    }
    if let Some(throughput) = lease.throughput_kbps {
        item.insert(
            THROUGHPUT_KBPS.into(),
            AttributeValue::N(throughput.to_string()),
        );
    }
    if let Some((stream, shard)) = &lease.multi_stream {
        item.insert(STREAM_NAME.into(), AttributeValue::S(stream.clone()));
        item.insert(SHARD_ID.into(), AttributeValue::S(shard.clone()));
    }
    item
}

/// Reads a lease from a DynamoDB item in the Java KCL 2.x schema. Attributes other than
/// `leaseKey` and `leaseCounter` may be absent.
pub fn lease_from_item(item: &HashMap<String, AttributeValue>) -> Result<Lease, LeaseStoreError> {
    let string = |name: &str| -> Result<Option<String>, LeaseStoreError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
            Some(other) => Err(LeaseStoreError::Malformed(format!(
                "{name} is not a string: {other:?}"
            ))),
        }
    };
    let number = |name: &str| -> Result<Option<u64>, LeaseStoreError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| LeaseStoreError::Malformed(format!("{name} is not a u64: {n}"))),
            Some(other) => Err(LeaseStoreError::Malformed(format!(
                "{name} is not a number: {other:?}"
            ))),
        }
    };
    let set = |name: &str| -> Result<BTreeSet<String>, LeaseStoreError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(BTreeSet::new()),
            Some(AttributeValue::Ss(values)) => Ok(values.iter().cloned().collect()),
            Some(other) => Err(LeaseStoreError::Malformed(format!(
                "{name} is not a string set: {other:?}"
            ))),
        }
    };
    let position = |name: &str| -> Result<Option<SequencePosition>, LeaseStoreError> {
        string(name)?
            .map(|s| {
                SequencePosition::parse(&s)
                    .ok_or_else(|| LeaseStoreError::Malformed(format!("{name} is {s:?}")))
            })
            .transpose()
    };
    let lease_key = string(LEASE_KEY)?
        .ok_or_else(|| LeaseStoreError::Malformed(format!("item without {LEASE_KEY}")))?;
    let checkpoint = ExtendedSequenceNumber {
        position: position(CHECKPOINT)?.unwrap_or(SequencePosition::TrimHorizon),
        sub_sequence_number: number(CHECKPOINT_SUB_SEQUENCE_NUMBER)?.unwrap_or(0),
    };
    let pending_checkpoint = position(PENDING_CHECKPOINT)?.map(|p| ExtendedSequenceNumber {
        position: p,
        sub_sequence_number: 0,
    });
    let pending_checkpoint = match pending_checkpoint {
        Some(mut p) => {
            p.sub_sequence_number = number(PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER)?.unwrap_or(0);
            Some(p)
        }
        None => None,
    };
    let pending_checkpoint_state = match item.get(PENDING_CHECKPOINT_STATE) {
        None | Some(AttributeValue::Null(_)) => None,
        Some(AttributeValue::B(b)) => Some(b.as_ref().to_vec()),
        Some(other) => {
            return Err(LeaseStoreError::Malformed(format!(
                "{PENDING_CHECKPOINT_STATE} is not binary: {other:?}"
            )))
        }
    };
    let hash_key_range = match (string(STARTING_HASH_KEY)?, string(ENDING_HASH_KEY)?) {
        (Some(start), Some(end)) => Some((start, end)),
        _ => None,
    };
    Ok(Lease {
        lease_key,
        lease_owner: string(LEASE_OWNER)?,
        lease_counter: number(LEASE_COUNTER)?.unwrap_or(0),
        checkpoint,
        pending_checkpoint,
        pending_checkpoint_state,
        owner_switches_since_checkpoint: number(OWNER_SWITCHES_SINCE_CHECKPOINT)?.unwrap_or(0),
        parent_shard_ids: set(PARENT_SHARD_ID)?,
        child_shard_ids: set(CHILD_SHARD_IDS)?,
        hash_key_range,
        checkpoint_owner: string(CHECKPOINT_OWNER)?,
        handoff_counter: number(HANDOFF_COUNTER)?,
        handoff_accepted_by: string(HANDOFF_ACCEPTED_BY)?,
        // A measurement, not state: a value that is not a number is ignored.
        throughput_kbps: item
            .get(THROUGHPUT_KBPS)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|t| t.is_finite()),
        multi_stream: string(STREAM_NAME)?.zip(string(SHARD_ID)?),
    })
}

#[async_trait]
impl LeaseStore for DynamoDbLeaseStore {
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError> {
        let created = if self.describe().await?.is_none() {
            self.create_table().await?;
            true
        } else {
            false
        };
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
        // Soon at first (a local table service is ready in milliseconds, a cold start
        // waits for it), then every second at most (DynamoDB takes seconds).
        let mut pause = Duration::from_millis(25);
        let table = loop {
            match self.describe().await? {
                Some(table) if table.table_status() == Some(&TableStatus::Active) => break table,
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(LeaseStoreError::NotActive {
                        table: self.table.clone(),
                        waited: TABLE_ACTIVE_TIMEOUT,
                    });
                }
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        };
        self.owner_index
            .store(has_owner_index(&table), Ordering::Relaxed);
        if created && !self.config.tags.is_empty() {
            if let Some(arn) = table.table_arn() {
                self.tag_table(arn).await?;
            }
        }
        if self.config.point_in_time_recovery {
            self.ensure_point_in_time_recovery().await?;
        }
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        let mut leases = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("Scan", &self.table, e))?;
            for item in page.items() {
                // One bad item must not stop taking, syncing and parent checks for the
                // whole fleet: skip it, loudly.
                match lease_from_item(item) {
                    Ok(lease) => leases.push(lease),
                    Err(error) => {
                        let key = match item.get(LEASE_KEY) {
                            Some(AttributeValue::S(key)) => key.clone(),
                            _ => String::from("?"),
                        };
                        tracing::error!(table = %self.table, lease_key = %key, %error, "skipping a malformed lease item");
                        metrics::counter!("kinesis_consumer_lease_items_malformed").increment(1);
                    }
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(leases);
            }
        }
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(lease_key.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem", lease_key, e))?;
        out.item().map(lease_from_item).transpose()
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, LeaseStoreError> {
        if !self.uses_owner_index() {
            return Ok(owned_keys(self.list_leases().await?, owner));
        }
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(OWNER_INDEX_NAME)
                .key_condition_expression("#owner = :owner")
                .expression_attribute_names("#owner", LEASE_OWNER)
                .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("Query", &self.table, e))?;
            keys.extend(
                page.items()
                    .iter()
                    .filter_map(|item| match item.get(LEASE_KEY) {
                        Some(AttributeValue::S(key)) => Some(key.clone()),
                        _ => None,
                    }),
            );
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(keys);
            }
        }
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(lease_to_item(lease)))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", LEASE_KEY)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => match classify("PutItem", &lease.lease_key, e) {
                LeaseStoreError::ConditionFailed(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        match lease.throughput_kbps {
            Some(throughput) => {
                let values = HashMap::from([(
                    ":throughput".to_owned(),
                    AttributeValue::N(throughput.to_string()),
                )]);
                self.conditional_update(
                    lease,
                    true,
                    ", #throughputKBps = :throughput",
                    values,
                    None,
                )
                .await
            }
            None => {
                self.conditional_update(lease, true, "", HashMap::new(), None)
                    .await
            }
        }
    }

    fn lists_owned_keys_cheaply(&self) -> bool {
        self.uses_owner_index()
    }

    async fn take_lease(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseStoreError> {
        let (set, values) = owner_change(lease, owner);
        self.conditional_update(lease, false, &set, values, Some(ENDS_HANDOFF))
            .await
    }

    async fn evict_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        // During a handoff the lease goes to the worker it was going to, as the Java KCL 3
        // evicts it.
        let remove = if lease.handoff_pending() {
            ENDS_HANDOFF
        } else {
            "#leaseOwner, #handoffAcceptedBy"
        };
        self.conditional_update(lease, true, "", HashMap::new(), Some(remove))
            .await
    }

    async fn request_handoff(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        let Some(from) = &lease.lease_owner else {
            return Err(LeaseStoreError::ConditionFailed(lease.lease_key.clone()));
        };
        // No counter bump, as the Java KCL 3: the holder's next write finds the owner
        // changed, reads the item and learns of the request.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(lease.lease_key.clone()))
            .update_expression("SET #owner = :to, #checkpoint_owner = :from REMOVE #accepted")
            .condition_expression("#owner = :from AND attribute_not_exists(#checkpoint_owner)")
            .expression_attribute_names("#owner", LEASE_OWNER)
            .expression_attribute_names("#checkpoint_owner", CHECKPOINT_OWNER)
            .expression_attribute_names("#accepted", HANDOFF_ACCEPTED_BY)
            .expression_attribute_values(":to", AttributeValue::S(to.to_owned()))
            .expression_attribute_values(":from", AttributeValue::S(from.clone()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify("UpdateItem", &lease.lease_key, e))?;
        written_lease(&result)
    }

    async fn hand_over(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        let (mut set, mut values) = owner_change(lease, to);
        set.push_str(", #handoffCounter = :handoff_counter");
        values.insert(
            ":handoff_counter".into(),
            AttributeValue::N((lease.lease_counter + 1).to_string()),
        );
        self.conditional_update(lease, true, &set, values, Some(ENDS_HANDOFF))
            .await
    }

    async fn accept_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.owner_fields_update(lease, "SET #accepted = :to").await
    }

    async fn cancel_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.owner_fields_update(
            lease,
            "SET #owner = :from REMOVE #checkpoint_owner, #accepted",
        )
        .await
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        update: &CheckpointUpdate,
    ) -> Result<Lease, LeaseStoreError> {
        let mut values = HashMap::from([
            (
                ":checkpoint".to_owned(),
                AttributeValue::S(update.checkpoint.position.as_str().to_owned()),
            ),
            (
                ":sub".to_owned(),
                AttributeValue::N(update.checkpoint.sub_sequence_number.to_string()),
            ),
            (":zero".to_owned(), AttributeValue::N("0".into())),
        ]);
        let mut set = ", #checkpoint = :checkpoint, #checkpointSubSequenceNumber = :sub, \
                       #ownerSwitchesSinceCheckpoint = :zero"
            .to_owned();
        let mut remove = Vec::new();
        match &update.pending_checkpoint {
            Some(pending) => {
                set.push_str(
                    ", #pendingCheckpoint = :pending, \
                     #pendingCheckpointSubSequenceNumber = :pending_sub",
                );
                values.insert(
                    ":pending".into(),
                    AttributeValue::S(pending.position.as_str().to_owned()),
                );
                values.insert(
                    ":pending_sub".into(),
                    AttributeValue::N(pending.sub_sequence_number.to_string()),
                );
            }
            None => {
                remove.push("#pendingCheckpoint");
                remove.push("#pendingCheckpointSubSequenceNumber");
            }
        }
        match &update.pending_checkpoint_state {
            Some(state) => {
                set.push_str(", #pendingCheckpointState = :state");
                values.insert(":state".into(), AttributeValue::B(Blob::new(state.clone())));
            }
            None => remove.push("#pendingCheckpointState"),
        }
        let remove = remove.join(", ");
        self.conditional_update(
            lease,
            true,
            &set,
            values,
            (!remove.is_empty()).then_some(remove.as_str()),
        )
        .await
    }

    async fn update_child_shards(
        &self,
        lease: &Lease,
        child_shard_ids: &BTreeSet<String>,
    ) -> Result<Lease, LeaseStoreError> {
        if child_shard_ids.is_empty() {
            return self
                .conditional_update(lease, true, "", HashMap::new(), Some("#childShardIds"))
                .await;
        }
        let values = HashMap::from([(
            ":children".to_owned(),
            AttributeValue::Ss(child_shard_ids.iter().cloned().collect()),
        )]);
        self.conditional_update(lease, true, ", #childShardIds = :children", values, None)
            .await
    }

    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(lease.lease_key.clone()))
            .condition_expression("#counter = :counter")
            .expression_attribute_names("#counter", LEASE_COUNTER)
            .expression_attribute_values(
                ":counter",
                AttributeValue::N(lease.lease_counter.to_string()),
            )
            .send()
            .await
            .map_err(|e| classify("DeleteItem", &lease.lease_key, e))?;
        Ok(())
    }
}

/// What a write that ends a handoff removes.
const ENDS_HANDOFF: &str = "#checkpointOwner, #handoffAcceptedBy";

/// Whether `expression` uses `placeholder` as a whole token (`#checkpoint` is not in
/// `#checkpointOwner`).
fn mentions(expression: &str, placeholder: &str) -> bool {
    expression.match_indices(placeholder).any(|(at, _)| {
        !expression[at + placeholder.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The `SET` clause (after the counter's) and values that make `owner` the owner, counting
/// an owner switch when the worker processing the shard changes.
fn owner_change(lease: &Lease, owner: &str) -> (String, HashMap<String, AttributeValue>) {
    let mut values = HashMap::from([(":owner".to_owned(), AttributeValue::S(owner.into()))]);
    let set = if lease.actual_owner() == Some(owner) {
        ", #leaseOwner = :owner".to_owned()
    } else {
        values.insert(":zero".into(), AttributeValue::N("0".into()));
        ", #leaseOwner = :owner, #ownerSwitchesSinceCheckpoint = \
         if_not_exists(#ownerSwitchesSinceCheckpoint, :zero) + :one"
            .to_owned()
    };
    (set, values)
}

/// A request of `operation` the SDK refused to build (a required field missing): a typed
/// invalid-request error, the builder's error as its source.
fn unbuildable(operation: &'static str) -> impl Fn(BuildError) -> LeaseStoreError + Copy {
    move |e| {
        LeaseStoreError::Service(
            ServiceError::new(operation, ErrorKind::InvalidRequest, e.to_string()).with_source(e),
        )
    }
}

/// Whether the table has the owner index (`LeaseOwnerToLeaseKeyIndex`), active.
fn has_owner_index(table: &TableDescription) -> bool {
    table.global_secondary_indexes().iter().any(|index| {
        index.index_name() == Some(OWNER_INDEX_NAME)
            && index.index_status() == Some(&IndexStatus::Active)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_matched_as_whole_tokens() {
        assert!(mentions("SET #checkpoint = :c", "#checkpoint"));
        assert!(mentions("REMOVE #a, #checkpoint", "#checkpoint"));
        assert!(!mentions("REMOVE #checkpointOwner", "#checkpoint"));
        assert!(mentions(
            "REMOVE #checkpointOwner, #checkpoint",
            "#checkpoint"
        ));
    }

    #[test]
    fn item_round_trip() {
        let mut lease = Lease::new(
            "shardId-000000000001",
            ExtendedSequenceNumber::new("123", 4),
        );
        lease.lease_owner = Some("worker-a".into());
        lease.lease_counter = 17;
        lease.pending_checkpoint = Some(ExtendedSequenceNumber::new("130", 0));
        lease.pending_checkpoint_state = Some(b"state".to_vec());
        lease.owner_switches_since_checkpoint = 2;
        lease.parent_shard_ids = BTreeSet::from(["shardId-000000000000".to_owned()]);
        lease.child_shard_ids = BTreeSet::from(["shardId-000000000002".to_owned()]);
        lease.hash_key_range = Some(("0".into(), "340282366920938463463374607431768211455".into()));
        lease.checkpoint_owner = Some("worker-b".into());
        lease.handoff_counter = Some(12);
        lease.handoff_accepted_by = Some("worker-a".into());
        lease.throughput_kbps = Some(12.5);
        lease.multi_stream = Some((
            "123456789012:orders:1700000000".into(),
            "shardId-000000000001".into(),
        ));
        let item = lease_to_item(&lease);
        assert_eq!(
            item.get(CHECKPOINT_OWNER),
            Some(&AttributeValue::S("worker-b".into()))
        );
        assert_eq!(item.get(CHECKPOINT), Some(&AttributeValue::S("123".into())));
        assert_eq!(
            item.get(LEASE_COUNTER),
            Some(&AttributeValue::N("17".into()))
        );
        assert!(matches!(
            item.get(PARENT_SHARD_ID),
            Some(AttributeValue::Ss(_))
        ));
        assert_eq!(lease_from_item(&item).unwrap(), lease);

        let bare = Lease::new("s", ExtendedSequenceNumber::shard_end());
        let item = lease_to_item(&bare);
        assert!(!item.contains_key(LEASE_OWNER));
        assert!(!item.contains_key(PARENT_SHARD_ID));
        assert!(!item.contains_key(CHECKPOINT_OWNER));
        assert_eq!(lease_from_item(&item).unwrap(), bare);
    }

    /// The table settings reach CreateTable, the tags are confirmed once the table is
    /// ACTIVE, point-in-time recovery is switched on, and the owner index is then used.
    #[tokio::test]
    async fn a_new_table_is_created_as_configured() {
        use aws_sdk_dynamodb::operation::describe_continuous_backups::DescribeContinuousBackupsOutput;
        use aws_sdk_dynamodb::operation::describe_table::DescribeTableOutput;
        use aws_sdk_dynamodb::operation::query::QueryOutput;
        use aws_sdk_dynamodb::types::{
            GlobalSecondaryIndexDescription, IndexStatus, TableDescription,
        };
        use aws_sdk_dynamodb::Client;
        use aws_smithy_mocks::{mock, mock_client, RuleMode};

        let missing = mock!(Client::describe_table).then_error(|| {
            aws_sdk_dynamodb::operation::describe_table::DescribeTableError::ResourceNotFoundException(
                aws_sdk_dynamodb::types::error::ResourceNotFoundException::builder().build(),
            )
        });
        let create = mock!(Client::create_table)
            .match_requests(|r| {
                let index = &r.global_secondary_indexes()[0];
                r.table_name() == Some("custom")
                    && r.billing_mode() == Some(&BillingMode::Provisioned)
                    && r.provisioned_throughput()
                        .map(|t| (t.read_capacity_units(), t.write_capacity_units()))
                        == Some((3, 4))
                    && r.deletion_protection_enabled() == Some(true)
                    && r.tags().len() == 1
                    && r.tags()[0].key() == "team"
                    && index.index_name() == OWNER_INDEX_NAME
                    && index.key_schema()[0].attribute_name() == LEASE_OWNER
                    && index.key_schema()[1].attribute_name() == LEASE_KEY
                    && index.projection().and_then(|p| p.projection_type())
                        == Some(&ProjectionType::KeysOnly)
            })
            .then_output(|| {
                aws_sdk_dynamodb::operation::create_table::CreateTableOutput::builder().build()
            });
        let active = mock!(Client::describe_table).then_output(|| {
            DescribeTableOutput::builder()
                .table(
                    TableDescription::builder()
                        .table_name("custom")
                        .table_arn("arn:aws:dynamodb:us-east-1:123456789012:table/custom")
                        .table_status(TableStatus::Active)
                        .global_secondary_indexes(
                            GlobalSecondaryIndexDescription::builder()
                                .index_name(OWNER_INDEX_NAME)
                                .index_status(IndexStatus::Active)
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
        let tag = mock!(Client::tag_resource)
            .match_requests(|r| {
                r.resource_arn() == Some("arn:aws:dynamodb:us-east-1:123456789012:table/custom")
                    && r.tags().len() == 1
            })
            .then_output(|| {
                aws_sdk_dynamodb::operation::tag_resource::TagResourceOutput::builder().build()
            });
        let backups = mock!(Client::describe_continuous_backups)
            .then_output(|| DescribeContinuousBackupsOutput::builder().build());
        let enable = mock!(Client::update_continuous_backups)
            .match_requests(|r| {
                r.point_in_time_recovery_specification()
                    .map(|p| p.point_in_time_recovery_enabled())
                    == Some(true)
            })
            .then_output(|| {
                aws_sdk_dynamodb::operation::update_continuous_backups::UpdateContinuousBackupsOutput::builder().build()
            });
        let query = mock!(Client::query)
            .match_requests(|r| r.index_name() == Some(OWNER_INDEX_NAME))
            .then_output(|| {
                QueryOutput::builder()
                    .items(HashMap::from([
                        (LEASE_KEY.to_owned(), AttributeValue::S("shardId-1".into())),
                        (LEASE_OWNER.to_owned(), AttributeValue::S("w".into())),
                    ]))
                    .build()
            });
        let client = mock_client!(
            aws_sdk_dynamodb,
            RuleMode::Sequential,
            [&missing, &create, &active, &tag, &backups, &enable, &query]
        );
        let config = LeaseTableConfig {
            table_name: None,
            billing: LeaseTableBilling::Provisioned {
                read_capacity_units: 3,
                write_capacity_units: 4,
            },
            tags: vec![("team".into(), "streams".into())],
            point_in_time_recovery: true,
            deletion_protection: true,
            owner_index: true,
        };
        let store = DynamoDbLeaseStore::with_config(client, "custom", config);
        store.create_table_if_missing().await.unwrap();
        assert!(store.uses_owner_index());
        assert_eq!(
            store.list_lease_keys_owned_by("w").await.unwrap(),
            vec!["shardId-1".to_owned()]
        );
        for rule in [&missing, &create, &active, &tag, &backups, &enable, &query] {
            assert_eq!(rule.num_calls(), 1);
        }
    }
}
