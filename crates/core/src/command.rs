//! The commands of Raft group 0 and their replies.

use serde::{Deserialize, Serialize};

/// One entry of group 0's log: the client requests the leader batched together.
///
/// openraft 0.9 flushes the log once per appended entry and waits for it, so one entry per
/// request would cap a group at one request per fsync. The leader instead proposes whatever
/// requests queued up while the previous entry was in flight, as one entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Wall-clock time in milliseconds since the Unix epoch, stamped by the leader that
    /// proposed the entry. The state machine's clock is the largest stamp it has applied.
    pub at_ms: u64,
    /// The requests, applied in this order.
    pub requests: Vec<Request>,
}

/// One client request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; a retried request with the same id is applied once and answered
    /// with the first reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// What to do.
    pub command: Command,
}

impl Request {
    /// Size of the request's JSON encoding, used to bound batches.
    pub fn approx_bytes(&self) -> usize {
        serde_json::to_vec(self).map(|v| v.len()).unwrap_or(0)
    }

    /// A stable digest of what the request asks for, to tell a genuine retry (same id, same
    /// command) from an id reused for something else.
    pub fn fingerprint(&self) -> u64 {
        crate::ids::fnv1a64(&serde_json::to_vec(&self.command).unwrap_or_default())
    }
}

/// A state change of group 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sets `key` of the replicated key-value store to `value`.
    KvPut {
        /// The key.
        key: String,
        /// The new value.
        value: serde_json::Value,
    },
    /// Removes `key` from the replicated key-value store.
    KvDelete {
        /// The key.
        key: String,
    },
}

/// The reply to a [`Request`], computed by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The entry carried no application command (blank or membership entries).
    Empty,
    /// A put was applied; `version` is the revision that wrote the value.
    KvPut {
        /// Revision of the write; strictly increasing across the whole group.
        version: u64,
    },
    /// A delete was applied.
    KvDelete {
        /// Whether the key existed before.
        existed: bool,
    },
    /// The request was not applied.
    Rejected {
        /// Why, in words.
        reason: String,
    },
}
