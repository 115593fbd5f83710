//! A deterministic model of the whole cache protocol under concurrency: three nodes that
//! apply group 0's log each at its own pace, coherence leases, a node cut off from the
//! others, and several clients per node whose reads and writes interleave step by step.
//! Every history a schedule produces is checked for linearizability per key.
//!
//! The node side is the real [`CacheAgent`] of each node, the one the node runs (hits only
//! with a valid lease, a write hidden on its node until its invalidations are confirmed,
//! recalls of a held line deferred, a dropped unconfirmed write answered as unknown), and
//! the leader's real [`Revoker`]; the model plays the node's I/O shell around them (the
//! writer's wait for every other member or 1.5 leases, the renewals, the proposals). The
//! directory and the lines are the real ones too. A schedule is a seed: the same seed
//! replays the same interleaving.
//!
//! Faults: a node cut off for a drawn time (from a tick to two grace periods), a node that
//! stays connected but applies nothing for a while (a stall), and renewals in the node's
//! three steps (the node asks, the leader reads the index, the leader records), so the
//! leader can decide to revoke a node whose renewal it is still serving. Each schedule
//! draws its own rates for every action (swarm testing), so some have a node that applies
//! a tenth as often as the others, some no cuts, some a slow leader.
//!
//! Its reach is limited: planted bugs that need a long chain of rare steps are found in
//! about one schedule in a thousand, and the revocation of a sharer with a renewal in
//! flight (found by the chaos harness) not at all in 100,000; that one has its own
//! step-by-step replay below.
//!
//! Time is two clocks: `now` (lease ticks, what leases and waits count) and `step` (one per
//! action, what the history's real-time order uses, so an operation that ends in one action
//! precedes one that starts in a later action).
//!
//! Write-back writes that only lived in a revoked node's dirty line are lost by design
//! (docs/cache.md). The model records such a loss exactly: a `Revoke` of the key's owner
//! acts as a write of the stored value at the moment it commits. With that, histories under
//! write-back must be linearizable too.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};

use super::*;
use crate::linearizability::{check_register, Event, RegOp, Verdict};

const NODES: usize = 3;
const CLIENTS: usize = 6;
const KEYS: [&str; 2] = ["a", "b"];
/// A coherence lease, in ticks.
const LEASE: u64 = 20;
/// How long a waiter waits for a member that does not answer (1.5 leases).
const GRACE: u64 = 30;
/// A client request's deadline, in ticks.
const TIMEOUT: u64 = 60;

/// splitmix64: a schedule is a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Which write operations clients use.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Policy {
    /// Durable writes (`Put`) and deletes only.
    WriteThrough,
    /// Also write-back writes (local on M/E, else `GetM` with the value).
    WriteBack,
}

#[derive(Debug, Clone)]
enum Op {
    Read,
    Put(i64),
    Write(i64),
    Delete,
}

/// Where a client's operation is.
#[derive(Debug, Clone)]
enum Stage {
    /// Start (or restart after a confirmation) of a read.
    ReadBegin,
    /// A read waiting for this node's own write on the key to complete.
    ReadNotPending,
    /// Waiting for the grant of a request.
    Granted(u64),
    /// Waiting for the commit of a proposal (its token).
    Committed(u64),
    /// Waiting until this node applied `index`.
    Applied(u64),
    /// An ownership write whose node had no valid lease when its confirmations were in:
    /// waiting for the lease to be renewed (which applies any revocation committed before).
    Lease,
    /// Waiting until every other member applied `index`, or `GRACE` after `since`. Then
    /// `then` says what follows.
    Confirm { index: u64, since: u64, then: AfterConfirm },
}

#[derive(Debug, Clone)]
enum AfterConfirm {
    /// Read again from the start (the barrier of a present line is now confirmed).
    ReadAgain,
    /// Answer the read with this value.
    Answer(Option<Value>),
    /// A write completes (an ownership write only if its line survived).
    WriteDone,
}

#[derive(Debug, Clone)]
struct Running {
    key: &'static str,
    op: Op,
    start_step: u64,
    deadline: u64,
    stage: Stage,
    /// A write through the log, from the agent's `begin_write` to its `end_write`.
    ticket: Option<WriteTicket>,
}

/// One node: the real agent, and what the model keeps for the node's I/O shell.
struct NodeModel {
    agent: CacheAgent,
    /// Entries applied (entry `i` has log index `i + 1`).
    applied: usize,
    renewing: Option<Renewal>,
    /// When this node last asked for a renewal.
    asked: u64,
    outbox: VecDeque<(u64, CacheCommand)>,
}

/// A lease renewal on its way, in the node's three steps: the node notes `start` and asks;
/// the leader reads the index the node must apply (`index`), confirms its leadership and
/// only then records the renewal (`recorded`); the lease counts from `start` once the node
/// applied `index`. A leader can decide to revoke the node between its read and its record.
#[derive(Debug, Clone, Copy)]
struct Renewal {
    start: u64,
    index: Option<usize>,
    recorded: bool,
}

struct Model {
    /// The deleter waits until it applied its own delete before answering.
    delete_waits_for_itself: bool,
    policy: Policy,
    now: u64,
    step: u64,
    dir: Directory,
    log: Vec<Vec<CacheEvent>>,
    commits: BTreeMap<u64, u64>,
    nodes: Vec<NodeModel>,
    /// The leader's record of renewals and its lapse rule.
    revoker: Revoker,
    cut: Option<usize>,
    /// A node that is connected (it renews and proposes) but receives no log entries for a
    /// while, as behind a slow or one-way link: it applies nothing.
    stalled: Option<usize>,
    clients: Vec<Option<Running>>,
    next_token: u64,
    next_value: i64,
    history: BTreeMap<&'static str, Vec<Event>>,
    /// When the cut heals (in ticks).
    cut_until: u64,
    /// Nodes the leader decided to revoke; the revocations commit at a later step, so a
    /// renewal can be answered between the decision and the commit (as on a real leader,
    /// where the proposal takes a round trip to commit).
    revoking: Vec<usize>,
    /// Revocations of owners counted as writes, not yet placed: each takes effect between
    /// its commit and the moment the revoked node applied it or its lease (renewed before
    /// the commit) ran out.
    reverts: Vec<Revert>,
    /// What happened, one line per commit, apply and answer (printed for a failing seed).
    trace: Vec<String>,
}

/// A revocation of an owner counted as a possible restore of the stored value, still open.
struct Revert {
    key: &'static str,
    op: RegOp,
    node: usize,
    index: usize,
    start_step: u64,
    committed_at: u64,
}

fn name(n: usize) -> String {
    format!("n{}", n + 1)
}

fn as_reg(value: &Option<Value>) -> Option<i64> {
    value.as_ref().and_then(Value::as_i64)
}

impl Model {
    fn new(policy: Policy, capacity: usize, barrier: bool) -> Self {
        // `barrier` false plants the bug the barrier fixes: values are returned before the
        // members that may still serve older ones applied their invalidation.
        let nodes = (0..NODES)
            .map(|n| {
                let mut agent = CacheAgent::new(&name(n), capacity, LEASE);
                agent.plant_no_barrier = !barrier;
                agent.joined();
                agent.renewed(0);
                NodeModel { agent, applied: 0, renewing: None, asked: 0, outbox: VecDeque::new() }
            })
            .collect();
        // The model's leader never pauses: its looks are scheduled actions. It takes office
        // at time 0.
        let mut revoker = Revoker::new(GRACE, u64::MAX);
        revoker.lapsed(0, Some(1), "", Vec::new());
        Self {
            revoker,
            delete_waits_for_itself: true,
            policy,
            now: 0,
            step: 0,
            dir: Directory::default(),
            log: Vec::new(),
            commits: BTreeMap::new(),
            nodes,
            cut: None,
            stalled: None,
            cut_until: 0,
            revoking: Vec::new(),
            reverts: Vec::new(),
            clients: vec![None; CLIENTS],
            next_token: 1,
            next_value: 1,
            history: KEYS.iter().map(|k| (*k, Vec::new())).collect(),
            trace: Vec::new(),
        }
    }

    fn connected(&self, n: usize) -> bool {
        self.cut != Some(n)
    }

    fn lease_valid(&self, n: usize) -> bool {
        self.nodes[n].agent.lease_valid(self.now)
    }

    /// Commits `command` at the next log index (the leader is always in the majority).
    fn commit(&mut self, token: u64, command: &CacheCommand) {
        let index = self.log.len() as u64 + 1;
        let (reply, events) = self.dir.apply(index, command);
        self.trace.push(format!(
            "step {} now {} commit #{index} {command:?} -> {reply:?} {events:?}",
            self.step, self.now
        ));
        if let (CacheCommand::Revoke { node, .. }, CacheReply::Revoked { owned }) = (command, &reply) {
            // What the revoked owner had not written back is lost: the stored value may
            // be current again. For every key it owned, as the chaos harness counts
            // them: a restore of the stored value that happens, if the owner had a value
            // not written back, between the commit and the moment the owner stopped
            // serving its line.
            let n = (0..NODES).find(|n| name(*n) == *node).expect("a known node");
            for (key, stored) in owned {
                let key = KEYS.iter().copied().find(|k| k == key).expect("a known key");
                let op = RegOp::Restore(as_reg(stored));
                let (index, start_step, committed_at) = (index as usize, self.step, self.now);
                self.reverts.push(Revert { key, op, node: n, index, start_step, committed_at });
            }
        }
        self.log.push(events);
        if token != 0 {
            self.commits.insert(token, index);
        }
    }

    /// Places the reverts whose window closed: the revoked node applied the revocation,
    /// or every lease it renewed before the commit ran out; or all of them, at the end.
    fn close_reverts(&mut self, all: bool) {
        let (now, step) = (self.now, self.step);
        let nodes = &self.nodes;
        let (closed, open): (Vec<Revert>, Vec<Revert>) = std::mem::take(&mut self.reverts)
            .into_iter()
            .partition(|r| all || nodes[r.node].applied >= r.index || now >= r.committed_at + LEASE);
        self.reverts = open;
        for r in closed {
            self.record(r.key, r.start_step, Some(step), r.op);
        }
    }

    fn record(&mut self, key: &'static str, start: u64, end: Option<u64>, op: RegOp) {
        self.history.get_mut(key).expect("known key").push(Event { start, end, op });
    }

    /// Node `n` applies its next entry.
    fn apply(&mut self, n: usize) {
        let Some(events) = self.log.get(self.nodes[n].applied).cloned() else { return };
        self.nodes[n].applied += 1;
        self.trace.push(format!(
            "step {} now {} n{} applies #{}",
            self.step,
            self.now,
            n + 1,
            self.nodes[n].applied
        ));
        let node = &mut self.nodes[n];
        let (commands, _) = node.agent.on_applied(&events);
        node.outbox.extend(commands.into_iter().map(|c| (0, c)));
    }

    fn hit(&mut self, n: usize, key: &str) -> Option<Line> {
        let now = self.now;
        self.nodes[n].agent.hit(key, now)
    }

    fn is_pending(&self, n: usize, key: &str) -> bool {
        self.nodes[n].agent.is_pending(key)
    }

    fn others_applied(&self, n: usize, index: u64) -> bool {
        (0..NODES).filter(|o| *o != n).all(|o| self.nodes[o].applied as u64 >= index)
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn invoke(&mut self, c: usize, rng: &mut Rng) {
        if self.clients[c].is_some() {
            return;
        }
        let key = KEYS[rng.below(KEYS.len())];
        let value = self.next_value;
        let op = match (self.policy, rng.below(10)) {
            (_, 0..=5) => Op::Read,
            (_, 6) => Op::Delete,
            (Policy::WriteBack, 7 | 8) => Op::Write(value),
            _ => Op::Put(value),
        };
        if matches!(op, Op::Put(_) | Op::Write(_)) {
            self.next_value += 1;
        }
        self.start(c, key, op);
    }

    /// Client `c` invokes `op` on `key` now.
    fn start(&mut self, c: usize, key: &'static str, op: Op) {
        self.step += 1;
        let running = Running {
            key,
            op,
            start_step: self.step,
            deadline: self.now + TIMEOUT,
            stage: Stage::ReadBegin,
            ticket: None,
        };
        self.clients[c] = Some(running);
        self.begin(c);
    }

    /// The first stage of a newly invoked operation.
    fn begin(&mut self, c: usize) {
        let n = c % NODES;
        let Some(mut run) = self.clients[c].take() else { return };
        let key = run.key;
        match run.op.clone() {
            Op::Read => run.stage = Stage::ReadBegin,
            Op::Write(v) => {
                let now = self.now;
                if self.nodes[n].agent.write_locally(key, &json!(v), now).is_some() {
                    self.record(key, run.start_step, Some(self.step), RegOp::Write(v));
                    return;
                }
                let token = self.start_write(n, &mut run);
                let command =
                    CacheCommand::GetM { key: key.into(), node: name(n), token, value: Some(json!(v)) };
                self.nodes[n].outbox.push_back((token, command));
                run.stage = Stage::Granted(token);
            }
            Op::Put(v) => {
                let token = self.start_write(n, &mut run);
                let command = CacheCommand::Put { key: key.into(), node: name(n), value: json!(v), token };
                self.nodes[n].outbox.push_back((token, command));
                run.stage = Stage::Committed(token);
            }
            Op::Delete => {
                let token = self.token();
                self.nodes[n].outbox.push_back((token, CacheCommand::Delete { key: key.into() }));
                run.stage = Stage::Committed(token);
            }
        }
        self.clients[c] = Some(run);
    }

    fn start_write(&mut self, n: usize, run: &mut Running) -> u64 {
        let token = self.token();
        run.ticket = Some(self.nodes[n].agent.begin_write(run.key, token));
        token
    }

    /// Ends a write's bookkeeping on its node (the node's `end_write`).
    fn end_write(&mut self, n: usize, run: &mut Running) {
        if let Some(ticket) = run.ticket.take() {
            let node = &mut self.nodes[n];
            node.outbox.extend(node.agent.end_write(ticket).map(|c| (0, c)));
        }
    }

    /// Advances client `c` by one stage if it can.
    fn advance(&mut self, c: usize) {
        let n = c % NODES;
        let Some(mut run) = self.clients[c].take() else { return };
        let key = run.key;
        let timed_out = self.now > run.deadline;
        let outcome: Option<Option<RegOp>> = match run.stage.clone() {
            Stage::ReadBegin => {
                if let Some(line) = self.hit(n, key) {
                    Some(Some(RegOp::Read(as_reg(&line.value))))
                } else {
                    run.stage = Stage::ReadNotPending;
                    None
                }
            }
            Stage::ReadNotPending if self.is_pending(n, key) => timed_out.then_some(None),
            Stage::ReadNotPending => {
                let unconfirmed = self.nodes[n].agent.unconfirmed_barrier(key);
                if let Some(index) = unconfirmed {
                    run.stage = Stage::Confirm { index, since: self.now, then: AfterConfirm::ReadAgain };
                    None
                } else if let Some(line) = self.hit(n, key) {
                    Some(Some(RegOp::Read(as_reg(&line.value))))
                } else {
                    let token = self.token();
                    let command = CacheCommand::GetS { key: key.into(), node: name(n), token };
                    self.nodes[n].outbox.push_back((token, command));
                    run.stage = Stage::Granted(token);
                    None
                }
            }
            Stage::Granted(token) => match self.nodes[n].agent.take_served(token) {
                Some(line) if matches!(run.op, Op::Read) => {
                    if !self.nodes[n].agent.visible(&line) {
                        let then = AfterConfirm::Answer(line.value.clone());
                        run.stage = Stage::Confirm { index: line.invalidated_at, since: self.now, then };
                        None
                    } else {
                        Some(Some(RegOp::Read(as_reg(&line.value))))
                    }
                }
                Some(_) => {
                    let index = self.nodes[n].applied as u64;
                    let then = AfterConfirm::WriteDone;
                    run.stage = Stage::Confirm { index, since: self.now, then };
                    None
                }
                None => timed_out.then_some(None),
            },
            Stage::Committed(token) => match self.commits.get(&token).copied() {
                Some(index) if matches!(run.op, Op::Delete) && !self.delete_waits_for_itself => {
                    let then = AfterConfirm::WriteDone;
                    run.stage = Stage::Confirm { index, since: self.now, then };
                    None
                }
                Some(index) => {
                    run.stage = Stage::Applied(index);
                    None
                }
                None => timed_out.then_some(None),
            },
            Stage::Applied(index) if self.nodes[n].applied as u64 >= index => {
                let then = AfterConfirm::WriteDone;
                run.stage = Stage::Confirm { index, since: self.now, then };
                None
            }
            Stage::Applied(_) => timed_out.then_some(None),
            Stage::Lease if self.lease_valid(n) => Some(self.write_outcome(n, &run)),
            Stage::Lease => timed_out.then_some(None),
            Stage::Confirm { index, since, then } => {
                let done = self.others_applied(n, index) || self.now >= since + GRACE;
                if !done {
                    None
                } else {
                    self.nodes[n].agent.confirm(index);
                    match then {
                        AfterConfirm::ReadAgain => {
                            run.stage = Stage::ReadBegin;
                            None
                        }
                        AfterConfirm::Answer(value) => Some(Some(RegOp::Read(as_reg(&value)))),
                        // An ownership write (the only `Write` that reaches here) lives only
                        // in this node's line. Without a valid lease the leader may already
                        // have revoked it: wait for the lease first.
                        AfterConfirm::WriteDone if matches!(run.op, Op::Write(_)) && !self.lease_valid(n) => {
                            run.stage = Stage::Lease;
                            None
                        }
                        AfterConfirm::WriteDone => Some(self.write_outcome(n, &run)),
                    }
                }
            }
        };
        match outcome {
            None => self.clients[c] = Some(run),
            Some(result) => self.finish(n, run, result),
        }
    }

    /// A write that waited out its confirmations: an ownership write whose line was dropped
    /// meanwhile may be lost (unknown), anything else completed.
    fn write_outcome(&self, n: usize, run: &Running) -> Option<RegOp> {
        let agent = &self.nodes[n].agent;
        let lost =
            matches!(run.op, Op::Write(_)) && run.ticket.as_ref().is_some_and(|t| !agent.write_kept(t));
        (!lost).then(|| written(&run.op))
    }

    /// Ends an operation: `Some(op)` completed, `None` failed (outcome unknown).
    fn finish(&mut self, n: usize, mut run: Running, result: Option<RegOp>) {
        self.trace.push(format!(
            "step {} now {} n{} answers {:?} {}: {result:?}",
            self.step,
            self.now,
            n + 1,
            run.op,
            run.key
        ));
        self.end_write(n, &mut run);
        match result {
            Some(op) => self.record(run.key, run.start_step, Some(self.step), op),
            None if !matches!(run.op, Op::Read) => {
                self.record(run.key, run.start_step, None, written(&run.op))
            }
            None => {}
        }
    }

    /// Node `n` starts a renewal.
    fn renew(&mut self, n: usize) {
        if self.connected(n) && self.nodes[n].renewing.is_none() {
            self.nodes[n].asked = self.now;
            self.nodes[n].renewing = Some(Renewal { start: self.now, index: None, recorded: false });
        }
    }

    /// The leader takes the next step of `n`'s renewal: it reads the index, or records the
    /// renewal. A renewal of a node that is cut off is lost.
    fn serve_renewal(&mut self, n: usize) {
        let connected = self.connected(n);
        let (now, len) = (self.now, self.log.len());
        let node = &mut self.nodes[n];
        let Some(renewal) = node.renewing.as_mut() else { return };
        if !connected {
            node.renewing = None;
        } else if renewal.index.is_none() {
            renewal.index = Some(len);
        } else if !renewal.recorded {
            renewal.recorded = true;
            self.revoker.record(&name(n), now);
        }
    }

    /// Leases whose renewal was recorded and applied far enough start to count; a renewal
    /// not done within a lease is given up (its lease would already be over).
    fn settle_leases(&mut self) {
        let now = self.now;
        for node in &mut self.nodes {
            let Some(renewal) = node.renewing else { continue };
            if renewal.recorded && renewal.index.is_some_and(|i| node.applied >= i) {
                node.agent.renewed(renewal.start);
                node.renewing = None;
            } else if now >= renewal.start + LEASE {
                node.renewing = None;
            }
        }
    }

    /// The leader commits the revocations it decided on earlier, then revokes (decides to)
    /// each holder whose renewals it has not heard for `GRACE`.
    fn revoke_lapsed(&mut self) {
        for n in std::mem::take(&mut self.revoking) {
            self.commit(0, &CacheCommand::Revoke { node: name(n), token: 0 });
        }
        let holders: Vec<String> = self
            .dir
            .entries()
            .values()
            .flat_map(|e| e.owner.iter().chain(e.sharers.iter()).cloned())
            .collect();
        for holder in self.revoker.lapsed(self.now, Some(1), "", holders) {
            self.revoking.push((0..NODES).find(|n| name(*n) == holder).expect("a known node"));
        }
    }

    /// Node `n` writes back every dirty line it may.
    fn flush(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let commands = node.agent.due_write_backs(self.now, 0);
        node.outbox.extend(commands.into_iter().map(|c| (0, c)));
    }

    fn propose(&mut self, n: usize) {
        if !self.connected(n) {
            return;
        }
        if let Some((token, command)) = self.nodes[n].outbox.pop_front() {
            self.commit(token, &command);
        }
    }

    /// One scheduled action, drawn with this schedule's weights.
    fn act(&mut self, rng: &mut Rng, weights: &Weights) {
        self.step += 1;
        let n = rng.below(NODES);
        match weights.pick(rng) {
            Action::Tick => self.now += 1,
            Action::Apply(n) => {
                if self.connected(n) && self.stalled != Some(n) {
                    self.apply(n);
                }
            }
            Action::Propose => self.propose(n),
            Action::Advance => self.advance(rng.below(CLIENTS)),
            Action::Invoke => self.invoke(rng.below(CLIENTS), rng),
            // The leader serves every renewal it has been asked for, one step each.
            Action::ServeRenewals => (0..NODES).for_each(|n| self.serve_renewal(n)),
            Action::Flush => self.flush(n),
            Action::Stall => {
                // A stall lasts until the next such action.
                self.stalled = if self.stalled.is_some() { None } else { Some(n) };
            }
            Action::Cut if self.cut.is_none() => {
                // A cut lasts from a tick to two grace periods: about a third of them long
                // enough for the leader to revoke the cut-off node, some healing just
                // before or just after it decides to.
                self.cut = Some(n);
                self.cut_until = self.now + 1 + rng.below(2 * GRACE as usize) as u64;
                self.trace.push(format!("step {} now {} cut {:?}", self.step, self.now, self.cut));
            }
            Action::Cut => {}
            Action::RevokeLapsed => self.revoke_lapsed(),
        }
        // Each node asks for a renewal every quarter lease (if none is on its way).
        for n in 0..NODES {
            if self.now >= self.nodes[n].asked + LEASE / 4 {
                self.renew(n);
            }
        }
        if self.cut.is_some() && self.now >= self.cut_until {
            self.cut = None;
            self.trace.push(format!("step {} now {} cut healed", self.step, self.now));
        }
        self.settle_leases();
        self.close_reverts(false);
        self.check_directory();
    }

    /// The directory's invariants, after every action.
    fn check_directory(&self) {
        self.dir.check_invariants().unwrap_or_else(|e| panic!("directory: {e}"));
        for node in &self.nodes {
            node.agent.check_invariants().unwrap_or_else(|e| panic!("agent: {e}"));
        }
    }

    /// Heals the cut and runs until every client is done.
    fn finish_all(&mut self, rng: &mut Rng) {
        self.cut = None;
        self.stalled = None;
        for _ in 0..20_000 {
            if self.clients.iter().all(Option::is_none) {
                // Nothing follows: a revert still open can take effect now.
                self.close_reverts(true);
                return;
            }
            self.step += 1;
            match rng.below(4) {
                0 => self.now += 1,
                1 => self.apply(rng.below(NODES)),
                2 => self.propose(rng.below(NODES)),
                _ => self.advance(rng.below(CLIENTS)),
            }
            let n = rng.below(NODES);
            self.renew(n);
            self.serve_renewal(n);
            self.serve_renewal(n);
            self.settle_leases();
            self.close_reverts(false);
        }
        panic!("clients still running after the drain: {:?}", self.clients);
    }

    fn verdicts(&self) -> Vec<(&'static str, Verdict)> {
        self.history.iter().map(|(k, h)| (*k, check_register(h, None))).collect()
    }
}

/// What one step of a schedule does.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// The lease clock advances.
    Tick,
    /// That node applies its next entry.
    Apply(usize),
    Propose,
    Advance,
    Invoke,
    ServeRenewals,
    Flush,
    Stall,
    Cut,
    RevokeLapsed,
}

/// How often each action happens in one schedule. Every schedule draws its own weights
/// ("swarm testing"): one schedule has a node that applies a tenth as often as the others,
/// another no cuts but many stalls, and so on. The same faults at fixed rates reach far
/// fewer of the rare interleavings that bugs need.
struct Weights(Vec<(Action, u64)>);

impl Weights {
    fn draw(rng: &mut Rng) -> Self {
        // (action, typical weight, whether a schedule may leave it out)
        // (action, typical weight, the factors a schedule draws one of)
        const SOME: &[f64] = &[0.0, 1.0, 3.0];
        let base: [(Action, u64, &[f64]); 12] = [
            (Action::Tick, 10, &[0.5, 1.0, 2.0]),
            (Action::Apply(0), 8, &[0.1, 1.0, 1.0, 3.0]),
            (Action::Apply(1), 8, &[0.1, 1.0, 1.0, 3.0]),
            (Action::Apply(2), 8, &[0.1, 1.0, 1.0, 3.0]),
            (Action::Propose, 15, &[1.0, 3.0]),
            (Action::Advance, 22, &[1.0, 3.0]),
            (Action::Invoke, 13, &[0.3, 1.0, 3.0]),
            (Action::ServeRenewals, 4, &[1.0, 3.0, 10.0]),
            (Action::Flush, 1, SOME),
            (Action::Stall, 1, SOME),
            (Action::Cut, 3, SOME),
            (Action::RevokeLapsed, 2, SOME),
        ];
        let weights = base
            .into_iter()
            .map(|(action, weight, factors)| {
                let factor = factors[rng.below(factors.len())];
                (action, (weight as f64 * 10.0 * factor) as u64)
            })
            .collect();
        Self(weights)
    }

    fn pick(&self, rng: &mut Rng) -> Action {
        let total: u64 = self.0.iter().map(|(_, w)| w).sum();
        let mut at = rng.next() % total;
        for (action, weight) in &self.0 {
            if at < *weight {
                return *action;
            }
            at -= weight;
        }
        unreachable!("the draw is below the total")
    }
}

fn written(op: &Op) -> RegOp {
    match op {
        Op::Put(v) | Op::Write(v) => RegOp::Write(*v),
        Op::Delete => RegOp::Delete,
        Op::Read => unreachable!("a read writes nothing"),
    }
}

/// Runs the schedule of `seed`; returns the first key whose history is not linearizable.
fn run(seed: u64, policy: Policy, barrier: bool, steps: usize) -> Option<String> {
    run_with(seed, policy, barrier, true, steps)
}

fn run_with(seed: u64, policy: Policy, barrier: bool, delete_waits: bool, steps: usize) -> Option<String> {
    let mut rng = Rng(seed);
    let capacity = 1 + rng.below(2);
    let mut model = Model::new(policy, capacity, barrier);
    model.delete_waits_for_itself = delete_waits;
    let weights = Weights::draw(&mut rng);
    for _ in 0..steps {
        model.act(&mut rng, &weights);
    }
    model.finish_all(&mut rng);
    if std::env::var("MODEL_TRACE").ok() == Some(seed.to_string()) {
        eprintln!("{}", model.trace.join("\n"));
    }
    model.verdicts().into_iter().find_map(|(key, verdict)| match verdict {
        Verdict::Linearizable => None,
        Verdict::Unknown => None,
        Verdict::Violation(why) => Some(format!("seed {seed}, key {key}: {why}")),
    })
}

/// How many schedules a property runs: `MODEL_SEEDS` for a longer search, else `default`.
fn seeds(default: u64) -> u64 {
    std::env::var("MODEL_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn write_through_histories_are_linearizable_under_cuts_and_lagging_nodes() {
    for seed in 0..seeds(600) {
        if let Some(violation) = run(seed, Policy::WriteThrough, true, 600) {
            panic!("{violation}");
        }
    }
}

#[test]
fn write_back_histories_are_linearizable_once_revocations_count_as_writes() {
    let first = std::env::var("MODEL_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000u64);
    for seed in first..first + seeds(600) {
        if let Some(violation) = run(seed, Policy::WriteBack, true, 600) {
            panic!("{violation}");
        }
    }
}

/// The planted bug: without the barrier the model must find a stale read, as the outside
/// history check did on real processes.
#[test]
fn without_the_barrier_the_model_finds_stale_reads() {
    let found = (0..5000).find_map(|seed| run(seed, Policy::WriteThrough, false, 600));
    assert!(found.is_some(), "the model found no violation without the barrier");
}

/// The second planted bug (found by this model): a delete answered before the deleting
/// node applied it, while that node still served its old line as a hit.
#[test]
fn a_delete_answered_before_its_own_node_applied_it_is_caught() {
    let found = (0..5000).find_map(|seed| run_with(seed, Policy::WriteThrough, true, false, 600));
    assert!(found.is_some(), "the model found no violation with the early delete answer");
}

/// A planted bug in the agent: an ownership write whose held line was revoked before it
/// was confirmed is acknowledged anyway. The write lived only in that line, so a later read
/// finds the value it replaced.
#[test]
fn a_write_acknowledged_after_its_line_was_dropped_is_caught() {
    let found = (10_000..13_000).find_map(|seed| {
        let mut rng = Rng(seed);
        let capacity = 1 + rng.below(2);
        let mut model = Model::new(Policy::WriteBack, capacity, true);
        for node in &mut model.nodes {
            node.agent.plant_keep_dropped_writes = true;
        }
        let weights = Weights::draw(&mut rng);
        for _ in 0..600 {
            model.act(&mut rng, &weights);
        }
        model.finish_all(&mut rng);
        model.verdicts().into_iter().find(|(_, v)| matches!(v, Verdict::Violation(_)))
    });
    assert!(found.is_some(), "the model found no violation with dropped writes acknowledged");
}

/// Lets every connected node propose and apply everything, and `clients` advance, until
/// quiet.
fn settle(m: &mut Model, clients: &[usize]) {
    for _ in 0..20 {
        for n in 0..NODES {
            m.propose(n);
            while m.nodes[n].applied < m.log.len() && m.connected(n) {
                m.apply(n);
            }
        }
        for c in clients {
            m.step += 1;
            m.advance(*c);
        }
    }
}

/// Renews the leases of `nodes` in one go (each has applied everything).
fn renew_at_once(m: &mut Model, nodes: &[usize]) {
    for n in nodes {
        m.renew(*n);
        m.serve_renewal(*n);
        m.serve_renewal(*n);
    }
    m.settle_leases();
}

/// The first history, step by step: n1 shares `a` and is cut off; n2 writes `a`
/// durably; n2's concurrent read was a miss whose GetS is ordered after the write; then n1
/// reads. Without the barrier n2's read returns the new value at once and n1 serves the old
/// one from its S line; with it, n2's read waits until n1's lease must have run out.
fn replay_the_reported_history(barrier: bool) -> Verdict {
    let mut m = Model::new(Policy::WriteThrough, 4, barrier);
    // n3 writes 1 durably, n1 reads it: both share it.
    m.start(2, "a", Op::Put(1));
    settle(&mut m, &[2]);
    m.start(0, "a", Op::Read);
    settle(&mut m, &[0]);
    assert!(m.clients.iter().all(Option::is_none), "the set-up finished");
    assert_eq!(m.nodes[0].agent.lines().peek("a").map(|l| l.state), Some(Mesi::Shared));
    // n1 is cut off, its lease still running. n2's read misses and queues its GetS...
    m.cut = Some(0);
    m.start(1, "a", Op::Read);
    m.advance(1);
    m.advance(1);
    // ...and n2's durable write of 2 commits ahead of it.
    m.start(4, "a", Op::Put(2));
    let put = m.nodes[1].outbox.pop_back().expect("the put is queued");
    m.nodes[1].outbox.push_front(put);
    settle(&mut m, &[1]);
    // Then a read on n1 (after n2's read ended, if it did).
    m.start(0, "a", Op::Read);
    m.advance(0);
    m.finish_all(&mut Rng(1));
    check_register(&m.history["a"], None)
}

#[test]
fn the_reported_stale_read_happens_without_the_barrier_and_not_with_it() {
    assert!(matches!(replay_the_reported_history(false), Verdict::Violation(_)), "the bug is reproduced");
    assert_eq!(replay_the_reported_history(true), Verdict::Linearizable);
}

/// The chaos harness's history (seed 20261127 of `every_workload_survives_every_fault_kind`,
/// workload `cache-write-back`), step by step: n2 is the only sharer of `a` and is cut off
/// until the leader decides to revoke it; the cut heals and n2's renewal is answered before
/// the revocation commits, so n2 has a lease without the revocation. n1 then reads `a`
/// (nobody holds it: E) and writes it locally; n2, not yet through the revocation, still
/// serves its old copy. With the planted rule (a sharer's revocation sets no barrier) n1's
/// grant carries an old barrier and the stale read happens; with the barrier n1 waits until
/// n2's lease must have run out.
fn replay_a_sharer_revoked_while_its_renewal_is_answered(planted: bool) -> Verdict {
    let mut m = Model::new(Policy::WriteBack, 1, true);
    m.dir.plant_sharer_revocation_without_barrier = planted;
    // n3 reads `a` (E), n2 reads it (both S), n3 reads `b` and so evicts `a` (one line each).
    for (c, key) in [(2, "a"), (1, "a"), (2, "b")] {
        m.start(c, key, Op::Read);
        settle(&mut m, &[c]);
    }
    let a = m.dir.get("a").expect("a has a record");
    assert_eq!(
        (a.owner.as_deref(), a.sharers.iter().map(String::as_str).collect::<Vec<_>>()),
        (None, vec!["n2"])
    );
    // n2 is cut off for longer than the grace period; the others renew.
    m.cut = Some(1);
    for _ in 0..=GRACE {
        m.now += 1;
        settle(&mut m, &[]);
        renew_at_once(&mut m, &[0, 2]);
    }
    // The cut heals; n2 asks for a renewal and the leader reads the index for it. Then the
    // leader decides to revoke n2 (its last recorded renewal is old), records the renewal,
    // and the revocation commits.
    m.cut = None;
    m.renew(1);
    m.serve_renewal(1);
    m.revoke_lapsed();
    assert_eq!(m.revoking, vec![1], "the leader decided to revoke n2");
    m.serve_renewal(1);
    m.revoke_lapsed();
    m.settle_leases();
    assert!(m.lease_valid(1) && m.nodes[1].applied < m.log.len(), "n2 leases without the revocation");
    // n1 reads `a` and then writes it; n2 applies nothing meanwhile.
    for op in [Op::Read, Op::Write(2)] {
        m.start(0, "a", op.clone());
        for _ in 0..100 {
            if m.clients[0].is_none() {
                break;
            }
            m.now += 1;
            for n in [0, 2] {
                m.propose(n);
                while m.nodes[n].applied < m.log.len() {
                    m.apply(n);
                }
            }
            renew_at_once(&mut m, &[0, 2]);
            m.step += 1;
            m.advance(0);
        }
        assert!(m.clients[0].is_none(), "n1's {op:?} finished");
    }
    // n2 reads `a`.
    m.start(1, "a", Op::Read);
    m.advance(1);
    m.finish_all(&mut Rng(1));
    check_register(&m.history["a"], None)
}

#[test]
fn a_sharer_revoked_while_its_renewal_is_answered_serves_no_stale_read() {
    let planted = replay_a_sharer_revoked_while_its_renewal_is_answered(true);
    assert!(matches!(planted, Verdict::Violation(_)), "the bug is reproduced: {planted:?}");
    assert_eq!(replay_a_sharer_revoked_while_its_renewal_is_answered(false), Verdict::Linearizable);
}
