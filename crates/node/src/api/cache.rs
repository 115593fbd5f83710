//! Cache endpoints under `/v1/cache`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sinkron_core::cache::{CACHE_KEY_MAX_BYTES, CACHE_VALUE_MAX_BYTES};
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath as Path, ErrorBody, NodeError};
use super::AppState;
use crate::cache::state_name;

/// A cached value as read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CacheValue {
    /// Key.
    pub key: String,
    /// Value.
    pub value: serde_json::Value,
    /// This node's MESI state of the line after the read: `M`, `E` or `S`.
    pub state: String,
    /// Whether it was served from this node's line without the log.
    pub hit: bool,
}

/// Body of a cache write.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CachePut {
    /// Any JSON value, at most 64 KiB encoded.
    pub value: serde_json::Value,
    /// Commit to the backing store before answering (write-through for this write).
    #[serde(default)]
    pub durable: bool,
    /// A fenced write (always durable): stored only while the lock is held with this
    /// fence; otherwise `409 stale_fence`.
    pub fence: Option<super::kv::FenceBody>,
}

/// Result of a cache write.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CacheWritten {
    /// Key.
    pub key: String,
    /// This node's state of the line: `M` (written back later) or `E` (stored).
    pub state: String,
    /// Version of the backing store value the line is based on.
    pub version: u64,
}

/// One node's view of a key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeLine {
    /// Node name.
    pub node: String,
    /// `M`, `E`, `S` or `I`; `unreachable` when the node did not answer.
    pub state: String,
}

/// Every node's state of a key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyLines {
    /// Key.
    pub key: String,
    /// Each member's line.
    pub lines: Vec<NodeLine>,
}

/// Counters of this node's cache.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CacheStatsView {
    /// This node.
    pub node: String,
    /// Lines held.
    pub size: usize,
    /// `CACHE_MAX_SIZE`.
    pub capacity: usize,
    /// Reads served locally.
    pub hits: u64,
    /// Reads that went through the log.
    pub misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
    /// Lines dropped for room.
    pub evictions: u64,
    /// Lines invalidated by other nodes' writes.
    pub invalidations: u64,
    /// Dirty lines written back.
    pub write_backs: u64,
    /// Lines per state.
    pub lines_per_state: BTreeMap<String, usize>,
    /// Count of each transition, such as `"E->M"`.
    pub transitions: BTreeMap<String, u64>,
    /// Whether the coherence lease is valid (hits are served only then).
    pub lease_valid: bool,
}

fn validate_key(key: &str) -> Result<(), NodeError> {
    if key.is_empty() {
        return Err(NodeError::InvalidArgument("key: must not be empty".into()));
    }
    if key.len() > CACHE_KEY_MAX_BYTES {
        return Err(NodeError::PayloadTooLarge(format!(
            "key is {} bytes, the limit is {CACHE_KEY_MAX_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Reads a key: from this node's line when it has one (a hit), else through the log.
#[utoipa::path(get, path = "/v1/cache/{key}", tag = "cache",
    params(("key" = String, Path, description = "Key, 1 to 256 bytes")),
    responses((status = 200, body = CacheValue), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get(
    State(node): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<CacheValue>, NodeError> {
    validate_key(&key)?;
    let read = node.cache.get(&key).await?;
    let Some(value) = read.line.value else {
        return Err(NodeError::NotFound(format!("cache key {key:?} has no value")));
    };
    Ok(Json(CacheValue { key, value, state: state_name(Some(read.line.state)).into(), hit: read.hit }))
}

/// Writes a key (write-back by default; `durable` or `CACHE_WRITE_POLICY=write-through`
/// stores it before answering). Answered once no other node can read an older value.
#[utoipa::path(put, path = "/v1/cache/{key}", tag = "cache", request_body = CachePut,
    params(("key" = String, Path, description = "Key, 1 to 256 bytes")),
    responses((status = 200, body = CacheWritten), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put(
    State(node): State<AppState>,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<CachePut>,
) -> Result<Json<CacheWritten>, NodeError> {
    validate_key(&key)?;
    let size = sinkron_core::limits::json_size(&body.value);
    if size > CACHE_VALUE_MAX_BYTES {
        return Err(NodeError::PayloadTooLarge(format!(
            "value is {size} bytes, the limit is {CACHE_VALUE_MAX_BYTES}"
        )));
    }
    super::quota::check_group0(&node, super::quota::Growth::CacheKey(&key))?;
    let fence = body.fence.map(super::kv::FenceBody::checked).transpose()?;
    let line = node.cache.put(&key, body.value, body.durable, fence).await?;
    Ok(Json(CacheWritten { key, state: state_name(Some(line.state)).into(), version: line.version }))
}

/// Removes a key from the backing store and every node's cache.
#[utoipa::path(delete, path = "/v1/cache/{key}", tag = "cache",
    params(("key" = String, Path, description = "Key")),
    responses((status = 200, body = CacheDeleted), (status = 503, body = ErrorBody)))]
pub async fn delete(
    State(node): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<CacheDeleted>, NodeError> {
    validate_key(&key)?;
    node.cache.delete(&key).await?;
    Ok(Json(CacheDeleted { key, deleted: true }))
}

/// Result of a cache delete.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CacheDeleted {
    /// Key.
    pub key: String,
    /// Always true: the key is gone from the backing store and every cache.
    pub deleted: bool,
}

/// This node's state of a key (used by `/lines`).
#[utoipa::path(get, path = "/v1/cache/{key}/local", tag = "cache",
    params(("key" = String, Path, description = "Key")), responses((status = 200, body = NodeLine)))]
pub async fn local_line(
    State(node): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<NodeLine>, NodeError> {
    validate_key(&key)?;
    let state = node.cache.service.agent().lines().peek(&key).map(|l| l.state);
    Ok(Json(NodeLine { node: node.config.name.clone(), state: state_name(state).into() }))
}

/// Every node's MESI state for a key.
#[utoipa::path(get, path = "/v1/cache/{key}/lines", tag = "cache",
    params(("key" = String, Path, description = "Key")), responses((status = 200, body = KeyLines)))]
pub async fn lines(
    State(node): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<KeyLines>, NodeError> {
    validate_key(&key)?;
    let mut lines = Vec::new();
    for (name, addr) in node.group0.members() {
        let state = node.peers.cache_line(&addr, &key).await.unwrap_or_else(|| "unreachable".into());
        lines.push(NodeLine { node: name, state });
    }
    Ok(Json(KeyLines { key, lines }))
}

/// Size, capacity and counters of this node's cache.
#[utoipa::path(operation_id = "cache_stats", get, path = "/v1/cache", tag = "cache", responses((status = 200, body = CacheStatsView)))]
pub async fn stats(State(node): State<AppState>) -> Json<CacheStatsView> {
    let lease_valid = node.cache.service.lease_valid();
    let agent = node.cache.service.agent();
    let local = agent.lines();
    let mut per_state: BTreeMap<String, usize> = ["M", "E", "S"].iter().map(|s| (s.to_string(), 0)).collect();
    for (_, line) in local.lines() {
        *per_state.entry(state_name(Some(line.state)).into()).or_default() += 1;
    }
    let s = &local.stats;
    let lookups = s.hits + s.misses;
    Json(CacheStatsView {
        node: node.config.name.clone(),
        size: local.len(),
        capacity: local.capacity(),
        hits: s.hits,
        misses: s.misses,
        hit_rate: if lookups == 0 { 0.0 } else { s.hits as f64 / lookups as f64 },
        evictions: s.evictions,
        invalidations: s.invalidations,
        write_backs: s.write_backs,
        lines_per_state: per_state,
        transitions: s.transitions.clone(),
        lease_valid,
    })
}
