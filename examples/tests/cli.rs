//! The example programs as a user runs them: subprocesses against the local emulators,
//! configured only through the standard AWS environment variables.

#![allow(clippy::unwrap_used, missing_docs)] // A panic is how a test reports failure.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use kinesis_emulator::Emulator;

async fn command(program: &str) -> Command {
    let emulator = Emulator::shared().await.unwrap();
    let mut command = Command::new(program);
    if let Some(endpoint) = emulator.kinesis_endpoint() {
        command.env("AWS_ENDPOINT_URL_KINESIS", endpoint);
    }
    if let Some(endpoint) = emulator.dynamodb_endpoint() {
        command.env("AWS_ENDPOINT_URL_DYNAMODB", endpoint);
    }
    if emulator.is_local() {
        command
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test");
    }
    command
}

fn check(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

#[tokio::test]
async fn every_program_prints_help() {
    for program in [
        env!("CARGO_BIN_EXE_produce"),
        env!("CARGO_BIN_EXE_consume"),
        env!("CARGO_BIN_EXE_leases"),
        env!("CARGO_BIN_EXE_demo"),
        env!("CARGO_BIN_EXE_smoke"),
    ] {
        let output = Command::new(program).arg("--help").output().unwrap();
        assert!(check(&output).contains("Usage:"), "{program}");
    }
}

#[tokio::test]
async fn produce_then_two_consumers_then_leases() {
    let stream = unique("cli");
    let app = unique("cli-app");

    // produce: one JSON summary line.
    let output = command(env!("CARGO_BIN_EXE_produce"))
        .await
        .args([
            "--stream",
            &stream,
            "--create-shards",
            "2",
            "--records",
            "600",
        ])
        .args(["--size", "80", "--keys", "20"])
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(check(&output).trim()).unwrap();
    assert_eq!(summary["user_records"], 600);
    assert_eq!(summary["failed"], 0);
    assert!(
        summary["kinesis_records"].as_u64().unwrap() < 600,
        "aggregated"
    );
    assert!(summary["put_records_calls"].as_u64().unwrap() >= 1);

    // consume: two workers sharing the application.
    let dir = std::env::temp_dir().join(unique("cli-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut workers = Vec::new();
    for worker in ["w1", "w2"] {
        let path = dir.join(format!("{worker}.jsonl"));
        let child = command(env!("CARGO_BIN_EXE_consume"))
            .await
            .args(["--stream", &stream, "--app", &app, "--worker-id", worker])
            .args([
                "--output",
                path.to_str().unwrap(),
                "--exit-after-idle",
                "5",
                "--polling",
            ])
            .args(["--failover-ms", "3000", "--idle-between-reads-ms", "200"])
            .spawn()
            .unwrap();
        workers.push((path, child));
    }
    let mut ids = BTreeSet::new();
    for (path, mut child) in workers {
        assert!(child.wait().unwrap().success(), "consume exits cleanly");
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(line["shard_id"].as_str().unwrap().starts_with("shardId-"));
            assert!(line["sequence_number"].as_str().is_some());
            assert!(line["sub_sequence_number"].as_u64().is_some());
            let data: serde_json::Value =
                serde_json::from_str(line["data"].as_str().unwrap()).unwrap();
            assert_eq!(line["partition_key"], data["key"]);
            ids.insert(data["id"].as_u64().unwrap());
        }
    }
    assert_eq!(
        ids,
        (0..600).collect::<BTreeSet<_>>(),
        "every record consumed"
    );

    // consume --fan-out: another application reads it all again through SubscribeToShard.
    let path = dir.join("fan-out.jsonl");
    let fan_out_app = unique("cli-efo-app");
    let output = command(env!("CARGO_BIN_EXE_consume"))
        .await
        .args(["--stream", &stream, "--app", &fan_out_app, "--fan-out"])
        .args(["--output", path.to_str().unwrap(), "--exit-after-idle", "3"])
        .args(["--failover-ms", "3000"])
        .output()
        .unwrap();
    check(&output);
    let fan_out_ids: BTreeSet<u64> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            let data: serde_json::Value =
                serde_json::from_str(line["data"].as_str().unwrap()).unwrap();
            data["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(fan_out_ids, ids, "every record consumed with --fan-out");

    // leases: both shards checkpointed, no owner after the graceful stops.
    let output = command(env!("CARGO_BIN_EXE_leases"))
        .await
        .args(["--app", &app, "--stream", &stream, "--json"])
        .output()
        .unwrap();
    let leases: Vec<serde_json::Value> = check(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(leases.len(), 2);
    for lease in &leases {
        assert!(
            lease["checkpoint"]
                .as_str()
                .unwrap()
                .chars()
                .all(|c| c.is_ascii_digit()),
            "{lease}"
        );
        assert!(lease["owner"].is_null(), "released: {lease}");
    }
    let table = check(
        &command(env!("CARGO_BIN_EXE_leases"))
            .await
            .args(["--app", &app])
            .output()
            .unwrap(),
    );
    assert!(table.contains("2 leases in table"), "{table}");

    // leases --reset-to: described without --yes, done with it.
    let shard = leases[0]["shard_id"].as_str().unwrap().to_owned();
    let reset = |confirm: bool| {
        let (app, shard) = (app.clone(), shard.clone());
        async move {
            let mut command = command(env!("CARGO_BIN_EXE_leases")).await;
            command.args([
                "--app",
                &app,
                "--shard",
                &shard,
                "--reset-to",
                "trim_horizon",
            ]);
            if confirm {
                command.arg("--yes");
            }
            command.output().unwrap()
        }
    };
    assert_eq!(reset(false).await.status.code(), Some(2));
    check(&reset(true).await);
    let output = command(env!("CARGO_BIN_EXE_leases"))
        .await
        .args(["--app", &app, "--json"])
        .output()
        .unwrap();
    let reset_lease = check(&output)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["shard_id"] == shard.as_str())
        .unwrap();
    assert_eq!(reset_lease["checkpoint"], "TRIM_HORIZON");
}

/// Runs `produce` for `records` records into `stream` (creating it with `create` shards).
async fn produce(stream: &str, create: Option<u32>, records: u32) {
    let mut command = command(env!("CARGO_BIN_EXE_produce")).await;
    command.args(["--stream", stream, "--records", &records.to_string()]);
    command.args(["--size", "60", "--keys", "10"]);
    if let Some(shards) = create {
        command.args(["--create-shards", &shards.to_string()]);
    }
    check(&command.output().unwrap());
}

/// The application's leases as `leases --json` prints them.
async fn lease_lines(app: &str) -> Vec<serde_json::Value> {
    let output = command(env!("CARGO_BIN_EXE_leases"))
        .await
        .args(["--app", app, "--json"])
        .output()
        .unwrap();
    check(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Item 3: every write to `/dev/full` fails: `consume` stops at once with a non-zero exit
/// and checkpoints nothing.
#[tokio::test]
async fn consume_stops_at_a_write_error_without_checkpointing() {
    let stream = unique("cli-full");
    let app = unique("cli-full-app");
    produce(&stream, Some(1), 50).await;
    let started = std::time::Instant::now();
    let output = command(env!("CARGO_BIN_EXE_consume"))
        .await
        .args(["--stream", &stream, "--app", &app, "--output", "/dev/full"])
        .args(["--exit-after-idle", "30", "--failover-ms", "3000"])
        .args(["--idle-between-reads-ms", "200"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "exit 0 after write errors: {stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "stopped at once, not after the idle time: {stderr}"
    );
    let leases = lease_lines(&app).await;
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0]["checkpoint"], "TRIM_HORIZON", "{stderr}");
}

/// Item 3: stdout closed by its reader (`consume | head -1`): `consume` ends at once and
/// cleanly, and its checkpoint covers what was written, not the batch that hit EPIPE.
#[tokio::test]
async fn consume_ends_when_stdout_closes_and_checkpoints_only_what_it_wrote() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let stream = unique("cli-pipe");
    let app = unique("cli-pipe-app");
    produce(&stream, Some(1), 20).await;
    let mut child = command(env!("CARGO_BIN_EXE_consume"))
        .await
        .args(["--stream", &stream, "--app", &app])
        .args(["--failover-ms", "3000", "--idle-between-reads-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    // The first batch holds all 20 records (they fit in the pipe); wait for its
    // checkpoint, then close the pipe and write more.
    let mut written_to = None;
    for _ in 0..100 {
        let leases = lease_lines(&app).await;
        if let Some(seq) = leases[0]["checkpoint"]
            .as_str()
            .filter(|c| c.starts_with(char::is_numeric))
        {
            written_to = Some(seq.to_owned());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let written_to = written_to.expect("first batch checkpointed");
    assert!(first["sequence_number"].as_str().is_some());
    drop(stdout);
    produce(&stream, None, 20).await;
    let closed = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if closed.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("consume kept running after its stdout closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}: {stderr}");
    let leases = lease_lines(&app).await;
    assert_eq!(leases[0]["checkpoint"], written_to.as_str(), "{stderr}");
    assert!(leases[0]["owner"].is_null(), "released: {stderr}");
}

/// Item 3: `--exit-after-idle` means caught up (every held shard read to its tip), not
/// "no record for N s": reads one Kinesis record per call, 1.5 s apart, and stops only
/// after the last one, with everything written.
#[tokio::test]
async fn consume_exit_after_idle_waits_until_caught_up() {
    let stream = unique("cli-caught-up");
    let app = unique("cli-caught-up-app");
    // 1 KB records: about five 50 KB aggregates on the one shard.
    let output = command(env!("CARGO_BIN_EXE_produce"))
        .await
        .args([
            "--stream",
            &stream,
            "--create-shards",
            "1",
            "--records",
            "250",
        ])
        .args(["--size", "1000", "--keys", "10"])
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(check(&output).trim()).unwrap();
    assert!(
        summary["kinesis_records"].as_u64().unwrap() >= 3,
        "{summary}"
    );
    let dir = std::env::temp_dir().join(unique("cli-caught-up-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.jsonl");
    let output = command(env!("CARGO_BIN_EXE_consume"))
        .await
        .args(["--stream", &stream, "--app", &app])
        .args(["--output", path.to_str().unwrap(), "--exit-after-idle", "1"])
        .args(["--max-records", "1", "--idle-between-reads-ms", "1500"])
        .args(["--failover-ms", "10000"])
        .output()
        .unwrap();
    check(&output);
    let ids: BTreeSet<u64> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            let data: serde_json::Value =
                serde_json::from_str(line["data"].as_str().unwrap().trim_end_matches('.')).unwrap();
            data["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        (0..250).collect::<BTreeSet<_>>(),
        "stopped before caught up"
    );
}
