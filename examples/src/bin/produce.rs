//! Puts N records into a stream with `kinesis-producer` and prints one JSON summary line.
//!
//! Endpoint, region and credentials come from the standard AWS configuration; against the
//! local emulator:
//!
//! ```text
//! eval "$(localstack/start)"
//! cargo run --release -p examples --bin produce -- --stream demo --create-shards 4 --records 1000000 --size 100
//! ```
//!
//! Each record's data is a JSON object `{"id": <0..N-1>, "key": <partition key>, "pad": "..."}`
//! padded to `--size` bytes; its partition key is one of `--keys` keys.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use kinesis_producer::{Producer, Record};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Puts records into a Kinesis stream and prints a JSON summary.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// Create the stream with this many shards first (and wait until it is active).
    #[arg(long, value_name = "N")]
    create_shards: Option<i32>,
    /// Number of records to put.
    #[arg(long, value_name = "N")]
    records: u64,
    /// Size of each record's data in bytes (the JSON is padded to it).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,
    /// Number of distinct partition keys.
    #[arg(long, value_name = "K", default_value_t = 1_000)]
    keys: u64,
    /// Records per second to send at most (default: as fast as the producer admits).
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// PutRecords calls in flight at most (the producer's `max_connections`).
    #[arg(long, value_name = "N", default_value_t = 24)]
    max_connections: usize,
    /// Timeout of one PutRecords call, in milliseconds (the producer's `request_timeout`).
    #[arg(long, value_name = "MS", default_value_t = 6_000)]
    request_timeout_ms: u64,
    /// User records accepted and not yet completed, at most (the producer's
    /// `max_outstanding_records`; its default when not given).
    #[arg(long, value_name = "N")]
    max_outstanding_records: Option<usize>,
    /// How long a record may wait to be aggregated and batched, in milliseconds (the
    /// producer's `record_max_buffered_time`; default: the KPL's 100 ms).
    #[arg(long, value_name = "MS")]
    buffer_time_ms: Option<u64>,
    /// How long a record may be retried before it fails, in milliseconds (the producer's
    /// `record_ttl`; default: the KPL's 30 s).
    #[arg(long, value_name = "MS")]
    record_ttl_ms: Option<u64>,
}

/// The JSON data of record `id`, padded with dots to `size` bytes when it is shorter
/// (written once, into a buffer of its final size).
fn payload(id: u64, key: &str, size: usize) -> String {
    use std::fmt::Write;
    let digits = id.checked_ilog10().map_or(1, |d| d as usize + 1);
    let bare = r#"{"id":,"key":"","pad":""}"#.len() + digits + key.len();
    let mut out = String::with_capacity(size.max(bare));
    // Writing into a String cannot fail.
    let _ = write!(out, r#"{{"id":{id},"key":"{key}","pad":""#);
    out.extend(std::iter::repeat_n('.', size.saturating_sub(bare)));
    out.push_str(r#""}"#);
    out
}

async fn run(args: Args) -> Result<serde_json::Value, Error> {
    let config = aws_config::load_from_env().await;
    if let Some(shards) = args.create_shards {
        let client = aws_sdk_kinesis::Client::new(&config);
        kinesis_emulator::create_stream(&client, &args.stream, shards).await?;
    }
    let mut builder = Producer::builder(&config)
        .stream(&args.stream)
        .max_connections(args.max_connections)
        .request_timeout(Duration::from_millis(args.request_timeout_ms));
    if let Some(records) = args.max_outstanding_records {
        builder = builder.max_outstanding_records(records);
    }
    if let Some(ms) = args.buffer_time_ms {
        builder = builder.record_max_buffered_time(Duration::from_millis(ms));
    }
    if let Some(ms) = args.record_ttl_ms {
        builder = builder.record_ttl(Duration::from_millis(ms));
    }
    let producer = builder.build().await?;

    // Receipts complete roughly in order: one task awaits them while records go in.
    let (receipts, mut completed) = mpsc::unbounded_channel::<kinesis_producer::RecordReceipt>();
    let counter = tokio::spawn(async move {
        let mut failed = 0u64;
        while let Some(receipt) = completed.recv().await {
            if let Err(error) = receipt.await {
                if failed == 0 {
                    eprintln!("produce: a record failed: {error}");
                }
                failed += 1;
            }
        }
        failed
    });

    let started = Instant::now();
    let keys = args.keys.max(1);
    for id in 0..args.records {
        if let Some(rate) = args.rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(id as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let key = format!("key-{}", id % keys);
        let data = payload(id, &key, args.size);
        receipts.send(producer.send(Record::new(key, data)).await?)?;
    }
    drop(receipts);
    producer.shutdown().await;
    let failed = counter.await?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = producer.stats();
    Ok(serde_json::json!({
        "stream": args.stream,
        "user_records": stats.user_records_put,
        "kinesis_records": stats.kinesis_records_put,
        "put_records_calls": stats.put_records_calls,
        "failed": failed,
        "retries": stats.failed_attempts,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "records_per_second": (stats.user_records_put as f64 / seconds).round(),
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(summary) => {
            println!("{summary}");
            if summary["failed"].as_u64() == Some(0) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("produce: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::payload;

    #[test]
    fn payload_is_json_of_the_requested_size() {
        let data = payload(42, "key-7", 100);
        assert_eq!(data.len(), 100);
        let value: serde_json::Value = serde_json::from_str(&data).expect("valid JSON");
        assert_eq!(value["id"], 42);
        assert_eq!(value["key"], "key-7");
        assert!(payload(1, "k", 5).len() > 5, "never truncated");
        for (id, size) in [(0, 0), (9, 31), (10, 100), (123_456, 1000)] {
            let data = payload(id, "key-1", size);
            assert_eq!(data.len(), size.max(data.len()));
            let value: serde_json::Value = serde_json::from_str(&data).expect("valid JSON");
            assert_eq!(value["id"], id);
            assert_eq!(
                data.capacity(),
                data.len(),
                "one allocation of the final size"
            );
        }
    }
}
