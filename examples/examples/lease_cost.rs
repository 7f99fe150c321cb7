//! DynamoDB requests a consumer fleet makes for its leases, measured against the local
//! emulators with real processes: `--workers` worker processes (this program, started again
//! as children) share an idle `--shards`-shard stream; each counts every DynamoDB request
//! (HTTP attempt) of its scheduler with an SDK interceptor, by operation and by table (the
//! lease table, or the leader's coordinator tables), over a window after a warm-up, and
//! prints them; the parent adds them up per hour, to compare with `fleet_sim`'s model.
//!
//! ```sh
//! cargo build --release -p examples --examples
//! target/release/examples/lease_cost --workers 8 --shards 200 --window 300
//! target/release/examples/fleet_sim --shards 200 --workers 8 --window 300 --design leader
//! ```
//!
//! Intervals are the library's defaults (failover 10 s); no records are written:
//! checkpoints are the application's choice (one UpdateItem each).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use clap::Parser;
use kinesis_consumer::leases::Coordination;
use kinesis_consumer::{
    InitialPosition, ProcessRecordsInput, RecordProcessor, Scheduler, ShardEndedInput,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug, Clone)]
#[command(about)]
struct Args {
    /// Worker processes.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Shards of the idle stream.
    #[arg(long, default_value_t = 200)]
    shards: i32,
    /// Seconds counted, after the warm-up.
    #[arg(long, default_value_t = 300)]
    window: u64,
    /// Seconds before counting.
    #[arg(long, default_value_t = 60)]
    warm_up: u64,
    /// `leader` or `workers`.
    #[arg(long, default_value = "leader")]
    coordination: String,
    /// (Internal) run as worker process N of `--stream` and `--app`.
    #[arg(long, hide = true)]
    child: Option<usize>,
    #[arg(long, hide = true)]
    stream: Option<String>,
    #[arg(long, hide = true)]
    app: Option<String>,
}

/// Requests by (table kind, operation).
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
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_owned())
            .unwrap_or_default();
        let body: serde_json::Value = context
            .request()
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let table = body["TableName"].as_str().unwrap_or_default();
        let kind = if table.ends_with("-CoordinatorState") || table.ends_with("-WorkerMetricStats")
        {
            "coordinator"
        } else {
            "lease"
        };
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{kind} {operation}"))
            .or_default() += 1;
        Ok(())
    }
}

struct Idle;

#[async_trait]
impl RecordProcessor for Idle {
    async fn process_records(
        &mut self,
        _input: ProcessRecordsInput,
    ) -> kinesis_consumer::ProcessResult {
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        let _ = input.checkpointer.checkpoint().await;
    }
}

/// One worker: runs a scheduler, prints its counts over the window as one JSON line.
async fn child(args: &Args, index: usize) -> Result<(), Error> {
    let config = aws_config::load_from_env().await;
    let count = Counts::default();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .interceptor(count.clone())
            .build(),
    );
    let mut builder = Scheduler::builder(&config)
        .stream(args.stream.as_deref().ok_or("--stream")?)
        .application_name(args.app.as_deref().ok_or("--app")?)
        .worker_id(format!("worker-{index}"))
        .initial_position(InitialPosition::TrimHorizon)
        .dynamodb_client(dynamodb)
        .processor_factory(|| Idle);
    if args.coordination == "workers" {
        builder = builder.coordination(Coordination::Workers);
    }
    let scheduler = builder.build().await?;
    let run = tokio::spawn(scheduler.run());
    tokio::time::sleep(Duration::from_secs(args.warm_up)).await;
    let before = count.snapshot();
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let after = count.snapshot();
    let delta: BTreeMap<String, u64> = after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .collect();
    println!("{}", serde_json::to_string(&delta)?);
    run.abort();
    Ok(())
}

async fn parent(args: &Args) -> Result<(), Error> {
    let emulator = kinesis_emulator::Emulator::shared().await?;
    let config = emulator.sdk_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        % 1_000_000_000;
    let stream = format!("lease-cost-{millis}");
    let app = format!("lease-cost-app-{millis}");
    kinesis_emulator::create_stream(&kinesis, &stream, args.shards).await?;
    let mut env = vec![
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
    ];
    if let Some(endpoint) = emulator.kinesis_endpoint() {
        env.push(("AWS_ENDPOINT_URL_KINESIS".into(), endpoint));
    }
    if let Some(endpoint) = emulator.dynamodb_endpoint() {
        env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), endpoint));
    }
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for index in 0..args.workers {
        let child = Command::new(&exe)
            .args([
                "--child",
                &index.to_string(),
                "--stream",
                &stream,
                "--app",
                &app,
            ])
            .args(["--window", &args.window.to_string()])
            .args(["--warm-up", &args.warm_up.to_string()])
            .args(["--coordination", &args.coordination])
            .envs(env.iter().cloned())
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        children.push(child);
    }
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for mut child in children {
        let stdout = child.stdout.take().ok_or("no stdout")?;
        for line in BufReader::new(stdout).lines() {
            let counts: BTreeMap<String, u64> = serde_json::from_str(&line?)?;
            for (operation, n) in counts {
                *total.entry(operation).or_default() += n;
            }
        }
        child.wait()?;
    }
    let per_hour = 3600.0 / args.window as f64;
    println!(
        "{} worker processes x {} shards ({}), idle stream, defaults; {} s counted after {} s:",
        args.workers, args.shards, args.coordination, args.window, args.warm_up
    );
    let hourly: BTreeMap<String, f64> = total
        .iter()
        .map(|(operation, n)| (operation.clone(), (*n as f64 * per_hour).round()))
        .collect();
    for (operation, n) in &hourly {
        println!("{operation:>28}: {n:>10.0} requests per hour");
    }
    println!("{}", serde_json::to_string(&hourly)?);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    match args.child {
        Some(index) => child(&args, index).await,
        None => parent(&args).await,
    }
}
