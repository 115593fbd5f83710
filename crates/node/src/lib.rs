//! The Sinkron server.
//!
//! A node runs several Raft groups (group 0 and the queue partitions it replicates) on the
//! `openraft` crate, stores them durably under its data directory, talks to its peers over
//! HTTP with JSON bodies, and serves the public HTTP API. It is the only crate that names
//! openraft or HTTP; the protocol logic it drives lives in `sinkron-core`.

pub mod admission;
pub mod api;
pub mod backup;
pub mod cache;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod group;
pub mod group0;
pub mod http_guard;
pub mod kv_feed;
pub mod locks;
pub mod metrics;
pub mod network;
pub mod node;
pub mod park;
pub mod payload;
pub mod peer_http;
pub mod peer_stream;
pub mod peers;
pub mod proposer;
pub mod queues;
pub mod quota;
pub mod security;
pub mod server;
pub mod storage;
pub mod types;
pub mod wire;

pub use config::{ConfigError, NodeConfig, ServeArgs};
pub use node::Node;
