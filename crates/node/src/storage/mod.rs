//! Durable embedded storage of one Raft group: its log, vote, commit index, state machine
//! and snapshots, all under one directory.
//!
//! Layout of a group's directory:
//!
//! ```text
//! log/<first-index>.seg   append-only segments of length-prefixed, CRC-checked entries
//! vote.json               the last vote, replaced atomically and fsynced
//! purged.json             the last purged log id, replaced atomically and fsynced
//! committed.json          the last known commit index (a hint; never trusted past the log)
//! snapshot.bin            the latest snapshot, replaced atomically and fsynced
//! ```
//!
//! Why our own log rather than an embedded database: a Raft log is an append-only sequence
//! that is only ever cut at the tail (conflicts) or at the head (compaction). A segmented
//! file with one `fdatasync` per batch is exactly that shape, needs no compaction of its own,
//! and lets one writer thread cover many appends with a single fsync, which is what bounds
//! Raft's write throughput. See `docs/storage.md`.

pub mod files;
pub mod log;
pub mod redis;
pub mod redis_slot;
pub mod segment;
pub mod state_machine;
pub mod writer;

use openraft::{AnyError, StorageIOError};

pub use self::log::LogStore;
pub use self::state_machine::{Machine, SnapshotStore, StateMachineStore};
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

/// Wraps a failure to read the log as openraft's storage error.
pub(crate) fn log_read_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}
