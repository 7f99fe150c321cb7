//! The lease layer of one worker, as the scheduler runs it: renewal, discovery, and either
//! the taker rounds of every worker for itself ([`Coordination::Workers`]) or the leader's
//! design ([`Coordination::Leader`]): a heartbeat, the election, watching the fleet and,
//! on the leader, the assignment rounds. Each runs as a task of its own; the scheduler
//! learns of leases taken and handoffs asked through [`LeaseWorker::changed`].
//!
//! ```text
//!             ┌──────────── every worker ────────────┐      leader only
//!  heartbeat ─┤ worker row (liveness)                │
//!  renewer ───┤ held leases' counters                │   assigner: scan lease table,
//!  discovery ─┤ owner index → take what is assigned  │◄─ plan, fence dead workers,
//!  election ──┤ lock item (leader, successors)       │   assign, ask for handoffs
//!             └──────────────────────────────────────┘   watch: worker rows (successors too)
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::coordination::CoordinatorStore;
use super::coordinator::{
    next_take_at, renewer::renew_forever, LeaseCoordinator, LeaseCoordinatorConfig,
};
use super::heartbeat::{beat_forever, Heartbeat};
use super::leader::assigner::{assign_forever, Assigner, AssignerConfig};
use super::leader::election::{elect_forever, Election, ElectionConfig};
use super::leader::plan::{CpuBalancing, PlanConfig};
use super::leader::watch::FleetWatch;
use super::liveness::Liveness;
use super::store::LeaseStore;
use crate::metrics::WorkerLabels;

/// How the leases are shared out among an application's workers.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Coordination {
    /// A leader, elected through the lock item of the coordinator state table, assigns
    /// every lease; workers find theirs through the lease table's owner index and never
    /// scan the table (the Java KCL 3's design; the default). See [`LeaderConfig`].
    Leader(LeaderConfig),
    /// Every worker scans the lease table at its taker interval and takes its share itself:
    /// expired and unassigned leases, then one lease per round from the most loaded worker
    /// (the Java KCL 2.x's design). Lease table reads grow with workers × shards. Used
    /// automatically when the lease table has no owner index.
    Workers,
}

impl Default for Coordination {
    fn default() -> Self {
        Coordination::Leader(LeaderConfig::default())
    }
}

/// Settings of the leader-based coordination. `None` fields follow the failover time.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LeaderConfig {
    /// How often the leader lists the lease table and assigns (default a fifth of the
    /// failover time, 2 s; the Java KCL 3's `leaseAssignmentIntervalMillis` is 2 x
    /// failover). It bounds how late the leader sees a lease expire whose owner it cannot
    /// watch (a worker of another library): expired leases are reassigned within the
    /// failover time plus this.
    pub assignment_interval: Option<Duration>,
    /// The leader lock's lease duration (default half the failover time; the Java KCL 3's
    /// `dynamoDbLockBasedLeaderLeaseDurationInMillis` is 120 s). The leader writes its lock
    /// every quarter of it; a dead leader is replaced by a successor after about this long.
    pub lock_duration: Option<Duration>,
    /// Balancing by the workers' CPU utilisation as well (default off); see
    /// [`CpuBalancing`].
    pub cpu_balancing: Option<CpuBalancing>,
}

impl LeaderConfig {
    /// The assignment interval in effect for `failover`.
    pub fn assignment_interval(&self, failover: Duration) -> Duration {
        self.assignment_interval.unwrap_or(failover / 5)
    }

    /// The lock duration in effect for `failover`.
    pub fn lock_duration(&self, failover: Duration) -> Duration {
        self.lock_duration.unwrap_or(failover / 2)
    }
}

/// A leader that sees no other live worker lists the worker rows, and looks for changes to
/// its own leases, this many times less often: nobody can die unseen, its own assignments
/// wake its discovery at once, and a worker that joins is seen within a few seconds (four
/// looks a second cost a lone `kinesis consume` a third of its idle CPU).
const LONE_WORKER_SLOWDOWN: u32 = 4;

/// How often the leader and its successors list the worker rows.
pub(crate) fn fleet_poll(failover: Duration) -> Duration {
    (failover / 20).max(Duration::from_millis(10))
}

/// A worker's presence in the fleet when a leader assigns leases: its liveness, its
/// heartbeat, and its watch of the other workers. Shared by the streams of a multi-stream
/// worker (one row per worker).
pub(crate) struct Presence {
    store: Arc<dyn CoordinatorStore>,
    liveness: Arc<Liveness>,
    heartbeat: Arc<Heartbeat>,
    fleet: Arc<FleetWatch>,
    renewal_interval: Duration,
    fleet_poll: Duration,
    /// When an election last wanted the fleet watched (leader or successor), as the
    /// offset of an instant from `started`.
    wanted: AtomicU64,
    started: Instant,
    tasks: Mutex<Vec<AbortHandle>>,
    /// How many lease workers (streams) run with it: the row says *stopping* only when the
    /// last one stops.
    users: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

/// Settings of a worker's presence.
#[derive(Clone, Debug)]
pub(crate) struct PresenceConfig {
    pub worker_id: String,
    pub failover_time: Duration,
    pub safety_margin: Duration,
    pub renewal_interval: Duration,
    pub request_timeout: Duration,
    pub max_leases: Option<u64>,
    pub report_cpu: bool,
    /// The labels of the worker's metrics.
    pub metrics: WorkerLabels,
}

impl Presence {
    pub(crate) fn new(store: Arc<dyn CoordinatorStore>, config: PresenceConfig) -> Self {
        let liveness = Arc::new(Liveness::bounded(
            config.failover_time.saturating_sub(config.safety_margin),
        ));
        let heartbeat = Arc::new(Heartbeat::new(
            store.clone(),
            liveness.clone(),
            config.worker_id.clone(),
            config.request_timeout,
            config.max_leases,
            config.report_cpu,
            &config.metrics,
        ));
        let fleet = Arc::new(FleetWatch::new(
            store.clone(),
            liveness.clone(),
            config.worker_id,
            config.failover_time,
            config.request_timeout,
        ));
        Presence {
            store,
            liveness,
            heartbeat,
            fleet,
            renewal_interval: config.renewal_interval,
            fleet_poll: fleet_poll(config.failover_time),
            wanted: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            tasks: Mutex::new(Vec::new()),
            users: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Starts the heartbeat and the fleet watch, once (each lease worker using the presence
    /// calls it, with its stream when the worker consumes several).
    fn start(self: &Arc<Self>, stream: Option<&str>) {
        self.users.fetch_add(1, Ordering::SeqCst);
        if let Some(stream) = stream {
            self.heartbeat.join_stream(stream);
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if !tasks.is_empty() {
            if stream.is_some() {
                // Said at once, not at the next heartbeat: the stream's leader waits for it.
                let heartbeat = self.heartbeat.clone();
                tokio::spawn(async move { heartbeat.beat().await });
            }
            return;
        }
        let heartbeat = tokio::spawn(beat_forever(self.heartbeat.clone(), self.renewal_interval));
        let presence = Arc::downgrade(self);
        let poll = self.fleet_poll;
        let watch = tokio::spawn(async move {
            loop {
                let Some(presence) = presence.upgrade() else {
                    return;
                };
                let mut pause = poll;
                if presence.is_watch_wanted() {
                    presence.fleet.look().await;
                    if presence.fleet.is_alone() {
                        pause = poll * LONE_WORKER_SLOWDOWN;
                    }
                    if let Some(death) = presence.fleet.next_death() {
                        pause = pause.min(death.saturating_duration_since(Instant::now()));
                    }
                }
                drop(presence);
                tokio::time::sleep(pause).await;
            }
        });
        tasks.push(heartbeat.abort_handle());
        tasks.push(watch.abort_handle());
    }

    /// A lease worker using the presence stops: the row no longer names its stream (that
    /// stream's leader gives this worker nothing more of it), and the last one marks the
    /// row stopping (no leader gives it anything more).
    /// Returns whether the row changed.
    fn leave(&self, stream: Option<&str>) -> bool {
        let previous = self
            .users
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        let last = previous == Ok(1);
        if last {
            self.heartbeat.set_stopping();
        }
        let left = stream.is_some_and(|s| self.heartbeat.leave_stream(s));
        last || left
    }

    /// An election wants the fleet watched (its worker leads or is a successor).
    fn want_watch(&self) {
        let offset = Instant::now().duration_since(self.started).as_millis();
        self.wanted.store(
            u64::try_from(offset).unwrap_or(u64::MAX - 1),
            Ordering::Relaxed,
        );
    }

    fn is_watch_wanted(&self) -> bool {
        let wanted = self.wanted.load(Ordering::Relaxed);
        if wanted == u64::MAX {
            return false;
        }
        let at = self.started + Duration::from_millis(wanted);
        Instant::now().duration_since(at) < self.fleet_poll * 3 + Duration::from_secs(2)
    }

    pub(crate) fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    pub(crate) fn store(&self) -> &Arc<dyn CoordinatorStore> {
        &self.store
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// The leader's parts of one lease table (one stream).
struct LeaderParts {
    presence: Arc<Presence>,
    /// The stream's identifier, when the worker consumes several.
    stream: Option<String>,
    election: Arc<Election>,
    assigner: Arc<Assigner>,
    assignment_interval: Duration,
}

/// The lease layer of one worker (of one stream).
pub(crate) struct LeaseWorker {
    coordinator: Arc<LeaseCoordinator>,
    leader: Option<LeaderParts>,
    renewal_interval: Duration,
    discovery_interval: Duration,
    taker_interval: Duration,
    /// Without a leader: whether this worker's id sorts first among the owners of the last
    /// taker round (it runs the periodic shard sync).
    first_owner: Arc<AtomicBool>,
    take_now: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for LeaseWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWorker")
            .field("coordinator", &self.coordinator)
            .field("leader", &self.leader.is_some())
            .finish_non_exhaustive()
    }
}

/// Settings of a worker's lease layer.
#[derive(Clone, Debug)]
pub(crate) struct LeaseWorkerConfig {
    pub coordinator: LeaseCoordinatorConfig,
    pub renewal_interval: Duration,
    pub discovery_interval: Duration,
    pub taker_interval: Duration,
}

/// How often a worker looks for the completion of a handoff to it that is under way.
const HANDOFF_POLL_INTERVAL: Duration = Duration::from_millis(100);

impl LeaseWorker {
    /// Every worker takes its own leases.
    pub(crate) fn workers(store: Arc<dyn LeaseStore>, config: LeaseWorkerConfig) -> Self {
        let coordinator = Arc::new(LeaseCoordinator::new(store, config.coordinator.clone()));
        Self::with(coordinator, None, config)
    }

    /// A leader assigns the leases. `lock_key` names the lock item (one per stream of a
    /// multi-stream worker); `stream` is the stream's identifier when the worker consumes
    /// several (its leases go only to the workers that consume it).
    pub(crate) fn with_leader(
        store: Arc<dyn LeaseStore>,
        presence: Arc<Presence>,
        leader: &LeaderConfig,
        lock_key: String,
        stream: Option<String>,
        config: LeaseWorkerConfig,
    ) -> Self {
        let coordinator_config = &config.coordinator;
        let failover = coordinator_config.failover_time;
        let coordinator = Arc::new(LeaseCoordinator::with_presence(
            store.clone(),
            coordinator_config.clone(),
            presence.liveness().clone(),
            presence.store().clone(),
            stream.clone(),
        ));
        let heartbeat = presence.heartbeat.clone();
        let named_key = lock_key.clone();
        let election = Arc::new(
            Election::new(
                presence.store().clone(),
                ElectionConfig {
                    worker_id: coordinator_config.worker_id.clone(),
                    lock_key,
                    lock_duration: leader.lock_duration(failover),
                    request_timeout: coordinator_config.request_timeout(),
                    successor_poll: fleet_poll(failover),
                    follower_poll: failover,
                    metrics: coordinator_config.metrics.worker().clone(),
                },
            )
            .with_named_successor(Box::new(move || heartbeat.is_named_successor(&named_key))),
        );
        let assigner = Arc::new(Assigner::new(
            store,
            presence.store().clone(),
            election.clone(),
            presence.fleet.clone(),
            AssignerConfig {
                failover_time: failover,
                request_timeout: coordinator_config.request_timeout(),
                plan: PlanConfig {
                    max_leases_per_worker: coordinator_config.max_leases_per_worker,
                    throughput: coordinator_config.throughput_balancing.clone(),
                    cpu: leader.cpu_balancing.clone(),
                },
                settle: config.renewal_interval,
                graceful: coordinator_config.graceful_handoff_timeout.is_some(),
                stream: stream.clone(),
            },
        ));
        let parts = LeaderParts {
            presence,
            stream,
            election,
            assigner,
            assignment_interval: leader.assignment_interval(failover),
        };
        Self::with(coordinator, Some(parts), config)
    }

    fn with(
        coordinator: Arc<LeaseCoordinator>,
        leader: Option<LeaderParts>,
        config: LeaseWorkerConfig,
    ) -> Self {
        LeaseWorker {
            coordinator,
            leader,
            renewal_interval: config.renewal_interval,
            discovery_interval: config.discovery_interval,
            taker_interval: config.taker_interval,
            first_owner: Arc::new(AtomicBool::new(true)),
            take_now: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The worker's leases.
    pub(crate) fn coordinator(&self) -> &Arc<LeaseCoordinator> {
        &self.coordinator
    }

    /// Starts the lease layer's tasks: renewals in `renewals` (they run until the last
    /// lease is given up at shutdown), the rest (discovery, taking or the election and the
    /// leader's rounds) in `tasks` (stopped when a shutdown begins).
    pub(crate) fn spawn(&self, renewals: &mut JoinSet<()>, tasks: &mut JoinSet<()>) {
        let span = tracing::Span::current();
        let coordinator = self.coordinator.clone();
        renewals.spawn(tracing::Instrument::instrument(
            renew_forever(coordinator.clone(), self.renewal_interval),
            span.clone(),
        ));
        let interval = self.discovery_interval;
        let (pace, own_changes): (Box<dyn Fn() -> Duration + Send>, _) = match &self.leader {
            None => (
                Box::new(move || interval),
                Arc::new(tokio::sync::Notify::new()),
            ),
            Some(leader) => {
                let (election, fleet) = (leader.election.clone(), leader.presence.fleet.clone());
                let pace = move || {
                    if election.is_leader() && fleet.is_alone() {
                        interval * LONE_WORKER_SLOWDOWN
                    } else {
                        interval
                    }
                };
                (Box::new(pace), leader.assigner.own_changes())
            }
        };
        let discovery = discover_forever(coordinator.clone(), pace, own_changes);
        tasks.spawn(tracing::Instrument::instrument(discovery, span.clone()));
        match &self.leader {
            None => {
                tasks.spawn(tracing::Instrument::instrument(
                    take_forever(
                        coordinator,
                        self.taker_interval,
                        self.take_now.clone(),
                        self.first_owner.clone(),
                    ),
                    span,
                ));
            }
            Some(leader) => {
                leader.presence.start(leader.stream.as_deref());
                let election = leader.election.clone();
                let presence = leader.presence.clone();
                let watch = leader.presence.fleet.clone();
                let stream = leader.stream.clone();
                tasks.spawn(tracing::Instrument::instrument(
                    elect_forever(
                        election.clone(),
                        move || watch.successors(&election.successors(), stream.as_deref()),
                        move || presence.want_watch(),
                    ),
                    span.clone(),
                ));
                tasks.spawn(tracing::Instrument::instrument(
                    assign_forever(leader.assigner.clone(), leader.assignment_interval),
                    span,
                ));
            }
        }
    }

    /// Completes when a lease was taken or a handoff asked of this worker.
    pub(crate) async fn changed(&self) {
        self.coordinator.changed().await;
    }

    /// Whether this worker runs the periodic shard sync: the leader (or, without one, the
    /// worker whose id sorts first among the owners of the last taker round).
    pub(crate) fn leads_shard_sync(&self) -> bool {
        match &self.leader {
            Some(leader) => leader.election.is_leader(),
            None => self.first_owner.load(Ordering::Relaxed),
        }
    }

    /// Leases were just created (a shard's children, a new application's shards): a taker
    /// round now, or the leader's next round now.
    pub(crate) fn leases_created(&self) {
        match &self.leader {
            None => self.take_now.notify_one(),
            Some(leader) => leader.assigner.round_soon(),
        }
    }

    /// Tells when this worker wins or loses the leadership; `None` without a leader.
    pub(crate) fn leadership(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.leader.as_ref().map(|l| l.election.subscribe())
    }

    /// The current leader, as this worker last saw the lock.
    pub(crate) fn leader_id(&self) -> Option<String> {
        self.leader.as_ref().and_then(|l| l.election.leader())
    }

    /// The first step of a graceful shutdown, once the tasks other than renewals are
    /// stopped: the row says this worker is stopping (the leader gives it nothing more), a
    /// leader gives its lock up (a successor takes over at its next look), and the
    /// coordinator hands back what is on its way and offers its leases.
    pub(crate) async fn begin_shutdown(&self) {
        if let Some(leader) = &self.leader {
            if leader.presence.leave(leader.stream.as_deref()) {
                // Said at once, not at the next heartbeat: the leader stops giving it leases.
                leader.presence.heartbeat.beat().await;
            }
            leader.election.release().await;
        }
        self.coordinator.begin_shutdown().await;
    }

    /// The last step, once every lease held is handed over or released: a leader may have
    /// assigned this worker a lease before it learnt the worker was stopping; hands those
    /// back too (they would otherwise wait until the worker is found dead).
    pub(crate) async fn finish_shutdown(&self) {
        if self.leader.is_some() {
            self.coordinator.hand_back_incoming().await;
        }
    }
}

/// Looks for leases handed or assigned to this worker every `interval()` (every 100 ms
/// while a handoff to it is under way), and at once when this worker's own leader round
/// changed one of its leases (`now`).
async fn discover_forever(
    coordinator: Arc<LeaseCoordinator>,
    interval: impl Fn() -> Duration,
    now: Arc<tokio::sync::Notify>,
) {
    loop {
        coordinator.discover().await;
        let pause = if coordinator.awaiting_handoff() {
            interval().min(HANDOFF_POLL_INTERVAL)
        } else {
            interval()
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = now.notified() => {}
        }
    }
}

/// Without a leader: a taker round at once, then at the taker interval or when the first
/// observed lease expires (see [`next_take_at`]), or when `now` is told.
async fn take_forever(
    coordinator: Arc<LeaseCoordinator>,
    interval: Duration,
    now: Arc<tokio::sync::Notify>,
    first_owner: Arc<AtomicBool>,
) {
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = now.notified() => {}
        }
        next = match coordinator.take_leases().await {
            Ok(round) => {
                let me = coordinator.config().worker_id.as_str();
                let first = round
                    .leases
                    .iter()
                    .filter(|l| !l.is_finished())
                    .filter_map(|l| l.lease_owner.as_deref())
                    .min();
                first_owner.store(first.is_none_or(|first| first >= me), Ordering::Relaxed);
                next_take_at(Instant::now(), interval, round.next_expiry)
            }
            Err(error) => {
                tracing::warn!(%error, "lease taking failed");
                Instant::now() + interval
            }
        };
    }
}

#[cfg(test)]
mod tests;
