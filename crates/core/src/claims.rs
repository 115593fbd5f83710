//! The leader's gate for receives: a receive that could only come back empty is answered
//! at once instead of taking a Raft entry.
//!
//! Many consumers polling one partition see the same visible message in their copies and
//! all propose a receive for it; one entry delivers it, the others are committed, replicated
//! and applied to hand out nothing. The leader sees every proposal of its group, so it keeps
//! a claim for each receive it proposed and has not yet seen applied: how many messages that
//! receive is expected to take. A new receive finding every visible message claimed is
//! answered empty without an entry; its caller long-polls as before and is woken when the
//! queue gains visible messages.
//!
//! A claim stops counting the moment its receive is applied (its request id is then in the
//! de-duplication window, read under the same state guard), not when the proposer hears
//! back; so an applied receive is never counted twice, once in the state and once as a
//! claim. Answering empty is always allowed (a receive may return nothing), so the gate
//! can only cost latency, never a message.
//!
//! Each node keeps the same kind of claims for its own clients' receives against its copy
//! of each partition, so that its receivers spread over the messages it sees instead of
//! all forwarding a receive for the first one.

use std::collections::HashMap;

use crate::command::{Command, Request, Response};
use crate::partition::PartitionMachine;

/// Receives proposed by this leader and not yet known applied, by request id: the queue and
/// how many messages each is expected to take.
#[derive(Debug, Default)]
pub struct ReceiveClaims {
    claims: HashMap<String, (String, usize)>,
    /// Sends proposed by this leader and not yet known applied, by request id: their
    /// queue. Each brings a message that a receive in a later entry will find.
    sends: HashMap<String, String>,
}

impl ReceiveClaims {
    /// The answer `request` gets without an entry, given the applied `machine` at `now_ms`:
    /// an empty delivery for a receive that finds every visible message of its queue claimed.
    /// `None` means propose it; a receive proposed is claimed until [`Self::release`].
    pub fn admit(&mut self, machine: &PartitionMachine, request: &Request, now_ms: u64) -> Option<Response> {
        let Command::QueueReceive { queue, max, .. } = &request.command else { return None };
        // A receive without an id, or a retry (its first copy applied, or still on its way:
        // the log answers both with the first reply), is proposed.
        let id = request.request_id.as_deref()?;
        if machine.was_applied(id) || self.claims.contains_key(id) {
            return None;
        }
        // Visibility as the entry will judge it: by the partition's clock when this node's
        // clock is behind it.
        let free = self.free(machine, queue, now_ms.max(machine.clock_ms), *max as usize);
        if free == 0 {
            return Some(Response::QueueReceived { messages: Vec::new() });
        }
        self.claim(id, queue, free);
        None
    }

    /// [`Self::admit`] for the requests of one entry, in order. The entry's sends count,
    /// until applied, as messages to come for the receives of this and later entries, which
    /// claim them like visible ones. A send is followed by its request id, so a retry of one
    /// applied already (which brings no message) counts for nothing, and one without an id
    /// is not counted (answering empty is always allowed).
    pub fn admit_all(
        &mut self,
        machine: &PartitionMachine,
        requests: &[Request],
        now_ms: u64,
    ) -> Vec<Option<Response>> {
        requests
            .iter()
            .map(|request| match (&request.command, &request.request_id) {
                (Command::QueueSend { queue, .. }, Some(id)) if !machine.was_applied(id) => {
                    self.sends.insert(id.clone(), queue.clone());
                    None
                }
                (Command::QueueReceive { .. }, _) => self.admit(machine, request, now_ms),
                _ => None,
            })
            .collect()
    }

    /// Messages of `queue` that no receive proposed and not yet applied expects to take,
    /// counted up to `max`: those visible in `machine` at `now_ms`, and those of sends
    /// proposed and not yet applied.
    pub fn free(&self, machine: &PartitionMachine, queue: &str, now_ms: u64, max: usize) -> usize {
        let claimed = self.claimed(machine, queue);
        let coming = self.sends.iter().filter(|(id, q)| *q == queue && !machine.was_applied(id)).count();
        let visible = machine.state.visible(queue, now_ms, claimed.saturating_add(max));
        (visible + coming).saturating_sub(claimed).min(max)
    }

    /// Records that the receive with request id `id` expects to take `count` messages of
    /// `queue`.
    pub fn claim(&mut self, id: &str, queue: &str, count: usize) {
        self.claims.insert(id.to_string(), (queue.to_string(), count));
    }

    /// Forgets the claims whose receives `machine` has applied: they never count again.
    pub fn forget_applied(&mut self, machine: &PartitionMachine) {
        self.claims.retain(|id, _| !machine.was_applied(id));
        self.sends.retain(|id, _| !machine.was_applied(id));
    }

    /// Forgets the claim of `request`, applied or failed.
    pub fn release(&mut self, request: &Request) {
        if let Some(id) = &request.request_id {
            self.release_id(id);
        }
    }

    /// Forgets the claim of the receive, or the send, with request id `id`.
    pub fn release_id(&mut self, id: &str) {
        self.claims.remove(id);
        self.sends.remove(id);
    }

    /// Messages of `queue` that receives proposed and not yet applied to `machine` expect
    /// to take.
    fn claimed(&self, machine: &PartitionMachine, queue: &str) -> usize {
        self.claims
            .iter()
            .filter(|(id, (q, _))| q == queue && !machine.was_applied(id))
            .map(|(_, (_, count))| count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::command::Batch;

    fn receive(id: &str, max: u32) -> Request {
        Request {
            request_id: Some(id.into()),
            command: Command::QueueReceive { queue: "q".into(), max, visibility_ms: 60_000 },
        }
    }

    fn send() -> Request {
        Request {
            request_id: None,
            command: Command::QueueSend { queue: "q".into(), key: None, body: json!(1), fence: None },
        }
    }

    fn send_with_id(id: &str) -> Request {
        Request { request_id: Some(id.into()), ..send() }
    }

    /// One step of a leader's life: what it is asked, and what its log does.
    #[derive(Debug, Clone)]
    enum Step {
        /// A send is proposed (it takes an entry).
        Send,
        /// A receive asking for up to this many messages reaches the gate.
        Receive(u32),
        /// The oldest entry not yet applied is applied.
        Apply,
        /// The proposer hears back about the oldest applied receive.
        Release,
        /// The newest receive still in the log reaches the gate again with its id (a
        /// forwarder resending after a lost answer).
        Retry,
        /// One entry: a send, then a receive asking for up to this many messages (a parked
        /// receive the batch took along).
        Ride(u32),
        /// One entry: a send, then two receives asking for up to this many messages each.
        RideTwo(u32),
    }

    fn step(max_receive: u32) -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => Just(Step::Send),
            3 => (1..=max_receive).prop_map(Step::Receive),
            3 => Just(Step::Apply),
            2 => Just(Step::Release),
            1 => Just(Step::Retry),
            2 => (1..=max_receive).prop_map(Step::Ride),
            1 => (1..=max_receive).prop_map(Step::RideTwo),
        ]
    }

    /// The leader's log, applied in order, with the gate in front of it.
    #[derive(Default)]
    struct Model {
        machine: PartitionMachine,
        claims: ReceiveClaims,
        /// Entries proposed and not applied, each applied whole.
        log: VecDeque<Vec<Request>>,
        applied_receives: VecDeque<Request>,
        index: u64,
        next_id: u64,
        /// Receives admitted, applied, and handed nothing.
        wasted: usize,
    }

    impl Model {
        fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
            match step {
                Step::Send => {
                    let send = self.new_send();
                    let entry = self.admit(vec![send])?;
                    self.log.push_back(entry);
                }
                Step::Receive(max) => {
                    let request = self.new_receive(*max);
                    let entry = self.admit(vec![request])?;
                    if !entry.is_empty() {
                        self.log.push_back(entry);
                    }
                }
                Step::Ride(max) => {
                    let (send, rider) = (self.new_send(), self.new_receive(*max));
                    let entry = self.admit(vec![send, rider])?;
                    self.log.push_back(entry);
                }
                Step::RideTwo(max) => {
                    let (send, first, second) =
                        (self.new_send(), self.new_receive(*max), self.new_receive(*max));
                    let entry = self.admit(vec![send, first, second])?;
                    self.log.push_back(entry);
                }
                Step::Apply => {
                    let Some(requests) = self.log.pop_front() else { return Ok(()) };
                    self.index += 1;
                    let batch = Batch { at_ms: 0, requests: requests.clone(), seed: None };
                    let replies = self.machine.apply_entry(self.index, &batch);
                    for (request, reply) in requests.into_iter().zip(replies) {
                        if let Response::QueueReceived { messages } = &reply {
                            self.wasted += usize::from(messages.is_empty());
                            self.applied_receives.push_back(request);
                        }
                    }
                }
                Step::Release => {
                    if let Some(request) = self.applied_receives.pop_front() {
                        self.claims.release(&request);
                    }
                }
                Step::Retry => {
                    let newest = self
                        .log
                        .iter()
                        .flatten()
                        .rev()
                        .find(|r| matches!(r.command, Command::QueueReceive { .. }));
                    if let Some(request) = newest.cloned() {
                        // Answered by the log (the first copy's reply), never empty here.
                        prop_assert_eq!(self.claims.admit(&self.machine, &request, 0), None);
                        self.log.push_back(vec![request]);
                    }
                }
            }
            Ok(())
        }

        fn new_send(&mut self) -> Request {
            self.next_id += 1;
            send_with_id(&format!("s{}", self.next_id))
        }

        fn new_receive(&mut self, max: u32) -> Request {
            self.next_id += 1;
            receive(&format!("r{}", self.next_id), max)
        }

        /// What of `requests` (one entry's) the gate lets through. Each receive answered
        /// empty must be justified: receives still to be applied (this entry's earlier ones
        /// included) expect to take every message visible now or still coming (this entry's
        /// earlier sends included).
        fn admit(&mut self, requests: Vec<Request>) -> Result<Vec<Request>, TestCaseError> {
            let pending = self.pending_claims();
            // Messages visible now, and those of sends proposed and not applied yet.
            let coming =
                self.log.iter().flatten().filter(|r| matches!(r.command, Command::QueueSend { .. })).count();
            let visible = self.machine.state.visible("q", 0, usize::MAX) + coming;
            let answers = self.claims.admit_all(&self.machine, &requests, 0);
            let mut proposed = Vec::new();
            let mut visible = visible;
            let mut pending = pending;
            for (request, answer) in requests.into_iter().zip(answers) {
                // The entry's own sends before a receive are coming too, and its receives
                // before it claim what they were admitted for.
                visible += usize::from(matches!(request.command, Command::QueueSend { .. }));
                match answer {
                    None => {
                        if let Some((_, n)) =
                            request.request_id.as_deref().and_then(|id| self.claims.claims.get(id))
                        {
                            pending += n;
                        }
                        proposed.push(request);
                    }
                    Some(answer) => {
                        prop_assert_eq!(answer, Response::QueueReceived { messages: Vec::new() });
                        prop_assert!(
                            visible <= pending,
                            "answered empty with {} visible or coming and {} claimed by pending receives",
                            visible,
                            pending
                        );
                    }
                }
            }
            Ok(proposed)
        }

        /// The claims of the receives in the log that are not applied yet, from the model's
        /// own bookkeeping (not the gate's).
        fn pending_claims(&self) -> usize {
            let pending: std::collections::BTreeSet<&str> = self
                .log
                .iter()
                .flatten()
                .filter_map(|r| match r.command {
                    Command::QueueReceive { .. } => r.request_id.as_deref(),
                    _ => None,
                })
                .collect();
            pending.iter().map(|id| self.claims.claims.get(*id).map_or(0, |(_, n)| *n)).sum()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Every schedule of sends, receives, entries with a send and receives, applies and
        /// releases: the gate answers empty only when pending receives (of this entry too)
        /// claim every visible message and every message of a send not applied yet (of this
        /// entry too), even between an apply and its release (where nothing may count twice).
        #[test]
        fn an_empty_answer_always_has_pending_receives_claiming_every_visible_message(
            steps in proptest::collection::vec(step(4), 1..80)
        ) {
            let mut model = Model::default();
            for s in &steps {
                model.run(s)?;
            }
        }

        /// With one message per receive, a receive the gate lets through always finds its
        /// message: no entry is spent on a receive that hands out nothing.
        #[test]
        fn single_message_receives_let_through_are_never_wasted(
            steps in proptest::collection::vec(step(1), 1..80)
        ) {
            let mut model = Model::default();
            for s in &steps {
                model.run(s)?;
            }
            while !model.log.is_empty() {
                model.run(&Step::Apply)?;
            }
            prop_assert_eq!(model.wasted, 0);
        }
    }

    #[test]
    fn a_retry_and_other_commands_are_always_proposed() {
        let mut machine = PartitionMachine::new(0);
        let mut claims = ReceiveClaims::default();
        assert_eq!(claims.admit(&machine, &send(), 0), None, "a send is not gated");
        let first = receive("r", 1);
        assert_eq!(
            claims.admit(&machine, &first, 0),
            Some(Response::QueueReceived { messages: Vec::new() }),
            "nothing is visible"
        );
        let batch = Batch { at_ms: 0, requests: vec![first.clone()], seed: None };
        machine.apply_entry(1, &batch);
        assert_eq!(claims.admit(&machine, &first, 0), None, "a retry is replayed by its entry");
        let anonymous = Request { request_id: None, ..first };
        assert_eq!(claims.admit(&machine, &anonymous, 0), None, "no id: proposed");
        assert!(claims.claims.is_empty());
    }

    #[test]
    fn a_retry_of_a_receive_still_in_the_log_is_proposed_not_answered_empty() {
        let mut machine = PartitionMachine::new(0);
        let sends = Batch { at_ms: 0, requests: vec![send()], seed: None };
        machine.apply_entry(1, &sends);
        let mut claims = ReceiveClaims::default();
        let first = receive("r", 1);
        assert_eq!(claims.admit(&machine, &first, 0), None, "claims the message");
        // The same id again (a forwarder resending after a lost answer): the log replays
        // the first copy's reply to it, which holds the message.
        assert_eq!(claims.admit(&machine, &first, 0), None);
        assert!(claims.admit(&machine, &receive("other", 1), 0).is_some(), "a new receive is gated");
    }

    #[test]
    fn visibility_follows_the_partition_clock_when_this_node_is_behind() {
        let mut machine = PartitionMachine::new(0);
        machine.apply_entry(1, &Batch { at_ms: 5_000, requests: vec![send()], seed: None });
        let mut claims = ReceiveClaims::default();
        assert_eq!(claims.admit(&machine, &receive("r", 1), 10), None, "visible at the partition's 5,000");
    }

    #[test]
    fn applied_claims_are_forgotten() {
        let mut machine = PartitionMachine::new(0);
        machine.apply_entry(1, &Batch { at_ms: 0, requests: vec![send()], seed: None });
        let mut claims = ReceiveClaims::default();
        let r = receive("r", 1);
        assert_eq!(claims.admit(&machine, &r, 0), None);
        machine.apply_entry(2, &Batch { at_ms: 0, requests: vec![r], seed: None });
        claims.forget_applied(&machine);
        assert!(claims.claims.is_empty());
    }

    #[test]
    fn claims_count_per_queue_and_stop_counting_once_applied() {
        let mut machine = PartitionMachine::new(0);
        let sends = Batch { at_ms: 0, requests: vec![send(), send()], seed: None };
        machine.apply_entry(1, &sends);
        let mut claims = ReceiveClaims::default();
        let r1 = receive("r1", 5);
        assert_eq!(claims.admit(&machine, &r1, 0), None);
        assert_eq!(claims.claimed(&machine, "q"), 2, "r1 expects both messages");
        assert_eq!(claims.claimed(&machine, "other"), 0);
        assert!(claims.admit(&machine, &receive("r2", 1), 0).is_some(), "both are claimed");
        let batch = Batch { at_ms: 0, requests: vec![r1.clone()], seed: None };
        machine.apply_entry(2, &batch);
        assert_eq!(claims.claimed(&machine, "q"), 0, "applied: the state holds what it took");
        assert_eq!(claims.claims.len(), 1, "held until released");
        claims.release(&r1);
        assert!(claims.claims.is_empty());
    }
}
