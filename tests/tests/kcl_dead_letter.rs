//! Failed records and dead-lettering against the emulators: a processor that fails on
//! poison records (a `ProcessingError`, or a panic), a `DeadLetterPolicy` of 3 attempts,
//! and the built-in sinks (a JSON lines file; another stream through the producer,
//! `kinesis-dead-letter`). The poison records reach the sink with their metadata, the
//! checkpoint moves past them only after the sink took them, and every other record is
//! delivered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use integration_tests::kcl::{
    fast_builder, leases, put_records, start_worker, Behaviour, Event, Log,
};
use integration_tests::{
    create_stream, read_stream, sdk_config, unique_name, wait_for, TestResult,
};
use kinesis_consumer::dead_letter::{
    BoxError, DeadLetterBatch, DeadLetterEnvelope, DeadLetterSink, JsonLinesFileSink,
};
use kinesis_consumer::test_util::CountingRecorder;
use kinesis_consumer::{DeadLetterPolicy, ExtendedSequenceNumber, SchedulerBuilder};

/// The process-wide metrics recorder, installed by the first test that asks (before it
/// builds a scheduler). Each test reads only its own application's series.
fn recorder() -> &'static CountingRecorder {
    static RECORDER: std::sync::OnceLock<CountingRecorder> = std::sync::OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = CountingRecorder::new();
        // Another recorder already installed would leave this one at zero: the
        // assertions on it then fail and say so.
        let _ = metrics::set_global_recorder(recorder.clone());
        recorder
    })
}

/// Retries 100 to 400 ms apart, instead of 1 s to 5 minutes.
fn quick_retries(builder: SchedulerBuilder) -> SchedulerBuilder {
    builder.failure_backoff(Duration::from_millis(100), Duration::from_millis(400))
}

/// `good` records, then the poison ones, then `good` more, all of one key (one shard, in
/// this order): returns them as put, with the sequence number each got.
async fn put_with_poison(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    good: usize,
    poison: usize,
) -> TestResult<Vec<(Bytes, String)>> {
    let mut records: Vec<(String, Bytes)> = (0..good)
        .map(|i| ("key".to_owned(), Bytes::from(format!("good-{i:03}"))))
        .collect();
    records.extend((0..poison).map(|i| ("key".to_owned(), Bytes::from(format!("poison-{i}")))));
    records
        .extend((good..2 * good).map(|i| ("key".to_owned(), Bytes::from(format!("good-{i:03}")))));
    put_records(client, stream, &records).await?;
    // The sequence numbers, read back in shard order.
    let read = read_stream(client, stream).await?;
    Ok(read
        .into_iter()
        .map(|(_, r)| {
            let seq = r.sequence_number().to_owned();
            (Bytes::from(r.data.into_inner()), seq)
        })
        .collect())
}

/// A new one-shard stream holding [`put_with_poison`]'s records, and an application name
/// for it.
struct Poisoned {
    config: aws_config::SdkConfig,
    client: aws_sdk_kinesis::Client,
    stream: String,
    app: String,
    put: Vec<(Bytes, String)>,
}

async fn poisoned_stream(prefix: &str, good: usize, poison: usize) -> TestResult<Poisoned> {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name(prefix);
    let app = unique_name(&format!("{prefix}-app"));
    create_stream(&client, &stream, 1).await?;
    let put = put_with_poison(&client, &stream, good, poison).await?;
    Ok(Poisoned {
        config,
        client,
        stream,
        app,
        put,
    })
}

/// The lease's checkpoint (one shard).
async fn checkpoint(
    config: &aws_config::SdkConfig,
    app: &str,
) -> TestResult<ExtendedSequenceNumber> {
    let leases = leases(config, app).await?;
    // Trim horizon before the lease exists.
    Ok(leases
        .first()
        .map_or_else(ExtendedSequenceNumber::trim_horizon, |lease| {
            lease.checkpoint.clone()
        }))
}

fn envelopes(path: &std::path::Path) -> TestResult<Vec<DeadLetterEnvelope>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| Ok(DeadLetterEnvelope::from_json(line.as_bytes())?))
        .collect()
}

/// A dead-letter file in a directory of its own, removed with it when dropped.
struct TempFile(std::path::PathBuf);

impl std::ops::Deref for TempFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn temp_file(name: &str) -> TestResult<TempFile> {
    let dir = std::env::temp_dir().join(unique_name("kcl-dead-letter"));
    std::fs::create_dir_all(&dir)?;
    Ok(TempFile(dir.join(name)))
}

fn poisoned() -> Behaviour {
    Behaviour {
        fail_poison: true,
        ..Behaviour::default()
    }
}

/// How often each payload was delivered.
fn delivery_count(log: &Log, data: &[u8]) -> usize {
    log.delivered().iter().filter(|d| d.data == data).count()
}

/// A sink that fails every call, counting them.
#[derive(Clone, Default)]
struct BrokenSink(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl DeadLetterSink for BrokenSink {
    async fn dead_letter(&self, _batch: &DeadLetterBatch) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err("the dead-letter store is down".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_to_a_file_after_three_attempts() -> TestResult {
    let Poisoned {
        config,
        stream,
        app,
        put,
        ..
    } = poisoned_stream("dl-file", 20, 1).await?;
    let (poison_data, poison_seq) = put[20].clone();
    let (_, last_seq) = put.last().ok_or("nothing put")?.clone();

    let path = temp_file("dead.jsonl")?;
    let sink = JsonLinesFileSink::open(&*path)?;
    let metrics = recorder();
    let log = Log::default();
    let builder = quick_retries(fast_builder(&config, &stream, &app, "w1"))
        .dead_letter(DeadLetterPolicy::new(3, sink));
    let worker = start_worker(builder, "w1", &log, poisoned()).await?;
    wait_for(
        "the checkpoint past the poison record",
        Duration::from_secs(30),
        || async {
            let at = checkpoint(&config, &app).await?;
            Ok((at.sequence_number() == Some(last_seq.as_str())).then_some(()))
        },
    )
    .await?;
    worker.stop().await?;

    // The poison record: given to the processor 3 times, then to the sink, once.
    assert_eq!(delivery_count(&log, &poison_data), 3);
    let dead = envelopes(&path)?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let envelope = &dead[0];
    assert_eq!(envelope.sequence_number, poison_seq);
    assert_eq!(envelope.sub_sequence_number, 0);
    assert_eq!(envelope.stream, stream);
    assert_eq!(envelope.application, app);
    assert_eq!(envelope.shard_id, "shardId-000000000000");
    assert_eq!(envelope.partition_key, "key");
    assert_eq!(envelope.attempts, 3);
    assert_eq!(envelope.error, "poison record");
    assert_eq!(envelope.decoded_data()?, Some(poison_data.to_vec()));
    // Every other record was delivered, once each (the poison record's batch was retried
    // with only the poison record).
    for (data, _) in put.iter().filter(|(data, _)| *data != poison_data) {
        assert_eq!(delivery_count(&log, data), 1, "{data:?}");
    }
    let app_labels = [("application", app.as_str()), ("stream", stream.as_str())];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = app_labels.to_vec();
        labels.push(extra);
        labels
    };
    assert_eq!(
        metrics.counter(
            "kinesis_consumer_batch_failures",
            &with(("reason", "error"))
        ),
        3
    );
    assert_eq!(
        metrics.counter("kinesis_consumer_records_dead_lettered", &app_labels),
        1
    );
    assert_eq!(
        metrics.counter(
            "kinesis_consumer_dead_letter_batches",
            &with(("outcome", "success"))
        ),
        1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_keeps_the_checkpoint_before_the_poison_record() -> TestResult {
    let Poisoned {
        config,
        stream,
        app,
        put,
        ..
    } = poisoned_stream("dl-broken", 10, 1).await?;
    let (poison_data, poison_seq) = put[10].clone();
    let (_, before_poison) = put[9].clone();
    let (_, last_seq) = put.last().ok_or("nothing put")?.clone();

    // A sink that always fails: the batch is retried, never checkpointed past, and a
    // graceful stop (whose shutdown_requested checkpoints everything "delivered") stops
    // before the poison record.
    let broken = BrokenSink::default();
    let metrics = recorder();
    let log = Log::default();
    let builder = quick_retries(fast_builder(&config, &stream, &app, "w1"))
        .dead_letter(DeadLetterPolicy::new(3, broken.clone()));
    let worker = start_worker(builder, "w1", &log, poisoned()).await?;
    wait_for(
        "5 calls of the broken sink",
        Duration::from_secs(30),
        || async { Ok((broken.0.load(Ordering::SeqCst) >= 5).then_some(())) },
    )
    .await?;
    assert_eq!(
        checkpoint(&config, &app).await?.sequence_number(),
        Some(before_poison.as_str())
    );
    // The records after the poison one in its batch were processed, not checkpointed.
    assert_eq!(delivery_count(&log, &put[11].0), 1);
    assert!(
        metrics.counter(
            "kinesis_consumer_dead_letter_batches",
            &[("application", app.as_str()), ("outcome", "failure")]
        ) >= 5
    );
    assert_eq!(
        metrics.counter(
            "kinesis_consumer_records_dead_lettered",
            &[("application", app.as_str())]
        ),
        0
    );
    worker.stop().await?;
    assert_eq!(delivery_count(&log, &poison_data), 3);
    assert_eq!(
        checkpoint(&config, &app).await?.sequence_number(),
        Some(before_poison.as_str()),
        "a graceful stop checkpointed past a batch that was not dead-lettered"
    );

    // The next worker, with a sink that works, resumes before the poison record and
    // dead-letters it.
    let path = temp_file("dead.jsonl")?;
    let log2 = Log::default();
    let builder = quick_retries(fast_builder(&config, &stream, &app, "w2"))
        .dead_letter(DeadLetterPolicy::new(3, JsonLinesFileSink::open(&*path)?));
    let worker = start_worker(builder, "w2", &log2, poisoned()).await?;
    wait_for(
        "the checkpoint past the poison record",
        Duration::from_secs(30),
        || async {
            let at = checkpoint(&config, &app).await?;
            Ok((at.sequence_number() == Some(last_seq.as_str())).then_some(()))
        },
    )
    .await?;
    worker.stop().await?;
    let dead = envelopes(&path)?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].sequence_number, poison_seq);
    // w2 got nothing before the poison record, and everything after it.
    assert_eq!(delivery_count(&log2, &put[9].0), 0);
    for (data, _) in &put[11..] {
        assert_eq!(delivery_count(&log2, data), 1, "{data:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_counts_as_a_failed_attempt_of_the_whole_batch() -> TestResult {
    let Poisoned {
        config,
        stream,
        app,
        put,
        ..
    } = poisoned_stream("dl-panic", 5, 1).await?;
    let (_, last_seq) = put.last().ok_or("nothing put")?.clone();

    let path = temp_file("dead.jsonl")?;
    let log = Log::default();
    let metrics = recorder();
    let behaviour = Behaviour {
        panic_on_poison: true,
        ..Behaviour::default()
    };
    let builder = quick_retries(fast_builder(&config, &stream, &app, "w1"))
        .dead_letter(DeadLetterPolicy::new(2, JsonLinesFileSink::open(&*path)?));
    let worker = start_worker(builder, "w1", &log, behaviour).await?;
    wait_for(
        "the checkpoint past the panicking batch",
        Duration::from_secs(30),
        || async {
            let at = checkpoint(&config, &app).await?;
            Ok((at.sequence_number() == Some(last_seq.as_str())).then_some(()))
        },
    )
    .await?;
    worker.stop().await?;
    // One batch of 11 records, given twice; all of it dead-lettered, with the panic.
    let dead = envelopes(&path)?;
    let dead_seqs: Vec<&str> = dead.iter().map(|e| e.sequence_number.as_str()).collect();
    let put_seqs: Vec<&str> = put.iter().map(|(_, seq)| seq.as_str()).collect();
    assert_eq!(dead_seqs, put_seqs);
    assert!(dead.iter().all(|e| e.attempts == 2
        && e.error
            .starts_with("process_records panicked: w1 shardId-000000000000: injected panic")));
    for (data, _) in &put {
        assert_eq!(delivery_count(&log, data), 2, "{data:?}");
    }
    assert_eq!(
        metrics.counter(
            "kinesis_consumer_batch_failures",
            &[("application", app.as_str()), ("reason", "panic")]
        ),
        2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_reach_a_dead_letter_stream_with_their_metadata() -> TestResult {
    let Poisoned {
        config,
        client,
        stream,
        app,
        put,
    } = poisoned_stream("dl-source", 10, 2).await?;
    let dead_stream = unique_name("dl-target");
    create_stream(&client, &dead_stream, 1).await?;
    let poison: Vec<(Bytes, String)> = put[10..12].to_vec();
    let (_, last_seq) = put.last().ok_or("nothing put")?.clone();

    let sink = kinesis_dead_letter::StreamSink::connect(&config, &dead_stream).await?;
    let log = Log::default();
    let builder = quick_retries(fast_builder(&config, &stream, &app, "w1"))
        .dead_letter(DeadLetterPolicy::new(3, sink.clone()));
    let worker = start_worker(builder, "w1", &log, poisoned()).await?;
    wait_for(
        "the checkpoint past the poison records",
        Duration::from_secs(30),
        || async {
            let at = checkpoint(&config, &app).await?;
            Ok((at.sequence_number() == Some(last_seq.as_str())).then_some(()))
        },
    )
    .await?;
    worker.stop().await?;
    sink.shutdown().await;

    // The dead-letter stream: one user record per poison record (deaggregated), its data
    // the envelope, its partition key the original one.
    let mut dead = Vec::new();
    for (_, record) in read_stream(&client, &dead_stream).await? {
        let key = record.partition_key().unwrap_or_default().to_owned();
        for user in kinesis_consumer::deaggregate(&key, None, Bytes::from(record.data.into_inner()))
        {
            assert_eq!(&*user.partition_key, "key");
            dead.push(DeadLetterEnvelope::from_json(&user.data)?);
        }
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (envelope, (data, seq)) in dead.iter().zip(&poison) {
        assert_eq!(&envelope.sequence_number, seq);
        assert_eq!(envelope.decoded_data()?, Some(data.to_vec()));
        assert_eq!(envelope.stream, stream);
        assert_eq!(envelope.shard_id, "shardId-000000000000");
        assert_eq!(envelope.partition_key, "key");
        assert_eq!(envelope.error, "poison record");
        assert_eq!(envelope.attempts, 3);
        assert!(envelope.approximate_arrival_timestamp_ms.is_some());
        assert!(!envelope.data_omitted);
    }
    for (data, _) in put.iter().filter(|p| !poison.contains(p)) {
        assert_eq!(delivery_count(&log, data), 1, "{data:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_a_failed_batch_is_read_again_from_the_checkpoint() -> TestResult {
    let Poisoned {
        config,
        stream,
        app,
        put,
        ..
    } = poisoned_stream("dl-none", 10, 1).await?;
    let (_, before_poison) = put[9].clone();

    // No policy: as after a panic, the shard consumer ends, and a new processor resumes
    // from the checkpoint (before the poison record) after a backoff, for ever.
    let metrics = recorder();
    let log = Log::default();
    let builder = quick_retries(fast_builder(&config, &stream, &app, "w1"));
    let worker = start_worker(builder, "w1", &log, poisoned()).await?;
    wait_for(
        "the poison record delivered 4 times",
        Duration::from_secs(30),
        || async { Ok((delivery_count(&log, &put[10].0) >= 4).then_some(())) },
    )
    .await?;
    worker.stop().await?;
    assert_eq!(
        checkpoint(&config, &app).await?.sequence_number(),
        Some(before_poison.as_str())
    );
    // The records before the poison one were checkpointed and never delivered again;
    // those after it are, with it.
    for (data, _) in &put[..10] {
        assert_eq!(delivery_count(&log, data), 1, "{data:?}");
    }
    assert!(delivery_count(&log, &put[11].0) >= 4);
    let initialized = log
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Initialized { .. }))
        .count();
    assert!(initialized >= 4, "a new processor each time: {initialized}");
    assert!(
        metrics.counter(
            "kinesis_consumer_record_processor_failures",
            &[("application", app.as_str()), ("reason", "batch_failed")]
        ) >= 3
    );
    Ok(())
}
