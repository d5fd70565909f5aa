"""The node's TOML config: this node, the cluster's nodes, the namespaces.

```toml
[node]
id = "n1"                      # must be one of cluster.nodes
data-dir = "data/n1"
secret = "..."                 # the cluster secret: encrypts and authenticates Raft traffic
log-file = "data/n1/node.log"  # optional: JSON lines
log-compaction-entries = 5000  # optional: Raft log entries kept before a snapshot

[[cluster.nodes]]              # every node of the cluster (static membership), seeds included
id = "n1"
listen = "127.0.0.1:3000"      # client port
raft-host = "127.0.0.1"        # Raft binds here only
raft-port-base = 4000          # partition group k uses raft-port-base + k

[[namespaces]]
name = "test"
replication-factor = 3
partition-groups = 2
strong-consistency = true
commit-to-device = false
default-ttl = 0
max-record-size = 1048576
tomb-raider-period = 86400
```

Every problem is reported as one `ConfigError` line naming the option.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError

GROUPS_PER_NODE_MAX = 256  # each group is a Raft port and a tick thread on every replica
SECRET_CHARS_MIN = 16


class ConfigError(Exception):
    """A config problem, in one line that names the option."""


Fail = Callable[[str], ConfigError]


@dataclass(frozen=True, slots=True)
class NodeAddress:
    node_id: str
    host: str
    port: int
    raft_host: str
    raft_port_base: int

    def raft_address(self, group_index: int) -> str:
        return f"{self.raft_host}:{self.raft_port_base + group_index}"


@dataclass(frozen=True, slots=True)
class GroupPlacement:
    """Partition group `group` of `namespace`: its global index and its replicas."""

    namespace: str
    group: int
    index: int  # over all namespaces: picks the Raft port
    replicas: tuple[str, ...]  # node ids; replicas[0] is the preferred leader

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.group}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    secret: str
    nodes: tuple[NodeAddress, ...]
    namespaces: tuple[NamespaceConfig, ...]
    log_file: Path | None = None
    log_compaction_entries: int = 5000

    @property
    def me(self) -> NodeAddress:
        return next(n for n in self.nodes if n.node_id == self.node_id)

    def node(self, node_id: str) -> NodeAddress:
        return next(n for n in self.nodes if n.node_id == node_id)

    def namespace(self, name: str) -> NamespaceConfig | None:
        return next((ns for ns in self.namespaces if ns.name == name), None)

    def placements(self) -> list[GroupPlacement]:
        """Every group of every namespace, replicas chosen round-robin over sorted nodes."""
        node_ids = sorted(n.node_id for n in self.nodes)
        placements = []
        index = 0
        for namespace in self.namespaces:
            for group in range(namespace.partition_groups):
                replicas = tuple(
                    node_ids[(index + i) % len(node_ids)]
                    for i in range(namespace.replication_factor)
                )
                placements.append(GroupPlacement(namespace.name, group, index, replicas))
                index += 1
        return placements


NAMESPACE_OPTIONS = {
    "name": "name",
    "replication-factor": "replication_factor",
    "partition-groups": "partition_groups",
    "strong-consistency": "strong_consistency",
    "commit-to-device": "commit_to_device",
    "default-ttl": "default_ttl_s",
    "max-record-size": "max_record_bytes",
    "tomb-raider-period": "tomb_raider_period_s",
}


def load(path: Path) -> NodeConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, base=path.parent, source=str(path))


def parse(raw: dict[str, Any], *, base: Path, source: str = "config") -> NodeConfig:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {message}")

    _only(raw, {"node", "cluster", "namespaces"}, "top level", fail)
    node = _table(raw, "node", fail)
    _only(node, {"id", "data-dir", "secret", "log-file", "log-compaction-entries"}, "[node]", fail)
    nodes = tuple(_node_address(entry, fail) for entry in _cluster_nodes(raw, fail))
    node_id = _text(node, "id", "[node] id", fail)
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise fail("cluster.nodes: node ids must be unique")
    if node_id not in ids:
        raise fail(f"[node] id {node_id!r} is not one of cluster.nodes ({', '.join(ids)})")
    secret = _text(node, "secret", "[node] secret", fail)
    if len(secret) < SECRET_CHARS_MIN:
        raise fail(f"[node] secret must be at least {SECRET_CHARS_MIN} characters")
    namespaces = tuple(_namespace(entry, len(nodes), fail) for entry in _namespaces(raw, fail))
    if len({ns.name for ns in namespaces}) != len(namespaces):
        raise fail("namespaces: names must be unique")
    total_groups = sum(ns.partition_groups for ns in namespaces)
    if total_groups > GROUPS_PER_NODE_MAX:
        raise fail(f"namespaces: {total_groups} partition groups, at most {GROUPS_PER_NODE_MAX}")
    log_file = node.get("log-file")
    compaction = node.get("log-compaction-entries", 5000)
    if not isinstance(compaction, int) or isinstance(compaction, bool) or compaction < 10:
        raise fail("[node] log-compaction-entries must be an int >= 10")
    return NodeConfig(
        node_id=node_id,
        data_dir=base / _text(node, "data-dir", "[node] data-dir", fail),
        secret=secret,
        nodes=nodes,
        namespaces=namespaces,
        log_file=None if log_file is None else base / str(log_file),
        log_compaction_entries=compaction,
    )


def _cluster_nodes(raw: dict[str, Any], fail: Fail) -> list[dict[str, Any]]:
    cluster = _table(raw, "cluster", fail)
    _only(cluster, {"nodes"}, "[cluster]", fail)
    entries = cluster.get("nodes")
    if not isinstance(entries, list) or not entries:
        raise fail("cluster.nodes: at least one [[cluster.nodes]] entry is needed")
    return entries


def _node_address(entry: Any, fail: Fail) -> NodeAddress:
    if not isinstance(entry, dict):
        raise fail("cluster.nodes: each entry is a table")
    _only(entry, {"id", "listen", "raft-host", "raft-port-base"}, "[[cluster.nodes]]", fail)
    node_id = _text(entry, "id", "cluster.nodes id", fail)
    where = f"cluster.nodes {node_id!r}"
    host, port = _host_port(_text(entry, "listen", f"{where} listen", fail), where, fail)
    raft_host = _text(entry, "raft-host", f"{where} raft-host", fail)
    raft_port_base = entry.get("raft-port-base")
    if not isinstance(raft_port_base, int) or not 1 <= raft_port_base <= 65535:
        raise fail(f"{where} raft-port-base must be a port number")
    return NodeAddress(node_id, host, port, raft_host, raft_port_base)


def _namespaces(raw: dict[str, Any], fail: Fail) -> list[dict[str, Any]]:
    entries = raw.get("namespaces")
    if not isinstance(entries, list) or not entries:
        raise fail("namespaces: at least one [[namespaces]] entry is needed")
    return entries


def _namespace(entry: Any, node_count: int, fail: Fail) -> NamespaceConfig:
    if not isinstance(entry, dict):
        raise fail("namespaces: each entry is a table")
    _only(entry, set(NAMESPACE_OPTIONS), "[[namespaces]]", fail)
    name = entry.get("name", "?")
    options: dict[str, Any] = {}
    for option, attribute in NAMESPACE_OPTIONS.items():
        if option in entry:
            value = entry[option]
            expected: type = int
            if option in ("strong-consistency", "commit-to-device"):
                expected = bool
            elif option == "name":
                expected = str
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise fail(f"namespace {name!r} {option} must be {expected.__name__}")
            options[attribute] = value
    if "name" not in options:
        raise fail("namespaces: every namespace needs a name")
    try:
        namespace = NamespaceConfig(**options)
    except RaftstoreError as exc:
        raise fail(f"namespace {name!r}: {exc.msg}") from None
    if namespace.replication_factor > node_count:
        raise fail(
            f"namespace {name!r} replication-factor {namespace.replication_factor} is more "
            f"than the {node_count} nodes of the cluster"
        )
    if not namespace.strong_consistency:
        raise fail(f"namespace {name!r} strong-consistency false is not supported")
    return namespace


def _table(raw: dict[str, Any], key: str, fail: Fail) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise fail(f"[{key}] section is missing")
    return value


def _text(table: dict[str, Any], key: str, what: str, fail: Fail) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise fail(f"{what} is missing or not a string")
    return value


def _host_port(text: str, where: str, fail: Fail) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise fail(f"{where} listen must be host:port, not {text!r}")
    return host, int(port)


def _only(table: dict[str, Any], allowed: set[str], where: str, fail: Fail) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise fail(f"{where}: unknown option {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
