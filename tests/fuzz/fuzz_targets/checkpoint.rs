//! Checkpoint parsing and ordering: the lease table's `checkpoint` strings (sequence
//! numbers or sentinels) and the comparison every checkpoint write is validated with.
//!
//! Properties: no panic; a parsed position prints back as the same string; comparison of
//! sequence numbers is numeric, antisymmetric and transitive; extended sequence numbers
//! order by sequence number, then sub-sequence number.
#![no_main]

use std::cmp::Ordering;

use arbitrary::Arbitrary;
use kinesis_consumer::test_util::compare_sequence_numbers;
use kinesis_consumer::{ExtendedSequenceNumber, SequencePosition};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    a: String,
    b: String,
    c: String,
    sub_a: u64,
    sub_b: u64,
}

/// Numeric order of two digit strings, by a method independent of the one under test.
fn numeric(a: &str, b: &str) -> Ordering {
    let width = a.len().max(b.len());
    let pad = |s: &str| format!("{}{s}", "0".repeat(width - s.len()));
    pad(a).cmp(&pad(b))
}

fuzz_target!(|input: Input| {
    let positions: Vec<Option<SequencePosition>> = [&input.a, &input.b, &input.c]
        .iter()
        .map(|s| SequencePosition::parse(s))
        .collect();
    for (text, position) in [&input.a, &input.b, &input.c].iter().zip(&positions) {
        if let Some(position) = position {
            assert_eq!(position.as_str(), text.as_str(), "round trip");
        } else {
            let sentinel =
                ["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "SHARD_END"].contains(&text.as_str());
            let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
            assert!(!sentinel && !digits, "{text:?} refused");
        }
    }
    let digits: Vec<&str> = [&input.a, &input.b, &input.c]
        .iter()
        .zip(&positions)
        .filter_map(|(text, p)| match p {
            Some(SequencePosition::Sequence(_)) => Some(text.as_str()),
            _ => None,
        })
        .collect();
    for x in &digits {
        for y in &digits {
            let order = compare_sequence_numbers(x, y);
            assert_eq!(order, numeric(x, y), "{x} vs {y}");
            assert_eq!(order.reverse(), compare_sequence_numbers(y, x));
        }
    }
    if let [x, y, z] = digits[..] {
        if compare_sequence_numbers(x, y) != Ordering::Greater
            && compare_sequence_numbers(y, z) != Ordering::Greater
        {
            assert_ne!(compare_sequence_numbers(x, z), Ordering::Greater);
        }
    }
    // Any strings at all: the comparison never panics.
    let _ = compare_sequence_numbers(&input.a, &input.b);

    if let (Some(a), Some(b)) = (&positions[0], &positions[1]) {
        let a = ExtendedSequenceNumber {
            position: a.clone(),
            sub_sequence_number: input.sub_a,
        };
        let b = ExtendedSequenceNumber {
            position: b.clone(),
            sub_sequence_number: input.sub_b,
        };
        match (a.sequence_number(), b.sequence_number()) {
            (Some(x), Some(y)) => {
                let expected = numeric(x, y).then(input.sub_a.cmp(&input.sub_b));
                assert_eq!(a.compare(&b), Some(expected));
                assert_eq!(b.compare(&a), Some(expected.reverse()));
            }
            _ => assert_eq!(a.compare(&b), None, "sentinels do not order"),
        }
        let _ = a.to_string();
    }
});
