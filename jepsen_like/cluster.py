"""A raftstore cluster for one run: real node processes, each stopped and signalled by pid.

Rules:
- Nodes are started and stopped by `raftstore cluster start|start-node|stop` (the launcher,
  run as `python -m server.cli` in a subprocess: jepsen_like does not import server), so
  there is one way to lay out and spawn a node. Signals (SIGKILL, SIGSTOP, SIGCONT) go to the
  pid in the node's pid file, and only after /proc says that pid runs this node's config:
  a pid reused by another process is never signalled.
- With a `Namespace`, node k listens on 127.0.0.(10+k) inside it and runs with its group id
  (see netns); the caller's thread must be inside the namespace (`namespace.entered()`) to
  talk to the nodes. Without one, every node is on 127.0.0.1 with ports of its own.
- Every wait has a deadline; every command has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepsen_like.netns import Namespace
from raftstore.errors import RaftstoreError
from raftstore.wire import FrameReader, InfoMsg, decode_response, encode_request

# The launcher's layout (server/launcher.py), which jepsen_like may not import.
LOCALHOST = "127.0.0.1"
RAFT_PORT_OFFSET = 1000
RAFT_PORTS_PER_NODE = 256
PARTITION_GROUPS = 2
NAMESPACE = "test"
NODES_MAX = 9

BASE_PORT_IN_NAMESPACE = 3000  # a fresh namespace has every port free
PORT_RANGE = (20000, 40000)  # where a free base port is looked for on the host
START_TIMEOUT_S = 120.0  # the launcher itself waits up to 90 s for a stable cluster
COMMAND_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0  # the launcher waits up to 20 s for SIGTERM, then SIGKILLs
EXIT_WAIT_S = 10.0
INFO_TIMEOUT_S = 2.0
POLL_S = 0.1
ROOT = Path(__file__).resolve().parent.parent


class ClusterError(Exception):
    """The cluster could not be started, stopped or signalled; one line."""


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    host: str
    port: int
    directory: Path

    @property
    def config_path(self) -> Path:
        return self.directory / "node.toml"

    @property
    def pid_path(self) -> Path:
        return self.directory / "pid"


class Cluster:
    """`node_count` nodes under `data`, inside `namespace` when given."""

    def __init__(
        self,
        data: Path,
        node_count: int = 3,
        *,
        namespace: Namespace | None = None,
        base_port: int | None = None,
    ) -> None:
        if not 1 <= node_count <= NODES_MAX:
            raise ValueError(f"a cluster has 1..{NODES_MAX} nodes, not {node_count}")
        self.data = data.resolve()
        self.namespace = namespace
        if namespace is not None:
            if len(namespace.members) < node_count:
                raise ValueError(f"namespace {namespace.name} has too few addresses")
            hosts = [member.address for member in namespace.members[:node_count]]
            self.gids: list[int] | None = [m.gid for m in namespace.members[:node_count]]
            self.base_port = BASE_PORT_IN_NAMESPACE if base_port is None else base_port
        else:
            hosts = [LOCALHOST] * node_count
            self.gids = None
            self.base_port = free_base_port(node_count) if base_port is None else base_port
        self.nodes = tuple(
            Node(f"n{i}", hosts[i - 1], self.base_port + i - 1, self.data / f"n{i}")
            for i in range(1, node_count + 1)
        )
        self.paused: set[str] = set()

    @property
    def node_ids(self) -> list[str]:
        return [node.node_id for node in self.nodes]

    @property
    def hosts(self) -> list[tuple[str, int]]:
        """Seed addresses for the SDK: `client.connect({"hosts": cluster.hosts})`."""
        return [(node.host, node.port) for node in self.nodes]

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in this cluster")

    # -- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every node and wait until each says it is stable; stopped again on failure."""
        self._require_inside()
        argv = ["start", "--nodes", str(len(self.nodes)), "--base-port", str(self.base_port)]
        if self.namespace is not None and self.gids is not None:
            argv += ["--hosts", ",".join(node.host for node in self.nodes)]
            argv += ["--netns", self.namespace.name]
            argv += ["--gids", ",".join(str(gid) for gid in self.gids)]
        try:
            self._launcher(argv, START_TIMEOUT_S)
        except ClusterError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) by pid; resumes paused ones first."""
        for node in self.nodes:
            pid = self.pid(node.node_id)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self.paused.clear()
        if (self.data / "cluster.toml").exists():
            with contextlib.suppress(ClusterError):
                self._launcher(["stop"], STOP_TIMEOUT_S)
        for node in self.nodes:  # whatever the launcher could not stop
            with contextlib.suppress(ClusterError):
                self.kill(node.node_id)

    # -- processes ----------------------------------------------------------------------------

    def pid(self, node_id: str) -> int | None:
        """The node's pid when that process runs this node now; else None."""
        node = self.node(node_id)
        try:
            pid = int(node.pid_path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        return pid if _runs(pid, node.config_path) else None

    def alive(self, node_id: str) -> bool:
        return self.pid(node_id) is not None

    def kill(self, node_id: str) -> int | None:
        """SIGKILL the node and wait for it to exit; its former pid, or None if not running."""
        pid = self.pid(node_id)
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.paused.discard(node_id)
        self.wait_until(lambda: not self.alive(node_id), EXIT_WAIT_S, f"{node_id} exits")
        return pid

    def restart(self, node_id: str) -> int:
        """Start a node that is not running, on its data; its new pid. No wait."""
        self._launcher(["start-node", "--node", node_id], COMMAND_TIMEOUT_S)
        pid = self.pid(node_id)
        if pid is None:
            raise ClusterError(f"{node_id} exited at once; see {self.node(node_id).directory}")
        return pid

    def pause(self, node_id: str) -> int:
        """SIGSTOP the node; its pid."""
        return self._signal(node_id, signal.SIGSTOP, paused=True)

    def resume(self, node_id: str) -> int:
        """SIGCONT the node; its pid."""
        return self._signal(node_id, signal.SIGCONT, paused=False)

    def _signal(self, node_id: str, signum: signal.Signals, *, paused: bool) -> int:
        pid = self.pid(node_id)
        if pid is None:
            raise ClusterError(f"{node_id} is not running")
        os.kill(pid, signum)
        if paused:
            self.paused.add(node_id)
        else:
            self.paused.discard(node_id)
        return pid

    # -- asking the nodes ---------------------------------------------------------------------

    def info(self, node_id: str, command: str, *, timeout_s: float = INFO_TIMEOUT_S) -> Any:
        """One info command to one node; OSError or RaftstoreError when it does not answer."""
        node = self.node(node_id)
        return info(node.host, node.port, command, timeout_s=timeout_s)

    def status(self, node_id: str) -> dict[str, Any] | None:
        """The node's `status` (its groups: role, term, leader), or None if it does not answer."""
        if node_id in self.paused or not self.alive(node_id):
            return None
        try:
            answer = self.info(node_id, "status")
        except (OSError, RaftstoreError):
            return None
        return answer if isinstance(answer, dict) else None

    def groups(self) -> list[str]:
        """The partition groups' names: test/0, test/1, ..."""
        return [f"{NAMESPACE}/{group}" for group in range(PARTITION_GROUPS)]

    def leaders(self) -> dict[str, str | None]:
        """Each group's leader: of the answering nodes that say they lead it, the one with the
        highest term (a deposed leader may claim it a little longer, with an older term)."""
        claims: dict[str, tuple[int, str]] = {}
        for node_id in self.node_ids:
            answer = self.status(node_id)
            if answer is None:
                continue
            for group, state in answer.get("groups", {}).items():
                if state.get("role") != "leader":
                    continue
                term = int(state.get("term", 0))
                if group not in claims or term > claims[group][0]:
                    claims[group] = (term, node_id)
        return {group: claims[group][1] if group in claims else None for group in self.groups()}

    def leader_of(self, group: str) -> str | None:
        return self.leaders().get(group)

    def stable(self) -> bool:
        """Every running, unpaused node says each of its groups has a leader and is applied."""
        running = [n for n in self.node_ids if n not in self.paused and self.alive(n)]
        if not running:
            return False
        for node_id in running:
            try:
                answer = self.info(node_id, "cluster-stable")
            except (OSError, RaftstoreError):
                return False
            if not (isinstance(answer, dict) and answer.get("stable")):
                return False
        return True

    def wait_stable(self, timeout_s: float) -> None:
        self.wait_until(self.stable, timeout_s, "the cluster is stable")

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `condition` until it holds; ClusterError naming `what` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise ClusterError(f"not within {timeout_s:.0f} s: {what}")
            time.sleep(POLL_S)  # polling a condition under a deadline

    # -- helpers ------------------------------------------------------------------------------

    def _require_inside(self) -> None:
        if self.namespace is not None and not self.namespace.is_current():
            raise ClusterError(
                f"enter namespace {self.namespace.name} first "
                "(with namespace.entered(): ...): the nodes are reachable only inside it"
            )

    def _launcher(self, argv: Sequence[str], timeout_s: float) -> str:
        command = [sys.executable, "-m", "server.cli", "cluster", *argv, "--data", str(self.data)]
        if self.namespace is not None:
            command = self.namespace.command(command)
        try:
            done = subprocess.run(  # noqa: S603 - our own interpreter and module
                command,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(
                f"raftstore cluster {argv[0]}: no answer in {timeout_s:.0f} s"
            ) from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise ClusterError(f"raftstore cluster {argv[0]}: {reason}")
        return done.stdout


def info(host: str, port: int, command: str, *, timeout_s: float) -> Any:
    """One info request on a fresh connection."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(encode_request(1, InfoMsg(command)))
        frames = FrameReader()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed before the answer")
            for body in frames.feed(data):
                _, response = decode_response(body)
                if response.code != 0:
                    raise RaftstoreError(response.message, code=response.code)
                return response.value


def free_base_port(node_count: int) -> int:
    """A base port whose client and Raft ports (the launcher's layout) are all free now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(*PORT_RANGE) // 10 * 10
        ports = [base + i for i in range(node_count)]
        ports += [
            base + RAFT_PORT_OFFSET + i * RAFT_PORTS_PER_NODE + group
            for i in range(node_count)
            for group in range(PARTITION_GROUPS)
        ]
        if all(_bindable(port) for port in ports):
            return base
    raise ClusterError("no free ports found for the cluster")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def _runs(pid: int, config_path: Path) -> bool:
    """Whether `pid` is a live (not zombie) process of the node whose config is given."""
    proc = Path(f"/proc/{pid}")
    if not proc.parent.is_dir():  # no /proc: trust the kernel's word that the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = (proc / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        arguments = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # our child: reap it
        return False
    return os.fsencode(str(config_path)) in arguments
