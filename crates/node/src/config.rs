//! Node configuration: every setting is an environment variable and a `sinkron serve` flag.
//!
//! Names, defaults and units follow the user's specification (`NODE_ID`, `CLUSTER_ADDRS`,
//! `RAFT_ELECTION_TIMEOUT_MIN` in seconds, ...). [`ServeArgs`] is what the command line and
//! environment give; [`NodeConfig::from_args`] validates it into what the node runs with, and
//! reports the first problem as one readable [`ConfigError`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use sinkron_core::ids::raft_id;
use sinkron_core::limits::validate_node_name;
pub use sinkron_core::topology::QueueSettings;
use thiserror::Error;

use crate::security::{is_loopback_bind, SecuritySettings, TlsFiles};
use crate::types::{Member, NodeId};

/// Settings of `sinkron serve`, each also read from the environment variable of its name.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Unique name of this node.
    #[arg(long, env = "NODE_ID", default_value = "node1")]
    pub node_id: String,
    /// Port of the HTTP API (public and node-to-node).
    #[arg(long, env = "NODE_PORT", default_value_t = 8001)]
    pub node_port: u16,
    /// Address to listen on.
    #[arg(long, env = "NODE_BIND", default_value = "0.0.0.0")]
    pub bind: String,
    /// Comma-separated `[name=]host:port` of every initial member, this node included.
    /// Entries without a name are called node1, node2, ... by position.
    #[arg(long, env = "CLUSTER_ADDRS", default_value = "localhost:8001,localhost:8002,localhost:8003")]
    pub cluster_addrs: String,
    /// Redis server host (Redis storage backend).
    #[arg(long, env = "REDIS_HOST", default_value = "localhost")]
    pub redis_host: String,
    /// Redis server port (Redis storage backend).
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Password of the Redis server (its `requirepass`, or the `default` user's).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Connect to Redis over TLS.
    #[arg(long, env = "REDIS_TLS", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_tls: bool,
    /// CA (PEM) that the Redis server's certificate must chain to (with REDIS_TLS); the
    /// system's CAs when not given.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Smallest election timeout, in seconds.
    #[arg(long, env = "RAFT_ELECTION_TIMEOUT_MIN", default_value_t = 3.0)]
    pub raft_election_timeout_min: f64,
    /// Largest election timeout, in seconds.
    #[arg(long, env = "RAFT_ELECTION_TIMEOUT_MAX", default_value_t = 5.0)]
    pub raft_election_timeout_max: f64,
    /// Interval between leader heartbeats, in seconds.
    #[arg(long, env = "RAFT_HEARTBEAT_INTERVAL", default_value_t = 1.0)]
    pub raft_heartbeat_interval: f64,
    /// Largest number of entries in a node's local cache.
    #[arg(long, env = "CACHE_MAX_SIZE", default_value_t = 1000)]
    pub cache_max_size: u64,
    /// Default lease of a lock, in seconds.
    #[arg(long, env = "LOCK_DEFAULT_TTL", default_value_t = 300.0)]
    pub lock_default_ttl: f64,
    /// Directory for this node's durable state; default `data/<NODE_ID>`.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Take a snapshot (and compact the log) after this many new entries.
    #[arg(long, env = "RAFT_SNAPSHOT_LOGS", default_value_t = 10_000)]
    pub raft_snapshot_logs: u64,
    /// Longest a client request waits for a leader and a quorum, in milliseconds.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 8_000)]
    pub request_timeout_ms: u64,
    /// `write-back` (default: M lines reach the backing store later) or `write-through`
    /// (every write is stored before it is acknowledged).
    #[arg(long, env = "CACHE_WRITE_POLICY", value_enum, default_value = "write-back")]
    pub cache_write_policy: WritePolicy,
    /// Longest a modified cache line stays unwritten, in milliseconds (write-back policy).
    #[arg(long, env = "CACHE_WRITEBACK_MAX_MS", default_value_t = 1_000)]
    pub cache_writeback_max_ms: u64,
    /// Where Raft state is kept: `embedded` (files under DATA_DIR, the default) or `redis`
    /// (the Redis server at REDIS_HOST:REDIS_PORT).
    #[arg(long, env = "STORAGE_BACKEND", value_enum, default_value = "embedded")]
    pub storage_backend: StorageBackend,
    /// Prefix of every Redis key of this cluster (Redis backend).
    #[arg(long, env = "REDIS_NAMESPACE", default_value = "sinkron")]
    pub redis_namespace: String,
    /// Enables `POST /v1/debug/isolate`, which cuts this node off from its peers (for fault
    /// injection tests; never in production).
    #[arg(long, env = "SINKRON_FAULT_INJECTION", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub fault_injection: bool,
    /// Tokens each node places on the queue ring.
    #[arg(long, env = "QUEUE_VIRTUAL_NODES", default_value_t = 150)]
    pub queue_virtual_nodes: u32,
    /// Number of queue partitions (fixed when the cluster is created).
    #[arg(long, env = "QUEUE_PARTITIONS", default_value_t = 16)]
    pub queue_partitions: u32,
    /// Replicas per queue partition (at most the number of nodes).
    #[arg(long, env = "QUEUE_REPLICATION", default_value_t = 3)]
    pub queue_replication: u32,
    /// Deliveries after which a message moves to the queue's dead-letter queue.
    #[arg(long, env = "QUEUE_MAX_RECEIVES", default_value_t = 5)]
    pub queue_max_receives: u32,
    /// Start as a new member that joins a running cluster through the membership API;
    /// such a node never bootstraps a cluster of its own.
    #[arg(long, env = "CLUSTER_JOIN", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub join: bool,
    /// Longest wait for a complete request head, in milliseconds: from a connection's
    /// accept for its first request, from a head's first byte for later ones; then `408`.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// Longest silence between requests on a kept-alive connection, in milliseconds
    /// (never while a request is running); then the connection is closed.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub http_idle_timeout_ms: u64,
    /// Longest a request body may take to arrive, in milliseconds; then `408`.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_body_timeout_ms: u64,
    /// Most open HTTP connections (clients and peers); one more is answered `503` and closed.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1_024)]
    pub http_max_connections: usize,
    /// Most queue receives waiting at once on this node (`wait_ms` > 0); then `429`.
    #[arg(long, env = "QUEUE_LONG_POLLS_MAX", default_value_t = 512)]
    pub queue_long_polls_max: usize,
    /// Most lock acquires waiting at once on this node (`wait_ms` > 0); then `429`.
    #[arg(long, env = "LOCK_WAITERS_MAX", default_value_t = 512)]
    pub lock_waiters_max: usize,
    /// Most watch streams and blocking reads open at once on this node; then `429`.
    #[arg(long, env = "WATCHES_MAX", default_value_t = 256)]
    pub watches_max: usize,
    /// Key-value changes each node keeps for watches that resume from a version; older
    /// ones answer `410 compacted`.
    #[arg(long, env = "WATCH_HISTORY", default_value_t = crate::kv_feed::HISTORY_DEFAULT)]
    pub watch_history: usize,
    /// Largest state of one Raft group (group 0, each queue partition), in bytes; writes
    /// that grow a full group answer `507 quota_exceeded`.
    #[arg(long, env = "QUOTA_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub quota_bytes: u64,
    /// Most locks held or awaited.
    #[arg(long, env = "QUOTA_LOCKS", default_value_t = 1_000_000)]
    pub quota_locks: usize,
    /// Most cache keys.
    #[arg(long, env = "QUOTA_CACHE_KEYS", default_value_t = 1_000_000)]
    pub quota_cache_keys: usize,
    /// Most queues with messages in one partition.
    #[arg(long, env = "QUOTA_QUEUES", default_value_t = 10_000)]
    pub quota_queues: usize,
    /// The node's certificate chain (PEM). With TLS_KEY_FILE and TLS_CA_FILE, the node
    /// serves HTTPS only, and node-to-node calls use mutual TLS.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of TLS_CERT_FILE (PEM).
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// The cluster's CA (PEM): peers' certificates must chain to it.
    #[arg(long, env = "TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Shared secret that node-to-node calls carry when TLS is off (compared in constant time).
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Principals of the clients, one `name:role:token` a line (roles admin, write, read);
    /// when set, `/v1` and `/metrics` need `Authorization: Bearer <token>`. Reloaded on SIGHUP.
    #[arg(long, env = "AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Run on a non-loopback address with neither TLS nor CLUSTER_SECRET: anyone who reaches
    /// the port can then act as a node. For isolated networks and experiments only.
    #[arg(long, env = "SINKRON_INSECURE", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
}

/// How to reach the Redis server of the Redis backend.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Connect over TLS.
    pub tls: bool,
    /// The CA of the server's certificate (TLS); the system's CAs when absent.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Quotas on stored state (see `crate::quota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// Largest state of one group, in bytes.
    pub bytes: u64,
    /// Most locks.
    pub locks: usize,
    /// Most cache keys.
    pub cache_keys: usize,
    /// Most queues per partition.
    pub queues: usize,
}

/// Bounds on what clients may hold open on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest wait for a request head, in milliseconds.
    pub header_timeout_ms: u64,
    /// Longest silence between requests on a connection, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Longest a request body may take, in milliseconds.
    pub body_timeout_ms: u64,
    /// Most open connections.
    pub max_connections: usize,
    /// Most waiting queue receives.
    pub long_polls_max: usize,
    /// Most waiting lock acquires.
    pub lock_waiters_max: usize,
    /// Most open watches and blocking reads.
    pub watches_max: usize,
}

/// When a cache write reaches the backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WritePolicy {
    /// Modified lines are written back on eviction, on another node's read, or after at
    /// most `CACHE_WRITEBACK_MAX_MS`.
    WriteBack,
    /// Every write is committed to the backing store before it is acknowledged.
    WriteThrough,
}

/// Where a node keeps its Raft logs, votes and snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageBackend {
    /// Segment files under the data directory; needs nothing installed.
    Embedded,
    /// A Redis server, namespaced by cluster, node and group.
    Redis,
}

/// Why a configuration cannot run.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    /// An entry of `CLUSTER_ADDRS` is not `[name=]host:port`.
    #[error("CLUSTER_ADDRS entry {entry:?} is not [name=]host:port: {reason}")]
    BadAddress {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two entries of `CLUSTER_ADDRS` share a name or an address.
    #[error("CLUSTER_ADDRS names {0:?} twice")]
    Duplicate(String),
    /// The security settings do not fit together, or leave a reachable node unprotected.
    #[error("{0}")]
    Security(String),
    /// `NODE_ID` is not among the names of `CLUSTER_ADDRS`.
    #[error("NODE_ID {node:?} is not in CLUSTER_ADDRS ({known}); entries without a name are node1, node2, ... by position")]
    SelfMissing {
        /// `NODE_ID`.
        node: String,
        /// The names found.
        known: String,
    },
    /// Our entry in `CLUSTER_ADDRS` has another port than `NODE_PORT`.
    #[error("CLUSTER_ADDRS gives {node} the address {addr} but NODE_PORT is {port}")]
    PortMismatch {
        /// `NODE_ID`.
        node: String,
        /// Our entry's address.
        addr: String,
        /// `NODE_PORT`.
        port: u16,
    },
    /// A setting is out of its range.
    #[error("{name} {reason}")]
    OutOfRange {
        /// The environment variable.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `NODE_ID` is not a valid node name.
    #[error("NODE_ID {0}")]
    BadNodeId(String),
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// This node's name.
    pub name: String,
    /// This node's Raft id.
    pub raft_id: NodeId,
    /// Address the HTTP server binds, `host:port`.
    pub listen: String,
    /// Initial members, this node included, in `CLUSTER_ADDRS` order.
    pub members: Vec<Member>,
    /// Election timeout range, in milliseconds.
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// Heartbeat interval, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Local cache capacity in entries.
    pub cache_max_size: u64,
    /// Default lock lease, in milliseconds.
    pub lock_default_ttl_ms: u64,
    /// Redis host and port, for the Redis backend.
    pub redis: RedisSettings,
    /// Storage backend.
    pub storage: StorageBackend,
    /// Cache write policy.
    pub cache_write_policy: WritePolicy,
    /// Longest a modified line stays unwritten, in milliseconds.
    pub cache_writeback_max_ms: u64,
    /// Prefix of Redis keys.
    pub redis_namespace: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Entries between snapshots.
    pub snapshot_logs: u64,
    /// Longest wait for a leader and a quorum, in milliseconds.
    pub request_timeout_ms: u64,
    /// Whether this node joins a running cluster instead of bootstrapping.
    pub join: bool,
    /// Whether the fault-injection endpoint is enabled.
    pub fault_injection: bool,
    /// Queue settings this node proposes when it creates the queue topology.
    pub queues: QueueSettings,
    /// Connection, body and waiting limits.
    pub limits: ConnectionLimits,
    /// Quotas on stored state.
    pub quotas: QuotaSettings,
    pub security: SecuritySettings,
    pub watch_history: usize,
}

impl NodeConfig {
    /// Validates `args`.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        validate_node_name(&args.node_id).map_err(|e| ConfigError::BadNodeId(e.to_string()))?;
        let members = parse_cluster_addrs(&args.cluster_addrs)?;
        let own =
            members.iter().find(|m| m.name == args.node_id).ok_or_else(|| ConfigError::SelfMissing {
                node: args.node_id.clone(),
                known: members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
            })?;
        if !own.addr.ends_with(&format!(":{}", args.node_port)) {
            return Err(ConfigError::PortMismatch {
                node: own.name.clone(),
                addr: own.addr.clone(),
                port: args.node_port,
            });
        }
        let min = seconds_to_ms("RAFT_ELECTION_TIMEOUT_MIN", args.raft_election_timeout_min)?;
        let max = seconds_to_ms("RAFT_ELECTION_TIMEOUT_MAX", args.raft_election_timeout_max)?;
        let heartbeat = seconds_to_ms("RAFT_HEARTBEAT_INTERVAL", args.raft_heartbeat_interval)?;
        if min >= max {
            return Err(out_of_range(
                "RAFT_ELECTION_TIMEOUT_MIN",
                format!(
                    "({} s) must be below RAFT_ELECTION_TIMEOUT_MAX ({} s)",
                    args.raft_election_timeout_min, args.raft_election_timeout_max
                ),
            ));
        }
        if heartbeat >= min {
            return Err(out_of_range(
                "RAFT_HEARTBEAT_INTERVAL",
                format!(
                    "({} s) must be below RAFT_ELECTION_TIMEOUT_MIN ({} s)",
                    args.raft_heartbeat_interval, args.raft_election_timeout_min
                ),
            ));
        }
        if args.cache_max_size == 0 {
            return Err(out_of_range("CACHE_MAX_SIZE", "must be at least 1".into()));
        }
        if args.cache_writeback_max_ms == 0 || args.cache_writeback_max_ms > 86_400_000 {
            return Err(out_of_range("CACHE_WRITEBACK_MAX_MS", "must be 1 to 86400000".into()));
        }
        if args.raft_snapshot_logs == 0 {
            return Err(out_of_range("RAFT_SNAPSHOT_LOGS", "must be at least 1".into()));
        }
        if args.redis_namespace.is_empty() || args.redis_namespace.contains(char::is_whitespace) {
            return Err(out_of_range("REDIS_NAMESPACE", "must be non-empty without spaces".into()));
        }
        for (name, value, max) in [
            ("QUEUE_VIRTUAL_NODES", args.queue_virtual_nodes, 1_000),
            ("QUEUE_PARTITIONS", args.queue_partitions, 1_024),
            ("QUEUE_REPLICATION", args.queue_replication, 7),
            ("QUEUE_MAX_RECEIVES", args.queue_max_receives, 1_000),
        ] {
            if value == 0 || value > max {
                return Err(out_of_range(name, format!("must be 1 to {max}, got {value}")));
            }
        }
        if args.request_timeout_ms < 100 {
            return Err(out_of_range("REQUEST_TIMEOUT_MS", "must be at least 100".into()));
        }
        for (name, value) in [
            ("HTTP_HEADER_TIMEOUT_MS", args.http_header_timeout_ms),
            ("HTTP_IDLE_TIMEOUT_MS", args.http_idle_timeout_ms),
            ("HTTP_BODY_TIMEOUT_MS", args.http_body_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&value) {
                return Err(out_of_range(name, format!("must be 100 to 3600000, got {value}")));
            }
        }
        if args.quota_bytes < 1024 * 1024 {
            return Err(out_of_range(
                "QUOTA_BYTES",
                format!("must be at least 1048576, got {}", args.quota_bytes),
            ));
        }
        for (name, value, min, max) in [
            ("QUOTA_LOCKS", args.quota_locks, 1, 1_000_000_000),
            ("QUOTA_CACHE_KEYS", args.quota_cache_keys, 1, 1_000_000_000),
            ("QUOTA_QUEUES", args.quota_queues, 1, 1_000_000_000),
            ("HTTP_MAX_CONNECTIONS", args.http_max_connections, 16, 1_000_000),
            ("QUEUE_LONG_POLLS_MAX", args.queue_long_polls_max, 1, 1_000_000),
            ("LOCK_WAITERS_MAX", args.lock_waiters_max, 1, 1_000_000),
            ("WATCHES_MAX", args.watches_max, 1, 1_000_000),
            ("WATCH_HISTORY", args.watch_history, 1, 10_000_000),
        ] {
            if !(min..=max).contains(&value) {
                return Err(out_of_range(name, format!("must be {min} to {max}, got {value}")));
            }
        }
        let security = security_settings(args)?;
        Ok(Self {
            name: args.node_id.clone(),
            raft_id: raft_id(&args.node_id),
            listen: format!("{}:{}", args.bind, args.node_port),
            members,
            election_timeout_min_ms: min,
            election_timeout_max_ms: max,
            heartbeat_interval_ms: heartbeat,
            cache_max_size: args.cache_max_size,
            lock_default_ttl_ms: seconds_to_ms("LOCK_DEFAULT_TTL", args.lock_default_ttl)?,
            redis: RedisSettings {
                host: args.redis_host.clone(),
                port: args.redis_port,
                password: args.redis_password.clone().filter(|p| !p.is_empty()),
                tls: args.redis_tls,
                ca_file: args.redis_ca_file.clone(),
            },
            storage: args.storage_backend,
            cache_write_policy: args.cache_write_policy,
            cache_writeback_max_ms: args.cache_writeback_max_ms,
            redis_namespace: args.redis_namespace.clone(),
            data_dir: args.data_dir.clone().unwrap_or_else(|| PathBuf::from("data").join(&args.node_id)),
            snapshot_logs: args.raft_snapshot_logs,
            request_timeout_ms: args.request_timeout_ms,
            join: args.join,
            fault_injection: args.fault_injection,
            queues: QueueSettings {
                virtual_nodes: args.queue_virtual_nodes,
                partitions: args.queue_partitions,
                replication: args.queue_replication,
                max_receives: args.queue_max_receives,
            },
            limits: ConnectionLimits {
                header_timeout_ms: args.http_header_timeout_ms,
                idle_timeout_ms: args.http_idle_timeout_ms,
                body_timeout_ms: args.http_body_timeout_ms,
                max_connections: args.http_max_connections,
                long_polls_max: args.queue_long_polls_max,
                lock_waiters_max: args.lock_waiters_max,
                watches_max: args.watches_max,
            },
            watch_history: args.watch_history,
            quotas: QuotaSettings {
                bytes: args.quota_bytes,
                locks: args.quota_locks,
                cache_keys: args.quota_cache_keys,
                queues: args.quota_queues,
            },
            security,
        })
    }

    /// This node as a member.
    pub fn own_member(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.name == self.name)
    }
}

/// The TLS files, secret and tokens, checked to fit together; a node bound beyond loopback
/// must protect node-to-node calls unless `SINKRON_INSECURE` says otherwise.
fn security_settings(args: &ServeArgs) -> Result<SecuritySettings, ConfigError> {
    let bad = |reason: &str| ConfigError::Security(reason.to_string());
    let tls = match (&args.tls_cert_file, &args.tls_key_file, &args.tls_ca_file) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => {
            Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
        }
        (Some(_), Some(_), None) => {
            return Err(bad("TLS_CA_FILE is needed with TLS_CERT_FILE: peers are verified against that CA"))
        }
        _ => return Err(bad("TLS needs all of TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE")),
    };
    let cluster_secret = args.cluster_secret.clone().filter(|s| !s.is_empty());
    if cluster_secret.as_ref().is_some_and(|s| s.chars().any(|c| c.is_whitespace() || c.is_control())) {
        return Err(bad("CLUSTER_SECRET must not contain spaces or control characters"));
    }
    let protected = tls.is_some() || cluster_secret.is_some();
    if args.auth_tokens_file.is_some() && !protected {
        return Err(bad("AUTH_TOKENS_FILE needs TLS or CLUSTER_SECRET as well: otherwise any caller could \
             pose as a node and bypass the tokens"));
    }
    if !protected && !args.insecure && !is_loopback_bind(&args.bind) {
        return Err(bad(&format!(
            "NODE_BIND {} is reachable from other machines but node-to-node calls are unprotected: \
             set TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE, or CLUSTER_SECRET \
             (or SINKRON_INSECURE=true to run unprotected anyway)",
            args.bind
        )));
    }
    Ok(SecuritySettings {
        tls,
        cluster_secret,
        tokens_file: args.auth_tokens_file.clone(),
        insecure: args.insecure,
    })
}

fn out_of_range(name: &'static str, reason: String) -> ConfigError {
    ConfigError::OutOfRange { name, reason }
}

/// Seconds as given by the user to whole milliseconds; positive, finite, at most a day.
fn seconds_to_ms(name: &'static str, seconds: f64) -> Result<u64, ConfigError> {
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(out_of_range(name, format!("must be between 0 and 86400 seconds, got {seconds}")));
    }
    let ms = (seconds * 1000.0).round() as u64;
    if ms == 0 {
        return Err(out_of_range(name, format!("must be at least 1 ms, got {seconds} s")));
    }
    Ok(ms)
}

/// Parses `CLUSTER_ADDRS`: comma-separated `[name=]host:port`.
pub fn parse_cluster_addrs(raw: &str) -> Result<Vec<Member>, ConfigError> {
    let mut members = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, entry) in raw.split(',').map(str::trim).enumerate() {
        let bad =
            |reason: &str| ConfigError::BadAddress { entry: entry.to_string(), reason: reason.to_string() };
        let (name, addr) = match entry.split_once('=') {
            Some((name, addr)) => (name.trim().to_string(), addr.trim()),
            None => (format!("node{}", i + 1), entry),
        };
        validate_node_name(&name).map_err(|e| bad(&e.to_string()))?;
        if addr.contains("://") || addr.contains('/') {
            return Err(bad("give host:port without a scheme or path"));
        }
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
            return Err(bad("missing host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("port must be a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port must be a number from 1 to 65535"));
        }
        for key in [name.clone(), addr.to_string()] {
            if !seen.insert(key.clone()) {
                return Err(ConfigError::Duplicate(key));
            }
        }
        members.push(Member { name, addr: addr.to_string() });
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["sinkron"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("parse").serve
    }

    /// A configuration with a cluster secret (the default bind is not loopback).
    fn config(extra: &[&str]) -> Result<NodeConfig, ConfigError> {
        let mut all = vec!["--cluster-secret", "a-test-secret-0123456789"];
        all.extend_from_slice(extra);
        NodeConfig::from_args(&args(&all))
    }

    #[test]
    fn a_reachable_node_must_protect_its_peers() {
        let err = NodeConfig::from_args(&args(&[])).expect_err("0.0.0.0 without TLS or secret");
        assert!(err.to_string().contains("NODE_BIND 0.0.0.0 is reachable"), "{err}");
        assert!(err.to_string().contains("SINKRON_INSECURE"), "{err}");
        let c = NodeConfig::from_args(&args(&["--insecure"])).expect("explicitly insecure");
        assert!(c.security.insecure && c.security.cluster_secret.is_none());
        let c = NodeConfig::from_args(&args(&["--bind", "127.0.0.1"])).expect("loopback");
        assert_eq!(c.security, SecuritySettings::default());
        let c = config(&[]).expect("a secret protects the peers");
        assert_eq!(c.security.cluster_secret.as_deref(), Some("a-test-secret-0123456789"));
        let tls = ["--tls-cert-file", "c.pem", "--tls-key-file", "k.pem", "--tls-ca-file", "ca.pem"];
        let c = NodeConfig::from_args(&args(&tls)).expect("TLS protects the peers");
        assert_eq!(c.security.tls.map(|t| t.ca), Some(PathBuf::from("ca.pem")));
        for (extra, want) in [
            (&tls[..4], "TLS_CA_FILE is needed"),
            (&tls[..2], "all of TLS_CERT_FILE"),
            (&tls[4..], "all of TLS_CERT_FILE"),
            (
                &["--bind", "127.0.0.1", "--auth-tokens-file", "t"][..],
                "AUTH_TOKENS_FILE needs TLS or CLUSTER_SECRET",
            ),
            (&["--cluster-secret", "has space"][..], "CLUSTER_SECRET must not"),
        ] {
            let err = NodeConfig::from_args(&args(extra)).expect_err(want).to_string();
            assert!(err.contains(want), "{extra:?}: {err}");
        }
    }

    #[test]
    fn defaults_are_the_specification_s() {
        // Clap reads the environment too; the test runner's environment has none of these.
        let c = config(&[]).expect("defaults are valid");
        assert_eq!(c.name, "node1");
        assert_eq!(c.listen, "0.0.0.0:8001");
        assert_eq!(c.members.len(), 3);
        assert_eq!(c.members[2], Member { name: "node3".into(), addr: "localhost:8003".into() });
        assert_eq!((c.election_timeout_min_ms, c.election_timeout_max_ms), (3000, 5000));
        assert_eq!(c.heartbeat_interval_ms, 1000);
        assert_eq!(c.cache_max_size, 1000);
        assert_eq!(c.lock_default_ttl_ms, 300_000);
        assert_eq!((c.redis.host.as_str(), c.redis.port, c.redis.tls), ("localhost", 6379, false));
        assert_eq!(c.data_dir, PathBuf::from("data/node1"));
    }

    #[test]
    fn named_entries_and_fractional_seconds() {
        let c = config(&[
            "--node-id",
            "b",
            "--node-port",
            "9002",
            "--cluster-addrs",
            "a=h1:9001, b=h2:9002",
            "--raft-election-timeout-min",
            "0.3",
            "--raft-election-timeout-max",
            "0.6",
            "--raft-heartbeat-interval",
            "0.05",
        ])
        .expect("valid");
        assert_eq!(c.own_member().map(|m| m.addr.as_str()), Some("h2:9002"));
        assert_eq!(
            (c.election_timeout_min_ms, c.election_timeout_max_ms, c.heartbeat_interval_ms),
            (300, 600, 50)
        );
    }

    #[test]
    fn invalid_settings_are_reported() {
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["--raft-election-timeout-min", "6"], "must be below RAFT_ELECTION_TIMEOUT_MAX"),
            (vec!["--raft-heartbeat-interval", "3"], "must be below RAFT_ELECTION_TIMEOUT_MIN"),
            (vec!["--raft-election-timeout-min=-1"], "RAFT_ELECTION_TIMEOUT_MIN must be between"),
            (vec!["--raft-election-timeout-max", "NaN"], "RAFT_ELECTION_TIMEOUT_MAX must be between"),
            (vec!["--cluster-addrs", "localhost:8001,localhost"], "missing :port"),
            (vec!["--cluster-addrs", "localhost:8001,localhost:99999"], "port must be a number"),
            (vec!["--cluster-addrs", "http://localhost:8001"], "without a scheme"),
            (vec!["--cluster-addrs", "localhost:8001,localhost:8001"], "twice"),
            (
                vec!["--cluster-addrs", "localhost:8002,localhost:8003"],
                "gives node1 the address localhost:8002",
            ),
            (vec!["--node-id", "node9"], "NODE_ID \"node9\" is not in CLUSTER_ADDRS"),
            (vec!["--node-id", "bad name"], "NODE_ID"),
            (vec!["--cache-max-size", "0"], "CACHE_MAX_SIZE"),
        ];
        for (argv, expected) in cases {
            let err = config(&argv).expect_err(&format!("{argv:?} must be rejected"));
            assert!(err.to_string().contains(expected), "{argv:?}: {err} lacks {expected:?}");
        }
    }
}
