"""Policy and meta dicts, in the official client's names, turned into typed values.

Rules:
- A policy is a dict of the official client's keys. Each method takes one *kind* of policy
  (`read`, `write`, `operate`, `remove`, `batch`, `batch_write`, `batch_remove`, `scan`,
  `info`); a key that kind does not know is a ParamError naming the allowed ones, never
  silently ignored. Values are checked (type and range) the same way.
- The policy in effect for a call is: the built-in defaults of its kind, overlaid with the
  config's `policies[kind]`, overlaid with the call's `policy` dict.
- Timeouts are milliseconds; 0 means "no limit" (the official meaning). `total_timeout`
  bounds a whole call with its retries (for `scan`: each page), `socket_timeout` one attempt.
- `max_retries` bounds retries after an attempt that reached, or may have reached, the server
  (a timeout, a connection lost after sending, an indeterminate code). Retries that are
  certain nothing happened (NOT_LEADER redirects, PARTITION_UNAVAILABLE, a refused connect)
  are bounded by `total_timeout` only. Writes default to 2 retries, unlike the official
  client's 0: every retry reuses the request's sequence number, and the server answers a
  repeat from its session table, so a retried write is applied at most once.
- `read_mode_sc` defaults to LINEARIZE (the official default is SESSION): a strongly
  consistent database should be linearizable unless asked otherwise.
- `durable_delete` is accepted and ignored: every delete here is durable (a tombstone).
- A meta dict is `{"gen": int, "ttl": int}`; `ttl` in meta wins over the policy's `ttl`
  (TTL_CLIENT_DEFAULT = use the policy's), `gen` is compared under the policy's `gen` mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from client.checks import check_choice, check_int, param_error
from raftstore import limits
from raftstore.clock import TTL_CLIENT_DEFAULT, TTL_DONT_UPDATE, TTL_NAMESPACE_DEFAULT
from raftstore.policy import Exists, Gen, WritePolicy
from raftstore.wire import ReadMode

TIMEOUT_MS_MAX = 24 * 3600 * 1000
RETRIES_MAX = 1000

KEY_DIGEST, KEY_SEND = 0, 1


@dataclass(frozen=True, slots=True)
class Policy:
    """Every policy field of every kind; a kind reads the ones it allows."""

    total_timeout_ms: int = 1000
    socket_timeout_ms: int = 30000
    max_retries: int = 2
    sleep_between_retries_ms: int = 0
    read_mode: ReadMode = ReadMode.LINEARIZE
    send_key: bool = False
    exists: Exists = Exists.IGNORE
    gen: Gen = Gen.IGNORE
    generation: int = 0
    ttl: int = TTL_NAMESPACE_DEFAULT
    max_records: int = 0  # scan: records in all (0 = every record)

    def write_policy(self, meta: Meta | None = None) -> WritePolicy:
        """The engine's write policy for a write under this policy and `meta`."""
        ttl = self.ttl
        generation = self.generation
        if meta is not None:
            if meta.ttl is not None and meta.ttl != TTL_CLIENT_DEFAULT:
                ttl = meta.ttl
            if meta.gen is not None:
                generation = meta.gen
        return WritePolicy(
            exists=self.exists,
            gen=self.gen,
            generation=generation,
            ttl=ttl,
            send_key=self.send_key,
        )


@dataclass(frozen=True, slots=True)
class Meta:
    gen: int | None = None
    ttl: int | None = None


_COMMON = frozenset({"total_timeout", "socket_timeout", "max_retries", "sleep_between_retries"})
_WRITE = frozenset({"key", "exists", "gen", "ttl", "durable_delete"})

ALLOWED_KEYS: dict[str, frozenset[str]] = {
    "read": _COMMON | {"key", "read_mode_sc"},
    "write": _COMMON | _WRITE,
    "operate": _COMMON | _WRITE | {"read_mode_sc"},
    "remove": _COMMON | {"key", "gen", "generation", "durable_delete"},
    "batch": _COMMON | {"key", "read_mode_sc"},
    "batch_write": _COMMON | _WRITE,
    "batch_remove": _COMMON | {"key", "gen", "generation", "durable_delete"},
    "scan": _COMMON | {"read_mode_sc", "max_records"},
    "info": frozenset({"total_timeout", "socket_timeout"}),
}
KINDS = tuple(ALLOWED_KEYS)

DEFAULTS: dict[str, Policy] = {kind: Policy() for kind in KINDS}
DEFAULTS["scan"] = Policy(total_timeout_ms=30000)

_EXISTS_NAMES = {
    int(Exists.IGNORE): "POLICY_EXISTS_IGNORE",
    int(Exists.CREATE): "POLICY_EXISTS_CREATE",
    int(Exists.UPDATE): "POLICY_EXISTS_UPDATE",
    int(Exists.REPLACE): "POLICY_EXISTS_REPLACE",
    int(Exists.CREATE_OR_REPLACE): "POLICY_EXISTS_CREATE_OR_REPLACE",
}
_GEN_NAMES = {
    int(Gen.IGNORE): "POLICY_GEN_IGNORE",
    int(Gen.EQ): "POLICY_GEN_EQ",
    int(Gen.GT): "POLICY_GEN_GT",
}
_KEY_NAMES = {KEY_DIGEST: "POLICY_KEY_DIGEST", KEY_SEND: "POLICY_KEY_SEND"}
_READ_MODE_NAMES = {
    int(ReadMode.SESSION): "POLICY_READ_MODE_SC_SESSION",
    int(ReadMode.LINEARIZE): "POLICY_READ_MODE_SC_LINEARIZE",
}


def check_ttl(value: object, what: str, *, client_default: bool = False) -> int:
    """A ttl: seconds (1..10 years), or TTL_NAMESPACE_DEFAULT / NEVER_EXPIRE / DONT_UPDATE
    (and TTL_CLIENT_DEFAULT where a policy's ttl can stand behind it)."""
    low = TTL_CLIENT_DEFAULT if client_default else TTL_DONT_UPDATE
    return check_int(value, what, low, limits.TTL_SECONDS_MAX)


def _timeout(value: object, what: str) -> int:
    return check_int(value, what, 0, TIMEOUT_MS_MAX)


def _read_mode(value: object, what: str) -> int:
    if value in (2, 3) and not isinstance(value, bool):
        raise param_error(
            f"{what} {value} (ALLOW_REPLICA / ALLOW_UNAVAILABLE) is not supported: "
            "only the leader answers strongly consistent reads"
        )
    return check_choice(value, what, _READ_MODE_NAMES)


def _check_bool(policy: Policy, value: object, what: str) -> Policy:
    if not isinstance(value, bool):
        raise param_error(f"{what} must be a bool, not {type(value).__name__}")
    return policy


_Setter = Callable[[Policy, Any, str], Policy]

_SETTERS: dict[str, _Setter] = {
    "total_timeout": lambda p, v, w: replace(p, total_timeout_ms=_timeout(v, w)),
    "socket_timeout": lambda p, v, w: replace(p, socket_timeout_ms=_timeout(v, w)),
    "sleep_between_retries": lambda p, v, w: replace(p, sleep_between_retries_ms=_timeout(v, w)),
    "max_retries": lambda p, v, w: replace(p, max_retries=check_int(v, w, 0, RETRIES_MAX)),
    "key": lambda p, v, w: replace(p, send_key=check_choice(v, w, _KEY_NAMES) == KEY_SEND),
    "read_mode_sc": lambda p, v, w: replace(p, read_mode=ReadMode(_read_mode(v, w))),
    "exists": lambda p, v, w: replace(p, exists=Exists(check_choice(v, w, _EXISTS_NAMES))),
    "gen": lambda p, v, w: replace(p, gen=Gen(check_choice(v, w, _GEN_NAMES))),
    "generation": lambda p, v, w: replace(p, generation=check_int(v, w, 0, limits.GENERATION_MAX)),
    "ttl": lambda p, v, w: replace(p, ttl=check_ttl(v, w)),
    "durable_delete": _check_bool,
    "max_records": lambda p, v, w: replace(p, max_records=check_int(v, w, 0, limits.INT_MAX)),
}
assert set().union(*ALLOWED_KEYS.values()) == set(_SETTERS), "a setter for every policy key"


def resolve(kind: str, base: Policy, given: object) -> Policy:
    """`base` overlaid with the policy dict `given` (None: `base` unchanged)."""
    assert kind in ALLOWED_KEYS, kind
    if given is None:
        return base
    if not isinstance(given, Mapping):
        raise param_error(f"{kind} policy must be a dict, not {type(given).__name__}")
    allowed = ALLOWED_KEYS[kind]
    policy = base
    for name, value in given.items():
        if name not in allowed:
            raise param_error(
                f"unknown {kind} policy key {name!r}; allowed: {', '.join(sorted(allowed))}"
            )
        policy = _SETTERS[name](policy, value, f"{kind} policy {name!r}")
    return policy


def parse_meta(meta: object) -> Meta | None:
    """A write's meta dict, `{"gen": int, "ttl": int}`, either key optional."""
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise param_error(f"meta must be a dict, not {type(meta).__name__}")
    unknown = set(meta) - {"gen", "ttl"}
    if unknown:
        raise param_error(f"unknown meta key(s) {sorted(map(str, unknown))}; allowed: gen, ttl")
    gen = meta.get("gen")
    ttl = meta.get("ttl")
    return Meta(
        gen=None if gen is None else check_int(gen, "meta 'gen'", 0, limits.GENERATION_MAX),
        ttl=None if ttl is None else check_ttl(ttl, "meta 'ttl'", client_default=True),
    )
