//! The election on tokio's paused clock, with an in-memory lock that can lose answers and
//! hang calls.

use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;

use super::*;
use crate::leases::coordination::{MemoryCoordinatorStore, WorkerRow, LEADER_LOCK_KEY};

const LOCK: Duration = Duration::from_secs(5);
const FAILOVER: Duration = Duration::from_secs(10);

/// The memory store, with lock writes that can be applied with their answer lost, or hang.
#[derive(Default)]
struct Faulty {
    inner: MemoryCoordinatorStore,
    lose_answers: AtomicU32,
    hang: std::sync::atomic::AtomicBool,
}

impl Faulty {
    async fn fault<T>(&self, result: Result<T, LeaseStoreError>) -> Result<T, LeaseStoreError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if result.is_ok()
            && self
                .lose_answers
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(LeaseStoreError::Timeout(Duration::from_secs(1)));
        }
        result
    }
}

#[async_trait]
impl CoordinatorStore for Faulty {
    async fn create_tables_if_missing(&self) -> Result<(), LeaseStoreError> {
        Ok(())
    }
    async fn read_lock(&self, key: &str) -> Result<Option<LockItem>, LeaseStoreError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.read_lock(key).await
    }
    async fn acquire_lock(
        &self,
        previous: Option<&LockItem>,
        lock: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        let result = self.inner.acquire_lock(previous, lock).await;
        self.fault(result).await
    }
    async fn renew_lock(
        &self,
        current: &LockItem,
        renewed: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        let result = self.inner.renew_lock(current, renewed).await;
        self.fault(result).await
    }
    async fn release_lock(&self, current: &LockItem) -> Result<(), LeaseStoreError> {
        self.inner.release_lock(current).await
    }
    async fn read_worker(&self, worker_id: &str) -> Result<Option<WorkerRow>, LeaseStoreError> {
        self.inner.read_worker(worker_id).await
    }
    async fn write_worker(
        &self,
        row: &WorkerRow,
        previous: Option<&WorkerRow>,
    ) -> Result<WorkerRow, LeaseStoreError> {
        self.inner.write_worker(row, previous).await
    }
    async fn name_successor(
        &self,
        worker_id: &str,
        lock_key: &str,
        named: bool,
    ) -> Result<(), LeaseStoreError> {
        self.inner.name_successor(worker_id, lock_key, named).await
    }
    async fn list_workers(&self) -> Result<Vec<WorkerRow>, LeaseStoreError> {
        self.inner.list_workers().await
    }
    async fn fence_worker(&self, worker_id: &str, heartbeat: u64) -> Result<(), LeaseStoreError> {
        self.inner.fence_worker(worker_id, heartbeat).await
    }
    async fn delete_worker(&self, row: &WorkerRow) -> Result<(), LeaseStoreError> {
        self.inner.delete_worker(row).await
    }
}

fn config(worker: &str) -> ElectionConfig {
    ElectionConfig {
        worker_id: worker.into(),
        lock_key: LEADER_LOCK_KEY.into(),
        lock_duration: LOCK,
        request_timeout: Duration::from_millis(2500),
        successor_poll: Duration::from_secs(1),
        follower_poll: FAILOVER,
        metrics: crate::metrics::WorkerLabels::new("app", worker),
    }
}

/// Workers stepping the election as their tasks would, each on its own schedule; a
/// worker whose `running` flag is off does nothing (killed or paused).
struct Fleet {
    workers: Vec<(Arc<Election>, Instant, bool)>,
}

impl Fleet {
    fn new(store: Arc<dyn CoordinatorStore>, n: usize) -> Fleet {
        let workers = (0..n)
            .map(|i| {
                let election = Arc::new(Election::new(store.clone(), config(&format!("w{i}"))));
                (election, Instant::now(), true)
            })
            .collect();
        Fleet { workers }
    }

    fn names(&self) -> Vec<String> {
        (0..self.workers.len()).map(|i| format!("w{i}")).collect()
    }

    /// Runs every running worker's due steps for `duration`, in 50 ms ticks, checking
    /// after each tick that at most one worker acts as leader.
    async fn run_for(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let names = self.names();
            for (election, next, running) in &mut self.workers {
                if *running && Instant::now() >= *next {
                    let me = election.config.worker_id.clone();
                    let successors: Vec<String> = names
                        .iter()
                        .filter(|n| **n != me)
                        .take(SUCCESSORS)
                        .cloned()
                        .collect();
                    let pause = election.step(successors).await;
                    *next = Instant::now() + pause;
                }
            }
            let leaders: Vec<&str> = self
                .workers
                .iter()
                .filter(|(e, _, _)| e.is_leader())
                .map(|(e, _, _)| e.config.worker_id.as_str())
                .collect();
            assert!(leaders.len() <= 1, "two leaders act at once: {leaders:?}");
            tokio::time::advance(Duration::from_millis(50)).await;
        }
    }

    fn leader(&self) -> Option<usize> {
        self.workers.iter().position(|(e, _, _)| e.is_leader())
    }
}

#[tokio::test(start_paused = true)]
async fn one_leader_is_elected_and_names_its_successors() {
    let store: Arc<dyn CoordinatorStore> = Arc::new(MemoryCoordinatorStore::new());
    let mut fleet = Fleet::new(store.clone(), 4);
    fleet.run_for(Duration::from_secs(30)).await;
    let leader = fleet.leader().expect("a leader");
    let lock = store.read_lock(LEADER_LOCK_KEY).await.unwrap().unwrap();
    assert_eq!(lock.owner, format!("w{leader}"));
    assert_eq!(
        lock.successors.len(),
        SUCCESSORS.min(3),
        "every other worker, up to four"
    );
    assert_eq!(lock.lease_duration, LOCK);
    let roles: Vec<Role> = fleet.workers.iter().map(|(e, _, _)| e.role()).collect();
    assert_eq!(
        roles.iter().filter(|r| **r == Role::Successor).count(),
        SUCCESSORS.min(3),
        "{roles:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_leader_is_replaced_by_a_successor_within_the_failover_time() {
    let store: Arc<dyn CoordinatorStore> = Arc::new(MemoryCoordinatorStore::new());
    let mut fleet = Fleet::new(store.clone(), 4);
    fleet.run_for(Duration::from_secs(20)).await;
    let old = fleet.leader().unwrap();
    let successors = store
        .read_lock(LEADER_LOCK_KEY)
        .await
        .unwrap()
        .unwrap()
        .successors;
    fleet.workers[old].2 = false; // kill -9
    let killed = Instant::now();
    while fleet.leader().is_none_or(|l| l == old) {
        fleet.run_for(Duration::from_millis(50)).await;
        assert!(
            killed.elapsed() < FAILOVER,
            "not replaced within the failover time"
        );
    }
    let new = fleet.leader().unwrap();
    assert!(
        successors.contains(&format!("w{new}")),
        "a successor took over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_leader_stops_before_another_starts_and_learns_it_lost() {
    let store: Arc<dyn CoordinatorStore> = Arc::new(MemoryCoordinatorStore::new());
    let mut fleet = Fleet::new(store.clone(), 3);
    fleet.run_for(Duration::from_secs(10)).await;
    let old = fleet.leader().unwrap();
    fleet.workers[old].2 = false; // SIGSTOP: no steps, but its clock runs
                                  // `run_for` asserts at every tick that at most one acts: the paused leader's deadline
                                  // passes before a successor may take over.
    fleet.run_for(Duration::from_secs(20)).await;
    let new = fleet.leader().unwrap();
    assert_ne!(new, old);
    fleet.workers[old].2 = true; // SIGCONT
    fleet.run_for(Duration::from_secs(5)).await;
    assert_eq!(fleet.leader(), Some(new));
    assert_ne!(fleet.workers[old].0.role(), Role::Leader);
}

#[tokio::test(start_paused = true)]
async fn a_lock_heartbeat_applied_with_its_answer_lost_keeps_the_leadership() {
    let faulty = Arc::new(Faulty::default());
    let store: Arc<dyn CoordinatorStore> = faulty.clone();
    let election = Election::new(store.clone(), config("w0"));
    election.step(vec![]).await;
    assert!(election.is_leader());
    faulty.lose_answers.store(1, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    election.step(vec![]).await; // applied, answer lost
    let deadline = election.leading_until().unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    election.step(vec![]).await; // its condition fails: read back, adopted
    assert!(election.is_leader());
    assert!(
        election.leading_until().unwrap() > deadline,
        "the applied write moved the deadline"
    );
    let lock = store.read_lock(LEADER_LOCK_KEY).await.unwrap().unwrap();
    assert_eq!(lock.owner, "w0");
}

#[tokio::test(start_paused = true)]
async fn a_lock_taken_with_its_answer_lost_is_known_taken() {
    let faulty = Arc::new(Faulty::default());
    let store: Arc<dyn CoordinatorStore> = faulty.clone();
    let election = Election::new(store.clone(), config("w0"));
    faulty.lose_answers.store(1, Ordering::SeqCst);
    election.step(vec![]).await;
    assert!(election.is_leader(), "read back: the put was applied");
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_calls_hang_stops_leading_at_its_deadline() {
    let faulty = Arc::new(Faulty::default());
    let store: Arc<dyn CoordinatorStore> = faulty.clone();
    let election = Arc::new(Election::new(store.clone(), config("w0")));
    election.step(vec![]).await;
    let until = election.leading_until().unwrap();
    faulty.hang.store(true, Ordering::SeqCst);
    let task = tokio::spawn(elect_forever(election.clone(), Vec::new, || {}));
    tokio::time::sleep_until(until).await;
    assert!(
        !election.is_leader(),
        "no heartbeat succeeded: not leading past the deadline"
    );
    assert!(until <= Instant::now());
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_java_leaders_lock_is_respected_for_its_lease_duration() {
    let memory = Arc::new(MemoryCoordinatorStore::new());
    // The Java KCL 3's lock: 120 s, no successors.
    let java = LockItem::new(
        LEADER_LOCK_KEY,
        "java-worker",
        Duration::from_secs(120),
        Vec::new(),
    );
    memory.put_lock_item(java);
    let store: Arc<dyn CoordinatorStore> = memory.clone();
    let mut fleet = Fleet::new(store, 2);
    fleet.run_for(Duration::from_secs(100)).await;
    assert_eq!(
        fleet.leader(),
        None,
        "a live-looking Java lock is not taken"
    );
    // The Java leader died: its version never changed. Ours wait its lease duration plus
    // twice their poll interval.
    fleet.run_for(Duration::from_secs(60)).await;
    assert!(fleet.leader().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_released_lock_is_taken_at_the_next_look() {
    let store: Arc<dyn CoordinatorStore> = Arc::new(MemoryCoordinatorStore::new());
    let mut fleet = Fleet::new(store.clone(), 3);
    fleet.run_for(Duration::from_secs(10)).await;
    let old = fleet.leader().unwrap();
    fleet.workers[old].0.release().await;
    fleet.workers[old].2 = false;
    let released = Instant::now();
    while fleet.leader().is_none() {
        fleet.run_for(Duration::from_millis(50)).await;
    }
    assert!(
        released.elapsed() <= Duration::from_millis(1100),
        "{:?}",
        released.elapsed()
    );
}
