//! The three protobuf messages of the aggregation format, written by hand with
//! `prost` derives so that building needs no `protoc`. `aggregation.proto` beside this
//! file is the schema they implement.
//!
//! Proto2 `required` fields are `Option`s here: prost does not check required fields,
//! and the decoder must tell a missing field from a zero, as AWS's proto2 parsers do.
//! The encoder always sets them, so the bytes are those of the `.proto`.

use bytes::Bytes;

/// The protobuf body of an aggregated Kinesis record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedRecord {
    /// Distinct partition keys, referenced by index from the records.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Distinct explicit hash keys (decimal strings), referenced by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records, in order; a record's position is its sub-sequence number.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<Record>,
}

/// One user record inside an aggregate.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// Index into [`AggregatedRecord::partition_key_table`].
    #[prost(uint64, optional, tag = "1")]
    pub partition_key_index: Option<u64>,
    /// Index into [`AggregatedRecord::explicit_hash_key_table`], if the record has one.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The user's payload.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub data: Option<Bytes>,
    /// Free-form tags; written by some producers, ignored by consumers.
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// A key/value tag on a user record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tag {
    /// Tag name.
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// Optional tag value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}
