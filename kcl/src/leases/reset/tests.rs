use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::leases::MemoryLeaseStore;

fn secs(s: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s)
}

#[test]
fn targets_parse() {
    assert_eq!(
        ResetTarget::parse("trim-horizon").ok(),
        Some(ResetTarget::TrimHorizon)
    );
    assert_eq!(
        ResetTarget::parse("TRIM_HORIZON").ok(),
        Some(ResetTarget::TrimHorizon)
    );
    assert_eq!(ResetTarget::parse("latest").ok(), Some(ResetTarget::Latest));
    let at = |s: &str| match ResetTarget::parse(s) {
        Ok(ResetTarget::AtTimestamp(t)) => Some(t),
        _ => None,
    };
    let utc = secs(1_795_507_200.0); // 2026-11-24T08:00:00Z
    assert_eq!(at("at-timestamp=2026-11-24T08:00:00Z"), Some(utc));
    assert_eq!(at("AT_TIMESTAMP=2026-11-24T08:00:00Z"), Some(utc));
    assert_eq!(at("at-timestamp=2026-11-24T09:00:00+01:00"), Some(utc));
    assert_eq!(at("at-timestamp=2026-11-24T03:30:00-04:30"), Some(utc));
    assert_eq!(
        at("at-timestamp=2026-11-24T08:00:00.250Z"),
        Some(utc + Duration::from_millis(250))
    );
    assert_eq!(at("at-timestamp=1795507200"), Some(utc));
    assert_eq!(
        at("at-timestamp=1795507200.25"),
        Some(utc + Duration::from_millis(250))
    );
    assert_eq!(
        at("at-timestamp=1795507200.000000001"),
        Some(utc + Duration::from_nanos(1))
    );
    assert_eq!(at("at-timestamp=0"), Some(SystemTime::UNIX_EPOCH));
    for bad in [
        "",
        "at-timestamp",
        "at-timestamp=",
        "at-timestamp=yesterday",
        "at-timestamp=-5",
        "at-timestamp=1.",
        "at-timestamp=1.2.3",
        "at-timestamp=1.0000000001",
        "at-timestamp=2026-11-24",
        "at-timestamp=2026-11-24 08:00:00Z",
        "at-timestamp=2026-13-24T08:00:00Z",
        "latest=1",
        "sequence=49590338271490256608559692538361571095921575989136588898",
        "earliest",
    ] {
        assert!(ResetTarget::parse(bad).is_err(), "{bad:?} parsed");
    }
    let error = ResetTarget::parse("at-timestamp=yesterday").unwrap_err();
    assert!(error.to_string().contains("RFC 3339"), "{error}");
}

#[test]
fn targets_display_and_parse_back() {
    for target in [
        ResetTarget::TrimHorizon,
        ResetTarget::Latest,
        ResetTarget::AtTimestamp(secs(1_795_507_200.0)),
        ResetTarget::AtTimestamp(secs(1_795_507_200.125)),
    ] {
        assert_eq!(ResetTarget::parse(&target.to_string()).ok(), Some(target));
    }
    assert_eq!(
        ResetTarget::AtTimestamp(secs(1_795_507_200.0)).to_string(),
        "at-timestamp=2026-11-24T08:00:00Z"
    );
}

fn lease(key: &str, checkpoint: ExtendedSequenceNumber) -> Lease {
    Lease::new(key, checkpoint)
}

fn seq(s: &str, sub: u64) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::new(s, sub)
}

#[test]
fn what_is_written_per_lease() {
    use ResetReason as Why;
    let at = ResetTarget::AtTimestamp(secs(100.0));
    let running = lease("s", seq("50", 0));
    let finished = lease("s", ExtendedSequenceNumber::shard_end());
    let records_from = |previous| ShardAtTime::RecordsFrom { previous };
    let none_from = |last, closed| ShardAtTime::NoRecordsFrom { last, closed };
    let case = |lease: &Lease, shard: ShardAtTime| {
        let d = decide(&at, lease, Some(&shard), false);
        (d.checkpoint, d.reason)
    };
    // The record before the first at the time, finished or not, behind or ahead.
    for l in [&running, &finished, &lease("s", seq("10", 0))] {
        assert_eq!(
            case(l, records_from(Some(seq("40", 3)))),
            (Some(seq("40", 3)), Why::BeforeTime)
        );
        assert_eq!(
            case(l, records_from(None)),
            (
                Some(ExtendedSequenceNumber::trim_horizon()),
                Why::OldestAtTime
            )
        );
    }
    // Nothing at or after the time.
    assert_eq!(
        case(&running, none_from(Some(seq("60", 0)), false)),
        (Some(seq("60", 0)), Why::NewestBeforeTime)
    );
    assert_eq!(
        case(&running, none_from(None, false)),
        (Some(ExtendedSequenceNumber::trim_horizon()), Why::Empty)
    );
    assert_eq!(
        case(&running, none_from(Some(seq("60", 0)), true)),
        (Some(seq("60", 0)), Why::ClosedBeforeTime)
    );
    assert_eq!(
        case(&finished, none_from(Some(seq("60", 0)), true)),
        (None, Why::FinishedBeforeTime)
    );
    assert_eq!(
        case(&finished, none_from(None, true)),
        (None, Why::FinishedBeforeTime)
    );
    assert_eq!(case(&running, ShardAtTime::Gone), (None, Why::Gone));
    assert_eq!(decide(&at, &running, None, false).checkpoint, None);
    // Already there: nothing written, unless a pending checkpoint is to be cleared.
    assert_eq!(
        case(&running, records_from(Some(seq("50", 0)))),
        (None, Why::BeforeTime)
    );
    let mut pending = running.clone();
    pending.pending_checkpoint = Some(seq("55", 0));
    assert_eq!(
        case(&pending, records_from(Some(seq("50", 0)))),
        (Some(seq("50", 0)), Why::BeforeTime)
    );
    // A parent read again: a child that would not wait for it starts over.
    let d = decide(&at, &running, Some(&records_from(Some(seq("40", 0)))), true);
    assert_eq!(
        (d.checkpoint, d.reason),
        (
            Some(ExtendedSequenceNumber::trim_horizon()),
            Why::ParentReplays
        )
    );
    let d = decide(&at, &running, Some(&records_from(None)), true);
    assert_eq!(d.reason, Why::OldestAtTime);

    // trim-horizon: everything, finished leases too; latest: unfinished leases.
    let d = decide(&ResetTarget::TrimHorizon, &finished, None, false);
    assert_eq!(d.checkpoint, Some(ExtendedSequenceNumber::trim_horizon()));
    let d = decide(&ResetTarget::Latest, &finished, None, false);
    assert_eq!((d.checkpoint, d.reason), (None, Why::Finished));
    let d = decide(&ResetTarget::Latest, &running, None, false);
    assert_eq!(
        d.checkpoint,
        Some(ExtendedSequenceNumber::sentinel(SequencePosition::Latest))
    );
    let d = decide(
        &ResetTarget::TrimHorizon,
        &lease("s", ExtendedSequenceNumber::trim_horizon()),
        None,
        false,
    );
    assert_eq!(d.checkpoint, None, "already there");
}

fn child(key: &str, checkpoint: ExtendedSequenceNumber, parents: &[&str]) -> Lease {
    let mut lease = lease(key, checkpoint);
    lease.parent_shard_ids = parents.iter().map(|p| (*p).to_owned()).collect();
    lease
}

#[test]
fn parents_are_planned_first_and_their_replay_holds_children_back() {
    let at = ResetTarget::AtTimestamp(secs(100.0));
    // a and b merged into c; c split into d and e. Listed children first.
    let leases: Vec<(String, Lease)> = [
        child("e", seq("900", 0), &["c"]),
        child("d", seq("800", 0), &["c"]),
        child("c", ExtendedSequenceNumber::shard_end(), &["a", "b"]),
        child("b", ExtendedSequenceNumber::shard_end(), &[]),
        child("a", ExtendedSequenceNumber::shard_end(), &[]),
    ]
    .into_iter()
    .map(|l| (l.lease_key.clone(), l))
    .collect();
    let positions: HashMap<String, ShardAtTime> = [
        // a closed before the time; b has records after it; c too.
        (
            "a",
            ShardAtTime::NoRecordsFrom {
                last: Some(seq("10", 0)),
                closed: true,
            },
        ),
        (
            "b",
            ShardAtTime::RecordsFrom {
                previous: Some(seq("20", 0)),
            },
        ),
        ("c", ShardAtTime::RecordsFrom { previous: None }),
        // d (out of order arrival times) has records before the time; e none after it.
        (
            "d",
            ShardAtTime::RecordsFrom {
                previous: Some(seq("700", 0)),
            },
        ),
        (
            "e",
            ShardAtTime::NoRecordsFrom {
                last: Some(seq("950", 0)),
                closed: false,
            },
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let plan = plan_leases(at, leases, &positions, 3);
    let order: Vec<&str> = plan.leases().iter().map(|p| p.shard_id()).collect();
    assert_eq!(order, ["a", "b", "c", "d", "e"]);
    let written: Vec<(Option<ExtendedSequenceNumber>, ResetReason)> = plan
        .leases()
        .iter()
        .map(|p| (p.new_checkpoint().cloned(), p.reason()))
        .collect();
    let trim = ExtendedSequenceNumber::trim_horizon;
    assert_eq!(
        written,
        [
            (None, ResetReason::FinishedBeforeTime),
            (Some(seq("20", 0)), ResetReason::BeforeTime),
            (Some(trim()), ResetReason::OldestAtTime),
            (Some(trim()), ResetReason::ParentReplays),
            (Some(trim()), ResetReason::ParentReplays),
        ]
    );
}

/// A shard in memory: records (sequence number, arrival in seconds, last sub-sequence
/// number), read two per page; counts the calls.
struct FakeShard {
    records: Vec<(u64, f64, u64)>,
    closed: bool,
    iterators: AtomicUsize,
    pages: AtomicUsize,
}

impl FakeShard {
    fn new(records: &[(u64, f64, u64)], closed: bool) -> Self {
        FakeShard {
            records: records.to_vec(),
            closed,
            iterators: AtomicUsize::new(0),
            pages: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl ShardReads for FakeShard {
    async fn iterator(&self, start: Start) -> Result<String, ResetError> {
        self.iterators.fetch_add(1, Ordering::Relaxed);
        let index = match start {
            Start::TrimHorizon => 0,
            Start::AtTimestamp(at) => self
                .records
                .iter()
                .position(|r| secs(r.1) >= at)
                .unwrap_or(self.records.len()),
        };
        Ok(index.to_string())
    }

    async fn page(&self, iterator: &str) -> Result<Page, ResetError> {
        self.pages.fetch_add(1, Ordering::Relaxed);
        let from: usize = iterator.parse().unwrap();
        let to = (from + 2).min(self.records.len());
        let records = self.records[from..to]
            .iter()
            .map(|r| Seen {
                sequence_number: r.0.to_string(),
                users: Users::Last(r.2),
                arrival: Some(secs(r.1)),
            })
            .collect();
        let at_end = to == self.records.len();
        Ok(Page {
            records,
            next: (!(at_end && self.closed)).then(|| to.to_string()),
            millis_behind_latest: Some(if at_end { 0 } else { 1_000 }),
        })
    }
}

async fn at(shard: &FakeShard, time: f64) -> ShardAtTime {
    shard_at(shard, secs(time), shard.closed).await.unwrap()
}

#[tokio::test]
async fn the_record_before_the_time_is_found() {
    let records = [
        (10, 100.0, 0),
        (20, 100.5, 4), // an aggregate of five user records
        (30, 101.0, 0),
        (40, 101.0, 0),
        (50, 103.0, 0),
        (60, 104.0, 0),
        (70, 104.2, 0),
    ];
    let shard = FakeShard::new(&records, false);
    let before = |s: &str, sub| ShardAtTime::RecordsFrom {
        previous: Some(seq(s, sub)),
    };
    assert_eq!(at(&shard, 101.0).await, before("20", 4));
    assert_eq!(at(&shard, 100.7).await, before("20", 4));
    assert_eq!(at(&shard, 102.0).await, before("40", 0));
    assert_eq!(at(&shard, 104.1).await, before("60", 0));
    assert_eq!(at(&shard, 104.2).await, before("60", 0));
    assert_eq!(at(&shard, 100.5).await, before("10", 0));
    // At or before the oldest record: from the trim horizon.
    assert_eq!(
        at(&shard, 100.0).await,
        ShardAtTime::RecordsFrom { previous: None }
    );
    assert_eq!(
        at(&shard, 50.0).await,
        ShardAtTime::RecordsFrom { previous: None }
    );
    // After the newest: the newest, open shard.
    assert_eq!(
        at(&shard, 200.0).await,
        ShardAtTime::NoRecordsFrom {
            last: Some(seq("70", 0)),
            closed: false
        }
    );
    let closed = FakeShard::new(&records, true);
    assert_eq!(
        at(&closed, 200.0).await,
        ShardAtTime::NoRecordsFrom {
            last: Some(seq("70", 0)),
            closed: true
        }
    );
    assert_eq!(at(&closed, 103.5).await, before("50", 0));
    let empty = FakeShard::new(&[], false);
    assert_eq!(
        at(&empty, 100.0).await,
        ShardAtTime::NoRecordsFrom {
            last: None,
            closed: false
        }
    );
}

#[tokio::test]
async fn a_long_gap_costs_a_few_reads_and_little_data() {
    // Busy an hour before the time, quiet since, busy after.
    let mut records: Vec<(u64, f64, u64)> = (0..1_000)
        .map(|i| (1_000 + i, 10_000.0 + f64::from(i as u32) * 0.001, 0))
        .collect();
    records.push((5_000, 13_600.0, 0));
    records.extend((0..100).map(|i| (6_000 + i, 14_000.0 + f64::from(i as u32), 0)));
    let shard = FakeShard::new(&records, false);
    assert_eq!(
        at(&shard, 13_700.0).await,
        ShardAtTime::RecordsFrom {
            previous: Some(seq("5000", 0))
        }
    );
    // 1 s, 2 s, ... 128 s back: eight looks, each a page or two.
    let iterators = shard.iterators.load(Ordering::Relaxed);
    let pages = shard.pages.load(Ordering::Relaxed);
    assert!(iterators <= 12, "{iterators} iterators");
    assert!(pages <= 16, "{pages} pages");
    // Past the busy part: the doubling stops at the oldest record's time at the latest,
    // and the trim horizon is read up to the record.
    let shard = FakeShard::new(&records[..1_000], false);
    assert_eq!(
        at(&shard, 10_000.000_5).await,
        ShardAtTime::RecordsFrom {
            previous: Some(seq("1000", 0))
        }
    );
}

#[tokio::test]
async fn a_plan_is_applied_parents_first_and_conditional_writes_are_retried() {
    let store = Arc::new(MemoryLeaseStore::new());
    let mut parent = child("p", ExtendedSequenceNumber::shard_end(), &[]);
    parent.lease_owner = Some("w1".into());
    let mut kid = child("k", seq("500", 0), &["p"]);
    kid.lease_owner = Some("w2".into());
    for lease in [&kid, &parent] {
        assert!(store.create_lease_if_absent(lease).await.unwrap());
    }
    let positions: HashMap<String, ShardAtTime> = [
        (
            "p".to_owned(),
            ShardAtTime::RecordsFrom {
                previous: Some(seq("90", 0)),
            },
        ),
        ("k".to_owned(), ShardAtTime::RecordsFrom { previous: None }),
    ]
    .into_iter()
    .collect();
    let leases = store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.lease_key.clone(), l))
        .collect();
    let plan = plan_leases(ResetTarget::AtTimestamp(secs(100.0)), leases, &positions, 5);
    // The child's holder renews after the plan was made: the write is retried on the lease
    // as read again.
    let current = store.get_lease("k").await.unwrap().unwrap();
    store.renew_lease(&current).await.unwrap();
    let outcomes = plan.apply(store.as_ref()).await;
    let keys: Vec<&str> = outcomes.iter().map(|o| o.lease_key.as_str()).collect();
    assert_eq!(keys, ["p", "k"]);
    for outcome in &outcomes {
        assert!(outcome.result.is_ok(), "{outcome:?}");
    }
    assert_eq!(outcomes[1].owner.as_deref(), Some("w2"));
    let p = store.get_lease("p").await.unwrap().unwrap();
    assert_eq!(p.checkpoint, seq("90", 0));
    assert_eq!(p.lease_owner.as_deref(), Some("w1"), "owner kept");
    let k = store.get_lease("k").await.unwrap().unwrap();
    assert_eq!(k.checkpoint, ExtendedSequenceNumber::trim_horizon());
    // Applied again: nothing left to write.
    let again = plan.apply(store.as_ref()).await;
    assert!(
        again.iter().all(|o| matches!(o.result, Ok(None))),
        "{again:?}"
    );
}

/// A store whose reads always show a lease older than the table's: every write's
/// condition fails, as when workers renew faster than the reset writes.
struct AlwaysChanged(MemoryLeaseStore);

#[async_trait]
impl LeaseStore for AlwaysChanged {
    async fn create_table_if_missing(&self) -> Result<(), LeaseStoreError> {
        self.0.create_table_if_missing().await
    }
    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.0.list_leases().await
    }
    async fn get_lease(&self, key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        let mut lease = self.0.get_lease(key).await?;
        if let Some(lease) = &mut lease {
            lease.lease_counter += 1_000;
        }
        Ok(lease)
    }
    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        self.0.create_lease_if_absent(lease).await
    }
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.0.renew_lease(lease).await
    }
    async fn take_lease(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseStoreError> {
        self.0.take_lease(lease, owner).await
    }
    async fn evict_lease(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.0.evict_lease(lease).await
    }
    async fn update_checkpoint(
        &self,
        lease: &Lease,
        update: &CheckpointUpdate,
    ) -> Result<Lease, LeaseStoreError> {
        self.0.update_checkpoint(lease, update).await
    }
    async fn request_handoff(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.0.request_handoff(lease, to).await
    }
    async fn hand_over(&self, lease: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.0.hand_over(lease, to).await
    }
    async fn accept_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.0.accept_handoff(lease).await
    }
    async fn cancel_handoff(&self, lease: &Lease) -> Result<Lease, LeaseStoreError> {
        self.0.cancel_handoff(lease).await
    }
    async fn update_child_shards(
        &self,
        lease: &Lease,
        child_shard_ids: &std::collections::BTreeSet<String>,
    ) -> Result<Lease, LeaseStoreError> {
        self.0.update_child_shards(lease, child_shard_ids).await
    }
    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError> {
        self.0.delete_lease(lease).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_keeps_changing_is_reported_not_skipped() {
    let store = AlwaysChanged(MemoryLeaseStore::new());
    store
        .create_lease_if_absent(&lease("s", seq("5", 0)))
        .await
        .unwrap();
    let outcomes = LeaseReset::new(&store, ResetTarget::TrimHorizon)
        .attempts(3)
        .run()
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    assert!(
        matches!(
            &outcomes[0].result,
            Err(ResetError::Store(LeaseStoreError::Contended(key))) if key == "s"
        ),
        "{outcomes:?}"
    );
    assert_eq!(
        store.0.get_lease("s").await.unwrap().unwrap().checkpoint,
        seq("5", 0)
    );
    // A reset to a time needs the stream; a time in the future is refused.
    let at = ResetTarget::AtTimestamp(SystemTime::now() - Duration::from_secs(1));
    assert!(matches!(
        LeaseReset::new(&store, at).plan().await,
        Err(ResetError::StreamRequired)
    ));
    let future = ResetTarget::AtTimestamp(SystemTime::now() + Duration::from_secs(60));
    assert!(matches!(
        LeaseReset::new(&store, future).plan().await,
        Err(ResetError::FutureTimestamp(_))
    ));
}

#[test]
fn multi_stream_leases_are_scoped_to_their_stream() {
    let ms = |stream: &str, shard: &str, parents: &[&str]| {
        let identifier = format!("123456789012:{stream}:1700000000");
        let mut lease = child(&format!("{identifier}:{shard}"), seq("5", 0), parents);
        lease.multi_stream = Some((identifier, shard.to_owned()));
        lease
    };
    // In each stream, shard 1 is the child of shard 0; the other stream's shard 0 does
    // not count as a parent.
    let all = [
        ms("orders", "shardId-1", &["shardId-0"]),
        ms("clicks", "shardId-1", &["shardId-0"]),
        ms("orders", "shardId-0", &[]),
        ms("clicks", "shardId-0", &[]),
    ];
    let orders = StreamRef::new("arn:aws:kinesis:eu-west-1:123456789012:stream/orders");
    let selected: Vec<(String, Lease)> = all
        .iter()
        .filter_map(|l| Some((shard_of(l, Some(&orders))?, l.clone())))
        .collect();
    assert_eq!(selected.len(), 2);
    let every: Vec<(String, Lease)> = all
        .iter()
        .filter_map(|l| Some((shard_of(l, None)?, l.clone())))
        .collect();
    let plan = plan_leases(ResetTarget::TrimHorizon, every, &HashMap::new(), 3);
    let order: Vec<&str> = plan.leases().iter().map(|p| p.lease_key()).collect();
    assert_eq!(
        order,
        [
            "123456789012:clicks:1700000000:shardId-0",
            "123456789012:orders:1700000000:shardId-0",
            "123456789012:clicks:1700000000:shardId-1",
            "123456789012:orders:1700000000:shardId-1",
        ]
    );
    assert!(plan
        .leases()
        .iter()
        .all(|p| p.shard_id().starts_with("shardId-")));
}

#[tokio::test(start_paused = true)]
async fn a_write_whose_answer_is_lost_or_throttled_is_resolved() {
    use crate::test_util::{Fault, FaultRule, FaultyLeaseStore, Operation};
    for fault in [Fault::LoseAnswer, Fault::Throttle] {
        let memory = Arc::new(MemoryLeaseStore::new());
        let mut held = lease("s", seq("5", 0));
        held.lease_owner = Some("w".into());
        memory.create_lease_if_absent(&held).await.unwrap();
        let store = FaultyLeaseStore::new(memory.clone());
        store.inject(FaultRule::new([Operation::UpdateCheckpoint], fault).times(1));
        let outcomes = LeaseReset::new(&store, ResetTarget::TrimHorizon)
            .run()
            .await
            .unwrap();
        assert!(
            matches!(&outcomes[0].result, Ok(Some(c)) if *c == ExtendedSequenceNumber::trim_horizon()),
            "{fault:?}: {outcomes:?}"
        );
        assert_eq!(outcomes[0].previous, seq("5", 0), "{fault:?}");
        assert_eq!(outcomes[0].owner.as_deref(), Some("w"), "{fault:?}");
        let lease = memory.get_lease("s").await.unwrap().unwrap();
        assert_eq!(lease.checkpoint, ExtendedSequenceNumber::trim_horizon());
        assert_eq!(lease.lease_owner.as_deref(), Some("w"), "owner kept");
    }
}
