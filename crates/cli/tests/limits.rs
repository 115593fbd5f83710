//! Hostile input and resource limits on real `sinkron serve` processes: what the API accepts
//! replicates, what it refuses is refused with our JSON, and no connection, wait or refused
//! peer call goes unbounded.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sinkron_client::{LockOptions, ReceiveOptions};
use support::queue_load::wait_queues_ready;
use support::{eventually, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FORM: Duration = Duration::from_secs(30);
/// The API's documented nesting limit (the body's own object is a level).
const DEPTH_MAX: usize = 64;

/// A JSON value `levels` arrays deep around a string of `fill` bytes.
fn nested(levels: usize, fill: usize) -> Value {
    let mut value = Value::String("x".repeat(fill));
    for _ in 0..levels {
        value = Value::Array(vec![value]);
    }
    value
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deepest_and_largest_accepted_values_commit_on_every_node() {
    // openraft 0.9 gives each AppendEntries call one heartbeat interval. The test's usual
    // 100 ms is too short for megabyte entries of deep JSON in a debug build on a busy
    // machine: calls time out, are sent again, and the follower keeps parsing the ones
    // abandoned (once it stalled a node for 6 s). See README, RAFT_HEARTBEAT_INTERVAL.
    let cluster = TestCluster::start(
        3,
        &[
            ("RAFT_HEARTBEAT_INTERVAL", "0.5"),
            ("RAFT_ELECTION_TIMEOUT_MIN", "1.5"),
            ("RAFT_ELECTION_TIMEOUT_MAX", "3.0"),
        ],
    );
    cluster.wait_leader(&cluster.all(), FORM).await;
    cluster.wait_ready(&cluster.all(), FORM).await;
    wait_queues_ready(&cluster.client(0), FORM).await;
    let client = cluster.client(1);

    // `{"value": V}`: V may be one level less deep than the body.
    let kv = nested(DEPTH_MAX - 1, 60_000);
    client.kv_put("deep", kv.clone()).await.expect("the deepest KV value is accepted");
    let cache = nested(DEPTH_MAX - 1, 60_000);
    client.cache_put("deep", cache.clone(), true).await.expect("the deepest cache value is accepted");
    let lock = "l".repeat(256);
    let holder = "c".repeat(128);
    let acquired = client
        .acquire(&lock, &LockOptions { client_id: holder.clone(), ..Default::default() })
        .await
        .expect("the longest lock name and client id are accepted");
    // `{"body": B}` for one message, `{"messages": [{"body": B}]}` for a batch.
    let message = nested(DEPTH_MAX - 1, 250_000);
    client.queue_send("deep", message.clone(), Some("k")).await.expect("the deepest message is accepted");
    let batch: Vec<Value> = (0..4).map(|_| nested(DEPTH_MAX - 3, 250_000)).collect();
    let http = reqwest::Client::new();
    let sent = http
        .post(format!("http://{}/v1/queues/deep/messages/batch", cluster.nodes[2].addr()))
        .json(&json!({"messages": batch.iter().map(|b| json!({"body": b, "key": "k"})).collect::<Vec<_>>()}))
        .send()
        .await
        .expect("send batch");
    assert!(sent.status().is_success(), "the deepest 1 MB batch is accepted: {:?}", sent.text().await);

    for i in cluster.all() {
        cluster.wait_local_value(i, "deep", &kv, Duration::from_secs(10)).await;
        let read = cluster.client(i).cache_get("deep").await.expect("cache read");
        assert!(read.is_some_and(|r| r.value == cache), "node {} reads the deepest cache value", i + 1);
        let status = cluster.client(i).lock_status(&lock).await.expect("lock status");
        assert_eq!(status.holders[0].fence, acquired.fence, "node {} knows the lock", i + 1);
    }
    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while bodies.len() < 5 && Instant::now() < deadline {
        let options = ReceiveOptions { max: Some(10), wait_ms: Some(500), ..Default::default() };
        for delivered in cluster.client(0).queue_receive("deep", &options).await.expect("receive") {
            cluster.client(0).queue_ack("deep", &delivered.receipt).await.expect("ack");
            bodies.push(delivered.body);
        }
    }
    assert_eq!(bodies.len(), 5, "every deep message is delivered");
    assert!(bodies[0] == message, "messages of one key keep their order");
    assert!(bodies[1..].iter().all(|b| *b == batch[0]));
    // The cluster still commits: nothing above stalled replication.
    for i in cluster.all() {
        cluster.client(i).kv_put("after", json!(i)).await.expect("a later write commits");
    }

    let base = format!("http://{}", cluster.nodes[0].addr());
    for (levels, path, body) in [
        (DEPTH_MAX, "/v1/kv/deeper", None),
        (125, "/v1/kv/deeper", None),
        (DEPTH_MAX, "/v1/cache/deeper", None),
        (DEPTH_MAX, "/v1/queues/deep/messages", Some("body")),
        (DEPTH_MAX - 2, "/v1/queues/deep/messages/batch", Some("batch")),
    ] {
        let inner = nested(levels, 1);
        let payload = match body {
            None => json!({"value": inner, "durable": true}),
            Some("body") => json!({"body": inner}),
            _ => json!({"messages": [{"body": inner}]}),
        };
        let request = if path.contains("queues") {
            http.post(format!("{base}{path}"))
        } else {
            http.put(format!("{base}{path}"))
        };
        let resp = request.json(&payload).send().await.expect("send");
        assert_eq!(resp.status().as_u16(), 400, "{path} with a value {levels} deep is refused");
        let error: Value = resp.json().await.expect("JSON error");
        assert_eq!(error["error"], "invalid_argument");
        assert!(error["message"].as_str().unwrap_or("").contains("nested deeper than 64"), "{error}");
    }
    assert_eq!(cluster.client(0).kv_get("deeper").await.expect("read"), None);
}

/// Sends `raw` on a new connection and reads until the node closes it (or `within` ends).
async fn exchange(addr: &str, raw: &[u8], within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(raw).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, tcp.read_to_end(&mut answer)).await;
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

/// Asserts that `answer` is a raw HTTP answer with `status` and our JSON error `code`.
fn assert_json_error(answer: &str, status: u16, code: &str) {
    assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
    assert_eq!(json_error_of(answer)["error"], code, "{answer}");
}

fn json_error_of(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("a JSON error body in {answer:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_oversized_and_invented_requests_get_bounded_json_answers() {
    let cluster = TestCluster::start(
        1,
        &[
            ("HTTP_HEADER_TIMEOUT_MS", "500"),
            ("HTTP_BODY_TIMEOUT_MS", "500"),
            ("QUEUE_LONG_POLLS_MAX", "1"),
            ("LOCK_WAITERS_MAX", "1"),
        ],
    );
    cluster.wait_leader(&[0], FORM).await;
    wait_queues_ready(&cluster.client(0), FORM).await;
    let addr = cluster.nodes[0].addr();

    // Half a request head: a JSON 408 once the head timeout passes, then the node closes.
    let (answer, took) =
        exchange(&addr, b"GET /health HTTP/1.1\r\nhost: x\r\n", Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(10), "a half-sent head is dropped; got {answer:?} after {took:?}");
    assert_json_error(&answer, 408, "request_timeout");

    // Half a body: 408 in our JSON, and the connection is closed.
    let (answer, _) = exchange(
        &addr,
        b"PUT /v1/kv/slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"value\":",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert_eq!(json_error_of(&answer)["error"], "request_timeout");

    let long_target = format!("GET /v1/kv/{} HTTP/1.1\r\nhost: x\r\n\r\n", "k".repeat(9_000));
    let (answer, _) = exchange(&addr, long_target.as_bytes(), Duration::from_secs(10)).await;
    assert_json_error(&answer, 414, "uri_too_long");

    let big_header = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n", "h".repeat(17_000));
    let (answer, _) = exchange(&addr, big_header.as_bytes(), Duration::from_secs(10)).await;
    assert_json_error(&answer, 431, "headers_too_large");

    let (answer, _) = exchange(
        &addr,
        b"BREW /v1/kv/a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_json_error(&answer, 405, "method_not_allowed");
    let metrics = cluster.client(0).metrics().await.expect("metrics");
    assert!(!metrics.contains("BREW"), "an invented method is no label value");
    assert!(metrics.contains("method=\"other\""), "invented methods share one label value");

    // A refused oversized body says `connection: close`, so a pooled client never sends its
    // next request on the connection the node is closing.
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    for round in 0..5 {
        let resp = http
            .put(format!("{base}/v1/kv/big"))
            .json(&json!({"value": "x".repeat(2_000_000)}))
            .send()
            .await
            .expect("send a 2 MB body");
        assert_eq!(resp.status().as_u16(), 413);
        assert_eq!(resp.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
        let next =
            http.get(format!("{base}/health")).send().await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(next.status().as_u16(), 200);
    }

    // One long poll at a time (QUEUE_LONG_POLLS_MAX=1); a wait outlives the head timeout.
    let client = cluster.client(0);
    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            let options = ReceiveOptions { wait_ms: Some(5_000), ..Default::default() };
            client.queue_receive("idle", &options).await
        }
    });
    // Nothing shows a waiting receive from outside; a second is ample for it to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    let refused = eventually(Duration::from_secs(5), || async {
        let options = ReceiveOptions { wait_ms: Some(1_000), ..Default::default() };
        let resp = http
            .post(format!("{base}/v1/queues/idle/receive"))
            .json(&options)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().as_u16() == 429 {
            Ok(resp)
        } else {
            Err(format!("got {}", resp.status()))
        }
    })
    .await;
    assert_eq!(refused.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert_eq!(refused.json::<Value>().await.expect("json")["error"], "limit_exceeded");
    assert!(waiting.await.expect("join").expect("the waiting receive ends normally").is_empty());
    let options = ReceiveOptions { wait_ms: Some(100), ..Default::default() };
    client.queue_receive("idle", &options).await.expect("the permit came back");

    // One waiting lock acquire at a time (LOCK_WAITERS_MAX=1).
    let hold = |id: &str, wait_ms: u64| LockOptions {
        client_id: id.into(),
        wait_ms: Some(wait_ms),
        ..Default::default()
    };
    client.acquire("busy", &hold("a", 0)).await.expect("a holds");
    let waiter = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .acquire(
                    "busy",
                    &LockOptions { client_id: "b".into(), wait_ms: Some(10_000), ..Default::default() },
                )
                .await
        }
    });
    eventually(Duration::from_secs(5), || async {
        let status = client.lock_status("busy").await.map_err(|e| e.to_string())?;
        if status.waiters.is_empty() {
            Err(format!("{status:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    let over = eventually(Duration::from_secs(5), || async {
        match client.acquire("busy", &hold("c", 1_000)).await {
            Err(e) if e.code() == Some("limit_exceeded") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let () = over;
    client.release("busy", "a").await.expect("release");
    waiter.await.expect("join").expect("the waiter is granted");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_get_a_json_503_and_the_node_recovers() {
    let cluster = TestCluster::start(1, &[("HTTP_MAX_CONNECTIONS", "16")]);
    cluster.wait_leader(&[0], FORM).await;
    let addr = cluster.nodes[0].addr();
    let mut held = Vec::new();
    // The node's own calls to itself may hold a few; fill whatever is left.
    let answer = loop {
        let mut tcp = TcpStream::connect(&addr).await.expect("connect");
        let mut first = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 => break String::from_utf8_lossy(&first[..n]).into_owned(),
            _ => held.push(tcp),
        }
        assert!(held.len() <= 16, "the 17th connection is refused");
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("HTTP_MAX_CONNECTIONS"), "{answer}");
    drop(held);
    let client = cluster.client(0);
    eventually(Duration::from_secs(5), || client.health()).await;
    let metrics = cluster.client(0).metrics().await.expect("metrics");
    assert!(metrics.contains("sinkron_http_connections_refused_total"), "the refusal is counted");
}

/// The error code of `result`, `None` when it succeeded.
fn quota_code<T>(result: Result<T, sinkron_client::ClientError>) -> Option<String> {
    result.err().and_then(|e| e.code().map(str::to_owned))
}

/// A peer that answers every call with `400`: what a node sees when a member is buggy or
/// not a Sinkron node at all.
async fn refusing_peer(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 64 * 1024];
            loop {
                let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                while buf.len() < head_end + 4 + length {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..head_end + 4 + length);
                let body = r#"{"error":"invalid_argument","message":"refused by the test"}"#;
                let answer = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if tcp.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_refusing_raft_calls_is_reported_backed_off_and_logged_sparingly() {
    let mut cluster = TestCluster::prepare(3, &[]);
    let listener = TcpListener::bind(cluster.nodes[2].addr()).await.expect("bind the refusing peer");
    let peer = tokio::spawn(refusing_peer(listener));
    cluster.spawn(0, &[]);
    cluster.spawn(1, &[]);
    let leader = cluster.wait_leader(&[0, 1], FORM).await;
    let watch_from = Instant::now();
    // Two of three members: group 0 commits without the refusing one.
    cluster.client(1 - leader).kv_put("still", json!(1)).await.expect("a write commits with a quorum of two");
    let ready = eventually(Duration::from_secs(10), || async {
        let resp = reqwest::get(format!("http://{}/ready", cluster.nodes[leader].addr()))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        // Other reasons (still applying right after a write) come first while they last.
        let replicating = body["message"].as_str().is_some_and(|m| m.contains("cannot replicate"));
        if status == 503 && replicating {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let message = ready["message"].as_str().unwrap_or("").to_string();
    assert!(message.contains("group 0 cannot replicate"), "{ready}");
    assert!(message.contains(&cluster.nodes[2].addr()), "names the peer: {ready}");
    assert!(message.contains("HTTP 400"), "{ready}");
    let metrics = cluster.client(leader).metrics().await.expect("metrics");
    assert!(
        metrics.contains("sinkron_raft_refused_calls_total{refused_by=\"peer\",status=\"400\"}"),
        "counted"
    );

    // Refusals are backed off and their lines rate-limited: seconds of them cost kilobytes,
    // not the megabytes an immediate retry loop writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seconds = watch_from.elapsed().as_secs() + 1;
    let log = std::fs::read_to_string(&cluster.nodes[leader].log_path).expect("read the leader's log");
    let ours = log.lines().filter(|l| l.contains("a peer refused a Raft call")).count() as u64;
    // One line a second per peer at most, whichever groups it refuses.
    assert!(ours <= seconds + 1, "{ours} refusal lines in {seconds} s");
    assert!(log.len() < 2 * 1024 * 1024, "the leader wrote {} bytes of log in {seconds} s", log.len());
    peer.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn full_quotas_refuse_growth_while_deletes_releases_and_acks_keep_working() {
    let cluster = TestCluster::start(
        1,
        &[("QUOTA_BYTES", "1048576"), ("QUOTA_LOCKS", "3"), ("QUOTA_CACHE_KEYS", "2"), ("QUOTA_QUEUES", "1")],
    );
    cluster.wait_leader(&[0], FORM).await;
    wait_queues_ready(&cluster.client(0), FORM).await;
    let client = cluster.client(0);

    let by = |id: &str| LockOptions { client_id: id.into(), ..Default::default() };
    for name in ["l1", "l2", "l3"] {
        client.acquire(name, &by("a")).await.expect("within the lock quota");
    }
    assert_eq!(quota_code(client.acquire("l4", &by("a")).await).as_deref(), Some("quota_exceeded"));
    assert_eq!(
        quota_code(client.acquire("l1", &by("b")).await).as_deref(),
        Some("lock_conflict"),
        "an existing lock is no new lock"
    );
    client.release("l1", "a").await.expect("a release works at the quota");
    client.acquire("l4", &by("a")).await.expect("a released lock made room");

    client.cache_put("k1", json!(1), true).await.expect("cache key 1");
    client.cache_put("k2", json!(2), true).await.expect("cache key 2");
    assert_eq!(quota_code(client.cache_put("k3", json!(3), true).await).as_deref(), Some("quota_exceeded"));
    client.cache_put("k1", json!(10), true).await.expect("an existing key can be written");
    client.cache_delete("k1").await.expect("a delete works at the quota");
    eventually(Duration::from_secs(10), || client.cache_put("k3", json!(3), true)).await;

    // One queue per partition: some of 17 queues must share a partition with another.
    let mut refused = 0;
    let mut accepted = Vec::new();
    for i in 0..17 {
        let queue = format!("q{i}");
        match quota_code(client.queue_send(&queue, json!(i), None).await) {
            None => accepted.push(queue),
            Some(code) if code == "quota_exceeded" => refused += 1,
            Some(other) => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 1 && accepted.len() <= 16, "{refused} refused, {} accepted", accepted.len());
    let options = ReceiveOptions { wait_ms: Some(1_000), ..Default::default() };
    let delivered = client.queue_receive(&accepted[0], &options).await.expect("receive at the quota");
    client.queue_ack(&accepted[0], &delivered[0].receipt).await.expect("an ack works at the quota");

    // Bytes: 60 KB values until group 0 (1 MiB) is full.
    let value = json!("v".repeat(60_000));
    let mut stored = 0;
    let full = loop {
        match client.kv_put(&format!("big{stored}"), value.clone()).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 40, "a 1 MiB quota holds fewer than forty 60 KB values");
    };
    assert_eq!(full.code(), Some("quota_exceeded"), "{full:?}");
    let ready = client.ready().await.expect("a full node is still ready");
    assert!(ready.degraded.iter().any(|d| d.contains("quota")), "{ready:?}");
    let metrics = client.metrics().await.expect("metrics");
    assert!(metrics.contains("sinkron_quota_refusals_total"), "refusals are counted");
    for i in 0..stored {
        client.kv_delete(&format!("big{i}")).await.expect("a delete works at the quota");
    }
    // The next refused write asks for a snapshot, which measures what the deletes freed.
    eventually(Duration::from_secs(30), || client.kv_put("after", json!(1))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_corrupt_log_record_refuses_to_start_with_one_clear_line() {
    let mut cluster = TestCluster::start(1, &[]);
    cluster.wait_leader(&[0], FORM).await;
    for i in 0..20 {
        cluster.client(0).kv_put(&format!("k{i}"), json!(i)).await.expect("write");
    }
    assert_eq!(cluster.stop(0), Some(0), "a clean stop");
    let log_dir = cluster.nodes[0].data_dir.join("log");
    let segment = std::fs::read_dir(&log_dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    let records = sinkron_node::storage::segment::decode_records(&bytes);
    assert!(records.records.len() > 3, "entries to damage");
    let third = records.records[2].offset as usize;
    bytes[third + 12] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("damage one record");

    std::fs::write(&cluster.nodes[0].log_path, b"").expect("clear the log");
    cluster.spawn(0, &[]);
    let mut child = cluster.nodes[0].child.take().expect("child");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "a node on a corrupt log must not keep running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let output = std::fs::read_to_string(&cluster.nodes[0].log_path).expect("read the node's output");
    let line =
        output.lines().find(|l| l.contains("corrupt log record")).unwrap_or_else(|| panic!("{output}"));
    assert!(
        line.contains(&segment.display().to_string()) && line.contains(&format!("offset {third}")),
        "{line}"
    );
    assert_eq!(line.matches("corrupt log record").count(), 1, "said once: {line}");
    assert!(!output.contains("panicked"), "{output}");
}

/// Reads one answer (head and `content-length` body) from a kept-alive connection. Bytes
/// after it (the start of the next answer, when the node wrote two before we read) stay in
/// `buffered` for the next call.
async fn read_answer(tcp: &mut TcpStream, buffered: &mut Vec<u8>) -> String {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buffered.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4) {
            let head = String::from_utf8_lossy(&buffered[..head_end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buffered.len() >= head_end + length {
                let answer: Vec<u8> = buffered.drain(..head_end + length).collect();
                return String::from_utf8_lossy(&answer).into_owned();
            }
        }
        let n = tcp.read(&mut chunk).await.expect("read an answer");
        assert!(n > 0, "the node closed before answering; got {:?}", String::from_utf8_lossy(buffered));
        buffered.extend_from_slice(&chunk[..n]);
    }
}

/// Waits for the node to close `tcp` and says how long that took (at most `within`).
async fn closed_after(tcp: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(within, tcp.read_to_end(&mut rest))
        .await
        .expect("the node closes the connection")
        .expect("read to the end");
    assert!(rest.is_empty(), "nothing more is sent: {:?}", String::from_utf8_lossy(&rest));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_heads_are_checked_and_timed_before_hyper_reads_them() {
    // Timeouts long enough that a busy machine never trips them on a prompt client.
    let cluster =
        TestCluster::start(1, &[("HTTP_HEADER_TIMEOUT_MS", "2000"), ("HTTP_IDLE_TIMEOUT_MS", "4000")]);
    cluster.wait_leader(&[0], FORM).await;
    wait_queues_ready(&cluster.client(0), FORM).await;
    let addr = cluster.nodes[0].addr();

    // What hyper used to answer with an empty body (or not at all) is our JSON now.
    let (answer, _) = exchange(&addr, b"HELLO WORLD\r\n\r\n", Duration::from_secs(10)).await;
    assert_json_error(&answer, 400, "invalid_argument");
    let huge = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-filler: {}", "h".repeat(70_000));
    let (answer, _) = exchange(&addr, huge.as_bytes(), Duration::from_secs(10)).await;
    assert_json_error(&answer, 431, "headers_too_large");
    let smuggled = b"PUT /v1/kv/s HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let (answer, _) = exchange(&addr, smuggled, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // A connection that never asks anything is closed after the head timeout, unanswered.
    let mut silent = TcpStream::connect(&addr).await.expect("connect");
    let took = closed_after(&mut silent, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(1_900), "closed after {took:?}");

    // A chunked body and a request pipelined right behind it: the guard finds where the
    // body ends, and both are answered in order on the same connection.
    let mut tcp = TcpStream::connect(&addr).await.expect("connect");
    tcp.write_all(
        b"PUT /v1/kv/chunked HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\n{\"val\r\n9;x=y\r\nue\":\"abc\"\r\n1\r\n}\r\n0\r\n\r\n\
          GET /v1/kv/chunked HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .expect("write");
    // Give the node time to write both answers before we read, so the second answer is
    // read along with the first (as it was once on a busy machine) and must be kept.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buffered = Vec::new();
    let put = read_answer(&mut tcp, &mut buffered).await;
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let get = read_answer(&mut tcp, &mut buffered).await;
    assert!(get.starts_with("HTTP/1.1 200") && get.contains("\"abc\""), "{get}");

    // A long poll outlives both timeouts: no timer runs while the node is answering. Then
    // the kept-alive connection is closed after the idle timeout, not the head timeout.
    let body = r#"{"max":1,"wait_ms":5000}"#;
    let poll = format!(
        "POST /v1/queues/idle/receive HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(poll.as_bytes()).await.expect("write");
    let started = Instant::now();
    let answer = read_answer(&mut tcp, &mut buffered).await;
    assert!(buffered.is_empty(), "one answer to one poll");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(4_500), "the poll waited: {:?}", started.elapsed());
    let idle = closed_after(&mut tcp, Duration::from_secs(15)).await;
    assert!(
        idle >= Duration::from_millis(3_500),
        "closed {idle:?} after the answer, before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_peer_batches_are_refused_call_by_call_and_the_node_keeps_working() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_leader(&[0], FORM).await;
    let url = format!("http://{}/raft/batch", cluster.nodes[0].addr());
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| http.post(&url).header("content-type", "application/json").body(body).send();

    let garbage = post(b"not json".to_vec()).await.expect("garbage");
    assert_eq!(garbage.status().as_u16(), 400);
    let body: Value = garbage.json().await.expect("a JSON error");
    assert_eq!(body["error"], "invalid_argument", "{body}");

    let vote = json!({"group": 0, "rpc": "vote", "body": {}});
    let too_many = serde_json::to_vec(&vec![vote; 513]).expect("encode");
    assert_eq!(post(too_many).await.expect("too many").status().as_u16(), 413);

    let mixed = json!([
        {"group": 0, "rpc": "append", "body": {"nonsense": 1}},
        {"group": 99, "rpc": "vote", "body": {}},
        {"group": 0, "rpc": "install", "body": {}},
    ]);
    let answer = post(serde_json::to_vec(&mixed).expect("encode")).await.expect("mixed");
    assert_eq!(answer.status().as_u16(), 200);
    let replies: Value = answer.json().await.expect("replies");
    let statuses: Vec<u64> =
        replies.as_array().expect("a list").iter().map(|r| r["status"].as_u64().unwrap_or(0)).collect();
    assert_eq!(statuses, vec![400, 404, 400], "{replies}");

    let client = cluster.client(0);
    client.kv_put("after", json!(1)).await.expect("group 0 still commits");
}
