//! Queue workloads for cluster tests: producers that record what was acknowledged, and
//! consumers that drain a queue and record every delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sinkron_client::{Client, ReceiveOptions};

/// Waits until the queue topology exists and every partition has a leader.
pub async fn wait_queues_ready(client: &Client, within: Duration) {
    super::eventually(within, || async {
        let ring = client.ring().await.map_err(|e| e.to_string())?;
        let partitions = ring.partitions;
        let leaderless = partitions.iter().filter(|p| p.leader.is_none()).count();
        if partitions.is_empty() || leaderless > 0 {
            return Err(format!("{leaderless} of {} partitions without a leader", partitions.len()));
        }
        Ok(())
    })
    .await;
}

/// The leader of `partition` as the ring reports it.
pub async fn partition_leader(client: &Client, partition: u32) -> String {
    super::eventually(Duration::from_secs(20), || async {
        let ring = client.ring().await.map_err(|e| e.to_string())?;
        ring.partitions
            .get(partition as usize)
            .and_then(|p| p.leader.clone())
            .ok_or_else(|| format!("partition {partition} has no leader"))
    })
    .await
}

/// Sends `body` until acknowledged, retrying with one request id so a send whose reply was
/// lost is stored once; returns the message id, or `None` if `give_up` passed first.
pub async fn send_until_acked(
    clients: &[Client],
    queue: &str,
    body: serde_json::Value,
    key: Option<&str>,
    request_id: &str,
    give_up: Instant,
) -> Option<String> {
    let mut attempt = 0usize;
    while Instant::now() < give_up {
        let client = &clients[attempt % clients.len()];
        attempt += 1;
        match client.queue_send_idempotent(queue, body.clone(), key, request_id).await {
            Ok(sent) => return Some(sent.id),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

/// What consumers saw.
#[derive(Debug, Default)]
pub struct Consumed {
    /// Deliveries per message id.
    pub deliveries: BTreeMap<String, u32>,
    /// Bodies by message id.
    pub bodies: BTreeMap<String, serde_json::Value>,
    /// Ids whose ack was answered successfully.
    pub acked: BTreeSet<String>,
}

impl Consumed {
    /// Messages delivered more than once.
    pub fn duplicates(&self) -> usize {
        self.deliveries.values().filter(|n| **n > 1).count()
    }
}

/// Receives and acks from `queue` through `clients` in turn until every id of `expected` was
/// delivered or `within` passed.
pub async fn drain(
    clients: &[Client],
    queue: &str,
    expected: &BTreeMap<String, serde_json::Value>,
    within: Duration,
) -> Consumed {
    let mut consumed = Consumed::default();
    let deadline = Instant::now() + within;
    let options = ReceiveOptions { max: Some(20), visibility_ms: Some(5_000), wait_ms: Some(200) };
    let mut turn = 0usize;
    while Instant::now() < deadline && !expected.keys().all(|id| consumed.deliveries.contains_key(id)) {
        let client = &clients[turn % clients.len()];
        turn += 1;
        let Ok(messages) = client.queue_receive(queue, &options).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for m in messages {
            *consumed.deliveries.entry(m.id.clone()).or_default() += 1;
            consumed.bodies.insert(m.id.clone(), m.body.clone());
            if client.queue_ack(queue, &m.receipt).await.is_ok() {
                consumed.acked.insert(m.id);
            }
        }
    }
    consumed
}

/// Every id in `expected` (acknowledged id → the body acknowledged under it) was delivered
/// with that body, and nothing outside `sent_bodies` was. The body matters: a log that lost
/// an acknowledged entry hands its id (partition and index) to the next message stored, so
/// an id that comes back proves nothing by itself.
pub fn check_at_least_once(
    expected: &BTreeMap<String, serde_json::Value>,
    sent_bodies: &BTreeSet<String>,
    consumed: &Consumed,
) {
    let missing: Vec<&String> = expected.keys().filter(|id| !consumed.deliveries.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never delivered: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let replaced: Vec<String> = expected
        .iter()
        .filter(|(id, body)| consumed.bodies.get(*id) != Some(body))
        .map(|(id, body)| format!("{id}: acknowledged {body}, delivered {:?}", consumed.bodies.get(id)))
        .collect();
    assert!(
        replaced.is_empty(),
        "{} acknowledged messages came back with another body (lost, their id reused): {:?}",
        replaced.len(),
        &replaced[..replaced.len().min(10)]
    );
    for (id, body) in &consumed.bodies {
        assert!(sent_bodies.contains(&body.to_string()), "message {id} with body {body} was never sent");
    }
}

/// Producers that send unique bodies until stopped, each send retried with its request id
/// until acknowledged; they record every acknowledged send.
pub struct Producers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Producers {
    /// Starts `count` producers on `queue` through `via`; with `keys > 0` message `i` gets
    /// key `k{i % keys}`, else no key.
    pub fn start(via: &[Client], queue: &str, count: usize, keys: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>> = Default::default();
        let tasks = (0..count)
            .map(|p| {
                let (via, stop, acked, queue) =
                    (via.to_vec(), stop.clone(), acked.clone(), queue.to_string());
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let body = serde_json::json!({ "p": p, "n": i });
                        let key = (keys > 0).then(|| format!("k{}", i % keys));
                        let give_up = Instant::now() + Duration::from_secs(30);
                        let request_id = format!("{queue}-{p}-{i}");
                        if let Some(id) =
                            send_until_acked(&via, &queue, body.clone(), key.as_deref(), &request_id, give_up)
                                .await
                        {
                            acked.lock().expect("lock").push((id, body));
                        }
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Self { stop, acked, tasks }
    }

    /// How many sends were acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Waits until `more` further sends than `since` were acknowledged.
    pub async fn wait_for_more(&self, since: usize, more: usize, within: Duration) {
        super::eventually(within, || async {
            let now = self.acked();
            if now >= since + more {
                Ok(())
            } else {
                Err(format!("{now} acknowledged, {since} before"))
            }
        })
        .await;
    }

    /// Stops them; answers each acknowledged id with its body, and every acknowledged body as
    /// JSON text.
    pub async fn stop(self) -> (BTreeMap<String, serde_json::Value>, BTreeSet<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("producer");
        }
        let acked = self.acked.lock().expect("lock").clone();
        let bodies = acked.iter().map(|(_, b)| b.to_string()).collect();
        (acked.into_iter().collect(), bodies)
    }
}
