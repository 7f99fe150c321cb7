//! How many bytes the collector puts in one PutRecords call: up to
//! `collection_max_size`, lowered while calls time out or answer slowly.
//!
//! An endpoint that takes in a fixed number of bytes per second answers a call after the
//! bytes in flight ahead of it are written: the bigger the calls, the longer each waits,
//! and a 5 MiB call to a slow endpoint can outlast its timeout although it lands (a
//! duplicate when retried). So calls start at [`MIN_CALL_SIZE`] and grow by that much per
//! window of calls (once a call started after the last change is answered quickly:
//! within a quarter of `request_timeout`) up to `collection_max_size`; a call that times out or answers slowly (after half of
//! `request_timeout`) halves the size, once per window of calls (as
//! [`ConcurrencyLimit`](crate::concurrency::ConcurrencyLimit) does), never below
//! [`MIN_CALL_SIZE`]. Against Kinesis, whose calls answer in well under a second, calls
//! reach the full size within 19 round trips. A record bigger than the size still
//! goes, alone.

use std::time::Duration;

use crate::concurrency::CallTicket;

/// The smallest size calls are lowered to, and the step they grow by: 256 KiB (or
/// `collection_max_size` if smaller).
pub(crate) const MIN_CALL_SIZE: usize = 256 * 1024;

/// The current limit on bytes per PutRecords call.
#[derive(Debug)]
pub(crate) struct CallSize {
    max: usize,
    min: usize,
    limit: usize,
    adaptive: bool,
    /// A call answered within this is quick: the size grows.
    quick: Duration,
    /// A call answered after this is slow: the size halves.
    slow: Duration,
    /// Calls started before this were in flight at the last change: their timeouts and
    /// slow answers were answered by a decrease, their quick answers by an increase.
    window_start: CallTicket,
}

impl CallSize {
    /// Calls of up to `max` bytes (`collection_max_size`), adapted to latency against
    /// `request_timeout` when `adaptive`; always `max` otherwise.
    pub fn new(max: usize, request_timeout: Duration, adaptive: bool) -> Self {
        let max = max.max(1);
        let min = MIN_CALL_SIZE.min(max);
        CallSize {
            max,
            min,
            limit: if adaptive { min } else { max },
            adaptive,
            quick: request_timeout / 4,
            slow: request_timeout / 2,
            window_start: CallTicket::default(),
        }
    }

    /// Bytes one call may carry now.
    pub fn get(&self) -> usize {
        self.limit
    }

    /// `call` was answered after `latency`; `next` is the ticket the next call will get.
    pub fn answered(&mut self, call: CallTicket, next: CallTicket, latency: Duration) {
        if !self.adaptive {
            return;
        }
        if latency > self.slow {
            self.decrease(call, next);
        } else if latency <= self.quick && call >= self.window_start {
            self.limit = (self.limit + self.min).min(self.max);
            self.window_start = next;
        }
    }

    /// `call` timed out; `next` is the ticket the next call will get.
    pub fn timed_out(&mut self, call: CallTicket, next: CallTicket) {
        if self.adaptive {
            self.decrease(call, next);
        }
    }

    fn decrease(&mut self, call: CallTicket, next: CallTicket) {
        if call < self.window_start {
            return;
        }
        self.limit = (self.limit / 2).max(self.min);
        self.window_start = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::concurrency::ConcurrencyLimit;

    const MIB: usize = 1024 * 1024;
    const FLOOR: Duration = Duration::from_secs(6);

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn starts_small_and_grows_on_quick_answers_up_to_the_maximum() {
        let mut calls = ConcurrencyLimit::new(24, false);
        let mut size = CallSize::new(5 * MIB, FLOOR, true);
        assert_eq!(size.get(), MIN_CALL_SIZE);
        let mut sizes = Vec::new();
        // Calls in flight when the size grew do not grow it again.
        let in_flight: Vec<_> = (0..6).map(|_| calls.started()).collect();
        for call in in_flight {
            size.answered(call, calls.next_ticket(), ms(200));
        }
        assert_eq!(size.get(), 2 * MIN_CALL_SIZE, "one step per window");
        for _ in 0..25 {
            let call = calls.started();
            size.answered(call, calls.next_ticket(), ms(200));
            sizes.push(size.get());
        }
        assert_eq!(sizes[0], 3 * MIN_CALL_SIZE);
        assert_eq!(sizes[17], 5 * MIB, "19 windows from 256 KiB to 5 MiB");
        assert_eq!(sizes[24], 5 * MIB, "not above");
        // In between quick and slow: no change.
        let call = calls.started();
        size.answered(call, calls.next_ticket(), ms(2_000));
        assert_eq!(size.get(), 5 * MIB);
    }

    #[test]
    fn halves_once_per_window_of_timeouts_or_slow_answers() {
        let mut calls = ConcurrencyLimit::new(24, false);
        let mut size = CallSize::new(4 * MIB, FLOOR, true);
        for _ in 0..20 {
            let call = calls.started();
            size.answered(call, calls.next_ticket(), ms(10));
        }
        assert_eq!(size.get(), 4 * MIB);
        // Six calls in flight; all time out or answer slowly: one halving.
        let blip: Vec<_> = (0..6).map(|_| calls.started()).collect();
        for (i, call) in blip.into_iter().enumerate() {
            if i % 2 == 0 {
                size.timed_out(call, calls.next_ticket());
            } else {
                size.answered(call, calls.next_ticket(), ms(3_500));
            }
        }
        assert_eq!(size.get(), 2 * MIB);
        // A call started after the decrease halves it again.
        let call = calls.started();
        size.timed_out(call, calls.next_ticket());
        assert_eq!(size.get(), MIB);
        for _ in 0..10 {
            let call = calls.started();
            size.timed_out(call, calls.next_ticket());
        }
        assert_eq!(size.get(), MIN_CALL_SIZE, "never below 256 KiB");
    }

    #[test]
    fn a_small_maximum_is_also_the_minimum() {
        let mut calls = ConcurrencyLimit::new(1, false);
        let mut size = CallSize::new(100_000, FLOOR, true);
        assert_eq!(size.get(), 100_000);
        let call = calls.started();
        size.timed_out(call, calls.next_ticket());
        assert_eq!(size.get(), 100_000);
    }

    #[test]
    fn fixed_size_when_not_adaptive() {
        let mut calls = ConcurrencyLimit::new(1, false);
        let mut size = CallSize::new(5 * MIB, FLOOR, false);
        assert_eq!(size.get(), 5 * MIB);
        let call = calls.started();
        size.timed_out(call, calls.next_ticket());
        let call = calls.started();
        size.answered(call, calls.next_ticket(), ms(5_000));
        assert_eq!(size.get(), 5 * MIB);
    }
}
