//! Sinkron's fault-injection harness, in the spirit of Jepsen.
//!
//! [`cluster::ChaosCluster`] starts real `sinkron serve` processes on loopback. Every
//! node-to-node link runs through a proxy of ours ([`proxy`]), so a run can cut a node off,
//! split the cluster, cut one direction only or add delay; processes can also be killed,
//! restarted, paused and resumed. A [`schedule::Schedule`] of faults is drawn from a seed
//! (the same seed gives the same faults at the same offsets), while workloads
//! ([`workloads`]) drive locks, the cache and queues through every node and record a
//! [`history::History`]. Checkers ([`check`]) then decide whether the history is allowed.
//!
//! Nodes bind distinct loopback addresses (`127.0.0.11`, `127.0.0.12`, ...) and call their
//! peers from them, which is how a proxy knows which link a connection belongs to. Peers are
//! advertised at the proxies' addresses (`127.0.0.101`, ...), clients talk to the nodes
//! directly.

pub mod check;
pub mod cluster;
pub mod history;
pub use sinkron_core::linearizability;
pub mod proxy;
pub mod revocations;
pub mod run;
pub mod schedule;
pub mod workloads;
