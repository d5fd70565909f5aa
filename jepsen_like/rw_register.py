"""Elle's rw-register checker: transactions of reads and writes over registers.

Theory of operation (the notes' §3.2). Micro-ops are `[w k v]` and `[r k v]`; every value
written to a key is unique, so a read names its writer. The inference is weaker than
list-append's, because a read shows one version and not the order before it:

- wr: the writer of (k, v) -> every transaction whose *external* read of k returned v (the
  first read of k, before the transaction writes k itself); only *external* writes (the
  last write of k in a transaction) can be read by others.
- The version order of k knows only that the initial nil precedes every written version:
  readers of nil -rw-> every writer of k. With `writes_follow_reads`, a transaction that
  read v1 and then wrote v2 also orders v1 before v2 (ww and rw edges follow).
- process and realtime edges as the requested consistency models need them.

Linear passes: G1a (a read of a failed write), G1b (a read of another transaction's
intermediate write), internal (a read disagreeing with the transaction's own earlier read
or write of the key), lost-update. Like Elle, a read of a value nobody wrote infers no
edge; it is reported as `garbage-read` for information and decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jepsen_like import consistency
from jepsen_like.elle import (
    Anomalies,
    ExplainStep,
    Options,
    Unsuitable,
    cycle_anomalies,
    micro_ops,
    op_json,
    order_step,
    realtime_and_process_edges,
    result_of,
)
from jepsen_like.graph import PROCESS, REALTIME, REL_NAMES, RW, WR, WW, Graph, link, new_graph
from jepsen_like.history import History, Operation, render_value, to_json_value
from jepsen_like.result import UNKNOWN, Result

WRITES = ("w", "write")
READS = ("r", "read")


@dataclass
class Registers:
    transactions: list[Operation]
    external_reads: list[dict[Any, Any]] = field(default_factory=list)
    external_writes: list[dict[Any, Any]] = field(default_factory=list)
    writer: dict[tuple[Any, Any], int] = field(default_factory=dict)
    readers: dict[tuple[Any, Any], list[int]] = field(default_factory=dict)
    writers_of: dict[Any, list[int]] = field(default_factory=dict)


def _externals(operation: Operation) -> tuple[dict[Any, Any], dict[Any, Any]]:
    reads: dict[Any, Any] = {}
    writes: dict[Any, Any] = {}
    for f, key, value in micro_ops(operation):
        if f in READS:
            if key not in writes and key not in reads:
                reads[key] = value
        elif f in WRITES:
            writes[key] = value
        else:
            raise Unsuitable(f"micro-op {f!r} in {operation.describe()}: not r or w")
    return reads, writes


def index(history: History) -> Registers:
    written: dict[tuple[Any, Any], Operation] = {}
    for operation in history.operations:
        for f, key, value in micro_ops(operation):
            if f in WRITES:
                if (key, value) in written and written[(key, value)] is not operation:
                    raise Unsuitable(f"value {render_value(value)} written to {key!r} twice")
                written[(key, value)] = operation
    transactions = [op for op in history.operations if op.type in ("ok", "info")]
    registers = Registers(transactions)
    for number, operation in enumerate(transactions):
        reads, writes = _externals(operation)
        if operation.type == "info":
            reads = {}  # an info transaction's reads are unknown
        registers.external_reads.append(reads)
        registers.external_writes.append(writes)
        for key, value in writes.items():
            registers.writer[(key, value)] = number
            registers.writers_of.setdefault(key, []).append(number)
        for key, value in reads.items():
            registers.readers.setdefault((key, value), []).append(number)
    return registers


def dependency_graph(registers: Registers, writes_follow_reads: bool) -> Graph:
    graph = new_graph(len(registers.transactions))
    for number, reads in enumerate(registers.external_reads):
        for key, value in reads.items():
            if value is None:
                for writer in registers.writers_of.get(key, ()):
                    link(graph, number, writer, RW)
                continue
            source = registers.writer.get((key, value))
            if source is not None:
                link(graph, source, number, WR)
            if writes_follow_reads and key in registers.external_writes[number]:
                if source is not None:
                    link(graph, source, number, WW)
                for reader in registers.readers.get((key, value), ()):
                    link(graph, reader, number, RW)
    return graph


def explainer(registers: Registers) -> ExplainStep:
    transactions = registers.transactions

    def explain(a: int, b: int, rel: int, name: Callable[[int], str]) -> str:
        ordered = order_step(transactions, a, b, rel, name)
        if ordered is not None:
            return ordered
        if rel == WR:
            for key, value in registers.external_reads[b].items():
                if registers.writer.get((key, value)) == a:
                    shown = f"{render_value(key)} = {render_value(value)}"
                    return f"{name(b)} read {shown}, written by {name(a)}"
        if rel == RW:
            for key, value in registers.external_reads[a].items():
                if key in registers.external_writes[b]:
                    written = render_value(registers.external_writes[b][key])
                    return (
                        f"{name(a)} read {render_value(key)} = {render_value(value)}, a version "
                        f"before {name(b)}'s write of {written}"
                    )
        if rel == WW:
            for key, value in registers.external_reads[b].items():
                if registers.writer.get((key, value)) == a:
                    shown = render_value(key)
                    return f"{name(b)} read {name(a)}'s write of {shown} and then overwrote it"
        return f"{name(a)} precedes {name(b)} by {REL_NAMES[rel]}"

    return explain


def linear_anomalies(history: History, registers: Registers, found: Anomalies) -> None:
    failed: dict[tuple[Any, Any], Operation] = {}
    intermediate: dict[tuple[Any, Any], Operation] = {}
    for operation in history.operations:
        last: dict[Any, Any] = {}
        for f, key, value in micro_ops(operation):
            if f in WRITES:
                if operation.type == "fail":
                    failed[(key, value)] = operation
                if key in last:
                    intermediate[(key, last[key])] = operation
                last[key] = value
    by_version: dict[tuple[Any, Any], list[Operation]] = {}
    for number, operation in enumerate(registers.transactions):
        if operation.type != "ok":
            continue
        state: dict[Any, Any] = {}
        for f, key, value in micro_ops(operation):
            if f in WRITES:
                state[key] = value
                continue
            if key in state and state[key] != value:
                found.add(
                    "internal",
                    {
                        "op": op_json(operation),
                        "key": to_json_value(key),
                        "expected": to_json_value(state[key]),
                        "read": to_json_value(value),
                        "explanation": (
                            f"{operation.describe()} read {render_value(key)} = "
                            f"{render_value(value)} after its own micro-ops left "
                            f"{render_value(state[key])}"
                        ),
                    },
                )
            state[key] = value
        for key, value in registers.external_reads[number].items():
            if value is None:
                continue
            if (key, value) in failed and (key, value) not in registers.writer:
                writer = failed[(key, value)]
                found.add(
                    "G1a",
                    {
                        "op": op_json(operation),
                        "writer": op_json(writer),
                        "explanation": (
                            f"{operation.describe()} read {render_value(key)} = "
                            f"{render_value(value)}, written by the failed {writer.describe()}"
                        ),
                    },
                )
            elif (key, value) in intermediate and intermediate[(key, value)] is not operation:
                writer = intermediate[(key, value)]
                found.add(
                    "G1b",
                    {
                        "op": op_json(operation),
                        "writer": op_json(writer),
                        "explanation": (
                            f"{operation.describe()} read {render_value(key)} = "
                            f"{render_value(value)}, an intermediate write of {writer.describe()}"
                        ),
                    },
                )
            elif (key, value) not in registers.writer:
                found.add(
                    "garbage-read",
                    {
                        "op": op_json(operation),
                        "explanation": (
                            f"{operation.describe()} read {render_value(key)} = "
                            f"{render_value(value)}, which no transaction wrote"
                        ),
                    },
                )
            if key in registers.external_writes[number]:
                by_version.setdefault((key, value), []).append(operation)
    for (key, value), operations in by_version.items():
        if len(operations) > 1:
            found.add(
                "lost-update",
                {
                    "key": to_json_value(key),
                    "value": to_json_value(value),
                    "ops": [op_json(op) for op in operations],
                    "explanation": (
                        f"{len(operations)} committed transactions read {render_value(key)} = "
                        f"{render_value(value)} and each wrote it: "
                        + "; ".join(op.describe() for op in operations)
                    ),
                },
            )


def check_rw_register(
    history: History,
    options: Options | None = None,
    writes_follow_reads: bool = False,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    options = options or Options()
    models = consistency.check_models(options.consistency_models)
    started = clock()
    found = Anomalies()
    try:
        registers = index(history)
    except Unsuitable as error:
        return Result(UNKNOWN, "rw-register", f"history unsuitable for rw-register: {error}")
    if not registers.transactions:
        found.add("empty-transaction-graph", {"explanation": "no ok or info transactions"})
    graph = dependency_graph(registers, writes_follow_reads)
    process, realtime = consistency.needs_graphs(models)
    realtime_and_process_edges(graph, registers.transactions, process, realtime)
    linear_anomalies(history, registers, found)
    extra = REALTIME if realtime else (PROCESS if process else 0)
    cycle_anomalies(
        registers.transactions,
        graph,
        found,
        extra=extra,
        options=options,
        explain_step=explainer(registers),
        progress=progress,
        clock=clock,
    )
    details: dict[str, Any] = {
        "transactions": len(registers.transactions),
        "edges": sum(len(edges) for edges in graph),
        "seconds": round(clock() - started, 6),
    }
    return result_of("rw-register", found, models, details)
