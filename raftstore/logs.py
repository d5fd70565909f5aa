"""Logging setup for processes (server, tools, test children): structlog, one line per event.

Library modules only call `structlog.get_logger(__name__)`; a process calls `configure` once.
JSON lines for files and programs, readable key=value lines for a terminal. Logs go to
stderr (or a file), never stdout, which belongs to the program's own output.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(*, json: bool, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
