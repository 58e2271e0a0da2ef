//! `coordinator serve --config coordinator.toml`, and `coordinator inspect`
//! (the read-only decision-log inspector, `coordinator::inspect`): the thin
//! binary.
//!
//! Exit codes: 0 success; 1 an error (printed); 64 a usage error (bad or
//! missing flags; not clap's default 2, which `inspect verify` uses for a
//! torn tail); `inspect verify` also exits 2 (torn tail) or 3 (corruption).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc, not glibc malloc: see BENCHMARKS.md, "Recovery".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "coordinator",
    about = "Two-phase-commit coordinator for cross-shard seat bookings"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Coordinator gRPC service.
    Serve {
        /// Path of coordinator.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Read the decision log (never writes): list, show, follow, stats, verify.
    Inspect(coordinator::inspect::InspectArgs),
}

/// sysexits.h `EX_USAGE`: the command line was wrong.
const EXIT_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and --version are not errors; they print to stdout.
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = error.print();
            return Ok(ExitCode::from(code));
        }
    };
    // RUST_LOG sets the level, LOG_FORMAT=json the format.
    booking_proto::logging::init("info")?;
    if let Err(error) = booking_proto::process::disable_transparent_huge_pages() {
        tracing::warn!(%error, "could not turn transparent huge pages off; running with them");
    }
    // Reads FAILPOINTS once; see coordinator::failpoints.
    let _failpoints = fail::FailScenario::setup();
    match cli.command {
        Command::Serve { config } => serve(config).await.map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => Ok(inspect(args).await),
    }
}

/// Runs `coordinator inspect`; an error is one line saying what to fix
/// (no backtrace, even with RUST_BACKTRACE set: it is an operator's tool).
async fn inspect(args: coordinator::inspect::InspectArgs) -> ExitCode {
    match coordinator::inspect::run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = coordinator::config::Config::load(&path)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    coordinator::server::run(config, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler succeeds on unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
