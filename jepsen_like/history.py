"""The history of a test: Jepsen's operation records, and their pairing into operations.

Theory of operation. A history is the sequence of `Op` records in the real-time order in
which the test driver observed them (Jepsen's contract). An `invoke` starts an operation;
its completion is the next `ok`, `fail` or `info` record of the same process:

- `ok`: it happened, and the completion's value is its result;
- `fail`: it definitely did not happen (checkers of effects drop it);
- `info`: indeterminate; it may take effect at any moment after its invoke, or never.

Rules:
- Order comes from positions in the history, never from `time_ns`: many published histories
  have no time stamps, or stamps from several clocks. `time_ns` serves statistics only.
- An invoke without a completion counts as `info`. A second invoke of a process whose first
  is still open closes the first as never completed (also `info`).
- A completion without an invoke (some published histories hold lone `ok` reads) stands
  alone: its invoke is taken to be at its own position.
- Records without a process (some hand-written Elle histories) pair in sequence among
  themselves, as one process would.
- Nemesis records (`process == "nemesis"`) stay in the history for plots and timelines, and
  are not client operations: checkers never see them.
- Values are frozen on the way in: sequences become tuples and sets frozensets, so results
  can serve as model states and dictionary keys. Maps stay dicts.

Our own file format is JSON lines with Jepsen's field names (`process`, `type`, `f`,
`value`, `time` in ns, `index`) plus, when present, `key` (the object a keyed operation
touches, as in Porcupine's kv histories) and `error`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Any, Literal, TypeAlias, cast

OpType: TypeAlias = Literal["invoke", "ok", "fail", "info"]
Process: TypeAlias = int | str | None
OP_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})
NEMESIS = "nemesis"
_BARE_NAME = re.compile(r"[A-Za-z_][\w.*+!?<>=/-]*")


class HistoryError(ValueError):
    """A history record that cannot be read: its position and why."""


@dataclass(frozen=True, slots=True)
class Op:
    """One record of the history, as Jepsen writes it."""

    index: int
    time_ns: int | None
    process: Process
    type: OpType
    f: str
    value: Any
    key: Any = None
    error: Any = None

    @property
    def is_nemesis(self) -> bool:
        return self.process == NEMESIS


@dataclass(frozen=True, slots=True)
class Operation:
    """An invoke paired with its completion: one call of one process.

    `call` and `ret` are positions in the history; `ret` is None when the operation never
    completed. `type` is the outcome: ok, fail or info (never completed counts as info).
    `value` is the result for ok operations and the argument otherwise, as Knossos does.
    """

    id: int
    invoke: Op
    completion: Op | None
    call: int
    ret: int | None

    @property
    def process(self) -> Process:
        return self.invoke.process

    @property
    def f(self) -> str:
        return self.invoke.f or (self.completion.f if self.completion else "")

    @property
    def key(self) -> Any:
        if self.invoke.key is not None:
            return self.invoke.key
        return self.completion.key if self.completion is not None else None

    @property
    def type(self) -> OpType:
        if self.completion is None or self.completion.type == "invoke":
            return "info"
        return self.completion.type

    @property
    def value(self) -> Any:
        if self.completion is not None and self.completion.type == "ok":
            return self.completion.value
        return self.invoke.value

    @property
    def index(self) -> int:
        """The index a report names: the completion's when there is one, as Knossos does."""
        return self.completion.index if self.completion is not None else self.invoke.index

    @property
    def latency_ns(self) -> int | None:
        if self.completion is None:
            return None
        if self.invoke.time_ns is None or self.completion.time_ns is None:
            return None
        return self.completion.time_ns - self.invoke.time_ns

    def describe(self) -> str:
        """A short human form: `process 3 read 2 (ok, index 14)`."""
        who = "" if self.process is None else f"process {self.process} "
        what = f"{self.f} " if self.f else ""
        return f"{who}{what}{render_value(self.value)} ({self.type}, index {self.index})"


@dataclass(frozen=True)
class History:
    """Records in real-time order; pairing is computed once, on first use."""

    ops: tuple[Op, ...]
    source: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.ops)

    @cached_property
    def operations(self) -> tuple[Operation, ...]:
        """Client operations (nemesis records excluded), in the order of their invokes."""
        return pair(self.ops)

    @cached_property
    def nemesis_ops(self) -> tuple[Op, ...]:
        return tuple(op for op in self.ops if op.is_nemesis)

    def without_nemesis(self) -> History:
        return History(tuple(op for op in self.ops if not op.is_nemesis), self.source)


def pair(ops: Sequence[Op]) -> tuple[Operation, ...]:
    """Pair each client invoke with its completion; see the module rules."""
    pending: dict[Process, tuple[int, Op]] = {}
    # Entries are (call position, ret position or None, invoke, completion).
    found: list[tuple[int, int | None, Op, Op | None]] = []
    for position, op in enumerate(ops):
        if op.is_nemesis:
            continue
        if op.type == "invoke":
            previous = pending.pop(op.process, None)
            if previous is not None:
                found.append((previous[0], None, previous[1], None))
            pending[op.process] = (position, op)
            continue
        opened = pending.pop(op.process, None)
        if opened is None:
            lone_invoke = Op(op.index, op.time_ns, op.process, "invoke", op.f, op.value, op.key)
            found.append((position, position, lone_invoke, op))
        else:
            found.append((opened[0], position, opened[1], op))
    found.extend((position, None, op, None) for position, op in pending.values())
    found.sort(key=lambda entry: entry[0])
    return tuple(
        Operation(number, invoke, completion, call, ret)
        for number, (call, ret, invoke, completion) in enumerate(found)
    )


def freeze(value: Any) -> Any:
    """Sequences to tuples and sets to frozensets, recursively; maps stay dicts."""
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    if isinstance(value, set | frozenset):
        return frozenset(freeze(item) for item in value)
    if isinstance(value, dict):
        return {freeze(k): freeze(v) for k, v in value.items()}
    return value


def op_from_fields(fields: Mapping[str, Any], position: int) -> Op:
    """An `Op` from a record whose field names are plain strings (EDN keywords stripped)."""
    kind = fields.get("type")
    if kind not in OP_TYPES:
        raise HistoryError(f"record {position}: type {kind!r} is not invoke/ok/fail/info")
    process = fields.get("process")
    if process is not None and not isinstance(process, int | str):
        raise HistoryError(f"record {position}: process {process!r} is not an int or a name")
    index = fields.get("index", position)
    time_ns = fields.get("time")
    f = fields.get("f")
    return Op(
        index=index if isinstance(index, int) else position,
        time_ns=time_ns if isinstance(time_ns, int) else None,
        process=process,
        type=cast(OpType, kind),
        f="" if f is None else str(f),
        value=freeze(fields.get("value")),
        key=freeze(fields.get("key")),
        error=freeze(fields.get("error")),
    )


def history_from_records(records: Iterable[Mapping[str, Any]], source: str = "") -> History:
    return History(
        tuple(op_from_fields(record, position) for position, record in enumerate(records)),
        source,
    )


# Our own format: JSON lines.


def to_json_value(value: Any) -> Any:
    """A JSON-able copy: tuples and sets to lists, map keys to strings."""
    if isinstance(value, tuple | list):
        return [to_json_value(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [to_json_value(item) for item in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else json.dumps(to_json_value(k))): to_json_value(v)
            for k, v in value.items()
        }
    return value


def op_to_json(op: Op) -> dict[str, Any]:
    record: dict[str, Any] = {
        "index": op.index,
        "time": op.time_ns,
        "process": op.process,
        "type": op.type,
        "f": op.f,
        "value": to_json_value(op.value),
    }
    if op.key is not None:
        record["key"] = to_json_value(op.key)
    if op.error is not None:
        record["error"] = to_json_value(op.error)
    return record


def write_jsonl(history: History, stream: IO[str]) -> None:
    for op in history.ops:
        stream.write(json.dumps(op_to_json(op), separators=(",", ":")))
        stream.write("\n")


def dumps_jsonl(history: History) -> str:
    return "".join(json.dumps(op_to_json(op), separators=(",", ":")) + "\n" for op in history.ops)


def iter_json_records(text: str) -> Iterator[Mapping[str, Any]]:
    """Records of JSON lines, or of one JSON array of objects (elle-cli's JSON form)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        loaded = json.loads(stripped)
        if not isinstance(loaded, list):
            raise HistoryError("a JSON history must be an array of objects or JSON lines")
        records: Iterable[Any] = loaded
    else:
        records = (json.loads(line) for line in text.splitlines() if line.strip())
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise HistoryError(f"record {position} is not a JSON object")
        yield record


def loads_json(text: str, source: str = "") -> History:
    return history_from_records(iter_json_records(text), source)


def render_value(value: Any) -> str:
    """Values in EDN-like brackets, as Jepsen prints them: `[1 2]`, `nil`."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + " ".join(render_value(item) for item in value) + "]"
    if isinstance(value, frozenset | set):
        return "#{" + " ".join(sorted(render_value(item) for item in value)) + "}"
    if isinstance(value, dict):
        inner = ", ".join(f"{render_value(k)} {render_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, str):
        return value if _BARE_NAME.fullmatch(value) else json.dumps(value)
    return str(value)
