//! The leader's decision, from one listing of the lease table and its view of the fleet:
//! which leases go where. Pure: the I/O is in `assigner.rs`.
//!
//! 1. **Free leases** go to the workers that take leases (alive, not stopping), the least
//!    loaded first (fewest leases, then least throughput), at once: leases without an
//!    owner, leases whose counter the leader has not seen change for the failover time,
//!    and leases of dead workers (after their row is fenced). Their previous holder has
//!    stopped, so the new owner starts at once. A lease whose graceful handoff was under
//!    way goes to the worker it was going to, when that one takes leases.
//! 2. **Handoffs to dead workers** are cancelled: the lease stays with its holder.
//! 3. **Balancing**, by graceful handoff: throughput first (as
//!    [`ThroughputBalancing`](crate::leases::ThroughputBalancing) describes: a worker under
//!    the mean by more than the threshold gets, from the most loaded worker, its largest
//!    lease carrying at most half the gap; each worker gives or gets at most one such
//!    lease a round), then CPU when [`CpuBalancing`] is on (one lease a round, and not
//!    again from or to a worker until it has reported afresh), then counts: leases move
//!    from the worker with the most to the one with the fewest until they differ by at
//!    most one, never to a worker over the mean throughput (or CPU) by more than the
//!    threshold. Every rule narrows a gap and none reverses one: a fleet at rest makes no
//!    moves. A lease moved by balancing a moment ago stays where it went until its new
//!    holder has measured it (the leader's settle time): read at its new holder's first,
//!    partial figure, it would look like the coldest lease there and go back by count.
//!
//! Leases held by workers the leader does not know (no row: a Java KCL 2 worker, or one
//! not seen alive yet) are left alone unless they expire.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::fleet::WorkerView;
use crate::lease::Lease;
use crate::leases::ThroughputBalancing;

/// Balancing workers by their CPU utilisation, as the Java KCL 3 does with its worker
/// metrics: each worker reports its host's CPU utilisation in its row, and the leader moves
/// a lease from the busiest worker to the least busy one when both are off the fleet's
/// mean by more than `threshold` of it and at least `min_gap_percent` apart. One lease a
/// round, and not again from or to a worker until it has reported afresh. Off by default.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CpuBalancing {
    /// How far from the mean, as a fraction of it, a worker's CPU utilisation may be
    /// before a lease moves (default 0.1, the Java KCL 3's `reBalanceThresholdPercentage`
    /// 10).
    pub threshold: f64,
    /// The least gap, in percentage points, between two workers' utilisation that moves a
    /// lease (default 10).
    pub min_gap_percent: f64,
}

impl Default for CpuBalancing {
    fn default() -> Self {
        CpuBalancing {
            threshold: 0.1,
            min_gap_percent: 10.0,
        }
    }
}

/// The leader's settings.
#[derive(Clone, Debug)]
pub(crate) struct PlanConfig {
    /// The most leases per worker when its row does not say.
    pub max_leases_per_worker: usize,
    pub throughput: Option<ThroughputBalancing>,
    pub cpu: Option<CpuBalancing>,
}

/// What one round sees.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FleetView<'a> {
    /// Every lease in the table.
    pub leases: &'a [Lease],
    /// Keys of the leases whose counter the leader has not seen change for the failover
    /// time.
    pub expired: &'a HashSet<String>,
    /// Every worker with a row.
    pub workers: &'a BTreeMap<String, WorkerView>,
    /// Workers not to move leases from or to for CPU (they have not reported since their
    /// last move).
    pub cpu_cooling: &'a HashSet<String>,
    /// Keys of the leases moved by balancing a moment ago: not moved again by balancing.
    pub recently_moved: &'a HashSet<String>,
}

/// A lease to give to a worker directly: its previous holder has stopped.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Assignment {
    pub lease: Lease,
    pub to: String,
    /// The dead worker whose row must be fenced first.
    pub after_fence: Option<String>,
}

/// Why a lease moves by graceful handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MoveReason {
    Throughput,
    Cpu,
    Count,
}

/// What a round does.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct AssignmentPlan {
    /// Dead workers to fence (worker and the heartbeat it was found dead at).
    pub fence: BTreeMap<String, u64>,
    pub assign: Vec<Assignment>,
    /// Graceful handoffs: the lease, the worker it goes to, why.
    pub handoffs: Vec<(Lease, String, MoveReason)>,
    /// Handoffs under way to a dead worker, to undo.
    pub cancel: Vec<Lease>,
    /// Leases taken from workers without a row (a Java KCL 2.x worker takes its own
    /// leases and knows no handoff): the lease and the worker it goes to, which starts
    /// after the holder's deadline, as a Java KCL 2.x steal.
    pub steals: Vec<(Lease, String)>,
    /// Free leases no worker could take (every one at its maximum).
    pub unplaced: usize,
}

/// A worker that takes leases, as the round goes.
#[derive(Debug)]
struct Taker<'a> {
    id: &'a str,
    count: usize,
    load: f64,
    cap: usize,
    cpu: Option<f64>,
    /// Leases counted for it that may move (held, no handoff under way).
    movable: Vec<&'a Lease>,
}

pub(crate) fn plan_assignments(view: FleetView<'_>, config: &PlanConfig) -> AssignmentPlan {
    let mut plan = AssignmentPlan::default();
    let mut takers: BTreeMap<&str, Taker<'_>> = view
        .workers
        .iter()
        .filter(|(_, w)| w.takes_leases())
        .map(|(id, w)| {
            let taker = Taker {
                id,
                count: 0,
                load: 0.0,
                cap: w.max_leases.unwrap_or(config.max_leases_per_worker),
                cpu: w.cpu,
                movable: Vec::new(),
            };
            (id.as_str(), taker)
        })
        .collect();
    let dead = |id: &str| view.workers.get(id).is_some_and(|w| w.is_dead());
    // Live leases of workers without a row (taking their own leases).
    let mut foreign: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    // Free leases: the worker each should go to, if any, and the one it should not (a
    // worker alive by its heartbeat that let the lease expire, or never took it: its lease
    // table calls may be failing).
    let mut free: Vec<(&Lease, Option<&str>, Option<&str>)> = Vec::new();
    for lease in view.leases.iter().filter(|l| !l.is_finished()) {
        let holder = lease.actual_owner();
        let holder_gone = match holder {
            None => true,
            Some(holder) => dead(holder) || view.expired.contains(&lease.lease_key),
        };
        if holder_gone {
            if let Some(holder) = holder.filter(|h| dead(h)) {
                if let Some(worker) = view.workers.get(holder) {
                    if worker.state == super::fleet::WorkerState::Dead {
                        if let Some(heartbeat) = worker.heartbeat {
                            plan.fence.insert(holder.to_owned(), heartbeat);
                        }
                    }
                }
            }
            // A handoff under way goes on to the worker it was going to.
            let preferred = lease
                .handoff_pending()
                .then_some(lease.lease_owner.as_deref())
                .flatten();
            let avoid = holder.filter(|h| !dead(h));
            free.push((lease, preferred, avoid));
            continue;
        }
        if lease.handoff_pending() {
            let target = lease.lease_owner.as_deref().unwrap_or_default();
            if dead(target) {
                plan.cancel.push(lease.clone());
                if let Some(taker) = holder.and_then(|h| takers.get_mut(h)) {
                    taker.count += 1;
                    taker.load += lease.throughput_kbps.unwrap_or(0.0);
                }
            } else if let Some(taker) = takers.get_mut(target) {
                taker.count += 1;
                taker.load += lease.throughput_kbps.unwrap_or(0.0);
            }
            continue;
        }
        if let Some(taker) = holder.and_then(|h| takers.get_mut(h)) {
            taker.count += 1;
            taker.load += lease.throughput_kbps.unwrap_or(0.0);
            if !view.recently_moved.contains(&lease.lease_key) {
                taker.movable.push(lease);
            }
        } else if let Some(holder) = holder.filter(|h| !view.workers.contains_key(*h)) {
            foreign.entry(holder).or_default().push(lease);
        }
    }

    // 1. Free leases.
    free.sort_by(|a, b| a.0.lease_key.cmp(&b.0.lease_key));
    for (lease, preferred, avoid) in free {
        let to = preferred
            .filter(|p| Some(*p) != avoid && takers.get(p).is_some_and(|t| t.count < t.cap))
            .or_else(|| least_loaded(&takers, |t| Some(t.id) != avoid))
            .or_else(|| least_loaded(&takers, |_| true))
            .map(str::to_owned);
        let Some(to) = to else {
            plan.unplaced += 1;
            continue;
        };
        if let Some(taker) = takers.get_mut(to.as_str()) {
            taker.count += 1;
            taker.load += lease.throughput_kbps.unwrap_or(0.0);
        }
        let after_fence = lease
            .actual_owner()
            .filter(|h| plan.fence.contains_key(*h))
            .map(str::to_owned);
        plan.assign.push(Assignment {
            lease: lease.clone(),
            to,
            after_fence,
        });
    }
    if takers.len() < 2 {
        foreign_steals(&mut takers, foreign, &mut plan);
        return plan;
    }

    // 2. Balancing.
    let mut moved: BTreeSet<&str> = BTreeSet::new();
    if let Some(balancing) = &config.throughput {
        throughput_moves(&mut takers, balancing, &mut moved, &mut plan);
    }
    if let Some(balancing) = &config.cpu {
        cpu_move(
            &mut takers,
            balancing,
            view.cpu_cooling,
            &mut moved,
            &mut plan,
        );
    }
    count_moves(&mut takers, config, &mut moved, &mut plan);
    foreign_steals(&mut takers, foreign, &mut plan);
    plan
}

/// Balancing against workers without a row, by their rule: one lease a round from each,
/// only while it holds at least two more than the least loaded worker that takes leases
/// (so the two rules meet within one lease and never undo each other).
fn foreign_steals<'a>(
    takers: &mut BTreeMap<&'a str, Taker<'a>>,
    foreign: BTreeMap<&'a str, Vec<&'a Lease>>,
    plan: &mut AssignmentPlan,
) {
    let mut donors: Vec<(&str, Vec<&Lease>)> = foreign.into_iter().collect();
    donors.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    for (_, leases) in donors {
        let Some(to) = least_loaded(takers, |_| true) else {
            return;
        };
        let to_count = takers.get(to).map_or(0, |t| t.count);
        if leases.len() < to_count + 2 {
            continue;
        }
        let Some(lease) = leases.iter().copied().min_by(|a, b| {
            a.throughput_kbps
                .unwrap_or(0.0)
                .total_cmp(&b.throughput_kbps.unwrap_or(0.0))
                .then(a.lease_key.cmp(&b.lease_key))
        }) else {
            continue;
        };
        if let Some(taker) = takers.get_mut(to) {
            taker.count += 1;
            taker.load += lease.throughput_kbps.unwrap_or(0.0);
        }
        plan.steals.push((lease.clone(), to.to_owned()));
    }
}

/// The taker with the fewest leases (then the least load, then the first name) among
/// those under their cap that `allowed` admits.
fn least_loaded<'a>(
    takers: &BTreeMap<&'a str, Taker<'_>>,
    allowed: impl Fn(&Taker<'_>) -> bool,
) -> Option<&'a str> {
    takers
        .iter()
        .filter(|(_, t)| t.count < t.cap && allowed(t))
        .min_by(|a, b| {
            a.1.count
                .cmp(&b.1.count)
                .then(a.1.load.total_cmp(&b.1.load))
                .then(a.0.cmp(b.0))
        })
        .map(|(id, _)| *id)
}

fn mean(values: impl Iterator<Item = f64>, n: usize) -> f64 {
    values.sum::<f64>() / n.max(1) as f64
}

/// Moves `lease` from `from` to `to` in the plan and the takers' figures.
fn move_lease<'a>(
    takers: &mut BTreeMap<&'a str, Taker<'a>>,
    from: &'a str,
    to: &'a str,
    lease: &'a Lease,
    reason: MoveReason,
    moved: &mut BTreeSet<&'a str>,
    plan: &mut AssignmentPlan,
) {
    let throughput = lease.throughput_kbps.unwrap_or(0.0);
    if let Some(donor) = takers.get_mut(from) {
        donor.count -= 1;
        donor.load -= throughput;
        donor.movable.retain(|l| l.lease_key != lease.lease_key);
    }
    if let Some(taker) = takers.get_mut(to) {
        taker.count += 1;
        taker.load += throughput;
    }
    moved.insert(&lease.lease_key);
    plan.handoffs.push((lease.clone(), to.to_owned(), reason));
}

fn throughput_moves<'a>(
    takers: &mut BTreeMap<&'a str, Taker<'a>>,
    balancing: &ThroughputBalancing,
    moved: &mut BTreeSet<&'a str>,
    plan: &mut AssignmentPlan,
) {
    let mean = mean(takers.values().map(|t| t.load), takers.len());
    let margin = balancing.threshold * mean;
    let mut used: HashSet<&str> = HashSet::new();
    loop {
        let donor = takers
            .values()
            .filter(|t| !used.contains(t.id))
            .max_by(|a, b| a.load.total_cmp(&b.load).then(b.id.cmp(a.id)));
        let taker = takers
            .values()
            .filter(|t| !used.contains(t.id) && t.count < t.cap)
            .min_by(|a, b| a.load.total_cmp(&b.load).then(a.id.cmp(b.id)));
        let (Some(donor), Some(taker)) = (donor, taker) else {
            return;
        };
        let gap = donor.load - taker.load;
        if donor.id == taker.id
            || donor.load - mean <= margin
            || mean - taker.load <= margin
            || gap < balancing.min_gap_kbps
        {
            return;
        }
        let lease = donor
            .movable
            .iter()
            .copied()
            .map(|l| (l, l.throughput_kbps.unwrap_or(0.0)))
            .filter(|(_, throughput)| *throughput <= gap / 2.0)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.lease_key.cmp(&a.0.lease_key)))
            .map(|(lease, _)| lease);
        let (from, to) = (donor.id, taker.id);
        used.insert(from);
        used.insert(to);
        if let Some(lease) = lease {
            move_lease(takers, from, to, lease, MoveReason::Throughput, moved, plan);
        }
    }
}

fn cpu_move<'a>(
    takers: &mut BTreeMap<&'a str, Taker<'a>>,
    balancing: &CpuBalancing,
    cooling: &HashSet<String>,
    moved: &mut BTreeSet<&'a str>,
    plan: &mut AssignmentPlan,
) {
    // Only when every worker reports.
    let Some(cpus) = takers
        .values()
        .map(|t| t.cpu.map(|c| (t.id, c)))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let mean = mean(cpus.iter().map(|(_, c)| *c), cpus.len());
    let margin = balancing.threshold * mean;
    let ready = cpus.iter().filter(|(id, _)| !cooling.contains(*id));
    let donor = ready
        .clone()
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(a.0)));
    let taker = ready
        .filter(|(id, _)| takers.get(id).is_some_and(|t| t.count < t.cap))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
    let (Some(&(from, donor_cpu)), Some(&(to, taker_cpu))) = (donor, taker) else {
        return;
    };
    let gap = donor_cpu - taker_cpu;
    if from == to
        || donor_cpu - mean <= margin
        || mean - taker_cpu <= margin
        || gap < balancing.min_gap_percent
    {
        return;
    }
    let Some(donor) = takers.get(from) else {
        return;
    };
    // A lease's share of its worker's CPU, estimated from its share of the throughput
    // (or of the leases, when nothing is read).
    let share = |lease: &Lease| {
        if donor.load > 0.0 {
            donor_cpu * lease.throughput_kbps.unwrap_or(0.0) / donor.load
        } else {
            donor_cpu / donor.count.max(1) as f64
        }
    };
    let lease = donor
        .movable
        .iter()
        .copied()
        .filter(|l| share(l) <= gap / 2.0)
        .max_by(|a, b| {
            share(a)
                .total_cmp(&share(b))
                .then(b.lease_key.cmp(&a.lease_key))
        });
    if let Some(lease) = lease {
        move_lease(takers, from, to, lease, MoveReason::Cpu, moved, plan);
    }
}

fn count_moves<'a>(
    takers: &mut BTreeMap<&'a str, Taker<'a>>,
    config: &PlanConfig,
    moved: &mut BTreeSet<&'a str>,
    plan: &mut AssignmentPlan,
) {
    let load_mean = mean(takers.values().map(|t| t.load), takers.len());
    let cpu_mean = takers
        .values()
        .map(|t| t.cpu)
        .collect::<Option<Vec<f64>>>()
        .map(|cpus| mean(cpus.iter().copied(), cpus.len()));
    // A worker over the mean by more than the threshold takes nothing by count.
    let overloaded = |t: &Taker<'_>| {
        let by_throughput = config.throughput.as_ref().is_some_and(|b| {
            t.load - load_mean > b.threshold * load_mean
                && t.load - load_mean >= b.min_gap_kbps / 2.0
        });
        let by_cpu = match (&config.cpu, cpu_mean, t.cpu) {
            (Some(b), Some(mean), Some(cpu)) => {
                cpu - mean > b.threshold * mean && cpu - mean >= b.min_gap_percent / 2.0
            }
            _ => false,
        };
        by_throughput || by_cpu
    };
    loop {
        let Some(to) = least_loaded(takers, |t| !overloaded(t)) else {
            return;
        };
        let to_count = takers.get(to).map_or(0, |t| t.count);
        let donor = takers
            .values()
            .filter(|t| !t.movable.is_empty())
            .max_by(|a, b| a.count.cmp(&b.count).then(b.id.cmp(a.id)));
        let Some(donor) = donor else {
            return;
        };
        if donor.count < to_count + 2 {
            return;
        }
        // The lease that disturbs least: the lowest throughput, then the first key.
        let Some(lease) = donor.movable.iter().copied().min_by(|a, b| {
            a.throughput_kbps
                .unwrap_or(0.0)
                .total_cmp(&b.throughput_kbps.unwrap_or(0.0))
                .then(a.lease_key.cmp(&b.lease_key))
        }) else {
            return;
        };
        let from = donor.id;
        move_lease(takers, from, to, lease, MoveReason::Count, moved, plan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::ExtendedSequenceNumber;
    use crate::leases::leader::fleet::WorkerState;

    fn lease(key: &str, owner: Option<&str>, kbps: f64) -> Lease {
        let mut lease = Lease::new(key, ExtendedSequenceNumber::trim_horizon());
        lease.lease_owner = owner.map(str::to_owned);
        lease.throughput_kbps = Some(kbps);
        lease
    }

    fn worker(state: WorkerState) -> WorkerView {
        WorkerView {
            state,
            heartbeat: Some(5),
            stopping: false,
            max_leases: None,
            cpu: None,
        }
    }

    fn alive(ids: &[&str]) -> BTreeMap<String, WorkerView> {
        ids.iter()
            .map(|id| ((*id).to_owned(), worker(WorkerState::Alive)))
            .collect()
    }

    fn config() -> PlanConfig {
        PlanConfig {
            max_leases_per_worker: usize::MAX,
            throughput: Some(ThroughputBalancing::default()),
            cpu: None,
        }
    }

    fn plan(leases: &[Lease], workers: &BTreeMap<String, WorkerView>) -> AssignmentPlan {
        plan_with(leases, &HashSet::new(), workers, &config())
    }

    fn plan_with(
        leases: &[Lease],
        expired: &HashSet<String>,
        workers: &BTreeMap<String, WorkerView>,
        config: &PlanConfig,
    ) -> AssignmentPlan {
        plan_moved(leases, expired, workers, config, &HashSet::new())
    }

    fn plan_moved(
        leases: &[Lease],
        expired: &HashSet<String>,
        workers: &BTreeMap<String, WorkerView>,
        config: &PlanConfig,
        recently_moved: &HashSet<String>,
    ) -> AssignmentPlan {
        let cooling = HashSet::new();
        let view = FleetView {
            leases,
            expired,
            workers,
            cpu_cooling: &cooling,
            recently_moved,
        };
        plan_assignments(view, config)
    }

    /// Applies a plan to the leases as if every write succeeded and every handoff
    /// completed.
    fn apply(leases: &mut [Lease], plan: &AssignmentPlan) {
        for lease in leases.iter_mut() {
            if let Some(a) = plan
                .assign
                .iter()
                .find(|a| a.lease.lease_key == lease.lease_key)
            {
                lease.lease_owner = Some(a.to.clone());
                lease.checkpoint_owner = None;
            }
            if let Some((_, to, _)) = plan
                .handoffs
                .iter()
                .find(|(l, _, _)| l.lease_key == lease.lease_key)
            {
                lease.lease_owner = Some(to.clone());
            }
        }
    }

    fn counts(leases: &[Lease]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for lease in leases {
            if let Some(owner) = &lease.lease_owner {
                *counts.entry(owner.clone()).or_default() += 1;
            }
        }
        counts
    }

    #[test]
    fn new_leases_are_split_evenly_in_one_round() {
        let mut leases: Vec<Lease> = (0..64)
            .map(|i| lease(&format!("s{i:02}"), None, 0.0))
            .collect();
        let workers = alive(&["a", "b", "c", "d"]);
        let plan = plan(&leases, &workers);
        assert_eq!(plan.assign.len(), 64);
        assert!(plan.handoffs.is_empty());
        apply(&mut leases, &plan);
        assert!(
            counts(&leases).values().all(|c| *c == 16),
            "{:?}",
            counts(&leases)
        );
        // At rest: nothing moves.
        assert_eq!(plan_fn(&leases, &workers), AssignmentPlan::default());
    }

    fn plan_fn(leases: &[Lease], workers: &BTreeMap<String, WorkerView>) -> AssignmentPlan {
        plan(leases, workers)
    }

    #[test]
    fn a_lease_just_moved_by_throughput_does_not_go_back_by_count() {
        let mut leases = vec![
            lease("h1", Some("a"), 200.0),
            lease("h2", Some("a"), 50.0),
            lease("h3", Some("a"), 50.0),
        ];
        leases.extend((1..=4).map(|i| lease(&format!("c{i}"), Some("b"), 40.0)));
        let workers = alive(&["a", "b"]);
        let plan = plan(&leases, &workers);
        let moves: Vec<(&str, &str, MoveReason)> = plan
            .handoffs
            .iter()
            .map(|(l, to, why)| (l.lease_key.as_str(), to.as_str(), *why))
            .collect();
        assert_eq!(
            moves,
            vec![
                ("h2", "b", MoveReason::Throughput),
                ("c1", "a", MoveReason::Count)
            ]
        );
        apply(&mut leases, &plan);
        // Its new holder's first figure covers a moment of reading: it looks the coldest.
        leases[1].throughput_kbps = Some(20.0);
        let back = |plan: &AssignmentPlan| {
            plan.handoffs
                .iter()
                .any(|(l, _, _)| l.lease_key == "h2" || l.lease_key == "c1")
        };
        assert!(
            back(&plan_fn(&leases, &workers)),
            "the flap this guards against"
        );
        let moved = HashSet::from(["h2".to_owned(), "c1".to_owned()]);
        let plan = plan_moved(&leases, &HashSet::new(), &workers, &config(), &moved);
        assert!(!back(&plan), "{:?}", plan.handoffs);
    }

    #[test]
    fn a_new_worker_gets_its_share_in_one_round_by_graceful_handoffs() {
        let mut leases: Vec<Lease> = (0..30)
            .map(|i| lease(&format!("s{i:02}"), Some(["a", "b", "c"][i % 3]), 1.0))
            .collect();
        let workers = alive(&["a", "b", "c", "d"]);
        let plan = plan(&leases, &workers);
        assert!(plan.assign.is_empty());
        assert!(plan.handoffs.iter().all(|(_, to, _)| to == "d"));
        apply(&mut leases, &plan);
        let counts = counts(&leases);
        let (min, max) = (
            counts.values().min().unwrap(),
            counts.values().max().unwrap(),
        );
        assert!(max - min <= 1, "{counts:?}");
        assert_eq!(plan_fn(&leases, &workers).handoffs, vec![]);
    }

    #[test]
    fn a_dead_workers_leases_are_fenced_then_given_to_the_least_loaded() {
        let leases = vec![
            lease("s1", Some("dead"), 0.0),
            lease("s2", Some("dead"), 0.0),
            lease("s3", Some("a"), 0.0),
        ];
        let mut workers = alive(&["a", "b"]);
        workers.insert("dead".into(), worker(WorkerState::Dead));
        let plan = plan(&leases, &workers);
        assert_eq!(plan.fence, BTreeMap::from([("dead".to_owned(), 5)]));
        let given: Vec<(&str, &str, Option<&str>)> = plan
            .assign
            .iter()
            .map(|a| {
                (
                    a.lease.lease_key.as_str(),
                    a.to.as_str(),
                    a.after_fence.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            given,
            vec![("s1", "b", Some("dead")), ("s2", "a", Some("dead"))]
        );
        // Fenced already: no fence again.
        workers.insert("dead".into(), worker(WorkerState::Fenced));
        let plan = plan_fn(&leases, &workers);
        assert!(plan.fence.is_empty());
        assert!(plan.assign.iter().all(|a| a.after_fence.is_none()));
    }

    #[test]
    fn an_expired_lease_of_an_unknown_worker_is_taken_and_its_live_leases_left_alone() {
        let leases = vec![
            lease("s1", Some("java"), 0.0),
            lease("s2", Some("java"), 0.0),
        ];
        let workers = alive(&["a"]);
        let expired = HashSet::from(["s1".to_owned()]);
        let plan = plan_with(&leases, &expired, &workers, &config());
        assert_eq!(plan.assign.len(), 1);
        assert_eq!(plan.assign[0].lease.lease_key, "s1");
        assert_eq!(plan.assign[0].after_fence, None);
        assert!(plan.handoffs.is_empty());
    }

    #[test]
    fn an_expired_lease_of_a_live_worker_goes_to_another_worker() {
        // "a" heartbeats but let its lease expire (its lease table calls fail).
        let leases = vec![lease("s1", Some("a"), 0.0), lease("s2", Some("b"), 0.0)];
        let workers = alive(&["a", "b"]);
        let expired = HashSet::from(["s1".to_owned()]);
        let plan = plan_with(&leases, &expired, &workers, &config());
        assert_eq!(plan.assign.len(), 1);
        assert_eq!(plan.assign[0].to, "b");
        // Alone, it gets it back.
        let plan = plan_with(&leases[..1], &expired, &alive(&["a"]), &config());
        assert_eq!(plan.assign[0].to, "a");
    }

    #[test]
    fn a_worker_without_a_row_gives_one_lease_a_round_while_it_holds_two_more() {
        // A Java KCL 2.x worker took every lease before the leader could assign.
        let mut leases: Vec<Lease> = (0..4)
            .map(|i| lease(&format!("s{i}"), Some("java"), 0.0))
            .collect();
        let workers = alive(&["a"]);
        let mut rounds = 0;
        loop {
            let plan = plan_fn(&leases, &workers);
            assert!(plan.handoffs.is_empty(), "it knows no handoff");
            let Some((stolen, to)) = plan.steals.first().cloned() else {
                break;
            };
            assert_eq!(plan.steals.len(), 1, "one a round");
            for lease in &mut leases {
                if lease.lease_key == stolen.lease_key {
                    lease.lease_owner = Some(to.clone());
                }
            }
            rounds += 1;
        }
        assert_eq!(rounds, 2);
        assert_eq!(
            counts(&leases),
            BTreeMap::from([("a".to_owned(), 2), ("java".to_owned(), 2)])
        );
    }

    #[test]
    fn a_handoff_to_a_dead_worker_is_cancelled_and_one_from_a_dead_holder_completed() {
        let mut to_dead = lease("s1", Some("dead"), 0.0);
        to_dead.checkpoint_owner = Some("a".into());
        let mut from_dead = lease("s2", Some("b"), 0.0);
        from_dead.checkpoint_owner = Some("dead".into());
        let mut workers = alive(&["a", "b"]);
        workers.insert("dead".into(), worker(WorkerState::Fenced));
        let plan = plan(&[to_dead.clone(), from_dead], &workers);
        assert_eq!(plan.cancel, vec![to_dead]);
        assert_eq!(plan.assign.len(), 1);
        assert_eq!(plan.assign[0].to, "b", "to the worker it was going to");
    }

    #[test]
    fn stopping_and_unknown_workers_get_nothing() {
        let leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), None, 0.0)).collect();
        let mut workers = alive(&["a"]);
        workers.insert("new".into(), worker(WorkerState::Unknown));
        let mut stopping = worker(WorkerState::Alive);
        stopping.stopping = true;
        workers.insert("stopping".into(), stopping);
        let plan = plan(&leases, &workers);
        assert!(plan.assign.iter().all(|a| a.to == "a"));
    }

    #[test]
    fn caps_are_honoured_and_what_cannot_be_placed_is_counted() {
        let leases: Vec<Lease> = (0..5).map(|i| lease(&format!("s{i}"), None, 0.0)).collect();
        let mut workers = alive(&["a", "b"]);
        if let Some(b) = workers.get_mut("b") {
            b.max_leases = Some(1);
        }
        let config = PlanConfig {
            max_leases_per_worker: 3,
            ..config()
        };
        let plan = plan_with(&leases, &HashSet::new(), &workers, &config);
        assert_eq!(plan.assign.iter().filter(|a| a.to == "a").count(), 3);
        assert_eq!(plan.assign.iter().filter(|a| a.to == "b").count(), 1);
        assert_eq!(plan.unplaced, 1);
    }

    #[test]
    fn a_hot_shards_worker_ends_with_fewer_leases_and_the_fleet_comes_to_rest() {
        // 1 shard at 1 MiB/s and 15 at 10 KiB/s on 4 workers.
        let mut leases: Vec<Lease> = (0..16)
            .map(|i| {
                let kbps = if i == 0 { 1024.0 } else { 10.0 };
                lease(&format!("s{i:02}"), Some(["a", "b", "c", "d"][i % 4]), kbps)
            })
            .collect();
        let workers = alive(&["a", "b", "c", "d"]);
        let mut rounds = 0;
        loop {
            let plan = plan_fn(&leases, &workers);
            if plan.handoffs.is_empty() {
                break;
            }
            apply(&mut leases, &plan);
            rounds += 1;
            assert!(rounds < 10, "no rest");
        }
        let counts = counts(&leases);
        assert_eq!(
            counts["a"], 1,
            "the hot shard's worker holds it alone: {counts:?}"
        );
        for other in ["b", "c", "d"] {
            assert_eq!(counts[other], 5, "{counts:?}");
        }
    }

    #[test]
    fn cpu_balancing_moves_one_lease_from_the_busiest_worker() {
        let leases: Vec<Lease> = (0..8)
            .map(|i| lease(&format!("s{i}"), Some(["a", "b"][i % 2]), 0.0))
            .collect();
        let mut workers = alive(&["a", "b"]);
        if let Some(w) = workers.get_mut("a") {
            w.cpu = Some(90.0);
        }
        if let Some(w) = workers.get_mut("b") {
            w.cpu = Some(30.0);
        }
        let config = PlanConfig {
            cpu: Some(CpuBalancing::default()),
            ..config()
        };
        let plan = plan_with(&leases, &HashSet::new(), &workers, &config);
        assert_eq!(plan.handoffs.len(), 1, "{plan:?}");
        assert_eq!(plan.handoffs[0].1, "b");
        assert_eq!(plan.handoffs[0].2, MoveReason::Cpu);
        // Even utilisation: no move.
        if let Some(w) = workers.get_mut("a") {
            w.cpu = Some(52.0);
        }
        if let Some(w) = workers.get_mut("b") {
            w.cpu = Some(48.0);
        }
        let plan = plan_with(&leases, &HashSet::new(), &workers, &config);
        assert!(plan.handoffs.is_empty(), "{plan:?}");
    }
}
