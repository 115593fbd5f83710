//! Node-to-node Raft RPC, server side. Bodies are openraft's own request and reply types as
//! JSON; the reply is `{"Ok": ...}` or `{"Err": ...}` with openraft's error.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use sinkron_core::Request;

use super::error::{ApiJson, ApiPath as Path, NodeError, PEER_JSON_DEPTH};
use super::AppState;
use crate::peer_stream::STREAM_MAX_CALLS;
use crate::types::{GroupId, NodeId, TypeConfig, GROUP0};
use crate::wire::{
    AppliedQuery, ForwardedWrite, LeaderCall, LeaseRenewal, PartitionCall, PartitionEnvelope, PartitionReply,
    ReadIndex, StreamCall, StreamReply,
};

type RaftReply<T, E = openraft::error::Infallible> = Json<Result<T, RaftError<NodeId, E>>>;

fn unknown_group(group: GroupId) -> NodeError {
    NodeError::NotFound(format!("this node hosts no Raft group {group}"))
}

/// AppendEntries (also heartbeats).
#[utoipa::path(post, path = "/raft/{group}/append", tag = "raft", request_body = Object,
    params(("group" = u64, Path, description = "Raft group id")), responses((status = 200, body = Object)))]
pub async fn append(
    State(node): State<AppState>,
    Path(group): Path<GroupId>,
    ApiJson(req): ApiJson<AppendEntriesRequest<TypeConfig>, PEER_JSON_DEPTH>,
) -> Result<RaftReply<AppendEntriesResponse<NodeId>>, NodeError> {
    let raft = node.raft_of(group).ok_or_else(|| unknown_group(group))?;
    Ok(Json(raft.append_entries(req).await))
}

/// The Raft calls of many groups from one peer in one body (see `crate::peer_stream`):
/// run concurrently, so the groups' appends share one flush; one reply per call, in order.
#[utoipa::path(post, path = "/raft/batch", tag = "raft", request_body = Object,
    responses((status = 200, body = Object)))]
pub async fn batch(
    State(node): State<AppState>,
    ApiJson(calls): ApiJson<Vec<StreamCall>, { PEER_JSON_DEPTH + 2 }>,
) -> Result<Json<Vec<StreamReply>>, NodeError> {
    if calls.len() > STREAM_MAX_CALLS {
        return Err(NodeError::PayloadTooLarge(format!("at most {STREAM_MAX_CALLS} calls per batch")));
    }
    // Polled together in this task (no task per call, no hop to another worker thread):
    // each call still waits on its own group, so their appends share one flush.
    let replies =
        futures_util::future::join_all(calls.into_iter().map(|call| stream_call(&node, call))).await;
    Ok(Json(replies))
}

/// Runs one call of a batch at its group.
async fn stream_call(node: &AppState, call: StreamCall) -> StreamReply {
    let Some(raft) = node.raft_of(call.group) else {
        return StreamReply::refused(404, unknown_group(call.group).to_string());
    };
    let refused = |rpc: &'static str, e: serde_json::Error| {
        node.peers.refusals.record(call.group, "a caller", crate::network::Direction::ByUs, rpc, 400);
        StreamReply::refused(400, format!("malformed {rpc} call: {e}"))
    };
    let reply = match call.rpc.as_str() {
        "append" => match serde_json::from_str::<AppendEntriesRequest<TypeConfig>>(call.body.get()) {
            Ok(req) => serde_json::value::to_raw_value(&raft.append_entries(req).await),
            Err(e) => return refused("append", e),
        },
        "vote" => match serde_json::from_str::<VoteRequest<NodeId>>(call.body.get()) {
            Ok(req) => serde_json::value::to_raw_value(&raft.vote(req).await),
            Err(e) => return refused("vote", e),
        },
        other => return StreamReply::refused(400, format!("no Raft call {other:?} on a stream")),
    };
    match reply {
        Ok(body) => StreamReply::ok(body),
        Err(e) => StreamReply::refused(500, format!("cannot encode the reply: {e}")),
    }
}

/// RequestVote.
#[utoipa::path(post, path = "/raft/{group}/vote", tag = "raft", request_body = Object,
    params(("group" = u64, Path, description = "Raft group id")), responses((status = 200, body = Object)))]
pub async fn vote(
    State(node): State<AppState>,
    Path(group): Path<GroupId>,
    ApiJson(req): ApiJson<VoteRequest<NodeId>, PEER_JSON_DEPTH>,
) -> Result<RaftReply<VoteResponse<NodeId>>, NodeError> {
    let raft = node.raft_of(group).ok_or_else(|| unknown_group(group))?;
    Ok(Json(raft.vote(req).await))
}

/// InstallSnapshot, one chunk per call.
#[utoipa::path(post, path = "/raft/{group}/snapshot", tag = "raft", request_body = Object,
    params(("group" = u64, Path, description = "Raft group id")), responses((status = 200, body = Object)))]
pub async fn snapshot(
    State(node): State<AppState>,
    Path(group): Path<GroupId>,
    ApiJson(req): ApiJson<InstallSnapshotRequest<TypeConfig>, PEER_JSON_DEPTH>,
) -> Result<RaftReply<InstallSnapshotResponse<NodeId>, InstallSnapshotError>, NodeError> {
    let raft = node.raft_of(group).ok_or_else(|| unknown_group(group))?;
    node.snapshot_chunks.admit(group, &req.meta.snapshot_id, req.offset, req.data.len())?;
    Ok(Json(raft.install_snapshot(req).await))
}

/// Client writes forwarded by another node to the leader, as one batch.
#[utoipa::path(post, path = "/raft/{group}/write", tag = "raft", request_body = Object,
    params(("group" = u64, Path, description = "Raft group id")), responses((status = 200, body = Object)))]
pub async fn write(
    State(node): State<AppState>,
    Path(group): Path<GroupId>,
    ApiJson(requests): ApiJson<Vec<Request>, PEER_JSON_DEPTH>,
) -> Result<Json<Vec<ForwardedWrite>>, NodeError> {
    if requests.len() > crate::proposer::BATCH_MAX {
        return Err(NodeError::PayloadTooLarge(format!(
            "at most {} requests per call",
            crate::proposer::BATCH_MAX
        )));
    }
    let deadline = Instant::now() + Duration::from_millis(node.config.request_timeout_ms);
    node.write_forwarded(group, requests, deadline).await.map(Json).ok_or_else(|| unknown_group(group))
}

/// A queue operation on a partition, passed on by another node (see `PartitionCall`).
#[utoipa::path(post, path = "/raft/{group}/queue", tag = "raft", request_body = PartitionEnvelope,
    params(("group" = u64, Path, description = "Raft group id of the partition")), responses((status = 200, body = Object)))]
pub async fn queue(
    State(node): State<AppState>,
    Path(group): Path<GroupId>,
    ApiJson(envelope): ApiJson<PartitionEnvelope, PEER_JSON_DEPTH>,
) -> Result<Json<Result<PartitionReply, NodeError>>, NodeError> {
    let partition = crate::types::group_partition(group).ok_or_else(|| unknown_group(group))?;
    let within = Duration::from_millis(envelope.within_ms.min(node.config.request_timeout_ms * 4));
    let deadline = Instant::now() + within;
    let hops = envelope.hops.min(2);
    // A waiting receive relayed here counts against this node's long polls, up to half of
    // them: beyond, the relaying node runs it itself.
    let _permit = match &envelope.call {
        PartitionCall::AtLeader(LeaderCall::WaitingReceive { .. }) => {
            match node.waiting.relayed_long_poll() {
                Ok(permit) => Some(permit),
                Err(e) => return Ok(Json(Err(e))),
            }
        }
        _ => None,
    };
    Ok(Json(node.queues.partition_call(partition, envelope.call, deadline, hops).await))
}

/// ReadIndex: the leader confirms its leadership and tells the index reads must wait for.
#[utoipa::path(post, path = "/raft/{group}/read-index", tag = "raft",
    params(("group" = u64, Path, description = "Raft group id")), responses((status = 200, body = Object)))]
pub async fn read_index(
    State(node): State<AppState>,
    Path(group): Path<GroupId>,
) -> Result<Json<ReadIndex>, NodeError> {
    if group != GROUP0 {
        return Err(unknown_group(group));
    }
    let deadline = Instant::now() + Duration::from_millis(node.config.request_timeout_ms);
    Ok(Json(node.group0.read_index_local(deadline).await))
}

/// Answers once this node applied `index` (a writer waiting for invalidations), or 503.
#[utoipa::path(post, path = "/raft/{group}/applied", tag = "raft", request_body = AppliedQuery,
    params(("group" = u64, Path, description = "Raft group id")), responses((status = 200, body = Object), (status = 503, body = Object)))]
pub async fn applied(
    State(node): State<AppState>,
    Path(group): Path<GroupId>,
    ApiJson(query): ApiJson<AppliedQuery, PEER_JSON_DEPTH>,
) -> Result<Json<serde_json::Value>, NodeError> {
    if group != GROUP0 {
        return Err(unknown_group(group));
    }
    let deadline = Instant::now() + Duration::from_millis(query.wait_ms.min(10_000));
    node.group0.wait_applied(query.index, deadline).await?;
    Ok(Json(serde_json::json!({ "applied": node.group0.applied_index() })))
}

/// On the leader: records a cache lease renewal and answers the index to apply first.
#[utoipa::path(post, path = "/raft/{group}/cache-lease", tag = "raft", request_body = LeaseRenewal,
    params(("group" = u64, Path, description = "Raft group id")), responses((status = 200, body = Object)))]
pub async fn cache_lease(
    State(node): State<AppState>,
    Path(group): Path<GroupId>,
    ApiJson(renewal): ApiJson<LeaseRenewal, PEER_JSON_DEPTH>,
) -> Result<Json<ReadIndex>, NodeError> {
    if group != GROUP0 {
        return Err(unknown_group(group));
    }
    let deadline = Instant::now() + Duration::from_millis(node.config.request_timeout_ms);
    let outcome = node.group0.read_index_local(deadline).await;
    if matches!(outcome, ReadIndex::Index(_)) {
        node.cache.record_renewal(&renewal.node);
    }
    Ok(Json(outcome))
}
