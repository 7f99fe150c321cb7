//! `kinesis` as a user runs it: subprocesses against the local emulators, configured only
//! through the standard AWS environment variables.

#![allow(clippy::unwrap_used, missing_docs)] // A panic is how a test reports failure.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use kinesis_emulator::Emulator;

mod common;
use common::{documented_actions, kinesis, unique, RecordingProxies};

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

#[tokio::test]
async fn every_subcommand_prints_help_with_the_exit_codes() {
    for subcommand in [
        &[][..],
        &["produce"],
        &["consume"],
        &["leases"],
        &["leases", "move"],
        &["leases", "watch"],
        &["streams"],
        &["streams", "reshard"],
        &["streams", "delete"],
        &["consumers"],
        &["completions"],
        &["demo"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_kinesis"))
            .args(subcommand)
            .arg("--help")
            .output()
            .unwrap();
        let help = check(&output);
        assert!(help.contains("Usage:"), "{subcommand:?}");
        if subcommand.len() < 2 {
            assert!(
                help.contains("Exit codes: 0 success"),
                "{subcommand:?}: {help}"
            );
        }
    }
}

#[tokio::test]
async fn produce_then_two_consumers_then_leases() {
    let stream = unique("cli");
    let app = unique("cli-app");

    // produce: one JSON summary line.
    let output = kinesis(&["produce"])
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
        let mut command = kinesis(&["consume"]).await;
        if worker == "w2" {
            // Lag-aware pauses lose nothing either.
            command.arg("--lag-aware");
        }
        let child = command
            .args(["--stream", &stream, "--app", &app, "--worker-id", worker])
            .args([
                "--output",
                path.to_str().unwrap(),
                "--exit-after-idle",
                "5s",
                "--polling",
            ])
            .args(["--failover", "3000ms", "--idle-between-reads", "200ms"])
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
    let output = kinesis(&["consume"])
        .await
        .args(["--stream", &stream, "--app", &fan_out_app, "--fan-out"])
        .args([
            "--output",
            path.to_str().unwrap(),
            "--exit-after-idle",
            "3s",
        ])
        .args(["--failover", "3000ms"])
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
    let output = kinesis(&["leases", "show"])
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
        &kinesis(&["leases", "show"])
            .await
            .args(["--app", &app])
            .output()
            .unwrap(),
    );
    assert!(table.contains("2 leases in table"), "{table}");
    // The per-worker summary: both leases released, so both unassigned.
    let summary = table
        .lines()
        .find(|l| l.starts_with("(unassigned)"))
        .unwrap_or_else(|| panic!("no per-worker summary: {table}"));
    assert_eq!(summary.split_whitespace().nth(1), Some("2"), "{summary}");

    // leases --reset-to: described without --yes, done with it.
    let shard = leases[0]["shard_id"].as_str().unwrap().to_owned();
    let reset = |confirm: bool| {
        let (app, shard) = (app.clone(), shard.clone());
        async move {
            let mut command = kinesis(&["leases", "reset"]).await;
            command.args(["--app", &app, "--shard", &shard, "--to", "trim-horizon"]);
            if confirm {
                command.arg("--yes");
            }
            command.output().unwrap()
        }
    };
    let dry_run = check(&reset(false).await);
    assert!(dry_run.contains("nothing changed"), "{dry_run}");
    check(&reset(true).await);
    let output = kinesis(&["leases", "show"])
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

/// Runs `kinesis produce` for `records` records into `stream` (creating it with `create` shards).
async fn produce(stream: &str, create: Option<u32>, records: u32) {
    let mut command = kinesis(&["produce"]).await;
    command.args(["--stream", stream, "--records", &records.to_string()]);
    command.args(["--size", "60", "--keys", "10"]);
    if let Some(shards) = create {
        command.args(["--create-shards", &shards.to_string()]);
    }
    check(&command.output().unwrap());
}

/// The application's leases as `kinesis leases show --json` prints them.
async fn lease_lines(app: &str) -> Vec<serde_json::Value> {
    json_lines(&check(&leases_show(app).await))
}

/// The same, or `None` while the lease table cannot be read (not created yet).
async fn try_lease_lines(app: &str) -> Option<Vec<serde_json::Value>> {
    let output = leases_show(app).await;
    output
        .status
        .success()
        .then(|| json_lines(&String::from_utf8_lossy(&output.stdout)))
}

async fn leases_show(app: &str) -> Output {
    kinesis(&["leases", "show"])
        .await
        .args(["--app", app, "--json"])
        .output()
        .unwrap()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `kinesis consume` of `stream` as a worker of `app` with a short failover time and
/// quick reads, its standard output piped.
async fn spawn_consume(
    stream: &str,
    app: &str,
    stderr: std::process::Stdio,
) -> std::process::Child {
    kinesis(&["consume", "--stream", stream, "--app", app])
        .await
        .args(["--failover", "3000ms", "--idle-between-reads", "200ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit within `limit`; past it, kills it and fails with `context()`.
fn exit_within(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    context: impl Fn() -> String,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}: {}", context());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Item 3: every write to `/dev/full` fails: `consume` stops at once with a non-zero exit
/// and checkpoints nothing.
#[tokio::test]
async fn consume_stops_at_a_write_error_without_checkpointing() {
    let stream = unique("cli-full");
    let app = unique("cli-full-app");
    produce(&stream, Some(1), 50).await;
    let started = std::time::Instant::now();
    let output = kinesis(&["consume"])
        .await
        .args(["--stream", &stream, "--app", &app, "--output", "/dev/full"])
        .args(["--exit-after-idle", "30s", "--failover", "3000ms"])
        .args(["--idle-between-reads", "200ms"])
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
    let mut child = spawn_consume(&stream, &app, Stdio::piped()).await;
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
    let status = exit_within(&mut child, std::time::Duration::from_secs(30), || {
        "consume, after its stdout closed".to_owned()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}: {stderr}");
    let leases = lease_lines(&app).await;
    assert_eq!(leases[0]["checkpoint"], written_to.as_str(), "{stderr}");
    assert!(leases[0]["owner"].is_null(), "released: {stderr}");
}

/// A reader that stops reading (`consume | slow-program`) holds `consume` back, but its
/// leases stay renewed: the writes wait on a blocking thread, not on the runtime that
/// renews. When the reader reads again, every record arrives.
#[tokio::test]
async fn consume_keeps_its_leases_while_its_reader_stops_reading() {
    use std::io::Read;
    use std::process::Stdio;

    let stream = unique("cli-stall");
    let app = unique("cli-stall-app");
    // Far more than a pipe holds (64 KiB): about 200 bytes a line.
    produce(&stream, Some(2), 3_000).await;
    let mut child = spawn_consume(&stream, &app, Stdio::null()).await;
    let counters = |leases: &[serde_json::Value], owner: &str| -> Vec<u64> {
        leases
            .iter()
            .filter(|l| l["owner"] == owner)
            .map(|l| l["counter"].as_u64().unwrap())
            .collect()
    };
    let mut owner = None;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Some(leases) = try_lease_lines(&app).await else {
            continue;
        };
        if leases.len() == 2
            && leases[0]["owner"].is_string()
            && leases[0]["owner"] == leases[1]["owner"]
        {
            owner = leases[0]["owner"].as_str().map(str::to_owned);
            break;
        }
    }
    let owner = owner.expect("both leases taken by the one worker");
    // Nobody reads: the pipe fills and the writes wait. Three failover times later the
    // worker still holds both leases, renewed all along.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = counters(&lease_lines(&app).await, &owner);
    std::thread::sleep(std::time::Duration::from_secs(9));
    let after = counters(&lease_lines(&app).await, &owner);
    assert_eq!(after.len(), 2, "a lease was lost while the reader paused");
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "not renewed while the writes waited: {before:?} then {after:?}"
    );
    // The reader reads again: every record comes out.
    let mut stdout = child.stdout.take().unwrap();
    let mut ids = BTreeSet::new();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 65_536];
    let started = std::time::Instant::now();
    while ids.len() < 3_000 && started.elapsed() < std::time::Duration::from_secs(60) {
        let n = stdout.read(&mut chunk).unwrap();
        assert!(n > 0, "consume ended early");
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
            ids.insert(line["data"].as_str().unwrap().to_owned());
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(ids.len(), 3_000, "every record, once the reader read again");
}

/// `--count` in group mode: exactly N records written, a graceful stop, checkpoints that
/// cover only those; the next run of the application writes the rest, so together they
/// hold every record.
#[tokio::test]
async fn consume_count_in_group_mode_stops_after_n_and_checkpoints_only_those() {
    let stream = unique("cli-count");
    let app = unique("cli-count-app");
    produce(&stream, Some(1), 50).await;
    let read = |args: &'static [&'static str]| {
        let (stream, app) = (stream.clone(), app.clone());
        async move {
            let output = kinesis(&["consume"])
                .await
                .args(["--stream", &stream, "--app", &app, "--failover", "3s"])
                .args(args)
                .output()
                .unwrap();
            check(&output)
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let first = read(&["--count", "7"]).await;
    assert_eq!(first.len(), 7);
    let leases = lease_lines(&app).await;
    assert_eq!(leases[0]["checkpoint"], first[6]["sequence_number"]);
    assert!(leases[0]["owner"].is_null(), "released");
    let rest = read(&["--exit-after-idle", "2s"]).await;
    let ids = |lines: &[serde_json::Value]| -> BTreeSet<u64> {
        lines
            .iter()
            .map(|l| {
                let data: serde_json::Value =
                    serde_json::from_str(l["data"].as_str().unwrap()).unwrap();
                data["id"].as_u64().unwrap()
            })
            .collect()
    };
    let all: BTreeSet<u64> = ids(&first).union(&ids(&rest)).copied().collect();
    assert_eq!(all.len(), 50, "every record in one of the two runs");
    assert!(
        ids(&first).is_disjoint(&ids(&rest)),
        "nothing written twice"
    );
}

/// Item 3: `--exit-after-idle` means caught up (every held shard read to its tip), not
/// "no record for N s": reads one Kinesis record per call, 1.5 s apart, and stops only
/// after the last one, with everything written.
#[tokio::test]
async fn consume_exit_after_idle_waits_until_caught_up() {
    let stream = unique("cli-caught-up");
    let app = unique("cli-caught-up-app");
    // 1 KB records: about five 50 KB aggregates on the one shard.
    let output = kinesis(&["produce"])
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
    let output = kinesis(&["consume"])
        .await
        .args(["--stream", &stream, "--app", &app])
        .args([
            "--output",
            path.to_str().unwrap(),
            "--exit-after-idle",
            "1s",
        ])
        .args(["--max-records", "1", "--idle-between-reads", "1500ms"])
        .args(["--failover", "10000ms"])
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

/// Runs `kinesis` with `stdin` as its standard input; returns its output.
async fn with_stdin(subcommand: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = kinesis(subcommand)
        .await
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `kinesis consume --app` until idle; returns the data of every record it wrote.
async fn consume_group(stream: &str, app: &str) -> Vec<String> {
    let output = kinesis(&["consume", "--stream", stream, "--app", app])
        .await
        .args(["--idle-between-reads", "100ms", "--exit-after-idle", "2s"])
        .args(["--failover", "2s"])
        .output()
        .unwrap();
    check(&output)
        .lines()
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).unwrap();
            line["data"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn leases_reset_all_to_a_time_replays_from_it() {
    let stream = unique("cli-replay");
    let app = unique("cli-replay-app");
    let lines =
        |prefix: &str| -> Vec<String> { (0..40).map(|i| format!("{prefix}-{i:02}")).collect() };
    let (before, after) = (lines("before"), lines("after"));
    let output = with_stdin(
        &["produce", "--stream", &stream, "--create-shards", "2"],
        &format!("{}\n", before.join("\n")),
    )
    .await;
    check(&output);
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let output = with_stdin(
        &["produce", "--stream", &stream],
        &format!("{}\n", after.join("\n")),
    )
    .await;
    check(&output);
    let first: BTreeSet<String> = consume_group(&stream, &app).await.into_iter().collect();
    assert_eq!(first.len(), 80);

    let to = format!("at-timestamp={at:.3}");
    // A time needs the stream; without --yes nothing changes.
    let output = kinesis(&["leases", "reset", "--app", &app, "--all", "--to", &to])
        .await
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("needs --stream"),
        "{output:?}"
    );
    let reset = |yes: bool| {
        let to = to.clone();
        let (app, stream) = (app.clone(), stream.clone());
        async move {
            let mut command = kinesis(&["leases", "reset", "--app", &app, "--all"]).await;
            command.args(["--stream", &stream, "--to", &to]);
            if yes {
                command.arg("--yes");
            }
            check(&command.output().unwrap())
        }
    };
    let dry = reset(false).await;
    assert!(dry.contains("nothing changed"), "{dry}");
    assert_eq!(
        dry.lines().filter(|l| l.contains(" -> ")).count(),
        2,
        "{dry}"
    );
    let lease_lines = lease_lines(&app).await;
    let unchanged: Vec<&serde_json::Value> = lease_lines.iter().map(|l| &l["checkpoint"]).collect();
    assert!(
        unchanged.iter().all(|c| c
            .as_str()
            .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))),
        "{unchanged:?}"
    );
    let done = reset(true).await;
    eprintln!("{dry}{done}");
    assert!(done.contains("2 leases reset to at-timestamp="), "{done}");
    let again: Vec<String> = consume_group(&stream, &app).await;
    let again_set: BTreeSet<String> = again.iter().cloned().collect();
    assert_eq!(
        again_set,
        after.iter().cloned().collect::<BTreeSet<_>>(),
        "{done}"
    );
    // --all --to trim-horizon: everything again (no stream needed).
    let output = kinesis(&[
        "leases",
        "reset",
        "--app",
        &app,
        "--all",
        "--to",
        "trim-horizon",
        "--yes",
    ])
    .await
    .output()
    .unwrap();
    assert!(check(&output).contains("2 leases reset to trim-horizon"));
    assert_eq!(consume_group(&stream, &app).await.len(), 80);
}

/// Every line `kinesis consume --shard` prints, as JSON.
async fn read_shard(stream: &str, shard: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let output = kinesis(&["consume", "--stream", stream, "--shard", shard])
        .await
        .args(["--idle-between-reads", "100ms", "--exit-after-idle", "1s"])
        .args(extra)
        .output()
        .unwrap();
    check(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn produce_reads_lines_and_json_from_stdin_and_consume_reads_one_shard_from_each_position() {
    let stream = unique("cli-stdin");
    check(
        &kinesis(&["streams", "create", "--stream", &stream, "--shards", "1"])
            .await
            .output()
            .unwrap(),
    );
    // Plain lines, random keys; an empty line is skipped.
    let output = with_stdin(
        &["produce", "--stream", &stream],
        "first\nsecond\n\nthird\n",
    )
    .await;
    let summary: serde_json::Value = serde_json::from_str(check(&output).trim()).unwrap();
    assert_eq!(summary["user_records"], 3, "{summary}");
    assert_eq!(summary["invalid"], 0);
    let before_json = std::time::SystemTime::now();
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    // JSON with the key from a nested field; a record without it is invalid: exit 1.
    let json = "{\"user\":{\"id\":\"u1\"},\"n\":1}\n{\"user\":{\"id\":7},\"n\":2}\n{\"n\":3}\n";
    let output = with_stdin(
        &[
            "produce",
            "--stream",
            &stream,
            "--format",
            "json",
            "--key-field",
            "user.id",
        ],
        json,
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "an invalid record fails the run"
    );
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(summary["user_records"], 2, "{summary}");
    assert_eq!(summary["invalid"], 1, "{summary}");

    let shard = "shardId-000000000000";
    let all = read_shard(&stream, shard, &[]).await;
    let data: Vec<&str> = all.iter().map(|l| l["data"].as_str().unwrap()).collect();
    assert_eq!(
        data,
        [
            "first",
            "second",
            "third",
            "{\"user\":{\"id\":\"u1\"},\"n\":1}",
            "{\"user\":{\"id\":7},\"n\":2}"
        ]
    );
    assert_eq!(all[3]["partition_key"], "u1");
    assert_eq!(all[4]["partition_key"], "7");
    assert_ne!(
        all[0]["partition_key"], all[1]["partition_key"],
        "random keys"
    );

    // --from sequence=: at that Kinesis record (the JSON lines went out as one aggregate,
    // after the aggregate of the plain lines); --count stops early.
    assert_eq!(all[3]["sequence_number"], all[4]["sequence_number"]);
    assert_ne!(all[2]["sequence_number"], all[3]["sequence_number"]);
    let at_json = format!("sequence={}", all[3]["sequence_number"].as_str().unwrap());
    let from_json = read_shard(&stream, shard, &["--from", &at_json]).await;
    assert_eq!(from_json, all[3..]);
    let one = read_shard(&stream, shard, &["--from", &at_json, "--count", "1"]).await;
    assert_eq!(one, all[3..4]);
    // --from at-timestamp=: the JSON records only.
    let epoch = before_json
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let since = read_shard(
        &stream,
        shard,
        &["--from", &format!("at-timestamp={epoch}")],
    )
    .await;
    assert_eq!(since.len(), 2, "{since:?}");
    // --from latest: nothing written since.
    assert!(read_shard(&stream, shard, &["--from", "latest"])
        .await
        .is_empty());
    // --from sequence= needs --shard.
    let output = kinesis(&["consume", "--stream", &stream, "--app", "a"])
        .await
        .args(["--from", "sequence=1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs --shard"));
}

/// `produce --format json --key-field k` of `{"k": key, "n": n}` for each `(key, n)`.
async fn produce_numbered(stream: &str, records: impl Iterator<Item = (u64, u64)>) {
    let lines: String = records
        .map(|(key, n)| format!("{{\"k\":\"key-{key}\",\"n\":{n}}}\n"))
        .collect();
    let output = with_stdin(
        &[
            "produce",
            "--stream",
            stream,
            "--format",
            "json",
            "--key-field",
            "k",
        ],
        &lines,
    )
    .await;
    check(&output);
}

/// Each output line's `(stream, key, n)`.
fn numbered(output: &str) -> Vec<(Option<String>, String, u64)> {
    output
        .lines()
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            let data: serde_json::Value =
                serde_json::from_str(line["data"].as_str().unwrap()).unwrap();
            (
                line["stream"].as_str().map(str::to_owned),
                data["k"].as_str().unwrap().to_owned(),
                data["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Issue 25 item 7: with neither `--app` nor `--shard`, `consume` tails every shard, like
/// `kcat -C`, through a split (a key's records in the parent before those in the children)
/// and with no lease table; with `--app`, `--stream` given twice consumes both streams,
/// each line naming its stream.
#[tokio::test]
async fn consume_tails_every_shard_through_a_split_and_reads_two_streams_in_a_group() {
    let stream = unique("cli-tail");
    check(
        &kinesis(&["streams", "create", "--stream", &stream, "--shards", "2"])
            .await
            .output()
            .unwrap(),
    );
    produce_numbered(&stream, (0..60).map(|n| (n % 6, n))).await;
    let split = kinesis(&["streams", "reshard", "--stream", &stream])
        .await
        .args(["--split", "shardId-000000000000"])
        .output()
        .unwrap();
    check(&split);
    produce_numbered(&stream, (60..120).map(|n| (n % 6, n))).await;

    let output = kinesis(&["consume", "--stream", &stream])
        .await
        .args(["--idle-between-reads", "200ms", "--exit-after-idle", "2s"])
        .args(["--failover", "2s"])
        .output()
        .unwrap();
    let lines = numbered(&check(&output));
    let mut seen: Vec<u64> = lines.iter().map(|(_, _, n)| *n).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..120).collect::<Vec<_>>(), "every record, once");
    for key in 0..6 {
        let order: Vec<u64> = lines
            .iter()
            .filter(|(_, k, _)| *k == format!("key-{key}"))
            .map(|(_, _, n)| *n)
            .collect();
        assert!(order.is_sorted(), "key-{key} out of order: {order:?}");
    }
    assert!(lines.iter().all(|(stream, _, _)| stream.is_none()));
    let no_table = kinesis(&["leases", "show", "--app", "kinesis-consume-tail"])
        .await
        .output()
        .unwrap();
    assert!(!no_table.status.success(), "tail mode made no lease table");

    // Two streams, one lease table.
    let other = unique("cli-tail-other");
    produce_numbered_created(&other).await;
    let app = unique("cli-two-streams");
    let output = kinesis(&["consume", "--stream", &stream, "--stream", &other])
        .await
        .args(["--app", &app, "--exit-after-idle", "2s", "--failover", "2s"])
        .args(["--idle-between-reads", "200ms"])
        .output()
        .unwrap();
    let lines = numbered(&check(&output));
    let count = |name: &str| {
        lines
            .iter()
            .filter(|(s, _, _)| s.as_deref() == Some(name))
            .count()
    };
    assert_eq!(count(&stream), 120, "the first stream, named");
    assert_eq!(count(&other), 10, "the second stream, named");
    assert_eq!(lines.len(), 130);
    let leases = lease_lines(&app).await;
    assert!(
        leases.len() >= 5,
        "both streams' leases in the one table: {leases:?}"
    );
    let needs_app = kinesis(&["consume", "--stream", &stream, "--stream", &other])
        .await
        .output()
        .unwrap();
    assert!(!needs_app.status.success());
    assert!(
        String::from_utf8_lossy(&needs_app.stderr).contains("--app"),
        "{needs_app:?}"
    );
}

/// A new one-shard stream with 10 records.
async fn produce_numbered_created(stream: &str) {
    check(
        &kinesis(&["streams", "create", "--stream", stream, "--shards", "1"])
            .await
            .output()
            .unwrap(),
    );
    produce_numbered(stream, (0..10).map(|n| (n, n))).await;
}

#[tokio::test]
async fn streams_are_listed_described_and_resharded() {
    let stream = unique("cli-streams");
    let created: serde_json::Value = serde_json::from_str(
        check(
            &kinesis(&["streams", "create", "--stream", &stream, "--shards", "2"])
                .await
                .output()
                .unwrap(),
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(created["status"], "ACTIVE");
    assert_eq!(created["open_shards"], 2);
    let listed: serde_json::Value =
        serde_json::from_str(check(&kinesis(&["streams", "list"]).await.output().unwrap()).trim())
            .unwrap();
    assert!(listed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == stream.as_str()));

    let reshard = |args: Vec<String>| {
        let stream = stream.clone();
        async move {
            let output = kinesis(&["streams", "reshard", "--stream", &stream])
                .await
                .args(&args)
                .output()
                .unwrap();
            serde_json::from_str::<serde_json::Value>(check(&output).trim()).unwrap()
        }
    };
    let split = reshard(vec!["--split".into(), "shardId-000000000000".into()]).await;
    assert_eq!(split["open_shards"], 3, "{split}");
    let children: Vec<String> = split["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["parent_shard_id"] == "shardId-000000000000")
        .map(|s| s["shard_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 2, "{split}");
    let merged = reshard(vec![
        "--merge".into(),
        children[0].clone(),
        children[1].clone(),
    ])
    .await;
    assert_eq!(merged["open_shards"], 2, "{merged}");
    let scaled = reshard(vec!["--shard-count".into(), "4".into()]).await;
    assert_eq!(scaled["open_shards"], 4, "{scaled}");
    let described: serde_json::Value = serde_json::from_str(
        check(
            &kinesis(&["streams", "describe", "--stream", &stream])
                .await
                .output()
                .unwrap(),
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(described["open_shards"], 4);
    assert!(described["arn"].as_str().unwrap().starts_with("arn:"));
}

#[tokio::test]
async fn a_lease_is_moved_to_a_named_worker() {
    let stream = unique("cli-move");
    let app = unique("cli-move-app");
    // Three shards on two workers (2 and 1): moving one of the pair to the other worker
    // keeps the balance, so the balancer leaves the move alone.
    produce(&stream, Some(3), 60).await;
    let dir = std::env::temp_dir().join(unique("cli-move-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut workers = Vec::new();
    for worker in ["w1", "w2"] {
        let child = kinesis(&["consume", "--stream", &stream, "--app", &app])
            .await
            .args(["--worker-id", worker, "--failover", "3s"])
            .args(["--idle-between-reads", "200ms"])
            .args(["--output", dir.join(worker).to_str().unwrap()])
            .spawn()
            .unwrap();
        workers.push(Killed(child));
    }
    // Wait until each worker holds one lease (the first creates the table).
    let mut leases: Vec<serde_json::Value> = Vec::new();
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let output = kinesis(&["leases", "show", "--app", &app, "--json"])
            .await
            .output()
            .unwrap();
        if !output.status.success() {
            continue;
        }
        leases = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let owners: BTreeSet<&str> = leases.iter().filter_map(|l| l["owner"].as_str()).collect();
        let owned = leases.iter().filter(|l| l["owner"].is_string()).count();
        if owned == 3 && owners.len() == 2 {
            break;
        }
    }
    let owner_of = |l: &serde_json::Value| l["owner"].as_str().unwrap_or_default().to_owned();
    let w1 = leases.iter().filter(|l| owner_of(l) == "w1").count();
    let (from, to) = if w1 == 2 { ("w1", "w2") } else { ("w2", "w1") };
    let moving = leases.iter().find(|l| owner_of(l) == from).unwrap();
    let shard = moving["shard_id"].as_str().unwrap().to_owned();
    let output = kinesis(&["leases", "move", "--app", &app, "--shard", &shard])
        .await
        .args(["--to", to, "--yes"])
        .output()
        .unwrap();
    let said = check(&output);
    assert!(said.contains("graceful handoff"), "{said}");
    assert!(said.contains(&format!("moved to {to}")), "{said}");
    // Running it again changes nothing.
    let again = kinesis(&["leases", "move", "--app", &app, "--shard", &shard])
        .await
        .args(["--to", to, "--yes"])
        .output()
        .unwrap();
    let said = check(&again);
    assert!(said.contains(&format!("already owned by {to}")), "{said}");
    // The named worker takes it and keeps it (renewed: the counter moves on).
    let moved_at = moving["counter"].as_u64().unwrap() + 1;
    let mut taken = false;
    for _ in 0..100 {
        let lease = lease_lines(&app)
            .await
            .into_iter()
            .find(|l| l["shard_id"] == shard.as_str())
            .unwrap();
        if lease["owner"] == to && lease["counter"].as_u64().unwrap() > moved_at + 2 {
            taken = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(workers);
    assert!(taken, "{to} did not take {shard}");
    // show --worker lists the new owner's leases through the owner index.
    let output = kinesis(&["leases", "show", "--app", &app, "--worker", to])
        .await
        .output()
        .unwrap();
    let table = check(&output);
    assert!(table.contains(&shard), "{table}");
    assert!(table.contains("listed by the owner index"), "{table}");
}

/// A child process killed when the test ends, whether it passes or panics.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn bad_arguments_and_a_missing_stream_get_clear_errors_and_documented_exit_codes() {
    let output = kinesis(&["consume", "--stream", "s", "--app", "a", "--failover", "10"])
        .await
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "invalid arguments");
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected e.g. 10s"));
    // Group-mode options with --shard are errors, not silently ignored.
    let output = kinesis(&["consume", "--stream", "s", "--shard", "x"])
        .await
        .args(["--lease-table", "t"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "--lease-table with --shard");

    let missing = unique("cli-missing");
    let output = with_stdin(&["produce", "--stream", &missing], "x\n").await;
    assert_one_line_and_a_hint(&output, "produce", "ResourceNotFoundException", "region");
    let output = kinesis(&["streams", "describe", "--stream", &missing])
        .await
        .output()
        .unwrap();
    assert_one_line_and_a_hint(&output, "streams", "ResourceNotFoundException", "region");
    let app = unique("cli-missing-app");
    let output = kinesis(&["consume", "--stream", &missing, "--app", &app])
        .await
        .output()
        .unwrap();
    assert_one_line_and_a_hint(&output, "consume", "ResourceNotFoundException", "region");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("kinesis consume: stream {missing} not found: DescribeStreamSummary failed: ResourceNotFoundException: ")),
        "{stderr}"
    );
    // (The consumer made its lease table before it found the stream missing: another app.)
    let output = kinesis(&["leases", "show", "--app", &unique("cli-no-table")])
        .await
        .output()
        .unwrap();
    assert_one_line_and_a_hint(&output, "leases", "ResourceNotFoundException", "--app");
    // -v adds the causes, still without Debug output or colours.
    let output = kinesis(&["-v", "streams", "describe", "--stream", &missing])
        .await
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\n  caused by: "), "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !stderr.contains("ErrorMetadata"),
        "{stderr}"
    );
}

/// An error report: exit 1, a first line `kinesis <command>: ...` holding `code` once and
/// no Debug output, then one hint line mentioning `hint`; nothing else, no colours.
fn assert_one_line_and_a_hint(output: &Output, command: &str, code: &str, hint: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one line and a hint: {stderr}");
    assert!(
        lines[0].starts_with(&format!("kinesis {command}: ")),
        "{stderr}"
    );
    assert_eq!(lines[0].matches(code).count(), 1, "{code} once: {stderr}");
    assert!(
        !lines[0].contains('{') && !lines[0].contains("Some("),
        "no Debug: {stderr}"
    );
    assert!(
        lines[1].starts_with("  hint: ") && lines[1].contains(hint),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "no colours in a pipe: {stderr}");
}

/// `kinesis` with no AWS configuration at all: no region, no credentials, no profile.
fn unconfigured(subcommand: &[&str]) -> Command {
    let home = std::env::temp_dir().join(unique("cli-nohome"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_kinesis"));
    command
        .args(subcommand)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        // No instance metadata service to probe here: fail fast, as off EC2.
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

#[tokio::test]
async fn without_configuration_the_error_names_the_settings_that_fix_it() {
    let output = unconfigured(&["streams", "list"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().next(),
        Some("kinesis streams: no AWS region configured"),
        "{stderr}"
    );
    assert!(
        stderr.contains("AWS_REGION") && stderr.contains("--profile"),
        "{stderr}"
    );
    assert!(!stderr.contains("WARN"), "no probe warnings: {stderr}");
    // A region but no credentials: the credentials chain is named.
    let output = unconfigured(&["streams", "list", "--region", "eu-west-1"])
        .output()
        .unwrap();
    assert_one_line_and_a_hint(&output, "streams", "ListStreams", "AWS_ACCESS_KEY_ID");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("credentials"), "{stderr}");
}

#[tokio::test]
async fn global_options_arns_retention_deletion_consumers_and_completions() {
    let emulator = Emulator::shared().await.unwrap();
    let stream = unique("cli-ops");
    let output = kinesis(&["streams", "create", "--stream", &stream, "--on-demand"])
        .await
        .args(["--retention-hours", "48"])
        .output()
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&check(&output)).unwrap();
    assert_eq!(created["mode"], "ON_DEMAND");
    assert_eq!(created["retention_hours"], 48);
    let arn = created["arn"].as_str().unwrap().to_owned();
    // By ARN: retention back to 24 hours.
    let output = kinesis(&["streams", "retention", "--stream", &arn, "--hours", "24"])
        .await
        .output()
        .unwrap();
    let described: serde_json::Value = serde_json::from_str(&check(&output)).unwrap();
    assert_eq!(described["retention_hours"], 24);
    assert_eq!(described["stream"], stream.as_str());
    // --endpoint-url instead of the environment's endpoint.
    if let Some(endpoint) = emulator.kinesis_endpoint() {
        let output = kinesis(&["consumers", "list", "--stream", &arn])
            .await
            .env_remove("AWS_ENDPOINT_URL_KINESIS")
            .args(["--endpoint-url", &endpoint])
            .output()
            .unwrap();
        let listed: serde_json::Value = serde_json::from_str(&check(&output)).unwrap();
        assert_eq!(listed["consumers"], serde_json::json!([]));
    }
    // Without --yes nothing is deleted.
    let output = kinesis(&["streams", "delete", "--stream", &stream])
        .await
        .output()
        .unwrap();
    // Compared as JSON: the key order depends on serde_json's features in the build.
    let deleted: serde_json::Value = serde_json::from_str(check(&output).trim()).unwrap();
    assert_eq!(
        deleted,
        serde_json::json!({"deleted": false, "stream": stream})
    );
    let output = kinesis(&["streams", "delete", "--stream", &arn, "--yes"])
        .await
        .output()
        .unwrap();
    let deleted: serde_json::Value = serde_json::from_str(check(&output).trim()).unwrap();
    assert_eq!(
        deleted,
        serde_json::json!({"deleted": true, "stream": stream})
    );
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(env!("CARGO_BIN_EXE_kinesis"))
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = check(&output);
        assert!(
            script.contains("kinesis") && script.contains("consumers"),
            "{shell}"
        );
    }
}

#[tokio::test]
async fn the_demo_loses_nothing_and_prints_a_json_summary() {
    let output = kinesis(&[
        "demo",
        "--records",
        "2000",
        "--rate",
        "2000",
        "--timeout",
        "60s",
    ])
    .await
    .output()
    .unwrap();
    let summary: serde_json::Value = serde_json::from_str(check(&output).trim()).unwrap();
    assert_eq!(summary["produced"], 2000, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(summary["consumed"], 2000, "{summary}");
}

/// A free loopback port for --metrics-listen.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET http://127.0.0.1:port/metrics: the body, once the listener answers.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            return response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics listener on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn produce_serves_metrics_and_stops_on_sigterm_with_a_summary() {
    use std::io::Write;
    let stream = unique("cli-sigterm");
    let port = free_port();
    let mut child = kinesis(&["produce", "--stream", &stream, "--create-shards", "1"])
        .await
        .args([
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--key",
            "k",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Standard input stays open: only the signal ends the input.
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..20 {
        writeln!(stdin, "record {i}").unwrap();
    }
    stdin.flush().unwrap();
    // Scraped over HTTP while it runs, once the 20 records are put.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        let metrics = scrape(port);
        if metrics.contains("kinesis_producer_user_records_put{stream=") {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        metrics.contains("# TYPE kinesis_producer_user_records_put counter"),
        "{metrics}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let summary: serde_json::Value = serde_json::from_str(&check(&output)).unwrap();
    assert_eq!(summary["interrupted"], true, "{summary}");
    assert_eq!(summary["user_records"], 20, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["abandoned"], 0, "{summary}");
    drop(stdin);
}

// Multi-threaded: the proxies run on the runtime while the test waits for each process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_actions_of_every_subcommand_are_documented() {
    let Some(proxies) = RecordingProxies::start().await else {
        return;
    };
    let documented = documented_actions();
    // The IAM actions of the calls the proxies saw since the last look.
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut new_actions = || {
        let mut actions = BTreeSet::new();
        for (action, calls) in proxies.actions() {
            let before = seen.insert(action.clone(), calls).unwrap_or(0);
            if calls > before {
                actions.insert(action);
            }
        }
        actions
    };
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kinesis"));
        command
            .args(args)
            .env("AWS_ENDPOINT_URL_KINESIS", proxies.kinesis.endpoint())
            .env("AWS_ENDPOINT_URL_DYNAMODB", proxies.dynamodb.endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        check(&child.wait_with_output().unwrap())
    };
    let stream = unique("cli-iam");
    let app = unique("cli-iam-app");
    let mut check_row = |row: &str, args: &[&str], stdin: Option<&str>| {
        eprintln!("kinesis {}", args.join(" "));
        let output = run(args, stdin);
        let used = new_actions();
        let allowed = documented
            .get(row)
            .unwrap_or_else(|| panic!("no row {row} in the README"));
        let missing: Vec<&String> = used.difference(allowed).collect();
        assert!(
            missing.is_empty(),
            "{row}: the README misses {missing:?} (used {used:?})"
        );
        assert!(!used.is_empty(), "{row}: no call recorded");
        output
    };
    check_row(
        "produce --create-shards",
        &["produce", "--stream", &stream, "--create-shards", "1"],
        Some("a\nb\n"),
    );
    check_row("produce", &["produce", "--stream", &stream], Some("c\n"));
    check_row("streams list", &["streams", "list"], None);
    check_row(
        "streams describe",
        &["streams", "describe", "--stream", &stream],
        None,
    );
    check_row(
        "streams retention",
        &["streams", "retention", "--stream", &stream, "--hours", "30"],
        None,
    );
    check_row(
        "streams max-record-size",
        &[
            "streams",
            "max-record-size",
            "--stream",
            &stream,
            "--kib",
            "1024",
        ],
        None,
    );
    let shard = "shardId-000000000000";
    check_row(
        "consume --shard",
        &[
            "consume", "--stream", &stream, "--shard", shard, "--count", "3",
        ],
        None,
    );
    check_row(
        "consume --app",
        &[
            "consume",
            "--stream",
            &stream,
            "--app",
            &app,
            "--count",
            "3",
            "--failover",
            "2s",
        ],
        None,
    );
    check_row(
        "consume",
        &["consume", "--stream", &stream, "--count", "3"],
        None,
    );
    check_row(
        "leases show",
        &["leases", "show", "--app", &app, "--stream", &stream],
        None,
    );
    check_row(
        "leases show --worker",
        &["leases", "show", "--app", &app, "--worker", "w1"],
        None,
    );
    check_row(
        "leases watch",
        &[
            "leases", "watch", "--app", &app, "--stream", &stream, "--rounds", "1",
        ],
        None,
    );
    check_row(
        "leases reset",
        &[
            "leases",
            "reset",
            "--app",
            &app,
            "--shard",
            shard,
            "--to",
            "trim-horizon",
            "--yes",
        ],
        None,
    );
    check_row(
        "leases reset --all",
        &[
            "leases",
            "reset",
            "--app",
            &app,
            "--all",
            "--stream",
            &stream,
            "--to",
            "at-timestamp=0",
            "--yes",
        ],
        None,
    );
    check_row(
        "leases move",
        &[
            "leases", "move", "--app", &app, "--shard", shard, "--to", "w9", "--force", "--yes",
        ],
        None,
    );
    check_row(
        "consumers list",
        &["consumers", "list", "--stream", &stream],
        None,
    );
    check_row(
        "streams delete",
        &["streams", "delete", "--stream", &stream, "--yes"],
        None,
    );
}

#[tokio::test]
async fn leases_watch_shows_owners_lag_throughput_and_workers() {
    let stream = unique("cli-watch");
    let app = unique("cli-watch-app");
    produce(&stream, Some(2), 200).await;
    let mut worker = kinesis(&["consume", "--stream", &stream, "--app", &app])
        .await
        .args(["--worker-id", "watch-w1", "--failover", "3s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the worker holds both shards (the view is plain lines: not a terminal).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let view = loop {
        let output = kinesis(&["leases", "watch", "--app", &app, "--stream", &stream])
            .await
            .args(["--rounds", "2", "--interval", "200ms"])
            .output()
            .unwrap();
        // (The table exists once the worker made it.)
        let view = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && view.matches(" watch-w1 ").count() >= 4 {
            break view;
        }
        assert!(std::time::Instant::now() < deadline, "{view}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        !view.contains('\x1b'),
        "no terminal codes in a pipe: {view}"
    );
    let blocks: Vec<&str> = view
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert_eq!(blocks.len(), 2, "one block per round: {view}");
    let shard_line = blocks[1]
        .lines()
        .find(|l| l.starts_with("shardId-000000000000"))
        .unwrap();
    let columns: Vec<&str> = shard_line.split_whitespace().collect();
    assert_eq!(columns[1], "watch-w1", "{shard_line}");
    assert!(columns[2].parse::<i64>().is_ok(), "lag in ms: {shard_line}");
    assert_eq!(columns.last(), Some(&"-"), "no handoff: {shard_line}");
    let worker_line = blocks[1]
        .lines()
        .find(|l| l.starts_with("watch-w1"))
        .unwrap();
    assert_eq!(
        worker_line.split_whitespace().nth(1),
        Some("2"),
        "{worker_line}"
    );
    assert!(
        blocks[1].lines().any(|l| l.starts_with("leader watch-w1 ")),
        "the leader line names the worker that leads: {view}"
    );
}

/// Standard error of `child`, read as it comes (a pipe nobody reads would fill and block
/// it), into the returned text.
fn read_stderr(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// Polls `check` every 20 ms until it holds, for at most `timeout`.
fn wait_until(what: &str, timeout: std::time::Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A first SIGTERM starts a graceful stop (`stopping` on standard error) that cannot
/// finish (the test made sure); a second one ends the process at once, with exit status
/// 130 and a word on standard error.
fn assert_a_second_sigterm_aborts(
    child: &mut std::process::Child,
    stderr: &std::sync::Mutex<String>,
    stopping: &str,
) {
    let text = || stderr.lock().unwrap().clone();
    sigterm(child);
    wait_until(
        "the graceful stop",
        std::time::Duration::from_secs(20),
        || text().contains(stopping),
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the graceful stop is still under way: {}",
        text()
    );
    sigterm(child);
    let status = exit_within(child, std::time::Duration::from_secs(2), || {
        format!("the second signal: {}", text())
    });
    assert_eq!(status.code(), Some(130), "{}", text());
    wait_until(
        "the last words on standard error",
        std::time::Duration::from_secs(5),
        || text().contains("kinesis: second signal: aborting"),
    );
}

/// A fault proxy in front of the emulator's `kinesis` or `dynamodb` endpoint; `None` with
/// endpoints of the environment's own (nothing to put a proxy in front of).
async fn proxy_in_front_of(service: &str) -> Option<kinesis_emulator::fault_proxy::FaultProxy> {
    let emulator = Emulator::shared().await.unwrap();
    let endpoint = match service {
        "kinesis" => emulator.kinesis_endpoint(),
        _ => emulator.dynamodb_endpoint(),
    }?;
    Some(
        kinesis_emulator::fault_proxy::FaultProxy::start(&endpoint, 1)
            .await
            .unwrap(),
    )
}

/// `produce` stopping on SIGTERM sends what is buffered, and PutRecords hangs (the fault
/// proxy holds every call): the graceful stop lasts up to `--stop-timeout` (10 minutes);
/// a second SIGTERM ends it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_aborts_produce_at_once() {
    use kinesis_emulator::fault_proxy::{Fault, FaultRule};
    use std::io::Write;
    let Some(proxy) = proxy_in_front_of("kinesis").await else {
        return;
    };
    let stream = unique("cli-abort-produce");
    produce(&stream, Some(1), 1).await;
    proxy.add(
        FaultRule::new(Fault::Delay(std::time::Duration::from_secs(600))).target("PutRecords"),
    );
    let mut child = Killed(
        kinesis(&["produce", "--stream", &stream, "--stop-timeout", "10m"])
            .await
            .env("AWS_ENDPOINT_URL_KINESIS", proxy.endpoint())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = read_stderr(&mut child.0);
    // Standard input stays open: only the signal ends the input.
    let mut stdin = child.0.stdin.take().unwrap();
    for i in 0..20 {
        writeln!(stdin, "record {i}").unwrap();
    }
    stdin.flush().unwrap();
    wait_until(
        "a PutRecords call (held)",
        std::time::Duration::from_secs(30),
        || {
            proxy
                .stats()
                .calls
                .get("PutRecords")
                .is_some_and(|n| *n > 0)
        },
    );
    assert_a_second_sigterm_aborts(&mut child.0, &stderr, "kinesis produce: stopping");
    drop(stdin);
}

/// `consume` stopping on SIGTERM checkpoints and gives its lease up, and every lease
/// table call hangs (the fault proxy holds them, each until the 10 s timeout of a 40 s
/// failover time): the graceful stop takes many seconds; a second SIGTERM ends it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_aborts_consume_at_once() {
    use kinesis_emulator::fault_proxy::{Fault, FaultRule};
    use std::io::BufRead;
    let Some(proxy) = proxy_in_front_of("dynamodb").await else {
        return;
    };
    let stream = unique("cli-abort-consume");
    let app = unique("cli-abort-consume-app");
    produce(&stream, Some(1), 20).await;
    let mut child = Killed(
        kinesis(&["consume", "--stream", &stream, "--app", &app])
            .await
            .args(["--failover", "40s", "--idle-between-reads", "200ms"])
            .env("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint())
            .env("RUST_LOG", "kinesis_cli=info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = read_stderr(&mut child.0);
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(
        first.contains("sequence_number"),
        "{first:?}: {}",
        stderr.lock().unwrap()
    );
    // Reading, with a lease: from now on every lease table call hangs.
    proxy.add(FaultRule::new(Fault::Delay(
        std::time::Duration::from_secs(600),
    )));
    assert_a_second_sigterm_aborts(&mut child.0, &stderr, "signal received, stopping");
    drop(stdout);
}

/// `timeout 60 kinesis consume ...` sends its signal twice, to the program and then to its
/// process group: that is one stop, a graceful one (exit 0, leases released), not an abort.
#[tokio::test]
async fn a_signal_sent_twice_at_once_is_one_graceful_stop() {
    use std::io::BufRead;
    let stream = unique("cli-twice");
    let app = unique("cli-twice-app");
    produce(&stream, Some(1), 20).await;
    let mut child = Killed(spawn_consume(&stream, &app, std::process::Stdio::piped()).await);
    let stderr = read_stderr(&mut child.0);
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("sequence_number"), "{first:?}");
    let pid = child.0.id().to_string();
    let status = Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}; kill -INT {pid}")])
        .status()
        .unwrap();
    assert!(status.success());
    let status = exit_within(&mut child.0, std::time::Duration::from_secs(20), || {
        stderr.lock().unwrap().clone()
    });
    let text = stderr.lock().unwrap().clone();
    assert!(status.success(), "{status:?}: {text}");
    assert!(!text.contains("second signal"), "{text}");
    let leases = lease_lines(&app).await;
    assert!(leases[0]["owner"].is_null(), "released: {text}");
    drop(stdout);
}

/// Issue 25: `--require-json` fails the records that are not JSON; with
/// `--dead-letter-file` and `--max-attempts 2` they land in the file after their second
/// attempt, with their shard, sequence numbers and error, and the checkpoint moves past
/// them: every JSON record is written once, and a second run has nothing left to read.
#[tokio::test]
async fn consume_dead_letters_records_that_are_not_json_to_a_file() {
    let stream = unique("cli-dead-letter");
    let app = unique("cli-dead-letter-app");
    check(
        &kinesis(&["streams", "create", "--stream", &stream, "--shards", "1"])
            .await
            .output()
            .unwrap(),
    );
    // One key: the lines travel in order, aggregated, so the poison record is a user
    // record inside an aggregate.
    let lines = "{\"n\":1}\n{\"n\":2}\nnot json\n{\"n\":3}\n{\"n\":4}\n";
    let output = with_stdin(&["produce", "--stream", &stream, "--key", "k"], lines).await;
    let summary: serde_json::Value = serde_json::from_str(check(&output).trim()).unwrap();
    assert_eq!(summary["user_records"], 5, "{summary}");

    let dir = std::env::temp_dir().join(unique("cli-dead-letter-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let dead = dir.join("dead.jsonl");
    let output = kinesis(&["consume", "--stream", &stream, "--app", &app])
        .await
        .args(["--require-json", "--max-attempts", "2"])
        .args(["--dead-letter-file", dead.to_str().unwrap()])
        .args(["--idle-between-reads", "100ms", "--exit-after-idle", "2s"])
        .args(["--failover", "2s"])
        .output()
        .unwrap();
    let written: Vec<serde_json::Value> = check(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let data: Vec<&str> = written
        .iter()
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert_eq!(
        data,
        ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}", "{\"n\":4}"],
        "every JSON record once, in order"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("dead-lettered the failed records of a batch"),
        "{stderr}"
    );

    let envelopes: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(envelopes.len(), 1, "{envelopes:?}");
    let envelope = &envelopes[0];
    assert_eq!(
        base64_simd::STANDARD
            .decode_to_vec(envelope["data"].as_str().unwrap())
            .unwrap(),
        b"not json"
    );
    assert_eq!(envelope["stream"], stream.as_str());
    assert_eq!(envelope["application"], app.as_str());
    assert_eq!(envelope["shard_id"], written[1]["shard_id"]);
    assert_eq!(envelope["partition_key"], "k");
    assert_eq!(envelope["attempts"], 2);
    assert!(
        envelope["error"]
            .as_str()
            .unwrap()
            .starts_with("not JSON: "),
        "{envelope}"
    );
    // Between the second and the third JSON record of the same aggregate.
    assert_eq!(envelope["sequence_number"], written[1]["sequence_number"]);
    assert_eq!(envelope["aggregated"], true);
    assert_eq!(envelope["sub_sequence_number"], 2);
    assert_eq!(written[2]["sub_sequence_number"], 3);

    // Checkpointed at the last record: nothing is read again.
    let leases = lease_lines(&app).await;
    assert_eq!(leases[0]["checkpoint"], written[3]["sequence_number"]);
    assert_eq!(
        leases[0]["checkpoint_sub_sequence_number"],
        written[3]["sub_sequence_number"]
    );
    assert!(consume_group(&stream, &app).await.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();

    // --max-attempts needs somewhere to put what fails.
    let output = kinesis(&["consume", "--stream", &stream, "--app", &app])
        .await
        .args(["--max-attempts", "2"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--dead-letter"));
}

/// Issue 25: `--dead-letter-stream` writes each failed record to another stream, read
/// back here with `kinesis consume --shard`: its data is the envelope, its partition key
/// the original one.
#[tokio::test]
async fn consume_dead_letters_to_a_stream() {
    let stream = unique("cli-dl-source");
    let dead_stream = unique("cli-dl-target");
    let app = unique("cli-dl-stream-app");
    for name in [&stream, &dead_stream] {
        check(
            &kinesis(&["streams", "create", "--stream", name, "--shards", "1"])
                .await
                .output()
                .unwrap(),
        );
    }
    let output = with_stdin(
        &["produce", "--stream", &stream, "--key", "k"],
        "{\"n\":1}\n<xml/>\n{\"n\":2}\n",
    )
    .await;
    check(&output);
    let output = kinesis(&["consume", "--stream", &stream, "--app", &app])
        .await
        .args(["--require-json", "--max-attempts", "1"])
        .args(["--dead-letter-stream", &dead_stream])
        .args(["--idle-between-reads", "100ms", "--exit-after-idle", "2s"])
        .args(["--failover", "2s"])
        .output()
        .unwrap();
    let written: Vec<serde_json::Value> = check(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written.len(), 2);

    let dead = read_shard(&dead_stream, "shardId-000000000000", &[]).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["partition_key"], "k");
    let envelope: serde_json::Value =
        serde_json::from_str(dead[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["stream"], stream.as_str());
    assert_eq!(envelope["sequence_number"], written[0]["sequence_number"]);
    assert_eq!(envelope["sub_sequence_number"], 1);
    assert_eq!(envelope["attempts"], 1);
    assert_eq!(
        base64_simd::STANDARD
            .decode_to_vec(envelope["data"].as_str().unwrap())
            .unwrap(),
        b"<xml/>"
    );
}

/// `produce --failed-file`: the records that fail for good (here: throttled past
/// `--record-ttl`) are written there as they were read, and `produce --input` of that
/// file sends them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_writes_failed_records_to_a_file_that_sends_them_again() {
    use kinesis_emulator::fault_proxy::{Fault, FaultRule};
    use std::io::Write;
    let Some(proxy) = proxy_in_front_of("kinesis").await else {
        return;
    };
    let stream = unique("cli-failed-file");
    produce(&stream, Some(1), 1).await;
    proxy.add(FaultRule::new(Fault::Throttle).target("PutRecords"));
    let dir = std::env::temp_dir().join(unique("cli-failed-file"));
    std::fs::create_dir_all(&dir).unwrap();
    let failed_file = dir.join("failed.txt");
    let sent: BTreeSet<String> = (0..25).map(|i| format!("failed record {i}")).collect();
    let mut child = kinesis(&[
        "produce",
        "--stream",
        &stream,
        "--record-ttl",
        "2s",
        "--failed-file",
        failed_file.to_str().unwrap(),
    ])
    .await
    .env("AWS_ENDPOINT_URL_KINESIS", proxy.endpoint())
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in &sent {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(summary["failed"], 25, "{summary}");
    assert_eq!(output.status.code(), Some(1), "records failed: exit code 1");
    let written = std::fs::read_to_string(&failed_file).unwrap();
    let written: BTreeSet<String> = written.lines().map(str::to_owned).collect();
    assert_eq!(written, sent, "every failed record, once, as it was read");

    // Without the fault, the file sends them again.
    let output = kinesis(&["produce", "--stream", &stream, "--input"])
        .await
        .arg(&failed_file)
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&check(&output)).unwrap();
    assert_eq!(summary["user_records"], 25, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `streams max-record-size` raises a stream's limit (`describe` shows it), and a record
/// of 1.5 MiB then goes through `produce` and comes back whole from `consume`.
#[tokio::test]
async fn a_raised_max_record_size_lets_a_large_record_through() {
    let stream = unique("cli-large");
    let created = kinesis(&["streams", "create", "--stream", &stream, "--shards", "1"])
        .await
        .output()
        .unwrap();
    check(&created);
    let raised = kinesis(&[
        "streams",
        "max-record-size",
        "--stream",
        &stream,
        "--kib",
        "2048",
    ])
    .await
    .output()
    .unwrap();
    let described: serde_json::Value = serde_json::from_str(&check(&raised)).unwrap();
    assert_eq!(described["max_record_size_kib"], 2048, "{described}");
    let line = format!("large:{}", ".".repeat(3 * 512 * 1024));
    let output = with_stdin(&["produce", "--stream", &stream, "--key", "k"], &line).await;
    let summary: serde_json::Value = serde_json::from_str(&check(&output)).unwrap();
    assert_eq!(summary["user_records"], 1, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let read = kinesis(&[
        "consume",
        "--stream",
        &stream,
        "--shard",
        "shardId-000000000000",
        "--from",
        "trim-horizon",
        "--count",
        "1",
    ])
    .await
    .output()
    .unwrap();
    let record: serde_json::Value = serde_json::from_str(check(&read).trim()).unwrap();
    assert_eq!(record["data"].as_str().map(str::len), Some(line.len()));
}
