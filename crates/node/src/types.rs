//! The openraft type configuration shared by every Raft group of a node.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use sinkron_core::Response;

use crate::payload::Payload;

/// Numeric id of a Raft group. Group 0 spans every voter; queue partitions get their own.
pub type GroupId = u64;

/// The group that holds cluster metadata, locks and the cache directory.
pub const GROUP0: GroupId = 0;

/// The Raft group of queue partition `partition`.
pub fn partition_group(partition: u32) -> GroupId {
    GroupId::from(partition) + 1
}

/// The queue partition of Raft group `group`, if it is one.
pub fn group_partition(group: GroupId) -> Option<u32> {
    group.checked_sub(1).and_then(|p| u32::try_from(p).ok())
}

/// Numeric Raft id of a node: [`sinkron_core::ids::raft_id`] of its name.
pub type NodeId = u64;

/// What the cluster knows about a member: its name and the address it serves HTTP on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Human name, such as `node1`.
    pub name: String,
    /// `host:port` of the node's HTTP server.
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// Type configuration of every Sinkron Raft group.
    pub TypeConfig:
        D = Payload,
        R = Vec<Response>,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The member `metrics` name as their group's leader, if one is known and in the membership.
pub fn leader_member(metrics: &openraft::RaftMetrics<NodeId, Member>) -> Option<Member> {
    let leader = metrics.current_leader?;
    metrics.membership_config.membership().get_node(&leader).cloned()
}

/// A Raft instance of Sinkron.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// Openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
/// A membership as stored in the log.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
