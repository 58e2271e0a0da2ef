//! Load drivers: closed-loop (N clients, each books the next itinerary as
//! soon as the last is answered) for the matrix, and open-loop (bookings
//! arrive at a fixed rate whatever the answers) for the overload run.
//! Every answer is tallied by kind, with its latency in an HDR histogram.
//!
//! No retries: a refusal or an error is counted as such, so the figures
//! are what one attempt gets.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::JoinSet;

use super::cpu::CpuScope;
use super::workload::{CellFlights, Flight};

/// Largest latency recorded, in microseconds (longer is clamped).
const LATENCY_US_MAX: u64 = 300_000_000;
/// How often the open-loop issuer wakes to start the bookings now due.
const ISSUE_TICK: Duration = Duration::from_millis(1);
/// How long the open-loop driver waits for bookings still running after
/// the arrivals stop.
const DRAIN_MAX: Duration = Duration::from_secs(60);

/// What one booking attempt got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Committed,
    /// Aborted because a leg's flight had no free seat.
    SoldOut,
    /// Aborted for another reason (named, e.g. `DEADLINE`).
    Aborted(String),
    /// Refused before any work (RESOURCE_EXHAUSTED); whether the
    /// `retry-after-ms` hint came with it.
    Refused {
        retry_hint: bool,
    },
    /// Refused by the client's own throttle, not sent (RESOURCE_EXHAUSTED
    /// with a retry hint, as the client library answers it).
    Throttled,
    /// No answer: an error status or a database error (named).
    Failed(String),
}

impl Answer {
    /// A business answer: committed or sold out (the goodput of overload).
    pub fn is_good(&self) -> bool {
        matches!(self, Answer::Committed | Answer::SoldOut)
    }

    /// Committed or aborted: the booking got a final outcome.
    pub fn is_answered(&self) -> bool {
        matches!(
            self,
            Answer::Committed | Answer::SoldOut | Answer::Aborted(_)
        )
    }
}

/// Books one itinerary: 2 legs, 1 seat each, for `passenger`.
pub trait Booker: Send + Sync + 'static {
    fn book(
        &self,
        key: &str,
        passenger: &str,
        legs: &[Flight; 2],
    ) -> impl Future<Output = Answer> + Send;
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant bounds are valid")
}

/// Counts of every kind of answer, and latencies.
#[derive(Clone, Debug)]
pub struct Tally {
    pub committed: u64,
    pub sold_out: u64,
    /// Other aborts by reason.
    pub aborted: BTreeMap<String, u64>,
    /// Refused by the coordinator.
    pub refused: u64,
    /// Refusals by the coordinator that carried `retry-after-ms`.
    pub refused_with_hint: u64,
    /// Refused by the client's throttle, never sent.
    pub throttled: u64,
    /// Failures by gRPC code or error kind.
    pub failed: BTreeMap<String, u64>,
    /// Latency of answered bookings (committed or aborted), microseconds.
    pub answered_us: Histogram<u64>,
    /// Latency of the coordinator's refusals, microseconds.
    pub refused_us: Histogram<u64>,
    /// Latency of the client throttle's refusals, microseconds.
    pub throttled_us: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            committed: 0,
            sold_out: 0,
            aborted: BTreeMap::new(),
            refused: 0,
            refused_with_hint: 0,
            throttled: 0,
            failed: BTreeMap::new(),
            answered_us: histogram(),
            refused_us: histogram(),
            throttled_us: histogram(),
        }
    }
}

impl Tally {
    pub fn record(&mut self, answer: &Answer, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
        match answer {
            Answer::Committed => self.committed += 1,
            Answer::SoldOut => self.sold_out += 1,
            Answer::Aborted(reason) => *self.aborted.entry(reason.clone()).or_default() += 1,
            Answer::Refused { retry_hint } => {
                self.refused += 1;
                self.refused_with_hint += u64::from(*retry_hint);
                self.refused_us.saturating_record(micros);
            }
            Answer::Throttled => {
                self.throttled += 1;
                self.throttled_us.saturating_record(micros);
            }
            Answer::Failed(kind) => *self.failed.entry(kind.clone()).or_default() += 1,
        }
        if answer.is_answered() {
            self.answered_us.saturating_record(micros);
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.committed += other.committed;
        self.sold_out += other.sold_out;
        self.refused += other.refused;
        self.refused_with_hint += other.refused_with_hint;
        self.throttled += other.throttled;
        for (reason, count) in &other.aborted {
            *self.aborted.entry(reason.clone()).or_default() += count;
        }
        for (kind, count) in &other.failed {
            *self.failed.entry(kind.clone()).or_default() += count;
        }
        self.answered_us
            .add(&other.answered_us)
            .expect("histograms share their bounds");
        self.refused_us
            .add(&other.refused_us)
            .expect("histograms share their bounds");
        self.throttled_us
            .add(&other.throttled_us)
            .expect("histograms share their bounds");
    }

    pub fn aborted_other(&self) -> u64 {
        self.aborted.values().sum()
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Committed plus aborted (sold out or otherwise).
    pub fn answered(&self) -> u64 {
        self.committed + self.sold_out + self.aborted_other()
    }

    /// Answered latency at `quantile`, in milliseconds.
    pub fn answered_ms(&self, quantile: f64) -> f64 {
        self.answered_us.value_at_quantile(quantile) as f64 / 1e3
    }

    /// Refusals by the coordinator and by the client's throttle.
    pub fn refused_all(&self) -> u64 {
        self.refused + self.throttled
    }

    /// Latency at `quantile` of the coordinator's refusals, in milliseconds.
    pub fn refused_ms(&self, quantile: f64) -> f64 {
        self.refused_us.value_at_quantile(quantile) as f64 / 1e3
    }

    /// Latency at `quantile` of the client throttle's refusals, in milliseconds.
    pub fn throttled_ms(&self, quantile: f64) -> f64 {
        self.throttled_us.value_at_quantile(quantile) as f64 / 1e3
    }

    /// Latency at `quantile` of every refusal, by either, in milliseconds:
    /// what the callers saw.
    pub fn refused_all_ms(&self, quantile: f64) -> f64 {
        let mut all = self.refused_us.clone();
        all.add(&self.throttled_us)
            .expect("histograms share their bounds");
        all.value_at_quantile(quantile) as f64 / 1e3
    }
}

/// What the clients of one cell share.
pub struct Load<B> {
    pub booker: Arc<B>,
    pub flights: CellFlights,
    /// Idempotency keys are `{key_prefix}-{client}-{n}`: unique per cell.
    pub key_prefix: String,
    pub seed: u64,
}

impl<B> Clone for Load<B> {
    fn clone(&self) -> Self {
        Load {
            booker: Arc::clone(&self.booker),
            flights: self.flights.clone(),
            key_prefix: self.key_prefix.clone(),
            seed: self.seed,
        }
    }
}

impl<B: Booker> Load<B> {
    /// Books one itinerary; its latency counts from `arrived` (now, for a
    /// closed-loop client; when the open-loop issuer started it, so that
    /// time spent waiting for a worker thread counts too).
    async fn book_one(
        &self,
        legs: [Flight; 2],
        client: usize,
        n: u64,
        arrived: Option<Instant>,
    ) -> (Answer, Duration) {
        let key = format!("{}-{client}-{n}", self.key_prefix);
        let passenger = format!("P{client}-{n}");
        let started = arrived.unwrap_or_else(Instant::now);
        let answer = self.booker.book(&key, &passenger, &legs).await;
        (answer, started.elapsed())
    }
}

/// `clients` closed-loop clients book until `duration` has passed; returns
/// the tally and the time until the last answer.
pub async fn closed_loop<B: Booker>(
    load: &Load<B>,
    clients: usize,
    duration: Duration,
) -> (Tally, Duration) {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let load = load.clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(load.seed.wrapping_add(client as u64));
            let mut tally = Tally::default();
            let mut n = 0;
            while started.elapsed() < duration {
                let (answer, latency) = load
                    .book_one(load.flights.itinerary(&mut rng), client, n, None)
                    .await;
                tally.record(&answer, latency);
                n += 1;
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        // A client task panics only on a bug; surface it.
        let client = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        tally.merge(&client);
    }
    (tally, started.elapsed())
}

/// What an open-loop run saw.
#[derive(Clone, Debug)]
pub struct OpenLoop {
    /// Every answer, whenever it came.
    pub tally: Tally,
    /// Bookings started.
    pub issued: u64,
    /// How long arrivals ran.
    pub window: Duration,
    /// Committed or sold-out answers that came within the window.
    pub good_in_window: u64,
    /// Bookings still unanswered after the drain limit.
    pub unfinished: u64,
    /// CPU seconds this process used while the arrivals ran (not after).
    pub own_cpu_seconds: f64,
}

impl OpenLoop {
    pub fn offered_per_s(&self) -> f64 {
        self.issued as f64 / self.window.as_secs_f64()
    }

    pub fn goodput_per_s(&self) -> f64 {
        self.good_in_window as f64 / self.window.as_secs_f64()
    }
}

/// Starts bookings at `rate_per_s` for `duration`, each on its own task
/// whatever happened to the others, then waits for the stragglers.
pub async fn open_loop<B: Booker>(load: &Load<B>, rate_per_s: f64, duration: Duration) -> OpenLoop {
    let own = CpuScope::default();
    let cpu_before = own.seconds();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut rng = StdRng::seed_from_u64(load.seed);
    let shared = Arc::new(load.clone());
    let mut issued: u64 = 0;
    let mut ticker = tokio::time::interval(ISSUE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tally = Tally::default();
    let mut good_in_window = 0;
    let count = |tally: &mut Tally, (answer, latency, at): (Answer, Duration, Duration)| {
        tally.record(&answer, latency);
        u64::from(answer.is_good() && at <= duration)
    };
    while started.elapsed() < duration {
        ticker.tick().await;
        // Tally what has finished as it comes, so that the finished tasks
        // do not pile up in memory for the whole window.
        while let Some(done) = tasks.try_join_next() {
            let done = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            good_in_window += count(&mut tally, done);
        }
        let due = (started.elapsed().min(duration).as_secs_f64() * rate_per_s) as u64;
        while issued < due {
            // The itinerary is drawn here, so each task carries two flights
            // and a shared handle, not a generator of its own.
            let legs = shared.flights.itinerary(&mut rng);
            let load = Arc::clone(&shared);
            let n = issued;
            let arrived = Instant::now();
            tasks.spawn(async move {
                let (answer, latency) = load.book_one(legs, 0, n, Some(arrived)).await;
                (answer, latency, started.elapsed())
            });
            issued += 1;
        }
    }
    let window = started.elapsed();
    let own_cpu_seconds = own.seconds() - cpu_before;
    let drain_until = tokio::time::Instant::now() + DRAIN_MAX;
    while let Ok(Some(done)) = tokio::time::timeout_at(drain_until, tasks.join_next()).await {
        let done = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        good_in_window += count(&mut tally, done);
    }
    let unfinished = tasks.len() as u64;
    tasks.abort_all();
    OpenLoop {
        tally,
        issued,
        window,
        good_in_window,
        unfinished,
        own_cpu_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::super::args::Workload;
    use super::super::workload::FlightSet;
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Commits every other booking, sells out the rest; refuses none.
    struct Alternate(AtomicBool);

    impl Booker for Alternate {
        async fn book(&self, key: &str, _: &str, legs: &[Flight; 2]) -> Answer {
            assert!(key.starts_with("k-"));
            assert_ne!(legs[0].shard, legs[1].shard);
            tokio::time::sleep(Duration::from_millis(1)).await;
            if !self.0.fetch_xor(true, Ordering::Relaxed) {
                Answer::Committed
            } else {
                Answer::SoldOut
            }
        }
    }

    fn load() -> Load<Alternate> {
        let shard_of = |id: &str| (booking_proto::routing::partition_of(id, 64) * 3 / 64) as usize;
        Load {
            booker: Arc::new(Alternate(AtomicBool::new(false))),
            flights: CellFlights {
                workload: Workload::Uniform,
                uniform: Arc::new(FlightSet::numbered("U-", 30, 3, shard_of)),
                hot: None,
            },
            key_prefix: "k".into(),
            seed: 1,
        }
    }

    #[test]
    fn a_tally_counts_each_kind_and_times_answers_and_refusals_apart() {
        let mut tally = Tally::default();
        let ms = Duration::from_millis;
        tally.record(&Answer::Committed, ms(2));
        tally.record(&Answer::SoldOut, ms(4));
        tally.record(&Answer::Aborted("DEADLINE".into()), ms(8));
        tally.record(&Answer::Refused { retry_hint: true }, ms(1));
        tally.record(&Answer::Refused { retry_hint: false }, ms(1));
        tally.record(&Answer::Throttled, ms(3));
        tally.record(&Answer::Failed("UNAVAILABLE".into()), ms(100));
        assert_eq!(tally.answered(), 3);
        assert_eq!((tally.refused, tally.refused_with_hint), (2, 1));
        assert_eq!((tally.throttled, tally.refused_all()), (1, 3));
        assert!((tally.refused_all_ms(1.0) - 3.0).abs() < 0.01);
        assert!((tally.refused_ms(1.0) - 1.0).abs() < 0.01);
        assert!((tally.throttled_ms(0.5) - 3.0).abs() < 0.01);
        assert_eq!(tally.failed_total(), 1);
        assert_eq!(tally.answered_us.len(), 3);
        assert!((tally.answered_ms(1.0) - 8.0).abs() < 0.01);
        assert!((tally.refused_ms(0.5) - 1.0).abs() < 0.01);
        let mut merged = Tally::default();
        merged.merge(&tally);
        merged.merge(&tally);
        assert_eq!(merged.answered(), 6);
        assert_eq!(merged.aborted["DEADLINE"], 2);
        assert_eq!(merged.throttled, 2);
    }

    #[tokio::test]
    async fn closed_loop_clients_book_until_the_time_is_up() {
        let (tally, elapsed) = closed_loop(&load(), 4, Duration::from_millis(100)).await;
        assert!(tally.answered() >= 8, "{tally:?}");
        assert!(tally.committed.abs_diff(tally.sold_out) <= 1);
        assert!(elapsed >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn open_loop_issues_at_the_rate_asked() {
        let run = open_loop(&load(), 500.0, Duration::from_millis(200)).await;
        assert!((90..=101).contains(&run.issued), "{}", run.issued);
        assert_eq!(run.tally.answered(), run.issued);
        assert_eq!(run.unfinished, 0);
        assert!(run.good_in_window <= run.issued);
    }
}
