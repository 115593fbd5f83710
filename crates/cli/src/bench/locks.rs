//! `sinkron bench locks`: acquire+release pairs on distinct locks, or hand-offs on one contended lock.

use std::sync::Arc;
use std::time::Instant;

use super::{connect, gather, report, summarize};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum LockMode {
    /// Each client acquires and releases its own lock: acquire latency and pairs/s.
    Uncontended,
    /// All clients take turns on one lock: latency from a release to the next grant.
    Handoff,
}

#[derive(clap::Args)]
pub(super) struct LockArgs {
    /// Comma-separated nodes to send to; clients are spread over them round-robin.
    #[arg(long, env = "SINKRON_ENDPOINTS", default_value = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003")]
    endpoints: String,
    /// What to measure.
    #[arg(long, value_enum, default_value = "uncontended")]
    mode: LockMode,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Total acquire+release pairs.
    #[arg(long, default_value_t = 5_000)]
    ops: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(super) async fn locks(args: LockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0 && args.ops > 0, "--clients and --ops must be positive");
    let clients = connect(&args.endpoints).await?;
    let run = format!("{:x}", std::process::id());
    // Hand-off: when the current holder started releasing; the next grant measures from it.
    let released_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let progress = crate::progress::Progress::ops(args.ops as u64, "lock+unlock");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for worker in 0..args.clients {
        let client = clients[worker % clients.len()].clone();
        let count = super::share(args.ops, args.clients, worker);
        let (mode, run, released_at) = (args.mode, run.clone(), released_at.clone());
        tasks.push(tokio::spawn(async move {
            let client_id = format!("bench-{run}-{worker}");
            let name = match mode {
                LockMode::Uncontended => format!("bench-{run}-lock-{worker}"),
                LockMode::Handoff => format!("bench-{run}-shared-lock"),
            };
            let options = sinkron_client::LockOptions {
                client_id: client_id.clone(),
                mode: None,
                ttl_ms: Some(30_000),
                wait_ms: Some(if mode == LockMode::Handoff { 60_000 } else { 0 }),
            };
            let mut latencies = Vec::with_capacity(count);
            let mut errors = 0usize;
            for _ in 0..count {
                crate::progress::tick(1);
                let t = Instant::now();
                if client.acquire(&name, &options).await.is_err() {
                    errors += 1;
                    continue;
                }
                let granted = Instant::now();
                match mode {
                    LockMode::Uncontended => latencies.push(granted - t),
                    LockMode::Handoff => {
                        let since_release = released_at.lock().map(|mut r| r.take()).unwrap_or(None);
                        if let Some(r) = since_release {
                            latencies.push(granted.saturating_duration_since(r));
                        }
                    }
                }
                if mode == LockMode::Handoff {
                    if let Ok(mut r) = released_at.lock() {
                        *r = Some(Instant::now());
                    }
                }
                if client.release(&name, &client_id).await.is_err() {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let (latencies, errors) = gather(tasks).await?;
    progress.finish();
    let elapsed = started.elapsed();
    let pairs = args.ops.saturating_sub(errors);
    let summary = summarize(latencies, errors, elapsed);
    let name = match args.mode {
        LockMode::Uncontended => "locks-uncontended (latency: acquire)",
        LockMode::Handoff => "locks-handoff (latency: release start to next grant)",
    };
    let rate = pairs as f64 / elapsed.as_secs_f64().max(1e-9);
    if !args.json {
        say!("{name}: {pairs} acquire+release pairs in {:.2} s = {rate:.0} pairs/s", elapsed.as_secs_f64());
    }
    report(name, args.clients, args.json, &summary);
    Ok(())
}
