//! Explicit hash key parsing: Kinesis's rule `0|[1-9][0-9]{0,38}`, at most 2^128 - 1.
//!
//! Properties: no panic; a parsed key prints back as the same string and equals the
//! integer; each rejection is the typed error its rule names; `Record` agrees.
#![no_main]

use kinesis_producer::{HashKey, HashKeyError, InvalidRecord, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let parsed = text.parse::<HashKey>();
    match &parsed {
        Ok(key) => {
            assert_eq!(key.to_string(), text, "canonical decimal");
            assert_eq!(text.parse::<u128>().ok(), Some(key.0));
        }
        Err(HashKeyError::Empty) => assert!(text.is_empty()),
        Err(HashKeyError::NotDecimal(s)) => {
            assert_eq!(s, &text);
            assert!(!text.bytes().all(|b| b.is_ascii_digit()));
        }
        Err(HashKeyError::LeadingZero(s)) => {
            assert_eq!(s, &text);
            assert!(text.len() > 1 && text.starts_with('0'));
        }
        Err(HashKeyError::OutOfRange(s)) => {
            assert_eq!(s, &text);
            assert!(text.bytes().all(|b| b.is_ascii_digit()) && text.len() >= 39);
        }
    }
    match Record::new("k", "v").with_explicit_hash_key(&text) {
        Ok(record) => assert_eq!(Ok(record.hash_key()), parsed),
        Err(InvalidRecord::ExplicitHashKey(e)) => assert_eq!(Err(e), parsed),
        Err(other) => panic!("unexpected error {other:?}"),
    }
});
