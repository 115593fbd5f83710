//! [`KvFeed`]: the key-value changes this node applied, in order, for watches and
//! blocking reads.
//!
//! The state machine publishes each applied entry's changes while it applies it (before
//! the apply is reported), so "applied index N" also means "the feed holds N's changes".
//! The feed keeps a bounded window of recent changes (`WATCH_HISTORY`) for watchers that
//! resume from a version, and broadcasts new ones. A subscription takes the window and the
//! broadcast under one lock, so nothing falls between the two and nothing comes twice.
//!
//! The window is this node's own: after a restart it holds what the node applied since
//! (the log after its snapshot is applied again, so that much is covered); an installed
//! snapshot clears it. A watcher that asks for older history gets `410 compacted`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sinkron_core::kv::KvEvent;
use tokio::sync::broadcast;

/// Default number of changes kept for resuming watchers.
pub const HISTORY_DEFAULT: usize = 10_000;
/// Changes a slow watcher may fall behind before its stream is ended (it resumes from the
/// last version it saw).
const BROADCAST_CAPACITY: usize = 4_096;

/// The changes of one node; cheap to clone.
#[derive(Clone)]
pub struct KvFeed {
    inner: Arc<Mutex<Window>>,
    tx: broadcast::Sender<Arc<KvEvent>>,
}

impl std::fmt::Debug for KvFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.lock();
        f.debug_struct("KvFeed").field("kept", &w.kept.len()).field("floor", &w.floor).finish()
    }
}

struct Window {
    kept: VecDeque<Arc<KvEvent>>,
    /// Every change with a version above this is in `kept` or still to come.
    floor: u64,
    capacity: usize,
}

/// A watcher's start: the kept changes after its version, then the live ones.
pub struct Subscription {
    /// Changes already applied, oldest first.
    pub backlog: Vec<Arc<KvEvent>>,
    /// Changes applied from now on.
    pub live: broadcast::Receiver<Arc<KvEvent>>,
}

impl KvFeed {
    /// A feed whose history starts after `floor` (the revision of the state it starts from).
    pub fn new(floor: u64) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let window = Window { kept: VecDeque::new(), floor, capacity: HISTORY_DEFAULT };
        Self { inner: Arc::new(Mutex::new(window)), tx }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps at most `capacity` changes (at least 1).
    pub fn set_capacity(&self, capacity: usize) {
        let mut w = self.lock();
        w.capacity = capacity.max(1);
        w.trim();
    }

    /// Records changes just applied, in order, and hands them to every watcher.
    pub fn publish(&self, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        let mut w = self.lock();
        for event in events {
            let event = Arc::new(event);
            w.kept.push_back(event.clone());
            // No receiver is not an error: nobody watches.
            let _ = self.tx.send(event);
        }
        w.trim();
    }

    /// A snapshot replaced the state at `revision`: older history is gone.
    pub fn reset(&self, revision: u64) {
        let mut w = self.lock();
        w.kept.clear();
        w.floor = revision;
    }

    /// The changes after version `after` and the live ones, or `Err(oldest)` when the
    /// window no longer reaches back to `after`: `oldest` is the smallest version a
    /// watcher can resume from.
    pub fn subscribe(&self, after: u64) -> Result<Subscription, u64> {
        let w = self.lock();
        if after < w.floor {
            return Err(w.floor);
        }
        let backlog = w.kept.iter().filter(|e| e.version > after).cloned().collect();
        Ok(Subscription { backlog, live: self.tx.subscribe() })
    }
}

impl Window {
    fn trim(&mut self) {
        while self.kept.len() > self.capacity {
            if let Some(gone) = self.kept.pop_front() {
                self.floor = self.floor.max(gone.version);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, version: u64) -> KvEvent {
        KvEvent { key: key.into(), value: Some(serde_json::json!(version)), version }
    }

    #[tokio::test]
    async fn a_subscriber_gets_the_backlog_then_the_live_changes_without_gap_or_repeat() {
        let feed = KvFeed::new(0);
        feed.publish(vec![put("a", 1), put("b", 2)]);
        let mut sub = feed.subscribe(1).expect("within the window");
        assert_eq!(sub.backlog.iter().map(|e| e.version).collect::<Vec<_>>(), vec![2]);
        feed.publish(vec![put("a", 3)]);
        assert_eq!(sub.live.recv().await.expect("live").version, 3);
    }

    #[test]
    fn history_beyond_the_window_is_compacted() {
        let feed = KvFeed::new(0);
        feed.set_capacity(2);
        feed.publish((1..=5).map(|v| put("k", v)).collect());
        assert_eq!(feed.subscribe(1).err(), Some(3), "versions 1 to 3 are gone");
        assert_eq!(feed.subscribe(3).expect("kept").backlog.len(), 2);
        feed.reset(9);
        assert_eq!(feed.subscribe(5).err(), Some(9));
        assert!(feed.subscribe(9).expect("from the snapshot on").backlog.is_empty());
    }
}
