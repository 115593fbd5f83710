//! The MESI cache's node side: this node's lines, its coherence lease, and the requests
//! that go through group 0's log ("Raft as the bus").
//!
//! - Applied cache events for this node change its lines synchronously inside the state
//!   machine's apply, so "this node applied index N" also means "its lines reflect entry N".
//! - A read hit or a write to an M/E line is served locally, but only while the node holds a
//!   coherence lease: a renewal through the leader that proves it applied everything
//!   committed before the renewal started. A node cut off from the leader stops serving hits
//!   when the lease runs out; the leader revokes a holder whose renewals stopped only after
//!   its lease must have run out.
//! - A write that took ownership completes only once every other member applied the entry
//!   that invalidated its copy, or its lease (which would require that apply) has run out.
//! - A restarted node has lost its lines: it first proposes `Revoke` of itself and serves
//!   the cache only after that applied.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sinkron_core::cache::{CacheCommand, CacheEvent, CacheReply, Line, LocalCache, Mesi, WriteOutcome};
use sinkron_core::{Command, Response};
use tokio::sync::{mpsc, watch};

use crate::clock::now_ms;
use crate::config::WritePolicy;
use crate::error::NodeError;
use crate::group::Leader;
use crate::group0::Group0;
use crate::wire::ReadIndex;

/// What a cache read found.
#[derive(Debug, Clone)]
pub struct CacheRead {
    /// The line after the read.
    pub line: Line,
    /// Whether it was served from this node's line without the log.
    pub hit: bool,
}

/// This node's cache.
pub struct CacheService {
    name: String,
    local: Mutex<LocalCache>,
    /// Set once this node's `Revoke` of itself applied (its old lines are forgotten).
    live: AtomicBool,
    lease_until: Mutex<Option<Instant>>,
    /// Length of a coherence lease.
    pub lease: Duration,
    /// Longest a dirty line stays unwritten.
    pub writeback_max: Duration,
    /// The write policy.
    pub policy: WritePolicy,
    /// Follow-up proposals from applied events (write-backs for recalls, evictions).
    outbox: mpsc::UnboundedSender<CacheCommand>,
    /// Bumped whenever this node's lines changed by an applied event.
    changed: watch::Sender<u64>,
    /// Values proposed for periodic write-back, to mark a line clean only if unchanged.
    flushing: Mutex<BTreeMap<String, Option<serde_json::Value>>>,
    /// On the leader: when each node last renewed its lease.
    renewals: Mutex<BTreeMap<String, Instant>>,
    /// Lines granted to this node's requests, by request token (newest last, bounded).
    served: Mutex<VecDeque<(u64, Line)>>,
    /// Keys this node is writing and whose invalidations are not yet confirmed: no hits,
    /// and a recall is answered only once the write completed.
    pending: Mutex<BTreeMap<String, usize>>,
    /// Per key, how many of this node's writes were granted (the line holds their value)
    /// and are not yet confirmed.
    holding: Mutex<BTreeMap<String, usize>>,
    /// Tokens of this node's ownership requests still in flight, with their keys.
    writes_in_flight: Mutex<BTreeMap<u64, String>>,
    /// Recalls of held lines, answered when the write completes.
    deferred: Mutex<std::collections::BTreeSet<String>>,
    /// Per key, how often a line holding unconfirmed writes was dropped (this node's lines
    /// revoked, or the key deleted): such writes may be lost and are not acknowledged.
    dropped_holds: Mutex<BTreeMap<String, u64>>,
    /// Set when a snapshot replaced the directory: the lines are dropped and the node
    /// joins again.
    needs_rejoin: AtomicBool,
    /// Every other member is known to have applied this index or lost its lease: a line
    /// whose invalidation barrier is at most this may be returned ([`Line::visible`]).
    confirmed_index: AtomicU64,
}

/// Most granted lines kept for their requests to pick up.
const SERVED_MAX: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CacheService {
    /// A cache of `capacity` lines; returns the receiver of follow-up proposals.
    pub fn new(
        name: &str,
        capacity: usize,
        lease: Duration,
        writeback_max: Duration,
        policy: WritePolicy,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<CacheCommand>) {
        let (outbox, rx) = mpsc::unbounded_channel();
        let service = Self {
            name: name.to_string(),
            local: Mutex::new(LocalCache::new(capacity)),
            live: AtomicBool::new(false),
            lease_until: Mutex::new(None),
            lease,
            writeback_max,
            policy,
            outbox,
            changed: watch::Sender::new(0),
            flushing: Mutex::new(BTreeMap::new()),
            renewals: Mutex::new(BTreeMap::new()),
            served: Mutex::new(VecDeque::new()),
            pending: Mutex::new(BTreeMap::new()),
            holding: Mutex::new(BTreeMap::new()),
            writes_in_flight: Mutex::new(BTreeMap::new()),
            deferred: Mutex::new(std::collections::BTreeSet::new()),
            dropped_holds: Mutex::new(BTreeMap::new()),
            needs_rejoin: AtomicBool::new(false),
            confirmed_index: AtomicU64::new(0),
        };
        (Arc::new(service), rx)
    }

    /// This node's lines and counters.
    pub fn local(&self) -> MutexGuard<'_, LocalCache> {
        lock(&self.local)
    }

    /// Whether the cache serves requests (its self-revocation applied).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Whether the coherence lease is valid now.
    pub fn lease_valid(&self) -> bool {
        lock(&self.lease_until).is_some_and(|until| Instant::now() < until)
    }

    /// Performs the events of one applied batch that concern this node.
    pub fn on_applied(&self, events: Vec<CacheEvent>) {
        if !self.is_live() {
            return;
        }
        let mut touched = false;
        let mut local = self.local();
        for event in events.iter().filter(|e| e.node() == self.name) {
            touched = true;
            match event {
                CacheEvent::Recall { key, .. } => {
                    local.on_event(event);
                    if lock(&self.holding).get(key).is_some_and(|n| *n > 0) {
                        // The line holds this node's write, whose invalidations are not yet
                        // confirmed: answer once that write has completed. (A recall of the
                        // line as it was before the write was granted is answered at once;
                        // deferring it would block the write queued behind it.)
                        lock(&self.deferred).insert(key.clone());
                    } else {
                        self.answer_recall(&local, key);
                    }
                }
                CacheEvent::WrittenBack { key, version, kind: None, .. } => {
                    let written = lock(&self.flushing).remove(key);
                    let unchanged = local.peek(key).is_some_and(|l| written.as_ref() == Some(&l.value));
                    if unchanged {
                        local.mark_clean(key, *version);
                    }
                }
                other => {
                    if let CacheEvent::Invalidate { key, .. } = other {
                        if lock(&self.holding).get(key).is_some_and(|n| *n > 0) {
                            *lock(&self.dropped_holds).entry(key.clone()).or_default() += 1;
                        }
                    }
                    if let Some((key, line)) = local.on_event(other) {
                        let _ = self.outbox.send(CacheCommand::evict(key, &self.name, line));
                    }
                    if let CacheEvent::Grant { key, token, dirty, fresh, .. } = other {
                        // A granted write of this node (an ownership request's value, or a
                        // write-through value): hold recalls until it is confirmed.
                        if (*dirty || *fresh) && lock(&self.writes_in_flight).remove(token).is_some() {
                            *lock(&self.holding).entry(key.clone()).or_default() += 1;
                        }
                        if *token != 0 {
                            // What the request was served, even if a later event in this same
                            // batch already took the line away again.
                            let line = local.peek(key).cloned().or_else(|| other.granted_line());
                            let mut served = lock(&self.served);
                            served.extend(line.map(|line| (*token, line)));
                            while served.len() > SERVED_MAX {
                                served.pop_front();
                            }
                        }
                    }
                }
            }
        }
        drop(local);
        if touched {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Writes the recalled line of `key` back (its value is final: a recalled line takes
    /// no more writes).
    fn answer_recall(&self, local: &LocalCache, key: &str) {
        let _ = self.outbox.send(CacheCommand::write_back(key, &self.name, local.peek(key), true));
    }

    fn begin_write(&self, key: &str) {
        *lock(&self.pending).entry(key.to_string()).or_default() += 1;
    }

    /// Ends a write on `key` begun with [`CacheService::begin_write`]; answers a recall that
    /// waited for it. `token` is the write's ownership request, if it made one.
    fn end_write(&self, key: &str, token: Option<u64>) {
        // A token still registered was never granted here (the request failed or timed out).
        let was_granted = token.is_some_and(|t| lock(&self.writes_in_flight).remove(&t).is_none());
        let still_held = {
            let mut holding = lock(&self.holding);
            if was_granted {
                if let Some(n) = holding.get_mut(key) {
                    *n = n.saturating_sub(1);
                }
            }
            let held = holding.get(key).is_some_and(|n| *n > 0);
            if !held {
                holding.remove(key);
            }
            held
        };
        {
            let mut pending = lock(&self.pending);
            let count = pending.entry(key.to_string()).or_default();
            *count = count.saturating_sub(1);
            if *count == 0 {
                pending.remove(key);
            }
        }
        if !still_held && lock(&self.deferred).remove(key) {
            let local = self.local();
            self.answer_recall(&local, key);
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// How often a line of `key` holding unconfirmed writes was dropped so far.
    fn dropped_holds(&self, key: &str) -> u64 {
        lock(&self.dropped_holds).get(key).copied().unwrap_or(0)
    }

    fn is_pending(&self, key: &str) -> bool {
        // A key whose evicted line's `Evict` is still on its way is treated the same: a read
        // waits for it rather than ask the directory ahead of the evicted value.
        lock(&self.pending).contains_key(key) || self.local().is_evicting(key)
    }

    /// Called when a snapshot replaced the directory: this node's lines may no longer be
    /// known to it, so they are dropped and the node joins again.
    pub fn on_snapshot_installed(&self) {
        self.live.store(false, Ordering::SeqCst);
        let capacity = self.local().capacity();
        *self.local() = LocalCache::new(capacity);
        self.needs_rejoin.store(true, Ordering::SeqCst);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The index every other member is known to have applied (or lost its lease).
    fn confirmed_index(&self) -> u64 {
        self.confirmed_index.load(Ordering::SeqCst)
    }

    /// The line of `key` if it may be served as a hit now.
    fn hit(&self, key: &str) -> Option<Line> {
        if !self.is_live() || !self.lease_valid() || lock(&self.pending).contains_key(key) {
            return None;
        }
        let confirmed = self.confirmed_index();
        let mut local = self.local();
        // The rest of `is_pending`, under the lock taken anyway.
        let usable =
            !local.is_evicting(key) && local.peek(key).is_some_and(|l| !l.recalled && l.visible(confirmed));
        if usable {
            local.read(key)
        } else {
            None
        }
    }

    /// The invalidation barrier of this node's line of `key`, if the line could be a hit
    /// but for a barrier that is not confirmed yet.
    fn unconfirmed_barrier(&self, key: &str) -> Option<u64> {
        let confirmed = self.confirmed_index();
        let local = self.local();
        local.peek(key).filter(|l| !l.recalled && !l.visible(confirmed)).map(|l| l.invalidated_at)
    }

    /// Writes `value` into this node's M or E line of `key` if it has one whose barrier
    /// is confirmed; answers whether it did.
    fn write_locally(&self, key: &str, value: &serde_json::Value) -> bool {
        let confirmed = self.confirmed_index();
        let mut local = self.local();
        if local.peek(key).is_some_and(|l| !l.visible(confirmed)) {
            return false;
        }
        local.write(key, value.clone(), now_ms()) == WriteOutcome::Local
    }

    fn usable_line(&self, key: &str, owned: bool) -> Option<Line> {
        let local = self.local();
        local.peek(key).filter(|l| !l.recalled && (!owned || l.state != Mesi::Shared)).cloned()
    }
}

fn cache_command(request: CacheCommand) -> Command {
    Command::Cache { request }
}

fn joining() -> NodeError {
    NodeError::Unavailable("the cache of this node is still joining; retry".into())
}

/// The cache as the API and the node's duties use it: this node's lines and lease, and
/// group 0 to propose through. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    /// This node's lines and lease.
    pub service: Arc<CacheService>,
    group0: Group0,
}

impl Cache {
    /// The cache of `service` over `group0`.
    pub fn new(service: Arc<CacheService>, group0: Group0) -> Self {
        Self { service, group0 }
    }

    /// Waits until the request with `token` was served, and returns the line it got.
    async fn wait_served(&self, key: &str, token: u64, deadline: Instant) -> Result<Line, NodeError> {
        let cache = &self.service;
        let mut changed = cache.changed.subscribe();
        loop {
            {
                let mut served = lock(&cache.served);
                if let Some(pos) = served.iter().position(|(t, _)| *t == token) {
                    if let Some((_, line)) = served.remove(pos) {
                        return Ok(line);
                    }
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || tokio::time::timeout(remaining, changed.changed()).await.is_err() {
                return Err(NodeError::NoQuorum(format!(
                    "the request for {key:?} was not served in time; retry"
                )));
            }
        }
    }

    async fn wait_not_pending(&self, key: &str, deadline: Instant) -> Result<(), NodeError> {
        let mut changed = self.service.changed.subscribe();
        while self.service.is_pending(key) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || tokio::time::timeout(remaining, changed.changed()).await.is_err() {
                return Err(NodeError::NoQuorum(format!("a write of {key:?} is still completing; retry")));
            }
        }
        Ok(())
    }

    /// Waits until this node's coherence lease is valid (true), or `until` passed (false).
    async fn wait_lease(&self, until: Instant) -> bool {
        let mut changed = self.service.changed.subscribe();
        while !self.service.lease_valid() {
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() || tokio::time::timeout(remaining, changed.changed()).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Reads `key`: a hit from this node's line, or a miss through the log.
    ///
    /// Whichever path finds the value, it is returned only once the line's invalidation
    /// barrier is confirmed: every other member applied the entry that invalidated the older
    /// copies, or lost its lease. Before that, a member that is behind (or cut off) could still
    /// serve the older value to a read that starts after this one ended.
    pub async fn get(&self, key: &str) -> Result<CacheRead, NodeError> {
        let cache = &self.service;
        if let Some(line) = cache.hit(key) {
            return Ok(CacheRead { line, hit: true });
        }
        if !cache.is_live() {
            return Err(joining());
        }
        let deadline = Instant::now() + self.group0.request_timeout();
        // A write of this node on the key is still waiting for its invalidations: its value
        // must not be seen before that write completes.
        self.wait_not_pending(key, deadline).await?;
        if let Some(barrier) = cache.unconfirmed_barrier(key) {
            self.confirm_barrier(barrier).await;
        }
        if let Some(line) = cache.hit(key) {
            return Ok(CacheRead { line, hit: true });
        }
        cache.local().stats.misses += 1;
        let token = new_token();
        let request = CacheCommand::GetS { key: key.into(), node: cache.name.clone(), token };
        self.group0.write(cache_command(request), None).await?;
        let line = self.wait_served(key, token, deadline).await?;
        self.confirm_barrier(line.invalidated_at).await;
        Ok(CacheRead { line, hit: false })
    }

    /// Writes `key`. Returns this node's line afterwards.
    pub async fn put(&self, key: &str, value: serde_json::Value, durable: bool) -> Result<Line, NodeError> {
        let cache = &self.service;
        if !cache.is_live() {
            return Err(joining());
        }
        let deadline = Instant::now() + self.group0.request_timeout();
        let write_through = durable || cache.policy == WritePolicy::WriteThrough;
        // A local write (to an M or E line) needs the line's barrier confirmed: until every
        // other member applied the entry that took their copies, one of them may still serve
        // an older value after this write was acknowledged.
        if !write_through && cache.lease_valid() && !cache.is_pending(key) && cache.write_locally(key, &value)
        {
            return cache
                .usable_line(key, true)
                .ok_or_else(|| NodeError::Unavailable("line vanished".into()));
        }
        // Through the log: the write is pending (hidden on this node) until it completes.
        cache.begin_write(key);
        let token = new_token();
        lock(&cache.writes_in_flight).insert(token, key.to_string());
        let result = if write_through {
            self.put_through(key, value, token, deadline).await
        } else {
            self.put_with_ownership(key, value, token, deadline).await
        };
        cache.end_write(key, Some(token));
        result
    }

    /// A write-through write: stored by the log, then every other copy is confirmed gone.
    async fn put_through(
        &self,
        key: &str,
        value: serde_json::Value,
        token: u64,
        deadline: Instant,
    ) -> Result<Line, NodeError> {
        let request = CacheCommand::Put { key: key.into(), node: self.service.name.clone(), value, token };
        let (reply, index) = self.group0.write_at(cache_command(request), None).await?;
        self.group0.wait_applied(index, deadline).await?;
        let Response::Cache { reply: CacheReply::Stored { version, .. } } = reply else {
            return Err(NodeError::Unavailable(format!("unexpected reply {reply:?}")));
        };
        self.confirm_barrier(index).await;
        // The writer was granted the stored value as an E line.
        Ok(Line {
            state: Mesi::Exclusive,
            value: None,
            version,
            dirty_since_ms: None,
            recalled: false,
            invalidated_at: index,
            granted_at: index,
        })
    }

    /// A write-back write that needs ownership: the value travels with the request and is
    /// written when the request is served, so a request queued behind a recall cannot lose the
    /// line before writing.
    async fn put_with_ownership(
        &self,
        key: &str,
        value: serde_json::Value,
        token: u64,
        deadline: Instant,
    ) -> Result<Line, NodeError> {
        let cache = &self.service;
        let dropped_before = cache.dropped_holds(key);
        let request =
            CacheCommand::GetM { key: key.into(), node: cache.name.clone(), token, value: Some(value) };
        self.group0.write(cache_command(request), None).await?;
        let line = self.wait_served(key, token, deadline).await?;
        // Every other copy must be gone before the write counts: wait for every member to have
        // applied what this node has applied now (which includes the grant).
        let applied = self.group0.applied_index();
        self.confirm_barrier(applied).await;
        // The granted value lives only in this node's line until it is written back. If the
        // line was dropped meanwhile (the leader revoked this node's lines), the write may be
        // gone: it must not be acknowledged.
        // Without a valid lease the leader may already have revoked the line (a revocation this
        // node has not applied yet). A lease that lapsed only for a moment (a slow renewal on a
        // busy node) comes back once a renewal's read index is applied, which includes any such
        // revocation: wait for it, then look again.
        let lease_back = self.wait_lease(deadline.max(Instant::now() + cache.lease)).await;
        if cache.dropped_holds(key) != dropped_before || !lease_back {
            return Err(NodeError::Unavailable(
                "this node's cache lines were revoked before the write was confirmed; it may be lost, retry"
                    .into(),
            ));
        }
        Ok(line)
    }

    /// Removes `key` everywhere.
    pub async fn delete(&self, key: &str) -> Result<(), NodeError> {
        if !self.service.is_live() {
            return Err(joining());
        }
        let deadline = Instant::now() + self.group0.request_timeout();
        let (_, index) =
            self.group0.write_at(cache_command(CacheCommand::Delete { key: key.into() }), None).await?;
        // This node may itself still hold the old line: it answers only once it dropped it.
        self.group0.wait_applied(index, deadline).await?;
        self.confirm_barrier(index).await;
        Ok(())
    }

    /// Waits until every other member applied `index`, or until its lease (which would require
    /// that apply) must have run out, and records `index` as a confirmed barrier.
    async fn confirm_barrier(&self, index: u64) {
        if index <= self.service.confirmed_index() {
            return;
        }
        let lease_over = Instant::now() + self.service.lease.mul_f64(1.5);
        for other in self.group0.other_members().iter().filter(|n| **n != self.service.name) {
            let remaining = lease_over.saturating_duration_since(Instant::now());
            if !self.group0.peer_applied(other, index, remaining).await {
                tokio::time::sleep_until(lease_over.into()).await;
            }
        }
        self.service.confirmed_index.fetch_max(index, Ordering::SeqCst);
    }

    /// Runs the cache's background work for as long as the node runs: joining, proposing
    /// follow-ups, renewing the lease, writing dirty lines back, and (on the leader) revoking
    /// holders whose leases lapsed.
    pub async fn run(self, mut outbox: mpsc::UnboundedReceiver<CacheCommand>) {
        self.join().await;
        let proposer = self.clone();
        tokio::spawn(async move {
            while let Some(request) = outbox.recv().await {
                proposer.propose_until_done(request).await;
            }
        });
        let tick =
            (self.service.lease / 4).min(self.service.writeback_max / 4).max(Duration::from_millis(10));
        let mut last_renewal = Instant::now() - self.service.lease;
        let mut office = Office::default();
        loop {
            if self.service.needs_rejoin.swap(false, Ordering::SeqCst) {
                self.join().await;
            }
            if last_renewal.elapsed() >= self.service.lease / 4 {
                last_renewal = Instant::now();
                self.renew_lease().await;
            }
            self.write_back_due();
            self.revoke_lapsed(&mut office).await;
            tokio::time::sleep(tick).await;
        }
    }

    /// Proposes a follow-up (a write-back, an eviction) until the log takes it: dropping one
    /// would leave a recall unanswered or lose an evicted dirty value.
    async fn propose_until_done(&self, request: CacheCommand) {
        let mut pause = Duration::from_millis(50);
        for attempt in 0u32.. {
            match self.group0.write(cache_command(request.clone()), None).await {
                Ok(_) => return,
                Err(e) => {
                    if attempt.is_multiple_of(10) {
                        tracing::warn!(error = %e, "cache follow-up not proposed yet; retrying");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn join(&self) {
        let me = self.service.name.clone();
        loop {
            let revoke = revocation(&me);
            let deadline = Instant::now() + self.group0.request_timeout();
            match self.group0.write_at(revoke, None).await {
                // Live only once this node itself applied its revocation: events before it
                // concern lines this node no longer has.
                Ok((_, index)) if self.group0.wait_applied(index, deadline).await.is_ok() => break,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cache join: retrying"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.service.live.store(true, Ordering::SeqCst);
        self.service.changed.send_modify(|v| *v = v.wrapping_add(1));
        tracing::info!("cache joined");
    }

    async fn renew_lease(&self) {
        let started = Instant::now();
        let deadline = started + self.service.lease;
        let index = match self.group0.leader(deadline).await {
            Ok(Leader::Local) => {
                let outcome = self.group0.read_index_local(deadline).await;
                self.record_renewal(&self.service.name);
                outcome
            }
            Ok(Leader::Remote(leader)) => {
                self.group0.peers().renew_cache_lease(&leader, &self.service.name, deadline).await
            }
            Err(_) => return,
        };
        if let ReadIndex::Index(index) = index {
            if self.group0.wait_applied(index, deadline).await.is_ok() {
                *lock(&self.service.lease_until) = Some(started + self.service.lease);
                self.service.changed.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Records a lease renewal by `member` (on the leader).
    pub fn record_renewal(&self, member: &str) {
        lock(&self.service.renewals).insert(member.to_string(), Instant::now());
    }

    fn write_back_due(&self) {
        let cache = &self.service;
        let now = now_ms();
        let max_ms = cache.writeback_max.as_millis() as u64;
        let due: Vec<(String, Line)> = cache
            .local()
            .lines()
            .filter(|(_, l)| !l.recalled && l.dirty_since_ms.is_some_and(|t| now.saturating_sub(t) >= max_ms))
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        // `is_pending` takes the lines' lock itself: asked only once it is released.
        for (key, line) in due.into_iter().filter(|(k, _)| !cache.is_pending(k)) {
            lock(&cache.flushing).insert(key.clone(), line.value.clone());
            let _ = cache.outbox.send(CacheCommand::write_back(&key, &cache.name, Some(&line), false));
        }
    }

    async fn revoke_lapsed(&self, office: &mut Office) {
        // A leader that did not run for a while (paused, starved) heard no renewals meanwhile
        // through no fault of the holders: it starts its grace period again, as a new leader.
        let stalled =
            office.last_look.replace(Instant::now()).is_some_and(|t| t.elapsed() > self.service.lease);
        if stalled {
            office.since = None;
        }
        let leader_since = &mut office.since;
        let (is_leader, term) = {
            let m = self.group0.raft().metrics();
            let m = m.borrow();
            (m.state == openraft::ServerState::Leader, m.current_term)
        };
        if !is_leader {
            *leader_since = None;
            return;
        }
        let since = match leader_since {
            Some((t, at)) if *t == term => *at,
            _ => {
                *leader_since = Some((term, Instant::now()));
                return;
            }
        };
        // A new leader has no renewal history: wait until any lease granted before it took
        // office must have run out.
        let grace = self.service.lease.mul_f64(1.5);
        if since.elapsed() < grace {
            return;
        }
        let holders: Vec<String> = {
            let applied = self.group0.group().sm.read();
            applied
                .state
                .cache
                .entries()
                .values()
                .flat_map(|e| e.owner.iter().chain(e.sharers.iter()).cloned().collect::<Vec<_>>())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        for holder in holders.into_iter().filter(|h| *h != self.service.name) {
            let lapsed = lock(&self.service.renewals).get(&holder).is_none_or(|t| t.elapsed() > grace);
            if lapsed {
                tracing::warn!(node = %holder, "revoking the cache lines of a node whose lease lapsed");
                let _ = self.group0.write_here(revocation(&holder)).await;
                self.record_renewal(&holder);
            }
        }
    }
}

fn new_token() -> u64 {
    rand::random::<u64>() | 1
}

/// A revocation of `holder`'s lines with a fresh token, logged (debug level, target
/// `sinkron_revocations`) with the time it is proposed: the fault-injection harness needs
/// to know when the revocation it sees applied may have taken effect.
fn revocation(holder: &str) -> Command {
    let token = new_token();
    tracing::debug!(
        target: "sinkron_revocations",
        "cache revocation proposed: node={holder} token={token} at_us={}",
        crate::clock::now_us()
    );
    cache_command(CacheCommand::Revoke { node: holder.to_string(), token })
}

/// What the revoking leader remembers between looks.
#[derive(Default)]
struct Office {
    /// The term it leads in and since when it counts renewals.
    since: Option<(u64, Instant)>,
    /// When it last looked.
    last_look: Option<Instant>,
}

/// The name of a MESI state as the API shows it.
pub fn state_name(state: Option<Mesi>) -> &'static str {
    match state {
        Some(Mesi::Modified) => "M",
        Some(Mesi::Exclusive) => "E",
        Some(Mesi::Shared) => "S",
        None => "I",
    }
}
