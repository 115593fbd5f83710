//! The consistent-hash ring that places queue partitions on nodes.
//!
//! Each node puts `virtual_nodes` tokens on the ring `0..=u32::MAX`, token `i` of node `n`
//! at `hash32("n-vni")` (names like `node1-vn0`, as in the specification). A point's owner
//! is the first token clockwise from it. The hash space is cut into `partitions` equal
//! ranges; a partition's replicas are the first `replication` distinct nodes clockwise from
//! the start of its range, the first being the preferred leader. A message of queue `q` with
//! key `k` belongs to the partition of `hash32("q/k")`.
//!
//! Why this shape: adding a node only inserts tokens, so a partition's replica set can only
//! gain the new node (and drop its last member); nothing moves between nodes that stay.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// 32-bit FNV-1a of `bytes`, then MurmurHash3's 32-bit finaliser for avalanche.
///
/// A named, fixed function (never `DefaultHasher`): every node and every release must place
/// the same key on the same partition.
pub fn hash32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The ring of every node's virtual nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    tokens: BTreeMap<u32, String>,
    nodes: BTreeSet<String>,
    virtual_nodes: u32,
}

/// Where one partition lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Partition number.
    pub partition: u32,
    /// First point of its hash range.
    pub start: u32,
    /// Last point of its hash range.
    pub end: u32,
    /// Replica nodes, preferred leader first.
    pub replicas: Vec<String>,
}

impl Ring {
    /// A ring of `nodes`, each with `virtual_nodes` tokens.
    pub fn new<'a>(nodes: impl IntoIterator<Item = &'a str>, virtual_nodes: u32) -> Self {
        let mut ring = Self { virtual_nodes, ..Self::default() };
        for node in nodes {
            ring.add(node);
        }
        ring
    }

    /// Adds `node`'s tokens. On a token collision the smaller node name keeps the token, so
    /// the ring is the same whatever order nodes were added in.
    pub fn add(&mut self, node: &str) {
        self.nodes.insert(node.to_string());
        for i in 0..self.virtual_nodes {
            let token = hash32(format!("{node}-vn{i}").as_bytes());
            match self.tokens.get(&token) {
                Some(existing) if existing.as_str() <= node => {}
                _ => {
                    self.tokens.insert(token, node.to_string());
                }
            }
        }
    }

    /// The nodes on the ring.
    pub fn nodes(&self) -> &BTreeSet<String> {
        &self.nodes
    }

    /// Every token and its node, in ring order.
    pub fn tokens(&self) -> &BTreeMap<u32, String> {
        &self.tokens
    }

    /// The first `count` distinct nodes clockwise from `point` (fewer if the ring has fewer).
    pub fn successors(&self, point: u32, count: usize) -> Vec<String> {
        let mut found: Vec<String> = Vec::with_capacity(count);
        for (_, node) in self.tokens.range(point..).chain(self.tokens.range(..point)) {
            if found.len() == count {
                break;
            }
            if !found.contains(node) {
                found.push(node.clone());
            }
        }
        found
    }

    /// The node owning `key`: the first token clockwise from `hash32(key)`.
    pub fn owner_of(&self, key: &[u8]) -> Option<&str> {
        let point = hash32(key);
        self.tokens.range(point..).chain(self.tokens.range(..point)).next().map(|(_, n)| n.as_str())
    }

    /// Where each of `partitions` partitions lives with `replication` replicas.
    pub fn placements(&self, partitions: u32, replication: usize) -> Vec<Placement> {
        (0..partitions)
            .map(|p| {
                let (start, end) = partition_range(p, partitions);
                Placement { partition: p, start, end, replicas: self.successors(start, replication) }
            })
            .collect()
    }
}

/// The hash range `[start, end]` of partition `p` of `partitions` equal ranges.
pub fn partition_range(p: u32, partitions: u32) -> (u32, u32) {
    let size = (1u64 << 32) / u64::from(partitions.max(1));
    let start = u64::from(p) * size;
    let end = if p + 1 >= partitions { u64::from(u32::MAX) } else { start + size - 1 };
    (start as u32, end as u32)
}

/// The partition of a message of `queue` with `key` (the queue name when there is no key).
pub fn partition_of(queue: &str, key: Option<&str>, partitions: u32) -> u32 {
    partition_of_point(hash32(format!("{queue}/{}", key.unwrap_or(queue)).as_bytes()), partitions)
}

/// The partition whose [`partition_range`] holds `point`.
pub fn partition_of_point(point: u32, partitions: u32) -> u32 {
    let partitions = partitions.max(1);
    let size = (1u64 << 32) / u64::from(partitions);
    ((u64::from(point) / size) as u32).min(partitions - 1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node{i}")).collect()
    }

    fn ring_of(nodes: &[String], vn: u32) -> Ring {
        Ring::new(nodes.iter().map(String::as_str), vn)
    }

    #[test]
    fn hash32_is_fixed() {
        // Pinned values: changing the function would move every message of every queue.
        assert_eq!(hash32(b""), 2_872_998_923);
        assert_eq!(hash32(b"node1-vn0"), hash32(b"node1-vn0"));
        assert_ne!(hash32(b"node1-vn0"), hash32(b"node1-vn1"));
    }

    #[test]
    fn partitions_cover_the_hash_space_exactly() {
        for partitions in [1, 3, 16, 1000] {
            let mut next = 0u64;
            for p in 0..partitions {
                let (start, end) = partition_range(p, partitions);
                assert_eq!(u64::from(start), next);
                next = u64::from(end) + 1;
            }
            assert_eq!(next, 1 << 32);
        }
        assert!(partition_of("orders", None, 16) < 16);
        for partitions in [1, 3, 7, 16, 1000] {
            for point in [0, 1, u32::MAX / 3, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
                let p = partition_of_point(point, partitions);
                let (start, end) = partition_range(p, partitions);
                assert!(start <= point && point <= end, "{point} in partition {p} of {partitions}");
            }
        }
        assert_eq!(partition_of("orders", None, 16), partition_of("orders", Some("orders"), 16));
    }

    #[test]
    fn replicas_are_distinct_and_capped_by_the_cluster_size() {
        let ring = ring_of(&names(3), 150);
        for placement in ring.placements(16, 5) {
            let set: BTreeSet<_> = placement.replicas.iter().collect();
            assert_eq!(set.len(), 3);
            assert_eq!(placement.replicas.len(), 3);
        }
    }

    #[test]
    fn the_ring_does_not_depend_on_insertion_order() {
        let a = Ring::new(["node1", "node2", "node3"], 150);
        let b = Ring::new(["node3", "node1", "node2"], 150);
        assert_eq!(a, b);
    }

    /// Max over mean of keys owned per node, over `samples` keys.
    fn key_imbalance(ring: &Ring, samples: u32) -> f64 {
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for i in 0..samples {
            if let Some(owner) = ring.owner_of(format!("key-{i}").as_bytes()) {
                *counts.entry(owner).or_default() += 1;
            }
        }
        let max = counts.values().copied().max().unwrap_or(0) as f64;
        max / (f64::from(samples) / ring.nodes().len() as f64)
    }

    #[test]
    fn keys_are_balanced_at_150_virtual_nodes() {
        for n in [3, 5, 8] {
            let imbalance = key_imbalance(&ring_of(&names(n), 150), 100_000);
            assert!(imbalance < 1.35, "{n} nodes: max/mean {imbalance:.3}");
        }
    }

    proptest! {
        /// A joining node only takes over: every partition keeps its replicas except that
        /// the new node may enter (pushing out the last one), so nothing moves between two
        /// nodes that both stay; and about 1/N of the keys change owner.
        #[test]
        fn a_join_moves_only_to_the_new_node(n in 2usize..8, replication in 1usize..4, seed in 0u32..1000) {
            let mut nodes: Vec<String> = (0..n).map(|i| format!("n{seed}-{i}")).collect();
            let before = ring_of(&nodes, 150);
            nodes.push(format!("joiner{seed}"));
            let after = ring_of(&nodes, 150);
            let joiner = nodes.last().cloned().unwrap_or_default();
            for (old, new) in before.placements(64, replication).iter().zip(after.placements(64, replication)) {
                for node in &new.replicas {
                    prop_assert!(old.replicas.contains(node) || *node == joiner, "{node} appeared in {new:?} (was {old:?})");
                }
            }
            let samples = 20_000u32;
            let moved = (0..samples)
                .filter(|i| {
                    let key = format!("k{i}");
                    before.owner_of(key.as_bytes()) != after.owner_of(key.as_bytes())
                })
                .count() as f64
                / f64::from(samples);
            let expected = 1.0 / nodes.len() as f64;
            prop_assert!(moved < expected * 1.6 && moved > expected * 0.5, "moved {moved:.3}, expected about {expected:.3}");
        }
    }
}
