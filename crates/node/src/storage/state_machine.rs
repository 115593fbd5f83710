//! [`StateMachineStore`]: a group's state machine and its snapshots.
//!
//! The state lives in memory and is rebuilt at start-up from the latest snapshot plus the
//! log, which is the durable record. A snapshot is one file: a header with the snapshot's
//! metadata, the JSON of the state ([`Group0State`] or a [`PartitionMachine`]), and a CRC
//! over both, replaced atomically.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sinkron_core::cache::{CacheCommand, CacheEvent, CacheReply};
use sinkron_core::claims::ReceiveClaims;
use sinkron_core::locks::LockEvent;
use sinkron_core::{Batch, Command, Group0State, PartitionMachine, Request, Response};
use tokio::sync::watch;

use super::files;
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const SNAPSHOT_MAGIC: &[u8; 8] = b"SKSNAP01";

/// The application state of one kind of group, as the store drives it.
pub trait Machine: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Records an entry without application command.
    fn apply_blank(&mut self, index: u64);
    /// Applies one entry of the leader of `term`: the replies, and whether waiters on this
    /// group should look at the state again.
    fn apply_entry(&mut self, index: u64, term: u64, batch: &Batch) -> (Vec<Response>, bool);
    /// The state's invariants; checked after every applied entry in debug builds.
    fn check_invariants(&self) -> Result<(), String>;
    /// Side effects of the applies since the last call.
    fn drain_effects(&mut self) -> Effects {
        Effects::default()
    }
    /// The revision of the key-value store (group 0); where a watch's history starts.
    fn kv_revision(&self) -> u64 {
        0
    }
    /// Whether the leader runs requests past [`Machine::admit`] before proposing them.
    const GATED: bool = false;
    /// The reply each of `requests` (one entry's, in order) gets on the leader without an
    /// entry, given the requests already proposed and not applied (their `claims`), or
    /// `None` to propose it.
    fn admit(
        &self,
        _claims: &mut ReceiveClaims,
        requests: &[Request],
        _now_ms: u64,
    ) -> Vec<Option<Response>> {
        requests.iter().map(|_| None).collect()
    }
    /// Drops the `claims` of requests this state has applied.
    fn forget_applied(&self, _claims: &mut ReceiveClaims) {}
}

/// Side effects of applied entries that the node acts on.
#[derive(Default)]
pub struct Effects {
    /// Lock grants and expiries (group 0).
    pub lock_events: Vec<LockEvent>,
    /// Cache events (group 0).
    pub cache_events: Vec<CacheEvent>,
    /// Key-value changes (group 0).
    pub kv_events: Vec<sinkron_core::kv::KvEvent>,
}

impl Machine for Group0State {
    fn apply_blank(&mut self, index: u64) {
        Group0State::apply_blank(self, index);
    }

    fn apply_entry(&mut self, index: u64, term: u64, batch: &Batch) -> (Vec<Response>, bool) {
        // Commands change locks too (an acquire, a cancel), so waiters look after every
        // entry that carried one.
        let touched_locks = batch.requests.iter().any(|r| r.command.is_lock());
        (Group0State::apply_entry(self, index, term, batch), touched_locks)
    }

    fn check_invariants(&self) -> Result<(), String> {
        Group0State::check_invariants(self)
    }

    fn drain_effects(&mut self) -> Effects {
        Effects {
            lock_events: self.locks.drain_events(),
            cache_events: self.drain_cache_events(),
            kv_events: self.drain_kv_events(),
        }
    }

    fn kv_revision(&self) -> u64 {
        self.revision
    }
}

impl Machine for PartitionMachine {
    fn apply_blank(&mut self, index: u64) {
        PartitionMachine::apply_blank(self, index);
    }

    fn apply_entry(&mut self, index: u64, _term: u64, batch: &Batch) -> (Vec<Response>, bool) {
        // Receivers long-poll: any entry may have made messages ready.
        (PartitionMachine::apply_entry(self, index, batch), true)
    }

    fn check_invariants(&self) -> Result<(), String> {
        PartitionMachine::check_invariants(self)
    }

    const GATED: bool = true;

    fn admit(&self, claims: &mut ReceiveClaims, requests: &[Request], now_ms: u64) -> Vec<Option<Response>> {
        claims.admit_all(self, requests, now_ms)
    }

    fn forget_applied(&self, claims: &mut ReceiveClaims) {
        claims.forget_applied(self);
    }
}

/// A group's applied state. Cloning gives another handle to the same state.
pub struct StateMachineStore<S: Machine = Group0State> {
    shared: Arc<Shared<S>>,
}

impl<S: Machine> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

/// What the state machine tells the cache, synchronously, inside the apply.
pub enum CacheSignal {
    /// The cache events of one applied batch.
    Events(Vec<sinkron_core::cache::CacheEvent>),
    /// A snapshot replaced the whole state.
    SnapshotInstalled,
}

/// Receives [`CacheSignal`]s.
pub type CacheHook = Arc<dyn Fn(CacheSignal) + Send + Sync>;

struct Shared<S> {
    data: RwLock<Applied<S>>,
    cache_hook: std::sync::OnceLock<CacheHook>,
    /// The group log's leader appends not yet durable: an entry is applied only once its
    /// own log holds it durably (see [`super::durability`]).
    durability: std::sync::OnceLock<super::Durability>,
    /// Bumped after every apply that waiting requests should look at: in group 0 one that
    /// changed a lock's holders or waiters, in a partition any.
    changes: watch::Sender<u64>,
    snapshots: SnapshotStore,
    snapshot_seq: AtomicU64,
    usage: crate::quota::Usage,
    /// The key-value changes applied here (group 0's watches; empty elsewhere).
    kv_feed: crate::kv_feed::KvFeed,
}

/// The state machine together with what openraft needs to know about it.
#[derive(Debug, Default)]
pub struct Applied<S = Group0State> {
    /// Last log id applied.
    pub last_applied: Option<LogId>,
    /// Last membership applied.
    pub last_membership: StoredMembership,
    /// The application state.
    pub state: S,
}

fn snapshot_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

fn read_snapshot_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

impl<S: Machine> StateMachineStore<S> {
    /// Opens the state machine of the group in `group_dir`, starting from its snapshot.
    pub fn open(group_dir: &Path) -> Result<Self, StorageError> {
        Self::open_from(group_dir, S::default())
    }

    /// Like [`StateMachineStore::open`], with `initial` as the state when there is no
    /// snapshot yet.
    pub fn open_from(group_dir: &Path, initial: S) -> Result<Self, StorageError> {
        files::create_dir_durably(group_dir).map_err(read_snapshot_error)?;
        let path = group_dir.join("snapshot.bin");
        let bytes = files::read_optional(&path).map_err(read_snapshot_error)?;
        Self::from_snapshot(SnapshotStore::File(path), bytes, initial)
    }

    /// Opens a state machine whose snapshots live in `snapshots`, starting from the latest
    /// (or from `initial` when there is none).
    pub async fn open_with(snapshots: SnapshotStore, initial: S) -> Result<Self, StorageError> {
        let bytes = snapshots.load().await.map_err(read_snapshot_error)?;
        Self::from_snapshot(snapshots, bytes, initial)
    }

    fn from_snapshot(
        snapshots: SnapshotStore,
        bytes: Option<Vec<u8>>,
        initial: S,
    ) -> Result<Self, StorageError> {
        let mut applied = Applied { state: initial, ..Applied::default() };
        let usage = crate::quota::Usage::default();
        if let Some(bytes) = bytes {
            let (meta, data) = decode_snapshot(&bytes).map_err(read_snapshot_error)?;
            usage.measured(data.len());
            applied.state = serde_json::from_slice(&data).map_err(read_snapshot_error)?;
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership;
        }
        let kv_feed = crate::kv_feed::KvFeed::new(applied.state.kv_revision());
        let shared = Shared {
            kv_feed,
            data: RwLock::new(applied),
            cache_hook: std::sync::OnceLock::new(),
            durability: std::sync::OnceLock::new(),
            changes: watch::Sender::new(0),
            snapshots,
            snapshot_seq: AtomicU64::new(0),
            usage,
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The size of this group's state, for its quota.
    pub fn usage(&self) -> &crate::quota::Usage {
        &self.shared.usage
    }

    /// Read access to the applied state.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied<S>> {
        self.shared.data.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key-value changes this group applied (watches and blocking reads).
    pub fn kv_feed(&self) -> &crate::kv_feed::KvFeed {
        &self.shared.kv_feed
    }

    /// Installs the receiver of cache events (once, before Raft starts applying).
    pub fn set_cache_hook(&self, hook: CacheHook) {
        let _ = self.shared.cache_hook.set(hook);
    }

    /// Makes every apply wait until the group's log holds the entries durably (once, before
    /// Raft starts applying). Without it, entries are applied as openraft hands them over.
    pub fn apply_after(&self, durability: super::Durability) {
        let _ = self.shared.durability.set(durability);
    }

    /// Notifies after every apply waiting requests should look at (see [`Machine`]).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied<S>> {
        self.shared.data.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Encodes a snapshot file: magic, meta length, meta JSON, data, CRC of all before it.
pub fn encode_snapshot_file(meta: &SnapshotMeta, data: &[u8]) -> io::Result<Vec<u8>> {
    let meta_json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(meta_json.len() + data.len() + 24);
    buf.extend_from_slice(SNAPSHOT_MAGIC);
    buf.extend_from_slice(&(meta_json.len() as u64).to_le_bytes());
    buf.extend_from_slice(&meta_json);
    buf.extend_from_slice(data);
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Where a group's latest snapshot is kept.
#[derive(Clone)]
pub enum SnapshotStore {
    /// A file, replaced atomically and fsynced.
    File(PathBuf),
    /// A Redis key.
    Redis(super::redis_slot::RedisSlot),
}

impl SnapshotStore {
    async fn save(&self, bytes: Vec<u8>) -> io::Result<()> {
        match self {
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || files::replace(&path, &bytes, true))
                    .await
                    .map_err(io::Error::other)?
            }
            Self::Redis(slot) => slot.set(bytes).await,
        }
    }

    async fn load(&self) -> io::Result<Option<Vec<u8>>> {
        match self {
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || files::read_optional(&path))
                    .await
                    .map_err(io::Error::other)?
            }
            Self::Redis(slot) => slot.get().await,
        }
    }
}

fn decode_snapshot(bytes: &[u8]) -> io::Result<(SnapshotMeta, Vec<u8>)> {
    let corrupt = || io::Error::other("the stored snapshot is corrupt");
    // The magic ends in the format version: another version is named, not called corrupt.
    if bytes.len() >= 8 && bytes[..6] == SNAPSHOT_MAGIC[..6] && bytes[..8] != SNAPSHOT_MAGIC[..] {
        return Err(io::Error::other(format!(
            "the stored snapshot has format version {}; this binary reads version {} (run the \
             sinkron version that wrote it)",
            String::from_utf8_lossy(&bytes[6..8]),
            String::from_utf8_lossy(&SNAPSHOT_MAGIC[6..8]),
        )));
    }
    if bytes.len() < 20 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(corrupt());
    }
    let meta_len = u64::from_le_bytes(body[8..16].try_into().map_err(|_| corrupt())?) as usize;
    let meta_end = 16usize.checked_add(meta_len).filter(|end| *end <= body.len()).ok_or_else(corrupt)?;
    let meta: SnapshotMeta = serde_json::from_slice(&body[16..meta_end]).map_err(io::Error::other)?;
    Ok((meta, body[meta_end..].to_vec()))
}

impl<S: Machine> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let applied = self.read();
            let data = serde_json::to_vec(&applied.state).map_err(snapshot_error)?;
            let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match &applied.last_applied {
                Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
                None => format!("empty-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        self.shared.usage.measured(data.len());
        let file = encode_snapshot_file(&meta, &data).map_err(snapshot_error)?;
        self.shared.snapshots.save(file).await.map_err(snapshot_error)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl<S: Machine> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotBuilder = StateMachineStore<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(durability), Some(last)) = (self.shared.durability.get(), entries.last()) {
            durability
                .wait_through(last.log_id.index)
                .await
                .map_err(|e| StorageError::from(StorageIOError::apply(last.log_id, AnyError::new(&e))))?;
        }
        let mut applied = self.write();
        let mut replies = Vec::new();
        let mut wake = false;
        for entry in entries {
            let index = entry.log_id.index;
            applied.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => {
                    applied.state.apply_blank(index);
                    Vec::new()
                }
                EntryPayload::Normal(payload) => {
                    let batch = payload.take_batch().map_err(|e| {
                        StorageError::from(StorageIOError::apply(entry.log_id, AnyError::new(&e)))
                    })?;
                    self.shared.usage.grew(batch.requests.iter().map(|r| r.command.payload_bytes()).sum());
                    let (reply, look) = applied.state.apply_entry(index, entry.log_id.leader_id.term, &batch);
                    wake |= look;
                    log_revocations(index, &batch, &reply);
                    reply
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    applied.state.apply_blank(index);
                    Vec::new()
                }
            };
            // Debug builds check the state after every entry, so every cluster test and chaos
            // run checks the invariants continuously; a broken one stops this node loudly.
            #[cfg(debug_assertions)]
            if let Err(broken) = applied.state.check_invariants() {
                panic!("state machine invariant broken after entry {index}: {broken}");
            }
            replies.push(reply);
        }
        let Effects { lock_events, cache_events, kv_events } = applied.state.drain_effects();
        // Published before the lock is let go: a reader that sees this state and then
        // subscribes finds these changes in the feed's window, not missing.
        self.shared.kv_feed.publish(kv_events);
        drop(applied);
        // Lines change before the apply is reported, so "applied index N" also means
        // "this node's lines reflect entry N" (what a writer's invalidation wait relies on).
        if let (Some(hook), false) = (self.shared.cache_hook.get(), cache_events.is_empty()) {
            hook(CacheSignal::Events(cache_events));
        }
        crate::metrics::record_lock_events(&lock_events);
        if wake || !lock_events.is_empty() {
            self.shared.changes.send_modify(|e| *e = e.wrapping_add(1));
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: S = serde_json::from_slice(&data).map_err(read_snapshot_error)?;
        self.shared.usage.measured(data.len());
        let file = encode_snapshot_file(meta, &data).map_err(snapshot_error)?;
        self.shared.snapshots.save(file).await.map_err(snapshot_error)?;
        let mut applied = self.write();
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        self.shared.kv_feed.reset(applied.state.kv_revision());
        drop(applied);
        self.shared.changes.send_modify(|e| *e = e.wrapping_add(1));
        if let Some(hook) = self.shared.cache_hook.get() {
            hook(CacheSignal::SnapshotInstalled);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(bytes) = self.shared.snapshots.load().await.map_err(read_snapshot_error)? else {
            return Ok(None);
        };
        let (meta, data) = decode_snapshot(&bytes).map_err(read_snapshot_error)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Logs, on the debug level of the target `sinkron_revocations`, each key a cache
/// revocation took from its owner with the value stored for it from now on (what the
/// owner had not written back is lost). The fault-injection harness reads these lines to
/// count each such revocation as a possible restore of that value in its check of
/// write-back histories; values are logged only when that target is enabled.
fn log_revocations(index: u64, batch: &Batch, replies: &[Response]) {
    if !tracing::enabled!(target: "sinkron_revocations", tracing::Level::DEBUG) {
        return;
    }
    for (request, reply) in batch.requests.iter().zip(replies) {
        let (Command::Cache { request: CacheCommand::Revoke { node, token }, .. }, Response::Cache { reply }) =
            (&request.command, reply)
        else {
            continue;
        };
        let CacheReply::Revoked { owned } = reply else { continue };
        for (key, stored) in owned {
            let stored = stored.as_ref().map_or("null".to_string(), |v| v.to_string());
            tracing::debug!(
                target: "sinkron_revocations",
                "cache revocation applied: index={index} node={node} token={token} at_us={} key={key} stored={stored}",
                crate::clock::now_us()
            );
        }
    }
}
