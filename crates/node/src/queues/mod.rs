//! Queues, node side: hosting partition groups, routing queue operations to partition
//! leaders, and the duties that keep placements and visibility deadlines moving.
//!
//! - Group 0 holds the [`Topology`]: settings, ring nodes, and each partition's replica set.
//!   Its leader writes the topology once, follows group 0's voters onto the ring, and moves
//!   partitions whose replica set differs from the ring's target ([`placement_duties`]).
//! - Every node opens the groups of the partitions it replicates, or is about to, and closes
//!   those moved away from it ([`host_duties`]). A group is initialised only by the replicas
//!   it was created with (generation 0), never by a node that joins it later.
//! - A queue operation runs at the leader of its partition's group: here if this node leads
//!   it, forwarded to the leader otherwise, or handed to a replica when this node does not
//!   host the partition at all ([`Queues::partition_call`]).
//! - Each partition leader returns messages whose visibility deadline passed
//!   ([`expiry_duties`]).
//!
//! The files: `registry` (the hosted groups), `operations` (send, receive, ack, stats),
//! `routing` (reaching a partition's leader), `placement` and `hosting` (the duties above),
//! `expiry`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sinkron_core::topology::{QueueSettings, Topology};
use sinkron_core::{PartitionMachine, Request, Response};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::group::{Group, GroupFactory};
use crate::group0::Group0;
use crate::quota::Quotas;
use crate::wire::{PartitionCall, PartitionReply};

mod expiry;
mod hosting;
mod operations;
mod placement;
mod registry;
mod routing;

pub use expiry::expiry_duties;
pub use hosting::host_duties;
pub use placement::placement_duties;
pub use registry::Partitions;

/// A hosted partition's Raft group.
pub type PartitionGroup = Group<PartitionMachine>;

/// How often the placement and host duties look at the topology.
const PLACEMENT_INTERVAL: Duration = Duration::from_millis(250);
/// Pause before retrying a partition whose leader is moving.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The queue service: what every queue operation and duty needs, and nothing else of the
/// node. Cheap to clone.
#[derive(Clone)]
pub struct Queues {
    group0: Group0,
    partitions: Arc<Partitions>,
    factory: GroupFactory,
    quotas: Arc<Quotas>,
    config: Arc<NodeConfig>,
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn unexpected(reply: impl std::fmt::Debug) -> NodeError {
    NodeError::Unavailable(format!("unexpected reply {reply:?}"))
}

fn not_ready() -> NodeError {
    NodeError::Unavailable("queues are not set up yet: the cluster has no leader or just started".into())
}

impl Queues {
    /// The service over `group0`'s topology, opening partition groups with `factory`.
    pub fn new(group0: Group0, factory: GroupFactory, quotas: Arc<Quotas>, config: Arc<NodeConfig>) -> Self {
        Self { group0, partitions: Arc::new(Partitions::default()), factory, quotas, config }
    }

    /// The partition groups this node hosts.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    fn request_timeout(&self) -> Duration {
        self.group0.request_timeout()
    }

    fn topology_or_unavailable(&self) -> Result<Topology, NodeError> {
        self.group0.topology().ok_or_else(not_ready)
    }

    /// The queue settings, without copying the whole topology (every queue request needs
    /// them).
    fn queue_settings(&self) -> Result<QueueSettings, NodeError> {
        self.group0.group().sm.read().state.topology.as_ref().map(|t| t.settings).ok_or_else(not_ready)
    }

    async fn partition_write(&self, partition: u32, request: Request) -> Result<Response, NodeError> {
        let deadline = Instant::now() + self.request_timeout();
        match self.partition_call(partition, PartitionCall::Write(request), deadline, 2).await? {
            PartitionReply::Applied(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }
}
