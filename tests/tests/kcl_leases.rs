//! The lease table against the emulators: the items match AWS's Java KCL 2.x schema, a
//! table written by the Java KCL is picked up where it stood, and a graceful shutdown
//! hands over exactly where it stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use bytes::Bytes;
use integration_tests::kcl::{
    fast_builder, keyed_records, leases, put_records, start_worker, Behaviour, Event, Log,
};
use integration_tests::{
    create_stream, sdk_config, unique_name, wait_for, wait_table_active, TestResult,
};
use kinesis_consumer::leases::{DynamoDbLeaseStore as Store, LeaseStore as _};
use kinesis_consumer::{ExtendedSequenceNumber, InitialPosition};

/// Every attribute the Java KCL 2.x writes, with its DynamoDB type, and the ones the Java
/// KCL 3 added (`checkpointOwner`, `throughputKBps`) or this crate adds
/// (`handoffCounter`, written when a lease is handed over or assigned by the leader, and
/// `handoffAcceptedBy`), which the Java KCL ignores.
const JAVA_SCHEMA: &[(&str, &str)] = &[
    ("checkpointOwner", "S"),
    ("throughputKBps", "N"),
    ("handoffCounter", "N"),
    ("handoffAcceptedBy", "S"),
    ("leaseKey", "S"),
    ("leaseOwner", "S"),
    ("leaseCounter", "N"),
    ("checkpoint", "S"),
    ("checkpointSubSequenceNumber", "N"),
    ("pendingCheckpoint", "S"),
    ("pendingCheckpointSubSequenceNumber", "N"),
    ("pendingCheckpointState", "B"),
    ("ownerSwitchesSinceCheckpoint", "N"),
    ("parentShardId", "SS"),
    ("childShardIds", "SS"),
    ("startingHashKey", "S"),
    ("endingHashKey", "S"),
];

fn type_of(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Ss(_) => "SS",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        _ => "other",
    }
}

async fn raw_items(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> TestResult<Vec<HashMap<String, AttributeValue>>> {
    Ok(dynamodb
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await?
        .items()
        .to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_items_use_the_java_kcl_schema() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let stream = unique_name("kcl-schema");
    let app = unique_name("kcl-schema-app");
    create_stream(&kinesis, &stream, 2).await?;
    let records = keyed_records("schema", 40, 8);
    put_records(&kinesis, &stream, &records).await?;

    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w1"),
        "w1",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for(
        "records delivered and checkpointed",
        Duration::from_secs(30),
        || async {
            let done = log.distinct_payloads() == records.len()
                && leases(&config, &app)
                    .await?
                    .iter()
                    .all(|l| l.checkpoint.sequence_number().is_some());
            Ok(done.then_some(()))
        },
    )
    .await?;

    // The table: named after the application, hash key leaseKey (S), on-demand.
    let table = dynamodb.describe_table().table_name(&app).send().await?;
    let table = table.table().ok_or("no table description")?;
    let key = table.key_schema();
    assert_eq!(key.len(), 1);
    assert_eq!(key[0].attribute_name(), "leaseKey");
    assert_eq!(key[0].key_type(), &KeyType::Hash);
    if let Some(billing) = table.billing_mode_summary().and_then(|b| b.billing_mode()) {
        assert_eq!(billing, &BillingMode::PayPerRequest);
    }

    let schema: HashMap<&str, &str> = JAVA_SCHEMA.iter().copied().collect();
    let items = raw_items(&dynamodb, &app).await?;
    assert_eq!(items.len(), 2);
    for item in &items {
        for (name, value) in item {
            let expected = schema
                .get(name.as_str())
                .unwrap_or_else(|| panic!("attribute {name} is not in the Java KCL schema"));
            assert_eq!(type_of(value), *expected, "type of {name}");
        }
        for required in [
            "leaseKey",
            "leaseOwner",
            "leaseCounter",
            "checkpoint",
            "checkpointSubSequenceNumber",
            "ownerSwitchesSinceCheckpoint",
            "startingHashKey",
            "endingHashKey",
        ] {
            assert!(
                item.contains_key(required),
                "{required} missing from {item:?}"
            );
        }
        assert_eq!(item["leaseOwner"], AttributeValue::S("w1".into()));
        assert_eq!(
            item["checkpointSubSequenceNumber"],
            AttributeValue::N("0".into())
        );
    }
    worker.stop().await?;
    // Released: no owner left.
    for item in raw_items(&dynamodb, &app).await? {
        assert!(
            !item.contains_key("leaseOwner"),
            "lease still owned: {item:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_written_by_the_java_kcl_is_picked_up_where_it_stood() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let stream = unique_name("kcl-java");
    let app = unique_name("kcl-java-app");
    create_stream(&kinesis, &stream, 2).await?;
    let records = keyed_records("java", 60, 6);
    let shards_of = put_records(&kinesis, &stream, &records).await?;
    let shard_ids: Vec<String> = {
        let set: std::collections::BTreeSet<String> = shards_of.iter().cloned().collect();
        set.into_iter().collect()
    };
    assert_eq!(shard_ids.len(), 2, "records landed on one shard only");

    // Read back the sequence numbers of the first shard to pick a checkpoint.
    let iterator = kinesis
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(&shard_ids[0])
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator
        .ok_or("no iterator")?;
    let first_shard = kinesis
        .get_records()
        .shard_iterator(iterator)
        .send()
        .await?;
    let on_first: Vec<(String, Bytes)> = first_shard
        .records()
        .iter()
        .map(|r| {
            (
                r.sequence_number().to_owned(),
                Bytes::from(r.data().as_ref().to_vec()),
            )
        })
        .collect();
    assert!(on_first.len() > 5);
    let checkpoint = on_first[4].0.clone();

    // The table as the Java KCL 2.x leaves it: one lease checkpointed mid-shard and owned
    // by a worker that is gone, one not started.
    dynamodb
        .create_table()
        .table_name(&app)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    wait_table_active(&dynamodb, &app).await?;
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: &str| AttributeValue::N(v.to_owned());
    let java_items = [
        HashMap::from([
            ("leaseKey".to_owned(), s(&shard_ids[0])),
            ("leaseOwner".to_owned(), s("java-worker-on-a-dead-host")),
            ("leaseCounter".to_owned(), n("4711")),
            ("checkpoint".to_owned(), s(&checkpoint)),
            ("checkpointSubSequenceNumber".to_owned(), n("0")),
            ("ownerSwitchesSinceCheckpoint".to_owned(), n("0")),
            ("startingHashKey".to_owned(), s("0")),
            (
                "endingHashKey".to_owned(),
                s("170141183460469231731687303715884105727"),
            ),
        ]),
        HashMap::from([
            ("leaseKey".to_owned(), s(&shard_ids[1])),
            ("leaseCounter".to_owned(), n("2")),
            ("checkpoint".to_owned(), s("TRIM_HORIZON")),
            ("checkpointSubSequenceNumber".to_owned(), n("0")),
            ("ownerSwitchesSinceCheckpoint".to_owned(), n("0")),
        ]),
    ];
    for item in java_items {
        dynamodb
            .put_item()
            .table_name(&app)
            .set_item(Some(item))
            .send()
            .await?;
    }

    // A table without the owner index (KCL 2.x): a worker's leases are found by a scan.
    let store = Store::new(dynamodb.clone(), &app);
    store.create_table_if_missing().await?;
    assert!(!store.uses_owner_index());
    assert_eq!(
        store
            .list_lease_keys_owned_by("java-worker-on-a-dead-host")
            .await?,
        vec![shard_ids[0].clone()]
    );

    // LATEST would skip everything: the stored checkpoints win.
    let log = Log::default();
    let builder =
        fast_builder(&config, &stream, &app, "rust").initial_position(InitialPosition::Latest);
    let worker = start_worker(builder, "rust", &log, Behaviour::default()).await?;
    let expected: HashSet<Bytes> = records
        .iter()
        .map(|(_, data)| data.clone())
        .filter(|data| !on_first[..5].iter().any(|(_, d)| d == data))
        .collect();
    wait_for(
        "records after the Java checkpoint",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() >= expected.len()).then_some(())) },
    )
    .await?;
    let delivered: HashSet<Bytes> = log.delivered().into_iter().map(|d| d.data).collect();
    assert_eq!(
        delivered, expected,
        "exactly the records after the Java checkpoint"
    );
    let initialized: BTreeMap<String, ExtendedSequenceNumber> = log
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Initialized {
                shard, checkpoint, ..
            } => Some((shard, checkpoint)),
            _ => None,
        })
        .collect();
    assert_eq!(
        initialized[&shard_ids[0]],
        ExtendedSequenceNumber::new(checkpoint, 0)
    );
    assert_eq!(
        initialized[&shard_ids[1]],
        ExtendedSequenceNumber::trim_horizon()
    );
    let table = leases(&config, &app).await?;
    let taken = table
        .iter()
        .find(|l| l.lease_key == shard_ids[0])
        .ok_or("lease gone")?;
    assert!(taken.lease_counter > 4711);
    assert_eq!(
        taken.hash_key_range.as_ref().map(|r| r.0.as_str()),
        Some("0")
    );
    worker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_over_exactly_where_it_stopped() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-shutdown");
    let app = unique_name("kcl-shutdown-app");
    create_stream(&kinesis, &stream, 2).await?;
    let first = keyed_records("first", 200, 10);
    put_records(&kinesis, &stream, &first).await?;

    // This processor checkpoints only when asked to shut down.
    let behaviour = Behaviour {
        checkpoint_every_batch: false,
        ..Behaviour::default()
    };
    let log_a = Log::default();
    let a = start_worker(
        fast_builder(&config, &stream, &app, "a"),
        "a",
        &log_a,
        behaviour,
    )
    .await?;
    wait_for(
        "first records delivered",
        Duration::from_secs(30),
        || async { Ok((log_a.distinct_payloads() == first.len()).then_some(())) },
    )
    .await?;
    a.stop_with_handle().await?;
    let shut_down: HashSet<String> = log_a
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::ShutdownRequested { shard, .. } => Some(shard),
            _ => None,
        })
        .collect();
    assert_eq!(shut_down.len(), 2, "every processor told to shut down");
    let mut last: HashMap<String, String> = HashMap::new();
    for d in log_a.delivered() {
        last.insert(d.shard.clone(), d.sequence_number.clone());
    }
    for lease in leases(&config, &app).await? {
        assert_eq!(lease.lease_owner, None, "lease not released");
        assert_eq!(
            lease.checkpoint.sequence_number(),
            last.get(&lease.lease_key).map(String::as_str),
            "final checkpoint of {}",
            lease.lease_key
        );
    }

    let second = keyed_records("second", 100, 10);
    put_records(&kinesis, &stream, &second).await?;
    let log_b = Log::default();
    let b = start_worker(
        fast_builder(&config, &stream, &app, "b"),
        "b",
        &log_b,
        Behaviour::default(),
    )
    .await?;
    wait_for(
        "second records delivered",
        Duration::from_secs(30),
        || async { Ok((log_b.distinct_payloads() >= second.len()).then_some(())) },
    )
    .await?;
    // A moment for anything extra to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<Bytes> = log_b.delivered().into_iter().map(|d| d.data).collect();
    let mut want: Vec<Bytes> = second.iter().map(|(_, d)| d.clone()).collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    want.sort();
    assert_eq!(
        got_sorted, want,
        "the second worker got exactly the new records"
    );
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dynamodb_lease_write_is_conditional() -> TestResult {
    use kinesis_consumer::leases::{
        CheckpointUpdate, DynamoDbLeaseStore, LeaseStore, LeaseStoreError,
    };
    use kinesis_consumer::Lease;

    let config = sdk_config().await?;
    let store = DynamoDbLeaseStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        unique_name("kcl-cond"),
    );
    store.create_table_if_missing().await?;
    store.create_table_if_missing().await?; // idempotent
    let fresh = Lease::new(
        "shardId-000000000000",
        ExtendedSequenceNumber::trim_horizon(),
    );
    assert!(store.create_lease_if_absent(&fresh).await?);
    assert!(!store.create_lease_if_absent(&fresh).await?);

    // Eight workers race to take the same lease: exactly one wins.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let fresh = fresh.clone();
            tokio::spawn(async move { store.take_lease(&fresh, &format!("w{i}")).await })
        })
        .collect();
    let mut wins = Vec::new();
    for racer in racers {
        wins.push(racer.await?);
    }
    let winners: Vec<Lease> = wins
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    assert_eq!(winners.len(), 1, "{wins:?}");
    assert!(wins
        .iter()
        .filter(|r| r.is_err())
        .all(|r| matches!(r, Err(LeaseStoreError::ConditionFailed(_)))));
    let held = winners[0].clone();
    assert_eq!(held.lease_counter, 1);
    assert_eq!(held.owner_switches_since_checkpoint, 1);

    // The holder renews; its old copy and other owners are fenced off.
    let renewed = store.renew_lease(&held).await?;
    assert_eq!(renewed.lease_counter, 2);
    let update = CheckpointUpdate::prepare(
        ExtendedSequenceNumber::new(
            "49590338271490256608559692538361571095921575989136588898",
            2,
        ),
        ExtendedSequenceNumber::new(
            "49590338271490256608559692538361571095921575989136588899",
            0,
        ),
        Some(b"state".to_vec()),
    );
    assert!(matches!(
        store.update_checkpoint(&held, &update).await,
        Err(LeaseStoreError::ConditionFailed(_))
    ));
    let mut impostor = renewed.clone();
    impostor.lease_owner = Some("impostor".into());
    assert!(matches!(
        store.renew_lease(&impostor).await,
        Err(LeaseStoreError::ConditionFailed(_))
    ));
    assert!(matches!(
        store.evict_lease(&impostor).await,
        Err(LeaseStoreError::ConditionFailed(_))
    ));
    let checkpointed = store.update_checkpoint(&renewed, &update).await?;
    assert_eq!(checkpointed.checkpoint, update.checkpoint);
    assert_eq!(checkpointed.pending_checkpoint, update.pending_checkpoint);
    assert_eq!(
        checkpointed.pending_checkpoint_state,
        update.pending_checkpoint_state
    );
    assert_eq!(checkpointed.owner_switches_since_checkpoint, 0);
    assert_eq!(
        store.get_lease(&fresh.lease_key).await?,
        Some(checkpointed.clone())
    );

    // Release, then a stale delete fails and a current one succeeds.
    let released = store.evict_lease(&checkpointed).await?;
    assert_eq!(released.lease_owner, None);
    assert!(matches!(
        store.delete_lease(&checkpointed).await,
        Err(LeaseStoreError::ConditionFailed(_))
    ));
    store.delete_lease(&released).await?;
    assert_eq!(store.get_lease(&fresh.lease_key).await?, None);
    Ok(())
}
