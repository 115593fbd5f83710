//! Tests of the `sinkron` binary as a user runs it: late starters, graceful stops, `dev`,
//! `cluster status` and `bench write`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use support::{eventually, sinkron_bin, TestCluster};

const FORM: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_forms_without_a_late_node_which_then_catches_up() {
    let mut cluster = TestCluster::prepare(3, &[]);
    cluster.spawn(0, &[]);
    cluster.spawn(1, &[]);
    cluster.wait_leader(&[0, 1], FORM).await;
    cluster.client(1).kv_put("early", json!("two of three")).await.expect("a majority commits");
    cluster.spawn(2, &[]);
    cluster.wait_local_value(2, "early", &json!("two of three"), FORM).await;
    let got = cluster.client(2).kv_get("early").await.expect("read via the late node");
    assert_eq!(got.map(|v| v.value), Some(json!("two of three")));
    assert_eq!(cluster.status(2).await.members.len(), 3, "the late node did not form a cluster of its own");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_a_restart_never_reinitialises() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    for i in 0..20 {
        cluster.client(i % 3).kv_put(&format!("k{i}"), json!(i)).await.expect("write");
    }
    let before = cluster.status(0).await;
    for i in cluster.all() {
        assert_eq!(cluster.stop(i), Some(0), "node {} exits 0 on SIGTERM", i + 1);
    }
    for i in cluster.all() {
        cluster.spawn(i, &[]);
    }
    cluster.wait_leader(&cluster.all(), FORM).await;
    let after = cluster.status(0).await;
    assert!(after.term >= before.term, "terms never go back: {before:?} -> {after:?}");
    assert!(after.last_log_index >= before.last_log_index, "the log was kept: {before:?} -> {after:?}");
    // A re-initialised cluster would start its revisions again at 1.
    let put = cluster.client(0).kv_put("after-restart", json!(true)).await.expect("write after restart");
    assert!(put.version > 20, "revisions continue after the restart: {put:?}");
    for i in 0..20 {
        let got = cluster.client(2).kv_get(&format!("k{i}")).await.expect("read");
        assert_eq!(got.map(|v| v.value), Some(json!(i)));
    }
}

#[test]
fn dev_starts_three_nodes_reports_one_that_dies_and_ctrl_c_stops_the_rest() {
    let base = support::free_ports(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(sinkron_bin())
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("dev"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sinkron dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("Leader:")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no leader announced within 30 s; output: {seen:?}");
            }
        }
    }
    for i in 0..3 {
        assert!(
            seen.iter().any(|l| l.contains(&format!("http://127.0.0.1:{}", base + i))),
            "URL printed: {seen:?}"
        );
    }
    // A node killed from outside is reported; the others keep running.
    let node2 = seen.iter().find(|l| l.trim_start().starts_with("node2 ")).expect("node2's line");
    let pid: i32 = node2
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("node2's pid printed: {node2:?}"));
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|l| l.starts_with("node2 exited on its own")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the killed node was not reported within 20 s; output: {seen:?}");
            }
        }
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sinkron dev did not stop within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        seen.push(line);
    }
    assert!(status.success(), "dev exits 0: {status}");
    let stopped = seen.iter().filter(|l| l.contains("stopped (exit status: 0)")).count();
    assert_eq!(stopped, 2, "the two nodes left stopped cleanly: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_and_bench_commands_work() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    let endpoint = cluster.nodes[1].addr();
    let out = eventually(FORM, || async {
        let out = Command::new(sinkron_bin()).args(["cluster", "status", "--endpoint", &endpoint]).output();
        match out {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(out.contains("leader: node"), "{out}");
    for node in ["node1", "node2", "node3"] {
        let listed = out.lines().any(|l| l.contains(&format!(" {node} ")) && l.contains(" voter "));
        assert!(listed, "{node} listed: {out}");
    }
    assert_eq!(out.lines().filter(|l| l.contains(" leader ")).count(), 1, "{out}");
    // The same as JSON, for scripts.
    let json = Command::new(sinkron_bin())
        .args(["cluster", "status", "--endpoint", &endpoint, "--output", "json"])
        .output()
        .expect("cluster status --output json");
    let overview: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(overview["nodes"].as_array().map(Vec::len), Some(3), "{overview}");
    // Tables for state answers, and completion scripts.
    let table = Command::new(sinkron_bin())
        .args(["lock", "status", "--endpoint", &endpoint, "-o", "table"])
        .output()
        .expect("lock status -o table");
    assert!(String::from_utf8_lossy(&table.stdout).contains("last_fence"), "{table:?}");
    for shell in ["bash", "zsh", "fish"] {
        let script = Command::new(sinkron_bin()).args(["completions", shell]).output().expect("completions");
        assert!(script.status.success() && String::from_utf8_lossy(&script.stdout).contains("snapshot"));
    }

    let endpoints = cluster.nodes.iter().map(|n| n.addr()).collect::<Vec<_>>().join(",");
    let out = Command::new(sinkron_bin())
        .args(["bench", "write", "--clients", "4", "--ops", "200", "--json", "--endpoints", &endpoints])
        .output()
        .expect("run bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench prints JSON");
    assert_eq!(report["ops"], 200);
    assert_eq!(report["errors"], 0);
    assert!(report["p50_ms"].as_f64().is_some_and(|p| p > 0.0), "{report}");
    // One client with --rotate sends its puts to every node in turn.
    let mut puts_before = Vec::new();
    for i in 0..3 {
        puts_before.push(kv_puts_served(&cluster.client(i).metrics().await.expect("metrics")));
    }
    let rotated = ["write", "--clients", "1", "--rotate", "--ops", "30", "--json", "--endpoints", &endpoints];
    let out = Command::new(sinkron_bin()).arg("bench").args(rotated).output().expect("run bench --rotate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (i, before) in puts_before.into_iter().enumerate() {
        let after = kv_puts_served(&cluster.client(i).metrics().await.expect("metrics"));
        // At least: a put the client had to send again counts twice.
        assert!(after - before >= 10, "node {i} served {} of 30 rotated puts, not a third", after - before);
    }
    // The other loops of the side-by-side comparison: queue round trips (acks awaited, not
    // awaited, and carried by the next receive), the nodes' HTTP floor, and the bare servers
    // of the ceiling, which the bench starts and stops itself.
    let runs: [&[&str]; 5] = [
        &["roundtrip", "--in-flight", "4", "--messages", "40", "--keys", "4", "--endpoints", &endpoints],
        &[
            "roundtrip",
            "--in-flight",
            "2",
            "--messages",
            "20",
            "--ack-without-wait",
            "--endpoints",
            &endpoints,
        ],
        &[
            "roundtrip",
            "--in-flight",
            "3",
            "--messages",
            "30",
            "--ack-with-receive",
            "--endpoints",
            &endpoints,
        ],
        &["http", "--clients", "4", "--ops", "200", "--endpoints", &endpoints],
        &["http", "--ceiling", "2", "--clients", "4", "--ops", "200"],
    ];
    for args in runs {
        let out =
            Command::new(sinkron_bin()).arg("bench").args(args).arg("--json").output().expect("run bench");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench prints JSON");
        let want = args[args.iter().position(|a| *a == "--messages" || *a == "--ops").expect("a count") + 1];
        assert_eq!(report["ops"].to_string(), want, "{args:?}: {report}");
        assert_eq!(report["errors"], 0, "{args:?}: {report}");
    }
}

/// How many `PUT /v1/kv/{key}` requests a node's `/metrics` text counts as served.
fn kv_puts_served(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("sinkron_http_request_duration_seconds_count{"))
        .filter(|l| l.contains("route=\"/v1/kv/{key}\"") && l.contains("method=\"PUT\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum()
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // Like `sinkron bench ring | head -0`: the reader is gone before anything is printed
    // (the command first computes for a while).
    let mut child = Command::new(sinkron_bin())
        .args(["bench", "ring", "--keys", "300000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sinkron bench ring");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
