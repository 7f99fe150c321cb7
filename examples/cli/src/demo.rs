//! `kinesis demo`: producer and consumer fleet through resharding and a crash.
//!
//! Starts the local emulators (unless the standard AWS configuration names endpoints),
//! creates a 4-shard stream, produces records with `kinesis-producer` from several
//! tasks, consumes them with two `kinesis-consumer` workers sharing a lease table, splits
//! one shard and merges two others mid-run, kills one worker without a graceful
//! shutdown, and shows progress on standard error (a live line on a terminal, a line every
//! 5 seconds otherwise). It ends with a report on standard error and a JSON summary on
//! standard output, and exits non-zero if any record was lost.
//!
//! ```text
//! cargo run -p kinesis-cli -- demo
//! cargo run -p kinesis-cli -- demo --records 50000 --producers 8
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::SdkConfig;
use clap::Args as ClapArgs;
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::{
    InitialPosition, ProcessRecordsInput, RecordProcessor, Scheduler, ShardEndedInput,
    ShutdownRequestedInput,
};
use kinesis_emulator::Emulator;
use kinesis_producer::{Producer, Record, ShardMap, ShardRange, StreamId};

use crate::Error;

/// Produces and consumes a stream through a split, a merge and a worker crash.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// Records to produce.
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    /// Producer tasks.
    #[arg(long, default_value_t = 4)]
    pub producers: u64,
    /// Distinct partition keys.
    #[arg(long, default_value_t = 200)]
    pub keys: u64,
    /// Records per second over all producer tasks.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Give up waiting for the consumers this long after the last record was produced.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "120s")]
    pub timeout: Duration,
    /// Serve the producer's and the consumers' metrics in the Prometheus text format at
    /// http://ADDR/metrics while it runs (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// What the consumers saw, shared by every processor.
#[derive(Default)]
struct Seen {
    deliveries: Mutex<HashMap<u64, u32>>,
    behind: Mutex<BTreeMap<String, i64>>,
}

struct CountingProcessor {
    seen: Arc<Seen>,
    shard: String,
}

#[async_trait]
impl RecordProcessor for CountingProcessor {
    async fn initialize(&mut self, input: kinesis_consumer::InitializeInput) {
        self.shard = input.shard_id;
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
    ) -> kinesis_consumer::ProcessResult {
        {
            let mut deliveries = self
                .seen
                .deliveries
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for record in &input.records {
                if let Some(id) = record_id(&record.data) {
                    *deliveries.entry(id).or_default() += 1;
                }
            }
        }
        if let Some(behind) = input.millis_behind_latest {
            let mut lag = self.seen.behind.lock().unwrap_or_else(|e| e.into_inner());
            lag.insert(self.shard.clone(), behind);
        }
        if let Err(error) = input.checkpointer.checkpoint().await {
            tracing::warn!(shard = %self.shard, %error, "checkpoint failed");
        }
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        if let Ok(mut lag) = self.seen.behind.lock() {
            lag.remove(&self.shard);
        }
        if let Err(error) = input.checkpointer.checkpoint().await {
            tracing::warn!(shard = %self.shard, %error, "shard-end checkpoint failed");
        }
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput) {
        let _ = input.checkpointer.checkpoint().await;
    }
}

/// The `id` of a demo record's JSON data.
fn record_id(data: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    value.get("id")?.as_u64()
}

fn worker(
    config: &SdkConfig,
    stream: &str,
    app: &str,
    id: &str,
    seen: &Arc<Seen>,
) -> kinesis_consumer::SchedulerBuilder {
    let seen = seen.clone();
    Scheduler::builder(config)
        .stream(stream)
        .application_name(app)
        .worker_id(id)
        .initial_position(InitialPosition::TrimHorizon)
        // Short intervals so the demo shows failover and resharding in seconds; the
        // library defaults are the Java KCL's (10 s failover, 60 s shard sync).
        .failover_time(Duration::from_secs(3))
        .lease_renewal_interval(Duration::from_secs(1))
        .lease_taker_interval(Duration::from_secs(1))
        .shard_sync_interval(Duration::from_secs(2))
        .parent_shard_poll_interval(Duration::from_millis(500))
        .idle_time_between_reads(Duration::from_millis(200))
        .processor_factory(move || CountingProcessor {
            seen: seen.clone(),
            shard: String::new(),
        })
}

async fn produce(
    producer: Producer,
    task: u64,
    args: Arc<Args>,
    produced: Arc<AtomicU64>,
) -> Result<u64, Error> {
    let started = Instant::now();
    let per_task_rate = args.rate / args.producers as f64;
    let mut receipts = Vec::new();
    for (n, id) in (task..args.records)
        .step_by(args.producers as usize)
        .enumerate()
    {
        tokio::time::sleep_until(
            (started + Duration::from_secs_f64(n as f64 / per_task_rate)).into(),
        )
        .await;
        let key = format!("key-{}", id % args.keys);
        let data = format!(r#"{{"id":{id},"key":"{key}","pad":"{}"}}"#, ".".repeat(40));
        receipts.push(producer.send(Record::new(key, data)).await?);
        produced.fetch_add(1, Ordering::Relaxed);
    }
    let mut failed = 0;
    for receipt in receipts {
        if receipt.await.is_err() {
            failed += 1;
        }
    }
    Ok(failed)
}

/// Splits the first open shard in the middle of its range.
async fn split(client: &aws_sdk_kinesis::Client, stream: &str) -> Result<String, Error> {
    let shards = open_shards(client, stream).await?;
    let first = shards.first().ok_or("no open shard")?;
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(&*first.id)
        .new_starting_hash_key(first.midpoint().to_string())
        .send()
        .await?;
    kinesis_emulator::wait_stream_active(client, stream, Duration::from_secs(60)).await?;
    Ok(first.id.to_string())
}

/// Merges the last two open shards (adjacent by hash range).
async fn merge(client: &aws_sdk_kinesis::Client, stream: &str) -> Result<(String, String), Error> {
    let shards = open_shards(client, stream).await?;
    let [.., a, b] = shards.as_slice() else {
        return Err("fewer than two open shards".into());
    };
    client
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(&*a.id)
        .adjacent_shard_to_merge(&*b.id)
        .send()
        .await?;
    kinesis_emulator::wait_stream_active(client, stream, Duration::from_secs(60)).await?;
    Ok((a.id.to_string(), b.id.to_string()))
}

/// The stream's open shards, by hash range (the producer's shard map).
async fn open_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<Vec<ShardRange>, Error> {
    let map = ShardMap::load(client, &StreamId::new(stream)).await?;
    Ok(map.shards().to_vec())
}

/// Leases per worker, and the owner of each lease (for counting moves).
async fn lease_owners(store: &DynamoDbLeaseStore) -> BTreeMap<String, String> {
    store
        .list_leases()
        .await
        .map(|leases| {
            leases
                .into_iter()
                .filter(|l| !l.is_finished())
                .map(|l| (l.lease_key, l.lease_owner.unwrap_or_else(|| "-".into())))
                .collect()
        })
        .unwrap_or_default()
}

fn progress_line(
    produced: u64,
    seen: &Seen,
    owners: &BTreeMap<String, String>,
    events: &str,
) -> String {
    let (consumed, _) = counts(seen);
    let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in owners.values() {
        *per_worker.entry(owner.as_str()).or_default() += 1;
    }
    let leases: Vec<String> = per_worker.iter().map(|(w, n)| format!("{w}:{n}")).collect();
    let lag: Vec<String> = seen
        .behind
        .lock()
        .map(|l| {
            l.iter()
                .map(|(s, ms)| format!("{}={ms}ms", s.trim_start_matches("shardId-0000000000")))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "produced {produced:>6} | consumed {consumed:>6} | leases {} | lag {} {events}",
        leases.join(" "),
        lag.join(" ")
    )
}

/// Distinct records consumed, and deliveries beyond the first.
fn counts(seen: &Seen) -> (u64, u64) {
    let deliveries = seen.deliveries.lock().unwrap_or_else(|e| e.into_inner());
    let duplicates = deliveries
        .values()
        .map(|n| u64::from(n.saturating_sub(1)))
        .sum();
    (deliveries.len() as u64, duplicates)
}

/// Runs the demo; returns its JSON summary (`lost` is 0 when every record was consumed).
pub async fn run(args: Args) -> Result<serde_json::Value, Error> {
    crate::metrics::serve(args.metrics_listen)?;
    let args = Arc::new(args);
    let emulator = Emulator::start().await?;
    let config = emulator.sdk_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let stream = format!("demo-{suffix}");
    let app = format!("demo-app-{suffix}");
    eprintln!(
        "demo: stream {stream} (4 shards), application {app}, {} records",
        args.records
    );
    let live = crate::progress_enabled();
    let mut last_line = Instant::now();
    kinesis_emulator::create_stream(&kinesis, &stream, 4).await?;

    let seen = Arc::new(Seen::default());
    let a = worker(&config, &stream, &app, "worker-a", &seen)
        .build()
        .await?;
    let stop_a = a.shutdown_handle();
    let worker_a = tokio::spawn(a.run());
    let worker_b = tokio::spawn(
        worker(&config, &stream, &app, "worker-b", &seen)
            .build()
            .await?
            .run(),
    );
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);

    let started = Instant::now();
    let producer = Producer::builder(&config).stream(&stream).build().await?;
    let produced = Arc::new(AtomicU64::new(0));
    let mut producers = tokio::task::JoinSet::new();
    for task in 0..args.producers {
        producers.spawn(produce(
            producer.clone(),
            task,
            args.clone(),
            produced.clone(),
        ));
    }

    let mut events = String::new();
    let mut owners = BTreeMap::new();
    let mut lease_moves = 0u64;
    let mut step = 0;
    let mut crashed = false;
    let mut deadline: Option<Instant> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        let done_producing = produced.load(Ordering::Relaxed);
        let share = done_producing as f64 / args.records as f64;
        if step == 0 && share >= 0.25 {
            let parent = split(&kinesis, &stream).await?;
            events = format!("| split {parent}");
            step = 1;
        } else if step == 1 && share >= 0.45 {
            let (x, y) = merge(&kinesis, &stream).await?;
            events = format!("| merged {x} + {y}");
            step = 2;
        } else if step == 2 && share >= 0.6 {
            worker_b.abort();
            crashed = true;
            events = "| worker-b crashed (no graceful shutdown)".to_owned();
            step = 3;
        }
        let now_owners = lease_owners(&store).await;
        lease_moves += now_owners
            .iter()
            .filter(|(key, owner)| {
                owners
                    .get(*key)
                    .is_some_and(|before| before != *owner && owner.as_str() != "-")
            })
            .count() as u64;
        owners = now_owners;
        let line = progress_line(done_producing, &seen, &owners, &events);
        if live {
            crate::progress(format_args!("{line}"));
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("{line}");
            last_line = Instant::now();
        }

        if producers.is_empty() || done_producing >= args.records {
            while let Some(result) = producers.try_join_next() {
                let failed = result??;
                if failed > 0 {
                    eprintln!("\ndemo: {failed} records failed to reach the stream");
                }
            }
        }
        if done_producing >= args.records && producers.is_empty() {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + args.timeout);
            if counts(&seen).0 >= args.records || Instant::now() > deadline {
                break;
            }
        }
    }
    crate::progress_done();
    producer.shutdown().await;
    stop_a.shutdown();
    worker_a.await??;

    let elapsed = started.elapsed().as_secs_f64();
    let (consumed, duplicates) = counts(&seen);
    let lost = args.records.saturating_sub(consumed);
    let stats = producer.stats();
    eprintln!("demo: report");
    eprintln!(
        "  produced       {} user records in {} Kinesis records",
        stats.user_records_put, stats.kinesis_records_put
    );
    eprintln!("  consumed       {consumed} distinct");
    eprintln!("  lost           {lost}");
    eprintln!(
        "  duplicates     {duplicates} (redelivered after the crash, from the last checkpoint)"
    );
    eprintln!("  lease moves    {lease_moves}");
    eprintln!(
        "  worker crash   {}",
        if crashed {
            "worker-b, taken over by worker-a"
        } else {
            "did not happen"
        }
    );
    eprintln!("  elapsed        {elapsed:.1} s");
    eprintln!(
        "  throughput     {:.0} records/s end to end",
        consumed as f64 / elapsed
    );
    drop(emulator);
    Ok(serde_json::json!({
        "stream": stream,
        "produced": stats.user_records_put,
        "kinesis_records": stats.kinesis_records_put,
        "consumed": consumed,
        "lost": lost,
        "duplicates": duplicates,
        "lease_moves": lease_moves,
        "worker_crashed": crashed,
        "seconds": (elapsed * 10.0).round() / 10.0,
    }))
}
