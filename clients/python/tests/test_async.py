"""The asyncio client: the same primitives from tasks on different nodes."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import sinkron

# Marked here too, so the suite runs from any directory, not only under this pyproject.
pytestmark = pytest.mark.asyncio


def clients(cluster):
    return [sinkron.AsyncClient([cluster.endpoints[i]], timeout=15.0) for i in range(3)]


async def test_contended_lock_from_tasks_on_three_nodes(cluster):
    lock = "py-async-" + uuid.uuid4().hex[:8]
    cs = clients(cluster)
    inside = []
    fences = []
    rounds = 5

    async def worker(i: int) -> None:
        for _ in range(rounds):
            async with cs[i % 3].lock(lock, ttl_ms=10_000, wait_ms=30_000) as lk:
                inside.append(lk.client_id)
                assert len(inside) == 1, inside
                fences.append(lk.fence)
                await asyncio.sleep(0.005)
                inside.remove(lk.client_id)

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(6))), timeout=120)
    assert len(fences) == 6 * rounds
    assert fences == sorted(fences) and len(set(fences)) == len(fences)
    for c in cs:
        await c.aclose()


async def test_kv_cache_and_queue_round_trip(cluster):
    a, b, c = clients(cluster)
    k = "py-async/" + uuid.uuid4().hex[:8]
    v = await a.kv.put(k, "one", if_version=0)
    with pytest.raises(sinkron.VersionMismatch):
        await b.kv.put(k, "two", if_version=0)
    assert await c.kv.get(k) == "one"
    assert (await b.kv.get_versioned(k)).version == v

    await a.cache.put(k, [1, 2])
    assert await c.cache.get(k) == [1, 2]

    q = b.queue("py-async-" + uuid.uuid4().hex[:8])
    sent = {await q.send(i, key=f"k{i % 4}") for i in range(20)}
    got = set()
    consumer = c.queue(q.name)
    pending = []
    for _ in range(200):
        if len(got) == len(sent):
            break
        # Each receive acknowledges what the previous one delivered.
        messages, failed = await consumer.receive_acking(pending, max=5, wait_ms=1_000)
        assert failed == []
        got.update(m.id for m in messages)
        pending = messages
    _, failed = await consumer.receive_acking(pending)
    assert failed == [] and (await consumer.stats())["in_flight"] == 0
    assert got == sent
    for client in (a, b, c):
        await client.aclose()


async def test_async_watch_and_lease_loss(cluster):
    a, b, _ = clients(cluster)
    prefix = "py-async-watch/" + uuid.uuid4().hex[:8] + "/"
    start = await a.kv.put(prefix + "x", 0)
    await b.kv.put(prefix + "x", 1)
    events = a.kv.watch(prefix, from_version=start)
    async for event in events:
        assert (event.key, event.value) == (prefix + "x", 1)
        break
    await events.aclose()

    lk = await a.lock("py-async-lease-" + uuid.uuid4().hex[:8], ttl_ms=600).acquire()
    await b.force_release(lk.name)
    for _ in range(250):
        if lk.lost:
            break
        await asyncio.sleep(0.02)
    assert lk.lost
    with pytest.raises(sinkron.StaleFence):
        await a.kv.put(prefix + "y", 1, fence=lk)
    await lk.release()
    await a.aclose()
    await b.aclose()
