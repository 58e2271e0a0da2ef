//! Recovery at scale: a coordinator restarted over a decision log that holds
//! `--txns` undecided 2PC transactions (BEGIN logged, no decision), each
//! with its seats held (PREPARED) on two shards. This is what a coordinator
//! crash in the middle of a very large burst leaves behind. Prints how long
//! the restarted coordinator takes to serve again, and how long until every
//! transaction is resolved (presumed abort: ABORT logged, every hold
//! released); exits 1 if the shards break an invariant at the end.
//!
//! `cargo run --release -p booking-tests --bin recovery_bench -- --txns 100000`
//!
//! The state is built with the coordinator stopped: the BEGIN records are
//! appended through the coordinator's own log code (`DecisionLog`) and the
//! PREPAREs are sent to the real participant processes, so the shards hold
//! exactly what a crashed coordinator would have left there. Timing starts
//! when the coordinator process is spawned:
//! - serving: its ready line (replay done, health SERVING);
//! - resolved: no shard lists a prepared txid any more (`ListTxns`, polled
//!   every 50 ms), and the coordinator's registry counts no undecided or
//!   in-doubt transaction (its gauges, refreshed once a second).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use booking_client::checker::{self, CheckMode, Oracle};
use booking_client::ProcessId;
use booking_proto::log_v1::LegSummary;
use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{ListTxnsRequest, Mode, PrepareRequest, ShardLeg};
use booking_tests::{metrics_scrape, start_with, Db};
use clap::Parser;
use coordinator::log::{DecisionLog, Durability, LogOptions};
use coordinator::records::TxnHeader;
use futures::{stream, StreamExt, TryStreamExt};
use tonic::transport::Channel;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(
    about = "Time for a restarted coordinator to serve, and to resolve N undecided transactions"
)]
struct Args {
    /// Undecided transactions in the log (each holding one seat on each of two shards).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    txns: u64,
    /// PREPAREs in flight per shard while the state is built.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Give up waiting for resolution after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// Seats per flight: 30 rows of ABCDEF.
const ROWS: u32 = 30;
const LETTERS: &str = "ABCDEF";
const SEATS_PER_FLIGHT: u64 = 180;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    booking_tests::init_tracing_from_env();
    let args = Args::parse();
    let mut test = start_with(Db::Sqlite, |spec| {
        // The participants' own in-doubt sweep as shipped (2 s), so that
        // they ask GetDecision as they would in production.
        spec.in_doubt_after_ms = 2_000;
        spec.ready_timeout = Duration::from_secs(120);
    })
    .await;
    let shards = test.cluster.shards();
    ensure!(shards >= 2, "the benchmark needs at least two shards");

    // Flights: enough seats on every shard for its share of the holds.
    let per_shard_seats = args.txns * 2 / shards as u64 + 1;
    let per_shard_flights = (per_shard_seats / SEATS_PER_FLIGHT + 2) as usize;
    let started = Instant::now();
    let flights = create_flights(&test.cluster, shards, per_shard_flights).await?;
    println!(
        "{} flights created in {:.1} s",
        flights.iter().map(Vec::len).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );

    // The coordinator goes away; the log and the shards get the state.
    test.cluster.kill(ProcessId::Coordinator).await?;
    let txns: Vec<Txn> = (0..args.txns)
        .map(|i| Txn::new(i, shards, &flights))
        .collect();
    let log_dir = test.cluster.data_dir().join("coordinator-log");
    let started = Instant::now();
    write_begins(&log_dir, &txns).await?;
    println!(
        "{} BEGIN records appended in {:.1} s",
        txns.len(),
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    prepare_all(&test.cluster, &txns, args.concurrency as usize).await?;
    let held = prepared_counts(&test.cluster).await?;
    println!(
        "{} PREPAREs voted YES in {:.1} s; prepared per shard: {held:?}",
        txns.len() * 2,
        started.elapsed().as_secs_f64()
    );
    ensure!(
        held.iter().sum::<u64>() == args.txns * 2,
        "expected {} prepared txids on the shards, found {held:?}",
        args.txns * 2
    );

    // The restart.
    let started = Instant::now();
    test.cluster.restart(ProcessId::Coordinator).await?;
    let serving = started.elapsed();
    let coordinator_metrics = test
        .cluster
        .metrics_address(ProcessId::Coordinator)
        .context("the coordinator serves metrics")?;
    let scraped = metrics_scrape(coordinator_metrics).await?;
    let replay_s = scraped
        .get("coordinator_recovery_seconds")
        .copied()
        .unwrap_or(f64::NAN);
    let records = scraped
        .get("coordinator_recovery_records")
        .copied()
        .unwrap_or(f64::NAN);
    let undecided = scraped
        .iter()
        .find(|(name, _)| {
            name.starts_with("coordinator_recovery_transactions")
                && name.contains("abort_undecided")
        })
        .map_or(f64::NAN, |(_, v)| *v);
    println!(
        "serving after {} ms (replay {replay_s:.3} s of {records} records; {undecided} undecided)",
        serving.as_millis()
    );

    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut shards_released = None;
    let mut registry_settled = None;
    while shards_released.is_none() || registry_settled.is_none() {
        if Instant::now() > deadline {
            bail!(
                "not resolved after {} s: shards released {shards_released:?}, registry settled {registry_settled:?}; prepared now {:?}",
                args.timeout_secs,
                prepared_counts(&test.cluster).await?
            );
        }
        if shards_released.is_none() && no_prepared(&test.cluster).await? {
            shards_released = Some(started.elapsed());
        }
        if registry_settled.is_none() {
            let gauges = metrics_scrape(coordinator_metrics).await?;
            let open = gauges
                .get("coordinator_undecided")
                .copied()
                .unwrap_or(f64::NAN)
                + gauges
                    .get("coordinator_in_doubt")
                    .copied()
                    .unwrap_or(f64::NAN);
            if open == 0.0 {
                registry_settled = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shards_released = shards_released.expect("loop ends when set");
    let registry_settled = registry_settled.expect("loop ends when set");

    let urls = test.cluster.shard_database_urls();
    checker::wait_quiescent(&urls, Duration::from_secs(60)).await?;
    let report = checker::check(&urls, &Oracle::new(), CheckMode::Quiescent).await?;
    println!();
    println!("undecided txns | serving (ms) | replay (s) | holds released (s) | registry settled (s) | invariants");
    println!(
        "{:>14} | {:>12} | {:>10.3} | {:>18.2} | {:>20.2} | {}",
        args.txns,
        serving.as_millis(),
        replay_s,
        shards_released.as_secs_f64(),
        registry_settled.as_secs_f64(),
        if report.is_ok() { "hold" } else { "VIOLATED" }
    );
    if !report.is_ok() {
        eprintln!("invariants violated:\n{report}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// One undecided transaction: one seat on each of two shards.
struct Txn {
    header: TxnHeader,
    /// (shard index, its leg).
    legs: Vec<(usize, ShardLeg)>,
}

impl Txn {
    /// Transaction `i` books on shards `i % n` and `(i + 1) % n`, spread
    /// over each shard's flights.
    fn new(i: u64, shards: usize, flights: &[Vec<String>]) -> Txn {
        let first = (i % shards as u64) as usize;
        let mut chosen = [first, (first + 1) % shards];
        chosen.sort_unstable();
        let round = (i / shards as u64) as usize;
        let legs: Vec<(usize, ShardLeg)> = chosen
            .iter()
            .enumerate()
            .map(|(leg_index, &shard)| {
                let on_shard = &flights[shard];
                let leg = ShardLeg {
                    leg_index: leg_index as u32,
                    flight_id: on_shard[round % on_shard.len()].clone(),
                    seat_count: 1,
                    seats: Vec::new(),
                    passengers: vec![format!("P{i}")],
                };
                (shard, leg)
            })
            .collect();
        let header = TxnHeader {
            txid: Uuid::now_v7(),
            key: format!("recovery-bench-{i}"),
            fingerprint: i,
            mode: Mode::TwoPhase,
            one_phase: false,
            shards: chosen.iter().map(|s| format!("s{s}")).collect(),
            legs: legs
                .iter()
                .map(|(shard, leg)| LegSummary {
                    leg_index: leg.leg_index,
                    flight_id: leg.flight_id.clone(),
                    shard: format!("s{shard}"),
                    seat_count: 1,
                    seats: Vec::new(),
                    passengers: leg.passengers.clone(),
                })
                .collect(),
        };
        Txn { header, legs }
    }
}

/// Flights named RB00000.. until every shard has `per_shard` of them;
/// `result[s]` lists shard s's.
async fn create_flights(
    cluster: &booking_client::Cluster,
    shards: usize,
    per_shard: usize,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut by_shard = vec![Vec::new(); shards];
    let mut wanted = Vec::new();
    let mut i = 0;
    while by_shard.iter().any(|f: &Vec<String>| f.len() < per_shard) {
        let flight_id = format!("RB{i:05}");
        i += 1;
        let shard = cluster.shard_of(&flight_id);
        if by_shard[shard].len() < per_shard {
            by_shard[shard].push(flight_id.clone());
            wanted.push(flight_id);
        }
    }
    stream::iter(wanted)
        .map(|flight_id| async move {
            cluster
                .create_flight(&flight_id, ROWS, LETTERS)
                .await
                .with_context(|| format!("create flight {flight_id}"))
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(by_shard)
}

/// Appends every transaction's BEGIN, then closes the log.
async fn write_begins(dir: &std::path::Path, txns: &[Txn]) -> anyhow::Result<()> {
    let (log, _replayed) =
        DecisionLog::open(LogOptions::new(dir)).context("open the decision log")?;
    stream::iter(txns)
        .map(|txn| log.append(txn.header.begin(), Durability::Written))
        .buffer_unordered(1024)
        .try_collect::<Vec<_>>()
        .await
        .context("append BEGIN")?;
    log.shutdown().await.context("close the decision log")?;
    Ok(())
}

/// Sends every PREPARE; fails unless each is voted YES.
async fn prepare_all(
    cluster: &booking_client::Cluster,
    txns: &[Txn],
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for shard in 0..cluster.shards() {
        let url = cluster.participant_url(shard);
        let channel = Channel::from_shared(url.clone())?
            .connect()
            .await
            .with_context(|| format!("connect {url}"))?;
        clients.push(ParticipantClient::new(channel));
    }
    let clients = Arc::new(clients);
    let prepares = txns.iter().flat_map(|txn| {
        txn.legs
            .iter()
            .map(move |(shard, leg)| (txn.header.txid, *shard, leg.clone()))
    });
    stream::iter(prepares)
        .map(|(txid, shard, leg)| {
            let clients = Arc::clone(&clients);
            async move {
                let request = PrepareRequest {
                    txid: txid.to_string(),
                    legs: vec![leg],
                    itinerary_legs: 2,
                };
                let vote = clients[shard].clone().prepare(request).await?.into_inner();
                ensure!(vote.yes, "s{shard} voted NO on {txid}: {:?}", vote.refusal);
                Ok(())
            }
        })
        .buffer_unordered(concurrency * cluster.shards())
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

async fn participant(
    cluster: &booking_client::Cluster,
    shard: usize,
) -> anyhow::Result<ParticipantClient<Channel>> {
    let url = cluster.participant_url(shard);
    ParticipantClient::connect(url.clone())
        .await
        .with_context(|| format!("connect {url}"))
}

/// True once no shard lists a prepared txid.
async fn no_prepared(cluster: &booking_client::Cluster) -> anyhow::Result<bool> {
    for shard in 0..cluster.shards() {
        let reply = participant(cluster, shard)
            .await?
            .list_txns(ListTxnsRequest {
                prepared_only: true,
                limit: 1,
                txid: String::new(),
            })
            .await?
            .into_inner();
        if !reply.txns.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Prepared txids per shard (`participant_prepared` on each `/metrics`).
async fn prepared_counts(cluster: &booking_client::Cluster) -> anyhow::Result<Vec<u64>> {
    let mut counts = Vec::new();
    for shard in 0..cluster.shards() {
        let address = cluster
            .metrics_address(ProcessId::Participant(shard))
            .context("participants serve metrics")?;
        let scraped = metrics_scrape(address).await?;
        counts.push(
            scraped
                .get("participant_prepared")
                .copied()
                .unwrap_or(f64::NAN) as u64,
        );
    }
    Ok(counts)
}
