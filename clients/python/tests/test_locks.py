"""Locks from threads on different nodes: mutual exclusion, fences, deadlocks, lease loss."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

import sinkron
from conftest import node_client


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_contended_lock_from_threads_on_three_nodes(cluster):
    """Six workers on three nodes: never two inside at once, and each grant's fence is
    above every fence granted before it."""
    lock = name("contended")
    inside = []
    fences = []
    errors = []
    guard = threading.Lock()
    rounds = 5

    def worker(i: int) -> None:
        c = node_client(cluster, i % 3)
        try:
            for _ in range(rounds):
                with c.lock(lock, ttl_ms=10_000, wait_ms=30_000) as lk:
                    with guard:
                        inside.append(lk.client_id)
                        if len(inside) > 1:
                            errors.append(f"two holders at once: {inside}")
                        fences.append(lk.fence)
                    time.sleep(0.005)
                    with guard:
                        inside.remove(lk.client_id)
        except Exception as e:  # reported below, with the others
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(fences) == 6 * rounds
    assert fences == sorted(fences) and len(set(fences)) == len(fences), fences


def test_conflict_lists_the_holders_and_a_wait_times_out(cluster):
    a, b = node_client(cluster, 0), node_client(cluster, 1)
    lock = name("conflict")
    with a.lock(lock, ttl_ms=10_000, client_id="holder-a") as held:
        fence = held.fence
        with pytest.raises(sinkron.LockConflict) as err:
            b.lock(lock).acquire()
        assert err.value.status == 409 and err.value.code == "lock_conflict"
        assert [h.client_id for h in err.value.holders] == ["holder-a"]
        assert err.value.holders[0].fence == fence
        started = time.monotonic()
        with pytest.raises(sinkron.WaitTimeout):
            b.lock(lock, wait_ms=300).acquire()
        assert time.monotonic() - started >= 0.25
    assert not held.held
    # Released on leaving the block: another client gets it now, with a higher fence.
    with b.lock(lock) as next_hold:
        assert next_hold.fence > fence


def test_shared_holders_coexist(cluster):
    a, b = node_client(cluster, 0), node_client(cluster, 2)
    lock = name("shared")
    with a.lock(lock, mode="shared") as one, b.lock(lock, mode="shared") as two:
        status = a.lock_status(lock)
        assert status["mode"] == "shared"
        assert {h["client_id"] for h in status["holders"]} == {one.client_id, two.client_id}
        with pytest.raises(sinkron.LockConflict):
            a.lock(lock, mode="exclusive").acquire()


def test_deadlock_is_raised_with_its_cycle(cluster):
    a, b = node_client(cluster, 0), node_client(cluster, 1)
    l1, l2 = name("dl1"), name("dl2")
    first = a.lock(l1, client_id="dl-a", ttl_ms=20_000).acquire()
    second = b.lock(l2, client_id="dl-b", ttl_ms=20_000).acquire()
    waiting = {}

    def a_waits_for_l2() -> None:
        try:
            waiting["lock"] = a.lock(l2, client_id="dl-a", wait_ms=15_000).acquire()
        except sinkron.SinkronError as e:
            waiting["error"] = e

    t = threading.Thread(target=a_waits_for_l2)
    t.start()
    # Until dl-a is queued for l2, dl-b asking for l1 is a plain wait, not a deadlock.
    deadline = time.monotonic() + 10
    while not a.lock_status(l2)["waiters"] and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(sinkron.Deadlock) as err:
        b.lock(l1, client_id="dl-b", wait_ms=5_000).acquire()
    assert err.value.code == "deadlock"
    cycle = err.value.cycle
    assert cycle[0].client_id == "dl-b" and cycle[0].lock == l1
    assert {(e.client_id, e.waits_for) for e in cycle} == {("dl-b", "dl-a"), ("dl-a", "dl-b")}
    graph = a.wait_for_graph()
    assert any(d["victim"] == "dl-b" for d in graph["deadlocks"])
    second.release()  # the victim gives up: dl-a gets l2
    t.join(timeout=20)
    assert "error" not in waiting, waiting
    waiting["lock"].release()
    first.release()


def test_lease_loss_is_noticed_and_its_fence_refused(cluster):
    a, admin = node_client(cluster, 0), node_client(cluster, 1)
    lock = name("lease")
    lk = a.lock(lock, ttl_ms=900).acquire()
    k = "lease-protected/" + lock
    a.kv.put(k, "by the holder", fence=lk)
    time.sleep(1.5)  # longer than the lease: only the background refresh keeps it
    assert lk.held and not lk.lost
    assert admin.force_release(lock) == [lk.client_id]
    deadline = time.monotonic() + 5
    while not lk.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lk.lost and not lk.held
    with pytest.raises(sinkron.StaleFence) as err:
        a.kv.put(k, "after losing it", fence=lk)
    assert err.value.current_fence is None
    assert admin.kv.get(k) == "by the holder"
    lk.release()  # a lost lock is not released again


def test_release_and_refresh_errors(cluster):
    a = node_client(cluster, 0)
    lock = name("errors")
    with pytest.raises(sinkron.InvalidArgument) as err:
        a.lock(lock, ttl_ms=0).acquire()
    assert err.value.status == 400 and "ttl_ms" in err.value.message
    with a.lock(lock, client_id="owner"):
        with pytest.raises(sinkron.NotOwner) as owner_err:
            a.release(lock, "intruder")
        assert owner_err.value.status == 403
        with pytest.raises(sinkron.NotOwner):
            a.refresh(lock, "intruder")
    with pytest.raises(sinkron.NotHeld) as held_err:
        a.release(lock, "owner")
    assert held_err.value.status == 404 and isinstance(held_err.value, sinkron.NotFound)
