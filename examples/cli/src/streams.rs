//! `kinesis streams`: list, describe, create and reshard streams; JSON on standard output.

use std::time::Duration;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{ScalingType, Shard, StreamMode, StreamModeDetails, StreamStatus};
use aws_sdk_kinesis::Client;
use clap::{Args as ClapArgs, Subcommand};
use kinesis_errors::ServiceError;
use kinesis_producer::HashKey;

use crate::{parse_duration, Error};

/// Lists, describes, creates or reshards streams.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `kinesis streams` subcommand. `--stream` takes a name or an ARN everywhere but in
/// `create`.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// The account's streams in this region: `{"streams": [...]}`.
    List,
    /// A stream's status, retention and shards (open and closed, with their parents and
    /// hash key ranges).
    Describe {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
    },
    /// Creates a stream (provisioned with `--shards N`, or `--on-demand`) and waits until
    /// it is ACTIVE.
    Create {
        /// Stream name.
        #[arg(long)]
        stream: String,
        /// Number of shards (provisioned capacity).
        #[arg(long, value_name = "N", required_unless_present = "on_demand")]
        shards: Option<i32>,
        /// On-demand capacity: Kinesis adds shards as traffic grows (4 to start).
        #[arg(long, conflicts_with = "shards")]
        on_demand: bool,
        /// Keep records this many hours (default 24; up to 8760).
        #[arg(long, value_name = "HOURS")]
        retention_hours: Option<i32>,
        /// How long to wait for ACTIVE.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
        wait: Duration,
    },
    /// Deletes a stream and its records (with its enhanced fan-out consumers when
    /// `--with-consumers`).
    Delete {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// Also deregister the stream's enhanced fan-out consumers (else a stream that has
        /// any is not deleted).
        #[arg(long)]
        with_consumers: bool,
        /// Do it (without it, the deletion is only described).
        #[arg(long)]
        yes: bool,
    },
    /// Sets how many hours a stream keeps its records (24 to 8760) and waits until it is
    /// ACTIVE again.
    Retention {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// The new retention period.
        #[arg(long, value_name = "HOURS")]
        hours: i32,
        /// How long to wait for ACTIVE.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
        wait: Duration,
    },
    /// Sets the largest record a stream accepts (UpdateMaxRecordSize: 1024 to 10240 KiB;
    /// records over 1 MiB are "large records") and waits until it is ACTIVE again.
    MaxRecordSize {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// The new maximum, in KiB (1024 = 1 MiB, Kinesis's default; up to 10240).
        #[arg(long, value_name = "KIB")]
        kib: i32,
        /// How long to wait for ACTIVE.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
        wait: Duration,
    },
    /// Changes a stream's shards (one of `--shard-count`, `--split`, `--merge`) and waits
    /// until it is ACTIVE again.
    Reshard {
        /// Stream name or ARN.
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

/// Names a stream in a request by ARN (`arn:...`) or by name.
macro_rules! named {
    ($request:expr, $stream:expr) => {{
        let stream: &str = $stream;
        if stream.starts_with("arn:") {
            $request.stream_arn(stream)
        } else {
            $request.stream_name(stream)
        }
    }};
}
pub(crate) use named;

fn call<E, R>(operation: &'static str, error: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Box::new(ServiceError::from_sdk(operation, error))
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
            None => named!(client.list_shards(), stream),
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

/// DescribeStreamSummary of a stream named by name or ARN.
pub(crate) async fn summary(
    client: &Client,
    stream: &str,
) -> Result<aws_sdk_kinesis::types::StreamDescriptionSummary, Error> {
    let answer = named!(client.describe_stream_summary(), stream)
        .send()
        .await
        .map_err(|e| call("DescribeStreamSummary", e))?;
    answer
        .stream_description_summary
        .ok_or_else(|| "DescribeStreamSummary: no description in the answer".into())
}

/// Waits until the stream is ACTIVE (after a creation, a reshard or a retention change).
pub(crate) async fn wait_active(
    client: &Client,
    stream: &str,
    wait: Duration,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if summary(client, stream).await?.stream_status() == &StreamStatus::Active {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("stream {stream} not ACTIVE after {wait:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a stream (provisioned with `shards`, else on demand) and waits until it is
/// ACTIVE.
pub(crate) async fn create(
    client: &Client,
    stream: &str,
    shards: Option<i32>,
    wait: Duration,
) -> Result<(), Error> {
    if stream.starts_with("arn:") {
        return Err("create takes a stream name, not an ARN".into());
    }
    let request = client.create_stream().stream_name(stream);
    let request = match shards {
        Some(shards) => request.shard_count(shards),
        None => request.stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::OnDemand)
                .build()
                .map_err(|e| e.to_string())?,
        ),
    };
    request.send().await.map_err(|e| call("CreateStream", e))?;
    wait_active(client, stream, wait).await
}

async fn set_retention(client: &Client, stream: &str, hours: i32) -> Result<(), Error> {
    let current = summary(client, stream).await?.retention_period_hours();
    if hours > current {
        named!(client.increase_stream_retention_period(), stream)
            .retention_period_hours(hours)
            .send()
            .await
            .map_err(|e| call("IncreaseStreamRetentionPeriod", e))?;
    } else if hours < current {
        named!(client.decrease_stream_retention_period(), stream)
            .retention_period_hours(hours)
            .send()
            .await
            .map_err(|e| call("DecreaseStreamRetentionPeriod", e))?;
    }
    Ok(())
}

async fn delete(
    client: &Client,
    stream: &str,
    with_consumers: bool,
    yes: bool,
) -> Result<serde_json::Value, Error> {
    let summary = summary(client, stream).await?;
    let name = summary.stream_name().to_owned();
    if !yes {
        eprintln!(
            "would delete stream {name} ({} open shards): add --yes to delete",
            summary.open_shard_count()
        );
        return Ok(serde_json::json!({ "stream": name, "deleted": false }));
    }
    named!(client.delete_stream(), stream)
        .enforce_consumer_deletion(with_consumers)
        .send()
        .await
        .map_err(|e| call("DeleteStream", e))?;
    Ok(serde_json::json!({ "stream": name, "deleted": true }))
}

async fn describe(client: &Client, stream: &str) -> Result<serde_json::Value, Error> {
    let summary = summary(client, stream).await?;
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
        // Kinesis leaves it out for a stream never raised from the default 1 MiB.
        "max_record_size_kib": summary.max_record_size_in_kib().unwrap_or(1024),
        "mode": summary.stream_mode_details().map(|m| m.stream_mode().as_str()),
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
            named!(client.update_shard_count(), stream)
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
            named!(client.split_shard(), stream)
                .shard_to_split(&shard)
                .new_starting_hash_key(at)
                .send()
                .await
                .map_err(|e| call("SplitShard", e))?;
        }
        (None, None, [first, second]) => {
            named!(client.merge_shards(), stream)
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
    let config = crate::aws_config().await?;
    let client = Client::new(&config);
    let summary = match args.command {
        Command::List => list(&client).await?,
        Command::Describe { stream } => describe(&client, &stream).await?,
        Command::Create {
            stream,
            shards,
            on_demand,
            retention_hours,
            wait,
        } => {
            create(&client, &stream, shards.filter(|_| !on_demand), wait).await?;
            if let Some(hours) = retention_hours {
                set_retention(&client, &stream, hours).await?;
                wait_active(&client, &stream, wait).await?;
            }
            describe(&client, &stream).await?
        }
        Command::Delete {
            stream,
            with_consumers,
            yes,
        } => delete(&client, &stream, with_consumers, yes).await?,
        Command::Retention {
            stream,
            hours,
            wait,
        } => {
            set_retention(&client, &stream, hours).await?;
            wait_active(&client, &stream, wait).await?;
            describe(&client, &stream).await?
        }
        Command::MaxRecordSize { stream, kib, wait } => {
            let arn = summary(&client, &stream).await?.stream_arn().to_owned();
            client
                .update_max_record_size()
                .stream_arn(arn)
                .max_record_size_in_kib(kib)
                .send()
                .await
                .map_err(|e| call("UpdateMaxRecordSize", e))?;
            wait_active(&client, &stream, wait).await?;
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
            wait_active(&client, &stream, wait).await?;
            describe(&client, &stream).await?
        }
    };
    println!("{summary}");
    Ok(())
}
