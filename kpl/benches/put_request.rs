//! What one PutRecords call costs the client, by request shape, through the AWS SDK with
//! an HTTP connector that answers at once (no network): the SDK's request serialization
//! (each entry's data copied into a `Blob`, base64 and JSON), SigV4 signing (SHA-256 of
//! the body) and the response parsing; against the same call whose body is written
//! directly into a buffer of its exact size (base64 straight from the payloads), as the
//! producer does, and handed to the SDK before signing.
//!
//! The shapes separate what a call costs per byte of data and per entry:
//!
//! ```text
//! cargo bench -p kinesis-producer --bench put_request
//! ```

#![allow(missing_docs, clippy::unwrap_used)]

use aws_credential_types::Credentials;
use aws_sdk_kinesis::config::{BehaviorVersion, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Answers every PutRecords call with the same canned success.
#[derive(Clone, Debug)]
struct Answer(Bytes);

impl HttpConnector for Answer {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let mut response = HttpResponse::new(
            StatusCode::try_from(200).unwrap(),
            SdkBody::from(self.0.clone()),
        );
        response
            .headers_mut()
            .insert("content-type", "application/x-amz-json-1.1");
        HttpConnectorFuture::ready(Ok(response))
    }
}

impl HttpClient for Answer {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn client(entries: usize) -> Client {
    let results: Vec<String> = (0..entries)
        .map(|i| format!(r#"{{"SequenceNumber":"{i:056}","ShardId":"shardId-000000000000"}}"#))
        .collect();
    let answer = format!(
        r#"{{"FailedRecordCount":0,"Records":[{}]}}"#,
        results.join(",")
    );
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("fake", "fake", None, None, "fake"))
        .http_client(Answer(Bytes::from(answer)))
        .build();
    Client::from_conf(config)
}

/// `(entries, bytes of data per entry)`: plain 100 B records, KPL-default aggregates
/// filling a 5 MiB call, and one 1 MiB record.
const SHAPES: [(usize, usize); 3] = [(500, 100), (100, 51_200), (1, 1024 * 1024)];

const EXPLICIT_HASH_KEY: &str = "170141183460469231731687303715884105728";

/// The PutRecords body for `payloads`, written at its exact length.
fn body(stream: &str, payloads: &[Bytes]) -> Bytes {
    let base64 = base64_simd::STANDARD;
    let len: usize = payloads
        .iter()
        .map(|p| base64.encoded_length(p.len()) + 64 + EXPLICIT_HASH_KEY.len())
        .sum::<usize>()
        + 64
        + stream.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(br#"{"Records":["#);
    for (i, payload) in payloads.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"Data":""#);
        base64.encode_append(payload, &mut out);
        out.extend_from_slice(br#"","ExplicitHashKey":""#);
        out.extend_from_slice(EXPLICIT_HASH_KEY.as_bytes());
        out.extend_from_slice(br#"","PartitionKey":"a"}"#);
    }
    out.extend_from_slice(br#"],"StreamName":""#);
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(br#""}"#);
    Bytes::from(out)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("put_request");
    group.sample_size(20);
    for (entries, size) in SHAPES {
        let client = client(entries);
        let payloads: Vec<Bytes> = (0..entries)
            .map(|_| Bytes::from(vec![b'x'; size]))
            .collect();
        group.throughput(Throughput::Bytes((entries * size) as u64));
        let shape = format!("{entries} x {size} B");
        group.bench_function(BenchmarkId::new("sdk serializer", &shape), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let records = payloads
                        .iter()
                        .map(|p| {
                            PutRecordsRequestEntry::builder()
                                .partition_key("a")
                                .explicit_hash_key(EXPLICIT_HASH_KEY)
                                .data(Blob::new(p.to_vec()))
                                .build()
                                .unwrap()
                        })
                        .collect();
                    let output = client
                        .put_records()
                        .stream_name("bench")
                        .set_records(Some(records))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(output.records.len(), entries);
                })
            })
        });
        group.bench_function(BenchmarkId::new("body written directly", &shape), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let body = body("bench", &payloads);
                    let output = client
                        .put_records()
                        .stream_name("bench")
                        .set_records(Some(Vec::new()))
                        .customize()
                        .mutate_request(move |request| {
                            request
                                .headers_mut()
                                .insert("content-length", body.len().to_string());
                            *request.body_mut() = SdkBody::from(body.clone());
                        })
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(output.records.len(), entries);
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
