//! `sinkron bench`: load generators against a running cluster.
//!
//! Numbers are measured here, at the client, over real HTTP: latency is from sending a
//! request to reading its reply. Run it against `sinkron dev` or any cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sinkron_client::Client;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Group-0 writes (replicated key-value puts) through every given node.
    Write(WriteArgs),
    /// Lock acquire+release pairs on distinct locks, or hand-offs on one contended lock.
    Locks(LockArgs),
    /// Cache hits, misses, writes to an M line, writes that invalidate, and a 90/10 mix.
    Cache(CacheBenchArgs),
    /// Queue throughput: producers send, consumers receive and ack, across the nodes.
    Queue(QueueBenchArgs),
    /// The ring's balance and the partitions a joining node moves (computed, no cluster).
    Ring(RingBenchArgs),
}

#[derive(clap::Args)]
struct QueueBenchArgs {
    /// Comma-separated nodes; producers and consumers are spread over them round-robin.
    #[arg(long, env = "SINKRON_ENDPOINTS", default_value = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003")]
    endpoints: String,
    /// Concurrent producers, each with one send in flight.
    #[arg(long, default_value_t = 32)]
    producers: usize,
    /// Concurrent consumers, each receiving a batch and acking it.
    #[arg(long, default_value_t = 16)]
    consumers: usize,
    /// Total messages.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Distinct ordering keys (spreads the queue over partitions); 0 sends without a key,
    /// which keeps the whole queue in one partition.
    #[arg(long, default_value_t = 64)]
    keys: usize,
    /// Most messages per receive (acked together in one call).
    #[arg(long, default_value_t = 10)]
    batch: u32,
    /// Messages per send call (1: one message per request; up to 100 with the batch
    /// endpoint).
    #[arg(long, default_value_t = 1)]
    send_batch: usize,
    /// Bytes of each body.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RingBenchArgs {
    /// Nodes on the ring.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Tokens per node.
    #[arg(long, default_value_t = 150)]
    virtual_nodes: u32,
    /// Partitions.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Replicas per partition.
    #[arg(long, default_value_t = 3)]
    replication: usize,
    /// Sample keys for the key balance.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CacheMode {
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
struct CacheBenchArgs {
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LockMode {
    /// Each client acquires and releases its own lock: acquire latency and pairs/s.
    Uncontended,
    /// All clients take turns on one lock: latency from a release to the next grant.
    Handoff,
}

#[derive(clap::Args)]
struct LockArgs {
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

#[derive(clap::Args)]
struct WriteArgs {
    /// Comma-separated nodes to send to; clients are spread over them round-robin.
    #[arg(long, env = "SINKRON_ENDPOINTS", default_value = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003")]
    endpoints: String,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Total writes.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Bytes of each value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Distinct keys per client.
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Write(args) => write(args).await,
        BenchCommand::Locks(args) => locks(args).await,
        BenchCommand::Cache(args) => cache(args).await,
        BenchCommand::Queue(args) => queue(args).await,
        BenchCommand::Ring(args) => {
            ring(&args);
            Ok(())
        }
    }
}

/// Latency distribution of a run.
struct Summary {
    ops: usize,
    errors: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn write(args: WriteArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.ops > 0 && args.keys > 0,
        "--clients, --ops and --keys must be positive"
    );
    let clients = connect(&args.endpoints).await?;
    let value = serde_json::Value::String("x".repeat(args.value_bytes));
    let per_client = args.ops.div_ceil(args.clients);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    let value = Arc::new(value);
    for worker in 0..args.clients {
        let client = clients[worker % clients.len()].clone();
        let value = value.clone();
        let count = per_client.min(args.ops.saturating_sub(worker * per_client));
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut errors = 0usize;
            for i in 0..count {
                let key = format!("bench-{worker}-{}", i % keys);
                let t = Instant::now();
                match client.kv_put(&key, (*value).clone()).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (latencies, errors) = gather(tasks).await?;
    let summary = summarize(latencies, errors, started.elapsed());
    report("write", args.clients, args.json, &summary);
    Ok(())
}

async fn connect(endpoints: &str) -> anyhow::Result<Vec<Client>> {
    let endpoints: Vec<&str> = endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    anyhow::ensure!(!endpoints.is_empty(), "--endpoints is empty");
    let clients: Vec<Client> = endpoints.iter().map(|e| Client::new(e)).collect();
    for c in &clients {
        wait_ready(c).await?;
    }
    Ok(clients)
}

/// How long a bench waits for a node to become ready (a cluster just started is still
/// electing or applying) before it gives up with the node's own reason.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Waits until `client`'s node answers `/ready` with 200, or [`READY_WAIT`] has passed.
async fn wait_ready(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        match client.ready().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("{} is not ready after {} s: {e}", client.endpoint(), READY_WAIT.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits for every load task and merges their latencies and error counts.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    Ok((latencies, errors))
}

fn summarize(mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Summary {
    latencies.sort();
    Summary {
        ops: latencies.len(),
        errors,
        elapsed,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

async fn locks(args: LockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0 && args.ops > 0, "--clients and --ops must be positive");
    let clients = connect(&args.endpoints).await?;
    let per_client = args.ops.div_ceil(args.clients);
    let run = format!("{:x}", std::process::id());
    // Hand-off: when the current holder started releasing; the next grant measures from it.
    let released_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for worker in 0..args.clients {
        let client = clients[worker % clients.len()].clone();
        let count = per_client.min(args.ops.saturating_sub(worker * per_client));
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

async fn cache(args: CacheBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0 && args.ops > 0, "--clients and --ops must be positive");
    let clients = connect(&args.endpoints).await?;
    let run = format!("{:x}", std::process::id());
    let per_client = args.ops.div_ceil(args.clients);
    // Warm up: the mix keys get values, every client's own key gets a line on its node.
    for k in 0..4 {
        clients[0].cache_put(&format!("bench-{run}-mix-{k}"), serde_json::json!(k), true).await?;
    }
    for worker in 0..args.clients {
        let client = &clients[worker % clients.len()];
        client.cache_put(&format!("bench-{run}-{worker}"), serde_json::json!(0), false).await?;
        client.cache_get(&format!("bench-{run}-{worker}")).await?;
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for worker in 0..args.clients {
        let (mode, run) = (args.mode, run.clone());
        let own = clients[worker % clients.len()].clone();
        let other = clients[(worker + 1) % clients.len()].clone();
        let count = per_client.min(args.ops.saturating_sub(worker * per_client));
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
                match outcome {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (latencies, errors) = gather(tasks).await?;
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

fn report(name: &str, clients: usize, json: bool, s: &Summary) {
    let rate = s.ops as f64 / s.elapsed.as_secs_f64().max(1e-9);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if json {
        say!(
            "{}",
            serde_json::json!({
                "bench": name, "clients": clients, "ops": s.ops, "errors": s.errors,
                "seconds": s.elapsed.as_secs_f64(), "ops_per_sec": rate,
                "p50_ms": ms(s.p50), "p99_ms": ms(s.p99), "max_ms": ms(s.max),
            })
        );
    } else {
        say!(
            "bench {name}: {} clients, {} ok, {} errors in {:.2} s = {:.0} ops/s; latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            clients, s.ops, s.errors, s.elapsed.as_secs_f64(), rate, ms(s.p50), ms(s.p99), ms(s.max)
        );
    }
}

async fn queue(args: QueueBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.producers > 0 && args.consumers > 0 && args.messages > 0 && args.batch > 0,
        "--producers, --consumers, --messages and --batch must be positive"
    );
    let clients = connect(&args.endpoints).await?;
    let queue = Arc::new(format!("bench-{:x}", std::process::id()));
    let body = Arc::new(serde_json::Value::String("x".repeat(args.body_bytes)));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let per_producer = args.messages.div_ceil(args.producers);
    let mut producers = Vec::with_capacity(args.producers);
    for worker in 0..args.producers {
        let client = clients[worker % clients.len()].clone();
        let count = per_producer.min(args.messages.saturating_sub(worker * per_producer));
        let (queue, body, keys) = (queue.clone(), body.clone(), args.keys);
        let send_batch = args.send_batch;
        producers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut errors = 0usize;
            let mut i = 0;
            while i < count {
                let n = send_batch.min(count - i);
                let key_of =
                    |j: usize| (keys > 0).then(|| format!("k{}", (worker * per_producer + j) % keys));
                let t = Instant::now();
                if n == 1 {
                    match client.queue_send(&queue, (*body).clone(), key_of(i).as_deref()).await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                } else {
                    let batch: Vec<(serde_json::Value, Option<String>)> =
                        (i..i + n).map(|j| ((*body).clone(), key_of(j))).collect();
                    match client.queue_send_batch(&queue, &batch).await {
                        Ok(outcomes) => {
                            let failed = outcomes.iter().filter(|o| o.get("error").is_some()).count();
                            errors += failed;
                            let elapsed = t.elapsed();
                            latencies.extend(std::iter::repeat_n(elapsed, n - failed));
                        }
                        Err(_) => errors += n,
                    }
                }
                i += n;
            }
            (latencies, errors)
        }));
    }
    let mut consumers = Vec::with_capacity(args.consumers);
    let give_up = Instant::now() + Duration::from_secs(300);
    for worker in 0..args.consumers {
        let client = clients[worker % clients.len()].clone();
        let (queue, acked, total, batch) = (queue.clone(), acked.clone(), args.messages, args.batch);
        consumers.push(tokio::spawn(async move {
            let options = sinkron_client::ReceiveOptions {
                max: Some(batch),
                visibility_ms: Some(30_000),
                wait_ms: Some(500),
            };
            let mut errors = 0usize;
            while acked.load(std::sync::atomic::Ordering::Relaxed) < total && Instant::now() < give_up {
                let Ok(messages) = client.queue_receive(&queue, &options).await else {
                    errors += 1;
                    continue;
                };
                if messages.is_empty() {
                    continue;
                }
                let receipts: Vec<String> = messages.into_iter().map(|m| m.receipt).collect();
                match client.queue_ack_many(&queue, &receipts).await {
                    Ok((done, failed)) => {
                        acked.fetch_add(done, std::sync::atomic::Ordering::Relaxed);
                        errors += failed.len();
                    }
                    Err(_) => errors += receipts.len(),
                }
            }
            (Vec::new(), errors)
        }));
    }
    let (send_latencies, send_errors) = gather(producers).await?;
    let sent_in = started.elapsed();
    let (_, consume_errors) = gather(consumers).await?;
    let elapsed = started.elapsed();
    let done = acked.load(std::sync::atomic::Ordering::Relaxed);
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let send = summarize(send_latencies, send_errors, sent_in);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if args.json {
        say!(
            "{}",
            serde_json::json!({
                "bench": "queue", "producers": args.producers, "consumers": args.consumers,
                "keys": args.keys, "send_batch": args.send_batch,
                "messages": args.messages, "acked": done, "seconds": elapsed.as_secs_f64(),
                "messages_per_sec": rate, "send_p50_ms": ms(send.p50), "send_p99_ms": ms(send.p99),
                "send_errors": send.errors, "consume_errors": consume_errors,
            })
        );
    } else {
        say!(
            "bench queue: {} producers (send batch {}), {} consumers, {} keys: {done} of {} messages sent, received and acked in {:.2} s = {rate:.0} messages/s; send p50 {:.3} ms, p99 {:.3} ms; {} send errors, {consume_errors} consume errors",
            args.producers, args.send_batch, args.consumers, args.keys, args.messages, elapsed.as_secs_f64(), ms(send.p50), ms(send.p99), send.errors
        );
    }
    anyhow::ensure!(done >= args.messages, "only {done} of {} messages were acked", args.messages);
    Ok(())
}

/// Prints the ring's balance for `args.nodes` nodes and what a joining node moves.
fn ring(args: &RingBenchArgs) {
    use sinkron_core::ring::Ring;
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("node{i}")).collect();
    let ring = Ring::new(names.iter().map(String::as_str), args.virtual_nodes);
    let mut keys: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    for i in 0..args.keys {
        if let Some(owner) = ring.owner_of(format!("key-{i}").as_bytes()) {
            *keys.entry(owner).or_default() += 1;
        }
    }
    let mean_keys = f64::from(args.keys) / args.nodes as f64;
    let max_keys = keys.values().copied().max().unwrap_or(0);
    let placements = ring.placements(args.partitions, args.replication);
    let mut preferred: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    let mut replicas: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    for p in &placements {
        if let Some(first) = p.replicas.first() {
            *preferred.entry(first.as_str()).or_default() += 1;
        }
        for r in &p.replicas {
            *replicas.entry(r.as_str()).or_default() += 1;
        }
    }
    let mean_preferred = f64::from(args.partitions) / args.nodes as f64;
    let total_replicas: u32 = replicas.values().sum();
    let mean_replicas = f64::from(total_replicas) / args.nodes as f64;
    let mut grown = names.clone();
    grown.push(format!("node{}", args.nodes + 1));
    let after = Ring::new(grown.iter().map(String::as_str), args.virtual_nodes);
    let after_placements = after.placements(args.partitions, args.replication);
    let pairs = placements.iter().zip(&after_placements);
    let moved_partitions =
        pairs.clone().filter(|(a, b)| b.replicas.iter().any(|n| !a.replicas.contains(n))).count();
    let moved_replicas: usize =
        pairs.map(|(a, b)| b.replicas.iter().filter(|n| !a.replicas.contains(n)).count()).sum();
    let total_after: usize = after_placements.iter().map(|p| p.replicas.len()).sum();
    let moved_keys = (0..args.keys)
        .filter(|i| {
            let key = format!("key-{i}");
            ring.owner_of(key.as_bytes()) != after.owner_of(key.as_bytes())
        })
        .count();
    say!(
        "ring: {} nodes x {} virtual nodes, {} partitions x {} replicas",
        args.nodes,
        args.virtual_nodes,
        args.partitions,
        args.replication
    );
    say!(
        "  keys per node: max/mean {:.3} ({max_keys} vs {mean_keys:.0} of {} sample keys)",
        f64::from(max_keys) / mean_keys,
        args.keys
    );
    say!(
        "  preferred leaders per node: max/mean {:.3} ({:?})",
        f64::from(preferred.values().copied().max().unwrap_or(0)) / mean_preferred,
        preferred
    );
    say!(
        "  replicas per node: max/mean {:.3} ({:?})",
        f64::from(replicas.values().copied().max().unwrap_or(0)) / mean_replicas,
        replicas
    );
    say!(
        "  a node joining changes the replica set of {moved_partitions} of {} partitions ({:.1}%), moving {moved_replicas} of {total_after} replicas ({:.1}%) and {:.1}% of keys (ideal share of the new node {:.1}%)",
        args.partitions,
        100.0 * moved_partitions as f64 / f64::from(args.partitions),
        100.0 * moved_replicas as f64 / total_after.max(1) as f64,
        100.0 * moved_keys as f64 / f64::from(args.keys),
        100.0 / (args.nodes + 1) as f64
    );
}
