//! What processors receive: KPL aggregates (ours and AWS's Python aws-kinesis-agg)
//! deaggregated with sub-sequence numbers, a corrupt aggregate passed through raw, a restart
//! inside an aggregate, a bad shard iterator renewed, and a dead endpoint reported.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeSerializationInterceptorContextMut,
};
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kinesis::operation::get_records::GetRecordsInput;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use base64_simd::STANDARD as BASE64;
use bytes::Bytes;
use integration_tests::kcl::{
    fast_builder, keyed_records, put_records, start_worker, Behaviour, Log,
};
use integration_tests::python::run_interop_script;
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::{
    ErrorKind, ExtendedSequenceNumber, InitialPosition, LagAwarePolling, Lease, SchedulerError,
};
use kinesis_producer::aggregation::AggregateBuilder;

fn entry(
    partition_key: &str,
    explicit_hash_key: Option<String>,
    data: &[u8],
) -> TestResult<PutRecordsRequestEntry> {
    Ok(PutRecordsRequestEntry::builder()
        .partition_key(partition_key)
        .set_explicit_hash_key(explicit_hash_key)
        .data(Blob::new(data.to_vec()))
        .build()?)
}

fn our_aggregate(prefix: &str, n: usize) -> TestResult<PutRecordsRequestEntry> {
    let mut builder = AggregateBuilder::new();
    for i in 0..n {
        builder.push(
            &format!("{prefix}-key-{i}"),
            None,
            Bytes::from(format!("{prefix}-{i}")),
        );
    }
    let aggregate = builder.finish().ok_or("empty aggregate")?;
    entry(
        &aggregate.partition_key,
        aggregate.explicit_hash_key,
        &aggregate.data,
    )
}

async fn put_in_order(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    entries: Vec<PutRecordsRequestEntry>,
) -> TestResult<Vec<String>> {
    let out = kinesis
        .put_records()
        .stream_name(stream)
        .set_records(Some(entries))
        .send()
        .await?;
    assert_eq!(out.failed_record_count(), Some(0));
    Ok(out
        .records()
        .iter()
        .map(|r| r.sequence_number().unwrap_or_default().to_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_are_delivered_deaggregated_and_corrupt_ones_raw() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-agg");
    let app = unique_name("kcl-agg-app");
    create_stream(&kinesis, &stream, 1).await?;

    // AWS's Python aggregator packs four records.
    let python_set: Vec<serde_json::Value> = (0..4)
        .map(|i| {
            serde_json::json!({
                "partition_key": format!("py-key-{i}"),
                "data": BASE64.encode_to_string(format!("py-{i}")),
            })
        })
        .collect();
    let output = run_interop_script("encode", &serde_json::to_vec(&vec![python_set])?)?;
    let python: Vec<serde_json::Value> = serde_json::from_slice(&output)?;
    let python = &python[0];
    let python_entry = entry(
        python["partition_key"].as_str().ok_or("no partition key")?,
        python["explicit_hash_key"].as_str().map(str::to_owned),
        &BASE64.decode_to_vec(python["data"].as_str().ok_or("no data")?)?,
    )?;

    let mut corrupt = AggregateBuilder::new();
    corrupt.push("c-0", None, Bytes::from_static(b"c-0"));
    corrupt.push("c-1", None, Bytes::from_static(b"c-1"));
    let mut corrupt = corrupt.finish().ok_or("empty aggregate")?.data.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55; // the MD5 no longer matches

    let sequence_numbers = put_in_order(
        &kinesis,
        &stream,
        vec![
            entry("plain-key", None, b"plain-0")?,
            our_aggregate("ours", 5)?,
            python_entry,
            entry("corrupt-key", None, &corrupt)?,
            entry("plain-key", None, b"plain-1")?,
        ],
    )
    .await?;

    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("12 user records", Duration::from_secs(30), || async {
        Ok((log.delivered().len() >= 12).then_some(()))
    })
    .await?;
    worker.stop().await?;

    for d in log.delivered() {
        assert!(d.arrival.is_some(), "no arrival time: {d:?}");
        assert!(
            d.millis_behind_latest.is_some(),
            "no millis_behind_latest: {d:?}"
        );
    }
    let got: Vec<(String, u64, String, Bytes, bool)> = log
        .delivered()
        .into_iter()
        .map(|d| {
            (
                d.sequence_number,
                d.sub_sequence_number,
                d.partition_key,
                d.data,
                d.aggregated,
            )
        })
        .collect();
    let mut want = vec![(
        sequence_numbers[0].clone(),
        0,
        "plain-key".to_owned(),
        Bytes::from_static(b"plain-0"),
        false,
    )];
    for i in 0..5u64 {
        want.push((
            sequence_numbers[1].clone(),
            i,
            format!("ours-key-{i}"),
            Bytes::from(format!("ours-{i}")),
            true,
        ));
    }
    for i in 0..4u64 {
        want.push((
            sequence_numbers[2].clone(),
            i,
            format!("py-key-{i}"),
            Bytes::from(format!("py-{i}")),
            true,
        ));
    }
    want.push((
        sequence_numbers[3].clone(),
        0,
        "corrupt-key".to_owned(),
        Bytes::from(corrupt),
        false,
    ));
    want.push((
        sequence_numbers[4].clone(),
        0,
        "plain-key".to_owned(),
        Bytes::from_static(b"plain-1"),
        false,
    ));
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_an_aggregate_resumes_after_the_checkpointed_sub_sequence() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-agg-restart");
    let app = unique_name("kcl-agg-restart-app");
    create_stream(&kinesis, &stream, 1).await?;
    let sequence_numbers = put_in_order(
        &kinesis,
        &stream,
        vec![
            our_aggregate("agg", 10)?,
            entry("after-key", None, b"after")?,
        ],
    )
    .await?;
    let shard = integration_tests::list_shards(&kinesis, &stream).await?[0]
        .shard_id()
        .to_owned();

    // A previous worker processed sub-sequences 0..=3 of the aggregate and checkpointed.
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &app);
    store.create_table_if_missing().await?;
    store
        .create_lease_if_absent(&Lease::new(
            &shard,
            ExtendedSequenceNumber::new(&sequence_numbers[0], 3),
        ))
        .await?;

    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for(
        "the rest of the aggregate and the next record",
        Duration::from_secs(30),
        || async { Ok((log.delivered().len() >= 7).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await?;
    let got: Vec<(String, u64)> = log
        .delivered()
        .into_iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.data).into_owned(),
                d.sub_sequence_number,
            )
        })
        .collect();
    let mut want: Vec<(String, u64)> = (4..10).map(|i| (format!("agg-{i}"), i)).collect();
    want.push(("after".to_owned(), 0));
    assert_eq!(got, want);
    Ok(())
}

/// Replaces the shard iterator of one GetRecords call with garbage (the emulator then
/// answers HTTP 500, as AWS answers 400 or ExpiredIteratorException for a dead iterator).
#[derive(Debug)]
struct SpoilIterator {
    calls: AtomicUsize,
    spoil_call: usize,
    spoiled: Arc<AtomicUsize>,
}

impl Intercept for SpoilIterator {
    fn name(&self) -> &'static str {
        "SpoilIterator"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(input) = context.input_mut().downcast_mut::<GetRecordsInput>() {
            if self.calls.fetch_add(1, Ordering::SeqCst) == self.spoil_call {
                input.shard_iterator = Some("AAAAAAAAAAAA-not-an-iterator".into());
                self.spoiled.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_shard_iterator_is_renewed_from_the_last_delivered_record() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-iterator");
    let app = unique_name("kcl-iterator-app");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("iter", 50, 5);
    put_records(&kinesis, &stream, &records).await?;

    let spoiled = Arc::new(AtomicUsize::new(0));
    let spoiling = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .interceptor(SpoilIterator {
                calls: AtomicUsize::new(0),
                spoil_call: 2,
                spoiled: spoiled.clone(),
            })
            .build(),
    );
    let log = Log::default();
    let builder = fast_builder(&config, &stream, &app, "w")
        .kinesis_client(spoiling)
        .max_records(10);
    let worker = start_worker(builder, "w", &log, Behaviour::default()).await?;
    wait_for("every record", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await?;
    assert_eq!(
        spoiled.load(Ordering::SeqCst),
        1,
        "the iterator was spoiled once"
    );
    // Renewed after the last delivered record: each record exactly once.
    assert_eq!(log.delivered().len(), records.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoints_give_typed_errors_not_hangs() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-dead");
    create_stream(&kinesis, &stream, 1).await?;
    let dead = "http://127.0.0.1:9";

    let dead_dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .endpoint_url(dead)
            .build(),
    );
    let built = tokio::time::timeout(
        Duration::from_secs(60),
        fast_builder(&config, &stream, &unique_name("kcl-dead-app"), "w")
            .dynamodb_client(dead_dynamodb)
            .processor_factory(|| NoOp)
            .build(),
    )
    .await?;
    assert!(
        matches!(built, Err(SchedulerError::LeaseTable(_))),
        "{built:?}"
    );

    let dead_kinesis = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .endpoint_url(dead)
            .build(),
    );
    let built = tokio::time::timeout(
        Duration::from_secs(60),
        fast_builder(&config, &stream, &unique_name("kcl-dead-app"), "w")
            .kinesis_client(dead_kinesis)
            .processor_factory(|| NoOp)
            .build(),
    )
    .await?;
    // A dead endpoint is told from a missing stream by matching, not by reading text.
    assert!(
        matches!(&built, Err(SchedulerError::Kinesis(e)) if e.kind() == ErrorKind::Unreachable),
        "{built:?}"
    );

    let missing = tokio::time::timeout(
        Duration::from_secs(60),
        fast_builder(
            &config,
            &unique_name("no-such-stream"),
            &unique_name("kcl-dead-app"),
            "w",
        )
        .processor_factory(|| NoOp)
        .build(),
    )
    .await?;
    assert!(
        matches!(&missing, Err(SchedulerError::StreamNotFound { error, .. }) if error.kind() == ErrorKind::NotFound),
        "{missing:?}"
    );
    Ok(())
}

struct NoOp;

#[async_trait::async_trait]
impl kinesis_consumer::RecordProcessor for NoOp {
    async fn process_records(
        &mut self,
        _input: kinesis_consumer::ProcessRecordsInput,
    ) -> kinesis_consumer::ProcessResult {
        Ok(())
    }

    async fn shard_ended(&mut self, input: kinesis_consumer::ShardEndedInput) {
        let _ = input.checkpointer.checkpoint().await;
    }
}

/// Answers the first `count` GetRecords attempts with HTTP 400
/// ProvisionedThroughputExceededException, as Kinesis does when a shard's read limit is
/// exceeded (no emulator enforces it).
#[derive(Debug)]
struct Throttle {
    remaining: AtomicUsize,
    injected: Arc<AtomicUsize>,
}

impl Intercept for Throttle {
    fn name(&self) -> &'static str {
        "Throttle"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let is_get_records = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .is_some_and(|m| m.name() == "GetRecords");
        if !is_get_records
            || self
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        let response = context.response_mut();
        *response.status_mut() = 400u16.try_into()?;
        response
            .headers_mut()
            .insert("x-amzn-errortype", "ProvisionedThroughputExceededException");
        *response.body_mut() = aws_smithy_types::body::SdkBody::from(
            r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard"}"#,
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_are_backed_off_and_retried() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-throttle");
    let app = unique_name("kcl-throttle-app");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("throttle", 30, 3);
    put_records(&kinesis, &stream, &records).await?;

    let injected = Arc::new(AtomicUsize::new(0));
    let throttled = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .interceptor(Throttle {
                remaining: AtomicUsize::new(5),
                injected: injected.clone(),
            })
            .build(),
    );
    let log = Log::default();
    let builder = fast_builder(&config, &stream, &app, "w").kinesis_client(throttled);
    let worker = start_worker(builder, "w", &log, Behaviour::default()).await?;
    wait_for("every record", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await?;
    assert_eq!(injected.load(Ordering::SeqCst), 5);
    assert_eq!(log.delivered().len(), records.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_and_at_timestamp_skip_older_records() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-positions");
    create_stream(&kinesis, &stream, 1).await?;
    put_records(&kinesis, &stream, &keyed_records("old", 20, 2)).await?;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let since = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let middle = keyed_records("middle", 10, 2);
    put_records(&kinesis, &stream, &middle).await?;

    // AT_TIMESTAMP: the records written after `since`.
    let log = Log::default();
    let builder = fast_builder(&config, &stream, &unique_name("kcl-at-ts"), "w")
        .initial_position(InitialPosition::AtTimestamp(since));
    let at_timestamp = start_worker(builder, "w", &log, Behaviour::default()).await?;
    wait_for("the middle records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= middle.len()).then_some(()))
    })
    .await?;

    // LATEST: only what is written after the worker started reading.
    let latest_log = Log::default();
    let builder = fast_builder(&config, &stream, &unique_name("kcl-latest"), "w")
        .initial_position(InitialPosition::Latest);
    let latest = start_worker(builder, "w", &latest_log, Behaviour::default()).await?;
    wait_for(
        "the LATEST worker started",
        Duration::from_secs(30),
        || async { Ok((!latest_log.events().is_empty()).then_some(())) },
    )
    .await?;
    // GetShardIterator(LATEST) follows initialize; give it time to be taken.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let new = keyed_records("new", 10, 2);
    put_records(&kinesis, &stream, &new).await?;
    wait_for("the new records", Duration::from_secs(30), || async {
        Ok((latest_log.distinct_payloads() >= new.len()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    at_timestamp.stop().await?;
    latest.stop().await?;

    let payloads = |log: &Log| {
        let mut p: Vec<Bytes> = log.delivered().into_iter().map(|d| d.data).collect();
        p.sort();
        p
    };
    let mut want: Vec<Bytes> = middle.iter().chain(&new).map(|(_, d)| d.clone()).collect();
    want.sort();
    assert_eq!(payloads(&log), want, "AT_TIMESTAMP");
    let mut want: Vec<Bytes> = new.iter().map(|(_, d)| d.clone()).collect();
    want.sort();
    assert_eq!(payloads(&latest_log), want, "LATEST");
    Ok(())
}

/// The scheduler takes a stream ARN wherever it takes a name (ListShards, GetShardIterator
/// and DescribeStreamSummary are sent with `StreamARN`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_named_by_its_arn_is_consumed() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-arn");
    create_stream(&kinesis, &stream, 2).await?;
    let arn = kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await?
        .stream_description_summary()
        .map(|s| s.stream_arn().to_owned())
        .ok_or("no stream summary")?;
    assert!(arn.starts_with("arn:"), "{arn}");
    let records = keyed_records("arn", 40, 4);
    put_records(&kinesis, &stream, &records).await?;

    let log = Log::default();
    let builder = fast_builder(&config, &arn, &unique_name("kcl-arn-app"), "w");
    let worker = start_worker(builder, "w", &log, Behaviour::default()).await?;
    wait_for("every record", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records.len()).then_some(()))
    })
    .await?;
    worker.stop().await?;
    assert_eq!(log.distinct_payloads(), records.len());
    Ok(())
}

/// Counts GetRecords calls sent.
#[derive(Debug, Default)]
struct CountGetRecords(Arc<AtomicUsize>);

impl Intercept for CountGetRecords {
    fn name(&self) -> &'static str {
        "CountGetRecords"
    }

    fn modify_before_deserialization(
        &self,
        _context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .is_some_and(|m| m.name() == "GetRecords")
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Lag-aware polling: a quiet shard is read less and less often (the pause doubles from
/// `idle_time_between_reads`, 100 ms here, up to `max_idle_pause`, 1.6 s here: about 8
/// calls in 6 s where fixed pauses make 60), and a record written after the quiet spell is
/// still delivered, as is a backlog read before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_aware_polling_reads_a_quiet_shard_less_often_and_loses_nothing() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-lag-aware");
    let app = unique_name("kcl-lag-aware-app");
    create_stream(&kinesis, &stream, 1).await?;
    let backlog = keyed_records("backlog", 500, 5);
    put_records(&kinesis, &stream, &backlog).await?;

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .interceptor(CountGetRecords(calls.clone()))
            .build(),
    );
    let mut lag_aware = LagAwarePolling::default();
    lag_aware.max_idle_pause = Duration::from_millis(1_600);
    let builder = fast_builder(&config, &stream, &app, "w")
        .kinesis_client(counted)
        .max_records(100)
        .lag_aware_polling(lag_aware);
    let log = Log::default();
    let worker = start_worker(builder, "w", &log, Behaviour::default()).await?;
    wait_for("the backlog", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= backlog.len()).then_some(()))
    })
    .await?;
    let before = calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let quiet = calls.load(Ordering::SeqCst) - before;
    println!("GetRecords calls over 6 quiet seconds: {quiet} (fixed 100 ms pauses: about 60)");
    assert!(quiet <= 15, "{quiet} calls in 6 quiet seconds");

    let late = keyed_records("late", 1, 1);
    put_records(&kinesis, &stream, &late).await?;
    wait_for(
        "the record after the quiet spell",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() > backlog.len()).then_some(())) },
    )
    .await?;
    worker.stop().await?;
    assert_eq!(log.delivered().len(), backlog.len() + 1);
    Ok(())
}
