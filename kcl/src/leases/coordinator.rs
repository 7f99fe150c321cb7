//! One worker's leases: what it holds, and the writes that take, ask for and give up a
//! lease. The seams, each in its own module: renewal ([`renewer`]), the taker round when
//! every worker takes its own leases ([`taker`], deciding with [`plan`]), discovery of
//! leases handed or assigned to this worker ([`discovery`]) and a graceful stop
//! ([`shutdown`]).
//!
//! Expiry is judged as AWS's Java KCL judges it: a lease whose counter this worker has not
//! seen change for the failover time, by this worker's own clock, is expired
//! ([`observations`]). Clocks of different machines are never compared.

mod discovery;
pub(crate) mod observations;
mod plan;
pub(crate) mod renewer;
mod shutdown;
mod taker;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::coordination::CoordinatorStore;
pub use super::held::HeldLease;
use super::held::{timed, Holder, LeaseTiming};
use super::liveness::Liveness;
use super::store::{LeaseStore, LeaseStoreError};
use crate::lease::Lease;
use crate::metrics::{LeaseMetrics, StreamLabels};
use observations::Observations;
pub(crate) use taker::next_take_at;

/// Settings of the lease algorithm.
#[derive(Clone, Debug)]
pub struct LeaseCoordinatorConfig {
    /// This worker's id, written as `leaseOwner`.
    pub worker_id: String,
    /// A lease whose counter did not change for this long is expired and may be taken
    /// (Java KCL `failoverTimeMillis`, default 10 s). Held leases are renewed every third
    /// of it.
    pub failover_time: Duration,
    /// How long before others may take a lease this worker stops acting on it (see
    /// [`HeldLease`]); `None`: a fifth of the failover time.
    pub safety_margin: Option<Duration>,
    /// Timeout of one lease table call; `None`: a quarter of the failover time, so that a
    /// hung renewal ends before the next one is due and one hung call never costs a lease.
    pub request_timeout: Option<Duration>,
    /// The most leases this worker holds (Java KCL `maxLeasesForWorker`, default
    /// unlimited).
    pub max_leases_per_worker: usize,
    /// The most leases taken from another live worker in one round (Java KCL
    /// `maxLeasesToStealAtOneTime`, default 1).
    pub max_leases_to_steal_at_once: usize,
    /// Graceful lease handoff (Java KCL 3 `gracefulLeaseHandoffTimeoutMillis`, default
    /// 30 s): leases taken from a live worker are asked for (the holder finishes,
    /// checkpoints and hands the lease over) instead of taken. A request its holder has
    /// not completed after this time plus the failover time is taken as before. `None`:
    /// taken at once, started after the holder's deadline.
    pub graceful_handoff_timeout: Option<Duration>,
    /// How long a worker shutting down waits for the worker it offers a lease to to accept
    /// it (see [`begin_shutdown`](LeaseCoordinator::begin_shutdown)) before releasing the
    /// lease instead. Workers look for offers at their lease discovery interval: the
    /// scheduler sets three of those.
    pub handoff_accept_wait: Duration,
    /// Balancing by throughput as well as by lease count (see [`ThroughputBalancing`]);
    /// `None`: by count only, as the Java KCL 2.
    pub throughput_balancing: Option<ThroughputBalancing>,
    /// The labels of this worker's metrics (and of its leases').
    pub(crate) metrics: StreamLabels,
}

/// Balancing workers' total throughput (the sum of their leases' `throughputKBps`), as the
/// Java KCL 3 balances it, besides their lease counts.
///
/// A worker whose load is under the fleet's mean by more than `threshold` of the mean asks
/// the most loaded worker, when that one is over the mean by as much and the gap between
/// the two is at least `min_gap_kbps`, for the largest of its leases that carries at most
/// half the gap (a lease without a figure counts as 0): the gap narrows, or stays when only
/// idle leases are left to give, and can never reverse, so no lease goes back and forth,
/// and a hot lease that would only move the problem stays. One lease per round
/// (`max_leases_to_steal_at_once`), by graceful handoff. A worker over the mean by more than
/// `threshold` takes no lease by count from a live worker (it still takes unowned and
/// expired ones), so a hot shard's worker ends up holding fewer leases. Quiet fleets (every
/// gap under `min_gap_kbps`) balance by count alone.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ThroughputBalancing {
    /// How far from the mean, as a fraction of it, a worker's load may be before leases
    /// move (default 0.1, the Java KCL 3's `reBalanceThresholdPercentage` 10).
    pub threshold: f64,
    /// The least gap between two workers' loads that moves a lease (default 100 KiB/s):
    /// below it, throughput is noise.
    pub min_gap_kbps: f64,
}

impl Default for ThroughputBalancing {
    fn default() -> Self {
        ThroughputBalancing {
            threshold: 0.1,
            min_gap_kbps: 100.0,
        }
    }
}

/// The summed throughput of `leases`, KiB/s (leases without a figure count as 0).
fn load<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> f64 {
    leases
        .into_iter()
        .filter_map(|lease| lease.throughput_kbps)
        .sum()
}

impl LeaseCoordinatorConfig {
    /// Java KCL defaults for `worker_id`.
    #[cfg(test)]
    pub fn new(worker_id: impl Into<String>) -> Self {
        let worker_id = worker_id.into();
        LeaseCoordinatorConfig {
            worker_id: worker_id.clone(),
            failover_time: Duration::from_secs(10),
            safety_margin: None,
            request_timeout: None,
            max_leases_per_worker: usize::MAX,
            max_leases_to_steal_at_once: 1,
            graceful_handoff_timeout: Some(Duration::from_secs(30)),
            handoff_accept_wait: Duration::from_millis(1500),
            throughput_balancing: Some(ThroughputBalancing::default()),
            metrics: crate::metrics::WorkerLabels::new("app", &worker_id).stream("stream"),
        }
    }

    /// The safety margin in effect.
    pub fn safety_margin(&self) -> Duration {
        self.safety_margin.unwrap_or(self.failover_time / 5)
    }

    /// The request timeout in effect.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(self.failover_time / 4)
    }

    pub(crate) fn timing(&self) -> LeaseTiming {
        LeaseTiming {
            failover_time: self.failover_time,
            safety_margin: self.safety_margin(),
            request_timeout: self.request_timeout(),
            handoff_accept_wait: self.handoff_accept_wait,
        }
    }
}

/// Renews, takes and releases one worker's leases.
pub struct LeaseCoordinator {
    store: Arc<dyn LeaseStore>,
    config: LeaseCoordinatorConfig,
    held: Mutex<BTreeMap<String, Arc<HeldLease>>>,
    observed: Mutex<Observations<u64>>,
    /// Leases handed to this worker whose holder has not completed the handoff yet, and
    /// since when this worker knows.
    pending: Mutex<HashMap<String, Instant>>,
    /// Leases held per other live worker, as the last taker round saw them.
    live_workers: Mutex<BTreeMap<String, usize>>,
    /// Leases given up without a write because their processor could not be stopped: they
    /// must expire, never be released.
    abandoned: Mutex<std::collections::HashSet<String>>,
    /// Set when this worker begins shutting down: it accepts no more offers.
    stopping: std::sync::atomic::AtomicBool,
    /// Told when a lease is taken or a handoff is asked of this worker (the scheduler then
    /// starts or stops shard consumers).
    changes: Arc<Notify>,
    /// This worker's own liveness (a worker-wide deadline when a leader assigns leases).
    liveness: Arc<Liveness>,
    /// The coordinator tables, when a leader assigns leases (a stopping worker finds the
    /// workers to offer its leases to in the worker rows).
    coordination: Option<Arc<dyn CoordinatorStore>>,
    /// The stream's identifier when the worker consumes several: leases are offered only
    /// to the workers whose row names it.
    stream: Option<String>,
    rng: Mutex<StdRng>,
    metrics: LeaseMetrics,
}

impl std::fmt::Debug for LeaseCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseCoordinator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LeaseCoordinator {
    /// A coordinator holding nothing yet, whose leases have no worker-wide deadline (every
    /// worker takes its own leases).
    pub fn new(store: Arc<dyn LeaseStore>, config: LeaseCoordinatorConfig) -> Self {
        Self::build(store, config, Arc::new(Liveness::unbounded()), None, None)
    }

    /// A coordinator holding nothing yet, of a worker a leader assigns leases to: its
    /// leases also end with the worker's `liveness`. `stream` is the stream's identifier
    /// when the worker consumes several.
    pub(crate) fn with_presence(
        store: Arc<dyn LeaseStore>,
        config: LeaseCoordinatorConfig,
        liveness: Arc<Liveness>,
        coordination: Arc<dyn CoordinatorStore>,
        stream: Option<String>,
    ) -> Self {
        Self::build(store, config, liveness, Some(coordination), stream)
    }

    fn build(
        store: Arc<dyn LeaseStore>,
        config: LeaseCoordinatorConfig,
        liveness: Arc<Liveness>,
        coordination: Option<Arc<dyn CoordinatorStore>>,
        stream: Option<String>,
    ) -> Self {
        let mut hasher = DefaultHasher::new();
        config.worker_id.hash(&mut hasher);
        let metrics = LeaseMetrics::new(config.metrics.worker());
        LeaseCoordinator {
            store,
            rng: Mutex::new(StdRng::seed_from_u64(hasher.finish())),
            config,
            held: Mutex::new(BTreeMap::new()),
            observed: Mutex::new(Observations::default()),
            pending: Mutex::new(HashMap::new()),
            live_workers: Mutex::new(BTreeMap::new()),
            abandoned: Mutex::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            changes: Arc::new(Notify::new()),
            liveness,
            coordination,
            stream,
            metrics,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseCoordinatorConfig {
        &self.config
    }

    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This worker's observations of lease counters.
    fn observations(&self) -> std::sync::MutexGuard<'_, Observations<u64>> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<HeldLease>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leases held now.
    pub fn held_leases(&self) -> Vec<Arc<HeldLease>> {
        self.held_map().values().cloned().collect()
    }

    /// The lease with this key, if held.
    pub fn held_lease(&self, key: &str) -> Option<Arc<HeldLease>> {
        self.held_map().get(key).cloned()
    }

    /// Drops a held lease and marks it lost; counted in `LostLeases` unless it was given up
    /// on purpose (released or abandoned).
    fn forget(&self, key: &str) {
        // Not in the `if let`: its guard would live through the block (held_gauge locks).
        let removed = self.held_map().remove(key);
        if let Some(held) = removed {
            held.mark_lost();
            self.held_gauge();
        }
    }

    fn forget_lost(&self, key: &str) {
        if self.held_lease(key).is_some() {
            self.metrics.lost.increment(1);
        }
        self.forget(key);
    }

    /// Sets the `CurrentLeases` gauge to the number of leases held.
    fn held_gauge(&self) {
        let held = self.held_map().len();
        self.metrics.current.set(held as f64);
    }

    /// Acts on what the table shows of a lease this worker holds: lost when another worker
    /// processes it at a higher counter; a handoff request raises the lease's signal.
    fn reconcile_held(&self, lease: &Lease) {
        let Some(held) = self.held_lease(&lease.lease_key) else {
            return;
        };
        let me = self.config.worker_id.as_str();
        if lease.actual_owner() != Some(me) && lease.lease_counter > held.copy().lease_counter {
            tracing::info!(shard = %lease.lease_key, owner = ?lease.lease_owner, "lease lost: the table shows another owner");
            self.forget_lost(&lease.lease_key);
        } else {
            held.observe(lease);
        }
    }

    /// The latest time a previous holder that may be alive acts on a lease: at most its
    /// last counter change (which this worker saw at `changed_at` or later) plus the
    /// failover time minus the margin (see [`HeldLease::not_before`]).
    fn holder_deadline(&self, key: &str, now: Instant) -> Instant {
        let changed_at = self.observations().since(key).unwrap_or(now);
        changed_at
            + self
                .config
                .failover_time
                .saturating_sub(self.config.safety_margin())
    }

    /// Asks the holder of `lease` to hand it over to this worker.
    async fn request_handoff(&self, lease: &Lease) -> bool {
        let me = self.config.worker_id.as_str();
        let call = self.store.request_handoff(lease, me);
        match timed(self.config.request_timeout(), call).await {
            Ok(_) => {
                tracing::info!(shard = %lease.lease_key, worker = %me, holder = ?lease.lease_owner, "requested graceful handoff");
                self.pending_map()
                    .insert(lease.lease_key.clone(), Instant::now());
                self.metrics.handoffs_requested.increment(1);
                true
            }
            Err(LeaseStoreError::ConditionFailed(_)) => {
                tracing::debug!(shard = %lease.lease_key, "lease changed before its handoff could be requested");
                false
            }
            Err(error) => {
                tracing::warn!(shard = %lease.lease_key, %error, "requesting a handoff failed");
                false
            }
        }
    }

    /// Takes one lease and holds it, to be processed from `not_before`. Returns its key
    /// when taken.
    async fn take_one(&self, lease: &Lease, not_before: Instant, stealing: bool) -> Option<String> {
        let me = self.config.worker_id.as_str();
        if !self.liveness.is_alive() {
            tracing::debug!(shard = %lease.lease_key, "not taking a lease: this worker's liveness has lapsed");
            return None;
        }
        let sent = Instant::now();
        match timed(
            self.config.request_timeout(),
            self.store.take_lease(lease, me),
        )
        .await
        {
            Ok(taken) => {
                tracing::info!(shard = %taken.lease_key, worker = %me, previous_owner = ?lease.actual_owner(), stolen = stealing, "took lease");
                let key = taken.lease_key.clone();
                let holder = Holder {
                    worker_id: me.to_owned(),
                    store: self.store.clone(),
                    timing: self.timing(),
                    changes: self.changes.clone(),
                    liveness: self.liveness.clone(),
                    metrics: self.config.metrics.clone(),
                };
                let held = HeldLease::new(taken, sent, not_before, &holder);
                self.held_map().insert(key.clone(), Arc::new(held));
                self.pending_map().remove(&key);
                self.held_gauge();
                self.metrics.taken.increment(1);
                self.changes.notify_one();
                Some(key)
            }
            Err(LeaseStoreError::ConditionFailed(_)) => {
                tracing::debug!(shard = %lease.lease_key, "lease changed before it could be taken");
                None
            }
            Err(error) => {
                tracing::warn!(shard = %lease.lease_key, %error, "taking lease failed");
                None
            }
        }
    }

    /// Gives up a held lease once nothing acts on it any more: hands it to the worker that
    /// asked for it, or accepted it when this worker offered it (a graceful handoff, which
    /// starts there at once), or else releases it (removes the owner) for the other
    /// workers' next taker round; marks it lost locally.
    pub async fn release_lease(&self, key: &str) -> Result<(), LeaseStoreError> {
        let Some(held) = self.held_lease(key) else {
            return Ok(());
        };
        if held.not_before() > Instant::now() {
            // A previous holder may still be acting on it: nobody may start at once.
            tracing::info!(shard = %key, "lease not released: its previous holder's deadline has not passed; it expires for the next owner");
            self.forget(key);
            return Ok(());
        }
        let result = held.release().await;
        if matches!(result, Ok(true)) {
            self.metrics.handed_over.increment(1);
        }
        self.forget(key);
        result.map(|_| ())
    }

    fn timing(&self) -> LeaseTiming {
        self.config.timing()
    }

    /// Stops holding a lease without writing anything: it expires for other workers after
    /// the failover time (used when its processor could not be stopped).
    pub fn abandon(&self, key: &str) {
        self.abandoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned());
        self.forget(key);
    }

    /// Drops a lease that is lost (taken, or past its local deadline).
    pub(crate) fn drop_if_lost(&self, key: &str) {
        if self.held_lease(key).is_some_and(|held| held.is_lost()) {
            self.forget_lost(key);
        }
    }
}

#[cfg(test)]
mod tests;
