use bytes::Bytes;
use md5::{Digest, Md5};
use proptest::prelude::*;

use super::*;

/// An aggregate produced by AWS's Python `aws-kinesis-agg` 1.2.3 for ("pk1", "hello")
/// and ("pk2", "world", explicit hash key 12345).
const GOLDEN: &str = "f3899ac20a03706b310a03706b32120531323334351a0908001a0568656c6c6f1a0b080110001a05776f726c642d4b507cdeecd4c2e172334553fbb420";

fn golden() -> Bytes {
    Bytes::from(hex::decode(GOLDEN).expect("valid hex"))
}

#[test]
fn encodes_the_golden_bytes() {
    let mut builder = AggregateBuilder::new();
    builder.push("pk1", None, Bytes::from_static(b"hello"));
    builder.push("pk2", Some(HashKey(12345)), Bytes::from_static(b"world"));
    assert_eq!(builder.encoded_len(), golden().len());
    let encoded = builder.finish().expect("records");
    assert_eq!(hex::encode(&encoded.data), GOLDEN);
    assert_eq!(encoded.partition_key, AGGREGATE_PARTITION_KEY);
    assert_eq!(
        encoded.explicit_hash_key,
        Some(HashKey::from_partition_key("pk1").to_string())
    );
    assert_eq!(encoded.user_records, 2);
    assert!(builder.is_empty());
    assert_eq!(builder.encoded_len(), 0);
}

#[test]
fn decodes_the_golden_bytes() {
    let records = deaggregate("a", None, golden());
    assert_eq!(
        records,
        vec![
            UserRecord {
                sub_sequence_number: 0,
                partition_key: "pk1".into(),
                explicit_hash_key: None,
                data: Bytes::from_static(b"hello"),
                aggregated: true,
            },
            UserRecord {
                sub_sequence_number: 1,
                partition_key: "pk2".into(),
                explicit_hash_key: Some("12345".into()),
                data: Bytes::from_static(b"world"),
                aggregated: true,
            },
        ]
    );
}

#[test]
fn a_single_record_is_sent_raw() {
    let mut builder = AggregateBuilder::new();
    builder.push("key", Some(HashKey(7)), Bytes::from_static(b"payload"));
    let encoded = builder.finish().expect("record");
    assert_eq!(
        encoded,
        EncodedRecord {
            partition_key: "key".into(),
            explicit_hash_key: Some("7".into()),
            data: Bytes::from_static(b"payload"),
            user_records: 1,
        }
    );
    assert_eq!(builder.finish(), None);
}

#[test]
fn the_builder_is_reusable_after_finish() {
    let mut builder = AggregateBuilder::new();
    for round in 0..3 {
        builder.push("x", None, Bytes::from(format!("{round}-0")));
        builder.push("y", None, Bytes::from(format!("{round}-1")));
        let encoded = builder.finish().expect("records");
        let records = deaggregate("a", None, encoded.data);
        assert_eq!(records.len(), 2);
        assert_eq!(&*records[1].partition_key, "y");
        assert_eq!(records[1].data, Bytes::from(format!("{round}-1")));
    }
}

/// Re-seals a protobuf body with the magic and a correct digest.
fn seal(body: &[u8]) -> Bytes {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(&Md5::digest(body));
    Bytes::from(out)
}

fn assert_plain(data: Bytes) {
    let records = deaggregate("outer", Some("99"), data.clone());
    assert_eq!(
        records,
        vec![UserRecord {
            sub_sequence_number: 0,
            partition_key: "outer".into(),
            explicit_hash_key: Some("99".into()),
            data,
            aggregated: false,
        }]
    );
}

#[test]
fn a_bad_digest_is_handed_through_as_a_plain_record() {
    let mut data = golden().to_vec();
    let last = data.len() - 1;
    data[last] ^= 1;
    assert!(!is_aggregated(&data));
    assert_plain(Bytes::from(data));
}

#[test]
fn a_flipped_body_byte_is_caught_by_the_digest() {
    let mut data = golden().to_vec();
    data[10] ^= 0x40;
    assert_plain(Bytes::from(data));
}

#[test]
fn truncated_aggregates_are_plain_records() {
    let data = golden();
    for len in 0..data.len() {
        assert_plain(data.slice(..len));
    }
}

#[test]
fn unparsable_protobuf_with_a_valid_digest_is_a_plain_record() {
    assert_plain(seal(&[0xff, 0xff, 0xff]));
}

#[test]
fn out_of_range_key_indexes_are_plain_records() {
    // records { partition_key_index: 3, data: "x" } with an empty key table.
    assert_plain(seal(&[0x1a, 0x05, 0x08, 0x03, 0x1a, 0x01, b'x']));
    // explicit hash key index 1 with a one-entry table.
    let body = [
        0x0a, 0x01, b'k', 0x12, 0x01, b'1', 0x1a, 0x07, 0x08, 0x00, 0x10, 0x01, 0x1a, 0x01, b'x',
    ];
    assert_plain(seal(&body));
}

#[test]
fn an_aggregate_without_records_is_a_plain_record() {
    assert_plain(seal(&[0x0a, 0x01, b'k']));
    assert_plain(seal(&[]));
}

#[test]
fn missing_required_fields_are_plain_records() {
    // A record with only data: partition_key_index is required.
    assert_plain(seal(&[0x0a, 0x01, b'k', 0x1a, 0x03, 0x1a, 0x01, b'x']));
}

/// An aggregate of `records` user records, each with partition key `key` and, if given,
/// explicit hash key `hash_key` (tables of one entry each).
fn aggregate_with(key: &str, hash_key: Option<&str>, records: usize) -> Bytes {
    use prost::Message;
    let message = proto::AggregatedRecord {
        partition_key_table: vec![key.to_owned()],
        explicit_hash_key_table: hash_key.map(str::to_owned).into_iter().collect(),
        records: (0..records)
            .map(|i| proto::Record {
                partition_key_index: Some(0),
                explicit_hash_key_index: hash_key.map(|_| 0),
                data: Some(Bytes::from(format!("record {i}"))),
                tags: Vec::new(),
            })
            .collect(),
    };
    seal(&message.encode_to_vec())
}

#[test]
fn a_partition_key_over_256_characters_is_not_an_aggregate() {
    for ch in ["k", "é", "🦀"] {
        let records = deaggregate("a", None, aggregate_with(&ch.repeat(256), None, 3));
        assert_eq!(records.len(), 3, "256 x {ch:?} is a valid key");
        assert!(records.iter().all(|r| r.aggregated));
        assert_plain(aggregate_with(&ch.repeat(257), None, 3));
    }
}

#[test]
fn an_explicit_hash_key_that_is_not_a_decimal_u128_is_not_an_aggregate() {
    for bad in [
        "",
        "abc",
        "-1",
        "+1",
        "1.5",
        " 1",
        "0x10",
        "340282366920938463463374607431768211456",
    ] {
        assert_plain(aggregate_with("k", Some(bad), 2));
    }
    for good in ["0", "007", "340282366920938463463374607431768211455"] {
        let records = deaggregate("a", None, aggregate_with("k", Some(good), 2));
        assert!(records[0].aggregated, "{good:?}");
        assert_eq!(records[1].explicit_hash_key.as_deref(), Some(good));
    }
}

#[test]
fn user_records_share_their_aggregates_keys() {
    let records = deaggregate("a", None, aggregate_with("shared", Some("12345"), 100));
    assert_eq!(records.len(), 100);
    for record in &records {
        assert!(std::sync::Arc::ptr_eq(
            &record.partition_key,
            &records[0].partition_key
        ));
        let (Some(key), Some(first)) = (&record.explicit_hash_key, &records[0].explicit_hash_key)
        else {
            panic!("explicit hash keys expected");
        };
        assert!(std::sync::Arc::ptr_eq(key, first));
    }
}

#[derive(Clone, Debug)]
struct Input {
    partition_key: String,
    explicit_hash_key: Option<HashKey>,
    data: Vec<u8>,
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop_oneof!["[a-c]{1,3}", "\\PC{1,20}"],
        proptest::option::weighted(0.3, any::<u128>().prop_map(HashKey)),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(partition_key, explicit_hash_key, data)| Input {
            partition_key,
            explicit_hash_key,
            data,
        })
}

proptest! {
    #[test]
    fn round_trips(inputs in proptest::collection::vec(input(), 2..40)) {
        let mut builder = AggregateBuilder::new();
        for input in &inputs {
            builder.push(&input.partition_key, input.explicit_hash_key, Bytes::from(input.data.clone()));
        }
        let encoded = builder.finish().expect("records");
        prop_assert_eq!(encoded.user_records, inputs.len());
        let first = &inputs[0];
        let first_hash = first
            .explicit_hash_key
            .unwrap_or_else(|| HashKey::from_partition_key(&first.partition_key));
        prop_assert_eq!(encoded.explicit_hash_key, Some(first_hash.to_string()));

        let records = deaggregate(&encoded.partition_key, None, encoded.data);
        prop_assert_eq!(records.len(), inputs.len());
        for (i, (input, record)) in inputs.iter().zip(&records).enumerate() {
            prop_assert_eq!(record.sub_sequence_number, i as u64);
            prop_assert_eq!(&*record.partition_key, input.partition_key.as_str());
            prop_assert_eq!(record.explicit_hash_key.as_deref().map(str::to_owned), input.explicit_hash_key.map(|k| k.to_string()));
            prop_assert_eq!(&record.data[..], &input.data[..]);
            prop_assert!(record.aggregated);
        }
    }

    #[test]
    fn size_accounting_matches_the_encoding(inputs in proptest::collection::vec(input(), 2..40)) {
        let mut builder = AggregateBuilder::new();
        for input in &inputs {
            let predicted = builder.encoded_len_with(
                &input.partition_key,
                input.explicit_hash_key.as_ref(),
                input.data.len(),
            );
            builder.push(&input.partition_key, input.explicit_hash_key, Bytes::from(input.data.clone()));
            prop_assert_eq!(builder.encoded_len(), predicted);
            prop_assert!(builder.fits("", None, 0, usize::MAX));
        }
        let len = builder.encoded_len();
        let encoded = builder.finish().expect("records");
        prop_assert_eq!(encoded.data.len(), len);
    }

    #[test]
    fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200), sealed in any::<bool>()) {
        let data = if sealed { seal(&body) } else { Bytes::from(body) };
        let records = deaggregate("k", None, data.clone());
        prop_assert!(!records.is_empty());
        if !records[0].aggregated {
            prop_assert_eq!(records.len(), 1);
            prop_assert_eq!(&records[0].data, &data);
        }
    }
}
