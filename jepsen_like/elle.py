"""Elle's list-append checker: dependency cycles and other anomalies of transactions.

Theory of operation (Kingsbury & Alvaro, "Elle", VLDB 2020; the notes' §3.1). A
transaction is a list of micro-ops `[append k v]` and `[r k vs]`; every appended element is
unique per key, so each read's list names exactly which appends it saw and in what order.

1. Version order. Every read of key k in an ok or info transaction must be a prefix of the
   longest one (else `incompatible-order`); that longest read, without duplicates, is k's
   version order. A key appended once and never read has the order [v].
2. Edges between ok/info transactions (fail ones only feed G1a and dirty-update):
   - wr: the writer of the last element of a read -> the reader;
   - ww: the writer of the element before v in k's order -> the appender of v;
   - rw: every reader of the state before v (the empty state included) -> the appender of
     v. An append never read comes after the last element observed.
   - process (successive transactions of one process) and realtime (a completed before b
     was invoked; kept as a transitive reduction) when the requested consistency models
     need them, as Elle decides it.
3. Cycles: strongly connected components, then one cycle of each class (G0, G1c,
   G-single, G-nonadjacent, G2-item and their -process/-realtime variants) per component,
   found by `graph.find_cycles`.
4. Linear passes: G1a (read of a failed append), G1b (read ending on a transaction's
   intermediate append), internal (a read disagreeing with the transaction's own earlier
   reads and appends), future-read, dirty-update, duplicate-elements, incompatible-order,
   lost-update.

The verdict is false iff an anomaly prohibited by the requested consistency models
(default strict-serializable) is found; "unknown" if only a cycle search timed out, or the
history breaks the checker's assumptions (duplicate appends, other micro-ops).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from jepsen_like import consistency
from jepsen_like.graph import (
    PROCESS,
    REALTIME,
    REL_NAMES,
    RW,
    WR,
    WW,
    Cycle,
    Graph,
    find_cycles,
    link,
    new_graph,
    nontrivial_components,
)
from jepsen_like.history import History, Operation, render_value, to_json_value
from jepsen_like.result import UNKNOWN, Result, Validity

log = structlog.get_logger(__name__)

INIT: Final = object()  # the state before any append: the empty list
CASES_SHOWN_MAX: Final = 8
CYCLE_SEARCH_SECONDS: Final = 10.0

MicroOp = tuple[str, Any, Any]


@dataclass(frozen=True)
class Options:
    consistency_models: tuple[str, ...] = ("strict-serializable",)
    cycle_search_seconds: float = CYCLE_SEARCH_SECONDS


@dataclass
class Anomalies:
    """Anomaly cases by type, each a JSON-able map with an `explanation`."""

    cases: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, kind: str, case: dict[str, Any]) -> None:
        self.cases.setdefault(kind, []).append(case)


class Unsuitable(Exception):
    """The history breaks an assumption of the checker: the verdict is unknown."""


def micro_ops(operation: Operation) -> tuple[MicroOp, ...]:
    value = operation.value
    if not isinstance(value, tuple):
        raise Unsuitable(f"{operation.describe()} is not a transaction")
    for micro_op in value:
        if not (isinstance(micro_op, tuple) and len(micro_op) == 3):
            raise Unsuitable(f"{operation.describe()} holds {render_value(micro_op)}")
    return value


def op_json(operation: Operation) -> dict[str, Any]:
    return {
        "index": operation.index,
        "process": operation.process,
        "type": operation.type,
        "value": to_json_value(operation.value),
    }


def realtime_and_process_edges(
    graph: Graph, transactions: Sequence[Operation], process: bool, realtime: bool
) -> None:
    """Process order, and realtime order as a transitive reduction (Elle's realtime-graph)."""
    if process:
        last_of: dict[Any, int] = {}
        for number, operation in enumerate(transactions):
            if operation.process in last_of:
                link(graph, last_of[operation.process], number, PROCESS)
            last_of[operation.process] = number
    if realtime:
        events: list[tuple[int, int, int]] = []
        for number, operation in enumerate(transactions):
            events.append((operation.call, 0, number))
            if operation.type == "ok" and operation.ret is not None:
                events.append((operation.ret, 1, number))
        events.sort()
        frontier: set[int] = set()
        predecessors: dict[int, frozenset[int]] = {}
        for _, kind, number in events:
            if kind == 0:
                for earlier in frontier:
                    link(graph, earlier, number, REALTIME)
                predecessors[number] = frozenset(frontier)
            else:
                frontier -= predecessors.get(number, frozenset())
                frontier.add(number)


@dataclass
class Analysis:
    """Indexes over the ok/info transactions of a list-append history."""

    transactions: list[Operation]
    failed: list[Operation]
    orders: dict[Any, list[Any]] = field(default_factory=dict)
    writer: dict[tuple[Any, Any], int] = field(default_factory=dict)
    readers: dict[tuple[Any, Any], list[int]] = field(default_factory=dict)
    positions: dict[tuple[Any, Any], int] = field(default_factory=dict)

    def previous(self, key: Any, element: Any) -> Any:
        """The element before `element` in key's version order (INIT for the first)."""
        order = self.orders.get(key, [])
        position = self.positions.get((key, element))
        if position is None:
            return order[-1] if order else INIT
        return order[position - 1] if position > 0 else INIT


def _check_shape(operations: Sequence[Operation]) -> None:
    appended: dict[tuple[Any, Any], Operation] = {}
    for operation in operations:
        for f, key, value in micro_ops(operation):
            if f not in ("append", "r"):
                raise Unsuitable(f"micro-op {f!r} in {operation.describe()}: not append or r")
            if f == "append":
                if (key, value) in appended and appended[(key, value)] is not operation:
                    raise Unsuitable(
                        f"element {render_value(value)} appended to {render_value(key)} twice"
                    )
                appended[(key, value)] = operation


def analyse(history: History, anomalies: Anomalies) -> Analysis:
    operations = list(history.operations)
    _check_shape(operations)
    transactions = [op for op in operations if op.type in ("ok", "info")]
    failed = [op for op in operations if op.type == "fail"]
    analysis = Analysis(transactions, failed)
    observed: dict[Any, set[tuple[Any, ...]]] = {}
    appends: dict[Any, list[Any]] = {}
    for number, operation in enumerate(transactions):
        for f, key, value in micro_ops(operation):
            if f == "append":
                analysis.writer[(key, value)] = number
                appends.setdefault(key, []).append(value)
            elif value:
                observed.setdefault(key, set()).add(tuple(value))
    for key, values in appends.items():
        if key not in observed and len(values) == 1:
            observed[key] = {(values[0],)}
    for key, reads in observed.items():
        ordered = sorted(reads, key=lambda read: (len(read), repr(read)))  # deterministic
        for shorter, longer in itertools.pairwise(ordered):
            if longer[: len(shorter)] != shorter:
                anomalies.add(
                    "incompatible-order",
                    {
                        "key": to_json_value(key),
                        "values": [to_json_value(shorter), to_json_value(longer)],
                        "explanation": (
                            f"key {render_value(key)} was read as {render_value(shorter)} and "
                            f"as {render_value(longer)}: neither order extends the other"
                        ),
                    },
                )
                break
        order = list(dict.fromkeys(ordered[-1]))
        analysis.orders[key] = order
        for position, element in enumerate(order):
            analysis.positions[(key, element)] = position
    for number, operation in enumerate(transactions):
        for f, key, value in micro_ops(operation):
            if f != "r" or (operation.type == "info" and value is None):
                continue
            last = value[-1] if value else INIT
            analysis.readers.setdefault((key, last), []).append(number)
    return analysis


def dependency_graph(analysis: Analysis) -> Graph:
    graph = new_graph(len(analysis.transactions))
    for number, operation in enumerate(analysis.transactions):
        for f, key, value in micro_ops(operation):
            if f == "r":
                if value:
                    writer = analysis.writer.get((key, value[-1]))
                    if writer is not None:
                        link(graph, writer, number, WR)
                continue
            previous = analysis.previous(key, value)
            if previous is not INIT:
                writer = analysis.writer.get((key, previous))
                if writer is not None:
                    link(graph, writer, number, WW)
            for reader in analysis.readers.get((key, previous), ()):
                link(graph, reader, number, RW)
    return graph


# Explanations of single edges and whole cycles.


def explainer(analysis: Analysis) -> ExplainStep:
    """Why transaction a precedes b by `rel`, from the list-append indexes."""
    transactions = analysis.transactions

    def explain(a: int, b: int, rel: int, name: Callable[[int], str]) -> str:
        ordered = order_step(transactions, a, b, rel, name)
        if ordered is not None:
            return ordered
        for f, key, value in micro_ops(transactions[b]):
            if f == "r":
                if rel == WR and value and analysis.writer.get((key, value[-1])) == a:
                    return (
                        f"{name(b)} observed {name(a)}'s append of {render_value(value[-1])} "
                        f"to key {render_value(key)}"
                    )
                continue
            previous = analysis.previous(key, value)
            if rel == WW and previous is not INIT and analysis.writer.get((key, previous)) == a:
                return (
                    f"{name(b)} appended {render_value(value)} after {name(a)} appended "
                    f"{render_value(previous)} to {render_value(key)}"
                )
            if rel == RW and a in analysis.readers.get((key, previous), ()):
                if previous is INIT:
                    return (
                        f"{name(a)} observed the initial (empty) state of "
                        f"{render_value(key)}, which {name(b)} changed by appending "
                        f"{render_value(value)}"
                    )
                return (
                    f"{name(a)} did not observe {name(b)}'s append of {render_value(value)} "
                    f"to {render_value(key)}"
                )
        return f"{name(a)} precedes {name(b)} by {REL_NAMES[rel]}"

    return explain


ExplainStep = Callable[[int, int, int, Callable[[int], str]], str]


def explain_cycle(
    transactions: Sequence[Operation], cycle: Cycle, explain_step: ExplainStep
) -> list[str]:
    """Elle's story of a cycle: who is who, then why each precedes the next."""
    names = {vertex: f"T{number}" for number, vertex in enumerate(cycle.vertices, start=1)}
    lines = ["Let:"]
    for vertex in cycle.vertices:
        operation = transactions[vertex]
        lines.append(f"  {names[vertex]} = {operation.describe()}")
    lines.append("Then:")
    for position, step in enumerate(cycle.steps):
        because = explain_step(step.source, step.target, step.rel, names.__getitem__)
        order = f"{names[step.source]} < {names[step.target]}"
        if position == len(cycle.steps) - 1:
            lines.append(f"  - However, {order}, because {because}: a contradiction!")
        else:
            lines.append(f"  - {order}, because {because}.")
    return lines


def cycle_case(
    transactions: Sequence[Operation], cycle: Cycle, explain_step: ExplainStep
) -> dict[str, Any]:
    return {
        "cycle": [transactions[v].index for v in cycle.vertices],
        "steps": [
            {
                "type": REL_NAMES[step.rel],
                "from": transactions[step.source].index,
                "to": transactions[step.target].index,
            }
            for step in cycle.steps
        ],
        "explanation": "\n".join(explain_cycle(transactions, cycle, explain_step)),
    }


def order_step(
    transactions: Sequence[Operation], a: int, b: int, rel: int, name: Callable[[int], str]
) -> str | None:
    """Why a precedes b by process or realtime order; None for data relations."""
    if rel == PROCESS:
        return f"process {transactions[b].process} executed {name(a)} before {name(b)}"
    if rel == REALTIME:
        return (
            f"{name(a)} completed (index {transactions[a].index}) before {name(b)} began "
            f"(index {transactions[b].invoke.index})"
        )
    return None


# Anomalies found in linear passes.


def aborted_and_intermediate_reads(analysis: Analysis, history: History, found: Anomalies) -> None:
    failed_writer: dict[tuple[Any, Any], Operation] = {}
    for operation in analysis.failed:
        for f, key, value in micro_ops(operation):
            if f == "append":
                failed_writer[(key, value)] = operation
    intermediate: dict[tuple[Any, Any], Operation] = {}
    for operation in history.operations:
        last_append: dict[Any, Any] = {}
        for f, key, value in micro_ops(operation):
            if f == "append":
                if key in last_append:
                    intermediate[(key, last_append[key])] = operation
                last_append[key] = value
    for operation in analysis.transactions:
        if operation.type != "ok":
            continue
        for f, key, value in micro_ops(operation):
            if f != "r" or not value:
                continue
            for element in value:
                writer = failed_writer.get((key, element))
                if writer is not None:
                    found.add(
                        "G1a",
                        {
                            "op": op_json(operation),
                            "writer": op_json(writer),
                            "key": to_json_value(key),
                            "element": to_json_value(element),
                            "explanation": (
                                f"{operation.describe()} read {render_value(element)} from "
                                f"key {render_value(key)}, appended by the failed "
                                f"{writer.describe()}"
                            ),
                        },
                    )
            writer = intermediate.get((key, value[-1]))
            if writer is not None and writer is not operation:
                found.add(
                    "G1b",
                    {
                        "op": op_json(operation),
                        "writer": op_json(writer),
                        "key": to_json_value(key),
                        "element": to_json_value(value[-1]),
                        "explanation": (
                            f"{operation.describe()} read key {render_value(key)} ending in "
                            f"{render_value(value[-1])}, an intermediate append of "
                            f"{writer.describe()}, which appended again to that key"
                        ),
                    },
                )


def internal_reads(analysis: Analysis, found: Anomalies) -> None:
    """Reads that disagree with the transaction's own earlier reads and appends."""
    for operation in analysis.transactions:
        if operation.type != "ok":
            continue
        expected: dict[Any, tuple[bool, tuple[Any, ...]]] = {}  # key -> (prefix known, list)
        read_elements: dict[Any, set[Any]] = {}
        for f, key, value in micro_ops(operation):
            if f == "append":
                if value in read_elements.get(key, set()):
                    found.add(
                        "future-read",
                        {
                            "op": op_json(operation),
                            "key": to_json_value(key),
                            "element": to_json_value(value),
                            "explanation": (
                                f"{operation.describe()} read {render_value(value)} in "
                                f"{render_value(key)} before appending it itself"
                            ),
                        },
                    )
                known, state = expected.get(key, (False, ()))
                expected[key] = (known, (*state, value))
                continue
            observed = tuple(value or ())
            read_elements.setdefault(key, set()).update(observed)
            if key in expected:
                known, state = expected[key]
                agrees = (
                    observed == state
                    if known
                    else len(observed) >= len(state)
                    and observed[len(observed) - len(state) :] == state
                )
                if not agrees:
                    shown = render_value(state) if known else "[... " + render_value(state)[1:]
                    found.add(
                        "internal",
                        {
                            "op": op_json(operation),
                            "key": to_json_value(key),
                            "expected": shown,
                            "read": to_json_value(observed),
                            "explanation": (
                                f"{operation.describe()} read {render_value(observed)} from "
                                f"{render_value(key)}, but its own earlier micro-ops imply "
                                f"{shown}"
                            ),
                        },
                    )
            expected[key] = (True, observed)


def duplicate_elements(analysis: Analysis, found: Anomalies) -> None:
    for operation in analysis.transactions:
        if operation.type != "ok":
            continue
        for f, key, value in micro_ops(operation):
            if f == "r" and value and len(set(value)) != len(value):
                repeated = sorted({e for e in value if value.count(e) > 1}, key=repr)
                found.add(
                    "duplicate-elements",
                    {
                        "op": op_json(operation),
                        "key": to_json_value(key),
                        "duplicates": to_json_value(repeated),
                        "explanation": (
                            f"{operation.describe()} read {render_value(key)} holding "
                            f"{render_value(tuple(repeated))} more than once"
                        ),
                    },
                )


def dirty_updates(analysis: Analysis, found: Anomalies) -> None:
    """A committed append right after an aborted one in a key's version order."""
    failed_writer = {
        (key, value): operation
        for operation in analysis.failed
        for f, key, value in micro_ops(operation)
        if f == "append"
    }
    for key, order in analysis.orders.items():
        previous_failed: Operation | None = None
        for element in order:
            failed = failed_writer.get((key, element))
            if failed is not None:
                previous_failed = failed
                continue
            number = analysis.writer.get((key, element))
            writer = analysis.transactions[number] if number is not None else None
            if writer is not None and writer.type == "ok" and previous_failed is not None:
                found.add(
                    "dirty-update",
                    {
                        "key": to_json_value(key),
                        "element": to_json_value(element),
                        "explanation": (
                            f"{writer.describe()} appended {render_value(element)} to "
                            f"{render_value(key)} on top of an append by the failed "
                            f"{previous_failed.describe()}"
                        ),
                    },
                )
            if writer is not None and writer.type == "ok":
                previous_failed = None


def lost_updates(analysis: Analysis, found: Anomalies) -> None:
    """Committed transactions that read the same version of a key and both appended to it."""
    by_version: dict[tuple[Any, tuple[Any, ...]], list[Operation]] = {}
    for operation in analysis.transactions:
        if operation.type != "ok":
            continue
        first_read: dict[Any, tuple[Any, ...]] = {}
        wrote: set[Any] = set()
        for f, key, value in micro_ops(operation):
            if f == "r":
                first_read.setdefault(key, tuple(value or ()))
            elif key in first_read and key not in wrote:
                wrote.add(key)
                by_version.setdefault((key, first_read[key]), []).append(operation)
    for (key, version), operations in by_version.items():
        if len(operations) > 1:
            found.add(
                "lost-update",
                {
                    "key": to_json_value(key),
                    "value": to_json_value(version),
                    "ops": [op_json(op) for op in operations],
                    "explanation": (
                        f"{len(operations)} committed transactions read {render_value(key)} = "
                        f"{render_value(version)} and each appended to it: "
                        + "; ".join(op.describe() for op in operations)
                    ),
                },
            )


# The check.


def cycle_anomalies(
    transactions: Sequence[Operation],
    graph: Graph,
    found: Anomalies,
    *,
    extra: int,
    options: Options,
    explain_step: ExplainStep,
    progress: Callable[[str], None] | None,
    clock: Callable[[], float],
) -> None:
    """Search every nontrivial strongly connected component for cycles, smallest first."""
    components = nontrivial_components(graph)
    for number, component in enumerate(sorted(components, key=len), start=1):
        if progress is not None:
            progress(f"cycle search: component {number}/{len(components)} of {len(component)}")
        search = find_cycles(graph, component, extra, options.cycle_search_seconds, clock)
        for cycle in search.cycles:
            found.add(cycle.kind, cycle_case(transactions, cycle, explain_step))
        if search.timed_out:
            found.add(
                "cycle-search-timeout",
                {
                    "component_size": len(component),
                    "unsearched": list(search.unsearched),
                    "explanation": (
                        f"the search of a component of {len(component)} transactions ran out "
                        f"of time before looking for {', '.join(search.unsearched)}"
                    ),
                },
            )


def result_of(
    checker: str, found: Anomalies, models: Sequence[str], details: dict[str, Any]
) -> Result:
    banned = consistency.prohibited(models)
    kinds = sorted(found.cases)
    bad = [kind for kind in kinds if kind in banned]
    unknown = [kind for kind in kinds if kind in consistency.UNKNOWN_ANOMALIES]
    valid: Validity = False if bad else (UNKNOWN if unknown else True)
    is_not, also_not = consistency.boundary(kinds)
    details.update(
        consistency_models=list(models),
        anomaly_types=kinds,
        prohibited_anomaly_types=bad,
        not_=is_not,
        also_not=also_not,
        anomalies={kind: cases[:CASES_SHOWN_MAX] for kind, cases in found.cases.items()},
        anomaly_counts={kind: len(cases) for kind, cases in found.cases.items()},
    )
    details["not"] = details.pop("not_")
    explanation: list[str] = []
    for kind in kinds:
        cases = found.cases[kind]
        explanation.append(f"{kind} ({len(cases)}):")
        for case in cases[:CASES_SHOWN_MAX]:
            explanation.extend("  " + line for line in str(case["explanation"]).splitlines())
    if bad or unknown:
        summary = f"anomalies {', '.join(bad or unknown)}"
        if is_not:
            summary += f"; not {', '.join(is_not)}"
    else:
        summary = f"no prohibited anomalies in {details.get('transactions', 0)} transactions"
    informational = [kind for kind in kinds if kind not in bad and kind not in unknown]
    if informational:
        summary += f" (also seen: {', '.join(informational)})"
    return Result(valid, checker, summary, details, tuple(explanation))


def check_list_append(
    history: History,
    options: Options | None = None,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    options = options or Options()
    models = consistency.check_models(options.consistency_models)
    started = clock()
    found = Anomalies()
    try:
        analysis = analyse(history, found)
    except Unsuitable as error:
        return Result(UNKNOWN, "list-append", f"history unsuitable for list-append: {error}")
    if not analysis.transactions:
        found.add("empty-transaction-graph", {"explanation": "no ok or info transactions"})
    if progress is not None:
        progress(f"inferring dependencies of {len(analysis.transactions)} transactions")
    graph = dependency_graph(analysis)
    process, realtime = consistency.needs_graphs(models)
    realtime_and_process_edges(graph, analysis.transactions, process, realtime)
    aborted_and_intermediate_reads(analysis, history, found)
    internal_reads(analysis, found)
    duplicate_elements(analysis, found)
    dirty_updates(analysis, found)
    lost_updates(analysis, found)
    extra = REALTIME if realtime else (PROCESS if process else 0)
    cycle_anomalies(
        analysis.transactions,
        graph,
        found,
        extra=extra,
        options=options,
        explain_step=explainer(analysis),
        progress=progress,
        clock=clock,
    )
    elapsed = clock() - started
    log.debug("list-append", transactions=len(analysis.transactions), seconds=elapsed)
    details: dict[str, Any] = {
        "transactions": len(analysis.transactions),
        "failed_transactions": len(analysis.failed),
        "edges": sum(len(edges) for edges in graph),
        "seconds": round(elapsed, 6),
    }
    return result_of("list-append", found, models, details)
