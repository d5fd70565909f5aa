"""Workloads: what an operation does to the database, and which checker judges the history.

Rules:
- A workload's client speaks to a `Database`, the slice of the SDK's `client.Client` it
  uses (get, put, operate, scan); tests pass a fake of the same shape.
- `invoke(database, invocation)` performs one operation and returns its `Completion`:
  - `ok`: it happened; for reads the value is what was read (a missing record reads None);
  - `fail`: it definitely did not happen: the SDK says the error is definite and, for a
    write, not in doubt (`exception.in_doubt` False), or a cas's compare did not hold (the
    value read differs, or the generation moved before the write: nothing was written);
  - `info`: anything else: a timeout, a lost connection, an in-doubt write, an error the
    table calls indeterminate. Never `fail` for those.
  Errors that are not the database's (our own bugs) propagate: the run then crashes.
- register: records `("test", "jl-register", "k<key>")` with one bin `v`. A cas is atomic on
  the server: read the value and generation; if the value is not the expected one, `fail`;
  else `operate` a write of the new value under the policy generation-EQ the generation
  read, which the server applies only if nobody wrote since. The history records it as
  `cas [old new]`. A failure of the cas's read that is not definite (a timeout) is `info`,
  although nothing was written then: the rule above, kept without exceptions. Every record
  carries the `key` field, so the history is checked per key with `--model cas-register`
  (no `--independent` needed).
- set: each add creates its own record `("test", "jl-set", element)` with bin `v` (exists
  CREATE), spreading the adds over every partition group; an add answered "record exists"
  is `info` (only this add's earlier attempt can have made it). A read, now and then during
  the run and at the end, is a scan of the set, returning the sorted elements. Checked with
  `--model set`; the final reads after the heal are the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import client
from client import operations
from jepsen_like.check import CheckOptions
from jepsen_like.generator import (
    REGISTER_KEYS_ACTIVE_DEFAULT,
    REGISTER_OPS_PER_KEY_DEFAULT,
    SET_READ_FRACTION_DEFAULT,
    Generator,
    Invocation,
    RegisterGenerator,
    SetGenerator,
)
from jepsen_like.history import freeze
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.ops import Op

Outcome = Literal["ok", "fail", "info"]
NAMESPACE = "test"
REGISTER_SET = "jl-register"
SET_SET = "jl-set"
BIN = "v"
NAMES = ("register", "set")
WAITING_FOR_TRANSACTIONS = ("bank", "list-append")


class Database(Protocol):
    """The part of `client.Client` the workloads use."""

    def get(
        self, key: object, policy: Mapping[str, Any] | None = None
    ) -> tuple[Any, dict[str, int], dict[str, Any]]: ...

    def put(
        self,
        key: object,
        bins: Mapping[str, Any],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None: ...

    def operate(
        self,
        key: object,
        ops: Sequence[Op],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[str, int], dict[str, Any]]: ...

    def scan(
        self,
        namespace: str,
        set: str | None = None,
        partitions: Sequence[int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Iterator[tuple[Any, dict[str, int], dict[str, Any]]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Completion:
    type: Outcome
    value: Any = None
    error: str | None = None


def error_completion(error: RaftstoreError, value: Any, *, wrote: bool) -> Completion:
    """`fail` for a definite error (and, if a write was sent, one not in doubt); else `info`."""
    definite = error.definite and not (wrote and error.in_doubt)
    return Completion("fail" if definite else "info", value, str(error))


def io_completion(error: OSError, value: Any) -> Completion:
    """A socket error that escaped the SDK: the outcome is unknown."""
    return Completion("info", value, f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class Workload:
    """A workload: its generator, its client's `invoke`, its final reads and its checker."""

    name: str
    model: str
    generator: Generator
    invoke: Callable[[Database, Invocation], Completion]
    final_invocations: tuple[Invocation, ...] = ()
    check_options: CheckOptions = field(default_factory=CheckOptions)


# -- register ---------------------------------------------------------------------------------


def register_key(key: Hashable) -> tuple[str, str, str]:
    return (NAMESPACE, REGISTER_SET, f"k{key}")


def _read_register(database: Database, key: Hashable) -> tuple[Any, int]:
    """The register's value and generation; (None, 0) when the record does not exist."""
    try:
        _, meta, bins = database.get(register_key(key))
    except RaftstoreError as error:
        if error.code == ResultCode.RECORD_NOT_FOUND:
            return None, 0
        raise
    return freeze(bins.get(BIN)), meta["gen"]


def invoke_register(database: Database, invocation: Invocation) -> Completion:
    f, key, value = invocation.f, invocation.key, invocation.value
    if f == "read":
        try:
            found, _ = _read_register(database, key)
        except RaftstoreError as error:
            return error_completion(error, None, wrote=False)
        except OSError as error:
            return io_completion(error, None)
        return Completion("ok", found)
    if f == "write":
        try:
            database.put(register_key(key), {BIN: value})
        except RaftstoreError as error:
            return error_completion(error, value, wrote=True)
        except OSError as error:
            return io_completion(error, value)
        return Completion("ok", value)
    if f == "cas":
        return _cas(database, key, value)
    raise ValueError(f"register has no operation {f!r}")


def _cas(database: Database, key: Hashable, value: tuple[Any, Any]) -> Completion:
    expected, new = value
    try:
        current, generation = _read_register(database, key)
    except RaftstoreError as error:
        return error_completion(error, value, wrote=False)
    except OSError as error:
        return io_completion(error, value)
    if current != expected or generation == 0:
        return Completion("fail", value, f"value-mismatch: read {current!r}")
    try:
        database.operate(
            register_key(key),
            [operations.write(BIN, new)],
            meta={"gen": generation},
            policy={"gen": client.POLICY_GEN_EQ},
        )
    except RaftstoreError as error:
        if error.code == ResultCode.GENERATION_ERROR and not error.in_doubt:
            return Completion("fail", value, f"generation-mismatch: {error.msg}")
        return error_completion(error, value, wrote=True)
    except OSError as error:
        return io_completion(error, value)
    return Completion("ok", value)


def register_workload(
    keys_active: int = REGISTER_KEYS_ACTIVE_DEFAULT,
    ops_per_key: int = REGISTER_OPS_PER_KEY_DEFAULT,
) -> Workload:
    return Workload(
        name="register",
        model="cas-register",
        generator=RegisterGenerator(keys_active, ops_per_key),
        invoke=invoke_register,
    )


# -- set --------------------------------------------------------------------------------------


def invoke_set(database: Database, invocation: Invocation) -> Completion:
    if invocation.f == "add":
        element = invocation.value
        try:
            database.put(
                (NAMESPACE, SET_SET, element),
                {BIN: element},
                policy={"exists": client.POLICY_EXISTS_CREATE},
            )
        except RaftstoreError as error:
            if error.code == ResultCode.RECORD_EXISTS:
                # Elements are unique: the record can only be this add's, applied by an
                # earlier attempt. Not a failure; not provably ok either.
                return Completion("info", element, str(error))
            return error_completion(error, element, wrote=True)
        except OSError as error:
            return io_completion(error, element)
        return Completion("ok", element)
    if invocation.f == "read":
        try:
            elements = sorted(bins[BIN] for _, _, bins in database.scan(NAMESPACE, SET_SET))
        except RaftstoreError as error:
            return error_completion(error, None, wrote=False)
        except OSError as error:
            return io_completion(error, None)
        return Completion("ok", tuple(elements))
    raise ValueError(f"set has no operation {invocation.f!r}")


def set_workload(read_fraction: float = SET_READ_FRACTION_DEFAULT) -> Workload:
    return Workload(
        name="set",
        model="set",
        generator=SetGenerator(read_fraction),
        invoke=invoke_set,
        final_invocations=(Invocation("read"),),
    )


def workload_named(
    name: str,
    *,
    keys_active: int = REGISTER_KEYS_ACTIVE_DEFAULT,
    ops_per_key: int = REGISTER_OPS_PER_KEY_DEFAULT,
) -> Workload:
    if name == "register":
        return register_workload(keys_active, ops_per_key)
    if name == "set":
        return set_workload()
    if name in WAITING_FOR_TRANSACTIONS:
        raise ValueError(f"workload {name!r} needs multi-record transactions (not yet here)")
    raise ValueError(f"workload {name!r} is not one of {', '.join(NAMES)}")
