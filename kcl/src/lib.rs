#![forbid(unsafe_code)]
//! A consumer framework for Amazon Kinesis Data Streams, in the spirit of AWS's Kinesis
//! Client Library (KCL).
//!
//! For now this crate re-exports the KPL aggregation format it shares with
//! `kinesis-producer`: [`deaggregate`] turns a Kinesis record into user records with
//! sub-sequence numbers.

pub use kinesis_producer::aggregation::{deaggregate, UserRecord};
