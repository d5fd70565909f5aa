"""Argument checks shared by the SDK's translators: every misuse is a ParamError (code -2).

The engine's own validators (`raftstore.keys`, `raftstore.values`) raise PARAMETER_ERROR (4,
the server's "bad request"); raised on the client side, before anything is sent, the official
client's class for that is ParamError, so `param_errors()` re-raises them as one, keeping the
message. Codes with a class of their own (BIN_NAME_TOO_LONG -> BinNameError, INVALID_GEOJSON)
keep it, as the official client does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from raftstore.errors import RaftstoreError, ResultCode, error


def param_error(msg: str) -> RaftstoreError:
    return error(ResultCode.PARAM_ERROR, msg)


@contextmanager
def param_errors(context: str = "") -> Iterator[None]:
    """Turn PARAMETER_ERROR raised inside into ParamError (other codes pass unchanged)."""
    try:
        yield
    except RaftstoreError as exc:
        if exc.code != ResultCode.PARAMETER_ERROR:
            raise
        prefix = f"{context}: " if context else ""
        raise param_error(prefix + exc.msg) from None


def check_int(value: object, what: str, low: int, high: int) -> int:
    """`value` as an int in low..high; bool is refused (it is an int only by accident)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise param_error(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise param_error(f"{what} must be in {low}..{high}, not {value}")
    return value


def check_choice(value: object, what: str, choices: dict[int, str]) -> int:
    """`value` as one of the int constants in `choices` (value -> constant name)."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in choices:
        named = ", ".join(f"{name}={number}" for number, name in sorted(choices.items()))
        raise param_error(f"{what} must be one of {named}, not {value!r}")
    return value
