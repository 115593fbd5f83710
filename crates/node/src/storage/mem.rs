//! [`MemLog`]: a group's log as held in memory, and the checks every backend's recovery
//! applies to it.

use std::collections::BTreeMap;
use std::io;

use openraft::Vote;

use crate::types::{Entry, LogId, NodeId};

/// The in-memory view of a log, as recovered from a backend at start-up.
#[derive(Default)]
pub struct MemLog {
    /// Unpurged entries by index.
    pub entries: BTreeMap<u64, Entry>,
    /// Last purged log id.
    pub last_purged: Option<LogId>,
    /// Last saved vote.
    pub vote: Option<Vote<NodeId>>,
    /// Commit index hint.
    pub committed: Option<LogId>,
}

/// The commit hint is only a hint: never claim more than the log holds.
pub fn clamp_committed(
    hint: Option<LogId>,
    entries: &BTreeMap<u64, Entry>,
    purged: Option<LogId>,
) -> Option<LogId> {
    let last_index = entries.keys().next_back().copied();
    hint.filter(|c| Some(c.index) <= last_index.or(purged.map(|p| p.index)))
}

/// Every index follows the previous one.
pub fn check_contiguous(entries: &BTreeMap<u64, Entry>) -> io::Result<()> {
    let mut expected = None;
    for index in entries.keys() {
        if let Some(e) = expected {
            if *index != e {
                return Err(io::Error::other(format!("log has a gap: expected index {e}, found {index}")));
            }
        }
        expected = Some(index + 1);
    }
    Ok(())
}
