//! MESI cache tests on real `sinkron serve` processes.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sinkron_client::Client;
use support::{eventually, TestCluster};

const FORM: Duration = Duration::from_secs(20);

async fn states(client: &Client, key: &str) -> Vec<String> {
    let lines = client.cache_lines(key).await.expect("lines");
    lines.lines.into_iter().map(|l| l.state).collect()
}

/// Waits until every node's cache joined (its self-revocation applied). Contended keys
/// hand ownership around through several log round trips, so requests get a longer
/// bounded wait than the other cluster tests (the suite runs many clusters at once on two
/// cores).
async fn ready_cluster(extra: &[(&str, &str)]) -> TestCluster {
    let mut env = vec![("REQUEST_TIMEOUT_MS", "15000")];
    env.extend_from_slice(extra);
    let cluster = TestCluster::start(3, &env);
    cluster.wait_leader(&cluster.all(), FORM).await;
    for i in cluster.all() {
        let client = cluster.client(i);
        eventually(FORM, || async {
            let stats = client.cache_stats().await.map_err(|e| e.to_string())?;
            if stats.lease_valid {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        })
        .await;
        let key = format!("warm-{i}");
        eventually(FORM, || client.cache_put(&key, json!(i), false)).await;
    }
    cluster
}

async fn read(client: &Client, key: &str) -> sinkron_client::CacheValue {
    client.cache_get(key).await.expect("cache read").expect("the key has a value")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_read_everywhere_and_lines_follow_the_protocol() {
    let cluster = ready_cluster(&[]).await;
    let put = cluster.client(0).cache_put("k", json!("v1"), false).await.expect("put");
    assert_eq!(put.state, "M", "a write-back write leaves the line modified");
    assert_eq!(states(&cluster.client(2), "k").await, vec!["M", "I", "I"]);
    let hit = cluster.client(0).cache_get("k").await.expect("read").expect("value");
    assert_eq!((hit.value.clone(), hit.hit), (json!("v1"), true), "the writer reads from its line");

    for i in [1, 2] {
        let got = cluster.client(i).cache_get("k").await.expect("read").expect("value");
        assert_eq!(got.value, "v1", "node{} reads the latest write", i + 1);
        assert_eq!(got.state, "S");
    }
    assert_eq!(states(&cluster.client(0), "k").await, vec!["S", "S", "S"], "M -> S after the write-back");
    let again = cluster.client(2).cache_get("k").await.expect("read").expect("value");
    assert!(again.hit, "a shared line serves hits");

    // A write on node 3 invalidates the others.
    cluster.client(2).cache_put("k", json!("v2"), false).await.expect("put");
    assert_eq!(states(&cluster.client(1), "k").await, vec!["I", "I", "M"]);
    for i in [0, 1] {
        assert_eq!(read(&cluster.client(i), "k").await.value, "v2");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_cache_evicts_in_lru_order_without_losing_a_modified_value() {
    let cluster = ready_cluster(&[("CACHE_MAX_SIZE", "2")]).await;
    let c = cluster.client(0);
    c.cache_put("a", json!(1), false).await.expect("put a");
    c.cache_put("b", json!(2), false).await.expect("put b");
    assert!(read(&c, "a").await.hit, "a is now the most recent");
    c.cache_put("c", json!(3), false).await.expect("put c");
    assert_eq!(states(&c, "b").await[0], "I", "b was the least recently used");
    assert_eq!(states(&c, "a").await[0], "M");
    let stats = c.cache_stats().await.expect("stats");
    assert!(stats.evictions >= 1, "{stats:?}");
    let metrics = c.metrics().await.expect("metrics");
    assert!(metrics.contains("sinkron_cache_events_total{event=\"evictions\"}"), "{metrics}");
    assert!(metrics.contains("sinkron_cache_transitions_total"), "{metrics}");
    // The evicted line was modified: its value was written back, not lost.
    assert_eq!(read(&cluster.client(1), "b").await.value, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn write_through_values_survive_a_full_cluster_restart() {
    let mut cluster = ready_cluster(&[]).await;
    for i in 0..10 {
        cluster.client(i % 3).cache_put(&format!("durable-{i}"), json!(i), true).await.expect("durable put");
    }
    for i in cluster.all() {
        cluster.kill(i);
    }
    for i in cluster.all() {
        cluster.spawn(i, &[]);
    }
    cluster.wait_leader(&cluster.all(), FORM).await;
    for i in 0..10 {
        let (client, key) = (cluster.client((i + 1) % 3), format!("durable-{i}"));
        let got = eventually(FORM, || client.cache_get(&key)).await;
        assert_eq!(got.map(|v| v.value.clone()), Some(json!(i)), "{key} survived");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_node_stops_serving_hits_once_its_lease_is_over() {
    let mut cluster = ready_cluster(&[]).await;
    cluster.client(0).cache_put("lonely", json!("before"), true).await.expect("put");
    let got = cluster.client(0).cache_get("lonely").await.expect("read").expect("value");
    assert!(got.hit);
    cluster.kill(1);
    cluster.kill(2);
    // The lease is RAFT_ELECTION_TIMEOUT_MIN (0.3 s in tests); renewals now fail.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = cluster.client(0).cache_get("lonely").await;
        if matches!(&answer, Err(e) if e.code().is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "still serving hits without a lease: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = cluster.client(0).cache_stats().await.expect("stats");
    assert!(!stats.lease_valid, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_on_three_nodes_never_let_a_reader_go_back_in_time() {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    let cluster = ready_cluster(&[]).await;
    // Writer w owns key `reg-w` and writes 1, 2, 3, ... from its node. Readers on every node
    // read all three keys. For a single-writer register, linearizability means: a read never
    // returns less than a write that completed before the read began, and a reader's
    // successive reads of one key never go down.
    let completed: Arc<Vec<AtomicI64>> = Arc::new((0..3).map(|_| AtomicI64::new(0)).collect());
    let mut writers = Vec::new();
    for w in 0..3usize {
        let (client, completed) = (cluster.client(w), completed.clone());
        writers.push(tokio::spawn(async move {
            for n in 1..=12i64 {
                client.cache_put(&format!("reg-{w}"), json!(n), false).await.expect("write");
                completed[w].store(n, Ordering::SeqCst);
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..3usize {
        let (client, completed) = (cluster.client(r), completed.clone());
        readers.push(tokio::spawn(async move {
            let mut last = [0i64; 3];
            for round in 0..12 {
                for (w, last) in last.iter_mut().enumerate() {
                    let floor = completed[w].load(Ordering::SeqCst);
                    let got = client
                        .cache_get(&format!("reg-{w}"))
                        .await
                        .expect("read")
                        .map(|v| v.value.as_i64().unwrap_or(-1))
                        .unwrap_or(0);
                    assert!(
                        got >= floor,
                        "reader {r} round {round}: reg-{w} = {got} after write {floor} completed"
                    );
                    assert!(got >= *last, "reader {r}: reg-{w} went back from {last} to {got}");
                    *last = got;
                }
            }
        }));
    }
    for t in writers.into_iter().chain(readers) {
        t.await.expect("no violation");
    }
    for r in 0..3 {
        for w in 0..3 {
            assert_eq!(read(&cluster.client(r), &format!("reg-{w}")).await.value, 12);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_history_with_writers_and_readers_on_all_nodes_is_linearizable() {
    use sinkron_chaos::linearizability::{check_register, Event, RegOp, Verdict};
    use std::sync::{Arc, Mutex};
    let cluster = ready_cluster(&[]).await;
    let history: Arc<Mutex<Vec<Event>>> = Arc::default();
    let base = Instant::now();
    let mut tasks = Vec::new();
    // Six clients, two per node: one writes unique values, one reads, 8 operations each.
    for c in 0..6usize {
        let (client, history) = (cluster.client(c % 3), history.clone());
        let micros = move |t: Instant| t.duration_since(base).as_micros() as u64;
        tasks.push(tokio::spawn(async move {
            for n in 0..8i64 {
                let start = Instant::now();
                let op = if c < 3 {
                    let v = (c as i64) * 100 + n;
                    client.cache_put("lin", json!(v), false).await.expect("write");
                    RegOp::Write(v)
                } else {
                    let got = client.cache_get("lin").await.expect("read");
                    RegOp::Read(got.and_then(|v| v.value.as_i64()))
                };
                let end = Instant::now();
                history.lock().expect("history").push(Event {
                    start: micros(start),
                    end: Some(micros(end)),
                    op,
                });
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let history = history.lock().expect("history").clone();
    assert_eq!(history.len(), 48);
    assert_eq!(check_register(&history, None), Verdict::Linearizable);
}

async fn isolate(cluster: &TestCluster, i: usize, isolated: bool) {
    let url = format!("http://{}/v1/debug/isolate", cluster.nodes[i].addr());
    let resp = reqwest::Client::new()
        .post(url)
        .json(&json!({ "isolated": isolated }))
        .send()
        .await
        .expect("isolate");
    assert_eq!(resp.status().as_u16(), 200, "fault injection enabled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_node_stops_serving_hits_before_the_majority_write_completes() {
    let cluster = ready_cluster(&[("SINKRON_FAULT_INJECTION", "1"), ("REQUEST_TIMEOUT_MS", "3000")]).await;
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let cut = (leader + 1) % 3;
    let writer = (leader + 2) % 3;
    cluster.client(leader).cache_put("p", json!("old"), true).await.expect("put");
    let before = cluster.client(cut).cache_get("p").await.expect("read").expect("value");
    assert_eq!(before.value, "old");
    assert!(cluster.client(cut).cache_get("p").await.expect("read").expect("value").hit);

    isolate(&cluster, cut, true).await;
    // The majority side writes; the write must wait until the cut-off node can no longer
    // serve its shared copy as a hit.
    let started = Instant::now();
    cluster.client(writer).cache_put("p", json!("new"), false).await.expect("the majority's write completes");
    let write_done = Instant::now();
    assert!(
        write_done - started < Duration::from_secs(5),
        "bounded by the lease: {:?}",
        write_done - started
    );
    // From now on the cut-off node must never answer the old value. (A miss waits for the
    // request timeout, so a few reads are enough.)
    for _ in 0..3 {
        match cluster.client(cut).cache_get("p").await {
            Ok(Some(v)) => assert_ne!(v.value, "old", "a stale hit after the write completed: {v:?}"),
            Ok(None) => panic!("the key exists"),
            Err(e) => assert!(e.code().is_some(), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = cluster.client(cut).cache_stats().await.expect("stats");
    assert!(!stats.lease_valid, "{stats:?}");

    // Healed, the node rejoins the protocol and reads the new value.
    isolate(&cluster, cut, false).await;
    let client = cluster.client(cut);
    let got = eventually(FORM, || async {
        match client.cache_get("p").await {
            Ok(Some(v)) if v.value == "new" => Ok(v),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(got.value, "new");
}

/// Regression (found by `sinkron chaos`, workload cache-write-back, seed 12): a write-back
/// write waiting out a paused leader was acknowledged although the resumed leader had
/// meanwhile revoked its node's lines, dropping the value; the next reads on that node
/// returned the older value. A write whose line is dropped before it is confirmed is now
/// answered 503, and a leader that was itself stalled no longer revokes holders for
/// renewals it could not hear.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_not_acknowledged_after_a_leader_pause_revoked_its_line() {
    use nix::sys::signal::Signal;
    let cluster = ready_cluster(&[]).await;
    for round in 0..4 {
        let leader = cluster.wait_leader(&cluster.all(), FORM).await;
        let writer = (leader + 1) % 3;
        let key = format!("paused-{round}");
        let client = cluster.client(writer);
        eventually(FORM, || client.cache_put(&key, json!("before"), false)).await;
        cluster.signal(leader, Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(150 + 100 * round)).await;
        let written = {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move { client.cache_put(&key, json!("after"), false).await })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.signal(leader, Signal::SIGCONT);
        let outcome = written.await.expect("writer");
        if outcome.is_ok() {
            // Acknowledged: every read from now on sees it (or something newer).
            for i in cluster.all() {
                let reader = cluster.client(i);
                let got = eventually(FORM, || reader.cache_get(&key)).await;
                assert_eq!(
                    got.map(|v| v.value.clone()),
                    Some(json!("after")),
                    "round {round}, node {}",
                    i + 1
                );
            }
        }
    }
}

/// A cluster for the stale-read regressions: a 1 s coherence lease (the election timeout's
/// minimum), so the windows below are wide on a busy machine, and a short request timeout.
async fn lease_cluster(extra: &[(&str, &str)]) -> TestCluster {
    let mut env = vec![
        ("SINKRON_FAULT_INJECTION", "1"),
        ("RAFT_ELECTION_TIMEOUT_MIN", "1.0"),
        ("RAFT_ELECTION_TIMEOUT_MAX", "2.0"),
        ("RAFT_HEARTBEAT_INTERVAL", "0.2"),
        ("REQUEST_TIMEOUT_MS", "2500"),
    ];
    env.extend_from_slice(extra);
    ready_cluster(&env).await
}

/// Puts `old` durably through `by` and makes `sharer` hold it as a hit.
async fn shared_on(cluster: &TestCluster, key: &str, by: usize, sharer: usize) {
    cluster.client(by).cache_put(key, json!("old"), true).await.expect("put");
    let client = cluster.client(sharer);
    let hit = eventually(FORM, || async {
        match client.cache_get(key).await {
            Ok(Some(v)) if v.hit => Ok(v),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(hit.value, "old");
}

/// After `first` (a read that completed with `seen`), a read on the cut-off node must not
/// return the value that the write `seen` reflects replaced.
async fn assert_no_older_read_on(cluster: &TestCluster, cut: usize, key: &str, seen: &Option<Value>) {
    match cluster.client(cut).cache_get(key).await {
        Ok(Some(v)) => assert_ne!(
            v.value,
            "old",
            "node{} returned the old value after another read returned {seen:?}: {v:?}",
            cut + 1
        ),
        Ok(None) => {}
        Err(e) => assert!(e.code().is_some(), "{e}"),
    }
}

/// Regression (issue: cache reads not linearizable around partitions): a node cut off
/// while it shares a key keeps serving it as a hit until its lease runs out. A delete
/// through another node waits for that; a read on the third node whose miss is served
/// after the delete must wait too. Before the fix that read returned "no value" at once,
/// and the cut-off node then still answered the old value.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_does_not_return_a_delete_before_a_cut_off_sharer_lost_its_lease() {
    let cluster = lease_cluster(&[]).await;
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let (cut, deleter) = ((leader + 1) % 3, (leader + 2) % 3);
    shared_on(&cluster, "d", deleter, cut).await;
    isolate(&cluster, cut, true).await;
    let deleting = {
        let client = cluster.client(deleter);
        tokio::spawn(async move { client.cache_delete("d").await })
    };
    // The delete commits within milliseconds but waits about 1.5 s for the cut-off node.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let seen = cluster.client(leader).cache_get("d").await.expect("read").map(|v| v.value.clone());
    assert_no_older_read_on(&cluster, cut, "d", &seen).await;
    deleting.await.expect("deleter").expect("the delete completes");
    isolate(&cluster, cut, false).await;
}

/// Regression (same issue, the durable-write shape): the writer's own line of a durable
/// write is dropped for room before its invalidations are confirmed (a cache of one line),
/// so another node's read is served from the store at once. Before the fix that read
/// returned the new value while the cut-off sharer still served the old one.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_does_not_return_a_durable_write_before_a_cut_off_sharer_lost_its_lease() {
    let cluster = lease_cluster(&[("CACHE_MAX_SIZE", "1")]).await;
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let (cut, writer) = ((leader + 1) % 3, (leader + 2) % 3);
    shared_on(&cluster, "w", writer, cut).await;
    isolate(&cluster, cut, true).await;
    let writing = {
        let client = cluster.client(writer);
        tokio::spawn(async move { client.cache_put("w", json!("new"), true).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The writer reads another key: its only line, the written one, is evicted.
    let _ = cluster.client(writer).cache_get("other").await.expect("read other");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = cluster.client(leader).cache_get("w").await.expect("read").map(|v| v.value.clone());
    assert_no_older_read_on(&cluster, cut, "w", &seen).await;
    writing.await.expect("writer").expect("the write completes");
    isolate(&cluster, cut, false).await;
}
