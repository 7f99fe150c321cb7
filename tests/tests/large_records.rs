//! Large records (issue 25, item 5) against the emulator, which implements
//! `UpdateMaxRecordSize` and `MaxRecordSizeInKiB` as Kinesis does: the producer learns the
//! stream's maximum record size, sends records above the aggregation limit alone (and
//! records above what a call holds alone in their call), refuses larger ones with a typed
//! error, and the consumer delivers them, beside aggregated small records, in order.

use std::time::Duration;

use bytes::Bytes;
use integration_tests::kcl::{fast_builder, start_worker, Behaviour, Log};
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_producer::{InvalidRecord, Producer, Record, SendError};

const MIB: usize = 1024 * 1024;

/// A 1-shard stream whose maximum record size is `kib` KiB.
async fn large_record_stream(
    client: &aws_sdk_kinesis::Client,
    prefix: &str,
    kib: i32,
) -> TestResult<String> {
    let stream = unique_name(prefix);
    create_stream(client, &stream, 1).await?;
    let summary = client
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await?;
    let arn = summary
        .stream_description_summary()
        .map(|s| s.stream_arn().to_owned())
        .ok_or("a stream summary")?;
    client
        .update_max_record_size()
        .stream_arn(arn)
        .max_record_size_in_kib(kib)
        .send()
        .await?;
    wait_for(
        "the new maximum record size",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let stream = stream.clone();
            async move {
                let summary = client
                    .describe_stream_summary()
                    .stream_name(&stream)
                    .send()
                    .await?;
                Ok(summary
                    .stream_description_summary()
                    .filter(|s| {
                        s.max_record_size_in_kib() == Some(kib)
                            && s.stream_status() == &aws_sdk_kinesis::types::StreamStatus::Active
                    })
                    .map(|_| ()))
            }
        },
    )
    .await?;
    Ok(stream)
}

fn payload(tag: &str, len: usize) -> Bytes {
    let mut data = format!("{tag}:").into_bytes();
    data.resize(len, b'.');
    Bytes::from(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_are_learned_sent_alone_and_consumed_in_order() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = large_record_stream(&client, "large-records", 4096).await?;

    // One call at a time: concurrent calls may reorder records (kpl/README, "Ordering").
    let producer = Producer::builder(&config)
        .stream(&stream)
        .max_connections(1)
        .build()
        .await?;
    assert_eq!(
        producer.config().max_record_size,
        Some(4 * MIB),
        "learned from DescribeStreamSummary"
    );
    // One key, so the order of delivery is the order of sending: small records (which
    // aggregate), two large ones (3 MiB and 2.5 MiB: 5.5 MiB, more than one call holds),
    // small ones again.
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(payload(&format!("small-{i:02}"), 200));
    }
    sent.push(payload("large-0", 3 * MIB));
    sent.push(payload("large-1", 5 * MIB / 2));
    for i in 20..40 {
        sent.push(payload(&format!("small-{i:02}"), 200));
    }
    let mut receipts = Vec::new();
    for data in &sent {
        receipts.push(producer.send(Record::new("one-key", data.clone())).await?);
    }
    // Above the stream's maximum: refused at the door, typed, nothing sent.
    match producer
        .send(Record::new("one-key", payload("too-large", 4 * MIB)))
        .await
    {
        Err(SendError::Invalid(InvalidRecord::TooLarge { size, limit })) => {
            assert_eq!(limit, 4 * MIB);
            assert!(size > limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mut large = 0;
    for (data, receipt) in sent.iter().zip(receipts) {
        let result = receipt.await?;
        if data.len() > MIB {
            assert!(!result.aggregated, "a large record travels alone");
            large += 1;
        }
    }
    assert_eq!(large, 2);
    producer.shutdown().await;

    // The consumer delivers every record, the large ones whole, in sending order.
    let log = Log::default();
    let app = unique_name("large-records-app");
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w"),
        "w",
        &log,
        Behaviour::default(),
    )
    .await?;
    let expected = sent.len();
    wait_for("every record delivered", Duration::from_secs(60), || {
        let n = log.delivered().len();
        async move { Ok((n >= expected).then_some(())) }
    })
    .await?;
    worker.stop().await?;
    let delivered: Vec<Bytes> = log.delivered().into_iter().map(|d| d.data).collect();
    assert_eq!(
        delivered.len(),
        sent.len(),
        "no duplicates in one clean run"
    );
    assert!(delivered == sent, "every record, whole and in order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_never_raised_keeps_the_1_mib_limit() -> TestResult {
    let config = sdk_config().await?;
    let client = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("large-records-default");
    create_stream(&client, &stream, 1).await?;
    let producer = Producer::builder(&config).stream(&stream).build().await?;
    assert_eq!(producer.config().max_record_size, Some(MIB));
    match producer
        .send(Record::new("k", payload("two-mib", 2 * MIB)))
        .await
    {
        Err(SendError::Invalid(InvalidRecord::TooLarge { limit, .. })) => assert_eq!(limit, MIB),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A limit set by the caller is taken as it is, without asking the stream.
    let producer = Producer::builder(&config)
        .stream(&stream)
        .max_record_size(2 * MIB)
        .build()
        .await?;
    assert_eq!(producer.config().max_record_size, Some(2 * MIB));
    producer.shutdown().await;
    Ok(())
}
