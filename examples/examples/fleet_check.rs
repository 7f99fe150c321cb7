//! The consumer fleet on the local emulators with real processes, as a user runs it: `consume`
//! workers (the program of `kinesis consume`) with the library's defaults, a writer putting
//! a record on every shard every second, and `kill -9`.
//!
//! ```sh
//! cargo build --release -p examples --bins --examples
//! target/release/examples/fleet_check startup            # 64 shards x 4 workers started together
//! target/release/examples/fleet_check takeover --runs 5  # kill -9 of the leader, then of another worker
//! ```
//!
//! - `startup`: time from the start of 4 workers on a new application of 64 shards until
//!   every shard has an owner, and until the split is even (max - min <= 1 lease), read from
//!   the lease table every 250 ms; then the moves over a minute at rest.
//! - `takeover`: 4 workers on 8 shards; once the split is even, `kill -9` of a worker (the
//!   leader in odd runs, another in even ones); the time until the survivors have delivered
//!   a record from every shard the dead one held.
//!
//! `--coordination workers` runs today's design (every worker scans the table) instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use clap::Parser;
use kinesis_consumer::leases::coordination::{
    CoordinatorStore, DynamoDbCoordinatorStore, LEADER_LOCK_KEY,
};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore, LeaseTableConfig};
use kinesis_emulator::Emulator;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// `startup` or `takeover`.
    mode: String,
    /// Runs (takeover: each a fresh fleet).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Shards (default: 64 for startup, 8 for takeover).
    #[arg(long)]
    shards: Option<i32>,
    /// `leader` (the default design) or `workers` (today's: every worker scans).
    #[arg(long, default_value = "leader")]
    coordination: String,
}

/// One `consume` process.
struct Worker {
    id: String,
    child: Child,
}

/// When each worker last delivered from each shard.
type Deliveries = Arc<Mutex<Vec<(Instant, usize, String)>>>;

fn consume_bin() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or("no folder for this program")?;
    let bin = dir.join("consume");
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p examples --bins)",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

fn child_env(emulator: &Emulator) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(endpoint) = emulator.kinesis_endpoint() {
        env.push(("AWS_ENDPOINT_URL_KINESIS".into(), endpoint));
    }
    if let Some(endpoint) = emulator.dynamodb_endpoint() {
        env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), endpoint));
    }
    for (name, value) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ] {
        env.push((name.into(), value.into()));
    }
    env
}

struct Run {
    stream: String,
    app: String,
    env: Vec<(String, String)>,
    bin: PathBuf,
    coordination: String,
    workers: Vec<Worker>,
    deliveries: Deliveries,
}

impl Run {
    fn spawn(&mut self) -> Result<(), Error> {
        let index = self.workers.len();
        let id = format!("fleet-check-w{index}");
        let mut command = Command::new(&self.bin);
        command
            .args(["--stream", &self.stream, "--app", &self.app])
            .args(["--worker-id", &id, "--polling", "--from", "trim-horizon"])
            .args(["--coordination", &self.coordination])
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let deliveries = self.deliveries.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(shard) = value["shard_id"].as_str() {
                    deliveries.lock().unwrap_or_else(|e| e.into_inner()).push((
                        Instant::now(),
                        index,
                        shard.to_owned(),
                    ));
                }
            }
        });
        self.workers.push(Worker { id, child });
        Ok(())
    }

    fn kill(&mut self, index: usize) -> Result<(), Error> {
        let status = Command::new("kill")
            .args(["-9", &self.workers[index].child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err("kill -9 failed".into());
        }
        let _ = self.workers[index].child.wait();
        Ok(())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// Puts a record on every shard every second until `stop` is set.
fn keep_writing(
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    hash_keys: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let entries: Vec<PutRecordsRequestEntry> = hash_keys
                .iter()
                .filter_map(|hash| {
                    n += 1;
                    PutRecordsRequestEntry::builder()
                        .partition_key(format!("k{n}"))
                        .explicit_hash_key(hash)
                        .data(Blob::new(format!(r#"{{"id":{n},"key":"k{n}"}}"#)))
                        .build()
                        .ok()
                })
                .collect();
            for chunk in entries.chunks(500) {
                let _ = kinesis
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(chunk.to_vec()))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Owners of the unfinished leases, by worker id.
async fn owners(store: &DynamoDbLeaseStore) -> BTreeMap<String, String> {
    store
        .list_leases()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|l| !l.is_finished())
        .filter_map(|l| Some((l.lease_key, l.lease_owner?)))
        .collect()
}

fn even(owners: &BTreeMap<String, String>, shards: usize, workers: &[String]) -> bool {
    if owners.len() < shards {
        return false;
    }
    let mut counts: HashMap<&str, usize> = workers.iter().map(|w| (w.as_str(), 0)).collect();
    for owner in owners.values() {
        if let Some(count) = counts.get_mut(owner.as_str()) {
            *count += 1;
        }
    }
    let (min, max) = (counts.values().min(), counts.values().max());
    matches!((min, max), (Some(min), Some(max)) if max - min <= 1)
}

async fn start(
    args: &Args,
    emulator: &Emulator,
    shards: i32,
    tag: &str,
) -> Result<(Run, DynamoDbLeaseStore, Arc<std::sync::atomic::AtomicBool>), Error> {
    let config = emulator.sdk_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        % 1_000_000_000;
    let stream = format!("fleet-check-{tag}-{millis}");
    let app = format!("fleet-check-{tag}-app-{millis}");
    kinesis_emulator::create_stream(&kinesis, &stream, shards).await?;
    let listed = kinesis.list_shards().stream_name(&stream).send().await?;
    let hash_keys: Vec<String> = listed
        .shards()
        .iter()
        .filter_map(|s| s.hash_key_range().map(|r| r.starting_hash_key().to_owned()))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    keep_writing(kinesis, stream.clone(), hash_keys, stop.clone());
    let mut run = Run {
        stream,
        app: app.clone(),
        env: child_env(emulator),
        bin: consume_bin()?,
        coordination: args.coordination.clone(),
        workers: Vec::new(),
        deliveries: Arc::default(),
    };
    for _ in 0..args.workers {
        run.spawn()?;
    }
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);
    Ok((run, store, stop))
}

async fn startup(args: &Args, emulator: &Emulator) -> Result<(), Error> {
    let shards = args.shards.unwrap_or(64);
    for run_index in 0..args.runs {
        let (run, store, stop) = start(args, emulator, shards, "startup").await?;
        let started = Instant::now();
        let ids: Vec<String> = run.workers.iter().map(|w| w.id.clone()).collect();
        let (mut all_owned, mut balanced) = (None, None);
        while started.elapsed() < Duration::from_secs(180) && balanced.is_none() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let owners = owners(&store).await;
            if all_owned.is_none() && owners.len() == shards as usize {
                all_owned = Some(started.elapsed());
            }
            if even(&owners, shards as usize, &ids) {
                balanced = Some(started.elapsed());
            }
        }
        let before = owners(&store).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let after = owners(&store).await;
        let moves = before
            .iter()
            .filter(|(k, o)| after.get(*k).is_some_and(|a| a != *o))
            .count();
        println!(
            "run {run_index}: {shards} shards x {} workers ({}): every shard owned after {:?}, even after {:?}, {moves} moves in the next minute",
            args.workers, args.coordination, all_owned, balanced
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(run);
    }
    Ok(())
}

async fn leader(emulator: &Emulator, app: &str) -> Option<String> {
    let config = emulator.sdk_config().await;
    let store = DynamoDbCoordinatorStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        app,
        LeaseTableConfig::default(),
    );
    store
        .read_lock(LEADER_LOCK_KEY)
        .await
        .ok()
        .flatten()
        .map(|lock| lock.owner)
}

async fn takeover(args: &Args, emulator: &Emulator) -> Result<(), Error> {
    let shards = args.shards.unwrap_or(8);
    let mut worst = Duration::ZERO;
    for run_index in 0..args.runs {
        let (mut run, store, stop) = start(args, emulator, shards, "takeover").await?;
        let ids: Vec<String> = run.workers.iter().map(|w| w.id.clone()).collect();
        let started = Instant::now();
        while !even(&owners(&store).await, shards as usize, &ids) {
            if started.elapsed() > Duration::from_secs(120) {
                return Err("the fleet never split evenly".into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Settled: a few seconds of deliveries, at a random point of every cycle.
        tokio::time::sleep(Duration::from_millis(5000 + rand::random_range(0..3333))).await;
        let leader = leader(emulator, &run.app).await;
        let victim = if run_index % 2 == 0 {
            leader
                .as_ref()
                .and_then(|l| ids.iter().position(|id| id == l))
                .unwrap_or(0)
        } else {
            (0..ids.len())
                .find(|i| Some(&ids[*i]) != leader.as_ref())
                .unwrap_or(0)
        };
        let orphans: HashSet<String> = owners(&store)
            .await
            .into_iter()
            .filter(|(_, owner)| *owner == ids[victim])
            .map(|(shard, _)| shard)
            .collect();
        let killed = Instant::now();
        run.kill(victim)?;
        let mut done = None;
        while killed.elapsed() < Duration::from_secs(90) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let delivered: HashSet<String> = run
                .deliveries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(at, worker, _)| *at > killed && *worker != victim)
                .map(|(_, _, shard)| shard.clone())
                .collect();
            if orphans.iter().all(|shard| delivered.contains(shard)) {
                done = Some(killed.elapsed());
                break;
            }
        }
        let what = if Some(&ids[victim]) == leader.as_ref() {
            "the leader"
        } else {
            "a worker"
        };
        match done {
            Some(took) => {
                worst = worst.max(took);
                println!(
                    "run {run_index}: kill -9 of {what} ({} shards): survivors delivered from each after {:.2} s",
                    orphans.len(),
                    took.as_secs_f64()
                );
            }
            None => {
                worst = Duration::MAX;
                println!(
                    "run {run_index}: kill -9 of {what}: not every orphan delivered within 90 s"
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(run);
    }
    println!("worst: {:.2} s", worst.as_secs_f64());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let emulator = Emulator::shared().await?;
    match args.mode.as_str() {
        "startup" => startup(&args, emulator).await,
        "takeover" => takeover(&args, emulator).await,
        other => Err(format!("unknown mode {other}: startup or takeover").into()),
    }
}
