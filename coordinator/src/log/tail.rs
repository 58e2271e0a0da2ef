//! Reading the log from outside the writer, for `coordinator inspect`: the
//! incremental reader behind `inspect follow` ([`LogTail`]) and the
//! per-segment frame check behind `inspect verify` ([`check_segment`]).
//!
//! Nothing here opens a file for writing or changes one: a running
//! coordinator may append at the same moment. Both readers use the framing
//! of `frame.rs` and the torn-or-corrupt table of the module docs of `log`
//! ("Replay: torn tail or corruption"); `scan` stays the authority on what a
//! restart does, these only read.
//!
//! # Following a growing log
//! [`LogTail::poll`] reads only the bytes appended to the current segment
//! since the last poll and returns the records that became whole. A frame
//! cut by the end of the file is a record being written: it is kept and
//! completed by a later poll, never reported as damage. Rotation is followed
//! by the rule of the writer's step 2: it creates segment `seq + 1` only
//! after its last write to `seq`, so once `seq + 1` exists (checked *before*
//! reading `seq` to its end) nothing more arrives in `seq`. A segment that
//! shrinks had its torn tail cut by a restarted coordinator; reading goes on
//! from the cut.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{self, FrameRead};
use super::segment::{self, Header, HEADER_BYTES};
use super::{LogError, LogRecord, Position};

/// The segment files in `dir`, `(seq, path)` in `seq` order; other files
/// are ignored.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    segment::list(dir)
}

/// The file name of segment `seq`: `{seq:016}.seg`.
pub fn segment_file_name(seq: u64) -> String {
    segment::file_name(seq)
}

/// What [`check_segment`] found in one segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentCheck {
    /// Whole, valid records before the first bad frame (or in the segment).
    pub records: u64,
    /// The first bad frame or header; nothing after it can be read.
    pub damage: Option<FrameDamage>,
}

/// A bad frame (or header, at offset 0) and the verdict on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameDamage {
    pub offset: u64,
    pub reason: String,
    /// True for a torn tail, which a restart cuts; false for damage that
    /// stops the coordinator from starting (corruption, a newer format).
    pub torn: bool,
    /// Bytes from the bad frame's offset to the end of the segment.
    pub bytes_from_offset: u64,
}

/// Checks every frame of one segment (`bytes`, the whole file) and stops at
/// the first bad one. `last` says whether it is the log's last segment, the
/// only place a torn tail can be.
pub fn check_segment(bytes: &[u8], last: bool) -> SegmentCheck {
    let len = bytes.len() as u64;
    let damage = |offset: u64, reason: String, torn: bool| FrameDamage {
        offset,
        reason,
        torn,
        bytes_from_offset: len - offset.min(len),
    };
    let header = match segment::check_header(bytes) {
        Header::Valid => None,
        Header::Short if last => Some(damage(0, "segment header cut short".into(), true)),
        Header::Short => Some(damage(
            0,
            "segment header cut short in a segment that is not the last".into(),
            false,
        )),
        Header::Bad(reason) => Some(damage(0, reason.into(), false)),
        Header::NewerVersion(version) => Some(damage(
            0,
            format!("segment header has format version {version}, newer than this build reads"),
            false,
        )),
    };
    if header.is_some() {
        return SegmentCheck {
            records: 0,
            damage: header,
        };
    }
    let mut check = SegmentCheck {
        records: 0,
        damage: None,
    };
    let mut offset = HEADER_BYTES;
    while offset < len {
        match frame::decode(bytes, offset as usize) {
            FrameRead::Record { frame_bytes, .. } => {
                check.records += 1;
                offset += frame_bytes;
            }
            FrameRead::NewerVersion { version } => {
                let reason = format!(
                    "record has format version {version}, this build reads up to {}",
                    super::FORMAT_VERSION
                );
                check.damage = Some(damage(offset, reason, false));
                break;
            }
            FrameRead::Bad { reason, frame_end } => {
                let torn = last && zeros_from(bytes, frame_end);
                let reason = if torn {
                    reason
                } else if !last {
                    format!("{reason}, in a segment that is not the last")
                } else {
                    let after = len - frame_end.min(len);
                    format!("{reason}, followed by {after} more bytes")
                };
                check.damage = Some(damage(offset, reason, torn));
                break;
            }
        }
    }
    check
}

/// True when every byte of `bytes` from `offset` on is zero (or none is left).
fn zeros_from(bytes: &[u8], offset: u64) -> bool {
    let start = offset.min(bytes.len() as u64) as usize;
    bytes[start..].iter().all(|&byte| byte == 0)
}

/// What one [`LogTail::poll`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TailPoll {
    /// Records that became whole since the last poll, in log order.
    pub records: Vec<(Position, LogRecord)>,
    /// Set when the tail ends in a frame that is not (yet) a record.
    pub waiting: Option<TailWait>,
}

/// The tail ends in an incomplete or bad frame: a record being written, or
/// a torn tail left by a crash that the next coordinator start cuts. Either
/// way the reader waits at `offset` and reads on when it completes or is cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailWait {
    pub segment: PathBuf,
    pub offset: u64,
    /// Bytes present from `offset` to the end of the segment.
    pub bytes: u64,
    pub reason: String,
}

/// Follows the log as it grows. See the module docs.
#[derive(Debug)]
pub struct LogTail {
    dir: PathBuf,
    /// The segment being read.
    seq: u64,
    /// Open once segment `seq` exists.
    file: Option<File>,
    /// Where the first unread byte of `seq` starts: 0 until its header is
    /// checked, then always the start of a frame.
    offset: u64,
    /// Bytes of `seq` from `offset` on, read but not yet a whole frame.
    /// Invariant: `offset + pending.len()` <= what the file held when read.
    pending: Vec<u8>,
}

impl LogTail {
    /// A reader that returns every record, from the first segment on.
    pub fn from_start(dir: &Path) -> Result<LogTail, LogError> {
        let first = segments(dir)?.first().map_or(1, |(seq, _)| *seq);
        Ok(LogTail::at(dir, first))
    }

    /// A reader that returns only records appended from now on: it reads
    /// the last segment once and starts after its last whole record (a
    /// record being written right now is returned once it completes).
    pub fn from_end(dir: &Path) -> Result<LogTail, LogError> {
        let Some((last, _)) = segments(dir)?.last().cloned() else {
            return Ok(LogTail::at(dir, 1));
        };
        let mut tail = LogTail::at(dir, last);
        tail.poll()?;
        Ok(tail)
    }

    fn at(dir: &Path, seq: u64) -> LogTail {
        LogTail {
            dir: dir.to_path_buf(),
            seq,
            file: None,
            offset: 0,
            pending: Vec::new(),
        }
    }

    /// Where the next record is expected: segment and byte offset (0 while
    /// the segment's header is not checked yet).
    pub fn position(&self) -> Position {
        Position {
            segment: self.seq,
            offset: self.offset,
        }
    }

    /// Reads what was appended since the last poll; see [`TailPoll`].
    /// Errors on damage that can never complete: a bad frame followed by
    /// other bytes, or an incomplete frame in a segment that is not the last.
    pub fn poll(&mut self) -> Result<TailPoll, LogError> {
        let mut poll = TailPoll::default();
        loop {
            // Checked before reading `seq` to its end: see the module docs.
            let next_exists = self.path_of(self.seq + 1).exists();
            if !self.open_current()? {
                return Ok(poll);
            }
            self.read_appended()?;
            let waiting = self.take_records(&mut poll.records)?;
            match (waiting, next_exists) {
                (None, true) => self.switch_to(self.seq + 1),
                (None, false) => return Ok(poll),
                (Some(wait), false) => {
                    poll.waiting = Some(wait);
                    return Ok(poll);
                }
                (Some(wait), true) => {
                    return Err(self.corrupt(
                        wait.offset,
                        format!("{}, in a segment that is not the last", wait.reason),
                    ))
                }
            }
        }
    }

    /// Opens segment `seq` if it is not open yet; false while it does not
    /// exist. A segment removed before it was opened (retention) is skipped
    /// for the next one that exists.
    fn open_current(&mut self) -> Result<bool, LogError> {
        if self.file.is_some() {
            return Ok(true);
        }
        let path = self.path_of(self.seq);
        match File::open(&path) {
            Ok(file) => {
                self.file = Some(file);
                Ok(true)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let later = segments(&self.dir)?
                    .into_iter()
                    .find(|(seq, _)| *seq > self.seq);
                match later {
                    Some((seq, _)) => {
                        self.switch_to(seq);
                        self.open_current()
                    }
                    None => Ok(false),
                }
            }
            Err(error) => Err(LogError::io(format!("open segment {}", path.display()))(
                error,
            )),
        }
    }

    /// Appends the segment's new bytes to `pending`; follows a cut tail.
    fn read_appended(&mut self) -> Result<(), LogError> {
        let name = segment_file_name(self.seq);
        let file = self.file.as_ref().expect("open_current opened the segment");
        let len = file
            .metadata()
            .map_err(LogError::io(format!("stat segment {name}")))?
            .len();
        let have = self.offset + self.pending.len() as u64;
        if len < have {
            // A restarted coordinator cut a torn tail (or rewrote a torn
            // header): drop what was cut, read on from there.
            if len >= self.offset {
                self.pending.truncate((len - self.offset) as usize);
            } else {
                self.offset = 0;
                self.pending.clear();
            }
            return Ok(());
        }
        let mut buffer = vec![0; (len - have) as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            let read = file
                .read_at(&mut buffer[filled..], have + filled as u64)
                .map_err(LogError::io(format!("read segment {name}")))?;
            if read == 0 {
                break; // Cut while reading; the next poll sees the new length.
            }
            filled += read;
        }
        self.pending.extend_from_slice(&buffer[..filled]);
        Ok(())
    }

    /// Moves every whole record out of `pending`; returns why the rest (if
    /// any) is not a record yet.
    fn take_records(
        &mut self,
        records: &mut Vec<(Position, LogRecord)>,
    ) -> Result<Option<TailWait>, LogError> {
        if self.offset == 0 {
            if let Some(wait) = self.take_header()? {
                return Ok(Some(wait));
            }
        }
        let mut used = 0usize;
        let mut waiting = None;
        while used < self.pending.len() {
            let offset = self.offset + used as u64;
            match frame::decode(&self.pending, used) {
                FrameRead::Record {
                    record,
                    frame_bytes,
                } => {
                    let position = Position {
                        segment: self.seq,
                        offset,
                    };
                    records.push((position, *record));
                    used += frame_bytes as usize;
                }
                FrameRead::NewerVersion { version } => {
                    return Err(LogError::UnsupportedVersion {
                        segment: self.path_of(self.seq),
                        offset,
                        version,
                    })
                }
                FrameRead::Bad { reason, frame_end } => {
                    if !zeros_from(&self.pending, frame_end) {
                        let after = self.pending.len() as u64 - frame_end;
                        return Err(self
                            .corrupt(offset, format!("{reason}, followed by {after} more bytes")));
                    }
                    waiting = Some(TailWait {
                        segment: self.path_of(self.seq),
                        offset,
                        bytes: (self.pending.len() - used) as u64,
                        reason,
                    });
                    break;
                }
            }
        }
        self.pending.drain(..used);
        self.offset += used as u64;
        Ok(waiting)
    }

    /// Checks the header once its 8 bytes are there; waits while they are not.
    fn take_header(&mut self) -> Result<Option<TailWait>, LogError> {
        match segment::check_header(&self.pending) {
            Header::Valid => {
                self.pending.drain(..HEADER_BYTES as usize);
                self.offset = HEADER_BYTES;
                Ok(None)
            }
            Header::Short => Ok(Some(TailWait {
                segment: self.path_of(self.seq),
                offset: 0,
                bytes: self.pending.len() as u64,
                reason: "segment header not written yet".into(),
            })),
            Header::Bad(reason) => Err(self.corrupt(0, reason.into())),
            Header::NewerVersion(version) => Err(LogError::UnsupportedVersion {
                segment: self.path_of(self.seq),
                offset: 0,
                version,
            }),
        }
    }

    fn switch_to(&mut self, seq: u64) {
        self.seq = seq;
        self.file = None;
        self.offset = 0;
        self.pending.clear();
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_file_name(seq))
    }

    fn corrupt(&self, offset: u64, reason: String) -> LogError {
        LogError::Corrupt {
            segment: self.path_of(self.seq),
            offset,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::super::{scan, RecordKind, FORMAT_VERSION};
    use super::*;

    fn record(n: u8) -> LogRecord {
        LogRecord {
            format_version: FORMAT_VERSION,
            kind: RecordKind::Begin as i32,
            txid: vec![n; 16],
            at_unix_ms: 1_760_000_000_000 + u64::from(n),
            idempotency_key: format!("key-{n}"),
            shards: vec!["s0".into(), "s1".into()],
            ..Default::default()
        }
    }

    fn framed(n: u8) -> Vec<u8> {
        frame::encode(&record(n)).expect("a small record encodes")
    }

    fn header() -> Vec<u8> {
        let mut header = b"BKLG".to_vec();
        header.extend_from_slice(&1u32.to_le_bytes());
        header
    }

    fn append(dir: &Path, seq: u64, bytes: &[u8]) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(segment_file_name(seq)))
            .expect("open segment");
        file.write_all(bytes).expect("append");
    }

    fn keys(poll: &TailPoll) -> Vec<String> {
        poll.records
            .iter()
            .map(|(_, r)| r.idempotency_key.clone())
            .collect()
    }

    #[test]
    fn follows_appends_and_waits_for_a_half_written_frame() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1, &[header(), framed(1)].concat());
        let mut tail = LogTail::from_end(dir.path()).unwrap();
        assert_eq!(
            tail.poll().unwrap(),
            TailPoll::default(),
            "starts at the end"
        );

        let second = framed(2);
        let (first_half, second_half) = second.split_at(second.len() / 2);
        append(dir.path(), 1, first_half);
        let poll = tail.poll().unwrap();
        assert!(poll.records.is_empty());
        let wait = poll.waiting.expect("a half frame is waited for");
        assert_eq!(wait.offset, HEADER_BYTES + framed(1).len() as u64);
        assert_eq!(wait.bytes, first_half.len() as u64);

        append(dir.path(), 1, second_half);
        let poll = tail.poll().unwrap();
        assert_eq!(keys(&poll), ["key-2"]);
        assert_eq!(poll.records[0].0.offset, wait.offset);
        assert_eq!(poll.waiting, None);
    }

    #[test]
    fn from_start_returns_everything_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1, &[header(), framed(1), framed(2)].concat());
        let mut tail = LogTail::from_start(dir.path()).unwrap();
        assert_eq!(keys(&tail.poll().unwrap()), ["key-1", "key-2"]);

        // The writer creates the next segment only after its last write to
        // this one; its header may not be there yet.
        append(dir.path(), 1, &framed(3));
        append(dir.path(), 2, b"BK");
        let poll = tail.poll().unwrap();
        assert_eq!(keys(&poll), ["key-3"]);
        assert_eq!(poll.waiting.map(|w| w.offset), Some(0));

        append(dir.path(), 2, &[&header()[2..], &framed(4)].concat());
        let poll = tail.poll().unwrap();
        assert_eq!(keys(&poll), ["key-4"]);
        assert_eq!(
            poll.records[0].0,
            Position {
                segment: 2,
                offset: HEADER_BYTES
            }
        );
    }

    #[test]
    fn a_cut_torn_tail_is_read_on_from_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(1));
        append(dir.path(), 1, &[header(), framed(1)].concat());
        let cut_at = std::fs::metadata(&path).unwrap().len();
        let torn = framed(2);
        append(dir.path(), 1, &torn[..torn.len() - 3]);
        let mut tail = LogTail::from_start(dir.path()).unwrap();
        let poll = tail.poll().unwrap();
        assert_eq!(keys(&poll), ["key-1"]);
        assert!(poll.waiting.is_some());

        // A restarted coordinator cuts the tail and appends new records.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut_at)
            .unwrap();
        assert_eq!(tail.poll().unwrap(), TailPoll::default());
        append(dir.path(), 1, &framed(3));
        let poll = tail.poll().unwrap();
        assert_eq!(keys(&poll), ["key-3"]);
        assert_eq!(poll.records[0].0.offset, cut_at);
    }

    #[test]
    fn a_bad_frame_followed_by_more_bytes_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = [header(), framed(1), framed(2)].concat();
        let victim = HEADER_BYTES as usize + 12;
        bytes[victim] ^= 0x40;
        append(dir.path(), 1, &bytes);
        let error = LogTail::from_start(dir.path())
            .unwrap()
            .poll()
            .expect_err("corrupt");
        let LogError::Corrupt { offset, .. } = error else {
            panic!("{error}")
        };
        assert_eq!(offset, HEADER_BYTES);
    }

    #[test]
    fn an_incomplete_frame_before_a_newer_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let torn = framed(1);
        append(dir.path(), 1, &[&header()[..], &torn[..10]].concat());
        append(dir.path(), 2, &[header(), framed(2)].concat());
        let error = LogTail::from_start(dir.path())
            .unwrap()
            .poll()
            .expect_err("never completes");
        assert!(error.to_string().contains("not the last"), "{error}");
    }

    /// Where the first bad frame is, and whether it is a torn tail.
    type Verdict = (u64, bool);

    #[test]
    fn check_segment_agrees_with_scan() {
        let whole = [header(), framed(1), framed(2)].concat();
        let second_at = HEADER_BYTES + framed(1).len() as u64;
        let mut flipped_first = whole.clone();
        flipped_first[HEADER_BYTES as usize + 12] ^= 0x40;
        let cases: Vec<(&str, Vec<u8>, Option<Verdict>)> = vec![
            ("clean", whole.clone(), None),
            (
                "torn",
                whole[..whole.len() - 4].to_vec(),
                Some((second_at, true)),
            ),
            (
                "zero-filled",
                [whole.clone(), vec![0; 100]].concat(),
                Some((whole.len() as u64, true)),
            ),
            ("flipped mid", flipped_first, Some((HEADER_BYTES, false))),
            ("short header", b"BKL".to_vec(), Some((0, true))),
        ];
        for (name, bytes, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            append(dir.path(), 1, &bytes);
            let check = check_segment(&bytes, true);
            let got = check.damage.as_ref().map(|d| (d.offset, d.torn));
            assert_eq!(got, expected, "{name}: {check:?}");
            match (scan(dir.path()), expected) {
                (Ok(replayed), None) => assert!(replayed.tail_cut.is_none(), "{name}"),
                (Ok(replayed), Some((offset, true))) => {
                    assert_eq!(replayed.tail_cut.map(|c| c.offset), Some(offset), "{name}")
                }
                (Err(LogError::Corrupt { offset, .. }), Some((at, false))) => {
                    assert_eq!(offset, at, "{name}")
                }
                (other, _) => panic!("{name}: scan says {other:?}"),
            }
        }
        let not_last = check_segment(&whole[..whole.len() - 4], false);
        assert!(!not_last.damage.expect("damaged").torn);
    }
}
