//! Table administration: creating a table this crate needs if it is missing (key schema,
//! billing, tags, deletion protection, the owner index), waiting until it is ACTIVE, and
//! point-in-time recovery. A table that exists is used as it is.

use std::time::Duration;

use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, IndexStatus, KeySchemaElement, KeyType,
    PointInTimeRecoverySpecification, PointInTimeRecoveryStatus, Projection, ProjectionType,
    ProvisionedThroughput, ScalarAttributeType, TableDescription, TableStatus, Tag,
};
use aws_sdk_dynamodb::Client;

use super::classify;
use super::codec::attributes::{LEASE_KEY, LEASE_OWNER};
use crate::error::{ErrorKind, ServiceError};
use crate::leases::store::LeaseStoreError;
use crate::leases::table::{LeaseTableBilling, LeaseTableConfig, OWNER_INDEX_NAME};

/// How long [`ensure_table`] waits for a new table to be ACTIVE.
pub(crate) const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// A table as this crate creates it: a string hash key, and optionally the lease table's
/// owner index; billing, tags, protection and backups as `config` says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableSpec<'a> {
    pub name: &'a str,
    pub hash_key: &'a str,
    /// The `LeaseOwnerToLeaseKeyIndex` (lease table only, and only when `config` asks).
    pub owner_index: bool,
    pub config: &'a LeaseTableConfig,
}

/// The table's description, or `None` when it does not exist.
pub(crate) async fn describe(
    client: &Client,
    table: &str,
) -> Result<Option<TableDescription>, LeaseStoreError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => Ok(out.table().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(classify("DescribeTable", table, e)),
    }
}

/// Creates the table if it does not exist, waits until it is ACTIVE (up to
/// [`TABLE_ACTIVE_TIMEOUT`]), confirms the tags of a table it created and, when asked,
/// switches point-in-time recovery on. Returns the ACTIVE table's description.
pub(crate) async fn ensure_table(
    client: &Client,
    spec: TableSpec<'_>,
) -> Result<TableDescription, LeaseStoreError> {
    let created = if describe(client, spec.name).await?.is_none() {
        create_table(client, spec).await?;
        true
    } else {
        false
    };
    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    // Soon at first (a local table service is ready in milliseconds, a cold start waits
    // for it), then every second at most (DynamoDB takes seconds).
    let mut pause = Duration::from_millis(25);
    let table = loop {
        match describe(client, spec.name).await? {
            Some(table) if table.table_status() == Some(&TableStatus::Active) => break table,
            _ if tokio::time::Instant::now() > deadline => {
                return Err(LeaseStoreError::NotActive {
                    table: spec.name.to_owned(),
                    waited: TABLE_ACTIVE_TIMEOUT,
                });
            }
            _ => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    };
    if created && !spec.config.tags.is_empty() {
        if let Some(arn) = table.table_arn() {
            tag_table(client, spec, arn).await?;
        }
    }
    if spec.config.point_in_time_recovery {
        ensure_point_in_time_recovery(client, spec.name).await?;
    }
    Ok(table)
}

/// The configured tags, as the SDK takes them.
fn tags(config: &LeaseTableConfig) -> Result<Vec<Tag>, BuildError> {
    config
        .tags
        .iter()
        .map(|(name, value)| Tag::builder().key(name).value(value).build())
        .collect()
}

async fn create_table(client: &Client, spec: TableSpec<'_>) -> Result<(), LeaseStoreError> {
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
    let throughput = match spec.config.billing {
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
    let mut request = client
        .create_table()
        .table_name(spec.name)
        .attribute_definitions(attribute(spec.hash_key)?)
        .key_schema(key(spec.hash_key, KeyType::Hash)?)
        .deletion_protection_enabled(spec.config.deletion_protection);
    request = match &throughput {
        None => request.billing_mode(BillingMode::PayPerRequest),
        Some(throughput) => request
            .billing_mode(BillingMode::Provisioned)
            .provisioned_throughput(throughput.clone()),
    };
    if spec.owner_index && spec.config.owner_index {
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
    if !spec.config.tags.is_empty() {
        request = request.set_tags(Some(tags(spec.config).map_err(invalid)?));
    }
    match request.send().await {
        Ok(_) => {
            tracing::info!(table = %spec.name, "created table");
            Ok(())
        }
        // Another worker created it at the same time.
        Err(e)
            if aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e)
                == Some("ResourceInUseException") =>
        {
            Ok(())
        }
        Err(e) => Err(classify("CreateTable", spec.name, e)),
    }
}

/// Puts the configured tags on the table. They were sent with CreateTable; this makes sure
/// of them (some emulators drop them there), and DynamoDB lets whoever may tag on create
/// also call TagResource.
async fn tag_table(client: &Client, spec: TableSpec<'_>, arn: &str) -> Result<(), LeaseStoreError> {
    let tags = tags(spec.config).map_err(unbuildable("TagResource"))?;
    client
        .tag_resource()
        .resource_arn(arn)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| classify("TagResource", spec.name, e))?;
    Ok(())
}

async fn ensure_point_in_time_recovery(
    client: &Client,
    table: &str,
) -> Result<(), LeaseStoreError> {
    let described = client
        .describe_continuous_backups()
        .table_name(table)
        .send()
        .await
        .map_err(|e| classify("DescribeContinuousBackups", table, e))?;
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
    client
        .update_continuous_backups()
        .table_name(table)
        .point_in_time_recovery_specification(specification)
        .send()
        .await
        .map_err(|e| classify("UpdateContinuousBackups", table, e))?;
    tracing::info!(%table, "enabled point-in-time recovery");
    Ok(())
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
pub(crate) fn has_owner_index(table: &TableDescription) -> bool {
    table.global_secondary_indexes().iter().any(|index| {
        index.index_name() == Some(OWNER_INDEX_NAME)
            && index.index_status() == Some(&IndexStatus::Active)
    })
}
