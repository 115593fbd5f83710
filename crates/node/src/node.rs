//! [`Node`]: one Sinkron process. It owns the Raft groups, proposes commands, forwards what
//! only the leader may do, and bootstraps the cluster exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use sinkron_core::{Command, Request, Response};
use tokio::time::timeout;

use crate::api::error::ApiError;
use crate::cache::CacheService;
pub use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::config::StorageBackend;
use crate::network::{http_client, HttpNetworkFactory, Isolation, PeerRefusals};
use crate::proposer::Batcher;
use crate::storage::redis as redis_store;
use crate::storage::state_machine::CacheSignal;
use crate::storage::{LogStore, Machine, StateMachineStore};
use crate::types::{GroupId, Member, NodeId, Raft, GROUP0};
use sinkron_core::Group0State;

/// Pause before retrying after a leader change or an unreachable leader.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// One Raft group hosted by this node.
pub struct Group<S: Machine = Group0State> {
    /// The Raft instance.
    pub raft: Raft,
    /// Its durable log.
    pub log: LogStore,
    /// Its applied state.
    pub sm: StateMachineStore<S>,
    /// Batches client requests into entries (used while this node leads).
    pub proposer: Batcher,
    /// Batches client requests to the leader (used while another node leads).
    pub forwarder: Batcher,
}

/// Where the leader of a group is, seen from this node.
pub enum Leader {
    /// This node leads.
    Local,
    /// Another node leads.
    Remote(Member),
}

/// How the leader answers a write forwarded to it.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardedWrite {
    /// Applied; the state machine's reply and the log index of the entry that carried it.
    Applied(Response, u64),
    /// The receiver is not (or no longer) the leader.
    NotLeader,
    /// No quorum acknowledged it in time; it may still commit.
    Timeout,
    /// The write was refused for another reason.
    Failed(String),
}

/// How the leader answers a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReadIndex {
    /// Reads are linearizable once the asker has applied this index.
    Index(u64),
    /// The receiver is not (or no longer) the leader.
    NotLeader,
    /// The leader could not confirm its leadership with a quorum in time.
    Timeout,
}

/// A running node.
pub struct Node {
    /// Validated configuration.
    pub config: NodeConfig,
    /// This node's MESI cache.
    pub cache: Arc<CacheService>,
    cache_outbox:
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<sinkron_core::cache::CacheCommand>>>,
    group0: Group,
    /// The queue partition groups this node hosts.
    pub partitions: crate::queues::Partitions,
    raft_config: Arc<openraft::Config>,
    pub(crate) http: reqwest::Client,
    /// Fault injection: cut off from the peers while set.
    pub isolation: Isolation,
    /// Raft calls refused with a client error, for `/ready`.
    pub refusals: PeerRefusals,
    /// Caps on waiting receives and lock acquires.
    pub waiting: crate::admission::Waiting,
    /// Continuity of the snapshot chunks being received.
    pub snapshot_chunks: crate::admission::SnapshotChunks,
    /// Quotas on stored state.
    pub quotas: crate::quota::Quotas,
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Node {
    /// Opens storage and starts the Raft groups. The cluster is formed later by
    /// [`Node::bootstrap`], once the HTTP server listens.
    pub async fn open(config: NodeConfig) -> anyhow::Result<Arc<Self>> {
        let source = config
            .listen
            .rsplit_once(':')
            .and_then(|(host, _)| host.parse::<std::net::IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        // Idle pooled connections are dropped well before a peer's server would close them
        // (its idle timeout), so a call never goes out on a connection being closed.
        let http = http_client(source, Duration::from_millis(config.limits.idle_timeout_ms / 2));
        let (cache, cache_outbox) = CacheService::new(
            &config.name,
            config.cache_max_size as usize,
            Duration::from_millis(config.election_timeout_min_ms),
            Duration::from_millis(config.cache_writeback_max_ms),
            config.cache_write_policy,
        );
        let raft_config = Arc::new(
            openraft::Config {
                cluster_name: "sinkron".into(),
                heartbeat_interval: config.heartbeat_interval_ms,
                election_timeout_min: config.election_timeout_min_ms,
                election_timeout_max: config.election_timeout_max_ms,
                install_snapshot_timeout: 5_000,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
                max_in_snapshot_log_to_keep: config.snapshot_logs.min(1_000),
                snapshot_max_chunk_size: 256 * 1024,
                // An entry is a batch of up to BATCH_BYTES_MAX bytes of requests; keep one
                // AppendEntries well under the RPC body limit.
                max_payload_entries: 16,
                ..Default::default()
            }
            .validate()
            .context("derive the Raft configuration")?,
        );
        let isolation = Isolation::default();
        let refusals = PeerRefusals::default();
        let hook = cache.clone();
        let network = HttpNetworkFactory {
            group: GROUP0,
            client: http.clone(),
            isolation: isolation.clone(),
            refusals: refusals.clone(),
        };
        let group0 = start_group(&config, &raft_config, network, Group0State::default(), |sm| {
            sm.set_cache_hook(Arc::new(move |signal| match signal {
                CacheSignal::Events(events) => hook.on_applied(events),
                CacheSignal::SnapshotInstalled => hook.on_snapshot_installed(),
            }));
        })
        .await
        .context("start Raft group 0")?;
        spawn_leader_watch(&group0.raft);
        let waiting = crate::admission::Waiting::new(&config.limits);
        let q = config.quotas;
        let quotas = crate::quota::Quotas::new(q.bytes, q.locks, q.cache_keys, q.queues);
        Ok(Arc::new(Self {
            config,
            cache,
            cache_outbox: std::sync::Mutex::new(Some(cache_outbox)),
            group0,
            partitions: crate::queues::Partitions::default(),
            raft_config,
            http,
            isolation,
            refusals,
            waiting,
            snapshot_chunks: Default::default(),
            quotas,
        }))
    }

    /// Opens the storage of group `id` and starts its Raft instance. `rank` is this node's
    /// place in the group's preferred order: each rank waits half an election-timeout range
    /// longer before it campaigns, so the preferred replica usually leads and leadership
    /// spreads over the nodes as the ring spreads preferences.
    pub(crate) async fn start_group<S: Machine>(
        &self,
        id: GroupId,
        initial: S,
        rank: u64,
    ) -> anyhow::Result<Group<S>> {
        let mut config = (*self.raft_config).clone();
        let shift = rank.min(4) * (config.election_timeout_max - config.election_timeout_min) / 2;
        config.election_timeout_min += shift;
        config.election_timeout_max += shift;
        let config = Arc::new(config);
        let network = HttpNetworkFactory {
            group: id,
            client: self.http.clone(),
            isolation: self.isolation.clone(),
            refusals: self.refusals.clone(),
        };
        start_group(&self.config, &config, network, initial, |_| {}).await
    }

    /// The Raft instance of group `id`, if this node hosts it.
    pub fn raft_of(&self, id: GroupId) -> Option<Raft> {
        if id == GROUP0 {
            return Some(self.group0.raft.clone());
        }
        self.partitions.get_group(id).map(|g| g.raft.clone())
    }

    /// Group 0.
    pub fn group0(&self) -> &Group {
        &self.group0
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Forms the cluster if this node is pristine and no peer already did; never on restart.
    pub async fn bootstrap(self: Arc<Self>) {
        let raft = &self.group0().raft;
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
            if self.peer_is_initialized(peer).await {
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

    async fn peer_is_initialized(&self, peer: &Member) -> bool {
        if self.isolation.is_set() {
            return false;
        }
        let url = format!("http://{}/v1/cluster", peer.addr);
        let Ok(resp) = self.http.get(url).timeout(Duration::from_millis(500)).send().await else {
            return false;
        };
        let Ok(body) = resp.json::<serde_json::Value>().await else { return false };
        body.get("initialized").and_then(|v| v.as_bool()).unwrap_or(false)
    }

    /// Where group 0's leader is, waiting for one until `deadline`.
    pub async fn leader(&self, deadline: Instant) -> Result<Leader, ApiError> {
        leader_of(&self.group0().raft, self.config.raft_id, deadline).await
    }

    /// Proposes `command` to group 0 through its leader and returns the state machine's reply.
    pub async fn write(&self, command: Command, request_id: Option<String>) -> Result<Response, ApiError> {
        self.write_at(command, request_id).await.map(|(reply, _)| reply)
    }

    /// Like [`Node::write`], also returning the log index of the entry that applied it.
    pub async fn write_at(
        &self,
        command: Command,
        request_id: Option<String>,
    ) -> Result<(Response, u64), ApiError> {
        let deadline = Instant::now() + self.request_timeout();
        // Every proposal carries an id, so a retry after a lost reply applies only once.
        let request = Request { request_id: Some(request_id.unwrap_or_else(new_request_id)), command };
        self.submit_to(self.group0(), request, deadline).await
    }

    /// Proposes `request` to `group` through its leader (here, or forwarded in a batch) and
    /// returns the reply with the index of the entry that applied it.
    pub async fn submit_to<S: Machine>(
        &self,
        group: &Group<S>,
        request: Request,
        deadline: Instant,
    ) -> Result<(Response, u64), ApiError> {
        loop {
            let outcome = match leader_of(&group.raft, self.config.raft_id, deadline).await? {
                Leader::Local => group.proposer.submit(request.clone(), deadline).await,
                Leader::Remote(_) => group.forwarder.submit(request.clone(), deadline).await,
            };
            match outcome {
                ForwardedWrite::Applied(reply, index) => return Ok((reply, index)),
                ForwardedWrite::Failed(reason) => return Err(ApiError::Unavailable(reason)),
                ForwardedWrite::Timeout => return Err(self.timed_out(&group.log)),
                ForwardedWrite::NotLeader if Instant::now() >= deadline => {
                    return Err(self.timed_out(&group.log))
                }
                ForwardedWrite::NotLeader => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    /// Proposes `requests` to `group` in this order (they share entries where they can);
    /// one outcome per request. Requests the leader did not take are retried, still in
    /// order, until `deadline`.
    pub async fn submit_all_to<S: Machine>(
        &self,
        group: &Group<S>,
        requests: Vec<Request>,
        deadline: Instant,
    ) -> Vec<Result<Response, ApiError>> {
        let mut outcomes: Vec<Option<Result<Response, ApiError>>> =
            (0..requests.len()).map(|_| None).collect();
        loop {
            let open: Vec<usize> = (0..requests.len()).filter(|i| outcomes[*i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let batch: Vec<Request> = open.iter().map(|i| requests[*i].clone()).collect();
            let answers = match leader_of(&group.raft, self.config.raft_id, deadline).await {
                Ok(Leader::Local) => group.proposer.submit_all(batch, deadline).await,
                Ok(Leader::Remote(_)) => group.forwarder.submit_all(batch, deadline).await,
                Err(e) => {
                    for i in open {
                        outcomes[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            };
            let mut retry = false;
            for (i, answer) in open.into_iter().zip(answers) {
                outcomes[i] = match answer {
                    ForwardedWrite::Applied(reply, _) => Some(Ok(reply)),
                    ForwardedWrite::Failed(reason) => Some(Err(ApiError::Unavailable(reason))),
                    ForwardedWrite::Timeout => Some(Err(self.timed_out(&group.log))),
                    ForwardedWrite::NotLeader if Instant::now() >= deadline => {
                        Some(Err(self.timed_out(&group.log)))
                    }
                    ForwardedWrite::NotLeader => {
                        retry = true;
                        None
                    }
                };
            }
            if retry {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(self.timed_out(&group.log)))).collect()
    }

    /// Why a write timed out: this node's storage outage if there is one, else no quorum.
    fn timed_out(&self, log: &LogStore) -> ApiError {
        match log.health().problem() {
            Some(problem) => ApiError::Unavailable(problem),
            None => no_quorum_for_write(self.request_timeout()),
        }
    }

    /// Proposes `command` on this node only, never forwarding it: fails unless this node
    /// is the leader.
    pub async fn write_here(&self, command: Command) -> Result<Response, ApiError> {
        let deadline = Instant::now() + self.request_timeout();
        let request = Request { request_id: None, command };
        match self.group0().proposer.submit(request, deadline).await {
            ForwardedWrite::Applied(reply, _) => Ok(reply),
            ForwardedWrite::NotLeader => Err(ApiError::Unavailable("this node is not the leader".into())),
            ForwardedWrite::Timeout => Err(self.timed_out(&self.group0().log)),
            ForwardedWrite::Failed(reason) => Err(ApiError::Unavailable(reason)),
        }
    }

    /// Proposes requests forwarded by other nodes to group `id`; this node should lead it.
    pub async fn write_forwarded(
        &self,
        id: GroupId,
        requests: Vec<Request>,
        deadline: Instant,
    ) -> Option<Vec<ForwardedWrite>> {
        if id == GROUP0 {
            return Some(self.group0().proposer.submit_all(requests, deadline).await);
        }
        let group = self.partitions.get_group(id)?;
        Some(group.proposer.submit_all(requests, deadline).await)
    }

    /// Waits until this node's state machine reflects every write completed before the call:
    /// ReadIndex through the leader, then a wait for the local apply.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let outcome = match self.leader(deadline).await? {
                Leader::Local => self.read_index_local(deadline).await,
                Leader::Remote(leader) => self.forward_read_index(&leader, deadline).await,
            };
            match outcome {
                ReadIndex::Index(index) => return self.wait_applied(index, deadline).await,
                ReadIndex::Timeout => return Err(self.no_quorum_for_read()),
                ReadIndex::NotLeader if Instant::now() >= deadline => return Err(self.no_quorum_for_read()),
                ReadIndex::NotLeader => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    fn no_quorum_for_read(&self) -> ApiError {
        ApiError::NoQuorum(format!(
            "no leader confirmed by a quorum within {} ms; retry later",
            self.config.request_timeout_ms
        ))
    }

    /// On the leader: confirms leadership with a quorum and returns the index reads must see.
    pub async fn read_index_local(&self, deadline: Instant) -> ReadIndex {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match timeout(remaining, self.group0().raft.ensure_linearizable()).await {
            Err(_) => ReadIndex::Timeout,
            Ok(Ok(log_id)) => ReadIndex::Index(log_id.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => ReadIndex::NotLeader,
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => ReadIndex::NotLeader,
            Ok(Err(RaftError::Fatal(_))) => ReadIndex::Timeout,
        }
    }

    async fn forward_read_index(&self, leader: &Member, deadline: Instant) -> ReadIndex {
        if self.isolation.is_set() {
            tokio::time::sleep(RETRY_PAUSE).await;
            return ReadIndex::NotLeader;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let url = format!("http://{}/raft/{GROUP0}/read-index", leader.addr);
        match self.http.post(url).timeout(remaining).send().await {
            Ok(resp) if resp.status().is_success() => {
                resp.json::<ReadIndex>().await.unwrap_or(ReadIndex::NotLeader)
            }
            _ => ReadIndex::NotLeader,
        }
    }

    /// Waits until this node has applied log index `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ApiError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.group0()
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| ApiError::NoQuorum(format!("this node did not catch up to index {index} in time")))
    }

    /// Adds a member: as a learner first (it catches up), then as a voter (joint consensus).
    /// Must run on the leader.
    pub async fn add_member(&self, member: Member) -> Result<(), ApiError> {
        let raft = &self.group0().raft;
        let id = sinkron_core::ids::raft_id(&member.name);
        let membership = raft.metrics().borrow().membership_config.clone();
        if let Some(existing) = membership.membership().get_node(&id) {
            if existing.name != member.name {
                return Err(ApiError::Conflict(format!(
                    "node {} has the same Raft id as {}; choose another name",
                    member.name, existing.name
                )));
            }
        }
        let limit = self.request_timeout() * 2;
        let added = timeout(limit, raft.add_learner(id, member.clone(), true)).await;
        membership_outcome(added, "add the learner")?;
        // Name only the voter to add, so concurrent changes cannot undo each other.
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        let changed = timeout(limit, raft.change_membership(change, false)).await;
        membership_outcome(changed, "promote the learner to voter")
    }

    /// Removes a member entirely. Must run on the leader.
    pub async fn remove_member(&self, name: &str) -> Result<(), ApiError> {
        let raft = &self.group0().raft;
        let id = sinkron_core::ids::raft_id(name);
        let membership = raft.metrics().borrow().membership_config.clone();
        if membership.membership().get_node(&id).is_none() {
            return Err(ApiError::NotFound(format!("{name} is not a member")));
        }
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        if voters.len() == 1 && voters.contains(&id) {
            return Err(ApiError::InvalidArgument(format!("{name} is the last voter; a cluster needs one")));
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let changed = timeout(self.request_timeout() * 2, raft.change_membership(change, false)).await;
        membership_outcome(changed, "remove the member")
    }

    /// Sends a public API request to the leader and returns its status and body unchanged.
    pub async fn proxy_to_leader(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let deadline = Instant::now() + self.request_timeout();
        let Leader::Remote(leader) = self.leader(deadline).await? else {
            return Err(ApiError::Unavailable("leadership moved here while forwarding; retry".into()));
        };
        if self.isolation.is_set() {
            return Err(ApiError::NoQuorum("this node is cut off from its peers".into()));
        }
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", leader.addr))
            .timeout(self.request_timeout() * 5);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp =
            req.send().await.map_err(|e| ApiError::NoQuorum(format!("leader {leader} unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok((status, bytes.to_vec()))
    }

    /// The receiver of the cache's follow-up proposals (taken once, by the cache task).
    pub fn take_cache_outbox(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<sinkron_core::cache::CacheCommand>> {
        self.cache_outbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Last log index applied by group 0 on this node.
    pub fn applied_index(&self) -> u64 {
        self.group0().raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// Names of the other members of group 0.
    pub fn other_members(&self) -> Vec<String> {
        let m = self.group0().raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n.name.clone())
            .filter(|n| *n != self.config.name)
            .collect()
    }

    /// Every member of group 0 as (name, address), by name.
    pub fn members(&self) -> Vec<(String, String)> {
        let m = self.group0().raft.metrics();
        let m = m.borrow();
        let mut all: Vec<(String, String)> =
            m.membership_config.membership().nodes().map(|(_, n)| (n.name.clone(), n.addr.clone())).collect();
        all.sort();
        all
    }

    /// The MESI state member at `addr` reports for `key`.
    pub async fn peer_line(&self, addr: &str, key: &str) -> Option<String> {
        if self.isolation.is_set() {
            return None;
        }
        let url = format!("http://{addr}/v1/cache/{}/local", urlencode(key));
        let resp = self.http.get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        body.get("state").and_then(|s| s.as_str()).map(String::from)
    }

    fn member_addr(&self, name: &str) -> Option<String> {
        let m = self.group0().raft.metrics();
        let m = m.borrow();
        let addr = m
            .membership_config
            .membership()
            .nodes()
            .find(|(_, n)| n.name == name)
            .map(|(_, n)| n.addr.clone());
        addr
    }

    /// Whether member `name` confirms it applied `index` within `wait`.
    pub async fn peer_applied(&self, name: &str, index: u64, wait: Duration) -> bool {
        if self.isolation.is_set() {
            return false;
        }
        let Some(addr) = self.member_addr(name) else { return true };
        let url = format!("http://{addr}/raft/{GROUP0}/applied");
        let body = serde_json::json!({ "index": index, "wait_ms": wait.as_millis() as u64 });
        matches!(self.http.post(url).json(&body).timeout(wait + Duration::from_millis(200)).send().await,
            Ok(resp) if resp.status().is_success())
    }

    /// Renews this node's cache lease through `leader`: the leader records the renewal and
    /// answers the index this node must apply before the lease counts.
    pub async fn renew_cache_lease(&self, leader: &Member, deadline: Instant) -> ReadIndex {
        if self.isolation.is_set() {
            return ReadIndex::NotLeader;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let url = format!("http://{}/raft/{GROUP0}/cache-lease", leader.addr);
        let body = serde_json::json!({ "node": self.config.name });
        match self.http.post(url).json(&body).timeout(remaining).send().await {
            Ok(resp) if resp.status().is_success() => {
                resp.json::<ReadIndex>().await.unwrap_or(ReadIndex::NotLeader)
            }
            _ => ReadIndex::NotLeader,
        }
    }

    /// Stops the Raft groups. Everything acknowledged is already on disk; the log writer
    /// thread ends once the last handle to its log is dropped.
    pub async fn shutdown(&self) {
        for group in self.partitions.take_all() {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown of a partition failed");
            }
        }
        if let Err(e) = self.group0.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown of group 0 failed");
        }
    }

    /// This node's role in group 0, as a lowercase word.
    pub fn role(&self) -> &'static str {
        role_name(self.group0().raft.metrics().borrow().state)
    }
}

/// The lowercase word for a Raft server state.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn no_quorum_for_write(limit: Duration) -> ApiError {
    ApiError::NoQuorum(format!(
        "no quorum acknowledged the write within {} ms; it may still commit, retry with the same request_id",
        limit.as_millis()
    ))
}

type MembershipResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    >,
    tokio::time::error::Elapsed,
>;

fn membership_outcome(result: MembershipResult, action: &str) -> Result<(), ApiError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Err(_) => Err(ApiError::NoQuorum(format!("could not {action} in time; retry"))),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(ApiError::Unavailable(format!("leadership changed while trying to {action}; retry")))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ApiError::Conflict(format!("cannot {action}: {e}")))
        }
        Ok(Err(e)) => Err(ApiError::Unavailable(format!("cannot {action}: {e}"))),
    }
}

/// Where the leader of `raft`'s group is, seen from node `me`, waiting for one until
/// `deadline`.
pub async fn leader_of(raft: &Raft, me: NodeId, deadline: Instant) -> Result<Leader, ApiError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let metrics = raft
        .wait(Some(remaining))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await
        .map_err(|_| ApiError::NoQuorum(format!("no leader is known after {} ms", remaining.as_millis())))?;
    let leader = metrics.current_leader.unwrap_or_default();
    if leader == me {
        return Ok(Leader::Local);
    }
    match metrics.membership_config.membership().get_node(&leader) {
        Some(member) => Ok(Leader::Remote(member.clone())),
        None => Err(ApiError::NoQuorum("the leader is not in the known membership".into())),
    }
}

/// Opens the storage of `network`'s group and starts its Raft instance with its batchers.
async fn start_group<S: Machine>(
    config: &NodeConfig,
    raft_config: &Arc<openraft::Config>,
    network: HttpNetworkFactory,
    initial: S,
    prepare: impl FnOnce(&StateMachineStore<S>),
) -> anyhow::Result<Group<S>> {
    let id = network.group;
    let (http, isolation) = (network.client.clone(), network.isolation.clone());
    let (log, sm) = open_storage(config, id, initial).await?;
    prepare(&sm);
    let raft = Raft::new(config.raft_id, raft_config.clone(), network, log.clone(), sm.clone())
        .await
        .with_context(|| format!("start Raft group {id}"))?;
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let proposer = Batcher::proposer(raft.clone(), timeout);
    let forwarder = Batcher::forwarder(raft.clone(), id, http, timeout, isolation);
    Ok(Group { raft, log, sm, proposer, forwarder })
}

/// Opens the log and state machine of `group` on the configured backend.
async fn open_storage<S: Machine>(
    config: &NodeConfig,
    group: GroupId,
    initial: S,
) -> anyhow::Result<(LogStore, StateMachineStore<S>)> {
    match config.storage {
        StorageBackend::Embedded => {
            let dir = config.data_dir.join("groups").join(group.to_string());
            crate::storage::files::create_dir_durably(&dir)
                .with_context(|| format!("create data directory {}", dir.display()))?;
            // openraft's storage errors repeat their source in their own text: keep the text
            // only, so the one line an operator reads says it once.
            let log = LogStore::open(&dir).map_err(|e| anyhow::anyhow!("open the Raft log: {e}"))?;
            let sm = StateMachineStore::open_from(&dir, initial)
                .map_err(|e| anyhow::anyhow!("open the state machine: {e}"))?;
            Ok((log, sm))
        }
        StorageBackend::Redis => {
            let (host, port) = &config.redis;
            let mut conn = redis_store::connect(host, *port)
                .await
                .with_context(|| format!("connect to Redis at {host}:{port} (STORAGE_BACKEND=redis)"))?;
            if group == GROUP0 {
                redis_store::warn_if_volatile(&mut conn).await;
            }
            let keys = redis_store::Keys::new(&config.redis_namespace, &config.name, group);
            redis_store::open_group(&mut conn, keys, initial)
                .await
                .context("open the Raft log and snapshot in Redis")
        }
    }
}

/// Logs and counts every change of the known leader of `raft`.
fn spawn_leader_watch(raft: &Raft) {
    let mut rx = raft.metrics();
    tokio::spawn(async move {
        let mut last: Option<NodeId> = None;
        while rx.changed().await.is_ok() {
            let (leader, term, name) = {
                let m = rx.borrow();
                let name = m
                    .current_leader
                    .and_then(|id| m.membership_config.membership().get_node(&id).map(|n| n.name.clone()));
                (m.current_leader, m.current_term, name)
            };
            if leader != last {
                if leader.is_some() {
                    crate::metrics::record_leader_change();
                }
                tracing::info!(leader = name.as_deref().unwrap_or("none"), term, "leader changed");
                last = leader;
            }
        }
    });
}
