//! `--counters`: what a run moved on the nodes, from their `/metrics` before and after,
//! summed over every node and given per operation.

use std::collections::BTreeMap;

use sinkron_client::Client;

/// The series a run reports, with what each counts.
const SERIES: [(&str, &str); 9] = [
    ("sinkron_log_fsync_duration_seconds_count", "fsyncs of the shared log"),
    ("sinkron_proposal_batch_requests_count", "Raft entries proposed"),
    ("sinkron_proposal_batch_requests_sum", "requests in those entries"),
    ("sinkron_queue_receives_wasted_total", "receives proposed that came back empty"),
    ("sinkron_queue_receives_gated_total", "receives answered empty without an entry"),
    ("sinkron_peer_batch_calls_count", "peer stream batches sent"),
    ("sinkron_peer_batch_calls_sum", "Raft calls in those batches"),
    ("sinkron_http_request_duration_seconds_count", "HTTP requests served (clients and peers)"),
    ("sinkron_process_cpu_seconds", "CPU seconds of the node processes"),
];

/// The reported series, summed over the nodes of `clients` (label sets added up).
pub(super) async fn snapshot(clients: &[Client]) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let mut totals: BTreeMap<&'static str, f64> = SERIES.iter().map(|(name, _)| (*name, 0.0)).collect();
    for client in clients {
        let text = client.metrics().await?;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let name = series.split('{').next().unwrap_or(series);
            if let (Some(total), Ok(value)) = (totals.get_mut(name), value.parse::<f64>()) {
                *total += value;
            }
        }
    }
    Ok(totals)
}

/// Prints each series' growth over the run, in all and per operation.
pub(super) fn report(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    ops: usize,
    json: bool,
) {
    let grown: Vec<(&str, &str, f64)> = SERIES
        .iter()
        .map(|(name, what)| {
            (*name, *what, after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0))
        })
        .collect();
    let per_op = |delta: f64| delta / ops.max(1) as f64;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = grown
            .iter()
            .map(|(name, _, delta)| {
                ((*name).to_string(), serde_json::json!({ "total": delta, "per_op": per_op(*delta) }))
            })
            .collect();
        say!("{}", serde_json::json!({ "counters": map }));
    } else {
        for (name, what, delta) in grown {
            say!("  {delta:>12.1} {:>10.4}/op  {what} ({name})", per_op(delta));
        }
    }
}
