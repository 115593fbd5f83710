//! Node-to-node RPC, client side: openraft's `RaftNetwork` over HTTP with JSON bodies.
//!
//! One pooled keep-alive HTTP client per node is shared by every peer connection of every
//! group. Each call carries openraft's deadline as its timeout, so a peer that is down costs a
//! bounded wait and never blocks the node. Paths carry the group id: `/raft/{group}/append`.

use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{GroupId, Member, NodeId, TypeConfig};

/// Cuts this node off from its peers, for fault-injection tests: while set, every
/// node-to-node call fails at once and every incoming Raft RPC is refused. Only reachable
/// when the node runs with `SINKRON_FAULT_INJECTION=1`.
#[derive(Debug, Clone, Default)]
pub struct Isolation(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Isolation {
    /// Whether the node is cut off.
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cuts the node off (`true`) or reconnects it.
    pub fn set(&self, isolated: bool) {
        self.0.store(isolated, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Builds the HTTP client used for every node-to-node call. With a specific `source`
/// address (the node binds one IP rather than all), calls leave from it, so peers and
/// network tools can tell the nodes of one host apart.
pub fn http_client(source: Option<std::net::IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Creates [`PeerClient`]s for one Raft group.
#[derive(Clone)]
pub struct HttpNetworkFactory {
    /// The group whose RPCs this factory carries.
    pub group: GroupId,
    /// Shared pooled HTTP client.
    pub client: reqwest::Client,
    /// Fault injection: fail every call while set.
    pub isolation: Isolation,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            group: self.group,
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
            isolation: self.isolation.clone(),
        }
    }
}

/// The RPC connection of one group to one peer.
pub struct PeerClient {
    group: GroupId,
    target: NodeId,
    addr: String,
    client: reqwest::Client,
    isolation: Isolation,
}

/// Failure of a call before the peer's Raft answered.
enum CallError {
    /// The peer could not be reached at all (refused, timed out connecting).
    Unreachable(reqwest::Error),
    /// The peer was reached but the exchange failed.
    Network(String),
}

impl PeerClient {
    async fn call<Req, Resp>(
        &self,
        rpc: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        if self.isolation.is_set() {
            return Err(CallError::Network("isolated by fault injection".into()));
        }
        let url = format!("http://{}/raft/{}/{rpc}", self.addr, self.group);
        let started = Instant::now();
        let sent = self.client.post(url).json(req).timeout(timeout).send().await;
        let outcome = match sent {
            Err(e) if e.is_connect() || e.is_timeout() => Err(CallError::Unreachable(e)),
            Err(e) => Err(CallError::Network(e.to_string())),
            Ok(resp) if !resp.status().is_success() => {
                Err(CallError::Network(format!("peer answered HTTP {}", resp.status())))
            }
            Ok(resp) => resp.json::<Resp>().await.map_err(|e| CallError::Network(e.to_string())),
        };
        let status = if outcome.is_ok() { "ok" } else { "error" };
        crate::metrics::record_rpc(rpc, status, started.elapsed());
        outcome
    }

    fn lift<T, E>(&self, r: Result<Result<T, E>, CallError>) -> Result<T, RPCError<NodeId, Member, E>>
    where
        E: std::error::Error,
    {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(CallError::Unreachable(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(CallError::Network(msg)) => {
                Err(RPCError::Network(NetworkError::new(&std::io::Error::other(msg))))
            }
        }
    }
}

type RaftResult<T, E = openraft::error::Infallible> = Result<T, RaftError<NodeId, E>>;

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let r: Result<RaftResult<AppendEntriesResponse<NodeId>>, _> =
            self.call("append", &rpc, option.hard_ttl()).await;
        self.lift(r)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let r: Result<RaftResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError>, _> =
            self.call("snapshot", &rpc, option.hard_ttl()).await;
        self.lift(r)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let r: Result<RaftResult<VoteResponse<NodeId>>, _> = self.call("vote", &rpc, option.hard_ttl()).await;
        self.lift(r)
    }
}
