//! The work `kinesis produce` and `kinesis consume` cannot do without, and nothing else: a
//! lower bound for their CPU on this machine, with the same SDK, runtime, emulator and data.
//!
//! - `produce`: the CLI's generator makes the same records; each partition key is hashed
//!   once; records are aggregated per shard (KPL format, 50 KiB aggregates, MD5) and sent
//!   in about as many PutRecords calls as `kinesis produce` makes, paced to the shards'
//!   1 MB/s. Left out: per-record results, the bounded inbox, the rate limiter, timeouts,
//!   retries with backoff (failed entries are simply sent again), metrics.
//! - `consume`: reads every shard from its start until it is at the tip, checks and unpacks
//!   the aggregates, and writes the lines with `kinesis consume`'s own writer. Left out: the
//!   lease table, checkpoints, the coordination of workers, parents before children,
//!   pauses between reads.
//!
//! Each prints one JSON summary. Run it under `perf stat` beside the real command:
//!
//! ```sh
//! cargo build --release -p examples --example floor
//! kinesis streams create --stream floor-1 --shards 4
//! perf stat -e task-clock target/release/examples/floor produce floor-1 100000 100 1000
//! perf stat -e task-clock target/release/examples/floor consume floor-1 /tmp/floor.jsonl
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, ShardIteratorType};
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use kinesis_cli::consume::{write_json_lines, Source};
use kinesis_cli::produce::Generator;
use kinesis_consumer::KinesisClientRecord;
use kinesis_producer::aggregation::{deaggregate, AggregateBuilder, EncodedRecord, HashKey};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The KPL's default aggregate size, as the producer's.
const AGGREGATE_MAX: usize = 51_200;
/// Bytes of data a shard takes per second.
const SHARD_BYTES_PER_SECOND: usize = 1_000_000;
/// `kinesis produce`'s calls for 100,000 records of 100 bytes: ~500 KB each.
const CALL_BYTES: usize = 512 * 1024;
/// PutRecords' own limit.
const CALL_RECORDS: usize = 500;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let client = Client::new(&config);
        match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["produce", stream, records, size, keys] => {
                produce(
                    &client,
                    stream,
                    records.parse()?,
                    size.parse()?,
                    keys.parse()?,
                )
                .await
            }
            ["consume", stream, output] => consume(&client, stream, output).await,
            _ => Err(
                "usage: floor produce STREAM RECORDS SIZE KEYS | floor consume STREAM FILE".into(),
            ),
        }
    })?;
    println!("{summary}");
    Ok(())
}

/// The open shards, in the order of their hash key ranges.
async fn shards(client: &Client, stream: &str) -> Result<Vec<Shard>, Error> {
    let mut shards = Vec::new();
    let mut next_token = None;
    loop {
        let request = match next_token {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let page = request.send().await?;
        shards.extend(page.shards.unwrap_or_default());
        next_token = page.next_token;
        if next_token.is_none() {
            break;
        }
    }
    shards.retain(|s| {
        s.sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_none()
    });
    shards.sort_by_key(end_of);
    Ok(shards)
}

fn end_of(shard: &Shard) -> u128 {
    shard
        .hash_key_range()
        .and_then(|r| r.ending_hash_key().parse().ok())
        .unwrap_or(u128::MAX)
}

async fn produce(
    client: &Client,
    stream: &str,
    records: u64,
    size: usize,
    keys: u64,
) -> Result<serde_json::Value, Error> {
    let shards = shards(client, stream).await?;
    let ends: Vec<u128> = shards.iter().map(end_of).collect();
    if ends.is_empty() {
        return Err(format!("{stream}: no open shard").into());
    }
    let hash_keys: Vec<HashKey> = (0..keys.max(1))
        .map(|k| HashKey::from_partition_key(&format!("key-{k}")))
        .collect();
    let mut generator = Generator::new(size, keys);
    let mut open: Vec<AggregateBuilder> = ends.iter().map(|_| AggregateBuilder::new()).collect();
    let mut ready: Vec<Vec<EncodedRecord>> = vec![Vec::new(); ends.len()];
    for id in 0..records {
        let record = generator.record(id);
        let hash_key = hash_keys[(id % hash_keys.len() as u64) as usize];
        let shard = ends.partition_point(|&end| end < hash_key.0);
        let (key, data) = (record.partition_key(), record.data());
        if !open[shard].fits(key, None, data.len(), AGGREGATE_MAX) {
            ready[shard].extend(open[shard].finish());
        }
        open[shard].push(key, None, data.clone());
    }
    for (shard, builder) in open.iter_mut().enumerate() {
        ready[shard].extend(builder.finish());
    }

    // Calls of ~CALL_BYTES taking from every shard in turn, one each time the shards have
    // room for it again; entries a call could not put go into a later call.
    let mut queue: std::collections::VecDeque<EncodedRecord> = Default::default();
    let mut shard_queues: Vec<_> = ready.into_iter().map(|r| r.into_iter()).collect();
    loop {
        let before = queue.len();
        for records in &mut shard_queues {
            queue.extend(records.next());
        }
        if queue.len() == before {
            break;
        }
    }
    let pause =
        Duration::from_secs_f64(CALL_BYTES as f64 / (SHARD_BYTES_PER_SECOND * ends.len()) as f64);
    let (mut calls, mut failed_entries) = (0, 0);
    let started = Instant::now();
    while !queue.is_empty() {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(record) = queue.pop_front() {
            bytes += record.data.len();
            batch.push(record);
            if bytes >= CALL_BYTES || batch.len() == CALL_RECORDS {
                break;
            }
        }
        tokio::time::sleep_until((started + pause * calls).into()).await;
        let entries = batch
            .iter()
            .map(|record| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(record.data.to_vec()))
                    .partition_key(&record.partition_key)
                    .set_explicit_hash_key(record.explicit_hash_key.clone())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await?;
        calls += 1;
        for (record, result) in batch.into_iter().zip(out.records()) {
            if result.error_code().is_some() {
                failed_entries += 1;
                queue.push_back(record);
            }
        }
        // A measurement, not a producer: a stream that keeps refusing ends it.
        if failed_entries > records {
            return Err(format!("{stream}: more entries failed than there are records").into());
        }
    }
    Ok(serde_json::json!({
        "user_records": records,
        "put_records_calls": calls,
        "failed_entries_sent_again": failed_entries,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

async fn consume(client: &Client, stream: &str, output: &str) -> Result<serde_json::Value, Error> {
    let shards = shards(client, stream).await?;
    let file = Mutex::new(std::fs::File::create(output)?);
    let reads = shards
        .iter()
        .map(|shard| read_shard(client, stream, shard.shard_id(), &file));
    let mut lines = 0;
    for read in futures::future::join_all(reads).await {
        lines += read?;
    }
    Ok(serde_json::json!({ "lines": lines }))
}

/// Reads a shard from its start to its tip, writing a line per user record.
async fn read_shard(
    client: &Client,
    stream: &str,
    shard: &str,
    file: &Mutex<std::fs::File>,
) -> Result<u64, Error> {
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator;
    let source = Source {
        stream: None,
        shard,
    };
    let (mut buffer, mut lines) = (Vec::new(), 0);
    while let Some(current) = iterator {
        let out = client
            .get_records()
            .shard_iterator(current)
            .limit(10_000)
            .send()
            .await?;
        let at_tip = out.records.is_empty() && out.millis_behind_latest == Some(0);
        let mut users = Vec::new();
        for record in out.records {
            let sequence_number: Arc<str> = Arc::from(record.sequence_number());
            let partition_key = record.partition_key().unwrap_or_default().to_owned();
            let data = Bytes::from(record.data.into_inner());
            users.extend(
                deaggregate(&partition_key, None, data)
                    .into_iter()
                    .map(|user| {
                        let mut line = KinesisClientRecord::new(
                            sequence_number.clone(),
                            user.partition_key,
                            user.data,
                        );
                        line.sub_sequence_number = user.sub_sequence_number;
                        line.aggregated = user.aggregated;
                        line
                    }),
            );
        }
        lines += users.len() as u64;
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        write_json_lines(&mut *file, &mut buffer, source, &users)?;
        drop(file);
        iterator = if at_tip {
            None
        } else {
            out.next_shard_iterator
        };
    }
    Ok(lines)
}
