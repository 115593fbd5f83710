//! Lock endpoints under `/v1/locks`.

use std::time::Instant;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sinkron_core::locks::{
    Hold, HolderView, LockMode, WaitEdge, CLIENT_ID_MAX_BYTES, LOCK_NAME_MAX_BYTES, TTL_MAX_MS, WAIT_MAX_MS,
};
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath as Path, ApiQuery as Query, ErrorBody, NodeError};
use super::kv::ReadQuery;
use super::AppState;
use crate::locks::{self, Grant};
use crate::security::guard::audit;
use crate::security::Principal;

/// Names of routes under `/v1/locks/` that cannot also be lock names.
const RESERVED_NAMES: [&str; 2] = ["wait-for-graph", "refresh-all"];

/// A holder of a lock.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Holder {
    /// The holding client.
    pub client_id: String,
    /// `shared` or `exclusive`.
    pub mode: String,
    /// Fencing token of its grant.
    pub fence: u64,
    /// When its lease ends (ms since the Unix epoch, by the leaders' clocks).
    pub expires_at_ms: u64,
}

impl From<&HolderView> for Holder {
    fn from(h: &HolderView) -> Self {
        Self {
            client_id: h.client_id.clone(),
            mode: mode_name(h.mode).into(),
            fence: h.fence,
            expires_at_ms: h.expires_at_ms,
        }
    }
}

fn mode_name(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Shared => "shared",
        LockMode::Exclusive => "exclusive",
    }
}

/// Body of an acquire.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Who acquires; a holder is identified by this id.
    pub client_id: String,
    /// `exclusive` (default) or `shared`.
    #[schema(value_type = Option<String>)]
    pub mode: Option<LockMode>,
    /// Lease in milliseconds; default `LOCK_DEFAULT_TTL`. 1 to 86,400,000.
    pub ttl_ms: Option<u64>,
    /// How long to wait in the queue, in milliseconds; 0 (default) fails at once with
    /// `lock_conflict`. At most 300,000.
    pub wait_ms: Option<u64>,
}

/// A granted lock.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Acquired {
    /// Lock name.
    pub name: String,
    /// Mode of this grant.
    pub mode: String,
    /// Fencing token: strictly greater than every token granted before it, cluster-wide.
    pub fence: u64,
    /// Every holder after the grant.
    pub holders: Vec<Holder>,
    /// When the lease ends unless refreshed.
    pub expires_at_ms: u64,
}

/// Body naming a client.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientBody {
    /// The client.
    pub client_id: String,
}

/// Body of a refresh.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// The holder.
    pub client_id: String,
    /// New lease in milliseconds; default: the hold's current lease length.
    pub ttl_ms: Option<u64>,
}

/// A refreshed lease.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Refreshed {
    /// Lock name.
    pub name: String,
    /// The lease's new end.
    pub expires_at_ms: u64,
    /// The grant's fencing token (unchanged by a refresh).
    pub fence: u64,
}

/// Every refreshed lease of a client.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefreshedAll {
    /// The client.
    pub client_id: String,
    /// Its leases after the refresh.
    pub locks: Vec<Refreshed>,
}

/// A plain acknowledgement.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Released {
    /// Lock name.
    pub name: String,
    /// Former holders (a force-release may drop several).
    pub released: Vec<String>,
}

/// A waiting request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WaiterView {
    /// The waiting client.
    pub client_id: String,
    /// Mode asked for.
    pub mode: String,
    /// When it was queued.
    pub enqueued_at_ms: u64,
    /// When it gives up.
    pub deadline_ms: u64,
}

/// The state of one lock.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LockState {
    /// Lock name.
    pub name: String,
    /// `shared`, `exclusive`, or `null` when not held.
    pub mode: Option<String>,
    /// Holders.
    pub holders: Vec<Holder>,
    /// Waiters in queue order.
    pub waiters: Vec<WaiterView>,
}

/// Every lock that is held or awaited.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LockList {
    /// The locks, by name.
    pub locks: Vec<LockState>,
    /// The last fencing token handed out.
    pub last_fence: u64,
}

/// The live wait-for graph and the recent deadlocks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WaitForGraph {
    /// Live edges `{client_id, lock, waits_for}`.
    #[schema(value_type = Vec<Object>)]
    pub edges: Vec<WaitEdge>,
    /// The last 100 deadlocks: `{cycle, victim, lock, at_ms}`.
    #[schema(value_type = Vec<Object>)]
    pub deadlocks: Vec<sinkron_core::locks::DeadlockRecord>,
}

fn validate_name(name: &str) -> Result<(), NodeError> {
    if name.is_empty() {
        return Err(NodeError::InvalidArgument("name: must not be empty".into()));
    }
    if name.len() > LOCK_NAME_MAX_BYTES {
        return Err(NodeError::PayloadTooLarge(format!(
            "name is {} bytes, the limit is {LOCK_NAME_MAX_BYTES}",
            name.len()
        )));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(NodeError::InvalidArgument(format!("name: {name:?} is reserved")));
    }
    Ok(())
}

fn validate_client(client_id: &str) -> Result<(), NodeError> {
    if client_id.is_empty() || client_id.len() > CLIENT_ID_MAX_BYTES {
        return Err(NodeError::InvalidArgument(format!(
            "client_id: has 1 to {CLIENT_ID_MAX_BYTES} bytes, got {}",
            client_id.len()
        )));
    }
    Ok(())
}

fn validate_ttl(ttl_ms: Option<u64>) -> Result<(), NodeError> {
    match ttl_ms {
        Some(t) if t == 0 || t > TTL_MAX_MS => {
            Err(NodeError::InvalidArgument(format!("ttl_ms: must be 1 to {TTL_MAX_MS}, got {t}")))
        }
        _ => Ok(()),
    }
}

fn acquired(name: String, grant: Grant) -> Acquired {
    Acquired {
        name,
        mode: mode_name(grant.hold.mode).into(),
        fence: grant.hold.fence,
        holders: grant.holders.iter().map(Holder::from).collect(),
        expires_at_ms: grant.hold.expires_at_ms,
    }
}

fn outcome_label(result: &Result<Acquired, NodeError>) -> &'static str {
    match result {
        Ok(_) => "granted",
        Err(e) => e.status_and_code().1,
    }
}

/// Acquires a lock: granted at once, after waiting up to `wait_ms` in a FIFO queue, or
/// refused (`lock_conflict`, `wait_timeout`, `deadlock` with the cycle).
#[utoipa::path(post, path = "/v1/locks/{name}/acquire", tag = "locks", request_body = AcquireBody,
    params(("name" = String, Path, description = "Lock name, 1 to 256 bytes")),
    responses((status = 200, body = Acquired),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody, description = "lock_conflict, wait_timeout or deadlock (with cycle)"),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody, description = "limit_exceeded"), (status = 503, body = ErrorBody)))]
pub async fn acquire(
    State(node): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<Json<Acquired>, NodeError> {
    validate_name(&name)?;
    validate_client(&body.client_id)?;
    validate_ttl(body.ttl_ms)?;
    let wait_ms = body.wait_ms.unwrap_or(0);
    if wait_ms > WAIT_MAX_MS {
        return Err(NodeError::InvalidArgument(format!(
            "wait_ms: must be at most {WAIT_MAX_MS}, got {wait_ms}"
        )));
    }
    let ttl_ms = body.ttl_ms.unwrap_or(node.config.lock_default_ttl_ms).min(TTL_MAX_MS);
    let mode = body.mode.unwrap_or_default();
    super::quota::check_group0(&node, super::quota::Growth::Lock(&name))?;
    let _permit = if wait_ms > 0 { Some(node.waiting.lock_wait()?) } else { None };
    let started = Instant::now();
    let owner = owner_of(&principal);
    let result = locks::acquire(&node.group0, &name, &body.client_id, owner, mode, ttl_ms, wait_ms)
        .await
        .map(|g| acquired(name, g));
    let op = if wait_ms > 0 { "acquire_wait" } else { "acquire" };
    crate::metrics::record_lock_request(op, outcome_label(&result), started.elapsed());
    result.map(Json)
}

/// Releases a lock held by `client_id`; the next waiters are granted.
#[utoipa::path(post, path = "/v1/locks/{name}/release", tag = "locks", request_body = ClientBody,
    params(("name" = String, Path, description = "Lock name")),
    responses((status = 200, body = Released), (status = 403, body = ErrorBody, description = "not_owner"),
        (status = 404, body = ErrorBody, description = "not_held"), (status = 503, body = ErrorBody)))]
pub async fn release(
    State(node): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ClientBody>,
) -> Result<Json<Released>, NodeError> {
    validate_name(&name)?;
    validate_client(&body.client_id)?;
    let started = Instant::now();
    let result = locks::release(&node.group0, &name, &body.client_id, owner_of(&principal)).await;
    let outcome = match &result {
        Ok(()) => "released",
        Err(e) => e.status_and_code().1,
    };
    crate::metrics::record_lock_request("release", outcome, started.elapsed());
    result?;
    Ok(Json(Released { name, released: vec![body.client_id] }))
}

/// Extends the lease of a lock held by `client_id`.
#[utoipa::path(post, path = "/v1/locks/{name}/refresh", tag = "locks", request_body = RefreshBody,
    params(("name" = String, Path, description = "Lock name")),
    responses((status = 200, body = Refreshed), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn refresh(
    State(node): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<Refreshed>, NodeError> {
    validate_name(&name)?;
    validate_client(&body.client_id)?;
    validate_ttl(body.ttl_ms)?;
    let owner = owner_of(&principal);
    let hold: Hold = locks::refresh(&node.group0, &name, &body.client_id, owner, body.ttl_ms).await?;
    Ok(Json(Refreshed { name, expires_at_ms: hold.expires_at_ms, fence: hold.fence }))
}

/// Extends every lease `client_id` holds, in one Raft entry.
#[utoipa::path(post, path = "/v1/locks/refresh-all", tag = "locks", request_body = RefreshBody,
    responses((status = 200, body = RefreshedAll), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn refresh_all(
    State(node): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<RefreshedAll>, NodeError> {
    validate_client(&body.client_id)?;
    validate_ttl(body.ttl_ms)?;
    let locks = locks::refresh_all(&node.group0, &body.client_id, owner_of(&principal), body.ttl_ms).await?;
    let locks = locks
        .into_iter()
        .map(|(name, hold)| Refreshed { name, expires_at_ms: hold.expires_at_ms, fence: hold.fence })
        .collect();
    Ok(Json(RefreshedAll { client_id: body.client_id, locks }))
}

/// Administrative: drops every hold of a lock, whoever holds it, and serves the queue.
#[utoipa::path(post, path = "/v1/locks/{name}/force-release", tag = "locks",
    params(("name" = String, Path, description = "Lock name")),
    responses((status = 200, body = Released), (status = 503, body = ErrorBody)))]
pub async fn force_release(
    State(node): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<Released>, NodeError> {
    validate_name(&name)?;
    let released = locks::force_release(&node.group0, &name).await;
    let who = super::cluster::principal_name(principal.as_ref().map(|Extension(p)| p));
    let outcome = match &released {
        Ok(former) => format!("released {former:?}"),
        Err(_) => super::cluster::outcome(&released),
    };
    audit(&who, "force-release", &name, &outcome);
    let former = released?;
    Ok(Json(Released { name, released: former }))
}

/// The principal that lock holds are bound to: the caller's, when tokens are checked.
fn owner_of(principal: &Option<Extension<Principal>>) -> Option<&str> {
    principal.as_ref().map(|Extension(p)| p.name.as_str())
}

fn lock_state(name: &str, lock: Option<&sinkron_core::locks::Lock>) -> LockState {
    let Some(lock) = lock else {
        return LockState { name: name.into(), mode: None, holders: vec![], waiters: vec![] };
    };
    LockState {
        name: name.into(),
        mode: lock.mode().map(|m| mode_name(m).into()),
        holders: lock.holder_views().iter().map(Holder::from).collect(),
        waiters: lock
            .waiters
            .iter()
            .map(|w| WaiterView {
                client_id: w.client_id.clone(),
                mode: mode_name(w.mode).into(),
                enqueued_at_ms: w.enqueued_at_ms,
                deadline_ms: w.deadline_ms,
            })
            .collect(),
    }
}

/// Holders and waiters of one lock (linearizable unless `consistency=local`).
#[utoipa::path(get, path = "/v1/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "Lock name"), ReadQuery),
    responses((status = 200, body = LockState), (status = 503, body = ErrorBody)))]
pub async fn get_lock(
    State(node): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<LockState>, NodeError> {
    validate_name(&name)?;
    if query.consistency == super::kv::Consistency::Linearizable {
        node.group0.read_barrier().await?;
    }
    let applied = node.group0.group().sm.read();
    Ok(Json(lock_state(&name, applied.state.locks.get(&name))))
}

/// Every lock that is held or awaited.
#[utoipa::path(get, path = "/v1/locks", tag = "locks", params(ReadQuery),
    responses((status = 200, body = LockList), (status = 503, body = ErrorBody)))]
pub async fn list_locks(
    State(node): State<AppState>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<LockList>, NodeError> {
    if query.consistency == super::kv::Consistency::Linearizable {
        node.group0.read_barrier().await?;
    }
    let applied = node.group0.group().sm.read();
    let table = &applied.state.locks;
    let locks = table.locks().iter().map(|(name, lock)| lock_state(name, Some(lock))).collect();
    Ok(Json(LockList { locks, last_fence: table.last_fence() }))
}

/// The live wait-for graph and the last 100 deadlocks.
#[utoipa::path(get, path = "/v1/locks/wait-for-graph", tag = "locks", params(ReadQuery),
    responses((status = 200, body = WaitForGraph), (status = 503, body = ErrorBody)))]
pub async fn wait_for_graph(
    State(node): State<AppState>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<WaitForGraph>, NodeError> {
    if query.consistency == super::kv::Consistency::Linearizable {
        node.group0.read_barrier().await?;
    }
    let applied = node.group0.group().sm.read();
    let table = &applied.state.locks;
    Ok(Json(WaitForGraph {
        edges: table.all_edges(),
        deadlocks: table.deadlocks().iter().cloned().collect(),
    }))
}
