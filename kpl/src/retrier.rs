//! The retrier: what a failed attempt means, and when a record is tried again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;
use tokio::time::Instant;

use kinesis_errors::ErrorKind;

use crate::pending::Outgoing;
use crate::receipt::AttemptError;

/// Exponential backoff with full jitter: the n-th retry waits a uniformly random time
/// in `0..=min(max, min * 2^n)`. The exponential schedule comes from `backon`; full
/// jitter (rather than `backon`'s additive jitter) spreads retries of records that
/// failed together, which is what throttling needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
        }
    }

    /// Upper bound of the wait before retry number `failures` (1 = first retry).
    pub fn ceiling(&self, failures: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(failures.saturating_sub(1) as usize)
            .unwrap_or(self.max)
    }

    /// The wait before retry number `failures`.
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.as_secs_f64()))
    }
}

/// Records waiting out their backoff, by the time they may be retried.
#[derive(Debug, Default)]
pub(crate) struct RetryQueue {
    waiting: BTreeMap<(Instant, u64), Outgoing>,
    next_seq: u64,
}

impl RetryQueue {
    pub fn push(&mut self, at: Instant, record: Outgoing) {
        self.next_seq += 1;
        self.waiting.insert((at, self.next_seq), record);
    }

    /// The records whose backoff ended by `now`.
    pub fn pop_ready(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
    }

    pub fn next_ready(&self) -> Option<Instant> {
        self.waiting.keys().next().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// The attempt error for a PutRecords call that failed as a whole.
pub(crate) fn request_error<E, R>(error: &SdkError<E, R>) -> Arc<AttemptError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let code = match error {
        SdkError::TimeoutError(_) => "Timeout".to_owned(),
        SdkError::DispatchFailure(_) => "Dispatch".to_owned(),
        SdkError::ConstructionFailure(_) => "Construction".to_owned(),
        SdkError::ResponseError(_) => "ResponseError".to_owned(),
        SdkError::ServiceError(e) => e.err().code().unwrap_or("ServiceError").to_owned(),
        _ => "Unknown".to_owned(),
    };
    // One rule for the kind, the consumer's: by the code, else by how the call failed.
    AttemptError::with_kind(
        code,
        kinesis_errors::sdk_error_message(error),
        ErrorKind::of_sdk_error(error),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let close = |a: Duration, millis: u64| {
            a.abs_diff(Duration::from_millis(millis)) < Duration::from_micros(10)
        };
        assert!(close(backoff.ceiling(1), 100));
        assert!(close(backoff.ceiling(2), 200));
        assert!(close(backoff.ceiling(4), 800));
        assert!(close(backoff.ceiling(10), 2_000));
        assert!(close(backoff.ceiling(1_000), 2_000));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_micros(400_010)));
        assert!(
            delays.iter().any(|d| *d < Duration::from_millis(100)),
            "full jitter reaches low"
        );
        assert!(
            delays.iter().any(|d| *d > Duration::from_millis(300)),
            "and high"
        );
    }

    #[tokio::test]
    async fn retry_queue_releases_in_time_order() {
        use crate::aggregation::EncodedRecord;
        let now = Instant::now();
        let record = |n: usize| {
            Outgoing::new(
                None,
                EncodedRecord::new(n.to_string(), None, bytes::Bytes::new(), 1),
                Vec::new(),
                now,
            )
        };
        let mut queue = RetryQueue::default();
        queue.push(now + Duration::from_millis(20), record(2));
        queue.push(now + Duration::from_millis(10), record(1));
        queue.push(now + Duration::from_millis(10), record(3));
        assert_eq!(queue.next_ready(), Some(now + Duration::from_millis(10)));
        let mut out = Vec::new();
        queue.pop_ready(now + Duration::from_millis(15), &mut out);
        let keys: Vec<_> = out
            .iter()
            .map(|o| o.encoded.partition_key.clone())
            .collect();
        assert_eq!(keys, ["1", "3"]);
        assert_eq!(queue.len(), 1);
    }
}
