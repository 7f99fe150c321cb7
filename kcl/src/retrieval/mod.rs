//! Getting records from Kinesis.

pub mod polling;

pub use polling::{PollingConfig, PollingFetcher, RecordBatch, StartingPosition};
