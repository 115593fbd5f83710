//! On group 0's leader: the topology is written once, the ring follows group 0's voters, and
//! one partition at a time moves to its target replica set.

use std::time::Instant;

use sinkron_core::placement::{next_placement, PlacementStep};
use sinkron_core::topology::TopologyCommand;
use sinkron_core::Command;

use super::{Queues, PLACEMENT_INTERVAL};
use crate::error::NodeError;
use crate::types::Member;
use crate::wire::{LeaderCall, PartitionCall};

/// On group 0's leader: writes the topology once, keeps the ring's nodes equal to group 0's
/// voters, and moves one partition at a time to its target replica set.
pub async fn placement_duties(queues: Queues) {
    loop {
        tokio::time::sleep(PLACEMENT_INTERVAL).await;
        if !queues.group0.is_leader() {
            continue;
        }
        if let Err(e) = place_once(&queues).await {
            tracing::debug!(error = %e, "queue placement will retry");
        }
    }
}

async fn place_once(queues: &Queues) -> Result<(), NodeError> {
    let topology = queues.group0.topology();
    let voters = queues.group0.voter_names();
    match next_placement(topology.as_ref(), &voters, queues.config.queues) {
        PlacementStep::Idle => Ok(()),
        PlacementStep::Write(request) => {
            match &request {
                TopologyCommand::Setup { .. } => tracing::info!("queue topology created"),
                _ => tracing::info!(nodes = ?voters, "queue ring follows the new membership"),
            }
            queues.group0.write_here(Command::Topology { request }).await.map(|_| ())
        }
        PlacementStep::Move { partition, generation, replicas: target } => {
            let members = queues.group0.members_by_name();
            let replicas: Option<Vec<Member>> = target.iter().map(|n| members.get(n).cloned()).collect();
            let Some(replicas) = replicas else { return Ok(()) };
            tracing::info!(partition, replicas = ?target, "moving queue partition");
            let deadline = Instant::now() + queues.request_timeout() * 4;
            let call = PartitionCall::AtLeader(LeaderCall::Reconfigure { replicas });
            queues.partition_call(partition, call, deadline, 2).await?;
            let request = TopologyCommand::Moved { partition, generation, replicas: target };
            queues.group0.write_here(Command::Topology { request }).await?;
            crate::metrics::record_partition_move();
            Ok(())
        }
    }
}
