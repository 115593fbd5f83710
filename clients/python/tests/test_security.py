"""TLS and tokens: the client trusts the cluster's CA and sends its bearer token."""

from __future__ import annotations

import pytest

import sinkron
from cluster import Cluster

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"


@pytest.fixture(scope="module")
def secure_cluster():
    c = Cluster(3, tls=True, tokens=f"ops:admin:{ADMIN}\ngrafana:read:{READER}\n").start()
    yield c
    c.stop()


def test_tls_and_tokens(secure_cluster):
    hosts = [e.split("://")[1] for e in secure_cluster.endpoints]
    with sinkron.Client(hosts, token=ADMIN, cacert=secure_cluster.cacert) as admin:
        assert admin.endpoint.startswith("https://")
        version = admin.kv.put("secure", "yes")
        with admin.lock("secure-lock") as lk:
            assert lk.fence > 0
    with sinkron.Client(secure_cluster.endpoints, token=READER, cacert=secure_cluster.cacert) as reader:
        assert reader.kv.get_versioned("secure") == sinkron.Versioned("yes", version)
        with pytest.raises(sinkron.PermissionDenied) as err:
            reader.kv.put("secure", "no")
        assert err.value.status == 403
    with sinkron.Client(secure_cluster.endpoints, token="not-a-known-token-at-all", cacert=secure_cluster.cacert) as bad:
        with pytest.raises(sinkron.Unauthenticated):
            bad.kv.get("secure")
    with sinkron.Client(secure_cluster.endpoints, cacert=secure_cluster.cacert) as anonymous:
        with pytest.raises(sinkron.Unauthenticated):
            anonymous.kv.get("secure")
