//! The random crash soak: N rounds of booking load + a random crash (SIGKILL
//! at a random instant or a random failpoint, in a random process) +
//! restart + recovery + the invariant checker. Prints every round and a
//! summary; exits 1 if any invariant was ever violated.
//!
//! `cargo run --release -p booking-tests --bin soak -- --rounds 200`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use booking_tests::harness::CrashHarness;
use booking_tests::Db;
use clap::{Parser, ValueEnum};

#[derive(Parser, Debug)]
#[command(about = "Random crash soak: load, crash, restart, check — N times")]
struct Args {
    /// How many rounds to run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Shard database.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    db: Backend,
    /// Seed of the random faults (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Length of each round's booking load, in milliseconds.
    #[arg(long, default_value_t = 1_500, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    load_ms: u64,
    /// Concurrent customers of each round's load.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=1024))]
    customers: u64,
    /// Stop at the first round with a violation.
    #[arg(long)]
    stop_on_violation: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    booking_tests::init_tracing_from_env();
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let db = match args.db {
        Backend::Sqlite => Db::Sqlite,
        Backend::Postgres => Db::Postgres,
    };
    println!("soak: {} rounds on {db:?} shards, seed {seed}", args.rounds);
    let started = Instant::now();
    let mut harness = CrashHarness::start(db, seed).await;
    harness.load = Duration::from_millis(args.load_ms);
    harness.customers = args.customers as usize;
    let (mut rounds, mut acknowledged, mut committed, mut unknown, mut violations) =
        (0u64, 0u64, 0u64, 0u64, 0usize);
    let mut fired = 0u64;
    for round in 1..=args.rounds {
        let fault = harness.random_fault();
        let report = harness.round(fault).await?;
        rounds += 1;
        acknowledged += report.acknowledged;
        committed += report.committed;
        unknown += report.unknown_retried;
        fired += u64::from(report.fired);
        violations += report.violations.len();
        println!("round {round:>4}: {report}");
        for violation in &report.violations {
            println!("  VIOLATION: {violation}");
        }
        if !report.violations.is_empty() && args.stop_on_violation {
            break;
        }
    }
    println!();
    println!("rounds run:              {rounds} ({fired} crashed where planned)");
    println!("bookings acknowledged:   {acknowledged} ({committed} committed)");
    println!("unanswered, then retried: {unknown}");
    println!("violations found:        {violations}");
    println!(
        "elapsed:                 {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
