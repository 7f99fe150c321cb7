//! User records: what goes into the producer, validated at the door.

use bytes::Bytes;

use crate::{HashKey, HashKeyError, MAX_PARTITION_KEY_CHARS};

/// Default limit of a record's data plus partition key, in bytes: 1 MiB, Kinesis's limit.
pub const DEFAULT_MAX_RECORD_SIZE: usize = 1024 * 1024;

/// Highest configurable record size: 10 MiB, the limit of large-record streams.
pub const MAX_RECORD_SIZE_LIMIT: usize = 10 * 1024 * 1024;

/// A user record to put into a stream.
///
/// ```
/// use kinesis_producer::Record;
///
/// let record = Record::new("user-42", "hello")
///     .with_explicit_hash_key("170141183460469231731687303715884105728")?;
/// assert_eq!(record.partition_key(), "user-42");
/// # Ok::<(), kinesis_producer::InvalidRecord>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    partition_key: String,
    data: Bytes,
    explicit_hash_key: Option<HashKey>,
}

impl Record {
    /// A record with a partition key (which picks the shard through its MD5 hash) and data.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Record {
            partition_key: partition_key.into(),
            data: data.into(),
            explicit_hash_key: None,
        }
    }

    /// Routes the record by this explicit hash key, a decimal integer in `0..=2^128-1`,
    /// instead of its partition key's hash.
    pub fn with_explicit_hash_key(
        mut self,
        explicit_hash_key: &str,
    ) -> Result<Self, InvalidRecord> {
        self.explicit_hash_key = Some(explicit_hash_key.parse()?);
        Ok(self)
    }

    /// Routes the record by this hash key instead of its partition key's hash.
    pub fn with_hash_key(mut self, hash_key: HashKey) -> Self {
        self.explicit_hash_key = Some(hash_key);
        self
    }

    /// The partition key.
    pub fn partition_key(&self) -> &str {
        &self.partition_key
    }

    /// The data.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The explicit hash key, if any.
    pub fn explicit_hash_key(&self) -> Option<HashKey> {
        self.explicit_hash_key
    }

    /// The hash key that places the record on a shard.
    pub fn hash_key(&self) -> HashKey {
        self.explicit_hash_key
            .unwrap_or_else(|| HashKey::from_partition_key(&self.partition_key))
    }

    /// Bytes the record counts for against Kinesis's limits: data plus partition key.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// Checks the record against Kinesis's rules, with `max_size` as the limit of data
    /// plus partition key.
    pub fn validate(&self, max_size: usize) -> Result<(), InvalidRecord> {
        if self.partition_key.is_empty() {
            return Err(InvalidRecord::EmptyPartitionKey);
        }
        // A character takes at least one byte: a key of at most 256 bytes needs no count.
        if self.partition_key.len() > MAX_PARTITION_KEY_CHARS {
            let chars = self.partition_key.chars().count();
            if chars > MAX_PARTITION_KEY_CHARS {
                return Err(InvalidRecord::PartitionKeyTooLong { chars });
            }
        }
        if self.size() > max_size {
            return Err(InvalidRecord::TooLarge {
                size: self.size(),
                limit: max_size,
            });
        }
        Ok(())
    }

    pub(crate) fn into_parts(self) -> (String, Bytes, Option<HashKey>) {
        (self.partition_key, self.data, self.explicit_hash_key)
    }
}

/// Why a record was refused before it entered the producer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRecord {
    /// The partition key is empty.
    #[error("partition key is empty")]
    EmptyPartitionKey,
    /// The partition key has more than 256 Unicode characters.
    #[error("partition key has {chars} characters, more than the 256 Kinesis accepts")]
    PartitionKeyTooLong {
        /// Characters in the key.
        chars: usize,
    },
    /// Data plus partition key exceed the record size limit.
    #[error("record is {size} bytes (data + partition key), more than the limit of {limit}")]
    TooLarge {
        /// Data plus partition key, in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The explicit hash key is not a decimal integer in `0..=2^128-1`.
    #[error(transparent)]
    ExplicitHashKey(#[from] HashKeyError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_limits_exactly() {
        let key = "k".repeat(MAX_PARTITION_KEY_CHARS);
        let data = vec![0u8; DEFAULT_MAX_RECORD_SIZE - key.len()];
        assert_eq!(
            Record::new(key, data).validate(DEFAULT_MAX_RECORD_SIZE),
            Ok(())
        );
    }

    #[test]
    fn counts_partition_key_in_characters_not_bytes() {
        let key = "é".repeat(MAX_PARTITION_KEY_CHARS);
        assert_eq!(
            Record::new(key, "x").validate(DEFAULT_MAX_RECORD_SIZE),
            Ok(())
        );
        let key = "é".repeat(MAX_PARTITION_KEY_CHARS + 1);
        assert_eq!(
            Record::new(key, "x").validate(DEFAULT_MAX_RECORD_SIZE),
            Err(InvalidRecord::PartitionKeyTooLong { chars: 257 })
        );
    }

    #[test]
    fn refuses_empty_key_and_oversized_data() {
        assert_eq!(
            Record::new("", "x").validate(DEFAULT_MAX_RECORD_SIZE),
            Err(InvalidRecord::EmptyPartitionKey)
        );
        let data = vec![0u8; DEFAULT_MAX_RECORD_SIZE];
        assert_eq!(
            Record::new("k", data).validate(DEFAULT_MAX_RECORD_SIZE),
            Err(InvalidRecord::TooLarge {
                size: DEFAULT_MAX_RECORD_SIZE + 1,
                limit: DEFAULT_MAX_RECORD_SIZE
            })
        );
    }

    #[test]
    fn refuses_bad_explicit_hash_keys() {
        for bad in [
            "",
            "-1",
            "12a",
            "007",
            "340282366920938463463374607431768211456",
        ] {
            assert!(
                matches!(
                    Record::new("k", "x").with_explicit_hash_key(bad),
                    Err(InvalidRecord::ExplicitHashKey(_))
                ),
                "{bad:?} accepted"
            );
        }
        let record = Record::new("k", "x")
            .with_explicit_hash_key("340282366920938463463374607431768211455")
            .expect("max hash key");
        assert_eq!(record.hash_key(), HashKey::MAX);
    }
}
