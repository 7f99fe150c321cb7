//! Shard sync planning: which leases a shard listing calls for, and which finished leases
//! can go.

use std::collections::{BTreeSet, HashMap, HashSet};

use aws_sdk_kinesis::types::Shard;

use crate::lease::{ExtendedSequenceNumber, Lease, SequencePosition};
use crate::scheduler::InitialPosition;

/// What a shard sync writes.
#[derive(Debug, Default)]
pub(crate) struct SyncPlan {
    pub create: Vec<Lease>,
    pub delete: Vec<Lease>,
}

fn parents(shard: &Shard) -> BTreeSet<String> {
    shard
        .parent_shard_id()
        .into_iter()
        .chain(shard.adjacent_parent_shard_id())
        .map(str::to_owned)
        .collect()
}

/// Decides which leases a shard sync creates and deletes.
///
/// - A shard without a lease gets one, parents first. Its checkpoint is `TRIM_HORIZON`
///   when one of its parents has a lease (its parents' records come first, then all of
///   its own), otherwise the initial position.
/// - A closed shard gets no lease when one of its descendants has one (it was processed
///   and cleaned up), nor, with [`InitialPosition::Latest`], when none of its parents
///   has one (a new application reading from the tip does not need closed history).
/// - A finished lease is deleted once every child shard has a lease that has
///   checkpointed something.
pub(crate) fn plan_shard_sync(
    shards: &[Shard],
    leases: &[Lease],
    initial: InitialPosition,
) -> SyncPlan {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for shard in shards {
        for parent in parents(shard) {
            children
                .entry(parent)
                .or_default()
                .push(shard.shard_id().to_owned());
        }
    }
    fn has_leased_descendant(
        shard: &str,
        children: &HashMap<String, Vec<String>>,
        leased: &HashSet<String>,
        depth: usize,
    ) -> bool {
        depth < 64
            && children.get(shard).is_some_and(|kids| {
                kids.iter().any(|k| {
                    leased.contains(k) || has_leased_descendant(k, children, leased, depth + 1)
                })
            })
    }

    // Parents before children.
    let mut ordered: Vec<&Shard> = Vec::with_capacity(shards.len());
    let mut placed: HashSet<&str> = HashSet::new();
    let known: HashSet<&str> = shards.iter().map(|s| s.shard_id()).collect();
    while ordered.len() < shards.len() {
        let before = ordered.len();
        for shard in shards {
            if placed.contains(shard.shard_id()) {
                continue;
            }
            let ready = parents(shard)
                .iter()
                .all(|p| !known.contains(p.as_str()) || placed.contains(p.as_str()));
            if ready {
                placed.insert(shard.shard_id());
                ordered.push(shard);
            }
        }
        if ordered.len() == before {
            break; // a cycle cannot happen in Kinesis; do not loop forever on bad input
        }
    }

    let mut leased: HashSet<String> = by_key.keys().map(|k| (*k).to_owned()).collect();
    let mut plan = SyncPlan::default();
    for shard in ordered {
        let id = shard.shard_id();
        if leased.contains(id) {
            continue;
        }
        let closed = shard
            .sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_some();
        let parent_leased = parents(shard).iter().any(|p| leased.contains(p));
        if closed && has_leased_descendant(id, &children, &leased, 0) {
            continue;
        }
        if closed && !parent_leased && initial == InitialPosition::Latest {
            continue;
        }
        let checkpoint = if parent_leased {
            SequencePosition::TrimHorizon
        } else {
            match initial {
                InitialPosition::TrimHorizon => SequencePosition::TrimHorizon,
                InitialPosition::Latest => SequencePosition::Latest,
                InitialPosition::AtTimestamp(_) => SequencePosition::AtTimestamp,
            }
        };
        let mut lease = Lease::new(id, ExtendedSequenceNumber::sentinel(checkpoint));
        lease.parent_shard_ids = parents(shard);
        lease.hash_key_range = shard.hash_key_range().map(|r| {
            (
                r.starting_hash_key().to_owned(),
                r.ending_hash_key().to_owned(),
            )
        });
        leased.insert(id.to_owned());
        plan.create.push(lease);
    }

    for lease in leases.iter().filter(|l| l.is_finished()) {
        let mut kids: BTreeSet<String> = lease.child_shard_ids.clone();
        if let Some(listed) = children.get(&lease.lease_key) {
            kids.extend(listed.iter().cloned());
        }
        let started = |kid: &String| {
            by_key.get(kid.as_str()).is_some_and(|l| {
                matches!(
                    l.checkpoint.position,
                    SequencePosition::Sequence(_) | SequencePosition::ShardEnd
                )
            })
        };
        if !kids.is_empty() && kids.iter().all(started) {
            plan.delete.push(lease.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::types::{HashKeyRange, SequenceNumberRange};

    fn shard(id: &str, parents: &[&str], closed: bool) -> Shard {
        Shard::builder()
            .shard_id(id)
            .set_parent_shard_id(parents.first().map(|p| p.to_string()))
            .set_adjacent_parent_shard_id(parents.get(1).map(|p| p.to_string()))
            .hash_key_range(
                HashKeyRange::builder()
                    .starting_hash_key("0")
                    .ending_hash_key("9")
                    .build()
                    .unwrap(),
            )
            .sequence_number_range(
                SequenceNumberRange::builder()
                    .starting_sequence_number("1")
                    .set_ending_sequence_number(closed.then(|| "2".to_owned()))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn keys(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.lease_key.as_str()).collect()
    }

    #[test]
    fn new_application_gets_leases_parents_first() {
        // 0 split into 1 and 2; 1 and 2 merged into 3 (listed out of order).
        let shards = vec![
            shard("s3", &["s1", "s2"], false),
            shard("s0", &[], true),
            shard("s1", &["s0"], true),
            shard("s2", &["s0"], true),
        ];
        let plan = plan_shard_sync(&shards, &[], InitialPosition::TrimHorizon);
        assert_eq!(keys(&plan.create), vec!["s0", "s1", "s2", "s3"]);
        assert_eq!(
            plan.create[3].parent_shard_ids,
            BTreeSet::from(["s1".to_owned(), "s2".to_owned()])
        );
        assert!(plan
            .create
            .iter()
            .all(|l| l.checkpoint == ExtendedSequenceNumber::trim_horizon()));

        // LATEST: closed history is skipped, the open shard starts at LATEST.
        let plan = plan_shard_sync(&shards, &[], InitialPosition::Latest);
        assert_eq!(keys(&plan.create), vec!["s3"]);
        assert_eq!(plan.create[0].checkpoint.position, SequencePosition::Latest);
    }

    #[test]
    fn children_of_leased_shards_start_at_trim_horizon_and_cleaned_up_shards_stay_gone() {
        let shards = vec![
            shard("s0", &[], true),
            shard("s1", &["s0"], false),
            shard("s2", &["s0"], false),
        ];
        let parent = Lease::new("s0", ExtendedSequenceNumber::new("5", 0));
        let plan = plan_shard_sync(&shards, &[parent], InitialPosition::Latest);
        assert_eq!(keys(&plan.create), vec!["s1", "s2"]);
        assert!(plan
            .create
            .iter()
            .all(|l| l.checkpoint == ExtendedSequenceNumber::trim_horizon()));

        // Parent finished and both children started: the parent is deleted, and once it
        // is gone it is not created again.
        let mut parent = Lease::new("s0", ExtendedSequenceNumber::shard_end());
        parent.child_shard_ids = BTreeSet::from(["s1".to_owned(), "s2".to_owned()]);
        let started = Lease::new("s1", ExtendedSequenceNumber::new("7", 0));
        let not_started = Lease::new("s2", ExtendedSequenceNumber::trim_horizon());
        let plan = plan_shard_sync(
            &shards,
            &[parent.clone(), started.clone(), not_started],
            InitialPosition::TrimHorizon,
        );
        assert!(plan.delete.is_empty());
        let started2 = Lease::new("s2", ExtendedSequenceNumber::new("8", 0));
        let plan = plan_shard_sync(
            &shards,
            &[parent, started.clone(), started2.clone()],
            InitialPosition::TrimHorizon,
        );
        assert_eq!(keys(&plan.delete), vec!["s0"]);
        let plan = plan_shard_sync(&shards, &[started, started2], InitialPosition::TrimHorizon);
        assert!(plan.create.is_empty());
    }
}
