//! [`LogStore`]: openraft's `RaftLogStorage` of one group, over a writer thread: the node's
//! shared log (`super::wal`) or the group's own Redis writer (`super::redis`).
//!
//! Unpurged entries are also kept in memory, so reads never touch the disk; snapshots and
//! purging keep that bounded. Appends become visible to readers at once. A follower's
//! appends are reported flushed only after the writer's fsync; a leader's own appends are
//! reported at once, so openraft replicates them while the fsync runs, and
//! [`Durability`] holds back everything that would let them be seen until it lands. An
//! entry is encoded once, here, into the record its writer stores.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, Vote};
use tokio::sync::oneshot;

use super::durability::Durability;
use super::log_write_error;
pub use super::mem::MemLog;
use super::record::Tagged;
use super::segment::encode_record;
use super::writer::{Flushed, WriteOp, HINT_INTERVAL};
use crate::types::{Entry, GroupId, LogId, NodeId, StorageError, TypeConfig};

/// How long opening a group waits to store a former leader's vote (a Redis backend that
/// is down would otherwise hold the node's start-up without a word).
const VOTE_STORE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The durable Raft log of one group. Cloning gives another handle to the same log.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    mem: Arc<Mutex<MemLog>>,
    sink: Sink,
    health: super::StorageHealth,
    /// This node, when it may report its own leader appends flushed before the fsync.
    me: Option<NodeId>,
    durability: Durability,
}

/// Where the group's changes go.
enum Sink {
    /// A writer of this group alone (Redis): records are plain segment records. With when
    /// a commit hint last went to it.
    Own(Sender<WriteOp>, Mutex<Option<std::time::Instant>>),
    /// The node's shared log: records carry the group.
    Shared(GroupId, Sender<Tagged>),
}

impl LogStore {
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
        let mem = Arc::new(Mutex::new(mem));
        Ok(Self::with(mem, Durability::default(), Sink::Own(tx, Mutex::default()), health))
    }

    /// The view of `group` in the node's shared log.
    pub(super) fn shared(
        group: GroupId,
        mem: Arc<Mutex<MemLog>>,
        durability: Durability,
        tx: Sender<Tagged>,
        health: super::StorageHealth,
    ) -> Self {
        Self::with(mem, durability, Sink::Shared(group, tx), health)
    }

    fn with(
        mem: Arc<Mutex<MemLog>>,
        durability: Durability,
        sink: Sink,
        health: super::StorageHealth,
    ) -> Self {
        Self { shared: Arc::new(Shared { mem, sink, health, me: None, durability }) }
    }

    /// This log as node `me`'s, before its Raft instance starts: while `me` leads the group,
    /// its own appends are reported flushed before their fsync (see [`Durability`]).
    ///
    /// A leader that stopped may have sent entries its own disk never got. openraft 0.9
    /// would resume leading in the same term after a restart, and could then write other
    /// entries at the same positions, which followers would take for the ones they hold.
    /// So a committed vote of this node's own is stored again as a plain vote for itself:
    /// the node starts as a follower and only leads again after an election in a newer
    /// term, whose first entry makes every follower drop what the old leader's disk lost.
    pub async fn on_node(self, me: NodeId) -> Result<Self, StorageError> {
        let mut log = match Arc::try_unwrap(self.shared) {
            Ok(shared) => Self { shared: Arc::new(Shared { me: Some(me), ..shared }) },
            Err(shared) => {
                tracing::warn!("log already shared: its leader appends wait for their fsync");
                Self { shared }
            }
        };
        // Whether or not this handle reports early, an earlier process may have.
        let vote = log.mem().vote;
        if let Some(vote) = vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(me)) {
            let plain = Vote::new(vote.leader_id().get_term(), me);
            let stored = log.save_vote(&plain);
            match tokio::time::timeout(VOTE_STORE_LIMIT, stored).await {
                Ok(stored) => stored?,
                Err(_) => {
                    let waited = VOTE_STORE_LIMIT.as_secs();
                    return Err(log_write_error(io::Error::other(format!(
                        "the log's backend did not store this node's vote within {waited} s while the \
                         group opened; is it reachable?"
                    ))));
                }
            }
        }
        Ok(log)
    }

    /// What applies and commit announcements of this group wait on.
    pub fn durability(&self) -> &Durability {
        &self.shared.durability
    }

    /// Whether `entries` are this node's own appends as the group's established leader:
    /// the vote is this node's, committed, and of the entries' term. (One leader per term:
    /// no other node makes entries of that term, and a leader that sees a newer term saves
    /// the newer vote before it appends anything else.)
    fn leads(&self, entries: &[Entry]) -> bool {
        let (Some(me), Some(first)) = (self.shared.me, entries.first()) else { return false };
        self.mem().vote.is_some_and(|vote| {
            vote.is_committed()
                && vote.leader_id().voted_for() == Some(me)
                && vote.leader_id().get_term() == first.log_id.leader_id.term
        })
    }

    fn mem(&self) -> MutexGuard<'_, MemLog> {
        // A panic while holding the lock cannot leave MemLog half-updated in a way that
        // matters more than the panic itself; keep serving rather than cascade.
        self.shared.mem.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        let sent = match &self.shared.sink {
            Sink::Own(tx, _) => tx.send(op).is_ok(),
            Sink::Shared(group, tx) => tx.send(Tagged { group: *group, op }).is_ok(),
        };
        if sent {
            Ok(())
        } else {
            Err(log_write_error(io::Error::other("log writer thread stopped")))
        }
    }

    /// The stored record of `entry`, whose JSON is `payload`.
    fn record(&self, payload: &[u8]) -> Vec<u8> {
        let mut record = Vec::with_capacity(payload.len() + 8 + super::record::PAYLOAD_HEAD_BYTES);
        match &self.shared.sink {
            Sink::Own(..) => encode_record(payload, &mut record),
            Sink::Shared(group, _) => {
                super::record::frame(super::record::ENTRY, *group, payload, &mut record)
            }
        }
        record
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

    /// The hint only saves re-applying entries at start-up, so it is not worth waking a
    /// writer thread per commit: the shared log's writer reads the newest hints from the
    /// groups' logs when they are due, and a group's own writer gets one at most every
    /// [`HINT_INTERVAL`].
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.mem().committed = committed;
        let Sink::Own(_, sent_at) = &self.shared.sink else { return Ok(()) };
        {
            let mut sent_at = sent_at.lock().unwrap_or_else(|p| p.into_inner());
            if sent_at.is_some_and(|at| at.elapsed() < HINT_INTERVAL) {
                return Ok(());
            }
            *sent_at = Some(std::time::Instant::now());
        }
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
            records.push((entry.log_id.index, self.record(&payload)));
        }
        let early = self.leads(&entries).then(|| entries[0].log_id.index);
        {
            let mut mem = self.mem();
            for entry in entries {
                mem.entries.insert(entry.log_id.index, entry);
            }
        }
        match early {
            Some(first) => {
                let mark = self.shared.durability.mark(first);
                self.send(WriteOp::Append { records, done: Flushed::Mark(mark) })?;
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            None => self.send(WriteOp::Append { records, done: Flushed::Raft(callback) }),
        }
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
