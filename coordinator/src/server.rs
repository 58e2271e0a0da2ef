//! Starts the coordinator: opens and replays the decision log, restores the
//! registry, starts recovery in the background, then serves gRPC (the
//! Coordinator service, health and reflection) on a bound listener until the
//! shutdown signal, or until a fatal error (the log failed) stops it.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use booking_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::core::Core;
use crate::log::{DecisionLog, LogOptions};
use crate::recovery;
use crate::service::CoordinatorService;

/// Largest message tonic decodes; the service refuses anything above
/// `limits::MESSAGE_BYTES_MAX` with a clear message before using it.
const DECODE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Runs the coordinator until `shutdown` resolves. Returns an error if the
/// process must stop because of a fatal failure.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut options = LogOptions::new(&config.log_dir);
    options.segment_bytes_max = config.segment_bytes_max;
    options.group_commit = config.group_commit;
    let (log, replayed) = DecisionLog::open(options).context("open the decision log")?;
    if let Some(cut) = &replayed.tail_cut {
        tracing::warn!(segment = %cut.segment.display(), offset = cut.offset, bytes = cut.bytes_cut, "cut a torn tail off the decision log");
    }
    let fatal = CancellationToken::new();
    let core = Arc::new(Core::new(&config, log, fatal.clone())?);
    recovery::recover(&core, &replayed).context("replay the decision log")?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(booking_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build the reflection service")?;
    let service = CoordinatorServer::new(CoordinatorService::new(Arc::clone(&core)))
        .max_decoding_message_size(DECODE_BYTES_MAX);

    let address = listener.local_addr().context("read the listener address")?;
    info!(%address, "coordinator serving");
    println!("listening on {address}");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let fatal_wait = fatal.clone();
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = shutdown => info!("shutdown requested"),
                _ = fatal_wait.cancelled() => {},
            }
        })
        .await
        .context("serve gRPC")?;
    if fatal.is_cancelled() {
        anyhow::bail!("stopped after a fatal error (see the log above); restart to recover");
    }
    Ok(())
}
