//! `eval "$(localstack/start)"` serves boto3, and so AWS CLI v1 (both read the region from
//! `AWS_DEFAULT_REGION` only, through botocore): boto3 configured by the exported variables
//! alone creates a stream and a table, writes and reads back.
//!
//! The scripts run from a private copy of `localstack/` (its own `.run` folder, the
//! installed `node_modules` linked in), on free ports: emulators a developer started with
//! `localstack/start` are neither reused nor stopped.

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::python::interop_python;
use integration_tests::{unique_name, TestResult};

/// A copy of the scripts in a fresh folder, removed on drop.
struct ScriptCopy(PathBuf);

impl ScriptCopy {
    fn new(localstack: &Path) -> TestResult<Self> {
        let dir = std::env::temp_dir().join(unique_name("start-script"));
        fs::create_dir_all(&dir)?;
        let copy = ScriptCopy(dir);
        for file in [
            "start",
            "stop",
            "run.js",
            "package.json",
            "package-lock.json",
        ] {
            // fs::copy keeps the executable bit.
            fs::copy(localstack.join(file), copy.0.join(file))?;
        }
        std::os::unix::fs::symlink(localstack.join("node_modules"), copy.0.join("node_modules"))?;
        Ok(copy)
    }
}

impl Drop for ScriptCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Distinct free loopback ports: kinesis-mock's HTTP port `p` (with `p + 1`, its TLS port,
/// free too) and dynalite's.
fn free_ports() -> TestResult<(u16, u16)> {
    let mut held = Vec::new();
    let mut taken = BTreeSet::new();
    let mut pick = |pair: bool| -> TestResult<u16> {
        for _ in 0..100 {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let port = listener.local_addr()?.port();
            let next = port.checked_add(1);
            let ok = !taken.contains(&port)
                && (!pair
                    || next.is_some_and(|n| {
                        !taken.contains(&n) && TcpListener::bind((Ipv4Addr::LOCALHOST, n)).is_ok()
                    }));
            if ok {
                taken.insert(port);
                if pair {
                    taken.extend(next);
                }
                held.push(listener);
                return Ok(port);
            }
        }
        Err("no free loopback port".into())
    };
    let kinesis = pick(true)?;
    let dynamodb = pick(false)?;
    Ok((kinesis, dynamodb))
}

#[tokio::test]
async fn boto3_works_from_the_variables_start_exports() -> TestResult {
    let python = interop_python()?;
    let localstack = kinesis_emulator::install().await?;
    let scripts = ScriptCopy::new(&localstack)?;
    let (kinesis_port, dynamodb_port) = free_ports()?;
    let boto3_script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join("boto3_start.py");

    // Only what start exports may configure boto3: no AWS variable from the caller's
    // environment, no ~/.aws files. AWS_REGION is set (as in a developer's shell) to
    // check that AWS_DEFAULT_REGION follows it.
    let mut command = Command::new("bash");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    let output = command
        .env("HOME", &scripts.0)
        .env("AWS_CONFIG_FILE", scripts.0.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            scripts.0.join("no-aws-credentials"),
        )
        .env("AWS_REGION", "eu-west-1")
        .arg("-c")
        .arg(
            r#"set -eu
trap '"$1/stop" >/dev/null' EXIT
eval "$("$1/start" --kinesis-port "$2" --dynamodb-port "$3")"
"$4" "$5" "$6" "$7""#,
        )
        .arg("bash")
        .arg(&scripts.0)
        .arg(kinesis_port.to_string())
        .arg(dynamodb_port.to_string())
        .arg(&python)
        .arg(&boto3_script)
        .arg(unique_name("boto3-stream"))
        .arg(unique_name("boto3-table"))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "boto3 through localstack/start failed:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&output.stdout)))?;
    assert_eq!(report["region"], "eu-west-1", "{report}");
    assert_eq!(
        report["kinesis_endpoint"],
        format!("http://127.0.0.1:{kinesis_port}"),
        "{report}"
    );
    assert_eq!(
        report["dynamodb_endpoint"],
        format!("http://127.0.0.1:{dynamodb_port}"),
        "{report}"
    );
    assert_eq!(report["records"], serde_json::json!(["from boto3"]));
    assert_eq!(report["item"], "from boto3");

    // stop stopped what start started.
    for service in ["kinesis", "dynamodb"] {
        assert!(
            !scripts
                .0
                .join(".run")
                .join(format!("{service}.pid"))
                .exists(),
            "{service} still recorded as running"
        );
    }
    for port in [kinesis_port, dynamodb_port] {
        assert!(
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "port {port} still answers after stop"
        );
    }
    Ok(())
}
