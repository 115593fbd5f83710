//! The partition groups this node hosts, and the signal that one of them has messages a
//! waiting receive can take.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::PartitionGroup;
use crate::clock::now_ms;
use crate::types::GroupId;

/// The partition groups this node hosts.
#[derive(Default)]
pub struct Partitions {
    hosted: RwLock<BTreeMap<u32, Arc<PartitionGroup>>>,
    /// Per queue that long-polling receives wait on: bumped when a hosted partition applied
    /// an entry and then shows visible messages of that queue. An apply that gives a queue
    /// nothing (an ack, another queue's send) wakes nobody.
    waiting: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Spreads receives over partitions.
    pub(super) rotation: AtomicU32,
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

    /// Notified when a hosted partition applied an entry and shows visible messages of
    /// `queue` (a receive waits on this, and looks again at least every 200 ms for what
    /// no apply announces: partitions hosted elsewhere, delays running out).
    pub fn queue_changes(&self, queue: &str) -> watch::Receiver<u64> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.entry(queue.to_string()).or_insert_with(|| watch::Sender::new(0)).subscribe()
    }

    /// After `group` applied an entry: wakes the receives waiting on the queues it now shows
    /// visible messages of.
    pub(super) fn applied(&self, group: &PartitionGroup) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.is_empty() {
            return;
        }
        waiting.retain(|_, tx| tx.receiver_count() > 0);
        let now = now_ms();
        let applied = group.sm.read();
        for (queue, tx) in waiting.iter() {
            if applied.state.state.has_visible(queue, now) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}
