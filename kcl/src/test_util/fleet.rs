//! Simulated workers running this crate's real lease layer (the code a
//! [`Scheduler`](crate::Scheduler) runs: renewals, discovery, the heartbeat, the election,
//! the leader's rounds, or the taker rounds without a leader) against lease and
//! coordinator stores of your choice, with a stand-in for the shard consumers: a lease is
//! *processed* from the moment it may start until it is lost or handed over, and a
//! processor asked to hand its lease over finishes after [`SimWorkerConfig::finish_time`].
//!
//! Meant for tokio's paused clock (`#[tokio::test(start_paused = true)]`, or
//! `tokio::time::pause()`), where thousands of leases and hundreds of workers run in
//! seconds. The `fleet_sim` program and this crate's fault tests use it.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kinesis_consumer::leases::coordination::MemoryCoordinatorStore;
//! use kinesis_consumer::leases::{Coordination, MemoryLeaseStore};
//! use kinesis_consumer::test_util::fleet::{SimWorker, SimWorkerConfig};
//!
//! tokio::time::pause();
//! let leases = Arc::new(MemoryLeaseStore::new());
//! let coordination = Arc::new(MemoryCoordinatorStore::new());
//! let mut worker = SimWorker::new(
//!     leases,
//!     coordination,
//!     SimWorkerConfig::new("worker-1", Coordination::default()),
//! );
//! worker.start();
//! tokio::time::sleep(Duration::from_secs(30)).await;
//! println!("{:?} leads: {}", worker.processing(), worker.is_leader());
//! worker.kill();
//! # }
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::leases::coordination::{CoordinatorStore, LEADER_LOCK_KEY};
use crate::leases::worker::{
    Coordination, LeaseWorker, LeaseWorkerConfig, Presence, PresenceConfig,
};
use crate::leases::{LeaseCoordinatorConfig, LeaseStore, ThroughputBalancing};
use crate::metrics::WorkerLabels;

/// How a simulated worker runs. Defaults are the scheduler's.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimWorkerConfig {
    /// The worker id.
    pub worker_id: String,
    /// How leases are shared out.
    pub coordination: Coordination,
    /// Failover time (default 10 s); the renewal interval is a third of it, the request
    /// timeout a quarter, the safety margin a fifth, the taker interval the same.
    pub failover_time: Duration,
    /// Lease discovery interval (default 500 ms).
    pub discovery_interval: Duration,
    /// How long a processor takes to finish when its lease is to be handed over (default
    /// 100 ms).
    pub finish_time: Duration,
    /// Balancing by throughput (default on, as the scheduler's).
    pub throughput_balancing: Option<ThroughputBalancing>,
    /// The most leases the worker holds (default unlimited).
    pub max_leases_per_worker: usize,
}

impl SimWorkerConfig {
    /// The scheduler's defaults for `worker_id`.
    pub fn new(worker_id: impl Into<String>, coordination: Coordination) -> Self {
        SimWorkerConfig {
            worker_id: worker_id.into(),
            coordination,
            failover_time: Duration::from_secs(10),
            discovery_interval: Duration::from_millis(500),
            finish_time: Duration::from_millis(100),
            throughput_balancing: Some(ThroughputBalancing::default()),
            max_leases_per_worker: usize::MAX,
        }
    }
}

/// One simulated worker.
pub struct SimWorker {
    config: SimWorkerConfig,
    leases: Arc<dyn LeaseStore>,
    coordination: Arc<dyn CoordinatorStore>,
    worker: Option<Arc<LeaseWorker>>,
    renewals: JoinSet<()>,
    tasks: JoinSet<()>,
    /// When each lease started being processed here.
    processing: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
}

impl std::fmt::Debug for SimWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWorker")
            .field("worker_id", &self.config.worker_id)
            .finish_non_exhaustive()
    }
}

impl SimWorker {
    /// A worker, not started yet.
    pub fn new(
        leases: Arc<dyn LeaseStore>,
        coordination: Arc<dyn CoordinatorStore>,
        config: SimWorkerConfig,
    ) -> Self {
        SimWorker {
            config,
            leases,
            coordination,
            worker: None,
            renewals: JoinSet::new(),
            tasks: JoinSet::new(),
            processing: Arc::default(),
        }
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    fn lease_worker(&self) -> LeaseWorker {
        let c = &self.config;
        let failover = c.failover_time;
        let metrics = WorkerLabels::new("fleet", &c.worker_id);
        let config = LeaseWorkerConfig {
            coordinator: LeaseCoordinatorConfig {
                worker_id: c.worker_id.clone(),
                failover_time: failover,
                safety_margin: None,
                request_timeout: None,
                max_leases_per_worker: c.max_leases_per_worker,
                max_leases_to_steal_at_once: 1,
                graceful_handoff_timeout: Some(Duration::from_secs(30)),
                handoff_accept_wait: c.discovery_interval * 3,
                throughput_balancing: c.throughput_balancing.clone(),
                metrics: metrics.stream("stream"),
            },
            renewal_interval: failover / 3,
            discovery_interval: c.discovery_interval,
            taker_interval: failover,
        };
        match &c.coordination {
            Coordination::Workers => LeaseWorker::workers(self.leases.clone(), config),
            Coordination::Leader(leader) => {
                let presence = Arc::new(Presence::new(
                    self.coordination.clone(),
                    PresenceConfig {
                        worker_id: c.worker_id.clone(),
                        failover_time: failover,
                        safety_margin: failover / 5,
                        renewal_interval: failover / 3,
                        request_timeout: failover / 4,
                        max_leases: (c.max_leases_per_worker != usize::MAX)
                            .then_some(c.max_leases_per_worker as u64),
                        report_cpu: false,
                        metrics,
                    },
                ));
                LeaseWorker::with_leader(
                    self.leases.clone(),
                    presence,
                    leader,
                    LEADER_LOCK_KEY.to_owned(),
                    None,
                    config,
                )
            }
        }
    }

    /// Starts the worker (again, after a kill or a stop: with the same id, as a restarted
    /// process with a fixed worker id).
    pub fn start(&mut self) {
        self.kill();
        let worker = Arc::new(self.lease_worker());
        worker.spawn(&mut self.renewals, &mut self.tasks);
        let consumers = worker.clone();
        let processing = self.processing.clone();
        let finish = self.config.finish_time;
        self.tasks
            .spawn(run_consumers(consumers, processing, finish));
        self.worker = Some(worker);
    }

    /// Stops at once, writing nothing (`kill -9`): its leases expire for the others.
    pub fn kill(&mut self) {
        self.tasks.abort_all();
        self.renewals.abort_all();
        self.worker = None;
        self.processing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Stops gracefully, as a scheduler does: nothing more is taken, the leases are offered
    /// to running workers, the processors finish, and each lease is handed over or
    /// released.
    pub async fn stop(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        self.tasks.abort_all();
        worker.begin_shutdown().await;
        tokio::time::sleep(self.config.finish_time).await;
        self.renewals.abort_all();
        let coordinator = worker.coordinator();
        for held in coordinator.held_leases() {
            let _ = coordinator.release_lease(held.key()).await;
        }
        worker.finish_shutdown().await;
        self.kill();
    }

    /// The leases this worker processes now: held, not lost, past the previous holder's
    /// deadline, not being handed over.
    pub fn processing(&self) -> Vec<String> {
        let Some(worker) = &self.worker else {
            return Vec::new();
        };
        let now = Instant::now();
        worker
            .coordinator()
            .held_leases()
            .iter()
            .filter(|h| !h.is_lost() && h.not_before() <= now && !h.is_handoff_requested())
            .map(|h| h.key().to_owned())
            .collect()
    }

    /// The leases this worker holds, whatever their state.
    pub fn held(&self) -> Vec<String> {
        self.worker.as_ref().map_or_else(Vec::new, |w| {
            w.coordinator()
                .held_leases()
                .iter()
                .filter(|h| !h.is_lost())
                .map(|h| h.key().to_owned())
                .collect()
        })
    }

    /// Whether this worker leads now.
    pub fn is_leader(&self) -> bool {
        self.worker
            .as_ref()
            .is_some_and(|w| w.leadership().is_some_and(|l| *l.borrow()))
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.worker.is_some()
    }

    /// Counts `kbps` of data read on every lease it processes over `over` (for
    /// throughput balancing).
    pub fn deliver(&self, kbps: impl Fn(&str) -> f64, over: Duration) {
        if let Some(worker) = &self.worker {
            for held in worker.coordinator().held_leases() {
                let bytes = kbps(held.key()) * 1024.0 * over.as_secs_f64();
                held.record_delivered(bytes as u64);
            }
        }
    }
}

impl Drop for SimWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The stand-in for the scheduler's shard consumers: notes when each lease starts being
/// processed, and hands a lease over `finish` after its handoff was asked.
async fn run_consumers(
    worker: Arc<LeaseWorker>,
    processing: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
    finish: Duration,
) {
    let mut finishing: JoinSet<()> = JoinSet::new();
    let mut asked: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = worker.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        while finishing.try_join_next().is_some() {}
        let coordinator = worker.coordinator().clone();
        let now = Instant::now();
        let held = coordinator.held_leases();
        let mut state = processing.lock().unwrap_or_else(|e| e.into_inner());
        let live: HashSet<&str> = held
            .iter()
            .filter(|h| !h.is_lost())
            .map(|h| h.key())
            .collect();
        let keys: HashSet<&str> = held.iter().map(|h| h.key()).collect();
        state.retain(|key, _| live.contains(key.as_str()));
        asked.retain(|key| keys.contains(key.as_str()));
        for lease in held {
            let key = lease.key().to_owned();
            if lease.is_lost() {
                coordinator.drop_if_lost(&key);
                continue;
            }
            if lease.is_handoff_requested() {
                state.remove(&key);
                if asked.insert(key.clone()) {
                    let coordinator = coordinator.clone();
                    finishing.spawn(async move {
                        tokio::time::sleep(finish).await;
                        let _ = coordinator.release_lease(&key).await;
                    });
                }
                continue;
            }
            if lease.not_before() <= now {
                state.entry(key).or_insert(now);
            }
        }
    }
}
