"""A local cluster under one data directory: start, status, stop.

Layout of `--data DIR` (default ./data):
    cluster.toml   the cluster's secret, node count and base port (made at the first start),
                   and optionally where and how the nodes run (see below)
    cluster.json   {"hosts": [["127.0.0.1", port], ...]} for programs that connect
    nN/node.toml   node N's config;  nN/pid  its process id;  nN/node.log  its JSON log;
    nN/stderr.log  whatever the process wrote to stderr
Nodes are stopped by the process ids in their pid files, never by name.

Optional keys of cluster.toml, for the checker (`jepsen_like`), which runs a cluster inside a
network namespace of its own:
    hosts = ["127.0.0.11", ...]   node N listens (client and Raft) on hosts[N-1], not 127.0.0.1
    netns = "jl-..."              each node runs under `ip netns exec NAME`
    gids = [4211, ...]            node N runs with group id gids[N-1], so that nftables can
                                  tell its sockets apart (`meta skgid`)
`hosts` is fixed at the first start (it is in every node.toml); `netns` and `gids` given to a
later start replace the stored ones.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftstore.errors import RaftstoreError
from raftstore.wire import FrameReader, InfoMsg, decode_response, encode_request

NAMESPACE_DEFAULT = "test"
# 2 cores: the fewest groups that still cross. Fewer groups make larger log entries (64 writes
# in flight: 20 a log entry at 2 groups, 8 at 4) and fewer Raft threads: 2 groups wrote about
# 1.6x as fast as 4 (benchmarks/bench_cluster.py).
PARTITION_GROUPS_DEFAULT = 2
RAFT_PORT_OFFSET = 1000
RAFT_PORTS_PER_NODE = 256
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
HOST = "127.0.0.1"
NETNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
GID_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class LocalNode:
    node_id: str
    directory: Path
    port: int
    host: str = HOST
    netns: str | None = None  # run under `ip netns exec netns`
    gid: int | None = None  # run with this group id

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
    count = int(raw["nodes"])
    hosts = raw.get("hosts", [HOST] * count)
    gids: list[int | None] = list(raw.get("gids", [None] * count))
    netns = raw.get("netns")
    return [
        LocalNode(f"n{i}", data / f"n{i}", base_port + i - 1, hosts[i - 1], netns, gids[i - 1])
        for i in range(1, count + 1)
    ]


def _checked_launch(
    node_count: int,
    hosts: Sequence[str] | None,
    netns: str | None,
    gids: Sequence[int] | None,
) -> tuple[list[str], str | None, list[int] | None]:
    """The optional host, namespace and group options, checked (they go into TOML)."""
    checked_hosts = [HOST] * node_count
    if hosts is not None:
        if len(hosts) != node_count:
            raise LauncherError(f"--hosts names {len(hosts)} addresses for {node_count} nodes")
        try:
            checked_hosts = [str(ipaddress.ip_address(host)) for host in hosts]
        except ValueError as exc:
            raise LauncherError(f"--hosts: {exc}") from None
    if netns is not None and not NETNS_NAME.fullmatch(netns):
        raise LauncherError(f"--netns {netns!r}: a name of letters, digits, '_', '.', '-'")
    if gids is not None and (
        len(gids) != node_count or not all(0 < gid <= GID_MAX for gid in gids)
    ):
        raise LauncherError(f"--gids must be {node_count} group ids, each 1..{GID_MAX}")
    return checked_hosts, netns, None if gids is None else list(gids)


def _settings_text(
    *,
    secret: str,
    node_count: int,
    base_port: int,
    hosts: list[str],
    netns: str | None,
    gids: list[int] | None,
) -> str:
    text = f'secret = "{secret}"\nnodes = {node_count}\nbase-port = {base_port}\n'
    if hosts != [HOST] * node_count:
        text += f"hosts = {json.dumps(hosts)}\n"
    if netns is not None:
        text += f'netns = "{netns}"\n'
    if gids is not None:
        text += f"gids = {json.dumps(gids)}\n"
    return text


def write_configs(
    data: Path,
    node_count: int,
    base_port: int,
    *,
    compaction_entries: int = 5000,
    commit_to_device: bool = False,
    partition_groups: int = PARTITION_GROUPS_DEFAULT,
    hosts: Sequence[str] | None = None,
    netns: str | None = None,
    gids: Sequence[int] | None = None,
) -> list[LocalNode]:
    """Make the cluster's configs at its first start; later starts reuse them.

    `hosts` (one address per node, default 127.0.0.1 for all), `netns` and `gids`: see the
    module's notes on cluster.toml."""
    checked_hosts, netns, checked_gids = _checked_launch(node_count, hosts, netns, gids)
    settings = data / "cluster.toml"
    if settings.exists():
        raw = tomllib.loads(settings.read_text(encoding="utf-8"))
        if raw["nodes"] != node_count or raw["base-port"] != base_port:
            raise LauncherError(
                f"{data} holds a cluster of {raw['nodes']} nodes at base port "
                f"{raw['base-port']}; use those options or another --data"
            )
        stored_hosts = raw.get("hosts", [HOST] * node_count)
        if hosts is not None and stored_hosts != checked_hosts:
            raise LauncherError(
                f"{data} holds a cluster on hosts {', '.join(stored_hosts)}; "
                "use those or another --data"
            )
        if netns is not None or checked_gids is not None:
            settings.write_text(
                _settings_text(
                    secret=raw["secret"],
                    node_count=node_count,
                    base_port=base_port,
                    hosts=stored_hosts,
                    netns=raw.get("netns") if netns is None else netns,
                    gids=raw.get("gids") if checked_gids is None else checked_gids,
                ),
                encoding="utf-8",
            )
        return cluster_nodes(data)
    data.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(24)
    settings.write_text(
        _settings_text(
            secret=secret,
            node_count=node_count,
            base_port=base_port,
            hosts=checked_hosts,
            netns=netns,
            gids=checked_gids,
        ),
        encoding="utf-8",
    )
    settings.chmod(0o600)
    nodes = cluster_nodes(data)
    members = "".join(
        f'\n[[cluster.nodes]]\nid = "{n.node_id}"\nlisten = "{n.host}:{n.port}"\n'
        f'raft-host = "{n.host}"\n'
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
            f"partition-groups = {partition_groups}\n"
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
    partition_groups: int = PARTITION_GROUPS_DEFAULT,
    hosts: Sequence[str] | None = None,
    netns: str | None = None,
    gids: Sequence[int] | None = None,
) -> list[LocalNode]:
    nodes = write_configs(
        data,
        node_count,
        base_port,
        compaction_entries=compaction_entries,
        commit_to_device=commit_to_device,
        partition_groups=partition_groups,
        hosts=hosts,
        netns=netns,
        gids=gids,
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
    hosts_json = {"hosts": [[n.host, n.port] for n in nodes]}
    (data / "cluster.json").write_text(json.dumps(hosts_json) + "\n", encoding="utf-8")
    return nodes


def start_node(data: Path, node_id: str) -> int:
    """Start one node of an existing cluster (after a crash or a kill); no wait."""
    node = next((n for n in cluster_nodes(data) if n.node_id == node_id), None)
    if node is None:
        raise LauncherError(f"no node {node_id} in {data}")
    if node.alive():
        raise LauncherError(f"node {node_id} already runs from {data} (pid {node.pid()})")
    return spawn(node)


def spawn(node: LocalNode) -> int:
    """Start one node's process, detached from this one; its pid goes to its pid file.

    With `node.netns` the process runs under `ip netns exec`, which execs (the pid is the
    node's); with `node.gid` it runs with that group id and no supplementary groups."""
    argv = [sys.executable, "-m", "server.cli", "server", "--config"]
    argv.append(str(node.config_path.resolve()))
    if node.netns is not None:
        ip = shutil.which("ip")
        if ip is None:
            raise LauncherError("`ip` (iproute2) is needed to run a node in a network namespace")
        argv = [ip, "netns", "exec", node.netns, *argv]
    with (node.directory / "stderr.log").open("ab") as stderr:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
            group=node.gid,
            extra_groups=None if node.gid is None else [],
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
        answer = info(node.host, node.port, "cluster-stable", timeout_s=2.0)
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
            "listen": [node.host, node.port],
            "leads": [],
        }
        if row["alive"]:
            try:
                answer = info(node.host, node.port, "status", timeout_s=3.0)
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
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Exited, but not yet reaped by its parent (pid 1 may take its time): not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False  # no /proc here: trust kill(pid, 0)
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
