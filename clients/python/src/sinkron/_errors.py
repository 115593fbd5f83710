"""The errors a call can raise: one class per stable error code of the HTTP API.

Every error is a :class:`SinkronError` with the HTTP ``status`` (``None`` when no answer
came), the API's ``code`` and its ``message``. The codes and their meaning are those of
docs/api.md; the classes only make them catchable by kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Type


@dataclass(frozen=True)
class Holder:
    """A hold of a lock, as a conflict or a status reports it."""

    client_id: str
    mode: str
    fence: int
    expires_at_ms: int


@dataclass(frozen=True)
class WaitEdge:
    """``client_id`` waits for ``lock``, held or requested first by ``waits_for``."""

    client_id: str
    lock: str
    waits_for: str


class SinkronError(Exception):
    """An answer that is not a success, or no answer at all."""

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: str = "unknown",
        body: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body: Dict[str, Any] = body or {}

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"


class InvalidArgument(SinkronError):
    """``400``: the request is malformed or a field is out of range."""


class Unauthenticated(SinkronError):
    """``401``: no token, or one the cluster does not know."""


class PermissionDenied(SinkronError):
    """``403``: the token's role does not allow this request."""


class NotOwner(PermissionDenied):
    """``403 not_owner``: the lock is held, but not by this client id."""


class NotFound(SinkronError):
    """``404``: no such key, member or receipt (an acked or redelivered message)."""


class NotHeld(NotFound):
    """``404 not_held``: nobody holds the lock."""


class Conflict(SinkronError):
    """``409``: the request conflicts with the state; ``conflict`` itself is a reused
    request id or a refused membership change."""


class LockConflict(Conflict):
    """``409 lock_conflict``: held incompatibly and the acquire did not wait."""

    @property
    def holders(self) -> List[Holder]:
        return [_holder(h) for h in self.body.get("holders", [])]


class WaitTimeout(Conflict):
    """``409 wait_timeout``: the acquire waited ``wait_ms`` without being granted."""


class Deadlock(Conflict):
    """``409 deadlock``: waiting would close a cycle of waiters; this acquire is the victim."""

    @property
    def cycle(self) -> List[WaitEdge]:
        return [WaitEdge(e["client_id"], e["lock"], e["waits_for"]) for e in self.body.get("cycle", [])]


class VersionMismatch(Conflict):
    """``409 version_mismatch``: a compare-and-set found another version."""

    @property
    def current_version(self) -> int:
        return int(self.body.get("current_version", 0))


class StaleFence(Conflict):
    """``409 stale_fence``: the fence is not that of a current hold of the lock."""

    @property
    def current_fence(self) -> Optional[int]:
        fence = self.body.get("current_fence")
        return None if fence is None else int(fence)


class Compacted(SinkronError):
    """``410 compacted``: a watch asked for history the node no longer keeps."""

    @property
    def oldest_version(self) -> int:
        return int(self.body.get("oldest_version", 0))


class PayloadTooLarge(SinkronError):
    """``413``: a key, value, body or batch is above its limit."""


class LimitExceeded(SinkronError):
    """``429``: a per-lock, per-client, per-queue or per-node limit is reached."""


class QuotaExceeded(SinkronError):
    """``507``: the write would grow a group or a table beyond its quota."""


class Unavailable(SinkronError):
    """``503``, or no node answered: the outcome of a write is unknown (it may still
    apply; a retry with the same request id applies it once)."""


class NoQuorum(Unavailable):
    """``503 no_quorum``: no leader backed by a quorum answered in time."""


class Unreachable(Unavailable):
    """No endpoint could be reached within the timeout."""


class Timeout(Unavailable):
    """The call took longer than the client's timeout."""


_BY_CODE: Dict[str, Type[SinkronError]] = {
    "invalid_argument": InvalidArgument,
    "unauthenticated": Unauthenticated,
    "permission_denied": PermissionDenied,
    "not_owner": NotOwner,
    "not_found": NotFound,
    "not_held": NotHeld,
    "conflict": Conflict,
    "lock_conflict": LockConflict,
    "wait_timeout": WaitTimeout,
    "deadlock": Deadlock,
    "version_mismatch": VersionMismatch,
    "stale_fence": StaleFence,
    "compacted": Compacted,
    "payload_too_large": PayloadTooLarge,
    "limit_exceeded": LimitExceeded,
    "quota_exceeded": QuotaExceeded,
    "no_quorum": NoQuorum,
    "unavailable": Unavailable,
}

_BY_STATUS: Dict[int, Type[SinkronError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: Compacted,
    413: PayloadTooLarge,
    429: LimitExceeded,
    503: Unavailable,
    507: QuotaExceeded,
}


def error_from_answer(status: int, body: Any, text: str) -> SinkronError:
    """The error of a non-success answer: by its ``error`` code, else by its status."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body["error"]
        message = str(body.get("message", ""))
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status, SinkronError)
        return cls(message, status=status, code=code, body=body)
    cls = _BY_STATUS.get(status, SinkronError)
    return cls(text.strip()[:500] or f"HTTP {status}", status=status, code=f"http_{status}")


def error_from_body(item: Dict[str, Any]) -> SinkronError:
    """The error one item of a batch answer reports (``error`` and ``message``)."""
    code = str(item.get("error", "unknown"))
    cls = _BY_CODE.get(code, SinkronError)
    return cls(str(item.get("message", "")), code=code, body=item)


def _holder(h: Dict[str, Any]) -> Holder:
    return Holder(h["client_id"], h["mode"], int(h["fence"]), int(h["expires_at_ms"]))
