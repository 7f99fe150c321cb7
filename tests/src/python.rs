//! A Python virtual environment with AWS's `aws-kinesis-agg` and boto3, created on first
//! use from `tests/interop/requirements.txt`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestResult;

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's target directory (honours `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tests_dir().join("..").join("target"))
}

/// Path of a Python interpreter that can import `aws_kinesis_agg` and `boto3`, installing them into
/// `target/py-interop` the first time (pinned by `tests/interop/requirements.txt`).
pub fn interop_python() -> TestResult<PathBuf> {
    let venv = target_dir().join("py-interop");
    let python = venv.join("bin").join("python");
    let requirements = tests_dir().join("interop").join("requirements.txt");
    let wanted = fs::read(&requirements)?;
    fs::create_dir_all(target_dir())?;
    let lock = File::create(target_dir().join("py-interop.lock"))?;
    lock.lock()?;
    let stamp = venv.join("installed-requirements.txt");
    if fs::read(&stamp).ok().as_deref() == Some(&wanted[..]) && python.exists() {
        return Ok(python);
    }
    run(Command::new(python3()).args(["-m", "venv"]).arg(&venv)).map_err(|e| {
        format!("{e}\n(on Debian, `apt-get install python3-venv` provides the venv module)")
    })?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    fs::write(&stamp, wanted)?;
    Ok(python)
}

fn python3() -> &'static str {
    if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    }
}

fn run(command: &mut Command) -> TestResult {
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

/// Runs `tests/interop/agg_interop.py <mode>` with `input` on stdin; returns stdout.
pub fn run_interop_script(mode: &str, input: &[u8]) -> TestResult<Vec<u8>> {
    let python = interop_python()?;
    let script: &Path = &tests_dir().join("interop").join("agg_interop.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(input)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(format!(
            "agg_interop.py {mode} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(output.stdout)
}
