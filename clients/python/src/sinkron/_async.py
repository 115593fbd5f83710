"""The asyncio client: :class:`AsyncClient`, with the surface of the synchronous one.

Every call is a coroutine; a held :class:`AsyncLock` refreshes its lease from a task of
its own, and ``async with`` works where ``with`` does for the synchronous client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple, Union

import httpx

from . import _core
from ._core import CacheWrite, Call, Failover, Fence, Grant, SendResult, T, Versioned, WatchEvent
from ._errors import NotFound, NotOwner, SinkronError


class AsyncClient:
    """A client of a Sinkron cluster for asyncio; see :class:`sinkron.Client` for the
    failover and retry rules, which are the same."""

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]],
        token: Optional[str] = None,
        cacert: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        self._failover = Failover(_core.base_urls(endpoints, cacert is not None), timeout)
        self._http = httpx.AsyncClient(**_core.http_options(token, cacert))
        self.kv = AsyncKV(self)
        self.cache = AsyncCache(self)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    @property
    def endpoint(self) -> str:
        """The base URL calls go to now."""
        return self._failover.bases[self._failover.current % len(self._failover.bases)]

    async def call(self, call: Call[T]) -> T:
        """Sends one call with failover and retries, and returns its value."""
        response = await self._send(call, stream=False)
        return call.finish(response.status_code, response.content)

    async def _send(self, call: Call[Any], stream: bool) -> httpx.Response:
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
                response = await self._http.send(request, stream=stream)
            except httpx.HTTPError as error:
                pause = self._failover.after_error(error, call, index, start, deadline)
                if pause is None:
                    raise _core.failure(error, url) from error
            else:
                pause = self._failover.after_answer(
                    response.status_code, response.headers.get("retry-after"), index, start, deadline
                )
                if pause is None:
                    return response
                await response.aclose()
            await asyncio.sleep(pause)
            index = self._failover.current % len(self._failover.bases)

    # ---- Cluster and administration -----------------------------------------------------

    async def health(self) -> Dict[str, Any]:
        return await self.call(_core.get_json("/health"))

    async def ready(self) -> Dict[str, Any]:
        return await self.call(_core.get_json("/ready"))

    async def cluster(self) -> Dict[str, Any]:
        return await self.call(_core.get_json("/v1/cluster"))

    async def cluster_nodes(self) -> Dict[str, Any]:
        """``GET /v1/cluster/nodes``: every member's own status, readiness and cache counters."""
        return await self.call(_core.get_json("/v1/cluster/nodes"))

    async def queues(self) -> Dict[str, Any]:
        """``GET /v1/queues``: every queue that holds messages, with its counts."""
        return await self.call(_core.get_json("/v1/queues"))

    async def ring(self) -> Dict[str, Any]:
        return await self.call(_core.get_json("/v1/ring"))

    async def metrics(self) -> str:
        return await self.call(_core.metrics())

    async def locks(self) -> Dict[str, Any]:
        return await self.call(_core.get_json("/v1/locks"))

    async def lock_status(self, name: str) -> Dict[str, Any]:
        return await self.call(_core.get_json(f"/v1/locks/{_core.segment(name)}"))

    async def wait_for_graph(self) -> Dict[str, Any]:
        return await self.call(_core.get_json("/v1/locks/wait-for-graph"))

    async def release(self, name: str, client_id: str) -> List[str]:
        """Releases ``client_id``'s hold of a lock (a held :class:`Lock` does this itself)."""
        return await self.call(_core.release(name, client_id))

    async def refresh(self, name: str, client_id: str, ttl_ms: Optional[int] = None) -> int:
        """Extends ``client_id``'s lease of a lock; returns its new end (ms since the epoch)."""
        return await self.call(_core.refresh(name, client_id, ttl_ms))

    async def force_release(self, name: str) -> List[str]:
        return await self.call(_core.force_release(name))

    # ---- Locks and queues ---------------------------------------------------------------

    def lock(
        self,
        name: str,
        *,
        mode: str = "exclusive",
        ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        client_id: Optional[str] = None,
    ) -> "AsyncLock":
        """A lock object (not acquired yet): ``async with client.lock(...) as lk:``."""
        return AsyncLock(self, name, mode, ttl_ms, wait_ms, client_id or _core.new_client_id())

    def queue(self, name: str) -> "AsyncQueue":
        return AsyncQueue(self, name)


class AsyncKV:
    """The replicated key-value store of group 0 (see :class:`sinkron.KV`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def put(
        self,
        key: str,
        value: Any,
        *,
        if_version: Optional[int] = None,
        fence: Any = None,
        request_id: Optional[str] = None,
    ) -> int:
        return await self._c.call(_core.kv_put(key, value, if_version, fence, request_id))

    async def get(self, key: str, *, consistency: str = "linearizable") -> Any:
        item = await self.get_versioned(key, consistency=consistency)
        return None if item is None else item.value

    async def get_versioned(
        self,
        key: str,
        *,
        consistency: str = "linearizable",
        wait_version: Optional[int] = None,
        wait_ms: Optional[int] = None,
    ) -> Optional[Versioned]:
        return await self._c.call(_core.kv_get(key, consistency, wait_version, wait_ms))

    async def delete(
        self,
        key: str,
        *,
        if_version: Optional[int] = None,
        fence: Any = None,
        request_id: Optional[str] = None,
    ) -> bool:
        return await self._c.call(_core.kv_delete(key, if_version, fence, request_id))

    def watch(self, prefix: str = "", *, from_version: Optional[int] = None) -> "AsyncWatch":
        """Every change under ``prefix`` as an async iterator that reconnects by itself."""
        return AsyncWatch(self._c, prefix, from_version)


class AsyncWatch:
    """An endless async iterator of :class:`~sinkron.WatchEvent`; ``aclose()`` ends it."""

    def __init__(self, client: AsyncClient, prefix: str, from_version: Optional[int]) -> None:
        self._c = client
        self._prefix = prefix
        self.last_version = from_version
        self._response: Optional[httpx.Response] = None
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[WatchEvent]:
        while not self._closed:
            try:
                async for event in self._events():
                    yield event
            except httpx.TransportError:
                pass  # The node went away: resume elsewhere after the last version.
            finally:
                await self._drop()

    async def _events(self) -> AsyncIterator[WatchEvent]:
        call = Call("GET", "/v1/watch", lambda b: b, params=_core.watch_params(self._prefix, self.last_version))
        call.wait_s = 45.0
        response = await self._c._send(call, stream=True)
        self._response = response
        if response.status_code != 200:
            await response.aread()
            call.finish(response.status_code, response.content)
        stream = _core.EventStream()
        async for chunk in response.aiter_text():
            for event in stream.feed(chunk):
                self.last_version = event.version
                yield event

    async def _drop(self) -> None:
        if self._response is not None:
            await self._response.aclose()
            self._response = None

    async def aclose(self) -> None:
        self._closed = True
        await self._drop()


class AsyncCache:
    """The MESI-coherent cache (see :class:`sinkron.Cache`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def get(self, key: str) -> Any:
        found = await self._c.call(_core.cache_get(key))
        return None if found is None else found[0]

    async def put(self, key: str, value: Any, durable: bool = False, *, fence: Any = None) -> CacheWrite:
        return await self._c.call(_core.cache_put(key, value, durable, fence))

    async def delete(self, key: str) -> None:
        await self._c.call(_core.cache_delete(key))

    async def lines(self, key: str) -> Dict[str, str]:
        return await self._c.call(_core.cache_lines(key))

    async def stats(self) -> Dict[str, Any]:
        return await self._c.call(_core.get_json("/v1/cache"))


class AsyncLock:
    """A lock of the cluster (see :class:`sinkron.Lock`); refreshed by a task while held."""

    def __init__(
        self, client: AsyncClient, name: str, mode: str, ttl_ms: Optional[int], wait_ms: int, client_id: str
    ) -> None:
        self._c = client
        self.name = name
        self.mode = mode
        self.ttl_ms = ttl_ms
        self.wait_ms = wait_ms
        self.client_id = client_id
        self.grant: Optional[Grant] = None
        self._lost = False
        self._task: Optional["asyncio.Task[None]"] = None

    @property
    def fence(self) -> int:
        if self.grant is None:
            raise RuntimeError(f"lock {self.name!r} is not held")
        return self.grant.fence

    @property
    def held(self) -> bool:
        return self.grant is not None and not self._lost

    @property
    def lost(self) -> bool:
        return self._lost

    def as_fence(self) -> Fence:
        return Fence(self.name, self.fence)

    async def acquire(self) -> "AsyncLock":
        started = time.monotonic()
        grant = await self._c.call(_core.acquire(self.name, self.client_id, self.mode, self.ttl_ms, self.wait_ms))
        self.grant = grant
        self._lost = False
        lease_ms = self.ttl_ms or max(grant.expires_at_ms - _core.now_ms(), 1)
        self._task = asyncio.get_running_loop().create_task(self._keep(lease_ms, started + lease_ms / 1000))
        return self

    async def _keep(self, lease_ms: int, deadline: float) -> None:
        every = _core.lock_refresh_interval_s(lease_ms)
        while True:
            await asyncio.sleep(every)
            sent = time.monotonic()
            try:
                await self._c.call(_core.refresh(self.name, self.client_id, self.ttl_ms))
                deadline = sent + lease_ms / 1000
            except SinkronError as error:
                if _core.lease_lost(error, deadline):
                    self._lost = True
                    return

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.grant is None or self._lost:
            self.grant = None
            return
        self.grant = None
        try:
            await self._c.call(_core.release(self.name, self.client_id))
        except (NotFound, NotOwner):
            pass

    async def __aenter__(self) -> "AsyncLock":
        return await self.acquire()

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


class AsyncMessage:
    """A delivered message (see :class:`sinkron.Message`)."""

    def __init__(self, queue: "AsyncQueue", raw: Dict[str, Any]) -> None:
        self.queue = queue
        self.id: str = raw["id"]
        self.body: Any = raw["body"]
        self.receipt: str = raw["receipt"]
        self.receive_count: int = int(raw["receive_count"])

    async def ack(self) -> None:
        await self.queue.ack(self.receipt)

    async def nack(self, delay_ms: int = 0) -> bool:
        return await self.queue.nack(self.receipt, delay_ms)

    def __repr__(self) -> str:
        return f"AsyncMessage(id={self.id!r}, receive_count={self.receive_count}, body={self.body!r})"


class AsyncQueue:
    """A queue (see :class:`sinkron.Queue`)."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._c = client
        self.name = name

    async def send(
        self, body: Any, key: Optional[str] = None, *, fence: Any = None, request_id: Optional[str] = None
    ) -> str:
        return await self._c.call(_core.queue_send(self.name, body, key, fence, request_id))

    async def send_batch(self, messages: Sequence[Any], key: Optional[str] = None) -> List[SendResult]:
        return await self._c.call(_core.queue_send_batch(self.name, messages, key))

    async def receive(self, max: int = 1, visibility_ms: Optional[int] = None, wait_ms: int = 0) -> List[AsyncMessage]:
        raw = await self._c.call(_core.queue_receive(self.name, max, visibility_ms, wait_ms))
        return [AsyncMessage(self, m) for m in raw]

    async def receive_acking(
        self,
        ack: Sequence[Union[AsyncMessage, str]],
        max: int = 1,
        visibility_ms: Optional[int] = None,
        wait_ms: int = 0,
    ) -> Tuple[List[AsyncMessage], List[SinkronError]]:
        """Acknowledges ``ack`` (0 to 100 earlier deliveries) and receives in one call;
        returns the messages and the errors of the acks that failed."""
        receipts = [m.receipt if isinstance(m, AsyncMessage) else m for m in ack]
        raw, failed = await self._c.call(
            _core.queue_receive_acking(self.name, receipts, max, visibility_ms, wait_ms)
        )
        return [AsyncMessage(self, m) for m in raw], failed

    async def consume(
        self, *, max: int = 1, visibility_ms: Optional[int] = None, wait_ms: int = 20_000
    ) -> AsyncIterator[AsyncMessage]:
        while True:
            for message in await self.receive(max=max, visibility_ms=visibility_ms, wait_ms=wait_ms):
                yield message

    async def ack(self, receipt: str) -> None:
        await self._c.call(_core.queue_ack(self.name, [receipt], batch=False))

    async def ack_many(self, messages: Sequence[Union[AsyncMessage, str]]) -> List[SinkronError]:
        receipts = [m.receipt if isinstance(m, AsyncMessage) else m for m in messages]
        return (await self._c.call(_core.queue_ack(self.name, receipts, batch=True)))[1]

    async def nack(self, receipt: str, delay_ms: int = 0) -> bool:
        return await self._c.call(_core.queue_nack(self.name, receipt, delay_ms))

    async def stats(self) -> Dict[str, Any]:
        return await self._c.call(_core.get_json(f"/v1/queues/{_core.segment(self.name)}"))
