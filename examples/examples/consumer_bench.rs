//! Consumer measurements against the local emulators (or the endpoints of the standard AWS
//! configuration): records per second one worker delivers to a no-op processor, and how
//! long a crashed worker's shards take to be taken over.
//!
//! ```sh
//! cargo run -p examples --example consumer_bench                  # everything
//! cargo run -p examples --example consumer_bench takeover 5       # takeover only, 5 runs each
//! cargo run -p examples --example consumer_bench throughput
//! cargo run -p examples --example consumer_bench handoff 5        # graceful handoff, 5 runs
//! cargo run -p examples --example consumer_bench polling          # fixed vs lag-aware pauses
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_kinesis::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::{
    InitialPosition, InitializeInput, LagAwarePolling, Lease, ProcessRecordsInput, RecordProcessor,
    Scheduler, SchedulerBuilder, ShardEndedInput,
};
use kinesis_producer::aggregation::AggregateBuilder;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Counts records; checkpoints each batch like a real application would.
struct Counter(Arc<AtomicU64>);

#[async_trait]
impl RecordProcessor for Counter {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
    ) -> kinesis_consumer::ProcessResult {
        self.0
            .fetch_add(input.records.len() as u64, Ordering::Relaxed);
        if let Err(e) = input.checkpointer.checkpoint().await {
            eprintln!("checkpoint failed: {e}");
        }
        Ok(())
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

/// Delivery times by (worker, shard).
type DeliveryTimes = HashMap<(String, String), Vec<Instant>>;

/// Deliveries per user record: (shard, sequence number, sub-sequence number).
type DeliveryCounts = HashMap<(String, String, u64), u32>;

/// Records when each worker delivered records from each shard, and how often each user
/// record (shard, sequence number, sub-sequence number) was delivered.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<DeliveryTimes>>, Arc<Mutex<DeliveryCounts>>);

impl Deliveries {
    /// User records delivered more than once, counting each extra delivery.
    fn duplicates(&self) -> u32 {
        let map = self.1.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|n| n - 1).sum()
    }
}

impl Deliveries {
    /// The first delivery by `worker` from `shard` after `after`.
    fn first_after(&self, worker: &str, shard: &str, after: Instant) -> Option<Instant> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(worker.to_owned(), shard.to_owned()))?
            .iter()
            .copied()
            .find(|at| *at > after)
    }
}

/// Notes every non-empty batch in [`Deliveries`]; checkpoints each batch.
struct Tracker {
    worker: &'static str,
    shard: String,
    deliveries: Deliveries,
}

#[async_trait]
impl RecordProcessor for Tracker {
    async fn initialize(&mut self, input: InitializeInput) {
        self.shard = input.shard_id;
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
    ) -> kinesis_consumer::ProcessResult {
        if !input.records.is_empty() {
            let mut map = self.deliveries.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry((self.worker.to_owned(), self.shard.clone()))
                .or_default()
                .push(Instant::now());
            drop(map);
            let mut seen = self.deliveries.1.lock().unwrap_or_else(|e| e.into_inner());
            for record in &input.records {
                *seen
                    .entry((
                        self.shard.clone(),
                        record.sequence_number.to_string(),
                        record.sub_sequence_number,
                    ))
                    .or_default() += 1;
            }
        }
        let _ = input.checkpointer.checkpoint().await;
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        let _ = input.checkpointer.checkpoint().await;
    }
}

/// A worker crashes (its task aborted: no release, no more renewals) while records keep
/// arriving on every shard: how long until the survivor holds the crashed worker's leases,
/// and until it delivers records from each of them, counted from the crash and from the
/// crashed worker's last renewal (the last change of its leases' counters, as seen by
/// polling the table every 20 ms).
async fn takeover(
    config: &SdkConfig,
    failover: Duration,
    taker: Option<Duration>,
) -> Result<(), Error> {
    let kinesis = aws_sdk_kinesis::Client::new(config);
    let stream = name("bench-takeover");
    let app = name("bench-takeover-app");
    kinesis_emulator::create_stream(&kinesis, &stream, 4).await?;
    let writer = spawn_writer(&kinesis, &stream).await?;
    let deliveries = Deliveries::default();
    let start = |worker: &'static str| {
        let deliveries = deliveries.clone();
        let mut b = builder(config, &stream, &app, worker)
            .failover_time(failover)
            .idle_time_between_reads(Duration::from_millis(200))
            .processor_factory(move || Tracker {
                worker,
                shard: String::new(),
                deliveries: deliveries.clone(),
            });
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
    // Wait for 2/2, then a few seconds of steady state.
    wait_balanced(&store).await?;
    // Crash at a random point of the renewal and taker cycles.
    let jitter = failover.mul_f64(rand::random::<f64>());
    let mut counters: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut orphans: Vec<String> = Vec::new();
    let until = Instant::now() + failover + jitter;
    while Instant::now() < until {
        observe(&store, &mut counters, Some(&mut orphans)).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.abort();
    let _ = a.await;
    let crashed = Instant::now();
    let mut held_all = None;
    loop {
        let leases = observe(&store, &mut counters, None).await?;
        if held_all.is_none() && leases.iter().filter(|l| l.is_owned_by("b")).count() == 4 {
            held_all = Some(Instant::now());
        }
        let delivered: Option<Vec<Instant>> = orphans
            .iter()
            .map(|shard| deliveries.first_after("b", shard, crashed))
            .collect();
        if let (Some(held_all), Some(delivered)) = (held_all, delivered) {
            let last_renewal = orphans
                .iter()
                .filter_map(|shard| counters.get(shard).map(|(_, at)| *at))
                .max()
                .unwrap_or(crashed);
            let delivered = delivered.into_iter().max().unwrap_or(held_all);
            let x = |d: Duration| d.as_secs_f64() / failover.as_secs_f64();
            println!(
                "takeover: failover {failover:?}, taker interval {:?}: survivor held all leases {:.2?} \
                 after the crash, delivered from every orphaned shard {:.2?} after it ({:.2}x failover); \
                 {:.2?} after the last renewal ({:.2}x)",
                taker.unwrap_or(failover),
                held_all - crashed,
                delivered - crashed,
                x(delivered - crashed),
                delivered - last_renewal,
                x(delivered - last_renewal),
            );
            break;
        }
        if crashed.elapsed() > Duration::from_secs(120) {
            return Err("never taken over".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b_stop.shutdown();
    b.await??;
    writer.abort();
    Ok(())
}

/// Graceful handoff with the library's defaults (failover 10 s, GetRecords every 1.5 s):
/// two balanced workers on four shards with records arriving on every shard; worker `a`
/// stops gracefully (what `kinesis consume` does on SIGTERM) at a random moment: how long
/// until `b` delivers from each of `a`'s shards, and how many records were delivered
/// twice over the whole run (balancing moves included).
async fn handoff(config: &SdkConfig) -> Result<(), Error> {
    let kinesis = aws_sdk_kinesis::Client::new(config);
    let stream = name("bench-handoff");
    let app = name("bench-handoff-app");
    kinesis_emulator::create_stream(&kinesis, &stream, 4).await?;
    let writer = spawn_writer(&kinesis, &stream).await?;
    let deliveries = Deliveries::default();
    let start = |worker: &'static str| {
        let deliveries = deliveries.clone();
        builder(config, &stream, &app, worker).processor_factory(move || Tracker {
            worker,
            shard: String::new(),
            deliveries: deliveries.clone(),
        })
    };
    let a = start("a").build().await?;
    let a_stop = a.shutdown_handle();
    let a = tokio::spawn(a.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = start("b").build().await?;
    let b_stop = b.shutdown_handle();
    let b = tokio::spawn(b.run());
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(config), &app);
    let settle = Instant::now();
    let orphans = wait_balanced(&store).await?;
    let balanced = settle.elapsed();
    tokio::time::sleep(Duration::from_secs(3).mul_f64(1.0 + rand::random::<f64>())).await;
    let stopped = Instant::now();
    a_stop.shutdown();
    a.await??;
    let returned = stopped.elapsed();
    let delivered = loop {
        let firsts: Option<Vec<Instant>> = orphans
            .iter()
            .map(|shard| deliveries.first_after("b", shard, stopped))
            .collect();
        if let Some(firsts) = firsts {
            break firsts.into_iter().max().unwrap_or(stopped) - stopped;
        }
        if stopped.elapsed() > Duration::from_secs(60) {
            return Err("never handed over".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Let every record written so far be delivered before counting duplicates.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "handoff: balanced 2/2 {balanced:.2?} after the second worker started; after the stop, run returned in {returned:.2?}, the survivor delivered from every handed-over shard {delivered:.2?} after it; duplicates over the run: {}",
        deliveries.duplicates()
    );
    b_stop.shutdown();
    b.await??;
    writer.abort();
    Ok(())
}

/// Waits until workers `a` and `b` each hold two leases (no handoff under way); returns
/// `a`'s.
async fn wait_balanced(store: &DynamoDbLeaseStore) -> Result<Vec<String>, Error> {
    let started = Instant::now();
    loop {
        let leases = store.list_leases().await?;
        let of = |w: &'static str| {
            leases
                .iter()
                .filter(move |l| l.is_owned_by(w) && !l.handoff_pending())
        };
        if of("a").count() == 2 && of("b").count() == 2 {
            return Ok(of("a").map(|l| l.lease_key.clone()).collect());
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err("never balanced".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes one record per shard every 100 ms (explicit hash keys at each shard's start)
/// until aborted.
async fn spawn_writer(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let shards = kinesis.list_shards().stream_name(stream).send().await?;
    let hash_keys: Vec<String> = shards
        .shards()
        .iter()
        .filter_map(|s| s.hash_key_range().map(|r| r.starting_hash_key().to_owned()))
        .collect();
    let (kinesis, stream) = (kinesis.clone(), stream.to_owned());
    Ok(tokio::spawn(async move {
        loop {
            let entries = hash_keys
                .iter()
                .map(|key| {
                    PutRecordsRequestEntry::builder()
                        .partition_key("k")
                        .explicit_hash_key(key)
                        .data(Blob::new(b"x".to_vec()))
                        .build()
                })
                .collect::<Result<Vec<_>, _>>();
            if let Ok(entries) = entries {
                let _ = put(&kinesis, &stream, entries).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

/// Lists the leases and notes when each one's counter was first seen at its current value;
/// with `orphans` (before the crash), records the leases worker `a` holds; without (after
/// it), only leases still owned by `a` are noted, so the survivor's takes do not count.
async fn observe(
    store: &DynamoDbLeaseStore,
    counters: &mut HashMap<String, (u64, Instant)>,
    orphans: Option<&mut Vec<String>>,
) -> Result<Vec<Lease>, Error> {
    let leases = store.list_leases().await?;
    let now = Instant::now();
    for lease in &leases {
        // After the crash only the crashed worker's renewals count (not the survivor's).
        if orphans.is_none() && !lease.is_owned_by("a") {
            continue;
        }
        let seen = counters
            .entry(lease.lease_key.clone())
            .or_insert((lease.lease_counter, now));
        if seen.0 != lease.lease_counter {
            *seen = (lease.lease_counter, now);
        }
    }
    if let Some(orphans) = orphans {
        *orphans = leases
            .iter()
            .filter(|l| l.is_owned_by("a"))
            .map(|l| l.lease_key.clone())
            .collect();
    }
    Ok(leases)
}

/// Counts GetRecords calls sent (an SDK interceptor on the consumer's Kinesis client).
#[derive(Debug, Default, Clone)]
struct GetRecordsCalls(Arc<AtomicU64>);

impl Intercept for GetRecordsCalls {
    fn name(&self) -> &'static str {
        "GetRecordsCalls"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let is_get_records = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .is_some_and(|m| m.name() == "GetRecords");
        if is_get_records {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Fixed pauses (the Java KCL's, 1.5 s) against lag-aware ones, library defaults otherwise
/// (except 1,000 records per call, so that a backlog takes several calls): how long a
/// backlog of 10,000 records per shard takes to drain, how many GetRecords calls a quiet
/// shard costs per minute, and how long a record put after the quiet minute waits.
async fn polling(config: &SdkConfig, lag_aware: bool) -> Result<(), Error> {
    const SHARDS: i32 = 2;
    const BACKLOG: usize = 20_000;
    const QUIET: Duration = Duration::from_secs(60);
    let kinesis = aws_sdk_kinesis::Client::new(config);
    let stream = name("bench-poll");
    kinesis_emulator::create_stream(&kinesis, &stream, SHARDS).await?;
    let entries = (0..BACKLOG)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{i}"))
                .data(Blob::new(vec![b'x'; 100]))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    put(&kinesis, &stream, entries).await?;

    let calls = GetRecordsCalls::default();
    let counted = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(config)
            .interceptor(calls.clone())
            .build(),
    );
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let mut builder = builder(config, &stream, &name("bench-poll-app"), "bench")
        .kinesis_client(counted)
        .max_records(1_000)
        .processor_factory(move || Counter(counter.clone()));
    if lag_aware {
        builder = builder.lag_aware_polling(LagAwarePolling::default());
    }
    let scheduler = builder.build().await?;
    let stop = scheduler.shutdown_handle();
    let started = Instant::now();
    let task = tokio::spawn(scheduler.run());
    while count.load(Ordering::Relaxed) < BACKLOG as u64 {
        if started.elapsed() > Duration::from_secs(120) {
            return Err("backlog not drained in 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed();
    let calls_to_drain = calls.0.load(Ordering::Relaxed);
    // Past the last records read: a few idle calls settle the pause.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = calls.0.load(Ordering::Relaxed);
    tokio::time::sleep(QUIET).await;
    let quiet_calls = calls.0.load(Ordering::Relaxed) - before;
    let entry = PutRecordsRequestEntry::builder()
        .partition_key("after-quiet")
        .data(Blob::new(b"late".to_vec()))
        .build()?;
    let seen = count.load(Ordering::Relaxed);
    let put_at = Instant::now();
    put(&kinesis, &stream, vec![entry]).await?;
    while count.load(Ordering::Relaxed) == seen {
        if put_at.elapsed() > Duration::from_secs(60) {
            return Err("the record after the quiet minute was not delivered".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let latency = put_at.elapsed();
    stop.shutdown();
    task.await??;
    println!(
        "polling ({}): {BACKLOG} records on {SHARDS} shards drained in {drained:.2?} \
         ({calls_to_drain} GetRecords calls); quiet shard: {:.1} calls per minute; \
         a record put after the quiet minute delivered {latency:.2?} later",
        if lag_aware {
            "lag-aware"
        } else {
            "fixed 1.5 s"
        },
        quiet_calls as f64 / f64::from(SHARDS) / QUIET.as_secs_f64() * 60.0,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args.first().map(String::as_str);
    let runs: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(3);
    let emulator = kinesis_emulator::Emulator::start().await?;
    let config = emulator.sdk_config().await;
    if only == Some("polling") {
        for _ in 0..runs.min(2) {
            polling(&config, false).await?;
            polling(&config, true).await?;
        }
        return Ok(());
    }
    if only == Some("handoff") {
        for _ in 0..runs {
            handoff(&config).await?;
        }
        return Ok(());
    }
    if only != Some("takeover") {
        // Drain a backlog with the default batch size, then with smaller batches and no
        // pause between reads, so several GetRecords calls per shard stream.
        throughput(&config, 1, 5_000, 1, 10_000, Duration::from_millis(200)).await?;
        throughput(&config, 1, 5_000, 1, 500, Duration::ZERO).await?;
        throughput(&config, 4, 10_000, 1, 500, Duration::ZERO).await?;
        throughput(&config, 4, 400, 100, 20, Duration::ZERO).await?;
    }
    if only != Some("throughput") {
        for (failover, taker) in [
            (Duration::from_secs(10), None),
            (Duration::from_secs(10), Some(Duration::from_secs(2))),
            (Duration::from_secs(10), Some(Duration::from_secs(20))),
        ] {
            for _ in 0..runs {
                takeover(&config, failover, taker).await?;
            }
        }
    }
    Ok(())
}
