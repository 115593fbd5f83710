//! [`Group0`]: the handle services hold on group 0 (locks, the cache directory, the queue
//! topology): writes through the leader, read barriers, applied-index waits, the members
//! and the membership changes. Cheap to clone; it never reaches the rest of the node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ChangeMembers;
use sinkron_core::topology::Topology;
use sinkron_core::{Command, Request, Response};
use tokio::time::timeout;

use crate::coalesce::Rounds;
use crate::error::NodeError;
use crate::group::{membership_outcome, role_name, Group, Leader, RETRY_PAUSE};
use crate::peers::Peers;
use crate::types::{Member, NodeId, Raft};
use crate::wire::ReadIndex;

/// Group 0 as the services see it.
#[derive(Clone)]
pub struct Group0 {
    group: Arc<Group>,
    peers: Peers,
    name: Arc<str>,
    /// ReadIndex rounds at the leader, shared by the reads that wait for one.
    local_reads: Rounds<ReadIndex>,
    /// ReadIndex calls to a remote leader, shared the same way.
    remote_reads: Rounds<ReadIndex>,
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Group0 {
    /// The handle on `group`, run by the node called `name`.
    pub fn new(group: Group, peers: Peers, name: &str) -> Self {
        Self {
            group: Arc::new(group),
            peers,
            name: name.into(),
            local_reads: Rounds::default(),
            remote_reads: Rounds::default(),
        }
    }

    /// The group itself (its Raft instance, storage and batchers).
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Its Raft instance.
    pub fn raft(&self) -> &Raft {
        &self.group.raft
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's calls to its peers.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// How long a request may take.
    pub fn request_timeout(&self) -> Duration {
        self.group.request_timeout()
    }

    /// Where group 0's leader is, waiting for one until `deadline`.
    pub async fn leader(&self, deadline: Instant) -> Result<Leader, NodeError> {
        self.group.leader(deadline).await
    }

    /// Proposes `command` through the leader and returns the state machine's reply.
    pub async fn write(&self, command: Command, request_id: Option<String>) -> Result<Response, NodeError> {
        self.write_at(command, request_id).await.map(|(reply, _)| reply)
    }

    /// Like [`Group0::write`], also returning the log index of the entry that applied it.
    pub async fn write_at(
        &self,
        command: Command,
        request_id: Option<String>,
    ) -> Result<(Response, u64), NodeError> {
        let deadline = Instant::now() + self.request_timeout();
        // Every proposal carries an id, so a retry after a lost reply applies only once.
        let request = Request { request_id: Some(request_id.unwrap_or_else(new_request_id)), command };
        self.group.submit(request, deadline).await
    }

    /// Proposes `command` on this node only, never forwarding it: fails unless this node
    /// is the leader.
    pub async fn write_here(&self, command: Command) -> Result<Response, NodeError> {
        let deadline = Instant::now() + self.request_timeout();
        self.group.submit_here(Request { request_id: None, command }, deadline).await.map(|(reply, _)| reply)
    }

    /// Waits until this node's state machine reflects every write completed before the call:
    /// ReadIndex through the leader, then a wait for the local apply.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let outcome = match self.leader(deadline).await? {
                Leader::Local => self.read_index_local(deadline).await,
                Leader::Remote(leader) => {
                    // One call to the leader serves every read here that was waiting when
                    // it was sent.
                    let peers = self.peers.clone();
                    let round = move || {
                        let (peers, leader) = (peers.clone(), leader.clone());
                        async move { peers.read_index(&leader, deadline).await }
                    };
                    self.remote_reads.join(round).await.unwrap_or(ReadIndex::Timeout)
                }
            };
            match outcome {
                ReadIndex::Index(index) => return self.wait_applied(index, deadline).await,
                ReadIndex::Timeout => return Err(self.no_quorum_for_read()),
                ReadIndex::NotLeader if Instant::now() >= deadline => return Err(self.no_quorum_for_read()),
                ReadIndex::NotLeader => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    fn no_quorum_for_read(&self) -> NodeError {
        NodeError::NoQuorum(format!(
            "no leader confirmed by a quorum within {} ms; retry later",
            self.request_timeout().as_millis()
        ))
    }

    /// On the leader: confirms leadership with a quorum and returns the index reads must see.
    /// Concurrent callers share one confirmation that began after they called.
    pub async fn read_index_local(&self, deadline: Instant) -> ReadIndex {
        let raft = self.raft().clone();
        let round = move || {
            let raft = raft.clone();
            async move { confirm_leadership(&raft, deadline).await }
        };
        self.local_reads.join(round).await.unwrap_or(ReadIndex::Timeout)
    }

    /// Waits until this node has applied log index `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), NodeError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft()
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| NodeError::NoQuorum(format!("this node did not catch up to index {index} in time")))
    }

    /// Last log index applied by group 0 on this node.
    pub fn applied_index(&self) -> u64 {
        self.raft().metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// This node's role in group 0, as a lowercase word.
    pub fn role(&self) -> &'static str {
        role_name(self.raft().metrics().borrow().state)
    }

    /// Whether this node leads group 0 right now.
    pub fn is_leader(&self) -> bool {
        self.group.is_leader()
    }

    /// The queue topology as applied here, once it was written.
    pub fn topology(&self) -> Option<Topology> {
        self.group.sm.read().state.topology.clone()
    }

    /// Names of the other members of group 0.
    pub fn other_members(&self) -> Vec<String> {
        self.members_by_name().into_keys().filter(|n| *n != *self.name).collect()
    }

    /// Every member of group 0 by name.
    pub fn members_by_name(&self) -> BTreeMap<String, Member> {
        let m = self.raft().metrics();
        let m = m.borrow();
        m.membership_config.membership().nodes().map(|(_, n)| (n.name.clone(), n.clone())).collect()
    }

    /// Every member of group 0 as (name, address), by name.
    pub fn members(&self) -> Vec<(String, String)> {
        self.members_by_name().into_iter().map(|(name, m)| (name, m.addr)).collect()
    }

    /// The names of group 0's voters, sorted.
    pub fn voter_names(&self) -> Vec<String> {
        let m = self.raft().metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let mut names: Vec<String> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.name.clone()))
            .collect();
        names.sort();
        names
    }

    /// Whether member `name` confirms it applied `index` within `wait` (true for a name
    /// that is no longer a member).
    pub async fn peer_applied(&self, name: &str, index: u64, wait: Duration) -> bool {
        if self.peers.isolation.is_set() {
            return false;
        }
        let Some(member) = self.members_by_name().remove(name) else { return true };
        self.peers.applied(&member.addr, index, wait).await
    }

    /// Sends a public API request to the leader on behalf of `principal` and returns its
    /// status and body unchanged.
    pub async fn proxy_to_leader(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        principal: Option<&crate::security::Principal>,
    ) -> Result<(u16, Vec<u8>), NodeError> {
        let deadline = Instant::now() + self.request_timeout();
        let Leader::Remote(leader) = self.leader(deadline).await? else {
            return Err(NodeError::Unavailable("leadership moved here while forwarding; retry".into()));
        };
        self.peers.proxy(&leader, method, path, body, principal, self.request_timeout() * 5).await
    }

    /// Adds a member: as a learner first (it catches up), then as a voter (joint consensus).
    /// Must run on the leader.
    pub async fn add_member(&self, member: Member) -> Result<(), NodeError> {
        let raft = self.raft();
        let id = sinkron_core::ids::raft_id(&member.name);
        let membership = raft.metrics().borrow().membership_config.clone();
        if let Some(existing) = membership.membership().get_node(&id) {
            if existing.name != member.name {
                return Err(NodeError::Conflict(format!(
                    "node {} has the same Raft id as {}; choose another name",
                    member.name, existing.name
                )));
            }
        }
        let known = membership.membership().get_node(&id).is_some();
        let limit = self.request_timeout() * 2;
        let added = timeout(limit, raft.add_learner(id, member.clone(), true)).await;
        if let Err(e) = membership_outcome(added, "add the learner") {
            self.withdraw_learner(id, known).await;
            return Err(e);
        }
        // Promotion is decided now, at the leader's last index: the learner must have
        // acknowledged the log up to there. openraft's "caught up" only means within a
        // bounded distance, which an address that is no real replica can meet.
        let decided = raft.metrics().borrow().last_log_index.unwrap_or(0);
        if !self.acknowledged(id, decided, Instant::now() + limit).await {
            self.withdraw_learner(id, known).await;
            return Err(NodeError::Unavailable(format!(
                "{} at {} did not acknowledge the log up to index {decided} within {} ms, so it is not \
                 made a voter (is it a Sinkron node of this cluster, reachable and started in join mode?)",
                member.name,
                member.addr,
                limit.as_millis()
            )));
        }
        // Name only the voter to add, so concurrent changes cannot undo each other.
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        let changed = timeout(limit, raft.change_membership(change, false)).await;
        membership_outcome(changed, "promote the learner to voter")
    }

    /// Whether node `id` has acknowledged (matched) the leader's log up to `index` by
    /// `deadline`, as the leader's replication metrics show.
    async fn acknowledged(&self, id: NodeId, index: u64, deadline: Instant) -> bool {
        let mut metrics = self.raft().metrics();
        loop {
            let matched = metrics
                .borrow()
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|log_id| log_id.index);
            if matched.is_some_and(|m| m >= index) {
                return true;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match timeout(remaining, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// Takes a learner that failed to become a voter out again (unless it was a member
    /// before this request).
    async fn withdraw_learner(&self, id: NodeId, known_before: bool) {
        if known_before {
            return;
        }
        let raft = self.raft();
        let still_learner = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            membership.get_node(&id).is_some() && !membership.voter_ids().any(|v| v == id)
        };
        if still_learner {
            let change = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
            let error = match timeout(self.request_timeout(), raft.change_membership(change, false)).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            tracing::warn!(node = id, %error, "could not withdraw a learner that did not catch up");
        }
    }

    /// Removes a member entirely. Must run on the leader.
    pub async fn remove_member(&self, name: &str) -> Result<(), NodeError> {
        let raft = self.raft();
        let id = sinkron_core::ids::raft_id(name);
        let membership = raft.metrics().borrow().membership_config.clone();
        if membership.membership().get_node(&id).is_none() {
            return Err(NodeError::NotFound(format!("{name} is not a member")));
        }
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        if voters.len() == 1 && voters.contains(&id) {
            return Err(NodeError::InvalidArgument(format!("{name} is the last voter; a cluster needs one")));
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let changed = timeout(self.request_timeout() * 2, raft.change_membership(change, false)).await;
        membership_outcome(changed, "remove the member")
    }
}

/// One ReadIndex round at the leader: its commit index once a quorum confirmed it leads.
async fn confirm_leadership(raft: &Raft, deadline: Instant) -> ReadIndex {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match timeout(remaining, raft.ensure_linearizable()).await {
        Err(_) => ReadIndex::Timeout,
        Ok(Ok(log_id)) => ReadIndex::Index(log_id.map(|l| l.index).unwrap_or(0)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => ReadIndex::NotLeader,
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => ReadIndex::NotLeader,
        Ok(Err(RaftError::Fatal(_))) => ReadIndex::Timeout,
    }
}
