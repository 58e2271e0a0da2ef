//! A load generator: N concurrent customers booking 1–3-leg itineraries
//! (legs on distinct flights, on distinct shards when there are enough) for
//! 1–2 passengers, each with a unique idempotency key. Every final answer
//! goes into the [`Oracle`] for the checker; latency goes into an HDR
//! histogram.
//!
//! A call that fails with a retryable error (unreachable, overloaded, too
//! slow) is retried with the same key and backoff, up to a limit; what is
//! still unanswered then is recorded as unknown, never as absent.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use booking_proto::v1::{AbortReason, BookReply, BookRequest, LegRequest, Mode, Outcome};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::checker::Oracle;
use crate::client::{code_name, BookingClient, ClientError};

/// Largest latency the histogram records, in microseconds (longer is clamped).
const LATENCY_US_MAX: u64 = 120_000_000;
/// First retry backoff; doubled per attempt.
const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(50);

/// A flight the customers may book, with its seat map for named-seat legs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightPlan {
    pub flight_id: String,
    /// The shard that owns it (e.g. from `Cluster::shard_of`).
    pub shard: usize,
    pub rows: u32,
    pub letters: String,
}

/// When the customers stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopAfter {
    /// Stop starting itineraries after this long.
    Duration(Duration),
    /// Stop after this many itineraries in all.
    Itineraries(u64),
}

/// What load to generate. Build with [`LoadSpec::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Concurrent customers, each booking one itinerary at a time.
    pub customers: usize,
    pub stop: StopAfter,
    pub flights: Vec<FlightPlan>,
    /// Legs per itinerary: 1..=legs_max (capped by the number of flights). Default 3.
    pub legs_max: usize,
    /// Passengers per itinerary, one seat each per leg: 1..=passengers_max. Default 2.
    pub passengers_max: usize,
    /// The booking deadline sent; 0 uses the coordinator's default.
    pub timeout_ms: u32,
    /// Share of itineraries booked in SAGA mode, 0..=100. Default 0.
    pub saga_percent: u8,
    /// Share of legs naming random seats instead of a count, 0..=100. Default 20.
    pub named_seats_percent: u8,
    /// Retries of a retryable failure, with the same key. Default 3.
    pub retries_max: u32,
    /// Prefix of every idempotency key; unique per run by default.
    pub key_prefix: String,
    /// Seed of the customers' random choices (customer i uses seed + i).
    pub seed: u64,
    /// Advanced once per itinerary, with running totals as its message.
    pub progress: Option<ProgressBar>,
}

impl LoadSpec {
    /// 64 customers for 10 s over `flights`, with the defaults above.
    pub fn new(flights: Vec<FlightPlan>) -> Self {
        LoadSpec {
            customers: 64,
            stop: StopAfter::Duration(Duration::from_secs(10)),
            flights,
            legs_max: 3,
            passengers_max: 2,
            timeout_ms: 0,
            saga_percent: 0,
            named_seats_percent: 20,
            retries_max: 3,
            key_prefix: format!("load-{}", uuid::Uuid::new_v4().simple()),
            seed: rand::random(),
            progress: None,
        }
    }
}

/// What the customers got.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub attempted: u64,
    pub committed: u64,
    /// Seats (legs × passengers) in COMMITTED itineraries.
    pub seats_committed: u64,
    /// ABORTED itineraries by reason (`SOLD_OUT`, ...).
    pub aborted: BTreeMap<String, u64>,
    /// Itineraries without a definitive answer, by gRPC code.
    pub unknown: BTreeMap<String, u64>,
    pub retries: u64,
    pub elapsed: Duration,
    /// Latency of each itinerary (retries included), in microseconds.
    pub latency_us: Histogram<u64>,
}

impl LoadReport {
    fn empty() -> Self {
        LoadReport {
            attempted: 0,
            committed: 0,
            seats_committed: 0,
            aborted: BTreeMap::new(),
            unknown: BTreeMap::new(),
            retries: 0,
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant bounds are valid"),
        }
    }

    pub fn aborted_total(&self) -> u64 {
        self.aborted.values().sum()
    }

    pub fn unknown_total(&self) -> u64 {
        self.unknown.values().sum()
    }

    /// Answered itineraries (committed or aborted) per second.
    pub fn bookings_per_s(&self) -> f64 {
        (self.committed + self.aborted_total()) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn committed_per_s(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at `quantile` (0.5 for the median).
    pub fn latency(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.latency_us.value_at_quantile(quantile))
    }

    fn merge(&mut self, other: LoadReport) {
        self.attempted += other.attempted;
        self.committed += other.committed;
        self.seats_committed += other.seats_committed;
        self.retries += other.retries;
        for (reason, count) in other.aborted {
            *self.aborted.entry(reason).or_default() += count;
        }
        for (code, count) in other.unknown {
            *self.unknown.entry(code).or_default() += count;
        }
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  itineraries attempted: {}", self.attempted)?;
        writeln!(
            f,
            "  committed:             {} ({} seats)",
            self.committed, self.seats_committed
        )?;
        writeln!(f, "  aborted:               {}", self.aborted_total())?;
        for (reason, count) in &self.aborted {
            writeln!(f, "    {reason:<22} {count}")?;
        }
        writeln!(f, "  unknown (no answer):   {}", self.unknown_total())?;
        for (code, count) in &self.unknown {
            writeln!(f, "    {code:<22} {count}")?;
        }
        writeln!(f, "  retries:               {}", self.retries)?;
        writeln!(
            f,
            "  throughput:            {:.0} bookings/s answered, {:.0} committed/s over {:.1} s",
            self.bookings_per_s(),
            self.committed_per_s(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  latency:               p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latency(0.5).as_secs_f64() * 1e3,
            self.latency(0.99).as_secs_f64() * 1e3,
            Duration::from_micros(self.latency_us.max()).as_secs_f64() * 1e3
        )
    }
}

/// Picks `legs` distinct flights, each on a different shard while there are
/// shards left, then any other flights.
pub fn pick_flights<'a, R: Rng>(
    rng: &mut R,
    flights: &'a [FlightPlan],
    legs: usize,
) -> Vec<&'a FlightPlan> {
    let mut shuffled: Vec<&FlightPlan> = flights.iter().collect();
    shuffled.shuffle(rng);
    let mut picked: Vec<&FlightPlan> = Vec::with_capacity(legs);
    for flight in &shuffled {
        if picked.len() < legs && picked.iter().all(|p| p.shard != flight.shard) {
            picked.push(flight);
        }
    }
    for flight in &shuffled {
        if picked.len() < legs && !picked.iter().any(|p| p.flight_id == flight.flight_id) {
            picked.push(flight);
        }
    }
    picked
}

/// `count` distinct random seats of `flight`, e.g. `["3C", "7A"]`.
fn random_seats<R: Rng>(rng: &mut R, flight: &FlightPlan, count: usize) -> Vec<String> {
    let letters: Vec<char> = flight.letters.chars().collect();
    let mut all: Vec<String> = (1..=flight.rows)
        .flat_map(|row| letters.iter().map(move |l| format!("{row}{l}")))
        .collect();
    all.shuffle(rng);
    all.truncate(count);
    all
}

/// Shared state of one run: the stop condition and running totals.
struct Run {
    stop: StopAfter,
    started: Instant,
    issued: AtomicU64,
    committed: AtomicU64,
    aborted: AtomicU64,
    unknown: AtomicU64,
}

impl Run {
    /// Claims the next itinerary, or `None` when the run is over.
    fn next_itinerary(&self) -> Option<u64> {
        let number = self.issued.fetch_add(1, Ordering::Relaxed);
        let more = match self.stop {
            StopAfter::Duration(duration) => self.started.elapsed() < duration,
            StopAfter::Itineraries(total) => number < total,
        };
        more.then_some(number)
    }

    fn message(&self) -> String {
        format!(
            "committed {} · aborted {} · unknown {}",
            self.committed.load(Ordering::Relaxed),
            self.aborted.load(Ordering::Relaxed),
            self.unknown.load(Ordering::Relaxed)
        )
    }
}

/// Runs `spec.customers` customers against `client` until `spec.stop`, and
/// records every answer in `oracle`.
pub async fn run(client: &BookingClient, spec: &LoadSpec, oracle: &Arc<Oracle>) -> LoadReport {
    let run = Arc::new(Run {
        stop: spec.stop,
        started: Instant::now(),
        issued: AtomicU64::new(0),
        committed: AtomicU64::new(0),
        aborted: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for customer in 0..spec.customers {
        let customer = Customer {
            number: customer,
            client: client.clone(),
            spec: spec.clone(),
            oracle: Arc::clone(oracle),
            run: Arc::clone(&run),
            rng: StdRng::seed_from_u64(spec.seed.wrapping_add(customer as u64)),
        };
        tasks.spawn(customer.shop());
    }
    let mut report = LoadReport::empty();
    while let Some(done) = tasks.join_next().await {
        // A customer task only panics on a bug; surface it rather than hide it.
        let customer_report =
            done.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        report.merge(customer_report);
    }
    report.elapsed = run.started.elapsed();
    report
}

/// One customer: books itineraries one after another.
struct Customer {
    number: usize,
    client: BookingClient,
    spec: LoadSpec,
    oracle: Arc<Oracle>,
    run: Arc<Run>,
    rng: StdRng,
}

impl Customer {
    async fn shop(mut self) -> LoadReport {
        let mut report = LoadReport::empty();
        while let Some(itinerary) = self.run.next_itinerary() {
            let request = self.itinerary(itinerary);
            let started = Instant::now();
            let (result, retries) =
                book_with_retries(&self.client, &request, self.spec.retries_max).await;
            report
                .latency_us
                .saturating_record(started.elapsed().as_micros() as u64);
            report.retries += u64::from(retries);
            self.oracle.record(&request, &result);
            self.tally(&mut report, &request, &result);
        }
        report
    }

    fn itinerary(&mut self, number: u64) -> BookRequest {
        let spec = &self.spec;
        let legs = self
            .rng
            .gen_range(1..=spec.legs_max.clamp(1, spec.flights.len().max(1)));
        let passengers = self.rng.gen_range(1..=spec.passengers_max.max(1));
        let names: Vec<String> = (0..passengers)
            .map(|p| format!("Pax {}-{number}-{p}", self.number))
            .collect();
        let flights: Vec<FlightPlan> = pick_flights(&mut self.rng, &spec.flights, legs)
            .into_iter()
            .cloned()
            .collect();
        let legs = flights
            .iter()
            .map(|flight| self.leg(flight, &names))
            .collect();
        let mode = if self.rng.gen_range(0..100) < self.spec.saga_percent {
            Mode::Saga
        } else {
            Mode::TwoPhase
        };
        BookRequest {
            idempotency_key: format!("{}-c{}-{number}", self.spec.key_prefix, self.number),
            mode: mode as i32,
            timeout_ms: self.spec.timeout_ms,
            legs,
        }
    }

    fn leg(&mut self, flight: &FlightPlan, passengers: &[String]) -> LegRequest {
        let named = self.rng.gen_range(0..100) < self.spec.named_seats_percent;
        let seats = if named {
            random_seats(&mut self.rng, flight, passengers.len())
        } else {
            Vec::new()
        };
        let seat_count = if named { 0 } else { passengers.len() as u32 };
        LegRequest {
            flight_id: flight.flight_id.clone(),
            seat_count,
            seats,
            passengers: passengers.to_vec(),
        }
    }

    fn tally(
        &self,
        report: &mut LoadReport,
        request: &BookRequest,
        result: &Result<BookReply, ClientError>,
    ) {
        report.attempted += 1;
        let counter = match result {
            Ok(reply) if reply.outcome == Outcome::Committed as i32 => {
                report.committed += 1;
                report.seats_committed += request
                    .legs
                    .iter()
                    .map(|l| l.passengers.len() as u64)
                    .sum::<u64>();
                &self.run.committed
            }
            Ok(reply) if reply.outcome == Outcome::Aborted as i32 => {
                *report.aborted.entry(abort_reason(reply)).or_default() += 1;
                &self.run.aborted
            }
            Ok(_) => {
                *report.unknown.entry("NO_OUTCOME".into()).or_default() += 1;
                &self.run.unknown
            }
            Err(error) => {
                *report
                    .unknown
                    .entry(error.code().map_or("TRANSPORT", code_name).into())
                    .or_default() += 1;
                &self.run.unknown
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(progress) = &self.spec.progress {
            progress.inc(1);
            progress.set_message(self.run.message());
        }
    }
}

/// The abort reason's name, e.g. `SOLD_OUT`.
fn abort_reason(reply: &BookReply) -> String {
    let reason = reply.abort.as_ref().map_or(0, |a| a.reason);
    AbortReason::try_from(reason).map_or_else(
        |_| format!("REASON_{reason}"),
        |r| r.as_str_name().to_owned(),
    )
}

/// Books, retrying retryable failures with the same request (and so the
/// same idempotency key). Returns the last result and the retries made.
pub async fn book_with_retries(
    client: &BookingClient,
    request: &BookRequest,
    retries_max: u32,
) -> (Result<BookReply, ClientError>, u32) {
    let mut retries = 0;
    loop {
        let result = client.book(request.clone()).await;
        match &result {
            Err(error) if error.is_retryable() && retries < retries_max => {
                // At least what an overload refusal asked for.
                let backoff = (RETRY_BACKOFF_FIRST * 2u32.pow(retries))
                    .max(error.retry_after().unwrap_or_default());
                let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..50));
                tokio::time::sleep(backoff + jitter).await;
                retries += 1;
            }
            _ => return (result, retries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flights(shards: &[usize]) -> Vec<FlightPlan> {
        shards
            .iter()
            .enumerate()
            .map(|(i, shard)| FlightPlan {
                flight_id: format!("F{i}"),
                shard: *shard,
                rows: 5,
                letters: "ABC".into(),
            })
            .collect()
    }

    #[test]
    fn legs_go_to_distinct_shards_when_possible() {
        let plans = flights(&[0, 0, 0, 1, 1, 2]);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let picked = pick_flights(&mut rng, &plans, 3);
            let mut shards: Vec<usize> = picked.iter().map(|p| p.shard).collect();
            shards.sort_unstable();
            assert_eq!(shards, [0, 1, 2]);
        }
    }

    #[test]
    fn legs_are_distinct_flights_even_on_one_shard() {
        let plans = flights(&[0, 0, 0]);
        let mut rng = StdRng::seed_from_u64(7);
        let picked = pick_flights(&mut rng, &plans, 3);
        let mut ids: Vec<&str> = picked.iter().map(|p| p.flight_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["F0", "F1", "F2"]);
        assert_eq!(pick_flights(&mut rng, &plans[..1], 3).len(), 1);
    }

    #[tokio::test]
    async fn itineraries_are_valid_requests_with_unique_keys() {
        let mut spec = LoadSpec::new(flights(&[0, 1, 2, 0]));
        spec.named_seats_percent = 50;
        spec.saga_percent = 50;
        let mut customer = Customer {
            number: 3,
            client: BookingClient::connect_lazy("http://127.0.0.1:9").expect("a valid url"),
            spec,
            oracle: Arc::new(Oracle::new()),
            run: Arc::new(Run {
                stop: StopAfter::Itineraries(0),
                started: Instant::now(),
                issued: AtomicU64::new(0),
                committed: AtomicU64::new(0),
                aborted: AtomicU64::new(0),
                unknown: AtomicU64::new(0),
            }),
            rng: StdRng::seed_from_u64(1),
        };
        let mut keys = std::collections::HashSet::new();
        let (mut named, mut sagas, mut legs_seen) = (0, 0, [0; 4]);
        for number in 0..300 {
            let request = customer.itinerary(number);
            booking_proto::validate::book_request(&request)
                .expect("the generator sends valid requests");
            assert!(keys.insert(request.idempotency_key.clone()));
            named += request.legs.iter().filter(|l| !l.seats.is_empty()).count();
            sagas += usize::from(request.mode == Mode::Saga as i32);
            legs_seen[request.legs.len()] += 1;
        }
        assert!(named > 0 && sagas > 0, "both options are exercised");
        assert!(
            legs_seen[1] > 0 && legs_seen[2] > 0 && legs_seen[3] > 0,
            "{legs_seen:?}"
        );
        assert_eq!(
            customer.run.next_itinerary(),
            None,
            "a zero budget stops at once"
        );
    }
}
