//! The Redis backend against a real `redis-server`: openraft's storage conformance suite,
//! and a restart that reads everything back.

#[path = "../../cli/tests/support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader};
use redis_server::RedisServer;
use sinkron_core::{Batch, Command, Request};
use sinkron_node::payload::Payload;
use sinkron_node::storage::redis::{connect, open_group, Keys};
use sinkron_node::storage::{LogStore, StateMachineStore};
use sinkron_node::types::{StorageError, TypeConfig};

static NEXT_NAMESPACE: AtomicU64 = AtomicU64::new(0);

async fn open(port: u16, namespace: &str) -> (LogStore, StateMachineStore) {
    let settings = sinkron_node::config::RedisSettings {
        host: "127.0.0.1".into(),
        port,
        password: None,
        tls: false,
        ca_file: None,
    };
    let mut conn = connect(&settings).await.expect("connect to redis");
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
