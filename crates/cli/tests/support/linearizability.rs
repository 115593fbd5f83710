//! A linearizability checker for a single register (Wing & Gong's search with memoisation):
//! is there an order of the operations, consistent with their real-time order, in which
//! every read returns the latest write before it?

#![allow(dead_code)]

use std::collections::HashSet;
use std::time::Instant;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegOp {
    /// Wrote this value.
    Write(i64),
    /// Read this value (`None`: the register had no value).
    Read(Option<i64>),
}

/// One completed operation with its invocation and completion times.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who did it (for messages).
    pub client: usize,
    /// When it was invoked.
    pub start: Instant,
    /// When it completed.
    pub end: Instant,
    /// What it did.
    pub op: RegOp,
}

/// Returns `Ok` when `history` (at most 64 operations) is linearizable for a register that
/// starts with `initial`, else a description.
pub fn check_register(history: &[Event], initial: Option<i64>) -> Result<(), String> {
    assert!(history.len() <= 64, "the checker handles at most 64 operations");
    let all: u64 = if history.len() == 64 { u64::MAX } else { (1u64 << history.len()) - 1 };
    let mut seen: HashSet<(u64, Option<i64>)> = HashSet::new();
    // Iterative depth-first search over (operations done, register value).
    let mut stack = vec![(0u64, initial)];
    while let Some((done, value)) = stack.pop() {
        if done == all {
            return Ok(());
        }
        if !seen.insert((done, value)) {
            continue;
        }
        // The earliest completion among the remaining operations: an operation may go next
        // only if it started before that (nothing remaining finished before it began).
        let first_end = (0..history.len()).filter(|i| done & (1 << i) == 0).map(|i| history[i].end).min();
        let Some(first_end) = first_end else { continue };
        for (i, event) in history.iter().enumerate() {
            if done & (1 << i) != 0 || event.start > first_end {
                continue;
            }
            match &event.op {
                RegOp::Write(v) => stack.push((done | (1 << i), Some(*v))),
                RegOp::Read(v) if *v == value => stack.push((done | (1 << i), value)),
                RegOp::Read(_) => {}
            }
        }
    }
    Err(format!("no linearization of {} operations: {history:#?}", history.len()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ev(client: usize, start: u64, end: u64, op: RegOp) -> Event {
        let base = Instant::now();
        Event {
            client,
            start: base + Duration::from_millis(start),
            end: base + Duration::from_millis(end),
            op,
        }
    }

    #[test]
    fn the_checker_accepts_and_rejects_what_it_should() {
        let ok = vec![
            ev(0, 0, 10, RegOp::Write(1)),
            ev(1, 5, 15, RegOp::Read(Some(1))),
            ev(1, 20, 30, RegOp::Read(Some(1))),
        ];
        assert!(check_register(&ok, None).is_ok());
        let concurrent = vec![ev(0, 0, 10, RegOp::Write(1)), ev(1, 2, 8, RegOp::Read(None))];
        assert!(check_register(&concurrent, None).is_ok(), "a concurrent read may see the old value");
        let stale = vec![ev(0, 0, 10, RegOp::Write(1)), ev(1, 20, 30, RegOp::Read(None))];
        assert!(check_register(&stale, None).is_err(), "a read after a completed write must see it");
        let back = vec![
            ev(0, 0, 10, RegOp::Write(1)),
            ev(0, 11, 20, RegOp::Write(2)),
            ev(1, 21, 30, RegOp::Read(Some(2))),
            ev(1, 31, 40, RegOp::Read(Some(1))),
        ];
        assert!(check_register(&back, None).is_err(), "reads cannot go back in time");
    }
}
