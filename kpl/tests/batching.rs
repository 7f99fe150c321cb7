#![allow(clippy::unwrap_used)] // A panic is how a test reports failure.
//! How the producer fills PutRecords calls, against a fake Kinesis on paused time: many
//! shards share requests, retries coalesce with other due records, requests waiting for
//! a connection merge, and a pending flush forces only what was buffered before it.

mod fake;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fake::Fake;
use kinesis_producer::{Producer, Record, RecordReceipt};
use tokio::time::Instant;

const BUFFER_TIME: Duration = Duration::from_millis(100);

/// Sends `per_tick` records of 100 bytes every millisecond for `duration`, over `keys`
/// keys (arrivals spread in time, as real traffic is: each shard's aggregate starts at
/// its own moment).
async fn feed(
    producer: &Producer,
    per_tick: usize,
    duration: Duration,
    keys: usize,
) -> Vec<RecordReceipt> {
    let data = bytes::Bytes::from(vec![b'x'; 100]);
    let start = Instant::now();
    let mut receipts = Vec::new();
    let mut n = 0;
    while start.elapsed() < duration {
        for _ in 0..per_tick {
            let key = format!("key-{}", n % keys);
            receipts.push(producer.send(Record::new(key, data.clone())).await.unwrap());
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    receipts
}

async fn settle(receipts: Vec<RecordReceipt>) {
    for receipt in receipts {
        receipt.await.unwrap();
    }
}

/// The fewest calls the limits allow: one per buffer time at least, 500 records and
/// 5 MiB per call at most.
fn minimum_calls(fake: &Fake, duration: Duration) -> usize {
    let puts = fake.puts.lock().unwrap();
    let records: usize = puts.iter().map(|p| p.records).sum();
    let bytes: usize = puts.iter().map(|p| p.bytes).sum();
    let by_time = (duration.as_millis() / BUFFER_TIME.as_millis()) as usize;
    by_time
        .max(records.div_ceil(500))
        .max(bytes.div_ceil(5 * 1024 * 1024))
}

#[tokio::test(start_paused = true)]
async fn many_shards_share_requests() {
    let fake = Fake::new(64);
    let producer = fake
        .builder()
        .record_max_buffered_time(BUFFER_TIME)
        .build()
        .await
        .unwrap();
    // 64 shards at 800 records/s (80 KB/s) each.
    let duration = Duration::from_secs(1);
    settle(feed(&producer, 51, duration, 6_400).await).await;
    let calls = fake.puts.lock().unwrap().len();
    let minimum = minimum_calls(&fake, duration);
    eprintln!("{calls} calls, minimum {minimum}");
    assert!(
        calls <= 2 * minimum + 2,
        "{calls} calls where {minimum} would do"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_share_requests_with_other_due_records() {
    let fake = Fake::new(64);
    // Half the Kinesis records are throttled for the first 500 ms.
    fake.throttle_every.store(2, Ordering::SeqCst);
    *fake.throttle_until.lock().unwrap() = Some(Instant::now() + Duration::from_millis(500));
    let producer = fake
        .builder()
        .record_max_buffered_time(BUFFER_TIME)
        .build()
        .await
        .unwrap();
    let duration = Duration::from_secs(1);
    settle(feed(&producer, 51, duration, 6_400).await).await;
    assert!(producer.stats().failed_attempts > 100, "throttled");
    let calls = fake.puts.lock().unwrap().len();
    let minimum = minimum_calls(&fake, duration);
    eprintln!("{calls} calls, minimum {minimum}");
    // Retries may add a call per minimum buffer time (50 ms) while they last.
    assert!(
        calls <= 2 * minimum + 2 + 10,
        "{calls} calls where {minimum} would do"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_waiting_for_a_connection_merge() {
    let fake = Fake::new(64);
    *fake.latency.lock().unwrap() = Duration::from_millis(200);
    let producer = fake
        .builder()
        .record_max_buffered_time(BUFFER_TIME)
        .max_connections(1)
        .build()
        .await
        .unwrap();
    settle(feed(&producer, 51, Duration::from_secs(1), 6_400).await).await;
    let puts = fake.puts.lock().unwrap();
    let records: usize = puts.iter().map(|p| p.records).sum();
    let per_call = records as f64 / puts.len() as f64;
    eprintln!(
        "{per_call:.1} Kinesis records per call, {} calls",
        puts.len()
    );
    assert!(
        per_call >= 50.0,
        "{per_call:.1} Kinesis records per call over {} calls",
        puts.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_pending_flush_forces_only_what_was_buffered_before_it() {
    let fake = Fake::new(4);
    *fake.latency.lock().unwrap() = Duration::from_secs(1);
    let producer = fake
        .builder()
        .record_max_buffered_time(BUFFER_TIME)
        .build()
        .await
        .unwrap();
    let first = feed(&producer, 10, Duration::from_millis(1), 100).await;
    let flushing = {
        let producer = producer.clone();
        tokio::spawn(async move { producer.flush().await })
    };
    // The flush waits a second for the slow call; records sent meanwhile are batched as
    // usual, not each pushed out at once.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let calls_before = producer.stats().put_records_calls;
    let started = Instant::now();
    let second = feed(&producer, 2, Duration::from_millis(500), 100).await;
    let calls_during = producer.stats().put_records_calls - calls_before;
    eprintln!("{calls_during} calls while the flush was pending");
    assert!(!flushing.is_finished(), "the flush still waits");
    assert!(started.elapsed() < Duration::from_secs(1));
    flushing.await.unwrap();
    settle(first).await;
    settle(second).await;
    // 500 ms of records at a 100 ms buffer time: about 5 requests (each answered a
    // second later), not one per millisecond.
    assert!(
        calls_during <= 8,
        "{calls_during} calls while the flush was pending"
    );
}
