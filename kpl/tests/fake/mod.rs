//! A fake Kinesis stream behind the SDK's HTTP layer, in process: requests are really
//! serialized by the SDK (JSON, base64) and answered with JSON as Kinesis answers, after
//! an optional latency (a tokio sleep, so tests may run on paused time). Records are
//! routed by hash key like the service; throttling, whole-call errors, per-shard write
//! limits and a lagging ListShards can be injected.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_kinesis::config::{BehaviorVersion, Region};
use aws_sdk_kinesis::Client;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use kinesis_producer::aggregation::deaggregate;
use kinesis_producer::{HashKey, Producer, ProducerBuilder};
use serde_json::{json, Value};
use tokio::time::Instant;

pub const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// A shard: id and hash key range.
pub type Range = (String, u128, u128);

/// A Kinesis record the fake stored.
#[derive(Clone, Debug)]
pub struct Stored {
    pub shard: String,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
    pub at: Instant,
}

/// One ListShards request, as received.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    pub shard_filter: Option<String>,
    pub max_results: Option<u64>,
    pub next_token: bool,
}

/// One PutRecords call, as received.
#[derive(Clone, Debug)]
pub struct PutCall {
    pub at: Instant,
    pub records: usize,
    pub bytes: usize,
}

/// A fake Kinesis stream: shards by hash range, stored records, injectable faults.
#[derive(Default)]
pub struct Fake {
    /// Where records really go (open shards).
    pub shards: Mutex<Vec<Range>>,
    /// What ListShards says is open (may lag behind `shards` to simulate a reshard).
    pub listed: Mutex<Vec<Range>>,
    /// Closed shards ListShards also lists unless asked for open shards only.
    pub closed: Mutex<Vec<Range>>,
    pub stored: Mutex<Vec<Stored>>,
    /// Whether to keep what is stored (off for benchmarks: only counts).
    pub keep: AtomicBool,
    pub stored_count: AtomicU64,
    pub next_sequence: AtomicU64,
    /// The next this many entries are throttled.
    pub throttle_entries: AtomicUsize,
    /// Every entry is throttled.
    pub always_throttle: AtomicBool,
    /// Throttle one entry in n at random (0: none), e.g. 2 for half of them.
    pub throttle_every: AtomicUsize,
    /// Throttle until this instant (with `throttle_every`).
    pub throttle_until: Mutex<Option<Instant>>,
    /// The next this many calls fail as a whole with `fail_code`.
    pub fail_calls: AtomicUsize,
    pub fail_code: Mutex<String>,
    /// Per-shard write limit in bytes per second (0: none), enforced per one-second
    /// window like the service's throttling.
    pub shard_bytes_per_second: AtomicUsize,
    shard_windows: Mutex<HashMap<String, (Instant, usize)>>,
    /// Whether ListShards rejects `ShardFilter` (older endpoints).
    pub reject_shard_filter: AtomicBool,
    pub list_requests: Mutex<Vec<ListRequest>>,
    /// The next this many ListShards calls fail with HTTP 500.
    pub fail_lists: AtomicUsize,
    pub puts: Mutex<Vec<PutCall>>,
    /// Time each PutRecords call takes.
    pub latency: Mutex<Duration>,
    counter: AtomicUsize,
}

pub fn even_shards(n: u128) -> Vec<Range> {
    let width = u128::MAX / n;
    (0..n)
        .map(|i| {
            let start = if i == 0 { 0 } else { i * width + 1 };
            let end = if i + 1 == n {
                u128::MAX
            } else {
                (i + 1) * width
            };
            (format!("shardId-{i:012}"), start, end)
        })
        .collect()
}

/// `ranges` with new shard ids from `first_id` on, as Kinesis gives the children of a
/// reshard (a shard id never changes its hash range).
pub fn renumbered(ranges: Vec<Range>, first_id: usize) -> Vec<Range> {
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, (_, start, end))| (format!("shardId-{:012}", first_id + i), start, end))
        .collect()
}

pub fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// The part of a PutRecords request the fake reads.
#[derive(serde::Deserialize)]
struct PutRecordsBody<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<PutRecordsEntry<'a>>,
}

#[derive(serde::Deserialize)]
struct PutRecordsEntry<'a> {
    #[serde(rename = "Data")]
    data: &'a str,
    #[serde(rename = "PartitionKey", borrow)]
    partition_key: std::borrow::Cow<'a, str>,
    #[serde(rename = "ExplicitHashKey")]
    explicit_hash_key: Option<&'a str>,
}

/// Length of the bytes a (padded) base64 string decodes to.
fn base64_decoded_len(encoded: &str) -> usize {
    let padding = encoded.bytes().rev().take_while(|b| *b == b'=').count();
    encoded.len() / 4 * 3 - padding
}

fn response(status: u16, body: Value) -> HttpResponse {
    let mut response = HttpResponse::new(
        StatusCode::try_from(status).unwrap(),
        SdkBody::from(body.to_string()),
    );
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.1");
    response
}

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    response(status, json!({ "__type": code, "message": message }))
}

fn shard_json((id, start, end): &Range, closed: bool) -> Value {
    let mut range = json!({ "StartingSequenceNumber": "0" });
    if closed {
        range["EndingSequenceNumber"] = json!("1");
    }
    json!({
        "ShardId": id,
        "HashKeyRange": { "StartingHashKey": start.to_string(), "EndingHashKey": end.to_string() },
        "SequenceNumberRange": range,
    })
}

impl Fake {
    pub fn new(shards: u128) -> Arc<Self> {
        let fake = Fake::default();
        *fake.shards.lock().unwrap() = even_shards(shards);
        *fake.listed.lock().unwrap() = even_shards(shards);
        fake.keep.store(true, Ordering::SeqCst);
        *fake.fail_code.lock().unwrap() = THROTTLED.to_owned();
        Arc::new(fake)
    }

    pub fn shard_of(&self, key: u128) -> String {
        let shards = self.shards.lock().unwrap();
        shards
            .iter()
            .find(|(_, start, end)| *start <= key && key <= *end)
            .map(|(id, _, _)| id.clone())
            .expect("shards cover the hash key space")
    }

    /// A Kinesis client whose HTTP requests this fake answers.
    pub fn client(self: &Arc<Self>) -> Client {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("fake", "fake", None, None, "fake"))
            .http_client(FakeHttp(self.clone()))
            .build();
        Client::from_conf(config)
    }

    /// A producer builder on this fake with short intervals.
    pub fn builder(self: &Arc<Self>) -> ProducerBuilder {
        Producer::builder(self.client())
            .stream("fake")
            .min_backoff(Duration::from_millis(5))
            .max_backoff(Duration::from_millis(50))
            .record_max_buffered_time(Duration::from_millis(10))
            .shard_map_min_refresh_interval(Duration::from_millis(10))
    }

    fn list_shards(&self, body: &Value) -> HttpResponse {
        let request = ListRequest {
            shard_filter: body["ShardFilter"]["Type"].as_str().map(str::to_owned),
            max_results: body["MaxResults"].as_u64(),
            next_token: body.get("NextToken").is_some(),
        };
        let filtered = request.shard_filter.is_some();
        self.list_requests.lock().unwrap().push(request);
        if take_one(&self.fail_lists) {
            return error(500, "InternalFailure", "injected");
        }
        if filtered && self.reject_shard_filter.load(Ordering::SeqCst) {
            return error(
                400,
                "InvalidArgumentException",
                "injected: ShardFilter is not supported",
            );
        }
        let mut shards = Vec::new();
        if !filtered {
            shards.extend(
                self.closed
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| shard_json(s, true)),
            );
        }
        shards.extend(
            self.listed
                .lock()
                .unwrap()
                .iter()
                .map(|s| shard_json(s, false)),
        );
        response(200, json!({ "Shards": shards }))
    }

    fn throttle_now(&self, now: Instant) -> bool {
        if self.always_throttle.load(Ordering::SeqCst) || take_one(&self.throttle_entries) {
            return true;
        }
        let every = self.throttle_every.load(Ordering::SeqCst);
        if every == 0 {
            return false;
        }
        let until = *self.throttle_until.lock().unwrap();
        if until.is_some_and(|u| now >= u) {
            return false;
        }
        // A fixed pseudo-random sequence (splitmix64): a strict alternation would
        // throttle a record retried at the same position every time.
        let n = self.counter.fetch_add(1, Ordering::SeqCst) as u64;
        let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).is_multiple_of(every as u64)
    }

    /// Whether the shard's byte limit lets `bytes` more through in its current window.
    fn within_shard_limit(&self, shard: &str, bytes: usize, now: Instant) -> bool {
        let limit = self.shard_bytes_per_second.load(Ordering::SeqCst);
        if limit == 0 {
            return true;
        }
        let mut windows = self.shard_windows.lock().unwrap();
        let window = windows.entry(shard.to_owned()).or_insert((now, 0));
        if now.duration_since(window.0) >= Duration::from_secs(1) {
            *window = (now, 0);
        }
        if window.1 + bytes > limit {
            return false;
        }
        window.1 += bytes;
        true
    }

    fn put_records(&self, body: &[u8]) -> HttpResponse {
        if take_one(&self.fail_calls) {
            let code = self.fail_code.lock().unwrap().clone();
            return error(400, &code, "injected: whole request failed");
        }
        let now = Instant::now();
        // Parsed borrowing the request, so the fake adds little memory of its own.
        let request: PutRecordsBody<'_> = serde_json::from_slice(body).unwrap();
        let keep = self.keep.load(Ordering::SeqCst);
        let mut results = Vec::with_capacity(request.records.len());
        let mut failed = 0;
        let mut call_bytes = 0;
        for entry in &request.records {
            let partition_key = entry.partition_key.to_string();
            let explicit_hash_key = entry.explicit_hash_key.map(str::to_owned);
            let data = if keep {
                base64_simd::STANDARD.decode_to_vec(entry.data).unwrap()
            } else {
                Vec::new()
            };
            let data_len = base64_decoded_len(entry.data);
            call_bytes += data_len + partition_key.len();
            let key = match &explicit_hash_key {
                Some(k) => k.parse::<u128>().unwrap(),
                None => HashKey::from_partition_key(&partition_key).0,
            };
            let shard = self.shard_of(key);
            let size = data_len + partition_key.len();
            if self.throttle_now(now) || !self.within_shard_limit(&shard, size, now) {
                failed += 1;
                results.push(json!({
                    "ErrorCode": THROTTLED,
                    "ErrorMessage": "injected: rate exceeded for shard",
                }));
                continue;
            }
            let sequence = self.next_sequence.fetch_add(1, Ordering::SeqCst);
            self.stored_count.fetch_add(1, Ordering::SeqCst);
            if keep {
                self.stored.lock().unwrap().push(Stored {
                    shard: shard.clone(),
                    partition_key,
                    explicit_hash_key,
                    data: Bytes::from(data),
                    at: now,
                });
            }
            results.push(json!({
                "ShardId": shard,
                "SequenceNumber": format!("{sequence:056}"),
            }));
        }
        self.puts.lock().unwrap().push(PutCall {
            at: now,
            records: request.records.len(),
            bytes: call_bytes,
        });
        response(
            200,
            json!({ "FailedRecordCount": failed, "Records": results }),
        )
    }

    fn answer(&self, request: &HttpRequest, body: &[u8]) -> HttpResponse {
        let target = request
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .to_owned();
        if target.ends_with(".ListShards") {
            self.list_shards(&serde_json::from_slice(body).unwrap_or(Value::Null))
        } else if target.ends_with(".PutRecords") {
            self.put_records(body)
        } else {
            error(400, "UnknownOperationException", &target)
        }
    }

    /// Every user record stored, deaggregated, with the shard it is stored on.
    pub fn user_records(&self) -> Vec<(String, String, Bytes)> {
        self.stored
            .lock()
            .unwrap()
            .iter()
            .flat_map(|s| {
                deaggregate(
                    &s.partition_key,
                    s.explicit_hash_key.as_deref(),
                    s.data.clone(),
                )
                .into_iter()
                .map(|u| (s.shard.clone(), u.partition_key.to_string(), u.data))
            })
            .collect()
    }

    /// How many times each (partition key, data) is stored where a consumer keeps it:
    /// an aggregate holding any user record outside its shard's hash range is dropped
    /// whole (as AWS's KCL does), so its records do not count.
    pub fn kept_copies(&self) -> HashMap<(String, Bytes), usize> {
        let ranges: HashMap<String, (u128, u128)> = self
            .shards
            .lock()
            .unwrap()
            .iter()
            .chain(self.closed.lock().unwrap().iter())
            .map(|(id, start, end)| (id.clone(), (*start, *end)))
            .collect();
        let mut copies = HashMap::new();
        for stored in self.stored.lock().unwrap().iter() {
            let (start, end) = ranges[&stored.shard];
            let users = deaggregate(
                &stored.partition_key,
                stored.explicit_hash_key.as_deref(),
                stored.data.clone(),
            );
            let misplaced = users.iter().any(|u| {
                let key = match &u.explicit_hash_key {
                    Some(k) => k.parse::<u128>().unwrap(),
                    None => HashKey::from_partition_key(&u.partition_key).0,
                };
                u.aggregated && !(start <= key && key <= end)
            });
            if misplaced {
                continue;
            }
            for user in users {
                *copies
                    .entry((user.partition_key.to_string(), user.data))
                    .or_insert(0) += 1;
            }
        }
        copies
    }
}

#[derive(Clone)]
struct FakeHttp(Arc<Fake>);

impl std::fmt::Debug for FakeHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeHttp")
    }
}

impl HttpConnector for FakeHttp {
    fn call(&self, mut request: HttpRequest) -> HttpConnectorFuture {
        let fake = self.0.clone();
        HttpConnectorFuture::new(async move {
            let latency = *fake.latency.lock().unwrap();
            let is_put = request
                .headers()
                .get("x-amz-target")
                .is_some_and(|t| t.ends_with(".PutRecords"));
            // The producer streams its PutRecords bodies: read them as a server does.
            let body = http_body_util::BodyExt::collect(request.take_body())
                .await
                .unwrap()
                .to_bytes();
            if is_put && !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            Ok(fake.answer(&request, &body))
        })
    }
}

impl HttpClient for FakeHttp {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}
