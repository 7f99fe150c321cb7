//! One held lease's life: initialize the processor, deliver batches, then shard end, lease
//! loss or shutdown.

use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_kinesis::types::{ChildShard, Record};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checkpoint::Checkpointer;
use crate::lease::{ExtendedSequenceNumber, SequencePosition};
use crate::leases::{HeldLease, LeaseStore};
use crate::processor::{
    InitializeInput, KinesisClientRecord, LeaseLostInput, ProcessRecordsInput, RecordProcessor,
    ShardEndedInput, ShutdownRequestedInput,
};
use crate::retrieval::{
    FanOutConfig, FanOutFetcher, PollingConfig, PollingFetcher, StartingPosition,
};
use kinesis_producer::HashKey;

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
    /// The lease was lost.
    LeaseLost,
    /// Graceful shutdown finished.
    Shutdown,
}

pub(crate) struct ShardConsumer {
    pub held: Arc<HeldLease>,
    pub store: Arc<dyn LeaseStore>,
    pub processor: Box<dyn RecordProcessor>,
    pub client: aws_sdk_kinesis::Client,
    pub stream: String,
    pub retrieval: Retrieval,
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
/// User records of an aggregate whose hash key lies outside the shard's `range` are
/// dropped, as AWS's KCL does: a producer whose shard map was stale during a reshard put
/// them on the wrong shard, and a KPL-style producer sends them again to the right one.
pub(crate) fn user_records(
    records: Vec<Record>,
    skip: Option<&ExtendedSequenceNumber>,
    range: Option<(HashKey, HashKey)>,
) -> Vec<KinesisClientRecord> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let arrival = record
            .approximate_arrival_timestamp()
            .and_then(|t| SystemTime::try_from(*t).ok());
        let sequence_number = record.sequence_number().to_owned();
        let partition_key = record.partition_key().unwrap_or_default().to_owned();
        let data = Bytes::from(record.data.into_inner());
        for user in kinesis_producer::aggregation::deaggregate(&partition_key, None, data) {
            if let Some(skip) = skip {
                if skip.sequence_number() == Some(sequence_number.as_str())
                    && user.sub_sequence_number <= skip.sub_sequence_number
                {
                    continue;
                }
            }
            if let (true, Some((start, end))) = (user.aggregated, range) {
                let key = match user.explicit_hash_key.as_deref().map(str::parse::<HashKey>) {
                    Some(Ok(key)) => key,
                    _ => HashKey::from_partition_key(&user.partition_key),
                };
                if key < start || key > end {
                    tracing::warn!(
                        sequence_number = %sequence_number,
                        sub_sequence_number = user.sub_sequence_number,
                        partition_key = %user.partition_key,
                        "dropping a user record of an aggregate that does not belong to this shard"
                    );
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

impl ShardConsumer {
    pub(crate) async fn run(mut self) -> ShardOutcome {
        let shard_id = self.held.key().to_owned();
        let lease = self.held.snapshot().await;
        if lease.is_finished() {
            return ShardOutcome::Ended(Vec::new());
        }
        let checkpointer = Checkpointer::new(self.held.clone(), self.store.clone());
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
            )
            .spawn(start, &mut tasks),
        };
        let mut lost = self.held.lost_signal();
        let mut skip = skip;
        let range = hash_range(&lease);

        loop {
            tokio::select! {
                biased;
                _ = async { lost.wait_for(|lost| *lost).await.map(|_| ()) } => {
                    self.processor.lease_lost(LeaseLostInput { shard_id }).await;
                    return ShardOutcome::LeaseLost;
                }
                _ = async { self.shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => {
                    self.processor
                        .shutdown_requested(ShutdownRequestedInput {
                            shard_id,
                            checkpointer: checkpointer.clone(),
                        })
                        .await;
                    return ShardOutcome::Shutdown;
                }
                batch = batches.recv() => {
                    let Some(batch) = batch else {
                        tracing::error!(shard = %shard_id, "record fetcher stopped unexpectedly");
                        return ShardOutcome::EndNotCheckpointed;
                    };
                    let records = user_records(batch.records, skip.as_ref(), range);
                    skip = None;
                    if let Some(last) = records.last() {
                        checkpointer.delivered(last.position());
                        self.processor
                            .process_records(ProcessRecordsInput {
                                records,
                                millis_behind_latest: batch.millis_behind_latest,
                                checkpointer: checkpointer.clone(),
                            })
                            .await;
                    }
                    if let Some(children) = batch.shard_end {
                        if self.held.is_lost() {
                            continue;
                        }
                        checkpointer.set_shard_ended();
                        self.processor
                            .shard_ended(ShardEndedInput {
                                shard_id: shard_id.clone(),
                                checkpointer: checkpointer.clone(),
                            })
                            .await;
                        if checkpointer.lease().await.is_finished() {
                            return ShardOutcome::Ended(children);
                        }
                        if self.held.is_lost() {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;
    use kinesis_producer::aggregation::AggregateBuilder;

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
        let all = user_records(records.clone(), None, None);
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
        let rest = user_records(records[1..].to_vec(), Some(&skip), None);
        assert_eq!(
            rest.iter()
                .map(|r| (r.sequence_number.as_str(), r.sub_sequence_number))
                .collect::<Vec<_>>(),
            vec![("200", 2), ("200", 3), ("300", 0)]
        );
        // A plain record checkpointed (sub 0) is skipped when re-read with AT.
        let skip = ExtendedSequenceNumber::new("100", 0);
        assert_eq!(
            user_records(records[..1].to_vec(), Some(&skip), None).len(),
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
        );
        assert_eq!(out.len(), 1);
        assert!(!out[0].aggregated);
        assert_eq!(out[0].partition_key, "pk");
        assert_eq!(out[0].data, Bytes::from(data));
    }

    #[test]
    fn aggregate_records_outside_the_shard_are_dropped() {
        let keys: Vec<String> = (0..50).map(|i| format!("key-{i}")).collect();
        let mut builder = AggregateBuilder::new();
        for key in &keys {
            builder.push(key, None, Bytes::from_static(b"x"));
        }
        let aggregate = builder.finish().unwrap();
        let lower_half = (HashKey(0), HashKey(u128::MAX / 2));
        let records = vec![
            record("1", &aggregate.partition_key, aggregate.data.clone()),
            // A plain record is never dropped: Kinesis put it where its key belongs.
            record("2", "plain", Bytes::from_static(b"p")),
        ];
        let kept = user_records(records, None, Some(lower_half));
        let expected: Vec<&str> = keys
            .iter()
            .filter(|k| HashKey::from_partition_key(k) <= lower_half.1)
            .map(String::as_str)
            .chain(["plain"])
            .collect();
        assert!(expected.len() > 10 && expected.len() < 45);
        let delivered: Vec<&str> = kept.iter().map(|r| r.partition_key.as_str()).collect();
        assert_eq!(delivered, expected);
    }
}
