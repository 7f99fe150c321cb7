//! The lease table in DynamoDB, with the item schema of AWS's Java KCL 2.x so that an
//! application can move between the two libraries without losing its place: the store
//! (every write a single-item conditional write), the item codec ([`codec`]) and table
//! administration ([`admin`]).

pub(crate) mod admin;
pub(crate) mod codec;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::store::{owned_keys, CheckpointUpdate, LeaseStore, LeaseStoreError};
use super::table::{LeaseTableConfig, OWNER_INDEX_NAME};
use crate::error::{ErrorKind, ServiceError};
use crate::lease::Lease;
use admin::{has_owner_index, TableSpec};
use codec::attributes::*;
use codec::{is_lease_item, lease_from_item, lease_to_item, written_lease};

/// A [`LeaseStore`] backed by a DynamoDB table, created if missing as
/// [`LeaseTableConfig`] says (default: on-demand, with the owner index).
#[derive(Clone, Debug)]
pub struct DynamoDbLeaseStore {
    client: Client,
    table: String,
    config: LeaseTableConfig,
    /// Whether the table has an ACTIVE owner index (learnt when the table is checked).
    owner_index: Arc<AtomicBool>,
    /// The `application` label of its metric (default: the table name).
    application: String,
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
        let table = table.into();
        DynamoDbLeaseStore {
            client,
            application: table.clone(),
            table,
            config,
            owner_index: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The store of `application`'s scheduler: its metric is labelled with it.
    pub(crate) fn with_application(mut self, application: &str) -> Self {
        application.clone_into(&mut self.application);
        self
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
        let index = admin::describe(&self.client, &self.table)
            .await?
            .is_some_and(|t| has_owner_index(&t));
        self.owner_index.store(index, Ordering::Relaxed);
        Ok(index)
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

impl DynamoDbLeaseStore {
    /// Every lease in the table. Items that are not leases (the Java KCL 3.5 keeps its
    /// leader lock and worker metrics in the lease table, with an `entityType`) are left
    /// out; items that cannot be read as leases are skipped with an error log.
    async fn scan(&self, consistent: bool) -> Result<Vec<Lease>, LeaseStoreError> {
        let mut leases = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(consistent)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("Scan", &self.table, e))?;
            for item in page.items().iter().filter(|item| is_lease_item(item)) {
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
                        metrics::counter!(crate::metrics::LEASE_ITEMS_MALFORMED, "application" => self.application.clone()).increment(1);
                    }
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(leases);
            }
        }
    }
}

/// A failed call as a [`LeaseStoreError`]: a failed condition, throttling, or any other
/// service error (with the SDK's error as its source).
pub(crate) fn classify<E, R>(
    operation: &'static str,
    key: &str,
    error: SdkError<E, R>,
) -> LeaseStoreError
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

#[async_trait]
impl LeaseStore for DynamoDbLeaseStore {
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError> {
        let spec = TableSpec {
            name: &self.table,
            hash_key: LEASE_KEY,
            owner_index: true,
            config: &self.config,
        };
        let table = admin::ensure_table(&self.client, spec).await?;
        self.owner_index
            .store(has_owner_index(&table), Ordering::Relaxed);
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.scan(true).await
    }

    async fn list_leases_eventually_consistent(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.scan(false).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::table::LeaseTableBilling;
    use aws_sdk_dynamodb::types::{BillingMode, ProjectionType, TableStatus};

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
