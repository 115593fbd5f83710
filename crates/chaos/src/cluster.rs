//! A cluster of real `sinkron serve` processes whose links run through our proxies.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sinkron_client::{Client, Credentials};
use tokio::net::TcpListener;

use crate::proxy::{self, LinkState, Links};

/// One node process.
pub struct ChaosNode {
    /// Name, `node1`...
    pub name: String,
    /// Address it serves on (clients use it directly).
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The cluster under test.
pub struct ChaosCluster {
    /// Nodes, by index.
    pub nodes: Vec<ChaosNode>,
    /// The link table the proxies obey.
    pub links: Links,
    bin: PathBuf,
    env: Vec<(String, String)>,
    cluster_addrs: String,
    proxies: Vec<tokio::task::JoinHandle<()>>,
    /// The certificates of a TLS run (`ca.pem`, `<node>.pem`, `<node>-key.pem`).
    certs: Option<PathBuf>,
    credentials: Credentials,
}

/// The nodes' shortest election timeout, in milliseconds; it is also their coherence
/// lease.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 300;

/// Settings every node gets: fast elections and bounded waits, so faults resolve quickly.
pub fn fast_env() -> Vec<(String, String)> {
    let election_min = format!("{}", ELECTION_TIMEOUT_MIN_MS as f64 / 1_000.0);
    [
        ("RAFT_ELECTION_TIMEOUT_MIN", election_min.as_str()),
        ("RAFT_ELECTION_TIMEOUT_MAX", "0.6"),
        ("RAFT_HEARTBEAT_INTERVAL", "0.1"),
        ("REQUEST_TIMEOUT_MS", "2000"),
        ("RUST_LOG", "info,openraft=warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Makes a CA and a certificate per node with `bin certs`, each valid for the node's own
/// address (clients call it there) and its proxy's (peers call it there).
fn make_certs(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<PathBuf> {
    let certs = dir.join("certs");
    let mut cmd = Command::new(bin);
    cmd.arg("certs").arg("--dir").arg(&certs);
    for i in 0..n {
        cmd.args(["--host", &proxy::node_ip(i).to_string(), "--host", &proxy::proxy_ip(i).to_string()]);
    }
    cmd.args((1..=n).map(|i| format!("node{i}")));
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "sinkron certs failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(certs)
}

/// A port free on both `a` and `b` (the node's and its proxy's address).
async fn shared_port(a: std::net::IpAddr, b: std::net::IpAddr) -> anyhow::Result<(TcpListener, u16)> {
    for _ in 0..50 {
        let listener = TcpListener::bind((b, 0)).await?;
        let port = listener.local_addr()?.port();
        if std::net::TcpListener::bind((a, port)).is_ok() {
            return Ok((listener, port));
        }
    }
    anyhow::bail!("no port free on both {a} and {b}")
}

impl ChaosCluster {
    /// Starts `n` nodes of `bin` under `dir`, with [`fast_env`] plus `extra`; with `tls`,
    /// they serve HTTPS and call each other (through the proxies) with mutual TLS.
    pub async fn start(
        bin: &Path,
        n: usize,
        dir: &Path,
        extra: &[(String, String)],
        tls: bool,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!((1..=9).contains(&n), "1 to 9 nodes");
        let links = Links::default();
        let mut nodes = Vec::new();
        let mut advertised = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..n {
            let (listener, port) = shared_port(proxy::node_ip(i), proxy::proxy_ip(i)).await?;
            let addr = SocketAddr::new(proxy::node_ip(i), port);
            proxies.push(tokio::spawn(proxy::start(listener, addr, i, links.clone())));
            let name = format!("node{}", i + 1);
            advertised.push(format!("{name}={}:{port}", proxy::proxy_ip(i)));
            nodes.push(ChaosNode {
                data_dir: dir.join(&name),
                log_path: dir.join(format!("{name}.log")),
                name,
                addr,
                child: None,
                paused: false,
            });
        }
        let mut env = fast_env();
        env.extend(extra.iter().cloned());
        let (certs, credentials) = if tls {
            let certs = make_certs(bin, dir, n)?;
            env.push(("TLS_CA_FILE".into(), certs.join("ca.pem").display().to_string()));
            let ca_pem = Some(std::fs::read(certs.join("ca.pem"))?);
            (Some(certs), Credentials { token: None, ca_pem })
        } else {
            (None, Credentials::default())
        };
        let mut cluster = Self {
            nodes,
            links,
            bin: bin.to_path_buf(),
            env,
            cluster_addrs: advertised.join(","),
            proxies,
            certs,
            credentials,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let log = File::options().create(true).append(true).open(&node.log_path)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .env("NODE_ID", &node.name)
            .env("NODE_PORT", node.addr.port().to_string())
            .env("NODE_BIND", node.addr.ip().to_string())
            .env("CLUSTER_ADDRS", &self.cluster_addrs)
            .env("DATA_DIR", &node.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(certs) = &self.certs {
            cmd.env("TLS_CERT_FILE", certs.join(format!("{}.pem", node.name)))
                .env("TLS_KEY_FILE", certs.join(format!("{}-key.pem", node.name)));
        }
        node.child = Some(cmd.spawn()?);
        node.paused = false;
        Ok(())
    }

    /// A client of node `i`, talking to it directly (not through a proxy).
    pub fn client(&self, i: usize, timeout: Duration) -> Client {
        let scheme = if self.certs.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}", self.nodes[i].addr);
        Client::connect(&endpoint, timeout, &self.credentials)
            .unwrap_or_else(|_| Client::with_timeout(&endpoint, timeout))
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[i].paused = false;
    }

    /// Starts node `i` again (after [`ChaosCluster::kill`]).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].child.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    fn signal(&mut self, i: usize, signal: Signal) {
        if let Some(child) = &self.nodes[i].child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// SIGSTOPs node `i`.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.nodes[i].paused = true;
    }

    /// SIGCONTs node `i`.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.nodes[i].paused = false;
    }

    /// Cuts every link between the nodes of `side` and the others, both ways.
    pub fn split(&self, side: &[usize]) {
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if side.contains(&a) != side.contains(&b) {
                    self.links.set(a, b, LinkState { cut: true, ..LinkState::default() });
                }
            }
        }
    }

    /// Cuts `from -> to` only.
    pub fn cut_one_way(&self, from: usize, to: usize) {
        self.links.set(from, to, LinkState { cut: true, ..LinkState::default() });
    }

    /// Delays every link by `delay`.
    pub fn delay_all(&self, delay: Duration) {
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a != b {
                    self.links.set(a, b, LinkState { delay, ..LinkState::default() });
                }
            }
        }
    }

    /// Restores every link, resumes paused nodes and restarts killed ones.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.links.heal();
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.restart(i)?;
        }
        Ok(())
    }

    /// The node every reachable node names as group 0's leader, if they agree.
    pub async fn leader(&self) -> Option<usize> {
        let mut seen = None;
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() || self.nodes[i].paused {
                continue;
            }
            let Ok(status) = self.client(i, Duration::from_millis(500)).cluster().await else { continue };
            let leader = status.leader.map(|l| l.id)?;
            if seen.as_ref().is_some_and(|s| *s != leader) {
                return None;
            }
            seen = Some(leader);
        }
        let name = seen?;
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits until every node is ready (a leader known, its log applied).
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        for i in 0..self.nodes.len() {
            let client = self.client(i, Duration::from_secs(1));
            while client.ready().await.is_err() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} not ready within {within:?}",
                    self.nodes[i].name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Every node's name and log as it is now.
    pub fn logs(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), std::fs::read_to_string(&n.log_path).unwrap_or_default()))
            .collect()
    }

    /// Copies every node's log into `dir`.
    pub fn save_logs(&self, dir: &Path) {
        for node in &self.nodes {
            let _ = std::fs::copy(&node.log_path, dir.join(format!("{}.log", node.name)));
        }
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.kill(i);
        }
        for proxy in &self.proxies {
            proxy.abort();
        }
    }
}
