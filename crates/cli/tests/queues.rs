//! Queue tests on real `sinkron serve` processes: delivery through every node, failover of a
//! partition leader, visibility timeouts, dead letters, restarts and membership changes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;
use sinkron_client::{Acked, Client, ClientError, Delivered, ReceiveOptions};
use support::queue_load::{
    check_at_least_once, drain, partition_leader, send_until_acked, wait_queues_ready, Producers,
};
use support::{eventually, TestCluster};

const FORM: Duration = Duration::from_secs(30);

fn clients(cluster: &TestCluster, nodes: &[usize]) -> Vec<Client> {
    nodes.iter().map(|i| cluster.client(*i)).collect()
}

async fn ready(cluster: &TestCluster) {
    cluster.wait_leader(&cluster.all(), FORM).await;
    wait_queues_ready(&cluster.client(0), FORM).await;
    // Every partition has a leader once two of its replicas host it; the third may still be
    // opening its groups, and could not vote for a new leader if a test kills one.
    let all = clients(cluster, &cluster.all());
    eventually(FORM, || async {
        let ring = all[0].ring().await.map_err(|e| e.to_string())?;
        let want: usize = ring.partitions.iter().map(|p| p.replicas.len()).sum();
        let open = counter_sum(&all, "sinkron_queue_partitions_hosted").await as usize;
        if open == want {
            Ok(())
        } else {
            Err(format!("{open} of {want} partition replicas open"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_partition_elects_its_first_leader_well_within_an_election_timeout() {
    // Election timeouts longer than the wait: the node that initialises a partition
    // campaigns at once, often before its other replicas host the group; a partition whose
    // first campaign failed would stay without a leader for 20 s or more unless that node
    // campaigns again. Whether a first campaign fails depends on when each node's hosting
    // pass runs, so three clusters are formed, one after the other.
    let slow = [("RAFT_ELECTION_TIMEOUT_MIN", "20"), ("RAFT_ELECTION_TIMEOUT_MAX", "25")];
    for round in 0..3 {
        let started = Instant::now();
        let cluster = TestCluster::start(3, &slow);
        // Group 0 forms at once; a split first vote there would take one election timeout.
        cluster.wait_leader(&cluster.all(), Duration::from_secs(60)).await;
        let formed = started.elapsed();
        wait_queues_ready(&cluster.client(0), Duration::from_secs(10)).await;
        eprintln!(
            "cluster {round}: formed after {formed:?}, every partition led after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn producers_and_consumers_on_every_node_get_every_message() {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut producers = Vec::new();
    for (p, client) in all.iter().enumerate() {
        let client = client.clone();
        producers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..150 {
                // Keys spread the queue over partitions; order holds per key only.
                let key = format!("k{}", i % 12);
                let body = json!({ "producer": p, "n": i });
                let id = send_until_acked(
                    std::slice::from_ref(&client),
                    "orders",
                    body.clone(),
                    Some(&key),
                    &format!("p{p}-{i}"),
                    give_up,
                )
                .await
                .expect("send acknowledged");
                sent.push((id, body));
            }
            sent
        }));
    }
    let mut expected = BTreeMap::new();
    let mut bodies = BTreeSet::new();
    for producer in producers {
        for (id, body) in producer.await.expect("producer") {
            bodies.insert(body.to_string());
            expected.insert(id, body);
        }
    }
    assert_eq!(expected.len(), 450, "every send got its own id");
    let partitions: BTreeSet<&str> = expected.keys().filter_map(|id| id.split('-').next()).collect();
    assert!(partitions.len() > 3, "keys spread the queue over partitions: {partitions:?}");
    let consumed = drain(&all, "orders", &expected, Duration::from_secs(60)).await;
    check_at_least_once(&expected, &bodies, &consumed);
    eprintln!("delivered {} messages, {} duplicates", consumed.deliveries.len(), consumed.duplicates());
    let stats = all[1].queue_stats("orders").await.expect("stats");
    assert_eq!((stats.ready, stats.in_flight, stats.dead_letters), (0, 0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn order_is_kept_within_a_key() {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let client = cluster.client(1);
    for i in 0..20 {
        client.queue_send("fifo", json!(i), None).await.expect("send");
    }
    let options = ReceiveOptions { max: Some(7), visibility_ms: Some(10_000), wait_ms: Some(1_000) };
    let mut got = Vec::new();
    while got.len() < 20 {
        for m in cluster.client(got.len() % 3).queue_receive("fifo", &options).await.expect("receive") {
            got.push(m.body.as_i64().expect("number"));
            cluster.client(2).queue_ack("fifo", &m.receipt).await.expect("ack");
        }
    }
    assert_eq!(got, (0..20).collect::<Vec<i64>>());

    // A batch send keeps the order of one key's messages too.
    let batch: Vec<(serde_json::Value, Option<String>)> =
        (0..30).map(|i| (json!(i), Some("one-key".to_string()))).collect();
    let outcomes = cluster.client(0).queue_send_batch("fifo", &batch).await.expect("batch send");
    assert!(outcomes.iter().all(|o| o.id.is_some()), "{outcomes:?}");
    let mut got = Vec::new();
    while got.len() < 30 {
        let messages = cluster.client(got.len() % 3).queue_receive("fifo", &options).await.expect("receive");
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
        got.extend(messages.iter().map(|m| m.body.as_i64().expect("number")));
        let acked = cluster.client(1).queue_ack_many("fifo", &receipts).await.expect("batch ack");
        assert_eq!((acked.acked, acked.failed.len()), (receipts.len(), 0));
    }
    assert_eq!(got, (0..30).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_a_partition_leader_loses_no_acknowledged_message() {
    let mut cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    // Without a key the whole queue is one partition; kill that partition's leader.
    let partition =
        cluster.client(0).queue_send("stream", json!("probe"), None).await.expect("send").partition;
    let leader_name = partition_leader(&cluster.client(0), partition).await;
    let leader = cluster.nodes.iter().position(|n| n.name == leader_name).expect("leader index");
    let survivors: Vec<usize> = cluster.all().into_iter().filter(|i| *i != leader).collect();
    let producers_via = clients(&cluster, &survivors);
    let producers = Producers::start(&producers_via, "stream", 4, 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_kill = producers.acked();
    cluster.kill(leader);
    // Sends keep being acknowledged once a new leader is elected.
    producers.wait_for_more(before_kill, 50, FORM).await;
    let (expected, mut bodies) = producers.stop().await;
    bodies.insert(json!("probe").to_string());
    let consumed = drain(&producers_via, "stream", &expected, Duration::from_secs(60)).await;
    check_at_least_once(&expected, &bodies, &consumed);
    eprintln!(
        "{} acknowledged before the kill, {} in all; {} duplicates",
        before_kill,
        expected.len(),
        consumed.duplicates()
    );
    // The killed node comes back and catches up.
    cluster.spawn(leader, &[]);
    cluster.wait_leader(&cluster.all(), FORM).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn visibility_timeout_redelivers_and_the_limit_dead_letters() {
    let cluster = TestCluster::start(3, &[("QUEUE_MAX_RECEIVES", "3")]);
    ready(&cluster).await;
    let (a, b) = (cluster.client(0), cluster.client(2));
    let sent = a.queue_send("jobs", json!("poison"), None).await.expect("send");
    let short = ReceiveOptions { max: Some(1), visibility_ms: Some(300), wait_ms: Some(2_000) };
    let first = a.queue_receive("jobs", &short).await.expect("receive");
    assert_eq!((first.len(), first[0].receive_count), (1, 1));
    assert!(
        b.queue_receive("jobs", &ReceiveOptions::default()).await.expect("receive").is_empty(),
        "hidden while in flight"
    );
    // Not acked within 300 ms: delivered again, with a new receipt; the old one is stale.
    let second = b.queue_receive("jobs", &short).await.expect("receive after the deadline");
    assert_eq!((second[0].id.as_str(), second[0].receive_count), (sent.id.as_str(), 2));
    assert_ne!(second[0].receipt, first[0].receipt);
    let stale = a.queue_ack("jobs", &first[0].receipt).await.expect_err("a stale receipt");
    assert_eq!(stale.code(), Some("not_found"));
    // A nack with a delay hides it until the delay passed.
    assert!(!b.queue_nack("jobs", &second[0].receipt, 400).await.expect("nack"));
    let started = Instant::now();
    let third = a.queue_receive("jobs", &short).await.expect("receive after the delay");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "delivered {:?} after the nack",
        started.elapsed()
    );
    assert_eq!(third[0].receive_count, 3);
    // Third delivery returned: past QUEUE_MAX_RECEIVES it moves to the dead-letter queue.
    assert!(a.queue_nack("jobs", &third[0].receipt, 0).await.expect("nack"), "dead-lettered");
    let stats = b.queue_stats("jobs").await.expect("stats");
    assert_eq!((stats.ready, stats.in_flight, stats.dead_letters), (0, 0, 1), "{stats:?}");
    let dead = b.queue_receive("jobs.dlq", &short).await.expect("receive from the DLQ");
    assert_eq!((dead[0].id.as_str(), &dead[0].body), (sent.id.as_str(), &json!("poison")));
    b.queue_ack("jobs.dlq", &dead[0].receipt).await.expect("ack the dead letter");

    // An expired deadline also counts: left unacked past the limit, it is dead-lettered.
    let sent = a.queue_send("jobs", json!("slow"), None).await.expect("send");
    for round in 1..=3 {
        let got = a.queue_receive("jobs", &short).await.expect("receive");
        assert_eq!((got[0].id.as_str(), got[0].receive_count), (sent.id.as_str(), round));
    }
    let dead = eventually(Duration::from_secs(10), || async {
        let got = b.queue_receive("jobs.dlq", &short).await.map_err(|e| e.to_string())?;
        got.into_iter().next().ok_or_else(|| "not dead-lettered yet".to_string())
    })
    .await;
    assert_eq!(dead.id, sent.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_restart_keeps_every_unacknowledged_message() {
    let mut cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    let mut kept = BTreeMap::new();
    let mut bodies = BTreeSet::new();
    for i in 0..60 {
        let key = format!("k{}", i % 5);
        let sent = all[i % 3].queue_send("durable", json!(i), Some(&key)).await.expect("send");
        kept.insert(sent.id, json!(i));
        bodies.insert(json!(i).to_string());
    }
    // Some are acked (gone for good), some are in flight when the cluster dies.
    let options = ReceiveOptions { max: Some(10), visibility_ms: Some(1_000), wait_ms: Some(1_000) };
    let acked = all[0].queue_receive("durable", &options).await.expect("receive");
    for m in &acked {
        all[0].queue_ack("durable", &m.receipt).await.expect("ack");
        kept.remove(&m.id);
    }
    let in_flight = all[1].queue_receive("durable", &options).await.expect("receive");
    assert!(!in_flight.is_empty());
    for i in cluster.all() {
        cluster.kill(i);
    }
    for i in cluster.all() {
        cluster.spawn(i, &[]);
    }
    ready(&cluster).await;
    let consumed = drain(&all, "durable", &kept, Duration::from_secs(60)).await;
    check_at_least_once(&kept, &bodies, &consumed);
    for m in &acked {
        assert!(!consumed.deliveries.contains_key(&m.id), "acked message {} came back", m.id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_and_another_leaves_while_traffic_flows() {
    let mut cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let via = clients(&cluster, &[0, 1]);
    let producers = Producers::start(&via, "moving", 3, 16);
    let joiner = cluster.spawn_joiner("node4");
    cluster.client(0).add_member("node4", &cluster.nodes[joiner].addr()).await.expect("add node4");
    let settled = |present: &'static str, absent: &'static str| {
        let client = cluster.client(0);
        async move {
            eventually(Duration::from_secs(90), || async {
                let ring = client.ring().await.map_err(|e| e.to_string())?;
                let nodes: Vec<&str> = ring.nodes.iter().map(String::as_str).collect();
                let partitions = &ring.partitions;
                let moving = partitions.iter().filter(|p| p.moving).count();
                let hosting = partitions.iter().filter(|p| p.replicas.iter().any(|n| n == present)).count();
                let stale = partitions.iter().filter(|p| p.replicas.iter().any(|n| n == absent)).count();
                if nodes.contains(&present)
                    && !nodes.contains(&absent)
                    && moving == 0
                    && hosting > 0
                    && stale == 0
                {
                    Ok(hosting)
                } else {
                    Err(format!(
                        "nodes {nodes:?}, {moving} moving, {present} in {hosting}, {absent} in {stale}"
                    ))
                }
            })
            .await
        }
    };
    let hosted = settled("node4", "node9").await;
    eprintln!("node4 joined and replicates {hosted} of 16 partitions");
    let during_join = producers.acked();
    cluster.client(1).remove_member("node3").await.expect("remove node3");
    settled("node4", "node3").await;
    // Traffic kept flowing through the moves.
    producers.wait_for_more(during_join, 20, FORM).await;
    let (expected, bodies) = producers.stop().await;
    cluster.kill(2);
    let consumers = clients(&cluster, &[0, 1, joiner]);
    let consumed = drain(&consumers, "moving", &expected, Duration::from_secs(60)).await;
    check_at_least_once(&expected, &bodies, &consumed);
    eprintln!("{} messages through a join and a leave, {} duplicates", expected.len(), consumed.duplicates());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_queue_requests_get_clear_errors() {
    let cluster = TestCluster::start(1, &[]);
    ready(&cluster).await;
    let base = format!("http://{}", cluster.nodes[0].addr());
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| http.post(format!("{base}{path}")).json(&body).send();
    let big = "x".repeat(300 * 1024);
    let cases = [
        ("/v1/queues/bad%20name/messages", json!({"body": 1}), 400, "invalid_argument"),
        ("/v1/queues/q/messages", json!({"body": big}), 413, "payload_too_large"),
        ("/v1/queues/q/messages", json!({"body": 1, "key": ""}), 400, "invalid_argument"),
        ("/v1/queues/q/messages", json!({"bdy": 1}), 400, "invalid_argument"),
        ("/v1/queues/q/receive", json!({"max": 0}), 400, "invalid_argument"),
        ("/v1/queues/q/receive", json!({"max": 101}), 400, "invalid_argument"),
        ("/v1/queues/q/receive", json!({"wait_ms": 3_600_000}), 400, "invalid_argument"),
        ("/v1/queues/q/receive", json!({"visibility_ms": 0}), 400, "invalid_argument"),
        ("/v1/queues/q/ack", json!({"receipt": "nonsense"}), 400, "invalid_argument"),
        ("/v1/queues/q/ack", json!({"receipt": "999-1.1"}), 400, "invalid_argument"),
        ("/v1/queues/q/ack", json!({"receipt": "0-77.1"}), 404, "not_found"),
        ("/v1/queues/q/nack", json!({"receipt": "0-77.1", "delay_ms": 10_000_000}), 400, "invalid_argument"),
        ("/v1/queues/q/receive", json!({"ack": [""]}), 400, "invalid_argument"),
        ("/v1/queues/q/receive", json!({"ack": vec!["0-1.1"; 101]}), 400, "invalid_argument"),
        ("/v1/queues/q/receive", json!({"ack": "0-1.1"}), 400, "invalid_argument"),
    ];
    for (path, body, status, code) in cases {
        let resp = post(path, body.clone()).await.expect("request");
        let got = resp.status().as_u16();
        let answer: serde_json::Value = resp.json().await.expect("json error body");
        assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{path} {body}: {answer}");
    }
    let sent = cluster.client(0).queue_send("q", json!({"ok": true}), None).await.expect("a valid send");
    assert_eq!(sent.id, format!("{}-1", sent.partition));
    let ring = cluster.client(0).ring().await.expect("ring");
    assert_eq!(ring.tokens.len(), 150);
    assert_eq!(ring.partitions.len(), 16);
}

/// Every node is SIGKILLed at once while producers write to every partition and writers put
/// to group 0, so each node dies with appends of many groups in its shared log's current
/// flush. After a restart every acknowledged send of every partition is delivered and every
/// acknowledged put is there.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_every_node_mid_flush_loses_nothing_acknowledged_in_any_group() {
    let mut cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    // 64 keys reach every one of the 16 partitions.
    let producers = Producers::start(&all, "wal", 8, 64);
    let stop_puts = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, stop) = (all[w % all.len()].clone(), stop_puts.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("wal-{w}-{i}");
                if client.kv_put(&key, json!(i)).await.is_ok() {
                    acked.push((key, json!(i)));
                }
                i += 1;
            }
            acked
        }));
    }
    producers.wait_for_more(0, 300, FORM).await;
    // Right after an acknowledgement: the entries it covers were just reported flushed, so a
    // log that reported them before they reached the file would still hold them in memory.
    let seen = producers.acked();
    let give_up = Instant::now() + Duration::from_secs(5);
    while producers.acked() == seen && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // All three at once: no node outlives another and hands the entries on.
    for i in cluster.all() {
        cluster.signal(i, nix::sys::signal::Signal::SIGKILL);
    }
    let acked_at_kill = producers.acked();
    stop_puts.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in cluster.all() {
        cluster.kill(i);
    }
    let mut puts = Vec::new();
    for w in writers {
        puts.extend(w.await.expect("writer task"));
    }
    for i in cluster.all() {
        cluster.spawn(i, &[]);
    }
    ready(&cluster).await;
    // Sends that were cut off are retried with their request ids, so they are stored once.
    let (expected, bodies) = producers.stop().await;
    let stats = all[0].queue_stats("wal").await.expect("stats");
    let holding = stats.partitions.iter().filter(|p| p["ready"].as_u64().unwrap_or(0) > 0).count();
    assert!(holding >= 12, "the messages were in {holding} partitions only: {stats:?}");
    let consumed = drain(&all, "wal", &expected, Duration::from_secs(90)).await;
    check_at_least_once(&expected, &bodies, &consumed);
    assert!(!puts.is_empty(), "group 0 acknowledged puts before the kill");
    for (n, (key, value)) in puts.iter().enumerate() {
        let client = &all[n % all.len()];
        let got = eventually(FORM, || client.kv_get(key)).await;
        assert_eq!(got.map(|v| v.value).as_ref(), Some(value), "{key} survived SIGKILL of every node");
    }
    eprintln!(
        "{} messages acknowledged ({acked_at_kill} before the kill), {} puts; {} duplicates",
        expected.len(),
        puts.len(),
        consumed.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_carried_by_a_waiting_receive_ride_in_the_entry_of_the_send_that_takes_it() {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    let options = ReceiveOptions { max: Some(1), visibility_ms: Some(30_000), wait_ms: Some(10_000) };
    all[0].queue_send("carry", json!(-1), None).await.expect("first send");
    let mut receipt =
        all[0].queue_receive("carry", &options).await.expect("first receive")[0].receipt.clone();
    // Through every node: the partition's leader parks at its proposer, the others at their
    // forwarders. A parked receive holds its acks for 50 ms only, so the send follows as
    // soon as the receive is seen parked (and a round that misses is not an error).
    for round in 0..9 {
        let client = all[round % 3].clone();
        let waiting = {
            let (client, options, receipt) = (client.clone(), options.clone(), receipt.clone());
            tokio::spawn(async move { client.queue_receive_acking("carry", &options, &[receipt]).await })
        };
        wait_parked(&all).await;
        let sent = client.queue_send("carry", json!(round), None).await.expect("send");
        let (got, acked) = waiting.await.expect("receiver").expect("receive");
        assert_eq!((acked.acked, acked.failed.len()), (1, 0), "round {round}: the carried ack is applied");
        assert_eq!(got.len(), 1, "round {round}: the waiting receive gets the message");
        assert_eq!((got[0].id.as_str(), &got[0].body), (sent.id.as_str(), &json!(round)));
        receipt = got[0].receipt.clone();
    }
    let rode = counter_sum(&all, "sinkron_queue_acks_rode_total").await;
    eprintln!("rounds whose carried ack rode in the send's entry: {rode} of 9");
    assert!(rode >= 1.0, "no carried ack rode with its receive in the send's entry");
    all[0].queue_ack("carry", &receipt).await.expect("last ack");
    let stats = all[0].queue_stats("carry").await.expect("stats");
    assert_eq!((stats.ready, stats.in_flight), (0, 0), "every message delivered once and acked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_receive_through_a_follower_rides_with_a_send_through_another_node() {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    let queue = "apart";
    let options = ReceiveOptions { max: Some(1), visibility_ms: Some(30_000), wait_ms: Some(10_000) };
    let (_, leader, mut receipt) = one_in_flight_through_the_leader(&cluster, &all, queue, &options).await;
    // The consumer waits at a follower of the queue's partition; the producer sends through
    // the partition's leader, then through the other follower (forwarded to the leader).
    let consumer = all[(leader + 1) % 3].clone();
    let producers = [all[leader].clone(), all[(leader + 2) % 3].clone()];
    let relayed_before =
        counter_sum(std::slice::from_ref(&consumer), "sinkron_queue_receives_relayed_total").await;
    let rode_before = counter_sum(&all, "sinkron_queue_receives_rode_total").await;
    let acks_before = counter_sum(&all, "sinkron_queue_acks_rode_total").await;
    let rounds = 6;
    for round in 0..rounds {
        let waiting = {
            let (consumer, options, receipt) = (consumer.clone(), options.clone(), receipt.clone());
            tokio::spawn(async move { consumer.queue_receive_acking(queue, &options, &[receipt]).await })
        };
        wait_parked(&all).await;
        let sent = producers[round % 2].queue_send(queue, json!(round), None).await.expect("send");
        let (got, acked) = waiting.await.expect("receiver").expect("receive");
        assert_eq!((acked.acked, acked.failed.len()), (1, 0), "round {round}: the carried ack is applied");
        assert_eq!(got.len(), 1, "round {round}: the waiting receive gets the message");
        assert_eq!((got[0].id.as_str(), &got[0].body), (sent.id.as_str(), &json!(round)));
        receipt = got[0].receipt.clone();
    }
    // Parked at the leader, where every send to the queue is proposed, each receive rode in
    // its send's entry; parked at the follower, none could (the sends never pass there).
    let relayed = counter_sum(std::slice::from_ref(&consumer), "sinkron_queue_receives_relayed_total").await;
    let rode = counter_sum(&all, "sinkron_queue_receives_rode_total").await - rode_before;
    let acks = counter_sum(&all, "sinkron_queue_acks_rode_total").await - acks_before;
    eprintln!(
        "relayed {} receives; {rode} rode in their send's entry, {acks} with their ack",
        relayed - relayed_before
    );
    assert_eq!(relayed - relayed_before, rounds as f64, "every waiting receive was relayed to the leader");
    assert_eq!(rode, rounds as f64, "every relayed receive rode in the entry of the send that took it");
    // The acks wait with the receive for 50 ms only, so a slow send can miss them.
    assert!(acks >= 1.0, "no carried ack rode with its relayed receive");
    all[0].queue_ack(queue, &receipt).await.expect("last ack");
    let stats = all[0].queue_stats(queue).await.expect("stats");
    assert_eq!((stats.ready, stats.in_flight), (0, 0), "every message delivered once and acked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_receive_the_leader_cannot_take_runs_where_it_arrived() {
    // One long poll per node: the leader's is taken by a receive of another queue, so it
    // refuses the relayed one, and the follower that got it runs it itself.
    let cluster = TestCluster::start(3, &[("QUEUE_LONG_POLLS_MAX", "1")]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    let queue = "fallback";
    let options = ReceiveOptions { max: Some(1), visibility_ms: Some(30_000), wait_ms: Some(10_000) };
    let (leader_name, leader, receipt) =
        one_in_flight_through_the_leader(&cluster, &all, queue, &options).await;
    let consumer = all[(leader + 1) % 3].clone();
    // The holding receive's queue has its home partition led by the same node, so that it
    // waits there, whichever node it reaches.
    let partitions = all[0].queue_stats(queue).await.expect("stats").partitions.len() as u32;
    let mut hold = None;
    for name in (0..64).map(|i| format!("fallback-hold-{i}")) {
        let home = sinkron_core::ring::partition_of(&name, None, partitions);
        if partition_leader(&all[0], home).await == leader_name {
            hold = Some(name);
            break;
        }
    }
    let hold = hold.expect("a queue whose home partition the same node leads");
    let holder = {
        let (client, options) = (all[leader].clone(), options.clone());
        tokio::spawn(async move { client.queue_receive(&hold, &options).await })
    };
    wait_parked(std::slice::from_ref(&all[leader])).await;
    let fell_back = || async {
        let text = consumer.metrics().await.expect("metrics");
        text.lines().any(|l| {
            l.starts_with("sinkron_queue_receives_relayed_total{")
                && l.contains("ran_here")
                && l.ends_with(" 1")
        })
    };
    assert!(!fell_back().await, "nothing relayed yet");
    let waiting = {
        let (consumer, options) = (consumer.clone(), options.clone());
        tokio::spawn(async move { consumer.queue_receive_acking(queue, &options, &[receipt]).await })
    };
    wait_parked(std::slice::from_ref(&consumer)).await;
    assert!(fell_back().await, "the relay was refused and the receive ran at the follower");
    let sent = consumer.queue_send(queue, json!(0), None).await.expect("send");
    let (got, acked) = waiting.await.expect("receiver").expect("the receive ran, not refused");
    assert_eq!((acked.acked, acked.failed.len()), (1, 0), "the carried ack is applied");
    assert_eq!(got.len(), 1, "the waiting receive gets the message");
    assert_eq!(got[0].id, sent.id);
    holder.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_receive_whose_leader_dies_answers_empty_and_still_applies_its_ack() {
    let queue = "relay-lost";
    let Relaying { mut cluster, all, leader, waiting } = relayed_and_parked_at_the_leader(queue).await;
    let consumer = all[(leader + 1) % 3].clone();
    // The relayed receive waits at the leader, which dies: the call went out and no answer
    // will come. The receive may have run there, so the follower does not run it again: it
    // answers with no message at once (long before the 30 s wait), and proposes the ack
    // again under its request id, to the new leader.
    cluster.kill(leader);
    let (got, _) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("answered before the wait ran out")
        .expect("receiver")
        .expect("receive");
    assert!(got.is_empty(), "no message: its fate at the dead leader is unknown");
    let text = consumer.metrics().await.expect("metrics");
    assert!(
        text.lines().any(|l| l.starts_with("sinkron_queue_receives_relayed_total{") && l.contains("unknown")),
        "the relay is counted as unknown"
    );
    // The message was in flight for 60 s: only the ack can take it out.
    wait_counts(&consumer, queue, (0, 0), FORM, "").await;
}

/// As above, but no new leader can be elected for longer than a request timeout (3 s
/// here): the third node is frozen when the leader dies, and runs again 5 s later. The
/// carried ack waits for the new leader as long as the receive would have waited (30 s),
/// so it is still applied. (It used to be given up after one request timeout, and the
/// message then stayed in flight for its whole visibility timeout.)
#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_receive_whose_leader_dies_applies_its_ack_after_a_slow_election() {
    let queue = "relay-slow-election";
    let Relaying { mut cluster, all, leader, waiting } = relayed_and_parked_at_the_leader(queue).await;
    let (consumer, third) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.pause(third);
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.resume(third);
    let (got, acked) = tokio::time::timeout(Duration::from_secs(25), waiting)
        .await
        .expect("answered before the wait ran out")
        .expect("receiver")
        .expect("receive");
    assert!(got.is_empty(), "no message: its fate at the dead leader is unknown");
    assert!(acked.failed.is_empty(), "the carried ack was given up: {:?}", acked.failed);
    wait_counts(&all[consumer], queue, (0, 0), FORM, "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_carried_by_a_waiting_receive_are_applied_when_its_client_hangs_up() {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    let options = ReceiveOptions { max: Some(1), visibility_ms: Some(60_000), wait_ms: Some(10_000) };
    // Through every node: parked at the partition leader's proposer and at forwarders.
    for (round, client) in all.iter().enumerate() {
        let queue = format!("hang-up-{round}");
        client.queue_send(&queue, json!(round), None).await.expect("send");
        let receipt = client.queue_receive(&queue, &options).await.expect("receive")[0].receipt.clone();
        let acked_before = acked_here(client).await;
        let waiting = {
            let (client, options, queue) = (client.clone(), options.clone(), queue.clone());
            tokio::spawn(async move { client.queue_receive_acking(&queue, &options, &[receipt]).await })
        };
        // Hung up as soon as the receive is parked (here, or at the partition's leader it
        // was relayed to), while its ack waits with it (50 ms).
        wait_parked(&all).await;
        waiting.abort();
        // The message was in flight for 60 s: only the carried ack can empty the queue now.
        wait_counts(client, &queue, (0, 0), Duration::from_secs(10), &format!("round {round}: ")).await;
        // The node that proposed the ack for the receive counts it, as it counts any ack.
        eventually(Duration::from_secs(10), || async {
            let acked = acked_here(client).await - acked_before;
            if acked == 1.0 {
                Ok(())
            } else {
                Err(format!("round {round}: {acked} acks counted"))
            }
        })
        .await;
    }
}

/// The acks of a waiting receive that found nothing to ride with were proposed alone after
/// 50 ms and applied; its client hangs up later, while the receive still waits. They are
/// counted all the same by the node it called. (Before, their outcome went down with the
/// receive, uncounted; the test above then failed whenever its hang-up came after the
/// 50 ms, as it did under load.)
#[tokio::test(flavor = "multi_thread")]
async fn acks_applied_alone_are_counted_when_the_client_hangs_up_afterwards() {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let queue = "hang-up-later";
    let any = cluster.client(0);
    any.queue_send(queue, json!(0), None).await.expect("send");
    // At the home partition's leader the receive is never relayed: it waits there.
    let (_, leader) = home_leader(&cluster, &any, queue).await;
    let client = cluster.client(leader);
    let options = ReceiveOptions { max: Some(1), visibility_ms: Some(60_000), wait_ms: Some(10_000) };
    let receipt = client.queue_receive(queue, &options).await.expect("receive")[0].receipt.clone();
    let acked_before = acked_here(&client).await;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.queue_receive_acking(queue, &options, &[receipt]).await })
    };
    // The ack is applied (the message in flight for 60 s is gone) while the receive waits on.
    wait_counts(&client, queue, (0, 0), Duration::from_secs(10), "").await;
    assert!(!waiting.is_finished(), "the receive still waits: nothing was sent");
    waiting.abort();
    eventually(Duration::from_secs(10), || async {
        match acked_here(&client).await - acked_before {
            1.0 => Ok(()),
            acked => Err(format!("{acked} acks counted")),
        }
    })
    .await;
}

/// The acks counted by the node of `client` (`sinkron_queue_messages_total{op="acked"}`).
async fn acked_here(client: &Client) -> f64 {
    let text = client.metrics().await.expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("sinkron_queue_messages_total{") && l.contains("op=\"acked\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_going_with_a_receive_are_applied_when_its_client_hangs_up_during_a_failover() {
    let mut cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let queue = "failover-ack";
    let options = ReceiveOptions { max: Some(1), visibility_ms: Some(60_000), wait_ms: Some(0) };
    let partition = cluster.client(0).queue_send(queue, json!(0), None).await.expect("send").partition;
    cluster.client(0).queue_send(queue, json!(1), None).await.expect("send");
    let leader_name = partition_leader(&cluster.client(0), partition).await;
    let leader = cluster.nodes.iter().position(|n| n.name == leader_name).expect("leader index");
    let survivor = cluster.client((leader + 1) % 3);
    let receipt = survivor.queue_receive(queue, &options).await.expect("receive")[0].receipt.clone();
    cluster.kill(leader);
    // The receive finds message 1 visible and goes to its partition with the ack, where both
    // wait for a new leader; the client hangs up meanwhile (an election takes 0.3 s or more).
    let receiving = {
        let (survivor, options) = (survivor.clone(), options.clone());
        tokio::spawn(async move { survivor.queue_receive_acking(queue, &options, &[receipt]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    receiving.abort();
    // Message 0 was in flight for 60 s: only the ack can take it out; message 1 stays ready.
    wait_counts(&survivor, queue, (1, 0), FORM, "").await;
}

/// Sends a message to `queue` and receives it (with `options`, so it stays in flight)
/// through the leader of the queue's home partition: a send through another node would
/// keep that node's waiting receives there, to ride with the sends arriving there. The
/// leader's name and index, and the message's receipt.
async fn one_in_flight_through_the_leader(
    cluster: &TestCluster,
    all: &[Client],
    queue: &str,
    options: &ReceiveOptions,
) -> (String, usize, String) {
    let (name, leader) = home_leader(cluster, &all[0], queue).await;
    all[leader].queue_send(queue, json!(-1), None).await.expect("first send");
    let receipt = all[leader].queue_receive(queue, options).await.expect("first receive")[0].receipt.clone();
    (name, leader, receipt)
}

/// A cluster where one message of `queue` is in flight, and a waiting receive carrying its
/// ack, sent through the node after the home partition's leader, is relayed to that
/// leader and parked there.
struct Relaying {
    cluster: TestCluster,
    all: Vec<Client>,
    /// Index of the home partition's leader.
    leader: usize,
    /// The receive: what it got, and what became of the ack it carried.
    waiting: tokio::task::JoinHandle<Result<(Vec<Delivered>, Acked), ClientError>>,
}

async fn relayed_and_parked_at_the_leader(queue: &'static str) -> Relaying {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    let options = ReceiveOptions { max: Some(1), visibility_ms: Some(60_000), wait_ms: Some(30_000) };
    let (_, leader, receipt) = one_in_flight_through_the_leader(&cluster, &all, queue, &options).await;
    let consumer = all[(leader + 1) % 3].clone();
    let waiting =
        tokio::spawn(async move { consumer.queue_receive_acking(queue, &options, &[receipt]).await });
    wait_parked(std::slice::from_ref(&all[leader])).await;
    Relaying { cluster, all, leader, waiting }
}

/// Waits (at most `within`) until `queue` counts `want` messages (ready, in flight),
/// failing with `what` in front of the counts it last saw.
async fn wait_counts(client: &Client, queue: &str, want: (usize, usize), within: Duration, what: &str) {
    eventually(within, || async {
        let stats = client.queue_stats(queue).await.map_err(|e| e.to_string())?;
        match (stats.ready, stats.in_flight) {
            seen if seen == want => Ok(()),
            other => Err(format!("{what}(ready, in flight) {other:?}")),
        }
    })
    .await;
}

/// The leader of `queue`'s home partition (the one of sends without a key): its name and
/// its index in `cluster`.
async fn home_leader(cluster: &TestCluster, client: &Client, queue: &str) -> (String, usize) {
    let partitions = client.queue_stats(queue).await.expect("stats").partitions.len() as u32;
    let home = sinkron_core::ring::partition_of(queue, None, partitions);
    let name = partition_leader(client, home).await;
    let index = cluster.nodes.iter().position(|n| n.name == name).expect("leader index");
    (name, index)
}

/// Returns as soon as one of the nodes of `clients` shows a parked receive (looking every
/// millisecond: a parked receive holds the acks it carries for 50 ms only).
async fn wait_parked(clients: &[Client]) {
    let until = Instant::now() + FORM;
    while counter_sum(clients, "sinkron_queue_receives_parked").await < 1.0 {
        assert!(Instant::now() < until, "the receive never parked");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The sum of counter `name` over the `/metrics` of `clients`.
async fn counter_sum(clients: &[Client], name: &str) -> f64 {
    let mut total = 0.0;
    for client in clients {
        let text = client.metrics().await.expect("metrics");
        total += text
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum::<f64>();
    }
    total
}

/// Each partition's leader, as the queue's stats name them.
async fn leaders(client: &Client, queue: &str) -> Vec<serde_json::Value> {
    let stats = client.queue_stats(queue).await.expect("stats");
    stats.partitions.iter().map(|p| p["leader"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn receivers_racing_for_few_messages_spend_no_entry_in_vain() {
    const MESSAGES: usize = 60;
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    // Stable leaders: a new leader starts without the claims of its predecessor's proposals.
    let before = eventually(FORM, || async {
        let seen = leaders(&all[0], "race").await;
        match seen.iter().all(|l| l.is_string()) {
            true => Ok(seen),
            false => Err(format!("a partition has no leader: {seen:?}")),
        }
    })
    .await;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut receivers = Vec::new();
    for r in 0..30 {
        let (client, acked) = (all[r % 3].clone(), acked.clone());
        receivers.push(tokio::spawn(async move {
            let options = ReceiveOptions { max: Some(1), visibility_ms: Some(30_000), wait_ms: Some(500) };
            let mut got = Vec::new();
            while acked.load(std::sync::atomic::Ordering::SeqCst) < MESSAGES && Instant::now() < give_up {
                for delivery in client.queue_receive("race", &options).await.unwrap_or_default() {
                    client.queue_ack("race", &delivery.receipt).await.expect("ack");
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    got.push(delivery.id);
                }
            }
            got
        }));
    }
    // Few messages visible at a time, each seen by 30 receivers on three nodes.
    let mut expected = BTreeSet::new();
    for i in 0..MESSAGES {
        let key = format!("k{}", i % 4);
        let sent = send_until_acked(&all, "race", json!(i), Some(&key), &format!("race-{i}"), give_up)
            .await
            .expect("send acknowledged");
        expected.insert(sent);
    }
    let mut received = BTreeSet::new();
    for receiver in receivers {
        for id in receiver.await.expect("receiver") {
            assert!(received.insert(id.clone()), "{id} delivered twice within its visibility timeout");
        }
    }
    assert_eq!(received, expected, "every message delivered once");
    let gated = counter_sum(&all, "sinkron_queue_receives_gated_total").await;
    let wasted = counter_sum(&all, "sinkron_queue_receives_wasted_total").await;
    eprintln!("receives answered without an entry: {gated}; proposed in vain: {wasted}");
    if leaders(&all[0], "race").await == before {
        assert_eq!(wasted, 0.0, "a receive took an entry and found nothing");
    } else {
        eprintln!("a partition changed leader during the run: waste is possible, not checked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receive_carries_the_acks_of_earlier_deliveries() {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let (a, b) = (cluster.client(0), cluster.client(2));
    for i in 0..3 {
        a.queue_send("jobs", json!(i), None).await.expect("send");
    }
    let two = ReceiveOptions { max: Some(2), visibility_ms: Some(30_000), wait_ms: Some(2_000) };
    let first = a.queue_receive("jobs", &two).await.expect("receive");
    assert_eq!(first.iter().map(|d| d.body.clone()).collect::<Vec<_>>(), vec![json!(0), json!(1)]);
    // Through another node: two live receipts and one of a delivery that never was.
    let mut receipts: Vec<String> = first.iter().map(|d| d.receipt.clone()).collect();
    let partition = first[0].id.split('-').next().expect("partition");
    receipts.push(format!("{partition}-77.1"));
    let (next, acked) = b.queue_receive_acking("jobs", &two, &receipts).await.expect("receive with acks");
    assert_eq!(next.iter().map(|d| d.body.clone()).collect::<Vec<_>>(), vec![json!(2)]);
    assert_eq!(acked.acked, 2, "{acked:?}");
    assert_eq!(acked.failed.len(), 1, "{acked:?}");
    assert_eq!(
        (acked.failed[0].receipt.as_str(), acked.failed[0].error.as_str()),
        (receipts[2].as_str(), "not_found")
    );
    let stats = a.queue_stats("jobs").await.expect("stats");
    assert_eq!((stats.ready, stats.in_flight), (0, 1), "the acked two are gone, the third is in flight");
    // A stale receipt (acked already) fails again; the receive still answers.
    let (none, again) = a
        .queue_receive_acking("jobs", &ReceiveOptions::default(), &receipts[..1])
        .await
        .expect("receive with a stale ack");
    assert!(none.is_empty());
    assert_eq!((again.acked, again.failed[0].error.as_str()), (0, "not_found"));
    // No acks asked, none reported.
    let (_, nothing) =
        a.queue_receive_acking("jobs", &ReceiveOptions::default(), &[]).await.expect("receive");
    assert_eq!((nothing.acked, nothing.failed.len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_receive_is_handed_its_message_by_the_entry_that_stores_it() {
    let cluster = TestCluster::start(3, &[]);
    ready(&cluster).await;
    let all = clients(&cluster, &cluster.all());
    let options = ReceiveOptions { max: Some(1), visibility_ms: Some(30_000), wait_ms: Some(10_000) };
    // Through every node, so through the partition's leader (its proposer) and through
    // followers (their forwarders, whose batch the leader keeps in one entry); first sends
    // without a key (one partition), then with a key each (the receive waits at every
    // partition's batcher, and the send's partition takes it).
    let partitions = all[0].queue_stats("ride").await.expect("stats").partitions.len() as u32;
    let home = sinkron_core::ring::partition_of("ride", None, partitions);
    // Keys whose partitions are not the one of sends without a key.
    let mut keys = (0..).map(|i| format!("key-{i}"));
    let mut away = || keys.find(|k| sinkron_core::ring::partition_of("ride", Some(k), partitions) != home);
    let mut rode_before = 0.0;
    for (keyed, rounds) in [(false, 0..6), (true, 6..12)] {
        for round in rounds {
            let client = all[round % 3].clone();
            let waiting = {
                let (client, options) = (client.clone(), options.clone());
                tokio::spawn(async move { client.queue_receive("ride", &options).await })
            };
            // Parked here, or at the leader of the queue's home partition (a receive through a
            // follower is relayed there while the queue has no keyed messages).
            wait_parked(&all).await;
            let key = if keyed { away() } else { None };
            let sent = client.queue_send("ride", json!(round), key.as_deref()).await.expect("send");
            let got = waiting.await.expect("receiver").expect("receive");
            assert_eq!(got.len(), 1, "round {round}: the waiting receive gets the message");
            assert_eq!((got[0].id.as_str(), &got[0].body), (sent.id.as_str(), &json!(round)));
            client.queue_ack("ride", &got[0].receipt).await.expect("ack");
        }
        // A receive re-parks every 200 ms; a send landing in that gap is delivered the usual
        // way (by the next receive's entry), so not every round must ride.
        let rode = counter_sum(&all, "sinkron_queue_receives_rode_total").await;
        eprintln!(
            "rounds whose receive rode in its send's batch (keyed: {keyed}): {} of 6",
            rode - rode_before
        );
        assert!(rode - rode_before >= 1.0, "no waiting receive rode in its send's entry (keyed: {keyed})");
        rode_before = rode;
    }
    let stats = all[0].queue_stats("ride").await.expect("stats");
    assert_eq!((stats.ready, stats.in_flight), (0, 0), "every message delivered once and acked");
}
