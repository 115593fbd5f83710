"""Key-value store: versions, compare-and-set, blocking reads and watches, on a real cluster."""

from __future__ import annotations

import threading
import uuid

import pytest

import sinkron
from conftest import node_client


def key(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


def test_put_get_delete_through_different_nodes(cluster):
    a, b = node_client(cluster, 0), node_client(cluster, 1)
    k = key("py kv/ü")  # a slash, a space and a non-ASCII letter travel percent-encoded
    v1 = a.kv.put(k, {"n": 1})
    assert b.kv.get(k) == {"n": 1}
    v2 = b.kv.put(k, [1, "two", None])
    assert v2 > v1
    item = a.kv.get_versioned(k)
    assert item == sinkron.Versioned([1, "two", None], v2)
    assert a.kv.delete(k) is True
    assert b.kv.get(k) is None
    assert b.kv.delete(k) is False


def test_compare_and_set_has_one_winner(client):
    k = key("cas")
    v = client.kv.put(k, "first", if_version=0)
    with pytest.raises(sinkron.VersionMismatch) as err:
        client.kv.put(k, "again", if_version=0)
    assert err.value.status == 409 and err.value.code == "version_mismatch"
    assert err.value.current_version == v
    assert client.kv.put(k, "second", if_version=v) > v
    with pytest.raises(sinkron.VersionMismatch):
        client.kv.delete(k, if_version=v)
    assert client.kv.get(k) == "second"


def test_compare_and_set_race_from_threads(cluster):
    """Threads on three nodes increment one counter with CAS: no increment is lost."""
    k = key("counter")
    clients = [node_client(cluster, i) for i in range(3)]
    clients[0].kv.put(k, 0)
    per_thread = 8

    def work(c: sinkron.Client) -> None:
        done = 0
        while done < per_thread:
            item = c.kv.get_versioned(k)
            try:
                c.kv.put(k, item.value + 1, if_version=item.version)
                done += 1
            except sinkron.VersionMismatch:
                continue

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert clients[1].kv.get(k) == 3 * per_thread


def test_retry_with_the_same_request_id_applies_once(client):
    k = key("rid")
    rid = "py-test-" + uuid.uuid4().hex
    first = client.kv.put(k, "x", request_id=rid)
    assert client.kv.put(k, "x", request_id=rid) == first
    with pytest.raises(sinkron.Conflict) as err:
        client.kv.put(k, "different", request_id=rid)
    assert err.value.code == "conflict"


def test_blocking_read_wakes_on_a_write_through_another_node(cluster):
    a, b = node_client(cluster, 0), node_client(cluster, 2)
    k = key("wait")
    v = a.kv.put(k, "old")
    result = {}

    def wait() -> None:
        result["item"] = a.kv.get_versioned(k, wait_version=v, wait_ms=20_000)

    t = threading.Thread(target=wait)
    t.start()
    v2 = b.kv.put(k, "new")
    t.join(timeout=30)
    assert result["item"] == sinkron.Versioned("new", v2)
    # A timeout answers the current value.
    assert a.kv.get_versioned(k, wait_version=v2, wait_ms=200) == sinkron.Versioned("new", v2)


def test_watch_sees_changes_in_order_and_resumes(cluster):
    a, b = node_client(cluster, 0), node_client(cluster, 1)
    prefix = key("watch") + "/"
    start = a.kv.put(prefix + "a", 0)
    versions = [b.kv.put(prefix + "a", i) for i in range(1, 4)]
    versions.append(0)
    b.kv.delete(prefix + "a")
    seen = []
    with a.kv.watch(prefix, from_version=start) as w:
        for event in w:
            seen.append(event)
            if event.type == "delete":
                break
    assert [e.value for e in seen[:3]] == [1, 2, 3]
    assert [e.version for e in seen[:3]] == versions[:3]
    assert seen[-1].type == "delete" and seen[-1].key == prefix + "a"
    # Resuming after the last version seen, at another node, misses nothing.
    b.kv.put(prefix + "b", "later")
    with b.kv.watch(prefix, from_version=seen[-1].version) as w:
        event = next(iter(w))
    assert (event.key, event.type, event.value) == (prefix + "b", "put", "later")


def test_watch_of_compacted_history_raises(client):
    """The shared cluster keeps 100 changes: after 120 more, the first is gone."""
    k = key("compact")
    first = client.kv.put(k, -1)
    for i in range(120):
        client.kv.put(k, i)
    with pytest.raises(sinkron.Compacted) as err:
        next(iter(client.kv.watch(k, from_version=first)))
    assert err.value.status == 410 and err.value.oldest_version > first
    # Where the error says to resume, the watch starts.
    with client.kv.watch(k, from_version=err.value.oldest_version) as w:
        assert next(iter(w)).version > err.value.oldest_version
