//! The participant's Prometheus series, and the exporter that serves them
//! on `/metrics` (plain HTTP, `metrics_listen`).
//!
//! Every series is registered once, at start (`Metrics::register`), and
//! kept as a handle: a request then pays an atomic add and a histogram
//! sample, never a label lookup or an allocation. Handles registered while
//! no recorder is installed (no `metrics_listen`, unit tests) are no-ops.
//!
//! | series                                        | type      | labels          |
//! |-----------------------------------------------|-----------|-----------------|
//! | `participant_requests_total`                  | counter   | rpc, outcome    |
//! | `participant_request_errors_total`            | counter   | rpc, code       |
//! | `participant_request_seconds`                 | histogram | rpc             |
//! | `participant_local_commits_total`             | counter   |                 |
//! | `participant_local_commit_failures_total`     | counter   |                 |
//! | `participant_local_commit_seconds`            | histogram |                 |
//! | `participant_batch_txids`                     | histogram |                 |
//! | `participant_prepared`                        | gauge     |                 |
//! | `participant_get_decision_total`              | counter   | result          |
//! | `participant_in_doubt_resolved_total`         | counter   | decision        |
//!
//! `participant_prepared` is set from the store at start and then moved by
//! each committed batch (+1 per fresh YES vote, -1 per decided prepared
//! txid), so it survives restarts.
//!
//! `participant_get_decision_total` counts txids asked about: the in-doubt
//! sweep asks up to 64 at once, so an unreachable coordinator adds up to
//! 64 `result="error"` per sweep.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use booking_proto::v1::Decision;
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use tonic::Code;

pub const REQUESTS_TOTAL: &str = "participant_requests_total";
pub const REQUEST_ERRORS_TOTAL: &str = "participant_request_errors_total";
pub const REQUEST_SECONDS: &str = "participant_request_seconds";
pub const LOCAL_COMMITS_TOTAL: &str = "participant_local_commits_total";
pub const LOCAL_COMMIT_FAILURES_TOTAL: &str = "participant_local_commit_failures_total";
pub const LOCAL_COMMIT_SECONDS: &str = "participant_local_commit_seconds";
pub const BATCH_TXIDS: &str = "participant_batch_txids";
pub const PREPARED: &str = "participant_prepared";
pub const GET_DECISION_TOTAL: &str = "participant_get_decision_total";
pub const IN_DOUBT_RESOLVED_TOTAL: &str = "participant_in_doubt_resolved_total";

/// Bucket bounds of the latency histograms, in seconds: a local commit
/// with fsync is around a millisecond; a request near its deadline, seconds.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of `participant_batch_txids`, up to `BATCH_OPS_MAX`.
const BATCH_TXIDS_BUCKETS: [f64; 10] = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Why the `/metrics` endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("serve metrics on {address}: {reason}")]
pub struct ExporterError {
    pub address: SocketAddr,
    pub reason: String,
}

/// Installs the process-wide Prometheus recorder and binds `/metrics` on
/// `address`. Returns the HTTP server's future, to be spawned; it ends
/// only on an error. Fails when the port is taken or a recorder is already
/// installed (once per process).
pub fn install_exporter(
    address: SocketAddr,
) -> Result<impl Future<Output = Result<(), String>>, ExporterError> {
    let error = |reason: String| ExporterError { address, reason };
    let (recorder, exporter) = builder()
        .and_then(|b| b.with_http_listener(address).build())
        .map_err(|e| error(e.to_string()))?;
    metrics::set_global_recorder(recorder).map_err(|e| error(e.to_string()))?;
    describe();
    Ok(async move { exporter.await.map_err(|e| format!("{e:?}")) })
}

/// Explicit buckets for every histogram: Prometheus histograms, not
/// summaries, so scrapes of many participants can be summed.
fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets(&SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_TXIDS.into()), &BATCH_TXIDS_BUCKETS)
}

/// The HELP lines of every series.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "gRPC requests answered, by rpc and outcome (yes/no vote, ok, error)"
    );
    describe_counter!(
        REQUEST_ERRORS_TOTAL,
        "gRPC requests answered with an error status, by rpc and status code"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "time to answer a gRPC request, by rpc"
    );
    describe_counter!(
        LOCAL_COMMITS_TOTAL,
        "local transactions (batches) committed to the shard database"
    );
    describe_counter!(
        LOCAL_COMMIT_FAILURES_TOTAL,
        "batches that failed after retries; nothing of them was applied"
    );
    describe_histogram!(
        LOCAL_COMMIT_SECONDS,
        Unit::Seconds,
        "time from BEGIN to durable COMMIT of a batch, retries included"
    );
    describe_histogram!(
        BATCH_TXIDS,
        Unit::Count,
        "txid operations applied per local commit"
    );
    describe_gauge!(
        PREPARED,
        Unit::Count,
        "txids prepared (seats held, voted YES) and not yet decided"
    );
    describe_counter!(GET_DECISION_TOTAL, "GetDecision calls to the coordinator for in-doubt txids, by result; in_progress and error are asked again");
    describe_counter!(
        IN_DOUBT_RESOLVED_TOTAL,
        "in-doubt txids resolved with the coordinator's decision, by decision"
    );
}

/// A gRPC method of the Participant service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Prepare,
    Commit,
    Abort,
    BookLocal,
    Resolve,
    Compensate,
    DecideMany,
    ReserveMany,
    CreateFlight,
    GetFlight,
    ListTxns,
}

impl Rpc {
    pub const ALL: [Rpc; 11] = [
        Rpc::Prepare,
        Rpc::Commit,
        Rpc::Abort,
        Rpc::BookLocal,
        Rpc::Resolve,
        Rpc::Compensate,
        Rpc::DecideMany,
        Rpc::ReserveMany,
        Rpc::CreateFlight,
        Rpc::GetFlight,
        Rpc::ListTxns,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::Prepare => "prepare",
            Rpc::Commit => "commit",
            Rpc::Abort => "abort",
            Rpc::BookLocal => "book_local",
            Rpc::Resolve => "resolve",
            Rpc::Compensate => "compensate",
            Rpc::DecideMany => "decide_many",
            Rpc::ReserveMany => "reserve_many",
            Rpc::CreateFlight => "create_flight",
            Rpc::GetFlight => "get_flight",
            Rpc::ListTxns => "list_txns",
        }
    }

    /// Prepare and BookLocal answer with a vote: yes/no instead of ok.
    fn votes(self) -> bool {
        matches!(self, Rpc::Prepare | Rpc::BookLocal)
    }
}

/// How a request ended, for `participant_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Yes,
    No,
    Ok,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [Outcome::Yes, Outcome::No, Outcome::Ok, Outcome::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Yes => "yes",
            Outcome::No => "no",
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }

    /// Whether `rpc` can end this way: votes end yes/no/error, the rest ok/error.
    fn fits(self, rpc: Rpc) -> bool {
        match self {
            Outcome::Yes | Outcome::No => rpc.votes(),
            Outcome::Ok => !rpc.votes(),
            Outcome::Error => true,
        }
    }
}

/// What GetDecision answered, for `participant_get_decision_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionResult {
    Commit,
    Abort,
    InProgress,
    /// No answer: unreachable, timed out, or an error status.
    Error,
}

impl DecisionResult {
    const ALL: [DecisionResult; 4] = [
        DecisionResult::Commit,
        DecisionResult::Abort,
        DecisionResult::InProgress,
        DecisionResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionResult::Commit => "commit",
            DecisionResult::Abort => "abort",
            DecisionResult::InProgress => "in_progress",
            DecisionResult::Error => "error",
        }
    }
}

/// The series of one rpc.
#[derive(Debug)]
struct RequestSeries {
    /// Indexed by `Outcome as usize`; a no-op where the outcome cannot happen.
    outcomes: [Counter; 4],
    seconds: Histogram,
}

/// Handles of every participant series; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    /// Indexed by `Rpc as usize`.
    requests: [RequestSeries; 11],
    local_commits: Counter,
    local_commit_failures: Counter,
    local_commit_seconds: Histogram,
    batch_txids: Histogram,
    prepared: Gauge,
    /// Indexed by `DecisionResult as usize`.
    get_decision: [Counter; 4],
    in_doubt_committed: Counter,
    in_doubt_aborted: Counter,
}

impl Metrics {
    /// Registers every series with the installed recorder (no-ops without one).
    pub fn register() -> Arc<Metrics> {
        Arc::new(Metrics {
            requests: Rpc::ALL.map(RequestSeries::register),
            local_commits: metrics::counter!(LOCAL_COMMITS_TOTAL),
            local_commit_failures: metrics::counter!(LOCAL_COMMIT_FAILURES_TOTAL),
            local_commit_seconds: metrics::histogram!(LOCAL_COMMIT_SECONDS),
            batch_txids: metrics::histogram!(BATCH_TXIDS),
            prepared: metrics::gauge!(PREPARED),
            get_decision: DecisionResult::ALL
                .map(|result| metrics::counter!(GET_DECISION_TOTAL, "result" => result.as_str())),
            in_doubt_committed: metrics::counter!(IN_DOUBT_RESOLVED_TOTAL, "decision" => "commit"),
            in_doubt_aborted: metrics::counter!(IN_DOUBT_RESOLVED_TOTAL, "decision" => "abort"),
        })
    }

    /// One answered request.
    pub fn request(&self, rpc: Rpc, outcome: Outcome, elapsed: Duration) {
        let series = &self.requests[rpc as usize];
        series.outcomes[outcome as usize].increment(1);
        series.seconds.record(elapsed.as_secs_f64());
    }

    /// The status code of a failed request. Registered on first use, with
    /// the process-wide recorder (not one `register` was given): the error
    /// path may pay a lookup, and only codes that happened are exported.
    pub fn request_failed(&self, rpc: Rpc, code: Code) {
        metrics::counter!(REQUEST_ERRORS_TOTAL, "rpc" => rpc.as_str(), "code" => code_name(code))
            .increment(1);
    }

    /// A batch committed locally: its txid operations, its time, and how it
    /// moved the count of prepared txids.
    pub fn local_commit(&self, txids: usize, elapsed: Duration, prepared_change: i64) {
        self.local_commits.increment(1);
        self.batch_txids.record(txids as f64);
        self.local_commit_seconds.record(elapsed.as_secs_f64());
        match prepared_change {
            0 => {}
            up if up > 0 => self.prepared.increment(up as f64),
            down => self.prepared.decrement(down.unsigned_abs() as f64),
        }
    }

    pub fn local_commit_failed(&self) {
        self.local_commit_failures.increment(1);
    }

    /// The prepared txids the store holds, read at start.
    pub fn set_prepared(&self, prepared: u64) {
        self.prepared.set(prepared as f64);
    }

    pub fn get_decision(&self, result: DecisionResult) {
        self.get_decision[result as usize].increment(1);
    }

    /// An in-doubt txid got the coordinator's decision applied.
    pub fn in_doubt_resolved(&self, decision: Decision) {
        match decision {
            Decision::Commit => self.in_doubt_committed.increment(1),
            Decision::Abort => self.in_doubt_aborted.increment(1),
            Decision::InProgress | Decision::Unspecified => {}
        }
    }
}

impl RequestSeries {
    fn register(rpc: Rpc) -> RequestSeries {
        let outcome = |outcome: Outcome| {
            if !outcome.fits(rpc) {
                return Counter::noop();
            }
            metrics::counter!(REQUESTS_TOTAL, "rpc" => rpc.as_str(), "outcome" => outcome.as_str())
        };
        RequestSeries {
            outcomes: Outcome::ALL.map(outcome),
            seconds: metrics::histogram!(REQUEST_SECONDS, "rpc" => rpc.as_str()),
        }
    }
}

/// The gRPC name of a status code, e.g. `RESOURCE_EXHAUSTED`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusRecorder;

    // The batch histogram keeps its own buckets.
    #[test]
    fn batch_sizes_have_their_own_buckets() {
        let (metrics, recorder) = local();
        metrics.local_commit(5, Duration::from_millis(1), 0);
        let text = recorder.handle().render();
        assert!(
            text.contains("participant_batch_txids_bucket{le=\"8\"} 1"),
            "{text}"
        );
        assert!(text.contains("participant_batch_txids_sum 5"), "{text}");
    }

    /// Metrics bound to a recorder of their own, and the recorder to render.
    fn local() -> (Arc<Metrics>, PrometheusRecorder) {
        let recorder = builder()
            .expect("the buckets are non-empty")
            .build_recorder();
        let metrics = metrics::with_local_recorder(&recorder, Metrics::register);
        (metrics, recorder)
    }

    #[test]
    fn every_series_is_exported_from_the_start() {
        let (metrics, recorder) = local();
        metrics.set_prepared(3);
        let text = recorder.handle().render();
        for line in [
            "participant_requests_total{rpc=\"prepare\",outcome=\"yes\"} 0",
            "participant_requests_total{rpc=\"commit\",outcome=\"ok\"} 0",
            "participant_get_decision_total{result=\"in_progress\"} 0",
            "participant_in_doubt_resolved_total{decision=\"abort\"} 0",
            "participant_local_commits_total 0",
            "participant_prepared 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(
            !text.contains("rpc=\"commit\",outcome=\"yes\""),
            "a commit never votes:\n{text}"
        );
    }

    #[test]
    fn batches_move_the_prepared_gauge_and_histograms() {
        let (metrics, recorder) = local();
        metrics.set_prepared(1);
        metrics.local_commit(4, Duration::from_millis(2), 3);
        metrics.local_commit(2, Duration::from_millis(1), -2);
        metrics.request(Rpc::Prepare, Outcome::No, Duration::from_millis(3));
        // Registered on first use, with the recorder installed at that time.
        metrics::with_local_recorder(&recorder, || {
            metrics.request_failed(Rpc::Commit, Code::FailedPrecondition)
        });
        let text = recorder.handle().render();
        for line in [
            "participant_prepared 2",
            "participant_local_commits_total 2",
            "participant_local_commit_seconds_count 2",
            "participant_local_commit_seconds_bucket{le=\"0.0025\"} 2",
            "participant_requests_total{rpc=\"prepare\",outcome=\"no\"} 1",
            "participant_request_errors_total{rpc=\"commit\",code=\"FAILED_PRECONDITION\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(
            text.contains("participant_request_seconds_bucket{rpc=\"prepare\",le=\"0.005\"} 1"),
            "{text}"
        );
    }
}
