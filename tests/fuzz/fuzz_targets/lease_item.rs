//! The lease item parser on hostile DynamoDB items: attributes of the wrong type, numbers
//! that are not numbers, sentinels and sequence numbers mixed, unknown attributes from a
//! future KCL version.
//!
//! Properties: no panic; an item that parses writes back to an item that parses to the
//! same lease; unknown attributes never make a valid item fail.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_consumer::test_util::{attributes, lease_from_item, lease_to_item};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    attributes::LEASE_KEY,
    attributes::LEASE_OWNER,
    attributes::LEASE_COUNTER,
    attributes::CHECKPOINT,
    attributes::CHECKPOINT_SUB_SEQUENCE_NUMBER,
    attributes::PENDING_CHECKPOINT,
    attributes::PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER,
    attributes::PENDING_CHECKPOINT_STATE,
    attributes::OWNER_SWITCHES_SINCE_CHECKPOINT,
    attributes::PARENT_SHARD_ID,
    attributes::CHILD_SHARD_IDS,
    attributes::STARTING_HASH_KEY,
    attributes::ENDING_HASH_KEY,
    // KCL 3 additions: unknown to this library, must be tolerated.
    "throughputKBps",
    "checkpointOwner",
    "leaseOwnerToLeaseKeyIndex",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Value {
    S(String),
    /// A string the checkpoint parser accepts.
    Position(u8, u128),
    N(String),
    Count(u64),
    B(Vec<u8>),
    Ss(Vec<String>),
    Ns(Vec<String>),
    Bs(Vec<Vec<u8>>),
    Bool(bool),
    Null(bool),
    L(Vec<Value>),
    M(Vec<(String, Value)>),
}

impl Value {
    fn attribute(&self) -> AttributeValue {
        match self {
            Value::S(s) => AttributeValue::S(s.clone()),
            Value::Position(kind, n) => AttributeValue::S(match kind % 5 {
                0 => "TRIM_HORIZON".into(),
                1 => "LATEST".into(),
                2 => "AT_TIMESTAMP".into(),
                3 => "SHARD_END".into(),
                _ => n.to_string(),
            }),
            Value::N(s) => AttributeValue::N(s.clone()),
            Value::Count(n) => AttributeValue::N(n.to_string()),
            Value::B(b) => AttributeValue::B(Blob::new(b.clone())),
            Value::Ss(v) => AttributeValue::Ss(v.clone()),
            Value::Ns(v) => AttributeValue::Ns(v.clone()),
            Value::Bs(v) => AttributeValue::Bs(v.iter().cloned().map(Blob::new).collect()),
            Value::Bool(b) => AttributeValue::Bool(*b),
            Value::Null(b) => AttributeValue::Null(*b),
            Value::L(v) => AttributeValue::L(v.iter().map(Value::attribute).collect()),
            Value::M(v) => {
                AttributeValue::M(v.iter().map(|(k, v)| (k.clone(), v.attribute())).collect())
            }
        }
    }
}

fuzz_target!(|attributes: Vec<(Name, Value)>| {
    let item: HashMap<String, AttributeValue> = attributes
        .iter()
        .map(|(name, value)| {
            let name = match name {
                Name::Known(i) => NAMES[*i as usize % NAMES.len()].to_owned(),
                Name::Other(s) => s.clone(),
            };
            (name, value.attribute())
        })
        .collect();
    let Ok(lease) = lease_from_item(&item) else {
        return;
    };
    let written = lease_to_item(&lease);
    let reread = lease_from_item(&written).expect("a written lease parses");
    assert_eq!(reread, lease, "round trip");

    // Attributes this library does not know change nothing.
    let mut extended = item.clone();
    extended.insert("futureAttribute".into(), AttributeValue::Bool(true));
    extended.insert(
        "futureMap".into(),
        AttributeValue::M(HashMap::from([("x".into(), AttributeValue::N("1".into()))])),
    );
    assert_eq!(lease_from_item(&extended).ok(), Some(lease));
});
