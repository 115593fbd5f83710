//! Whole-cluster views that one node gathers for its caller: every member's own status
//! (`GET /v1/cluster/nodes`) and every queue with messages (`GET /v1/queues`).
//!
//! The dashboard is built on these, but they are ordinary API endpoints: nothing it shows
//! is hidden from other clients. They read, never write, and each member or partition
//! that does not answer in time is reported as such instead of failing the whole answer.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::cache::CacheStatsView;
use super::cluster::{ClusterStatus, Readiness};
use super::error::{ErrorBody, NodeError};
use super::AppState;

/// One member, as it answers for itself.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeOverview {
    /// Node name.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// The member's own `GET /v1/cluster`; absent when it did not answer.
    pub cluster: Option<ClusterStatus>,
    /// Whether its `GET /ready` answered `200`.
    pub ready: bool,
    /// Why it is not ready, as its `/ready` said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_problem: Option<String>,
    /// Its cache counters (`GET /v1/cache`); absent when it did not answer.
    pub cache: Option<CacheStatsView>,
    /// Why the member could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every member of group 0.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodesOverview {
    /// By name.
    pub nodes: Vec<NodeOverview>,
}

/// Every member's status, readiness and cache counters, asked of each member in parallel
/// (2 s each); this node answers for itself without a call.
#[utoipa::path(get, path = "/v1/cluster/nodes", tag = "cluster", responses((status = 200, body = NodesOverview)))]
pub async fn nodes(State(node): State<AppState>) -> Json<NodesOverview> {
    let me = node.config.name.clone();
    let asks = node.group0.members().into_iter().map(|(id, addr)| {
        let node = node.clone();
        let me = me.clone();
        async move {
            if id == me {
                own_overview(node, id, addr).await
            } else {
                peer_overview(&node, id, addr).await
            }
        }
    });
    let mut nodes = futures_util::future::join_all(asks).await;
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Json(NodesOverview { nodes })
}

async fn own_overview(node: AppState, id: String, addr: String) -> NodeOverview {
    let cluster = super::cluster::status_of(&node).await;
    let ready = super::cluster::ready(State(node.clone())).await;
    let Json(cache) = super::cache::stats(State(node)).await;
    NodeOverview {
        id,
        addr,
        cluster: Some(cluster),
        ready: ready.is_ok(),
        ready_problem: ready.err().map(|e| e.to_string()),
        cache: Some(cache),
        error: None,
    }
}

async fn peer_overview(node: &AppState, id: String, addr: String) -> NodeOverview {
    let peers = &node.peers;
    let (cluster, ready, cache) = tokio::join!(
        peers.get_json(&addr, "/v1/cluster"),
        peers.get_json(&addr, "/ready"),
        peers.get_json(&addr, "/v1/cache"),
    );
    let decode = |answer: Result<(u16, serde_json::Value), String>| -> Result<serde_json::Value, String> {
        match answer? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("HTTP {status}: {}", body.get("message").unwrap_or(&body))),
        }
    };
    let error = cluster.as_ref().err().cloned();
    let (ready, ready_problem) = match decode(ready) {
        Ok(body) => (serde_json::from_value::<Readiness>(body).is_ok(), None),
        Err(problem) => (false, Some(problem)),
    };
    NodeOverview {
        id,
        addr,
        cluster: decode(cluster).ok().and_then(|b| serde_json::from_value(b).ok()),
        ready,
        ready_problem,
        cache: decode(cache).ok().and_then(|b| serde_json::from_value(b).ok()),
        error,
    }
}

/// One queue with messages, over all partitions.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct QueueSummary {
    /// Queue name.
    pub queue: String,
    /// Ready messages, delayed ones included.
    pub ready: usize,
    /// Delivered, unacknowledged messages.
    pub in_flight: usize,
    /// Messages of `<queue>.dlq`, ready and in flight.
    pub dead_letters: usize,
    /// The partitions that hold its messages.
    pub partitions: Vec<QueuePartitionCounts>,
}

/// A queue's messages in one partition.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct QueuePartitionCounts {
    /// Partition number.
    pub partition: u32,
    /// Ready messages.
    pub ready: usize,
    /// Messages in flight.
    pub in_flight: usize,
    /// Messages of its dead-letter queue in this partition.
    pub dead_letters: usize,
}

/// Every queue with messages.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    /// By name. A dead-letter queue is counted in its queue's `dead_letters`.
    pub queues: Vec<QueueSummary>,
    /// Whether a partition held more queues than it lists (1,000 each, by name).
    pub truncated: bool,
    /// Partitions whose leader did not answer in time: their queues are missing.
    pub unanswered_partitions: Vec<u32>,
}

/// Every queue that holds messages, with its counts in all and per partition, asked of
/// every partition's leader in parallel.
#[utoipa::path(operation_id = "queue_list", get, path = "/v1/queues", tag = "queues",
    responses((status = 200, body = QueueList), (status = 503, body = ErrorBody)))]
pub async fn queues(State(node): State<AppState>) -> Result<Json<QueueList>, NodeError> {
    let (listed, unanswered_partitions) = node.queues.list().await?;
    let truncated = listed.iter().any(|p| p.truncated);
    let mut summaries: BTreeMap<String, QueueSummary> = BTreeMap::new();
    for partition in &listed {
        for counts in &partition.queues {
            let (name, dead) = match counts.queue.strip_suffix(sinkron_core::queue::DLQ_SUFFIX) {
                Some(base) => (base, true),
                None => (counts.queue.as_str(), false),
            };
            let summary = summaries
                .entry(name.to_string())
                .or_insert_with(|| QueueSummary { queue: name.to_string(), ..QueueSummary::default() });
            // Partitions are listed in order, so this partition is the last one or new.
            if summary.partitions.last().is_none_or(|p| p.partition != partition.partition) {
                let counts = QueuePartitionCounts { partition: partition.partition, ..Default::default() };
                summary.partitions.push(counts);
            }
            if let Some(slot) = summary.partitions.last_mut() {
                if dead {
                    slot.dead_letters += counts.ready + counts.in_flight;
                } else {
                    slot.ready += counts.ready;
                    slot.in_flight += counts.in_flight;
                }
            }
        }
    }
    let queues = summaries
        .into_values()
        .map(|mut q| {
            q.ready = q.partitions.iter().map(|p| p.ready).sum();
            q.in_flight = q.partitions.iter().map(|p| p.in_flight).sum();
            q.dead_letters = q.partitions.iter().map(|p| p.dead_letters).sum();
            q
        })
        .collect();
    Ok(Json(QueueList { queues, truncated, unanswered_partitions }))
}
