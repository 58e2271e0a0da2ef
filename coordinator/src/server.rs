//! Starts the coordinator. The gRPC server (the Coordinator service, health
//! and reflection) listens at once, with health NOT_SERVING and every
//! Coordinator call answered UNAVAILABLE ("replaying"), while the decision
//! log is opened and replayed into the registry. Only then does health turn
//! SERVING, the service answer, and `listening on <address>` get printed
//! (the line test harnesses wait for). Recovery of open transactions and
//! retention then run in the background until the shutdown signal, or until
//! a fatal error (the log failed) stops the process.
//!
//! So a participant asking `GetDecision` during replay hears UNAVAILABLE
//! (and asks again), never a presumed ABORT for a txid whose COMMIT record
//! is still being read.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use booking_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::core::Core;
use crate::failpoints::pause_point;
use crate::log::{DecisionLog, LogOptions};
use crate::recovery;
use crate::retention;
use crate::service::CoordinatorService;

/// Largest message tonic decodes; the service refuses anything above
/// `limits::MESSAGE_BYTES_MAX` with a clear message before using it.
const DECODE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How often retention looks for segments to delete.
const RETENTION_PERIOD: Duration = Duration::from_secs(1);

/// Runs the coordinator until `shutdown` resolves. Returns an error if the
/// process must stop because of a fatal failure (or the log cannot be
/// replayed: corruption, I/O).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(address) = config.metrics_listen {
        crate::metrics::install(address)?;
        info!(%address, "metrics at http://{address}/metrics");
    }
    crate::metrics::ready(false);
    let fatal = CancellationToken::new();
    let ready: Arc<OnceLock<Arc<Core>>> = Arc::new(OnceLock::new());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(booking_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build the reflection service")?;
    let service = CoordinatorServer::new(CoordinatorService::new(Arc::clone(&ready)))
        .max_decoding_message_size(DECODE_BYTES_MAX);
    let address = listener.local_addr().context("read the listener address")?;
    // TCP_NODELAY on every accepted connection: `Server::tcp_nodelay` is
    // ignored by `serve_with_incoming`, and without it small replies wait
    // for a delayed ACK (about 40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = CancellationToken::new();
    let stop_serving = stop.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop_serving.cancelled_owned()),
    );
    info!(%address, "coordinator listening; replaying the decision log (health NOT_SERVING)");

    let started = Instant::now();
    let core = {
        let config = config.clone();
        let fatal = fatal.clone();
        // Blocking file I/O: off the runtime's workers, so health answers.
        tokio::task::spawn_blocking(move || open_and_replay(&config, fatal))
            .await
            .context("the replay task panicked")??
    };
    ready
        .set(Arc::clone(&core))
        .unwrap_or_else(|_| unreachable!("the core is set once"));
    crate::metrics::spawn_census(Arc::clone(&core), config.log_dir.clone());
    retention::spawn(
        Arc::clone(&core),
        Duration::from_secs(config.log_retention_secs),
        RETENTION_PERIOD,
    );
    health_reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    crate::metrics::ready(true);
    info!(%address, replay_ms = started.elapsed().as_millis() as u64, "coordinator serving");
    println!("listening on {address}");

    tokio::select! {
        _ = shutdown => info!("shutdown requested"),
        _ = fatal.cancelled() => {},
    }
    health_reporter
        .set_not_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    stop.cancel();
    server
        .await
        .context("the gRPC server task panicked")?
        .context("serve gRPC")?;
    if fatal.is_cancelled() {
        anyhow::bail!("stopped after a fatal error (see the log above); restart to recover");
    }
    Ok(())
}

/// Opens the log (cutting a torn tail), builds the core and replays every
/// record into the registry, starting the recovery of open transactions.
fn open_and_replay(config: &Config, fatal: CancellationToken) -> anyhow::Result<Arc<Core>> {
    let started = Instant::now();
    let mut options = LogOptions::new(&config.log_dir);
    options.segment_bytes_max = config.segment_bytes_max;
    options.group_commit = config.group_commit;
    let (log, replayed) = DecisionLog::open(options).context("open the decision log")?;
    if let Some(cut) = &replayed.tail_cut {
        tracing::warn!(segment = %cut.segment.display(), offset = cut.offset, bytes = cut.bytes_cut, "cut a torn tail off the decision log");
    }
    info!(
        records = replayed.records.len(),
        read_ms = started.elapsed().as_millis() as u64,
        "decision log read"
    );
    let core = Arc::new(Core::new(config, log, fatal)?);
    let report = recovery::recover(&core, replayed).context("replay the decision log")?;
    crate::metrics::recovered(&report, started.elapsed());
    // Widens the NOT_SERVING window for the health test.
    pause_point("coordinator::during_replay");
    Ok(core)
}
