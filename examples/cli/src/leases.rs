//! `kinesis leases`: an operator's view of a consumer application's lease table,
//! checkpoint resets and lease moves.
//!
//! Works on lease tables written by `kinesis-consumer` and by AWS's Java KCL 2.x (same
//! item schema).
//!
//! A reset while the application runs takes effect: the worker holding the lease sees, at
//! its next renewal or checkpoint (within a third of the failover time), that the lease was
//! changed by someone else and loses it (its processor gets `lease_lost`, its checkpoints
//! fail); the lease is then taken after the failover time, by any worker, from the reset
//! position. Records that worker processed in between are delivered again or skipped, as
//! the reset says. Stopping the application first avoids even that. `reset --all` resets
//! every lease the same way, parents first (see `kinesis_consumer::leases::reset`), to
//! the oldest or newest record, or to the first record at or after a time.
//!
//! A move names the new owner in the table: the holder drops the lease at its next renewal,
//! and the named `kinesis-consumer` worker takes it at its next taker round and starts
//! once the previous holder's lease deadline has passed (at most the failover time). The
//! balancer may move it again if the move left the workers uneven. (Java KCL workers do
//! not pick up a lease assigned to them: they take it when it expires.)

use aws_sdk_kinesis::types::ShardIteratorType;
use clap::{Args as ClapArgs, Subcommand};
use kinesis_consumer::leases::coordination::{
    CoordinatorStore, DynamoDbCoordinatorStore, LockItem, LEADER_LOCK_KEY,
};
use kinesis_consumer::leases::reset::{LeaseReset, ResetReason, ResetTarget};
use kinesis_consumer::leases::{CheckpointUpdate, DynamoDbLeaseStore, LeaseStore, LeaseStoreError};
use kinesis_consumer::{ExtendedSequenceNumber, Lease, SequencePosition};

use crate::{parse_duration, Error};

/// Shows, resets or moves the leases of a consumer application.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `kinesis leases` subcommand.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// One line (or JSON object) per shard lease.
    Show {
        /// Application name (the lease table's name).
        #[arg(long)]
        app: String,
        /// The stream, to show how far behind each checkpoint is.
        #[arg(long)]
        stream: Option<String>,
        /// One JSON object per lease instead of a table.
        #[arg(long)]
        json: bool,
        /// Only the leases this worker holds (found through the table's
        /// `LeaseOwnerToLeaseKeyIndex` when it has one, as KCL 3 workers do; by a scan
        /// otherwise).
        #[arg(long, value_name = "WORKER_ID")]
        worker: Option<String>,
    },
    /// A live view of a running application, redrawn every `--interval` on a terminal
    /// (plain blocks of lines otherwise): per shard its owner, checkpoint lag (ms behind
    /// the tip, with `--stream`), throughput and any handoff in progress; per worker its
    /// leases and total KiB/s. Ctrl-C ends it.
    Watch {
        /// Application name (the lease table's name).
        #[arg(long)]
        app: String,
        /// The stream, to show how far behind each checkpoint is (two Kinesis calls per
        /// shard every `--lag-interval`).
        #[arg(long)]
        stream: Option<String>,
        /// Time between two views.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
        interval: std::time::Duration,
        /// Time between two lag measurements of a shard (GetShardIterator and GetRecords
        /// count against the shard's five reads per second).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
        lag_interval: std::time::Duration,
        /// Stop after this many views (default: until Ctrl-C).
        #[arg(long, value_name = "N")]
        rounds: Option<u64>,
    },
    /// Sets one shard's checkpoint (--shard), or every shard's (--all: a replay from a
    /// time, or from the oldest or newest record). Workers holding a lease that is reset
    /// lose it and resume from the new checkpoint.
    Reset {
        /// Application name (the lease table's name).
        #[arg(long)]
        app: String,
        /// The shard.
        #[arg(
            long,
            value_name = "SHARD_ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        shard: Option<String>,
        /// Every lease of the table (in a multi-stream table with --stream: that stream's).
        #[arg(long)]
        all: bool,
        /// The stream (name or ARN): needed by --to at-timestamp, to find each shard's
        /// record at that time.
        #[arg(long)]
        stream: Option<String>,
        /// With --shard: `trim-horizon`, `latest` or a sequence number. With --all:
        /// `trim-horizon`, `latest` or `at-timestamp=<RFC 3339 or epoch seconds>` (each
        /// shard resumes at its first record at or after that time). `trim_horizon` is
        /// accepted too.
        #[arg(long, value_name = "POSITION")]
        to: String,
        /// Do it (without it, the change is only described).
        #[arg(long)]
        yes: bool,
    },
    /// Moves one shard's lease to a named worker: a graceful handoff (the holder's processor
    /// finishes and checkpoints, then the holder hands the lease over and the worker named
    /// starts at once), or with --force a plain take (the worker named starts once the
    /// holder's deadline has passed: for holders that do not know handoffs, such as the
    /// Java KCL 2.x)
    Move {
        /// Application name (the lease table's name).
        #[arg(long)]
        app: String,
        /// The shard.
        #[arg(long, value_name = "SHARD_ID")]
        shard: String,
        /// The worker id of the new owner.
        #[arg(long, value_name = "WORKER_ID")]
        to: String,
        /// Take the lease for the worker named instead of asking its holder to hand it
        /// over.
        #[arg(long)]
        force: bool,
        /// How long to wait for the holder to hand the lease over.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
        wait: std::time::Duration,
        /// Do it (without it, the move is only described).
        #[arg(long)]
        yes: bool,
    },
}

fn position(checkpoint: &ExtendedSequenceNumber) -> String {
    match checkpoint.sub_sequence_number {
        0 => checkpoint.position.as_str().to_owned(),
        sub => format!("{}/{sub}", checkpoint.position.as_str()),
    }
}

fn parse_position(value: &str) -> Result<ExtendedSequenceNumber, Error> {
    let position = match value.to_ascii_lowercase().replace('_', "-").as_str() {
        "trim-horizon" => SequencePosition::TrimHorizon,
        "latest" => SequencePosition::Latest,
        _ => match SequencePosition::parse(value) {
            Some(p @ SequencePosition::Sequence(_)) => p,
            _ if value
                .to_ascii_lowercase()
                .replace('_', "-")
                .starts_with("at-timestamp") =>
            {
                return Err(format!(
                    "--to {value:?}: a reset to a time is for every shard: use --all --stream S"
                )
                .into())
            }
            _ => {
                return Err(format!(
                    "--to {value:?}: expected trim-horizon, latest or a sequence number"
                )
                .into())
            }
        },
    };
    Ok(ExtendedSequenceNumber::sentinel(position))
}

/// Milliseconds the shard's tip is ahead of the checkpoint, when Kinesis can tell.
/// In a multi-stream table only the leases of `stream` (matched by name) have one.
async fn lag(client: &aws_sdk_kinesis::Client, stream: &str, lease: &Lease) -> Option<i64> {
    let shard = match &lease.multi_stream {
        None => lease.lease_key.as_str(),
        Some((identifier, shard)) => {
            let name = identifier.split(':').nth(1)?;
            let given = stream.rsplit('/').next().unwrap_or(stream);
            if name != given {
                return None;
            }
            shard.as_str()
        }
    };
    let request = crate::streams::named!(client.get_shard_iterator().shard_id(shard), stream);
    let request = match &lease.checkpoint.position {
        SequencePosition::Sequence(seq) => request
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number(seq),
        SequencePosition::TrimHorizon => {
            request.shard_iterator_type(ShardIteratorType::TrimHorizon)
        }
        SequencePosition::Latest => return Some(0),
        SequencePosition::ShardEnd | SequencePosition::AtTimestamp => return None,
    };
    let iterator = request.send().await.ok()?.shard_iterator?;
    let page = client
        .get_records()
        .shard_iterator(iterator)
        .limit(1)
        .send()
        .await
        .ok()?;
    page.millis_behind_latest()
}

fn set(values: &std::collections::BTreeSet<String>) -> String {
    if values.is_empty() {
        "-".to_owned()
    } else {
        values.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

fn kbps(throughput: Option<f64>) -> String {
    throughput.map_or_else(|| "-".to_owned(), |t| format!("{t:.2}"))
}

/// Per worker: the leases it owns (unfinished) and their total throughput, as its
/// renewals last wrote it (`throughputKBps`; leases without a figure count as 0).
fn print_workers(leases: &[Lease]) {
    let lines = worker_lines(leases);
    if lines.is_empty() {
        return;
    }
    println!();
    for line in lines {
        println!("{line}");
    }
    println!();
}

/// The per-worker summary: a header and one line per worker.
fn worker_lines(leases: &[Lease]) -> Vec<String> {
    let mut workers: std::collections::BTreeMap<&str, (usize, f64, usize)> =
        std::collections::BTreeMap::new();
    for lease in leases.iter().filter(|l| !l.is_finished()) {
        let owner = lease.lease_owner.as_deref().unwrap_or("(unassigned)");
        let entry = workers.entry(owner).or_default();
        entry.0 += 1;
        if let Some(throughput) = lease.throughput_kbps {
            entry.1 += throughput;
            entry.2 += 1;
        }
    }
    if workers.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!("{:<28} {:>7} {:>10}", "worker", "leases", "KiB/s")];
    for (worker, (count, total, measured)) in workers {
        let total = if measured == 0 {
            "-".to_owned()
        } else {
            format!("{total:.2}")
        };
        lines.push(format!("{worker:<28} {count:>7} {total:>10}"));
    }
    lines
}

/// A graceful handoff under way: `from -> to`, or `-`.
fn handoff(lease: &Lease) -> String {
    match (&lease.checkpoint_owner, &lease.lease_owner) {
        (Some(from), Some(to)) => format!("{from} -> {to}"),
        _ => "-".to_owned(),
    }
}

/// The fleet's leader line: the holder of the coordinator state table's lock and the
/// successors it named, or none (every worker takes its own leases, or no leader yet).
fn leader_line(lock: Option<&LockItem>) -> String {
    match lock.filter(|lock| !lock.released) {
        Some(lock) => format!(
            "leader {} (successors: {})",
            lock.owner,
            if lock.successors.is_empty() {
                "-".to_owned()
            } else {
                lock.successors.join(", ")
            }
        ),
        None => "leader: none (every worker takes its own leases, or none elected yet)".to_owned(),
    }
}

/// One view of `leases watch`.
fn watch_frame(
    table: &str,
    leases: &[Lease],
    lags: &std::collections::HashMap<String, Option<i64>>,
    lock: Option<&LockItem>,
) -> Vec<String> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut lines = vec![format!(
        "lease table {table}, {} leases, {now}",
        leases.len()
    )];
    lines.push(leader_line(lock));
    lines.push(format!(
        "{:<24} {:<28} {:>9} {:>9}  {}",
        "shard", "owner", "lag ms", "KiB/s", "handoff"
    ));
    for lease in leases {
        let lag = match (lease.is_finished(), lags.get(&lease.lease_key)) {
            (true, _) => "done".to_owned(),
            (false, Some(Some(lag))) => lag.to_string(),
            (false, _) => "-".to_owned(),
        };
        lines.push(format!(
            "{:<24} {:<28} {:>9} {:>9}  {}",
            lease.lease_key,
            lease.actual_owner().unwrap_or("-"),
            lag,
            kbps(lease.throughput_kbps),
            handoff(lease),
        ));
    }
    lines.extend(worker_lines(leases));
    lines
}

/// How `leases watch` runs.
struct WatchOptions {
    interval: std::time::Duration,
    lag_interval: std::time::Duration,
    rounds: Option<u64>,
}

async fn watch(
    store: &DynamoDbLeaseStore,
    coordination: &DynamoDbCoordinatorStore,
    kinesis: &aws_sdk_kinesis::Client,
    stream: Option<&str>,
    options: WatchOptions,
) -> Result<(), Error> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal();
    let mut lags: std::collections::HashMap<String, Option<i64>> = std::collections::HashMap::new();
    let mut measured: std::collections::HashMap<String, std::time::Instant> =
        std::collections::HashMap::new();
    let stop = crate::signal::stop_signal();
    tokio::pin!(stop);
    let mut round = 0;
    loop {
        let mut leases = store.list_leases().await?;
        leases.sort_by(|a, b| a.lease_key.cmp(&b.lease_key));
        if let Some(stream) = stream {
            for lease in leases.iter().filter(|l| !l.is_finished()) {
                let due = measured
                    .get(&lease.lease_key)
                    .is_none_or(|at| at.elapsed() >= options.lag_interval);
                if due {
                    lags.insert(lease.lease_key.clone(), lag(kinesis, stream, lease).await);
                    measured.insert(lease.lease_key.clone(), std::time::Instant::now());
                }
            }
        }
        // No coordinator table (every worker takes its own leases): no leader.
        let lock = coordination.read_lock(LEADER_LOCK_KEY).await.ok().flatten();
        let lines = watch_frame(store.table(), &leases, &lags, lock.as_ref());
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear, then the view; each line clears what an older one left.
            write!(out, "\x1b[H\x1b[2J")?;
            for line in &lines {
                writeln!(out, "{line}\x1b[K")?;
            }
        } else {
            for line in &lines {
                writeln!(out, "{line}")?;
            }
            writeln!(out)?;
        }
        out.flush()?;
        drop(out);
        round += 1;
        if options.rounds.is_some_and(|rounds| round >= rounds) {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(options.interval) => {}
            () = &mut stop => return Ok(()),
        }
    }
}

async fn show(
    store: &DynamoDbLeaseStore,
    kinesis: &aws_sdk_kinesis::Client,
    stream: Option<&str>,
    json: bool,
    worker: Option<&str>,
) -> Result<(), Error> {
    let mut leases = match worker {
        None => store.list_leases().await?,
        Some(worker) => {
            store.check_owner_index().await?;
            let mut leases = Vec::new();
            for key in store.list_lease_keys_owned_by(worker).await? {
                // The index is eventually consistent: read each lease and keep it only if
                // the worker still holds it.
                if let Some(lease) = store.get_lease(&key).await? {
                    if lease.lease_owner.as_deref() == Some(worker) {
                        leases.push(lease);
                    }
                }
            }
            leases
        }
    };
    leases.sort_by(|a, b| a.lease_key.cmp(&b.lease_key));
    if !json {
        println!(
            "{:<24} {:<28} {:>8} {:<60} {:<24} {:<40} {:>9} {:>9}",
            "shard", "owner", "counter", "checkpoint", "parents", "children", "lag ms", "KiB/s"
        );
    }
    for lease in &leases {
        let lag = match stream {
            Some(stream) => lag(kinesis, stream, lease).await,
            None => None,
        };
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "shard_id": lease.lease_key,
                    "owner": lease.lease_owner,
                    "counter": lease.lease_counter,
                    "checkpoint": lease.checkpoint.position.as_str(),
                    "checkpoint_sub_sequence_number": lease.checkpoint.sub_sequence_number,
                    "pending_checkpoint": lease.pending_checkpoint.as_ref().map(position),
                    "owner_switches_since_checkpoint": lease.owner_switches_since_checkpoint,
                    "parent_shard_ids": lease.parent_shard_ids,
                    "child_shard_ids": lease.child_shard_ids,
                    "millis_behind_latest": lag,
                    "throughput_kbps": lease.throughput_kbps,
                })
            );
        } else {
            println!(
                "{:<24} {:<28} {:>8} {:<60} {:<24} {:<40} {:>9} {:>9}",
                lease.lease_key,
                lease.lease_owner.as_deref().unwrap_or("-"),
                lease.lease_counter,
                position(&lease.checkpoint),
                set(&lease.parent_shard_ids),
                set(&lease.child_shard_ids),
                lag.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                kbps(lease.throughput_kbps),
            );
        }
    }
    if !json {
        print_workers(&leases);
        match worker {
            None => println!("{} leases in table {}", leases.len(), store.table()),
            Some(worker) => println!(
                "{} leases of worker {worker} in table {} (listed by {})",
                leases.len(),
                store.table(),
                if store.uses_owner_index() {
                    "the owner index"
                } else {
                    "a scan"
                }
            ),
        }
    }
    Ok(())
}

async fn reset(
    store: &DynamoDbLeaseStore,
    shard: &str,
    to: &str,
    confirmed: bool,
) -> Result<(), Error> {
    let checkpoint = parse_position(to)?;
    for _ in 0..5 {
        let lease = store
            .get_lease(shard)
            .await?
            .ok_or_else(|| format!("no lease for {shard} in table {}", store.table()))?;
        let owner = lease.lease_owner.as_deref().unwrap_or("nobody");
        println!(
            "{shard}: checkpoint {} -> {} (held by {owner})",
            position(&lease.checkpoint),
            position(&checkpoint)
        );
        if !confirmed {
            println!("nothing changed: add --yes to reset");
            return Ok(());
        }
        let update = CheckpointUpdate::commit(checkpoint.clone());
        match store.update_checkpoint(&lease, &update).await {
            Ok(_) => {
                println!("{shard}: checkpoint reset");
                return Ok(());
            }
            // A worker renewed the lease in between: read it again.
            Err(LeaseStoreError::ConditionFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(format!("{shard}: the lease kept changing; stop the application and retry").into())
}

/// One line of `leases reset --all`: the shard, its checkpoint before and after, why, and
/// the worker that loses the lease.
fn reset_line(
    shard: &str,
    from: &ExtendedSequenceNumber,
    to: Option<&ExtendedSequenceNumber>,
    reason: ResetReason,
    owner: Option<&str>,
) -> String {
    let held = owner.map_or_else(String::new, |owner| format!("; held by {owner}"));
    match to {
        Some(to) => format!(
            "{shard}: {} -> {} ({reason}{held})",
            position(from),
            position(to)
        ),
        None => format!("{shard}: {} unchanged ({reason})", position(from)),
    }
}

/// `leases reset --all`: every lease (of `stream`'s, in a multi-stream table) to `to`.
async fn reset_all(
    store: &DynamoDbLeaseStore,
    stream: Option<(aws_sdk_kinesis::Client, String)>,
    to: &str,
    confirmed: bool,
) -> Result<(), Error> {
    let target = ResetTarget::parse(to)?;
    if matches!(target, ResetTarget::AtTimestamp(_)) && stream.is_none() {
        return Err(format!(
            "--to {to}: needs --stream (each shard's record at that time is read from it)"
        )
        .into());
    }
    let mut reset = LeaseReset::new(store, target);
    if let Some((client, stream)) = stream {
        reset = reset.stream(client, stream);
    }
    let plan = reset.plan().await?;
    if !confirmed {
        let mut changes = 0;
        for lease in plan.leases() {
            changes += usize::from(lease.new_checkpoint().is_some());
            println!(
                "{}",
                reset_line(
                    lease.shard_id(),
                    lease.checkpoint(),
                    lease.new_checkpoint(),
                    lease.reason(),
                    lease.lease().lease_owner.as_deref(),
                )
            );
        }
        println!(
            "{} leases, {changes} to reset to {target}, {} unchanged; nothing changed: add --yes to reset",
            plan.leases().len(),
            plan.leases().len() - changes
        );
        return Ok(());
    }
    let (mut written, mut unchanged, mut failed) = (0, 0, 0);
    for outcome in plan.apply(store).await {
        match &outcome.result {
            Ok(to) => {
                if to.is_some() {
                    written += 1;
                } else {
                    unchanged += 1;
                }
                println!(
                    "{}",
                    reset_line(
                        &outcome.shard_id,
                        &outcome.previous,
                        to.as_ref(),
                        outcome.reason,
                        outcome.owner.as_deref(),
                    )
                );
            }
            Err(error) => {
                failed += 1;
                println!(
                    "{}: {} not reset: {}",
                    outcome.shard_id,
                    position(&outcome.previous),
                    kinesis_errors::ErrorChain::new(error)
                );
            }
        }
    }
    println!("{written} leases reset to {target}, {unchanged} unchanged, {failed} failed");
    if failed > 0 {
        return Err(format!(
            "{failed} leases not reset (the others were): run the same command again"
        )
        .into());
    }
    Ok(())
}

/// How `leases move` moves a lease.
struct Move {
    force: bool,
    wait: std::time::Duration,
    yes: bool,
}

async fn move_lease(
    store: &DynamoDbLeaseStore,
    shard: &str,
    to: &str,
    how: Move,
) -> Result<(), Error> {
    for _ in 0..5 {
        let lease = store
            .get_lease(shard)
            .await?
            .ok_or_else(|| format!("no lease for {shard} in table {}", store.table()))?;
        if lease.is_finished() {
            return Err(format!("{shard} is finished (SHARD_END): nothing to move").into());
        }
        if let (Some(holder), false) = (&lease.checkpoint_owner, how.force) {
            if lease.is_owned_by(to) {
                // Ours (a retried request whose first attempt was applied, or a rerun).
                println!("{shard}: a handoff from {holder} to {to} is under way");
                if !how.yes {
                    return Ok(());
                }
                return wait_for_handoff(store, shard, to, how.wait).await;
            }
            let going = lease.lease_owner.as_deref().unwrap_or("nobody");
            return Err(format!(
                "{shard}: a handoff from {holder} to {going} is under way; wait for it, or use --force"
            )
            .into());
        }
        let owner = lease.actual_owner().unwrap_or("nobody").to_owned();
        if owner == to && !how.force {
            println!("{shard}: already owned by {to}");
            return Ok(());
        }
        let graceful = !how.force && lease.lease_owner.is_some() && owner != to;
        let kind = if graceful { "graceful handoff" } else { "take" };
        println!("{shard}: owner {owner} -> {to} ({kind})");
        if !how.yes {
            println!("nothing changed: add --yes to move");
            return Ok(());
        }
        let result = if graceful {
            store.request_handoff(&lease, to).await
        } else {
            store.take_lease(&lease, to).await
        };
        match result {
            Ok(_) if graceful => {
                println!(
                    "{shard}: handoff requested; {owner} finishes, checkpoints and hands it over"
                );
                return wait_for_handoff(store, shard, to, how.wait).await;
            }
            Ok(_) => {
                println!("{shard}: moved to {to}");
                return Ok(());
            }
            // A worker renewed the lease in between: read it again.
            Err(LeaseStoreError::ConditionFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(format!("{shard}: the lease kept changing; retry").into())
}

/// Waits until the handoff of `shard` is over.
async fn wait_for_handoff(
    store: &DynamoDbLeaseStore,
    shard: &str,
    to: &str,
    wait: std::time::Duration,
) -> Result<(), Error> {
    let started = std::time::Instant::now();
    loop {
        let lease = store
            .get_lease(shard)
            .await?
            .ok_or_else(|| format!("{shard}: the lease was deleted"))?;
        if lease.checkpoint_owner.is_none() {
            return match lease.lease_owner.as_deref() {
                Some(owner) if owner == to => {
                    println!("{shard}: moved to {to} in {:.1?}", started.elapsed());
                    Ok(())
                }
                owner => Err(format!("{shard}: the handoff ended with owner {owner:?}").into()),
            };
        }
        if started.elapsed() > wait {
            return Err(format!(
                "{shard}: not handed over after {wait:?}; the holder finishes it, or the lease \
                 expires and {to} takes it"
            )
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs `kinesis leases`.
pub async fn run(args: Args) -> Result<(), Error> {
    let config = crate::aws_config().await?;
    let table = match &args.command {
        Command::Show { app, .. }
        | Command::Watch { app, .. }
        | Command::Reset { app, .. }
        | Command::Move { app, .. } => app.clone(),
    };
    run_command(args, &config)
        .await
        .map_err(|error| crate::report::context(format!("lease table {table}"), error))
}

async fn run_command(args: Args, config: &aws_config::SdkConfig) -> Result<(), Error> {
    let dynamodb = aws_sdk_dynamodb::Client::new(config);
    match args.command {
        Command::Show {
            app,
            stream,
            json,
            worker,
        } => {
            let store = DynamoDbLeaseStore::new(dynamodb, app);
            let kinesis = aws_sdk_kinesis::Client::new(config);
            show(&store, &kinesis, stream.as_deref(), json, worker.as_deref()).await
        }
        Command::Watch {
            app,
            stream,
            interval,
            lag_interval,
            rounds,
        } => {
            let coordination = DynamoDbCoordinatorStore::new(
                dynamodb.clone(),
                &app,
                kinesis_consumer::LeaseTableConfig::default(),
            );
            let store = DynamoDbLeaseStore::new(dynamodb, app);
            let kinesis = aws_sdk_kinesis::Client::new(config);
            let options = WatchOptions {
                interval,
                lag_interval,
                rounds,
            };
            watch(&store, &coordination, &kinesis, stream.as_deref(), options).await
        }
        Command::Reset {
            app,
            shard,
            all,
            stream,
            to,
            yes,
        } => {
            let store = DynamoDbLeaseStore::new(dynamodb, app);
            match shard {
                Some(shard) if !all => reset(&store, &shard, &to, yes).await,
                _ => {
                    let stream = stream.map(|s| (aws_sdk_kinesis::Client::new(config), s));
                    reset_all(&store, stream, &to, yes).await
                }
            }
        }
        Command::Move {
            app,
            shard,
            to,
            force,
            wait,
            yes,
        } => {
            let store = DynamoDbLeaseStore::new(dynamodb, app);
            let how = Move { force, wait, yes };
            move_lease(&store, &shard, &to, how).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(
            parse_position("TRIM_HORIZON").ok(),
            Some(ExtendedSequenceNumber::trim_horizon())
        );
        assert!(parse_position("latest").is_ok());
        assert!(parse_position("4959033827149025660855969253836157109592157598913658").is_ok());
        assert!(parse_position("yesterday").is_err());
        let error = parse_position("at-timestamp=0").unwrap_err().to_string();
        assert!(error.contains("--all"), "{error}");
    }

    #[test]
    fn reset_lines_name_the_shard_the_positions_and_the_holder() {
        let from = ExtendedSequenceNumber::new("42", 3);
        let to = ExtendedSequenceNumber::trim_horizon();
        assert_eq!(
            reset_line(
                "shardId-1",
                &from,
                Some(&to),
                ResetReason::OldestAtTime,
                Some("w1")
            ),
            "shardId-1: 42/3 -> TRIM_HORIZON (the first record at or after the time is the \
             oldest; held by w1)"
        );
        assert_eq!(
            reset_line("shardId-1", &from, None, ResetReason::Gone, None),
            "shardId-1: 42/3 unchanged (the shard is no longer in the stream)"
        );
    }
}
