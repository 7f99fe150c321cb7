//! Creating a stream and waiting until it is usable: what every example and test does
//! first.

use std::time::Duration;

use aws_sdk_kinesis::types::StreamStatus;

/// Why a stream could not be created or did not become active.
#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    /// A Kinesis call failed.
    #[error("{call} failed for stream {stream}: {message}")]
    Call {
        /// The API call.
        call: &'static str,
        /// The stream.
        stream: String,
        /// The SDK error, with its source chain.
        message: String,
    },
    /// The stream stayed in another state.
    #[error("stream {stream} was not ACTIVE after {waited:?}")]
    NotActive {
        /// The stream.
        stream: String,
        /// How long it was waited for.
        waited: Duration,
    },
}

fn call_error<E: std::error::Error>(call: &'static str, stream: &str, e: E) -> StreamSetupError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    StreamSetupError::Call {
        call,
        stream: stream.to_owned(),
        message,
    }
}

/// Creates a provisioned stream with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shards: i32,
) -> Result<(), StreamSetupError> {
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .map_err(|e| call_error("CreateStream", stream, e))?;
    wait_stream_active(client, stream, Duration::from_secs(60)).await
}

/// Polls DescribeStreamSummary every 100 ms until the stream is ACTIVE (after creation or
/// a reshard), for at most `timeout`.
pub async fn wait_stream_active(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    timeout: Duration,
) -> Result<(), StreamSetupError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| call_error("DescribeStreamSummary", stream, e))?;
        if summary
            .stream_description_summary()
            .is_some_and(|s| s.stream_status() == &StreamStatus::Active)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StreamSetupError::NotActive {
                stream: stream.to_owned(),
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
