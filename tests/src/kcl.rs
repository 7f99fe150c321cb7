//! Helpers for the consumer's integration tests: a record processor that logs what it is
//! given, workers with short intervals, putting records and reading the lease table.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::{
    ExtendedSequenceNumber, FailedRecord, InitialPosition, InitializeInput, KinesisClientRecord,
    Lease, LeaseLostInput, PollingConfig, ProcessRecordsInput, ProcessingError, RecordProcessor,
    RetrievalMode, Scheduler, SchedulerBuilder, SchedulerError, ShardEndedInput, ShutdownHandle,
    ShutdownRequestedInput,
};
use tokio::task::JoinHandle;

use crate::TestResult;

/// A user record as a processor received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The worker whose processor got it.
    pub worker: String,
    /// Its shard.
    pub shard: String,
    /// Kinesis sequence number.
    pub sequence_number: String,
    /// Sub-sequence number.
    pub sub_sequence_number: u64,
    /// Partition key.
    pub partition_key: String,
    /// Payload.
    pub data: Bytes,
    /// Whether it came out of an aggregate.
    pub aggregated: bool,
    /// When Kinesis received it.
    pub arrival: Option<std::time::SystemTime>,
    /// The batch's `millis_behind_latest`.
    pub millis_behind_latest: Option<i64>,
    /// When the processor got it.
    pub at: std::time::Instant,
}

/// Something a processor was told, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `initialize` with the checkpoint it resumes from.
    Initialized {
        /// Worker.
        worker: String,
        /// Shard.
        shard: String,
        /// Checkpoint.
        checkpoint: ExtendedSequenceNumber,
    },
    /// `shard_ended`.
    ShardEnded {
        /// Worker.
        worker: String,
        /// Shard.
        shard: String,
    },
    /// `lease_lost`.
    LeaseLost {
        /// Worker.
        worker: String,
        /// Shard.
        shard: String,
    },
    /// `shutdown_requested`.
    ShutdownRequested {
        /// Worker.
        worker: String,
        /// Shard.
        shard: String,
    },
    /// A processor method returned after blocking its thread
    /// ([`Behaviour::block_in_shutdown`]).
    Unblocked {
        /// Worker.
        worker: String,
        /// Shard.
        shard: String,
        /// When.
        at: std::time::Instant,
    },
}

/// What every processor of a test received, shared between workers.
#[derive(Clone, Debug, Default)]
pub struct Log(Arc<Mutex<LogInner>>);

#[derive(Debug, Default)]
struct LogInner {
    delivered: Vec<Delivered>,
    events: Vec<Event>,
}

impl Log {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every delivered record, in delivery order.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.lock().delivered.clone()
    }

    /// Adds a delivery, for consumers that are not a [`LoggingProcessor`] (such as a
    /// shard stream's).
    pub fn push_delivered(&self, delivered: Delivered) {
        self.lock().delivered.push(delivered);
    }

    /// Every event, in order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// How many distinct payloads were delivered.
    pub fn distinct_payloads(&self) -> usize {
        let inner = self.lock();
        let set: std::collections::HashSet<&Bytes> =
            inner.delivered.iter().map(|d| &d.data).collect();
        set.len()
    }

    /// Delivered payloads per partition key, in delivery order.
    pub fn by_key(&self) -> BTreeMap<String, Vec<Bytes>> {
        let mut map: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
        for d in self.lock().delivered.iter() {
            map.entry(d.partition_key.clone())
                .or_default()
                .push(d.data.clone());
        }
        map
    }
}

/// How the test processor behaves.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Checkpoint after every batch.
    pub checkpoint_every_batch: bool,
    /// Checkpoint in `shutdown_requested`.
    pub checkpoint_on_shutdown: bool,
    /// Checkpoint in `shard_ended` (a correct processor does).
    pub checkpoint_on_shard_end: bool,
    /// Panic in `process_records` (after logging the batch).
    pub panic_on_batch: bool,
    /// Block the thread (not just the task) this long in `shutdown_requested`, as a
    /// processor calling blocking code does; an abort cannot stop it.
    pub block_in_shutdown: Option<Duration>,
    /// Never return from `shutdown_requested` (an async hang: an abort ends it).
    pub hang_in_shutdown: bool,
    /// Fail the records whose data starts with [`POISON`] (a `ProcessingError` naming
    /// them), checkpointing only up to the record before the first of them.
    pub fail_poison: bool,
    /// Panic on a batch holding a record whose data starts with [`POISON`] (after
    /// logging the batch).
    pub panic_on_poison: bool,
}

/// The prefix of a record the processor fails on ([`Behaviour::fail_poison`]).
pub const POISON: &[u8] = b"poison";

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            checkpoint_every_batch: true,
            checkpoint_on_shutdown: true,
            checkpoint_on_shard_end: true,
            panic_on_batch: false,
            block_in_shutdown: None,
            hang_in_shutdown: false,
            fail_poison: false,
            panic_on_poison: false,
        }
    }
}

/// A processor that logs everything into a [`Log`].
pub struct LoggingProcessor {
    worker: String,
    shard: String,
    log: Log,
    behaviour: Behaviour,
}

#[async_trait]
impl RecordProcessor for LoggingProcessor {
    async fn initialize(&mut self, input: InitializeInput) {
        self.shard = input.shard_id.clone();
        self.log.lock().events.push(Event::Initialized {
            worker: self.worker.clone(),
            shard: input.shard_id,
            checkpoint: input.checkpoint,
        });
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
    ) -> kinesis_consumer::ProcessResult {
        {
            let mut log = self.log.lock();
            for r in &input.records {
                log.delivered.push(Delivered {
                    worker: self.worker.clone(),
                    shard: self.shard.clone(),
                    sequence_number: r.sequence_number.to_string(),
                    sub_sequence_number: r.sub_sequence_number,
                    partition_key: r.partition_key.to_string(),
                    data: r.data.clone(),
                    aggregated: r.aggregated,
                    arrival: r.approximate_arrival_timestamp,
                    millis_behind_latest: input.millis_behind_latest,
                    at: std::time::Instant::now(),
                });
            }
        }
        if self.behaviour.panic_on_batch && !input.records.is_empty() {
            panic!("{} {}: injected processor panic", self.worker, self.shard);
        }
        let poisoned = |r: &&KinesisClientRecord| r.data.starts_with(POISON);
        if self.behaviour.panic_on_poison && input.records.iter().any(|r| poisoned(&r)) {
            panic!(
                "{} {}: injected panic on a poison record",
                self.worker, self.shard
            );
        }
        let failed: Vec<FailedRecord> = if self.behaviour.fail_poison {
            input
                .records
                .iter()
                .filter(poisoned)
                .map(|r| FailedRecord::new(r, "poison record"))
                .collect()
        } else {
            Vec::new()
        };
        if self.behaviour.checkpoint_every_batch {
            // Never past a failed record: up to the record before the first of them.
            let last_good = input.records.iter().take_while(|r| !poisoned(r)).last();
            let checkpointed = match (failed.is_empty(), last_good) {
                (true, _) => input.checkpointer.checkpoint().await,
                (false, Some(last)) => {
                    input
                        .checkpointer
                        .checkpoint_at(&last.sequence_number, last.sub_sequence_number)
                        .await
                }
                (false, None) => Ok(()),
            };
            if let Err(e) = checkpointed {
                note(&format!(
                    "{} {}: checkpoint failed: {e}",
                    self.worker, self.shard
                ));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ProcessingError::records(failed))
        }
    }

    async fn lease_lost(&mut self, input: LeaseLostInput) {
        self.log.lock().events.push(Event::LeaseLost {
            worker: self.worker.clone(),
            shard: input.shard_id,
        });
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        self.log.lock().events.push(Event::ShardEnded {
            worker: self.worker.clone(),
            shard: input.shard_id,
        });
        if self.behaviour.checkpoint_on_shard_end {
            if let Err(e) = input.checkpointer.checkpoint().await {
                note(&format!(
                    "{} {}: shard-end checkpoint failed: {e}",
                    self.worker, self.shard
                ));
            }
        }
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput) {
        self.log.lock().events.push(Event::ShutdownRequested {
            worker: self.worker.clone(),
            shard: input.shard_id,
        });
        if let Some(block) = self.behaviour.block_in_shutdown {
            std::thread::sleep(block);
            self.log.lock().events.push(Event::Unblocked {
                worker: self.worker.clone(),
                shard: self.shard.clone(),
                at: std::time::Instant::now(),
            });
        }
        if self.behaviour.hang_in_shutdown {
            std::future::pending::<()>().await;
        }
        if self.behaviour.checkpoint_on_shutdown {
            if let Err(e) = input.checkpointer.checkpoint().await {
                note(&format!(
                    "{} {}: shutdown checkpoint failed: {e}",
                    self.worker, self.shard
                ));
            }
        }
    }
}

fn note(message: &str) {
    eprintln!("{message}");
}

/// Failover time used by the tests.
pub const FAILOVER: Duration = Duration::from_secs(2);

/// A builder with the tests' short intervals: failover 2 s (renewal every 667 ms, taker
/// every second), shard sync every 2 s, parent checks every 500 ms, reads every 100 ms.
pub fn fast_builder(
    config: &SdkConfig,
    stream: &str,
    application: &str,
    worker: &str,
) -> SchedulerBuilder {
    fast(
        Scheduler::builder(config)
            .stream(stream)
            .application_name(application)
            .worker_id(worker)
            .initial_position(InitialPosition::TrimHorizon),
    )
}

/// The short intervals of [`fast_builder`] on any builder.
pub fn fast(builder: SchedulerBuilder) -> SchedulerBuilder {
    builder
        .failover_time(FAILOVER)
        .lease_taker_interval(Duration::from_secs(1))
        .shard_sync_interval(Duration::from_secs(2))
        .parent_shard_poll_interval(Duration::from_millis(500))
        .retrieval_mode(RetrievalMode::Polling(fast_polling()))
        .shutdown_timeout(Duration::from_secs(10))
}

/// Polling every 100 ms, 1,000 records per read (as a retrieval mode, so that a test may
/// switch to enhanced fan-out with `fan_out()`).
pub fn fast_polling() -> PollingConfig {
    let mut polling = PollingConfig::default();
    polling.idle_time_between_reads = Duration::from_millis(100);
    polling.max_records = 1_000;
    polling
}

/// A running worker.
pub struct Worker {
    /// Its id.
    pub id: String,
    /// The task running [`Scheduler::run`]; abort it to simulate a crash.
    pub task: JoinHandle<Result<(), SchedulerError>>,
    /// Requests a graceful shutdown.
    pub shutdown: ShutdownHandle,
    signal: tokio::sync::oneshot::Sender<()>,
}

impl Worker {
    /// Graceful shutdown through the signal given to `Scheduler::run_until`; waits for it
    /// to return.
    pub async fn stop(self) -> TestResult {
        let _ = self.signal.send(());
        self.task.await??;
        Ok(())
    }

    /// Graceful shutdown through the [`ShutdownHandle`]; waits for `run` to return.
    pub async fn stop_with_handle(self) -> TestResult {
        self.shutdown.shutdown();
        self.task.await??;
        Ok(())
    }
}

/// Sets processors that log into `log` what they get, as `worker`.
pub fn logging(
    builder: SchedulerBuilder,
    worker: &str,
    log: &Log,
    behaviour: Behaviour,
) -> SchedulerBuilder {
    let factory_log = log.clone();
    let factory_worker = worker.to_owned();
    builder.processor_factory(move || LoggingProcessor {
        worker: factory_worker.clone(),
        shard: String::new(),
        log: factory_log.clone(),
        behaviour,
    })
}

/// Starts a worker whose processors log into `log`.
pub async fn start_worker(
    builder: SchedulerBuilder,
    worker: &str,
    log: &Log,
    behaviour: Behaviour,
) -> TestResult<Worker> {
    let scheduler = logging(builder.worker_id(worker), worker, log, behaviour)
        .build()
        .await?;
    let shutdown = scheduler.shutdown_handle();
    let (signal, stop) = tokio::sync::oneshot::channel::<()>();
    Ok(Worker {
        id: worker.to_owned(),
        task: tokio::spawn(scheduler.run_until(async move {
            // A dropped sender (a test that ends without stopping) is no shutdown.
            if stop.await.is_err() {
                std::future::pending::<()>().await;
            }
        })),
        shutdown,
        signal,
    })
}

/// Puts `records` as (partition key, payload) pairs, 500 per call; returns the shard id
/// each landed on.
pub async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    records: &[(String, Bytes)],
) -> TestResult<Vec<String>> {
    let mut shards = Vec::new();
    for chunk in records.chunks(500) {
        let entries = chunk
            .iter()
            .map(|(key, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(data.to_vec()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await?;
        if out.failed_record_count().unwrap_or(0) != 0 {
            return Err("put_records had failures".into());
        }
        shards.extend(
            out.records()
                .iter()
                .map(|r| r.shard_id().unwrap_or_default().to_owned()),
        );
    }
    Ok(shards)
}

/// `n` records over `keys` partition keys; payload `"<key>:<i>"` with `i` counting per key.
pub fn keyed_records(prefix: &str, n: usize, keys: usize) -> Vec<(String, Bytes)> {
    let mut next: HashMap<usize, usize> = HashMap::new();
    (0..n)
        .map(|i| {
            let k = i % keys;
            let count = next.entry(k).or_default();
            *count += 1;
            let key = format!("{prefix}-key-{k}");
            let data = Bytes::from(format!("{key}:{:06}", *count - 1));
            (key, data)
        })
        .collect()
}

/// The lease table's leases.
pub async fn leases(config: &SdkConfig, application: &str) -> TestResult<Vec<Lease>> {
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(config), application);
    Ok(store.list_leases().await?)
}

/// Leases held per owner (finished leases excluded).
pub async fn owners(config: &SdkConfig, application: &str) -> TestResult<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for lease in leases(config, application).await? {
        if let (Some(owner), false) = (lease.lease_owner, lease.checkpoint.is_shard_end()) {
            *counts.entry(owner).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Asserts per-key order: for every key, the first delivery of each payload comes in
/// increasing order (redeliveries after a failover may repeat earlier payloads).
pub fn assert_per_key_order(log: &Log) {
    for (key, payloads) in log.by_key() {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<&Bytes> = payloads.iter().filter(|p| seen.insert(*p)).collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(firsts, sorted, "order broken for key {key}");
    }
}

/// Splits the stream's first shard in the middle of its hash range, then merges the two
/// children back, waiting for ACTIVE after each and 2 s between them (so records land on
/// every generation): a parent, two children, a grandchild. Returns the parent and the
/// two children.
pub async fn split_then_merge(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
) -> TestResult<(String, Vec<String>)> {
    let shards = crate::list_shards(kinesis, stream).await?;
    let parent = shards[0].shard_id().to_owned();
    let range = shards[0].hash_key_range().ok_or("no hash range")?;
    let start: u128 = range.starting_hash_key().parse()?;
    let end: u128 = range.ending_hash_key().parse()?;
    kinesis
        .split_shard()
        .stream_name(stream)
        .shard_to_split(&parent)
        .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
        .send()
        .await?;
    crate::wait_stream_active(kinesis, stream).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let children: Vec<String> = crate::list_shards(kinesis, stream)
        .await?
        .iter()
        .filter(|s| s.parent_shard_id() == Some(parent.as_str()))
        .map(|s| s.shard_id().to_owned())
        .collect();
    if children.len() != 2 {
        return Err(format!("{parent} split into {children:?}").into());
    }
    kinesis
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(&children[0])
        .adjacent_shard_to_merge(&children[1])
        .send()
        .await?;
    crate::wait_stream_active(kinesis, stream).await?;
    Ok((parent, children))
}
