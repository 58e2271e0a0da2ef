//! One segment file `{seq:016}.seg`: its name, its 8-byte header (`b"BKLG"`
//! then the u32 LE version), creating it durably, appending to it, and the two
//! repairs `open` makes to a torn tail. Framing is `frame.rs`'s business.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LogError, TailCut};

/// Size of the segment header.
pub(crate) const HEADER_BYTES: u64 = 8;
const MAGIC: [u8; 4] = *b"BKLG";
/// Version of the segment layout (header + frames).
pub(crate) const SEGMENT_FORMAT_VERSION: u32 = 1;

/// What the first bytes of a segment say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    Valid,
    /// Fewer than 8 bytes.
    Short,
    /// Eight bytes that are not a header of any version.
    Bad(&'static str),
    NewerVersion(u32),
}

/// An open segment that the writer appends to.
#[derive(Debug)]
pub(crate) struct Segment {
    seq: u64,
    name: String,
    file: File,
    /// Bytes in the file, header included: where the next frame goes.
    len: u64,
}

impl Segment {
    /// Creates segment `seq` durably before any record goes into it:
    /// (4a) create the file and write the header, (4b) fsync the file,
    /// (4c) fsync the directory so the new name survives a crash.
    pub fn create(dir: &Path, seq: u64) -> Result<Segment, LogError> {
        let name = file_name(seq);
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(dir.join(&name))
            .map_err(LogError::io(format!("create segment {name}")))?;
        file.write_all(&header_bytes())
            .map_err(LogError::io(format!("write header of segment {name}")))?;
        file.sync_all()
            .map_err(LogError::io(format!("fsync segment {name}")))?;
        fsync_dir(dir)?;
        tracing::debug!(segment = %name, "decision log segment created");
        Ok(Segment {
            seq,
            name,
            file,
            len: HEADER_BYTES,
        })
    }

    /// Opens an existing, replayed (and repaired) segment to append at its
    /// end, and fsyncs it so everything replay returned is durable.
    pub fn open_append(dir: &Path, seq: u64) -> Result<Segment, LogError> {
        let name = file_name(seq);
        let file = OpenOptions::new()
            .append(true)
            .open(dir.join(&name))
            .map_err(LogError::io(format!("open segment {name} for append")))?;
        let len = file
            .metadata()
            .map_err(LogError::io(format!("stat segment {name}")))?
            .len();
        assert!(
            len >= HEADER_BYTES,
            "replay repairs a torn header before the writer opens the segment"
        );
        file.sync_data()
            .map_err(LogError::io(format!("fsync segment {name}")))?;
        Ok(Segment {
            seq,
            name,
            file,
            len,
        })
    }

    /// (2) One write(2) of a batch's frames (write_all loops only on short
    /// writes). On error the file may hold part of them: a torn tail.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        self.file
            .write_all(bytes)
            .map_err(LogError::io(format!("write to segment {}", self.name)))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// (3) fdatasync: the data and the file size, which is all a reader needs.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(LogError::io(format!("fsync segment {}", self.name)))
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

/// Removes a torn tail found by replay: truncate to the bad frame and fsync,
/// or, for a torn header, rewrite the header (then fsync file and directory).
pub(crate) fn cut_tail(dir: &Path, cut: &TailCut) -> Result<(), LogError> {
    let name = cut
        .segment
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut file = OpenOptions::new()
        .write(true)
        .open(&cut.segment)
        .map_err(LogError::io(format!(
            "open segment {name} to cut its torn tail"
        )))?;
    let keep = if cut.offset < HEADER_BYTES {
        0
    } else {
        cut.offset
    };
    file.set_len(keep)
        .map_err(LogError::io(format!("truncate segment {name}")))?;
    if keep == 0 {
        file.write_all(&header_bytes())
            .map_err(LogError::io(format!("rewrite header of segment {name}")))?;
    }
    file.sync_all()
        .map_err(LogError::io(format!("fsync segment {name}")))?;
    if keep == 0 {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// The segments in `dir`, in `seq` order. Other files are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let context = || format!("list decision log directory {}", dir.display());
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(LogError::io(context()))? {
        let entry = entry.map_err(LogError::io(context()))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_file_name) {
            segments.push((seq, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

pub(crate) fn check_header(bytes: &[u8]) -> Header {
    let Some(header) = bytes.get(..HEADER_BYTES as usize) else {
        return Header::Short;
    };
    if header[..4] != MAGIC {
        return Header::Bad("segment header has the wrong magic");
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    match version {
        SEGMENT_FORMAT_VERSION => Header::Valid,
        version if version > SEGMENT_FORMAT_VERSION => Header::NewerVersion(version),
        _ => Header::Bad("segment header has format version 0"),
    }
}

pub(crate) fn file_name(seq: u64) -> String {
    format!("{seq:016}.seg")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn header_bytes() -> [u8; HEADER_BYTES as usize] {
    let mut header = [0; HEADER_BYTES as usize];
    header[..4].copy_from_slice(&MAGIC);
    header[4..].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header
}

/// fsyncs a directory so that names created (or removed) in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogError::io(format!("fsync directory {}", dir.display())))
}
