//! Backups of a running cluster and the seeding of a new cluster from one.
//!
//! A backup is one JSON document: group 0's state and every queue partition's state, each
//! with the log id it was read at, and a format version. `sinkron snapshot save` gathers it
//! through the API (`GET /v1/snapshot/group0`, `GET /v1/snapshot/partitions/{p}`); each
//! group is read at one point of its own log, after a read barrier for group 0 and at the
//! partition's leader for a partition.
//!
//! Restoring writes, into an empty data directory, the snapshot file each group of that
//! node would have after installing a snapshot: the backed-up state at its log id, with the
//! new cluster's members as the membership. A node started on such a directory is a
//! member of a formed cluster at once (openraft treats the log as purged up to the
//! snapshot); no bootstrap runs. Before that, the fence counter and the key-value revision
//! jump by [`RESTORE_GAP`], so the restored cluster never hands out a fence or a version
//! that the old cluster may have handed out after the backup was taken.
//!
//! What this is not: a point-in-time copy across groups (each group is read at its own
//! moment), nor a restore into the Redis backend (only the embedded one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{Membership, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};
use sinkron_core::ids::raft_id;
use sinkron_core::{Group0State, PartitionMachine};

use crate::storage::files;
use crate::types::{partition_group, GroupId, LogId, Member, NodeId, GROUP0};

/// The `format` field of every backup.
pub const BACKUP_FORMAT: &str = "sinkron-backup";
/// The version of the backup format this binary writes and reads.
pub const BACKUP_VERSION: u32 = 1;
/// How far the fence counter and the key-value revision jump on a restore: more fences
/// and writes than any cluster hands out after its last backup (2^40, a trillion; at
/// 100,000 a second, four months), and small enough that 8,000 restores stay below the
/// 2^53 that JSON readers with doubles keep exactly.
pub const RESTORE_GAP: u64 = 1 << 40;

/// A whole backup.
#[derive(Debug, Serialize, Deserialize)]
pub struct Backup {
    /// Always [`BACKUP_FORMAT`].
    pub format: String,
    /// [`BACKUP_VERSION`] when written by this binary.
    pub format_version: u32,
    /// When the backup was taken, in ms since the Unix epoch (the saving machine's clock).
    pub taken_at_ms: u64,
    /// The node it was taken through.
    pub taken_from: String,
    /// Group 0: key-value store, locks, cache store, queue topology.
    pub group0: GroupBackup,
    /// Every queue partition, by partition number.
    pub partitions: Vec<GroupBackup>,
}

/// One group's state at one log id, as `GET /v1/snapshot/...` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupBackup {
    /// The Raft group: 0, or a partition's group (its number plus one).
    pub group: GroupId,
    /// The last log id applied to `state`.
    #[schema(value_type = Object)]
    pub last_log_id: Option<LogId>,
    /// The group's state machine, as its snapshots store it.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
}

/// Why a backup cannot seed a node.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file is not a backup, or of another version.
    #[error("{0}")]
    Format(String),
    /// The new cluster does not fit the backup.
    #[error("{0}")]
    Cluster(String),
    /// The data directory is not empty, or cannot be written.
    #[error("{0}")]
    DataDir(String),
}

/// What a restore wrote.
#[derive(Debug, Serialize)]
pub struct Restored {
    /// The groups seeded in the data directory.
    pub groups: Vec<GroupId>,
    /// The first fence the restored cluster can hand out is above this.
    pub fences_above: u64,
    /// The first key-value version it can hand out is above this.
    pub versions_above: u64,
}

impl Backup {
    /// Reads a backup, checking its format and version.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RestoreError> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            format_version: Option<u32>,
        }
        // The whole file is read once when it is what it should be; the header alone is read
        // only to say why it is not.
        let full = match serde_json::from_slice::<Self>(bytes) {
            Ok(backup) if backup.format == BACKUP_FORMAT && backup.format_version == BACKUP_VERSION => {
                return Ok(backup)
            }
            other => other,
        };
        let header: Header = serde_json::from_slice(bytes)
            .map_err(|e| RestoreError::Format(format!("not a Sinkron backup (not JSON: {e})")))?;
        if header.format.as_deref() != Some(BACKUP_FORMAT) {
            return Err(RestoreError::Format(
                "not a Sinkron backup (no \"format\": \"sinkron-backup\")".into(),
            ));
        }
        match header.format_version {
            Some(BACKUP_VERSION) => {}
            Some(v) => {
                return Err(RestoreError::Format(format!(
                    "backup format version {v}; this binary reads version {BACKUP_VERSION} (use the matching sinkron)"
                )))
            }
            None => return Err(RestoreError::Format("the backup has no format_version".into())),
        }
        full.map_err(|e| RestoreError::Format(format!("the backup is damaged: {e}")))
    }

    /// Seeds `data_dir` as node `me` of a new cluster of `members` (which must carry the
    /// backup's node names; addresses may differ).
    pub async fn seed(
        &self,
        data_dir: &Path,
        me: &str,
        members: &[Member],
    ) -> Result<Restored, RestoreError> {
        let (restored, votes) = self.seed_snapshots(data_dir, me, members)?;
        write_votes(data_dir, votes).await?;
        Ok(restored)
    }

    /// Writes the snapshot files; returns what to record as each group's vote.
    fn seed_snapshots(
        &self,
        data_dir: &Path,
        me: &str,
        members: &[Member],
    ) -> Result<(Restored, Vec<(GroupId, LogId)>), RestoreError> {
        check_empty(data_dir)?;
        let mut group0 = Group0State::deserialize(&self.group0.state)
            .map_err(|e| RestoreError::Format(format!("group 0's state does not load: {e}")))?;
        let names: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
        if let Some(topology) = &group0.topology {
            let missing: Vec<&String> =
                topology.nodes.iter().filter(|n| !names.contains(n.as_str())).collect();
            if !missing.is_empty() {
                return Err(RestoreError::Cluster(format!(
                    "the backup's queue partitions live on {:?}, but CLUSTER_ADDRS has no {missing:?}: \
                     restore into a cluster with the same node names (addresses may differ)",
                    topology.nodes
                )));
            }
        }
        if !names.contains(me) {
            return Err(RestoreError::Cluster(format!("NODE_ID {me:?} is not in CLUSTER_ADDRS")));
        }
        group0.skip_for_restore(RESTORE_GAP);
        let mut restored = Restored {
            groups: Vec::new(),
            fences_above: group0.locks.last_fence(),
            versions_above: group0.revision,
        };
        let encoded = |e: serde_json::Error| RestoreError::Format(e.to_string());
        let mut votes = Vec::new();
        if let Some(log_id) = self.group0.last_log_id {
            write_group(data_dir, GROUP0, log_id, members, &serde_json::to_vec(&group0).map_err(encoded)?)?;
            votes.push((GROUP0, log_id));
        }
        restored.groups.push(GROUP0);
        let topology = group0.topology.as_ref();
        for part in &self.partitions {
            let partition = crate::types::group_partition(part.group)
                .ok_or_else(|| RestoreError::Format(format!("group {} is not a partition", part.group)))?;
            PartitionMachine::deserialize(&part.state).map_err(|e| {
                RestoreError::Format(format!("partition {partition}'s state does not load: {e}"))
            })?;
            let replicas: Vec<String> = topology
                .and_then(|t| t.partitions.get(partition as usize))
                .map(|r| r.replicas.clone())
                .unwrap_or_default();
            if !replicas.iter().any(|r| r == me) {
                continue;
            }
            let voters: Vec<Member> =
                members.iter().filter(|m| replicas.contains(&m.name)).cloned().collect();
            // A group that never applied an entry has nothing to restore; it starts empty.
            if let Some(log_id) = part.last_log_id {
                let data = serde_json::to_vec(&part.state).map_err(encoded)?;
                write_group(data_dir, partition_group(partition), log_id, &voters, &data)?;
                votes.push((partition_group(partition), log_id));
                restored.groups.push(part.group);
            }
        }
        Ok((restored, votes))
    }
}

/// A restore goes into a directory that holds no node yet.
fn check_empty(data_dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(data_dir).map(|mut entries| entries.next().is_none()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::DataDir(format!("cannot read {}: {e}", data_dir.display()))),
        Ok(true) => Ok(()),
        Ok(false) => Err(RestoreError::DataDir(format!(
            "{} is not empty: restore seeds a new node, into an empty data directory",
            data_dir.display()
        ))),
    }
}

/// Records, for each group, the vote of a follower that has seen the leader of its
/// snapshot's entry: elections then start above that term. (Without it the first election
/// would be in term 1, possibly the snapshot entry's own term but another leader, and
/// openraft refuses a leader whose vote does not cover its last log id.)
async fn write_votes(data_dir: &Path, votes: Vec<(GroupId, LogId)>) -> Result<(), RestoreError> {
    use openraft::storage::RaftLogStorage;
    let dir = data_dir.join("log");
    let io = |e: String| RestoreError::DataDir(format!("write the votes into {}: {e}", dir.display()));
    let wal = crate::storage::SharedLog::open(&dir).map_err(|e| io(e.to_string()))?;
    for (group, log_id) in votes {
        let vote = openraft::Vote::new_committed(log_id.leader_id.term, log_id.leader_id.node_id);
        wal.group(group).save_vote(&vote).await.map_err(|e| io(e.to_string()))?;
    }
    Ok(())
}

/// Writes group `group`'s snapshot file: the state encoded in `data`, at `log_id`, with
/// `voters` as members.
fn write_group(
    data_dir: &Path,
    group: GroupId,
    log_id: LogId,
    voters: &[Member],
    data: &[u8],
) -> Result<(), RestoreError> {
    let nodes: BTreeMap<NodeId, Member> = voters.iter().map(|m| (raft_id(&m.name), m.clone())).collect();
    let ids: BTreeSet<NodeId> = nodes.keys().copied().collect();
    let membership = Membership::new(vec![ids], nodes);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("restored-{}-{}", log_id.leader_id, log_id.index),
    };
    let dir = data_dir.join("groups").join(group.to_string());
    let io = |e: std::io::Error| RestoreError::DataDir(format!("write {}: {e}", dir.display()));
    files::create_dir_durably(&dir).map_err(io)?;
    let file = crate::storage::state_machine::encode_snapshot_file(&meta, data).map_err(io)?;
    files::replace(&dir.join("snapshot.bin"), &file, true).map_err(io)
}
