//! Quotas on what clients may store: the size of each group's state (group 0 and every
//! queue partition) and the number of locks, cache keys and queues.
//!
//! The state's size is measured exactly when a snapshot is built or installed (its encoded
//! length) and estimated in between by adding what each applied command can add
//! ([`sinkron_core::Command::payload_bytes`]); overwrites and deletes count only at the next
//! snapshot, so the figure is an upper bound. When it reaches the quota, the node asks Raft
//! for a snapshot (at most every few seconds), so space freed by deletes is seen soon.
//!
//! Quotas are checked where a request enters, against this node's copy of the state, before
//! anything is proposed: a refused write never reaches the log, so replicas cannot disagree
//! about it. Writes that grow state are refused with `507 quota_exceeded`; deletes, releases,
//! acks, receives and reads always pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::NodeError;
use crate::types::{GroupId, Raft};

/// Least time between two snapshots asked for because a group looked full.
const MEASURE_INTERVAL: Duration = Duration::from_secs(5);

/// The size of one group's state, as far as this node knows.
#[derive(Debug, Default)]
pub struct Usage {
    measured_bytes: AtomicU64,
    grown_bytes: AtomicU64,
}

impl Usage {
    /// Bytes of state: the last measurement plus what was applied since.
    pub fn bytes(&self) -> u64 {
        self.measured_bytes.load(Ordering::Relaxed).saturating_add(self.grown_bytes.load(Ordering::Relaxed))
    }

    /// Counts `bytes` more applied.
    pub fn grew(&self, bytes: usize) {
        self.grown_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records an exact measurement (a snapshot of `bytes` was built or installed).
    pub fn measured(&self, bytes: usize) {
        self.measured_bytes.store(bytes as u64, Ordering::Relaxed);
        self.grown_bytes.store(0, Ordering::Relaxed);
    }
}

/// The limits, and when a full group was last measured.
#[derive(Debug)]
pub struct Quotas {
    /// Largest state of one group, in bytes.
    pub bytes: u64,
    /// Most locks.
    pub locks: usize,
    /// Most cache keys.
    pub cache_keys: usize,
    /// Most queues with messages in one partition.
    pub queues_per_partition: usize,
    last_measure: Mutex<std::collections::BTreeMap<GroupId, Instant>>,
}

impl Quotas {
    /// Quotas with these limits.
    pub fn new(bytes: u64, locks: usize, cache_keys: usize, queues_per_partition: usize) -> Self {
        Self { bytes, locks, cache_keys, queues_per_partition, last_measure: Mutex::default() }
    }

    /// Refuses a write that grows `group`'s state when its usage is at the quota; then also
    /// asks `raft` for a snapshot, so the next check sees what deletes have freed.
    pub fn check_bytes(&self, group: GroupId, usage: &Usage, raft: &Raft) -> Result<(), NodeError> {
        let used = usage.bytes();
        crate::metrics::set_quota_usage(group, used, self.bytes);
        if used < self.bytes {
            return Ok(());
        }
        let mut last = self.last_measure.lock().unwrap_or_else(|e| e.into_inner());
        if last.get(&group).is_none_or(|at| at.elapsed() >= MEASURE_INTERVAL) {
            last.insert(group, Instant::now());
            let raft = raft.clone();
            tokio::spawn(async move {
                let _ = raft.trigger().snapshot().await;
            });
        }
        crate::metrics::record_quota_refusal();
        Err(NodeError::QuotaExceeded(format!(
            "Raft group {group} holds about {used} bytes of state, its quota is {} (QUOTA_BYTES); \
             delete keys, release locks or ack messages to make room",
            self.bytes
        )))
    }

    /// Refuses a new `what` (lock, cache key, queue) when `count` of them reach `limit`.
    pub fn check_count(what: &str, count: usize, limit: usize, setting: &str) -> Result<(), NodeError> {
        if count < limit {
            return Ok(());
        }
        crate::metrics::record_quota_refusal();
        Err(NodeError::QuotaExceeded(format!(
            "there are {count} {what}s, the quota is {limit} ({setting}); remove some to make room"
        )))
    }

    /// Groups whose state is at its quota, for `/ready` and the metrics.
    pub fn full_groups<'a>(&self, usages: impl IntoIterator<Item = (GroupId, &'a Usage)>) -> Vec<String> {
        usages
            .into_iter()
            .filter(|(_, usage)| usage.bytes() >= self.bytes)
            .map(|(group, usage)| {
                format!("group {group} is at its state quota ({} of {} bytes)", usage.bytes(), self.bytes)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_adds_growth_to_the_last_measurement() {
        let usage = Usage::default();
        usage.grew(100);
        usage.grew(50);
        assert_eq!(usage.bytes(), 150);
        usage.measured(70);
        assert_eq!(usage.bytes(), 70, "a snapshot's size replaces the estimate");
        usage.grew(5);
        assert_eq!(usage.bytes(), 75);
    }

    #[test]
    fn counts_at_their_limit_are_refused() {
        assert!(Quotas::check_count("lock", 9, 10, "QUOTA_LOCKS").is_ok());
        let refused = Quotas::check_count("lock", 10, 10, "QUOTA_LOCKS").expect_err("full");
        assert_eq!(
            refused.status_and_code(),
            (axum::http::StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded")
        );
    }
}
