//! [`LockTable`]: every lock, its holders and its FIFO queue of waiters.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::graph::find_cycle;
use super::types::*;

/// One lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Current holders by client id.
    pub holders: BTreeMap<String, Hold>,
    /// Queued requests, served first come, first served.
    pub waiters: VecDeque<Waiter>,
}

impl Lock {
    /// The mode the lock is held in, if held.
    pub fn mode(&self) -> Option<LockMode> {
        let mut modes = self.holders.values().map(|h| h.mode);
        let first = modes.next()?;
        Some(if first == LockMode::Exclusive || modes.any(|m| m == LockMode::Exclusive) {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        })
    }

    /// Holders as clients see them.
    pub fn holder_views(&self) -> Vec<HolderView> {
        self.holders
            .iter()
            .map(|(client_id, h)| HolderView {
                client_id: client_id.clone(),
                mode: h.mode,
                fence: h.fence,
                expires_at_ms: h.expires_at_ms,
            })
            .collect()
    }

    /// Whether `client_id` may hold the lock in `mode` next to the current holders, not
    /// counting its own hold (a shared holder upgrading to exclusive).
    fn admits(&self, client_id: &str, mode: LockMode) -> bool {
        self.holders.iter().all(|(holder, h)| holder == client_id || h.mode.compatible(mode))
    }

    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }
}

/// The replicated lock table of group 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTable {
    locks: BTreeMap<String, Lock>,
    /// Lock names each client holds or waits for (for limits and refresh-all).
    by_client: BTreeMap<String, BTreeSet<String>>,
    /// The last fencing token handed out.
    last_fence: u64,
    /// The most recent deadlocks, oldest first.
    deadlocks: VecDeque<DeadlockRecord>,
    /// The principal each client id belongs to while it holds or awaits a lock (only for
    /// clients that acquired as an authenticated principal).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    owners: BTreeMap<String, String>,
    /// Side effects of the commands applied since the node last drained them.
    #[serde(skip)]
    events: Vec<LockEvent>,
}

impl LockTable {
    /// The lock called `name`, if anyone holds or waits for it.
    pub fn get(&self, name: &str) -> Option<&Lock> {
        self.locks.get(name)
    }

    /// Every lock that is held or awaited, by name.
    pub fn locks(&self) -> &BTreeMap<String, Lock> {
        &self.locks
    }

    /// The most recent deadlocks, oldest first.
    pub fn deadlocks(&self) -> &VecDeque<DeadlockRecord> {
        &self.deadlocks
    }

    /// The last fencing token handed out.
    pub fn last_fence(&self) -> u64 {
        self.last_fence
    }

    /// Moves the fence counter `gap` ahead, so that no fence handed out from now on can be
    /// one handed out before (a restore from a backup does this: the old cluster may have
    /// gone on granting after the backup was taken).
    pub fn skip_fences(&mut self, gap: u64) {
        self.last_fence = self.last_fence.saturating_add(gap);
    }

    /// Takes the events produced since the last call.
    pub fn drain_events(&mut self) -> Vec<LockEvent> {
        std::mem::take(&mut self.events)
    }

    /// Earliest lease end or waiter deadline, if any: when the leader should next expire.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.locks
            .values()
            .flat_map(|l| {
                l.holders.values().map(|h| h.expires_at_ms).chain(l.waiters.iter().map(|w| w.deadline_ms))
            })
            .min()
    }

    /// Refuses a command about `client_id` from `owner` when the client id belongs to
    /// another principal: one that acquired as a principal, or none when `owner` is one.
    pub fn check_owner(&self, client_id: &str, owner: Option<&str>) -> Result<(), LockRefusal> {
        if !self.by_client.contains_key(client_id) {
            return Ok(());
        }
        if self.owners.get(client_id).map(String::as_str) == owner {
            Ok(())
        } else {
            Err(LockRefusal::NotOwner)
        }
    }

    /// The principal `client_id` belongs to, if it acquired as one.
    pub fn owner_of(&self, client_id: &str) -> Option<&str> {
        self.owners.get(client_id).map(String::as_str)
    }

    /// Records that `client_id` belongs to `owner` while it holds or awaits anything.
    pub fn record_owner(&mut self, client_id: &str, owner: Option<&str>) {
        if let (Some(owner), true) = (owner, self.by_client.contains_key(client_id)) {
            self.owners.insert(client_id.to_string(), owner.to_string());
        }
    }

    /// Acquires `name` for `client_id`. `wait_ms == 0` never queues.
    pub fn acquire(
        &mut self,
        name: &str,
        client_id: &str,
        mode: LockMode,
        ttl_ms: u64,
        wait_ms: u64,
        now_ms: u64,
    ) -> Result<AcquireOutcome, LockRefusal> {
        let lock = self.locks.get(name);
        if let Some(held) = lock.and_then(|l| l.holders.get(client_id)) {
            // Re-acquiring in the same mode (or shared while holding exclusive) refreshes.
            if held.mode == mode || held.mode == LockMode::Exclusive {
                return Ok(self.refresh_hold(name, client_id, ttl_ms, now_ms));
            }
        }
        if let Some(position) = lock.and_then(|l| l.waiters.iter().position(|w| w.client_id == client_id)) {
            return Ok(AcquireOutcome::Queued { position });
        }
        let grantable = lock.is_none_or(|l| l.waiters.is_empty() && l.admits(client_id, mode));
        if grantable {
            self.check_client_limit(client_id, name)?;
            let hold = self.grant(name, client_id, mode, ttl_ms, now_ms);
            let holders = self.locks.get(name).map(Lock::holder_views).unwrap_or_default();
            return Ok(AcquireOutcome::Granted { hold, holders });
        }
        if wait_ms == 0 {
            let holders = lock.map(Lock::holder_views).unwrap_or_default();
            return Ok(AcquireOutcome::Conflict { holders });
        }
        if lock.is_some_and(|l| l.waiters.len() >= WAITERS_PER_LOCK_MAX) {
            return Err(LockRefusal::Limit {
                what: format!("lock {name:?} already has {WAITERS_PER_LOCK_MAX} waiters"),
            });
        }
        self.check_client_limit(client_id, name)?;
        self.enqueue(name, client_id, mode, ttl_ms, wait_ms, now_ms)
    }

    fn check_client_limit(&self, client_id: &str, name: &str) -> Result<(), LockRefusal> {
        let names = self.by_client.get(client_id);
        if names.is_some_and(|n| n.len() >= LOCKS_PER_CLIENT_MAX && !n.contains(name)) {
            return Err(LockRefusal::Limit {
                what: format!("client {client_id:?} already holds or waits for {LOCKS_PER_CLIENT_MAX} locks"),
            });
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        name: &str,
        client_id: &str,
        mode: LockMode,
        ttl_ms: u64,
        wait_ms: u64,
        now_ms: u64,
    ) -> Result<AcquireOutcome, LockRefusal> {
        let waiter = Waiter {
            client_id: client_id.to_string(),
            mode,
            ttl_ms,
            enqueued_at_ms: now_ms,
            deadline_ms: now_ms.saturating_add(wait_ms),
        };
        let lock = self.locks.entry(name.to_string()).or_default();
        lock.waiters.push_back(waiter);
        let position = lock.waiters.len() - 1;
        self.by_client.entry(client_id.to_string()).or_default().insert(name.to_string());
        if let Some(cycle) = find_cycle(client_id, |c| self.edges_from(c)) {
            self.remove_waiter(name, client_id);
            self.forget_if_unused(name, client_id);
            self.deadlocks.push_back(DeadlockRecord {
                cycle: cycle.clone(),
                victim: client_id.to_string(),
                lock: name.to_string(),
                at_ms: now_ms,
            });
            while self.deadlocks.len() > DEADLOCK_HISTORY {
                self.deadlocks.pop_front();
            }
            return Ok(AcquireOutcome::Deadlock { cycle });
        }
        Ok(AcquireOutcome::Queued { position })
    }

    /// Edges of the wait-for graph leaving `client_id`: for each lock it waits for, to each
    /// conflicting holder and to earlier waiters asking for an incompatible mode.
    ///
    /// Edges to earlier waiters that another edge already implies are left out: the nearest
    /// earlier exclusive waiter waits for everyone before it, so a waiter points at it and,
    /// if exclusive itself, at the shared waiters after it. Reachability (and so every cycle)
    /// is the same as with all edges, but a long queue costs linear, not quadratic, time.
    pub fn edges_from(&self, client_id: &str) -> Vec<WaitEdge> {
        let mut edges = Vec::new();
        let Some(names) = self.by_client.get(client_id) else { return edges };
        for name in names {
            let Some(lock) = self.locks.get(name) else { continue };
            let Some(pos) = lock.waiters.iter().position(|w| w.client_id == client_id) else { continue };
            let mode = lock.waiters[pos].mode;
            let mut targets: BTreeSet<&str> = BTreeSet::new();
            for (holder, h) in &lock.holders {
                if holder != client_id && !h.mode.compatible(mode) {
                    targets.insert(holder);
                }
            }
            for earlier in lock.waiters.iter().take(pos).rev() {
                if earlier.client_id != client_id && !earlier.mode.compatible(mode) {
                    targets.insert(&earlier.client_id);
                }
                if earlier.mode == LockMode::Exclusive {
                    break;
                }
            }
            edges.extend(targets.into_iter().map(|t| WaitEdge {
                client_id: client_id.to_string(),
                lock: name.clone(),
                waits_for: t.to_string(),
            }));
        }
        edges
    }

    /// Every edge of the wait-for graph.
    pub fn all_edges(&self) -> Vec<WaitEdge> {
        self.by_client.keys().flat_map(|c| self.edges_from(c)).collect()
    }

    fn grant(&mut self, name: &str, client_id: &str, mode: LockMode, ttl_ms: u64, now_ms: u64) -> Hold {
        self.last_fence += 1;
        let hold = Hold {
            mode,
            fence: self.last_fence,
            acquired_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            ttl_ms,
        };
        self.locks.entry(name.to_string()).or_default().holders.insert(client_id.to_string(), hold.clone());
        self.by_client.entry(client_id.to_string()).or_default().insert(name.to_string());
        hold
    }

    fn refresh_hold(&mut self, name: &str, client_id: &str, ttl_ms: u64, now_ms: u64) -> AcquireOutcome {
        let lock = self.locks.entry(name.to_string()).or_default();
        let hold = match lock.holders.get_mut(client_id) {
            Some(h) => {
                h.ttl_ms = ttl_ms;
                h.expires_at_ms = now_ms.saturating_add(ttl_ms);
                h.clone()
            }
            None => return AcquireOutcome::Conflict { holders: lock.holder_views() },
        };
        AcquireOutcome::Granted { hold, holders: lock.holder_views() }
    }

    /// Releases `client_id`'s hold of `name` and serves the queue.
    pub fn release(&mut self, name: &str, client_id: &str, now_ms: u64) -> Result<(), LockRefusal> {
        let lock = self.locks.get_mut(name).filter(|l| !l.holders.is_empty()).ok_or(LockRefusal::NotHeld)?;
        if lock.holders.remove(client_id).is_none() {
            return Err(LockRefusal::NotOwner);
        }
        self.forget_if_unused(name, client_id);
        self.serve_queue(name, now_ms);
        Ok(())
    }

    /// Extends `client_id`'s lease of `name` to `now + ttl_ms` (`None`: its own TTL).
    pub fn refresh(
        &mut self,
        name: &str,
        client_id: &str,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Hold, LockRefusal> {
        let lock = self.locks.get_mut(name).filter(|l| !l.holders.is_empty()).ok_or(LockRefusal::NotHeld)?;
        let hold = lock.holders.get_mut(client_id).ok_or(LockRefusal::NotOwner)?;
        hold.ttl_ms = ttl_ms.unwrap_or(hold.ttl_ms);
        hold.expires_at_ms = now_ms.saturating_add(hold.ttl_ms);
        Ok(hold.clone())
    }

    /// Refreshes every lease `client_id` holds; returns the refreshed locks.
    pub fn refresh_all(&mut self, client_id: &str, ttl_ms: Option<u64>, now_ms: u64) -> Vec<(String, Hold)> {
        let names: Vec<String> =
            self.by_client.get(client_id).map(|n| n.iter().cloned().collect()).unwrap_or_default();
        names
            .into_iter()
            .filter_map(|name| self.refresh(&name, client_id, ttl_ms, now_ms).ok().map(|h| (name, h)))
            .collect()
    }

    /// Removes `client_id` from the queue of `name`; tells whether it was waiting.
    pub fn cancel_wait(&mut self, name: &str, client_id: &str, now_ms: u64) -> bool {
        let removed = self.remove_waiter(name, client_id);
        if removed {
            self.forget_if_unused(name, client_id);
            // The departed waiter may have been the head blocking compatible requests.
            self.serve_queue(name, now_ms);
        }
        removed
    }

    fn remove_waiter(&mut self, name: &str, client_id: &str) -> bool {
        let Some(lock) = self.locks.get_mut(name) else { return false };
        let before = lock.waiters.len();
        lock.waiters.retain(|w| w.client_id != client_id);
        let removed = lock.waiters.len() != before;
        if lock.is_idle() {
            self.locks.remove(name);
        }
        removed
    }

    /// Drops every hold of `name` (administrative) and serves the queue; returns the former
    /// holders.
    pub fn force_release(&mut self, name: &str, now_ms: u64) -> Vec<String> {
        let Some(lock) = self.locks.get_mut(name) else { return Vec::new() };
        let former: Vec<String> = std::mem::take(&mut lock.holders).into_keys().collect();
        for client_id in &former {
            self.forget_if_unused(name, client_id);
        }
        self.serve_queue(name, now_ms);
        former
    }

    /// Removes every lease that ended and every waiter whose deadline passed, at `now_ms`,
    /// and serves the queues. Returns how many holds and waiters were removed.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut removed = 0;
        let names: Vec<String> = self.locks.keys().cloned().collect();
        for name in names {
            let Some(lock) = self.locks.get_mut(&name) else { continue };
            let expired: Vec<String> = lock
                .holders
                .iter()
                .filter(|(_, h)| h.expires_at_ms <= now_ms)
                .map(|(c, _)| c.clone())
                .collect();
            let gone: Vec<String> = lock
                .waiters
                .iter()
                .filter(|w| w.deadline_ms <= now_ms)
                .map(|w| w.client_id.clone())
                .collect();
            if expired.is_empty() && gone.is_empty() {
                continue;
            }
            for client_id in &expired {
                lock.holders.remove(client_id);
            }
            lock.waiters.retain(|w| w.deadline_ms > now_ms);
            for client_id in expired {
                self.forget_if_unused(&name, &client_id);
                self.events.push(LockEvent::Expired { name: name.clone(), client_id });
                removed += 1;
            }
            for client_id in gone {
                self.forget_if_unused(&name, &client_id);
                self.events.push(LockEvent::WaitExpired { name: name.clone(), client_id });
                removed += 1;
            }
            self.serve_queue(&name, now_ms);
        }
        removed
    }

    /// Extends every lease by its own TTL: a new leader does this before expiring anything,
    /// because its clock need not agree with the previous leader's.
    pub fn extend_all(&mut self) {
        for lock in self.locks.values_mut() {
            for hold in lock.holders.values_mut() {
                hold.expires_at_ms = hold.expires_at_ms.saturating_add(hold.ttl_ms);
            }
        }
    }

    /// Grants queued requests from the head of the queue while they fit.
    fn serve_queue(&mut self, name: &str, now_ms: u64) {
        loop {
            let Some(lock) = self.locks.get_mut(name) else { return };
            let Some(head) = lock.waiters.front() else { break };
            if !lock.admits(&head.client_id, head.mode) {
                break;
            }
            let Some(w) = lock.waiters.pop_front() else { break };
            let hold = self.grant(name, &w.client_id, w.mode, w.ttl_ms, now_ms);
            self.events.push(LockEvent::Granted { name: name.to_string(), client_id: w.client_id, hold });
        }
        if self.locks.get(name).is_some_and(Lock::is_idle) {
            self.locks.remove(name);
        }
    }

    /// Drops `name` from `client_id`'s index unless the client still holds or awaits it.
    fn forget_if_unused(&mut self, name: &str, client_id: &str) {
        let still_used = self.locks.get(name).is_some_and(|l| {
            l.holders.contains_key(client_id) || l.waiters.iter().any(|w| w.client_id == client_id)
        });
        if still_used {
            return;
        }
        if let Some(names) = self.by_client.get_mut(client_id) {
            names.remove(name);
            if names.is_empty() {
                self.by_client.remove(client_id);
                self.owners.remove(client_id);
            }
        }
        if self.locks.get(name).is_some_and(Lock::is_idle) {
            self.locks.remove(name);
        }
    }

    /// Checks the table: mutual exclusion, queue order, the client index and an acyclic
    /// wait-for graph.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut index: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, lock) in &self.locks {
            if lock.is_idle() {
                return Err(format!("lock {name:?} is empty but kept"));
            }
            let exclusive = lock.holders.values().filter(|h| h.mode == LockMode::Exclusive).count();
            if exclusive > 1 || (exclusive == 1 && lock.holders.len() > 1) {
                return Err(format!("lock {name:?} has holders {:?}", lock.holder_views()));
            }
            if lock.holders.values().any(|h| h.fence > self.last_fence) {
                return Err(format!("lock {name:?} has a fence beyond {}", self.last_fence));
            }
            if let Some(head) = lock.waiters.front() {
                if lock.admits(&head.client_id, head.mode) {
                    return Err(format!("lock {name:?}: head waiter {} could be granted", head.client_id));
                }
            }
            let waiting: BTreeSet<&str> = lock.waiters.iter().map(|w| w.client_id.as_str()).collect();
            if waiting.len() != lock.waiters.len() {
                return Err(format!("lock {name:?} queues a client twice"));
            }
            for client in lock.holders.keys().map(String::as_str).chain(waiting) {
                index.entry(client.to_string()).or_default().insert(name.clone());
            }
        }
        if index != self.by_client {
            return Err("the client index does not match the locks".into());
        }
        if let Some(client) = self.owners.keys().find(|c| !self.by_client.contains_key(*c)) {
            return Err(format!("client {client:?} keeps an owner but holds and awaits nothing"));
        }
        for client in self.by_client.keys() {
            if let Some(cycle) = find_cycle(client, |c| self.edges_from(c)) {
                return Err(format!("the wait-for graph has a cycle: {cycle:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use LockMode::{Exclusive as X, Shared as S};

    const TTL: u64 = 1_000;
    const WAIT: u64 = 5_000;

    fn granted(o: Result<AcquireOutcome, LockRefusal>) -> Hold {
        match o {
            Ok(AcquireOutcome::Granted { hold, .. }) => hold,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn outcome_kind(o: &Result<AcquireOutcome, LockRefusal>) -> &'static str {
        match o {
            Ok(AcquireOutcome::Granted { .. }) => "granted",
            Ok(AcquireOutcome::Queued { .. }) => "queued",
            Ok(AcquireOutcome::Conflict { .. }) => "conflict",
            Ok(AcquireOutcome::Deadlock { .. }) => "deadlock",
            Err(_) => "refused",
        }
    }

    fn granted_events(t: &mut LockTable) -> Vec<(String, String)> {
        t.drain_events()
            .into_iter()
            .filter_map(|e| match e {
                LockEvent::Granted { name, client_id, .. } => Some((name, client_id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mode_compatibility_table() {
        let table = [(S, S, true), (S, X, false), (X, S, false), (X, X, false)];
        for (a, b, ok) in table {
            assert_eq!(a.compatible(b), ok, "{a:?} with {b:?}");
        }
    }

    #[test]
    fn requests_against_a_held_lock() {
        // (held by a in mode, b asks mode, wait?) -> outcome for b
        let cases = [
            (X, X, false, "conflict"),
            (X, S, false, "conflict"),
            (S, X, false, "conflict"),
            (S, S, false, "granted"),
            (X, X, true, "queued"),
            (S, X, true, "queued"),
            (S, S, true, "granted"),
        ];
        for (held, asked, wait, expected) in cases {
            let mut t = LockTable::default();
            granted(t.acquire("r", "a", held, TTL, 0, 0));
            let o = t.acquire("r", "b", asked, TTL, if wait { WAIT } else { 0 }, 1);
            assert_eq!(outcome_kind(&o), expected, "a holds {held:?}, b asks {asked:?} wait={wait}");
            t.check_invariants().expect("invariants");
        }
    }

    #[test]
    fn fifo_and_no_writer_starvation() {
        let mut t = LockTable::default();
        granted(t.acquire("r", "s1", S, TTL, 0, 0));
        assert_eq!(outcome_kind(&t.acquire("r", "x", X, TTL, WAIT, 1)), "queued");
        // A shared request does not overtake the waiting exclusive one.
        assert_eq!(outcome_kind(&t.acquire("r", "s2", S, TTL, WAIT, 2)), "queued");
        t.release("r", "s1", 3).expect("release");
        assert_eq!(granted_events(&mut t), vec![("r".into(), "x".into())]);
        t.release("r", "x", 4).expect("release");
        assert_eq!(granted_events(&mut t), vec![("r".into(), "s2".into())]);
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn consecutive_shared_waiters_are_granted_together() {
        let mut t = LockTable::default();
        granted(t.acquire("r", "x", X, TTL, 0, 0));
        for c in ["s1", "s2", "s3"] {
            t.acquire("r", c, S, TTL, WAIT, 1).expect("queue");
        }
        t.acquire("r", "x2", X, TTL, WAIT, 1).expect("queue");
        t.release("r", "x", 2).expect("release");
        let got: Vec<String> = granted_events(&mut t).into_iter().map(|(_, c)| c).collect();
        assert_eq!(got, vec!["s1", "s2", "s3"]);
        assert_eq!(t.get("r").map(|l| l.waiters.len()), Some(1));
    }

    #[test]
    fn reacquire_refreshes_and_keeps_the_fence() {
        let mut t = LockTable::default();
        let first = granted(t.acquire("r", "a", X, TTL, 0, 0));
        let again = granted(t.acquire("r", "a", X, 2 * TTL, 0, 500));
        assert_eq!(again.fence, first.fence);
        assert_eq!(again.expires_at_ms, 500 + 2 * TTL);
        let shared_ask = granted(t.acquire("r", "a", S, TTL, 0, 600));
        assert_eq!((shared_ask.mode, shared_ask.fence), (X, first.fence), "exclusive covers shared");
    }

    #[test]
    fn fences_strictly_increase_across_locks_and_grants() {
        let mut t = LockTable::default();
        let mut last = 0;
        for i in 0..20 {
            let name = format!("r{}", i % 3);
            let hold = granted(t.acquire(&name, "a", X, TTL, 0, i));
            assert!(hold.fence > last);
            last = hold.fence;
            t.release(&name, "a", i).expect("release");
        }
    }

    #[test]
    fn upgrade_of_the_sole_holder_is_immediate_with_a_new_fence() {
        let mut t = LockTable::default();
        let shared = granted(t.acquire("r", "a", S, TTL, 0, 0));
        let upgraded = granted(t.acquire("r", "a", X, TTL, WAIT, 1));
        assert_eq!(upgraded.mode, X);
        assert!(upgraded.fence > shared.fence);
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn upgrade_waits_for_other_readers_and_two_upgrades_deadlock() {
        let mut t = LockTable::default();
        granted(t.acquire("r", "a", S, TTL, 0, 0));
        granted(t.acquire("r", "b", S, TTL, 0, 0));
        assert_eq!(outcome_kind(&t.acquire("r", "a", X, TTL, WAIT, 1)), "queued");
        match t.acquire("r", "b", X, TTL, WAIT, 2) {
            Ok(AcquireOutcome::Deadlock { cycle }) => {
                let clients: Vec<&str> = cycle.iter().map(|e| e.client_id.as_str()).collect();
                assert_eq!(clients, vec!["b", "a"]);
            }
            other => panic!("expected an upgrade deadlock, got {other:?}"),
        }
        t.check_invariants().expect("invariants");
        t.release("r", "b", 3).expect("b gives up its read lock");
        let events = granted_events(&mut t);
        assert_eq!(events, vec![("r".into(), "a".into())]);
        assert_eq!(t.get("r").and_then(Lock::mode), Some(X));
    }

    #[test]
    fn two_and_three_cycles_reject_the_requester_and_are_recorded() {
        let mut t = LockTable::default();
        granted(t.acquire("r1", "a", X, TTL, 0, 0));
        granted(t.acquire("r2", "b", X, TTL, 0, 0));
        granted(t.acquire("r3", "c", X, TTL, 0, 0));
        assert_eq!(outcome_kind(&t.acquire("r2", "a", X, TTL, WAIT, 1)), "queued");
        assert_eq!(outcome_kind(&t.acquire("r3", "b", X, TTL, WAIT, 1)), "queued");
        match t.acquire("r1", "c", X, TTL, WAIT, 2) {
            Ok(AcquireOutcome::Deadlock { cycle }) => {
                let hops: Vec<(&str, &str, &str)> = cycle
                    .iter()
                    .map(|e| (e.client_id.as_str(), e.lock.as_str(), e.waits_for.as_str()))
                    .collect();
                assert_eq!(hops, vec![("c", "r1", "a"), ("a", "r2", "b"), ("b", "r3", "c")]);
            }
            other => panic!("expected a 3-cycle, got {other:?}"),
        }
        let record = t.deadlocks().back().expect("recorded");
        assert_eq!((record.victim.as_str(), record.lock.as_str(), record.at_ms), ("c", "r1", 2));
        // The victim is not left waiting.
        assert!(t.get("r1").is_some_and(|l| l.waiters.is_empty()));
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn expiry_grants_the_next_waiter_and_drops_late_waiters() {
        let mut t = LockTable::default();
        granted(t.acquire("r", "a", X, TTL, 0, 0));
        t.acquire("r", "b", X, TTL, 100, 10).expect("queue b");
        t.acquire("r", "c", X, TTL, 5_000, 10).expect("queue c");
        assert_eq!(t.next_deadline_ms(), Some(110));
        assert_eq!(t.expire(200), 1, "b's wait ended");
        assert_eq!(t.expire(999), 0, "a's lease still runs");
        assert_eq!(t.expire(TTL), 1, "a's lease ended");
        let events = t.drain_events();
        assert!(events.contains(&LockEvent::WaitExpired { name: "r".into(), client_id: "b".into() }));
        assert!(events.contains(&LockEvent::Expired { name: "r".into(), client_id: "a".into() }));
        assert!(events.iter().any(|e| matches!(e, LockEvent::Granted { client_id, .. } if client_id == "c")));
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn extend_all_adds_one_ttl_to_every_lease() {
        let mut t = LockTable::default();
        granted(t.acquire("r", "a", X, TTL, 0, 0));
        t.extend_all();
        assert_eq!(t.expire(TTL), 0);
        assert_eq!(t.get("r").and_then(|l| l.holders.get("a")).map(|h| h.expires_at_ms), Some(2 * TTL));
    }

    #[test]
    fn release_and_refresh_refusals() {
        let mut t = LockTable::default();
        assert_eq!(t.release("r", "a", 0), Err(LockRefusal::NotHeld));
        granted(t.acquire("r", "a", X, TTL, 0, 0));
        assert_eq!(t.release("r", "b", 0), Err(LockRefusal::NotOwner));
        assert_eq!(t.refresh("r", "b", None, 0), Err(LockRefusal::NotOwner));
        assert_eq!(t.refresh("q", "a", None, 0), Err(LockRefusal::NotHeld));
        assert_eq!(t.refresh("r", "a", Some(50), 10).map(|h| h.expires_at_ms), Ok(60));
        granted(t.acquire("q", "a", S, TTL, 0, 0));
        assert_eq!(t.refresh_all("a", None, 100).len(), 2);
    }

    #[test]
    fn waiters_per_lock_are_limited() {
        let mut t = LockTable::default();
        granted(t.acquire("r", "holder", X, TTL, 0, 0));
        for i in 0..WAITERS_PER_LOCK_MAX {
            t.acquire("r", &format!("w{i}"), X, TTL, WAIT, 1).expect("queue");
        }
        assert!(matches!(t.acquire("r", "one-more", X, TTL, WAIT, 1), Err(LockRefusal::Limit { .. })));
    }

    #[test]
    fn cancelling_the_head_waiter_lets_compatible_ones_in() {
        let mut t = LockTable::default();
        granted(t.acquire("r", "s1", S, TTL, 0, 0));
        t.acquire("r", "x", X, TTL, WAIT, 1).expect("queue x");
        t.acquire("r", "s2", S, TTL, WAIT, 1).expect("queue s2");
        assert!(t.cancel_wait("r", "x", 2));
        assert_eq!(granted_events(&mut t), vec![("r".into(), "s2".into())]);
        assert!(!t.cancel_wait("r", "x", 3));
        t.check_invariants().expect("invariants");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire { lock: u8, client: u8, exclusive: bool, wait: bool },
        Release { lock: u8, client: u8 },
        Cancel { lock: u8, client: u8 },
        Expire { advance_ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, 0u8..5, any::<bool>(), any::<bool>())
                .prop_map(|(lock, client, exclusive, wait)| Op::Acquire { lock, client, exclusive, wait }),
            2 => (0u8..4, 0u8..5).prop_map(|(lock, client)| Op::Release { lock, client }),
            1 => (0u8..4, 0u8..5).prop_map(|(lock, client)| Op::Cancel { lock, client }),
            1 => (0u64..600).prop_map(|advance_ms| Op::Expire { advance_ms }),
        ]
    }

    /// Brute force: would `client` waiting for `lock` in `mode` be on a cycle? Builds the
    /// table with the waiter added and computes reachability by transitive closure.
    fn closes_cycle(t: &LockTable, lock: &str, client: &str, mode: LockMode) -> bool {
        let mut probe = t.clone();
        probe.locks.entry(lock.to_string()).or_default().waiters.push_back(Waiter {
            client_id: client.to_string(),
            mode,
            ttl_ms: TTL,
            enqueued_at_ms: 0,
            deadline_ms: u64::MAX,
        });
        probe.by_client.entry(client.to_string()).or_default().insert(lock.to_string());
        // Every edge of the definition, none left out.
        let mut edges = Vec::new();
        for (name, l) in &probe.locks {
            for (pos, w) in l.waiters.iter().enumerate() {
                let holders =
                    l.holders.iter().filter(|(h, hold)| **h != w.client_id && !hold.mode.compatible(w.mode));
                let earlier = l
                    .waiters
                    .iter()
                    .take(pos)
                    .filter(|e| e.client_id != w.client_id && !e.mode.compatible(w.mode));
                for target in holders.map(|(h, _)| h.clone()).chain(earlier.map(|e| e.client_id.clone())) {
                    edges.push(WaitEdge {
                        client_id: w.client_id.clone(),
                        lock: name.clone(),
                        waits_for: target,
                    });
                }
            }
        }
        let nodes: Vec<String> = (0..5).map(|c| format!("c{c}")).collect();
        let idx = |n: &str| nodes.iter().position(|x| x == n);
        let mut reach = [[false; 5]; 5];
        for e in &edges {
            if let (Some(a), Some(b)) = (idx(&e.client_id), idx(&e.waits_for)) {
                reach[a][b] = true;
            }
        }
        for k in 0..5 {
            for i in 0..5 {
                for j in 0..5 {
                    reach[i][j] = reach[i][j] || (reach[i][k] && reach[k][j]);
                }
            }
        }
        idx(client).is_some_and(|c| reach[c][c])
    }

    proptest! {
        /// Random histories keep every invariant, and the detector reports a deadlock exactly
        /// when the brute-force search finds the requester on a cycle.
        #[test]
        fn random_histories_keep_invariants_and_detect_exactly_the_cycles(ops in prop::collection::vec(op(), 1..120)) {
            let mut t = LockTable::default();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Acquire { lock, client, exclusive, wait } => {
                        let (lock, client) = (format!("r{lock}"), format!("c{client}"));
                        let mode = if exclusive { X } else { S };
                        let already_queued = t.get(&lock).is_some_and(|l| l.waiters.iter().any(|w| w.client_id == client));
                        let would_cycle = closes_cycle(&t, &lock, &client, mode);
                        let outcome = t.acquire(&lock, &client, mode, TTL, if wait { WAIT } else { 0 }, now);
                        match &outcome {
                            Ok(AcquireOutcome::Deadlock { cycle }) => {
                                prop_assert!(would_cycle, "false deadlock {cycle:?}");
                                prop_assert_eq!(&cycle[0].client_id, &client);
                            }
                            Ok(AcquireOutcome::Queued { .. }) if !already_queued => {
                                prop_assert!(!would_cycle, "missed a deadlock of {client} on {lock}");
                            }
                            _ => {}
                        }
                    }
                    Op::Release { lock, client } => {
                        let _ = t.release(&format!("r{lock}"), &format!("c{client}"), now);
                    }
                    Op::Cancel { lock, client } => {
                        t.cancel_wait(&format!("r{lock}"), &format!("c{client}"), now);
                    }
                    Op::Expire { advance_ms } => {
                        now += advance_ms;
                        t.expire(now);
                    }
                }
                let check = t.check_invariants();
                prop_assert!(check.is_ok(), "{:?}", check);
            }
        }
    }
}
