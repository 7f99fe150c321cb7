//! The consumer under slow, lost and failed calls, against the emulators: lease table calls
//! that hang or lose their answers, processors that panic or block, a merge with a missing
//! parent lease, a lease for a shard that left the stream, a malformed lease item, and a
//! stalled fan-out subscription.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use integration_tests::faults::{FaultyHttpClient, HttpFault, HttpFaultRule};
use integration_tests::kcl::{
    assert_per_key_order, fast_builder, keyed_records, leases, put_records, start_worker,
    Behaviour, Event, Log, FAILOVER,
};
use integration_tests::{
    create_stream, list_shards, sdk_config, unique_name, wait_for, wait_stream_active, TestResult,
};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::test_util::{Fault, FaultRule, FaultyLeaseStore, Operation};
use kinesis_consumer::{
    ExtendedSequenceNumber, FanOutConfig, InitialPosition, Lease, RetrievalMode,
};

fn dynamodb_store(config: &aws_config::SdkConfig, app: &str) -> Arc<dyn LeaseStore> {
    Arc::new(DynamoDbLeaseStore::new(
        aws_sdk_dynamodb::Client::new(config),
        app,
    ))
}

/// Puts a few records every 100 ms until stopped; returns how many it put.
fn keep_producing(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<TestResult<usize>> {
    let kinesis = kinesis.clone();
    let stream = stream.to_owned();
    tokio::spawn(async move {
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            let batch: Vec<(String, Bytes)> = (0..4)
                .map(|i| {
                    let key = format!("key-{}", (sent + i) % 8);
                    (key.clone(), Bytes::from(format!("{key}:{:06}", sent + i)))
                })
                .collect();
            put_records(&kinesis, &stream, &batch).await?;
            sent += batch.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(sent)
    })
}

/// Item 4 (two owners): worker `a`'s lease table calls all hang (what a paused process or a
/// dead network path amounts to). `a` must stop delivering before `b` can take its shard:
/// `a`'s last delivery comes before `b`'s first one, by the clock of this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_calls_hang_stops_before_another_takes_over() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-hang");
    let app = unique_name("kcl-hang-app");
    create_stream(&kinesis, &stream, 1).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = keep_producing(&kinesis, &stream, stop.clone());

    let log = Log::default();
    // No checkpoint per batch: the processor is not slowed by the hung table, like one
    // that checkpoints every few minutes.
    let behaviour = Behaviour {
        checkpoint_every_batch: false,
        ..Behaviour::default()
    };
    let faulty = Arc::new(FaultyLeaseStore::new(dynamodb_store(&config, &app)));
    let a = start_worker(
        fast_builder(&config, &stream, &app, "a").lease_store(faulty.clone()),
        "a",
        &log,
        behaviour,
    )
    .await?;
    wait_for("a delivers", Duration::from_secs(30), || async {
        Ok(log
            .delivered()
            .iter()
            .any(|d| d.worker == "a")
            .then_some(()))
    })
    .await?;
    let b = start_worker(
        fast_builder(&config, &stream, &app, "b"),
        "b",
        &log,
        behaviour,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    faulty.inject(FaultRule::all(Fault::Hang));
    let hung = Instant::now();
    wait_for("b delivers", Duration::from_secs(30), || async {
        Ok(log
            .delivered()
            .iter()
            .any(|d| d.worker == "b")
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await??;

    let delivered = log.delivered();
    let last_a = delivered
        .iter()
        .filter(|d| d.worker == "a")
        .map(|d| d.at)
        .max()
        .ok_or("a delivered nothing")?;
    let first_b = delivered
        .iter()
        .filter(|d| d.worker == "b")
        .map(|d| d.at)
        .min()
        .ok_or("b delivered nothing")?;
    println!(
        "a's last delivery {:?} after the hang, b's first {:?} after it (failover {FAILOVER:?})",
        last_a.saturating_duration_since(hung),
        first_b.saturating_duration_since(hung)
    );
    assert!(
        last_a < first_b,
        "a delivered until {:?} after the hang, b from {:?}: two owners at once",
        last_a.saturating_duration_since(hung),
        first_b.saturating_duration_since(hung)
    );
    b.stop().await?;
    a.task.abort();
    Ok(())
}

/// Item 5: renewals and checkpoints that the table applied but whose answers were lost
/// (then retried, as the SDK does) keep the lease: no lease loss, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_to_renewals_and_checkpoints_keep_the_lease() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-lost-answer");
    let app = unique_name("kcl-lost-answer-app");
    create_stream(&kinesis, &stream, 2).await?;
    let faulty = Arc::new(FaultyLeaseStore::new(dynamodb_store(&config, &app)));
    faulty.inject(
        FaultRule::new(
            [Operation::RenewLease, Operation::UpdateCheckpoint],
            Fault::LoseAnswerThenRetry,
        )
        .probability(0.3),
    );
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w").lease_store(faulty.clone()),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let mut sent = 0;
    for round in 0..6 {
        let records = keyed_records(&format!("round{round}"), 40, 8);
        put_records(&kinesis, &stream, &records).await?;
        sent += records.len();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    wait_for("every record", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= sent).then_some(()))
    })
    .await?;
    worker.stop().await?;
    assert!(
        faulty.injected() >= 5,
        "faults injected: {}",
        faulty.injected()
    );
    let lost: Vec<Event> = log
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::LeaseLost { .. }))
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(log.delivered().len(), sent, "no duplicate");
    Ok(())
}

/// Item 6: a processor that blocks its thread in `shutdown_requested` beyond the shutdown
/// timeout cannot be aborted; its lease must not be released while it may still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_released_only_after_its_processor_is_gone() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-blocked");
    let app = unique_name("kcl-blocked-app");
    create_stream(&kinesis, &stream, 1).await?;
    put_records(&kinesis, &stream, &keyed_records("blocked", 10, 2)).await?;
    let log = Log::default();
    let behaviour = Behaviour {
        block_in_shutdown: Some(Duration::from_secs(4)),
        ..Behaviour::default()
    };
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w").shutdown_timeout(Duration::from_secs(1)),
        "w",
        &log,
        behaviour,
    )
    .await?;
    wait_for("delivered", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() == 10).then_some(()))
    })
    .await?;
    worker.stop().await?;
    let unblocked = log.events().iter().find_map(|e| match e {
        Event::Unblocked { at, .. } => Some(*at),
        _ => None,
    });
    let table = leases(&config, &app).await?;
    let released = table[0].lease_owner.is_none();
    println!("after run returned: released {released}, processor returned {unblocked:?}");
    assert!(
        !released || unblocked.is_some(),
        "the lease was released while its processor was still running"
    );
    Ok(())
}

/// Item 6: an async processor hang in `shutdown_requested` is aborted after the shutdown
/// timeout; the task is then gone and the lease is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_processor_is_aborted_at_the_shutdown_timeout() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-hung-proc");
    let app = unique_name("kcl-hung-proc-app");
    create_stream(&kinesis, &stream, 1).await?;
    put_records(&kinesis, &stream, &keyed_records("hung", 10, 2)).await?;
    let log = Log::default();
    let behaviour = Behaviour {
        hang_in_shutdown: true,
        ..Behaviour::default()
    };
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w").shutdown_timeout(Duration::from_secs(1)),
        "w",
        &log,
        behaviour,
    )
    .await?;
    wait_for("delivered", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() == 10).then_some(()))
    })
    .await?;
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), worker.stop()).await??;
    assert!(stopping.elapsed() < Duration::from_secs(5));
    let table = leases(&config, &app).await?;
    assert_eq!(
        table[0].lease_owner, None,
        "released once the task was gone"
    );
    Ok(())
}

/// Item 8 (and 6: a panic is a failed task): a processor that panics on every batch is
/// restarted with exponential backoff, not every few hundred milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_always_panics_is_retried_with_backoff() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-panic");
    let app = unique_name("kcl-panic-app");
    create_stream(&kinesis, &stream, 1).await?;
    put_records(&kinesis, &stream, &keyed_records("panic", 10, 2)).await?;
    let log = Log::default();
    let behaviour = Behaviour {
        panic_on_batch: true,
        ..Behaviour::default()
    };
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        behaviour,
    )
    .await?;
    wait_for("first delivery", Duration::from_secs(30), || async {
        Ok((!log.delivered().is_empty()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    worker.stop().await?;
    let starts = log
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Initialized { .. }))
        .count();
    println!("processor started {starts} times in ~10 s");
    // Backoff 1 s, 2 s, 4 s, 8 s: four or five starts; a fixed 500 ms retry makes ~20.
    assert!((3..=6).contains(&starts), "{starts} starts");
    Ok(())
}

/// Item 1: split S into P1 and P2, merge them into C. S is finished, P1 and C have leases,
/// P2's lease was never created (a failed create at P1's shard end). Shard sync repairs it
/// and C waits for it: nothing is lost and per-key order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_with_a_missing_parent_lease_loses_nothing() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-missing-parent");
    let app = unique_name("kcl-missing-parent-app");
    create_stream(&kinesis, &stream, 1).await?;
    let s = list_shards(&kinesis, &stream).await?[0]
        .shard_id()
        .to_owned();
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&s)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await?;
    wait_stream_active(&kinesis, &stream).await?;
    let children = list_shards(&kinesis, &stream).await?;
    let parents: Vec<String> = children
        .iter()
        .filter(|c| c.parent_shard_id() == Some(s.as_str()))
        .map(|c| c.shard_id().to_owned())
        .collect();
    assert_eq!(parents.len(), 2);
    let split = keyed_records("split", 200, 16);
    put_records(&kinesis, &stream, &split).await?;
    kinesis
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge(&parents[0])
        .adjacent_shard_to_merge(&parents[1])
        .send()
        .await?;
    wait_stream_active(&kinesis, &stream).await?;
    let merged = keyed_records("merged", 200, 16);
    put_records(&kinesis, &stream, &merged).await?;
    let shards = list_shards(&kinesis, &stream).await?;
    let c = shards
        .iter()
        .find(|x| x.adjacent_parent_shard_id().is_some())
        .ok_or("no merged shard")?;

    let store = dynamodb_store(&config, &app);
    store.create_table_if_missing().await?;
    let range = |id: &str| {
        shards
            .iter()
            .find(|x| x.shard_id() == id)
            .and_then(|x| x.hash_key_range())
            .map(|r| {
                (
                    r.starting_hash_key().to_owned(),
                    r.ending_hash_key().to_owned(),
                )
            })
    };
    let mut finished = Lease::new(&s, ExtendedSequenceNumber::shard_end());
    finished.child_shard_ids = parents.iter().cloned().collect();
    finished.hash_key_range = range(&s);
    let mut p1 = Lease::new(&parents[0], ExtendedSequenceNumber::trim_horizon());
    p1.parent_shard_ids = BTreeSet::from([s.clone()]);
    p1.hash_key_range = range(&parents[0]);
    let mut child = Lease::new(c.shard_id(), ExtendedSequenceNumber::trim_horizon());
    child.parent_shard_ids = parents.iter().cloned().collect();
    child.hash_key_range = range(c.shard_id());
    for lease in [&finished, &p1, &child] {
        assert!(store.create_lease_if_absent(lease).await?);
    }

    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let total = split.len() + merged.len();
    let done = wait_for("every record", Duration::from_secs(40), || async {
        Ok((log.distinct_payloads() >= total).then_some(()))
    })
    .await;
    worker.stop().await?;
    done?;
    assert_per_key_order(&log);
    Ok(())
}

/// Item 2: a lease for a shard id the stream does not have (a shard that aged out) is
/// treated as ended once ListShards confirms it is gone; the shard that names it as parent
/// then starts, and the gone shard's lease is cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_left_the_stream_ends_and_its_lease_is_cleaned_up() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-gone");
    let app = unique_name("kcl-gone-app");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("gone", 30, 3);
    put_records(&kinesis, &stream, &records).await?;
    let shard = list_shards(&kinesis, &stream).await?[0].clone();
    let gone = "shardId-000000000099";
    let store = dynamodb_store(&config, &app);
    store.create_table_if_missing().await?;
    store
        .create_lease_if_absent(&Lease::new(gone, ExtendedSequenceNumber::trim_horizon()))
        .await?;
    let mut lease = Lease::new(shard.shard_id(), ExtendedSequenceNumber::trim_horizon());
    lease.parent_shard_ids = BTreeSet::from([gone.to_owned()]);
    store.create_lease_if_absent(&lease).await?;

    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let delivered = wait_for("the child's records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await;
    let cleaned = wait_for(
        "the gone shard's lease deleted",
        Duration::from_secs(20),
        || async {
            let keys: Vec<String> = leases(&config, &app)
                .await?
                .into_iter()
                .map(|l| l.lease_key)
                .collect();
            Ok((keys == vec![shard.shard_id().to_owned()]).then_some(()))
        },
    )
    .await;
    worker.stop().await?;
    delivered?;
    cleaned?;
    assert!(log
        .events()
        .iter()
        .any(|e| matches!(e, Event::ShardEnded { shard, .. } if shard == gone)));
    Ok(())
}

/// Item 7: one malformed item in the lease table does not stop the fleet: it is skipped
/// (error log, `kinesis_consumer_lease_items_malformed`) and every other shard is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_lease_item_is_skipped() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-malformed");
    let app = unique_name("kcl-malformed-app");
    create_stream(&kinesis, &stream, 2).await?;
    let records = keyed_records("malformed", 40, 8);
    put_records(&kinesis, &stream, &records).await?;
    dynamodb_store(&config, &app)
        .create_table_if_missing()
        .await?;
    aws_sdk_dynamodb::Client::new(&config)
        .put_item()
        .table_name(&app)
        .item("leaseKey", AttributeValue::S("shardId-garbage".into()))
        .item("leaseCounter", AttributeValue::S("not a number".into()))
        .send()
        .await?;
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let done = wait_for("every record", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await;
    worker.stop().await?;
    done
}

/// Harness: `max_leases_per_worker` leaves the rest to other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_leases_per_worker_leaves_the_rest_to_others() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-max");
    let app = unique_name("kcl-max-app");
    create_stream(&kinesis, &stream, 3).await?;
    let records = keyed_records("max", 60, 12);
    put_records(&kinesis, &stream, &records).await?;
    let log = Log::default();
    let one = start_worker(
        fast_builder(&config, &stream, &app, "one").max_leases_per_worker(2),
        "one",
        &log,
        Behaviour::default(),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let shards: BTreeSet<String> = log.delivered().into_iter().map(|d| d.shard).collect();
    assert_eq!(shards.len(), 2, "{shards:?}");
    let two = start_worker(
        fast_builder(&config, &stream, &app, "two"),
        "two",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("every record", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await?;
    let by_worker: HashMap<String, BTreeSet<String>> =
        log.delivered()
            .into_iter()
            .fold(HashMap::new(), |mut map, d| {
                map.entry(d.worker).or_default().insert(d.shard);
                map
            });
    assert_eq!(by_worker["two"].len(), 1, "{by_worker:?}");
    one.stop().await?;
    two.stop().await?;
    Ok(())
}

/// Item 9: a fan-out subscription that goes silent on an open shard is replaced: records
/// written after the stall still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscription_is_replaced() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-stall");
    let app = unique_name("kcl-stall-app");
    create_stream(&kinesis, &stream, 1).await?;
    let before = keyed_records("before", 20, 4);
    put_records(&kinesis, &stream, &before).await?;
    let faults = FaultyHttpClient::new();
    faults.inject(
        HttpFaultRule::new(
            &["SubscribeToShard"],
            HttpFault::StallBodyAfter(Duration::from_secs(2)),
        )
        .times(1),
    );
    let log = Log::default();
    let builder = fast_builder(&config, &stream, &app, "w")
        .kinesis_client(faults.kinesis_client(&config))
        .retrieval_mode(RetrievalMode::FanOut({
            let mut fan_out = FanOutConfig::default();
            fan_out.stall_timeout = Some(Duration::from_secs(4));
            fan_out
        }));
    let worker = start_worker(builder, "w", &log, Behaviour::default()).await?;
    wait_for(
        "records before the stall",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() >= before.len()).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = keyed_records("after", 20, 4);
    put_records(&kinesis, &stream, &after).await?;
    let done = wait_for(
        "records after the stall",
        Duration::from_secs(25),
        || async { Ok((log.distinct_payloads() >= before.len() + after.len()).then_some(())) },
    )
    .await;
    worker.stop().await?;
    assert_eq!(faults.injected().get("SubscribeToShard"), Some(&1));
    done
}

/// Item 12: a lease still at LATEST (nothing checkpointed) restarts at LATEST after a
/// failover, as in the Java KCL: what was written while nobody read the shard is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_at_latest_restarts_at_latest_after_a_failover() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-latest-failover");
    let app = unique_name("kcl-latest-failover-app");
    create_stream(&kinesis, &stream, 1).await?;
    let log = Log::default();
    let no_checkpoint = Behaviour {
        checkpoint_every_batch: false,
        checkpoint_on_shutdown: false,
        ..Behaviour::default()
    };
    let a = start_worker(
        fast_builder(&config, &stream, &app, "a").initial_position(InitialPosition::Latest),
        "a",
        &log,
        no_checkpoint,
    )
    .await?;
    wait_for("a started", Duration::from_secs(30), || async {
        Ok((!log.events().is_empty()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = keyed_records("first", 10, 2);
    put_records(&kinesis, &stream, &first).await?;
    wait_for("a delivers", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= first.len()).then_some(()))
    })
    .await?;
    // Crash a: the lease is still at LATEST.
    a.task.abort();
    let _ = a.task.await;
    assert_eq!(
        leases(&config, &app).await?[0].checkpoint.position,
        kinesis_consumer::SequencePosition::Latest
    );
    let unread = keyed_records("unread", 10, 2);
    put_records(&kinesis, &stream, &unread).await?;
    let b = start_worker(
        fast_builder(&config, &stream, &app, "b").initial_position(InitialPosition::Latest),
        "b",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("b started", Duration::from_secs(30), || async {
        Ok(log
            .events()
            .iter()
            .any(|e| matches!(e, Event::Initialized { worker, .. } if worker == "b"))
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = keyed_records("after", 10, 2);
    put_records(&kinesis, &stream, &after).await?;
    wait_for("b delivers", Duration::from_secs(30), || async {
        Ok(log
            .delivered()
            .iter()
            .filter(|d| d.worker == "b")
            .count()
            .ge(&after.len())
            .then_some(()))
    })
    .await?;
    b.stop().await?;
    let by_b: BTreeSet<Bytes> = log
        .delivered()
        .into_iter()
        .filter(|d| d.worker == "b")
        .map(|d| d.data)
        .collect();
    let want: BTreeSet<Bytes> = after.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(
        by_b, want,
        "b restarted at LATEST: the unread records are skipped"
    );
    Ok(())
}

/// Item 12: `leases --reset-to` while a worker holds the lease: the worker's next write
/// sees a checkpoint it did not write and loses the lease; the shard is then read again
/// from the reset position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_reset_while_running_takes_the_lease_away() -> TestResult {
    use kinesis_consumer::leases::CheckpointUpdate;

    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-reset");
    let app = unique_name("kcl-reset-app");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("reset", 20, 2);
    put_records(&kinesis, &stream, &records).await?;
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let store = dynamodb_store(&config, &app);
    wait_for("checkpointed", Duration::from_secs(30), || async {
        let lease = store
            .get_lease(list_shards(&kinesis, &stream).await?[0].shard_id())
            .await?;
        Ok(lease
            .filter(|l| l.checkpoint.sequence_number().is_some())
            .map(|_| ()))
    })
    .await?;
    // What `leases reset --to trim-horizon --yes` does: a conditional write on the lease
    // as read, read again when the running worker changed it in between (a renewal or a
    // checkpoint of its own).
    let mut tries = 0;
    loop {
        let lease = leases(&config, &app).await?.remove(0);
        let reset = CheckpointUpdate::commit(ExtendedSequenceNumber::trim_horizon());
        match store.update_checkpoint(&lease, &reset).await {
            Ok(_) => break,
            Err(kinesis_consumer::leases::LeaseStoreError::ConditionFailed(_)) if tries < 20 => {
                tries += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
    wait_for("the lease lost", Duration::from_secs(10), || async {
        Ok(log
            .events()
            .iter()
            .any(|e| matches!(e, Event::LeaseLost { .. }))
            .then_some(()))
    })
    .await?;
    wait_for(
        "read again from the reset",
        Duration::from_secs(30),
        || async { Ok((log.delivered().len() >= 2 * records.len()).then_some(())) },
    )
    .await?;
    worker.stop().await?;
    Ok(())
}

/// A merged shard that had started (checkpointed a record) after its parents finished,
/// and whose parents' leases were then cleaned up, is resumed at once by the next holder
/// (after a crash): it does not wait for parents that will never get a lease again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_child_whose_parents_were_cleaned_up_resumes() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-cleaned-parents");
    let app = unique_name("kcl-cleaned-parents-app");
    create_stream(&kinesis, &stream, 2).await?;
    let shards = list_shards(&kinesis, &stream).await?;
    kinesis
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge(shards[0].shard_id())
        .adjacent_shard_to_merge(shards[1].shard_id())
        .send()
        .await?;
    wait_stream_active(&kinesis, &stream).await?;
    let records = keyed_records("merged", 40, 4);
    put_records(&kinesis, &stream, &records).await?;
    let merged = list_shards(&kinesis, &stream)
        .await?
        .into_iter()
        .find(|s| s.adjacent_parent_shard_id().is_some())
        .ok_or("no merged shard")?;
    let (read, _) = integration_tests::read_shard(&kinesis, &stream, merged.shard_id()).await?;
    // The child checkpointed its first record; its parents' leases are gone.
    let mut child = Lease::new(
        merged.shard_id(),
        ExtendedSequenceNumber::new(read[0].sequence_number(), 0),
    );
    child.parent_shard_ids = shards.iter().map(|s| s.shard_id().to_owned()).collect();
    let store = dynamodb_store(&config, &app);
    store.create_table_if_missing().await?;
    store.create_lease_if_absent(&child).await?;
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let done = wait_for("the rest of the child", Duration::from_secs(20), || async {
        Ok((log.distinct_payloads() >= records.len() - 1).then_some(()))
    })
    .await;
    worker.stop().await?;
    done
}
