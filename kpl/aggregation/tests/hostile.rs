//! The KPL deaggregator on hostile input, beyond what `tests/fuzz` checks for crashes:
//! a Kinesis record is at most 1 MiB (10 MiB on large-record streams), and what it
//! unpacks into must stay proportionate, or one record put by anyone with write access
//! stops every consumer of the stream (each restart reads it again).
//!
//! Heap is counted by a counting global allocator (`cap`) in this test binary. While a
//! record is decoded the allocator refuses to go past the test's budget, so a decoder
//! that amplifies aborts this test binary instead of exhausting the machine's memory.

use std::alloc::System;
use std::io::Write;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use cap::Cap;
use kinesis_aggregation::{deaggregate, UserRecord, MAGIC};
use md5::{Digest, Md5};
use prost::Message;

/// The crate's own protobuf messages (crate-private), to write aggregates no encoder would.
#[path = "../src/proto.rs"]
#[allow(dead_code)]
mod proto;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// The tests of this binary measure the process's heap: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Most heap a decode may use per byte of input, at its peak and in what it returns.
/// A user record (`UserRecord`, 80 bytes, plus the protobuf decoder's 88-byte `Record`
/// while decoding) can take as little as 6 bytes of input: the bound is linear, but not
/// small.
const PEAK_PER_INPUT_BYTE: usize = 64;
const HELD_PER_INPUT_BYTE: usize = 16;
/// Allowance for the test harness's own allocations while a decode runs.
const SLACK: usize = 1 << 20;

/// Deaggregates `input` with the heap capped at `PEAK_PER_INPUT_BYTE` times its size
/// (above that, allocation fails and the test binary aborts); returns the user records
/// and the heap they hold.
fn deaggregate_capped(input: &Bytes) -> (Vec<UserRecord>, usize) {
    let before = ALLOCATOR.allocated();
    let budget = PEAK_PER_INPUT_BYTE * input.len() + SLACK;
    // Straight to stderr, past the harness's capture: an abort loses captured output.
    let _ = writeln!(
        std::io::stderr(),
        "deaggregating {} bytes with the heap capped at {budget} more bytes",
        input.len()
    );
    ALLOCATOR
        .set_limit(before + budget)
        .expect("limit above the heap in use");
    let out = deaggregate("a", None, input.clone());
    ALLOCATOR.set_limit(usize::MAX).expect("lifting the limit");
    let held = ALLOCATOR.allocated().saturating_sub(before);
    (out, held)
}

/// An aggregate whose one partition key is `key`, referenced by `records` user records
/// of empty data: the most user records a record of its size can carry.
fn amplifying_aggregate(key: &str, records: usize) -> Bytes {
    let message = proto::AggregatedRecord {
        partition_key_table: vec![key.to_owned()],
        explicit_hash_key_table: Vec::new(),
        records: (0..records)
            .map(|_| proto::Record {
                partition_key_index: Some(0),
                explicit_hash_key_index: None,
                data: Some(Bytes::new()),
                tags: Vec::new(),
            })
            .collect(),
    };
    let body = message.encode_to_vec();
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(&body);
    data.extend_from_slice(&Md5::digest(&body));
    Bytes::from(data)
}

/// User records that fit in a 1 MiB record with one key of `key_len` bytes: each takes
/// 6 bytes (its field tag and length, the key index, an empty data field).
fn records_in_one_mib(key_len: usize) -> usize {
    (1024 * 1024 - 4 - 16 - key_len - 4) / 6
}

#[test]
fn a_legitimate_aggregate_unpacks_proportionately() {
    let _serial = serial();
    // Keys of at most 256 characters, as Kinesis and the KPL allow, in a 1 MiB record
    // packed with as many user records as it holds.
    for key in ["k".repeat(256), "🦀".repeat(256)] {
        let input = amplifying_aggregate(&key, records_in_one_mib(key.len()));
        assert!(input.len() <= 1024 * 1024, "{}", input.len());
        let (out, held) = deaggregate_capped(&input);
        assert_eq!(out.len(), records_in_one_mib(key.len()));
        assert!(out.iter().all(|u| u.aggregated && *u.partition_key == *key));
        assert!(
            held <= HELD_PER_INPUT_BYTE * input.len(),
            "{held} bytes held from {}",
            input.len()
        );
    }
}

/// A 16 KiB partition key referenced 4,000 times: 40 KiB of record that unpacked into
/// 64 MiB of user records when each got its own copy of the key. Scaled to a 1 MiB
/// record (a 512 KiB key and 87,000 references) it was about 45 GB. A key over 256
/// characters is not one Kinesis or the KPL accepts: such a record is not a valid
/// aggregate and is handed through whole.
#[test]
fn a_crafted_aggregate_cannot_unpack_quadratically() {
    let _serial = serial();
    for (key_len, records) in [(16 * 1024, 4_000), (512 * 1024, 87_000)] {
        let input = amplifying_aggregate(&"k".repeat(key_len), records);
        let (out, held) = deaggregate_capped(&input);
        assert_eq!(out.len(), 1, "handed through as one plain record");
        assert!(!out[0].aggregated);
        assert_eq!(out[0].data, input);
        // One plain record (a few hundred bytes); the rest of the allowance is the test
        // harness's own allocations on other threads, which the global count includes
        // (measured 1,132 bytes held in one CI run). Quadratic unpacking held 64 MiB.
        assert!(held <= 16 * 1024, "{held} bytes held");
    }
}

/// Keys within the limit are shared by the user records that reference them, not
/// copied: 4,000 references to one 256-character key hold it once.
#[test]
fn user_records_share_their_keys() {
    let _serial = serial();
    let input = amplifying_aggregate(&"k".repeat(256), 4_000);
    let (out, held) = deaggregate_capped(&input);
    assert_eq!(out.len(), 4_000);
    let records = out.len() * std::mem::size_of::<UserRecord>();
    assert!(
        held <= records + 16 * 1024,
        "{held} bytes held; the records alone take {records}"
    );
}
