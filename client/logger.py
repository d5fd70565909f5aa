"""The SDK's loggers: structlog events carried by the standard `logging` module.

A library must not print: events go to the stdlib logger of the module's name, so an
application that configures nothing sees only warnings and errors (on stderr, through
logging's last-resort handler), and one that configures `logging` routes them as it likes.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog


def get_logger(name: str) -> Any:
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
