//! One held lease's life: initialize the processor, deliver batches, then shard end, lease
//! loss or shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::types::{ChildShard, Record};
use bytes::Bytes;
use kinesis_aggregation::{HashKey, UserRecord};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::dead_letter::{
    panic_message, retry_delays, DeadLetterBatch, DeadLetterPolicy, DeadLetterRecord,
    ProcessingError,
};
use crate::lease::{ExtendedSequenceNumber, SequencePosition};
use crate::leases::HeldLease;
use crate::metrics::ShardMetrics;
use crate::processor::{
    InitializeInput, KinesisClientRecord, LeaseLostInput, ProcessRecordsInput, RecordProcessor,
    ShardEndedInput, ShutdownRequestedInput,
};
use crate::retrieval::{
    FanOutConfig, FanOutFetcher, FetchError, FetchOptions, PollingConfig, PollingFetcher,
    StartingPosition,
};

/// How a shard consumer reads its shard, resolved when the scheduler was built.
#[derive(Clone, Debug)]
pub(crate) enum Retrieval {
    /// GetRecords polling.
    Polling(PollingConfig),
    /// SubscribeToShard through the registered consumer.
    FanOut {
        /// The registered stream consumer.
        consumer_arn: String,
        /// Read-ahead and shard end check.
        config: FanOutConfig,
    },
}

/// How a shard consumer finished.
#[derive(Debug)]
pub(crate) enum ShardOutcome {
    /// The shard ended and the processor checkpointed `SHARD_END`.
    Ended(Vec<ChildShard>),
    /// The shard ended but the processor did not checkpoint `SHARD_END`.
    EndNotCheckpointed,
    /// The shard cannot be read (see [`FetchError`]).
    ReadFailed(FetchError),
    /// The lease was lost.
    LeaseLost,
    /// Graceful shutdown finished.
    Shutdown,
    /// The processor failed on a batch, and there is no dead-letter policy: the shard is
    /// consumed again from its last checkpoint after a backoff.
    BatchFailed,
}

pub(crate) struct ShardConsumer {
    pub held: Arc<HeldLease>,
    pub processor: Box<dyn RecordProcessor>,
    pub client: aws_sdk_kinesis::Client,
    pub stream: crate::stream::StreamRef,
    pub retrieval: Retrieval,
    pub options: FetchOptions,
    pub initial_timestamp: Option<SystemTime>,
    pub shutdown: watch::Receiver<bool>,
    /// When to give up on a failing batch, and where it goes.
    pub dead_letter: Option<DeadLetterPolicy>,
    /// The application name, for dead-lettered batches.
    pub application: String,
    /// The backoff between attempts of a failing batch (`failure_backoff`).
    pub retry_backoff: (Duration, Duration),
}

/// The shard's hash key range, when the lease knows it.
fn hash_range(lease: &crate::lease::Lease) -> Option<(HashKey, HashKey)> {
    let (start, end) = lease.hash_key_range.as_ref()?;
    Some((start.parse().ok()?, end.parse().ok()?))
}

/// Turns Kinesis records into user records, skipping those at or before `skip` (a
/// checkpoint inside an aggregate).
///
/// A KPL aggregate any of whose user records hashes outside the shard's `range` is dropped
/// whole, with a warning and counted in `dropped` (the metric
/// `kinesis_consumer_aggregates_dropped`), as AWS's KCL does: a producer
/// whose shard map was stale during a reshard put it on a shard that does not own all of
/// its records, and a KPL-style producer (AWS's, or `kinesis-producer`) sends every record
/// of such an aggregate again, each to its right shard. Delivering the records that do
/// belong here would duplicate them. An aggregate whose records all lie inside the range
/// is delivered, and the producers count it as delivered, so the pair loses nothing and
/// duplicates nothing. Plain records are never dropped: Kinesis put them where their key
/// belongs.
pub(crate) fn user_records(
    records: Vec<Record>,
    skip: Option<&ExtendedSequenceNumber>,
    range: Option<(HashKey, HashKey)>,
    dropped: &metrics::Counter,
) -> Vec<KinesisClientRecord> {
    let mut out = Vec::with_capacity(records.len());
    let mut keys_inside = KeysInside::new();
    for record in records {
        let arrival = record
            .approximate_arrival_timestamp()
            .and_then(|t| SystemTime::try_from(*t).ok());
        let sequence_number: Arc<str> = Arc::from(record.sequence_number());
        let partition_key = record.partition_key().unwrap_or_default().to_owned();
        let data = Bytes::from(record.data.into_inner());
        let users = kinesis_aggregation::deaggregate(&partition_key, None, data);
        if let Some(range) = range {
            let outside = outside_range(&users, range, &mut keys_inside);
            if outside > 0 {
                tracing::warn!(
                    sequence_number = %sequence_number,
                    user_records = users.len(),
                    outside,
                    "dropping a KPL aggregate with user records outside this shard's hash range \
                     (its producer sends them again to the right shards)"
                );
                dropped.increment(1);
                continue;
            }
        }
        for user in users {
            if let Some(skip) = skip {
                if skip.sequence_number() == Some(&*sequence_number)
                    && user.sub_sequence_number <= skip.sub_sequence_number
                {
                    continue;
                }
            }
            out.push(KinesisClientRecord {
                sequence_number: sequence_number.clone(),
                sub_sequence_number: user.sub_sequence_number,
                partition_key: user.partition_key,
                explicit_hash_key: user.explicit_hash_key.as_deref().map(str::to_owned),
                approximate_arrival_timestamp: arrival,
                data: user.data,
                aggregated: user.aggregated,
            });
        }
    }
    out
}

/// Whether each partition key seen so far hashes inside the shard's range: a key is
/// hashed once per batch, not once per user record. Producers reuse keys (an aggregate
/// has one key table, and a batch holds many aggregates of the same keys); the MD5 of
/// every record's key was ~7% of the CPU of consuming aggregated records.
type KeysInside = HashMap<Arc<str>, bool>;

/// How many of an aggregate's user records hash outside the shard's hash key range
/// (explicit hash keys take precedence over partition keys, as in Kinesis).
fn outside_range(
    users: &[UserRecord],
    (start, end): (HashKey, HashKey),
    keys_inside: &mut KeysInside,
) -> usize {
    let inside = |key: HashKey| start <= key && key <= end;
    users
        .iter()
        .filter(|user| user.aggregated)
        .filter(
            |user| match user.explicit_hash_key.as_deref().map(str::parse::<HashKey>) {
                Some(Ok(key)) => !inside(key),
                _ => match keys_inside.get(&*user.partition_key) {
                    Some(&known) => !known,
                    None => {
                        let known = inside(HashKey::from_partition_key(&user.partition_key));
                        keys_inside.insert(user.partition_key.clone(), known);
                        !known
                    }
                },
            },
        )
        .count()
}

impl ShardConsumer {
    /// Runs the processor until the shard ends, the lease is lost or a shutdown is
    /// requested. A processor panic unwinds out of here (the scheduler sees the task
    /// fail).
    pub(crate) async fn run(mut self) -> ShardOutcome {
        let shard_id = self.held.key().to_owned();
        let lease = self.held.copy();
        if lease.is_finished() {
            return ShardOutcome::Ended(Vec::new());
        }
        if self.held.is_lost() {
            return ShardOutcome::LeaseLost;
        }
        let checkpointer = Checkpointer::new(self.held.clone());
        self.processor
            .initialize(InitializeInput {
                shard_id: shard_id.clone(),
                checkpoint: lease.checkpoint.clone(),
                pending_checkpoint: lease.pending_checkpoint.clone(),
                pending_checkpoint_state: lease.pending_checkpoint_state.clone(),
            })
            .await;

        // Resume AT the checkpointed record and drop its user records up to the
        // checkpointed sub-sequence: this is right for plain records and for a checkpoint
        // anywhere inside an aggregate (AFTER would lose the rest of an aggregate
        // checkpointed at sub-sequence 0).
        let (start, skip) = match &lease.checkpoint.position {
            SequencePosition::Sequence(seq) => (
                StartingPosition::AtSequenceNumber(seq.clone()),
                Some(lease.checkpoint.clone()),
            ),
            SequencePosition::Latest => (StartingPosition::Latest, None),
            SequencePosition::AtTimestamp => (
                self.initial_timestamp
                    .map(StartingPosition::AtTimestamp)
                    .unwrap_or(StartingPosition::TrimHorizon),
                None,
            ),
            SequencePosition::TrimHorizon | SequencePosition::ShardEnd => {
                (StartingPosition::TrimHorizon, None)
            }
        };
        let mut tasks = JoinSet::new();
        let mut batches = match &self.retrieval {
            Retrieval::Polling(config) => PollingFetcher::new(
                self.client.clone(),
                self.stream.clone(),
                shard_id.clone(),
                config.clone(),
                self.options.clone(),
                self.held.metrics().clone(),
            )
            .spawn(start, &mut tasks),
            Retrieval::FanOut {
                consumer_arn,
                config,
            } => FanOutFetcher::new(
                self.client.clone(),
                self.stream.clone(),
                consumer_arn.clone(),
                shard_id.clone(),
                config.clone(),
                self.options.clone(),
                self.held.metrics().clone(),
            )
            .spawn(start, &mut tasks),
        };
        let mut skip = skip;
        let range = hash_range(&lease);
        let metrics = ShardMetrics::new(self.held.metrics());
        let held = self.held.clone();

        loop {
            let batch = tokio::select! {
                biased;
                _ = held.lost() => None,
                _ = async { self.shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => {
                    self.processor
                        .shutdown_requested(ShutdownRequestedInput {
                            shard_id,
                            checkpointer: checkpointer.clone(),
                        })
                        .await;
                    return ShardOutcome::Shutdown;
                }
                batch = batches.recv() => Some(batch),
            };
            // Past the lease's local deadline nothing more reaches the processor, even a
            // batch that was already waiting.
            let batch = match batch {
                Some(_) | None if held.is_lost() => {
                    self.processor.lease_lost(LeaseLostInput { shard_id }).await;
                    return ShardOutcome::LeaseLost;
                }
                None => continue,
                Some(batch) => batch,
            };
            let batch = match batch {
                None => {
                    tracing::error!(shard = %shard_id, "record fetcher stopped unexpectedly");
                    return ShardOutcome::EndNotCheckpointed;
                }
                Some(Err(error)) => return ShardOutcome::ReadFailed(error),
                Some(Ok(batch)) => batch,
            };
            let records = user_records(
                batch.records,
                skip.as_ref(),
                range,
                &metrics.aggregates_dropped,
            );
            skip = None;
            if !records.is_empty()
                || (self.options.deliver_empty_batches && batch.shard_end.is_none())
            {
                let processed = self
                    .process_batch(
                        &shard_id,
                        records,
                        batch.millis_behind_latest,
                        &checkpointer,
                        &metrics,
                    )
                    .await;
                match processed {
                    Ok(()) => {}
                    Err(Interrupted::LeaseLost) => {
                        self.processor.lease_lost(LeaseLostInput { shard_id }).await;
                        return ShardOutcome::LeaseLost;
                    }
                    Err(Interrupted::Shutdown) => {
                        self.processor
                            .shutdown_requested(ShutdownRequestedInput {
                                shard_id,
                                checkpointer: checkpointer.clone(),
                            })
                            .await;
                        return ShardOutcome::Shutdown;
                    }
                    Err(Interrupted::Failed) => return ShardOutcome::BatchFailed,
                }
            }
            if let Some(children) = batch.shard_end {
                if held.is_lost() {
                    continue;
                }
                checkpointer.set_shard_ended();
                self.processor
                    .shard_ended(ShardEndedInput {
                        shard_id: shard_id.clone(),
                        checkpointer: checkpointer.clone(),
                    })
                    .await;
                if checkpointer.lease().is_finished() {
                    return ShardOutcome::Ended(children);
                }
                if held.is_lost() {
                    continue;
                }
                tracing::error!(
                    shard = %shard_id,
                    "the record processor did not checkpoint in shard_ended: the shard is \
                     not finished, its children cannot start, and it will be consumed \
                     again from its last checkpoint"
                );
                return ShardOutcome::EndNotCheckpointed;
            }
        }
    }
}

/// What waiting between attempts needs, apart from the (not `Sync`) processor.
#[derive(Clone)]
struct Retries {
    held: Arc<HeldLease>,
    shutdown: watch::Receiver<bool>,
    backoff: (Duration, Duration),
}

impl Retries {
    /// The next delay of a backoff, started on first use.
    fn next_delay(
        &self,
        delays: &mut Option<Box<dyn Iterator<Item = Duration> + Send>>,
    ) -> Duration {
        let (min, max) = self.backoff;
        delays
            .get_or_insert_with(|| Box::new(retry_delays(min, max)))
            .next()
            .unwrap_or(max)
    }

    /// Sleeps, unless the lease is lost or a shutdown is requested first.
    async fn wait(&self, delay: Duration) -> Result<(), Interrupted> {
        let held = self.held.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            biased;
            _ = held.lost() => Err(Interrupted::LeaseLost),
            _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => Err(Interrupted::Shutdown),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// Why a batch was left unfinished.
enum Interrupted {
    /// The lease was lost (or passed its local deadline).
    LeaseLost,
    /// A graceful shutdown (or handoff) was requested.
    Shutdown,
    /// The batch failed and there is no dead-letter policy.
    Failed,
}

impl ShardConsumer {
    /// Hands one batch to the processor. Without a [`DeadLetterPolicy`], a failed batch is
    /// `Err(Failed)`: the shard consumer ends as after a panic, and the scheduler starts it
    /// again from the last checkpoint after a backoff (so no copy of the batch is kept).
    /// With one, until every record of the batch is processed or dead-lettered: the records
    /// an attempt failed on are delivered again after a backoff (`failure_backoff`), and
    /// after the last attempt handed to the policy's sink, after which the shard is
    /// checkpointed past the batch. Meanwhile nothing from the first failed record on can
    /// be checkpointed. `Err` also when the lease was lost or a shutdown was requested
    /// while the batch was unfinished.
    async fn process_batch(
        &mut self,
        shard_id: &str,
        records: Vec<KinesisClientRecord>,
        millis_behind_latest: Option<i64>,
        checkpointer: &Checkpointer,
        metrics: &ShardMetrics,
    ) -> Result<(), Interrupted> {
        let before = checkpointer.last_delivered();
        let batch_last = records.last().map(KinesisClientRecord::position);
        if let Some(last) = &batch_last {
            checkpointer.delivered(last.clone());
        }
        let policy = self.dead_letter.clone();
        // Kept for the retries (with a policy only): the records an attempt failed on are
        // indexes into it.
        let original = match policy {
            Some(_) => records.clone(),
            None => Vec::new(),
        };
        let mut next = Some(records);
        let mut pending: Vec<usize> = (0..original.len()).collect();
        let retries = Retries {
            held: self.held.clone(),
            shutdown: self.shutdown.clone(),
            backoff: self.retry_backoff,
        };
        let mut delays = None;
        let mut attempt = 0_u32;
        loop {
            attempt += 1;
            let records = next
                .take()
                .unwrap_or_else(|| pending.iter().map(|&i| original[i].clone()).collect());
            let count = records.len() as u64;
            let bytes = records.iter().map(|r| r.data.len() as u64).sum();
            if attempt == 1 {
                self.held.record_delivered(bytes);
            }
            let input = ProcessRecordsInput {
                records,
                millis_behind_latest,
                checkpointer: checkpointer.clone(),
                attempt,
            };
            let started = std::time::Instant::now();
            let (result, reason) = if policy.is_some() {
                // With a policy a panic is one failed attempt (without one it unwinds to
                // the scheduler, which retries the shard from its checkpoint).
                let call = std::panic::AssertUnwindSafe(self.processor.process_records(input));
                match futures::FutureExt::catch_unwind(call).await {
                    Ok(result) => (result, "error"),
                    Err(panic) => (
                        Err(ProcessingError::batch(format!(
                            "process_records panicked: {}",
                            panic_message(&*panic)
                        ))),
                        "panic",
                    ),
                }
            } else {
                (self.processor.process_records(input).await, "error")
            };
            metrics.batch_processed(count, bytes, millis_behind_latest, started.elapsed());
            let error = match result {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            metrics.batch_failed(reason);
            if batch_last.is_none() {
                tracing::warn!(shard = %shard_id, %error, "the record processor failed on a batch without records: nothing to deliver again");
                return Ok(());
            }
            let Some(policy) = &policy else {
                // Nothing of this batch may be checkpointed any more.
                checkpointer.delivered_up_to(before);
                tracing::error!(shard = %shard_id, %error, "the record processor failed on a batch; without a dead-letter policy the shard is consumed again from its last checkpoint after a backoff");
                return Err(Interrupted::Failed);
            };
            let named: Vec<usize> = if error.is_whole_batch() {
                Vec::new()
            } else {
                let failed: std::collections::HashSet<&ExtendedSequenceNumber> =
                    error.failed_records().iter().map(|f| &f.position).collect();
                pending
                    .iter()
                    .copied()
                    .filter(|&i| failed.contains(&original[i].position()))
                    .collect()
            };
            if named.is_empty() && !error.is_whole_batch() {
                tracing::warn!(shard = %shard_id, %error, "the processing error names no record of the batch: the whole batch counts as failed");
            }
            if !named.is_empty() {
                pending = named;
            }
            // Nothing from the first failed record on may be checkpointed.
            let first = pending[0];
            checkpointer.delivered_up_to(match first {
                0 => before.clone(),
                _ => Some(original[first - 1].position()),
            });
            if attempt >= policy.max_attempts() {
                let batch = DeadLetterBatch {
                    application: self.application.clone(),
                    stream: self.stream.name().to_owned(),
                    shard_id: shard_id.to_owned(),
                    records: pending
                        .iter()
                        .map(|&i| {
                            let record = original[i].clone();
                            let error = error.error_of(&record.position()).to_owned();
                            DeadLetterRecord::new(record, error)
                        })
                        .collect(),
                    attempts: attempt,
                    error: error.to_string(),
                    dead_lettered_at: SystemTime::now(),
                };
                dead_letter(&retries, policy, &batch, metrics).await?;
                if let Some(last) = batch_last {
                    checkpoint_past(shard_id, checkpointer, last).await?;
                }
                return Ok(());
            }
            let delay = retries.next_delay(&mut delays);
            tracing::warn!(
                shard = %shard_id,
                attempt,
                max_attempts = policy.max_attempts(),
                failed_records = pending.len(),
                %error,
                retry_in = ?delay,
                "the record processor failed on a batch; delivering its failed records again after a backoff"
            );
            retries.wait(delay).await?;
        }
    }
}

/// Hands a batch to the policy's sink until it takes it (a backoff between calls).
async fn dead_letter(
    retries: &Retries,
    policy: &DeadLetterPolicy,
    batch: &DeadLetterBatch,
    metrics: &ShardMetrics,
) -> Result<(), Interrupted> {
    let held = retries.held.clone();
    let mut delays = None;
    loop {
        let stored = tokio::select! {
            biased;
            _ = held.lost() => return Err(Interrupted::LeaseLost),
            stored = policy.sink().dead_letter(batch) => stored,
        };
        metrics.dead_letter_call(stored.is_ok());
        match stored {
            Ok(()) => {
                metrics.dead_lettered(batch.records.len() as u64);
                let first = batch.records.first().map(|r| r.record.position());
                let last = batch.records.last().map(|r| r.record.position());
                tracing::warn!(
                    stream = %batch.stream,
                    shard = %batch.shard_id,
                    records = batch.records.len(),
                    first = %first.unwrap_or_else(ExtendedSequenceNumber::trim_horizon),
                    last = %last.unwrap_or_else(ExtendedSequenceNumber::trim_horizon),
                    attempts = batch.attempts,
                    error = %batch.error,
                    "dead-lettered the failed records of a batch; checkpointing past the batch"
                );
                return Ok(());
            }
            Err(error) => {
                let delay = retries.next_delay(&mut delays);
                tracing::error!(
                    shard = %batch.shard_id,
                    records = batch.records.len(),
                    error = %crate::ErrorChain::new(&*error),
                    retry_in = ?delay,
                    "the dead-letter sink failed: the batch is not checkpointed past and is handed to the sink again after a backoff"
                );
                retries.wait(delay).await?;
            }
        }
    }
}

/// Checkpoints at the last record of a dead-lettered batch.
async fn checkpoint_past(
    shard_id: &str,
    checkpointer: &Checkpointer,
    last: ExtendedSequenceNumber,
) -> Result<(), Interrupted> {
    checkpointer.delivered(last.clone());
    let Some(sequence_number) = last.sequence_number() else {
        return Ok(());
    };
    match checkpointer
        .checkpoint_at(sequence_number, last.sub_sequence_number)
        .await
    {
        // Invalid: the processor already checkpointed there or further.
        Ok(()) | Err(CheckpointError::InvalidSequence { .. }) => Ok(()),
        Err(CheckpointError::LeaseLost(_)) => Err(Interrupted::LeaseLost),
        Err(error) => {
            tracing::warn!(shard = %shard_id, checkpoint = %last, error = %crate::ErrorChain::new(&error), "checkpoint past a dead-lettered batch failed; the next checkpoint covers it (a new holder before it would dead-letter the batch again)");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;
    use kinesis_aggregation::AggregateBuilder;
    use metrics::Counter;

    fn record(seq: &str, key: &str, data: Bytes) -> Record {
        Record::builder()
            .sequence_number(seq)
            .partition_key(key)
            .data(Blob::new(data.to_vec()))
            .build()
            .unwrap()
    }

    #[test]
    fn deaggregates_and_skips_up_to_the_checkpointed_sub_sequence() {
        let mut builder = AggregateBuilder::new();
        for i in 0..4 {
            builder.push(&format!("k{i}"), None, Bytes::from(format!("u{i}")));
        }
        let aggregate = builder.finish().unwrap();
        let records = vec![
            record("100", "plain", Bytes::from_static(b"p")),
            record("200", &aggregate.partition_key, aggregate.data.clone()),
            record("300", "plain", Bytes::from_static(b"q")),
        ];
        let all = user_records(records.clone(), None, None, &Counter::noop());
        assert_eq!(all.len(), 6);
        assert_eq!(
            all.iter()
                .map(|r| r.sub_sequence_number)
                .collect::<Vec<_>>(),
            vec![0, 0, 1, 2, 3, 0]
        );
        assert_eq!(&*all[3].partition_key, "k2");
        assert!(all[2].aggregated && !all[0].aggregated);

        let skip = ExtendedSequenceNumber::new("200", 1);
        let rest = user_records(records[1..].to_vec(), Some(&skip), None, &Counter::noop());
        assert_eq!(
            rest.iter()
                .map(|r| (&*r.sequence_number, r.sub_sequence_number))
                .collect::<Vec<_>>(),
            vec![("200", 2), ("200", 3), ("300", 0)]
        );
        // A plain record checkpointed (sub 0) is skipped when re-read with AT.
        let skip = ExtendedSequenceNumber::new("100", 0);
        assert_eq!(
            user_records(records[..1].to_vec(), Some(&skip), None, &Counter::noop()).len(),
            0
        );
    }

    #[test]
    fn corrupt_aggregates_are_delivered_raw() {
        let mut builder = AggregateBuilder::new();
        builder.push("a", None, Bytes::from_static(b"one"));
        builder.push("b", None, Bytes::from_static(b"two"));
        let mut data = builder.finish().unwrap().data.to_vec();
        let last = data.len() - 1;
        data[last] ^= 0xff; // bad MD5
        let out = user_records(
            vec![record("1", "pk", Bytes::from(data.clone()))],
            None,
            None,
            &Counter::noop(),
        );
        assert_eq!(out.len(), 1);
        assert!(!out[0].aggregated);
        assert_eq!(&*out[0].partition_key, "pk");
        assert_eq!(out[0].data, Bytes::from(data));
    }

    /// Keys hashed once per batch count the same as every record hashed: repeated
    /// keys, explicit hash keys (which take precedence) and plain records.
    #[test]
    fn records_outside_the_range_are_counted_per_record() {
        let lower_half = (HashKey(0), HashKey(u128::MAX / 2));
        let mut builder = AggregateBuilder::new();
        for i in 0..300 {
            let key = format!("key-{}", i % 7);
            let explicit = (i % 5 == 0).then_some(HashKey((i as u128) << 120));
            builder.push(&key, explicit, Bytes::from_static(b"x"));
        }
        let aggregate = builder.finish().unwrap();
        let users = kinesis_aggregation::deaggregate("pk", None, aggregate.data);
        assert_eq!(users.len(), 300);
        let naive = users
            .iter()
            .filter(|user| {
                let key = match user.explicit_hash_key.as_deref() {
                    Some(key) => key.parse().unwrap(),
                    None => HashKey::from_partition_key(&user.partition_key),
                };
                key > lower_half.1
            })
            .count();
        assert!(naive > 0 && naive < 300);
        let mut keys = KeysInside::new();
        assert_eq!(outside_range(&users, lower_half, &mut keys), naive);
        assert_eq!(keys.len(), 7);
        // Again, with every key known.
        assert_eq!(outside_range(&users, lower_half, &mut keys), naive);
        let all = (HashKey::MIN, HashKey::MAX);
        assert_eq!(outside_range(&users, all, &mut KeysInside::new()), 0);
        let plain = kinesis_aggregation::deaggregate("pk", None, Bytes::from_static(b"p"));
        let none = (HashKey(0), HashKey(0));
        assert_eq!(outside_range(&plain, none, &mut KeysInside::new()), 0);
    }

    /// As AWS's KCL: an aggregate with any user record outside the shard's hash range is
    /// dropped whole (the producer sends all of its records again), with a metric; an
    /// aggregate entirely inside is delivered; a plain record is never dropped.
    #[test]
    fn an_aggregate_with_a_record_outside_the_shard_is_dropped_whole() {
        let lower_half = (HashKey(0), HashKey(u128::MAX / 2));
        let keys: Vec<String> = (0..50).map(|i| format!("key-{i}")).collect();
        let (inside, outside): (Vec<&String>, Vec<&String>) = keys
            .iter()
            .partition(|k| HashKey::from_partition_key(k) <= lower_half.1);
        assert!(inside.len() > 5 && outside.len() > 5);
        let aggregate = |keys: &[&String]| {
            let mut builder = AggregateBuilder::new();
            for key in keys {
                builder.push(key, None, Bytes::from_static(b"x"));
            }
            builder.finish().unwrap()
        };
        let mixed = aggregate(&keys.iter().collect::<Vec<_>>());
        let all_inside = aggregate(&inside);
        let records = vec![
            record("1", &mixed.partition_key, mixed.data.clone()),
            record("2", "plain", Bytes::from_static(b"p")),
            record("3", &all_inside.partition_key, all_inside.data.clone()),
        ];
        let recorder = crate::test_util::CountingRecorder::new();
        let kept = metrics::with_local_recorder(&recorder, || {
            let shard = crate::metrics::WorkerLabels::new("app", "w1")
                .stream("orders")
                .shard("shardId-0");
            let dropped = shard.counter(crate::metrics::AGGREGATES_DROPPED);
            user_records(records, None, Some(lower_half), &dropped)
        });
        let delivered: Vec<(&str, &str)> = kept
            .iter()
            .map(|r| (&*r.sequence_number, &*r.partition_key))
            .collect();
        let expected: Vec<(&str, &str)> = std::iter::once(("2", "plain"))
            .chain(inside.iter().map(|k| ("3", k.as_str())))
            .collect();
        assert_eq!(delivered, expected);
        assert_eq!(
            recorder.counter(
                "kinesis_consumer_aggregates_dropped",
                &[
                    ("application", "app"),
                    ("stream", "orders"),
                    ("shard", "shardId-0")
                ]
            ),
            1
        );
    }
}
