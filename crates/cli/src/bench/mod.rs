//! `sinkron bench`: load generators against a running cluster, one file per benchmark.
//!
//! Numbers are measured here, at the client, over real HTTP: latency is from sending a
//! request to reading its reply. Run it against `sinkron dev` or any cluster.

use std::time::{Duration, Instant};

use sinkron_client::Client;

mod cache;
mod counters;
mod etcd;
mod http;
mod locks;
mod queue;
mod rabbitmq;
mod ring;
mod roundtrip;
mod write;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Group-0 writes (replicated key-value puts) through every given node.
    Write(write::WriteArgs),
    /// Lock acquire+release pairs on distinct locks, or hand-offs on one contended lock.
    Locks(locks::LockArgs),
    /// Cache hits, misses, writes to an M line, writes that invalidate, and a 90/10 mix.
    Cache(cache::CacheBenchArgs),
    /// Queue throughput: producers send, consumers receive and ack, across the nodes.
    Queue(queue::QueueBenchArgs),
    /// `GET /health` through every node (the HTTP stack's own cost), or with `--ceiling`
    /// against bare HTTP servers (the loopback ceiling of this client).
    Http(http::HttpBenchArgs),
    /// A bare HTTP server for `bench http --ceiling` (started by it; prints its port).
    #[command(hide = true)]
    CeilingServer(http::CeilingServerArgs),
    /// Queue round trips (send, receive, ack) with a fixed number in flight; also against
    /// RabbitMQ's quorum queue.
    Roundtrip(roundtrip::RoundTripArgs),
    /// The ring's balance and the partitions a joining node moves (computed, no cluster).
    Ring(ring::RingBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Write(args) => write::write(args).await,
        BenchCommand::Locks(args) => locks::locks(args).await,
        BenchCommand::Cache(args) => cache::cache(args).await,
        BenchCommand::Queue(args) => queue::queue(args).await,
        BenchCommand::Http(args) => http::http(args).await,
        BenchCommand::CeilingServer(args) => http::ceiling_server(args).await,
        BenchCommand::Roundtrip(args) => roundtrip::roundtrip(args).await,
        BenchCommand::Ring(args) => {
            ring::ring(&args);
            Ok(())
        }
    }
}

/// Latency distribution of a run.
pub(super) struct Summary {
    pub(super) ops: usize,
    pub(super) errors: usize,
    pub(super) elapsed: Duration,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    pub(super) p999: Duration,
    pub(super) max: Duration,
}

pub(super) async fn connect(endpoints: &str) -> anyhow::Result<Vec<Client>> {
    let endpoints: Vec<&str> = endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    anyhow::ensure!(!endpoints.is_empty(), "--endpoints is empty");
    let clients: Vec<Client> =
        endpoints.iter().map(|e| crate::conn::client(e)).collect::<anyhow::Result<_>>()?;
    for c in &clients {
        wait_ready(c).await?;
    }
    Ok(clients)
}

/// How long a bench waits for a node to become ready (a cluster just started is still
/// electing or applying) before it gives up with the node's own reason.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Waits until `client`'s node answers `/ready` with 200, or [`READY_WAIT`] has passed.
pub(super) async fn wait_ready(client: &Client) -> anyhow::Result<()> {
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

/// The operations that worker `worker` of `workers` runs out of `total`: equal shares, the
/// last ones smaller (or empty) when `total` does not divide evenly.
pub(super) fn share(total: usize, workers: usize, worker: usize) -> usize {
    let each = total.div_ceil(workers);
    each.min(total.saturating_sub(worker * each))
}

/// Waits for every load task and merges their latencies and error counts.
pub(super) async fn gather(
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

/// The run's latencies as an HdrHistogram (microseconds, 3 significant digits): p50, p99,
/// p999 and the largest.
pub(super) fn summarize(latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Summary {
    // 1 µs to one hour; a latency beyond is counted as one hour.
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("the bounds and 3 significant digits are valid");
    for latency in &latencies {
        histogram.saturating_record(latency.as_micros().min(u128::from(u64::MAX)) as u64);
    }
    let at = |q: f64| Duration::from_micros(histogram.value_at_quantile(q));
    Summary {
        ops: latencies.len(),
        errors,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: Duration::from_micros(histogram.max()),
    }
}

pub(super) fn report(name: &str, clients: usize, json: bool, s: &Summary) {
    let rate = s.ops as f64 / s.elapsed.as_secs_f64().max(1e-9);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if json {
        say!(
            "{}",
            serde_json::json!({
                "bench": name, "clients": clients, "ops": s.ops, "errors": s.errors,
                "seconds": s.elapsed.as_secs_f64(), "ops_per_sec": rate,
                "p50_ms": ms(s.p50), "p99_ms": ms(s.p99), "p999_ms": ms(s.p999), "max_ms": ms(s.max),
            })
        );
    } else {
        say!(
            "bench {name}: {} clients, {} ok, {} errors in {:.2} s = {:.0} ops/s; latency p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms",
            clients, s.ops, s.errors, s.elapsed.as_secs_f64(), rate, ms(s.p50), ms(s.p99), ms(s.p999), ms(s.max)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_total() {
        for (total, workers) in [(20_000, 64), (10, 3), (2, 5), (7, 7), (1, 1)] {
            let shares: Vec<usize> = (0..workers).map(|w| share(total, workers, w)).collect();
            assert_eq!(shares.iter().sum::<usize>(), total, "{total} over {workers}: {shares:?}");
            assert!(shares.windows(2).all(|w| w[0] >= w[1]), "{shares:?}");
        }
    }

    #[test]
    fn the_summary_reads_quantiles_off_the_histogram() {
        let latencies: Vec<Duration> = (1..=1_000).map(Duration::from_millis).collect();
        let s = summarize(latencies, 2, Duration::from_secs(1));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        assert_eq!((s.ops, s.errors), (1_000, 2));
        // Three significant digits: within 0.1 % of the exact ranks.
        for (got, want) in [(s.p50, 500.0), (s.p99, 990.0), (s.p999, 999.0), (s.max, 1_000.0)] {
            assert!((ms(got) - want).abs() <= want * 0.001 + 0.001, "{got:?} vs {want} ms");
        }
        let empty = summarize(Vec::new(), 0, Duration::from_secs(1));
        assert_eq!((empty.ops, empty.p50, empty.max), (0, Duration::ZERO, Duration::ZERO));
    }
}
