//! The ground truth: every user record the stream holds, read back after the run with
//! GetRecords and deaggregated, parents' shards before their children's.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use bytes::Bytes;
use kinesis_producer::aggregation::deaggregate;
use kinesis_producer::HashKey;

use crate::check::StreamRecord;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Every shard of the stream, open and closed, following pagination.
pub async fn list_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<Vec<Shard>, Error> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let page = request.send().await?;
        shards.extend(page.shards().iter().cloned());
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(shards);
        }
    }
}

/// Shards ordered so that every parent comes before its children.
pub fn parents_first(shards: &[Shard]) -> Vec<Shard> {
    let ids: BTreeSet<&str> = shards.iter().map(|s| s.shard_id()).collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::new();
    let mut pending: Vec<&Shard> = shards.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|shard| {
            let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()];
            let ready = parents
                .iter()
                .flatten()
                .all(|p| placed.contains(*p) || !ids.contains(p));
            if ready {
                placed.insert(shard.shard_id().to_owned());
                ordered.push((*shard).clone());
            }
            !ready
        });
        if pending.len() == before {
            // A cycle cannot happen; keep the rest in listing order rather than loop.
            ordered.extend(pending.drain(..).cloned());
        }
    }
    ordered
}

/// The user records of one Kinesis record that belong on `range` (KCL rule: records of
/// an aggregate hashing outside the shard are dropped; the producer sends them again).
fn user_records(
    shard: &str,
    range: Option<(HashKey, HashKey)>,
    record: &aws_sdk_kinesis::types::Record,
    out: &mut Vec<StreamRecord>,
    unreadable: &mut u64,
) {
    let data = Bytes::from(record.data().as_ref().to_vec());
    let key = record.partition_key().unwrap_or_default();
    for user in deaggregate(key, None, data) {
        if let (true, Some((start, end))) = (user.aggregated, range) {
            let hash = match user.explicit_hash_key.as_deref().map(str::parse::<HashKey>) {
                Some(Ok(hash)) => hash,
                _ => HashKey::from_partition_key(&user.partition_key),
            };
            if hash < start || hash > end {
                continue;
            }
        }
        let id = serde_json::from_slice::<serde_json::Value>(&user.data)
            .ok()
            .and_then(|v| v["id"].as_u64());
        match id {
            Some(id) => out.push(StreamRecord {
                shard: shard.to_owned(),
                sequence_number: record.sequence_number().to_owned(),
                sub_sequence_number: user.sub_sequence_number,
                key: user.partition_key.to_string(),
                id,
            }),
            None => *unreadable += 1,
        }
    }
}

/// What the stream holds.
pub struct Truth {
    /// User records, parents' shards first, each shard in order.
    pub records: Vec<StreamRecord>,
    /// Shards read, with their user record counts.
    pub shards: BTreeMap<String, u64>,
    /// User records whose data is not the producer's JSON.
    pub unreadable: u64,
}

/// Reads every shard from TRIM_HORIZON to its end (closed) or its tip (open).
pub async fn read_stream(client: &aws_sdk_kinesis::Client, stream: &str) -> Result<Truth, Error> {
    let shards = parents_first(&list_shards(client, stream).await?);
    let mut truth = Truth {
        records: Vec::new(),
        shards: BTreeMap::new(),
        unreadable: 0,
    };
    for shard in shards {
        let range = shard.hash_key_range().and_then(|r| {
            Some((
                r.starting_hash_key().parse().ok()?,
                r.ending_hash_key().parse().ok()?,
            ))
        });
        let before = truth.records.len();
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator
            .ok_or("no shard iterator")?;
        loop {
            let page = client
                .get_records()
                .shard_iterator(&iterator)
                .limit(10_000)
                .send()
                .await?;
            for record in page.records() {
                user_records(
                    shard.shard_id(),
                    range,
                    record,
                    &mut truth.records,
                    &mut truth.unreadable,
                );
            }
            match page.next_shard_iterator() {
                None => break,
                Some(_) if page.records().is_empty() && page.millis_behind_latest() == Some(0) => {
                    break
                }
                Some(next) => iterator = next.to_owned(),
            }
        }
        truth.shards.insert(
            shard.shard_id().to_owned(),
            (truth.records.len() - before) as u64,
        );
    }
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>, adjacent: Option<&str>) -> Shard {
        Shard::builder()
            .shard_id(id)
            .set_parent_shard_id(parent.map(str::to_owned))
            .set_adjacent_parent_shard_id(adjacent.map(str::to_owned))
            .build()
            .expect("shard")
    }

    #[test]
    fn parents_come_before_children() {
        let shards = vec![
            shard("merged", Some("a"), Some("b")),
            shard("b", None, None),
            shard("a-child", Some("a"), None),
            shard("a", None, None),
            shard("orphan", Some("trimmed"), None),
        ];
        let order: Vec<String> = parents_first(&shards)
            .iter()
            .map(|s| s.shard_id().to_owned())
            .collect();
        let at = |id: &str| order.iter().position(|s| s == id).expect("listed");
        assert!(at("a") < at("merged") && at("b") < at("merged"));
        assert!(at("a") < at("a-child"));
        assert_eq!(order.len(), 5);
    }
}
