//! Reading the shared log back at start-up: every group's entries, vote, purge point and
//! commit hint, with a torn tail cut and damage refused; and the one-time import of logs
//! written by earlier versions (a `log/` directory per group).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::files;
use super::mem::{check_contiguous, clamp_committed, MemLog};
use super::record::{
    declared_version, frame, COMMITTED, ENTRY, FORMAT, KINDS, LOG_FORMAT_VERSION, PAYLOAD_HEAD_BYTES, PURGE,
    TRUNCATE, VOTE,
};
use super::segment::{decode_records, is_zero, list_segments, valid_record_after};
use super::writer::Tail;
use crate::types::{Entry, GroupId, LogId};

/// What the writer knows of a group's durable metadata: the bodies of its last `V`, `P`
/// and `C` records, repeated in every new segment's checkpoint.
#[derive(Default, Clone)]
pub(super) struct GroupMeta {
    pub vote: Option<Vec<u8>>,
    pub purged: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
}

/// What the writer and the groups start from.
pub(super) struct Recovered {
    pub logs: BTreeMap<GroupId, MemLog>,
    pub segments: BTreeMap<u64, PathBuf>,
    pub current: Option<Tail>,
    pub live: BTreeMap<GroupId, BTreeMap<u64, u64>>,
    pub meta: BTreeMap<GroupId, GroupMeta>,
}

/// The error of a log whose written records are damaged: the node must not start on it,
/// since cutting there would drop acknowledged entries.
fn corruption(path: &Path, offset: u64, where_: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "corrupt log record in {} at offset {offset} ({where_}); this is damage to written \
             entries, not a torn write, so the node will not start on it. To recover, move this \
             node's data directory away and start it empty: it rejoins from the other members \
             (see docs/operations.md)",
            path.display()
        ),
    )
}

/// Replays the segments in `dir` in order.
pub(super) fn recover(dir: &Path) -> io::Result<Recovered> {
    files::create_dir_durably(dir)?;
    let segments = list_segments(dir)?;
    let mut state = Replay::default();
    let mut seg_map = BTreeMap::new();
    let mut tail_len = 0;
    for (i, (seq, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let bytes = fs::read(path)?;
        let decoded = decode_records(&bytes);
        check_format(path, decoded.records.first().map(|r| r.payload))?;
        let rest = &bytes[decoded.valid_len as usize..];
        if !rest.is_empty() {
            let zero_fill = is_zero(rest);
            if !zero_fill && !is_last {
                return Err(corruption(path, decoded.valid_len, "inside a sealed segment"));
            }
            if !zero_fill {
                if let Some(next) = valid_record_after(&bytes, decoded.valid_len as usize, KINDS) {
                    return Err(corruption(
                        path,
                        decoded.valid_len,
                        &format!("followed by a valid record at offset {next}"),
                    ));
                }
                tracing::warn!(segment = %path.display(), kept = decoded.valid_len, len = bytes.len(), "cutting torn log tail");
            }
            if !zero_fill || !is_last {
                // Torn bytes go; a sealed segment keeps no zero fill.
                let f = fs::OpenOptions::new().write(true).open(path)?;
                f.set_len(decoded.valid_len)?;
                f.sync_all()?;
            }
        }
        for record in decoded.records {
            state.apply(*seq, record.payload).map_err(|e| corruption(path, record.offset, &e))?;
        }
        seg_map.insert(*seq, path.clone());
        tail_len = decoded.valid_len;
    }
    let current = match seg_map.iter().next_back() {
        Some((seq, path)) => {
            let mut tail = Tail::open(*seq, path, tail_len)?;
            // Records a crashed process wrote but never fsynced are readable, not durable:
            // make them durable before this node answers for them (a vote, an append's match).
            tail.sync()?;
            Some(tail)
        }
        None => None,
    };
    let mut logs = BTreeMap::new();
    for (group, mut mem) in state.logs {
        check_contiguous(&mem.entries).map_err(|e| io::Error::other(format!("group {group}: {e}")))?;
        mem.committed = clamp_committed(mem.committed, &mem.entries, mem.last_purged);
        logs.insert(group, mem);
    }
    Ok(Recovered { logs, segments: seg_map, current, live: state.live, meta: state.meta })
}

/// Refuses a segment written in another format version, naming both versions.
fn check_format(path: &Path, first: Option<&[u8]>) -> io::Result<()> {
    match first.and_then(declared_version) {
        None | Some(Ok(LOG_FORMAT_VERSION)) => Ok(()),
        Some(Ok(version)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "log segment {} has format version {version}; this binary reads version \
                 {LOG_FORMAT_VERSION}: run the sinkron version that wrote it",
                path.display()
            ),
        )),
        Some(Err(e)) => Err(corruption(path, 0, &e)),
    }
}

#[derive(Default)]
struct Replay {
    logs: BTreeMap<GroupId, MemLog>,
    live: BTreeMap<GroupId, BTreeMap<u64, u64>>,
    meta: BTreeMap<GroupId, GroupMeta>,
}

impl Replay {
    /// Replays one record of segment `seq`; an error says what is wrong with it (a record
    /// whose checksum holds but whose content does not parse is damage too).
    fn apply(&mut self, seq: u64, payload: &[u8]) -> Result<(), String> {
        if payload.len() < PAYLOAD_HEAD_BYTES {
            return Err("a record shorter than its head".into());
        }
        let kind = payload[0];
        if kind == FORMAT {
            // Checked where the segment is opened; it belongs to no group.
            return Ok(());
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&payload[1..PAYLOAD_HEAD_BYTES]);
        let group = GroupId::from_le_bytes(id);
        let body = &payload[PAYLOAD_HEAD_BYTES..];
        let mem = self.logs.entry(group).or_default();
        let live = self.live.entry(group).or_default();
        let meta = self.meta.entry(group).or_default();
        let bad = |what: &str, e: serde_json::Error| format!("a {what} record that does not parse: {e}");
        match kind {
            ENTRY => {
                let entry: Entry = serde_json::from_slice(body).map_err(|e| bad("log entry", e))?;
                let index = entry.log_id.index;
                if mem.last_purged.is_some_and(|p| index <= p.index) {
                    return Ok(());
                }
                mem.entries.split_off(&index);
                live.split_off(&index);
                mem.entries.insert(index, entry);
                live.insert(index, seq);
            }
            TRUNCATE => {
                let from = u64::from_le_bytes(body.try_into().map_err(|_| "a truncation of the wrong size")?);
                mem.entries.split_off(&from);
                live.split_off(&from);
            }
            PURGE => {
                let purged: LogId = serde_json::from_slice(body).map_err(|e| bad("purge", e))?;
                if mem.last_purged.is_none_or(|p| p.index <= purged.index) {
                    mem.entries = mem.entries.split_off(&(purged.index + 1));
                    *live = live.split_off(&(purged.index + 1));
                    mem.last_purged = Some(purged);
                    meta.purged = Some(body.to_vec());
                }
            }
            VOTE => {
                mem.vote = Some(serde_json::from_slice(body).map_err(|e| bad("vote", e))?);
                meta.vote = Some(body.to_vec());
            }
            COMMITTED => {
                mem.committed = serde_json::from_slice(body).map_err(|e| bad("commit hint", e))?;
                meta.committed = Some(body.to_vec());
            }
            other => return Err(format!("a record of unknown kind {other}")),
        }
        Ok(())
    }
}

/// Moves the logs of earlier versions (`groups/<id>/log/` with `vote.json`, `purged.json`
/// and `committed.json` beside it) into the shared log at `wal_dir`: their records are
/// written and fsynced there first, and only then are the old files removed, so a crash
/// in between imports them again (replaying the same records twice gives the same log).
pub fn import_group_dirs(groups_dir: &Path, wal_dir: &Path) -> io::Result<()> {
    let Ok(listing) = fs::read_dir(groups_dir) else { return Ok(()) };
    let mut found = Vec::new();
    for entry in listing {
        let path = entry?.path();
        let group = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<GroupId>().ok());
        if let Some(group) = group {
            if path.join("log").is_dir() {
                found.push((group, path));
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    files::create_dir_durably(wal_dir)?;
    let next = list_segments(wal_dir)?.last().map_or(0, |(seq, _)| seq + 1);
    let mut buf = Vec::new();
    super::record::frame_format(&mut buf);
    for (group, dir) in &found {
        let read = |name: &str| files::read_optional(&dir.join(name));
        if let Some(vote) = read("vote.json")? {
            frame(VOTE, *group, &vote, &mut buf);
        }
        if let Some(purged) = read("purged.json")? {
            frame(PURGE, *group, &purged, &mut buf);
        }
        if let Some(committed) = read("committed.json")? {
            frame(COMMITTED, *group, &committed, &mut buf);
        }
        for (_, path) in list_segments(&dir.join("log"))? {
            let bytes = fs::read(&path)?;
            let decoded = decode_records(&bytes);
            for record in decoded.records {
                frame(ENTRY, *group, record.payload, &mut buf);
            }
        }
    }
    let path = super::segment::segment_path(wal_dir, next);
    files::replace(&path, &buf, true)?;
    for (group, dir) in found {
        fs::remove_dir_all(dir.join("log"))?;
        for name in ["vote.json", "purged.json", "committed.json"] {
            match fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        files::sync_dir(&dir)?;
        tracing::info!(group, "moved the group's log into the node's shared log");
    }
    Ok(())
}
