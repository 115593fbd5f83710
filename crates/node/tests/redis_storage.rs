//! The Redis backend against a real `redis-server`: openraft's storage conformance suite,
//! a restart that reads everything back, and the fence between openings of one group.

#[path = "../../cli/tests/support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader};
use redis_server::RedisServer;
use sinkron_core::{Batch, Command, Request};
use sinkron_node::payload::Payload;
use sinkron_node::storage::redis::{connect, open_group, Fence, Keys, StoreOp, Stored};
use sinkron_node::storage::{LogStore, StateMachineStore};
use sinkron_node::types::{StorageError, TypeConfig};

static NEXT_NAMESPACE: AtomicU64 = AtomicU64::new(0);

async fn connection(port: u16) -> redis::aio::ConnectionManager {
    let settings = sinkron_node::config::RedisSettings {
        host: "127.0.0.1".into(),
        port,
        password: None,
        tls: false,
        ca_file: None,
    };
    connect(&settings).await.expect("connect to redis")
}

async fn open(port: u16, namespace: &str) -> (LogStore, StateMachineStore) {
    let mut conn = connection(port).await;
    open_group(&mut conn, Keys::new(namespace, "node1", 0), sinkron_core::Group0State::default())
        .await
        .expect("open the group on redis")
}

struct Builder {
    port: u16,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for Builder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError> {
        // Every store of the suite starts empty: a namespace of its own on the same server.
        let namespace =
            format!("suite{}-{}", std::process::id(), NEXT_NAMESPACE.fetch_add(1, Ordering::SeqCst));
        let (log, sm) = open(self.port, &namespace).await;
        Ok(((), log, sm))
    }
}

#[test]
fn redis_store_passes_openraft_suite() -> Result<(), StorageError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(server) = RedisServer::start(dir.path()) else { return Ok(()) };
    Suite::test_all(Builder { port: server.port })
}

fn put_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let request = Request {
        request_id: None,
        command: Command::KvPut {
            key: format!("k{index}"),
            value: index.into(),
            if_version: None,
            fence: None,
        },
    };
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(
            Payload::new(Batch { at_ms: index, requests: vec![request], seed: None }).expect("encodes"),
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_log_survives_a_redis_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(server) = RedisServer::start(dir.path()) else { return };
    let port = server.port;
    {
        let (mut log, _sm) = open(port, "restart").await;
        log.blocking_append((1..=30).map(|i| put_entry(1, i))).await.expect("append");
        log.truncate(log_id(1, 1, 26)).await.expect("truncate");
        log.blocking_append((26..=28).map(|i| put_entry(2, i))).await.expect("append after truncate");
        log.purge(log_id(1, 1, 10)).await.expect("purge");
        log.save_vote(&openraft::Vote::new(2, 1)).await.expect("vote");
    }
    drop(server);
    let _server = RedisServer::start_on(dir.path(), port).expect("restart redis-server");
    let (mut log, _sm) = open(port, "restart").await;
    let indexes: Vec<u64> =
        log.try_get_log_entries(0..).await.expect("read").iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (11..=28).collect::<Vec<_>>());
    let e27 = log.try_get_log_entries(27..=27).await.expect("read");
    assert_eq!(e27[0].log_id.leader_id.term, 2);
    assert_eq!(log.read_vote().await.expect("vote"), Some(openraft::Vote::new(2, 1)));
}

/// The log indexes and terms a fresh opening of `namespace` reads back.
async fn read_back(port: u16, namespace: &str) -> Vec<(u64, u64)> {
    let (mut log, _sm) = open(port, namespace).await;
    let entries = log.try_get_log_entries(0..).await.expect("read");
    entries.iter().map(|e| (e.log_id.index, e.log_id.leader_id.term)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_earlier_opening_of_a_group_cannot_write_once_it_is_opened_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(server) = RedisServer::start(dir.path()) else { return };
    let port = server.port;
    let (mut earlier, _sm) = open(port, "reopen").await;
    earlier.blocking_append((1..=3).map(|i| put_entry(1, i))).await.expect("append");
    // The group is opened again (closed and reopened on this node, or a second process
    // under the same name) while the earlier opening is still alive.
    let (mut later, _later_sm) = open(port, "reopen").await;
    let refused = earlier.blocking_append((4..=5).map(|i| put_entry(1, i))).await;
    assert!(refused.is_err(), "an earlier opening stored entries after the group was opened again");
    assert!(earlier.save_vote(&openraft::Vote::new(9, 1)).await.is_err(), "an earlier opening stored a vote");
    later.blocking_append([put_entry(2, 4)]).await.expect("the later opening appends");
    assert_eq!(read_back(port, "reopen").await, vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_batch_is_stored_once_and_never_after_a_later_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(server) = RedisServer::start(dir.path()) else { return };
    let mut conn = connection(server.port).await;
    let keys = Keys::new("fence", "node1", 3);
    let record = |index: u64, byte: u8| vec![StoreOp::Record(index, vec![byte; 3])];
    let fence = Fence::open(&mut conn, &keys).await.expect("open the fence");
    let shared = conn.clone();
    let store = |seq, ops: Vec<StoreOp>| {
        let mut conn = shared.clone();
        let keys = keys.clone();
        async move { fence.store(&mut conn, &keys, seq, &ops).await.expect("redis answers") }
    };
    assert_eq!(store(1, record(1, b'a')).await, Stored::Now);
    // A retry of a batch whose answer was lost: counted as stored, not applied twice.
    assert_eq!(store(1, record(1, b'x')).await, Stored::Already);
    let hash = || {
        let mut conn = shared.clone();
        async move {
            let log: std::collections::BTreeMap<u64, Vec<u8>> =
                redis::AsyncCommands::hgetall(&mut conn, "fence:node1:3:log")
                    .await
                    .expect("read the log hash");
            log.into_iter().collect::<Vec<_>>()
        }
    };
    assert_eq!(hash().await, vec![(1, b"aaa".to_vec())], "the retry was not applied again");
    assert_eq!(store(2, vec![StoreOp::Record(2, b"bbb".to_vec()), StoreOp::Delete(1)]).await, Stored::Now);
    // A late copy of batch 1 would bring record 1 back: refused.
    assert_eq!(store(1, record(1, b'a')).await, Stored::Stale);
    let log: std::collections::BTreeMap<u64, Vec<u8>> =
        redis::AsyncCommands::hgetall(&mut conn.clone(), "fence:node1:3:log")
            .await
            .expect("read the log hash");
    assert_eq!(log.into_iter().collect::<Vec<_>>(), vec![(2, b"bbb".to_vec())]);

    // A new opening: the earlier one's batches and snapshots are refused from then on.
    let snapshot = keys.snapshot(conn.clone(), fence);
    snapshot.set(b"old".to_vec()).await.expect("a snapshot of the current opening is stored");
    let _later = Fence::open(&mut conn, &keys).await.expect("open again");
    assert_eq!(store(3, record(3, b'c')).await, Stored::Fenced);
    assert!(snapshot.set(b"stale".to_vec()).await.is_err(), "a fenced snapshot was stored");
    assert_eq!(snapshot.get().await.expect("read the snapshot"), Some(b"old".to_vec()));

    // Redis lost the group's data (a restart without persistence): the fence is gone, and
    // the writer is told so instead of writing on top of what was lost.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut shared.clone()).await.expect("flush");
    assert_eq!(store(4, record(4, b'd')).await, Stored::Lost);
    assert_eq!(hash().await, vec![]);
}
