//! Checkers: what a history must satisfy.
//!
//! - Locks: fences are unique per lock and grow in real-time order of grants; no two holds
//!   overlap while the service promised one of them exclusivity (from the grant's answer to
//!   the earlier of its release and its lease end); and the fenced resource never turned down
//!   a write whose lease was still promised (that would mean a newer token was handed out
//!   during the promise). Puts that carried a fence to Sinkron itself were never applied
//!   with a stale fence: a lock's fences never go down in the order applied, and no put
//!   was applied after a newer grant was answered.
//! - Cache: every key is a linearizable register ([`crate::linearizability`]).
//! - Queues: every acknowledged send is delivered at least once, nothing is delivered that
//!   was never sent; duplicates are counted, not forbidden (at-least-once). But no message
//!   is delivered by a receive that began after an ack of it was confirmed, and no message
//!   is delivered twice so close together that the first delivery's invisibility must still
//!   have held.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Op, Outcome};
use crate::linearizability::{check_register, first_violation, Event, RegOp, Verdict};
use crate::revocations::Revocation;
use crate::workloads::FencedWrite;

/// Slack for comparing the service's clock with ours (the same machine's clock).
const CLOCK_SLACK_MS: u64 = 5;

/// The result of a check.
#[derive(Debug, Default)]
pub struct Report {
    /// Violations, each described.
    pub violations: Vec<String>,
    /// Notes that are not violations (duplicates, inconclusive searches).
    pub notes: Vec<String>,
}

/// One granted hold as the client saw it.
#[derive(Debug, Clone)]
struct Hold {
    lock: String,
    process: usize,
    exclusive: bool,
    fence: u64,
    invoked_us: u64,
    granted_us: u64,
    /// When the promise ends, in run microseconds.
    until_us: u64,
}

/// Checks a lock history. `started_unix_ms` converts run time to the service's clock.
pub fn locks(ops: &[Op], writes: &[FencedWrite], started_unix_ms: u64) -> Report {
    let mut report = Report::default();
    let to_us = |unix_ms: u64| unix_ms.saturating_sub(started_unix_ms).saturating_mul(1_000);
    let mut holds: Vec<Hold> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (Some("acquire"), Outcome::Ok { value }) = (Some(op.f.as_str()), &op.outcome) else { continue };
        let lock = op.input["name"].as_str().unwrap_or_default().to_string();
        let expires = value["expires_at_ms"].as_u64().unwrap_or(0);
        // The promise ends at the lease end or when the holder starts to release it.
        let released = ops[i + 1..]
            .iter()
            .find(|o| o.process == op.process && o.f == "release" && o.input["name"] == op.input["name"])
            .map(|o| o.invoked_us);
        let until_us = released.map_or(to_us(expires), |r| r.min(to_us(expires)));
        holds.push(Hold {
            lock,
            process: op.process,
            exclusive: op.input["mode"] == "exclusive",
            fence: value["fence"].as_u64().unwrap_or(0),
            invoked_us: op.invoked_us,
            granted_us: op.completed_us,
            until_us: until_us.saturating_sub(CLOCK_SLACK_MS * 1_000),
        });
    }
    // A client asking again for a lock it still holds gets the same grant back (same
    // fence, lease refreshed): one hold, from the first answer to the latest promise.
    let mut merged: BTreeMap<(String, usize, u64), Hold> = BTreeMap::new();
    for hold in holds.iter().cloned() {
        merged
            .entry((hold.lock.clone(), hold.process, hold.fence))
            .and_modify(|h| {
                h.invoked_us = h.invoked_us.min(hold.invoked_us);
                h.granted_us = h.granted_us.min(hold.granted_us);
                h.until_us = h.until_us.max(hold.until_us);
                h.exclusive |= hold.exclusive;
            })
            .or_insert(hold);
    }
    learn_from_holder_lists(ops, &mut merged);
    let mut by_lock: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for hold in merged.values() {
        by_lock.entry(hold.lock.as_str()).or_default().push(hold);
    }
    for (lock, holds) in &by_lock {
        // A client asking again for a lock it holds gets its own grant back: same fence.
        let mut fences: BTreeMap<u64, usize> = BTreeMap::new();
        for h in holds {
            if *fences.entry(h.fence).or_insert(h.process) != h.process {
                report.violations.push(format!("{lock}: fence {} granted to two clients", h.fence));
            }
        }
        for a in holds {
            for b in holds {
                let same_grant = a.process == b.process && a.fence == b.fence;
                if a.granted_us < b.invoked_us && a.fence >= b.fence && !same_grant {
                    report.violations.push(format!(
                        "{lock}: grant to c{} (fence {}) answered before c{} asked, yet c{} got fence {}",
                        a.process, a.fence, b.process, b.process, b.fence
                    ));
                }
                let overlap = a.granted_us < b.until_us && b.granted_us < a.until_us;
                if a.fence < b.fence && (a.exclusive || b.exclusive) && overlap {
                    report.violations.push(format!(
                        "{lock}: c{} (fence {}) and c{} (fence {}) held it together while exclusivity was promised",
                        a.process, a.fence, b.process, b.fence
                    ));
                }
            }
        }
    }
    for w in writes.iter().filter(|w| !w.accepted) {
        if w.at_ms + CLOCK_SLACK_MS < w.lease_until_ms {
            report.violations.push(format!(
                "{}: the resource refused c{}'s fence {} {} ms before its lease ended: a newer token was issued during the lease",
                w.lock,
                w.process,
                w.fence,
                w.lease_until_ms - w.at_ms
            ));
        }
    }
    let (applied, refused) = check_fenced_puts(ops, &holds, &mut report);
    report.notes.push(format!(
        "{} grants, {} fenced writes ({} refused as stale); {applied} fenced puts applied, {refused} refused by Sinkron",
        holds.len(),
        writes.len(),
        writes.iter().filter(|w| !w.accepted).count()
    ));
    report
}

/// An answer lists every holder of its lock: a hold seen there was granted by the time of
/// that answer, even when its own client learned of it only later (its first acquire timed
/// out undecided, and an acquire asked again got the same grant back). Such a hold's grant
/// time comes down to the first answer that lists it, and its request may be the earliest
/// undecided acquire of that client and lock asked before then.
fn learn_from_holder_lists(ops: &[Op], merged: &mut BTreeMap<(String, usize, u64), Hold>) {
    for op in ops.iter().filter(|o| o.f == "acquire") {
        let Outcome::Ok { value } = &op.outcome else { continue };
        let lock = op.input["name"].as_str().unwrap_or_default();
        for holder in value["holders"].as_array().into_iter().flatten() {
            let client = holder["client_id"].as_str().unwrap_or_default();
            let (Some(process), Some(fence)) =
                (client.strip_prefix('c').and_then(|n| n.parse::<usize>().ok()), holder["fence"].as_u64())
            else {
                continue;
            };
            let Some(hold) = merged.get_mut(&(lock.to_string(), process, fence)) else { continue };
            if op.completed_us >= hold.granted_us {
                continue;
            }
            hold.granted_us = op.completed_us;
            let undecided = ops.iter().find(|o| {
                o.process == process
                    && o.f == "acquire"
                    && o.input["name"] == op.input["name"]
                    && matches!(o.outcome, Outcome::Info { .. })
                    && o.invoked_us < op.completed_us
            });
            if let Some(asked) = undecided {
                hold.invoked_us = hold.invoked_us.min(asked.invoked_us);
            }
        }
    }
}

/// Sinkron's own fence check: of the puts that carried a fence, none that was applied may
/// have been stale. In the order applied (their versions), a lock's fences never go down;
/// and no put was applied whose fence was superseded by a grant answered before the put
/// was sent. Returns how many were applied and refused.
fn check_fenced_puts(ops: &[Op], holds: &[Hold], report: &mut Report) -> (usize, usize) {
    let mut applied: BTreeMap<String, Vec<(u64, u64, usize, u64)>> = BTreeMap::new();
    let mut refused = 0;
    for op in ops.iter().filter(|o| o.f == "fenced_put") {
        let lock = op.input["name"].as_str().unwrap_or_default().to_string();
        let fence = op.input["fence"].as_u64().unwrap_or(0);
        match &op.outcome {
            Outcome::Ok { value } => {
                let version = value["version"].as_u64().unwrap_or(0);
                applied.entry(lock).or_default().push((version, fence, op.process, op.invoked_us));
            }
            Outcome::Fail { .. } => refused += 1,
            Outcome::Info { .. } => {}
        }
    }
    let mut count = 0;
    for (lock, puts) in &mut applied {
        puts.sort();
        count += puts.len();
        for pair in puts.windows(2) {
            let ((v1, f1, p1, _), (v2, f2, p2, _)) = (pair[0], pair[1]);
            if f2 < f1 {
                report.violations.push(format!(
                    "{lock}: c{p2}'s put with fence {f2} was applied at version {v2}, after c{p1}'s with fence {f1} at version {v1}: a stale fence was accepted"
                ));
            }
        }
        for &(version, fence, process, invoked_us) in puts.iter() {
            let newer =
                holds.iter().find(|h| h.lock == *lock && h.fence > fence && h.granted_us < invoked_us);
            if let Some(h) = newer {
                report.violations.push(format!(
                    "{lock}: c{process}'s put with fence {fence} was applied (version {version}) although fence {} was granted to c{} before the put was sent",
                    h.fence, h.process
                ));
            }
        }
    }
    (count, refused)
}

/// Checks a cache history: each key must be a linearizable register.
pub fn cache(ops: &[Op]) -> Report {
    registers(ops, Vec::new())
}

/// Checks a write-back cache history: linearizable once every revocation of a key's
/// owner may restore the value the directory then stored, at one moment between the
/// revocation's proposal and `until_us` (docs/cache.md, "Write-back under partitions").
/// Nothing else may be lost. `revocations` and the history share one clock (microseconds
/// since the history started).
pub fn cache_write_back(ops: &[Op], revocations: &[Revocation]) -> Report {
    let mut extra: Vec<(String, Event)> = Vec::new();
    for r in revocations {
        let op = RegOp::Restore(r.stored);
        extra.push((r.key.clone(), Event { start: r.proposed_us, end: Some(r.until_us), op }));
    }
    let mut report = registers(ops, extra);
    report.notes.push(format!("{} revocations of owners counted as possible restores", revocations.len()));
    report
}

/// Checks every key as a linearizable register, with `extra` events (per key) that no
/// client issued.
fn registers(ops: &[Op], extra: Vec<(String, Event)>) -> Report {
    let mut report = Report::default();
    let mut keys: BTreeMap<String, Vec<(Event, Option<&Op>)>> = BTreeMap::new();
    for (key, event) in extra {
        keys.entry(key).or_default().push((event, None));
    }
    for op in ops {
        let key = op.input["key"].as_str().unwrap_or_default().to_string();
        let event = match (op.f.as_str(), &op.outcome) {
            ("write", Outcome::Ok { .. }) => Event {
                start: op.invoked_us,
                end: Some(op.completed_us),
                op: RegOp::Write(op.input["value"].as_i64().unwrap_or(0)),
            },
            ("write", Outcome::Info { .. }) => Event {
                start: op.invoked_us,
                end: None,
                op: RegOp::Write(op.input["value"].as_i64().unwrap_or(0)),
            },
            ("delete", Outcome::Ok { .. }) => {
                Event { start: op.invoked_us, end: Some(op.completed_us), op: RegOp::Delete }
            }
            ("delete", Outcome::Info { .. }) => Event { start: op.invoked_us, end: None, op: RegOp::Delete },
            ("read", Outcome::Ok { value }) => {
                Event { start: op.invoked_us, end: Some(op.completed_us), op: RegOp::Read(value.as_i64()) }
            }
            _ => continue,
        };
        keys.entry(key).or_default().push((event, Some(op)));
    }
    for (key, entries) in &keys {
        let events: Vec<Event> = entries.iter().map(|(e, _)| e.clone()).collect();
        match check_register(&events, None) {
            Verdict::Linearizable => {}
            Verdict::Violation(_) => {
                report
                    .violations
                    .push(format!("{key} is not linearizable: {}", around_violation(&events, entries)));
            }
            Verdict::Unknown => {
                report.notes.push(format!("{key}: the search gave up ({} operations)", events.len()))
            }
        }
    }
    report.notes.push(format!(
        "{} keys, {} operations checked",
        keys.len(),
        keys.values().map(Vec::len).sum::<usize>()
    ));
    report
}

/// Names the moment a register's history stops being linearizable and lists the
/// operations of the half second before it (the whole history is in `history.json`).
fn around_violation(events: &[Event], entries: &[(Event, Option<&Op>)]) -> String {
    const BEFORE_US: u64 = 500_000;
    let Some(at) = first_violation(events, None) else {
        return format!("no linearization of its {} operations", events.len());
    };
    let mut lines = vec![format!(
        "no linearization once the operation that completed at {:.3} s is in; the operations of the {} ms before:",
        at as f64 / 1e6,
        BEFORE_US / 1000
    )];
    for (event, op) in entries.iter().filter(|(e, _)| e.start <= at && e.end.unwrap_or(at) + BEFORE_US >= at)
    {
        let Some(op) = op else {
            lines.push(format!(
                "  {:.3}-{:.3} a revocation of the owner: {:?}",
                event.start as f64 / 1e6,
                event.end.unwrap_or(at) as f64 / 1e6,
                event.op
            ));
            continue;
        };
        let value = match (&op.f[..], &op.outcome) {
            ("write", _) => op.input["value"].to_string(),
            (_, Outcome::Ok { value }) => format!("-> {value}"),
            _ => String::new(),
        };
        let outcome = match &op.outcome {
            Outcome::Ok { .. } => "ok",
            Outcome::Fail { .. } => "failed",
            Outcome::Info { .. } => "unknown",
        };
        lines.push(format!(
            "  {:.3}-{:.3} p{} node{} {} {value} ({outcome})",
            op.invoked_us as f64 / 1e6,
            op.completed_us as f64 / 1e6,
            op.process,
            op.node + 1,
            op.f
        ));
    }
    lines.join("\n")
}

/// The messages a queue receive delivered: a plain `receive` answers them, a
/// `receive-acking` answers them beside the outcome of the acks it carried.
fn deliveries(op: &Op) -> &[serde_json::Value] {
    let Outcome::Ok { value } = &op.outcome else { return &[] };
    let messages = match op.f.as_str() {
        "receive" => value,
        "receive-acking" => &value[0],
        _ => return &[],
    };
    messages.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The receipts whose ack `op` confirmed: a single `ack` that acked one, or the carried
/// acks of a `receive-acking` that were not reported as failed.
fn confirmed_acks(op: &Op) -> Vec<String> {
    let Outcome::Ok { value } = &op.outcome else { return Vec::new() };
    match op.f.as_str() {
        "ack" if value["acked"].as_u64() == Some(1) => {
            op.input["receipt"].as_str().map(str::to_string).into_iter().collect()
        }
        "receive-acking" => {
            let failed: BTreeSet<&str> = value[1]["failed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["receipt"].as_str())
                .collect();
            op.input["ack"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .filter(|r| !failed.contains(r))
                .map(str::to_string)
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Ids of acknowledged sends and ids delivered, from a queue history.
pub fn queue_sets(ops: &[Op]) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let mut acked = BTreeSet::new();
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops {
        if let ("send", Outcome::Ok { value }) = (op.f.as_str(), &op.outcome) {
            acked.insert(value["id"].as_str().unwrap_or_default().to_string());
        }
        for m in deliveries(op) {
            *delivered.entry(m["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
    }
    (acked, delivered)
}

/// Checks a queue history.
pub fn queues(ops: &[Op]) -> Report {
    let mut report = Report::default();
    let (acked, delivered) = queue_sets(ops);
    let attempted: BTreeSet<String> =
        ops.iter().filter(|o| o.f == "send").map(|o| o.input["body"].to_string()).collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !delivered.contains_key(*id)).collect();
    if !lost.is_empty() {
        report.violations.push(format!(
            "{} acknowledged sends were never delivered: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        ));
    }
    for op in ops {
        for m in deliveries(op) {
            let body = crate::workloads::Payload::unwrap(&m["body"]);
            if !attempted.contains(&body.to_string()) {
                report.violations.push(format!("message {} with body {body} was never sent", m["id"]));
            }
        }
    }
    let by_id = deliveries_by_id(ops);
    check_ack_accounting(ops, &mut report);
    check_acked_stay_gone(ops, &by_id, &mut report);
    check_invisibility(&by_id, &mut report);
    check_delivery_counts(&by_id, &mut report);
    let duplicates = delivered.values().filter(|n| **n > 1).count();
    report.notes.push(format!(
        "{} sends acknowledged, {} messages delivered, {duplicates} delivered more than once",
        acked.len(),
        delivered.len()
    ));
    report
}

/// One delivery of a message, as a receive's answer showed it.
struct Seen<'a> {
    /// The receive that delivered it.
    op: &'a Op,
    receipt: Option<&'a str>,
    /// Its delivery count.
    count: Option<u64>,
}

/// Every delivery of the history, by message id.
fn deliveries_by_id(ops: &[Op]) -> BTreeMap<&str, Vec<Seen<'_>>> {
    let mut by_id: BTreeMap<&str, Vec<Seen<'_>>> = BTreeMap::new();
    for op in ops {
        for m in deliveries(op) {
            let seen = Seen { op, receipt: m["receipt"].as_str(), count: m["receive_count"].as_u64() };
            by_id.entry(m["id"].as_str().unwrap_or_default()).or_default().push(seen);
        }
    }
    by_id
}

/// Each pair of deliveries of one message, once.
fn pairs<'s, 'a>(seen: &'s [Seen<'a>]) -> impl Iterator<Item = (&'s Seen<'a>, &'s Seen<'a>)> {
    seen.iter().enumerate().flat_map(move |(i, a)| seen[i + 1..].iter().map(move |b| (a, b)))
}

/// A receive that carried acks answers, for every receipt, that it was acked or why not.
fn check_ack_accounting(ops: &[Op], report: &mut Report) {
    for op in ops.iter().filter(|o| o.f == "receive-acking") {
        let Outcome::Ok { value } = &op.outcome else { continue };
        let carried = op.input["ack"].as_array().map_or(0, Vec::len) as u64;
        let acked = value[1]["acked"].as_u64().unwrap_or(0);
        let failed = value[1]["failed"].as_array().map_or(0, Vec::len) as u64;
        if acked + failed != carried {
            report.violations.push(format!(
                "a receive (process {}, node {}) carried {carried} acks and answered {acked} acked and {failed} failed",
                op.process,
                op.node + 1
            ));
        }
    }
}

/// An ack that was confirmed deleted its message: a receive that began afterwards must not
/// deliver it.
fn check_acked_stay_gone(ops: &[Op], by_id: &BTreeMap<&str, Vec<Seen<'_>>>, report: &mut Report) {
    let id_of: BTreeMap<&str, &str> =
        by_id.iter().flat_map(|(id, seen)| seen.iter().filter_map(|s| Some((s.receipt?, *id)))).collect();
    // Per id, the earliest confirmation of an ack of it.
    let mut gone_at: BTreeMap<&str, u64> = BTreeMap::new();
    for op in ops {
        for receipt in confirmed_acks(op) {
            if let Some(id) = id_of.get(receipt.as_str()) {
                let at = gone_at.entry(id).or_insert(op.completed_us);
                *at = (*at).min(op.completed_us);
            }
        }
    }
    for (id, seen) in by_id {
        let Some(at) = gone_at.get(id) else { continue };
        for op in seen.iter().map(|s| s.op).filter(|op| op.invoked_us > *at) {
            report.violations.push(format!(
                "message {id} was delivered by a receive (process {}, node {}) that began {} ms after an ack of it was confirmed",
                op.process,
                op.node + 1,
                (op.invoked_us - at) / 1_000
            ));
        }
    }
}

/// Every delivery of a message counts it once more (the workload never reads a dead-letter
/// queue, where the count starts again): two deliveries with different receipts never share
/// a count, and one that began after another was answered has the higher count. A message
/// handed out again by an entry that a crash lost breaks this, however late it comes.
fn check_delivery_counts(by_id: &BTreeMap<&str, Vec<Seen<'_>>>, report: &mut Report) {
    for (id, seen) in by_id {
        for (a, b) in pairs(seen) {
            let (Some(count_a), Some(count_b), Some(receipt_a), Some(receipt_b)) =
                (a.count, b.count, a.receipt, b.receipt)
            else {
                continue;
            };
            if receipt_a == receipt_b {
                continue;
            }
            let in_order = if a.op.completed_us < b.op.invoked_us {
                Some(((a, count_a), (b, count_b)))
            } else if b.op.completed_us < a.op.invoked_us {
                Some(((b, count_b), (a, count_a)))
            } else {
                None
            };
            match in_order {
                Some(((first, first_count), (later, later_count))) if later_count <= first_count => {
                    report.violations.push(format!(
                        "message {id} was delivered as delivery {later_count} to process {} after delivery {first_count} to process {} was answered",
                        later.op.process, first.op.process
                    ));
                }
                None if count_a == count_b => report.violations.push(format!(
                    "message {id} was delivered twice as delivery {count_a}, to process {} and process {}",
                    a.op.process, b.op.process
                )),
                _ => {}
            }
        }
    }
}

/// A delivery hides its message for the receive's visibility timeout, counted from the
/// entry that handed it out, which lies between the receive's invocation and its answer. Two
/// deliveries of one message whose calls lie so close together that no such pair of
/// entries is far enough apart broke that promise.
fn check_invisibility(by_id: &BTreeMap<&str, Vec<Seen<'_>>>, report: &mut Report) {
    for (id, seen) in by_id {
        for (a, b) in pairs(seen).map(|(a, b)| (a.op, b.op)) {
            let visibility_ms =
                [a, b].iter().map(|o| o.input["visibility_ms"].as_u64().unwrap_or(0)).min().unwrap_or(0);
            // The latest the second entry can be after the first, either way round.
            let widest_us =
                b.completed_us.saturating_sub(a.invoked_us).max(a.completed_us.saturating_sub(b.invoked_us));
            if widest_us + CLOCK_SLACK_MS * 1_000 < visibility_ms * 1_000 {
                report.violations.push(format!(
                    "message {id} was delivered twice within its {visibility_ms} ms of invisibility: \
                     to process {} (node {}) and process {} (node {}), at most {} ms apart",
                    a.process,
                    a.node + 1,
                    b.process,
                    b.node + 1,
                    widest_us / 1_000
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn op(process: usize, f: &str, input: serde_json::Value, at: (u64, u64), outcome: Outcome) -> Op {
        Op { process, node: 0, f: f.into(), input, invoked_us: at.0, completed_us: at.1, outcome }
    }

    fn grant(fence: u64, expires: u64) -> Outcome {
        Outcome::Ok { value: json!({ "fence": fence, "expires_at_ms": expires }) }
    }

    #[test]
    fn overlapping_exclusive_holds_and_backward_fences_are_caught() {
        let lock = json!({ "name": "l", "mode": "exclusive" });
        // Run started at unix 1,000 ms; leases end at 3,000 ms = 2,000,000 us into the run.
        let fine = vec![
            op(0, "acquire", lock.clone(), (0, 100_000), grant(1, 3_000)),
            op(0, "release", lock.clone(), (200_000, 300_000), Outcome::Ok { value: json!({}) }),
            op(1, "acquire", lock.clone(), (150_000, 400_000), grant(2, 3_000)),
        ];
        assert!(locks(&fine, &[], 1_000).violations.is_empty());
        let overlap = vec![
            op(0, "acquire", lock.clone(), (0, 100_000), grant(1, 3_000)),
            op(1, "acquire", lock.clone(), (150_000, 400_000), grant(2, 3_000)),
            op(0, "release", lock.clone(), (900_000, 950_000), Outcome::Ok { value: json!({}) }),
        ];
        assert!(!locks(&overlap, &[], 1_000).violations.is_empty());
        let backwards = vec![
            op(0, "acquire", lock.clone(), (0, 100), grant(5, 1_000)),
            op(1, "acquire", lock.clone(), (200, 300), grant(4, 1_000)),
        ];
        assert!(!locks(&backwards, &[], 1_000).violations.is_empty());
        // c1 asks again for the shared hold it still has (fence 1) after c2's grant: the
        // same grant, refreshed, not a new one with a smaller fence.
        let shared = json!({ "name": "l", "mode": "shared" });
        let refresh = vec![
            op(1, "acquire", shared.clone(), (0, 100_000), grant(1, 3_000)),
            op(2, "acquire", shared.clone(), (200_000, 300_000), grant(2, 3_000)),
            op(1, "acquire", shared.clone(), (400_000, 500_000), grant(1, 3_500)),
        ];
        assert!(
            locks(&refresh, &[], 1_000).violations.is_empty(),
            "{:?}",
            locks(&refresh, &[], 1_000).violations
        );
        // c1's first acquire timed out undecided, yet was granted (fence 1): c2's answer lists
        // it. c1 asks again after c2's grant (fence 2) and gets its hold back. Not a grant
        // with a smaller fence after a larger one was answered.
        let undecided = vec![
            op(1, "acquire", shared.clone(), (0, 100_000), Outcome::Info { error: "timed out".into() }),
            op(
                2,
                "acquire",
                shared.clone(),
                (150_000, 200_000),
                Outcome::Ok {
                    value: json!({ "fence": 2, "expires_at_ms": 3_000,
                        "holders": [{ "client_id": "c1", "fence": 1 }, { "client_id": "c2", "fence": 2 }] }),
                },
            ),
            op(1, "acquire", shared.clone(), (400_000, 500_000), grant(1, 3_500)),
        ];
        let found = locks(&undecided, &[], 1_000).violations;
        assert!(found.is_empty(), "{found:?}");
        // Without that evidence, a smaller fence after a larger one is still caught.
        let unexplained = vec![
            undecided[0].clone(),
            op(2, "acquire", shared.clone(), (150_000, 200_000), grant(2, 3_000)),
            undecided[2].clone(),
        ];
        assert!(!locks(&unexplained, &[], 1_000).violations.is_empty());
        let stale_refused = FencedWrite {
            lock: "l".into(),
            process: 0,
            fence: 1,
            accepted: false,
            at_ms: 1_500,
            lease_until_ms: 3_000,
        };
        assert!(!locks(&[], &[stale_refused], 1_000).violations.is_empty());
    }

    #[test]
    fn write_back_may_lose_only_what_a_revocation_of_the_owner_takes() {
        let ok = |v: serde_json::Value| Outcome::Ok { value: v };
        let write =
            |v: i64, at: (u64, u64)| op(0, "write", json!({ "key": "k", "value": v }), at, ok(json!({})));
        let read = |v: i64, at: (u64, u64)| op(1, "read", json!({ "key": "k" }), at, ok(json!(v)));
        let revocation = |stored: Option<i64>, at: (u64, u64)| Revocation {
            key: "k".into(),
            stored,
            proposed_us: at.0,
            until_us: at.1,
        };
        // 1 was written back; 2 lived only in the owner's line, and the revocation of the
        // owner made the stored 1 current again.
        let history = vec![
            write(1, (0, 10)),
            read(1, (20, 30)),
            write(2, (9_000, 9_010)),
            read(2, (9_020, 9_030)),
            read(1, (12_000, 12_010)),
        ];
        assert!(cache_write_back(&history, &[revocation(Some(1), (10_000, 10_100))]).violations.is_empty());
        // Without the revocation, or with one after the read, losing 2 is a violation.
        assert!(!cache_write_back(&history, &[]).violations.is_empty());
        assert!(!cache_write_back(&history, &[revocation(Some(1), (13_000, 13_100))]).violations.is_empty());
        // A revocation that restores something else explains nothing.
        assert!(!cache_write_back(&history, &[revocation(Some(7), (10_000, 10_100))]).violations.is_empty());
        // A revocation of a key with nothing stored empties it.
        let emptied = vec![
            write(2, (0, 10)),
            read(2, (20, 30)),
            op(1, "read", json!({ "key": "k" }), (500, 510), ok(json!(null))),
        ];
        assert!(cache_write_back(&emptied, &[revocation(None, (100, 200))]).violations.is_empty());
        assert!(!cache_write_back(&emptied, &[]).violations.is_empty());
    }

    #[test]
    fn lost_and_invented_messages_are_caught() {
        let send = |n: u64, outcome| op(0, "send", json!({ "body": { "n": n } }), (0, 1), outcome);
        let sent = |id: &str| Outcome::Ok { value: json!({ "id": id, "partition": 0 }) };
        let received = |ids: &[(&str, u64)]| Outcome::Ok {
            value: json!(ids
                .iter()
                .map(|(id, n)| json!({ "id": id, "body": { "n": n } }))
                .collect::<Vec<_>>()),
        };
        let ok = vec![
            send(1, sent("0-1")),
            op(1, "receive", json!({}), (2, 3), received(&[("0-1", 1), ("0-1", 1)])),
        ];
        assert!(queues(&ok).violations.is_empty());
        let lost = vec![
            send(1, sent("0-1")),
            send(2, sent("0-2")),
            op(1, "receive", json!({}), (2, 3), received(&[("0-1", 1)])),
        ];
        assert!(!queues(&lost).violations.is_empty());
        let invented = vec![
            send(1, sent("0-1")),
            op(1, "receive", json!({}), (2, 3), received(&[("0-1", 1), ("0-9", 9)])),
        ];
        assert!(!queues(&invented).violations.is_empty());
    }

    fn delivered(id: &str, receipt: &str, n: u64) -> serde_json::Value {
        json!({ "id": id, "receipt": receipt, "body": { "n": n } })
    }

    fn delivered_as(id: &str, receipt: &str, count: u64) -> serde_json::Value {
        json!({ "id": id, "receipt": receipt, "body": { "n": 1 }, "receive_count": count })
    }

    fn receive(process: usize, at: (u64, u64), messages: Vec<serde_json::Value>) -> Op {
        op(process, "receive", json!({ "visibility_ms": 3_000 }), at, Outcome::Ok { value: json!(messages) })
    }

    fn receive_acking(
        at: (u64, u64),
        acks: &[&str],
        failed: &[&str],
        messages: Vec<serde_json::Value>,
    ) -> Op {
        let failed: Vec<_> = failed.iter().map(|r| json!({ "receipt": r, "error": "gone" })).collect();
        let value = json!([messages, { "acked": acks.len() - failed.len(), "failed": failed }]);
        op(2, "receive-acking", json!({ "visibility_ms": 3_000, "ack": acks }), at, Outcome::Ok { value })
    }

    const S: u64 = 1_000_000;

    /// The send of message `0-1`, acknowledged.
    fn sent_one() -> Op {
        op(0, "send", json!({ "body": { "n": 1 } }), (0, 1), Outcome::Ok { value: json!({ "id": "0-1" }) })
    }

    #[test]
    fn a_message_delivered_after_its_confirmed_ack_is_caught() {
        let send = sent_one();
        let first = receive(1, (10, 20), vec![delivered("0-1", "r1", 1)]);
        let ack =
            op(1, "ack", json!({ "receipt": "r1" }), (30, 40), Outcome::Ok { value: json!({ "acked": 1 }) });
        // Long after the invisibility ran out, so only the ack forbids it.
        let again = receive(3, (10 * S, 10 * S + 5), vec![delivered("0-1", "r2", 1)]);
        let fine = vec![send.clone(), first.clone(), ack.clone()];
        assert!(queues(&fine).violations.is_empty());
        let broken = vec![send.clone(), first.clone(), ack.clone(), again.clone()];
        assert!(
            queues(&broken).violations.iter().any(|v| v.contains("after an ack")),
            "{:?}",
            queues(&broken)
        );
        // An ack that failed confirms nothing.
        let failed =
            op(1, "ack", json!({ "receipt": "r1" }), (30, 40), Outcome::Ok { value: json!({ "acked": 0 }) });
        assert!(queues(&[send.clone(), first.clone(), failed, again.clone()]).violations.is_empty());
        // Acks carried by a receive count too, unless reported failed.
        let carried = receive_acking((30, 40), &["r1"], &[], vec![]);
        assert!(!queues(&[send.clone(), first.clone(), carried, again.clone()]).violations.is_empty());
        let refused = receive_acking((30, 40), &["r1"], &["r1"], vec![]);
        assert!(queues(&[send.clone(), first.clone(), refused, again.clone()]).violations.is_empty());
        // A receive that began before the ack was confirmed may still see the message.
        let overlapping = receive(3, (35, 10 * S), vec![delivered("0-1", "r2", 1)]);
        assert!(queues(&[send, first, ack, overlapping]).violations.is_empty());
    }

    #[test]
    fn a_message_delivered_twice_within_its_invisibility_is_caught() {
        let send = sent_one();
        let first = receive(1, (S, S + 10), vec![delivered("0-1", "r1", 1)]);
        let soon = receive(3, (2 * S, 2 * S + 10), vec![delivered("0-1", "r2", 1)]);
        let report = queues(&[send.clone(), first.clone(), soon]);
        assert!(report.violations.iter().any(|v| v.contains("invisibility")), "{report:?}");
        // Once the first delivery's invisibility may have run out, a second one is fine.
        let later = receive(3, (4 * S, 4 * S + 10), vec![delivered("0-1", "r2", 1)]);
        assert!(queues(&[send.clone(), first.clone(), later]).violations.is_empty());
        // A slow second receive could have been handed the message late enough.
        let slow = receive(3, (2 * S, 4 * S + 100), vec![delivered("0-1", "r2", 1)]);
        assert!(queues(&[send.clone(), first.clone(), slow]).violations.is_empty());
        // The same holds for deliveries through a receive that carried acks.
        let carried = receive_acking((2 * S, 2 * S + 10), &[], &[], vec![delivered("0-1", "r2", 1)]);
        assert!(queues(&[send.clone(), first.clone(), carried])
            .violations
            .iter()
            .any(|v| v.contains("invisibility")));
        // The clock's slack: calls 3 s less 5 ms apart pass, a microsecond closer does not.
        let edge = |end_us| receive(3, (2 * S, end_us), vec![delivered("0-1", "r2", 1)]);
        assert!(queues(&[send.clone(), first.clone(), edge(4 * S - 5_000)]).violations.is_empty());
        assert!(!queues(&[send, first, edge(4 * S - 5_001)]).violations.is_empty());
    }

    #[test]
    fn delivery_counts_that_do_not_grow_are_caught() {
        let send = sent_one();
        let first = receive(1, (S, S + 10), vec![delivered_as("0-1", "r1", 1)]);
        // Long after the invisibility, so only the count tells.
        let again = |count| receive(3, (10 * S, 10 * S + 10), vec![delivered_as("0-1", "r2", count)]);
        assert!(queues(&[send.clone(), first.clone(), again(2)]).violations.is_empty());
        let report = queues(&[send.clone(), first.clone(), again(1)]);
        assert!(report.violations.iter().any(|v| v.contains("after delivery 1")), "{report:?}");
        // Overlapping calls may come in either order, but never with the same count.
        let overlapping = |count| receive(3, (S + 5, 10 * S), vec![delivered_as("0-1", "r2", count)]);
        assert!(queues(&[send.clone(), first.clone(), overlapping(2)]).violations.is_empty());
        let report = queues(&[send.clone(), first.clone(), overlapping(1)]);
        assert!(report.violations.iter().any(|v| v.contains("twice as delivery 1")), "{report:?}");
        // One delivery seen twice (the same receipt) is not two deliveries.
        let replayed = receive(3, (10 * S, 10 * S + 10), vec![delivered_as("0-1", "r1", 1)]);
        assert!(queues(&[send, first, replayed]).violations.is_empty());
    }

    #[test]
    fn a_receive_that_leaves_carried_acks_unaccounted_is_caught() {
        let fine = receive_acking((0, 10), &["r1", "r2"], &["r2"], vec![]);
        assert!(queues(&[fine]).violations.is_empty());
        let value = json!([[], { "acked": 0, "failed": [] }]);
        let silent = op(2, "receive-acking", json!({ "ack": ["r1"] }), (0, 10), Outcome::Ok { value });
        assert!(queues(&[silent]).violations.iter().any(|v| v.contains("carried 1 acks")));
    }
}
