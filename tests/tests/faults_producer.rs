//! The producer behind the fault proxy (`kinesis_emulator::fault_proxy`), in front of
//! kinesis-mock: under each fault a network or Kinesis can throw at PutRecords it loses
//! nothing within the record TTL, every receipt says where its record really is, and
//! every failed attempt is reported in the receipts. Past the TTL, records fail with
//! every attempt listed. An endpoint that turns slower than the request timeout gets
//! longer timeouts after a couple of early ones, not duplicates (issue 24).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::{create_stream, read_stream, sdk_config, unique_name, TestResult};
use kinesis_consumer::test_util::CountingRecorder;
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

/// `adaptive`: the producer's `adaptive_request_timeout`.
async fn setup(name: &str, ttl: Duration, adaptive: bool) -> TestResult<Setup> {
    let config = sdk_config().await?;
    let direct = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name(name);
    create_stream(&direct, &stream, 2).await?;
    let proxy = FaultProxy::start(&kinesis_upstream().await?, 11).await?;
    let producer = Producer::builder(through(&proxy, &config))
        .stream(&stream)
        .record_ttl(ttl)
        .request_timeout(Duration::from_millis(1_500))
        .adaptive_request_timeout(adaptive)
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
    survives_on(
        setup(name, Duration::from_secs(30), true).await?,
        fault,
        code,
    )
    .await
}

/// [`survives`] with a producer of its own.
async fn survives_on(setup: Setup, fault: Fault, code: Option<&str>) -> TestResult {
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
    // records can be in the stream twice; each receipt names one copy. With the KPL's
    // fixed timeout, so that every stalled call times out (adaptive timeouts answer the
    // stalled calls after the first: a_slow_endpoint_gets_longer_timeouts_not_duplicates).
    let setup = setup("fault-put-stall", Duration::from_secs(30), false).await?;
    survives_on(setup, Fault::Stall(Duration::from_secs(3)), Some("Timeout")).await
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
    let setup = setup("fault-put-refuse", Duration::from_secs(30), true).await?;
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
    let setup = setup("fault-put-expire", Duration::from_secs(2), true).await?;
    setup
        .proxy
        .add(FaultRule::new(Fault::Throttle).target("PutRecords"));
    let outcomes = send_in_bursts(&setup.producer, 60, |_| None).await?;
    setup.producer.shutdown().await;
    for (data, outcome) in &outcomes {
        match outcome {
            Err(RecordError::Expired {
                attempts, record, ..
            }) => {
                assert!(attempts.len() >= 2, "{data:?}: retried until the TTL");
                // The record comes back as it was sent (issue 25, item 6).
                assert_eq!(record.data(), data);
                assert!(record.partition_key().starts_with("key-"));
                assert_eq!(record.explicit_hash_key(), None);
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
    let sent = Record::new("k", "v").with_hash_key(kinesis_producer::HashKey(12_345));
    match strict.send(sent.clone()).await?.await {
        Err(RecordError::Throttled {
            attempts, record, ..
        }) => {
            assert_eq!(attempts.len(), 1);
            assert_eq!(*record, sent, "given back with its explicit hash key");
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    strict.shutdown().await;
    Ok(())
}

/// The metrics recorder of this test binary, process-wide: a test reads only the series
/// of its own stream.
fn recorder() -> &'static CountingRecorder {
    static RECORDER: OnceLock<CountingRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = CountingRecorder::new();
        metrics::set_global_recorder(recorder.clone()).expect("no other recorder here");
        recorder
    })
}

/// The request timeout of the slow-endpoint tests, and how late every PutRecords answer
/// comes once the endpoint turns slow (applied at once, answered late): far beyond it.
const FLOOR: Duration = Duration::from_millis(300);
const STALL: Duration = Duration::from_millis(800);
/// Bursts of 30 records (each flushed before the next) at the endpoint's own speed.
const WARM_UP_BURSTS: usize = 3;

/// A producer with a `FLOOR` request timeout, adaptive or not, through a proxy.
async fn slow_endpoint_setup(name: &str, adaptive: bool, ttl: Duration) -> TestResult<Setup> {
    recorder();
    let config = sdk_config().await?;
    let direct = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name(name);
    create_stream(&direct, &stream, 2).await?;
    let proxy = FaultProxy::start(&kinesis_upstream().await?, 13).await?;
    let producer = Producer::builder(through(&proxy, &config))
        .stream(&stream)
        .record_ttl(ttl)
        .request_timeout(FLOOR)
        .adaptive_request_timeout(adaptive)
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

/// Sends `WARM_UP_BURSTS` bursts, then stalls every PutRecords answer by `STALL` and
/// sends `slow_bursts` more; returns the outcomes and the timeouts counted before the
/// endpoint turned slow.
async fn through_a_slowdown(
    setup: &Setup,
    slow_bursts: usize,
) -> TestResult<(Vec<(bytes::Bytes, Result<RecordResult, RecordError>)>, u64)> {
    let before = AtomicU64::new(u64::MAX);
    let outcomes = send_in_bursts(
        &setup.producer,
        30 * (WARM_UP_BURSTS + slow_bursts),
        |burst| {
            if burst + 1 == WARM_UP_BURSTS {
                before.store(
                    setup.producer.stats().put_records_timeouts,
                    Ordering::SeqCst,
                );
                setup
                    .proxy
                    .add(FaultRule::new(Fault::Stall(STALL)).target("PutRecords"));
            }
            None
        },
    )
    .await?;
    setup.producer.shutdown().await;
    let stalled = setup.proxy.stats().injected.get("stall").copied();
    assert!(
        stalled >= Some(slow_bursts as u64),
        "every call of the slow bursts stalled: {stalled:?}"
    );
    Ok((outcomes, before.load(Ordering::SeqCst)))
}

/// How many times each user record's data is in the stream.
async fn copies(setup: &Setup) -> TestResult<HashMap<bytes::Bytes, usize>> {
    let mut copies = HashMap::new();
    for data in stored(&setup.direct, &setup.stream).await?.into_values() {
        *copies.entry(data).or_insert(0) += 1;
    }
    Ok(copies)
}

fn timed_out(outcome: &Result<RecordResult, RecordError>) -> bool {
    let attempts = match outcome {
        Ok(result) => &result.attempts[..],
        Err(RecordError::Expired { attempts, .. }) => &attempts[..],
        Err(_) => &[],
    };
    attempts
        .iter()
        .any(|a| a.error.as_ref().is_some_and(|e| e.code == "Timeout"))
}

fn timeouts_metric(setup: &Setup) -> u64 {
    recorder().counter(
        "kinesis_producer_put_records_timeouts",
        &[("stream", &setup.stream)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_longer_timeouts_not_duplicates() -> TestResult {
    let setup = slow_endpoint_setup("slow-adaptive", true, Duration::from_secs(30)).await?;
    let slow_bursts = 9;
    let (outcomes, before) = through_a_slowdown(&setup, slow_bursts).await?;
    assert_nothing_lost(&setup, &outcomes).await?;
    let stats = setup.producer.stats();
    let timeouts = stats.put_records_timeouts - before;
    eprintln!(
        "{timeouts} timeouts once slow ({} before), {} calls",
        before, stats.put_records_calls
    );
    // The first calls to the slow endpoint time out at the 300 ms floor; each timeout
    // triples the next call's timeout (900 ms, 2.7 s) until the calls are answered.
    assert!(
        timeouts <= 3,
        "{timeouts} timeouts: more than a couple of early ones"
    );
    assert_eq!(timeouts_metric(&setup), stats.put_records_timeouts);
    let slow = &outcomes[30 * WARM_UP_BURSTS..];
    for (data, outcome) in slow {
        let Ok(result) = outcome else { continue };
        let last = result.attempts.last().ok_or("an attempt")?;
        assert!(
            last.duration >= STALL,
            "{data:?}: answered after {:?}: within a timeout above the 300 ms floor",
            last.duration
        );
    }
    // A timed-out call had landed: its records may be in the stream twice. No other
    // record is, and once the timeout had adapted (after two slow bursts) none timed out.
    let copies = copies(&setup).await?;
    let mut duplicated = 0;
    for (data, outcome) in &outcomes {
        let n = copies.get(data).copied().unwrap_or(0);
        if !timed_out(outcome) {
            assert_eq!(
                n, 1,
                "{data:?} is in the stream {n} times without a timeout"
            );
        }
        duplicated += n.saturating_sub(1);
    }
    let late = &slow[60..];
    assert!(
        late.iter().all(|(_, outcome)| !timed_out(outcome)),
        "timeouts after two slow bursts"
    );
    eprintln!("{duplicated} duplicates, from the early timeouts");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_timeout_times_out_every_call_of_a_slow_endpoint() -> TestResult {
    // The same endpoint with the KPL's fixed timeout: every stalled call times out, is
    // retried (landing again) until the TTL, and its records are reported expired.
    let setup = slow_endpoint_setup("slow-fixed", false, Duration::from_secs(3)).await?;
    let (outcomes, before) = through_a_slowdown(&setup, 2).await?;
    let stats = setup.producer.stats();
    let timeouts = stats.put_records_timeouts - before;
    eprintln!("{timeouts} timeouts once slow ({before} before)");
    assert!(timeouts >= 4, "{timeouts} timeouts: every call times out");
    assert_eq!(timeouts_metric(&setup), stats.put_records_timeouts);
    let copies = copies(&setup).await?;
    let mut duplicated = 0;
    for (data, outcome) in &outcomes[30 * WARM_UP_BURSTS..] {
        match outcome {
            Err(RecordError::Expired {
                attempts, record, ..
            }) => {
                assert!(attempts.len() >= 2, "{data:?}: retried");
                assert_eq!(record.data(), data, "the record comes back");
                assert!(attempts
                    .iter()
                    .all(|a| a.error.as_ref().is_some_and(|e| e.code == "Timeout")));
            }
            other => panic!("{data:?}: expected expiry after timeouts, got {other:?}"),
        }
        let n = copies.get(data).copied().unwrap_or(0);
        assert!(n >= 1, "{data:?}: reported expired, yet it landed");
        duplicated += n - 1;
    }
    assert!(duplicated > 0, "retried calls that had landed: duplicates");
    eprintln!("{duplicated} duplicates");
    Ok(())
}

/// Ordered mode (issue 25, item 2) behind throttling, 500s and applied puts whose
/// answers are lost: read back from the stream, each key's records are there in `send`
/// order; a lost answer's records may be there twice, the copies in order too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_mode_keeps_each_keys_order_through_faults() -> TestResult {
    let config = sdk_config().await?;
    let direct = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("fault-put-ordered");
    create_stream(&direct, &stream, 2).await?;
    let proxy = FaultProxy::start(&kinesis_upstream().await?, 23).await?;
    let producer = Producer::builder(through(&proxy, &config))
        .stream(&stream)
        .ordered(true)
        .record_ttl(Duration::from_secs(60))
        .request_timeout(Duration::from_millis(1_500))
        .record_max_buffered_time(Duration::from_millis(20))
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    let rules = [
        proxy.add(
            FaultRule::new(Fault::Throttle)
                .target("PutRecords")
                .fraction(0.2)
                .times(8),
        ),
        proxy.add(
            FaultRule::new(Fault::DropResponse)
                .target("PutRecords")
                .fraction(0.2)
                .times(4),
        ),
        proxy.add(
            FaultRule::new(Fault::Status(500))
                .target("PutRecords")
                .fraction(0.2)
                .times(4),
        ),
    ];
    const N: usize = 600;
    let mut receipts = Vec::new();
    for i in 0..N {
        let record = Record::new(format!("key-{}", i % 12), format!("{i:05}"));
        receipts.push(producer.send(record).await?);
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for receipt in receipts {
        receipt.await?;
    }
    producer.shutdown().await;
    let injected: u64 = rules.iter().map(|rule| proxy.injected(*rule)).sum();
    assert!(injected >= 3, "{injected} faults injected");

    // Per key, the ids in stream order (one key is on one shard, read in order).
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (_, record) in read_stream(&direct, &stream).await? {
        for user in deaggregate(
            record.partition_key().unwrap_or_default(),
            None,
            bytes::Bytes::copy_from_slice(record.data().as_ref()),
        ) {
            let id = std::str::from_utf8(&user.data)?.parse()?;
            by_key
                .entry(user.partition_key.to_string())
                .or_default()
                .push(id);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut copies = 0;
    for (key, ids) in &by_key {
        let mut newest = None;
        for (at, &id) in ids.iter().enumerate() {
            if seen.insert(id) {
                assert!(
                    newest.is_none_or(|newest| id > newest),
                    "{key}: {id} after {newest:?}: {ids:?}"
                );
                newest = Some(id);
                continue;
            }
            // A copy is a replay of a call sent again (A, A, B; or A1, A2, A1, A2, B),
            // never a record again after newer ones (A, B, A): whatever came first
            // between its first copy and this one is repeated as well.
            copies += 1;
            let first = ids.iter().position(|&x| x == id).unwrap_or(at);
            for between in &ids[first + 1..at] {
                assert!(
                    ids.iter().filter(|&x| x == between).count() > 1,
                    "{key}: {id} again after {between}, which is not repeated: {ids:?}"
                );
            }
        }
    }
    assert_eq!(seen.len(), N, "every record in the stream");
    eprintln!("{injected} faults, {copies} copies of records whose answer was lost");
    Ok(())
}
