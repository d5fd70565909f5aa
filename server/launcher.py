"""A local cluster under one data directory: start, status, stop.

Layout of `--data DIR` (default ./data):
    cluster.toml   the cluster's secret, node count and base port (made at the first start)
    cluster.json   {"hosts": [["127.0.0.1", port], ...]} for programs that connect
    nN/node.toml   node N's config;  nN/pid  its process id;  nN/node.log  its JSON log;
    nN/stderr.log  whatever the process wrote to stderr
Nodes are stopped by the process ids in their pid files, never by name.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftstore.errors import RaftstoreError
from raftstore.wire import FrameReader, InfoMsg, decode_response, encode_request

NAMESPACE_DEFAULT = "test"
PARTITION_GROUPS_DEFAULT = 4  # 2 cores: few Raft threads, yet several groups to cross
RAFT_PORT_OFFSET = 1000
RAFT_PORTS_PER_NODE = 256
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class LocalNode:
    node_id: str
    directory: Path
    port: int

    @property
    def config_path(self) -> Path:
        return self.directory / "node.toml"

    @property
    def pid_path(self) -> Path:
        return self.directory / "pid"

    def pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        return pid is not None and _process_alive(pid)


class LauncherError(Exception):
    """A problem to report in one line."""


def cluster_nodes(data: Path) -> list[LocalNode]:
    settings = data / "cluster.toml"
    if not settings.exists():
        return []
    raw = tomllib.loads(settings.read_text(encoding="utf-8"))
    base_port = int(raw["base-port"])
    return [
        LocalNode(f"n{i}", data / f"n{i}", base_port + i - 1) for i in range(1, raw["nodes"] + 1)
    ]


def write_configs(
    data: Path,
    node_count: int,
    base_port: int,
    *,
    compaction_entries: int = 5000,
    commit_to_device: bool = False,
) -> list[LocalNode]:
    """Make the cluster's configs at its first start; later starts reuse them."""
    settings = data / "cluster.toml"
    if settings.exists():
        raw = tomllib.loads(settings.read_text(encoding="utf-8"))
        if raw["nodes"] != node_count or raw["base-port"] != base_port:
            raise LauncherError(
                f"{data} holds a cluster of {raw['nodes']} nodes at base port "
                f"{raw['base-port']}; use those options or another --data"
            )
        return cluster_nodes(data)
    data.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(24)
    settings.write_text(
        f'secret = "{secret}"\nnodes = {node_count}\nbase-port = {base_port}\n', encoding="utf-8"
    )
    settings.chmod(0o600)
    nodes = cluster_nodes(data)
    members = "".join(
        f'\n[[cluster.nodes]]\nid = "{n.node_id}"\nlisten = "{HOST}:{n.port}"\n'
        f'raft-host = "{HOST}"\n'
        f"raft-port-base = {base_port + RAFT_PORT_OFFSET + i * RAFT_PORTS_PER_NODE}\n"
        for i, n in enumerate(nodes)
    )
    replication = min(3, node_count)
    for node in nodes:
        node.directory.mkdir(parents=True, exist_ok=True)
        node.config_path.write_text(
            f'[node]\nid = "{node.node_id}"\ndata-dir = "."\nsecret = "{secret}"\n'
            f'log-file = "node.log"\nlog-compaction-entries = {compaction_entries}\n'
            f'{members}\n[[namespaces]]\nname = "{NAMESPACE_DEFAULT}"\n'
            f"replication-factor = {replication}\n"
            f"partition-groups = {PARTITION_GROUPS_DEFAULT}\n"
            f"commit-to-device = {str(commit_to_device).lower()}\n",
            encoding="utf-8",
        )
        node.config_path.chmod(0o600)
    return nodes


def start(
    data: Path,
    node_count: int,
    base_port: int,
    *,
    quiet: bool = False,
    compaction_entries: int = 5000,
    commit_to_device: bool = False,
) -> list[LocalNode]:
    nodes = write_configs(
        data,
        node_count,
        base_port,
        compaction_entries=compaction_entries,
        commit_to_device=commit_to_device,
    )
    running = [n.node_id for n in nodes if n.alive()]
    if running:
        raise LauncherError(f"nodes {', '.join(running)} already run from {data}")
    for node in nodes:
        spawn(node)
    try:
        wait_stable(nodes, START_TIMEOUT_S, quiet=quiet)
    except LauncherError:
        stop(data)
        raise
    hosts = {"hosts": [[HOST, n.port] for n in nodes]}
    (data / "cluster.json").write_text(json.dumps(hosts) + "\n", encoding="utf-8")
    return nodes


def spawn(node: LocalNode) -> int:
    """Start one node's process, detached from this one; its pid goes to its pid file."""
    with (node.directory / "stderr.log").open("ab") as stderr:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "server.cli",
                "server",
                "--config",
                str(node.config_path.resolve()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    node.pid_path.write_text(f"{process.pid}\n", encoding="utf-8")
    return process.pid


def wait_stable(nodes: list[LocalNode], timeout_s: float, *, quiet: bool = False) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        dead = [n.node_id for n in nodes if not n.alive()]
        if dead:
            logs = ", ".join(str(n.directory / "stderr.log") for n in nodes if n.node_id in dead)
            raise LauncherError(f"nodes {', '.join(dead)} exited; see {logs}")
        unsettled = [n.node_id for n in nodes if not _stable(n)]
        if not unsettled:
            if not quiet:
                sys.stderr.write("\rcluster stable" + " " * 40 + "\n")
            return
        if time.monotonic() > deadline:
            raise LauncherError(f"not stable after {timeout_s:.0f} s: {', '.join(unsettled)}")
        if not quiet and sys.stderr.isatty():
            waited = timeout_s - (deadline - time.monotonic())
            sys.stderr.write(f"\rwaiting for leaders: {', '.join(unsettled)} ({waited:.0f} s) ")
            sys.stderr.flush()
        time.sleep(0.25)  # polling interval between probes of a deadline-bounded wait


def _stable(node: LocalNode) -> bool:
    try:
        answer = info(HOST, node.port, "cluster-stable", timeout_s=2.0)
    except (OSError, RaftstoreError):
        return False
    return isinstance(answer, dict) and bool(answer.get("stable"))


def status(data: Path) -> list[dict[str, Any]]:
    rows = []
    for node in cluster_nodes(data):
        row: dict[str, Any] = {
            "id": node.node_id,
            "pid": node.pid(),
            "alive": node.alive(),
            "listen": [HOST, node.port],
            "leads": [],
        }
        if row["alive"]:
            try:
                answer = info(HOST, node.port, "status", timeout_s=3.0)
                row["leads"] = answer["leads"]
                row["raft"] = answer["groups"]
            except (OSError, RaftstoreError, KeyError, TypeError) as exc:
                row["error"] = str(exc)
        rows.append(row)
    return rows


def stop(data: Path) -> list[str]:
    stopped = []
    nodes = cluster_nodes(data)
    for node in nodes:
        pid = node.pid()
        if pid is not None and _process_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for node in nodes:
        pid = node.pid()
        if pid is None:
            continue
        while _process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a process's exit under a deadline
        if _process_alive(pid):
            os.kill(pid, signal.SIGKILL)
        node.pid_path.unlink(missing_ok=True)
        stopped.append(node.node_id)
    return stopped


def info(host: str, port: int, command: str, *, timeout_s: float) -> Any:
    """One info request on a fresh connection (the launcher must not need a whole SDK)."""
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


def _process_alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        finished = 0  # not our child: ask the kernel instead
    if finished == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
