//! The lock manager's node side: proposing lock commands, waiting for queued grants, and the
//! leader's lease duties (extend on taking office, then expire on time).
//!
//! The rules live in `sinkron_core::locks`; this module only moves commands into the log and
//! turns replies into answers. A queued request waits on this node's own state machine: the
//! grant is a log entry like any other, so every node learns of it by applying the log.

use std::time::{Duration, Instant};

use sinkron_core::locks::{AcquireOutcome, Hold, HolderView, LockMode, LockRefusal};
use sinkron_core::{Command, Response};
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::group0::Group0;

/// A granted lock, as answered to the client.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The grant.
    pub hold: Hold,
    /// Every holder after the grant.
    pub holders: Vec<HolderView>,
}

/// What a queued request finds when it looks at the local lock table.
enum QueueState {
    Granted(Grant),
    Waiting,
    Gone,
}

fn refusal(name: &str, client_id: &str, r: LockRefusal) -> NodeError {
    match r {
        LockRefusal::NotHeld => NodeError::NotHeld(format!("lock {name:?} is not held")),
        LockRefusal::NotOwner => NodeError::NotOwner(format!(
            "lock {name:?} is not held by {client_id:?}, or that client id belongs to another principal"
        )),
        LockRefusal::Limit { what } => NodeError::LimitExceeded(what),
    }
}

fn unexpected(reply: Response) -> NodeError {
    match reply {
        Response::Rejected { reason } => NodeError::Conflict(reason),
        other => NodeError::Unavailable(format!("unexpected reply {other:?}")),
    }
}

/// Acquires `name`, waiting up to `wait_ms` in the queue.
pub async fn acquire(
    node: &Group0,
    name: &str,
    client_id: &str,
    owner: Option<&str>,
    mode: LockMode,
    ttl_ms: u64,
    wait_ms: u64,
) -> Result<Grant, NodeError> {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    // Subscribe before proposing, so no grant can slip between the reply and the wait.
    let changes = node.group().sm.changes();
    // Armed from the start: if the client goes away while we wait (even for the first
    // reply), the request leaves the queue through the log.
    let mut cancel = CancelOnDrop::new(node, name, client_id, owner, wait_ms > 0);
    let command = Command::LockAcquire {
        name: name.into(),
        client_id: client_id.into(),
        mode,
        ttl_ms,
        wait_ms,
        owner: owner.map(str::to_owned),
    };
    let (reply, index) = node.write_at(command, None).await?;
    let outcome = match reply {
        Response::LockAcquire { outcome } => outcome,
        Response::LockRefused { refusal: r } => {
            cancel.disarm();
            return Err(refusal(name, client_id, r));
        }
        other => {
            cancel.disarm();
            return Err(unexpected(other));
        }
    };
    let queued = matches!(outcome, AcquireOutcome::Queued { .. });
    if !queued {
        cancel.disarm();
    }
    match outcome {
        AcquireOutcome::Granted { hold, holders } => Ok(Grant { hold, holders }),
        AcquireOutcome::Conflict { holders } => Err(NodeError::LockConflict(holders)),
        AcquireOutcome::Deadlock { cycle } => Err(NodeError::Deadlock(cycle)),
        AcquireOutcome::Queued { .. } => {
            // The reply came from the leader; look at our own table only once it has the entry.
            let settle = deadline.max(Instant::now() + Duration::from_secs(1));
            node.wait_applied(index, settle).await?;
            // An error above or below leaves `cancel` armed: dropping it withdraws the wait.
            let granted = wait_for_grant(node, name, client_id, mode, deadline, changes).await?;
            cancel.disarm();
            match granted {
                Some(grant) => Ok(grant),
                None => give_up(node, name, client_id, owner, mode, wait_ms).await,
            }
        }
    }
}

/// Waits for the local table to show the grant. `Ok(None)`: the deadline passed, or the
/// leader already removed the waiter.
async fn wait_for_grant(
    node: &Group0,
    name: &str,
    client_id: &str,
    mode: LockMode,
    deadline: Instant,
    mut changes: watch::Receiver<u64>,
) -> Result<Option<Grant>, NodeError> {
    loop {
        match queue_state(node, name, client_id, mode) {
            QueueState::Granted(grant) => return Ok(Some(grant)),
            QueueState::Gone => return Ok(None),
            QueueState::Waiting => {}
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(None);
        }
        match tokio::time::timeout(remaining, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(NodeError::Unavailable("the node is shutting down".into())),
            Err(_) => return Ok(None),
        }
    }
}

/// Leaves the queue through the log. A grant that won the race is still a grant.
async fn give_up(
    node: &Group0,
    name: &str,
    client_id: &str,
    owner: Option<&str>,
    mode: LockMode,
    wait_ms: u64,
) -> Result<Grant, NodeError> {
    let command = Command::LockCancelWait {
        name: name.into(),
        client_id: client_id.into(),
        owner: owner.map(str::to_owned),
    };
    let (reply, index) = node.write_at(command, None).await?;
    let timed_out = || NodeError::WaitTimeout(format!("lock {name:?} was not granted within {wait_ms} ms"));
    match reply {
        Response::LockCancelled { was_waiting: true } => Err(timed_out()),
        Response::LockCancelled { was_waiting: false } => {
            node.wait_applied(index, Instant::now() + Duration::from_secs(1)).await?;
            match queue_state(node, name, client_id, mode) {
                QueueState::Granted(grant) => Ok(grant),
                _ => Err(timed_out()),
            }
        }
        other => Err(unexpected(other)),
    }
}

fn queue_state(node: &Group0, name: &str, client_id: &str, mode: LockMode) -> QueueState {
    let applied = node.group().sm.read();
    let Some(lock) = applied.state.locks.get(name) else { return QueueState::Gone };
    if let Some(hold) = lock.holders.get(client_id) {
        if hold.mode == mode || hold.mode == LockMode::Exclusive {
            return QueueState::Granted(Grant { hold: hold.clone(), holders: lock.holder_views() });
        }
    }
    if lock.waiters.iter().any(|w| w.client_id == client_id) {
        QueueState::Waiting
    } else {
        QueueState::Gone
    }
}

/// Takes a waiter out of the queue through the log when its request is dropped (the client
/// hung up), so no phantom waiter stays behind.
struct CancelOnDrop {
    node: Option<Group0>,
    name: String,
    client_id: String,
    owner: Option<String>,
}

impl CancelOnDrop {
    fn new(node: &Group0, name: &str, client_id: &str, owner: Option<&str>, armed: bool) -> Self {
        Self {
            node: armed.then(|| node.clone()),
            name: name.into(),
            client_id: client_id.into(),
            owner: owner.map(str::to_owned),
        }
    }

    fn disarm(&mut self) {
        self.node = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(node) = self.node.take() else { return };
        let command = Command::LockCancelWait {
            name: std::mem::take(&mut self.name),
            client_id: std::mem::take(&mut self.client_id),
            owner: self.owner.take(),
        };
        tokio::spawn(async move {
            if let Err(e) = node.write(command, None).await {
                tracing::warn!(error = %e, "could not withdraw an abandoned lock request");
            }
        });
    }
}

/// Releases `client_id`'s hold of `name`.
pub async fn release(
    node: &Group0,
    name: &str,
    client_id: &str,
    owner: Option<&str>,
) -> Result<(), NodeError> {
    let command = Command::LockRelease {
        name: name.into(),
        client_id: client_id.into(),
        owner: owner.map(str::to_owned),
    };
    match node.write(command, None).await? {
        Response::LockDone { .. } => Ok(()),
        Response::LockRefused { refusal: r } => Err(refusal(name, client_id, r)),
        other => Err(unexpected(other)),
    }
}

/// Extends `client_id`'s lease of `name`.
pub async fn refresh(
    node: &Group0,
    name: &str,
    client_id: &str,
    owner: Option<&str>,
    ttl_ms: Option<u64>,
) -> Result<Hold, NodeError> {
    let command = Command::LockRefresh {
        name: name.into(),
        client_id: client_id.into(),
        ttl_ms,
        owner: owner.map(str::to_owned),
    };
    match node.write(command, None).await? {
        Response::LockDone { hold: Some(hold) } => Ok(hold),
        Response::LockRefused { refusal: r } => Err(refusal(name, client_id, r)),
        other => Err(unexpected(other)),
    }
}

/// Extends every lease of `client_id`.
pub async fn refresh_all(
    node: &Group0,
    client_id: &str,
    owner: Option<&str>,
    ttl_ms: Option<u64>,
) -> Result<Vec<(String, Hold)>, NodeError> {
    let command =
        Command::LockRefreshAll { client_id: client_id.into(), ttl_ms, owner: owner.map(str::to_owned) };
    match node.write(command, None).await? {
        Response::LockRefreshedAll { locks } => Ok(locks),
        Response::LockRefused { refusal: r } => Err(refusal("(every lock)", client_id, r)),
        other => Err(unexpected(other)),
    }
}

/// Drops every hold of `name`; returns the former holders.
pub async fn force_release(node: &Group0, name: &str) -> Result<Vec<String>, NodeError> {
    match node.write(Command::LockForceRelease { name: name.into() }, None).await? {
        Response::LockForceReleased { former_holders } => Ok(former_holders),
        other => Err(unexpected(other)),
    }
}

/// How often the leader looks for leases to expire when none is due sooner.
const DUTY_INTERVAL: Duration = Duration::from_millis(50);

/// Runs the leader's lease duties for as long as the node runs: on taking office it first
/// extends every lease by its TTL (its clock need not match the old leader's), then it
/// proposes an expiry whenever a lease or a wait is due by its clock.
///
/// Both are proposed on this node only, never forwarded: a deposed leader's expiry must not
/// reach the new leader. The state machine also ignores an expiry written in another term
/// than the last extension, so the order "extend, then expire" holds on every replica.
pub async fn leader_duties(node: Group0) {
    let mut extended_in_term: Option<u64> = None;
    loop {
        let (is_leader, term) = {
            let m = node.raft().metrics();
            let m = m.borrow();
            (m.state == openraft::ServerState::Leader, m.current_term)
        };
        if !is_leader {
            extended_in_term = None;
            tokio::time::sleep(DUTY_INTERVAL).await;
            continue;
        }
        if extended_in_term != Some(term) {
            match node.write_here(Command::LockExtendAll).await {
                Ok(_) => extended_in_term = Some(term),
                Err(e) => {
                    tracing::debug!(error = %e, "could not extend leases yet");
                    tokio::time::sleep(DUTY_INTERVAL).await;
                    continue;
                }
            }
        }
        let next = node.group().sm.read().state.locks.next_deadline_ms();
        let now = now_ms();
        match next {
            Some(due) if due <= now => {
                if let Err(e) = node.write_here(Command::LockExpire).await {
                    tracing::debug!(error = %e, "could not expire leases");
                    tokio::time::sleep(DUTY_INTERVAL).await;
                }
            }
            Some(due) => tokio::time::sleep(Duration::from_millis(due - now).min(DUTY_INTERVAL)).await,
            None => tokio::time::sleep(DUTY_INTERVAL).await,
        }
    }
}
