//! What the bench found and how it is shown: one [`CellResult`] per
//! (database, workload, clients, variant), the log microbenchmark's
//! [`LogRun`]s and the flash sale's [`OverloadRun`]s; as Markdown tables
//! (pasted into BENCHMARKS.md as printed) with the ratios and the issue's
//! targets beside them, or as JSON lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::args::{Db, Variant, Workload};
use super::driver::Tally;

/// One cell of the matrix.
#[derive(Clone, Debug, Serialize)]
pub struct CellResult {
    pub db: Db,
    pub workload: Workload,
    pub variant: Variant,
    pub clients: usize,
    /// From the first booking to the last answer.
    pub seconds: f64,
    pub answered: u64,
    pub committed: u64,
    pub sold_out: u64,
    /// Aborted for another reason than sold out.
    pub aborted_other: u64,
    /// No answer (error status, database error).
    pub failed: u64,
    /// Answered (committed or aborted) per second.
    pub bookings_per_s: f64,
    pub committed_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Coordinator log records per fsync; None without a coordinator.
    pub log_records_per_fsync: Option<f64>,
    /// Durable local commits per answered booking: the participants'
    /// batches for (a), (b), (d); the bench's own COMMIT / PREPARE
    /// TRANSACTION / COMMIT PREPARED statements for (c), (e).
    pub local_commits_per_booking: Option<f64>,
    /// CPU seconds of every server process and the bench, per 1,000
    /// answered bookings.
    pub cpu_s_per_1k: Option<f64>,
}

impl CellResult {
    /// The figures of a tally; the counters from metrics are filled in by the caller.
    pub fn new(
        (db, workload, variant, clients): (Db, Workload, Variant, usize),
        tally: &Tally,
        seconds: f64,
    ) -> CellResult {
        let per_s = |count: u64| count as f64 / seconds.max(1e-9);
        CellResult {
            db,
            workload,
            variant,
            clients,
            seconds,
            answered: tally.answered(),
            committed: tally.committed,
            sold_out: tally.sold_out,
            aborted_other: tally.aborted_other(),
            failed: tally.failed_total() + tally.refused,
            bookings_per_s: per_s(tally.answered()),
            committed_per_s: per_s(tally.committed),
            p50_ms: tally.answered_ms(0.5),
            p99_ms: tally.answered_ms(0.99),
            p999_ms: tally.answered_ms(0.999),
            log_records_per_fsync: None,
            local_commits_per_booking: None,
            cpu_s_per_1k: None,
        }
    }
}

/// One run of the decision log microbenchmark.
#[derive(Clone, Debug, Serialize)]
pub struct LogRun {
    pub appenders: usize,
    pub group_commit: bool,
    pub records: usize,
    pub records_per_s: f64,
    pub records_per_fsync: f64,
}

/// One open-loop flash sale.
#[derive(Clone, Debug, Serialize)]
pub struct OverloadRun {
    pub db: Db,
    /// The coordinator's admission limit during the run.
    pub inflight_max: usize,
    /// The client throttle's `k`, or None for bare stubs.
    pub client_throttle_k: Option<f64>,
    /// The best closed-loop cell of (a): its clients, rate and p99.
    pub peak_clients: usize,
    pub peak_per_s: f64,
    pub peak_p99_ms: f64,
    /// Arrivals asked for, and started, per second.
    pub target_per_s: f64,
    pub offered_per_s: f64,
    /// Committed or sold-out answers within the arrival window, per second.
    pub goodput_per_s: f64,
    pub goodput_vs_peak: f64,
    pub admitted: u64,
    pub admitted_p50_ms: f64,
    pub admitted_p99_ms: f64,
    pub admitted_p99_vs_peak: f64,
    pub aborted_other: u64,
    /// Other aborts by reason, and failures by gRPC code.
    pub aborted_by_reason: BTreeMap<String, u64>,
    pub failed_by_code: BTreeMap<String, u64>,
    pub refused: u64,
    pub refused_with_hint: u64,
    /// Refused by the client's throttle, never sent.
    pub throttled: u64,
    /// Latency of every refusal, by the coordinator or the client.
    pub refusal_p50_ms: f64,
    pub refusal_p99_ms: f64,
    /// p99 of the coordinator's refusals alone, and of the client's.
    pub coordinator_refusal_p99_ms: f64,
    pub client_refusal_p99_ms: f64,
    pub failed: u64,
    pub unfinished: u64,
    /// CPU seconds of the bench process itself during the window, per second.
    pub bench_cpu_share: f64,
}

impl OverloadRun {
    /// How the surge's bookings were sent.
    pub fn client(&self) -> String {
        self.client_throttle_k
            .map_or("bare stubs".into(), |k| format!("throttle k={}", number(k)))
    }
}

/// `1234`, `12.3`, `1.23`: three significant digits, no more than needed.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), number)
}

/// `a / b` as `1.23×`, or `–` when either is missing or b is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{}×", number(a / b)),
        _ => "–".into(),
    }
}

fn find(
    cells: &[CellResult],
    db: Db,
    workload: Workload,
    variant: Variant,
    clients: usize,
) -> Option<&CellResult> {
    cells.iter().find(|c| {
        c.db == db && c.workload == workload && c.variant == variant && c.clients == clients
    })
}

fn rate(
    cells: &[CellResult],
    db: Db,
    workload: Workload,
    variant: Variant,
    clients: usize,
) -> Option<f64> {
    find(cells, db, workload, variant, clients).map(|c| c.bookings_per_s)
}

/// Distinct values of `key` over `cells`, in first-seen order.
fn distinct<T: PartialEq + Copy>(cells: &[CellResult], key: impl Fn(&CellResult) -> T) -> Vec<T> {
    let mut seen = Vec::new();
    for cell in cells {
        let value = key(cell);
        if !seen.contains(&value) {
            seen.push(value);
        }
    }
    seen
}

/// The matrix: one table per (database, workload), rows by clients then variant.
pub fn cells_table(cells: &[CellResult]) -> String {
    let mut out = String::new();
    for db in distinct(cells, |c| c.db) {
        for workload in distinct(cells, |c| c.workload) {
            let rows: Vec<&CellResult> = cells
                .iter()
                .filter(|c| c.db == db && c.workload == workload)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n#### {db}, {workload}\n");
            out.push_str("| clients | variant | bookings/s | committed/s | sold out | other aborts | no answer | p50 ms | p99 ms | p99.9 ms | log records/fsync | local commits/booking | CPU s/1k bookings |\n");
            out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            let mut sorted = rows;
            sorted.sort_by_key(|c| (c.clients, c.variant));
            for c in sorted {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.clients,
                    c.variant,
                    number(c.bookings_per_s),
                    number(c.committed_per_s),
                    c.sold_out,
                    c.aborted_other,
                    c.failed,
                    number(c.p50_ms),
                    number(c.p99_ms),
                    number(c.p999_ms),
                    optional(c.log_records_per_fsync),
                    optional(c.local_commits_per_booking),
                    optional(c.cpu_s_per_1k),
                );
            }
        }
    }
    out
}

/// Bookings/s of (a) over (c), (d), (e), and hot over uniform per variant.
pub fn ratios_table(cells: &[CellResult]) -> String {
    let mut out = String::new();
    for db in distinct(cells, |c| c.db) {
        let _ = writeln!(out, "\n#### Ratios of bookings/s, {db}\n");
        out.push_str(
            "| workload | clients | (a)/(c) | (a)/(d) | (a)/(e) |\n|---|---:|---:|---:|---:|\n",
        );
        let mut any = false;
        for workload in distinct(cells, |c| c.workload) {
            let mut clients = distinct(cells, |c| c.clients);
            clients.sort_unstable();
            for n in clients {
                let a = rate(cells, db, workload, Variant::TwoPhase, n);
                if a.is_none() {
                    continue;
                }
                any = true;
                let over = |v| ratio(a, rate(cells, db, workload, v, n));
                let _ = writeln!(
                    out,
                    "| {workload} | {n} | {} | {} | {} |",
                    over(Variant::SingleDb),
                    over(Variant::Naive),
                    over(Variant::PgNative)
                );
            }
        }
        if !any {
            out.push_str("| – | – | – | – | – |\n");
        }
        let variants = distinct(cells, |c| c.variant);
        let mut clients = distinct(cells, |c| c.clients);
        clients.sort_unstable();
        let has_both = |v: Variant| {
            clients.iter().any(|n| {
                rate(cells, db, Workload::Hot, v, *n).is_some()
                    && rate(cells, db, Workload::Uniform, v, *n).is_some()
            })
        };
        let variants: Vec<Variant> = variants.into_iter().filter(|v| has_both(*v)).collect();
        if variants.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\nhot / uniform (bookings/s), {db}:\n");
        let header: Vec<String> = variants.iter().map(|v| v.to_string()).collect();
        let _ = writeln!(out, "| clients | {} |", header.join(" | "));
        let _ = writeln!(out, "|---:|{}", "---:|".repeat(variants.len()));
        for n in clients {
            let row: Vec<String> = variants
                .iter()
                .map(|v| {
                    ratio(
                        rate(cells, db, Workload::Hot, *v, n),
                        rate(cells, db, Workload::Uniform, *v, n),
                    )
                })
                .collect();
            let _ = writeln!(out, "| {n} | {} |", row.join(" | "));
        }
    }
    out
}

pub fn log_table(runs: &[LogRun]) -> String {
    let mut out = String::from(
        "\n| appenders | group commit | records | records/s | records/fsync |\n|---:|---|---:|---:|---:|\n",
    );
    for run in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            run.appenders,
            if run.group_commit { "on" } else { "off" },
            run.records,
            number(run.records_per_s),
            number(run.records_per_fsync)
        );
    }
    out
}

pub fn overload_table(runs: &[OverloadRun]) -> String {
    let mut out = String::from(
        "\n| db | inflight_max | client | peak (clients, bookings/s, p99 ms) | offered/s | goodput/s | goodput/peak | admitted | admitted p50 / p99 ms | p99/peak p99 | refused by coordinator | with retry-after-ms | refused by client | refusal p50 / p99 ms | p99 ms by coordinator / client | other aborts | no answer | bench CPU share |\n\
         |---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|\n",
    );
    for r in runs {
        let goodput_share = format!("{}%", number(r.goodput_vs_peak * 100.0));
        let p99_ratio = format!("{}×", number(r.admitted_p99_vs_peak));
        let bench_cpu = format!("{}%", number(r.bench_cpu_share * 100.0));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}, {}, {} | {} | {} | {goodput_share} | {} | {} / {} | {p99_ratio} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {bench_cpu} |",
            r.db,
            r.inflight_max,
            r.client(),
            r.peak_clients,
            number(r.peak_per_s),
            number(r.peak_p99_ms),
            number(r.offered_per_s),
            number(r.goodput_per_s),
            r.admitted,
            number(r.admitted_p50_ms),
            number(r.admitted_p99_ms),
            r.refused,
            r.refused_with_hint,
            r.throttled,
            number(r.refusal_p50_ms),
            number(r.refusal_p99_ms),
            number(if r.refused > 0 { r.coordinator_refusal_p99_ms } else { f64::NAN }),
            number(if r.throttled > 0 { r.client_refusal_p99_ms } else { f64::NAN }),
            r.aborted_other,
            r.failed + r.unfinished,
        );
    }
    for r in runs {
        let reasons: Vec<String> = r
            .aborted_by_reason
            .iter()
            .chain(&r.failed_by_code)
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        if !reasons.is_empty() {
            let _ = writeln!(
                out,
                "\n{} inflight_max {}, {}: other aborts and no-answers by reason: {}",
                r.db,
                r.inflight_max,
                r.client(),
                reasons.join(", ")
            );
        }
    }
    out
}

/// One of the targets: what it asks, what was measured, whether met
/// (None when the run did not measure it).
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

fn check(target: &str, measured: Option<(f64, String)>, met: impl Fn(f64) -> bool) -> TargetCheck {
    match measured {
        Some((value, text)) => TargetCheck {
            target: target.into(),
            measured: text,
            met: Some(met(value)),
        },
        None => TargetCheck {
            target: target.into(),
            measured: "not measured in this run".into(),
            met: None,
        },
    }
}

/// The targets against this run's figures.
pub fn targets(
    cells: &[CellResult],
    logs: &[LogRun],
    overloads: &[OverloadRun],
) -> Vec<TargetCheck> {
    let uniform = |db, variant, clients| find(cells, db, Workload::Uniform, variant, clients);
    let a64 = uniform(Db::Sqlite, Variant::TwoPhase, 64);
    let c64 = uniform(Db::Sqlite, Variant::SingleDb, 64);
    let a_over_c = a64
        .zip(c64)
        .map(|(a, c)| a.bookings_per_s / c.bookings_per_s);
    let pg_a64 = uniform(Db::Postgres, Variant::TwoPhase, 64);
    let pg_e64 = uniform(Db::Postgres, Variant::PgNative, 64);
    let a_over_e = pg_a64
        .zip(pg_e64)
        .map(|(a, e)| a.bookings_per_s / e.bookings_per_s);
    let a1 = uniform(Db::Sqlite, Variant::TwoPhase, 1);
    let a256 = uniform(Db::Sqlite, Variant::TwoPhase, 256);
    let hot64 = find(cells, Db::Sqlite, Workload::Hot, Variant::TwoPhase, 64);
    let hot_ratio = hot64
        .zip(a64)
        .map(|(h, u)| h.bookings_per_s / u.bookings_per_s);
    let log_best = logs
        .iter()
        .filter(|r| r.group_commit)
        .map(|r| r.records_per_s)
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.max(v)))
        });
    let times = |v: f64| format!("{}×", number(v));
    let mut checks = vec![
        check(
            "(a) ≥ 1.0×(c) at 64 clients, SQLite",
            a_over_c.map(|r| (r, times(r))),
            |r| r >= 1.0,
        ),
        check(
            "(a) ≥ 5,000 bookings/s at 64 clients, SQLite",
            a64.map(|c| (c.bookings_per_s, format!("{}/s", number(c.bookings_per_s)))),
            |v| v >= 5000.0,
        ),
        check(
            "p99 ≤ 10 ms at 64 clients ((a), SQLite)",
            a64.map(|c| (c.p99_ms, format!("{} ms", number(c.p99_ms)))),
            |v| v <= 10.0,
        ),
        check(
            "p50 ≤ 1.5 ms at 1 client ((a), SQLite)",
            a1.map(|c| (c.p50_ms, format!("{} ms", number(c.p50_ms)))),
            |v| v <= 1.5,
        ),
        check(
            "(a) ≥ 1.5×(e) at 64 clients, PostgreSQL",
            a_over_e.map(|r| (r, times(r))),
            |r| r >= 1.5,
        ),
        check(
            "≥ 32 log records per fsync at 256 clients ((a), SQLite)",
            a256.and_then(|c| c.log_records_per_fsync)
                .map(|v| (v, number(v))),
            |v| v >= 32.0,
        ),
        check(
            "log microbenchmark ≥ 100,000 records/s (group commit)",
            log_best.map(|v| (v, format!("{}/s", number(v)))),
            |v| v >= 100_000.0,
        ),
        check(
            "hot ≥ 0.7×uniform ((a), 64 clients, SQLite)",
            hot_ratio.map(|r| (r, times(r))),
            |r| r >= 0.7,
        ),
    ];
    for throttled in [false, true] {
        let shipped = overloads.iter().find(|r| {
            r.db == Db::Sqlite
                && r.inflight_max == super::overload::INFLIGHT_MAX_SHIPPED
                && r.client_throttle_k.is_some() == throttled
        });
        let how = if throttled {
            "SQLite, shipped inflight_max, client library's throttle"
        } else {
            "SQLite, shipped inflight_max, bare stubs"
        };
        checks.extend([
            check(
                &format!("overload goodput ≥ 90% of peak ({how})"),
                shipped.map(|r| {
                    (
                        r.goodput_vs_peak,
                        format!("{}%", number(r.goodput_vs_peak * 100.0)),
                    )
                }),
                |v| v >= 0.9,
            ),
            check(
                &format!("overload admitted p99 ≤ 2× peak p99 ({how})"),
                shipped.map(|r| (r.admitted_p99_vs_peak, times(r.admitted_p99_vs_peak))),
                |v| v <= 2.0,
            ),
            check(
                &format!("overload refusals < 5 ms (p99, {how})"),
                shipped
                    .filter(|r| r.refused + r.throttled > 0)
                    .map(|r| (r.refusal_p99_ms, format!("{} ms", number(r.refusal_p99_ms)))),
                |v| v < 5.0,
            ),
        ]);
    }
    checks
}

pub fn targets_table(checks: &[TargetCheck]) -> String {
    let mut out = String::from("\n| target | measured | met |\n|---|---:|---|\n");
    for c in checks {
        let met = match c.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "–",
        };
        let _ = writeln!(out, "| {} | {} | {met} |", c.target, c.measured);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(workload: Workload, variant: Variant, clients: usize, rate: f64) -> CellResult {
        CellResult {
            db: Db::Sqlite,
            workload,
            variant,
            clients,
            seconds: 3.0,
            answered: (rate * 3.0) as u64,
            committed: (rate * 3.0) as u64,
            sold_out: 0,
            aborted_other: 0,
            failed: 0,
            bookings_per_s: rate,
            committed_per_s: rate,
            p50_ms: 1.2,
            p99_ms: 12.5,
            p999_ms: 150.0,
            log_records_per_fsync: (variant == Variant::TwoPhase).then_some(40.0),
            local_commits_per_booking: Some(0.5),
            cpu_s_per_1k: Some(0.25),
        }
    }

    fn matrix() -> Vec<CellResult> {
        vec![
            cell(Workload::Uniform, Variant::TwoPhase, 64, 3000.0),
            cell(Workload::Uniform, Variant::SingleDb, 64, 1500.0),
            cell(Workload::Uniform, Variant::Naive, 64, 600.0),
            cell(Workload::Hot, Variant::TwoPhase, 64, 2400.0),
            cell(Workload::Uniform, Variant::TwoPhase, 1, 400.0),
        ]
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(number(12345.6), "12346");
        assert_eq!(number(123.45), "123");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(f64::NAN), "–");
        assert_eq!(ratio(Some(3.0), Some(1.5)), "2.00×");
        assert_eq!(ratio(Some(3.0), None), "–");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "–");
    }

    #[test]
    fn the_matrix_table_has_a_row_per_cell_in_client_order() {
        let table = cells_table(&matrix());
        assert!(table.contains("#### sqlite, uniform"), "{table}");
        assert!(table.contains("#### sqlite, hot"), "{table}");
        let uniform = &table[..table.find("#### sqlite, hot").expect("hot follows")];
        let one = uniform
            .find("| 1 | (a) 2PC | 400 |")
            .expect("the 1-client row");
        let sixty_four = uniform
            .find("| 64 | (a) 2PC | 3000 |")
            .expect("the 64-client row");
        assert!(one < sixty_four);
        assert!(uniform.contains("| 64 | (c) one DB | 1500 | 1500 | 0 | 0 | 0 | 1.20 | 12.5 | 150 | – | 0.50 | 0.25 |"), "{uniform}");
    }

    #[test]
    fn ratios_compare_a_with_each_baseline_and_hot_with_uniform() {
        let table = ratios_table(&matrix());
        assert!(
            table.contains("| uniform | 64 | 2.00× | 5.00× | – |"),
            "{table}"
        );
        assert!(table.contains("| uniform | 1 | – | – | – |"), "{table}");
        assert!(table.contains("| 64 | 0.80× |"), "{table}");
    }

    #[test]
    fn targets_say_met_missed_or_not_measured() {
        let logs = [LogRun {
            appenders: 256,
            group_commit: true,
            records: 1000,
            records_per_s: 150_000.0,
            records_per_fsync: 100.0,
        }];
        let checks = targets(&matrix(), &logs, &[]);
        let by_name = |prefix: &str| {
            checks
                .iter()
                .find(|c| c.target.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix}"))
        };
        assert_eq!(by_name("(a) ≥ 1.0×(c)").met, Some(true));
        assert_eq!(by_name("(a) ≥ 1.0×(c)").measured, "2.00×");
        assert_eq!(by_name("(a) ≥ 5,000").met, Some(false));
        assert_eq!(by_name("p99 ≤ 10 ms").met, Some(false));
        assert_eq!(by_name("p50 ≤ 1.5 ms").met, Some(true));
        assert_eq!(by_name("(a) ≥ 1.5×(e)").met, None);
        assert_eq!(by_name("≥ 32 log records").met, None, "no 256-client cell");
        assert_eq!(by_name("log microbenchmark").met, Some(true));
        assert_eq!(by_name("hot ≥ 0.7").met, Some(true));
        assert_eq!(by_name("overload goodput").met, None);
        let table = targets_table(&checks);
        assert!(
            table.contains("| (a) ≥ 5,000 bookings/s at 64 clients, SQLite | 3000/s | MISSED |"),
            "{table}"
        );
    }
}
