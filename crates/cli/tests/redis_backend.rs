//! A 3-node cluster on the Redis backend, against a real `redis-server`: SIGKILL and restart
//! of any node, a full-cluster restart, and Redis itself going away and coming back. Keys,
//! locks, write-through cache values and unacknowledged queue messages all survive.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use sinkron_client::{LockOptions, ReceiveOptions};
use support::queue_load::{check_at_least_once, drain, wait_queues_ready};
use support::redis_server::RedisServer;
use support::{eventually, TestCluster};

const FORM: Duration = Duration::from_secs(20);

fn exclusive(client_id: &str) -> LockOptions {
    LockOptions { client_id: client_id.into(), mode: None, ttl_ms: Some(600_000), wait_ms: Some(0) }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_backed_cluster_keeps_everything_acknowledged_through_kills_and_restarts() {
    let Some((mut cluster, redis, redis_dir)) = TestCluster::start_on_redis(3, "it") else { return };
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    for i in 0..30 {
        cluster.client(i % 3).kv_put(&format!("k{i}"), json!(i)).await.expect("write");
    }
    let lock = cluster.client(1).acquire("kept", &exclusive("owner")).await.expect("lock");
    let client = cluster.client(2);
    eventually(FORM, || client.cache_put("cached", json!("write-through"), true)).await;
    wait_queues_ready(&cluster.client(0), FORM).await;
    let mut unacked = BTreeMap::new();
    let mut bodies = BTreeSet::new();
    for i in 0..40 {
        let key = format!("k{}", i % 8);
        let sent = cluster.client(i % 3).queue_send("kept", json!(i), Some(&key)).await.expect("send");
        unacked.insert(sent.id, json!(i));
        bodies.insert(json!(i).to_string());
    }
    let options = ReceiveOptions { max: Some(5), visibility_ms: Some(1_000), wait_ms: Some(1_000) };
    let acked = cluster.client(0).queue_receive("kept", &options).await.expect("receive");
    for m in &acked {
        cluster.client(0).queue_ack("kept", &m.receipt).await.expect("ack");
        unacked.remove(&m.id);
    }
    // In flight (received, never acked) when the cluster dies: must come back.
    let in_flight = cluster.client(1).queue_receive("kept", &options).await.expect("receive");
    assert!(!in_flight.is_empty());
    assert!(!cluster.nodes[0].data_dir.join("groups").exists(), "nothing went to the embedded store");

    // SIGKILL a follower, then the leader, restarting each.
    let follower = (leader + 1) % 3;
    for victim in [follower, leader] {
        cluster.kill(victim);
        let others: Vec<usize> = cluster.all().into_iter().filter(|i| *i != victim).collect();
        cluster.wait_leader(&others, FORM).await;
        cluster.client(others[0]).kv_put(&format!("during-{victim}"), json!(victim)).await.expect("write");
        cluster.spawn(victim, &[]);
        cluster.wait_local_value(victim, &format!("during-{victim}"), &json!(victim), FORM).await;
    }

    // Every node at once.
    for i in cluster.all() {
        cluster.kill(i);
    }
    for i in cluster.all() {
        cluster.spawn(i, &[]);
    }
    cluster.wait_leader(&cluster.all(), FORM).await;
    for i in 0..30 {
        let (client, key) = (cluster.client(i % 3), format!("k{i}"));
        let got = eventually(FORM, || client.kv_get(&key)).await;
        assert_eq!(got.map(|v| v.value), Some(json!(i)), "k{i} survived");
    }
    let client = cluster.client(0);
    let cached = eventually(FORM, || client.cache_get("cached")).await;
    assert_eq!(
        cached.map(|v| v.value),
        Some(json!("write-through")),
        "the write-through cache value survived"
    );
    wait_queues_ready(&cluster.client(0), FORM).await;
    let consumers: Vec<_> = cluster.all().into_iter().map(|i| cluster.client(i)).collect();
    let consumed = drain(&consumers, "kept", &unacked, Duration::from_secs(30)).await;
    check_at_least_once(&unacked, &bodies, &consumed);
    for m in &acked {
        assert!(!consumed.deliveries.contains_key(&m.id), "acked message {} came back", m.id);
    }
    let state = cluster.client(2).lock_status("kept").await.expect("lock status");
    assert_eq!(state.holders[0].client_id, "owner", "{state:?}");
    assert_eq!(state.holders[0].fence, lock.fence, "{state:?}");

    // Redis goes away: nothing is acknowledged; it comes back: the cluster carries on.
    let redis_port = redis.port;
    drop(redis);
    let err = cluster.client(0).kv_put("while-redis-down", json!(1)).await.expect_err("no storage, no ack");
    assert!(matches!(err.code(), Some("unavailable" | "no_quorum")), "{err}");
    let ready = reqwest::get(format!("http://{}/ready", cluster.nodes[0].addr())).await.expect("ready");
    assert_eq!(ready.status().as_u16(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert!(body["message"].as_str().unwrap_or("").contains("Redis"), "the outage is named: {body}");
    let _redis = RedisServer::start_on(redis_dir.path(), redis_port).expect("restart redis-server");
    let client = cluster.client(0);
    eventually(FORM, || client.kv_put("after-redis-returned", json!(2))).await;
    let got = cluster.client(1).kv_get("after-redis-returned").await.expect("read");
    assert_eq!(got.map(|v| v.value), Some(json!(2)));
}
