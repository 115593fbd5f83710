//! Cluster tests on real `sinkron serve` processes: leader election, failover, restarts,
//! snapshots, membership and bad configuration.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use sinkron_client::ClientError;
use support::{eventually, sinkron_bin, TestCluster};

const FORM: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn exactly_one_leader_forms() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let mut leaders = 0;
    for i in cluster.all() {
        let status = cluster.status(i).await;
        assert_eq!(status.members.len(), 3, "node {} sees every member", i + 1);
        assert!(status.members.iter().all(|m| m.role == "voter"));
        if status.role == "leader" {
            leaders += 1;
            assert_eq!(i, leader);
        }
        assert_eq!(cluster.client(i).health().await.expect("health").status, "ok");
    }
    assert_eq!(leaders, 1, "exactly one node is leader");
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_sigkill_elects_a_new_leader_and_the_old_one_catches_up() {
    let mut cluster = TestCluster::start(3, &[]);
    let old = cluster.wait_leader(&cluster.all(), FORM).await;
    for i in 0..10 {
        cluster.client(i % 3).kv_put(&format!("before-{i}"), json!(i)).await.expect("write before the kill");
    }
    cluster.kill(old);
    let survivors: Vec<usize> = cluster.all().into_iter().filter(|i| *i != old).collect();
    let new = cluster.wait_leader(&survivors, FORM).await;
    assert_ne!(new, old);
    for &i in &survivors {
        cluster.client(i).kv_put(&format!("after-{i}"), json!("ok")).await.expect("write via a survivor");
    }
    for i in 0..10 {
        let got = cluster.client(survivors[0]).kv_get(&format!("before-{i}")).await.expect("read");
        assert_eq!(
            got.map(|v| v.value),
            Some(json!(i)),
            "acknowledged write before-{i} survived the failover"
        );
    }

    cluster.spawn(old, &[]);
    let last = format!("after-{}", survivors[1]);
    cluster.wait_local_value(old, &last, &json!("ok"), FORM).await;
    for &i in &survivors {
        let got = cluster.client(old).kv_get_with(&format!("after-{i}"), "local").await.expect("local read");
        assert_eq!(got.map(|v| v.value), Some(json!("ok")), "restarted node has after-{i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_cluster_kill_and_restart_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    let mut writers = Vec::new();
    for w in 0..6 {
        let client = cluster.client(w % 3);
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for i in 0..40 {
                let key = format!("w{w}-k{i}");
                if client.kv_put(&key, json!(i)).await.is_ok() {
                    acked.insert(key, json!(i));
                }
            }
            acked
        }));
    }
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.expect("writer task"));
    }
    assert_eq!(acked.len(), 240, "a healthy cluster acknowledges every write");

    for i in cluster.all() {
        cluster.kill(i);
    }
    for i in cluster.all() {
        cluster.spawn(i, &[]);
    }
    cluster.wait_leader(&cluster.all(), FORM).await;
    for (n, (key, value)) in acked.iter().enumerate() {
        let client = cluster.client(n % 3);
        let got = eventually(FORM, || client.kv_get(key)).await;
        assert_eq!(got.map(|v| v.value).as_ref(), Some(value), "{key} survived SIGKILL of every node");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_far_behind_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::start(3, &[("RAFT_SNAPSHOT_LOGS", "20")]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let lagger = (leader + 1) % 3;
    cluster.kill(lagger);
    for i in 0..150 {
        cluster.client(leader).kv_put(&format!("k{i}"), json!(i)).await.expect("write");
    }
    // The leader compacts its log, so the lagging node cannot be served from the log alone.
    let purged = eventually(FORM, || async {
        let s = cluster.client(leader).cluster().await.map_err(|e| e.to_string())?;
        match s.snapshot_index {
            Some(snap) if snap > 50 => Ok(snap),
            other => Err(format!("snapshot index {other:?}")),
        }
    })
    .await;
    assert!(purged > 50);

    cluster.spawn(lagger, &[]);
    cluster.wait_local_value(lagger, "k149", &json!(149), FORM).await;
    let status = cluster.status(lagger).await;
    assert!(
        status.snapshot_index.is_some_and(|s| s > 20),
        "the lagging node installed a snapshot: {status:?}"
    );
    for i in [0, 75, 149] {
        let got = cluster.client(lagger).kv_get_with(&format!("k{i}"), "local").await.expect("local read");
        assert_eq!(got.map(|v| v.value), Some(json!(i)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_quorum_answers_503_no_quorum_in_bounded_time() {
    let mut cluster = TestCluster::start(3, &[("REQUEST_TIMEOUT_MS", "1500")]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    cluster.kill(1);
    cluster.kill(2);
    // Give the survivor time to notice it lost its followers.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    let err = cluster.client(0).kv_put("k", json!(1)).await.expect_err("a lone node cannot commit");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded wait, took {:?}", started.elapsed());
    assert_eq!(err.code(), Some("no_quorum"), "{err}");
    let err = cluster.client(0).kv_get("k").await.expect_err("a lone node cannot serve linearizable reads");
    assert_eq!(err.code(), Some("no_quorum"), "{err}");

    let resp = reqwest::get(format!("http://{}/ready", cluster.nodes[0].addr())).await.expect("ready");
    let retry_after = resp.headers().get("retry-after").cloned();
    if resp.status() == 503 {
        assert!(retry_after.is_some(), "503 carries Retry-After");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn membership_api_adds_and_removes_a_node() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    cluster.client(leader).kv_put("seed", json!("before-join")).await.expect("write");
    let joiner = cluster.spawn_joiner("node4");
    let follower = (leader + 1) % 3;
    // Sent to a follower on purpose: it forwards the change to the leader.
    cluster.client(follower).add_member("node4", &cluster.nodes[joiner].addr()).await.expect("add node4");
    let status = cluster.status(leader).await;
    let node4 = status.members.iter().find(|m| m.id == "node4").expect("node4 is a member");
    assert_eq!(node4.role, "voter");
    let got = eventually(FORM, || async {
        match cluster.client(joiner).kv_get_with("seed", "local").await {
            Ok(Some(v)) => Ok(v),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(got.value, json!("before-join"));
    cluster.client(joiner).kv_put("via-node4", json!(4)).await.expect("write through the new node");

    cluster.client(follower).remove_member("node4").await.expect("remove node4");
    let status = cluster.status(leader).await;
    assert_eq!(status.members.len(), 3);
    let err = cluster.client(leader).remove_member("node9").await.expect_err("unknown member");
    assert_eq!(err.code(), Some("not_found"));
}

#[test]
fn bad_configuration_exits_with_one_clear_line() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("RAFT_ELECTION_TIMEOUT_MIN", "6")], "RAFT_ELECTION_TIMEOUT_MIN"),
        (&[("CLUSTER_ADDRS", "localhost:8001,not-an-address")], "CLUSTER_ADDRS"),
        (&[("CLUSTER_ADDRS", "localhost:8002,localhost:8003")], "node1"),
        (&[("NODE_ID", "node7")], "NODE_ID"),
    ];
    for (env, expected) in cases {
        let mut cmd = std::process::Command::new(sinkron_bin());
        cmd.arg("serve").env("DATA_DIR", std::env::temp_dir().join("sinkron-never-used"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run sinkron serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: exit code; stderr: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{env:?}: one line, got: {stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{env:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_errors_are_json_with_stable_codes() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_leader(&[0], FORM).await;
    let base = format!("http://{}", cluster.nodes[0].addr());
    let http = reqwest::Client::new();
    let cases = [
        (
            http.put(format!("{base}/v1/kv/a"))
                .header("content-type", "application/json")
                .body("{\"value\":"),
            400,
            "invalid_argument",
            "JSON",
        ),
        (http.put(format!("{base}/v1/kv/a")).json(&json!({"valeu": 1})), 400, "invalid_argument", "valeu"),
        (
            http.put(format!("{base}/v1/kv/a")).json(&json!({"value": 1, "request_id": 5})),
            400,
            "invalid_argument",
            "request_id",
        ),
        (
            http.put(format!("{base}/v1/kv/{}", "k".repeat(300))).json(&json!({"value": 1})),
            413,
            "payload_too_large",
            "key",
        ),
        (
            http.put(format!("{base}/v1/kv/a")).json(&json!({"value": "x".repeat(70_000)})),
            413,
            "payload_too_large",
            "value",
        ),
        (
            http.put(format!("{base}/v1/kv/a")).json(&json!({"value": "x".repeat(2_000_000)})),
            413,
            "payload_too_large",
            "body",
        ),
        (http.get(format!("{base}/v1/kv/missing")), 404, "not_found", "missing"),
        (http.get(format!("{base}/v1/kv/a?consistency=sometimes")), 400, "invalid_argument", "sometimes"),
        (
            http.post(format!("{base}/v1/kv/a")).json(&json!({"value": 1})),
            405,
            "method_not_allowed",
            "method",
        ),
        (http.post(format!("{base}/raft/zero/append")).json(&json!({})), 400, "invalid_argument", "path"),
        (http.get(format!("{base}/v1/nothing-here")), 404, "not_found", "endpoint"),
        (
            http.post(format!("{base}/v1/cluster/members")).json(&json!({"id": "bad name", "addr": "h:1"})),
            400,
            "invalid_argument",
            "id",
        ),
        (
            http.post(format!("{base}/v1/cluster/members")).json(&json!({"id": "n5", "addr": "nohost"})),
            400,
            "invalid_argument",
            "addr",
        ),
    ];
    for (request, status, code, mentions) in cases {
        let resp = request.send().await.expect("send");
        assert_eq!(resp.status().as_u16(), status);
        let body: serde_json::Value = resp.json().await.expect("JSON error body");
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains(mentions),
            "{body} should mention {mentions}"
        );
    }
    let first = http
        .put(format!("{base}/v1/kv/r1"))
        .json(&json!({"value": 1, "request_id": "once"}))
        .send()
        .await
        .expect("put");
    assert_eq!(first.status().as_u16(), 200);
    let retry = http
        .put(format!("{base}/v1/kv/r1"))
        .json(&json!({"value": 1, "request_id": "once"}))
        .send()
        .await
        .expect("retry");
    assert_eq!(retry.status().as_u16(), 200, "a genuine retry gets the first answer");
    let reused = http
        .put(format!("{base}/v1/kv/r2"))
        .json(&json!({"value": 2, "request_id": "once"}))
        .send()
        .await
        .expect("reuse");
    assert_eq!(reused.status().as_u16(), 409, "an id reused for another request is refused");
    assert_eq!(cluster.client(0).kv_get("r2").await.expect("read"), None);

    let doc: serde_json::Value =
        http.get(format!("{base}/openapi.json")).send().await.expect("openapi").json().await.expect("json");
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/v1/cluster",
        "/v1/cluster/members",
        "/v1/cluster/members/{id}",
        "/v1/kv/{key}",
        "/v1/locks",
        "/v1/locks/{name}",
        "/v1/locks/{name}/acquire",
        "/v1/locks/{name}/release",
        "/v1/locks/{name}/refresh",
        "/v1/locks/{name}/force-release",
        "/v1/locks/refresh-all",
        "/v1/locks/wait-for-graph",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi documents {path}");
    }
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        paths.keys().all(|p| !p.starts_with("/raft/") && !p.starts_with("/v1/debug")),
        "node-to-node and fault-injection routes stay out of the public document"
    );
    let mut operation_ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().into_iter().flat_map(|ops| ops.values()))
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let count = operation_ids.len();
    operation_ids.sort_unstable();
    operation_ids.dedup();
    assert_eq!(operation_ids.len(), count, "every operationId is unique");
    let metrics = cluster.client(0).metrics().await.expect("metrics");
    for name in [
        "sinkron_raft_term",
        "sinkron_raft_commit_index",
        "sinkron_raft_role",
        "sinkron_http_requests_total",
        "sinkron_raft_leader_changes_total",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
    let err: ClientError = cluster.client(0).kv_get(&"k".repeat(300)).await.expect_err("oversized key");
    assert_eq!(err.code(), Some("payload_too_large"));
}
