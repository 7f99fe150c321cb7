//! How long a polling reader waits before its next GetRecords call: a fixed pause (the
//! Java KCL's `idleTimeBetweenReadsInMillis`), or one that follows the shard's lag.

use std::time::Duration;

/// Lag-aware polling (this library's own; off by default, as the Java KCL has a fixed
/// pause): the pause between GetRecords calls follows how far behind the reader is.
///
/// - **Behind** (the last call's `MillisBehindLatest` above
///   [`behind_threshold`](Self::behind_threshold), or it returned as many records as it
///   may): the next call comes after [`catch_up_pause`](Self::catch_up_pause), so a
///   backlog drains at up to five calls per second instead of one per
///   `idle_time_between_reads`.
/// - **Caught up, records arriving**: the configured `idle_time_between_reads`.
/// - **Caught up, nothing read**: the pause doubles with every empty call, from
///   `idle_time_between_reads` up to [`max_idle_pause`](Self::max_idle_pause), and falls
///   back at the first record: a quiet shard costs a few calls a minute instead of forty,
///   at the price of up to `max_idle_pause` before the first record after a quiet spell is
///   read.
///
/// Kinesis allows five GetRecords calls per second per shard, shared by every application
/// reading the stream: a catch-up pause under 200 ms, or several applications catching up
/// at once, meets throttling (which backs off and is retried).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LagAwarePolling {
    /// Lag above which the reader is behind (default 10 s).
    pub behind_threshold: Duration,
    /// Pause between calls while behind (default 200 ms: the service's five calls per
    /// second per shard).
    pub catch_up_pause: Duration,
    /// Longest pause after calls that read nothing (default 10 s).
    pub max_idle_pause: Duration,
}

impl Default for LagAwarePolling {
    fn default() -> Self {
        LagAwarePolling {
            behind_threshold: Duration::from_secs(10),
            catch_up_pause: Duration::from_millis(200),
            max_idle_pause: Duration::from_secs(10),
        }
    }
}

/// What one successful GetRecords call returned, as far as pacing is concerned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadOutcome {
    pub records: usize,
    pub limit: usize,
    pub millis_behind_latest: Option<i64>,
}

/// The pause before the next GetRecords call, given what the calls so far returned.
#[derive(Debug)]
pub(crate) struct Pacer {
    idle: Duration,
    lag_aware: Option<LagAwarePolling>,
    quiet: Duration,
}

impl Pacer {
    pub(crate) fn new(idle: Duration, lag_aware: Option<LagAwarePolling>) -> Self {
        Pacer {
            idle,
            lag_aware,
            quiet: idle,
        }
    }

    /// The pause after a call that returned `outcome`.
    pub(crate) fn after(&mut self, outcome: ReadOutcome) -> Duration {
        let Some(lag_aware) = &self.lag_aware else {
            return self.idle;
        };
        let behind = outcome.records >= outcome.limit
            || outcome.millis_behind_latest.is_some_and(|lag| {
                u64::try_from(lag)
                    .is_ok_and(|lag| Duration::from_millis(lag) > lag_aware.behind_threshold)
            });
        if behind {
            self.quiet = self.idle;
            return lag_aware.catch_up_pause.min(self.idle);
        }
        if outcome.records > 0 {
            self.quiet = self.idle;
            return self.idle;
        }
        let pause = self.quiet;
        self.quiet = (self.quiet * 2).min(lag_aware.max_idle_pause.max(self.idle));
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(records: usize, lag_ms: i64) -> ReadOutcome {
        ReadOutcome {
            records,
            limit: 1_000,
            millis_behind_latest: Some(lag_ms),
        }
    }

    #[test]
    fn a_fixed_pause_without_lag_awareness() {
        let mut pacer = Pacer::new(Duration::from_millis(1_500), None);
        for outcome in [read(0, 0), read(1_000, 3_600_000), read(5, 0)] {
            assert_eq!(pacer.after(outcome), Duration::from_millis(1_500));
        }
    }

    #[test]
    fn fast_when_behind_gentle_when_quiet() {
        let idle = Duration::from_millis(1_500);
        let mut pacer = Pacer::new(idle, Some(LagAwarePolling::default()));
        // A backlog: full batches, or a lag above the threshold.
        assert_eq!(pacer.after(read(1_000, 0)), Duration::from_millis(200));
        assert_eq!(pacer.after(read(10, 60_000)), Duration::from_millis(200));
        // Caught up with records arriving: the configured pause.
        assert_eq!(pacer.after(read(10, 500)), idle);
        // Quiet: doubling up to the maximum.
        let quiet: Vec<u64> = (0..6)
            .map(|_| pacer.after(read(0, 0)).as_millis() as u64)
            .collect();
        assert_eq!(quiet, vec![1_500, 3_000, 6_000, 10_000, 10_000, 10_000]);
        // The first record brings the pause back.
        assert_eq!(pacer.after(read(1, 0)), idle);
        assert_eq!(pacer.after(read(0, 0)), idle);
        // No lag reported (an emulator): caught up unless the batch was full.
        let none = ReadOutcome {
            records: 0,
            limit: 1_000,
            millis_behind_latest: None,
        };
        assert_eq!(pacer.after(none), Duration::from_millis(3_000));
    }

    #[test]
    fn the_catch_up_pause_never_exceeds_the_configured_one() {
        let mut pacer = Pacer::new(Duration::from_millis(100), Some(LagAwarePolling::default()));
        assert_eq!(pacer.after(read(1_000, 0)), Duration::from_millis(100));
    }
}
