//! RabbitMQ as an anchor for `sinkron bench roundtrip --target rabbitmq`: a durable quorum
//! queue (replicated by RabbitMQ's Raft, fsync before a confirm), persistent messages,
//! publisher confirms, and consumers with prefetch 1 and manual acks: RabbitMQ's own
//! at-least-once path, at its fastest (deliveries are pushed, not polled).

use std::time::{Duration, Instant};

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, ConsumerMessage, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use tokio::sync::mpsc;

/// The broker's nodes and the queue of one run.
pub(super) struct Rabbit {
    /// `(host, port)` of each node's AMQP listener; worker `w` connects to node `w mod n`.
    nodes: Vec<(String, u16)>,
    queue: String,
    admin: Connection,
}

/// One worker: its own connection, a channel in confirm mode that publishes, and a
/// consumer with one unacknowledged delivery at most.
pub(super) struct Worker {
    connection: Connection,
    channel: Channel,
    queue: String,
    confirms: mpsc::UnboundedReceiver<bool>,
    deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
}

impl Rabbit {
    /// Connects to the first of `endpoints` (comma-separated `host:port`, the AMQP
    /// listeners of one broker's nodes) and declares `queue` as a durable quorum queue. A
    /// quorum queue is replicated to every node of the broker's cluster.
    pub(super) async fn connect(endpoints: &str, queue: &str) -> anyhow::Result<Self> {
        let nodes = endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).map(parse_endpoint);
        let nodes: Vec<(String, u16)> = nodes.collect::<anyhow::Result<_>>()?;
        let (host, port) =
            nodes.first().ok_or_else(|| anyhow::anyhow!("--endpoints: no RabbitMQ node given"))?;
        let admin = open(host, *port).await?;
        let channel = admin.open_channel(None).await.map_err(|e| anyhow::anyhow!("open a channel: {e}"))?;
        let mut arguments = FieldTable::new();
        arguments.insert(
            "x-queue-type".try_into().map_err(|_| anyhow::anyhow!("field name"))?,
            FieldValue::S("quorum".try_into().map_err(|_| anyhow::anyhow!("field value"))?),
        );
        channel
            .queue_declare(QueueDeclareArguments::durable_client_named(queue).arguments(arguments).finish())
            .await
            .map_err(|e| anyhow::anyhow!("declare the quorum queue {queue}: {e}"))?;
        Ok(Self { nodes, queue: queue.to_string(), admin })
    }

    /// Worker `index`, on a connection of its own to node `index mod n`.
    pub(super) async fn worker(&self, index: usize) -> anyhow::Result<Worker> {
        let (host, port) = &self.nodes[index % self.nodes.len()];
        let connection = open(host, *port).await?;
        let channel =
            connection.open_channel(None).await.map_err(|e| anyhow::anyhow!("open a channel: {e}"))?;
        let (confirm_tx, confirms) = mpsc::unbounded_channel();
        channel
            .register_callback(Confirms(confirm_tx))
            .await
            .map_err(|e| anyhow::anyhow!("register the confirm callback: {e}"))?;
        channel
            .confirm_select(ConfirmSelectArguments::new(false))
            .await
            .map_err(|e| anyhow::anyhow!("confirm mode: {e}"))?;
        channel
            .basic_qos(BasicQosArguments::new(0, 1, false))
            .await
            .map_err(|e| anyhow::anyhow!("qos: {e}"))?;
        let (_, deliveries) = channel
            .basic_consume_rx(BasicConsumeArguments::new(&self.queue, "").manual_ack(true).finish())
            .await
            .map_err(|e| anyhow::anyhow!("consume {}: {e}", self.queue))?;
        Ok(Worker { connection, channel, queue: self.queue.clone(), confirms, deliveries })
    }

    /// Deletes the run's queue (best effort: the broker is the bench's, not a user's).
    pub(super) async fn delete_queue(self) {
        if let Ok(channel) = self.admin.open_channel(None).await {
            let _ = channel.queue_delete(QueueDeleteArguments::new(&self.queue)).await;
            let _ = channel.close().await;
        }
        let _ = self.admin.close().await;
    }
}

impl Worker {
    /// `count` round trips: publish and wait for the confirm, take one delivery (any
    /// worker's), ack it. Gives up when one round trip takes longer than `stall_max`.
    pub(super) async fn run(
        mut self,
        body: &[u8],
        count: usize,
        stall_max: Duration,
    ) -> (Vec<Duration>, usize) {
        let mut latencies = Vec::with_capacity(count);
        let mut errors = 0usize;
        for _ in 0..count {
            let t = Instant::now();
            match tokio::time::timeout(stall_max, self.round_trip(body)).await {
                Ok(Ok(())) => {
                    latencies.push(t.elapsed());
                    crate::progress::tick(1);
                }
                Ok(Err(_)) => errors += 1,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        // Closing hands a delivery this worker was pushed but will not take back to the
        // queue, for a worker still waiting.
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
        (latencies, errors)
    }

    async fn round_trip(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default();
        properties.with_persistence(true);
        self.channel
            .basic_publish(properties, body.to_vec(), BasicPublishArguments::new("", &self.queue))
            .await
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        // One publish in flight per channel, so the next confirm is this one's.
        anyhow::ensure!(self.confirms.recv().await == Some(true), "the broker refused the message");
        let message = self.deliveries.recv().await.ok_or_else(|| anyhow::anyhow!("the consumer ended"))?;
        let tag =
            message.deliver.map(|d| d.delivery_tag()).ok_or_else(|| anyhow::anyhow!("no delivery tag"))?;
        self.channel
            .basic_ack(BasicAckArguments::new(tag, false))
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))
    }
}

/// `host:port` of one AMQP listener.
fn parse_endpoint(endpoint: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--endpoints: want host:port of RabbitMQ, got {endpoint:?}"))?;
    let port: u16 = port.parse().map_err(|_| anyhow::anyhow!("--endpoints: bad port in {endpoint:?}"))?;
    Ok((host.to_string(), port))
}

async fn open(host: &str, port: u16) -> anyhow::Result<Connection> {
    let connection = Connection::open(&OpenConnectionArguments::new(host, port, "guest", "guest"))
        .await
        .map_err(|e| anyhow::anyhow!("connect to RabbitMQ at {host}:{port}: {e}"))?;
    connection
        .register_callback(DefaultConnectionCallback)
        .await
        .map_err(|e| anyhow::anyhow!("register the connection callback: {e}"))?;
    Ok(connection)
}

/// Forwards each publisher confirm (true) or refusal (false) to the worker.
struct Confirms(mpsc::UnboundedSender<bool>);

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: Ack) {
        let _ = self.0.send(true);
    }
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {
        let _ = self.0.send(false);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {
        let _ = self.0.send(false);
    }
}
