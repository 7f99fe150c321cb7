//! The verdict of a chaos run: what the workers delivered, checked against what the
//! stream holds and what the lease table said along the way. Pure functions over plain
//! data, so each rule has a unit test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use kinesis_consumer::ExtendedSequenceNumber;

/// One JSON line a worker printed, stamped when the harness read it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Arrival order over all workers (a single counter).
    pub n: u64,
    /// Arrival time since the run started.
    pub at: Duration,
    /// The worker process (index into the run's process table).
    pub worker: usize,
    /// Shard id.
    pub shard: String,
    /// Kinesis sequence number.
    pub sequence_number: String,
    /// Sub-sequence number inside a KPL aggregate.
    pub sub_sequence_number: u64,
    /// Partition key.
    pub key: String,
    /// The producer's record id.
    pub id: u64,
}

/// A user record as it is in the stream (the ground truth).
#[derive(Clone, Debug)]
pub struct StreamRecord {
    /// Shard id.
    pub shard: String,
    /// Kinesis sequence number.
    pub sequence_number: String,
    /// Sub-sequence number.
    pub sub_sequence_number: u64,
    /// Partition key.
    pub key: String,
    /// The producer's record id.
    pub id: u64,
}

/// A lease as a snapshot of the table saw it.
#[derive(Clone, Debug)]
pub struct LeaseView {
    /// Shard id.
    pub shard: String,
    /// The owning worker process, if the owner is one of the run's workers.
    pub owner: Option<usize>,
    /// Its checkpoint.
    pub checkpoint: ExtendedSequenceNumber,
}

/// The lease table at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When the scan returned.
    pub at: Duration,
    /// Why it was taken (`periodic`, `kill`, `pause`, ...).
    pub reason: &'static str,
    /// Every lease.
    pub leases: Vec<LeaseView>,
}

/// A SIGSTOP .. SIGCONT of a worker.
#[derive(Clone, Debug)]
pub struct Pause {
    /// The paused worker process.
    pub worker: usize,
    /// When the stop signal had been sent.
    pub stopped_at: Duration,
    /// When the continue signal was sent.
    pub resumed_at: Duration,
}

/// Everything the verdict needs.
#[derive(Debug)]
pub struct RunData<'a> {
    /// Records the producer was asked to put (ids `0..requested`).
    pub requested: u64,
    /// Records the producer reported failed (expired).
    pub producer_failed: u64,
    /// The stream's user records, parents' shards before their children's, each shard in
    /// order; records of an aggregate placed on a shard that does not own them excluded.
    pub stream: &'a [StreamRecord],
    /// Every delivery, in arrival order.
    pub deliveries: &'a [Delivery],
    /// Lease table snapshots, in time order.
    pub snapshots: &'a [Snapshot],
    /// Pauses.
    pub pauses: &'a [Pause],
    /// Kills (kill -9): the worker process and when it was killed.
    pub kills: &'a [(usize, Duration)],
    /// The workers' failover time.
    pub failover: Duration,
}

/// One broken guarantee, with what is needed to look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which guarantee: `lost`, `producer-failed`, `producer-lost`,
    /// `duplicate-behind-checkpoint`, `order`, `stale-delivery` (and, from the run itself,
    /// `not-graceful`, `worker-crashed`, `unparsable-output`).
    pub kind: &'static str,
    /// What happened.
    pub detail: String,
}

/// Two workers delivering one shard in an overlapping stretch of time.
#[derive(Clone, Debug)]
pub struct Overlap {
    /// Shard id.
    pub shard: String,
    /// The previous owner, still delivering.
    pub stale_worker: usize,
    /// The new owner.
    pub new_worker: usize,
    /// First delivery of the new owner in this episode.
    pub from: Duration,
    /// Last delivery of the previous owner in this episode.
    pub until: Duration,
    /// Deliveries of the previous owner after the new owner's first.
    pub stale_deliveries: u64,
    /// Whether the stale worker was paused (SIGSTOP) inside the episode.
    pub paused: bool,
}

/// Figures and violations of a run.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Distinct ids in the stream.
    pub in_stream: u64,
    /// Ids present more than once in the stream (producer retries: at least once).
    pub producer_duplicates: u64,
    /// The first few ids present more than once, with where each copy is.
    pub producer_duplicate_examples: Vec<String>,
    /// Distinct ids delivered.
    pub delivered_distinct: u64,
    /// Deliveries in total.
    pub deliveries: u64,
    /// Deliveries of a stream position already delivered before.
    pub consumer_duplicates: u64,
    /// Ids in the stream never delivered.
    pub lost: u64,
    /// Keys whose first deliveries are out of stream order.
    pub keys_out_of_order: u64,
    /// Overlap episodes.
    pub overlaps: Vec<Overlap>,
    /// Pauses whose stale-delivery check was inconclusive (the stop landed while the
    /// worker was writing a batch of that shard).
    pub inconclusive_pauses: u64,
    /// Every violation (each kind capped at [`DETAILS_PER_KIND`] details; the counts
    /// are complete).
    pub violations: Vec<Violation>,
    /// Violations per kind, complete.
    pub violation_counts: BTreeMap<&'static str, u64>,
}

/// Details kept per kind of violation.
pub const DETAILS_PER_KIND: u64 = 20;

/// Slack for reading a worker's output and for the batch it was writing when its lease
/// moved.
const DELIVERY_SLACK: Duration = Duration::from_millis(250);

/// How close to a SIGSTOP a worker's last line of a shard must be for the stop to have
/// possibly landed in the middle of that batch.
const MID_BATCH: Duration = Duration::from_millis(50);

impl Verdict {
    fn violate(&mut self, kind: &'static str, detail: impl FnOnce() -> String) {
        let count = self.violation_counts.entry(kind).or_default();
        *count += 1;
        if *count <= DETAILS_PER_KIND {
            self.violations.push(Violation {
                kind,
                detail: detail(),
            });
        }
    }

    /// Whether no guarantee was broken.
    pub fn passed(&self) -> bool {
        self.violation_counts.is_empty()
    }
}

type Position<'a> = (&'a str, &'a str, u64);

/// Checks a run: loss, the duplicate bound, per-key order, stale deliveries.
pub fn verdict(run: &RunData<'_>) -> Verdict {
    let mut verdict = Verdict {
        deliveries: run.deliveries.len() as u64,
        ..Verdict::default()
    };
    check_loss(run, &mut verdict);
    check_duplicates(run, &mut verdict);
    check_order(run, &mut verdict);
    check_stale_deliveries(run, &mut verdict);
    verdict
}

fn check_loss(run: &RunData<'_>, verdict: &mut Verdict) {
    let mut in_stream: HashMap<u64, &StreamRecord> = HashMap::new();
    for record in run.stream {
        if let Some(first) = in_stream.get(&record.id) {
            verdict.producer_duplicates += 1;
            if verdict.producer_duplicate_examples.len() < 5 {
                verdict.producer_duplicate_examples.push(format!(
                    "id {} (key {}) at {} {}/{} and at {} {}/{}",
                    record.id,
                    record.key,
                    first.shard,
                    first.sequence_number,
                    first.sub_sequence_number,
                    record.shard,
                    record.sequence_number,
                    record.sub_sequence_number
                ));
            }
        } else {
            in_stream.insert(record.id, record);
        }
    }
    let in_stream: HashSet<u64> = in_stream.into_keys().collect();
    verdict.in_stream = in_stream.len() as u64;
    let delivered: HashSet<u64> = run.deliveries.iter().map(|d| d.id).collect();
    verdict.delivered_distinct = delivered.len() as u64;
    let mut lost: Vec<u64> = in_stream.difference(&delivered).copied().collect();
    lost.sort_unstable();
    verdict.lost = lost.len() as u64;
    for id in lost {
        let record = run.stream.iter().find(|r| r.id == id);
        verdict.violate("lost", || match record {
            Some(r) => format!(
                "id {id} (key {}) at {} {}/{} never delivered",
                r.key, r.shard, r.sequence_number, r.sub_sequence_number
            ),
            None => format!("id {id} never delivered"),
        });
    }
    if run.producer_failed > 0 {
        // Nothing stands between the producer and Kinesis in a chaos run: every record
        // should make it within its TTL.
        verdict.violate("producer-failed", || {
            format!(
                "the producer gave up on {} of {} records (see produce.stderr for the first error)",
                run.producer_failed, run.requested
            )
        });
    }
    let missing = run
        .requested
        .saturating_sub(verdict.in_stream)
        .saturating_sub(run.producer_failed);
    if missing > 0 {
        verdict.violate("producer-lost", || {
            format!(
                "{missing} of {} records neither in the stream nor reported failed by the producer",
                run.requested
            )
        });
    }
}

/// The latest checkpoint of `shard` stored while another worker than `worker` held it
/// (or nobody did), in snapshots older than `before`.
fn checkpoint_of_others<'a>(
    snapshots: &'a [Snapshot],
    shard: &str,
    worker: usize,
    before: Duration,
) -> Option<(&'a ExtendedSequenceNumber, &'a Snapshot)> {
    let mut best: Option<(&ExtendedSequenceNumber, &Snapshot)> = None;
    for snapshot in snapshots.iter().take_while(|s| s.at < before) {
        for lease in snapshot.leases.iter().filter(|l| l.shard == shard) {
            if lease.owner == Some(worker) {
                continue;
            }
            let newer = match best {
                None => true,
                Some((current, _)) => {
                    !current.is_shard_end()
                        && (lease.checkpoint.is_shard_end()
                            || lease.checkpoint.compare(current)
                                == Some(std::cmp::Ordering::Greater))
                }
            };
            if newer {
                best = Some((&lease.checkpoint, snapshot));
            }
        }
    }
    best
}

/// Deliveries a stale owner made, keyed by arrival counter: judged by the stale check,
/// not twice.
fn stale_arrivals(run: &RunData<'_>) -> HashSet<u64> {
    stale_episodes(run)
        .into_iter()
        .flat_map(|episode| episode.stale.into_iter().map(|d| d.n))
        .collect()
}

fn check_duplicates(run: &RunData<'_>, verdict: &mut Verdict) {
    let stale = stale_arrivals(run);
    let mut seen: HashSet<Position<'_>> = HashSet::new();
    for delivery in run.deliveries {
        let position = (
            delivery.shard.as_str(),
            delivery.sequence_number.as_str(),
            delivery.sub_sequence_number,
        );
        if seen.insert(position) {
            continue;
        }
        verdict.consumer_duplicates += 1;
        if stale.contains(&delivery.n) {
            continue;
        }
        // A worker that took the shard must start after the checkpoint the previous owner
        // stored; the margin covers the time the snapshot's scan took.
        let before = delivery.at.saturating_sub(Duration::from_millis(200));
        let Some((checkpoint, seen)) =
            checkpoint_of_others(run.snapshots, &delivery.shard, delivery.worker, before)
        else {
            continue;
        };
        if checkpoint.sequence_number().is_none() && !checkpoint.is_shard_end() {
            continue; // TRIM_HORIZON, LATEST: nothing processed yet
        }
        let at = ExtendedSequenceNumber::new(
            delivery.sequence_number.clone(),
            delivery.sub_sequence_number,
        );
        let behind = checkpoint.is_shard_end()
            || at.compare(checkpoint) != Some(std::cmp::Ordering::Greater);
        if behind {
            verdict.violate("duplicate-behind-checkpoint", || {
                format!(
                    "worker #{} redelivered id {} at {} {}/{} at {:.3}s, behind checkpoint {} that another owner had stored (lease table read at {:.3}s, {})",
                    delivery.worker,
                    delivery.id,
                    delivery.shard,
                    delivery.sequence_number,
                    delivery.sub_sequence_number,
                    delivery.at.as_secs_f64(),
                    checkpoint,
                    seen.at.as_secs_f64(),
                    seen.reason
                )
            });
        }
    }
}

fn check_order(run: &RunData<'_>, verdict: &mut Verdict) {
    // Expected: each key's ids in stream order, first occurrence of each id.
    let mut expected: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut placed: HashSet<u64> = HashSet::new();
    for record in run.stream {
        if placed.insert(record.id) {
            expected.entry(&record.key).or_default().push(record.id);
        }
    }
    // Delivered: each key's ids by first delivery.
    let mut first: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut delivered: HashSet<u64> = HashSet::new();
    let mut first_at: HashMap<u64, &Delivery> = HashMap::new();
    for delivery in run.deliveries {
        if delivered.insert(delivery.id) {
            first.entry(&delivery.key).or_default().push(delivery.id);
            first_at.insert(delivery.id, delivery);
        }
    }
    let mut keys: Vec<&&str> = expected.keys().collect();
    keys.sort();
    for key in keys {
        let want: Vec<u64> = expected[*key]
            .iter()
            .copied()
            .filter(|id| delivered.contains(id))
            .collect();
        let got: Vec<u64> = first
            .get(*key)
            .map(|ids| {
                ids.iter()
                    .copied()
                    .filter(|id| placed.contains(id))
                    .collect()
            })
            .unwrap_or_default();
        if want == got {
            continue;
        }
        verdict.keys_out_of_order += 1;
        let at = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(0);
        let describe = |id: u64| match first_at.get(&id) {
            Some(d) => format!(
                "id {id} ({} {}/{}, worker #{} at {:.3}s)",
                d.shard,
                d.sequence_number,
                d.sub_sequence_number,
                d.worker,
                d.at.as_secs_f64()
            ),
            None => format!("id {id}"),
        };
        verdict.violate("order", || {
            format!(
                "key {key}: stream order has {} next, but {} was delivered first",
                describe(want.get(at).copied().unwrap_or_default()),
                describe(got.get(at).copied().unwrap_or_default()),
            )
        });
    }
}

struct Episode<'a> {
    shard: &'a str,
    stale_worker: usize,
    new_worker: usize,
    new_first: &'a Delivery,
    previous: &'a Delivery,
    stale: Vec<&'a Delivery>,
}

/// The owner of `shard` in the first snapshot taken after `at`, if any snapshot was.
fn owner_after(snapshots: &[Snapshot], shard: &str, at: Duration) -> Option<Option<usize>> {
    snapshots.iter().find(|s| s.at > at).map(|s| {
        s.leases
            .iter()
            .find(|l| l.shard == shard)
            .and_then(|l| l.owner)
    })
}

/// Stretches where a worker delivered a shard after another worker had started
/// delivering it, while the lease table did not give it back to it.
fn stale_episodes<'a>(run: &'a RunData<'a>) -> Vec<Episode<'a>> {
    let mut by_shard: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for delivery in run.deliveries {
        by_shard.entry(&delivery.shard).or_default().push(delivery);
    }
    let mut episodes = Vec::new();
    for (shard, deliveries) in by_shard {
        // The table gave the lease back to `worker`: seen in the next snapshot, or the
        // other owner could not renew for a whole failover time before `at` (killed, or
        // stopped and not yet resumed), so the lease had expired and `worker` may have
        // taken it between two snapshots (found by a CI run: a worker retook a paused
        // worker's expired lease and lost it to a third within the same second); or a
        // snapshot taken after `other` delivered (`other_since`) and before `at` shows
        // `worker` as the owner: the lease came back for a moment between two snapshots (a
        // handoff there and back within a second, found by another CI run).
        let given_back = |worker: usize, other: usize, at: Duration, other_since: Duration| {
            let silenced = |since: Duration| since.saturating_add(run.failover) <= at;
            owner_after(run.snapshots, shard, at).is_some_and(|owner| owner == Some(worker))
                || run.snapshots.iter().any(|s| {
                    s.at > other_since
                        && s.at <= at
                        && s.leases
                            .iter()
                            .any(|l| l.shard == shard && l.owner == Some(worker))
                })
                || run
                    .pauses
                    .iter()
                    .any(|p| p.worker == other && silenced(p.stopped_at) && p.resumed_at > at)
                || run
                    .kills
                    .iter()
                    .any(|&(killed, when)| killed == other && silenced(when))
        };
        // Per worker, its latest delivery outside an episode; the latest such delivery.
        let mut last_of: HashMap<usize, &Delivery> = HashMap::new();
        let mut current: Option<&Delivery> = None;
        let mut open: Option<Episode<'a>> = None;
        for delivery in deliveries {
            let worker = delivery.worker;
            if let Some(episode) = &mut open {
                if worker == episode.stale_worker
                    && !given_back(
                        worker,
                        episode.new_worker,
                        delivery.at,
                        episode.new_first.at,
                    )
                {
                    episode.stale.push(delivery);
                    continue;
                }
                if worker != episode.new_worker {
                    episodes.extend(open.take());
                }
            }
            if let (Some(latest), Some(previous)) = (current, last_of.get(&worker).copied()) {
                if latest.worker != worker
                    && !given_back(worker, latest.worker, delivery.at, latest.at)
                {
                    // `worker` delivers again although `latest.worker` took over.
                    episodes.extend(open.take());
                    open = Some(Episode {
                        shard,
                        stale_worker: worker,
                        new_worker: latest.worker,
                        new_first: latest,
                        previous,
                        stale: vec![delivery],
                    });
                    continue;
                }
            }
            last_of.insert(worker, delivery);
            current = Some(delivery);
        }
        episodes.extend(open);
    }
    // The new owner's first delivery of the episode: the earliest one after the stale
    // worker's previous delivery.
    for episode in &mut episodes {
        if let Some(first) = run.deliveries.iter().find(|d| {
            d.shard == episode.shard && d.worker == episode.new_worker && d.n > episode.previous.n
        }) {
            episode.new_first = first;
        }
    }
    episodes
}

fn check_stale_deliveries(run: &RunData<'_>, verdict: &mut Verdict) {
    for episode in stale_episodes(run) {
        let Some(last) = episode.stale.last() else {
            continue;
        };
        let pause = run.pauses.iter().find(|p| {
            p.worker == episode.stale_worker
                && p.resumed_at > episode.previous.at
                && p.stopped_at < last.at
        });
        // A SIGSTOP that landed while the worker was writing a batch of this shard: the
        // rest of that batch comes after SIGCONT and is allowed; it cannot be told apart
        // from a next batch, so such a pause proves nothing either way.
        let mid_batch =
            pause.is_some_and(|p| p.stopped_at.saturating_sub(episode.previous.at) < MID_BATCH);
        verdict.overlaps.push(Overlap {
            shard: episode.shard.to_owned(),
            stale_worker: episode.stale_worker,
            new_worker: episode.new_worker,
            from: episode.new_first.at,
            until: last.at,
            stale_deliveries: episode.stale.len() as u64,
            paused: pause.is_some(),
        });
        if mid_batch {
            verdict.inconclusive_pauses += 1;
            continue;
        }
        // kcl/README.md: the old holder hands over its last batch before the new holder's
        // first, and the two overlap only while a batch handed over just before the
        // deadline is still being processed, at most the lease safety margin (default: a
        // fifth of the failover time, what `consume` uses) later. `consume` checks that it
        // still holds the lease before writing a batch.
        let bound = episode.new_first.at + run.failover / 5 + DELIVERY_SLACK;
        let beyond: Vec<&&Delivery> = episode.stale.iter().filter(|d| d.at > bound).collect();
        if let Some(first) = beyond.first() {
            verdict.violate("stale-delivery", || {
                format!(
                    "worker #{} delivered {} records of {} from {:.3}s to {:.3}s{}, although worker #{} took it over and delivered it from {:.3}s (bound {:.3}s = its first delivery + the lease safety margin (failover / 5) + {:?}); first: id {} {}/{}",
                    episode.stale_worker,
                    beyond.len(),
                    episode.shard,
                    first.at.as_secs_f64(),
                    last.at.as_secs_f64(),
                    pause
                        .map(|p| format!(
                            " after a SIGSTOP from {:.3}s to {:.3}s",
                            p.stopped_at.as_secs_f64(),
                            p.resumed_at.as_secs_f64()
                        ))
                        .unwrap_or_default(),
                    episode.new_worker,
                    episode.new_first.at.as_secs_f64(),
                    bound.as_secs_f64(),
                    DELIVERY_SLACK,
                    first.id,
                    first.sequence_number,
                    first.sub_sequence_number,
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn record(shard: &str, seq: u64, key: &str, id: u64) -> StreamRecord {
        StreamRecord {
            shard: shard.into(),
            sequence_number: seq.to_string(),
            sub_sequence_number: 0,
            key: key.into(),
            id,
        }
    }

    struct Deliveries(Vec<Delivery>);

    impl Deliveries {
        fn add(&mut self, at: u64, worker: usize, r: &StreamRecord) -> &mut Self {
            let n = self.0.len() as u64;
            self.0.push(Delivery {
                n,
                at: ms(at),
                worker,
                shard: r.shard.clone(),
                sequence_number: r.sequence_number.clone(),
                sub_sequence_number: r.sub_sequence_number,
                key: r.key.clone(),
                id: r.id,
            });
            self
        }
    }

    fn snapshot(at: u64, shard: &str, owner: Option<usize>, checkpoint: u64) -> Snapshot {
        Snapshot {
            at: ms(at),
            reason: "periodic",
            leases: vec![LeaseView {
                shard: shard.into(),
                owner,
                checkpoint: ExtendedSequenceNumber::new(checkpoint.to_string(), 0),
            }],
        }
    }

    fn run(
        stream: &[StreamRecord],
        deliveries: &[Delivery],
        snapshots: &[Snapshot],
        pauses: &[Pause],
    ) -> Verdict {
        run_with_kills(stream, deliveries, snapshots, pauses, &[])
    }

    fn run_with_kills(
        stream: &[StreamRecord],
        deliveries: &[Delivery],
        snapshots: &[Snapshot],
        pauses: &[Pause],
        kills: &[(usize, Duration)],
    ) -> Verdict {
        verdict(&RunData {
            requested: stream.len() as u64,
            producer_failed: 0,
            stream,
            deliveries,
            snapshots,
            pauses,
            kills,
            failover: ms(3000),
        })
    }

    #[test]
    fn retaking_the_expired_lease_of_a_stopped_owner_is_not_stale() {
        let stream: Vec<_> = (0..6).map(|i| record("s0", 10 + i, "k", i)).collect();
        let mut d = Deliveries(Vec::new());
        // Worker 0 delivers; worker 1 takes over; worker 1 is stopped at 2,000 and its
        // lease expires at 5,000; worker 0 retakes it at 5,500 and loses it to worker 2
        // before the next snapshot (6,000) could show it.
        d.add(100, 0, &stream[0]).add(1000, 1, &stream[1]);
        d.add(5500, 0, &stream[2]).add(5501, 0, &stream[3]);
        d.add(9000, 2, &stream[4]).add(9001, 2, &stream[5]);
        let snapshots = [
            snapshot(500, "s0", Some(0), 10),
            snapshot(1500, "s0", Some(1), 11),
            snapshot(6000, "s0", Some(2), 13),
        ];
        let stopped = [Pause {
            worker: 1,
            stopped_at: ms(2000),
            resumed_at: ms(20_000),
        }];
        let verdict = run(&stream, &d.0, &snapshots, &stopped);
        assert!(verdict.passed(), "{:?}", verdict.violations);

        // The same with worker 1 killed instead of stopped.
        let verdict = run_with_kills(&stream, &d.0, &snapshots, &[], &[(1, ms(2000))]);
        assert!(verdict.passed(), "{:?}", verdict.violations);

        // Before the failover time had passed, the lease was still worker 1's.
        let mut early = Deliveries(Vec::new());
        early.add(100, 0, &stream[0]).add(1000, 1, &stream[1]);
        early.add(4000, 0, &stream[2]).add(4001, 0, &stream[3]);
        let verdict = run(&stream[..4], &early.0, &snapshots, &stopped);
        assert_eq!(verdict.violation_counts.get("stale-delivery"), Some(&1));
    }

    #[test]
    fn a_clean_failover_passes_with_its_duplicates() {
        let stream: Vec<_> = (0..4).map(|i| record("s0", 10 + i, "k", i)).collect();
        let mut d = Deliveries(Vec::new());
        d.add(100, 0, &stream[0]).add(110, 0, &stream[1]);
        // Worker 0 checkpointed 10, then died; worker 1 redelivers from 11.
        d.add(5000, 1, &stream[1])
            .add(5001, 1, &stream[2])
            .add(5002, 1, &stream[3]);
        let snapshots = [
            snapshot(200, "s0", Some(0), 10),
            snapshot(4000, "s0", None, 10),
        ];
        let verdict = run(&stream, &d.0, &snapshots, &[]);
        assert!(verdict.passed(), "{:?}", verdict.violations);
        assert_eq!(verdict.consumer_duplicates, 1);
        assert_eq!(verdict.delivered_distinct, 4);
        assert!(verdict.overlaps.is_empty());
    }

    #[test]
    fn loss_and_producer_loss_are_violations() {
        let stream: Vec<_> = (0..3).map(|i| record("s0", 10 + i, "k", i)).collect();
        let mut d = Deliveries(Vec::new());
        d.add(1, 0, &stream[0]).add(2, 0, &stream[2]);
        let verdict = verdict(&RunData {
            requested: 5,
            producer_failed: 1,
            stream: &stream,
            deliveries: &d.0,
            snapshots: &[],
            pauses: &[],
            kills: &[],
            failover: ms(3000),
        });
        assert_eq!(verdict.lost, 1);
        assert_eq!(verdict.violation_counts.get("lost"), Some(&1));
        assert_eq!(verdict.violation_counts.get("producer-lost"), Some(&1));
        assert_eq!(verdict.violation_counts.get("producer-failed"), Some(&1));
    }

    #[test]
    fn redelivery_behind_a_previous_owners_checkpoint_is_a_violation() {
        let stream: Vec<_> = (0..3).map(|i| record("s0", 10 + i, "k", i)).collect();
        let mut d = Deliveries(Vec::new());
        d.add(100, 0, &stream[0]).add(110, 0, &stream[1]);
        // Worker 0 checkpointed 11, yet worker 1 starts at 10.
        d.add(5000, 1, &stream[0])
            .add(5001, 1, &stream[1])
            .add(5002, 1, &stream[2]);
        let snapshots = [snapshot(300, "s0", Some(0), 11)];
        let verdict = run(&stream, &d.0, &snapshots, &[]);
        assert_eq!(
            verdict.violation_counts.get("duplicate-behind-checkpoint"),
            Some(&2)
        );
    }

    #[test]
    fn first_deliveries_must_follow_stream_order_per_key() {
        let stream = vec![
            record("parent", 1, "k", 7),
            record("parent", 2, "other", 8),
            record("child", 3, "k", 3),
        ];
        let mut d = Deliveries(Vec::new());
        // The child's record of key k is delivered before the parent's.
        d.add(1, 0, &stream[2])
            .add(2, 1, &stream[0])
            .add(3, 1, &stream[1]);
        let verdict = run(&stream, &d.0, &[], &[]);
        assert_eq!(verdict.keys_out_of_order, 1);
        assert_eq!(verdict.violation_counts.get("order"), Some(&1));
        // Redelivering an earlier record later is not an order violation.
        let mut d = Deliveries(Vec::new());
        d.add(1, 0, &stream[0])
            .add(2, 0, &stream[2])
            .add(3, 1, &stream[0]);
        d.add(4, 1, &stream[1]);
        assert!(run(&stream, &d.0, &[], &[]).passed());
    }

    #[test]
    fn a_paused_worker_delivering_after_resume_is_a_stale_delivery() {
        let stream: Vec<_> = (0..6).map(|i| record("s0", 10 + i, "k", i)).collect();
        let mut d = Deliveries(Vec::new());
        d.add(1000, 0, &stream[0]);
        // Worker 0 paused 2,000..14,000; worker 1 took over at ~8,000.
        d.add(8000, 1, &stream[1]).add(8001, 1, &stream[2]);
        // Worker 0 resumes and delivers a prefetched batch.
        d.add(14_010, 0, &stream[1]).add(14_011, 0, &stream[2]);
        d.add(15_000, 1, &stream[3])
            .add(15_001, 1, &stream[4])
            .add(15_002, 1, &stream[5]);
        let snapshots = [
            snapshot(500, "s0", Some(0), 10),
            snapshot(9000, "s0", Some(1), 11),
            snapshot(14_500, "s0", Some(1), 12),
        ];
        let pauses = [Pause {
            worker: 0,
            stopped_at: ms(2000),
            resumed_at: ms(14_000),
        }];
        let verdict = run(&stream, &d.0, &snapshots, &pauses);
        assert_eq!(verdict.violation_counts.get("stale-delivery"), Some(&1));
        assert_eq!(verdict.overlaps.len(), 1);
        assert!(verdict.overlaps[0].paused);
        assert_eq!(verdict.overlaps[0].stale_deliveries, 2);
        // Not counted again as duplicates behind a checkpoint.
        assert_eq!(
            verdict.violation_counts.get("duplicate-behind-checkpoint"),
            None
        );

        // A stop that landed mid-batch is inconclusive, not a violation.
        let pauses = [Pause {
            worker: 0,
            stopped_at: ms(1010),
            resumed_at: ms(14_000),
        }];
        let verdict = run(&stream, &d.0, &snapshots, &pauses);
        assert!(verdict.passed(), "{:?}", verdict.violations);
        assert_eq!(verdict.inconclusive_pauses, 1);
    }

    #[test]
    fn a_lease_given_back_is_not_stale_and_a_short_overlap_is_within_the_bound() {
        let stream: Vec<_> = (0..4).map(|i| record("s0", 10 + i, "k", i)).collect();
        // Worker 0 delivers, worker 1 steals, worker 0 finishes its batch 500 ms later.
        let mut d = Deliveries(Vec::new());
        d.add(100, 0, &stream[0])
            .add(1000, 1, &stream[1])
            .add(1500, 0, &stream[1]);
        d.add(2000, 1, &stream[2]).add(2001, 1, &stream[3]);
        let snapshots = [
            snapshot(1200, "s0", Some(1), 10),
            snapshot(1700, "s0", Some(1), 11),
        ];
        let verdict = run(&stream, &d.0, &snapshots, &[]);
        assert!(verdict.passed(), "{:?}", verdict.violations);
        assert_eq!(verdict.overlaps.len(), 1);

        // The table shows worker 0 owning it again after: a legitimate retake.
        let mut d = Deliveries(Vec::new());
        d.add(100, 0, &stream[0])
            .add(1000, 1, &stream[1])
            .add(9000, 0, &stream[2]);
        d.add(9001, 0, &stream[3]);
        let snapshots = [snapshot(9500, "s0", Some(0), 12)];
        let verdict = run(&stream, &d.0, &snapshots, &[]);
        assert!(verdict.overlaps.is_empty());
        assert!(verdict.passed(), "{:?}", verdict.violations);
    }

    #[test]
    fn a_lease_back_for_a_moment_between_snapshots_is_not_stale() {
        let stream: Vec<_> = (0..4).map(|i| record("s0", 10 + i, "k", i)).collect();
        // Worker 1 takes over at 1 s; the lease comes back to worker 0 (a snapshot at
        // 3.5 s shows it), which delivers at 3.8 s and hands it to worker 1 again before
        // the next snapshot (4.5 s, worker 1).
        let mut d = Deliveries(Vec::new());
        d.add(100, 0, &stream[0])
            .add(1000, 1, &stream[1])
            .add(3800, 0, &stream[2])
            .add(4200, 1, &stream[3]);
        let snapshots = [
            snapshot(1500, "s0", Some(1), 10),
            snapshot(3500, "s0", Some(0), 11),
            snapshot(4500, "s0", Some(1), 12),
        ];
        let verdict = run(&stream, &d.0, &snapshots, &[]);
        assert!(verdict.passed(), "{:?}", verdict.violations);

        // Without that snapshot, the same deliveries are a stale owner's.
        let snapshots = [
            snapshot(1500, "s0", Some(1), 10),
            snapshot(4500, "s0", Some(1), 12),
        ];
        let verdict = run(&stream, &d.0, &snapshots, &[]);
        assert!(!verdict.passed(), "a stale delivery");
    }
}
