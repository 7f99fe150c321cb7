//! A lease this worker holds: its local deadline, and the conditional writes made under
//! it (renewals, checkpoints, child shards, release), each independent of the others.
//!
//! # The deadline
//!
//! Another worker dates a change of the lease counter no earlier than when its table scan
//! shows it, which is after the write that made it was sent. It takes the lease only when
//! it has seen no change for the failover time. So after `S + failover_time`, where `S` is
//! the send time of our last successful counter-bumping write (renewal, take, checkpoint,
//! child shards), the lease may be taken. The holder stops acting on the lease at its
//! *deadline* `S + failover_time - safety_margin`: the shard consumer hands no batch to
//! the processor past it and checkpoints fail with `LeaseLost` without any call, even
//! while a renewal hangs. The margin is what a batch handed to the processor just before
//! the deadline has to finish before another worker can start on the shard.
//!
//! # Independent writes
//!
//! Renewals and checkpoints are separate conditional writes on the same counter: no lock is
//! held across a call, so a slow checkpoint never delays a renewal (checkpoints are
//! serialized among themselves only). When one write's condition fails because the other
//! bumped the counter, or because an earlier attempt of the same write was applied and its
//! answer lost (the SDK then retries, and the retry's condition fails: what the Java KCL
//! calls a spurious renewal failure), the item is read again: if we still own it and its
//! checkpoint is one we wrote or are writing, the lease is still ours and its counter is
//! adopted; anything else (another owner, no owner, no item, a checkpoint someone else
//! wrote) means the lease is lost.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::liveness::Liveness;
use super::store::{CheckpointUpdate, LeaseStore, LeaseStoreError};
use crate::lease::{ExtendedSequenceNumber, Lease};
use crate::metrics::{ShardLabels, StreamLabels, LEASES_EXPIRED_LOCALLY};

/// How long a held lease is trusted, and how long a lease table call may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseTiming {
    pub failover_time: Duration,
    pub safety_margin: Duration,
    pub request_timeout: Duration,
    pub handoff_accept_wait: Duration,
}

/// Runs one lease table call with the request timeout.
pub(crate) async fn timed<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, LeaseStoreError>>,
) -> Result<T, LeaseStoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(LeaseStoreError::Timeout(timeout)))
}

/// The checkpoint fields a write of ours may have left in the item.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Written {
    checkpoint: ExtendedSequenceNumber,
    pending_checkpoint: Option<ExtendedSequenceNumber>,
}

impl Written {
    fn of(lease: &Lease) -> Self {
        Written {
            checkpoint: lease.checkpoint.clone(),
            pending_checkpoint: lease.pending_checkpoint.clone(),
        }
    }

    fn of_update(update: &CheckpointUpdate) -> Self {
        Written {
            checkpoint: update.checkpoint.clone(),
            pending_checkpoint: update.pending_checkpoint.clone(),
        }
    }
}

#[derive(Debug)]
struct State {
    /// The lease as our last confirmed write or read left it.
    lease: Lease,
    deadline: Instant,
    /// Checkpoint writes sent whose outcome is not known yet.
    unconfirmed: Vec<Written>,
    /// When this worker, shutting down, offered the lease to another worker.
    offered_at: Option<Instant>,
}

/// What re-reading the item after a failed condition showed.
enum Resolution {
    /// Still ours; the counter was adopted.
    Ours,
    /// Ours, and the checkpoint write being resolved was applied.
    Applied,
    /// Taken, released, deleted or overwritten by someone else.
    Lost,
}

/// How a renewal ended.
#[derive(Debug)]
pub(crate) enum Renewal {
    Renewed,
    Lost,
    Failed(LeaseStoreError),
}

/// A lease this worker holds: the authoritative local copy, its local deadline, and a flag
/// raised when it is lost.
pub struct HeldLease {
    key: String,
    worker_id: String,
    store: Arc<dyn LeaseStore>,
    timing: LeaseTiming,
    state: Mutex<State>,
    lost: watch::Sender<bool>,
    /// Checkpoint writes go one at a time (renewals never wait on it).
    checkpoint_lock: tokio::sync::Mutex<()>,
    renewing: AtomicBool,
    not_before: Instant,
    /// Raised when the table asks this worker to hand the lease over.
    handoff_requested: AtomicBool,
    /// Told when a handoff is requested (shared by the worker's leases).
    handoff_notify: Arc<Notify>,
    /// The worker's own liveness (a worker-wide deadline when a leader assigns leases).
    liveness: Arc<Liveness>,
    /// The liveness epoch the lease was taken in.
    epoch: u64,
    /// Record data delivered since the last throughput sample.
    delivered_bytes: AtomicU64,
    throughput: Mutex<ThroughputSample>,
    /// The labels of the shard's metrics.
    metrics: ShardLabels,
}

/// The throughput written with the last renewal, and when it was measured.
#[derive(Debug)]
struct ThroughputSample {
    at: Instant,
    kbps: Option<f64>,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLease")
            .field("key", &self.key)
            .field("state", &self.lock())
            .finish_non_exhaustive()
    }
}

/// What every lease a worker holds shares: the worker, the table, the timing, the signal
/// of changes, and the worker's liveness.
#[derive(Clone)]
pub(crate) struct Holder {
    pub worker_id: String,
    pub store: Arc<dyn LeaseStore>,
    pub timing: LeaseTiming,
    /// Told when a handoff is requested (shared by the worker's leases).
    pub changes: Arc<Notify>,
    pub liveness: Arc<Liveness>,
    /// The labels of the worker's metrics.
    pub metrics: StreamLabels,
}

impl HeldLease {
    /// A lease `holder` took with a write sent at `sent`, to be processed from
    /// `not_before`.
    pub(crate) fn new(lease: Lease, sent: Instant, not_before: Instant, holder: &Holder) -> Self {
        let Holder {
            worker_id,
            store,
            timing,
            changes: handoff_notify,
            liveness,
            metrics,
        } = holder.clone();
        HeldLease {
            metrics: metrics.shard(&lease.lease_key),
            epoch: liveness.epoch(),
            liveness,
            key: lease.lease_key.clone(),
            worker_id,
            store,
            state: Mutex::new(State {
                lease,
                deadline: sent + timing.failover_time.saturating_sub(timing.safety_margin),
                unconfirmed: Vec::new(),
                offered_at: None,
            }),
            timing,
            lost: watch::channel(false).0,
            checkpoint_lock: tokio::sync::Mutex::new(()),
            renewing: AtomicBool::new(false),
            not_before,
            handoff_requested: AtomicBool::new(false),
            handoff_notify,
            delivered_bytes: AtomicU64::new(0),
            throughput: Mutex::new(ThroughputSample {
                at: Instant::now(),
                kbps: None,
            }),
        }
    }

    /// Counts record data delivered to the processor, for the lease's `throughputKBps`.
    pub(crate) fn record_delivered(&self, bytes: u64) {
        self.delivered_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The lease's throughput in KiB/s since the last sample, smoothed with the samples
    /// before (each counts half as much as the one after it), rounded to 0.01.
    fn sample_throughput(&self) -> Option<f64> {
        let mut sample = self.throughput.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(sample.at).as_secs_f64();
        if elapsed < 0.001 {
            return sample.kbps;
        }
        let bytes = self.delivered_bytes.swap(0, Ordering::Relaxed);
        let rate = bytes as f64 / 1024.0 / elapsed;
        let smoothed = sample.kbps.map_or(rate, |previous| (previous + rate) / 2.0);
        sample.at = now;
        sample.kbps = Some((smoothed * 100.0).round() / 100.0);
        sample.kbps
    }

    /// Whether another worker (or an operator) asked for the lease: this worker is to let
    /// its processor finish and checkpoint, then [`hand_over`](Self::hand_over) the lease.
    pub fn is_handoff_requested(&self) -> bool {
        self.handoff_requested.load(Ordering::SeqCst)
    }

    /// The worker a requested handoff goes to.
    pub fn handoff_target(&self) -> Option<String> {
        let lease = self.copy();
        if lease.checkpoint_owner.as_deref() == Some(self.worker_id.as_str()) {
            lease.lease_owner
        } else {
            None
        }
    }

    /// Takes note of the lease as the table shows it: a handoff request for it raises the
    /// signal (the next write adopts the new owner fields).
    pub(crate) fn observe(&self, item: &Lease) {
        if item.checkpoint_owner.as_deref() == Some(self.worker_id.as_str())
            && !item.is_owned_by(&self.worker_id)
        {
            self.raise_handoff(item.lease_owner.as_deref());
        }
    }

    fn raise_handoff(&self, to: Option<&str>) {
        if !self.handoff_requested.swap(true, Ordering::SeqCst) {
            tracing::info!(shard = %self.key, to = ?to, "graceful handoff requested");
            self.handoff_notify.notify_one();
        }
    }

    /// When processing may start: a lease taken from a worker that may still be alive
    /// (stolen while balancing, or taken from a process with the same worker id) is not
    /// processed before that worker's deadline has passed for sure: the time this worker
    /// first saw the counter it took the lease at, plus the failover time, minus the
    /// safety margin. Then the previous holder has stopped even if it never learnt that
    /// the lease moved (its calls hang).
    pub fn not_before(&self) -> Instant {
        self.not_before
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shard id.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The labels of the shard's metrics.
    pub(crate) fn metrics(&self) -> &ShardLabels {
        &self.metrics
    }

    /// A copy of the lease as last written or read by this worker.
    #[cfg(test)]
    pub async fn snapshot(&self) -> Lease {
        self.copy()
    }

    pub(crate) fn copy(&self) -> Lease {
        self.lock().lease.clone()
    }

    /// The instant after which this worker no longer acts on the lease unless a renewal
    /// (or another write) moved it.
    pub fn deadline(&self) -> Instant {
        let own = self.lock().deadline;
        match self.liveness.deadline_for(self.epoch) {
            Some(worker) => own.min(worker),
            None => own,
        }
    }

    /// Whether the lease was lost: taken by another worker, released, or past its local
    /// deadline.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || Instant::now() >= self.deadline()
    }

    /// Completes when the lease is lost, at the latest at its deadline.
    pub async fn lost(&self) {
        let mut signal = self.lost.subscribe();
        loop {
            if *signal.borrow_and_update() {
                return;
            }
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                self.expired();
                return;
            }
            tokio::select! {
                changed = signal.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn expired(&self) {
        if !*self.lost.borrow() {
            tracing::warn!(shard = %self.key, worker = %self.worker_id, "lease expired locally: not renewed within the failover time minus the safety margin");
            self.metrics.counter(LEASES_EXPIRED_LOCALLY).increment(1);
            self.mark_lost();
        }
    }

    pub(crate) fn mark_lost(&self) {
        self.lost.send_replace(true);
    }

    /// Records a successful write sent at `sent`.
    fn written(&self, lease: Lease, sent: Instant) {
        let mut state = self.lock();
        if lease.lease_counter >= state.lease.lease_counter {
            state.lease = lease;
            state.unconfirmed.clear();
        }
        let deadline = sent
            + self
                .timing
                .failover_time
                .saturating_sub(self.timing.safety_margin);
        if deadline > state.deadline {
            state.deadline = deadline;
        }
    }

    /// After a failed condition: reads the item and decides whether it is still ours.
    /// `applied` is the checkpoint write being resolved, if any.
    async fn resolve(&self, applied: Option<&Written>) -> Result<Resolution, LeaseStoreError> {
        let item = timed(self.timing.request_timeout, self.store.get_lease(&self.key)).await?;
        let Some(item) = item else {
            tracing::info!(shard = %self.key, "lease lost: its item was deleted");
            return Ok(Resolution::Lost);
        };
        // During a handoff, the worker still processing the shard is `checkpointOwner`.
        if item.actual_owner() != Some(self.worker_id.as_str()) {
            tracing::info!(shard = %self.key, owner = ?item.lease_owner, "lease lost: taken by another worker or released");
            return Ok(Resolution::Lost);
        }
        let written = Written::of(&item);
        let mut state = self.lock();
        let applied = applied.is_some_and(|a| *a == written);
        let ours =
            applied || Written::of(&state.lease) == written || state.unconfirmed.contains(&written);
        if !ours {
            tracing::warn!(shard = %self.key, checkpoint = %item.checkpoint, "lease lost: its checkpoint was changed by someone else (a reset?)");
            return Ok(Resolution::Lost);
        }
        let handoff = item.handoff_pending();
        if item.lease_counter > state.lease.lease_counter {
            state.lease = item;
            state.unconfirmed.clear();
        } else if item.lease_counter == state.lease.lease_counter {
            // Handoff requests, offers, acceptances and cancellations change the owner
            // fields without bumping the counter.
            state.lease.lease_owner = item.lease_owner;
            state.lease.checkpoint_owner = item.checkpoint_owner;
            state.lease.handoff_accepted_by = item.handoff_accepted_by;
        }
        let to = state.lease.lease_owner.clone();
        drop(state);
        if handoff {
            self.raise_handoff(to.as_deref());
        }
        tracing::debug!(shard = %self.key, "condition failed on a lease that is still ours (spurious failure): counter adopted");
        Ok(if applied {
            Resolution::Applied
        } else {
            Resolution::Ours
        })
    }

    /// Bumps the counter, moving the deadline. Never waits for a checkpoint; one renewal
    /// at a time (a call for a lease whose renewal is still running returns at once).
    pub(crate) async fn renew(&self) -> Renewal {
        if self.renewing.swap(true, Ordering::SeqCst) {
            return Renewal::Renewed;
        }
        let result = self.renew_once().await;
        self.renewing.store(false, Ordering::SeqCst);
        result
    }

    async fn renew_once(&self) -> Renewal {
        let throughput = self.sample_throughput();
        for _ in 0..3 {
            if self.is_lost() {
                self.expired();
                return Renewal::Lost;
            }
            let mut lease = self.copy();
            lease.throughput_kbps = throughput;
            let sent = Instant::now();
            match timed(self.timing.request_timeout, self.store.renew_lease(&lease)).await {
                Ok(renewed) => {
                    self.written(renewed, sent);
                    return Renewal::Renewed;
                }
                Err(LeaseStoreError::ConditionFailed(_)) => match self.resolve(None).await {
                    Ok(Resolution::Ours | Resolution::Applied) => continue,
                    Ok(Resolution::Lost) => {
                        self.mark_lost();
                        return Renewal::Lost;
                    }
                    Err(error) => return Renewal::Failed(error),
                },
                Err(error) => return Renewal::Failed(error),
            }
        }
        Renewal::Failed(LeaseStoreError::ConditionFailed(self.key.clone()))
    }

    /// Writes a checkpoint. `make` builds the update from the lease as it stands (and may
    /// refuse it); checkpoint writes are serialized, renewals are not blocked.
    pub(crate) async fn write_checkpoint<E>(
        &self,
        make: impl FnOnce(&Lease) -> Result<CheckpointUpdate, E>,
    ) -> Result<Result<(), LeaseStoreError>, E> {
        let _one_at_a_time = self.checkpoint_lock.lock().await;
        if self.is_lost() {
            return Ok(Err(LeaseStoreError::ConditionFailed(self.key.clone())));
        }
        let update = make(&self.copy())?;
        let target = Written::of_update(&update);
        Ok(self.write_checkpoint_update(&update, &target).await)
    }

    async fn write_checkpoint_update(
        &self,
        update: &CheckpointUpdate,
        target: &Written,
    ) -> Result<(), LeaseStoreError> {
        for _ in 0..3 {
            if self.is_lost() {
                self.expired();
                return Err(LeaseStoreError::ConditionFailed(self.key.clone()));
            }
            let lease = {
                let mut state = self.lock();
                if !state.unconfirmed.contains(target) {
                    state.unconfirmed.push(target.clone());
                }
                state.lease.clone()
            };
            let sent = Instant::now();
            let result = timed(
                self.timing.request_timeout,
                self.store.update_checkpoint(&lease, update),
            )
            .await;
            match result {
                Ok(written) => {
                    self.written(written, sent);
                    return Ok(());
                }
                Err(LeaseStoreError::ConditionFailed(_)) => match self.resolve(Some(target)).await?
                {
                    Resolution::Applied => return Ok(()),
                    Resolution::Ours => continue,
                    Resolution::Lost => {
                        self.mark_lost();
                        return Err(LeaseStoreError::ConditionFailed(self.key.clone()));
                    }
                },
                Err(LeaseStoreError::Throttled(error)) => {
                    // Throttled requests are not applied.
                    self.lock().unconfirmed.retain(|w| w != target);
                    return Err(LeaseStoreError::Throttled(error));
                }
                Err(error) => {
                    // Unknown outcome: find out now if the table can tell; otherwise the
                    // target stays among the writes that may be ours.
                    return match self.resolve(Some(target)).await {
                        Ok(Resolution::Applied) => Ok(()),
                        Ok(Resolution::Lost) => {
                            self.mark_lost();
                            Err(LeaseStoreError::ConditionFailed(self.key.clone()))
                        }
                        Ok(Resolution::Ours) | Err(_) => Err(error),
                    };
                }
            }
        }
        Err(LeaseStoreError::Contended(self.key.clone()))
    }

    /// Records the child shards on the lease (after shard end).
    pub(crate) async fn set_child_shards(
        &self,
        children: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError> {
        for _ in 0..3 {
            if self.is_lost() {
                return Err(LeaseStoreError::ConditionFailed(self.key.clone()));
            }
            let lease = self.copy();
            let sent = Instant::now();
            match timed(
                self.timing.request_timeout,
                self.store.update_child_shards(&lease, children),
            )
            .await
            {
                Ok(written) => {
                    self.written(written, sent);
                    return Ok(());
                }
                Err(LeaseStoreError::ConditionFailed(_)) => match self.resolve(None).await? {
                    Resolution::Ours | Resolution::Applied => continue,
                    Resolution::Lost => {
                        self.mark_lost();
                        return Err(LeaseStoreError::ConditionFailed(self.key.clone()));
                    }
                },
                Err(error) => return Err(error),
            }
        }
        Err(LeaseStoreError::ConditionFailed(self.key.clone()))
    }

    /// Offers the lease to `to` (this worker is shutting down): writes the handoff
    /// request `to` would have written. [`release`](Self::release) then waits for `to` to
    /// accept it (a worker that is itself shutting down never does) and hands it over, or
    /// cancels the offer and releases the lease. Returns whether the offer stands.
    pub(crate) async fn offer(&self, to: &str) -> bool {
        let lease = self.copy();
        let call = self.store.request_handoff(&lease, to);
        let offered = match timed(self.timing.request_timeout, call).await {
            Ok(written) => {
                let mut state = self.lock();
                if written.lease_counter == state.lease.lease_counter {
                    state.lease.lease_owner = written.lease_owner;
                    state.lease.checkpoint_owner = written.checkpoint_owner;
                    state.lease.handoff_accepted_by = written.handoff_accepted_by;
                }
                true
            }
            // Lost answer or changed lease: the table tells whether the offer stands.
            Err(_) => {
                matches!(
                    self.resolve(None).await,
                    Ok(Resolution::Ours | Resolution::Applied)
                ) && self.handoff_target().as_deref() == Some(to)
            }
        };
        if offered {
            tracing::info!(shard = %self.key, %to, "offered lease to another worker");
            self.lock().offered_at = Some(Instant::now());
        }
        offered
    }

    /// Waits for the worker an offered lease goes to to accept it, reading the item a few
    /// times a second; past the accept wait, cancels the offer. Returns `false` when the
    /// lease turned out to be lost.
    async fn await_acceptance(&self, offered_at: Instant) -> Result<bool, LeaseStoreError> {
        let poll = (self.timing.handoff_accept_wait / 10)
            .clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut first = true;
        loop {
            let lease = self.copy();
            if lease.is_handoff_accepted() || self.handoff_target().is_none() {
                return Ok(true);
            }
            if Instant::now() >= offered_at + self.timing.handoff_accept_wait {
                tracing::info!(shard = %self.key, to = ?lease.lease_owner, "offer not accepted in time: cancelling it and releasing the lease");
                let call = self.store.cancel_handoff(&lease);
                match timed(self.timing.request_timeout, call).await {
                    Ok(_) => {
                        let mut state = self.lock();
                        state.lease.lease_owner = lease.checkpoint_owner;
                        state.lease.checkpoint_owner = None;
                        state.lease.handoff_accepted_by = None;
                        return Ok(true);
                    }
                    // Accepted or cancelled meanwhile (or an answer lost): read again.
                    Err(LeaseStoreError::ConditionFailed(_)) => {}
                    Err(error) => return Err(error),
                }
            } else if !first {
                tokio::time::sleep(poll).await;
            }
            first = false;
            if matches!(self.resolve(None).await?, Resolution::Lost) {
                return Ok(false);
            }
        }
    }

    /// Gives the lease up once nothing acts on it any more: during a handoff it goes to
    /// the worker that asked for it (or accepted this worker's offer), which starts at
    /// once; otherwise the owner is removed so that any worker may take it at once. The
    /// lease is lost locally whatever the outcome. Returns whether it was handed over.
    pub(crate) async fn release(&self) -> Result<bool, LeaseStoreError> {
        let result = self.give_up().await;
        self.mark_lost();
        result
    }

    async fn give_up(&self) -> Result<bool, LeaseStoreError> {
        let offered_at = self.lock().offered_at;
        if let Some(offered_at) = offered_at {
            if !self.await_acceptance(offered_at).await? {
                return Ok(false);
            }
        }
        for _ in 0..3 {
            let lease = self.copy();
            let to = self.handoff_target();
            let call = match &to {
                Some(to) => self.store.hand_over(&lease, to),
                None => self.store.evict_lease(&lease),
            };
            match timed(self.timing.request_timeout, call).await {
                Ok(_) => {
                    match &to {
                        Some(to) => tracing::info!(shard = %self.key, %to, "lease handed over"),
                        None => tracing::debug!(shard = %self.key, "lease released"),
                    }
                    return Ok(to.is_some());
                }
                Err(LeaseStoreError::ConditionFailed(_)) => match self.resolve(None).await? {
                    Resolution::Ours | Resolution::Applied => continue,
                    // Handed over or released already (an answer lost), or taken.
                    Resolution::Lost => return Ok(false),
                },
                Err(error) => return Err(error),
            }
        }
        Err(LeaseStoreError::Contended(self.key.clone()))
    }
}
