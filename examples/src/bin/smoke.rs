//! Smoke test of the whole local setup: starts the emulators (unless the standard AWS
//! configuration names an endpoint), creates a stream, puts plain and KPL-aggregated
//! records, reads every shard back with GetRecords and checks that every record came
//! back where PutRecords said.
//!
//! ```text
//! cargo run -p examples --bin smoke -- --records 1000 --shards 4
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use bytes::Bytes;
use clap::Parser;
use kinesis_emulator::Emulator;
use kinesis_producer::aggregation::{deaggregate, AggregateBuilder};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Puts records into a fresh stream and reads them back.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Stream name (default: `smoke-<unix time>`).
    #[arg(long)]
    stream: Option<String>,
    /// Number of shards of the new stream.
    #[arg(long, default_value_t = 2)]
    shards: i32,
    /// Number of user records to put.
    #[arg(long, default_value_t = 1000)]
    records: usize,
    /// User records per KPL aggregate (1 = no aggregation).
    #[arg(long, default_value_t = 10)]
    per_aggregate: usize,
    /// Delete the stream at the end.
    #[arg(long)]
    delete: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smoke: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let started = Instant::now();
    let emulator = Emulator::start().await?;
    match (emulator.kinesis_endpoint(), emulator.dynamodb_endpoint()) {
        (None, None) => println!("using the endpoints of the AWS configuration"),
        (kinesis, dynamodb) => println!(
            "started local emulators: kinesis {}, dynamodb {}",
            kinesis.as_deref().unwrap_or("from AWS configuration"),
            dynamodb.as_deref().unwrap_or("from AWS configuration"),
        ),
    }
    let client = aws_sdk_kinesis::Client::new(&emulator.sdk_config().await);
    let stream = args.stream.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        format!("smoke-{secs}")
    });

    kinesis_emulator::create_stream(&client, &stream, args.shards).await?;
    println!("created stream {stream} with {} shards", args.shards);

    // Put: user record i has partition key key-(i % 16) and data "record-i"; records are
    // grouped into aggregates of `per_aggregate` consecutive records of the same key.
    let mut entries = Vec::new();
    let per_aggregate = args.per_aggregate.max(1);
    let mut builders: HashMap<String, AggregateBuilder> = HashMap::new();
    for i in 0..args.records {
        let key = format!("key-{}", i % 16);
        let builder = builders.entry(key.clone()).or_default();
        builder.push(&key, None, Bytes::from(format!("record-{i}")));
        if builder.len() >= per_aggregate {
            entries.extend(builder.finish());
        }
    }
    entries.extend(builders.values_mut().filter_map(AggregateBuilder::finish));

    let mut placed: HashMap<String, String> = HashMap::new(); // sequence number -> shard
    let mut calls = 0;
    for chunk in entries.chunks(500) {
        let mut pending: Vec<PutRecordsRequestEntry> = chunk
            .iter()
            .map(|e| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&e.partition_key)
                    .set_explicit_hash_key(e.explicit_hash_key.clone())
                    .data(Blob::new(e.data.to_vec()))
                    .build()
            })
            .collect::<Result<_, _>>()?;
        while !pending.is_empty() {
            calls += 1;
            let out = client
                .put_records()
                .stream_name(&stream)
                .set_records(Some(pending.clone()))
                .send()
                .await?;
            let mut retry = Vec::new();
            for (entry, result) in pending.into_iter().zip(out.records()) {
                match (result.sequence_number(), result.shard_id()) {
                    (Some(seq), Some(shard)) => {
                        placed.insert(seq.to_owned(), shard.to_owned());
                    }
                    _ => retry.push(entry),
                }
            }
            pending = retry;
        }
    }
    println!(
        "put {} user records as {} Kinesis records in {calls} PutRecords calls",
        args.records,
        entries.len()
    );

    // Read every shard from TRIM_HORIZON until caught up.
    let mut user_records = 0;
    let mut misplaced = 0;
    let shards = client.list_shards().stream_name(&stream).send().await?;
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator;
        let mut from_shard = 0;
        while let Some(it) = iterator {
            let page = client.get_records().shard_iterator(it).send().await?;
            for record in page.records() {
                if placed.get(record.sequence_number()).map(String::as_str)
                    != Some(shard.shard_id())
                {
                    misplaced += 1;
                }
                let users = deaggregate(
                    record.partition_key().unwrap_or_default(),
                    None,
                    Bytes::copy_from_slice(record.data().as_ref()),
                );
                from_shard += users.len();
            }
            let caught_up = page.records().is_empty() && page.millis_behind_latest() == Some(0);
            iterator = page
                .next_shard_iterator()
                .filter(|_| !caught_up)
                .map(str::to_owned);
        }
        println!("  {}: {from_shard} user records", shard.shard_id());
        user_records += from_shard;
    }

    if args.delete {
        client.delete_stream().stream_name(&stream).send().await?;
    }
    println!(
        "read back {user_records} of {} user records, {misplaced} misplaced, in {:.1} s",
        args.records,
        started.elapsed().as_secs_f64()
    );
    if user_records != args.records || misplaced != 0 {
        return Err("records were lost or misplaced".into());
    }
    println!("ok");
    Ok(())
}
