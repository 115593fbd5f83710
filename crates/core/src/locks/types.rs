//! Values of the lock manager: modes, holds, waiters, outcomes and events.

use serde::{Deserialize, Serialize};

/// Longest lock name, in bytes.
pub const LOCK_NAME_MAX_BYTES: usize = 256;
/// Longest client id, in bytes.
pub const CLIENT_ID_MAX_BYTES: usize = 128;
/// Most waiters one lock queues.
pub const WAITERS_PER_LOCK_MAX: usize = 1024;
/// Most locks one client holds or waits for at once.
pub const LOCKS_PER_CLIENT_MAX: usize = 1024;
/// Longest lease, in milliseconds (one day).
pub const TTL_MAX_MS: u64 = 86_400_000;
/// Longest wait for a lock, in milliseconds (five minutes).
pub const WAIT_MAX_MS: u64 = 300_000;
/// How many recent deadlocks are kept for inspection.
pub const DEADLOCK_HISTORY: usize = 100;

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Many holders at once.
    Shared,
    /// One holder.
    #[default]
    Exclusive,
}

impl LockMode {
    /// Whether a hold in `self` and one in `other` may coexist.
    pub fn compatible(self, other: LockMode) -> bool {
        self == LockMode::Shared && other == LockMode::Shared
    }
}

/// One client's grant of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// How it is held.
    pub mode: LockMode,
    /// Fencing token of the grant; strictly increasing over all grants of the cluster.
    pub fence: u64,
    /// State-machine time of the grant.
    pub acquired_at_ms: u64,
    /// The lease ends at this state-machine time unless refreshed.
    pub expires_at_ms: u64,
    /// Lease length used by refreshes and by a new leader's extension.
    pub ttl_ms: u64,
}

/// A queued request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// Who waits.
    pub client_id: String,
    /// The mode asked for.
    pub mode: LockMode,
    /// Lease length once granted.
    pub ttl_ms: u64,
    /// When it was queued.
    pub enqueued_at_ms: u64,
    /// The request gives up at this time; the leader removes it if nobody else did.
    pub deadline_ms: u64,
}

/// A holder as reported to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderView {
    /// The holder.
    pub client_id: String,
    /// How it holds the lock.
    pub mode: LockMode,
    /// Its fencing token.
    pub fence: u64,
    /// When its lease ends.
    pub expires_at_ms: u64,
}

/// One edge of a wait-for cycle: `client_id` waits for `lock`, held or awaited by the next
/// client of the cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitEdge {
    /// The waiting client.
    pub client_id: String,
    /// The lock it waits for.
    pub lock: String,
    /// The client it waits for.
    pub waits_for: String,
}

/// A deadlock that was broken by rejecting the victim's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlockRecord {
    /// The cycle, starting and ending at the victim.
    pub cycle: Vec<WaitEdge>,
    /// The client whose request was rejected (always the requester).
    pub victim: String,
    /// The lock the victim asked for.
    pub lock: String,
    /// State-machine time of detection.
    pub at_ms: u64,
}

/// Outcome of an acquire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AcquireOutcome {
    /// Granted now (or re-acquired: the lease was refreshed, the fence is unchanged).
    Granted {
        /// The grant.
        hold: Hold,
        /// Every holder after the grant.
        holders: Vec<HolderView>,
    },
    /// Queued; a later command grants it (reported as [`LockEvent::Granted`]).
    Queued {
        /// 0-based place in the queue.
        position: usize,
    },
    /// Not grantable and the request does not wait.
    Conflict {
        /// The current holders.
        holders: Vec<HolderView>,
    },
    /// Waiting would close a cycle of waiters; the request is rejected.
    Deadlock {
        /// The cycle, starting at the requester.
        cycle: Vec<WaitEdge>,
    },
}

/// Why a lock command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum LockRefusal {
    /// Nobody holds the lock.
    NotHeld,
    /// Others hold the lock, but not this client.
    NotOwner,
    /// A limit was reached.
    Limit {
        /// Which limit, in words.
        what: String,
    },
}

/// Something that happened to a lock as a side effect of applying a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LockEvent {
    /// A queued request was granted.
    Granted {
        /// The lock.
        name: String,
        /// The new holder.
        client_id: String,
        /// The grant.
        hold: Hold,
    },
    /// A lease ran out and the hold was removed.
    Expired {
        /// The lock.
        name: String,
        /// The former holder.
        client_id: String,
    },
    /// A waiter's deadline passed and it left the queue.
    WaitExpired {
        /// The lock.
        name: String,
        /// The former waiter.
        client_id: String,
    },
}

/// A fenced write's condition: lock `lock` is held right now, by a hold whose fencing token
/// is `token` and whose lease has not lapsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    /// The lock's name.
    pub lock: String,
    /// The fencing token of the hold.
    pub token: u64,
}
