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
/// Every kind, for telling a record from garbage when scanning damage.
pub const KINDS: &[u8] = &[ENTRY, TRUNCATE, PURGE, VOTE, COMMITTED];
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

/// A change of one group's log, as the writer receives it.
pub struct Tagged {
    /// The group.
    pub group: GroupId,
    /// The change.
    pub op: WriteOp,
}
