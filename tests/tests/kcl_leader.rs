//! The leader-based coordination against the emulators, with the Java KCL 3's tables: a
//! Java leader's lock is respected and its assignments and handoffs followed, this crate's
//! worker rows read as active to a Java leader, the Java KCL 3.5's own items in the lease
//! table are left alone, and a mixed fleet (a worker of this crate and a worker taking its
//! own leases as the Java KCL 2.x does, one lease table) survives `kill -9` either way
//! with nothing lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::kcl::{
    assert_per_key_order, fast_builder, keyed_records, leases, owners, put_records, start_worker,
    Behaviour, Log, FAILOVER,
};
use integration_tests::{create_stream, sdk_config, unique_name, wait_for, TestResult};
use kinesis_consumer::leases::coordination::{
    CoordinatorStore, DynamoDbCoordinatorStore, LockItem, LEADER_LOCK_KEY,
};
use kinesis_consumer::leases::{Coordination, DynamoDbLeaseStore, LeaseStore, LeaseTableConfig};

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn coordinator(config: &aws_config::SdkConfig, app: &str) -> DynamoDbCoordinatorStore {
    DynamoDbCoordinatorStore::new(
        aws_sdk_dynamodb::Client::new(config),
        app,
        LeaseTableConfig::default(),
    )
}

/// Assigns a lease as the Java KCL 3's leader does (`assignLease`): the new owner,
/// `checkpointOwner` removed, the counter bumped, on the condition of the owner it saw.
async fn java_assign(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    owner: &str,
) -> TestResult {
    dynamodb
        .update_item()
        .table_name(table)
        .key("leaseKey", s(key))
        .update_expression("SET leaseOwner = :owner ADD leaseCounter :one REMOVE checkpointOwner")
        .condition_expression("attribute_exists(leaseKey)")
        .expression_attribute_values(":owner", s(owner))
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .send()
        .await?;
    Ok(())
}

/// A Java KCL 3 leader holds the lock (the DynamoDB lock client's item, heartbeat every few
/// seconds here): this crate's workers never take it, follow its assignments (they find
/// them through the owner index) and its handoff requests, and write worker rows a Java
/// leader counts as active (`lut` recent, `sts` and `opr` maps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_kcl_3_leaders_lock_and_assignments_are_followed() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let stream = unique_name("kcl-java-leader");
    let app = unique_name("kcl-java-leader-app");
    create_stream(&kinesis, &stream, 2).await?;
    let records = keyed_records("java-leader", 40, 8);
    put_records(&kinesis, &stream, &records).await?;

    // The Java leader's lock, in the coordinator state table the Java KCL 3 creates.
    let tables = coordinator(&config, &app);
    tables.create_tables_if_missing().await?;
    let mut java_lock = LockItem::new(
        LEADER_LOCK_KEY,
        "java-leader",
        Duration::from_secs(120),
        Vec::new(),
    );
    tables.acquire_lock(None, &java_lock).await?;
    let heartbeat = {
        let tables = tables.clone();
        let mut lock = java_lock.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let renewed = lock.renewed(Vec::new());
                if tables.renew_lock(&lock, &renewed).await.is_ok() {
                    lock = renewed;
                }
            }
        })
    };

    let log = Log::default();
    let builder = |worker: &str| fast_builder(&config, &stream, &app, worker);
    let w1 = start_worker(builder("w1"), "w1", &log, Behaviour::default()).await?;
    let w2 = start_worker(builder("w2"), "w2", &log, Behaviour::default()).await?;
    // Shard sync runs on the leader only; the Java leader would have created the leases.
    let store = DynamoDbLeaseStore::new(dynamodb.clone(), &app);
    store.create_table_if_missing().await?;
    let shards = integration_tests::list_shards(&kinesis, &stream).await?;
    for shard in &shards {
        let lease = kinesis_consumer::Lease::new(
            shard.shard_id(),
            kinesis_consumer::ExtendedSequenceNumber::trim_horizon(),
        );
        store.create_lease_if_absent(&lease).await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        log.delivered().is_empty(),
        "nothing is taken without the leader"
    );

    // The Java leader assigns one shard to each worker.
    let keys: Vec<String> = shards.iter().map(|s| s.shard_id().to_owned()).collect();
    java_assign(&dynamodb, &app, &keys[0], "w1").await?;
    java_assign(&dynamodb, &app, &keys[1], "w2").await?;
    wait_for(
        "every record delivered",
        Duration::from_secs(30),
        || async { Ok((log.distinct_payloads() == records.len()).then_some(())) },
    )
    .await?;
    let by_worker = |shard: &str| -> Vec<String> {
        let mut workers: Vec<String> = log
            .delivered()
            .iter()
            .filter(|d| d.shard == shard)
            .map(|d| d.worker.clone())
            .collect();
        workers.dedup();
        workers
    };
    assert_eq!(by_worker(&keys[0]), ["w1"]);
    assert_eq!(by_worker(&keys[1]), ["w2"]);

    // It asks w1 to hand its shard to w2: w1 finishes, checkpoints and hands over.
    let lease = store.get_lease(&keys[0]).await?.ok_or("no lease")?;
    store.request_handoff(&lease, "w2").await?;
    wait_for("handed over", Duration::from_secs(20), || async {
        let owners = owners(&config, &app).await?;
        Ok((owners.get("w2") == Some(&2)).then_some(()))
    })
    .await?;

    // Nobody of ours took the lock meanwhile.
    java_lock = tables.read_lock(LEADER_LOCK_KEY).await?.ok_or("no lock")?;
    assert_eq!(java_lock.owner, "java-leader");
    // Our rows: what a Java leader needs to count a worker active.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs() as i64;
    for worker in ["w1", "w2"] {
        let row = tables.read_worker(worker).await?.ok_or("no row")?;
        let lut = row.last_update_epoch_seconds.ok_or("no lut")?;
        assert!((now - lut).abs() <= 60, "lut {lut} within 60 s of {now}");
        assert!(row.heartbeat.is_some());
    }
    let raw = dynamodb
        .get_item()
        .table_name(tables.workers_table())
        .key("wid", s("w1"))
        .send()
        .await?;
    let item = raw.item().ok_or("no item")?;
    assert!(
        matches!(item.get("sts"), Some(AttributeValue::M(_))),
        "{item:?}"
    );
    assert!(
        matches!(item.get("opr"), Some(AttributeValue::M(_))),
        "{item:?}"
    );
    heartbeat.abort();
    w1.stop().await?;
    w2.stop().await?;
    Ok(())
}

/// The Java KCL 3.5 keeps its leader lock and worker metrics in the lease table, marked by
/// `entityType`: they are not leases, never taken, assigned or deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_3_5_items_in_the_lease_table_are_left_alone() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let stream = unique_name("kcl-java35");
    let app = unique_name("kcl-java35-app");
    create_stream(&kinesis, &stream, 1).await?;
    let records = keyed_records("java35", 10, 2);
    put_records(&kinesis, &stream, &records).await?;
    let store = DynamoDbLeaseStore::new(dynamodb.clone(), &app);
    store.create_table_if_missing().await?;
    let leader_item = HashMap::from([
        ("leaseKey".to_owned(), s("Leader")),
        ("entityType".to_owned(), s("LEADER")),
        ("ownerName".to_owned(), s("java-35")),
        ("leaseDuration".to_owned(), s("120000")),
        (
            "recordVersionNumber".to_owned(),
            s("0b0c0d0e-0000-4000-8000-000000000000"),
        ),
    ]);
    let metrics_item = HashMap::from([
        ("leaseKey".to_owned(), s("java-35-worker")),
        ("entityType".to_owned(), s("WORKER_METRIC_STATS")),
        ("lut".to_owned(), AttributeValue::N("1800000000".into())),
    ]);
    for item in [&leader_item, &metrics_item] {
        dynamodb
            .put_item()
            .table_name(&app)
            .set_item(Some(item.clone()))
            .send()
            .await?;
    }
    let log = Log::default();
    let w1 = start_worker(
        fast_builder(&config, &stream, &app, "w1"),
        "w1",
        &log,
        Behaviour::default(),
    )
    .await?;
    wait_for("delivered", Duration::from_secs(30), || async {
        Ok((log.distinct_payloads() == records.len()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        leases(&config, &app).await?.len(),
        1,
        "one lease: the others are not leases"
    );
    for item in [&leader_item, &metrics_item] {
        let read = dynamodb
            .get_item()
            .table_name(&app)
            .set_key(Some(HashMap::from([(
                "leaseKey".to_owned(),
                item["leaseKey"].clone(),
            )])))
            .send()
            .await?;
        assert_eq!(read.item(), Some(item), "left as it was");
    }
    w1.stop().await?;
    Ok(())
}

/// Puts 8 keyed records every 100 ms until stopped; returns how many it put.
fn keep_producing(
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    label: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<TestResult<usize>> {
    tokio::spawn(async move {
        let mut put = 0;
        let mut round = 0;
        while !stop.load(Ordering::SeqCst) {
            let records = keyed_records(&format!("{label}-{round:05}"), 8, 8);
            put_records(&kinesis, &stream, &records).await?;
            put += records.len();
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(put)
    })
}

/// A worker of this crate and one taking its own leases as the Java KCL 2.x does share one
/// lease table: the leader leaves the other's leases alone and takes them when they
/// expire; the other takes the leader's when they expire. `kill -9` of either: every
/// record delivered, per-key order kept, redelivery only of what was not checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_survives_kill_9_of_either_worker() -> TestResult {
    let config = sdk_config().await?;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("kcl-mixed");
    let app = unique_name("kcl-mixed-app");
    create_stream(&kinesis, &stream, 4).await?;
    let log = Log::default();
    let ours = |worker: &str| fast_builder(&config, &stream, &app, worker);
    let taker = |worker: &str| {
        fast_builder(&config, &stream, &app, worker).coordination(Coordination::Workers)
    };
    let mut put = 0;
    for (round, victim_is_ours) in [(0, true), (1, false)] {
        let (victim_id, survivor_id) = if victim_is_ours {
            (format!("ours-{round}"), format!("taker-{round}"))
        } else {
            (format!("taker-{round}"), format!("ours-{round}"))
        };
        let build = |id: &str| {
            if id.starts_with("ours") {
                ours(id)
            } else {
                taker(id)
            }
        };
        let victim =
            start_worker(build(&victim_id), &victim_id, &log, Behaviour::default()).await?;
        let survivor = start_worker(
            build(&survivor_id),
            &survivor_id,
            &log,
            Behaviour::default(),
        )
        .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let label = if round == 0 { "r0" } else { "r1" };
        let producer = keep_producing(kinesis.clone(), stream.clone(), label, stop.clone());
        wait_for("both deliver", Duration::from_secs(30), || async {
            let delivered = log.delivered();
            let by = |w: &str| delivered.iter().any(|d| d.worker == w);
            Ok((by(&victim_id) && by(&survivor_id)).then_some(()))
        })
        .await?;
        victim.task.abort(); // kill -9
        tokio::time::sleep(FAILOVER * 3).await;
        stop.store(true, Ordering::SeqCst);
        put += producer.await??;
        wait_for(
            "the survivor delivers everything",
            Duration::from_secs(60),
            || async { Ok((log.distinct_payloads() == put).then_some(())) },
        )
        .await?;
        survivor.stop().await?;
    }
    assert_eq!(log.distinct_payloads(), put, "nothing lost");
    assert_per_key_order(&log);
    Ok(())
}
