//! Cycle search in the wait-for graph: an iterative depth-first search.
//!
//! The graph is given as a function from a client to its outgoing edges, so the table does
//! not have to materialise it. No recursion: a long chain of waiters cannot overflow the
//! stack.

use std::collections::BTreeSet;

use super::types::WaitEdge;

/// Finds a cycle through `start`: a path of edges from `start` back to `start`.
///
/// `edges(c)` lists the edges leaving client `c`. Returns the cycle's edges in order, the
/// first leaving `start` and the last entering it, or `None` when `start` is on no cycle.
pub fn find_cycle(start: &str, edges: impl Fn(&str) -> Vec<WaitEdge>) -> Option<Vec<WaitEdge>> {
    // Each frame is a node on the current path with the edges still to try from it.
    let mut path: Vec<WaitEdge> = Vec::new();
    let mut frames: Vec<std::vec::IntoIter<WaitEdge>> = vec![edges(start).into_iter()];
    // Nodes fully explored without finding `start`: they cannot lead there later either.
    let mut dead: BTreeSet<String> = BTreeSet::new();
    let mut on_path: BTreeSet<String> = BTreeSet::from([start.to_string()]);
    while let Some(frame) = frames.last_mut() {
        match frame.next() {
            Some(edge) if edge.waits_for == start => {
                path.push(edge);
                return Some(path);
            }
            Some(edge) => {
                if dead.contains(&edge.waits_for) || on_path.contains(&edge.waits_for) {
                    continue;
                }
                on_path.insert(edge.waits_for.clone());
                frames.push(edges(&edge.waits_for).into_iter());
                path.push(edge);
            }
            None => {
                frames.pop();
                if let Some(edge) = path.pop() {
                    on_path.remove(&edge.waits_for);
                    dead.insert(edge.waits_for);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn graph(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Vec<WaitEdge> {
        let mut adj: BTreeMap<String, Vec<WaitEdge>> = BTreeMap::new();
        for (from, to) in pairs {
            adj.entry(from.to_string()).or_default().push(WaitEdge {
                client_id: from.to_string(),
                lock: format!("{from}->{to}"),
                waits_for: to.to_string(),
            });
        }
        move |c| adj.get(c).cloned().unwrap_or_default()
    }

    fn clients(cycle: &[WaitEdge]) -> Vec<&str> {
        cycle.iter().map(|e| e.client_id.as_str()).collect()
    }

    #[test]
    fn two_and_three_cycles_are_found_in_order() {
        let two = find_cycle("a", graph(&[("a", "b"), ("b", "a")])).expect("2-cycle");
        assert_eq!(clients(&two), vec!["a", "b"]);
        let three = find_cycle("a", graph(&[("a", "b"), ("b", "c"), ("c", "a")])).expect("3-cycle");
        assert_eq!(clients(&three), vec!["a", "b", "c"]);
        assert_eq!(three.last().map(|e| e.waits_for.as_str()), Some("a"));
    }

    #[test]
    fn cycles_not_through_start_and_chains_are_ignored() {
        assert!(find_cycle("a", graph(&[("a", "b"), ("b", "c"), ("c", "b")])).is_none());
        assert!(find_cycle("a", graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_none());
        assert!(find_cycle("a", graph(&[])).is_none());
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let n = 100_000;
        let edges = move |c: &str| {
            let i: usize = c.parse().unwrap_or(0);
            let next = if i + 1 == n { 0 } else { i + 1 };
            vec![WaitEdge { client_id: c.to_string(), lock: "l".into(), waits_for: next.to_string() }]
        };
        let cycle = find_cycle("0", edges).expect("the ring is a cycle");
        assert_eq!(cycle.len(), n);
    }
}
