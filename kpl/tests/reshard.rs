#![allow(clippy::unwrap_used)] // A panic is how a test reports failure.
//! Resharding against a fake Kinesis: aggregates that land on an unexpected shard are
//! delivered when the shard holds all their records and resent otherwise, with no
//! duplicate a consumer would keep; resent records and records the map cannot place are
//! predicted, aggregated and rate limited again; ListShards asks for open shards only.

mod fake;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fake::{even_shards, renumbered, Fake};
use kinesis_producer::{HashKey, Producer, Record, RecordResult};

/// Keys whose hash falls in `start..=end`, `n` of them.
fn keys_in(start: u128, end: u128, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| {
            let h = HashKey::from_partition_key(k).0;
            start <= h && h <= end
        })
        .take(n)
        .collect()
}

async fn send_keys(producer: &Producer, keys: &[String]) -> Vec<RecordResult> {
    let mut receipts = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let record = Record::new(key.clone(), format!("record {i} of {key}"));
        receipts.push(producer.send(record).await.unwrap());
    }
    let mut results = Vec::new();
    for receipt in receipts {
        results.push(receipt.await.expect("every record succeeds"));
    }
    results
}

fn wrong_shard_attempts(results: &[RecordResult]) -> usize {
    results
        .iter()
        .flat_map(|r| r.attempts.iter())
        .filter(|a| a.error.as_ref().is_some_and(|e| e.code == "WrongShard"))
        .count()
}

/// Asserts every sent record is kept by a consumer exactly once.
fn assert_once(fake: &Fake, results: &[RecordResult], sent: usize) {
    let copies = fake.kept_copies();
    assert_eq!(copies.len(), sent, "every record kept");
    let duplicated = copies.values().filter(|n| **n > 1).count();
    assert_eq!(duplicated, 0, "records a consumer keeps twice");
    assert_eq!(results.len(), sent);
}

#[tokio::test]
async fn after_a_merge_aggregates_on_the_merged_shard_are_delivered_not_resent() {
    let fake = Fake::new(2);
    let producer = fake.builder().build().await.unwrap();
    // The two shards are merged; the producer's map still has them.
    let merged = renumbered(even_shards(1), 2);
    *fake.closed.lock().unwrap() = even_shards(2);
    *fake.shards.lock().unwrap() = merged.clone();
    *fake.listed.lock().unwrap() = merged;
    let keys: Vec<String> = (0..1_000).map(|i| format!("key-{i}")).collect();
    let results = send_keys(&producer, &keys).await;
    assert_once(&fake, &results, 1_000);
    assert_eq!(wrong_shard_attempts(&results), 0, "nothing resent");
    assert!(results
        .iter()
        .all(|r| &*r.shard_id == "shardId-000000000002"));
    assert!(
        results.iter().all(|r| r.aggregated),
        "delivered as aggregated"
    );
}

#[tokio::test]
async fn after_a_split_aggregates_inside_one_child_are_delivered_not_resent() {
    let fake = Fake::new(1);
    let producer = fake.builder().build().await.unwrap();
    let children = renumbered(even_shards(2), 1);
    *fake.closed.lock().unwrap() = even_shards(1);
    *fake.shards.lock().unwrap() = children.clone();
    *fake.listed.lock().unwrap() = children.clone();
    // Every key in the lower child: the aggregate predicted for the parent lands on a
    // shard the map does not know, which holds all of its records.
    let (_, start, end) = children[0].clone();
    let keys = keys_in(start, end, 300);
    let results = send_keys(&producer, &keys).await;
    assert_once(&fake, &results, 300);
    assert_eq!(wrong_shard_attempts(&results), 0, "nothing resent");
    assert!(results
        .iter()
        .all(|r| &*r.shard_id == "shardId-000000000001"));
}

#[tokio::test]
async fn after_a_split_spanning_aggregates_are_resent_aggregated_without_duplicates() {
    let fake = Fake::new(1);
    let producer = fake.builder().build().await.unwrap();
    let children = renumbered(even_shards(2), 1);
    *fake.closed.lock().unwrap() = even_shards(1);
    *fake.shards.lock().unwrap() = children.clone();
    *fake.listed.lock().unwrap() = children;
    let keys: Vec<String> = (0..1_000).map(|i| format!("key-{i}")).collect();
    let results = send_keys(&producer, &keys).await;
    // The first aggregate spans both children: a consumer drops it, so its records are
    // sent again; each record is kept once.
    assert_once(&fake, &results, 1_000);
    assert!(wrong_shard_attempts(&results) > 0, "the spanning aggregate");
    // Resent records were predicted with the refreshed map and aggregated again, not
    // sent one by one.
    assert!(
        results.iter().all(|r| r.aggregated),
        "resent records were aggregated again"
    );
    let kinesis_records = fake.stored.lock().unwrap().len();
    assert!(kinesis_records <= 10, "{kinesis_records} Kinesis records");
    for (key, result) in keys.iter().zip(&results) {
        assert_eq!(
            &*result.shard_id,
            fake.shard_of(HashKey::from_partition_key(key).0)
        );
    }
}

#[tokio::test]
async fn records_the_map_cannot_place_wait_for_a_refresh_and_are_aggregated() {
    let fake = Fake::new(2);
    // ListShards first shows only the lower shard (a gap where the upper one is).
    let all = even_shards(2);
    *fake.listed.lock().unwrap() = vec![all[0].clone()];
    let producer = fake.builder().build().await.unwrap();
    *fake.listed.lock().unwrap() = all.clone();
    let (_, start, end) = all[1].clone();
    let keys = keys_in(start, end, 200);
    let results = send_keys(&producer, &keys).await;
    assert!(
        fake.list_requests.lock().unwrap().len() >= 2,
        "an uncovered hash key refreshed the map"
    );
    assert!(
        results.iter().all(|r| r.aggregated),
        "predicted and aggregated after the refresh"
    );
    assert_eq!(fake.stored.lock().unwrap().len(), 1, "one aggregate");
}

#[tokio::test(start_paused = true)]
async fn records_the_map_cannot_place_are_rate_limited() {
    let fake = Fake::new(2);
    let all = even_shards(2);
    *fake.listed.lock().unwrap() = vec![all[0].clone()];
    // 1 % of a shard's limits: 10 records/s.
    let producer = fake
        .builder()
        .aggregation_enabled(false)
        .rate_limit(1)
        .build()
        .await
        .unwrap();
    let (_, start, end) = all[1].clone();
    let keys = keys_in(start, end, 100);
    let mut receipts = Vec::new();
    for key in &keys {
        receipts.push(producer.send(Record::new(key.clone(), "v")).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = fake.stored_count.load(Ordering::SeqCst);
    assert!(
        early <= 20,
        "{early} records in the first 500 ms at 10 records/s"
    );
    for receipt in receipts {
        receipt.await.unwrap();
    }
}

#[tokio::test]
async fn the_shard_map_asks_for_open_shards_only_and_falls_back() {
    let fake = Fake::new(2);
    *fake.closed.lock().unwrap() = renumbered(even_shards(1), 9);
    let producer = fake.builder().build().await.unwrap();
    let requests = fake.list_requests.lock().unwrap().clone();
    assert_eq!(requests[0].shard_filter.as_deref(), Some("AT_LATEST"));
    assert_eq!(requests[0].max_results, Some(1_000));
    producer
        .send(Record::new("k", "v"))
        .await
        .unwrap()
        .await
        .unwrap();

    // An endpoint that rejects ShardFilter: the map lists every shard, keeps the open.
    let fake = Fake::new(2);
    *fake.closed.lock().unwrap() = renumbered(even_shards(1), 9);
    fake.reject_shard_filter.store(true, Ordering::SeqCst);
    let producer = fake.builder().build().await.unwrap();
    let requests = fake.list_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].shard_filter, None);
    let map =
        kinesis_producer::ShardMap::load(&fake.client(), &kinesis_producer::StreamId::new("fake"))
            .await
            .unwrap();
    assert_eq!(map.shards().len(), 2, "closed shard left out");
    producer
        .send(Record::new("k", "v"))
        .await
        .unwrap()
        .await
        .unwrap();
}
