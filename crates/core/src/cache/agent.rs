//! [`CacheAgent`]: one node's side of the cache protocol, as a pure state machine.
//!
//! The agent holds the node's lines and everything the node remembers about its own
//! requests: the writes still waiting for their invalidations, the recalls it deferred, the
//! lines granted to requests that have not picked them up, and its coherence lease. Applied
//! events, requests and the time (`now_ms`, a monotonic clock of the caller's choice) go in;
//! the commands the node must propose come out. It does no I/O and never waits: the node
//! holds it behind one lock, proposes what it returns and does the waiting.
//!
//! The rules it keeps (docs/cache.md explains why each is needed):
//! - A hit, or a local write to an M or E line, needs a valid lease, no write of this node
//!   still pending on the key, no eviction of it on its way, and the line's invalidation
//!   barrier confirmed ([`Line::visible`]).
//! - A recall of a line that holds a write of this node not yet confirmed is answered only
//!   when that write ends; a recall of the line as it was before is answered at once.
//! - A write whose line was dropped (revoked, or the key deleted) before it was confirmed
//!   may be lost: [`CacheAgent::write_kept`] says no, and the node must not acknowledge it.
//!
//! [`Revoker`] is the group-0 leader's side: who renewed a lease when, and which holders
//! have not renewed for long enough that their leases must have run out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use super::local::{Line, LocalCache, WriteOutcome};
use super::protocol::{CacheCommand, CacheEvent, Mesi};

/// Most granted lines kept for their requests to pick up.
const SERVED_MAX: usize = 4096;

/// One write of this node that goes through the log, from [`CacheAgent::begin_write`] to
/// [`CacheAgent::end_write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTicket {
    key: String,
    token: u64,
    /// How often a held line of the key had been dropped when the write began.
    dropped_before: u64,
}

impl WriteTicket {
    /// The token of the write's request.
    pub fn token(&self) -> u64 {
        self.token
    }
}

/// One node's cache lines, lease and request bookkeeping.
#[derive(Debug, Clone)]
pub struct CacheAgent {
    name: String,
    lines: LocalCache,
    /// Set once this node's `Revoke` of itself applied (its old lines are forgotten).
    live: bool,
    /// Set when a snapshot replaced the directory: the node must join again.
    needs_rejoin: bool,
    lease_ms: u64,
    lease_until_ms: Option<u64>,
    /// Every other member is known to have applied this index or lost its lease.
    confirmed_index: u64,
    /// Values proposed for periodic write-back, to mark a line clean only if unchanged.
    flushing: BTreeMap<String, Option<Value>>,
    /// Lines granted to this node's requests, by request token (newest last, bounded).
    served: VecDeque<(u64, Line)>,
    /// Keys this node is writing through the log: no hits, and their values stay hidden.
    pending: BTreeMap<String, usize>,
    /// Per key, how many of this node's writes were granted (the line holds their value)
    /// and are not yet confirmed.
    holding: BTreeMap<String, usize>,
    /// Tokens of this node's write requests not yet granted, with their keys.
    writes_in_flight: BTreeMap<u64, String>,
    /// Recalls of held lines, answered when the write completes.
    deferred: BTreeSet<String>,
    /// Per key, how often a line holding unconfirmed writes was dropped.
    dropped_holds: BTreeMap<String, u64>,
    /// Tests only, a planted bug: every barrier counts as confirmed, so values are returned
    /// before the members that may still serve older ones applied their invalidation.
    #[cfg(test)]
    pub(crate) plant_no_barrier: bool,
    /// Tests only, a planted bug: a write whose held line was dropped still counts as kept.
    #[cfg(test)]
    pub(crate) plant_keep_dropped_writes: bool,
}

impl CacheAgent {
    /// The agent of node `name` with at most `capacity` lines and leases of `lease_ms`. It
    /// serves nothing until [`CacheAgent::joined`].
    pub fn new(name: &str, capacity: usize, lease_ms: u64) -> Self {
        Self {
            name: name.to_string(),
            lines: LocalCache::new(capacity),
            live: false,
            needs_rejoin: false,
            lease_ms,
            lease_until_ms: None,
            confirmed_index: 0,
            flushing: BTreeMap::new(),
            served: VecDeque::new(),
            pending: BTreeMap::new(),
            holding: BTreeMap::new(),
            writes_in_flight: BTreeMap::new(),
            deferred: BTreeSet::new(),
            dropped_holds: BTreeMap::new(),
            #[cfg(test)]
            plant_no_barrier: false,
            #[cfg(test)]
            plant_keep_dropped_writes: false,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's lines and counters.
    pub fn lines(&self) -> &LocalCache {
        &self.lines
    }

    /// Whether the cache serves requests (its self-revocation applied).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// This node's `Revoke` of itself applied: events from now on concern lines it has.
    pub fn joined(&mut self) {
        self.live = true;
    }

    /// A snapshot replaced the directory: this node's lines may no longer be known to it, so
    /// they are dropped and the node must join again.
    pub fn snapshot_installed(&mut self) {
        self.live = false;
        self.lines = LocalCache::new(self.lines.capacity());
        self.needs_rejoin = true;
    }

    /// Whether the node must join again; asking clears it.
    pub fn take_rejoin(&mut self) -> bool {
        std::mem::take(&mut self.needs_rejoin)
    }

    /// Whether the coherence lease is valid at `now_ms`.
    pub fn lease_valid(&self, now_ms: u64) -> bool {
        self.lease_until_ms.is_some_and(|until| now_ms < until)
    }

    /// A renewal that started at `started_ms` was confirmed by the leader and this node
    /// applied the index it named: the lease runs one lease length from the start.
    pub fn renewed(&mut self, started_ms: u64) {
        let until = started_ms + self.lease_ms;
        self.lease_until_ms = Some(self.lease_until_ms.map_or(until, |u| u.max(until)));
    }

    /// The index every other member is known to have applied (or lost its lease).
    pub fn confirmed_index(&self) -> u64 {
        #[cfg(test)]
        if self.plant_no_barrier {
            return u64::MAX;
        }
        self.confirmed_index
    }

    /// Every other member applied `index` or its lease must have run out.
    pub fn confirm(&mut self, index: u64) {
        self.confirmed_index = self.confirmed_index.max(index);
    }

    /// Whether `line` may be returned to a client now.
    pub fn visible(&self, line: &Line) -> bool {
        line.visible(self.confirmed_index())
    }

    /// Performs the events of one applied entry (or batch) that concern this node. Returns
    /// the commands to propose (recalls answered, evictions) and whether any line changed.
    pub fn on_applied(&mut self, events: &[CacheEvent]) -> (Vec<CacheCommand>, bool) {
        let mut commands = Vec::new();
        if !self.live {
            return (commands, false);
        }
        let mut touched = false;
        for event in events {
            if event.node() != self.name {
                continue;
            }
            touched = true;
            self.on_event(event, &mut commands);
        }
        (commands, touched)
    }

    fn on_event(&mut self, event: &CacheEvent, commands: &mut Vec<CacheCommand>) {
        match event {
            CacheEvent::Recall { key, .. } => {
                self.lines.on_event(event);
                if self.holds_write(key) {
                    // The line holds this node's write, whose invalidations are not yet
                    // confirmed: answer once that write has completed. (A recall of the line
                    // as it was before the write was granted is answered at once; deferring
                    // it would block the write queued behind it.)
                    self.deferred.insert(key.clone());
                } else {
                    commands.push(self.recall_answer(key));
                }
            }
            CacheEvent::WrittenBack { key, version, kind: None, .. } => {
                let written = self.flushing.remove(key);
                let unchanged = self.lines.peek(key).is_some_and(|l| written.as_ref() == Some(&l.value));
                if unchanged {
                    self.lines.mark_clean(key, *version);
                }
            }
            other => {
                if let CacheEvent::Invalidate { key, .. } = other {
                    if self.holds_write(key) {
                        *self.dropped_holds.entry(key.clone()).or_default() += 1;
                    }
                }
                if let Some((key, line)) = self.lines.on_event(other) {
                    commands.push(CacheCommand::evict(key, &self.name, line));
                }
                if let CacheEvent::Grant { key, token, dirty, fresh, .. } = other {
                    // A granted write of this node (an ownership request's value, or a
                    // write-through value): hold recalls until it is confirmed.
                    if (*dirty || *fresh) && self.writes_in_flight.remove(token).is_some() {
                        *self.holding.entry(key.clone()).or_default() += 1;
                    }
                    if *token != 0 {
                        // What the request was served, even if a later event in the same
                        // batch already took the line away again.
                        let line = self.lines.peek(key).cloned().or_else(|| other.granted_line());
                        self.served.extend(line.map(|line| (*token, line)));
                        while self.served.len() > SERVED_MAX {
                            self.served.pop_front();
                        }
                    }
                }
            }
        }
    }

    fn holds_write(&self, key: &str) -> bool {
        self.holding.get(key).is_some_and(|n| *n > 0)
    }

    /// The write-back of the recalled line of `key` (its value is final: a recalled line
    /// takes no more writes).
    fn recall_answer(&self, key: &str) -> CacheCommand {
        CacheCommand::write_back(key, &self.name, self.lines.peek(key), true)
    }

    /// The line granted to the request with `token`, once (`None` until it was served).
    pub fn take_served(&mut self, token: u64) -> Option<Line> {
        let pos = self.served.iter().position(|(t, _)| *t == token)?;
        self.served.remove(pos).map(|(_, line)| line)
    }

    /// Whether a read of `key` must wait: a write of this node on it is still completing, or
    /// its evicted line's `Evict` is on its way (asking the directory now would get ahead of
    /// the evicted value).
    pub fn is_pending(&self, key: &str) -> bool {
        self.pending.contains_key(key) || self.lines.is_evicting(key)
    }

    /// The line of `key` if it may be served as a hit at `now_ms` (counted as a hit).
    pub fn hit(&mut self, key: &str, now_ms: u64) -> Option<Line> {
        if !self.live || !self.lease_valid(now_ms) || self.is_pending(key) {
            return None;
        }
        let usable = self.lines.peek(key).is_some_and(|l| !l.recalled && self.visible(l));
        if usable {
            self.lines.read(key)
        } else {
            None
        }
    }

    /// Counts a read that found no usable line.
    pub fn count_miss(&mut self) {
        self.lines.stats.misses += 1;
    }

    /// The invalidation barrier of the line of `key`, if the line could be a hit but for a
    /// barrier that is not confirmed yet.
    pub fn unconfirmed_barrier(&self, key: &str) -> Option<u64> {
        self.lines.peek(key).filter(|l| !l.recalled && !self.visible(l)).map(|l| l.invalidated_at)
    }

    /// Writes `value` into this node's M or E line of `key` at `now_ms`, if the node may:
    /// a valid lease, nothing pending on the key, the line's barrier confirmed. Returns the
    /// line afterwards, or `None` when the write must go through the log.
    pub fn write_locally(&mut self, key: &str, value: &Value, now_ms: u64) -> Option<Line> {
        if !self.lease_valid(now_ms) || self.is_pending(key) {
            return None;
        }
        // Until every other member applied the entry that took their copies, one of them may
        // still serve an older value after this write was acknowledged.
        if self.lines.peek(key).is_some_and(|l| !self.visible(l)) {
            return None;
        }
        if self.lines.write(key, value.clone(), now_ms) != WriteOutcome::Local {
            return None;
        }
        self.lines.peek(key).filter(|l| !l.recalled && l.state != Mesi::Shared).cloned()
    }

    /// Begins a write of `key` through the log with the request `token`: the key is pending
    /// (its value hidden on this node) until [`CacheAgent::end_write`].
    pub fn begin_write(&mut self, key: &str, token: u64) -> WriteTicket {
        *self.pending.entry(key.to_string()).or_default() += 1;
        self.writes_in_flight.insert(token, key.to_string());
        WriteTicket { key: key.to_string(), token, dropped_before: self.dropped(key) }
    }

    fn dropped(&self, key: &str) -> u64 {
        self.dropped_holds.get(key).copied().unwrap_or(0)
    }

    /// Whether the value of an ownership write still lives in this node's line: `false` if a
    /// line of the key holding unconfirmed writes was dropped since the write began, so the
    /// write may be lost and must not be acknowledged.
    pub fn write_kept(&self, ticket: &WriteTicket) -> bool {
        #[cfg(test)]
        if self.plant_keep_dropped_writes {
            return true;
        }
        self.dropped(&ticket.key) == ticket.dropped_before
    }

    /// Ends a write (acknowledged, failed or timed out). Returns the answer to a recall that
    /// waited for it, if it was the last held write of its key.
    pub fn end_write(&mut self, ticket: WriteTicket) -> Option<CacheCommand> {
        let key = ticket.key;
        // A token still registered was never granted here (the request failed or timed out).
        let was_granted = self.writes_in_flight.remove(&ticket.token).is_none();
        if was_granted {
            if let Some(n) = self.holding.get_mut(&key) {
                *n = n.saturating_sub(1);
            }
        }
        let still_held = self.holds_write(&key);
        if !still_held {
            self.holding.remove(&key);
        }
        if let Some(count) = self.pending.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.pending.remove(&key);
            }
        }
        (!still_held && self.deferred.remove(&key)).then(|| self.recall_answer(&key))
    }

    /// Write-backs of the dirty lines that have been dirty for `max_ms` at `now_ms` (and are
    /// neither recalled nor pending). Each is remembered, so the line is marked clean when it
    /// applies only if nothing was written since.
    pub fn due_write_backs(&mut self, now_ms: u64, max_ms: u64) -> Vec<CacheCommand> {
        let due: Vec<(String, Line)> = self
            .lines
            .lines()
            .filter(|(k, l)| {
                let dirty_long = l.dirty_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= max_ms);
                !l.recalled && dirty_long && !self.is_pending(k)
            })
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        let mut commands = Vec::new();
        for (key, line) in due {
            self.flushing.insert(key.clone(), line.value.clone());
            commands.push(CacheCommand::write_back(&key, &self.name, Some(&line), false));
        }
        commands
    }

    /// The agent's own invariants: every held write is pending, every deferred recall waits
    /// for a held write, and the lines are within capacity.
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(key) = self.holding.keys().find(|k| !self.pending.contains_key(*k)) {
            return Err(format!("{}: a held write of {key:?} is not pending", self.name));
        }
        if let Some(key) = self.deferred.iter().find(|k| !self.holds_write(k)) {
            return Err(format!("{}: the recall of {key:?} waits for no held write", self.name));
        }
        if self.lines.len() > self.lines.capacity() {
            return Err(format!(
                "{}: {} lines over a capacity of {}",
                self.name,
                self.lines.len(),
                self.lines.capacity()
            ));
        }
        Ok(())
    }
}

/// The group-0 leader's record of coherence lease renewals, and its rule for revoking the
/// lines of holders whose renewals stopped.
///
/// A holder is revoked only when its last renewal recorded here is older than `grace_ms`
/// (longer than a lease), so its lease must have run out. A new leader has no renewal
/// history: it waits `grace_ms` after taking office first. A leader that did not look for
/// longer than `stall_ms` (it was paused or starved) heard no renewals meanwhile through
/// no fault of the holders, so it starts its wait again, as a new leader.
#[derive(Debug, Clone)]
pub struct Revoker {
    grace_ms: u64,
    stall_ms: u64,
    renewals: BTreeMap<String, u64>,
    /// The term it leads in and since when it counts renewals.
    office: Option<(u64, u64)>,
    last_look_ms: Option<u64>,
}

impl Revoker {
    /// A revoker that revokes after `grace_ms` without renewal and starts over after a
    /// pause of more than `stall_ms`.
    pub fn new(grace_ms: u64, stall_ms: u64) -> Self {
        Self { grace_ms, stall_ms, renewals: BTreeMap::new(), office: None, last_look_ms: None }
    }

    /// `member` renewed its lease at `now_ms` (recorded after the leader confirmed it leads).
    pub fn record(&mut self, member: &str, now_ms: u64) {
        self.renewals.insert(member.to_string(), now_ms);
    }

    /// Looks at `holders` (every node with a line) at `now_ms`; `leading` is the term this
    /// node leads group 0 in, if it does. Returns the holders to revoke, other than `me`,
    /// and counts each as renewed now so it is not revoked twice.
    pub fn lapsed(
        &mut self,
        now_ms: u64,
        leading: Option<u64>,
        me: &str,
        holders: impl IntoIterator<Item = String>,
    ) -> Vec<String> {
        let stalled =
            self.last_look_ms.replace(now_ms).is_some_and(|t| now_ms.saturating_sub(t) > self.stall_ms);
        if stalled {
            self.office = None;
        }
        let Some(term) = leading else {
            self.office = None;
            return Vec::new();
        };
        let since = match self.office {
            Some((t, at)) if t == term => at,
            _ => {
                self.office = Some((term, now_ms));
                return Vec::new();
            }
        };
        if now_ms.saturating_sub(since) < self.grace_ms {
            return Vec::new();
        }
        let holders: BTreeSet<String> = holders.into_iter().filter(|h| h != me).collect();
        let grace = self.grace_ms;
        let lapsed: Vec<String> = holders
            .into_iter()
            .filter(|h| self.renewals.get(h).is_none_or(|t| now_ms.saturating_sub(*t) > grace))
            .collect();
        for holder in &lapsed {
            self.record(holder, now_ms);
        }
        lapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grant(node: &str, key: &str, token: u64, state: Mesi, dirty: bool, at: u64) -> CacheEvent {
        CacheEvent::Grant {
            key: key.into(),
            node: node.into(),
            state,
            value: Some(json!(1)),
            version: 1,
            token,
            dirty,
            fresh: false,
            invalidated_at: at,
            granted_at: at,
            regrant: false,
        }
    }

    fn live(name: &str) -> CacheAgent {
        let mut agent = CacheAgent::new(name, 4, 100);
        agent.joined();
        agent.renewed(0);
        agent
    }

    #[test]
    fn a_recall_of_a_held_write_waits_for_the_write_to_end() {
        let mut agent = live("n1");
        let ticket = agent.begin_write("a", 7);
        let (out, _) = agent.on_applied(&[grant("n1", "a", 7, Mesi::Exclusive, true, 3)]);
        assert!(out.is_empty());
        let recall = CacheEvent::Recall {
            key: "a".into(),
            node: "n1".into(),
            kind: super::super::RecallKind::Invalidate,
        };
        let (out, _) = agent.on_applied(&[recall]);
        assert!(out.is_empty(), "the recall waits: {out:?}");
        assert!(agent.check_invariants().is_ok());
        let answer = agent.end_write(ticket).expect("the deferred recall is answered");
        assert!(matches!(answer, CacheCommand::WriteBack { answers_recall: true, .. }));
        assert!(agent.check_invariants().is_ok());
    }

    #[test]
    fn a_write_whose_held_line_was_invalidated_is_not_kept() {
        let mut agent = live("n1");
        let ticket = agent.begin_write("a", 7);
        agent.on_applied(&[grant("n1", "a", 7, Mesi::Exclusive, true, 3)]);
        assert!(agent.write_kept(&ticket));
        agent.on_applied(&[CacheEvent::Invalidate { key: "a".into(), node: "n1".into() }]);
        assert!(!agent.write_kept(&ticket), "the write may be lost");
    }

    #[test]
    fn hits_need_a_lease_and_a_confirmed_barrier() {
        let mut agent = live("n1");
        agent.on_applied(&[grant("n1", "a", 0, Mesi::Shared, false, 5)]);
        assert_eq!(agent.hit("a", 10), None, "barrier 5 is not confirmed");
        assert_eq!(agent.unconfirmed_barrier("a"), Some(5));
        agent.confirm(5);
        assert!(agent.hit("a", 10).is_some());
        assert_eq!(agent.hit("a", 100), None, "the lease ran out at 100");
    }

    #[test]
    fn the_revoker_waits_a_grace_period_in_office_and_after_each_renewal() {
        let mut r = Revoker::new(30, 20);
        let holders = || vec!["n1".to_string(), "n2".to_string(), "n3".to_string()];
        assert!(r.lapsed(0, Some(1), "n1", holders()).is_empty(), "takes office");
        r.record("n2", 5);
        assert!(r.lapsed(15, Some(1), "n1", holders()).is_empty());
        // Once the office's grace is over, a holder never heard from is revoked at once.
        assert_eq!(r.lapsed(30, Some(1), "n1", holders()), vec!["n3".to_string()]);
        assert!(r.lapsed(35, Some(1), "n1", holders()).is_empty(), "n2: 30 since its renewal is not over 30");
        assert_eq!(r.lapsed(36, Some(1), "n1", holders()), vec!["n2".to_string()]);
        // A stall of more than 20 starts the office again.
        assert!(r.lapsed(100, Some(1), "n1", holders()).is_empty());
        assert!(r.lapsed(110, Some(1), "n1", holders()).is_empty());
        assert_eq!(r.lapsed(130, Some(1), "n1", holders()).len(), 2);
        assert!(r.lapsed(131, None, "n1", holders()).is_empty(), "not leading");
    }
}
