//! The queue operations: send (one or many), receive with long polling, ack, nack, stats.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sinkron_core::limits::{validate_message, validate_queue_name, validate_request_id};
use sinkron_core::queue::{partition_of_receipt, Delivery, QueueRefusal};
use sinkron_core::ring::partition_of;
use sinkron_core::{Command, Request, Response};
use tokio::sync::oneshot;
use tokio::time::timeout;

use super::{new_request_id, unexpected, Queues};
use crate::error::NodeError;
use crate::peers::Relayed;
use crate::proposer::Batcher;
use crate::types::{partition_group, Member};
use crate::wire::{LeaderCall, PartitionCall, PartitionQueues, PartitionReply, PartitionStats, Sent};

/// Requests per partition, each with its position among the caller's requests: the acks
/// that ride along with a receive, or any batch proposed partition by partition.
type Riders = BTreeMap<u32, Vec<(usize, Request)>>;
/// Their outcomes, by position.
type RiderOutcomes = Vec<(usize, Result<Response, NodeError>)>;
/// What a receive got, and the outcomes of the acks it carried.
type ReceiveOutcome = (Result<Vec<Delivery>, NodeError>, RiderOutcomes);

/// Whether a waiting receive may be relayed to its home partition's leader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// A client's receive.
    Allowed,
    /// A receive relayed here already.
    Not,
}

/// Where a waiting receive is to be relayed (see `Queues::relay_target`).
enum RelayTarget {
    /// To the leader of the queue's home partition, now.
    To(u32, Member),
    /// Not before its next park.
    NotNow,
    /// Not at all.
    Never,
}

/// Longest a receive waits for one partition before moving on to the next.
const RECEIVE_PARTITION_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between two looks of a long-polling receive (partitions hosted elsewhere
/// do not wake it).
const RECEIVE_POLL: Duration = Duration::from_millis(200);
/// Longest a parked receive holds the acks it carries, waiting for a send to ride with;
/// they are then proposed alone (an ack's caller waits for the receive's answer anyway).
const ACKS_PARKED_MAX: Duration = Duration::from_millis(50);

impl Queues {
    /// Sends a message; answers its id and partition once its partition committed it.
    pub async fn send(
        &self,
        queue: &str,
        key: Option<String>,
        body: serde_json::Value,
        request_id: Option<String>,
        fence: Option<sinkron_core::Fence>,
    ) -> Result<Sent, NodeError> {
        validate_queue_name(queue)?;
        validate_message(key.as_deref(), &body)?;
        if let Some(id) = &request_id {
            validate_request_id(id)?;
        }
        let settings = self.queue_settings()?;
        let partition = partition_of(queue, key.as_deref(), settings.partitions);
        self.partitions.send_arrived(queue);
        if let Some(fence) = &fence {
            self.check_fence_now(fence).await?;
        }
        let command = Command::QueueSend { queue: queue.to_string(), key, body, fence };
        let request = Request { request_id: Some(request_id.unwrap_or_else(new_request_id)), command };
        let response = self.partition_write(partition, request).await?;
        self.sent_or_refused(queue, partition, response)
    }

    /// A fenced send's first check, in group 0: the lock is held with this fence now (after
    /// a read barrier). The partition then refuses the fence if a newer one of the lock
    /// already sent there, so an older holder never sends after its successor did.
    async fn check_fence_now(&self, fence: &sinkron_core::Fence) -> Result<(), NodeError> {
        self.group0.read_barrier().await?;
        let refusal = self.group0.group().sm.read().state.check_fence(fence).err();
        match refusal {
            Some(refusal) => Err(NodeError::refused("(queue send)", refusal)),
            None => Ok(()),
        }
    }

    /// The answer to a send from the partition's reply.
    fn sent_or_refused(&self, queue: &str, partition: u32, response: Response) -> Result<Sent, NodeError> {
        match response {
            Response::QueueSent { id } => {
                crate::metrics::record_queue_op("sent", queue, 1);
                Ok(Sent { id, partition })
            }
            Response::QueueRefused { refusal: QueueRefusal::Full } => Err(NodeError::LimitExceeded(format!(
                "queue {queue:?} holds {} messages in partition {partition}; receive and ack some first",
                sinkron_core::queue::QUEUE_DEPTH_MAX
            ))),
            Response::QueueRefused { refusal: QueueRefusal::StaleFence { lock, current } } => {
                Err(NodeError::StaleFence(
                    format!(
                        "a send with a newer fence ({current}) of lock {lock:?} was already accepted in partition {partition}: the given fence is stale"
                    ),
                    Some(current),
                ))
            }
            Response::Rejected { reason } => Err(NodeError::Conflict(reason)),
            other => Err(unexpected(other)),
        }
    }

    /// Receives up to `max` messages from every partition of `queue`, waiting up to
    /// `wait_ms` for the first one.
    pub async fn receive(
        &self,
        queue: &str,
        max: u32,
        visibility_ms: u64,
        wait_ms: u64,
    ) -> Result<Vec<Delivery>, NodeError> {
        self.receive_with(queue, max, visibility_ms, wait_ms, Riders::new(), Relay::Allowed).await.0
    }

    /// Acknowledges `receipts` of `queue` and receives, as [`Queues::receive`]. An ack of a
    /// partition the receive asks rides in the same proposal as that receive (one entry
    /// where the leader batches them together); the others are proposed meanwhile. Answers
    /// the receive's outcome and one outcome per receipt, in order.
    pub async fn receive_acking(
        &self,
        queue: &str,
        max: u32,
        visibility_ms: u64,
        wait_ms: u64,
        receipts: &[String],
    ) -> (Result<Vec<Delivery>, NodeError>, Vec<Result<(), NodeError>>) {
        let (riders, outcomes) = self.ack_requests(queue, receipts);
        let (received, ridden) =
            self.receive_with(queue, max, visibility_ms, wait_ms, riders, Relay::Allowed).await;
        (received, ack_outcomes(queue, receipts, outcomes, ridden))
    }

    /// Runs a waiting receive another node relayed here (see [`Queues::receive_with`]), with
    /// the acks it carries (their request ids kept); never relayed again.
    ///
    /// Boxed, and with a named type: the relayed receive runs inside a partition call, which
    /// a receive itself makes, so its future would otherwise contain itself.
    pub(super) fn run_relayed_receive(
        &self,
        queue: String,
        max: u32,
        visibility_ms: u64,
        wait_ms: u64,
        acks: Vec<(u32, usize, Request)>,
    ) -> Pin<Box<dyn Future<Output = ReceiveOutcome> + Send + '_>> {
        let mut riders = Riders::new();
        for (partition, position, request) in acks {
            riders.entry(partition).or_default().push((position, request));
        }
        Box::pin(
            async move { self.receive_with(&queue, max, visibility_ms, wait_ms, riders, Relay::Not).await },
        )
    }

    /// [`Queues::receive`], with `riders` proposed along with the first round.
    ///
    /// A waiting receive about to park here, of a queue whose messages all went to its home
    /// partition (the one of sends without a key), is relayed whole to that partition's
    /// leader if another node leads it and no sends to the queue arrive here (see
    /// [`Queues::relay_target`]), and runs there as if its client had called that node. It
    /// then waits where the queue's sends are proposed, whichever node they came through,
    /// and the first send's entry hands the message out; waiting here, it could only ride
    /// with sends passing through this node. If the leader does not run it (refused,
    /// unreachable), it runs here, its acks under the same request ids.
    async fn receive_with(
        &self,
        queue: &str,
        max: u32,
        visibility_ms: u64,
        wait_ms: u64,
        mut riders: Riders,
        relay: Relay,
    ) -> (Result<Vec<Delivery>, NodeError>, RiderOutcomes) {
        let settings =
            validate_queue_name(queue).map_err(NodeError::from).and_then(|()| self.queue_settings());
        let partitions = match settings {
            Ok(settings) => settings.partitions,
            Err(e) => {
                let refused = riders.into_values().flatten().map(|(i, _)| (i, Err(e.clone()))).collect();
                return (Err(e), refused);
            }
        };
        let until = Instant::now() + Duration::from_millis(wait_ms);
        let mut changes = self.partitions.queue_changes(queue);
        // A waiting receive that would find nothing in this node's copies (of every
        // partition) parks before its first look, so that a send reaching this node right
        // behind it carries it; its acks park with it (see [`ParkedReceive::wait`]). Every
        // later look asks the partitions first (those hosted elsewhere too), then parks.
        let mut alone = Vec::new();
        let mut park_first = wait_ms > 0 && self.partitions.nothing_visible_here(queue, partitions);
        // Acks proposed for a client that went away are counted by the node it called.
        let counted = relay == Relay::Allowed;
        // Outcomes of the acks known so far, counted even if the client hangs up now.
        let mut ridden = KnownAcks { outcomes: Vec::new(), queue: counted.then(|| queue.to_string()) };
        // Before it would park, a receive is relayed to its home partition's leader if it
        // qualifies (see [`Queues::relay_target`]); once at most, whatever came of it.
        let mut may_relay = wait_ms > 0 && relay == Relay::Allowed;
        let received = loop {
            // The first park relies on `changes` as subscribed, before the look at this
            // node's copies: an apply since then wakes it.
            if !std::mem::take(&mut park_first) {
                changes.borrow_and_update();
                let round = self.receive_round(
                    queue,
                    max,
                    visibility_ms,
                    partitions,
                    std::mem::take(&mut riders),
                    counted,
                );
                let (out, failure, outcomes) = round.await;
                ridden.outcomes.extend(outcomes);
                if !out.is_empty() {
                    break Ok(out);
                }
                if Instant::now() >= until {
                    break failure.map_or(Ok(Vec::new()), Err);
                }
            }
            if may_relay {
                match self.relay_target(queue, partitions) {
                    RelayTarget::To(home, leader) => {
                        may_relay = false;
                        let relayed =
                            self.relay_receive(home, &leader, queue, max, visibility_ms, until, &riders);
                        if let Some((got, outcomes)) = relayed.await {
                            ridden.outcomes.extend(outcomes);
                            break got;
                        }
                    }
                    RelayTarget::NotNow => {}
                    RelayTarget::Never => may_relay = false,
                }
            }
            let park = ParkedReceive { queue, partitions, max, visibility_ms, until, counted };
            let (parked, left) =
                park.wait(self, &mut changes, std::mem::take(&mut riders), &mut ridden.outcomes).await;
            if !left.is_empty() {
                alone.push(self.propose_alone(left, counted));
            }
            if !parked.is_empty() {
                break Ok(parked);
            }
        };
        for acks in alone {
            ridden.outcomes.extend(acks.outcomes().await);
        }
        // Counted where the client's request was served: a relayed receive by the node that
        // relayed it.
        if relay == Relay::Allowed {
            count_received(queue, &received);
        }
        (received, ridden.take())
    }

    /// Whether a waiting receive of `queue` is to be relayed to its home partition's leader
    /// now: this node hosts that partition and another node leads it, this node's copy shows
    /// nothing visible there, no client's send to the queue arrived here lately (parked
    /// here, the receive would ride with those sends at no extra call), and no relay to this
    /// partition's leader failed lately. Never, for this receive, when this node does not
    /// host the home partition or another partition it hosts holds the queue (its messages
    /// were sent with keys).
    fn relay_target(&self, queue: &str, partitions: u32) -> RelayTarget {
        let home = partition_of(queue, None, partitions);
        let Some(group) = self.partitions.get(home) else { return RelayTarget::Never };
        // The cheapest checks first: they keep most receives here under load.
        if self.partitions.sends_arrive_here(queue) || self.partitions.relay_paused(home) {
            return RelayTarget::NotNow;
        }
        let keyed = (0..partitions)
            .filter(|p| *p != home)
            .any(|p| self.partitions.get(p).is_some_and(|g| g.sm.read().state.state.queue(queue).is_some()));
        if keyed {
            return RelayTarget::Never;
        }
        if !self.partitions.nothing_visible_in(queue, home) {
            return RelayTarget::NotNow;
        }
        let metrics = group.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == openraft::ServerState::Leader {
            return RelayTarget::NotNow;
        }
        match crate::types::leader_member(&metrics) {
            Some(leader) => RelayTarget::To(home, leader),
            None => RelayTarget::NotNow,
        }
    }

    /// Runs the waiting receive at `leader` of `home` until `until`, with `riders`; `None`
    /// when it did not run there (the caller then runs it here, the riders under their
    /// request ids). When its fate is unknown (sent, no answer), it answers with no message
    /// and the riders proposed again under their ids: what the leader's entry may have
    /// taken comes back after its visibility timeout, as with any lost answer.
    #[allow(clippy::too_many_arguments)]
    async fn relay_receive(
        &self,
        home: u32,
        leader: &Member,
        queue: &str,
        max: u32,
        visibility_ms: u64,
        until: Instant,
        riders: &Riders,
    ) -> Option<ReceiveOutcome> {
        let wait_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        let acks = riders
            .iter()
            .flat_map(|(partition, ride)| ride.iter().map(|(i, request)| (*partition, *i, request.clone())))
            .collect();
        // Cancelled (its client hung up) before the answer came, the receive leaves its acks
        // to this guard; the leader's own guard may propose them too, under the same ids.
        let mut unsettled = Unsettled::new(self.clone(), riders.clone(), true);
        let call = PartitionCall::AtLeader(LeaderCall::WaitingReceive {
            queue: queue.to_string(),
            max,
            visibility_ms,
            wait_ms,
            acks,
        });
        // The leader may run past `until`: a receive a batch took at the last moment waits
        // for its answer (asked twice at most), then one last look.
        let deadline = until + self.request_timeout() * 4;
        let peers = self.group0.peers();
        let relayed = peers.relay_waiting_receive(&leader.addr, partition_group(home), &call, deadline).await;
        let riders = unsettled.take();
        match relayed {
            Relayed::Answered(PartitionReply::Waited { received, acks, handed_out }) => {
                crate::metrics::record_receive_relayed("answered");
                for (partition, index) in handed_out {
                    self.partitions.handed_out(partition, index);
                }
                Some((received, acks))
            }
            Relayed::NotRun(_) => {
                crate::metrics::record_receive_relayed("ran_here");
                self.partitions.relay_failed(home);
                None
            }
            Relayed::Answered(_) | Relayed::Unknown(_) => {
                crate::metrics::record_receive_relayed("unknown");
                self.partitions.relay_failed(home);
                // The leader that went silent may be gone, and the acks then wait for the
                // next one: they get as long as the receive would have waited, at least a
                // request timeout. (With one request timeout, a new leader that took longer
                // to emerge found the acks given up, and their messages stayed in flight.)
                let deadline = until.max(Instant::now() + self.request_timeout());
                let outcomes = self.write_by_partition_until(riders, deadline).await;
                Some((Ok(Vec::new()), outcomes.into_iter().map(|(i, _, answer)| (i, answer)).collect()))
            }
        }
    }

    /// One look at every partition. `max` is filled from as few partitions as possible,
    /// by what this node's copies show as visible and unclaimed by its other receives (see
    /// [`super::registry::Partitions::claim_for_receive`]); those are asked in parallel,
    /// each for what it was chosen for (`max` in all, so nothing is taken that cannot be
    /// returned), each with the `riders` of its partition. Partitions hosted elsewhere are
    /// asked one by one for what is still missing. The other riders are proposed meanwhile.
    async fn receive_round(
        &self,
        queue: &str,
        max: u32,
        visibility_ms: u64,
        partitions: u32,
        mut riders: Riders,
        counted: bool,
    ) -> (Vec<Delivery>, Option<NodeError>, RiderOutcomes) {
        let start = self.partitions.rotation.fetch_add(1, Ordering::Relaxed);
        let (chosen, remote) = self.partitions.claim_for_receive(queue, max, partitions, start);
        let mut local = tokio::task::JoinSet::new();
        for (claim, take) in chosen {
            let (this, queue) = (self.clone(), queue.to_string());
            let ride = riders.remove(&claim.partition()).unwrap_or_default();
            local.spawn(async move {
                let request_id = claim.request_id.clone();
                let got = if ride.is_empty() {
                    let got = this.receive_from(claim.partition(), &queue, take, visibility_ms, request_id);
                    (got.await, Vec::new())
                } else {
                    let receive = super::routing::receive_request(&request_id, &queue, take, visibility_ms);
                    this.receive_riding(claim.partition(), receive, ride, counted).await
                };
                drop(claim);
                got
            });
        }
        let alone = (!riders.is_empty()).then(|| {
            let this = self.clone();
            tokio::spawn(async move { this.write_by_partition(riders).await })
        });
        let mut out = Vec::new();
        let mut failure = None;
        let mut ridden = Vec::new();
        while let Some(joined) = local.join_next().await {
            let (got, outcomes) =
                joined.unwrap_or_else(|e| (Err(NodeError::Unavailable(e.to_string())), Vec::new()));
            ridden.extend(outcomes);
            match got {
                Ok(messages) => out.extend(messages),
                Err(e) => failure = Some(e),
            }
        }
        for partition in remote {
            let want = max.saturating_sub(out.len() as u32);
            if want == 0 {
                break;
            }
            match self.receive_from(partition, queue, want, visibility_ms, new_request_id()).await {
                Ok(messages) => out.extend(messages),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(alone) = alone {
            let outcomes = alone.await.unwrap_or_default();
            ridden.extend(outcomes.into_iter().map(|(i, _, answer)| (i, answer)));
        }
        (out, failure, ridden)
    }

    /// `receive` (a `QueueReceive`) from hosted `partition`, proposed in one call after
    /// `ride` (whose requests may then share its entry); the receive's outcome, and each
    /// rider's by position. `counted`: as [`Unsettled::counted`].
    async fn receive_riding(
        &self,
        partition: u32,
        receive: Request,
        ride: Vec<(usize, Request)>,
        counted: bool,
    ) -> (Result<Vec<Delivery>, NodeError>, RiderOutcomes) {
        // Cancelled (its client hung up) before the acks reached the log, the receive leaves
        // them to this guard.
        let mut unsettled = Unsettled::new(self.clone(), Riders::from([(partition, ride.clone())]), counted);
        let (positions, mut requests): (Vec<usize>, Vec<Request>) = ride.into_iter().unzip();
        let Some(group) = self.partitions.get(partition) else {
            unsettled.take();
            let gone = NodeError::Unavailable(format!("partition {partition} closed on this node; retry"));
            return (Err(gone.clone()), positions.into_iter().map(|i| (i, Err(gone.clone()))).collect());
        };
        requests.push(receive);
        // The acks' deadline, as when they are proposed alone.
        let deadline = Instant::now() + self.request_timeout();
        let mut answers = group.submit_all(requests, deadline).await;
        unsettled.take();
        let received = answers
            .pop()
            .unwrap_or_else(|| Err(NodeError::Unavailable("the receive got no answer".into())))
            .and_then(super::routing::deliveries);
        (received, positions.into_iter().zip(answers).collect())
    }

    async fn receive_from(
        &self,
        partition: u32,
        queue: &str,
        max: u32,
        visibility_ms: u64,
        request_id: String,
    ) -> Result<Vec<Delivery>, NodeError> {
        let call = LeaderCall::Receive { request_id, queue: queue.to_string(), max, visibility_ms };
        let deadline = Instant::now() + RECEIVE_PARTITION_WAIT.min(self.request_timeout());
        match self.partition_call(partition, PartitionCall::AtLeader(call), deadline, 2).await? {
            PartitionReply::Received(messages) => Ok(messages),
            other => Err(unexpected(other)),
        }
    }

    /// Sends several messages at once; one outcome per message, in order. The messages of
    /// one partition are proposed together and in order, so a key's order holds within a
    /// batch too.
    pub async fn send_many(
        &self,
        queue: &str,
        messages: Vec<(Option<String>, serde_json::Value, Option<String>)>,
    ) -> Vec<Result<Sent, NodeError>> {
        let count = messages.len();
        let mut outcomes: Vec<Option<Result<Sent, NodeError>>> = (0..count).map(|_| None).collect();
        let settings =
            match validate_queue_name(queue).map_err(NodeError::from).and_then(|()| self.queue_settings()) {
                Ok(settings) => settings,
                Err(e) => return (0..count).map(|_| Err(e.clone())).collect(),
            };
        self.partitions.send_arrived(queue);
        let mut by_partition = Riders::new();
        for (i, (key, body, request_id)) in messages.into_iter().enumerate() {
            let checked = validate_message(key.as_deref(), &body)
                .and_then(|()| request_id.as_deref().map_or(Ok(()), validate_request_id));
            if let Err(e) = checked {
                outcomes[i] = Some(Err(e.into()));
                continue;
            }
            let partition = partition_of(queue, key.as_deref(), settings.partitions);
            let command = Command::QueueSend { queue: queue.to_string(), key, body, fence: None };
            let request = Request { request_id: Some(request_id.unwrap_or_else(new_request_id)), command };
            by_partition.entry(partition).or_default().push((i, request));
        }
        for (i, partition, answer) in self.write_by_partition(by_partition).await {
            outcomes[i] = Some(answer.and_then(|r| self.sent_or_refused(queue, partition, r)));
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(NodeError::Unavailable("the request was cancelled".into()))))
            .collect()
    }

    /// Acknowledges several deliveries at once; one outcome per receipt, in order. The
    /// acks of one partition travel as one call and are proposed together.
    pub async fn ack_many(&self, queue: &str, receipts: Vec<String>) -> Vec<Result<(), NodeError>> {
        let (riders, outcomes) = self.ack_requests(queue, &receipts);
        let answers = self.write_by_partition(riders).await.into_iter().map(|(i, _, answer)| (i, answer));
        ack_outcomes(queue, &receipts, outcomes, answers)
    }

    /// The ack of each of `receipts`, per partition with its position, and the outcomes
    /// known without asking (a receipt that is not one of this cluster's partitions).
    fn ack_requests(&self, queue: &str, receipts: &[String]) -> (Riders, Vec<Option<Result<(), NodeError>>>) {
        let mut outcomes: Vec<Option<Result<(), NodeError>>> = (0..receipts.len()).map(|_| None).collect();
        let mut by_partition = Riders::new();
        for (i, receipt) in receipts.iter().enumerate() {
            let command = Command::QueueAck { queue: queue.to_string(), receipt: receipt.clone() };
            match self.settle_request(queue, receipt, command) {
                Ok((partition, request)) => by_partition.entry(partition).or_default().push((i, request)),
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
        (by_partition, outcomes)
    }

    /// Proposes a receive's acks (`riders`) on a task of their own; the receive takes their
    /// outcomes from the answer. If the receive is gone first (its client hung up), the acks
    /// applied are counted all the same, when the receive would have counted them
    /// (`counted`), as [`Unsettled`] does for acks still waiting with it.
    fn propose_alone(&self, riders: Riders, counted: bool) -> AloneAcks {
        let (tx, rx) = oneshot::channel();
        let queue = counted.then(|| acked_queue(&riders)).flatten();
        let this = self.clone();
        let counting = queue.clone();
        tokio::spawn(async move {
            let outcomes = this.write_by_partition(riders).await;
            let outcomes: RiderOutcomes = outcomes.into_iter().map(|(i, _, answer)| (i, answer)).collect();
            // Refused once the answer was dropped unread: counted here, then.
            if let (Err(outcomes), Some(queue)) = (tx.send(outcomes), counting) {
                count_acked(&queue, outcomes.iter().map(|(_, answer)| answer));
            }
        });
        AloneAcks { rx: Some(rx), queue }
    }

    /// Proposes each partition's requests together, the partitions in parallel; answers
    /// `(position, partition, outcome)` for every request.
    async fn write_by_partition(
        &self,
        by_partition: Riders,
    ) -> Vec<(usize, u32, Result<Response, NodeError>)> {
        self.write_by_partition_until(by_partition, Instant::now() + self.request_timeout()).await
    }

    /// [`Queues::write_by_partition`], each partition trying until `deadline`.
    async fn write_by_partition_until(
        &self,
        by_partition: Riders,
        deadline: Instant,
    ) -> Vec<(usize, u32, Result<Response, NodeError>)> {
        let mut tasks = tokio::task::JoinSet::new();
        for (partition, items) in by_partition {
            let this = self.clone();
            tasks.spawn(async move {
                let (positions, requests): (Vec<usize>, Vec<Request>) = items.into_iter().unzip();
                let answers = match this
                    .partition_call(partition, PartitionCall::WriteAll(requests), deadline, 2)
                    .await
                {
                    Ok(PartitionReply::AppliedAll(answers)) if answers.len() == positions.len() => answers,
                    Ok(other) => positions.iter().map(|_| Err(unexpected(&other))).collect(),
                    Err(e) => positions.iter().map(|_| Err(e.clone())).collect(),
                };
                positions.into_iter().zip(answers).map(|(i, a)| (i, partition, a)).collect::<Vec<_>>()
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            out.extend(joined.unwrap_or_default());
        }
        out
    }

    /// Acknowledges (deletes) the message delivered with `receipt`.
    pub async fn ack(&self, queue: &str, receipt: &str) -> Result<(), NodeError> {
        let command = Command::QueueAck { queue: queue.to_string(), receipt: receipt.to_string() };
        self.settle(queue, receipt, command, "acked").await.map(|_| ())
    }

    /// Returns the message delivered with `receipt`, visible again after `delay_ms`; true
    /// when it went to the dead-letter queue instead.
    pub async fn nack(&self, queue: &str, receipt: &str, delay_ms: u64) -> Result<bool, NodeError> {
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
    ) -> Result<bool, NodeError> {
        let (partition, request) = self.settle_request(queue, receipt, command)?;
        let response = self.partition_write(partition, request).await?;
        settled(queue, receipt, response, op)
    }

    /// The partition a receipt belongs to, and the request that settles it there.
    fn settle_request(
        &self,
        queue: &str,
        receipt: &str,
        command: Command,
    ) -> Result<(u32, Request), NodeError> {
        validate_queue_name(queue)?;
        let partitions = self.queue_settings()?.partitions;
        let partition = partition_of_receipt(receipt).filter(|p| *p < partitions).ok_or_else(|| {
            NodeError::InvalidArgument(format!("receipt {receipt:?} is not a receipt of this cluster"))
        })?;
        Ok((partition, Request { request_id: Some(new_request_id()), command }))
    }

    /// Counts of `queue` in every partition, read at each partition's leader.
    pub async fn stats(&self, queue: &str) -> Result<Vec<PartitionStats>, NodeError> {
        validate_queue_name(queue)?;
        let partitions = self.queue_settings()?.partitions;
        self.stats_of_all(partitions, Some(queue.to_string())).await
    }

    /// Stats of every partition, asked in parallel.
    pub async fn stats_of_all(
        &self,
        partitions: u32,
        queue: Option<String>,
    ) -> Result<Vec<PartitionStats>, NodeError> {
        let mut out = Vec::new();
        for (partition, reply) in
            self.ask_every_partition(partitions, || LeaderCall::Stats { queue: queue.clone() }).await?
        {
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
        Ok(out)
    }

    /// The queues of every partition with their counts, asked of each partition's leader in
    /// parallel; partitions that did not answer are listed apart.
    pub async fn list(&self) -> Result<(Vec<PartitionQueues>, Vec<u32>), NodeError> {
        let partitions = self.queue_settings()?.partitions;
        let mut listed = Vec::new();
        let mut unanswered = Vec::new();
        for (partition, reply) in self.ask_every_partition(partitions, || LeaderCall::Queues).await? {
            match reply {
                Ok(PartitionReply::Queues(queues)) => listed.push(queues),
                Ok(other) => return Err(unexpected(other)),
                Err(_) => unanswered.push(partition),
            }
        }
        Ok((listed, unanswered))
    }

    /// Partition `partition`'s whole state, read at its leader, for a backup.
    pub async fn snapshot(&self, partition: u32) -> Result<crate::backup::GroupBackup, NodeError> {
        let partitions = self.queue_settings()?.partitions;
        if partition >= partitions {
            return Err(NodeError::NotFound(format!("partition {partition}: the cluster has {partitions}")));
        }
        let deadline = Instant::now() + self.request_timeout();
        match self
            .partition_call(partition, PartitionCall::AtLeader(LeaderCall::Snapshot), deadline, 2)
            .await?
        {
            PartitionReply::Snapshot(backup) => Ok(backup),
            other => Err(unexpected(other)),
        }
    }

    /// Asks every partition's leader `call()`, in parallel; the replies in partition order.
    async fn ask_every_partition(
        &self,
        partitions: u32,
        call: impl Fn() -> LeaderCall,
    ) -> Result<Vec<(u32, Result<PartitionReply, NodeError>)>, NodeError> {
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..partitions {
            let this = self.clone();
            let call = call();
            tasks.spawn(async move {
                let deadline = Instant::now() + this.request_timeout();
                let reply = this.partition_call(partition, PartitionCall::AtLeader(call), deadline, 2).await;
                (partition, reply)
            });
        }
        let mut out = Vec::with_capacity(partitions as usize);
        while let Some(joined) = tasks.join_next().await {
            out.push(joined.map_err(|e| NodeError::Unavailable(e.to_string()))?);
        }
        out.sort_by_key(|(partition, _)| *partition);
        Ok(out)
    }
}

/// Counts the messages a client's receive got.
fn count_received(queue: &str, received: &Result<Vec<Delivery>, NodeError>) {
    if let Ok(out) = received {
        if !out.is_empty() {
            crate::metrics::record_queue_op("received", queue, out.len() as u64);
        }
    }
}

/// Every ack's outcome, in order: `known` ones, then those of the partitions' `answers`;
/// any left without either was cancelled.
fn ack_outcomes(
    queue: &str,
    receipts: &[String],
    mut known: Vec<Option<Result<(), NodeError>>>,
    answers: impl IntoIterator<Item = (usize, Result<Response, NodeError>)>,
) -> Vec<Result<(), NodeError>> {
    for (i, answer) in answers {
        known[i] = Some(answer.and_then(|r| settled(queue, &receipts[i], r, "acked")).map(|_| ()));
    }
    known
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(NodeError::Unavailable("the request was cancelled".into()))))
        .collect()
}

/// The outcome of an ack or nack from its partition's answer: whether the message went to
/// the dead-letter queue.
fn settled(queue: &str, receipt: &str, response: Response, op: &'static str) -> Result<bool, NodeError> {
    match response {
        Response::QueueDone { dead_lettered } => {
            crate::metrics::record_queue_op(op, queue, 1);
            Ok(dead_lettered)
        }
        Response::QueueRefused { refusal: QueueRefusal::StaleReceipt } => Err(NodeError::NotFound(format!(
            "receipt {receipt:?} is not in flight in queue {queue:?}: already acked, returned, or \
             redelivered after its visibility timeout"
        ))),
        other => Err(unexpected(other)),
    }
}

/// One long-polling receive's wait at the batchers of its queue's partitions this node
/// hosts (see [`ParkedReceive::wait`]).
struct ParkedReceive<'a> {
    queue: &'a str,
    partitions: u32,
    max: u32,
    visibility_ms: u64,
    until: Instant,
    /// Whether acks proposed for a client that went away are counted here.
    counted: bool,
}

impl ParkedReceive<'_> {
    /// Waits until `until` (at most 200 ms), or until `changes` fires, with the receive
    /// parked at the batchers that take this node's sends to every partition of the queue
    /// it hosts: the first send to the queue passing through this node, whatever its key,
    /// then carries the receive in its entry (see [`crate::proposer::Park`]). While a send to
    /// the queue is on its way through one of those batchers, the receive is proposed right
    /// behind it there instead.
    ///
    /// `riders` (acks) of a single hosted partition wait with the receive, at most
    /// [`ACKS_PARKED_MAX`], and share its entry if that partition's batch takes it; their
    /// outcomes go to `ridden`. What the receive got, and the riders left to propose alone
    /// (all of them when they span partitions, and any that did not ride or got no answer:
    /// asked again under their request ids, the log answers those that were applied).
    async fn wait(
        &self,
        queues: &Queues,
        changes: &mut tokio::sync::watch::Receiver<u64>,
        mut riders: Riders,
        ridden: &mut RiderOutcomes,
    ) -> (Vec<Delivery>, Riders) {
        let hosted: Vec<_> =
            (0..self.partitions).filter_map(|p| queues.partitions.get(p).map(|g| (p, g))).collect();
        let bound = match riders.keys().collect::<Vec<_>>()[..] {
            [partition] => hosted.iter().position(|(p, _)| p == partition),
            _ => None,
        };
        let pause = self.until.saturating_duration_since(Instant::now()).min(RECEIVE_POLL);
        let Some(at) = bound else {
            // Proposed alone at once (if any), meanwhile.
            let alone = (!riders.is_empty()).then(|| queues.propose_alone(riders, self.counted));
            let got = if hosted.is_empty() {
                let _ = timeout(pause, changes.changed()).await;
                Vec::new()
            } else {
                self.park(queues, &hosted, changes, pause, None).await.0
            };
            if let Some(alone) = alone {
                ridden.extend(alone.outcomes().await);
            }
            return (got, Riders::new());
        };
        let (partition, ride) = riders.pop_first().unwrap_or_default();
        let requests = ride.iter().map(|(_, request)| request.clone()).collect();
        // A caller that goes away meanwhile (its client hung up) leaves the acks to this guard.
        let mut unsettled = Unsettled::new(queues.clone(), Riders::from([(partition, ride)]), self.counted);
        let pause = pause.min(ACKS_PARKED_MAX);
        let (got, answers) = self.park(queues, &hosted, changes, pause, Some((at, requests))).await;
        let ride = unsettled.take().remove(&partition).unwrap_or_default();
        let mut left = Vec::new();
        let mut rode = 0;
        for ((i, request), answer) in ride.into_iter().zip(answers) {
            match answer {
                Some(crate::wire::ForwardedWrite::Applied(response, _)) => {
                    rode += 1;
                    ridden.push((i, Ok(response)));
                }
                _ => left.push((i, request)),
            }
        }
        // Counted once applied: a batch that took them and then failed leaves them to be
        // proposed alone, below.
        crate::metrics::record_acks_rode(rode);
        if !left.is_empty() {
            riders.insert(partition, left);
        }
        (got, riders)
    }

    /// Parks the receive (with `before` riding ahead of it at one of `hosted`) for at most
    /// `pause`; what it got, and an answer for each request of `before` (`None` for those
    /// that did not ride or got no answer).
    async fn park(
        &self,
        queues: &Queues,
        hosted: &[(u32, std::sync::Arc<super::PartitionGroup>)],
        changes: &mut tokio::sync::watch::Receiver<u64>,
        pause: Duration,
        before: Option<(usize, Vec<Request>)>,
    ) -> (Vec<Delivery>, Vec<Option<crate::wire::ForwardedWrite>>) {
        use crate::wire::ForwardedWrite;
        let riding = before.as_ref().map_or(0, |(_, r)| r.len());
        let unanswered = || (0..riding).map(|_| None).collect::<Vec<_>>();
        let batchers: Vec<&Batcher> =
            hosted.iter().map(|(_, g)| if g.is_leader() { &g.proposer } else { &g.forwarder }).collect();
        let (queue, max, visibility_ms) = (self.queue, self.max, self.visibility_ms);
        let request = super::routing::receive_request(&new_request_id(), queue, max, visibility_ms);
        let deadline = Instant::now() + queues.request_timeout();
        let (reply, taker, answers) = match batchers.iter().position(|b| b.sending_to(queue)) {
            Some(at) => match before {
                Some((bound, mut requests)) if bound == at => {
                    requests.push(request.clone());
                    let mut answers: Vec<_> =
                        batchers[at].submit_all(requests, deadline).await.into_iter().map(Some).collect();
                    let reply = answers.pop().flatten();
                    (reply, Some(at), answers)
                }
                _ => (Some(batchers[at].submit(request.clone(), deadline).await), Some(at), unanswered()),
            },
            None => {
                let mut ticket = Batcher::park_at(&batchers, request.clone(), before);
                let reply = tokio::select! {
                    reply = &mut ticket.reply => reply.ok(),
                    _ = timeout(pause, changes.changed()) => {
                        if ticket.unpark() {
                            return (Vec::new(), unanswered());
                        }
                        // A batch took it meanwhile: its answer is on the way.
                        timeout(queues.request_timeout(), &mut ticket.reply).await.ok().and_then(Result::ok)
                    }
                };
                let mut answers = Vec::with_capacity(riding);
                let deadline = tokio::time::Instant::now() + queues.request_timeout();
                for rx in std::mem::take(&mut ticket.before) {
                    // Answered with the receive's batch, or closed at once if they did not ride.
                    answers.push(tokio::time::timeout_at(deadline, rx).await.ok().and_then(Result::ok));
                }
                (reply, ticket.taken_at(), answers)
            }
        };
        let response = match (reply, taker.and_then(|at| hosted.get(at))) {
            (Some(ForwardedWrite::Applied(response, index)), Some((partition, _))) => {
                note_handed_out(queues, *partition, index, &response);
                response
            }
            (Some(ForwardedWrite::Applied(response, _)), None) => response,
            // It may have been applied with its answer lost on the way: asked again under its
            // request id where it was proposed, the log answers with what it handed out (or
            // it is proposed now).
            (_, Some((partition, group))) => {
                match group.submit(request, Instant::now() + queues.request_timeout()).await {
                    Ok((response, index)) => {
                        note_handed_out(queues, *partition, index, &response);
                        response
                    }
                    Err(_) => return (Vec::new(), answers),
                }
            }
            (_, None) => return (Vec::new(), answers),
        };
        (super::routing::deliveries(response).unwrap_or_default(), answers)
    }
}

/// Notes, for the behind-copy rule of [`Queues::receive`], that a parked receive through
/// this node took messages of `partition` at log index `index`.
fn note_handed_out(queues: &Queues, partition: u32, index: u64, response: &Response) {
    if matches!(response, Response::QueueReceived { messages } if !messages.is_empty()) {
        queues.partitions.handed_out(partition, index);
    }
}

/// The queue of the acks among `riders`.
fn acked_queue(riders: &Riders) -> Option<String> {
    riders.values().flatten().find_map(|(_, request)| match &request.command {
        Command::QueueAck { queue, .. } => Some(queue.clone()),
        _ => None,
    })
}

/// Counts the acks of a receive whose client hung up, as the receive would have counted
/// them had it answered (`ack_outcomes`): those applied.
fn count_acked<'a>(queue: &str, outcomes: impl Iterator<Item = &'a Result<Response, NodeError>>) {
    let acked = outcomes.filter(|o| matches!(o, Ok(Response::QueueDone { .. }))).count();
    if acked > 0 {
        crate::metrics::record_queue_op("acked", queue, acked as u64);
    }
}

/// The outcomes of a receive's acks known so far. The receive counts them when it answers
/// (`ack_outcomes`); dropped before that (its client hung up), they are counted here.
struct KnownAcks {
    outcomes: RiderOutcomes,
    /// Their queue, when the receive counts its acks.
    queue: Option<String>,
}

impl KnownAcks {
    /// The outcomes, for the receive to answer and count.
    fn take(&mut self) -> RiderOutcomes {
        std::mem::take(&mut self.outcomes)
    }
}

impl Drop for KnownAcks {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            count_acked(queue, self.outcomes.iter().map(|(_, answer)| answer));
        }
    }
}

/// The outcomes of acks a receive proposed alone ([`Queues::propose_alone`]), on their way.
struct AloneAcks {
    rx: Option<oneshot::Receiver<RiderOutcomes>>,
    /// Their queue, when the receive counts its acks.
    queue: Option<String>,
}

impl AloneAcks {
    /// The outcomes, for the receive to answer and count.
    async fn outcomes(mut self) -> RiderOutcomes {
        match self.rx.take() {
            Some(rx) => rx.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl Drop for AloneAcks {
    /// Dropped unread (the receive's client hung up): counts the outcomes that already
    /// arrived. Closed first, so any that come later are refused, and the proposing task
    /// counts those.
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        rx.close();
        if let (Ok(outcomes), Some(queue)) = (rx.try_recv(), &self.queue) {
            count_acked(queue, outcomes.iter().map(|(_, answer)| answer));
        }
    }
}

/// The acks a receive carries, while their outcome is not known: proposed on a task of
/// their own if the receive is dropped (its client went away) before that, as they would
/// have been had they not gone with it. Proposed again under their request ids, an
/// ack that did ride is answered from the log, not applied twice.
struct Unsettled {
    queues: Queues,
    riders: Option<Riders>,
    /// Whether the acks proposed are counted here: not at the node a receive was relayed
    /// to, as the relaying node counts them.
    counted: bool,
}

impl Unsettled {
    fn new(queues: Queues, riders: Riders, counted: bool) -> Self {
        Self { queues, riders: Some(riders), counted }
    }

    /// Takes the acks back: their outcome is known, or the caller proposes them itself.
    fn take(&mut self) -> Riders {
        self.riders.take().unwrap_or_default()
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        let Some(riders) = self.riders.take().filter(|r| r.values().any(|ride| !ride.is_empty())) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let queue = acked_queue(&riders).filter(|_| self.counted);
        let queues = self.queues.clone();
        runtime.spawn(async move {
            let outcomes = queues.write_by_partition(riders).await;
            if let Some(queue) = queue {
                count_acked(&queue, outcomes.iter().map(|(_, _, answer)| answer));
            }
        });
    }
}
