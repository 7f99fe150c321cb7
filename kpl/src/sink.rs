//! A [`Sink`] of records into a producer, for code written against `futures`' sink
//! combinators (`forward`, `SinkExt::send_all`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::FuturesUnordered;
use futures::{Sink, StreamExt};

use crate::producer::{ProduceError, Producer, SendError};
use crate::receipt::RecordReceipt;
use crate::record::Record;

type Admission = Pin<Box<dyn Future<Output = Result<RecordReceipt, SendError>> + Send>>;

/// Records go in with backpressure (one record waits for room in the producer's buffer at
/// a time); flushing waits until every record sent through this sink reached the stream
/// or failed. The first failure since the last time the sink reported one comes back as
/// the error of `poll_ready` or `poll_flush`; the sink stays usable afterwards. Closing
/// the sink flushes it and leaves the producer running (other handles may share it):
/// call [`Producer::shutdown`] when done.
///
/// ```no_run
/// # async fn example(producer: kinesis_producer::Producer) -> Result<(), kinesis_producer::ProduceError> {
/// use futures::{SinkExt, StreamExt};
/// use kinesis_producer::Record;
///
/// let mut records = futures::stream::iter((0..1_000).map(|i| Ok(Record::new(format!("k{i}"), "v"))));
/// producer.sink().send_all(&mut records).await?; // every record reached the stream
/// # Ok(())
/// # }
/// ```
#[must_use = "a sink does nothing unless records are sent into it"]
pub struct ProducerSink {
    producer: Producer,
    admitting: Option<Admission>,
    receipts: FuturesUnordered<RecordReceipt>,
    failed: Option<ProduceError>,
}

impl std::fmt::Debug for ProducerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerSink")
            .field("stream", &self.producer.stream())
            .field("admitting", &self.admitting.is_some())
            .field("outstanding", &self.receipts.len())
            .finish()
    }
}

impl ProducerSink {
    pub(crate) fn new(producer: Producer) -> Self {
        ProducerSink {
            producer,
            admitting: None,
            receipts: FuturesUnordered::new(),
            failed: None,
        }
    }

    /// Drives the record waiting for admission; Ready once none waits.
    fn poll_admitted(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(admission) = &mut self.admitting {
            let admitted = std::task::ready!(admission.as_mut().poll(cx));
            self.admitting = None;
            match admitted {
                Ok(receipt) => self.receipts.push(receipt),
                Err(error) => self.remember(error.into()),
            }
        }
        Poll::Ready(())
    }

    /// Collects the receipts that have resolved; Ready once none is left.
    fn poll_receipts(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(outcome) = std::task::ready!(self.receipts.poll_next_unpin(cx)) {
            if let Err(error) = outcome {
                self.remember(error.into());
            }
        }
        Poll::Ready(())
    }

    fn remember(&mut self, error: ProduceError) {
        self.failed.get_or_insert(error);
    }

    fn take_failure(&mut self) -> Result<(), ProduceError> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

impl Sink<Record> for ProducerSink {
    type Error = ProduceError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_admitted(cx));
        // Resolved receipts are dropped as they come, so a long-lived sink holds only
        // the outstanding ones; pending ones wake this task again later.
        let _ = this.poll_receipts(cx);
        Poll::Ready(this.take_failure())
    }

    fn start_send(self: Pin<&mut Self>, record: Record) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let producer = this.producer.clone();
        this.admitting = Some(Box::pin(async move { producer.send(record).await }));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_admitted(cx));
        std::task::ready!(this.poll_receipts(cx));
        Poll::Ready(this.take_failure())
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_flush(cx)
    }
}
