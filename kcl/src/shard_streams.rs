//! The consumer as a [`Stream`]: a stream of shard streams of batches, on the same
//! [`Scheduler`] (leases, balancing, checkpoints, resharding, graceful shutdown) and with
//! the same guarantees as a [`RecordProcessor`].
//!
//! [`SchedulerBuilder::build_shard_streams`] gives the scheduler and a [`ShardStreams`]:
//! run the scheduler, and take a [`ShardStream`] from the `ShardStreams` each time the
//! worker starts consuming a shard (a lease taken, a child shard ready, a shard retried).
//! Each shard stream yields [`ShardEvent`]s in shard order:
//!
//! - [`ShardEvent::Records`]: a [`Batch`] of records (deaggregated, as a processor gets
//!   them) with its [`StreamCheckpointer`]. **The next batch is not handed over before
//!   this one is dropped**: dropping the batch says "done with it". That is the
//!   backpressure (nothing is read ahead beyond the scheduler's prefetch) and what keeps
//!   checkpoints behind processing.
//! - [`ShardEvent::ShardEnded`]: every record of the shard was delivered. **Call
//!   [`ShardEnd::checkpoint`]**: it writes `SHARD_END`, which lets the child shards start.
//!   The stream ends after it. Dropped without a checkpoint, the shard is not finished: as
//!   with a processor that does not checkpoint in `shard_ended`, an error is logged and the
//!   shard is consumed again from its last checkpoint, in a new shard stream, after the
//!   failure backoff.
//! - [`ShardEvent::ShutdownRequested`]: the worker shuts down gracefully, or hands the
//!   lease over to another worker; checkpoint what was processed
//!   ([`ShutdownRequest::checkpoint`]) so that the next holder resumes right after it. The
//!   stream ends after it, once it is dropped. A batch being processed when the shutdown
//!   was asked for is finished first: the shutdown drains.
//!
//! **Lease loss ends the shard stream**: it yields `None` without a final item (another
//! worker took the lease, it was reset, or it could not be renewed in time). A batch still
//! being processed then fails to checkpoint with [`CheckpointError::LeaseLost`]. A shard
//! stream also ends, without a final item, when the scheduler stops a shard consumer that
//! did not finish within its timeouts.
//!
//! The same shard may come again in a new shard stream (after a lease loss, when this
//! worker takes the lease again; after a failure): it resumes from the last checkpoint
//! ([`ShardStream::start`]), so delivery is at least once, exactly as with a
//! [`RecordProcessor`].
//!
//! # Checkpoints never pass what was handed over
//!
//! A [`StreamCheckpointer`] belongs to one batch: [`StreamCheckpointer::checkpoint`]
//! writes that batch's last record, never a later one, even when called after later
//! batches arrived (keeping the last batch's checkpointer and checkpointing every few
//! seconds is fine). Checkpoints are conditional writes on the lease, as every checkpoint.
//!
//! # Poll every shard stream
//!
//! A shard's consumer waits for its batch to be dropped, and the scheduler's graceful
//! shutdown waits for the shard streams (up to
//! [`SchedulerConfig::shutdown_timeout`](crate::SchedulerConfig::shutdown_timeout), after
//! which a shard consumer is stopped and its stream ends). So each shard stream must be
//! polled on its own: spawn a task per shard stream, or use
//! `for_each_concurrent(None, ..)`; a `flatten()` of the shard streams would wait forever
//! on the first open shard. Do not block the runtime while processing a batch (see
//! [`RecordProcessor`]).
//!
//! # Dropping a stream
//!
//! - Dropping a [`ShardStream`] before it ended gives the shard up: when its consumer next
//!   has something for it (a batch, the shard's end), the lease is released (handed over
//!   during a handoff) without any checkpoint, and the records not yet processed are
//!   delivered again, from the last checkpoint, to whichever worker takes the lease next
//!   (this one included, in a new shard stream). A batch or final item that was never
//!   received is never checkpointed.
//! - Dropping the [`ShardStreams`] asks the scheduler to shut down gracefully
//!   ([`ShutdownHandle::shutdown`]): new shards could no longer be handed over. The
//!   shard streams already taken keep working and get their `ShutdownRequested`.
//! - [`ShardStreams`] ends when the scheduler has stopped (its `run` returned, or it was
//!   dropped).
//!
//! The [multi-stream scheduler](crate::multi_stream) takes record processors only.
//!
//! # Example
//!
//! ```no_run
//! use futures::StreamExt;
//! use kinesis_consumer::shard_streams::{ShardEvent, ShardStream};
//! use kinesis_consumer::{InitialPosition, Scheduler};
//!
//! async fn consume(mut shard: ShardStream) {
//!     while let Some(event) = shard.next().await {
//!         match event {
//!             ShardEvent::Records(batch) => {
//!                 for record in &batch.records {
//!                     // KPL aggregates arrive deaggregated, with sub-sequence numbers.
//!                     println!("{} {} {:?}", shard.shard_id(), record.partition_key, record.data);
//!                 }
//!                 // Up to this batch's last record, never beyond.
//!                 if let Err(error) = batch.checkpoint().await {
//!                     eprintln!("checkpoint failed: {error}");
//!                 }
//!             } // dropping the batch lets the next one come
//!             ShardEvent::ShardEnded(end) => {
//!                 // Required: writes SHARD_END, which lets the child shards start.
//!                 let _ = end.checkpoint().await;
//!             }
//!             ShardEvent::ShutdownRequested(shutdown) => {
//!                 // The next worker resumes right after what was processed.
//!                 let _ = shutdown.checkpoint().await;
//!             }
//!         }
//!     }
//!     // Ended: after the shard's end or a shutdown request, or the lease was lost.
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let (scheduler, mut shards) = Scheduler::builder(&config)
//!     .stream("orders")
//!     .application_name("order-indexer") // the lease table, shared by every worker
//!     .initial_position(InitialPosition::TrimHorizon)
//!     .build_shard_streams()
//!     .await?;
//! // Graceful on Ctrl-C: every shard stream gets ShutdownRequested, then ends.
//! let worker = tokio::spawn(scheduler.run_until(tokio::signal::ctrl_c()));
//! while let Some(shard) = shards.next().await {
//!     tokio::spawn(consume(shard)); // every shard stream polled on its own
//! }
//! worker.await??; // `shards` ended: the scheduler stopped
//! # Ok(()) }
//! ```
//!
//! [`RecordProcessor`]: crate::RecordProcessor
//! [`Scheduler`]: crate::Scheduler

use std::cmp::Ordering;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{CheckpointError, Checkpointer, PreparedCheckpoint};
use crate::lease::ExtendedSequenceNumber;
use crate::processor::{
    InitializeInput, KinesisClientRecord, LeaseLostInput, ProcessRecordsInput, RecordProcessor,
    ShardEndedInput, ShutdownRequestedInput,
};
use crate::scheduler::{Scheduler, SchedulerBuilder, SchedulerError, ShutdownHandle};

impl SchedulerBuilder {
    /// Builds the scheduler (as [`build`](SchedulerBuilder::build)) with the consumer as
    /// a [`Stream`]: the returned [`ShardStreams`] yields a [`ShardStream`] for each shard
    /// the worker starts consuming. Run the scheduler ([`Scheduler::run`],
    /// [`Scheduler::run_until`]) and poll every shard stream; see
    /// [the module](crate::shard_streams).
    ///
    /// Any [`processor_factory`](SchedulerBuilder::processor_factory) set is replaced.
    pub async fn build_shard_streams(self) -> Result<(Scheduler, ShardStreams), SchedulerError> {
        let (shards, receiver) = mpsc::unbounded_channel();
        let scheduler = self
            .processor_factory(move || StreamProcessor::new(shards.clone()))
            .build()
            .await?;
        let streams = ShardStreams {
            receiver,
            shutdown: scheduler.shutdown_handle(),
        };
        Ok((scheduler, streams))
    }
}

/// The shards a worker consumes, each as a [`ShardStream`], in the order their
/// consumers start. Made by [`SchedulerBuilder::build_shard_streams`].
///
/// Ends when the scheduler has stopped. Dropping it asks the scheduler to shut down
/// gracefully.
#[derive(Debug)]
pub struct ShardStreams {
    receiver: mpsc::UnboundedReceiver<ShardStream>,
    shutdown: ShutdownHandle,
}

impl ShardStreams {
    /// A handle that stops the scheduler gracefully (the scheduler's own
    /// [`Scheduler::shutdown_handle`]).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }
}

impl Stream for ShardStreams {
    type Item = ShardStream;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ShardStream>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for ShardStreams {
    fn drop(&mut self) {
        // New shards could no longer be handed over: stop gracefully.
        self.shutdown.shutdown();
    }
}

/// One shard's events, in shard order, while this worker consumes it. See
/// [the module](crate::shard_streams) for what each event asks for and when it ends.
#[derive(Debug)]
pub struct ShardStream {
    start: InitializeInput,
    events: mpsc::Receiver<ShardEvent>,
}

impl ShardStream {
    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.start.shard_id
    }

    /// Where this stream resumes (records after this checkpoint are delivered), and any
    /// pending two-phase checkpoint (with its state) left by the previous holder.
    pub fn start(&self) -> &InitializeInput {
        &self.start
    }
}

impl Stream for ShardStream {
    type Item = ShardEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ShardEvent>> {
        self.events.poll_recv(cx).map(|event| {
            event.map(|mut event| {
                event.done().received = true;
                event
            })
        })
    }
}

/// What a [`ShardStream`] yields.
#[derive(Debug)]
pub enum ShardEvent {
    /// Records to process. The next event comes once the batch is dropped.
    Records(Batch),
    /// Every record of the shard was delivered: checkpoint with
    /// [`ShardEnd::checkpoint`] (required, lets the child shards start). The last event.
    ShardEnded(ShardEnd),
    /// The worker shuts down, or hands the lease over: checkpoint what was processed. The
    /// last event.
    ShutdownRequested(ShutdownRequest),
}

impl ShardEvent {
    fn done(&mut self) -> &mut Done {
        match self {
            ShardEvent::Records(batch) => &mut batch.done,
            ShardEvent::ShardEnded(end) => &mut end.done,
            ShardEvent::ShutdownRequested(shutdown) => &mut shutdown.done,
        }
    }
}

/// Tells the shard's consumer, when dropped, that the application is done with an event
/// it received (an event dropped unreceived, with its stream, tells that instead).
#[derive(Debug)]
struct Done {
    finished: Option<oneshot::Sender<()>>,
    received: bool,
}

impl Done {
    fn new() -> (Self, oneshot::Receiver<()>) {
        let (finished, receiver) = oneshot::channel();
        let done = Done {
            finished: Some(finished),
            received: false,
        };
        (done, receiver)
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let (true, Some(finished)) = (self.received, self.finished.take()) {
            let _ = finished.send(());
        }
    }
}

/// A batch of records of one shard, in shard order. **Drop it when done**: the shard's
/// next event comes after that.
#[derive(Debug)]
pub struct Batch {
    /// The records, deaggregated, in shard order (empty only with
    /// [`call_process_records_even_for_empty_list`](crate::SchedulerBuilder::call_process_records_even_for_empty_list)).
    pub records: Vec<KinesisClientRecord>,
    /// How far behind the tip of the shard the read was, in milliseconds.
    pub millis_behind_latest: Option<i64>,
    /// Checkpoints up to this batch's last record.
    pub checkpointer: StreamCheckpointer,
    done: Done,
}

impl Batch {
    /// The shard.
    pub fn shard_id(&self) -> &str {
        self.checkpointer.shard_id()
    }

    /// Checkpoints this batch's last record (see [`StreamCheckpointer::checkpoint`]).
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        self.checkpointer.checkpoint().await
    }
}

/// The end of a shard: every record was delivered. **Checkpoint it**
/// ([`ShardEnd::checkpoint`]), then drop it.
#[derive(Debug)]
pub struct ShardEnd {
    checkpointer: Checkpointer,
    done: Done,
}

impl ShardEnd {
    /// The shard.
    pub fn shard_id(&self) -> &str {
        self.checkpointer.shard_id()
    }

    /// Writes `SHARD_END`: the shard is finished and its children may start (on any
    /// worker). Fails with [`CheckpointError::LeaseLost`] when the lease was lost.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        self.checkpointer.checkpoint().await
    }

    /// Whether this worker still holds the shard's lease.
    pub fn is_lease_held(&self) -> bool {
        self.checkpointer.is_lease_held()
    }
}

/// The worker shuts down gracefully or hands the lease over: checkpoint what was
/// processed, then drop it. The lease is released (or handed over) after that.
#[derive(Debug)]
pub struct ShutdownRequest {
    /// Checkpoints up to the last record delivered on this stream (every batch before
    /// this event was dropped, so processed).
    pub checkpointer: StreamCheckpointer,
    done: Done,
}

impl ShutdownRequest {
    /// The shard.
    pub fn shard_id(&self) -> &str {
        self.checkpointer.shard_id()
    }

    /// Checkpoints the last record delivered on this stream (see
    /// [`StreamCheckpointer::checkpoint`]); nothing when none was.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        self.checkpointer.checkpoint().await
    }
}

/// Checkpoints a shard up to a fixed position: the last record of its [`Batch`] (or, for
/// a [`ShutdownRequest`], the last record delivered), never beyond, whenever it is called.
/// Cheap to clone.
///
/// Checkpoints never move backwards: checkpointing an earlier batch after a later one
/// fails with [`CheckpointError::InvalidSequence`].
#[derive(Clone, Debug)]
pub struct StreamCheckpointer {
    inner: Checkpointer,
    position: Option<ExtendedSequenceNumber>,
}

impl StreamCheckpointer {
    /// The shard.
    pub fn shard_id(&self) -> &str {
        self.inner.shard_id()
    }

    /// What [`checkpoint`](Self::checkpoint) writes: the batch's last record (for an
    /// empty batch, the last record delivered before it); `None` when no record was
    /// delivered on this stream yet.
    pub fn position(&self) -> Option<&ExtendedSequenceNumber> {
        self.position.as_ref()
    }

    /// Checkpoints [`position`](Self::position); does nothing when there is none.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        match &self.position {
            Some(position) => {
                let sequence = position.sequence_number().unwrap_or_default();
                self.inner
                    .checkpoint_at(sequence, position.sub_sequence_number)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Checkpoints up to and including the user record `(sequence_number,
    /// sub_sequence_number)`, at or before [`position`](Self::position): part of a batch.
    pub async fn checkpoint_at(
        &self,
        sequence_number: &str,
        sub_sequence_number: u64,
    ) -> Result<(), CheckpointError> {
        let requested = ExtendedSequenceNumber::new(sequence_number, sub_sequence_number);
        self.within(&requested)?;
        self.inner
            .checkpoint_at(sequence_number, sub_sequence_number)
            .await
    }

    /// First phase of a two-phase checkpoint at [`position`](Self::position), with
    /// optional application state (see [`Checkpointer::prepare_checkpoint`]).
    pub async fn prepare_checkpoint(
        &self,
        state: Option<Vec<u8>>,
    ) -> Result<PreparedCheckpoint, CheckpointError> {
        let position = self
            .position
            .clone()
            .ok_or_else(|| CheckpointError::InvalidSequence {
                requested: ExtendedSequenceNumber::trim_horizon(),
                reason: "no record was delivered yet".into(),
            })?;
        self.inner.prepare_checkpoint_at(position, state).await
    }

    /// The checkpoint stored in the lease now.
    pub async fn current(&self) -> ExtendedSequenceNumber {
        self.inner.current().await
    }

    /// Whether this worker still holds the shard's lease (see
    /// [`Checkpointer::is_lease_held`]).
    pub fn is_lease_held(&self) -> bool {
        self.inner.is_lease_held()
    }

    fn within(&self, requested: &ExtendedSequenceNumber) -> Result<(), CheckpointError> {
        match &self.position {
            Some(position) if requested.compare(position) != Some(Ordering::Greater) => Ok(()),
            Some(position) => Err(CheckpointError::InvalidSequence {
                requested: requested.clone(),
                reason: format!("beyond this batch's last record {position}"),
            }),
            None => Err(CheckpointError::InvalidSequence {
                requested: requested.clone(),
                reason: "no record was delivered yet".into(),
            }),
        }
    }
}

/// The record processor behind a [`ShardStream`]: forwards each call as an event and
/// returns once the application dropped it.
struct StreamProcessor {
    /// Where the shard stream goes, until `initialize` sent it.
    shards: Option<mpsc::UnboundedSender<ShardStream>>,
    /// The shard stream's events, while it is open.
    events: Option<mpsc::Sender<ShardEvent>>,
    shard_id: String,
}

/// Whether the application received an event and dropped it.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// Received, then dropped: done with.
    Finished,
    /// Never received: the shard stream (or the `ShardStreams`) was dropped.
    NobodyListens,
}

impl StreamProcessor {
    fn new(shards: mpsc::UnboundedSender<ShardStream>) -> Self {
        StreamProcessor {
            shards: Some(shards),
            events: None,
            shard_id: String::new(),
        }
    }

    /// Hands an event to the shard stream and waits until the application is done with
    /// it.
    async fn deliver(&mut self, event: impl FnOnce(Done) -> ShardEvent) -> Delivery {
        let Some(events) = &self.events else {
            return Delivery::NobodyListens;
        };
        let (done, finished) = Done::new();
        if events.send(event(done)).await.is_err() {
            self.events = None;
            return Delivery::NobodyListens;
        }
        match finished.await {
            Ok(()) => Delivery::Finished,
            Err(_) => {
                // Dropped unreceived: the stream was dropped with the event in it.
                self.events = None;
                Delivery::NobodyListens
            }
        }
    }

    /// Nobody consumes the shard any more: give its lease up (released, or handed over
    /// during a handoff) without a checkpoint, so that it is consumed again from its last
    /// checkpoint by whichever worker takes it. The shard consumer then sees the lease
    /// lost and stops.
    async fn give_up(&mut self, checkpointer: &Checkpointer) {
        self.events = None;
        if !checkpointer.is_lease_held() {
            return;
        }
        tracing::warn!(
            shard = %self.shard_id,
            "the application dropped the shard's stream before it ended: releasing the \
             lease without a checkpoint (the shard is consumed again from its last checkpoint)"
        );
        if let Err(error) = checkpointer.release_lease().await {
            tracing::warn!(shard = %self.shard_id, %error, "releasing the lease failed: it expires for other workers after the failover time");
        }
    }
}

#[async_trait]
impl RecordProcessor for StreamProcessor {
    async fn initialize(&mut self, input: InitializeInput) {
        self.shard_id = input.shard_id.clone();
        let Some(shards) = self.shards.take() else {
            return;
        };
        let (events, receiver) = mpsc::channel(1);
        let stream = ShardStream {
            start: input,
            events: receiver,
        };
        if shards.send(stream).is_ok() {
            self.events = Some(events);
        }
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> crate::ProcessResult {
        let ProcessRecordsInput {
            records,
            millis_behind_latest,
            checkpointer,
            ..
        } = input;
        let position = records
            .last()
            .map(KinesisClientRecord::position)
            .or_else(|| checkpointer.last_delivered());
        let batch_checkpointer = StreamCheckpointer {
            inner: checkpointer.clone(),
            position,
        };
        let delivery = self
            .deliver(|done| {
                ShardEvent::Records(Batch {
                    records,
                    millis_behind_latest,
                    checkpointer: batch_checkpointer,
                    done,
                })
            })
            .await;
        let closed = self.events.as_ref().is_none_or(mpsc::Sender::is_closed);
        if delivery == Delivery::NobodyListens || closed {
            self.give_up(&checkpointer).await;
        }
        Ok(())
    }

    async fn lease_lost(&mut self, input: LeaseLostInput) {
        let _ = input;
        // Ends the shard stream.
        self.events = None;
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        let checkpointer = input.checkpointer;
        let end = checkpointer.clone();
        match self
            .deliver(|done| {
                ShardEvent::ShardEnded(ShardEnd {
                    checkpointer: end,
                    done,
                })
            })
            .await
        {
            // Checkpointed or not: the shard consumer tells.
            Delivery::Finished => self.events = None,
            Delivery::NobodyListens => self.give_up(&checkpointer).await,
        }
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput) {
        let checkpointer = StreamCheckpointer {
            position: input.checkpointer.last_delivered(),
            inner: input.checkpointer,
        };
        // Unreceived, nothing is checkpointed; the scheduler releases the lease either way.
        let _ = self
            .deliver(|done| ShardEvent::ShutdownRequested(ShutdownRequest { checkpointer, done }))
            .await;
        self.events = None;
    }
}

// Public handles move between tasks and threads: a change that loses `Send` or `Sync`
// must fail to compile here, not in a user's program.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ShardStreams>();
    send_sync::<ShardStream>();
    send_sync::<ShardEvent>();
    send_sync::<StreamCheckpointer>();
};

#[cfg(test)]
mod tests;
