//! Peak heap of the producer under sustained throttling, measured by a counting global
//! allocator (`cap`) in this benchmark binary, not in the library.
//!
//! ```text
//! cargo bench -p kinesis-producer --bench memory
//! ```
//!
//! 1,000,000 user records of 1 KiB (over 10,000 partition keys, 64 shards) are sent
//! with `max_outstanding_bytes` = 64 MiB into a fake Kinesis behind the SDK's HTTP layer
//! (the tests' fake, answering at once, keeping no data) that throttles every other
//! Kinesis record for the first 60 s. Printed: the heap in use before the producer
//! starts, the peak while it runs, and the peak less the baseline against the limit.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/fake/mod.rs"]
mod fake;

use std::alloc::System;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cap::Cap;
use fake::Fake;
use futures::stream::{FuturesUnordered, StreamExt};
use kinesis_producer::{Producer, Record, RecordReceipt};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const RECORDS: usize = 1_000_000;
const LIMIT: usize = 64 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

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
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fake = Fake::new(64);
        fake.keep.store(false, Ordering::SeqCst);
        fake.throttle_every.store(2, Ordering::SeqCst);
        let start = Instant::now();
        *fake.throttle_until.lock().unwrap() = Some(start + Duration::from_secs(60));
        let producer = Producer::builder(fake.client())
            .stream("bench")
            .max_outstanding_bytes(LIMIT)
            .build()
            .await
            .unwrap();
        let baseline = ALLOCATOR.allocated();
        let (receipts, completed) = mpsc::unbounded_channel();
        let counter = tokio::spawn(count_failures(completed));
        let keys: Vec<String> = (0..10_000).map(|i| format!("partition-key-{i}")).collect();
        let mut samples = Vec::new();
        let mut last_sample = Instant::now();
        for i in 0..RECORDS {
            let data = bytes::Bytes::from(vec![b'x'; 1024]);
            let receipt = producer
                .send(Record::new(keys[i % keys.len()].clone(), data))
                .await
                .unwrap();
            receipts.send(receipt).unwrap();
            if last_sample.elapsed() >= Duration::from_secs(10) {
                last_sample = Instant::now();
                samples.push(format!(
                    "t={:.0}s sent={i} heap={:.1} MiB",
                    start.elapsed().as_secs_f64(),
                    ALLOCATOR.allocated() as f64 / MIB
                ));
            }
        }
        drop(receipts);
        producer.shutdown().await;
        let failed = counter.await.unwrap();
        let stats = producer.stats();
        for sample in samples {
            println!("{sample}");
        }
        let peak = ALLOCATOR.max_allocated();
        println!(
            "{RECORDS} records of 1 KiB in {:.1} s: {} put, {failed} failed, {} failed attempts, {} calls",
            start.elapsed().as_secs_f64(),
            stats.user_records_put,
            stats.failed_attempts,
            stats.put_records_calls,
        );
        println!(
            "heap: baseline {:.1} MiB, peak {:.1} MiB, peak - baseline {:.1} MiB = {:.2} x max_outstanding_bytes ({:.0} MiB)",
            baseline as f64 / MIB,
            peak as f64 / MIB,
            (peak - baseline) as f64 / MIB,
            (peak - baseline) as f64 / LIMIT as f64,
            LIMIT as f64 / MIB,
        );
    });
}
