//! The queue partitions' placement and hosting decisions, pure: the topology, group 0's
//! voters and this node's view in, the next step out. The node performs the steps (a
//! topology write, a partition reconfiguration, opening, closing or initialising a group).
//!
//! - [`next_placement`] (group 0's leader): write the topology once, keep the ring's nodes
//!   equal to group 0's voters, then move one partition at a time to its target.
//! - [`Hosting`] (every node): open the groups of the partitions this node replicates or is
//!   about to, close those moved away, and initialise a group only if this node was one of
//!   the replicas it was created with (generation 0), the preferred replica first and the
//!   others after a patience that grows with their rank. A node started in join mode never
//!   initialises: the group exists elsewhere, and a fresh one could win elections among
//!   wiped replicas and overwrite the real one.

use std::collections::{BTreeMap, BTreeSet};

use crate::topology::{QueueSettings, Topology, TopologyCommand};

/// What group 0's leader should do next about placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementStep {
    /// Nothing to do.
    Idle,
    /// Write this topology command (`Setup` or `SetNodes`).
    Write(TopologyCommand),
    /// Give `partition`'s group exactly `replicas` as voters, then record
    /// `TopologyCommand::Moved` from `generation`.
    Move {
        /// Partition number.
        partition: u32,
        /// Its generation before the move.
        generation: u64,
        /// The target replica set.
        replicas: Vec<String>,
    },
}

/// The next placement step, given the topology as applied (if written), group 0's voters
/// (sorted names) and the settings a new topology would take.
pub fn next_placement(
    topology: Option<&Topology>,
    voters: &[String],
    settings: QueueSettings,
) -> PlacementStep {
    if voters.is_empty() {
        return PlacementStep::Idle;
    }
    let Some(topology) = topology else {
        return PlacementStep::Write(TopologyCommand::Setup { settings, nodes: voters.to_vec() });
    };
    if topology.nodes != voters {
        return PlacementStep::Write(TopologyCommand::SetNodes { nodes: voters.to_vec() });
    }
    match topology.pending_moves().into_iter().next() {
        None => PlacementStep::Idle,
        Some((partition, replicas)) => {
            let generation = topology.partitions[partition as usize].generation;
            PlacementStep::Move { partition, generation, replicas }
        }
    }
}

/// What this node should do about the groups it hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostStep {
    /// Open `partition`'s group; `rank` is this node's place in its preferred order.
    Open {
        /// Partition number.
        partition: u32,
        /// Place in the preferred order (0 first).
        rank: u64,
    },
    /// Close `partition`'s group: it moved away from this node.
    Close {
        /// Partition number.
        partition: u32,
    },
    /// Initialise `partition`'s group with `replicas`, unless it already holds state.
    Initialise {
        /// Partition number.
        partition: u32,
        /// The replicas it was created with.
        replicas: Vec<String>,
    },
}

/// One node's hosting decisions, with the initialisations still owed and when they are due.
#[derive(Debug, Clone)]
pub struct Hosting {
    me: String,
    join: bool,
    patience_ms: u64,
    /// Partitions of generation 0 this node still has to initialise, and from when.
    pending: BTreeMap<u32, u64>,
}

impl Hosting {
    /// The decisions of node `me`; `join` when it was started to join a running cluster;
    /// a replica of rank `r` waits `r × patience_ms` before it initialises.
    pub fn new(me: &str, join: bool, patience_ms: u64) -> Self {
        Self { me: me.to_owned(), join, patience_ms, pending: BTreeMap::new() }
    }

    /// The groups to open and close, given the topology and the partitions hosted now.
    pub fn plan(&mut self, topology: &Topology, hosted: &BTreeSet<u32>) -> Vec<HostStep> {
        let targets = topology.targets();
        let mut steps = Vec::new();
        for (partition, record) in topology.partitions.iter().enumerate() {
            let partition = partition as u32;
            let target = targets.get(partition as usize).map(|t| t.replicas.as_slice()).unwrap_or_default();
            let wanted = record.replicas.contains(&self.me) || target.contains(&self.me);
            let rank = record.replicas.iter().chain(target).position(|n| *n == self.me).unwrap_or(0) as u64;
            match (wanted, hosted.contains(&partition)) {
                (true, false) => steps.push(HostStep::Open { partition, rank }),
                (false, true) => {
                    self.pending.remove(&partition);
                    steps.push(HostStep::Close { partition });
                }
                _ => {}
            }
        }
        steps
    }

    /// Records that `partition`'s group opened here at `now_ms`: if this node is one of the
    /// replicas it was created with, it owes the group an initialisation.
    pub fn opened(&mut self, topology: &Topology, partition: u32, rank: u64, now_ms: u64) {
        let Some(record) = topology.partitions.get(partition as usize) else { return };
        if self.join || record.generation != 0 || !record.replicas.contains(&self.me) {
            return;
        }
        self.pending.insert(partition, now_ms.saturating_add(self.patience_ms.saturating_mul(rank)));
    }

    /// The initialisations due at `now_ms` among the hosted partitions. One that is no
    /// longer of generation 0 is dropped: its group was created and moved since.
    pub fn due(&mut self, topology: &Topology, hosted: &BTreeSet<u32>, now_ms: u64) -> Vec<HostStep> {
        let mut steps = Vec::new();
        let due: Vec<u32> = self.pending.iter().filter(|(_, at)| **at <= now_ms).map(|(p, _)| *p).collect();
        for partition in due {
            match topology.partitions.get(partition as usize) {
                Some(record) if record.generation == 0 => {
                    if hosted.contains(&partition) {
                        steps.push(HostStep::Initialise { partition, replicas: record.replicas.clone() });
                    }
                }
                _ => {
                    self.pending.remove(&partition);
                }
            }
        }
        steps
    }

    /// Records that `partition`'s group needs nothing more (initialised here or elsewhere).
    pub fn initialised(&mut self, partition: u32) {
        self.pending.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SETTINGS: QueueSettings =
        QueueSettings { virtual_nodes: 32, partitions: 8, replication: 3, max_receives: 5 };

    fn names(ids: &[u8]) -> Vec<String> {
        let mut names: Vec<String> = ids.iter().map(|i| format!("node{i}")).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Runs the placement planner to a fixed point from `start`, through each voter set of
    /// `memberships` in turn; every step is applied as the node would apply it. Returns the
    /// topology and the steps taken.
    fn place(memberships: &[Vec<String>]) -> (Option<Topology>, Vec<PlacementStep>) {
        let mut slot: Option<Topology> = None;
        let mut steps = Vec::new();
        for voters in memberships {
            for _ in 0..64 {
                let step = next_placement(slot.as_ref(), voters, SETTINGS);
                match &step {
                    PlacementStep::Idle => break,
                    PlacementStep::Write(command) => {
                        assert!(
                            Topology::apply(&mut slot, command),
                            "a write that changes nothing: {step:?}"
                        );
                    }
                    PlacementStep::Move { partition, generation, replicas } => {
                        let moved = TopologyCommand::Moved {
                            partition: *partition,
                            generation: *generation,
                            replicas: replicas.clone(),
                        };
                        assert!(Topology::apply(&mut slot, &moved), "a stale move: {step:?}");
                    }
                }
                steps.push(step);
            }
            assert_eq!(next_placement(slot.as_ref(), voters, SETTINGS), PlacementStep::Idle, "settles");
        }
        (slot, steps)
    }

    proptest! {
        /// Placement moves one partition at a time, only once the ring follows the voters,
        /// and settles with every partition at its target.
        #[test]
        fn placement_moves_one_partition_at_a_time_and_settles(
            memberships in prop::collection::vec(prop::collection::vec(1u8..7, 1..5), 1..5)
        ) {
            let memberships: Vec<Vec<String>> = memberships.iter().map(|m| names(m)).collect();
            let mut slot: Option<Topology> = None;
            for voters in &memberships {
                for _ in 0..64 {
                    let before = slot.clone();
                    let step = next_placement(slot.as_ref(), voters, SETTINGS);
                    match &step {
                        PlacementStep::Idle => break,
                        PlacementStep::Write(command) => {
                            Topology::apply(&mut slot, command);
                        }
                        PlacementStep::Move { partition, generation, replicas } => {
                            let topology = before.as_ref().expect("a move needs a topology");
                            prop_assert_eq!(&topology.nodes, voters, "no move before the ring follows the voters");
                            Topology::apply(&mut slot, &TopologyCommand::Moved {
                                partition: *partition, generation: *generation, replicas: replicas.clone(),
                            });
                        }
                    }
                    let (Some(a), Some(b)) = (before.as_ref(), slot.as_ref()) else { continue };
                    let changed = a.partitions.iter().zip(&b.partitions).filter(|(x, y)| x != y).count();
                    prop_assert!(changed <= 1, "{changed} partitions changed in one step");
                }
                let topology = slot.as_ref().expect("written");
                prop_assert!(topology.pending_moves().is_empty());
                prop_assert_eq!(&topology.nodes, voters);
            }
        }

        /// Whatever the topology's history, only a replica a group was created with
        /// initialises it (generation 0), and a node in join mode never does.
        #[test]
        fn only_creating_replicas_initialise_and_joiners_never(
            memberships in prop::collection::vec(prop::collection::vec(1u8..7, 1..5), 1..4),
            me in 1u8..7,
            join in any::<bool>(),
            clock_steps in prop::collection::vec(0u64..400, 1..20),
        ) {
            let memberships: Vec<Vec<String>> = memberships.iter().map(|m| names(m)).collect();
            let me = format!("node{me}");
            let mut hosting = Hosting::new(&me, join, 100);
            let mut hosted = BTreeSet::new();
            let mut now = 0;
            for prefix in 1..=memberships.len() {
                let (slot, _) = place(&memberships[..prefix]);
                let topology = slot.expect("written");
                for step in &clock_steps {
                    now += step;
                    for step in hosting.plan(&topology, &hosted) {
                        match step {
                            HostStep::Open { partition, rank } => {
                                hosted.insert(partition);
                                hosting.opened(&topology, partition, rank, now);
                            }
                            HostStep::Close { partition } => {
                                hosted.remove(&partition);
                            }
                            HostStep::Initialise { .. } => prop_assert!(false, "plan never initialises"),
                        }
                    }
                    for step in hosting.due(&topology, &hosted, now) {
                        let HostStep::Initialise { partition, replicas } = step else {
                            prop_assert!(false, "due only initialises");
                            continue;
                        };
                        prop_assert!(!join, "a joining node initialised partition {}", partition);
                        let record = &topology.partitions[partition as usize];
                        prop_assert_eq!(record.generation, 0);
                        prop_assert!(record.replicas.contains(&me));
                        prop_assert_eq!(&replicas, &record.replicas);
                        hosting.initialised(partition);
                    }
                }
                // Hosted is exactly what the topology says this node replicates or will.
                let targets = topology.targets();
                for (p, record) in topology.partitions.iter().enumerate() {
                    let wanted = record.replicas.contains(&me) || targets[p].replicas.contains(&me);
                    prop_assert_eq!(hosted.contains(&(p as u32)), wanted, "partition {}", p);
                }
            }
        }
    }

    #[test]
    fn the_preferred_replica_initialises_first_and_the_others_after_their_patience() {
        let (slot, _) = place(&[names(&[1, 2, 3])]);
        let topology = slot.expect("written");
        let partition = 0u32;
        let replicas = topology.partitions[0].replicas.clone();
        let mut due_at = Vec::new();
        for (rank, name) in replicas.iter().enumerate() {
            let mut hosting = Hosting::new(name, false, 100);
            let hosted = BTreeSet::from([partition]);
            hosting.opened(&topology, partition, rank as u64, 1_000);
            let first =
                (1_000..2_000).step_by(10).find(|now| !hosting.due(&topology, &hosted, *now).is_empty());
            due_at.push(first);
        }
        assert_eq!(due_at, vec![Some(1_000), Some(1_100), Some(1_200)]);
    }

    #[test]
    fn a_moved_partition_is_never_initialised_by_its_new_replica() {
        let (slot, steps) = place(&[names(&[1, 2, 3]), names(&[1, 2, 3, 4])]);
        let topology = slot.expect("written");
        assert!(steps.iter().any(|s| matches!(s, PlacementStep::Move { .. })), "node4 joined: {steps:?}");
        let mut hosting = Hosting::new("node4", false, 0);
        let mut hosted = BTreeSet::new();
        for step in hosting.plan(&topology, &BTreeSet::new()) {
            if let HostStep::Open { partition, rank } = step {
                hosted.insert(partition);
                hosting.opened(&topology, partition, rank, 0);
            }
        }
        assert!(!hosted.is_empty(), "node4 hosts the partitions moved to it");
        assert_eq!(hosting.due(&topology, &hosted, 1_000_000), Vec::new());
    }
}
