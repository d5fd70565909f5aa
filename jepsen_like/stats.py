"""Latency and throughput of a history, by operation function and outcome.

- Latency: for every completed client operation with time stamps, completion time minus
  invoke time; percentiles 50, 95, 99 and the maximum, in milliseconds, per (f, outcome).
- Throughput: completions per second of test time, per (f, outcome), in one-second bins
  from the first record's time stamp.
- Counts: ok, fail and info per f. Jepsen's stats checker calls a history valid only when
  every f has at least one ok; `check_stats` says the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jepsen_like.history import History
from jepsen_like.result import Result

PERCENTILES = (50, 95, 99)
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Series:
    f: str
    outcome: str
    count: int
    latency_ms: dict[str, float]  # "p50", "p95", "p99", "max"; empty without time stamps
    per_second: tuple[int, ...]  # completions in each one-second bin


@dataclass(frozen=True)
class Stats:
    duration_s: float
    counts: dict[str, dict[str, int]]  # f -> outcome -> count
    series: tuple[Series, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "counts": self.counts,
            "series": [
                {
                    "f": s.f,
                    "outcome": s.outcome,
                    "count": s.count,
                    "latency_ms": s.latency_ms,
                    "mean_per_s": round(s.count / max(len(s.per_second), 1), 3),
                    "peak_per_s": max(s.per_second, default=0),
                }
                for s in self.series
            ],
        }


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(math.ceil(percent / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def stats(history: History) -> Stats:
    stamps = [op.time_ns for op in history.ops if op.time_ns is not None]
    start = min(stamps, default=0)
    end = max(stamps, default=0)
    bins = (end - start) // NS_PER_S + 1 if stamps else 0
    counts: dict[str, dict[str, int]] = {}
    latencies: dict[tuple[str, str], list[float]] = {}
    per_second: dict[tuple[str, str], list[int]] = {}
    for operation in history.operations:
        outcome: str = operation.type
        counts.setdefault(operation.f, {"ok": 0, "fail": 0, "info": 0})[outcome] += 1
        group = (operation.f, outcome)
        latencies.setdefault(group, [])
        per_second.setdefault(group, [0] * bins)
        latency = operation.latency_ns
        if latency is not None:
            latencies[group].append(latency / NS_PER_MS)
        completion = operation.completion
        if completion is not None and completion.time_ns is not None and bins:
            per_second[group][(completion.time_ns - start) // NS_PER_S] += 1
    series = []
    for (f, outcome), values in sorted(latencies.items()):
        values.sort()
        summary: dict[str, float] = {}
        if values:
            summary = {f"p{p}": round(percentile(values, p), 3) for p in PERCENTILES}
            summary["max"] = round(values[-1], 3)
        count = counts[f][outcome]
        series.append(Series(f, outcome, count, summary, tuple(per_second[(f, outcome)])))
    return Stats(round((end - start) / NS_PER_S, 3), counts, tuple(series))


def check_stats(history: History) -> Result:
    figures = stats(history)
    without_ok = sorted(f for f, outcomes in figures.counts.items() if outcomes["ok"] == 0)
    details = figures.to_json()
    if without_ok:
        return Result(False, "stats", f"no ok operation for {', '.join(without_ok)}", details)
    total = sum(sum(outcomes.values()) for outcomes in figures.counts.values())
    return Result(True, "stats", f"{total} operations, every function had an ok", details)


def render_table(figures: Stats) -> list[str]:
    """A readable table: one line per (f, outcome)."""
    lines = [
        f"{'f':<12} {'outcome':<7} {'count':>8} {'p50 ms':>9} {'p95 ms':>9} "
        f"{'p99 ms':>9} {'max ms':>9} {'ops/s':>8}"
    ]
    for s in figures.series:
        latency = [
            f"{s.latency_ms.get(k, float('nan')):>9.2f}" for k in ("p50", "p95", "p99", "max")
        ]
        rate = s.count / max(len(s.per_second), 1)
        lines.append(f"{s.f:<12} {s.outcome:<7} {s.count:>8} {' '.join(latency)} {rate:>8.1f}")
    return lines
