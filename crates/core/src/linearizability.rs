//! A linearizability checker for one register, after Wing & Gong with Lowe's memoisation:
//! is there an order of the operations, consistent with their real-time order, in which
//! every read returns the latest write before it?
//!
//! Operations whose outcome is unknown (a write that timed out) have no completion time:
//! they may take effect at any point after their invocation, or never. Reads with an
//! unknown outcome tell nothing and should be left out.
//!
//! It is pure and lives in core so that both the deterministic cache model
//! (`cache::model`) and the fault-injection harness over real processes use the same one.

use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegOp {
    /// Wrote this value.
    Write(i64),
    /// Removed the value.
    Delete,
    /// Read this value (`None`: the register had no value).
    Read(Option<i64>),
    /// May have set the register to this value (`None`: emptied it), or done nothing:
    /// a write that a fault may make happen, such as the revocation of a write-back
    /// owner, which restores the stored value if the owner had one not written back. If
    /// it happens, it happens between its start and its end.
    Restore(Option<i64>),
}

impl RegOp {
    /// What the operation leaves in the register, if it changes it.
    fn written(&self) -> Option<Option<i64>> {
        match self {
            Self::Write(v) => Some(Some(*v)),
            Self::Delete => Some(None),
            Self::Restore(v) => Some(*v),
            Self::Read(_) => None,
        }
    }
}

/// One operation with its invocation and completion times (any unit, one clock).
#[derive(Debug, Clone)]
pub struct Event {
    /// When it was invoked.
    pub start: u64,
    /// When it completed; `None` when the outcome is unknown.
    pub end: Option<u64>,
    /// What it did.
    pub op: RegOp,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An order exists.
    Linearizable,
    /// No order exists; a description.
    Violation(String),
    /// The search gave up after exploring its budget of states.
    Unknown,
}

/// Most search states explored before answering [`Verdict::Unknown`].
const STATE_BUDGET: usize = 300_000;

/// Checks `history` for a register that starts as `initial`.
pub fn check_register(history: &[Event], initial: Option<i64>) -> Verdict {
    // A write of unknown outcome that no read observed may be left out: wherever it could
    // go, no read sits between it and the next write, so dropping it keeps an order valid.
    // (Written values are assumed unique, as the workloads make them.)
    let observed: HashSet<i64> = history
        .iter()
        .filter_map(|e| match e.op {
            RegOp::Read(Some(v)) => Some(v),
            _ => None,
        })
        .collect();
    let mut events: Vec<&Event> = history
        .iter()
        .filter(|e| match e.op {
            RegOp::Write(v) => e.end.is_some() || observed.contains(&v),
            // An unknown delete is kept (which of them a read of "no value" saw is unknown).
            RegOp::Delete | RegOp::Restore(_) => true,
            RegOp::Read(_) => e.end.is_some(),
        })
        .collect();
    events.sort_by_key(|e| e.start);
    let n = events.len();
    let words = n.div_ceil(64).max(1);
    let required: Vec<bool> =
        events.iter().map(|e| e.end.is_some() && !matches!(e.op, RegOp::Restore(_))).collect();
    let all_required = |done: &[u64]| (0..n).all(|i| !required[i] || bit(done, i));
    let mut seen: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(Vec<u64>, Option<i64>)> = vec![(vec![0u64; words], initial)];
    while let Some((mut done, value)) = stack.pop() {
        // A read that may go next and matches the register is taken at once: reads do not
        // change the register, and taking one only lifts its completion time as a bound
        // on what may go next, so no linearization is lost.
        loop {
            let read = candidates(&events, &done).find(|i| events[*i].op == RegOp::Read(value));
            let Some(i) = read else { break };
            done[i / 64] |= 1 << (i % 64);
        }
        if all_required(&done) {
            return Verdict::Linearizable;
        }
        if seen.len() >= STATE_BUDGET {
            return Verdict::Unknown;
        }
        if !seen.insert((done.clone(), value)) {
            continue;
        }
        // Branch on the writes that may go next; a write some pending read waits for is
        // tried first (pushed last).
        let wanted: Vec<i64> = (0..n)
            .filter(|i| !bit(&done, *i))
            .filter_map(|i| match events[i].op {
                RegOp::Read(Some(v)) => Some(v),
                _ => None,
            })
            .collect();
        let mut writes: Vec<(bool, usize, Option<i64>)> = candidates(&events, &done)
            .filter_map(|i| {
                events[i].op.written().map(|v| (v.is_some() && wanted.first() == v.as_ref(), i, v))
            })
            .collect();
        writes.sort();
        for (_, i, v) in writes {
            let mut next = done.clone();
            next[i / 64] |= 1 << (i % 64);
            stack.push((next, v));
        }
    }
    Verdict::Violation(format!("no linearization of these {n} operations: {events:?}"))
}

/// The earliest time at which `history` is already not linearizable, so a report can show
/// the few operations around it instead of the whole history; `None` when it is
/// linearizable (or the search gave up).
///
/// The history cut at `t` keeps the operations invoked by `t`, and those not completed by
/// then lose their completion (they become of unknown outcome). A cut of a linearizable
/// history is linearizable (every write placed before a read completed by `t` was invoked
/// before it), so the failing cuts are the ones after some time, which is found by halving.
pub fn first_violation(history: &[Event], initial: Option<i64>) -> Option<u64> {
    let cut = |t: u64| -> Vec<Event> {
        history
            .iter()
            .filter(|e| e.start <= t)
            .map(|e| Event { start: e.start, end: e.end.filter(|end| *end <= t), op: e.op.clone() })
            .collect()
    };
    let fails = |t: u64| matches!(check_register(&cut(t), initial), Verdict::Violation(_));
    let mut ends: Vec<u64> = history.iter().filter_map(|e| e.end).collect();
    ends.sort_unstable();
    ends.dedup();
    if !ends.last().is_some_and(|t| fails(*t)) {
        return None;
    }
    // ends[hi] fails; find the first that does.
    let (mut lo, mut hi) = (0usize, ends.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(ends[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(ends[lo])
}

/// The operations that may go next: not done, and invoked before every remaining required
/// operation with a known completion finished. A [`RegOp::Restore`] that has not happened
/// yet may still happen only if it did not end before an operation already placed began.
fn candidates<'a>(events: &'a [&Event], done: &'a [u64]) -> impl Iterator<Item = usize> + 'a {
    let optional = |i: usize| matches!(events[i].op, RegOp::Restore(_));
    let first_end =
        (0..events.len()).filter(|i| !bit(done, *i) && !optional(*i)).filter_map(|i| events[i].end).min();
    let latest_start = (0..events.len()).filter(|i| bit(done, *i)).map(|i| events[i].start).max();
    (0..events.len()).filter(move |i| {
        !bit(done, *i)
            && first_end.is_none_or(|end| events[*i].start <= end)
            && (!optional(*i) || events[*i].end.is_none_or(|end| latest_start.is_none_or(|s| s <= end)))
    })
}

fn bit(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(start: u64, end: u64, op: RegOp) -> Event {
        Event { start, end: Some(end), op }
    }

    #[test]
    fn the_checker_accepts_and_rejects_what_it_should() {
        let ok =
            [ev(0, 10, RegOp::Write(1)), ev(5, 15, RegOp::Read(Some(1))), ev(20, 30, RegOp::Read(Some(1)))];
        assert_eq!(check_register(&ok, None), Verdict::Linearizable);
        let concurrent = [ev(0, 10, RegOp::Write(1)), ev(2, 8, RegOp::Read(None))];
        assert_eq!(
            check_register(&concurrent, None),
            Verdict::Linearizable,
            "a concurrent read may see the old value"
        );
        let stale = [ev(0, 10, RegOp::Write(1)), ev(20, 30, RegOp::Read(None))];
        assert!(
            matches!(check_register(&stale, None), Verdict::Violation(_)),
            "a read after a write must see it"
        );
        let back = [
            ev(0, 10, RegOp::Write(1)),
            ev(11, 20, RegOp::Write(2)),
            ev(21, 30, RegOp::Read(Some(2))),
            ev(31, 40, RegOp::Read(Some(1))),
        ];
        assert!(matches!(check_register(&back, None), Verdict::Violation(_)), "reads cannot go back in time");
    }

    #[test]
    fn an_unknown_write_may_happen_late_or_never() {
        let unknown = Event { start: 0, end: None, op: RegOp::Write(7) };
        let late = [unknown.clone(), ev(20, 30, RegOp::Read(None)), ev(40, 50, RegOp::Read(Some(7)))];
        assert_eq!(check_register(&late, None), Verdict::Linearizable);
        let never = [unknown.clone(), ev(20, 30, RegOp::Read(None))];
        assert_eq!(check_register(&never, None), Verdict::Linearizable);
        let flicker = [unknown, ev(20, 30, RegOp::Read(Some(7))), ev(40, 50, RegOp::Read(None))];
        assert!(
            matches!(check_register(&flicker, None), Verdict::Violation(_)),
            "once seen, it cannot vanish"
        );
    }

    #[test]
    fn a_delete_empties_the_register() {
        let gone = [ev(0, 10, RegOp::Write(1)), ev(11, 20, RegOp::Delete), ev(21, 30, RegOp::Read(None))];
        assert_eq!(check_register(&gone, None), Verdict::Linearizable);
        let stale = [ev(0, 10, RegOp::Write(1)), ev(11, 20, RegOp::Delete), ev(21, 30, RegOp::Read(Some(1)))];
        assert!(matches!(check_register(&stale, None), Verdict::Violation(_)), "a read after a delete");
    }

    #[test]
    fn the_first_violation_is_where_the_stale_read_completed() {
        let history = [
            ev(0, 10, RegOp::Write(1)),
            ev(11, 20, RegOp::Read(Some(1))),
            ev(21, 30, RegOp::Write(2)),
            ev(31, 40, RegOp::Read(Some(2))),
            ev(41, 50, RegOp::Read(Some(1))),
            ev(51, 60, RegOp::Read(Some(1))),
        ];
        assert_eq!(first_violation(&history, None), Some(50));
        assert_eq!(first_violation(&history[..4], None), None);
    }

    #[test]
    fn a_restore_may_happen_inside_its_window_or_never() {
        let restore = Event { start: 30, end: Some(40), op: RegOp::Restore(Some(1)) };
        // 2 was lost to the restore of 1.
        let lost = [
            ev(0, 10, RegOp::Write(1)),
            ev(11, 20, RegOp::Write(2)),
            ev(21, 25, RegOp::Read(Some(2))),
            restore.clone(),
            ev(50, 60, RegOp::Read(Some(1))),
        ];
        assert_eq!(check_register(&lost, None), Verdict::Linearizable);
        // Or nothing was lost.
        let kept = [
            ev(0, 10, RegOp::Write(1)),
            ev(11, 20, RegOp::Write(2)),
            restore.clone(),
            ev(50, 60, RegOp::Read(Some(2))),
        ];
        assert_eq!(check_register(&kept, None), Verdict::Linearizable);
        // But it cannot happen after its window: 2 read at 45-48, then 1 again.
        let late = [
            ev(0, 10, RegOp::Write(1)),
            ev(11, 20, RegOp::Write(2)),
            restore,
            ev(45, 48, RegOp::Read(Some(2))),
            ev(50, 60, RegOp::Read(Some(1))),
        ];
        assert!(matches!(check_register(&late, None), Verdict::Violation(_)));
    }

    #[test]
    fn long_histories_are_checked() {
        // 200 sequential writes each read back: more than one word of the bitset.
        let mut history = Vec::new();
        for i in 0..200u64 {
            history.push(ev(i * 10, i * 10 + 3, RegOp::Write(i as i64)));
            history.push(ev(i * 10 + 4, i * 10 + 6, RegOp::Read(Some(i as i64))));
        }
        assert_eq!(check_register(&history, None), Verdict::Linearizable);
        history.push(ev(5_000, 5_001, RegOp::Read(Some(3))));
        assert!(matches!(check_register(&history, None), Verdict::Violation(_)));
    }
}
