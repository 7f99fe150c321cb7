//! Several consumer workers in one process against the emulators: leases spread evenly,
//! a crashed worker's shards are taken over, an added worker gets its share without a
//! storm of lease moves.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use integration_tests::kcl::{
    assert_per_key_order, fast_builder, keyed_records, leases, owners, put_records, start_worker,
    Behaviour, Event, Log, FAILOVER,
};
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_consumer::test_util::compare_sequence_numbers;

async fn wait_all_delivered(log: &Log, expected: usize) -> TestResult {
    wait_for(
        "every record delivered",
        Duration::from_secs(60),
        || async { Ok((log.distinct_payloads() >= expected).then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_eight_shards_and_checkpoint_everything() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-spread");
    let app = unique_name("kcl-spread-app");
    create_stream(&kinesis, &stream, 8).await?;
    let records = keyed_records("spread", 2_000, 64);
    put_records(&kinesis, &stream, &records).await?;

    let log = Log::default();
    let mut workers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        let builder = fast_builder(&config, &stream, &app, id);
        workers.push(start_worker(builder, id, &log, Behaviour::default()).await?);
    }
    wait_all_delivered(&log, records.len()).await?;
    let spread = wait_for("leases spread 3/3/2", Duration::from_secs(30), || async {
        let counts = owners(&config, &app).await?;
        let mut values: Vec<usize> = counts.values().copied().collect();
        values.sort();
        Ok((values == vec![2, 3, 3]).then_some(counts))
    })
    .await?;
    println!("lease spread: {spread:?}");
    assert_per_key_order(&log);

    // Checkpoints stored: every lease at the last record its shard delivered.
    let mut last: HashMap<String, String> = HashMap::new();
    for d in log.delivered() {
        let entry = last
            .entry(d.shard.clone())
            .or_insert_with(|| d.sequence_number.clone());
        if compare_sequence_numbers(&d.sequence_number, entry).is_gt() {
            *entry = d.sequence_number.clone();
        }
    }
    wait_for(
        "checkpoints at the last records",
        Duration::from_secs(10),
        || async {
            let table = leases(&config, &app).await?;
            let done = table.len() == 8
                && table.iter().all(|l| {
                    l.checkpoint.sequence_number() == last.get(&l.lease_key).map(String::as_str)
                });
            Ok(done.then_some(()))
        },
    )
    .await?;
    for worker in workers {
        worker.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_shards_are_taken_over_without_loss() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-crash");
    let app = unique_name("kcl-crash-app");
    create_stream(&kinesis, &stream, 4).await?;
    let first = keyed_records("before", 400, 16);
    put_records(&kinesis, &stream, &first).await?;

    let log = Log::default();
    let w1 = start_worker(
        fast_builder(&config, &stream, &app, "w1"),
        "w1",
        &log,
        Behaviour::default(),
    )
    .await?;
    let w2 = start_worker(
        fast_builder(&config, &stream, &app, "w2"),
        "w2",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_all_delivered(&log, first.len()).await?;
    wait_for("leases 2/2", Duration::from_secs(30), || async {
        let counts = owners(&config, &app).await?;
        Ok((counts.values().copied().collect::<Vec<_>>() == vec![2, 2]).then_some(()))
    })
    .await?;

    // A lease stolen for balancing is processed only once its previous holder's deadline
    // has passed (at most the failover time): let the thief start, and redeliver what the
    // previous holder had not checkpointed, before the crash.
    tokio::time::sleep(FAILOVER + Duration::from_secs(1)).await;

    // Crash w1: no shutdown, no release.
    w1.task.abort();
    let _ = w1.task.await;
    let crashed = Instant::now();
    let at_crash: BTreeMap<String, Option<String>> = leases(&config, &app)
        .await?
        .into_iter()
        .filter(|l| l.is_owned_by("w1"))
        .map(|l| {
            (
                l.lease_key.clone(),
                l.checkpoint.sequence_number().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(at_crash.len(), 2);
    let delivered_before = log.delivered().len();
    let second = keyed_records("after", 400, 16);
    put_records(&kinesis, &stream, &second).await?;

    wait_for("w2 holds every lease", Duration::from_secs(30), || async {
        let counts = owners(&config, &app).await?;
        Ok((counts.get("w2") == Some(&4) && counts.len() == 1).then_some(()))
    })
    .await?;
    let takeover = crashed.elapsed();
    println!("takeover after a crash: {takeover:?} (failover time {FAILOVER:?})");
    wait_all_delivered(&log, first.len() + second.len()).await?;
    assert_per_key_order(&log);

    // After the crash, duplicates only since the last checkpoint of the crashed worker's
    // shards. (Before it, a lease stolen while balancing may redeliver what its previous
    // holder processed but had not checkpointed yet.)
    let delivered = log.delivered();
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    let mut duplicates = 0;
    for (i, d) in delivered.iter().enumerate() {
        if let Some(&first_index) = seen.get(d.data.as_ref()) {
            if i < delivered_before {
                continue;
            }
            duplicates += 1;
            assert_eq!(d.worker, "w2");
            let original = &delivered[first_index];
            assert_eq!(
                original.worker, "w1",
                "duplicate of a record w1 did not process: {d:?}"
            );
            let checkpoint = at_crash
                .get(&d.shard)
                .unwrap_or_else(|| panic!("duplicate on a shard w1 did not hold: {d:?}"));
            if let Some(checkpoint) = checkpoint {
                assert!(
                    compare_sequence_numbers(&d.sequence_number, checkpoint).is_gt(),
                    "redelivered {d:?} at or before the checkpoint {checkpoint}"
                );
            }
        } else {
            seen.insert(d.data.as_ref(), i);
        }
    }
    println!("duplicates after the crash: {duplicates}");
    w2.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_worker_takes_its_share_with_the_fewest_moves() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-add");
    let app = unique_name("kcl-add-app");
    create_stream(&kinesis, &stream, 6).await?;
    let records = keyed_records("add", 300, 12);
    put_records(&kinesis, &stream, &records).await?;

    let log = Log::default();
    let w1 = start_worker(
        fast_builder(&config, &stream, &app, "w1"),
        "w1",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("w1 holds all six", Duration::from_secs(30), || async {
        Ok((owners(&config, &app).await?.get("w1") == Some(&6)).then_some(()))
    })
    .await?;
    let w2 = start_worker(
        fast_builder(&config, &stream, &app, "w2"),
        "w2",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("3/3", Duration::from_secs(30), || async {
        let counts = owners(&config, &app).await?;
        Ok((counts.values().copied().collect::<Vec<_>>() == vec![3, 3]).then_some(()))
    })
    .await?;
    // Several more taker rounds: nothing else moves.
    tokio::time::sleep(3 * FAILOVER).await;
    let counts = owners(&config, &app).await?;
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![3, 3]);
    // Each move is a graceful handoff: w1's processor is asked to finish (and
    // checkpoints), no lease is lost.
    let events = log.events();
    let moves = events
        .iter()
        .filter(|e| matches!(e, Event::ShutdownRequested { worker, .. } if worker == "w1"))
        .count();
    assert_eq!(moves, 3, "6/0 -> 3/3 takes exactly three moves");
    assert!(
        !events.iter().any(|e| matches!(e, Event::LeaseLost { .. })),
        "{events:?}"
    );
    wait_all_delivered(&log, records.len()).await?;
    assert_per_key_order(&log);
    assert_eq!(
        log.delivered().len(),
        records.len(),
        "a graceful move delivers nothing twice"
    );
    w1.stop().await?;
    w2.stop().await?;
    Ok(())
}

/// Throughput-aware balancing on the emulators: one of four shards gets about 100 KiB/s,
/// the others nothing. A second worker joins a worker holding all four; balancing by count
/// alone would end 2/2, by throughput the hot shard's worker gives every other shard away
/// and ends with it alone (1/3); then nothing moves, nothing is lost or delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_shards_worker_gives_its_other_shards_away() -> TestResult {
    use kinesis_consumer::leases::ThroughputBalancing;
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-hot");
    let app = unique_name("kcl-hot-app");
    create_stream(&kinesis, &stream, 4).await?;
    let shards = kinesis.list_shards().stream_name(&stream).send().await?;
    let hot = shards.shards()[0].clone();
    let hot_key = hot
        .hash_key_range()
        .map(|r| r.starting_hash_key().to_owned())
        .ok_or("no hash key range")?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (kinesis, stream, stop) = (kinesis.clone(), stream.clone(), stop.clone());
        tokio::spawn(async move {
            let mut put = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let entries = (0..5)
                    .map(|i| {
                        aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                            .partition_key("hot")
                            .explicit_hash_key(&hot_key)
                            .data(aws_sdk_kinesis::primitives::Blob::new(
                                format!("{:06}{}", put + i, "x".repeat(2_040)).into_bytes(),
                            ))
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = kinesis
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(entries))
                    .send()
                    .await?;
                if out.failed_record_count().unwrap_or(0) != 0 {
                    return Err::<usize, Box<dyn std::error::Error + Send + Sync>>(
                        "put failures".into(),
                    );
                }
                put += 5;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(put)
        })
    };

    let mut balancing = ThroughputBalancing::default();
    balancing.min_gap_kbps = 20.0;
    let builder = |id: &str| {
        fast_builder(&config, &stream, &app, id).throughput_balancing(Some(balancing.clone()))
    };
    let log = Log::default();
    let w1 = start_worker(builder("w1"), "w1", &log, Behaviour::default()).await?;
    wait_for(
        "w1 holds all four, the hot one measured",
        Duration::from_secs(30),
        || async {
            let table = leases(&config, &app).await?;
            let measured = table.iter().any(|l| {
                l.lease_key == hot.shard_id() && l.throughput_kbps.is_some_and(|t| t > 40.0)
            });
            Ok((measured && table.iter().all(|l| l.is_owned_by("w1"))).then_some(()))
        },
    )
    .await?;
    let w2 = start_worker(builder("w2"), "w2", &log, Behaviour::default()).await?;
    let shape = || async {
        let table = leases(&config, &app).await?;
        let hot_owner = table
            .iter()
            .find(|l| l.lease_key == hot.shard_id())
            .and_then(|l| l.lease_owner.clone());
        let counts = owners(&config, &app).await?;
        let settled = table.iter().all(|l| l.checkpoint_owner.is_none());
        TestResult::Ok((hot_owner.filter(|_| settled), counts))
    };
    let (hot_owner, counts) = wait_for(
        "1/3, no handoff under way",
        Duration::from_secs(60),
        || async {
            let (hot_owner, counts) = shape().await?;
            let done = hot_owner
                .as_ref()
                .is_some_and(|owner| counts.get(owner) == Some(&1) && counts.len() == 2);
            Ok(done.then_some((hot_owner, counts)))
        },
    )
    .await?;
    println!("hot shard on {hot_owner:?}: {counts:?}");
    let moves_then = log
        .events()
        .iter()
        .filter(|e| matches!(e, Event::ShutdownRequested { .. }))
        .count();
    tokio::time::sleep(3 * FAILOVER).await;
    assert_eq!(shape().await?, (hot_owner, counts), "moves at rest");
    let moves_now = log
        .events()
        .iter()
        .filter(|e| matches!(e, Event::ShutdownRequested { .. }))
        .count();
    assert_eq!(moves_now, moves_then, "moves at rest");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let put = writer.await??;
    wait_all_delivered(&log, put).await?;
    assert_eq!(
        log.delivered().len(),
        put,
        "graceful moves deliver nothing twice"
    );
    let events = log.events();
    assert!(
        !events.iter().any(|e| matches!(e, Event::LeaseLost { .. })),
        "{events:?}"
    );
    w1.stop().await?;
    w2.stop().await?;
    Ok(())
}
