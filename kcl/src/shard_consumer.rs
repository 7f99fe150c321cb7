//! One held lease's life: initialize the processor, deliver batches, then shard end, lease
//! loss or shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_kinesis::types::{ChildShard, Record};
use bytes::Bytes;
use kinesis_aggregation::{HashKey, UserRecord};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checkpoint::Checkpointer;
use crate::lease::{ExtendedSequenceNumber, SequencePosition};
use crate::leases::HeldLease;
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
        let sequence_number = record.sequence_number().to_owned();
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
                if skip.sequence_number() == Some(sequence_number.as_str())
                    && user.sub_sequence_number <= skip.sub_sequence_number
                {
                    continue;
                }
            }
            out.push(KinesisClientRecord {
                sequence_number: sequence_number.clone(),
                sub_sequence_number: user.sub_sequence_number,
                partition_key: user.partition_key.to_string(),
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
        let metrics = crate::metrics::ShardMetrics::new(self.held.metrics());
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
            if let Some(last) = records.last() {
                checkpointer.delivered(last.position());
            }
            if !records.is_empty()
                || (self.options.deliver_empty_batches && batch.shard_end.is_none())
            {
                let count = records.len() as u64;
                let bytes = records.iter().map(|r| r.data.len() as u64).sum();
                held.record_delivered(bytes);
                let started = std::time::Instant::now();
                self.processor
                    .process_records(ProcessRecordsInput {
                        records,
                        millis_behind_latest: batch.millis_behind_latest,
                        checkpointer: checkpointer.clone(),
                    })
                    .await;
                metrics.batch_processed(
                    count,
                    bytes,
                    batch.millis_behind_latest,
                    started.elapsed(),
                );
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
        assert_eq!(all[3].partition_key, "k2");
        assert!(all[2].aggregated && !all[0].aggregated);

        let skip = ExtendedSequenceNumber::new("200", 1);
        let rest = user_records(records[1..].to_vec(), Some(&skip), None, &Counter::noop());
        assert_eq!(
            rest.iter()
                .map(|r| (r.sequence_number.as_str(), r.sub_sequence_number))
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
        assert_eq!(out[0].partition_key, "pk");
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
            .map(|r| (r.sequence_number.as_str(), r.partition_key.as_str()))
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
