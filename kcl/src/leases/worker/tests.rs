//! The leader-based coordination with simulated workers (the real lease layer) on tokio's
//! paused clock, under the faults a fleet meets: a killed or paused leader, a leader whose
//! table calls hang, two leaders at once, a missed assignment, an assignment to a worker
//! that just died, throttled renewals. Every test checks, every 50 ms, that no lease is
//! processed by two workers at once.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::*;
use crate::lease::{ExtendedSequenceNumber, Lease};
use crate::leases::coordination::MemoryCoordinatorStore;
use crate::leases::MemoryLeaseStore;
use crate::test_util::fleet::{SimWorker, SimWorkerConfig};
use crate::test_util::{
    CoordinatorOperation, Fault, FaultRule, FaultyCoordinatorStore, FaultyLeaseStore, Operation,
};

const FAILOVER: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(50);

/// A worker with its own fault-injecting views of the shared tables.
struct Member {
    worker: SimWorker,
    leases: Arc<FaultyLeaseStore>,
    coordination: Arc<FaultyCoordinatorStore>,
}

struct Fleet {
    leases: Arc<MemoryLeaseStore>,
    coordination: Arc<MemoryCoordinatorStore>,
    members: Vec<Member>,
    overlaps: Vec<String>,
}

impl Fleet {
    async fn new(leases: usize) -> Fleet {
        let store = Arc::new(MemoryLeaseStore::new());
        for i in 0..leases {
            let lease = Lease::new(
                format!("shard-{i:03}"),
                ExtendedSequenceNumber::trim_horizon(),
            );
            store.create_lease_if_absent(&lease).await.unwrap();
        }
        Fleet {
            leases: store,
            coordination: Arc::new(MemoryCoordinatorStore::new()),
            members: Vec::new(),
            overlaps: Vec::new(),
        }
    }

    /// Adds and starts a worker using `coordination` (the fleet's tables when `None`).
    fn add_with(&mut self, coordination: Option<Arc<MemoryCoordinatorStore>>) -> usize {
        self.add_faulty(coordination, None)
    }

    /// Adds and starts a worker whose coordinator tables apply `rule` from the start.
    fn add_faulty(
        &mut self,
        coordination: Option<Arc<MemoryCoordinatorStore>>,
        rule: Option<FaultRule<CoordinatorOperation>>,
    ) -> usize {
        let leases = Arc::new(FaultyLeaseStore::new(self.leases.clone()));
        let tables = coordination.unwrap_or_else(|| self.coordination.clone());
        let coordination = Arc::new(FaultyCoordinatorStore::new(tables));
        if let Some(rule) = rule {
            coordination.inject(rule);
        }
        let id = format!("worker-{}", self.members.len());
        let mut worker = SimWorker::new(
            leases.clone(),
            coordination.clone(),
            SimWorkerConfig::new(id, Coordination::default()),
        );
        worker.start();
        self.members.push(Member {
            worker,
            leases,
            coordination,
        });
        self.members.len() - 1
    }

    fn add(&mut self) -> usize {
        self.add_with(None)
    }

    /// Who processes what now; notes any lease processed by two workers.
    fn look(&mut self) -> HashMap<String, usize> {
        let mut now = HashMap::new();
        for (i, member) in self.members.iter().enumerate() {
            for key in member.worker.processing() {
                if let Some(other) = now.insert(key.clone(), i) {
                    self.overlaps.push(format!("{key} by {other} and {i}"));
                }
            }
        }
        now
    }

    /// Runs for `duration`, looking every tick.
    async fn run_for(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            tokio::time::sleep(TICK).await;
            self.look();
        }
        assert!(
            self.overlaps.is_empty(),
            "processed twice at once: {:?}",
            self.overlaps
        );
    }

    /// Runs until `done` holds for what is processed (checked every tick), at most `limit`;
    /// returns how long it took.
    async fn run_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&HashMap<String, usize>) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            tokio::time::sleep(TICK).await;
            let now = self.look();
            assert!(
                self.overlaps.is_empty(),
                "processed twice at once: {:?}",
                self.overlaps
            );
            if done(&now) {
                return Some(start.elapsed());
            }
        }
        None
    }

    fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.worker.is_running() && m.worker.is_leader())
    }

    fn counts(&self) -> BTreeMap<usize, usize> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.worker.is_running())
            .map(|(i, m)| (i, m.worker.processing().len()))
            .collect()
    }

    fn all_processed(&mut self, leases: usize) -> bool {
        self.look().len() == leases
    }

    fn balanced(&self) -> bool {
        let counts = self.counts();
        let (min, max) = (counts.values().min(), counts.values().max());
        matches!((min, max), (Some(min), Some(max)) if max - min <= 1)
    }
}

/// Every lease processed, with an even split, at rest.
async fn steady(fleet: &mut Fleet, leases: usize) {
    let settled = fleet
        .run_until(Duration::from_secs(60), |now| now.len() == leases)
        .await;
    assert!(
        settled.is_some(),
        "not every lease processed: {:?}",
        fleet.counts()
    );
    fleet.run_for(Duration::from_secs(10)).await;
    assert!(fleet.balanced(), "uneven: {:?}", fleet.counts());
}

#[tokio::test(start_paused = true)]
async fn workers_started_together_split_the_leases_evenly_with_no_moves() {
    let mut fleet = Fleet::new(64).await;
    for _ in 0..4 {
        fleet.add();
    }
    let start = Instant::now();
    let held = fleet
        .run_until(Duration::from_secs(60), |now| now.len() == 64)
        .await
        .expect("every lease processed");
    let even = fleet
        .run_until(Duration::from_secs(60), |_| true)
        .await
        .and_then(|_| fleet.balanced().then(|| start.elapsed()));
    // The leader waits one heartbeat interval for the workers it does not know yet, then
    // splits evenly in one round: no lease moves afterwards.
    eprintln!("held after {held:?}, even {even:?}");
    assert!(
        held <= FAILOVER / 3 + Duration::from_secs(3),
        "held after {held:?}"
    );
    assert!(even.is_some(), "uneven: {:?}", fleet.counts());
    let before: HashMap<String, usize> = fleet.look();
    fleet.run_for(Duration::from_secs(120)).await;
    assert_eq!(fleet.look(), before, "a fleet at rest makes no moves");
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_gets_its_share_within_two_assignment_rounds() {
    let mut fleet = Fleet::new(30).await;
    for _ in 0..3 {
        fleet.add();
    }
    steady(&mut fleet, 30).await;
    let new = fleet.add();
    // Its first heartbeat shows it alive at the next fleet watch; then one round asks the
    // others to hand leases over, which they do at once (100 ms to finish).
    let took = fleet
        .run_until(Duration::from_secs(30), |now| {
            now.values().filter(|w| **w == new).count() >= 7
        })
        .await
        .expect("the new worker got its share");
    assert!(
        took <= FAILOVER / 3 + 2 * Duration::from_secs(2) + Duration::from_secs(2),
        "{took:?}"
    );
    fleet.run_for(Duration::from_secs(5)).await;
    assert!(fleet.balanced(), "{:?}", fleet.counts());
}

/// Calls of `operation` a member made during `run`.
fn counted<Op: Ord + Copy>(before: &BTreeMap<Op, u64>, after: &BTreeMap<Op, u64>, op: Op) -> u64 {
    after.get(&op).copied().unwrap_or(0) - before.get(&op).copied().unwrap_or(0)
}

/// A lone worker (`kinesis consume` on its own): its leader must not wait an assignment
/// interval when its own row was not written yet at its first look, its discovery starts
/// what its leader gave it at once, and while alone it lists the worker rows and its own
/// leases a quarter as often. A worker that joins still gets its share, and the pace comes
/// back with it.
#[tokio::test(start_paused = true)]
async fn a_lone_worker_starts_at_once_and_coordinates_less_until_another_joins() {
    let mut fleet = Fleet::new(8).await;
    let late_row = FaultRule::new(
        [CoordinatorOperation::WriteWorker],
        Fault::Delay(Duration::from_millis(200)),
    )
    .times(1);
    let lone = fleet.add_faulty(None, Some(late_row));
    let started = fleet
        .run_until(Duration::from_secs(30), |now| now.len() == 8)
        .await
        .expect("the lone worker processes every lease");
    // Its row shows at the second look, 0.5 s in; without the settle check it waited for
    // the next round, 2 s in.
    assert!(
        started <= Duration::from_secs(1),
        "started after {started:?}"
    );

    let calls = |fleet: &Fleet| {
        let member = &fleet.members[lone];
        (member.leases.calls(), member.coordination.calls())
    };
    let before = calls(&fleet);
    fleet.run_for(Duration::from_secs(20)).await;
    let after = calls(&fleet);
    let looks = counted(&before.1, &after.1, CoordinatorOperation::ListWorkers);
    let discoveries = counted(&before.0, &after.0, Operation::ListOwnedKeys);
    // At the full pace (every 0.5 s at a 10 s failover time) each would be 40.
    assert!(
        looks <= 12,
        "{looks} looks at the worker rows in 20 s alone"
    );
    assert!(discoveries <= 12, "{discoveries} discoveries in 20 s alone");

    let joined = fleet.add();
    let took = fleet
        .run_until(Duration::from_secs(30), |now| {
            now.values().filter(|w| **w == joined).count() >= 4
        })
        .await
        .expect("the worker that joined got its share");
    assert!(took <= Duration::from_secs(8), "share after {took:?}");
    let before = calls(&fleet);
    fleet.run_for(Duration::from_secs(10)).await;
    let after = calls(&fleet);
    let looks = counted(&before.1, &after.1, CoordinatorOperation::ListWorkers);
    assert!(looks >= 16, "{looks} looks in 10 s with two workers");
    assert!(fleet.balanced(), "{:?}", fleet.counts());
}

/// The failure paths around a lone leader's slower pace: its listings of the worker rows
/// fail (5xx) for 5 s while a second worker joins, then that worker is killed once it has
/// its share. It still gets its share soon after the listings answer again, and its
/// leases are taken back within 1.2x the failover time, as with any other worker.
#[tokio::test(start_paused = true)]
async fn a_worker_joining_a_lone_leader_whose_looks_fail_gets_its_share_and_is_taken_over() {
    let mut fleet = Fleet::new(8).await;
    let lone = fleet.add();
    fleet
        .run_until(Duration::from_secs(30), |now| now.len() == 8)
        .await
        .expect("the lone worker processes every lease");
    fleet.run_for(Duration::from_secs(5)).await;
    let failing = Duration::from_secs(5);
    let start = Instant::now();
    fleet.members[lone].coordination.inject(
        FaultRule::new([CoordinatorOperation::ListWorkers], Fault::ServerError)
            .window(start, start + failing),
    );
    let joined = fleet.add();
    let took = fleet
        .run_until(Duration::from_secs(60), |now| {
            now.values().filter(|w| **w == joined).count() >= 4
        })
        .await
        .expect("the worker that joined got its share");
    assert!(
        took >= failing && took <= failing + Duration::from_secs(8),
        "share after {took:?}"
    );
    let took = takeover(&mut fleet, &[joined]).await;
    assert!(took <= FAILOVER * 6 / 5, "taken over after {took:?}");
}

/// Kills `victims` and returns how long until survivors process every lease the victims
/// processed.
async fn takeover(fleet: &mut Fleet, victims: &[usize]) -> Duration {
    let before = fleet.look();
    let orphans: Vec<String> = before
        .iter()
        .filter(|(_, w)| victims.contains(w))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!orphans.is_empty());
    for victim in victims {
        fleet.members[*victim].worker.kill();
    }
    fleet
        .run_until(Duration::from_secs(60), |now| {
            orphans
                .iter()
                .all(|k| now.get(k).is_some_and(|w| !victims.contains(w)))
        })
        .await
        .expect("the orphans were taken over")
}

#[tokio::test(start_paused = true)]
async fn a_killed_leader_and_another_worker_are_taken_over_within_1_2x_failover_at_every_phase() {
    let mut worst = Duration::ZERO;
    for phase in 0..6u32 {
        let mut fleet = Fleet::new(40).await;
        for _ in 0..5 {
            fleet.add();
        }
        steady(&mut fleet, 40).await;
        // Another point of the heartbeat, watch and assignment cycles each time.
        tokio::time::sleep(Duration::from_millis(557) * phase).await;
        let leader = fleet.leader().expect("a leader");
        let other = (leader + 1) % 5;
        let took = takeover(&mut fleet, &[leader, other]).await;
        worst = worst.max(took);
        assert!(
            fleet.leader().is_some_and(|l| l != leader),
            "a successor leads"
        );
    }
    eprintln!("worst takeover {worst:?}");
    assert!(worst <= FAILOVER * 6 / 5, "worst takeover {worst:?}");
}

#[tokio::test(start_paused = true)]
async fn a_killed_worker_is_taken_over_within_1_2x_failover() {
    let mut fleet = Fleet::new(40).await;
    for _ in 0..4 {
        fleet.add();
    }
    steady(&mut fleet, 40).await;
    let leader = fleet.leader().expect("a leader");
    let victim = (leader + 2) % 4;
    let took = takeover(&mut fleet, &[victim]).await;
    eprintln!("took {took:?}");
    assert!(took <= FAILOVER * 6 / 5, "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_paused_leader_stops_leading_before_another_starts() {
    let mut fleet = Fleet::new(30).await;
    for _ in 0..3 {
        fleet.add();
    }
    steady(&mut fleet, 30).await;
    let old = fleet.leader().expect("a leader");
    // SIGSTOP, as the others see it: none of its calls arrive.
    fleet.members[old]
        .leases
        .inject(FaultRule::all(Fault::Hang));
    fleet.members[old]
        .coordination
        .inject(FaultRule::all(Fault::Hang));
    let mut leaders_seen = HashSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(40) {
        fleet.run_for(TICK).await;
        let acting: Vec<usize> = (0..3)
            .filter(|i| fleet.members[*i].worker.is_leader())
            .collect();
        assert!(acting.len() <= 1, "two leaders act at once: {acting:?}");
        leaders_seen.extend(acting);
    }
    let new = fleet.leader().expect("a new leader");
    assert_ne!(new, old);
    // Its leases went to the others; SIGCONT: it learns it lost everything.
    fleet.members[old].leases.clear();
    fleet.members[old].coordination.clear();
    fleet.run_for(Duration::from_secs(30)).await;
    assert_eq!(fleet.leader(), Some(new));
    assert!(fleet.all_processed(30));
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_lease_table_scans_hang_gives_up_and_leases_still_move() {
    let mut fleet = Fleet::new(30).await;
    for _ in 0..3 {
        fleet.add();
    }
    steady(&mut fleet, 30).await;
    let old = fleet.leader().expect("a leader");
    fleet.members[old]
        .leases
        .inject(FaultRule::new([Operation::ListLeases], Fault::Hang));
    let victim = (old + 1) % 3;
    let took = takeover(&mut fleet, &[victim]).await;
    let new = fleet.leader().expect("a leader");
    assert_ne!(new, old, "the leader that cannot scan gave up");
    assert!(took <= FAILOVER * 2, "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn two_leaders_at_once_never_give_a_lease_two_processors() {
    // Two halves of the fleet with coordinator tables of their own: two leaders, one lease
    // table. Every write is conditional on the lease as each leader saw it.
    let mut fleet = Fleet::new(40).await;
    let other_tables = Arc::new(MemoryCoordinatorStore::new());
    for i in 0..6 {
        if i % 2 == 0 {
            fleet.add();
        } else {
            fleet.add_with(Some(other_tables.clone()));
        }
    }
    let settled = fleet
        .run_until(Duration::from_secs(60), |now| now.len() == 40)
        .await;
    assert!(settled.is_some());
    let leaders = (0..6)
        .filter(|i| fleet.members[*i].worker.is_leader())
        .count();
    assert_eq!(leaders, 2, "one per table");
    // Kills, moves and expiries under two leaders.
    let victim = (0..6)
        .find(|i| !fleet.members[*i].worker.is_leader())
        .unwrap_or(0);
    fleet.members[victim].worker.kill();
    fleet.run_for(Duration::from_secs(60)).await;
    assert!(fleet.all_processed(40), "{:?}", fleet.counts());
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_misses_an_assignment_discovers_it_later() {
    let mut fleet = Fleet::new(20).await;
    for _ in 0..2 {
        fleet.add();
    }
    steady(&mut fleet, 20).await;
    let late = fleet.add();
    // Its owner-index queries fail for 8 s: leases assigned to it wait.
    let now = Instant::now();
    fleet.members[late].leases.inject(
        FaultRule::new([Operation::ListOwnedKeys], Fault::ServerError)
            .window(now, now + Duration::from_secs(8)),
    );
    fleet.run_for(Duration::from_secs(7)).await;
    assert_eq!(fleet.counts()[&late], 0);
    let got = fleet
        .run_until(Duration::from_secs(20), |now| {
            now.values().filter(|w| **w == late).count() >= 6
        })
        .await;
    assert!(got.is_some(), "{:?}", fleet.counts());
}

#[tokio::test(start_paused = true)]
async fn an_assignment_to_a_worker_that_just_died_is_given_to_another() {
    let mut fleet = Fleet::new(20).await;
    for _ in 0..2 {
        fleet.add();
    }
    steady(&mut fleet, 20).await;
    let doomed = fleet.add();
    // It is alive long enough for the leader to move leases to it, then dies before it
    // took them.
    fleet.members[doomed]
        .leases
        .inject(FaultRule::new([Operation::TakeLease], Fault::Hang));
    let assigned = fleet.run_until(Duration::from_secs(20), |_| false).await;
    assert!(assigned.is_none());
    let named = fleet
        .leases
        .list_lease_keys_owned_by(fleet.members[doomed].worker.worker_id())
        .await
        .unwrap();
    assert!(!named.is_empty(), "the leader gave it leases");
    fleet.members[doomed].worker.kill();
    let taken = fleet
        .run_until(Duration::from_secs(30), |now| now.len() == 20)
        .await;
    assert!(
        taken.is_some(),
        "every lease processed again: {:?}",
        fleet.counts()
    );
}

#[tokio::test(start_paused = true)]
async fn losing_the_leader_never_stops_processing() {
    let mut fleet = Fleet::new(30).await;
    for _ in 0..3 {
        fleet.add();
    }
    steady(&mut fleet, 30).await;
    let leader = fleet.leader().expect("a leader");
    let before = fleet.look();
    // No leader for good: the others cannot read or take the lock.
    for i in (0..3).filter(|i| *i != leader) {
        fleet.members[i].coordination.inject(FaultRule::new(
            [
                CoordinatorOperation::ReadLock,
                CoordinatorOperation::AcquireLock,
            ],
            Fault::ServerError,
        ));
    }
    fleet.members[leader].worker.kill();
    fleet.run_for(Duration::from_secs(300)).await;
    assert_eq!(fleet.leader(), None);
    let now = fleet.look();
    for (key, worker) in before.iter().filter(|(_, w)| **w != leader) {
        assert_eq!(
            now.get(key),
            Some(worker),
            "{key} still processed where it was"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn throttled_renewals_lose_leases_but_never_give_one_two_processors() {
    let mut fleet = Fleet::new(40).await;
    for _ in 0..4 {
        fleet.add();
    }
    steady(&mut fleet, 40).await;
    for member in &fleet.members {
        member.leases.seed(3);
        member
            .leases
            .inject(FaultRule::new([Operation::RenewLease], Fault::Throttle).probability(0.7));
    }
    fleet.run_for(Duration::from_secs(180)).await;
    for member in &fleet.members {
        member.leases.clear();
    }
    let recovered = fleet
        .run_until(Duration::from_secs(60), |now| now.len() == 40)
        .await;
    assert!(recovered.is_some(), "{:?}", fleet.counts());
}
