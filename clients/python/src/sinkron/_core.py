"""What the synchronous and the asyncio client share, with no I/O of its own.

Every API call is described once, as a :class:`Call` (the request and how to read its
answer), and the retry rules are decided once, by :class:`Failover`. The two clients only
send requests and sleep, each in its own way, so both behave the same by construction.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar, Union
from urllib.parse import quote

import httpx

from ._errors import (
    NotFound,
    NotOwner,
    SinkronError,
    Timeout,
    Unavailable,
    Unreachable,
    error_from_answer,
    error_from_body,
)

T = TypeVar("T")

#: Longest pause a retry honours from ``Retry-After``.
RETRY_PAUSE_MAX_S = 2.0
#: Pause after a ``503`` without ``Retry-After``, and after every endpoint refused.
RETRY_PAUSE_DEFAULT_S = 0.2
#: How long one connection attempt may take before the next endpoint is tried.
CONNECT_TIMEOUT_S = 2.0

_NO_BODY = object()


@dataclass(frozen=True)
class Fence:
    """A fencing token of ``lock``: a write carrying it applies only while that hold is
    current."""

    lock: str
    token: int


@dataclass(frozen=True)
class Versioned:
    """A key's value and the version (revision) that wrote it."""

    value: Any
    version: int


@dataclass(frozen=True)
class WatchEvent:
    """One change of a watched key: ``type`` is ``"put"`` or ``"delete"``."""

    key: str
    type: str
    version: int
    value: Any = None


@dataclass(frozen=True)
class CacheWrite:
    """A cache write's outcome: this node's line state and the backing version."""

    state: str
    version: int


@dataclass(frozen=True)
class SendResult:
    """One message of a batch send: its ``id`` and ``partition``, or the ``error``."""

    id: Optional[str]
    partition: Optional[int]
    error: Optional[SinkronError] = None


@dataclass(frozen=True)
class Outgoing:
    """A message of a batch send with its ordering ``key``."""

    body: Any
    key: Optional[str] = None
    request_id: Optional[str] = None


@dataclass(frozen=True)
class Grant:
    """A granted acquire, as the node answered it."""

    name: str
    mode: str
    fence: int
    expires_at_ms: int


@dataclass
class Call(Generic[T]):
    """One request of the API and how its answer becomes a value."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Optional[Dict[str, str]] = None
    body: Any = _NO_BODY
    #: Safe to send again after an unknown outcome (a reset connection): reads, writes
    #: that carry a request id, acquires and refreshes. Others are only sent again when
    #: the first attempt never reached a node.
    idempotent: bool = True
    #: How long the node may hold the answer on purpose (long polls, lock waits).
    wait_s: float = 0.0
    #: The value of a ``404`` answer, for reads where absence is not an error.
    on_not_found: Optional[Callable[[], T]] = None
    #: Whether the answer is JSON (``/metrics`` is text).
    text: bool = False

    def has_body(self) -> bool:
        return self.body is not _NO_BODY

    def finish(self, status: int, content: bytes) -> T:
        """The value of an answer, or the error it reports."""
        text = content.decode("utf-8", errors="replace")
        if 200 <= status < 300:
            if self.text:
                return self.parse(text)
            return self.parse(json.loads(text) if text else None)
        if status == 404 and self.on_not_found is not None:
            return self.on_not_found()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        raise error_from_answer(status, body, text)


def segment(value: str) -> str:
    """A path segment, percent-encoded (a ``/`` in a key becomes ``%2F``)."""
    return quote(value, safe="")


def request_id() -> str:
    """A fresh request id: a retry of the same call reuses it, so a write applies once."""
    return "py-" + uuid.uuid4().hex


def base_urls(endpoints: Union[str, Sequence[str]], tls: bool) -> List[str]:
    """Endpoints as base URLs: ``host:port`` gets ``https://`` with a CA, else ``http://``."""
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not items:
        raise ValueError("endpoints: give at least one host:port or URL")
    out = []
    for item in items:
        item = item.strip().rstrip("/")
        if not item:
            raise ValueError("endpoints: an endpoint is empty")
        if "://" not in item:
            item = ("https://" if tls else "http://") + item
        if not item.startswith(("http://", "https://")):
            raise ValueError(f"endpoints: {item!r} is neither http:// nor https://")
        out.append(item)
    return out


def http_options(token: Optional[str], cacert: Optional[str]) -> Dict[str, Any]:
    """The keyword arguments both httpx clients are built with."""
    headers = {"user-agent": "sinkron-python/0.1"}
    if token is not None:
        if not token or not token.isascii() or not token.isprintable():
            raise ValueError("token: must be printable ASCII")
        headers["authorization"] = f"Bearer {token}"
    verify: Union[bool, ssl.SSLContext] = True
    if cacert is not None:
        verify = ssl.create_default_context(cafile=cacert)
    return {"headers": headers, "verify": verify}


#: Errors raised before the request left this process: always safe to send elsewhere.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Errors after which the node may or may not have acted on the request.
OUTCOME_UNKNOWN = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteTimeout)


@dataclass
class Failover:
    """Which endpoint a call goes to next, and whether and when to try again.

    A call starts at the endpoint in use. An endpoint that cannot be reached moves the
    client on to the next one; a ``503`` waits its ``Retry-After`` (at most 2 s) and then
    tries the next one; a reset connection does the same for a call that is safe to send
    twice. All of it within the client's timeout, after which the last answer or error is
    what the caller gets.
    """

    bases: List[str]
    timeout_s: float
    current: int = 0

    def url(self, index: int, path: str) -> str:
        return self.bases[index] + path

    def begin(self) -> Tuple[float, int]:
        """The call's deadline and the endpoint to start at."""
        return time.monotonic() + self.timeout_s, self.current % len(self.bases)

    def timeout(self, deadline: float, call: Call[Any]) -> httpx.Timeout:
        """The timeout of one attempt: what is left of the call, plus its own wait."""
        left = max(deadline - time.monotonic(), 0.05)
        return httpx.Timeout(left + call.wait_s, connect=min(CONNECT_TIMEOUT_S, left))

    def after_error(
        self, error: Exception, call: Call[Any], index: int, start: int, deadline: float
    ) -> Optional[float]:
        """The pause before the next attempt, or ``None`` to give up with ``error``."""
        retry = isinstance(error, NEVER_SENT) or (call.idempotent and isinstance(error, OUTCOME_UNKNOWN))
        if not retry:
            return None
        pause = self._move_on(index, start)
        return pause if time.monotonic() + pause < deadline else None

    def after_answer(
        self, status: int, retry_after: Optional[str], index: int, start: int, deadline: float
    ) -> Optional[float]:
        """The pause before trying again after ``status``, or ``None`` to keep the answer."""
        if status != 503:
            return None
        pause = RETRY_PAUSE_DEFAULT_S
        if retry_after is not None and retry_after.strip().isdigit():
            pause = min(float(retry_after.strip()), RETRY_PAUSE_MAX_S)
        if time.monotonic() + pause >= deadline:
            return None
        self._move_on(index, start)
        return pause

    def _move_on(self, index: int, start: int) -> float:
        """Moves to the endpoint after ``index``; a pause once the call has tried every
        endpoint since ``start``, the one it began at."""
        following = (index + 1) % len(self.bases)
        if self.current % len(self.bases) == index:
            self.current = following
        return RETRY_PAUSE_DEFAULT_S if following == start else 0.0


def failure(error: Exception, url: str) -> SinkronError:
    """The client error for a transport failure that ends a call."""
    if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
        return Timeout(f"{url}: no answer within the timeout ({error.__class__.__name__})", code="timeout")
    if isinstance(error, NEVER_SENT):
        return Unreachable(f"{url}: cannot connect ({error})", code="unreachable")
    return Unavailable(f"{url}: the connection failed ({error.__class__.__name__}: {error})", code="transport")


# ---- The calls of the API, once for both clients --------------------------------------


def fence_body(fence: Union[Fence, Tuple[str, int], Any, None]) -> Optional[Dict[str, Any]]:
    """A fence as the API takes it, from a :class:`Fence`, a ``(lock, token)`` pair or a
    held lock object."""
    if fence is None:
        return None
    if isinstance(fence, Fence):
        return {"lock": fence.lock, "token": fence.token}
    if isinstance(fence, tuple) and len(fence) == 2:
        return {"lock": str(fence[0]), "token": int(fence[1])}
    as_fence = getattr(fence, "as_fence", None)
    if callable(as_fence):
        return fence_body(as_fence())
    raise TypeError("fence: give a sinkron.Fence, a (lock, token) pair or a held lock")


def kv_put(key: str, value: Any, if_version: Optional[int], fence: Any, rid: Optional[str]) -> Call[int]:
    body: Dict[str, Any] = {"value": value, "request_id": rid or request_id()}
    if if_version is not None:
        body["if_version"] = if_version
    if fence is not None:
        body["fence"] = fence_body(fence)
    return Call("PUT", f"/v1/kv/{segment(key)}", lambda b: int(b["version"]), body=body)


def kv_get(
    key: str, consistency: str, wait_version: Optional[int], wait_ms: Optional[int]
) -> Call[Optional[Versioned]]:
    params = {"consistency": consistency}
    wait_s = 0.0
    if wait_version is not None:
        params["wait_version"] = str(wait_version)
        wait_ms = 30_000 if wait_ms is None else wait_ms
        params["wait_ms"] = str(wait_ms)
        wait_s = wait_ms / 1000
    return Call(
        "GET",
        f"/v1/kv/{segment(key)}",
        lambda b: Versioned(b["value"], int(b["version"])),
        params=params,
        wait_s=wait_s,
        on_not_found=lambda: None,
    )


def kv_delete(key: str, if_version: Optional[int], fence: Any, rid: Optional[str]) -> Call[bool]:
    params = {"request_id": rid or request_id()}
    if if_version is not None:
        params["if_version"] = str(if_version)
    body = {"fence": fence_body(fence)} if fence is not None else _NO_BODY
    return Call("DELETE", f"/v1/kv/{segment(key)}", lambda b: bool(b["existed"]), params=params, body=body)


def watch_params(prefix: str, from_version: Optional[int]) -> Dict[str, str]:
    params = {"prefix": prefix}
    if from_version is not None:
        params["from_version"] = str(from_version)
    return params


def watch_event(block: str) -> Optional[WatchEvent]:
    """The change one Server-Sent Events block carries (``None`` for a heartbeat)."""
    for line in block.splitlines():
        if line.startswith("data:"):
            data = json.loads(line[5:].strip())
            return WatchEvent(data["key"], data["type"], int(data["version"]), data.get("value"))
    return None


class EventStream:
    """Splits a watch stream's text, as it arrives in chunks, into its changes."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, chunk: str) -> List[WatchEvent]:
        """The changes completed by ``chunk`` (an event ends at a blank line)."""
        self._buffer += chunk.replace("\r\n", "\n")
        events = []
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            event = watch_event(block)
            if event is not None:
                events.append(event)
        return events


def lease_lost(error: SinkronError, deadline: float) -> bool:
    """Whether a failed refresh means the hold is gone: the node says so (not held, or
    held by others), or no node answered until the lease's last possible end."""
    return isinstance(error, (NotFound, NotOwner)) or time.monotonic() >= deadline


def cache_get(key: str) -> Call[Optional[Tuple[Any]]]:
    return Call("GET", f"/v1/cache/{segment(key)}", lambda b: (b["value"],), on_not_found=lambda: None)


def cache_put(key: str, value: Any, durable: bool, fence: Any) -> Call[CacheWrite]:
    body: Dict[str, Any] = {"value": value, "durable": durable}
    if fence is not None:
        body["fence"] = fence_body(fence)
    return Call(
        "PUT", f"/v1/cache/{segment(key)}", lambda b: CacheWrite(b["state"], int(b["version"])), body=body
    )


def cache_delete(key: str) -> Call[None]:
    return Call("DELETE", f"/v1/cache/{segment(key)}", lambda b: None)


def cache_lines(key: str) -> Call[Dict[str, str]]:
    return Call("GET", f"/v1/cache/{segment(key)}/lines", lambda b: {x["node"]: x["state"] for x in b["lines"]})


def acquire(name: str, client_id: str, mode: str, ttl_ms: Optional[int], wait_ms: int) -> Call[Grant]:
    body: Dict[str, Any] = {"client_id": client_id, "mode": mode, "wait_ms": wait_ms}
    if ttl_ms is not None:
        body["ttl_ms"] = ttl_ms
    return Call(
        "POST",
        f"/v1/locks/{segment(name)}/acquire",
        lambda b: Grant(b["name"], b["mode"], int(b["fence"]), int(b["expires_at_ms"])),
        body=body,
        wait_s=wait_ms / 1000,
    )


def refresh(name: str, client_id: str, ttl_ms: Optional[int]) -> Call[int]:
    body: Dict[str, Any] = {"client_id": client_id}
    if ttl_ms is not None:
        body["ttl_ms"] = ttl_ms
    return Call("POST", f"/v1/locks/{segment(name)}/refresh", lambda b: int(b["expires_at_ms"]), body=body)


def release(name: str, client_id: str) -> Call[List[str]]:
    return Call(
        "POST",
        f"/v1/locks/{segment(name)}/release",
        lambda b: list(b["released"]),
        body={"client_id": client_id},
        idempotent=False,
    )


def force_release(name: str) -> Call[List[str]]:
    return Call("POST", f"/v1/locks/{segment(name)}/force-release", lambda b: list(b["released"]), idempotent=False)


def get_json(path: str, params: Optional[Dict[str, str]] = None) -> Call[Dict[str, Any]]:
    return Call("GET", path, lambda b: b, params=params)


def queue_send(queue: str, body: Any, key: Optional[str], fence: Any, rid: Optional[str]) -> Call[str]:
    req: Dict[str, Any] = {"body": body, "request_id": rid or request_id()}
    if key is not None:
        req["key"] = key
    if fence is not None:
        req["fence"] = fence_body(fence)
    return Call("POST", f"/v1/queues/{segment(queue)}/messages", lambda b: str(b["id"]), body=req)


def queue_send_batch(queue: str, messages: Sequence[Any], key: Optional[str]) -> Call[List[SendResult]]:
    items = []
    for m in messages:
        out = m if isinstance(m, Outgoing) else Outgoing(m, key)
        item: Dict[str, Any] = {"body": out.body, "request_id": out.request_id or request_id()}
        if out.key is not None:
            item["key"] = out.key
        items.append(item)

    def parse(b: Any) -> List[SendResult]:
        return [
            SendResult(None, None, error_from_body(x)) if "error" in x else SendResult(str(x["id"]), int(x["partition"]))
            for x in b["messages"]
        ]

    # Every message carries its own request id, so the whole batch is safe to resend.
    return Call("POST", f"/v1/queues/{segment(queue)}/messages/batch", parse, body={"messages": items})


def queue_receive(
    queue: str, max: int, visibility_ms: Optional[int], wait_ms: int
) -> Call[List[Dict[str, Any]]]:
    body: Dict[str, Any] = {"max": max, "wait_ms": wait_ms}
    if visibility_ms is not None:
        body["visibility_ms"] = visibility_ms
    # Safe to resend: messages a lost answer delivered come back after their visibility
    # timeout, so nothing is lost, only late.
    return Call(
        "POST", f"/v1/queues/{segment(queue)}/receive", lambda b: list(b["messages"]), body=body, wait_s=wait_ms / 1000
    )


def queue_receive_acking(
    queue: str, ack: Sequence[str], max: int, visibility_ms: Optional[int], wait_ms: int
) -> Call[Tuple[List[Dict[str, Any]], List[SinkronError]]]:
    """A receive that also acknowledges ``ack`` (0 to 100 receipts), proposed together."""
    body: Dict[str, Any] = {"max": max, "wait_ms": wait_ms, "ack": list(ack)}
    if visibility_ms is not None:
        body["visibility_ms"] = visibility_ms
    # Not resent after a lost answer: the retry would report acks already made as not found.
    # (The node answers a failed receive with acks as an empty 200, never a 503.)
    return Call(
        "POST",
        f"/v1/queues/{segment(queue)}/receive",
        lambda b: (list(b["messages"]), [error_from_body(f) for f in b.get("failed", [])]),
        body=body,
        wait_s=wait_ms / 1000,
        idempotent=False,
    )


def queue_ack(queue: str, receipts: Sequence[str], batch: bool) -> Call[Tuple[int, List[SinkronError]]]:
    """One receipt (a failure is raised) or a batch (failures are listed)."""
    body: Dict[str, Any] = {"receipts": list(receipts)} if batch else {"receipt": receipts[0]}
    return Call(
        "POST",
        f"/v1/queues/{segment(queue)}/ack",
        lambda b: (int(b["acked"]), [error_from_body(f) for f in b.get("failed", [])]),
        body=body,
        idempotent=False,
    )


def queue_nack(queue: str, receipt: str, delay_ms: int) -> Call[bool]:
    return Call(
        "POST",
        f"/v1/queues/{segment(queue)}/nack",
        lambda b: bool(b["dead_lettered"]),
        body={"receipt": receipt, "delay_ms": delay_ms},
        idempotent=False,
    )


def metrics() -> Call[str]:
    return Call("GET", "/metrics", lambda t: t, text=True)


def lock_refresh_interval_s(lease_ms: int) -> float:
    """How often a held lock refreshes: three times per lease, at most every 50 ms."""
    return max(lease_ms / 3000, 0.05)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_client_id() -> str:
    return "py-" + uuid.uuid4().hex[:16]
