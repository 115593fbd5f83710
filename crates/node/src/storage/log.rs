//! [`LogStore`]: openraft's `RaftLogStorage` over segment files and a writer thread.
//!
//! Unpurged entries are also kept in memory, so reads never touch the disk; snapshots and
//! purging keep that bounded. Appends become visible to readers at once but are reported
//! flushed only after the writer thread's fsync (openraft 0.9 waits for that report before
//! it replicates or commits them).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, Vote};
use tokio::sync::oneshot;

use super::segment::{decode_records, encode_record, is_zero, list_segments, valid_record_after};
use super::writer::{Position, Tail, WriteOp, Writer};
use super::{files, log_read_error, log_write_error};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The durable Raft log of one group. Cloning gives another handle to the same log.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    mem: Mutex<MemLog>,
    writer: Mutex<Sender<WriteOp>>,
    health: super::StorageHealth,
}

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

/// Everything read back from a group directory at start-up.
struct Recovered {
    mem: MemLog,
    writer: Writer,
}

impl LogStore {
    /// Opens (or creates) the log in `group_dir`, cutting off a torn tail left by a crash.
    pub fn open(group_dir: &Path) -> Result<Self, StorageError> {
        let Recovered { mem, writer } = recover(group_dir).map_err(log_read_error)?;
        let health = writer.health.clone();
        Self::start(mem, health, move |rx| writer.run(rx))
    }

    /// Whether the log's backend currently accepts writes.
    pub fn health(&self) -> &super::StorageHealth {
        &self.shared.health
    }

    /// Serves `mem` and hands every change, in order, to `writer` on a thread of its own.
    pub fn start(
        mem: MemLog,
        health: super::StorageHealth,
        writer: impl FnOnce(Receiver<WriteOp>) + Send + 'static,
    ) -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sinkron-log-writer".into())
            .spawn(move || writer(rx))
            .map_err(log_write_error)?;
        Ok(Self { shared: Arc::new(Shared { mem: Mutex::new(mem), writer: Mutex::new(tx), health }) })
    }

    fn mem(&self) -> MutexGuard<'_, MemLog> {
        // A panic while holding the lock cannot leave MemLog half-updated in a way that
        // matters more than the panic itself; keep serving rather than cascade.
        self.shared.mem.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        let tx = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(op).map_err(|_| log_write_error(io::Error::other("log writer thread stopped")))
    }

    async fn send_and_wait(
        &self,
        op: impl FnOnce(oneshot::Sender<io::Result<()>>) -> WriteOp,
    ) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(op(tx)).map_err(|e| io::Error::other(e.to_string()))?;
        rx.await.map_err(|_| io::Error::other("log writer thread stopped"))?
    }

    /// Index of the last entry in the log, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.mem().entries.keys().next_back().copied()
    }
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

fn recover(group_dir: &Path) -> io::Result<Recovered> {
    let log_dir = group_dir.join("log");
    files::create_dir_durably(&log_dir)?;
    let last_purged: Option<LogId> = read_json(&group_dir.join("purged.json"))?;
    let vote = read_json(&group_dir.join("vote.json"))?;
    let committed_hint: Option<LogId> = read_json(&group_dir.join("committed.json")).unwrap_or(None);

    let segments = list_segments(&log_dir)?;
    let mut entries = BTreeMap::new();
    let mut positions = BTreeMap::new();
    let mut seg_map = BTreeMap::new();
    let mut tail_len = 0;
    for (i, (first, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let bytes = fs::read(path)?;
        let decoded = decode_records(&bytes);
        let rest = &bytes[decoded.valid_len as usize..];
        if !rest.is_empty() {
            let zero_fill = is_zero(rest);
            if !zero_fill && !is_last {
                return Err(corruption(path, decoded.valid_len, "inside a sealed segment"));
            }
            if !zero_fill {
                if let Some(next) = valid_record_after(&bytes, decoded.valid_len as usize) {
                    return Err(corruption(
                        path,
                        decoded.valid_len,
                        &format!("followed by a valid record at offset {next}"),
                    ));
                }
            }
            if !zero_fill {
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
            let entry: Entry = serde_json::from_slice(record.payload).map_err(io::Error::other)?;
            positions.insert(entry.log_id.index, Position { segment: *first, offset: record.offset });
            entries.insert(entry.log_id.index, entry);
        }
        seg_map.insert(*first, path.clone());
        tail_len = decoded.valid_len;
    }
    if let Some(purged) = &last_purged {
        entries = entries.split_off(&(purged.index + 1));
        positions = positions.split_off(&(purged.index + 1));
    }
    check_contiguous(&entries)?;
    let committed = clamp_committed(committed_hint, &entries, last_purged);
    let current = match seg_map.iter().next_back() {
        Some((first, path)) => Some(Tail::open(*first, path, tail_len)?),
        None => None,
    };
    let writer = Writer {
        group_dir: group_dir.to_path_buf(),
        log_dir,
        segments: seg_map,
        positions,
        current,
        committed_hint: None,
        hint_written_at: std::time::Instant::now(),
        failed: None,
        health: super::StorageHealth::default(),
    };
    Ok(Recovered { mem: MemLog { entries, last_purged, vote, committed }, writer })
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

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match files::read_optional(path)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
        None => Ok(None),
    }
}

fn encode_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(log_write_error)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.mem().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.mem();
        let last_log_id = mem.entries.values().next_back().map(|e| e.log_id).or(mem.last_purged);
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = encode_json(vote)?;
        self.send_and_wait(|tx| WriteOp::Meta { name: "vote.json", bytes, done: tx })
            .await
            .map_err(|e| openraft::StorageIOError::write_vote(openraft::AnyError::new(&e)))?;
        self.mem().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.mem().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.mem().committed = committed;
        let bytes = encode_json(&committed)?;
        self.send(WriteOp::CommittedHint(bytes))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.mem().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut records = Vec::with_capacity(entries.len());
        for entry in &entries {
            let payload = encode_json(entry)?;
            let mut record = Vec::with_capacity(payload.len() + 8);
            encode_record(&payload, &mut record);
            records.push((entry.log_id.index, record));
        }
        {
            let mut mem = self.mem();
            for entry in entries {
                mem.entries.insert(entry.log_id.index, entry);
            }
        }
        self.send(WriteOp::Append { records, done: callback })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.mem().entries.split_off(&log_id.index);
        self.send_and_wait(|done| WriteOp::Truncate { from_index: log_id.index, done })
            .await
            .map_err(log_write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut mem = self.mem();
            let keep = mem.entries.split_off(&(log_id.index + 1));
            mem.entries = keep;
            mem.last_purged = Some(log_id);
        }
        let purged = encode_json(&log_id)?;
        self.send_and_wait(|done| WriteOp::Purge { upto: log_id.index, purged, done })
            .await
            .map_err(log_write_error)
    }
}
