//! Lease table options against the emulators: a table created as configured (name, billing,
//! tags, the KCL 3 owner index), point-in-time recovery the emulator lacks failing with a
//! typed error, and a table made by the Java KCL 3 used as it is.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use integration_tests::kcl::{
    fast_builder, keyed_records, put_records, start_worker, Behaviour, Log,
};
use integration_tests::{
    create_stream, sdk_config, unique_name, wait_for, wait_table_active, TestResult,
};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore, LeaseStoreError, OWNER_INDEX_NAME};
use kinesis_consumer::{LeaseTableBilling, LeaseTableConfig, SchedulerError};

fn key(name: &str, key_type: KeyType) -> TestResult<KeySchemaElement> {
    Ok(KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()?)
}

fn string_attribute(name: &str) -> TestResult<AttributeDefinition> {
    Ok(AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_table_is_created_with_the_configured_name_billing_tags_and_owner_index(
) -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let stream = unique_name("kcl-table");
    let app = unique_name("kcl-table-app");
    let table = unique_name("kcl-table-custom");
    create_stream(&kinesis, &stream, 2).await?;
    let records = keyed_records("table", 40, 8);
    put_records(&kinesis, &stream, &records).await?;

    let mut options = LeaseTableConfig::default();
    options.table_name = Some(table.clone());
    options.billing = LeaseTableBilling::Provisioned {
        read_capacity_units: 5,
        write_capacity_units: 7,
    };
    options.tags = vec![("team".into(), "streams".into())];
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w1").lease_table(options.clone()),
        "w1",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("all records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await?;

    // Named as configured; nothing named after the application.
    let described = dynamodb.describe_table().table_name(&table).send().await?;
    let description = described.table().ok_or("no table description")?;
    let missing = dynamodb.describe_table().table_name(&app).send().await;
    assert!(
        missing.is_err(),
        "a table named after the application was created too"
    );
    let throughput = description
        .provisioned_throughput()
        .ok_or("no throughput")?;
    assert_eq!(throughput.read_capacity_units(), Some(5));
    assert_eq!(throughput.write_capacity_units(), Some(7));
    let index = description
        .global_secondary_indexes()
        .iter()
        .find(|index| index.index_name() == Some(OWNER_INDEX_NAME))
        .ok_or("no owner index")?;
    let keys: Vec<&str> = index
        .key_schema()
        .iter()
        .map(|k| k.attribute_name())
        .collect();
    assert_eq!(keys, ["leaseOwner", "leaseKey"]);
    let tags = dynamodb
        .list_tags_of_resource()
        .resource_arn(description.table_arn().ok_or("no table ARN")?)
        .send()
        .await?;
    assert!(
        tags.tags()
            .iter()
            .any(|t| t.key() == "team" && t.value() == "streams"),
        "tags: {:?}",
        tags.tags()
    );

    // The worker's leases, listed through the index, are the ones the table names it on.
    let store = DynamoDbLeaseStore::with_config(dynamodb.clone(), &table, options);
    store.create_table_if_missing().await?;
    assert!(store.uses_owner_index());
    let by_index: BTreeSet<String> = store
        .list_lease_keys_owned_by("w1")
        .await?
        .into_iter()
        .collect();
    let by_scan: BTreeSet<String> = store
        .list_leases()
        .await?
        .into_iter()
        .filter(|lease| lease.is_owned_by("w1"))
        .map(|lease| lease.lease_key)
        .collect();
    assert_eq!(by_index, by_scan);
    assert_eq!(by_index.len(), 2);
    assert!(store.list_lease_keys_owned_by("nobody").await?.is_empty());
    worker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_recovery_the_table_service_lacks_is_a_typed_error() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-pitr");
    let app = unique_name("kcl-pitr-app");
    create_stream(&kinesis, &stream, 1).await?;
    let mut options = LeaseTableConfig::default();
    options.point_in_time_recovery = true;
    let built = start_worker(
        fast_builder(&config, &stream, &app, "w1").lease_table(options),
        "w1",
        &Log::default(),
        Behaviour::default(),
    )
    .await;
    // dynalite has no continuous backups (real DynamoDB does; the unit test
    // `a_new_table_is_created_as_configured` checks the requests).
    let error = match built {
        Err(error) => error,
        Ok(_) => return Err("built although point-in-time recovery could not be enabled".into()),
    };
    match error.downcast_ref::<SchedulerError>() {
        Some(SchedulerError::LeaseTable(LeaseStoreError::Service(error))) => {
            assert_eq!(error.operation(), "DescribeContinuousBackups");
        }
        _ => return Err(format!("expected a lease table service error, got {error}").into()),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_by_the_java_kcl_3_is_used_as_is_and_its_attributes_kept() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let stream = unique_name("kcl-java3");
    let app = unique_name("kcl-java3-app");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("java3", 30, 3);
    let shards = put_records(&kinesis, &stream, &records).await?;

    // The table as the Java KCL 3 creates it: on-demand, with the owner index.
    dynamodb
        .create_table()
        .table_name(&app)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string_attribute("leaseKey")?)
        .attribute_definitions(string_attribute("leaseOwner")?)
        .key_schema(key("leaseKey", KeyType::Hash)?)
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(OWNER_INDEX_NAME)
                .key_schema(key("leaseOwner", KeyType::Hash)?)
                .key_schema(key("leaseKey", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()?,
        )
        .send()
        .await?;
    wait_table_active(&dynamodb, &app).await?;
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: &str| AttributeValue::N(v.to_owned());
    // A lease with an attribute this library does not know (one of the application's own)
    // and the KCL 3's measured throughput, which this library's renewals write too.
    dynamodb
        .put_item()
        .table_name(&app)
        .set_item(Some(HashMap::from([
            ("leaseKey".to_owned(), s(&shards[0])),
            ("leaseCounter".to_owned(), n("3")),
            ("checkpoint".to_owned(), s("TRIM_HORIZON")),
            ("checkpointSubSequenceNumber".to_owned(), n("0")),
            ("ownerSwitchesSinceCheckpoint".to_owned(), n("0")),
            ("throughputKBps".to_owned(), n("12345.5")),
            ("operatorNote".to_owned(), s("kept")),
        ])))
        .send()
        .await?;

    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "rust"),
        "rust",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("all records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // a few renewals
    worker.stop().await?;

    let item = dynamodb
        .get_item()
        .table_name(&app)
        .key("leaseKey", s(&shards[0]))
        .consistent_read(true)
        .send()
        .await?
        .item
        .ok_or("lease gone")?;
    let throughput = item
        .get("throughputKBps")
        .and_then(|v| v.as_n().ok())
        .ok_or("no throughputKBps")?;
    assert_ne!(
        throughput, "12345.5",
        "a renewal writes the throughput it measured: {item:?}"
    );
    assert_eq!(item.get("operatorNote"), Some(&s("kept")));
    let checkpoint = item
        .get("checkpoint")
        .and_then(|c| c.as_s().ok())
        .ok_or("no checkpoint")?;
    assert_ne!(
        checkpoint, "TRIM_HORIZON",
        "the worker checkpointed into the Java table"
    );
    // The Java table is used as it is; beside it, the Java KCL 3's coordinator tables.
    let tables = dynamodb.list_tables().send().await?;
    let mut ours: Vec<&String> = tables
        .table_names()
        .iter()
        .filter(|t| t.contains(&app))
        .collect();
    ours.sort();
    assert_eq!(
        ours,
        [
            &app,
            &format!("{app}-CoordinatorState"),
            &format!("{app}-WorkerMetricStats")
        ],
        "the lease table and the coordinator tables, nothing else"
    );
    let store = DynamoDbLeaseStore::new(dynamodb, &app);
    store.create_table_if_missing().await?;
    assert!(store.uses_owner_index(), "the Java KCL 3's index is used");
    Ok(())
}
