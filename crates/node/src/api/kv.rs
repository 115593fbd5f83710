//! The replicated key-value store of group 0: `GET`/`PUT`/`DELETE /v1/kv/{key}`.
//!
//! Not part of the seed's primitives; it is the plainest way to use group 0 (and the write
//! path `sinkron bench write` measures). Reads are linearizable by default: ReadIndex through
//! the leader, then served from this node's state machine.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sinkron_core::limits::{validate_kv_key, validate_kv_value, validate_request_id};
use sinkron_core::{Command, Fence, Response};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiJson, ApiPath as Path, ApiQuery as Query, ErrorBody, NodeError};
use super::AppState;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Reflects every write completed before the read started (default).
    #[default]
    Linearizable,
    /// This node's state as it is, possibly behind the leader; needs no quorum.
    Local,
}

/// Query of a read.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ReadQuery {
    /// `linearizable` (default) or `local`.
    #[serde(default)]
    pub consistency: Consistency,
}

/// Longest `wait_ms` of a blocking read.
pub const WAIT_MAX_MS: u64 = 60_000;

/// Query of a key read.
#[derive(Debug, Deserialize, IntoParams)]
pub struct KvReadQuery {
    /// `linearizable` (default) or `local`.
    #[serde(default)]
    pub consistency: Consistency,
    /// Blocking read: answer once the key's version is above this (or it was deleted after
    /// it), or after `wait_ms` with the current value.
    pub wait_version: Option<u64>,
    /// How long a blocking read waits, 0 to 60,000 ms (default 30,000).
    pub wait_ms: Option<u64>,
}

/// A fenced write's condition.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FenceBody {
    /// The lock that must be held.
    pub lock: String,
    /// The fencing token of the current hold.
    pub token: u64,
}

impl FenceBody {
    /// The fence as a command carries it, after checking the lock name.
    pub fn checked(self) -> Result<Fence, NodeError> {
        let max = sinkron_core::locks::LOCK_NAME_MAX_BYTES;
        if self.lock.is_empty() || self.lock.len() > max {
            return Err(NodeError::InvalidArgument(format!(
                "fence.lock: a lock name has 1 to {max} bytes, got {}",
                self.lock.len()
            )));
        }
        Ok(Fence { lock: self.lock, token: self.token })
    }
}

/// A stored value.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KvValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: serde_json::Value,
    /// Revision of the write that stored it (grows with every write of the cluster).
    pub version: u64,
}

/// Body of a put.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Any JSON value, at most 64 KiB encoded.
    pub value: serde_json::Value,
    /// Optional idempotency key: a retry with the same id applies once.
    pub request_id: Option<String>,
    /// Compare-and-set: applies only if the key's version is this; 0 means it must not
    /// exist. Otherwise `409 version_mismatch` with `current_version`.
    pub if_version: Option<u64>,
    /// Applies only while the lock is held with this fence; otherwise `409 stale_fence`.
    pub fence: Option<FenceBody>,
}

/// Result of a put.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PutResult {
    /// The key.
    pub key: String,
    /// Revision of this write (grows with every write of the cluster).
    pub version: u64,
}

/// Result of a delete.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeleteResult {
    /// The key.
    pub key: String,
    /// Whether the key existed.
    pub existed: bool,
}

/// Reads a key; with `wait_version`, waits until it changes after that version.
#[utoipa::path(get, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "Key, at most 256 bytes"), KvReadQuery),
    responses((status = 200, body = KvValue), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn kv_get(
    State(node): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<KvReadQuery>,
) -> Result<Json<KvValue>, NodeError> {
    validate_kv_key(&key)?;
    let wait_ms = query.wait_ms.unwrap_or(30_000);
    if wait_ms > WAIT_MAX_MS {
        return Err(NodeError::InvalidArgument(format!(
            "wait_ms: must be at most {WAIT_MAX_MS}, got {wait_ms}"
        )));
    }
    if query.consistency == Consistency::Linearizable {
        node.group0.read_barrier().await?;
    }
    if let Some(after) = query.wait_version {
        let _permit = node.waiting.watch()?;
        wait_for_change(&node, &key, after, Instant::now() + Duration::from_millis(wait_ms)).await;
    }
    current(&node, &key).map(Json)
}

/// The key as this node has applied it.
fn current(node: &AppState, key: &str) -> Result<KvValue, NodeError> {
    let applied = node.group0.group().sm.read();
    let entry = applied
        .state
        .kv
        .get(key)
        .ok_or_else(|| NodeError::NotFound(format!("key {key:?} does not exist")))?;
    Ok(KvValue { key: key.to_string(), value: entry.value.clone(), version: entry.version })
}

/// Returns once `key` changed after version `after` (put above it, or deleted after it),
/// or at `deadline`.
async fn wait_for_change(node: &AppState, key: &str, after: u64, deadline: Instant) {
    let sm = &node.group0.group().sm;
    let mut subscription = {
        let applied = sm.read();
        let entry = applied.state.kv.get(key);
        if entry.is_some_and(|e| e.version > after) {
            return;
        }
        match sm.kv_feed().subscribe(after) {
            Ok(subscription) if subscription.backlog.iter().any(|e| e.key == key) => return,
            Ok(subscription) => subscription,
            // The window no longer reaches back to `after`: a delete since cannot be ruled
            // out, so an absent key is answered at once; a present one waits for its next
            // change.
            Err(_) if entry.is_none() => return,
            Err(_) => match sm.kv_feed().subscribe(applied.state.revision) {
                Ok(subscription) => subscription,
                Err(_) => return,
            },
        }
    };
    wait_live(&mut subscription.live, key, after, deadline).await
}

async fn wait_live(
    live: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<sinkron_core::kv::KvEvent>>,
    key: &str,
    after: u64,
    deadline: Instant,
) {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, live.recv()).await {
            Ok(Ok(event)) if event.key == key && event.version > after => return,
            Ok(Ok(_)) => {}
            // Fell behind or shutting down: answer with what is applied now.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Writes a key through Raft; answered once committed and applied.
#[utoipa::path(put, path = "/v1/kv/{key}", tag = "kv", request_body = PutBody,
    params(("key" = String, Path, description = "Key, at most 256 bytes")),
    responses((status = 200, body = PutResult), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody, description = "request_id reused for another request"), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn kv_put(
    State(node): State<AppState>,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<PutBody>,
) -> Result<Json<PutResult>, NodeError> {
    validate_kv_key(&key)?;
    validate_kv_value(&body.value)?;
    if let Some(id) = &body.request_id {
        validate_request_id(id)?;
    }
    super::quota::check_group0(&node, super::quota::Growth::Bytes)?;
    let fence = body.fence.map(FenceBody::checked).transpose()?;
    let command = Command::KvPut { key: key.clone(), value: body.value, if_version: body.if_version, fence };
    match node.group0.write(command, body.request_id).await? {
        Response::KvPut { version } => Ok(Json(PutResult { key, version })),
        Response::KvRefused { refusal } => Err(NodeError::refused(&key, refusal)),
        other => Err(unexpected(other)),
    }
}

/// Query of a delete.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Optional idempotency key: a retry with the same id applies once.
    pub request_id: Option<String>,
    /// Compare-and-set: deletes only if the key's version is this.
    pub if_version: Option<u64>,
}

/// Optional body of a delete.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    /// Deletes only while the lock is held with this fence; otherwise `409 stale_fence`.
    pub fence: Option<FenceBody>,
    /// Compare-and-set, as the query's `if_version` (give one or the other).
    pub if_version: Option<u64>,
}

/// Deletes a key through Raft.
#[utoipa::path(delete, path = "/v1/kv/{key}", tag = "kv",
    request_body(content = Option<DeleteBody>, description = "Optional: a fence (and if_version)", content_type = "application/json"),
    params(("key" = String, Path, description = "Key, at most 256 bytes"), DeleteQuery),
    responses((status = 200, body = DeleteResult), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn kv_delete(
    State(node): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<DeleteQuery>,
    body: Bytes,
) -> Result<Json<DeleteResult>, NodeError> {
    validate_kv_key(&key)?;
    if let Some(id) = &query.request_id {
        validate_request_id(id)?;
    }
    let body: DeleteBody = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| NodeError::InvalidArgument(format!("body: {e}")))?
    };
    if query.if_version.is_some() && body.if_version.is_some() {
        return Err(NodeError::InvalidArgument(
            "if_version: give it in the query or the body, not both".into(),
        ));
    }
    let fence = body.fence.map(FenceBody::checked).transpose()?;
    let if_version = query.if_version.or(body.if_version);
    match node
        .group0
        .write(Command::KvDelete { key: key.clone(), if_version, fence }, query.request_id)
        .await?
    {
        Response::KvDelete { existed } => Ok(Json(DeleteResult { key, existed })),
        Response::KvRefused { refusal } => Err(NodeError::refused(&key, refusal)),
        other => Err(unexpected(other)),
    }
}

/// A reply that does not answer the command: a reused request id, or a bug.
fn unexpected(reply: Response) -> NodeError {
    match reply {
        Response::Rejected { reason } => NodeError::Conflict(reason),
        other => NodeError::Unavailable(format!("unexpected reply {other:?}")),
    }
}
