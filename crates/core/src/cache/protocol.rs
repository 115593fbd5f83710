//! The cache protocol's vocabulary: the MESI states, the commands nodes propose through
//! group 0's log, the directory's replies, and the events each node performs on its lines.
//! Both the directory and the local caches speak it; neither depends on the other.

use serde::{Deserialize, Serialize};

/// The state of a present line; a key with no line is Invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mesi {
    /// Only copy, changed since it was last written back.
    Modified,
    /// Only copy, equal to the backing store.
    Exclusive,
    /// One of several read-only copies, equal to the backing store.
    Shared,
}

/// What a waiting request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Want {
    /// A shared copy.
    Read,
    /// Ownership, to write.
    Write,
}

/// How the owner must give up its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecallKind {
    /// Write back and keep a shared copy (another node wants to read).
    Downgrade,
    /// Write back and drop the line (another node wants to write).
    Invalidate,
}

/// A coherence request, as a command in group 0's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CacheCommand {
    /// Read miss on `node`.
    GetS {
        /// Key.
        key: String,
        /// Requesting node.
        node: String,
        /// Echoed in the grant, so the requester knows its request was served.
        #[serde(default)]
        token: u64,
    },
    /// `node` wants to write (its line is S or I). With `value`, the write happens as part
    /// of the grant, so a request served after a recall cannot lose the line before writing.
    GetM {
        /// Key.
        key: String,
        /// Requesting node.
        node: String,
        /// Echoed in the grant.
        #[serde(default)]
        token: u64,
        /// The value to write on the granted line.
        #[serde(default)]
        value: Option<serde_json::Value>,
    },
    /// `node` writes its line back: in answer to a recall, or on its own (a deadline).
    WriteBack {
        /// Key.
        key: String,
        /// The owner.
        node: String,
        /// The dirty value, or `None` when the line was clean.
        value: Option<serde_json::Value>,
        /// This answers a recall (proposed after the line stopped taking writes). A
        /// write-back on a deadline stores its value but never ends a recall: the owner may
        /// have written again since.
        #[serde(default)]
        answers_recall: bool,

        /// The log index of the grant that installed the written-back line. A node may be
        /// granted a newer line (a write-through of its own) before this commits; the older
        /// line's value is then stale and ignored. `None` (older logs): applied.
        #[serde(default)]
        granted_at: Option<u64>,
    },
    /// `node` dropped its line (after writing back a dirty value here).
    Evict {
        /// Key.
        key: String,
        /// The node.
        node: String,
        /// The dirty value, or `None` when the line was clean.
        value: Option<serde_json::Value>,
        /// The log index of the grant that installed the dropped line. A node may be granted
        /// the key again before its eviction of the older line commits; such an eviction
        /// is stale and ignored. `None` (older logs): applied as it comes.
        #[serde(default)]
        granted_at: Option<u64>,
    },
    /// A write-through write by `node`: stored at once, every other copy invalidated.
    Put {
        /// Key.
        key: String,
        /// The writer.
        node: String,
        /// The new value.
        value: serde_json::Value,
        /// Echoed in the writer's grant.
        #[serde(default)]
        token: u64,
    },
    /// Removes the key everywhere.
    Delete {
        /// Key.
        key: String,
    },
    /// `node` lost its coherence lease: it holds nothing any more, and an unwritten dirty
    /// line of it is lost.
    Revoke {
        /// The node.
        node: String,
        /// Tells this proposal from other revocations of the node, so that an observer
        /// (the fault-injection harness) can tell when the revocation that applied was
        /// proposed; 0 when nobody asks.
        #[serde(default)]
        token: u64,
    },
}

/// The directory's reply to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum CacheReply {
    /// The requester's line was granted in `state`.
    Granted {
        /// E or S (ownership is granted as E; the first write makes it M).
        state: Mesi,
        /// Value of the line.
        value: Option<serde_json::Value>,
        /// Its version.
        version: u64,
        /// Nodes whose copies this grant invalidated (a writer waits until they applied it).
        invalidated: Vec<String>,
    },
    /// The owner was asked to write back; the request is served when it has.
    Recalling {
        /// The owner.
        from: String,
    },
    /// A value was stored.
    Stored {
        /// Its version.
        version: u64,
        /// Nodes whose copies were invalidated.
        invalidated: Vec<String>,
    },
    /// `node`'s lines are forgotten.
    Revoked {
        /// Each key `node` owned, with the value the directory stores for it: what a read
        /// finds from now on, so a value of the owner that was never written back is lost.
        owned: Vec<(String, Option<serde_json::Value>)>,
    },
    /// Nothing to report.
    Done,
}

/// What one node must do to its own lines because of an applied command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CacheEvent {
    /// Drop the line.
    Invalidate {
        /// The node.
        node: String,
        /// Key.
        key: String,
    },
    /// Write the line back (then propose `WriteBack`).
    Recall {
        /// The owner.
        node: String,
        /// Key.
        key: String,
        /// Downgrade or invalidate.
        kind: RecallKind,
    },
    /// Install a line.
    Grant {
        /// The node.
        node: String,
        /// Key.
        key: String,
        /// E or S.
        state: Mesi,
        /// Value.
        value: Option<serde_json::Value>,
        /// Version.
        version: u64,
        /// The value is new (a write-through, or a write granted with its value): replace
        /// any line the node has.
        fresh: bool,
        /// The line holds a write not yet in the backing store (it is M).
        dirty: bool,
        /// The token of the request this grant serves (0: none).
        token: u64,
        /// The key's invalidation barrier when granted: the value may be returned only once
        /// every other member applied this index or lost its lease.
        #[serde(default)]
        invalidated_at: u64,
        /// The log index of this grant (an eviction of the line names it).
        #[serde(default)]
        granted_at: u64,
        /// The requester already owned the key: its own copy, even one it has just evicted
        /// and whose `Evict` is still on its way, is at least as new as the value granted.
        #[serde(default)]
        regrant: bool,
    },
    /// The former owner keeps a shared copy.
    Downgraded {
        /// The node.
        node: String,
        /// Key.
        key: String,
        /// Version of the value now stored.
        version: u64,
    },
    /// An eviction by `node` was applied (stale or not): the node no longer keeps that
    /// evicted line aside.
    Evicted {
        /// The node.
        node: String,
        /// Key.
        key: String,
    },
    /// A write-back by `node` was applied.
    WrittenBack {
        /// The node.
        node: String,
        /// Key.
        key: String,
        /// Version stored.
        version: u64,
        /// The recall it answered, if any (`Invalidate`: drop the line).
        kind: Option<RecallKind>,
    },
}

impl CacheCommand {
    /// The key the command is about (`None` for a revocation, which concerns a node).
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::GetS { key, .. }
            | Self::GetM { key, .. }
            | Self::WriteBack { key, .. }
            | Self::Evict { key, .. }
            | Self::Put { key, .. }
            | Self::Delete { key } => Some(key),
            Self::Revoke { .. } => None,
        }
    }
}

impl CacheEvent {
    /// The node that must act.
    pub fn node(&self) -> &str {
        match self {
            Self::Invalidate { node, .. }
            | Self::Recall { node, .. }
            | Self::Grant { node, .. }
            | Self::Downgraded { node, .. }
            | Self::Evicted { node, .. }
            | Self::WrittenBack { node, .. } => node,
        }
    }
}
