//! `sinkron bench cache`: hits, misses, writes to an M line, writes that invalidate, and a 90/10 mix.

use std::time::Instant;

use super::{connect, gather, report, summarize};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum CacheMode {
    /// Reads of a line this node holds (served locally).
    Hit,
    /// Reads of keys no node holds yet (each goes through the log).
    Miss,
    /// Writes to a line this node holds in M (no network).
    WriteM,
    /// Writes from alternating nodes, each invalidating the other's copy.
    WriteInvalidate,
    /// 90% reads, 10% writes over a few keys, from all nodes.
    Mix,
}

#[derive(clap::Args)]
pub(super) struct CacheBenchArgs {
    /// Comma-separated nodes; clients are spread over them round-robin.
    #[arg(long, env = "SINKRON_ENDPOINTS", default_value = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003")]
    endpoints: String,
    /// What to measure.
    #[arg(long, value_enum, default_value = "hit")]
    mode: CacheMode,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Total operations.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(super) async fn cache(args: CacheBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0 && args.ops > 0, "--clients and --ops must be positive");
    let clients = connect(&args.endpoints).await?;
    let run = format!("{:x}", std::process::id());
    // Warm up: the mix keys get values, every client's own key gets a line on its node.
    for k in 0..4 {
        clients[0].cache_put(&format!("bench-{run}-mix-{k}"), serde_json::json!(k), true).await?;
    }
    for worker in 0..args.clients {
        let client = &clients[worker % clients.len()];
        client.cache_put(&format!("bench-{run}-{worker}"), serde_json::json!(0), false).await?;
        client.cache_get(&format!("bench-{run}-{worker}")).await?;
    }
    let progress = crate::progress::Progress::ops(args.ops as u64, "cache");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for worker in 0..args.clients {
        let (mode, run) = (args.mode, run.clone());
        let own = clients[worker % clients.len()].clone();
        let other = clients[(worker + 1) % clients.len()].clone();
        let count = super::share(args.ops, args.clients, worker);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut errors = 0usize;
            for i in 0..count {
                let own_key = format!("bench-{run}-{worker}");
                let t = Instant::now();
                let outcome = match mode {
                    CacheMode::Hit => own.cache_get(&own_key).await.map(|_| ()),
                    CacheMode::Miss => {
                        own.cache_get(&format!("bench-{run}-miss-{worker}-{i}")).await.map(|_| ())
                    }
                    CacheMode::WriteM => {
                        own.cache_put(&own_key, serde_json::json!(i), false).await.map(|_| ())
                    }
                    CacheMode::WriteInvalidate => {
                        let writer = if i % 2 == 0 { &own } else { &other };
                        writer
                            .cache_put(&format!("bench-{run}-pingpong-{worker}"), serde_json::json!(i), false)
                            .await
                            .map(|_| ())
                    }
                    CacheMode::Mix => {
                        let key = format!("bench-{run}-mix-{}", i % 4);
                        if i % 10 == 0 {
                            own.cache_put(&key, serde_json::json!(i), false).await.map(|_| ())
                        } else {
                            own.cache_get(&key).await.map(|_| ())
                        }
                    }
                };
                crate::progress::tick(1);
                match outcome {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (latencies, errors) = gather(tasks).await?;
    progress.finish();
    let summary = summarize(latencies, errors, started.elapsed());
    let name = match args.mode {
        CacheMode::Hit => "cache-hit",
        CacheMode::Miss => "cache-miss",
        CacheMode::WriteM => "cache-write-m",
        CacheMode::WriteInvalidate => "cache-write-invalidate",
        CacheMode::Mix => "cache-mix-90-10",
    };
    report(name, args.clients, args.json, &summary);
    Ok(())
}
