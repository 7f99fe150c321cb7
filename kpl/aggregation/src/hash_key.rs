//! 128-bit hash keys: how Kinesis maps a record to a shard.
//!
//! A record's hash key is the MD5 digest of its partition key read as a big-endian
//! `u128`, unless the record carries an explicit hash key, a decimal integer in
//! `0..=2^128-1`. Each shard owns a contiguous range of hash keys.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

/// A position in the 128-bit hash key space of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashKey(pub u128);

impl HashKey {
    /// The lowest hash key.
    pub const MIN: HashKey = HashKey(0);
    /// The highest hash key.
    pub const MAX: HashKey = HashKey(u128::MAX);

    /// The hash key Kinesis derives from a partition key: MD5, big-endian.
    ///
    /// ```
    /// use kinesis_aggregation::HashKey;
    /// let key = HashKey::from_partition_key("a");
    /// assert_eq!(key.to_string(), "16955237001963240173058271559858726497");
    /// ```
    pub fn from_partition_key(partition_key: &str) -> Self {
        let digest: [u8; 16] = Md5::digest(partition_key.as_bytes()).into();
        HashKey(u128::from_be_bytes(digest))
    }
}

/// Why a string is not a valid explicit hash key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashKeyError {
    /// The string is empty.
    #[error("explicit hash key is empty")]
    Empty,
    /// The string has a character that is not an ASCII digit.
    #[error("explicit hash key {0:?} is not a decimal integer")]
    NotDecimal(String),
    /// The string has a leading zero (Kinesis accepts `0` but not `007`).
    #[error("explicit hash key {0:?} has a leading zero")]
    LeadingZero(String),
    /// The value is above `2^128 - 1`.
    #[error("explicit hash key {0:?} is larger than 2^128 - 1")]
    OutOfRange(String),
}

impl FromStr for HashKey {
    type Err = HashKeyError;

    /// Parses an explicit hash key with the rules Kinesis applies: `0|[1-9][0-9]{0,38}`,
    /// at most `2^128 - 1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(HashKeyError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HashKeyError::NotDecimal(s.to_owned()));
        }
        if s.len() > 1 && s.starts_with('0') {
            return Err(HashKeyError::LeadingZero(s.to_owned()));
        }
        s.parse::<u128>()
            .map(HashKey)
            .map_err(|_| HashKeyError::OutOfRange(s.to_owned()))
    }
}

impl fmt::Display for HashKey {
    /// Decimal, as Kinesis writes hash keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_hash_is_md5_big_endian() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(
            HashKey::from_partition_key(""),
            HashKey(0xd41d8cd98f00b204e9800998ecf8427e)
        );
    }

    #[test]
    fn parses_valid_explicit_hash_keys() {
        assert_eq!("0".parse(), Ok(HashKey(0)));
        assert_eq!("12345".parse(), Ok(HashKey(12345)));
        assert_eq!(
            "340282366920938463463374607431768211455".parse(),
            Ok(HashKey::MAX)
        );
    }

    #[test]
    fn rejects_invalid_explicit_hash_keys() {
        assert_eq!("".parse::<HashKey>(), Err(HashKeyError::Empty));
        for bad in ["-1", "+1", "1.0", " 1", "0x10", "abc", "١٢"] {
            assert!(
                matches!(bad.parse::<HashKey>(), Err(HashKeyError::NotDecimal(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "007".parse::<HashKey>(),
            Err(HashKeyError::LeadingZero(_))
        ));
        assert!(matches!(
            "340282366920938463463374607431768211456".parse::<HashKey>(),
            Err(HashKeyError::OutOfRange(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for v in [0u128, 1, 12345, u128::MAX] {
            assert_eq!(HashKey(v).to_string().parse(), Ok(HashKey(v)));
        }
    }
}
