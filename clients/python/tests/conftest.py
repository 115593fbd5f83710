"""Fixtures: one 3-node cluster shared by the session, and clients of it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sinkron  # noqa: E402
from cluster import Cluster  # noqa: E402


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # A short watch history, so that a test can outrun it (see test_kv).
    c = Cluster(3, env={"WATCH_HISTORY": "100"}).start()
    yield c
    if request.session.testsfailed:
        print("\nnode logs of the shared cluster:\n" + c.logs(), file=sys.stderr)
    c.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[sinkron.Client]:
    """A client of the whole cluster (it fails over between the three nodes)."""
    with sinkron.Client(cluster.endpoints, timeout=15.0) as c:
        yield c


def node_client(cluster: Cluster, i: int, timeout: float = 15.0) -> sinkron.Client:
    """A client that talks to node ``i`` only."""
    return sinkron.Client([cluster.endpoints[i]], timeout=timeout)
