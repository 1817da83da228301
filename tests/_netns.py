"""A real two-node Ray cluster on one machine: each node in a network namespace of its own.

The namespaces are joined by a veth pair with addresses of our choosing; nothing is sent to the
machine's own interfaces. Every node is a ``ray start --block`` in a process group of its own, so
a node is stopped (or killed, as a lost machine would be) by its group, never with ``ray stop``
(which would stop every Ray process on the host). Needs root and iproute2; the tests that use it
are skipped only when the user sets ``ATTNLAB_SKIP_NETNS=1``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.stack import _pids_naming, _spawn, _stop_group, ensure_token

BIN = Path(sys.executable).parent


def why_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (Debian package iproute2) is missing: make install-services"
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@dataclass
class Node:
    name: str  # process-group record in the state folder
    netns: str
    addr: str
    temp_dir: str


@dataclass
class TwoNodeCluster:
    state: Path
    head: Node
    worker: Node
    port: int = 6379
    mlflow_port: int = 5000
    nodes_up: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.head.addr}:{self.port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.head.addr}:{self.mlflow_port}"

    @property
    def mlflow_store(self) -> str:
        return f"sqlite:///{self.state / 'mlflow.db'}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ensure_token(self.state)),
                    "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
        return env

    def exec(self, node: Node, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", node.netns, *cmd]

    def run_in(self, node: Node, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900,
               **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.exec(node, cmd), env=env or self.env(), capture_output=True, text=True,
                              timeout=timeout, **kw)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        suffix = f"{os.getpid() % 100000}"
        _ip("netns", "add", self.head.netns)
        _ip("netns", "add", self.worker.netns)
        vh, vw = f"vah{suffix}", f"vaw{suffix}"
        _ip("link", "add", vh, "type", "veth", "peer", "name", vw)
        for node, dev in ((self.head, vh), (self.worker, vw)):
            _ip("link", "set", dev, "netns", node.netns)
            _ip("-n", node.netns, "addr", "add", f"{node.addr}/24", "dev", dev)
            _ip("-n", node.netns, "link", "set", dev, "up")
            _ip("-n", node.netns, "link", "set", "lo", "up")
        env = self.env()
        _spawn(self.state, "mlflow", self.exec(self.head, [
            str(BIN / "mlflow"), "server", "--host", self.head.addr, "--port", str(self.mlflow_port),
            "--workers", "1", "--backend-store-uri", self.mlflow_store,
            "--artifacts-destination", str(self.state / "artifacts"), "--serve-artifacts"]), env)
        _spawn(self.state, self.head.name, self.exec(self.head, [
            str(BIN / "ray"), "start", "--head", "--block", f"--port={self.port}",
            f"--node-ip-address={self.head.addr}", "--num-cpus=1", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={self.head.temp_dir}"]), env)
        self._wait_nodes(1)
        self.start_worker()
        self._wait_mlflow()

    def start_worker(self) -> None:
        _spawn(self.state, self.worker.name, self.exec(self.worker, [
            str(BIN / "ray"), "start", "--block", f"--address={self.address}",
            f"--node-ip-address={self.worker.addr}", "--num-cpus=1", "--disable-usage-stats",
            f"--temp-dir={self.worker.temp_dir}"]), self.env())
        self._wait_nodes(2)

    def _wait_nodes(self, n: int, timeout: float = 180) -> None:
        t0 = time.time()
        out = ""
        while time.time() - t0 < timeout:
            r = self.run_in(self.head, [str(BIN / "python"), "-c",
                                        "import ray, json; ray.init(address=%r, logging_level='ERROR'); "
                                        "print('NODES', json.dumps([x['NodeManagerAddress'] for x in ray.nodes() "
                                        "if x['Alive']]))" % self.address], timeout=120)
            out = r.stdout + r.stderr
            for line in r.stdout.splitlines():
                if line.startswith("NODES "):
                    self.nodes_up = json.loads(line[6:])
                    if len(self.nodes_up) >= n:
                        return
            time.sleep(2)
        raise RuntimeError(f"{n} Ray node(s) not up after {timeout:.0f}s: {out[-1500:]}")

    def _wait_mlflow(self, timeout: float = 120) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            r = self.run_in(self.head, ["curl", "-sf", f"{self.mlflow_url}/health"], timeout=10) \
                if shutil.which("curl") else self.run_in(self.head, [str(BIN / "python"), "-c",
                    f"import urllib.request; urllib.request.urlopen('{self.mlflow_url}/health', timeout=3)"], timeout=20)
            if r.returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError(f"MLflow server not healthy at {self.mlflow_url}")

    def kill_worker(self) -> None:
        """The worker machine is lost: SIGKILL its whole process group at once."""
        pidfile = self.state / f"{self.worker.name}.pid"
        pgid = int(pidfile.read_text().split()[0])
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        for name in (self.worker.name, self.head.name, "mlflow"):
            _stop_group(self.state, name, grace=10)
        for pid in _pids_naming(self.head.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in (self.head.netns, self.worker.netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for node in (self.head, self.worker):
            shutil.rmtree(node.temp_dir, ignore_errors=True)  # the nodes' Ray logs and session files


def make_cluster(state: Path) -> TwoNodeCluster:
    tag = f"{os.getpid() % 100000}"
    return TwoNodeCluster(
        state=state,
        head=Node("ray-head", f"attnlab-h{tag}", "10.213.77.1", f"/tmp/ray-nh{tag}"),
        worker=Node("ray-worker", f"attnlab-w{tag}", "10.213.77.2", f"/tmp/ray-nw{tag}"),
    )
