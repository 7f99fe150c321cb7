//! Operator's view of a consumer application's lease table, and checkpoint resets.
//!
//! Works on lease tables written by `kinesis-consumer` and by AWS's Java KCL 2.x (same
//! item schema). Endpoint, region and credentials come from the standard AWS
//! configuration.
//!
//! ```text
//! leases --app indexer                      # one line per shard lease
//! leases --app indexer --stream orders      # plus how far each shard's checkpoint is behind
//! leases --app indexer --json               # one JSON object per lease
//! leases --app indexer --shard shardId-000000000001 --reset-to trim_horizon --yes
//! ```
//!
//! A reset while the application runs takes effect: the worker holding the lease sees,
//! at its next renewal or checkpoint (within a third of the failover time), that the
//! checkpoint was changed by someone else and loses the lease (its processor gets
//! `lease_lost`, its checkpoints fail); the lease is then taken after the failover time, by
//! any worker, from the reset position. Records that worker processed in between are
//! delivered again or skipped, as the reset says. Stopping the application first avoids
//! even that.

use std::process::ExitCode;

use aws_sdk_kinesis::types::ShardIteratorType;
use clap::Parser;
use kinesis_consumer::leases::{CheckpointUpdate, DynamoDbLeaseStore, LeaseStore, LeaseStoreError};
use kinesis_consumer::{ExtendedSequenceNumber, Lease, SequencePosition};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Shows a consumer application's lease table, or resets one shard's checkpoint.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Application name (the lease table's name).
    #[arg(long)]
    app: String,
    /// The stream, to show how far behind each checkpoint is.
    #[arg(long)]
    stream: Option<String>,
    /// One JSON object per lease instead of a table.
    #[arg(long)]
    json: bool,
    /// Set the checkpoint of `--shard` to `trim_horizon`, `latest` or a sequence number.
    #[arg(long, value_name = "POSITION", requires = "shard")]
    reset_to: Option<String>,
    /// The shard whose checkpoint `--reset-to` sets.
    #[arg(long, value_name = "ID", requires = "reset_to")]
    shard: Option<String>,
    /// Confirms `--reset-to` (without it, the reset is only described).
    #[arg(long)]
    yes: bool,
}

fn position(checkpoint: &ExtendedSequenceNumber) -> String {
    match checkpoint.sub_sequence_number {
        0 => checkpoint.position.as_str().to_owned(),
        sub => format!("{}/{sub}", checkpoint.position.as_str()),
    }
}

fn parse_position(value: &str) -> Result<ExtendedSequenceNumber, Error> {
    let position = match value.to_ascii_lowercase().as_str() {
        "trim_horizon" => SequencePosition::TrimHorizon,
        "latest" => SequencePosition::Latest,
        _ => match SequencePosition::parse(value) {
            Some(p @ SequencePosition::Sequence(_)) => p,
            _ => {
                return Err(format!(
                    "--reset-to {value:?}: expected trim_horizon, latest or a sequence number"
                )
                .into())
            }
        },
    };
    Ok(ExtendedSequenceNumber::sentinel(position))
}

/// Milliseconds the shard's tip is ahead of the checkpoint, when Kinesis can tell.
async fn lag(client: &aws_sdk_kinesis::Client, stream: &str, lease: &Lease) -> Option<i64> {
    let request = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(&lease.lease_key);
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

async fn show(
    args: &Args,
    store: &DynamoDbLeaseStore,
    kinesis: &aws_sdk_kinesis::Client,
) -> Result<(), Error> {
    let mut leases = store.list_leases().await?;
    leases.sort_by(|a, b| a.lease_key.cmp(&b.lease_key));
    if !args.json {
        println!(
            "{:<24} {:<28} {:>8} {:<60} {:<24} {:<40} {:>9}",
            "shard", "owner", "counter", "checkpoint", "parents", "children", "lag ms"
        );
    }
    for lease in &leases {
        let lag = match &args.stream {
            Some(stream) => lag(kinesis, stream, lease).await,
            None => None,
        };
        if args.json {
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
                })
            );
        } else {
            println!(
                "{:<24} {:<28} {:>8} {:<60} {:<24} {:<40} {:>9}",
                lease.lease_key,
                lease.lease_owner.as_deref().unwrap_or("-"),
                lease.lease_counter,
                position(&lease.checkpoint),
                set(&lease.parent_shard_ids),
                set(&lease.child_shard_ids),
                lag.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            );
        }
    }
    if !args.json {
        println!("{} leases in table {}", leases.len(), store.table());
    }
    Ok(())
}

async fn reset(
    store: &DynamoDbLeaseStore,
    shard: &str,
    to: &str,
    confirmed: bool,
) -> Result<bool, Error> {
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
            println!("nothing changed: add --yes to reset (stop the application first)");
            return Ok(false);
        }
        let update = CheckpointUpdate::commit(checkpoint.clone());
        match store.update_checkpoint(&lease, &update).await {
            Ok(_) => {
                println!("{shard}: checkpoint reset");
                return Ok(true);
            }
            // A worker renewed the lease in between: read it again.
            Err(LeaseStoreError::ConditionFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(format!("{shard}: the lease kept changing; stop the application and retry").into())
}

async fn run(args: Args) -> Result<bool, Error> {
    let config = aws_config::load_from_env().await;
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &args.app);
    match (&args.reset_to, &args.shard) {
        (Some(to), Some(shard)) => reset(&store, shard, to, args.yes).await,
        _ => {
            show(&args, &store, &aws_sdk_kinesis::Client::new(&config)).await?;
            Ok(true)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("leases: {error}");
            ExitCode::FAILURE
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
    }
}
