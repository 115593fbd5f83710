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
//! ```
//!
//! Every batch of log changes goes to Redis as one `MULTI`/`EXEC` transaction, and openraft
//! hears "flushed" only after Redis answered it. If Redis cannot be reached, the writer
//! retries the same transaction until it can: nothing is acknowledged that Redis did not
//! take, the group stops making progress (its node answers `503`), and it resumes by itself
//! when Redis is back. How durable an acknowledged entry is then depends on Redis' own
//! persistence (`appendonly yes` with `appendfsync always` matches the embedded backend);
//! the node warns at start-up when Redis keeps nothing on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
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

/// Most operations written in one transaction.
const BATCH_MAX_OPS: usize = 4096;

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

    /// The snapshot slot.
    pub fn snapshot(&self, conn: ConnectionManager) -> RedisSlot {
        RedisSlot::new(conn, self.key("snapshot"))
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
    let (mem, stored) = recover(conn, &keys).await?;
    let health = super::StorageHealth::default();
    let writer = RedisWriter {
        conn: conn.clone(),
        keys: keys.clone(),
        stored,
        runtime: Handle::current(),
        health: health.clone(),
        hint_written_at: None,
    };
    let log = super::LogStore::start(mem, health, move |rx| writer.run(rx)).map_err(io::Error::other)?;
    let sm = super::StateMachineStore::open_with(
        super::SnapshotStore::Redis(keys.snapshot(conn.clone())),
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
    /// When a commit hint was last written; hints are written at most every 200 ms.
    pub hint_written_at: Option<std::time::Instant>,
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
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut waiters = Vec::with_capacity(batch.len());
        let log = self.keys.key("log");
        for op in batch {
            match op {
                WriteOp::Append { records, done } => {
                    for (index, record) in records {
                        pipe.hset(&log, index, record).ignore();
                        self.stored.insert(index);
                    }
                    waiters.push(Waiter::Flushed(done));
                }
                WriteOp::Truncate { from_index, done } => {
                    let gone: Vec<u64> = self.stored.split_off(&from_index).into_iter().collect();
                    if !gone.is_empty() {
                        pipe.hdel(&log, gone).ignore();
                    }
                    waiters.push(Waiter::Done(done));
                }
                WriteOp::Purge { upto, purged, done } => {
                    pipe.set(self.keys.meta("purged.json"), purged).ignore();
                    let keep = self.stored.split_off(&(upto + 1));
                    let gone: Vec<u64> = std::mem::replace(&mut self.stored, keep).into_iter().collect();
                    if !gone.is_empty() {
                        pipe.hdel(&log, gone).ignore();
                    }
                    waiters.push(Waiter::Done(done));
                }
                WriteOp::Meta { name, bytes, done } => {
                    pipe.set(self.keys.meta(name), bytes).ignore();
                    waiters.push(Waiter::Done(done));
                }
                WriteOp::CommittedHint(bytes) => {
                    // A hint only saves re-applying entries at start-up: not worth a Redis
                    // write (and fsync) per commit.
                    let due =
                        self.hint_written_at.is_none_or(|t| t.elapsed() >= super::writer::HINT_INTERVAL);
                    if due {
                        pipe.set(self.keys.meta("committed.json"), bytes).ignore();
                        self.hint_written_at = Some(std::time::Instant::now());
                    }
                }
            }
        }
        if pipe.cmd_iter().next().is_some() {
            self.execute_until_stored(&pipe);
        }
        for waiter in waiters {
            match waiter {
                Waiter::Flushed(done) => done.complete(Ok(())),
                Waiter::Done(tx) => {
                    let _ = tx.send(Ok(()));
                }
            }
        }
    }

    /// Runs the transaction, retrying with backoff until Redis confirms it.
    fn execute_until_stored(&mut self, pipe: &redis::Pipeline) {
        let mut pause = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            let mut conn = self.conn.clone();
            let outcome = self.runtime.block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<()>(&mut conn)).await
            });
            match outcome {
                Ok(Ok(())) => {
                    if failures > 0 {
                        tracing::info!(failures, "Redis is reachable again; the Raft log is being written");
                        self.health.ok();
                    }
                    return;
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
