//! The lease algorithm with many simulated workers on the in-memory store, on tokio's
//! paused clock: deterministic and fast.

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::lease::ExtendedSequenceNumber;
use crate::leases::memory::MemoryLeaseStore;
use crate::leases::store::CheckpointUpdate;

const FAILOVER: Duration = Duration::from_secs(10);
/// Renewal period (failover / 3) and also the taker period in these simulations.
const TICK: Duration = Duration::from_millis(3_333);

struct Sim {
    store: Arc<MemoryLeaseStore>,
    workers: Vec<Option<LeaseCoordinator>>,
    moves: usize,
    /// Graceful handoff timeout of the workers added next.
    graceful: Option<Duration>,
}

impl Sim {
    async fn new(leases: usize, workers: usize) -> Sim {
        let store = Arc::new(MemoryLeaseStore::new());
        for i in 0..leases {
            let lease = Lease::new(
                format!("shard-{i:03}"),
                ExtendedSequenceNumber::trim_horizon(),
            );
            assert!(store.create_lease_if_absent(&lease).await.unwrap());
        }
        let mut sim = Sim {
            store,
            workers: Vec::new(),
            moves: 0,
            graceful: Some(Duration::from_secs(30)),
        };
        for _ in 0..workers {
            sim.add_worker(usize::MAX);
        }
        sim
    }

    fn add_worker(&mut self, max_leases: usize) {
        let mut config = LeaseCoordinatorConfig::new(format!("worker-{}", self.workers.len()));
        config.failover_time = FAILOVER;
        config.max_leases_per_worker = max_leases;
        config.graceful_handoff_timeout = self.graceful;
        let store: Arc<dyn LeaseStore> = self.store.clone();
        self.workers
            .push(Some(LeaseCoordinator::new(store, config)));
    }

    /// One period: every live worker renews, the invariants are checked, every live worker
    /// hands over the leases asked of it (as if its processor finished at once), takes, and
    /// looks for leases handed to it; the clock moves on.
    async fn round(&mut self) {
        self.round_checked(true).await;
    }

    async fn round_checked(&mut self, strict: bool) {
        for worker in self.workers.iter().flatten() {
            worker.renew_leases().await;
        }
        self.check_one_holder(strict).await;
        for worker in self.workers.iter().flatten() {
            for held in worker.held_leases() {
                if held.is_handoff_requested() && !held.is_lost() {
                    let _ = worker.release_lease(held.key()).await;
                }
            }
        }
        for worker in self.workers.iter().flatten() {
            if let Ok(round) = worker.take_leases().await {
                self.moves += round.stolen + round.handoffs_requested.len();
            }
        }
        for worker in self.workers.iter().flatten() {
            worker.discover().await;
        }
        tokio::time::advance(TICK).await;
    }

    /// Right after renewals, no lease is held by two workers, and a worker that holds a
    /// lease is its owner in the table. While the store fails requests a worker may keep a
    /// stale copy of a lease that was taken from it (its renewal failed for another
    /// reason than the condition); then only the copy matching the table can write, so
    /// `strict` is false: at most one holder's copy matches the table.
    async fn check_one_holder(&self, strict: bool) {
        let table: HashMap<String, Lease> = self
            .store
            .snapshot()
            .into_iter()
            .map(|l| (l.lease_key.clone(), l))
            .collect();
        let mut holders: HashMap<String, Vec<(String, Lease)>> = HashMap::new();
        let mut valid_holders: HashMap<String, Vec<String>> = HashMap::new();
        for worker in self.workers.iter().flatten() {
            for held in worker.held_leases() {
                if !held.is_lost() && Instant::now() >= held.not_before() {
                    valid_holders
                        .entry(held.key().to_owned())
                        .or_default()
                        .push(worker.config().worker_id.clone());
                }
                holders
                    .entry(held.key().to_owned())
                    .or_default()
                    .push((worker.config().worker_id.clone(), held.snapshot().await));
            }
        }
        for (key, copies) in holders {
            let current = &table[&key];
            let writable: Vec<&String> = copies
                .iter()
                .filter(|(me, copy)| {
                    copy.lease_counter == current.lease_counter
                        && current.actual_owner() == Some(me.as_str())
                })
                .map(|(me, _)| me)
                .collect();
            // At this instant at most one worker may act on the lease: every other holder's
            // local deadline has passed or its start time has not come. (Unlike "one owner
            // in the table", which holds by construction, this fails when a stale holder
            // keeps processing, or a thief starts before its victim stopped.)
            let valid: Vec<&String> = valid_holders.get(&key).into_iter().flatten().collect();
            assert!(valid.len() <= 1, "{key} valid at once for {valid:?}");
            if strict {
                assert_eq!(copies.len(), 1, "{key} held by {copies:?}");
                assert_eq!(
                    writable.len(),
                    1,
                    "{key}: stale copy {copies:?}, table {current:?}"
                );
            }
        }
    }

    /// The first `n` workers shut down gracefully at the same moment, as the scheduler does:
    /// each offers its leases to the others; the others look (and accept); the stopping
    /// workers' processors finish and each lease is handed over or released; the others
    /// look again (and take what was handed to them).
    async fn stop_gracefully(&mut self, n: usize) {
        let stopping: Vec<LeaseCoordinator> = self.workers[..n]
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for worker in &stopping {
            worker.begin_shutdown().await;
        }
        for worker in self.workers.iter().flatten() {
            worker.discover().await;
        }
        for worker in &stopping {
            for held in worker.held_leases() {
                let _ = worker.release_lease(held.key()).await;
            }
        }
        for worker in self.workers.iter().flatten() {
            worker.discover().await;
        }
    }

    /// Every held lease reads `kbps(key)` KiB/s over the next round.
    fn deliver(&self, kbps: impl Fn(&str) -> f64) {
        for worker in self.workers.iter().flatten() {
            for held in worker.held_leases() {
                let bytes = kbps(held.key()) * 1024.0 * TICK.as_secs_f64();
                held.record_delivered(bytes as u64);
            }
        }
    }

    fn counts(&self) -> BTreeMap<String, usize> {
        self.workers
            .iter()
            .flatten()
            .map(|w| (w.config().worker_id.clone(), w.held_leases().len()))
            .collect()
    }

    fn held_total(&self) -> usize {
        self.counts().values().sum()
    }

    fn spread(&self) -> usize {
        let counts = self.counts();
        counts.values().max().unwrap() - counts.values().min().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn leases_spread_evenly_with_one_holder_each() {
    let mut sim = Sim::new(10, 3).await;
    for _ in 0..40 {
        sim.round().await;
    }
    assert_eq!(sim.held_total(), 10);
    assert!(sim.spread() <= 1, "uneven: {:?}", sim.counts());
    // Stable: more rounds move nothing.
    let moves = sim.moves;
    for _ in 0..20 {
        sim.round().await;
    }
    assert_eq!(sim.moves, moves, "leases kept moving: {:?}", sim.counts());
}

/// `kinesis leases move`: an operator writes another owner into the table. The holder
/// drops the lease at its next renewal; the named worker takes it at its next round, not
/// another worker, and acts on it only once the previous holder's deadline has passed (the
/// round's invariant check fails if two workers may act at once).
#[tokio::test(start_paused = true)]
async fn a_lease_moved_to_a_named_worker_is_taken_by_it() {
    // 5 leases on 3 workers: 2, 2 and 1. Moving one from a worker with 2 to the one with 1
    // keeps the balance, so no worker steals it back.
    let mut sim = Sim::new(5, 3).await;
    for _ in 0..30 {
        sim.round().await;
    }
    let counts = sim.counts();
    let to = counts.iter().find(|(_, n)| **n == 1).unwrap().0.clone();
    let from = sim
        .workers
        .iter()
        .flatten()
        .find(|w| w.held_leases().len() == 2)
        .unwrap();
    let key = from.held_leases()[0].key().to_owned();
    let lease = sim.store.get_lease(&key).await.unwrap().unwrap();
    let moved = sim.store.take_lease(&lease, &to).await.unwrap();
    assert!(moved.is_owned_by(&to));

    sim.round().await;
    let holders: Vec<String> = sim
        .workers
        .iter()
        .flatten()
        .filter(|w| w.held_lease(&key).is_some())
        .map(|w| w.config().worker_id.clone())
        .collect();
    assert_eq!(holders, vec![to.clone()]);
    let held = sim
        .workers
        .iter()
        .flatten()
        .find(|w| w.config().worker_id == to)
        .unwrap()
        .held_lease(&key)
        .unwrap();
    assert!(
        held.not_before() > Instant::now(),
        "it must wait for the previous holder's deadline"
    );
    for _ in 0..3 {
        sim.round().await;
    }
    let table = sim.store.get_lease(&key).await.unwrap().unwrap();
    assert!(table.is_owned_by(&to), "{table:?}");
    assert!(sim.spread() <= 1, "{:?}", sim.counts());
}

#[tokio::test(start_paused = true)]
async fn many_workers_with_random_store_failures() {
    let mut sim = Sim::new(64, 7).await;
    sim.store.set_failure_rate(0.15, 42);
    for _ in 0..200 {
        sim.round_checked(false).await;
    }
    sim.store.set_failure_rate(0.0, 0);
    // One clean round lets stale holders learn from a failed condition.
    sim.round_checked(false).await;
    for _ in 0..60 {
        sim.round().await;
    }
    assert_eq!(sim.held_total(), 64);
    assert!(sim.spread() <= 1, "uneven: {:?}", sim.counts());
}

#[tokio::test(start_paused = true)]
async fn a_stopped_worker_is_taken_over_within_two_failover_times() {
    let mut sim = Sim::new(12, 3).await;
    for _ in 0..40 {
        sim.round().await;
    }
    assert_eq!(
        sim.counts().values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4]
    );
    // Worker 0 stops renewing without releasing anything (a crash).
    let dead = sim.workers[0].take().unwrap();
    let orphans: Vec<String> = dead
        .held_leases()
        .iter()
        .map(|h| h.key().to_owned())
        .collect();
    let died = Instant::now();
    let mut taken_after = None;
    for _ in 0..20 {
        sim.round().await;
        if sim.held_total() == 12 {
            taken_after = Some(died.elapsed());
            break;
        }
    }
    let taken_after = taken_after.expect("orphaned leases never taken");
    assert!(taken_after <= 2 * FAILOVER, "took {taken_after:?}");
    assert_eq!(sim.spread(), 0, "{:?}", sim.counts());
    // The dead worker's stale copies can no longer write.
    let stale = dead.held_lease(&orphans[0]).unwrap().snapshot().await;
    let update = CheckpointUpdate {
        checkpoint: ExtendedSequenceNumber::new("1", 0),
        pending_checkpoint: None,
        pending_checkpoint_state: None,
    };
    assert!(matches!(
        sim.store.update_checkpoint(&stale, &update).await,
        Err(LeaseStoreError::ConditionFailed(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_added_worker_gets_its_share_with_the_fewest_moves() {
    let mut sim = Sim::new(12, 2).await;
    for _ in 0..40 {
        sim.round().await;
    }
    assert_eq!(sim.spread(), 0);
    let before = sim.moves;
    sim.add_worker(usize::MAX);
    for _ in 0..40 {
        sim.round().await;
    }
    assert_eq!(
        sim.counts().values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4]
    );
    // 6/6 -> 4/4/4 needs exactly four moves; any more would be churn.
    assert_eq!(sim.moves - before, 4);
}

#[tokio::test(start_paused = true)]
async fn max_leases_per_worker_is_honoured() {
    let mut sim = Sim::new(10, 0).await;
    sim.add_worker(3);
    for _ in 0..10 {
        sim.round().await;
    }
    assert_eq!(sim.held_total(), 3);
}

#[tokio::test(start_paused = true)]
async fn finished_leases_are_not_taken_and_released_leases_are_taken_at_once() {
    let mut sim = Sim::new(4, 0).await;
    let mut done = Lease::new("shard-done", ExtendedSequenceNumber::shard_end());
    done.lease_owner = None;
    sim.store.create_lease_if_absent(&done).await.unwrap();
    sim.add_worker(usize::MAX);
    sim.round().await;
    assert_eq!(sim.held_total(), 4);
    assert!(sim.workers[0]
        .as_ref()
        .unwrap()
        .held_lease("shard-done")
        .is_none());

    // A second worker starts, a graceful release of two leases hands them over without
    // waiting for the failover time.
    sim.add_worker(usize::MAX);
    let first = sim.workers[0].as_ref().unwrap();
    let keys: Vec<String> = first
        .held_leases()
        .iter()
        .map(|h| h.key().to_owned())
        .collect();
    first.release_lease(&keys[0]).await.unwrap();
    first.release_lease(&keys[1]).await.unwrap();
    let second = sim.workers[1].as_ref().unwrap();
    let round = second.take_leases().await.unwrap();
    assert_eq!(round.taken.len(), 2);
    assert_eq!(round.stolen, 0);
}

#[tokio::test(start_paused = true)]
async fn renewal_failures_shorter_than_failover_keep_the_lease() {
    let mut sim = Sim::new(2, 1).await;
    sim.round().await;
    assert_eq!(sim.held_total(), 2);
    let worker = sim.workers[0].as_ref().unwrap();
    // Two failed renewal rounds (< failover time) keep the leases.
    sim.store.fail_next(4);
    assert!(worker.renew_leases().await.is_empty());
    tokio::time::advance(TICK).await;
    assert!(worker.renew_leases().await.is_empty());
    assert_eq!(worker.held_leases().len(), 2);
    // Failures for longer than the failover time drop them.
    sim.store.set_failure_rate(1.0, 0);
    tokio::time::advance(FAILOVER).await;
    assert_eq!(worker.renew_leases().await.len(), 2);
    assert!(worker.held_leases().is_empty());
}

/// A worker whose lease calls all hang (its network to DynamoDB is gone, or the process
/// is paused) must stop acting on its leases before another worker can start on them:
/// for every lease, the old holder's last instant of validity comes before the new
/// holder's first.
#[tokio::test(start_paused = true)]
async fn a_hung_renewal_stops_the_old_holder_before_the_new_holder_starts() {
    use crate::test_util::{Fault, FaultRule, FaultyLeaseStore};

    let memory = Arc::new(MemoryLeaseStore::new());
    for i in 0..4 {
        let lease = Lease::new(format!("shard-{i}"), ExtendedSequenceNumber::trim_horizon());
        memory.create_lease_if_absent(&lease).await.unwrap();
    }
    let faulty = Arc::new(FaultyLeaseStore::new(memory.clone()));
    let config = |id: &str| {
        let mut config = LeaseCoordinatorConfig::new(id);
        config.failover_time = FAILOVER;
        config
    };
    let old = Arc::new(LeaseCoordinator::new(faulty.clone(), config("old")));
    let new = Arc::new(LeaseCoordinator::new(memory.clone(), config("new")));
    old.take_leases().await.unwrap();
    assert_eq!(old.held_leases().len(), 4);
    // Each worker renews every TICK on its own task; the new one also takes leases.
    let mut loops = tokio::task::JoinSet::new();
    for (worker, takes) in [(old.clone(), false), (new.clone(), true)] {
        loops.spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                tokio::spawn({
                    let worker = worker.clone();
                    async move { worker.renew_leases().await }
                });
                if takes {
                    let _ = worker.take_leases().await;
                }
            }
        });
    }
    let started = Instant::now();
    let hung_at = started + Duration::from_secs(5);
    let mut hung = false;

    // Sample every 10 ms who may act on each lease (from the start: a lease may also be
    // stolen for balancing before the hang).
    let mut last_valid: HashMap<(String, &str), Instant> = HashMap::new();
    let mut first_valid: HashMap<(String, &str), Instant> = HashMap::new();
    while started.elapsed() < Duration::from_secs(5) + 4 * FAILOVER {
        let now = Instant::now();
        if !hung && now >= hung_at {
            faulty.inject(FaultRule::all(Fault::Hang));
            hung = true;
        }
        for (name, worker) in [("old", &old), ("new", &new)] {
            for held in worker.held_leases() {
                if !held.is_lost() && now >= held.not_before() {
                    last_valid.insert((held.key().to_owned(), name), now);
                    first_valid
                        .entry((held.key().to_owned(), name))
                        .or_insert(now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loops.abort_all();
    assert_eq!(
        new.held_leases().len(),
        4,
        "the new worker took every lease"
    );
    for i in 0..4 {
        let key = format!("shard-{i}");
        let old_last = last_valid[&(key.clone(), "old")];
        let new_first = first_valid[&(key.clone(), "new")];
        assert!(
            old_last < new_first,
            "{key}: the old holder acted until {:?}, the new one from {:?}",
            old_last - started,
            new_first - started
        );
    }
}

/// A renewal applied by the table whose answer was lost (the SDK then retries, and the
/// retry's condition fails) is a spurious failure: the lease is still ours.
#[tokio::test(start_paused = true)]
async fn a_renewal_whose_answer_was_lost_keeps_the_lease() {
    use crate::test_util::{Fault, FaultRule, FaultyLeaseStore, Operation};

    let memory = Arc::new(MemoryLeaseStore::new());
    let lease = Lease::new("shard-0", ExtendedSequenceNumber::trim_horizon());
    memory.create_lease_if_absent(&lease).await.unwrap();
    let faulty = Arc::new(FaultyLeaseStore::new(memory.clone()));
    let mut config = LeaseCoordinatorConfig::new("w");
    config.failover_time = FAILOVER;
    let worker = LeaseCoordinator::new(faulty.clone(), config);
    worker.take_leases().await.unwrap();
    for fault in [Fault::LoseAnswerThenRetry, Fault::LoseAnswer] {
        faulty.inject(FaultRule::new([Operation::RenewLease], fault).times(1));
        tokio::time::advance(TICK).await;
        assert!(worker.renew_leases().await.is_empty(), "{fault:?}");
        tokio::time::advance(TICK).await;
        assert!(
            worker.renew_leases().await.is_empty(),
            "{fault:?}: next renewal"
        );
        let held = worker.held_lease("shard-0").expect("still held");
        assert!(!held.is_lost());
        let table = memory.snapshot().remove(0);
        assert!(table.is_owned_by("w"));
        assert_eq!(held.snapshot().await.lease_counter, table.lease_counter);
    }
    assert_eq!(faulty.injected(), 2);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// What happens to the first workers at round 60.
    #[derive(Clone, Copy, Debug)]
    enum Stop {
        Nothing,
        /// Worker 0 dies.
        Crash,
        /// The first `n` workers shut down gracefully at the same moment.
        Graceful(usize),
    }

    fn simulate(leases: usize, workers: usize, failure_rate: f64, seed: u64, stop: Stop) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut sim = Sim::new(leases, workers).await;
            sim.store.set_failure_rate(failure_rate, seed);
            for round in 0..120 {
                if round == 60 {
                    match stop {
                        Stop::Crash if workers > 1 => sim.workers[0] = None,
                        Stop::Graceful(n) if workers > n => sim.stop_gracefully(n).await,
                        _ => {}
                    }
                }
                sim.round_checked(failure_rate == 0.0).await;
            }
            sim.store.set_failure_rate(0.0, 0);
            sim.round_checked(false).await;
            for _ in 0..(leases * 2 + 20) {
                sim.round().await;
            }
            assert_eq!(sim.held_total(), leases, "{:?}", sim.counts());
            assert!(sim.spread() <= 1, "uneven: {:?}", sim.counts());
            for lease in sim.store.snapshot() {
                assert!(
                    lease.checkpoint_owner.is_none() && lease.handoff_accepted_by.is_none(),
                    "a handoff left behind: {lease:?}"
                );
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever the number of leases and workers, failures, crashes and graceful
        /// shutdowns (one worker, or two at the same moment, offering their leases to the
        /// others): never two writable holders, and in the end every lease held with a
        /// spread of at most one and no handoff left in the table.
        #[test]
        fn one_writable_holder_and_even_spread(
            leases in 1usize..40,
            workers in 1usize..7,
            failure_rate in prop_oneof![Just(0.0), 0.0f64..0.3],
            seed in any::<u64>(),
            stop in prop_oneof![
                Just(Stop::Nothing),
                Just(Stop::Crash),
                Just(Stop::Graceful(1)),
                Just(Stop::Graceful(2)),
            ],
        ) {
            simulate(leases, workers, failure_rate, seed, stop);
        }
    }

    /// Without store failures, a graceful stop loses no lease to expiry: every lease of
    /// the stopping worker is handed over (none released, none left to expire), and the
    /// new owners may start at once.
    #[test]
    fn a_graceful_stop_hands_every_lease_over() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut sim = Sim::new(12, 3).await;
            for _ in 0..30 {
                sim.round().await;
            }
            let leaving: Vec<String> = sim.workers[0]
                .as_ref()
                .unwrap()
                .held_leases()
                .iter()
                .map(|h| h.key().to_owned())
                .collect();
            assert_eq!(leaving.len(), 4);
            sim.stop_gracefully(1).await;
            for key in &leaving {
                let holder = sim
                    .workers
                    .iter()
                    .flatten()
                    .find_map(|w| w.held_lease(key))
                    .unwrap_or_else(|| panic!("{key} not taken at once: {:?}", sim.counts()));
                assert!(
                    holder.not_before() <= Instant::now(),
                    "{key} must start at once"
                );
            }
            assert_eq!(sim.held_total(), 12);
        });
    }
}

/// How long after a crashed worker's last renewal its leases are taken and may be acted on
/// (item 6 of issue 12), with the survivor's taker rounds scheduled as the scheduler does.
/// Returns that time and how many taker rounds the survivor made in the minute before.
async fn takeover_after_crash(
    interval: Duration,
    look_at_expiry: bool,
    crash_after: Duration,
) -> (Duration, usize) {
    const STEP: Duration = Duration::from_millis(10);
    let store = Arc::new(MemoryLeaseStore::new());
    for i in 0..4 {
        let lease = Lease::new(format!("shard-{i}"), ExtendedSequenceNumber::trim_horizon());
        store.create_lease_if_absent(&lease).await.unwrap();
    }
    let start = Instant::now();
    // (coordinator, next renewal, next taker round, last renewal, taker rounds)
    let mut workers: Vec<(LeaseCoordinator, Instant, Instant, Instant, usize)> = ["a", "b"]
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let mut config = LeaseCoordinatorConfig::new(id);
            config.failover_time = FAILOVER;
            // Balancing before the crash without processors to hand leases over.
            config.graceful_handoff_timeout = None;
            let store: Arc<dyn LeaseStore> = store.clone();
            let phase = Duration::from_millis(1_234 * i as u64);
            (
                LeaseCoordinator::new(store, config),
                start + phase,
                start + phase,
                start,
                0,
            )
        })
        .collect();
    let crash_at = start + Duration::from_secs(60) + crash_after;
    let mut crashed: Option<(Vec<String>, Instant)> = None;
    loop {
        let now = Instant::now();
        if crashed.is_none() && now >= crash_at {
            let (dead, _, _, last_renewal, _) = workers.remove(0);
            assert_eq!(dead.held_leases().len(), 2, "not balanced before the crash");
            let keys = dead
                .held_leases()
                .iter()
                .map(|h| h.key().to_owned())
                .collect();
            crashed = Some((keys, last_renewal));
        }
        for (worker, next_renewal, next_take, last_renewal, rounds) in &mut workers {
            if now >= *next_renewal {
                worker.renew_leases().await;
                *last_renewal = now;
                *next_renewal += FAILOVER / 3;
            }
            if now >= *next_take {
                let round = worker.take_leases().await.unwrap();
                if now < crash_at && now >= crash_at - Duration::from_secs(60) {
                    *rounds += 1;
                }
                *next_take = if look_at_expiry {
                    next_take_at(Instant::now(), interval, round.next_expiry)
                } else {
                    Instant::now() + interval
                };
            }
        }
        if let Some((orphans, last_renewal)) = &crashed {
            let survivor = &workers[0].0;
            let ready = orphans.iter().all(|key| {
                survivor
                    .held_lease(key)
                    .is_some_and(|held| held.not_before() <= Instant::now())
            });
            if ready {
                let rounds = workers[0].4;
                return (Instant::now() - *last_renewal, rounds);
            }
            assert!(now - *last_renewal < 5 * FAILOVER, "never taken over");
        }
        tokio::time::advance(STEP).await;
    }
}

/// Looking again when the first observed lease expires takes a crashed worker's leases
/// within 2x the failover time of its last renewal, whatever the phase of the crash;
/// rounds at a fixed interval take up to 3x, and the healthy fleet's rounds are as many.
/// A taker interval of a fifth of the failover time brings it to 1.2x (at 5x the scans).
#[tokio::test(start_paused = true)]
async fn a_crashed_workers_leases_are_taken_within_two_failover_times_of_its_last_renewal() {
    let phases = 20;
    let mut worst = [Duration::ZERO; 3];
    let mut rounds = [0usize; 3];
    for phase in 0..phases {
        let crash_after = FAILOVER * phase / phases;
        for (i, (interval, look)) in [(FAILOVER, false), (FAILOVER, true), (FAILOVER / 5, true)]
            .into_iter()
            .enumerate()
        {
            let (took, made) = takeover_after_crash(interval, look, crash_after).await;
            worst[i] = worst[i].max(took);
            rounds[i] = rounds[i].max(made);
        }
    }
    println!("worst takeover after the last renewal {worst:?}, rounds in a minute {rounds:?}");
    let slack = Duration::from_millis(50);
    assert!(worst[0] > 2 * FAILOVER, "fixed interval: {:?}", worst[0]);
    assert!(
        worst[1] <= 2 * FAILOVER + slack,
        "at expiry: {:?}",
        worst[1]
    );
    assert!(
        worst[2] <= FAILOVER * 6 / 5 + slack,
        "interval / 5: {:?}",
        worst[2]
    );
    // A minute of a healthy fleet: one round per failover time either way (the first
    // round of the minute may fall on either side of its start).
    assert!(rounds[0] <= 7 && rounds[1] <= 7, "rounds {rounds:?}");
    assert!(rounds[1] <= rounds[0] + 1, "rounds {rounds:?}");
}

/// Two workers on the in-memory store: `a` holds every lease, `b` holds none yet.
async fn two_workers(
    leases: usize,
    graceful: Option<Duration>,
) -> (Arc<MemoryLeaseStore>, LeaseCoordinator, LeaseCoordinator) {
    let store = Arc::new(MemoryLeaseStore::new());
    for i in 0..leases {
        let lease = Lease::new(format!("shard-{i}"), ExtendedSequenceNumber::trim_horizon());
        store.create_lease_if_absent(&lease).await.unwrap();
    }
    let worker = |id: &str| {
        let mut config = LeaseCoordinatorConfig::new(id);
        config.failover_time = FAILOVER;
        config.graceful_handoff_timeout = graceful;
        let store: Arc<dyn LeaseStore> = store.clone();
        LeaseCoordinator::new(store, config)
    };
    let a = worker("a");
    a.take_leases().await.unwrap();
    assert_eq!(a.held_leases().len(), leases);
    (store.clone(), a, worker("b"))
}

fn commit(sequence: &str) -> Result<CheckpointUpdate, std::convert::Infallible> {
    Ok(CheckpointUpdate::commit(ExtendedSequenceNumber::new(
        sequence, 0,
    )))
}

/// KCL 3's graceful handoff: the balancing worker asks for a lease instead of taking it;
/// the holder learns of it at its next renewal, keeps renewing and checkpointing it while
/// its processor finishes, and hands it over; the new owner starts at once from that
/// checkpoint.
#[tokio::test(start_paused = true)]
async fn a_lease_asked_for_is_handed_over_and_starts_at_once() {
    let (store, a, b) = two_workers(2, Some(Duration::from_secs(30))).await;
    let round = b.take_leases().await.unwrap();
    assert_eq!(round.handoffs_requested.len(), 1, "{round:?}");
    assert!(round.taken.is_empty() && b.held_leases().is_empty());
    let key = round.handoffs_requested[0].clone();
    let table = store.get_lease(&key).await.unwrap().unwrap();
    assert_eq!(table.lease_owner.as_deref(), Some("b"));
    assert_eq!(table.checkpoint_owner.as_deref(), Some("a"));
    // b counts the lease as coming: a second round asks for nothing more.
    assert!(b.take_leases().await.unwrap().handoffs_requested.is_empty());

    tokio::time::advance(TICK).await;
    assert!(a.renew_leases().await.is_empty(), "the holder keeps it");
    let held = a.held_lease(&key).unwrap();
    assert!(held.is_handoff_requested());
    assert_eq!(held.handoff_target().as_deref(), Some("b"));
    // The holder's final checkpoint and renewals still go through.
    held.write_checkpoint(|_| commit("42"))
        .await
        .unwrap()
        .unwrap();
    tokio::time::advance(TICK).await;
    assert!(a.renew_leases().await.is_empty());
    // Nothing moves before the holder hands over.
    assert!(b.discover().await.is_empty());

    a.release_lease(&key).await.unwrap();
    assert!(a.held_lease(&key).is_none());
    let table = store.get_lease(&key).await.unwrap().unwrap();
    assert!(table.is_owned_by("b") && table.checkpoint_owner.is_none());
    assert!(table.is_handed_over());
    assert_eq!(table.checkpoint, ExtendedSequenceNumber::new("42", 0));

    assert_eq!(b.discover().await, vec![key.clone()]);
    let taken = b.held_lease(&key).unwrap();
    assert!(taken.not_before() <= Instant::now(), "must start at once");
    assert_eq!(a.held_leases().len(), 1);
}

/// A holder that dies after the request never hands over: the lease expires and the
/// worker that asked takes it, starting at once.
#[tokio::test(start_paused = true)]
async fn a_lease_asked_of_a_dead_holder_is_taken_when_it_expires() {
    let (_store, a, b) = two_workers(2, Some(Duration::from_secs(30))).await;
    let key = b.take_leases().await.unwrap().handoffs_requested[0].clone();
    drop(a);
    let mut waited = Duration::ZERO;
    while b.held_lease(&key).is_none() {
        tokio::time::advance(Duration::from_millis(500)).await;
        waited += Duration::from_millis(500);
        b.discover().await;
        assert!(waited < 2 * FAILOVER, "never taken");
    }
    assert!(
        waited > FAILOVER && waited <= FAILOVER + Duration::from_secs(1),
        "{waited:?}"
    );
    assert!(b.held_lease(&key).unwrap().not_before() <= Instant::now());
}

/// A holder that keeps renewing but never hands over (a processor that never finishes
/// and a worker that never stops it) loses the lease after the handoff timeout plus the
/// failover time; the taker then waits for the holder's deadline, as for any steal.
#[tokio::test(start_paused = true)]
async fn a_handoff_never_completed_is_taken_after_the_timeout() {
    let timeout = Duration::from_secs(5);
    let (_store, a, b) = two_workers(2, Some(timeout)).await;
    let key = b.take_leases().await.unwrap().handoffs_requested[0].clone();
    let asked = Instant::now();
    while b.held_lease(&key).is_none() {
        tokio::time::advance(TICK).await;
        a.renew_leases().await;
        b.discover().await;
        assert!(asked.elapsed() < 2 * (timeout + FAILOVER), "never taken");
    }
    assert!(asked.elapsed() > timeout + FAILOVER);
    let taken = b.held_lease(&key).unwrap();
    assert!(
        taken.not_before() > Instant::now(),
        "must wait for the holder's deadline"
    );
    tokio::time::advance(TICK).await;
    assert_eq!(a.renew_leases().await, vec![key]);
}

/// A worker shutting down hands over the leases asked of it.
#[tokio::test(start_paused = true)]
async fn a_worker_shutting_down_hands_over_the_leases_asked_of_it() {
    let (store, a, b) = two_workers(2, Some(Duration::from_secs(30))).await;
    let asked = b.take_leases().await.unwrap().handoffs_requested[0].clone();
    tokio::time::advance(TICK).await;
    a.renew_leases().await;
    a.release_lease(&asked).await.unwrap();
    let lease = store.get_lease(&asked).await.unwrap().unwrap();
    assert!(
        lease.is_owned_by("b") && lease.is_handed_over(),
        "{lease:?}"
    );
}

/// Workers `a` and `b` on `store` (holding `shard-0` and `shard-1`), one lease each after a
/// graceful move, each knowing the other is alive. Returns a's lease and b's.
async fn balanced(
    store: Arc<dyn LeaseStore>,
) -> (LeaseCoordinator, LeaseCoordinator, String, String) {
    for i in 0..2 {
        let lease = Lease::new(format!("shard-{i}"), ExtendedSequenceNumber::trim_horizon());
        store.create_lease_if_absent(&lease).await.unwrap();
    }
    let worker = |id: &str| {
        let mut config = LeaseCoordinatorConfig::new(id);
        config.failover_time = FAILOVER;
        LeaseCoordinator::new(store.clone(), config)
    };
    let (a, b) = (worker("a"), worker("b"));
    a.take_leases().await.unwrap();
    let moved = b.take_leases().await.unwrap().handoffs_requested[0].clone();
    tokio::time::advance(TICK).await;
    a.renew_leases().await;
    a.release_lease(&moved).await.unwrap();
    assert_eq!(b.discover().await, vec![moved.clone()]);
    a.take_leases().await.unwrap();
    b.take_leases().await.unwrap();
    let kept = a.held_leases()[0].key().to_owned();
    (a, b, kept, moved)
}

/// The owner fields of a lease: (`leaseOwner`, `checkpointOwner`, `handoffAcceptedBy`).
async fn owners(store: &dyn LeaseStore, key: &str) -> [Option<String>; 3] {
    let lease = store.get_lease(key).await.unwrap().unwrap();
    [
        lease.lease_owner,
        lease.checkpoint_owner,
        lease.handoff_accepted_by,
    ]
}

fn named(worker: &str) -> Option<String> {
    Some(worker.to_owned())
}

/// A worker shutting down offers its leases to a running worker, which accepts at its
/// next look; once the processor finished the lease is handed over and starts there at
/// once, with nothing left of the handoff in the table.
#[tokio::test(start_paused = true)]
async fn a_worker_shutting_down_hands_its_leases_to_a_running_worker() {
    let store = Arc::new(MemoryLeaseStore::new());
    let (a, b, key, _) = balanced(store.clone()).await;
    a.begin_shutdown().await;
    assert_eq!(owners(&*store, &key).await, [named("b"), named("a"), None]);
    assert!(
        b.discover().await.is_empty(),
        "accepted, not handed over yet"
    );
    assert!(b.awaiting_handoff());
    assert_eq!(
        owners(&*store, &key).await,
        [named("b"), named("a"), named("b")]
    );
    let released = Instant::now();
    a.release_lease(&key).await.unwrap();
    assert_eq!(released.elapsed(), Duration::ZERO, "accepted: no wait");
    assert_eq!(b.discover().await, vec![key.clone()]);
    assert!(b.held_lease(&key).unwrap().not_before() <= Instant::now());
    assert_eq!(owners(&*store, &key).await, [named("b"), None, None]);
    assert!(!b.awaiting_handoff());
}

/// A lease is never handed to a worker that is leaving too, whatever the order: a worker
/// shutting down accepts no offer, cancels the offers it accepted, and releases a lease
/// handed to it that it has not taken yet. Every lease ends released, nothing of the
/// handoffs left.
#[tokio::test(start_paused = true)]
async fn a_lease_is_never_left_with_a_worker_that_is_leaving_too() {
    // b stops first: a's offer is never accepted; b's offer to a is cancelled by a.
    let store = Arc::new(MemoryLeaseStore::new());
    let (a, b, ka, kb) = balanced(store.clone()).await;
    b.begin_shutdown().await;
    a.begin_shutdown().await;
    let waited = Instant::now();
    a.release_lease(&ka).await.unwrap();
    assert!(waited.elapsed() >= a.config().handoff_accept_wait);
    b.release_lease(&kb).await.unwrap();
    for key in [&ka, &kb] {
        assert_eq!(owners(&*store, key).await, [None, None, None], "{key}");
    }

    // b accepts, then stops before the hand-over: it cancels; a releases.
    let store = Arc::new(MemoryLeaseStore::new());
    let (a, b, ka, _) = balanced(store.clone()).await;
    a.begin_shutdown().await;
    b.discover().await;
    b.begin_shutdown().await;
    assert_eq!(owners(&*store, &ka).await, [named("a"), None, None]);
    let waited = Instant::now();
    a.release_lease(&ka).await.unwrap();
    assert!(waited.elapsed() < a.config().handoff_accept_wait);
    assert_eq!(owners(&*store, &ka).await, [None, None, None]);

    // b accepts, a hands over, b stops before taking it: b releases it.
    let store = Arc::new(MemoryLeaseStore::new());
    let (a, b, ka, _) = balanced(store.clone()).await;
    a.begin_shutdown().await;
    b.discover().await;
    a.release_lease(&ka).await.unwrap();
    b.begin_shutdown().await;
    assert_eq!(owners(&*store, &ka).await, [None, None, None]);
}

/// An offer whose target never looks (a Java KCL worker, or one at its lease limit) is
/// cancelled after the accept wait and the lease released. An offer whose answer was lost
/// stands (the table says so); a cancellation that hangs leaves the lease to expire for
/// the target, which takes it then.
#[tokio::test(start_paused = true)]
async fn an_offer_that_is_not_accepted_ends_in_a_release_or_an_expiry() {
    use crate::test_util::{Fault, FaultRule, FaultyLeaseStore, Operation};
    let memory = Arc::new(MemoryLeaseStore::new());
    let faulty = Arc::new(FaultyLeaseStore::new(memory.clone()));
    let (a, b, ka, _) = balanced(faulty.clone()).await;
    faulty.inject(FaultRule::new([Operation::RequestHandoff], Fault::LoseAnswer).times(1));
    a.begin_shutdown().await;
    assert_eq!(owners(&*memory, &ka).await, [named("b"), named("a"), None]);
    a.release_lease(&ka).await.unwrap();
    assert_eq!(owners(&*memory, &ka).await, [None, None, None]);
    drop(b);

    let memory = Arc::new(MemoryLeaseStore::new());
    let faulty = Arc::new(FaultyLeaseStore::new(memory.clone()));
    let (a, b, ka, _) = balanced(faulty.clone()).await;
    a.begin_shutdown().await;
    faulty.inject(FaultRule::new([Operation::CancelHandoff], Fault::Hang));
    assert!(matches!(
        a.release_lease(&ka).await,
        Err(LeaseStoreError::Timeout(_))
    ));
    faulty.clear();
    let gave_up = Instant::now();
    while b.held_lease(&ka).is_none() {
        tokio::time::advance(Duration::from_millis(500)).await;
        b.renew_leases().await;
        b.discover().await;
        assert!(gave_up.elapsed() < 2 * FAILOVER, "never taken");
    }
}

/// `a` on a store that injects faults, `b` on the same table directly; `a` holds both
/// leases and `b` has asked for one (unless `ask` is false). Returns the asked key.
async fn handoff_with_faults(
    ask: bool,
) -> (
    Arc<MemoryLeaseStore>,
    Arc<crate::test_util::FaultyLeaseStore>,
    LeaseCoordinator,
    LeaseCoordinator,
) {
    use crate::test_util::FaultyLeaseStore;
    let memory = Arc::new(MemoryLeaseStore::new());
    for i in 0..2 {
        let lease = Lease::new(format!("shard-{i}"), ExtendedSequenceNumber::trim_horizon());
        memory.create_lease_if_absent(&lease).await.unwrap();
    }
    let faulty = Arc::new(FaultyLeaseStore::new(memory.clone()));
    let config = |id: &str| {
        let mut config = LeaseCoordinatorConfig::new(id);
        config.failover_time = FAILOVER;
        config
    };
    let a = LeaseCoordinator::new(faulty.clone(), config("a"));
    a.take_leases().await.unwrap();
    let b = LeaseCoordinator::new(faulty.clone(), config("b"));
    if ask {
        assert_eq!(b.take_leases().await.unwrap().handoffs_requested.len(), 1);
    }
    (memory, faulty, a, b)
}

/// The key of the lease `a` was asked for, once `a` has seen the request.
async fn asked_of(a: &LeaseCoordinator) -> String {
    tokio::time::advance(TICK).await;
    a.renew_leases().await;
    let asked: Vec<String> = a
        .held_leases()
        .iter()
        .filter(|h| h.is_handoff_requested())
        .map(|h| h.key().to_owned())
        .collect();
    assert_eq!(asked.len(), 1, "{:?}", a.held_leases());
    asked[0].clone()
}

/// A request applied whose answer was lost: the asker does not know, but learns of it from
/// the table (its next look lists the lease as coming to it) and starts it at once when
/// handed over.
#[tokio::test(start_paused = true)]
async fn a_handoff_request_whose_answer_was_lost_still_completes() {
    use crate::test_util::{Fault, FaultRule, Operation};
    let (_memory, faulty, a, b) = handoff_with_faults(false).await;
    faulty.inject(FaultRule::new([Operation::RequestHandoff], Fault::LoseAnswer).times(1));
    let round = b.take_leases().await.unwrap();
    assert!(round.handoffs_requested.is_empty(), "the answer was lost");
    let key = asked_of(&a).await;
    b.discover().await;
    a.release_lease(&key).await.unwrap();
    assert_eq!(b.discover().await, vec![key.clone()]);
    assert!(b.held_lease(&key).unwrap().not_before() <= Instant::now());
}

/// A hand-over applied whose answer was lost, with and without the SDK's retry: the lease
/// is the asker's, which starts at once; the holder no longer acts on it.
#[tokio::test(start_paused = true)]
async fn a_hand_over_whose_answer_was_lost_is_done() {
    use crate::test_util::{Fault, FaultRule, Operation};
    for fault in [Fault::LoseAnswerThenRetry, Fault::LoseAnswer] {
        let (memory, faulty, a, b) = handoff_with_faults(true).await;
        let key = asked_of(&a).await;
        faulty.inject(FaultRule::new([Operation::HandOver], fault).times(1));
        let released = a.release_lease(&key).await;
        assert_eq!(
            released.is_ok(),
            matches!(fault, Fault::LoseAnswerThenRetry),
            "{fault:?}"
        );
        assert!(a.held_lease(&key).is_none(), "{fault:?}");
        assert!(memory
            .get_lease(&key)
            .await
            .unwrap()
            .unwrap()
            .is_handed_over());
        assert_eq!(b.discover().await, vec![key.clone()], "{fault:?}");
        assert!(b.held_lease(&key).unwrap().not_before() <= Instant::now());
    }
}

/// A hand-over that hangs: the holder gives up after the request timeout and stops acting
/// on the lease; it expires and the asker takes it then, starting at once.
#[tokio::test(start_paused = true)]
async fn a_hung_hand_over_leaves_the_lease_to_expire_for_the_asker() {
    use crate::test_util::{Fault, FaultRule, Operation};
    let (_memory, faulty, a, b) = handoff_with_faults(true).await;
    let key = asked_of(&a).await;
    faulty.inject(FaultRule::new([Operation::HandOver], Fault::Hang));
    let gave_up = Instant::now();
    assert!(matches!(
        a.release_lease(&key).await,
        Err(LeaseStoreError::Timeout(_))
    ));
    assert!(a.held_lease(&key).is_none());
    while b.held_lease(&key).is_none() {
        tokio::time::advance(Duration::from_millis(500)).await;
        a.renew_leases().await;
        b.discover().await;
        assert!(gave_up.elapsed() < 2 * FAILOVER, "never taken");
    }
    assert!(b.held_lease(&key).unwrap().not_before() <= Instant::now());
}

/// Lease discovery whose calls fail takes nothing and loses nothing: the next look does.
#[tokio::test(start_paused = true)]
async fn a_failing_discovery_is_retried_at_the_next_look() {
    use crate::test_util::{Fault, FaultRule, Operation};
    let (_memory, faulty, a, b) = handoff_with_faults(true).await;
    let key = asked_of(&a).await;
    a.release_lease(&key).await.unwrap();
    faulty.inject(FaultRule::new(
        [Operation::ListOwnedKeys, Operation::GetLease],
        Fault::ServerError,
    ));
    assert!(b.discover().await.is_empty());
    faulty.clear();
    assert_eq!(b.discover().await, vec![key.clone()]);
    assert!(b.held_lease(&key).unwrap().not_before() <= Instant::now());
}

/// Renewals write the lease's measured throughput (`throughputKBps`, as the Java KCL 3):
/// the data delivered since the last renewal per second, smoothed with the figures before.
#[tokio::test(start_paused = true)]
async fn renewals_write_the_measured_throughput() {
    let (store, a, _b) = two_workers(1, None).await;
    let held = a.held_lease("shard-0").unwrap();
    let throughput = || async {
        store
            .get_lease("shard-0")
            .await
            .unwrap()
            .unwrap()
            .throughput_kbps
    };
    held.record_delivered(20 * 1024);
    tokio::time::advance(Duration::from_secs(2)).await;
    a.renew_leases().await;
    assert_eq!(throughput().await, Some(10.0));
    tokio::time::advance(Duration::from_secs(2)).await;
    a.renew_leases().await;
    assert_eq!(throughput().await, Some(5.0), "an idle period halves it");
}

/// Throughput-aware balancing: one hot shard (1 MiB/s) among 15 cold ones (10 KiB/s) on 4
/// workers. Balancing by count alone gives every worker 4; by throughput the hot shard's
/// worker gives its cold leases away and ends with fewer than every other worker; then the
/// fleet is at rest: 10 more rounds move nothing. A quiet fleet (every lease at 10 KiB/s)
/// balances by count and makes no move at rest either.
#[tokio::test(start_paused = true)]
async fn a_hot_shards_worker_ends_with_fewer_leases_and_the_fleet_comes_to_rest() {
    let mut sim = Sim::new(16, 4).await;
    let hot = "shard-000";
    let kbps = |key: &str| if key == hot { 1024.0 } else { 10.0 };
    for _ in 0..60 {
        sim.deliver(kbps);
        sim.round().await;
    }
    assert_eq!(sim.held_total(), 16, "{:?}", sim.counts());
    let hot_holder = sim
        .workers
        .iter()
        .flatten()
        .find(|w| w.held_lease(hot).is_some())
        .map(|w| w.config().worker_id.clone())
        .unwrap();
    let counts = sim.counts();
    for (worker, count) in &counts {
        if *worker != hot_holder {
            assert!(
                count > &counts[&hot_holder],
                "{counts:?}, hot on {hot_holder}"
            );
        }
    }
    let moves = sim.moves;
    for _ in 0..10 {
        sim.deliver(kbps);
        sim.round().await;
    }
    assert_eq!(sim.moves, moves, "moves at rest: {:?}", sim.counts());
    println!("hot shard on {hot_holder}: {counts:?}");

    // Idle leases (no data at all) are given away too: the hot shard's worker ends with the
    // hot shard alone.
    let mut idle = Sim::new(8, 2).await;
    let only_hot = |key: &str| if key == hot { 1024.0 } else { 0.0 };
    for _ in 0..40 {
        idle.deliver(only_hot);
        idle.round().await;
    }
    let mut counts: Vec<usize> = idle.counts().values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 7]);
    let moves = idle.moves;
    for _ in 0..10 {
        idle.deliver(only_hot);
        idle.round().await;
    }
    assert_eq!(idle.moves, moves, "moves at rest: {:?}", idle.counts());

    let mut quiet = Sim::new(16, 4).await;
    for _ in 0..40 {
        quiet.deliver(|_| 10.0);
        quiet.round().await;
    }
    assert!(quiet.spread() <= 1, "{:?}", quiet.counts());
    let moves = quiet.moves;
    for _ in 0..10 {
        quiet.deliver(|_| 10.0);
        quiet.round().await;
    }
    assert_eq!(quiet.moves, moves, "moves at rest: {:?}", quiet.counts());
}

/// A worker that joined after the stopping worker's last taker round is offered leases
/// too: the stopping worker lists the table afresh.
#[tokio::test(start_paused = true)]
async fn a_worker_that_joined_since_the_last_taker_round_is_offered_leases() {
    let (store, a, b) = two_workers(2, Some(Duration::from_secs(30))).await;
    let moved = b.take_leases().await.unwrap().handoffs_requested[0].clone();
    tokio::time::advance(TICK).await;
    a.renew_leases().await;
    a.release_lease(&moved).await.unwrap();
    assert_eq!(b.discover().await, vec![moved]);
    // No taker round of a's has seen b.
    let kept = a.held_leases()[0].key().to_owned();
    a.begin_shutdown().await;
    assert_eq!(owners(&*store, &kept).await, [named("b"), named("a"), None]);
    b.discover().await;
    a.release_lease(&kept).await.unwrap();
    assert_eq!(b.discover().await, vec![kept]);
}

/// The shutdown's fresh listing of the table failing: the last taker round's view of the
/// live workers is used, and the lease is still offered and handed over.
#[tokio::test(start_paused = true)]
async fn a_failing_listing_at_shutdown_falls_back_to_the_last_taker_round() {
    use crate::test_util::{Fault, FaultRule, FaultyLeaseStore, Operation};
    let memory = Arc::new(MemoryLeaseStore::new());
    let faulty = Arc::new(FaultyLeaseStore::new(memory.clone()));
    let (a, b, ka, _) = balanced(faulty.clone()).await;
    faulty.inject(FaultRule::new([Operation::ListLeases], Fault::ServerError));
    a.begin_shutdown().await;
    assert_eq!(owners(&*memory, &ka).await, [named("b"), named("a"), None]);
    b.discover().await;
    a.release_lease(&ka).await.unwrap();
    assert_eq!(b.discover().await, vec![ka]);
}

/// A worker shutting down whose cancellation of an accepted offer was applied but whose
/// answer was lost (the SDK's retry then fails its condition): it reads the lease again,
/// sees it is no longer on its way, and the holder releases the lease.
#[tokio::test(start_paused = true)]
async fn a_cancellation_whose_answer_was_lost_still_hands_the_lease_back() {
    use crate::test_util::{Fault, FaultRule, FaultyLeaseStore, Operation};
    let memory = Arc::new(MemoryLeaseStore::new());
    let faulty = Arc::new(FaultyLeaseStore::new(memory.clone()));
    let (a, b, ka, _) = balanced(faulty.clone()).await;
    a.begin_shutdown().await;
    b.discover().await;
    assert_eq!(
        owners(&*memory, &ka).await,
        [named("b"), named("a"), named("b")]
    );
    faulty.inject(FaultRule::new([Operation::CancelHandoff], Fault::LoseAnswerThenRetry).times(1));
    b.begin_shutdown().await;
    assert_eq!(owners(&*memory, &ka).await, [named("a"), None, None]);
    a.release_lease(&ka).await.unwrap();
    assert_eq!(owners(&*memory, &ka).await, [None, None, None]);
}
