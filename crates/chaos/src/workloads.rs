//! Workloads: clients that drive one primitive through every node and record a history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use sinkron_client::{Client, ClientError, Fence, LockOptions, ReceiveOptions, WriteOptions};

use crate::history::{outcome_of, History, Op, Outcome};

/// Longest a single call may take before it counts as unknown.
const CALL_LIMIT: Duration = Duration::from_secs(4);

/// Which primitive a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Exclusive and shared locks with fenced writes to a guarded resource.
    Locks,
    /// Reads and writes of a few cache keys (write-through).
    Cache,
    /// The same in write-back mode, where a node's unwritten values may be lost.
    CacheWriteBack,
    /// Sends, receives and acks.
    Queues,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 4] =
        [Workload::Locks, Workload::Cache, Workload::CacheWriteBack, Workload::Queues];

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Locks => "locks",
            Workload::Cache => "cache",
            Workload::CacheWriteBack => "cache-write-back",
            Workload::Queues => "queues",
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    unix_us() / 1_000
}

/// Microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// What everything a workload needs shares.
#[derive(Clone)]
pub struct Env {
    /// One client per node.
    pub clients: Vec<Client>,
    /// One client per node that gives up after half a second: a read on a cut-off node
    /// that must go through the log fails fast instead of holding its process up, so the
    /// process keeps reading what its node still has cached.
    pub quick: Vec<Client>,
    /// The history being recorded.
    pub history: History,
    /// Set when the workload should stop.
    pub stop: Arc<AtomicBool>,
    /// Seed of the clients' choices.
    pub seed: u64,
    /// The shape of written values.
    pub payload: Payload,
}

/// How cache values and queue bodies are written. The history and the checks always see the
/// plain number inside ([`Payload::unwrap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The number itself.
    Plain,
    /// The number at the bottom of 60 nested arrays, beside 16 KB of padding: near the
    /// API's nesting limit (64 levels for a whole body) and far above any small value, so
    /// replication, snapshots and restarts carry what a client may legally send.
    Deep,
}

/// Levels of nesting of a deep value: a cache put's body adds one.
const DEEP_LEVELS: usize = 60;
/// Padding of a deep value, in bytes.
const DEEP_PADDING: usize = 16 * 1024;

impl Payload {
    /// `value` in this shape.
    pub fn wrap(self, value: serde_json::Value) -> serde_json::Value {
        match self {
            Self::Plain => value,
            Self::Deep => {
                let mut wrapped = json!({ "v": value, "pad": "p".repeat(DEEP_PADDING) });
                for _ in 0..DEEP_LEVELS {
                    wrapped = serde_json::Value::Array(vec![wrapped]);
                }
                wrapped
            }
        }
    }

    /// The plain value inside a value of either shape.
    pub fn unwrap(value: &serde_json::Value) -> &serde_json::Value {
        let mut inner = value;
        while let Some(first) = inner.as_array().and_then(|a| a.first()) {
            inner = first;
        }
        inner.get("v").unwrap_or(inner)
    }
}

impl Env {
    /// Runs `call` on `node` as operation `f` of `process` and records it.
    async fn record<T, Fut>(
        &self,
        process: usize,
        node: usize,
        f: &str,
        input: serde_json::Value,
        call: Fut,
    ) -> Result<T, ClientError>
    where
        T: Serialize,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let invoked_us = self.history.now_us();
        let (result, outcome) = match tokio::time::timeout(CALL_LIMIT, call).await {
            Ok(result) => {
                let outcome = outcome_of(&result);
                (result, outcome)
            }
            Err(_) => (
                Err(ClientError::Decode { url: String::new(), reason: "timed out".into() }),
                Outcome::Info { error: "timed out".into() },
            ),
        };
        self.history.push(Op {
            process,
            node,
            f: f.to_string(),
            input,
            invoked_us,
            completed_us: self.history.now_us(),
            outcome,
        });
        result
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }
}

/// One write to a resource that checks fencing tokens, as the resource saw it.
#[derive(Debug, Clone, Serialize)]
pub struct FencedWrite {
    /// Lock guarding the resource.
    pub lock: String,
    /// Writer.
    pub process: usize,
    /// Its token.
    pub fence: u64,
    /// Whether the resource accepted it (no larger token seen before).
    pub accepted: bool,
    /// Unix ms when the resource saw it.
    pub at_ms: u64,
    /// Unix ms the writer's lease was promised until.
    pub lease_until_ms: u64,
}

/// A resource that accepts a write only with a token at least as large as any seen.
#[derive(Default, Clone)]
pub struct FencedResource {
    highest: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Every write, in the order the resource saw them.
    pub writes: Arc<Mutex<Vec<FencedWrite>>>,
}

impl FencedResource {
    fn write(&self, lock: &str, process: usize, fence: u64, lease_until_ms: u64) {
        let Ok(mut highest) = self.highest.lock() else { return };
        let top = highest.entry(lock.to_string()).or_default();
        let accepted = fence >= *top;
        if accepted {
            *top = fence;
        }
        if let Ok(mut writes) = self.writes.lock() {
            writes.push(FencedWrite {
                lock: lock.to_string(),
                process,
                fence,
                accepted,
                at_ms: unix_ms(),
                lease_until_ms,
            });
        }
    }
}

/// How long a stalling lock holder waits before writing: past its 1.5 s lease.
const STALL_MS: u64 = 1_800;

/// Locks: each process takes one of two locks (mostly exclusive, sometimes shared) through
/// a node of its own, writes to the guarded resource with its fence, and releases.
pub async fn locks(env: Env, process: usize, resource: FencedResource) {
    let mut rng = StdRng::seed_from_u64(env.seed.wrapping_add(process as u64));
    let client_id = format!("c{process}");
    let mut attempt = 0usize;
    while env.running() {
        let node = (process + attempt) % env.clients.len();
        let client = env.clients[node].clone();
        let name = format!("lock-{}", rng.gen_range(0..2));
        let shared = rng.gen_bool(0.2);
        let options = LockOptions {
            client_id: client_id.clone(),
            mode: Some(if shared { "shared" } else { "exclusive" }.into()),
            ttl_ms: Some(1_500),
            wait_ms: Some(1_000),
        };
        let input = json!({ "name": name, "mode": options.mode, "client": client_id });
        match env.record(process, node, "acquire", input.clone(), client.acquire(&name, &options)).await {
            Ok(grant) => {
                if !shared {
                    // Now and then a holder stalls past its lease (as a paused process
                    // would) before it writes: its fence must then be refused.
                    if rng.gen_bool(0.1) {
                        tokio::time::sleep(Duration::from_millis(STALL_MS)).await;
                    }
                    resource.write(&name, process, grant.fence, grant.expires_at_ms);
                    // The same write through Sinkron's own fence check, which the checker
                    // holds to: nothing with a stale fence is ever applied.
                    let fence = Fence { lock: name.clone(), token: grant.fence };
                    let options = WriteOptions { fence: Some(fence), ..Default::default() };
                    let input = json!({ "name": name, "fence": grant.fence });
                    let value = json!({ "by": process, "fence": grant.fence });
                    let key = format!("guarded-{name}");
                    let put = client.kv_put_with(&key, value, &options);
                    let _ = env.record(process, node, "fenced_put", input, put).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..80))).await;
            }
            Err(e) if e.code().is_some() && !matches!(e.code(), Some("no_quorum" | "unavailable")) => {
                // Refused (timeout in the queue, deadlock): nothing to release.
                continue;
            }
            Err(_) => attempt += 1,
        }
        let _ = env.record(process, node, "release", input, client.release(&name, &client_id)).await;
    }
}

/// Cache: each process reads and writes two keys through one node of its own, so every
/// node has readers, the one cut off included; writes are unique values, so a read names
/// the write it saw. Of ten operations, six and a half are reads, two and a half writes and
/// one a delete, with little think time: a stale read needs a read on a node that is behind
/// (or cut off, serving hits while its lease runs) right after another node's read of a new
/// value or of a delete, and two hot keys make that common. Reads give up after half a
/// second, so a process whose node is cut off goes back to reading its hits. `durable`
/// writes are write-through.
pub async fn cache(env: Env, process: usize, durable: bool) {
    let mut rng = StdRng::seed_from_u64(env.seed.wrapping_add(1_000 + process as u64));
    let node = process % env.clients.len();
    let client = env.clients[node].clone();
    let mut n = 0i64;
    while env.running() {
        let key = format!("reg-{}", rng.gen_range(0..2));
        let dice = rng.gen_range(0..100);
        if dice < 10 {
            let input = json!({ "key": key });
            let _ = env.record(process, node, "delete", input, client.cache_delete(&key)).await;
        } else if dice < 35 {
            n += 1;
            let value = process as i64 * 1_000_000 + n;
            let input = json!({ "key": key, "value": value });
            let _ = env
                .record(
                    process,
                    node,
                    "write",
                    input,
                    client.cache_put(&key, env.payload.wrap(json!(value)), durable),
                )
                .await;
        } else {
            let input = json!({ "key": key });
            let quick = &env.quick[node];
            let read =
                async { quick.cache_get(&key).await.map(|v| v.map(|v| Payload::unwrap(&v.value).clone())) };
            let _ = env.record(process, node, "read", input, read).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2..15))).await;
    }
}

/// The queue whose sends are keyed, so its messages spread over the ring's partitions.
pub const QUEUE: &str = "chaos";
/// The queue whose sends carry no key, so every message goes to its home partition; its
/// consumer waits and carries its acks, the path on which a waiting receive at a follower
/// is relayed to the partition's leader.
pub const PLAIN_QUEUE: &str = "chaos-plain";
/// How long a delivery stays invisible to other receives.
pub const VISIBILITY_MS: u64 = 3_000;

/// Queue producer: sends unique bodies, retrying each with its request id until it is
/// acknowledged or the run ends. `keyed` sends go to [`QUEUE`] under one of eight keys;
/// the others go to [`PLAIN_QUEUE`], a few milliseconds apart so that its consumer often
/// finds nothing and waits.
pub async fn produce(env: Env, process: usize, keyed: bool) {
    let mut rng = StdRng::seed_from_u64(env.seed.wrapping_add(2_000 + process as u64));
    let queue = if keyed { QUEUE } else { PLAIN_QUEUE };
    let mut n = 0u64;
    while env.running() {
        n += 1;
        let body = json!({ "p": process, "n": n });
        let request_id = format!("p{process}-{n}");
        let key = keyed.then(|| format!("k{}", n % 8));
        let mut attempt = 0usize;
        while env.running() {
            let node = (process + attempt) % env.clients.len();
            let client = env.clients[node].clone();
            let input = json!({ "queue": queue, "body": body, "key": key, "request_id": request_id });
            let sent = client.queue_send_idempotent(
                queue,
                env.payload.wrap(body.clone()),
                key.as_deref(),
                &request_id,
            );
            if env.record(process, node, "send", input, sent).await.is_ok() {
                break;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !keyed {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
        }
    }
}

/// Consumer of [`QUEUE`]: receives batches and acks them, each ack a call of its own.
pub async fn consume(env: Env, process: usize) {
    let mut attempt = 0usize;
    while env.running() {
        let _ = drain_once(&env, process, (process + attempt) % env.clients.len(), QUEUE)
            .await
            .map_err(|_| attempt += 1);
    }
}

/// Consumer of [`PLAIN_QUEUE`]: each receive waits up to a second and carries the acks of
/// the batch before it, and each goes to the next node in turn, so it often waits at a
/// follower of the queue's partition while the producer sends through another node.
/// Receipts whose acks' outcome is unknown (the call failed, or the answer lists them as
/// failed for any reason but a stale receipt) are carried again by the next receive.
pub async fn consume_carrying(env: Env, process: usize) {
    let options = ReceiveOptions { max: Some(10), visibility_ms: Some(VISIBILITY_MS), wait_ms: Some(1_000) };
    let mut receipts: Vec<String> = Vec::new();
    let mut turn = 0usize;
    while env.running() {
        let node = (process + turn) % env.clients.len();
        turn += 1;
        let client = env.clients[node].clone();
        let input = json!({ "queue": PLAIN_QUEUE, "visibility_ms": VISIBILITY_MS, "ack": receipts });
        let received = client.queue_receive_acking(PLAIN_QUEUE, &options, &receipts);
        match env.record(process, node, "receive-acking", input, received).await {
            Ok((messages, acked)) => {
                receipts = acked
                    .failed
                    .into_iter()
                    .filter(|f| f.error != "not_found")
                    .map(|f| f.receipt)
                    .chain(messages.into_iter().map(|m| m.receipt))
                    .collect();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One receive from `queue` and the acks of what it returned, one call each; answers the
/// ids received.
async fn drain_once(env: &Env, process: usize, node: usize, queue: &str) -> Result<Vec<String>, ClientError> {
    let client = env.clients[node].clone();
    let options = ReceiveOptions { max: Some(10), visibility_ms: Some(VISIBILITY_MS), wait_ms: Some(300) };
    let input = json!({ "queue": queue, "visibility_ms": VISIBILITY_MS });
    let messages = env.record(process, node, "receive", input, client.queue_receive(queue, &options)).await?;
    for m in &messages {
        let input = json!({ "queue": queue, "id": m.id, "receipt": m.receipt });
        let _ = env.record(process, node, "ack", input, client.queue_ack(queue, &m.receipt)).await;
    }
    Ok(messages.into_iter().map(|m| m.id).collect())
}

/// After the faults, with the producers stopped: consumes both queues until every id of
/// `missing` (the acknowledged sends not delivered yet) was delivered, or `within` passed.
pub async fn final_drain(env: &Env, mut missing: BTreeSet<String>, within: Duration) {
    let deadline = Instant::now() + within;
    // A queue is drained through one node while it answers messages; an empty answer (after
    // its wait) or a failure moves on to the other queue and the next node.
    let mut turn = 0usize;
    while Instant::now() < deadline && !missing.is_empty() {
        let queue = if turn.is_multiple_of(2) { QUEUE } else { PLAIN_QUEUE };
        match drain_once(env, 10_000, (turn / 2) % env.clients.len(), queue).await {
            Ok(ids) if !ids.is_empty() => {
                for id in ids {
                    missing.remove(&id);
                }
            }
            _ => turn += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_payload_is_within_the_api_limit_and_unwraps_to_its_number() {
        let deep = Payload::Deep.wrap(json!(42));
        let body = serde_json::to_vec(&json!({ "value": deep, "durable": true })).expect("encode");
        let depth = sinkron_core::limits::json_depth_within(&body, sinkron_core::limits::JSON_DEPTH_MAX);
        assert!(depth.is_some_and(|d| d > 60), "deep, yet accepted: {depth:?}");
        assert!(body.len() > DEEP_PADDING, "large");
        assert_eq!(Payload::unwrap(&deep), &json!(42));
        assert_eq!(Payload::unwrap(&Payload::Plain.wrap(json!({"p": 1}))), &json!({"p": 1}));
        assert_eq!(Payload::unwrap(&json!(7)), &json!(7));
    }
}
