#![allow(clippy::unwrap_used)] // A panic is how a test reports failure.
//! The KPL metric set through the `metrics` facade, read back with `metrics-util`'s
//! debugging recorder after a run with retries and expiries. One test per binary: the
//! recorder is process-wide.

mod fake;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fake::{Fake, THROTTLED};
use kinesis_producer::{MetricsGranularity, Record};
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;

/// One metric series: its labels, unit and value.
#[derive(Debug)]
struct Series {
    labels: HashMap<String, String>,
    unit: Option<Unit>,
    value: DebugValue,
}

type Found<'a> = (&'a HashMap<String, String>, &'a DebugValue, Option<Unit>);

fn series<'a>(all: &'a [(String, Series)], name: &str, stream: &str) -> Vec<Found<'a>> {
    all.iter()
        .filter(|(n, s)| n == name && s.labels.get("stream").map(String::as_str) == Some(stream))
        .map(|(_, s)| (&s.labels, &s.value, s.unit))
        .collect()
}

fn counter(all: &[(String, Series)], name: &str, stream: &str) -> u64 {
    series(all, name, stream)
        .iter()
        .map(|(_, v, _)| match v {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn histogram(all: &[(String, Series)], name: &str, stream: &str) -> Vec<f64> {
    series(all, name, stream)
        .into_iter()
        .flat_map(|(_, v, _)| match v {
            DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn the_kpl_metric_set_after_retries_and_expiries() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let fake = Fake::new(2);
    fake.throttle_entries.store(2, Ordering::SeqCst);
    let producer = fake
        .builder()
        .stream("metered")
        .record_ttl(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let mut user_bytes = 0;
    let mut receipts = Vec::new();
    for i in 0..50 {
        let record = Record::new(format!("key-{i}"), format!("record {i}"));
        user_bytes += record.size();
        receipts.push(producer.send(record).await.unwrap());
    }
    for receipt in receipts {
        receipt.await.unwrap();
    }
    // Three more that are throttled until they expire.
    fake.always_throttle.store(true, Ordering::SeqCst);
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(
            producer
                .send(Record::new(format!("late-{i}"), "x"))
                .await
                .unwrap(),
        );
    }
    for receipt in receipts {
        assert!(receipt.await.is_err());
    }
    producer.shutdown().await;

    // Shard granularity on a second producer.
    fake.always_throttle.store(false, Ordering::SeqCst);
    let sharded = fake
        .builder()
        .stream("sharded")
        .metrics_granularity(MetricsGranularity::Shard)
        .build()
        .await
        .unwrap();
    for i in 0..20 {
        sharded
            .send(Record::new(format!("key-{i}"), "v"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    sharded.shutdown().await;

    let all: Vec<(String, Series)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, unit, _description, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let kind = key.kind();
            let name = key.key().name().to_owned();
            assert!(
                matches!(
                    kind,
                    MetricKind::Counter | MetricKind::Gauge | MetricKind::Histogram
                ),
                "{name}"
            );
            (
                name,
                Series {
                    labels,
                    unit,
                    value,
                },
            )
        })
        .collect();
    let stream = "metered";

    assert_eq!(
        counter(&all, "kinesis_producer_user_records_received", stream),
        53
    );
    assert_eq!(
        counter(&all, "kinesis_producer_user_records_put", stream),
        50
    );
    assert_eq!(
        counter(&all, "kinesis_producer_user_records_data_put_bytes", stream),
        user_bytes as u64
    );
    // The first Kinesis records stored are this producer's; the last 20 the other's
    // (sent one at a time, so one Kinesis record each).
    let stored: Vec<_> = fake.stored.lock().unwrap().clone();
    let put_kinesis = stored.len() - 20;
    assert_eq!(
        counter(&all, "kinesis_producer_kinesis_records_put", stream) as usize,
        put_kinesis
    );
    let metered_bytes: usize = stored[..put_kinesis]
        .iter()
        .map(|s| s.data.len() + s.partition_key.len())
        .sum();
    assert_eq!(
        counter(
            &all,
            "kinesis_producer_kinesis_records_data_put_bytes",
            stream
        ) as usize,
        metered_bytes
    );
    assert_eq!(
        counter(&all, "kinesis_producer_user_records_expired", stream),
        3
    );

    // Errors by code, and all of them.
    let errors = series(&all, "kinesis_producer_errors", stream);
    assert!(!errors.is_empty());
    assert!(errors
        .iter()
        .all(|(labels, _, _)| labels["code"] == THROTTLED));
    let by_code = counter(&all, "kinesis_producer_errors", stream);
    assert!(
        by_code >= 2 + 3,
        "{by_code}: two retried, three expired after attempts"
    );
    assert_eq!(
        counter(&all, "kinesis_producer_all_errors", stream),
        by_code
    );

    // Retries per record: every completed record, expired ones included.
    let retries = histogram(&all, "kinesis_producer_retries_per_record", stream);
    assert_eq!(retries.len(), 53);
    // Three expired after retries, and the retried ones that were put.
    assert!(retries.iter().filter(|r| **r >= 1.0).count() >= 4);
    // Buffering time: arrival to first attempt, once per user record.
    let buffering = histogram(&all, "kinesis_producer_buffering_time_seconds", stream);
    assert_eq!(buffering.len(), 53);
    assert!(
        buffering.iter().all(|b| (0.0..1.0).contains(b)),
        "{buffering:?}"
    );
    let calls = producer.stats().put_records_calls as usize;
    assert_eq!(
        histogram(&all, "kinesis_producer_request_time_seconds", stream).len(),
        calls
    );
    assert_eq!(
        histogram(&all, "kinesis_producer_kinesis_records_per_request", stream).len(),
        calls
    );
    let users_per_request = histogram(&all, "kinesis_producer_user_records_per_request", stream);
    assert_eq!(users_per_request.len(), calls);
    assert!(users_per_request.iter().sum::<f64>() >= 53.0);
    let per_kinesis = histogram(
        &all,
        "kinesis_producer_user_records_per_kinesis_record",
        stream,
    );
    assert_eq!(per_kinesis.iter().sum::<f64>(), 50.0);
    let pending = series(&all, "kinesis_producer_user_records_pending", stream);
    assert!(matches!(pending[0].1, DebugValue::Gauge(g) if g.into_inner() == 0.0));

    // Units, as described.
    let unit = |name: &str| series(&all, name, stream)[0].2;
    assert_eq!(unit("kinesis_producer_user_records_put"), Some(Unit::Count));
    assert_eq!(
        unit("kinesis_producer_user_records_data_put_bytes"),
        Some(Unit::Bytes)
    );
    assert_eq!(
        unit("kinesis_producer_kinesis_records_data_put_bytes"),
        Some(Unit::Bytes)
    );
    assert_eq!(
        unit("kinesis_producer_buffering_time_seconds"),
        Some(Unit::Seconds)
    );
    assert_eq!(
        unit("kinesis_producer_request_time_seconds"),
        Some(Unit::Seconds)
    );
    assert_eq!(
        unit("kinesis_producer_user_records_pending"),
        Some(Unit::Count)
    );

    // Per-shard labels with shard granularity; the stream totals are their sum.
    let per_shard = series(&all, "kinesis_producer_user_records_put", "sharded");
    let shards: Vec<_> = per_shard
        .iter()
        .map(|(l, _, _)| l.get("shard").cloned())
        .collect();
    assert!(shards.iter().all(Option::is_some), "{shards:?}");
    assert_eq!(shards.len(), 2, "both shards");
    assert_eq!(
        counter(&all, "kinesis_producer_user_records_put", "sharded"),
        20
    );
    assert!(series(&all, "kinesis_producer_user_records_put", stream)
        .iter()
        .all(|(l, _, _)| !l.contains_key("shard")));
}
