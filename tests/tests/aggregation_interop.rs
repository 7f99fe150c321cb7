//! Our aggregation format against AWS's Python `aws-kinesis-agg`, both ways, on random
//! inputs: Python deaggregates what we aggregate, and we deaggregate what Python
//! aggregates.

use base64_simd::STANDARD as BASE64;
use bytes::Bytes;
use integration_tests::python::run_interop_script;
use integration_tests::TestResult;
use kinesis_producer::aggregation::{deaggregate, AggregateBuilder};
use kinesis_producer::HashKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Input {
    partition_key: String,
    explicit_hash_key: Option<String>,
    /// base64
    data: String,
}

#[derive(Debug, Deserialize)]
struct PythonUserRecord {
    partition_key: String,
    explicit_hash_key: Option<String>,
    sub_sequence_number: u64,
    aggregated: bool,
    data: String,
}

const KEY_CHARS: &[char] = &['a', 'b', 'z', '0', '9', '-', '_', ' ', 'é', '日', '🦀', 'ß'];

fn random_sets(rng: &mut StdRng, sets: usize) -> Vec<Vec<Input>> {
    (0..sets)
        .map(|_| {
            let records = if rng.random_bool(0.1) {
                1
            } else {
                rng.random_range(2..12)
            };
            // Few distinct keys so the key tables are shared.
            let keys: Vec<String> = (0..rng.random_range(1..5))
                .map(|_| {
                    (0..rng.random_range(1..20))
                        .map(|_| KEY_CHARS[rng.random_range(0..KEY_CHARS.len())])
                        .collect()
                })
                .collect();
            (0..records)
                .map(|_| {
                    let data: Vec<u8> = (0..rng.random_range(0..200))
                        .map(|_| rng.random())
                        .collect();
                    Input {
                        partition_key: keys[rng.random_range(0..keys.len())].clone(),
                        explicit_hash_key: rng
                            .random_bool(0.3)
                            .then(|| rng.random::<u128>().to_string()),
                        data: BASE64.encode_to_string(data),
                    }
                })
                .collect()
        })
        .collect()
}

fn seeded_rng() -> StdRng {
    let seed = rand::rng().random::<u64>();
    println!("seed {seed}");
    StdRng::seed_from_u64(seed)
}

#[test]
fn python_deaggregates_our_aggregates() -> TestResult {
    let sets = random_sets(&mut seeded_rng(), 200);
    let mut kinesis_records = Vec::new();
    for set in &sets {
        let mut builder = AggregateBuilder::new();
        for input in set {
            let ehk = input
                .explicit_hash_key
                .as_deref()
                .map(str::parse::<HashKey>)
                .transpose()?;
            builder.push(
                &input.partition_key,
                ehk,
                Bytes::from(BASE64.decode_to_vec(&input.data)?),
            );
        }
        let encoded = builder.finish().ok_or("empty set")?;
        kinesis_records.push(Input {
            partition_key: encoded.partition_key,
            explicit_hash_key: encoded.explicit_hash_key,
            data: BASE64.encode_to_string(&encoded.data),
        });
    }

    let output = run_interop_script("decode", &serde_json::to_vec(&kinesis_records)?)?;
    let decoded: Vec<Vec<PythonUserRecord>> = serde_json::from_slice(&output)?;

    assert_eq!(decoded.len(), sets.len());
    for (set, users) in sets.iter().zip(&decoded) {
        assert_eq!(users.len(), set.len());
        for (i, (input, user)) in set.iter().zip(users).enumerate() {
            assert_eq!(user.partition_key, input.partition_key);
            assert_eq!(user.data, input.data);
            if set.len() > 1 {
                assert!(user.aggregated, "Python did not recognise our aggregate");
                assert_eq!(user.sub_sequence_number, i as u64);
                // aws-kinesis-agg reports table entry 0 for records without an explicit
                // hash key, so only records that have one are compared.
                if input.explicit_hash_key.is_some() {
                    assert_eq!(user.explicit_hash_key, input.explicit_hash_key);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn we_deaggregate_python_aggregates() -> TestResult {
    let sets = random_sets(&mut seeded_rng(), 200);
    let output = run_interop_script("encode", &serde_json::to_vec(&sets)?)?;
    let kinesis_records: Vec<Input> = serde_json::from_slice(&output)?;

    assert_eq!(kinesis_records.len(), sets.len());
    for (set, record) in sets.iter().zip(kinesis_records) {
        let users = deaggregate(
            &record.partition_key,
            record.explicit_hash_key.as_deref(),
            Bytes::from(BASE64.decode_to_vec(&record.data)?),
        );
        let got: Vec<Input> = users
            .iter()
            .map(|u| Input {
                partition_key: u.partition_key.to_string(),
                explicit_hash_key: u.explicit_hash_key.as_deref().map(str::to_owned),
                data: BASE64.encode_to_string(&u.data),
            })
            .collect();
        assert_eq!(&got, set);
        for (i, user) in users.iter().enumerate() {
            assert!(user.aggregated);
            assert_eq!(user.sub_sequence_number, i as u64);
        }
    }
    Ok(())
}
