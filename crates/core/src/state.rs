//! Group 0's state machine: the switch that routes each command to its part of the state.
//!
//! Group 0 spans every voter and will hold the lock table, the cache directory and the ring;
//! for now it holds the replicated key-value store. Applying is a pure function of
//! `(state, log index, batch)`, which is what makes every replica agree.
//!
//! Every applied command gets the next *revision*: a counter that only grows, across leader
//! changes too, because it is part of the replicated state. Since one log entry carries a
//! batch of commands, the revision (not the log index) is what versions values.

use serde::{Deserialize, Serialize};

use crate::cache::{CacheEvent, Directory};
use crate::command::{Batch, Command, Fence, KvRefusal, Request, Response};
use crate::dedup::Dedup;
use crate::kv::{KvEvent, KvStore};
use crate::locks::LockTable;
use crate::topology::Topology;

/// Everything group 0 replicates, as one serialisable value (this is also the snapshot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group0State {
    /// Largest leader timestamp applied so far: the state machine's clock.
    pub clock_ms: u64,
    /// Last log index applied.
    pub applied_index: u64,
    /// Revision of the last command applied.
    pub revision: u64,
    /// The replicated key-value store.
    pub kv: KvStore,
    /// The lock table.
    #[serde(default)]
    pub locks: LockTable,
    /// Term of the leader whose lease extension was applied last; only that leader's
    /// expiries take effect.
    #[serde(default)]
    pub lease_term: u64,
    /// The cache directory and backing store.
    #[serde(default)]
    pub cache: Directory,
    /// Where queue partitions live (created by the first leader).
    #[serde(default)]
    pub topology: Option<Topology>,
    /// Cache events of the commands applied since the node last drained them.
    #[serde(skip)]
    cache_events: Vec<CacheEvent>,
    /// Key-value changes not yet taken by the node (watches, blocking reads).
    #[serde(skip)]
    kv_events: Vec<KvEvent>,
    /// Replies to recent client request ids, for exactly-once application of retries.
    dedup: Dedup,
}

impl Group0State {
    /// Records that the entry at `index` carried no application command.
    pub fn apply_blank(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Applies the batch found at log `index`; one reply per request, in order.
    pub fn apply_batch(&mut self, index: u64, batch: &Batch) -> Vec<Response> {
        self.apply_entry(index, 0, batch)
    }

    /// Applies the batch found at log `index`, written by the leader of `term`.
    pub fn apply_entry(&mut self, index: u64, term: u64, batch: &Batch) -> Vec<Response> {
        self.applied_index = self.applied_index.max(index);
        self.clock_ms = self.clock_ms.max(batch.at_ms);
        batch.requests.iter().map(|request| self.apply(index, term, request)).collect()
    }

    fn apply(&mut self, index: u64, term: u64, request: &Request) -> Response {
        if let Some(previous) = self.dedup.replay(request) {
            return previous;
        }
        self.revision += 1;
        let response = self.dispatch(index, term, &request.command);
        self.dedup.record(request, &response);
        response
    }

    fn dispatch(&mut self, index: u64, term: u64, command: &Command) -> Response {
        match command {
            Command::KvPut { key, value, if_version, fence } => {
                if let Err(refusal) = self.check_write(key, *if_version, fence.as_ref()) {
                    return Response::KvRefused { refusal };
                }
                let version = self.kv.put(key.clone(), value.clone(), self.revision, self.clock_ms);
                self.kv_events.push(KvEvent { key: key.clone(), value: Some(value.clone()), version });
                Response::KvPut { version }
            }
            Command::KvDelete { key, if_version, fence } => {
                if let Err(refusal) = self.check_write(key, *if_version, fence.as_ref()) {
                    return Response::KvRefused { refusal };
                }
                let existed = self.kv.delete(key);
                if existed {
                    self.kv_events.push(KvEvent { key: key.clone(), value: None, version: self.revision });
                }
                Response::KvDelete { existed }
            }
            Command::Cache { request, fence } => {
                if let Some(refusal) = fence.as_ref().and_then(|f| self.check_fence(f).err()) {
                    return Response::KvRefused { refusal };
                }
                let (reply, events) = self.cache.apply(index, request);
                self.cache_events.extend(events);
                Response::Cache { reply }
            }
            Command::Topology { request } => {
                Response::Topology { changed: Topology::apply(&mut self.topology, request) }
            }
            queue if queue.is_queue() => {
                Response::Rejected { reason: "queue commands belong to a partition's group".into() }
            }
            lock => self.dispatch_lock(term, lock),
        }
    }

    /// The conditions of a key-value write: its compare-and-set version and its fence.
    fn check_write(
        &self,
        key: &str,
        if_version: Option<u64>,
        fence: Option<&Fence>,
    ) -> Result<(), KvRefusal> {
        if let Some(expected) = if_version {
            let current = self.kv.get(key).map_or(0, |e| e.version);
            if current != expected {
                return Err(KvRefusal::VersionMismatch { current });
            }
        }
        match fence {
            Some(fence) => self.check_fence(fence),
            None => Ok(()),
        }
    }

    /// Whether `fence` is the fencing token of a current hold of its lock: one that the
    /// table lists and whose lease has not lapsed by this state machine's clock (a lapsed
    /// hold counts as gone even before the leader's expiry removes it).
    pub fn check_fence(&self, fence: &Fence) -> Result<(), KvRefusal> {
        let now = self.clock_ms;
        let current_holds = || {
            self.locks
                .get(&fence.lock)
                .into_iter()
                .flat_map(|l| l.holders.values())
                .filter(|h| h.expires_at_ms > now)
        };
        if current_holds().any(|h| h.fence == fence.token) {
            return Ok(());
        }
        let current = current_holds().map(|h| h.fence).max();
        Err(KvRefusal::StaleFence { lock: fence.lock.clone(), current })
    }

    /// The key-value changes applied since the node last took them.
    pub fn drain_kv_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.kv_events)
    }

    fn dispatch_lock(&mut self, term: u64, command: &Command) -> Response {
        let now = self.clock_ms;
        let done = |r: Result<Option<crate::locks::Hold>, crate::locks::LockRefusal>| match r {
            Ok(hold) => Response::LockDone { hold },
            Err(refusal) => Response::LockRefused { refusal },
        };
        match command {
            Command::LockAcquire { name, client_id, mode, ttl_ms, wait_ms, owner } => {
                let acquired = self
                    .locks
                    .check_owner(client_id, owner.as_deref())
                    .and_then(|()| self.locks.acquire(name, client_id, *mode, *ttl_ms, *wait_ms, now));
                if acquired.is_ok() {
                    self.locks.record_owner(client_id, owner.as_deref());
                }
                match acquired {
                    Ok(outcome) => Response::LockAcquire { outcome },
                    Err(refusal) => Response::LockRefused { refusal },
                }
            }
            Command::LockRelease { name, client_id, owner } => done(
                self.locks
                    .check_owner(client_id, owner.as_deref())
                    .and_then(|()| self.locks.release(name, client_id, now))
                    .map(|_| None),
            ),
            Command::LockRefresh { name, client_id, ttl_ms, owner } => done(
                self.locks
                    .check_owner(client_id, owner.as_deref())
                    .and_then(|()| self.locks.refresh(name, client_id, *ttl_ms, now))
                    .map(Some),
            ),
            Command::LockRefreshAll { client_id, ttl_ms, owner } => {
                match self.locks.check_owner(client_id, owner.as_deref()) {
                    Ok(()) => {
                        Response::LockRefreshedAll { locks: self.locks.refresh_all(client_id, *ttl_ms, now) }
                    }
                    Err(refusal) => Response::LockRefused { refusal },
                }
            }
            Command::LockCancelWait { name, client_id, owner } => {
                match self.locks.check_owner(client_id, owner.as_deref()) {
                    Ok(()) => {
                        Response::LockCancelled { was_waiting: self.locks.cancel_wait(name, client_id, now) }
                    }
                    Err(refusal) => Response::LockRefused { refusal },
                }
            }
            Command::LockForceRelease { name } => {
                Response::LockForceReleased { former_holders: self.locks.force_release(name, now) }
            }
            // Only the leader that has extended every lease may expire any: an expiry written
            // in another term than the last extension is ignored.
            Command::LockExpire if term != self.lease_term => Response::LockExpired { removed: 0 },
            Command::LockExpire => Response::LockExpired { removed: self.locks.expire(now) },
            Command::LockExtendAll => {
                self.locks.extend_all();
                self.lease_term = term;
                Response::LockDone { hold: None }
            }
            _ => Response::Rejected { reason: "not a lock command".into() },
        }
    }

    /// Takes the cache events produced since the last call.
    pub fn drain_cache_events(&mut self) -> Vec<CacheEvent> {
        std::mem::take(&mut self.cache_events)
    }

    /// Prepares a state restored from a backup to serve a new cluster: the fence counter
    /// and the revision move `gap` ahead, so neither a fence nor a key-value version the
    /// old cluster may have handed out after the backup is handed out again.
    pub fn skip_for_restore(&mut self, gap: u64) {
        self.locks.skip_fences(gap);
        self.revision = self.revision.saturating_add(gap);
    }

    /// Checks the invariants of the whole state.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.dedup.check_invariants()?;
        self.locks.check_invariants()?;
        self.cache.check_invariants()?;
        self.kv.check_invariants(self.revision)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::limits::DEDUP_WINDOW;

    fn req(id: Option<&str>, command: Command) -> Request {
        Request { request_id: id.map(str::to_owned), command }
    }

    fn batch(at_ms: u64, requests: Vec<Request>) -> Batch {
        Batch { at_ms, requests, seed: None }
    }

    fn put(key: &str, value: serde_json::Value) -> Command {
        Command::KvPut { key: key.into(), value, if_version: None, fence: None }
    }

    #[test]
    fn switch_routes_each_command() {
        let cases: Vec<(Command, Response)> = vec![
            (put("a", json!(1)), Response::KvPut { version: 1 }),
            (put("a", json!(2)), Response::KvPut { version: 2 }),
            (
                Command::KvDelete { key: "a".into(), if_version: None, fence: None },
                Response::KvDelete { existed: true },
            ),
            (
                Command::KvDelete { key: "a".into(), if_version: None, fence: None },
                Response::KvDelete { existed: false },
            ),
        ];
        let mut state = Group0State::default();
        for (i, (command, expected)) in cases.into_iter().enumerate() {
            let got = state.apply_batch(i as u64 + 1, &batch(10, vec![req(None, command)]));
            assert_eq!(got, vec![expected], "entry {}", i + 1);
            state.check_invariants().expect("invariants");
        }
        assert!(state.kv.get("a").is_none());
    }

    #[test]
    fn a_batch_gives_each_command_its_own_revision() {
        let mut state = Group0State::default();
        let replies = state
            .apply_batch(5, &batch(1, vec![req(None, put("a", json!(1))), req(None, put("a", json!(2)))]));
        assert_eq!(replies, vec![Response::KvPut { version: 1 }, Response::KvPut { version: 2 }]);
        assert_eq!(state.kv.get("a").map(|e| e.value.clone()), Some(json!(2)));
        assert_eq!((state.applied_index, state.revision), (5, 2));
    }

    #[test]
    fn a_restored_state_hands_out_fences_and_versions_beyond_the_gap() {
        use crate::locks::{AcquireOutcome, LockMode};
        let acquire = |name: &str| Command::LockAcquire {
            name: name.into(),
            client_id: "c".into(),
            mode: LockMode::Exclusive,
            ttl_ms: 60_000,
            wait_ms: 0,
            owner: None,
        };
        let fence_of = |reply: &Response| match reply {
            Response::LockAcquire { outcome: AcquireOutcome::Granted { hold, .. } } => hold.fence,
            other => panic!("not a grant: {other:?}"),
        };
        let mut state = Group0State::default();
        let old_fence = fence_of(&state.apply_batch(1, &batch(1_000, vec![req(None, acquire("a"))]))[0]);
        state.apply_batch(2, &batch(1_000, vec![req(None, put("k", json!(1)))]));
        let (old_revision, gap) = (state.revision, 1_000_000);
        state.skip_for_restore(gap);
        state.check_invariants().expect("invariants after the skip");
        let fence = fence_of(&state.apply_batch(3, &batch(1_001, vec![req(None, acquire("b"))]))[0]);
        assert!(fence > old_fence + gap, "fence {fence} after {old_fence} and a gap of {gap}");
        let reply = state.apply_batch(4, &batch(1_001, vec![req(None, put("k", json!(2)))]));
        assert!(matches!(reply[0], Response::KvPut { version } if version > old_revision + gap), "{reply:?}");
        // The hold from before the backup keeps its fence.
        assert_eq!(state.locks.locks()["a"].holders.values().next().map(|h| h.fence), Some(old_fence));
        state.check_invariants().expect("invariants after new commands");
    }

    #[test]
    fn lock_commands_use_the_leader_clock_of_their_entry() {
        use crate::locks::{AcquireOutcome, LockMode};
        let acquire = |client: &str, wait_ms| Command::LockAcquire {
            name: "l".into(),
            client_id: client.into(),
            mode: LockMode::Exclusive,
            ttl_ms: 100,
            wait_ms,
            owner: None,
        };
        let mut state = Group0State::default();
        let first = state.apply_batch(1, &batch(1_000, vec![req(None, acquire("a", 0))]));
        assert!(
            matches!(&first[0], Response::LockAcquire { outcome: AcquireOutcome::Granted { hold, .. } } if hold.expires_at_ms == 1_100)
        );
        let queued = state.apply_batch(2, &batch(1_050, vec![req(None, acquire("b", 5_000))]));
        assert!(matches!(
            &queued[0],
            Response::LockAcquire { outcome: AcquireOutcome::Queued { position: 0 } }
        ));
        // An expiry proposed at 1_099 by the leader's clock removes nothing; at 1_100 it does.
        assert_eq!(
            state.apply_batch(3, &batch(1_099, vec![req(None, Command::LockExpire)])),
            vec![Response::LockExpired { removed: 0 }]
        );
        assert_eq!(
            state.apply_batch(4, &batch(1_100, vec![req(None, Command::LockExpire)])),
            vec![Response::LockExpired { removed: 1 }]
        );
        assert_eq!(
            state.locks.get("l").and_then(|l| l.holders.keys().next().cloned()),
            Some("b".to_string())
        );
        let refused = state.apply_batch(
            5,
            &batch(
                1_200,
                vec![req(
                    None,
                    Command::LockRelease { name: "l".into(), client_id: "a".into(), owner: None },
                )],
            ),
        );
        assert!(matches!(&refused[0], Response::LockRefused { .. }));
        state.check_invariants().expect("invariants");
    }

    #[test]
    fn compare_and_set_and_fences_are_checked_in_log_order() {
        use crate::locks::LockMode;
        let mut state = Group0State::default();
        let mut index = 0;
        let mut apply = |state: &mut Group0State, at_ms: u64, command: Command| {
            index += 1;
            state.apply_batch(index, &batch(at_ms, vec![req(None, command)])).remove(0)
        };
        let put = |value: u64, if_version: Option<u64>, fence: Option<Fence>| Command::KvPut {
            key: "k".into(),
            value: json!(value),
            if_version,
            fence,
        };
        let mismatch = |current| Response::KvRefused { refusal: KvRefusal::VersionMismatch { current } };
        // 0 means "must not exist".
        assert_eq!(apply(&mut state, 1_000, put(1, Some(0), None)), Response::KvPut { version: 1 });
        assert_eq!(apply(&mut state, 1_000, put(2, Some(0), None)), mismatch(1));
        assert_eq!(apply(&mut state, 1_000, put(3, Some(1), None)), Response::KvPut { version: 3 });
        assert_eq!(apply(&mut state, 1_000, put(4, Some(1), None)), mismatch(3), "the loser of a race");
        let delete =
            |if_version| Command::KvDelete { key: "k".into(), if_version: Some(if_version), fence: None };
        assert_eq!(apply(&mut state, 1_000, delete(1)), mismatch(3));
        assert_eq!(apply(&mut state, 1_000, delete(3)), Response::KvDelete { existed: true });
        let events = state.drain_kv_events();
        let versions: Vec<(u64, bool)> = events.iter().map(|e| (e.version, e.value.is_some())).collect();
        assert_eq!(versions, vec![(1, true), (3, true), (6, false)], "refused writes leave no event");

        // A fence is good while its hold is current: not after the lease lapsed, nor once
        // another client holds the lock.
        let acquire = |client: &str| Command::LockAcquire {
            name: "l".into(),
            client_id: client.into(),
            mode: LockMode::Exclusive,
            ttl_ms: 100,
            wait_ms: 0,
            owner: None,
        };
        let fence_of = |reply: Response| match reply {
            Response::LockAcquire { outcome: crate::locks::AcquireOutcome::Granted { hold, .. } } => {
                hold.fence
            }
            other => panic!("not granted: {other:?}"),
        };
        let first = fence_of(apply(&mut state, 2_000, acquire("a")));
        let fenced = |token| Some(Fence { lock: "l".into(), token });
        assert!(matches!(apply(&mut state, 2_050, put(5, None, fenced(first))), Response::KvPut { .. }));
        let stale =
            |current| Response::KvRefused { refusal: KvRefusal::StaleFence { lock: "l".into(), current } };
        assert_eq!(
            apply(&mut state, 2_100, put(6, None, fenced(first))),
            stale(None),
            "the lease lapsed at 2_100"
        );
        assert_eq!(apply(&mut state, 2_400, Command::LockExpire), Response::LockExpired { removed: 1 });
        let second = fence_of(apply(&mut state, 2_400, acquire("b")));
        assert_eq!(apply(&mut state, 2_410, put(7, None, fenced(first))), stale(Some(second)));
        assert!(matches!(apply(&mut state, 2_420, put(8, None, fenced(second))), Response::KvPut { .. }));
        let unknown = Some(Fence { lock: "other".into(), token: second });
        assert_eq!(
            apply(&mut state, 2_430, put(9, None, unknown)),
            Response::KvRefused { refusal: KvRefusal::StaleFence { lock: "other".into(), current: None } }
        );
        assert_eq!(state.kv.get("k").map(|e| e.value.clone()), Some(json!(8)));
        state.check_invariants().expect("invariants");
    }

    #[test]
    fn a_client_id_belongs_to_the_principal_that_acquired_with_it() {
        use crate::locks::{AcquireOutcome, LockMode, LockRefusal};
        let owner = |o: &str| Some(o.to_string());
        let acquire = |client: &str, by: Option<String>, wait_ms| Command::LockAcquire {
            name: "l".into(),
            client_id: client.into(),
            mode: LockMode::Exclusive,
            ttl_ms: 10_000,
            wait_ms,
            owner: by,
        };
        let release = |client: &str, by: Option<String>| Command::LockRelease {
            name: "l".into(),
            client_id: client.into(),
            owner: by,
        };
        let not_owner = Response::LockRefused { refusal: LockRefusal::NotOwner };
        let mut state = Group0State::default();
        let mut at = 0;
        let mut apply = |state: &mut Group0State, command: Command| {
            at += 1;
            state.apply_batch(at, &batch(1_000, vec![req(None, command)])).remove(0)
        };
        let granted = apply(&mut state, acquire("w", owner("alice"), 0));
        assert!(matches!(granted, Response::LockAcquire { outcome: AcquireOutcome::Granted { .. } }));
        // Another principal, or none, with the same client id: refused, and nothing changes.
        assert_eq!(apply(&mut state, release("w", owner("bob"))), not_owner);
        assert_eq!(apply(&mut state, release("w", None)), not_owner);
        assert_eq!(apply(&mut state, acquire("w", owner("bob"), 0)), not_owner);
        let refresh_all =
            Command::LockRefreshAll { client_id: "w".into(), ttl_ms: None, owner: owner("bob") };
        assert_eq!(apply(&mut state, refresh_all), not_owner);
        assert_eq!(state.locks.owner_of("w"), Some("alice"), "a refused acquire does not take the id over");
        // A waiter is bound too.
        let queued = apply(&mut state, acquire("v", owner("carol"), 5_000));
        assert!(matches!(queued, Response::LockAcquire { outcome: AcquireOutcome::Queued { .. } }));
        let cancel = Command::LockCancelWait { name: "l".into(), client_id: "v".into(), owner: owner("bob") };
        assert_eq!(apply(&mut state, cancel), not_owner);
        state.check_invariants().expect("invariants");
        assert_eq!(apply(&mut state, release("w", owner("alice"))), Response::LockDone { hold: None });
        // carol now holds; once alice holds nothing, the id "w" is free for anyone.
        assert_eq!(state.locks.owner_of("w"), None);
        assert_eq!(apply(&mut state, release("v", owner("carol"))), Response::LockDone { hold: None });
        let again = apply(&mut state, acquire("w", owner("bob"), 0));
        assert!(matches!(again, Response::LockAcquire { outcome: AcquireOutcome::Granted { .. } }));
        state.check_invariants().expect("invariants");
    }

    #[test]
    fn an_expiry_from_a_leader_that_has_not_extended_leases_is_ignored() {
        use crate::locks::LockMode;
        let mut state = Group0State::default();
        let acquire = Command::LockAcquire {
            name: "l".into(),
            client_id: "a".into(),
            mode: LockMode::Exclusive,
            ttl_ms: 100,
            wait_ms: 0,
            owner: None,
        };
        state.apply_entry(1, 1, &batch(1_000, vec![req(None, Command::LockExtendAll), req(None, acquire)]));
        // Term 2's leader has not applied its extension yet: a (forwarded) expiry is a no-op.
        let ignored = state.apply_entry(2, 2, &batch(5_000, vec![req(None, Command::LockExpire)]));
        assert_eq!(ignored, vec![Response::LockExpired { removed: 0 }]);
        state.apply_entry(3, 2, &batch(5_000, vec![req(None, Command::LockExtendAll)]));
        let expired = state.apply_entry(4, 2, &batch(5_000, vec![req(None, Command::LockExpire)]));
        assert_eq!(expired, vec![Response::LockExpired { removed: 1 }]);
    }

    #[test]
    fn cache_commands_reach_the_directory_and_leave_events_for_the_nodes() {
        use crate::cache::{CacheCommand, CacheEvent, CacheReply};
        let mut state = Group0State::default();
        let put = CacheCommand::Put { key: "k".into(), node: "n1".into(), value: json!(5), token: 0 };
        let replies =
            state.apply_batch(1, &batch(1, vec![req(None, Command::Cache { request: put, fence: None })]));
        assert!(matches!(&replies[0], Response::Cache { reply: CacheReply::Stored { version: 1, .. } }));
        let events = state.drain_cache_events();
        assert!(matches!(&events[..], [CacheEvent::Grant { node, .. }] if node == "n1"));
        assert!(state.drain_cache_events().is_empty(), "drained once");
        assert_eq!(state.cache.get("k").and_then(|e| e.value.clone()), Some(json!(5)));
        state.check_invariants().expect("invariants");
    }

    #[test]
    fn blank_entries_advance_the_applied_index_only() {
        let mut state = Group0State::default();
        state.apply_blank(7);
        assert_eq!((state.applied_index, state.revision), (7, 0));
        assert!(state.kv.is_empty());
    }

    #[test]
    fn retried_request_applies_once() {
        let mut state = Group0State::default();
        let first = state.apply_batch(1, &batch(5, vec![req(Some("r1"), put("k", json!("v1")))]));
        state.apply_batch(2, &batch(6, vec![req(None, put("k", json!("v2")))]));
        let retry = state.apply_batch(3, &batch(7, vec![req(Some("r1"), put("k", json!("v1")))]));
        assert_eq!(first, retry);
        assert_eq!(state.kv.get("k").map(|e| e.value.clone()), Some(json!("v2")));
        assert_eq!(state.revision, 2, "the retry took no revision");
    }

    #[test]
    fn a_request_id_reused_for_another_request_is_rejected() {
        let mut state = Group0State::default();
        state.apply_batch(1, &batch(5, vec![req(Some("r1"), put("k1", json!(1)))]));
        let reused = state.apply_batch(2, &batch(6, vec![req(Some("r1"), put("k2", json!(2)))]));
        assert!(matches!(&reused[0], Response::Rejected { reason } if reason.contains("r1")), "{reused:?}");
        assert!(state.kv.get("k2").is_none());
    }

    #[test]
    fn clock_is_the_largest_stamp_applied() {
        let mut state = Group0State::default();
        state.apply_batch(1, &batch(100, vec![req(None, put("a", json!(1)))]));
        state.apply_batch(2, &batch(90, vec![req(None, put("b", json!(1)))]));
        assert_eq!(state.clock_ms, 100);
        assert_eq!(state.kv.get("b").map(|e| e.written_at_ms), Some(100));
    }

    #[test]
    fn dedup_window_is_bounded() {
        let mut state = Group0State::default();
        for i in 0..(DEDUP_WINDOW as u64 + 50) {
            state.apply_batch(i + 1, &batch(i, vec![req(Some(&format!("r{i}")), put("k", json!(i)))]));
        }
        state.check_invariants().expect("invariants");
        // The oldest id fell out of the window, so a retry of it applies again.
        let again =
            state.apply_batch(DEDUP_WINDOW as u64 + 51, &batch(0, vec![req(Some("r0"), put("k", json!(0)))]));
        assert_eq!(again, vec![Response::KvPut { version: DEDUP_WINDOW as u64 + 51 }]);
    }

    #[test]
    fn the_dedup_window_keeps_no_cache_values() {
        use crate::cache::{CacheCommand, CacheReply};
        let cache = |request| Command::Cache { request, fence: None };
        let big = json!("v".repeat(60_000));
        let mut state = Group0State::default();
        let owned = req(
            Some("own"),
            cache(CacheCommand::GetM {
                key: "k".into(),
                node: "n1".into(),
                token: 1,
                value: Some(big.clone()),
            }),
        );
        let first = state.apply_batch(1, &batch(1, vec![owned.clone()]));
        assert!(
            matches!(&first[0], Response::Cache { reply: CacheReply::Granted { value: Some(v), .. } } if *v == big),
            "{first:?}"
        );
        let revoke = req(Some("rev"), cache(CacheCommand::Revoke { node: "n1".into(), token: 7 }));
        let revoked = state.apply_batch(2, &batch(2, vec![revoke.clone()]));
        assert!(
            matches!(&revoked[0], Response::Cache { reply: CacheReply::Revoked { owned } } if owned.len() == 1),
            "{revoked:?}"
        );
        for i in 0..50 {
            let read = req(
                Some(&format!("read{i}")),
                cache(CacheCommand::GetS { key: "k".into(), node: format!("n{}", i % 3 + 2), token: i }),
            );
            state.apply_batch(3 + i, &batch(3 + i, vec![read]));
        }
        // Fifty grants of a 60 KB value and a revocation are remembered in a few KB.
        let window = serde_json::to_string(&state.dedup).expect("encode");
        assert!(window.len() < 20_000, "the window holds {} bytes", window.len());
        assert!(!window.contains("vvvv"), "no value in the window");
        // Retries are answered from the window without values, and change nothing.
        let before = state.clone();
        let replayed = state.apply_batch(100, &batch(100, vec![owned, revoke]));
        assert!(
            matches!(&replayed[0], Response::Cache { reply: CacheReply::Granted { value: None, .. } }),
            "{replayed:?}"
        );
        assert_eq!(replayed[1], Response::Cache { reply: CacheReply::Revoked { owned: Vec::new() } });
        assert_eq!(state.cache, before.cache);
    }

    fn request_strategy() -> impl Strategy<Value = Request> {
        let key = prop::sample::select(vec!["a", "b", "c"]);
        let cmd = prop_oneof![
            (key.clone(), any::<i32>()).prop_map(|(k, v)| put(k, json!(v))),
            key.prop_map(|k| Command::KvDelete { key: k.into(), if_version: None, fence: None }),
        ];
        (prop::option::of(0u8..20), cmd)
            .prop_map(|(id, command)| req(id.map(|n| format!("r{n}")).as_deref(), command))
    }

    proptest! {
        /// Two replicas fed the same log agree, keep the invariants, revisions only grow, and a
        /// snapshot round-trip changes nothing.
        #[test]
        fn replicas_agree(log in prop::collection::vec(prop::collection::vec(request_strategy(), 0..5), 0..100)) {
            let mut a = Group0State::default();
            let mut b = Group0State::default();
            for (i, requests) in log.iter().enumerate() {
                let entry = batch(i as u64, requests.clone());
                let before = a.revision;
                let ra = a.apply_batch(i as u64 + 1, &entry);
                let rb = b.apply_batch(i as u64 + 1, &entry);
                prop_assert_eq!(ra.len(), requests.len());
                prop_assert_eq!(ra, rb);
                prop_assert!(a.revision >= before);
                prop_assert!(a.check_invariants().is_ok());
            }
            prop_assert_eq!(&a, &b);
            // The node takes an apply's side effects right after it, so a snapshot never
            // holds pending ones (they are not serialised).
            a.drain_kv_events();
            a.drain_cache_events();
            a.locks.drain_events();
            let bytes = serde_json::to_vec(&a).expect("encode");
            let restored: Group0State = serde_json::from_slice(&bytes).expect("decode");
            prop_assert_eq!(a, restored);
        }
    }
}
