//! One batched stream of Raft calls per peer, for every group.
//!
//! Seventeen groups each sending their own AppendEntries, heartbeats and votes to a peer
//! made seventeen HTTP calls where one would do. Here every group's calls bound for a peer
//! queue on that peer's stream; the stream sends whatever is queued as one
//! `POST /raft/batch` as soon as a call slot is free (at most [`STREAM_IN_FLIGHT`] per
//! peer, no timer), up to [`STREAM_MAX_BYTES`] of bodies. The receiver runs the calls of
//! one batch concurrently, so the appends of several groups share one flush of the node's
//! shared log. Snapshots travel on their own calls (`/raft/{group}/snapshot`), never here.
//!
//! A call's body is serialised once, by its caller, and carried as raw JSON; each call keeps
//! its own deadline, and the batch as a whole waits as long as its longest one.
//!
//! When the last batch carried calls of several groups, the stream yields once to the
//! scheduler before it takes the queue: the other groups woken by the same event (one
//! flush, one peer reply) then get their calls into the same batch. With 40 messages in
//! flight over 16 partitions this cut the batches per message by a third. With one busy
//! group it does not yield, so a lone call waits for nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::types::GroupId;
use crate::wire::{StreamCall, StreamReply};

/// Most batches sent to one peer and not yet answered.
pub const STREAM_IN_FLIGHT: usize = 2;
/// A batch stops growing once its bodies add up to this many bytes (its first call always
/// goes, whatever its size).
pub const STREAM_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most calls in one batch; the receiver refuses more.
pub const STREAM_MAX_CALLS: usize = 512;

/// Failure of a call before the peer's Raft answered.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The peer could not be reached at all (refused, timed out connecting).
    Unreachable(String),
    /// The peer was reached but the exchange failed.
    Network(String),
    /// The peer answered with a client error: it will answer the same again, so the call
    /// must not be retried at once. With the peer's explanation.
    Refused(u16, String),
}

#[derive(Debug)]
struct Queued {
    call: StreamCall,
    deadline: Instant,
    reply: oneshot::Sender<Result<Box<RawValue>, CallError>>,
}

/// The streams of one node to its peers, by address. Cloning gives another handle.
#[derive(Clone, Debug)]
pub struct Streams {
    http: crate::peer_http::PeerHttp,
    by_addr: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Queued>>>>,
}

impl Streams {
    /// No streams yet; each starts with the first call to its peer.
    pub fn new(http: crate::peer_http::PeerHttp) -> Self {
        Self { http, by_addr: Arc::default() }
    }

    /// Sends `body` as call `rpc` of `group` to the peer at `addr` in the peer's next batch;
    /// answers the peer's reply body, or why there is none, within `timeout`. The caller
    /// checks fault injection's isolation first.
    pub async fn call(
        &self,
        addr: &str,
        group: GroupId,
        rpc: &str,
        body: Box<RawValue>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, CallError> {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let queued = Queued { call: StreamCall { group, rpc: rpc.to_string(), body }, deadline, reply: tx };
        self.sender(addr).send(queued).map_err(|_| CallError::Network("the peer stream stopped".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(CallError::Network("the peer stream dropped the call".into())),
            Err(_) => Err(CallError::Unreachable(format!("no answer from {addr} within {timeout:?}"))),
        }
    }

    fn sender(&self, addr: &str) -> mpsc::UnboundedSender<Queued> {
        let mut streams = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = streams.get(addr).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(addr.to_string(), self.http.clone(), rx));
        streams.insert(addr.to_string(), tx.clone());
        tx
    }
}

/// The stream of one peer: takes what is queued whenever a call slot is free.
async fn run(addr: String, peer: crate::peer_http::PeerHttp, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(STREAM_IN_FLIGHT));
    let url = peer.url(&addr, "/raft/batch");
    let http = peer.client;
    // Groups in the last batch: when several groups are busy, their calls arrive together.
    let mut last_groups = 0usize;
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        if last_groups > 1 {
            // Let the other groups woken by the same event queue their calls too.
            tokio::task::yield_now().await;
        }
        let mut bytes = first.call.body.get().len();
        let mut batch = vec![first];
        while bytes < STREAM_MAX_BYTES && batch.len() < STREAM_MAX_CALLS {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.call.body.get().len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // Calls whose caller gave up are not sent.
        batch.retain(|q| !q.reply.is_closed());
        last_groups = distinct_groups(&batch);
        if batch.is_empty() {
            continue;
        }
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            send(&http, &url, batch).await;
            drop(slot);
        });
    }
}

/// How many groups have calls in `batch`.
fn distinct_groups(batch: &[Queued]) -> usize {
    let mut groups: Vec<GroupId> = batch.iter().map(|q| q.call.group).collect();
    groups.sort_unstable();
    groups.dedup();
    groups.len()
}

async fn send(http: &reqwest::Client, url: &str, batch: Vec<Queued>) {
    let longest = batch.iter().map(|q| q.deadline).max().unwrap_or_else(Instant::now);
    let timeout = longest.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let calls: Vec<&StreamCall> = batch.iter().map(|q| &q.call).collect();
    crate::metrics::record_stream_batch(calls.len());
    let outcome = post_json::<_, Vec<StreamReply>>(http, url, &calls, timeout).await.and_then(|replies| {
        if replies.len() == batch.len() {
            Ok(replies)
        } else {
            Err(CallError::Network(format!(
                "peer answered {} replies to {} calls",
                replies.len(),
                batch.len()
            )))
        }
    });
    match outcome {
        Ok(replies) => {
            for (queued, reply) in batch.into_iter().zip(replies) {
                let _ = queued.reply.send(reply.into_result());
            }
        }
        Err(e) => {
            for queued in batch {
                let _ = queued.reply.send(Err(e.clone()));
            }
        }
    }
}

/// POSTs `body` as JSON to a peer's `url` and reads its JSON answer: what every
/// node-to-node Raft call shares, streamed or on its own.
pub async fn post_json<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let resp = http.post(url).json(body).timeout(timeout).send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            CallError::Unreachable(e.to_string())
        } else {
            CallError::Network(e.to_string())
        }
    })?;
    let status = resp.status();
    if status.is_client_error() && status != reqwest::StatusCode::NOT_FOUND {
        let detail = resp.text().await.unwrap_or_default();
        return Err(CallError::Refused(status.as_u16(), detail));
    }
    if !status.is_success() {
        return Err(CallError::Network(format!("peer answered HTTP {status}")));
    }
    resp.json().await.map_err(|e| CallError::Network(e.to_string()))
}

impl StreamReply {
    /// The reply body, or the refusal it stands for.
    fn into_result(self) -> Result<Box<RawValue>, CallError> {
        match (self.status, self.body) {
            (200, Some(body)) => Ok(body),
            (404, _) => Err(CallError::Network(self.error.unwrap_or_else(|| "not found".into()))),
            (status, _) if (400..500).contains(&status) => {
                Err(CallError::Refused(status, self.error.unwrap_or_default()))
            }
            (status, _) => {
                Err(CallError::Network(format!("peer answered {status}: {}", self.error.unwrap_or_default())))
            }
        }
    }
}
