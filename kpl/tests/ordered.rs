#![allow(clippy::unwrap_used)] // A panic is how a test reports failure.
//! Ordered mode (`ProducerConfig::ordered`) against the fake Kinesis: the records of a
//! partition key are stored in `send` order through per-record throttling, whole-call
//! failures and a reshard; without it, the same faults reorder them (the control).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kinesis_producer::aggregation::deaggregate;
use kinesis_producer::{HashKey, Producer, Record};

mod fake;

use fake::{even_shards, renumbered, Fake};

const KEYS: u64 = 16;

/// Sends records `key-{i % KEYS}` / `{i}` in order, 20 every 2 ms (so each shard has
/// several Kinesis records on their way at once); every one must succeed.
async fn send_all(producer: &Producer, range: std::ops::Range<u64>) {
    let mut receipts = Vec::new();
    for i in range {
        let record = Record::new(format!("key-{}", i % KEYS), i.to_string());
        receipts.push(producer.send(record).await.unwrap());
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for receipt in receipts {
        receipt.await.unwrap();
    }
}

/// Per key, the ids in the order a consumer reads them: stored order (the fake stores
/// one record at a time, and a parent's records all precede its children's here), less
/// the aggregates a consumer drops (stored on a shard that does not hold all their
/// records).
fn read_back(fake: &Fake) -> HashMap<String, Vec<u64>> {
    let ranges: HashMap<String, (u128, u128)> = fake
        .shards
        .lock()
        .unwrap()
        .iter()
        .chain(fake.closed.lock().unwrap().iter())
        .map(|(id, start, end)| (id.clone(), (*start, *end)))
        .collect();
    let mut ids: HashMap<String, Vec<u64>> = HashMap::new();
    for stored in fake.stored.lock().unwrap().iter() {
        let (start, end) = ranges[&stored.shard];
        let users = deaggregate(&stored.partition_key, None, stored.data.clone());
        let misplaced = users.iter().any(|u| {
            let key = HashKey::from_partition_key(&u.partition_key).0;
            u.aggregated && !(start <= key && key <= end)
        });
        if misplaced {
            continue;
        }
        for user in users {
            let id = std::str::from_utf8(&user.data).unwrap().parse().unwrap();
            ids.entry(user.partition_key.to_string())
                .or_default()
                .push(id);
        }
    }
    ids
}

/// Checks that every record of `0..n` is there; returns how many records of a key came
/// after a newer one of that key (first copies only: a copy sent again after a lost
/// answer or a misplaced aggregate repeats what was already there).
fn reorders(ids: &HashMap<String, Vec<u64>>, n: u64) -> usize {
    let mut reorders = 0;
    let mut seen = std::collections::HashSet::new();
    for list in ids.values() {
        let mut newest = None;
        for &id in list {
            if !seen.insert(id) {
                continue;
            }
            if newest.is_some_and(|newest| id < newest) {
                reorders += 1;
            }
            newest = newest.max(Some(id));
        }
    }
    assert_eq!(seen.len() as u64, n, "every record stored");
    reorders
}

async fn with_throttling(ordered: bool) -> usize {
    let fake = Fake::new(4);
    // One record in three is throttled (per record: the others of its call succeed), and
    // some calls fail whole.
    fake.throttle_every.store(3, Ordering::SeqCst);
    *fake.latency.lock().unwrap() = Duration::from_millis(5);
    let producer = fake
        .builder()
        .ordered(ordered)
        .record_ttl(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    send_all(&producer, 0..1_000).await;
    fake.fail_calls.store(5, Ordering::SeqCst);
    send_all(&producer, 1_000..2_000).await;
    producer.shutdown().await;
    reorders(&read_back(&fake), 2_000)
}

#[tokio::test]
async fn ordered_mode_keeps_each_keys_order_through_partial_failures() {
    assert_eq!(
        with_throttling(true).await,
        0,
        "ordered: no record reordered"
    );
    // The control: the same faults reorder records without it, so the check can fail.
    assert!(with_throttling(false).await > 0, "unordered mode reorders");
}

async fn through_a_split(ordered: bool) -> usize {
    let fake = Fake::new(1);
    fake.throttle_every.store(4, Ordering::SeqCst);
    let producer = fake.builder().ordered(ordered).build().await.unwrap();
    send_all(&producer, 0..500).await;
    // The shard splits; ListShards lags: aggregates land on the children, where some do
    // not belong, and are sent again once the map is refreshed.
    *fake.closed.lock().unwrap() = even_shards(1);
    *fake.shards.lock().unwrap() = renumbered(even_shards(2), 1);
    let sending = send_all(&producer, 500..1_500);
    let lagging = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        *fake.listed.lock().unwrap() = renumbered(even_shards(2), 1);
    };
    tokio::join!(sending, lagging);
    producer.shutdown().await;
    reorders(&read_back(&fake), 1_500)
}

#[tokio::test]
async fn ordered_mode_keeps_each_keys_order_through_a_split() {
    assert_eq!(through_a_split(true).await, 0);
    assert!(through_a_split(false).await > 0, "unordered mode reorders");
}

#[tokio::test]
async fn ordered_mode_refuses_hot_key_spreading() {
    let fake = Fake::new(1);
    let built = fake
        .builder()
        .ordered(true)
        .hot_key_spread(kinesis_producer::HotKeySpread::default())
        .build()
        .await;
    match built {
        Err(kinesis_producer::BuildError::InvalidConfig { setting, .. }) => {
            assert_eq!(setting, "ordered")
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}
