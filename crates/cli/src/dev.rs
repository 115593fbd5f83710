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
use sinkron_client::Client;
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
    let mut children = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let child = Command::new(&exe)
            .arg("serve")
            .env("NODE_ID", &name)
            .env("NODE_PORT", port.to_string())
            .env("NODE_BIND", "127.0.0.1")
            .env("CLUSTER_ADDRS", &cluster_addrs)
            .env("DATA_DIR", args.data_dir.join(&name))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        children.push((name, child));
    }
    say!("Sinkron dev cluster: {} nodes, data in {}", args.nodes, args.data_dir.display());
    for (i, port) in ports.iter().enumerate() {
        say!("  node{}  http://127.0.0.1:{port}", i + 1);
    }
    let clients: Vec<Client> = ports
        .iter()
        .map(|p| Client::with_timeout(&format!("127.0.0.1:{p}"), Duration::from_secs(2)))
        .collect();
    tokio::select! {
        _ = announce_leader(&clients) => {}
        _ = int.recv() => return stop(children).await,
        _ = term.recv() => return stop(children).await,
    }
    say!("Press Ctrl-C to stop all nodes.");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    stop(children).await
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
                say!("Leader: {} at http://{} (term {})", leader.id, leader.addr, status.term);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
