//! The bodies nodes send each other, shared by the callers ([`crate::peers`],
//! [`crate::proposer`]) and the handlers of `/raft/*` ([`crate::api::raft`]).

use serde::{Deserialize, Serialize};
use sinkron_core::queue::Delivery;
use sinkron_core::{Request, Response};

use crate::error::NodeError;
use crate::types::Member;

/// How the leader answers a write forwarded to it.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardedWrite {
    /// Applied; the state machine's reply and the log index of the entry that carried it.
    Applied(Response, u64),
    /// The receiver is not (or no longer) the leader.
    NotLeader,
    /// No quorum acknowledged it in time; it may still commit.
    Timeout,
    /// The write was refused for another reason.
    Failed(String),
}

/// How the leader answers a read-index request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadIndex {
    /// Reads are linearizable once the asker has applied this index.
    Index(u64),
    /// The receiver is not (or no longer) the leader.
    NotLeader,
    /// The leader could not confirm its leadership with a quorum in time.
    Timeout,
}

/// Body of an applied-index wait.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppliedQuery {
    /// The index to have applied.
    pub index: u64,
    /// Longest wait, in milliseconds (at most 10,000).
    pub wait_ms: u64,
}

/// Body of a cache lease renewal.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseRenewal {
    /// The renewing node.
    pub node: String,
}

/// An operation on one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PartitionCall {
    /// Propose a request (through the group's batchers, which find the leader).
    Write(Request),
    /// Propose requests in this order.
    WriteAll(Vec<Request>),
    /// Something only the group's leader does.
    AtLeader(LeaderCall),
}

/// An operation run by a partition group's leader itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderCall {
    /// Deliver up to `max` messages of `queue`; no proposal when none is visible.
    Receive {
        /// Request id of the proposal (a retry gets the same deliveries).
        request_id: String,
        /// Queue name.
        queue: String,
        /// Most messages.
        max: u32,
        /// Visibility timeout.
        visibility_ms: u64,
    },
    /// A waiting receive of another node, relayed whole to the leader of its queue's home
    /// partition (see `Queues::receive`): run here as if its client had called this node,
    /// never relayed again.
    WaitingReceive {
        /// Queue name.
        queue: String,
        /// Most messages.
        max: u32,
        /// Visibility timeout.
        visibility_ms: u64,
        /// Longest wait.
        wait_ms: u64,
        /// Acks the receive carries: partition, position among the client's receipts, and
        /// the request (its id made by the relaying node, which may propose it again).
        acks: Vec<(u32, usize, Request)>,
    },
    /// Counts of `queue` (if given) and the leader.
    Stats {
        /// Queue to count.
        queue: Option<String>,
    },
    /// Every queue with messages in the partition (at most [`QUEUES_LISTED_MAX`]).
    Queues,
    /// The partition's whole state, for a backup.
    Snapshot,
    /// Give the group exactly these voters (a move after a membership change).
    Reconfigure {
        /// The new replica set.
        replicas: Vec<Member>,
    },
}

/// The answer to a [`PartitionCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PartitionReply {
    /// The state machine's reply to a write.
    Applied(Response),
    /// One outcome per request of a [`PartitionCall::WriteAll`].
    AppliedAll(Vec<Result<Response, NodeError>>),
    /// Deliveries of a receive.
    Received(Vec<Delivery>),
    /// The outcome of a [`LeaderCall::WaitingReceive`], and each ack's by position.
    Waited {
        /// What the receive got.
        received: Result<Vec<Delivery>, NodeError>,
        /// The acks' outcomes.
        acks: Vec<(usize, Result<Response, NodeError>)>,
        /// For each partition the receive got messages from, the log index up to which the
        /// answering node knows receives took messages there (so the relaying node treats
        /// its copy as behind until it applied that far).
        handed_out: Vec<(u32, u64)>,
    },
    /// Counts.
    Stats(PartitionStats),
    /// The queues of a partition.
    Queues(PartitionQueues),
    /// A partition's state for a backup.
    Snapshot(crate::backup::GroupBackup),
    /// A reconfiguration finished.
    Reconfigured,
}

/// One partition's view of a queue, read at its leader.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartitionStats {
    /// Partition number.
    pub partition: u32,
    /// Leader of its group.
    pub leader: Option<String>,
    /// Ready messages (including delayed ones).
    pub ready: usize,
    /// Delivered, unacknowledged messages.
    pub in_flight: usize,
    /// Messages in the queue's dead-letter queue.
    pub dead_letters: usize,
}

/// Most queues one partition lists for `GET /v1/queues`, in name order.
pub const QUEUES_LISTED_MAX: usize = 1_000;

/// The queues of one partition, read at its leader.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionQueues {
    /// Partition number.
    pub partition: u32,
    /// The queues with messages, by name, with their counts in this partition.
    pub queues: Vec<QueueCounts>,
    /// Whether the partition holds more queues than listed.
    pub truncated: bool,
}

/// One queue's messages in one partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueCounts {
    /// Queue name (a dead-letter queue ends in `.dlq`).
    pub queue: String,
    /// Ready messages, delayed ones included.
    pub ready: usize,
    /// Delivered, unacknowledged messages.
    pub in_flight: usize,
}

/// Body of `POST /raft/{group}/queue`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartitionEnvelope {
    /// How many more times the call may be forwarded.
    pub hops: u8,
    /// Milliseconds left to the caller's deadline.
    pub within_ms: u64,
    /// The call.
    #[schema(value_type = Object)]
    pub call: PartitionCall,
}

/// A message sent: its id and partition.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sent {
    /// Message id.
    pub id: String,
    /// Partition that stores it.
    pub partition: u32,
}

/// One Raft call in a batch of a peer stream (`POST /raft/batch`, see
/// [`crate::peer_stream`]): openraft's request for `group`, serialised once by the caller.
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamCall {
    /// The Raft group.
    pub group: crate::types::GroupId,
    /// `append` or `vote`.
    pub rpc: String,
    /// openraft's request, as JSON.
    pub body: Box<serde_json::value::RawValue>,
}

/// The answer to one call of a batch, in the batch's order: the HTTP status the call would
/// have had on its own, and openraft's reply (200) or why not.
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamReply {
    /// 200, or the status of the refusal.
    pub status: u16,
    /// openraft's reply (`{"Ok": ...}` or `{"Err": ...}`) when the status is 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Box<serde_json::value::RawValue>>,
    /// Why the call was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StreamReply {
    /// A call that reached its group.
    pub fn ok(body: Box<serde_json::value::RawValue>) -> Self {
        Self { status: 200, body: Some(body), error: None }
    }

    /// A call refused with `status`.
    pub fn refused(status: u16, error: impl Into<String>) -> Self {
        Self { status, body: None, error: Some(error.into()) }
    }
}
