//! Unpacking aggregated Kinesis records into user records.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use super::proto;
use super::{DIGEST_LEN, MAGIC};

/// A user record taken out of a Kinesis record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Position in its aggregate (0 for a record that was not aggregated).
    pub sub_sequence_number: u64,
    /// The user record's partition key.
    pub partition_key: String,
    /// The user record's explicit hash key, if it had one (decimal).
    pub explicit_hash_key: Option<String>,
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
/// digest, with unparsable protobuf, with key indexes out of range or with no records is
/// returned whole as one plain record (what AWS's KCL does), so nothing is lost.
///
/// ```
/// use bytes::Bytes;
/// use kinesis_producer::aggregation::deaggregate;
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
            partition_key: partition_key.to_owned(),
            explicit_hash_key: explicit_hash_key.map(str::to_owned),
            data,
            aggregated: false,
        }],
    }
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
    let lookup = |table: &[String], index: u64| {
        usize::try_from(index)
            .ok()
            .and_then(|i| table.get(i))
            .cloned()
    };
    message
        .records
        .into_iter()
        .zip(0u64..)
        .map(|(record, sub_sequence_number)| {
            let partition_key = lookup(&message.partition_key_table, record.partition_key_index?)?;
            let explicit_hash_key = match record.explicit_hash_key_index {
                Some(index) => Some(lookup(&message.explicit_hash_key_table, index)?),
                None => None,
            };
            Some(UserRecord {
                sub_sequence_number,
                partition_key,
                explicit_hash_key,
                data: record.data?,
                aggregated: true,
            })
        })
        .collect()
}
