"""Synthetic histories from a simulated correct database, for tests and benchmarks.

Each generator runs concurrent processes against an in-memory, atomic store: at every tick
one random process moves one step through invoke -> take effect -> complete. An operation
takes effect at one instant inside its interval, so every history produced is
linearizable (registers) or strictly serializable (list-append) by construction. A crash
(probability `crash_rate`) completes an operation as `info`, before or after it took
effect, and retires the process for a fresh one (`process + processes`), as Jepsen does.

Deterministic: everything comes from `random.Random(seed)`.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.history import History, Op, OpType


@dataclass
class _Pending:
    process: int
    f: str
    argument: Any
    key: Hashable
    applied: bool = False
    result: Any = None


@dataclass
class _Recorder:
    ops: list[Op] = field(default_factory=list)
    time_ns: int = 0

    def record(self, process: int, kind: OpType, f: str, value: Any, key: Hashable) -> None:
        self.time_ns += 1000
        self.ops.append(Op(len(self.ops), self.time_ns, process, kind, f, value, key))


def register_history(
    operations: int,
    *,
    processes: int = 5,
    keys: int = 1,
    values: int = 5,
    crash_rate: float = 0.0,
    seed: int = 0,
) -> History:
    """Reads, writes and CASes on `keys` registers (keyed ops, or keyless when keys == 1)."""
    rng = random.Random(seed)
    store: dict[Hashable, Any] = {}
    recorder = _Recorder()
    pending: dict[int, _Pending] = {}
    ids = list(range(processes))
    invoked = 0
    while invoked < operations or pending:
        slot = rng.randrange(processes)
        process = ids[slot]
        current = pending.get(process)
        if current is None:
            if invoked >= operations:
                continue
            invoked += 1
            key: Hashable = rng.randrange(keys) if keys > 1 else None
            roll = rng.random()
            if roll < 0.5:
                current = _Pending(process, "read", None, key)
            elif roll < 0.8:
                current = _Pending(process, "write", rng.randrange(values), key)
            else:
                current = _Pending(
                    process, "cas", (rng.randrange(values), rng.randrange(values)), key
                )
            pending[process] = current
            recorder.record(process, "invoke", current.f, current.argument, key)
        elif not current.applied and rng.random() < 0.5:
            current.applied = True
            state = store.get(current.key)
            if current.f == "read":
                current.result = state
            elif current.f == "write":
                store[current.key] = current.argument
                current.result = current.argument
            else:
                expected, new = current.argument
                current.result = state == expected
                if current.result:
                    store[current.key] = new
        elif current.applied or rng.random() < crash_rate:
            del pending[process]
            if rng.random() < crash_rate:
                recorder.record(process, "info", current.f, current.argument, current.key)
                ids[slot] = process + processes
            elif current.f == "cas" and current.result is False:
                recorder.record(process, "fail", "cas", current.argument, current.key)
            elif current.applied:
                value = current.result if current.f == "read" else current.argument
                recorder.record(process, "ok", current.f, value, current.key)
            else:
                recorder.record(process, "info", current.f, current.argument, current.key)
                ids[slot] = process + processes
    return History(tuple(recorder.ops), "synthetic register")


def list_append_history(
    transactions: int,
    *,
    processes: int = 5,
    keys: int = 8,
    micro_ops_max: int = 4,
    crash_rate: float = 0.0,
    abort_rate: float = 0.0,
    seed: int = 0,
) -> History:
    """Transactions of unique appends and reads over `keys` lists, executed atomically."""
    rng = random.Random(seed)
    lists: dict[int, list[int]] = {}
    next_element: dict[int, int] = {}
    recorder = _Recorder()
    pending: dict[int, _Pending] = {}
    ids = list(range(processes))
    invoked = 0
    while invoked < transactions or pending:
        slot = rng.randrange(processes)
        process = ids[slot]
        current = pending.get(process)
        if current is None:
            if invoked >= transactions:
                continue
            invoked += 1
            micro_ops: list[tuple[str, int, Any]] = []
            for _ in range(rng.randint(1, micro_ops_max)):
                key = rng.randrange(keys)
                if rng.random() < 0.5:
                    micro_ops.append(("r", key, None))
                else:
                    next_element[key] = next_element.get(key, 0) + 1
                    micro_ops.append(("append", key, next_element[key]))
            current = _Pending(process, "txn", tuple(micro_ops), None)
            pending[process] = current
            recorder.record(process, "invoke", "txn", current.argument, None)
        elif not current.applied and rng.random() < 0.5:
            current.applied = True
            if rng.random() < abort_rate:
                current.result = "aborted"
                continue
            completed: list[tuple[str, int, Any]] = []
            for kind, key, element in current.argument:
                if kind == "r":
                    completed.append(("r", key, tuple(lists.get(key, ()))))
                else:
                    lists.setdefault(key, []).append(element)
                    completed.append((kind, key, element))
            current.result = tuple(completed)
        elif current.applied or rng.random() < crash_rate:
            del pending[process]
            if current.result == "aborted":
                recorder.record(process, "fail", "txn", current.argument, None)
            elif rng.random() < crash_rate or not current.applied:
                recorder.record(process, "info", "txn", current.argument, None)
                ids[slot] = process + processes
            else:
                recorder.record(process, "ok", "txn", current.result, None)
    return History(tuple(recorder.ops), "synthetic list-append")
