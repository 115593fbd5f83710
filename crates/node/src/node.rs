//! [`Node`]: one Sinkron process, the composition root. It opens storage and the Raft
//! groups, builds the services over narrow handles ([`Group0`], [`Peers`], [`Queues`],
//! [`Cache`]), bootstraps the cluster exactly once, and shuts the groups down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{InitializeError, RaftError};
use sinkron_core::cache::CacheCommand;
use sinkron_core::{Group0State, Request};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::cache::{Cache, CacheService};
use crate::config::NodeConfig;
use crate::group::{spawn_leader_watch, GroupFactory};
use crate::group0::Group0;
use crate::peers::Peers;
use crate::queues::Queues;
use crate::quota::Quotas;
use crate::storage::state_machine::CacheSignal;
use crate::types::{Member, NodeId, Raft, GROUP0};
use crate::wire::ForwardedWrite;

/// How long a stopping node waits for leader appends still on their way to disk.
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(4);

/// A running node.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<NodeConfig>,
    /// Group 0: writes, read barriers, members.
    pub group0: Group0,
    /// This node's MESI cache.
    pub cache: Cache,
    cache_outbox: std::sync::Mutex<Option<UnboundedReceiver<CacheCommand>>>,
    /// The queue service and the partition groups it hosts.
    pub queues: Queues,
    /// This node's calls to its peers (and the fault-injection cut).
    pub peers: Peers,
    /// Caps on waiting receives and lock acquires.
    pub waiting: crate::admission::Waiting,
    /// Continuity of the snapshot chunks being received.
    pub snapshot_chunks: crate::admission::SnapshotChunks,
    /// Quotas on stored state.
    pub quotas: Arc<Quotas>,
    /// What this node accepts from callers and presents to its peers.
    pub security: Arc<crate::security::Security>,
}

impl Node {
    /// Opens storage and starts the Raft groups. The cluster is formed later by
    /// [`Node::bootstrap`], once the HTTP server listens.
    pub async fn open(
        config: NodeConfig,
        security: Arc<crate::security::Security>,
    ) -> anyhow::Result<Arc<Self>> {
        let config = Arc::new(config);
        let source = config
            .listen
            .rsplit_once(':')
            .and_then(|(host, _)| host.parse::<std::net::IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        // Idle pooled connections are dropped well before a peer's server would close them
        // (its idle timeout), so a call never goes out on a connection being closed.
        let peers = Peers::new(source, Duration::from_millis(config.limits.idle_timeout_ms / 2), &security)?;
        let (service, cache_outbox) = CacheService::new(
            &config.name,
            config.cache_max_size as usize,
            Duration::from_millis(config.election_timeout_min_ms),
            Duration::from_millis(config.cache_writeback_max_ms),
            config.cache_write_policy,
        );
        let factory = GroupFactory::new(config.clone(), peers.clone())?;
        let hook = service.clone();
        let group = factory
            .open(GROUP0, Group0State::default(), 0, |sm| {
                sm.set_cache_hook(Arc::new(move |signal| match signal {
                    CacheSignal::Events(events) => hook.on_applied(events),
                    CacheSignal::SnapshotInstalled => hook.on_snapshot_installed(),
                }));
            })
            .await
            .context("start Raft group 0")?;
        spawn_leader_watch(&group.raft);
        group.sm.kv_feed().set_capacity(config.watch_history);
        let group0 = Group0::new(group, peers.clone(), &config.name);
        let q = config.quotas;
        let quotas = Arc::new(Quotas::new(q.bytes, q.locks, q.cache_keys, q.queues));
        let queues = Queues::new(group0.clone(), factory, quotas.clone(), config.clone());
        Ok(Arc::new(Self {
            waiting: crate::admission::Waiting::new(&config.limits),
            config,
            cache: Cache::new(service, group0.clone()),
            cache_outbox: std::sync::Mutex::new(Some(cache_outbox)),
            group0,
            queues,
            peers,
            snapshot_chunks: Default::default(),
            quotas,
            security,
        }))
    }

    /// The Raft instance of group `id`, if this node hosts it.
    pub fn raft_of(&self, id: crate::types::GroupId) -> Option<Raft> {
        if id == GROUP0 {
            return Some(self.group0.raft().clone());
        }
        self.queues.partitions().get_group(id).map(|g| g.raft.clone())
    }

    /// Proposes requests forwarded by other nodes to group `id`; this node should lead it.
    pub async fn write_forwarded(
        &self,
        id: crate::types::GroupId,
        requests: Vec<Request>,
        deadline: Instant,
    ) -> Option<Vec<ForwardedWrite>> {
        if id == GROUP0 {
            return Some(self.group0.group().proposer.submit_all(requests, deadline).await);
        }
        let group = self.queues.partitions().get_group(id)?;
        Some(group.proposer.submit_all(requests, deadline).await)
    }

    /// Forms the cluster if this node is pristine and no peer already did; never on restart.
    pub async fn bootstrap(self: Arc<Self>) {
        let raft = self.group0.raft();
        if self.config.join {
            tracing::info!("join mode: waiting to be added through POST /v1/cluster/members");
            return;
        }
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => return tracing::error!(error = %e, "cannot tell whether the cluster exists"),
        }
        for peer in self.config.members.iter().filter(|m| m.name != self.config.name) {
            if self.peers.is_initialized(peer).await {
                tracing::info!(peer = %peer, "a peer already belongs to a cluster; not bootstrapping");
                return;
            }
        }
        let members: BTreeMap<NodeId, Member> =
            self.config.members.iter().map(|m| (sinkron_core::ids::raft_id(&m.name), m.clone())).collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(members = self.config.members.len(), "initialized the cluster"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => tracing::error!(error = %e, "failed to initialize the cluster"),
        }
    }

    /// The receiver of the cache's follow-up proposals (taken once, by the cache task).
    pub fn take_cache_outbox(&self) -> Option<UnboundedReceiver<CacheCommand>> {
        self.cache_outbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Stops the Raft groups. Everything acknowledged to a client is already on disk. A
    /// leader's appends may still be on their way to it (reported to openraft before their
    /// fsync, see `storage::durability`): the stop waits a little for those too, so a clean
    /// restart loses none of them. The log writer thread ends once the last handle to its
    /// log is dropped.
    pub async fn shutdown(&self) {
        // One deadline for all: with the request grace before it, the whole stop stays
        // within the 10 s that `sinkron dev` and service managers give before they kill.
        let deadline = Instant::now() + SHUTDOWN_FLUSH_LIMIT;
        let partitions = self.queues.partitions().take_all();
        let stops = partitions.iter().map(|group| group.stop(deadline));
        futures_util::future::join(futures_util::future::join_all(stops), self.group0.group().stop(deadline))
            .await;
    }
}
