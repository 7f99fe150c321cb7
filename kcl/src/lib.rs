#![forbid(unsafe_code)]
//! A consumer framework for Amazon Kinesis Data Streams, in the spirit of AWS's Kinesis
//! Client Library (KCL).

pub mod lease;
pub mod leases;

pub use kinesis_producer::aggregation::{deaggregate, UserRecord};
pub use lease::{ExtendedSequenceNumber, Lease, SequencePosition};
