"""The synchronous client: :class:`Client` and the objects it hands out.

One ``Client`` may be shared by threads. A held :class:`Lock` refreshes its lease from a
daemon thread of its own.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import httpx

from . import _core
from ._core import CacheWrite, Call, Failover, Fence, Grant, SendResult, T, Versioned, WatchEvent
from ._errors import NotFound, NotOwner, SinkronError


class Client:
    """A client of a Sinkron cluster.

    ``endpoints`` are ``host:port`` strings or URLs of any nodes of the cluster. A call
    goes to the endpoint in use; when a node cannot be reached, or answers ``503``, the
    call moves on to the next endpoint and tries again (after ``Retry-After``, at most
    2 s) until ``timeout`` seconds have passed. A retried write is the same request, with
    the same request id, so it applies once.
    """

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]],
        token: Optional[str] = None,
        cacert: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        self._failover = Failover(_core.base_urls(endpoints, cacert is not None), timeout)
        self._http = httpx.Client(**_core.http_options(token, cacert))
        self._lock = threading.Lock()
        self.kv = KV(self)
        self.cache = Cache(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    @property
    def endpoint(self) -> str:
        """The base URL calls go to now."""
        return self._failover.bases[self._failover.current % len(self._failover.bases)]

    def call(self, call: Call[T]) -> T:
        """Sends one call with failover and retries, and returns its value."""
        response = self._send(call, stream=False)
        return call.finish(response.status_code, response.content)

    def _send(self, call: Call[Any], stream: bool) -> httpx.Response:
        deadline, start = self._failover.begin()
        index = start
        while True:
            url = self._failover.url(index, call.path)
            request = self._http.build_request(
                call.method,
                url,
                params=call.params,
                json=call.body if call.has_body() else None,
                timeout=self._failover.timeout(deadline, call),
            )
            try:
                response = self._http.send(request, stream=stream)
            except httpx.HTTPError as error:
                with self._lock:
                    pause = self._failover.after_error(error, call, index, start, deadline)
                if pause is None:
                    raise _core.failure(error, url) from error
            else:
                with self._lock:
                    pause = self._failover.after_answer(
                        response.status_code, response.headers.get("retry-after"), index, start, deadline
                    )
                if pause is None:
                    return response
                response.close()
            time.sleep(pause)
            index = self._failover.current % len(self._failover.bases)

    # ---- Cluster and administration -----------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """``GET /health`` of the endpoint in use."""
        return self.call(_core.get_json("/health"))

    def ready(self) -> Dict[str, Any]:
        """``GET /ready``: raises :class:`~sinkron.Unavailable` while not ready."""
        return self.call(_core.get_json("/ready"))

    def cluster(self) -> Dict[str, Any]:
        """``GET /v1/cluster``: group 0 as the node in use sees it."""
        return self.call(_core.get_json("/v1/cluster"))

    def cluster_nodes(self) -> Dict[str, Any]:
        """``GET /v1/cluster/nodes``: every member's own status, readiness and cache counters."""
        return self.call(_core.get_json("/v1/cluster/nodes"))

    def queues(self) -> Dict[str, Any]:
        """``GET /v1/queues``: every queue that holds messages, with its counts."""
        return self.call(_core.get_json("/v1/queues"))

    def ring(self) -> Dict[str, Any]:
        """``GET /v1/ring``: the queue partitions, their replicas and leaders."""
        return self.call(_core.get_json("/v1/ring"))

    def metrics(self) -> str:
        """``GET /metrics`` in Prometheus text format."""
        return self.call(_core.metrics())

    def locks(self) -> Dict[str, Any]:
        """Every held or awaited lock and the last fence handed out."""
        return self.call(_core.get_json("/v1/locks"))

    def lock_status(self, name: str) -> Dict[str, Any]:
        """The holders and waiters of one lock."""
        return self.call(_core.get_json(f"/v1/locks/{_core.segment(name)}"))

    def wait_for_graph(self) -> Dict[str, Any]:
        """The live wait-for graph and the last deadlocks refused."""
        return self.call(_core.get_json("/v1/locks/wait-for-graph"))

    def release(self, name: str, client_id: str) -> List[str]:
        """Releases ``client_id``'s hold of a lock (a held :class:`Lock` does this itself)."""
        return self.call(_core.release(name, client_id))

    def refresh(self, name: str, client_id: str, ttl_ms: Optional[int] = None) -> int:
        """Extends ``client_id``'s lease of a lock; returns its new end (ms since the epoch)."""
        return self.call(_core.refresh(name, client_id, ttl_ms))

    def force_release(self, name: str) -> List[str]:
        """Drops every hold of a lock (administrative); returns the former holders."""
        return self.call(_core.force_release(name))

    # ---- Locks and queues ---------------------------------------------------------------

    def lock(
        self,
        name: str,
        *,
        mode: str = "exclusive",
        ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        client_id: Optional[str] = None,
    ) -> "Lock":
        """A lock object (not acquired yet): use ``with client.lock(...) as lk:`` or
        ``lk.acquire()`` and ``lk.release()``."""
        return Lock(self, name, mode, ttl_ms, wait_ms, client_id or _core.new_client_id())

    def queue(self, name: str) -> "Queue":
        """The queue ``name`` (queues need no declaration)."""
        return Queue(self, name)


class KV:
    """The replicated key-value store of group 0."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def put(
        self,
        key: str,
        value: Any,
        *,
        if_version: Optional[int] = None,
        fence: Any = None,
        request_id: Optional[str] = None,
    ) -> int:
        """Writes ``value``; returns its version. ``if_version`` makes it a
        compare-and-set (``0``: the key must not exist), ``fence`` a fenced write."""
        return self._c.call(_core.kv_put(key, value, if_version, fence, request_id))

    def get(self, key: str, *, consistency: str = "linearizable") -> Any:
        """The value, or ``None`` when the key does not exist."""
        item = self.get_versioned(key, consistency=consistency)
        return None if item is None else item.value

    def get_versioned(
        self,
        key: str,
        *,
        consistency: str = "linearizable",
        wait_version: Optional[int] = None,
        wait_ms: Optional[int] = None,
    ) -> Optional[Versioned]:
        """The value and its version, or ``None``. With ``wait_version``, a blocking read:
        it answers once the key's version is above it (or after ``wait_ms``)."""
        return self._c.call(_core.kv_get(key, consistency, wait_version, wait_ms))

    def delete(
        self,
        key: str,
        *,
        if_version: Optional[int] = None,
        fence: Any = None,
        request_id: Optional[str] = None,
    ) -> bool:
        """Deletes the key; returns whether it existed."""
        return self._c.call(_core.kv_delete(key, if_version, fence, request_id))

    def watch(self, prefix: str = "", *, from_version: Optional[int] = None) -> "Watch":
        """Every change of keys starting with ``prefix``, in version order, as an
        iterator that reconnects by itself (to any node) after the last version seen."""
        return Watch(self._c, prefix, from_version)


class Watch:
    """An endless iterator of :class:`~sinkron.WatchEvent`; ``close()`` ends it."""

    def __init__(self, client: Client, prefix: str, from_version: Optional[int]) -> None:
        self._c = client
        self._prefix = prefix
        self.last_version = from_version
        self._response: Optional[httpx.Response] = None
        self._closed = False

    def __iter__(self) -> Iterator[WatchEvent]:
        while not self._closed:
            try:
                for event in self._events():
                    yield event
            except httpx.TransportError:
                pass  # The node went away: resume elsewhere after the last version.
            finally:
                self._drop()

    def _events(self) -> Iterator[WatchEvent]:
        call = Call("GET", "/v1/watch", lambda b: b, params=_core.watch_params(self._prefix, self.last_version))
        # Heartbeats come every 15 s: a stream silent for longer is dead.
        call.wait_s = 45.0
        response = self._c._send(call, stream=True)
        self._response = response
        if response.status_code != 200:
            response.read()
            call.finish(response.status_code, response.content)
        stream = _core.EventStream()
        for chunk in response.iter_text():
            for event in stream.feed(chunk):
                self.last_version = event.version
                yield event

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self) -> None:
        """Ends the iteration and the stream."""
        self._closed = True
        self._drop()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Cache:
    """The MESI-coherent cache: reads are answered from the node's memory when it can."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def get(self, key: str) -> Any:
        """The latest value, or ``None`` when the key has none."""
        found = self._c.call(_core.cache_get(key))
        return None if found is None else found[0]

    def put(self, key: str, value: Any, durable: bool = False, *, fence: Any = None) -> CacheWrite:
        """Writes ``value``. ``durable`` stores it through the log before answering."""
        return self._c.call(_core.cache_put(key, value, durable, fence))

    def delete(self, key: str) -> None:
        """Removes the value from the store and every node's line."""
        self._c.call(_core.cache_delete(key))

    def lines(self, key: str) -> Dict[str, str]:
        """Every member's MESI state of ``key``, by node name."""
        return self._c.call(_core.cache_lines(key))

    def stats(self) -> Dict[str, Any]:
        """The node's cache counters (hits, misses, lines per state)."""
        return self._c.call(_core.get_json("/v1/cache"))


class Lock:
    """A lock of the cluster, held or not.

    While held, a daemon thread refreshes the lease three times per lease length;
    :attr:`lost` turns true once a refresh finds the hold gone (expired or
    force-released) or the lease ran out while no node answered. A worker should then
    stop: its :attr:`fence` is stale.
    """

    def __init__(
        self, client: Client, name: str, mode: str, ttl_ms: Optional[int], wait_ms: int, client_id: str
    ) -> None:
        self._c = client
        self.name = name
        self.mode = mode
        self.ttl_ms = ttl_ms
        self.wait_ms = wait_ms
        self.client_id = client_id
        self.grant: Optional[Grant] = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def fence(self) -> int:
        """The fencing token of the current grant."""
        if self.grant is None:
            raise RuntimeError(f"lock {self.name!r} is not held")
        return self.grant.fence

    @property
    def held(self) -> bool:
        """Acquired, not released, and not lost."""
        return self.grant is not None and not self._lost.is_set()

    @property
    def lost(self) -> bool:
        """Whether the lease could not be kept while the lock was held."""
        return self._lost.is_set()

    def as_fence(self) -> Fence:
        """This grant as the ``fence`` of a fenced write."""
        return Fence(self.name, self.fence)

    def acquire(self) -> "Lock":
        """Acquires the lock (waiting up to ``wait_ms``) and starts refreshing it.

        Raises :class:`~sinkron.LockConflict`, :class:`~sinkron.WaitTimeout` or
        :class:`~sinkron.Deadlock` when it is not granted."""
        started = time.monotonic()
        grant = self._c.call(_core.acquire(self.name, self.client_id, self.mode, self.ttl_ms, self.wait_ms))
        self.grant = grant
        self._lost.clear()
        self._stop.clear()
        lease_ms = self.ttl_ms or max(grant.expires_at_ms - _core.now_ms(), 1)
        # Counted from before the request: the node's lease cannot end earlier than that.
        deadline = started + lease_ms / 1000
        self._thread = threading.Thread(target=self._keep, args=(lease_ms, deadline), daemon=True)
        self._thread.start()
        return self

    def _keep(self, lease_ms: int, deadline: float) -> None:
        every = _core.lock_refresh_interval_s(lease_ms)
        while not self._stop.wait(every):
            sent = time.monotonic()
            try:
                self._c.call(_core.refresh(self.name, self.client_id, self.ttl_ms))
                deadline = sent + lease_ms / 1000
            except SinkronError as error:
                if _core.lease_lost(error, deadline):
                    self._lost.set()
                    return

    def release(self) -> None:
        """Stops refreshing and releases the lock. A lock already lost is not released
        again (someone else may hold it now)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        if self.grant is None or self._lost.is_set():
            self.grant = None
            return
        self.grant = None
        try:
            self._c.call(_core.release(self.name, self.client_id))
        except (NotFound, NotOwner):
            pass  # The lease ended meanwhile: nothing to release.

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Message:
    """A delivered message; ack it before its visibility timeout, or it comes back."""

    def __init__(self, queue: "Queue", raw: Dict[str, Any]) -> None:
        self.queue = queue
        self.id: str = raw["id"]
        self.body: Any = raw["body"]
        self.receipt: str = raw["receipt"]
        self.receive_count: int = int(raw["receive_count"])

    def ack(self) -> None:
        """Deletes the message. Raises :class:`~sinkron.NotFound` when the delivery is
        no longer in flight (it timed out and may be delivered again)."""
        self.queue.ack(self.receipt)

    def nack(self, delay_ms: int = 0) -> bool:
        """Returns the message to the front of its queue; ``True`` if it went to the
        dead-letter queue instead."""
        return self.queue.nack(self.receipt, delay_ms)

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, receive_count={self.receive_count}, body={self.body!r})"


class Queue:
    """A queue, partitioned over the cluster by the hash of each message's key."""

    def __init__(self, client: Client, name: str) -> None:
        self._c = client
        self.name = name

    def send(self, body: Any, key: Optional[str] = None, *, fence: Any = None, request_id: Optional[str] = None) -> str:
        """Stores one message; returns its id. Messages of one ``key`` keep their order."""
        return self._c.call(_core.queue_send(self.name, body, key, fence, request_id))

    def send_batch(self, messages: Sequence[Any], key: Optional[str] = None) -> List[SendResult]:
        """Stores 1 to 100 messages (bodies, or :class:`~sinkron.Outgoing` for a key of
        their own); one result per message, in order."""
        return self._c.call(_core.queue_send_batch(self.name, messages, key))

    def receive(self, max: int = 1, visibility_ms: Optional[int] = None, wait_ms: int = 0) -> List[Message]:
        """Up to ``max`` visible messages, waiting up to ``wait_ms`` for a first one."""
        raw = self._c.call(_core.queue_receive(self.name, max, visibility_ms, wait_ms))
        return [Message(self, m) for m in raw]

    def receive_acking(
        self,
        ack: Sequence[Union[Message, str]],
        max: int = 1,
        visibility_ms: Optional[int] = None,
        wait_ms: int = 0,
    ) -> Tuple[List[Message], List[SinkronError]]:
        """Acknowledges ``ack`` (0 to 100 earlier deliveries) and receives, in one call whose
        acks and receive are proposed together; returns the messages and the errors of the
        acks that failed."""
        receipts = [m.receipt if isinstance(m, Message) else m for m in ack]
        raw, failed = self._c.call(_core.queue_receive_acking(self.name, receipts, max, visibility_ms, wait_ms))
        return [Message(self, m) for m in raw], failed

    def consume(
        self, *, max: int = 1, visibility_ms: Optional[int] = None, wait_ms: int = 20_000
    ) -> Iterator[Message]:
        """Messages one by one, for ever, long-polling ``wait_ms`` at a time. Each must be
        acked (or nacked) by the caller."""
        while True:
            for message in self.receive(max=max, visibility_ms=visibility_ms, wait_ms=wait_ms):
                yield message

    def ack(self, receipt: str) -> None:
        """Acknowledges one delivery by its receipt."""
        self._c.call(_core.queue_ack(self.name, [receipt], batch=False))

    def ack_many(self, messages: Sequence[Union[Message, str]]) -> List[SinkronError]:
        """Acknowledges 1 to 100 deliveries; returns the errors of those that failed."""
        receipts = [m.receipt if isinstance(m, Message) else m for m in messages]
        return self._c.call(_core.queue_ack(self.name, receipts, batch=True))[1]

    def nack(self, receipt: str, delay_ms: int = 0) -> bool:
        """Returns a delivery; ``True`` when it went to the dead-letter queue."""
        return self._c.call(_core.queue_nack(self.name, receipt, delay_ms))

    def stats(self) -> Dict[str, Any]:
        """Ready, in-flight and dead-letter counts, in all and per partition."""
        return self._c.call(_core.get_json(f"/v1/queues/{_core.segment(self.name)}"))
