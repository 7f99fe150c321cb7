//! Graceful lease handoff (the Java KCL 3 mechanism, `checkpointOwner`) against the
//! emulators: a lease that moves is finished, checkpointed and handed over by its holder,
//! and its next owner starts at once from that checkpoint, without waiting for the
//! failover time, and without delivering anything twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::kcl::{
    assert_per_key_order, fast_builder, keyed_records, leases, owners, put_records, start_worker,
    Behaviour, Event, Log,
};
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};

/// The Java KCL's default failover time: a handoff that waited for expiry, or for the
/// previous holder's deadline, would take 8 to 10 s.
const FAILOVER: Duration = Duration::from_secs(10);

/// Puts a few records every 50 ms until stopped, so that every shard always has fresh
/// records; returns how many it put.
fn keep_producing(
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<TestResult<usize>> {
    tokio::spawn(async move {
        let mut round = 0;
        let mut put = 0;
        while !stop.load(Ordering::SeqCst) {
            let records = keyed_records(&format!("r{round:05}"), 16, 16);
            put_records(&kinesis, &stream, &records).await?;
            put += records.len();
            round += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(put)
    })
}

fn duplicates(log: &Log) -> usize {
    let delivered = log.delivered();
    let distinct: HashSet<_> = delivered.iter().map(|d| d.data.clone()).collect();
    delivered.len() - distinct.len()
}

/// A worker stops (SIGTERM in `kinesis consume`; here its shutdown handle, which the
/// signal handler calls): it offers its leases to the survivor, which accepts them at its
/// next look; its processors checkpoint, and it hands each lease over, so the survivor
/// starts at once rather than at its next taker round; no record is delivered twice
/// (balancing moves, which are graceful handoffs, included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_hands_its_shards_over_without_duplicates() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-handoff");
    let app = unique_name("kcl-handoff-app");
    create_stream(&kinesis, &stream, 4).await?;
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producer = keep_producing(kinesis.clone(), stream.clone(), stop_producing.clone());

    let log = Log::default();
    let builder = |id: &str| fast_builder(&config, &stream, &app, id).failover_time(FAILOVER);
    let w1 = start_worker(builder("w1"), "w1", &log, Behaviour::default()).await?;
    wait_for("w1 holds all four", Duration::from_secs(30), || async {
        Ok((owners(&config, &app).await?.get("w1") == Some(&4)).then_some(()))
    })
    .await?;
    // w2 joins: balancing asks w1 for two leases (graceful handoffs).
    let w2 = start_worker(builder("w2"), "w2", &log, Behaviour::default()).await?;
    let joined = Instant::now();
    let moved: BTreeMap<String, Duration> = wait_for(
        "w2 delivers from two shards",
        Duration::from_secs(30),
        || async {
            let mut first: BTreeMap<String, Duration> = BTreeMap::new();
            for d in log.delivered().iter().filter(|d| d.worker == "w2") {
                first
                    .entry(d.shard.clone())
                    .or_insert(d.at.saturating_duration_since(joined));
            }
            Ok((first.len() == 2).then_some(first))
        },
    )
    .await?;
    println!("balancing: w2's first delivery per shard after it started: {moved:?}");
    let w1_shards: Vec<String> = leases(&config, &app)
        .await?
        .into_iter()
        .filter(|l| l.is_owned_by("w1"))
        .map(|l| l.lease_key)
        .collect();
    assert_eq!(w1_shards.len(), 2);

    let stopped = Instant::now();
    w1.stop_with_handle().await?;
    let stop_returned = stopped.elapsed();
    let handed: BTreeMap<String, Duration> = wait_for(
        "w2 delivers from w1's shards",
        Duration::from_secs(30),
        || async {
            let mut first: BTreeMap<String, Duration> = BTreeMap::new();
            for d in log.delivered() {
                if d.worker == "w2" && w1_shards.contains(&d.shard) && d.at >= stopped {
                    first.entry(d.shard.clone()).or_insert(d.at - stopped);
                }
            }
            Ok((first.len() == w1_shards.len()).then_some(first))
        },
    )
    .await?;
    println!(
        "shutdown: run returned after {stop_returned:?}; w2's first delivery from w1's shards \
         after the stop: {handed:?} (failover time {FAILOVER:?})"
    );
    let table = leases(&config, &app).await?;
    assert!(
        table.iter().all(|l| l.is_owned_by("w2")
            && l.checkpoint_owner.is_none()
            && l.handoff_accepted_by.is_none()),
        "{table:?}"
    );
    // w1 took these shards at the start and never handed them over before: a handoff
    // counter on them is the stop's hand-over (a release would have left none).
    for lease in table.iter().filter(|l| w1_shards.contains(&l.lease_key)) {
        assert!(
            lease.handoff_counter.is_some(),
            "released, not handed over: {lease:?}"
        );
    }

    stop_producing.store(true, Ordering::SeqCst);
    let put = producer.await??;
    wait_for(
        "every record delivered",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() >= put).then_some(())) },
    )
    .await?;
    assert_per_key_order(&log);
    assert_eq!(duplicates(&log), 0, "graceful moves deliver nothing twice");
    let events = log.events();
    assert!(
        !events.iter().any(|e| matches!(e, Event::LeaseLost { .. })),
        "no lease was lost: {events:?}"
    );
    w2.stop().await?;
    Ok(())
}

/// A processor that never finishes `shutdown_requested` is stopped after the graceful
/// handoff timeout, and the lease handed over; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_does_not_finish_is_stopped_at_the_handoff_timeout() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-handoff-hang");
    let app = unique_name("kcl-handoff-hang-app");
    create_stream(&kinesis, &stream, 2).await?;
    let records = keyed_records("hang", 200, 8);
    put_records(&kinesis, &stream, &records).await?;

    let log = Log::default();
    let timeout = Duration::from_secs(2);
    let builder = |id: &str| {
        fast_builder(&config, &stream, &app, id)
            .failover_time(FAILOVER)
            .graceful_lease_handoff_timeout(Some(timeout))
    };
    let hanging = Behaviour {
        hang_in_shutdown: true,
        checkpoint_every_batch: false,
        ..Behaviour::default()
    };
    let w1 = start_worker(builder("w1"), "w1", &log, hanging).await?;
    wait_for(
        "w1 delivers everything",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() >= records.len()).then_some(())) },
    )
    .await?;
    let w2 = start_worker(builder("w2"), "w2", &log, Behaviour::default()).await?;
    let joined = Instant::now();
    let shard = wait_for("w2 delivers", Duration::from_secs(30), || async {
        Ok(log
            .delivered()
            .iter()
            .find(|d| d.worker == "w2")
            .map(|d| d.shard.clone()))
    })
    .await?;
    let after = joined.elapsed();
    println!("a hung processor: w2 delivered from {shard} {after:?} after it started");
    assert!(
        after >= timeout,
        "handed over before the timeout: {after:?}"
    );
    assert!(log
        .events()
        .iter()
        .any(|e| matches!(e, Event::ShutdownRequested { worker, .. } if worker == "w1")));
    // w1 never checkpointed: w2 redelivers that shard from the start, nothing lost.
    let on_shard = log
        .delivered()
        .iter()
        .filter(|d| d.worker == "w1" && d.shard == shard)
        .map(|d| d.data.clone())
        .collect::<HashSet<_>>();
    wait_for("the shard redelivered", Duration::from_secs(30), || async {
        let now: HashSet<_> = log
            .delivered()
            .iter()
            .filter(|d| d.worker == "w2")
            .map(|d| d.data.clone())
            .collect();
        Ok(on_shard.is_subset(&now).then_some(()))
    })
    .await?;
    w2.stop().await?;
    w1.task.abort();
    Ok(())
}

/// A table shared with Java KCL 3 workers: a handoff their leader requests (it writes the
/// new owner into `leaseOwner` and ours into `checkpointOwner`) is honoured; our worker
/// finishes, checkpoints, and hands the lease to the Java worker as the Java KCL does
/// (`checkpointOwner` removed, counter bumped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_requested_by_a_java_kcl_3_leader_is_honoured() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-handoff-java");
    let app = unique_name("kcl-handoff-java-app");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("java", 50, 4);
    put_records(&kinesis, &stream, &records).await?;
    let log = Log::default();
    let w1 = start_worker(
        fast_builder(&config, &stream, &app, "w1").failover_time(FAILOVER),
        "w1",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("delivered", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await?;
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);
    let before = leases(&config, &app).await?.remove(0);
    store.request_handoff(&before, "java-worker").await?;
    let after = wait_for("handed over", Duration::from_secs(10), || async {
        let lease = leases(&config, &app).await?.remove(0);
        Ok((lease.checkpoint_owner.is_none()).then_some(lease))
    })
    .await?;
    assert_eq!(after.lease_owner.as_deref(), Some("java-worker"));
    assert!(after.lease_counter > before.lease_counter);
    let last = log.delivered().last().cloned().ok_or("nothing delivered")?;
    assert_eq!(
        after.checkpoint.sequence_number(),
        Some(last.sequence_number.as_str())
    );
    assert!(log
        .events()
        .iter()
        .any(|e| matches!(e, Event::ShutdownRequested { worker, .. } if worker == "w1")));
    w1.stop().await?;
    Ok(())
}
