//! The production topology with real programs: `haproxy` (with `deploy/haproxy.cfg`) in
//! front of three nodes on the Redis backend. Clients talk only to HAProxy, the leader is
//! killed behind it, and the clients keep working.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sinkron_client::{Client, LockOptions};
use support::{eventually, free_port, TestCluster};

const FORM: Duration = Duration::from_secs(20);

struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_haproxy(bind_port: u16, nodes: &[String]) -> Option<HaProxy> {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg");
    let spawned = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .env("SINKRON_LB_BIND", format!("127.0.0.1:{bind_port}"))
        .env("SINKRON_NODE1", &nodes[0])
        .env("SINKRON_NODE2", &nodes[1])
        .env("SINKRON_NODE3", &nodes[2])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Some(HaProxy(child)),
        Err(e) => {
            eprintln!("\n*** SKIPPED: haproxy could not be started ({e}). Install it (apt-get install haproxy) to run this test. ***\n");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_behind_haproxy_keep_working_when_the_leader_dies() {
    let Some((mut cluster, redis, _redis_dir)) = TestCluster::start_on_redis(3, "lb") else { return };
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr()).collect();
    let lb_port = free_port();
    let Some(_haproxy) = start_haproxy(lb_port, &addrs) else { return };
    let lb = Client::with_timeout(&format!("127.0.0.1:{lb_port}"), Duration::from_secs(5));
    eventually(FORM, || lb.ready()).await;

    for i in 0..20 {
        lb.kv_put(&format!("via-lb-{i}"), json!(i)).await.expect("write through haproxy");
    }
    let options =
        LockOptions { client_id: "lb-client".into(), mode: None, ttl_ms: Some(60_000), wait_ms: Some(0) };
    let grant = lb.acquire("lb-lock", &options).await.expect("lock through haproxy");

    cluster.kill(leader);
    // Clients only know HAProxy. Requests fail at most until HAProxy's health checks drop
    // the dead node and the survivors elect a leader; count how long that takes.
    let started = Instant::now();
    for i in 0..20 {
        let key = format!("after-kill-{i}");
        eventually(FORM, || lb.kv_put(&key, json!(i))).await;
    }
    let recovered_in = started.elapsed();
    assert!(recovered_in < FORM, "clients recovered in {recovered_in:?}");
    for i in 0..20 {
        let got = lb.kv_get(&format!("via-lb-{i}")).await.expect("read through haproxy");
        assert_eq!(got.map(|v| v.value), Some(json!(i)));
    }
    let state = lb.lock_status("lb-lock").await.expect("lock status");
    assert_eq!(state["holders"][0]["fence"], grant.fence, "the lock survived the failover: {state}");
    lb.release("lb-lock", "lb-client").await.expect("release through haproxy");
    drop(redis);
}
