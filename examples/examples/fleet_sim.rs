//! The consumer's lease coordination at fleet scale, simulated: the real lease layer of
//! `kinesis-consumer` (the code every `Scheduler` runs: renewals, discovery, the heartbeat,
//! the election, the leader's rounds, or each worker's taker rounds without a leader) for
//! `--workers` workers on `--shards` leases, on tokio's paused clock, against in-memory
//! tables that bill every request as DynamoDB does.
//!
//! ```sh
//! cargo run --release -p examples --example fleet_sim -- --shards 10000 --workers 200 --kill 0.25 --json
//! ```
//!
//! The cost model, per request, from the encoded size of the items it touches (DynamoDB's
//! item size rules: attribute names plus values):
//! - reads: 4 KB per strongly consistent read unit, half for eventually consistent ones;
//!   a Scan or Query is billed on the sum of the items it returns, rounded up to 4 KB per
//!   page of 1 MB; an owner-index query on the index entries it returns (the keys: the
//!   index projects keys only);
//! - writes: 1 KB per write unit of the larger of the item before and after, at least one
//!   unit even when the condition fails; a write that changes `leaseOwner` also writes the
//!   owner index (an entry is its keys plus 100 bytes; two writes when an entry moves);
//! - with `--partitions P`, each table is spread over P partitions of 3,000 read and 1,000
//!   write units a second; a request beyond what its partition has left is throttled
//!   (refused), as DynamoDB does.
//!
//! It measures, for the leader design (the default) and for today's design (every worker
//! scans the table and takes its own leases, `Coordination::Workers`): the start-up of the
//! fleet on new leases, the cost per hour at rest, the moves at rest, and the takeover of
//! the leases of a fraction of the workers killed at once (the leader among them) at
//! several phases. It checks the whole time that no lease is processed by two workers at
//! once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use clap::Parser;
use kinesis_consumer::leases::coordination::{
    CoordinatorStore, LockItem, MemoryCoordinatorStore, WorkerRow,
};
use kinesis_consumer::leases::{
    CheckpointUpdate, Coordination, LeaseStore, LeaseStoreError, MemoryLeaseStore,
};
use kinesis_consumer::test_util::fleet::{SimWorker, SimWorkerConfig};
use kinesis_consumer::test_util::{lease_to_item, lock_to_item, worker_to_item};
use kinesis_consumer::{ErrorKind, ExtendedSequenceNumber, Lease, ServiceError};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Simulate a consumer fleet's lease coordination and what it costs in DynamoDB.
#[derive(Parser, Debug, Clone)]
#[command(about)]
struct Args {
    /// Leases (shards).
    #[arg(long, default_value_t = 1000)]
    shards: usize,
    /// Workers.
    #[arg(long, default_value_t = 20)]
    workers: usize,
    /// Fraction of the workers killed at once (the leader among them); 0: no kill.
    #[arg(long, default_value_t = 0.0)]
    kill: f64,
    /// Kill phases tried (each at another offset in the renewal cycle); the worst is kept.
    #[arg(long, default_value_t = 3)]
    phases: usize,
    /// Seconds of steady state measured for the cost per hour.
    #[arg(long, default_value_t = 300)]
    window: u64,
    /// Failover time, seconds (the defaults of every other interval follow it).
    #[arg(long, default_value_t = 10)]
    failover: u64,
    /// Spread each table over this many partitions of 3,000 RCU and 1,000 WCU a second,
    /// throttling beyond (default: no throttling).
    #[arg(long)]
    partitions: Option<u32>,
    /// Which designs: leader, today or both.
    #[arg(long, default_value = "both")]
    design: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed of the random choices (victims, start jitter).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest simulated start-up waited for an even split, seconds (today's design steals
    /// one lease per worker and round: large fleets take long).
    #[arg(long, default_value_t = 600)]
    startup_limit: u64,
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    // The lease layer's logs with RUST_LOG (for example RUST_LOG=kinesis_consumer=info).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_timer(SimClock(std::sync::OnceLock::new()))
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    runtime.block_on(async move {
        let mut out = json!({ "shards": args.shards, "workers": args.workers, "kill": args.kill });
        if args.design != "today" {
            let figures = simulate(&args, Coordination::default()).await;
            merge(&mut out, figures);
        }
        if args.design != "leader" {
            out["today"] = simulate(&args, Coordination::Workers).await;
        }
        out["kcl3_model"] = kcl3_model(&args);
        if args.json {
            println!("{out}");
        } else {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
    });
    Ok(())
}

/// Log times on the simulated clock: seconds since the first log line.
struct SimClock(std::sync::OnceLock<Instant>);

impl tracing_subscriber::fmt::time::FormatTime for SimClock {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let start = *self.0.get_or_init(Instant::now);
        write!(w, "{:>9.3}s", start.elapsed().as_secs_f64())
    }
}

fn merge(out: &mut Value, figures: Value) {
    if let (Some(out), Value::Object(figures)) = (out.as_object_mut(), figures) {
        out.extend(figures);
    }
}

// ---------------------------------------------------------------------------------------
// The cost model.

/// DynamoDB's size of an attribute value, bytes.
fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        // Numbers: about one byte per two significant digits, plus one.
        AttributeValue::N(n) => {
            n.trim_start_matches(['-', '0'])
                .replace('.', "")
                .len()
                .div_ceil(2)
                + 1
        }
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(values) => values.iter().map(String::len).sum(),
        AttributeValue::Ns(values) => values.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::L(values) => 3 + values.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        _ => 0,
    }
}

/// DynamoDB's size of an item, bytes.
fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn lease_size(lease: &Lease) -> usize {
    item_size(&lease_to_item(lease))
}

/// An owner-index entry of a lease, as a query reads it: its keys (the index projects keys
/// only).
fn index_entry_size(key: &str, owner: &str) -> usize {
    "leaseKey".len() + key.len() + "leaseOwner".len() + owner.len()
}

/// What a write of an owner-index entry is billed on: the entry plus the 100 bytes of
/// overhead DynamoDB adds to each index item.
fn index_write_size(key: &str, owner: &str) -> usize {
    index_entry_size(key, owner) + 100
}

fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = (bytes.max(1)).div_ceil(4096) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// Scans and queries are billed per page of up to 1 MB.
fn paged_read_units(sizes: impl Iterator<Item = usize>, consistent: bool) -> f64 {
    let mut units = 0.0;
    let mut page = 0usize;
    let mut any = false;
    for size in sizes {
        any = true;
        if page + size > 1 << 20 {
            units += read_units(page, consistent);
            page = 0;
        }
        page += size;
    }
    if page > 0 || !any {
        units += read_units(page, consistent);
    }
    units
}

fn write_units(bytes: usize) -> f64 {
    bytes.max(1).div_ceil(1024) as f64
}

/// One table's bill and its throttling.
#[derive(Debug, Default)]
struct Bill {
    read_units: f64,
    write_units: f64,
    requests: BTreeMap<&'static str, u64>,
    throttled: u64,
}

/// Token buckets of one table's partitions.
#[derive(Debug)]
struct Partitions {
    count: u32,
    /// Read and write tokens per partition, and when they were last refilled.
    tokens: Vec<(f64, f64)>,
    refilled: Instant,
}

impl Partitions {
    fn new(count: u32) -> Self {
        Partitions {
            count,
            tokens: vec![(3000.0, 1000.0); count as usize],
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        for (read, write) in &mut self.tokens {
            *read = (*read + 3000.0 * elapsed).min(3000.0);
            *write = (*write + 1000.0 * elapsed).min(1000.0);
        }
    }

    fn partition(&self, key: &str) -> usize {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (hash % u64::from(self.count)) as usize
    }

    /// Takes `read` and `write` units from the partition of `key` (or, with no key, evenly
    /// from every partition): whether there were enough.
    fn take(&mut self, key: Option<&str>, read: f64, write: f64) -> bool {
        self.refill();
        let targets: Vec<usize> = match key {
            Some(key) => vec![self.partition(key)],
            None => (0..self.tokens.len()).collect(),
        };
        let share = targets.len() as f64;
        if targets
            .iter()
            .any(|p| self.tokens[*p].0 < read / share || self.tokens[*p].1 < write / share)
        {
            return false;
        }
        for p in targets {
            self.tokens[p].0 -= read / share;
            self.tokens[p].1 -= write / share;
        }
        true
    }
}

/// The bill of a table, and its partitions when throttling.
#[derive(Debug, Clone)]
struct Meter {
    bill: Arc<Mutex<Bill>>,
    partitions: Option<Arc<Mutex<Partitions>>>,
}

impl Meter {
    fn new(partitions: Option<u32>) -> Self {
        Meter {
            bill: Arc::default(),
            partitions: partitions.map(|p| Arc::new(Mutex::new(Partitions::new(p)))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bill> {
        self.bill.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bills a request: refused (throttled, not applied) when its partition lacks capacity.
    fn charge(
        &self,
        operation: &'static str,
        key: Option<&str>,
        read: f64,
        write: f64,
    ) -> Result<(), LeaseStoreError> {
        if let Some(partitions) = &self.partitions {
            let admitted = partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(key, read, write);
            if !admitted {
                self.lock().throttled += 1;
                return Err(LeaseStoreError::Throttled(ServiceError::new(
                    operation,
                    ErrorKind::Throttled,
                    "ProvisionedThroughputExceededException (simulated partition limit)",
                )));
            }
        }
        let mut bill = self.lock();
        bill.read_units += read;
        bill.write_units += write;
        *bill.requests.entry(operation).or_default() += 1;
        Ok(())
    }

    fn take(&self) -> Bill {
        std::mem::take(&mut *self.lock())
    }
}

/// The in-memory lease table, billed.
struct MeteredLeases {
    inner: Arc<MemoryLeaseStore>,
    meter: Meter,
    /// Item sizes, kept to bill writes on the larger of before and after.
    sizes: Mutex<HashMap<String, (usize, Option<String>)>>,
}

impl MeteredLeases {
    fn size_of(&self, key: &str) -> (usize, Option<String>) {
        self.sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .unwrap_or((100, None))
    }

    /// Bills a write of `lease` (as the caller saw it) and runs it; notes the new size.
    async fn write(
        &self,
        operation: &'static str,
        lease: &Lease,
        call: impl std::future::Future<Output = Result<Lease, LeaseStoreError>>,
    ) -> Result<Lease, LeaseStoreError> {
        let (before, owner_before) = self.size_of(&lease.lease_key);
        self.meter
            .charge(operation, Some(&lease.lease_key), 0.0, write_units(before))?;
        let result = call.await;
        if let Ok(written) = &result {
            let after = lease_size(written);
            let mut extra = 0.0;
            if after.div_ceil(1024) > before.div_ceil(1024) {
                extra += write_units(after) - write_units(before);
            }
            if written.lease_owner != owner_before {
                let entries = usize::from(owner_before.is_some())
                    + usize::from(written.lease_owner.is_some());
                let owner = written
                    .lease_owner
                    .as_deref()
                    .or(owner_before.as_deref())
                    .unwrap_or_default();
                extra += entries as f64 * write_units(index_write_size(&written.lease_key, owner));
            }
            if extra > 0.0 {
                self.meter.lock().write_units += extra;
            }
            self.sizes.lock().unwrap_or_else(|e| e.into_inner()).insert(
                written.lease_key.clone(),
                (after, written.lease_owner.clone()),
            );
        }
        result
    }

    async fn scan(&self, consistent: bool) -> Result<Vec<Lease>, LeaseStoreError> {
        let leases = self.inner.list_leases().await?;
        let units = paged_read_units(leases.iter().map(lease_size), consistent);
        let operation = if consistent {
            "Scan"
        } else {
            "Scan (eventually consistent)"
        };
        self.meter.charge(operation, None, units, 0.0)?;
        Ok(leases)
    }
}

#[async_trait]
impl LeaseStore for MeteredLeases {
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError> {
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.scan(true).await
    }

    async fn list_leases_eventually_consistent(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.scan(false).await
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, LeaseStoreError> {
        let keys = self.inner.list_lease_keys_owned_by(owner).await?;
        let units = paged_read_units(keys.iter().map(|k| index_entry_size(k, owner)), false);
        self.meter.charge("Query", None, units, 0.0)?;
        Ok(keys)
    }

    fn lists_owned_keys_cheaply(&self) -> bool {
        true
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        let (size, _) = self.size_of(lease_key);
        self.meter
            .charge("GetItem", Some(lease_key), read_units(size, true), 0.0)?;
        self.inner.get_lease(lease_key).await
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        self.meter.charge(
            "PutItem",
            Some(&lease.lease_key),
            0.0,
            write_units(lease_size(lease)),
        )?;
        self.inner.create_lease_if_absent(lease).await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.write("UpdateItem (renew)", lease, self.inner.renew_lease(lease))
            .await
    }

    async fn take_lease(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseStoreError> {
        self.write(
            "UpdateItem (take)",
            lease,
            self.inner.take_lease(lease, owner),
        )
        .await
    }

    async fn evict_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.write("UpdateItem (evict)", lease, self.inner.evict_lease(lease))
            .await
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        update: &CheckpointUpdate,
    ) -> Result<Lease, LeaseStoreError> {
        self.write(
            "UpdateItem (checkpoint)",
            lease,
            self.inner.update_checkpoint(lease, update),
        )
        .await
    }

    async fn request_handoff(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.write(
            "UpdateItem (handoff)",
            lease,
            self.inner.request_handoff(lease, to),
        )
        .await
    }

    async fn hand_over(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.write(
            "UpdateItem (assign)",
            lease,
            self.inner.hand_over(lease, to),
        )
        .await
    }

    async fn accept_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.write(
            "UpdateItem (accept)",
            lease,
            self.inner.accept_handoff(lease),
        )
        .await
    }

    async fn cancel_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.write(
            "UpdateItem (cancel)",
            lease,
            self.inner.cancel_handoff(lease),
        )
        .await
    }

    async fn update_child_shards(
        &self,
        lease: &Lease,
        children: &std::collections::BTreeSet<String>,
    ) -> Result<Lease, LeaseStoreError> {
        self.write(
            "UpdateItem (children)",
            lease,
            self.inner.update_child_shards(lease, children),
        )
        .await
    }

    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError> {
        let (size, _) = self.size_of(&lease.lease_key);
        self.meter
            .charge("DeleteItem", Some(&lease.lease_key), 0.0, write_units(size))?;
        self.inner.delete_lease(lease).await
    }
}

/// The in-memory coordinator tables, billed (both tables on one bill).
struct MeteredCoordination {
    inner: MemoryCoordinatorStore,
    meter: Meter,
}

fn lock_units(lock: &LockItem) -> f64 {
    write_units(item_size(&lock_to_item(lock)))
}

#[async_trait]
impl CoordinatorStore for MeteredCoordination {
    async fn create_tables_if_missing(&self) -> Result<(), LeaseStoreError> {
        Ok(())
    }

    async fn read_lock(&self, key: &str) -> Result<Option<LockItem>, LeaseStoreError> {
        self.meter.charge("GetItem (lock)", Some(key), 1.0, 0.0)?;
        self.inner.read_lock(key).await
    }

    async fn acquire_lock(
        &self,
        previous: Option<&LockItem>,
        lock: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        self.meter
            .charge("PutItem (lock)", Some(&lock.key), 0.0, lock_units(lock))?;
        self.inner.acquire_lock(previous, lock).await
    }

    async fn renew_lock(
        &self,
        current: &LockItem,
        renewed: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        self.meter.charge(
            "UpdateItem (lock)",
            Some(&current.key),
            0.0,
            lock_units(renewed),
        )?;
        self.inner.renew_lock(current, renewed).await
    }

    async fn release_lock(&self, current: &LockItem) -> Result<(), LeaseStoreError> {
        self.meter.charge(
            "DeleteItem (lock)",
            Some(&current.key),
            0.0,
            lock_units(current),
        )?;
        self.inner.release_lock(current).await
    }

    async fn read_worker(&self, worker_id: &str) -> Result<Option<WorkerRow>, LeaseStoreError> {
        self.meter
            .charge("GetItem (worker)", Some(worker_id), 1.0, 0.0)?;
        self.inner.read_worker(worker_id).await
    }

    async fn write_worker(
        &self,
        row: &WorkerRow,
        previous: Option<&WorkerRow>,
    ) -> Result<WorkerRow, LeaseStoreError> {
        let units = write_units(item_size(&worker_to_item(row)));
        self.meter
            .charge("UpdateItem (heartbeat)", Some(&row.worker_id), 0.0, units)?;
        self.inner.write_worker(row, previous).await
    }

    async fn name_successor(
        &self,
        worker_id: &str,
        lock_key: &str,
        named: bool,
    ) -> Result<(), LeaseStoreError> {
        self.meter
            .charge("UpdateItem (successor)", Some(worker_id), 0.0, 1.0)?;
        self.inner.name_successor(worker_id, lock_key, named).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRow>, LeaseStoreError> {
        let rows = self.inner.list_workers().await?;
        let units = paged_read_units(rows.iter().map(|r| item_size(&worker_to_item(r))), false);
        self.meter.charge("Scan (workers)", None, units, 0.0)?;
        Ok(rows)
    }

    async fn fence_worker(&self, worker_id: &str, heartbeat: u64) -> Result<(), LeaseStoreError> {
        self.meter
            .charge("UpdateItem (fence)", Some(worker_id), 0.0, 1.0)?;
        self.inner.fence_worker(worker_id, heartbeat).await
    }

    async fn delete_worker(&self, row: &WorkerRow) -> Result<(), LeaseStoreError> {
        self.meter
            .charge("DeleteItem (worker)", Some(&row.worker_id), 0.0, 1.0)?;
        self.inner.delete_worker(row).await
    }
}

// ---------------------------------------------------------------------------------------
// The fleet.

/// A lease as a real application's table holds it after a while: a sequence number
/// checkpoint, the shard's hash range.
fn realistic_lease(i: usize, shards: usize) -> Lease {
    let key = format!("shardId-{i:012}");
    let mut lease = Lease::new(
        key,
        ExtendedSequenceNumber::new(format!("4963{:052}", i as u128 * 7_919_000_011), 0),
    );
    let span = u128::MAX / shards as u128;
    let start = span * i as u128;
    lease.hash_key_range = Some((start.to_string(), (start + span - 1).to_string()));
    lease
}

/// A worker id like the default one (host name, process id, random suffix).
fn worker_id(i: usize, rng: &mut StdRng) -> String {
    format!(
        "ip-10-0-{}-{}-{}-{:08x}",
        i / 250,
        i % 250,
        rng.random_range(1000..60000),
        rng.random::<u32>()
    )
}

struct Fleet {
    workers: Vec<SimWorker>,
    leases: Arc<MeteredLeases>,
    coordination: Arc<MeteredCoordination>,
    shards: usize,
    design: Coordination,
    failover: Duration,
    rng: StdRng,
    /// Leases seen processed by two workers at once.
    overlaps: usize,
    /// The processor of each lease at the last look.
    last: HashMap<String, String>,
    moves: usize,
}

impl Fleet {
    fn config(&self, id: String) -> SimWorkerConfig {
        let mut config = SimWorkerConfig::new(id, self.design.clone());
        config.failover_time = self.failover;
        config
    }

    fn add_worker(&mut self) {
        let id = worker_id(self.workers.len(), &mut self.rng);
        let mut worker = SimWorker::new(
            self.leases.clone(),
            self.coordination.clone(),
            self.config(id),
        );
        worker.start();
        self.workers.push(worker);
    }

    /// Who processes what now; counts overlaps and moves.
    fn look(&mut self) -> HashMap<String, String> {
        let mut now: HashMap<String, String> = HashMap::new();
        for worker in self.workers.iter().filter(|w| w.is_running()) {
            for key in worker.processing() {
                if now
                    .insert(key.clone(), worker.worker_id().to_owned())
                    .is_some()
                {
                    self.overlaps += 1;
                    eprintln!("overlap: {key} processed by two workers");
                }
            }
        }
        for (key, worker) in &now {
            if self.last.get(key).is_some_and(|before| before != worker) {
                self.moves += 1;
            }
        }
        self.last = now.clone();
        now
    }

    fn running(&self) -> impl Iterator<Item = &SimWorker> {
        self.workers.iter().filter(|w| w.is_running())
    }

    fn balanced(&self, processing: &HashMap<String, String>) -> bool {
        if processing.len() < self.shards {
            return false;
        }
        let mut counts: HashMap<&str, usize> = self.running().map(|w| (w.worker_id(), 0)).collect();
        for worker in processing.values() {
            if let Some(count) = counts.get_mut(worker.as_str()) {
                *count += 1;
            }
        }
        let (min, max) = (counts.values().min(), counts.values().max());
        matches!((min, max), (Some(min), Some(max)) if max - min <= 1)
    }

    fn leader(&self) -> Option<usize> {
        self.workers
            .iter()
            .position(|w| w.is_running() && w.is_leader())
    }
}

const TICK: Duration = Duration::from_millis(50);

async fn simulate(args: &Args, design: Coordination) -> Value {
    let failover = Duration::from_secs(args.failover);
    let memory = Arc::new(MemoryLeaseStore::new());
    for i in 0..args.shards {
        let _ = memory
            .create_lease_if_absent(&realistic_lease(i, args.shards))
            .await;
    }
    let leases = Arc::new(MeteredLeases {
        inner: memory,
        meter: Meter::new(args.partitions),
        sizes: Mutex::new(HashMap::new()),
    });
    let coordination = Arc::new(MeteredCoordination {
        inner: MemoryCoordinatorStore::new(),
        meter: Meter::new(args.partitions),
    });
    let mut fleet = Fleet {
        workers: Vec::new(),
        leases,
        coordination,
        shards: args.shards,
        design: design.clone(),
        failover,
        rng: StdRng::seed_from_u64(args.seed),
        overlaps: 0,
        last: HashMap::new(),
        moves: 0,
    };

    // Start-up: every worker within the first second, on new leases.
    let start = Instant::now();
    let mut all_held: Option<Duration> = None;
    let mut balanced: Option<Duration> = None;
    let limit = Duration::from_secs(args.startup_limit);
    while balanced.is_none() && start.elapsed() < limit {
        while fleet.workers.len() < args.workers
            && start.elapsed()
                >= Duration::from_secs(1) * fleet.workers.len() as u32 / args.workers as u32
        {
            fleet.add_worker();
        }
        tokio::time::sleep(TICK).await;
        let processing = fleet.look();
        if all_held.is_none() && processing.len() == args.shards {
            all_held = Some(start.elapsed());
        }
        if fleet.workers.len() == args.workers && fleet.balanced(&processing) {
            balanced = Some(start.elapsed());
        }
    }
    eprintln!(
        "{}: {} shards x {} workers: all held after {:?}, balanced after {:?}",
        name(&design),
        args.shards,
        args.workers,
        all_held,
        balanced
    );

    // At rest: the cost per hour and the moves.
    tokio::time::sleep(Duration::from_secs(30)).await;
    fleet.look();
    fleet.moves = 0;
    let _ = fleet.leases.meter.take();
    let _ = fleet.coordination.meter.take();
    let window = Duration::from_secs(args.window);
    let window_start = Instant::now();
    while window_start.elapsed() < window {
        tokio::time::sleep(TICK * 10).await;
        fleet.look();
    }
    let per_hour = 3600.0 / window.as_secs_f64();
    let lease_bill = fleet.leases.meter.take();
    let coordination_bill = fleet.coordination.meter.take();
    let scans = lease_bill
        .requests
        .iter()
        .filter(|(op, _)| op.starts_with("Scan"))
        .map(|(_, n)| *n)
        .sum::<u64>();
    let requests = |bill: &Bill| -> Value {
        bill.requests
            .iter()
            .map(|(op, n)| ((*op).to_owned(), json!((*n as f64 * per_hour).round())))
            .collect::<serde_json::Map<String, Value>>()
            .into()
    };
    let mut figures = json!({
        "lease_table_read_units_per_hour": (lease_bill.read_units * per_hour).round(),
        "lease_table_write_units_per_hour": (lease_bill.write_units * per_hour).round(),
        "scans_per_hour": (scans as f64 * per_hour).round(),
        "coordinator_tables_read_units_per_hour": (coordination_bill.read_units * per_hour).round(),
        "coordinator_tables_write_units_per_hour": (coordination_bill.write_units * per_hour).round(),
        "throttled_per_hour": ((lease_bill.throttled + coordination_bill.throttled) as f64 * per_hour).round(),
        "lease_table_requests_per_hour": requests(&lease_bill),
        "coordinator_tables_requests_per_hour": requests(&coordination_bill),
        "all_leases_held_s": all_held.map(|d| round(d.as_secs_f64())),
        "balanced_after_s": balanced.map(|d| round(d.as_secs_f64())),
        "moves_at_rest_per_hour": (fleet.moves as f64 * per_hour).round(),
    });

    if args.kill > 0.0 {
        let mut worst: Option<f64> = None;
        let mut all = Vec::new();
        for phase in 0..args.phases.max(1) {
            // Another offset in the renewal cycle each time.
            let offset = failover / 3 * phase as u32 / args.phases.max(1) as u32;
            tokio::time::sleep(offset + Duration::from_millis(137) * phase as u32).await;
            let takeover = kill_and_measure(&mut fleet, args).await;
            eprintln!(
                "{}: kill phase {phase}: takeover {takeover:?}",
                name(&design)
            );
            let seconds = takeover.map(|d| round(d.as_secs_f64()));
            all.push(json!(seconds));
            worst = match (worst, seconds) {
                (_, None) => Some(f64::INFINITY),
                (w, Some(s)) => Some(w.map_or(s, |w: f64| w.max(s))),
            };
            // Back to full strength for the next phase.
            while fleet.running().count() < args.workers {
                fleet.add_worker();
            }
            let settle = Instant::now();
            while settle.elapsed() < Duration::from_secs(120) {
                tokio::time::sleep(TICK * 10).await;
                let processing = fleet.look();
                if fleet.balanced(&processing) {
                    break;
                }
            }
        }
        figures["takeover_worst_s"] = json!(worst);
        figures["takeover_s"] = json!(all);
        figures["takeover_worst_x_failover"] =
            json!(worst.map(|w| round(w / failover.as_secs_f64())));
    }
    figures["overlaps"] = json!(fleet.overlaps);
    for worker in &mut fleet.workers {
        worker.kill();
    }
    figures
}

/// Kills a fraction of the workers, the leader among them (when there is one), and waits
/// until survivors process every lease the victims processed: returns how long.
async fn kill_and_measure(fleet: &mut Fleet, args: &Args) -> Option<Duration> {
    let processing = fleet.look();
    let running: Vec<usize> = (0..fleet.workers.len())
        .filter(|i| fleet.workers[*i].is_running())
        .collect();
    let count = ((running.len() as f64 * args.kill).round() as usize).clamp(1, running.len() - 1);
    let mut victims: Vec<usize> = Vec::new();
    if let Some(leader) = fleet.leader() {
        victims.push(leader);
    }
    let mut others: Vec<usize> = running
        .iter()
        .copied()
        .filter(|i| !victims.contains(i))
        .collect();
    others.shuffle(&mut fleet.rng);
    victims.extend(others.into_iter().take(count.saturating_sub(victims.len())));
    let names: HashSet<String> = victims
        .iter()
        .map(|i| fleet.workers[*i].worker_id().to_owned())
        .collect();
    let orphans: Vec<String> = processing
        .iter()
        .filter(|(_, worker)| names.contains(*worker))
        .map(|(key, _)| key.clone())
        .collect();
    tracing::info!(victims = ?names, orphans = orphans.len(), "killing");
    for victim in &victims {
        fleet.workers[*victim].kill();
    }
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(TICK).await;
        let now = fleet.look();
        if orphans
            .iter()
            .all(|key| now.get(key).is_some_and(|w| !names.contains(w)))
        {
            return Some(killed.elapsed());
        }
    }
    None
}

/// What the Java KCL 3's design costs by the same model, at its defaults (not simulated):
/// the leader scans the lease table (eventually consistent) every 20 s; each worker queries
/// the owner index every 9.975 s and renews each lease every 3.308 s; each worker writes
/// its metrics row every 30 s; the leader scans the worker metrics table every 20 s.
fn kcl3_model(args: &Args) -> Value {
    let (shards, workers) = (args.shards, args.workers.max(1));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let ids: Vec<String> = (0..workers).map(|i| worker_id(i, &mut rng)).collect();
    let leases: Vec<Lease> = (0..shards)
        .map(|i| {
            let mut lease = realistic_lease(i, shards);
            lease.lease_owner = Some(ids[i % workers].clone());
            lease
        })
        .collect();
    let scan = paged_read_units(leases.iter().map(lease_size), false);
    let per_worker = shards.div_ceil(workers);
    let query = paged_read_units(
        leases
            .iter()
            .take(per_worker)
            .map(|l| index_entry_size(&l.lease_key, &ids[0])),
        false,
    );
    let renewal = write_units(lease_size(&leases[0]));
    let mut row = WorkerRow::new(ids[0].clone());
    row.last_update_epoch_seconds = Some(1_800_000_000);
    row.stats.insert("C".into(), vec![12.5; 10]);
    row.operating_range.insert("C".into(), vec![100.0]);
    let row_size = item_size(&worker_to_item(&row));
    let rows_scan = paged_read_units(std::iter::repeat_n(row_size, workers), false);
    json!({
        "lease_table_read_units_per_hour": (3600.0 / 20.0 * scan + workers as f64 * 3600.0 / 9.975 * query).round(),
        "lease_table_write_units_per_hour": (shards as f64 * 3600.0 / 3.308 * renewal).round(),
        "scans_per_hour": 180,
        "coordinator_tables_read_units_per_hour": (3600.0 / 20.0 * rows_scan).round(),
        "coordinator_tables_write_units_per_hour": (workers as f64 * 120.0 * write_units(row_size)).round(),
    })
}

fn name(design: &Coordination) -> &'static str {
    match design {
        Coordination::Workers => "today (every worker scans)",
        _ => "leader",
    }
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
