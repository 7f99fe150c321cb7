#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

pub mod aggregation;
mod hash_key;

pub use hash_key::{HashKey, HashKeyError};
