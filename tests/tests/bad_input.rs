//! The bad-input table of `docs/bad-input.md`: each invalid input gets its exact typed
//! error, against the emulators (and the fault proxy where only a real account would
//! answer, as for a missing permission). Tests marked `#[ignore = "finding: ..."]` state
//! the behaviour the table asks for and fail today; the table lists them as findings.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use integration_tests::kcl::{
    fast_builder, keyed_records, leases, put_records, start_worker, Behaviour, Log,
};
use integration_tests::{
    create_stream, sdk_config, unique_name, wait_for, wait_table_active, TestResult,
};
use kinesis_consumer::leases::{CheckpointUpdate, DynamoDbLeaseStore, LeaseStore, LeaseStoreError};
use std::error::Error as _;

use kinesis_consumer::{ErrorKind, ExtendedSequenceNumber, Lease, SchedulerError};
use kinesis_emulator::fault_proxy::{Fault, FaultProxy, FaultRule};
use kinesis_emulator::Emulator;
use kinesis_producer::{
    BuildError, HashKeyError, InvalidRecord, Producer, Record, RecordError, SendError,
    ShardMapError,
};

struct NoOp;

#[async_trait::async_trait]
impl kinesis_consumer::RecordProcessor for NoOp {
    async fn process_records(
        &mut self,
        _input: kinesis_consumer::ProcessRecordsInput,
    ) -> kinesis_consumer::ProcessResult {
        Ok(())
    }

    async fn shard_ended(&mut self, input: kinesis_consumer::ShardEndedInput) {
        let _ = input.checkpointer.checkpoint().await;
    }
}

async fn upstream(service: &str) -> TestResult<String> {
    let emulator = Emulator::shared().await?;
    let local = if service == "kinesis" {
        emulator.kinesis_endpoint()
    } else {
        emulator.dynamodb_endpoint()
    };
    local.ok_or_else(|| "these tests need the local emulators".into())
}

fn denied(operation: &str) -> FaultRule {
    FaultRule::new(Fault::Error {
        status: 400,
        code: "AccessDeniedException".into(),
    })
    .target(operation)
}

#[tokio::test]
async fn partition_keys_are_counted_in_unicode_characters() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-keys");
    create_stream(&client, &stream, 1).await?;
    let producer = Producer::builder(&config).stream(&stream).build().await?;
    assert_eq!(
        producer.send(Record::new("", "x")).await.err(),
        Some(SendError::Invalid(InvalidRecord::EmptyPartitionKey))
    );
    for ch in ["k", "é", "🦀"] {
        assert_eq!(
            producer.send(Record::new(ch.repeat(257), "x")).await.err(),
            Some(SendError::Invalid(InvalidRecord::PartitionKeyTooLong {
                chars: 257
            })),
            "{ch}"
        );
        // 256 characters are admitted however many bytes they take (Kinesis counts
        // characters; kinesis-mock counts bytes, so only the ASCII one is sent here).
        assert_eq!(
            Record::new(ch.repeat(256), "x").validate(kinesis_producer::DEFAULT_MAX_RECORD_SIZE),
            Ok(())
        );
    }
    let stored = producer
        .send(Record::new("k".repeat(256), "x"))
        .await?
        .await?;
    assert!(stored.attempts.iter().all(|a| a.error.is_none()));
    assert_eq!(
        producer.outstanding().records,
        0,
        "nothing refused was counted"
    );
    producer.shutdown().await;
    Ok(())
}

/// A request Kinesis refuses as invalid (HTTP 400 InvalidArgumentException, e.g. a
/// partition key Kinesis counts differently) can never succeed: the record fails at
/// once with `RecordError::Rejected`, naming the code, rather than being retried until
/// its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kinesis_refuses_as_invalid_fails_at_once() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-invalid");
    create_stream(&client, &stream, 1).await?;
    let proxy = FaultProxy::start(&upstream("kinesis").await?, 1).await?;
    let producer = Producer::builder(aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .endpoint_url(proxy.endpoint())
            .build(),
    ))
    .stream(&stream)
    .build()
    .await?;
    proxy.add(
        FaultRule::new(Fault::Error {
            status: 400,
            code: "InvalidArgumentException".into(),
        })
        .target("PutRecords"),
    );
    let started = std::time::Instant::now();
    let outcome = producer.send(Record::new("k", "v")).await?.await;
    producer.shutdown().await;
    match outcome {
        Err(RecordError::Rejected { attempts, .. }) => {
            assert_eq!(attempts.len(), 1, "retried: {attempts:?}");
            let error = attempts[0].error.as_ref().ok_or("a failed attempt")?;
            assert_eq!(error.code, "InvalidArgumentException");
        }
        other => panic!("expected Rejected after one attempt, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[test]
fn bad_explicit_hash_keys_get_their_typed_error() {
    let cases = [
        ("", HashKeyError::Empty),
        ("12a", HashKeyError::NotDecimal("12a".into())),
        ("-1", HashKeyError::NotDecimal("-1".into())),
        ("007", HashKeyError::LeadingZero("007".into())),
        (
            "340282366920938463463374607431768211456",
            HashKeyError::OutOfRange("340282366920938463463374607431768211456".into()),
        ),
    ];
    for (input, error) in cases {
        assert_eq!(
            Record::new("k", "v").with_explicit_hash_key(input).err(),
            Some(InvalidRecord::ExplicitHashKey(error)),
            "{input:?}"
        );
    }
}

#[tokio::test]
async fn a_record_over_the_size_limit_is_refused() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-size");
    create_stream(&client, &stream, 1).await?;
    let producer = Producer::builder(&config).stream(&stream).build().await?;
    // Data plus partition key, 1 MiB + 1.
    assert_eq!(
        producer
            .send(Record::new("k", vec![0u8; 1024 * 1024]))
            .await
            .err(),
        Some(SendError::Invalid(InvalidRecord::TooLarge {
            size: 1024 * 1024 + 1,
            limit: 1024 * 1024
        }))
    );
    assert!(matches!(
        Producer::builder(&config)
            .stream(&stream)
            .max_record_size(11 * 1024 * 1024)
            .build()
            .await,
        Err(BuildError::InvalidConfig { .. })
    ));
    producer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_aggregate_size_limit_out_of_range_is_refused() -> TestResult {
    let config = sdk_config().await?;
    for size in [10, 11 * 1024 * 1024] {
        assert!(matches!(
            Producer::builder(&config)
                .stream("any")
                .aggregation_max_size(size)
                .build()
                .await,
            Err(BuildError::InvalidConfig { .. })
        ));
    }
    Ok(())
}

/// An aggregate limit above what the stream accepts per record (`max_record_size`, 1 MiB
/// here, counting the aggregate's one-byte partition key) is refused at build with a
/// typed error, so the producer never builds an aggregate Kinesis will reject; the
/// largest limit it accepts makes aggregates the stream takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_larger_than_the_stream_accepts_never_leaves_the_producer() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-aggregate");
    create_stream(&client, &stream, 1).await?;
    const MIB: usize = 1024 * 1024;
    for (aggregation_max_size, max_record_size) in [(4 * MIB, MIB), (MIB, MIB), (2 * MIB, 2 * MIB)]
    {
        match Producer::builder(&config)
            .stream(&stream)
            .max_record_size(max_record_size)
            .aggregation_max_size(aggregation_max_size)
            .build()
            .await
        {
            Err(BuildError::InvalidConfig {
                setting, reason, ..
            }) => {
                assert_eq!(setting, "aggregation_max_size", "{reason}");
                assert!(
                    reason.contains(&(max_record_size - 1).to_string()),
                    "{reason}"
                )
            }
            other => panic!(
                "aggregation_max_size {aggregation_max_size} with max_record_size \
                 {max_record_size}: expected InvalidConfig, got {other:?}"
            ),
        }
    }
    let producer = Producer::builder(&config)
        .stream(&stream)
        .aggregation_max_size(MIB - 1)
        .record_ttl(Duration::from_secs(20))
        .build()
        .await?;
    let mut receipts = Vec::new();
    for i in 0..100 {
        receipts.push(
            producer
                .send(Record::new("one-key", vec![b'x'; 30_000 + i]))
                .await?,
        );
    }
    for receipt in receipts {
        let result = receipt.await?;
        assert!(result.aggregated);
    }
    let stats = producer.stats();
    producer.shutdown().await;
    assert_eq!(stats.user_records_put, 100);
    assert!(
        stats.kinesis_records_put <= 4,
        "aggregates of up to 1 MiB - 1: {} Kinesis records",
        stats.kinesis_records_put
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_stream_is_a_typed_error() -> TestResult {
    let config = sdk_config().await?;
    let missing = unique_name("no-such-stream");
    match Producer::builder(&config).stream(&missing).build().await {
        Err(BuildError::ShardMap(e @ ShardMapError::ListShards { .. })) => {
            assert!(e.is_permanent(), "{e}");
            assert!(
                matches!(&e, ShardMapError::ListShards { code: Some(code), .. } if code == "ResourceNotFoundException"),
                "{e:?}"
            );
        }
        other => panic!("expected ShardMap(ListShards), got {other:?}"),
    }
    let built = fast_builder(&config, &missing, &unique_name("bad-input-app"), "w")
        .processor_factory(|| NoOp)
        .build()
        .await;
    match built {
        Err(SchedulerError::StreamNotFound {
            stream: named,
            error,
        }) => {
            assert_eq!(named, missing);
            assert_eq!(error.kind(), ErrorKind::NotFound, "{error:?}");
            assert_eq!(error.code(), Some("ResourceNotFoundException"));
            assert!(
                error.source().is_some(),
                "the SDK error is kept as the source"
            );
        }
        other => panic!("expected SchedulerError::StreamNotFound, got {other:?}"),
    }
    Ok(())
}

/// A stream deleted under a running producer: PutRecords answers
/// ResourceNotFoundException; the records fail with it at once (`Rejected`), not after
/// their TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_for_a_deleted_stream_fail_with_resource_not_found() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-deleted");
    create_stream(&client, &stream, 1).await?;
    let producer = Producer::builder(&config)
        .stream(&stream)
        .record_ttl(Duration::from_secs(3))
        .build()
        .await?;
    client
        .delete_stream()
        .stream_name(&stream)
        .enforce_consumer_deletion(true)
        .send()
        .await?;
    wait_for("the stream to be gone", Duration::from_secs(20), || async {
        let summary = client
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await;
        Ok(summary.is_err().then_some(()))
    })
    .await?;
    let started = std::time::Instant::now();
    match producer.send(Record::new("k", "v")).await?.await {
        Err(RecordError::Rejected { attempts, .. }) => {
            assert_eq!(attempts.len(), 1, "retried: {attempts:?}");
            let error = attempts[0].error.as_ref().ok_or("a failed attempt")?;
            assert_eq!(error.code, "ResourceNotFoundException");
        }
        other => panic!("expected Rejected naming ResourceNotFoundException, got {other:?}"),
    }
    producer.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed before its TTL"
    );
    Ok(())
}

/// A stream deleted under a running worker: the worker should stop with a typed error
/// rather than retry reads of a stream that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_stream_is_deleted_stops_with_a_typed_error() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-deleted-consumer");
    let app = unique_name("bad-input-deleted-app");
    create_stream(&client, &stream, 1).await?;
    let scheduler = fast_builder(&config, &stream, &app, "w")
        .processor_factory(|| NoOp)
        .build()
        .await?;
    let run = tokio::spawn(scheduler.run());
    tokio::time::sleep(Duration::from_secs(2)).await;
    client
        .delete_stream()
        .stream_name(&stream)
        .enforce_consumer_deletion(true)
        .send()
        .await?;
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(Err(SchedulerError::StreamNotFound {
            stream: named,
            error,
        }))) => {
            assert_eq!(named, stream);
            assert_eq!(error.kind(), ErrorKind::NotFound, "{error:?}");
            Ok(())
        }
        other => {
            panic!("expected run() to end with SchedulerError::StreamNotFound, got {other:?}")
        }
    }
}

/// Missing permissions, as a real account answers them (HTTP 400
/// AccessDeniedException), injected by the fault proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_permissions_are_typed_errors() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-denied");
    create_stream(&client, &stream, 1).await?;
    let kinesis_proxy = FaultProxy::start(&upstream("kinesis").await?, 1).await?;
    let through = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .endpoint_url(kinesis_proxy.endpoint())
            .build(),
    );

    // Producer: kinesis:ListShards denied.
    let rule = kinesis_proxy.add(denied("ListShards"));
    match Producer::builder(through.clone())
        .stream(&stream)
        .build()
        .await
    {
        Err(BuildError::ShardMap(e)) => {
            assert!(e.is_permanent(), "{e}");
            assert!(
                matches!(&e, ShardMapError::ListShards { code: Some(code), .. } if code == "AccessDeniedException"),
                "{e:?}"
            );
        }
        other => panic!("expected ShardMap, got {other:?}"),
    }
    kinesis_proxy.remove(rule);

    // Producer: kinesis:PutRecords denied: the record fails at once naming the code.
    let producer = Producer::builder(through.clone())
        .stream(&stream)
        .record_ttl(Duration::from_secs(2))
        .build()
        .await?;
    kinesis_proxy.add(denied("PutRecords"));
    match producer.send(Record::new("k", "v")).await?.await {
        Err(RecordError::Rejected { attempts, .. }) => {
            assert_eq!(attempts.len(), 1, "retried: {attempts:?}");
            let code = &attempts[0].error.as_ref().ok_or("failed attempt")?.code;
            assert_eq!(code, "AccessDeniedException");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    producer.shutdown().await;

    // Consumer: kinesis:DescribeStreamSummary denied.
    kinesis_proxy.add(denied("DescribeStreamSummary"));
    let built = fast_builder(&config, &stream, &unique_name("bad-input-denied-app"), "w")
        .kinesis_client(through)
        .processor_factory(|| NoOp)
        .build()
        .await;
    match built {
        Err(SchedulerError::Kinesis(error)) => {
            assert_eq!(error.kind(), ErrorKind::AccessDenied, "{error:?}");
            assert_eq!(error.operation(), "DescribeStreamSummary");
        }
        other => panic!("expected SchedulerError::Kinesis, got {other:?}"),
    }

    // Consumer: dynamodb:DescribeTable denied.
    let dynamodb_proxy = FaultProxy::start(&upstream("dynamodb").await?, 1).await?;
    dynamodb_proxy.add(denied("DescribeTable"));
    let built = fast_builder(&config, &stream, &unique_name("bad-input-denied-app"), "w")
        .dynamodb_client(aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&config)
                .endpoint_url(dynamodb_proxy.endpoint())
                .build(),
        ))
        .processor_factory(|| NoOp)
        .build()
        .await;
    match built {
        Err(SchedulerError::LeaseTable(LeaseStoreError::Service(error))) => {
            assert_eq!(error.kind(), ErrorKind::AccessDenied, "{error:?}");
            assert_eq!(error.code(), Some("AccessDeniedException"));
        }
        other => panic!("expected SchedulerError::LeaseTable(Service), got {other:?}"),
    }
    Ok(())
}

fn lease_table(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> TestResult<aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder> {
    Ok(dynamodb
        .create_table()
        .table_name(table)
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
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_lease_table_is_created_and_one_being_created_is_waited_for() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let stream = unique_name("bad-input-table");
    create_stream(&kinesis, &stream, 1).await?;

    let missing = unique_name("bad-input-table-missing");
    fast_builder(&config, &stream, &missing, "w")
        .processor_factory(|| NoOp)
        .build()
        .await?;
    wait_table_active(&dynamodb, &missing).await?;

    // Created by someone else a moment ago, still CREATING: build waits until ACTIVE.
    let creating = unique_name("bad-input-table-creating");
    lease_table(&dynamodb, &creating)?.send().await?;
    fast_builder(&config, &stream, &creating, "w")
        .processor_factory(|| NoOp)
        .build()
        .await?;
    let status = dynamodb
        .describe_table()
        .table_name(&creating)
        .send()
        .await?
        .table()
        .and_then(|t| t.table_status().cloned());
    assert_eq!(status, Some(aws_sdk_dynamodb::types::TableStatus::Active));
    Ok(())
}

/// Attributes a later KCL may write survive every write this library makes: renewals,
/// takes, checkpoints, releases. The KCL 3's `throughputKBps` is one this library knows:
/// its renewals write the throughput they measured, as the KCL 3's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_attributes_of_a_future_kcl_are_kept_untouched() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let stream = unique_name("bad-input-future");
    let app = unique_name("bad-input-future-app");
    create_stream(&kinesis, &stream, 1).await?;
    let first = keyed_records("first", 20, 2);
    put_records(&kinesis, &stream, &first).await?;
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("first records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= first.len()).then_some(()))
    })
    .await?;
    worker.stop().await?;

    let extra: HashMap<String, AttributeValue> = HashMap::from([
        ("futureCounter".into(), AttributeValue::N("12.5".into())),
        (
            "futureSettings".into(),
            AttributeValue::M(HashMap::from([(
                "mode".into(),
                AttributeValue::L(vec![AttributeValue::Bool(true), AttributeValue::Null(true)]),
            )])),
        ),
    ]);
    let lease = leases(&config, &app)
        .await?
        .pop()
        .ok_or("one lease expected")?;
    let key = HashMap::from([(
        "leaseKey".to_owned(),
        AttributeValue::S(lease.lease_key.clone()),
    )]);
    for (name, value) in &extra {
        dynamodb
            .update_item()
            .table_name(&app)
            .set_key(Some(key.clone()))
            .update_expression("SET #n = :v")
            .expression_attribute_names("#n", name)
            .expression_attribute_values(":v", value.clone())
            .send()
            .await?;
    }
    dynamodb
        .update_item()
        .table_name(&app)
        .set_key(Some(key.clone()))
        .update_expression("SET throughputKBps = :v")
        .expression_attribute_values(":v", AttributeValue::N("12345.5".into()))
        .send()
        .await?;
    // A handoff attribute left on a released lease (its holder stopped mid-handoff) is
    // one this library knows: taking the lease ends the handoff, as the Java KCL 3's take
    // does.
    dynamodb
        .update_item()
        .table_name(&app)
        .set_key(Some(key.clone()))
        .update_expression("SET checkpointOwner = :v")
        .expression_attribute_values(":v", AttributeValue::S("kcl3-worker".into()))
        .send()
        .await?;

    // Another run: takes, renews, checkpoints, releases.
    let second = keyed_records("second", 20, 2);
    put_records(&kinesis, &stream, &second).await?;
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w2"),
        "w2",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("second records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= first.len() + second.len()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // a few renewals
    worker.stop().await?;

    let item = dynamodb
        .get_item()
        .table_name(&app)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await?
        .item
        .ok_or("lease item gone")?;
    for (name, value) in &extra {
        assert_eq!(item.get(name), Some(value), "{name}");
    }
    assert_eq!(
        item.get("checkpointOwner"),
        None,
        "the take ended the handoff"
    );
    let throughput: f64 = item
        .get("throughputKBps")
        .and_then(|v| v.as_n().ok())
        .ok_or("no throughputKBps")?
        .parse()?;
    assert!(
        (0.0..100.0).contains(&throughput),
        "the renewals wrote what they measured (40 small records): {throughput}"
    );
    let after = leases(&config, &app).await?;
    assert!(
        after[0].lease_counter > lease.lease_counter,
        "it was written to"
    );
    assert_ne!(after[0].checkpoint, lease.checkpoint, "it was checkpointed");
    Ok(())
}

async fn table_with(
    config: &aws_config::SdkConfig,
    items: Vec<HashMap<String, AttributeValue>>,
) -> TestResult<String> {
    let dynamodb = aws_sdk_dynamodb::Client::new(config);
    let table = unique_name("bad-input-malformed");
    lease_table(&dynamodb, &table)?.send().await?;
    wait_table_active(&dynamodb, &table).await?;
    for item in items {
        dynamodb
            .put_item()
            .table_name(&table)
            .set_item(Some(item))
            .send()
            .await?;
    }
    Ok(table)
}

fn malformed_item() -> HashMap<String, AttributeValue> {
    HashMap::from([
        (
            "leaseKey".to_owned(),
            AttributeValue::S("shardId-000000000099".into()),
        ),
        ("leaseCounter".to_owned(), AttributeValue::S("seven".into())),
    ])
}

#[tokio::test]
async fn a_malformed_lease_item_is_a_typed_error() -> TestResult {
    let config = sdk_config().await?;
    let table = table_with(&config, vec![malformed_item()]).await?;
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &table);
    // Listing skips the bad item (one bad item must not stop the fleet, see the next
    // test); reading it by key names what is wrong with it.
    let listed = store.list_leases().await?;
    assert!(
        listed.is_empty(),
        "the malformed item was listed: {listed:?}"
    );
    match store.get_lease("shardId-000000000099").await {
        Err(LeaseStoreError::Malformed(message)) => {
            assert!(message.contains("leaseCounter"), "{message}")
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    Ok(())
}

/// One bad item (another application's, or a hand edit) must not stop a worker from
/// taking the leases that are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_lease_item_does_not_stop_the_other_shards() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-malformed-stream");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("malformed", 20, 2);
    put_records(&kinesis, &stream, &records).await?;
    let table = table_with(&config, vec![malformed_item()]).await?;
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &table, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let delivered = wait_for(
        "records despite the bad item",
        Duration::from_secs(20),
        || async { Ok((log.distinct_payloads() >= records.len()).then_some(())) },
    )
    .await;
    worker.stop().await?;
    delivered
}

/// A previous owner's checkpoint after another worker took the lease: the conditional
/// write fails (`ConditionFailed`, which the `Checkpointer` reports as
/// `CheckpointError::LeaseLost`, see kcl's `a_lost_lease_refuses_checkpoints`), and the
/// stored checkpoint is the new owner's.
#[tokio::test]
async fn a_stale_owners_checkpoint_is_refused() -> TestResult {
    let config = sdk_config().await?;
    let table = table_with(&config, Vec::new()).await?;
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &table);
    let lease = Lease::new(
        "shardId-000000000000",
        ExtendedSequenceNumber::trim_horizon(),
    );
    assert!(store.create_lease_if_absent(&lease).await?);
    let held_by_a = store.take_lease(&lease, "a").await?;
    let held_by_b = store.take_lease(&held_by_a, "b").await?;
    let update = |seq: &str| CheckpointUpdate::commit(ExtendedSequenceNumber::new(seq, 0));
    store.update_checkpoint(&held_by_b, &update("200")).await?;
    match store.update_checkpoint(&held_by_a, &update("100")).await {
        Err(LeaseStoreError::ConditionFailed(key)) => assert_eq!(key, lease.lease_key),
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    let stored = store
        .get_lease(&lease.lease_key)
        .await?
        .ok_or("lease gone")?;
    assert_eq!(stored.checkpoint, ExtendedSequenceNumber::new("200", 0));
    assert_eq!(stored.lease_owner.as_deref(), Some("b"));
    Ok(())
}

/// The producer reads the stream's maximum record size (DescribeStreamSummary) when it is
/// built. Denied, or hanging past `request_timeout`, the call does not stop the build:
/// the limit is Kinesis's default 1 MiB (with a warning), and a larger record is refused
/// with a typed error naming it, even on a stream that would take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximum_record_size_that_cannot_be_read_is_1_mib() -> TestResult {
    const MIB: usize = 1024 * 1024;
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("bad-input-max-size");
    create_stream(&client, &stream, 1).await?;
    let arn = client
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await?
        .stream_description_summary()
        .map(|s| s.stream_arn().to_owned())
        .ok_or("a stream summary")?;
    client
        .update_max_record_size()
        .stream_arn(arn)
        .max_record_size_in_kib(4096)
        .send()
        .await?;
    let proxy = FaultProxy::start(&upstream("kinesis").await?, 5).await?;
    let through = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .endpoint_url(proxy.endpoint())
            .build(),
    );
    for fault in [
        denied("DescribeStreamSummary"),
        FaultRule::new(Fault::Stall(Duration::from_secs(60))).target("DescribeStreamSummary"),
    ] {
        let rule = proxy.add(fault);
        let started = std::time::Instant::now();
        let producer = Producer::builder(through.clone())
            .stream(&stream)
            .request_timeout(Duration::from_secs(1))
            .build()
            .await?;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not held by the call"
        );
        assert_eq!(proxy.injected(rule), 1);
        assert_eq!(producer.config().max_record_size, Some(MIB));
        match producer.send(Record::new("k", vec![b'x'; 2 * MIB])).await {
            Err(SendError::Invalid(InvalidRecord::TooLarge { limit, .. })) => {
                assert_eq!(limit, MIB)
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        producer.shutdown().await;
        proxy.remove(rule);
    }
    // Readable again: the stream's own limit.
    let producer = Producer::builder(through).stream(&stream).build().await?;
    assert_eq!(producer.config().max_record_size, Some(4 * MIB));
    producer.shutdown().await;
    Ok(())
}
