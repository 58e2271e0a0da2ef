//! Running a participant: serve `/metrics` if configured, open the store
//! (migrations), start the writer lanes, the in-doubt sweep and (SQLite)
//! the WAL checkpointer, serve gRPC (Participant, Health, Reflection) on
//! the given listener until the shutdown future resolves, then drain: stop
//! accepting, let the writers finish their queues, close the pool. A critical task that stops early
//! stops the process with an error; the metrics endpoint is not critical.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use booking_proto::v1::participant_server::ParticipantServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{debug, info, warn};

use crate::config::{Backend, Config};
use crate::error::RunError;
use crate::metrics::{self, Metrics};
use crate::resolver::InDoubtResolver;
use crate::service::ParticipantService;
use crate::shard::Shard;
use crate::store::Store;
use crate::writer::Writers;

/// Largest gRPC message tonic decodes; the contract's own limit
/// (`MESSAGE_BYTES_MAX`) is checked per request, with a clearer message.
pub const DECODING_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How often the SQLite WAL is checkpointed (`start_checkpointer`).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// Background tasks whose early end stops the process.
type CriticalTasks = JoinSet<Result<(), String>>;

/// Runs the participant until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with_ready(config, listener, shutdown, |_| {}).await
}

/// Like `run`; calls `ready` with the bound address once migrations are
/// done and the service is about to serve (the binary prints it).
pub async fn run_with_ready(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), RunError> {
    let address = listener.local_addr().map_err(RunError::LocalAddr)?;
    let stop = CancellationToken::new();
    // However run ends, the metrics endpoint and the sweep stop with it.
    let _stop_on_return = stop.clone().drop_guard();
    let metrics = start_metrics(&config, &stop)?;
    let store = Store::open(&config).await?;
    metrics.set_prepared(store.count_prepared().await?);
    info!(shard = %config.name, backend = ?config.backend, writers = config.writers, "shard database ready");
    let mut tasks = CriticalTasks::new();
    let writers = Writers::start(
        store.clone(),
        config.writers,
        Arc::clone(&metrics),
        &mut tasks,
    );
    start_resolver(&config, &store, &writers, &metrics, &stop, &mut tasks)?;
    if config.backend == Backend::Sqlite {
        start_checkpointer(&store, &stop, &mut tasks);
    }
    let shard = Shard {
        name: config.name.clone(),
        partitions: config.partitions,
        owned: config.owned_partitions.clone(),
    };
    let service = ParticipantService::new(shard, writers, store.clone(), metrics);
    let server = serve(service, listener, stop.clone()).await?;
    ready(address);
    info!(%address, "listening");
    let outcome = wait(server, shutdown, &stop, &mut tasks).await;
    drain(&mut tasks).await;
    store.close().await;
    info!("stopped");
    outcome
}

/// Serves `/metrics` on `metrics_listen` until `stop`, and registers the
/// series; without `metrics_listen` the handles are no-ops.
fn start_metrics(config: &Config, stop: &CancellationToken) -> Result<Arc<Metrics>, RunError> {
    let Some(address) = config.metrics_listen else {
        return Ok(Metrics::register());
    };
    let exporter = metrics::install_exporter(address)?;
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            ended = exporter => {
                warn!(error = ?ended.err(), "the /metrics endpoint stopped; the shard keeps serving")
            }
        }
    });
    info!(%address, "serving Prometheus metrics on /metrics");
    Ok(Metrics::register())
}

fn start_resolver(
    config: &Config,
    store: &Store,
    writers: &Writers,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
    tasks: &mut CriticalTasks,
) -> Result<(), RunError> {
    let Some(url) = &config.coordinator_url else {
        warn!("no --coordinator: in-doubt txids wait for the coordinator to redrive them");
        return Ok(());
    };
    let resolver = InDoubtResolver::new(
        store.clone(),
        writers.clone(),
        url,
        config.in_doubt_after,
        Arc::clone(metrics),
    )?;
    let stop = stop.clone();
    tasks.spawn(async move {
        resolver.run(stop).await;
        Ok(())
    });
    Ok(())
}

/// SQLite: checkpoints the WAL every `CHECKPOINT_INTERVAL` until `stop`,
/// which keeps the WAL (and the reads that scan it) small; see
/// `Store::checkpoint`. A failed checkpoint is retried at the next tick:
/// meanwhile the WAL only grows, nothing is lost.
fn start_checkpointer(store: &Store, stop: &CancellationToken, tasks: &mut CriticalTasks) {
    let store = store.clone();
    let stop = stop.clone();
    tasks.spawn(async move {
        let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            match store.checkpoint().await {
                Ok((frames, copied)) => debug!(frames, copied, "WAL checkpoint"),
                Err(err) => warn!(error = %err, "WAL checkpoint failed; retrying at the next tick"),
            }
        }
    });
}

/// The gRPC server future: serves until `stop` is cancelled.
async fn serve(
    service: ParticipantService,
    listener: TcpListener,
    stop: CancellationToken,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, RunError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ParticipantServer<ParticipantService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(booking_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let participant = ParticipantServer::new(service).max_decoding_message_size(DECODING_BYTES_MAX);
    let router = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(participant);
    Ok(router.serve_with_incoming_shutdown(incoming(listener), stop.cancelled_owned()))
}

/// Waits for the shutdown signal, the server's end, or a critical task's.
async fn wait(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: impl Future<Output = ()>,
    stop: &CancellationToken,
    tasks: &mut CriticalTasks,
) -> Result<(), RunError> {
    let mut server = std::pin::pin!(server);
    let outcome = tokio::select! {
        served = &mut server => served.map_err(RunError::from),
        () = shutdown => {
            info!("shutting down: no new requests, finishing queued writes");
            Ok(())
        }
        Some(ended) = tasks.join_next() => Err(task_died(ended)),
    };
    stop.cancel();
    // The server stops accepting, finishes the requests in flight, and drops
    // the service: its writer queues close once the sweep has stopped too.
    let served = server.await.map_err(RunError::from);
    outcome.and(served)
}

/// Waits for the writers to finish their queues and the sweep to stop.
async fn drain(tasks: &mut CriticalTasks) {
    while let Some(ended) = tasks.join_next().await {
        if let Err(err) = ended {
            warn!(error = %err, "a background task failed while stopping");
        }
    }
}

fn task_died(ended: Result<Result<(), String>, tokio::task::JoinError>) -> RunError {
    let reason = match ended {
        Ok(Ok(())) => "it returned".to_string(),
        Ok(Err(reason)) => reason,
        Err(join) => join.to_string(),
    };
    RunError::TaskDied {
        task: "writer lane or in-doubt sweep".into(),
        reason,
    }
}

/// Accepted connections with TCP_NODELAY: small replies go out at once
/// instead of waiting for a delayed ACK (about 40 ms per exchange without
/// it). `Server::tcp_nodelay` is ignored by `serve_with_incoming`.
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
