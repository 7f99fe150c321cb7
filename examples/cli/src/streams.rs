//! `kinesis streams`: list, describe, create and reshard streams; JSON on standard output.

use std::time::Duration;

use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::types::{ScalingType, Shard};
use aws_sdk_kinesis::Client;
use clap::{Args as ClapArgs, Subcommand};
use kinesis_producer::HashKey;

use crate::{parse_duration, Error};

/// Lists, describes, creates or reshards streams.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `kinesis streams` subcommand.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// The account's streams in this region: `{"streams": [...]}`.
    List,
    /// A stream's status, retention and shards (open and closed, with their parents and
    /// hash key ranges).
    Describe {
        /// Stream name.
        #[arg(long)]
        stream: String,
    },
    /// Creates a provisioned stream and waits until it is ACTIVE.
    Create {
        /// Stream name.
        #[arg(long)]
        stream: String,
        /// Number of shards.
        #[arg(long, value_name = "N")]
        shards: i32,
        /// How long to wait for ACTIVE.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
        wait: Duration,
    },
    /// Changes a stream's shards (one of `--shard-count`, `--split`, `--merge`) and waits
    /// until it is ACTIVE again.
    Reshard {
        /// Stream name.
        #[arg(long)]
        stream: String,
        /// Scale uniformly to this many open shards (UpdateShardCount).
        #[arg(long, value_name = "N", conflicts_with_all = ["split", "merge"])]
        shard_count: Option<i32>,
        /// Split this shard (SplitShard), at `--at` or in the middle of its hash key range.
        #[arg(long, value_name = "SHARD_ID", conflicts_with = "merge")]
        split: Option<String>,
        /// With `--split`: the first hash key of the second child (decimal).
        #[arg(long, value_name = "HASH_KEY", requires = "split")]
        at: Option<String>,
        /// Merge these two adjacent shards (MergeShards).
        #[arg(long, value_name = "SHARD_ID", num_args = 2)]
        merge: Vec<String>,
        /// How long to wait for ACTIVE.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
        wait: Duration,
    },
}

fn call<E: std::error::Error + 'static>(operation: &str, error: E) -> Error {
    format!("{operation}: {}", DisplayErrorContext(&error)).into()
}

async fn list(client: &Client) -> Result<serde_json::Value, Error> {
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            Some(token) => client.list_streams().next_token(token),
            None => client.list_streams(),
        };
        let page = request.send().await.map_err(|e| call("ListStreams", e))?;
        names.extend(page.stream_names().iter().cloned());
        next = page.next_token().map(str::to_owned);
        if next.is_none() || !page.has_more_streams() {
            return Ok(serde_json::json!({ "streams": names }));
        }
    }
}

async fn shards(client: &Client, stream: &str) -> Result<Vec<Shard>, Error> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let page = request.send().await.map_err(|e| call("ListShards", e))?;
        shards.extend(page.shards().iter().cloned());
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(shards);
        }
    }
}

fn is_open(shard: &Shard) -> bool {
    shard
        .sequence_number_range()
        .is_none_or(|r| r.ending_sequence_number().is_none())
}

async fn describe(client: &Client, stream: &str) -> Result<serde_json::Value, Error> {
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| call("DescribeStreamSummary", e))?;
    let summary = summary
        .stream_description_summary()
        .ok_or("DescribeStreamSummary: no description in the answer")?;
    let shards = shards(client, stream).await?;
    let shard_list: Vec<serde_json::Value> = shards
        .iter()
        .map(|s| {
            serde_json::json!({
                "shard_id": s.shard_id(),
                "open": is_open(s),
                "parent_shard_id": s.parent_shard_id(),
                "adjacent_parent_shard_id": s.adjacent_parent_shard_id(),
                "starting_hash_key": s.hash_key_range().map(|r| r.starting_hash_key()),
                "ending_hash_key": s.hash_key_range().map(|r| r.ending_hash_key()),
            })
        })
        .collect();
    Ok(serde_json::json!({
        "stream": summary.stream_name(),
        "arn": summary.stream_arn(),
        "status": summary.stream_status().as_str(),
        "retention_hours": summary.retention_period_hours(),
        "open_shards": shards.iter().filter(|s| is_open(s)).count(),
        "shards": shard_list,
    }))
}

/// The middle of a shard's hash key range: where `--split` cuts by default.
fn midpoint(shard: &Shard) -> Result<String, Error> {
    let range = shard
        .hash_key_range()
        .ok_or("the shard has no hash key range")?;
    let start: HashKey = range.starting_hash_key().parse()?;
    let end: HashKey = range.ending_hash_key().parse()?;
    Ok((start.0 + (end.0 - start.0) / 2 + 1).to_string())
}

async fn reshard(
    client: &Client,
    stream: &str,
    shard_count: Option<i32>,
    split: Option<String>,
    at: Option<String>,
    merge: Vec<String>,
) -> Result<(), Error> {
    match (shard_count, split, merge.as_slice()) {
        (Some(count), None, []) => {
            client
                .update_shard_count()
                .stream_name(stream)
                .target_shard_count(count)
                .scaling_type(ScalingType::UniformScaling)
                .send()
                .await
                .map_err(|e| call("UpdateShardCount", e))?;
        }
        (None, Some(shard), []) => {
            let at = match at {
                Some(at) => at,
                None => {
                    let all = shards(client, stream).await?;
                    let found = all
                        .iter()
                        .find(|s| s.shard_id() == shard)
                        .ok_or_else(|| format!("no shard {shard} in {stream}"))?;
                    midpoint(found)?
                }
            };
            client
                .split_shard()
                .stream_name(stream)
                .shard_to_split(&shard)
                .new_starting_hash_key(at)
                .send()
                .await
                .map_err(|e| call("SplitShard", e))?;
        }
        (None, None, [first, second]) => {
            client
                .merge_shards()
                .stream_name(stream)
                .shard_to_merge(first)
                .adjacent_shard_to_merge(second)
                .send()
                .await
                .map_err(|e| call("MergeShards", e))?;
        }
        _ => return Err("give one of --shard-count N, --split SHARD or --merge A B".into()),
    }
    Ok(())
}

/// Runs `kinesis streams`; prints its JSON.
pub async fn run(args: Args) -> Result<(), Error> {
    let config = crate::aws_config().await;
    let client = Client::new(&config);
    let summary = match args.command {
        Command::List => list(&client).await?,
        Command::Describe { stream } => describe(&client, &stream).await?,
        Command::Create {
            stream,
            shards,
            wait,
        } => {
            client
                .create_stream()
                .stream_name(&stream)
                .shard_count(shards)
                .send()
                .await
                .map_err(|e| call("CreateStream", e))?;
            kinesis_emulator::wait_stream_active(&client, &stream, wait).await?;
            describe(&client, &stream).await?
        }
        Command::Reshard {
            stream,
            shard_count,
            split,
            at,
            merge,
            wait,
        } => {
            reshard(&client, &stream, shard_count, split, at, merge).await?;
            kinesis_emulator::wait_stream_active(&client, &stream, wait).await?;
            describe(&client, &stream).await?
        }
    };
    println!("{summary}");
    Ok(())
}
