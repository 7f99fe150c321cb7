//! The producer against the local Kinesis emulator over HTTP: every receipt resolves to
//! where its record really is, aggregates never span shards, resharding loses nothing,
//! backpressure bounds the buffer, shutdown drains, bad input and dead endpoints give
//! typed errors, and injected throttling is retried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use futures::FutureExt;
use integration_tests::{
    create_stream, list_shards, read_stream, sdk_config, unique_name, TestResult,
};
use kinesis_emulator::Emulator;
use kinesis_producer::aggregation::deaggregate;
use kinesis_producer::{
    BuildError, HashKey, InvalidRecord, Producer, Record, RecordError, RecordResult, SendError,
    ShardMap,
};

/// User records found in the stream, by (shard, sequence number, sub-sequence number).
type Found = HashMap<(String, String, u64), (String, bytes::Bytes)>;

/// Reads the whole stream back and deaggregates it. Also returns how many user records
/// sit in an aggregate stored on a shard whose hash range does not hold them (which
/// happens only when a reshard made the producer's shard map stale: the producer then
/// sends every record of that aggregate again, and consumers drop the misplaced copy).
async fn read_back(client: &aws_sdk_kinesis::Client, stream: &str) -> TestResult<(Found, usize)> {
    let ranges: HashMap<String, (u128, u128)> = list_shards(client, stream)
        .await?
        .iter()
        .map(|s| {
            let range = s.hash_key_range().expect("range");
            let start = range.starting_hash_key().parse().expect("start");
            let end = range.ending_hash_key().parse().expect("end");
            (s.shard_id().to_owned(), (start, end))
        })
        .collect();
    let mut found = Found::new();
    let mut misplaced = 0;
    for (shard, record) in read_stream(client, stream).await? {
        let (start, end) = ranges[&shard];
        let users = deaggregate(
            record.partition_key().unwrap_or_default(),
            None,
            bytes::Bytes::copy_from_slice(record.data().as_ref()),
        );
        for user in users {
            if user.aggregated {
                let key = match &user.explicit_hash_key {
                    Some(k) => k.parse::<HashKey>()?,
                    None => HashKey::from_partition_key(&user.partition_key),
                };
                if !(start <= key.0 && key.0 <= end) {
                    misplaced += 1;
                }
            }
            found.insert(
                (
                    shard.clone(),
                    record.sequence_number().to_owned(),
                    user.sub_sequence_number,
                ),
                (user.partition_key.to_string(), user.data),
            );
        }
    }
    Ok((found, misplaced))
}

/// Asserts every record is in the stream exactly where its receipt says.
fn assert_where_receipts_say(found: &Found, sent: &[(String, bytes::Bytes, RecordResult)]) {
    for (partition_key, data, result) in sent {
        let key = (
            result.shard_id.to_string(),
            result.sequence_number.to_string(),
            result.sub_sequence_number,
        );
        let stored = found
            .get(&key)
            .unwrap_or_else(|| panic!("{partition_key}: nothing at {key:?}"));
        assert_eq!((&stored.0, &stored.1), (partition_key, data), "at {key:?}");
    }
}

fn payload(i: usize, size: usize) -> bytes::Bytes {
    let mut data = format!("{i:08}").into_bytes();
    data.resize(size, b'.');
    bytes::Bytes::from(data)
}

#[tokio::test]
async fn hundred_thousand_records_land_where_their_receipts_say() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-100k");
    create_stream(&client, &stream, 4).await?;
    let producer = Producer::builder(&config).stream(&stream).build().await?;

    const RECORDS: usize = 100_000;
    let mut receipts = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let key = format!("user-{}", i % 7_919);
        let data = payload(i, 100);
        let receipt = producer
            .send(Record::new(key.clone(), data.clone()))
            .await?;
        receipts.push((key, data, receipt));
    }
    let mut sent = Vec::with_capacity(RECORDS);
    for (key, data, receipt) in receipts {
        sent.push((key, data, receipt.await?));
    }
    producer.shutdown().await;

    let stats = producer.stats();
    assert_eq!(stats.user_records_put, RECORDS as u64);
    assert!(stats.kinesis_records_put < 1_000, "aggregated: {stats:?}");
    let shards: std::collections::HashSet<_> = sent.iter().map(|s| s.2.shard_id.clone()).collect();
    assert_eq!(shards.len(), 4);

    let (found, misplaced) = read_back(&client, &stream).await?;
    assert_eq!(misplaced, 0, "aggregates never span shards");
    assert_where_receipts_say(&found, &sent);
    // A call that timed out may have succeeded before its retry: duplicates are allowed
    // only then (the emulator slows down under a busy machine).
    let distinct: std::collections::HashSet<_> = found.values().collect();
    assert_eq!(distinct.len(), RECORDS, "every user record");
    if producer.stats().failed_attempts == 0 {
        assert_eq!(
            found.len(),
            RECORDS,
            "no retry, so every user record exactly once"
        );
    }
    Ok(())
}

#[tokio::test]
async fn resharding_while_producing_loses_nothing() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-reshard");
    create_stream(&client, &stream, 2).await?;
    let producer = Producer::builder(&config)
        .stream(&stream)
        .shard_map_min_refresh_interval(Duration::from_millis(100))
        .build()
        .await?;

    let sending = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut receipts = Vec::new();
            for i in 0..6_000 {
                let key = format!("k{}", i % 500);
                let data = payload(i, 64);
                let receipt = producer
                    .send(Record::new(key.clone(), data.clone()))
                    .await?;
                receipts.push((key, data, receipt));
                if i % 200 == 199 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Ok::<_, SendError>(receipts)
        })
    };

    tokio::time::sleep(Duration::from_millis(700)).await;
    let stream_id = kinesis_producer::StreamId::new(&stream);
    let open = ShardMap::load(&client, &stream_id).await?;
    let first = open.shards().first().ok_or("no open shard")?;
    client
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&*first.id)
        .new_starting_hash_key(first.midpoint().to_string())
        .send()
        .await?;
    integration_tests::wait_stream_active(&client, &stream).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Merge the upper child of the split with its open neighbour.
    let open = ShardMap::load(&client, &stream_id).await?;
    let [_, upper_child, neighbour, ..] = open.shards() else {
        return Err("expected three open shards after the split".into());
    };
    client
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge(&*upper_child.id)
        .adjacent_shard_to_merge(&*neighbour.id)
        .send()
        .await?;
    integration_tests::wait_stream_active(&client, &stream).await?;

    let receipts = sending.await??;
    let mut sent = Vec::new();
    for (key, data, receipt) in receipts {
        sent.push((key, data, receipt.await?));
    }
    producer.shutdown().await;
    let landed: std::collections::HashSet<_> =
        sent.iter().map(|s| s.2.shard_id.to_string()).collect();
    assert!(
        landed.len() >= 4,
        "records reached the new shards: {landed:?}"
    );
    let (found, _misplaced) = read_back(&client, &stream).await?;
    assert_where_receipts_say(&found, &sent);

    // What a consumer keeps (AWS's KCL and ours drop a whole aggregate holding a record
    // outside its shard): every record exactly once. A copy may be kept twice only if
    // a call that failed without an answer (a timeout) may have stored it before its
    // retry; an aggregate that landed on an unexpected shard never makes a duplicate.
    let kept = kept_copies(&client, &stream).await?;
    let wrong_shard = sent
        .iter()
        .flat_map(|s| s.2.attempts.iter())
        .filter(|a| a.error.as_ref().is_some_and(|e| e.code == "WrongShard"))
        .count();
    let mut duplicates = 0;
    for (key, data, result) in &sent {
        let copies = kept.get(&(key.clone(), data.clone())).copied().unwrap_or(0);
        assert!(copies >= 1, "{key}: not kept by a consumer");
        let unanswered = result.attempts.iter().any(|a| {
            a.error.as_ref().is_some_and(|e| {
                e.code != "WrongShard" && e.code != "ProvisionedThroughputExceededException"
            })
        });
        if copies > 1 && !unanswered {
            duplicates += 1;
        }
    }
    eprintln!(
        "reshard: {} records, {wrong_shard} wrong-shard attempts, {duplicates} producer duplicates",
        sent.len()
    );
    assert_eq!(
        duplicates, 0,
        "producer duplicates through a split and a merge"
    );
    Ok(())
}

/// How many times each (partition key, data) is in the stream where a consumer keeps
/// it: an aggregate holding any user record outside its shard's hash range is dropped
/// whole, as AWS's KCL and `kinesis-consumer` do.
async fn kept_copies(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> TestResult<HashMap<(String, bytes::Bytes), usize>> {
    let ranges: HashMap<String, (u128, u128)> = list_shards(client, stream)
        .await?
        .iter()
        .map(|s| {
            let range = s.hash_key_range().expect("range");
            let start = range.starting_hash_key().parse().expect("start");
            let end = range.ending_hash_key().parse().expect("end");
            (s.shard_id().to_owned(), (start, end))
        })
        .collect();
    let mut kept = HashMap::new();
    for (shard, record) in read_stream(client, stream).await? {
        let (start, end) = ranges[&shard];
        let users = deaggregate(
            record.partition_key().unwrap_or_default(),
            None,
            bytes::Bytes::copy_from_slice(record.data().as_ref()),
        );
        let mut keys = Vec::with_capacity(users.len());
        for user in &users {
            keys.push(match &user.explicit_hash_key {
                Some(k) => k.parse::<HashKey>()?,
                None => HashKey::from_partition_key(&user.partition_key),
            });
        }
        let misplaced = users
            .iter()
            .zip(&keys)
            .any(|(u, k)| u.aggregated && !(start <= k.0 && k.0 <= end));
        if misplaced {
            continue;
        }
        for user in users {
            *kept
                .entry((user.partition_key.to_string(), user.data))
                .or_insert(0) += 1;
        }
    }
    Ok(kept)
}

#[tokio::test]
async fn backpressure_bounds_the_buffer() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-backpressure");
    create_stream(&client, &stream, 1).await?;
    let producer = Producer::builder(&config)
        .stream(&stream)
        .max_outstanding_records(100)
        .record_max_buffered_time(Duration::from_secs(60))
        .build()
        .await?;

    let mut receipts = Vec::new();
    for i in 0..100 {
        receipts.push(producer.try_send(Record::new(format!("k{i}"), "v"))?);
    }
    assert_eq!(
        producer.try_send(Record::new("k", "v")).err(),
        Some(SendError::Full)
    );
    let blocked = tokio::time::timeout(
        Duration::from_millis(300),
        producer.send(Record::new("k", "v")),
    )
    .await;
    assert!(blocked.is_err(), "send waits while the buffer is full");
    let outstanding = producer.outstanding();
    assert_eq!(outstanding.records, 100);
    assert!(outstanding.oldest_age.is_some());

    producer.flush().await;
    for receipt in receipts {
        assert!(tokio::task::unconstrained(receipt)
            .now_or_never()
            .ok_or("flush left a receipt pending")?
            .is_ok());
    }
    assert_eq!(producer.outstanding().records, 0);
    assert!(producer.try_send(Record::new("k", "v")).is_ok());
    producer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_everything() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-shutdown");
    create_stream(&client, &stream, 2).await?;
    let producer = Producer::builder(&config)
        .stream(&stream)
        .record_max_buffered_time(Duration::from_secs(60))
        .build()
        .await?;
    let mut receipts = Vec::new();
    for i in 0..3_000 {
        receipts.push(
            producer
                .send(Record::new(format!("k{i}"), payload(i, 50)))
                .await?,
        );
    }
    producer.shutdown().await;
    for receipt in receipts {
        let result = tokio::task::unconstrained(receipt)
            .now_or_never()
            .ok_or("shutdown left a receipt pending")?;
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(producer.outstanding().records, 0);
    assert_eq!(
        producer.send(Record::new("k", "v")).await.err(),
        Some(SendError::Closed)
    );
    assert_eq!(read_back(&client, &stream).await?.0.len(), 3_000);
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_typed_errors() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-bad-input");
    create_stream(&client, &stream, 1).await?;

    assert!(matches!(
        Producer::builder(&config).build().await,
        Err(BuildError::MissingStream)
    ));
    assert!(matches!(
        Producer::builder(&config)
            .stream(&stream)
            .aggregation_max_size(10)
            .build()
            .await,
        Err(BuildError::InvalidConfig { .. })
    ));
    match Producer::builder(&config)
        .stream("no-such-stream")
        .build()
        .await
    {
        Err(BuildError::ShardMap(e)) => assert!(e.is_permanent(), "{e}"),
        other => panic!("expected a shard map error, got {other:?}"),
    }

    let producer = Producer::builder(&config).stream(&stream).build().await?;
    let send = |record: Record| {
        let producer = producer.clone();
        async move { producer.send(record).await.err() }
    };
    assert_eq!(
        send(Record::new("", "data")).await,
        Some(SendError::Invalid(InvalidRecord::EmptyPartitionKey))
    );
    assert_eq!(
        send(Record::new("k".repeat(257), "data")).await,
        Some(SendError::Invalid(InvalidRecord::PartitionKeyTooLong {
            chars: 257
        }))
    );
    assert!(matches!(
        send(Record::new("k", vec![0u8; 1024 * 1024])).await,
        Some(SendError::Invalid(InvalidRecord::TooLarge { .. }))
    ));
    assert!(matches!(
        Record::new("k", "v").with_explicit_hash_key("not-a-number"),
        Err(InvalidRecord::ExplicitHashKey(_))
    ));
    // Nothing refused was counted, and a good record still goes through.
    assert_eq!(producer.outstanding().records, 0);
    producer.send(Record::new("k", "v")).await?.await?;
    producer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_dead_endpoint_fails_the_build_and_expires_records() -> TestResult {
    let config = sdk_config().await?;
    let dead = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .endpoint_url("http://127.0.0.1:9")
            .build(),
    );
    let started = std::time::Instant::now();
    match Producer::builder(dead).stream("any").build().await {
        Err(BuildError::ShardMap(e)) => assert!(!e.is_permanent(), "{e}"),
        other => panic!("expected a shard map error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));

    // An endpoint that dies while the producer runs: records expire with their attempts.
    let emulator = Emulator::start().await?;
    let config = emulator.sdk_config().await;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-dead");
    create_stream(&client, &stream, 1).await?;
    let producer = Producer::builder(&config)
        .stream(&stream)
        .record_ttl(Duration::from_secs(2))
        .request_timeout(Duration::from_millis(500))
        .build()
        .await?;
    drop(emulator);
    let mut receipts = Vec::new();
    for i in 0..10 {
        receipts.push(producer.send(Record::new(format!("k{i}"), "v")).await?);
    }
    for (i, receipt) in receipts.into_iter().enumerate() {
        match receipt.await {
            Err(RecordError::Expired {
                attempts, record, ..
            }) => {
                assert!(!attempts.is_empty());
                assert_eq!(*record, Record::new(format!("k{i}"), "v"));
                let code = &attempts[0].error.as_ref().ok_or("failed attempt")?.code;
                assert!(
                    ["Dispatch", "Timeout", "ResponseError"].contains(&code.as_str()),
                    "{code}"
                );
            }
            other => panic!("expected expiry, got {other:?}"),
        }
    }
    producer.shutdown().await;
    Ok(())
}

/// Replaces the responses of the first `remaining` PutRecords calls with a throttling
/// error, after the emulator has stored their records (as a lost response would).
#[derive(Debug)]
struct ThrottleFirstPuts {
    remaining: Arc<AtomicUsize>,
}

#[derive(Debug, Clone)]
struct InjectThrottle;

impl Storable for InjectThrottle {
    type Storer = StoreReplace<Self>;
}

impl Intercept for ThrottleFirstPuts {
    fn name(&self) -> &'static str {
        "ThrottleFirstPuts"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        if target.ends_with(".PutRecords")
            && self
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            cfg.interceptor_state().store_put(InjectThrottle);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg.load::<InjectThrottle>().is_some() {
            let body = r#"{"__type":"ProvisionedThroughputExceededException","message":"injected: rate exceeded"}"#;
            let mut response = Response::new(StatusCode::try_from(400)?, SdkBody::from(body));
            response
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.1");
            *context.response_mut() = response;
        }
        Ok(())
    }
}

#[tokio::test]
async fn injected_throttling_is_retried_against_the_emulator() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-throttled");
    create_stream(&client, &stream, 2).await?;
    let remaining = Arc::new(AtomicUsize::new(3));
    let throttled_client = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .interceptor(ThrottleFirstPuts {
                remaining: remaining.clone(),
            })
            .build(),
    );
    let producer = Producer::builder(throttled_client)
        .stream(&stream)
        .aggregation_enabled(false)
        .collection_max_count(10)
        .build()
        .await?;
    let mut receipts = Vec::new();
    for i in 0..100 {
        let key = format!("k{i}");
        let data = payload(i, 20);
        receipts.push((
            key.clone(),
            data.clone(),
            producer.send(Record::new(key, data)).await?,
        ));
    }
    let mut sent = Vec::new();
    for (key, data, receipt) in receipts {
        sent.push((key, data, receipt.await?));
    }
    producer.shutdown().await;
    assert_eq!(remaining.load(Ordering::SeqCst), 0, "faults were injected");
    let retried: Vec<_> = sent.iter().filter(|s| s.2.attempts.len() > 1).collect();
    assert!(!retried.is_empty());
    for (_, _, result) in &retried {
        let first = result.attempts[0]
            .error
            .as_ref()
            .ok_or("first attempt failed")?;
        assert_eq!(first.code, "ProvisionedThroughputExceededException");
    }
    assert!(producer.stats().failed_attempts >= 3);
    // At least once: the throttled calls' records were stored too, so some appear twice.
    let (found, misplaced) = read_back(&client, &stream).await?;
    assert_eq!(misplaced, 0);
    assert_where_receipts_say(&found, &sent);
    Ok(())
}

#[tokio::test]
async fn a_stream_arn_works_like_a_name() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-arn");
    create_stream(&client, &stream, 1).await?;
    let arn = client
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await?
        .stream_description_summary()
        .ok_or("summary")?
        .stream_arn()
        .to_owned();
    let producer = Producer::builder(&config).stream(arn).build().await?;
    let result = producer.send(Record::new("k", "v")).await?.await?;
    assert_eq!(result.attempts.len(), 1);
    producer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_hot_key_is_spread_when_asked_and_shard_load_shows_it() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer-hot-key");
    create_stream(&client, &stream, 4).await?;
    let producer = Producer::builder(&config)
        .stream(&stream)
        // The emulator never throttles: thresholds low enough that this test's few
        // KB/s make the key's shard hot and the key heavy.
        .hot_key_spread(
            kinesis_producer::HotKeySpread::default()
                .threshold(0.01)
                .key_share(0.01)
                .shards_per_key(4),
        )
        .build()
        .await?;
    let mut receipts = Vec::new();
    for round in 0..2 {
        for i in 0..1_500 {
            let key = if i % 10 == 0 {
                format!("cold-{i}")
            } else {
                "hot".to_owned()
            };
            let data = payload(round * 1_500 + i, 32);
            receipts.push((
                key.clone(),
                data.clone(),
                producer.send(Record::new(key, data)).await?,
            ));
        }
        producer.flush().await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    let load = producer.shard_load();
    let mut sent = Vec::new();
    for (key, data, receipt) in receipts {
        sent.push((key, data, receipt.await?));
    }
    producer.shutdown().await;
    let hot_shards: std::collections::HashSet<_> = sent
        .iter()
        .filter(|s| s.0 == "hot")
        .map(|s| s.2.shard_id.clone())
        .collect();
    assert_eq!(hot_shards.len(), 4, "the hot key used 4 shards");
    assert!(!load.is_empty(), "per-shard load is reported");
    assert!(load.iter().all(|l| l.user_records_per_second > 0.0));
    let (found, misplaced) = read_back(&client, &stream).await?;
    assert_eq!(misplaced, 0);
    assert_where_receipts_say(&found, &sent);
    Ok(())
}
