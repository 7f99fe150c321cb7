//! Packing user records into one aggregated Kinesis record.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

use crate::{HashKey, DIGEST_LEN, MAGIC};

/// Partition key of every aggregated Kinesis record. The aggregate's explicit hash key,
/// not this key, decides its shard; one byte keeps the per-record overhead minimal.
pub const AGGREGATE_PARTITION_KEY: &str = "a";

/// Length of a length-delimited protobuf field with a one-byte tag.
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Length of a varint protobuf field with a one-byte tag.
fn varint_field_len(value: u64) -> usize {
    1 + encoded_len_varint(value)
}

/// A Kinesis record ready for PutRecords: either one user record sent as is, or an
/// aggregate of several.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncodedRecord {
    /// Partition key to send.
    pub partition_key: String,
    /// Explicit hash key to send, in decimal.
    pub explicit_hash_key: Option<String>,
    /// Record data to send.
    pub data: Bytes,
    /// How many user records this Kinesis record carries.
    pub user_records: usize,
}

impl EncodedRecord {
    /// A Kinesis record carrying `user_records` user records (1 for a record sent as is).
    pub fn new(
        partition_key: impl Into<String>,
        explicit_hash_key: Option<String>,
        data: Bytes,
        user_records: usize,
    ) -> Self {
        EncodedRecord {
            partition_key: partition_key.into(),
            explicit_hash_key,
            data,
            user_records,
        }
    }
}

/// A table of distinct strings referenced by index (the partition key and explicit hash
/// key tables of an aggregate).
#[derive(Debug, Default)]
struct KeyTable {
    keys: Vec<String>,
    index: HashMap<String, u64>,
}

impl KeyTable {
    /// Index of `key` and the bytes adding it would add to the encoding (0 if present).
    fn lookup(&self, key: &str) -> (u64, usize) {
        match self.index.get(key) {
            Some(&i) => (i, 0),
            None => (self.keys.len() as u64, delimited_len(key.len())),
        }
    }

    /// Index of `key`, added if new, and the bytes it added to the encoding.
    fn insert(&mut self, key: &str) -> (u64, usize) {
        if let Some(&i) = self.index.get(key) {
            return (i, 0);
        }
        let i = self.keys.len() as u64;
        self.keys.push(key.to_owned());
        self.index.insert(key.to_owned(), i);
        (i, delimited_len(key.len()))
    }

    fn take(&mut self) -> Vec<String> {
        self.index.clear();
        std::mem::take(&mut self.keys)
    }
}

/// A user record inside a builder, before encoding.
#[derive(Debug)]
struct Entry {
    partition_key_index: u64,
    explicit_hash_key_index: Option<u64>,
    data: Bytes,
}

impl Entry {
    /// Length of its `Record` message.
    fn message_len(&self) -> usize {
        varint_field_len(self.partition_key_index)
            + self.explicit_hash_key_index.map_or(0, varint_field_len)
            + delimited_len(self.data.len())
    }
}

/// Builds one aggregated record, keeping its encoded size up to date with every push.
///
/// ```
/// use bytes::Bytes;
/// use kinesis_aggregation::{deaggregate, AggregateBuilder};
///
/// let mut builder = AggregateBuilder::new();
/// builder.push("user-1", None, Bytes::from_static(b"hello"));
/// assert!(builder.fits("user-2", None, 5, 1024));
/// builder.push("user-2", None, Bytes::from_static(b"world"));
/// let encoded = builder.finish().expect("two records");
/// assert_eq!(encoded.user_records, 2);
///
/// let records = deaggregate(&encoded.partition_key, None, encoded.data);
/// assert_eq!(&*records[1].partition_key, "user-2");
/// assert_eq!(records[1].sub_sequence_number, 1);
/// ```
#[derive(Debug, Default)]
pub struct AggregateBuilder {
    partition_keys: KeyTable,
    explicit_hash_keys: KeyTable,
    records: Vec<Entry>,
    /// Encoded length of the protobuf message so far.
    message_len: usize,
    /// Hash key of the first record: where the aggregate is routed.
    first_hash_key: Option<HashKey>,
}

impl AggregateBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of user records pushed since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no user record is pending.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Length of the aggregated record's data if it were finished now (magic, protobuf
    /// and digest), or 0 when empty.
    pub fn encoded_len(&self) -> usize {
        if self.records.is_empty() {
            0
        } else {
            MAGIC.len() + self.message_len + DIGEST_LEN
        }
    }

    /// Length of the aggregated record's data if this user record were pushed too.
    pub fn encoded_len_with(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&HashKey>,
        data_len: usize,
    ) -> usize {
        let (_, added) = self.added_len(partition_key, explicit_hash_key, data_len);
        MAGIC.len() + self.message_len + added + DIGEST_LEN
    }

    /// Whether the aggregate stays within `limit` bytes of data with this user record.
    pub fn fits(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&HashKey>,
        data_len: usize,
        limit: usize,
    ) -> bool {
        self.encoded_len_with(partition_key, explicit_hash_key, data_len) <= limit
    }

    /// The record message length and the total bytes it adds to the message.
    fn added_len(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&HashKey>,
        data_len: usize,
    ) -> (usize, usize) {
        let (pk_index, pk_added) = self.partition_keys.lookup(partition_key);
        let (ehk_index, ehk_added) = match explicit_hash_key {
            Some(key) => {
                let (i, added) = self.explicit_hash_keys.lookup(&key.to_string());
                (Some(i), added)
            }
            None => (None, 0),
        };
        let record_len = varint_field_len(pk_index)
            + ehk_index.map_or(0, varint_field_len)
            + delimited_len(data_len);
        (record_len, pk_added + ehk_added + delimited_len(record_len))
    }

    /// Appends a user record. Its sub-sequence number is its position in the aggregate.
    pub fn push(&mut self, partition_key: &str, explicit_hash_key: Option<HashKey>, data: Bytes) {
        if self.first_hash_key.is_none() {
            self.first_hash_key = Some(
                explicit_hash_key.unwrap_or_else(|| HashKey::from_partition_key(partition_key)),
            );
        }
        let (partition_key_index, pk_added) = self.partition_keys.insert(partition_key);
        let (explicit_hash_key_index, ehk_added) = match explicit_hash_key {
            Some(key) => {
                let (i, added) = self.explicit_hash_keys.insert(&key.to_string());
                (Some(i), added)
            }
            None => (None, 0),
        };
        let entry = Entry {
            partition_key_index,
            explicit_hash_key_index,
            data,
        };
        self.message_len += pk_added + ehk_added + delimited_len(entry.message_len());
        self.records.push(entry);
    }

    /// Takes the pending user records as one Kinesis record and leaves the builder empty.
    ///
    /// A single user record is returned as it was given (no aggregation overhead, as
    /// AWS's KPL does). Several are encoded as an aggregate with partition key
    /// [`AGGREGATE_PARTITION_KEY`] and, as explicit hash key, the hash key of the first
    /// user record, so the aggregate lands on that record's shard.
    pub fn finish(&mut self) -> Option<EncodedRecord> {
        let first_hash_key = self.first_hash_key.take()?;
        let message_len = std::mem::take(&mut self.message_len);
        let partition_keys = self.partition_keys.take();
        let explicit_hash_keys = self.explicit_hash_keys.take();
        let mut records = std::mem::take(&mut self.records);

        if records.len() == 1 {
            let record = records.pop()?;
            let explicit_hash_key = record
                .explicit_hash_key_index
                .and_then(|i| explicit_hash_keys.into_iter().nth(i as usize));
            return Some(EncodedRecord {
                partition_key: partition_keys.into_iter().next()?,
                explicit_hash_key,
                data: record.data,
                user_records: 1,
            });
        }

        let user_records = records.len();
        let mut data = BytesMut::with_capacity(MAGIC.len() + message_len + DIGEST_LEN);
        data.put_slice(&MAGIC);
        for key in &partition_keys {
            prost::encoding::string::encode(1, key, &mut data);
        }
        for key in &explicit_hash_keys {
            prost::encoding::string::encode(2, key, &mut data);
        }
        for record in &records {
            encode_key(3, WireType::LengthDelimited, &mut data);
            encode_varint(record.message_len() as u64, &mut data);
            prost::encoding::uint64::encode(1, &record.partition_key_index, &mut data);
            if let Some(index) = &record.explicit_hash_key_index {
                prost::encoding::uint64::encode(2, index, &mut data);
            }
            encode_key(3, WireType::LengthDelimited, &mut data);
            encode_varint(record.data.len() as u64, &mut data);
            data.put_slice(&record.data);
        }
        debug_assert_eq!(data.len(), MAGIC.len() + message_len);
        let digest = Md5::digest(&data[MAGIC.len()..]);
        data.put_slice(&digest);
        Some(EncodedRecord {
            partition_key: AGGREGATE_PARTITION_KEY.to_owned(),
            explicit_hash_key: Some(first_hash_key.to_string()),
            data: data.freeze(),
            user_records,
        })
    }
}
