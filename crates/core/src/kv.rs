//! A replicated key-value store: the smallest useful state machine of group 0.
//!
//! It gives operators and tests a plain linearizable register per key and lets
//! `sinkron bench write` measure group 0's write path without a higher-level protocol in the
//! way. Values are JSON; a value's version is the revision of the command that wrote it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The value.
    pub value: serde_json::Value,
    /// Revision of the write that stored it.
    pub version: u64,
    /// Leader timestamp of that write, in ms since the Unix epoch.
    pub written_at_ms: u64,
}

/// A change of the key-value store, in the order applied: what watches and blocking reads
/// follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvEvent {
    /// The key.
    pub key: String,
    /// The new value; `None` for a delete.
    pub value: Option<serde_json::Value>,
    /// The revision of the change.
    pub version: u64,
}

/// The key-value map. `BTreeMap` keeps iteration, and so snapshots, deterministic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvStore {
    entries: BTreeMap<String, KvEntry>,
}

impl KvStore {
    /// Stores `value` under `key`, written by the command of revision `revision`.
    pub fn put(&mut self, key: String, value: serde_json::Value, revision: u64, at_ms: u64) -> u64 {
        self.entries.insert(key, KvEntry { value, version: revision, written_at_ms: at_ms });
        revision
    }

    /// Removes `key`; tells whether it existed.
    pub fn delete(&mut self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// The entry stored under `key`.
    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.entries.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every version is at most `applied`, the last log index applied.
    pub fn check_invariants(&self, applied: u64) -> Result<(), String> {
        match self.entries.iter().find(|(_, e)| e.version > applied) {
            Some((k, e)) => {
                Err(format!("key {k:?} has version {} beyond applied index {applied}", e.version))
            }
            None => Ok(()),
        }
    }
}
