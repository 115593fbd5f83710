//! The partition groups this node hosts, and the signal that one of them applied an entry.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::PartitionGroup;
use crate::types::GroupId;

/// The partition groups this node hosts.
pub struct Partitions {
    hosted: RwLock<BTreeMap<u32, Arc<PartitionGroup>>>,
    /// Bumped whenever a hosted partition applied an entry; long-polling receives wait on it.
    pub(super) changed: watch::Sender<u64>,
    /// Spreads receives over partitions.
    pub(super) rotation: AtomicU32,
}

impl Default for Partitions {
    fn default() -> Self {
        Self { hosted: RwLock::default(), changed: watch::Sender::new(0), rotation: AtomicU32::new(0) }
    }
}

impl Partitions {
    /// The hosted group of `partition`.
    pub fn get(&self, partition: u32) -> Option<Arc<PartitionGroup>> {
        self.hosted.read().unwrap_or_else(|p| p.into_inner()).get(&partition).cloned()
    }

    /// The hosted partition group with Raft group id `id`.
    pub fn get_group(&self, id: GroupId) -> Option<Arc<PartitionGroup>> {
        crate::types::group_partition(id).and_then(|p| self.get(p))
    }

    /// Numbers of the hosted partitions.
    pub fn hosted(&self) -> Vec<u32> {
        self.hosted.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// Removes every hosted group (at shutdown).
    pub fn take_all(&self) -> Vec<Arc<PartitionGroup>> {
        std::mem::take(&mut *self.hosted.write().unwrap_or_else(|p| p.into_inner())).into_values().collect()
    }

    pub(super) fn insert(&self, partition: u32, group: Arc<PartitionGroup>) {
        self.hosted.write().unwrap_or_else(|p| p.into_inner()).insert(partition, group);
    }

    pub(super) fn remove(&self, partition: u32) -> Option<Arc<PartitionGroup>> {
        self.hosted.write().unwrap_or_else(|p| p.into_inner()).remove(&partition)
    }

    /// Notified after any hosted partition applied an entry.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
