//! One worker consuming several streams with one lease table (the Java KCL's multi-stream
//! mode) against the emulators: lease keys `account:stream:creationEpoch:shardId`, streams
//! named by name or ARN, a stream added and one removed at run time.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use integration_tests::kcl::{
    assert_per_key_order, fast, keyed_records, logging, put_records, Behaviour, Log, FAILOVER,
};
use integration_tests::{create_stream, sdk_config, stream_arn, unique_name, wait_for, TestResult};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::multi_stream::{
    MultiStreamScheduler, StreamConfig, StreamIdentifier, StreamTracker,
};
use kinesis_consumer::InitialPosition;

/// A tracker a test changes while the worker runs.
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<Vec<StreamConfig>>>);

impl Streams {
    fn set(&self, streams: Vec<StreamConfig>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = streams;
    }
}

#[async_trait]
impl StreamTracker for Streams {
    async fn streams(&self) -> Vec<StreamConfig> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Payloads delivered by the processors of `stream`.
fn delivered_from(log: &Log, stream: &str) -> BTreeSet<bytes::Bytes> {
    let worker = format!("w1/{stream}");
    log.delivered()
        .into_iter()
        .filter(|d| d.worker == worker)
        .map(|d| d.data)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_consumes_streams_added_and_removed_at_run_time() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let app = unique_name("kcl-multi-app");
    let (orders, clicks, audit) = (
        unique_name("kcl-multi-orders"),
        unique_name("kcl-multi-clicks"),
        unique_name("kcl-multi-audit"),
    );
    create_stream(&kinesis, &orders, 2).await?;
    create_stream(&kinesis, &clicks, 1).await?;
    create_stream(&kinesis, &audit, 1).await?;
    let clicks_arn = stream_arn(&kinesis, &clicks).await?;
    let order_records = keyed_records("orders", 60, 6);
    let click_records = keyed_records("clicks", 30, 3);
    let audit_records = keyed_records("audit", 20, 2);
    put_records(&kinesis, &orders, &order_records).await?;
    put_records(&kinesis, &clicks, &click_records).await?;
    put_records(&kinesis, &audit, &audit_records).await?;

    let streams = Streams::default();
    streams.set(vec![
        StreamConfig::new(&orders, InitialPosition::TrimHorizon),
        StreamConfig::new(&clicks_arn, InitialPosition::TrimHorizon),
    ]);
    let log = Log::default();
    let factory_log = log.clone();
    let scheduler = MultiStreamScheduler::builder(&config)
        .application_name(&app)
        .worker_id("w1")
        .tracker(streams.clone())
        .stream_poll_interval(Duration::from_millis(500))
        .configure_stream(move |stream: &StreamIdentifier, builder| {
            let label = format!("w1/{}", stream.stream_name());
            logging(fast(builder), &label, &factory_log, Behaviour::default())
        })
        .build()
        .await?;
    let stop = scheduler.shutdown_handle();
    let task = tokio::spawn(scheduler.run());

    wait_for("orders and clicks", Duration::from_secs(60), || async {
        Ok((delivered_from(&log, &orders).len() == order_records.len()
            && delivered_from(&log, &clicks).len() == click_records.len())
        .then_some(()))
    })
    .await?;
    assert!(
        delivered_from(&log, &audit).is_empty(),
        "audit is not tracked yet"
    );

    // One table, Java KCL multi-stream lease keys and attributes.
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);
    let table = store.list_leases().await?;
    assert_eq!(table.len(), 3, "{table:?}");
    for lease in &table {
        let (stream, shard) = lease.multi_stream.clone().ok_or("no streamName/shardId")?;
        let identifier = StreamIdentifier::parse(&stream).ok_or("bad streamName")?;
        assert!([&orders, &clicks].contains(&&identifier.stream_name().to_owned()));
        assert_eq!(lease.lease_key, identifier.lease_key(&shard));
        assert!(lease.is_owned_by("w1"), "{lease:?}");
    }

    // audit added, clicks removed, at run time.
    streams.set(vec![
        StreamConfig::new(&orders, InitialPosition::TrimHorizon),
        StreamConfig::new(&audit, InitialPosition::TrimHorizon),
    ]);
    wait_for("audit", Duration::from_secs(60), || async {
        Ok((delivered_from(&log, &audit).len() == audit_records.len()).then_some(()))
    })
    .await?;
    wait_for("clicks released", Duration::from_secs(30), || async {
        let table = store.list_leases().await?;
        let released = table
            .iter()
            .filter(|l| l.lease_key.contains(&format!(":{clicks}:")))
            .all(|l| l.lease_owner.is_none());
        Ok(released.then_some(()))
    })
    .await?;
    let late_clicks = keyed_records("late-clicks", 10, 2);
    put_records(&kinesis, &clicks, &late_clicks).await?;
    let more_orders = keyed_records("more-orders", 20, 4);
    put_records(&kinesis, &orders, &more_orders).await?;
    wait_for("more orders", Duration::from_secs(30), || async {
        Ok(
            (delivered_from(&log, &orders).len() == order_records.len() + more_orders.len())
                .then_some(()),
        )
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        delivered_from(&log, &clicks).len(),
        click_records.len(),
        "clicks is no longer consumed"
    );

    stop.shutdown();
    task.await??;
    assert_per_key_order(&log);
    let total = order_records.len() + more_orders.len() + click_records.len() + audit_records.len();
    assert_eq!(log.delivered().len(), total, "nothing delivered twice");
    let table = store.list_leases().await?;
    assert_eq!(
        table.len(),
        4,
        "the removed stream's leases are kept: {table:?}"
    );
    assert!(table.iter().all(|l| l.lease_owner.is_none()), "{table:?}");
    Ok(())
}

/// Two multi-stream workers share two streams; when one stops tracking a stream, its
/// leases of that stream go to the worker still consuming it (offered and handed over at
/// once, not left to expire), and nothing is delivered twice.
///
/// The stream's leader must not give the lease back to the worker that left the stream
/// (its row lives on for its other stream): RELIABILITY.md finding 12, where the lease
/// went back and forth between the two every assignment round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_one_worker_stops_tracking_moves_to_the_other() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let app = unique_name("kcl-multi2-app");
    let (orders, clicks) = (
        unique_name("kcl-multi2-orders"),
        unique_name("kcl-multi2-clicks"),
    );
    create_stream(&kinesis, &orders, 2).await?;
    create_stream(&kinesis, &clicks, 2).await?;
    let order_records = keyed_records("orders", 40, 4);
    put_records(&kinesis, &orders, &order_records).await?;

    let log = Log::default();
    let both = vec![
        StreamConfig::new(&orders, InitialPosition::TrimHorizon),
        StreamConfig::new(&clicks, InitialPosition::TrimHorizon),
    ];
    let start = |worker: &'static str, streams: Streams| {
        let (config, app, log) = (config.clone(), app.clone(), log.clone());
        async move {
            let scheduler = MultiStreamScheduler::builder(&config)
                .application_name(&app)
                .worker_id(worker)
                .tracker(streams)
                .stream_poll_interval(Duration::from_millis(500))
                .configure_stream(move |_, builder| {
                    logging(fast(builder), worker, &log, Behaviour::default())
                })
                .build()
                .await?;
            let stop = scheduler.shutdown_handle();
            TestResult::Ok((stop, tokio::spawn(scheduler.run())))
        }
    };
    let (w1_streams, w2_streams) = (Streams::default(), Streams::default());
    w1_streams.set(both.clone());
    w2_streams.set(both);
    let (stop1, task1) = start("w1", w1_streams.clone()).await?;
    let (stop2, task2) = start("w2", w2_streams).await?;
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);
    let owners_of = |stream: String| {
        let store = store.clone();
        async move {
            let table = store.list_leases().await?;
            TestResult::Ok(
                table
                    .into_iter()
                    .filter(|l| l.lease_key.contains(&format!(":{stream}:")))
                    // During a handoff the lease is still on its way.
                    .map(|l| l.lease_owner.filter(|_| l.checkpoint_owner.is_none()))
                    .collect::<Vec<_>>(),
            )
        }
    };
    wait_for(
        "2 + 2 leases, one of each stream per worker",
        Duration::from_secs(60),
        || async {
            let mut orders_owners = owners_of(orders.clone()).await?;
            let mut clicks_owners = owners_of(clicks.clone()).await?;
            orders_owners.sort();
            clicks_owners.sort();
            let split = vec![Some("w1".to_owned()), Some("w2".to_owned())];
            Ok((orders_owners == split && clicks_owners == split).then_some(()))
        },
    )
    .await?;

    // w1 stops tracking clicks: its clicks lease goes to w2 at once.
    let w1_clicks = store
        .list_leases()
        .await?
        .into_iter()
        .find(|l| l.lease_key.contains(&format!(":{clicks}:")) && l.is_owned_by("w1"))
        .ok_or("w1 holds no clicks lease")?;
    w1_streams.set(vec![StreamConfig::new(
        &orders,
        InitialPosition::TrimHorizon,
    )]);
    let moved = std::time::Instant::now();
    wait_for(
        "w2 holds both clicks leases",
        Duration::from_secs(10),
        || async {
            let owners = owners_of(clicks.clone()).await?;
            Ok(owners
                .iter()
                .all(|o| o.as_deref() == Some("w2"))
                .then_some(()))
        },
    )
    .await?;
    println!(
        "clicks moved to w2 {:.2?} after w1 stopped tracking it",
        moved.elapsed()
    );
    // And stays there: several assignment rounds (a fifth of the failover time each).
    for _ in 0..20 {
        tokio::time::sleep(FAILOVER / 10).await;
        let owners = owners_of(clicks.clone()).await?;
        assert!(
            owners.iter().all(|o| o.as_deref() == Some("w2")),
            "a clicks lease left w2 again: {owners:?}"
        );
    }
    let after = store
        .get_lease(&w1_clicks.lease_key)
        .await?
        .ok_or("lease gone")?;
    assert!(
        after.handoff_counter.is_some() && after.handoff_counter != w1_clicks.handoff_counter,
        "handed over (a release or an expiry leaves no new handoff counter): {after:?}"
    );
    let click_records = keyed_records("clicks", 40, 4);
    put_records(&kinesis, &clicks, &click_records).await?;
    wait_for("every record", Duration::from_secs(60), || async {
        Ok((log.distinct_payloads() >= order_records.len() + click_records.len()).then_some(()))
    })
    .await?;
    let late: Vec<_> = log
        .delivered()
        .into_iter()
        .filter(|d| d.data.starts_with(b"clicks") && d.worker == "w1")
        .collect();
    assert!(late.is_empty(), "w1 no longer reads clicks: {late:?}");
    stop1.shutdown();
    stop2.shutdown();
    task1.await??;
    task2.await??;
    assert_per_key_order(&log);
    assert_eq!(
        log.delivered().len(),
        order_records.len() + click_records.len(),
        "nothing delivered twice"
    );
    Ok(())
}
