//! How every binary of the system logs, so their lines read alike: to
//! stderr, the level from `RUST_LOG` (default given by the binary), the
//! format from `LOG_FORMAT`: `text` (default) or `json`, one JSON object per
//! line carrying the fields of the current span and its parents (e.g. the
//! `txid` of the booking or request being worked on).

use tracing_subscriber::EnvFilter;

/// A `LOG_FORMAT` value this code does not know.
#[derive(Debug, thiserror::Error)]
#[error("LOG_FORMAT={0:?}: use \"text\" (the default) or \"json\"")]
pub struct BadLogFormat(pub String);

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(default_level: &str) -> Result<(), BadLogFormat> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("LOG_FORMAT") {
        Err(std::env::VarError::NotPresent) => logs.init(),
        Ok(format) if format.is_empty() || format == "text" => logs.init(),
        Ok(format) if format == "json" => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        Ok(other) => return Err(BadLogFormat(other)),
        Err(std::env::VarError::NotUnicode(raw)) => {
            return Err(BadLogFormat(raw.to_string_lossy().into_owned()))
        }
    }
    Ok(())
}
