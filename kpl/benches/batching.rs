//! How full the producer's PutRecords calls are, without the network: records are fed
//! at a fixed rate for 10 s into a fake Kinesis behind the SDK's HTTP layer (the same
//! fake as the tests, answering at once), and the calls it receives are counted.
//!
//! ```text
//! cargo bench -p kinesis-producer --bench batching
//! ```
//!
//! Two loads: 64 shards at 80 KB/s each of 100-byte records, and 4 shards at their
//! full write rate (1 MiB/s each, data plus partition key). For each: PutRecords calls
//! per second, Kinesis records and bytes per call, and the fewest calls per second the
//! 500-record / 5 MiB limits and the buffer time (100 ms: at least one call per buffer
//! time while records flow) allow for the Kinesis records and bytes the run produced.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/fake/mod.rs"]
mod fake;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fake::Fake;
use futures::stream::{FuturesUnordered, StreamExt};
use kinesis_producer::{Producer, Record, RecordReceipt};
use tokio::sync::mpsc;
use tokio::time::Instant;

const SECONDS: u64 = 10;

async fn run(name: &str, shards: u128, records_per_second: usize, keys: usize) {
    let fake = Fake::new(shards);
    fake.keep.store(false, Ordering::SeqCst);
    let producer = Producer::builder(fake.client())
        .stream("bench")
        .build()
        .await
        .unwrap();
    let (receipts, completed) = mpsc::unbounded_channel();
    let counter = tokio::spawn(count_failures(completed));
    let data = bytes::Bytes::from(vec![b'x'; 100]);
    let keys: Vec<String> = (0..keys).map(|i| format!("partition-key-{i}")).collect();
    let tick = Duration::from_millis(1);
    let per_tick = records_per_second as f64 / 1_000.0;
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(SECONDS) {
        let due = (start.elapsed().as_secs_f64() * 1_000.0 * per_tick) as usize;
        while sent < due {
            let record = Record::new(keys[sent % keys.len()].clone(), data.clone());
            receipts.send(producer.send(record).await.unwrap()).unwrap();
            sent += 1;
        }
        tokio::time::sleep(tick).await;
    }
    drop(receipts);
    producer.shutdown().await;
    let failed = counter.await.unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let puts = fake.puts.lock().unwrap();
    let calls = puts.len() as f64;
    let records: usize = puts.iter().map(|p| p.records).sum();
    let bytes: usize = puts.iter().map(|p| p.bytes).sum();
    let seconds = SECONDS as f64;
    let minimum = (records as f64 / 500.0 / seconds)
        .max(bytes as f64 / (5.0 * 1024.0 * 1024.0) / seconds)
        .max(10.0);
    println!(
        "{name}: {sent} user records in {elapsed:.1} s ({failed} failed); {calls} calls = {:.1} calls/s \
         (minimum {minimum:.1}/s, ratio {:.2}); {:.1} Kinesis records/call; {:.0} bytes/call; \
         {:.0} Kinesis records/s, {:.0} bytes/s",
        calls / seconds,
        calls / seconds / minimum,
        records as f64 / calls,
        bytes as f64 / calls,
        records as f64 / seconds,
        bytes as f64 / seconds,
    );
}

/// Awaits receipts as they complete, in any order (awaiting them in order would hold
/// completed results behind a retried one), and counts the failures.
async fn count_failures(mut receipts: mpsc::UnboundedReceiver<RecordReceipt>) -> u64 {
    let mut pending = FuturesUnordered::new();
    let mut failed = 0;
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            receipt = receipts.recv(), if open => match receipt {
                Some(receipt) => pending.push(receipt),
                None => open = false,
            },
            Some(result) = pending.next(), if !pending.is_empty() => {
                failed += u64::from(result.is_err());
            }
        }
    }
    failed
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, briefly: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // 64 shards x 800 records/s of 100 B = 80 KB/s each.
        run("64 shards at 80 KB/s each", 64, 64 * 800, 64 * 100).await;
        // 4 shards at 1 MiB/s each of (100 B + ~17 B key).
        let full = 4 * 1024 * 1024 / (100 + "partition-key-1234".len());
        run("4 shards at full rate", 4, full, 10_000).await;
    });
}
