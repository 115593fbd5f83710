//! The distributed lock manager's pure core: lock table, FIFO wait queues, leases, fencing
//! tokens and wait-for-graph deadlock detection.
//!
//! Everything is a function of the commands applied and the state machine's clock (`now_ms`,
//! the largest leader timestamp applied). Nothing here waits: a request that cannot be
//! granted is *queued*, and a later command (a release, an expiry) grants it and reports the
//! grant as a [`LockEvent`] that the node delivers to whoever is waiting.

mod graph;
mod table;
mod types;

pub use graph::find_cycle;
pub use table::{Lock, LockTable};
pub use types::*;
