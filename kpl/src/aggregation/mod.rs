//! The KPL aggregated-record format, byte-compatible with AWS's KPL, KCL and
//! deaggregation libraries.
//!
//! Many small user records are packed into one Kinesis record so that they share the
//! per-record costs of Kinesis (1,000 records/s per shard, per-record pricing). The data
//! of an aggregated Kinesis record is:
//!
//! ```text
//! F3 89 9A C2 | AggregatedRecord (protobuf) | MD5 of the protobuf bytes (16 bytes)
//! ```
//!
//! - [`AggregateBuilder`] packs user records, tracking the encoded size as it goes so a
//!   caller can ask whether one more record fits without re-encoding.
//! - [`deaggregate`] unpacks a Kinesis record into user records; anything that is not a
//!   valid aggregate comes back as one plain record, never as an error.
//!
//! All user records in one aggregate must hash into the same shard: AWS's KCL, and
//! `kinesis-consumer`, drop a whole aggregate when any of its records lies outside the
//! hash range of the shard it landed on (a stale shard map during a reshard). The producer
//! therefore counts an aggregate whose records all lie inside the shard it landed on as
//! delivered, and sends every record of any other aggregate again: the pair loses nothing
//! and duplicates nothing, and either side still pairs with AWS's library.

mod decoder;
mod encoder;
pub mod proto;

pub use decoder::{deaggregate, is_aggregated, UserRecord};
pub use encoder::{AggregateBuilder, EncodedRecord, AGGREGATE_PARTITION_KEY};

/// The four bytes every aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 digest that ends every aggregated record.
pub const DIGEST_LEN: usize = 16;

#[cfg(test)]
mod tests;
