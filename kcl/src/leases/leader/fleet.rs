//! The fleet as the leader (and its successors) see it: each worker's row in the worker
//! metrics table, observed every fraction of a second, tells which workers are alive, dead
//! or not known yet. Only this worker's own observations count, as for leases: a worker of
//! this crate whose heartbeat has not been seen to change for the failover time is dead.
//! Rows written by other libraries (the Java KCL 3 writes its `lut` every 30 s) never make
//! a worker dead: their leases expire one by one, by their counters.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::leases::coordination::WorkerRow;
use crate::leases::coordinator::observations::Observations;

/// How long a row of another library may go unchanged and its worker still count as
/// alive: twice the Java KCL 3's reporting interval of 30 s, as its leader judges.
pub(crate) const FOREIGN_ROW_ALIVE: Duration = Duration::from_secs(60);

/// What is known of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkerState {
    /// Its row changed within the failover time (within [`FOREIGN_ROW_ALIVE`] for a row of
    /// another library): it takes leases.
    Alive,
    /// Not seen change yet.
    Unknown,
    /// This crate's worker, its heartbeat unchanged for the failover time: its leases go
    /// to others once its row is fenced.
    Dead,
    /// Its row was fenced at its current heartbeat: dead, and known to have stopped.
    Fenced,
}

/// One worker as the leader sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WorkerView {
    pub state: WorkerState,
    /// Its heartbeat (rows of this crate only).
    pub heartbeat: Option<u64>,
    /// Shutting down: it takes nothing more.
    pub stopping: bool,
    /// The most leases it takes.
    pub max_leases: Option<usize>,
    /// Its latest CPU utilisation, percent.
    pub cpu: Option<f64>,
}

impl WorkerView {
    /// Whether leases may be given to it.
    pub fn takes_leases(&self) -> bool {
        self.state == WorkerState::Alive && !self.stopping
    }

    /// Whether it is dead (fenced or to be fenced).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, WorkerState::Dead | WorkerState::Fenced)
    }
}

/// The version of a row: what changes when its worker writes it.
type RowVersion = (Option<u64>, Option<u64>, Option<i64>);

fn version(row: &WorkerRow) -> RowVersion {
    (row.heartbeat, row.fenced_at, row.last_update_epoch_seconds)
}

/// The rows last seen and what this worker observed of them.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    seen: Observations<RowVersion>,
    /// Workers whose row changed (or appeared) since this worker first looked.
    changed: HashSet<String>,
    rows: BTreeMap<String, WorkerRow>,
    /// When this worker first looked.
    first_look: Option<Instant>,
}

impl Fleet {
    /// Notes the rows of one listing made at `now`.
    pub fn observe(&mut self, rows: Vec<WorkerRow>, now: Instant) {
        let first_look = *self.first_look.get_or_insert(now);
        let listed: HashSet<String> = rows.iter().map(|r| r.worker_id.clone()).collect();
        self.seen.retain(|key| listed.contains(key));
        self.changed.retain(|key| listed.contains(key));
        for row in rows {
            let known = self.seen.since(&row.worker_id).is_some();
            let since = self.seen.observe(&row.worker_id, &version(&row), now);
            // A row that is new, or changed, shows a live writer (unless it is a row this
            // worker found at its very first look, which may be a dead worker's).
            if (since == now && known) || (!known && now > first_look) {
                self.changed.insert(row.worker_id.clone());
            }
            self.rows.insert(row.worker_id.clone(), row);
        }
        self.rows.retain(|key, _| listed.contains(key));
    }

    /// Every worker with a row, and what is known of it at `now`.
    pub fn view(&self, now: Instant, failover: Duration) -> BTreeMap<String, WorkerView> {
        self.rows
            .iter()
            .map(|(id, row)| {
                let since = self.seen.since(id).unwrap_or(now);
                let unchanged = now.duration_since(since);
                let changed = self.changed.contains(id);
                let state = if row.is_heartbeating() {
                    if row.is_fenced() {
                        WorkerState::Fenced
                    } else if unchanged > failover {
                        WorkerState::Dead
                    } else if changed {
                        WorkerState::Alive
                    } else {
                        WorkerState::Unknown
                    }
                } else if changed && unchanged <= FOREIGN_ROW_ALIVE {
                    WorkerState::Alive
                } else {
                    WorkerState::Unknown
                };
                let view = WorkerView {
                    state,
                    heartbeat: row.heartbeat,
                    stopping: row.stopping,
                    max_leases: row.max_leases.and_then(|m| usize::try_from(m).ok()),
                    cpu: row.cpu_percent(),
                };
                (id.clone(), view)
            })
            .collect()
    }

    /// When the first worker of this crate not known dead would be, if its heartbeat does
    /// not change again: just past the failover time after it was first seen.
    pub fn next_death(&self, failover: Duration) -> Option<Instant> {
        self.rows
            .iter()
            .filter(|(_, row)| row.is_heartbeating() && !row.is_fenced())
            .filter_map(|(id, _)| self.seen.since(id))
            .map(|since| since + failover + Duration::from_millis(1))
            .filter(|at| *at > Instant::now())
            .min()
    }

    /// Whether a worker's row has not changed for `age` at `now`.
    pub fn unchanged_for(&self, worker_id: &str, now: Instant, age: Duration) -> bool {
        self.seen
            .since(worker_id)
            .is_some_and(|since| now.duration_since(since) > age)
    }

    /// A row, as last listed.
    pub fn row(&self, worker_id: &str) -> Option<&WorkerRow> {
        self.rows.get(worker_id)
    }

    /// Since when this worker has looked at the rows.
    pub fn first_look(&self) -> Option<Instant> {
        self.first_look
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILOVER: Duration = Duration::from_secs(10);

    fn row(id: &str, heartbeat: Option<u64>, lut: Option<i64>) -> WorkerRow {
        let mut row = WorkerRow::new(id);
        row.heartbeat = heartbeat;
        row.last_update_epoch_seconds = lut;
        row
    }

    fn state(fleet: &Fleet, id: &str) -> WorkerState {
        fleet.view(Instant::now(), FAILOVER)[id].state
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_tell_live_workers_from_dead_ones() {
        let mut fleet = Fleet::default();
        fleet.observe(
            vec![row("a", Some(1), None), row("old", Some(9), None)],
            Instant::now(),
        );
        assert_eq!(state(&fleet, "a"), WorkerState::Unknown, "seen once");
        tokio::time::advance(Duration::from_secs(3)).await;
        fleet.observe(
            vec![
                row("a", Some(2), None),
                row("old", Some(9), None),
                row("new", Some(1), None),
            ],
            Instant::now(),
        );
        assert_eq!(state(&fleet, "a"), WorkerState::Alive);
        assert_eq!(
            state(&fleet, "new"),
            WorkerState::Alive,
            "appeared since the first look"
        );
        assert_eq!(state(&fleet, "old"), WorkerState::Unknown);
        tokio::time::advance(Duration::from_millis(7_001)).await;
        fleet.observe(
            vec![
                row("a", Some(3), None),
                row("old", Some(9), None),
                row("new", Some(1), None),
            ],
            Instant::now(),
        );
        assert_eq!(
            state(&fleet, "old"),
            WorkerState::Dead,
            "unchanged for the failover time"
        );
        assert_eq!(state(&fleet, "new"), WorkerState::Alive);
        let mut fenced = row("old", Some(9), None);
        fenced.fenced_at = Some(9);
        fleet.observe(vec![fenced], Instant::now());
        assert_eq!(state(&fleet, "old"), WorkerState::Fenced);
    }

    #[tokio::test(start_paused = true)]
    async fn rows_of_other_libraries_never_make_a_worker_dead() {
        let mut fleet = Fleet::default();
        fleet.observe(vec![row("java", None, Some(100))], Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        fleet.observe(vec![row("java", None, Some(130))], Instant::now());
        assert_eq!(state(&fleet, "java"), WorkerState::Alive);
        tokio::time::advance(Duration::from_secs(61)).await;
        fleet.observe(vec![row("java", None, Some(130))], Instant::now());
        assert_eq!(state(&fleet, "java"), WorkerState::Unknown);
    }
}
