//! Credentials are never logged: every `tracing` event at TRACE level, from our crates and
//! the AWS SDK alike, is captured while a producer and a consumer run against the
//! emulators with known dummy keys, and neither the secret key nor the session token
//! appears in it.
//!
//! This file holds one test: it installs the process-wide subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use integration_tests::kcl::{fast_builder, start_worker, Behaviour, Log};
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_producer::{Producer, Record};

const ACCESS_KEY_ID: &str = "AKIDCANARYCANARY0001";
const SECRET: &str = "sEcReT/canary+wJalrXUtnFEMI/K7MDENG/bPxRfiCY";
const SESSION_TOKEN: &str = "SeSsIoN-canary-IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ";

/// Everything the subscriber writes, shared.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_is_ever_logged_at_trace_level() -> TestResult {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let credentials = Credentials::from_keys(ACCESS_KEY_ID, SECRET, Some(SESSION_TOKEN.into()));
    let config = sdk_config()
        .await?
        .into_builder()
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build();
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("credentials");
    let app = unique_name("credentials-app");
    create_stream(&kinesis, &stream, 1).await?;

    let producer = Producer::builder(&config).stream(&stream).build().await?;
    let mut receipts = Vec::new();
    for i in 0..50 {
        receipts.push(producer.send(Record::new(format!("k{i}"), "data")).await?);
    }
    for receipt in receipts {
        receipt.await?;
    }
    producer.shutdown().await;

    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("every record", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= 1 && log.delivered().len() >= 50).then_some(()))
    })
    .await?;
    worker.stop().await?;

    let text = captured.text();
    // The capture really saw the SDK at work, signing included.
    for expected in ["PutRecords", "GetRecords", "UpdateItem", ACCESS_KEY_ID] {
        assert!(
            text.contains(expected),
            "{expected} not in the trace output"
        );
    }
    assert!(
        text.len() > 100_000,
        "only {} bytes of trace output",
        text.len()
    );
    for secret in [SECRET, SESSION_TOKEN] {
        if let Some(at) = text.find(secret) {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!(
                "a credential was logged:\n{}",
                &text[line_start..line_end.min(line_start + 2_000)]
            );
        }
    }
    Ok(())
}
