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
/// The rule it keeps true: a shard starts only when each of its parents is checkpointed
/// at `SHARD_END` or has left the stream. So every shard that has or gets a lease and has
/// not started yet (its checkpoint is still an initial position) has a lease for each
/// parent that is still listed; a missing one is created (a hole left by a failed create
/// is repaired; for a merge, both parents get one):
///
/// - An open shard without a lease gets one: at `TRIM_HORIZON` when a parent is read by
///   this application (it, or one of its ancestors, has a lease), otherwise at the
///   initial position.
/// - A missing parent that this application reads (it descends from a leased shard, or the
///   initial position is `TRIM_HORIZON` or `AT_TIMESTAMP`) gets a lease at `TRIM_HORIZON`
///   (`AT_TIMESTAMP` in that mode, as in the Java KCL), and its own parents are handled
///   the same way. A parent this application does not read (history before a new
///   application started at `LATEST`) gets a lease at `SHARD_END`: nothing to read, and
///   the child is not blocked (as the Java KCL's hierarchical syncer does).
/// - A finished lease is deleted once each child shard has a lease that has checkpointed
///   something or has left the stream; a finished lease of a shard that left the stream
///   with no known child is deleted too.
pub(crate) fn plan_shard_sync(
    shards: &[Shard],
    leases: &[Lease],
    initial: InitialPosition,
) -> SyncPlan {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
    let by_id: HashMap<&str, &Shard> = shards.iter().map(|s| (s.shard_id(), s)).collect();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for shard in shards {
        for parent in parents(shard) {
            children
                .entry(parent)
                .or_default()
                .push(shard.shard_id().to_owned());
        }
    }
    let listed_parents = |id: &str| -> Vec<String> {
        by_id
            .get(id)
            .map(|s| {
                parents(s)
                    .into_iter()
                    .filter(|p| by_id.contains_key(p.as_str()))
                    .collect()
            })
            .unwrap_or_default()
    };

    // Whether the application reads this shard's records (Java: "is a descendant").
    fn reads(
        id: &str,
        initial: InitialPosition,
        by_key: &HashMap<&str, &Lease>,
        listed_parents: &dyn Fn(&str) -> Vec<String>,
        memo: &mut HashMap<String, bool>,
        depth: usize,
    ) -> bool {
        if let Some(known) = memo.get(id) {
            return *known;
        }
        let result = by_key.contains_key(id)
            || initial != InitialPosition::Latest
            || (depth < 64
                && listed_parents(id)
                    .iter()
                    .any(|p| reads(p, initial, by_key, listed_parents, memo, depth + 1)));
        memo.insert(id.to_owned(), result);
        result
    }
    let mut memo = HashMap::new();
    let mut reads = |id: &str| reads(id, initial, &by_key, &listed_parents, &mut memo, 0);

    let shard_lease = |shard: &Shard, checkpoint: SequencePosition| {
        let mut lease = Lease::new(
            shard.shard_id(),
            ExtendedSequenceNumber::sentinel(checkpoint),
        );
        lease.parent_shard_ids = parents(shard);
        lease.hash_key_range = shard.hash_key_range().map(|r| {
            (
                r.starting_hash_key().to_owned(),
                r.ending_hash_key().to_owned(),
            )
        });
        lease
    };
    let initial_checkpoint = match initial {
        InitialPosition::TrimHorizon => SequencePosition::TrimHorizon,
        InitialPosition::Latest => SequencePosition::Latest,
        InitialPosition::AtTimestamp(_) => SequencePosition::AtTimestamp,
    };
    let descendant_checkpoint = match initial {
        InitialPosition::AtTimestamp(_) => SequencePosition::AtTimestamp,
        _ => SequencePosition::TrimHorizon,
    };

    let mut planned: HashMap<String, Lease> = HashMap::new();
    // Shards whose listed parents must have leases: not started, and read.
    let mut waiting: Vec<String> = Vec::new();
    for shard in shards {
        let id = shard.shard_id();
        let open = shard
            .sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_none();
        match by_key.get(id) {
            Some(lease) => {
                if matches!(
                    lease.checkpoint.position,
                    SequencePosition::TrimHorizon
                        | SequencePosition::Latest
                        | SequencePosition::AtTimestamp
                ) {
                    waiting.push(id.to_owned());
                }
            }
            None if open => {
                let checkpoint = if listed_parents(id).iter().any(|p| reads(p)) {
                    descendant_checkpoint.clone()
                } else {
                    initial_checkpoint.clone()
                };
                planned.insert(id.to_owned(), shard_lease(shard, checkpoint));
                waiting.push(id.to_owned());
            }
            None => {}
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(id) = waiting.pop() {
        if !seen.insert(id.clone()) || seen.len() > 100_000 {
            continue;
        }
        for parent in listed_parents(&id) {
            if by_key.contains_key(parent.as_str()) || planned.contains_key(&parent) {
                continue;
            }
            let Some(shard) = by_id.get(parent.as_str()) else {
                continue;
            };
            if reads(&parent) {
                planned.insert(
                    parent.clone(),
                    shard_lease(shard, descendant_checkpoint.clone()),
                );
                waiting.push(parent);
            } else {
                planned.insert(
                    parent.clone(),
                    shard_lease(shard, SequencePosition::ShardEnd),
                );
            }
        }
    }

    // Parents before children, in listing order otherwise.
    let mut plan = SyncPlan::default();
    let mut placed: HashSet<String> = HashSet::new();
    while !planned.is_empty() {
        let ready: Vec<String> = shards
            .iter()
            .map(|s| s.shard_id().to_owned())
            .filter(|id| planned.contains_key(id))
            .filter(|id| {
                listed_parents(id)
                    .iter()
                    .all(|p| !planned.contains_key(p) || placed.contains(p))
            })
            .collect();
        if ready.is_empty() {
            // A cycle cannot happen in Kinesis; do not loop forever on bad input.
            plan.create.extend(planned.drain().map(|(_, lease)| lease));
            break;
        }
        for id in ready {
            if let Some(lease) = planned.remove(&id) {
                placed.insert(id);
                plan.create.push(lease);
            }
        }
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
        let gone =
            |kid: &String| !by_key.contains_key(kid.as_str()) && !by_id.contains_key(kid.as_str());
        let listed = by_id.contains_key(lease.lease_key.as_str());
        let delete = if kids.is_empty() {
            !listed
        } else {
            kids.iter().all(|kid| started(kid) || gone(kid))
        };
        if delete {
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

        // LATEST: closed history is not read: the open shard starts at LATEST and its
        // parents get SHARD_END leases (so it is not blocked); grandparents need none.
        let plan = plan_shard_sync(&shards, &[], InitialPosition::Latest);
        assert_eq!(keys(&plan.create), vec!["s1", "s2", "s3"]);
        assert_eq!(
            plan.create[0].checkpoint,
            ExtendedSequenceNumber::shard_end()
        );
        assert_eq!(
            plan.create[1].checkpoint,
            ExtendedSequenceNumber::shard_end()
        );
        assert_eq!(plan.create[2].checkpoint.position, SequencePosition::Latest);
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

    /// Item 1: split s0 into s1 and s2, merge them into s3. s0 finished, s1 and s3 have
    /// leases, s2's lease is missing (a failed create): sync creates it, at TRIM_HORIZON.
    #[test]
    fn a_missing_parent_of_a_waiting_child_is_repaired() {
        let shards = vec![
            shard("s0", &[], true),
            shard("s1", &["s0"], true),
            shard("s2", &["s0"], true),
            shard("s3", &["s1", "s2"], false),
        ];
        let mut finished = Lease::new("s0", ExtendedSequenceNumber::shard_end());
        finished.child_shard_ids = BTreeSet::from(["s1".to_owned(), "s2".to_owned()]);
        let p1 = Lease::new("s1", ExtendedSequenceNumber::trim_horizon());
        let child = Lease::new("s3", ExtendedSequenceNumber::trim_horizon());
        for initial in [InitialPosition::Latest, InitialPosition::TrimHorizon] {
            let plan = plan_shard_sync(
                &shards,
                &[finished.clone(), p1.clone(), child.clone()],
                initial,
            );
            assert_eq!(keys(&plan.create), vec!["s2"]);
            assert_eq!(
                plan.create[0].checkpoint,
                ExtendedSequenceNumber::trim_horizon()
            );
            assert!(plan.delete.is_empty(), "s0 stays until s2 has started");
        }
        // Once the child has started, a parent without a lease was cleaned up: not
        // created again.
        let started = Lease::new("s3", ExtendedSequenceNumber::new("9", 0));
        let plan = plan_shard_sync(&shards, &[started], InitialPosition::TrimHorizon);
        assert!(plan.create.is_empty());
    }

    /// Item 2: a finished lease of a shard that left the stream is deleted; so is a
    /// finished parent whose children left too.
    #[test]
    fn finished_leases_of_shards_that_left_the_stream_are_deleted() {
        let shards = vec![shard("s5", &[], false)];
        let gone = Lease::new("s9", ExtendedSequenceNumber::shard_end());
        let mut gone_parent = Lease::new("s8", ExtendedSequenceNumber::shard_end());
        gone_parent.child_shard_ids = BTreeSet::from(["s7".to_owned()]);
        let unfinished = Lease::new("s6", ExtendedSequenceNumber::trim_horizon());
        let plan = plan_shard_sync(
            &shards,
            &[
                gone,
                gone_parent,
                unfinished,
                Lease::new("s5", ExtendedSequenceNumber::trim_horizon()),
            ],
            InitialPosition::TrimHorizon,
        );
        assert_eq!(keys(&plan.delete), vec!["s9", "s8"]);
    }
}
