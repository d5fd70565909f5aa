"""Operation descriptions: plain, frozen data that the client builds and the engine applies.

An `Op` is `(code, bin, args)`. The builders below mirror the official client's
`aerospike_helpers.operations` (`read`, `write`, `increment`, `list_append`, ...). The logic
that applies them lives in `raftstore.operations`; this module is import-light so the SDK
can use it.

Which ops return a value (an entry `(bin, value)` in the results, in op order):
- READ of one bin -> one entry; READ of all bins (bin None) -> one entry per bin;
- every LIST_* and MAP_* op -> one entry (see the builder's docstring for the value);
- WRITE, DELETE, TOUCH, INCREMENT, APPEND, PREPEND -> none.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from raftstore.frozen import fast_init


class OpCode(enum.IntEnum):
    READ = 1
    WRITE = 2
    DELETE = 3
    TOUCH = 4
    INCREMENT = 5
    APPEND = 6
    PREPEND = 7
    LIST_APPEND = 20
    LIST_APPEND_ITEMS = 21
    LIST_INSERT = 22
    LIST_POP = 23
    LIST_REMOVE = 24
    LIST_SET = 25
    LIST_GET = 26
    LIST_GET_RANGE = 27
    LIST_SIZE = 28
    LIST_CLEAR = 29
    LIST_SORT = 30
    MAP_PUT = 40
    MAP_PUT_ITEMS = 41
    MAP_INCREMENT = 42
    MAP_GET_BY_KEY = 43
    MAP_REMOVE_BY_KEY = 44
    MAP_SIZE = 45
    MAP_CLEAR = 46


READ_ONLY_CODES = frozenset(
    {
        OpCode.READ,
        OpCode.LIST_GET,
        OpCode.LIST_GET_RANGE,
        OpCode.LIST_SIZE,
        OpCode.MAP_GET_BY_KEY,
        OpCode.MAP_SIZE,
    }
)


@fast_init
@dataclass(frozen=True, slots=True)
class Op:
    code: OpCode
    bin: str | None = None
    args: tuple[Any, ...] = ()

    @property
    def is_read(self) -> bool:
        return self.code in READ_ONLY_CODES


def is_read_only(ops: tuple[Op, ...] | list[Op]) -> bool:
    return all(op.is_read for op in ops)


def read(bin: str | None = None) -> Op:
    """Read one bin, or every bin when `bin` is None."""
    return Op(OpCode.READ, bin)


def write(bin: str, value: Any) -> Op:
    """Set a bin; `None` removes it (a record left with no bins is deleted)."""
    return Op(OpCode.WRITE, bin, (value,))


def delete() -> Op:
    return Op(OpCode.DELETE)


def touch(ttl: int | None = None) -> Op:
    """Bump the generation and reset the void time (to `ttl`, else the policy's ttl)."""
    return Op(OpCode.TOUCH, None, () if ttl is None else (ttl,))


def increment(bin: str, delta: int | float) -> Op:
    return Op(OpCode.INCREMENT, bin, (delta,))


def append(bin: str, value: str | bytes) -> Op:
    return Op(OpCode.APPEND, bin, (value,))


def prepend(bin: str, value: str | bytes) -> Op:
    return Op(OpCode.PREPEND, bin, (value,))


def list_append(bin: str, value: Any) -> Op:
    """Append one item (creating the list); returns the new size."""
    return Op(OpCode.LIST_APPEND, bin, (value,))


def list_append_items(bin: str, items: list[Any]) -> Op:
    """Append items (creating the list); returns the new size."""
    return Op(OpCode.LIST_APPEND_ITEMS, bin, (list(items),))


def list_insert(bin: str, index: int, value: Any) -> Op:
    """Insert at `index` (negative counts from the end); returns the new size."""
    return Op(OpCode.LIST_INSERT, bin, (index, value))


def list_pop(bin: str, index: int) -> Op:
    """Remove and return the item at `index`."""
    return Op(OpCode.LIST_POP, bin, (index,))


def list_remove(bin: str, index: int) -> Op:
    """Remove the item at `index`; returns the count removed (1)."""
    return Op(OpCode.LIST_REMOVE, bin, (index,))


def list_set(bin: str, index: int, value: Any) -> Op:
    """Replace the item at `index`; returns None."""
    return Op(OpCode.LIST_SET, bin, (index, value))


def list_get(bin: str, index: int) -> Op:
    return Op(OpCode.LIST_GET, bin, (index,))


def list_get_range(bin: str, index: int, count: int | None = None) -> Op:
    """Items from `index`, `count` of them (all to the end when None)."""
    return Op(OpCode.LIST_GET_RANGE, bin, (index, count))


def list_size(bin: str) -> Op:
    return Op(OpCode.LIST_SIZE, bin)


def list_clear(bin: str) -> Op:
    return Op(OpCode.LIST_CLEAR, bin)


def list_sort(bin: str) -> Op:
    return Op(OpCode.LIST_SORT, bin)


def map_put(bin: str, key: Any, value: Any) -> Op:
    """Put one entry (creating the map); returns the new size."""
    return Op(OpCode.MAP_PUT, bin, (key, value))


def map_put_items(bin: str, items: dict[Any, Any]) -> Op:
    return Op(OpCode.MAP_PUT_ITEMS, bin, (dict(items),))


def map_increment(bin: str, key: Any, delta: int | float) -> Op:
    """Add `delta` to the entry (missing counts as 0); returns the new value."""
    return Op(OpCode.MAP_INCREMENT, bin, (key, delta))


def map_get_by_key(bin: str, key: Any) -> Op:
    return Op(OpCode.MAP_GET_BY_KEY, bin, (key,))


def map_remove_by_key(bin: str, key: Any) -> Op:
    """Remove an entry; returns the removed value (None if there was none)."""
    return Op(OpCode.MAP_REMOVE_BY_KEY, bin, (key,))


def map_size(bin: str) -> Op:
    return Op(OpCode.MAP_SIZE, bin)


def map_clear(bin: str) -> Op:
    return Op(OpCode.MAP_CLEAR, bin)
