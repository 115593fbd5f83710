//! The dashboard and what it is built on, on real processes: `/v1/cluster/nodes`,
//! `/v1/queues`, HELP text on every metric, the Grafana and alert files, and `/ui` rendered
//! in headless Chromium with a held lock, a waiter, a refused deadlock, a queue and a
//! shared cache key, including a lock name that is markup.
//!
//! The browser part needs Debian's `chromium` (`$CHROMIUM`, else `chromium` on the PATH).
//! Without it that part prints a loud SKIPPED line, unless `SINKRON_REQUIRE_BROWSER` is
//! set (CI sets it), which makes a missing browser a failure.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sinkron_client::{Client, ClientError, LockOptions, ReceiveOptions};
use support::queue_load::wait_queues_ready;
use support::{eventually, TestCluster};

const FORM: Duration = Duration::from_secs(20);
/// A lock name a client may choose: it must be shown as text, never run.
const MARKUP_LOCK: &str = "report<script>window.hacked=1</script><img src=x onerror=alert(1)>";

fn opts(client_id: &str, ttl_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions { client_id: client_id.into(), mode: None, ttl_ms: Some(ttl_ms), wait_ms: Some(wait_ms) }
}

async fn wait_until_queued(client: &Client, lock: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = client.lock_status(lock).await.expect("lock status");
        if state.waiters.iter().any(|w| w.client_id == who) {
            return;
        }
        assert!(Instant::now() < deadline, "{who} never queued for {lock}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A held lock with a waiter, a deadlock refused, a queue with ready and in-flight
/// messages, and a key cached on two nodes.
async fn populate(cluster: &TestCluster) {
    let (a, b) = (cluster.client(0), cluster.client(1));
    a.acquire(MARKUP_LOCK, &opts("holder-a", 120_000, 0)).await.expect("hold the lock");
    let waiter = b.clone();
    tokio::spawn(async move { waiter.acquire(MARKUP_LOCK, &opts("waiter-b", 120_000, 60_000)).await });
    wait_until_queued(&a, MARKUP_LOCK, "waiter-b").await;

    a.acquire("invoice", &opts("clerk-x", 120_000, 0)).await.expect("x holds invoice");
    b.acquire("ledger", &opts("clerk-y", 120_000, 0)).await.expect("y holds ledger");
    let x = a.clone();
    tokio::spawn(async move { x.acquire("ledger", &opts("clerk-x", 120_000, 60_000)).await });
    wait_until_queued(&a, "ledger", "clerk-x").await;
    match b.acquire("invoice", &opts("clerk-y", 120_000, 5_000)).await {
        Err(ClientError::Api { code, .. }) if code == "deadlock" => {}
        other => panic!("expected a deadlock, got {other:?}"),
    }

    for i in 0..7 {
        a.queue_send("orders", serde_json::json!({ "n": i }), Some(&format!("customer-{i}")))
            .await
            .expect("send");
    }
    let received = b
        .queue_receive(
            "orders",
            &ReceiveOptions { max: Some(2), visibility_ms: Some(300_000), wait_ms: None },
        )
        .await
        .expect("receive");
    assert_eq!(received.len(), 2);

    a.cache_put("shared-key", serde_json::json!("blue"), false).await.expect("cache put");
    assert!(b.cache_get("shared-key").await.expect("cache get").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_locks_queues_and_cache_lines() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
    wait_queues_ready(&cluster.client(0), FORM).await;
    populate(&cluster).await;

    // The views the page is built on are API endpoints like any other.
    let nodes = cluster.client(2).cluster_nodes().await.expect("cluster nodes");
    assert_eq!(nodes.nodes.len(), 3);
    for n in &nodes.nodes {
        assert!(n.error.is_none(), "{} could not be asked: {:?}", n.id, n.error);
        assert_eq!(n.cluster.as_ref().map(|c| c.node_id.as_str()), Some(n.id.as_str()));
        assert!(n.cache.is_some());
        assert_eq!(n.ready, n.ready_problem.is_none(), "{}: {:?}", n.id, n.ready_problem);
    }
    // A follower may be a moment behind the commit index (not ready then): all catch up.
    eventually(FORM, || async {
        let nodes = cluster.client(2).cluster_nodes().await.map_err(|e| e.to_string())?;
        match nodes.nodes.iter().find(|n| !n.ready) {
            Some(n) => Err(format!("{} not ready: {:?}", n.id, n.ready_problem)),
            None => Ok(()),
        }
    })
    .await;
    assert_eq!(
        nodes.nodes.iter().filter(|n| n.cluster.as_ref().is_some_and(|c| c.role == "leader")).count(),
        1
    );
    let queues = cluster.client(1).queues().await.expect("queue list");
    let orders = queues.queues.iter().find(|q| q.queue == "orders").expect("orders listed");
    assert_eq!((orders.ready, orders.in_flight, orders.dead_letters), (5, 2, 0));
    assert_eq!(orders.partitions.iter().map(|p| p.ready + p.in_flight).sum::<usize>(), 7);
    assert!(queues.unanswered_partitions.is_empty() && !queues.truncated);

    let http = reqwest::Client::new();
    let page = http.get(format!("{}/ui", cluster.url(0))).send().await.expect("GET /ui");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .expect("a CSP")
        .to_str()
        .expect("an ASCII CSP")
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().await.expect("the page").contains("/ui/app.js"));

    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("SINKRON_REQUIRE_BROWSER").is_none(),
            "SINKRON_REQUIRE_BROWSER is set but no chromium was found"
        );
        eprintln!(
            "SKIPPED the browser half of this test: no chromium (apt-get install chromium, or set CHROMIUM)"
        );
        return;
    };
    let url = format!("{}/ui/?key=shared-key", cluster.url(0));
    let profile = tempfile::tempdir().expect("profile dir");
    let dom = render(&browser, profile.path(), &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(artifacts.join("dashboard.html"), &dom).expect("save the DOM");
    check_dom(&dom);

    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    render(&browser, profile.path(), &url, &["--window-size=1280,2900", &arg]);
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "not a screenshot: {} bytes", png.len());
    eprintln!("dashboard screenshot: {}", shot.display());
}

/// What the rendered page must show, and must not contain.
fn check_dom(dom: &str) {
    let must = [
        // The markup-named lock, as text: serialised escaped, never as elements.
        "report&lt;script&gt;window.hacked=1&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;",
        "holder-a (exclusive, fence",
        "waiter-b (exclusive)",
        // The refused deadlock, its victim and cycle.
        "clerk-y refused on invoice",
        "clerk-y waits for clerk-x on invoice",
        // Queues, per partition, and the ring.
        ">orders<",
        "16 partitions × 3 replicas",
        "served by node1",
        "updated ",
    ];
    let missing: Vec<&str> = must.iter().copied().filter(|m| !dom.contains(m)).collect();
    assert!(missing.is_empty(), "the dashboard lacks {missing:?}; DOM:\n{dom}");
    assert!(!dom.contains("<script>window.hacked"), "a lock name was parsed as markup");
    assert!(!dom.contains("<img src=\"x\""), "a lock name was parsed as markup");
    assert!(!dom.contains("class=\"error\""), "the page reported an error; DOM:\n{dom}");
    // Every node's line of the shared key (the lookup from `?key=`): two copies in S.
    let nodes_in_s = dom.matches("class=\"state-S\">S<").count();
    assert_eq!(nodes_in_s, 2, "shared-key should be S on two nodes; DOM:\n{dom}");
    let members: BTreeSet<&str> =
        ["node1", "node2", "node3"].into_iter().filter(|n| dom.contains(n)).collect();
    assert_eq!(members.len(), 3);
}

/// The browser: `$CHROMIUM`, else `chromium` where the PATH has it.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("chromium")).find(|p| p.is_file())
}

/// Renders `url` headless, letting the page run 6 s of its own time (network waits do not
/// count), and returns what chromium printed. Killed after 90 s.
fn render(browser: &Path, profile: &Path, url: &str, extra: &[&str]) -> Output {
    let child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(90));
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().expect("wait for chromium");
    drop(watchdog);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Every metric the Grafana dashboard and the alert rules use is one a node exports, and
/// every metric a node exports has HELP text.
#[tokio::test(flavor = "multi_thread")]
async fn every_metric_has_help_and_the_dashboards_use_only_real_ones() {
    let known: BTreeSet<&str> = sinkron_node::metrics::METRICS.iter().map(|(name, _, _)| *name).collect();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in ["deploy/grafana/sinkron.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(repo.join(file)).expect("read the file");
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file} names too few metrics: {used:?}");
        let unknown: Vec<&String> = used.iter().filter(|m| !known.contains(m.as_str())).collect();
        assert!(unknown.is_empty(), "{file} uses metrics no node exports: {unknown:?}");
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text).expect("the Grafana dashboard is JSON");
        }
    }

    let cluster = TestCluster::start(1, &[]);
    cluster.wait_leader(&[0], FORM).await;
    let client = cluster.client(0);
    client.kv_put("k", serde_json::json!(1)).await.expect("put");
    let text = client.metrics().await.expect("metrics");
    let typed: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(typed.len() > 10, "too few metrics: {text}");
    for name in &typed {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP text");
        assert!(known.contains(name), "{name} is exported but not in metrics::METRICS");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.contains(&format!("sinkron_build_info{{version=\"{version}\"")), "no build info: {text}");
}

/// The `sinkron_…` names in `text`, without the `_bucket`, `_sum` and `_count` of a
/// histogram's series.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("sinkron_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        out.insert(base.to_string());
        i = end;
    }
    out
}
