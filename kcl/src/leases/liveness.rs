//! A worker's own liveness when a leader assigns the leases: the instant after which it
//! acts on none of its leases.
//!
//! A leader judges a worker dead when it has not seen the worker's heartbeat change for the
//! failover time, then fences the worker's row (a write conditional on the heartbeat it
//! saw) and gives the worker's leases to others, which start at once. That is safe because
//! the worker stops first: it acts on a lease only until the send time of its last
//! heartbeat that succeeded, plus the failover time, minus the safety margin (the same
//! discipline as each lease's own deadline, see `held.rs`), and a heartbeat after the
//! fence fails. Once that deadline has passed, every lease it held is lost for good, even
//! if a later heartbeat succeeds: the leader may have given them away meanwhile. Each
//! lapse starts a new *epoch*; a lease taken in an earlier epoch stays lost.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct State {
    epoch: u64,
    deadline: Instant,
    /// When the last epoch ended.
    lapsed_at: Instant,
}

/// See the module documentation. Without a leader (every worker taking its own leases)
/// liveness is unbounded: only each lease's own deadline counts.
#[derive(Debug)]
pub struct Liveness {
    bound: Option<(Duration, Mutex<State>)>,
}

impl Liveness {
    /// No worker-wide deadline.
    pub(crate) fn unbounded() -> Self {
        Liveness { bound: None }
    }

    /// Not alive until the first heartbeat succeeds; then alive until its send time plus
    /// `trust` (the failover time minus the safety margin).
    pub(crate) fn bounded(trust: Duration) -> Self {
        let now = Instant::now();
        Liveness {
            bound: Some((
                trust,
                Mutex::new(State {
                    epoch: 0,
                    deadline: now,
                    lapsed_at: now,
                }),
            )),
        }
    }

    fn state(&self) -> Option<std::sync::MutexGuard<'_, State>> {
        self.bound
            .as_ref()
            .map(|(_, state)| state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The current epoch (leases taken now carry it).
    pub(crate) fn epoch(&self) -> u64 {
        self.state().map_or(0, |state| state.epoch)
    }

    /// Whether the worker may act on leases now.
    pub(crate) fn is_alive(&self) -> bool {
        self.state()
            .is_none_or(|state| Instant::now() < state.deadline)
    }

    /// The deadline of a lease taken in `epoch`: `None` when unbounded; an instant already
    /// past when that epoch has ended.
    pub(crate) fn deadline_for(&self, epoch: u64) -> Option<Instant> {
        let state = self.state()?;
        Some(if state.epoch == epoch {
            state.deadline
        } else {
            state.lapsed_at
        })
    }

    /// A heartbeat sent at `sent` succeeded. After a lapse, a new epoch starts.
    pub(crate) fn extend(&self, sent: Instant) {
        let Some((trust, state)) = &self.bound else {
            return;
        };
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now >= state.deadline {
            state.epoch += 1;
            state.lapsed_at = state.deadline;
            if state.epoch > 1 {
                tracing::warn!("this worker's liveness had lapsed (no heartbeat succeeded within the failover time): the leases it held are lost");
            }
        }
        let deadline = sent + *trust;
        if deadline > state.deadline {
            state.deadline = deadline;
        }
    }

    /// A leader fenced this worker: every lease it holds is lost, now.
    pub(crate) fn lapse(&self) {
        if let Some(mut state) = self.state() {
            let now = Instant::now();
            state.epoch += 1;
            state.lapsed_at = now;
            state.deadline = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lapse_loses_the_leases_of_its_epoch_for_good() {
        let liveness = Liveness::bounded(Duration::from_secs(8));
        assert!(!liveness.is_alive(), "not alive before the first heartbeat");
        liveness.extend(Instant::now());
        let first = liveness.epoch();
        assert!(liveness.is_alive());
        let start = Instant::now();
        assert_eq!(
            liveness.deadline_for(first),
            Some(start + Duration::from_secs(8))
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!liveness.is_alive());
        // A heartbeat after the lapse: alive again, in a new epoch.
        liveness.extend(Instant::now());
        assert!(liveness.is_alive());
        assert_ne!(liveness.epoch(), first);
        assert!(liveness.deadline_for(first).unwrap() <= Instant::now());
        // A fence ends the epoch at once.
        let second = liveness.epoch();
        liveness.lapse();
        assert!(!liveness.is_alive());
        assert!(liveness.deadline_for(second).unwrap() <= Instant::now());
        assert_eq!(Liveness::unbounded().deadline_for(0), None);
    }
}
