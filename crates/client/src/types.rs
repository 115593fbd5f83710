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

/// `POST /v1/locks/refresh-all`: every lease the client holds, refreshed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshedAll {
    /// The client.
    pub client_id: String,
    /// Each lock with its new lease end.
    pub locks: Vec<Refreshed>,
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
    #[serde(default)]
    pub(crate) acked: Option<usize>,
    #[serde(default)]
    pub(crate) failed: Option<Vec<AckFailure>>,
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

/// One queue of `GET /v1/queues`, over all partitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueSummary {
    /// Queue name.
    pub queue: String,
    /// Ready messages.
    pub ready: usize,
    /// Delivered, unacknowledged messages.
    pub in_flight: usize,
    /// Messages in `<queue>.dlq`.
    pub dead_letters: usize,
    /// The partitions that hold its messages.
    pub partitions: Vec<QueuePartitionCounts>,
}

/// A queue's messages in one partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueuePartitionCounts {
    /// Partition number.
    pub partition: u32,
    /// Ready messages.
    pub ready: usize,
    /// Messages in flight.
    pub in_flight: usize,
    /// Messages of its dead-letter queue in this partition.
    pub dead_letters: usize,
}

/// `GET /v1/queues`: every queue that holds messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueList {
    /// By name.
    pub queues: Vec<QueueSummary>,
    /// Whether a partition held more queues than it lists.
    pub truncated: bool,
    /// Partitions whose leader did not answer: their queues are missing.
    pub unanswered_partitions: Vec<u32>,
}

/// One member of `GET /v1/cluster/nodes`, as it answered for itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeOverview {
    /// Node name.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// Its own `GET /v1/cluster`, when it answered.
    pub cluster: Option<ClusterStatus>,
    /// Whether its `/ready` answered `200`.
    pub ready: bool,
    /// Why not.
    #[serde(default)]
    pub ready_problem: Option<String>,
    /// Its cache counters, when it answered.
    pub cache: Option<CacheStats>,
    /// Why it could not be asked.
    #[serde(default)]
    pub error: Option<String>,
}

/// `GET /v1/cluster/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodesOverview {
    /// By name.
    pub nodes: Vec<NodeOverview>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok` while the process runs.
    pub status: String,
    /// The node's name.
    pub node_id: String,
}

/// `GET /ready` (a `200`; a node that is not ready answers `503`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    /// Always true in a `200`.
    pub ready: bool,
    /// The known leader.
    pub leader: String,
    /// Last applied index of group 0.
    pub applied_index: u64,
    /// Queue partitions or peers that are degraded, if any.
    #[serde(default)]
    pub degraded: Vec<String>,
}

/// The members after a membership change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembershipChanged {
    /// Every member.
    pub members: Vec<MemberStatus>,
}

/// The holders a release or force-release took away.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Released {
    /// The lock.
    pub name: String,
    /// The former holders.
    pub released: Vec<String>,
}

/// A queued acquire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Waiter {
    /// The waiting client.
    pub client_id: String,
    /// The mode asked for.
    pub mode: String,
    /// When it was queued (ms since the Unix epoch).
    pub enqueued_at_ms: u64,
    /// When it gives up.
    pub deadline_ms: u64,
}

/// One lock's holders and queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockState {
    /// The lock.
    pub name: String,
    /// `shared` or `exclusive` while held.
    pub mode: Option<String>,
    /// Current holders.
    pub holders: Vec<Holder>,
    /// Queued acquires, first come first.
    pub waiters: Vec<Waiter>,
}

/// Every held or awaited lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockList {
    /// The locks.
    pub locks: Vec<LockState>,
    /// The last fencing token handed out.
    pub last_fence: u64,
}

/// One edge of the wait-for graph: `client_id` waits for `lock`, held or awaited by
/// `waits_for`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WaitEdge {
    /// The waiting client.
    pub client_id: String,
    /// The lock.
    pub lock: String,
    /// The client it waits for.
    pub waits_for: String,
}

/// A deadlock that was broken by refusing the victim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deadlock {
    /// The cycle, from the victim round to it.
    pub cycle: Vec<WaitEdge>,
    /// The refused client.
    pub victim: String,
    /// The lock it asked for.
    pub lock: String,
    /// When (state-machine time, ms).
    pub at_ms: u64,
}

/// The wait-for graph and the recent deadlocks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WaitForGraph {
    /// Every edge.
    pub edges: Vec<WaitEdge>,
    /// Recent deadlocks, oldest first.
    pub deadlocks: Vec<Deadlock>,
}

/// A receipt an ack could not use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AckFailure {
    /// The receipt.
    pub receipt: String,
    /// Stable error code.
    pub error: String,
    /// Explanation.
    pub message: String,
}

/// The outcome of an ack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Acked {
    /// Deliveries deleted.
    pub acked: usize,
    /// Receipts that failed, with why.
    pub failed: Vec<AckFailure>,
}

/// One node's MESI state of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeLine {
    /// Node name.
    pub node: String,
    /// `M`, `E`, `S` or `I`; `unreachable` when the node did not answer.
    pub state: String,
}

/// Every node's state of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyLines {
    /// Key.
    pub key: String,
    /// Each member's line.
    pub lines: Vec<NodeLine>,
}

/// Counters of one node's cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheStats {
    /// Node name.
    pub node: String,
    /// Lines held.
    pub size: usize,
    /// CACHE_MAX_SIZE.
    pub capacity: usize,
    /// Reads served from a local line.
    pub hits: u64,
    /// Reads that went through the log.
    pub misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
    /// Lines evicted.
    pub evictions: u64,
    /// Lines invalidated by other nodes' writes.
    pub invalidations: u64,
    /// Modified lines written back.
    pub write_backs: u64,
    /// Lines per MESI state.
    pub lines_per_state: std::collections::BTreeMap<String, usize>,
    /// Transitions by `from->to`.
    pub transitions: std::collections::BTreeMap<String, u64>,
    /// Whether the node's coherence lease is valid.
    pub lease_valid: bool,
}

/// Result of a cache delete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheDeleted {
    /// Key.
    pub key: String,
    /// The key is gone everywhere.
    pub deleted: bool,
}

/// `GET /v1/cache/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheValue {
    /// Key.
    pub key: String,
    /// The value.
    pub value: serde_json::Value,
    /// This node's line afterwards: `M`, `E` or `S`.
    pub state: String,
    /// Served from this node's line without the log.
    pub hit: bool,
}

/// `PUT /v1/cache/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheWritten {
    /// Key.
    pub key: String,
    /// This node's line afterwards: `M` (write-back) or `E` (stored).
    pub state: String,
    /// Version of the stored value the line is based on.
    pub version: u64,
}

/// A virtual node on the ring.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RingToken {
    /// Position on `0..2^32-1`.
    pub token: u32,
    /// Virtual node name, such as `node1-vn0`.
    pub name: String,
    /// Node.
    pub node: String,
}

/// One queue partition on the ring.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RingPartition {
    /// Partition number.
    pub partition: u32,
    /// First hash of its range.
    pub start: u32,
    /// Last hash of its range.
    pub end: u32,
    /// The nodes that host its group now.
    pub replicas: Vec<String>,
    /// Where the ring wants it.
    pub target: Vec<String>,
    /// Whether a move is under way.
    pub moving: bool,
    /// Generation of its replica set.
    pub generation: u64,
    /// Its group's leader, if known.
    pub leader: Option<String>,
}

/// `GET /v1/ring`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ring {
    /// Virtual nodes per node.
    pub virtual_nodes: u32,
    /// Number of partitions.
    pub partition_count: u32,
    /// Replicas per partition.
    pub replication: u32,
    /// Deliveries before the dead-letter queue.
    pub max_receives: u32,
    /// Nodes on the ring.
    pub nodes: Vec<String>,
    /// Every virtual node.
    pub tokens: Vec<RingToken>,
    /// Every partition.
    pub partitions: Vec<RingPartition>,
}

/// The outcome of one message of a batch send: `id` and `partition`, or `error` and
/// `message`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendOutcome {
    /// Message id, when stored.
    #[serde(default)]
    pub id: Option<String>,
    /// Its partition, when stored.
    #[serde(default)]
    pub partition: Option<u32>,
    /// Stable error code, when refused.
    #[serde(default)]
    pub error: Option<String>,
    /// Why, when refused.
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SentBatch {
    pub(crate) messages: Vec<SendOutcome>,
}
