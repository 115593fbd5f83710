//! The records of the node's shared log: the payload head (kind and group) that every
//! record of `super::wal` carries inside the segment frame, and the tagged change its
//! writer receives.

use super::segment::encode_record;
use super::writer::WriteOp;
use crate::types::GroupId;

/// Kind of a record holding a log entry (JSON).
pub const ENTRY: u8 = b'E';
/// Kind of a record removing a group's entries from an index on (u64 LE).
pub const TRUNCATE: u8 = b'T';
/// Kind of a record holding a group's last purged log id (JSON).
pub const PURGE: u8 = b'P';
/// Kind of a record holding a group's vote (JSON).
pub const VOTE: u8 = b'V';
/// Kind of a record holding a group's commit index hint (JSON).
pub const COMMITTED: u8 = b'C';
/// Kind of the record that opens every segment: the log format's version (u32 LE). Segments
/// written before it existed open with another kind and are version 1.
pub const FORMAT: u8 = b'F';
/// The log format version this binary writes and reads.
pub const LOG_FORMAT_VERSION: u32 = 1;
/// Every kind, for telling a record from garbage when scanning damage.
pub const KINDS: &[u8] = &[ENTRY, TRUNCATE, PURGE, VOTE, COMMITTED, FORMAT];
/// Bytes of a payload before its body.
pub const PAYLOAD_HEAD_BYTES: usize = 9;

/// Appends the record of `kind` for `group` with `body` to `buf`.
pub fn frame(kind: u8, group: GroupId, body: &[u8], buf: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(PAYLOAD_HEAD_BYTES + body.len());
    payload.push(kind);
    payload.extend_from_slice(&group.to_le_bytes());
    payload.extend_from_slice(body);
    encode_record(&payload, buf);
}

/// Appends the record that opens a segment, naming the format version.
pub fn frame_format(buf: &mut Vec<u8>) {
    frame(FORMAT, 0, &LOG_FORMAT_VERSION.to_le_bytes(), buf);
}

/// The format version a segment declares in its first record, if it opens with one.
pub fn declared_version(first_payload: &[u8]) -> Option<Result<u32, String>> {
    if first_payload.first() != Some(&FORMAT) {
        return None;
    }
    let body = first_payload.get(PAYLOAD_HEAD_BYTES..)?;
    Some(
        body.try_into()
            .map(u32::from_le_bytes)
            .map_err(|_| format!("a format record of {} bytes, not 4", body.len())),
    )
}

/// A change of one group's log, as the writer receives it.
pub struct Tagged {
    /// The group.
    pub group: GroupId,
    /// The change.
    pub op: WriteOp,
}
