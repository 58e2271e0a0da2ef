//! How big the decision log gets, and how long a restart takes, as history
//! grows: the same long booking run twice, with retention on (a short
//! window) and effectively off (a window of years), restarting the
//! coordinator at every checkpoint. Prints one table; exits 1 if an
//! invariant is broken at the end of a run.
//!
//! `cargo run --release -p booking-tests --bin log_growth -- --bookings 100000`
//!
//! Restart time is measured from SIGKILL to the coordinator's ready line
//! (replay done, health SERVING), plus the replay time the coordinator
//! itself reports on `/metrics` (`coordinator_recovery_seconds`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use booking_client::checker::{self, CheckMode, Oracle};
use booking_client::load::{self, FlightPlan, LoadSpec, StopAfter};
use booking_client::{Cluster, ProcessId};
use booking_tests::{metrics_scrape, start_with, Db};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Decision-log size and restart time as bookings accumulate, with and without retention")]
struct Args {
    /// Bookings (answered itineraries) per run.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1_000..))]
    bookings: u64,
    /// Restarts of the coordinator along each run (evenly spaced).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=20))]
    checkpoints: u64,
    /// Retention window of the "on" run, seconds.
    #[arg(long, default_value_t = 5)]
    retention_secs: u64,
    /// Segment size, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    segment_bytes: u64,
    #[arg(long, default_value_t = 64)]
    customers: usize,
}

/// A window no run outlives: retention is effectively off.
const NEVER_SECS: u64 = 100 * 365 * 24 * 3600;

struct Row {
    run: &'static str,
    bookings: u64,
    segments: usize,
    bytes: u64,
    peak_bytes: u64,
    ready_ms: u128,
    replay_s: f64,
    records: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    booking_tests::init_tracing_from_env();
    let args = Args::parse();
    let mut rows = Vec::new();
    let mut broken = false;
    for (run, window) in [("retention on", args.retention_secs), ("retention off", NEVER_SECS)] {
        println!("{run}: {} bookings, {} checkpoints, window {window} s", args.bookings, args.checkpoints);
        broken |= !measure(&args, run, window, &mut rows).await?;
    }
    println!();
    println!(
        "{:<14} {:>9} {:>9} {:>12} {:>12} {:>10} {:>10} {:>9}",
        "run", "bookings", "segments", "log bytes", "peak bytes", "ready ms", "replay s", "records"
    );
    for r in &rows {
        println!(
            "{:<14} {:>9} {:>9} {:>12} {:>12} {:>10} {:>10.3} {:>9}",
            r.run, r.bookings, r.segments, r.bytes, r.peak_bytes, r.ready_ms, r.replay_s, r.records
        );
    }
    Ok(if broken { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// One run; Ok(false) when the invariants failed at its end.
async fn measure(args: &Args, run: &'static str, window: u64, rows: &mut Vec<Row>) -> anyhow::Result<bool> {
    let segment_bytes = args.segment_bytes.to_string();
    let mut test = start_with(Db::Sqlite, |spec| {
        spec.coordinator_settings
            .push(("segment_bytes_max".into(), segment_bytes));
        spec.coordinator_settings
            .push(("log_retention_secs".into(), window.to_string()));
        // Rows of the fixed workload below need room for 100k+ bookings.
        spec.default_timeout_ms = 5_000;
    })
    .await;
    let flights = create_flights(&test.cluster, 150, 200).await?;
    let log_dir = test.cluster.data_dir().join("coordinator-log");
    let oracle = Arc::new(Oracle::new());
    let per_checkpoint = args.bookings / args.checkpoints;
    let mut booked = 0;
    for checkpoint in 0..args.checkpoints {
        let client = test.cluster.client().await.context("connect")?;
        let mut spec = LoadSpec::new(flights.clone());
        spec.customers = args.customers;
        spec.stop = StopAfter::Itineraries(per_checkpoint);
        spec.legs_max = 2;
        spec.passengers_max = 1;
        spec.key_prefix = format!("{}-{checkpoint}", run.replace(' ', "-"));
        let sampler = PeakSampler::start(log_dir.clone());
        let report = load::run(&client, &spec, &oracle).await;
        let peak_bytes = sampler.stop().await;
        booked += report.committed + report.aborted_total();
        // Let retention pass over what just ended.
        tokio::time::sleep(Duration::from_secs(if window < NEVER_SECS { window + 2 } else { 0 })).await;
        let (segments, bytes) = coordinator::metrics::log_size(&log_dir);
        test.cluster.kill(ProcessId::Coordinator).await?;
        let started = Instant::now();
        test.cluster.restart(ProcessId::Coordinator).await?;
        let ready_ms = started.elapsed().as_millis();
        let address = test
            .cluster
            .metrics_address(ProcessId::Coordinator)
            .context("the coordinator serves metrics")?;
        let scraped = metrics_scrape(address).await?;
        let row = Row {
            run,
            bookings: booked,
            segments,
            bytes,
            peak_bytes: peak_bytes.max(bytes),
            ready_ms,
            replay_s: scraped.get("coordinator_recovery_seconds").copied().unwrap_or(f64::NAN),
            records: scraped.get("coordinator_recovery_records").copied().unwrap_or(f64::NAN),
        };
        println!(
            "  {run}: {booked} bookings, {segments} segments, {bytes} bytes (peak {}), ready in {ready_ms} ms after {} records",
            row.peak_bytes, row.records
        );
        rows.push(row);
    }
    let urls = test.cluster.shard_database_urls();
    checker::wait_quiescent(&urls, Duration::from_secs(60)).await?;
    let report = checker::check(&urls, &oracle, CheckMode::Quiescent).await?;
    if !report.is_ok() {
        eprintln!("{run}: invariants violated:\n{report}");
    }
    Ok(report.is_ok())
}

/// `count` flights of `rows` × ABCDEF seats.
async fn create_flights(cluster: &Cluster, count: usize, rows: u32) -> anyhow::Result<Vec<FlightPlan>> {
    let mut plans = Vec::with_capacity(count);
    for i in 0..count {
        let flight_id = format!("LG{i:03}");
        cluster
            .create_flight(&flight_id, rows, "ABCDEF")
            .await
            .with_context(|| format!("create flight {flight_id}"))?;
        plans.push(FlightPlan {
            shard: cluster.shard_of(&flight_id),
            flight_id,
            rows,
            letters: "ABCDEF".into(),
        });
    }
    Ok(plans)
}

/// Samples the log's size every 250 ms and keeps the largest.
struct PeakSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakSampler {
    fn start(dir: std::path::PathBuf) -> PeakSampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(coordinator::metrics::log_size(&dir).1);
                tokio::select! {
                    _ = &mut stopped => return peak,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
        PeakSampler { stop, task }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}
