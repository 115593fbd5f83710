//! A leader's appends are replicated while its own fsync runs, and nothing they carry is
//! seen before that fsync lands.
//!
//! openraft 0.9 waits for the leader's append to be reported flushed before it sends the
//! entries to the followers, so a leader's fsync and the replication round trip add up on
//! every write. Raft only needs the leader's copy durable before the entry counts as
//! committed, not before it is sent. So a [`LogStore`](super::LogStore) that knows it leads
//! reports its own appends flushed at once and hands them to the writer with a [`Mark`] that
//! the writer completes after its fsync. openraft then counts the leader in the quorum
//! early, and may believe an entry committed with one durable copy. That belief stays
//! private: every way a committed entry becomes visible waits here first.
//!
//! - The state machine waits before it applies an entry, so no client is answered, no read
//!   sees the entry and no snapshot holds it.
//! - The peer client waits before it sends a commit index that covers the entry, so no
//!   follower applies it.
//!
//! When either wait ends, a follower's ack (sent after its own fsync) and the leader's fsync
//! both hold the entry: two copies of three. A leader that crashes before its fsync forgets
//! the entry; nobody applied it and no client heard of it, so losing it is allowed.
//! A follower's appends are never marked: their ack goes out only after the fsync.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// What the writer reported for a marked append: nothing yet, durable, or failed.
type Outcome = Option<Result<(), String>>;

/// The leader appends of one group that were reported flushed before their fsync, and the
/// waits on them. Cloning gives another handle to the same list.
#[derive(Clone, Default)]
pub struct Durability {
    marks: Arc<Mutex<VecDeque<Pending>>>,
}

struct Pending {
    /// First log index of the marked append.
    first: u64,
    outcome: watch::Receiver<Outcome>,
}

/// Completed by the writer once a marked append is durable (or cannot be).
pub struct Mark(watch::Sender<Outcome>);

impl Mark {
    /// Reports the outcome of the fsync that covers the append.
    pub fn complete(self, result: io::Result<()>) {
        let outcome = result.map_err(|e| e.to_string());
        // Nobody left to tell when every handle to the log is gone.
        let _ = self.0.send(Some(outcome));
    }
}

impl Durability {
    /// Notes an append starting at log index `first`, reported flushed before its fsync.
    pub fn mark(&self, first: u64) -> Mark {
        let (tx, outcome) = watch::channel(None);
        let mut marks = self.lock();
        forget_durable(&mut marks);
        marks.push_back(Pending { first, outcome });
        Mark(tx)
    }

    /// Waits until every entry up to `index` that this log holds is durable.
    ///
    /// The newest marked append starting at or before `index` is the one to wait for: the
    /// writer makes appends durable in the order it got them, so the older ones are durable
    /// by then too. An append after a truncation may start lower than the ones before it,
    /// which is why the newest, not the first, such mark is taken.
    pub async fn wait_through(&self, index: u64) -> io::Result<()> {
        let outcome = {
            let mut marks = self.lock();
            forget_durable(&mut marks);
            marks.iter().rev().find(|p| p.first <= index).map(|p| p.outcome.clone())
        };
        let Some(mut outcome) = outcome else { return Ok(()) };
        let seen = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| io::Error::other("the log writer stopped before a leader's append was durable"))?;
        match &*seen {
            Some(Err(e)) => {
                Err(io::Error::other(format!("a leader's append could not be made durable: {e}")))
            }
            _ => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Pending>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drops the oldest marks once durable; a failed one stays, so later waits fail too.
fn forget_durable(marks: &mut VecDeque<Pending>) {
    while marks.front().is_some_and(|p| matches!(&*p.outcome.borrow(), Some(Ok(())))) {
        marks.pop_front();
    }
}
