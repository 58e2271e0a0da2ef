//! The `participant` binary as a real process: the `listening on` line on
//! stdout, a config file with flags overriding it, a clean exit on SIGTERM,
//! and a non-zero exit with a clear message for a bad configuration.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_participant");

#[test]
fn serves_until_sigterm_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("participant.toml");
    let database = format!("sqlite://{}/s0.db", dir.path().display());
    let toml = format!("name = \"s0\"\nlisten = \"127.0.0.1:1\"\ndatabase = \"{database}\"\npartitions = 64\nowns = \"0-63\"\n");
    std::fs::write(&config, toml).expect("write config");
    let mut child = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn participant");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read stdout");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let address: std::net::SocketAddr = address.parse().expect("an ip:port");
    assert_ne!(address.port(), 0);
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .expect("accepts connections");
    assert!(
        dir.path().join("s0.db").exists(),
        "the SQLite file was created"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = wait_with_timeout(&mut child, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "exits cleanly on SIGTERM");
}

#[test]
fn a_bad_configuration_exits_non_zero_naming_the_key() {
    let output = Command::new(BINARY)
        .args([
            "serve",
            "--name",
            "s0",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "sqlite:x.db",
            "--partitions",
            "8",
        ])
        .args(["--owns", "0-8"])
        .output()
        .expect("run participant");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("owns"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout before serving");
}

fn wait_with_timeout(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the participant did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
