"""The partition map: which node leads the partition group of a digest. Pure data.

The server's INFO "partition-map" value (and the map a NOT_LEADER answer carries) is:

    {"version": int,
     "nodes": {node_id: [host, port]},
     "namespaces": {ns: {"partition_groups": G,
                         "leaders": [node_id or None, one per group],
                         "replicas": [[node_id, ...], one per group]}}}

Partition p of a namespace belongs to group p % G. A request for a digest goes to the leader
of its group; a group with no leader (None) is unavailable for now.

Rules:
- The map comes from a peer, so `parse_partition_map` checks every field and raises a
  ProtocolError naming the problem; it never asserts.
- Node ids are compared as strings (a map may spell them as ints).
- A map replaces the one in use only if its version is not older (`supersedes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raftstore import limits
from raftstore.errors import RaftstoreError, ResultCode, error

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class NamespaceMap:
    partition_groups: int
    leaders: tuple[str | None, ...]
    replicas: tuple[tuple[str, ...], ...]

    def group_of(self, partition_id: int) -> int:
        return partition_id % self.partition_groups

    def leader_of(self, partition_id: int) -> str | None:
        return self.leaders[self.group_of(partition_id)]

    def replicas_of(self, partition_id: int) -> tuple[str, ...]:
        return self.replicas[self.group_of(partition_id)]

    def merged(self, newer: NamespaceMap) -> NamespaceMap:
        """`newer`, keeping our leader for the groups `newer` names none for: a node only
        knows the leaders of the groups it replicates, so its None means "not known here"."""
        if newer.partition_groups != self.partition_groups:
            return newer
        leaders = tuple(
            theirs if theirs is not None else ours
            for ours, theirs in zip(self.leaders, newer.leaders, strict=True)
        )
        return NamespaceMap(newer.partition_groups, leaders, newer.replicas)


@dataclass(frozen=True, slots=True)
class PartitionMap:
    version: int
    nodes: Mapping[str, Address]
    namespaces: Mapping[str, NamespaceMap]

    def leader(self, namespace: str, partition_id: int) -> str | None:
        """The node id leading `partition_id` of `namespace`, or None if there is none (or
        the namespace or the leader's address is unknown)."""
        space = self.namespaces.get(namespace)
        if space is None:
            return None
        node_id = space.leader_of(partition_id)
        return node_id if node_id in self.nodes else None

    def supersedes(self, other: PartitionMap | None) -> bool:
        return other is None or self.version >= other.version

    def replicas(self, namespace: str, partition_id: int) -> tuple[str, ...]:
        """The known replicas of the partition's group (those whose address is known)."""
        space = self.namespaces.get(namespace)
        if space is None:
            return ()
        return tuple(n for n in space.replicas_of(partition_id) if n in self.nodes)

    def without_leader(self, namespace: str, partition_id: int) -> PartitionMap:
        """This map with the partition's group leader forgotten (it said it does not lead)."""
        space = self.namespaces.get(namespace)
        if space is None:
            return self
        leaders = list(space.leaders)
        leaders[space.group_of(partition_id)] = None
        forgotten = NamespaceMap(space.partition_groups, tuple(leaders), space.replicas)
        return PartitionMap(self.version, self.nodes, {**self.namespaces, namespace: forgotten})

    def merged(self, received: PartitionMap) -> PartitionMap:
        """Our map updated by `received`, group by group: the leaders `received` names win
        (the node answering knows its own groups best), the ones it does not know are kept.
        Versions are sums of the terms a node knows, so they are not comparable between
        nodes with different groups: a merge, not a replacement by version."""
        namespaces = dict(self.namespaces)
        for name, space in received.namespaces.items():
            ours = namespaces.get(name)
            namespaces[name] = space if ours is None else ours.merged(space)
        nodes = {**self.nodes, **received.nodes}
        return PartitionMap(max(self.version, received.version), nodes, namespaces)


def _bad(msg: str) -> RaftstoreError:
    return error(ResultCode.PROTOCOL_ERROR, f"bad partition map: {msg}")


def _node_id(value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _bad(f"{what} must be a node id (str), not {type(value).__name__}")
    return str(value)


def _address(value: object, node_id: str) -> Address:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _bad(f"node {node_id!r} address must be [host, port]")
    host, port = value
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        raise _bad(f"node {node_id!r} address must be [str, int]")
    if not 0 < port < 65536:
        raise _bad(f"node {node_id!r} port {port} is out of range")
    return host, port


def _namespace(name: str, value: object) -> NamespaceMap:
    if not isinstance(value, Mapping):
        raise _bad(f"namespace {name!r} must be a dict")
    groups = value.get("partition_groups")
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise _bad(f"namespace {name!r} partition_groups must be an int")
    if not 1 <= groups <= limits.PARTITIONS:
        raise _bad(f"namespace {name!r} partition_groups {groups} is not 1..4096")
    leaders = value.get("leaders")
    replicas = value.get("replicas", [[] for _ in range(groups)])
    if not isinstance(leaders, list) or len(leaders) != groups:
        raise _bad(f"namespace {name!r} needs one leader entry per group")
    if not isinstance(replicas, list) or len(replicas) != groups:
        raise _bad(f"namespace {name!r} needs one replica list per group")
    if any(not isinstance(group, list) for group in replicas):
        raise _bad(f"namespace {name!r} replica entries must be lists")
    return NamespaceMap(
        partition_groups=groups,
        leaders=tuple(
            None if leader is None else _node_id(leader, f"{name!r} leader") for leader in leaders
        ),
        replicas=tuple(
            tuple(_node_id(node, f"{name!r} replica") for node in group) for group in replicas
        ),
    )


def parse_partition_map(value: Any) -> PartitionMap:
    if not isinstance(value, Mapping):
        raise _bad(f"expected a dict, got {type(value).__name__}")
    version = value.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad("version must be an int")
    nodes = value.get("nodes")
    spaces = value.get("namespaces")
    if not isinstance(nodes, Mapping) or not isinstance(spaces, Mapping):
        raise _bad("nodes and namespaces must be dicts")
    parsed_nodes: dict[str, Address] = {}
    for raw_id, address in nodes.items():
        node_id = _node_id(raw_id, "node id")
        parsed_nodes[node_id] = _address(address, node_id)
    parsed_spaces: dict[str, NamespaceMap] = {}
    for name, space in spaces.items():
        if not isinstance(name, str):
            raise _bad("namespace names must be str")
        parsed_spaces[name] = _namespace(name, space)
    return PartitionMap(version=version, nodes=parsed_nodes, namespaces=parsed_spaces)
