#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

use async_trait::async_trait;
use aws_types::SdkConfig;
use kinesis_consumer::dead_letter::{BoxError, DeadLetterBatch, DeadLetterSink};
use kinesis_producer::{BuildError, Producer, Record, RecordError, SendError};

/// A [`DeadLetterSink`] writing each failed record to another Kinesis stream through a
/// [`Producer`]: one Kinesis user record per failed record, whose data is its
/// [`DeadLetterEnvelope`](kinesis_consumer::dead_letter::DeadLetterEnvelope) as JSON
/// (the original data in base64, with the application, stream, shard, sequence and
/// sub-sequence numbers, partition key, error and attempts) and whose partition key is the
/// original one, so the records of a key stay in order on one shard of the dead-letter
/// stream.
///
/// A batch counts as stored once every one of its records reached the stream (the
/// producer retries each until its `record_ttl`); otherwise the consumer calls again with
/// the whole batch after a backoff, so a record may be in the dead-letter stream more than
/// once (at least once, like everything else). An envelope larger than the producer's
/// `max_record_size` (records over about 750 KiB with the default 1 MiB) is written
/// without its data (`data_omitted: true`, with a warning): the sequence number still
/// finds the record in the source stream while it is retained.
#[derive(Clone, Debug)]
pub struct StreamSink {
    producer: Producer,
}

/// The dead-letter stream did not take a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamSinkError {
    /// The producer did not accept a record (it is shut down, or the record breaks
    /// Kinesis's rules).
    #[error("dead-letter stream {stream}: a record was not accepted: {source}")]
    Send {
        /// The dead-letter stream.
        stream: String,
        /// Why.
        #[source]
        source: SendError,
    },
    /// Records were accepted but did not reach the stream.
    #[error("dead-letter stream {stream}: {failed} of {records} records not written: {source}")]
    Put {
        /// The dead-letter stream.
        stream: String,
        /// Records of the batch that failed.
        failed: usize,
        /// Records of the batch.
        records: usize,
        /// The first failure.
        #[source]
        source: RecordError,
    },
}

impl StreamSink {
    /// Writes to the producer's stream. The producer may be shared with other writers;
    /// each batch ends with a [`Producer::flush`], which sends what it buffered at once.
    pub fn new(producer: Producer) -> Self {
        StreamSink { producer }
    }

    /// A sink writing to `stream` (name or ARN) through a producer with default
    /// settings.
    pub async fn connect(
        config: &SdkConfig,
        stream: impl Into<String>,
    ) -> Result<StreamSink, BuildError> {
        let producer = Producer::builder(config).stream(stream).build().await?;
        Ok(StreamSink::new(producer))
    }

    /// The producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Sends what the producer still buffers and stops it (call before the program
    /// ends).
    pub async fn shutdown(&self) {
        self.producer.shutdown().await;
    }
}

#[async_trait]
impl DeadLetterSink for StreamSink {
    async fn dead_letter(&self, batch: &DeadLetterBatch) -> Result<(), BoxError> {
        let stream = self.producer.stream().to_owned();
        // Set once the producer is built: the stream's own maximum, or the one configured.
        let max_size = self
            .producer
            .config()
            .max_record_size
            .unwrap_or(kinesis_producer::DEFAULT_MAX_RECORD_SIZE);
        let mut receipts = Vec::with_capacity(batch.records.len());
        for envelope in batch.envelopes() {
            let key = envelope.partition_key.clone();
            let mut data = envelope.to_json();
            if data.len() + key.len() > max_size {
                tracing::warn!(
                    stream = %batch.stream,
                    shard = %batch.shard_id,
                    sequence_number = %envelope.sequence_number,
                    sub_sequence_number = envelope.sub_sequence_number,
                    data_size = envelope.data_size,
                    dead_letter_stream = %stream,
                    "dead-lettered record too large for the dead-letter stream: written without its data"
                );
                data = envelope.without_data().to_json();
            }
            let receipt = self
                .producer
                .send(Record::new(key, data))
                .await
                .map_err(|source| StreamSinkError::Send {
                    stream: stream.clone(),
                    source,
                })?;
            receipts.push(receipt);
        }
        self.producer.flush().await;
        let records = receipts.len();
        let mut failed = 0;
        let mut first = None;
        for receipt in receipts {
            if let Err(error) = receipt.await {
                failed += 1;
                first.get_or_insert(error);
            }
        }
        match first {
            None => Ok(()),
            Some(source) => Err(Box::new(StreamSinkError::Put {
                stream,
                failed,
                records,
                source,
            })),
        }
    }
}

// The sink is shared by every shard consumer of a scheduler.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<StreamSink>();
    send_sync::<StreamSinkError>();
};
