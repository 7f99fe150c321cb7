//! Installing the bundled emulators from the npm registry, once, against the lockfile.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::EmulatorError;

/// Oldest Node.js major version the emulators run on.
const MIN_NODE_MAJOR: u32 = 18;

/// The npm project of the emulators (package.json, package-lock.json, run.js): the
/// `localstack/` folder when this crate is built from the repository (its `start` script
/// shares the installed packages), else a per-user cache folder holding the copies of
/// those files built into this crate (when it comes from crates.io, for example in
/// `cargo install kinesis-cli`).
pub(crate) fn emulator_dir() -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if source.join("start").is_file() {
        return source;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("kinesis-emulator")
        .join(env!("CARGO_PKG_VERSION"))
}

/// The files of the npm project, built into the crate.
const PROJECT_FILES: [(&str, &str); 3] = [
    ("package.json", include_str!("../package.json")),
    ("package-lock.json", include_str!("../package-lock.json")),
    ("run.js", include_str!("../run.js")),
];

/// Writes the npm project's files into `dir` where they are missing or differ.
fn write_project(dir: &Path) -> Result<(), EmulatorError> {
    for (name, contents) in PROJECT_FILES {
        let path = dir.join(name);
        if fs::read_to_string(&path).ok().as_deref() != Some(contents) {
            fs::write(&path, contents)
                .map_err(EmulatorError::io(format!("writing {}", path.display())))?;
        }
    }
    Ok(())
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
    write_project(dir)?;

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
    fn the_built_in_project_matches_the_folder_and_can_be_written_elsewhere() {
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            emulator_dir(),
            source,
            "in the repository, the folder itself"
        );
        let elsewhere =
            std::env::temp_dir().join(format!("kinesis-emulator-test-{}", std::process::id()));
        fs::create_dir_all(&elsewhere).expect("a temporary folder");
        write_project(&elsewhere).expect("the files are written");
        for (name, _) in PROJECT_FILES {
            assert_eq!(
                fs::read(elsewhere.join(name)).expect("written"),
                fs::read(source.join(name)).expect("in the repository"),
                "{name}"
            );
        }
        fs::remove_dir_all(&elsewhere).expect("removed");
    }

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
