//! The state machine of one queue partition: ready messages, messages in flight with a
//! receipt and a visibility deadline, receive counts and dead letters.
//!
//! At-least-once, SQS-like: `receive` hands out the oldest ready messages and hides them
//! until their deadline; `ack` deletes one; `nack` or a passed deadline makes it ready
//! again, at the front so order is kept. A message delivered `max_receives` times and
//! returned once more goes to the dead-letter queue `<queue>.dlq` of the same partition.
//! Every delivery gets a fresh receipt, so a consumer whose deadline passed cannot ack a
//! message someone else now holds. Time comes in as `now_ms` (the leader's stamp).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::entropy::Draws;

/// Suffix of dead-letter queues.
pub const DLQ_SUFFIX: &str = ".dlq";
/// Most messages one queue of a partition takes from sends (ready + in flight). Dead
/// letters are not refused: a message that failed too often always reaches `<queue>.dlq`,
/// whose size is bounded only by what its queue held.
pub const QUEUE_DEPTH_MAX: usize = 100_000;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id, `<partition>-<sequence>`.
    pub id: String,
    /// Ordering key (the queue name when none was given).
    pub key: String,
    /// The body.
    pub body: serde_json::Value,
    /// How many times it was delivered.
    pub receive_count: u32,
    /// When it was sent.
    pub sent_at_ms: u64,
    /// Not delivered before this time (a nack with a delay).
    pub visible_at_ms: u64,
}

/// A delivered, unacknowledged message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The message.
    pub message: Message,
    /// Becomes ready again at this time unless acked.
    pub deadline_ms: u64,
}

/// A delivery handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Message id.
    pub id: String,
    /// Body.
    pub body: serde_json::Value,
    /// Receipt for ack and nack: valid for this delivery only.
    pub receipt: String,
    /// How many times it has been delivered, this time included.
    pub receive_count: u32,
}

/// The sequence number of a message id `<partition>-<sequence>`.
fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-').and_then(|(_, seq)| seq.parse().ok()).unwrap_or(0)
}

/// The partition named by a receipt `<partition>-<sequence>.<delivery>.<secret>`, if it
/// is one.
pub fn partition_of_receipt(receipt: &str) -> Option<u32> {
    let (id, rest) = receipt.split_once('.')?;
    let (partition, seq) = id.split_once('-')?;
    seq.parse::<u64>().ok()?;
    let delivery = match rest.split_once('.') {
        Some((delivery, secret)) if is_secret(secret) => delivery,
        Some(_) => return None,
        None => rest,
    };
    delivery.parse::<u32>().ok()?;
    partition.parse().ok()
}

/// Whether `text` is a receipt's secret part: 32 lowercase hex digits (128 bits).
fn is_secret(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The receipt of `message`'s current delivery: its id and delivery count, which route an
/// ack to the partition, and 128 bits drawn from the entry's seed, which no one can derive
/// from the message id or any other receipt. Entries written before seeds existed have
/// none and give the old `<id>.<delivery>` form.
fn receipt_of(message: &Message, draws: Option<&mut Draws>) -> String {
    match draws {
        Some(draws) => format!("{}.{}.{}", message.id, message.receive_count, draws.hex128()),
        None => format!("{}.{}", message.id, message.receive_count),
    }
}

/// One queue within a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Ready messages, oldest first.
    pub ready: VecDeque<Message>,
    /// In-flight messages by receipt.
    pub in_flight: BTreeMap<String, InFlight>,
}

impl QueueState {
    /// Messages held: ready and in flight.
    pub fn depth(&self) -> usize {
        self.ready.len() + self.in_flight.len()
    }
}

/// Why a queue command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum QueueRefusal {
    /// The queue is at [`QUEUE_DEPTH_MAX`].
    Full,
    /// The receipt is unknown or no longer valid (acked, or redelivered after its deadline).
    StaleReceipt,
    /// A fenced send's fence is below one this partition already accepted for the lock.
    StaleFence {
        /// The lock.
        lock: String,
        /// The highest fence accepted for it.
        current: u64,
    },
}

/// The state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// This partition's number (part of message ids).
    pub partition: u32,
    queues: BTreeMap<String, QueueState>,
    next_seq: u64,
    /// The highest fence of each lock that a fenced send was accepted with: an older holder
    /// can never send after its successor did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    fences: BTreeMap<String, u64>,
}

impl PartitionState {
    /// An empty partition.
    pub fn new(partition: u32) -> Self {
        Self { partition, ..Self::default() }
    }

    /// The queue called `name`, if it has messages.
    pub fn queue(&self, name: &str) -> Option<&QueueState> {
        self.queues.get(name)
    }

    /// The message in flight under `receipt` in `queue`, if any.
    pub fn in_flight(&self, queue: &str, receipt: &str) -> Option<&InFlight> {
        self.queues.get(queue)?.in_flight.get(receipt)
    }

    /// Every queue with messages.
    pub fn queues(&self) -> &BTreeMap<String, QueueState> {
        &self.queues
    }

    /// Appends a message; returns its id.
    pub fn send(
        &mut self,
        queue: &str,
        key: Option<&str>,
        body: serde_json::Value,
        now_ms: u64,
    ) -> Result<String, QueueRefusal> {
        let q = self.queues.entry(queue.to_string()).or_default();
        if q.depth() >= QUEUE_DEPTH_MAX {
            return Err(QueueRefusal::Full);
        }
        self.next_seq += 1;
        let id = format!("{}-{}", self.partition, self.next_seq);
        q.ready.push_back(Message {
            id: id.clone(),
            key: key.unwrap_or(queue).to_string(),
            body,
            receive_count: 0,
            sent_at_ms: now_ms,
            visible_at_ms: now_ms,
        });
        Ok(id)
    }

    /// Refuses a fenced send whose fence is below the highest accepted for its lock.
    pub fn check_fence(&self, fence: &crate::locks::Fence) -> Result<(), QueueRefusal> {
        match self.fences.get(&fence.lock) {
            Some(&current) if fence.token < current => {
                Err(QueueRefusal::StaleFence { lock: fence.lock.clone(), current })
            }
            _ => Ok(()),
        }
    }

    /// Records that a send with `fence` was accepted.
    pub fn accept_fence(&mut self, fence: &crate::locks::Fence) {
        let highest = self.fences.entry(fence.lock.clone()).or_default();
        *highest = (*highest).max(fence.token);
    }

    /// Delivers up to `max` visible messages, oldest first, hidden for `visibility_ms`.
    pub fn receive(
        &mut self,
        queue: &str,
        max: usize,
        visibility_ms: u64,
        now_ms: u64,
        mut draws: Option<&mut Draws>,
    ) -> Vec<Delivery> {
        let Some(q) = self.queues.get_mut(queue) else { return Vec::new() };
        let mut out = Vec::new();
        let mut skipped = VecDeque::new();
        while out.len() < max {
            let Some(mut message) = q.ready.pop_front() else { break };
            if message.visible_at_ms > now_ms {
                skipped.push_back(message);
                continue;
            }
            message.receive_count += 1;
            let receipt = receipt_of(&message, draws.as_deref_mut());
            out.push(Delivery {
                id: message.id.clone(),
                body: message.body.clone(),
                receipt: receipt.clone(),
                receive_count: message.receive_count,
            });
            q.in_flight
                .insert(receipt, InFlight { message, deadline_ms: now_ms.saturating_add(visibility_ms) });
        }
        // Delayed messages keep their place at the front.
        while let Some(m) = skipped.pop_back() {
            q.ready.push_front(m);
        }
        out
    }

    /// Deletes the message delivered with `receipt`.
    pub fn ack(&mut self, queue: &str, receipt: &str) -> Result<(), QueueRefusal> {
        let q = self.queues.get_mut(queue).ok_or(QueueRefusal::StaleReceipt)?;
        q.in_flight.remove(receipt).ok_or(QueueRefusal::StaleReceipt)?;
        self.forget_if_empty(queue);
        Ok(())
    }

    /// Returns the message delivered with `receipt`, visible again after `delay_ms`; true
    /// when it went to the dead-letter queue instead.
    pub fn nack(
        &mut self,
        queue: &str,
        receipt: &str,
        delay_ms: u64,
        max_receives: u32,
        now_ms: u64,
    ) -> Result<bool, QueueRefusal> {
        let q = self.queues.get_mut(queue).ok_or(QueueRefusal::StaleReceipt)?;
        let flight = q.in_flight.remove(receipt).ok_or(QueueRefusal::StaleReceipt)?;
        let mut message = flight.message;
        message.visible_at_ms = now_ms.saturating_add(delay_ms);
        Ok(self.requeue(queue, message, max_receives))
    }

    /// Whether `queue` has a message a receive at `now_ms` would deliver.
    pub fn has_visible(&self, queue: &str, now_ms: u64) -> bool {
        self.visible(queue, now_ms, 1) > 0
    }

    /// How many messages of `queue` a receive at `now_ms` would deliver, counting to `limit`.
    pub fn visible(&self, queue: &str, now_ms: u64, limit: usize) -> usize {
        self.queues
            .get(queue)
            .map(|q| q.ready.iter().filter(|m| m.visible_at_ms <= now_ms).take(limit).count())
            .unwrap_or(0)
    }

    /// Returns every in-flight message whose deadline passed by `now_ms`; answers how many
    /// became ready again and how many went to dead-letter queues.
    pub fn expire(&mut self, max_receives: u32, now_ms: u64) -> (usize, usize) {
        let mut returned = Vec::new();
        for (name, q) in &mut self.queues {
            let due: Vec<String> =
                q.in_flight.iter().filter(|(_, f)| f.deadline_ms <= now_ms).map(|(r, _)| r.clone()).collect();
            for receipt in due {
                if let Some(flight) = q.in_flight.remove(&receipt) {
                    returned.push((name.clone(), flight.message));
                }
            }
        }
        let count = returned.len();
        // Newest first: each is put back at the front, so the oldest ends up first.
        returned
            .sort_by(|a, b| b.1.sent_at_ms.cmp(&a.1.sent_at_ms).then(seq_of(&b.1.id).cmp(&seq_of(&a.1.id))));
        let mut dead = 0;
        for (queue, message) in returned {
            dead += usize::from(self.requeue(&queue, message, max_receives));
        }
        (count - dead, dead)
    }

    /// Earliest visibility deadline, if any: when the leader should next expire.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.queues.values().flat_map(|q| q.in_flight.values().map(|f| f.deadline_ms)).min()
    }

    /// Puts a returned message back at the front of its queue, or at the back of the
    /// dead-letter queue once it was delivered `max_receives` times; true for the latter.
    fn requeue(&mut self, queue: &str, message: Message, max_receives: u32) -> bool {
        let dead = message.receive_count >= max_receives && !queue.ends_with(DLQ_SUFFIX);
        if dead {
            let dlq = format!("{queue}{DLQ_SUFFIX}");
            let mut dead = message;
            dead.receive_count = 0;
            dead.visible_at_ms = dead.sent_at_ms;
            self.queues.entry(dlq).or_default().ready.push_back(dead);
        } else {
            self.queues.entry(queue.to_string()).or_default().ready.push_front(message);
        }
        self.forget_if_empty(queue);
        dead
    }

    fn forget_if_empty(&mut self, queue: &str) {
        if self.queues.get(queue).is_some_and(|q| q.depth() == 0) {
            self.queues.remove(queue);
        }
    }

    /// Every message id appears once; receipts match their message.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for (name, q) in &self.queues {
            if q.depth() == 0 {
                return Err(format!("empty queue {name} kept"));
            }
            let ids = q.ready.iter().map(|m| &m.id).chain(q.in_flight.values().map(|f| &f.message.id));
            for id in ids {
                if !seen.insert(id.clone()) {
                    return Err(format!("message {id} appears twice"));
                }
            }
            for (receipt, f) in &q.in_flight {
                let plain = format!("{}.{}", f.message.id, f.message.receive_count);
                let secret = receipt.strip_prefix(&plain).and_then(|rest| rest.strip_prefix('.'));
                if *receipt != plain && !secret.is_some_and(is_secret) {
                    return Err(format!("receipt {receipt} does not match {}", f.message.id));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const MAX: u32 = 3;

    #[test]
    fn a_queue_is_fifo_and_ack_deletes() {
        let mut p = PartitionState::new(7);
        for i in 0..3 {
            p.send("q", None, json!(i), 0).expect("send");
        }
        let got = p.receive("q", 2, 1_000, 0, None);
        assert_eq!(got.iter().map(|d| d.body.clone()).collect::<Vec<_>>(), vec![json!(0), json!(1)]);
        assert_eq!(got[0].id, "7-1");
        p.ack("q", &got[0].receipt).expect("ack");
        assert_eq!(p.ack("q", &got[0].receipt), Err(QueueRefusal::StaleReceipt), "acked once");
        assert_eq!(p.receive("q", 5, 1_000, 0, None).len(), 1, "one left ready");
    }

    #[test]
    fn an_expired_deadline_redelivers_in_order_with_a_new_receipt() {
        let mut p = PartitionState::new(0);
        p.send("q", None, json!("a"), 0).expect("send");
        p.send("q", None, json!("b"), 1).expect("send");
        let first = p.receive("q", 2, 100, 10, None);
        assert_eq!(p.expire(MAX, 109), (0, 0));
        assert_eq!(p.expire(MAX, 110), (2, 0));
        let again = p.receive("q", 2, 100, 120, None);
        assert_eq!(again.iter().map(|d| d.body.clone()).collect::<Vec<_>>(), vec![json!("a"), json!("b")]);
        assert_eq!(again[0].receive_count, 2);
        assert_ne!(again[0].receipt, first[0].receipt);
        assert_eq!(p.ack("q", &first[0].receipt), Err(QueueRefusal::StaleReceipt), "an old receipt is stale");
    }

    #[test]
    fn too_many_receives_move_a_message_to_the_dead_letter_queue() {
        let mut p = PartitionState::new(0);
        p.send("jobs", None, json!("poison"), 0).expect("send");
        for round in 0..MAX {
            let d = p.receive("jobs", 1, 1_000, 0, None);
            assert_eq!(d.len(), 1, "round {round}");
            assert_eq!(p.nack("jobs", &d[0].receipt, 0, MAX, 0), Ok(round + 1 == MAX));
        }
        assert!(p.queue("jobs").is_none());
        let dead = p.receive("jobs.dlq", 1, 1_000, 0, None);
        assert_eq!(dead[0].body, json!("poison"));
    }

    #[test]
    fn seeded_receipts_carry_128_unguessable_bits() {
        let mut p = PartitionState::new(3);
        for i in 0..3 {
            p.send("q", None, serde_json::json!(i), 0).expect("send");
        }
        let seed = crate::entropy::Seed([42; 32]);
        let got = p.receive("q", 2, 1_000, 0, Some(&mut seed.stream(0)));
        let secret = |r: &str| r.rsplit_once('.').map(|(_, s)| s.to_string()).expect("three parts");
        assert_eq!(secret(&got[0].receipt).len(), 32);
        assert_ne!(secret(&got[0].receipt), secret(&got[1].receipt), "each delivery its own bits");
        assert_eq!(partition_of_receipt(&got[0].receipt), Some(3));
        // The id and count alone, or another message's secret, do not ack.
        let (plain, _) = got[0].receipt.rsplit_once('.').expect("parts");
        assert_eq!(p.ack("q", plain), Err(QueueRefusal::StaleReceipt));
        let forged = format!("{plain}.{}", secret(&got[1].receipt));
        assert_eq!(p.ack("q", &forged), Err(QueueRefusal::StaleReceipt));
        p.check_invariants().expect("invariants");
        assert_eq!(p.ack("q", &got[0].receipt), Ok(()));
    }

    #[test]
    fn receipts_name_their_partition() {
        let mut p = PartitionState::new(12);
        p.send("q", None, json!(1), 0).expect("send");
        let d = p.receive("q", 1, 1_000, 0, None);
        assert_eq!(partition_of_receipt(&d[0].receipt), Some(12));
        for bad in ["", "12", "12-1", "x-1.1", "12-x.1", "12-1.x", "12-1.1.1"] {
            assert_eq!(partition_of_receipt(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn visibility_is_only_for_ready_messages_past_their_delay() {
        let mut p = PartitionState::new(0);
        assert!(!p.has_visible("q", 0));
        p.send("q", None, json!(1), 0).expect("send");
        assert!(p.has_visible("q", 0));
        let d = p.receive("q", 1, 1_000, 0, None);
        assert!(!p.has_visible("q", 0), "in flight");
        p.nack("q", &d[0].receipt, 100, MAX, 0).expect("nack");
        assert!(!p.has_visible("q", 99));
        assert!(p.has_visible("q", 100));
    }

    #[test]
    fn a_nack_delay_keeps_the_message_invisible() {
        let mut p = PartitionState::new(0);
        p.send("q", None, json!(1), 0).expect("send");
        let d = p.receive("q", 1, 1_000, 0, None);
        p.nack("q", &d[0].receipt, 500, MAX, 0).expect("nack");
        assert!(p.receive("q", 1, 1_000, 499, None).is_empty());
        assert_eq!(p.receive("q", 1, 1_000, 500, None).len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send,
        Receive(usize),
        Ack(usize),
        Nack(usize),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Send),
            3 => (1usize..4).prop_map(Op::Receive),
            2 => (0usize..8).prop_map(Op::Ack),
            1 => (0usize..8).prop_map(Op::Nack),
            1 => (0u64..300).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Nothing is lost or invented: every message sent is, at every step, exactly one
        /// of acked, ready, in flight or dead; an acked message is never delivered again.
        #[test]
        fn messages_are_conserved(ops in prop::collection::vec(op(), 1..200)) {
            let mut p = PartitionState::new(1);
            let mut now = 0u64;
            let mut sent = BTreeSet::new();
            let mut acked = BTreeSet::new();
            let mut receipts: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Send => { sent.insert(p.send("q", None, json!(now), now).expect("send")); }
                    Op::Receive(n) => {
                        for d in p.receive("q", n, 100, now, None).into_iter().chain(p.receive("q.dlq", n, 100, now, None)) {
                            prop_assert!(sent.contains(&d.id), "invented {}", d.id);
                            prop_assert!(!acked.contains(&d.id), "acked {} delivered again", d.id);
                            receipts.push(d.receipt);
                        }
                    }
                    Op::Ack(i) => if let Some(r) = receipts.get(i).cloned() {
                        let queue = if p.queue("q").is_some_and(|q| q.in_flight.contains_key(&r)) { "q" } else { "q.dlq" };
                        if p.ack(queue, &r).is_ok() {
                            acked.insert(r.rsplit_once('.').map(|(id, _)| id.to_string()).unwrap_or_default());
                        }
                    },
                    Op::Nack(i) => if let Some(r) = receipts.get(i).cloned() {
                        let _ = p.nack("q", &r, 0, MAX, now);
                    },
                    Op::Tick(ms) => { now += ms; p.expire(MAX, now); }
                }
                prop_assert!(p.check_invariants().is_ok(), "{:?}", p.check_invariants());
                let mut present: BTreeSet<String> = BTreeSet::new();
                for q in p.queues().values() {
                    present.extend(q.ready.iter().map(|m| m.id.clone()));
                    present.extend(q.in_flight.values().map(|f| f.message.id.clone()));
                }
                let accounted: BTreeSet<String> = present.union(&acked).cloned().collect();
                prop_assert_eq!(&accounted, &sent, "lost or invented messages");
                prop_assert!(present.is_disjoint(&acked));
            }
        }
    }
}
