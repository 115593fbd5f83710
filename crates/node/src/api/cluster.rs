//! Probes, cluster status, membership and metrics endpoints.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use sinkron_core::limits::validate_node_name;
use utoipa::ToSchema;

use super::error::{ApiJson, ApiPath as Path, ErrorBody, NodeError};
use super::AppState;
use crate::group::role_name;
use crate::node::Node;
use crate::security::guard::audit;
use crate::security::Principal;
use crate::types::Member;

/// Liveness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process runs.
    pub status: String,
    /// This node's name.
    pub node_id: String,
}

/// `200` while the process runs.
#[utoipa::path(get, path = "/health", tag = "probes", responses((status = 200, body = Health)))]
pub async fn health(State(node): State<AppState>) -> Json<Health> {
    Json(Health { status: "ok".into(), node_id: node.config.name.clone() })
}

/// Readiness for load balancers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// Always true in a `200` answer.
    pub ready: bool,
    /// Name of the known leader.
    pub leader: String,
    /// Last applied log index of group 0.
    pub applied_index: u64,
    /// Problems that leave the node serving: queue partitions that cannot replicate because
    /// a Raft call was refused (a refusal in group 0 makes the answer `503` instead), and
    /// groups whose state is at its quota (only writes that grow state are refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
}

/// `200` once the node knows a leader, has applied its commit index and its cache joined,
/// else `503`; also `503` while group 0 cannot replicate because a peer refused its Raft calls (or this node
/// refused a peer's) in the last 10 s.
#[utoipa::path(get, path = "/ready", tag = "probes", responses(
    (status = 200, body = Readiness),
    (status = 503, body = ErrorBody, description = "no leader known, or still applying")))]
pub async fn ready(State(node): State<AppState>) -> Result<Json<Readiness>, NodeError> {
    if let Some(problem) = node.group0.group().log.health().problem() {
        return Err(NodeError::Unavailable(problem));
    }
    let status = status_of(&node).await;
    let Some(leader) = status.leader else {
        return Err(NodeError::Unavailable("no leader is known".into()));
    };
    // openraft 0.9 does not step down a leader that lost its quorum; do not send it traffic.
    let quorum_ack_ms = node.group0.raft().metrics().borrow().millis_since_quorum_ack;
    if status.role == "leader" && quorum_ack_ms.is_none_or(|ms| ms > node.config.election_timeout_max_ms) {
        return Err(NodeError::Unavailable("this leader has not heard from a quorum recently".into()));
    }
    if status.applied_index < status.commit_index {
        return Err(NodeError::Unavailable(format!(
            "applying: applied index {} is behind commit index {}",
            status.applied_index, status.commit_index
        )));
    }
    // Until its cache joined, this node refuses cache requests with `503`: keep traffic away.
    if !node.cache.service.is_live() {
        return Err(NodeError::Unavailable("the cache of this node is still joining".into()));
    }
    let refused = node.peers.refusals.recent();
    if let Some((_, problem)) = refused.iter().find(|(group, _)| *group == crate::types::GROUP0) {
        return Err(NodeError::Unavailable(problem.clone()));
    }
    let mut degraded: Vec<String> = refused.into_iter().map(|(_, problem)| problem).collect();
    // A full group still serves reads, deletes, releases and acks: reported, still ready.
    let partitions: Vec<_> = node
        .queues
        .partitions()
        .hosted()
        .into_iter()
        .filter_map(|p| Some((crate::types::partition_group(p), node.queues.partitions().get(p)?)))
        .collect();
    let mut usages = vec![(crate::types::GROUP0, node.group0.group().sm.usage())];
    usages.extend(partitions.iter().map(|(id, g)| (*id, g.sm.usage())));
    degraded.extend(node.quotas.full_groups(usages));
    Ok(Json(Readiness { ready: true, leader: leader.id, applied_index: status.applied_index, degraded }))
}

/// A member as `/v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberStatus {
    /// Node name.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Numeric Raft id (a 64-bit hash of the name), as a decimal string so JSON readers that
    /// keep numbers as doubles do not round it.
    pub raft_id: String,
}

/// The leader as `/v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaderStatus {
    /// Node name.
    pub id: String,
    /// `host:port`.
    pub addr: String,
}

/// Raft status of group 0 as seen by this node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// This node's name.
    pub node_id: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Known leader, if any.
    pub leader: Option<LeaderStatus>,
    /// Members with addresses and roles.
    pub members: Vec<MemberStatus>,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied to the state machine.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last index covered by a snapshot.
    pub snapshot_index: Option<u64>,
    /// Last purged (compacted) log index.
    pub purged_index: Option<u64>,
    /// Whether this node belongs to a formed cluster.
    pub initialized: bool,
}

/// Builds the status shown by `/v1/cluster` and used by `/ready` and `/metrics`.
pub async fn status_of(node: &Node) -> ClusterStatus {
    let raft = &node.group0.raft();
    let m = raft.metrics().borrow().clone();
    let commit_index =
        raft.with_raft_state(|s| s.committed.map(|c| c.index)).await.ok().flatten().unwrap_or(0);
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let mut members: Vec<MemberStatus> = membership
        .nodes()
        .map(|(id, member)| MemberStatus {
            id: member.name.clone(),
            addr: member.addr.clone(),
            role: if voters.contains(id) { "voter" } else { "learner" }.into(),
            raft_id: id.to_string(),
        })
        .collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    let leader = m
        .current_leader
        .and_then(|id| membership.get_node(&id))
        .map(|member: &Member| LeaderStatus { id: member.name.clone(), addr: member.addr.clone() });
    ClusterStatus {
        node_id: node.config.name.clone(),
        role: role_name(m.state).into(),
        term: m.current_term,
        leader,
        members,
        commit_index,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        last_log_index: m.last_log_index.unwrap_or(0),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        initialized: m.last_log_index.is_some() || m.vote.leader_id().term > 0,
    }
}

/// Raft status of group 0: role, term, leader, members, indexes.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterStatus)))]
pub async fn cluster_status(State(node): State<AppState>) -> Json<ClusterStatus> {
    Json(status_of(&node).await)
}

/// A node to add.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Name of the new node, as its `NODE_ID`.
    pub id: String,
    /// `host:port` the other nodes reach it on.
    pub addr: String,
}

/// Result of a membership change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembershipChanged {
    /// Members after the change.
    pub members: Vec<MemberStatus>,
}

/// Adds a node: it joins as a learner, catches up, then becomes a voter.
#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster", request_body = AddMember, responses(
    (status = 200, body = MembershipChanged),
    (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn add_member(
    State(node): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiJson(body): ApiJson<AddMember>,
) -> Result<Response, NodeError> {
    let principal = principal.map(|Extension(p)| p);
    validate_node_name(&body.id)?;
    let addr_ok = body
        .addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !addr_ok || body.addr.contains('/') {
        return Err(NodeError::InvalidArgument(format!("addr: expected host:port, got {:?}", body.addr)));
    }
    if node.group0.role() != "leader" {
        let value = serde_json::to_value(&body).map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        return proxied(
            node.group0
                .proxy_to_leader(
                    reqwest::Method::POST,
                    "/v1/cluster/members",
                    Some(&value),
                    principal.as_ref(),
                )
                .await?,
        );
    }
    let target = format!("{}={}", body.id, body.addr);
    let added = node.group0.add_member(Member { name: body.id, addr: body.addr }).await;
    audit(&principal_name(principal.as_ref()), "add member", &target, &outcome(&added));
    added?;
    Ok(Json(MembershipChanged { members: status_of(&node).await.members }).into_response())
}

/// Removes a node from the cluster.
#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster",
    params(("id" = String, Path, description = "Node name")),
    responses((status = 200, body = MembershipChanged), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn remove_member(
    State(node): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    let principal = principal.map(|Extension(p)| p);
    validate_node_name(&id)?;
    if node.group0.role() != "leader" {
        let path = format!("/v1/cluster/members/{id}");
        return proxied(
            node.group0.proxy_to_leader(reqwest::Method::DELETE, &path, None, principal.as_ref()).await?,
        );
    }
    let removed = node.group0.remove_member(&id).await;
    audit(&principal_name(principal.as_ref()), "remove member", &id, &outcome(&removed));
    removed?;
    Ok(Json(MembershipChanged { members: status_of(&node).await.members }).into_response())
}

/// The name an audit line gives the caller: its principal, or `anonymous` without tokens.
pub fn principal_name(principal: Option<&Principal>) -> String {
    principal.map_or_else(|| "anonymous".to_string(), |p| p.name.clone())
}

/// An audit line's outcome of `result`.
pub fn outcome<T>(result: &Result<T, NodeError>) -> String {
    match result {
        Ok(_) => "done".into(),
        Err(e) => format!("failed: {}", e.status_and_code().1),
    }
}

fn proxied((status, body): (u16, Vec<u8>)) -> Result<Response, NodeError> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Prometheus metrics in text format.
#[utoipa::path(get, path = "/metrics", tag = "probes", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics_text(State(node): State<AppState>) -> Response {
    let status = status_of(&node).await;
    let gauges = crate::metrics::RaftGauges {
        role: role_name(node.group0.raft().metrics().borrow().state),
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        last_log_index: status.last_log_index,
        has_leader: status.leader.is_some(),
    };
    {
        let applied = node.group0.group().sm.read();
        let locks = applied.state.locks.locks();
        let held = locks.values().filter(|l| !l.holders.is_empty()).count();
        let holders = locks.values().map(|l| l.holders.len()).sum();
        let waiters = locks.values().map(|l| l.waiters.len()).sum();
        crate::metrics::set_lock_gauges(held, holders, waiters);
    }
    {
        let lease_valid = node.cache.service.lease_valid();
        let agent = node.cache.service.agent();
        let local = agent.lines();
        crate::metrics::set_cache_metrics(&local.stats, local.len(), local.capacity(), lease_valid);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render(&gauges)).into_response()
}

/// Body of the fault-injection switch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Isolate {
    /// `true` cuts the node off from its peers, `false` reconnects it.
    pub isolated: bool,
}

/// Fault injection (only with `SINKRON_FAULT_INJECTION=1`): cuts this node off from its
/// peers in both directions while it keeps answering clients.
#[utoipa::path(post, path = "/v1/debug/isolate", tag = "cluster", request_body = Isolate,
    responses((status = 200, body = Object), (status = 404, body = ErrorBody, description = "fault injection is disabled")))]
pub async fn isolate(
    State(node): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiJson(body): ApiJson<Isolate>,
) -> Result<Json<serde_json::Value>, NodeError> {
    if !node.config.fault_injection {
        return Err(NodeError::NotFound("fault injection is disabled (SINKRON_FAULT_INJECTION)".into()));
    }
    let who = principal_name(principal.as_ref().map(|Extension(p)| p));
    audit(&who, "isolate", &node.config.name, if body.isolated { "isolated" } else { "reconnected" });
    node.peers.isolation.set(body.isolated);
    tracing::warn!(isolated = body.isolated, "fault injection: peer links switched");
    Ok(Json(serde_json::json!({ "isolated": body.isolated })))
}
