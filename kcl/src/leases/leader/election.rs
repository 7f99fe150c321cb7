//! Leader election through the lock item of the coordinator state table, with the rules of
//! the DynamoDB lock client the Java KCL 3 uses, so that a Java leader and this crate's
//! workers respect each other's lock:
//!
//! - the holder writes a new record version every quarter of the lock's lease duration,
//!   each write conditional on the version before;
//! - a contender takes the lock over (a write conditional on the version it saw) only once
//!   it has seen the same version for longer than the lease duration, by its own clock;
//! - the holder acts as leader only until the send time of its last successful write plus
//!   the lease duration minus a fifth of it: so a stalled or paused leader has stopped
//!   before anyone may take over, whatever happens to its calls (the discipline of lease
//!   deadlines, see `held.rs`).
//!
//! The leader names up to four *successors* in the lock item. They read the lock every
//! second and keep the observations of the fleet a leader needs, so the first of them that
//! sees the lock expire takes over at once and knows which workers died. Other workers read
//! the lock once per failover time and wait longer (the lease duration plus twice the
//! failover time) before they contend, so a successor wins when one is alive.
//!
//! A write whose answer was lost is resolved by reading the lock again: the record
//! version tells whether it was applied.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::leases::coordination::{CoordinatorStore, LockItem};
use crate::leases::held::timed;
use crate::leases::store::LeaseStoreError;
use crate::metrics::{CoordinationMetrics, WorkerLabels};

/// How many successors a leader names.
pub(crate) const SUCCESSORS: usize = 4;

/// Settings of the election.
#[derive(Clone, Debug)]
pub(crate) struct ElectionConfig {
    pub worker_id: String,
    /// The lock item's key.
    pub lock_key: String,
    /// The lock's lease duration, written in the lock item.
    pub lock_duration: Duration,
    /// Timeout of one call.
    pub request_timeout: Duration,
    /// How often successors read the lock.
    pub successor_poll: Duration,
    /// How often other workers read it; they also wait twice this more than successors.
    pub follower_poll: Duration,
    /// The labels of the worker's metrics.
    pub metrics: WorkerLabels,
}

impl ElectionConfig {
    fn heartbeat_interval(&self) -> Duration {
        self.lock_duration / 4
    }

    fn trust(&self) -> Duration {
        self.lock_duration - self.lock_duration / 5
    }
}

/// This worker's part in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Leader,
    /// Named in the lock item to take over first.
    Successor,
    Follower,
}

#[derive(Clone, Debug)]
struct Held {
    item: LockItem,
    deadline: Instant,
    /// A renewal whose answer was lost, and when it was sent.
    unconfirmed: Option<(LockItem, Instant)>,
}

#[derive(Debug, Default)]
struct State {
    held: Option<Held>,
    /// The record version last seen and since when (for taking an expired lock over).
    seen: Option<(String, Instant)>,
    /// The lock item as last read or written.
    last: Option<LockItem>,
    /// A leader that gave up (its lease table calls kept failing) does not contend before
    /// this.
    no_contest_until: Option<Instant>,
}

/// The election, as one worker takes part in it.
pub(crate) struct Election {
    store: Arc<dyn CoordinatorStore>,
    config: ElectionConfig,
    state: Mutex<State>,
    leading: watch::Sender<bool>,
    /// Whether this worker's row says a leader named it a successor (learnt at each
    /// heartbeat, sooner than a follower reads the lock).
    named: Option<NamedSuccessor>,
    metrics: CoordinationMetrics,
}

/// Tells whether the worker's row names it a successor.
pub(crate) type NamedSuccessor = Box<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Election {
    pub(crate) fn new(store: Arc<dyn CoordinatorStore>, config: ElectionConfig) -> Self {
        Election {
            store,
            metrics: CoordinationMetrics::new(&config.metrics),
            config,
            state: Mutex::new(State::default()),
            leading: watch::channel(false).0,
            named: None,
        }
    }

    /// Also a successor when `named` says the worker's row names it one.
    pub(crate) fn with_named_successor(mut self, named: NamedSuccessor) -> Self {
        self.named = Some(named);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This worker's id.
    /// The worker's coordination metrics (the assigner counts its writes there).
    pub(crate) fn metrics(&self) -> &CoordinationMetrics {
        &self.metrics
    }

    /// Until when this worker may act as leader, if it leads.
    pub(crate) fn leading_until(&self) -> Option<Instant> {
        let deadline = self.state().held.as_ref()?.deadline;
        (Instant::now() < deadline).then_some(deadline)
    }

    /// This worker's id.
    pub(crate) fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Whether this worker leads now.
    pub(crate) fn is_leader(&self) -> bool {
        self.leading_until().is_some()
    }

    /// Tells when leadership is won or lost.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// This worker's role, from the lock as last seen.
    pub(crate) fn role(&self) -> Role {
        if self.is_leader() {
            return Role::Leader;
        }
        if self.named.as_ref().is_some_and(|named| named()) {
            return Role::Successor;
        }
        let state = self.state();
        match &state.last {
            // No lock (a new application): everyone contends at once.
            None => Role::Successor,
            Some(lock) if lock.released => Role::Successor,
            Some(lock) if lock.successors.contains(&self.config.worker_id) => Role::Successor,
            Some(_) => Role::Follower,
        }
    }

    /// The leader as last seen (this worker when it leads).
    pub(crate) fn leader(&self) -> Option<String> {
        let state = self.state();
        state
            .last
            .as_ref()
            .filter(|lock| !lock.released)
            .map(|lock| lock.owner.clone())
    }

    /// The successors named in the lock as last seen.
    pub(crate) fn successors(&self) -> Vec<String> {
        self.state()
            .last
            .as_ref()
            .map(|lock| lock.successors.clone())
            .unwrap_or_default()
    }

    fn publish(&self) {
        let leading = self.is_leader();
        self.metrics.leader.set(if leading { 1.0 } else { 0.0 });
        self.leading.send_if_modified(|was| {
            let changed = *was != leading;
            *was = leading;
            changed
        });
    }

    /// One step: a heartbeat when leading, else a look at the lock (and a takeover when it
    /// is free or expired). `successors` names the successors to write. Returns how long
    /// to wait before the next step.
    pub(crate) async fn step(&self, successors: Vec<String>) -> Duration {
        let held = self.state().held.clone();
        let pause = match held {
            Some(held) => self.renew(held, successors).await,
            None => self.contend().await,
        };
        self.publish();
        pause
    }

    async fn renew(&self, held: Held, successors: Vec<String>) -> Duration {
        let now = Instant::now();
        let me = &self.config.worker_id;
        if now >= held.deadline {
            tracing::warn!(worker = %me, "leadership lapsed: no lock heartbeat succeeded in time");
            self.state().held = None;
            return self.config.successor_poll;
        }
        let renewed = held.item.renewed(successors);
        let sent = Instant::now();
        let call = self.store.renew_lock(&held.item, &renewed);
        let (before, after) = (held.item.successors.clone(), renewed.successors.clone());
        match timed(self.config.request_timeout, call).await {
            Ok(()) => {
                self.confirmed(renewed, sent);
                self.tell_successors(&before, &after).await;
            }
            Err(LeaseStoreError::ConditionFailed(_)) => {
                self.resolve(&held, Some((renewed, sent))).await
            }
            Err(error) => {
                tracing::debug!(%error, "leader lock heartbeat failed");
                if let Some(current) = self.state().held.as_mut() {
                    current.unconfirmed = Some((renewed, sent));
                }
            }
        }
        self.config.heartbeat_interval()
    }

    /// Tells the workers named (or no longer named) successors in their rows, so that they
    /// start watching the fleet at their next heartbeat instead of at their next read of
    /// the lock. Best effort: the lock item says it too.
    async fn tell_successors(&self, before: &[String], after: &[String]) {
        let key = &self.config.lock_key;
        let changes = after
            .iter()
            .filter(|w| !before.contains(w))
            .map(|w| (w, true))
            .chain(
                before
                    .iter()
                    .filter(|w| !after.contains(w))
                    .map(|w| (w, false)),
            );
        for (worker, named) in changes {
            let call = self.store.name_successor(worker, key, named);
            if let Err(error) = timed(self.config.request_timeout, call).await {
                tracing::debug!(%worker, %error, "telling a successor failed");
            }
        }
    }

    /// A write of ours that carries `item` and was sent at `sent` is known applied.
    fn confirmed(&self, item: LockItem, sent: Instant) {
        let mut state = self.state();
        let deadline = sent + self.config.trust();
        state.last = Some(item.clone());
        state.seen = None;
        match state.held.as_mut() {
            Some(held) => {
                held.item = item;
                held.deadline = held.deadline.max(deadline);
                held.unconfirmed = None;
            }
            None => {
                tracing::info!(worker = %self.config.worker_id, "became leader");
                state.held = Some(Held {
                    item,
                    deadline,
                    unconfirmed: None,
                });
            }
        }
    }

    /// After a failed condition (or a lost answer): reads the lock to tell whether one of
    /// our writes was applied, or the lock went to someone else.
    async fn resolve(&self, held: &Held, attempt: Option<(LockItem, Instant)>) {
        let read = timed(
            self.config.request_timeout,
            self.store.read_lock(&self.config.lock_key),
        )
        .await;
        let Ok(current) = read else {
            return;
        };
        let ours = [attempt, held.unconfirmed.clone()]
            .into_iter()
            .flatten()
            .find(|(item, _)| {
                current.as_ref().is_some_and(|c| {
                    c.record_version == item.record_version && c.owner == item.owner
                })
            });
        match ours {
            Some((item, sent)) => self.confirmed(item, sent),
            None => {
                tracing::info!(worker = %self.config.worker_id, leader = ?current.as_ref().map(|c| &c.owner), "lost leadership: the lock changed hands");
                let mut state = self.state();
                state.held = None;
                state.seen = current
                    .as_ref()
                    .map(|c| (c.record_version.clone(), Instant::now()));
                state.last = current;
            }
        }
    }

    async fn contend(&self) -> Duration {
        let me = self.config.worker_id.clone();
        let resting = self
            .state()
            .no_contest_until
            .is_some_and(|until| Instant::now() < until);
        let read = timed(
            self.config.request_timeout,
            self.store.read_lock(&self.config.lock_key),
        )
        .await;
        let current = match read {
            Ok(current) => current,
            Err(error) => {
                tracing::debug!(%error, "reading the leader lock failed");
                return self.poll();
            }
        };
        let now = Instant::now();
        let take_over = {
            let mut state = self.state();
            state.last = current.clone();
            match &current {
                None => true,
                Some(lock) if lock.released => true,
                Some(lock) => {
                    let patience = if lock.successors.contains(&me) {
                        lock.lease_duration
                    } else {
                        lock.lease_duration + 2 * self.config.follower_poll
                    };
                    match &state.seen {
                        Some((version, since)) if *version == lock.record_version => {
                            now.duration_since(*since) > patience
                        }
                        _ => {
                            state.seen = Some((lock.record_version.clone(), now));
                            false
                        }
                    }
                }
            }
        };
        if take_over && !resting {
            self.acquire(current.as_ref()).await;
        }
        if self.is_leader() {
            self.config.heartbeat_interval()
        } else {
            self.poll()
        }
    }

    fn poll(&self) -> Duration {
        match self.role() {
            Role::Leader => self.config.heartbeat_interval(),
            Role::Successor => self.config.successor_poll,
            Role::Follower => self.config.follower_poll,
        }
    }

    async fn acquire(&self, previous: Option<&LockItem>) {
        let lock = LockItem::new(
            self.config.lock_key.clone(),
            self.config.worker_id.clone(),
            self.config.lock_duration,
            Vec::new(),
        );
        let sent = Instant::now();
        let call = self.store.acquire_lock(previous, &lock);
        match timed(self.config.request_timeout, call).await {
            Ok(()) => self.confirmed(lock, sent),
            Err(LeaseStoreError::ConditionFailed(_)) => {
                tracing::debug!("another worker took the leader lock first")
            }
            Err(error) => {
                tracing::debug!(%error, "taking the leader lock failed; reading it back");
                let read = timed(
                    self.config.request_timeout,
                    self.store.read_lock(&self.config.lock_key),
                )
                .await;
                if let Ok(Some(current)) = read {
                    if current.record_version == lock.record_version {
                        self.confirmed(lock, sent);
                    }
                }
            }
        }
    }

    /// Gives leadership up because this worker cannot lead (its calls to the lease table
    /// keep failing, as the Java KCL gives up after three failed runs): releases the lock
    /// and does not contend for `rest`, so that a successor takes over.
    pub(crate) async fn give_up(&self, rest: Duration) {
        tracing::warn!(worker = %self.config.worker_id, "giving the leadership up: the lease table keeps failing for this worker");
        self.state().no_contest_until = Some(Instant::now() + rest);
        self.release().await;
    }

    /// Gives leadership up (a graceful shutdown): deletes the lock item, as the Java KCL
    /// does, so a successor takes over at its next look.
    pub(crate) async fn release(&self) {
        let held = self.state().held.take();
        self.publish();
        let Some(held) = held else {
            return;
        };
        match timed(
            self.config.request_timeout,
            self.store.release_lock(&held.item),
        )
        .await
        {
            Ok(()) => tracing::info!(worker = %self.config.worker_id, "released the leader lock"),
            Err(error) => {
                tracing::warn!(%error, "releasing the leader lock failed: it expires for the successors")
            }
        }
    }
}

/// Takes part in the election until the task is dropped; `successors` names the workers a
/// leader writes as its successors, and `watching` is told, every poll while this worker
/// leads or is a successor, that the fleet should be watched. A follower's long pause ends
/// early when its row says a leader named it a successor.
pub(crate) async fn elect_forever(
    election: Arc<Election>,
    successors: impl Fn() -> Vec<String> + Send,
    watching: impl Fn() + Send,
) {
    loop {
        let pause = election.step(successors()).await;
        let until = Instant::now() + pause;
        loop {
            let role = election.role();
            if role != Role::Follower {
                watching();
            }
            let now = Instant::now();
            if now >= until || (role == Role::Successor && pause > election.config.successor_poll) {
                break;
            }
            tokio::time::sleep((until - now).min(election.config.successor_poll)).await;
        }
    }
}

#[cfg(test)]
mod tests;
