//! The consumer behind the fault proxy (`kinesis_emulator::fault_proxy`) in front of
//! kinesis-mock and dynalite, and through a real DynamoDB restart: under each fault a
//! worker stalls, then resumes from its checkpoints; nothing is lost, per-key order
//! holds, and no two workers deliver a shard at the same time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use integration_tests::kcl::{fast_builder, keyed_records, leases, put_records};
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_consumer::{
    ExtendedSequenceNumber, InitializeInput, LeaseLostInput, ProcessRecordsInput, RecordProcessor,
    SchedulerBuilder, SchedulerError, ShardEndedInput, ShutdownRequestedInput,
};
use kinesis_emulator::fault_proxy::{Fault, FaultProxy, FaultRule};
use kinesis_emulator::{Emulator, EmulatorProcess};
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
enum Entry {
    Initialized {
        at: Instant,
        worker: String,
        shard: String,
        checkpoint: ExtendedSequenceNumber,
    },
    Delivered {
        at: Instant,
        worker: String,
        shard: String,
        position: ExtendedSequenceNumber,
        key: String,
        data: Bytes,
    },
    Ended {
        worker: String,
        shard: String,
    },
}

/// What every processor of a test saw, with the time it saw it.
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<Entry>>>);

impl Timeline {
    fn push(&self, entry: Entry) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }

    fn entries(&self) -> Vec<Entry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn delivered(&self) -> HashSet<Bytes> {
        self.entries()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Delivered { data, .. } => Some(data),
                _ => None,
            })
            .collect()
    }
}

struct TimedProcessor {
    worker: String,
    shard: String,
    timeline: Timeline,
    /// Checkpoint after every n-th batch (1: every batch).
    checkpoint_every: usize,
    batches: usize,
}

#[async_trait]
impl RecordProcessor for TimedProcessor {
    async fn initialize(&mut self, input: InitializeInput) {
        self.shard = input.shard_id.clone();
        self.timeline.push(Entry::Initialized {
            at: Instant::now(),
            worker: self.worker.clone(),
            shard: input.shard_id,
            checkpoint: input.checkpoint,
        });
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
    ) -> kinesis_consumer::ProcessResult {
        for record in &input.records {
            self.timeline.push(Entry::Delivered {
                at: Instant::now(),
                worker: self.worker.clone(),
                shard: self.shard.clone(),
                position: record.position(),
                key: record.partition_key.to_string(),
                data: record.data.clone(),
            });
        }
        self.batches += 1;
        if self.batches.is_multiple_of(self.checkpoint_every) {
            let _ = input.checkpointer.checkpoint().await;
        }
        Ok(())
    }

    async fn lease_lost(&mut self, input: LeaseLostInput) {
        self.timeline.push(Entry::Ended {
            worker: self.worker.clone(),
            shard: input.shard_id,
        });
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        let _ = input.checkpointer.checkpoint().await;
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput) {
        let _ = input.checkpointer.checkpoint().await;
        self.timeline.push(Entry::Ended {
            worker: self.worker.clone(),
            shard: input.shard_id,
        });
    }
}

struct Worker {
    stop: kinesis_consumer::ShutdownHandle,
    task: JoinHandle<Result<(), SchedulerError>>,
}

async fn start(
    builder: SchedulerBuilder,
    worker: &str,
    timeline: &Timeline,
    checkpoint_every: usize,
) -> TestResult<Worker> {
    let (timeline, name) = (timeline.clone(), worker.to_owned());
    let scheduler = builder
        .worker_id(worker)
        .processor_factory(move || TimedProcessor {
            worker: name.clone(),
            shard: String::new(),
            timeline: timeline.clone(),
            checkpoint_every,
            batches: 0,
        })
        .build()
        .await?;
    Ok(Worker {
        stop: scheduler.shutdown_handle(),
        task: tokio::spawn(scheduler.run()),
    })
}

impl Worker {
    async fn stop(self) -> TestResult {
        self.stop.shutdown();
        self.task.await??;
        Ok(())
    }
}

/// Endpoints the proxies forward to.
async fn upstream(service: &str) -> TestResult<String> {
    let emulator = Emulator::shared().await?;
    let local = match service {
        "kinesis" => emulator.kinesis_endpoint(),
        _ => emulator.dynamodb_endpoint(),
    };
    match local {
        Some(endpoint) => Ok(endpoint),
        None => Ok(std::env::var(if service == "kinesis" {
            "AWS_ENDPOINT_URL_KINESIS"
        } else {
            "AWS_ENDPOINT_URL_DYNAMODB"
        })
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))?),
    }
}

fn kinesis_at(config: &aws_config::SdkConfig, endpoint: String) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(config)
            .endpoint_url(endpoint)
            .build(),
    )
}

fn dynamodb_at(config: &aws_config::SdkConfig, endpoint: String) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(config)
            .endpoint_url(endpoint)
            .build(),
    )
}

/// Nothing lost; per key, first deliveries in put order (payloads count up per key);
/// every processor started after its checkpoint.
fn assert_consumed(timeline: &Timeline, records: &[(String, Bytes)]) {
    let delivered = timeline.delivered();
    let missing: Vec<&Bytes> = records
        .iter()
        .map(|(_, data)| data)
        .filter(|data| !delivered.contains(*data))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");

    let mut seen = HashSet::new();
    let mut by_key: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
    // First delivery after each Initialized, per (worker, shard).
    let mut starts: HashMap<(String, String), ExtendedSequenceNumber> = HashMap::new();
    for entry in timeline.entries() {
        match entry {
            Entry::Initialized {
                worker,
                shard,
                checkpoint,
                ..
            } => {
                starts.insert((worker, shard), checkpoint);
            }
            Entry::Delivered {
                worker,
                shard,
                position,
                key,
                data,
                ..
            } => {
                if let Some(checkpoint) = starts.remove(&(worker.clone(), shard.clone())) {
                    assert_ne!(
                        position.compare(&checkpoint),
                        Some(std::cmp::Ordering::Less),
                        "{worker} resumed {shard} at {position}, before its checkpoint {checkpoint}"
                    );
                    assert_ne!(
                        position.compare(&checkpoint),
                        Some(std::cmp::Ordering::Equal),
                        "{worker} redelivered the checkpointed record {position} of {shard}"
                    );
                }
                if seen.insert(data.clone()) {
                    by_key.entry(key).or_default().push(data);
                }
            }
            Entry::Ended { .. } => {}
        }
    }
    for (key, firsts) in by_key {
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(firsts, sorted, "order broken for key {key}");
    }
}

/// No two workers deliver one shard at once: a delivery is by the worker that initialized
/// the shard last (a worker that lost a shard delivers nothing more of it).
fn assert_one_owner_at_a_time(timeline: &Timeline) {
    let mut owner: HashMap<String, (String, Instant)> = HashMap::new();
    for entry in timeline.entries() {
        match entry {
            Entry::Initialized {
                at, worker, shard, ..
            } => {
                owner.insert(shard, (worker, at));
            }
            Entry::Delivered {
                at,
                worker,
                shard,
                position,
                ..
            } => {
                if let Some((current, since)) = owner.get(&shard) {
                    assert!(
                        *current == worker,
                        "{worker} delivered {shard} {position} {:?} after {current} had taken it over",
                        at.duration_since(*since)
                    );
                }
            }
            Entry::Ended { worker, shard } => {
                // The owner stopped: nobody may deliver the shard until someone takes it.
                if owner
                    .get(&shard)
                    .is_some_and(|(current, _)| *current == worker)
                {
                    owner.insert(shard, (String::new(), Instant::now()));
                }
            }
        }
    }
}

struct Scenario {
    config: aws_config::SdkConfig,
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    app: String,
    timeline: Timeline,
}

async fn scenario(name: &str, shards: i32) -> TestResult<Scenario> {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name(name);
    create_stream(&kinesis, &stream, shards).await?;
    Ok(Scenario {
        config,
        kinesis,
        app: unique_name(&format!("{name}-app")),
        stream,
        timeline: Timeline::default(),
    })
}

async fn wait_delivered(timeline: &Timeline, records: &[(String, Bytes)], secs: u64) -> TestResult {
    wait_for(
        "every record delivered",
        Duration::from_secs(secs),
        || async {
            let delivered = timeline.delivered();
            Ok(records
                .iter()
                .all(|(_, data)| delivered.contains(data))
                .then_some(()))
        },
    )
    .await
}

/// One worker reads through a Kinesis proxy that injects `fault` into `target` calls
/// for 3 s while records keep arriving: it stalls and resumes where it was, each record
/// delivered exactly once (no lease moved, so no redelivery is allowed either).
async fn kinesis_fault(name: &str, target: &str, fault: Fault) -> TestResult {
    let s = scenario(name, 2).await?;
    let proxy = FaultProxy::start(&upstream("kinesis").await?, 5).await?;
    let first = keyed_records("before", 60, 6);
    put_records(&s.kinesis, &s.stream, &first).await?;
    let builder = fast_builder(&s.config, &s.stream, &s.app, "w")
        .kinesis_client(kinesis_at(&s.config, proxy.endpoint()));
    let worker = start(builder, "w", &s.timeline, 1).await?;
    wait_delivered(&s.timeline, &first, 30).await?;

    let rule = proxy.add(
        FaultRule::new(fault)
            .target(target)
            .for_duration(Duration::from_secs(3)),
    );
    let second = keyed_records("during", 60, 6);
    put_records(&s.kinesis, &s.stream, &second).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let third = keyed_records("after", 60, 6);
    put_records(&s.kinesis, &s.stream, &third).await?;
    let all: Vec<(String, Bytes)> = first.into_iter().chain(second).chain(third).collect();
    wait_delivered(&s.timeline, &all, 60).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await?;

    assert!(proxy.injected(rule) >= 1, "the fault was injected");
    assert_consumed(&s.timeline, &all);
    let deliveries = s
        .timeline
        .entries()
        .iter()
        .filter(|e| matches!(e, Entry::Delivered { .. }))
        .count();
    assert_eq!(deliveries, all.len(), "each record exactly once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_stall_and_resume() -> TestResult {
    kinesis_fault("fault-read-throttle", "GetRecords", Fault::Throttle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_reads_stall_and_resume() -> TestResult {
    kinesis_fault("fault-read-500", "GetRecords", Fault::Status(500)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_reads_stall_and_resume() -> TestResult {
    kinesis_fault("fault-read-503", "GetRecords", Fault::Status(503)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_read_answers_are_read_again() -> TestResult {
    // The records were read, the answer never arrived: read again, delivered once.
    kinesis_fault("fault-read-drop", "GetRecords", Fault::DropResponse).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reads_resume() -> TestResult {
    kinesis_fault(
        "fault-read-stall",
        "GetRecords",
        Fault::Stall(Duration::from_secs(4)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reads_resume() -> TestResult {
    kinesis_fault("fault-read-reset", "GetRecords", Fault::Reset).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_endpoint_down_and_back_loses_nothing() -> TestResult {
    let s = scenario("fault-read-down", 2).await?;
    let proxy = FaultProxy::start(&upstream("kinesis").await?, 5).await?;
    let first = keyed_records("before", 60, 6);
    put_records(&s.kinesis, &s.stream, &first).await?;
    let builder = fast_builder(&s.config, &s.stream, &s.app, "w")
        .kinesis_client(kinesis_at(&s.config, proxy.endpoint()));
    let worker = start(builder, "w", &s.timeline, 1).await?;
    wait_delivered(&s.timeline, &first, 30).await?;

    proxy.refuse_connections();
    let second = keyed_records("during", 60, 6);
    put_records(&s.kinesis, &s.stream, &second).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.accept_connections().await?;
    let all: Vec<(String, Bytes)> = first.into_iter().chain(second).collect();
    wait_delivered(&s.timeline, &all, 60).await?;
    worker.stop().await?;
    assert_consumed(&s.timeline, &all);
    Ok(())
}

/// One worker whose lease table calls (`target`) fail for 1.5 s, less than the failover
/// time: it keeps its leases or retakes them, resumes from its checkpoints, loses
/// nothing.
async fn dynamodb_fault(name: &str, target: &str, fault: Fault) -> TestResult {
    let s = scenario(name, 2).await?;
    let proxy = FaultProxy::start(&upstream("dynamodb").await?, 5).await?;
    let first = keyed_records("before", 60, 6);
    put_records(&s.kinesis, &s.stream, &first).await?;
    let builder = fast_builder(&s.config, &s.stream, &s.app, "w")
        .dynamodb_client(dynamodb_at(&s.config, proxy.endpoint()));
    let worker = start(builder, "w", &s.timeline, 1).await?;
    wait_delivered(&s.timeline, &first, 30).await?;

    let rule = proxy.add(
        FaultRule::new(fault)
            .target(target)
            .for_duration(Duration::from_millis(1_500)),
    );
    let second = keyed_records("during", 60, 6);
    put_records(&s.kinesis, &s.stream, &second).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let third = keyed_records("after", 60, 6);
    put_records(&s.kinesis, &s.stream, &third).await?;
    let all: Vec<(String, Bytes)> = first.into_iter().chain(second).chain(third).collect();
    wait_delivered(&s.timeline, &all, 60).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await?;
    assert!(proxy.injected(rule) >= 1, "the fault was injected");
    assert_consumed(&s.timeline, &all);
    // Every lease has a checkpoint. (A lease the worker dropped because its renewals
    // kept failing may still name it as owner after the shutdown: it no longer holds it,
    // so it cannot release it; others take it after the failover time.)
    for lease in leases(&s.config, &s.app).await? {
        assert!(lease.checkpoint.sequence_number().is_some(), "{lease:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_lease_writes_lose_nothing() -> TestResult {
    dynamodb_fault("fault-lease-throttle", "UpdateItem", Fault::Throttle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_table_throttling_exceptions_lose_nothing() -> TestResult {
    dynamodb_fault(
        "fault-lease-throttling",
        "UpdateItem",
        Fault::ThrottlingException,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_lease_writes_lose_nothing() -> TestResult {
    dynamodb_fault("fault-lease-500", "UpdateItem", Fault::Status(500)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_of_applied_lease_writes_lose_nothing() -> TestResult {
    // A renewal or checkpoint applied whose answer is lost: the SDK's retry then fails
    // its condition, the worker takes its lease for lost and retakes it after the
    // failover time, from the checkpoint in the table.
    dynamodb_fault("fault-lease-drop", "UpdateItem", Fault::DropResponse).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_lease_scans_lose_nothing() -> TestResult {
    dynamodb_fault("fault-lease-scan", "Scan", Fault::Status(503)).await
}

/// Two workers on one shard (so nothing is stolen: only expiry moves the lease). The
/// owner's lease table calls are held for 8 s (longer than the 2 s failover time) and
/// reach DynamoDB late, while its Kinesis reads go on: the other worker takes the expired
/// lease. From then on the stalled owner must not deliver that shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_table_stalls_stops_delivering_before_another_takes_over() -> TestResult
{
    let s = scenario("fault-lease-stall", 1).await?;
    let proxy = FaultProxy::start(&upstream("dynamodb").await?, 5).await?;
    let records = keyed_records("stall", 40, 4);
    put_records(&s.kinesis, &s.stream, &records).await?;
    let stalled = fast_builder(&s.config, &s.stream, &s.app, "stalled")
        .dynamodb_client(dynamodb_at(&s.config, proxy.endpoint()));
    // An application that checkpoints every 5th batch (as many do): its processing does
    // not wait on the stalled table.
    let stalled = start(stalled, "stalled", &s.timeline, 5).await?;
    wait_delivered(&s.timeline, &records, 30).await?;
    let healthy = start(
        fast_builder(&s.config, &s.stream, &s.app, "healthy"),
        "healthy",
        &s.timeline,
        1,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.add(
        FaultRule::new(Fault::Delay(Duration::from_secs(8)))
            .target("UpdateItem")
            .for_duration(Duration::from_secs(8)),
    );
    // Records keep coming for 10 s.
    let mut all = records;
    for round in 0..10 {
        let more = keyed_records(&format!("during-{round}"), 10, 4);
        put_records(&s.kinesis, &s.stream, &more).await?;
        all.extend(more);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    wait_delivered(&s.timeline, &all, 60).await?;
    let took_over = s
        .timeline
        .entries()
        .iter()
        .any(|e| matches!(e, Entry::Initialized { worker, .. } if worker == "healthy"));
    assert!(took_over, "the healthy worker took the expired lease");
    healthy.stop().await?;
    stalled.stop().await?;
    assert_consumed(&s.timeline, &all);
    assert_one_owner_at_a_time(&s.timeline);
    Ok(())
}

/// dynalite persisting to a folder, killed mid-run and started again on the same port
/// and folder: the worker stalls while the table is gone, then resumes from the
/// checkpoints that survived the restart, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamodb_restart_keeps_checkpoints_and_loses_nothing() -> TestResult {
    let s = scenario("fault-dynamodb-restart", 2).await?;
    let dir = std::env::temp_dir().join(unique_name("dynalite-data"));
    let mut dynamodb = EmulatorProcess::start_dynamodb_persistent(&dir, None).await?;
    let port = dynamodb.port();
    let table_client = dynamodb_at(&s.config, dynamodb.endpoint());
    let first = keyed_records("before", 60, 6);
    put_records(&s.kinesis, &s.stream, &first).await?;
    let builder = fast_builder(&s.config, &s.stream, &s.app, "w").dynamodb_client(table_client);
    let worker = start(builder, "w", &s.timeline, 1).await?;
    wait_delivered(&s.timeline, &first, 30).await?;
    let before = {
        let store = kinesis_consumer::leases::DynamoDbLeaseStore::new(
            dynamodb_at(&s.config, dynamodb.endpoint()),
            &s.app,
        );
        kinesis_consumer::leases::LeaseStore::list_leases(&store).await?
    };

    dynamodb.kill();
    let second = keyed_records("during", 60, 6);
    put_records(&s.kinesis, &s.stream, &second).await?;
    // Down for longer than the failover time: the worker drops its leases meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dynamodb = EmulatorProcess::start_dynamodb_persistent(&dir, Some(port)).await?;
    let store = kinesis_consumer::leases::DynamoDbLeaseStore::new(
        dynamodb_at(&s.config, dynamodb.endpoint()),
        &s.app,
    );
    let after = kinesis_consumer::leases::LeaseStore::list_leases(&store).await?;
    assert_eq!(after.len(), before.len(), "the leases survived the restart");
    for lease in &after {
        assert!(lease.checkpoint.sequence_number().is_some(), "{lease:?}");
    }
    let all: Vec<(String, Bytes)> = first.into_iter().chain(second).collect();
    wait_delivered(&s.timeline, &all, 60).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await?;
    assert_consumed(&s.timeline, &all);
    drop(dynamodb);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
