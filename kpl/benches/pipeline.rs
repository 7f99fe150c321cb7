//! Throughput of the whole producer pipeline on one core, without the network: record
//! validation, hashing, shard prediction, aggregation, rate limiter, collector, PutRecords
//! request building, and per-record receipts. Kinesis is replaced by canned successful
//! responses (aws-smithy-mocks); the rate limit is lifted so the CPU work is measured.
//!
//! ```text
//! cargo bench -p kinesis-producer --bench pipeline
//! ```
//!
//! With `PIPELINE_ONCE=1` it sends the 100,000 records once and exits, for instruction
//! counts that a busy machine does not blur:
//!
//! ```text
//! cargo bench -p kinesis-producer --bench pipeline --no-run
//! PIPELINE_ONCE=1 valgrind --tool=callgrind target/release/deps/pipeline-<hash> --bench
//! ```

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_kinesis::operation::list_shards::ListShardsOutput;
use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use aws_sdk_kinesis::types::{HashKeyRange, PutRecordsResultEntry, SequenceNumberRange, Shard};
use aws_sdk_kinesis::Client;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use criterion::{criterion_group, Criterion, Throughput};
use kinesis_producer::{HashKey, Producer, Record};

const SHARDS: u128 = 4;
const RECORDS: usize = 100_000;

fn fake_client() -> Client {
    let width = u128::MAX / SHARDS;
    let list = mock!(Client::list_shards).then_compute_output(move |_| {
        let shards = (0..SHARDS)
            .map(|i| {
                let start = if i == 0 { 0 } else { i * width + 1 };
                let end = if i + 1 == SHARDS {
                    u128::MAX
                } else {
                    (i + 1) * width
                };
                Shard::builder()
                    .shard_id(format!("shardId-{i:012}"))
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
        ListShardsOutput::builder().set_shards(Some(shards)).build()
    });
    let sequence = Arc::new(AtomicU64::new(0));
    let put = mock!(Client::put_records).then_compute_output(move |request| {
        let records = request
            .records()
            .iter()
            .map(|entry| {
                let key = match entry.explicit_hash_key() {
                    Some(key) => key.parse().unwrap(),
                    None => HashKey::from_partition_key(entry.partition_key().unwrap()).0,
                };
                let shard = (key / (u128::MAX / SHARDS + 1)).min(SHARDS - 1);
                PutRecordsResultEntry::builder()
                    .shard_id(format!("shardId-{shard:012}"))
                    .sequence_number(sequence.fetch_add(1, Ordering::Relaxed).to_string())
                    .build()
            })
            .collect();
        PutRecordsOutput::builder()
            .set_records(Some(records))
            .build()
            .unwrap()
    });
    mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&list, &put])
}

/// Sends `RECORDS` records of 100 bytes over 10,000 keys and awaits every receipt.
async fn send_all(producer: &Producer, keys: &[String], data: &bytes::Bytes) {
    let mut receipts = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = Record::new(keys[i % keys.len()].clone(), data.clone());
        receipts.push(producer.send(record).await.unwrap());
    }
    for receipt in receipts {
        receipt.await.unwrap();
    }
}

fn setup() -> (tokio::runtime::Runtime, Producer, Vec<String>, bytes::Bytes) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let producer = runtime.block_on(async {
        Producer::builder(fake_client())
            .stream("bench")
            .rate_limit(1_000_000)
            .build()
            .await
            .unwrap()
    });
    let keys: Vec<String> = (0..10_000).map(|i| format!("partition-key-{i}")).collect();
    let data = bytes::Bytes::from(vec![b'x'; 100]);
    (runtime, producer, keys, data)
}

fn pipeline(c: &mut Criterion) {
    let (runtime, producer, keys, data) = setup();

    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("100k records of 100 B, one core", |b| {
        b.iter(|| runtime.block_on(send_all(&producer, &keys, &data)))
    });
    group.finish();
}

criterion_group!(benches, pipeline);

fn main() {
    if std::env::var_os("PIPELINE_ONCE").is_some() {
        let (runtime, producer, keys, data) = setup();
        runtime.block_on(send_all(&producer, &keys, &data));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
