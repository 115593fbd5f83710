//! A cluster of real `sinkron serve` processes on free 127.0.0.1 ports.
//!
//! Nodes run with short Raft timeouts so tests stay fast. Every child is killed when the
//! cluster is dropped; if the test panicked, the tail of each node's log is printed.

#![allow(dead_code)]

pub mod queue_load;
pub mod redis_server;

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sinkron_client::{Client, ClusterStatus, Credentials};
use tempfile::TempDir;

/// The binary under test.
pub fn sinkron_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sinkron"))
}

/// A port that was free a moment ago and that no other test of this process was given.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports that were free a moment ago, given to no other test
/// of this process.
///
/// A port the OS picks (`bind` to port 0) comes from its ephemeral range, the same range
/// the source ports of outgoing connections come from; between the pick and the node's
/// bind, a connection of a test running alongside could take it (it happened: `address
/// already in use`). Ports below that range are never handed out for outgoing
/// connections, so the tests draw from there, each process from its own offset.
pub fn free_ports(n: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low < LOW + 1_000 {
        // No room below the ephemeral range: let the OS pick, as well as it can.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        return listener.local_addr().expect("local addr").port();
    }
    let span = ephemeral_low - LOW - u32::from(n);
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..1_000 {
        let base = LOW + (offset + NEXT.fetch_add(u32::from(n), Ordering::Relaxed)) % span;
        let taken: Vec<_> =
            (0..u32::from(n)).map(|i| TcpListener::bind(("127.0.0.1", (base + i) as u16))).collect();
        if taken.iter().all(Result::is_ok) {
            return base as u16;
        }
    }
    panic!("no {n} free consecutive ports below {ephemeral_low}");
}

/// One node process.
pub struct TestNode {
    pub name: String,
    pub port: u16,
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

impl TestNode {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A cluster under test.
pub struct TestCluster {
    pub dir: TempDir,
    pub nodes: Vec<TestNode>,
    pub cluster_addrs: String,
    pub env: Vec<(String, String)>,
    /// Certificates of a TLS cluster (made by `sinkron certs`): `ca.pem`, `<node>.pem`,
    /// `<node>-key.pem`. Each node is started with its own.
    pub certs: Option<PathBuf>,
    /// What [`TestCluster::client`] presents: the CA of a TLS cluster, an admin token.
    pub credentials: Credentials,
}

/// Settings every test node gets: fast elections, bounded waits, quiet logs.
pub fn fast_env() -> Vec<(String, String)> {
    [
        ("RAFT_ELECTION_TIMEOUT_MIN", "0.3"),
        ("RAFT_ELECTION_TIMEOUT_MAX", "0.6"),
        ("RAFT_HEARTBEAT_INTERVAL", "0.1"),
        ("REQUEST_TIMEOUT_MS", "3000"),
        ("RUST_LOG", "info,openraft=error"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl TestCluster {
    /// Starts `n` nodes with [`fast_env`] plus `extra` settings.
    pub fn start(n: usize, extra: &[(&str, &str)]) -> Self {
        let mut cluster = Self::prepare(n, extra);
        for i in 0..n {
            cluster.spawn(i, &[]);
        }
        cluster
    }

    /// Starts `redis-server` and `n` nodes on the Redis backend, in a namespace named after
    /// `tag`. `None` (after a loud notice) when `redis-server` is missing.
    pub fn start_on_redis(n: usize, tag: &str) -> Option<(Self, redis_server::RedisServer, TempDir)> {
        let redis_dir = tempfile::tempdir().expect("temp dir");
        let redis = redis_server::RedisServer::start(redis_dir.path())?;
        let port = redis.port.to_string();
        let namespace = format!("{tag}{}", std::process::id());
        let env = [
            ("STORAGE_BACKEND", "redis"),
            ("REDIS_HOST", "127.0.0.1"),
            ("REDIS_PORT", port.as_str()),
            ("REDIS_NAMESPACE", namespace.as_str()),
        ];
        Some((Self::start(n, &env), redis, redis_dir))
    }

    /// Lays out `n` nodes without starting any; start them with [`TestCluster::spawn`].
    pub fn prepare(n: usize, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let cluster_addrs = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut env = fast_env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let name = format!("node{}", i + 1);
                TestNode {
                    data_dir: dir.path().join(&name),
                    log_path: dir.path().join(format!("{name}.log")),
                    name,
                    port: *port,
                    child: None,
                }
            })
            .collect();
        Self { dir, nodes, cluster_addrs, env, certs: None, credentials: Credentials::default() }
    }

    /// Makes a CA and a certificate per node (with `sinkron certs`); nodes spawned after
    /// this serve HTTPS with mutual TLS, and [`TestCluster::client`] trusts the CA.
    pub fn use_tls(&mut self) {
        let dir = self.dir.path().join("certs");
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        make_certs(&dir, &names);
        self.env.push(("TLS_CA_FILE".to_string(), dir.join("ca.pem").display().to_string()));
        self.credentials.ca_pem = Some(std::fs::read(dir.join("ca.pem")).expect("read the CA"));
        self.certs = Some(dir);
    }

    /// Writes a tokens file of `name:role:token` lines and makes the nodes check tokens;
    /// [`TestCluster::client`] then uses `client_token`.
    pub fn use_tokens(&mut self, lines: &str, client_token: &str) -> PathBuf {
        let path = self.dir.path().join("tokens");
        std::fs::write(&path, lines).expect("write the tokens file");
        self.env.push(("AUTH_TOKENS_FILE".into(), path.display().to_string()));
        self.credentials.token = Some(client_token.to_string());
        path
    }

    /// The URL scheme the nodes serve.
    pub fn scheme(&self) -> &'static str {
        if self.certs.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The base URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("{}://{}", self.scheme(), self.nodes[i].addr())
    }

    /// A client of node `i` with `credentials`.
    pub fn client_with(&self, i: usize, credentials: &Credentials) -> Client {
        Client::connect(&self.url(i), Duration::from_secs(20), credentials).expect("client")
    }

    /// Starts (or restarts) node `i`.
    pub fn spawn(&mut self, i: usize, extra: &[(&str, &str)]) {
        let node = &mut self.nodes[i];
        let log = File::options().create(true).append(true).open(&node.log_path).expect("open node log");
        let mut cmd = Command::new(sinkron_bin());
        cmd.arg("serve")
            .env("NODE_ID", &node.name)
            .env("NODE_PORT", node.port.to_string())
            .env("NODE_BIND", "127.0.0.1")
            .env("CLUSTER_ADDRS", &self.cluster_addrs)
            .env("DATA_DIR", &node.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(certs) = &self.certs {
            cmd.env("TLS_CERT_FILE", certs.join(format!("{}.pem", node.name)))
                .env("TLS_KEY_FILE", certs.join(format!("{}-key.pem", node.name)));
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        node.child = Some(cmd.spawn().expect("spawn sinkron serve"));
    }

    /// Adds a node that is not part of the initial membership (it starts in join mode).
    pub fn spawn_joiner(&mut self, name: &str) -> usize {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        self.nodes.push(TestNode {
            name: name.to_string(),
            port,
            child: None,
            data_dir: self.dir.path().join(name),
            log_path: self.dir.path().join(format!("{name}.log")),
        });
        let i = self.nodes.len() - 1;
        let named: Vec<String> = self.nodes.iter().map(|n| format!("{}={}", n.name, n.addr())).collect();
        let saved = std::mem::replace(&mut self.cluster_addrs, named.join(","));
        self.spawn(i, &[("CLUSTER_JOIN", "true")]);
        self.cluster_addrs = saved;
        let _ = addr;
        i
    }

    /// Sends `signal` to node `i`.
    pub fn signal(&self, i: usize, signal: Signal) {
        if let Some(child) = &self.nodes[i].child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes node `i` (SIGSTOP): it holds its connections and answers nothing.
    pub fn pause(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP);
        }
    }

    /// Lets a paused node `i` run again (SIGCONT).
    pub fn resume(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
    }

    /// SIGTERMs node `i` and waits up to 10 s for a clean exit; returns its exit code.
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        let mut child = self.nodes[i].child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn client(&self, i: usize) -> Client {
        self.client_with(i, &self.credentials)
    }

    /// Waits until the nodes in `among` agree on one leader in one term; returns its index.
    pub async fn wait_leader(&self, among: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(leader) = self.agreed_leader(among).await {
                return leader;
            }
            assert!(Instant::now() < deadline, "no agreed leader among {among:?} within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn agreed_leader(&self, among: &[usize]) -> Option<usize> {
        let mut seen: Option<(String, u64)> = None;
        for &i in among {
            let status = self.client(i).cluster().await.ok()?;
            let leader = (status.leader?.id, status.term);
            if seen.as_ref().is_some_and(|s| *s != leader) {
                return None;
            }
            seen = Some(leader);
        }
        let (name, _) = seen?;
        let index = self.nodes.iter().position(|n| n.name == name)?;
        let status = self.client(index).cluster().await.ok()?;
        (status.role == "leader").then_some(index)
    }

    /// Waits until every node in `among` answers `/ready` with `200`: it knows a leader, has
    /// applied what it knows is committed, and its cache joined.
    pub async fn wait_ready(&self, among: &[usize], within: Duration) {
        for &i in among {
            let client = self.client(i);
            eventually(within, || client.ready()).await;
        }
    }

    pub async fn status(&self, i: usize) -> ClusterStatus {
        self.client(i).cluster().await.expect("cluster status")
    }

    /// Waits until node `i`'s own state machine (a local read) has `key` = `value`.
    pub async fn wait_local_value(&self, i: usize, key: &str, value: &serde_json::Value, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(v)) = self.client(i).kv_get_with(key, "local").await {
                if &v.value == value {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not apply {key} = {value} within {within:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            // SINKRON_TEST_KEEP=1 keeps every node's data and full log for a post-mortem.
            if std::env::var_os("SINKRON_TEST_KEEP").is_some() {
                let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
                eprintln!("kept the cluster's files in {}", kept.keep().display());
            }
            for node in &self.nodes {
                let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- last lines of {} ----", node.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Runs `sinkron certs` for `names` into `dir`.
pub fn make_certs(dir: &std::path::Path, names: &[String]) {
    let out = Command::new(sinkron_bin())
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .args(names)
        .output()
        .expect("run sinkron certs");
    assert!(out.status.success(), "sinkron certs: {}", String::from_utf8_lossy(&out.stderr));
}

/// Retries `f` until it succeeds or `within` passes; returns the last error on timeout.
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("still failing after {within:?}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
