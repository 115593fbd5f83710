"""Failover and retries: a node killed under a running client, a 503 retried with the same
request id, and nothing reachable at all."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import sinkron
from cluster import Cluster, free_ports


@pytest.fixture
def own_cluster():
    c = Cluster(3).start()
    yield c
    c.stop()


def test_a_killed_node_under_a_running_client(own_cluster):
    """A writer and a queue producer run through a client of all three nodes; the node
    they use is killed. They carry on through the others, and every acknowledged write and
    message is there afterwards."""
    client = sinkron.Client(own_cluster.endpoints, timeout=20.0)
    acked_puts = []
    acked_sends = []
    errors = []
    stop = threading.Event()
    q = client.queue("py-failover")

    def run() -> None:
        i = 0
        while not stop.is_set():
            try:
                acked_puts.append((f"failover/{i}", client.kv.put(f"failover/{i}", i)))
                acked_sends.append(q.send(i, key=f"k{i % 5}"))
            except sinkron.SinkronError as e:
                errors.append(e)
            i += 1

    t = threading.Thread(target=run)
    t.start()
    while len(acked_puts) < 20:
        time.sleep(0.01)
    victim = own_cluster.endpoints.index(client.endpoint)
    own_cluster.kill(victim)
    before = len(acked_puts)
    deadline = time.monotonic() + 30
    while len(acked_puts) < before + 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(timeout=30)
    assert not errors, errors
    assert len(acked_puts) >= before + 30, "the client did not carry on after the kill"
    assert client.endpoint != own_cluster.endpoints[victim]

    survivor = sinkron.Client([e for i, e in enumerate(own_cluster.endpoints) if i != victim])
    for key, version in acked_puts:
        item = survivor.kv.get_versioned(key)
        assert item is not None and item.version == version
    received = set()
    queue = survivor.queue("py-failover")
    while True:
        messages = queue.receive(max=100, wait_ms=300)
        if not messages:
            break
        received.update(m.id for m in messages)
        queue.ack_many(messages)
    assert set(acked_sends) <= received


class FlakyNode(BaseHTTPRequestHandler):
    """Answers the first two writes with 503 and Retry-After: 1, then 200."""

    bodies = []

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        FlakyNode.bodies.append((time.monotonic(), body))
        if len(FlakyNode.bodies) <= 2:
            self._answer(503, {"error": "no_quorum", "message": "try again"}, {"retry-after": "1"})
        else:
            self._answer(200, {"key": "k", "version": 7})

    def _answer(self, status, body, headers=None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_a_503_is_retried_after_retry_after_with_the_same_request_id():
    """The first endpoint refuses connections, the second answers 503 twice: the put
    goes through on the third attempt, one request id throughout, Retry-After honoured."""
    refused, port = free_ports(2)
    server = ThreadingHTTPServer(("127.0.0.1", port), FlakyNode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FlakyNode.bodies = []
    try:
        client = sinkron.Client([f"127.0.0.1:{refused}", f"127.0.0.1:{port}"], timeout=10.0)
        assert client.kv.put("k", "v") == 7
        (t1, b1), (t2, b2), (t3, b3) = FlakyNode.bodies
        assert b1 == b2 == b3 and b1["request_id"].startswith("py-")
        assert t2 - t1 >= 0.9 and t3 - t2 >= 0.9
    finally:
        server.shutdown()
        server.server_close()


def test_the_last_503_is_raised_once_the_timeout_is_spent():
    _, port = free_ports(2)
    server = ThreadingHTTPServer(("127.0.0.1", port), FlakyNode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FlakyNode.bodies = []
    try:
        client = sinkron.Client(f"127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(sinkron.NoQuorum) as err:
            client.kv.put("k", "v")
        assert err.value.status == 503 and isinstance(err.value, sinkron.Unavailable)
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_reachable_is_unreachable():
    a, b = free_ports(2)
    client = sinkron.Client([f"127.0.0.1:{a}", f"127.0.0.1:{b}"], timeout=1.0)
    started = time.monotonic()
    with pytest.raises(sinkron.Unreachable) as err:
        client.kv.get("k")
    assert err.value.status is None and isinstance(err.value, sinkron.Unavailable)
    assert time.monotonic() - started < 3


def test_endpoints_are_checked():
    with pytest.raises(ValueError):
        sinkron.Client([])
    with pytest.raises(ValueError):
        sinkron.Client(["ftp://x:1"])
    assert sinkron.Client("h:1").endpoint == "http://h:1"
    assert sinkron.Client("https://h:1/").endpoint == "https://h:1"
