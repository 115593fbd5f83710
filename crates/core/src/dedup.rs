//! Replies to recent client request ids, so a retried request is applied once.
//!
//! The window is a FIFO of the last [`DEDUP_WINDOW`] ids. Lookups go through a hash index;
//! that index is never iterated and never serialised (it is rebuilt from the FIFO when a
//! snapshot is loaded), so it cannot make replicas or snapshots differ.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::{Request, Response};
use crate::limits::DEDUP_WINDOW;

/// The de-duplication window.
#[derive(Debug, Clone, Default)]
pub struct Dedup {
    order: VecDeque<(String, u64, Response)>,
    index: HashMap<String, usize>,
    /// Number of ids ever evicted; positions in `index` are absolute (`evicted + offset`).
    evicted: usize,
}

impl Dedup {
    /// The fingerprint of the request first seen with `id` and the reply it got, if `id` is
    /// still in the window.
    pub fn get(&self, id: &str) -> Option<(u64, &Response)> {
        let absolute = *self.index.get(id)?;
        self.order.get(absolute - self.evicted).map(|(_, f, r)| (*f, r))
    }

    /// Records the reply to `id` (a request with `fingerprint`), evicting the oldest id
    /// beyond the window.
    pub fn insert(&mut self, id: String, fingerprint: u64, response: Response) {
        self.index.insert(id.clone(), self.evicted + self.order.len());
        self.order.push_back((id, fingerprint, response));
        while self.order.len() > DEDUP_WINDOW {
            if let Some((old, _, _)) = self.order.pop_front() {
                self.index.remove(&old);
                self.evicted += 1;
            }
        }
    }

    /// The reply a retried `request` must get again, if its id was seen: the first reply
    /// for the same command, a rejection for an id reused for another command. `None` when
    /// the request is new (or carries no id) and must be applied.
    pub fn replay(&self, request: &Request) -> Option<Response> {
        let id = request.request_id.as_deref()?;
        let (seen, previous) = self.get(id)?;
        Some(if seen == request.fingerprint() {
            previous.clone()
        } else {
            Response::Rejected {
                reason: format!("request_id {id:?} was already used for a different request"),
            }
        })
    }

    /// Remembers the reply to `request` if it carries an id, in its small form
    /// ([`Response::remembered`]).
    pub fn record(&mut self, request: &Request, response: &Response) {
        if let Some(id) = &request.request_id {
            self.insert(id.clone(), request.fingerprint(), response.remembered());
        }
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The index matches the FIFO and the window is respected.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.order.len() > DEDUP_WINDOW || self.index.len() != self.order.len() {
            return Err(format!(
                "dedup holds {} ids and {} index entries",
                self.order.len(),
                self.index.len()
            ));
        }
        for (offset, (id, _, _)) in self.order.iter().enumerate() {
            if self.index.get(id) != Some(&(self.evicted + offset)) {
                return Err(format!("dedup index of {id:?} is wrong"));
            }
        }
        Ok(())
    }
}

/// Two windows are equal when they remember the same ids and replies in the same order;
/// the index is derived data.
impl PartialEq for Dedup {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Serialize for Dedup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.order.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Dedup {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let order: VecDeque<(String, u64, Response)> = VecDeque::deserialize(deserializer)?;
        let index = order.iter().enumerate().map(|(i, (id, _, _))| (id.clone(), i)).collect();
        Ok(Self { order, index, evicted: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trip_after_eviction_keeps_lookups() {
        let mut dedup = Dedup::default();
        for i in 0..DEDUP_WINDOW + 10 {
            dedup.insert(format!("r{i}"), i as u64, Response::KvDelete { existed: i % 2 == 0 });
        }
        assert!(dedup.get("r0").is_none(), "evicted");
        assert_eq!(dedup.get("r10"), Some((10, &Response::KvDelete { existed: true })));
        let restored: Dedup =
            serde_json::from_slice(&serde_json::to_vec(&dedup).expect("encode")).expect("decode");
        assert_eq!(restored, dedup);
        restored.check_invariants().expect("invariants after restore");
        assert_eq!(restored.get("r11"), Some((11, &Response::KvDelete { existed: false })));
        dedup.check_invariants().expect("invariants");
    }
}
