"""The `jepsen-like` command.

jepsen-like check FILE --model cas-register|register|kv|mutex|multi-register|list-append|
                        rw-register|bank|set|long-fork [options]

Each subcommand lives in its own module, which gives `add_arguments(parser)` and
`run(args) -> exit status`; adding one is one entry in `SUBCOMMANDS`. Logs go to stderr;
stdout belongs to the verdicts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from jepsen_like import check, test_command
from jepsen_like.console import configure_logging

# name -> (help, module with add_arguments and run)
SUBCOMMANDS: dict[str, tuple[str, ModuleType]] = {
    "check": ("check an existing history and print the verdict", check),
    "test": ("run a fresh cluster under faults, check its history, write a report", test_command),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jepsen-like", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="debug logs on stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, module) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        runner: Callable[[argparse.Namespace], int] = module.run
        sub.set_defaults(run=runner)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
