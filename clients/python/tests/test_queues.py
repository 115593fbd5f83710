"""Queues: round trips through every node with nothing lost, order per key, nack and DLQ."""

from __future__ import annotations

import threading
import uuid

import pytest

import sinkron
from conftest import node_client


def qname(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_round_trip_over_partitions_loses_nothing(cluster):
    """Sends from three nodes (singles and batches, 12 keys), consumers on three nodes
    ack everything: each message is received, none is left."""
    q = qname("py-orders")
    senders = [node_client(cluster, i).queue(q) for i in range(3)]
    sent = set()
    for i in range(60):
        body = {"n": i}
        senders[i % 3].send(body, key=f"k{i % 12}")
        sent.add(i)
    batch = [sinkron.Outgoing({"n": i}, key=f"k{i % 12}") for i in range(60, 120)]
    results = senders[1].send_batch(batch)
    assert all(r.error is None and r.id for r in results), results
    sent.update(range(60, 120))

    got = []
    guard = threading.Lock()

    def consume(i: int) -> None:
        queue = node_client(cluster, i).queue(q)
        while True:
            messages = queue.receive(max=10, wait_ms=500)
            if not messages:
                return
            assert queue.ack_many(messages) == []
            with guard:
                got.extend(m.body["n"] for m in messages)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == sorted(sent)
    stats = senders[0].stats()
    assert (stats["ready"], stats["in_flight"]) == (0, 0)
    listed = node_client(cluster, 2).queues()
    assert q not in [x["queue"] for x in listed["queues"]]  # an empty queue is not listed


def test_queue_list_counts_every_partition(cluster):
    q = qname("py-listed")
    c = node_client(cluster, 1)
    for i in range(9):
        c.queue(q).send(i, key=f"k{i}")
    c.queue(q).receive(max=3, visibility_ms=60_000)
    (entry,) = [x for x in c.queues()["queues"] if x["queue"] == q]
    assert (entry["ready"], entry["in_flight"], entry["dead_letters"]) == (6, 3, 0)
    assert sum(p["ready"] + p["in_flight"] for p in entry["partitions"]) == 9
    nodes = c.cluster_nodes()["nodes"]
    assert [n["id"] for n in nodes] == ["node1", "node2", "node3"]
    assert all(n["cluster"]["node_id"] == n["id"] for n in nodes)


def test_one_key_keeps_its_order_and_consume_yields_one_by_one(client):
    q = client.queue(qname("py-fifo"))
    ids = [q.send(i) for i in range(10)]  # no key: the whole queue is one partition
    assert len(set(ids)) == 10
    seen = []
    for message in q.consume(max=3, wait_ms=1_000):
        seen.append(message.body)
        message.ack()
        if len(seen) == 10:
            break
    assert seen == list(range(10))


def test_nack_redelivers_and_dead_letters(client):
    q = client.queue(qname("py-dlq"))
    q.send({"poison": True})
    for delivery in range(1, 5):
        (message,) = q.receive(wait_ms=2_000)
        assert message.receive_count == delivery
        assert message.nack() is False
    (message,) = q.receive(wait_ms=2_000)
    assert message.receive_count == 5
    assert message.nack() is True  # delivered QUEUE_MAX_RECEIVES times: dead-lettered
    (dead_letter,) = client.queue(q.name + ".dlq").receive(wait_ms=2_000)
    assert dead_letter.body == {"poison": True}
    dead_letter.ack()


def test_a_stale_receipt_is_not_found(client):
    q = client.queue(qname("py-stale"))
    q.send("once")
    (message,) = q.receive(wait_ms=2_000)
    message.ack()
    with pytest.raises(sinkron.NotFound):
        message.ack()
    failed = q.ack_many([message])
    assert [e.code for e in failed] == ["not_found"]


def test_a_receive_carries_the_acks_of_earlier_deliveries(client):
    q = client.queue(qname("py-acking"))
    for i in range(3):
        q.send(i)
    first = q.receive(max=2, wait_ms=2_000)
    assert [m.body for m in first] == [0, 1]
    rest, failed = q.receive_acking(first, max=2, wait_ms=2_000)
    assert [m.body for m in rest] == [2] and failed == []
    stats = q.stats()
    assert (stats["ready"], stats["in_flight"]) == (0, 1)
    none, failed = q.receive_acking([first[0].receipt, rest[0]])
    assert none == [] and [e.code for e in failed] == ["not_found"]
    assert q.stats()["in_flight"] == 0


def test_fenced_send_refuses_a_stale_fence(client):
    q = client.queue(qname("py-fenced"))
    lock = qname("py-producer")
    with client.lock(lock, ttl_ms=10_000) as lk:
        q.send("fenced", fence=lk)
        stale = lk.as_fence()
    with pytest.raises(sinkron.StaleFence):
        q.send("too late", fence=stale)


def test_bad_input_is_an_invalid_argument(client):
    with pytest.raises(sinkron.InvalidArgument):
        client.queue("no/slashes").send(1)
    with pytest.raises(sinkron.InvalidArgument) as err:
        client.queue(qname("py-bad")).receive(max=0)
    assert "max" in err.value.message
    with pytest.raises(sinkron.PayloadTooLarge):
        client.queue(qname("py-big")).send("x" * 300_000)
