//! The consumer as a `Stream` (`SchedulerBuilder::build_shard_streams`) against the
//! emulators: the same results as the record processor tests. Nothing is lost and per-key
//! order holds through a split and a merge, parents end (checkpointed at `SHARD_END`)
//! before their children start; a lost lease ends the shard's stream and the shard comes
//! back in a new stream from the checkpoint; a graceful shutdown lets the batch being
//! processed finish, checkpoints where the stream's consumer checkpointed, and the next
//! worker resumes right after it; a dropped shard stream releases the lease without a
//! checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use integration_tests::kcl::{
    assert_per_key_order, fast_builder, fast_polling, keyed_records, leases, put_records,
    split_then_merge, Delivered, Log,
};
use integration_tests::{
    create_stream, list_shards, sdk_config, unique_name, wait_for, TestResult,
};
use kinesis_consumer::leases::{DynamoDbLeaseStore, LeaseStore};
use kinesis_consumer::shard_streams::{ShardEvent, ShardStream};
use kinesis_consumer::{
    ExtendedSequenceNumber, RetrievalMode, SchedulerBuilder, SchedulerError, ShutdownHandle,
};
use tokio::task::{JoinHandle, JoinSet};

/// What a shard stream's consumer saw and did.
#[derive(Clone, Debug, PartialEq, Eq)]
enum What {
    /// A shard stream, resuming from this checkpoint.
    Started(ExtendedSequenceNumber),
    /// A batch received, ending at this record.
    BatchReceived(Option<ExtendedSequenceNumber>),
    /// Done with that batch (checkpointed, when the consumer does), dropped next.
    BatchDone(Option<ExtendedSequenceNumber>),
    /// `ShardEnded`, checkpointed.
    ShardEnded,
    /// `ShutdownRequested`, checkpointed.
    ShutdownRequested,
    /// The stream yielded `None`; `after_final`: after `ShardEnded` or `ShutdownRequested`.
    Ended { after_final: bool },
    /// The consumer dropped the stream.
    Dropped,
}

#[derive(Clone, Debug)]
struct Entry {
    worker: String,
    shard: String,
    what: What,
}

/// Every consumer's entries, in one order.
#[derive(Clone, Debug, Default)]
struct Journal(Arc<Mutex<Vec<Entry>>>);

impl Journal {
    fn push(&self, worker: &str, shard: &str, what: What) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Entry {
                worker: worker.to_owned(),
                shard: shard.to_owned(),
                what,
            });
    }

    fn entries(&self) -> Vec<Entry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The entries of one shard, in order.
    fn of(&self, shard: &str) -> Vec<What> {
        self.entries()
            .into_iter()
            .filter(|e| e.shard == shard)
            .map(|e| e.what)
            .collect()
    }

    fn position(&self, wanted: impl Fn(&Entry) -> bool) -> Option<usize> {
        self.entries().iter().position(wanted)
    }
}

/// How a shard stream's consumer behaves.
#[derive(Clone, Copy, Debug)]
struct Behaviour {
    /// Checkpoint each batch once processed.
    checkpoint_every_batch: bool,
    /// Time spent processing each batch.
    batch_time: Duration,
    /// Drop the worker's first stream of each shard after this many batches.
    drop_first_stream_after: Option<usize>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            checkpoint_every_batch: true,
            batch_time: Duration::ZERO,
            drop_first_stream_after: None,
        }
    }
}

/// A worker consuming through shard streams, one task per shard stream.
struct StreamWorker {
    shutdown: ShutdownHandle,
    scheduler: JoinHandle<Result<(), SchedulerError>>,
    consumers: JoinHandle<()>,
}

impl StreamWorker {
    async fn start(
        builder: SchedulerBuilder,
        worker: &str,
        log: &Log,
        journal: &Journal,
        behaviour: Behaviour,
    ) -> TestResult<Self> {
        let (scheduler, mut shards) = builder.worker_id(worker).build_shard_streams().await?;
        let shutdown = scheduler.shutdown_handle();
        let scheduler = tokio::spawn(scheduler.run());
        let (worker, log, journal) = (worker.to_owned(), log.clone(), journal.clone());
        let consumers = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            let mut seen = std::collections::HashSet::new();
            while let Some(shard) = shards.next().await {
                let first = seen.insert(shard.shard_id().to_owned());
                let consumer = Consumer {
                    worker: worker.clone(),
                    log: log.clone(),
                    journal: journal.clone(),
                    behaviour,
                    first,
                };
                tasks.spawn(consumer.consume(shard));
            }
            // `shards` ended: the scheduler stopped, and so did every shard stream.
            while tasks.join_next().await.is_some() {}
        });
        Ok(StreamWorker {
            shutdown,
            scheduler,
            consumers,
        })
    }

    /// Graceful shutdown; waits for the scheduler and every shard stream's consumer.
    async fn stop(self) -> TestResult {
        self.shutdown.shutdown();
        self.scheduler.await??;
        tokio::time::timeout(Duration::from_secs(5), self.consumers).await??;
        Ok(())
    }
}

struct Consumer {
    worker: String,
    log: Log,
    journal: Journal,
    behaviour: Behaviour,
    /// The worker's first stream of this shard.
    first: bool,
}

impl Consumer {
    async fn consume(self, mut shard: ShardStream) {
        let id = shard.shard_id().to_owned();
        let note = |what| self.journal.push(&self.worker, &id, what);
        note(What::Started(shard.start().checkpoint.clone()));
        let mut after_final = false;
        let mut batches = 0;
        while let Some(event) = shard.next().await {
            match event {
                ShardEvent::Records(batch) => {
                    for r in &batch.records {
                        self.log.push_delivered(Delivered {
                            worker: self.worker.clone(),
                            shard: id.clone(),
                            sequence_number: r.sequence_number.to_string(),
                            sub_sequence_number: r.sub_sequence_number,
                            partition_key: r.partition_key.to_string(),
                            data: r.data.clone(),
                            aggregated: r.aggregated,
                            arrival: r.approximate_arrival_timestamp,
                            millis_behind_latest: batch.millis_behind_latest,
                            at: std::time::Instant::now(),
                        });
                    }
                    let last = batch.checkpointer.position().cloned();
                    note(What::BatchReceived(last.clone()));
                    tokio::time::sleep(self.behaviour.batch_time).await;
                    if self.behaviour.checkpoint_every_batch {
                        if let Err(error) = batch.checkpoint().await {
                            eprintln!("{} {id}: checkpoint failed: {error}", self.worker);
                        }
                    }
                    note(What::BatchDone(last));
                    batches += 1;
                    if self.first && self.behaviour.drop_first_stream_after == Some(batches) {
                        note(What::Dropped);
                        return;
                    }
                }
                ShardEvent::ShardEnded(end) => {
                    note(What::ShardEnded);
                    if let Err(error) = end.checkpoint().await {
                        eprintln!("{} {id}: shard end checkpoint failed: {error}", self.worker);
                    }
                    after_final = true;
                }
                ShardEvent::ShutdownRequested(shutdown) => {
                    note(What::ShutdownRequested);
                    if let Err(error) = shutdown.checkpoint().await {
                        eprintln!("{} {id}: shutdown checkpoint failed: {error}", self.worker);
                    }
                    after_final = true;
                }
            }
        }
        note(What::Ended { after_final });
    }
}

fn store(config: &aws_config::SdkConfig, app: &str) -> DynamoDbLeaseStore {
    DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(config), app)
}

/// How often each payload was delivered.
fn deliveries(log: &Log) -> BTreeMap<bytes::Bytes, usize> {
    let mut counts = BTreeMap::new();
    for delivered in log.delivered() {
        *counts.entry(delivered.data).or_insert(0) += 1;
    }
    counts
}

/// The last record delivered on each shard.
fn last_delivered(log: &Log) -> HashMap<String, ExtendedSequenceNumber> {
    log.delivered()
        .into_iter()
        .map(|d| {
            let position = ExtendedSequenceNumber::new(d.sequence_number, d.sub_sequence_number);
            (d.shard, position)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_through_shard_streams_keep_order_and_lose_nothing() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-stream-api");
    let app = unique_name("kcl-stream-api-app");
    create_stream(&kinesis, &stream, 2).await?;

    let (log, journal) = (Log::default(), Journal::default());
    let mut workers = Vec::new();
    for id in ["w1", "w2"] {
        let builder = fast_builder(&config, &stream, &app, id);
        workers.push(StreamWorker::start(builder, id, &log, &journal, Behaviour::default()).await?);
    }

    // A producer writing 20 keys, each key's payloads numbered in order.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (kinesis, stream) = (kinesis.clone(), stream.clone());
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut next: HashMap<usize, usize> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<(String, bytes::Bytes)> = (0..40)
                    .map(|i| {
                        let k = i % 20;
                        let n = next.entry(k).or_default();
                        *n += 1;
                        let data = format!("key-{k}:{:06}", *n - 1);
                        (format!("key-{k}"), bytes::Bytes::from(data))
                    })
                    .collect();
                put_records(&kinesis, &stream, &batch).await?;
                sent.fetch_add(batch.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            TestResult::Ok(())
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (parent, children) = split_then_merge(&kinesis, &stream).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await??;
    let total = sent.load(Ordering::SeqCst);

    wait_for(
        "every record delivered",
        Duration::from_secs(60),
        || async { Ok((log.distinct_payloads() >= total).then_some(())) },
    )
    .await?;
    assert_eq!(log.distinct_payloads(), total);
    assert_per_key_order(&log);

    // Every child's stream started only after each of its parents' streams ended with
    // `ShardEnded`, checkpointed.
    let all_shards = list_shards(&kinesis, &stream).await?;
    let mut parents_seen = 0;
    for shard in &all_shards {
        let child = shard.shard_id();
        let Some(started) =
            journal.position(|e| e.shard == child && matches!(e.what, What::Started(_)))
        else {
            continue;
        };
        let parents = shard
            .parent_shard_id()
            .into_iter()
            .chain(shard.adjacent_parent_shard_id())
            .filter(|p| all_shards.iter().any(|s| s.shard_id() == *p));
        for p in parents {
            parents_seen += 1;
            let ended = journal
                .position(|e| e.shard == p && e.what == What::ShardEnded)
                .ok_or(format!("{child} started but its parent {p} never ended"))?;
            assert!(
                ended < started,
                "{child} started before its parent {p} ended"
            );
        }
    }
    assert_eq!(
        parents_seen, 4,
        "two children of the split, two parents of the merge"
    );
    // Each closed shard's last stream ended after its ShardEnded.
    for shard in [&parent, &children[0], &children[1]] {
        let entries = journal.of(shard);
        assert!(
            entries.ends_with(&[What::ShardEnded, What::Ended { after_final: true }]),
            "{shard}: {entries:?}"
        );
    }

    // Finished leases (checkpointed at SHARD_END) are deleted once their children
    // started: only the untouched shard and the merged shard remain.
    let open: Vec<String> = all_shards
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .map(|s| s.shard_id().to_owned())
        .collect();
    assert_eq!(open.len(), 2);
    wait_for(
        "finished leases cleaned up",
        Duration::from_secs(20),
        || async {
            let mut keys: Vec<String> = leases(&config, &app)
                .await?
                .into_iter()
                .map(|l| l.lease_key)
                .collect();
            keys.sort();
            Ok((keys == open).then_some(()))
        },
    )
    .await?;
    for worker in workers {
        worker.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_ends_the_shard_stream_and_a_new_one_resumes_from_the_checkpoint() -> TestResult
{
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-stream-lost");
    let app = unique_name("kcl-stream-lost-app");
    create_stream(&kinesis, &stream, 1).await?;
    let first = keyed_records("first", 20, 4);
    put_records(&kinesis, &stream, &first).await?;

    let (log, journal) = (Log::default(), Journal::default());
    let builder = fast_builder(&config, &stream, &app, "w1");
    let worker = StreamWorker::start(builder, "w1", &log, &journal, Behaviour::default()).await?;
    let shard = list_shards(&kinesis, &stream).await?[0]
        .shard_id()
        .to_owned();
    let store = store(&config, &app);
    let lease = wait_for(
        "the first records delivered and checkpointed",
        Duration::from_secs(30),
        || async {
            let Some(last) = last_delivered(&log).remove(&shard) else {
                return Ok(None);
            };
            let lease = store.get_lease(&shard).await?.ok_or("no lease")?;
            Ok((log.distinct_payloads() == 20 && lease.checkpoint == last).then_some(lease))
        },
    )
    .await?;

    // Another worker takes the lease: the holder loses it at its next renewal.
    store.take_lease(&lease, "thief").await?;
    wait_for(
        "the shard stream ended",
        Duration::from_secs(10),
        || async {
            Ok(journal
                .of(&shard)
                .iter()
                .any(|w| matches!(w, What::Ended { .. }))
                .then_some(()))
        },
    )
    .await?;
    let entries = journal.of(&shard);
    assert_eq!(
        entries.last(),
        Some(&What::Ended { after_final: false }),
        "ended without a final event: {entries:?}"
    );
    assert!(!entries
        .iter()
        .any(|w| matches!(w, What::ShardEnded | What::ShutdownRequested)));

    // The thief never renews: its lease expires, the worker takes the shard again, in a
    // new stream resuming right after the checkpoint.
    let second = keyed_records("second", 20, 4);
    put_records(&kinesis, &stream, &second).await?;
    wait_for(
        "every record delivered",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() == 40).then_some(())) },
    )
    .await?;
    let starts: Vec<ExtendedSequenceNumber> = journal
        .of(&shard)
        .into_iter()
        .filter_map(|w| match w {
            What::Started(at) => Some(at),
            _ => None,
        })
        .collect();
    assert_eq!(
        starts,
        vec![
            ExtendedSequenceNumber::trim_horizon(),
            lease.checkpoint.clone()
        ]
    );
    assert!(
        deliveries(&log).values().all(|&n| n == 1),
        "resumed after the checkpoint: nothing delivered twice"
    );
    assert_per_key_order(&log);
    worker.stop().await?;
    Ok(())
}

/// A worker processing slowly, checkpointing only when asked to shut down: the batch
/// being processed when the shutdown comes is finished and covered by the last
/// checkpoint, which is where the next worker resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_drains_and_the_next_worker_resumes_after_it() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-stream-drain");
    let app = unique_name("kcl-stream-drain-app");
    create_stream(&kinesis, &stream, 2).await?;
    let records = keyed_records("drain", 200, 8);
    put_records(&kinesis, &stream, &records).await?;
    let small_batches = || {
        let mut polling = fast_polling();
        polling.max_records = 10;
        RetrievalMode::Polling(polling)
    };

    let (log, journal) = (Log::default(), Journal::default());
    let slow = Behaviour {
        checkpoint_every_batch: false,
        batch_time: Duration::from_millis(500),
        ..Behaviour::default()
    };
    let builder = fast_builder(&config, &stream, &app, "w1").retrieval_mode(small_batches());
    let w1 = StreamWorker::start(builder, "w1", &log, &journal, slow).await?;
    // Shut down while a batch is being processed, after a few.
    let (in_flight_shard, in_flight) = wait_for(
        "a batch being processed",
        Duration::from_secs(30),
        || async {
            let entries = journal.entries();
            if entries
                .iter()
                .filter(|e| matches!(e.what, What::BatchDone(_)))
                .count()
                < 3
            {
                return Ok(None);
            }
            Ok(match entries.last() {
                Some(Entry {
                    shard,
                    what: What::BatchReceived(Some(last)),
                    ..
                }) => Some((shard.clone(), last.clone())),
                _ => None,
            })
        },
    )
    .await?;
    w1.stop().await?;

    let received = last_delivered(&log);
    assert!(
        log.distinct_payloads() < records.len(),
        "w1 stopped before consuming everything"
    );
    let table = leases(&config, &app).await?;
    assert_eq!(table.len(), 2);
    for lease in &table {
        let entries = journal.of(&lease.lease_key);
        // Drained: every batch done before the shutdown request, and none after it.
        let request = entries
            .iter()
            .position(|w| *w == What::ShutdownRequested)
            .ok_or(format!(
                "{}: no shutdown request: {entries:?}",
                lease.lease_key
            ))?;
        assert_eq!(
            &entries[request..],
            &[What::ShutdownRequested, What::Ended { after_final: true }]
        );
        if let Some(What::BatchReceived(last)) = entries[..request]
            .iter()
            .rev()
            .find(|w| matches!(w, What::BatchReceived(_)))
        {
            assert!(entries[..request].contains(&What::BatchDone(last.clone())));
        }
        // The last checkpoint is where the stream's consumer checkpointed: the last record
        // it received.
        let expected = received
            .get(&lease.lease_key)
            .cloned()
            .unwrap_or_else(ExtendedSequenceNumber::trim_horizon);
        assert_eq!(lease.checkpoint, expected, "{}", lease.lease_key);
        assert_eq!(lease.lease_owner, None, "released");
    }
    // The batch being processed when the shutdown was asked for was finished first.
    let entries = journal.of(&in_flight_shard);
    let finished = entries
        .iter()
        .position(|w| *w == What::BatchDone(Some(in_flight.clone())))
        .ok_or("the batch in flight was not finished")?;
    let request = entries
        .iter()
        .position(|w| *w == What::ShutdownRequested)
        .ok_or("no shutdown request")?;
    assert!(finished < request, "{entries:?}");

    // The next worker resumes right after w1's checkpoints: every record once.
    let builder = fast_builder(&config, &stream, &app, "w2").retrieval_mode(small_batches());
    let w2 = StreamWorker::start(builder, "w2", &log, &journal, Behaviour::default()).await?;
    wait_for(
        "every record delivered",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() == records.len()).then_some(())) },
    )
    .await?;
    w2.stop().await?;
    for entry in journal.entries() {
        if let (true, What::Started(at)) = (entry.worker == "w2", &entry.what) {
            let table_then = table
                .iter()
                .find(|l| l.lease_key == entry.shard)
                .ok_or("unknown shard")?;
            assert_eq!(*at, table_then.checkpoint, "{}", entry.shard);
        }
    }
    assert_eq!(
        log.delivered().len(),
        records.len(),
        "nothing delivered twice"
    );
    assert_per_key_order(&log);
    Ok(())
}

/// A consumer that drops its shard stream: the batch it never received is not
/// checkpointed, the lease is released, and the shard comes back in a new stream from the
/// last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_shard_stream_releases_the_lease_and_the_shard_resumes() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-stream-dropped");
    let app = unique_name("kcl-stream-dropped-app");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("dropped", 40, 4);
    put_records(&kinesis, &stream, &records).await?;
    let shard = list_shards(&kinesis, &stream).await?[0]
        .shard_id()
        .to_owned();

    let (log, journal) = (Log::default(), Journal::default());
    let mut polling = fast_polling();
    polling.max_records = 10;
    let builder =
        fast_builder(&config, &stream, &app, "w1").retrieval_mode(RetrievalMode::Polling(polling));
    let dropping = Behaviour {
        drop_first_stream_after: Some(2),
        ..Behaviour::default()
    };
    let worker = StreamWorker::start(builder, "w1", &log, &journal, dropping).await?;
    wait_for(
        "every record delivered",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() == records.len()).then_some(())) },
    )
    .await?;
    worker.stop().await?;

    let entries = journal.of(&shard);
    let dropped = entries
        .iter()
        .position(|w| *w == What::Dropped)
        .ok_or("not dropped")?;
    let Some(What::BatchDone(Some(checkpointed))) = entries[..dropped].last().cloned() else {
        return Err(format!("no batch before the drop: {entries:?}").into());
    };
    let starts: Vec<&ExtendedSequenceNumber> = entries
        .iter()
        .filter_map(|w| match w {
            What::Started(at) => Some(at),
            _ => None,
        })
        .collect();
    assert_eq!(starts[0], &ExtendedSequenceNumber::trim_horizon());
    assert_eq!(
        starts.get(1),
        Some(&&checkpointed),
        "resumed from the checkpoint"
    );
    assert!(
        deliveries(&log).values().all(|&n| n == 1),
        "the batch nobody received was not checkpointed, nor delivered twice"
    );
    assert_per_key_order(&log);
    Ok(())
}
