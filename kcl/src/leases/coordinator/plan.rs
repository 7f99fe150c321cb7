//! The taker's decision when every worker takes its own leases (the Java KCL 2.x way,
//! without a leader): from one listing of the table
//! and this worker's observations, which leases it takes, which it waits for, and which it
//! asks of (or takes from) a live worker. Pure: the I/O is in `taker.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::seq::SliceRandom;
use rand::Rng;

use super::{load, LeaseCoordinatorConfig};
use crate::lease::Lease;

/// What one taker round sees.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TakerView<'a> {
    /// This worker.
    pub me: &'a str,
    /// Every lease in the table.
    pub leases: &'a [Lease],
    /// Keys of the leases that have no owner, or whose counter this worker has not seen
    /// change for the failover time.
    pub expired: &'a HashSet<String>,
    /// Keys of the leases this worker holds.
    pub held: &'a HashSet<String>,
    /// Keys of the handoffs to this worker under way that it already waits for.
    pub waiting: &'a HashSet<String>,
}

/// What a taker round does.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct TakePlan {
    /// Leases the table names this worker the owner of that it does not hold (handed over,
    /// moved here by an operator, or dropped at a local deadline while the table still
    /// names it): taken now, whatever the balance.
    pub assigned: Vec<Lease>,
    /// Handoffs to this worker whose holder has not completed them and that did not
    /// expire: waited for.
    pub wait_for: Vec<String>,
    /// Expired or unassigned leases to take.
    pub take: Vec<Lease>,
    /// Leases to ask of their live holder (graceful handoff), or to take from it.
    pub steal: Vec<Lease>,
    /// How many leases each other live worker holds.
    pub live_workers: BTreeMap<String, usize>,
    /// Expired leases left without a worker because this one is at
    /// `max_leases_per_worker`.
    pub unprocessed: usize,
}

/// Decides one taker round: expired and unassigned leases first (up to
/// `ceil(leases / workers)`, capped by `max_leases_per_worker`); when there are none, one
/// lease for throughput (see [`ThroughputBalancing`](crate::leases::ThroughputBalancing)) or
/// up to `max_leases_to_steal_at_once` from the most loaded live worker, only while it
/// holds at least two more than this one, so the spread ends within one lease and never
/// oscillates. Finished leases are neither counted nor taken. `rng` shuffles the
/// candidates, so that workers deciding at once pick different leases.
pub(crate) fn plan_take(
    view: TakerView<'_>,
    config: &LeaseCoordinatorConfig,
    rng: &mut impl Rng,
) -> TakePlan {
    let me = view.me;
    let mut plan = TakePlan::default();
    let active: Vec<&Lease> = view.leases.iter().filter(|l| !l.is_finished()).collect();
    // Leases count for the worker they are going to during a handoff.
    let mut counts: HashMap<&str, Vec<&Lease>> = HashMap::new();
    for lease in &active {
        if let Some(owner) = lease.lease_owner.as_deref() {
            if owner != me && !view.expired.contains(&lease.lease_key) {
                counts.entry(owner).or_default().push(lease);
            }
        }
    }
    plan.live_workers = counts
        .iter()
        .map(|(owner, leases)| ((*owner).to_owned(), leases.len()))
        .collect();
    let mut waiting: HashSet<&str> = view.waiting.iter().map(String::as_str).collect();
    for lease in &active {
        if !lease.is_owned_by(me) || view.held.contains(&lease.lease_key) {
            continue;
        }
        if lease.handoff_pending() && !view.expired.contains(&lease.lease_key) {
            plan.wait_for.push(lease.lease_key.clone());
            waiting.insert(&lease.lease_key);
        } else {
            plan.assigned.push((*lease).clone());
        }
    }
    let mine = view.held.len() + plan.assigned.len() + waiting.len();
    let workers = counts.len() + 1;
    let target = active
        .len()
        .div_ceil(workers)
        .min(config.max_leases_per_worker);
    let needed = target.saturating_sub(mine);
    if needed == 0 && target == config.max_leases_per_worker {
        plan.unprocessed = active
            .iter()
            .filter(|l| !view.held.contains(&l.lease_key) && view.expired.contains(&l.lease_key))
            .count();
    }
    // Throughput: this worker's load (leases it holds or that are coming to it) against
    // the fleet's mean.
    let my_load = load(active.iter().copied().filter(|l| l.is_owned_by(me)));
    let loads: Vec<(&str, f64)> = counts
        .iter()
        .map(|(owner, leases)| (*owner, load(leases.iter().copied())))
        .collect();
    let mean = (my_load + loads.iter().map(|(_, l)| l).sum::<f64>()) / workers as f64;
    let overloaded = config.throughput_balancing.as_ref().is_some_and(|b| {
        my_load - mean > b.threshold * mean && my_load - mean >= b.min_gap_kbps / 2.0
    });
    let throughput_move = throughput_move(config, &loads, &counts, my_load, mean, mine);
    if needed == 0 && plan.assigned.is_empty() && throughput_move.is_none() {
        return plan;
    }

    let mut available: Vec<&Lease> = active
        .iter()
        .copied()
        .filter(|l| {
            !view.held.contains(&l.lease_key)
                && view.expired.contains(&l.lease_key)
                && !l.is_owned_by(me)
        })
        .collect();
    if !available.is_empty() && needed > 0 {
        available.shuffle(rng);
        plan.take = available.into_iter().take(needed).cloned().collect();
    } else if let Some(lease) = throughput_move {
        plan.steal = vec![lease];
    } else if !overloaded {
        // Most loaded live worker; ties broken by name so every worker agrees.
        let victim = counts
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)));
        if let Some((_, victim_leases)) = victim {
            // Steal only while the victim keeps more than this worker will have: every
            // move then narrows the spread, so moves stop once the spread is at most one
            // lease and no lease goes back and forth.
            let spare = victim_leases.len().saturating_sub(mine) / 2;
            let count = needed.min(spare).min(config.max_leases_to_steal_at_once);
            // A lease already being handed over is not asked for again.
            let mut candidates: Vec<&Lease> = victim_leases
                .iter()
                .copied()
                .filter(|l| !l.handoff_pending())
                .collect();
            candidates.shuffle(rng);
            plan.steal = candidates.into_iter().take(count).cloned().collect();
        }
    }
    plan
}

/// The lease to ask for to even out throughput, if any (see
/// [`ThroughputBalancing`](crate::leases::ThroughputBalancing)): from the most loaded
/// worker, when both it and this worker are off the mean by more than the threshold and
/// the gap is wide enough, the largest of its leases carrying at most half the gap.
fn throughput_move(
    config: &LeaseCoordinatorConfig,
    loads: &[(&str, f64)],
    counts: &HashMap<&str, Vec<&Lease>>,
    my_load: f64,
    mean: f64,
    mine: usize,
) -> Option<Lease> {
    let balancing = config.throughput_balancing.as_ref()?;
    if mine >= config.max_leases_per_worker {
        return None;
    }
    let (victim, victim_load) = loads
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(a.0)))?;
    let margin = balancing.threshold * mean;
    let gap = victim_load - my_load;
    if victim_load - mean <= margin || mean - my_load <= margin || gap < balancing.min_gap_kbps {
        return None;
    }
    counts
        .get(victim)?
        .iter()
        .copied()
        .filter(|l| !l.handoff_pending())
        .map(|l| (l, l.throughput_kbps.unwrap_or(0.0)))
        .filter(|(_, throughput)| *throughput <= gap / 2.0)
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.lease_key.cmp(&a.0.lease_key)))
        .map(|(lease, _)| lease.clone())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::lease::ExtendedSequenceNumber;

    fn lease(key: &str, owner: Option<&str>) -> Lease {
        let mut lease = Lease::new(key, ExtendedSequenceNumber::trim_horizon());
        lease.lease_owner = owner.map(str::to_owned);
        lease
    }

    fn keys(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    fn plan(
        leases: &[Lease],
        expired: &[&str],
        held: &[&str],
        config: &LeaseCoordinatorConfig,
    ) -> TakePlan {
        let (expired, held, waiting) = (keys(expired), keys(held), HashSet::new());
        let view = TakerView {
            me: "me",
            leases,
            expired: &expired,
            held: &held,
            waiting: &waiting,
        };
        plan_take(view, config, &mut StdRng::seed_from_u64(1))
    }

    #[test]
    fn expired_and_unowned_leases_are_taken_up_to_the_fair_share() {
        let config = LeaseCoordinatorConfig::new("me");
        let leases = [
            lease("a", None),
            lease("b", None),
            lease("c", Some("dead")),
            lease("d", Some("other")),
        ];
        // Two workers (me and "other"; "dead" is expired): a fair share of 2.
        let plan = plan(&leases, &["a", "b", "c"], &[], &config);
        assert_eq!(plan.take.len(), 2);
        assert!(plan.steal.is_empty());
        assert_eq!(plan.live_workers, BTreeMap::from([("other".to_owned(), 1)]));
    }

    #[test]
    fn one_lease_is_stolen_from_the_most_loaded_worker_only_while_it_narrows_the_spread() {
        let config = LeaseCoordinatorConfig::new("me");
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(&format!("x{i}"), Some("x"))).collect();
        leases.push(lease("m", Some("me")));
        let plan1 = plan(&leases, &[], &["m"], &config);
        assert_eq!(plan1.steal.len(), 1);
        assert_eq!(plan1.steal[0].lease_owner.as_deref(), Some("x"));
        // 3 against 2: stealing would only swap the roles.
        leases.truncate(3);
        leases.push(lease("m2", Some("me")));
        leases.push(lease("m", Some("me")));
        let plan2 = plan(&leases, &[], &["m", "m2"], &config);
        assert!(plan2.steal.is_empty() && plan2.take.is_empty(), "{plan2:?}");
    }

    #[test]
    fn leases_named_mine_are_taken_or_waited_for() {
        let config = LeaseCoordinatorConfig::new("me");
        let handed = lease("handed", Some("me"));
        let mut coming = lease("coming", Some("me"));
        coming.checkpoint_owner = Some("other".into());
        let plan = plan(&[handed.clone(), coming], &[], &[], &config);
        assert_eq!(plan.assigned, vec![handed]);
        assert_eq!(plan.wait_for, vec!["coming".to_owned()]);
    }

    #[test]
    fn a_worker_at_its_maximum_reports_the_leases_left_unprocessed() {
        let mut config = LeaseCoordinatorConfig::new("me");
        config.max_leases_per_worker = 1;
        let leases = [lease("m", Some("me")), lease("a", None), lease("b", None)];
        let plan = plan(&leases, &["a", "b"], &["m"], &config);
        assert!(plan.take.is_empty());
        assert_eq!(plan.unprocessed, 2);
    }

    #[test]
    fn an_overloaded_worker_takes_no_lease_by_count_from_a_live_worker() {
        let config = LeaseCoordinatorConfig::new("me");
        let mut hot = lease("hot", Some("me"));
        hot.throughput_kbps = Some(1000.0);
        let mut leases = vec![hot];
        leases.extend((0..4).map(|i| lease(&format!("x{i}"), Some("x"))));
        let plan = plan(&leases, &[], &["hot"], &config);
        assert!(plan.steal.is_empty(), "{plan:?}");
    }
}
