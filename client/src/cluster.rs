//! [`Cluster`]: a local cluster of real processes — one coordinator and N
//! participants — for `bookctl demo` and the integration tests.
//!
//! It picks free ports on 127.0.0.1 (a gRPC port and a Prometheus
//! `/metrics` port per process), gives shard i an equal contiguous slice of
//! the partitions, writes `coordinator.toml`, and runs every service as its
//! own OS process, so a test can SIGKILL any of them and restart it on the
//! same ports with the same configuration and data.
//!
//! Files under `data_dir` (all absolute paths):
//! - `coordinator.toml`, and the coordinator's decision log in `coordinator-log/`;
//! - `s<i>.db` for each shard on the SQLite backend;
//! - `coordinator.log`, `s<i>.log`: each process's stderr (and any stdout
//!   after its ready line), appended across restarts.
//!
//! Every process still running when the `Cluster` is dropped is killed.

mod binaries;
mod layout;
mod process;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use booking_proto::routing::partition_of;

pub use binaries::{
    find_binaries, find_binaries_blocking, BIN_DIR_ENV, COORDINATOR_BINARY, PARTICIPANT_BINARY,
};
use layout::ShardEntry;
pub use layout::{free_ports, partition_ranges};
use process::{LaunchPlan, RunningProcess};

use crate::client::{BookingClient, ClientError};

/// Why the cluster could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} not found in {}; build it with `cargo build --bin coordinator --bin participant` or set {BIN_DIR_ENV}", dir.display())]
    BinaryMissing { name: String, dir: PathBuf },
    #[error("building the services failed ({status}): {command}")]
    Build { command: String, status: String },
    #[error("{name} did not print `listening on <ip:port>` within {waited:?}; {log_tail}")]
    NotReady {
        name: String,
        waited: Duration,
        log_tail: String,
    },
    #[error("{name} exited ({status}) before it was ready; {log_tail}")]
    Exited {
        name: String,
        status: String,
        log_tail: String,
    },
    #[error("invalid cluster: {problem}")]
    InvalidSpec { problem: String },
    #[error("{0} is not running")]
    NotRunning(ProcessId),
}

/// Where the shards keep their data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file per shard, `<data_dir>/s<i>.db`.
    Sqlite,
    /// One PostgreSQL database URL per shard (see [`crate::pg::PgCluster`]).
    Postgres(Vec<String>),
}

/// One process of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProcessId {
    Coordinator,
    /// The participant of shard i (named `s<i>`).
    Participant(usize),
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessId::Coordinator => write!(f, "coordinator"),
            ProcessId::Participant(i) => write!(f, "s{i}"),
        }
    }
}

/// What to run. Build with [`ClusterSpec::new`] and change fields as needed.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Directory holding the `coordinator` and `participant` executables
    /// (see [`find_binaries`]).
    pub bin_dir: PathBuf,
    /// Directory for configuration, logs and SQLite files; created if missing.
    pub data_dir: PathBuf,
    /// Number of participants (shards), 1..=partitions. Default 3.
    pub shards: usize,
    /// Fixed partition count P. Default 64.
    pub partitions: u32,
    pub backend: Backend,
    /// A participant asks the coordinator about a prepared txid older than this. Default 1000.
    pub in_doubt_after_ms: u64,
    /// The coordinator's booking deadline when a request sets none. Default 2000.
    pub default_timeout_ms: u64,
    /// Environment for every process, e.g. `RUST_LOG`. Processes also inherit ours.
    pub env: Vec<(String, String)>,
    /// Environment for one process only, e.g. `FAILPOINTS` for the coordinator.
    pub process_env: Vec<(ProcessId, String, String)>,
    /// How long a process may take to print its ready line. Default 30 s.
    pub ready_timeout: Duration,
    /// How long [`Cluster::stop`] waits after SIGTERM before SIGKILL. Default 5 s.
    pub stop_grace: Duration,
    /// Extra top-level keys of coordinator.toml, as `key = value` with the
    /// value already in TOML (`("log_retention_secs", "1")`). Default none.
    pub coordinator_settings: Vec<(String, String)>,
}

impl ClusterSpec {
    /// Three SQLite shards over 64 partitions, with the defaults above.
    pub fn new(bin_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        ClusterSpec {
            bin_dir: bin_dir.into(),
            data_dir: data_dir.into(),
            shards: 3,
            partitions: 64,
            backend: Backend::Sqlite,
            in_doubt_after_ms: 1000,
            default_timeout_ms: 2000,
            env: Vec::new(),
            process_env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
            coordinator_settings: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), ClusterError> {
        let invalid = |problem: String| Err(ClusterError::InvalidSpec { problem });
        if self.shards == 0 || self.shards as u64 > u64::from(self.partitions) {
            return invalid(format!(
                "{} shards over {} partitions; need 1..=partitions",
                self.shards, self.partitions
            ));
        }
        if let Backend::Postgres(urls) = &self.backend {
            if urls.len() != self.shards {
                return invalid(format!(
                    "{} PostgreSQL URLs for {} shards; give one per shard",
                    urls.len(),
                    self.shards
                ));
            }
        }
        Ok(())
    }
}

/// A running local cluster. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    /// `spec.data_dir`, absolute.
    data_dir: PathBuf,
    coordinator_port: u16,
    /// `participant_ports[i]` is shard i's port.
    participant_ports: Vec<u16>,
    /// The coordinator's `/metrics` port (`metrics_listen` in coordinator.toml).
    coordinator_metrics_port: u16,
    /// `participant_metrics_ports[i]` is shard i's `/metrics` port.
    participant_metrics_ports: Vec<u16>,
    /// Inclusive partition range of each shard.
    ranges: Vec<(u32, u32)>,
    /// Extra environment per process, from the spec and [`Cluster::set_env`].
    process_env: BTreeMap<ProcessId, BTreeMap<String, String>>,
    /// Where the coordinator sends shard i's traffic instead of the
    /// participant itself (e.g. a fault-injecting proxy); see
    /// [`Cluster::set_shard_address`].
    shard_addresses: BTreeMap<usize, String>,
    /// The processes started and not yet killed, stopped or seen exited.
    running: BTreeMap<ProcessId, RunningProcess>,
}

impl Cluster {
    /// Lays out the cluster, starts every participant and then the
    /// coordinator, and returns once each has printed its ready line.
    ///
    /// The ports are picked free, then released for the processes to bind,
    /// so another program (any outgoing connection takes an ephemeral port)
    /// can take one in between. A process that exits at start because its
    /// port was taken makes the whole start run again on new ports, up to
    /// `START_ATTEMPTS_MAX` times; every other failure is returned at once.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        let mut attempt = 1;
        loop {
            match Cluster::start_once(spec.clone()).await {
                Err(error) if attempt < START_ATTEMPTS_MAX && port_was_taken(&error) => {
                    tracing::warn!(attempt, %error, "a port was taken before its process bound it; starting again on new ports");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// One attempt of [`Cluster::start`]; on failure, the processes it
    /// started are killed (when the cluster is dropped).
    async fn start_once(spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        let mut cluster = Cluster::prepare(spec)?;
        let participants = (0..cluster.shards()).map(ProcessId::Participant);
        let plans: Vec<LaunchPlan> = participants.map(|id| cluster.launch_plan(id)).collect();
        let started = futures::future::join_all(plans.iter().map(RunningProcess::spawn)).await;
        for (i, process) in started.into_iter().enumerate() {
            cluster.running.insert(ProcessId::Participant(i), process?);
        }
        cluster.restart(ProcessId::Coordinator).await?;
        Ok(cluster)
    }

    /// Ports, partition ranges, directories and coordinator.toml; starts nothing.
    fn prepare(spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        spec.validate()?;
        let data_dir = create_dir(&spec.data_dir)?;
        create_dir(&data_dir.join("coordinator-log"))?;
        // Per process a gRPC port, then as many /metrics ports, all distinct.
        let processes = spec.shards + 1;
        let ports = free_ports(2 * processes)?;
        let (grpc_ports, metrics_ports) = ports.split_at(processes);
        let mut process_env: BTreeMap<ProcessId, BTreeMap<String, String>> = BTreeMap::new();
        for (id, key, value) in &spec.process_env {
            process_env
                .entry(*id)
                .or_default()
                .insert(key.clone(), value.clone());
        }
        let cluster = Cluster {
            ranges: partition_ranges(spec.partitions, spec.shards),
            coordinator_port: grpc_ports[0],
            participant_ports: grpc_ports[1..].to_vec(),
            coordinator_metrics_port: metrics_ports[0],
            participant_metrics_ports: metrics_ports[1..].to_vec(),
            data_dir,
            spec,
            process_env,
            shard_addresses: BTreeMap::new(),
            running: BTreeMap::new(),
        };
        cluster.write_config()?;
        Ok(cluster)
    }

    fn write_config(&self) -> Result<(), ClusterError> {
        let shards: Vec<ShardEntry> = (0..self.shards())
            .map(|i| ShardEntry {
                name: ProcessId::Participant(i).to_string(),
                address: self.coordinator_shard_address(i),
                partitions: self.ranges[i],
            })
            .collect();
        let text = layout::coordinator_toml(
            self.coordinator_port,
            self.coordinator_metrics_port,
            &self.data_dir.join("coordinator-log"),
            self.spec.partitions,
            self.spec.default_timeout_ms,
            &shards,
        );
        // Top-level keys must come before the first [[shards]] table.
        let settings: String = self
            .spec
            .coordinator_settings
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        let text = settings + &text;
        let path = self.config_path();
        std::fs::write(&path, text).map_err(|source| ClusterError::Io {
            action: format!("write {}", path.display()),
            source,
        })
    }

    /// How to start process `id`: the same ports and configuration every time.
    fn launch_plan(&self, id: ProcessId) -> LaunchPlan {
        let (program, args) = match id {
            ProcessId::Coordinator => (
                self.spec.bin_dir.join(COORDINATOR_BINARY),
                vec![
                    "serve".into(),
                    "--config".into(),
                    self.config_path().display().to_string(),
                ],
            ),
            ProcessId::Participant(i) => (
                self.spec.bin_dir.join(PARTICIPANT_BINARY),
                self.participant_args(i),
            ),
        };
        let mut env = self.spec.env.clone();
        env.extend(
            self.process_env
                .get(&id)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        LaunchPlan {
            name: id.to_string(),
            program,
            args,
            env,
            log_path: self.log_path(id),
            ready_timeout: self.spec.ready_timeout,
        }
    }

    fn participant_args(&self, i: usize) -> Vec<String> {
        let (low, high) = self.ranges[i];
        [
            "serve",
            "--name",
            &ProcessId::Participant(i).to_string(),
            "--listen",
            &format!("127.0.0.1:{}", self.participant_ports[i]),
            "--database",
            &self.shard_database_url(i),
            "--partitions",
            &self.spec.partitions.to_string(),
            "--owns",
            &format!("{low}-{high}"),
            "--coordinator",
            &self.coordinator_url(),
            "--in-doubt-after-ms",
            &self.spec.in_doubt_after_ms.to_string(),
            "--metrics-listen",
            &format!("127.0.0.1:{}", self.participant_metrics_ports[i]),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Number of shards (participants).
    pub fn shards(&self) -> usize {
        self.spec.shards
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The data directory, absolute.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.data_dir.join("coordinator.toml")
    }

    /// The file that receives process `id`'s stderr.
    pub fn log_path(&self, id: ProcessId) -> PathBuf {
        self.data_dir.join(format!("{id}.log"))
    }

    /// e.g. `http://127.0.0.1:7000`.
    pub fn coordinator_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.coordinator_port)
    }

    /// The gRPC address of shard i's participant.
    pub fn participant_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.participant_ports[i])
    }

    /// Where the coordinator sends shard i's traffic: the participant's own
    /// address unless [`set_shard_address`](Self::set_shard_address) routed it elsewhere.
    pub fn coordinator_shard_address(&self, i: usize) -> String {
        self.shard_addresses
            .get(&i)
            .cloned()
            .unwrap_or_else(|| self.participant_url(i))
    }

    /// Routes the coordinator's traffic for shard i through `url` (e.g. a
    /// TCP proxy in front of the participant), or back to the participant
    /// itself with `None`. Rewrites coordinator.toml; takes effect at the
    /// coordinator's next (re)start. Participants keep calling the
    /// coordinator directly (GetDecision), and admin calls made through
    /// this `Cluster` (e.g. [`create_flight`](Self::create_flight)) still go
    /// straight to the participant.
    pub fn set_shard_address(&mut self, i: usize, url: Option<&str>) -> Result<(), ClusterError> {
        self.check_id(ProcessId::Participant(i))?;
        match url {
            Some(url) => self.shard_addresses.insert(i, url.to_owned()),
            None => self.shard_addresses.remove(&i),
        };
        self.write_config()
    }

    /// Shard i's database URL, as the participant and the checker open it.
    pub fn shard_database_url(&self, i: usize) -> String {
        match &self.spec.backend {
            Backend::Sqlite => format!(
                "sqlite://{}",
                self.data_dir.join(format!("s{i}.db")).display()
            ),
            Backend::Postgres(urls) => urls[i].clone(),
        }
    }

    /// Every shard's database URL, in shard order: the checker's input.
    pub fn shard_database_urls(&self) -> Vec<String> {
        (0..self.shards())
            .map(|i| self.shard_database_url(i))
            .collect()
    }

    /// The inclusive partition range shard i owns.
    pub fn partition_range(&self, i: usize) -> (u32, u32) {
        self.ranges[i]
    }

    /// The shard that owns `flight_id`: partition_of(flight, P), then the range table.
    pub fn shard_of(&self, flight_id: &str) -> usize {
        let partition = partition_of(flight_id, self.spec.partitions);
        self.ranges
            .iter()
            .position(|(low, high)| (*low..=*high).contains(&partition))
            .expect("the ranges cover every partition below the partition count")
    }

    /// Sets an environment variable for process `id` from its next (re)start on.
    pub fn set_env(&mut self, id: ProcessId, key: &str, value: &str) {
        self.process_env
            .entry(id)
            .or_default()
            .insert(key.to_owned(), value.to_owned());
    }

    /// Removes a variable set by [`set_env`](Self::set_env) or the spec's `process_env`.
    pub fn remove_env(&mut self, id: ProcessId, key: &str) {
        if let Some(env) = self.process_env.get_mut(&id) {
            env.remove(key);
        }
    }

    /// The operating system's id of process `id`, while it runs.
    pub fn pid(&self, id: ProcessId) -> Option<u32> {
        self.running.get(&id).and_then(RunningProcess::pid)
    }

    /// The address process `id` printed in its ready line, while it runs.
    pub fn listening_address(&self, id: ProcessId) -> Option<std::net::SocketAddr> {
        self.running.get(&id).map(|p| p.address)
    }

    /// Where process `id` serves Prometheus `/metrics` (plain HTTP): fixed
    /// for the cluster's life, the same across restarts, whether or not the
    /// process runs now. None for a participant the cluster does not have.
    pub fn metrics_address(&self, id: ProcessId) -> Option<SocketAddr> {
        let port = match id {
            ProcessId::Coordinator => self.coordinator_metrics_port,
            ProcessId::Participant(i) => *self.participant_metrics_ports.get(i)?,
        };
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Whether process `id` is running (one that exited is reaped and forgotten).
    pub fn is_running(&mut self, id: ProcessId) -> bool {
        let Some(process) = self.running.get_mut(&id) else {
            return false;
        };
        match process.try_exit_status() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.running.remove(&id);
                false
            }
        }
    }

    /// Waits up to `timeout` for process `id` to exit by itself (e.g. at a
    /// failpoint); `Ok(None)` when it is still running then.
    pub async fn wait_exit(
        &mut self,
        id: ProcessId,
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, ClusterError> {
        let process = self
            .running
            .get_mut(&id)
            .ok_or(ClusterError::NotRunning(id))?;
        match tokio::time::timeout(timeout, process.wait()).await {
            Err(_) => Ok(None),
            Ok(status) => {
                self.running.remove(&id);
                status.map(Some)
            }
        }
    }

    /// SIGKILL process `id` and reap it. Killing a stopped process is a no-op.
    pub async fn kill(&mut self, id: ProcessId) -> Result<(), ClusterError> {
        if let Some(mut process) = self.running.remove(&id) {
            process.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM process `id`, then SIGKILL after the grace period.
    pub async fn stop(&mut self, id: ProcessId) -> Result<(), ClusterError> {
        if let Some(mut process) = self.running.remove(&id) {
            process.stop(self.spec.stop_grace).await?;
        }
        Ok(())
    }

    /// Starts process `id` again on the same port with the same configuration
    /// and data, and waits until it is ready. A running one is killed first.
    pub async fn restart(&mut self, id: ProcessId) -> Result<(), ClusterError> {
        self.check_id(id)?;
        self.kill(id).await?;
        let process = RunningProcess::spawn(&self.launch_plan(id)).await?;
        self.running.insert(id, process);
        Ok(())
    }

    fn check_id(&self, id: ProcessId) -> Result<(), ClusterError> {
        match id {
            ProcessId::Participant(i) if i >= self.shards() => Err(ClusterError::InvalidSpec {
                problem: format!("no participant {i}; the cluster has {}", self.shards()),
            }),
            _ => Ok(()),
        }
    }

    /// Stops the coordinator, then every participant (SIGTERM, then SIGKILL
    /// after the grace period). Returns the first error after trying all.
    pub async fn stop_all(&mut self) -> Result<(), ClusterError> {
        let mut first_error = None;
        let ids: Vec<ProcessId> = self.running.keys().copied().collect();
        for id in ids {
            if let Err(error) = self.stop(id).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A client of this cluster's coordinator.
    pub async fn client(&self) -> Result<BookingClient, ClientError> {
        BookingClient::connect(&self.coordinator_url()).await
    }

    /// Creates a flight on the participant that owns it (found by routing
    /// locally, without asking the coordinator).
    pub async fn create_flight(
        &self,
        flight_id: &str,
        rows: u32,
        letters: &str,
    ) -> Result<booking_proto::v1::FlightInventory, ClientError> {
        let url = self.participant_url(self.shard_of(flight_id));
        crate::client::create_flight(&url, flight_id, rows, letters).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for process in self.running.values_mut() {
            process.start_kill();
        }
    }
}

/// Attempts of [`Cluster::start`] when a picked port was taken.
const START_ATTEMPTS_MAX: u32 = 3;

/// True when a process exited at start because its address was in use.
fn port_was_taken(error: &ClusterError) -> bool {
    match error {
        ClusterError::Exited { log_tail, .. } => {
            let tail = log_tail.to_ascii_lowercase();
            tail.contains("address already in use") || tail.contains("addrinuse")
        }
        _ => false,
    }
}

/// Creates `dir` (and parents) and returns its absolute path.
fn create_dir(dir: &Path) -> Result<PathBuf, ClusterError> {
    std::fs::create_dir_all(dir)
        .and_then(|_| dir.canonicalize())
        .map_err(|source| ClusterError::Io {
            action: format!("create {}", dir.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_taken_port_starts_the_cluster_again() {
        let exited = |log_tail: &str| ClusterError::Exited {
            name: "coordinator".into(),
            status: "exit status: 1".into(),
            log_tail: log_tail.into(),
        };
        assert!(port_was_taken(&exited(
            "Error: bind 127.0.0.1:7000\n\nCaused by:\n    Address already in use (os error 98)"
        )));
        assert!(!port_was_taken(&exited(
            "Error: the config names no shards"
        )));
        assert!(!port_was_taken(&ClusterError::InvalidSpec {
            problem: "address already in use".into()
        }));
    }

    fn prepared(shards: usize) -> (tempfile::TempDir, Cluster) {
        let dir = tempfile::tempdir().unwrap();
        let spec = ClusterSpec {
            shards,
            ..ClusterSpec::new("/opt/bin", dir.path().join("data"))
        };
        let cluster = Cluster::prepare(spec).unwrap();
        (dir, cluster)
    }

    #[test]
    fn the_layout_names_ports_databases_and_ranges() {
        let (_dir, cluster) = prepared(3);
        let config = std::fs::read_to_string(cluster.config_path()).unwrap();
        assert!(
            config.contains(&format!(
                "listen = \"127.0.0.1:{}\"",
                cluster.coordinator_port
            )),
            "{config}"
        );
        assert!(
            config.contains(&format!("address = \"{}\"", cluster.participant_url(2))),
            "{config}"
        );
        assert!(config.contains("partitions = \"43-63\""), "{config}");
        let coordinator_metrics = cluster
            .metrics_address(ProcessId::Coordinator)
            .expect("the coordinator has one");
        assert!(
            config.contains(&format!("metrics_listen = \"{coordinator_metrics}\"")),
            "{config}"
        );
        assert!(cluster.shard_database_url(1).starts_with("sqlite:///"));
        assert!(cluster.shard_database_url(1).ends_with("/data/s1.db"));
        let args = cluster.launch_plan(ProcessId::Participant(0)).args;
        assert_eq!(args[..3], ["serve", "--name", "s0"]);
        assert!(args.windows(2).any(|w| w == ["--owns", "0-21"]), "{args:?}");
        let metrics = cluster
            .metrics_address(ProcessId::Participant(0))
            .expect("shard 0 has one")
            .to_string();
        assert!(
            args.windows(2)
                .any(|w| w == ["--metrics-listen", metrics.as_str()]),
            "{args:?}"
        );
        assert_eq!(cluster.metrics_address(ProcessId::Participant(3)), None);
        let mut ports: Vec<u16> = [ProcessId::Coordinator, ProcessId::Participant(0)]
            .into_iter()
            .chain((1..3).map(ProcessId::Participant))
            .flat_map(|id| {
                let grpc = match id {
                    ProcessId::Coordinator => cluster.coordinator_port,
                    ProcessId::Participant(i) => cluster.participant_ports[i],
                };
                [
                    grpc,
                    cluster.metrics_address(id).expect("configured").port(),
                ]
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 8, "every port differs");
    }

    #[test]
    fn flights_route_to_the_shard_owning_their_partition() {
        let (_dir, cluster) = prepared(3);
        for flight in ["BA117", "LH400", "AF1", "DM001"] {
            let shard = cluster.shard_of(flight);
            let (low, high) = cluster.partition_range(shard);
            assert!((low..=high).contains(&partition_of(flight, 64)));
        }
    }

    #[test]
    fn process_env_applies_to_its_process_only() {
        let (_dir, mut cluster) = prepared(2);
        cluster.set_env(
            ProcessId::Coordinator,
            "FAILPOINTS",
            "after_commit_logged=exit",
        );
        let env = cluster.launch_plan(ProcessId::Coordinator).env;
        assert!(env.contains(&("FAILPOINTS".into(), "after_commit_logged=exit".into())));
        assert!(cluster
            .launch_plan(ProcessId::Participant(0))
            .env
            .is_empty());
        cluster.remove_env(ProcessId::Coordinator, "FAILPOINTS");
        assert!(cluster.launch_plan(ProcessId::Coordinator).env.is_empty());
    }

    #[test]
    fn a_shard_address_can_be_routed_elsewhere_for_the_coordinator_only() {
        let (_dir, mut cluster) = prepared(3);
        let direct = cluster.participant_url(1);
        cluster
            .set_shard_address(1, Some("http://127.0.0.1:9"))
            .unwrap();
        let config = std::fs::read_to_string(cluster.config_path()).unwrap();
        assert!(
            config.contains("name = \"s1\"\naddress = \"http://127.0.0.1:9\"\n"),
            "{config}"
        );
        assert!(!config.contains(&direct), "{config}");
        assert!(
            config.contains(&format!("address = \"{}\"", cluster.participant_url(0))),
            "{config}"
        );
        assert_eq!(cluster.coordinator_shard_address(1), "http://127.0.0.1:9");
        assert_eq!(
            cluster.participant_url(1),
            direct,
            "the participant keeps its port"
        );
        let args = cluster.launch_plan(ProcessId::Participant(1)).args;
        assert!(
            args.windows(2)
                .any(|w| w == ["--coordinator", cluster.coordinator_url().as_str()]),
            "participants call the coordinator directly: {args:?}"
        );
        cluster.set_shard_address(1, None).unwrap();
        let config = std::fs::read_to_string(cluster.config_path()).unwrap();
        assert!(config.contains(&direct), "{config}");
        assert!(matches!(
            cluster.set_shard_address(3, Some("http://127.0.0.1:9")),
            Err(ClusterError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn postgres_needs_one_url_per_shard() {
        let spec = ClusterSpec {
            backend: Backend::Postgres(vec!["postgres://x".into()]),
            ..ClusterSpec::new("/b", "/d")
        };
        assert!(matches!(
            spec.validate(),
            Err(ClusterError::InvalidSpec { .. })
        ));
    }
}
