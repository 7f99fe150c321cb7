//! The consumer's metrics (issue 12 item 4) with a recording backend: a worker consumes a
//! 2-shard stream by polling, loses a lease an intruder takes, and a second application
//! reads the stream through enhanced fan-out. One test per binary: the recorder is global.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::kcl::{
    fast_builder, keyed_records, put_records, start_worker, Behaviour, Log,
};
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kcl_metric_set_with_a_recording_backend() -> TestResult {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

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
    let worker_labels = [("worker", "w1")];
    let renewed = [("worker", "w1"), ("outcome", "success")];
    let all = std::sync::Mutex::new(Series::new());
    wait_for(
        "every record and a renewal",
        Duration::from_secs(60),
        || async {
            let mut all = all.lock().unwrap_or_else(|e| e.into_inner());
            collect(&snapshotter, &mut all);
            Ok((log.distinct_payloads() == records.len()
                && counter(&all, "kinesis_consumer_lease_renewals", &renewed) > 0)
                .then_some(()))
        },
    )
    .await?;
    let mut all = all.into_inner().unwrap_or_else(|e| e.into_inner());
    collect(&snapshotter, &mut all);
    let stream_labels = [("stream", stream.as_str())];
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
        let labels = [("stream", stream.as_str()), ("shard", shard.as_str())];
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
        assert!(
            counter(
                &all,
                "kinesis_consumer_get_records",
                &[("shard", shard.as_str()), ("outcome", "success")]
            ) > 0
        );
    }
    assert_eq!(
        counter(&all, "kinesis_consumer_taken_leases", &worker_labels),
        2
    );
    assert!(
        counter(
            &all,
            "kinesis_consumer_checkpoints",
            &[("outcome", "success")]
        ) > 0
    );
    assert!(matches!(
        matching(&all, "kinesis_consumer_current_leases", &worker_labels).next(),
        Some((MetricKind::Gauge, _, DebugValue::Gauge(held))) if held.into_inner() == 2.0
    ));

    // An intruder takes one lease: the worker counts it lost at its next renewal.
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);
    let lease = store
        .list_leases()
        .await?
        .into_iter()
        .find(|l| l.is_owned_by("w1"))
        .ok_or("no lease of w1")?;
    store.take_lease(&lease, "intruder").await?;
    let all = std::sync::Mutex::new(all);
    wait_for("a lost lease", Duration::from_secs(20), || async {
        let mut all = all.lock().unwrap_or_else(|e| e.into_inner());
        collect(&snapshotter, &mut all);
        Ok((counter(&all, "kinesis_consumer_lost_leases", &worker_labels) == 1).then_some(()))
    })
    .await?;
    worker.stop().await?;

    // Enhanced fan-out: SubscribeToShard counted and timed.
    let fan_out_log = Log::default();
    let fan_out_app = unique_name("kcl-metrics-efo");
    let worker = start_worker(
        fast_builder(&config, &stream, &fan_out_app, "w2").fan_out(),
        "w2",
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
    let mut all = all.into_inner().unwrap_or_else(|e| e.into_inner());
    collect(&snapshotter, &mut all);
    assert!(
        counter(
            &all,
            "kinesis_consumer_subscribe_to_shard",
            &[("stream", stream.as_str()), ("outcome", "success")]
        ) >= 2
    );
    assert!(
        matching(
            &all,
            "kinesis_consumer_subscribe_to_shard_time_seconds",
            &stream_labels
        )
        .count()
            >= 2
    );

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
