//! The partition groups this node hosts, and the signal that one of them has messages a
//! waiting receive can take.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use sinkron_core::claims::ReceiveClaims;

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
    /// Per hosted partition, the receives of this node's clients in flight, so that two of
    /// them do not both go for the one message this node's copy shows (see
    /// `sinkron_core::claims`).
    receive_claims: Mutex<HashMap<u32, ReceiveClaims>>,
    /// Per hosted partition, the highest log index at which a parked receive through this
    /// node was answered: a copy that has not applied it yet may still show what it took.
    handed_out: Mutex<HashMap<u32, u64>>,
    /// When a client's send to each queue last arrived at this node (see
    /// [`Partitions::sends_arrive_here`]).
    sends_here: Mutex<HashMap<String, Instant>>,
    /// Per home partition, when a receive relayed to its leader last came back unanswered
    /// or refused (see [`Partitions::relay_paused`]).
    relay_failed: Mutex<HashMap<u32, Instant>>,
}

/// How recent a send through this node must be for a waiting receive of its queue to stay
/// here rather than be relayed to the leader.
pub(super) const SENDS_HERE_RECENT: Duration = Duration::from_millis(250);
/// How long after a relay to a partition's leader failed this node's waiting receives of
/// that partition wait here instead of being relayed.
pub(super) const RELAY_PAUSE: Duration = Duration::from_secs(1);
/// Queues remembered in `sends_here` before the old entries are dropped.
const SENDS_HERE_MAX: usize = 4096;

/// A receive's claim on messages of one partition, given up when dropped (answered, failed
/// or cancelled).
pub struct LocalClaim {
    partitions: Arc<Partitions>,
    partition: u32,
    /// The receive's request id.
    pub request_id: String,
}

impl LocalClaim {
    /// The partition claimed from.
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        let mut claims = self.partitions.receive_claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = claims.get_mut(&self.partition) {
            c.release_id(&self.request_id);
        }
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

    /// Picks the hosted partitions a receive of up to `max` messages of `queue` asks, and
    /// claims what it expects from each: by this node's copies, leaving out messages other
    /// receives of this node already claimed; partitions this node leads first (no hop),
    /// then the fullest. `start` rotates the order among ties. Also answers the partitions
    /// hosted elsewhere, to be asked for what is still missing.
    pub(super) fn claim_for_receive(
        self: &Arc<Self>,
        queue: &str,
        max: u32,
        partitions: u32,
        start: u32,
    ) -> (Vec<(LocalClaim, u32)>, Vec<u32>) {
        let now = now_ms();
        let mut claims = self.receive_claims.lock().unwrap_or_else(|p| p.into_inner());
        let mut candidates = Vec::new();
        let mut remote = Vec::new();
        for i in 0..partitions {
            let partition = start.wrapping_add(i) % partitions;
            let Some(group) = self.get(partition) else {
                remote.push(partition);
                continue;
            };
            let applied = group.sm.read();
            let free = claims.entry(partition).or_default().free(&applied.state, queue, now, max as usize);
            if free > 0 {
                candidates.push((group.is_leader(), free, partition));
            }
        }
        // Stable, so partitions that tie keep the rotation's order and share the load.
        candidates.sort_by_key(|(leads, free, _)| (std::cmp::Reverse(*leads), std::cmp::Reverse(*free)));
        let mut left = max as usize;
        let mut chosen = Vec::new();
        for (_, free, partition) in candidates {
            if left == 0 {
                break;
            }
            let take = free.min(left);
            left -= take;
            let request_id = super::new_request_id();
            claims.entry(partition).or_default().claim(&request_id, queue, take);
            chosen.push((LocalClaim { partitions: self.clone(), partition, request_id }, take as u32));
        }
        (chosen, remote)
    }

    /// Whether this node hosts every partition and none shows a visible message of `queue`
    /// in its copy: a look at the partitions now would find nothing. A copy behind a
    /// receive this node answered ([`Partitions::handed_out`]) counts as showing nothing: what
    /// it shows may be what that receive took (and if not, its next apply wakes the
    /// receive, see [`Partitions::queue_changes`]).
    pub(super) fn nothing_visible_here(&self, queue: &str, partitions: u32) -> bool {
        let now = now_ms();
        let handed_out = self.handed_out.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (0..partitions).all(|p| self.nothing_visible_at(queue, p, handed_out.get(&p).copied(), now))
    }

    /// [`Partitions::nothing_visible_here`] for one `partition`.
    pub(super) fn nothing_visible_in(&self, queue: &str, partition: u32) -> bool {
        self.nothing_visible_at(queue, partition, self.handed_out_at(partition), now_ms())
    }

    /// Whether this node hosts `partition` and its copy shows no visible message of `queue`
    /// at `now`, or is behind `handed_out`.
    fn nothing_visible_at(&self, queue: &str, partition: u32, handed_out: Option<u64>, now: u64) -> bool {
        self.get(partition).is_some_and(|group| {
            let applied = group.sm.read();
            let behind = applied.last_applied.map_or(0, |id| id.index) < handed_out.unwrap_or(0);
            behind || !applied.state.state.has_visible(queue, now)
        })
    }

    /// The highest log index of `partition` at which a receive through this node took
    /// messages, as noted by [`Partitions::handed_out`].
    pub(super) fn handed_out_at(&self, partition: u32) -> Option<u64> {
        self.handed_out.lock().unwrap_or_else(|p| p.into_inner()).get(&partition).copied()
    }

    /// Notes that a client's send to `queue` arrived at this node.
    pub(super) fn send_arrived(&self, queue: &str) {
        self.send_arrived_at(queue, Instant::now());
    }

    /// [`Partitions::send_arrived`] at `now`.
    fn send_arrived_at(&self, queue: &str, now: Instant) {
        let mut sends = self.sends_here.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = sends.get_mut(queue) {
            *at = now;
            return;
        }
        if sends.len() >= SENDS_HERE_MAX {
            sends.retain(|_, at| now.duration_since(*at) < SENDS_HERE_RECENT);
        }
        if sends.len() < SENDS_HERE_MAX {
            sends.insert(queue.to_string(), now);
        }
    }

    /// Whether clients' sends to `queue` arrive at this node: one came within
    /// [`SENDS_HERE_RECENT`]. A waiting receive parked here then rides with them.
    pub(super) fn sends_arrive_here(&self, queue: &str) -> bool {
        self.sends_arrive_here_at(queue, Instant::now())
    }

    /// [`Partitions::sends_arrive_here`] at `now`.
    fn sends_arrive_here_at(&self, queue: &str, now: Instant) -> bool {
        let sends = self.sends_here.lock().unwrap_or_else(|p| p.into_inner());
        sends.get(queue).is_some_and(|at| now.saturating_duration_since(*at) < SENDS_HERE_RECENT)
    }

    /// Notes that a receive relayed to the leader of `partition` came back unanswered or
    /// refused.
    pub(super) fn relay_failed(&self, partition: u32) {
        self.relay_failed_at(partition, Instant::now());
    }

    /// [`Partitions::relay_failed`] at `now`.
    fn relay_failed_at(&self, partition: u32, now: Instant) {
        self.relay_failed.lock().unwrap_or_else(|p| p.into_inner()).insert(partition, now);
    }

    /// Whether a relay to the leader of `partition` failed within [`RELAY_PAUSE`]. A leader
    /// that cannot be reached, or that turns relays away, then costs one failed call per
    /// pause rather than one per receive, and a consumer whose receives would each come
    /// back at once with nothing waits here instead.
    pub(super) fn relay_paused(&self, partition: u32) -> bool {
        self.relay_paused_at(partition, Instant::now())
    }

    /// [`Partitions::relay_paused`] at `now`.
    fn relay_paused_at(&self, partition: u32, now: Instant) -> bool {
        let failed = self.relay_failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.get(&partition).is_some_and(|at| now.saturating_duration_since(*at) < RELAY_PAUSE)
    }

    /// Notes that a receive through this node was answered from `partition` at log index
    /// `index`.
    pub(super) fn handed_out(&self, partition: u32, index: u64) {
        let mut handed_out = self.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        let at = handed_out.entry(partition).or_default();
        *at = (*at).max(index);
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

#[cfg(test)]
mod tests {
    use super::*;

    impl Partitions {
        fn remembered(&self) -> usize {
            self.sends_here.lock().unwrap_or_else(|p| p.into_inner()).len()
        }
    }

    #[test]
    fn a_send_keeps_its_queues_receives_here_for_the_window_only() {
        let partitions = Partitions::default();
        let t0 = Instant::now();
        assert!(!partitions.sends_arrive_here_at("q", t0), "no send has arrived yet");
        partitions.send_arrived_at("q", t0);
        assert!(partitions.sends_arrive_here_at("q", t0));
        assert!(partitions.sends_arrive_here_at("q", t0 + SENDS_HERE_RECENT - Duration::from_millis(1)));
        assert!(!partitions.sends_arrive_here_at("q", t0 + SENDS_HERE_RECENT), "the window has passed");
        assert!(!partitions.sends_arrive_here_at("other", t0), "only the queue sent to stays");
        // A later send opens the window again from its own arrival.
        let t1 = t0 + Duration::from_secs(1);
        partitions.send_arrived_at("q", t1);
        assert!(partitions.sends_arrive_here_at("q", t1 + SENDS_HERE_RECENT - Duration::from_millis(1)));
    }

    #[test]
    fn a_failed_relay_pauses_its_partitions_relays_for_a_while() {
        let partitions = Partitions::default();
        let t0 = Instant::now();
        assert!(!partitions.relay_paused_at(3, t0), "nothing failed yet");
        partitions.relay_failed_at(3, t0);
        assert!(partitions.relay_paused_at(3, t0 + RELAY_PAUSE - Duration::from_millis(1)));
        assert!(!partitions.relay_paused_at(3, t0 + RELAY_PAUSE), "the pause is over");
        assert!(!partitions.relay_paused_at(4, t0), "other partitions still relay");
    }

    #[test]
    fn a_full_table_drops_queues_whose_window_passed_and_keeps_the_rest() {
        let partitions = Partitions::default();
        let t0 = Instant::now();
        for i in 0..SENDS_HERE_MAX - 1 {
            partitions.send_arrived_at(&format!("old-{i}"), t0);
        }
        let later = t0 + SENDS_HERE_RECENT;
        partitions.send_arrived_at("recent", later);
        // Full: the next new queue makes room by dropping the queues whose window passed.
        partitions.send_arrived_at("new", later);
        assert_eq!(partitions.remembered(), 2, "only the two recent queues are left");
        assert!(partitions.sends_arrive_here_at("recent", later));
        assert!(partitions.sends_arrive_here_at("new", later));
    }

    #[test]
    fn a_table_full_of_recent_queues_does_not_grow() {
        let partitions = Partitions::default();
        let t0 = Instant::now();
        for i in 0..SENDS_HERE_MAX {
            partitions.send_arrived_at(&format!("q-{i}"), t0);
        }
        partitions.send_arrived_at("one-more", t0);
        assert_eq!(partitions.remembered(), SENDS_HERE_MAX);
        assert!(
            !partitions.sends_arrive_here_at("one-more", t0),
            "not remembered: its receives may be relayed"
        );
        assert!(partitions.sends_arrive_here_at("q-0", t0));
    }
}
