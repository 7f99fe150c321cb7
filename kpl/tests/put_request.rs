//! The PutRecords requests the producer writes itself (see `src/request.rs`): the body
//! is byte for byte what the SDK's serializer writes for the same records, and its
//! SigV4 signature, computed by the SDK from the hash the producer gave it, is the one
//! Kinesis computes from the bytes it receives.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sdk_kinesis::config::{BehaviorVersion, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use kinesis_producer::{HashKey, Producer, Record};

/// A PutRecords request as it left the SDK.
#[derive(Clone, Debug)]
struct Captured {
    uri: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Captured {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }
}

/// Answers as a one-shard stream and keeps every PutRecords request.
#[derive(Clone, Debug, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

fn respond(body: String) -> HttpResponse {
    let mut response = HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::from(body));
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.1");
    response
}

impl HttpConnector for Capture {
    fn call(&self, mut request: HttpRequest) -> HttpConnectorFuture {
        let capture = self.clone();
        HttpConnectorFuture::new(async move {
            let target = request.headers().get("x-amz-target").unwrap_or_default();
            if target.ends_with(".ListShards") {
                return Ok(respond(format!(
                    r#"{{"Shards":[{{"ShardId":"shardId-000000000000","HashKeyRange":{{"StartingHashKey":"0","EndingHashKey":"{}"}},"SequenceNumberRange":{{"StartingSequenceNumber":"0"}}}}]}}"#,
                    u128::MAX
                )));
            }
            let headers = request
                .headers()
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            let uri = request.uri().to_owned();
            let body = http_body_util::BodyExt::collect(request.take_body())
                .await
                .unwrap()
                .to_bytes();
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let results: Vec<String> = (0..parsed["Records"].as_array().unwrap().len())
                .map(|i| format!(r#"{{"SequenceNumber":"{i}","ShardId":"shardId-000000000000"}}"#))
                .collect();
            capture
                .0
                .lock()
                .unwrap()
                .push(Captured { uri, headers, body });
            Ok(respond(format!(
                r#"{{"FailedRecordCount":0,"Records":[{}]}}"#,
                results.join(",")
            )))
        })
    }
}

impl HttpClient for Capture {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl Capture {
    fn client(&self, credentials: &Credentials) -> Client {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials.clone())
            .http_client(self.clone())
            .build();
        Client::from_conf(config)
    }

    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// `20261123T214500Z` as a time.
fn parse_amz_date(date: &str) -> SystemTime {
    let n = |range: std::ops::Range<usize>| date[range].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + n(9..11) * 3_600 + n(11..13) * 60 + n(13..15);
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap())
}

/// The signature Kinesis computes for `request` from the bytes of `body`.
fn signature_over(request: &Captured, body: &[u8], credentials: &Credentials) -> String {
    let authorization = request.header("authorization");
    let signed: Vec<&str> = authorization
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .split(';')
        .collect();
    let headers = request
        .headers
        .iter()
        .filter(|(n, _)| signed.contains(&n.to_ascii_lowercase().as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()));
    let identity = Identity::from(credentials.clone());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("kinesis")
        .time(parse_amz_date(request.header("x-amz-date")))
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable =
        SignableRequest::new("POST", &request.uri, headers, SignableBody::Bytes(body)).unwrap();
    sign(signable, &params).unwrap().into_parts().1
}

fn records() -> Vec<Record> {
    let mut records = Vec::new();
    for i in 0..40 {
        let key = match i % 4 {
            0 => format!("plain-{i}"),
            1 => format!("quoted \"{i}\" \\ back"),
            2 => format!("🦀 tab\t{i}"),
            _ => format!("control\u{1}{i}"),
        };
        let mut record = Record::new(key, vec![i as u8; 50 + 37 * i]);
        if i % 5 == 0 {
            record = record.with_hash_key(HashKey(u128::MAX / 7 * (i as u128 % 7)));
        }
        records.push(record);
    }
    records
}

#[tokio::test]
async fn the_body_is_the_sdks_and_its_signature_verifies() {
    let credentials = Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "t");
    let capture = Capture::default();
    let client = capture.client(&credentials);
    let mut requests = Vec::new();
    for (stream, aggregation) in [
        ("orders", true),
        ("orders", false),
        ("arn:aws:kinesis:us-east-1:123456789012:stream/orders", true),
    ] {
        let producer = Producer::builder(client.clone())
            .stream(stream)
            .aggregation_enabled(aggregation)
            // The capture answers ListShards and PutRecords only.
            .max_record_size(1024 * 1024)
            .build()
            .await
            .unwrap();
        let mut receipts = Vec::new();
        for record in records() {
            receipts.push(producer.send(record).await.unwrap());
        }
        producer.flush().await;
        for receipt in receipts {
            receipt.await.unwrap();
        }
        producer.shutdown().await;
        for request in capture.take() {
            requests.push((stream, request));
        }
    }
    assert!(requests.len() >= 3, "{} requests", requests.len());

    for (stream, ours) in requests {
        let expected = signature_over(&ours, &ours.body, &credentials);
        let signature = ours.header("authorization").split("Signature=").nth(1);
        assert_eq!(signature, Some(expected.as_str()), "signature of {stream}");
        let mut altered = ours.body.to_vec();
        altered[20] ^= 1;
        assert_ne!(
            signature_over(&ours, &altered, &credentials),
            expected,
            "the signature covers the body"
        );

        // The same entries through the SDK's own serializer.
        let parsed: serde_json::Value = serde_json::from_slice(&ours.body).unwrap();
        let entries = parsed["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let data = base64_simd::STANDARD
                    .decode_to_vec(e["Data"].as_str().unwrap())
                    .unwrap();
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(data))
                    .partition_key(e["PartitionKey"].as_str().unwrap())
                    .set_explicit_hash_key(e["ExplicitHashKey"].as_str().map(str::to_owned))
                    .build()
                    .unwrap()
            })
            .collect();
        let request = if stream.starts_with("arn:") {
            client.put_records().stream_arn(stream)
        } else {
            client.put_records().stream_name(stream)
        };
        request.set_records(Some(entries)).send().await.unwrap();
        let sdk = capture.take().pop().unwrap();
        assert_eq!(
            std::str::from_utf8(&sdk.body).unwrap(),
            std::str::from_utf8(&ours.body).unwrap(),
            "what the SDK writes for {stream}"
        );
        assert_eq!(sdk.header("content-length"), ours.header("content-length"));
    }
}
