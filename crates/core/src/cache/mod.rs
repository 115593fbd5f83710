//! The MESI-coherent cache's pure core: the replicated directory with the backing store
//! (group 0), and each node's local LRU of cache lines.
//!
//! "Raft as the bus": every coherence request (a read miss, an upgrade to write, a
//! write-back, an eviction) is a command in group 0's log. Every node applies the same
//! commands in the same order; [`Directory::apply`] returns, besides its reply, the
//! [`CacheEvent`]s each node must perform on its own lines ([`LocalCache::on_event`]). A node
//! never changes another node's line; it only reacts to the log.
//!
//! [`CacheAgent`] is one node's side: its lines, lease and pending requests, with the rules
//! for hits, deferred recalls and lost writes; [`Revoker`] is the leader's lease-lapse rule.
//! What this core does not do (the node does): reading clocks, networking, and waiting.

mod agent;
mod directory;
mod local;
#[cfg(test)]
mod model;
mod protocol;
#[cfg(test)]
mod sim;

pub use agent::{CacheAgent, Revoker, WriteTicket};
pub use directory::{DirEntry, Directory, Recall, Waiting};
pub use local::{CacheStats, Line, LocalCache, WriteOutcome};
pub use protocol::{CacheCommand, CacheEvent, CacheReply, Mesi, RecallKind, Want};

/// Largest cache key, in bytes.
pub const CACHE_KEY_MAX_BYTES: usize = 256;
/// Largest cached value, in bytes of its JSON encoding.
pub const CACHE_VALUE_MAX_BYTES: usize = 64 * 1024;
