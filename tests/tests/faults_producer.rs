//! The producer behind the fault proxy (`kinesis_emulator::fault_proxy`), in front of
//! kinesis-mock: under each fault a network or Kinesis can throw at PutRecords it loses
//! nothing within the record TTL, every receipt says where its record really is, and
//! every failed attempt is reported in the receipts. Past the TTL, records fail with
//! every attempt listed.

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::{create_stream, read_stream, sdk_config, unique_name, TestResult};
use kinesis_emulator::fault_proxy::{Fault, FaultProxy, FaultRule};
use kinesis_emulator::Emulator;
use kinesis_producer::aggregation::deaggregate;
use kinesis_producer::{Producer, Record, RecordError, RecordResult};

/// The Kinesis endpoint the proxy forwards to.
async fn kinesis_upstream() -> TestResult<String> {
    let emulator = Emulator::shared().await?;
    match emulator.kinesis_endpoint() {
        Some(endpoint) => Ok(endpoint),
        None => Ok(std::env::var("AWS_ENDPOINT_URL_KINESIS")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))?),
    }
}

fn through(proxy: &FaultProxy, config: &aws_config::SdkConfig) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(config)
            .endpoint_url(proxy.endpoint())
            .build(),
    )
}

/// User records in the stream by (shard, sequence number, sub-sequence number).
async fn stored(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> TestResult<HashMap<(String, String, u64), bytes::Bytes>> {
    let mut found = HashMap::new();
    for (shard, record) in read_stream(client, stream).await? {
        for user in deaggregate(
            record.partition_key().unwrap_or_default(),
            None,
            bytes::Bytes::copy_from_slice(record.data().as_ref()),
        ) {
            found.insert(
                (
                    shard.clone(),
                    record.sequence_number().to_owned(),
                    user.sub_sequence_number,
                ),
                user.data,
            );
        }
    }
    Ok(found)
}

struct Setup {
    direct: aws_sdk_kinesis::Client,
    stream: String,
    proxy: FaultProxy,
    producer: Producer,
}

async fn setup(name: &str, ttl: Duration) -> TestResult<Setup> {
    let config = sdk_config().await?;
    let direct = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name(name);
    create_stream(&direct, &stream, 2).await?;
    let proxy = FaultProxy::start(&kinesis_upstream().await?, 11).await?;
    let producer = Producer::builder(through(&proxy, &config))
        .stream(&stream)
        .record_ttl(ttl)
        .request_timeout(Duration::from_millis(1_500))
        .record_max_buffered_time(Duration::from_millis(20))
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    Ok(Setup {
        direct,
        stream,
        proxy,
        producer,
    })
}

/// Sends `n` records in bursts, each burst flushed (so each makes its own PutRecords
/// calls); returns (data, receipt outcome) per record.
async fn send_in_bursts(
    producer: &Producer,
    n: usize,
    between_bursts: impl Fn(usize) -> Option<Duration>,
) -> TestResult<Vec<(bytes::Bytes, Result<RecordResult, RecordError>)>> {
    let mut receipts = Vec::new();
    for i in 0..n {
        let data = bytes::Bytes::from(format!("record-{i:05}"));
        receipts.push((
            data.clone(),
            producer
                .send(Record::new(format!("key-{}", i % 37), data))
                .await?,
        ));
        if i % 30 == 29 {
            producer.flush().await;
            if let Some(pause) = between_bursts(i / 30) {
                tokio::time::sleep(pause).await;
            }
        }
    }
    let mut outcomes = Vec::new();
    for (data, receipt) in receipts {
        outcomes.push((data, receipt.await));
    }
    Ok(outcomes)
}

/// Every record reached the stream where its receipt says; returns the failed attempts
/// the receipts report, by error code.
async fn assert_nothing_lost(
    setup: &Setup,
    outcomes: &[(bytes::Bytes, Result<RecordResult, RecordError>)],
) -> TestResult<HashMap<String, usize>> {
    let found = stored(&setup.direct, &setup.stream).await?;
    let mut failed_attempts = HashMap::new();
    for (data, outcome) in outcomes {
        let result = match outcome {
            Ok(result) => result,
            Err(error) => panic!("{data:?} failed within its TTL: {error}"),
        };
        let at = (
            result.shard_id.to_string(),
            result.sequence_number.to_string(),
            result.sub_sequence_number,
        );
        assert_eq!(found.get(&at), Some(data), "{data:?} is not at {at:?}");
        assert!(
            result.attempts.last().is_some_and(|a| a.error.is_none()),
            "the last attempt succeeded"
        );
        for attempt in result.attempts.iter() {
            if let Some(error) = &attempt.error {
                *failed_attempts.entry(error.code.clone()).or_insert(0) += 1;
            }
        }
    }
    Ok(failed_attempts)
}

/// A fault on some PutRecords calls: nothing lost, each injected fault reported in the
/// receipts of the records it hit, with `code` when the fault is an error answer.
async fn survives(name: &str, fault: Fault, code: Option<&str>) -> TestResult {
    let setup = setup(name, Duration::from_secs(30)).await?;
    let rule = setup.proxy.add(
        FaultRule::new(fault)
            .target("PutRecords")
            .fraction(0.5)
            .times(6),
    );
    let outcomes = send_in_bursts(&setup.producer, 300, |_| None).await?;
    setup.producer.shutdown().await;
    let injected = setup.proxy.injected(rule);
    assert!(
        (1..=6).contains(&injected),
        "{injected} faults injected (at most 6)"
    );
    let failed = assert_nothing_lost(&setup, &outcomes).await?;
    let reported: usize = failed.values().sum();
    assert!(
        reported as u64 >= injected,
        "{injected} faulted calls, {reported} failed attempts in the receipts: {failed:?}"
    );
    assert!(setup.producer.stats().failed_attempts >= injected);
    if let Some(code) = code {
        assert_eq!(failed.keys().collect::<Vec<_>>(), vec![code], "{failed:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_puts_lose_nothing() -> TestResult {
    survives(
        "fault-put-throttle",
        Fault::Throttle,
        Some("ProvisionedThroughputExceededException"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_failures_lose_nothing() -> TestResult {
    survives("fault-put-500", Fault::Status(500), Some("InternalFailure")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_service_loses_nothing() -> TestResult {
    survives(
        "fault-put-503",
        Fault::Status(503),
        Some("ServiceUnavailable"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_answers_time_out_and_lose_nothing() -> TestResult {
    // Applied at once, answered after the 1.5 s request timeout: retried, so those
    // records can be in the stream twice; each receipt names one copy.
    survives(
        "fault-put-stall",
        Fault::Stall(Duration::from_secs(3)),
        Some("Timeout"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_of_applied_puts_lose_nothing() -> TestResult {
    survives("fault-put-drop", Fault::DropResponse, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_lose_nothing() -> TestResult {
    survives("fault-put-reset", Fault::Reset, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_refusing_connections_for_a_while_loses_nothing() -> TestResult {
    let setup = setup("fault-put-refuse", Duration::from_secs(30)).await?;
    // Burst 3 goes out while the endpoint is down (connections refused, open ones cut);
    // it comes back 3 s later.
    let proxy = &setup.proxy;
    let outcomes = {
        let refused = std::sync::atomic::AtomicBool::new(false);
        let outcomes = send_in_bursts(&setup.producer, 300, |burst| {
            if burst == 2 && !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                proxy.refuse_connections();
            }
            None
        });
        let reopen = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            while !refused.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.accept_connections().await
        };
        let (outcomes, reopened) = tokio::join!(outcomes, reopen);
        reopened?;
        outcomes?
    };
    setup.producer.shutdown().await;
    let failed = assert_nothing_lost(&setup, &outcomes).await?;
    assert!(
        failed.values().sum::<usize>() >= 1,
        "the refused calls are reported: {failed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_past_the_ttl_fails_records_with_every_attempt() -> TestResult {
    let setup = setup("fault-put-expire", Duration::from_secs(2)).await?;
    setup
        .proxy
        .add(FaultRule::new(Fault::Throttle).target("PutRecords"));
    let outcomes = send_in_bursts(&setup.producer, 60, |_| None).await?;
    setup.producer.shutdown().await;
    for (data, outcome) in &outcomes {
        match outcome {
            Err(RecordError::Expired { attempts }) => {
                assert!(attempts.len() >= 2, "{data:?}: retried until the TTL");
                for attempt in attempts {
                    let code = &attempt.error.as_ref().ok_or("failed attempt")?.code;
                    assert_eq!(code, "ProvisionedThroughputExceededException");
                }
            }
            other => panic!("{data:?}: expected expiry, got {other:?}"),
        }
    }
    // None was stored (the proxy answered every call itself).
    assert!(stored(&setup.direct, &setup.stream).await?.is_empty());

    // With fail_if_throttled, the first throttle fails the record at once.
    let config = sdk_config().await?;
    let strict = Producer::builder(through(&setup.proxy, &config))
        .stream(&setup.stream)
        .fail_if_throttled(true)
        .build()
        .await?;
    match strict.send(Record::new("k", "v")).await?.await {
        Err(RecordError::Throttled { attempts }) => assert_eq!(attempts.len(), 1),
        other => panic!("expected Throttled, got {other:?}"),
    }
    strict.shutdown().await;
    Ok(())
}
