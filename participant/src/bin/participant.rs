//! The participant binary: parse flags (and an optional TOML file), set up
//! logging to stderr, bind the listener, run the library until SIGTERM or
//! ctrl-c. Prints `listening on <ip:port>` to stdout once serving.
//!
//! Logging: the level comes from `RUST_LOG` (default `info`); the format
//! from `LOG_FORMAT`: `text` (default) or `json`, one JSON object per line
//! with the span fields (e.g. `txid`) of the current span and its parents.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use participant::Settings;

/// mimalloc, not glibc malloc: see BENCHMARKS.md, "Recovery".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "participant",
    about = "One shard's participant in cross-shard seat bookings"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Participant gRPC service for one shard.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with the keys below in snake_case; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Shard name, e.g. s0.
    #[arg(long)]
    name: Option<String>,
    /// Address to listen on, e.g. 127.0.0.1:7101 (port 0 picks one).
    #[arg(long)]
    listen: Option<String>,
    /// sqlite:///abs/path/s0.db, sqlite:relative.db or postgres://...
    #[arg(long)]
    database: Option<String>,
    /// Partition count P of the deployment.
    #[arg(long)]
    partitions: Option<u32>,
    /// Partitions this shard owns, e.g. "0-21" or "0-7,12".
    #[arg(long)]
    owns: Option<String>,
    /// Coordinator URL for resolving in-doubt txids, e.g. http://127.0.0.1:7000.
    #[arg(long)]
    coordinator: Option<String>,
    /// How long a txid may stay prepared before the coordinator is asked (default 2000).
    #[arg(long)]
    in_doubt_after_ms: Option<u64>,
    /// Writer tasks (default 1; more may pay on PostgreSQL far from the participant).
    #[arg(long, env = "PARTICIPANT_WRITERS")]
    writers: Option<usize>,
    /// Serve Prometheus metrics on http://<ip:port>/metrics, e.g. 127.0.0.1:9101.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Most protocol messages applied in one local transaction (default 256);
    /// 1 turns batching off, for the naive baseline of `bookctl bench` only.
    #[arg(long, env = "PARTICIPANT_BATCH_MAX")]
    batch_max: Option<usize>,
}

impl ServeArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let flags = Settings {
            name: self.name.clone(),
            listen: self.listen.clone(),
            database: self.database.clone(),
            partitions: self.partitions,
            owns: self.owns.clone(),
            coordinator: self.coordinator.clone(),
            in_doubt_after_ms: self.in_doubt_after_ms,
            writers: self.writers,
            metrics_listen: self.metrics_listen.clone(),
            batch_max: self.batch_max,
        };
        let Some(path) = &self.config else {
            return Ok(flags);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        let file = Settings::from_toml(&text)
            .with_context(|| format!("parse config file {}", path.display()))?;
        Ok(flags.or(file))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging()?;
    if let Err(error) = booking_proto::process::disable_transparent_huge_pages() {
        tracing::warn!(%error, "could not turn transparent huge pages off; running with them");
    }
    // Reads FAILPOINTS once; see participant::failpoints.
    let _failpoints = fail::FailScenario::setup();
    let Command::Serve(args) = Cli::parse().command;
    let config = args
        .settings()?
        .resolve()
        .context("check the participant configuration")?;
    participant::writer::set_batch_ops_limit(config.participant.batch_max);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    participant::run_with_ready(config.participant, listener, shutdown_signal()?, announce)
        .await
        .context("run the participant")
}

/// Logs to stderr, filtered by `RUST_LOG`, as text or JSON (`LOG_FORMAT`).
fn init_logging() -> anyhow::Result<()> {
    Ok(booking_proto::logging::init("info")?)
}

/// The one stdout line tests wait for.
fn announce(address: std::net::SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    // If stdout is gone nobody is waiting for the line; keep serving.
    let _ = writeln!(stdout, "listening on {address}").and_then(|()| stdout.flush());
}

/// Resolves on SIGTERM or SIGINT (ctrl-c). The handlers are installed
/// here, before the ready line is printed: a SIGTERM sent right after it
/// must stop the participant cleanly, not kill it with the default action.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Resolves on ctrl-c.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
