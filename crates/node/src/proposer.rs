//! The proposer: turns concurrent client requests into few, large Raft entries.
//!
//! openraft 0.9's core waits for each appended entry to be flushed before it handles the next
//! message, so one entry per request would cap a group at one request per fsync. The proposer
//! keeps at most [`IN_FLIGHT_MAX`] entries in flight; requests that arrive meanwhile queue up
//! and go out together as the next entry. An idle system proposes a single request at once
//! (no added latency); a busy one amortises each fsync and each replication round trip over
//! up to [`BATCH_MAX`] requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use sinkron_core::{Batch, Request, Response};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::node::{now_ms, ForwardedWrite};
use crate::types::Raft;

/// Most requests in one entry.
pub const BATCH_MAX: usize = 512;
/// Most entries proposed and not yet applied.
pub const IN_FLIGHT_MAX: usize = 2;
/// Most requests waiting for a batch; beyond it callers wait for room (backpressure).
const QUEUE_MAX: usize = 16 * 1024;

struct Pending {
    request: Request,
    reply: oneshot::Sender<ForwardedWrite>,
}

/// Handle to a group's proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the proposer of `raft`; a proposal not applied within `timeout` is answered
    /// [`ForwardedWrite::Timeout`].
    pub fn spawn(raft: Raft, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(run(raft, rx, timeout));
        Self { tx }
    }

    /// Proposes `request` and waits for its reply until `deadline`.
    pub async fn propose(&self, request: Request, deadline: Instant) -> ForwardedWrite {
        let (reply, rx) = oneshot::channel();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let queued = tokio::time::timeout(remaining, self.tx.send(Pending { request, reply })).await;
        if !matches!(queued, Ok(Ok(()))) {
            return ForwardedWrite::Timeout;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => ForwardedWrite::Failed("the proposer stopped".into()),
            Err(_) => ForwardedWrite::Timeout,
        }
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, timeout: Duration) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, batch, timeout).await;
            drop(slot);
        });
    }
}

async fn propose_batch(raft: &Raft, pending: Vec<Pending>, timeout: Duration) {
    let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<ForwardedWrite>>) =
        pending.into_iter().map(|p| (p.request, p.reply)).unzip();
    metrics::histogram!("sinkron_proposal_batch_requests").record(requests.len() as f64);
    let entry = Batch { at_ms: now_ms(), requests };
    let outcome = tokio::time::timeout(timeout, raft.client_write(entry)).await;
    let per_request: Box<dyn Fn(usize) -> ForwardedWrite + Send> = match outcome {
        Ok(Ok(written)) => {
            let responses: Vec<Response> = written.data;
            Box::new(move |i| match responses.get(i) {
                Some(r) => ForwardedWrite::Applied(r.clone()),
                None => ForwardedWrite::Failed("the state machine gave fewer replies than requests".into()),
            })
        }
        Err(_) => Box::new(|_| ForwardedWrite::Timeout),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Box::new(|_| ForwardedWrite::NotLeader)
        }
        Ok(Err(e)) => {
            let msg = e.to_string();
            Box::new(move |_| ForwardedWrite::Failed(msg.clone()))
        }
    };
    for (i, reply) in replies.into_iter().enumerate() {
        let _ = reply.send(per_request(i));
    }
}
