//! Node-to-node RPC, client side: openraft's `RaftNetwork` over HTTP with JSON bodies.
//!
//! Appends, heartbeats and votes of every group travel on the node's one batched stream per
//! peer (`crate::peer_stream`, `POST /raft/batch`); snapshot chunks on calls of their own
//! (`/raft/{group}/snapshot`). One pooled keep-alive HTTP client per node carries both. Each
//! call carries openraft's deadline as its timeout, so a peer that is down costs a bounded
//! wait and never blocks the node.

use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::peer_stream::{post_json, CallError, Streams};
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

/// How long a refused Raft call keeps its group reported by `/ready`.
pub const REFUSAL_REPORT_WINDOW: Duration = Duration::from_secs(10);
/// Most (group, peer, direction) refusals remembered; the group id of an incoming call
/// comes from its path, so the table must not grow with what a caller invents.
const REFUSALS_MAX: usize = 256;
/// Least time between two log lines about one peer's refusals, whatever the group.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Which side refused a Raft call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// A peer refused a call of this node.
    ByPeer,
    /// This node refused a peer's call.
    ByUs,
}

/// The last refusal of one kind.
#[derive(Debug, Clone)]
struct Refusal {
    at: Instant,
    status: u16,
    rpc: String,
    count: u64,
}

/// Raft calls answered with a client error (4xx other than 404): a bug or an attack, never
/// a slow link. Kept so `/ready` can say which group cannot replicate and why.
#[derive(Debug, Clone, Default)]
pub struct PeerRefusals(std::sync::Arc<std::sync::Mutex<Refusals>>);

#[derive(Debug, Default)]
struct Refusals {
    by_kind: std::collections::BTreeMap<(GroupId, String, Direction), Refusal>,
    /// Per peer: when a refusal was last logged, and how many were not logged since.
    logged: std::collections::BTreeMap<String, (Option<Instant>, u64)>,
}

impl PeerRefusals {
    /// Records that `peer` (a node name or address) refused, or had refused by us, a `rpc`
    /// call of `group` with `status`.
    pub fn record(&self, group: GroupId, peer: &str, direction: Direction, rpc: &str, status: u16) {
        let by = match direction {
            Direction::ByPeer => "peer",
            Direction::ByUs => "this_node",
        };
        crate::metrics::record_peer_refusal(by, status);
        let mut refusals = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let table = &mut refusals.by_kind;
        let key = (group, peer.to_string(), direction);
        if table.len() >= REFUSALS_MAX && !table.contains_key(&key) {
            table.retain(|_, r| r.at.elapsed() < REFUSAL_REPORT_WINDOW);
            if table.len() >= REFUSALS_MAX {
                return;
            }
        }
        let count = table.get(&key).map_or(0, |r| r.count) + 1;
        table.insert(key, Refusal { at: Instant::now(), status, rpc: rpc.into(), count });
    }

    /// The groups with a refusal in the last [`REFUSAL_REPORT_WINDOW`], each with a sentence.
    pub fn recent(&self) -> Vec<(GroupId, String)> {
        let refusals = self.0.lock().unwrap_or_else(|e| e.into_inner());
        refusals
            .by_kind
            .iter()
            .filter(|(_, r)| r.at.elapsed() < REFUSAL_REPORT_WINDOW)
            .map(|((group, peer, direction), r)| {
                let who = match direction {
                    Direction::ByPeer => format!("{peer} refused this node's"),
                    Direction::ByUs => format!("this node refused {peer}'s"),
                };
                let text = format!(
                    "group {group} cannot replicate: {who} {} calls with HTTP {} ({} times, last {} ms ago)",
                    r.rpc,
                    r.status,
                    r.count,
                    r.at.elapsed().as_millis()
                );
                (*group, text)
            })
            .collect()
    }

    /// Whether a refusal by `peer` should be logged now (at most one line a
    /// [`REFUSAL_LOG_INTERVAL`] per peer, whatever the group); with how many went unlogged.
    fn log_now(&self, peer: &str) -> Option<u64> {
        let mut refusals = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if refusals.logged.len() >= REFUSALS_MAX && !refusals.logged.contains_key(peer) {
            refusals.logged.retain(|_, (at, _)| at.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL));
        }
        let entry = refusals.logged.entry(peer.to_string()).or_insert((None, 0));
        if entry.0.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
            entry.1 += 1;
            return None;
        }
        let unlogged = entry.1;
        *entry = (Some(Instant::now()), 0);
        Some(unlogged)
    }
}

/// Creates [`PeerClient`]s for one Raft group.
#[derive(Clone)]
pub struct HttpNetworkFactory {
    /// The group whose RPCs this factory carries.
    pub group: GroupId,
    /// The group log's leader appends not yet durable.
    pub durability: crate::storage::Durability,
    /// Shared pooled HTTP client (snapshots).
    pub client: crate::peer_http::PeerHttp,
    /// The node's batched streams to its peers (appends, heartbeats, votes).
    pub streams: Streams,
    /// Fault injection: fail every call while set.
    pub isolation: Isolation,
    /// Where refused calls are reported.
    pub refusals: PeerRefusals,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            group: self.group,
            durability: self.durability.clone(),
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
            streams: self.streams.clone(),
            isolation: self.isolation.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

/// The RPC connection of one group to one peer.
pub struct PeerClient {
    group: GroupId,
    /// The group log's leader appends not yet durable: a commit index is announced only
    /// once this node holds the entries it covers durably (see `storage::durability`).
    durability: crate::storage::Durability,
    target: NodeId,
    addr: String,
    client: crate::peer_http::PeerHttp,
    streams: Streams,
    isolation: Isolation,
    refusals: PeerRefusals,
}

impl PeerClient {
    /// Runs one call (`outcome`, not started yet) unless fault injection isolates this
    /// node; reports a refusal and records the call's metrics.
    async fn call<Resp>(
        &self,
        rpc: &'static str,
        outcome: impl std::future::Future<Output = Result<Resp, CallError>>,
    ) -> Result<Resp, CallError> {
        if self.isolation.is_set() {
            return Err(CallError::Network("isolated by fault injection".into()));
        }
        let started = Instant::now();
        let outcome = outcome.await;
        if let Err(CallError::Refused(status, detail)) = &outcome {
            self.report_refusal(rpc, *status, detail);
        }
        let status = if outcome.is_ok() { "ok" } else { "error" };
        crate::metrics::record_rpc(rpc, status, started.elapsed());
        outcome
    }

    /// Through the peer's batched stream, with every group's other calls to it.
    async fn streamed<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = serde_json::value::to_raw_value(req).map_err(|e| CallError::Network(e.to_string()))?;
        let reply = self.streams.call(&self.addr, self.group, rpc, body, timeout).await?;
        serde_json::from_str(reply.get()).map_err(|e| CallError::Network(e.to_string()))
    }

    /// Counts a refused call and logs it, at most once a [`REFUSAL_LOG_INTERVAL`] per peer
    /// (every group's leader retries a refused append a few times a second).
    fn report_refusal(&self, rpc: &str, status: u16, detail: &str) {
        self.refusals.record(self.group, &self.addr, Direction::ByPeer, rpc, status);
        let Some(unlogged) = self.refusals.log_now(&self.addr) else {
            return;
        };
        let detail: String = detail.chars().take(300).collect();
        tracing::error!(
            group = self.group,
            peer = %self.addr,
            rpc,
            status,
            detail = %detail,
            also_refused_since_last_line = unlogged,
            "a peer refused a Raft call; the two nodes disagree on what is valid (a bug or a foreign caller)"
        );
    }

    fn lift<T, E>(&self, r: Result<Result<T, E>, CallError>) -> Result<T, RPCError<NodeId, Member, E>>
    where
        E: std::error::Error,
    {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(CallError::Unreachable(msg)) => {
                Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg))))
            }
            Err(CallError::Network(msg)) => {
                Err(RPCError::Network(NetworkError::new(&std::io::Error::other(msg))))
            }
            // Unreachable makes openraft back off before it sends again; a network error
            // would be retried at once, forever.
            Err(CallError::Refused(status, _)) => Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(format!("peer refused the call with HTTP {status}")),
            ))),
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
        let entries = rpc.entries.len() as u64;
        if let Some(commit) = rpc.leader_commit {
            if let Err(e) = self.durability.wait_through(commit.index).await {
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        }
        let r: Result<RaftResult<AppendEntriesResponse<NodeId>>, _> =
            self.call("append", self.streamed("append", &rpc, option.hard_ttl())).await;
        // A batch the peer found too large is sent again at once in halves; a single entry
        // too large cannot be split and backs off like any refusal.
        if matches!(r, Err(CallError::Refused(413, _))) && entries > 1 {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2)));
        }
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
        // Snapshot chunks go on calls of their own: they must not hold up the stream.
        let url = self.client.url(&self.addr, &format!("/raft/{}/snapshot", self.group));
        let r: Result<RaftResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError>, _> =
            self.call("snapshot", post_json(&self.client.client, &url, &rpc, option.hard_ttl())).await;
        self.lift(r)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let r: Result<RaftResult<VoteResponse<NodeId>>, _> =
            self.call("vote", self.streamed("vote", &rpc, option.hard_ttl())).await;
        self.lift(r)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::AppendEntriesRequest;
    use openraft::{CommittedLeaderId, LogId, Vote};

    use crate::storage::Durability;
    use crate::types::Member;

    /// Whether `task` is still waiting after the scheduler had every chance to finish it.
    async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        !task.is_finished()
    }

    #[tokio::test]
    async fn a_commit_index_goes_out_only_once_the_leader_holds_it_durably() {
        let security = crate::security::Security {
            tls: None,
            cluster_secret: None,
            tokens: None,
            node_name: "node1".into(),
        };
        let peers = crate::peers::Peers::new(None, Duration::from_secs(1), &security).expect("peers");
        let durability = Durability::default();
        let mut factory = peers.raft_network(1, durability.clone());
        // Nobody listens there: once the call leaves, it fails at once.
        let peer = Member { name: "node2".into(), addr: "127.0.0.1:1".into() };
        let mut client = factory.new_client(2, &peer).await;
        let mark = durability.mark(5);
        let commit = |index| Some(LogId::new(CommittedLeaderId::new(3, 1), index));

        // A commit index below the pending append goes out at once.
        let below = AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            leader_commit: commit(4),
            entries: vec![],
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            client.append_entries(below, RPCOption::new(Duration::from_secs(1))),
        )
        .await;
        assert!(sent.is_ok(), "a commit index the leader holds durably was held back");

        // One that covers it waits for the leader's fsync.
        let covering = AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            leader_commit: commit(5),
            entries: vec![],
        };
        let call = tokio::spawn(async move {
            client.append_entries(covering, RPCOption::new(Duration::from_secs(1))).await.is_ok()
        });
        assert!(still_waiting(&call).await, "a commit index went out before the leader's fsync");
        mark.complete(Ok(()));
        let answered = tokio::time::timeout(Duration::from_secs(10), call).await;
        assert!(
            matches!(answered, Ok(Ok(false))),
            "the call should go out, and fail with nobody there: {answered:?}"
        );
    }
}
