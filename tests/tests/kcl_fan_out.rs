//! Enhanced fan-out retrieval against kinesis-mock: every record of a two-shard stream
//! (plain and KPL aggregates) through SubscribeToShard, checkpoints stored, a restart
//! resuming where the last worker stopped, one stream consumer for several workers, and a
//! split during consumption (parent before children, nothing lost).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard};
use bytes::Bytes;
use integration_tests::kcl::{
    assert_per_key_order, fast_builder, keyed_records, leases, put_records, start_worker,
    Behaviour, Event, Log,
};
use integration_tests::{
    create_stream, list_shards, sdk_config, unique_name, wait_for, wait_stream_active, TestResult,
};
use kinesis_consumer::{FanOutConfig, RetrievalMode, SequencePosition};
use kinesis_producer::aggregation::AggregateBuilder;
use kinesis_producer::HashKey;

/// The stream's consumers, as (name, status).
async fn stream_consumers(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
) -> TestResult<Vec<(String, String)>> {
    let arn = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await?
        .stream_description_summary()
        .ok_or("no summary")?
        .stream_arn()
        .to_owned();
    let out = kinesis
        .list_stream_consumers()
        .stream_arn(arn)
        .send()
        .await?;
    Ok(out
        .consumers()
        .iter()
        .map(|c| {
            (
                c.consumer_name().to_owned(),
                c.consumer_status().as_str().to_owned(),
            )
        })
        .collect())
}

/// One aggregate per shard, of `n` user records whose keys hash into that shard (AWS's
/// KCL, and ours, drop aggregated records outside the shard's range).
fn aggregates_per_shard(shards: &[Shard], n: usize) -> TestResult<Vec<PutRecordsRequestEntry>> {
    let mut entries = Vec::new();
    for (s, shard) in shards.iter().enumerate() {
        let range = shard.hash_key_range().ok_or("no hash range")?;
        let start: u128 = range.starting_hash_key().parse()?;
        let end: u128 = range.ending_hash_key().parse()?;
        let mut builder = AggregateBuilder::new();
        let mut pushed = 0;
        for i in 0.. {
            let key = format!("agg-{s}-key-{i}");
            let hash = HashKey::from_partition_key(&key).0;
            if hash < start || hash > end {
                continue;
            }
            builder.push(&key, None, Bytes::from(format!("agg-{s}:{pushed:06}")));
            pushed += 1;
            if pushed == n {
                break;
            }
        }
        let aggregate = builder.finish().ok_or("empty aggregate")?;
        entries.push(
            PutRecordsRequestEntry::builder()
                .partition_key(aggregate.partition_key)
                .set_explicit_hash_key(aggregate.explicit_hash_key)
                .data(Blob::new(aggregate.data.to_vec()))
                .build()?,
        );
    }
    Ok(entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_every_record_and_a_restart_resumes_at_the_checkpoints() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-efo");
    let app = unique_name("kcl-efo-app");
    create_stream(&kinesis, &stream, 2).await?;
    let shards = list_shards(&kinesis, &stream).await?;

    // Plain records and one 10-record aggregate per shard.
    let first = keyed_records("first", 200, 10);
    put_records(&kinesis, &stream, &first).await?;
    let aggregates = aggregates_per_shard(&shards, 10)?;
    let out = kinesis
        .put_records()
        .stream_name(&stream)
        .set_records(Some(aggregates))
        .send()
        .await?;
    assert_eq!(out.failed_record_count(), Some(0));
    let aggregate_sequences: Vec<String> = out
        .records()
        .iter()
        .map(|r| r.sequence_number().unwrap_or_default().to_owned())
        .collect();

    let log = Log::default();
    let w1 = start_worker(
        fast_builder(&config, &stream, &app, "w1").fan_out(),
        "w1",
        &log,
        Behaviour::default(),
    )
    .await?;
    assert_eq!(
        stream_consumers(&kinesis, &stream).await?,
        vec![(app.clone(), "ACTIVE".to_owned())],
        "the consumer is registered under the application name"
    );
    wait_for("the first 220 records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= 220).then_some(()))
    })
    .await?;

    let delivered = log.delivered();
    assert_eq!(delivered.len(), 220, "no record twice");
    assert_per_key_order(&log);
    for d in &delivered {
        assert!(d.millis_behind_latest.is_some(), "{d:?}");
        assert!(d.arrival.is_some(), "{d:?}");
    }
    for sequence in &aggregate_sequences {
        let subs: Vec<u64> = delivered
            .iter()
            .filter(|d| &d.sequence_number == sequence)
            .map(|d| {
                assert!(d.aggregated);
                d.sub_sequence_number
            })
            .collect();
        assert_eq!(subs, (0..10).collect::<Vec<u64>>());
    }

    // Every shard's checkpoint is its last delivered record.
    let mut last: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for d in &delivered {
        last.insert(
            d.shard.clone(),
            (d.sequence_number.clone(), d.sub_sequence_number),
        );
    }
    assert_eq!(last.len(), 2, "both shards delivered");
    wait_for("checkpoints stored", Duration::from_secs(10), || async {
        let stored: BTreeMap<String, (String, u64)> = leases(&config, &app)
            .await?
            .into_iter()
            .filter_map(|l| match &l.checkpoint.position {
                SequencePosition::Sequence(seq) => Some((
                    l.lease_key.clone(),
                    (seq.clone(), l.checkpoint.sub_sequence_number),
                )),
                _ => None,
            })
            .collect();
        Ok((stored == last).then_some(()))
    })
    .await?;
    w1.stop().await?;

    // A new scheduler of the same application resumes after the checkpoints.
    let second = keyed_records("second", 100, 10);
    put_records(&kinesis, &stream, &second).await?;
    let w2 = start_worker(
        fast_builder(&config, &stream, &app, "w2").fan_out(),
        "w2",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("the next 100 records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= 320).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w2.stop().await?;
    let by_w2: Vec<_> = log
        .delivered()
        .into_iter()
        .filter(|d| d.worker == "w2")
        .collect();
    assert_eq!(by_w2.len(), 100, "w2 got exactly the new records");
    assert!(by_w2.iter().all(|d| d.partition_key.starts_with("second-")));
    let resumed: Vec<_> = log
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Initialized {
                worker, checkpoint, ..
            } if worker == "w2" => Some(checkpoint),
            _ => None,
        })
        .collect();
    assert_eq!(resumed.len(), 2);
    assert!(resumed
        .iter()
        .all(|c| matches!(c.position, SequencePosition::Sequence(_))));
    assert_eq!(stream_consumers(&kinesis, &stream).await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_consumer_through_a_split() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-efo-split");
    let app = unique_name("kcl-efo-split-app");
    create_stream(&kinesis, &stream, 2).await?;

    // Both workers register the consumer at the same time. kinesis-mock never reports a
    // shard's end through SubscribeToShard (a closed shard keeps sending empty events):
    // the fetcher's shard end check (GetRecords after 1 s without records) finds it.
    let fan_out = || {
        RetrievalMode::FanOut({
            let mut fan_out = FanOutConfig::default();
            fan_out.shard_end_check = Some(Duration::from_secs(1));
            fan_out
        })
    };
    let log = Log::default();
    let (w1, w2) = tokio::join!(
        start_worker(
            fast_builder(&config, &stream, &app, "w1").retrieval_mode(fan_out()),
            "w1",
            &log,
            Behaviour::default(),
        ),
        start_worker(
            fast_builder(&config, &stream, &app, "w2").retrieval_mode(fan_out()),
            "w2",
            &log,
            Behaviour::default(),
        ),
    );
    let (w1, w2) = (w1?, w2?);
    assert_eq!(
        stream_consumers(&kinesis, &stream).await?,
        vec![(app.clone(), "ACTIVE".to_owned())]
    );

    let stop = Arc::new(AtomicBool::new(false));
    let landed = Arc::new(std::sync::Mutex::new(Vec::<(Bytes, String)>::new()));
    let producer = {
        let kinesis = kinesis.clone();
        let stream = stream.clone();
        let stop = stop.clone();
        let landed = landed.clone();
        tokio::spawn(async move {
            let mut next: HashMap<usize, usize> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<(String, Bytes)> = (0..40)
                    .map(|i| {
                        let k = i % 20;
                        let n = next.entry(k).or_default();
                        *n += 1;
                        (
                            format!("key-{k}"),
                            Bytes::from(format!("key-{k}:{:06}", *n - 1)),
                        )
                    })
                    .collect();
                let shards = put_records(&kinesis, &stream, &batch).await?;
                landed
                    .lock()
                    .map_err(|_| "poisoned")?
                    .extend(batch.into_iter().map(|(_, data)| data).zip(shards));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            TestResult::Ok(())
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let shards = list_shards(&kinesis, &stream).await?;
    let parent = shards[0].shard_id().to_owned();
    let range = shards[0].hash_key_range().ok_or("no hash range")?;
    let start: u128 = range.starting_hash_key().parse()?;
    let end: u128 = range.ending_hash_key().parse()?;
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&parent)
        .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
        .send()
        .await?;
    wait_stream_active(&kinesis, &stream).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await??;
    let landed = landed.lock().map_err(|_| "poisoned")?.clone();
    let children: Vec<String> = list_shards(&kinesis, &stream)
        .await?
        .iter()
        .filter(|s| s.parent_shard_id() == Some(parent.as_str()))
        .map(|s| s.shard_id().to_owned())
        .collect();
    assert_eq!(children.len(), 2);

    wait_for("every record", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= landed.len()).then_some(()))
    })
    .await?;
    assert_eq!(log.distinct_payloads(), landed.len());
    assert_per_key_order(&log);
    for child in &children {
        assert!(
            landed.iter().any(|(_, shard)| shard == child),
            "nothing was put on {child}"
        );
    }

    // The parent ended before either child started.
    let events = log.events();
    let ended = events
        .iter()
        .position(|e| matches!(e, Event::ShardEnded { shard, .. } if *shard == parent))
        .ok_or("the parent never ended")?;
    for child in &children {
        let started = events
            .iter()
            .position(|e| matches!(e, Event::Initialized { shard, .. } if shard == child))
            .ok_or_else(|| format!("{child} never started"))?;
        assert!(ended < started, "{child} started before its parent ended");
    }
    w1.stop().await?;
    w2.stop().await?;
    assert_eq!(stream_consumers(&kinesis, &stream).await?.len(), 1);
    Ok(())
}
