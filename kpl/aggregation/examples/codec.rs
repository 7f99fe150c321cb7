//! Codec throughput on one core, no network: aggregation and deaggregation of user records
//! of 100 B, 1 KiB and 50 KiB over 1,000 partition keys, and MD5 over a 1 MiB buffer (every
//! aggregate's checksum hashes each byte once: the physical limit). One JSON line per row.
//!
//! ```text
//! cargo run --release -p kinesis-aggregation --example codec
//! ```
//! Used by `examples/peers/run.py`, which runs AWS's Python `aws-kinesis-agg` on the same
//! work (`examples/peers/codec.py`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_aggregation::{deaggregate, AggregateBuilder};
use md5::{Digest, Md5};

/// The aggregate size limit for a record size: the KPL's 51,200 B, or 1 MiB less room for
/// the partition key when one record alone would not fit.
fn aggregate_limit(size: usize) -> usize {
    if size < 20_000 {
        51_200
    } else {
        1024 * 1024 - 256
    }
}

/// Runs `work` until at least `min` has passed; returns calls and elapsed time.
fn timed(min: Duration, mut work: impl FnMut()) -> (u64, Duration) {
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < min {
        work();
        calls += 1;
    }
    (calls, started.elapsed())
}

fn main() {
    let min = Duration::from_secs(2);
    let keys: Vec<String> = (0..1_000).map(|k| format!("key-{k}")).collect();
    for size in [100usize, 1024, 50 * 1024] {
        let limit = aggregate_limit(size);
        // 8 MiB of user data per round.
        let count = (8 * 1024 * 1024 / size).max(16);
        let records: Vec<(String, Bytes)> = (0..count)
            .map(|i| (keys[i % keys.len()].clone(), Bytes::from(vec![b'x'; size])))
            .collect();
        let mut aggregates = Vec::new();
        let aggregate = |out: &mut Vec<Bytes>| {
            let mut builder = AggregateBuilder::new();
            for (key, data) in &records {
                if !builder.is_empty() && !builder.fits(key, None, data.len(), limit) {
                    out.extend(builder.finish().map(|r| r.data));
                }
                builder.push(key, None, data.clone());
            }
            out.extend(builder.finish().map(|r| r.data));
        };
        let (rounds, elapsed) = timed(min, || {
            aggregates.clear();
            aggregate(&mut aggregates);
        });
        row("aggregate", size, count as u64 * rounds, elapsed);
        let (rounds, elapsed) = timed(min, || {
            let mut users = 0;
            for data in &aggregates {
                users += deaggregate("a", None, data.clone()).len();
            }
            assert_eq!(users, count, "every user record comes back");
        });
        row("deaggregate", size, count as u64 * rounds, elapsed);
    }
    let buffer = vec![7u8; 1024 * 1024];
    let (rounds, elapsed) = timed(min, || {
        std::hint::black_box(Md5::digest(&buffer));
    });
    println!(
        "{{\"op\":\"md5\",\"mb_per_s\":{:.1}}}",
        rounds as f64 * buffer.len() as f64 / elapsed.as_secs_f64() / 1e6
    );
}

fn row(op: &str, size: usize, records: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "{{\"op\":\"{op}\",\"size\":{size},\"records_per_s\":{:.0},\"mb_per_s\":{:.1}}}",
        records as f64 / seconds,
        records as f64 * size as f64 / seconds / 1e6
    );
}
