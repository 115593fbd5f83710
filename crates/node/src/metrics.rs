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

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, with buckets.
    Histogram,
}

/// Every metric a node exports, with its HELP text (docs/operations.md explains each).
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("sinkron_build_info", Kind::Gauge, "Always 1; the labels name this binary's version and build profile"),
    ("sinkron_raft_role", Kind::Gauge, "1 for this node's current role in group 0, 0 for the others"),
    ("sinkron_raft_term", Kind::Gauge, "Current Raft term of group 0"),
    ("sinkron_raft_commit_index", Kind::Gauge, "Highest group-0 log index known committed"),
    ("sinkron_raft_applied_index", Kind::Gauge, "Highest group-0 log index applied to the state machine"),
    ("sinkron_raft_last_log_index", Kind::Gauge, "Last index in this node's group-0 log"),
    ("sinkron_raft_has_leader", Kind::Gauge, "1 when this node knows a group-0 leader"),
    ("sinkron_raft_leader_changes_total", Kind::Counter, "Times this node saw a new group-0 leader"),
    (
        "sinkron_raft_refused_calls_total",
        Kind::Counter,
        "Raft calls refused with a client error, by who refused them",
    ),
    (
        "sinkron_http_requests_total",
        Kind::Counter,
        "HTTP requests served, by route template, method and status",
    ),
    ("sinkron_http_request_duration_seconds", Kind::Histogram, "Time to serve an HTTP request"),
    (
        "sinkron_http_connections_refused_total",
        Kind::Counter,
        "Connections refused because HTTP_MAX_CONNECTIONS were open",
    ),
    ("sinkron_rpc_requests_total", Kind::Counter, "Raft calls this node sent to peers, by call and outcome"),
    ("sinkron_rpc_request_duration_seconds", Kind::Histogram, "Time per Raft call sent to a peer"),
    ("sinkron_peer_batch_calls", Kind::Histogram, "Raft calls carried by one batch of a peer stream"),
    (
        "sinkron_read_round_waiters",
        Kind::Histogram,
        "Linearizable reads or lease renewals served by one ReadIndex round",
    ),
    (
        "sinkron_proposal_batch_requests",
        Kind::Histogram,
        "Client requests per Raft entry proposed by this node as leader",
    ),
    ("sinkron_log_fsync_duration_seconds", Kind::Histogram, "Time of each fdatasync of the node's log"),
    (
        "sinkron_log_compaction_copies_total",
        Kind::Counter,
        "Live log records copied forward to reclaim an old segment",
    ),
    (
        "sinkron_lock_requests_total",
        Kind::Counter,
        "Lock requests answered by this node, by operation and outcome",
    ),
    (
        "sinkron_lock_request_duration_seconds",
        Kind::Histogram,
        "Time to answer a lock request, waiting in the queue included",
    ),
    (
        "sinkron_locks_held",
        Kind::Gauge,
        "Locks held by at least one client, in this node's copy of the lock table",
    ),
    ("sinkron_lock_holders", Kind::Gauge, "Holds over all locks, in this node's copy of the lock table"),
    (
        "sinkron_lock_waiters",
        Kind::Gauge,
        "Queued lock requests over all locks, in this node's copy of the lock table",
    ),
    (
        "sinkron_lock_events_total",
        Kind::Counter,
        "Side effects of applied lock commands: grants from a queue, lease and wait expiries",
    ),
    ("sinkron_cache_lines", Kind::Gauge, "Lines in this node's cache"),
    ("sinkron_cache_capacity", Kind::Gauge, "Lines this node's cache may hold (CACHE_MAX_SIZE)"),
    ("sinkron_cache_lease_valid", Kind::Gauge, "1 while this node's cache coherence lease is valid"),
    (
        "sinkron_cache_events_total",
        Kind::Counter,
        "Cache hits, misses, evictions, invalidations and write-backs of this node",
    ),
    (
        "sinkron_cache_transitions_total",
        Kind::Counter,
        "Changes of this node's cache lines, by MESI transition",
    ),
    (
        "sinkron_queue_messages_total",
        Kind::Counter,
        "Queue messages sent, received, acked and nacked for clients of this node",
    ),
    (
        "sinkron_queue_redelivered_total",
        Kind::Counter,
        "Messages made ready again after their visibility deadline passed",
    ),
    ("sinkron_queue_dead_lettered_total", Kind::Counter, "Messages moved to a dead-letter queue"),
    (
        "sinkron_queue_receives_parked",
        Kind::Gauge,
        "Long-polling receives parked at this node's batchers, waiting for a send to their queue",
    ),
    (
        "sinkron_queue_receives_rode_total",
        Kind::Counter,
        "Parked receives a batch of this node took along after a send to their queue",
    ),
    (
        "sinkron_queue_receives_relayed_total",
        Kind::Counter,
        "Waiting receives this node relayed to their queue's home partition leader, by outcome (answered there, ran here after all, or unknown: sent and no answer)",
    ),
    (
        "sinkron_queue_acks_rode_total",
        Kind::Counter,
        "Acks carried by a parked receive that rode in the batch of the send that took it and were applied there",
    ),
    (
        "sinkron_queue_receives_gated_total",
        Kind::Counter,
        "Receives this leader answered empty without an entry (every visible message was claimed)",
    ),
    (
        "sinkron_queue_receives_wasted_total",
        Kind::Counter,
        "Receives this leader proposed that came back empty (an entry spent for no message)",
    ),
    (
        "sinkron_process_cpu_seconds",
        Kind::Gauge,
        "CPU time this process has used, user and system, in seconds",
    ),
    ("sinkron_queue_depth", Kind::Gauge, "Ready messages of a queue over the partitions this node leads"),
    (
        "sinkron_queue_in_flight",
        Kind::Gauge,
        "Delivered, unacknowledged messages of a queue over the partitions this node leads",
    ),
    ("sinkron_queue_partitions_led", Kind::Gauge, "Queue partition groups this node leads"),
    ("sinkron_queue_partitions_hosted", Kind::Gauge, "Queue partition groups this node has open"),
    (
        "sinkron_queue_partition_moves_total",
        Kind::Counter,
        "Partition moves this node recorded as group-0 leader",
    ),
    ("sinkron_state_bytes", Kind::Gauge, "Estimated state size of a Raft group on this node"),
    ("sinkron_state_quota_bytes", Kind::Gauge, "The state quota of a Raft group (QUOTA_BYTES)"),
    ("sinkron_quota_refusals_total", Kind::Counter, "Writes refused for a quota, by quota"),
];

/// Installs the process-wide recorder once; later calls return the same handle. `None` when
/// another recorder was installed first (metrics are then not exported).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_requests".into()), COUNT_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ops".into()), COUNT_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_calls".into()), COUNT_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_waiters".into()), COUNT_BUCKETS))
                .ok()
                .and_then(|b| b.install_recorder().ok())?;
            describe();
            Some(handle)
        })
        .clone()
}

/// Gives every metric its HELP text, and sets `sinkron_build_info`.
fn describe() {
    for (name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    metrics::gauge!("sinkron_build_info", "version" => env!("CARGO_PKG_VERSION"), "profile" => profile)
        .set(1.0);
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
    if let Some(seconds) = process_cpu_seconds() {
        metrics::gauge!("sinkron_process_cpu_seconds").set(seconds);
    }
    install().map(|h| h.render()).unwrap_or_default()
}

/// CPU time this process has used so far, user and system, in seconds.
fn process_cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// Counts `count` queue operations `op` (sent, received, acked, nacked) on
/// `queue`, where the client's request was served.
pub fn record_queue_op(op: &'static str, queue: &str, count: u64) {
    metrics::counter!("sinkron_queue_messages_total", "op" => op, "queue" => queue_label(queue))
        .increment(count);
}

/// Moves the count of receives parked at this node's batchers by `by`.
pub fn record_receives_parked(by: i64) {
    if by != 0 {
        metrics::gauge!("sinkron_queue_receives_parked").increment(by as f64);
    }
}

/// Counts parked receives that a batch of this node took along after a send to their queue.
pub fn record_receives_rode(count: usize) {
    if count > 0 {
        metrics::counter!("sinkron_queue_receives_rode_total").increment(count as u64);
    }
}

/// Counts a waiting receive relayed to its queue's home partition leader, by `outcome`.
pub fn record_receive_relayed(outcome: &'static str) {
    metrics::counter!("sinkron_queue_receives_relayed_total", "outcome" => outcome).increment(1);
}

/// Counts acks carried by parked receives that rode in the batch of the send that took them
/// and were applied.
pub fn record_acks_rode(count: usize) {
    if count > 0 {
        metrics::counter!("sinkron_queue_acks_rode_total").increment(count as u64);
    }
}

/// Counts receives this leader answered empty without an entry: every visible message was
/// claimed by a receive already proposed.
pub fn record_receives_gated(count: usize) {
    if count > 0 {
        metrics::counter!("sinkron_queue_receives_gated_total").increment(count as u64);
    }
}

/// Counts receives this leader proposed that came back with nothing (an entry spent for
/// no message).
pub fn record_receives_wasted(count: usize) {
    if count > 0 {
        metrics::counter!("sinkron_queue_receives_wasted_total").increment(count as u64);
    }
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
