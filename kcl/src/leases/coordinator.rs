//! Lease renewal, expiry, taking and balancing: what one worker does to hold its share of
//! the leases, and only while it holds them.
//!
//! Expiry is judged as AWS's Java KCL judges it: a lease whose counter this worker has not
//! seen change for the failover time, by this worker's own clock, is expired. Clocks of
//! different machines are never compared.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use super::held::HeldLease;
use super::held::{timed, LeaseTiming, Renewal};
use super::store::{LeaseStore, LeaseStoreError};
use crate::lease::Lease;
use crate::metrics::LeaseMetrics;

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
        LeaseCoordinatorConfig {
            worker_id: worker_id.into(),
            failover_time: Duration::from_secs(10),
            safety_margin: None,
            request_timeout: None,
            max_leases_per_worker: usize::MAX,
            max_leases_to_steal_at_once: 1,
            graceful_handoff_timeout: Some(Duration::from_secs(30)),
            handoff_accept_wait: Duration::from_millis(1500),
            throughput_balancing: Some(ThroughputBalancing::default()),
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

#[derive(Debug)]
struct Observed {
    counter: u64,
    changed_at: Instant,
}

/// Notes the counter `lease` shows at `now`; returns when this worker first saw it.
fn observe_counter(
    observed: &mut HashMap<String, Observed>,
    lease: &Lease,
    now: Instant,
) -> Instant {
    let seen = observed.entry(lease.lease_key.clone()).or_insert(Observed {
        counter: lease.lease_counter,
        changed_at: now,
    });
    if seen.counter != lease.lease_counter {
        seen.counter = lease.lease_counter;
        seen.changed_at = now;
    }
    seen.changed_at
}

/// Renews, takes and releases one worker's leases.
pub struct LeaseCoordinator {
    store: Arc<dyn LeaseStore>,
    config: LeaseCoordinatorConfig,
    held: Mutex<BTreeMap<String, Arc<HeldLease>>>,
    observed: Mutex<HashMap<String, Observed>>,
    /// Leases handed to this worker whose holder has not completed the handoff yet, and
    /// since when this worker knows.
    pending: Mutex<HashMap<String, Instant>>,
    /// Leases held per other live worker, as the last taker round saw them.
    live_workers: Mutex<BTreeMap<String, usize>>,
    /// Set when this worker begins shutting down: it accepts no more offers.
    stopping: std::sync::atomic::AtomicBool,
    handoff_notify: Arc<Notify>,
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

/// What one round of [`LeaseCoordinator::take_leases`] saw and did.
#[derive(Debug, Default)]
pub struct TakeRound {
    /// Every lease in the table, as listed at the start of the round.
    pub leases: Vec<Lease>,
    /// Keys of the leases taken in this round.
    pub taken: Vec<String>,
    /// How many of the taken leases were stolen from a live worker.
    pub stolen: usize,
    /// Keys of the leases whose graceful handoff to this worker was requested in this
    /// round.
    pub handoffs_requested: Vec<String>,
    /// When the first lease another worker holds expires if its counter does not change
    /// again: the time this round first saw its current counter plus the failover time.
    /// `None` when no other worker holds an unexpired lease.
    pub next_expiry: Option<Instant>,
}

/// Below this gap between taker rounds the next one is not brought forward.
const MIN_TAKER_GAP: Duration = Duration::from_millis(100);

/// When the next taker round should run, given the end of this one: after the taker
/// interval, or as soon as the first observed lease expires, whichever is first.
///
/// A lease is expired once its counter has not been seen to change for the failover time;
/// a round at a fixed interval finds it up to one interval after that (and when the
/// interval equals the failover time, a round that lands exactly on the expiry misses it
/// by a hair and the next one takes it: up to 3x the failover time after the holder's
/// last renewal). Looking at the moment of expiry takes it between 1x and 2x (the first
/// round that sees the final counter is up to one interval after it was written), with
/// no more rounds than before in a healthy fleet: live leases change between rounds, so
/// their expiry is one failover time after the latest round, which is the next periodic one.
pub(crate) fn next_take_at(
    round_end: Instant,
    interval: Duration,
    next_expiry: Option<Instant>,
) -> Instant {
    let periodic = round_end + interval;
    match next_expiry {
        // Just past the expiry: `take_leases` requires strictly more than the failover time.
        Some(expiry) => periodic
            .min((expiry + Duration::from_millis(1)).max(round_end + MIN_TAKER_GAP.min(interval))),
        None => periodic,
    }
}

impl LeaseCoordinator {
    /// A coordinator holding nothing yet.
    pub fn new(store: Arc<dyn LeaseStore>, config: LeaseCoordinatorConfig) -> Self {
        let mut hasher = DefaultHasher::new();
        config.worker_id.hash(&mut hasher);
        let metrics = LeaseMetrics::new(&config.worker_id);
        LeaseCoordinator {
            store,
            rng: Mutex::new(StdRng::seed_from_u64(hasher.finish())),
            config,
            held: Mutex::new(BTreeMap::new()),
            observed: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            live_workers: Mutex::new(BTreeMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            handoff_notify: Arc::new(Notify::new()),
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

    /// Renews every held lease once, each on its own (a slow renewal of one lease never
    /// delays another's, and never waits for a checkpoint); every call is bounded by the
    /// request timeout. Leases whose renewal found them taken, and leases past their local
    /// deadline, are marked lost and dropped. Returns the keys of the leases lost.
    pub async fn renew_leases(&self) -> Vec<String> {
        let held = self.held_leases();
        let renewals = &self.metrics.renewals;
        let results = join_all(held.iter().map(|held| async move {
            let renewal = held.renew().await;
            renewals.record(matches!(renewal, Renewal::Renewed));
            match renewal {
                Renewal::Renewed => false,
                Renewal::Lost => true,
                Renewal::Failed(error) => {
                    tracing::warn!(shard = %held.key(), %error, deadline_in = ?held.deadline().saturating_duration_since(Instant::now()), "lease renewal failed");
                    held.is_lost()
                }
            }
        }))
        .await;
        let mut lost = Vec::new();
        for (held, is_lost) in held.iter().zip(results) {
            if is_lost || held.is_lost() {
                self.forget_lost(held.key());
                lost.push(held.key().to_owned());
            }
        }
        lost
    }

    /// One round of lease taking: lists the table, takes expired and unassigned leases
    /// first (up to `ceil(leases / workers)`, capped by `max_leases_per_worker`), and when
    /// there are none, steals at most `max_leases_to_steal_at_once` from the most loaded
    /// live worker, and only while that worker holds at least two more leases than this
    /// one, so the spread ends within one lease and never oscillates. With graceful handoff
    /// a steal is a request: the holder finishes and hands the lease over (see
    /// [`discover`](Self::discover)). Finished leases (checkpoint `SHARD_END`) are neither
    /// counted nor taken.
    pub async fn take_leases(&self) -> Result<TakeRound, LeaseStoreError> {
        let leases = timed(self.config.request_timeout(), self.store.list_leases()).await?;
        let now = Instant::now();
        let me = self.config.worker_id.as_str();
        for lease in &leases {
            self.reconcile_held(lease);
        }
        let held_keys: HashSet<String> = self.held_map().keys().cloned().collect();

        let mut next_expiry: Option<Instant> = None;
        let expired: HashSet<String> = {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            observed.retain(|key, _| leases.iter().any(|l| &l.lease_key == key));
            leases
                .iter()
                .filter(|lease| {
                    let changed_at = observe_counter(&mut observed, lease, now);
                    let expired = lease.lease_owner.is_none()
                        || now.duration_since(changed_at) > self.config.failover_time;
                    if !expired && lease.actual_owner() != Some(me) && !lease.is_finished() {
                        let expiry = changed_at + self.config.failover_time;
                        next_expiry = Some(next_expiry.map_or(expiry, |e| e.min(expiry)));
                    }
                    expired
                })
                .map(|lease| lease.lease_key.clone())
                .collect()
        };

        let active: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
        // Leases count for the worker they are going to during a handoff.
        let mut counts: HashMap<&str, Vec<&Lease>> = HashMap::new();
        for lease in &active {
            if let Some(owner) = lease.lease_owner.as_deref() {
                if owner != me && !expired.contains(&lease.lease_key) {
                    counts.entry(owner).or_default().push(lease);
                }
            }
        }
        *self.live_workers.lock().unwrap_or_else(|e| e.into_inner()) = counts
            .iter()
            .map(|(owner, leases)| ((*owner).to_owned(), leases.len()))
            .collect();
        // Leases the table assigns to this worker that it does not hold: handed over by
        // their previous holder, moved here by an operator, or leases this worker stopped
        // acting on (a local deadline passed) while the table still names it. Taken now,
        // whatever the balance. A lease whose handoff to this worker its holder has not
        // completed waits for it, unless it expired (see `discover`).
        let mut assigned: Vec<Lease> = Vec::new();
        {
            let mut pending = self.pending_map();
            for lease in &active {
                if !lease.is_owned_by(me) || held_keys.contains(&lease.lease_key) {
                    continue;
                }
                if lease.handoff_pending() && !expired.contains(&lease.lease_key) {
                    pending.entry(lease.lease_key.clone()).or_insert(now);
                } else {
                    assigned.push((*lease).clone());
                }
            }
        }
        let waiting = self.pending_map().len();
        let mine = held_keys.len() + assigned.len() + waiting;
        let workers = counts.len() + 1;
        let target = active
            .len()
            .div_ceil(workers)
            .min(self.config.max_leases_per_worker);
        let needed = target.saturating_sub(mine);
        let mut round = TakeRound {
            next_expiry,
            ..TakeRound::default()
        };
        if needed == 0 && target == self.config.max_leases_per_worker {
            let unprocessed = active
                .iter()
                .filter(|l| !held_keys.contains(&l.lease_key) && expired.contains(&l.lease_key))
                .count();
            if unprocessed > 0 {
                tracing::warn!(
                    worker = %me,
                    unprocessed,
                    max = self.config.max_leases_per_worker,
                    "leases left without a worker: this worker is at max_leases_per_worker"
                );
            }
        }
        // Throughput: this worker's load (leases it holds or that are coming to it) against
        // the fleet's mean.
        let my_load = load(active.iter().copied().filter(|l| l.is_owned_by(me)));
        let loads: Vec<(&str, f64)> = counts
            .iter()
            .map(|(owner, leases)| (*owner, load(leases.iter().copied())))
            .collect();
        let mean = (my_load + loads.iter().map(|(_, l)| l).sum::<f64>()) / workers as f64;
        let overloaded = self.config.throughput_balancing.as_ref().is_some_and(|b| {
            my_load - mean > b.threshold * mean && my_load - mean >= b.min_gap_kbps / 2.0
        });
        let throughput_move = self.throughput_move(&loads, &counts, my_load, mean, mine);
        if needed == 0 && assigned.is_empty() && throughput_move.is_none() {
            round.leases = leases;
            return Ok(round);
        }

        let mut available: Vec<&Lease> = active
            .iter()
            .copied()
            .filter(|l| {
                !held_keys.contains(&l.lease_key)
                    && expired.contains(&l.lease_key)
                    && !l.is_owned_by(me)
            })
            .collect();
        let mut to_take: Vec<Lease>;
        let mut stealing = false;
        {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            if !available.is_empty() && needed > 0 {
                available.shuffle(&mut *rng);
                to_take = available.into_iter().take(needed).cloned().collect();
            } else if let Some(lease) = throughput_move {
                to_take = vec![lease];
                stealing = true;
            } else if overloaded {
                to_take = Vec::new();
            } else {
                // Most loaded live worker; ties broken by name so every worker agrees.
                let victim = counts
                    .iter()
                    .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)));
                to_take = Vec::new();
                if let Some((_, victim_leases)) = victim {
                    // Steal only while the victim keeps more than this worker will have:
                    // every move then narrows the spread, so moves stop once the spread
                    // is at most one lease and no lease goes back and forth.
                    let spare = victim_leases.len().saturating_sub(mine) / 2;
                    let count = needed
                        .min(spare)
                        .min(self.config.max_leases_to_steal_at_once);
                    // A lease already being handed over is not asked for again.
                    let mut candidates: Vec<&Lease> = victim_leases
                        .iter()
                        .copied()
                        .filter(|l| !l.handoff_pending())
                        .collect();
                    candidates.shuffle(&mut *rng);
                    to_take = candidates.into_iter().take(count).cloned().collect();
                    stealing = true;
                }
            }
        }

        if needed == 0 && !stealing {
            to_take.clear();
        }
        for lease in assigned {
            let not_before = self.assigned_not_before(&lease, now);
            if let Some(key) = self.take_one(&lease, not_before, false).await {
                round.taken.push(key);
            }
        }
        for lease in to_take {
            if stealing && self.config.graceful_handoff_timeout.is_some() {
                if self.request_handoff(&lease).await {
                    round.handoffs_requested.push(lease.lease_key.clone());
                }
                continue;
            }
            let not_before = match lease.lease_owner {
                None => Instant::now(),
                Some(_) => self.holder_deadline(&lease.lease_key, now),
            };
            if let Some(key) = self.take_one(&lease, not_before, stealing).await {
                round.taken.push(key);
                if stealing {
                    round.stolen += 1;
                }
            }
        }
        round.leases = leases;
        Ok(round)
    }

    /// The lease to ask for to even out throughput, if any (see [`ThroughputBalancing`]):
    /// from the most loaded worker, when both it and this worker are off the mean by more
    /// than the threshold and the gap is wide enough, the largest of its leases carrying at
    /// most half the gap.
    fn throughput_move(
        &self,
        loads: &[(&str, f64)],
        counts: &HashMap<&str, Vec<&Lease>>,
        my_load: f64,
        mean: f64,
        mine: usize,
    ) -> Option<Lease> {
        let balancing = self.config.throughput_balancing.as_ref()?;
        if mine >= self.config.max_leases_per_worker {
            return None;
        }
        let (victim, victim_load) = loads
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(a.0)))?;
        let margin = balancing.threshold * mean;
        let gap = victim_load - my_load;
        if victim_load - mean <= margin || mean - my_load <= margin || gap < balancing.min_gap_kbps
        {
            return None;
        }
        counts
            .get(victim)?
            .iter()
            .copied()
            .filter(|l| !l.handoff_pending())
            .map(|l| (l, l.throughput_kbps.unwrap_or(0.0)))
            .filter(|(_, throughput)| *throughput <= gap / 2.0)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.lease_key.cmp(&a.0.lease_key)))
            .map(|(lease, _)| lease.clone())
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
        let observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let changed_at = observed.get(key).map_or(now, |seen| seen.changed_at);
        changed_at
            + self
                .config
                .failover_time
                .saturating_sub(self.config.safety_margin())
    }

    /// When a lease the table assigns to this worker may start: at once when its previous
    /// holder handed it over (or completed a handoff this worker was waiting for), or was
    /// nobody; otherwise after that holder's deadline.
    fn assigned_not_before(&self, lease: &Lease, now: Instant) -> Instant {
        let was_pending = self.pending_map().remove(&lease.lease_key).is_some();
        if lease.is_handed_over() || (was_pending && !lease.handoff_pending()) {
            now
        } else {
            self.holder_deadline(&lease.lease_key, now)
        }
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
                let held = HeldLease::new(
                    taken,
                    sent,
                    not_before,
                    me.to_owned(),
                    self.store.clone(),
                    self.timing(),
                    self.handoff_notify.clone(),
                );
                self.held_map().insert(key.clone(), Arc::new(held));
                self.pending_map().remove(&key);
                self.held_gauge();
                self.metrics.taken.increment(1);
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

    /// Looks for handoffs between rounds, so that a lease moves in a fraction of a second:
    /// leases the table names this worker the owner of that it does not hold (when the
    /// store lists a worker's leases cheaply, by the owner index), held leases it no longer
    /// names this worker's (a handoff request), and handoffs to this worker under way
    /// (one consistent read each). A lease handed over is taken and starts at once; a
    /// handoff whose holder stopped renewing is taken once it expired; one its holder has
    /// not completed within the graceful handoff timeout plus the failover time is taken
    /// as a steal. Returns the keys taken.
    pub async fn discover(&self) -> Vec<String> {
        let me = self.config.worker_id.as_str();
        let timeout = self.config.request_timeout();
        let mut check: BTreeSet<String> = self.pending_map().keys().cloned().collect();
        if self.store.lists_owned_keys_cheaply() {
            match timed(timeout, self.store.list_lease_keys_owned_by(me)).await {
                Ok(keys) => {
                    let named: HashSet<String> = keys.into_iter().collect();
                    let held: HashSet<String> = self.held_map().keys().cloned().collect();
                    check.extend(named.symmetric_difference(&held).cloned());
                }
                Err(error) => tracing::debug!(%error, "listing this worker's leases failed"),
            }
        }
        let mut taken = Vec::new();
        for key in check {
            let lease = match timed(timeout, self.store.get_lease(&key)).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    self.pending_map().remove(&key);
                    continue;
                }
                Err(error) => {
                    tracing::debug!(shard = %key, %error, "reading a lease failed");
                    continue;
                }
            };
            let now = Instant::now();
            let changed_at = {
                let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
                observe_counter(&mut observed, &lease, now)
            };
            if self.held_lease(&key).is_some() {
                self.reconcile_held(&lease);
                continue;
            }
            if !lease.is_owned_by(me) || lease.is_finished() {
                self.pending_map().remove(&key);
                continue;
            }
            if lease.handoff_pending() {
                let since = *self.pending_map().entry(key.clone()).or_insert(now);
                if !lease.is_handoff_accepted() {
                    self.accept(&lease).await;
                }
                let failover = self.config.failover_time;
                let not_before = if now.duration_since(changed_at) > failover {
                    // Its holder stopped renewing: expired.
                    now
                } else if self
                    .config
                    .graceful_handoff_timeout
                    .is_some_and(|timeout| now.duration_since(since) > timeout + failover)
                {
                    tracing::warn!(shard = %key, holder = ?lease.checkpoint_owner, "the holder did not complete the handoff in time: taking the lease");
                    self.holder_deadline(&key, now)
                } else {
                    continue;
                };
                if let Some(key) = self.take_one(&lease, not_before, true).await {
                    taken.push(key);
                }
                continue;
            }
            let not_before = self.assigned_not_before(&lease, now);
            if let Some(key) = self.take_one(&lease, not_before, false).await {
                taken.push(key);
            }
        }
        taken
    }

    /// Completes when a held lease's handoff was requested (see
    /// [`HeldLease::is_handoff_requested`]).
    pub async fn handoff_requested(&self) {
        self.handoff_notify.notified().await;
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

    /// Accepts a lease offered to this worker (by a holder shutting down) while it runs,
    /// has room for it, and is not shutting down itself. A request this worker made is
    /// accepted too: the holder does not need it, but the table then shows it.
    async fn accept(&self, lease: &Lease) {
        let room =
            self.held_map().len() + self.pending_map().len() <= self.config.max_leases_per_worker;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) || !room {
            return;
        }
        let call = self.store.accept_handoff(lease);
        match timed(self.config.request_timeout(), call).await {
            Ok(_) => {
                tracing::debug!(shard = %lease.lease_key, from = ?lease.checkpoint_owner, "accepted handoff")
            }
            Err(error) => {
                tracing::debug!(shard = %lease.lease_key, %error, "accepting a handoff failed")
            }
        }
    }

    /// Whether a handoff to this worker is under way (the scheduler then looks for its
    /// completion more often than at the discovery interval).
    pub fn awaiting_handoff(&self) -> bool {
        !self.pending_map().is_empty()
    }

    /// The first step of a graceful shutdown, before the processors are asked to finish.
    /// This worker stops accepting leases; hands back every lease it was to receive (a
    /// handoff it asked for or accepted is cancelled, a lease handed to it that it has not
    /// taken yet is released), so that nothing waits for a worker that is leaving; and
    /// offers each lease it holds to a live worker, the least loaded first.
    /// [`release_lease`](Self::release_lease) then hands each one over once its processor
    /// has finished, if that worker accepted it in time (within
    /// [`handoff_accept_wait`](LeaseCoordinatorConfig::handoff_accept_wait)), so it starts
    /// there at once; otherwise releases it. A worker that is shutting down itself never
    /// accepts, so a lease is never handed to a worker that is leaving. Without graceful
    /// handoff nothing is offered.
    pub async fn begin_shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.hand_back_incoming().await;
        if self.config.graceful_handoff_timeout.is_none() {
            return;
        }
        let mut live = self.live_candidates().await;
        let now = Instant::now();
        let mut offers = Vec::new();
        {
            for held in self.held_leases() {
                if held.is_lost()
                    || held.is_handoff_requested()
                    || held.not_before() > now
                    || held.copy().is_finished()
                {
                    continue;
                }
                let Some((worker, count)) = live
                    .iter_mut()
                    .min_by(|a, b| (*a.1).cmp(&*b.1).then(a.0.cmp(b.0)))
                else {
                    break;
                };
                *count += 1;
                offers.push((held, worker.clone()));
            }
        }
        join_all(offers.iter().map(|(held, to)| held.offer(to))).await;
    }

    /// The workers a lease may be offered to, with the leases each holds: the owners of
    /// unfinished leases in a fresh listing of the table (a worker that joined since the
    /// last taker round included), but for owners whose lease this worker has seen
    /// unchanged for the failover time (presumed dead). The last taker round's view when
    /// the listing fails. An owner that is not running does not accept, which costs the
    /// accept wait, not the lease.
    async fn live_candidates(&self) -> BTreeMap<String, usize> {
        let me = self.config.worker_id.as_str();
        let listed = timed(self.config.request_timeout(), self.store.list_leases()).await;
        let Ok(leases) = listed else {
            return self
                .live_workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        };
        let now = Instant::now();
        let observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let mut candidates: BTreeMap<String, usize> = BTreeMap::new();
        for lease in leases.iter().filter(|l| !l.is_finished()) {
            let Some(owner) = lease.lease_owner.as_deref().filter(|o| *o != me) else {
                continue;
            };
            let stale = observed.get(&lease.lease_key).is_some_and(|seen| {
                seen.counter == lease.lease_counter
                    && now.duration_since(seen.changed_at) > self.config.failover_time
            });
            if !stale {
                *candidates.entry(owner.to_owned()).or_default() += 1;
            }
        }
        candidates
    }

    /// Cancels the handoffs to this worker under way and releases the leases the table
    /// names this worker the owner of that it does not hold.
    async fn hand_back_incoming(&self) {
        let me = self.config.worker_id.as_str();
        let timeout = self.config.request_timeout();
        let mut keys: BTreeSet<String> = self.pending_map().drain().map(|(key, _)| key).collect();
        if let Ok(owned) = timed(timeout, self.store.list_lease_keys_owned_by(me)).await {
            keys.extend(owned);
        }
        for key in keys {
            if self.held_lease(&key).is_some() {
                continue;
            }
            // Twice: a handoff completed just before its cancellation is then released.
            for _ in 0..2 {
                let lease = match timed(timeout, self.store.get_lease(&key)).await {
                    Ok(Some(lease)) if lease.is_owned_by(me) => lease,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(shard = %key, %error, "reading a lease handed to this worker failed: it expires for the others");
                        break;
                    }
                };
                let call = if lease.handoff_pending() {
                    self.store.cancel_handoff(&lease)
                } else {
                    self.store.evict_lease(&lease)
                };
                match timed(timeout, call).await {
                    Ok(_) => {
                        tracing::info!(shard = %key, "shutting down: handed back a lease on its way to this worker");
                        break;
                    }
                    Err(LeaseStoreError::ConditionFailed(_)) => continue,
                    Err(error) => {
                        tracing::warn!(shard = %key, %error, "handing back a lease on its way to this worker failed: it expires for the others");
                        break;
                    }
                }
            }
        }
    }

    fn timing(&self) -> LeaseTiming {
        self.config.timing()
    }

    /// Stops holding a lease without writing anything: it expires for other workers after
    /// the failover time (used when its processor could not be stopped).
    pub fn abandon(&self, key: &str) {
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
