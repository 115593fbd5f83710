//! The state machine of a queue partition's Raft group: a [`PartitionState`] driven by the
//! queue commands of the log, with its own clock and de-duplication window.
//!
//! Like group 0, applying is a pure function of `(state, log index, batch)`. The clock is the
//! largest leader timestamp applied, so visibility deadlines are judged the same way on every
//! replica.

use serde::{Deserialize, Serialize};

use crate::command::{Batch, Command, Request, Response};
use crate::dedup::Dedup;
use crate::entropy::Draws;
use crate::queue::{Delivery, PartitionState, QueueRefusal};

/// Everything a partition group replicates (this is also its snapshot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionMachine {
    /// Largest leader timestamp applied so far.
    pub clock_ms: u64,
    /// Last log index applied.
    pub applied_index: u64,
    /// The messages.
    pub state: PartitionState,
    dedup: Dedup,
}

impl PartitionMachine {
    /// The empty state of partition `partition`.
    pub fn new(partition: u32) -> Self {
        Self { state: PartitionState::new(partition), ..Self::default() }
    }

    /// The partition's invariants: its messages' and its request-id window's.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.dedup.check_invariants()?;
        self.state.check_invariants()
    }

    /// Whether a request with id `id` was applied recently (its reply is in the
    /// de-duplication window).
    pub fn was_applied(&self, id: &str) -> bool {
        self.dedup.get(id).is_some()
    }

    /// Records that the entry at `index` carried no application command.
    pub fn apply_blank(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Applies the batch found at log `index`; one reply per request, in order.
    pub fn apply_entry(&mut self, index: u64, batch: &Batch) -> Vec<Response> {
        self.applied_index = self.applied_index.max(index);
        self.clock_ms = self.clock_ms.max(batch.at_ms);
        batch
            .requests
            .iter()
            .enumerate()
            .map(|(position, request)| {
                let mut draws = batch.seed.map(|seed| seed.stream(position));
                self.apply(request, draws.as_mut())
            })
            .collect()
    }

    fn apply(&mut self, request: &Request, draws: Option<&mut Draws>) -> Response {
        if let Some(previous) = self.dedup.replay(request) {
            return self.replayed(&request.command, previous);
        }
        let response = self.dispatch(&request.command, draws);
        // A full queue is a passing state: a retry with the same id must be able to succeed
        // once there is room, so that refusal is not remembered.
        if !matches!(response, Response::QueueRefused { refusal: QueueRefusal::Full }) {
            self.dedup.record(request, &response);
        }
        response
    }

    /// A remembered reply made whole again: the deliveries of a retried receive get their
    /// bodies from the state, and those no longer in flight under their receipt (acked,
    /// or delivered again since) are left out, as their delivery is over.
    fn replayed(&self, command: &Command, remembered: Response) -> Response {
        let (Command::QueueReceive { queue, .. }, Response::QueueReceived { messages }) =
            (command, &remembered)
        else {
            return remembered;
        };
        let messages = messages
            .iter()
            .filter_map(|d| {
                let in_flight = self.state.in_flight(queue, &d.receipt)?;
                Some(Delivery { body: in_flight.message.body.clone(), ..d.clone() })
            })
            .collect();
        Response::QueueReceived { messages }
    }

    fn dispatch(&mut self, command: &Command, draws: Option<&mut Draws>) -> Response {
        let now = self.clock_ms;
        let done = |r: Result<bool, _>| match r {
            Ok(dead_lettered) => Response::QueueDone { dead_lettered },
            Err(refusal) => Response::QueueRefused { refusal },
        };
        match command {
            Command::QueueSend { queue, key, body, fence } => {
                let checked = fence.as_ref().map_or(Ok(()), |f| self.state.check_fence(f));
                match checked.and_then(|()| self.state.send(queue, key.as_deref(), body.clone(), now)) {
                    Ok(id) => {
                        if let Some(fence) = fence {
                            self.state.accept_fence(fence);
                        }
                        Response::QueueSent { id }
                    }
                    Err(refusal) => Response::QueueRefused { refusal },
                }
            }
            Command::QueueReceive { queue, max, visibility_ms } => Response::QueueReceived {
                messages: self.state.receive(queue, *max as usize, *visibility_ms, now, draws),
            },
            Command::QueueAck { queue, receipt } => done(self.state.ack(queue, receipt).map(|()| false)),
            Command::QueueNack { queue, receipt, delay_ms, max_receives } => {
                done(self.state.nack(queue, receipt, *delay_ms, *max_receives, now))
            }
            Command::QueueExpire { max_receives } => {
                let (redelivered, dead_lettered) = self.state.expire(*max_receives, now);
                Response::QueueExpired { redelivered, dead_lettered }
            }
            _ => Response::Rejected { reason: "a queue partition only applies queue commands".into() },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(at_ms: u64, commands: Vec<(Option<&str>, Command)>) -> Batch {
        let requests = commands
            .into_iter()
            .map(|(id, command)| Request { request_id: id.map(str::to_owned), command })
            .collect();
        Batch { at_ms, requests, seed: Some(crate::entropy::Seed([at_ms as u8; 32])) }
    }

    fn send(body: serde_json::Value) -> Command {
        Command::QueueSend { queue: "q".into(), key: None, body, fence: None }
    }

    #[test]
    fn a_retried_receive_answers_from_the_state_and_the_window_holds_no_body() {
        let mut m = PartitionMachine::new(3);
        let big = json!("b".repeat(10_000));
        m.apply_entry(1, &entry(10, vec![(None, send(big.clone())), (None, send(json!(2)))]));
        let receive = Command::QueueReceive { queue: "q".into(), max: 2, visibility_ms: 1_000 };
        let first = m.apply_entry(2, &entry(11, vec![(Some("r"), receive.clone())]));
        let again = m.apply_entry(3, &entry(12, vec![(Some("r"), receive.clone())]));
        assert_eq!(first, again, "a retry gets the same deliveries, bodies included");
        let window = serde_json::to_string(&m.dedup).expect("encode");
        assert!(!window.contains("bbbb"), "the window keeps no message body");
        let Response::QueueReceived { messages } = &first[0] else { panic!("{first:?}") };
        assert_eq!(messages[0].body, big);
        let ack = Command::QueueAck { queue: "q".into(), receipt: messages[0].receipt.clone() };
        m.apply_entry(4, &entry(13, vec![(None, ack)]));
        let after_ack = m.apply_entry(5, &entry(14, vec![(Some("r"), receive)]));
        let Response::QueueReceived { messages: left } = &after_ack[0] else { panic!("{after_ack:?}") };
        assert_eq!(left.len(), 1, "an acked delivery is over and not answered again");
        assert_eq!(left[0].body, json!(2));
    }

    #[test]
    fn a_fenced_send_below_an_accepted_fence_is_refused() {
        let mut m = PartitionMachine::new(0);
        let fenced = |token: u64| Command::QueueSend {
            queue: "q".into(),
            key: None,
            body: json!(token),
            fence: Some(crate::command::Fence { lock: "l".into(), token }),
        };
        let got = m.apply_entry(1, &entry(1, vec![(None, fenced(5)), (None, fenced(7)), (None, fenced(6))]));
        assert!(matches!(got[0], Response::QueueSent { .. }) && matches!(got[1], Response::QueueSent { .. }));
        assert_eq!(
            got[2],
            Response::QueueRefused { refusal: QueueRefusal::StaleFence { lock: "l".into(), current: 7 } },
            "the successor (7) already sent: the older holder (6) may not"
        );
        let again = m.apply_entry(2, &entry(2, vec![(None, fenced(7)), (None, send(json!("unfenced")))]));
        assert!(again.iter().all(|r| matches!(r, Response::QueueSent { .. })), "{again:?}");
        m.check_invariants().expect("invariants");
    }

    #[test]
    fn a_retried_send_is_applied_once() {
        let mut m = PartitionMachine::new(3);
        let first = m.apply_entry(1, &entry(10, vec![(Some("r1"), send(json!(1)))]));
        let again = m.apply_entry(2, &entry(11, vec![(Some("r1"), send(json!(1)))]));
        assert_eq!(first, again);
        assert_eq!(first, vec![Response::QueueSent { id: "3-1".into() }]);
        assert_eq!(m.state.queue("q").map(|q| q.ready.len()), Some(1));
        let reused = m.apply_entry(3, &entry(12, vec![(Some("r1"), send(json!(2)))]));
        assert!(matches!(&reused[0], Response::Rejected { .. }), "{reused:?}");
    }

    #[test]
    fn deadlines_follow_the_leader_clock_of_the_entries() {
        let mut m = PartitionMachine::new(0);
        m.apply_entry(1, &entry(1_000, vec![(None, send(json!("a")))]));
        let receive = Command::QueueReceive { queue: "q".into(), max: 1, visibility_ms: 500 };
        let got = m.apply_entry(2, &entry(1_000, vec![(None, receive)]));
        assert!(matches!(&got[0], Response::QueueReceived { messages } if messages.len() == 1));
        let expire = Command::QueueExpire { max_receives: 5 };
        let early = m.apply_entry(3, &entry(1_499, vec![(None, expire.clone())]));
        assert_eq!(early, vec![Response::QueueExpired { redelivered: 0, dead_lettered: 0 }]);
        // A leader whose clock is behind cannot move the state machine's clock back.
        let late = m.apply_entry(4, &entry(1_500, vec![(None, expire.clone())]));
        assert_eq!(late, vec![Response::QueueExpired { redelivered: 1, dead_lettered: 0 }]);
        let stale_clock = m.apply_entry(5, &entry(10, vec![(None, expire)]));
        assert_eq!(stale_clock, vec![Response::QueueExpired { redelivered: 0, dead_lettered: 0 }]);
        assert_eq!(m.clock_ms, 1_500);
    }

    #[test]
    fn a_full_queue_refusal_is_not_remembered_for_the_retry() {
        let mut m = PartitionMachine::new(0);
        for i in 0..crate::queue::QUEUE_DEPTH_MAX {
            m.state.send("q", None, json!(i), 0).expect("room");
        }
        let refused = m.apply_entry(1, &entry(1, vec![(Some("r"), send(json!("late")))]));
        assert_eq!(refused, vec![Response::QueueRefused { refusal: QueueRefusal::Full }]);
        let receive = Command::QueueReceive { queue: "q".into(), max: 1, visibility_ms: 10 };
        let got = m.apply_entry(2, &entry(1, vec![(None, receive)]));
        let Response::QueueReceived { messages } = &got[0] else { panic!("{got:?}") };
        let ack = Command::QueueAck { queue: "q".into(), receipt: messages[0].receipt.clone() };
        m.apply_entry(3, &entry(1, vec![(None, ack)]));
        let retried = m.apply_entry(4, &entry(1, vec![(Some("r"), send(json!("late")))]));
        assert!(matches!(&retried[0], Response::QueueSent { .. }), "{retried:?}");
    }

    #[test]
    fn group_zero_commands_are_rejected() {
        let mut m = PartitionMachine::new(0);
        let got = m.apply_entry(
            1,
            &entry(1, vec![(None, Command::KvDelete { key: "k".into(), if_version: None, fence: None })]),
        );
        assert!(matches!(&got[0], Response::Rejected { .. }));
    }
}
