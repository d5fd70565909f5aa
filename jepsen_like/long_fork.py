"""Jepsen's long-fork checker: reads over a group of keys that saw inserts in two orders.

Theory of operation. Each key is written (inserted) at most once; reads are transactions
of `[r k v]` over a group of keys. A read saw a key when its value is not nil. Two reads of
the same group are compatible when the keys one saw are a subset of the keys the other
saw; two incompatible reads mean two observers saw concurrent inserts in opposite orders,
a long fork, which parallel snapshot isolation allows and snapshot isolation forbids.

Reads of one group sorted by how many keys they saw form a chain of subsets exactly when
every read is a subset of the next, so one sort and one pass find a fork if there is one.
A key written more than once makes the verdict unknown.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from typing import Any

from jepsen_like.history import History, Operation, render_value, to_json_value
from jepsen_like.result import UNKNOWN, Result

FORKS_SHOWN_MAX = 8


def _reads_and_writes(operation: Operation) -> tuple[dict[Any, Any], list[Any]]:
    reads: dict[Any, Any] = {}
    writes: list[Any] = []
    value = operation.value
    if not isinstance(value, tuple):
        return reads, writes
    for micro_op in value:
        if not (isinstance(micro_op, tuple) and len(micro_op) == 3):
            continue
        f, key, observed = micro_op
        if f in ("r", "read"):
            reads[key] = observed
        elif f in ("w", "write", "append", "insert"):
            writes.append(key)
    return reads, writes


def _shown(keys: frozenset[Hashable]) -> str:
    return render_value(tuple(sorted(keys, key=repr)))


def check_long_fork(history: History) -> Result:
    written: dict[Any, int] = {}
    groups: dict[frozenset[Hashable], list[tuple[Operation, frozenset[Hashable]]]] = {}
    for operation in history.operations:
        reads, writes = _reads_and_writes(operation)
        for key in writes:
            written[key] = written.get(key, 0) + 1
        if operation.type == "ok" and reads:
            seen = frozenset(key for key, value in reads.items() if value is not None)
            groups.setdefault(frozenset(reads), []).append((operation, seen))
    rewritten = sorted((key for key, count in written.items() if count > 1), key=repr)
    if rewritten:
        return Result(
            UNKNOWN,
            "long-fork",
            f"keys written more than once: {render_value(tuple(rewritten))}",
        )
    forks: list[dict[str, Any]] = []
    for group, group_reads in groups.items():
        group_reads.sort(key=lambda item: len(item[1]))
        for (first, seen_first), (second, seen_second) in itertools.pairwise(group_reads):
            if not seen_first <= seen_second:
                only_first = _shown(seen_first - seen_second)
                only_second = _shown(seen_second - seen_first)
                forks.append(
                    {
                        "group": to_json_value(sorted(group, key=repr)),
                        "reads": [to_json_value(first.value), to_json_value(second.value)],
                        "explanation": (
                            f"{first.describe()} saw {only_first} but not {only_second}, "
                            f"while {second.describe()} saw {only_second} but not {only_first}"
                        ),
                    }
                )
    read_count = sum(len(group_reads) for group_reads in groups.values())
    details = {"reads": read_count, "groups": len(groups), "forks": forks[:FORKS_SHOWN_MAX]}
    if forks:
        explanation = tuple(fork["explanation"] for fork in forks[:FORKS_SHOWN_MAX])
        return Result(False, "long-fork", f"{len(forks)} long fork(s)", details, explanation)
    if not read_count:
        return Result(UNKNOWN, "long-fork", "no ok reads to compare", details)
    return Result(True, "long-fork", f"no long forks among {read_count} reads", details)
