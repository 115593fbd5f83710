//! Queues, node side: hosting partition groups, routing queue operations to partition
//! leaders, and the duties that keep placements and visibility deadlines moving.
//!
//! - Group 0 holds the [`Topology`]: settings, ring nodes, and each partition's replica set.
//!   Its leader writes the topology once, follows group 0's voters onto the ring, and moves
//!   partitions whose replica set differs from the ring's target ([`placement_duties`]).
//! - Every node opens the groups of the partitions it replicates, or is about to, and closes
//!   those moved away from it ([`host_duties`]). A group is initialised only by the replicas
//!   it was created with (generation 0), never by a node that joins it later.
//! - A queue operation runs at the leader of its partition's group: here if this node leads
//!   it, forwarded to the leader otherwise, or handed to a replica when this node does not
//!   host the partition at all ([`Node::partition_call`]).
//! - Each partition leader returns messages whose visibility deadline passed
//!   ([`expiry_duties`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use sinkron_core::ids::raft_id;
use sinkron_core::limits::{validate_message, validate_queue_name, validate_request_id};
use sinkron_core::queue::{partition_of_receipt, Delivery, QueueRefusal, DLQ_SUFFIX};
use sinkron_core::ring::partition_of;
use sinkron_core::topology::{QueueSettings, Topology, TopologyCommand};
use sinkron_core::{Command, PartitionMachine, Request, Response};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::api::error::ApiError;
use crate::node::{leader_of, now_ms, ForwardedWrite, Group, Leader, Node};
use crate::types::{partition_group, GroupId, Member, NodeId};

/// A hosted partition's Raft group.
pub type PartitionGroup = Group<PartitionMachine>;

/// How often the placement and host duties look at the topology.
const PLACEMENT_INTERVAL: Duration = Duration::from_millis(250);
/// How often a partition leader checks visibility deadlines.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(50);
/// How often queue gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a receive waits for one partition before moving on to the next.
const RECEIVE_PARTITION_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between two looks of a long-polling receive (partitions hosted elsewhere
/// do not wake it).
const RECEIVE_POLL: Duration = Duration::from_millis(200);
/// Pause before retrying a partition whose leader is moving.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The partition groups this node hosts.
pub struct Partitions {
    hosted: RwLock<BTreeMap<u32, Arc<PartitionGroup>>>,
    /// Bumped whenever a hosted partition applied an entry; long-polling receives wait on it.
    changed: watch::Sender<u64>,
    /// Spreads receives over partitions.
    rotation: AtomicU32,
}

impl Default for Partitions {
    fn default() -> Self {
        Self { hosted: RwLock::default(), changed: watch::Sender::new(0), rotation: AtomicU32::new(0) }
    }
}

impl Partitions {
    /// The hosted group of `partition`.
    pub fn get(&self, partition: u32) -> Option<Arc<PartitionGroup>> {
        self.hosted.read().unwrap_or_else(|p| p.into_inner()).get(&partition).cloned()
    }

    /// The hosted partition group with Raft group id `id`.
    pub fn get_group(&self, id: GroupId) -> Option<Arc<PartitionGroup>> {
        crate::types::group_partition(id).and_then(|p| self.get(p))
    }

    /// Numbers of the hosted partitions.
    pub fn hosted(&self) -> Vec<u32> {
        self.hosted.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// Removes every hosted group (at shutdown).
    pub fn take_all(&self) -> Vec<Arc<PartitionGroup>> {
        std::mem::take(&mut *self.hosted.write().unwrap_or_else(|p| p.into_inner())).into_values().collect()
    }

    fn insert(&self, partition: u32, group: Arc<PartitionGroup>) {
        self.hosted.write().unwrap_or_else(|p| p.into_inner()).insert(partition, group);
    }

    fn remove(&self, partition: u32) -> Option<Arc<PartitionGroup>> {
        self.hosted.write().unwrap_or_else(|p| p.into_inner()).remove(&partition)
    }

    /// Notified after any hosted partition applied an entry.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// An operation on one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PartitionCall {
    /// Propose a request (through the group's batchers, which find the leader).
    Write(Request),
    /// Propose requests in this order.
    WriteAll(Vec<Request>),
    /// Something only the group's leader does.
    AtLeader(LeaderCall),
}

/// An operation run by a partition group's leader itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderCall {
    /// Deliver up to `max` messages of `queue`; no proposal when none is visible.
    Receive {
        /// Request id of the proposal (a retry gets the same deliveries).
        request_id: String,
        /// Queue name.
        queue: String,
        /// Most messages.
        max: u32,
        /// Visibility timeout.
        visibility_ms: u64,
    },
    /// Counts of `queue` (if given) and the leader.
    Stats {
        /// Queue to count.
        queue: Option<String>,
    },
    /// Give the group exactly these voters (a move after a membership change).
    Reconfigure {
        /// The new replica set.
        replicas: Vec<Member>,
    },
}

/// The answer to a [`PartitionCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PartitionReply {
    /// The state machine's reply to a write.
    Applied(Response),
    /// One outcome per request of a [`PartitionCall::WriteAll`].
    AppliedAll(Vec<Result<Response, ApiError>>),
    /// Deliveries of a receive.
    Received(Vec<Delivery>),
    /// Counts.
    Stats(PartitionStats),
    /// A reconfiguration finished.
    Reconfigured,
}

/// One partition's view of a queue, read at its leader.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartitionStats {
    /// Partition number.
    pub partition: u32,
    /// Leader of its group.
    pub leader: Option<String>,
    /// Ready messages (including delayed ones).
    pub ready: usize,
    /// Delivered, unacknowledged messages.
    pub in_flight: usize,
    /// Messages in the queue's dead-letter queue.
    pub dead_letters: usize,
}

/// Body of `POST /raft/{group}/queue`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartitionEnvelope {
    /// How many more times the call may be forwarded.
    pub hops: u8,
    /// Milliseconds left to the caller's deadline.
    pub within_ms: u64,
    /// The call.
    #[schema(value_type = Object)]
    pub call: PartitionCall,
}

/// A message sent: its id and partition.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sent {
    /// Message id.
    pub id: String,
    /// Partition that stores it.
    pub partition: u32,
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn unexpected(reply: impl std::fmt::Debug) -> ApiError {
    ApiError::Unavailable(format!("unexpected reply {reply:?}"))
}

fn not_ready() -> ApiError {
    ApiError::Unavailable("queues are not set up yet: the cluster has no leader or just started".into())
}

impl Node {
    /// The queue topology, once the first leader wrote it.
    pub fn topology(&self) -> Option<Topology> {
        self.group0().sm.read().state.topology.clone()
    }

    fn topology_or_unavailable(&self) -> Result<Topology, ApiError> {
        self.topology().ok_or_else(not_ready)
    }

    /// The queue settings, without copying the whole topology (every queue request needs
    /// them).
    fn queue_settings(&self) -> Result<QueueSettings, ApiError> {
        self.group0().sm.read().state.topology.as_ref().map(|t| t.settings).ok_or_else(not_ready)
    }

    /// Group 0's members by name.
    fn members_by_name(&self) -> BTreeMap<String, Member> {
        let m = self.group0().raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().nodes().map(|(_, n)| (n.name.clone(), n.clone())).collect()
    }

    /// Sends a message; answers its id and partition once its partition committed it.
    pub async fn queue_send(
        &self,
        queue: &str,
        key: Option<String>,
        body: serde_json::Value,
        request_id: Option<String>,
    ) -> Result<Sent, ApiError> {
        validate_queue_name(queue)?;
        validate_message(key.as_deref(), &body)?;
        if let Some(id) = &request_id {
            validate_request_id(id)?;
        }
        let settings = self.queue_settings()?;
        let partition = partition_of(queue, key.as_deref(), settings.partitions);
        let command = Command::QueueSend { queue: queue.to_string(), key, body };
        let request = Request { request_id: Some(request_id.unwrap_or_else(new_request_id)), command };
        let response = self.partition_write(partition, request).await?;
        self.sent_or_refused(queue, partition, response)
    }

    /// The answer to a send from the partition's reply.
    fn sent_or_refused(&self, queue: &str, partition: u32, response: Response) -> Result<Sent, ApiError> {
        match response {
            Response::QueueSent { id } => {
                crate::metrics::record_queue_op("sent", queue, 1);
                Ok(Sent { id, partition })
            }
            Response::QueueRefused { refusal: QueueRefusal::Full } => Err(ApiError::LimitExceeded(format!(
                "queue {queue:?} holds {} messages in partition {partition}; receive and ack some first",
                sinkron_core::queue::QUEUE_DEPTH_MAX
            ))),
            Response::Rejected { reason } => Err(ApiError::Conflict(reason)),
            other => Err(unexpected(other)),
        }
    }

    /// Receives up to `max` messages from every partition of `queue`, waiting up to
    /// `wait_ms` for the first one.
    pub async fn queue_receive(
        self: &Arc<Self>,
        queue: &str,
        max: u32,
        visibility_ms: u64,
        wait_ms: u64,
    ) -> Result<Vec<Delivery>, ApiError> {
        validate_queue_name(queue)?;
        let partitions = self.queue_settings()?.partitions;
        let until = Instant::now() + Duration::from_millis(wait_ms);
        let mut changes = self.partitions.changes();
        loop {
            changes.borrow_and_update();
            let (out, failure) = self.receive_round(queue, max, visibility_ms, partitions).await;
            if !out.is_empty() {
                crate::metrics::record_queue_op("received", queue, out.len() as u64);
                return Ok(out);
            }
            let now = Instant::now();
            if now >= until {
                return match failure {
                    Some(e) => Err(e),
                    None => Ok(Vec::new()),
                };
            }
            let pause = until.saturating_duration_since(now).min(RECEIVE_POLL);
            let _ = timeout(pause, changes.changed()).await;
        }
    }

    /// One look at every partition. The partitions this node hosts are asked in parallel,
    /// each for at most what its local copy shows as visible (`max` in all, so nothing is
    /// taken that cannot be returned); partitions hosted elsewhere are asked one by one for
    /// what is still missing.
    async fn receive_round(
        self: &Arc<Self>,
        queue: &str,
        max: u32,
        visibility_ms: u64,
        partitions: u32,
    ) -> (Vec<Delivery>, Option<ApiError>) {
        let start = self.partitions.rotation.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let mut left = max as usize;
        let mut local = tokio::task::JoinSet::new();
        let mut remote = Vec::new();
        for i in 0..partitions {
            let partition = start.wrapping_add(i) % partitions;
            let Some(group) = self.partitions.get(partition) else {
                remote.push(partition);
                continue;
            };
            let visible = group.sm.read().state.state.visible(queue, now, left);
            if visible == 0 {
                continue;
            }
            left -= visible;
            let (node, queue) = (self.clone(), queue.to_string());
            local.spawn(
                async move { node.receive_from(partition, &queue, visible as u32, visibility_ms).await },
            );
        }
        let mut out = Vec::new();
        let mut failure = None;
        while let Some(joined) = local.join_next().await {
            match joined.map_err(|e| ApiError::Unavailable(e.to_string())).and_then(|r| r) {
                Ok(messages) => out.extend(messages),
                Err(e) => failure = Some(e),
            }
        }
        for partition in remote {
            let want = max.saturating_sub(out.len() as u32);
            if want == 0 {
                break;
            }
            match self.receive_from(partition, queue, want, visibility_ms).await {
                Ok(messages) => out.extend(messages),
                Err(e) => failure = Some(e),
            }
        }
        (out, failure)
    }

    async fn receive_from(
        &self,
        partition: u32,
        queue: &str,
        max: u32,
        visibility_ms: u64,
    ) -> Result<Vec<Delivery>, ApiError> {
        let call = LeaderCall::Receive {
            request_id: new_request_id(),
            queue: queue.to_string(),
            max,
            visibility_ms,
        };
        let deadline = Instant::now() + RECEIVE_PARTITION_WAIT.min(self.request_timeout_dur());
        match self.partition_call(partition, PartitionCall::AtLeader(call), deadline, 2).await? {
            PartitionReply::Received(messages) => Ok(messages),
            other => Err(unexpected(other)),
        }
    }

    /// Sends several messages at once; one outcome per message, in order. The messages of
    /// one partition are proposed together and in order, so a key's order holds within a
    /// batch too.
    pub async fn queue_send_many(
        self: &Arc<Self>,
        queue: &str,
        messages: Vec<(Option<String>, serde_json::Value, Option<String>)>,
    ) -> Vec<Result<Sent, ApiError>> {
        let count = messages.len();
        let mut outcomes: Vec<Option<Result<Sent, ApiError>>> = (0..count).map(|_| None).collect();
        let settings =
            match validate_queue_name(queue).map_err(ApiError::from).and_then(|()| self.queue_settings()) {
                Ok(settings) => settings,
                Err(e) => return (0..count).map(|_| Err(e.clone())).collect(),
            };
        let mut by_partition: BTreeMap<u32, Vec<(usize, Request)>> = BTreeMap::new();
        for (i, (key, body, request_id)) in messages.into_iter().enumerate() {
            let checked = validate_message(key.as_deref(), &body)
                .and_then(|()| request_id.as_deref().map_or(Ok(()), validate_request_id));
            if let Err(e) = checked {
                outcomes[i] = Some(Err(e.into()));
                continue;
            }
            let partition = partition_of(queue, key.as_deref(), settings.partitions);
            let command = Command::QueueSend { queue: queue.to_string(), key, body };
            let request = Request { request_id: Some(request_id.unwrap_or_else(new_request_id)), command };
            by_partition.entry(partition).or_default().push((i, request));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (partition, items) in by_partition {
            let node = self.clone();
            tasks.spawn(async move {
                let (positions, requests): (Vec<usize>, Vec<Request>) = items.into_iter().unzip();
                let deadline = Instant::now() + node.request_timeout_dur();
                let answers = match node
                    .partition_call(partition, PartitionCall::WriteAll(requests), deadline, 2)
                    .await
                {
                    Ok(PartitionReply::AppliedAll(answers)) if answers.len() == positions.len() => answers,
                    Ok(other) => positions.iter().map(|_| Err(unexpected(&other))).collect(),
                    Err(e) => positions.iter().map(|_| Err(e.clone())).collect(),
                };
                (partition, positions, answers)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((partition, positions, answers)) = joined else { continue };
            for (i, answer) in positions.into_iter().zip(answers) {
                outcomes[i] = Some(answer.and_then(|r| self.sent_or_refused(queue, partition, r)));
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(ApiError::Unavailable("the request was cancelled".into()))))
            .collect()
    }

    /// Acknowledges several deliveries at once; one outcome per receipt, in order.
    pub async fn queue_ack_many(
        self: &Arc<Self>,
        queue: &str,
        receipts: Vec<String>,
    ) -> Vec<Result<(), ApiError>> {
        let mut tasks = tokio::task::JoinSet::new();
        let count = receipts.len();
        for (i, receipt) in receipts.into_iter().enumerate() {
            let (node, queue) = (self.clone(), queue.to_string());
            tasks.spawn(async move { (i, node.queue_ack(&queue, &receipt).await) });
        }
        collect_in_order(tasks, count).await
    }

    /// Acknowledges (deletes) the message delivered with `receipt`.
    pub async fn queue_ack(&self, queue: &str, receipt: &str) -> Result<(), ApiError> {
        let command = Command::QueueAck { queue: queue.to_string(), receipt: receipt.to_string() };
        self.settle(queue, receipt, command, "acked").await.map(|_| ())
    }

    /// Returns the message delivered with `receipt`, visible again after `delay_ms`; true
    /// when it went to the dead-letter queue instead.
    pub async fn queue_nack(&self, queue: &str, receipt: &str, delay_ms: u64) -> Result<bool, ApiError> {
        let max_receives = self.queue_settings()?.max_receives;
        let command = Command::QueueNack {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
            delay_ms,
            max_receives,
        };
        let dead = self.settle(queue, receipt, command, "nacked").await?;
        if dead {
            crate::metrics::record_returned(0, 1);
        }
        Ok(dead)
    }

    async fn settle(
        &self,
        queue: &str,
        receipt: &str,
        command: Command,
        op: &'static str,
    ) -> Result<bool, ApiError> {
        validate_queue_name(queue)?;
        let partitions = self.queue_settings()?.partitions;
        let partition = partition_of_receipt(receipt).filter(|p| *p < partitions).ok_or_else(|| {
            ApiError::InvalidArgument(format!("receipt {receipt:?} is not a receipt of this cluster"))
        })?;
        let request = Request { request_id: Some(new_request_id()), command };
        match self.partition_write(partition, request).await? {
            Response::QueueDone { dead_lettered } => {
                crate::metrics::record_queue_op(op, queue, 1);
                Ok(dead_lettered)
            }
            Response::QueueRefused { refusal: QueueRefusal::StaleReceipt } => {
                Err(ApiError::NotFound(format!(
                    "receipt {receipt:?} is not in flight in queue {queue:?}: already acked, returned, or \
                 redelivered after its visibility timeout"
                )))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Counts of `queue` in every partition, read at each partition's leader.
    pub async fn queue_stats(self: &Arc<Self>, queue: &str) -> Result<Vec<PartitionStats>, ApiError> {
        validate_queue_name(queue)?;
        let partitions = self.queue_settings()?.partitions;
        self.stats_of_all(partitions, Some(queue.to_string())).await
    }

    /// Stats of every partition, asked in parallel.
    pub async fn stats_of_all(
        self: &Arc<Self>,
        partitions: u32,
        queue: Option<String>,
    ) -> Result<Vec<PartitionStats>, ApiError> {
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..partitions {
            let node = self.clone();
            let queue = queue.clone();
            tasks.spawn(async move {
                let deadline = Instant::now() + node.request_timeout_dur();
                let reply = node
                    .partition_call(
                        partition,
                        PartitionCall::AtLeader(LeaderCall::Stats { queue }),
                        deadline,
                        2,
                    )
                    .await;
                (partition, reply)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (partition, reply) = joined.map_err(|e| ApiError::Unavailable(e.to_string()))?;
            match reply {
                Ok(PartitionReply::Stats(stats)) => out.push(stats),
                Ok(other) => return Err(unexpected(other)),
                // A partition without a leader still shows, with no counts.
                Err(_) if queue.is_none() => {
                    out.push(PartitionStats { partition, ..PartitionStats::default() })
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|s| s.partition);
        Ok(out)
    }

    fn request_timeout_dur(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    async fn partition_write(&self, partition: u32, request: Request) -> Result<Response, ApiError> {
        let deadline = Instant::now() + self.request_timeout_dur();
        match self.partition_call(partition, PartitionCall::Write(request), deadline, 2).await? {
            PartitionReply::Applied(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Refuses sends to a partition whose state is at its quota, or that would add a queue
    /// to a partition holding as many as allowed (see `crate::quota`).
    fn check_partition_quota(
        &self,
        group: &PartitionGroup,
        partition: u32,
        call: &PartitionCall,
    ) -> Result<(), ApiError> {
        let requests = match call {
            PartitionCall::Write(request) => std::slice::from_ref(request),
            PartitionCall::WriteAll(requests) => requests.as_slice(),
            PartitionCall::AtLeader(_) => return Ok(()),
        };
        let sends: Vec<&str> = requests
            .iter()
            .filter_map(|r| match &r.command {
                Command::QueueSend { queue, .. } => Some(queue.as_str()),
                _ => None,
            })
            .collect();
        if sends.is_empty() {
            return Ok(());
        }
        self.quotas.check_bytes(partition_group(partition), group.sm.usage(), &group.raft)?;
        let applied = group.sm.read();
        let state = &applied.state.state;
        if sends.iter().any(|queue| state.queue(queue).is_none()) {
            crate::quota::Quotas::check_count(
                "queue",
                state.queues().len(),
                self.quotas.queues_per_partition,
                "QUOTA_QUEUES",
            )?;
        }
        Ok(())
    }

    /// Runs `call` at the leader of `partition`'s group: here, at the leader this node knows
    /// of, or through a replica when this node does not host the partition. `hops` bounds how
    /// often the call may still be passed on.
    pub async fn partition_call(
        &self,
        partition: u32,
        call: PartitionCall,
        deadline: Instant,
        hops: u8,
    ) -> Result<PartitionReply, ApiError> {
        let Some(group) = self.partitions.get(partition) else {
            return self.call_replicas(partition, &call, deadline, hops).await;
        };
        // A replica just (re)opened, or one the group dropped, may never hear from the
        // leader by itself (the leader only contacts members): ask the others then.
        let patience = Instant::now() + Duration::from_millis(self.config.election_timeout_max_ms * 2);
        if leader_of(&group.raft, self.config.raft_id, patience.min(deadline)).await.is_err() {
            return self.call_replicas(partition, &call, deadline, hops).await;
        }
        if let PartitionCall::Write(_) | PartitionCall::WriteAll(_) = &call {
            self.check_partition_quota(&group, partition, &call)?;
        }
        let call = match call {
            PartitionCall::Write(request) => {
                let (response, _) = self.submit_to(&group, request, deadline).await?;
                return Ok(PartitionReply::Applied(response));
            }
            PartitionCall::WriteAll(requests) => {
                return Ok(PartitionReply::AppliedAll(self.submit_all_to(&group, requests, deadline).await));
            }
            PartitionCall::AtLeader(call) => call,
        };
        // A replica's own copy tells whether there is anything to receive; a lagging copy
        // only delays a message to the next receive.
        if let LeaderCall::Receive { queue, .. } = &call {
            if !group.sm.read().state.state.has_visible(queue, now_ms()) {
                return Ok(PartitionReply::Received(Vec::new()));
            }
        }
        let passed_on = PartitionCall::AtLeader(call.clone());
        loop {
            let outcome = match leader_of(&group.raft, self.config.raft_id, deadline).await? {
                Leader::Local => self.call_here(partition, &group, &call, deadline).await,
                Leader::Remote(_) if hops == 0 => {
                    Err(ApiError::Unavailable(format!("this node does not lead partition {partition}")))
                }
                Leader::Remote(leader) => {
                    self.post_call(&leader.addr, partition_group(partition), &passed_on, deadline, hops - 1)
                        .await
                }
            };
            match outcome {
                Err(ApiError::Unavailable(_) | ApiError::NoQuorum(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Passes `call` to the replicas the topology names for `partition`, one after another.
    async fn call_replicas(
        &self,
        partition: u32,
        call: &PartitionCall,
        deadline: Instant,
        hops: u8,
    ) -> Result<PartitionReply, ApiError> {
        if hops == 0 {
            return Err(ApiError::Unavailable(format!("this node does not host partition {partition}")));
        }
        let topology = self.topology_or_unavailable()?;
        let mut names: Vec<String> =
            topology.partitions.get(partition as usize).map(|r| r.replicas.clone()).unwrap_or_default();
        if let Some(target) = topology.targets().get(partition as usize) {
            names.extend(target.replicas.iter().filter(|n| !names.contains(n)).cloned().collect::<Vec<_>>());
        }
        let members = self.members_by_name();
        let mut last = ApiError::NoQuorum(format!("no replica of partition {partition} answered"));
        loop {
            for name in names.iter().filter(|n| **n != self.config.name) {
                let Some(member) = members.get(name) else { continue };
                match self.post_call(&member.addr, partition_group(partition), call, deadline, hops - 1).await
                {
                    Ok(reply) => return Ok(reply),
                    Err(e @ (ApiError::Unavailable(_) | ApiError::NoQuorum(_))) => last = e,
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(RETRY_PAUSE * 4).await;
        }
    }

    /// Sends `call` to the node at `addr`.
    async fn post_call(
        &self,
        addr: &str,
        group: GroupId,
        call: &PartitionCall,
        deadline: Instant,
        hops: u8,
    ) -> Result<PartitionReply, ApiError> {
        if self.isolation.is_set() {
            return Err(ApiError::NoQuorum("this node is cut off from its peers".into()));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let envelope = serde_json::json!({
            "hops": hops,
            "within_ms": remaining.as_millis() as u64,
            "call": call,
        });
        let url = format!("http://{addr}/raft/{group}/queue");
        let resp = self
            .http
            .post(url)
            .json(&envelope)
            .timeout(remaining + Duration::from_millis(200))
            .send()
            .await
            .map_err(|e| ApiError::NoQuorum(format!("{addr} unreachable: {e}")))?;
        if !resp.status().is_success() {
            return Err(ApiError::Unavailable(format!("{addr} answered HTTP {}", resp.status())));
        }
        resp.json::<Result<PartitionReply, ApiError>>()
            .await
            .map_err(|e| ApiError::Unavailable(format!("bad answer from {addr}: {e}")))?
    }

    /// Runs `call` on this node, which leads `partition`'s group.
    async fn call_here(
        &self,
        partition: u32,
        group: &PartitionGroup,
        call: &LeaderCall,
        deadline: Instant,
    ) -> Result<PartitionReply, ApiError> {
        match call {
            LeaderCall::Receive { request_id, queue, max, visibility_ms } => {
                let command =
                    Command::QueueReceive { queue: queue.clone(), max: *max, visibility_ms: *visibility_ms };
                let request = Request { request_id: Some(request_id.clone()), command };
                match group.proposer.submit(request, deadline).await {
                    ForwardedWrite::Applied(Response::QueueReceived { messages }, _) => {
                        Ok(PartitionReply::Received(messages))
                    }
                    ForwardedWrite::Applied(other, _) => Err(unexpected(other)),
                    ForwardedWrite::NotLeader => Err(ApiError::Unavailable("leadership moved; retry".into())),
                    ForwardedWrite::Timeout => Err(ApiError::NoQuorum(format!(
                        "partition {partition} did not commit the receive in time"
                    ))),
                    ForwardedWrite::Failed(reason) => Err(ApiError::Unavailable(reason)),
                }
            }
            LeaderCall::Stats { queue } => {
                Ok(PartitionReply::Stats(self.local_stats(partition, group, queue)))
            }
            LeaderCall::Reconfigure { replicas } => {
                reconfigure(&group.raft, replicas, self.request_timeout_dur() * 2).await?;
                Ok(PartitionReply::Reconfigured)
            }
        }
    }

    fn local_stats(&self, partition: u32, group: &PartitionGroup, queue: &Option<String>) -> PartitionStats {
        let leader = {
            let m = group.raft.metrics();
            let m = m.borrow();
            m.current_leader
                .and_then(|id| m.membership_config.membership().get_node(&id).map(|n| n.name.clone()))
        };
        let mut stats = PartitionStats { partition, leader, ..PartitionStats::default() };
        if let Some(queue) = queue {
            let applied = group.sm.read();
            if let Some(q) = applied.state.state.queue(queue) {
                stats.ready = q.ready.len();
                stats.in_flight = q.in_flight.len();
            }
            stats.dead_letters =
                applied.state.state.queue(&format!("{queue}{DLQ_SUFFIX}")).map(|q| q.depth()).unwrap_or(0);
        }
        stats
    }

    /// Opens `partition`'s group on this node and starts forwarding its apply notifications.
    async fn host(&self, partition: u32, rank: u64) -> anyhow::Result<Arc<PartitionGroup>> {
        let group = partition_group(partition);
        let group = Arc::new(self.start_group(group, PartitionMachine::new(partition), rank).await?);
        let mut applied = group.sm.changes();
        let changed = self.partitions.changed.clone();
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        self.partitions.insert(partition, group.clone());
        tracing::info!(partition, "hosting queue partition");
        Ok(group)
    }
}

/// Waits for every task of `tasks`, each answering its position, and returns the outcomes
/// in position order.
async fn collect_in_order<T: Send + 'static>(
    mut tasks: tokio::task::JoinSet<(usize, Result<T, ApiError>)>,
    count: usize,
) -> Vec<Result<T, ApiError>> {
    let mut outcomes: Vec<Option<Result<T, ApiError>>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, outcome)) = joined {
            outcomes[i] = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(ApiError::Unavailable("the request was cancelled".into()))))
        .collect()
}

/// Gives `raft`'s group exactly `replicas` as voters: new nodes join as learners and catch
/// up first, then one joint-consensus change replaces the voter set.
async fn reconfigure(
    raft: &crate::types::Raft,
    replicas: &[Member],
    limit: Duration,
) -> Result<(), ApiError> {
    let wanted: BTreeMap<NodeId, &Member> = replicas.iter().map(|m| (raft_id(&m.name), m)).collect();
    let membership = raft.metrics().borrow().membership_config.clone();
    for (id, member) in &wanted {
        if membership.membership().get_node(id).is_none() {
            let added = timeout(limit, raft.add_learner(*id, (*member).clone(), true)).await;
            membership_result(added, "add a learner to the partition")?;
        }
    }
    let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
    let ids: BTreeSet<NodeId> = wanted.keys().copied().collect();
    if voters == ids && membership.membership().nodes().count() == ids.len() {
        return Ok(());
    }
    let changed = timeout(limit, raft.change_membership(ChangeMembers::ReplaceAllVoters(ids), false)).await;
    membership_result(changed, "change the partition's voters")
}

type WriteResult<T> =
    Result<Result<T, RaftError<NodeId, ClientWriteError<NodeId, Member>>>, tokio::time::error::Elapsed>;

fn membership_result<T>(result: WriteResult<T>, action: &str) -> Result<(), ApiError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Err(_) => Err(ApiError::NoQuorum(format!("could not {action} in time"))),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(ApiError::Unavailable(format!("leadership moved while trying to {action}")))
        }
        Ok(Err(e)) => Err(ApiError::Unavailable(format!("cannot {action}: {e}"))),
    }
}

/// On group 0's leader: writes the topology once, keeps the ring's nodes equal to group 0's
/// voters, and moves one partition at a time to its target replica set.
pub async fn placement_duties(node: Arc<Node>) {
    loop {
        tokio::time::sleep(PLACEMENT_INTERVAL).await;
        if node.group0().raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        if let Err(e) = place_once(&node).await {
            tracing::debug!(error = %e, "queue placement will retry");
        }
    }
}

async fn place_once(node: &Node) -> Result<(), ApiError> {
    let voters: Vec<String> = {
        let m = node.group0().raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let mut names: Vec<String> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.name.clone()))
            .collect();
        names.sort();
        names
    };
    if voters.is_empty() {
        return Ok(());
    }
    let Some(topology) = node.topology() else {
        let request = TopologyCommand::Setup { settings: node.config.queues, nodes: voters };
        node.write_here(Command::Topology { request }).await?;
        tracing::info!("queue topology created");
        return Ok(());
    };
    if topology.nodes != voters {
        tracing::info!(nodes = ?voters, "queue ring follows the new membership");
        node.write_here(Command::Topology { request: TopologyCommand::SetNodes { nodes: voters } }).await?;
        return Ok(());
    }
    let Some((partition, target)) = topology.pending_moves().into_iter().next() else { return Ok(()) };
    let generation = topology.partitions[partition as usize].generation;
    let members = node.members_by_name();
    let replicas: Option<Vec<Member>> = target.iter().map(|n| members.get(n).cloned()).collect();
    let Some(replicas) = replicas else { return Ok(()) };
    tracing::info!(partition, replicas = ?target, "moving queue partition");
    let deadline = Instant::now() + node.request_timeout_dur() * 4;
    node.partition_call(
        partition,
        PartitionCall::AtLeader(LeaderCall::Reconfigure { replicas }),
        deadline,
        2,
    )
    .await?;
    let request = TopologyCommand::Moved { partition, generation, replicas: target };
    node.write_here(Command::Topology { request }).await?;
    crate::metrics::record_partition_move();
    Ok(())
}

/// On every node: opens the groups of the partitions this node replicates (or is about to),
/// initialises those it was created with, and closes those moved away.
pub async fn host_duties(node: Arc<Node>) {
    let mut pending: BTreeMap<u32, Instant> = BTreeMap::new();
    loop {
        if let Some(topology) = node.topology() {
            host_once(&node, &topology, &mut pending).await;
        }
        tokio::time::sleep(PLACEMENT_INTERVAL).await;
    }
}

/// One pass of [`host_duties`]. `pending` holds the partitions of generation 0 this node
/// still has to initialise and since when: initialising makes a node campaign at once, so
/// the preferred replica does it first and the others only if the group is still empty
/// after a few election timeouts (the preferred replica may be down).
async fn host_once(node: &Node, topology: &Topology, pending: &mut BTreeMap<u32, Instant>) {
    let me = &node.config.name;
    let targets = topology.targets();
    let patience = Duration::from_millis(node.config.election_timeout_max_ms * 2);
    for (partition, record) in topology.partitions.iter().enumerate() {
        let partition = partition as u32;
        let in_record = record.replicas.contains(me);
        let target = targets.get(partition as usize).map(|t| t.replicas.as_slice()).unwrap_or_default();
        let wanted = in_record || target.contains(me);
        let rank = record.replicas.iter().chain(target).position(|n| n == me).unwrap_or(0) as u32;
        match (wanted, node.partitions.get(partition)) {
            (true, None) => match node.host(partition, u64::from(rank)).await {
                Ok(_) if record.generation == 0 && in_record => {
                    pending.insert(partition, Instant::now() + patience * rank);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(partition, error = %e, "cannot open the partition"),
            },
            (false, Some(_)) => {
                if let Some(group) = node.partitions.remove(partition) {
                    tracing::info!(partition, "partition moved away; closing its group");
                    if let Err(e) = group.raft.shutdown().await {
                        tracing::warn!(partition, error = %e, "raft shutdown failed");
                    }
                }
                pending.remove(&partition);
            }
            _ => {}
        }
        // A node started to join a running cluster (or restored that way) never creates a
        // partition group: the group exists elsewhere, and a fresh one could win elections
        // among wiped replicas and overwrite the real one.
        if node.config.join {
            pending.remove(&partition);
        }
        let due = pending.get(&partition).is_some_and(|at| *at <= Instant::now());
        if let (true, Some(group)) = (due, node.partitions.get(partition)) {
            if record.generation != 0 || initialize(node, &group, &record.replicas).await {
                pending.remove(&partition);
            }
        }
    }
}

/// Initialises a partition group created with `replicas`, unless it already holds state.
/// True once nothing is left to do.
async fn initialize(node: &Node, group: &PartitionGroup, replicas: &[String]) -> bool {
    match group.raft.is_initialized().await {
        Ok(true) => return true,
        Ok(false) => {}
        Err(_) => return false,
    }
    let members = node.members_by_name();
    let chosen: Option<BTreeMap<NodeId, Member>> =
        replicas.iter().map(|n| members.get(n).map(|m| (raft_id(n), m.clone()))).collect();
    let Some(chosen) = chosen else { return false };
    match group.raft.initialize(chosen).await {
        Ok(()) => true,
        Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot initialise a partition yet");
            false
        }
    }
}

/// On every node: the leader of each hosted partition returns expired in-flight messages;
/// queue gauges are refreshed from the partitions this node leads.
pub async fn expiry_duties(node: Arc<Node>) {
    let mut gauges_at = Instant::now();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::time::sleep(EXPIRY_INTERVAL).await;
        let Ok(settings) = node.queue_settings() else { continue };
        let max_receives = settings.max_receives;
        let now = now_ms();
        for partition in node.partitions.hosted() {
            let Some(group) = node.partitions.get(partition) else { continue };
            if group.raft.metrics().borrow().state != ServerState::Leader {
                continue;
            }
            let due = group.sm.read().state.state.next_deadline_ms().is_some_and(|d| d <= now);
            if !due {
                continue;
            }
            let request = Request { request_id: None, command: Command::QueueExpire { max_receives } };
            let deadline = Instant::now() + node.request_timeout_dur();
            if let ForwardedWrite::Applied(Response::QueueExpired { redelivered, dead_lettered }, _) =
                group.proposer.submit(request, deadline).await
            {
                crate::metrics::record_returned(redelivered, dead_lettered);
            }
        }
        if gauges_at.elapsed() >= GAUGE_INTERVAL {
            gauges_at = Instant::now();
            reported = refresh_gauges(&node, reported);
        }
    }
}

/// Sets depth and in-flight gauges for the queues of the partitions this node leads, and
/// zeroes those it reported before but no longer sees.
fn refresh_gauges(node: &Node, reported: BTreeSet<String>) -> BTreeSet<String> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut led = 0;
    for partition in node.partitions.hosted() {
        let Some(group) = node.partitions.get(partition) else { continue };
        if group.raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        led += 1;
        for (name, q) in group.sm.read().state.state.queues() {
            let entry = counts.entry(name.clone()).or_default();
            entry.0 += q.ready.len();
            entry.1 += q.in_flight.len();
        }
    }
    for gone in reported.iter().filter(|q| !counts.contains_key(*q)) {
        crate::metrics::set_queue_gauges(gone, 0, 0);
    }
    for (name, (ready, in_flight)) in &counts {
        crate::metrics::set_queue_gauges(name, *ready, *in_flight);
    }
    metrics::gauge!("sinkron_queue_partitions_led").set(led as f64);
    metrics::gauge!("sinkron_queue_partitions_hosted").set(node.partitions.hosted().len() as f64);
    counts.into_keys().collect()
}
