//! Batching of client requests: the proposer (on the leader) and the forwarder (elsewhere).
//!
//! openraft 0.9's core handles one append at a time and replicates one call at a time per
//! follower, so one entry per request would cap a group at one request per replication
//! round trip (a follower's fsync included). Both
//! batchers keep at most [`IN_FLIGHT_MAX`] batches in flight; requests that arrive meanwhile
//! queue up and go out together as the next batch. An idle system sends a single request at
//! once (no added latency); a busy one amortises each fsync, replication round trip and
//! forwarding HTTP call over up to [`BATCH_MAX`] requests.
//!
//! - [`Batcher::proposer`] turns a batch into one Raft entry on the leader; its [`Gate`]
//!   first answers the requests that need no entry (a receive that could only find nothing).
//! - [`Batcher::forwarder`] sends a batch to the leader's `/raft/{group}/write` in one call.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use sinkron_core::{Batch, Request, Response};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::now_ms;
use crate::peers::Peers;
use crate::types::{GroupId, Raft};
use crate::wire::ForwardedWrite;

/// Most requests in one batch.
pub const BATCH_MAX: usize = 512;
/// A batch stops growing once its requests add up to this many bytes (estimated).
pub const BATCH_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Most batches sent and not yet answered.
pub const IN_FLIGHT_MAX: usize = 2;
/// Most requests waiting for a batch; beyond it callers wait for room (backpressure).
const QUEUE_MAX: usize = 16 * 1024;

struct Pending {
    request: Request,
    bytes: usize,
    reply: oneshot::Sender<ForwardedWrite>,
}

/// Answers, on the leader, requests that need no entry, before a batch is proposed.
pub trait Gate: Send + Sync + 'static {
    /// For each request, the outcome it gets without an entry, or `None` to propose it.
    fn admit(&self, requests: &[Request]) -> Vec<Option<ForwardedWrite>>;
    /// The proposed `requests` are over (applied, or failed).
    fn settled(&self, requests: &[Request]);
}

/// Handle to a batching task. Cloning gives another handle to the same task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Proposes batches as single entries of `raft`, past `gate` if there is one; an entry
    /// not applied within `timeout` is answered [`ForwardedWrite::Timeout`].
    pub fn proposer(raft: Raft, timeout: Duration, gate: Option<Arc<dyn Gate>>) -> Self {
        Self::spawn(move |requests| {
            let (raft, gate) = (raft.clone(), gate.clone());
            async move {
                match gate {
                    Some(gate) => propose_gated(&raft, requests, timeout, gate.as_ref()).await,
                    None => propose(&raft, requests, timeout).await,
                }
            }
        })
    }

    /// Sends batches to the current leader of `raft`'s group through `peers`.
    pub fn forwarder(raft: Raft, group: GroupId, peers: Peers, timeout: Duration) -> Self {
        Self::spawn(move |requests| {
            let (raft, peers) = (raft.clone(), peers.clone());
            async move {
                if peers.isolation.is_set() {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    return requests.iter().map(|_| ForwardedWrite::NotLeader).collect();
                }
                forward(&raft, group, &peers, requests, timeout).await
            }
        })
    }

    fn spawn<F, Fut>(send: F) -> Self
    where
        F: Fn(Vec<Request>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<ForwardedWrite>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(run(rx, send));
        Self { tx }
    }

    /// Queues `request` and waits for its outcome until `deadline`.
    pub async fn submit(&self, request: Request, deadline: Instant) -> ForwardedWrite {
        match self.enqueue(request, deadline).await {
            Some(rx) => await_reply(rx, deadline).await,
            None => ForwardedWrite::Timeout,
        }
    }

    /// Queues every request at once (so they can share a batch) and waits for all outcomes,
    /// in order.
    pub async fn submit_all(&self, requests: Vec<Request>, deadline: Instant) -> Vec<ForwardedWrite> {
        let mut receivers = Vec::with_capacity(requests.len());
        for request in requests {
            receivers.push(self.enqueue(request, deadline).await);
        }
        let mut outcomes = Vec::with_capacity(receivers.len());
        for rx in receivers {
            outcomes.push(match rx {
                Some(rx) => await_reply(rx, deadline).await,
                None => ForwardedWrite::Timeout,
            });
        }
        outcomes
    }

    async fn enqueue(
        &self,
        request: Request,
        deadline: Instant,
    ) -> Option<oneshot::Receiver<ForwardedWrite>> {
        let (reply, rx) = oneshot::channel();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let bytes = request.approx_bytes();
        let queued = tokio::time::timeout(remaining, self.tx.send(Pending { request, bytes, reply })).await;
        matches!(queued, Ok(Ok(()))).then_some(rx)
    }
}

async fn await_reply(rx: oneshot::Receiver<ForwardedWrite>, deadline: Instant) -> ForwardedWrite {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => ForwardedWrite::Failed("the batcher stopped".into()),
        Err(_) => ForwardedWrite::Timeout,
    }
}

async fn run<F, Fut>(mut rx: mpsc::Receiver<Pending>, send: F)
where
    F: Fn(Vec<Request>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<ForwardedWrite>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    loop {
        // Take a slot first: while both slots are busy, requests accumulate into the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX && bytes < BATCH_MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<ForwardedWrite>>) =
            batch.into_iter().map(|p| (p.request, p.reply)).unzip();
        let sent = send(requests);
        tokio::spawn(async move {
            let outcomes = sent.await;
            drop(slot);
            let mut outcomes = outcomes.into_iter();
            for reply in replies {
                let outcome = outcomes
                    .next()
                    .unwrap_or_else(|| ForwardedWrite::Failed("fewer replies than requests".into()));
                let _ = reply.send(outcome);
            }
        });
    }
}

/// Answers what `gate` answers, proposes the rest as one entry (if any is left), and
/// returns one outcome per request, in order.
async fn propose_gated(
    raft: &Raft,
    requests: Vec<Request>,
    timeout: Duration,
    gate: &dyn Gate,
) -> Vec<ForwardedWrite> {
    let mut answers = gate.admit(&requests);
    let proposed: Vec<Request> =
        requests.into_iter().zip(&answers).filter(|(_, a)| a.is_none()).map(|(r, _)| r).collect();
    if proposed.is_empty() {
        return answers.into_iter().flatten().collect();
    }
    // Settled however this ends, a panic or a dropped future included: a claim left behind
    // would keep counting until its id reached the log, which it never would.
    let settle = Settle { gate, requests: proposed };
    let outcomes = propose(raft, settle.requests.clone(), timeout).await;
    drop(settle);
    let mut outcomes = outcomes.into_iter();
    answers
        .iter_mut()
        .map(|answer| {
            answer
                .take()
                .or_else(|| outcomes.next())
                .unwrap_or_else(|| ForwardedWrite::Failed("fewer replies than requests".into()))
        })
        .collect()
}

/// Tells a gate that requests it admitted are over, when dropped.
struct Settle<'a> {
    gate: &'a dyn Gate,
    requests: Vec<Request>,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.gate.settled(&self.requests);
    }
}

/// Appends `requests` as one entry and returns one outcome per request.
async fn propose(raft: &Raft, requests: Vec<Request>, timeout: Duration) -> Vec<ForwardedWrite> {
    let count = requests.len();
    metrics::histogram!("sinkron_proposal_batch_requests").record(count as f64);
    // Randomness enters the log like time: drawn here, by the proposing leader, and carried
    // in the entry, so every replica applies the same values.
    let seed = requests.iter().any(Request::needs_seed).then(|| sinkron_core::entropy::Seed(rand::random()));
    let entry = Batch { at_ms: now_ms(), requests, seed };
    match tokio::time::timeout(timeout, raft.client_write(entry)).await {
        Ok(Ok(written)) => {
            let index = written.log_id.index;
            let wasted = written
                .data
                .iter()
                .filter(|r| matches!(r, Response::QueueReceived { messages } if messages.is_empty()))
                .count();
            crate::metrics::record_receives_wasted(wasted);
            written.data.into_iter().map(|r| ForwardedWrite::Applied(r, index)).collect()
        }
        Err(_) => (0..count).map(|_| ForwardedWrite::Timeout).collect(),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            (0..count).map(|_| ForwardedWrite::NotLeader).collect()
        }
        Ok(Err(e)) => (0..count).map(|_| ForwardedWrite::Failed(e.to_string())).collect(),
    }
}

/// Sends `requests` to the leader in one call; any failure to reach it is `NotLeader`, which
/// makes the callers look for the leader again.
async fn forward(
    raft: &Raft,
    group: GroupId,
    peers: &Peers,
    requests: Vec<Request>,
    timeout: Duration,
) -> Vec<ForwardedWrite> {
    let count = requests.len();
    let leader = {
        let m = raft.metrics();
        let m = m.borrow();
        m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned())
    };
    let Some(leader) = leader else { return (0..count).map(|_| ForwardedWrite::NotLeader).collect() };
    // Forwarded requests were queued with the caller's deadline; a call outliving the
    // longest of them would be answered to nobody.
    match peers.forward_writes(&leader, group, &requests, timeout).await {
        Some(outcomes) => outcomes,
        None => (0..count).map(|_| ForwardedWrite::NotLeader).collect(),
    }
}
