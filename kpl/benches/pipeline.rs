//! Throughput of the whole producer pipeline on one core, without the network: record
//! validation, hashing, shard prediction, aggregation, rate limiter, collector, the
//! PutRecords request (JSON body, base64, SigV4 signing), the response parsed by the SDK,
//! and per-record receipts. Kinesis is replaced by a fake behind the SDK's HTTP layer
//! that reads each request's records and answers as Kinesis does; the rate limit is
//! lifted so the CPU work is measured.
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
//!
//! Either way it ends with one more run under a counting global allocator
//! (`stats_alloc`, in this benchmark binary only) and prints the heap allocations and
//! bytes per record, the caller's own included: the bench clones each record's
//! partition key (`Record` owns a `String`), one allocation per record.

#![allow(missing_docs, clippy::unwrap_used)]

use std::alloc::System;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use aws_credential_types::Credentials;
use aws_sdk_kinesis::config::{BehaviorVersion, Region};
use aws_sdk_kinesis::Client;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use criterion::{criterion_group, Criterion, Throughput};
use kinesis_producer::{HashKey, Producer, Record};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SHARDS: u128 = 4;
const RECORDS: usize = 100_000;

/// Kinesis behind the SDK's HTTP layer: ListShards gives `SHARDS` even shards, PutRecords
/// puts every record on the shard its hash key falls in.
#[derive(Clone, Debug, Default)]
struct FakeKinesis {
    sequence: Arc<AtomicU64>,
    body: Arc<std::sync::Mutex<Vec<u8>>>,
}

fn shard_id(shard: u128) -> String {
    format!("shardId-{shard:012}")
}

fn respond(body: String) -> HttpResponse {
    let mut response = HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::from(body));
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.1");
    response
}

fn list_shards() -> HttpResponse {
    let width = u128::MAX / SHARDS;
    let shards: Vec<String> = (0..SHARDS)
        .map(|i| {
            let start = if i == 0 { 0 } else { i * width + 1 };
            let end = if i + 1 == SHARDS {
                u128::MAX
            } else {
                (i + 1) * width
            };
            format!(
                r#"{{"ShardId":"{}","HashKeyRange":{{"StartingHashKey":"{start}","EndingHashKey":"{end}"}},"SequenceNumberRange":{{"StartingSequenceNumber":"0"}}}}"#,
                shard_id(i)
            )
        })
        .collect();
    respond(format!(r#"{{"Shards":[{}]}}"#, shards.join(",")))
}

/// Position just past the next `"` from `from`.
fn after_quote(body: &[u8], from: usize) -> usize {
    from + memchr::memchr(b'"', &body[from..]).unwrap() + 1
}

/// Calls `each(explicit_hash_key, partition_key)` for every entry of a PutRecords body.
/// Reads just enough JSON for what the SDK and the producer write: an array of objects
/// whose fields are strings without escapes (base64 data, decimal hash keys, the
/// bench's partition keys). Strings are skipped with `memchr`, so the fake costs little
/// next to the producer.
fn for_each_entry(body: &[u8], mut each: impl FnMut(Option<&[u8]>, &[u8])) {
    const RECORDS_FIELD: &[u8] = b"\"Records\":[";
    let mut i = memchr::memmem::find(body, RECORDS_FIELD).unwrap() + RECORDS_FIELD.len();
    while body[i] == b'{' {
        i += 1;
        let (mut explicit_hash_key, mut partition_key) = (None, &body[..0]);
        loop {
            let name_start = i + 1;
            let name_end = after_quote(body, name_start) - 1;
            let value_start = name_end + 3; // `":"`
            i = after_quote(body, value_start);
            let value = &body[value_start..i - 1];
            match &body[name_start..name_end] {
                b"ExplicitHashKey" => explicit_hash_key = Some(value),
                b"PartitionKey" => partition_key = value,
                _ => {}
            }
            i += 1;
            if body[i - 1] == b'}' {
                break;
            }
        }
        each(explicit_hash_key, partition_key);
        if body[i] == b',' {
            i += 1;
        }
    }
}

impl FakeKinesis {
    fn put_records(&self, body: &[u8]) -> HttpResponse {
        let mut out = String::with_capacity(64 * 1024);
        out.push_str(r#"{"FailedRecordCount":0,"Records":["#);
        let mut first = true;
        for_each_entry(body, |explicit_hash_key, partition_key| {
            let key = match explicit_hash_key {
                Some(key) => std::str::from_utf8(key).unwrap().parse::<u128>().unwrap(),
                None => HashKey::from_partition_key(std::str::from_utf8(partition_key).unwrap()).0,
            };
            let shard = (key / (u128::MAX / SHARDS + 1)).min(SHARDS - 1);
            if !first {
                out.push(',');
            }
            first = false;
            let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
            out.push_str(&format!(
                r#"{{"SequenceNumber":"{sequence:056}","ShardId":"{}"}}"#,
                shard_id(shard)
            ));
        });
        out.push_str("]}");
        respond(out)
    }
}

impl HttpConnector for FakeKinesis {
    fn call(&self, mut request: HttpRequest) -> HttpConnectorFuture {
        let fake = self.clone();
        HttpConnectorFuture::new(async move {
            let target = request.headers().get("x-amz-target").unwrap_or_default();
            if target.ends_with(".ListShards") {
                return Ok(list_shards());
            }
            // A streamed body is read as a server reads it, into a buffer kept from one
            // call to the next.
            let mut body = std::mem::take(&mut *fake.body.lock().unwrap());
            body.clear();
            let mut stream = request.take_body();
            while let Some(frame) = http_body_util::BodyExt::frame(&mut stream).await {
                if let Ok(data) = frame.unwrap().into_data() {
                    body.extend_from_slice(&data);
                }
            }
            let response = fake.put_records(&body);
            *fake.body.lock().unwrap() = body;
            Ok(response)
        })
    }
}

impl HttpClient for FakeKinesis {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn fake_client() -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("fake", "fake", None, None, "fake"))
        .http_client(FakeKinesis::default())
        .build();
    Client::from_conf(config)
}

/// Sends `RECORDS` records of 100 bytes over 10,000 keys, flushes, and awaits every
/// receipt.
async fn send_all(producer: &Producer, keys: &[String], data: &bytes::Bytes) {
    let mut receipts = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = Record::new(keys[i % keys.len()].clone(), data.clone());
        receipts.push(producer.send(record).await.unwrap());
    }
    // The last aggregates go now rather than after their buffering time (100 ms), which
    // would be idle time, not work.
    producer.flush().await;
    for receipt in receipts {
        receipt.await.unwrap();
    }
}

/// `ordered`: the producer's ordered mode (one Kinesis record per shard at a time).
fn setup(ordered: bool) -> (tokio::runtime::Runtime, Producer, Vec<String>, bytes::Bytes) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let producer = runtime.block_on(async {
        Producer::builder(fake_client())
            .stream("bench")
            .rate_limit(1_000_000)
            .ordered(ordered)
            // The fake answers ListShards and PutRecords only.
            .max_record_size(1024 * 1024)
            .build()
            .await
            .unwrap()
    });
    let keys: Vec<String> = (0..10_000).map(|i| format!("partition-key-{i}")).collect();
    let data = bytes::Bytes::from(vec![b'x'; 100]);
    (runtime, producer, keys, data)
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, ordered) in [
        ("100k records of 100 B, one core", false),
        ("100k records of 100 B, one core, ordered mode", true),
    ] {
        let (runtime, producer, keys, data) = setup(ordered);
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(send_all(&producer, &keys, &data)))
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);

/// One more run of `RECORDS` records on a warm producer, counting heap allocations.
fn count_allocations(
    runtime: &tokio::runtime::Runtime,
    producer: &Producer,
    keys: &[String],
    data: &bytes::Bytes,
) {
    let before = ALLOCATOR.stats();
    let started = Instant::now();
    runtime.block_on(send_all(producer, keys, data));
    let elapsed = started.elapsed();
    let used = ALLOCATOR.stats() - before;
    let per_record = |n: usize| n as f64 / RECORDS as f64;
    println!(
        "pipeline/allocations: {:.2} allocations, {:.2} reallocations, {:.0} bytes allocated \
         per record (1 of them the bench's key clone); this run {:.0} records/s",
        per_record(used.allocations),
        per_record(used.reallocations),
        per_record(used.bytes_allocated),
        RECORDS as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    if std::env::var_os("PIPELINE_ONCE").is_some() {
        let (runtime, producer, keys, data) = setup(false);
        runtime.block_on(send_all(&producer, &keys, &data));
        let stats = producer.stats();
        assert_eq!(stats.user_records_put, RECORDS as u64, "{stats:?}");
        eprintln!("{stats:?}");
        count_allocations(&runtime, &producer, &keys, &data);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    let (runtime, producer, keys, data) = setup(false);
    runtime.block_on(send_all(&producer, &keys, &data));
    count_allocations(&runtime, &producer, &keys, &data);
}
