//! Group 0's state machine: the switch that routes each command to its part of the state.
//!
//! Group 0 spans every voter and will hold the lock table, the cache directory and the ring;
//! for now it holds the replicated key-value store. Applying is a pure function of
//! `(state, log index, request)`, which is what makes every replica agree.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::{Command, Request, Response};
use crate::kv::KvStore;
use crate::limits::DEDUP_WINDOW;

/// Everything group 0 replicates, as one serialisable value (this is also the snapshot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group0State {
    /// Largest leader timestamp applied so far: the state machine's clock.
    pub clock_ms: u64,
    /// Last log index applied.
    pub applied_index: u64,
    /// The replicated key-value store.
    pub kv: KvStore,
    /// Replies to recent client request ids, for exactly-once application of retries.
    dedup: BTreeMap<String, Response>,
    /// The ids of `dedup` in the order they were applied, oldest first.
    dedup_order: VecDeque<String>,
}

impl Group0State {
    /// Records that the entry at `index` carried no application command.
    pub fn apply_blank(&mut self, index: u64) -> Response {
        self.applied_index = self.applied_index.max(index);
        Response::Empty
    }

    /// Applies the request found at log `index` and returns its reply.
    pub fn apply(&mut self, index: u64, request: &Request) -> Response {
        self.applied_index = self.applied_index.max(index);
        self.clock_ms = self.clock_ms.max(request.at_ms);
        if let Some(previous) = request.request_id.as_ref().and_then(|id| self.dedup.get(id)) {
            return previous.clone();
        }
        let response = self.dispatch(index, &request.command);
        if let Some(id) = &request.request_id {
            self.remember(id.clone(), response.clone());
        }
        response
    }

    fn dispatch(&mut self, index: u64, command: &Command) -> Response {
        match command {
            Command::KvPut { key, value } => {
                Response::KvPut { version: self.kv.put(key.clone(), value.clone(), index, self.clock_ms) }
            }
            Command::KvDelete { key } => Response::KvDelete { existed: self.kv.delete(key) },
        }
    }

    fn remember(&mut self, id: String, response: Response) {
        self.dedup.insert(id.clone(), response);
        self.dedup_order.push_back(id);
        while self.dedup_order.len() > DEDUP_WINDOW {
            if let Some(old) = self.dedup_order.pop_front() {
                self.dedup.remove(&old);
            }
        }
    }

    /// Checks the invariants of the whole state.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.dedup.len() != self.dedup_order.len() || self.dedup.len() > DEDUP_WINDOW {
            return Err(format!(
                "dedup table has {} replies but {} ordered ids (window {DEDUP_WINDOW})",
                self.dedup.len(),
                self.dedup_order.len()
            ));
        }
        self.kv.check_invariants(self.applied_index)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn req(id: Option<&str>, at_ms: u64, command: Command) -> Request {
        Request { request_id: id.map(str::to_owned), at_ms, command }
    }

    fn put(key: &str, value: serde_json::Value) -> Command {
        Command::KvPut { key: key.into(), value }
    }

    #[test]
    fn switch_routes_each_command() {
        let cases: Vec<(Command, Response)> = vec![
            (put("a", json!(1)), Response::KvPut { version: 1 }),
            (put("a", json!(2)), Response::KvPut { version: 2 }),
            (Command::KvDelete { key: "a".into() }, Response::KvDelete { existed: true }),
            (Command::KvDelete { key: "a".into() }, Response::KvDelete { existed: false }),
        ];
        let mut state = Group0State::default();
        for (i, (command, expected)) in cases.into_iter().enumerate() {
            let got = state.apply(i as u64 + 1, &req(None, 10, command));
            assert_eq!(got, expected, "entry {}", i + 1);
            state.check_invariants().expect("invariants");
        }
        assert!(state.kv.get("a").is_none());
    }

    #[test]
    fn blank_entries_advance_the_applied_index_only() {
        let mut state = Group0State::default();
        assert_eq!(state.apply_blank(7), Response::Empty);
        assert_eq!(state.applied_index, 7);
        assert!(state.kv.is_empty());
    }

    #[test]
    fn retried_request_applies_once() {
        let mut state = Group0State::default();
        let first = state.apply(1, &req(Some("r1"), 5, put("k", json!("v1"))));
        state.apply(2, &req(None, 6, put("k", json!("v2"))));
        let retry = state.apply(3, &req(Some("r1"), 7, put("k", json!("v1"))));
        assert_eq!(first, retry);
        assert_eq!(state.kv.get("k").map(|e| e.value.clone()), Some(json!("v2")));
    }

    #[test]
    fn clock_is_the_largest_stamp_applied() {
        let mut state = Group0State::default();
        state.apply(1, &req(None, 100, put("a", json!(1))));
        state.apply(2, &req(None, 90, put("b", json!(1))));
        assert_eq!(state.clock_ms, 100);
        assert_eq!(state.kv.get("b").map(|e| e.written_at_ms), Some(100));
    }

    #[test]
    fn dedup_window_is_bounded() {
        let mut state = Group0State::default();
        for i in 0..(DEDUP_WINDOW as u64 + 50) {
            state.apply(i + 1, &req(Some(&format!("r{i}")), i, put("k", json!(i))));
        }
        state.check_invariants().expect("invariants");
        // The oldest id fell out of the window, so a retry of it applies again.
        let again = state.apply(DEDUP_WINDOW as u64 + 51, &req(Some("r0"), 0, put("k", json!(0))));
        assert_eq!(again, Response::KvPut { version: DEDUP_WINDOW as u64 + 51 });
    }

    fn command_strategy() -> impl Strategy<Value = (Option<u8>, Command)> {
        let key = prop::sample::select(vec!["a", "b", "c"]);
        let cmd = prop_oneof![
            (key.clone(), any::<i32>()).prop_map(|(k, v)| put(k, json!(v))),
            key.prop_map(|k| Command::KvDelete { key: k.into() }),
        ];
        (prop::option::of(0u8..20), cmd)
    }

    proptest! {
        /// Two replicas fed the same log agree, keep the invariants, and a snapshot
        /// round-trip changes nothing.
        #[test]
        fn replicas_agree(log in prop::collection::vec(command_strategy(), 0..200)) {
            let mut a = Group0State::default();
            let mut b = Group0State::default();
            for (i, (id, command)) in log.iter().enumerate() {
                let request = req(id.map(|n| format!("r{n}")).as_deref(), i as u64, command.clone());
                let ra = a.apply(i as u64 + 1, &request);
                let rb = b.apply(i as u64 + 1, &request);
                prop_assert_eq!(ra, rb);
                prop_assert!(a.check_invariants().is_ok());
            }
            prop_assert_eq!(&a, &b);
            let bytes = serde_json::to_vec(&a).expect("encode");
            let restored: Group0State = serde_json::from_slice(&bytes).expect("decode");
            prop_assert_eq!(a, restored);
        }
    }
}
