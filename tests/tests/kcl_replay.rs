//! Replay to a time (`leases::reset`, `kinesis leases reset --all --to at-timestamp=...`)
//! against the emulators: records written before the time are not delivered again, every
//! record written after it is, in per-key order; with workers stopped or running, and
//! across a split (the finished parent is read again from the time, before its children).
//!
//! kinesis-mock dates a record when it arrives: the tests write records, wait, take the
//! time, wait, and write more.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::primitives::Blob;
use bytes::Bytes;
use integration_tests::kcl::{
    assert_per_key_order, fast_builder, keyed_records, leases, put_records, start_worker,
    Behaviour, Event, Log,
};
use integration_tests::{
    create_stream, list_shards, sdk_config, unique_name, wait_for, wait_stream_active, TestResult,
};
use kinesis_consumer::leases::reset::{LeaseReset, ResetReason, ResetTarget};
use kinesis_consumer::leases::DynamoDbLeaseStore;

fn store(config: &aws_config::SdkConfig, app: &str) -> DynamoDbLeaseStore {
    DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(config), app)
}

/// Puts one KPL aggregate of `n` user records of one key; returns their payloads.
async fn put_aggregate(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    key: &str,
    n: usize,
) -> TestResult<Vec<(String, Bytes)>> {
    let mut builder = kinesis_aggregation::AggregateBuilder::new();
    let mut records = Vec::new();
    for i in 0..n {
        let data = Bytes::from(format!("{key}:agg:{i:03}"));
        builder.push(key, None, data.clone());
        records.push((key.to_owned(), data));
    }
    let aggregate = builder.finish().ok_or("empty aggregate")?;
    client
        .put_record()
        .stream_name(stream)
        .partition_key(aggregate.partition_key)
        .set_explicit_hash_key(aggregate.explicit_hash_key)
        .data(Blob::new(aggregate.data.to_vec()))
        .send()
        .await?;
    Ok(records)
}

/// Writes `before`, then takes the time, then writes `after`, a second apart each.
async fn before_and_after(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    prefix: &str,
) -> TestResult<(Vec<(String, Bytes)>, SystemTime, Vec<(String, Bytes)>)> {
    let mut before = keyed_records(&format!("{prefix}-before"), 60, 6);
    put_records(client, stream, &before).await?;
    // The last record before the time is an aggregate: resuming after it must skip all of
    // its user records, and nothing else.
    before.extend(put_aggregate(client, stream, &format!("{prefix}-agg"), 5).await?);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let at = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let after = keyed_records(&format!("{prefix}-after"), 60, 6);
    put_records(client, stream, &after).await?;
    Ok((before, at, after))
}

fn payloads(records: &[(String, Bytes)]) -> BTreeSet<Bytes> {
    records.iter().map(|(_, data)| data.clone()).collect()
}

/// How often each payload was delivered.
fn deliveries(log: &Log) -> BTreeMap<Bytes, usize> {
    let mut counts = BTreeMap::new();
    for delivered in log.delivered() {
        *counts.entry(delivered.data).or_insert(0) += 1;
    }
    counts
}

/// Waits until every lease is checkpointed at its shard's last record (or finished).
async fn wait_checkpointed(
    config: &aws_config::SdkConfig,
    app: &str,
    log: &Log,
    total: usize,
) -> TestResult {
    wait_for(
        "every record delivered and checkpointed",
        Duration::from_secs(60),
        || async {
            if log.distinct_payloads() < total {
                return Ok(None);
            }
            let delivered = log.delivered();
            let leases = leases(config, app).await?;
            let done = leases.iter().all(|lease| {
                // Each shard's records are delivered in order: its last delivery is the
                // checkpoint to wait for.
                lease.is_finished()
                    || delivered
                        .iter()
                        .rfind(|d| d.shard == lease.lease_key)
                        .is_none_or(|d| {
                            lease.checkpoint.sequence_number() == Some(d.sequence_number.as_str())
                                && lease.checkpoint.sub_sequence_number == d.sub_sequence_number
                        })
            });
            Ok(done.then_some(()))
        },
    )
    .await
}

/// Runs a new worker, `w2`, until it has checkpointed `after` (and 2 s more for anything
/// else to arrive), and checks it delivered exactly `after`; returns its log.
async fn replay_with_a_new_worker(
    config: &aws_config::SdkConfig,
    stream: &str,
    app: &str,
    after: &[(String, Bytes)],
) -> TestResult<Log> {
    let second = Log::default();
    let worker = start_worker(
        fast_builder(config, stream, app, "w2"),
        "w2",
        &second,
        Behaviour::default(),
    )
    .await?;
    wait_checkpointed(config, app, &second, after.len()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await?;
    let delivered: BTreeSet<Bytes> = deliveries(&second).into_keys().collect();
    assert_eq!(
        delivered,
        payloads(after),
        "exactly the records after the time"
    );
    Ok(second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_to_a_time_replays_every_record_after_it_and_none_before() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-replay");
    let app = unique_name("kcl-replay-app");
    create_stream(&kinesis, &stream, 2).await?;
    let (before, at, after) = before_and_after(&kinesis, &stream, "replay").await?;

    let first = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w1"),
        "w1",
        &first,
        Behaviour::default(),
    )
    .await?;
    wait_checkpointed(&config, &app, &first, before.len() + after.len()).await?;
    worker.stop().await?;

    // Without applying: a plan, and nothing changed.
    let store = store(&config, &app);
    let reset =
        LeaseReset::new(&store, ResetTarget::AtTimestamp(at)).stream(kinesis.clone(), &stream);
    let plan = reset.plan().await?;
    assert_eq!(plan.leases().len(), 2);
    for lease in plan.leases() {
        assert!(lease.new_checkpoint().is_some(), "{lease:?}");
        assert!(
            matches!(
                lease.reason(),
                ResetReason::BeforeTime | ResetReason::OldestAtTime
            ),
            "{lease:?}"
        );
    }
    let outcomes = plan.apply(&store).await;
    for outcome in &outcomes {
        assert!(matches!(outcome.result, Ok(Some(_))), "{outcome:?}");
    }
    // The aggregate's shard: its checkpoint is the aggregate's last user record.
    assert!(
        leases(&config, &app)
            .await?
            .iter()
            .any(|l| l.checkpoint.sub_sequence_number == 4),
        "no checkpoint at the aggregate's last user record"
    );

    let second = replay_with_a_new_worker(&config, &stream, &app, &after).await?;
    assert_per_key_order(&second);

    // A stream that does not exist: a typed error naming it, nothing written.
    let error = LeaseReset::new(&store, ResetTarget::AtTimestamp(at))
        .stream(kinesis.clone(), "no-such-stream")
        .plan()
        .await
        .err()
        .ok_or("planned against a missing stream")?;
    match &error {
        kinesis_consumer::leases::reset::ResetError::Stream { stream, error } => {
            assert_eq!(stream, "no-such-stream");
            assert_eq!(
                error.kind(),
                kinesis_consumer::ErrorKind::NotFound,
                "{error}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_while_a_worker_runs_takes_its_leases_and_replays() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-replay-live");
    let app = unique_name("kcl-replay-live-app");
    create_stream(&kinesis, &stream, 2).await?;
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let (before, at, after) = before_and_after(&kinesis, &stream, "live").await?;
    wait_checkpointed(&config, &app, &log, before.len() + after.len()).await?;

    let store = store(&config, &app);
    let delivered_before_reset = log.delivered().len();
    let outcomes = LeaseReset::new(&store, ResetTarget::AtTimestamp(at))
        .stream(kinesis.clone(), &stream)
        .run()
        .await?;
    assert_eq!(outcomes.len(), 2);
    for outcome in &outcomes {
        assert!(matches!(outcome.result, Ok(Some(_))), "{outcome:?}");
        assert_eq!(outcome.owner.as_deref(), Some("w"), "{outcome:?}");
    }
    wait_for(
        "every record after the time delivered again",
        Duration::from_secs(60),
        || async {
            let counts = deliveries(&log);
            Ok(after
                .iter()
                .all(|(_, data)| counts.get(data).copied().unwrap_or(0) >= 2)
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await?;
    let lost = log
        .events()
        .iter()
        .filter(|e| matches!(e, Event::LeaseLost { .. }))
        .count();
    assert!(lost >= 2, "the worker kept its leases through the reset");
    let counts = deliveries(&log);
    for (_, data) in &before {
        assert_eq!(counts.get(data), Some(&1), "{data:?} delivered again");
    }
    assert_per_key_order(&log);
    // The replay is in per-key order too: the deliveries after the reset.
    let replayed: Vec<_> = log
        .delivered()
        .into_iter()
        .skip(delivered_before_reset)
        .collect();
    let mut by_key: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
    for d in replayed {
        by_key.entry(d.partition_key).or_default().push(d.data);
    }
    for (key, payloads) in by_key {
        let mut sorted = payloads.clone();
        sorted.sort();
        assert_eq!(payloads, sorted, "replay out of order for {key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_parent_is_read_again_from_the_time_before_its_children() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-replay-split");
    let app = unique_name("kcl-replay-split-app");
    create_stream(&kinesis, &stream, 1).await?;
    let (before, at, mut after) = before_and_after(&kinesis, &stream, "split").await?;
    let parent = list_shards(&kinesis, &stream).await?[0]
        .shard_id()
        .to_owned();
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&parent)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await?;
    wait_stream_active(&kinesis, &stream).await?;
    let children = keyed_records("split-children", 60, 6);
    put_records(&kinesis, &stream, &children).await?;
    after.extend(children);

    let first = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w1"),
        "w1",
        &first,
        Behaviour::default(),
    )
    .await?;
    wait_checkpointed(&config, &app, &first, before.len() + after.len()).await?;
    wait_for(
        "three leases, the parent finished",
        Duration::from_secs(30),
        || async {
            let leases = leases(&config, &app).await?;
            Ok((leases.len() == 3
                && leases
                    .iter()
                    .any(|l| l.lease_key == parent && l.is_finished()))
            .then_some(()))
        },
    )
    .await?;
    worker.stop().await?;

    let store = store(&config, &app);
    let plan = LeaseReset::new(&store, ResetTarget::AtTimestamp(at))
        .stream(kinesis.clone(), &stream)
        .plan()
        .await?;
    let reasons: Vec<(&str, ResetReason)> = plan
        .leases()
        .iter()
        .map(|l| (l.shard_id(), l.reason()))
        .collect();
    assert_eq!(
        reasons[0],
        (parent.as_str(), ResetReason::BeforeTime),
        "{reasons:?}"
    );
    for (_, reason) in &reasons[1..] {
        assert_eq!(*reason, ResetReason::OldestAtTime, "{reasons:?}");
    }
    for outcome in plan.apply(&store).await {
        assert!(matches!(outcome.result, Ok(Some(_))), "{outcome:?}");
    }

    let second = replay_with_a_new_worker(&config, &stream, &app, &after).await?;
    // The parent's records after the time came before any child's.
    let order: Vec<String> = second.delivered().into_iter().map(|d| d.shard).collect();
    let last_parent = order.iter().rposition(|s| *s == parent);
    let first_child = order.iter().position(|s| *s != parent);
    assert!(
        last_parent < first_child,
        "a child started before its parent ended"
    );
    assert_per_key_order(&second);
    Ok(())
}
