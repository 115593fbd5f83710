//! `sinkron queue send|receive|ack|nack|stats` and `sinkron ring`.

use sinkron_client::ReceiveOptions;

#[derive(clap::Args)]
pub struct QueueArgs {
    /// Node to ask; any node serves every queue.
    #[arg(long, short, env = "SINKRON_ENDPOINT", default_value = "127.0.0.1:8001", global = true)]
    endpoint: String,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(clap::Subcommand)]
enum QueueCommand {
    /// Send a message; BODY is JSON, or taken as a string when it is not valid JSON.
    Send {
        /// Queue name.
        queue: String,
        /// Message body.
        body: String,
        /// Ordering key (messages with one key keep their order); default: the queue name.
        #[arg(long)]
        key: Option<String>,
        /// Send only while LOCK is held with fence TOKEN, as `LOCK:TOKEN`.
        #[arg(long, value_parser = crate::kv::parse_fence)]
        fence: Option<sinkron_client::Fence>,
    },
    /// Receive messages; each stays hidden for the visibility timeout unless acked.
    Receive {
        /// Queue name.
        queue: String,
        /// Most messages to return.
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// Visibility timeout in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        visibility_ms: u64,
        /// Wait up to this long for a first message (long poll), in milliseconds.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// Acknowledge every received message at once (consume).
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge (delete) a received message.
    Ack {
        /// Queue name.
        queue: String,
        /// Receipt printed by `receive`.
        receipt: String,
    },
    /// Return a received message to the queue.
    Nack {
        /// Queue name.
        queue: String,
        /// Receipt printed by `receive`.
        receipt: String,
        /// Keep it hidden this long first, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Every queue that holds messages, with its counts in all and per partition.
    List,
    /// Ready, in-flight and dead-lettered messages, per partition.
    Stats {
        /// Queue name.
        queue: String,
    },
}

#[derive(clap::Args)]
pub struct RingArgs {
    /// Node to ask.
    #[arg(long, short, env = "SINKRON_ENDPOINT", default_value = "127.0.0.1:8001")]
    endpoint: String,
    /// Also list every virtual node token.
    #[arg(long)]
    tokens: bool,
}

pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    let client = crate::conn::client(&args.endpoint)?;
    let shown = match args.command {
        QueueCommand::Send { queue, body, key, fence } => {
            let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
            let sent = match &fence {
                Some(fence) => client.queue_send_fenced(&queue, body, key.as_deref(), fence).await?,
                None => client.queue_send(&queue, body, key.as_deref()).await?,
            };
            serde_json::to_value(sent)?
        }
        QueueCommand::Receive { queue, max, visibility_ms, wait_ms, ack } => {
            let options =
                ReceiveOptions { max: Some(max), visibility_ms: Some(visibility_ms), wait_ms: Some(wait_ms) };
            let messages = client.queue_receive(&queue, &options).await?;
            if ack {
                for m in &messages {
                    client.queue_ack(&queue, &m.receipt).await?;
                }
            }
            serde_json::json!({ "messages": messages, "acked": ack })
        }
        QueueCommand::Ack { queue, receipt } => {
            serde_json::to_value(client.queue_ack(&queue, &receipt).await?)?
        }
        QueueCommand::Nack { queue, receipt, delay_ms } => {
            serde_json::json!({ "dead_lettered": client.queue_nack(&queue, &receipt, delay_ms).await? })
        }
        QueueCommand::List => serde_json::to_value(client.queues().await?)?,
        QueueCommand::Stats { queue } => serde_json::to_value(client.queue_stats(&queue).await?)?,
    };
    crate::output::show(&shown)?;
    Ok(())
}

/// Prints the ring: nodes, settings and each partition's replicas and leader.
pub async fn ring(args: RingArgs) -> anyhow::Result<()> {
    let ring = crate::conn::client(&args.endpoint)?.ring().await?;
    let tokens = ring.tokens.len();
    let mut ring = serde_json::to_value(ring)?;
    if !args.tokens {
        ring["tokens"] = serde_json::json!(format!("{tokens} tokens (show them with --tokens)"));
    }
    crate::output::show(&ring)?;
    Ok(())
}
