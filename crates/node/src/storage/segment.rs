//! The on-disk record format of log segments.
//!
//! A record is `len: u32 LE | crc32(len bytes ++ payload): u32 LE | payload`. A segment is a
//! sequence of records of consecutive log indexes; its file is named after the index of its
//! first record. The newest segment is zero-filled ahead of its end (so an fsync only has to
//! write data, not a new file size); an all-zero header never checks out, because the CRC
//! covers the length too, so reading stops where the records end. A crash can leave a torn
//! record only at the very end of the newest segment; reading stops there too.

use std::io;
use std::path::{Path, PathBuf};

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 8;
/// Largest payload a record may carry; anything larger in a header means corruption.
pub const RECORD_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Appends one record holding `payload` to `buf`.
pub fn encode_record(payload: &[u8], buf: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(len, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn checksum(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Whether every byte is zero (the preallocated, never written part of a segment).
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// A record read back from a segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Byte offset of the record's header in the segment.
    pub offset: u64,
    /// The payload.
    pub payload: &'a [u8],
}

/// The records of a segment's bytes, and where the valid prefix ends.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// Every complete, checksum-valid record, in order.
    pub records: Vec<Record<'a>>,
    /// Length of the valid prefix; anything after it is a torn or corrupt tail.
    pub valid_len: u64,
}

/// Splits a segment's bytes into records, stopping at the first torn or corrupt one.
pub fn decode_records(bytes: &[u8]) -> Decoded<'_> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while let Some(header) = bytes.get(pos..pos + HEADER_BYTES) {
        let raw_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let len = raw_len as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > RECORD_MAX_BYTES {
            break;
        }
        let Some(payload) = bytes.get(pos + HEADER_BYTES..pos + HEADER_BYTES + len) else {
            break;
        };
        if checksum(raw_len, payload) != crc {
            break;
        }
        records.push(Record { offset: pos as u64, payload });
        pos += HEADER_BYTES + len;
    }
    Decoded { records, valid_len: pos as u64 }
}

/// The offset of the first checksum-valid record that starts after `from` in `bytes`, if
/// any. A bad record with a valid one after it is corruption of written data, not a torn
/// write (a crash tears only the end). Only offsets whose payload opens with one of
/// `first_bytes` (the record kinds the log writes) are checksummed, which keeps a scan of
/// garbage cheap.
pub fn valid_record_after(bytes: &[u8], from: usize, first_bytes: &[u8]) -> Option<u64> {
    (from + 1..bytes.len()).find_map(|pos| {
        let header = bytes.get(pos..pos + HEADER_BYTES)?;
        let raw_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let len = raw_len as usize;
        if len == 0 || len > RECORD_MAX_BYTES {
            return None;
        }
        let payload = bytes.get(pos + HEADER_BYTES..pos + HEADER_BYTES + len)?;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        (first_bytes.contains(&payload[0]) && checksum(raw_len, payload) == crc).then_some(pos as u64)
    })
}

/// File name of the segment whose first record has log index `first_index`.
pub fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.seg"))
}

/// The segments in `dir`, as `(first index, path)` sorted by first index.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for p in payloads {
            encode_record(p, &mut buf);
        }
        buf
    }

    #[test]
    fn round_trip() {
        let buf = encode_all(&[b"one", b"", b"three"]);
        let decoded = decode_records(&buf);
        let payloads: Vec<&[u8]> = decoded.records.iter().map(|r| r.payload).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(decoded.valid_len, buf.len() as u64);
        assert_eq!(decoded.records[1].offset, (HEADER_BYTES + 3) as u64);
    }

    #[test]
    fn torn_tail_is_cut_at_every_length() {
        let buf = encode_all(&[b"first", b"second"]);
        let first_len = (HEADER_BYTES + 5) as u64;
        for cut in 0..buf.len() {
            let decoded = decode_records(&buf[..cut]);
            let expect = if cut as u64 >= first_len { 1 } else { 0 };
            assert_eq!(decoded.records.len(), expect, "cut at {cut}");
            assert_eq!(decoded.valid_len, if expect == 1 { first_len } else { 0 });
        }
    }

    #[test]
    fn zero_fill_after_the_records_ends_decoding() {
        let mut buf = encode_all(&[b"a", b"bc"]);
        let end = buf.len() as u64;
        buf.extend_from_slice(&[0u8; 4096]);
        let decoded = decode_records(&buf);
        assert_eq!(decoded.records.len(), 2);
        assert_eq!(decoded.valid_len, end);
        assert!(is_zero(&buf[end as usize..]));
    }

    #[test]
    fn flipped_bit_stops_decoding() {
        let mut buf = encode_all(&[b"first", b"second"]);
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        let decoded = decode_records(&buf);
        assert_eq!(decoded.records.len(), 1);
    }
}
