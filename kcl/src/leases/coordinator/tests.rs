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
        let store: Arc<dyn LeaseStore> = self.store.clone();
        self.workers
            .push(Some(LeaseCoordinator::new(store, config)));
    }

    /// One period: every live worker renews, the invariants are checked, then every live
    /// worker takes; the clock moves on.
    async fn round(&mut self) {
        self.round_checked(true).await;
    }

    async fn round_checked(&mut self, strict: bool) {
        for worker in self.workers.iter().flatten() {
            worker.renew_leases().await;
        }
        self.check_one_holder(strict).await;
        for worker in self.workers.iter().flatten() {
            if let Ok(round) = worker.take_leases().await {
                self.moves += round.stolen;
            }
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
        for worker in self.workers.iter().flatten() {
            for held in worker.held_leases() {
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
                    copy.lease_counter == current.lease_counter && current.is_owned_by(me)
                })
                .map(|(me, _)| me)
                .collect();
            assert!(writable.len() <= 1, "{key} writable by {writable:?}");
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

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn simulate(leases: usize, workers: usize, failure_rate: f64, seed: u64, crash: bool) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut sim = Sim::new(leases, workers).await;
            sim.store.set_failure_rate(failure_rate, seed);
            for round in 0..120 {
                if crash && round == 60 && workers > 1 {
                    sim.workers[0] = None;
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
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the number of leases and workers, failures and crashes: never two
        /// writable holders, and in the end every lease held with a spread of at most one.
        #[test]
        fn one_writable_holder_and_even_spread(
            leases in 1usize..40,
            workers in 1usize..7,
            failure_rate in prop_oneof![Just(0.0), 0.0f64..0.3],
            seed in any::<u64>(),
            crash in any::<bool>(),
        ) {
            simulate(leases, workers, failure_rate, seed, crash);
        }
    }
}
