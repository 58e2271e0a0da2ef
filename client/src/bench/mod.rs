//! `bookctl bench`: what a booking costs here, against the baselines, on
//! real processes with durability on.
//!
//! One run starts its own systems (release binaries of the coordinator and
//! participants as separate processes, throwaway PostgreSQL when asked),
//! books a fixed workload (`workload`) on each variant (`args::Variant`),
//! and prints one row per cell: (database, workload, clients, variant).
//! Cells run interleaved — for each workload, for each client count, every
//! variant in turn — so noise on this machine hits all variants alike.
//!
//! Per cell: answered and committed bookings per second, p50/p99/p99.9
//! latency of answered bookings, log records per fsync (coordinator
//! `/metrics`), durable local commits per booking (participant `/metrics`,
//! or the bench's own count for (c) and (e)), and CPU seconds per 1,000
//! bookings (`/proc/<pid>/stat` of every server process and the bench,
//! before and after). Then the ratios, the decision log microbenchmark,
//! and the targets beside the measured figures.
//!
//! Writes only under a fresh temporary directory (removed at the end) and
//! to stdout (results) and stderr (progress).

pub mod args;
pub mod cpu;
pub mod driver;
pub mod grpc;
pub mod logbench;
pub mod overload;
pub mod report;
pub mod scrape;
pub mod sql;
pub mod system;
pub mod workload;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use args::{BenchArgs, BenchOptions, Db, Variant, Workload};
use grpc::{ClusterKind, ClusterSystem};
use report::{CellResult, LogRun, OverloadRun};
use system::{Engine, System};

use crate::client::ClientError;
use crate::cluster::{Backend, ClusterError};
use crate::pg::{PgCluster, PgError};

/// Pause before each cell, so phase 2 of the last one is delivered.
const SETTLE: Duration = Duration::from_millis(500);
/// Unmeasured booking when a system starts: connections, caches.
const WARMUP: Duration = Duration::from_secs(1);
const WARMUP_CLIENTS: usize = 16;
/// Base of every cell's seed: runs book the same itineraries.
const SEED: u64 = 20_261_123;
/// Databases of the PostgreSQL server: 0-2 shipped cluster, 3-5 naive
/// cluster, 6 the single database (c), 7-9 the native 2PC shards (e).
const PG_DATABASES: usize = 10;
/// Server settings beyond `PgCluster`'s: room for every pool and for
/// PREPAREd transactions of (e) (one per pooled connection at most).
const PG_SETTINGS: [(&str, &str); 2] = [
    ("max_connections", "400"),
    ("max_prepared_transactions", "400"),
];

/// Why the bench could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("cannot {action}")]
    Client {
        action: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot {action}")]
    Sql {
        action: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot scrape metrics: {0}")]
    Scrape(String),
    #[error("the decision log microbenchmark failed")]
    Log(#[from] coordinator::log::LogError),
}

impl BenchError {
    pub fn client(action: impl Into<String>, source: ClientError) -> BenchError {
        BenchError::Client {
            action: action.into(),
            source,
        }
    }

    pub fn io(action: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            action: action.into(),
            source,
        }
    }

    fn sql(action: impl Into<String>, source: sqlx::Error) -> BenchError {
        BenchError::Sql {
            action: action.into(),
            source,
        }
    }
}

/// Everything one run measured.
#[derive(Clone, Debug, Default)]
pub struct BenchOutput {
    pub cells: Vec<CellResult>,
    pub logs: Vec<LogRun>,
    pub overloads: Vec<OverloadRun>,
}

impl BenchOutput {
    /// Every table, the ratios and the targets, as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        if !self.cells.is_empty() {
            out.push_str("\n### Matrix\n");
            out.push_str(&report::cells_table(&self.cells));
            out.push_str("\n### Ratios\n");
            out.push_str(&report::ratios_table(&self.cells));
        }
        if !self.logs.is_empty() {
            out.push_str("\n### Decision log alone (coordinator::log::bench_appends)\n");
            out.push_str(&report::log_table(&self.logs));
        }
        if !self.overloads.is_empty() {
            out.push_str("\n### Overload (flash sale, 10× peak offered open-loop)\n");
            out.push_str(&report::overload_table(&self.overloads));
        }
        out.push_str("\n### Targets\n");
        let checks = report::targets(&self.cells, &self.logs, &self.overloads);
        out.push_str(&report::targets_table(&checks));
        out
    }
}

/// "N cores, <model>" of this machine.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// Runs the bench. Results go to stdout as they come when `options.json`
/// (one object per line), else the caller prints [`BenchOutput::markdown`].
pub async fn run(options: &BenchOptions) -> Result<BenchOutput, BenchError> {
    let bin_dir = crate::cluster::find_binaries().await?;
    let root = tempfile::Builder::new()
        .prefix("bookctl-bench-")
        .tempdir()
        .map_err(|source| BenchError::io("create a temporary directory", source))?;
    let mut runner = Runner {
        options: options.clone(),
        bin_dir,
        root: root.path().to_path_buf(),
        cells_done: 0,
        output: BenchOutput::default(),
    };
    say(&format!(
        "machine: {}; systems in {}",
        machine(),
        runner.root.display()
    ));
    for db in &options.dbs {
        if options.overload {
            overload::run(&mut runner, *db).await?;
        } else {
            runner.matrix(*db).await?;
        }
    }
    if options.log_bench {
        say("decision log microbenchmark: 1, 64, 256 appenders, group commit on and off");
        let logs = logbench::run(&runner.root).await?;
        for log in &logs {
            runner.emit("log", log);
        }
        runner.output.logs = logs;
    }
    Ok(runner.output)
}

fn say(text: &str) {
    eprintln!("bench: {text}");
}

/// The state of one run.
pub struct Runner {
    options: BenchOptions,
    bin_dir: PathBuf,
    root: PathBuf,
    cells_done: usize,
    output: BenchOutput,
}

impl Runner {
    pub fn options(&self) -> &BenchOptions {
        &self.options
    }

    /// Prints one JSON line with `"kind": kind` when `--json`.
    fn emit<T: serde::Serialize>(&self, kind: &str, value: &T) {
        if !self.options.json {
            return;
        }
        let mut json = serde_json::to_value(value).expect("results serialise");
        if let Some(object) = json.as_object_mut() {
            object.insert("kind".into(), kind.into());
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{json}").and_then(|()| stdout.flush());
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A throwaway PostgreSQL server for `db`, when it is PostgreSQL.
    async fn postgres(db: Db) -> Result<Option<PgCluster>, BenchError> {
        if db != Db::Postgres {
            return Ok(None);
        }
        say("starting a throwaway PostgreSQL server (fsync on)");
        Ok(Some(
            PgCluster::start_with_settings(PG_DATABASES, &PG_SETTINGS).await?,
        ))
    }

    /// Starts a cluster of `kind` (on databases `first_db..first_db+3` of
    /// `pg`), creates its flights and warms it up.
    pub async fn cluster_system(
        &self,
        db: Db,
        pg: Option<&PgCluster>,
        first_db: usize,
        kind: ClusterKind,
        extra_settings: &[(&str, &str)],
    ) -> Result<System, BenchError> {
        let name = format!("{db}-{kind:?}").to_lowercase();
        say(&format!(
            "starting the {kind:?} cluster ({db}) and creating 3,000 flights × 180 seats"
        ));
        let backend = match pg {
            None => Backend::Sqlite,
            Some(pg) => Backend::Postgres(
                (first_db..first_db + 3)
                    .map(|i| pg.database_url(i))
                    .collect(),
            ),
        };
        let cluster = ClusterSystem::start(
            &self.bin_dir,
            &self.data_dir(&name),
            backend,
            kind,
            extra_settings,
        )
        .await?;
        let system = System::new(
            Engine::Cluster(Box::new(cluster)),
            pg.and_then(PgCluster::server_pid),
        )
        .await?;
        self.warm_up(&system, Variant::TwoPhase).await?;
        Ok(system)
    }

    async fn single_system(&self, db: Db, pg: Option<&PgCluster>) -> Result<System, BenchError> {
        say(&format!(
            "opening the single {db} database (c) and creating 3,000 flights × 180 seats"
        ));
        let (url, sqlite_file) = match pg {
            None => {
                let dir = self.data_dir("sqlite-single");
                std::fs::create_dir_all(&dir).map_err(|source| {
                    BenchError::io(format!("create {}", dir.display()), source)
                })?;
                let file = dir.join("single.db");
                (format!("sqlite://{}?mode=rwc", file.display()), Some(file))
            }
            Some(pg) => (pg.database_url(6), None),
        };
        let pool = sql::open_pool(&url, db)
            .await
            .map_err(|source| BenchError::sql(format!("open {url}"), source))?;
        let engine = Engine::Single(Arc::new(sql::SingleDb::new(pool, db, sqlite_file)));
        let system = System::new(engine, pg.and_then(PgCluster::server_pid)).await?;
        self.warm_up(&system, Variant::SingleDb).await?;
        Ok(system)
    }

    async fn native_system(&self, pg: &PgCluster) -> Result<System, BenchError> {
        say("opening 3 PostgreSQL databases for PREPARE TRANSACTION (e) and creating 3,000 flights × 180 seats");
        let mut pools = Vec::new();
        for i in 7..10 {
            let url = pg.database_url(i);
            let pool = sql::open_pool(&url, Db::Postgres)
                .await
                .map_err(|source| BenchError::sql(format!("open {url}"), source))?;
            pools.push(pool);
        }
        let engine = Engine::Native(Arc::new(sql::PgNative::new(pools)));
        let system = System::new(engine, pg.server_pid()).await?;
        self.warm_up(&system, Variant::PgNative).await?;
        Ok(system)
    }

    async fn warm_up(&self, system: &System, variant: Variant) -> Result<(), BenchError> {
        let flights = system.warmup_flights();
        let (tally, _) = system
            .run(
                variant,
                flights,
                WARMUP_CLIENTS,
                WARMUP,
                "warmup".into(),
                SEED,
            )
            .await;
        if tally.answered() == 0 {
            say(&format!(
                "warning: the warm-up of {variant} got no answer: {:?}",
                tally.failed
            ));
        }
        Ok(())
    }

    /// Every cell of `db`'s matrix, interleaved.
    async fn matrix(&mut self, db: Db) -> Result<(), BenchError> {
        let pg = Runner::postgres(db).await?;
        let variants: Vec<Variant> = self
            .options
            .variants
            .iter()
            .copied()
            .filter(|v| v.runs_on(db))
            .collect();
        let mut systems: Vec<(Vec<Variant>, System)> = Vec::new();
        let wants = |list: &[Variant]| variants.iter().any(|v| list.contains(v));
        if wants(&[Variant::TwoPhase, Variant::Saga]) {
            let system = self
                .cluster_system(db, pg.as_ref(), 0, ClusterKind::Shipped, &[])
                .await?;
            systems.push((vec![Variant::TwoPhase, Variant::Saga], system));
        }
        if wants(&[Variant::Naive]) {
            let system = self
                .cluster_system(db, pg.as_ref(), 3, ClusterKind::Naive, &[])
                .await?;
            systems.push((vec![Variant::Naive], system));
        }
        if wants(&[Variant::SingleDb]) {
            let system = self.single_system(db, pg.as_ref()).await?;
            systems.push((vec![Variant::SingleDb], system));
        }
        if let (true, Some(pg)) = (wants(&[Variant::PgNative]), pg.as_ref()) {
            let system = self.native_system(pg).await?;
            systems.push((vec![Variant::PgNative], system));
        }
        let total = self.options.workloads.len() * self.options.concurrency.len() * variants.len();
        let mut done = 0;
        for workload in self.options.workloads.clone() {
            for clients in self.options.concurrency.clone() {
                for variant in &variants {
                    let (_, system) = systems
                        .iter_mut()
                        .find(|(serves, _)| serves.contains(variant))
                        .expect("a system was started for every variant");
                    done += 1;
                    let cell = self.cell(system, (db, workload, *variant, clients)).await?;
                    say(&format!(
                        "[{done}/{total}] {db} {workload} {clients} clients {variant}: {} bookings/s ({} committed/s), p50 {} ms, p99 {} ms",
                        report::number(cell.bookings_per_s),
                        report::number(cell.committed_per_s),
                        report::number(cell.p50_ms),
                        report::number(cell.p99_ms)
                    ));
                    self.emit("cell", &cell);
                    self.output.cells.push(cell);
                }
            }
        }
        for (_, system) in systems {
            system.stop().await;
        }
        drop(pg);
        Ok(())
    }

    /// One cell: fresh flights, settle, read counters, book, read counters.
    pub async fn cell(
        &mut self,
        system: &mut System,
        key: (Db, Workload, Variant, usize),
    ) -> Result<CellResult, BenchError> {
        let (_, workload, variant, clients) = key;
        let flights = system.flights_for(workload).await?;
        tokio::time::sleep(SETTLE).await;
        self.cells_done += 1;
        let number = self.cells_done;
        let scope = system.cpu_scope();
        let samples_before = system.samples().await?;
        let own_before = system.own_local_commits();
        let cpu_before = scope.seconds();
        let duration = Duration::from_secs(self.options.seconds);
        let (tally, elapsed) = system
            .run(
                variant,
                flights,
                clients,
                duration,
                format!("c{number}"),
                SEED + number as u64,
            )
            .await;
        let cpu_after = scope.seconds();
        let samples_after = system.samples().await?;
        let own_after = system.own_local_commits();
        system.note_committed(tally.committed);
        let mut cell = CellResult::new(key, &tally, elapsed.as_secs_f64());
        let answered = tally.answered().max(1) as f64;
        cell.cpu_s_per_1k = Some((cpu_after - cpu_before) / answered * 1000.0);
        if let (Some(before), Some(after)) = (&samples_before, &samples_after) {
            cell.log_records_per_fsync = before.records_per_fsync(after);
            cell.local_commits_per_booking = Some(before.local_commits(after) / answered);
        }
        if let (Some(before), Some(after)) = (own_before, own_after) {
            cell.local_commits_per_booking = Some((after - before) as f64 / answered);
        }
        if tally.failed_total() + tally.refused > 0 {
            say(&format!(
                "cell {number}: {} refused, failures {:?}",
                tally.refused, tally.failed
            ));
        }
        Ok(cell)
    }

    /// The data directory of a named system.
    pub fn root(&self) -> &Path {
        &self.root
    }
}
