"""`jepsen-like test`: run a fresh cluster under faults, check its history, write a report.

jepsen-like test --workload register|set|bank|list-append
                 --nemesis none|kill|pause|partition|all[,...]
                 --nodes 5 --concurrency 10 --time-limit 60 --rate 200 --seed N
                 [--store DIR] [--nemesis-interval LOW,HIGH] [--check-time-limit S]
                 [--keys 10] [--ops-per-key 100] [--keep-data]

A progress line runs on stderr (rewritten in place on a terminal). At the end stdout gets
the verdict, each anomaly explained, the counts and the run's directory,
`<store>/<workload>-<nemesis>/<YYYYmmddTHHMMSS>/`. Exit status: 0 valid, 1 invalid,
2 unknown or refused (partition without a network namespace of our own: one line on
stderr, nothing started; like a usage error), 3 a crashed or interrupted run.
`--keys` and `--ops-per-key` shape the register workload; the others take their defaults
(bank: 8 accounts of 100; list-append: 5 keys in use, 1-4 micro-ops per transaction).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from jepsen_like import runner
from jepsen_like.console import ProgressLine
from jepsen_like.generator import REGISTER_KEYS_ACTIVE_DEFAULT, REGISTER_OPS_PER_KEY_DEFAULT
from jepsen_like.result import verdict_word
from jepsen_like.workloads import NAMES as WORKLOADS

EXIT_REFUSED = 2
SEED_MAX = 2**31
PROGRESS_INTERVAL_TERMINAL_S = 0.2
PROGRESS_INTERVAL_LOG_S = 5.0


def _interval(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH in seconds") from None
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=WORKLOADS, default="register")
    parser.add_argument(
        "--nemesis",
        default="none",
        help="none, kill, pause, partition, all, or a comma list (default none)",
    )
    parser.add_argument("--nodes", type=int, default=5, help="cluster size (default 5)")
    parser.add_argument("--concurrency", type=int, default=10, help="worker processes")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=200.0, help="operations per second")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--store", type=Path, default=Path("store"), help="default ./store")
    parser.add_argument(
        "--nemesis-interval",
        type=_interval,
        default=None,
        help="LOW,HIGH seconds of each quiet and each fault period (default: from the "
        "time limit, at most 5,10)",
    )
    parser.add_argument(
        "--check-time-limit",
        type=float,
        default=runner.CHECK_TIME_LIMIT_S_DEFAULT,
        help="seconds the checker may search before it says unknown",
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=REGISTER_KEYS_ACTIVE_DEFAULT,
        help="register: keys in use at once",
    )
    parser.add_argument(
        "--ops-per-key",
        type=int,
        default=REGISTER_OPS_PER_KEY_DEFAULT,
        help="register: invocations per key before a fresh key replaces it",
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the nodes' stores (logs are kept)"
    )


def config_of(args: argparse.Namespace) -> runner.RunConfig:
    seed = args.seed if args.seed is not None else secrets.randbelow(SEED_MAX)
    return runner.RunConfig(
        workload=args.workload,
        nemesis=args.nemesis,
        nodes=args.nodes,
        concurrency=args.concurrency,
        time_limit_s=args.time_limit,
        rate=args.rate,
        seed=seed,
        store=args.store,
        nemesis_interval_s=args.nemesis_interval,
        check_time_limit_s=args.check_time_limit,
        keys_active=args.keys,
        ops_per_key=args.ops_per_key,
        keep_data=args.keep_data,
        command_line=tuple(sys.argv),
    )


def run(args: argparse.Namespace) -> int:
    config = config_of(args)
    live = sys.stderr.isatty()
    progress = ProgressLine(
        sys.stderr, PROGRESS_INTERVAL_TERMINAL_S if live else PROGRESS_INTERVAL_LOG_S
    )

    def phase(message: str) -> None:
        """A change of phase is always shown, however recent the last progress line."""
        progress.shown_at = 0.0
        progress(message)

    try:
        test = runner.Run(config, progress, phase)
    except (runner.Refused, ValueError) as error:
        print(f"jepsen-like test: {error}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        outcome = test.execute()
    except OSError as error:  # the store directory could not be made
        progress.clear()
        print(f"jepsen-like test: {error}", file=sys.stderr)
        return runner.EXIT_CRASHED
    phase("writing the report")
    # Imported here: matplotlib takes half a second to load, which `jepsen-like check`
    # (the same program) should not pay.
    from jepsen_like.report import write_store  # noqa: PLC0415

    document = write_store(outcome)
    progress.clear()
    result = outcome.result
    if outcome.crash is not None:
        print(f"crashed: {outcome.crash}")
    elif result is not None:
        print(f"{verdict_word(result.valid)}: {result.summary}")
    else:
        print("unknown: no operation was recorded")
    for anomaly in document["anomalies"]:
        for line in anomaly["explanation"] or [anomaly["summary"]]:
            print(f"  {anomaly['checker']}: {line}")
    for note in outcome.notes:
        print(f"note: {note}")
    counts = document["counts"]
    print(
        f"{counts['operations']} operations (ok {counts['ok']}, fail {counts['fail']}, "
        f"info {counts['info']}), {counts['faults']} faults, {outcome.duration_s:.1f} s, "
        f"seed {config.seed}"
    )
    print(f"report: {outcome.directory / 'report.html'}")
    return outcome.exit_status
