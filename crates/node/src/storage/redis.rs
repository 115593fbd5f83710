//! The Redis storage backend: the same log, vote, commit hint and snapshots as the embedded
//! backend, kept in Redis under a per-node, per-group namespace, so several nodes can share
//! one Redis server.
//!
//! Keys of group `g` of node `n` (prefix `p` = `REDIS_NAMESPACE`, default `sinkron`):
//!
//! ```text
//! p:n:g:log        hash: log index -> record (the embedded format: len | crc | JSON entry)
//! p:n:g:vote       the last vote (JSON)
//! p:n:g:purged     the last purged log id (JSON)
//! p:n:g:committed  the commit index hint (JSON)
//! p:n:g:snapshot   the latest snapshot (the embedded snapshot file's bytes)
//! p:n:g:writer     hash: the epoch of the group's current writer, and its last batch
//! ```
//!
//! Every batch of log changes goes to Redis as one script run (atomic, like a transaction),
//! and openraft hears "flushed" only after Redis answered it.
//!
//! **Fencing.** Opening a group increments its writer epoch, and every batch (and snapshot)
//! is stored only if the epoch is still the writer's own and the batch's sequence number is
//! past the last one stored. A writer of an earlier opening (a group closed and opened again
//! in the same process while Redis was unreachable, or another process under the same node
//! name) therefore cannot land a batch after the new opening read the log back, even if its
//! batch reaches Redis late: the batch is refused, its appends are never reported flushed,
//! and that group instance stops. A retry of a batch that did land (its answer was lost) is
//! recognised by its sequence number and counts as stored. If Redis cannot be reached, the writer
//! retries the same batch until it can: nothing is acknowledged that Redis did not
//! take, the group stops making progress (its node answers `503`), and it resumes by itself
//! when Redis is back. How durable an acknowledged entry is then depends on Redis' own
//! persistence (`appendonly yes` with `appendfsync always` matches the embedded backend);
//! the node warns at start-up when Redis keeps nothing on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::runtime::Handle;

use super::mem::{check_contiguous, clamp_committed, MemLog};
pub use super::redis_slot::RedisSlot;
use super::redis_slot::{redis_error, CALL_TIMEOUT};
use super::segment::decode_records;
use super::writer::{drain_batch, WriteOp};
use crate::types::{Entry, LogId};

/// Most operations written in one batch.
const BATCH_MAX_OPS: usize = 4096;

/// Stores a batch if the fence allows it. `KEYS`: the writer hash, the log hash. `ARGV`:
/// the writer's epoch, the batch's sequence number, then the operations: `h index record`
/// (set a log record), `d index` (delete one), `s key bytes` (set a key). Answers 1 when
/// stored now, 2 when this sequence number was stored already, 0 when another opening owns
/// the group, -1 for a batch older than the last one stored, -2 when the fence itself is
/// gone (Redis lost the group's data). The sequence number is recorded after the
/// operations: Redis does not roll a script back, so a batch cut short by an error is
/// sent again whole (every operation sets or deletes a value) instead of counting as stored.
const STORE_FENCED: &str = r"
local fence = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if not fence[1] then return -2 end
if fence[1] ~= ARGV[1] then return 0 end
local last = tonumber(fence[2] or '0')
local seq = tonumber(ARGV[2])
if seq == last then return 2 end
if seq < last then return -1 end
local i = 3
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'h' then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'd' then
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
    i = i + 2
  else
    redis.call('SET', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  end
end
redis.call('HSET', KEYS[1], 'seq', ARGV[2])
return 1
";

/// Starts a new opening of a group: increments its writer epoch (so writers of earlier
/// openings are refused from now on) and answers it.
const OPEN_FENCE: &str = r"
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'seq', 0)
return epoch
";

/// The scripts, hashed once (their SHA1 is what `EVALSHA` sends).
static STORE_FENCED_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(STORE_FENCED));
static OPEN_FENCE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(OPEN_FENCE));

/// One change of a stored batch.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// Set log record `index`.
    Record(u64, Vec<u8>),
    /// Delete log record `index`.
    Delete(u64),
    /// Set a key of the group's namespace (see [`Keys`]) to these bytes.
    Set(String, Vec<u8>),
}

/// What Redis did with a fenced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now.
    Now,
    /// A retry of a batch stored already (its first answer was lost).
    Already,
    /// Refused: another opening of the group owns it.
    Fenced,
    /// Refused: older than the last batch stored (a late copy of an earlier attempt).
    Stale,
    /// Refused: the fence is gone, so Redis lost this group's data (a restart without
    /// persistence, a `FLUSHALL`).
    Lost,
}

/// The writer fence of one opening of a group: its epoch and the next batch's number.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    epoch: i64,
    next: u64,
}

impl Fence {
    /// Begins a new opening of the group of `keys`: writers of earlier openings are
    /// refused from now on.
    pub async fn open(conn: &mut ConnectionManager, keys: &Keys) -> io::Result<Self> {
        let epoch: i64 =
            OPEN_FENCE_SCRIPT.key(keys.key("writer")).invoke_async(conn).await.map_err(redis_error)?;
        Ok(Self { epoch, next: 1 })
    }

    /// Stores `ops` as batch `seq` of this opening, if the fence allows it.
    pub async fn store(
        &self,
        conn: &mut ConnectionManager,
        keys: &Keys,
        seq: u64,
        ops: &[StoreOp],
    ) -> redis::RedisResult<Stored> {
        let mut call = STORE_FENCED_SCRIPT.key(keys.key("writer"));
        call.key(keys.key("log")).arg(self.epoch).arg(seq);
        for op in ops {
            match op {
                StoreOp::Record(index, record) => call.arg("h").arg(*index).arg(record.as_slice()),
                StoreOp::Delete(index) => call.arg("d").arg(*index),
                StoreOp::Set(key, bytes) => call.arg("s").arg(key).arg(bytes.as_slice()),
            };
        }
        let answer: i64 = call.invoke_async(conn).await?;
        Ok(match answer {
            1 => Stored::Now,
            2 => Stored::Already,
            0 => Stored::Fenced,
            -2 => Stored::Lost,
            _ => Stored::Stale,
        })
    }

    /// Takes the next batch's sequence number.
    fn take(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        seq
    }
}

/// Connects to the Redis server of `settings` (password and TLS as given), failing after a
/// bounded wait.
pub async fn connect(settings: &crate::config::RedisSettings) -> io::Result<ConnectionManager> {
    let (host, port) = (&settings.host, settings.port);
    let addr = if settings.tls {
        redis::ConnectionAddr::TcpTls { host: host.clone(), port, insecure: false, tls_params: None }
    } else {
        redis::ConnectionAddr::Tcp(host.clone(), port)
    };
    let mut redis_settings = redis::RedisConnectionInfo::default();
    if let Some(password) = &settings.password {
        redis_settings = redis_settings.set_password(password.clone());
    }
    let info = redis::IntoConnectionInfo::into_connection_info(addr)
        .map_err(redis_error)?
        .set_redis_settings(redis_settings);
    let client = match (&settings.ca_file, settings.tls) {
        (Some(ca), true) => {
            let root_cert = std::fs::read(ca)
                .map_err(|e| redis_error(format!("read REDIS_CA_FILE {}: {e}", ca.display())))?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
            redis::Client::build_with_tls(info, certificates).map_err(redis_error)?
        }
        _ => redis::Client::open(info).map_err(redis_error)?,
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(2);
    tokio::time::timeout(Duration::from_secs(10), ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| redis_error(format!("no answer from {host}:{port} within 10 s")))?
        .map_err(redis_error)
}

/// Logs a warning when the Redis server persists nothing (no AOF and no RDB saves).
pub async fn warn_if_volatile(conn: &mut ConnectionManager) {
    let appendonly: Option<Vec<String>> =
        redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(conn).await.ok();
    let save: Option<Vec<String>> = redis::cmd("CONFIG").arg("GET").arg("save").query_async(conn).await.ok();
    let aof = appendonly.and_then(|v| v.get(1).cloned()).unwrap_or_default() == "yes";
    let rdb = save.and_then(|v| v.get(1).cloned()).is_some_and(|s| !s.trim().is_empty());
    if !aof && !rdb {
        tracing::warn!(
            "the Redis server keeps nothing on disk (appendonly no, no save points): \
             a Redis restart loses every Raft log; enable appendonly yes"
        );
    } else if !aof {
        tracing::warn!("the Redis server has appendonly off: only periodic RDB saves protect the Raft log");
    }
}

/// The key names of one group of one node.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `namespace:node:group`.
    pub fn new(namespace: &str, node: &str, group: u64) -> Self {
        Self { prefix: format!("{namespace}:{node}:{group}") }
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    /// Key of a metadata file name of the embedded backend (`vote.json` -> `...:vote`).
    fn meta(&self, file_name: &str) -> String {
        self.key(file_name.trim_end_matches(".json"))
    }

    /// The snapshot slot, written only while `fence` is the group's current opening.
    pub fn snapshot(&self, conn: ConnectionManager, fence: Fence) -> RedisSlot {
        RedisSlot::new(conn, self.key("snapshot")).fenced(self.key("writer"), fence.epoch)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: Option<Vec<u8>>) -> io::Result<Option<T>> {
    match bytes {
        Some(b) => serde_json::from_slice(&b).map_err(io::Error::other),
        None => Ok(None),
    }
}

/// Reads a group's log back from Redis.
pub async fn recover(conn: &mut ConnectionManager, keys: &Keys) -> io::Result<(MemLog, BTreeSet<u64>)> {
    let stored: BTreeMap<u64, Vec<u8>> = conn.hgetall(keys.key("log")).await.map_err(redis_error)?;
    let vote = parse_json(conn.get(keys.meta("vote.json")).await.map_err(redis_error)?)?;
    let last_purged: Option<LogId> =
        parse_json(conn.get(keys.meta("purged.json")).await.map_err(redis_error)?)?;
    let hint: Option<LogId> =
        parse_json(conn.get(keys.meta("committed.json")).await.map_err(redis_error)?).unwrap_or(None);
    let mut entries = BTreeMap::new();
    for (index, record) in &stored {
        let decoded = decode_records(record);
        let [only] = decoded.records.as_slice() else {
            return Err(io::Error::other(format!("log record {index} in Redis is corrupt")));
        };
        let entry: Entry = serde_json::from_slice(only.payload).map_err(io::Error::other)?;
        entries.insert(*index, entry);
    }
    if let Some(purged) = &last_purged {
        entries = entries.split_off(&(purged.index + 1));
    }
    check_contiguous(&entries)?;
    let committed = clamp_committed(hint, &entries, last_purged);
    let indexes = stored.keys().copied().collect();
    Ok((MemLog { entries, last_purged, vote, committed }, indexes))
}

/// Opens one group's log and state machine on Redis: reads the log back, starts the writer
/// thread and loads the latest snapshot. Must run inside a tokio runtime.
pub async fn open_group<S: super::state_machine::Machine>(
    conn: &mut ConnectionManager,
    keys: Keys,
    initial: S,
) -> io::Result<(super::LogStore, super::StateMachineStore<S>)> {
    // Fenced first: whatever an earlier opening's writer still lands from here on is refused,
    // so the log read back below is the one this opening continues.
    let fence = Fence::open(conn, &keys).await?;
    let (mem, stored) = recover(conn, &keys).await?;
    let health = super::StorageHealth::default();
    let writer = RedisWriter {
        conn: conn.clone(),
        keys: keys.clone(),
        stored,
        runtime: Handle::current(),
        health: health.clone(),
        fence,
        fenced: false,
    };
    let log = super::LogStore::start(mem, health, move |rx| writer.run(rx)).map_err(io::Error::other)?;
    let sm = super::StateMachineStore::open_with(
        super::SnapshotStore::Redis(keys.snapshot(conn.clone(), fence)),
        initial,
    )
    .await
    .map_err(io::Error::other)?;
    Ok((log, sm))
}

/// Writes a group's log changes to Redis, in order, from a thread of its own.
pub struct RedisWriter {
    /// Connection (reconnects by itself).
    pub conn: ConnectionManager,
    /// The group's keys.
    pub keys: Keys,
    /// Log indexes present in Redis.
    pub stored: BTreeSet<u64>,
    /// The runtime the connection lives on.
    pub runtime: Handle,
    /// Reports an outage to the API while it lasts.
    pub health: super::StorageHealth,
    /// This opening's fence.
    pub fence: Fence,
    /// Whether another opening took the group over: nothing more is stored.
    pub fenced: bool,
}

enum Waiter {
    Flushed(super::writer::Flushed),
    Done(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl RedisWriter {
    /// Runs until every sender of `rx` is gone.
    pub fn run(mut self, rx: Receiver<WriteOp>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let batch = drain_batch(&rx, first, BATCH_MAX_OPS);
            self.write_batch(batch);
        }
    }

    fn write_batch(&mut self, batch: Vec<WriteOp>) {
        let mut ops = Vec::new();
        let mut waiters = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                WriteOp::Append { records, done } => {
                    for (index, record) in records {
                        ops.push(StoreOp::Record(index, record));
                        self.stored.insert(index);
                    }
                    waiters.push(Waiter::Flushed(done));
                }
                WriteOp::Truncate { from_index, done } => {
                    let gone = self.stored.split_off(&from_index);
                    ops.extend(gone.into_iter().map(StoreOp::Delete));
                    waiters.push(Waiter::Done(done));
                }
                WriteOp::Purge { upto, purged, done } => {
                    ops.push(StoreOp::Set(self.keys.meta("purged.json"), purged));
                    let keep = self.stored.split_off(&(upto + 1));
                    let gone = std::mem::replace(&mut self.stored, keep);
                    ops.extend(gone.into_iter().map(StoreOp::Delete));
                    waiters.push(Waiter::Done(done));
                }
                WriteOp::Meta { name, bytes, done } => {
                    ops.push(StoreOp::Set(self.keys.meta(name), bytes));
                    waiters.push(Waiter::Done(done));
                }
                // At most one every `HINT_INTERVAL` (the log sends no more): a hint only
                // saves re-applying entries at start-up, not worth a Redis write per commit.
                WriteOp::CommittedHint(bytes) => {
                    ops.push(StoreOp::Set(self.keys.meta("committed.json"), bytes))
                }
            }
        }
        let outcome = if ops.is_empty() { Ok(()) } else { self.store_until_answered(&ops) };
        for waiter in waiters {
            let result = outcome.as_ref().copied().map_err(|e| io::Error::new(e.kind(), e.to_string()));
            match waiter {
                Waiter::Flushed(done) => done.complete(result),
                Waiter::Done(tx) => {
                    let _ = tx.send(result);
                }
            }
        }
    }

    /// Stores `ops` as this opening's next batch, retrying with backoff until Redis answers;
    /// an error once another opening owns the group (then and ever after).
    fn store_until_answered(&mut self, ops: &[StoreOp]) -> io::Result<()> {
        let fenced =
            || io::Error::other("another opening of this group owns its log in Redis; this one stopped");
        if self.fenced {
            return Err(fenced());
        }
        let seq = self.fence.take();
        let mut pause = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            let mut conn = self.conn.clone();
            let (fence, keys) = (self.fence, &self.keys);
            let outcome = self.runtime.block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, fence.store(&mut conn, keys, seq, ops)).await
            });
            match outcome {
                Ok(Ok(Stored::Now | Stored::Already)) => {
                    if failures > 0 {
                        tracing::info!(failures, "Redis is reachable again; the Raft log is being written");
                        self.health.ok();
                    }
                    return Ok(());
                }
                Ok(Ok(Stored::Fenced | Stored::Stale)) => {
                    self.fenced = true;
                    tracing::error!(
                        keys = %self.keys.prefix,
                        "another opening of this group took over its Redis log; this instance stops writing"
                    );
                    return Err(fenced());
                }
                Ok(Ok(Stored::Lost)) => {
                    self.fenced = true;
                    self.health.failing(format!(
                        "Redis lost the data of group {} (its writer fence is gone: a restart without persistence, or a FLUSHALL); restart this node",
                        self.keys.prefix
                    ));
                    tracing::error!(
                        keys = %self.keys.prefix,
                        "Redis no longer holds this group's writer fence, so it lost the group's data; the group stops writing, restart the node"
                    );
                    return Err(fenced());
                }
                Ok(Err(e)) => self.unavailable(failures, &e.to_string()),
                Err(_) => self.unavailable(failures, "no answer in time"),
            }
            failures += 1;
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

impl RedisWriter {
    fn unavailable(&self, failures: u32, reason: &str) {
        self.health.failing(format!("the Redis storage backend is unreachable ({reason}); retrying"));
        if failures.is_multiple_of(10) {
            tracing::error!(
                reason,
                "cannot write the Raft log to Redis; nothing is acknowledged until it can"
            );
        }
    }
}
