#![allow(clippy::unwrap_used)] // A panic is how a test reports failure.
//! The producer's retry, expiry, throttling and shard-map logic against canned Kinesis
//! responses (no network): a fake Kinesis routes records by hash key like the service
//! and can be told to throttle or fail.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::operation::list_shards::ListShardsOutput;
use aws_sdk_kinesis::operation::put_records::{PutRecordsError, PutRecordsOutput};
use aws_sdk_kinesis::types::error::ProvisionedThroughputExceededException;
use aws_sdk_kinesis::types::{HashKeyRange, PutRecordsResultEntry, SequenceNumberRange, Shard};
use aws_sdk_kinesis::Client;
use aws_smithy_mocks::{mock, mock_client, MockResponse, RuleMode};
use bytes::Bytes;
use kinesis_producer::aggregation::deaggregate;
use kinesis_producer::{HashKey, Producer, ProducerBuilder, Record, RecordError};

const THROTTLED: &str = "ProvisionedThroughputExceededException";

#[derive(Clone, Debug)]
struct Stored {
    shard: String,
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: Bytes,
}

/// A fake Kinesis stream: shards by hash range, stored records, injectable faults.
#[derive(Default)]
struct Fake {
    /// Where records really go.
    shards: Mutex<Vec<(String, u128, u128)>>,
    /// What ListShards says (may lag behind `shards` to simulate a reshard).
    listed: Mutex<Vec<(String, u128, u128)>>,
    stored: Mutex<Vec<Stored>>,
    next_sequence: AtomicU64,
    /// The next this many entries are throttled.
    throttle_entries: AtomicUsize,
    /// The next this many calls fail as a whole.
    fail_calls: AtomicUsize,
    always_throttle: std::sync::atomic::AtomicBool,
    list_calls: AtomicUsize,
    /// The next this many ListShards calls fail with HTTP 500.
    fail_lists: AtomicUsize,
}

fn even_shards(n: u128) -> Vec<(String, u128, u128)> {
    let width = u128::MAX / n;
    (0..n)
        .map(|i| {
            let start = if i == 0 { 0 } else { i * width + 1 };
            let end = if i + 1 == n {
                u128::MAX
            } else {
                (i + 1) * width
            };
            (format!("shardId-{i:012}"), start, end)
        })
        .collect()
}

/// The two children of splitting the single shard of `even_shards(1)` in the middle.
/// Like Kinesis, children get new ids: a shard id never changes its hash range.
fn split_in_two() -> Vec<(String, u128, u128)> {
    even_shards(2)
        .into_iter()
        .enumerate()
        .map(|(i, (_, start, end))| (format!("shardId-{:012}", i + 1), start, end))
        .collect()
}

impl Fake {
    fn new(shards: u128) -> Arc<Self> {
        let fake = Fake::default();
        *fake.shards.lock().unwrap() = even_shards(shards);
        *fake.listed.lock().unwrap() = even_shards(shards);
        Arc::new(fake)
    }

    fn shard_of(&self, key: u128) -> String {
        let shards = self.shards.lock().unwrap();
        shards
            .iter()
            .find(|(_, start, end)| *start <= key && key <= *end)
            .map(|(id, _, _)| id.clone())
            .expect("shards cover the hash key space")
    }

    fn client(self: &Arc<Self>) -> Client {
        let fake = self.clone();
        let list = mock!(Client::list_shards).then_compute_response(move |_| {
            fake.list_calls.fetch_add(1, Ordering::SeqCst);
            if take_one(&fake.fail_lists) {
                return MockResponse::Http(aws_smithy_runtime_api::http::Response::new(
                    aws_smithy_runtime_api::http::StatusCode::try_from(500).unwrap(),
                    aws_smithy_types::body::SdkBody::from(
                        r#"{"__type":"InternalFailure","message":"injected"}"#,
                    ),
                ));
            }
            let shards = fake
                .listed
                .lock()
                .unwrap()
                .iter()
                .map(|(id, start, end)| {
                    Shard::builder()
                        .shard_id(id)
                        .hash_key_range(
                            HashKeyRange::builder()
                                .starting_hash_key(start.to_string())
                                .ending_hash_key(end.to_string())
                                .build()
                                .unwrap(),
                        )
                        .sequence_number_range(
                            SequenceNumberRange::builder()
                                .starting_sequence_number("0")
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap()
                })
                .collect();
            MockResponse::Output(ListShardsOutput::builder().set_shards(Some(shards)).build())
        });
        let fake = self.clone();
        let put = mock!(Client::put_records).then_compute_response(move |request| {
            if take_one(&fake.fail_calls) {
                return MockResponse::Error(
                    PutRecordsError::ProvisionedThroughputExceededException(
                        ProvisionedThroughputExceededException::builder()
                            .message("injected: whole request throttled")
                            .build(),
                    ),
                );
            }
            let mut results = Vec::new();
            let mut failed = 0;
            for entry in request.records() {
                if fake.always_throttle.load(Ordering::SeqCst) || take_one(&fake.throttle_entries) {
                    failed += 1;
                    results.push(
                        PutRecordsResultEntry::builder()
                            .error_code(THROTTLED)
                            .error_message("injected: rate exceeded for shard")
                            .build(),
                    );
                    continue;
                }
                let key = match entry.explicit_hash_key() {
                    Some(k) => k.parse::<u128>().unwrap(),
                    None => HashKey::from_partition_key(entry.partition_key().unwrap()).0,
                };
                let shard = fake.shard_of(key);
                let sequence = fake.next_sequence.fetch_add(1, Ordering::SeqCst);
                fake.stored.lock().unwrap().push(Stored {
                    shard: shard.clone(),
                    partition_key: entry.partition_key().unwrap().to_owned(),
                    explicit_hash_key: entry.explicit_hash_key().map(str::to_owned),
                    data: Bytes::copy_from_slice(entry.data().as_ref()),
                });
                results.push(
                    PutRecordsResultEntry::builder()
                        .shard_id(shard)
                        .sequence_number(format!("{sequence:056}"))
                        .build(),
                );
            }
            MockResponse::Output(
                PutRecordsOutput::builder()
                    .failed_record_count(failed)
                    .set_records(Some(results))
                    .build()
                    .unwrap(),
            )
        });
        mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&list, &put])
    }

    fn builder(self: &Arc<Self>) -> ProducerBuilder {
        Producer::builder(self.client())
            .stream("fake")
            .min_backoff(Duration::from_millis(5))
            .max_backoff(Duration::from_millis(50))
            .record_max_buffered_time(Duration::from_millis(10))
            .shard_map_min_refresh_interval(Duration::from_millis(10))
    }

    /// Every user record stored, deaggregated, with the shard it is stored on.
    fn user_records(&self) -> Vec<(String, String, Bytes)> {
        self.stored
            .lock()
            .unwrap()
            .iter()
            .flat_map(|s| {
                deaggregate(
                    &s.partition_key,
                    s.explicit_hash_key.as_deref(),
                    s.data.clone(),
                )
                .into_iter()
                .map(|u| (s.shard.clone(), u.partition_key, u.data))
            })
            .collect()
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
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
    for result in results {
        match result {
            Err(RecordError::Expired { attempts }) => {
                assert!(!attempts.is_empty());
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
        let Err(RecordError::Throttled { attempts }) = result else {
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
        fake.list_calls.load(Ordering::SeqCst) >= 2,
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
async fn send_all_pipes_a_stream_in_order() {
    use futures::StreamExt;
    let fake = Fake::new(2);
    let producer = fake
        .builder()
        .max_outstanding_records(16)
        .build()
        .await
        .unwrap();
    let records = futures::stream::iter((0..300).map(|i| Record::new(format!("k{i}"), "v")));
    let results: Vec<_> = producer.send_all(records).collect().await;
    assert_eq!(results.len(), 300);
    assert!(results.iter().all(Result::is_ok));
    producer.shutdown().await;
    let after = producer.send(Record::new("k", "v")).await;
    assert!(matches!(after, Err(kinesis_producer::SendError::Closed)));
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
            || fake.list_calls.load(Ordering::SeqCst) < 4
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
