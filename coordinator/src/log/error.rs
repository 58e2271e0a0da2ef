//! The one error type of the decision log. `Poisoned` and `Closed` mean the
//! log is unusable until the process restarts and replays; the rest are about
//! one record, one file or one open.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file-system call failed. `context` is the action, e.g.
    /// "fsync segment 0000000000000003.seg".
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A bad frame or header that is not a torn tail.
    #[error("corrupt decision log segment {} at byte offset {offset}: {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A segment header or a record written by a newer format version.
    #[error(
        "decision log segment {} at byte offset {offset} has format version {version}, this build reads up to {}",
        segment.display(),
        super::FORMAT_VERSION
    )]
    UnsupportedVersion {
        segment: PathBuf,
        offset: u64,
        version: u32,
    },
    /// `append` refused a record whose encoding exceeds the record cap.
    #[error("decision log record of {bytes} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { bytes: usize, max: usize },
    /// `append` refused a record stamped with a format version this build
    /// could not read back.
    #[error(
        "decision log record has format version {version}, this build writes up to {}",
        super::FORMAT_VERSION
    )]
    RecordVersionUnsupported { version: u32 },
    /// An earlier write or fsync failed; the log refuses all further writes.
    #[error("decision log is poisoned by an earlier failed write or fsync; restart to replay")]
    Poisoned,
    /// The writer has stopped (shutdown, or it died).
    #[error("decision log is closed")]
    Closed,
}

impl LogError {
    /// Maps an `io::Error` to `LogError::Io` with `context`, for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogError {
        let context = context.into();
        move |source| LogError::Io { context, source }
    }
}
