//! Resharding while two workers consume: a split, then a merge of the split's children.
//! Parents finish before their children start, nothing is lost, per-key order holds, and
//! finished leases are cleaned up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::kcl::{
    assert_per_key_order, fast_builder, keyed_records, leases, put_records, split_then_merge,
    start_worker, Behaviour, Event, Log,
};
use integration_tests::{
    create_stream, list_shards, sdk_config, unique_name, wait_for, wait_stream_active, TestResult,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_during_consumption_keep_order_and_lose_nothing() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-reshard");
    let app = unique_name("kcl-reshard-app");
    create_stream(&kinesis, &stream, 2).await?;

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

    // A producer writing 20 keys, each key's payloads numbered in order.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let kinesis = kinesis.clone();
        let stream = stream.clone();
        let stop = stop.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut next: HashMap<usize, usize> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<(String, bytes::Bytes)> = (0..40)
                    .map(|i| {
                        let k = i % 20;
                        let n = next.entry(k).or_default();
                        *n += 1;
                        (
                            format!("key-{k}"),
                            bytes::Bytes::from(format!("key-{k}:{:06}", *n - 1)),
                        )
                    })
                    .collect();
                put_records(&kinesis, &stream, &batch).await?;
                sent.fetch_add(batch.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            integration_tests::TestResult::Ok(())
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    split_then_merge(&kinesis, &stream).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await??;
    let total = sent.load(Ordering::SeqCst);

    wait_for(
        "every record delivered",
        Duration::from_secs(60),
        || async { Ok((log.distinct_payloads() >= total).then_some(())) },
    )
    .await?;
    assert_eq!(log.distinct_payloads(), total);
    assert_per_key_order(&log);

    // Every child started only after each of its parents ended.
    let all_shards = list_shards(&kinesis, &stream).await?;
    let events = log.events();
    let first = |wanted: &dyn Fn(&Event) -> bool| events.iter().position(wanted);
    for shard in &all_shards {
        let parents: Vec<&str> = shard
            .parent_shard_id()
            .into_iter()
            .chain(shard.adjacent_parent_shard_id())
            .filter(|p| all_shards.iter().any(|s| s.shard_id() == *p))
            .collect();
        let Some(started) =
            first(&|e| matches!(e, Event::Initialized { shard: s, .. } if s == shard.shard_id()))
        else {
            continue;
        };
        for p in parents {
            let ended = first(&|e| matches!(e, Event::ShardEnded { shard: s, .. } if s == p))
                .unwrap_or_else(|| {
                    panic!(
                        "{} started but its parent {p} never ended",
                        shard.shard_id()
                    )
                });
            assert!(
                ended < started,
                "{} started before its parent {p} ended",
                shard.shard_id()
            );
        }
    }

    // Finished leases are deleted once their children started: only the untouched shard
    // and the merged shard remain.
    let open: Vec<String> = all_shards
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .map(|s| s.shard_id().to_owned())
        .collect();
    assert_eq!(open.len(), 2);
    wait_for(
        "finished leases cleaned up",
        Duration::from_secs(20),
        || async {
            let mut keys: Vec<String> = leases(&config, &app)
                .await?
                .into_iter()
                .map(|l| l.lease_key)
                .collect();
            keys.sort();
            Ok((keys == open).then_some(()))
        },
    )
    .await?;
    w1.stop().await?;
    w2.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_does_not_checkpoint_at_shard_end_keeps_the_children_waiting() -> TestResult
{
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-forgetful");
    let app = unique_name("kcl-forgetful-app");
    create_stream(&kinesis, &stream, 1).await?;
    put_records(&kinesis, &stream, &keyed_records("parent", 20, 4)).await?;
    let shards = list_shards(&kinesis, &stream).await?;
    let parent = shards[0].shard_id().to_owned();
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&parent)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await?;
    wait_stream_active(&kinesis, &stream).await?;
    put_records(&kinesis, &stream, &keyed_records("child", 20, 4)).await?;

    let log = Log::default();
    let forgetful = Behaviour {
        checkpoint_on_shard_end: false,
        ..Behaviour::default()
    };
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        forgetful,
    )
    .await?;
    // Shard end is delivered again and again; the children never start.
    wait_for(
        "shard end delivered three times",
        Duration::from_secs(30),
        || async {
            let ends = log
                .events()
                .iter()
                .filter(|e| matches!(e, Event::ShardEnded { shard, .. } if *shard == parent))
                .count();
            Ok((ends >= 3).then_some(()))
        },
    )
    .await?;
    worker.stop().await?;
    assert!(
        !log.events()
            .iter()
            .any(|e| matches!(e, Event::Initialized { shard, .. } if *shard != parent)),
        "a child started although its parent never checkpointed SHARD_END"
    );
    assert_eq!(log.distinct_payloads(), 20, "only the parent's records");
    let table = leases(&config, &app).await?;
    let parent_lease = table
        .iter()
        .find(|l| l.lease_key == parent)
        .ok_or("no parent lease")?;
    assert!(!parent_lease.checkpoint.is_shard_end());
    Ok(())
}
