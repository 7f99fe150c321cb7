//! Least privilege, written down and checked (issue 23): the IAM policies in kpl/README.md
//! and kcl/README.md allow every AWS operation the producer and the consumer make.
//!
//! Each scenario runs a component against the emulators with an SdkConfig whose HTTP
//! client records the operation of every request (its `x-amz-target`). An SDK
//! interceptor would see only the calls of clients built here, not of those the
//! libraries build from the SdkConfig: the HTTP client, which the SdkConfig carries,
//! sees them all. The test fails, naming them, if a documented policy misses one.

#![allow(clippy::unwrap_used, missing_docs)] // A panic is how a test reports failure.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use integration_tests::kcl::{
    fast_builder, keyed_records, put_records, start_worker, Behaviour, Log,
};
use integration_tests::tap::Tap;
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_consumer::SchedulerBuilder;
use kinesis_producer::{Producer, Record};

/// Every operation requested through its client, as IAM actions (`kinesis:PutRecords`),
/// and for DynamoDB the tables (and index) each one named.
#[derive(Clone, Debug, Default)]
struct Recording {
    actions: Arc<Mutex<BTreeSet<String>>>,
    tables: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl Recording {
    /// The emulators' SdkConfig, through a client that records every request's
    /// operation.
    async fn config(&self) -> TestResult<SdkConfig> {
        let actions = self.actions.clone();
        let tables = self.tables.clone();
        let tap = Tap::new(move |request| {
            let target = request.headers().get("x-amz-target");
            if let Some((service, operation)) = target.and_then(|t| t.split_once('.')) {
                let service = match service {
                    "Kinesis_20131202" => "kinesis",
                    "DynamoDB_20120810" => "dynamodb",
                    other => other,
                };
                let action = format!("{service}:{operation}");
                if service == "dynamodb" {
                    let body: serde_json::Value = request
                        .body()
                        .bytes()
                        .and_then(|b| serde_json::from_slice(b).ok())
                        .unwrap_or_default();
                    if let Some(table) = body["TableName"].as_str() {
                        let resource = match body["IndexName"].as_str() {
                            Some(index) => format!("table/{table}/index/{index}"),
                            None => format!("table/{table}"),
                        };
                        tables.lock().unwrap().insert((action.clone(), resource));
                    }
                }
                actions.lock().unwrap().insert(action);
            }
        });
        Ok(sdk_config().await?.to_builder().http_client(tap).build())
    }

    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.actions.lock().unwrap())
    }

    /// The (action, DynamoDB resource) pairs recorded since the last call.
    fn take_tables(&self) -> BTreeSet<(String, String)> {
        std::mem::take(&mut *self.tables.lock().unwrap())
    }
}

/// The DynamoDB (action, resource) pairs the policy after `<!-- iam-policy: name -->`
/// allows, with `APPLICATION` replaced by `application`.
fn table_grants(readme: &str, name: &str, application: &str) -> BTreeSet<(String, String)> {
    let marker = format!("<!-- iam-policy: {name} -->");
    let json = readme
        .split_once(&marker)
        .and_then(|(_, after)| after.split_once("```json\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("no policy {name}"))
        .0;
    let document: serde_json::Value = serde_json::from_str(json).unwrap();
    let list = |value: &serde_json::Value| -> Vec<String> {
        match value {
            serde_json::Value::String(one) => vec![one.clone()],
            serde_json::Value::Array(many) => many
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut grants = BTreeSet::new();
    for statement in document["Statement"].as_array().unwrap() {
        for resource in list(&statement["Resource"]) {
            let Some((_, table)) = resource.split_once(":table/") else {
                continue;
            };
            let table = table.replace("APPLICATION", application);
            for action in list(&statement["Action"]) {
                grants.insert((action, format!("table/{table}")));
            }
        }
    }
    grants
}

fn assert_tables_allowed(
    used: &BTreeSet<(String, String)>,
    allowed: &BTreeSet<(String, String)>,
    name: &str,
) {
    let missing: Vec<&(String, String)> = used.difference(allowed).collect();
    assert!(
        missing.is_empty(),
        "policy {name} misses these actions on these tables: {missing:?}"
    );
}

/// Runs a worker until its processors got `records` records, then stops it.
async fn consume(builder: SchedulerBuilder, worker: &str, records: usize) -> TestResult {
    let log = Log::default();
    let running = start_worker(builder, worker, &log, Behaviour::default()).await?;
    wait_for("the records", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() >= records).then_some(()))
    })
    .await?;
    running.stop().await
}

/// The actions the policy after `<!-- iam-policy: name -->` in `readme` allows.
fn policy(readme: &str, name: &str) -> BTreeSet<String> {
    let marker = format!("<!-- iam-policy: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no policy {name}"))
        .1;
    let json = after
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("policy {name}: no JSON block"))
        .0;
    let document: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("policy {name}: {e}"));
    let mut actions = BTreeSet::new();
    for statement in document["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow", "{name}");
        assert!(statement["Resource"].is_string() || statement["Resource"].is_array());
        match &statement["Action"] {
            serde_json::Value::String(action) => {
                actions.insert(action.clone());
            }
            serde_json::Value::Array(list) => {
                actions.extend(list.iter().map(|a| a.as_str().unwrap().to_owned()));
            }
            other => panic!("policy {name}: Action {other}"),
        }
    }
    assert!(
        actions.iter().all(|a| !a.contains('*')),
        "{name}: no wildcards"
    );
    actions
}

fn assert_allowed(used: &BTreeSet<String>, allowed: &BTreeSet<String>, name: &str) {
    eprintln!("{name}: {used:?}");
    let missing: Vec<&String> = used.difference(allowed).collect();
    assert!(
        missing.is_empty(),
        "policy {name} misses {missing:?} (used: {used:?})"
    );
    assert!(!used.is_empty(), "{name}: nothing recorded");
}

const KPL_README: &str = include_str!("../../kpl/README.md");
const KCL_README: &str = include_str!("../../kcl/README.md");

#[tokio::test]
async fn the_documented_policies_allow_every_operation_the_libraries_make() -> TestResult {
    let plain = aws_sdk_kinesis::Client::new(&sdk_config().await?);
    let recording = Recording::default();
    let config = recording.config().await?;

    // The producer.
    let stream = unique_name("iam");
    create_stream(&plain, &stream, 2).await?;
    let producer = Producer::builder(&config).stream(&stream).build().await?;
    let mut receipts = Vec::new();
    for i in 0..20 {
        receipts.push(producer.send(Record::new(format!("k{i}"), "x")).await?);
    }
    for receipt in receipts {
        receipt.await?;
    }
    producer.shutdown().await;
    assert_allowed(
        &recording.take(),
        &policy(KPL_README, "producer"),
        "producer",
    );

    // A polling consumer that creates its lease table.
    let app = unique_name("iam-app");
    put_records(&plain, &stream, &keyed_records("iam", 20, 4)).await?;
    consume(fast_builder(&config, &stream, &app, "w1"), "w1", 20).await?;
    let creating = recording.take();
    assert!(creating.contains("dynamodb:CreateTable"));
    assert_allowed(
        &creating,
        &policy(KCL_README, "consumer-creates-table"),
        "consumer-creates-table",
    );
    let tables = recording.take_tables();
    assert!(
        tables
            .iter()
            .any(|(_, t)| t.ends_with("-WorkerMetricStats")),
        "the coordinator tables are used: {tables:?}"
    );
    assert_tables_allowed(
        &tables,
        &table_grants(KCL_README, "consumer-creates-table", &app),
        "consumer-creates-table",
    );

    // The same application again: its table exists, CreateTable is not needed.
    let log = Log::default();
    let worker = start_worker(
        fast_builder(&config, &stream, &app, "w2"),
        "w2",
        &log,
        Behaviour::default(),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await?;
    assert_allowed(
        &recording.take(),
        &policy(KCL_README, "consumer"),
        "consumer",
    );
    assert_tables_allowed(
        &recording.take_tables(),
        &table_grants(KCL_README, "consumer", &app),
        "consumer",
    );

    // Enhanced fan-out.
    let app = unique_name("iam-fan-out");
    consume(
        fast_builder(&config, &stream, &app, "w3").fan_out(),
        "w3",
        20,
    )
    .await?;
    let mut fan_out = policy(KCL_README, "consumer-creates-table");
    fan_out.extend(policy(KCL_README, "consumer-fan-out"));
    let used = recording.take();
    assert!(used.contains("kinesis:SubscribeToShard"), "{used:?}");
    assert_allowed(&used, &fan_out, "consumer-creates-table + consumer-fan-out");
    Ok(())
}
