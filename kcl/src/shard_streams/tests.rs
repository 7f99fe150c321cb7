//! The forwarding processor driven as the shard consumer drives it, against the
//! in-memory lease store: what the application sees on the shard stream, when the
//! consumer may go on, and what reaches the lease table.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::*;
use crate::lease::Lease;
use crate::leases::coordinator::LeaseCoordinator;
use crate::leases::{LeaseCoordinatorConfig, LeaseStore, MemoryLeaseStore};

struct Setup {
    store: Arc<MemoryLeaseStore>,
    _coordinator: LeaseCoordinator,
    checkpointer: Checkpointer,
    processor: StreamProcessor,
    shards: ShardStreams,
    /// What the scheduler's shutdown handle would see.
    shutdown: watch::Receiver<bool>,
}

async fn setup() -> Setup {
    let store = Arc::new(MemoryLeaseStore::new());
    store
        .create_lease_if_absent(&Lease::new(
            "shard-0",
            ExtendedSequenceNumber::trim_horizon(),
        ))
        .await
        .unwrap();
    let dyn_store: Arc<dyn LeaseStore> = store.clone();
    let coordinator = LeaseCoordinator::new(dyn_store, LeaseCoordinatorConfig::new("w"));
    coordinator.take_leases().await.unwrap();
    let checkpointer = Checkpointer::new(coordinator.held_lease("shard-0").unwrap());
    let (sender, receiver) = mpsc::unbounded_channel();
    let (stop, shutdown) = watch::channel(false);
    Setup {
        store,
        _coordinator: coordinator,
        checkpointer,
        processor: StreamProcessor::new(sender),
        shards: ShardStreams {
            receiver,
            shutdown: ShutdownHandle::new(Arc::new(stop)),
        },
        shutdown,
    }
}

impl Setup {
    /// `initialize`, as the shard consumer calls it; the shard stream it gives.
    async fn start(&mut self) -> ShardStream {
        self.processor.initialize(initialize_input()).await;
        self.shards.next().await.unwrap()
    }
}

fn stored(store: &MemoryLeaseStore) -> Lease {
    store.snapshot().remove(0)
}

fn initialize_input() -> InitializeInput {
    InitializeInput {
        shard_id: "shard-0".into(),
        checkpoint: ExtendedSequenceNumber::trim_horizon(),
        pending_checkpoint: None,
        pending_checkpoint_state: None,
    }
}

/// A batch of plain records, marked delivered as the shard consumer does before
/// `process_records`.
fn batch(checkpointer: &Checkpointer, sequence_numbers: &[&str]) -> ProcessRecordsInput {
    let records: Vec<KinesisClientRecord> = sequence_numbers
        .iter()
        .map(|seq| KinesisClientRecord::new(*seq, "key", format!("data-{seq}")))
        .collect();
    if let Some(last) = records.last() {
        checkpointer.delivered(last.position());
    }
    ProcessRecordsInput {
        records,
        millis_behind_latest: Some(0),
        checkpointer: checkpointer.clone(),
        attempt: 1,
    }
}

/// Whether `call` is still waiting after 50 ms (it is polled meanwhile).
async fn waiting(call: &mut (impl Future + Unpin)) -> bool {
    tokio::time::timeout(Duration::from_millis(50), call)
        .await
        .is_err()
}

fn sequence(position: &ExtendedSequenceNumber) -> &str {
    position.sequence_number().unwrap()
}

#[tokio::test]
async fn the_next_batch_waits_until_the_last_one_is_dropped() {
    let mut setup = setup().await;
    let mut stream = setup.start().await;
    assert_eq!(stream.shard_id(), "shard-0");
    assert_eq!(
        stream.start().checkpoint,
        ExtendedSequenceNumber::trim_horizon()
    );

    let input = batch(&setup.checkpointer, &["100", "200"]);
    let mut call = Box::pin(setup.processor.process_records(input));
    assert!(
        waiting(&mut call).await,
        "returned before the batch was received"
    );
    let Some(ShardEvent::Records(received)) = stream.next().await else {
        panic!("no batch");
    };
    assert_eq!(received.shard_id(), "shard-0");
    assert_eq!(received.records.len(), 2);
    assert_eq!(received.millis_behind_latest, Some(0));
    assert!(
        waiting(&mut call).await,
        "returned while the batch was held"
    );
    drop(received);
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("process_records returned once the batch was dropped")
        .unwrap();
    // Nothing else was sent: the stream is open and empty.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), stream.next())
            .await
            .is_err()
    );
    assert!(setup.checkpointer.is_lease_held());
}

/// A batch's checkpointer writes that batch's last record, even after later batches
/// were delivered; never a later record; never backwards.
#[tokio::test]
async fn a_batch_checkpoints_itself_and_nothing_after_it() {
    let mut setup = setup().await;
    let mut stream = setup.start().await;
    let mut kept = Vec::new();
    for sequence_numbers in [&["100", "200"][..], &["300"][..]] {
        let input = batch(&setup.checkpointer, sequence_numbers);
        let mut call = Box::pin(setup.processor.process_records(input));
        assert!(waiting(&mut call).await);
        let Some(ShardEvent::Records(received)) = stream.next().await else {
            panic!("no batch");
        };
        kept.push(received.checkpointer.clone());
        drop(received);
        call.await.unwrap();
    }
    let (first, second) = (&kept[0], &kept[1]);
    assert_eq!(first.position().map(sequence), Some("200"));
    assert_eq!(second.position().map(sequence), Some("300"));

    // The first batch's checkpointer, called after the second batch was delivered.
    first.checkpoint().await.unwrap();
    assert_eq!(sequence(&stored(&setup.store).checkpoint), "200");
    assert!(matches!(
        first.checkpoint_at("300", 0).await,
        Err(CheckpointError::InvalidSequence { .. })
    ));
    first.checkpoint_at("100", 0).await.err().unwrap(); // behind the stored checkpoint
    second.checkpoint_at("300", 0).await.unwrap();
    assert_eq!(sequence(&stored(&setup.store).checkpoint), "300");
    assert!(matches!(
        first.checkpoint().await,
        Err(CheckpointError::InvalidSequence { .. })
    ));
    assert_eq!(sequence(&stored(&setup.store).checkpoint), "300");

    // Two-phase, at the batch's end.
    let prepared = second
        .prepare_checkpoint(Some(b"state".to_vec()))
        .await
        .unwrap();
    assert_eq!(sequence(prepared.position()), "300");
    assert_eq!(
        stored(&setup.store).pending_checkpoint_state.as_deref(),
        Some(&b"state"[..])
    );
    prepared.checkpoint().await.unwrap();
    assert_eq!(stored(&setup.store).pending_checkpoint, None);
}

#[tokio::test]
async fn the_shard_end_is_a_final_event_that_writes_shard_end() {
    let mut setup = setup().await;
    let mut stream = setup.start().await;
    let input = batch(&setup.checkpointer, &["100"]);
    let mut call = Box::pin(setup.processor.process_records(input));
    assert!(waiting(&mut call).await);
    drop(stream.next().await);
    call.await.unwrap();

    setup.checkpointer.set_shard_ended();
    let input = ShardEndedInput {
        shard_id: "shard-0".into(),
        checkpointer: setup.checkpointer.clone(),
    };
    let mut call = Box::pin(setup.processor.shard_ended(input));
    assert!(waiting(&mut call).await);
    let Some(ShardEvent::ShardEnded(end)) = stream.next().await else {
        panic!("no shard end");
    };
    assert_eq!(end.shard_id(), "shard-0");
    assert!(end.is_lease_held());
    assert!(
        waiting(&mut call).await,
        "returned before the end was dropped"
    );
    end.checkpoint().await.unwrap();
    assert!(stored(&setup.store).checkpoint.is_shard_end());
    drop(end);
    call.await;
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the shard end"
    );
}

#[tokio::test]
async fn a_lost_lease_ends_the_stream() {
    let mut setup = setup().await;
    let mut stream = setup.start().await;
    setup
        .processor
        .lease_lost(LeaseLostInput {
            shard_id: "shard-0".into(),
        })
        .await;
    assert!(stream.next().await.is_none());
}

/// The shutdown request comes after the batch being processed is dropped (the shard
/// consumer asks between batches), checkpoints what was delivered, and ends the stream.
#[tokio::test]
async fn a_shutdown_request_checkpoints_what_was_processed_and_ends_the_stream() {
    let mut setup = setup().await;
    let mut stream = setup.start().await;
    let input = batch(&setup.checkpointer, &["100", "200"]);
    let mut call = Box::pin(setup.processor.process_records(input));
    assert!(waiting(&mut call).await);
    drop(stream.next().await);
    call.await.unwrap();

    let input = ShutdownRequestedInput {
        shard_id: "shard-0".into(),
        checkpointer: setup.checkpointer.clone(),
    };
    let mut call = Box::pin(setup.processor.shutdown_requested(input));
    assert!(waiting(&mut call).await);
    let Some(ShardEvent::ShutdownRequested(shutdown)) = stream.next().await else {
        panic!("no shutdown request");
    };
    assert_eq!(shutdown.checkpointer.position().map(sequence), Some("200"));
    shutdown.checkpoint().await.unwrap();
    assert_eq!(sequence(&stored(&setup.store).checkpoint), "200");
    assert!(
        waiting(&mut call).await,
        "returned before the request was dropped"
    );
    drop(shutdown);
    call.await;
    assert!(stream.next().await.is_none());
}

/// A shard stream dropped with a batch in it: the batch is never checkpointed, the
/// lease is released (any worker may take it and resume from the last checkpoint), and
/// the shard consumer goes on to see its lease lost.
#[tokio::test]
async fn a_dropped_shard_stream_gives_the_lease_up_without_a_checkpoint() {
    let mut setup = setup().await;
    let mut stream = setup.start().await;
    let input = batch(&setup.checkpointer, &["100"]);
    let mut call = Box::pin(setup.processor.process_records(input));
    assert!(waiting(&mut call).await);
    let Some(ShardEvent::Records(first)) = stream.next().await else {
        panic!("no batch");
    };
    first.checkpoint().await.unwrap();
    drop(first);
    call.await.unwrap();

    let input = batch(&setup.checkpointer, &["200"]);
    let mut call = Box::pin(setup.processor.process_records(input));
    assert!(waiting(&mut call).await); // sent, not received
    drop(stream);
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("process_records returned")
        .unwrap();
    let stored = stored(&setup.store);
    assert_eq!(sequence(&stored.checkpoint), "100", "the unreceived batch");
    assert_eq!(stored.lease_owner, None, "released");
    assert!(!setup.checkpointer.is_lease_held());
    assert!(!*setup.shutdown.borrow(), "the worker keeps running");
}

/// Without `ShardStreams` a new shard cannot be handed over: its processor gives the
/// lease up at its first batch, and the scheduler is asked to shut down.
#[tokio::test]
async fn dropping_the_shard_streams_stops_the_worker_and_gives_new_shards_up() {
    let Setup {
        store,
        _coordinator,
        checkpointer,
        mut processor,
        shards,
        shutdown,
    } = setup().await;
    assert!(!*shutdown.borrow());
    drop(shards);
    assert!(*shutdown.borrow(), "shutdown asked for");

    processor.initialize(initialize_input()).await;
    let input = batch(&checkpointer, &["100"]);
    tokio::time::timeout(Duration::from_secs(1), processor.process_records(input))
        .await
        .expect("process_records returned")
        .unwrap();
    let stored = stored(&store);
    assert_eq!(stored.lease_owner, None);
    assert_eq!(stored.checkpoint, ExtendedSequenceNumber::trim_horizon());
}

/// A shard end that nobody receives is not checkpointed (the shard is not finished) and
/// the lease is given up.
#[tokio::test]
async fn an_unreceived_shard_end_is_not_checkpointed() {
    let mut setup = setup().await;
    let stream = setup.start().await;
    drop(stream);
    setup.checkpointer.set_shard_ended();
    let input = ShardEndedInput {
        shard_id: "shard-0".into(),
        checkpointer: setup.checkpointer.clone(),
    };
    tokio::time::timeout(Duration::from_secs(1), setup.processor.shard_ended(input))
        .await
        .expect("shard_ended returned");
    let stored = stored(&setup.store);
    assert!(!stored.checkpoint.is_shard_end());
    assert_eq!(stored.lease_owner, None);
}
