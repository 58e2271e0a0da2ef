//! `bookctl demo`: a flash sale on a real local cluster, then the proof.
//!
//! Phases: find (or build) the service binaries; start three participants
//! (SQLite files in a fresh directory, or a throwaway PostgreSQL) and a
//! coordinator as separate processes; create flights small enough that the
//! customers want more seats than exist; let concurrent customers book
//! 1–3-leg itineraries; wait for quiescence; run the invariant checker on
//! the shard databases against every reply the customers got; stop.
//!
//! Progress goes to stderr; the summary is returned for the caller to print.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::checker::{self, CheckError, CheckMode, FlightSummary, Invariant, Oracle, Report};
use crate::client::{BookingClient, ClientError};
use crate::cluster::{self, Backend, Cluster, ClusterError, ClusterSpec};
use crate::load::{self, FlightPlan, LoadReport, LoadSpec, StopAfter};
use crate::pg::{PgCluster, PgError};

/// How long the demo waits for every hold to be settled after the load.
const QUIESCENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// A customer's call is cut off after this long (then counted unknown).
const CUSTOMER_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the demo's shards keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoBackend {
    Sqlite,
    Postgres,
}

/// The knobs of `bookctl demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub customers: usize,
    pub stop: StopAfter,
    pub flights: usize,
    pub seats_per_flight: u32,
    /// Where configuration, logs and SQLite files go; a fresh temporary
    /// directory when `None`. A given directory must be new or empty.
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary directory (a given one is always kept).
    pub keep: bool,
    pub backend: DemoBackend,
    pub saga_percent: u8,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            customers: 64,
            stop: StopAfter::Duration(Duration::from_secs(10)),
            flights: 24,
            seats_per_flight: 30,
            data_dir: None,
            keep: false,
            backend: DemoBackend::Sqlite,
            saga_percent: 0,
        }
    }
}

/// Why the demo could not run to the end (broken invariants are not errors:
/// they are in the summary).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("invalid demo options: {0}")]
    Options(String),
    #[error("cannot {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("cannot {action}")]
    Client {
        action: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Check(#[from] CheckError),
}

/// Everything the demo found.
#[derive(Debug)]
pub struct DemoSummary {
    pub options: DemoOptions,
    /// Seat map of every flight: (rows, letters).
    pub layout: (u32, String),
    pub load: LoadReport,
    /// `Err` with what was still held when the shards did not settle in time.
    pub quiescence: Result<(), String>,
    pub report: Report,
    pub flights: Vec<FlightSummary>,
    /// Where the data is, when kept.
    pub kept_dir: Option<PathBuf>,
}

impl DemoSummary {
    /// True when the shards settled and every invariant holds.
    pub fn ok(&self) -> bool {
        self.quiescence.is_ok() && self.report.is_ok()
    }
}

fn say(text: &str) {
    eprintln!("demo: {text}");
}

/// `seats` as rows × letters: 6 letters when they divide it, else the most
/// letters (at most 12) that do, within the seat-map limits.
pub fn seat_layout(seats: u32) -> Result<(u32, String), DemoError> {
    const LETTERS: &str = "ABCDEFGHIJKL";
    let rows_of = |letters: u32| seats / letters;
    let fits = |letters: u32| {
        rows_of(letters) * letters == seats
            && rows_of(letters) <= booking_proto::limits::SEAT_ROWS_MAX
    };
    let letters = std::iter::once(6)
        .chain((1..=12).rev())
        .find(|l| seats > 0 && fits(*l));
    let letters = letters.ok_or_else(|| {
        DemoError::Options(format!(
            "{seats} seats per flight do not fit a seat map of at most 200 rows × 12 letters"
        ))
    })?;
    Ok((seats / letters, LETTERS[..letters as usize].to_owned()))
}

/// Runs the whole demo. See the module docs.
pub async fn run(options: DemoOptions) -> Result<DemoSummary, DemoError> {
    let layout = seat_layout(options.seats_per_flight)?;
    if options.flights == 0 || options.customers == 0 {
        return Err(DemoError::Options(
            "need at least one flight and one customer".into(),
        ));
    }
    say("finding the coordinator and participant binaries (building them if needed)");
    let bin_dir = cluster::find_binaries().await?;
    let (data_dir, temp_dir) = data_dir(&options)?;
    let pg = match options.backend {
        DemoBackend::Sqlite => None,
        DemoBackend::Postgres => {
            say("starting a throwaway PostgreSQL server");
            Some(PgCluster::start(3).await?)
        }
    };
    let mut spec = ClusterSpec::new(&bin_dir, &data_dir);
    if let Some(pg) = &pg {
        spec.backend = Backend::Postgres(pg.database_urls());
    }
    say(&format!(
        "starting 3 participants and a coordinator from {} in {}",
        bin_dir.display(),
        data_dir.display()
    ));
    let mut cluster = Cluster::start(spec).await?;
    let outcome = sale(&cluster, &options, &layout).await;
    say("stopping the cluster");
    cluster.stop_all().await?;
    drop(pg);
    let (load, quiescence, report, flights) = outcome?;
    let kept_dir = keep_dir(temp_dir, &options, data_dir);
    Ok(DemoSummary {
        options,
        layout,
        load,
        quiescence,
        report,
        flights,
        kept_dir,
    })
}

type SaleOutcome = (LoadReport, Result<(), String>, Report, Vec<FlightSummary>);

/// Flights, customers, quiescence, checker: everything that needs the cluster up.
async fn sale(
    cluster: &Cluster,
    options: &DemoOptions,
    layout: &(u32, String),
) -> Result<SaleOutcome, DemoError> {
    let client = BookingClient::connect(&cluster.coordinator_url())
        .await
        .map_err(|source| DemoError::Client {
            action: "connect to the coordinator".into(),
            source,
        })?;
    let plans = create_flights(cluster, &client, options.flights, layout).await?;
    let oracle = Arc::new(Oracle::new());
    let load = run_customers(&client, options, plans, &oracle).await;
    say("waiting until no seat is held and no transaction is in doubt");
    let urls = cluster.shard_database_urls();
    let quiescence = checker::wait_quiescent(&urls, QUIESCENCE_TIMEOUT)
        .await
        .map_err(|e| e.to_string());
    say(&format!(
        "checking the invariants on the shard databases against {} replies",
        oracle.len()
    ));
    let report = checker::check(&urls, &oracle, CheckMode::Quiescent).await?;
    let flights = checker::flight_summary(&urls).await?;
    Ok((load, quiescence, report, flights))
}

/// The data directory and, when it is a fresh temporary one, its guard.
fn data_dir(options: &DemoOptions) -> Result<(PathBuf, Option<tempfile::TempDir>), DemoError> {
    let Some(dir) = &options.data_dir else {
        let temp = tempfile::Builder::new()
            .prefix("bookctl-demo-")
            .tempdir()
            .map_err(|source| DemoError::Io {
                action: "create a temporary directory".into(),
                source,
            })?;
        return Ok((temp.path().to_path_buf(), Some(temp)));
    };
    let not_empty = std::fs::read_dir(dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if not_empty {
        return Err(DemoError::Options(format!(
            "data directory {} is not empty; give a new or empty one (the demo creates fresh shards)",
            dir.display()
        )));
    }
    Ok((dir.clone(), None))
}

/// Keeps a temporary directory when asked; a given directory is always kept.
fn keep_dir(
    temp_dir: Option<tempfile::TempDir>,
    options: &DemoOptions,
    data_dir: PathBuf,
) -> Option<PathBuf> {
    match temp_dir {
        Some(temp) if options.keep => Some(temp.keep()),
        Some(_) => None,
        None => Some(data_dir),
    }
}

async fn create_flights(
    cluster: &Cluster,
    client: &BookingClient,
    count: usize,
    (rows, letters): &(u32, String),
) -> Result<Vec<FlightPlan>, DemoError> {
    say(&format!(
        "creating {count} flights of {rows} rows × {letters}, each on the shard that owns it"
    ));
    let mut plans = Vec::with_capacity(count);
    for i in 1..=count {
        let flight_id = format!("DM{i:03}");
        client
            .create_flight_routed(&flight_id, *rows, letters)
            .await
            .map_err(|source| DemoError::Client {
                action: format!("create flight {flight_id}"),
                source,
            })?;
        let shard = cluster.shard_of(&flight_id);
        plans.push(FlightPlan {
            flight_id,
            shard,
            rows: *rows,
            letters: letters.clone(),
        });
    }
    Ok(plans)
}

async fn run_customers(
    client: &BookingClient,
    options: &DemoOptions,
    plans: Vec<FlightPlan>,
    oracle: &Arc<Oracle>,
) -> LoadReport {
    let mut spec = LoadSpec::new(plans);
    spec.customers = options.customers;
    spec.stop = options.stop;
    spec.saga_percent = options.saga_percent;
    spec.progress = Some(progress_bar(options.stop));
    let what = match options.stop {
        StopAfter::Duration(d) => format!("for {} s", d.as_secs_f64()),
        StopAfter::Itineraries(n) => format!("for {n} itineraries"),
    };
    say(&format!(
        "{} customers book 1-3-leg itineraries for 1-2 passengers {what}",
        options.customers
    ));
    let client = client.clone().with_request_timeout(CUSTOMER_CALL_TIMEOUT);
    let report = load::run(&client, &spec, oracle).await;
    if let Some(progress) = &spec.progress {
        progress.finish();
    }
    report
}

fn progress_bar(stop: StopAfter) -> ProgressBar {
    let (bar, template) = match stop {
        StopAfter::Itineraries(total) => (
            ProgressBar::new(total),
            "{bar:30} {pos}/{len} itineraries · {msg}",
        ),
        StopAfter::Duration(_) => (
            ProgressBar::new_spinner(),
            "{spinner} {elapsed} {pos} itineraries · {msg}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).expect("the template is a valid constant"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rows, letters) = &self.layout;
        let backend = match self.options.backend {
            DemoBackend::Sqlite => "SQLite",
            DemoBackend::Postgres => "PostgreSQL",
        };
        writeln!(
            f,
            "\n== bookctl demo: 3 shards on {backend} + 1 coordinator; {} flights × {} seats ({rows} rows × {letters}); {} customers",
            self.options.flights, self.options.seats_per_flight, self.options.customers
        )?;
        writeln!(f, "\nBookings (as the customers were told):")?;
        write!(f, "{}", self.load)?;
        self.fmt_flights(f)?;
        writeln!(
            f,
            "\nInvariants (read from the shard databases, held to {} recorded replies):",
            self.report.stats.oracle.committed
                + self.report.stats.oracle.aborted
                + self.report.stats.oracle.unknown
        )?;
        if let Err(problem) = &self.quiescence {
            writeln!(f, "  quiescence: NOT REACHED: {problem}")?;
        }
        write!(f, "{}", self.report)?;
        if let Some(dir) = &self.kept_dir {
            writeln!(
                f,
                "\nData, configuration and process logs kept in {}",
                dir.display()
            )?;
        }
        let verdict = if self.ok() {
            "OK: all four invariants hold"
        } else {
            "FAILED: see the violations above"
        };
        writeln!(f, "\n{verdict}")
    }
}

impl DemoSummary {
    fn fmt_flights(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let capacity: i64 = self.flights.iter().map(|s| s.capacity).sum();
        let booked: i64 = self.flights.iter().map(|s| s.booked).sum();
        let sold_out = self.flights.iter().filter(|s| s.sold_out()).count();
        writeln!(f, "\nSeats (read from the shard databases):")?;
        writeln!(
            f,
            "  {booked} of {capacity} seats booked; {sold_out} of {} flights sold out; {} seats in COMMITTED replies",
            self.flights.len(),
            self.load.seats_committed
        )?;
        for chunk in self.flights.chunks(6) {
            let cells: Vec<String> = chunk
                .iter()
                .map(|s| {
                    format!(
                        "{} s{} {:>3}/{:<3}",
                        s.flight_id, s.shard, s.booked, s.capacity
                    )
                })
                .collect();
            writeln!(f, "  {}", cells.join("  ").trim_end())?;
        }
        let failed = self
            .report
            .violations_of(Invariant::NoDoubleBooking)
            .count();
        if failed > 0 {
            writeln!(f, "  ({failed} seat-accounting violations below)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seat_layouts_prefer_six_abreast() {
        assert_eq!(seat_layout(30).unwrap(), (5, "ABCDEF".to_string()));
        assert_eq!(seat_layout(20).unwrap(), (2, "ABCDEFGHIJ".to_string()));
        assert_eq!(seat_layout(13).unwrap(), (13, "A".to_string()));
        assert!(seat_layout(0).is_err());
        assert!(seat_layout(2401).is_err());
    }
}
