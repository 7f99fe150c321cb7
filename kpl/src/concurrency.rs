//! How many PutRecords calls may be in flight: `max_connections`, lowered while the
//! endpoint times out.
//!
//! A slow endpoint answers many concurrent calls even more slowly; calls then pass the
//! request timeout, are retried (and, having often succeeded, duplicated) and their
//! records expire. Halving the limit on each timed-out call and growing it back by one
//! per window of successful calls (additive increase, multiplicative decrease) keeps
//! the producer just under what the endpoint sustains.

/// The current limit on calls in flight.
#[derive(Debug)]
pub(crate) struct ConcurrencyLimit {
    max: usize,
    limit: usize,
    successes: usize,
}

impl ConcurrencyLimit {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        ConcurrencyLimit {
            max,
            limit: max,
            successes: 0,
        }
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
        self.successes += 1;
        if self.successes >= self.limit {
            self.limit += 1;
            self.successes = 0;
        }
    }

    /// A call timed out.
    pub fn timed_out(&mut self) {
        self.limit = (self.limit / 2).max(1);
        self.successes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_timeouts_and_grows_back_one_per_window() {
        let mut limit = ConcurrencyLimit::new(24);
        assert_eq!(limit.get(), 24);
        limit.timed_out();
        assert_eq!(limit.get(), 12);
        for _ in 0..10 {
            limit.timed_out();
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
}
