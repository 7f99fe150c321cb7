//! The worker's heartbeat: its row in the worker metrics table, written every renewal
//! interval, each write conditional on the heartbeat before. A success extends the
//! worker's [`Liveness`]; a row a leader fenced (it found the worker dead and gave its
//! leases away) ends the current liveness epoch and is then started afresh.
//!
//! The row also carries what the leader balances with: the Java KCL 3's `lut` (so a Java
//! leader counts this worker as active) and, when [`CpuBalancing`](crate::leases::CpuBalancing)
//! is on, the host's CPU utilisation in `sts.C`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::coordination::{CoordinatorStore, WorkerRow, CPU_METRIC};
use super::held::timed;
use super::liveness::Liveness;
use super::store::LeaseStoreError;
use crate::metrics::{CoordinationMetrics, WorkerLabels};

/// How many CPU samples a row keeps (the Java KCL 3 keeps 10).
const CPU_SAMPLES: usize = 10;

/// Writes this worker's row.
pub(crate) struct Heartbeat {
    store: Arc<dyn CoordinatorStore>,
    liveness: Arc<Liveness>,
    worker_id: String,
    timeout: Duration,
    max_leases: Option<u64>,
    /// The row as last written or read.
    last: tokio::sync::Mutex<Option<WorkerRow>>,
    stopping: AtomicBool,
    cpu: Option<Mutex<CpuSampler>>,
    /// The lock keys whose leader named this worker a successor (from the row).
    successor_of: Mutex<std::collections::BTreeSet<String>>,
    /// The streams a multi-stream worker consumes (`None`: a single-stream worker).
    streams: Mutex<Option<BTreeSet<String>>>,
    metrics: CoordinationMetrics,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

/// How one heartbeat ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Written; liveness extended.
    Written,
    /// A leader had fenced the row: every lease held is lost; the next beat starts afresh.
    Fenced,
    /// Not written (a failed or unanswered call): liveness not extended.
    Failed,
}

impl Heartbeat {
    pub(crate) fn new(
        store: Arc<dyn CoordinatorStore>,
        liveness: Arc<Liveness>,
        worker_id: String,
        timeout: Duration,
        max_leases: Option<u64>,
        report_cpu: bool,
        metrics: &WorkerLabels,
    ) -> Self {
        Heartbeat {
            metrics: CoordinationMetrics::new(metrics),
            store,
            liveness,
            worker_id,
            timeout,
            max_leases,
            last: tokio::sync::Mutex::new(None),
            stopping: AtomicBool::new(false),
            cpu: report_cpu.then(|| Mutex::new(CpuSampler::default())),
            successor_of: Mutex::new(Default::default()),
            streams: Mutex::new(None),
        }
    }

    /// The next beats say the worker is shutting down (the leader gives it nothing more).
    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The next beats say the worker consumes `stream` (an identifier) too: a leader of
    /// that stream gives leases only to the workers whose row names it.
    pub(crate) fn join_stream(&self, stream: &str) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(BTreeSet::new)
            .insert(stream.to_owned());
    }

    /// The next beats no longer name `stream`. Returns whether it was named.
    pub(crate) fn leave_stream(&self, stream: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .is_some_and(|streams| streams.remove(stream))
    }

    /// Writes the row once (one beat at a time).
    pub(crate) async fn beat(&self) -> Beat {
        let beat = self.beat_once().await;
        self.metrics.heartbeat(match beat {
            Beat::Written => "success",
            Beat::Fenced => "fenced",
            Beat::Failed => "failure",
        });
        beat
    }

    async fn beat_once(&self) -> Beat {
        let mut last = self.last.lock().await;
        if last.is_none() {
            // A previous process with this worker id may have left a row: continue its count.
            match timed(self.timeout, self.store.read_worker(&self.worker_id)).await {
                Ok(Some(row)) => *last = Some(row),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "reading this worker's row failed");
                    return Beat::Failed;
                }
            }
        }
        let previous = last.clone();
        let row = self.next_row(previous.as_ref());
        let sent = Instant::now();
        let written = timed(
            self.timeout,
            self.store.write_worker(&row, previous.as_ref()),
        )
        .await;
        match written {
            Ok(written) => {
                self.note_successor_of(&written);
                *last = Some(written);
                self.liveness.extend(sent);
                Beat::Written
            }
            Err(error) => {
                let condition_failed = matches!(error, LeaseStoreError::ConditionFailed(_));
                if !condition_failed {
                    tracing::warn!(%error, "heartbeat failed");
                }
                // Whether it was applied (an answer lost), fenced, or written by another
                // process with this worker id: the table tells.
                match timed(self.timeout, self.store.read_worker(&self.worker_id)).await {
                    Ok(Some(current)) if current.is_fenced() => {
                        tracing::warn!(worker = %self.worker_id, "a leader found this worker dead (no heartbeat seen for the failover time) and gave its leases to others: starting afresh");
                        self.liveness.lapse();
                        *last = Some(current);
                        Beat::Fenced
                    }
                    Ok(Some(current)) if current.heartbeat == row.heartbeat => {
                        // Applied, its answer lost.
                        self.note_successor_of(&current);
                        *last = Some(current);
                        self.liveness.extend(sent);
                        Beat::Written
                    }
                    Ok(current) => {
                        if condition_failed {
                            tracing::warn!(worker = %self.worker_id, "this worker's row was changed by someone else (another process with the same worker id?)");
                        }
                        *last = current;
                        Beat::Failed
                    }
                    Err(_) => Beat::Failed,
                }
            }
        }
    }

    fn note_successor_of(&self, row: &WorkerRow) {
        *self.successor_of.lock().unwrap_or_else(|e| e.into_inner()) = row.successor_of.clone();
    }

    /// Whether a leader named this worker a successor for `lock_key`, as the row said at
    /// the last heartbeat.
    pub(crate) fn is_named_successor(&self, lock_key: &str) -> bool {
        self.successor_of
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(lock_key)
    }

    fn next_row(&self, previous: Option<&WorkerRow>) -> WorkerRow {
        let mut row = WorkerRow::new(self.worker_id.clone());
        row.heartbeat = Some(previous.and_then(|p| p.heartbeat).unwrap_or(0) + 1);
        row.last_update_epoch_seconds = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        row.stopping = self.stopping.load(Ordering::SeqCst);
        row.max_leases = self.max_leases;
        row.streams = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(cpu) = &self.cpu {
            let mut sampler = cpu.lock().unwrap_or_else(|e| e.into_inner());
            let mut samples = previous
                .and_then(|p| p.stats.get(CPU_METRIC).cloned())
                .unwrap_or_default();
            // -1: no sample in this interval (the Java KCL's marker of a failing metric).
            samples.push(sampler.sample().unwrap_or(-1.0));
            let excess = samples.len().saturating_sub(CPU_SAMPLES);
            samples.drain(..excess);
            row.stats = BTreeMap::from([(CPU_METRIC.to_owned(), samples)]);
            row.operating_range = BTreeMap::from([(CPU_METRIC.to_owned(), vec![100.0])]);
        }
        row
    }
}

/// Beats every `interval` until the task is dropped; a beat that hangs never delays the
/// next (each is bounded by the request timeout, a quarter of the failover time).
pub(crate) async fn beat_forever(heartbeat: Arc<Heartbeat>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        heartbeat.beat().await;
    }
}

/// The host's CPU utilisation between two readings of `/proc/stat` (Linux; elsewhere no
/// samples, reported as the Java KCL reports a failing metric).
#[derive(Debug, Default)]
struct CpuSampler {
    previous: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Percent busy since the previous call; `None` on the first call or off Linux.
    fn sample(&mut self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (busy, total) = parse_proc_stat(&stat)?;
        let previous = self.previous.replace((busy, total));
        let (busy_before, total_before) = previous?;
        let elapsed = total.checked_sub(total_before).filter(|t| *t > 0)?;
        let busy = busy.saturating_sub(busy_before);
        Some((busy as f64 * 100.0 / elapsed as f64).clamp(0.0, 100.0))
    }
}

/// Busy and total jiffies of the `cpu` line of `/proc/stat`.
fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::coordination::MemoryCoordinatorStore;

    fn heartbeat(store: Arc<MemoryCoordinatorStore>) -> (Heartbeat, Arc<Liveness>) {
        let liveness = Arc::new(Liveness::bounded(Duration::from_secs(8)));
        let heartbeat = Heartbeat::new(
            store,
            liveness.clone(),
            "w1".into(),
            Duration::from_millis(2500),
            None,
            true,
            &WorkerLabels::new("app", "w1"),
        );
        (heartbeat, liveness)
    }

    #[test]
    fn proc_stat_is_read() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(stat), Some((150, 1000)));
        assert_eq!(parse_proc_stat("intr 1 2"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn beats_extend_liveness_and_a_fence_ends_the_epoch() {
        let store = Arc::new(MemoryCoordinatorStore::new());
        let (heartbeat, liveness) = heartbeat(store.clone());
        assert_eq!(heartbeat.beat().await, Beat::Written);
        assert!(liveness.is_alive());
        assert_eq!(heartbeat.beat().await, Beat::Written);
        let row = store.read_worker("w1").await.unwrap().unwrap();
        assert_eq!(row.heartbeat, Some(2));
        assert!(row.last_update_epoch_seconds.is_some());
        assert_eq!(row.operating_range.get(CPU_METRIC), Some(&vec![100.0]));
        // A leader fences the row at heartbeat 2.
        store.fence_worker("w1", 2).await.unwrap();
        let epoch = liveness.epoch();
        assert_eq!(heartbeat.beat().await, Beat::Fenced);
        assert!(!liveness.is_alive());
        assert_ne!(liveness.epoch(), epoch);
        // Then starts afresh: the fence is removed.
        assert_eq!(heartbeat.beat().await, Beat::Written);
        let row = store.read_worker("w1").await.unwrap().unwrap();
        assert_eq!((row.heartbeat, row.fenced_at), (Some(3), None));
        assert!(liveness.is_alive());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_worker_continues_the_count_of_its_row() {
        let store = Arc::new(MemoryCoordinatorStore::new());
        let mut old = WorkerRow::new("w1");
        old.heartbeat = Some(41);
        store.put_worker_row(old);
        let (heartbeat, _) = heartbeat(store.clone());
        assert_eq!(heartbeat.beat().await, Beat::Written);
        assert_eq!(
            store.read_worker("w1").await.unwrap().unwrap().heartbeat,
            Some(42)
        );
    }
}
