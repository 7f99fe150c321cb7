//! The PutRecords request body, written by the producer and streamed to the SDK (the
//! fast path, on by default: `ProducerConfig::put_records_fast_path`).
//!
//! Through the SDK's serializer a payload is copied into a `Blob` (the producer holds it
//! as `Bytes`), base64-encoded into a string of its own and escaped into a JSON body that
//! grows by doubling (`benches/put_request.rs`: 10.2 ms against 4.1 ms for a 5 MiB call
//! of 100 aggregates), and the finished body, 1.33 times the data, lives as long as the
//! call. The producer writes the same JSON itself, base64 straight from the payloads, in
//! chunks of about [`CHUNK`] bytes produced as the connection sends them: a call in
//! flight holds no copy of its data beyond the records it sends. SigV4 needs the body's
//! SHA-256 before the headers go, so a first pass hashes the chunks without keeping
//! them; the SDK signs with that hash ([`PayloadSigningOverride::Precomputed`]).
//!
//! The body is written for one request shape: Kinesis's awsJson 1.1 protocol
//! (`content-type: application/x-amz-json-1.1`, `x-amz-target:
//! Kinesis_20131202.PutRecords`). Before it replaces the SDK's body, [`UseBody`] checks
//! that the SDK built that request; any other (a protocol chosen with
//! `Config::Builder::protocol`, or a later SDK's) is refused with [`FastPathRefused`],
//! and the pipeline sends the call through the SDK's serializer instead.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_runtime::auth::PayloadSigningOverride;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};

use crate::pending::Outgoing;
use crate::StreamId;

const BASE64: base64_simd::Base64 = base64_simd::STANDARD;

/// Bytes the body is produced in (a record longer than this makes a chunk of its own).
pub(crate) const CHUNK: usize = 64 * 1024;

/// Data base64-encoded at once while hashing: a multiple of 3, so the pieces' encodings
/// join without padding.
const HASH_PIECE: usize = 48 * 1024;

/// Where body bytes go: a chunk being built, or the hash.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn put_base64(&mut self, data: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn put_base64(&mut self, data: &[u8]) {
        BASE64.encode_append(data, self);
    }
}

/// Counts the bytes a chunk will take, so it is allocated once at its size (a chunk of
/// one 68 KB aggregate would otherwise grow a 65 KB buffer to 130 KB).
struct CountSink(usize);

impl Sink for CountSink {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    fn put_base64(&mut self, data: &[u8]) {
        self.0 += BASE64.encoded_length(data.len());
    }
}

struct HashSink {
    hasher: Sha256,
    scratch: Vec<u8>,
}

impl Sink for HashSink {
    fn put(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    fn put_base64(&mut self, data: &[u8]) {
        for piece in data.chunks(HASH_PIECE) {
            self.scratch.clear();
            BASE64.encode_append(piece, &mut self.scratch);
            self.hasher.update(&self.scratch);
        }
    }
}

/// Bytes `value` takes as a JSON string, quotes included.
fn json_string_len(value: &str) -> usize {
    2 + value
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Writes `value` as a JSON string (RFC 8259: quotes, backslashes and control
/// characters escaped; everything else as UTF-8).
fn put_json_string(out: &mut impl Sink, value: &str) {
    out.put(b"\"");
    let bytes = value.as_bytes();
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.put(&bytes[clean..i]);
        clean = i + 1;
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.put(short);
        }
    }
    out.put(&bytes[clean..]);
    out.put(b"\"");
}

/// One entry of the `Records` array.
#[derive(Debug)]
struct Entry {
    data: Bytes,
    explicit_hash_key: Option<String>,
    partition_key: String,
}

impl Entry {
    /// Its JSON, without the comma that separates it from the previous one.
    fn len(&self) -> usize {
        r#"{"Data":"","PartitionKey":}"#.len()
            + BASE64.encoded_length(self.data.len())
            + json_string_len(&self.partition_key)
            + self
                .explicit_hash_key
                .as_deref()
                .map_or(0, |k| r#""ExplicitHashKey":,"#.len() + json_string_len(k))
    }

    fn write(&self, out: &mut impl Sink) {
        out.put(br#"{"Data":""#);
        out.put_base64(&self.data);
        out.put(br#"","#);
        if let Some(key) = &self.explicit_hash_key {
            out.put(br#""ExplicitHashKey":"#);
            put_json_string(out, key);
            out.put(b",");
        }
        out.put(br#""PartitionKey":"#);
        put_json_string(out, &self.partition_key);
        out.put(b"}");
    }
}

const HEAD: &[u8] = br#"{"Records":["#;

/// The JSON body of a PutRecords call: what the SDK's serializer writes for the same
/// input, produced on demand from the records' own bytes.
#[derive(Debug)]
pub(crate) struct PutRecordsBody {
    entries: Vec<Entry>,
    /// `],"StreamName":"..."}` (or `StreamARN`).
    tail: Vec<u8>,
    len: usize,
}

impl PutRecordsBody {
    /// The body putting `records` into `stream`.
    pub fn new(stream: &StreamId, records: &[Outgoing]) -> Arc<Self> {
        let entries: Vec<Entry> = records
            .iter()
            .map(|r| Entry {
                data: r.encoded.data.clone(),
                explicit_hash_key: r.encoded.explicit_hash_key.clone(),
                partition_key: r.encoded.partition_key.clone(),
            })
            .collect();
        let mut tail = b"],".to_vec();
        let (field, value) = match stream {
            StreamId::Name(name) => (&br#""StreamName":"#[..], name),
            StreamId::Arn(arn) => (&br#""StreamARN":"#[..], arn),
        };
        tail.put(field);
        put_json_string(&mut tail, value);
        tail.put(b"}");
        let len = HEAD.len()
            + entries.iter().map(Entry::len).sum::<usize>()
            + entries.len().saturating_sub(1)
            + tail.len();
        Arc::new(PutRecordsBody { entries, tail, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes the chunk that starts at entry `from` (`first`: the body's first chunk):
    /// whole entries up to about [`CHUNK`] bytes, at least one; the tail after the last.
    /// Returns where the next chunk starts.
    fn write_chunk(&self, from: usize, first: bool, out: &mut impl Sink) -> usize {
        let mut written = 0;
        if first {
            out.put(HEAD);
            written += HEAD.len();
        }
        let mut next = from;
        while let Some(entry) = self.entries.get(next) {
            let len = entry.len() + usize::from(next > 0);
            if next > from && written + len > CHUNK {
                return next;
            }
            if next > 0 {
                out.put(b",");
            }
            entry.write(out);
            written += len;
            next += 1;
        }
        out.put(&self.tail);
        next
    }

    /// SHA-256 of the body, lowercase hex (what SigV4 signs), without keeping it.
    pub fn sha256_hex(&self) -> String {
        let mut sink = HashSink {
            hasher: Sha256::new(),
            scratch: Vec::with_capacity(BASE64.encoded_length(HASH_PIECE)),
        };
        let mut next = 0;
        let mut first = true;
        while first || next < self.entries.len() {
            next = self.write_chunk(next, first, &mut sink);
            first = false;
        }
        let digest = sink.hasher.finalize();
        let mut hex = String::with_capacity(64);
        for b in digest {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        hex
    }

    /// The body as the SDK sends it (rebuilt from the start if the SDK asks again).
    pub fn sdk_body(self: &Arc<Self>) -> SdkBody {
        let body = self.clone();
        SdkBody::retryable(move || SdkBody::from_body_1_x(Chunks::new(body.clone())))
    }
}

/// The body's chunks, produced as the connection asks for them.
struct Chunks {
    body: Arc<PutRecordsBody>,
    next: usize,
    first: bool,
    remaining: usize,
}

impl Chunks {
    fn new(body: Arc<PutRecordsBody>) -> Self {
        let remaining = body.len;
        Chunks {
            body,
            next: 0,
            first: true,
            remaining,
        }
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.first && self.next >= self.body.entries.len() {
            return None;
        }
        let mut len = CountSink(0);
        self.body.write_chunk(self.next, self.first, &mut len);
        let mut chunk = Vec::with_capacity(len.0);
        self.next = self.body.write_chunk(self.next, self.first, &mut chunk);
        self.first = false;
        self.remaining = self.remaining.saturating_sub(chunk.len());
        Some(Bytes::from(chunk))
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .next_chunk()
                .map(|chunk| Ok(Frame::data(chunk))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining as u64)
    }
}

/// The content type of the requests the producer's body is written for.
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The target of the requests the producer's body is written for.
const TARGET: &str = "Kinesis_20131202.PutRecords";

/// The SDK built a PutRecords request other than the one the producer's body is written
/// for: the call goes through the SDK's serializer instead.
#[derive(Debug)]
pub(crate) struct FastPathRefused {
    content_type: Option<String>,
    target: Option<String>,
}

impl std::fmt::Display for FastPathRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the SDK's PutRecords request is not the one the producer writes bodies for \
             (content-type {:?}, x-amz-target {:?}; expected {CONTENT_TYPE}, {TARGET})",
            self.content_type, self.target
        )
    }
}

impl std::error::Error for FastPathRefused {}

/// Gives a PutRecords request the producer's body and its hash, before signing, when
/// the request is the awsJson 1.1 one it is written for.
#[derive(Debug)]
pub(crate) struct UseBody {
    body: Arc<PutRecordsBody>,
    sha256: String,
}

impl UseBody {
    /// Hashes `body` (a pass over it) for the signature.
    pub fn new(body: Arc<PutRecordsBody>) -> Self {
        let sha256 = body.sha256_hex();
        UseBody { body, sha256 }
    }
}

impl Intercept for UseBody {
    fn name(&self) -> &'static str {
        "KinesisProducerPutRecordsBody"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        let content_type = request.headers().get("content-type");
        let target = request.headers().get("x-amz-target");
        let json = request.body().bytes().is_some_and(|b| b.starts_with(b"{"));
        if content_type != Some(CONTENT_TYPE) || target != Some(TARGET) || !json {
            return Err(Box::new(FastPathRefused {
                content_type: content_type.map(str::to_owned),
                target: target.map(str::to_owned),
            }));
        }
        request
            .headers_mut()
            .insert("content-length", self.body.len().to_string());
        *request.body_mut() = self.body.sdk_body();
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.sha256.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::time::Instant;

    use super::*;
    use crate::aggregation::EncodedRecord;

    fn outgoing(partition_key: &str, explicit_hash_key: Option<&str>, data: &[u8]) -> Outgoing {
        Outgoing::new(
            None,
            EncodedRecord::new(
                partition_key.to_owned(),
                explicit_hash_key.map(str::to_owned),
                Bytes::copy_from_slice(data),
                1,
            ),
            Vec::new(),
            Instant::now(),
        )
    }

    /// Every chunk, concatenated.
    fn collect(body: &Arc<PutRecordsBody>) -> (Vec<u8>, usize) {
        let mut chunks = Chunks::new(body.clone());
        let mut out = Vec::new();
        let mut count = 0;
        while let Some(chunk) = chunks.next_chunk() {
            out.extend_from_slice(&chunk);
            count += 1;
        }
        assert!(chunks.is_end_stream());
        (out, count)
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Parsed {
        #[serde(rename = "Records")]
        records: Vec<ParsedEntry>,
        #[serde(rename = "StreamName")]
        stream_name: Option<String>,
        #[serde(rename = "StreamARN")]
        stream_arn: Option<String>,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct ParsedEntry {
        #[serde(rename = "Data")]
        data: String,
        #[serde(rename = "PartitionKey")]
        partition_key: String,
        #[serde(rename = "ExplicitHashKey")]
        explicit_hash_key: Option<String>,
    }

    #[tokio::test]
    async fn writes_what_kinesis_reads_in_chunks_of_the_announced_length() {
        let mut records = vec![
            outgoing("a", Some("12345"), b"\xf3\x89\x9a\xc2 aggregate"),
            outgoing("key \"quoted\" \\ \n\t\u{1}\u{1f}", None, b""),
            outgoing("🦀", None, &[7u8; 1000]),
            outgoing("big", None, &vec![1u8; 3 * CHUNK]),
        ];
        records.extend((0..300).map(|i| outgoing(&format!("k{i}"), None, &vec![i as u8; 500])));
        let body = PutRecordsBody::new(&StreamId::new("orders"), &records);
        let (bytes, chunks) = collect(&body);
        assert_eq!(bytes.len(), body.len(), "exact length");
        assert!(chunks > 3, "{chunks} chunks");
        let parsed: Parsed = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(parsed.stream_name.as_deref(), Some("orders"));
        assert_eq!(parsed.stream_arn, None);
        assert_eq!(parsed.records.len(), records.len());
        for (entry, record) in parsed.records.iter().zip(&records) {
            let data = BASE64.decode_to_vec(&entry.data).expect("base64");
            assert_eq!(data, record.encoded.data);
            assert_eq!(entry.partition_key, record.encoded.partition_key);
            assert_eq!(entry.explicit_hash_key, record.encoded.explicit_hash_key);
        }
        let expected: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(body.sha256_hex(), expected);

        let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
        let body = PutRecordsBody::new(&StreamId::new(arn), &records[..1]);
        let (bytes, chunks) = collect(&body);
        assert_eq!((bytes.len(), chunks), (body.len(), 1));
        let parsed: Parsed = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(parsed.stream_arn.as_deref(), Some(arn));
        assert_eq!(parsed.stream_name, None);
    }

    #[tokio::test]
    async fn an_empty_body_is_still_json() {
        let body = PutRecordsBody::new(&StreamId::new("s"), &[]);
        let (bytes, _) = collect(&body);
        assert_eq!(bytes, br#"{"Records":[],"StreamName":"s"}"#);
        assert_eq!(bytes.len(), body.len());
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_json(value in "\\PC*|[\\x00-\\x1f\"\\\\]*") {
            let mut out = Vec::new();
            put_json_string(&mut out, &value);
            prop_assert_eq!(out.len(), json_string_len(&value));
            let parsed: String = serde_json::from_slice(&out).expect("a JSON string");
            prop_assert_eq!(parsed, value);
        }
    }
}
