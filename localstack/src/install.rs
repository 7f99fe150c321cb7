//! Installing the bundled emulators from the npm registry, once, against the lockfile.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::EmulatorError;

/// Oldest Node.js major version the emulators run on.
const MIN_NODE_MAJOR: u32 = 18;

/// The `localstack/` folder: package.json, package-lock.json, run.js.
pub(crate) fn emulator_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Checks Node.js and runs `npm ci` unless the lockfile's packages are installed.
pub(crate) async fn ensure_installed() -> Result<(), EmulatorError> {
    tokio::task::spawn_blocking(|| install(&emulator_dir()))
        .await
        .map_err(|e| EmulatorError::Io {
            context: "installing the emulators".into(),
            source: std::io::Error::other(e),
        })?
}

fn install(dir: &Path) -> Result<(), EmulatorError> {
    check_node("node")?;
    let run_dir = dir.join(".run");
    fs::create_dir_all(&run_dir)
        .map_err(EmulatorError::io(format!("creating {}", run_dir.display())))?;
    // Several test binaries may start at once: one installs, the others wait.
    let lock_path = run_dir.join("install.lock");
    let lock = File::create(&lock_path).map_err(EmulatorError::io(format!(
        "creating {}",
        lock_path.display()
    )))?;
    lock.lock().map_err(EmulatorError::io(format!(
        "locking {}",
        lock_path.display()
    )))?;

    let lockfile = dir.join("package-lock.json");
    let wanted = fs::read(&lockfile)
        .map_err(EmulatorError::io(format!("reading {}", lockfile.display())))?;
    let stamp = dir
        .join("node_modules")
        .join(".installed-package-lock.json");
    if fs::read(&stamp).ok().as_deref() == Some(&wanted[..]) {
        return Ok(());
    }
    tracing::info!(dir = %dir.display(), "installing the local emulators with npm ci");
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EmulatorError::NpmNotFound,
            _ => EmulatorError::io("running npm ci")(e),
        })?;
    if !output.status.success() {
        return Err(EmulatorError::Install {
            dir: dir.to_owned(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    fs::write(&stamp, wanted).map_err(EmulatorError::io(format!("writing {}", stamp.display())))
}

/// Checks that `program` is a Node.js of at least [`MIN_NODE_MAJOR`].
fn check_node(program: &str) -> Result<(), EmulatorError> {
    let output = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|_| EmulatorError::NodeNotFound)?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(major) if major >= MIN_NODE_MAJOR => Ok(()),
        _ => Err(EmulatorError::NodeTooOld(version)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_node_is_a_clear_error() {
        let err = check_node("node-that-does-not-exist").expect_err("no such program");
        assert!(matches!(err, EmulatorError::NodeNotFound));
        assert!(err
            .to_string()
            .starts_with("node not found: install Node.js 18+"));
    }

    #[test]
    fn the_installed_node_is_accepted() {
        check_node("node").expect("CI machines have Node.js 18+");
    }

    #[test]
    fn a_program_that_is_not_node_is_too_old() {
        // `true` prints no version.
        assert!(matches!(
            check_node("true"),
            Err(EmulatorError::NodeTooOld(_))
        ));
    }
}
