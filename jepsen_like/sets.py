"""Jepsen's set checker, with the stale reads of `set-full`.

Theory of operation. `add x` inserts a unique element; `read` returns the whole set. The
final `ok` read is the ground truth:

- lost: elements whose add was acknowledged (`ok`), or that an earlier read showed, but
  that the final read lacks;
- unexpected: elements read that nobody tried to add;
- recovered: elements whose add was indeterminate (`info`) or never completed, found by
  the final read (fine: they simply happened);
- stale: a read invoked after an add of x was acknowledged, that lacks x although a later
  read has it. A linearizable set has none; `linearizable=False` reports them without
  failing.

Valid iff nothing is lost or unexpected (and nothing stale, when linearizable). No `ok`
read at all gives "unknown".
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from jepsen_like.history import History, Operation, render_value, to_json_value
from jepsen_like.result import UNKNOWN, Result

SHOWN_MAX = 20


@dataclass(frozen=True)
class SetOptions:
    linearizable: bool = True


def _elements(value: Any) -> frozenset[Hashable]:
    if value is None:
        return frozenset()
    if isinstance(value, tuple | frozenset | set | list):
        return frozenset(value)
    raise ValueError(f"a set read returned {render_value(value)}")


def _shown(elements: set[Hashable] | frozenset[Hashable]) -> list[Any]:
    return [to_json_value(e) for e in sorted(elements, key=repr)[:SHOWN_MAX]]


def check_set(history: History, options: SetOptions | None = None) -> Result:
    options = options or SetOptions()
    adds = [op for op in history.operations if op.f == "add"]
    try:
        reads = [
            (op, _elements(op.value))
            for op in history.operations
            if op.f == "read" and op.type == "ok"
        ]
    except ValueError as error:
        return Result(UNKNOWN, "set", str(error))
    if not reads:
        return Result(UNKNOWN, "set", "the set was never read")
    attempted = {op.invoke.value for op in adds}
    acknowledged = {op.invoke.value for op in adds if op.type == "ok"}
    final_op, final = max(reads, key=lambda item: item[0].ret or item[0].call)
    ever_read: set[Hashable] = set()
    for operation, seen in reads:
        if operation is not final_op:
            ever_read |= seen
    lost = (acknowledged | ever_read) - final
    unexpected = set(final) - attempted
    for _, seen in reads:
        unexpected |= set(seen) - attempted
    recovered = (final & attempted) - acknowledged
    stale = stale_reads(adds, reads)
    details: dict[str, Any] = {
        "attempt_count": len(attempted),
        "acknowledged_count": len(acknowledged),
        "read_count": len(reads),
        "ok_count": len(final & acknowledged),
        "lost_count": len(lost),
        "lost": _shown(lost),
        "unexpected_count": len(unexpected),
        "unexpected": _shown(unexpected),
        "recovered_count": len(recovered),
        "recovered": _shown(recovered),
        "stale_count": len(stale),
        "stale": stale[:SHOWN_MAX],
    }
    problems: list[str] = []
    explanation: list[str] = []
    if lost:
        problems.append(f"{len(lost)} lost")
        explanation.append(
            f"lost: {render_value(tuple(_shown(lost)))} were acknowledged or seen, "
            f"yet missing from the final read ({final_op.describe()})"
        )
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected")
        explanation.append(
            f"unexpected: {render_value(tuple(_shown(unexpected)))} were never added"
        )
    if stale and options.linearizable:
        problems.append(f"{len(stale)} stale reads")
        explanation.extend(case["explanation"] for case in stale[:SHOWN_MAX])
    if problems:
        return Result(False, "set", ", ".join(problems), details, tuple(explanation))
    summary = (
        f"{len(final & acknowledged)} acknowledged elements all read, {len(recovered)} recovered"
    )
    return Result(True, "set", summary, details)


def stale_reads(
    adds: list[Operation], reads: list[tuple[Operation, frozenset[Hashable]]]
) -> list[dict[str, Any]]:
    """Reads that miss an element whose add completed before they began, which a later read
    has."""
    acknowledged_at = {
        op.invoke.value: op.ret for op in adds if op.type == "ok" and op.ret is not None
    }
    ordered = sorted(reads, key=lambda item: item[0].call)
    # For each read, what some later-invoked read still shows.
    shown_later: list[frozenset[Hashable]] = [frozenset()] * len(ordered)
    accumulated: frozenset[Hashable] = frozenset()
    for position in range(len(ordered) - 1, -1, -1):
        shown_later[position] = accumulated
        accumulated = accumulated | ordered[position][1]
    cases: list[dict[str, Any]] = []
    for position, (operation, seen) in enumerate(ordered):
        missing = {
            element
            for element in shown_later[position] - seen
            if element in acknowledged_at and acknowledged_at[element] < operation.call
        }
        if missing:
            cases.append(
                {
                    "op": {"index": operation.index, "process": operation.process},
                    "missing": _shown(missing),
                    "explanation": (
                        f"{operation.describe()} lacks {render_value(tuple(_shown(missing)))}, "
                        "acknowledged before it began and read again later"
                    ),
                }
            )
    return cases
