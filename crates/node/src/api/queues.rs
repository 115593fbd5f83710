//! Queue endpoints under `/v1/queues` and the ring under `/v1/ring`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sinkron_core::limits::{
    QUEUE_DELAY_MAX_MS, QUEUE_RECEIVE_MAX, QUEUE_VISIBILITY_MAX_MS, QUEUE_WAIT_MAX_MS,
};
use sinkron_core::ring::hash32;
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath as Path, ErrorBody, NodeError};
use super::AppState;
use crate::wire::{PartitionStats, Sent};

/// Visibility timeout of a receive that names none.
pub const DEFAULT_VISIBILITY_MS: u64 = 30_000;

/// Body of a send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// Any JSON value, at most 256 KiB encoded.
    pub body: serde_json::Value,
    /// Ordering key: messages with the same key keep their order. Defaults to the queue
    /// name, which keeps the whole queue in one partition and in order.
    #[serde(default)]
    pub key: Option<String>,
    /// Makes a retried send idempotent: the same id within the de-duplication window is
    /// stored once and answered with the first reply.
    #[serde(default)]
    pub request_id: Option<String>,
    /// A fenced send: accepted only while the lock is held with this fence, and never after
    /// a send with a newer fence of the lock reached the same partition; otherwise
    /// `409 stale_fence`.
    #[serde(default)]
    pub fence: Option<super::kv::FenceBody>,
}

/// Body of a receive.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveBody {
    /// Most messages to return, 1 to 100 (default 1).
    #[serde(default)]
    pub max: Option<u32>,
    /// How long delivered messages stay hidden before they are delivered again unless
    /// acked, in milliseconds (default 30,000; at most 12 hours).
    #[serde(default)]
    pub visibility_ms: Option<u64>,
    /// Long poll: wait up to this long for a first message (default 0; at most 60,000).
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Receipts of earlier deliveries of this queue to acknowledge with this receive (up to
    /// 100). The acks are proposed at the same time as the receive, so a consumer's ack
    /// costs no round trip of its own; the answer says which failed.
    #[serde(default)]
    pub ack: Option<Vec<String>>,
}

/// One delivered message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    /// Message id, `<partition>-<sequence>`.
    pub id: String,
    /// The body as sent.
    pub body: serde_json::Value,
    /// Receipt for ack or nack, valid for this delivery only.
    pub receipt: String,
    /// Deliveries so far, this one included.
    pub receive_count: u32,
}

/// Result of a receive.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Received {
    /// Delivered messages (empty when none was ready).
    pub messages: Vec<MessageView>,
    /// With `ack`: how many of its receipts were acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<usize>,
    /// With `ack`: the receipts that failed, such as stale ones (`not_found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Vec<AckFailure>>,
}

/// Most messages or receipts in one batch call.
pub const BATCH_MAX: usize = 100;

/// Body of a batch send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBatchBody {
    /// 1 to 100 messages.
    pub messages: Vec<SendBody>,
}

/// The outcome of one message of a batch send: `id` and `partition`, or `error` and
/// `message` (the same codes as a single send).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct SendOutcome {
    /// Message id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Partition storing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// Error code when it was not stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Explanation of the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Result of a batch send.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SentBatch {
    /// One outcome per message, in order.
    pub messages: Vec<SendOutcome>,
}

/// Body of an ack: one `receipt`, or up to 100 `receipts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// The receipt of the delivery.
    #[serde(default)]
    pub receipt: Option<String>,
    /// Several receipts, acknowledged together.
    #[serde(default)]
    pub receipts: Option<Vec<String>>,
}

/// A receipt of a batch ack that failed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AckFailure {
    /// The receipt.
    pub receipt: String,
    /// Error code, such as `not_found` for a stale receipt.
    pub error: String,
    /// Explanation.
    pub message: String,
}

/// Body of a nack.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    /// The receipt of the delivery.
    pub receipt: String,
    /// Keep the message hidden this long before it is delivered again (default 0; at most
    /// 15 minutes).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// Result of an ack.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Acked {
    /// How many deliveries were acknowledged.
    pub acked: usize,
    /// The receipts of a batch that failed (a single receipt fails with an error status).
    pub failed: Vec<AckFailure>,
}

/// Result of a nack.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Nacked {
    /// True when the message had been delivered `QUEUE_MAX_RECEIVES` times and went to the
    /// dead-letter queue `<queue>.dlq`.
    pub dead_lettered: bool,
}

/// A queue's counts over all partitions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// Queue name.
    pub queue: String,
    /// Ready messages.
    pub ready: usize,
    /// Delivered, unacknowledged messages.
    pub in_flight: usize,
    /// Messages in `<queue>.dlq`.
    pub dead_letters: usize,
    /// The same, per partition, with each partition's leader.
    pub partitions: Vec<PartitionStats>,
}

/// One token of the ring.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Position on `0..2^32-1`.
    pub token: u32,
    /// Virtual node name, such as `node1-vn0`.
    pub name: String,
    /// Node.
    pub node: String,
}

/// One partition's placement.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionView {
    /// Partition number.
    pub partition: u32,
    /// First point of its hash range.
    pub start: u32,
    /// Last point of its hash range.
    pub end: u32,
    /// Replicas its Raft group has.
    pub replicas: Vec<String>,
    /// Replicas the ring wants (differs from `replicas` while moving).
    pub target: Vec<String>,
    /// Whether a move is pending.
    pub moving: bool,
    /// Moves recorded so far.
    pub generation: u64,
    /// Leader of its group, if known.
    pub leader: Option<String>,
}

/// The ring and the placements.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RingView {
    /// Tokens per node.
    pub virtual_nodes: u32,
    /// Number of partitions.
    pub partition_count: u32,
    /// Replicas per partition.
    pub replication: u32,
    /// Deliveries before dead-lettering.
    pub max_receives: u32,
    /// Nodes on the ring.
    pub nodes: Vec<String>,
    /// Every token, in ring order.
    pub tokens: Vec<TokenView>,
    /// Every partition.
    pub partitions: Vec<PartitionView>,
}

/// Sends a message; answered once its partition committed it.
#[utoipa::path(post, path = "/v1/queues/{queue}/messages", tag = "queues", request_body = SendBody,
    params(("queue" = String, Path, description = "Queue name: letters, digits, - _ . :")),
    responses((status = 201, body = Sent), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn send(
    State(node): State<AppState>,
    Path(queue): Path<String>,
    ApiJson(body): ApiJson<SendBody>,
) -> Result<(StatusCode, Json<Sent>), NodeError> {
    let fence = body.fence.map(super::kv::FenceBody::checked).transpose()?;
    let sent = node.queues.send(&queue, body.key, body.body, body.request_id, fence).await?;
    Ok((StatusCode::CREATED, Json(sent)))
}

fn bounded(field: &str, value: u64, min: u64, max: u64) -> Result<u64, NodeError> {
    if value < min || value > max {
        return Err(NodeError::InvalidArgument(format!("{field} must be {min} to {max}, got {value}")));
    }
    Ok(value)
}

/// Receives messages from every partition of the queue, oldest first within a partition.
#[utoipa::path(post, path = "/v1/queues/{queue}/receive", tag = "queues", request_body = ReceiveBody,
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = Received), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn receive(
    State(node): State<AppState>,
    Path(queue): Path<String>,
    ApiJson(body): ApiJson<ReceiveBody>,
) -> Result<Json<Received>, NodeError> {
    let max = bounded("max", body.max.unwrap_or(1).into(), 1, QUEUE_RECEIVE_MAX.into())? as u32;
    let visibility_ms = bounded(
        "visibility_ms",
        body.visibility_ms.unwrap_or(DEFAULT_VISIBILITY_MS),
        1,
        QUEUE_VISIBILITY_MAX_MS,
    )?;
    let wait_ms = bounded("wait_ms", body.wait_ms.unwrap_or(0), 0, QUEUE_WAIT_MAX_MS)?;
    let receipts = match body.ack {
        Some(receipts) => Some(checked_receipts("ack", &queue, receipts, 0)?),
        None => None,
    };
    let _permit = if wait_ms > 0 { Some(node.waiting.long_poll()?) } else { None };
    let (delivered, acks) = match receipts {
        None => (node.queues.receive(&queue, max, visibility_ms, wait_ms).await?, None),
        Some(receipts) => {
            let (delivered, outcomes) =
                node.queues.receive_acking(&queue, max, visibility_ms, wait_ms, &receipts).await;
            // The acks' outcomes must reach the caller: a receive that failed answers empty
            // (a receive may always find nothing) rather than an error that would hide acks
            // already made.
            (delivered.unwrap_or_default(), Some(ack_failures(receipts, outcomes)))
        }
    };
    let messages = delivered
        .into_iter()
        .map(|d| MessageView { id: d.id, body: d.body, receipt: d.receipt, receive_count: d.receive_count })
        .collect();
    let (acked, failed) = acks.map(|(acked, failed)| (Some(acked), Some(failed))).unwrap_or_default();
    Ok(Json(Received { messages, acked, failed }))
}

/// `receipts` (the body's `field`), each checked, between `min` and [`BATCH_MAX`] of them,
/// for `queue`.
fn checked_receipts(
    field: &str,
    queue: &str,
    receipts: Vec<String>,
    min: usize,
) -> Result<Vec<String>, NodeError> {
    if receipts.len() < min || receipts.len() > BATCH_MAX {
        return Err(NodeError::InvalidArgument(format!(
            "{field}: {min} to {BATCH_MAX} receipts per call, got {}",
            receipts.len()
        )));
    }
    for receipt in &receipts {
        check_receipt(receipt)?;
    }
    sinkron_core::limits::validate_queue_name(queue)?;
    Ok(receipts)
}

/// Acknowledges `receipts` of `queue` together; answers how many were acknowledged and
/// which failed.
async fn ack_receipts(node: &AppState, queue: &str, receipts: Vec<String>) -> (usize, Vec<AckFailure>) {
    let outcomes = node.queues.ack_many(queue, receipts.clone()).await;
    ack_failures(receipts, outcomes)
}

/// How many of `receipts` were acknowledged, by their `outcomes`, and which failed.
fn ack_failures(receipts: Vec<String>, outcomes: Vec<Result<(), NodeError>>) -> (usize, Vec<AckFailure>) {
    let total = receipts.len();
    let mut failed = Vec::new();
    for (receipt, outcome) in receipts.into_iter().zip(outcomes) {
        if let Err(e) = outcome {
            failed.push(AckFailure {
                receipt,
                error: e.status_and_code().1.to_string(),
                message: e.to_string(),
            });
        }
    }
    (total - failed.len(), failed)
}

fn check_receipt(receipt: &str) -> Result<(), NodeError> {
    if receipt.is_empty() || receipt.len() > 64 {
        return Err(NodeError::InvalidArgument("receipt: 1 to 64 bytes as returned by receive".into()));
    }
    Ok(())
}

/// Sends up to 100 messages in one call; each is stored (or refused) on its own.
#[utoipa::path(post, path = "/v1/queues/{queue}/messages/batch", tag = "queues", request_body = SendBatchBody,
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 201, body = SentBatch), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn send_batch(
    State(node): State<AppState>,
    Path(queue): Path<String>,
    ApiJson(body): ApiJson<SendBatchBody>,
) -> Result<(StatusCode, Json<SentBatch>), NodeError> {
    if body.messages.is_empty() || body.messages.len() > BATCH_MAX {
        return Err(NodeError::InvalidArgument(format!(
            "messages: 1 to {BATCH_MAX} per batch, got {}",
            body.messages.len()
        )));
    }
    sinkron_core::limits::validate_queue_name(&queue)?;
    if body.messages.iter().any(|m| m.fence.is_some()) {
        return Err(NodeError::InvalidArgument(
            "messages: a fence is taken by single sends only (POST /v1/queues/{queue}/messages)".into(),
        ));
    }
    let messages = body.messages.into_iter().map(|m| (m.key, m.body, m.request_id)).collect();
    let outcomes = node.queues.send_many(&queue, messages).await;
    let messages = outcomes
        .into_iter()
        .map(|o| match o {
            Ok(sent) => {
                SendOutcome { id: Some(sent.id), partition: Some(sent.partition), ..SendOutcome::default() }
            }
            Err(e) => SendOutcome {
                error: Some(e.status_and_code().1.to_string()),
                message: Some(e.to_string()),
                ..SendOutcome::default()
            },
        })
        .collect();
    Ok((StatusCode::CREATED, Json(SentBatch { messages })))
}

/// Acknowledges deliveries: the messages are deleted. One `receipt` fails with its error
/// status; a batch of `receipts` answers which failed.
#[utoipa::path(post, path = "/v1/queues/{queue}/ack", tag = "queues", request_body = AckBody,
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = Acked), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn ack(
    State(node): State<AppState>,
    Path(queue): Path<String>,
    ApiJson(body): ApiJson<AckBody>,
) -> Result<Json<Acked>, NodeError> {
    match (body.receipt, body.receipts) {
        (Some(receipt), None) => {
            check_receipt(&receipt)?;
            node.queues.ack(&queue, &receipt).await?;
            Ok(Json(Acked { acked: 1, failed: Vec::new() }))
        }
        (None, Some(receipts)) => {
            let receipts = checked_receipts("receipts", &queue, receipts, 1)?;
            let (acked, failed) = ack_receipts(&node, &queue, receipts).await;
            Ok(Json(Acked { acked, failed }))
        }
        _ => Err(NodeError::InvalidArgument("give either receipt or receipts".into())),
    }
}

/// Returns a delivery: the message is ready again (after `delay_ms`), or goes to the
/// dead-letter queue once delivered `QUEUE_MAX_RECEIVES` times.
#[utoipa::path(post, path = "/v1/queues/{queue}/nack", tag = "queues", request_body = NackBody,
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = Nacked), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn nack(
    State(node): State<AppState>,
    Path(queue): Path<String>,
    ApiJson(body): ApiJson<NackBody>,
) -> Result<Json<Nacked>, NodeError> {
    check_receipt(&body.receipt)?;
    let delay_ms = bounded("delay_ms", body.delay_ms.unwrap_or(0), 0, QUEUE_DELAY_MAX_MS)?;
    let dead_lettered = node.queues.nack(&queue, &body.receipt, delay_ms).await?;
    Ok(Json(Nacked { dead_lettered }))
}

/// Counts of a queue: ready, in flight and dead letters, per partition, read at each
/// partition's leader.
#[utoipa::path(operation_id = "queue_stats", get, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn stats(
    State(node): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Json<QueueView>, NodeError> {
    let partitions = node.queues.stats(&queue).await?;
    Ok(Json(QueueView {
        ready: partitions.iter().map(|p| p.ready).sum(),
        in_flight: partitions.iter().map(|p| p.in_flight).sum(),
        dead_letters: partitions.iter().map(|p| p.dead_letters).sum(),
        queue,
        partitions,
    }))
}

/// The consistent-hash ring: virtual nodes, and each partition's replicas, target and leader.
#[utoipa::path(get, path = "/v1/ring", tag = "queues",
    responses((status = 200, body = RingView), (status = 503, body = ErrorBody)))]
pub async fn ring(State(node): State<AppState>) -> Result<Json<RingView>, NodeError> {
    let topology = node
        .group0
        .topology()
        .ok_or_else(|| NodeError::Unavailable("queues are not set up yet; retry in a moment".into()))?;
    let settings = topology.settings;
    let ring = topology.ring();
    let mut tokens = Vec::with_capacity(ring.tokens().len());
    for name in &topology.nodes {
        for i in 0..settings.virtual_nodes {
            let vnode = format!("{name}-vn{i}");
            let token = hash32(vnode.as_bytes());
            // On a collision the ring keeps one owner; show the token once, under it.
            if ring.tokens().get(&token) == Some(name) {
                tokens.push(TokenView { token, name: vnode, node: name.clone() });
            }
        }
    }
    tokens.sort_by_key(|t| t.token);
    let leaders = node.queues.stats_of_all(settings.partitions, None).await?;
    let partitions = topology
        .targets()
        .into_iter()
        .map(|target| {
            let record = topology.partitions.get(target.partition as usize);
            let replicas = record.map(|r| r.replicas.clone()).unwrap_or_default();
            let mut sorted_now = replicas.clone();
            sorted_now.sort();
            let mut sorted_target = target.replicas.clone();
            sorted_target.sort();
            PartitionView {
                partition: target.partition,
                start: target.start,
                end: target.end,
                moving: sorted_now != sorted_target,
                generation: record.map(|r| r.generation).unwrap_or(0),
                leader: leaders
                    .iter()
                    .find(|s| s.partition == target.partition)
                    .and_then(|s| s.leader.clone()),
                replicas,
                target: target.replicas,
            }
        })
        .collect();
    Ok(Json(RingView {
        virtual_nodes: settings.virtual_nodes,
        partition_count: settings.partitions,
        replication: settings.replication,
        max_receives: settings.max_receives,
        nodes: topology.nodes.clone(),
        tokens,
        partitions,
    }))
}
