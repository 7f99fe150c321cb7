#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

mod decoder;
mod encoder;
mod hash_key;
mod proto;

pub use decoder::{deaggregate, is_aggregated, UserRecord};
pub use encoder::{AggregateBuilder, EncodedRecord, AGGREGATE_PARTITION_KEY};
pub use hash_key::{HashKey, HashKeyError};

/// The four bytes every aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 digest that ends every aggregated record.
pub const DIGEST_LEN: usize = 16;

/// Most Unicode characters Kinesis accepts in a partition key. The deaggregator hands an
/// aggregate holding a longer key through whole, as one plain record.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

#[cfg(test)]
mod tests;
