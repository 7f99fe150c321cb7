//! The KPL aggregated-record decoder on hostile bytes, and the encoder's round trip.
//!
//! Properties: no panic; at least one user record; a record that is not a valid aggregate
//! comes back whole; an aggregate's user records are numbered 0..n-1; a well-formed
//! aggregate (every index in range, every data present, keys Kinesis would take) is
//! decoded record for record;
//! the encoder's size prediction is exact and what it encodes decodes to what went in.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use kinesis_aggregation::{deaggregate, is_aggregated, AggregateBuilder, HashKey, MAGIC};
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};
use prost::Message;

/// The aggregation crate's own protobuf messages (crate-private there), to write
/// aggregates no encoder would.
#[path = "../../../kpl/aggregation/src/proto.rs"]
#[allow(dead_code)]
mod proto;

#[derive(Arbitrary, Debug)]
struct HostileRecord {
    partition_key_index: Option<u64>,
    explicit_hash_key_index: Option<u64>,
    data: Option<Vec<u8>>,
    tags: Vec<(Option<String>, Option<String>)>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Raw Kinesis record data.
    Raw(Vec<u8>),
    /// Protobuf bytes framed with the magic and a correct digest, so the protobuf decoder
    /// is reached.
    Framed(Vec<u8>),
    /// An `AggregatedRecord` message with arbitrary tables and indexes.
    Message {
        partition_keys: Vec<String>,
        explicit_hash_keys: Vec<String>,
        records: Vec<HostileRecord>,
    },
    /// User records through the encoder.
    Encode(Vec<(String, Option<u128>, Vec<u8>)>),
}

fn frame(body: &[u8]) -> Bytes {
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(body);
    data.extend_from_slice(&Md5::digest(body));
    Bytes::from(data)
}

/// A partition key an aggregate may hold: at most 256 Unicode characters.
fn valid_partition_key(key: &str) -> bool {
    key.chars().count() <= 256
}

/// An explicit hash key an aggregate may hold: decimal digits of a value below 2^128.
fn valid_explicit_hash_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) && key.parse::<u128>().is_ok()
}

/// Checks what every decode must satisfy; returns the user records.
fn check(data: Bytes) -> Vec<kinesis_aggregation::UserRecord> {
    let out = deaggregate("pk", Some("42"), data.clone());
    assert!(!out.is_empty(), "no user record");
    if out[0].aggregated {
        assert!(is_aggregated(&data));
        for (i, record) in out.iter().enumerate() {
            assert!(record.aggregated);
            assert_eq!(record.sub_sequence_number, i as u64);
        }
    } else {
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, data, "a plain record comes back whole");
        assert_eq!(&*out[0].partition_key, "pk");
        assert_eq!(out[0].explicit_hash_key.as_deref(), Some("42"));
        assert_eq!(out[0].sub_sequence_number, 0);
    }
    out
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(bytes) => {
            check(Bytes::from(bytes));
        }
        Input::Framed(body) => {
            check(frame(&body));
        }
        Input::Message {
            partition_keys,
            explicit_hash_keys,
            records,
        } => {
            let well_formed = !records.is_empty()
                && partition_keys.iter().all(|k| valid_partition_key(k))
                && explicit_hash_keys.iter().all(|k| valid_explicit_hash_key(k))
                && records.iter().all(|r| {
                    r.partition_key_index.is_some_and(|i| {
                        (i as usize) < partition_keys.len() && i < usize::MAX as u64
                    }) && r
                        .explicit_hash_key_index
                        .is_none_or(|i| (i as usize) < explicit_hash_keys.len())
                        && r.data.is_some()
                        && r.tags.iter().all(|t| t.0.is_some())
                });
            let message = proto::AggregatedRecord {
                partition_key_table: partition_keys.clone(),
                explicit_hash_key_table: explicit_hash_keys.clone(),
                records: records
                    .iter()
                    .map(|r| proto::Record {
                        partition_key_index: r.partition_key_index,
                        explicit_hash_key_index: r.explicit_hash_key_index,
                        data: r.data.clone().map(Bytes::from),
                        tags: r
                            .tags
                            .iter()
                            .map(|(key, value)| proto::Tag {
                                key: key.clone(),
                                value: value.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            };
            let out = check(frame(&message.encode_to_vec()));
            assert_eq!(
                out[0].aggregated, well_formed,
                "well-formed aggregates decode"
            );
            if well_formed {
                assert_eq!(out.len(), records.len());
                for (user, record) in out.iter().zip(&records) {
                    let pk = record.partition_key_index.unwrap_or_default() as usize;
                    assert_eq!(&*user.partition_key, partition_keys[pk].as_str());
                    assert_eq!(
                        user.explicit_hash_key.as_deref(),
                        record
                            .explicit_hash_key_index
                            .map(|i| explicit_hash_keys[i as usize].as_str())
                    );
                    assert_eq!(Some(&user.data[..]), record.data.as_deref());
                }
            }
        }
        Input::Encode(records) => {
            let mut builder = AggregateBuilder::new();
            for (key, hash_key, data) in &records {
                let predicted =
                    builder.encoded_len_with(key, hash_key.map(HashKey).as_ref(), data.len());
                builder.push(key, hash_key.map(HashKey), Bytes::from(data.clone()));
                assert_eq!(builder.encoded_len(), predicted, "size prediction");
            }
            let predicted = builder.encoded_len();
            let Some(encoded) = builder.finish() else {
                assert!(records.is_empty());
                return;
            };
            if records.len() > 1 && !records.iter().all(|(key, _, _)| valid_partition_key(key)) {
                // A key Kinesis would refuse: not a valid aggregate, handed through raw.
                let out = check(encoded.data.clone());
                assert!(!out[0].aggregated);
                return;
            }
            assert_eq!(encoded.user_records, records.len());
            if records.len() == 1 {
                // Sent alone, as the KPL does; a payload that is itself a valid aggregate
                // is then indistinguishable from one (true of every KPL-format reader).
                if is_aggregated(&encoded.data) {
                    return;
                }
            } else {
                assert_eq!(encoded.data.len(), predicted, "encoded size");
            }
            let out = deaggregate(
                &encoded.partition_key,
                encoded.explicit_hash_key.as_deref(),
                encoded.data.clone(),
            );
            assert_eq!(out.len(), records.len());
            for (user, (key, hash_key, data)) in out.iter().zip(&records) {
                assert_eq!(&*user.partition_key, key.as_str());
                assert_eq!(
                    user.explicit_hash_key.as_deref().map(str::to_owned),
                    hash_key.map(|h| h.to_string())
                );
                assert_eq!(&user.data[..], &data[..]);
            }
        }
    }
});
