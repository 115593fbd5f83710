//! On every node: the groups of the partitions this node replicates (or is about to) are
//! opened, those created with it initialised, and those moved away closed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use sinkron_core::ids::raft_id;
use sinkron_core::topology::Topology;
use sinkron_core::PartitionMachine;

use super::{PartitionGroup, Queues, PLACEMENT_INTERVAL};
use crate::types::{partition_group, Member, NodeId};

impl Queues {
    /// Opens `partition`'s group on this node and starts forwarding its apply notifications.
    async fn host(&self, partition: u32, rank: u64) -> anyhow::Result<Arc<PartitionGroup>> {
        let group = partition_group(partition);
        let group = Arc::new(self.factory.open(group, PartitionMachine::new(partition), rank, |_| {}).await?);
        let mut applied = group.sm.changes();
        let changed = self.partitions.changed.clone();
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        self.partitions.insert(partition, group.clone());
        tracing::info!(partition, "hosting queue partition");
        Ok(group)
    }
}

/// On every node: opens the groups of the partitions this node replicates (or is about to),
/// initialises those it was created with, and closes those moved away.
pub async fn host_duties(queues: Queues) {
    let mut pending: BTreeMap<u32, Instant> = BTreeMap::new();
    loop {
        if let Some(topology) = queues.group0.topology() {
            host_once(&queues, &topology, &mut pending).await;
        }
        tokio::time::sleep(PLACEMENT_INTERVAL).await;
    }
}

/// One pass of [`host_duties`]. `pending` holds the partitions of generation 0 this node
/// still has to initialise and since when: initialising makes a node campaign at once, so
/// the preferred replica does it first and the others only if the group is still empty
/// after a few election timeouts (the preferred replica may be down).
async fn host_once(queues: &Queues, topology: &Topology, pending: &mut BTreeMap<u32, Instant>) {
    let me = &queues.config.name;
    let targets = topology.targets();
    let patience = Duration::from_millis(queues.config.election_timeout_max_ms * 2);
    for (partition, record) in topology.partitions.iter().enumerate() {
        let partition = partition as u32;
        let in_record = record.replicas.contains(me);
        let target = targets.get(partition as usize).map(|t| t.replicas.as_slice()).unwrap_or_default();
        let wanted = in_record || target.contains(me);
        let rank = record.replicas.iter().chain(target).position(|n| n == me).unwrap_or(0) as u32;
        match (wanted, queues.partitions.get(partition)) {
            (true, None) => match queues.host(partition, u64::from(rank)).await {
                Ok(_) if record.generation == 0 && in_record => {
                    pending.insert(partition, Instant::now() + patience * rank);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(partition, error = %e, "cannot open the partition"),
            },
            (false, Some(_)) => {
                if let Some(group) = queues.partitions.remove(partition) {
                    tracing::info!(partition, "partition moved away; closing its group");
                    if let Err(e) = group.raft.shutdown().await {
                        tracing::warn!(partition, error = %e, "raft shutdown failed");
                    }
                }
                pending.remove(&partition);
            }
            _ => {}
        }
        // A node started to join a running cluster (or restored that way) never creates a
        // partition group: the group exists elsewhere, and a fresh one could win elections
        // among wiped replicas and overwrite the real one.
        if queues.config.join {
            pending.remove(&partition);
        }
        let due = pending.get(&partition).is_some_and(|at| *at <= Instant::now());
        if let (true, Some(group)) = (due, queues.partitions.get(partition)) {
            if record.generation != 0 || initialize(queues, &group, &record.replicas).await {
                pending.remove(&partition);
            }
        }
    }
}

/// Initialises a partition group created with `replicas`, unless it already holds state.
/// True once nothing is left to do.
async fn initialize(queues: &Queues, group: &PartitionGroup, replicas: &[String]) -> bool {
    match group.raft.is_initialized().await {
        Ok(true) => return true,
        Ok(false) => {}
        Err(_) => return false,
    }
    let members = queues.group0.members_by_name();
    let chosen: Option<BTreeMap<NodeId, Member>> =
        replicas.iter().map(|n| members.get(n).map(|m| (raft_id(n), m.clone()))).collect();
    let Some(chosen) = chosen else { return false };
    match group.raft.initialize(chosen).await {
        Ok(()) => true,
        Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot initialise a partition yet");
            false
        }
    }
}
