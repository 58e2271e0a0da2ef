//! The `participant` binary as a real process: the `listening on` line on
//! stdout, a config file with flags overriding it, a clean exit on SIGTERM,
//! a non-zero exit with a clear message for a bad configuration, and what
//! operators see: `/metrics` (kept right across a restart) and JSON logs
//! whose lines name the txid.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{CreateFlightRequest, PrepareRequest, ShardLeg};
use common::{free_port, scrape};

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

/// Starts the binary on the SQLite file in `dir` with /metrics on
/// `metrics`, JSON logs at debug level to `dir/stderr-<run>.log`; returns
/// the child and its gRPC address once it is ready.
fn spawn_observed(dir: &Path, metrics: SocketAddr, run: u32) -> (Child, SocketAddr) {
    let database = format!("sqlite://{}/s0.db", dir.display());
    let stderr = std::fs::File::create(dir.join(format!("stderr-{run}.log"))).expect("log file");
    let mut child = Command::new(BINARY)
        .args(["serve", "--name", "s0", "--listen", "127.0.0.1:0"])
        .args(["--database", &database, "--partitions", "1", "--owns", "0"])
        .args(["--metrics-listen", &metrics.to_string()])
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info,participant=debug")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn participant");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read stdout");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .expect("an ip:port");
    (child, address)
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "exits cleanly on SIGTERM");
}

/// Holds one seat under `txid` (PREPARE, never decided: no coordinator).
async fn hold_a_seat(address: SocketAddr, txid: &str) {
    let mut client = ParticipantClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let flight = CreateFlightRequest {
        flight_id: "AB1".into(),
        rows: 2,
        letters: "AB".into(),
    };
    client.create_flight(flight).await.expect("create flight");
    let leg = ShardLeg {
        leg_index: 0,
        flight_id: "AB1".into(),
        seat_count: 1,
        ..Default::default()
    };
    let prepare = PrepareRequest {
        txid: txid.into(),
        legs: vec![leg],
        itinerary_legs: 1,
    };
    assert!(
        client
            .prepare(prepare)
            .await
            .expect("prepare")
            .into_inner()
            .yes
    );
}

// Two workers: this thread blocks while waiting for the child, and the
// gRPC client's connection must still answer the server's GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_survive_a_restart_and_json_logs_name_the_txid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let txid = uuid::Uuid::new_v4().to_string();

    let (mut child, address) = spawn_observed(dir.path(), metrics, 1);
    hold_a_seat(address, &txid).await;
    let series = scrape(metrics);
    assert_eq!(series["participant_prepared"], 1.0, "{series:?}");
    assert_eq!(
        series[r#"participant_requests_total{rpc="prepare",outcome="yes"}"#],
        1.0
    );
    assert!(
        series["participant_local_commits_total"] >= 2.0,
        "{series:?}"
    );
    assert!(series["participant_batch_txids_count"] >= 2.0, "{series:?}");
    assert!(series[r#"participant_request_seconds_count{rpc="prepare"}"#] >= 1.0);
    terminate(&mut child);

    let (mut child, _) = spawn_observed(dir.path(), metrics, 2);
    let series = scrape(metrics);
    assert_eq!(
        series["participant_prepared"], 1.0,
        "the restarted participant counts the hold it still has: {series:?}"
    );
    terminate(&mut child);

    let logs = std::fs::read_to_string(dir.path().join("stderr-1.log")).expect("read the log");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let in_span = |line: &&serde_json::Value| line["span"]["txid"] == txid.as_str();
    let voted = lines
        .iter()
        .filter(in_span)
        .find(|line| line["fields"]["message"] == "voted");
    assert!(
        voted.is_some(),
        "a `voted` line in the txid's span:\n{logs}"
    );
    assert_eq!(voted.expect("checked")["span"]["name"], "prepare");
    let batch = lines.iter().find(|line| {
        line["fields"]["txids"]
            .as_str()
            .is_some_and(|txids| txids.contains(txid.as_str()))
    });
    assert!(
        batch.is_some(),
        "a writer batch line lists the txid:\n{logs}"
    );
}
