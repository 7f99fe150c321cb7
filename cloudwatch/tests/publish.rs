//! The PutMetricData requests the publisher makes, captured from the SDK (no CloudWatch
//! emulator exists here): names, units, dimensions, granularity, level, batching within
//! the service's limits, and failures counted instead of raised.

#![allow(clippy::unwrap_used, missing_docs)] // A panic is how a test reports failure.

use std::sync::{Arc, Mutex};

use aws_sdk_cloudwatch::config::retry::RetryConfig;
use aws_sdk_cloudwatch::operation::put_metric_data::{PutMetricDataInput, PutMetricDataOutput};
use aws_sdk_cloudwatch::types::MetricDatum;
use aws_sdk_cloudwatch::Client;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use kinesis_cloudwatch::{
    CloudWatchConfig, CloudWatchPublisher, CloudWatchRecorder, Granularity, MetricsLevel,
    MAX_DATUMS_PER_REQUEST,
};

type Captured = Arc<Mutex<Vec<PutMetricDataInput>>>;

/// A recorder whose client answers every PutMetricData with success (`fail`: HTTP 500),
/// and the requests it got.
fn recording(
    config: CloudWatchConfig,
    fail: bool,
) -> (CloudWatchRecorder, CloudWatchPublisher, Captured) {
    let captured = Captured::default();
    let seen = captured.clone();
    let rule = mock!(Client::put_metric_data).match_requests(move |input| {
        seen.lock().unwrap().push(input.clone());
        true
    });
    let rule = if fail {
        rule.sequence().http_status(500, None).repeatedly().build()
    } else {
        rule.sequence()
            .output(|| PutMetricDataOutput::builder().build())
            .repeatedly()
            .build()
    };
    let client = mock_client!(aws_sdk_cloudwatch, RuleMode::MatchAny, [&rule], |c| c
        .retry_config(RetryConfig::disabled()));
    let (recorder, publisher) = CloudWatchRecorder::with_client(client, config);
    (recorder, publisher, captured)
}

/// The datum `name` with exactly these dimensions, if sent.
fn find<'a>(data: &'a [MetricDatum], name: &str, dims: &[(&str, &str)]) -> Option<&'a MetricDatum> {
    data.iter().find(|d| {
        let mut got: Vec<(&str, &str)> = d
            .dimensions()
            .iter()
            .map(|d| (d.name().unwrap(), d.value().unwrap()))
            .collect();
        got.sort();
        let mut want = dims.to_vec();
        want.sort();
        d.metric_name() == Some(name) && got == want
    })
}

fn sum(datum: Option<&MetricDatum>) -> f64 {
    datum.unwrap().statistic_values().unwrap().sum().unwrap()
}

fn all(captured: &Captured) -> Vec<MetricDatum> {
    captured
        .lock()
        .unwrap()
        .iter()
        .flat_map(|input| input.metric_data().to_vec())
        .collect()
}

#[tokio::test]
async fn kpl_names_units_and_dimensions_at_every_granularity() {
    let (recorder, publisher, captured) = recording(CloudWatchConfig::producer(), false);
    metrics::with_local_recorder(&recorder, || {
        let put = |shard: &str, n| {
            metrics::counter!("kinesis_producer_user_records_put", "stream" => "orders", "shard" => shard.to_owned())
                .increment(n)
        };
        put("shardId-0", 3);
        put("shardId-1", 2);
        metrics::histogram!("kinesis_producer_request_time_seconds", "stream" => "orders")
            .record(0.25);
        metrics::histogram!("kinesis_producer_request_time_seconds", "stream" => "orders")
            .record(0.75);
        metrics::counter!("kinesis_producer_errors", "stream" => "orders", "code" => "ProvisionedThroughputExceededException").increment(4);
        metrics::counter!("kinesis_consumer_lease_items_malformed", "application" => "app")
            .increment(1);
    });
    publisher.flush().await;
    let inputs = captured.lock().unwrap().clone();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].namespace(), Some("KinesisProducerLibrary"));
    let data = all(&captured);
    // Global, stream and shard granularity, as the KPL publishes them.
    assert_eq!(sum(find(&data, "UserRecordsPut", &[])), 5.0);
    assert_eq!(
        sum(find(&data, "UserRecordsPut", &[("StreamName", "orders")])),
        5.0
    );
    let shard0 = find(
        &data,
        "UserRecordsPut",
        &[("StreamName", "orders"), ("ShardId", "shardId-0")],
    );
    assert_eq!(sum(shard0), 3.0);
    assert_eq!(shard0.unwrap().unit().unwrap().as_str(), "Count");
    // Seconds become the KPL's milliseconds, as a statistic set.
    let time = find(&data, "RequestTime", &[("StreamName", "orders")]).unwrap();
    let stats = time.statistic_values().unwrap();
    assert_eq!(
        (
            stats.sample_count(),
            stats.sum(),
            stats.minimum(),
            stats.maximum()
        ),
        (Some(2.0), Some(1000.0), Some(250.0), Some(750.0))
    );
    assert_eq!(time.unit().unwrap().as_str(), "Milliseconds");
    let code = ("ErrorCode", "ProvisionedThroughputExceededException");
    assert_eq!(
        sum(find(
            &data,
            "ErrorsByCode",
            &[("StreamName", "orders"), code]
        )),
        4.0
    );
    assert!(data
        .iter()
        .all(|d| d.metric_name() != Some("kinesis_consumer_lease_items_malformed")));
    // An interval without new values sends nothing more for counters.
    publisher.flush().await;
    assert_eq!(captured.lock().unwrap().len(), 1);
    assert_eq!(publisher.stats().failed_requests, 0);
    assert_eq!(publisher.stats().datums, data.len() as u64);
}

#[tokio::test]
async fn kcl_metrics_level_and_success_rates() {
    let mut config = CloudWatchConfig::consumer("order-indexer");
    config.level = MetricsLevel::Summary;
    config.granularity = Granularity::Stream;
    let (recorder, publisher, captured) = recording(config, false);
    metrics::with_local_recorder(&recorder, || {
        let labels = [
            ("application", "order-indexer".to_owned()),
            ("stream", "orders".to_owned()),
            ("shard", "shardId-0".to_owned()),
        ];
        metrics::gauge!("kinesis_consumer_millis_behind_latest", &labels).set(1500.0);
        metrics::counter!("kinesis_consumer_records_processed", &labels).increment(10);
        // Detailed: not sent at the summary level.
        metrics::counter!("kinesis_consumer_get_records", "application" => "order-indexer", "stream" => "orders", "outcome" => "success").increment(3);
    });
    publisher.flush().await;
    let inputs = captured.lock().unwrap().clone();
    assert_eq!(inputs[0].namespace(), Some("order-indexer"));
    let data = all(&captured);
    let operation = ("Operation", "ProcessTask");
    assert_eq!(
        sum(find(
            &data,
            "MillisBehindLatest",
            &[("StreamName", "orders"), operation]
        )),
        1500.0
    );
    assert_eq!(sum(find(&data, "RecordsProcessed", &[operation])), 10.0);
    assert!(
        find(
            &data,
            "RecordsProcessed",
            &[
                ("StreamName", "orders"),
                ("ShardId", "shardId-0"),
                operation
            ]
        )
        .is_none(),
        "stream granularity"
    );
    assert!(data
        .iter()
        .all(|d| d.metric_name() != Some("GetRecords.Success")));
    // A gauge is sent every interval with its last value.
    publisher.flush().await;
    assert_eq!(captured.lock().unwrap().len(), 2);

    let (recorder, publisher, captured) = recording(CloudWatchConfig::consumer("app"), false);
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("kinesis_consumer_lease_renewals", "application" => "app", "worker" => "w1", "outcome" => "success").increment(3);
        metrics::counter!("kinesis_consumer_lease_renewals", "application" => "app", "worker" => "w1", "outcome" => "failure").increment(1);
    });
    publisher.flush().await;
    let data = all(&captured);
    let renewals = find(
        &data,
        "RenewLease.Success",
        &[("WorkerIdentifier", "w1"), ("Operation", "RenewAllLeases")],
    )
    .unwrap();
    let stats = renewals.statistic_values().unwrap();
    assert_eq!(
        (stats.sample_count(), stats.sum()),
        (Some(4.0), Some(3.0)),
        "average = success rate"
    );
}

#[tokio::test]
async fn thousands_of_series_go_in_calls_within_the_limit() {
    let (recorder, publisher, captured) = recording(CloudWatchConfig::producer(), false);
    metrics::with_local_recorder(&recorder, || {
        for shard in 0..2_500 {
            metrics::counter!("kinesis_producer_kinesis_records_put", "stream" => "orders", "shard" => format!("shardId-{shard}")).increment(1);
        }
    });
    publisher.flush().await;
    let sizes: Vec<usize> = captured
        .lock()
        .unwrap()
        .iter()
        .map(|i| i.metric_data().len())
        .collect();
    assert_eq!(sizes, [1_000, 1_000, 502], "2,500 shards + stream + global");
    assert!(sizes.iter().all(|s| *s <= MAX_DATUMS_PER_REQUEST));
    assert_eq!(publisher.stats().requests, 3);
}

#[tokio::test]
async fn failures_are_counted_and_never_reach_the_pipeline() {
    let (recorder, publisher, captured) = recording(CloudWatchConfig::producer(), true);
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("kinesis_producer_user_records_put", "stream" => "orders").increment(1);
    });
    publisher.flush().await;
    let stats = publisher.stats();
    assert_eq!((stats.requests, stats.failed_requests), (0, 1));
    assert_eq!(stats.dropped_datums, 2, "global and stream");
    assert_eq!(captured.lock().unwrap().len(), 1);
    // Recording goes on, and the next interval is sent again.
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("kinesis_producer_user_records_put", "stream" => "orders").increment(1);
    });
    publisher.shutdown().await;
    assert_eq!(captured.lock().unwrap().len(), 2);
}
