//! The local emulators through the real AWS SDK clients: the calls the producer and the
//! consumer rely on work, and a conditional DynamoDB write that must fail does.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardFilter, ShardFilterType};
use bytes::Bytes;
use integration_tests::{
    create_stream, list_shards, read_shard, sdk_config, unique_name, wait_for, wait_stream_active,
    wait_table_active, TestResult,
};
use kinesis_producer::aggregation::{deaggregate, AggregateBuilder};

#[tokio::test]
async fn kinesis_put_read_split_merge() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("emulator");
    create_stream(&client, &stream, 2).await?;

    // PutRecords, including one KPL aggregate.
    let mut entries: Vec<PutRecordsRequestEntry> = (0..50)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{}", i % 7))
                .data(Blob::new(format!("record-{i}")))
                .build()
        })
        .collect::<Result<_, _>>()?;
    let mut builder = AggregateBuilder::new();
    for i in 0..5 {
        builder.push("agg-key", None, Bytes::from(format!("user-{i}")));
    }
    let aggregate = builder.finish().ok_or("no aggregate")?;
    entries.push(
        PutRecordsRequestEntry::builder()
            .partition_key(&aggregate.partition_key)
            .set_explicit_hash_key(aggregate.explicit_hash_key.clone())
            .data(Blob::new(aggregate.data.to_vec()))
            .build()?,
    );
    let put = client
        .put_records()
        .stream_name(&stream)
        .set_records(Some(entries))
        .send()
        .await?;
    assert_eq!(put.failed_record_count(), Some(0));
    let mut sent: HashMap<String, String> = HashMap::new(); // sequence number -> shard
    for entry in put.records() {
        sent.insert(
            entry
                .sequence_number()
                .ok_or("no sequence number")?
                .to_owned(),
            entry.shard_id().ok_or("no shard id")?.to_owned(),
        );
    }

    // Read everything back through GetRecords; the aggregate deaggregates.
    let shards = list_shards(&client, &stream).await?;
    assert_eq!(shards.len(), 2);
    let mut read = BTreeMap::new();
    let mut user_records = Vec::new();
    for shard in &shards {
        let (records, ended) = read_shard(&client, &stream, shard.shard_id()).await?;
        assert!(ended.is_none(), "open shard reported as ended");
        for record in records {
            read.insert(
                record.sequence_number().to_owned(),
                shard.shard_id().to_owned(),
            );
            user_records.extend(deaggregate(
                record.partition_key().unwrap_or_default(),
                None,
                Bytes::from(record.data().as_ref().to_vec()),
            ));
        }
    }
    assert_eq!(read.len(), 51);
    for (sequence, shard) in &read {
        assert_eq!(
            sent.get(sequence),
            Some(shard),
            "record {sequence} not where PutRecords said"
        );
    }
    let aggregated: Vec<_> = user_records.iter().filter(|r| r.aggregated).collect();
    assert_eq!(aggregated.len(), 5);
    assert_eq!(aggregated[4].data, Bytes::from("user-4"));
    assert_eq!(aggregated[4].sub_sequence_number, 4);

    // Split the first shard in the middle of its range.
    let parent = &shards[0];
    let range = parent.hash_key_range().ok_or("no hash range")?;
    let start: u128 = range.starting_hash_key().parse()?;
    let end: u128 = range.ending_hash_key().parse()?;
    client
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(parent.shard_id())
        .new_starting_hash_key((start + (end - start) / 2).to_string())
        .send()
        .await?;
    wait_stream_active(&client, &stream).await?;
    let after_split = list_shards(&client, &stream).await?;
    assert_eq!(after_split.len(), 4);
    let children: Vec<_> = after_split
        .iter()
        .filter(|s| s.parent_shard_id() == Some(parent.shard_id()))
        .map(|s| s.shard_id().to_owned())
        .collect();
    assert_eq!(children.len(), 2);

    // The closed parent ends: no next iterator, and GetRecords names its children.
    let (parent_records, ended) = read_shard(&client, &stream, parent.shard_id()).await?;
    assert!(!parent_records.is_empty());
    let mut reported = ended.ok_or("closed parent shard did not end")?;
    reported.sort();
    let mut expected = children.clone();
    expected.sort();
    assert_eq!(reported, expected);

    // Merge the two children back together.
    client
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge(&expected[0])
        .adjacent_shard_to_merge(&expected[1])
        .send()
        .await?;
    wait_stream_active(&client, &stream).await?;
    let open = client
        .list_shards()
        .stream_name(&stream)
        .shard_filter(
            ShardFilter::builder()
                .r#type(ShardFilterType::AtLatest)
                .build()?,
        )
        .send()
        .await?;
    let open_ids: Vec<_> = open
        .shards()
        .iter()
        .map(|s| s.shard_id().to_owned())
        .collect();
    assert_eq!(open_ids.len(), 2, "open shards after merge: {open_ids:?}");
    let merged = open
        .shards()
        .iter()
        .find(|s| s.adjacent_parent_shard_id().is_some())
        .ok_or("no merged shard")?;
    assert_eq!(
        [merged.parent_shard_id(), merged.adjacent_parent_shard_id()].map(|s| s.map(str::to_owned)),
        [Some(expected[0].clone()), Some(expected[1].clone())]
    );
    Ok(())
}

#[tokio::test]
async fn dynamodb_conditional_write_fails_when_condition_does_not_hold() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = unique_name("emulator-leases");
    client
        .create_table()
        .table_name(&table)
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
    wait_table_active(&client, &table).await?;

    let key = || AttributeValue::S("shardId-000000000000".into());
    client
        .put_item()
        .table_name(&table)
        .item("leaseKey", key())
        .item("leaseCounter", AttributeValue::N("1".into()))
        .item("leaseOwner", AttributeValue::S("worker-a".into()))
        .condition_expression("attribute_not_exists(leaseKey)")
        .send()
        .await?;

    // Creating the same lease again must fail.
    let again = client
        .put_item()
        .table_name(&table)
        .item("leaseKey", key())
        .item("leaseCounter", AttributeValue::N("1".into()))
        .condition_expression("attribute_not_exists(leaseKey)")
        .send()
        .await;
    let err = again.expect_err("second create succeeded");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_conditional_check_failed_exception()),
        "{err:?}"
    );

    // A take with a stale counter must fail; with the right counter it succeeds.
    let take = |expected: &str| {
        client
            .update_item()
            .table_name(&table)
            .key("leaseKey", key())
            .update_expression("SET leaseOwner = :owner, leaseCounter = leaseCounter + :one")
            .condition_expression("leaseCounter = :expected")
            .expression_attribute_values(":owner", AttributeValue::S("worker-b".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":expected", AttributeValue::N(expected.into()))
            .send()
    };
    let stale = take("0").await.expect_err("stale take succeeded");
    assert!(
        stale
            .as_service_error()
            .is_some_and(|e| e.is_conditional_check_failed_exception()),
        "{stale:?}"
    );
    take("1").await?;

    let item = wait_for("consistent read", Duration::from_secs(5), || async {
        let got = client
            .get_item()
            .table_name(&table)
            .key("leaseKey", key())
            .consistent_read(true)
            .send()
            .await?;
        Ok(got.item().cloned())
    })
    .await?;
    assert_eq!(
        item.get("leaseOwner"),
        Some(&AttributeValue::S("worker-b".into()))
    );
    assert_eq!(
        item.get("leaseCounter"),
        Some(&AttributeValue::N("2".into()))
    );

    let scanned = client
        .scan()
        .table_name(&table)
        .consistent_read(true)
        .send()
        .await?;
    assert_eq!(scanned.count(), 1);
    Ok(())
}
