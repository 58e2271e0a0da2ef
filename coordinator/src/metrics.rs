//! Prometheus metrics of the coordinator, served on `metrics_listen` at
//! `/metrics` by the exporter's own HTTP listener. Without `metrics_listen`
//! no recorder is installed and every update below is a no-op.
//!
//! | series                                         | type      | labels                     | meaning |
//! |------------------------------------------------|-----------|----------------------------|---------|
//! | `coordinator_bookings_total`                   | counter   | `mode`, `outcome`          | bookings answered (mode two_phase, saga, one_phase; outcome committed, aborted) |
//! | `coordinator_booking_seconds`                  | histogram | `mode`                     | time from admission to the reply |
//! | `coordinator_phase_seconds`                    | histogram | `phase`                    | prepare (all votes in), decide (decision forced to the log), deliver (decision acknowledged by every shard), book_local, saga_legs |
//! | `coordinator_rejected_total`                   | counter   | `reason`                   | bookings refused before any work: overloaded |
//! | `coordinator_inflight`                         | gauge     |                            | bookings being worked on now (admission permits taken) |
//! | `coordinator_undecided`                        | gauge     |                            | transactions with no decision yet |
//! | `coordinator_in_doubt`                         | gauge     |                            | decided, some shard has not acknowledged yet |
//! | `coordinator_known_transactions`               | gauge     |                            | transactions remembered (until retention forgets them) |
//! | `coordinator_retries_total`                    | counter   | `kind`                     | retry waits: deliver (phase 2 / compensation), resolve (one-phase), saga_resolve |
//! | `coordinator_get_decision_total`               | counter   | `decision`                 | participants' GetDecision answers: commit, abort, in_progress |
//! | `coordinator_log_records_per_fsync`            | histogram |                            | records made durable by one fsync (group commit) |
//! | `coordinator_log_bytes_per_fsync`              | histogram |                            | bytes made durable by one fsync |
//! | `coordinator_log_fsync_seconds`                | histogram |                            | fsync (fdatasync) latency |
//! | `coordinator_log_segments`, `coordinator_log_bytes` | gauge |                           | segments on disk and their size |
//! | `coordinator_log_segments_removed_total`       | counter   |                            | segments deleted by retention |
//! | `coordinator_ready`                            | gauge     |                            | 0 while the log is replayed, 1 once serving |
//! | `coordinator_recovery_records`                 | gauge     |                            | records replayed at the last start |
//! | `coordinator_recovery_transactions`            | gauge     | `case`                     | transactions found at start, by recovery case |
//! | `coordinator_recovery_seconds`                 | gauge     |                            | how long replay took |

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::core::Core;
use crate::recovery::RecoveryReport;

/// Latency buckets, seconds: 50 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Records per fsync: powers of two up to a full batch.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
const BYTES_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];
/// How often the gauges are refreshed.
const CENSUS_PERIOD: Duration = Duration::from_secs(1);

/// Installs the global recorder and starts the HTTP listener on `address`.
/// Call once, inside the runtime.
pub fn install(address: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets(SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_per_fsync".into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("coordinator_log_bytes_per_fsync".into()),
            BYTES_BUCKETS,
        )?
        .install()
        .map_err(|error| anyhow::anyhow!("serve metrics on {address}: {error}"))?;
    metrics::describe_counter!("coordinator_bookings_total", "bookings answered, by mode and outcome");
    metrics::describe_histogram!("coordinator_booking_seconds", metrics::Unit::Seconds, "booking latency, admission to reply");
    metrics::describe_histogram!("coordinator_phase_seconds", metrics::Unit::Seconds, "latency of each protocol phase");
    metrics::describe_histogram!("coordinator_log_records_per_fsync", "records made durable by one fsync");
    metrics::describe_histogram!("coordinator_log_fsync_seconds", metrics::Unit::Seconds, "decision log fsync latency");
    Ok(())
}

/// The mode label of a booking.
pub fn mode_label(one_phase: bool, saga: bool) -> &'static str {
    match (one_phase, saga) {
        (true, _) => "one_phase",
        (false, true) => "saga",
        (false, false) => "two_phase",
    }
}

pub fn booking(mode: &'static str, committed: bool, elapsed: Duration) {
    let outcome = if committed { "committed" } else { "aborted" };
    metrics::counter!("coordinator_bookings_total", "mode" => mode, "outcome" => outcome).increment(1);
    metrics::histogram!("coordinator_booking_seconds", "mode" => mode).record(elapsed.as_secs_f64());
}

pub fn phase(phase: &'static str, elapsed: Duration) {
    metrics::histogram!("coordinator_phase_seconds", "phase" => phase).record(elapsed.as_secs_f64());
}

pub fn rejected_overloaded() {
    metrics::counter!("coordinator_rejected_total", "reason" => "overloaded").increment(1);
}

pub fn retry(kind: &'static str) {
    metrics::counter!("coordinator_retries_total", "kind" => kind).increment(1);
}

pub fn get_decision(decision: &'static str) {
    metrics::counter!("coordinator_get_decision_total", "decision" => decision).increment(1);
}

/// One fsync of the decision log: how many records and bytes it made durable.
pub fn fsync(records: u64, bytes: u64, elapsed: Duration) {
    metrics::histogram!("coordinator_log_records_per_fsync").record(records as f64);
    metrics::histogram!("coordinator_log_bytes_per_fsync").record(bytes as f64);
    metrics::histogram!("coordinator_log_fsync_seconds").record(elapsed.as_secs_f64());
}

pub fn segments_removed(count: usize) {
    metrics::counter!("coordinator_log_segments_removed_total").increment(count as u64);
}

pub fn ready(ready: bool) {
    metrics::gauge!("coordinator_ready").set(if ready { 1.0 } else { 0.0 });
}

pub fn recovered(report: &RecoveryReport, elapsed: Duration) {
    metrics::gauge!("coordinator_recovery_records").set(report.records as f64);
    metrics::gauge!("coordinator_recovery_seconds").set(elapsed.as_secs_f64());
    let cases = [
        ("ended", report.ended),
        ("forgotten", report.forgotten),
        ("redrive_commit", report.redrive_commit),
        ("redrive_abort", report.redrive_abort),
        ("abort_undecided", report.abort_undecided),
        ("resolve_one_phase", report.resolve_one_phase),
        ("finish_saga", report.finish_saga),
    ];
    for (case, count) in cases {
        metrics::gauge!("coordinator_recovery_transactions", "case" => case).set(count as f64);
    }
}

/// Refreshes the gauges every second until the process stops.
pub fn spawn_census(core: Arc<Core>, log_dir: std::path::PathBuf) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(CENSUS_PERIOD);
        loop {
            ticker.tick().await;
            let counts = core.registry.counts();
            metrics::gauge!("coordinator_inflight").set(core.inflight() as f64);
            metrics::gauge!("coordinator_undecided").set(counts.undecided as f64);
            metrics::gauge!("coordinator_in_doubt").set(counts.in_doubt as f64);
            metrics::gauge!("coordinator_known_transactions").set(counts.known as f64);
            let (segments, bytes) = log_size(&log_dir);
            metrics::gauge!("coordinator_log_segments").set(segments as f64);
            metrics::gauge!("coordinator_log_bytes").set(bytes as f64);
        }
    });
}

/// Segment files in `dir` and their total size.
pub fn log_size(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .fold((0, 0), |(n, bytes), e| {
            (n + 1, bytes + e.metadata().map(|m| m.len()).unwrap_or(0))
        })
}
