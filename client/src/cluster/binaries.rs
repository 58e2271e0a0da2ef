//! Finding the `coordinator` and `participant` executables for a local
//! cluster, building them first when this is a source checkout with cargo at
//! hand, so `cargo run --release --bin bookctl -- demo` works on a fresh clone.
//!
//! Order: `$BOOKING_BIN_DIR` if set (used as is, never built); else the
//! directory of the current executable (`target/<profile>/`, or its parent
//! when the executable is in `target/<profile>/deps/`), after
//! `cargo build --bin coordinator --bin participant --bin bookctl` in the same profile when
//! the workspace and cargo exist. The build runs once per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::ClusterError;

/// Names of the executables a cluster runs.
pub const COORDINATOR_BINARY: &str = "coordinator";
pub const PARTICIPANT_BINARY: &str = "participant";
/// Built alongside (tests drive the operator's CLI too), never required.
pub const BOOKCTL_BINARY: &str = "bookctl";
/// Environment variable naming a directory that holds both executables.
pub const BIN_DIR_ENV: &str = "BOOKING_BIN_DIR";

/// The result of the first search, reused by later calls in this process.
static FOUND: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The directory holding `coordinator` and `participant`, built first when
/// possible. Blocks while cargo builds: use [`find_binaries`] in async code.
pub fn find_binaries_blocking() -> Result<PathBuf, ClusterError> {
    // A panic while searching leaves `None` behind, which only means "search again".
    let mut found = FOUND
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(dir) = found.as_ref() {
        return Ok(dir.clone());
    }
    let dir = search()?;
    *found = Some(dir.clone());
    Ok(dir)
}

/// [`find_binaries_blocking`] on a blocking thread.
pub async fn find_binaries() -> Result<PathBuf, ClusterError> {
    tokio::task::spawn_blocking(find_binaries_blocking)
        .await
        .map_err(|e| ClusterError::InvalidSpec {
            problem: format!("binary search task failed: {e}"),
        })?
}

fn search() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return check_present(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|source| ClusterError::Io {
        action: "find the current executable".into(),
        source,
    })?;
    let profile_dir = profile_dir_of(&exe).ok_or_else(|| ClusterError::InvalidSpec {
        problem: format!("{} has no parent directory", exe.display()),
    })?;
    if let Some(workspace) = workspace_dir() {
        if let Some(cargo) = cargo_program() {
            build(&cargo, &workspace, &profile_dir)?;
        }
    }
    check_present(profile_dir)
}

/// `target/<profile>` for an executable in it or in its `deps/` or `examples/`.
pub fn profile_dir_of(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().map(Path::to_path_buf),
        _ => Some(dir.to_path_buf()),
    }
}

/// The workspace this crate was compiled from, if it is still there.
fn workspace_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    dir.join("Cargo.toml").is_file().then(|| dir.to_path_buf())
}

/// cargo as named by `$CARGO` (set by `cargo run` and `cargo test`), or on PATH.
fn cargo_program() -> Option<PathBuf> {
    if let Some(cargo) = std::env::var_os("CARGO") {
        return Some(PathBuf::from(cargo));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("cargo"))
        .find(|p| p.is_file())
}

/// The cargo arguments selecting the profile that built `profile_dir`.
fn profile_args(profile_dir: &Path) -> Vec<String> {
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => Vec::new(),
        Some("release") => vec!["--release".into()],
        Some(other) => vec!["--profile".into(), other.into()],
    }
}

/// Runs cargo quietly (errors still show on stderr), writing into the
/// target directory that holds `profile_dir`.
fn build(cargo: &Path, workspace: &Path, profile_dir: &Path) -> Result<(), ClusterError> {
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--quiet")
        .args(profile_args(profile_dir))
        .args(["--bin", COORDINATOR_BINARY, "--bin", PARTICIPANT_BINARY])
        .args(["--bin", BOOKCTL_BINARY])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    if let Some(target_dir) = profile_dir.parent() {
        command.env("CARGO_TARGET_DIR", target_dir);
    }
    let text = format!("{command:?}");
    let status = command.status().map_err(|source| ClusterError::Io {
        action: format!("run {text}"),
        source,
    })?;
    if !status.success() {
        return Err(ClusterError::Build {
            command: text,
            status: status.to_string(),
        });
    }
    Ok(())
}

fn check_present(dir: PathBuf) -> Result<PathBuf, ClusterError> {
    for name in [COORDINATOR_BINARY, PARTICIPANT_BINARY] {
        if !dir.join(name).is_file() {
            return Err(ClusterError::BinaryMissing {
                name: name.to_owned(),
                dir,
            });
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_dir_skips_deps() {
        let dir = profile_dir_of(Path::new("/w/target/release/deps/booking_tests-12ab")).unwrap();
        assert_eq!(dir, Path::new("/w/target/release"));
        assert_eq!(
            profile_dir_of(Path::new("/w/target/debug/bookctl")).unwrap(),
            Path::new("/w/target/debug")
        );
        assert_eq!(profile_args(Path::new("/w/target/release")), ["--release"]);
        assert!(profile_args(Path::new("/w/target/debug")).is_empty());
        assert_eq!(
            profile_args(Path::new("/w/target/bench")),
            ["--profile", "bench"]
        );
    }

    #[test]
    fn a_directory_without_the_binaries_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let error = check_present(dir.path().to_path_buf()).expect_err("empty dir");
        assert!(error.to_string().contains("coordinator"), "{error}");
    }
}
