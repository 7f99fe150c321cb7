//! Watching the fleet: the leader and its successors list the worker rows every fraction
//! of a second (one small scan), so that whichever of them leads knows, within the
//! failover time of a worker's last heartbeat, that the worker died. Other workers do not
//! look.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::election::SUCCESSORS;
use super::fleet::{Fleet, WorkerState, WorkerView};
use crate::leases::coordination::{CoordinatorStore, WorkerRow};
use crate::leases::held::timed;
use crate::leases::liveness::Liveness;

/// The fleet as this worker watches it.
pub(crate) struct FleetWatch {
    store: Arc<dyn CoordinatorStore>,
    /// This worker's own liveness: it knows it is alive without watching its row change.
    liveness: Arc<Liveness>,
    fleet: Mutex<Fleet>,
    /// Told when a look finds a worker newly dead (the leader acts at once).
    deaths: tokio::sync::Notify,
    worker_id: String,
    failover: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for FleetWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetWatch")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl FleetWatch {
    pub(crate) fn new(
        store: Arc<dyn CoordinatorStore>,
        liveness: Arc<Liveness>,
        worker_id: String,
        failover: Duration,
        timeout: Duration,
    ) -> Self {
        FleetWatch {
            store,
            liveness,
            fleet: Mutex::new(Fleet::default()),
            deaths: tokio::sync::Notify::new(),
            worker_id,
            failover,
            timeout,
        }
    }

    fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists the rows once; tells the leader when a worker is dead and not fenced yet.
    pub(crate) async fn look(&self) {
        match timed(self.timeout, self.store.list_workers()).await {
            Ok(rows) => {
                let now = Instant::now();
                let dead = {
                    let mut fleet = self.fleet();
                    fleet.observe(rows, now);
                    fleet
                        .view(now, self.failover)
                        .values()
                        .any(|w| w.state == WorkerState::Dead)
                };
                if dead {
                    self.deaths.notify_one();
                }
            }
            Err(error) => tracing::debug!(%error, "listing the worker rows failed"),
        }
    }

    /// Completes when a look finds a worker dead and not fenced yet.
    pub(crate) async fn death(&self) {
        self.deaths.notified().await;
    }

    /// When the first live worker of this crate would be dead if its heartbeat does not
    /// change again: a look just then finds it at once, instead of up to a poll later.
    pub(crate) fn next_death(&self) -> Option<Instant> {
        self.fleet().next_death(self.failover)
    }

    /// Every worker with a row, as known now (this worker alive while its own liveness
    /// holds). For the leader of one of several streams (`stream`, its identifier), a
    /// worker whose row does not name the stream takes none of its leases, as if stopping.
    pub(crate) fn view(&self, stream: Option<&str>) -> BTreeMap<String, WorkerView> {
        let fleet = self.fleet();
        let mut view = fleet.view(Instant::now(), self.failover);
        if let Some(me) = view.get_mut(&self.worker_id) {
            if me.state == WorkerState::Unknown && self.liveness.is_alive() {
                me.state = WorkerState::Alive;
            }
        }
        if let Some(stream) = stream {
            for (id, worker) in view.iter_mut() {
                if fleet.row(id).is_some_and(|row| !row.consumes(stream)) {
                    worker.stopping = true;
                }
            }
        }
        view
    }

    /// Whether this worker has looked and found no other worker that is alive or may be:
    /// every other row is dead. A lone leader looks less often (see `LONE_WORKER_SLOWDOWN`):
    /// nobody can die unseen, and a worker that joins is seen a few seconds later.
    pub(crate) fn is_alone(&self) -> bool {
        let fleet = self.fleet();
        fleet.first_look().is_some()
            && fleet
                .view(Instant::now(), self.failover)
                .iter()
                .all(|(id, worker)| *id == self.worker_id || worker.is_dead())
    }

    /// Since when this worker has watched.
    pub(crate) fn watching_since(&self) -> Option<Instant> {
        self.fleet().first_look()
    }

    /// Whether a worker's row has not changed for `age`.
    pub(crate) fn unchanged_for(&self, worker_id: &str, age: Duration) -> bool {
        self.fleet().unchanged_for(worker_id, Instant::now(), age)
    }

    /// A row as last listed.
    pub(crate) fn row(&self, worker_id: &str) -> Option<WorkerRow> {
        self.fleet().row(worker_id).cloned()
    }

    /// The successors a leader names: live workers of this crate other than this one,
    /// those named before first (fewer changes), then by id.
    pub(crate) fn successors(&self, current: &[String], stream: Option<&str>) -> Vec<String> {
        let view = self.view(stream);
        let fleet = self.fleet();
        let eligible = |id: &str| {
            id != self.worker_id
                && view
                    .get(id)
                    .is_some_and(|w| w.state == WorkerState::Alive && !w.stopping)
                && fleet.row(id).is_some_and(|r| r.is_heartbeating())
        };
        let mut chosen: Vec<String> = current
            .iter()
            .filter(|id| eligible(id))
            .take(SUCCESSORS)
            .cloned()
            .collect();
        let already: HashSet<String> = chosen.iter().cloned().collect();
        for id in view.keys() {
            if chosen.len() >= SUCCESSORS {
                break;
            }
            if eligible(id) && !already.contains(id) {
                chosen.push(id.clone());
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::coordination::MemoryCoordinatorStore;

    const FAILOVER: Duration = Duration::from_secs(10);

    /// Writes each worker's row with its next heartbeat, naming `streams`.
    async fn beat(store: &MemoryCoordinatorStore, rows: &[(&str, Option<&[&str]>)]) {
        for (id, streams) in rows {
            let previous = store.read_worker(id).await.unwrap();
            let mut row = WorkerRow::new(*id);
            row.heartbeat = Some(previous.as_ref().and_then(|p| p.heartbeat).unwrap_or(0) + 1);
            row.streams = streams.map(|s| s.iter().map(|s| s.to_string()).collect());
            store.write_worker(&row, previous.as_ref()).await.unwrap();
        }
    }

    /// A multi-stream worker that stops consuming a stream keeps its row (its other
    /// streams); the leader of the stream it left must not give it that stream's leases
    /// or name it a successor (RELIABILITY finding 12: leases went back and forth).
    #[tokio::test(start_paused = true)]
    async fn a_streams_leader_sees_only_the_workers_that_consume_it() {
        let store = Arc::new(MemoryCoordinatorStore::new());
        let watch = FleetWatch::new(
            store.clone(),
            Arc::new(Liveness::unbounded()),
            "leader".into(),
            FAILOVER,
            Duration::from_secs(1),
        );
        let rows: &[(&str, Option<&[&str]>)] = &[
            ("leader", Some(&["orders", "clicks"])),
            ("orders-only", Some(&["orders"])),
            ("between-streams", Some(&[])),
            ("single-stream", None),
        ];
        for _ in 0..2 {
            beat(&store, rows).await;
            watch.look().await;
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        let takers = |stream: Option<&str>| -> Vec<String> {
            watch
                .view(stream)
                .into_iter()
                .filter(|(_, w)| w.takes_leases())
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(takers(Some("clicks")), ["leader", "single-stream"]);
        assert_eq!(
            takers(Some("orders")),
            ["leader", "orders-only", "single-stream"]
        );
        assert_eq!(
            takers(None),
            ["between-streams", "leader", "orders-only", "single-stream"]
        );
        assert_eq!(watch.successors(&[], Some("clicks")), ["single-stream"]);
    }
}
