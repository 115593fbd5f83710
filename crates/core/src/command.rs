//! The commands of Raft group 0 and their replies.

use serde::{Deserialize, Serialize};

use crate::cache::{CacheCommand, CacheReply};
pub use crate::locks::Fence;
use crate::locks::{AcquireOutcome, Hold, LockMode, LockRefusal};
use crate::queue::{Delivery, QueueRefusal};
use crate::topology::TopologyCommand;

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
    /// Random bits drawn by the proposing leader when a request needs some (a queue
    /// receive's receipts): the replicas derive the same values from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<crate::entropy::Seed>,
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
    /// Whether applying the request draws random values from its entry's seed.
    pub fn needs_seed(&self) -> bool {
        matches!(self.command, Command::QueueReceive { .. })
    }

    /// Size of the request's JSON encoding, used to bound batches (counted as it is
    /// encoded, nothing kept).
    pub fn approx_bytes(&self) -> usize {
        let mut count = crate::ids::ByteCount::default();
        let _ = serde_json::to_writer(&mut count, self);
        count.0
    }

    /// A stable digest of what the request asks for, to tell a genuine retry (same id, same
    /// command) from an id reused for something else: FNV-1a of the command's JSON, hashed
    /// as it is encoded.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = crate::ids::Fnv1a64::default();
        let _ = serde_json::to_writer(&mut hasher, &self.command);
        hasher.0
    }
}

/// Why a conditional write of the key-value store was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum KvRefusal {
    /// `if_version` did not match.
    VersionMismatch {
        /// The key's current version (0: it does not exist).
        current: u64,
    },
    /// The fence is not that of a current hold of the lock.
    StaleFence {
        /// The lock.
        lock: String,
        /// The highest fence of the lock's current holds, if it is held.
        current: Option<u64>,
    },
}

/// A state change of group 0 (metadata, locks, cache) or of a queue partition's group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sets `key` of the replicated key-value store to `value`.
    KvPut {
        /// The key.
        key: String,
        /// The new value.
        value: serde_json::Value,
        /// Compare-and-set: applies only if the key's version is this (0: it must not exist).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
        /// Applies only while this lock is held with this fence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<Fence>,
    },
    /// Removes `key` from the replicated key-value store.
    KvDelete {
        /// The key.
        key: String,
        /// Compare-and-set: applies only if the key's version is this (0: it must not exist).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
        /// Applies only while this lock is held with this fence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<Fence>,
    },
    /// Acquires a lock, or queues for it when `wait_ms > 0`.
    LockAcquire {
        /// Lock name.
        name: String,
        /// Who asks.
        client_id: String,
        /// Shared or exclusive.
        mode: LockMode,
        /// Lease length.
        ttl_ms: u64,
        /// How long the request may wait in the queue; 0 never queues.
        wait_ms: u64,
        /// The authenticated principal that asks (when the cluster checks tokens): a client id
        /// that holds or awaits a lock belongs to its principal until it holds nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Releases a hold.
    LockRelease {
        /// Lock name.
        name: String,
        /// The holder.
        client_id: String,
        /// The authenticated principal that asks (when the cluster checks tokens): a client id
        /// that holds or awaits a lock belongs to its principal until it holds nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Extends a lease.
    LockRefresh {
        /// Lock name.
        name: String,
        /// The holder.
        client_id: String,
        /// New lease length; `None` keeps the hold's own.
        ttl_ms: Option<u64>,
        /// The authenticated principal that asks (when the cluster checks tokens): a client id
        /// that holds or awaits a lock belongs to its principal until it holds nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Extends every lease of a client.
    LockRefreshAll {
        /// The holder.
        client_id: String,
        /// New lease length; `None` keeps each hold's own.
        ttl_ms: Option<u64>,
        /// The authenticated principal that asks (when the cluster checks tokens): a client id
        /// that holds or awaits a lock belongs to its principal until it holds nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Leaves a lock's queue (the waiter gave up or went away).
    LockCancelWait {
        /// Lock name.
        name: String,
        /// The waiter.
        client_id: String,
        /// The authenticated principal that asks (when the cluster checks tokens): a client id
        /// that holds or awaits a lock belongs to its principal until it holds nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Drops every hold of a lock (administrative).
    LockForceRelease {
        /// Lock name.
        name: String,
    },
    /// Expires leases and waits that ended by the entry's timestamp (proposed by the leader).
    LockExpire,
    /// Extends every lease by its TTL (proposed by a new leader before it expires anything).
    LockExtendAll,
    /// A coherence request of the MESI cache.
    Cache {
        /// The request.
        request: CacheCommand,
        /// A fenced write: applied only while this lock is held with this fence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<Fence>,
    },
    /// A change of the queue ring and partition placements (group 0).
    Topology {
        /// The change.
        request: TopologyCommand,
    },
    /// Appends a message to a queue (partition groups).
    QueueSend {
        /// Queue name.
        queue: String,
        /// Ordering key; the queue name when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Message body.
        body: serde_json::Value,
        /// A fenced send: the node checked that the lock is held with this fence, and the
        /// partition refuses a fence below the highest it has accepted for that lock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<Fence>,
    },
    /// Delivers up to `max` ready messages, hidden for `visibility_ms` (partition groups).
    QueueReceive {
        /// Queue name.
        queue: String,
        /// Most messages to deliver.
        max: u32,
        /// How long delivered messages stay hidden.
        visibility_ms: u64,
    },
    /// Deletes a delivered message (partition groups).
    QueueAck {
        /// Queue name.
        queue: String,
        /// Receipt of the delivery.
        receipt: String,
    },
    /// Returns a delivered message, visible again after `delay_ms` (partition groups).
    QueueNack {
        /// Queue name.
        queue: String,
        /// Receipt of the delivery.
        receipt: String,
        /// Delay before it is visible again.
        delay_ms: u64,
        /// Deliveries after which it goes to the dead-letter queue.
        max_receives: u32,
    },
    /// Returns every message whose visibility deadline passed (proposed by the leader).
    QueueExpire {
        /// Deliveries after which a message goes to the dead-letter queue.
        max_receives: u32,
    },
}

impl Command {
    /// About how many bytes this command can add to its group's state: its values and
    /// names (the figure a state-size quota counts between two snapshots).
    pub fn payload_bytes(&self) -> usize {
        use crate::cache::CacheCommand;
        use crate::limits::json_size_estimate as size;
        const OVERHEAD: usize = 64;
        OVERHEAD
            + match self {
                Self::KvPut { key, value, .. } => key.len() + size(value),
                Self::QueueSend { queue, key, body, .. } => {
                    queue.len() + key.as_ref().map_or(0, String::len) + size(body)
                }
                Self::LockAcquire { name, client_id, .. } => name.len() + client_id.len(),
                Self::Cache { request, .. } => match request {
                    CacheCommand::Put { key, value, .. } => key.len() + size(value),
                    CacheCommand::GetM { key, value: Some(value), .. }
                    | CacheCommand::WriteBack { key, value: Some(value), .. }
                    | CacheCommand::Evict { key, value: Some(value), .. } => key.len() + size(value),
                    _ => 0,
                },
                _ => 0,
            }
    }
}

impl Command {
    /// Whether the command acts on the lock table.
    pub fn is_lock(&self) -> bool {
        matches!(
            self,
            Command::LockAcquire { .. }
                | Command::LockRelease { .. }
                | Command::LockRefresh { .. }
                | Command::LockRefreshAll { .. }
                | Command::LockCancelWait { .. }
                | Command::LockForceRelease { .. }
                | Command::LockExpire
                | Command::LockExtendAll
        )
    }

    /// Whether the command belongs to a queue partition's group rather than group 0.
    pub fn is_queue(&self) -> bool {
        matches!(
            self,
            Command::QueueSend { .. }
                | Command::QueueReceive { .. }
                | Command::QueueAck { .. }
                | Command::QueueNack { .. }
                | Command::QueueExpire { .. }
        )
    }
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
    /// A conditional put or delete was not applied.
    KvRefused {
        /// Why.
        refusal: KvRefusal,
    },
    /// Outcome of a lock acquire.
    LockAcquire {
        /// Granted, queued, conflict or deadlock.
        outcome: AcquireOutcome,
    },
    /// A lock command other than acquire succeeded; `hold` is the refreshed hold if any.
    LockDone {
        /// The hold after a refresh.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold: Option<Hold>,
    },
    /// A refresh-all: each refreshed lock with its hold.
    LockRefreshedAll {
        /// Refreshed locks.
        locks: Vec<(String, Hold)>,
    },
    /// A cancel: whether the client was still waiting.
    LockCancelled {
        /// Whether it was removed from the queue.
        was_waiting: bool,
    },
    /// A force-release: the former holders.
    LockForceReleased {
        /// Who held the lock.
        former_holders: Vec<String>,
    },
    /// An expiry pass: how many holds and waits ended.
    LockExpired {
        /// Holds and waits removed.
        removed: usize,
    },
    /// A lock command was refused.
    LockRefused {
        /// Why.
        refusal: LockRefusal,
    },
    /// The cache directory's reply.
    Cache {
        /// The reply.
        reply: CacheReply,
    },
    /// A topology change: whether it changed anything.
    Topology {
        /// False when the change was stale or already applied.
        changed: bool,
    },
    /// A message was appended.
    QueueSent {
        /// Its id.
        id: String,
    },
    /// Messages delivered by a receive.
    QueueReceived {
        /// The deliveries, oldest first.
        messages: Vec<Delivery>,
    },
    /// An ack or nack was applied; `dead_lettered` when a nack moved the message to the DLQ.
    QueueDone {
        /// Whether the message went to the dead-letter queue.
        dead_lettered: bool,
    },
    /// An expiry pass.
    QueueExpired {
        /// Messages made ready again.
        redelivered: usize,
        /// Messages moved to dead-letter queues.
        dead_lettered: usize,
    },
    /// A queue command was refused.
    QueueRefused {
        /// Why.
        refusal: QueueRefusal,
    },
    /// The request was not applied.
    Rejected {
        /// Why, in words.
        reason: String,
    },
}

impl Response {
    /// The reply as the de-duplication window keeps it: ids, versions, receipts, fences
    /// and counts, never values or message bodies (a window of receives could otherwise
    /// hold 10,000 x 100 bodies, a window of cache grants 10,000 values, and a revocation
    /// every key a node owned). A retried receive gets its bodies back from the state; a
    /// cache grant's value and a revocation's keys traveled in the events of the first
    /// apply, so a replayed grant carries no value and a replayed revocation revoked nothing.
    pub fn remembered(&self) -> Response {
        match self {
            Response::QueueReceived { messages } => Response::QueueReceived {
                messages: messages
                    .iter()
                    .map(|d| Delivery { body: serde_json::Value::Null, ..d.clone() })
                    .collect(),
            },
            Response::Cache { reply: CacheReply::Granted { state, version, invalidated, .. } } => {
                Response::Cache {
                    reply: CacheReply::Granted {
                        state: *state,
                        value: None,
                        version: *version,
                        invalidated: invalidated.clone(),
                    },
                }
            }
            Response::Cache { reply: CacheReply::Revoked { .. } } => {
                Response::Cache { reply: CacheReply::Revoked { owned: Vec::new() } }
            }
            other => other.clone(),
        }
    }
}
