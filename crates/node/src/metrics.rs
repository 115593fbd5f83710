//! Prometheus metrics of a node.
//!
//! Counters and latency histograms are recorded where things happen (HTTP middleware, RPC
//! client); Raft gauges (role, term, indexes) are read from openraft when `/metrics` is
//! scraped, so they are never stale.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle. `None` when
/// another recorder was installed first (metrics are then not exported).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_requests".into()), COUNT_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ops".into()), COUNT_BUCKETS))
                .ok()
                .and_then(|b| b.install_recorder().ok())
        })
        .clone()
}

/// Records a ReadIndex round shared by `waiters` reads (or lease renewals).
pub fn record_read_round(waiters: usize) {
    metrics::histogram!("sinkron_read_round_waiters").record(waiters as f64);
}

/// Records a batch of `calls` Raft calls sent on a peer stream.
pub fn record_stream_batch(calls: usize) {
    metrics::histogram!("sinkron_peer_batch_calls").record(calls as f64);
}

/// Records one node-to-node call.
pub fn record_rpc(rpc: &'static str, status: &'static str, elapsed: Duration) {
    metrics::counter!("sinkron_rpc_requests_total", "rpc" => rpc, "status" => status).increment(1);
    metrics::histogram!("sinkron_rpc_request_duration_seconds", "rpc" => rpc).record(elapsed.as_secs_f64());
}

/// Counts a Raft call refused with a client error, by who refused it (`peer` or
/// `this_node`) and status.
pub fn record_peer_refusal(by: &'static str, status: u16) {
    metrics::counter!("sinkron_raft_refused_calls_total", "refused_by" => by, "status" => status.to_string())
        .increment(1);
}

/// Sets the state size of `group` and its quota, in bytes.
pub fn set_quota_usage(group: crate::types::GroupId, used: u64, quota: u64) {
    let group = group.to_string();
    metrics::gauge!("sinkron_state_bytes", "group" => group.clone()).set(used as f64);
    metrics::gauge!("sinkron_state_quota_bytes", "group" => group).set(quota as f64);
}

/// Counts a write refused by a quota.
pub fn record_quota_refusal() {
    metrics::counter!("sinkron_quota_refusals_total").increment(1);
}

/// Counts a connection refused because the node had `HTTP_MAX_CONNECTIONS` open.
pub fn record_refused_connection() {
    metrics::counter!("sinkron_http_connections_refused_total").increment(1);
}

/// The label value of an HTTP method: the standard methods by name, anything a client
/// invented as `other` (a label value per invented method would be unbounded).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::PUT, "PUT"),
        (Method::POST, "POST"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::TRACE, "TRACE"),
        (Method::CONNECT, "CONNECT"),
    ];
    KNOWN.iter().find(|(m, _)| m == method).map_or("other", |(_, label)| label)
}

/// Most distinct queue names that get series of their own; the rest share [`OTHER_QUEUES`].
pub const QUEUE_SERIES_MAX: usize = 100;
/// Label value of queues beyond [`QUEUE_SERIES_MAX`].
pub const OTHER_QUEUES: &str = "_other";

static QUEUE_LABELS: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The label value of `queue`: its name for the first [`QUEUE_SERIES_MAX`] queues this
/// process has seen, [`OTHER_QUEUES`] after that.
pub fn queue_label(queue: &str) -> String {
    let mut seen = QUEUE_LABELS.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(queue) {
        return queue.to_string();
    }
    if seen.len() < QUEUE_SERIES_MAX {
        seen.insert(queue.to_string());
        return queue.to_string();
    }
    OTHER_QUEUES.to_string()
}

/// Records one HTTP request served.
pub fn record_http(route: String, method: &'static str, status: u16, elapsed: Duration) {
    metrics::counter!(
        "sinkron_http_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("sinkron_http_request_duration_seconds", "route" => route, "method" => method)
        .record(elapsed.as_secs_f64());
}

/// Counts the side effects of applied lock commands on this node.
pub fn record_lock_events(events: &[sinkron_core::locks::LockEvent]) {
    use sinkron_core::locks::LockEvent;
    for event in events {
        let kind = match event {
            LockEvent::Granted { .. } => "granted_from_queue",
            LockEvent::Expired { .. } => "lease_expired",
            LockEvent::WaitExpired { .. } => "wait_expired",
        };
        metrics::counter!("sinkron_lock_events_total", "event" => kind).increment(1);
    }
}

/// Counts an answered lock request by operation and outcome, with its duration.
pub fn record_lock_request(op: &'static str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!("sinkron_lock_requests_total", "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("sinkron_lock_request_duration_seconds", "op" => op, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// Sets the lock gauges from the local state machine: locks held, holders, waiters.
pub fn set_lock_gauges(locks_held: usize, holders: usize, waiters: usize) {
    metrics::gauge!("sinkron_locks_held").set(locks_held as f64);
    metrics::gauge!("sinkron_lock_holders").set(holders as f64);
    metrics::gauge!("sinkron_lock_waiters").set(waiters as f64);
}

/// Sets the cache gauges and counters from this node's local cache.
pub fn set_cache_metrics(
    stats: &sinkron_core::cache::CacheStats,
    lines: usize,
    capacity: usize,
    lease_valid: bool,
) {
    metrics::gauge!("sinkron_cache_lines").set(lines as f64);
    metrics::gauge!("sinkron_cache_capacity").set(capacity as f64);
    metrics::gauge!("sinkron_cache_lease_valid").set(if lease_valid { 1.0 } else { 0.0 });
    for (name, value) in [
        ("hits", stats.hits),
        ("misses", stats.misses),
        ("evictions", stats.evictions),
        ("invalidations", stats.invalidations),
        ("write_backs", stats.write_backs),
    ] {
        metrics::counter!("sinkron_cache_events_total", "event" => name).absolute(value);
    }
    for (transition, count) in &stats.transitions {
        metrics::counter!("sinkron_cache_transitions_total", "transition" => transition.clone())
            .absolute(*count);
    }
}

/// Counts a change of the known leader.
pub fn record_leader_change() {
    metrics::counter!("sinkron_raft_leader_changes_total").increment(1);
}

/// Raft facts exported as gauges at scrape time.
pub struct RaftGauges {
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Whether a leader is known.
    pub has_leader: bool,
}

/// Renders every metric in Prometheus' text format.
pub fn render(gauges: &RaftGauges) -> String {
    for role in ["leader", "follower", "candidate", "learner", "shutdown"] {
        let value = if role == gauges.role { 1.0 } else { 0.0 };
        metrics::gauge!("sinkron_raft_role", "role" => role).set(value);
    }
    metrics::gauge!("sinkron_raft_term").set(gauges.term as f64);
    metrics::gauge!("sinkron_raft_commit_index").set(gauges.commit_index as f64);
    metrics::gauge!("sinkron_raft_applied_index").set(gauges.applied_index as f64);
    metrics::gauge!("sinkron_raft_last_log_index").set(gauges.last_log_index as f64);
    metrics::gauge!("sinkron_raft_has_leader").set(if gauges.has_leader { 1.0 } else { 0.0 });
    install().map(|h| h.render()).unwrap_or_default()
}

/// Counts `count` queue operations `op` (sent, received, acked, nacked) on
/// `queue`, where the client's request was served.
pub fn record_queue_op(op: &'static str, queue: &str, count: u64) {
    metrics::counter!("sinkron_queue_messages_total", "op" => op, "queue" => queue_label(queue))
        .increment(count);
}

/// Counts messages made ready again by an expiry pass of a partition this node leads, and
/// messages moved to dead-letter queues (by such a pass or by a nack served here).
pub fn record_returned(redelivered: usize, dead_lettered: usize) {
    metrics::counter!("sinkron_queue_redelivered_total").increment(redelivered as u64);
    metrics::counter!("sinkron_queue_dead_lettered_total").increment(dead_lettered as u64);
}

/// Sets the ready and in-flight gauges of `queue`, over the partitions this node leads.
pub fn set_queue_gauges(queue: &str, ready: usize, in_flight: usize) {
    let label = queue_label(queue);
    if label == OTHER_QUEUES {
        // A gauge shared by many queues would show whichever was set last: no series.
        return;
    }
    metrics::gauge!("sinkron_queue_depth", "queue" => label.clone()).set(ready as f64);
    metrics::gauge!("sinkron_queue_in_flight", "queue" => label).set(in_flight as f64);
}

/// Counts a partition moved to a new replica set (by group 0's leader).
pub fn record_partition_move() {
    metrics::counter!("sinkron_queue_partition_moves_total").increment(1);
}
