//! The consumer's metrics (issue 12 item 4) with a recording backend: a worker consumes a
//! 2-shard stream by polling, loses a lease an intruder takes, and a second application
//! reads the stream through enhanced fan-out; a multi-stream worker and a worker of another
//! application, in one process, each have series of their own. The tests share the
//! process-wide recorder: each reads only the series of its own (uniquely named)
//! applications.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use integration_tests::kcl::{
    fast, fast_builder, keyed_records, logging, put_records, start_worker, Behaviour, Log,
};
use integration_tests::{create_stream, sdk_config, stream_arn, unique_name, wait_for, TestResult};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::multi_stream::{MultiStreamScheduler, StreamConfig};
use kinesis_consumer::InitialPosition;
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

/// Every series: (name, labels) -> (kind, unit, value).
type Series = BTreeMap<(String, Vec<(String, String)>), (MetricKind, Option<Unit>, DebugValue)>;

/// Takes a snapshot into `all`. A snapshot of the debugging recorder drains what it reads
/// (counters back to 0, histograms emptied, gauges to 0), so counters are summed, histogram
/// values added, and gauges keep their last value set.
fn collect(snapshotter: &Snapshotter, all: &mut Series) {
    for (key, unit, _description, value) in snapshotter.snapshot().into_vec() {
        let kind = key.kind();
        let labels = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let name = (key.key().name().to_owned(), labels);
        match (all.get_mut(&name), value) {
            (Some((_, _, DebugValue::Histogram(seen))), DebugValue::Histogram(new)) => {
                seen.extend(new)
            }
            (Some((_, _, DebugValue::Counter(seen))), DebugValue::Counter(new)) => *seen += new,
            // A gauge not set since the last snapshot reads 0: keep the value it had.
            (Some(_), DebugValue::Gauge(new)) if new.into_inner() == 0.0 => {}
            (_, value) => {
                all.insert(name, (kind, unit, value));
            }
        }
    }
}

/// The process-wide recorder (installed by the first test that asks) and every series it
/// recorded so far.
struct Recorded {
    snapshotter: Snapshotter,
    all: Mutex<Series>,
}

fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        Recorded {
            snapshotter,
            all: Mutex::default(),
        }
    })
}

impl Recorded {
    /// Every series recorded so far.
    fn series(&self) -> Series {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        collect(&self.snapshotter, &mut all);
        all.iter()
            .map(|(name, (kind, unit, value))| {
                let value = match value {
                    DebugValue::Counter(n) => DebugValue::Counter(*n),
                    DebugValue::Gauge(value) => DebugValue::Gauge(*value),
                    DebugValue::Histogram(values) => DebugValue::Histogram(values.clone()),
                };
                (name.clone(), (*kind, *unit, value))
            })
            .collect()
    }
}

/// Sum of a counter over the series whose labels include `with`.
fn counter(all: &Series, name: &str, with: &[(&str, &str)]) -> u64 {
    matching(all, name, with)
        .map(|(_, _, value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn matching<'a>(
    all: &'a Series,
    name: &'a str,
    with: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a (MetricKind, Option<Unit>, DebugValue)> + 'a {
    all.iter()
        .filter(move |((n, labels), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, value)| value)
}

fn unit_of(all: &Series, name: &str) -> Option<Unit> {
    matching(all, name, &[])
        .next()
        .and_then(|(_, unit, _)| *unit)
}

/// The value of the one gauge `name` whose labels include `with`.
fn gauge(all: &Series, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = matching(all, name, with)
        .map(|(_, _, value)| match value {
            DebugValue::Gauge(value) => value.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        })
        .collect();
    assert!(values.len() <= 1, "{name} {with:?}: {values:?}");
    values.first().copied()
}

/// The names of the per-shard metrics (with `stream` and `shard`).
const PER_SHARD: &[&str] = &[
    "kinesis_consumer_millis_behind_latest",
    "kinesis_consumer_records_processed",
    "kinesis_consumer_data_bytes_processed",
    "kinesis_consumer_process_records_time_seconds",
    "kinesis_consumer_checkpoints",
    "kinesis_consumer_get_records",
    "kinesis_consumer_get_records_time_seconds",
    "kinesis_consumer_subscribe_to_shard",
    "kinesis_consumer_subscribe_to_shard_time_seconds",
    "kinesis_consumer_leases_expired_locally",
    "kinesis_consumer_record_processor_failures",
    "kinesis_consumer_checkpoint_trim_horizon_fallbacks",
    "kinesis_consumer_aggregates_dropped",
    "kinesis_consumer_shards_gone_from_stream",
    "kinesis_consumer_subscription_stalls",
    "kinesis_consumer_batch_failures",
    "kinesis_consumer_records_dead_lettered",
    "kinesis_consumer_dead_letter_batches",
];

/// Every series of `application` carries the labels of its kind: `application` always,
/// `stream` and `shard` per shard, `worker` (and no `stream`) per worker; the lease table's
/// `kinesis_consumer_lease_items_malformed`, `application` only.
fn assert_label_sets(all: &Series, application: &str) {
    let mut seen = 0;
    for (name, labels) in all.keys() {
        if !labels
            .iter()
            .any(|(k, v)| k == "application" && v == application)
        {
            continue;
        }
        seen += 1;
        let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        if name == "kinesis_consumer_lease_items_malformed" {
            continue;
        }
        if PER_SHARD.contains(&name.as_str()) {
            for key in ["stream", "shard"] {
                assert!(keys.contains(&key), "{name} {labels:?}");
            }
        } else {
            assert!(keys.contains(&"worker"), "{name} {labels:?}");
            assert!(!keys.contains(&"stream"), "{name} {labels:?}");
        }
    }
    assert!(seen > 0, "no series of {application}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kcl_metric_set_with_a_recording_backend() -> TestResult {
    let recorded = recorded();
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-metrics");
    let app = unique_name("kcl-metrics-app");
    create_stream(&kinesis, &stream, 2).await?;
    let records = keyed_records("m", 200, 20);
    let bytes: u64 = records.iter().map(|(_, data)| data.len() as u64).sum();
    let shards = put_records(&kinesis, &stream, &records).await?;

    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w1"),
        "w1",
        &log,
        Behaviour::default(),
    )
    .await?;
    let worker_labels = [("application", app.as_str()), ("worker", "w1")];
    let renewed = [
        ("application", app.as_str()),
        ("worker", "w1"),
        ("outcome", "success"),
    ];
    let stream_labels = [("application", app.as_str()), ("stream", stream.as_str())];
    // The processed counters move once `process_records` has returned, a moment after the
    // processor logged the batch: wait for them too.
    wait_for(
        "every record counted and a renewal",
        Duration::from_secs(60),
        || async {
            let all = recorded.series();
            Ok((log.distinct_payloads() == records.len()
                && counter(&all, "kinesis_consumer_records_processed", &stream_labels)
                    >= records.len() as u64
                && counter(&all, "kinesis_consumer_lease_renewals", &renewed) > 0)
                .then_some(()))
        },
    )
    .await?;
    let all = recorded.series();
    assert_eq!(
        counter(&all, "kinesis_consumer_records_processed", &stream_labels),
        records.len() as u64
    );
    assert_eq!(
        counter(
            &all,
            "kinesis_consumer_data_bytes_processed",
            &stream_labels
        ),
        bytes
    );
    for shard in shards.iter().collect::<std::collections::BTreeSet<_>>() {
        let labels = [
            ("application", app.as_str()),
            ("stream", stream.as_str()),
            ("shard", shard.as_str()),
        ];
        assert!(counter(&all, "kinesis_consumer_records_processed", &labels) > 0);
        let behind: Vec<_> = matching(&all, "kinesis_consumer_millis_behind_latest", &labels)
            .map(|(_, _, v)| v)
            .collect();
        assert!(
            matches!(behind.as_slice(), [DebugValue::Gauge(_)]),
            "{shard}: {behind:?}"
        );
        let times = matching(
            &all,
            "kinesis_consumer_process_records_time_seconds",
            &labels,
        )
        .map(|(_, _, v)| match v {
            DebugValue::Histogram(values) => values.len(),
            other => panic!("{other:?}"),
        })
        .sum::<usize>();
        assert!(times > 0, "{shard}");
        let succeeded = [&labels[..], &[("outcome", "success")]].concat();
        assert!(counter(&all, "kinesis_consumer_get_records", &succeeded) > 0);
        assert!(counter(&all, "kinesis_consumer_checkpoints", &succeeded) > 0);
    }
    assert_eq!(
        counter(&all, "kinesis_consumer_taken_leases", &worker_labels),
        2
    );
    assert_eq!(
        gauge(&all, "kinesis_consumer_current_leases", &worker_labels),
        Some(2.0)
    );

    // An intruder takes one lease: the worker counts it lost at its next renewal.
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);
    let lease = store
        .list_leases()
        .await?
        .into_iter()
        .find(|l| l.is_owned_by("w1"))
        .ok_or("no lease of w1")?;
    store.take_lease(&lease, "intruder").await?;
    wait_for("a lost lease", Duration::from_secs(20), || async {
        let all = recorded.series();
        Ok((counter(&all, "kinesis_consumer_lost_leases", &worker_labels) == 1).then_some(()))
    })
    .await?;
    worker.stop().await?;

    // A second application reads the same stream through enhanced fan-out, with the same
    // worker id: SubscribeToShard counted and timed, and every series its own.
    let fan_out_log = Log::default();
    let fan_out_app = unique_name("kcl-metrics-efo");
    let worker = start_worker(
        fast_builder(&config, &stream, &fan_out_app, "w1").fan_out(),
        "w1",
        &fan_out_log,
        Behaviour::default(),
    )
    .await?;
    wait_for(
        "every record through fan-out",
        Duration::from_secs(60),
        || async { Ok((fan_out_log.distinct_payloads() == records.len()).then_some(())) },
    )
    .await?;
    worker.stop().await?;
    let all = recorded.series();
    let fan_out_labels = [
        ("application", fan_out_app.as_str()),
        ("stream", stream.as_str()),
    ];
    assert!(
        counter(
            &all,
            "kinesis_consumer_subscribe_to_shard",
            &[&fan_out_labels[..], &[("outcome", "success")]].concat()
        ) >= 2
    );
    assert!(
        matching(
            &all,
            "kinesis_consumer_subscribe_to_shard_time_seconds",
            &fan_out_labels
        )
        .count()
            >= 2
    );
    assert_eq!(
        counter(&all, "kinesis_consumer_records_processed", &fan_out_labels),
        records.len() as u64,
        "its own series, not the sum of both applications'"
    );
    for application in [&app, &fan_out_app] {
        assert_eq!(
            counter(
                &all,
                "kinesis_consumer_taken_leases",
                &[("application", application), ("worker", "w1")]
            ),
            2,
            "{application}"
        );
        assert_label_sets(&all, application);
    }

    // Described with their units.
    for (name, unit) in [
        ("kinesis_consumer_millis_behind_latest", Unit::Milliseconds),
        ("kinesis_consumer_records_processed", Unit::Count),
        ("kinesis_consumer_data_bytes_processed", Unit::Bytes),
        (
            "kinesis_consumer_process_records_time_seconds",
            Unit::Seconds,
        ),
        ("kinesis_consumer_current_leases", Unit::Count),
        ("kinesis_consumer_taken_leases", Unit::Count),
        ("kinesis_consumer_lost_leases", Unit::Count),
        ("kinesis_consumer_lease_renewals", Unit::Count),
        ("kinesis_consumer_checkpoints", Unit::Count),
        ("kinesis_consumer_get_records", Unit::Count),
        ("kinesis_consumer_get_records_time_seconds", Unit::Seconds),
        ("kinesis_consumer_subscribe_to_shard", Unit::Count),
        (
            "kinesis_consumer_subscribe_to_shard_time_seconds",
            Unit::Seconds,
        ),
    ] {
        assert_eq!(unit_of(&all, name), Some(unit), "{name}");
    }
    Ok(())
}

/// A multi-stream worker reading two streams (one named by ARN) whose shard ids are the
/// same, and, in the same process, a worker of another application with the same worker
/// id reading one of them: every per-shard series names its application and stream, the
/// multi-stream worker's lease gauge counts the leases of both streams, and no series of
/// one is added to another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_applications_in_one_process_have_series_of_their_own() -> TestResult {
    let recorded = recorded();
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let (orders, clicks) = (
        unique_name("kcl-metrics-orders"),
        unique_name("kcl-metrics-clicks"),
    );
    let (multi_app, single_app) = (
        unique_name("kcl-metrics-multi"),
        unique_name("kcl-metrics-single"),
    );
    create_stream(&kinesis, &orders, 2).await?;
    create_stream(&kinesis, &clicks, 1).await?;
    let clicks_arn = stream_arn(&kinesis, &clicks).await?;
    let order_records = keyed_records("orders", 60, 6);
    let click_records = keyed_records("clicks", 30, 3);
    put_records(&kinesis, &orders, &order_records).await?;
    put_records(&kinesis, &clicks, &click_records).await?;

    let log = Log::default();
    let factory_log = log.clone();
    let multi = MultiStreamScheduler::builder(&config)
        .application_name(&multi_app)
        .worker_id("w1")
        .tracker(vec![
            StreamConfig::new(&orders, InitialPosition::TrimHorizon),
            StreamConfig::new(&clicks_arn, InitialPosition::TrimHorizon),
        ])
        .stream_poll_interval(Duration::from_millis(500))
        .configure_stream(move |stream, builder| {
            let label = format!("multi/{}", stream.stream_name());
            logging(fast(builder), &label, &factory_log, Behaviour::default())
        })
        .build()
        .await?;
    let stop_multi = multi.shutdown_handle();
    let multi = tokio::spawn(multi.run());
    let single = logging(
        fast_builder(&config, &orders, &single_app, "w1"),
        "single",
        &log,
        Behaviour::default(),
    )
    .build()
    .await?;
    let stop_single = single.shutdown_handle();
    let single = tokio::spawn(single.run());
    let delivered = |worker: &str| {
        log.delivered()
            .iter()
            .filter(|d| d.worker == worker)
            .map(|d| d.data.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let processed = |all: &Series, application: &str, stream: &str| {
        counter(
            all,
            "kinesis_consumer_records_processed",
            &[("application", application), ("stream", stream)],
        )
    };
    let multi_worker = [("application", multi_app.as_str()), ("worker", "w1")];
    wait_for(
        "every record, by both applications, and the multi-stream worker's 3 leases and 2 leads",
        Duration::from_secs(90),
        || async {
            let all = recorded.series();
            Ok(
                (delivered(&format!("multi/{orders}")) == order_records.len()
                    && delivered(&format!("multi/{clicks}")) == click_records.len()
                    && delivered("single") == order_records.len()
                    && processed(&all, &multi_app, &clicks) == click_records.len() as u64
                    // A batch is counted after its processor returns: after it logged.
                    && processed(&all, &single_app, &orders) == order_records.len() as u64
                    && gauge(&all, "kinesis_consumer_current_leases", &multi_worker) == Some(3.0)
                    && gauge(&all, "kinesis_consumer_leader", &multi_worker) == Some(2.0))
                .then_some(()),
            )
        },
    )
    .await?;
    let all = recorded.series();
    assert_eq!(
        processed(&all, &multi_app, &orders),
        order_records.len() as u64
    );
    assert_eq!(
        processed(&all, &multi_app, &clicks),
        click_records.len() as u64,
        "labelled with the name of the stream given by ARN"
    );
    assert_eq!(
        processed(&all, &single_app, &orders),
        order_records.len() as u64
    );
    // The same shard id in both streams: checkpoints and reads of each stream apart.
    let shard = "shardId-000000000000";
    for (application, stream) in [
        (&multi_app, &orders),
        (&multi_app, &clicks),
        (&single_app, &orders),
    ] {
        let labels = [
            ("application", application.as_str()),
            ("stream", stream.as_str()),
            ("shard", shard),
            ("outcome", "success"),
        ];
        for name in [
            "kinesis_consumer_checkpoints",
            "kinesis_consumer_get_records",
        ] {
            assert!(counter(&all, name, &labels) > 0, "{name} {labels:?}");
        }
    }
    assert!(
        counter(
            &all,
            "kinesis_consumer_taken_leases",
            &[("application", &single_app), ("worker", "w1")]
        ) >= 2
    );
    assert_eq!(
        gauge(
            &all,
            "kinesis_consumer_current_leases",
            &[("application", &single_app), ("worker", "w1")]
        ),
        Some(2.0),
        "the other application's worker of the same id: its own gauge"
    );
    for application in [&multi_app, &single_app] {
        assert_label_sets(&all, application);
    }

    stop_multi.shutdown();
    stop_single.shutdown();
    multi.await??;
    single.await??;
    Ok(())
}
