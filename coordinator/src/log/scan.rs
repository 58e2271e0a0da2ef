//! Replay: reads every segment in order and classifies the first bad frame
//! as a torn tail or corruption (the table in the module docs of `log`).
//! Never writes; `open` applies the cut, `scan` only reports it.

use std::fs;
use std::path::{Path, PathBuf};

use super::frame::{self, FrameRead};
use super::segment::{self, Header, HEADER_BYTES};
use super::{LogError, LogRecord, Position, Replayed, TailCut};

/// Read-only scan for inspection tools, safe while a writer appends: never
/// truncates; a bad frame at the tail of the last segment (for instance a
/// batch being written right now) is reported as `tail_cut`, not removed.
pub fn scan(dir: &Path) -> Result<Replayed, LogError> {
    replay(&segment::list(dir)?)
}

/// Replays `segments` (in `seq` order, from `segment::list`).
pub(crate) fn replay(segments: &[(u64, PathBuf)]) -> Result<Replayed, LogError> {
    let mut replayed = Replayed::default();
    for (index, (seq, path)) in segments.iter().enumerate() {
        let name = segment::file_name(*seq);
        let bytes = fs::read(path).map_err(LogError::io(format!("read segment {name}")))?;
        let segment = SegmentBytes {
            seq: *seq,
            path,
            bytes: &bytes,
            last: index + 1 == segments.len(),
        };
        replayed.tail_cut = segment.replay_into(&mut replayed.records)?;
    }
    Ok(replayed)
}

/// One segment's bytes and where it stands in the log.
struct SegmentBytes<'a> {
    seq: u64,
    path: &'a Path,
    bytes: &'a [u8],
    last: bool,
}

impl SegmentBytes<'_> {
    /// Appends the segment's good records; returns the torn tail, if any.
    fn replay_into(
        &self,
        records: &mut Vec<(Position, LogRecord)>,
    ) -> Result<Option<TailCut>, LogError> {
        if let Some(cut) = self.check_header()? {
            return Ok(Some(cut));
        }
        let mut offset = HEADER_BYTES;
        while offset < self.len() {
            match frame::decode(self.bytes, offset as usize) {
                FrameRead::Record {
                    record,
                    frame_bytes,
                } => {
                    records.push((
                        Position {
                            segment: self.seq,
                            offset,
                        },
                        *record,
                    ));
                    offset += frame_bytes;
                }
                FrameRead::NewerVersion { version } => {
                    return Err(LogError::UnsupportedVersion {
                        segment: self.path.to_path_buf(),
                        offset,
                        version,
                    });
                }
                FrameRead::Bad { reason, frame_end } => {
                    return self.classify(offset, frame_end, reason).map(Some)
                }
            }
        }
        Ok(None)
    }

    /// Ok(None) for a valid header, Ok(Some(cut)) for a torn one.
    fn check_header(&self) -> Result<Option<TailCut>, LogError> {
        match segment::check_header(self.bytes) {
            Header::Valid => Ok(None),
            Header::Short if self.last => Ok(Some(self.cut_at(0))),
            Header::Short => Err(self.corrupt(
                0,
                "segment header cut short in a segment that is not the last",
            )),
            Header::Bad(reason) => Err(self.corrupt(0, reason)),
            Header::NewerVersion(version) => Err(LogError::UnsupportedVersion {
                segment: self.path.to_path_buf(),
                offset: 0,
                version,
            }),
        }
    }

    /// The verdict on the first bad frame: a torn tail only in the last
    /// segment, and only if nothing but zeros follows where it ends (nothing,
    /// when it reaches EOF).
    fn classify(&self, offset: u64, frame_end: u64, reason: String) -> Result<TailCut, LogError> {
        if !self.last {
            return Err(self.corrupt(
                offset,
                &format!("{reason}, in a segment that is not the last"),
            ));
        }
        if self.zeros_from(frame_end) {
            return Ok(self.cut_at(offset));
        }
        let after = self.len() - frame_end;
        Err(self.corrupt(offset, &format!("{reason}, followed by {after} more bytes")))
    }

    /// True when every byte from `offset` to EOF is zero (or none is left).
    fn zeros_from(&self, offset: u64) -> bool {
        let start = offset.min(self.len()) as usize;
        self.bytes[start..].iter().all(|&byte| byte == 0)
    }

    fn cut_at(&self, offset: u64) -> TailCut {
        TailCut {
            segment: self.path.to_path_buf(),
            offset,
            bytes_cut: self.len() - offset,
        }
    }

    fn corrupt(&self, offset: u64, reason: &str) -> LogError {
        LogError::Corrupt {
            segment: self.path.to_path_buf(),
            offset,
            reason: reason.to_string(),
        }
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}
