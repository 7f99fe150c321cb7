//! Chaos run: real `consume` and `produce` processes against the emulators, while a
//! seeded schedule kills workers (SIGKILL), pauses one (SIGSTOP longer than the failover
//! time, then SIGCONT), adds one, stops one gracefully (SIGTERM), and splits and merges
//! shards. At the end it checks what the workers delivered against what the stream holds:
//! nothing lost, duplicates only after the checkpoint a previous owner stored, per-key
//! order, no delivery by a worker whose shard another worker took, beyond the failover
//! bound. Prints a JSON summary; exits 1 on any violation.
//!
//! ```text
//! cargo build -p examples --bins
//! cargo run -p examples --bin chaos -- --seed 7 --records 200000 --duration 300
//! ```
//!
//! The seed fixes the schedule (when, what, which worker, which shard); the processes'
//! own timing still varies from run to run. Worker output, their logs, the event list and
//! the summary are kept in `--out-dir` (a temporary folder by default).

mod check;
mod fleet;
mod truth;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use kinesis_consumer::leases::coordination::{
    CoordinatorStore, DynamoDbCoordinatorStore, LEADER_LOCK_KEY,
};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore, LeaseTableConfig};
use kinesis_emulator::Emulator;
use kinesis_producer::{ShardMap, StreamId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use check::{LeaseView, Pause, RunData, Snapshot, Verdict, Violation};
use fleet::{Fleet, FleetConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Kill, pause, stop and reshard a consumer fleet under load, then check every guarantee.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Seed of the schedule (default: from the clock). Printed first.
    #[arg(long)]
    seed: Option<u64>,
    /// Records to produce (unique ids 0..N).
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Seconds the chaos schedule lasts; the producer spreads the records over it unless
    /// `--rate` is given.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// Records per second (default: records / duration).
    #[arg(long)]
    rate: Option<f64>,
    /// Shards of the stream at the start.
    #[arg(long, default_value_t = 8)]
    shards: i32,
    /// Workers at the start (one more is added during the run, one stopped).
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Distinct partition keys.
    #[arg(long, default_value_t = 1_000)]
    keys: u64,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// The workers' failover time, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3_000)]
    failover_ms: u64,
    /// Every Nth kill (and the first pause) is of the leader (0: never on purpose).
    #[arg(long, default_value_t = 2)]
    kill_leader_every: usize,
    /// Shortest pause between two kills, in seconds.
    #[arg(long, default_value_t = 5.0)]
    kill_min: f64,
    /// Longest pause between two kills, in seconds.
    #[arg(long, default_value_t = 15.0)]
    kill_max: f64,
    /// How long a worker stays stopped (SIGSTOP), in seconds (default: four failover
    /// times).
    #[arg(long)]
    pause: Option<f64>,
    /// Pauses (SIGSTOP .. SIGCONT), each of a different running worker.
    #[arg(long, default_value_t = 2)]
    pauses: usize,
    /// Reshards (alternately a split and a merge of two adjacent shards).
    #[arg(long, default_value_t = 4)]
    reshards: usize,
    /// Faults to inject, comma-separated, among kill, pause, sigterm, add, reshard.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,pause,sigterm,add,reshard"
    )]
    faults: Vec<String>,
    /// Give up waiting for the workers to catch up this many seconds after the producer
    /// finished.
    #[arg(long, default_value_t = 180)]
    drain_timeout: u64,
    /// An extra argument for `produce` (repeat it), e.g. `--produce-arg=--buffer-time=1s`
    /// for fewer, bigger aggregates on a long run (kinesis-mock slows as shards fill).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    produce_arg: Vec<String>,
    /// Folder of the `consume` and `produce` binaries (default: this program's folder).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Folder for logs, events and the summary (default: a new temporary folder).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

/// Something the schedule does.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    Kill,
    Pause(Duration),
    Resume(usize),
    AddWorker,
    Terminate,
    Split,
    Merge,
}

/// The seeded schedule: (seconds from the start, action).
fn plan(args: &Args, rng: &mut StdRng) -> Vec<(Duration, Action)> {
    let duration = args.duration as f64;
    let enabled = |fault: &str| args.faults.iter().any(|f| f == fault);
    let mut plan = Vec::new();
    if enabled("kill") {
        let (min, max) = (
            args.kill_min.max(0.5),
            args.kill_max.max(args.kill_min.max(0.5)),
        );
        let mut at = rng.random_range(min..=max);
        while at < duration {
            plan.push((at, Action::Kill));
            at += rng.random_range(min..=max);
        }
    }
    if enabled("reshard") && args.reshards > 0 {
        let step = duration * 0.7 / args.reshards as f64;
        for i in 0..args.reshards {
            let at = duration * 0.1 + step * (i as f64 + rng.random_range(0.0..0.5));
            plan.push((
                at,
                if i % 2 == 0 {
                    Action::Split
                } else {
                    Action::Merge
                },
            ));
        }
    }
    if enabled("add") {
        plan.push((duration * rng.random_range(0.2..0.3), Action::AddWorker));
    }
    if enabled("pause") {
        let length = args.pause.unwrap_or(4.0 * args.failover_ms as f64 / 1000.0);
        for i in 0..args.pauses {
            let (from, to) = (
                0.3 + 0.5 * i as f64 / args.pauses as f64,
                0.3 + 0.5 * (i as f64 + 0.5) / args.pauses as f64,
            );
            plan.push((
                duration * rng.random_range(from..to),
                Action::Pause(Duration::from_secs_f64(length)),
            ));
        }
    }
    if enabled("sigterm") {
        plan.push((duration * rng.random_range(0.6..0.7), Action::Terminate));
    }
    let mut plan: Vec<(Duration, Action)> = plan
        .into_iter()
        .map(|(at, action)| (Duration::from_secs_f64(at), action))
        .collect();
    plan.sort_by_key(|(at, _)| *at);
    plan
}

/// One line of the event log.
#[derive(Clone, Debug)]
struct Event {
    at: Duration,
    what: String,
}

struct Run {
    args: Args,
    seed: u64,
    started: Instant,
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    store: DynamoDbLeaseStore,
    fleet: Fleet,
    rng: StdRng,
    events: Vec<Event>,
    snapshots: Arc<Mutex<Vec<Snapshot>>>,
    pauses: Vec<Pause>,
    /// Workers killed (kill -9), and when.
    kills: Vec<(usize, Duration)>,
    /// The coordinator tables (the leader lock).
    coordination: DynamoDbCoordinatorStore,
    /// Peak resident set size (KiB) of every worker process, and its value at the 10th
    /// minute of the run, by worker.
    rss: Arc<Mutex<BTreeMap<usize, Rss>>>,
    counts: BTreeMap<&'static str, u64>,
    extra_violations: Vec<Violation>,
}

/// A worker's resident set size, KiB.
#[derive(Clone, Debug, Default)]
struct Rss {
    peak: u64,
    /// The peak at the 10th minute, for workers that ran from the start.
    at_ten_minutes: Option<u64>,
    since_start: bool,
}

/// The resident set size of worker `worker_id` at `pid`, KiB (Linux); `None` once that
/// process is gone. A killed worker's pid can come back as another process (pid_max is
/// 32,768 on many machines, and builds beside a long run cycle through it fast): only a
/// process whose arguments still name the worker counts.
fn rss_kib(pid: u32, worker_id: &str) -> Option<u64> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if !cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == worker_id.as_bytes())
    {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the lease table into a snapshot, mapping owners onto worker indexes.
async fn snapshot(
    store: &DynamoDbLeaseStore,
    ids: &HashMap<String, usize>,
    started: Instant,
    reason: &'static str,
) -> Option<Snapshot> {
    let leases = store.list_leases().await.ok()?;
    Some(Snapshot {
        at: started.elapsed(),
        reason,
        leases: leases
            .into_iter()
            .map(|lease| LeaseView {
                owner: lease
                    .lease_owner
                    .as_ref()
                    .and_then(|owner| ids.get(owner).copied()),
                shard: lease.lease_key,
                checkpoint: lease.checkpoint,
            })
            .collect(),
    })
}

impl Run {
    fn log(&mut self, what: String) {
        let at = self.started.elapsed();
        println!("chaos: {:>8.3}s {what}", at.as_secs_f64());
        self.events.push(Event { at, what });
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    async fn snapshot(&mut self, reason: &'static str) {
        let ids = self.fleet.ids();
        if let Some(s) = snapshot(&self.store, &ids, self.started, reason).await {
            lock(&self.snapshots).push(s);
        }
    }

    /// The running worker that leads, if the lock names one.
    async fn leader(&self) -> Option<usize> {
        let lock = self.coordination.read_lock(LEADER_LOCK_KEY).await.ok()??;
        let index = *self.fleet.ids().get(&lock.owner)?;
        self.fleet.running().contains(&index).then_some(index)
    }

    /// The leader when `leader` says so and one runs, else a running worker picked by the
    /// seeded generator.
    async fn pick(&mut self, leader: bool) -> Option<(usize, bool)> {
        if leader {
            if let Some(index) = self.leader().await {
                return Some((index, true));
            }
        }
        self.pick_running().map(|index| (index, false))
    }

    /// A running worker picked by the seeded generator.
    fn pick_running(&mut self) -> Option<usize> {
        let running = self.fleet.running();
        if running.is_empty() {
            return None;
        }
        Some(running[self.rng.random_range(0..running.len())])
    }

    async fn act(
        &mut self,
        action: Action,
        plan: &mut Vec<(Duration, Action)>,
    ) -> Result<(), Error> {
        match action {
            Action::Kill => {
                if self.fleet.running().len() < 2 {
                    self.log("kill skipped: fewer than two running workers".into());
                    return Ok(());
                }
                let every = self.args.kill_leader_every;
                let kills = self.counts.get("kills").copied().unwrap_or(0) as usize;
                let Some((victim, is_leader)) =
                    self.pick(every > 0 && kills % every == every - 1).await
                else {
                    return Ok(());
                };
                self.snapshot("kill").await;
                self.fleet.kill(victim)?;
                self.kills.push((victim, self.started.elapsed()));
                self.count("kills");
                if is_leader {
                    self.count("leader_kills");
                }
                let replacement = self.fleet.spawn()?;
                self.log(format!(
                    "kill -9 worker #{victim} ({}{}); restarted as #{replacement}",
                    self.fleet.workers[victim].id,
                    if is_leader { ", the leader" } else { "" }
                ));
            }
            Action::Pause(length) => {
                // The first pause stops the leader past its leadership.
                let first = !self.counts.contains_key("pauses") && self.args.kill_leader_every > 0;
                let Some((worker, is_leader)) = self.pick(first).await else {
                    return Ok(());
                };
                if is_leader {
                    self.count("leader_pauses");
                }
                self.snapshot("pause").await;
                self.fleet.pause(worker)?;
                let stopped_at = self.started.elapsed();
                self.pauses.push(Pause {
                    worker,
                    stopped_at,
                    resumed_at: Duration::MAX,
                });
                self.count("pauses");
                self.log(format!("SIGSTOP worker #{worker} for {length:?}"));
                plan.push((stopped_at + length, Action::Resume(worker)));
                plan.sort_by_key(|(at, _)| *at);
            }
            Action::Resume(worker) => {
                self.snapshot("resume").await;
                self.fleet.resume(worker)?;
                let at = self.started.elapsed();
                if let Some(pause) = self.pauses.iter_mut().rev().find(|p| p.worker == worker) {
                    pause.resumed_at = at;
                }
                self.log(format!("SIGCONT worker #{worker}"));
            }
            Action::AddWorker => {
                let index = self.fleet.spawn()?;
                self.count("workers_added");
                self.log(format!("added worker #{index}"));
            }
            Action::Terminate => {
                if self.fleet.running().len() < 2 {
                    self.log("SIGTERM skipped: fewer than two running workers".into());
                    return Ok(());
                }
                let Some(worker) = self.pick_running() else {
                    return Ok(());
                };
                self.snapshot("sigterm").await;
                self.count("sigterms");
                self.log(format!("SIGTERM worker #{worker}"));
                self.graceful_stop(worker, "TERM").await?;
            }
            Action::Split => match self.split().await {
                Ok(what) => {
                    self.count("splits");
                    self.log(what);
                }
                Err(error) => self.log(format!("split failed: {error}")),
            },
            Action::Merge => match self.merge().await {
                Ok(what) => {
                    self.count("merges");
                    self.log(what);
                }
                Err(error) => self.log(format!("merge failed: {error}")),
            },
        }
        Ok(())
    }

    /// Stops a worker with `signal` and checks it stopped gracefully: exit code 0 within
    /// its shutdown time, and none of its leases still owned by it.
    async fn graceful_stop(&mut self, worker: usize, signal: &str) -> Result<(), Error> {
        let (status, in_time) = self
            .fleet
            .stop(worker, signal, Duration::from_secs(45))
            .await?;
        let id = self.fleet.workers[worker].id.clone();
        let still_owned: Vec<String> = self
            .store
            .list_leases()
            .await
            .map(|leases| {
                leases
                    .into_iter()
                    .filter(|l| l.lease_owner.as_deref() == Some(id.as_str()) && !l.is_finished())
                    .map(|l| l.lease_key)
                    .collect()
            })
            .unwrap_or_default();
        let graceful = status.success() && in_time && still_owned.is_empty();
        self.log(format!(
            "worker #{worker} stopped by SIG{signal}: {status}{}, leases still owned: {still_owned:?}",
            if in_time { "" } else { " (killed after 45 s)" }
        ));
        if graceful {
            self.count("graceful_stops");
        } else {
            use std::os::unix::process::ExitStatusExt;
            self.extra_violations.push(Violation {
                kind: "not-graceful",
                detail: format!(
                    "SIG{signal} to worker #{worker} ({id}): {}{}; leases left owned (others wait the failover time and redo from their checkpoints): {still_owned:?}",
                    match status.signal() {
                        Some(sig) => format!("died of signal {sig} instead of shutting down"),
                        None => format!("exited with {status}"),
                    },
                    if in_time { "" } else { ", not within 45 s" }
                ),
            });
        }
        Ok(())
    }

    async fn open_shards(&self) -> Result<Vec<kinesis_producer::ShardRange>, Error> {
        Ok(ShardMap::load(&self.kinesis, &StreamId::new(&self.stream))
            .await?
            .shards()
            .to_vec())
    }

    async fn split(&mut self) -> Result<String, Error> {
        let shards = self.open_shards().await?;
        if shards.is_empty() {
            return Err("no open shard".into());
        }
        let shard = shards[self.rng.random_range(0..shards.len())].clone();
        self.kinesis
            .split_shard()
            .stream_name(&self.stream)
            .shard_to_split(&*shard.id)
            .new_starting_hash_key(shard.midpoint().to_string())
            .send()
            .await?;
        kinesis_emulator::wait_stream_active(&self.kinesis, &self.stream, Duration::from_secs(60))
            .await?;
        Ok(format!("split {}", shard.id))
    }

    async fn merge(&mut self) -> Result<String, Error> {
        let mut shards = self.open_shards().await?;
        shards.sort_by_key(|s| s.start);
        let pairs: Vec<usize> = (1..shards.len())
            .filter(|&i| shards[i - 1].end.0.checked_add(1) == Some(shards[i].start.0))
            .collect();
        if pairs.is_empty() {
            return Err("no adjacent open shards".into());
        }
        let i = pairs[self.rng.random_range(0..pairs.len())];
        let (a, b) = (&shards[i - 1], &shards[i]);
        self.kinesis
            .merge_shards()
            .stream_name(&self.stream)
            .shard_to_merge(&*a.id)
            .adjacent_shard_to_merge(&*b.id)
            .send()
            .await?;
        kinesis_emulator::wait_stream_active(&self.kinesis, &self.stream, Duration::from_secs(60))
            .await?;
        Ok(format!("merged {} + {}", a.id, b.id))
    }
}

/// The environment that points a child process at the same endpoints.
fn child_env(emulator: &Emulator) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(endpoint) = emulator.kinesis_endpoint() {
        env.push(("AWS_ENDPOINT_URL_KINESIS".into(), endpoint));
    }
    if let Some(endpoint) = emulator.dynamodb_endpoint() {
        env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), endpoint));
    }
    if emulator.is_local() {
        for (name, value) in [
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ] {
            if std::env::var_os(name).is_none() {
                env.push((name.into(), value.into()));
            }
        }
    }
    env
}

fn bin_dir(args: &Args) -> Result<PathBuf, Error> {
    if let Some(dir) = &args.bin_dir {
        return Ok(dir.clone());
    }
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .ok_or("no folder for this program")?
        .to_path_buf())
}

async fn run(args: Args) -> Result<bool, Error> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            % 1_000_000_007
    });
    println!("chaos: seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut schedule = plan(&args, &mut rng);

    let bins = bin_dir(&args)?;
    let (consume, produce) = (bins.join("consume"), bins.join("produce"));
    for bin in [&consume, &produce] {
        if !bin.exists() {
            return Err(format!(
                "{} not found: build them first (cargo build -p examples --bins) or pass --bin-dir",
                bin.display()
            )
            .into());
        }
    }
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        % 1_000_000_000;
    let stream = format!("chaos-{seed}-{suffix}");
    let app = format!("{stream}-app");
    let out_dir = match &args.out_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(&stream),
    };
    std::fs::create_dir_all(&out_dir)?;

    let emulator = Emulator::start().await?;
    let config = emulator.sdk_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    kinesis_emulator::create_stream(&kinesis, &stream, args.shards).await?;
    let env = child_env(&emulator);
    let rate = args
        .rate
        .unwrap_or(args.records as f64 / args.duration.max(1) as f64);
    println!(
        "chaos: stream {stream} ({} shards), {} workers, {} records over {} keys at {rate:.0}/s, failover {} ms; logs in {}",
        args.shards,
        args.workers,
        args.records,
        args.keys,
        args.failover_ms,
        out_dir.display()
    );

    let started = Instant::now();
    let failover = Duration::from_millis(args.failover_ms);
    let fleet = Fleet::new(
        FleetConfig {
            consume,
            env: env.clone(),
            stream: stream.clone(),
            app: app.clone(),
            failover,
            out_dir: out_dir.clone(),
        },
        started,
    );
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);
    let mut run = Run {
        seed,
        started,
        kinesis,
        stream: stream.clone(),
        store,
        fleet,
        rng,
        events: Vec::new(),
        snapshots: Arc::new(Mutex::new(Vec::new())),
        pauses: Vec::new(),
        kills: Vec::new(),
        coordination: DynamoDbCoordinatorStore::new(
            aws_sdk_dynamodb::Client::new(&config),
            &app,
            LeaseTableConfig::default(),
        ),
        rss: Arc::new(Mutex::new(BTreeMap::new())),
        counts: BTreeMap::new(),
        extra_violations: Vec::new(),
        args,
    };
    for _ in 0..run.args.workers {
        run.fleet.spawn()?;
    }
    run.count("workers_started");

    let mut producer = Command::new(&produce)
        .args([
            "--stream",
            &stream,
            "--records",
            &run.args.records.to_string(),
        ])
        .args([
            "--keys",
            &run.args.keys.to_string(),
            "--size",
            &run.args.size.to_string(),
        ])
        .args(["--rate", &rate.to_string()])
        .args(&run.args.produce_arg)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(out_dir.join("produce.stderr"))?)
        .spawn()?;
    run.log(format!("producer started ({} records)", run.args.records));

    // The lease table every second, for the duplicate bound and the overlap check.
    let periodic = {
        let store = run.store.clone();
        let snapshots = run.snapshots.clone();
        let ids: Arc<Mutex<HashMap<String, usize>>> = Arc::new(Mutex::new(run.fleet.ids()));
        let task_ids = ids.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ids = lock(&task_ids).clone();
                if let Some(s) = snapshot(&store, &ids, started, "periodic").await {
                    lock(&snapshots).push(s);
                }
            }
        });
        (task, ids)
    };

    // Every worker's resident set size every 10 s: peak, and at the 10th minute.
    let rss_task = {
        let rss = run.rss.clone();
        let pids = run.fleet.pids();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let at = started.elapsed();
                for (index, pid) in lock(&pids).iter() {
                    if let Some(kib) = rss_kib(*pid, &fleet::worker_id(*index)) {
                        let mut rss = lock(&rss);
                        let entry = rss.entry(*index).or_default();
                        entry.peak = entry.peak.max(kib);
                        if at >= Duration::from_secs(600)
                            && entry.at_ten_minutes.is_none()
                            && entry.since_start
                        {
                            entry.at_ten_minutes = Some(entry.peak);
                        }
                        if at < Duration::from_secs(60) {
                            entry.since_start = true;
                        }
                    }
                }
            }
        })
    };

    // The schedule.
    while !schedule.is_empty() {
        let (at, action) = schedule.remove(0);
        tokio::time::sleep_until((started + at).into()).await;
        run.act(action, &mut schedule).await?;
        *lock(&periodic.1) = run.fleet.ids();
        for (index, status) in run.fleet.reap_crashed() {
            run.extra_violations.push(Violation {
                kind: "worker-crashed",
                detail: format!("worker #{index} exited by itself: {status}"),
            });
            let replacement = run.fleet.spawn()?;
            run.log(format!(
                "worker #{index} exited by itself ({status}); restarted as #{replacement}"
            ));
        }
    }
    // Every pause ends; the fleet is back to its starting size.
    for pause in run.pauses.clone() {
        if pause.resumed_at == Duration::MAX {
            run.act(Action::Resume(pause.worker), &mut Vec::new())
                .await?;
        }
    }
    while run.fleet.running().len() < run.args.workers {
        let index = run.fleet.spawn()?;
        *lock(&periodic.1) = run.fleet.ids();
        run.log(format!("added worker #{index} to drain"));
    }
    run.log("schedule done".into());

    // The producer finishes; then the stream is the ground truth.
    let summary = loop {
        if let Some(status) = producer.try_wait()? {
            let mut out = String::new();
            if let Some(mut stdout) = producer.stdout.take() {
                use std::io::Read;
                stdout.read_to_string(&mut out)?;
            }
            run.log(format!("producer exited: {status}: {}", out.trim()));
            break serde_json::from_str::<serde_json::Value>(out.trim()).unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let producer_failed = summary["failed"].as_u64().unwrap_or(0);
    let truth = truth::read_stream(&run.kinesis, &stream).await?;
    run.log(format!(
        "stream holds {} user records in {} shards",
        truth.records.len(),
        truth.shards.len()
    ));
    let wanted: std::collections::HashSet<u64> = truth.records.iter().map(|r| r.id).collect();
    let drain_deadline = Instant::now() + Duration::from_secs(run.args.drain_timeout);
    loop {
        let delivered = run.fleet.delivered_ids();
        let missing = wanted.iter().filter(|id| !delivered.contains(id)).count();
        if missing == 0 {
            run.log("every record delivered".into());
            break;
        }
        if Instant::now() > drain_deadline {
            run.log(format!("drain timeout: {missing} records not delivered"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let redeliveries in flight land, then stop everyone gracefully (SIGINT).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for index in run.fleet.running() {
        run.graceful_stop(index, "INT").await?;
    }
    periodic.0.abort();
    rss_task.abort();
    run.snapshot("final").await;
    // Growth of the peak resident set from the 10th minute to the end, of the workers that
    // ran from the start (a long run's memory check).
    let rss_growth: Option<f64> = lock(&run.rss)
        .values()
        .filter_map(|r| Some((r.at_ten_minutes? as f64, r.peak as f64)))
        .map(|(at_ten, peak)| (peak - at_ten) * 100.0 / at_ten.max(1.0))
        .reduce(f64::max);
    let rss_peak_kib = lock(&run.rss).values().map(|r| r.peak).max().unwrap_or(0);

    let collected = run.fleet.take_collected();
    let snapshots = lock(&run.snapshots).clone();
    let mut verdict: Verdict = check::verdict(&RunData {
        requested: run.args.records,
        producer_failed,
        stream: &truth.records,
        deliveries: &collected.deliveries,
        snapshots: &snapshots,
        pauses: &run.pauses,
        kills: &run.kills,
        failover,
    });
    for violation in run.extra_violations.drain(..) {
        *verdict.violation_counts.entry(violation.kind).or_default() += 1;
        verdict.violations.push(violation);
    }
    if !collected.unparsable.is_empty() {
        *verdict
            .violation_counts
            .entry("unparsable-output")
            .or_default() += collected.unparsable.len() as u64;
        verdict.violations.push(Violation {
            kind: "unparsable-output",
            detail: format!("first: {:?}", collected.unparsable[0]),
        });
    }

    let overlap_ms: Vec<u128> = verdict
        .overlaps
        .iter()
        .map(|o| o.until.saturating_sub(o.from).as_millis())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "seed": run.seed,
        "stream": stream,
        "records_requested": run.args.records,
        "produced": summary["user_records"],
        "producer_failed": producer_failed,
        "producer_retries": summary["retries"],
        "in_stream_distinct": verdict.in_stream,
        "producer_duplicates": verdict.producer_duplicates,
        "producer_duplicate_examples": verdict.producer_duplicate_examples,
        "delivered_distinct": verdict.delivered_distinct,
        "deliveries": verdict.deliveries,
        "lost": verdict.lost,
        "consumer_duplicates": verdict.consumer_duplicates,
        "keys_out_of_order": verdict.keys_out_of_order,
        "overlap_windows": verdict.overlaps.len(),
        "overlap_max_ms": overlap_ms.iter().max().copied().unwrap_or(0),
        "overlap_total_ms": overlap_ms.iter().sum::<u128>(),
        "inconclusive_pauses": verdict.inconclusive_pauses,
        "kills": run.counts.get("kills").copied().unwrap_or(0),
        "leader_kills": run.counts.get("leader_kills").copied().unwrap_or(0),
        "leader_pauses": run.counts.get("leader_pauses").copied().unwrap_or(0),
        "worker_rss_peak_kib": rss_peak_kib,
        "worker_rss_growth_after_10_min_percent": rss_growth.map(|g| (g * 10.0).round() / 10.0),
        "pauses": run.counts.get("pauses").copied().unwrap_or(0),
        "sigterms": run.counts.get("sigterms").copied().unwrap_or(0),
        "graceful_stops": run.counts.get("graceful_stops").copied().unwrap_or(0),
        "workers_added": run.counts.get("workers_added").copied().unwrap_or(0),
        "splits": run.counts.get("splits").copied().unwrap_or(0),
        "merges": run.counts.get("merges").copied().unwrap_or(0),
        "worker_processes": run.fleet.workers.len(),
        "shards_at_end": truth.shards.len(),
        "elapsed_s": (elapsed * 10.0).round() / 10.0,
        "violations": verdict.violation_counts,
        "passed": verdict.passed(),
    });
    for violation in &verdict.violations {
        eprintln!("chaos: VIOLATION {}: {}", violation.kind, violation.detail);
    }
    for overlap in &verdict.overlaps {
        eprintln!(
            "chaos: overlap on {}: worker #{} delivered {} records from {:.3}s to {:.3}s while worker #{} owned it{}",
            overlap.shard,
            overlap.stale_worker,
            overlap.stale_deliveries,
            overlap.from.as_secs_f64(),
            overlap.until.as_secs_f64(),
            overlap.new_worker,
            if overlap.paused { " (after SIGSTOP)" } else { "" }
        );
    }
    let events: Vec<String> = run
        .events
        .iter()
        .map(|e| format!("{:.3} {}", e.at.as_secs_f64(), e.what))
        .collect();
    std::fs::write(out_dir.join("events.log"), events.join("\n") + "\n")?;
    std::fs::write(
        out_dir.join("violations.log"),
        verdict
            .violations
            .iter()
            .map(|v| format!("{}: {}\n", v.kind, v.detail))
            .collect::<String>(),
    )?;
    std::fs::write(out_dir.join("summary.json"), summary.to_string())?;
    let lines: String = collected
        .deliveries
        .iter()
        .map(|d| {
            format!(
                "{} {:.3} #{} {} {} {} {} {}\n",
                d.n,
                d.at.as_secs_f64(),
                d.worker,
                d.shard,
                d.sequence_number,
                d.sub_sequence_number,
                d.key,
                d.id
            )
        })
        .collect();
    std::fs::write(out_dir.join("deliveries.log"), lines)?;
    let snapshot_lines: String = snapshots
        .iter()
        .flat_map(|s| {
            s.leases.iter().map(move |l| {
                format!(
                    "{:.3} {} {} owner={:?} checkpoint={}\n",
                    s.at.as_secs_f64(),
                    s.reason,
                    l.shard,
                    l.owner,
                    l.checkpoint
                )
            })
        })
        .collect();
    std::fs::write(out_dir.join("leases.log"), snapshot_lines)?;
    if !verdict.passed() {
        eprintln!(
            "chaos: FAILED; repeat the schedule with: cargo run -p examples --bin chaos -- --seed {} --records {} --duration {} --shards {} --workers {} --failover-ms {} --faults {}",
            run.seed,
            run.args.records,
            run.args.duration,
            run.args.shards,
            run.args.workers,
            run.args.failover_ms,
            run.args.faults.join(",")
        );
    }
    println!("{summary}");
    drop(run);
    drop(emulator);
    Ok(verdict.passed())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("chaos: {error}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let args = Args::parse_from(["chaos", "--duration", "120"]);
        let a = plan(&args, &mut StdRng::seed_from_u64(7));
        let b = plan(&args, &mut StdRng::seed_from_u64(7));
        assert_eq!(a, b);
        let kills = a.iter().filter(|(_, x)| *x == Action::Kill).count();
        assert!((7..=24).contains(&kills), "{kills} kills in 120 s");
        assert!(a
            .iter()
            .any(|(_, x)| matches!(x, Action::Pause(d) if *d == Duration::from_secs(12))));
        assert_eq!(a.iter().filter(|(_, x)| *x == Action::Split).count(), 2);
        assert_eq!(a.iter().filter(|(_, x)| *x == Action::Merge).count(), 2);
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
        let only_kills = Args::parse_from(["chaos", "--faults", "kill"]);
        assert!(plan(&only_kills, &mut StdRng::seed_from_u64(7))
            .iter()
            .all(|(_, x)| *x == Action::Kill));
    }
}
