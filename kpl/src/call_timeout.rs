//! The timeout of each PutRecords call, learned from the latency of recent calls of its
//! size.
//!
//! A call that times out may still have landed: retrying it puts its records in the
//! stream twice. A fixed timeout (the KPL's `RequestTimeout`, 6 s) is right for Kinesis
//! but too short for a slower endpoint, where big calls take longer than it to answer.
//! So the timeout of a call is [`MULTIPLIER`] times the 99th percentile of the latency of
//! the last [`WINDOW`] calls of its size class (power-of-two byte ranges), never below
//! `request_timeout` (the floor) and never above the ceiling: `record_ttl`, at most
//! [`MAX_CALL_TIMEOUT`] (and never below the floor). A timed-out call counts as a
//! latency of the timeout it was given (its real latency is at least that), so an
//! endpoint slow enough to time out every call still raises the next calls' timeout
//! (threefold each time) instead of never learning.

use std::collections::VecDeque;
use std::time::Duration;

/// Latencies kept per size class: the most recent calls. With 64 the 99th percentile
/// (nearest rank) is the slowest of them, so a single timeout in the window raises the
/// timeout of the class until 64 newer calls of that class have been answered.
pub(crate) const WINDOW: usize = 64;
/// A call's timeout is this multiple of the estimated latency of its size.
pub(crate) const MULTIPLIER: u32 = 3;
/// The estimated latency of a size: this percentile of its recent latencies.
const PERCENTILE: f64 = 0.99;
/// The longest timeout the producer gives a call, whatever `record_ttl` (unless
/// `request_timeout` is longer still): a call unanswered for 2 minutes is lost.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The smallest size class holds calls of up to 2^16 bytes (64 KiB).
const SMALLEST_CLASS_BITS: u32 = 16;
/// Size classes: up to 64 KiB, 128 KiB, ... 8 MiB, and above 8 MiB (large records).
const CLASSES: usize = 9;

/// Per-call timeouts from the latency of recent calls by size.
#[derive(Debug)]
pub(crate) struct CallTimeouts {
    floor: Duration,
    ceiling: Duration,
    adaptive: bool,
    classes: [Latencies; CLASSES],
}

impl CallTimeouts {
    /// Timeouts from `floor` (`request_timeout`) up to `record_ttl`, at most
    /// [`MAX_CALL_TIMEOUT`] and at least `floor`; always `floor` unless `adaptive`.
    pub fn new(floor: Duration, record_ttl: Duration, adaptive: bool) -> Self {
        CallTimeouts {
            floor,
            ceiling: record_ttl.min(MAX_CALL_TIMEOUT).max(floor),
            adaptive,
            classes: Default::default(),
        }
    }

    /// The timeout for a call of `bytes`.
    pub fn timeout(&self, bytes: usize) -> Duration {
        if !self.adaptive {
            return self.floor;
        }
        self.estimate(bytes).map_or(self.floor, |latency| {
            latency
                .saturating_mul(MULTIPLIER)
                .clamp(self.floor, self.ceiling)
        })
    }

    /// The estimated latency of a call of `bytes`: the 99th percentile of the recent
    /// latencies of its size class, else of the nearest larger class that has any
    /// (bigger calls take longer: a cautious guess), else of the nearest smaller one
    /// doubled per class between them (an endpoint that takes in so many bytes per
    /// second answers a call twice the size in about twice the time); `None` before any
    /// call was answered or timed out.
    pub fn estimate(&self, bytes: usize) -> Option<Duration> {
        let class = class_of(bytes);
        if let Some(high) = self.classes[class..].iter().find_map(|c| c.high) {
            return Some(high);
        }
        let (below, high) = self.classes[..class]
            .iter()
            .rev()
            .enumerate()
            .find_map(|(below, c)| Some((below as u32 + 1, c.high?)))?;
        Some(high.saturating_mul(1 << below))
    }

    /// A call of `bytes` was answered after `latency`.
    pub fn answered(&mut self, bytes: usize, latency: Duration) {
        self.classes[class_of(bytes)].add(latency);
    }

    /// A call of `bytes` given `timeout` timed out: its latency is at least that.
    pub fn timed_out(&mut self, bytes: usize, timeout: Duration) {
        self.classes[class_of(bytes)].add(timeout);
    }
}

/// The size class of a call of `bytes`: 0 up to 64 KiB, then one per doubling.
fn class_of(bytes: usize) -> usize {
    // Bits of bytes - 1: the exponent of the smallest power of two at least `bytes`.
    let bits = usize::BITS - bytes.saturating_sub(1).leading_zeros();
    (bits.saturating_sub(SMALLEST_CLASS_BITS) as usize).min(CLASSES - 1)
}

/// The last [`WINDOW`] latencies of one size class and their high percentile.
#[derive(Debug, Default)]
struct Latencies {
    recent: VecDeque<Duration>,
    high: Option<Duration>,
}

impl Latencies {
    fn add(&mut self, latency: Duration) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(latency);
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest rank: the smallest latency at least PERCENTILE of them do not exceed.
        let rank = (PERCENTILE * sorted.len() as f64).ceil() as usize;
        self.high = sorted.get(rank.saturating_sub(1)).copied();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn size_classes_double() {
        assert_eq!(class_of(0), 0);
        assert_eq!(class_of(1), 0);
        assert_eq!(class_of(64 * KIB), 0);
        assert_eq!(class_of(64 * KIB + 1), 1);
        assert_eq!(class_of(128 * KIB), 1);
        assert_eq!(class_of(5 * MIB), 7, "5 MiB: up to 8 MiB");
        assert_eq!(class_of(8 * MIB), 7);
        assert_eq!(class_of(10 * MIB), 8);
        assert_eq!(class_of(usize::MAX), 8);
    }

    #[test]
    fn the_floor_until_calls_are_slow() {
        let mut timeouts = CallTimeouts::new(ms(6_000), ms(30_000), true);
        assert_eq!(timeouts.timeout(5 * MIB), ms(6_000), "nothing learned yet");
        assert_eq!(timeouts.estimate(5 * MIB), None);
        for _ in 0..100 {
            timeouts.answered(5 * MIB, ms(300));
        }
        assert_eq!(timeouts.estimate(5 * MIB), Some(ms(300)));
        assert_eq!(
            timeouts.timeout(5 * MIB),
            ms(6_000),
            "3 x 300 ms: the floor"
        );
        timeouts.answered(5 * MIB, ms(2_500));
        assert_eq!(
            timeouts.timeout(5 * MIB),
            ms(7_500),
            "3 x the slowest of 64"
        );
        timeouts.answered(5 * MIB, ms(20_000));
        assert_eq!(timeouts.timeout(5 * MIB), ms(30_000), "capped at the TTL");
    }

    #[test]
    fn a_slow_call_is_forgotten_after_a_window_of_faster_ones() {
        let mut timeouts = CallTimeouts::new(ms(1_000), ms(30_000), true);
        timeouts.answered(MIB, ms(4_000));
        for _ in 0..WINDOW - 1 {
            timeouts.answered(MIB, ms(100));
        }
        assert_eq!(timeouts.timeout(MIB), ms(12_000));
        timeouts.answered(MIB, ms(500));
        assert_eq!(
            timeouts.timeout(MIB),
            ms(1_500),
            "the 4 s call left the window"
        );
    }

    #[test]
    fn the_window_is_bounded_and_its_p99_is_its_slowest() {
        let mut latencies = Latencies::default();
        for i in (1..=2 * WINDOW as u64).rev() {
            latencies.add(ms(i));
        }
        assert_eq!(latencies.recent.len(), WINDOW);
        assert_eq!(
            latencies.high,
            Some(ms(WINDOW as u64)),
            "the last 64: 64 ms down to 1 ms"
        );
    }

    #[test]
    fn timeouts_raise_the_timeout_until_calls_are_answered() {
        let mut timeouts = CallTimeouts::new(ms(300), ms(30_000), true);
        for _ in 0..10 {
            timeouts.answered(1_000, ms(20));
        }
        let mut timeout = timeouts.timeout(1_000);
        assert_eq!(timeout, ms(300));
        // Every call times out: each timeout triples the next one, up to the ceiling.
        let mut seen = vec![timeout];
        for _ in 0..8 {
            timeouts.timed_out(1_000, timeout);
            timeout = timeouts.timeout(1_000);
            seen.push(timeout);
        }
        assert_eq!(
            seen,
            [300, 900, 2_700, 8_100, 24_300, 30_000, 30_000, 30_000, 30_000].map(ms)
        );
    }

    #[test]
    fn the_ceiling_is_the_ttl_at_most_two_minutes_and_never_below_the_floor() {
        let slow = |floor, ttl| {
            let mut timeouts = CallTimeouts::new(floor, ttl, true);
            timeouts.answered(1, Duration::from_secs(3_600));
            timeouts.timeout(1)
        };
        assert_eq!(slow(ms(6_000), ms(30_000)), ms(30_000));
        assert_eq!(
            slow(ms(6_000), Duration::from_secs(3_600)),
            MAX_CALL_TIMEOUT
        );
        assert_eq!(
            slow(ms(6_000), ms(2_000)),
            ms(6_000),
            "a TTL below the floor"
        );
        let floor = Duration::from_secs(300);
        assert_eq!(slow(floor, Duration::from_secs(3_600)), floor);
    }

    #[test]
    fn sizes_without_data_borrow_from_larger_then_smaller_calls() {
        let mut timeouts = CallTimeouts::new(ms(100), ms(30_000), true);
        timeouts.answered(4 * MIB, ms(2_000));
        assert_eq!(
            timeouts.estimate(256 * KIB),
            Some(ms(2_000)),
            "a larger class"
        );
        assert_eq!(
            timeouts.estimate(5 * MIB),
            Some(ms(4_000)),
            "a smaller class, doubled"
        );
        assert_eq!(timeouts.estimate(10 * MIB), Some(ms(8_000)));
        timeouts.answered(512 * KIB, ms(400));
        assert_eq!(
            timeouts.estimate(256 * KIB),
            Some(ms(400)),
            "the nearest larger"
        );
        assert_eq!(timeouts.estimate(MIB), Some(ms(2_000)));
        timeouts.answered(256 * KIB, ms(200));
        assert_eq!(timeouts.estimate(256 * KIB), Some(ms(200)), "its own class");
        assert_eq!(timeouts.timeout(256 * KIB), ms(600));
    }

    #[test]
    fn fixed_timeouts_ignore_what_they_learn() {
        let mut timeouts = CallTimeouts::new(ms(6_000), ms(30_000), false);
        timeouts.timed_out(5 * MIB, ms(6_000));
        timeouts.answered(5 * MIB, ms(10_000));
        assert_eq!(timeouts.timeout(5 * MIB), ms(6_000));
        assert_eq!(
            timeouts.estimate(5 * MIB),
            Some(ms(10_000)),
            "still reported in logs"
        );
    }
}
