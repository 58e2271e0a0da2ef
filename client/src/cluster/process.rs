//! One child process of a local cluster: spawned with its stdout piped (to
//! read the `listening on <ip:port>` line that says it is ready) and its
//! stderr appended to its log file; stopped with SIGTERM, killed with SIGKILL,
//! and always reaped.
//!
//! Writes: a marker line in the log file before each start, and whatever the
//! process prints on stdout after the ready line, appended to the same file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::ClusterError;

/// How much of a log file's end an error quotes.
const LOG_TAIL_LINES: usize = 20;

/// What to run, and where its output goes.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    /// Short name used in errors and the log file name, e.g. `s0`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_path: PathBuf,
    pub ready_timeout: Duration,
}

/// A started process that said it is listening.
#[derive(Debug)]
pub struct RunningProcess {
    name: String,
    child: Child,
    /// The address the process printed in its ready line.
    pub address: SocketAddr,
}

/// The last lines of a log file, for error messages. A backtrace (printed
/// with RUST_BACKTRACE) is cut out, so that the error or panic message
/// above it is what shows.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !is_backtrace_line(line))
        .collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    format!("last lines of {}:\n{}", path.display(), tail.join("\n"))
}

/// A frame of a printed backtrace: `  12: name` or `   at file:line`.
fn is_backtrace_line(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.starts_with("at ") && line.starts_with("  ") {
        return true;
    }
    let Some((number, _)) = trimmed.split_once(": ") else {
        return false;
    };
    line.starts_with(' ') && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
}

fn open_log(path: &Path) -> Result<File, ClusterError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ClusterError::Io {
            action: format!("open log file {}", path.display()),
            source,
        })
}

/// Parses `listening on 127.0.0.1:7000`.
pub fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("listening on ")?
        .trim()
        .parse()
        .ok()
}

impl RunningProcess {
    /// Spawns `plan` and waits until it prints its ready line. A process
    /// that exits or stays silent past the timeout is an error quoting its log.
    pub async fn spawn(plan: &LaunchPlan) -> Result<RunningProcess, ClusterError> {
        let mut log = open_log(&plan.log_path)?;
        let marker = format!(
            "==== bookctl cluster: starting {} {}\n",
            plan.program.display(),
            plan.args.join(" ")
        );
        log.write_all(marker.as_bytes())
            .map_err(|source| ClusterError::Io {
                action: format!("write {}", plan.log_path.display()),
                source,
            })?;
        let mut child = Command::new(&plan.program)
            .args(&plan.args)
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ClusterError::Io {
                action: format!("start {}", plan.program.display()),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout was configured as piped");
        let mut lines = BufReader::new(stdout).lines();
        let waited = tokio::time::timeout(plan.ready_timeout, read_ready_line(&mut lines)).await;
        let address = match waited {
            Ok(Some(address)) => address,
            Ok(None) => return Err(exited_error(plan, child).await),
            Err(_) => return Err(not_ready_error(plan, child).await),
        };
        tokio::spawn(copy_stdout(lines, plan.log_path.clone()));
        Ok(RunningProcess {
            name: plan.name.clone(),
            child,
            address,
        })
    }

    /// The operating system's process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status, if the process has exited (it is reaped then).
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>, ClusterError> {
        self.child
            .try_wait()
            .map_err(|source| self.io_error("poll", source))
    }

    /// Waits for the process to exit by itself (e.g. at a failpoint).
    pub async fn wait(&mut self) -> Result<ExitStatus, ClusterError> {
        self.child.wait().await.map_err(|source| ClusterError::Io {
            action: format!("wait for {}", self.name),
            source,
        })
    }

    /// SIGKILL, then reap. Killing a process that already exited is fine.
    pub async fn kill(&mut self) -> Result<ExitStatus, ClusterError> {
        let _ = self.child.start_kill(); // fails only when already reaped
        self.wait().await
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, ClusterError> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory effects; `pid` is our unreaped
            // child, so the id cannot have been reused by another process.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.map_err(|source| self.io_error("wait for", source)),
            Err(_) => self.kill().await,
        }
    }

    /// Sends SIGKILL without waiting: for `Drop`, where nothing can be awaited.
    pub fn start_kill(&mut self) {
        let _ = self.child.start_kill();
    }

    fn io_error(&self, action: &str, source: std::io::Error) -> ClusterError {
        ClusterError::Io {
            action: format!("{action} {}", self.name),
            source,
        }
    }
}

/// Reads stdout until the ready line; `None` at end of file (the process exited).
async fn read_ready_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<SocketAddr> {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(address) = parse_ready_line(&line) {
            return Some(address);
        }
    }
    None
}

/// Appends what the process prints on stdout after its ready line to its log.
async fn copy_stdout(mut lines: Lines<BufReader<ChildStdout>>, log_path: PathBuf) {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut log) = OpenOptions::new().append(true).open(&log_path) {
            let _ = writeln!(log, "stdout: {line}");
        }
    }
}

async fn exited_error(plan: &LaunchPlan, mut child: Child) -> ClusterError {
    let status = child
        .wait()
        .await
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    ClusterError::Exited {
        name: plan.name.clone(),
        status,
        log_tail: log_tail(&plan.log_path),
    }
}

async fn not_ready_error(plan: &LaunchPlan, mut child: Child) -> ClusterError {
    let _ = child.start_kill();
    let _ = child.wait().await;
    ClusterError::NotReady {
        name: plan.name.clone(),
        waited: plan.ready_timeout,
        log_tail: log_tail(&plan.log_path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path, script: &str, timeout: Duration) -> LaunchPlan {
        LaunchPlan {
            name: "fake".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
            log_path: dir.join("fake.log"),
            ready_timeout: timeout,
        }
    }

    #[test]
    fn log_tails_leave_backtraces_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("p.log");
        let mut text = String::from(
            "INFO listening\nError: bind 127.0.0.1:7000: Address in use\n\nStack backtrace:\n",
        );
        for frame in 0..40 {
            text.push_str(&format!("  {frame}: std::rt::lang_start\n             at /rustc/x/library/std/src/rt.rs:175:24\n"));
        }
        std::fs::write(&path, text).expect("write log");
        let tail = log_tail(&path);
        assert!(
            tail.contains("Error: bind 127.0.0.1:7000: Address in use"),
            "{tail}"
        );
        assert!(!tail.contains("lang_start"), "{tail}");
    }

    #[test]
    fn ready_lines_parse() {
        assert_eq!(
            parse_ready_line("listening on 127.0.0.1:7000\n"),
            Some("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(parse_ready_line("listening on nowhere"), None);
        assert_eq!(parse_ready_line("starting"), None);
    }

    #[tokio::test]
    async fn a_process_is_ready_when_it_prints_its_address_and_stops_on_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo \"$GREETING\" >&2; echo booting; echo 'listening on 127.0.0.1:4567'; exec sleep 30";
        let mut process = RunningProcess::spawn(&plan(dir.path(), script, Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(process.address.port(), 4567);
        assert!(process.try_exit_status().unwrap().is_none());
        let status = process.stop(Duration::from_secs(5)).await.unwrap();
        assert!(!status.success());
        let log = std::fs::read_to_string(dir.path().join("fake.log")).unwrap();
        assert!(log.contains("hello"), "{log}");
    }

    #[tokio::test]
    async fn a_process_that_exits_early_is_an_error_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(
            dir.path(),
            "echo 'bad config' >&2; exit 3",
            Duration::from_secs(10),
        );
        let error = RunningProcess::spawn(&plan).await.expect_err("it exited");
        assert!(matches!(error, ClusterError::Exited { .. }), "{error}");
        assert!(error.to_string().contains("bad config"), "{error}");
    }

    #[tokio::test]
    async fn a_silent_process_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(dir.path(), "exec sleep 30", Duration::from_millis(200));
        let error = RunningProcess::spawn(&plan)
            .await
            .expect_err("it never says it is ready");
        assert!(matches!(error, ClusterError::NotReady { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_killed_process_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo 'listening on 127.0.0.1:1'; exec sleep 30";
        let mut process = RunningProcess::spawn(&plan(dir.path(), script, Duration::from_secs(10)))
            .await
            .unwrap();
        let status = process.kill().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(process.pid().is_none(), "reaped");
    }
}
