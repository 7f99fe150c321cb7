//! The coordinator tables in DynamoDB, named and keyed as the Java KCL 3 (3.0 to 3.4)
//! makes them: `<application>-CoordinatorState` (hash key `key`) and
//! `<application>-WorkerMetricStats` (hash key `wid`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::{CoordinatorStore, LockItem, WorkerRow, LEADER_LOCK_KEY};
use crate::leases::dynamodb::admin::{self, TableSpec};
use crate::leases::dynamodb::classify;
use crate::leases::store::LeaseStoreError;
use crate::leases::table::LeaseTableConfig;

/// Attribute names of the coordinator tables.
pub mod attributes {
    /// Hash key of the coordinator state table.
    pub const KEY: &str = "key";
    /// The lock holder (DynamoDB lock client).
    pub const OWNER_NAME: &str = "ownerName";
    /// The lock's lease duration, milliseconds as a string (DynamoDB lock client).
    pub const LEASE_DURATION: &str = "leaseDuration";
    /// The lock's record version, a UUID (DynamoDB lock client).
    pub const RECORD_VERSION_NUMBER: &str = "recordVersionNumber";
    /// Present when the lock was released (DynamoDB lock client).
    pub const IS_RELEASED: &str = "isReleased";
    /// The leader's successors (this crate's own).
    pub const SUCCESSORS: &str = "successors";
    /// Hash key of the worker metrics table: the worker id.
    pub const WORKER_ID: &str = "wid";
    /// Last update, epoch seconds (Java KCL 3).
    pub const LAST_UPDATE: &str = "lut";
    /// Metric name to values (Java KCL 3).
    pub const STATS: &str = "sts";
    /// Metric name to operating range (Java KCL 3).
    pub const OPERATING_RANGE: &str = "opr";
    /// The worker's write counter (this crate's own).
    pub const HEARTBEAT: &str = "heartbeat";
    /// The heartbeat at which a leader found the worker dead (this crate's own).
    pub const FENCED_AT: &str = "fencedAt";
    /// The worker is shutting down (this crate's own).
    pub const STOPPING: &str = "stopping";
    /// The most leases the worker takes (this crate's own).
    pub const MAX_LEASES: &str = "maxLeases";
    /// The lock keys whose leader named the worker a successor (this crate's own).
    pub const SUCCESSOR_OF: &str = "successorOf";
    /// The streams a multi-stream worker consumes, a list (this crate's own).
    pub const STREAMS: &str = "streams";
}

use attributes::*;

/// A [`CoordinatorStore`] in two DynamoDB tables, created if missing with the lease
/// table's billing, tags, backups and protection.
#[derive(Clone, Debug)]
pub struct DynamoDbCoordinatorStore {
    client: Client,
    state_table: String,
    workers_table: String,
    config: LeaseTableConfig,
}

impl DynamoDbCoordinatorStore {
    /// The tables of `application`: `<application>-CoordinatorState` and
    /// `<application>-WorkerMetricStats`, as the Java KCL 3 names them.
    pub fn new(client: Client, application: &str, config: LeaseTableConfig) -> Self {
        Self::with_tables(
            client,
            format!("{application}-CoordinatorState"),
            format!("{application}-WorkerMetricStats"),
            config,
        )
    }

    /// Tables with these names.
    pub fn with_tables(
        client: Client,
        state_table: impl Into<String>,
        workers_table: impl Into<String>,
        config: LeaseTableConfig,
    ) -> Self {
        DynamoDbCoordinatorStore {
            client,
            state_table: state_table.into(),
            workers_table: workers_table.into(),
            config,
        }
    }

    /// The coordinator state table's name.
    pub fn state_table(&self) -> &str {
        &self.state_table
    }

    /// The worker metrics table's name.
    pub fn workers_table(&self) -> &str {
        &self.workers_table
    }

    fn lock_key(key: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([(KEY.to_owned(), AttributeValue::S(key.to_owned()))])
    }
}

/// The lock item as the DynamoDB lock client writes it, with this crate's successors.
pub fn lock_to_item(lock: &LockItem) -> HashMap<String, AttributeValue> {
    let mut item = DynamoDbCoordinatorStore::lock_key(&lock.key);
    item.insert(OWNER_NAME.into(), AttributeValue::S(lock.owner.clone()));
    item.insert(
        LEASE_DURATION.into(),
        AttributeValue::S(lock.lease_duration.as_millis().to_string()),
    );
    item.insert(
        RECORD_VERSION_NUMBER.into(),
        AttributeValue::S(lock.record_version.clone()),
    );
    if lock.released {
        item.insert(IS_RELEASED.into(), AttributeValue::S("1".into()));
    }
    item.insert(SUCCESSORS.into(), successors_value(&lock.successors));
    item
}

fn successors_value(successors: &[String]) -> AttributeValue {
    AttributeValue::L(successors.iter().cloned().map(AttributeValue::S).collect())
}

fn malformed(what: &str) -> LeaseStoreError {
    LeaseStoreError::Malformed(what.to_owned())
}

fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn number<T: std::str::FromStr>(item: &HashMap<String, AttributeValue>, name: &str) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

/// Reads the lock item (another library's too: attributes this crate does not know are
/// ignored).
pub fn lock_from_item(item: &HashMap<String, AttributeValue>) -> Result<LockItem, LeaseStoreError> {
    let key = string(item, KEY).unwrap_or_else(|| LEADER_LOCK_KEY.to_owned());
    let owner = string(item, OWNER_NAME).ok_or_else(|| malformed("lock item without ownerName"))?;
    let record_version = string(item, RECORD_VERSION_NUMBER)
        .ok_or_else(|| malformed("lock item without recordVersionNumber"))?;
    let lease_duration = string(item, LEASE_DURATION)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
        .ok_or_else(|| malformed("lock item without a leaseDuration in milliseconds"))?;
    let successors = match item.get(SUCCESSORS) {
        Some(AttributeValue::L(values)) => values
            .iter()
            .filter_map(|v| v.as_s().ok().cloned())
            .collect(),
        _ => Vec::new(),
    };
    Ok(LockItem {
        key,
        owner,
        record_version,
        lease_duration,
        released: item.contains_key(IS_RELEASED),
        successors,
    })
}

fn metric_map(metrics: &BTreeMap<String, Vec<f64>>) -> AttributeValue {
    AttributeValue::M(
        metrics
            .iter()
            .map(|(name, values)| {
                let list = values
                    .iter()
                    .map(|v| AttributeValue::N(v.to_string()))
                    .collect();
                (name.clone(), AttributeValue::L(list))
            })
            .collect(),
    )
}

fn metric_map_from(value: Option<&AttributeValue>) -> BTreeMap<String, Vec<f64>> {
    let Some(AttributeValue::M(map)) = value else {
        return BTreeMap::new();
    };
    map.iter()
        .map(|(name, values)| {
            let values = match values {
                AttributeValue::L(list) => list
                    .iter()
                    .filter_map(|v| v.as_n().ok().and_then(|n| n.parse::<f64>().ok()))
                    .filter(|v| v.is_finite())
                    .collect(),
                _ => Vec::new(),
            };
            (name.clone(), values)
        })
        .collect()
}

/// A worker row as an item (every attribute this crate knows).
pub fn worker_to_item(row: &WorkerRow) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([(
        WORKER_ID.to_owned(),
        AttributeValue::S(row.worker_id.clone()),
    )]);
    if let Some(lut) = row.last_update_epoch_seconds {
        item.insert(LAST_UPDATE.into(), AttributeValue::N(lut.to_string()));
    }
    item.insert(STATS.into(), metric_map(&row.stats));
    item.insert(OPERATING_RANGE.into(), metric_map(&row.operating_range));
    if let Some(heartbeat) = row.heartbeat {
        item.insert(HEARTBEAT.into(), AttributeValue::N(heartbeat.to_string()));
    }
    if let Some(fenced) = row.fenced_at {
        item.insert(FENCED_AT.into(), AttributeValue::N(fenced.to_string()));
    }
    item.insert(STOPPING.into(), AttributeValue::Bool(row.stopping));
    if let Some(max) = row.max_leases {
        item.insert(MAX_LEASES.into(), AttributeValue::N(max.to_string()));
    }
    // DynamoDB rejects empty sets: absent means none.
    if !row.successor_of.is_empty() {
        item.insert(
            SUCCESSOR_OF.into(),
            AttributeValue::Ss(row.successor_of.iter().cloned().collect()),
        );
    }
    // A list, not a set: a worker between streams consumes none.
    if let Some(streams) = &row.streams {
        item.insert(
            STREAMS.into(),
            AttributeValue::L(streams.iter().cloned().map(AttributeValue::S).collect()),
        );
    }
    item
}

/// Reads a worker row (the Java KCL 3's too).
pub fn worker_from_item(
    item: &HashMap<String, AttributeValue>,
) -> Result<WorkerRow, LeaseStoreError> {
    let worker_id = string(item, WORKER_ID).ok_or_else(|| malformed("worker row without wid"))?;
    Ok(WorkerRow {
        worker_id,
        last_update_epoch_seconds: number(item, LAST_UPDATE),
        stats: metric_map_from(item.get(STATS)),
        operating_range: metric_map_from(item.get(OPERATING_RANGE)),
        heartbeat: number(item, HEARTBEAT),
        fenced_at: number(item, FENCED_AT),
        stopping: matches!(item.get(STOPPING), Some(AttributeValue::Bool(true))),
        max_leases: number(item, MAX_LEASES),
        successor_of: match item.get(SUCCESSOR_OF) {
            Some(AttributeValue::Ss(keys)) => keys.iter().cloned().collect(),
            _ => Default::default(),
        },
        streams: match item.get(STREAMS) {
            Some(AttributeValue::L(streams)) => Some(
                streams
                    .iter()
                    .filter_map(|s| s.as_s().ok().cloned())
                    .collect(),
            ),
            _ => None,
        },
    })
}

/// A condition that `name` equals `value`, or is absent when `value` is `None`.
fn equals_or_absent(
    name: &str,
    placeholder: &str,
    value: Option<AttributeValue>,
    values: &mut HashMap<String, AttributeValue>,
) -> String {
    match value {
        Some(value) => {
            values.insert(format!(":{placeholder}"), value);
            format!("{name} = :{placeholder}")
        }
        None => format!("attribute_not_exists({name})"),
    }
}

#[async_trait]
impl CoordinatorStore for DynamoDbCoordinatorStore {
    async fn create_tables_if_missing(&self) -> Result<(), LeaseStoreError> {
        for (name, hash_key) in [
            (self.state_table.as_str(), KEY),
            (self.workers_table.as_str(), WORKER_ID),
        ] {
            let spec = TableSpec {
                name,
                hash_key,
                owner_index: false,
                config: &self.config,
            };
            admin::ensure_table(&self.client, spec).await?;
        }
        Ok(())
    }

    async fn read_lock(&self, key: &str) -> Result<Option<LockItem>, LeaseStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.state_table)
            .set_key(Some(Self::lock_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem", &self.state_table, e))?;
        out.item().map(lock_from_item).transpose()
    }

    async fn acquire_lock(
        &self,
        previous: Option<&LockItem>,
        lock: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.state_table)
            .set_item(Some(lock_to_item(lock)))
            .expression_attribute_names("#pk", KEY);
        request = match previous {
            None => request.condition_expression("attribute_not_exists(#pk)"),
            Some(previous) => request
                .condition_expression("attribute_exists(#pk) AND #rvn = :rvn")
                .expression_attribute_names("#rvn", RECORD_VERSION_NUMBER)
                .expression_attribute_values(
                    ":rvn",
                    AttributeValue::S(previous.record_version.clone()),
                ),
        };
        request
            .send()
            .await
            .map_err(|e| classify("PutItem", &lock.key, e))?;
        Ok(())
    }

    async fn renew_lock(
        &self,
        current: &LockItem,
        renewed: &LockItem,
    ) -> Result<(), LeaseStoreError> {
        self.client
            .update_item()
            .table_name(&self.state_table)
            .set_key(Some(Self::lock_key(&current.key)))
            .update_expression("SET #ld = :ld, #rvn = :new, #succ = :succ")
            .condition_expression("attribute_exists(#pk) AND #rvn = :rvn AND #on = :on")
            .expression_attribute_names("#pk", KEY)
            .expression_attribute_names("#ld", LEASE_DURATION)
            .expression_attribute_names("#rvn", RECORD_VERSION_NUMBER)
            .expression_attribute_names("#on", OWNER_NAME)
            .expression_attribute_names("#succ", SUCCESSORS)
            .expression_attribute_values(
                ":ld",
                AttributeValue::S(renewed.lease_duration.as_millis().to_string()),
            )
            .expression_attribute_values(":new", AttributeValue::S(renewed.record_version.clone()))
            .expression_attribute_values(":succ", successors_value(&renewed.successors))
            .expression_attribute_values(":rvn", AttributeValue::S(current.record_version.clone()))
            .expression_attribute_values(":on", AttributeValue::S(current.owner.clone()))
            .send()
            .await
            .map_err(|e| classify("UpdateItem", &current.key, e))?;
        Ok(())
    }

    async fn release_lock(&self, current: &LockItem) -> Result<(), LeaseStoreError> {
        self.client
            .delete_item()
            .table_name(&self.state_table)
            .set_key(Some(Self::lock_key(&current.key)))
            .condition_expression("attribute_exists(#pk) AND #rvn = :rvn AND #on = :on")
            .expression_attribute_names("#pk", KEY)
            .expression_attribute_names("#rvn", RECORD_VERSION_NUMBER)
            .expression_attribute_names("#on", OWNER_NAME)
            .expression_attribute_values(":rvn", AttributeValue::S(current.record_version.clone()))
            .expression_attribute_values(":on", AttributeValue::S(current.owner.clone()))
            .send()
            .await
            .map_err(|e| classify("DeleteItem", &current.key, e))?;
        Ok(())
    }

    async fn read_worker(&self, worker_id: &str) -> Result<Option<WorkerRow>, LeaseStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, AttributeValue::S(worker_id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem", worker_id, e))?;
        out.item().map(worker_from_item).transpose()
    }

    async fn write_worker(
        &self,
        row: &WorkerRow,
        previous: Option<&WorkerRow>,
    ) -> Result<WorkerRow, LeaseStoreError> {
        let mut item = worker_to_item(row);
        item.remove(WORKER_ID);
        // The leader's, not the worker's.
        item.remove(SUCCESSOR_OF);
        let mut names = HashMap::from([("#wid".to_owned(), WORKER_ID.to_owned())]);
        let mut values = HashMap::new();
        let mut set = Vec::new();
        for (i, (name, value)) in item.into_iter().enumerate() {
            names.insert(format!("#a{i}"), name);
            values.insert(format!(":a{i}"), value);
            set.push(format!("#a{i} = :a{i}"));
        }
        let mut remove = Vec::new();
        for (absent, name) in [
            (row.fenced_at.is_none(), FENCED_AT),
            (row.max_leases.is_none(), MAX_LEASES),
            (row.streams.is_none(), STREAMS),
        ] {
            if absent {
                let placeholder = format!("#r{}", remove.len());
                names.insert(placeholder.clone(), name.to_owned());
                remove.push(placeholder);
            }
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let condition = match previous {
            None => "attribute_not_exists(#wid)".to_owned(),
            Some(previous) => {
                names.insert("#hb".into(), HEARTBEAT.into());
                names.insert("#fenced".into(), FENCED_AT.into());
                let heartbeat = equals_or_absent(
                    "#hb",
                    "old_hb",
                    previous.heartbeat.map(|h| AttributeValue::N(h.to_string())),
                    &mut values,
                );
                let fenced = equals_or_absent(
                    "#fenced",
                    "old_fenced",
                    previous.fenced_at.map(|h| AttributeValue::N(h.to_string())),
                    &mut values,
                );
                format!("attribute_exists(#wid) AND {heartbeat} AND {fenced}")
            }
        };
        let out = self
            .client
            .update_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, AttributeValue::S(row.worker_id.clone()))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify("UpdateItem", &row.worker_id, e))?;
        out.attributes()
            .map(worker_from_item)
            .transpose()?
            .ok_or_else(|| malformed("the heartbeat write returned no row"))
    }

    async fn name_successor(
        &self,
        worker_id: &str,
        lock_key: &str,
        named: bool,
    ) -> Result<(), LeaseStoreError> {
        let action = if named { "ADD" } else { "DELETE" };
        self.client
            .update_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, AttributeValue::S(worker_id.to_owned()))
            .update_expression(format!("{action} #succ :key"))
            .condition_expression("attribute_exists(#wid)")
            .expression_attribute_names("#succ", SUCCESSOR_OF)
            .expression_attribute_names("#wid", WORKER_ID)
            .expression_attribute_values(":key", AttributeValue::Ss(vec![lock_key.to_owned()]))
            .send()
            .await
            .map_err(|e| classify("UpdateItem", worker_id, e))?;
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRow>, LeaseStoreError> {
        let mut rows = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.workers_table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("Scan", &self.workers_table, e))?;
            for item in page.items() {
                match worker_from_item(item) {
                    Ok(row) => rows.push(row),
                    Err(error) => {
                        tracing::error!(table = %self.workers_table, %error, "skipping a malformed worker row")
                    }
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(rows);
            }
        }
    }

    async fn fence_worker(&self, worker_id: &str, heartbeat: u64) -> Result<(), LeaseStoreError> {
        self.client
            .update_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, AttributeValue::S(worker_id.to_owned()))
            .update_expression("SET #fenced = :hb")
            .condition_expression("#hb = :hb")
            .expression_attribute_names("#fenced", FENCED_AT)
            .expression_attribute_names("#hb", HEARTBEAT)
            .expression_attribute_values(":hb", AttributeValue::N(heartbeat.to_string()))
            .send()
            .await
            .map_err(|e| classify("UpdateItem", worker_id, e))?;
        Ok(())
    }

    async fn delete_worker(&self, row: &WorkerRow) -> Result<(), LeaseStoreError> {
        let mut values = HashMap::new();
        let heartbeat = equals_or_absent(
            "#hb",
            "hb",
            row.heartbeat.map(|h| AttributeValue::N(h.to_string())),
            &mut values,
        );
        let updated = equals_or_absent(
            "#lut",
            "lut",
            row.last_update_epoch_seconds
                .map(|t| AttributeValue::N(t.to_string())),
            &mut values,
        );
        self.client
            .delete_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, AttributeValue::S(row.worker_id.clone()))
            .condition_expression(format!(
                "attribute_exists(#wid) AND {heartbeat} AND {updated}"
            ))
            .expression_attribute_names("#wid", WORKER_ID)
            .expression_attribute_names("#hb", HEARTBEAT)
            .expression_attribute_names("#lut", LAST_UPDATE)
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .send()
            .await
            .map_err(|e| classify("DeleteItem", &row.worker_id, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_item_is_the_lock_clients() {
        let lock = LockItem::new(
            LEADER_LOCK_KEY,
            "w1",
            Duration::from_secs(5),
            vec!["w2".into()],
        );
        let item = lock_to_item(&lock);
        assert_eq!(item.get(KEY), Some(&AttributeValue::S("Leader".into())));
        assert_eq!(
            item.get(LEASE_DURATION),
            Some(&AttributeValue::S("5000".into()))
        );
        assert_eq!(lock.record_version.len(), 36, "a UUID");
        assert_eq!(lock_from_item(&item).unwrap(), lock);
        // The Java KCL's own lock: no successors, released.
        let mut java = item.clone();
        java.remove(SUCCESSORS);
        java.insert(IS_RELEASED.into(), AttributeValue::S("1".into()));
        let read = lock_from_item(&java).unwrap();
        assert!(read.released && read.successors.is_empty());
    }

    #[test]
    fn worker_rows_round_trip_and_java_rows_are_read() {
        let mut row = WorkerRow::new("w1");
        row.last_update_epoch_seconds = Some(1_800_000_000);
        row.stats.insert("C".into(), vec![12.5, 20.0]);
        row.operating_range.insert("C".into(), vec![100.0]);
        row.heartbeat = Some(7);
        row.fenced_at = Some(7);
        row.max_leases = Some(3);
        row.successor_of.insert("Leader".into());
        row.streams = Some(["000000000000:orders:1".to_owned()].into());
        let item = worker_to_item(&row);
        assert_eq!(worker_from_item(&item).unwrap(), row);
        row.streams = Some(Default::default());
        assert_eq!(worker_from_item(&worker_to_item(&row)).unwrap(), row);
        assert!(!row.consumes("000000000000:orders:1"));
        assert!(row.is_fenced());
        assert_eq!(row.cpu_percent(), Some(20.0));
        let java = HashMap::from([
            ("wid".to_owned(), AttributeValue::S("java-1".into())),
            ("lut".to_owned(), AttributeValue::N("1800000000".into())),
            ("sts".to_owned(), AttributeValue::M(HashMap::new())),
        ]);
        let read = worker_from_item(&java).unwrap();
        assert!(!read.is_heartbeating());
        assert!(
            read.consumes("000000000000:orders:1"),
            "a row naming no streams consumes all"
        );
        assert_eq!(read.cpu_percent(), None);
    }
}
