//! `kinesis multilang` with AWS's real amazon-kclpy (from PyPI, without its jars) running
//! `tests/multilang/processor.py`, against the local emulators.

#![allow(clippy::unwrap_used, missing_docs)] // A panic is how a test reports failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kinesis_emulator::Emulator;

mod common;
use common::{kinesis, unique};

const KCLPY: &str = "amazon-kclpy==3.2.0";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("..").join("..").join("target"))
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Python interpreter and the folder to put on PYTHONPATH for amazon-kclpy: its source
/// distribution, downloaded and unpacked rather than installed (its install step fetches
/// the Java daemon's jars from Maven, which a daemon of ours does not need). amazon_kclpy
/// itself needs nothing beyond the standard library. A virtualenv provides pip.
fn kclpy() -> (PathBuf, PathBuf) {
    let base = target_dir().join("py-kclpy");
    let venv = base.join("venv");
    let python = venv.join("bin").join("python");
    let source = base.join("amazon_kclpy-3.2.0");
    fs::create_dir_all(&base).unwrap();
    let lock = File::create(target_dir().join("py-kclpy.lock")).unwrap();
    lock.lock().unwrap();
    if source.join("amazon_kclpy").join("kcl.py").is_file() && python.exists() {
        return (python, source);
    }
    let python3 = if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    };
    run(Command::new(python3).args(["-m", "venv"]).arg(&venv));
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args([KCLPY, "--no-deps", "--no-binary", ":all:", "-d"])
        .arg(&base));
    run(Command::new("tar")
        .arg("xzf")
        .arg(base.join("amazon_kclpy-3.2.0.tar.gz"))
        .arg("-C")
        .arg(&base));
    assert!(source.join("amazon_kclpy").join("kcl.py").is_file());
    (python, source)
}

const AWS_KCL: &str = "aws-kcl@2.3.2";

/// The `node_modules` folder holding AWS's aws-kcl for Node.js (installed with npm the
/// first time; it has no install script, and its `kcl-bootstrap`, which would download the
/// Java daemon, is not used).
fn aws_kcl() -> PathBuf {
    let base = target_dir().join("node-aws-kcl");
    let modules = base.join("node_modules");
    fs::create_dir_all(&base).unwrap();
    let lock = File::create(target_dir().join("node-aws-kcl.lock")).unwrap();
    lock.lock().unwrap();
    let stamp = base.join("installed");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(AWS_KCL) {
        return modules;
    }
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefix",
        ])
        .arg(&base)
        .arg(AWS_KCL));
    assert!(modules.join("aws-kcl").join("index.js").is_file());
    fs::write(&stamp, AWS_KCL).unwrap();
    modules
}

/// One application: a stream, a properties file, and the folder the processors write to.
struct App {
    stream: String,
    dir: PathBuf,
    properties: PathBuf,
}

impl App {
    /// A stream of `shards` shards and the properties of an application reading it, with
    /// the emulators' endpoints in the file (only the credentials come from the
    /// environment) and `extra` lines appended.
    async fn new(prefix: &str, shards: u32, extra: &str) -> App {
        let (python, _) = kclpy();
        let stream = unique(prefix);
        let dir = std::env::temp_dir().join(unique(&format!("{prefix}-out")));
        fs::create_dir_all(&dir).unwrap();
        let output = kinesis(&["streams", "create"])
            .await
            .args(["--stream", &stream, "--shards", &shards.to_string()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let emulator = Emulator::shared().await.unwrap();
        let mut properties = format!(
            "# written by tests/multilang.rs\n\
             executableName = {} {}\n\
             streamName = {stream}\n\
             applicationName = {stream}-app\n\
             AWSCredentialsProvider = DefaultCredentialsProvider\n\
             processingLanguage = python/3\n\
             initialPositionInStream = TRIM_HORIZON\n\
             regionName = us-east-1\n\
             idleTimeBetweenReadsInMillis = 200\n\
             failoverTimeMillis = 3000\n\
             shardSyncIntervalMillis = 1000\n\
             taskBackoffTimeMillis = 200\n\
             metricsLevel = NONE\n",
            python.display(),
            manifest_dir()
                .join("tests")
                .join("multilang")
                .join("processor.py")
                .display()
        );
        if let Some(endpoint) = emulator.kinesis_endpoint() {
            properties.push_str(&format!("kinesisEndpoint = {endpoint}\n"));
        }
        if let Some(endpoint) = emulator.dynamodb_endpoint() {
            properties.push_str(&format!("dynamoDBEndpoint = {endpoint}\n"));
        }
        properties.push_str(extra);
        let path = dir.join("app.properties");
        fs::write(&path, properties).unwrap();
        App {
            stream,
            dir,
            properties: path,
        }
    }

    /// Starts a daemon; its standard error goes to `<worker>.log`.
    async fn start(&self, worker: &str) -> Daemon {
        self.start_with(worker, &[], &[]).await
    }

    /// Starts a daemon with more flags and environment variables.
    async fn start_with(&self, worker: &str, flags: &[&str], env: &[(&str, &Path)]) -> Daemon {
        let (_, source) = kclpy();
        let log = self.dir.join(format!("{worker}.log"));
        let mut command = kinesis(&["-v", "multilang"]).await;
        // The emulators' endpoints are the properties file's (see `new`), not the
        // environment's.
        let emulator = Emulator::shared().await.unwrap();
        if emulator.kinesis_endpoint().is_some() {
            command.env_remove("AWS_ENDPOINT_URL_KINESIS");
        }
        if emulator.dynamodb_endpoint().is_some() {
            command.env_remove("AWS_ENDPOINT_URL_DYNAMODB");
        }
        let child = command
            .arg("--properties")
            .arg(&self.properties)
            .args(["--worker-id", worker])
            .args(flags)
            .envs(env.iter().copied())
            .env("PYTHONPATH", &source)
            .env("OUT_DIR", &self.dir)
            .env("WORKER", worker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Writes one record per line (`kinesis produce`, aggregated, random keys).
    async fn produce(&self, lines: &[String]) {
        let mut child = kinesis(&["produce"])
            .await
            .args(["--stream", &self.stream])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = lines.join("\n");
        input.push('\n');
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["failed"], 0, "{summary}");
    }

    async fn reshard(&self, args: &[&str]) {
        let output = kinesis(&["streams", "reshard", "--stream", &self.stream])
            .await
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }

    /// Every record line the processors wrote.
    fn records(&self) -> Vec<serde_json::Value> {
        let Ok(text) = fs::read_to_string(self.dir.join("records.jsonl")) else {
            return Vec::new();
        };
        text.lines()
            .filter(|line| line.ends_with('}'))
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// How many times each data was delivered.
    fn deliveries(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for record in self.records() {
            *counts
                .entry(record["data"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        counts
    }

    /// Waits until every one of `data` was delivered.
    async fn wait_for(&self, data: &[String], daemons: &mut [&mut Daemon]) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let delivered = self.deliveries();
            let missing: Vec<&String> = data
                .iter()
                .filter(|d| !delivered.contains_key(*d))
                .collect();
            if missing.is_empty() {
                return;
            }
            for daemon in daemons.iter_mut() {
                if let Some(status) = daemon.child.try_wait().unwrap() {
                    panic!("daemon exited ({status}): {}", daemon.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} records missing, e.g. {:?}; logs: {}",
                missing.len(),
                &missing[..missing.len().min(5)],
                daemons
                    .iter()
                    .map(|d| d.log_text())
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        run(Command::new("kill").args([signal, &self.child.id().to_string()]));
    }

    /// SIGTERM, then the exit status (within 60 s).
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log_text());
            }
            assert!(Instant::now() < deadline, "no exit: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn batch(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

/// Every AWS call of a daemon, through proxies that record them, is one the README's IAM
/// table lists for `multilang`: start-up, processing, checkpoints, a graceful stop.
// Multi-threaded: the proxies run on the runtime while the test waits for the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_calls_only_the_iam_actions_the_readme_lists() {
    let Some(proxies) = common::RecordingProxies::start().await else {
        return;
    };
    // Later keys of a properties file win: the daemon goes through the proxies.
    let app = App::new(
        "ml-iam",
        1,
        &format!(
            "kinesisEndpoint = {}\ndynamoDBEndpoint = {}\n",
            proxies.kinesis.endpoint(),
            proxies.dynamodb.endpoint()
        ),
    )
    .await;
    let mut daemon = app.start("w1").await;
    let data = batch("iam", 20);
    app.produce(&data).await;
    app.wait_for(&data, &mut [&mut daemon]).await;
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status}: {log}");
    let used: BTreeSet<String> = proxies.actions().into_keys().collect();
    let documented = common::documented_actions();
    let allowed = documented.get("multilang").expect("a multilang row");
    let missing: Vec<&String> = used.difference(allowed).collect();
    assert!(
        missing.is_empty(),
        "the README misses {missing:?} (used {used:?})"
    );
    assert!(used.contains("kinesis:GetRecords"), "{used:?}");
    assert!(used.contains("dynamodb:UpdateItem"), "{used:?}");
}

#[tokio::test]
async fn kclpy_gets_every_record_through_a_split_and_a_merge() {
    let app = App::new("ml-reshard", 2, "").await;
    let mut daemon = app.start("w1").await;
    let mut all = batch("before", 200);
    app.produce(&all).await;
    app.wait_for(&all, &mut [&mut daemon]).await;

    app.reshard(&["--split", "shardId-000000000000"]).await;
    let after_split = batch("split", 200);
    app.produce(&after_split).await;
    all.extend(after_split);
    app.wait_for(&all, &mut [&mut daemon]).await;

    // The split's children are shards 2 and 3.
    app.reshard(&["--merge", "shardId-000000000002", "shardId-000000000003"])
        .await;
    let after_merge = batch("merge", 200);
    app.produce(&after_merge).await;
    all.extend(after_merge);
    app.wait_for(&all, &mut [&mut daemon]).await;

    let records = app.records();
    let shards: BTreeSet<&str> = records
        .iter()
        .map(|r| r["shard"].as_str().unwrap())
        .collect();
    assert!(shards.contains("shardId-000000000002"), "{shards:?}");
    assert!(
        shards.contains("shardId-000000000004"),
        "the merged shard: {shards:?}"
    );
    // Aggregated user records arrive deaggregated, with their sub-sequence numbers.
    assert!(records.iter().any(|r| r["sub"].as_u64().unwrap() > 0));
    let deliveries = app.deliveries();
    for data in &all {
        assert_eq!(deliveries[data], 1, "{data} delivered once");
    }
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("shutdown requested: checkpointed"), "{log}");
}

#[tokio::test]
async fn after_kill_9_a_restarted_daemon_delivers_again_only_what_was_not_checkpointed() {
    let app = App::new("ml-restart", 2, "").await;
    let mut first = app.start("w1").await;
    let checkpointed = batch("done", 100);
    app.produce(&checkpointed).await;
    app.wait_for(&checkpointed, &mut [&mut first]).await;
    // Delivered but not checkpointed: the processor checkpoints no batch with "hold".
    let held = batch("hold", 20);
    app.produce(&held).await;
    app.wait_for(&held, &mut [&mut first]).await;
    first.signal("-KILL");
    let _ = first.child.wait();
    let after = batch("after", 50);
    app.produce(&after).await;

    // A new worker takes the leases once they expired (failover 3 s).
    let mut second = app.start("w2").await;
    app.wait_for(&after, &mut [&mut second]).await;
    let deliveries = app.deliveries();
    for data in &checkpointed {
        assert_eq!(
            deliveries[data], 1,
            "{data}: checkpointed, not delivered again"
        );
    }
    for data in &held {
        assert_eq!(
            deliveries[data], 2,
            "{data}: after the checkpoint, delivered again"
        );
    }
    for data in &after {
        assert_eq!(deliveries[data], 1, "{data}");
    }
    assert!(
        app.records()
            .iter()
            .any(|r| r["worker"] == "w2" && r["data"].as_str().unwrap().starts_with("hold")),
        "w2 delivered the held records"
    );
    let (status, log) = second.terminate();
    assert!(status.success(), "{status}: {log}");
}

#[tokio::test]
async fn two_daemons_share_the_shards_and_hand_over_on_sigterm() {
    let app = App::new("ml-share", 4, "").await;
    let mut first = app.start("w1").await;
    let mut all = batch("one", 200);
    app.produce(&all).await;
    app.wait_for(&all, &mut [&mut first]).await;

    let mut second = app.start("w2").await;
    // The leader balances: w2 gets shards and processes records of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    loop {
        let more = batch(&format!("two{round}"), 50);
        app.produce(&more).await;
        all.extend(more);
        app.wait_for(&all, &mut [&mut first, &mut second]).await;
        let workers: BTreeSet<String> = app
            .records()
            .iter()
            .filter(|r| r["data"].as_str().unwrap().starts_with("two"))
            .map(|r| r["worker"].as_str().unwrap().to_owned())
            .collect();
        if workers.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w2 never got a shard: {workers:?}"
        );
        round += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let (status, log) = first.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("shutdown requested: checkpointed"), "{log}");
    let last = batch("three", 200);
    app.produce(&last).await;
    all.extend(last.iter().cloned());
    app.wait_for(&all, &mut [&mut second]).await;
    let records = app.records();
    let shards_of_w2: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["data"].as_str().unwrap().starts_with("three"))
        .map(|r| {
            assert_eq!(r["worker"], "w2", "w1 stopped");
            r["shard"].as_str().unwrap()
        })
        .collect();
    assert_eq!(shards_of_w2.len(), 4, "w2 took over every shard");
    // Nothing lost, nothing twice: leases moved by graceful handoffs (shutdownRequested,
    // the child's checkpoint, then the lease), when w2 joined and when w1 stopped.
    let deliveries = app.deliveries();
    let twice: Vec<&String> = all.iter().filter(|d| deliveries[*d] != 1).collect();
    assert!(twice.is_empty(), "not delivered exactly once: {twice:?}");
    let (status, log) = second.terminate();
    assert!(status.success(), "{status}: {log}");
}

#[tokio::test]
async fn failing_children_are_handled_as_documented() {
    let app = App::new("ml-fail", 1, "timeoutInSeconds = 5\n").await;
    let mut daemon = app.start("w1").await;
    let one = |data: &str| vec![data.to_owned()];

    // A processor that raises: amazon-kclpy prints the traceback (our log, with the shard)
    // and answers; the shard goes on.
    app.produce(&one("raise")).await;
    app.wait_for(&one("raise"), &mut [&mut daemon]).await;
    let ok1 = batch("ok1", 20);
    app.produce(&ok1).await;
    app.wait_for(&ok1, &mut [&mut daemon]).await;
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|line| line.contains("ValueError: asked to raise by record")
                && line.contains("shard=shardId-000000000000")),
        "{log}"
    );

    // A line that is not a message: skipped and logged.
    app.produce(&one("garbage")).await;
    let ok2 = batch("ok2", 20);
    app.produce(&ok2).await;
    app.wait_for(&ok2, &mut [&mut daemon]).await;
    let log = daemon.log_text();
    assert!(
        log.contains("skipping a line of the child's standard output"),
        "{log}"
    );
    assert!(log.contains("this line is not a message"), "{log}");

    // A child that exits mid-batch: the shard restarts from its checkpoint with a new
    // child, which gets the batch again.
    app.produce(&one("exit")).await;
    let ok3 = batch("ok3", 20);
    app.produce(&ok3).await;
    app.wait_for(&ok3, &mut [&mut daemon]).await;
    let log = daemon.log_text();
    assert!(
        log.contains(
            "child process failed during processRecords: the child exited (exit status 3)"
        ),
        "{log}"
    );
    assert_eq!(
        app.deliveries()["exit"],
        2,
        "delivered again after the restart"
    );

    // A child that hangs past timeoutInSeconds: killed, the shard restarts.
    app.produce(&one("hang")).await;
    let ok4 = batch("ok4", 20);
    app.produce(&ok4).await;
    app.wait_for(&ok4, &mut [&mut daemon]).await;
    let log = daemon.log_text();
    assert!(
        log.contains("no message from the child within 5s (timeoutInSeconds) while processRecords was under way"),
        "{log}"
    );
    assert_eq!(
        app.deliveries()["hang"],
        2,
        "delivered again after the restart"
    );

    let deliveries = app.deliveries();
    for data in ok1.iter().chain(&ok2).chain(&ok3).chain(&ok4) {
        assert!(deliveries[data] >= 1, "{data}");
    }
    assert_eq!(deliveries["raise"], 1, "the batch counted as processed");
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status}: {log}");
}

#[tokio::test]
async fn aws_kcl_for_nodejs_runs_unchanged() {
    let modules = aws_kcl();
    let app = App::new("ml-node", 2, "").await;
    let script = manifest_dir()
        .join("tests")
        .join("multilang")
        .join("processor.js");
    let executable = format!("node {}", script.display());
    let flags = ["--executable", executable.as_str()];
    let env = [("NODE_PATH", modules.as_path())];
    let mut first = app.start_with("w1", &flags, &env).await;
    let mut all = batch("node", 200);
    app.produce(&all).await;
    app.wait_for(&all, &mut [&mut first]).await;
    // Through a split: shardEnded is checkpointed by the Node.js processor.
    app.reshard(&["--split", "shardId-000000000001"]).await;
    let split = batch("node-split", 200);
    app.produce(&split).await;
    all.extend(split);
    app.wait_for(&all, &mut [&mut first]).await;
    let (status, log) = first.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("shutdown requested: checkpointed"), "{log}");
    assert!(!log.contains("checkpoint failed"), "{log}");

    // Everything was checkpointed: a new daemon delivers only new records.
    let mut second = app.start_with("w2", &flags, &env).await;
    let last = batch("node-last", 50);
    app.produce(&last).await;
    all.extend(last);
    app.wait_for(&all, &mut [&mut second]).await;
    let records = app.records();
    assert!(records.iter().any(|r| r["shard"] == "shardId-000000000003"));
    let deliveries = app.deliveries();
    for data in &all {
        assert_eq!(deliveries[data], 1, "{data}");
    }
    let (status, log) = second.terminate();
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn bad_properties_are_one_line_errors_before_any_call() {
    let dir = std::env::temp_dir().join(unique("ml-bad"));
    fs::create_dir_all(&dir).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_kinesis"))
        .args(["multilang", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes: 0 success"));
    for (properties, flags, expected) in [
        (
            "executableName = python3 app.py\nstreamName = s\n",
            &[][..],
            "applicationName is required (or --app)",
        ),
        (
            "executableName = python3 app.py\nstreamName = s\napplicationName = a\n\
             failoverTimeMillis = soon\n",
            &[],
            "app.properties:4: failoverTimeMillis = \"soon\": expected a whole number",
        ),
        (
            "executableName = no-such-program-for-kinesis-tests app.py\nstreamName = s\n\
             applicationName = a\n",
            &[],
            "executableName: cannot find the program \"no-such-program-for-kinesis-tests\"",
        ),
        // A flag overrides the file.
        (
            "executableName = python3 app.py\nstreamName = s\napplicationName = a\n",
            &["--executable", "./no-such-file.py"],
            "cannot find the program \"./no-such-file.py\"",
        ),
    ] {
        let path = dir.join("app.properties");
        fs::write(&path, properties).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_kinesis"))
            .arg("multilang")
            .arg("--properties")
            .arg(&path)
            .args(flags)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
}
