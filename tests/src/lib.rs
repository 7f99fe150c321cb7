#![forbid(unsafe_code)]
//! Helpers shared by the integration tests: the shared emulator, unique names, waiting
//! for streams and tables to become active, and AWS's Python aggregation library.

pub mod faults;
pub mod kcl;
pub mod python;
pub mod tap;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::TableStatus;
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use kinesis_emulator::Emulator;

/// Boxed error for test plumbing.
pub type TestError = Box<dyn std::error::Error + Send + Sync>;
/// Result for test plumbing.
pub type TestResult<T = ()> = Result<T, TestError>;

/// SDK configuration pointing at the process-wide emulator (or at the endpoints of the
/// standard AWS configuration when it names some).
pub async fn sdk_config() -> TestResult<SdkConfig> {
    Ok(Emulator::shared().await?.sdk_config().await)
}

/// A name no other test of any run uses: `prefix-<pid>-<time>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000_000)
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{millis}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the stream is ACTIVE (after creation or a reshard).
pub async fn wait_stream_active(client: &aws_sdk_kinesis::Client, stream: &str) -> TestResult {
    Ok(kinesis_emulator::wait_stream_active(client, stream, Duration::from_secs(30)).await?)
}

/// Creates a provisioned stream with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shards: i32,
) -> TestResult {
    Ok(kinesis_emulator::create_stream(client, stream, shards).await?)
}

/// The stream's ARN (for reading a stream by ARN).
pub async fn stream_arn(client: &aws_sdk_kinesis::Client, stream: &str) -> TestResult<String> {
    Ok(client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await?
        .stream_description_summary()
        .map(|s| s.stream_arn().to_owned())
        .ok_or("no stream description")?)
}

/// All shards of the stream (open and closed), following pagination.
pub async fn list_shards(client: &aws_sdk_kinesis::Client, stream: &str) -> TestResult<Vec<Shard>> {
    let mut shards = Vec::new();
    let mut next = None::<String>;
    loop {
        let request = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let page = request.send().await?;
        shards.extend(page.shards().iter().cloned());
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(shards);
        }
    }
}

/// Waits until the DynamoDB table is ACTIVE.
pub async fn wait_table_active(client: &aws_sdk_dynamodb::Client, table: &str) -> TestResult {
    wait_for(
        "table to become ACTIVE",
        Duration::from_secs(30),
        || async {
            let described = client.describe_table().table_name(table).send().await?;
            let status = described.table().and_then(|t| t.table_status()).cloned();
            Ok((status == Some(TableStatus::Active)).then_some(()))
        },
    )
    .await
}

/// Reads a shard from TRIM_HORIZON until it is caught up (open shard) or ended (closed
/// shard). Returns the records and, for a closed shard, the child shard ids.
pub async fn read_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_id: &str,
) -> TestResult<(Vec<aws_sdk_kinesis::types::Record>, Option<Vec<String>>)> {
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard_id)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator
        .ok_or("no shard iterator")?;
    let mut records = Vec::new();
    loop {
        let page = client
            .get_records()
            .shard_iterator(&iterator)
            .send()
            .await?;
        records.extend(page.records().iter().cloned());
        match page.next_shard_iterator() {
            None => {
                let children = page
                    .child_shards()
                    .iter()
                    .map(|c| c.shard_id().to_owned())
                    .collect();
                return Ok((records, Some(children)));
            }
            Some(_) if page.records().is_empty() && page.millis_behind_latest() == Some(0) => {
                return Ok((records, None));
            }
            Some(next) => iterator = next.to_owned(),
        }
    }
}

/// Every record of every shard of the stream (open and closed), with its shard id.
pub async fn read_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> TestResult<Vec<(String, aws_sdk_kinesis::types::Record)>> {
    let mut all = Vec::new();
    for shard in list_shards(client, stream).await? {
        let (records, _) = read_shard(client, stream, shard.shard_id()).await?;
        all.extend(
            records
                .into_iter()
                .map(|r| (shard.shard_id().to_owned(), r)),
        );
    }
    Ok(all)
}
