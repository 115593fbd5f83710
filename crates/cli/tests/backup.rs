//! Backup and restore on real processes: `sinkron snapshot save` from a running cluster,
//! `sinkron snapshot restore` into the empty data directories of a new cluster on other
//! ports, which then serves the same keys, the same held locks with their fences and the
//! same queued messages, and hands out fences and versions beyond the old ones.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sinkron_client::{LockOptions, ReceiveOptions};
use support::queue_load::wait_queues_ready;
use support::{sinkron_bin, TestCluster};

const FORM: Duration = Duration::from_secs(30);

fn opts(client_id: &str, ttl_ms: u64) -> LockOptions {
    LockOptions { client_id: client_id.into(), mode: None, ttl_ms: Some(ttl_ms), wait_ms: None }
}

fn sinkron(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(sinkron_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run sinkron")
}

fn restore(file: &Path, data_dir: &Path, node: &str, addrs: &str) -> std::process::Output {
    let (file, dir) = (file.display().to_string(), data_dir.display().to_string());
    sinkron(
        &["snapshot", "restore", &file, "--data-dir", &dir, "--node-id", node, "--cluster-addrs", addrs],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_cluster_serves_the_backup_and_never_reuses_a_fence() {
    let old = TestCluster::start(3, &[]);
    old.wait_leader(&old.all(), FORM).await;
    let a = old.client(0);
    wait_queues_ready(&a, FORM).await;
    let mut versions = Vec::new();
    for i in 0..5 {
        versions.push(
            a.kv_put(&format!("config/{i}"), serde_json::json!({ "n": i })).await.expect("put").version,
        );
    }
    let held = a.acquire("report", &opts("worker-a", 600_000)).await.expect("acquire");
    let bodies: BTreeSet<String> = (0..12).map(|i| format!("job-{i}")).collect();
    for (i, body) in bodies.iter().enumerate() {
        a.queue_send("jobs", serde_json::json!(body), Some(&format!("k{}", i % 4))).await.expect("send");
    }
    let old_last_fence = a.locks().await.expect("locks").last_fence;

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.json");
    let endpoint = old.url(1);
    let saved = sinkron(&["snapshot", "save", &file.display().to_string(), "--endpoint", &endpoint], &[]);
    assert!(saved.status.success(), "save: {}", String::from_utf8_lossy(&saved.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&saved.stdout).expect("a JSON summary");
    assert_eq!(summary["keys"], 5, "{summary}");
    assert_eq!(summary["messages"], 12, "{summary}");
    assert_eq!(summary["last_fence"], old_last_fence, "{summary}");
    drop(old);

    // A new cluster on other ports, same names: each empty data directory is seeded first.
    let mut new = TestCluster::prepare(3, &[]);
    let addrs = new.cluster_addrs.clone();
    for node in &new.nodes {
        let out = restore(&file, &node.data_dir, &node.name, &addrs);
        assert!(out.status.success(), "restore {}: {}", node.name, String::from_utf8_lossy(&out.stderr));
    }
    // A second restore into a seeded directory is refused.
    let again = restore(&file, &new.nodes[0].data_dir, "node1", &addrs);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    for i in 0..3 {
        new.spawn(i, &[]);
    }
    new.wait_leader(&new.all(), FORM).await;
    let b = new.client(2);
    wait_queues_ready(&b, FORM).await;

    for (i, version) in versions.iter().enumerate() {
        let got = b.kv_get(&format!("config/{i}")).await.expect("get").expect("restored key");
        assert_eq!((got.value, got.version), (serde_json::json!({ "n": i }), *version));
    }
    let lock = b.lock_status("report").await.expect("lock status");
    assert_eq!(lock.holders.len(), 1);
    assert_eq!((lock.holders[0].client_id.as_str(), lock.holders[0].fence), ("worker-a", held.fence));
    // The hold is the old one: its owner refreshes it, with the same fence.
    let refreshed = b.refresh("report", "worker-a", Some(600_000)).await.expect("refresh");
    assert_eq!(refreshed.fence, held.fence);

    let fresh = b.acquire("another", &opts("worker-b", 60_000)).await.expect("acquire on the new cluster");
    assert!(fresh.fence > old_last_fence + (1 << 40), "fence {} after {old_last_fence}", fresh.fence);
    let put = b.kv_put("config/0", serde_json::json!("new")).await.expect("put on the new cluster");
    assert!(put.version > versions[4] + (1 << 40), "version {}", put.version);

    let mut got = BTreeSet::new();
    let options = ReceiveOptions { max: Some(100), visibility_ms: None, wait_ms: Some(500) };
    for _ in 0..20 {
        let messages = b.queue_receive("jobs", &options).await.expect("receive");
        if messages.is_empty() && got.len() == bodies.len() {
            break;
        }
        for m in messages {
            got.insert(m.body.as_str().unwrap_or_default().to_string());
            b.queue_ack("jobs", &m.receipt).await.expect("ack");
        }
    }
    assert_eq!(got, bodies);
}

#[test]
fn a_damaged_or_foreign_backup_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("not json", "not a Sinkron backup"),
        (r#"{"format": "other"}"#, "not a Sinkron backup"),
        (
            r#"{"format": "sinkron-backup", "format_version": 99}"#,
            "format version 99; this binary reads version 1",
        ),
    ];
    for (text, expected) in cases {
        let file = dir.path().join("backup.json");
        std::fs::write(&file, text).expect("write");
        let out = restore(&file, &dir.path().join("data"), "node1", "127.0.0.1:1,127.0.0.1:2");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{text}: {stderr}");
    }
}
