"""Real node processes on loopback for integration tests, stopped by process id."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server import launcher

PORT_RANGE = (20000, 40000)


def free_base_port(node_count: int, groups: int = launcher.PARTITION_GROUPS_DEFAULT) -> int:
    """A base port whose client and Raft ports (see launcher) are all free now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(*PORT_RANGE) // 10 * 10
        ports = [base + i for i in range(node_count)]
        ports += [
            base + launcher.RAFT_PORT_OFFSET + i * launcher.RAFT_PORTS_PER_NODE + g
            for i in range(node_count)
            for g in range(groups)
        ]
        if all(_bindable(port) for port in ports):
            return base
    raise RuntimeError("no free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((launcher.HOST, port))
        except OSError:
            return False
    return True


class Cluster:
    def __init__(self, data: Path, node_count: int, **options: Any) -> None:
        self.data = data
        self.node_count = node_count
        self.options = options
        groups = options.get("partition_groups", launcher.PARTITION_GROUPS_DEFAULT)
        self.base_port = free_base_port(node_count, groups)
        self.nodes: list[launcher.LocalNode] = []

    @property
    def hosts(self) -> list[tuple[str, int]]:
        return [(launcher.HOST, node.port) for node in self.nodes]

    def start(self) -> None:
        self.nodes = launcher.start(
            self.data, self.node_count, self.base_port, quiet=True, **self.options
        )

    def node(self, node_id: str) -> launcher.LocalNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def kill(self, node_id: str, signum: int = signal.SIGKILL) -> None:
        node = self.node(node_id)
        pid = node.pid()
        assert pid is not None
        os.kill(pid, signum)
        deadline = time.monotonic() + 30
        while node.alive():
            assert time.monotonic() < deadline, f"{node_id} did not die"
            time.sleep(0.05)  # polling the process's exit under a deadline

    def restart(self, node_id: str) -> None:
        launcher.spawn(self.node(node_id))

    def wait_stable(self, timeout_s: float = 90.0) -> None:
        launcher.wait_stable(self.nodes, timeout_s, quiet=True)

    def stop(self) -> None:
        launcher.stop(self.data)


@contextmanager
def running_cluster(data: Path, node_count: int = 3, **options: Any) -> Iterator[Cluster]:
    cluster = Cluster(data, node_count, **options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
