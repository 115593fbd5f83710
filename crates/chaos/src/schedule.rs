//! Seeded fault schedules.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a node (sometimes the leader), restart it when the fault ends.
    Kill,
    /// SIGSTOP a node, SIGCONT it when the fault ends.
    Pause,
    /// Cut a minority of nodes off from the majority, both ways.
    Partition,
    /// Cut one direction of one link.
    OneWay,
    /// Delay every link.
    Delay,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 5] =
        [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::OneWay, FaultKind::Delay];

    /// Parses a kebab-case name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.to_string() == name)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way",
            FaultKind::Delay => "delay",
        })
    }
}

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Group 0's leader at the time of the fault.
    Leader,
    /// This node.
    Node(usize),
}

/// One fault: when it starts, what it is, and how long it lasts.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Offset from the start of the run.
    pub at: Duration,
    /// The kind.
    pub kind: FaultKind,
    /// The node it hits (for a partition: one node of the minority; for one-way: the sender).
    pub target: Target,
    /// For one-way: the receiver whose link from `target` is cut.
    pub peer: usize,
    /// How long it lasts.
    pub length: Duration,
    /// For delay: how much.
    pub delay: Duration,
}

/// A fault as it was injected.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// The kind.
    pub kind: FaultKind,
    /// The nodes it hit (all of them for delay).
    pub nodes: Vec<usize>,
    /// Run microseconds when it began.
    pub start_us: u64,
    /// Run microseconds when it was healed.
    pub end_us: u64,
}

/// How long faults last and how far apart they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Faults of 0.8 to 2.5 s, 0.7 to 1.5 s apart.
    Normal,
    /// Many short faults: 0.2 to 1.2 s, 0.2 to 0.7 s apart. The cache workloads use it: a
    /// stale read needs a node cut off while its coherence lease still runs, and another
    /// node reading soon after a write, which short, frequent cuts produce far more often.
    Short,
}

impl Pace {
    fn length_ms(self) -> std::ops::Range<u64> {
        match self {
            Pace::Normal => 800..2_500,
            Pace::Short => 200..1_200,
        }
    }

    fn gap_ms(self) -> std::ops::Range<u64> {
        match self {
            Pace::Normal => 700..1_500,
            Pace::Short => 200..700,
        }
    }
}

/// A fault schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The faults, in start order, never overlapping.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Draws faults of `kinds` for `nodes` nodes over `duration`. With more than one kind,
    /// the kinds take turns (in a seeded order), so a short run still covers each.
    pub fn generate(seed: u64, kinds: &[FaultKind], nodes: usize, duration: Duration) -> Self {
        Self::generate_paced(seed, kinds, nodes, duration, Pace::Normal)
    }

    /// Like [`Schedule::generate`], with faults of the given pace.
    pub fn generate_paced(
        seed: u64,
        kinds: &[FaultKind],
        nodes: usize,
        duration: Duration,
        pace: Pace,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut steps = Vec::new();
        let mut order: Vec<FaultKind> = kinds.to_vec();
        let mut at = Duration::from_millis(rng.gen_range(500..1_500));
        let mut turn = 0usize;
        while !order.is_empty() && at + Duration::from_secs(1) < duration {
            if turn.is_multiple_of(order.len()) {
                // A fresh seeded order for each round of kinds.
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.gen_range(0..=i));
                }
            }
            let kind = order[turn % order.len()];
            turn += 1;
            let length = Duration::from_millis(rng.gen_range(pace.length_ms()));
            let target =
                if rng.gen_bool(0.5) { Target::Leader } else { Target::Node(rng.gen_range(0..nodes)) };
            let peer = rng.gen_range(0..nodes);
            let delay = Duration::from_millis(rng.gen_range(20..150));
            steps.push(Step { at, kind, target, peer, length, delay });
            at += length + Duration::from_millis(rng.gen_range(pace.gap_ms()));
        }
        Self { seed, steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_every_kind_appears() {
        let a = Schedule::generate(7, &FaultKind::ALL, 3, Duration::from_secs(30));
        let b = Schedule::generate(7, &FaultKind::ALL, 3, Duration::from_secs(30));
        assert_eq!(serde_json::to_string(&a.steps).ok(), serde_json::to_string(&b.steps).ok());
        for kind in FaultKind::ALL {
            assert!(a.steps.iter().any(|s| s.kind == kind), "{kind} missing");
        }
        for pair in a.steps.windows(2) {
            assert!(pair[0].at + pair[0].length < pair[1].at, "faults overlap");
        }
        let c = Schedule::generate(8, &FaultKind::ALL, 3, Duration::from_secs(30));
        assert_ne!(serde_json::to_string(&a.steps).ok(), serde_json::to_string(&c.steps).ok());
        assert_eq!(FaultKind::parse("one-way"), Some(FaultKind::OneWay));
    }
}
