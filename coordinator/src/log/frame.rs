//! One record frame: `u32 LE length | u32 LE CRC32C(payload) | payload`,
//! the payload a protobuf `LogRecord`. Encoding checks the record before it
//! is written; decoding checks it after it is read and says why a frame is
//! bad, leaving the torn-or-corrupt verdict to `scan.rs`.

use prost::Message;

use super::{LogError, LogRecord, FORMAT_VERSION, RECORD_BYTES_MAX};

/// Bytes before the payload: length and CRC.
pub(crate) const FRAME_HEADER_BYTES: usize = 8;

/// What is at one offset of a segment.
#[derive(Debug)]
pub(crate) enum FrameRead {
    /// A good record; the next frame starts `frame_bytes` further on.
    Record {
        record: Box<LogRecord>,
        frame_bytes: u64,
    },
    /// A good frame holding a record of a newer format version.
    NewerVersion { version: u32 },
    /// A bad frame. `frame_end` is where it claims to end (offset + 8 +
    /// length); the end of the buffer when its length field is cut; the end
    /// of its 8-byte header when its length is 0 or above the cap.
    Bad { reason: String, frame_end: u64 },
}

/// Frames `record` (already stamped with its version) for writing.
pub(crate) fn encode(record: &LogRecord) -> Result<Vec<u8>, LogError> {
    let payload_bytes = record.encoded_len();
    if payload_bytes > RECORD_BYTES_MAX {
        return Err(LogError::RecordTooLarge {
            bytes: payload_bytes,
            max: RECORD_BYTES_MAX,
        });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload_bytes);
    frame.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    record
        .encode(&mut frame)
        .expect("a Vec grows as needed, so encoding cannot run out of space");
    let payload = &frame[FRAME_HEADER_BYTES..];
    let length = u32::try_from(payload.len()).expect("payload is at most RECORD_BYTES_MAX");
    let crc = crc32c::crc32c(payload);
    debug_assert!(
        LogRecord::decode(payload).as_ref() == Ok(record),
        "a record must decode to itself before it is written"
    );
    frame[0..4].copy_from_slice(&length.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// Reads the frame at `offset` of `segment` (the whole file's bytes).
/// `offset` must be below `segment.len()`.
pub(crate) fn decode(segment: &[u8], offset: usize) -> FrameRead {
    debug_assert!(offset < segment.len());
    let rest = &segment[offset..];
    let Some((length, crc)) = read_header(rest) else {
        return bad(
            format!("frame header cut after {} of 8 bytes", rest.len()),
            segment.len() as u64,
        );
    };
    let header_end = (offset + FRAME_HEADER_BYTES) as u64;
    if length == 0 || length as usize > RECORD_BYTES_MAX {
        // Our writer never writes such a length, so where this frame would
        // end means nothing: only its header is known to be bad.
        return bad(
            format!("payload length {length} outside 1..={RECORD_BYTES_MAX}"),
            header_end,
        );
    }
    let frame_end = header_end + u64::from(length);
    let Some(payload) = rest.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length as usize) else {
        return bad(
            format!("payload of {length} bytes runs past the end of the file"),
            frame_end,
        );
    };
    let actual = crc32c::crc32c(payload);
    if actual != crc {
        return bad(
            format!("CRC32C mismatch: stored {crc:#010x}, computed {actual:#010x}"),
            frame_end,
        );
    }
    decode_payload(payload, frame_end)
}

/// The checks after the CRC: the payload decodes and carries a version.
fn decode_payload(payload: &[u8], frame_end: u64) -> FrameRead {
    let record = match LogRecord::decode(payload) {
        Ok(record) => record,
        Err(error) => {
            return bad(
                format!("payload does not decode as LogRecord: {error}"),
                frame_end,
            )
        }
    };
    match record.format_version {
        0 => bad(
            "record has format version 0 (never written by append)".to_string(),
            frame_end,
        ),
        version if version > FORMAT_VERSION => FrameRead::NewerVersion { version },
        _ => FrameRead::Record {
            record: Box::new(record),
            frame_bytes: (FRAME_HEADER_BYTES + payload.len()) as u64,
        },
    }
}

/// Length and CRC, or None when fewer than 8 bytes remain.
fn read_header(bytes: &[u8]) -> Option<(u32, u32)> {
    let length = bytes.get(0..4)?.try_into().ok()?;
    let crc = bytes.get(4..8)?.try_into().ok()?;
    Some((u32::from_le_bytes(length), u32::from_le_bytes(crc)))
}

fn bad(reason: String, frame_end: u64) -> FrameRead {
    FrameRead::Bad { reason, frame_end }
}
