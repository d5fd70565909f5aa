"""The client's config dict, checked: hosts, default policies, timeouts, pool size.

    {"hosts": [(host, port), ...],              required, tried in order to bootstrap
     "policies": {"read": {...}, "write": {...}, ...},   optional: defaults per policy kind
     "timeout_ms": 1000,                        optional: connect timeout, and the timeout
                                                of partition-map fetches
     "max_conns_per_node": 8}                   optional: connections per node (each one
                                                carries many requests at once)

Unknown keys (in the config or in a policy) are a ParamError rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from client.checks import check_int, param_error
from client.policies import ALLOWED_KEYS, DEFAULTS, Policy, resolve
from client.routing import Address

CONFIG_KEYS = frozenset({"hosts", "policies", "timeout_ms", "max_conns_per_node"})
TIMEOUT_MS_DEFAULT = 1000
CONNS_PER_NODE_DEFAULT = 8
CONNS_PER_NODE_MAX = 1024
SEND_STALL_TIMEOUT_S = 10.0  # a send that makes no progress this long closes the connection


@dataclass(frozen=True, slots=True)
class Settings:
    hosts: tuple[Address, ...]
    policies: Mapping[str, Policy]
    timeout_ms: int = TIMEOUT_MS_DEFAULT
    max_conns_per_node: int = CONNS_PER_NODE_DEFAULT


def parse_config(config: object) -> Settings:
    if not isinstance(config, Mapping):
        raise param_error(f"config must be a dict, not {type(config).__name__}")
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise param_error(
            f"unknown config key(s) {sorted(map(str, unknown))}; "
            f"allowed: {', '.join(sorted(CONFIG_KEYS))}"
        )
    return Settings(
        hosts=_hosts(config.get("hosts")),
        policies=_policies(config.get("policies")),
        timeout_ms=check_int(
            config.get("timeout_ms", TIMEOUT_MS_DEFAULT), "config 'timeout_ms'", 1, 3_600_000
        ),
        max_conns_per_node=check_int(
            config.get("max_conns_per_node", CONNS_PER_NODE_DEFAULT),
            "config 'max_conns_per_node'",
            1,
            CONNS_PER_NODE_MAX,
        ),
    )


def _hosts(hosts: object) -> tuple[Address, ...]:
    if not isinstance(hosts, list | tuple) or not hosts:
        raise param_error("config 'hosts' must be a non-empty list of (host, port) tuples")
    parsed = []
    for entry in hosts:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise param_error(f"config host {entry!r} must be a (host, port) tuple")
        host, port = entry
        if not isinstance(host, str) or not host:
            raise param_error(f"config host {entry!r}: host must be a non-empty str")
        parsed.append((host, check_int(port, f"config host {host!r} port", 1, 65535)))
    return tuple(parsed)


def _policies(given: object) -> dict[str, Policy]:
    policies = dict(DEFAULTS)
    if given is None:
        return policies
    if not isinstance(given, Mapping):
        raise param_error(f"config 'policies' must be a dict, not {type(given).__name__}")
    for kind, policy in given.items():
        if kind not in ALLOWED_KEYS:
            raise param_error(
                f"unknown policy kind {kind!r} in config 'policies'; "
                f"allowed: {', '.join(ALLOWED_KEYS)}"
            )
        policies[kind] = resolve(kind, DEFAULTS[kind], policy)
    return policies
