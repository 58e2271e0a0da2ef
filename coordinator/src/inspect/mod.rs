//! `coordinator inspect`: the operators' read-only view of the decision log
//! (DESIGN.md, "The decision log": list, filter by state or age, one
//! transaction's timeline across coordinator and shards, follow live, JSON).
//!
//! It owns nothing and writes nothing: segments are opened read-only (with
//! `log::scan`, `log::LogTail`, `log::check_segment`), so it is safe next to
//! a running coordinator; a record being written at the tail reads as a torn
//! tail (or, for `follow`, is waited for). What a transaction's records mean
//! and what a restart would do with it come from `recovery::histories` and
//! `protocol::recovery_case` (`model.rs` names them); `show --live` only
//! reads too (`GetTransaction`, `ListTxns`; never `Resolve`, which fences).
//!
//! | subcommand | reads                               | module      |
//! |------------|-------------------------------------|-------------|
//! | `list`     | every segment (`scan`)              | `list.rs`   |
//! | `show`     | every segment; with `--live` the coordinator and the transaction's shards | `show.rs`, `live.rs`, `diagnosis.rs` |
//! | `follow`   | the last segment, incrementally     | `follow.rs` |
//! | `stats`    | every segment (`scan`), file sizes  | `stats.rs`  |
//! | `verify`   | every frame of every segment        | `verify.rs` |
//!
//! Exit codes: 0 success; 1 an error (bad input, unreadable or damaged log,
//! unknown transaction), printed by the binary; `verify` alone returns 2 for
//! a torn tail and 3 for damage that stops the coordinator from starting.

mod args;
mod diagnosis;
mod follow;
mod list;
mod live;
pub mod model;
mod render;
mod show;
mod stats;
mod verify;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use args::{FollowArgs, InspectArgs, InspectCommand, ListArgs, ShowArgs};

use crate::config::{Config, ConfigError};
use crate::log::{scan, LogError, Replayed};
use model::{ModelError, TxnSummary};

/// Why an inspection could not be done. The binary prints it and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("give --log-dir DIR (the decision log directory) or --config FILE (coordinator.toml)")]
    NoSource,
    #[error("decision log directory {} does not exist or is not a directory; check --log-dir, or log_dir in the config", .0.display())]
    NoLogDir(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Damage the coordinator would refuse to start on, too.
    #[error("the decision log in {} is damaged: {error}. The coordinator refuses to start on it as well; `coordinator inspect verify` names every damaged segment", dir.display())]
    LogDamaged { dir: PathBuf, error: LogError },
    #[error("read the decision log in {}: {error}", dir.display())]
    LogRead { dir: PathBuf, error: LogError },
    #[error("the decision log in {}: {error}", dir.display())]
    Records { dir: PathBuf, error: ModelError },
    #[error(
        "{0:?} is not a valid txid: a txid is a UUID like 0190b2c4-7d1e-7c3a-9f00-000000000000"
    )]
    MalformedTxid(String),
    #[error("no transaction has txid or idempotency key {query:?} in the decision log in {} ({scanned} transactions there); ended transactions are removed once the retention window has passed", dir.display())]
    NotFound {
        query: String,
        dir: PathBuf,
        scanned: usize,
    },
    #[error("`show --live` needs --config FILE, for the coordinator's and the shards' addresses")]
    LiveNeedsConfig,
    #[error("write the output: {0}")]
    Output(#[from] io::Error),
}

/// How to print: JSON lines, a terminal table, or plain aligned text.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    pub json: bool,
    pub terminal: bool,
}

/// Runs one inspection, printing to stdout; notes go to stderr. Returns the
/// exit code (see the module docs).
pub async fn run(args: InspectArgs) -> Result<ExitCode, InspectError> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let dir = match (&args.log_dir, &config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => config.log_dir.clone(),
        (None, None) => return Err(InspectError::NoSource),
    };
    if !dir.is_dir() {
        return Err(InspectError::NoLogDir(dir));
    }
    let output = Output {
        json: args.json,
        terminal: io::stdout().is_terminal(),
    };
    let mut out = io::stdout();
    let result = match args.command {
        InspectCommand::List(list) => list::run(&load(&dir)?, &list, output, &mut out),
        InspectCommand::Show(show) => {
            show::run(&dir, &show, config.as_ref(), output, &mut out).await
        }
        InspectCommand::Follow(follow) => follow::run(&dir, &follow, output, &mut out).await,
        InspectCommand::Stats => stats::run(&dir, &load(&dir)?, output, &mut out),
        InspectCommand::Verify => return finish(verify::run(&dir, output, &mut out)),
    };
    finish(result.map(|()| ExitCode::SUCCESS))
}

/// A reader that went away (`inspect list | head`) is not an error.
fn finish(result: Result<ExitCode, InspectError>) -> Result<ExitCode, InspectError> {
    match result {
        Err(InspectError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

/// The log read once, and its transactions.
pub(crate) struct LoadedLog {
    pub dir: PathBuf,
    pub replayed: Replayed,
    pub txns: Vec<TxnSummary>,
}

/// Scans the log (read-only) and summarises its transactions. A torn tail
/// is noted on stderr; damage elsewhere is an error naming it.
pub(crate) fn load(dir: &Path) -> Result<LoadedLog, InspectError> {
    let replayed = scan_retrying(dir).map_err(|error| log_error(dir, error))?;
    let txns = model::summarize(&replayed, render::now_unix_ms()).map_err(|error| {
        InspectError::Records {
            dir: dir.to_path_buf(),
            error,
        }
    })?;
    Ok(LoadedLog {
        dir: dir.to_path_buf(),
        replayed,
        txns,
    })
}

/// Times to scan again when a listed segment vanished before it was read.
const SCAN_ATTEMPTS: usize = 3;

/// `scan`, again when retention removed a segment between listing the
/// directory and reading it (every transaction of such a segment ended, so
/// the next scan simply does not list it).
fn scan_retrying(dir: &Path) -> Result<Replayed, LogError> {
    let mut attempt = 1;
    loop {
        match scan(dir) {
            Err(LogError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempt < SCAN_ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

pub(crate) fn log_error(dir: &Path, error: LogError) -> InspectError {
    let dir = dir.to_path_buf();
    match error {
        LogError::Corrupt { .. } | LogError::UnsupportedVersion { .. } => {
            InspectError::LogDamaged { dir, error }
        }
        error => InspectError::LogRead { dir, error },
    }
}

/// The stderr note for a torn tail, which `list` and `show` still read past.
pub(crate) fn note_torn_tail(log: &LoadedLog) {
    if let Some(cut) = &log.replayed.tail_cut {
        let mut err = io::stderr();
        let _ = writeln!(
            err,
            "note: {} ends in {} bytes at offset {} that are not a whole record (a torn tail, or a record being written); they are left out, and a coordinator restart cuts them",
            cut.segment.display(),
            cut.bytes_cut,
            cut.offset
        );
    }
}
