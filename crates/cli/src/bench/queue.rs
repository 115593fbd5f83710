//! `sinkron bench queue`: producers send, consumers receive and ack, across the nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{connect, gather, summarize};

#[derive(clap::Args)]
pub(super) struct QueueBenchArgs {
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
    /// Also print what the run moved on the nodes (fsyncs, entries, peer batches, HTTP
    /// requests; from every node's /metrics, per acked message).
    #[arg(long)]
    counters: bool,
}

pub(super) async fn queue(args: QueueBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.producers > 0 && args.consumers > 0 && args.messages > 0 && args.batch > 0,
        "--producers, --consumers, --messages and --batch must be positive"
    );
    let clients = connect(&args.endpoints).await?;
    let queue = Arc::new(format!("bench-{:x}", std::process::id()));
    let body = Arc::new(serde_json::Value::String("x".repeat(args.body_bytes)));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let before = if args.counters { Some(super::counters::snapshot(&clients).await?) } else { None };
    let progress = crate::progress::Progress::ops(args.messages as u64, "queue (acked)");
    let started = Instant::now();
    let per_producer = args.messages.div_ceil(args.producers);
    let mut producers = Vec::with_capacity(args.producers);
    for worker in 0..args.producers {
        let client = clients[worker % clients.len()].clone();
        let count = super::share(args.messages, args.producers, worker);
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
                            let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
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
                    Ok(done) => {
                        acked.fetch_add(done.acked, std::sync::atomic::Ordering::Relaxed);
                        crate::progress::tick(done.acked as u64);
                        errors += done.failed.len();
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
    progress.finish();
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
                "send_p999_ms": ms(send.p999),
                "send_errors": send.errors, "consume_errors": consume_errors,
            })
        );
    } else {
        say!(
            "bench queue: {} producers (send batch {}), {} consumers, {} keys: {done} of {} messages sent, received and acked in {:.2} s = {rate:.0} messages/s; send p50 {:.3} ms, p99 {:.3} ms; {} send errors, {consume_errors} consume errors",
            args.producers, args.send_batch, args.consumers, args.keys, args.messages, elapsed.as_secs_f64(), ms(send.p50), ms(send.p99), send.errors
        );
    }
    if let Some(before) = before {
        let after = super::counters::snapshot(&clients).await?;
        super::counters::report(&before, &after, done, args.json);
    }
    anyhow::ensure!(done >= args.messages, "only {done} of {} messages were acked", args.messages);
    Ok(())
}
