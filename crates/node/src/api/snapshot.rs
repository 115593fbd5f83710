//! `GET /v1/snapshot/...`: one group's whole state at one log id, the parts of a backup
//! (`sinkron snapshot save`; see `crate::backup`). Admin only: a backup holds every value,
//! lock owner and message receipt.

use axum::extract::State;
use axum::Json;

use super::error::{ApiPath as Path, ErrorBody, NodeError};
use super::AppState;
use crate::backup::GroupBackup;
use crate::types::GROUP0;

/// Group 0's state (key-value store, locks, cache store, queue topology), read on this node
/// after a linearizable read barrier.
#[utoipa::path(get, path = "/v1/snapshot/group0", tag = "cluster",
    responses((status = 200, body = GroupBackup), (status = 503, body = ErrorBody)))]
pub async fn group0(State(node): State<AppState>) -> Result<Json<GroupBackup>, NodeError> {
    node.group0.read_barrier().await?;
    let applied = node.group0.group().sm.read();
    let state = serde_json::to_value(&applied.state)
        .map_err(|e| NodeError::Unavailable(format!("cannot encode group 0: {e}")))?;
    Ok(Json(GroupBackup { group: GROUP0, last_log_id: applied.last_applied, state }))
}

/// A queue partition's state, read at the partition's leader.
#[utoipa::path(get, path = "/v1/snapshot/partitions/{partition}", tag = "cluster",
    params(("partition" = u32, Path, description = "Partition number")),
    responses((status = 200, body = GroupBackup), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn partition(
    State(node): State<AppState>,
    Path(partition): Path<u32>,
) -> Result<Json<GroupBackup>, NodeError> {
    Ok(Json(node.queues.snapshot(partition).await?))
}
