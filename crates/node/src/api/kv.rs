//! The replicated key-value store of group 0: `GET`/`PUT`/`DELETE /v1/kv/{key}`.
//!
//! Not part of the seed's primitives; it is the plainest way to use group 0 (and the write
//! path `sinkron bench write` measures). Reads are linearizable by default: ReadIndex through
//! the leader, then served from this node's state machine.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sinkron_core::limits::{validate_kv_key, validate_kv_value, validate_request_id};
use sinkron_core::{Command, Response};
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

/// Reads a key.
#[utoipa::path(get, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "Key, at most 256 bytes"), ReadQuery),
    responses((status = 200, body = KvValue), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn kv_get(
    State(node): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<KvValue>, NodeError> {
    validate_kv_key(&key)?;
    if query.consistency == Consistency::Linearizable {
        node.group0.read_barrier().await?;
    }
    let applied = node.group0.group().sm.read();
    let entry = applied
        .state
        .kv
        .get(&key)
        .ok_or_else(|| NodeError::NotFound(format!("key {key:?} does not exist")))?;
    Ok(Json(KvValue { key: key.clone(), value: entry.value.clone(), version: entry.version }))
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
    match node.group0.write(Command::KvPut { key: key.clone(), value: body.value }, body.request_id).await? {
        Response::KvPut { version } => Ok(Json(PutResult { key, version })),
        other => Err(unexpected(other)),
    }
}

/// Query of a delete.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Optional idempotency key: a retry with the same id applies once.
    pub request_id: Option<String>,
}

/// Deletes a key through Raft.
#[utoipa::path(delete, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "Key, at most 256 bytes"), DeleteQuery),
    responses((status = 200, body = DeleteResult), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn kv_delete(
    State(node): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<DeleteResult>, NodeError> {
    validate_kv_key(&key)?;
    if let Some(id) = &query.request_id {
        validate_request_id(id)?;
    }
    match node.group0.write(Command::KvDelete { key: key.clone() }, query.request_id).await? {
        Response::KvDelete { existed } => Ok(Json(DeleteResult { key, existed })),
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
