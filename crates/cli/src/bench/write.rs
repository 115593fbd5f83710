//! `sinkron bench write`: group-0 writes (replicated key-value puts) through every given node,
//! or with `--reads` linearizable reads of those keys.

use std::sync::Arc;
use std::time::Instant;

use super::{connect, gather, report, summarize};

#[derive(clap::Args)]
pub(super) struct WriteArgs {
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
    /// Linearizable reads of the keys instead of writes (each key is written once first).
    #[arg(long)]
    reads: bool,
    /// Each client sends its requests to the nodes in turn (request `i` of client `c` to
    /// node `(c + i) mod n`), as a load balancer that spreads requests rather than
    /// connections. With one client this is the only way through every node. Not with
    /// `--target redis` (one connection per client).
    #[arg(long)]
    rotate: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also print what the run moved on the nodes (fsyncs, entries, peer batches, HTTP
    /// requests; from every node's /metrics, per operation).
    #[arg(long)]
    counters: bool,
    /// What to load: Sinkron, or etcd through its HTTP/JSON gateway (an anchor, measured
    /// by the same loop; see scripts/bench-compare).
    #[arg(long, value_enum, default_value_t = Target::Sinkron)]
    target: Target,
}

/// The store a write bench loads.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Sinkron's key-value store.
    Sinkron,
    /// etcd v3 (`/v3/kv/put`, `/v3/kv/range`).
    Etcd,
    /// Redis (`SET`, `GET`), one connection per client; start it with
    /// `--appendonly yes --appendfsync always` for a write that is on disk when answered.
    Redis,
}

/// One node of either store.
#[derive(Clone)]
enum Store {
    Sinkron(sinkron_client::Client),
    Etcd(super::etcd::EtcdNode),
    Redis(redis::aio::MultiplexedConnection),
}

impl Store {
    async fn put(&self, key: &str, value: &serde_json::Value) -> Result<(), String> {
        match self {
            Self::Sinkron(c) => c.kv_put(key, value.clone()).await.map(|_| ()).map_err(|e| e.to_string()),
            Self::Etcd(e) => e.put(key, value.as_str().unwrap_or_default().as_bytes()).await,
            Self::Redis(r) => redis::cmd("SET")
                .arg(key)
                .arg(value.as_str().unwrap_or_default())
                .query_async::<()>(&mut r.clone())
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn get(&self, key: &str) -> Result<(), String> {
        match self {
            Self::Sinkron(c) => c.kv_get(key).await.map(|_| ()).map_err(|e| e.to_string()),
            Self::Etcd(e) => e.get(key).await,
            Self::Redis(r) => redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut r.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

pub(super) async fn write(args: WriteArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.ops > 0 && args.keys > 0,
        "--clients, --ops and --keys must be positive"
    );
    let (clients, stores): (Vec<sinkron_client::Client>, Vec<Store>) = match args.target {
        Target::Sinkron => {
            let clients = connect(&args.endpoints).await?;
            let stores = clients.iter().cloned().map(Store::Sinkron).collect();
            (clients, stores)
        }
        Target::Etcd => {
            anyhow::ensure!(!args.counters, "--counters reads Sinkron's /metrics; not with --target etcd");
            (
                Vec::new(),
                super::etcd::EtcdNode::connect(&args.endpoints)?.into_iter().map(Store::Etcd).collect(),
            )
        }
        Target::Redis => {
            anyhow::ensure!(!args.counters, "--counters reads Sinkron's /metrics; not with --target redis");
            anyhow::ensure!(!args.rotate, "--rotate spreads requests over nodes; Redis is one node here");
            (Vec::new(), redis_connections(&args.endpoints, args.clients).await?)
        }
    };
    let value = serde_json::Value::String("x".repeat(args.value_bytes));
    let per_client = args.ops.div_ceil(args.clients);
    if args.reads {
        // The keys exist before the clock starts.
        let mut first = tokio::task::JoinSet::new();
        for worker in 0..args.clients {
            let (store, value) = (stores[worker % stores.len()].clone(), value.clone());
            let keys = args.keys.min(per_client);
            first.spawn(async move {
                for i in 0..keys {
                    store.put(&format!("bench-{worker}-{i}"), &value).await?;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(joined) = first.join_next().await {
            joined?.map_err(|e| anyhow::anyhow!("write the keys to read: {e}"))?;
        }
    }
    let before = if args.counters { Some(super::counters::snapshot(&clients).await?) } else { None };
    let progress = crate::progress::Progress::ops(args.ops as u64, if args.reads { "read" } else { "write" });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    let value = Arc::new(value);
    for worker in 0..args.clients {
        // The nodes this client sends to, in turn: its own, or all of them from its own on.
        let turns: Vec<Store> = if args.rotate {
            (0..stores.len()).map(|k| stores[(worker + k) % stores.len()].clone()).collect()
        } else {
            vec![stores[worker % stores.len()].clone()]
        };
        let value = value.clone();
        let count = super::share(args.ops, args.clients, worker);
        let (keys, reads) = (args.keys, args.reads);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut errors = 0usize;
            for i in 0..count {
                let key = format!("bench-{worker}-{}", i % keys);
                let store = &turns[i % turns.len()];
                let t = Instant::now();
                let outcome = if reads { store.get(&key).await } else { store.put(&key, &value).await };
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
    let name = match (args.target, args.reads) {
        (Target::Sinkron, false) => "write",
        (Target::Sinkron, true) => "read",
        (Target::Etcd, false) => "etcd write",
        (Target::Etcd, true) => "etcd read",
        (Target::Redis, false) => "redis write",
        (Target::Redis, true) => "redis read",
    };
    report(name, args.clients, args.json, &summary);
    if let Some(before) = before {
        let after = super::counters::snapshot(&clients).await?;
        super::counters::report(&before, &after, summary.ops, args.json);
    }
    Ok(())
}

/// One Redis connection per client (as each HTTP client has its own pooled connection),
/// spread over the given endpoints.
async fn redis_connections(endpoints: &str, clients: usize) -> anyhow::Result<Vec<Store>> {
    let endpoints: Vec<&str> = endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    anyhow::ensure!(!endpoints.is_empty(), "--endpoints is empty");
    let mut stores = Vec::with_capacity(clients);
    for worker in 0..clients {
        let endpoint = endpoints[worker % endpoints.len()];
        let client = redis::Client::open(format!("redis://{endpoint}/"))
            .map_err(|e| anyhow::anyhow!("Redis at {endpoint}: {e}"))?;
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| anyhow::anyhow!("connect to Redis at {endpoint}: {e}"))?;
        stores.push(Store::Redis(connection));
    }
    Ok(stores)
}
