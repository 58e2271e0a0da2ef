//! `coordinator serve --config coordinator.toml`: the thin binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Reads FAILPOINTS once; see coordinator::failpoints.
    let _failpoints = fail::FailScenario::setup();
    match Cli::parse().command {
        Command::Serve { config } => serve(config).await,
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
