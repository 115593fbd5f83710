//! The cache revocations of a run, read from the nodes' logs.
//!
//! Under `write-back`, a value of a node that was never written back is lost when the
//! node's lines are revoked (docs/cache.md, "Write-back under partitions"). The history
//! check counts each revocation of an owner as a write of the value the directory then
//! stores, at the moment the revocation commits. The harness cannot see that moment from
//! outside, so the nodes log it (debug level, target `sinkron_revocations`): the proposer
//! logs `cache revocation proposed: node=.. token=.. at_us=..` before each proposal, and
//! every node logs `cache revocation applied: index=.. node=.. token=.. at_us=.. key=..
//! stored=..` when it applies one, for each key the node owned. The revocation takes effect
//! after its commit (which follows the proposal) and before the revoked node stops serving
//! its line: when it applied the revocation, or a lease after the commit (its last lease was
//! renewed before), whichever is first. The check counts it as a restore of the stored value
//! somewhere in that interval, or none if the owner's line was clean.

use std::collections::BTreeMap;

/// One key taken from its owner by a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The key.
    pub key: String,
    /// What the directory stored for it (`None`: nothing).
    pub stored: Option<i64>,
    /// When it was proposed, in Unix microseconds (0 when no proposal was logged: the
    /// write may then go anywhere before `applied_us`).
    pub proposed_us: u64,
    /// By when it took effect, in Unix microseconds: when the revoked node applied it (it
    /// serves its line until then), or a lease after the first node applied it (the
    /// revoked node's last lease was renewed before the commit), whichever is earlier.
    pub until_us: u64,
}

/// What one key's revocation looked like in the logs.
struct Seen {
    first_apply: u64,
    /// When the revoked node itself applied it, if it did.
    own_apply: Option<u64>,
    stored: Option<i64>,
    token: u64,
}

/// The revocations named by `logs`, each node's log with the node's name; `lease_us` is
/// the coherence lease.
pub fn from_logs(logs: &[(String, String)], lease_us: u64) -> Vec<Revocation> {
    let mut proposed: BTreeMap<u64, u64> = BTreeMap::new();
    let mut applied: BTreeMap<(u64, String), Seen> = BTreeMap::new();
    for (name, line) in logs.iter().flat_map(|(name, log)| log.lines().map(move |l| (name, l))) {
        if let Some(rest) = after(line, "cache revocation proposed: ") {
            let fields = fields(rest);
            if let (Some(token), Some(at)) = (number(&fields, "token"), number(&fields, "at_us")) {
                let first = proposed.entry(token).or_insert(at);
                *first = (*first).min(at);
            }
        } else if let Some(rest) = after(line, "cache revocation applied: ") {
            let fields = fields(rest);
            let (Some(index), Some(token), Some(at), Some(key)) = (
                number(&fields, "index"),
                number(&fields, "token"),
                number(&fields, "at_us"),
                fields.get("key"),
            ) else {
                continue;
            };
            // A number, `null`, or a deep value (see `Payload`) with the number inside.
            let stored = fields
                .get("stored")
                .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
                .and_then(|v| crate::workloads::Payload::unwrap(&v).as_i64());
            let seen = applied.entry((index, key.to_string())).or_insert(Seen {
                first_apply: at,
                own_apply: None,
                stored,
                token,
            });
            seen.first_apply = seen.first_apply.min(at);
            if fields.get("node") == Some(&name.as_str()) {
                seen.own_apply = Some(seen.own_apply.map_or(at, |t| t.min(at)));
            }
        }
    }
    applied
        .into_iter()
        .map(|((_, key), seen)| Revocation {
            key,
            stored: seen.stored,
            proposed_us: proposed.get(&seen.token).copied().unwrap_or(0),
            until_us: (seen.first_apply + lease_us).min(seen.own_apply.unwrap_or(u64::MAX)),
        })
        .collect()
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

fn fields(rest: &str) -> BTreeMap<&str, &str> {
    rest.split_whitespace().filter_map(|f| f.split_once('=')).collect()
}

fn number(fields: &BTreeMap<&str, &str>, name: &str) -> Option<u64> {
    fields.get(name).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_are_read_from_every_nodes_log() {
        let node1 = "2026-12-01T10:00:00.000001Z DEBUG cache revocation proposed: node=node2 token=7 at_us=1000\n\
                     2026-12-01T10:00:00.000002Z  INFO something else\n\
                     2026-12-01T10:00:00.000003Z DEBUG cache revocation proposed: node=node2 token=7 at_us=900\n\
                     2026-12-01T10:00:00.000004Z DEBUG cache revocation applied: index=40 node=node2 token=7 at_us=1500 key=reg-0 stored=12\n";
        let node3 = "x DEBUG cache revocation applied: index=40 node=node2 token=7 at_us=1400 key=reg-0 stored=12\n\
                     x DEBUG cache revocation applied: index=40 node=node2 token=7 at_us=1410 key=reg-1 stored=null\n\
                     x DEBUG cache revocation applied: index=55 node=node1 token=9 at_us=3000 key=reg-1 stored=4\n";
        let node2 =
            "x DEBUG cache revocation applied: index=40 node=node2 token=7 at_us=1450 key=reg-0 stored=12\n";
        let logs = [("node1", node1), ("node2", node2), ("node3", node3)]
            .map(|(n, l)| (n.to_string(), l.to_string()));
        assert_eq!(
            from_logs(&logs, 300),
            vec![
                // node2 (revoked) applied it at 1450, before the first apply (1400) plus a lease.
                Revocation { key: "reg-0".into(), stored: Some(12), proposed_us: 900, until_us: 1450 },
                // node2's apply of reg-1 is not in its log: a lease after the first apply.
                Revocation { key: "reg-1".into(), stored: None, proposed_us: 900, until_us: 1710 },
                Revocation { key: "reg-1".into(), stored: Some(4), proposed_us: 0, until_us: 3300 },
            ]
        );
    }
}
