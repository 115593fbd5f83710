//! Compare-and-set, blocking reads, watches and fenced writes on real processes.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sinkron_client::{Client, ClientError, Fence, LockOptions, WriteOptions};
use support::{eventually, TestCluster};

const FORM: Duration = Duration::from_secs(30);

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_and_set_races_from_three_nodes_have_one_winner_per_version() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    // version read -> the writer that won at it
    let wins: Arc<Mutex<BTreeMap<u64, (usize, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for node in 0..3 {
        let client = cluster.client(node);
        let wins = wins.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for round in 0..40 {
                let seen = client.kv_get("counter").await.expect("read").map_or(0, |v| v.version);
                // One request id per attempt: a retry after an unknown outcome (a 503 on a
                // busy machine) gets the first answer instead of applying twice.
                let options = WriteOptions {
                    if_version: Some(seen),
                    request_id: Some(format!("cas-{node}-{round}")),
                    ..Default::default()
                };
                let answer = loop {
                    match client.kv_put_with("counter", json!(node), &options).await {
                        Err(ClientError::Api { status: 503, .. }) | Err(ClientError::Transport { .. }) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => break other,
                    }
                };
                match answer {
                    Ok(put) => {
                        won += 1;
                        let previous = wins.lock().expect("lock").insert(seen, (node, put.version));
                        assert!(
                            previous.is_none(),
                            "two writers won at version {seen}: {previous:?} and {node}"
                        );
                    }
                    Err(ClientError::Api { code, .. }) if code == "version_mismatch" => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            won
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    let wins = wins.lock().expect("lock").clone();
    assert_eq!(wins.len(), total);
    assert!(total >= 40, "at least one writer wins each round: {total}");
    // The winners form one chain: each won at the version the previous one wrote.
    let mut expected = 0;
    for (seen, (_, wrote)) in &wins {
        assert_eq!(*seen, expected, "a win at {seen} skipped the version {expected}: {wins:?}");
        expected = *wrote;
    }
    let last = cluster.client(0).kv_get("counter").await.expect("read").expect("present");
    assert_eq!(last.version, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_reads_wake_on_a_write_through_another_node_and_time_out_with_the_value() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    let put = cluster.client(2).kv_put("cfg", json!("v1")).await.expect("put");
    let reader = cluster.client(0);
    let started = Instant::now();
    let waiting = tokio::spawn(async move { reader.kv_get_after("cfg", put.version, 20_000).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = cluster.client(1).kv_put("cfg", json!("v2")).await.expect("put");
    let got = waiting.await.expect("task").expect("read").expect("present");
    assert_eq!((got.value, got.version), (json!("v2"), second.version));
    assert!(started.elapsed() < Duration::from_secs(10), "woken by the write, not the timeout");
    // Nothing newer: answered after wait_ms with the current value.
    let started = Instant::now();
    let same =
        cluster.client(2).kv_get_after("cfg", second.version, 500).await.expect("read").expect("present");
    assert_eq!(same.version, second.version);
    assert!(started.elapsed() >= Duration::from_millis(450));
    // A delete after the version wakes a waiter with 404.
    let reader = cluster.client(1);
    let waiting = tokio::spawn(async move { reader.kv_get_after("cfg", second.version, 20_000).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.client(0).kv_delete("cfg").await.expect("delete");
    assert_eq!(waiting.await.expect("task").expect("read"), None);
    let bad = cluster.client(0).kv_get_after("cfg", 1, 60_001).await;
    assert_eq!(code(bad), "invalid_argument");
}

/// Follows `prefix` from `from`, reconnecting to the next live node whenever the stream
/// breaks, until `want` changes were seen; returns their versions in order.
async fn follow(
    cluster: &TestCluster,
    alive: &[usize],
    prefix: &str,
    mut from: u64,
    want: usize,
) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut node = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < want {
        assert!(Instant::now() < deadline, "saw {} of {want} changes: {seen:?}", seen.len());
        let client = cluster.client(alive[node % alive.len()]);
        node += 1;
        let Ok(mut watch) = client.watch(prefix, Some(from)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_secs(3), watch.next()).await {
            assert!(event.key.starts_with(prefix));
            seen.push(event.version);
            from = event.version;
            if seen.len() == want {
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_resumed_after_a_node_kill_and_a_leader_change_misses_nothing_and_repeats_nothing() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let start = cluster.client(0).kv_put("other", json!(0)).await.expect("put").version;
    let writer_node = (leader + 1) % 3;
    let writer = cluster.client(writer_node);
    let mut versions = Vec::new();
    for i in 0..20 {
        versions.push(writer.kv_put(&format!("w/{i}"), json!(i)).await.expect("put").version);
        writer.kv_put(&format!("elsewhere/{i}"), json!(i)).await.expect("put");
    }
    // The first half, watched through the leader.
    let first = follow(&cluster, &[leader], "w/", start, 10).await;
    assert_eq!(first, versions[..10]);
    // The leader dies; the rest is written under the new one and watched from elsewhere.
    cluster.kill(leader);
    let alive: Vec<usize> = cluster.all().into_iter().filter(|&i| i != leader).collect();
    cluster.wait_leader(&alive, FORM).await;
    for i in 20..30 {
        let key = format!("w/{i}");
        let options = WriteOptions { request_id: Some(format!("put-{i}")), ..Default::default() };
        let put = eventually(FORM, || writer.kv_put_with(&key, json!(i), &options)).await;
        versions.push(put.version);
    }
    let rest = follow(&cluster, &alive, "w/", first[9], 20).await;
    assert_eq!(rest, versions[10..], "resumed at the last version seen: no gap, no repeat");
    let deleted = writer.kv_delete("w/0").await;
    assert!(deleted.is_ok());
    let mut watch =
        cluster.client(alive[1]).watch("w/", Some(*versions.last().expect("some"))).await.expect("watch");
    let event =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("in time").expect("ok");
    let event = event.expect("an event");
    assert_eq!((event.key.as_str(), event.kind.as_str(), event.value), ("w/0", "delete", None));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_beyond_the_window_answers_410_with_where_to_resume() {
    let cluster = TestCluster::start(3, &[("WATCH_HISTORY", "5")]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    let client = cluster.client(1);
    let first = client.kv_put("h/0", json!(0)).await.expect("put").version;
    for i in 1..20 {
        client.kv_put(&format!("h/{i}"), json!(i)).await.expect("put");
    }
    let err = client.watch("h/", Some(first)).await.expect_err("compacted");
    let ClientError::Api { status, code, .. } = &err else { panic!("{err:?}") };
    assert_eq!((*status, code.as_str()), (410, "compacted"));
    let raw = reqwest::get(format!("{}/v1/watch?prefix=h/&from_version={first}", cluster.url(1)))
        .await
        .expect("get");
    assert_eq!(raw.status().as_u16(), 410);
    let body: serde_json::Value = raw.json().await.expect("json");
    let oldest = body["oldest_version"].as_u64().expect("oldest_version");
    assert!(oldest > first, "{body}");
    // Resuming there gives the changes the window still holds.
    let mut watch = client.watch("h/", Some(oldest)).await.expect("resume");
    let event =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("in time").expect("ok");
    assert!(event.expect("an event").version > oldest);
}

#[tokio::test(flavor = "multi_thread")]
async fn fenced_writes_are_refused_after_a_lease_expiry_and_a_leader_failover() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let client = cluster.client((leader + 1) % 3);
    let hold = |client_id: &str, ttl_ms| LockOptions {
        client_id: client_id.into(),
        ttl_ms: Some(ttl_ms),
        ..Default::default()
    };
    let fenced =
        |token| WriteOptions { fence: Some(Fence { lock: "job".into(), token }), ..Default::default() };
    let first = client.acquire("job", &hold("worker-a", 600)).await.expect("acquire").fence;
    client.kv_put_with("result", json!("a"), &fenced(first)).await.expect("the holder writes");
    // The lease lapses (a leader that just took office extends leases once, so wait until
    // the leader has expired it): the same fence is refused, and the value stays.
    eventually(FORM, || async {
        let state = client.lock_status("job").await?;
        match state.holders.len() {
            0 => Ok(()),
            _ => Err(ClientError::Config(format!("still held: {state:?}"))),
        }
    })
    .await;
    assert_eq!(code(client.kv_put_with("result", json!("a-late"), &fenced(first)).await), "stale_fence");
    let successor = hold("worker-b", 60_000);
    let second = eventually(FORM, || client.acquire("job", &successor)).await.fence;
    assert!(second > first);
    let raw = reqwest::Client::new()
        .put(format!("{}/v1/kv/result", cluster.url((leader + 2) % 3)))
        .json(&json!({"value": "a-late", "fence": {"lock": "job", "token": first}}))
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.status().as_u16(), 409);
    let body: serde_json::Value = raw.json().await.expect("json");
    assert_eq!((body["error"].as_str(), body["current_fence"].as_u64()), (Some("stale_fence"), Some(second)));
    client.kv_put_with("result", json!("b"), &fenced(second)).await.expect("the successor writes");
    // A durable cache write and a delete are fenced the same way.
    let cache = reqwest::Client::new()
        .put(format!("{}/v1/cache/shared", cluster.url(0)))
        .json(&json!({"value": 1, "fence": {"lock": "job", "token": first}}))
        .send()
        .await
        .expect("answer");
    assert_eq!(cache.status().as_u16(), 409);
    assert_eq!(code(client.kv_delete_with("result", &fenced(first)).await), "stale_fence");
    // A queue send too: the stale fence is refused, the current one stored.
    let stale = Fence { lock: "job".into(), token: first };
    assert_eq!(code(client.queue_send_fenced("jobs", json!("late"), None, &stale).await), "stale_fence");
    let current_fence = Fence { lock: "job".into(), token: second };
    eventually(FORM, || client.queue_send_fenced("jobs", json!("b"), None, &current_fence)).await;

    // The leader dies; under the next one the old fence is still stale, the current one good.
    cluster.kill(leader);
    let alive: Vec<usize> = cluster.all().into_iter().filter(|&i| i != leader).collect();
    cluster.wait_leader(&alive, FORM).await;
    let survivor = cluster.client(alive[0]);
    let refused = eventually(FORM, || async {
        match survivor.kv_put_with("result", json!("a-again"), &fenced(first)).await {
            Err(ClientError::Api { code, .. }) if code == "stale_fence" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    refused.await;
    let current = fenced(second);
    eventually(FORM, || survivor.kv_put_with("result", json!("b2"), &current)).await;
    let value = survivor.kv_get("result").await.expect("read").expect("present");
    assert_eq!(value.value, json!("b2"));
    let _: &Client = &survivor;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_client_fails_over_past_a_dead_endpoint_and_a_killed_node() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let dead = format!("127.0.0.1:{}", support::free_port());
    let first = (leader + 1) % 3;
    let endpoints = [dead.clone(), cluster.nodes[first].addr(), cluster.nodes[(leader + 2) % 3].addr()];
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let client =
        Client::connect_many(&endpoints, Duration::from_secs(20), &Default::default()).expect("client");
    // The first endpoint refuses connections: the call goes on to the next.
    let put = client.kv_put("fo", json!(1)).await.expect("put past a dead endpoint");
    // The node in use dies: the next call moves on again, and every write applies once.
    cluster.kill(first);
    let mut versions = vec![put.version];
    for i in 2..=10 {
        versions.push(client.kv_put("fo", json!(i)).await.expect("put after a kill").version);
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    let got = client.kv_get("fo").await.expect("read").expect("present");
    assert_eq!((got.value, got.version), (json!(10), *versions.last().expect("some")));
    assert!(client.kv_delete("fo").await.expect("delete").existed);
}
