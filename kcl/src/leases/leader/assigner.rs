//! The leader's round: list the lease table (eventually consistent: each write is
//! conditional on the lease as listed), note which counters stopped changing, decide
//! ([`plan_assignments`]) and write: fence dead workers, give free leases to live workers,
//! ask holders to hand leases over, cancel handoffs to dead workers. Before every write the
//! leader checks that it still leads; a write whose answer was lost is resolved by reading
//! the item back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::election::Election;
use super::fleet::WorkerState;
use super::plan::{plan_assignments, Assignment, FleetView, MoveReason, PlanConfig};
use super::watch::FleetWatch;
use crate::lease::Lease;
use crate::leases::coordination::CoordinatorStore;
use crate::leases::coordinator::observations::Observations;
use crate::leases::held::timed;
use crate::leases::store::{LeaseStore, LeaseStoreError};

/// Rows of this crate's workers unchanged for this long are deleted.
const STALE_ROW: Duration = Duration::from_secs(3600);

/// The leader's settings.
#[derive(Clone, Debug)]
pub(crate) struct AssignerConfig {
    pub failover_time: Duration,
    pub request_timeout: Duration,
    pub plan: PlanConfig,
    /// Right after winning the lock, a leader waits up to this long for workers it does not
    /// know yet to show they are alive (one heartbeat interval), so that workers started
    /// together get an even split at once instead of a split and then moves.
    pub settle: Duration,
    /// Balancing moves are graceful handoffs (else direct takes that start after the
    /// holder's deadline).
    pub graceful: bool,
    /// The stream's identifier when workers consume several: leases go only to the
    /// workers whose row names it.
    pub stream: Option<String>,
}

/// What one round saw and did.
#[derive(Debug, Default)]
pub(crate) struct RoundReport {
    /// Leases given directly (free, expired, of dead workers).
    pub assigned: usize,
    /// Balancing moves asked for.
    pub moved: usize,
    /// Leases taken from workers that take their own leases.
    pub stolen: usize,
    pub fenced: usize,
    pub cancelled: usize,
    /// The leases as listed.
    pub leases: Vec<Lease>,
    /// The round waited for the fleet to show itself (a new leader's settle time).
    pub settling: bool,
}

#[derive(Debug, Default)]
struct State {
    seen: Observations<u64>,
    leading_since: Option<Instant>,
    /// Workers a lease moved from or to for CPU, and their heartbeat then.
    cpu_moves: HashMap<String, u64>,
    /// Leases moved by balancing, and when: not moved again by balancing for the failover
    /// time, until their new holders have measured their throughput.
    balancing_moves: HashMap<String, Instant>,
    /// Rounds in a row that could not list the lease table.
    failed_rounds: u32,
}

/// After this many rounds in a row that could not list the lease table, a leader gives the
/// leadership up (the Java KCL 3 gives up after three failed runs).
const FAILED_ROUNDS_TO_GIVE_UP: u32 = 3;

/// The leader's assignment rounds.
pub(crate) struct Assigner {
    leases: Arc<dyn LeaseStore>,
    coordination: Arc<dyn CoordinatorStore>,
    election: Arc<Election>,
    fleet: Arc<FleetWatch>,
    config: AssignerConfig,
    state: Mutex<State>,
    /// Told when a round should run before its time (leases were just created).
    soon: tokio::sync::Notify,
    /// Told when a round gave this worker a lease or asked it to hand one over: its
    /// discovery looks at once instead of at its next interval.
    own_changes: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Assigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assigner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Assigner {
    pub(crate) fn new(
        leases: Arc<dyn LeaseStore>,
        coordination: Arc<dyn CoordinatorStore>,
        election: Arc<Election>,
        fleet: Arc<FleetWatch>,
        config: AssignerConfig,
    ) -> Self {
        Assigner {
            leases,
            coordination,
            election,
            fleet,
            config,
            state: Mutex::new(State::default()),
            soon: tokio::sync::Notify::new(),
            own_changes: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Runs the next round now (when leading).
    pub(crate) fn round_soon(&self) {
        self.soon.notify_one();
    }

    /// Told when a round gave this worker a lease or asked it to hand one over.
    pub(crate) fn own_changes(&self) -> Arc<tokio::sync::Notify> {
        self.own_changes.clone()
    }

    /// A write of this round concerns this worker's own leases: its discovery looks now.
    fn note_own_change(&self, lease: &Lease, to: &str) {
        let me = self.election.worker_id();
        if to == me || lease.actual_owner() == Some(me) {
            self.own_changes.notify_one();
        }
    }

    /// Whether a leader that has led since `leading_since` still waits for the fleet: for
    /// the rows of workers it cannot judge yet, or for any row at all (with none, every
    /// lease would be left without a worker).
    fn settling(
        &self,
        leading_since: Instant,
        now: Instant,
        workers: &std::collections::BTreeMap<String, super::fleet::WorkerView>,
    ) -> bool {
        now.duration_since(leading_since) < self.config.settle && !fleet_shown(workers)
    }

    /// Whether this worker leads and the fleet has shown itself: a worker takes leases,
    /// and none is unknown.
    fn sees_fleet(&self) -> bool {
        self.state().leading_since.is_some()
            && fleet_shown(&self.fleet.view(self.config.stream.as_deref()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// One round, when this worker leads; `None` otherwise.
    pub(crate) async fn round(&self) -> Option<RoundReport> {
        if !self.election.is_leader() {
            self.state().leading_since = None;
            return None;
        }
        let leading_since = *self.state().leading_since.get_or_insert_with(Instant::now);
        let listed = timed(
            self.timeout(),
            self.leases.list_leases_eventually_consistent(),
        )
        .await;
        let leases = match listed {
            Ok(leases) => {
                self.state().failed_rounds = 0;
                leases
            }
            Err(error) => {
                tracing::warn!(%error, "the leader could not list the lease table; trying again next round");
                let failed = {
                    let mut state = self.state();
                    state.failed_rounds += 1;
                    state.failed_rounds
                };
                if failed >= FAILED_ROUNDS_TO_GIVE_UP {
                    self.state().failed_rounds = 0;
                    self.election.give_up(2 * self.config.failover_time).await;
                }
                return Some(RoundReport::default());
            }
        };
        let now = Instant::now();
        let expired = self.observe(&leases, now);
        let workers = self.fleet.view(self.config.stream.as_deref());
        let any_taker = workers.values().any(|w| w.takes_leases());
        let settling = self.settling(leading_since, now, &workers);
        let mut report = RoundReport {
            settling,
            ..RoundReport::default()
        };
        if !settling {
            let cooling = self.cpu_cooling(&workers);
            let recently_moved = self.recently_moved(now);
            let plan = plan_assignments(
                FleetView {
                    leases: &leases,
                    expired: &expired,
                    workers: &workers,
                    cpu_cooling: &cooling,
                    recently_moved: &recently_moved,
                },
                &self.config.plan,
            );
            if plan.unplaced > 0 && any_taker {
                tracing::warn!(
                    unplaced = plan.unplaced,
                    "leases left without a worker: every live worker is at its maximum"
                );
            } else if plan.unplaced > 0 {
                tracing::warn!(
                    unplaced = plan.unplaced,
                    workers = workers.len(),
                    "leases left without a worker: no live worker in the worker metrics table"
                );
            }
            let mut fenced = HashSet::new();
            for (worker, heartbeat) in &plan.fence {
                if self.fence(worker, *heartbeat).await {
                    fenced.insert(worker.clone());
                    report.fenced += 1;
                }
            }
            for assignment in &plan.assign {
                if assignment
                    .after_fence
                    .as_ref()
                    .is_some_and(|dead| !fenced.contains(dead))
                {
                    continue;
                }
                if self.assign(assignment).await {
                    report.assigned += 1;
                    self.note_own_change(&assignment.lease, &assignment.to);
                }
            }
            for (lease, to, reason) in &plan.handoffs {
                if self.hand_off(lease, to, *reason).await {
                    report.moved += 1;
                    self.note_own_change(lease, to);
                    self.state()
                        .balancing_moves
                        .insert(lease.lease_key.clone(), Instant::now());
                    if *reason == MoveReason::Cpu {
                        self.note_cpu_move(lease, to, &workers);
                    }
                }
            }
            for lease in &plan.cancel {
                if self.cancel(lease).await {
                    report.cancelled += 1;
                    self.note_own_change(
                        lease,
                        lease.checkpoint_owner.as_deref().unwrap_or_default(),
                    );
                }
            }
            for (lease, to) in &plan.steals {
                if self.steal(lease, to).await {
                    report.stolen += 1;
                    self.note_own_change(lease, to);
                }
            }
            self.clean_up_rows(&workers).await;
            let metrics = self.election.metrics();
            metrics.leader_writes("fence", report.fenced);
            metrics.leader_writes("assign", report.assigned);
            metrics.leader_writes("move", report.moved);
            metrics.leader_writes("cancel", report.cancelled);
            metrics.leader_writes("steal", report.stolen);
        }
        report.leases = leases;
        Some(report)
    }

    /// Notes the counters; returns the keys of owned leases unchanged for the failover time.
    fn observe(&self, leases: &[Lease], now: Instant) -> HashSet<String> {
        let mut state = self.state();
        let listed: HashSet<&str> = leases.iter().map(|l| l.lease_key.as_str()).collect();
        state.seen.retain(|key| listed.contains(key));
        let failover = self.config.failover_time;
        leases
            .iter()
            .filter(|lease| {
                let since = state
                    .seen
                    .observe(&lease.lease_key, &lease.lease_counter, now);
                lease.actual_owner().is_some() && now.duration_since(since) > failover
            })
            .map(|lease| lease.lease_key.clone())
            .collect()
    }

    /// The leases moved by balancing within the failover time.
    fn recently_moved(&self, now: Instant) -> HashSet<String> {
        let mut state = self.state();
        let failover = self.config.failover_time;
        state
            .balancing_moves
            .retain(|_, at| now.duration_since(*at) < failover);
        state.balancing_moves.keys().cloned().collect()
    }

    fn cpu_cooling(
        &self,
        workers: &std::collections::BTreeMap<String, super::fleet::WorkerView>,
    ) -> HashSet<String> {
        let mut state = self.state();
        // A worker has reported afresh after two more heartbeats.
        state.cpu_moves.retain(|id, at| {
            workers
                .get(id)
                .and_then(|w| w.heartbeat)
                .is_some_and(|now| now < *at + 2)
        });
        state.cpu_moves.keys().cloned().collect()
    }

    fn note_cpu_move(
        &self,
        lease: &Lease,
        to: &str,
        workers: &std::collections::BTreeMap<String, super::fleet::WorkerView>,
    ) {
        let mut state = self.state();
        for id in [lease.lease_owner.as_deref().unwrap_or_default(), to] {
            if let Some(heartbeat) = workers.get(id).and_then(|w| w.heartbeat) {
                state.cpu_moves.insert(id.to_owned(), heartbeat);
            }
        }
    }

    /// Fences a dead worker's row; returns whether it is fenced (a lost answer is read back).
    async fn fence(&self, worker: &str, heartbeat: u64) -> bool {
        if !self.election.is_leader() {
            return false;
        }
        match timed(
            self.timeout(),
            self.coordination.fence_worker(worker, heartbeat),
        )
        .await
        {
            Ok(()) => {
                tracing::warn!(%worker, heartbeat, "worker found dead (no heartbeat for the failover time): its leases go to others");
                true
            }
            Err(LeaseStoreError::ConditionFailed(_)) => {
                tracing::info!(%worker, "a worker thought dead has written again: its leases stay");
                false
            }
            Err(error) => {
                tracing::warn!(%worker, %error, "fencing a dead worker failed; reading its row back");
                match timed(self.timeout(), self.coordination.read_worker(worker)).await {
                    Ok(Some(row)) => {
                        row.fenced_at == Some(heartbeat) && row.heartbeat == Some(heartbeat)
                    }
                    _ => false,
                }
            }
        }
    }

    /// Gives a free lease to a worker: it starts at once (its previous holder has stopped).
    async fn assign(&self, assignment: &Assignment) -> bool {
        if !self.election.is_leader() {
            return false;
        }
        let lease = &assignment.lease;
        let to = assignment.to.as_str();
        let call = self.leases.hand_over(lease, to);
        match timed(self.timeout(), call).await {
            Ok(_) => {
                tracing::info!(shard = %lease.lease_key, %to, previous = ?lease.actual_owner(), "assigned lease");
                true
            }
            Err(LeaseStoreError::ConditionFailed(_)) => false,
            Err(error) => {
                tracing::debug!(shard = %lease.lease_key, %error, "assigning a lease failed; reading it back");
                self.read_back(lease, |now| {
                    now.is_owned_by(to) && now.lease_counter > lease.lease_counter
                })
                .await
            }
        }
    }

    /// Asks a lease's holder to hand it over (or, without graceful handoff, gives it away:
    /// the new owner starts after the holder's deadline).
    async fn hand_off(&self, lease: &Lease, to: &str, reason: MoveReason) -> bool {
        if !self.election.is_leader() {
            return false;
        }
        let call = if self.config.graceful {
            self.leases.request_handoff(lease, to)
        } else {
            self.leases.take_lease(lease, to)
        };
        match timed(self.timeout(), call).await {
            Ok(_) => {
                tracing::info!(shard = %lease.lease_key, from = ?lease.lease_owner, %to, ?reason, "balancing: lease moves");
                true
            }
            Err(LeaseStoreError::ConditionFailed(_)) => false,
            Err(error) => {
                tracing::debug!(shard = %lease.lease_key, %error, "moving a lease failed; reading it back");
                self.read_back(lease, |now| now.is_owned_by(to)).await
            }
        }
    }

    /// Takes a lease from a worker without a row for `to`, as a Java KCL 2.x steal: the
    /// counter is bumped, and `to` starts after the holder's deadline.
    async fn steal(&self, lease: &Lease, to: &str) -> bool {
        if !self.election.is_leader() {
            return false;
        }
        match timed(self.timeout(), self.leases.take_lease(lease, to)).await {
            Ok(_) => {
                tracing::info!(shard = %lease.lease_key, from = ?lease.lease_owner, %to, "balancing: lease taken from a worker that takes its own leases");
                true
            }
            Err(LeaseStoreError::ConditionFailed(_)) => false,
            Err(_) => {
                self.read_back(lease, |now| {
                    now.is_owned_by(to) && now.lease_counter > lease.lease_counter
                })
                .await
            }
        }
    }

    /// Undoes a handoff to a dead worker.
    async fn cancel(&self, lease: &Lease) -> bool {
        if !self.election.is_leader() {
            return false;
        }
        match timed(self.timeout(), self.leases.cancel_handoff(lease)).await {
            Ok(_) => {
                tracing::info!(shard = %lease.lease_key, to = ?lease.lease_owner, "cancelled a handoff to a dead worker");
                true
            }
            Err(LeaseStoreError::ConditionFailed(_)) => false,
            Err(_) => {
                self.read_back(lease, |now| {
                    !now.handoff_pending() && now.lease_owner == lease.checkpoint_owner
                })
                .await
            }
        }
    }

    /// Reads a lease after a write whose outcome is unknown; `applied` tells from the item
    /// whether the write took effect.
    async fn read_back(&self, lease: &Lease, applied: impl Fn(&Lease) -> bool) -> bool {
        match timed(self.timeout(), self.leases.get_lease(&lease.lease_key)).await {
            Ok(Some(now)) => applied(&now),
            _ => false,
        }
    }

    /// Deletes the rows of this crate's workers that have not changed for an hour (worker
    /// ids are unique per process, so every restart leaves one).
    async fn clean_up_rows(
        &self,
        workers: &std::collections::BTreeMap<String, super::fleet::WorkerView>,
    ) {
        let Some(since) = self.fleet.watching_since() else {
            return;
        };
        if since.elapsed() < STALE_ROW {
            return;
        }
        for (id, worker) in workers {
            if !worker.is_dead() || !self.fleet.unchanged_for(id, STALE_ROW) {
                continue;
            }
            let Some(row) = self.fleet.row(id) else {
                continue;
            };
            if timed(self.timeout(), self.coordination.delete_worker(&row))
                .await
                .is_ok()
            {
                tracing::info!(worker = %id, "deleted the row of a worker gone for an hour");
            }
        }
    }
}

/// A worker takes leases, and none is unknown (found at the first look and not seen
/// writing since).
fn fleet_shown(workers: &std::collections::BTreeMap<String, super::fleet::WorkerView>) -> bool {
    workers.values().any(|w| w.takes_leases())
        && !workers.values().any(|w| w.state == WorkerState::Unknown)
}

/// How often a settling leader checks (in memory) whether the fleet has shown itself.
const SETTLE_CHECK: Duration = Duration::from_millis(100);

/// Completes when a settling leader sees the fleet: the next round then runs at once, not
/// an assignment interval after the settling one (a lone worker whose row was not written
/// yet at its first look would otherwise wait that long for its first leases). When the
/// settle time ends first, the next round comes at its interval, as before.
async fn settled(assigner: &Assigner) {
    while !assigner.sees_fleet() {
        tokio::time::sleep(SETTLE_CHECK).await;
    }
}

/// Runs the leader's rounds every `interval` (a round while not leading costs nothing), and
/// at once when this worker becomes the leader or its watch finds a worker dead.
pub(crate) async fn assign_forever(assigner: Arc<Assigner>, interval: Duration) {
    let mut leading = assigner.election.subscribe();
    loop {
        let settling = assigner.round().await.is_some_and(|r| r.settling);
        if assigner.election.is_leader() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = assigner.fleet.death() => {}
                _ = assigner.soon.notified() => {}
                _ = settled(&assigner), if settling => {}
            }
        } else {
            // A new leader starts at once. (Waiting for a change, not for the value: the
            // value may still say leading while the deadline has passed.)
            let _ = tokio::time::timeout(interval, leading.changed()).await;
        }
    }
}
