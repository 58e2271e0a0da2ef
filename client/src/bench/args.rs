//! The flags of `bookctl bench` ([`BenchArgs`], parsed by clap) and their
//! checked form ([`BenchOptions`]). Every rule for a flag lives here, so a
//! bad command line is refused with one clear message before anything
//! starts.

use std::fmt;

/// Most concurrent clients a cell may ask for.
pub const CONCURRENCY_MAX: usize = 4096;
/// Longest cell, in seconds.
pub const SECONDS_MAX: u64 = 3600;
/// Seconds per cell when `--seconds` is not given: the full SQLite matrix
/// (4 variants × 4 concurrencies × 2 workloads) then takes a few minutes.
pub const SECONDS_DEFAULT: u64 = 3;

/// `bookctl bench`: start local clusters, run a fixed workload on each
/// variant, print a table (see `booking_client::bench`).
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Shard databases: sqlite, postgres or both.
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Variants, comma-separated: a (2PC as shipped), b (saga), c (one
    /// local transaction on one database), d (naive 2PC: no group commit,
    /// no batching), e (PostgreSQL PREPARE TRANSACTION; postgres only).
    /// Default: every variant the chosen databases support.
    #[arg(long)]
    pub variants: Option<String>,
    /// Concurrent clients per cell, comma-separated.
    #[arg(long, default_value = "1,16,64,256")]
    pub concurrency: String,
    /// Workloads, comma-separated: uniform (3,000 flights), hot (80% of
    /// bookings on 10 flights). Default: both.
    #[arg(long)]
    pub workload: Option<String>,
    /// Seconds each cell books for.
    #[arg(long, default_value_t = SECONDS_DEFAULT)]
    pub seconds: u64,
    /// One JSON object per line (per cell, per log run, per overload run)
    /// instead of tables.
    #[arg(long)]
    pub json: bool,
    /// The flash-sale experiment instead of the matrix: peak of (a) over
    /// --concurrency, then 10× that rate offered open-loop.
    #[arg(long)]
    pub overload: bool,
    /// Skip the decision-log microbenchmark.
    #[arg(long)]
    pub no_log_bench: bool,
}

/// Where the shards keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Db {
    Sqlite,
    Postgres,
}

impl fmt::Display for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        })
    }
}

/// What is measured. The letters are the issue's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// (a) two-phase commit, this project as shipped.
    TwoPhase,
    /// (b) saga mode on every request.
    Saga,
    /// (c) one local transaction per itinerary on one database.
    SingleDb,
    /// (d) 2PC without group commit or participant batching.
    Naive,
    /// (e) PostgreSQL's PREPARE TRANSACTION / COMMIT PREPARED over 3 databases.
    PgNative,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::TwoPhase,
        Variant::Saga,
        Variant::SingleDb,
        Variant::Naive,
        Variant::PgNative,
    ];

    pub fn letter(self) -> char {
        match self {
            Variant::TwoPhase => 'a',
            Variant::Saga => 'b',
            Variant::SingleDb => 'c',
            Variant::Naive => 'd',
            Variant::PgNative => 'e',
        }
    }

    /// A short name for tables, e.g. `(a) 2PC`.
    pub fn label(self) -> &'static str {
        match self {
            Variant::TwoPhase => "(a) 2PC",
            Variant::Saga => "(b) saga",
            Variant::SingleDb => "(c) one DB",
            Variant::Naive => "(d) naive 2PC",
            Variant::PgNative => "(e) PG 2PC",
        }
    }

    fn parse(text: &str) -> Result<Variant, String> {
        Variant::ALL
            .into_iter()
            .find(|v| text.len() == 1 && text.starts_with(v.letter()))
            .ok_or_else(|| {
                format!("--variants: unknown variant {text:?}; use letters from a,b,c,d,e")
            })
    }

    /// Whether the variant runs on shards of `db`.
    pub fn runs_on(self, db: Db) -> bool {
        self != Variant::PgNative || db == Db::Postgres
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl serde::Serialize for Variant {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.letter().to_string())
    }
}

/// Which itineraries the clients book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Both legs uniform over the 3,000 flights.
    Uniform,
    /// 80% of bookings on 10 hot flights (fresh ones per cell).
    Hot,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Uniform => "uniform",
            Workload::Hot => "hot",
        })
    }
}

/// The checked options of one `bookctl bench` run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// In run order; SQLite first.
    pub dbs: Vec<Db>,
    /// In the order given; each runs on the dbs it supports.
    pub variants: Vec<Variant>,
    /// Clients per cell, each 1..=CONCURRENCY_MAX, distinct.
    pub concurrency: Vec<usize>,
    pub workloads: Vec<Workload>,
    /// Per cell, 1..=SECONDS_MAX.
    pub seconds: u64,
    pub json: bool,
    pub overload: bool,
    pub log_bench: bool,
}

impl TryFrom<&BenchArgs> for BenchOptions {
    type Error = String;

    fn try_from(args: &BenchArgs) -> Result<BenchOptions, String> {
        let dbs = parse_dbs(&args.db)?;
        let has_postgres = dbs.contains(&Db::Postgres);
        if args.overload && args.variants.is_some() {
            return Err("--overload measures variant (a) only; drop --variants".into());
        }
        if args.overload && args.workload.is_some() {
            return Err("--overload books the uniform workload only; drop --workload".into());
        }
        let variants = match &args.variants {
            Some(text) => parse_list("--variants", text, Variant::parse)?,
            None if args.overload => vec![Variant::TwoPhase],
            None => Variant::ALL
                .into_iter()
                .filter(|v| has_postgres || v.runs_on(Db::Sqlite))
                .collect(),
        };
        if variants.contains(&Variant::PgNative) && !has_postgres {
            return Err(
                "--variants: e (PostgreSQL's own two-phase commit) needs --db postgres or --db both"
                    .into(),
            );
        }
        let workloads = match &args.workload {
            Some(text) => parse_list("--workload", text, parse_workload)?,
            None if args.overload => vec![Workload::Uniform],
            None => vec![Workload::Uniform, Workload::Hot],
        };
        if args.seconds == 0 || args.seconds > SECONDS_MAX {
            return Err(format!(
                "--seconds {}: give 1..={SECONDS_MAX} seconds per cell",
                args.seconds
            ));
        }
        Ok(BenchOptions {
            dbs,
            variants,
            concurrency: parse_list("--concurrency", &args.concurrency, parse_concurrency)?,
            workloads,
            seconds: args.seconds,
            json: args.json,
            overload: args.overload,
            log_bench: !args.no_log_bench && !args.overload,
        })
    }
}

fn parse_dbs(text: &str) -> Result<Vec<Db>, String> {
    match text {
        "sqlite" => Ok(vec![Db::Sqlite]),
        "postgres" => Ok(vec![Db::Postgres]),
        "both" => Ok(vec![Db::Sqlite, Db::Postgres]),
        other => Err(format!("--db {other:?}: use sqlite, postgres or both")),
    }
}

fn parse_workload(text: &str) -> Result<Workload, String> {
    match text {
        "uniform" => Ok(Workload::Uniform),
        "hot" => Ok(Workload::Hot),
        other => Err(format!(
            "--workload: unknown workload {other:?}; use uniform or hot"
        )),
    }
}

fn parse_concurrency(text: &str) -> Result<usize, String> {
    let clients: usize = text
        .parse()
        .map_err(|_| format!("--concurrency: {text:?} is not a number of clients"))?;
    if clients == 0 || clients > CONCURRENCY_MAX {
        return Err(format!(
            "--concurrency: {clients} clients; give 1..={CONCURRENCY_MAX}"
        ));
    }
    Ok(clients)
}

/// A comma-separated list of distinct items, none empty.
fn parse_list<T: PartialEq>(
    flag: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut items = Vec::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!(
                "{flag} {text:?}: an item is empty; separate items with single commas"
            ));
        }
        let item = parse(part)?;
        if items.contains(&item) {
            return Err(format!("{flag} {text:?}: {part} is listed twice"));
        }
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn options(flags: &[&str]) -> Result<BenchOptions, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        BenchOptions::try_from(&cli.bench)
    }

    #[test]
    fn the_defaults_are_the_sqlite_matrix() {
        let options = options(&[]).expect("defaults are valid");
        assert_eq!(options.dbs, [Db::Sqlite]);
        assert_eq!(
            options.variants,
            [
                Variant::TwoPhase,
                Variant::Saga,
                Variant::SingleDb,
                Variant::Naive
            ]
        );
        assert_eq!(options.concurrency, [1, 16, 64, 256]);
        assert_eq!(options.workloads, [Workload::Uniform, Workload::Hot]);
        assert_eq!(options.seconds, SECONDS_DEFAULT);
        assert!(options.log_bench && !options.overload && !options.json);
    }

    #[test]
    fn postgres_adds_its_native_two_phase_commit() {
        let options = options(&["--db", "both"]).expect("valid");
        assert_eq!(options.dbs, [Db::Sqlite, Db::Postgres]);
        assert_eq!(options.variants.len(), 5);
        assert!(Variant::PgNative.runs_on(Db::Postgres));
        assert!(!Variant::PgNative.runs_on(Db::Sqlite));
    }

    #[test]
    fn lists_parse_in_order() {
        let options = options(&[
            "--variants",
            "d,a",
            "--concurrency",
            "64, 1",
            "--workload",
            "hot",
            "--seconds",
            "10",
            "--json",
        ])
        .expect("valid");
        assert_eq!(options.variants, [Variant::Naive, Variant::TwoPhase]);
        assert_eq!(options.concurrency, [64, 1]);
        assert_eq!(options.workloads, [Workload::Hot]);
        assert_eq!(options.seconds, 10);
        assert!(options.json);
    }

    #[test]
    fn bad_flags_are_refused_with_what_to_fix() {
        let cases: &[(&[&str], &str)] = &[
            (&["--variants", "a,x"], "unknown variant \"x\""),
            (&["--variants", "ab"], "unknown variant \"ab\""),
            (&["--variants", "a,a"], "a is listed twice"),
            (&["--variants", "a,,b"], "an item is empty"),
            (&["--variants", "e"], "needs --db postgres"),
            (
                &["--variants", "a,e", "--db", "sqlite"],
                "needs --db postgres",
            ),
            (&["--concurrency", "0"], "0 clients"),
            (&["--concurrency", "1,-4"], "is not a number"),
            (&["--concurrency", "5000"], "give 1..=4096"),
            (&["--concurrency", ""], "an item is empty"),
            (&["--workload", "warm"], "unknown workload \"warm\""),
            (&["--db", "mysql"], "use sqlite, postgres or both"),
            (&["--seconds", "0"], "give 1..=3600"),
            (&["--overload", "--variants", "b"], "drop --variants"),
            (&["--overload", "--workload", "hot"], "drop --workload"),
        ];
        for (flags, expected) in cases {
            let error = options(flags).expect_err(expected);
            assert!(error.contains(expected), "{flags:?}: {error}");
        }
        assert!(options(&["--seconds", "-1"]).is_err(), "clap refuses it");
    }

    #[test]
    fn overload_books_two_phase_uniform_without_the_log_bench() {
        let options = options(&["--overload", "--db", "postgres"]).expect("valid");
        assert_eq!(options.variants, [Variant::TwoPhase]);
        assert_eq!(options.workloads, [Workload::Uniform]);
        assert!(options.overload && !options.log_bench);
    }
}
