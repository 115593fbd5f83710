//! [`Directory`]: group 0's record of who caches what, plus the backing store.
//!
//! Per key it holds the committed value and version, the owner (the one node whose line is
//! M or E; the directory cannot tell which, since E -> M is silent) or the set of sharers,
//! and at most one pending recall: the owner has been asked to write its line back before
//! waiting requests can be served.
//!
//! **The invalidation barrier.** Each record also keeps `invalidated_at`: the log index of
//! the latest entry that took a copy of the key away from some node. A node that applies
//! that entry late (it is behind, or cut off) can still serve the older value until it
//! applies it or its coherence lease runs out. (A revocation sets it for every key the
//! revoked node held: its lines stay until it applies the revocation.) Every grant carries
//! the barrier, and a node may return a line's value (as a hit, or as the answer to its own miss) only once every
//! other member is known to have applied the barrier's index or lost its lease
//! ([`super::Line::visible`]). This covers every read path on every node, not only the
//! writer's: see docs/cache.md, "Why no read returns a value too early".

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::protocol::{CacheCommand, CacheEvent, CacheReply, Mesi, RecallKind, Want};

/// A request waiting for a recall to finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The requesting node.
    pub node: String,
    /// Read or write.
    pub want: Want,
    /// The requester's token, echoed in its grant.
    pub token: u64,
    /// For a write: the value it writes once it owns the line.
    pub value: Option<serde_json::Value>,
}

/// A pending recall of the owner's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recall {
    /// The owner asked to write back.
    pub from: String,
    /// Downgrade or invalidate.
    pub kind: RecallKind,
    /// Requests served once the write-back is applied, in order.
    pub waiting: Vec<Waiting>,
}

/// The directory's record of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The backing store's value (`None`: no value).
    pub value: Option<serde_json::Value>,
    /// Incremented by every store of a new value.
    pub version: u64,
    /// The node holding the line in M or E.
    pub owner: Option<String>,
    /// Nodes holding the line in S.
    pub sharers: BTreeSet<String>,
    /// A pending recall of the owner's line.
    pub recall: Option<Recall>,
    /// Log index of the latest entry that invalidated a copy of this key (0: none yet).
    #[serde(default)]
    pub invalidated_at: u64,
    /// For each holder, the log index of the grant that installed its current line: an
    /// eviction of an older line of that node is stale and must not drop the newer one.
    #[serde(default)]
    pub grants: BTreeMap<String, u64>,
}

/// The directory of every cached key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Directory {
    entries: BTreeMap<String, DirEntry>,
    /// The largest log index applied (barriers never point past it).
    #[serde(default)]
    applied_index: u64,
    /// The largest barrier of a record that was dropped (no value, no holder left). A key
    /// created again starts from it: a node that is behind may still hold the copy that the
    /// dropped record's last invalidation took away.
    #[serde(default)]
    dropped_barrier: u64,
    /// Tests only, a planted bug: a revocation of a sharer leaves the key's barrier alone
    /// (the rule before the chaos harness found it wrong), so the model can show it finds it.
    #[cfg(test)]
    #[serde(skip)]
    pub(crate) plant_sharer_revocation_without_barrier: bool,
}

impl Directory {
    /// Number of keys with a record.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key has a record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Option<&DirEntry> {
        self.entries.get(key)
    }

    /// Every record.
    pub fn entries(&self) -> &BTreeMap<String, DirEntry> {
        &self.entries
    }

    /// Applies `command`, found at log `index`; returns the reply and the events for the
    /// nodes.
    pub fn apply(&mut self, index: u64, command: &CacheCommand) -> (CacheReply, Vec<CacheEvent>) {
        let mut events = Vec::new();
        self.applied_index = self.applied_index.max(index);
        let reply = match command {
            CacheCommand::GetS { key, node, token } => {
                let waiting = Waiting { node: node.clone(), want: Want::Read, token: *token, value: None };
                self.request(index, key, waiting, &mut events)
            }
            CacheCommand::GetM { key, node, token, value } => {
                let waiting =
                    Waiting { node: node.clone(), want: Want::Write, token: *token, value: value.clone() };
                self.request(index, key, waiting, &mut events)
            }
            CacheCommand::WriteBack { key, node, value, answers_recall, granted_at } => {
                if self.is_stale(key, node, *granted_at) {
                    return (CacheReply::Done, events);
                }
                self.write_back(index, key, node, value.clone(), *answers_recall, &mut events)
            }
            CacheCommand::Evict { key, node, value, granted_at } => {
                self.evict(index, key, node, value.clone(), *granted_at, &mut events)
            }
            CacheCommand::Put { key, node, value, token } => {
                self.put(index, key, Some(node), Some(value.clone()), *token, &mut events)
            }
            CacheCommand::Delete { key } => self.put(index, key, None, None, 0, &mut events),
            CacheCommand::Revoke { node, .. } => self.revoke(index, node, &mut events),
        };
        // Every command but `Revoke` changes one key (a revocation tidies each key it touched).
        if let Some(key) = command.key() {
            self.tidy(key);
        }
        (reply, events)
    }

    /// Forgets the grants of nodes that no longer hold `key`, and drops its record once it
    /// has no value and no holder (keeping its barrier in `dropped_barrier`).
    fn tidy(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else { return };
        let (owner, sharers) = (&e.owner, &e.sharers);
        e.grants.retain(|n, _| owner.as_ref() == Some(n) || sharers.contains(n));
        let keep = e.value.is_some() || e.owner.is_some() || !e.sharers.is_empty() || e.recall.is_some();
        if !keep {
            self.dropped_barrier = self.dropped_barrier.max(e.invalidated_at);
            self.entries.remove(key);
        }
    }

    /// The record of `key`, created (inheriting the dropped records' barrier) if missing.
    fn record_of(&mut self, key: &str) -> &mut DirEntry {
        let barrier = self.dropped_barrier;
        self.entries
            .entry(key.to_string())
            .or_insert_with(|| DirEntry { invalidated_at: barrier, ..DirEntry::default() })
    }

    /// Whether a command about `node`'s line of `key` granted at `granted_at` concerns a line
    /// that a newer grant to the same node has replaced.
    fn is_stale(&self, key: &str, node: &str, granted_at: Option<u64>) -> bool {
        let current = self.entries.get(key).and_then(|e| e.grants.get(node)).copied();
        granted_at.zip(current).is_some_and(|(line, current)| line < current)
    }

    fn request(
        &mut self,
        index: u64,
        key: &str,
        waiting: Waiting,
        events: &mut Vec<CacheEvent>,
    ) -> CacheReply {
        let entry = self.record_of(key);
        if let Some(recall) = &mut entry.recall {
            let from = recall.from.clone();
            recall.waiting.push(waiting);
            return CacheReply::Recalling { from };
        }
        match entry.owner.clone() {
            Some(owner) if owner != waiting.node => {
                let kind =
                    if waiting.want == Want::Read { RecallKind::Downgrade } else { RecallKind::Invalidate };
                entry.recall = Some(Recall { from: owner.clone(), kind, waiting: vec![waiting] });
                events.push(CacheEvent::Recall { node: owner.clone(), key: key.to_string(), kind });
                CacheReply::Recalling { from: owner }
            }
            _ => grant(index, entry, key, waiting, events),
        }
    }

    fn write_back(
        &mut self,
        index: u64,
        key: &str,
        node: &str,
        value: Option<serde_json::Value>,
        answers_recall: bool,
        events: &mut Vec<CacheEvent>,
    ) -> CacheReply {
        let Some(entry) = self.entries.get_mut(key) else { return CacheReply::Done };
        if entry.owner.as_deref() != Some(node) {
            // A stale write-back (the node was revoked or evicted meanwhile): its value is lost.
            return CacheReply::Done;
        }
        if let Some(v) = value {
            entry.value = Some(v);
            entry.version += 1;
        }
        let version = entry.version;
        let recall = if answers_recall { entry.recall.take_if(|r| r.from == node) } else { None };
        let kind = recall.as_ref().map(|r| r.kind);
        events.push(CacheEvent::WrittenBack { node: node.to_string(), key: key.to_string(), version, kind });
        if let Some(recall) = recall {
            entry.owner = None;
            if recall.kind == RecallKind::Downgrade {
                entry.sharers.insert(node.to_string());
                events.push(CacheEvent::Downgraded { node: node.to_string(), key: key.to_string(), version });
            } else {
                // The former owner drops its line here.
                entry.invalidated_at = index;
            }
            self.serve(index, key, recall.waiting, events);
        }
        CacheReply::Stored { version, invalidated: Vec::new() }
    }

    fn evict(
        &mut self,
        index: u64,
        key: &str,
        node: &str,
        value: Option<serde_json::Value>,
        granted_at: Option<u64>,
        events: &mut Vec<CacheEvent>,
    ) -> CacheReply {
        events.push(CacheEvent::Evicted { node: node.to_string(), key: key.to_string() });
        if self.is_stale(key, node, granted_at) {
            // The node holds a newer line of the key than the one it evicted.
            return CacheReply::Done;
        }
        let Some(entry) = self.entries.get_mut(key) else { return CacheReply::Done };
        entry.sharers.remove(node);
        if entry.owner.as_deref() != Some(node) {
            return CacheReply::Done;
        }
        if let Some(v) = value {
            entry.value = Some(v);
            entry.version += 1;
        }
        entry.owner = None;
        if let Some(recall) = entry.recall.take() {
            self.serve(index, key, recall.waiting, events);
        }
        CacheReply::Done
    }

    /// Stores a new value (`None`: deletes) written by `writer`, invalidating every other copy.
    fn put(
        &mut self,
        index: u64,
        key: &str,
        writer: Option<&String>,
        value: Option<serde_json::Value>,
        token: u64,
        events: &mut Vec<CacheEvent>,
    ) -> CacheReply {
        let entry = self.record_of(key);
        let holders: BTreeSet<String> = entry.sharers.iter().cloned().chain(entry.owner.clone()).collect();
        let invalidated: Vec<String> = holders.into_iter().filter(|h| Some(h) != writer).collect();
        for node in &invalidated {
            events.push(CacheEvent::Invalidate { node: node.clone(), key: key.to_string() });
        }
        if !invalidated.is_empty() {
            entry.invalidated_at = index;
        }
        entry.value = value;
        entry.version += 1;
        entry.sharers.clear();
        entry.owner = writer.cloned();
        let version = entry.version;
        if let Some(w) = writer {
            let value = entry.value.clone();
            entry.grants.insert(w.clone(), index);
            events.push(CacheEvent::Grant {
                node: w.clone(),
                key: key.to_string(),
                state: Mesi::Exclusive,
                value,
                version,
                fresh: true,
                dirty: false,
                token,
                invalidated_at: entry.invalidated_at,
                granted_at: index,
                regrant: false,
            });
        }
        if let Some(recall) = entry.recall.take() {
            self.serve(index, key, recall.waiting, events);
        }
        CacheReply::Stored { version, invalidated }
    }

    /// A revocation sets the barrier of every key the node held. The leader means to revoke
    /// a node only once its lease ran out, but a renewal answered between that decision and
    /// the commit gives the node a lease without this entry; and once the directory forgets
    /// a sharer, no later write invalidates its copy. So the next grant of the key makes its
    /// holder wait until the revoked node applied this entry or lost that lease.
    fn revoke(&mut self, index: u64, node: &str, events: &mut Vec<CacheEvent>) -> CacheReply {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.owner.as_deref() == Some(node) || e.sharers.contains(node))
            .map(|(k, _)| k.clone())
            .collect();
        let mut owned = Vec::new();
        let planted = self.planted_sharer_bug();
        for key in keys {
            events.push(CacheEvent::Invalidate { node: node.to_string(), key: key.clone() });
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            let was_sharer = entry.sharers.remove(node);
            // A sharer's copy holds the current value, but nothing will invalidate it now;
            // an owner's value is gone and the stored one is current again. Either way the
            // node may still serve its line until it applied this or lost its lease.
            if !(was_sharer && planted) {
                entry.invalidated_at = index;
            }
            if entry.owner.as_deref() == Some(node) {
                owned.push((key.clone(), entry.value.clone()));
                entry.owner = None;
                if let Some(recall) = entry.recall.take() {
                    self.serve(index, &key, recall.waiting, events);
                }
            }
            self.tidy(&key);
        }
        CacheReply::Revoked { owned }
    }

    #[cfg(test)]
    fn planted_sharer_bug(&self) -> bool {
        self.plant_sharer_revocation_without_barrier
    }

    #[cfg(not(test))]
    fn planted_sharer_bug(&self) -> bool {
        false
    }

    /// Serves requests that waited for a recall, in order, as if they arrived now.
    fn serve(&mut self, index: u64, key: &str, waiting: Vec<Waiting>, events: &mut Vec<CacheEvent>) {
        for request in waiting {
            let _ = self.request(index, key, request, events);
        }
    }

    /// Checks the directory: an owner excludes sharers, a recall targets the owner.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (key, e) in &self.entries {
            if e.owner.is_some() && !e.sharers.is_empty() {
                return Err(format!("{key}: owner {:?} next to sharers {:?}", e.owner, e.sharers));
            }
            if let Some(r) = &e.recall {
                if e.owner.as_deref() != Some(r.from.as_str()) || r.waiting.is_empty() {
                    return Err(format!("{key}: recall from {} but owner {:?}", r.from, e.owner));
                }
            }
            if e.invalidated_at > self.applied_index {
                return Err(format!("{key}: barrier {} past the applied index", e.invalidated_at));
            }
        }
        Ok(())
    }
}

/// Grants the request its line now: ownership for a write or a sole reader (M when the
/// write's value comes with it, else E), S for a reader next to others.
fn grant(
    index: u64,
    entry: &mut DirEntry,
    key: &str,
    request: Waiting,
    events: &mut Vec<CacheEvent>,
) -> CacheReply {
    let node = request.node.as_str();
    let regrant = entry.owner.as_deref() == Some(node);
    let others: Vec<String> = entry.sharers.iter().filter(|s| *s != node).cloned().collect();
    let write = request.want == Want::Write;
    let exclusive = write || others.is_empty();
    let mut invalidated = Vec::new();
    if exclusive {
        if write {
            for other in others {
                events.push(CacheEvent::Invalidate { node: other.clone(), key: key.to_string() });
                invalidated.push(other);
            }
            if !invalidated.is_empty() {
                entry.invalidated_at = index;
            }
        }
        entry.sharers.clear();
        entry.owner = Some(node.to_string());
    } else {
        entry.sharers.insert(node.to_string());
    }
    let dirty = write && request.value.is_some();
    let state = if dirty {
        Mesi::Modified
    } else if exclusive {
        Mesi::Exclusive
    } else {
        Mesi::Shared
    };
    let value = if dirty { request.value } else { entry.value.clone() };
    let version = entry.version;
    entry.grants.insert(node.to_string(), index);
    events.push(CacheEvent::Grant {
        node: node.to_string(),
        key: key.to_string(),
        state,
        value: value.clone(),
        version,
        fresh: dirty,
        dirty,
        token: request.token,
        invalidated_at: entry.invalidated_at,
        granted_at: index,
        regrant,
    });
    CacheReply::Granted { state, value, version, invalidated }
}
