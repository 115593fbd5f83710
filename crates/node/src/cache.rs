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
//!
//! Every decision above is made by core's pure `CacheAgent` (the node's lines and leases)
//! and `Revoker` (the leader's lease-lapse rule); this file only feeds them events and the
//! clock and carries out the commands they return.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sinkron_core::cache::{
    CacheAgent, CacheCommand, CacheEvent, CacheReply, Line, Mesi, Revoker, WriteTicket,
};
use sinkron_core::{Command, Response};
use tokio::sync::{mpsc, watch};

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

/// This node's cache: the pure [`CacheAgent`] behind one lock, the leader's [`Revoker`],
/// the clock they read, and the channels its decisions leave by.
pub struct CacheService {
    name: String,
    agent: Mutex<CacheAgent>,
    /// On the leader: who renewed when, and whose lease lapsed.
    revoker: Mutex<Revoker>,
    /// The agent's clock counts milliseconds from here (monotonic).
    epoch: Instant,
    /// Length of a coherence lease.
    pub lease: Duration,
    /// Longest a dirty line stays unwritten.
    pub writeback_max: Duration,
    /// The write policy.
    pub policy: WritePolicy,
    /// Follow-up proposals from applied events (write-backs for recalls, evictions).
    outbox: mpsc::UnboundedSender<CacheCommand>,
    /// Bumped whenever this node's lines or lease changed.
    changed: watch::Sender<u64>,
}

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
        let lease_ms = lease.as_millis() as u64;
        let service = Self {
            name: name.to_string(),
            agent: Mutex::new(CacheAgent::new(name, capacity, lease_ms)),
            revoker: Mutex::new(Revoker::new(lease.mul_f64(1.5).as_millis() as u64, lease_ms)),
            epoch: Instant::now(),
            lease,
            writeback_max,
            policy,
            outbox,
            changed: watch::Sender::new(0),
        };
        (Arc::new(service), rx)
    }

    /// This node's agent: its lines, counters and lease.
    pub fn agent(&self) -> MutexGuard<'_, CacheAgent> {
        lock(&self.agent)
    }

    /// The agent's clock now.
    fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether the cache serves requests (its self-revocation applied).
    pub fn is_live(&self) -> bool {
        self.agent().is_live()
    }

    /// Whether the coherence lease is valid now.
    pub fn lease_valid(&self) -> bool {
        self.agent().lease_valid(self.now_ms())
    }

    /// Performs the events of one applied batch that concern this node.
    pub fn on_applied(&self, events: Vec<CacheEvent>) {
        let (commands, touched) = self.agent().on_applied(&events);
        self.propose(commands);
        if touched {
            self.bump();
        }
    }

    /// Called when a snapshot replaced the directory: this node's lines may no longer be
    /// known to it, so they are dropped and the node joins again.
    pub fn on_snapshot_installed(&self) {
        self.agent().snapshot_installed();
        self.bump();
    }

    fn propose(&self, commands: impl IntoIterator<Item = CacheCommand>) {
        for command in commands {
            let _ = self.outbox.send(command);
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn end_write(&self, ticket: WriteTicket) {
        let answer = self.agent().end_write(ticket);
        self.propose(answer);
        self.bump();
    }
}

fn cache_command(request: CacheCommand) -> Command {
    Command::Cache { request, fence: None }
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
            if let Some(line) = cache.agent().take_served(token) {
                return Ok(line);
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
        while self.service.agent().is_pending(key) {
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
        if let Some(line) = cache.agent().hit(key, cache.now_ms()) {
            return Ok(CacheRead { line, hit: true });
        }
        if !cache.is_live() {
            return Err(joining());
        }
        let deadline = Instant::now() + self.group0.request_timeout();
        // A write of this node on the key is still waiting for its invalidations: its value
        // must not be seen before that write completes.
        self.wait_not_pending(key, deadline).await?;
        let barrier = cache.agent().unconfirmed_barrier(key);
        if let Some(barrier) = barrier {
            self.confirm_barrier(barrier).await;
        }
        {
            let mut agent = cache.agent();
            if let Some(line) = agent.hit(key, cache.now_ms()) {
                return Ok(CacheRead { line, hit: true });
            }
            agent.count_miss();
        }
        let token = new_token();
        let request = CacheCommand::GetS { key: key.into(), node: cache.name.clone(), token };
        self.group0.write(cache_command(request), None).await?;
        let line = self.wait_served(key, token, deadline).await?;
        self.confirm_barrier(line.invalidated_at).await;
        Ok(CacheRead { line, hit: false })
    }

    /// Writes `key`. Returns this node's line afterwards.
    ///
    /// A `fence` makes the write durable and conditional: it is stored only while the
    /// fence's lock is held with that fence (checked in the log), else `stale_fence`.
    pub async fn put(
        &self,
        key: &str,
        value: serde_json::Value,
        durable: bool,
        fence: Option<sinkron_core::Fence>,
    ) -> Result<Line, NodeError> {
        let cache = &self.service;
        if !cache.is_live() {
            return Err(joining());
        }
        let deadline = Instant::now() + self.group0.request_timeout();
        let write_through = durable || fence.is_some() || cache.policy == WritePolicy::WriteThrough;
        // A local write (to an M or E line) needs the line's barrier confirmed: until every
        // other member applied the entry that took their copies, one of them may still serve
        // an older value after this write was acknowledged.
        if !write_through {
            if let Some(line) = cache.agent().write_locally(key, &value, cache.now_ms()) {
                return Ok(line);
            }
        }
        // Through the log: the write is pending (hidden on this node) until it completes.
        let ticket = cache.agent().begin_write(key, new_token());
        let result = if write_through {
            self.put_through(key, value, ticket.token(), fence, deadline).await
        } else {
            self.put_with_ownership(key, value, &ticket, deadline).await
        };
        cache.end_write(ticket);
        result
    }

    /// A write-through write: stored by the log, then every other copy is confirmed gone.
    async fn put_through(
        &self,
        key: &str,
        value: serde_json::Value,
        token: u64,
        fence: Option<sinkron_core::Fence>,
        deadline: Instant,
    ) -> Result<Line, NodeError> {
        let request = CacheCommand::Put { key: key.into(), node: self.service.name.clone(), value, token };
        let (reply, index) = self.group0.write_at(Command::Cache { request, fence }, None).await?;
        if let Response::KvRefused { refusal } = reply {
            return Err(NodeError::refused(key, refusal));
        }
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
        ticket: &WriteTicket,
        deadline: Instant,
    ) -> Result<Line, NodeError> {
        let cache = &self.service;
        let token = ticket.token();
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
        if !cache.agent().write_kept(ticket) || !lease_back {
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
        if index <= self.service.agent().confirmed_index() {
            return;
        }
        let lease_over = Instant::now() + self.service.lease.mul_f64(1.5);
        for other in self.group0.other_members().iter().filter(|n| **n != self.service.name) {
            let remaining = lease_over.saturating_duration_since(Instant::now());
            if !self.group0.peer_applied(other, index, remaining).await {
                tokio::time::sleep_until(lease_over.into()).await;
            }
        }
        self.service.agent().confirm(index);
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
        loop {
            let rejoin = self.service.agent().take_rejoin();
            if rejoin {
                self.join().await;
            }
            if last_renewal.elapsed() >= self.service.lease / 4 {
                last_renewal = Instant::now();
                self.renew_lease().await;
            }
            self.write_back_due();
            self.revoke_lapsed().await;
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
        self.service.agent().joined();
        self.service.bump();
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
                let started_ms = self.service.ms(started);
                self.service.agent().renewed(started_ms);
                self.service.bump();
            }
        }
    }

    /// Records a lease renewal by `member` (on the leader).
    pub fn record_renewal(&self, member: &str) {
        let now = self.service.now_ms();
        lock(&self.service.revoker).record(member, now);
    }

    fn write_back_due(&self) {
        let cache = &self.service;
        let max_ms = cache.writeback_max.as_millis() as u64;
        let due = cache.agent().due_write_backs(cache.now_ms(), max_ms);
        cache.propose(due);
    }

    async fn revoke_lapsed(&self) {
        let leading = {
            let m = self.group0.raft().metrics();
            let m = m.borrow();
            (m.state == openraft::ServerState::Leader).then_some(m.current_term)
        };
        let holders: Vec<String> = match leading {
            None => Vec::new(),
            Some(_) => {
                let applied = self.group0.group().sm.read();
                let entries = applied.state.cache.entries();
                entries.values().flat_map(|e| e.owner.iter().chain(e.sharers.iter()).cloned()).collect()
            }
        };
        let now = self.service.now_ms();
        let lapsed = lock(&self.service.revoker).lapsed(now, leading, &self.service.name, holders);
        for holder in lapsed {
            tracing::warn!(node = %holder, "revoking the cache lines of a node whose lease lapsed");
            let _ = self.group0.write_here(revocation(&holder)).await;
            // Its grace starts again once the revocation is through.
            self.record_renewal(&holder);
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

/// The name of a MESI state as the API shows it.
pub fn state_name(state: Option<Mesi>) -> &'static str {
    match state {
        Some(Mesi::Modified) => "M",
        Some(Mesi::Exclusive) => "E",
        Some(Mesi::Shared) => "S",
        None => "I",
    }
}
