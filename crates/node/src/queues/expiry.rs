//! On every node: the leader of each hosted partition returns messages whose visibility
//! deadline passed, and the queue gauges are refreshed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sinkron_core::{Command, Request, Response};

use super::Queues;
use crate::clock::now_ms;
use crate::wire::ForwardedWrite;

/// How often a partition leader checks visibility deadlines.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(50);
/// How often queue gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// On every node: the leader of each hosted partition returns expired in-flight messages;
/// queue gauges are refreshed from the partitions this node leads.
pub async fn expiry_duties(queues: Queues) {
    let mut gauges_at = Instant::now();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::time::sleep(EXPIRY_INTERVAL).await;
        let Ok(settings) = queues.queue_settings() else { continue };
        let max_receives = settings.max_receives;
        let now = now_ms();
        for partition in queues.partitions.hosted() {
            let Some(group) = queues.partitions.get(partition) else { continue };
            if !group.is_leader() {
                continue;
            }
            let due = group.sm.read().state.state.next_deadline_ms().is_some_and(|d| d <= now);
            if !due {
                continue;
            }
            let request = Request { request_id: None, command: Command::QueueExpire { max_receives } };
            let deadline = Instant::now() + queues.request_timeout();
            if let ForwardedWrite::Applied(Response::QueueExpired { redelivered, dead_lettered }, _) =
                group.proposer.submit(request, deadline).await
            {
                crate::metrics::record_returned(redelivered, dead_lettered);
            }
        }
        if gauges_at.elapsed() >= GAUGE_INTERVAL {
            gauges_at = Instant::now();
            reported = refresh_gauges(&queues, reported);
        }
    }
}

/// Sets depth and in-flight gauges for the queues of the partitions this node leads, and
/// zeroes those it reported before but no longer sees.
fn refresh_gauges(queues: &Queues, reported: BTreeSet<String>) -> BTreeSet<String> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut led = 0;
    for partition in queues.partitions.hosted() {
        let Some(group) = queues.partitions.get(partition) else { continue };
        if !group.is_leader() {
            continue;
        }
        led += 1;
        for (name, q) in group.sm.read().state.state.queues() {
            let entry = counts.entry(name.clone()).or_default();
            entry.0 += q.ready.len();
            entry.1 += q.in_flight.len();
        }
    }
    for gone in reported.iter().filter(|q| !counts.contains_key(*q)) {
        crate::metrics::set_queue_gauges(gone, 0, 0);
    }
    for (name, (ready, in_flight)) in &counts {
        crate::metrics::set_queue_gauges(name, *ready, *in_flight);
    }
    metrics::gauge!("sinkron_queue_partitions_led").set(led as f64);
    metrics::gauge!("sinkron_queue_partitions_hosted").set(queues.partitions.hosted().len() as f64);
    counts.into_keys().collect()
}
