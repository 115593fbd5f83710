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
//!
//! A receive that found nothing may [`Batcher::park`] at either batcher: the next batch that
//! carries a send to its queue takes it along, after the send, so one entry stores the
//! message and hands it out (see `crate::park`).
//!
//! The proposer's batching task hands each batch to Raft itself and waits for the answers
//! on a task of its own: the leader's log then holds the batches in the order their
//! requests passed the gate, which the gate relies on when it counts the messages of sends
//! still on their way. The forwarder's calls, two at a time, may reach the leader in either
//! order; a receive that overtakes the send it follows is answered empty and waits again.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::ClientWriteError;
use sinkron_core::{Batch, Command, Request, Response};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::now_ms;
use crate::park::{queue_counts, Parcel, Pending};
pub use crate::park::{Park, Ticket};
use crate::payload::Payload;
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
    park: Arc<Park>,
}

impl Batcher {
    /// Proposes batches as single entries of `raft`, past `gate` if there is one; an entry
    /// not applied within `timeout` is answered [`ForwardedWrite::Timeout`].
    // Handing a batch to Raft yields the future of its answers, on purpose (see `spawn`).
    #[allow(clippy::async_yields_async)]
    pub fn proposer(raft: Raft, timeout: Duration, gate: Option<Arc<dyn Gate>>) -> Self {
        Self::spawn(move |requests| {
            let (raft, gate) = (raft.clone(), gate.clone());
            async move {
                match gate {
                    Some(gate) => propose_gated(&raft, requests, timeout, gate).await,
                    None => propose(&raft, requests, timeout).await,
                }
            }
        })
    }

    /// Sends batches to the current leader of `raft`'s group through `peers`.
    pub fn forwarder(raft: Raft, group: GroupId, peers: Peers, timeout: Duration) -> Self {
        Self::spawn(move |requests| {
            let (raft, peers) = (raft.clone(), peers.clone());
            let answers: Answers = Box::pin(async move {
                if peers.isolation.is_set() {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    return requests.iter().map(|_| ForwardedWrite::NotLeader).collect();
                }
                forward(&raft, group, &peers, requests, timeout).await
            });
            std::future::ready(answers)
        })
    }

    /// Runs a batching task over `send`, which hands a batch on (awaited in the batches'
    /// order) and gives back the future of its answers (awaited on a task of its own).
    fn spawn<F, Fut>(send: F) -> Self
    where
        F: Fn(Vec<Request>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answers> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let park = Arc::new(Park::default());
        tokio::spawn(run(rx, park.clone(), send));
        Self { tx, park }
    }

    /// Parks `receive` (a `QueueReceive` with a request id) until a batch with a send to
    /// its queue takes it along; its outcome arrives on the ticket's `reply`. The ticket
    /// takes it back when dropped.
    pub fn park(&self, receive: Request) -> Ticket {
        Self::park_at(&[self], receive, None)
    }

    /// Parks `receive` at every one of `batchers` at once: the first batch of any of them
    /// with a send to its queue takes it along ([`Ticket::taken_at`] tells which).
    ///
    /// `before` holds requests for one of the batchers (by index) that ride ahead of the
    /// receive if that batcher's batch takes it; their outcomes arrive on
    /// [`Ticket::before`], whose receivers close unanswered if another batcher took the
    /// receive or it was taken back.
    pub fn park_at(batchers: &[&Batcher], receive: Request, before: Option<(usize, Vec<Request>)>) -> Ticket {
        let pending = |request: Request| {
            let (reply, rx) = oneshot::channel();
            (Pending { bytes: request.approx_bytes(), request, reply }, rx)
        };
        let (receive, rx) = pending(receive);
        let (at, before) = before.unwrap_or_default();
        let (before, before_rx): (Vec<Pending>, Vec<_>) = before.into_iter().map(pending).unzip();
        let places = batchers.iter().map(|b| b.park.clone()).collect();
        Ticket::park(places, Parcel { receive, before, at }, rx, before_rx)
    }

    /// Whether a batch holding a send to `queue` is on its way and not yet answered.
    pub fn sending_to(&self, queue: &str) -> bool {
        self.park.sending_to(queue)
    }

    /// Queues `request` and waits for its outcome until `deadline`.
    pub async fn submit(&self, request: Request, deadline: Instant) -> ForwardedWrite {
        match self.enqueue(request, deadline).await {
            Some(rx) => await_reply(rx, deadline).await,
            None => ForwardedWrite::Timeout,
        }
    }

    /// Queues every request at once (so they share a batch unless it fills up: room for all
    /// is reserved first, then they are queued back to back) and waits for all outcomes, in
    /// order.
    pub async fn submit_all(&self, requests: Vec<Request>, deadline: Instant) -> Vec<ForwardedWrite> {
        let count = requests.len();
        if count > QUEUE_MAX {
            return self.submit_each(requests, deadline).await;
        }
        let sized: Vec<(usize, Request)> = requests.into_iter().map(|r| (r.approx_bytes(), r)).collect();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(permits)) = tokio::time::timeout(remaining, self.tx.reserve_many(count)).await else {
            return (0..count).map(|_| ForwardedWrite::Timeout).collect();
        };
        let mut receivers = Vec::with_capacity(count);
        for (permit, (bytes, request)) in permits.zip(sized) {
            let (reply, rx) = oneshot::channel();
            permit.send(Pending { request, bytes, reply });
            receivers.push(rx);
        }
        let mut outcomes = Vec::with_capacity(count);
        for rx in receivers {
            outcomes.push(await_reply(rx, deadline).await);
        }
        outcomes
    }

    /// [`Batcher::submit_all`] one request at a time, for more than the queue holds.
    async fn submit_each(&self, requests: Vec<Request>, deadline: Instant) -> Vec<ForwardedWrite> {
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

/// The answers to a batch, one per request, once they come.
type Answers = std::pin::Pin<Box<dyn Future<Output = Vec<ForwardedWrite>> + Send>>;

async fn run<F, Fut>(mut rx: mpsc::Receiver<Pending>, park: Arc<Park>, send: F)
where
    F: Fn(Vec<Request>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answers> + Send + 'static,
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
        // Riders are receives: they leave the batch's sends as counted.
        let sends = queue_counts(batch.iter().map(|p| &p.request));
        let riders = park.riders(&sends, BATCH_MAX.saturating_sub(batch.len()));
        batch.extend(riders);
        let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<ForwardedWrite>>) =
            batch.into_iter().map(|p| (p.request, p.reply)).unzip();
        park.track_sends(&sends, true);
        // Handed on here, one batch after the other, so the leader's log holds the batches
        // in the order their requests passed the gate.
        let sent = send(requests).await;
        let park = park.clone();
        tokio::spawn(async move {
            let outcomes = sent.await;
            park.track_sends(&sends, false);
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

/// Answers what `gate` answers, hands the rest to Raft as one entry (if any is left,
/// receives after the other requests), and gives back the future of one outcome per
/// request, in the callers' order.
async fn propose_gated(
    raft: &Raft,
    requests: Vec<Request>,
    timeout: Duration,
    gate: Arc<dyn Gate>,
) -> Answers {
    // Receives go last in the entry, each group in its own order: the requests of a batch
    // are all pending at once, so this is an order their clients could have seen, and a
    // receive then finds the messages the same batch sends (the gate counts them).
    let order: Vec<usize> = {
        let receive = |i: &usize| matches!(requests[*i].command, Command::QueueReceive { .. });
        let (receives, others): (Vec<usize>, Vec<usize>) = (0..requests.len()).partition(receive);
        others.into_iter().chain(receives).collect()
    };
    let mut slots: Vec<Option<Request>> = requests.into_iter().map(Some).collect();
    let requests: Vec<Request> = order.iter().filter_map(|i| slots[*i].take()).collect();
    let mut gated = gate.admit(&requests);
    let proposed: Vec<Request> =
        requests.into_iter().zip(&gated).filter(|(_, a)| a.is_none()).map(|(r, _)| r).collect();
    // Settled however this ends, a panic or a dropped future included: a claim left behind
    // would keep counting until its id reached the log, which it never would.
    let settle = Settle { gate, requests: proposed };
    let outcomes = if settle.requests.is_empty() {
        None
    } else {
        Some(propose(raft, settle.requests.clone(), timeout).await)
    };
    Box::pin(async move {
        let outcomes = match outcomes {
            Some(outcomes) => outcomes.await,
            None => Vec::new(),
        };
        drop(settle);
        let mut outcomes = outcomes.into_iter();
        let in_entry_order: Vec<ForwardedWrite> = gated
            .iter_mut()
            .map(|answer| {
                answer
                    .take()
                    .or_else(|| outcomes.next())
                    .unwrap_or_else(|| ForwardedWrite::Failed("fewer replies than requests".into()))
            })
            .collect();
        let mut answers: Vec<Option<ForwardedWrite>> = order.iter().map(|_| None).collect();
        for (i, outcome) in order.into_iter().zip(in_entry_order) {
            answers[i] = Some(outcome);
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| ForwardedWrite::Failed("fewer replies than requests".into())))
            .collect()
    })
}

/// Tells a gate that requests it admitted are over, when dropped.
struct Settle {
    gate: Arc<dyn Gate>,
    requests: Vec<Request>,
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.gate.settled(&self.requests);
    }
}

/// Hands `requests` to Raft as one entry; the future of one outcome per request.
async fn propose(raft: &Raft, requests: Vec<Request>, timeout: Duration) -> Answers {
    let count = requests.len();
    metrics::histogram!("sinkron_proposal_batch_requests").record(count as f64);
    // Randomness enters the log like time: drawn here, by the proposing leader, and carried
    // in the entry, so every replica applies the same values.
    let seed = requests.iter().any(Request::needs_seed).then(|| sinkron_core::entropy::Seed(rand::random()));
    let all = move |outcome: &dyn Fn() -> ForwardedWrite| (0..count).map(|_| outcome()).collect::<Vec<_>>();
    // Encoded here, once: the log and every follower reuse these bytes.
    let entry = match Payload::new(Batch { at_ms: now_ms(), requests, seed }) {
        Ok(entry) => entry,
        Err(e) => return Box::pin(std::future::ready(all(&|| ForwardedWrite::Failed(e.to_string())))),
    };
    let reply = match raft.client_write_ff(entry).await {
        Ok(reply) => reply,
        Err(e) => {
            let failed = all(&|| ForwardedWrite::Failed(e.to_string()));
            return Box::pin(std::future::ready(failed));
        }
    };
    Box::pin(async move {
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(Ok(written))) => {
                let index = written.log_id.index;
                let wasted = written
                    .data
                    .iter()
                    .filter(|r| matches!(r, Response::QueueReceived { messages } if messages.is_empty()))
                    .count();
                crate::metrics::record_receives_wasted(wasted);
                written.data.into_iter().map(|r| ForwardedWrite::Applied(r, index)).collect()
            }
            Err(_) => all(&|| ForwardedWrite::Timeout),
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => all(&|| ForwardedWrite::NotLeader),
            Ok(Ok(Err(e))) => all(&|| ForwardedWrite::Failed(e.to_string())),
            Ok(Err(_)) => all(&|| ForwardedWrite::Failed("the Raft group stopped".into())),
        }
    })
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
    let leader = crate::types::leader_member(&raft.metrics().borrow());
    let Some(leader) = leader else { return (0..count).map(|_| ForwardedWrite::NotLeader).collect() };
    // Forwarded requests were queued with the caller's deadline; a call outliving the
    // longest of them would be answered to nobody.
    match peers.forward_writes(&leader, group, &requests, timeout).await {
        Some(outcomes) => outcomes,
        None => (0..count).map(|_| ForwardedWrite::NotLeader).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    fn send(queue: &str) -> Request {
        let command = Command::QueueSend { queue: queue.into(), key: None, body: json!(1), fence: None };
        Request { request_id: None, command }
    }

    fn receive(id: &str, queue: &str, max: u32) -> Request {
        let command = Command::QueueReceive { queue: queue.into(), max, visibility_ms: 30_000 };
        Request { request_id: Some(id.into()), command }
    }

    /// A batcher whose batches are recorded and each request answered with its position.
    fn recording() -> (Batcher, Arc<Mutex<Vec<Vec<Request>>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let log = batches.clone();
        let batcher = Batcher::spawn(move |requests: Vec<Request>| {
            let answers = (0..requests.len())
                .map(|i| ForwardedWrite::Applied(Response::QueueSent { id: i.to_string() }, i as u64))
                .collect();
            log.lock().expect("batches").push(requests);
            std::future::ready(Box::pin(std::future::ready(answers)) as Answers)
        });
        (batcher, batches)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn ids(batch: &[Request]) -> Vec<String> {
        batch
            .iter()
            .map(|r| match &r.command {
                Command::QueueSend { queue, .. } => format!("send {queue}"),
                _ => r.request_id.clone().unwrap_or_default(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_parked_receive_rides_after_the_next_send_to_its_queue_only() {
        let (batcher, batches) = recording();
        let mut ticket = batcher.park(receive("r1", "q", 1));
        let elsewhere = batcher.park(receive("r2", "other", 1));
        batcher.submit(send("x"), soon()).await;
        batcher.submit(receive("r3", "q", 1), soon()).await;
        assert!(matches!(ticket.reply.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "still parked");
        batcher.submit(send("q"), soon()).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), &mut ticket.reply).await;
        assert!(
            matches!(reply, Ok(Ok(ForwardedWrite::Applied(_, 1)))),
            "answered as the batch's second request"
        );
        assert!(!ticket.unpark(), "taken, not parked any more");
        assert!(elsewhere.unpark(), "a receive of another queue stays parked");
        let batches = batches.lock().expect("batches");
        let seen: Vec<Vec<String>> = batches.iter().map(|b| ids(b)).collect();
        assert_eq!(seen, [vec!["send x"], vec!["r3"], vec!["send q", "r1"]]);
    }

    #[tokio::test]
    async fn riders_ask_for_fewer_messages_than_the_batch_sends_oldest_first() {
        let (batcher, batches) = recording();
        let tickets = [
            batcher.park(receive("r1", "q", 2)),
            batcher.park(receive("r2", "q", 1)),
            batcher.park(receive("r3", "q", 1)),
        ];
        batcher.submit_all(vec![send("q"), send("q")], soon()).await;
        batcher.submit(send("q"), soon()).await;
        assert!(!tickets[0].unpark() && !tickets[1].unpark(), "both taken");
        assert!(tickets[2].unpark(), "one send took one receive");
        // On the test's single thread both sends are queued before the batcher looks.
        let seen: Vec<Vec<String>> = batches.lock().expect("batches").iter().map(|b| ids(b)).collect();
        assert_eq!(seen, [vec!["send q", "send q", "r1"], vec!["send q", "r2"]]);
    }

    #[tokio::test]
    async fn sends_count_as_on_their_way_until_their_batch_is_answered() {
        let (release, held) = tokio::sync::watch::channel(false);
        let batcher = Batcher::spawn(move |requests: Vec<Request>| {
            let mut held = held.clone();
            let answers: Answers = Box::pin(async move {
                let _ = held.wait_for(|go| *go).await;
                requests.iter().map(|_| ForwardedWrite::NotLeader).collect()
            });
            std::future::ready(answers)
        });
        assert!(!batcher.sending_to("q"));
        let sending = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit_all(vec![send("q"), send("q")], soon()).await })
        };
        let on_its_way = tokio::time::timeout(Duration::from_secs(5), async {
            while !batcher.sending_to("q") {
                tokio::task::yield_now().await;
            }
        });
        assert!(on_its_way.await.is_ok(), "the batch's sends are on their way");
        assert!(!batcher.sending_to("other"));
        let _ = release.send(true);
        let answers = sending.await.expect("submit");
        assert!(answers.iter().all(|a| matches!(a, ForwardedWrite::NotLeader)));
        assert!(!batcher.sending_to("q"), "answered, even without success");
    }

    #[tokio::test]
    async fn a_batchs_own_receives_count_against_its_sends() {
        let (batcher, batches) = recording();
        let ticket = batcher.park(receive("parked", "q", 1));
        batcher.submit_all(vec![send("q"), receive("own", "q", 1)], soon()).await;
        assert!(ticket.unpark(), "the batch's one message is asked for already");
        let seen: Vec<Vec<String>> = batches.lock().expect("batches").iter().map(|b| ids(b)).collect();
        assert_eq!(seen, [vec!["send q", "own"]]);
    }

    #[tokio::test]
    async fn a_dropped_or_unparked_ticket_is_never_taken_along() {
        let (batcher, batches) = recording();
        drop(batcher.park(receive("gone", "q", 1)));
        let ticket = batcher.park(receive("back", "q", 1));
        assert!(ticket.unpark());
        assert!(!ticket.unpark(), "only once");
        batcher.submit(send("q"), soon()).await;
        let seen: Vec<Vec<String>> = batches.lock().expect("batches").iter().map(|b| ids(b)).collect();
        assert_eq!(seen, [vec!["send q"]]);
    }

    fn ack(id: &str) -> Request {
        let command = Command::QueueAck { queue: "q".into(), receipt: format!("{id}-receipt") };
        Request { request_id: Some(id.into()), command }
    }

    #[tokio::test]
    async fn acks_parked_with_a_receive_ride_ahead_of_it_only_in_their_own_batchers_batch() {
        let (first, first_batches) = recording();
        let (second, second_batches) = recording();
        let seen = |b: &Arc<Mutex<Vec<Vec<Request>>>>| -> Vec<Vec<String>> {
            b.lock().expect("batches").iter().map(|b| ids(b)).collect()
        };
        // Bound to the first batcher, which takes the receive: both acks ride ahead of it.
        let before = Some((0, vec![ack("a1"), ack("a2")]));
        let mut ticket = Batcher::park_at(&[&first, &second], receive("r1", "q", 1), before);
        first.submit(send("q"), soon()).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), &mut ticket.reply).await;
        assert!(matches!(reply, Ok(Ok(ForwardedWrite::Applied(_, 3)))), "the receive is the batch's last");
        for (rx, at) in std::mem::take(&mut ticket.before).into_iter().zip([1, 2]) {
            assert!(
                matches!(rx.await, Ok(ForwardedWrite::Applied(_, i)) if i == at),
                "ack answered in order"
            );
        }
        assert_eq!(seen(&first_batches), [vec!["send q", "a1", "a2", "r1"]]);
        // Bound to the first, taken by the second: the acks stay out of its batch, their
        // receivers close unanswered, and the caller proposes them itself.
        let mut ticket =
            Batcher::park_at(&[&first, &second], receive("r2", "q", 1), Some((0, vec![ack("a3")])));
        second.submit(send("q"), soon()).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), &mut ticket.reply).await;
        assert!(matches!(reply, Ok(Ok(ForwardedWrite::Applied(_, 1)))));
        let unanswered = std::mem::take(&mut ticket.before).pop().expect("one ack");
        assert!(unanswered.await.is_err(), "an ack that did not ride is never answered");
        assert_eq!(seen(&second_batches), [vec!["send q", "r2"]]);
        // Taken back: its acks are dropped with it.
        let mut ticket = Batcher::park_at(&[&first], receive("r3", "q", 1), Some((0, vec![ack("a4")])));
        assert!(ticket.unpark());
        assert!(std::mem::take(&mut ticket.before).pop().expect("one ack").await.is_err());
        first.submit(send("q"), soon()).await;
        assert_eq!(seen(&first_batches).last(), Some(&vec!["send q".to_string()]));
    }

    #[tokio::test]
    async fn a_receive_and_its_acks_ride_only_where_they_all_fit_in_the_batch() {
        let (batcher, batches) = recording();
        // The batch's own requests leave room for a receive but not for the older one's acks
        // too: the younger receive, alone, is taken instead.
        let acks: Vec<Request> = (0..3).map(|i| ack(&format!("a{i}"))).collect();
        let older = Batcher::park_at(&[&batcher], receive("r1", "q", 1), Some((0, acks)));
        let younger = batcher.park(receive("r2", "q", 1));
        let mut requests = vec![send("q"), send("q")];
        requests.extend((0..BATCH_MAX - 4).map(|i| ack(&format!("own{i}"))));
        batcher.submit_all(requests, soon()).await;
        assert!(older.unpark(), "left parked: 3 acks and the receive do not fit");
        assert!(!younger.unpark(), "the younger one fits, and is taken");
        let batches = batches.lock().expect("batches");
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [BATCH_MAX - 1]);
        assert_eq!(ids(&batches[0]).last().map(String::as_str), Some("r2"));
    }

    #[tokio::test]
    async fn a_receive_parked_at_several_batchers_rides_once_with_whichever_sends_first() {
        let (first, first_batches) = recording();
        let (second, second_batches) = recording();
        let mut ticket = Batcher::park_at(&[&first, &second], receive("r1", "q", 1), None);
        let other = Batcher::park_at(&[&first, &second], receive("r2", "q", 1), None);
        second.submit(send("q"), soon()).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), &mut ticket.reply).await;
        assert!(matches!(reply, Ok(Ok(ForwardedWrite::Applied(_, 1)))), "taken by the second batcher");
        assert_eq!(ticket.taken_at(), Some(1));
        // The first batcher's next send passes over the receive the second one took (still
        // listed in its park), and takes the one still waiting.
        first.submit(send("q"), soon()).await;
        assert_eq!(other.taken_at(), Some(0));
        assert!(!ticket.unpark() && !other.unpark(), "both taken, not parked any more");
        let seen = |b: &Arc<Mutex<Vec<Vec<Request>>>>| -> Vec<Vec<String>> {
            b.lock().expect("batches").iter().map(|b| ids(b)).collect()
        };
        assert_eq!(seen(&second_batches), [vec!["send q", "r1"]]);
        assert_eq!(seen(&first_batches), [vec!["send q", "r2"]]);
        // A receive taken back is taken by neither.
        let back = Batcher::park_at(&[&first, &second], receive("r3", "q", 1), None);
        assert!(back.unpark());
        first.submit(send("q"), soon()).await;
        second.submit(send("q"), soon()).await;
        assert_eq!(seen(&first_batches).last(), Some(&vec!["send q".to_string()]));
        assert_eq!(seen(&second_batches).last(), Some(&vec!["send q".to_string()]));
    }
}
