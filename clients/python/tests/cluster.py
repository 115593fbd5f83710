"""A cluster of real ``sinkron serve`` processes on free 127.0.0.1 ports, for the tests.

The binary is ``$SINKRON_BIN``, else the workspace's ``target/debug/sinkron``. Nodes run
with short Raft timeouts, as in the Rust cluster tests. Every process is killed when the
cluster stops; a failing test prints the tail of each node's log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import ssl
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[3]

FAST_ENV = {
    "RAFT_ELECTION_TIMEOUT_MIN": "0.3",
    "RAFT_ELECTION_TIMEOUT_MAX": "0.6",
    "RAFT_HEARTBEAT_INTERVAL": "0.1",
    "REQUEST_TIMEOUT_MS": "3000",
    "RUST_LOG": "info,openraft=error",
}


def sinkron_bin() -> Path:
    path = Path(os.environ.get("SINKRON_BIN", REPO / "target" / "debug" / "sinkron"))
    if not path.exists():
        raise RuntimeError(f"no sinkron binary at {path}: build it (cargo build -p sinkron-cli) or set SINKRON_BIN")
    return path


_next_port = [0]


def free_ports(n: int) -> List[int]:
    """Ports free a moment ago, below the OS's ephemeral range.

    Ports the OS hands out for ``bind(0)`` come from the range outgoing connections take
    their source ports from, so one could be taken between the pick and the node's own
    bind. Below that range nothing is handed out by itself; each test process starts at an
    offset of its own so that parallel runs do not collide.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    base, span = 20_000, max(low - 20_000 - 100, 1000)
    out: List[int] = []
    while len(out) < n:
        port = base + (os.getpid() * 7919 + _next_port[0]) % span
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
    return out


class Cluster:
    """``n`` nodes, optionally with TLS (certificates from ``sinkron certs``) and tokens."""

    def __init__(self, n: int = 3, *, tls: bool = False, tokens: Optional[str] = None, env: Optional[Dict[str, str]] = None):
        self.dir = Path(tempfile.mkdtemp(prefix="sinkron-py-"))
        self.names = [f"node{i + 1}" for i in range(n)]
        self.ports = free_ports(n)
        self.env = dict(FAST_ENV, **(env or {}))
        self.procs: List[Optional[subprocess.Popen]] = [None] * n
        self.cacert: Optional[str] = None
        if tls:
            certs = self.dir / "certs"
            subprocess.run([str(sinkron_bin()), "certs", "--dir", str(certs), *self.names], check=True, capture_output=True)
            self.cacert = str(certs / "ca.pem")
            self.env["TLS_CA_FILE"] = self.cacert
        if tokens is not None:
            (self.dir / "tokens").write_text(tokens)
            self.env["AUTH_TOKENS_FILE"] = str(self.dir / "tokens")

    @property
    def scheme(self) -> str:
        return "https" if self.cacert else "http"

    @property
    def endpoints(self) -> List[str]:
        return [f"{self.scheme}://127.0.0.1:{p}" for p in self.ports]

    def start(self) -> "Cluster":
        for i in range(len(self.names)):
            self.spawn(i)
        self.wait_ready()
        return self

    def spawn(self, i: int) -> None:
        name = self.names[i]
        env = dict(os.environ)
        env.update(self.env)
        env.update(
            NODE_ID=name,
            NODE_PORT=str(self.ports[i]),
            NODE_BIND="127.0.0.1",
            CLUSTER_ADDRS=",".join(f"127.0.0.1:{p}" for p in self.ports),
            DATA_DIR=str(self.dir / name),
        )
        if self.cacert:
            env["TLS_CERT_FILE"] = str(self.dir / "certs" / f"{name}.pem")
            env["TLS_KEY_FILE"] = str(self.dir / "certs" / f"{name}-key.pem")
        log = open(self.dir / f"{name}.log", "ab")
        self.procs[i] = subprocess.Popen([str(sinkron_bin()), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.procs[i] = None

    def _get(self, i: int, path: str) -> int:
        context = ssl.create_default_context(cafile=self.cacert) if self.cacert else None
        try:
            with urllib.request.urlopen(self.endpoints[i] + path, timeout=2, context=context) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def wait_ready(self, within_s: float = 60.0) -> None:
        """Until every running node is ready and the queues are set up."""
        deadline = time.monotonic() + within_s
        running = [i for i, p in enumerate(self.procs) if p is not None]
        while time.monotonic() < deadline:
            # /v1/ring needs a token when tokens are on; readiness is enough then.
            if all(self._get(i, "/ready") == 200 for i in running) and all(
                self._get(i, "/v1/ring") in (200, 401) for i in running
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ready:\n" + self.logs())

    def logs(self, lines: int = 30) -> str:
        out = []
        for name in self.names:
            path = self.dir / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)
