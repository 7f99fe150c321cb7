#![allow(clippy::unwrap_used)] // A panic is how a test reports failure.
//! Hot-key spreading against a fake Kinesis that enforces 1 MiB/s per shard, on paused
//! time: a key at three times a shard's byte limit is spread and stops being throttled;
//! a busy key on a shard with room to spare is not.

mod fake;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fake::Fake;
use kinesis_producer::{HotKeySpread, Producer, Record, RecordResult};
use tokio::time::Instant;

const MIB: usize = 1024 * 1024;

/// Sends `key` at `bytes_per_second` in 1 KiB records for `seconds`; returns each
/// record's result with the second it was sent in.
async fn send_key(
    producer: &Producer,
    key: &str,
    bytes_per_second: usize,
    seconds: u64,
) -> Vec<(u64, RecordResult)> {
    let data = bytes::Bytes::from(vec![b'x'; 1024 - key.len()]);
    let per_tick = bytes_per_second / 1024 / 100;
    let start = Instant::now();
    let mut receipts = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        let second = start.elapsed().as_secs();
        for _ in 0..per_tick {
            let receipt = producer.send(Record::new(key, data.clone())).await.unwrap();
            receipts.push((second, receipt));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut results = Vec::new();
    for (second, receipt) in receipts {
        results.push((second, receipt.await.unwrap()));
    }
    results
}

fn throttled(result: &RecordResult) -> bool {
    result
        .attempts
        .iter()
        .any(|a| a.error.as_ref().is_some_and(|e| e.code == fake::THROTTLED))
}

#[tokio::test(start_paused = true)]
async fn a_key_at_three_times_a_shards_byte_limit_is_spread_and_stops_being_throttled() {
    let fake = Fake::new(8);
    fake.shard_bytes_per_second.store(MIB, Ordering::SeqCst);
    let producer = fake
        .builder()
        .record_max_buffered_time(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(500))
        .hot_key_spread(HotKeySpread::default().shards_per_key(4))
        .build()
        .await
        .unwrap();
    let results = send_key(&producer, "hot", 3 * MIB, 6).await;
    let shards: HashSet<_> = results.iter().map(|(_, r)| r.shard_id.clone()).collect();
    assert_eq!(shards.len(), 4, "spread over 4 shards: {shards:?}");
    for second in 0..6 {
        let sent: Vec<_> = results.iter().filter(|(s, _)| *s == second).collect();
        let throttled = sent.iter().filter(|(_, r)| throttled(r)).count();
        eprintln!(
            "second {second}: {} records, {throttled} throttled",
            sent.len()
        );
    }
    let last = results.iter().filter(|(s, _)| *s == 5);
    assert_eq!(
        last.filter(|(_, r)| throttled(r)).count(),
        0,
        "records of the last second throttled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_key_on_a_shard_with_room_is_not_spread() {
    let fake = Fake::new(8);
    fake.shard_bytes_per_second.store(MIB, Ordering::SeqCst);
    let producer = fake
        .builder()
        .record_max_buffered_time(Duration::from_millis(100))
        .hot_key_spread(HotKeySpread::default().shards_per_key(4))
        .build()
        .await
        .unwrap();
    // 600 user records/s of 1 KiB: far above any share of 1,000 user records/s, yet
    // aggregated it is about 12 Kinesis records/s and 0.6 MiB/s on one shard.
    let results = send_key(&producer, "busy", 600 * 1024, 3).await;
    let shards: HashSet<_> = results.iter().map(|(_, r)| r.shard_id.clone()).collect();
    assert_eq!(shards.len(), 1, "kept on its shard: {shards:?}");
    assert!(results.iter().all(|(_, r)| !throttled(r)));
}
