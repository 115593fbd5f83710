//! What the API answers, as typed values: cluster status, key-value results, lock holds,
//! queue messages and counts, and the options of a lock acquire and a queue receive.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A member as the cluster reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node name.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// The leader as the cluster reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderStatus {
    /// Node name.
    pub id: String,
    /// `host:port`.
    pub addr: String,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering node.
    pub node_id: String,
    /// Its role.
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<LeaderStatus>,
    /// Members.
    pub members: Vec<MemberStatus>,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last snapshot index.
    pub snapshot_index: Option<u64>,
    /// Whether the node belongs to a formed cluster.
    pub initialized: bool,
}

/// `GET /v1/kv/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvValue {
    /// Key.
    pub key: String,
    /// Value.
    pub value: serde_json::Value,
    /// Revision of the write that stored it (grows with every write of the cluster).
    pub version: u64,
}

/// `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutResult {
    /// Key.
    pub key: String,
    /// Revision of the write (grows with every write of the cluster).
    pub version: u64,
}

/// `DELETE /v1/kv/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeleteResult {
    /// Key.
    pub key: String,
    /// Whether the key existed.
    pub existed: bool,
}

/// Conditions and identity of a key-value write.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteOptions {
    /// Compare-and-set: applies only at this version (0: the key must not exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
    /// Applies only while this lock is held with this fence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
    /// A retry with the same id applies once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A fenced write's condition: the lock and the fencing token of its current hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The lock.
    pub lock: String,
    /// The fencing token.
    pub token: u64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The key.
    pub key: String,
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The new value (puts).
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// The revision of the change.
    pub version: u64,
}

#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: String,
    pub(crate) message: String,
}

/// A holder of a lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// The holding client.
    pub client_id: String,
    /// `shared` or `exclusive`.
    pub mode: String,
    /// Fencing token of its grant.
    pub fence: u64,
    /// When its lease ends (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

/// A granted lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Acquired {
    /// Lock name.
    pub name: String,
    /// Mode of the grant.
    pub mode: String,
    /// Fencing token; pass it to the resource the lock protects.
    pub fence: u64,
    /// Every holder after the grant.
    pub holders: Vec<Holder>,
    /// When the lease ends unless refreshed.
    pub expires_at_ms: u64,
}

/// How to acquire a lock.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LockOptions {
    /// Who acquires.
    pub client_id: String,
    /// `exclusive` (default when `None`) or `shared`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Lease in milliseconds (server default when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How long to wait in the queue, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// A refreshed lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refreshed {
    /// Lock name.
    pub name: String,
    /// The lease's new end.
    pub expires_at_ms: u64,
    /// The grant's fencing token.
    pub fence: u64,
}

/// Longest wait for a membership change.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// A sent message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentMessage {
    /// Message id, `<partition>-<sequence>`.
    pub id: String,
    /// Partition storing it.
    pub partition: u32,
}

/// Options of a receive; `None` leaves the server's default.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReceiveOptions {
    /// Most messages (1 to 100; default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Visibility timeout in ms (default 30,000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility_ms: Option<u64>,
    /// Long-poll wait in ms (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// A delivered message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delivered {
    /// Message id.
    pub id: String,
    /// Body.
    pub body: serde_json::Value,
    /// Receipt for ack and nack.
    pub receipt: String,
    /// Deliveries so far, this one included.
    pub receive_count: u32,
}

#[derive(Deserialize)]
pub(crate) struct ReceiveAnswer {
    pub(crate) messages: Vec<Delivered>,
}

/// A queue's counts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Ready messages.
    pub ready: usize,
    /// Delivered, unacknowledged messages.
    pub in_flight: usize,
    /// Messages in `<queue>.dlq`.
    pub dead_letters: usize,
    /// Per partition (with `partition`, `leader`, `ready`, `in_flight`, `dead_letters`).
    pub partitions: Vec<serde_json::Value>,
}
