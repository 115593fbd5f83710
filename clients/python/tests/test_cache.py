"""The MESI cache through the Python client: coherent reads across nodes."""

from __future__ import annotations

import uuid

import pytest

import sinkron
from conftest import node_client


def test_a_write_on_one_node_is_read_on_every_other(cluster):
    clients = [node_client(cluster, i) for i in range(3)]
    k = "py-cache/" + uuid.uuid4().hex[:8]
    assert clients[0].cache.get(k) is None
    written = clients[0].cache.put(k, {"colour": "blue"})
    assert written.state == "M"
    for c in clients[1:]:
        assert c.cache.get(k) == {"colour": "blue"}
    lines = clients[2].cache.lines(k)
    assert set(lines) == {"node1", "node2", "node3"}
    assert set(lines.values()) <= {"S", "I"} and list(lines.values()).count("S") >= 2
    # Writes from the others in turn: each read sees the last.
    for i, c in enumerate(clients):
        c.cache.put(k, i)
        assert all(other.cache.get(k) == i for other in clients)
    assert clients[1].cache.put(k, "stored", durable=True).state == "E"
    clients[2].cache.delete(k)
    assert all(c.cache.get(k) is None for c in clients)
    stats = clients[0].cache.stats()
    assert stats["hits"] + stats["misses"] > 0


def test_cache_errors(client):
    with pytest.raises(sinkron.PayloadTooLarge):
        client.cache.get("k" * 300)
    with pytest.raises(sinkron.PayloadTooLarge):
        client.cache.put("big", "v" * 70_000)
