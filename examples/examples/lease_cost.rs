//! DynamoDB requests one worker makes per hour for its leases, measured against the local
//! emulators: 4 workers share an idle 32-shard stream; every lease table request (HTTP
//! attempt) is counted per worker and operation by an SDK interceptor.
//!
//! Intervals are the defaults scaled down by `SCALE` (failover 2 s instead of 10 s, shard
//! sync 12 s instead of 60 s, parent polls 2 s instead of 10 s), so one minute here is
//! `SCALE` minutes at the defaults; the counts are scaled back to one hour of defaults.
//! No records are written: checkpoints depend on the application, not on the library.
//!
//! ```sh
//! cargo run -p examples --example lease_cost
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use kinesis_consumer::{
    InitialPosition, ProcessRecordsInput, RecordProcessor, Scheduler, ShardEndedInput,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

const WORKERS: usize = 4;
const SHARDS: i32 = 32;
/// Default failover time / the one used here.
const SCALE: u32 = 5;
/// Measured window (after a warm-up), at the scaled intervals.
const WINDOW: Duration = Duration::from_secs(120);
const WARM_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone)]
struct Counts(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counts {
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Intercept for Counts {
    fn name(&self) -> &'static str {
        "Counts"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_owned())
            .unwrap_or_default();
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(operation)
            .or_default() += 1;
        Ok(())
    }
}

struct Idle;

#[async_trait]
impl RecordProcessor for Idle {
    async fn process_records(&mut self, _input: ProcessRecordsInput) {}

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        let _ = input.checkpointer.checkpoint().await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let emulator = kinesis_emulator::Emulator::shared().await?;
    let config = emulator.sdk_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        % 1_000_000_000;
    let stream = format!("lease-cost-{millis}");
    let app = format!("lease-cost-app-{millis}");
    kinesis_emulator::create_stream(&kinesis, &stream, SHARDS).await?;

    let failover = Duration::from_secs(10) / SCALE;
    let mut workers = Vec::new();
    let mut counts = Vec::new();
    for w in 0..WORKERS {
        let count = Counts::default();
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&config)
                .interceptor(count.clone())
                .build(),
        );
        let scheduler = Scheduler::builder(&config)
            .stream(&stream)
            .application_name(&app)
            .worker_id(format!("worker-{w}"))
            .initial_position(InitialPosition::TrimHorizon)
            .failover_time(failover)
            .shard_sync_interval(Duration::from_secs(60) / SCALE)
            .parent_shard_poll_interval(Duration::from_secs(10) / SCALE)
            .idle_time_between_reads(Duration::from_secs(2))
            .dynamodb_client(dynamodb)
            .processor_factory(|| Idle)
            .build()
            .await?;
        let stop = scheduler.shutdown_handle();
        workers.push((stop, tokio::spawn(scheduler.run())));
        counts.push(count);
    }
    tokio::time::sleep(WARM_UP).await;
    let before: Vec<_> = counts.iter().map(Counts::snapshot).collect();
    tokio::time::sleep(WINDOW).await;
    let after: Vec<_> = counts.iter().map(Counts::snapshot).collect();

    // Per worker-hour at default intervals: the window is SCALE times longer there.
    let hours = (WINDOW * SCALE).as_secs_f64() / 3600.0;
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for (b, a) in before.iter().zip(&after) {
        for (operation, n) in a {
            let delta = n - b.get(operation).copied().unwrap_or(0);
            *total.entry(operation.clone()).or_default() += delta as f64;
        }
    }
    println!("{WORKERS} workers x {SHARDS} shards, idle stream, failover 10 s / {SCALE}, window {WINDOW:?} after {WARM_UP:?}");
    let mut sum = 0.0;
    for (operation, n) in &total {
        let per_hour = n / WORKERS as f64 / hours;
        sum += per_hour;
        println!("{operation:>12}: {per_hour:>8.0} requests per worker-hour");
    }
    println!("{:>12}: {sum:>8.0} requests per worker-hour", "total");
    for (stop, task) in workers {
        stop.shutdown();
        let _ = task.await;
    }
    Ok(())
}
