//! One Raft group on this node (group 0 or a queue partition): its Raft instance, storage
//! and batchers, how it is opened, and how a request reaches its leader.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use sinkron_core::claims::ReceiveClaims;
use sinkron_core::{Group0State, Request, Response};

use crate::config::{NodeConfig, StorageBackend};
use crate::error::NodeError;
use crate::peers::Peers;
use crate::proposer::{Batcher, Gate};
use crate::storage::redis as redis_store;
use crate::storage::{LogStore, Machine, SharedLog, StateMachineStore};
use crate::types::{leader_member, GroupId, Member, NodeId, Raft, GROUP0};
use crate::wire::ForwardedWrite;

/// Pause before retrying after a leader change or an unreachable leader.
pub const RETRY_PAUSE: Duration = Duration::from_millis(25);

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
    /// The group's id.
    id: GroupId,
    /// This node's Raft id.
    me: NodeId,
    /// How long a proposal may wait for its quorum.
    request_timeout: Duration,
}

/// Where the leader of a group is, seen from this node.
pub enum Leader {
    /// This node leads.
    Local,
    /// Another node leads.
    Remote(Member),
}

impl<S: Machine> Group<S> {
    /// Stops the group's Raft instance, then waits until its log holds every append this
    /// node reported as leader before the fsync (see `storage::durability`), so that
    /// closing or stopping loses none of them and a group opened again later starts from
    /// all of them. None was acknowledged to a client. Both steps end by `deadline`.
    pub async fn stop(&self, deadline: Instant) {
        let group = self.id;
        // A core stuck (on storage, say) must not hold the node's stop past its deadline.
        match tokio::time::timeout_at(deadline.into(), self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(group, error = %e, "raft shutdown failed"),
            Err(_) => tracing::warn!(group, "raft shutdown did not finish in time; stopping anyway"),
        }
        let settled = self.log.durability().wait_through(u64::MAX);
        match tokio::time::timeout_at(deadline.into(), settled).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(group, error = %e, "stopped with leader appends not on disk; none was acknowledged")
            }
            Err(_) => tracing::warn!(
                group,
                "stopped before every leader append was on disk (out of time); none was acknowledged"
            ),
        }
    }

    /// Where this group's leader is, waiting for one until `deadline`.
    pub async fn leader(&self, deadline: Instant) -> Result<Leader, NodeError> {
        leader_of(&self.raft, self.me, deadline).await
    }

    /// How long a proposal may wait for its quorum.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Whether this node leads the group right now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Proposes `request` through the group's leader (here, or forwarded in a batch) and
    /// returns the reply with the index of the entry that applied it.
    pub async fn submit(&self, request: Request, deadline: Instant) -> Result<(Response, u64), NodeError> {
        loop {
            let outcome = match self.leader(deadline).await? {
                Leader::Local => self.proposer.submit(request.clone(), deadline).await,
                Leader::Remote(_) => self.forwarder.submit(request.clone(), deadline).await,
            };
            match outcome {
                ForwardedWrite::Applied(reply, index) => return Ok((reply, index)),
                ForwardedWrite::Failed(reason) => return Err(NodeError::Unavailable(reason)),
                ForwardedWrite::Timeout => return Err(self.timed_out()),
                ForwardedWrite::NotLeader if Instant::now() >= deadline => return Err(self.timed_out()),
                ForwardedWrite::NotLeader => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    /// Proposes `requests` in this order (they share entries where they can); one outcome
    /// per request. Requests the leader did not take are retried, still in order, until
    /// `deadline`.
    pub async fn submit_all(
        &self,
        requests: Vec<Request>,
        deadline: Instant,
    ) -> Vec<Result<Response, NodeError>> {
        let mut outcomes: Vec<Option<Result<Response, NodeError>>> =
            (0..requests.len()).map(|_| None).collect();
        loop {
            let open: Vec<usize> = (0..requests.len()).filter(|i| outcomes[*i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let batch: Vec<Request> = open.iter().map(|i| requests[*i].clone()).collect();
            let answers = match self.leader(deadline).await {
                Ok(Leader::Local) => self.proposer.submit_all(batch, deadline).await,
                Ok(Leader::Remote(_)) => self.forwarder.submit_all(batch, deadline).await,
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
                    ForwardedWrite::Failed(reason) => Some(Err(NodeError::Unavailable(reason))),
                    ForwardedWrite::Timeout => Some(Err(self.timed_out())),
                    ForwardedWrite::NotLeader if Instant::now() >= deadline => Some(Err(self.timed_out())),
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
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(self.timed_out()))).collect()
    }

    /// Proposes `request` on this node only, never forwarding it: fails unless this node
    /// leads the group.
    pub async fn submit_here(
        &self,
        request: Request,
        deadline: Instant,
    ) -> Result<(Response, u64), NodeError> {
        match self.proposer.submit(request, deadline).await {
            ForwardedWrite::Applied(reply, index) => Ok((reply, index)),
            ForwardedWrite::NotLeader => Err(NodeError::Unavailable("this node is not the leader".into())),
            ForwardedWrite::Timeout => Err(self.timed_out()),
            ForwardedWrite::Failed(reason) => Err(NodeError::Unavailable(reason)),
        }
    }

    /// Why a write timed out: this node's storage outage if there is one, else no quorum.
    pub fn timed_out(&self) -> NodeError {
        match self.log.health().problem() {
            Some(problem) => NodeError::Unavailable(problem),
            None => NodeError::NoQuorum(format!(
                "no quorum acknowledged the write within {} ms; it may still commit, retry with the same request_id",
                self.request_timeout.as_millis()
            )),
        }
    }
}

/// Where the leader of `raft`'s group is, seen from node `me`, waiting for one until
/// `deadline`.
pub async fn leader_of(raft: &Raft, me: NodeId, deadline: Instant) -> Result<Leader, NodeError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let metrics = raft
        .wait(Some(remaining))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await
        .map_err(|_| NodeError::NoQuorum(format!("no leader is known after {} ms", remaining.as_millis())))?;
    if metrics.current_leader == Some(me) {
        return Ok(Leader::Local);
    }
    match leader_member(&metrics) {
        Some(member) => Ok(Leader::Remote(member)),
        None => Err(NodeError::NoQuorum("the leader is not in the known membership".into())),
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

/// What a membership change (adding a learner, changing voters) came to.
pub type MembershipResult<T> =
    Result<Result<T, RaftError<NodeId, ClientWriteError<NodeId, Member>>>, tokio::time::error::Elapsed>;

/// The answer for a membership change's outcome; `action` says what was tried.
pub fn membership_outcome<T>(result: MembershipResult<T>, action: &str) -> Result<(), NodeError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Err(_) => Err(NodeError::NoQuorum(format!("could not {action} in time; retry"))),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(NodeError::Unavailable(format!("leadership changed while trying to {action}; retry")))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(NodeError::Conflict(format!("cannot {action}: {e}")))
        }
        Ok(Err(e)) => Err(NodeError::Unavailable(format!("cannot {action}: {e}"))),
    }
}

/// Opens groups: storage on the configured backend, a Raft instance and its batchers.
#[derive(Clone)]
pub struct GroupFactory {
    config: Arc<NodeConfig>,
    raft_config: Arc<openraft::Config>,
    peers: Peers,
    /// The node's shared log, with the embedded backend.
    wal: Option<Arc<SharedLog>>,
}

impl GroupFactory {
    /// Derives the Raft settings from `config`.
    pub fn new(config: Arc<NodeConfig>, peers: Peers) -> anyhow::Result<Self> {
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
                // An entry is a batch of up to BATCH_MAX_BYTES bytes of requests; keep one
                // AppendEntries well under the RPC body limit.
                max_payload_entries: 16,
                ..Default::default()
            }
            .validate()
            .context("derive the Raft configuration")?,
        );
        let wal = match config.storage {
            StorageBackend::Embedded => Some(open_shared_log(&config.data_dir)?),
            StorageBackend::Redis => None,
        };
        Ok(Self { config, raft_config, peers, wal })
    }

    /// Opens the storage of group `id` and starts its Raft instance. `rank` is this node's
    /// place in the group's preferred order: each rank waits half an election-timeout range
    /// longer before it campaigns, so the preferred replica usually leads and leadership
    /// spreads over the nodes as the ring spreads preferences. `prepare` sees the state
    /// machine before Raft starts applying to it.
    pub async fn open<S: Machine>(
        &self,
        id: GroupId,
        initial: S,
        rank: u64,
        prepare: impl FnOnce(&StateMachineStore<S>),
    ) -> anyhow::Result<Group<S>> {
        let mut raft_config = (*self.raft_config).clone();
        let shift = rank.min(4) * (raft_config.election_timeout_max - raft_config.election_timeout_min) / 2;
        raft_config.election_timeout_min += shift;
        raft_config.election_timeout_max += shift;
        let me = self.config.raft_id;
        let (log, sm) = open_storage(&self.config, self.wal.as_deref(), id, initial).await?;
        // These three go together: `on_node` lets the leader report its appends before their
        // fsync, and the state machine and the network then wait for that fsync before an
        // entry is applied or announced as committed (see `storage::durability`).
        let log = log.on_node(me).await.map_err(|e| anyhow::anyhow!("store the vote of group {id}: {e}"))?;
        sm.apply_after(log.durability().clone());
        prepare(&sm);
        let network = self.peers.raft_network(id, log.durability().clone());
        let raft = Raft::new(me, Arc::new(raft_config), network, log.clone(), sm.clone())
            .await
            .with_context(|| format!("start Raft group {id}"))?;
        let request_timeout = Duration::from_millis(self.config.request_timeout_ms);
        let gate = S::GATED.then(|| {
            Arc::new(MachineGate { sm: sm.clone(), claims: Mutex::new(ReceiveClaims::default()) })
                as Arc<dyn Gate>
        });
        let proposer = Batcher::proposer(raft.clone(), request_timeout, gate);
        let forwarder = Batcher::forwarder(raft.clone(), id, self.peers.clone(), request_timeout);
        Ok(Group { raft, log, sm, proposer, forwarder, id, me, request_timeout })
    }
}

/// The leader's gate of a group whose machine is [`Machine::GATED`]: requests are admitted
/// against the applied state and the claims of what was proposed and not yet applied.
struct MachineGate<S: Machine> {
    sm: StateMachineStore<S>,
    claims: Mutex<ReceiveClaims>,
}

impl<S: Machine> Gate for MachineGate<S> {
    fn admit(&self, requests: &[Request]) -> Vec<Option<ForwardedWrite>> {
        let counted = |r: &Request| {
            matches!(
                r.command,
                sinkron_core::Command::QueueReceive { .. } | sinkron_core::Command::QueueSend { .. }
            )
        };
        if !requests.iter().any(counted) {
            // Only receives are ever answered here, and sends counted for them: a batch
            // with neither takes no lock.
            return requests.iter().map(|_| None).collect();
        }
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the claims' lock: an apply seen here has settled the claims it covers.
        let applied = self.sm.read();
        applied.state.forget_applied(&mut claims);
        let index = applied.last_applied.map_or(0, |id| id.index);
        let now = crate::clock::now_ms();
        let answers: Vec<Option<ForwardedWrite>> = applied
            .state
            .admit(&mut claims, requests, now)
            .into_iter()
            .map(|reply| reply.map(|reply| ForwardedWrite::Applied(reply, index)))
            .collect();
        crate::metrics::record_receives_gated(answers.iter().filter(|a| a.is_some()).count());
        answers
    }

    fn settled(&self, requests: &[Request]) {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        for request in requests {
            claims.release(request);
        }
    }
}

/// Opens the node's shared log in `<data_dir>/log/`, first moving into it the per-group
/// logs an earlier version left under `<data_dir>/groups/`.
fn open_shared_log(data_dir: &std::path::Path) -> anyhow::Result<Arc<SharedLog>> {
    let wal_dir = data_dir.join("log");
    crate::storage::import_group_dirs(&data_dir.join("groups"), &wal_dir)
        .map_err(|e| anyhow::anyhow!("move the per-group logs into the shared log: {e}"))?;
    SharedLog::open(&wal_dir).map_err(|e| anyhow::anyhow!("open the Raft log: {e}"))
}

/// Opens the log and state machine of `group` on the configured backend.
async fn open_storage<S: Machine>(
    config: &NodeConfig,
    wal: Option<&SharedLog>,
    group: GroupId,
    initial: S,
) -> anyhow::Result<(LogStore, StateMachineStore<S>)> {
    match (config.storage, wal) {
        (StorageBackend::Embedded, Some(wal)) => {
            let dir = config.data_dir.join("groups").join(group.to_string());
            crate::storage::files::create_dir_durably(&dir)
                .with_context(|| format!("create data directory {}", dir.display()))?;
            let log = wal.group(group);
            // openraft's storage errors repeat their source in their own text: keep the text
            // only, so the one line an operator reads says it once.
            let sm = StateMachineStore::open_from(&dir, initial)
                .map_err(|e| anyhow::anyhow!("open the state machine: {e}"))?;
            Ok((log, sm))
        }
        (StorageBackend::Embedded, None) => anyhow::bail!("the embedded backend has no shared log"),
        (StorageBackend::Redis, _) => {
            let (host, port) = (&config.redis.host, config.redis.port);
            let mut conn = redis_store::connect(&config.redis)
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
pub fn spawn_leader_watch(raft: &Raft) {
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sinkron_core::{Command, PartitionMachine};

    use super::*;

    fn request(id: &str, command: Command) -> Request {
        Request { request_id: Some(id.into()), command }
    }

    #[test]
    fn the_gate_lets_a_receive_follow_a_send_still_on_its_way_in_an_earlier_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sm = StateMachineStore::open_from(dir.path(), PartitionMachine::new(0)).expect("state machine");
        let gate = MachineGate { sm, claims: Mutex::new(ReceiveClaims::default()) };
        let receive = |id: &str| {
            request(id, Command::QueueReceive { queue: "q".into(), max: 1, visibility_ms: 30_000 })
        };
        let empty = |answers: Vec<Option<ForwardedWrite>>| {
            answers.into_iter().map(|a| matches!(a, Some(ForwardedWrite::Applied(..)))).collect::<Vec<_>>()
        };
        assert_eq!(empty(gate.admit(&[receive("r1")])), [true], "nothing to find: answered empty");
        let send =
            request("s1", Command::QueueSend { queue: "q".into(), key: None, body: json!(1), fence: None });
        assert_eq!(empty(gate.admit(&[send])), [false], "a batch of sends alone is proposed");
        assert_eq!(empty(gate.admit(&[receive("r2")])), [false], "the send's message is coming: proposed");
        assert_eq!(empty(gate.admit(&[receive("r3")])), [true], "r2 claimed it");
    }
}
