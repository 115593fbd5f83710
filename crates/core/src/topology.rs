//! Where queue partitions live, as group 0 records it.
//!
//! The settings (virtual nodes, partitions, replication, receive limit) are written once, by
//! the first leader, so every node uses the same ones whatever its own environment says.
//! `nodes` are the nodes on the ring (group 0's voters); each partition's *target* replica
//! set follows from the ring, while `replicas` is the set its Raft group actually has. The
//! two differ while a membership change moves a partition; the move is recorded with
//! [`TopologyCommand::Moved`] once the partition's group has committed it.

use serde::{Deserialize, Serialize};

use crate::ring::{Placement, Ring};

/// Queue settings fixed at cluster creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// Tokens per node on the ring.
    pub virtual_nodes: u32,
    /// Number of partitions (fixed for the cluster's life).
    pub partitions: u32,
    /// Replicas per partition (capped by the number of nodes).
    pub replication: u32,
    /// Deliveries after which a message goes to the dead-letter queue.
    pub max_receives: u32,
}

/// One partition's replica set as its Raft group has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Replica nodes; the first is the preferred leader.
    pub replicas: Vec<String>,
    /// 0 for the replica set the group was created with; +1 per recorded move. Only the
    /// replicas of generation 0 may initialise the group, and only if they never held it.
    pub generation: u64,
}

/// The queue topology in group 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Settings.
    pub settings: QueueSettings,
    /// Nodes on the ring, sorted.
    pub nodes: Vec<String>,
    /// Partition records, by partition number.
    pub partitions: Vec<PartitionRecord>,
}

/// A change of the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TopologyCommand {
    /// Creates the topology, unless it exists.
    Setup {
        /// Settings.
        settings: QueueSettings,
        /// Initial ring nodes.
        nodes: Vec<String>,
    },
    /// Sets the ring's nodes (after a membership change of group 0).
    SetNodes {
        /// The nodes.
        nodes: Vec<String>,
    },
    /// Records that `partition`'s group now has `replicas`, if it still was at `generation`.
    Moved {
        /// Partition number.
        partition: u32,
        /// The generation the move started from.
        generation: u64,
        /// The new replica set.
        replicas: Vec<String>,
    },
}

fn sorted(nodes: &[String]) -> Vec<String> {
    let mut nodes = nodes.to_vec();
    nodes.sort();
    nodes.dedup();
    nodes
}

impl Topology {
    /// The ring of the current nodes.
    pub fn ring(&self) -> Ring {
        Ring::new(self.nodes.iter().map(String::as_str), self.settings.virtual_nodes)
    }

    /// Where each partition should live on the current ring.
    pub fn targets(&self) -> Vec<Placement> {
        self.ring().placements(self.settings.partitions, self.settings.replication as usize)
    }

    /// Partitions whose replica set differs from their target, with the target.
    pub fn pending_moves(&self) -> Vec<(u32, Vec<String>)> {
        self.targets()
            .into_iter()
            .filter(|t| {
                self.partitions
                    .get(t.partition as usize)
                    .is_some_and(|r| sorted(&r.replicas) != sorted(&t.replicas))
            })
            .map(|t| (t.partition, t.replicas))
            .collect()
    }

    /// Applies `command` to the topology in `slot`; true when it changed something.
    pub fn apply(slot: &mut Option<Topology>, command: &TopologyCommand) -> bool {
        match (slot.as_mut(), command) {
            (None, TopologyCommand::Setup { settings, nodes }) => {
                let mut topology =
                    Topology { settings: *settings, nodes: sorted(nodes), partitions: Vec::new() };
                topology.partitions = topology
                    .targets()
                    .into_iter()
                    .map(|p| PartitionRecord { replicas: p.replicas, generation: 0 })
                    .collect();
                *slot = Some(topology);
                true
            }
            (Some(topology), TopologyCommand::SetNodes { nodes }) => {
                let nodes = sorted(nodes);
                let changed = topology.nodes != nodes && !nodes.is_empty();
                if changed {
                    topology.nodes = nodes;
                }
                changed
            }
            (Some(topology), TopologyCommand::Moved { partition, generation, replicas }) => {
                match topology.partitions.get_mut(*partition as usize) {
                    Some(record) if record.generation == *generation && !replicas.is_empty() => {
                        record.replicas = replicas.clone();
                        record.generation += 1;
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node{i}")).collect()
    }

    const SETTINGS: QueueSettings =
        QueueSettings { virtual_nodes: 150, partitions: 16, replication: 3, max_receives: 5 };

    #[test]
    fn setup_places_every_partition_once() {
        let mut slot = None;
        assert!(Topology::apply(&mut slot, &TopologyCommand::Setup { settings: SETTINGS, nodes: names(3) }));
        let again =
            TopologyCommand::Setup { settings: QueueSettings { partitions: 4, ..SETTINGS }, nodes: names(3) };
        assert!(!Topology::apply(&mut slot, &again), "settings are written once");
        let topology = slot.clone().expect("created");
        assert_eq!(topology.partitions.len(), 16);
        assert!(topology.partitions.iter().all(|p| p.replicas.len() == 3 && p.generation == 0));
        assert!(topology.pending_moves().is_empty());
    }

    #[test]
    fn a_join_creates_moves_that_are_recorded_once() {
        let mut slot = None;
        Topology::apply(&mut slot, &TopologyCommand::Setup { settings: SETTINGS, nodes: names(3) });
        assert!(Topology::apply(&mut slot, &TopologyCommand::SetNodes { nodes: names(4) }));
        let topology = slot.clone().expect("created");
        let moves = topology.pending_moves();
        assert!(!moves.is_empty() && moves.len() < 16, "{} of 16 partitions move", moves.len());
        for (partition, target) in &moves {
            assert!(target.contains(&"node4".to_string()), "only the joiner enters {partition}");
        }
        let (partition, replicas) = moves[0].clone();
        let moved = TopologyCommand::Moved { partition, generation: 0, replicas };
        assert!(Topology::apply(&mut slot, &moved));
        assert!(!Topology::apply(&mut slot, &moved), "a stale move is ignored");
        let topology = slot.expect("created");
        assert_eq!(topology.partitions[partition as usize].generation, 1);
        assert_eq!(topology.pending_moves().len(), moves.len() - 1);
    }
}
