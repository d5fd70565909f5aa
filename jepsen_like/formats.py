"""Reading a history file in any of the formats the checker accepts, by content.

- JSON lines of op records (our own format), or one JSON array of them (elle-cli);
- Jepsen EDN: one collection of op maps, or a stream of them (Knossos, Elle, Jepsen's
  `history.edn`, Porcupine's kv logs, which add a `:key` field);
- Jepsen's legacy console log, as in Porcupine's etcd test data:
  `INFO  jepsen.util - <process> :<type> :<f> <value>`, fields split by tabs or spaces.

Console logs follow Porcupine's reading (`parseJepsenLog`): a `:fail` CAS is a CAS whose
compare failed, and a `:fail` read that timed out carries no information; both had no
effect, so both stay `fail` records here and checkers of effects drop them. An `:info`
record leaves its operation open: it may have happened. Lines that are not op lines are
ignored; `:nemesis` lines become nemesis records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from jepsen_like.edn import loads_all, loads_edn
from jepsen_like.history import History, Op, OpType, Process, freeze, loads_json

Format = Literal["jsonl", "json", "edn", "jepsen-log"]

_CONSOLE_LINE = re.compile(
    r"^\S+\s+jepsen\.util\s+-\s+(?P<process>\S+)\s+:(?P<type>invoke|ok|fail|info)"
    r"\s+:(?P<f>\S+)\s*(?P<value>.*?)\s*$"
)


def detect_format(text: str) -> Format:
    """Which reader a history's text needs, judged from its first records."""
    head = text.lstrip()
    for line in text.splitlines()[:50]:
        if _CONSOLE_LINE.match(line):
            return "jepsen-log"
    if head.startswith("["):
        try:
            json.loads(head)
        except ValueError:
            return "edn"
        return "json"
    if head.startswith("{"):
        first = head.split("\n", 1)[0]
        try:
            json.loads(first)
        except ValueError:
            return "edn"
        return "jsonl"
    return "edn"


def loads_jepsen_log(text: str, source: str = "") -> History:
    """Op lines of a Jepsen console log; every other line is skipped."""
    ops: list[Op] = []
    for line in text.splitlines():
        match = _CONSOLE_LINE.match(line)
        if match is None:
            continue
        raw_process = match["process"]
        process: Process = (
            int(raw_process) if raw_process.lstrip("-").isdigit() else raw_process.lstrip(":")
        )
        raw_value = match["value"]
        forms = loads_all(raw_value) if raw_value else [None]
        value = freeze(forms[0]) if len(forms) == 1 else freeze(tuple(forms))
        kind: OpType = match["type"]  # type: ignore[assignment]
        position = len(ops)
        ops.append(Op(position, None, process, kind, match["f"], value))
    return History(tuple(ops), source)


def loads_history(text: str, source: str = "", format: Format | None = None) -> History:
    chosen = format or detect_format(text)
    if chosen in ("jsonl", "json"):
        return loads_json(text, source)
    if chosen == "jepsen-log":
        return loads_jepsen_log(text, source)
    return loads_edn(text, source)


def read_history(path: Path | str, format: Format | None = None) -> History:
    """The history in the file at `path`, in the format its content shows."""
    file = Path(path)
    return loads_history(file.read_text(encoding="utf-8"), str(file), format)
