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
    println!("Sinkron dev cluster: {} nodes, data in {}", args.nodes, args.data_dir.display());
    for (i, port) in ports.iter().enumerate() {
        println!("  node{}  http://127.0.0.1:{port}", i + 1);
    }
    let first = Client::with_timeout(&format!("127.0.0.1:{}", ports[0]), Duration::from_secs(2));
    tokio::select! {
        _ = announce_leader(&first) => {}
        _ = tokio::signal::ctrl_c() => return stop(children).await,
    }
    println!("Press Ctrl-C to stop all nodes.");
    wait_for_stop().await;
    stop(children).await
}

async fn announce_leader(client: &Client) {
    loop {
        if let Ok(status) = client.cluster().await {
            if let Some(leader) = status.leader {
                println!("Leader: {} at http://{} (term {})", leader.id, leader.addr, status.term);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn stop(children: Vec<(String, Child)>) -> anyhow::Result<()> {
    println!("Stopping...");
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for (name, mut child) in children {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(Ok(status)) => println!("  {name} stopped ({status})"),
            _ => {
                let _ = child.kill().await;
                println!("  {name} did not stop in 10 s and was killed");
            }
        }
    }
    Ok(())
}
