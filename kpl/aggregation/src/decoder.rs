//! Unpacking aggregated Kinesis records into user records.

use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use crate::{proto, DIGEST_LEN, MAGIC, MAX_PARTITION_KEY_CHARS};

/// A user record taken out of a Kinesis record.
///
/// The user records of one aggregate share its key tables: records with the same
/// partition key (or explicit hash key) hold the same string, so what an aggregate
/// unpacks into grows with its size, not with its size times its key lengths.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserRecord {
    /// Position in its aggregate (0 for a record that was not aggregated).
    pub sub_sequence_number: u64,
    /// The user record's partition key (shared with the other user records of its
    /// aggregate that have the same key).
    pub partition_key: Arc<str>,
    /// The user record's explicit hash key, if it had one (decimal; shared as the
    /// partition key is).
    pub explicit_hash_key: Option<Arc<str>>,
    /// The user's payload.
    pub data: Bytes,
    /// Whether it came out of an aggregate.
    pub aggregated: bool,
}

/// Whether `data` is a well-formed aggregate: magic, room for a digest, and a digest
/// that matches.
pub fn is_aggregated(data: &[u8]) -> bool {
    message_bytes(data).is_some()
}

/// The protobuf bytes of an aggregate whose magic and digest check out.
fn message_bytes(data: &[u8]) -> Option<std::ops::Range<usize>> {
    if data.len() < MAGIC.len() + DIGEST_LEN || !data.starts_with(&MAGIC) {
        return None;
    }
    let body = MAGIC.len()..data.len() - DIGEST_LEN;
    let digest: [u8; DIGEST_LEN] = Md5::digest(&data[body.clone()]).into();
    (digest[..] == data[body.end..]).then_some(body)
}

/// Unpacks one Kinesis record into its user records.
///
/// `partition_key` and `explicit_hash_key` are the Kinesis record's own; they are used
/// when the data is not an aggregate. Never fails: data without the magic, with a bad
/// digest, with unparsable protobuf, with key indexes out of range, with no records,
/// with a partition key of more than 256 Unicode characters or with an explicit hash
/// key that is not a decimal integer below 2^128 is returned whole as one plain record
/// (what AWS's KCL does with a corrupt aggregate), so nothing is lost.
///
/// ```
/// use bytes::Bytes;
/// use kinesis_aggregation::deaggregate;
///
/// let plain = deaggregate("key", None, Bytes::from_static(b"not an aggregate"));
/// assert_eq!(plain.len(), 1);
/// assert!(!plain[0].aggregated);
/// ```
pub fn deaggregate(
    partition_key: &str,
    explicit_hash_key: Option<&str>,
    data: Bytes,
) -> Vec<UserRecord> {
    match decode(&data) {
        Some(records) => records,
        None => vec![UserRecord {
            sub_sequence_number: 0,
            partition_key: Arc::from(partition_key),
            explicit_hash_key: explicit_hash_key.map(Arc::from),
            data,
            aggregated: false,
        }],
    }
}

/// Whether an aggregate's partition key is one Kinesis would take (at most 256
/// characters; AWS's KPL refuses longer ones before aggregating).
fn valid_partition_key(key: &str) -> bool {
    // Four bytes per character at most: short keys need no count.
    key.len() <= MAX_PARTITION_KEY_CHARS || key.chars().count() <= MAX_PARTITION_KEY_CHARS
}

/// Whether an aggregate's explicit hash key is a decimal integer in `0..=2^128-1`
/// (leading zeros tolerated: some producers may write them, and the value is clear).
fn valid_explicit_hash_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) && key.parse::<u128>().is_ok()
}

/// The key table of an aggregate as shared strings, if every key passes `valid`.
fn key_table(keys: Vec<String>, valid: fn(&str) -> bool) -> Option<Vec<Arc<str>>> {
    keys.into_iter()
        .map(|key| valid(&key).then(|| Arc::from(key)))
        .collect()
}

fn decode(data: &Bytes) -> Option<Vec<UserRecord>> {
    let body = message_bytes(data)?;
    let message = proto::AggregatedRecord::decode(data.slice(body)).ok()?;
    if message.records.is_empty()
        || message
            .records
            .iter()
            .flat_map(|r| &r.tags)
            .any(|t| t.key.is_none())
    {
        return None;
    }
    let partition_keys = key_table(message.partition_key_table, valid_partition_key)?;
    let explicit_hash_keys = key_table(message.explicit_hash_key_table, valid_explicit_hash_key)?;
    let lookup = |table: &[Arc<str>], index: u64| {
        usize::try_from(index)
            .ok()
            .and_then(|i| table.get(i))
            .cloned()
    };
    let mut out = Vec::with_capacity(message.records.len());
    for (record, sub_sequence_number) in message.records.into_iter().zip(0u64..) {
        let partition_key = lookup(&partition_keys, record.partition_key_index?)?;
        let explicit_hash_key = match record.explicit_hash_key_index {
            Some(index) => Some(lookup(&explicit_hash_keys, index)?),
            None => None,
        };
        out.push(UserRecord {
            sub_sequence_number,
            partition_key,
            explicit_hash_key,
            data: record.data?,
            aggregated: true,
        });
    }
    Some(out)
}
