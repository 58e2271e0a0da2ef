//! The flags of `coordinator inspect`, parsed by clap in the binary and
//! handed to [`super::run`] as they are.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::model::StateFilter;

/// `coordinator inspect (--config FILE | --log-dir DIR) <subcommand> [--json]`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// coordinator.toml: where the log is, and the addresses `show --live` asks.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The decision log directory (instead of the config's `log_dir`).
    #[arg(long, global = true, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// One JSON object per line instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: InspectCommand,
}

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// One row per transaction: state, outcome, mode, age, shards, legs, key.
    List(ListArgs),
    /// One transaction's timeline, derived state and what recovery would do.
    Show(ShowArgs),
    /// Print records as they are appended, like `tail -f`.
    Follow(FollowArgs),
    /// Segments, records by kind, transactions by state, oldest open ones, tail.
    Stats,
    /// Check every frame of every segment. Exit 0 clean, 2 torn tail, 3 corrupt.
    Verify,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// in_progress, in_doubt, committed, aborted, ended (all three ended
    /// states), open (in_progress + in_doubt). Repeat or separate by commas.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STATE")]
    pub state: Vec<StateFilter>,
    /// Only transactions begun longer ago than this, e.g. 30s, 5m, 1h30m.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub older_than: Option<Duration>,
    /// Only transactions with a leg on this flight.
    #[arg(long, value_name = "FLIGHT_ID")]
    pub flight: Option<String>,
    /// Only transactions touching this shard (by name, e.g. s1).
    #[arg(long, value_name = "SHARD")]
    pub shard: Option<String>,
    /// At most this many rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Newest first (the default is oldest first).
    #[arg(long)]
    pub newest_first: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A txid (UUID) or an idempotency key.
    #[arg(value_name = "TXID_OR_KEY")]
    pub txid_or_key: String,
    /// Also ask the running coordinator and each shard of the transaction
    /// for their own state of it (needs --config).
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, Args)]
pub struct FollowArgs {
    /// Print every record from the start of the log first.
    #[arg(long)]
    pub from_start: bool,
    /// Exit after printing this many records.
    #[arg(long, value_name = "N")]
    pub exit_after: Option<u64>,
    /// How often to look for new records.
    #[arg(long, default_value = "200ms", value_parser = parse_duration, value_name = "DURATION")]
    pub poll_interval: Duration,
}

/// A duration like `30s`, `5m`, `1h30m`, `250ms`, with a hint when not.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error}; write a duration like 30s, 5m, 1h30m or 250ms"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        inspect: InspectArgs,
    }

    #[test]
    fn states_repeat_or_split_on_commas_and_json_goes_anywhere() {
        let cli = Cli::try_parse_from([
            "x",
            "--log-dir",
            "/l",
            "list",
            "--state",
            "open,committed",
            "--state",
            "ended",
            "--older-than",
            "1m30s",
            "--json",
        ])
        .expect("parse");
        assert!(cli.inspect.json);
        let InspectCommand::List(list) = cli.inspect.command else {
            panic!("list")
        };
        assert_eq!(
            list.state,
            [
                StateFilter::Open,
                StateFilter::Committed,
                StateFilter::Ended
            ]
        );
        assert_eq!(list.older_than, Some(Duration::from_secs(90)));
    }

    #[test]
    fn a_malformed_duration_says_how_to_write_one() {
        let error = Cli::try_parse_from(["x", "list", "--older-than", "soon"]).unwrap_err();
        assert!(
            error.to_string().contains("write a duration like 30s"),
            "{error}"
        );
    }
}
