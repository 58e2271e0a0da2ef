//! `bookctl bench --overload`: a flash sale against (a).
//!
//! 1. Peak: closed-loop cells of (a), uniform workload, at every
//!    `--concurrency`; the best bookings/s is the peak, its p99 the
//!    reference latency.
//! 2. Surge: bookings arrive open-loop at 10× the peak rate for `--seconds`
//!    (each on its own task, whatever happens to the others, no retries).
//!    Measured: goodput (committed or sold-out answers within the window,
//!    per second) against the peak, p99 of the admitted bookings against
//!    the peak's p99, refusals (RESOURCE_EXHAUSTED), their latency (from
//!    the booking's arrival), and whether each carried the `retry-after-ms`
//!    hint. Twice: first through the client library's adaptive throttle
//!    ([`crate::throttle`], on in [`crate::BookingClient`]), which refuses
//!    locally most of what the coordinator would only refuse; then through
//!    bare generated stubs, every booking sent (what a client in any
//!    language gets from our .proto files).
//! 3. When the peak's client count is not the shipped `inflight_max`, both
//!    surges again with `inflight_max` set to it (a configuration key, set
//!    in coordinator.toml and the coordinator restarted): what the admission
//!    limit does when it is sized to the machine.
//!
//! The coordinator's code is not changed.

use std::sync::Arc;
use std::time::Duration;

use booking_proto::v1::Mode;

use super::args::{Db, Variant, Workload};
use super::driver::{open_loop, Load, OpenLoop};
use super::grpc::{ClusterKind, CLIENTS_PER_CONNECTION, CONNECTIONS_MAX};
use super::report::{number, CellResult, OverloadRun};
use super::system::{Engine, System};
use super::{say, BenchError, Runner, SEED};
use crate::cluster::ProcessId;
use crate::throttle::{Throttle, ThrottleOptions};

/// Offered load as a multiple of the peak.
pub const SURGE_FACTOR: f64 = 10.0;
/// The coordinator's default admission limit (`inflight_max`).
pub const INFLIGHT_MAX_SHIPPED: usize = coordinator::config::INFLIGHT_MAX_DEFAULT;

/// Runs the peak search and both surges on `db`.
pub async fn run(runner: &mut Runner, db: Db) -> Result<(), BenchError> {
    let pg = super::Runner::postgres(db).await?;
    let mut system = runner
        .cluster_system(db, pg.as_ref(), 0, ClusterKind::Shipped, &[])
        .await?;
    let mut peak: Option<CellResult> = None;
    for clients in runner.options().concurrency.clone() {
        let cell = runner
            .cell(
                &mut system,
                (db, Workload::Uniform, Variant::TwoPhase, clients),
            )
            .await?;
        say(&format!(
            "peak search {db}, {clients} clients: {} bookings/s, p99 {} ms",
            number(cell.bookings_per_s),
            number(cell.p99_ms)
        ));
        runner.emit("cell", &cell);
        if peak
            .as_ref()
            .is_none_or(|p| cell.bookings_per_s > p.bookings_per_s)
        {
            peak = Some(cell.clone());
        }
        runner.output.cells.push(cell);
    }
    let peak = peak.expect("options hold at least one concurrency");
    let mut limits = vec![INFLIGHT_MAX_SHIPPED];
    if peak.clients != INFLIGHT_MAX_SHIPPED {
        limits.push(peak.clients);
    }
    for inflight_max in limits {
        if inflight_max != INFLIGHT_MAX_SHIPPED {
            limit_inflight(&mut system, inflight_max).await?;
        }
        // The shipped client first: the bare stubs' surge leaves bookings
        // running long after its window.
        for throttle in [Some(ThrottleOptions::default()), None] {
            let run = surge(runner, &mut system, db, &peak, inflight_max, throttle).await?;
            runner.emit("overload", &run);
            runner.output.overloads.push(run);
        }
    }
    system.stop().await;
    drop(pg);
    Ok(())
}

/// Rewrites `inflight_max` in coordinator.toml and restarts the coordinator.
async fn limit_inflight(system: &mut System, inflight_max: usize) -> Result<(), BenchError> {
    let Engine::Cluster(cluster) = &mut system.engine else {
        unreachable!("the overload system is a cluster")
    };
    let path = cluster.cluster.config_path();
    let text = std::fs::read_to_string(&path)
        .map_err(|source| BenchError::io(format!("read {}", path.display()), source))?;
    let text = with_inflight_max(&text, inflight_max);
    std::fs::write(&path, text)
        .map_err(|source| BenchError::io(format!("write {}", path.display()), source))?;
    say(&format!(
        "restarting the coordinator with inflight_max = {inflight_max}"
    ));
    cluster.cluster.restart(ProcessId::Coordinator).await?;
    Ok(())
}

/// coordinator.toml with `inflight_max = n` as its first key (top-level
/// keys must come before the first `[[shards]]`), any earlier one removed.
pub fn with_inflight_max(config: &str, inflight_max: usize) -> String {
    let kept: String = config
        .lines()
        .filter(|line| !line.trim_start().starts_with("inflight_max"))
        .map(|line| format!("{line}\n"))
        .collect();
    format!("inflight_max = {inflight_max}\n{kept}")
}

/// One open-loop surge at SURGE_FACTOR × the peak, through a fresh
/// client throttle of `throttle` (None: bare stubs).
async fn surge(
    runner: &mut Runner,
    system: &mut System,
    db: Db,
    peak: &CellResult,
    inflight_max: usize,
    throttle: Option<ThrottleOptions>,
) -> Result<OverloadRun, BenchError> {
    let flights = system.flights_for(Workload::Uniform).await?;
    let Engine::Cluster(cluster) = &system.engine else {
        unreachable!("the overload system is a cluster")
    };
    // Enough connections for every client the surge may have in flight.
    let booker = Arc::new(
        cluster
            .booker(Mode::TwoPhase, CONNECTIONS_MAX * CLIENTS_PER_CONNECTION)
            .with_throttle(throttle.map(|options| {
                Throttle::new(options).expect("the bench's throttle options are valid")
            })),
    );
    let warm = Load {
        booker: Arc::clone(&booker),
        flights: flights.clone(),
        key_prefix: format!("warm-{inflight_max}"),
        seed: SEED,
    };
    let _ = open_loop(&warm, peak.bookings_per_s / 2.0, Duration::from_millis(500)).await;
    let rate = SURGE_FACTOR * peak.bookings_per_s;
    let client = throttle.map_or("bare stubs".to_string(), |t| {
        format!("client throttle k = {}", t.k)
    });
    say(&format!(
        "surge {db}: offering {} bookings/s open-loop for {} s (inflight_max = {inflight_max}, {client})",
        number(rate),
        runner.options().seconds
    ));
    let load = Load {
        booker,
        flights,
        key_prefix: format!("surge-{inflight_max}-{}", throttle.is_some()),
        seed: SEED + 1,
    };
    let run = open_loop(&load, rate, Duration::from_secs(runner.options().seconds)).await;
    system.note_committed(run.tally.committed);
    Ok(overload_run(db, inflight_max, throttle, peak, rate, &run))
}

/// The row of one surge.
pub fn overload_run(
    db: Db,
    inflight_max: usize,
    throttle: Option<ThrottleOptions>,
    peak: &CellResult,
    target_per_s: f64,
    run: &OpenLoop,
) -> OverloadRun {
    let tally = &run.tally;
    let admitted_p99_ms = tally.answered_ms(0.99);
    OverloadRun {
        db,
        inflight_max,
        client_throttle_k: throttle.map(|t| t.k),
        peak_clients: peak.clients,
        peak_per_s: peak.bookings_per_s,
        peak_p99_ms: peak.p99_ms,
        target_per_s,
        offered_per_s: run.offered_per_s(),
        goodput_per_s: run.goodput_per_s(),
        goodput_vs_peak: run.goodput_per_s() / peak.bookings_per_s.max(1e-9),
        admitted: tally.answered(),
        admitted_p50_ms: tally.answered_ms(0.5),
        admitted_p99_ms,
        admitted_p99_vs_peak: admitted_p99_ms / peak.p99_ms.max(1e-9),
        aborted_other: tally.aborted_other(),
        aborted_by_reason: tally.aborted.clone(),
        failed_by_code: tally.failed.clone(),
        refused: tally.refused,
        refused_with_hint: tally.refused_with_hint,
        throttled: tally.throttled,
        refusal_p50_ms: tally.refused_all_ms(0.5),
        refusal_p99_ms: tally.refused_all_ms(0.99),
        coordinator_refusal_p99_ms: tally.refused_ms(0.99),
        client_refusal_p99_ms: tally.throttled_ms(0.99),
        failed: tally.failed_total(),
        unfinished: run.unfinished,
        bench_cpu_share: run.own_cpu_seconds / run.window.as_secs_f64().max(1e-9),
    }
}

#[cfg(test)]
mod tests {
    use super::super::driver::{Answer, Tally};
    use super::*;

    #[test]
    fn the_admission_limit_becomes_the_first_key() {
        let config = "listen = \"127.0.0.1:1\"\ninflight_max = 9\n[[shards]]\nname = \"s0\"\n";
        let rewritten = with_inflight_max(config, 64);
        assert_eq!(
            rewritten,
            "inflight_max = 64\nlisten = \"127.0.0.1:1\"\n[[shards]]\nname = \"s0\"\n"
        );
    }

    #[test]
    fn a_surge_row_compares_with_the_peak() {
        let mut tally = Tally::default();
        for _ in 0..90 {
            tally.record(&Answer::Committed, Duration::from_millis(20));
        }
        tally.record(
            &Answer::Refused { retry_hint: true },
            Duration::from_micros(800),
        );
        tally.record(
            &Answer::Aborted("DEADLINE".into()),
            Duration::from_millis(20),
        );
        let run = OpenLoop {
            tally: tally.clone(),
            issued: 1000,
            window: Duration::from_secs(1),
            good_in_window: 90,
            unfinished: 0,
            own_cpu_seconds: 0.5,
        };
        let mut peak_tally = Tally::default();
        peak_tally.record(&Answer::Committed, Duration::from_millis(10));
        let peak = CellResult::new(
            (Db::Sqlite, Workload::Uniform, Variant::TwoPhase, 64),
            &peak_tally,
            0.01,
        );
        let row = overload_run(Db::Sqlite, 64, None, &peak, 1000.0, &run);
        assert_eq!(row.peak_per_s, 100.0);
        assert!((row.goodput_vs_peak - 0.9).abs() < 1e-9);
        assert!(
            (row.admitted_p99_vs_peak - 2.0).abs() < 0.01,
            "{}",
            row.admitted_p99_vs_peak
        );
        assert_eq!((row.refused, row.refused_with_hint), (1, 1));
        assert!((row.refusal_p99_ms - 0.8).abs() < 0.01);
        assert_eq!(row.offered_per_s, 1000.0);
        assert_eq!(row.bench_cpu_share, 0.5);
        assert_eq!(row.aborted_by_reason["DEADLINE"], 1);
        let table = super::super::report::overload_table(&[row]);
        assert!(table.contains("reason: DEADLINE 1"), "{table}");
    }
}
