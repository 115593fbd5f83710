//! The node's one Raft log for every group: a write-ahead log of records tagged by group.
//!
//! Seventeen groups with a log file, a writer thread and an fsync each turned one busy
//! moment into seventeen small flushes. Here one writer thread drains the changes of every
//! group, writes them to the same segment and covers them all with one `fdatasync`; each
//! group still sees its own [`LogStore`] (openraft's `RaftLogStorage`), whose appends are
//! reported flushed after that shared fsync (a leader's own appends before it, with a mark
//! the fsync completes; see [`super::durability`]).
//!
//! A record is the segment format's `len | crc | payload`, and a payload is
//! `kind: u8 | group: u64 LE | body`:
//!
//! | kind | body | replayed as |
//! |---|---|---|
//! | `E` | the entry (JSON) | drop the group's entries from its index on, then insert it |
//! | `T` | first index (u64 LE) | drop the group's entries from that index on |
//! | `P` | last purged log id (JSON) | drop entries up to it; later `E`s at or below it are ignored |
//! | `V` | vote (JSON) | the group's vote |
//! | `C` | commit index hint (JSON) | the group's hint (never trusted past its log) |
//!
//! Segments are named by a sequence number. Every new segment starts with a checkpoint:
//! the `V`, `P` and `C` records of every group as last written, so older segments are never
//! needed for them. A segment is deleted once it is not the newest and no group has a live
//! (unpurged) entry whose newest copy is in it or before it. A group that keeps old entries
//! live for long (an idle partition never purges) would hold every segment after its
//! entries; when more than [`SEALED_KEPT`] sealed segments pile up, such groups' live
//! entries are copied from memory into the new segment, after which the old ones go.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::durability::Durability;
use super::log::LogStore;
use super::mem::MemLog;
use super::record::{frame, Tagged, COMMITTED, ENTRY, PURGE, TRUNCATE, VOTE};
use super::wal_recover::GroupMeta;
use super::writer::{drain_batch, Flushed, Tail, WriteOp, HINT_INTERVAL, SEGMENT_MAX_BYTES};
use super::{files, StorageHealth};
use crate::types::{GroupId, LogId};

/// Sealed segments kept before groups holding them back get their live entries copied.
pub const SEALED_KEPT: usize = 2;
/// At most this many queued changes share one fsync.
const BATCH_MAX_OPS: usize = 8192;

/// The in-memory logs of every group, shared by their [`LogStore`]s and the writer (which
/// copies live entries from them when it compacts).
pub type Registry = Arc<Mutex<BTreeMap<GroupId, Arc<Mutex<MemLog>>>>>;

/// The node's shared log: one directory, one writer thread, a [`LogStore`] per group.
pub struct SharedLog {
    tx: Sender<Tagged>,
    groups: Registry,
    /// Per group, its leader appends not yet durable: kept here, not in a [`LogStore`], so a
    /// group closed and opened again in this process still waits for them.
    durability: Mutex<BTreeMap<GroupId, Durability>>,
    health: StorageHealth,
}

impl SharedLog {
    /// Opens (or creates) the shared log in `dir`, recovering every group's log.
    pub fn open(dir: &Path) -> io::Result<Arc<Self>> {
        Self::open_with(dir, SEGMENT_MAX_BYTES)
    }

    /// [`SharedLog::open`] with segments sealed past `segment_max_bytes` (tests use small ones).
    pub fn open_with(dir: &Path, segment_max_bytes: u64) -> io::Result<Arc<Self>> {
        files::create_dir_durably(dir)?;
        let lock_file = lock_dir(dir)?;
        let recovered = super::wal_recover::recover(dir)?;
        let groups: Registry = Arc::new(Mutex::new(
            recovered.logs.into_iter().map(|(g, mem)| (g, Arc::new(Mutex::new(mem)))).collect(),
        ));
        let health = StorageHealth::default();
        let writer = WalWriter {
            dir: dir.to_path_buf(),
            segment_max_bytes,
            segments: recovered.segments,
            current: recovered.current,
            live: recovered.live,
            meta: recovered.meta,
            groups: groups.clone(),
            hint_written_at: Instant::now(),
            failed: None,
            health: health.clone(),
            _lock: lock_file,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("sinkron-log-writer".into()).spawn(move || writer.run(rx))?;
        Ok(Arc::new(Self { tx, groups, durability: Mutex::default(), health }))
    }

    /// The log of `group` (empty if it never wrote anything).
    pub fn group(&self, group: GroupId) -> LogStore {
        let mem = lock(&self.groups).entry(group).or_default().clone();
        let durability = lock(&self.durability).entry(group).or_default().clone();
        LogStore::shared(group, mem, durability, self.tx.clone(), self.health.clone())
    }

    /// Whether the shared log accepts writes.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer's view of the disk.
pub(super) struct WalWriter {
    pub dir: PathBuf,
    pub segment_max_bytes: u64,
    /// Segment sequence number -> path.
    pub segments: BTreeMap<u64, PathBuf>,
    /// The segment being appended to (its `first` is its sequence number).
    pub current: Option<Tail>,
    /// Per group: live log index -> sequence number of the segment holding its newest copy.
    pub live: BTreeMap<GroupId, BTreeMap<u64, u64>>,
    pub meta: BTreeMap<GroupId, GroupMeta>,
    pub groups: Registry,
    /// When the groups' commit hints were last looked at (and the changed ones written).
    pub hint_written_at: Instant,
    /// Set by the first failed write or fsync; every later change fails.
    pub failed: Option<String>,
    pub health: StorageHealth,
    /// Held while the writer runs: one writer per directory, ever.
    _lock: fs::File,
}

/// How long an open waits for the previous writer of the same directory to finish.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes the directory's lock file, waiting up to [`LOCK_WAIT`] for a writer that is still
/// finishing (a log reopened in the same process); another live process keeps it, and
/// then the open fails instead of two writers mixing their records.
fn lock_dir(dir: &Path) -> io::Result<fs::File> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    let until = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::other(format!(
                    "{} is locked: another node process uses this data directory",
                    path.display()
                )))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

enum Pending {
    Flushed(Flushed),
    Done(oneshot::Sender<io::Result<()>>),
}

impl WalWriter {
    fn run(mut self, rx: Receiver<Tagged>) {
        loop {
            let first = match rx.recv_timeout(HINT_INTERVAL) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    self.write_batch(Vec::new(), false);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let batch = drain_batch(&rx, first, BATCH_MAX_OPS);
            self.write_batch(batch, false);
        }
        // The last hints go out however recently the previous ones did.
        self.write_batch(Vec::new(), true);
    }

    fn seq(&self) -> Option<u64> {
        self.current.as_ref().map(|t| t.first)
    }

    /// When they are due (every [`HINT_INTERVAL`], or `now`), the commit hints of the groups
    /// whose commit index moved since their last written hint. Read from the groups' logs,
    /// where `save_committed` leaves them: a commit costs no message to this thread.
    fn due_hints(&mut self, now: bool) -> Vec<(GroupId, Vec<u8>)> {
        if !now && self.hint_written_at.elapsed() < HINT_INTERVAL {
            return Vec::new();
        }
        self.hint_written_at = Instant::now();
        let committed: Vec<(GroupId, Option<LogId>)> =
            lock(&self.groups).iter().map(|(group, mem)| (*group, lock(mem).committed)).collect();
        committed
            .into_iter()
            .filter(|(_, committed)| committed.is_some())
            .filter_map(|(group, committed)| serde_json::to_vec(&committed).ok().map(|bytes| (group, bytes)))
            .filter(|(group, bytes)| self.meta.get(group).and_then(|m| m.committed.as_ref()) != Some(bytes))
            .collect()
    }

    /// Writes `batch` and, when they are due (or `hints_now`), the changed commit hints.
    fn write_batch(&mut self, batch: Vec<Tagged>, hints_now: bool) {
        let hints = self.due_hints(hints_now);
        if batch.is_empty() && hints.is_empty() {
            return;
        }
        // The first segment opens with the first record: appends must know where they go.
        if self.current.is_none() && self.failed.is_none() {
            if let Err(e) = self.roll() {
                self.fail(&e, "could not start a log segment");
            }
        }
        let mut pending = Vec::with_capacity(batch.len());
        let mut buf = Vec::new();
        for Tagged { group, op } in batch {
            match op {
                WriteOp::Append { records, done } => {
                    if let (Some(seq), Some((first, _))) = (self.seq(), records.first()) {
                        let live = self.live.entry(group).or_default();
                        live.split_off(first);
                        for (index, _) in &records {
                            live.insert(*index, seq);
                        }
                    }
                    for (_, record) in records {
                        buf.extend_from_slice(&record);
                    }
                    pending.push(Pending::Flushed(done));
                }
                WriteOp::Truncate { from_index, done } => {
                    frame(TRUNCATE, group, &from_index.to_le_bytes(), &mut buf);
                    self.live.entry(group).or_default().split_off(&from_index);
                    pending.push(Pending::Done(done));
                }
                WriteOp::Purge { upto, purged, done } => {
                    frame(PURGE, group, &purged, &mut buf);
                    let live = self.live.entry(group).or_default();
                    *live = live.split_off(&(upto + 1));
                    self.meta.entry(group).or_default().purged = Some(purged);
                    pending.push(Pending::Done(done));
                }
                WriteOp::Meta { bytes, done, .. } => {
                    frame(VOTE, group, &bytes, &mut buf);
                    self.meta.entry(group).or_default().vote = Some(bytes);
                    pending.push(Pending::Done(done));
                }
                // The groups of the shared log send none (see `due_hints`).
                WriteOp::CommittedHint(_) => {}
            }
        }
        for (group, bytes) in hints {
            frame(COMMITTED, group, &bytes, &mut buf);
            self.meta.entry(group).or_default().committed = Some(bytes);
        }
        if buf.is_empty() && pending.is_empty() {
            return;
        }
        // Where this batch's records will end, known before anything is written.
        let batch_end = self.current.as_ref().map_or(0, |t| t.len) + buf.len() as u64;
        let result = self.write_and_sync(&buf, !pending.is_empty());
        if result.is_ok() {
            self.check_durable(batch_end, pending.len());
        }
        for waiter in pending {
            let reply = result.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string()));
            match waiter {
                Pending::Flushed(done) => done.complete(reply),
                Pending::Done(tx) => {
                    let _ = tx.send(reply);
                }
            }
        }
        if result.is_ok() && self.current.as_ref().is_some_and(|t| t.len >= self.segment_max_bytes) {
            if let Err(e) = self.roll() {
                self.fail(&e, "could not start a new log segment");
            }
        }
    }

    /// The writer's durability rule, checked before any waiter is told (in debug builds,
    /// so on every test that writes a log): nothing is acknowledged that a crash could take
    /// back. Every byte of the batch, which ends at `end` of the tail, is covered by an
    /// fsync. A writer that acknowledged before writing or before syncing fails here every
    /// time, not only when a crash lands in the window.
    fn check_durable(&self, end: u64, waiters: usize) {
        if waiters > 0 {
            debug_assert!(
                self.current.as_ref().is_some_and(|t| t.durable_through(end)),
                "{waiters} log operations about to be acknowledged beyond the fsynced end of the log"
            );
        }
    }

    /// Writes `buf` at the tail and, when someone waits for it, fsyncs once.
    fn write_and_sync(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        // After one failure the disk state is unknown: refuse everything from then on, so
        // nothing is ever acknowledged on top of a hole.
        if let Some(reason) = &self.failed {
            return Err(io::Error::other(format!("log writer stopped after an earlier error: {reason}")));
        }
        let outcome = (|| {
            let tail = self.current.as_mut().ok_or_else(|| io::Error::other("no open segment"))?;
            tail.append(buf)?;
            if sync {
                let started = Instant::now();
                tail.sync()?;
                metrics::histogram!("sinkron_log_fsync_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Ok(())
        })();
        if let Err(e) = &outcome {
            self.fail(e, "Raft log write failed");
        }
        outcome
    }

    fn fail(&mut self, e: &io::Error, what: &str) {
        if self.failed.is_none() {
            tracing::error!(error = %e, "{what}; no group on this node acknowledges writes any more");
            self.failed = Some(e.to_string());
            self.health.failing(format!("the Raft log cannot be written ({e}); restart the node"));
        }
    }

    /// Seals the current segment and starts the next one with a checkpoint of every group's
    /// metadata (and, when sealed segments pile up, the live entries of the groups that hold
    /// them), then deletes the segments nothing needs any more.
    fn roll(&mut self) -> io::Result<()> {
        let next = self.seq().map_or(0, |s| s + 1);
        if let Some(mut old) = self.current.take() {
            old.sync()?;
            // A sealed segment keeps no zero fill: its size is where its records end.
            let len = old.len;
            old.cut(len)?;
            old.file.sync_all()?;
        }
        let path = super::segment::segment_path(&self.dir, next);
        OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
        files::sync_dir(&self.dir)?;
        self.current = Some(Tail::open(next, &path, 0)?);
        self.segments.insert(next, path);

        let mut buf = Vec::new();
        super::record::frame_format(&mut buf);
        for (group, meta) in &self.meta {
            if let Some(vote) = &meta.vote {
                frame(VOTE, *group, vote, &mut buf);
            }
            if let Some(purged) = &meta.purged {
                frame(PURGE, *group, purged, &mut buf);
            }
            if let Some(committed) = &meta.committed {
                frame(COMMITTED, *group, committed, &mut buf);
            }
        }
        let sealed = self.segments.len() - 1;
        if sealed > SEALED_KEPT {
            let oldest = self.segments.keys().next().copied().unwrap_or(next);
            self.copy_live_entries(oldest, next, &mut buf)?;
        }
        let tail = self.current.as_mut().ok_or_else(|| io::Error::other("no open segment"))?;
        tail.append(&buf)?;
        tail.sync()?;
        self.reclaim()
    }

    /// Copies, from memory into segment `next`, every live entry of the groups whose live
    /// entries begin in segment `oldest`.
    fn copy_live_entries(&mut self, oldest: u64, next: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let holders: Vec<GroupId> = self
            .live
            .iter()
            .filter(|(_, live)| live.values().min().is_some_and(|seq| *seq <= oldest))
            .map(|(g, _)| *g)
            .collect();
        for group in holders {
            let Some(mem) = lock(&self.groups).get(&group).cloned() else { continue };
            let entries: Vec<_> = lock(&mem).entries.values().cloned().collect();
            let live = self.live.entry(group).or_default();
            for entry in entries {
                if !live.contains_key(&entry.log_id.index) {
                    // Appended in memory, its own record still queued: it comes with it.
                    continue;
                }
                let body = serde_json::to_vec(&entry).map_err(io::Error::other)?;
                frame(ENTRY, group, &body, buf);
                live.insert(entry.log_id.index, next);
            }
            metrics::counter!("sinkron_log_compaction_copies_total").increment(1);
        }
        Ok(())
    }

    /// Deletes the oldest segments that hold nothing live.
    fn reclaim(&mut self) -> io::Result<()> {
        let Some(current) = self.seq() else { return Ok(()) };
        // The newest copy of every live entry must stay. Copies are usually in index order,
        // but not while a truncation is queued behind a compaction, so look at them all.
        let needed = self.live.values().flat_map(|live| live.values().copied()).min().unwrap_or(current);
        let dead: Vec<u64> = self.segments.range(..needed.min(current)).map(|(s, _)| *s).collect();
        if dead.is_empty() {
            return Ok(());
        }
        for seq in dead {
            if let Some(path) = self.segments.remove(&seq) {
                fs::remove_file(path)?;
            }
        }
        files::sync_dir(&self.dir)
    }
}
