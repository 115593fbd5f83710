//! On every node: the groups of the partitions this node replicates (or is about to) are
//! opened, those created with it initialised, and those moved away closed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use sinkron_core::ids::raft_id;
use sinkron_core::placement::{HostStep, Hosting};
use sinkron_core::topology::Topology;
use sinkron_core::PartitionMachine;

use super::{PartitionGroup, Queues, PLACEMENT_INTERVAL};
use crate::types::{partition_group, Member, NodeId};

/// How long closing a partition that moved away waits for its leader appends still on
/// their way to disk (see [`PartitionGroup::stop`]).
const CLOSE_FLUSH_LIMIT: Duration = Duration::from_secs(5);

impl Queues {
    /// Opens `partition`'s group on this node and starts telling waiting receives what its
    /// applies make visible.
    async fn host(&self, partition: u32, rank: u64) -> anyhow::Result<Arc<PartitionGroup>> {
        let group = partition_group(partition);
        let group = Arc::new(self.factory.open(group, PartitionMachine::new(partition), rank, |_| {}).await?);
        let mut applied = group.sm.changes();
        // Weak: a closed partition's group goes, and this task with it.
        let (partitions, weak) = (self.partitions.clone(), Arc::downgrade(&group));
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                let Some(group) = weak.upgrade() else { break };
                partitions.applied(&group);
            }
        });
        self.partitions.insert(partition, group.clone());
        tracing::info!(partition, "hosting queue partition");
        Ok(group)
    }
}

/// On every node: opens the groups of the partitions this node replicates (or is about to),
/// initialises those it was created with, and closes those moved away. The decisions are
/// `sinkron_core::placement::Hosting`'s; this loop only performs them. Initialising makes a
/// node campaign at once, so the preferred replica does it first and the others only if
/// the group is still empty after a few election timeouts (the preferred replica may be
/// down).
pub async fn host_duties(queues: Queues) {
    let patience_ms = queues.config.election_timeout_max_ms * 2;
    let mut hosting = Hosting::new(&queues.config.name, queues.config.join, patience_ms);
    let started = Instant::now();
    loop {
        if let Some(topology) = queues.group0.topology() {
            host_once(&queues, &topology, &mut hosting, started).await;
        }
        tokio::time::sleep(PLACEMENT_INTERVAL).await;
    }
}

/// One pass of [`host_duties`]; the planner's clock is the time since `started`.
async fn host_once(queues: &Queues, topology: &Topology, hosting: &mut Hosting, started: Instant) {
    let hosted = |queues: &Queues| queues.partitions.hosted().into_iter().collect::<BTreeSet<u32>>();
    let now_ms = || started.elapsed().as_millis() as u64;
    for step in hosting.plan(topology, &hosted(queues)) {
        match step {
            HostStep::Open { partition, rank } => match queues.host(partition, rank).await {
                Ok(_) => hosting.opened(topology, partition, rank, now_ms()),
                Err(e) => tracing::error!(partition, error = %e, "cannot open the partition"),
            },
            HostStep::Close { partition } => {
                if let Some(group) = queues.partitions.remove(partition) {
                    tracing::info!(partition, "partition moved away; closing its group");
                    group.stop(Instant::now() + CLOSE_FLUSH_LIMIT).await;
                }
            }
            HostStep::Initialise { .. } => {}
        }
    }
    for step in hosting.due(topology, &hosted(queues), now_ms()) {
        let HostStep::Initialise { partition, replicas } = step else { continue };
        let Some(group) = queues.partitions.get(partition) else { continue };
        if initialize(queues, &group, &replicas).await {
            hosting.initialised(partition);
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
