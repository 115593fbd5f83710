//! `sinkron dev`: a local cluster of real node processes for trying Sinkron out.
//!
//! Each node is this same binary running `serve` as a child process, bound to `127.0.0.1`,
//! with embedded storage under one directory. Ctrl-C (or SIGTERM) stops all of them with
//! SIGTERM, so each shuts down cleanly and flushes its log.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sinkron_client::{Client, Credentials};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Port of node1; node N listens on base port + N - 1.
    #[arg(long, default_value_t = 8001)]
    base_port: u16,
    /// Directory holding each node's data (node1/, node2/, ...).
    #[arg(long, default_value = ".sinkron-dev")]
    data_dir: PathBuf,
    /// Delete the data directory first, starting a brand-new cluster.
    #[arg(long)]
    fresh: bool,
    /// Serve HTTPS with mutual TLS between the nodes: certificates are made under the data
    /// directory (certs/), and the CA to pass as --cacert is printed.
    #[arg(long)]
    tls: bool,
    /// Check bearer tokens: a tokens file with an admin, a write and a read principal is
    /// made under the data directory and its tokens printed (without --tls, the nodes also
    /// get a cluster secret, printed too).
    #[arg(long)]
    tokens: bool,
}

/// What the nodes of a dev cluster are started with beyond their addresses.
struct Secured {
    env: Vec<(String, String)>,
    /// The CA of a TLS cluster (`--tls`).
    ca: Option<PathBuf>,
    admin_token: Option<String>,
}

impl Secured {
    fn scheme(&self) -> &'static str {
        if self.ca.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// `--tls` adds certificates, `--tokens` principals; tokens without TLS need a cluster
/// secret: the exported `CLUSTER_SECRET`, or one made for this run.
fn secure(args: &DevArgs, names: &[String]) -> anyhow::Result<Secured> {
    let random = || format!("{:032x}", rand::random::<u128>());
    let mut secured = Secured { env: Vec::new(), ca: None, admin_token: None };
    let inherited = std::env::var("CLUSTER_SECRET").is_ok_and(|s| !s.is_empty());
    if args.tokens && !args.tls && !inherited {
        let secret = random();
        say!("  CLUSTER_SECRET={secret} (a node that joins needs it too)");
        secured.env.push(("CLUSTER_SECRET".to_string(), secret));
    }
    if args.tls {
        let dir = args.data_dir.join("certs");
        crate::certs::make(&dir, names, &[], 2, crate::certs::Usage::Node)?;
        secured.env.push(("TLS_CA_FILE".into(), dir.join("ca.pem").display().to_string()));
        secured.ca = Some(dir.join("ca.pem"));
    }
    if args.tokens {
        let path = args.data_dir.join("tokens");
        let tokens = [("admin", random()), ("writer", random()), ("reader", random())];
        let roles = ["admin", "write", "read"];
        let text: String = tokens
            .iter()
            .zip(roles)
            .map(|((name, token), role)| format!("{name}:{role}:{token}\n"))
            .collect();
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("create {}", args.data_dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        secured.env.push(("AUTH_TOKENS_FILE".into(), path.display().to_string()));
        for ((name, token), role) in tokens.iter().zip(roles) {
            say!("  token of {name} ({role}): {token}");
        }
        secured.admin_token = Some(tokens[0].1.clone());
    }
    Ok(secured)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        anyhow::bail!("--nodes must be between 1 and 9");
    }
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("remove {}", args.data_dir.display()))?;
    }
    // Registered before anything starts and kept until the end: a signal that arrives at any
    // moment (even between two phases) is never lost.
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let exe = std::env::current_exe().context("find the sinkron executable")?;
    let ports: Vec<u16> = (0..args.nodes).map(|i| args.base_port + i).collect();
    let cluster_addrs = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("node{i}")).collect();
    let secured = secure(&args, &names)?;
    let mut children = Vec::new();
    for (name, port) in names.iter().zip(&ports) {
        let mut command = Command::new(&exe);
        command.envs(secured.env.iter().map(|(k, v)| (k, v)));
        if args.tls {
            let certs = args.data_dir.join("certs");
            command
                .env("TLS_CERT_FILE", certs.join(format!("{name}.pem")))
                .env("TLS_KEY_FILE", certs.join(format!("{name}-key.pem")));
        }
        let child = command
            .arg("serve")
            .env("NODE_ID", name)
            .env("NODE_PORT", port.to_string())
            .env("NODE_BIND", "127.0.0.1")
            .env("CLUSTER_ADDRS", &cluster_addrs)
            .env("DATA_DIR", args.data_dir.join(name))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        children.push((name.clone(), child));
    }
    say!("Sinkron dev cluster: {} nodes, data in {}", args.nodes, args.data_dir.display());
    for ((name, child), port) in children.iter().zip(&ports) {
        let pid = child.id().map_or_else(String::new, |pid| format!("  (pid {pid})"));
        say!("  {name}  {}://127.0.0.1:{port}{pid}", secured.scheme());
    }
    if let Some(ca) = &secured.ca {
        say!("  CA: --cacert {} (or SINKRON_CACERT)", ca.display());
    }
    let credentials = Credentials {
        token: secured.admin_token.clone(),
        ca_pem: secured.ca.as_ref().map(std::fs::read).transpose().context("read the dev CA")?,
    };
    let clients: Vec<Client> = ports
        .iter()
        .map(|p| {
            let endpoint = format!("{}://127.0.0.1:{p}", secured.scheme());
            Client::connect(&endpoint, Duration::from_secs(2), &credentials)
        })
        .collect::<Result<_, _>>()?;
    tokio::select! {
        _ = announce_leader(&clients) => {}
        _ = until_all_exit(&mut children) => anyhow::bail!("every node of the dev cluster exited"),
        _ = int.recv() => return stop(children).await,
        _ = term.recv() => return stop(children).await,
    }
    say!("Press Ctrl-C to stop all nodes.");
    tokio::select! {
        _ = until_all_exit(&mut children) => anyhow::bail!("every node of the dev cluster exited"),
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    stop(children).await
}

/// Reports each node that exits on its own (a crash, a port taken, or a kill to try a
/// failure) while the others keep running; returns once none is left.
async fn until_all_exit(children: &mut Vec<(String, Child)>) {
    let mut check = tokio::time::interval(Duration::from_millis(250));
    while !children.is_empty() {
        check.tick().await;
        report_exits(children);
    }
}

/// Reports and forgets the nodes that exited on their own.
fn report_exits(children: &mut Vec<(String, Child)>) {
    children.retain_mut(|(name, child)| match child.try_wait() {
        Ok(Some(status)) => {
            say!("{name} exited on its own ({status}); the other nodes keep running");
            false
        }
        _ => true,
    });
}

/// Waits until every node answers and a leader is known, then prints it.
async fn announce_leader(clients: &[Client]) {
    for client in clients {
        while client.health().await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    loop {
        if let Ok(status) = clients[0].cluster().await {
            if let Some(leader) = status.leader {
                let scheme = client_scheme(&clients[0]);
                say!("Leader: {} at {scheme}://{} (term {})", leader.id, leader.addr, status.term);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn client_scheme(client: &Client) -> &str {
    client.endpoint().split_once("://").map_or("http", |(scheme, _)| scheme)
}

async fn stop(children: Vec<(String, Child)>) -> anyhow::Result<()> {
    say!("Stopping...");
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for (name, mut child) in children {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(Ok(status)) => say!("  {name} stopped ({status})"),
            _ => {
                let _ = child.kill().await;
                say!("  {name} did not stop in 10 s and was killed");
            }
        }
    }
    Ok(())
}
