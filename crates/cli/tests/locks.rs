//! Lock manager tests on real `sinkron serve` processes.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sinkron_client::{Client, ClientError, LockOptions};
use support::{sinkron_bin, TestCluster};

const FORM: Duration = Duration::from_secs(20);

fn opts(client_id: &str, shared: bool, ttl_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions {
        client_id: client_id.into(),
        mode: Some(if shared { "shared" } else { "exclusive" }.into()),
        ttl_ms: Some(ttl_ms),
        wait_ms: Some(wait_ms),
    }
}

async fn waiters(client: &Client, name: &str) -> Vec<String> {
    let state = client.lock_status(name).await.expect("lock status");
    state.waiters.into_iter().map(|w| w.client_id).collect()
}

async fn wait_until_queued(client: &Client, name: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waiters(client, name).await.iter().any(|w| w == who) {
        assert!(Instant::now() < deadline, "{who} never queued for {name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_exclusion_and_increasing_fences_across_three_nodes() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    let inside = Arc::new(AtomicBool::new(false));
    let last_fence = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..6 {
        let client = cluster.client(w % 3);
        let (inside, last_fence) = (inside.clone(), last_fence.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..8 {
                let me = format!("worker-{w}");
                let grant =
                    client.acquire("counter", &opts(&me, false, 10_000, 20_000)).await.expect("acquire");
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders of an exclusive lock at once");
                let previous = last_fence.swap(grant.fence, Ordering::SeqCst);
                assert!(grant.fence > previous, "fence {} after {previous}", grant.fence);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.store(false, Ordering::SeqCst);
                client.release("counter", &me).await.expect("release");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_holders_coexist_and_a_writer_waits_for_all_of_them() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    for i in 0..3 {
        let g = cluster
            .client(i)
            .acquire("doc", &opts(&format!("reader{i}"), true, 10_000, 0))
            .await
            .expect("shared");
        assert_eq!(g.holders.len(), i + 1);
    }
    let writer = cluster.client(0);
    let pending =
        tokio::spawn(async move { writer.acquire("doc", &opts("writer", false, 10_000, 10_000)).await });
    wait_until_queued(&cluster.client(1), "doc", "writer").await;
    // A reader arriving now queues behind the writer instead of overtaking it.
    let late = cluster.client(2).acquire("doc", &opts("late-reader", true, 10_000, 0)).await;
    assert_eq!(late.expect_err("no overtaking").code(), Some("lock_conflict"));
    for i in 0..3 {
        cluster.client(i).release("doc", &format!("reader{i}")).await.expect("release");
    }
    let granted = pending.await.expect("task").expect("writer granted");
    assert_eq!(granted.mode, "exclusive");
    assert_eq!(granted.holders.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_are_served_in_fifo_order() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    cluster.client(0).acquire("q", &opts("holder", false, 30_000, 0)).await.expect("hold");
    let mut pending = Vec::new();
    for (i, who) in ["first", "second", "third"].into_iter().enumerate() {
        let client = cluster.client(i);
        pending.push(tokio::spawn(async move {
            let g = client.acquire("q", &opts(who, false, 30_000, 20_000)).await.expect("granted in turn");
            client.release("q", who).await.expect("release");
            (who, g.fence)
        }));
        wait_until_queued(&cluster.client(0), "q", who).await;
    }
    cluster.client(1).release("q", "holder").await.expect("release holder");
    let mut served = Vec::new();
    for p in pending {
        served.push(p.await.expect("task"));
    }
    served.sort_by_key(|(_, fence)| *fence);
    let order: Vec<&str> = served.iter().map(|(who, _)| *who).collect();
    assert_eq!(order, vec!["first", "second", "third"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_grants_the_next_waiter() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    cluster.client(0).acquire("lease", &opts("sleepy", false, 600, 0)).await.expect("hold");
    let started = Instant::now();
    let next =
        cluster.client(2).acquire("lease", &opts("next", false, 10_000, 10_000)).await.expect("granted");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "not before the lease ran out: {waited:?}");
    assert!(waited < Duration::from_secs(5), "soon after it ran out: {waited:?}");
    assert_eq!(next.holders.len(), 1);
    let err = cluster.client(1).refresh("lease", "sleepy", None).await.expect_err("the old lease is gone");
    assert_eq!(err.code(), Some("not_owner"));
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_sigkill_keeps_holders_and_serves_waiters() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let held = cluster.client(a).acquire("precious", &opts("holder", false, 4_000, 0)).await.expect("hold");
    let waiter_client = cluster.client(b);
    let waiter = tokio::spawn(async move {
        waiter_client.acquire("precious", &opts("waiter", false, 10_000, 30_000)).await
    });
    wait_until_queued(&cluster.client(b), "precious", "waiter").await;

    cluster.kill(leader);
    cluster.wait_leader(&[a, b], FORM).await;
    let state = cluster.client(a).lock_status("precious").await.expect("status after failover");
    assert_eq!(state.holders[0].client_id, "holder", "{state:?}");
    assert_eq!(state.holders[0].fence, held.fence, "{state:?}");
    let expires = state.holders[0].expires_at_ms;
    assert!(
        expires >= held.expires_at_ms,
        "a new leader never shortens a lease: {expires} < {}",
        held.expires_at_ms
    );
    assert_eq!(waiters(&cluster.client(b), "precious").await, vec!["waiter".to_string()]);

    cluster.client(a).release("precious", "holder").await.expect("release through a survivor");
    let granted = waiter.await.expect("task").expect("the waiter is served by the new leader");
    assert!(granted.fence > held.fence);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_the_majority_cannot_grant() {
    let mut cluster = TestCluster::start(3, &[("REQUEST_TIMEOUT_MS", "1500")]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    cluster.kill(1);
    cluster.kill(2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let err = cluster
        .client(0)
        .acquire("isolated", &opts("x", false, 1_000, 0))
        .await
        .expect_err("no quorum, no grant");
    assert_eq!(err.code(), Some("no_quorum"), "{err}");
}

async fn expect_deadlock(result: Result<sinkron_client::Acquired, ClientError>) -> ClientError {
    let err = result.expect_err("deadlock expected");
    assert_eq!(err.code(), Some("deadlock"), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn two_and_three_cycles_across_nodes_are_reported_at_once_to_the_requester() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    // 2-cycle: a holds r1 (node1), b holds r2 (node2); a waits for r2, then b asks for r1.
    cluster.client(0).acquire("r1", &opts("a", false, 30_000, 0)).await.expect("a r1");
    cluster.client(1).acquire("r2", &opts("b", false, 30_000, 0)).await.expect("b r2");
    let c0 = cluster.client(0);
    let a_waits = tokio::spawn(async move { c0.acquire("r2", &opts("a", false, 30_000, 30_000)).await });
    wait_until_queued(&cluster.client(2), "r2", "a").await;
    let started = Instant::now();
    expect_deadlock(cluster.client(1).acquire("r1", &opts("b", false, 30_000, 30_000)).await).await;
    assert!(started.elapsed() < Duration::from_secs(1), "reported within a second: {:?}", started.elapsed());
    let graph = cluster.client(2).wait_for_graph().await.expect("graph");
    let last = &graph.deadlocks[0];
    assert_eq!(last.victim, "b");
    assert_eq!(last.cycle.len(), 2);
    cluster.client(1).release("r2", "b").await.expect("b gives up r2");
    a_waits.await.expect("task").expect("a gets r2 once b let go");

    // 3-cycle over three nodes: x holds s1, y holds s2, z holds s3; x waits s2, y waits s3,
    // then z asks for s1.
    for (i, (who, lock)) in [("x", "s1"), ("y", "s2"), ("z", "s3")].into_iter().enumerate() {
        cluster.client(i).acquire(lock, &opts(who, false, 30_000, 0)).await.expect("hold");
    }
    let (c0, c1) = (cluster.client(0), cluster.client(1));
    let x_waits = tokio::spawn(async move { c0.acquire("s2", &opts("x", false, 30_000, 30_000)).await });
    let y_waits = tokio::spawn(async move { c1.acquire("s3", &opts("y", false, 30_000, 30_000)).await });
    wait_until_queued(&cluster.client(2), "s2", "x").await;
    wait_until_queued(&cluster.client(2), "s3", "y").await;
    let started = Instant::now();
    let err = expect_deadlock(cluster.client(2).acquire("s1", &opts("z", false, 30_000, 30_000)).await).await;
    assert!(started.elapsed() < Duration::from_secs(1), "reported within a second: {:?}", started.elapsed());
    assert!(err.to_string().contains("z waits for x on s1"), "{err}");
    cluster.client(2).release("s3", "z").await.expect("z gives up");
    y_waits.await.expect("task").expect("y gets s3");
    cluster.client(1).release("s2", "y").await.expect("y releases s2");
    x_waits.await.expect("task").expect("x gets s2");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_keeps_a_short_lease_alive_and_releases_on_drop() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    // A 600 ms lease leaves 400 ms for a refresh. While the cluster is still starting its
    // 48 partition replicas (elections, first appends), a loaded 2-core machine once
    // delayed one that long and the lease lapsed: start the lease once they have leaders.
    support::queue_load::wait_queues_ready(&cluster.client(0), FORM).await;
    let guard = cluster.client(0).lock("guarded", opts("keeper", false, 600, 0)).await.expect("lock");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!guard.is_lost(), "refreshes kept the lease");
    let err =
        cluster.client(1).acquire("guarded", &opts("other", false, 1_000, 0)).await.expect_err("still held");
    assert_eq!(err.code(), Some("lock_conflict"));
    drop(guard);
    let other = cluster
        .client(1)
        .acquire("guarded", &opts("other", false, 1_000, 5_000))
        .await
        .expect("released on drop");
    assert_eq!(other.holders.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_exec_passes_the_fence_and_returns_the_exit_code() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    let out = std::process::Command::new(sinkron_bin())
        .args([
            "lock",
            "exec",
            "job",
            "--client-id",
            "cron",
            "--ttl-ms",
            "500",
            "--endpoint",
            &cluster.nodes[2].addr(),
        ])
        .args(["--", "sh", "-c", "sleep 1; echo fence=$SINKRON_FENCE; exit 3"])
        .output()
        .expect("run lock exec");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fence: u64 =
        stdout.trim().strip_prefix("fence=").and_then(|f| f.parse().ok()).expect("fence printed");
    assert!(fence > 0);
    let state = cluster.client(0).lock_status("job").await.expect("status");
    assert!(state.holders.is_empty(), "released after the command: {state:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_requests_are_validated() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_leader(&[0], FORM).await;
    let base = format!("http://{}", cluster.nodes[0].addr());
    let http = reqwest::Client::new();
    let cases = [
        (format!("{base}/v1/locks/x/acquire"), serde_json::json!({"client_id": ""}), 400, "invalid_argument"),
        (
            format!("{base}/v1/locks/x/acquire"),
            serde_json::json!({"client_id": "c", "mode": "sideways"}),
            400,
            "invalid_argument",
        ),
        (
            format!("{base}/v1/locks/x/acquire"),
            serde_json::json!({"client_id": "c", "ttl_ms": -5}),
            400,
            "invalid_argument",
        ),
        (
            format!("{base}/v1/locks/x/acquire"),
            serde_json::json!({"client_id": "c", "ttl_ms": 0}),
            400,
            "invalid_argument",
        ),
        (
            format!("{base}/v1/locks/x/acquire"),
            serde_json::json!({"client_id": "c", "ttl_ms": 100_000_000_000u64}),
            400,
            "invalid_argument",
        ),
        (
            format!("{base}/v1/locks/x/acquire"),
            serde_json::json!({"client_id": "c", "wait_ms": 999_999_999}),
            400,
            "invalid_argument",
        ),
        (
            format!("{base}/v1/locks/{}/acquire", "n".repeat(300)),
            serde_json::json!({"client_id": "c"}),
            413,
            "payload_too_large",
        ),
        (format!("{base}/v1/locks/x/release"), serde_json::json!({"client_id": "c"}), 404, "not_held"),
    ];
    for (url, body, status, code) in cases {
        let resp = http.post(&url).json(&body).send().await.expect("send");
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let err: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(err["error"], code, "{body}: {err}");
    }
    cluster.client(0).acquire("metered", &opts("m", false, 10_000, 0)).await.expect("acquire");
    let metrics = cluster.client(0).metrics().await.expect("metrics");
    assert!(metrics.lines().any(|l| l == "sinkron_locks_held 1"), "held-locks gauge: {metrics}");
    assert!(metrics.contains("sinkron_lock_requests_total{op=\"acquire\",outcome=\"granted\"}"), "{metrics}");
    assert!(metrics.contains("outcome=\"not_held\""), "refusals are counted too");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_whose_client_disconnects_leaves_the_queue() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    cluster.client(0).acquire("busy", &opts("holder", false, 30_000, 0)).await.expect("hold");
    // This client gives up after 500 ms by closing its connection, long before wait_ms.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().expect("client");
    let url = format!("http://{}/v1/locks/busy/acquire", cluster.nodes[1].addr());
    let body = serde_json::json!({"client_id": "impatient", "wait_ms": 20_000});
    assert!(impatient.post(url).json(&body).send().await.is_err(), "the client timed out");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !waiters(&cluster.client(2), "busy").await.is_empty() {
        assert!(Instant::now() < deadline, "the abandoned waiter is still queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_minority_cannot_grant_while_the_majority_can() {
    let cluster = TestCluster::start(3, &[("SINKRON_FAULT_INJECTION", "1"), ("REQUEST_TIMEOUT_MS", "1500")]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let cut = (leader + 1) % 3;
    let url = format!("http://{}/v1/debug/isolate", cluster.nodes[cut].addr());
    let http = reqwest::Client::new();
    http.post(&url).json(&serde_json::json!({"isolated": true})).send().await.expect("isolate");
    let err =
        cluster.client(cut).acquire("split", &opts("minority", false, 5_000, 0)).await.expect_err("no grant");
    assert!(matches!(err.code(), Some("no_quorum" | "unavailable")), "{err}");
    let granted =
        cluster.client(leader).acquire("split", &opts("majority", false, 5_000, 0)).await.expect("grant");
    assert_eq!(granted.holders.len(), 1);
    http.post(&url).json(&serde_json::json!({"isolated": false})).send().await.expect("heal");
}
