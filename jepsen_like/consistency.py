"""Which consistency models an anomaly rules out (after Elle's `consistency-model`).

Three small graphs, data only:
- `IMPLIED_ANOMALIES`: finding an anomaly means these are present too (G0 is a G1c; a
  base anomaly is trivially its -process and -realtime variant; a -process one is a
  -realtime one, as processes are single-threaded).
- `WEAKER_MODELS`: a history satisfying a model satisfies these weaker ones.
- `PROSCRIBED`: the anomalies each model directly rules out; a model also rules out
  everything the models it implies rule out.

`prohibited(models)` is every anomaly that fails a check for those models, and
`boundary(anomalies)` names the weakest models a history is not (`not`) and the stronger
ones that follow (`also_not`), as Elle reports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

IMPLIED_ANOMALIES: Final[Mapping[str, tuple[str, ...]]] = {
    "G0": ("G1c", "G0-process"),
    "G0-process": ("G1c-process", "G0-realtime"),
    "G0-realtime": ("G1c-realtime",),
    "G1a": ("G1",),
    "G1b": ("G1",),
    "G1c": ("G1", "G1c-process"),
    "G1c-process": ("G1c-realtime", "G1-process"),
    "G1c-realtime": ("G1-realtime",),
    "G1": ("G1-process",),
    "G1-process": ("G1-realtime",),
    "G-single": ("G-nonadjacent", "G-single-process"),
    "G-single-process": ("G-nonadjacent-process", "G-single-realtime"),
    "G-single-realtime": ("G-nonadjacent-realtime",),
    "G-nonadjacent": ("G2", "G-nonadjacent-process"),
    "G-nonadjacent-process": ("G2-process", "G-nonadjacent-realtime"),
    "G-nonadjacent-realtime": ("G2-realtime",),
    "G2-item": ("G2", "G2-item-process"),
    "G2-item-process": ("G2-process", "G2-item-realtime"),
    "G2-item-realtime": ("G2-realtime",),
    "G2": ("G2-process",),
    "G2-process": ("G2-realtime",),
    "incompatible-order": ("G1a",),
    "future-read": ("G1c",),
    "dirty-update": ("G1a",),
    "lost-update": ("G2-item",),
}

WEAKER_MODELS: Final[Mapping[str, tuple[str, ...]]] = {
    "strict-serializable": (
        "serializable",
        "snapshot-isolation",
        "strong-snapshot-isolation",
        "strong-session-serializable",
    ),
    "strong-session-serializable": ("serializable", "strong-session-snapshot-isolation"),
    "strong-snapshot-isolation": (
        "strong-session-snapshot-isolation",
        "strong-read-committed",
    ),
    "strong-session-snapshot-isolation": (
        "snapshot-isolation",
        "strong-session-read-committed",
    ),
    "serializable": ("repeatable-read", "snapshot-isolation"),
    "repeatable-read": ("read-committed",),
    "snapshot-isolation": ("read-committed",),
    "strong-read-committed": ("strong-session-read-committed", "strong-read-uncommitted"),
    "strong-session-read-committed": ("read-committed", "strong-session-read-uncommitted"),
    "strong-read-uncommitted": ("strong-session-read-uncommitted",),
    "strong-session-read-uncommitted": ("read-uncommitted",),
    "read-committed": ("read-uncommitted",),
    "read-uncommitted": (),
}

PROSCRIBED: Final[Mapping[str, tuple[str, ...]]] = {
    "read-uncommitted": ("G0", "duplicate-elements", "cyclic-versions"),
    "read-committed": ("G1",),
    "repeatable-read": ("G1", "G2-item", "lost-update"),
    "snapshot-isolation": ("internal", "G1", "G-nonadjacent"),
    "serializable": ("G1", "G2", "internal"),
    "strict-serializable": ("G1", "G1c-realtime", "G2-realtime"),
    "strong-session-read-uncommitted": ("G0-process",),
    "strong-session-read-committed": ("G1c-process",),
    "strong-read-uncommitted": ("G0-realtime",),
    "strong-read-committed": ("G1c-realtime",),
    "strong-session-snapshot-isolation": ("internal", "G1-process", "G-nonadjacent-process"),
    "strong-snapshot-isolation": ("internal", "G1-realtime", "G-nonadjacent-realtime"),
    "strong-session-serializable": ("G1-process", "G2-process"),
}

MODELS: Final = tuple(WEAKER_MODELS)
# Anomalies that make a verdict "unknown" rather than false.
UNKNOWN_ANOMALIES: Final = frozenset({"cycle-search-timeout", "empty-transaction-graph"})


class UnknownModel(ValueError):
    pass


def _closure(start: Iterable[str], edges: Mapping[str, Iterable[str]]) -> set[str]:
    seen: set[str] = set()
    pending = list(start)
    while pending:
        item = pending.pop()
        if item in seen:
            continue
        seen.add(item)
        pending.extend(edges.get(item, ()))
    return seen


def _reversed(edges: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    reverse: dict[str, list[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            reverse.setdefault(target, []).append(source)
    return reverse


def check_models(models: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(models)
    unknown = [model for model in chosen if model not in WEAKER_MODELS]
    if unknown:
        raise UnknownModel(f"unknown consistency model(s) {unknown}; known: {list(MODELS)}")
    return chosen


def implied_anomalies(anomalies: Iterable[str]) -> set[str]:
    return _closure(anomalies, IMPLIED_ANOMALIES)


def prohibited(models: Iterable[str]) -> set[str]:
    """Every anomaly whose presence means one of `models` does not hold."""
    direct = {
        anomaly
        for model in _closure(check_models(models), WEAKER_MODELS)
        for anomaly in PROSCRIBED.get(model, ())
    }
    return _closure(direct, _reversed(IMPLIED_ANOMALIES))


def impossible_models(anomalies: Iterable[str]) -> set[str]:
    present = implied_anomalies(anomalies)
    direct = {model for model, ruled in PROSCRIBED.items() if present & set(ruled)}
    return _closure(direct, _reversed(WEAKER_MODELS))


def boundary(anomalies: Iterable[str]) -> tuple[list[str], list[str]]:
    """(`not`, `also_not`): the weakest impossible models, and the other impossible ones."""
    impossible = impossible_models(anomalies)
    weakest = sorted(
        model
        for model in impossible
        if not (_closure(WEAKER_MODELS[model], WEAKER_MODELS) & impossible)
    )
    return weakest, sorted(impossible - set(weakest))


def needs_graphs(models: Iterable[str]) -> tuple[bool, bool]:
    """(process edges, realtime edges) that checking for `models` requires."""
    banned = prohibited(models)
    realtime = any(anomaly.endswith("-realtime") for anomaly in banned)
    process = not realtime and any(anomaly.endswith("-process") for anomaly in banned)
    return process, realtime
