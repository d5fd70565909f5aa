"""Checker speed: Porcupine's etcd histories, a 100,000-operation register history, and a
10,000-transaction list-append history.

Porcupine (Go) checks its 102 etcd histories in 0.92 s on this kind of machine; the issue
asks for at most twice that. The shared checker data holds 70 of them (etcd_000..069); the
figures are for what is there, read once and checked `--repeat` times (best run shown).

    python benchmarks/bench_checker.py [--repeat 3] [--seed 1]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from jepsen_like.elle import check_list_append
from jepsen_like.formats import read_history
from jepsen_like.history import History
from jepsen_like.linearizable import check_linearizable
from jepsen_like.models import KeyValue, Register
from jepsen_like.result import Result
from jepsen_like.synthetic import list_append_history, register_history

DATA = Path(__file__).resolve().parents[2] / "shared" / "checker-data"
ETCD = DATA / "porcupine" / "test_data" / "jepsen"
KV = DATA / "porcupine" / "test_data" / "kv"
HUGE_SCC = DATA / "elle" / "histories" / "huge-scc.edn"
PORCUPINE_102_FILES_S = 0.92


def best_of(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    best = float("inf")
    value: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        value = work()
        best = min(best, time.perf_counter() - started)
    return best, value


def etcd_figures(repeat: int) -> dict[str, float]:
    paths = sorted(ETCD.glob("etcd_*.log"))
    if not paths:
        return {}
    started = time.perf_counter()
    histories = [read_history(path) for path in paths]
    read_s = time.perf_counter() - started
    model = Register(initial_value=None, nil_read="absent", cas=True)

    def check_all() -> list[float]:
        each = []
        for history in histories:
            begun = time.perf_counter()
            check_linearizable(history, model)
            each.append(time.perf_counter() - begun)
        return each

    total_s, each = best_of(repeat, check_all)
    figures = {
        "etcd_files": float(len(paths)),
        "etcd_read_s": read_s,
        "etcd_check_s": total_s,
        "etcd_worst_file_s": max(each),
        "etcd_check_s_per_file_ms": total_s / len(paths) * 1000,
        "porcupine_s_for_these_files": PORCUPINE_102_FILES_S * len(paths) / 102,
    }
    kv_paths = sorted(KV.glob("*.txt"))
    if kv_paths:
        kv_histories = [read_history(path) for path in kv_paths]
        kv_s, _ = best_of(repeat, lambda: [check_linearizable(h, KeyValue()) for h in kv_histories])
        figures["kv_files"] = float(len(kv_paths))
        figures["kv_check_s"] = kv_s
    return figures


def timed_check(
    label: str, make: Callable[[], History], check: Callable[[History], Result]
) -> dict[str, float]:
    started = time.perf_counter()
    history = make()
    made_s = time.perf_counter() - started
    started = time.perf_counter()
    result = check(history)
    checked_s = time.perf_counter() - started
    assert result.valid is True, (label, result.summary)
    return {
        f"{label}_operations": float(len(history.operations)),
        f"{label}_generate_s": made_s,
        f"{label}_check_s": checked_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    cas = Register(initial_value=None, nil_read="absent", cas=True)
    figures: dict[str, float] = {}
    figures.update(etcd_figures(args.repeat))
    figures.update(
        timed_check(
            "register_1key",
            lambda: register_history(
                100_000, processes=5, keys=1, crash_rate=0.001, seed=args.seed
            ),
            lambda history: check_linearizable(history, cas),
        )
    )
    figures.update(
        timed_check(
            "register_100keys",
            lambda: register_history(
                100_000, processes=10, keys=100, crash_rate=0.01, seed=args.seed
            ),
            lambda history: check_linearizable(history, cas),
        )
    )
    figures.update(
        timed_check(
            "list_append",
            lambda: list_append_history(
                10_000, processes=10, keys=16, crash_rate=0.01, abort_rate=0.05, seed=args.seed
            ),
            check_list_append,
        )
    )
    if HUGE_SCC.exists():
        huge = read_history(HUGE_SCC)
        started = time.perf_counter()
        verdict = check_list_append(huge)
        figures["huge_scc_check_s"] = time.perf_counter() - started
        assert verdict.valid is False

    rows = [
        ("etcd histories (files)", "etcd_files", "", "{:.0f}"),
        ("  read", "etcd_read_s", "s", "{:.3f}"),
        ("  check, all files", "etcd_check_s", "s", "{:.3f}"),
        ("  check, worst file", "etcd_worst_file_s", "s", "{:.3f}"),
        ("  Porcupine (Go), same count", "porcupine_s_for_these_files", "s", "{:.3f}"),
        ("kv histories, check all", "kv_check_s", "s", "{:.3f}"),
        ("register 100k ops, 1 key: generate", "register_1key_generate_s", "s", "{:.2f}"),
        ("  check", "register_1key_check_s", "s", "{:.2f}"),
        ("register 100k ops, 100 keys: check", "register_100keys_check_s", "s", "{:.2f}"),
        ("list-append txns", "list_append_operations", "", "{:.0f}"),
        ("  generate", "list_append_generate_s", "s", "{:.2f}"),
        ("  check (strict serializable)", "list_append_check_s", "s", "{:.2f}"),
        ("Elle huge-scc.edn, check", "huge_scc_check_s", "s", "{:.2f}"),
    ]
    for name, key, unit, style in rows:
        if key in figures:
            print(f"{name:<38} {style.format(figures[key]):>10} {unit}")
    print(json.dumps({name: round(value, 4) for name, value in figures.items()}))


if __name__ == "__main__":
    main()
