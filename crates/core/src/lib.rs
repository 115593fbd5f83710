//! Sinkron's pure protocol logic.
//!
//! Everything here is a deterministic function of its inputs: commands come in as values,
//! replies go out as values. This crate never reads a clock, never performs I/O and never
//! draws a random number, so every replica that applies the same log reaches the same state,
//! and unit and property tests can cover the logic exhaustively.
//!
//! It deliberately knows nothing about Raft, HTTP or storage; the `sinkron-node` crate drives
//! these state machines from the Raft log.

pub mod cache;
pub mod claims;
pub mod command;
pub mod dedup;
pub mod entropy;
pub mod error;
pub mod ids;
pub mod kv;
pub mod limits;
pub mod linearizability;
pub mod locks;
pub mod partition;
pub mod placement;
pub mod queue;
pub mod ring;
pub mod state;
pub mod topology;

pub use command::{Batch, Command, Fence, KvRefusal, Request, Response};
pub use error::CoreError;
pub use partition::PartitionMachine;
pub use state::Group0State;
