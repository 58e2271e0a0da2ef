//! `bookctl`: the operator's command line for the booking system. A thin
//! binary: it parses flags, calls the `booking_client` library, prints.
//!
//! Exit status: 0 on success (a COMMITTED booking), 2 when a booking was
//! ABORTED or the demo found a broken invariant, 1 on any error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use booking_client::client::{self, BookingClient, LegSpec};
use booking_client::demo::{self, DemoBackend, DemoOptions};
use booking_client::load::StopAfter;
use booking_client::render;
use booking_proto::v1::{BookRequest, Mode, Outcome};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "bookctl",
    version,
    about = "Book seats across shards, inspect flights and transactions, run the demo"
)]
struct Cli {
    /// The coordinator's address.
    #[arg(
        long,
        global = true,
        env = "BOOKCTL_COORDINATOR",
        default_value = "http://127.0.0.1:7000"
    )]
    coordinator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or show flights.
    #[command(subcommand)]
    Flights(FlightsCommand),
    /// Book an itinerary, all legs or none. Exits 2 when the booking is ABORTED.
    Book(BookArgs),
    /// Show a transaction by txid or by idempotency key.
    Status(StatusArgs),
    /// Start a local cluster, run a flash sale on it, and check every invariant.
    Demo(DemoArgs),
    /// Operator actions on the live coordinator.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Start local clusters, book a fixed workload on 2PC and its
    /// baselines, print throughput, latency, fsync and CPU figures.
    Bench(booking_client::bench::BenchArgs),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Re-drive a stuck transaction now: re-send its decision (or resolve /
    /// compensate it) instead of waiting for its next retry. Never changes
    /// a decision; there is no "force commit". Find stuck ones with
    /// `coordinator inspect list --state open`.
    Retry {
        txid: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FlightsCommand {
    /// Create a flight on the participant that owns it.
    Create {
        #[arg(long)]
        flight: String,
        /// Seat rows, numbered from 1.
        #[arg(long)]
        rows: u32,
        /// Seat letters of each row, e.g. ABCDEF.
        #[arg(long, default_value = "ABCDEF")]
        letters: String,
        /// Talk to this participant instead of asking the coordinator which one owns the flight.
        #[arg(long)]
        participant: Option<String>,
    },
    /// Show a flight's inventory.
    Show {
        flight: String,
        /// Also show the seat map.
        #[arg(long)]
        seats: bool,
        #[arg(long)]
        participant: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    TwoPhase,
    Saga,
}

#[derive(Args)]
struct BookArgs {
    /// Idempotency key: reuse it to retry safely. A fresh one is made when omitted.
    #[arg(long)]
    key: Option<String>,
    /// A leg: FLIGHT:COUNT (any seats) or FLIGHT:12A,12B (those seats). Repeat for more legs.
    #[arg(long = "leg", required = true, value_parser = parse_leg)]
    legs: Vec<LegSpec>,
    /// Passenger names, one per seat of each leg (the same people fly every leg).
    #[arg(long = "passenger")]
    passengers: Vec<String>,
    #[arg(long, value_enum, default_value = "two-phase")]
    mode: ModeArg,
    /// Booking deadline; 0 uses the coordinator's default.
    #[arg(long, default_value_t = 0)]
    timeout_ms: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// The transaction id.
    #[arg(conflicts_with = "key", required_unless_present = "key")]
    txid: Option<String>,
    /// Look the transaction up by its idempotency key instead.
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Sqlite,
    Postgres,
}

#[derive(Args)]
struct DemoArgs {
    /// Concurrent customers.
    #[arg(long, default_value_t = 64)]
    customers: usize,
    /// How long customers keep booking.
    #[arg(long, default_value_t = 10, conflicts_with = "itineraries")]
    duration_secs: u64,
    /// Stop after this many itineraries instead of after a duration.
    #[arg(long)]
    itineraries: Option<u64>,
    #[arg(long, default_value_t = 24)]
    flights: usize,
    #[arg(long, default_value_t = 30)]
    seats_per_flight: u32,
    /// Directory for configuration, logs and databases (new or empty); a fresh temporary one by default.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the temporary data directory.
    #[arg(long)]
    keep: bool,
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: BackendArg,
    /// Share of itineraries booked in SAGA mode (0-100).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    saga_percent: u8,
}

fn parse_leg(text: &str) -> Result<LegSpec, String> {
    LegSpec::parse(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Flights(command) => flights(&cli.coordinator, command).await,
        Command::Book(args) => book(&cli.coordinator, args).await,
        Command::Status(args) => status(&cli.coordinator, args).await,
        Command::Demo(args) => run_demo(args).await,
        Command::Admin(AdminCommand::Retry { txid, json }) => {
            admin_retry(&cli.coordinator, &txid, json).await
        }
        Command::Bench(args) => run_bench(args).await,
    }
}

async fn run_bench(args: booking_client::bench::BenchArgs) -> anyhow::Result<ExitCode> {
    use booking_client::bench::{self, BenchOptions};
    let options = BenchOptions::try_from(&args).map_err(anyhow::Error::msg)?;
    let output = bench::run(&options).await.context("run the benchmark")?;
    if !options.json {
        println!("machine: {}", bench::machine());
        print!("{}", output.markdown());
    }
    Ok(ExitCode::SUCCESS)
}

async fn admin_retry(coordinator: &str, txid: &str, json: bool) -> anyhow::Result<ExitCode> {
    let status = connect(coordinator)
        .await?
        .retry_transaction(txid)
        .await
        .with_context(|| format!("re-drive transaction {txid}"))?;
    if json {
        println!("{}", render::status_json(&status));
    } else {
        println!("re-driving {txid} now; its state as the coordinator sees it:");
        print!("{}", render::status_text(&status));
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(url: &str) -> anyhow::Result<BookingClient> {
    BookingClient::connect(url)
        .await
        .with_context(|| format!("connect to the coordinator at {url}"))
}

/// The participant to talk to: the one given, or the owner per the coordinator.
async fn participant_for(
    coordinator: &str,
    flight: &str,
    given: Option<String>,
) -> anyhow::Result<String> {
    if let Some(url) = given {
        return Ok(url);
    }
    let route = connect(coordinator)
        .await?
        .route(flight)
        .await
        .with_context(|| format!("route flight {flight}"))?;
    Ok(route.address)
}

async fn flights(coordinator: &str, command: FlightsCommand) -> anyhow::Result<ExitCode> {
    match command {
        FlightsCommand::Create {
            flight,
            rows,
            letters,
            participant,
        } => {
            let url = participant_for(coordinator, &flight, participant).await?;
            let inventory = client::create_flight(&url, &flight, rows, &letters)
                .await
                .with_context(|| format!("create flight {flight} on {url}"))?;
            print!("created {}", render::flight_text(&inventory, None));
        }
        FlightsCommand::Show {
            flight,
            seats,
            participant,
            json,
        } => {
            let route = match participant {
                Some(_) => None,
                None => Some(
                    connect(coordinator)
                        .await?
                        .route(&flight)
                        .await
                        .with_context(|| format!("route flight {flight}"))?,
                ),
            };
            let url = participant
                .or_else(|| route.as_ref().map(|r| r.address.clone()))
                .unwrap_or_default();
            let inventory = client::get_flight(&url, &flight, seats)
                .await
                .with_context(|| format!("read flight {flight} from {url}"))?;
            if json {
                println!("{}", render::flight_json(&inventory));
            } else {
                print!("{}", render::flight_text(&inventory, route.as_ref()));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn book_request(args: &BookArgs) -> anyhow::Result<BookRequest> {
    for leg in &args.legs {
        if !args.passengers.is_empty() && args.passengers.len() != leg.seat_count() {
            bail!(
                "leg {leg} books {} seats but {} passengers are named; name one per seat, or none",
                leg.seat_count(),
                args.passengers.len()
            );
        }
    }
    let mode = match args.mode {
        ModeArg::TwoPhase => Mode::TwoPhase,
        ModeArg::Saga => Mode::Saga,
    };
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| format!("bookctl-{}", uuid::Uuid::new_v4()));
    Ok(BookRequest {
        idempotency_key: key,
        mode: mode as i32,
        timeout_ms: args.timeout_ms,
        legs: args
            .legs
            .iter()
            .map(|leg| leg.to_leg_request(&args.passengers))
            .collect(),
    })
}

async fn book(coordinator: &str, args: BookArgs) -> anyhow::Result<ExitCode> {
    let request = book_request(&args)?;
    let key = request.idempotency_key.clone();
    let result = connect(coordinator).await?.book(request).await;
    let reply = result.map_err(|error| {
        let hint = if error.is_retryable() {
            " (retry with the same --key: it cannot book twice)"
        } else {
            ""
        };
        anyhow::Error::new(error).context(format!("book with idempotency key {key:?}{hint}"))
    })?;
    if args.json {
        println!("{}", render::book_reply_json(&reply));
    } else {
        print!("key {key:?}: {}", render::book_reply_text(&reply));
    }
    let committed = reply.outcome == Outcome::Committed as i32;
    Ok(if committed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn status(coordinator: &str, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = connect(coordinator).await?;
    let status = match (&args.txid, &args.key) {
        (Some(txid), _) => client
            .status_by_txid(txid)
            .await
            .with_context(|| format!("look up txid {txid}"))?,
        (None, Some(key)) => client
            .status_by_key(key)
            .await
            .with_context(|| format!("look up key {key:?}"))?,
        (None, None) => bail!("give a txid or --key"),
    };
    if args.json {
        println!("{}", render::status_json(&status));
    } else {
        print!("{}", render::status_text(&status));
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let stop = match args.itineraries {
        Some(count) => StopAfter::Itineraries(count),
        None => StopAfter::Duration(Duration::from_secs(args.duration_secs)),
    };
    let options = DemoOptions {
        customers: args.customers,
        stop,
        flights: args.flights,
        seats_per_flight: args.seats_per_flight,
        data_dir: args.data_dir,
        keep: args.keep,
        backend: match args.backend {
            BackendArg::Sqlite => DemoBackend::Sqlite,
            BackendArg::Postgres => DemoBackend::Postgres,
        },
        saga_percent: args.saga_percent,
    };
    let summary = demo::run(options).await.context("run the demo")?;
    print!("{summary}");
    Ok(if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn passengers_must_match_every_leg() {
        let cli = Cli::try_parse_from([
            "bookctl",
            "book",
            "--leg",
            "BA117:2",
            "--leg",
            "LH400:12A",
            "--passenger",
            "Ada",
        ])
        .expect("flags parse");
        let Command::Book(args) = cli.command else {
            panic!("book")
        };
        assert!(book_request(&args)
            .unwrap_err()
            .to_string()
            .contains("BA117:2 books 2 seats"));
    }

    #[test]
    fn a_booking_request_carries_legs_mode_and_key() {
        let cli = Cli::try_parse_from([
            "bookctl",
            "book",
            "--key",
            "k1",
            "--leg",
            "BA117:2",
            "--leg",
            "LH400:12A,12B",
            "--mode",
            "saga",
        ])
        .expect("flags parse");
        let Command::Book(args) = cli.command else {
            panic!("book")
        };
        let request = book_request(&args).unwrap();
        assert_eq!(request.idempotency_key, "k1");
        assert_eq!(request.mode, Mode::Saga as i32);
        assert_eq!(request.legs[1].seats, ["12A", "12B"]);
        booking_proto::validate::book_request(&request).expect("valid");
    }

    #[test]
    fn bench_flags_are_checked_before_anything_starts() {
        let cli = Cli::try_parse_from(["bookctl", "bench", "--variants", "a,e"]).expect("parses");
        let Command::Bench(args) = cli.command else {
            panic!("bench")
        };
        let error = booking_client::bench::BenchOptions::try_from(&args).unwrap_err();
        assert!(error.contains("needs --db postgres"), "{error}");
    }

    #[test]
    fn bad_legs_are_refused_at_parse_time() {
        assert!(Cli::try_parse_from(["bookctl", "book", "--leg", "ba117:2"]).is_err());
    }
}
