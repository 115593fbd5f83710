//! What a node admits beyond the shape of a request.
//!
//! - [`Waiting`]: per-node caps on requests that wait, long-polling queue receives and lock
//!   acquires with `wait_ms`. Each waiting request holds a permit; with none left, the request
//!   is answered `429 limit_exceeded` with `Retry-After` at once instead of adding one more
//!   open wait.
//! - [`SnapshotChunks`]: a snapshot arrives in chunks that must continue exactly where the
//!   last one ended, up to a total cap, so a chunk with a huge offset cannot make the node
//!   allocate what it names.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ConnectionLimits;
use crate::error::NodeError;

/// The permits of one node's waiting requests.
#[derive(Debug)]
pub struct Waiting {
    long_polls: Arc<Semaphore>,
    long_polls_max: usize,
    lock_waiters: Arc<Semaphore>,
    lock_waiters_max: usize,
    watches: Arc<Semaphore>,
    watches_max: usize,
}

impl Waiting {
    /// Permits for `limits`.
    pub fn new(limits: &ConnectionLimits) -> Self {
        Self {
            long_polls: Arc::new(Semaphore::new(limits.long_polls_max)),
            long_polls_max: limits.long_polls_max,
            lock_waiters: Arc::new(Semaphore::new(limits.lock_waiters_max)),
            lock_waiters_max: limits.lock_waiters_max,
            watches: Arc::new(Semaphore::new(limits.watches_max)),
            watches_max: limits.watches_max,
        }
    }

    /// A permit for one open watch stream or blocking read, held until it ends.
    pub fn watch(&self) -> Result<OwnedSemaphorePermit, NodeError> {
        self.watches.clone().try_acquire_owned().map_err(|_| {
            NodeError::LimitExceeded(format!(
                "this node already has {} watches and blocking reads open (WATCHES_MAX); retry \
                 later or on another node",
                self.watches_max
            ))
        })
    }

    /// A permit for one long-polling receive, held until it answers.
    pub fn long_poll(&self) -> Result<OwnedSemaphorePermit, NodeError> {
        self.long_polls.clone().try_acquire_owned().map_err(|_| {
            NodeError::LimitExceeded(format!(
                "this node already has {} receives waiting (QUEUE_LONG_POLLS_MAX); retry later, \
                 on another node, or with a shorter wait_ms",
                self.long_polls_max
            ))
        })
    }

    /// A permit for one waiting receive another node relayed here, from the same pool as
    /// [`Waiting::long_poll`] but only while more than half of it is free: relays never
    /// take the last half of the long polls from this node's own clients.
    pub fn relayed_long_poll(&self) -> Result<OwnedSemaphorePermit, NodeError> {
        let refused = || {
            NodeError::LimitExceeded(format!(
                "this node keeps half of its {} long polls (QUEUE_LONG_POLLS_MAX) for its own clients",
                self.long_polls_max
            ))
        };
        if self.long_polls.available_permits() <= self.long_polls_max / 2 {
            return Err(refused());
        }
        self.long_polls.clone().try_acquire_owned().map_err(|_| refused())
    }

    /// A permit for one waiting lock acquire, held until it answers.
    pub fn lock_wait(&self) -> Result<OwnedSemaphorePermit, NodeError> {
        self.lock_waiters.clone().try_acquire_owned().map_err(|_| {
            NodeError::LimitExceeded(format!(
                "this node already has {} lock acquires waiting (LOCK_WAITERS_MAX); retry later \
                 or on another node",
                self.lock_waiters_max
            ))
        })
    }
}

/// Largest snapshot a node receives, in bytes.
pub const SNAPSHOT_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The snapshot being received by each group: its id, where its last chunk began, and
/// where the next must begin.
#[derive(Debug, Default)]
pub struct SnapshotChunks(std::sync::Mutex<std::collections::HashMap<crate::types::GroupId, Receiving>>);

#[derive(Debug, Clone)]
struct Receiving {
    snapshot_id: String,
    last_offset: u64,
    next_offset: u64,
}

impl SnapshotChunks {
    /// Admits a chunk of `len` bytes at `offset` of snapshot `snapshot_id` for `group`, or
    /// says why not. Offset 0 starts a snapshot; a chunk sent again after a lost answer
    /// (the last chunk's offset) is admitted too.
    pub fn admit(
        &self,
        group: crate::types::GroupId,
        snapshot_id: &str,
        offset: u64,
        len: usize,
    ) -> Result<(), NodeError> {
        let end =
            offset.checked_add(len as u64).filter(|end| *end <= SNAPSHOT_MAX_BYTES).ok_or_else(|| {
                NodeError::PayloadTooLarge(format!("a snapshot has at most {SNAPSHOT_MAX_BYTES} bytes"))
            })?;
        let mut receiving = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if offset == 0 {
            receiving.insert(
                group,
                Receiving { snapshot_id: snapshot_id.to_string(), last_offset: 0, next_offset: end },
            );
            return Ok(());
        }
        let Some(current) = receiving.get_mut(&group).filter(|r| r.snapshot_id == snapshot_id) else {
            return Err(NodeError::InvalidArgument(format!(
                "snapshot chunk at offset {offset} of snapshot {snapshot_id:?}, which was not started at offset 0"
            )));
        };
        if offset == current.last_offset {
            current.next_offset = current.next_offset.max(end);
            return Ok(());
        }
        if offset != current.next_offset {
            return Err(NodeError::InvalidArgument(format!(
                "snapshot chunk at offset {offset}; the next chunk of snapshot {snapshot_id:?} begins at {}",
                current.next_offset
            )));
        }
        current.last_offset = offset;
        current.next_offset = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_chunks_continue_where_the_last_ended() {
        let chunks = SnapshotChunks::default();
        assert!(chunks.admit(0, "s1", 5, 10).is_err(), "a snapshot starts at offset 0");
        chunks.admit(0, "s1", 0, 10).expect("start");
        chunks.admit(0, "s1", 10, 10).expect("next");
        chunks.admit(0, "s1", 10, 10).expect("the same chunk again, after a lost answer");
        assert!(chunks.admit(0, "s1", 500_000_000, 10).is_err(), "a gap");
        assert!(chunks.admit(0, "s1", 5, 10).is_err(), "overlapping the past");
        assert!(chunks.admit(0, "s2", 20, 10).is_err(), "another snapshot's id");
        chunks.admit(0, "s1", 20, 10).expect("continues");
        assert!(chunks.admit(1, "s1", 30, 10).is_err(), "groups are separate");
        assert!(chunks.admit(0, "s1", SNAPSHOT_MAX_BYTES - 5, 10).is_err(), "the cap");
        assert!(chunks.admit(0, "s3", u64::MAX, 10).is_err(), "no overflow");
        chunks.admit(0, "s3", 0, 4).expect("a new snapshot restarts the count");
    }

    #[test]
    fn a_permit_returns_when_its_wait_ends() {
        let limits = ConnectionLimits {
            header_timeout_ms: 1_000,
            idle_timeout_ms: 1_000,
            body_timeout_ms: 1_000,
            max_connections: 16,
            long_polls_max: 2,
            lock_waiters_max: 1,
            watches_max: 1,
        };
        let waiting = Waiting::new(&limits);
        let first = waiting.long_poll().expect("first");
        let _second = waiting.long_poll().expect("second");
        let refused = waiting.long_poll().expect_err("third is over the cap");
        assert_eq!(refused.status_and_code().1, "limit_exceeded");
        drop(first);
        assert!(waiting.long_poll().is_ok(), "a finished wait frees its permit");
        let _lock = waiting.lock_wait().expect("lock");
        assert!(waiting.lock_wait().is_err());
        let watch = waiting.watch().expect("watch");
        assert!(waiting.watch().is_err(), "WATCHES_MAX");
        drop(watch);
        assert!(waiting.watch().is_ok());
    }

    #[test]
    fn relayed_receives_leave_half_of_the_long_polls_to_this_nodes_clients() {
        let limits = ConnectionLimits {
            header_timeout_ms: 1_000,
            idle_timeout_ms: 1_000,
            body_timeout_ms: 1_000,
            max_connections: 16,
            long_polls_max: 4,
            lock_waiters_max: 1,
            watches_max: 1,
        };
        let waiting = Waiting::new(&limits);
        let relayed =
            [waiting.relayed_long_poll().expect("first"), waiting.relayed_long_poll().expect("second")];
        assert!(waiting.relayed_long_poll().is_err(), "the last half is not for relays");
        let own = [waiting.long_poll().expect("own"), waiting.long_poll().expect("own")];
        assert!(waiting.long_poll().is_err(), "the cap holds for both together");
        drop(relayed);
        drop(own);
        let _own = [waiting.long_poll().expect("own"), waiting.long_poll().expect("own")];
        let _three = waiting.long_poll().expect("own");
        assert!(waiting.relayed_long_poll().is_err(), "no relay once half is taken, by anyone");
    }
}
