#![allow(clippy::unwrap_used)] // A panic is how a test reports failure.
//! The producer's retry, expiry, throttling and shard-map logic against a fake Kinesis
//! behind the SDK's HTTP layer (no network): it routes records by hash key like the
//! service and can be told to throttle or fail.

use std::sync::atomic::Ordering;
use std::time::Duration;

use kinesis_producer::{HashKey, Producer, Record, RecordError};

mod fake;

use fake::{even_shards, renumbered, Fake, THROTTLED};

/// The two children of splitting the single shard of `even_shards(1)` in the middle.
fn split_in_two() -> Vec<fake::Range> {
    renumbered(even_shards(2), 1)
}

async fn send_many(
    producer: &Producer,
    n: usize,
) -> Vec<Result<kinesis_producer::RecordResult, RecordError>> {
    let mut receipts = Vec::new();
    for i in 0..n {
        let record = Record::new(format!("key-{i}"), format!("record {i}"));
        receipts.push(producer.send(record).await.expect("accepted"));
    }
    futures::future::join_all(receipts).await
}

#[tokio::test]
async fn throttled_entries_are_retried_until_they_succeed() {
    let fake = Fake::new(2);
    fake.throttle_entries.store(3, Ordering::SeqCst);
    let producer = fake
        .builder()
        .aggregation_enabled(false)
        .build()
        .await
        .unwrap();
    let results = send_many(&producer, 50).await;
    let retried: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().expect("every record succeeds"))
        .filter(|r| r.attempts.len() > 1)
        .collect();
    assert_eq!(retried.len(), 3);
    for result in retried {
        let first = result.attempts[0]
            .error
            .as_ref()
            .expect("first attempt failed");
        assert_eq!(first.code, THROTTLED);
        assert!(result.attempts.last().unwrap().error.is_none());
    }
    assert_eq!(producer.stats().failed_attempts, 3);
    assert_eq!(fake.user_records().len(), 50);
}

#[tokio::test]
async fn failed_requests_are_retried_with_their_attempts_recorded() {
    let fake = Fake::new(2);
    fake.fail_calls.store(2, Ordering::SeqCst);
    let producer = fake.builder().build().await.unwrap();
    let results = send_many(&producer, 20).await;
    for result in &results {
        let result = result.as_ref().expect("succeeds");
        assert!(result.attempts.len() >= 2, "{:?}", result.attempts);
        assert!(result.attempts[0]
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("injected"));
    }
    let mut delivered: Vec<String> = fake
        .user_records()
        .into_iter()
        .map(|(_, pk, _)| pk)
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 20, "nothing lost");
}

#[tokio::test]
async fn records_expire_after_their_ttl_with_every_attempt() {
    let fake = Fake::new(1);
    fake.always_throttle.store(true, Ordering::SeqCst);
    let producer = fake
        .builder()
        .record_ttl(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let results = send_many(&producer, 10).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Err(RecordError::Expired {
                attempts, record, ..
            }) => {
                assert!(!attempts.is_empty());
                // Given back as sent (they travelled in aggregates of several).
                assert_eq!(
                    *record,
                    Record::new(format!("key-{i}"), format!("record {i}"))
                );
                assert!(attempts
                    .iter()
                    .all(|a| a.error.as_ref().unwrap().code == THROTTLED));
            }
            other => panic!("expected expiry, got {other:?}"),
        }
    }
    assert_eq!(producer.stats().user_records_failed, 10);
    assert_eq!(producer.outstanding().records, 0);
}

#[tokio::test]
async fn fail_if_throttled_fails_at_once() {
    let fake = Fake::new(1);
    fake.always_throttle.store(true, Ordering::SeqCst);
    let producer = fake
        .builder()
        .fail_if_throttled(true)
        .build()
        .await
        .unwrap();
    let results = send_many(&producer, 5).await;
    for result in results {
        let Err(RecordError::Throttled { attempts, .. }) = result else {
            panic!("expected throttled, got {result:?}");
        };
        assert_eq!(attempts.len(), 1);
    }
}

#[tokio::test]
async fn aggregates_never_span_shards_and_receipts_say_where_records_are() {
    let fake = Fake::new(4);
    let producer = fake.builder().build().await.unwrap();
    let results = send_many(&producer, 2_000).await;
    let stored = fake.user_records();
    assert_eq!(stored.len(), 2_000);
    for (shard, partition_key, _) in &stored {
        let owner = fake.shard_of(HashKey::from_partition_key(partition_key).0);
        assert_eq!(&owner, shard, "{partition_key} stored on the wrong shard");
    }
    let aggregated = results
        .iter()
        .filter(|r| r.as_ref().unwrap().aggregated)
        .count();
    assert!(aggregated > 1_900, "records were aggregated ({aggregated})");
    assert!(producer.stats().kinesis_records_put < 100);
    for (i, result) in results.iter().enumerate() {
        let result = result.as_ref().unwrap();
        let owner = fake.shard_of(HashKey::from_partition_key(&format!("key-{i}")).0);
        assert_eq!(&*result.shard_id, owner);
    }
}

#[tokio::test]
async fn a_reshard_refreshes_the_map_and_resends_misrouted_aggregates() {
    let fake = Fake::new(1);
    let producer = fake.builder().build().await.unwrap();
    // The stream is split in two, but ListShards still shows one shard for a while.
    *fake.shards.lock().unwrap() = split_in_two();
    let first = send_many(&producer, 500).await;
    *fake.listed.lock().unwrap() = split_in_two();
    let second = send_many(&producer, 500).await;
    for (i, result) in first.iter().chain(&second).enumerate() {
        let result = result.as_ref().expect("succeeds");
        let owner = fake.shard_of(HashKey::from_partition_key(&format!("key-{}", i % 500)).0);
        assert_eq!(&*result.shard_id, owner);
    }
    assert!(
        fake.list_requests.lock().unwrap().len() >= 2,
        "the map was refreshed"
    );
    // Every user record is stored where it belongs (a misrouted aggregate also stays
    // where it landed: consumers drop or deduplicate it).
    let stored: std::collections::HashSet<(String, String)> = fake
        .user_records()
        .into_iter()
        .map(|(shard, pk, _)| (shard, pk))
        .collect();
    for i in 0..500 {
        let key = format!("key-{i}");
        let owner = fake.shard_of(HashKey::from_partition_key(&key).0);
        assert!(
            stored.contains(&(owner, key.clone())),
            "{key} not on its shard"
        );
    }
}

#[tokio::test]
async fn send_stream_pipes_a_stream_in_order() {
    use futures::StreamExt;
    let fake = Fake::new(2);
    let producer = fake
        .builder()
        .max_outstanding_records(16)
        .build()
        .await
        .unwrap();
    let records = futures::stream::iter((0..300).map(|i| Record::new(format!("k{i}"), "v")));
    let results: Vec<_> = producer.send_stream(records).collect().await;
    assert_eq!(results.len(), 300);
    assert!(results.iter().all(Result::is_ok));
    producer.shutdown().await;
    let after = producer.send(Record::new("k", "v")).await;
    assert!(matches!(after, Err(kinesis_producer::SendError::Closed)));
}

#[tokio::test]
async fn the_sink_flushes_when_every_record_landed_and_reports_failures() {
    use futures::{SinkExt, StreamExt};
    let fake = Fake::new(2);
    let producer = fake
        .builder()
        .max_outstanding_records(16)
        .build()
        .await
        .unwrap();
    // Through `SinkExt::send_all`, which flushes at the end: every record has landed
    // when it returns, with backpressure from a buffer of 16 on the way.
    let mut sink = producer.sink();
    let mut records =
        futures::stream::iter((0..300).map(|i| Ok(Record::new(format!("k{i}"), "v"))));
    sink.send_all(&mut records).await.unwrap();
    assert_eq!(producer.stats().user_records_put, 300);
    assert_eq!(producer.outstanding().records, 0);

    // A record the service rejects comes back as the flush's error, once.
    *fake.fail_code.lock().unwrap() = "AccessDeniedException".to_owned();
    fake.fail_calls.store(usize::MAX, Ordering::SeqCst);
    sink.feed(Record::new("denied", "v")).await.unwrap();
    let error = sink.flush().await.expect_err("the rejection is reported");
    assert!(matches!(
        error,
        kinesis_producer::ProduceError::Record(kinesis_producer::RecordError::Rejected { .. })
    ));
    sink.flush().await.expect("reported once");

    // After shutdown, records are refused at admission.
    producer.shutdown().await;
    let refused = futures::stream::iter([Ok(Record::new("late", "v"))])
        .forward(producer.sink())
        .await;
    assert!(matches!(
        refused,
        Err(kinesis_producer::ProduceError::Send(
            kinesis_producer::SendError::Closed
        ))
    ));
}

#[tokio::test]
async fn a_failing_shard_map_refresh_is_retried_until_it_succeeds() {
    let fake = Fake::new(1);
    let producer = fake.builder().build().await.unwrap();
    // The stream is split; the next two ListShards calls fail.
    *fake.shards.lock().unwrap() = split_in_two();
    *fake.listed.lock().unwrap() = split_in_two();
    fake.fail_lists.store(2, Ordering::SeqCst);
    let first = send_many(&producer, 500).await;
    assert!(
        first.iter().all(Result::is_ok),
        "records succeed while the map is stale"
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while fake.fail_lists.load(Ordering::SeqCst) > 0
            || fake.list_requests.lock().unwrap().len() < 4
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the refresh was retried after its failures");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // With the refreshed map, predictions are right: no aggregate lands on the wrong
    // shard and is resent (which would add a `WrongShard` attempt).
    let second = send_many(&producer, 500).await;
    for (i, result) in second.iter().enumerate() {
        let result = result.as_ref().unwrap();
        let owner = fake.shard_of(HashKey::from_partition_key(&format!("key-{i}")).0);
        assert_eq!(&*result.shard_id, owner);
        assert!(
            result.aggregated && result.attempts.len() == 1,
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn an_aggregate_can_never_exceed_the_record_limit() {
    // The aggregate's 1-byte partition key counts against the record limit: an
    // aggregation limit equal to the record limit would let an aggregate overflow it and
    // make Kinesis refuse the whole call, with up to 499 other records.
    let fake = Fake::new(1);
    for (aggregation_max_size, max_record_size) in [
        (1024 * 1024, 1024 * 1024),
        (10 * 1024 * 1024, 1024 * 1024),
        (2_000, 2_000),
    ] {
        let built = fake
            .builder()
            .aggregation_max_size(aggregation_max_size)
            .max_record_size(max_record_size)
            .build()
            .await;
        assert!(
            matches!(built, Err(kinesis_producer::BuildError::InvalidConfig { .. })),
            "aggregation_max_size {aggregation_max_size} with max_record_size {max_record_size} accepted"
        );
    }
    let producer = fake
        .builder()
        .aggregation_max_size(1_999)
        .max_record_size(2_000)
        .build()
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for i in 0..200 {
        let data = vec![b'x'; 90 + i % 50];
        receipts.push(
            producer
                .send(Record::new(format!("k{i}"), data))
                .await
                .unwrap(),
        );
    }
    for receipt in receipts {
        receipt.await.unwrap();
    }
    for stored in fake.stored.lock().unwrap().iter() {
        assert!(stored.data.len() + stored.partition_key.len() <= 2_000);
    }
}

#[tokio::test]
async fn errors_that_retrying_cannot_fix_fail_at_once() {
    for code in [
        "ResourceNotFoundException",
        "AccessDeniedException",
        "KMSDisabledException",
        "KMSNotFoundException",
        "KMSAccessDeniedException",
        "KMSOptInRequired",
        "ValidationException",
    ] {
        let fake = Fake::new(1);
        *fake.fail_code.lock().unwrap() = code.to_owned();
        fake.fail_calls.store(usize::MAX, Ordering::SeqCst);
        let producer = fake
            .builder()
            .record_ttl(Duration::from_secs(3))
            .build()
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let results = send_many(&producer, 5).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{code}: not at once"
        );
        for result in results {
            let error = result.expect_err("rejected");
            assert!(
                error.to_string().starts_with("record rejected"),
                "{code}: {error}"
            );
            let attempts = error.attempts();
            assert_eq!(attempts.len(), 1, "{code}: not retried");
            assert_eq!(attempts[0].error.as_ref().unwrap().code, code);
        }
    }
}

#[tokio::test]
async fn retry_permanent_errors_keeps_the_kpl_behaviour() {
    let fake = Fake::new(1);
    *fake.fail_code.lock().unwrap() = "ResourceNotFoundException".to_owned();
    fake.fail_calls.store(usize::MAX, Ordering::SeqCst);
    let producer = fake
        .builder()
        .retry_permanent_errors(true)
        .record_ttl(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    for result in send_many(&producer, 3).await {
        let Err(RecordError::Expired { attempts, .. }) = result else {
            panic!("expected an expiry, got {result:?}");
        };
        assert!(attempts.len() > 1, "retried until the TTL");
    }
}

#[tokio::test]
async fn attempts_carry_their_start_and_duration_and_share_their_error() {
    let fake = Fake::new(1);
    // The first call's records are all throttled; the aggregate then succeeds.
    fake.throttle_entries.store(1, Ordering::SeqCst);
    *fake.latency.lock().unwrap() = Duration::from_millis(20);
    let before = std::time::SystemTime::now();
    let producer = fake.builder().build().await.unwrap();
    let results: Vec<_> = send_many(&producer, 50)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let after = std::time::SystemTime::now();
    for result in &results {
        assert_eq!(result.attempts.len(), 2);
        for attempt in result.attempts.iter() {
            assert!(attempt.started >= before && attempt.started <= after);
            assert!(attempt.duration >= Duration::from_millis(20));
        }
        assert!(result.attempts[0].started < result.attempts[1].started);
    }
    // One failed call: one error, shared by every user record it carried.
    let first = results[0].attempts[0].error.as_ref().unwrap();
    assert!(results
        .iter()
        .all(|r| std::sync::Arc::ptr_eq(first, r.attempts[0].error.as_ref().unwrap())));
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_gets_a_longer_timeout_after_one_timeout() {
    let timed_out = |attempt: &kinesis_producer::Attempt| {
        attempt.error.as_ref().is_some_and(|e| e.code == "Timeout")
    };
    // Every call takes 10 s, beyond the 6 s floor: the first times out at 6 s, the retry
    // is given 3 x 6 s and answered; with the producer's own bodies and the SDK's.
    for fast_path in [true, false] {
        let fake = Fake::new(1);
        *fake.latency.lock().unwrap() = Duration::from_secs(10);
        let producer = fake
            .builder()
            .put_records_fast_path(fast_path)
            .build()
            .await
            .unwrap();
        for result in send_many(&producer, 50).await {
            let attempts = result.unwrap().attempts;
            assert_eq!(attempts.len(), 2, "{attempts:?}");
            assert!(timed_out(&attempts[0]));
            assert_eq!(attempts[0].duration, Duration::from_secs(6));
            assert!(attempts[1].error.is_none());
            assert_eq!(attempts[1].duration, Duration::from_secs(10));
        }
        assert_eq!(producer.stats().put_records_timeouts, 1);
    }

    // The KPL's fixed timeout: every attempt times out at 6 s until the TTL.
    let fake = Fake::new(1);
    *fake.latency.lock().unwrap() = Duration::from_secs(10);
    let producer = fake
        .builder()
        .adaptive_request_timeout(false)
        .build()
        .await
        .unwrap();
    for result in send_many(&producer, 50).await {
        match result {
            Err(RecordError::Expired { attempts, .. }) => {
                assert!(attempts.len() >= 4, "{attempts:?}");
                assert!(attempts.iter().all(timed_out));
            }
            other => panic!("expected expiry after timeouts, got {other:?}"),
        }
    }
    assert!(producer.stats().put_records_timeouts >= 4);
}
