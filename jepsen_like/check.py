"""One entry point for every checker: `check(history, model)`, and `jepsen-like check`.

Models (`--model`):
- linearizability per key: `register`, `cas-register`, `kv`, `mutex`, `multi-register`;
- transactions (Elle): `list-append`, `rw-register`, with `--consistency-models`;
- `bank`, `set`, `long-fork`.

`jepsen-like check FILE --model M` reads our JSON lines, a JSON array, Jepsen EDN or a
Jepsen/Porcupine console log (told apart by content), shows a progress line on stderr
while it checks, prints the verdict and its explanation on stdout (or the whole result
as JSON with `--json`), and exits 0 valid, 1 invalid, 2 unknown.

Register options: `--initial VALUE` (JSON, default null) is the register's first value,
and `--nil-read absent|unknown` what a nil read means: the register holds nil (our
histories, Porcupine) or "no information" (Knossos). `--independent` splits Jepsen
`independent` values `[k v]` into a key and a value.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from jepsen_like import consistency
from jepsen_like.bank import BankOptions, check_bank
from jepsen_like.console import ProgressLine, configure_logging
from jepsen_like.elle import Options, check_list_append
from jepsen_like.formats import read_history
from jepsen_like.history import History, HistoryError, freeze
from jepsen_like.linearizable import Budget, Progress, check_linearizable
from jepsen_like.long_fork import check_long_fork
from jepsen_like.models import LINEARIZABLE_MODELS, ModelError, model_named
from jepsen_like.result import UNKNOWN, Result, verdict_word
from jepsen_like.rw_register import check_rw_register
from jepsen_like.sets import SetOptions, check_set
from jepsen_like.stats import render_table, stats

TRANSACTIONAL_MODELS = ("list-append", "rw-register")
OTHER_MODELS = ("bank", "set", "long-fork")
MODEL_NAMES = (*LINEARIZABLE_MODELS, *TRANSACTIONAL_MODELS, *OTHER_MODELS)


@dataclass(frozen=True)
class CheckOptions:
    initial: Any = None  # a register's first value; a map for multi-register
    nil_read: Literal["absent", "unknown"] = "absent"
    independent: bool = False
    budget: Budget = field(default_factory=Budget)
    consistency_models: tuple[str, ...] = ("strict-serializable",)
    cycle_search_seconds: float = 10.0
    accounts: frozenset[Any] | None = None
    total: int | None = None
    negative_balances: bool = False
    linearizable_set: bool = True


def independent(history: History) -> History:
    """Jepsen `independent` histories: each value `[k v]` becomes key k and value v."""
    ops = []
    for op in history.ops:
        if op.is_nemesis or not isinstance(op.value, tuple) or len(op.value) != 2:
            ops.append(op)
            continue
        ops.append(replace(op, key=op.value[0], value=op.value[1]))
    return History(tuple(ops), history.source)


def check(
    history: History,
    model: str,
    options: CheckOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Check a history with the checker of `model` (one of `MODEL_NAMES`)."""
    options = options or CheckOptions()
    if options.independent:
        history = independent(history)
    if model in LINEARIZABLE_MODELS:
        try:
            spec = model_named(model, options.initial, options.nil_read)
        except ModelError as error:
            return Result(UNKNOWN, model, str(error))
        report = None if progress is None else _linearizable_progress(progress)
        return check_linearizable(history, spec, options.budget, report)
    if model in TRANSACTIONAL_MODELS:
        elle_options = Options(options.consistency_models, options.cycle_search_seconds)
        if model == "list-append":
            return check_list_append(history, elle_options, progress)
        return check_rw_register(history, elle_options, progress=progress)
    if model == "bank":
        bank = BankOptions(options.accounts, options.total, options.negative_balances)
        return check_bank(history, bank)
    if model == "set":
        return check_set(history, SetOptions(options.linearizable_set))
    if model == "long-fork":
        return check_long_fork(history)
    return Result(UNKNOWN, model, f"no checker for model {model!r}; known: {MODEL_NAMES}")


def _linearizable_progress(report: Callable[[str], None]) -> Callable[[Progress], None]:
    def show(progress: Progress) -> None:
        report(
            f"{progress.decided}/{progress.partitions} keys decided, "
            f"{progress.steps:,} search steps, {progress.elapsed_s:.1f} s"
        )

    return show


# The command line.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the history: JSON lines, EDN or a Jepsen log")
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--initial", type=json.loads, default=None, help="register start (JSON)")
    parser.add_argument("--nil-read", choices=("absent", "unknown"), default="absent")
    parser.add_argument("--independent", action="store_true", help="values are [key value]")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds, then unknown")
    parser.add_argument("--steps-max", type=int, default=None, help="search steps, then unknown")
    parser.add_argument(
        "--consistency-models",
        default="strict-serializable",
        help=f"comma-separated, of {', '.join(consistency.MODELS)}",
    )
    parser.add_argument("--accounts", default=None, help="bank accounts, comma-separated")
    parser.add_argument("--total", type=int, default=None, help="bank total")
    parser.add_argument("--allow-negative-balances", action="store_true")
    parser.add_argument("--stats", action="store_true", help="also print latency/throughput")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")


def options_of(args: argparse.Namespace) -> CheckOptions:
    accounts = None
    if args.accounts:
        accounts = frozenset(
            int(name) if name.lstrip("-").isdigit() else name for name in args.accounts.split(",")
        )
    models = tuple(name.strip() for name in args.consistency_models.split(",") if name.strip())
    return CheckOptions(
        initial=freeze(args.initial),
        nil_read=args.nil_read,
        independent=args.independent,
        budget=Budget(args.steps_max, args.time_limit),
        consistency_models=models,
        cycle_search_seconds=args.time_limit or 10.0,
        accounts=accounts,
        total=args.total,
        negative_balances=args.allow_negative_balances,
    )


def run(args: argparse.Namespace) -> int:
    """`jepsen-like check`: read, check, print; the exit status is the verdict."""
    progress = ProgressLine(sys.stderr)
    try:
        options = options_of(args)
        consistency.check_models(options.consistency_models)
    except (ValueError, consistency.UnknownModel) as error:
        print(f"jepsen-like check: {error}", file=sys.stderr)
        return 2
    progress(f"reading {args.file}")
    try:
        history = read_history(args.file)
    except (OSError, ValueError, HistoryError) as error:
        progress.clear()
        print(f"jepsen-like check: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    progress(f"checking {len(history.operations)} operations as {args.model}")
    started = time.monotonic()
    result = check(history, args.model, options, progress)
    progress.clear()
    if args.json:
        document = result.to_json()
        if args.stats:
            document["stats"] = stats(history).to_json()
        print(json.dumps(document, default=str))
        return result.exit_status
    elapsed = time.monotonic() - started
    print(f"{verdict_word(result.valid)}: {result.checker}: {result.summary} ({elapsed:.2f} s)")
    for line in result.explanation:
        print(line)
    if args.stats:
        for line in render_table(stats(history)):
            print(line)
    return result.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    """`check` on its own: the arguments after `jepsen-like check`."""
    parser = argparse.ArgumentParser(prog="jepsen-like check", description=__doc__.splitlines()[0])
    add_arguments(parser)
    arguments = parser.parse_args(argv)
    configure_logging(verbose=False)
    return run(arguments)
