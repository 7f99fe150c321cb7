//! Consumer measurements against the local emulators (or the endpoints of the standard AWS
//! configuration): records per second one worker delivers to a no-op processor, and how
//! long a crashed worker's shards take to be taken over.
//!
//! ```sh
//! cargo run -p examples --example consumer_bench
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::{
    InitialPosition, ProcessRecordsInput, RecordProcessor, Scheduler, SchedulerBuilder,
    ShardEndedInput,
};
use kinesis_producer::aggregation::AggregateBuilder;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Counts records; checkpoints each batch like a real application would.
struct Counter(Arc<AtomicU64>);

#[async_trait]
impl RecordProcessor for Counter {
    async fn process_records(&mut self, input: ProcessRecordsInput) {
        self.0
            .fetch_add(input.records.len() as u64, Ordering::Relaxed);
        if let Err(e) = input.checkpointer.checkpoint().await {
            eprintln!("checkpoint failed: {e}");
        }
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        let _ = input.checkpointer.checkpoint().await;
    }
}

fn name(prefix: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000_000)
        .unwrap_or_default();
    format!("{prefix}-{}-{millis}", std::process::id())
}

async fn put(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    entries: Vec<PutRecordsRequestEntry>,
) -> Result<(), Error> {
    for chunk in entries.chunks(500) {
        let out = kinesis
            .put_records()
            .stream_name(stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            return Err("put failures".into());
        }
    }
    Ok(())
}

fn builder(config: &SdkConfig, stream: &str, app: &str, worker: &str) -> SchedulerBuilder {
    Scheduler::builder(config)
        .stream(stream)
        .application_name(app)
        .worker_id(worker)
        .initial_position(InitialPosition::TrimHorizon)
}

/// Records/s one worker delivers: `shards` shards pre-filled with `kinesis_records`
/// Kinesis records, each holding `per_record` user records (1 = plain).
async fn throughput(
    config: &SdkConfig,
    shards: i32,
    kinesis_records: usize,
    per_record: usize,
    max_records: i32,
    idle: Duration,
) -> Result<(), Error> {
    let kinesis = aws_sdk_kinesis::Client::new(config);
    let stream = name("bench-tput");
    kinesis_emulator::create_stream(&kinesis, &stream, shards).await?;
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut entries = Vec::with_capacity(kinesis_records);
    for i in 0..kinesis_records {
        if per_record == 1 {
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("key-{i}"))
                    .data(Blob::new(payload.to_vec()))
                    .build()?,
            );
        } else {
            let mut aggregate = AggregateBuilder::new();
            for j in 0..per_record {
                aggregate.push(&format!("key-{i}-{j}"), None, payload.clone());
            }
            let aggregate = aggregate.finish().ok_or("empty aggregate")?;
            // Spread aggregates over the shards (the explicit hash key is the first
            // record's; any shard is fine for a throughput figure).
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("agg-{i}"))
                    .data(Blob::new(aggregate.data.to_vec()))
                    .build()?,
            );
        }
    }
    let filled = Instant::now();
    put(&kinesis, &stream, entries).await?;
    let fill_time = filled.elapsed();

    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let scheduler = builder(config, &stream, &name("bench-tput-app"), "bench")
        .idle_time_between_reads(idle)
        .max_records(max_records)
        .processor_factory(move || Counter(counter.clone()))
        .build()
        .await?;
    let stop = scheduler.shutdown_handle();
    let started = Instant::now();
    let task = tokio::spawn(scheduler.run());
    let total = (kinesis_records * per_record) as u64;
    let mut first = None;
    while count.load(Ordering::Relaxed) < total {
        if first.is_none() && count.load(Ordering::Relaxed) > 0 {
            first = Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err("timed out".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = started.elapsed();
    let first = first.unwrap_or(all);
    stop.shutdown();
    task.await??;
    let streaming = all.saturating_sub(first).max(Duration::from_millis(1));
    println!(
        "throughput: {shards} shards, {kinesis_records} Kinesis records x {per_record} user records, \
         max_records {max_records}, idle {idle:?}: all {total} delivered {all:.2?} after start \
         (first at {first:.2?}); {:.0} user records/s from start, {:.0}/s from the first \
         delivery (fill took {fill_time:.2?})",
        total as f64 / all.as_secs_f64(),
        total as f64 / streaming.as_secs_f64(),
    );
    Ok(())
}

/// Time from a worker's crash until the survivor holds every lease.
async fn takeover(
    config: &SdkConfig,
    failover: Duration,
    taker: Option<Duration>,
) -> Result<(), Error> {
    let kinesis = aws_sdk_kinesis::Client::new(config);
    let stream = name("bench-takeover");
    let app = name("bench-takeover-app");
    kinesis_emulator::create_stream(&kinesis, &stream, 4).await?;
    let count = Arc::new(AtomicU64::new(0));
    let start = |worker: &'static str| {
        let counter = count.clone();
        let mut b = builder(config, &stream, &app, worker)
            .failover_time(failover)
            .idle_time_between_reads(Duration::from_millis(200))
            .processor_factory(move || Counter(counter.clone()));
        if let Some(taker) = taker {
            b = b.lease_taker_interval(taker);
        }
        b
    };
    let a = start("a").build().await?;
    let a = tokio::spawn(a.run());
    let b = start("b").build().await?;
    let b_stop = b.shutdown_handle();
    let b = tokio::spawn(b.run());
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(config), &app);
    let owned_by = |owner: &'static str| {
        let store = store.clone();
        async move {
            let leases = store.list_leases().await?;
            Ok::<usize, Error>(leases.iter().filter(|l| l.is_owned_by(owner)).count())
        }
    };
    // Wait for 2/2.
    let settle = Instant::now();
    while owned_by("a").await? != 2 || owned_by("b").await? != 2 {
        if settle.elapsed() > Duration::from_secs(120) {
            return Err("never balanced".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.abort();
    let _ = a.await;
    let crashed = Instant::now();
    while owned_by("b").await? != 4 {
        if crashed.elapsed() > Duration::from_secs(120) {
            return Err("never taken over".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = crashed.elapsed();
    b_stop.shutdown();
    b.await??;
    println!(
        "takeover: failover {failover:?}, taker interval {:?}: survivor held all 4 leases {took:.2?} after the crash ({:.2}x failover)",
        taker.unwrap_or(failover),
        took.as_secs_f64() / failover.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let emulator = kinesis_emulator::Emulator::start().await?;
    let config = emulator.sdk_config().await;
    // Drain a backlog with the default batch size, then with smaller batches and no
    // pause between reads, so several GetRecords calls per shard stream.
    throughput(&config, 1, 5_000, 1, 10_000, Duration::from_millis(200)).await?;
    throughput(&config, 1, 5_000, 1, 500, Duration::ZERO).await?;
    throughput(&config, 4, 10_000, 1, 500, Duration::ZERO).await?;
    throughput(&config, 4, 400, 100, 20, Duration::ZERO).await?;
    for _ in 0..3 {
        takeover(&config, Duration::from_secs(2), None).await?;
    }
    takeover(&config, Duration::from_secs(10), None).await?;
    takeover(
        &config,
        Duration::from_secs(10),
        Some(Duration::from_secs(20)),
    )
    .await?;
    Ok(())
}
