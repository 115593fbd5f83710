//! Security on real processes: mutual TLS between nodes with certificates made here, the
//! cluster secret, principals and roles from a tokens file (reloaded on SIGHUP), lock holds
//! bound to principals, unguessable receipts, and membership that an outside address
//! cannot join.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use sinkron_client::{ClientError, Credentials, LockOptions, ReceiveOptions};
use support::queue_load::wait_queues_ready;
use support::{eventually, make_certs, sinkron_bin, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORM: Duration = Duration::from_secs(30);
const ADMIN: &str = "admin-token-0123456789abcdef";
const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef00";
const READER: &str = "reader-token-0123456789abcd";
const TOKENS: &str = "# principals of the test\n\
    root:admin:admin-token-0123456789abcdef\n\
    alice:write:alice-token-0123456789abcdef\n\
    bob:write:bob-token-0123456789abcdef00\n\
    reader:read:reader-token-0123456789abcd\n";

fn status_and_code(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A raw HTTP/1.1 exchange on a plain TCP connection: the status line and body.
async fn raw_http(addr: &str, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await;
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mutual_tls_cluster_forms_refuses_outsiders_and_fails_over() {
    let mut cluster = TestCluster::prepare(3, &[]);
    cluster.use_tls();
    cluster.use_tokens(TOKENS, ADMIN);
    for i in 0..3 {
        cluster.spawn(i, &[]);
    }
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    let put = cluster.client(1).kv_put("tls", json!("on")).await.expect("a write over HTTPS");
    assert!(put.version > 0);

    // Plain HTTP gets one clear answer, not a handshake error.
    let answer = raw_http(&cluster.nodes[0].addr(), "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("HTTPS only"), "{answer}");

    // /raft/* needs a client certificate of the cluster's CA.
    let certs = cluster.certs.clone().expect("certs");
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).expect("ca")).expect("ca pem");
    let with_identity = |cert: &std::path::Path, key: &std::path::Path| {
        let mut pem = std::fs::read(key).expect("key");
        pem.extend(std::fs::read(cert).expect("cert"));
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone())
            .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
            .build()
            .expect("client")
    };
    let read_index = format!("{}/raft/0/read-index", cluster.url(leader));
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.clone())
        .build()
        .expect("client");
    let refused = anonymous.post(&read_index).send().await.expect("an answer");
    assert_eq!(refused.status().as_u16(), 401);
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "unauthenticated");
    let member = with_identity(&certs.join("node1.pem"), &certs.join("node1-key.pem"));
    let admitted = member.post(&read_index).send().await.expect("an answer");
    assert!(admitted.status().is_success(), "a member's certificate is admitted: {}", admitted.status());
    let other = cluster.dir.path().join("other-ca");
    make_certs(&other, &["intruder".to_string()]);
    let foreign = with_identity(&other.join("intruder.pem"), &other.join("intruder-key.pem"));
    match foreign.post(&read_index).send().await {
        Err(_) => {}
        Ok(resp) => assert_eq!(resp.status().as_u16(), 401, "a certificate of another CA is not a member's"),
    }

    // The CLI over TLS with a token.
    let cli = |args: &[&str], token: &str| {
        std::process::Command::new(sinkron_bin())
            .args(["--cacert", &certs.join("ca.pem").display().to_string()])
            .args(args)
            .args(["--endpoint", &cluster.url(2)])
            .env("SINKRON_TOKEN", token)
            .output()
            .expect("run the CLI")
    };
    let out = cli(&["kv", "get", "tls"], READER);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"on\""));
    let out = cli(&["kv", "put", "tls", "again"], READER);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("permission_denied"));

    // Fail-over: the leader dies, the others elect one over mutual TLS and go on.
    cluster.kill(leader);
    let rest: Vec<usize> = cluster.all().into_iter().filter(|&i| i != leader).collect();
    cluster.wait_leader(&rest, FORM).await;
    let client = cluster.client(rest[0]);
    eventually(FORM, || client.kv_put("tls", json!("after"))).await;
    assert_eq!(
        cluster.client(rest[1]).kv_get("tls").await.expect("read").map(|v| v.value),
        Some(json!("after"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_tokens_and_principal_bound_locks() {
    let mut cluster = TestCluster::prepare(3, &[("CLUSTER_SECRET", "the-test-cluster-secret-42")]);
    let tokens_path = cluster.use_tokens(TOKENS, ADMIN);
    for i in 0..3 {
        cluster.spawn(i, &[]);
    }
    cluster.wait_leader(&cluster.all(), FORM).await;
    wait_queues_ready(&cluster.client(0), FORM).await;
    let as_token = |i: usize, token: Option<&str>| {
        cluster.client_with(i, &Credentials { token: token.map(String::from), ca_pem: None })
    };
    let (nobody, unknown) = (as_token(1, None), as_token(1, Some("not-a-token-at-all")));
    let (reader, alice, bob, admin) = (
        as_token(1, Some(READER)),
        as_token(2, Some(ALICE)),
        as_token(0, Some(BOB)),
        as_token(1, Some(ADMIN)),
    );

    // Probes stay open; everything else needs a known token.
    nobody.health().await.expect("/health is open");
    nobody.ready().await.expect("/ready is open");
    assert_eq!(status_and_code(nobody.kv_get("k").await), (401, "unauthenticated".into()));
    assert_eq!(status_and_code(unknown.cluster().await), (401, "unauthenticated".into()));
    assert_eq!(status_and_code(nobody.metrics().await), (401, "unauthenticated".into()));
    reader.metrics().await.expect("a reader sees the metrics");

    // read: GETs only.
    assert_eq!(reader.kv_get("k").await.expect("a reader reads"), None);
    assert_eq!(status_and_code(reader.kv_put("k", json!(1)).await), (403, "permission_denied".into()));
    assert_eq!(
        status_and_code(reader.queue_send("q", json!(1), None).await),
        (403, "permission_denied".into())
    );
    // write: data, not membership, force-release or debug.
    alice.kv_put("k", json!(1)).await.expect("a writer writes");
    assert_eq!(
        status_and_code(alice.add_member("n9", "127.0.0.1:1").await),
        (403, "permission_denied".into())
    );
    assert_eq!(status_and_code(alice.force_release("any").await), (403, "permission_denied".into()));
    assert_eq!(status_and_code(alice.remove_member("node3").await), (403, "permission_denied".into()));
    let isolate = reqwest::Client::new()
        .post(format!("{}/v1/debug/isolate", cluster.url(0)))
        .bearer_auth(ALICE)
        .json(&json!({"isolated": true}))
        .send()
        .await
        .expect("answer");
    assert_eq!(isolate.status().as_u16(), 403);

    // Node-to-node calls need the secret, whoever asks.
    let raw = reqwest::Client::new();
    let write = format!("{}/raft/0/write", cluster.url(0));
    for secret in [None, Some("wrong-secret")] {
        let mut req = raw.post(&write).bearer_auth(ADMIN).json(&json!([]));
        if let Some(secret) = secret {
            req = req.header("x-sinkron-cluster-secret", secret);
        }
        assert_eq!(req.send().await.expect("answer").status().as_u16(), 401, "secret {secret:?}");
    }

    // A hold belongs to the principal that took it, whatever client_id others send.
    let options = LockOptions { client_id: "worker-1".into(), ttl_ms: Some(30_000), ..Default::default() };
    let held = alice.acquire("report", &options).await.expect("alice acquires");
    assert_eq!(status_and_code(bob.release("report", "worker-1").await), (403, "not_owner".into()));
    assert_eq!(status_and_code(bob.refresh("report", "worker-1", None).await), (403, "not_owner".into()));
    assert_eq!(status_and_code(bob.acquire("report", &options).await), (403, "not_owner".into()));
    assert_eq!(status_and_code(bob.refresh_all("worker-1", None).await), (403, "not_owner".into()));
    assert_eq!(alice.refresh("report", "worker-1", None).await.expect("alice refreshes").fence, held.fence);
    alice.release("report", "worker-1").await.expect("alice releases");
    // Once it holds nothing, the client id is free for anyone.
    bob.acquire("report", &options).await.expect("bob acquires after");
    admin.force_release("report").await.expect("an admin force-releases");

    // Receipts carry 128 bits that neither the id nor another receipt gives away.
    alice.queue_send("jobs", json!(1), Some("k")).await.expect("send");
    alice.queue_send("jobs", json!(2), Some("k")).await.expect("send");
    let got = eventually(FORM, || async {
        let got = alice.queue_receive("jobs", &ReceiveOptions { max: Some(2), ..Default::default() }).await?;
        if got.len() == 2 {
            Ok(got)
        } else {
            Err(ClientError::Config(format!("{} of 2 messages", got.len())))
        }
    })
    .await;
    let parts: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            let (plain, secret) = m.receipt.rsplit_once('.').expect("three parts");
            assert!(plain.starts_with(&m.id), "{}", m.receipt);
            assert!(secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "{}", m.receipt);
            (plain.to_string(), secret.to_string())
        })
        .collect();
    assert_ne!(parts[0].1, parts[1].1);
    let forged = format!("{}.{}", parts[0].0, parts[1].1);
    for guess in [parts[0].0.as_str(), forged.as_str()] {
        let (status, _) = status_and_code(bob.queue_ack("jobs", guess).await);
        assert!(status == 404 || status == 400, "a guessed receipt {guess} is refused: {status}");
    }
    alice.queue_ack("jobs", &got[0].receipt).await.expect("the real receipt acks");

    // Tokens are reloaded on SIGHUP: carol arrives, bob leaves.
    let carol = as_token(2, Some("carol-token-0123456789abcdef"));
    assert_eq!(status_and_code(carol.kv_get("k").await), (401, "unauthenticated".into()));
    let rotated = TOKENS
        .replace("bob:write:bob-token-0123456789abcdef00\n", "carol:write:carol-token-0123456789abcdef\n");
    std::fs::write(&tokens_path, rotated).expect("rewrite the tokens");
    for i in 0..3 {
        cluster.signal(i, Signal::SIGHUP);
    }
    eventually(FORM, || carol.kv_put("k", json!(2))).await;
    let bob_everywhere = [as_token(0, Some(BOB)), as_token(1, Some(BOB)), as_token(2, Some(BOB))];
    for bob in &bob_everywhere {
        eventually(FORM, || async {
            match bob.kv_get("k").await {
                Err(ClientError::Api { status: 401, .. }) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    // A broken file keeps the tokens in force.
    std::fs::write(&tokens_path, "garbage").expect("break the tokens");
    cluster.signal(2, Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    carol.kv_get("k").await.expect("carol still gets in");

    // Force-releases and refused authentications leave audit lines.
    let logs: String =
        cluster.nodes.iter().map(|n| std::fs::read_to_string(&n.log_path).unwrap_or_default()).collect();
    assert!(
        logs.contains("audit") && logs.contains("force-release") && logs.contains("principal=\"root\""),
        "audit lines"
    );
    assert!(logs.contains("refused: no token") && logs.contains("refused: unknown token"));
}

/// Answers every request on `listener` with `200 []`, as an address that is no Sinkron
/// node might.
async fn impostor(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]";
                if tcp.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outside_address_cannot_become_a_voter() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(&cluster.all(), FORM).await;
    for i in 0..20 {
        cluster.client(leader).kv_put(&format!("k{i}"), json!(i)).await.expect("write");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let fake = tokio::spawn(impostor(listener));
    let started = Instant::now();
    let added = cluster.client((leader + 1) % 3).add_member("intruder", &addr).await;
    assert!(added.is_err(), "an impostor was added: {added:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "the refusal is bounded");
    let members = eventually(FORM, || async {
        let status = cluster.client(leader).cluster().await?;
        if status.members.iter().any(|m| m.id == "intruder") {
            Err(ClientError::Config("the learner is still listed".into()))
        } else {
            Ok(status.members)
        }
    })
    .await;
    assert_eq!(members.iter().filter(|m| m.role == "voter").count(), 3, "{members:?}");
    fake.abort();
    // The cluster still commits.
    cluster.client(0).kv_put("after", json!(true)).await.expect("write after");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_backend_over_tls_with_a_password() {
    let redis_dir = tempfile::tempdir().expect("temp dir");
    let certs = redis_dir.path().join("certs");
    make_certs(&certs, &["redis".to_string()]);
    let port = support::free_port();
    let path = |f: &str| certs.join(f).display().to_string();
    let (cert, key, ca) = (path("redis.pem"), path("redis-key.pem"), path("ca.pem"));
    let args = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "redis-pass-42",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ];
    let Some(_redis) = support::redis_server::RedisServer::start_with(redis_dir.path(), &args, port) else {
        return;
    };
    let port = port.to_string();
    let env = [
        ("STORAGE_BACKEND", "redis"),
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port.as_str()),
        ("REDIS_TLS", "true"),
        ("REDIS_CA_FILE", ca.as_str()),
        ("REDIS_PASSWORD", "redis-pass-42"),
        ("REDIS_NAMESPACE", "tls"),
    ];
    let mut cluster = TestCluster::start(3, &env);
    cluster.wait_leader(&cluster.all(), FORM).await;
    cluster.client(0).kv_put("stored", json!("in redis over tls")).await.expect("write");
    // A restarted node reads its log back from Redis.
    cluster.stop(1);
    cluster.spawn(1, &[]);
    cluster.wait_local_value(1, "stored", &json!("in redis over tls"), FORM).await;
    // A node with the wrong password does not start, and says why.
    let mut wrong = TestCluster::prepare(1, &env);
    wrong.spawn(0, &[("REDIS_PASSWORD", "not-the-password")]);
    let child = wrong.nodes[0].child.as_mut().expect("child");
    let deadline = Instant::now() + FORM;
    let exited = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "a node with the wrong Redis password kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!exited.success());
    let log = std::fs::read_to_string(&wrong.nodes[0].log_path).unwrap_or_default();
    assert!(log.contains("connect to Redis"), "{log}");
}
