//! The rest of what the libraries need from the Kinesis emulator: every shard iterator
//! type, UpdateShardCount, and enhanced fan-out (RegisterStreamConsumer +
//! SubscribeToShard).

use std::time::Duration;

use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use integration_tests::{
    create_stream, list_shards, sdk_config, unique_name, wait_for, wait_stream_active, TestResult,
};

async fn put(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    data: &str,
) -> TestResult<(String, String)> {
    let out = client
        .put_record()
        .stream_name(stream)
        .partition_key("k")
        .data(Blob::new(data))
        .send()
        .await?;
    Ok((out.shard_id().to_owned(), out.sequence_number().to_owned()))
}

async fn first_data(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard: &str,
    kind: ShardIteratorType,
    sequence: Option<&str>,
    timestamp: Option<DateTime>,
) -> TestResult<Vec<String>> {
    let iterator = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(kind)
        .set_starting_sequence_number(sequence.map(str::to_owned))
        .set_timestamp(timestamp)
        .send()
        .await?
        .shard_iterator
        .ok_or("no iterator")?;
    let page = client.get_records().shard_iterator(iterator).send().await?;
    Ok(page
        .records()
        .iter()
        .map(|r| String::from_utf8_lossy(r.data().as_ref()).into_owned())
        .collect())
}

#[tokio::test]
async fn every_shard_iterator_type() -> TestResult {
    let client = aws_sdk_kinesis::Client::new(&sdk_config().await?);
    let stream = unique_name("iterators");
    create_stream(&client, &stream, 1).await?;
    let (shard, first) = put(&client, &stream, "one").await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = DateTime::from(std::time::SystemTime::now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, second) = put(&client, &stream, "two").await?;

    use ShardIteratorType as T;
    let read = |kind, seq, ts| first_data(&client, &stream, &shard, kind, seq, ts);
    assert_eq!(read(T::TrimHorizon, None, None).await?, ["one", "two"]);
    assert_eq!(
        read(T::AtSequenceNumber, Some(&first), None).await?,
        ["one", "two"]
    );
    assert_eq!(
        read(T::AfterSequenceNumber, Some(&first), None).await?,
        ["two"]
    );
    assert_eq!(
        read(T::AfterSequenceNumber, Some(&second), None).await?,
        Vec::<String>::new()
    );
    assert_eq!(read(T::AtTimestamp, None, Some(between)).await?, ["two"]);

    let latest = client
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(&shard)
        .shard_iterator_type(T::Latest)
        .send()
        .await?
        .shard_iterator
        .ok_or("no iterator")?;
    put(&client, &stream, "three").await?;
    let page = client.get_records().shard_iterator(latest).send().await?;
    let data: Vec<_> = page
        .records()
        .iter()
        .map(|r| r.data().as_ref().to_vec())
        .collect();
    assert_eq!(data, [b"three".to_vec()]);

    // An unknown iterator is an error, not an empty page.
    let bad = client
        .get_records()
        .shard_iterator("AAAA-not-an-iterator")
        .send()
        .await;
    assert!(bad.is_err());
    Ok(())
}

#[tokio::test]
async fn update_shard_count() -> TestResult {
    let client = aws_sdk_kinesis::Client::new(&sdk_config().await?);
    let stream = unique_name("scaling");
    create_stream(&client, &stream, 2).await?;
    client
        .update_shard_count()
        .stream_name(&stream)
        .target_shard_count(4)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await?;
    wait_stream_active(&client, &stream).await?;
    let open = list_shards(&client, &stream)
        .await?
        .into_iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .count();
    assert_eq!(open, 4);
    Ok(())
}

#[tokio::test]
async fn enhanced_fan_out_subscription_delivers_records() -> TestResult {
    let client = aws_sdk_kinesis::Client::new(&sdk_config().await?);
    let stream = unique_name("fanout");
    create_stream(&client, &stream, 1).await?;
    let stream_arn = client
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await?
        .stream_description_summary()
        .ok_or("no summary")?
        .stream_arn()
        .to_owned();
    let consumer = client
        .register_stream_consumer()
        .stream_arn(&stream_arn)
        .consumer_name("efo-test")
        .send()
        .await?
        .consumer
        .ok_or("no consumer")?;
    let consumer_arn = consumer.consumer_arn().to_owned();
    wait_for("consumer ACTIVE", Duration::from_secs(30), || async {
        let described = client
            .describe_stream_consumer()
            .consumer_arn(&consumer_arn)
            .send()
            .await?;
        let status = described
            .consumer_description()
            .map(|c| c.consumer_status().clone());
        Ok((status == Some(ConsumerStatus::Active)).then_some(()))
    })
    .await?;

    let (shard, _) = put(&client, &stream, "fan-out").await?;
    let mut subscription = client
        .subscribe_to_shard()
        .consumer_arn(&consumer_arn)
        .shard_id(&shard)
        .starting_position(
            StartingPosition::builder()
                .r#type(ShardIteratorType::TrimHorizon)
                .build()?,
        )
        .send()
        .await?;
    let received = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = subscription.event_stream.recv().await? {
            if let SubscribeToShardEventStream::SubscribeToShardEvent(event) = event {
                if let Some(record) = event.records().first() {
                    return Ok::<_, integration_tests::TestError>(record.data().as_ref().to_vec());
                }
            }
        }
        Err("subscription ended without records".into())
    })
    .await??;
    assert_eq!(received, b"fan-out");
    Ok(())
}
