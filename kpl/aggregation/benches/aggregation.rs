//! Throughput of the aggregation format: packing 100-byte user records into aggregates
//! of up to 51,200 bytes (the KPL default), and unpacking them.
//!
//! `cargo bench -p kinesis-aggregation --bench aggregation`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kinesis_aggregation::{deaggregate, AggregateBuilder, EncodedRecord};

const RECORDS: usize = 10_000;
const RECORD_SIZE: usize = 100;
const AGGREGATION_MAX_SIZE: usize = 51_200;

fn inputs() -> Vec<(String, Bytes)> {
    (0..RECORDS)
        .map(|i| {
            (
                format!("partition-key-{}", i % 1000),
                Bytes::from(vec![b'x'; RECORD_SIZE]),
            )
        })
        .collect()
}

fn aggregate(inputs: &[(String, Bytes)]) -> Vec<EncodedRecord> {
    let mut builder = AggregateBuilder::new();
    let mut out = Vec::new();
    for (key, data) in inputs {
        if !builder.fits(key, None, data.len(), AGGREGATION_MAX_SIZE) {
            out.extend(builder.finish());
        }
        builder.push(key, None, data.clone());
    }
    out.extend(builder.finish());
    out
}

fn bench(c: &mut Criterion) {
    let inputs = inputs();
    let mut group = c.benchmark_group("aggregation");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("aggregate 100 B records", |b| b.iter(|| aggregate(&inputs)));
    let encoded = aggregate(&inputs);
    group.bench_function("deaggregate 100 B records", |b| {
        b.iter_batched(
            || encoded.clone(),
            |encoded| {
                encoded
                    .into_iter()
                    .map(|e| deaggregate(&e.partition_key, None, e.data).len())
                    .sum::<usize>()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
