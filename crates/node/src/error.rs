//! [`NodeError`]: the one error type of the node's engine (groups, services, storage
//! answers), also carried between nodes as JSON. What a client sees of it (status, stable
//! code) is decided in one place, `api/error.rs`.

use serde::{Deserialize, Serialize};
use sinkron_core::locks::{HolderView, LockMode, WaitEdge};
use sinkron_core::CoreError;

/// Why a request of the node failed (also carried between nodes as JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The addressed object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. a membership change in progress).
    #[error("{0}")]
    Conflict(String),
    /// A body, key or value is above its size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No leader with a live quorum answered within the bounded wait.
    #[error("{0}")]
    NoQuorum(String),
    /// The node cannot serve the request now (shutting down, storage failed).
    #[error("{0}")]
    Unavailable(String),
    /// The endpoint exists but not with this HTTP method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The lock is held incompatibly and the request did not wait.
    #[error("lock is held by {}", holder_names(.0))]
    LockConflict(Vec<HolderView>),
    /// The request waited `wait_ms` without being granted.
    #[error("{0}")]
    WaitTimeout(String),
    /// Waiting would have closed a cycle of waiters; this request is the victim.
    #[error("waiting would deadlock: {}", cycle_text(.0))]
    Deadlock(Vec<WaitEdge>),
    /// The lock is held, but not by this client.
    #[error("{0}")]
    NotOwner(String),
    /// Nobody holds the lock.
    #[error("{0}")]
    NotHeld(String),
    /// A limit (waiters per lock, locks per client, long polls per node) was reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// The request's body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The request target (path and query) is longer than the API takes.
    #[error("{0}")]
    UriTooLong(String),
    /// The request headers are larger than the API takes.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// A compare-and-set found another version; with the key's current one (0: absent).
    #[error("{0}")]
    VersionMismatch(String, u64),
    /// A fenced write's fence is not that of a current hold; with the lock's current
    /// fence, if it is held.
    #[error("{0}")]
    StaleFence(String, Option<u64>),
    /// A watch asked for history that is no longer kept; with the oldest version it may
    /// resume from.
    #[error("{0}")]
    Compacted(String, u64),
    /// The request carries no credentials the node accepts (no or an unknown token, or a
    /// node-to-node call without the cluster's certificate or secret).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but its role does not allow the request.
    #[error("{0}")]
    PermissionDenied(String),
    /// A write would grow state beyond a quota (size of a group, number of locks, cache
    /// keys or queues).
    #[error("{0}")]
    QuotaExceeded(String),
}

fn holder_names(holders: &[HolderView]) -> String {
    holders
        .iter()
        .map(|h| {
            let mode = match h.mode {
                LockMode::Shared => "shared",
                LockMode::Exclusive => "exclusive",
            };
            format!("{} ({mode}, fence {})", h.client_id, h.fence)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cycle_text(cycle: &[WaitEdge]) -> String {
    cycle
        .iter()
        .map(|e| format!("{} waits for {} on {}", e.client_id, e.waits_for, e.lock))
        .collect::<Vec<_>>()
        .join("; ")
}

impl NodeError {
    /// The answer to a refused conditional write of `key`.
    pub fn refused(key: &str, refusal: sinkron_core::KvRefusal) -> Self {
        match refusal {
            sinkron_core::KvRefusal::VersionMismatch { current } => Self::VersionMismatch(
                format!("key {key:?} is at version {current}, not the one given (if_version)"),
                current,
            ),
            sinkron_core::KvRefusal::StaleFence { lock, current } => Self::StaleFence(
                match current {
                    Some(fence) => {
                        format!("lock {lock:?} is held with fence {fence}: the given fence is stale")
                    }
                    None => format!("lock {lock:?} is not held: the given fence is stale"),
                },
                current,
            ),
        }
    }
}

impl From<CoreError> for NodeError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidArgument { .. } => Self::InvalidArgument(e.to_string()),
            CoreError::TooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
        }
    }
}
