//! Durable embedded storage of a node's Raft groups: one shared log for every group, and a
//! state machine with its snapshots per group.
//!
//! Layout of a node's data directory:
//!
//! ```text
//! log/<sequence>.seg       the shared log: length-prefixed, CRC-checked records tagged by
//!                          group (entries, truncations, purges, votes, commit hints)
//! groups/<id>/snapshot.bin the group's latest snapshot, replaced atomically and fsynced
//! ```
//!
//! Why our own log rather than an embedded database: a Raft log is an append-only sequence
//! that is only ever cut at the tail (conflicts) or at the head (compaction). A segmented
//! file with one `fdatasync` per batch is exactly that shape, and one writer thread for all
//! groups covers every group's appends with a single fsync, which is what bounds Raft's
//! write throughput. See `docs/storage.md`.

pub mod durability;
pub mod files;
pub mod log;
pub mod mem;
pub mod record;
pub mod redis;
pub mod redis_slot;
pub mod segment;
pub mod state_machine;
pub mod wal;
mod wal_recover;
pub mod writer;

use openraft::{AnyError, StorageIOError};

pub use self::durability::Durability;
pub use self::log::LogStore;
pub use self::state_machine::{Machine, SnapshotStore, StateMachineStore};
pub use self::wal::SharedLog;
pub use self::wal_recover::import_group_dirs;
use crate::types::StorageError;

/// Whether a group's storage currently accepts writes; shared by its writer (which sets it)
/// and the API (which reports it), so an outage is named instead of looking like a timeout.
#[derive(Debug, Clone, Default)]
pub struct StorageHealth(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl StorageHealth {
    /// Records that writes fail, and why.
    pub fn failing(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }

    /// Records that writes succeed again.
    pub fn ok(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why writes fail, if they do.
    pub fn problem(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Wraps an I/O failure of the log as openraft's storage error.
pub(crate) fn log_write_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}
