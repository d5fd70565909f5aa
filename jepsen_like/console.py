"""The terminal side of the command line: logging to stderr and a live progress line.

stdout belongs to verdicts; everything else (logs, progress) goes to stderr.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import structlog


def configure_logging(verbose: bool) -> None:
    """structlog to stderr: warnings and errors, or everything with `verbose`."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.WARNING
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    # The SDK warns when no node answers (a map refresh that found nobody): under injected
    # faults that is the expected weather, recorded in the history as info/fail; one line per
    # retry would bury the progress line. Shown with `verbose`.
    logging.getLogger("client").setLevel(logging.DEBUG if verbose else logging.ERROR)


class ProgressLine:
    """One status line on a terminal, rewritten in place; plain lines elsewhere."""

    def __init__(self, stream: TextIO, interval_s: float = 0.2) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self.shown_at = 0.0
        self.width = 0
        self.live = stream.isatty()

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self.shown_at < self.interval_s:
            return
        self.shown_at = now
        if self.live:
            self.stream.write("\r" + message.ljust(self.width))
            self.width = len(message)
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
