//! `sinkron bench roundtrip`: queue round trips with a fixed number of messages in flight.
//!
//! Each of `--in-flight` workers repeats one round trip: send a message and wait until it
//! is acknowledged as stored, receive one message, ack it. So exactly that many messages
//! are in flight at any moment, and the latency of a round trip is what one producer and
//! one consumer in lock step would see. The same loop runs against RabbitMQ
//! (`--target rabbitmq`: a durable quorum queue, persistent messages, publisher confirms,
//! a consumer with prefetch 1 and manual acks), so the two are measured alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{connect, gather, report, summarize};

#[derive(clap::Args)]
pub(super) struct RoundTripArgs {
    /// Comma-separated nodes (workers are spread over them round-robin); for RabbitMQ the
    /// `host:port` of each node's AMQP listener (one node, or the nodes of one cluster).
    #[arg(long, env = "SINKRON_ENDPOINTS", default_value = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003")]
    endpoints: String,
    /// What to load.
    #[arg(long, value_enum, default_value_t = Target::Sinkron)]
    target: Target,
    /// Workers, each with one message in flight.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Total round trips.
    #[arg(long, default_value_t = 2_000)]
    messages: usize,
    /// Distinct ordering keys, worker `w` using key `w mod keys` (spreads the queue over
    /// partitions); 0 sends without a key, which keeps the queue in one partition. Sinkron
    /// only.
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Bytes of each body.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also print what the run moved on the nodes (Sinkron's /metrics, per round trip).
    #[arg(long)]
    counters: bool,
    /// Send each ack without waiting for its answer before the next send, as AMQP's
    /// `basic.ack` is never answered (an ack that fails only leaves its message to come back
    /// after the visibility timeout). Sinkron only; failed acks are still counted as errors.
    #[arg(long, conflicts_with = "ack_with_receive")]
    ack_without_wait: bool,
    /// Carry each ack in the next receive of the same worker (`ack` of a receive), so an ack
    /// costs no call of its own; the last one goes alone. Sinkron only; failed acks are
    /// counted as errors.
    #[arg(long)]
    ack_with_receive: bool,
    /// Start each round trip's receive (a long poll) before its send, as a consumer that
    /// is already waiting when the message arrives (RabbitMQ's consumers are subscribed
    /// before the clock starts). Sinkron only.
    #[arg(long)]
    consumer_waits: bool,
    /// Receive and ack through the next node of `--endpoints` after the one each worker
    /// sends through, as a producer and a consumer behind a load balancer would mostly be.
    /// Sinkron only.
    #[arg(long)]
    consumer_elsewhere: bool,
}

/// How a Sinkron worker acknowledges what it received.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AckMode {
    /// An ack call, answered before the next send.
    Wait,
    /// An ack call whose answer the next send does not wait for.
    Background,
    /// Carried in the next receive.
    WithReceive,
}

/// The queue a round-trip bench loads.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A Sinkron queue.
    Sinkron,
    /// A RabbitMQ quorum queue over AMQP 0-9-1 (user guest, from loopback).
    Rabbitmq,
}

/// Scheduler turns a waiting consumer's receive gets before its round trip's send starts.
const HEAD_START_TURNS: usize = 4;

/// How long one worker may go without finishing a round trip before the run gives up.
const STALL_MAX: Duration = Duration::from_secs(60);

pub(super) async fn roundtrip(args: RoundTripArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.in_flight > 0 && args.messages > 0, "--in-flight and --messages must be positive");
    let queue = format!("bench-rt-{:x}", std::process::id());
    let body = "x".repeat(args.body_bytes);
    let counts: Vec<usize> =
        (0..args.in_flight).map(|w| super::share(args.messages, args.in_flight, w)).collect();
    let progress = crate::progress::Progress::ops(args.messages as u64, "round trips");
    let (summary, counters) = match args.target {
        Target::Sinkron => {
            let clients = connect(&args.endpoints).await?;
            let ack_mode = match (args.ack_without_wait, args.ack_with_receive) {
                (true, _) => AckMode::Background,
                (false, true) => AckMode::WithReceive,
                (false, false) => AckMode::Wait,
            };
            let before = if args.counters { Some(super::counters::snapshot(&clients).await?) } else { None };
            let phases = Arc::new(Phases::default());
            let started = Instant::now();
            let mut tasks = Vec::with_capacity(args.in_flight);
            for (worker, count) in counts.into_iter().enumerate() {
                let client = clients[worker % clients.len()].clone();
                let shift = usize::from(args.consumer_elsewhere);
                let consumer = clients[(worker + shift) % clients.len()].clone();
                let key = (args.keys > 0).then(|| format!("k{}", worker % args.keys));
                let (queue, body) = (queue.clone(), serde_json::Value::String(body.clone()));
                let worker = SinkronWorker {
                    client,
                    consumer,
                    queue,
                    body,
                    key,
                    ack: ack_mode,
                    consumer_waits: args.consumer_waits,
                };
                tasks.push(tokio::spawn(worker.run(count, phases.clone())));
            }
            let (latencies, errors) = gather(tasks).await?;
            report_phases(&phases, args.json);
            let summary = summarize(latencies, errors, started.elapsed());
            let counters = match before {
                Some(before) => Some((before, super::counters::snapshot(&clients).await?)),
                None => None,
            };
            (summary, counters)
        }
        Target::Rabbitmq => {
            anyhow::ensure!(
                !args.counters,
                "--counters reads Sinkron's /metrics; not with --target rabbitmq"
            );
            anyhow::ensure!(args.keys == 0, "--keys spreads a Sinkron queue; not with --target rabbitmq");
            anyhow::ensure!(
                !args.ack_without_wait && !args.ack_with_receive,
                "RabbitMQ's acks are never answered; the ack flags are for Sinkron"
            );
            anyhow::ensure!(
                !args.consumer_elsewhere,
                "a RabbitMQ worker consumes on its own connection; --consumer-elsewhere is for Sinkron"
            );
            anyhow::ensure!(
                !args.consumer_waits,
                "RabbitMQ's consumers always wait (they are subscribed); --consumer-waits is for Sinkron"
            );
            let rabbit = super::rabbitmq::Rabbit::connect(&args.endpoints, &queue).await?;
            // Each worker's connection, channel and consumer are set up before the clock
            // starts: setup, not the round trips being measured.
            let mut workers = Vec::with_capacity(args.in_flight);
            for index in 0..args.in_flight {
                workers.push(rabbit.worker(index).await?);
            }
            let body = Arc::new(body.into_bytes());
            let started = Instant::now();
            let mut tasks = Vec::with_capacity(args.in_flight);
            for (worker, count) in workers.into_iter().zip(counts) {
                let body = body.clone();
                tasks.push(tokio::spawn(async move { worker.run(&body, count, STALL_MAX).await }));
            }
            let (latencies, errors) = gather(tasks).await?;
            let summary = summarize(latencies, errors, started.elapsed());
            rabbit.delete_queue().await;
            (summary, None)
        }
    };
    progress.finish();
    let name = match args.target {
        Target::Rabbitmq => "rabbitmq roundtrip".to_string(),
        Target::Sinkron => {
            let keyed = if args.keys > 0 { " keyed" } else { "" };
            let acks = match (args.ack_without_wait, args.ack_with_receive) {
                (true, _) => ", acks not awaited",
                (false, true) => ", acks with the next receive",
                (false, false) => "",
            };
            let waits = if args.consumer_waits { ", consumer waiting" } else { "" };
            let elsewhere = if args.consumer_elsewhere { ", consumer on the next node" } else { "" };
            format!("roundtrip{keyed}{acks}{waits}{elsewhere}")
        }
    };
    report(&name, args.in_flight, args.json, &summary);
    if let Some((before, after)) = counters {
        super::counters::report(&before, &after, summary.ops, args.json);
    }
    Ok(())
}

/// One worker's settings: the node it talks to, the queue and its message, and how it acks.
struct SinkronWorker {
    /// The node the worker sends through.
    client: sinkron_client::Client,
    /// The node it receives and acks through.
    consumer: sinkron_client::Client,
    queue: String,
    body: serde_json::Value,
    key: Option<String>,
    ack: AckMode,
    /// Whether each receive starts before its send.
    consumer_waits: bool,
}

impl SinkronWorker {
    /// `count` round trips: send through `client`, receive one (any worker's) and ack it through
    /// `consumer`.
    async fn run(self, count: usize, phases: Arc<Phases>) -> (Vec<Duration>, usize) {
        let options = sinkron_client::ReceiveOptions {
            max: Some(1),
            visibility_ms: Some(30_000),
            wait_ms: Some(1_000),
        };
        let mut latencies = Vec::with_capacity(count);
        let mut errors = 0usize;
        let mut acks = tokio::task::JoinSet::new();
        // Receipts to carry in the next receive (`AckMode::WithReceive`).
        let mut carried = Vec::new();
        for _ in 0..count {
            let t = Instant::now();
            let send = async {
                let outcome =
                    self.client.queue_send(&self.queue, self.body.clone(), self.key.as_deref()).await;
                (outcome.is_ok(), Instant::now())
            };
            let (receipt, sent) = if self.consumer_waits {
                // The receive is polled first, and the send starts a few scheduler turns
                // later, so that the receive's long poll is usually on its way first.
                let receive = self.receive_one(&options, &mut carried, t + STALL_MAX, &mut errors);
                let send = async {
                    for _ in 0..HEAD_START_TURNS {
                        tokio::task::yield_now().await;
                    }
                    send.await
                };
                let (receipt, (ok, sent)) = tokio::join!(receive, send);
                if !ok {
                    errors += 1;
                }
                (receipt, sent)
            } else {
                let (ok, sent) = send.await;
                if !ok {
                    errors += 1;
                    continue;
                }
                (self.receive_one(&options, &mut carried, sent + STALL_MAX, &mut errors).await, sent)
            };
            let Some(receipt) = receipt else {
                errors += 1;
                break;
            };
            let received = Instant::now();
            if self.ack != AckMode::Wait {
                if self.ack == AckMode::Background {
                    let (client, queue) = (self.consumer.clone(), self.queue.clone());
                    acks.spawn(async move { client.queue_ack(&queue, &receipt).await.is_ok() });
                } else {
                    carried.push(receipt);
                }
                latencies.push(t.elapsed());
                phases.record([sent - t, received - sent, Duration::ZERO]);
                crate::progress::tick(1);
                continue;
            }
            match self.consumer.queue_ack(&self.queue, &receipt).await {
                Ok(_) => {
                    latencies.push(t.elapsed());
                    phases.record([sent - t, received - sent, received.elapsed()]);
                    crate::progress::tick(1);
                }
                Err(_) => errors += 1,
            }
        }
        while let Some(acked) = acks.join_next().await {
            errors += usize::from(!matches!(acked, Ok(true)));
        }
        for receipt in carried {
            errors += usize::from(self.consumer.queue_ack(&self.queue, &receipt).await.is_err());
        }
        (latencies, errors)
    }

    /// Long-polls until one message (any worker's) arrives; its receipt, or `None` once
    /// `stalled` passed.
    /// `carried` receipts are acknowledged by the first receive that is answered.
    async fn receive_one(
        &self,
        options: &sinkron_client::ReceiveOptions,
        carried: &mut Vec<String>,
        stalled: Instant,
        errors: &mut usize,
    ) -> Option<String> {
        while Instant::now() < stalled {
            let got = if carried.is_empty() {
                self.consumer.queue_receive(&self.queue, options).await
            } else {
                self.consumer.queue_receive_acking(&self.queue, options, carried).await.map(|(got, acked)| {
                    *errors += acked.failed.len();
                    carried.clear();
                    got
                })
            };
            match got {
                Ok(mut got) if !got.is_empty() => return Some(got.swap_remove(0).receipt),
                Ok(_) => {}
                Err(_) => *errors += 1,
            }
        }
        None
    }
}

/// The three parts of Sinkron's round trips (send, receive, ack), for the p50 of each.
#[derive(Default)]
struct Phases(std::sync::Mutex<Vec<[Duration; 3]>>);

impl Phases {
    fn record(&self, phases: [Duration; 3]) {
        if let Ok(mut all) = self.0.lock() {
            all.push(phases);
        }
    }
}

/// Prints the median of each part (not with `--json`, whose line is the run's summary).
fn report_phases(phases: &Phases, json: bool) {
    let Ok(all) = phases.0.lock() else { return };
    if json || all.is_empty() {
        return;
    }
    let p50 = |i: usize| {
        let mut part: Vec<Duration> = all.iter().map(|p| p[i]).collect();
        part.sort_unstable();
        part[part.len() / 2].as_secs_f64() * 1000.0
    };
    say!("p50 of each part: send {:.3} ms, receive {:.3} ms, ack {:.3} ms", p50(0), p50(1), p50(2));
}
