//! `kinesis consume --shard`: one shard read with GetRecords, without a lease table.

use std::io::Write;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use kinesis_consumer::{deaggregate, KinesisClientRecord};
use kinesis_errors::{ErrorKind, ServiceError};

use crate::consume::{output, write_json_lines, Args, From, Source};
use crate::Error;

/// Why reading stopped.
enum Stop {
    /// The shard ended, `--count` was reached, it was idle long enough, or a signal came.
    Done,
    /// Standard output was closed by its reader.
    Closed,
}

/// A shard iterator at `from`, or right after the record `after` when given.
async fn iterator(
    client: &Client,
    args: &Args,
    shard: &str,
    from: &From,
    after: Option<&str>,
) -> Result<Option<String>, Error> {
    let request = crate::streams::named!(
        client.get_shard_iterator().shard_id(shard),
        args.the_stream()
    );
    let request = match (after, from) {
        (Some(seq), _) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
        (None, From::TrimHorizon) => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
        (None, From::Latest) => request.shard_iterator_type(ShardIteratorType::Latest),
        (None, From::AtTimestamp(time)) => request
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from(*time)),
        (None, From::Sequence(seq)) => request
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number(seq),
    };
    let out = request
        .send()
        .await
        .map_err(|e| ServiceError::from_sdk("GetShardIterator", e))?;
    Ok(out.shard_iterator)
}

/// Reads `shard` from `args.from` and writes its user records until it stops.
pub(crate) async fn run(args: Args, shard: String) -> Result<(), Error> {
    let config = crate::aws_config().await?;
    let client = Client::new(&config);
    let out = output(args.output.as_ref())?;
    let stop = async {
        crate::signal::stop_signal().await;
        tracing::info!("signal received, stopping");
    };
    tokio::pin!(stop);
    let read = read(&client, &args, &shard, &out);
    let result = tokio::select! {
        result = read => result,
        () = &mut stop => Ok(Stop::Done),
    };
    let flushed = out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    match (result?, flushed) {
        (Stop::Closed, _) => Ok(()),
        (Stop::Done, Err(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        (Stop::Done, flushed) => Ok(flushed?),
    }
}

async fn read(
    client: &Client,
    args: &Args,
    shard: &str,
    out: &crate::consume::Output,
) -> Result<Stop, Error> {
    let mut next = iterator(client, args, shard, &args.from, None).await?;
    let mut last_sequence: Option<String> = None;
    let mut written = 0u64;
    let mut idle_since: Option<Instant> = None;
    let mut delay = Duration::from_millis(100);
    let mut buffer = Vec::new();
    while let Some(current) = next.take() {
        let page = match client
            .get_records()
            .shard_iterator(&current)
            .limit(args.max_records)
            .send()
            .await
        {
            Ok(page) => page,
            Err(error) if error.code() == Some("ExpiredIteratorException") => {
                // Renew it right after the last record read (or where reading started).
                next = iterator(client, args, shard, &args.from, last_sequence.as_deref()).await?;
                continue;
            }
            Err(error)
                if error
                    .code()
                    .is_some_and(|code| ErrorKind::from_code(code) == ErrorKind::Throttled) =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                next = Some(current);
                continue;
            }
            Err(error) => return Err(ServiceError::from_sdk("GetRecords", error).into()),
        };
        delay = Duration::from_millis(100);
        let mut lines = Vec::new();
        for record in page.records() {
            let data = bytes::Bytes::copy_from_slice(record.data().as_ref());
            // GetRecords does not return explicit hash keys.
            for user in deaggregate(record.partition_key().unwrap_or_default(), None, data) {
                let mut line = KinesisClientRecord::new(
                    record.sequence_number(),
                    &*user.partition_key,
                    user.data.clone(),
                );
                line.sub_sequence_number = user.sub_sequence_number;
                line.aggregated = user.aggregated;
                lines.push(line);
                if args
                    .count
                    .is_some_and(|count| written + lines.len() as u64 >= count)
                {
                    break;
                }
            }
            last_sequence = Some(record.sequence_number().to_owned());
            if args
                .count
                .is_some_and(|count| written + lines.len() as u64 >= count)
            {
                break;
            }
        }
        if !lines.is_empty() {
            let result = {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                write_json_lines(
                    &mut *out,
                    &mut buffer,
                    Source {
                        stream: None,
                        shard,
                    },
                    &lines,
                )
                .and_then(|()| out.flush())
            };
            match result {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(Stop::Closed)
                }
                Err(error) => return Err(format!("writing records: {error}").into()),
            }
            written += lines.len() as u64;
            idle_since = None;
        }
        if args.count.is_some_and(|count| written >= count) {
            return Ok(Stop::Done);
        }
        let at_tip = page.records().is_empty() && page.millis_behind_latest() == Some(0);
        if let Some(idle) = args.exit_after_idle {
            if at_tip && idle_since.get_or_insert_with(Instant::now).elapsed() >= idle {
                return Ok(Stop::Done);
            }
        }
        next = page.next_shard_iterator().map(str::to_owned);
        if next.is_some() {
            tokio::time::sleep(args.idle_between_reads).await;
        }
    }
    // No next iterator: the shard is closed and read to its end.
    tracing::info!(%shard, "shard end");
    Ok(Stop::Done)
}
