//! Simulation of several nodes sharing one directory through an ordered log: random
//! operations keep single-writer/multiple-reader and every line equal to the latest write.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const KEYS: [&str; 2] = ["a", "b"];

struct Sim {
    dir: Directory,
    caches: BTreeMap<&'static str, LocalCache>,
    /// The value a linearizable read must return now.
    latest: BTreeMap<&'static str, Option<Value>>,
    log: VecDeque<CacheCommand>,
    /// Log index of the last applied command.
    index: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Read(usize, usize),
    Write(usize, usize, i64),
    Put(usize, usize, i64),
    Evict(usize, usize),
    Flush(usize, usize),
    Revoke(usize),
    Delete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..2usize).prop_map(|(n, k)| Op::Read(n, k)),
        4 => (0..3usize, 0..2usize, any::<i64>()).prop_map(|(n, k, v)| Op::Write(n, k, v)),
        1 => (0..3usize, 0..2usize, any::<i64>()).prop_map(|(n, k, v)| Op::Put(n, k, v)),
        1 => (0..3usize, 0..2usize).prop_map(|(n, k)| Op::Evict(n, k)),
        1 => (0..3usize, 0..2usize).prop_map(|(n, k)| Op::Flush(n, k)),
        1 => (0..3usize).prop_map(Op::Revoke),
        1 => (0..2usize).prop_map(Op::Delete),
    ]
}

impl Sim {
    fn new(capacity: usize) -> Self {
        Self {
            dir: Directory::default(),
            caches: NODES.iter().map(|n| (*n, LocalCache::new(capacity))).collect(),
            latest: KEYS.iter().map(|k| (*k, None)).collect(),
            log: VecDeque::new(),
            index: 0,
        }
    }

    fn cache(&mut self, node: &str) -> &mut LocalCache {
        self.caches.get_mut(node).expect("known node")
    }

    /// Applies the log in order; nodes react to recalls and evictions by proposing more.
    fn drain(&mut self) {
        while let Some(command) = self.log.pop_front() {
            self.index += 1;
            let (_, events) = self.dir.apply(self.index, &command);
            for event in events {
                let node = NODES.iter().copied().find(|n| *n == event.node()).expect("node");
                let evicted = self.cache(node).on_event(&event);
                if let CacheEvent::Recall { key, .. } = &event {
                    let line = self.cache(node).peek(key).cloned();
                    self.log.push_back(CacheCommand::write_back(key, node, line.as_ref(), true));
                }
                if let Some((key, line)) = evicted {
                    self.log.push_back(CacheCommand::evict(key, node, line));
                }
            }
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Read(n, k) => {
                let (node, key) = (NODES[n], KEYS[k]);
                if self.cache(node).read(key).is_none() {
                    self.log.push_back(CacheCommand::GetS { key: key.into(), node: node.into(), token: 0 });
                    self.drain();
                }
                let got = self.cache(node).peek(key).map(|l| l.value.clone());
                if got.as_ref() != Some(&self.latest[key]) {
                    return Err(format!("{node} read {key} = {got:?}, latest is {:?}", self.latest[key]));
                }
            }
            Op::Write(n, k, v) => {
                let (node, key) = (NODES[n], KEYS[k]);
                if self.cache(node).write(key, json!(v), 0) == WriteOutcome::NeedOwnership {
                    // The write travels with the ownership request and happens on the grant.
                    let request = CacheCommand::GetM {
                        key: key.into(),
                        node: node.into(),
                        token: 1,
                        value: Some(json!(v)),
                    };
                    self.log.push_back(request);
                    self.drain();
                }
                self.latest.insert(key, Some(json!(v)));
            }
            Op::Put(n, k, v) => {
                let (node, key) = (NODES[n], KEYS[k]);
                self.log.push_back(CacheCommand::Put {
                    key: key.into(),
                    node: node.into(),
                    value: json!(v),
                    token: 0,
                });
                self.drain();
                self.latest.insert(key, Some(json!(v)));
            }
            Op::Delete(k) => {
                self.log.push_back(CacheCommand::Delete { key: KEYS[k].into() });
                self.drain();
                self.latest.insert(KEYS[k], None);
            }
            Op::Evict(n, k) => {
                let (node, key) = (NODES[n], KEYS[k]);
                if let Some(line) = self.cache(node).remove(key) {
                    self.log.push_back(CacheCommand::evict(key.into(), node, line));
                    self.drain();
                }
            }
            Op::Flush(n, k) => {
                let (node, key) = (NODES[n], KEYS[k]);
                let dirty = self.cache(node).peek(key).filter(|l| l.dirty_since_ms.is_some()).cloned();
                if let Some(line) = dirty {
                    self.log.push_back(CacheCommand::write_back(key, node, Some(&line), false));
                    self.drain();
                }
            }
            Op::Revoke(n) => {
                // The node lost its lease: whatever it had not written back is lost (the
                // documented write-back window), so the latest value is the stored one.
                self.log.push_back(CacheCommand::Revoke { node: NODES[n].into(), token: 0 });
                self.drain();
                for key in KEYS {
                    let stored = self.dir.get(key).and_then(|e| e.value.clone());
                    if self.caches.values().all(|c| c.peek(key).is_none_or(|l| l.dirty_since_ms.is_none())) {
                        self.latest.insert(key, stored);
                    }
                }
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        self.dir.check_invariants()?;
        for key in KEYS {
            let entry = self.dir.get(key).cloned().unwrap_or_default();
            let mut owners = Vec::new();
            for (node, cache) in &self.caches {
                let Some(line) = cache.peek(key) else { continue };
                if line.value != self.latest[key] {
                    return Err(format!(
                        "{node} holds {key} = {:?}, latest {:?}",
                        line.value, self.latest[key]
                    ));
                }
                match line.state {
                    Mesi::Modified | Mesi::Exclusive => owners.push(*node),
                    Mesi::Shared if !entry.sharers.contains(*node) => {
                        return Err(format!("{node} holds {key} in S but is no sharer"));
                    }
                    Mesi::Shared => {}
                }
            }
            if owners.len() > 1 || (owners.len() == 1 && entry.owner.as_deref() != Some(owners[0])) {
                return Err(format!("{key}: owners {owners:?}, directory says {:?}", entry.owner));
            }
            if !owners.is_empty()
                && self.caches.values().any(|c| c.peek(key).is_some_and(|l| l.state == Mesi::Shared))
            {
                return Err(format!("{key}: an owner next to a shared copy"));
            }
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn random_histories_keep_coherence(ops in prop::collection::vec(op(), 1..150), capacity in 1usize..3) {
        let mut sim = Sim::new(capacity);
        for op in &ops {
            let result = sim.step(op);
            prop_assert!(result.is_ok(), "after {op:?}: {result:?}");
        }
    }
}

#[test]
fn read_of_a_remote_modified_line_gets_the_dirty_value_and_both_end_shared() {
    let mut sim = Sim::new(4);
    sim.step(&Op::Write(0, 0, 7)).expect("n1 writes");
    assert_eq!(sim.cache("n1").peek("a").map(|l| l.state), Some(Mesi::Modified));
    sim.step(&Op::Read(1, 0)).expect("n2 reads");
    assert_eq!(sim.cache("n1").peek("a").map(|l| l.state), Some(Mesi::Shared));
    assert_eq!(
        sim.cache("n2").peek("a").map(|l| (l.state, l.value.clone())),
        Some((Mesi::Shared, Some(json!(7))))
    );
    assert_eq!(
        sim.dir.get("a").and_then(|e| e.value.clone()),
        Some(json!(7)),
        "written back on the remote read"
    );
}

#[test]
fn a_write_invalidates_every_other_copy() {
    let mut sim = Sim::new(4);
    sim.step(&Op::Put(0, 0, 1)).expect("put");
    sim.step(&Op::Read(1, 0)).expect("read");
    sim.step(&Op::Read(2, 0)).expect("read");
    sim.step(&Op::Write(2, 0, 9)).expect("n3 writes");
    assert!(sim.cache("n1").peek("a").is_none() && sim.cache("n2").peek("a").is_none());
    assert_eq!(sim.cache("n3").peek("a").map(|l| l.state), Some(Mesi::Modified));
}

#[test]
fn a_miss_with_no_other_copy_is_exclusive_and_the_first_write_is_silent() {
    let mut sim = Sim::new(4);
    sim.step(&Op::Read(0, 1)).expect("read");
    assert_eq!(sim.cache("n1").peek("b").map(|l| l.state), Some(Mesi::Exclusive));
    let log_len = sim.log.len();
    assert_eq!(sim.cache("n1").write("b", json!(3), 5), WriteOutcome::Local, "E -> M needs no log entry");
    assert_eq!(sim.log.len(), log_len);
}

#[test]
fn lru_evicts_the_least_recently_used_line() {
    let mut cache = LocalCache::new(2);
    let line = |v: i64| Line {
        state: Mesi::Shared,
        value: Some(json!(v)),
        version: 1,
        dirty_since_ms: None,
        recalled: false,
        invalidated_at: 0,
        granted_at: 0,
    };
    assert!(cache.install("x", line(1)).is_none());
    assert!(cache.install("y", line(2)).is_none());
    cache.read("x");
    let evicted = cache.install("z", line(3)).map(|(k, _)| k);
    assert_eq!(evicted.as_deref(), Some("y"));
    assert_eq!(cache.stats.evictions, 1);
}

/// Every transition of the specification's MESI diagram, as (setup, action, node, state
/// expected afterwards for n1 and n2).
#[test]
fn transitions_of_the_mesi_diagram() {
    type Case = (&'static str, Vec<Op>, Option<Mesi>, Option<Mesi>);
    let cases: Vec<Case> = vec![
        ("I -> E: local read miss, no other copy", vec![Op::Read(0, 0)], Some(Mesi::Exclusive), None),
        ("E -> M: local write", vec![Op::Read(0, 0), Op::Write(0, 0, 1)], Some(Mesi::Modified), None),
        (
            "I -> S: read miss while another node shares",
            vec![Op::Put(2, 0, 1), Op::Read(1, 0), Op::Read(0, 0)],
            Some(Mesi::Shared),
            Some(Mesi::Shared),
        ),
        (
            "M -> S: write-back on a remote read",
            vec![Op::Write(0, 0, 1), Op::Read(1, 0)],
            Some(Mesi::Shared),
            Some(Mesi::Shared),
        ),
        (
            "E -> S: remote read of a clean line",
            vec![Op::Read(0, 0), Op::Read(1, 0)],
            Some(Mesi::Shared),
            Some(Mesi::Shared),
        ),
        (
            "S -> I: remote write",
            vec![Op::Read(0, 0), Op::Read(1, 0), Op::Write(1, 0, 2)],
            None,
            Some(Mesi::Modified),
        ),
        (
            "M -> I: remote write recalls and invalidates",
            vec![Op::Write(0, 0, 1), Op::Write(1, 0, 2)],
            None,
            Some(Mesi::Modified),
        ),
        (
            "S -> M: local write takes ownership",
            vec![Op::Read(0, 0), Op::Read(1, 0), Op::Write(0, 0, 3)],
            Some(Mesi::Modified),
            None,
        ),
        (
            "M -> I: eviction writes back",
            vec![Op::Write(0, 0, 4), Op::Evict(0, 0), Op::Read(1, 0)],
            None,
            Some(Mesi::Exclusive),
        ),
    ];
    for (name, steps, n1, n2) in cases {
        let mut sim = Sim::new(4);
        for step in &steps {
            sim.step(step).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(sim.cache("n1").peek("a").map(|l| l.state), n1, "{name}: n1");
        assert_eq!(sim.cache("n2").peek("a").map(|l| l.state), n2, "{name}: n2");
    }
}
