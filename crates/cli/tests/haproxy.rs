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
    spawn_haproxy("haproxy.cfg", bind_port, nodes, &[])
}

/// Runs `haproxy` with `deploy/<file>` and the node addresses in its environment.
fn spawn_haproxy(file: &str, bind_port: u16, nodes: &[String], env: &[(&str, String)]) -> Option<HaProxy> {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file);
    let spawned = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
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
    let raft = reqwest::Client::new().post(format!("http://127.0.0.1:{lb_port}/raft/0/write")).send().await;
    assert_eq!(raft.expect("answer").status().as_u16(), 403, "HAProxy never forwards /raft/*");
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
    assert_eq!(state.holders[0].fence, grant.fence, "the lock survived the failover: {state:?}");
    lb.release("lb-lock", "lb-client").await.expect("release through haproxy");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_terminates_tls_and_verifies_the_nodes_against_the_ca() {
    let mut cluster = TestCluster::prepare(3, &[]);
    cluster.use_tls();
    for i in 0..3 {
        cluster.spawn(i, &[]);
    }
    cluster.wait_leader(&cluster.all(), FORM).await;
    let certs = cluster.certs.clone().expect("certs");
    // HAProxy's own certificate: server-only, so it could not pose as a node.
    let out = Command::new(support::sinkron_bin())
        .args(["certs", "--server-only", "--dir"])
        .arg(&certs)
        .arg("lb")
        .output()
        .expect("sinkron certs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle = certs.join("lb-bundle.pem");
    let mut pem = std::fs::read(certs.join("lb.pem")).expect("cert");
    pem.extend(std::fs::read(certs.join("lb-key.pem")).expect("key"));
    std::fs::write(&bundle, pem).expect("bundle");
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr()).collect();
    let lb_port = free_port();
    let env = [
        ("SINKRON_LB_CERT", bundle.display().to_string()),
        ("SINKRON_CA_FILE", certs.join("ca.pem").display().to_string()),
    ];
    let Some(_haproxy) = spawn_haproxy("haproxy-tls.cfg", lb_port, &addrs, &env) else { return };
    let lb = Client::connect(
        &format!("https://127.0.0.1:{lb_port}"),
        Duration::from_secs(5),
        &cluster.credentials,
    )
    .expect("client");
    eventually(FORM, || lb.ready()).await;
    lb.kv_put("via-tls-lb", json!(1)).await.expect("write through haproxy over TLS");
    let got = cluster.client(2).kv_get("via-tls-lb").await.expect("read at a node");
    assert_eq!(got.map(|v| v.value), Some(json!(1)));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).expect("ca")).expect("pem");
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let raft = https.post(format!("https://127.0.0.1:{lb_port}/raft/0/read-index")).send().await;
    assert_eq!(raft.expect("answer").status().as_u16(), 403, "HAProxy never forwards /raft/*");
    // The server-only certificate is refused as a node's client certificate.
    let mut pem = std::fs::read(certs.join("lb-key.pem")).expect("key");
    pem.extend(std::fs::read(certs.join("lb.pem")).expect("cert"));
    let posing = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).expect("ca")).expect("pem"),
        )
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .build()
        .expect("client");
    match posing.post(format!("{}/raft/0/read-index", cluster.url(0))).send().await {
        Err(_) => {}
        Ok(resp) => assert_eq!(resp.status().as_u16(), 401, "a server-only certificate is no node's"),
    }
}
