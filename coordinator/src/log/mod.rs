//! The decision log: the coordinator's only durable state (DESIGN.md, "The
//! decision log"). It owns the segment files in one directory, frames and
//! checks every record, batches appends into one write and one fsync (group
//! commit), and on start replays the segments and cuts a torn tail. It knows
//! nothing of transactions: what a record means, which kinds must be forced
//! and what recovery does with them are left to the coordinator. Retention
//! is split the same way: the coordinator (`crate::retention`) decides which
//! closed segments hold nothing recovery needs, and
//! [`DecisionLog::remove_segments_through`] deletes them.
//!
//! # On disk
//! Segment files `{seq:016}.seg` in one directory, `seq` from 1, read in
//! `seq` order. Each segment starts with an 8-byte header, `b"BKLG"` + u32 LE
//! format version (1), followed by record frames:
//!
//! ```text
//! | u32 LE payload length | u32 LE CRC32C(payload) | payload: LogRecord (protobuf) |
//! ```
//!
//! A payload is 1 ..= [`RECORD_BYTES_MAX`] bytes. `LogRecord.format_version`
//! is stamped with [`FORMAT_VERSION`] by [`DecisionLog::append`]; a reader
//! refuses a record with a higher version ([`LogError::UnsupportedVersion`]).
//! A record is checked before it is written (size; in debug builds that it
//! decodes) and after it is read (length, CRC, decode, version).
//!
//! # Write order (numbered again beside the code in `writer.rs`, `segment.rs`)
//! 1. `append` encodes and frames the record on the caller's task and queues
//!    it to the one writer thread. A [`Durability::Written`] record is
//!    written by `append` itself instead (step 2 for a batch of one, on the
//!    caller's task) when the writer is between batches: the end of the
//!    file sits behind a lock that the writer holds for each batch's write
//!    and fsync, and with group commit off every record goes to the writer.
//! 2. The writer takes every queued record (up to a batch cap) and writes
//!    them with one `write` into the current segment. If the next frame
//!    would make the segment exceed `segment_bytes_max`, it first writes what
//!    it has, fsyncs the old segment (everything before the switch is then
//!    durable) and creates the next segment.
//! 3. If any record of the batch asked for [`Durability::Forced`] (or
//!    `group_commit` is off), one fsync (`fdatasync`) of the segment.
//! 4. Creating a segment: write the header, fsync the file, fsync the
//!    directory, before any record goes into it.
//! 5. Wake the waiters of the batch with their [`Position`]s.
//!
//! # The durability contract
//! - `append(.., Forced)` resolves `Ok(position)` only after that record and
//!   every record appended before it are fsynced. Such a record survives any
//!   crash of the process or the machine.
//! - `append(.., Written)` resolves once the record is handed to the kernel
//!   (write(2) done, no fsync; if its batch holds a Forced record, after that
//!   batch's fsync). It survives a crash of the process but not of
//!   the machine, until a later Forced append (or a rotation, or a clean
//!   [`DecisionLog::shutdown`]) fsyncs it. Records become durable in append
//!   order: if record N is durable, so is every record before N.
//! - An error means the record may or may not be on disk. A failed write or
//!   fsync poisons the log: that batch and every later append get
//!   [`LogError::Poisoned`], and no fsync is ever retried (after a failed
//!   fsync the kernel may have dropped the dirty pages; a retry that succeeds
//!   proves nothing). The process must restart and replay.
//! - Dropping an `append` future does not cancel the append.
//! - [`DecisionLog::open`] fsyncs the last segment before returning, so every
//!   record it returns is durable, even ones a crashed process had only
//!   written.
//! - One process at a time may open a directory; this is not checked.
//!
//! # Replay: torn tail or corruption
//! Segments are read in `seq` order, frames from offset 8. A frame is bad if
//! its length field does not fit in the file, its length is 0 or above
//! [`RECORD_BYTES_MAX`], the frame runs past the end of the file, the CRC
//! does not match, the payload does not decode, or its format version is 0.
//! The bad frame "ends" at `offset + 8 + length`; at the end of the file if
//! its length field is cut; at `offset + 8` if its length is 0 or above the
//! cap (the writer never writes such a length, so it says nothing about where
//! the frame ends). At the first bad frame:
//!
//! | where               | after where the bad frame ends             | verdict               |
//! |---------------------|--------------------------------------------|-----------------------|
//! | last segment        | nothing: it reaches EOF (`offset + 8 + length >= file length`, or the length field is cut) | torn tail |
//! | last segment        | only zero bytes up to EOF                  | torn tail (a crash can leave zero-filled blocks past the last write) |
//! | last segment        | any other byte                             | [`LogError::Corrupt`] |
//! | any earlier segment | anything                                   | [`LogError::Corrupt`] |
//!
//! So a mid-segment length field flipped to garbage (above the cap) is
//! corruption, not a tail to cut. A known limit: a length flipped to a value
//! under the cap that points past the end of the last segment looks exactly
//! like a torn write, and is cut.
//!
//! A segment header: shorter than 8 bytes in the last segment is torn (the
//! crash hit segment creation); anywhere else, or a wrong magic, is
//! [`LogError::Corrupt`]; a higher header version is
//! [`LogError::UnsupportedVersion`]. A valid record with a higher
//! `format_version` is always [`LogError::UnsupportedVersion`], never torn.
//!
//! A torn tail was never acknowledged as durable (a Forced record is fsynced
//! before its waiter wakes, and the fsync covers everything before it), so
//! [`DecisionLog::open`] cuts it: it truncates the segment to the bad frame's
//! offset (or rewrites a torn header) and fsyncs. [`scan`] only reports it in
//! [`Replayed::tail_cut`]. Corruption anywhere else is never cut silently:
//! the error names the segment path and the byte offset of the bad frame, and
//! no file is modified.
//!
//! # Failpoints
//! Compiled into every build and armed at process start with the `FAILPOINTS`
//! environment variable (the `fail` crate's syntax, as for
//! `crate::failpoints`); unarmed, each costs one registry lookup per batch
//! or per fsync.
//!
//! | name                          | what happens when it fires |
//! |-------------------------------|----------------------------|
//! | `coordinator::log_torn_write` | on a batch write: only the first half of the batch's first frame is written (always past its length and CRC, never all of it) and fsynced, so a torn record is really on disk; then, if the action's argument is a number, the writing thread (the writer's, or the appender's for a record it writes itself) sleeps that many milliseconds; then the process exits with status 137 as SIGKILL would. No waiter of the batch is woken. |
//! | `coordinator::log_fsync_fails`| on a writer fsync (a Forced batch, a rotation, the last fsync at shutdown; never when nothing is unsynced): the fsync returns an I/O error without syncing, which poisons the log as a real failure does. |
//!
//! Batch writes are counted per batch (a record `append` writes itself is a
//! batch of one), so the fail crate's counts pick one:
//! `FAILPOINTS="coordinator::log_torn_write=1*off->return(300)"` lets the
//! first batch through and tears the second. For one two-shard booking on
//! an idle coordinator the first batch is its BEGIN (Written, no fsync) and
//! the second its COMMIT or ABORT (Forced, the first fsync), so
//! `coordinator::log_fsync_fails=return` fails the decision's fsync.

mod bench;
mod decision_log;
mod error;
mod frame;
mod options;
mod scan;
mod segment;
mod stats;
mod tail;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use booking_proto::log_v1::{LogRecord, RecordKind};

pub use bench::bench_appends;
pub use decision_log::DecisionLog;
pub use error::LogError;
pub use options::LogOptions;
pub use scan::scan;
pub use stats::LogStats;
pub use tail::{
    check_segment, segment_file_name, segments, FrameDamage, LogTail, SegmentCheck, TailPoll,
    TailWait,
};

/// The record format version this code writes and the highest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Largest encoded `LogRecord`, in bytes. A record carries at most
/// `LEGS_MAX` legs and one reply, a few KiB; a length field above this is
/// garbage, not a record.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;

/// Where a record starts: segment `seq` and the byte offset of its frame.
/// Ordered as the log is: by segment, then by offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// What `append` waits for before it resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The record and every record before it are fsynced.
    Forced,
    /// The record is written to the file (write(2) done), not fsynced.
    Written,
}

/// What replay found: every good record in log order, and the torn tail if
/// there was one (cut by `open`, only reported by `scan`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replayed {
    pub records: Vec<(Position, LogRecord)>,
    pub tail_cut: Option<TailCut>,
}

/// A torn tail: the bytes of `segment` from `offset` to its end
/// (`bytes_cut` bytes). `offset` 0 means the segment header itself was torn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailCut {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes_cut: u64,
}
