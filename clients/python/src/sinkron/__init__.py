"""Sinkron's Python client: fenced locks, a MESI-coherent cache, partitioned queues and a
key-value store with compare-and-set and watches, all over Raft.

``Client`` is synchronous (and may be shared by threads), ``AsyncClient`` is its asyncio
twin. Both fail over between the endpoints they are given. Errors are
:class:`SinkronError` subclasses named after the API's stable error codes.
"""

from ._async import AsyncCache, AsyncClient, AsyncKV, AsyncLock, AsyncMessage, AsyncQueue, AsyncWatch
from ._core import CacheWrite, Fence, Grant, Outgoing, SendResult, Versioned, WatchEvent
from ._errors import (
    Compacted,
    Conflict,
    Deadlock,
    Holder,
    InvalidArgument,
    LimitExceeded,
    LockConflict,
    NoQuorum,
    NotFound,
    NotHeld,
    NotOwner,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    SinkronError,
    StaleFence,
    Timeout,
    Unauthenticated,
    Unavailable,
    Unreachable,
    VersionMismatch,
    WaitEdge,
    WaitTimeout,
)
from ._sync import KV, Cache, Client, Lock, Message, Queue, Watch

__version__ = "0.1.0"

__all__ = [
    "AsyncCache",
    "AsyncClient",
    "AsyncKV",
    "AsyncLock",
    "AsyncMessage",
    "AsyncQueue",
    "AsyncWatch",
    "Cache",
    "CacheWrite",
    "Client",
    "Compacted",
    "Conflict",
    "Deadlock",
    "Fence",
    "Grant",
    "Holder",
    "InvalidArgument",
    "KV",
    "LimitExceeded",
    "Lock",
    "LockConflict",
    "Message",
    "NoQuorum",
    "NotFound",
    "NotHeld",
    "NotOwner",
    "Outgoing",
    "PayloadTooLarge",
    "PermissionDenied",
    "Queue",
    "QuotaExceeded",
    "SendResult",
    "SinkronError",
    "StaleFence",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "Unreachable",
    "Versioned",
    "VersionMismatch",
    "WaitEdge",
    "WaitTimeout",
    "Watch",
    "WatchEvent",
]
