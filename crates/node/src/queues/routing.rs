//! Reaching a partition's leader: here, through the leader this node knows of, or through a
//! replica when this node does not host the partition; and what the leader runs itself.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sinkron_core::ids::raft_id;
use sinkron_core::limits::{QUEUE_RECEIVE_MAX, QUEUE_WAIT_MAX_MS};
use sinkron_core::queue::DLQ_SUFFIX;
use sinkron_core::{Command, Request, Response};
use tokio::time::timeout;

use super::{unexpected, PartitionGroup, Queues, RETRY_PAUSE};
use crate::clock::now_ms;
use crate::error::NodeError;
use crate::group::{membership_outcome, Leader};
use crate::types::{partition_group, Member, NodeId};
use crate::wire::{
    LeaderCall, PartitionCall, PartitionQueues, PartitionReply, PartitionStats, QueueCounts,
    QUEUES_LISTED_MAX,
};

impl Queues {
    /// Refuses sends to a partition whose state is at its quota, or that would add a queue
    /// to a partition holding as many as allowed (see `crate::quota`).
    fn check_partition_quota(
        &self,
        group: &PartitionGroup,
        partition: u32,
        call: &PartitionCall,
    ) -> Result<(), NodeError> {
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
    ) -> Result<PartitionReply, NodeError> {
        let Some(group) = self.partitions.get(partition) else {
            return self.call_replicas(partition, &call, deadline, hops).await;
        };
        // A replica just (re)opened, or one the group dropped, may never hear from the
        // leader by itself (the leader only contacts members): ask the others then.
        let patience = Instant::now() + Duration::from_millis(self.config.election_timeout_max_ms * 2);
        if group.leader(patience.min(deadline)).await.is_err() {
            return self.call_replicas(partition, &call, deadline, hops).await;
        }
        if let PartitionCall::Write(_) | PartitionCall::WriteAll(_) = &call {
            self.check_partition_quota(&group, partition, &call)?;
        }
        let call = match call {
            PartitionCall::Write(request) => {
                let (response, _) = group.submit(request, deadline).await?;
                return Ok(PartitionReply::Applied(response));
            }
            PartitionCall::WriteAll(requests) => {
                return Ok(PartitionReply::AppliedAll(group.submit_all(requests, deadline).await));
            }
            PartitionCall::AtLeader(call) => call,
        };
        // A replica's own copy tells whether there is anything to receive; a lagging copy
        // only delays a message to the next receive.
        if let LeaderCall::Receive { queue, .. } = &call {
            if !group.sm.read().state.state.has_visible(queue, now_ms()) {
                return Ok(PartitionReply::Received(Vec::new()));
            }
            // Not passed on as a call of its own: `call_here` proposes it through the group,
            // which forwards it to a remote leader in a batch with the group's other writes.
            return self.call_here(partition, &group, &call, deadline).await;
        }
        // A relayed waiting receive runs at the leader it was relayed to, or nowhere: the
        // relaying node then runs it itself.
        if let LeaderCall::WaitingReceive { .. } = &call {
            if !group.is_leader() {
                return Err(NodeError::Unavailable(format!("this node does not lead partition {partition}")));
            }
            return self.call_here(partition, &group, &call, deadline).await;
        }
        let passed_on = PartitionCall::AtLeader(call.clone());
        loop {
            let outcome = match group.leader(deadline).await? {
                Leader::Local => self.call_here(partition, &group, &call, deadline).await,
                Leader::Remote(_) if hops == 0 => {
                    Err(NodeError::Unavailable(format!("this node does not lead partition {partition}")))
                }
                Leader::Remote(leader) => {
                    self.group0
                        .peers()
                        .partition_call(
                            &leader.addr,
                            partition_group(partition),
                            &passed_on,
                            deadline,
                            hops - 1,
                        )
                        .await
                }
            };
            match outcome {
                Err(NodeError::Unavailable(_) | NodeError::NoQuorum(_)) if Instant::now() < deadline => {
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
    ) -> Result<PartitionReply, NodeError> {
        if hops == 0 {
            return Err(NodeError::Unavailable(format!("this node does not host partition {partition}")));
        }
        let topology = self.topology_or_unavailable()?;
        let mut names: Vec<String> =
            topology.partitions.get(partition as usize).map(|r| r.replicas.clone()).unwrap_or_default();
        if let Some(target) = topology.targets().get(partition as usize) {
            names.extend(target.replicas.iter().filter(|n| !names.contains(n)).cloned().collect::<Vec<_>>());
        }
        let members = self.group0.members_by_name();
        let mut last = NodeError::NoQuorum(format!("no replica of partition {partition} answered"));
        loop {
            for name in names.iter().filter(|n| **n != self.config.name) {
                let Some(member) = members.get(name) else { continue };
                match self
                    .group0
                    .peers()
                    .partition_call(&member.addr, partition_group(partition), call, deadline, hops - 1)
                    .await
                {
                    Ok(reply) => return Ok(reply),
                    Err(e @ (NodeError::Unavailable(_) | NodeError::NoQuorum(_))) => last = e,
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(RETRY_PAUSE * 4).await;
        }
    }

    /// Runs `call` on this node, which leads `partition`'s group (a receive also when it does
    /// not: it is proposed through the group, forwarded to the leader if need be).
    async fn call_here(
        &self,
        partition: u32,
        group: &PartitionGroup,
        call: &LeaderCall,
        deadline: Instant,
    ) -> Result<PartitionReply, NodeError> {
        match call {
            LeaderCall::Receive { request_id, queue, max, visibility_ms } => {
                let request = receive_request(request_id, queue, *max, *visibility_ms);
                received(group.submit(request, deadline).await?.0)
            }
            LeaderCall::WaitingReceive { queue, max, visibility_ms, wait_ms, acks } => {
                let (max, wait_ms) = ((*max).clamp(1, QUEUE_RECEIVE_MAX), (*wait_ms).min(QUEUE_WAIT_MAX_MS));
                let relayed =
                    self.run_relayed_receive(queue.clone(), max, *visibility_ms, wait_ms, acks.clone());
                let (received, acks) = relayed.await;
                let mut from: Vec<u32> = received
                    .iter()
                    .flatten()
                    .filter_map(|d| sinkron_core::queue::partition_of_receipt(&d.receipt))
                    .collect();
                from.sort_unstable();
                from.dedup();
                let handed_out = from
                    .into_iter()
                    .filter_map(|p| self.partitions.handed_out_at(p).map(|i| (p, i)))
                    .collect();
                Ok(PartitionReply::Waited { received, acks, handed_out })
            }
            LeaderCall::Stats { queue } => {
                Ok(PartitionReply::Stats(self.local_stats(partition, group, queue)))
            }
            LeaderCall::Queues => Ok(PartitionReply::Queues(local_queues(partition, group))),
            LeaderCall::Snapshot => {
                let applied = group.sm.read();
                let state = serde_json::to_value(&applied.state).map_err(|e| {
                    NodeError::Unavailable(format!("cannot encode partition {partition}: {e}"))
                })?;
                Ok(PartitionReply::Snapshot(crate::backup::GroupBackup {
                    group: crate::types::partition_group(partition),
                    last_log_id: applied.last_applied,
                    state,
                }))
            }
            LeaderCall::Reconfigure { replicas } => {
                reconfigure(&group.raft, replicas, self.request_timeout() * 2).await?;
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
}

/// The request that takes up to `max` visible messages of `queue` into flight.
pub(super) fn receive_request(request_id: &str, queue: &str, max: u32, visibility_ms: u64) -> Request {
    Request {
        request_id: Some(request_id.to_string()),
        command: Command::QueueReceive { queue: queue.to_string(), max, visibility_ms },
    }
}

/// The messages a receive's entry handed out.
fn received(response: Response) -> Result<PartitionReply, NodeError> {
    deliveries(response).map(PartitionReply::Received)
}

/// The deliveries of a receive's reply.
pub(super) fn deliveries(response: Response) -> Result<Vec<sinkron_core::queue::Delivery>, NodeError> {
    match response {
        Response::QueueReceived { messages } => Ok(messages),
        other => Err(unexpected(other)),
    }
}

/// The queues of `group` with their counts, from its applied state.
fn local_queues(partition: u32, group: &PartitionGroup) -> PartitionQueues {
    let applied = group.sm.read();
    let all = applied.state.state.queues();
    let queues = all
        .iter()
        .take(QUEUES_LISTED_MAX)
        .map(|(name, q)| QueueCounts {
            queue: name.clone(),
            ready: q.ready.len(),
            in_flight: q.in_flight.len(),
        })
        .collect();
    PartitionQueues { partition, queues, truncated: all.len() > QUEUES_LISTED_MAX }
}

/// Gives `raft`'s group exactly `replicas` as voters: new nodes join as learners and catch
/// up first, then one joint-consensus change replaces the voter set.
async fn reconfigure(
    raft: &crate::types::Raft,
    replicas: &[Member],
    limit: Duration,
) -> Result<(), NodeError> {
    let wanted: BTreeMap<NodeId, &Member> = replicas.iter().map(|m| (raft_id(&m.name), m)).collect();
    let membership = raft.metrics().borrow().membership_config.clone();
    for (id, member) in &wanted {
        if membership.membership().get_node(id).is_none() {
            let added = timeout(limit, raft.add_learner(*id, (*member).clone(), true)).await;
            membership_outcome(added, "add a learner to the partition")?;
        }
    }
    let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
    let ids: BTreeSet<NodeId> = wanted.keys().copied().collect();
    if voters == ids && membership.membership().nodes().count() == ids.len() {
        return Ok(());
    }
    let changed =
        timeout(limit, raft.change_membership(openraft::ChangeMembers::ReplaceAllVoters(ids), false)).await;
    membership_outcome(changed, "change the partition's voters")
}
