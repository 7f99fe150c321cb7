//! The producer's hand-written PutRecords body is used only for the request it is written
//! for (Kinesis's awsJson 1.1): with another protocol selected through
//! `Config::Builder::protocol`, the calls go through the SDK's serializer and records
//! still arrive whole (issue 23). Its own process: the counting recorder is global.
//!
//! The protocol chosen is the SDK's awsJson 1.0, whose requests differ from 1.1 only in
//! their content type. kinesis-mock speaks only 1.1, so an HTTP client in front of it
//! records each request's content type and hands it over as 1.1.

#![allow(clippy::unwrap_used, missing_docs)] // A panic is how a test reports failure.

use std::sync::{Arc, Mutex};

use aws_smithy_json::protocol::aws_json_rpc::AwsJsonRpcProtocol;
use integration_tests::tap::Tap;
use integration_tests::{create_stream, read_stream, sdk_config, unique_name, TestResult};
use kinesis_consumer::test_util::CountingRecorder;
use kinesis_producer::aggregation::deaggregate;
use kinesis_producer::{Producer, Record};

const FALLBACKS: &str = "kinesis_producer_put_records_fast_path_fallbacks";

/// A client that records the content type of every PutRecords request, then sends it
/// as awsJson 1.1; and what it recorded.
fn json_10_to_11() -> (Tap, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let tap = Tap::new(move |request| {
        let content_type = request
            .headers()
            .get("content-type")
            .unwrap_or("")
            .to_owned();
        if request.headers().get("x-amz-target") == Some("Kinesis_20131202.PutRecords") {
            recorded.lock().unwrap().push(content_type.clone());
        }
        if content_type == "application/x-amz-json-1.0" {
            request
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.1");
        }
    });
    (tap, seen)
}

/// Puts `n` records through a producer on `client`; returns the data read back.
async fn put_and_read(
    client: aws_sdk_kinesis::Client,
    stream: &str,
    fast_path: bool,
) -> TestResult<Vec<String>> {
    let producer = Producer::builder(client.clone())
        .stream(stream)
        .put_records_fast_path(fast_path)
        .build()
        .await?;
    let mut receipts = Vec::new();
    for i in 0..50 {
        receipts.push(
            producer
                .send(Record::new(format!("k{}", i % 7), format!("r{i}")))
                .await?,
        );
    }
    for receipt in receipts {
        receipt.await?;
    }
    producer.shutdown().await;
    let mut data = Vec::new();
    for (_, record) in read_stream(&client, stream).await? {
        let key = record.partition_key().unwrap_or_default().to_owned();
        for user in deaggregate(&key, None, bytes::Bytes::from(record.data.into_inner())) {
            data.push(String::from_utf8(user.data.to_vec())?);
        }
    }
    data.sort();
    Ok(data)
}

#[tokio::test]
async fn another_protocol_falls_back_to_the_sdk_serializer_and_loses_nothing() -> TestResult {
    let recorder = CountingRecorder::new();
    metrics::set_global_recorder(recorder.clone()).unwrap();
    let config = sdk_config().await?;
    let plain = aws_sdk_kinesis::Client::new(&config);
    let mut expected: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    expected.sort();

    // awsJson 1.0 instead of the model's 1.1: a request shape the fast path refuses.
    let stream = unique_name("protocol");
    create_stream(&plain, &stream, 2).await?;
    let (http, seen) = json_10_to_11();
    let other = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .http_client(http)
            .protocol(
                AwsJsonRpcProtocol::aws_json_1_0().with_default_namespace("com.amazonaws.kinesis"),
            )
            .build(),
    );
    assert_eq!(put_and_read(other, &stream, true).await?, expected);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|c| c == "application/x-amz-json-1.0"),
        "every call written by the SDK for the protocol chosen: {seen:?}"
    );
    assert_eq!(
        recorder.counter(FALLBACKS, &[("stream", &stream)]),
        1,
        "one fallback, then the SDK's serializer"
    );

    // The fast path off: the SDK's serializer from the first call, no fallback counted.
    let stream = unique_name("protocol-off");
    create_stream(&plain, &stream, 2).await?;
    assert_eq!(put_and_read(plain.clone(), &stream, false).await?, expected);
    assert_eq!(recorder.counter(FALLBACKS, &[("stream", &stream)]), 0);

    // The default protocol keeps the fast path.
    let stream = unique_name("protocol-fast");
    create_stream(&plain, &stream, 2).await?;
    assert_eq!(put_and_read(plain, &stream, true).await?, expected);
    assert_eq!(recorder.counter(FALLBACKS, &[("stream", &stream)]), 0);
    Ok(())
}
