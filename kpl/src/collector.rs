//! The collector: groups Kinesis records into PutRecords requests.

use tokio::time::Instant;

use crate::pending::Outgoing;

/// Most records PutRecords accepts in one request.
pub const PUT_RECORDS_MAX_COUNT: usize = 500;
/// Most bytes (data plus partition keys) PutRecords accepts in one request.
pub const PUT_RECORDS_MAX_SIZE: usize = 5 * 1024 * 1024;

/// Fills one PutRecords request at a time, up to `max_count` records and `max_size`
/// bytes; a request is ready when full or when its earliest record is due.
#[derive(Debug)]
pub(crate) struct Collector {
    max_count: usize,
    max_size: usize,
    batch: Vec<Outgoing>,
    size: usize,
    deadline: Option<Instant>,
}

impl Collector {
    pub fn new(max_count: usize, max_size: usize) -> Self {
        Collector {
            max_count: max_count.clamp(1, PUT_RECORDS_MAX_COUNT),
            max_size: max_size.clamp(1, PUT_RECORDS_MAX_SIZE),
            batch: Vec::new(),
            size: 0,
            deadline: None,
        }
    }

    /// Adds a record; requests that become full go to `ready`.
    pub fn push(&mut self, record: Outgoing, ready: &mut Vec<Vec<Outgoing>>) {
        let size = record.size();
        if !self.batch.is_empty() && self.size + size > self.max_size {
            ready.push(self.take());
        }
        self.deadline = Some(
            self.deadline
                .map_or(record.deadline, |d| d.min(record.deadline)),
        );
        self.size += size;
        self.batch.push(record);
        if self.batch.len() >= self.max_count || self.size >= self.max_size {
            ready.push(self.take());
        }
    }

    fn take(&mut self) -> Vec<Outgoing> {
        self.size = 0;
        self.deadline = None;
        std::mem::take(&mut self.batch)
    }

    /// Hands over the pending request if it is due by `now`, or in any case when `all`.
    pub fn flush(&mut self, now: Instant, all: bool, ready: &mut Vec<Vec<Outgoing>>) {
        if self.deadline.is_some_and(|d| all || d <= now) {
            ready.push(self.take());
        }
    }

    /// When the pending request is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Records in the pending request.
    pub fn len(&self) -> usize {
        self.batch.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::aggregation::EncodedRecord;

    fn outgoing(len: usize, deadline: Instant) -> Outgoing {
        Outgoing {
            shard: Some(Arc::from("s")),
            encoded: EncodedRecord {
                partition_key: "k".into(),
                explicit_hash_key: None,
                data: Bytes::from(vec![0; len]),
                user_records: 1,
            },
            records: Vec::new(),
            deadline,
            failures: 0,
        }
    }

    #[tokio::test]
    async fn requests_hold_at_most_500_records_and_5_mib() {
        let now = Instant::now();
        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE);
        let mut ready = Vec::new();
        for _ in 0..1_200 {
            collector.push(outgoing(10, now), &mut ready);
        }
        assert_eq!(ready.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500]);
        assert_eq!(collector.len(), 200);

        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE);
        let mut ready = Vec::new();
        for _ in 0..12 {
            collector.push(outgoing(1_000_000, now), &mut ready);
        }
        collector.flush(now, true, &mut ready);
        for request in &ready {
            let size: usize = request.iter().map(Outgoing::size).sum();
            assert!(size <= PUT_RECORDS_MAX_SIZE, "{size}");
        }
        assert_eq!(ready.iter().map(Vec::len).sum::<usize>(), 12);
    }

    #[tokio::test]
    async fn the_earliest_deadline_decides() {
        let now = Instant::now();
        let mut collector = Collector::new(500, PUT_RECORDS_MAX_SIZE);
        let mut ready = Vec::new();
        collector.push(outgoing(1, now + Duration::from_millis(50)), &mut ready);
        collector.push(outgoing(1, now + Duration::from_millis(10)), &mut ready);
        assert_eq!(
            collector.next_deadline(),
            Some(now + Duration::from_millis(10))
        );
        collector.flush(now, false, &mut ready);
        assert!(ready.is_empty());
        collector.flush(now + Duration::from_millis(10), false, &mut ready);
        assert_eq!(ready.len(), 1);
        assert_eq!(collector.next_deadline(), None);
    }
}
