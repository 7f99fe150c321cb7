//! How many PutRecords calls may be in flight: `max_connections`, lowered while the
//! endpoint times out.
//!
//! A slow endpoint answers many concurrent calls even more slowly; calls then pass the
//! request timeout, are retried (and, having often succeeded, duplicated) and their
//! records expire. Halving the limit once per window of calls that time out and growing
//! it back by one per window of answered calls (additive increase, multiplicative
//! decrease, as TCP does once per round trip) keeps the producer just under what the
//! endpoint sustains. The window of a decrease is the calls already in flight when it
//! happened: when a blip makes every call in flight time out, the limit halves once,
//! not once per call.
//!
//! With `adaptive_request_timeout` (the default) the limit also halves on calls
//! answered after half of `request_timeout` (an endpoint that takes in a fixed number of
//! bytes per second answers later the more bytes are in flight: fewer calls keep its
//! latency away from the timeout at the same throughput), and it starts at
//! [`INITIAL_LIMIT`], growing by one per answered call until the first decrease (TCP's
//! slow start): the first calls, sent before any latency is known, do not all pile up
//! on a slow endpoint at once.

/// Calls in flight at first with slow start.
pub(crate) const INITIAL_LIMIT: usize = 4;

/// Identifies a call for [`ConcurrencyLimit`]: the order in which it started. The
/// default is the first call's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CallTicket(u64);

/// The current limit on calls in flight.
#[derive(Debug)]
pub(crate) struct ConcurrencyLimit {
    max: usize,
    limit: usize,
    /// Growing by one per answered call, until the first decrease.
    slow_start: bool,
    successes: usize,
    next_call: u64,
    /// Calls started before this were in flight at the last decrease: their timeouts
    /// were answered by it.
    window_start: u64,
}

impl ConcurrencyLimit {
    /// Up to `max` calls; starting from [`INITIAL_LIMIT`] with `slow_start`, else from
    /// `max`.
    pub fn new(max: usize, slow_start: bool) -> Self {
        let max = max.max(1);
        ConcurrencyLimit {
            max,
            limit: if slow_start {
                INITIAL_LIMIT.min(max)
            } else {
                max
            },
            slow_start,
            successes: 0,
            next_call: 0,
            window_start: 0,
        }
    }

    /// A call starts.
    pub fn started(&mut self) -> CallTicket {
        self.next_call += 1;
        CallTicket(self.next_call - 1)
    }

    /// The ticket the next call will get: calls in flight now have lower ones.
    pub fn next_ticket(&self) -> CallTicket {
        CallTicket(self.next_call)
    }

    /// Calls that may be in flight now.
    pub fn get(&self) -> usize {
        self.limit
    }

    /// A call completed with an answer from the endpoint (success or per-record errors).
    pub fn answered(&mut self) {
        if self.limit == self.max {
            return;
        }
        if self.slow_start {
            self.limit += 1;
            return;
        }
        self.successes += 1;
        if self.successes >= self.limit {
            self.limit += 1;
            self.successes = 0;
        }
    }

    /// A call was answered, but after half of `request_timeout` (with adaptive timeouts,
    /// see the module's documentation): as a timeout.
    pub fn answered_slowly(&mut self, call: CallTicket) {
        self.timed_out(call);
    }

    /// A call timed out.
    pub fn timed_out(&mut self, call: CallTicket) {
        if call.0 < self.window_start {
            return;
        }
        self.slow_start = false;
        self.limit = (self.limit / 2).max(1);
        self.successes = 0;
        self.window_start = self.next_call;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_once_per_window_of_timeouts_and_grows_back_one_per_window() {
        let mut limit = ConcurrencyLimit::new(24, false);
        assert_eq!(limit.get(), 24);
        // One blip: all 24 calls in flight time out.
        let blip: Vec<_> = (0..24).map(|_| limit.started()).collect();
        for call in blip {
            limit.timed_out(call);
        }
        assert_eq!(limit.get(), 12, "one halving for one window of calls");
        // Calls started after the decrease that time out halve it again, once per window.
        for _ in 0..10 {
            let calls: Vec<_> = (0..limit.get()).map(|_| limit.started()).collect();
            for call in calls {
                limit.timed_out(call);
            }
        }
        assert_eq!(limit.get(), 1, "never below one");
        limit.answered();
        assert_eq!(limit.get(), 2);
        limit.answered();
        assert_eq!(limit.get(), 2);
        limit.answered();
        assert_eq!(limit.get(), 3);
        for _ in 0..1_000 {
            limit.answered();
        }
        assert_eq!(limit.get(), 24, "back to max_connections, not above");
    }

    #[test]
    fn slow_start_grows_by_one_per_answer_until_the_first_decrease() {
        let mut limit = ConcurrencyLimit::new(24, true);
        assert_eq!(limit.get(), INITIAL_LIMIT);
        for _ in 0..10 {
            limit.answered();
        }
        assert_eq!(limit.get(), 14);
        let call = limit.started();
        limit.timed_out(call);
        assert_eq!(limit.get(), 7);
        for _ in 0..7 {
            limit.answered();
        }
        assert_eq!(limit.get(), 8, "then one per window of answered calls");
        assert_eq!(ConcurrencyLimit::new(2, true).get(), 2, "never above max");
    }
}
