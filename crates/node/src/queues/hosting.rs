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
///
/// That first campaign often finds the other replicas not hosting the group yet (each node
/// opens its partitions on its own pass), and a failed campaign would leave the partition
/// without a leader for a whole election timeout (3 to 5 s by default). So a node that
/// initialised a group campaigns again on every pass while the group knows no leader, for
/// one smallest election timeout; after that, Raft's own timer is as quick. It stops as
/// soon as the group has a leader or this node holds another node's vote (another replica
/// may have initialised the group while this one was away), so it never deposes a leader.
pub async fn host_duties(queues: Queues) {
    let patience_ms = queues.config.election_timeout_max_ms * 2;
    let mut hosting = Hosting::new(&queues.config.name, queues.config.join, patience_ms);
    let mut fresh = BTreeMap::new();
    let started = Instant::now();
    loop {
        if let Some(topology) = queues.group0.topology() {
            host_once(&queues, &topology, &mut hosting, &mut fresh, started).await;
        }
        campaign_while_leaderless(&queues, &mut fresh).await;
        tokio::time::sleep(PLACEMENT_INTERVAL).await;
    }
}

/// Campaigns again in each group this node initialised (`fresh`, with when) that still
/// knows no leader, for one smallest election timeout after initialising it.
async fn campaign_while_leaderless(queues: &Queues, fresh: &mut BTreeMap<u32, Instant>) {
    let window = Duration::from_millis(queues.config.election_timeout_min_ms);
    let mut done = Vec::new();
    for (&partition, since) in fresh.iter() {
        let Some(group) = queues.partitions.get(partition) else {
            done.push(partition);
            continue;
        };
        // Only while the last vote this node holds is its own campaign's: once it stored
        // another node's (it heard from a candidate or a leader, say one that initialised
        // the group while this node was away), campaigning again could depose a leader.
        let own_campaign = {
            let metrics = group.raft.metrics();
            let m = metrics.borrow();
            m.current_leader.is_none() && m.vote.leader_id().voted_for() == Some(m.id)
        };
        if since.elapsed() >= window || !own_campaign {
            done.push(partition);
            continue;
        }
        tracing::debug!(partition, "no leader yet after initialising; campaigning again");
        if group.raft.trigger().elect().await.is_err() {
            done.push(partition);
        }
    }
    for partition in done {
        fresh.remove(&partition);
    }
}

/// One pass of [`host_duties`]; the planner's clock is the time since `started`. Groups
/// this pass initialises go into `fresh`.
async fn host_once(
    queues: &Queues,
    topology: &Topology,
    hosting: &mut Hosting,
    fresh: &mut BTreeMap<u32, Instant>,
    started: Instant,
) {
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
        match initialize(queues, &group, &replicas).await {
            Initialised::Now => {
                hosting.initialised(partition);
                fresh.insert(partition, Instant::now());
            }
            Initialised::Already => hosting.initialised(partition),
            Initialised::NotYet => {}
        }
    }
}

/// What [`initialize`] did.
enum Initialised {
    /// Initialised by this call: this node is campaigning.
    Now,
    /// The group held state already.
    Already,
    /// Not possible yet; try again on a later pass.
    NotYet,
}

/// Initialises a partition group created with `replicas`, unless it already holds state.
async fn initialize(queues: &Queues, group: &PartitionGroup, replicas: &[String]) -> Initialised {
    match group.raft.is_initialized().await {
        Ok(true) => return Initialised::Already,
        Ok(false) => {}
        Err(_) => return Initialised::NotYet,
    }
    let members = queues.group0.members_by_name();
    let chosen: Option<BTreeMap<NodeId, Member>> =
        replicas.iter().map(|n| members.get(n).map(|m| (raft_id(n), m.clone()))).collect();
    let Some(chosen) = chosen else { return Initialised::NotYet };
    match group.raft.initialize(chosen).await {
        Ok(()) => Initialised::Now,
        Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Initialised::Already,
        Err(e) => {
            tracing::warn!(error = %e, "cannot initialise a partition yet");
            Initialised::NotYet
        }
    }
}
