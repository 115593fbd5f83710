//! `sinkron bench http`: the HTTP floor. `GET /health` through every node measures what a
//! node's HTTP stack alone costs (no Raft, no cache); with `--ceiling` the same loop runs
//! against bare HTTP servers on loopback (one process each, nothing but a fixed answer), which
//! is the most this client can get from this machine: the ceiling that cache hits are
//! compared with.

use std::process::Stdio;
use std::time::Instant;

use tokio::io::AsyncBufReadExt;

use super::{connect, gather, report, summarize};

#[derive(clap::Args)]
pub(super) struct HttpBenchArgs {
    /// Comma-separated nodes; clients are spread over them round-robin.
    #[arg(long, env = "SINKRON_ENDPOINTS", default_value = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003")]
    endpoints: String,
    /// Load this many bare HTTP servers started for the run (on loopback ports the OS
    /// picks) instead of the nodes.
    #[arg(long, value_name = "SERVERS")]
    ceiling: Option<usize>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Total requests.
    #[arg(long, default_value_t = 100_000)]
    ops: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(super) struct CeilingServerArgs {
    /// Address to listen on; its port is printed on the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

pub(super) async fn http(args: HttpBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0 && args.ops > 0, "--clients and --ops must be positive");
    let mut servers = Vec::new();
    let clients = match args.ceiling {
        Some(n) => {
            anyhow::ensure!((1..=16).contains(&n), "--ceiling takes 1 to 16 servers");
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                let (child, port) = start_ceiling_server().await?;
                servers.push(child);
                clients.push(crate::conn::client(&format!("127.0.0.1:{port}"))?);
            }
            clients
        }
        None => connect(&args.endpoints).await?,
    };
    let progress = crate::progress::Progress::ops(args.ops as u64, "http");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for worker in 0..args.clients {
        let client = clients[worker % clients.len()].clone();
        let count = super::share(args.ops, args.clients, worker);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut errors = 0usize;
            for _ in 0..count {
                let t = Instant::now();
                match client.health().await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                crate::progress::tick(1);
            }
            (latencies, errors)
        }));
    }
    let (latencies, errors) = gather(tasks).await?;
    progress.finish();
    let summary = summarize(latencies, errors, started.elapsed());
    for mut server in servers {
        let _ = server.kill().await;
    }
    let name = if args.ceiling.is_some() { "http ceiling" } else { "http health" };
    report(name, args.clients, args.json, &summary);
    Ok(())
}

/// Starts `sinkron bench ceiling-server` as a child process; answers it and its port.
async fn start_ceiling_server() -> anyhow::Result<(tokio::process::Child, u16)> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench", "ceiling-server"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("start a ceiling server: {e}"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout of the ceiling server"))?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout).read_line(&mut line).await?;
    let port = line.trim().parse().map_err(|_| anyhow::anyhow!("the ceiling server said {line:?}"))?;
    Ok((child, port))
}

/// A bare HTTP/1 server: every `GET /health` gets a fixed answer shaped like a node's.
pub(super) async fn ceiling_server(args: CeilingServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    say!("{}", listener.local_addr()?.port());
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(|| async {
            ([("content-type", "application/json")], r#"{"status":"ok","node_id":"ceiling"}"#)
        }),
    );
    axum::serve(listener, app).await?;
    Ok(())
}
