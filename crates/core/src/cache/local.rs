//! [`LocalCache`]: one node's cache lines, bounded by `CACHE_MAX_SIZE` with LRU eviction.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::protocol::{CacheCommand, CacheEvent, Mesi, RecallKind};

/// One cached key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// MESI state.
    pub state: Mesi,
    /// The value this node sees.
    pub value: Option<serde_json::Value>,
    /// Version of the backing store value this line started from.
    pub version: u64,
    /// When (state-machine or local clock, caller's choice) the line was first written
    /// since its last write-back; `None` when clean.
    pub dirty_since_ms: Option<u64>,
    /// Set while the directory recalls this line: no local writes until it is written back.
    pub recalled: bool,
    /// The key's invalidation barrier when the line was granted: the log index of the latest
    /// entry that took a copy of the key away from some node.
    #[serde(default)]
    pub invalidated_at: u64,
    /// The log index of the grant that installed this line (named by its eviction).
    #[serde(default)]
    pub granted_at: u64,
}

impl Line {
    /// Whether this line's value may be returned to a client, given that every other member
    /// is known to have applied `confirmed_index` (or lost its coherence lease).
    ///
    /// A node that has not yet applied the barrier's entry may still serve the value that
    /// entry replaced; returning the newer value before that is over would let a later read
    /// on that node go back in time.
    pub fn visible(&self, confirmed_index: u64) -> bool {
        self.invalidated_at <= confirmed_index
    }
}

/// The commands a node proposes about one of its lines. They are built from the line, so
/// they live beside it.
impl CacheCommand {
    /// `node`'s write-back of its `line` of `key` (its dirty value, if any), in answer to a
    /// recall or on its own deadline.
    pub fn write_back(key: &str, node: &str, line: Option<&Line>, answers_recall: bool) -> Self {
        Self::WriteBack {
            key: key.to_string(),
            node: node.to_string(),
            value: line.filter(|l| l.dirty_since_ms.is_some()).and_then(|l| l.value.clone()),
            answers_recall,
            // No line (it was dropped meanwhile): 0, older than any grant, so the directory
            // ignores it if the node has been granted the key again since.
            granted_at: Some(line.map_or(0, |l| l.granted_at)),
        }
    }

    /// `node`'s eviction of its `line` of `key` (carrying the dirty value, if any).
    pub fn evict(key: String, node: &str, line: Line) -> Self {
        let granted_at = Some(line.granted_at);
        Self::Evict { key, node: node.to_string(), value: line.dirty_since_ms.and(line.value), granted_at }
    }
}

impl CacheEvent {
    /// The line a `Grant` installs on a node that has none of the key (`None` for other
    /// events).
    pub fn granted_line(&self) -> Option<Line> {
        let Self::Grant { state, value, version, dirty, invalidated_at, granted_at, .. } = self else {
            return None;
        };
        // A write granted with its value is dirty from now on; with no clock here, it
        // counts as dirty since time 0, so the next write-back scan flushes it.
        Some(Line {
            state: *state,
            value: value.clone(),
            version: *version,
            dirty_since_ms: dirty.then_some(0),
            recalled: false,
            invalidated_at: *invalidated_at,
            granted_at: *granted_at,
        })
    }
}

/// Counters of a local cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Reads served from a line.
    pub hits: u64,
    /// Reads that found no line.
    pub misses: u64,
    /// Lines dropped to make room.
    pub evictions: u64,
    /// Lines invalidated by another node's write.
    pub invalidations: u64,
    /// Dirty values written back.
    pub write_backs: u64,
    /// Count of each state transition, as `"from->to"`.
    pub transitions: BTreeMap<String, u64>,
}

/// What a local write needs.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Done locally (the line was M, or E and became M).
    Local,
    /// The line is S, I or being recalled: ownership must be requested through the log.
    NeedOwnership,
}

/// A node's cache: lines plus LRU order. Ticks, not clocks, order recency.
#[derive(Debug, Clone, Default)]
pub struct LocalCache {
    capacity: usize,
    lines: BTreeMap<String, (Line, u64)>,
    recency: BTreeMap<u64, String>,
    tick: u64,
    /// Lines dropped for room whose `Evict` has not committed yet, oldest first.
    evicting: BTreeMap<String, VecDeque<Line>>,
    /// Counters.
    pub stats: CacheStats,
}

impl LocalCache {
    /// An empty cache of at most `capacity` lines (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), ..Self::default() }
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether there are no lines.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Capacity in lines.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The line of `key`, without touching recency.
    pub fn peek(&self, key: &str) -> Option<&Line> {
        self.lines.get(key).map(|(l, _)| l)
    }

    /// Every line with its key, in key order.
    pub fn lines(&self) -> impl Iterator<Item = (&String, &Line)> {
        self.lines.iter().map(|(k, (l, _))| (k, l))
    }

    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, t)) = self.lines.get_mut(key) {
            self.recency.remove(t);
            *t = tick;
            self.recency.insert(tick, key.to_string());
        }
    }

    fn count(&mut self, from: Option<Mesi>, to: Option<Mesi>) {
        let name = |s: Option<Mesi>| match s {
            Some(Mesi::Modified) => "M",
            Some(Mesi::Exclusive) => "E",
            Some(Mesi::Shared) => "S",
            None => "I",
        };
        *self.stats.transitions.entry(format!("{}->{}", name(from), name(to))).or_default() += 1;
    }

    /// A local read: the line if present (a hit, made most recent), else a miss.
    pub fn read(&mut self, key: &str) -> Option<Line> {
        if self.lines.contains_key(key) {
            self.stats.hits += 1;
            self.touch(key);
            self.peek(key).cloned()
        } else {
            self.stats.misses += 1;
            None
        }
    }

    /// A local write: E -> M silently, M stays M; anything else needs ownership first.
    pub fn write(&mut self, key: &str, value: serde_json::Value, now_ms: u64) -> WriteOutcome {
        let Some((line, _)) = self.lines.get_mut(key) else { return WriteOutcome::NeedOwnership };
        if line.recalled || line.state == Mesi::Shared {
            return WriteOutcome::NeedOwnership;
        }
        let from = line.state;
        line.state = Mesi::Modified;
        line.value = Some(value);
        line.dirty_since_ms.get_or_insert(now_ms);
        self.count(Some(from), Some(Mesi::Modified));
        self.touch(key);
        WriteOutcome::Local
    }

    /// Installs a line granted by the directory. Returns the line evicted to make room, if
    /// any: the caller must write it back (if dirty) and tell the directory.
    pub fn install(&mut self, key: &str, line: Line) -> Option<(String, Line)> {
        let from = self.peek(key).map(|l| l.state);
        self.count(from, Some(line.state));
        let mut evicted = None;
        if from.is_none() && self.lines.len() >= self.capacity {
            evicted = self.evict_lru();
        }
        self.tick += 1;
        if let Some((_, old_tick)) = self.lines.insert(key.to_string(), (line, self.tick)) {
            self.recency.remove(&old_tick);
        }
        self.recency.insert(self.tick, key.to_string());
        evicted
    }

    fn evict_lru(&mut self) -> Option<(String, Line)> {
        let (_, key) = self.recency.pop_first()?;
        let (line, _) = self.lines.remove(&key)?;
        self.stats.evictions += 1;
        self.count(Some(line.state), None);
        self.evicting.entry(key.clone()).or_default().push_back(line.clone());
        Some((key, line))
    }

    /// Whether a line of `key` was dropped for room and its `Evict` is not committed yet.
    pub fn is_evicting(&self, key: &str) -> bool {
        self.evicting.contains_key(key)
    }

    /// The oldest `Evict` of `key` was applied.
    fn evict_committed(&mut self, key: &str) {
        if let Some(lines) = self.evicting.get_mut(key) {
            lines.pop_front();
            if lines.is_empty() {
                self.evicting.remove(key);
            }
        }
    }

    /// Drops the line of `key` (for an eviction the node decided on), returning it.
    pub fn remove(&mut self, key: &str) -> Option<Line> {
        let (line, tick) = self.lines.remove(key)?;
        self.recency.remove(&tick);
        self.count(Some(line.state), None);
        Some(line)
    }

    /// Marks a dirty line clean after its value was written back; the line stays M.
    pub fn mark_clean(&mut self, key: &str, version: u64) {
        if let Some((line, _)) = self.lines.get_mut(key) {
            line.dirty_since_ms = None;
            line.version = version;
            self.stats.write_backs += 1;
        }
    }

    /// Performs a directory event addressed to this node. Returns the line evicted to make
    /// room for a granted one, if any: the caller writes it back (if dirty) and proposes
    /// its eviction.
    pub fn on_event(&mut self, event: &CacheEvent) -> Option<(String, Line)> {
        match event {
            CacheEvent::Invalidate { key, .. } => {
                if let Some((line, tick)) = self.lines.remove(key) {
                    self.recency.remove(&tick);
                    self.stats.invalidations += 1;
                    self.count(Some(line.state), None);
                }
            }
            CacheEvent::Recall { key, .. } => {
                if let Some((line, _)) = self.lines.get_mut(key) {
                    line.recalled = true;
                }
            }
            CacheEvent::Grant { key, state, fresh, invalidated_at, granted_at, regrant, .. } => {
                // Re-granted ownership of a line this node already owns: its own copy (maybe
                // dirty) is at least as new as the backing store's, unless the grant carries
                // a newer write-through value.
                let owned =
                    |l: &&mut (Line, u64)| !*fresh && l.0.state != Mesi::Shared && *state == Mesi::Exclusive;
                if let Some((line, _)) = self.lines.get_mut(key).filter(owned) {
                    line.invalidated_at = line.invalidated_at.max(*invalidated_at);
                    line.granted_at = *granted_at;
                    return None;
                }
                // Re-granted ownership of a line this node evicted dirty, before its `Evict`
                // committed: that `Evict` is now stale, so the evicted value lives on here.
                let evicted =
                    self.evicting.get(key).and_then(|l| l.back()).filter(|l| l.dirty_since_ms.is_some());
                if let Some(old) = evicted.filter(|_| *regrant && !*fresh).cloned() {
                    let line = Line {
                        granted_at: *granted_at,
                        invalidated_at: *invalidated_at,
                        recalled: false,
                        ..old
                    };
                    return self.install(key, line);
                }
                let line = event.granted_line()?;
                return self.install(key, line);
            }
            CacheEvent::Evicted { key, .. } => self.evict_committed(key),
            CacheEvent::Downgraded { key, version, .. } => {
                if let Some((line, _)) = self.lines.get_mut(key) {
                    let from = line.state;
                    line.state = Mesi::Shared;
                    line.recalled = false;
                    line.dirty_since_ms = None;
                    line.version = *version;
                    self.count(Some(from), Some(Mesi::Shared));
                }
            }
            CacheEvent::WrittenBack { key, version, kind, .. } => match kind {
                Some(RecallKind::Invalidate) => {
                    let _ = self.remove(key);
                    self.stats.write_backs += 1;
                }
                Some(RecallKind::Downgrade) => self.stats.write_backs += 1,
                None => self.mark_clean(key, *version),
            },
        }
        None
    }
}
