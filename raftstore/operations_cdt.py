"""List and map operations (Aerospike's CDT ops), and the working copy of bins they edit.

Theory of operation. `raftstore.operations` validates a request and then runs its ops, in
order, on one `WorkingBins`. The list and map ops live here as a table `CDT_RULES` from
`OpCode` to a rule: how many arguments the op takes, how to check them before anything runs,
and how to apply the op. Every list and map op returns exactly one value.

Rules:
- A list op needs the bin to hold a list (or be missing), a map op a dict (or be missing);
  any other value is BIN_INCOMPATIBLE_TYPE (12).
- Indexes count from 0; a negative index counts from the end (-1 is the last item). An index
  outside the list is OP_NOT_APPLICABLE (26). insert and set also accept index == size (they
  append); get_range takes the window [index, index + count) clipped to the list.
- A missing bin: append, append_items, insert at 0, put, put_items and increment create the
  container; get, get_range, size, get_by_key and remove_by_key return None; clear and sort
  return None and leave the bin missing; pop, remove and set are OP_NOT_APPLICABLE.
- An op that empties a list or a map keeps the bin, holding an empty list or map.
- Numbers (INCREMENT and MAP_INCREMENT, `add_number`): a missing value counts as 0 (int delta)
  or 0.0 (float delta); int + int stays an int within 64 bits (else PARAMETER_ERROR); a float
  absorbs an int or float delta; an int never becomes a float (BIN_INCOMPATIBLE_TYPE); bool is
  not a number.
- Sorting (`sort_key`): one total order across types, Aerospike's: None < bool < numbers (int
  and float compared by value, NaN last) < str < bytes < list < map < GeoJSON; lists compare
  item by item, maps by their entries sorted by key.

Copy on write. `WorkingBins` starts as a shallow copy of the stored bins. The first op of a
request that modifies a list or map copies that bin's top-level container and marks it
private; ops only ever modify a bin's top-level container, so nested values are shared with
the stored record and the op arguments and are never changed. A container handed out by a
read (or stored from an op argument) is shared, so the next modification copies it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raftstore import limits
from raftstore.errors import ResultCode, error
from raftstore.ops import OpCode
from raftstore.values import GeoJSON, check_map_key, check_value

Args = tuple[Any, ...]
BinResult = tuple[str | None, Any]


class WorkingBins:
    """The bins of one request: copy on write over the stored record's bins."""

    __slots__ = ("_private", "values")

    def __init__(self, stored: Mapping[str, Any]) -> None:
        self.values: dict[str, Any] = dict(stored)
        self._private: set[str] = set()  # bins whose container this request made itself

    def peek(self, name: str) -> Any:
        """The bin's value (None if missing), for a look that keeps no reference to it."""
        return self.values.get(name)

    def hand_out(self, name: str) -> Any:
        """The bin's value for a result: shared from now on."""
        self._private.discard(name)
        return self.values.get(name)

    def hand_out_all(self) -> list[BinResult]:
        self._private.clear()
        return list(self.values.items())

    def put(self, name: str, value: Any) -> None:
        """Store `value`, which may be shared (an op argument)."""
        self.values[name] = value
        self._private.discard(name)

    def put_new(self, name: str, value: Any) -> None:
        """Store a container this request has just made."""
        self.values[name] = value
        self._private.add(name)

    def remove(self, name: str) -> None:
        self.values.pop(name, None)
        self._private.discard(name)

    def clear(self) -> None:
        self.values = {}
        self._private.clear()

    def list_to_read(self, name: str) -> Sequence[Any] | None:
        value = self.values.get(name)
        if value is None or isinstance(value, list | tuple):
            return value
        raise _incompatible(name, value, "a list")

    def map_to_read(self, name: str) -> Mapping[Any, Any] | None:
        value = self.values.get(name)
        if value is None or isinstance(value, dict):
            return value
        raise _incompatible(name, value, "a map")

    def list_to_write(self, name: str, *, create: bool) -> list[Any] | None:
        """A private list to modify in place; None for a missing bin unless `create`."""
        value = self.list_to_read(name)
        if value is None:
            if not create:
                return None
            value = []
        elif name in self._private:
            assert isinstance(value, list)
            return value
        private = list(value)
        self.put_new(name, private)
        return private

    def map_to_write(self, name: str, *, create: bool) -> dict[Any, Any] | None:
        """A private map to modify in place; None for a missing bin unless `create`."""
        value = self.map_to_read(name)
        if value is None:
            if not create:
                return None
            value = {}
        elif name in self._private:
            assert isinstance(value, dict)
            return value
        private = dict(value)
        self.put_new(name, private)
        return private


def _incompatible(name: str, value: object, wanted: str) -> Exception:
    return error(
        ResultCode.BIN_INCOMPATIBLE_TYPE,
        f"bin {name!r} holds {type(value).__name__}, not {wanted}",
    )


# -- numbers and order ------------------------------------------------------------------------


def check_int64(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(ResultCode.PARAMETER_ERROR, f"{what} must be an int")
    if not limits.INT_MIN <= value <= limits.INT_MAX:
        raise error(ResultCode.PARAMETER_ERROR, f"{what} is out of 64-bit range")
    return value


def check_delta(value: object, what: str) -> None:
    if isinstance(value, float):
        return
    check_int64(value, what)


def add_number(current: Any, delta: int | float, where: str) -> int | float:
    """`current + delta` under the numeric rules above; `current` None means missing."""
    if current is None:
        current = 0 if isinstance(delta, int) else 0.0
    if isinstance(current, bool) or not isinstance(current, int | float):
        raise error(
            ResultCode.BIN_INCOMPATIBLE_TYPE,
            f"{where} holds {type(current).__name__}, not a number",
        )
    if isinstance(current, float):
        return current + float(delta)
    if isinstance(delta, float):
        raise error(
            ResultCode.BIN_INCOMPATIBLE_TYPE,
            f"{where} holds an int; a float delta would change its type",
        )
    total = current + delta
    if not limits.INT_MIN <= total <= limits.INT_MAX:
        raise error(ResultCode.PARAMETER_ERROR, f"{where}: integer overflow")
    return total


def sort_key(value: Any) -> tuple[Any, ...]:
    """A key giving every storable value its place in one total order (see the rules)."""
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            return (2, 1)
        return (2, 0, value)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, bytes):
        return (4, value)
    if isinstance(value, list | tuple):
        return (5, tuple(sort_key(item) for item in value))
    if isinstance(value, dict):
        return (6, tuple(sorted((sort_key(k), sort_key(v)) for k, v in value.items())))
    if isinstance(value, GeoJSON):
        return (7, value.text)
    raise error(ResultCode.BIN_INCOMPATIBLE_TYPE, f"cannot order a {type(value).__name__}")


def _position(index: int, size: int, *, end_ok: bool, name: str) -> int:
    position = index + size if index < 0 else index
    last = size if end_ok else size - 1
    if not 0 <= position <= last:
        raise error(
            ResultCode.OP_NOT_APPLICABLE,
            f"bin {name!r}: index {index} is out of range for a list of {size}",
        )
    return position


def _existing_list(bins: WorkingBins, name: str) -> list[Any]:
    items = bins.list_to_write(name, create=False)
    if items is None:
        raise error(ResultCode.OP_NOT_APPLICABLE, f"bin {name!r} holds no list")
    return items


# -- list ops -----------------------------------------------------------------------------------


def _list_append(bins: WorkingBins, name: str, args: Args) -> int:
    items = bins.list_to_write(name, create=True)
    assert items is not None
    items.append(args[0])
    return len(items)


def _list_append_items(bins: WorkingBins, name: str, args: Args) -> int:
    items = bins.list_to_write(name, create=True)
    assert items is not None
    items.extend(args[0])
    return len(items)


def _list_insert(bins: WorkingBins, name: str, args: Args) -> int:
    items = bins.list_to_write(name, create=True)
    assert items is not None
    items.insert(_position(args[0], len(items), end_ok=True, name=name), args[1])
    return len(items)


def _list_pop(bins: WorkingBins, name: str, args: Args) -> Any:
    items = _existing_list(bins, name)
    return items.pop(_position(args[0], len(items), end_ok=False, name=name))


def _list_remove(bins: WorkingBins, name: str, args: Args) -> int:
    items = _existing_list(bins, name)
    del items[_position(args[0], len(items), end_ok=False, name=name)]
    return 1


def _list_set(bins: WorkingBins, name: str, args: Args) -> None:
    items = _existing_list(bins, name)
    position = _position(args[0], len(items), end_ok=True, name=name)
    if position == len(items):
        items.append(args[1])
    else:
        items[position] = args[1]


def _list_get(bins: WorkingBins, name: str, args: Args) -> Any:
    items = bins.list_to_read(name)
    if items is None:
        return None
    return items[_position(args[0], len(items), end_ok=False, name=name)]


def _list_get_range(bins: WorkingBins, name: str, args: Args) -> list[Any] | None:
    items = bins.list_to_read(name)
    if items is None:
        return None
    index, count = args
    size = len(items)
    start = index + size if index < 0 else index
    stop = size if count is None else start + count
    low = min(max(start, 0), size)
    high = min(max(stop, low), size)
    return list(items[low:high])


def _list_size(bins: WorkingBins, name: str, args: Args) -> int | None:
    items = bins.list_to_read(name)
    return None if items is None else len(items)


def _list_clear(bins: WorkingBins, name: str, args: Args) -> None:
    if bins.list_to_read(name) is not None:
        bins.put_new(name, [])


def _list_sort(bins: WorkingBins, name: str, args: Args) -> None:
    items = bins.list_to_write(name, create=False)
    if items is not None:
        items.sort(key=sort_key)


# -- map ops ------------------------------------------------------------------------------------


def _map_put(bins: WorkingBins, name: str, args: Args) -> int:
    entries = bins.map_to_write(name, create=True)
    assert entries is not None
    entries[args[0]] = args[1]
    return len(entries)


def _map_put_items(bins: WorkingBins, name: str, args: Args) -> int:
    entries = bins.map_to_write(name, create=True)
    assert entries is not None
    entries.update(args[0])
    return len(entries)


def _map_increment(bins: WorkingBins, name: str, args: Args) -> int | float:
    key, delta = args
    entries = bins.map_to_write(name, create=True)
    assert entries is not None
    total = add_number(entries.get(key), delta, f"bin {name!r} key {key!r}")
    entries[key] = total
    return total


def _map_get_by_key(bins: WorkingBins, name: str, args: Args) -> Any:
    entries = bins.map_to_read(name)
    return None if entries is None else entries.get(args[0])


def _map_remove_by_key(bins: WorkingBins, name: str, args: Args) -> Any:
    entries = bins.map_to_read(name)
    if entries is None or args[0] not in entries:
        return None
    private = bins.map_to_write(name, create=False)
    assert private is not None
    return private.pop(args[0])


def _map_size(bins: WorkingBins, name: str, args: Args) -> int | None:
    entries = bins.map_to_read(name)
    return None if entries is None else len(entries)


def _map_clear(bins: WorkingBins, name: str, args: Args) -> None:
    if bins.map_to_read(name) is not None:
        bins.put_new(name, {})


# -- argument checks (run before any op is applied) -------------------------------------------


def _no_check(name: str, args: Args) -> None:
    return None


def _check_item(name: str, args: Args) -> None:
    check_value(args[0], name, 1)  # the item sits one level inside the bin's container


def _check_items(name: str, args: Args) -> None:
    if not isinstance(args[0], list | tuple):
        raise error(ResultCode.PARAMETER_ERROR, f"bin {name!r}: items must be a list")
    check_value(args[0], name)


def _check_index(name: str, args: Args) -> None:
    check_int64(args[0], f"bin {name!r}: list index")


def _check_index_item(name: str, args: Args) -> None:
    _check_index(name, args)
    check_value(args[1], name, 1)


def _check_range(name: str, args: Args) -> None:
    _check_index(name, args)
    if args[1] is not None and check_int64(args[1], f"bin {name!r}: count") < 0:
        raise error(ResultCode.PARAMETER_ERROR, f"bin {name!r}: count must be >= 0")


def _check_key(name: str, args: Args) -> None:
    check_map_key(args[0], name)


def _check_entry(name: str, args: Args) -> None:
    check_map_key(args[0], name)
    check_value(args[1], name, 1)


def _check_entries(name: str, args: Args) -> None:
    if not isinstance(args[0], dict):
        raise error(ResultCode.PARAMETER_ERROR, f"bin {name!r}: items must be a map")
    check_value(args[0], name)


def _check_key_delta(name: str, args: Args) -> None:
    check_map_key(args[0], name)
    check_delta(args[1], f"bin {name!r}: delta")


@dataclass(frozen=True, slots=True)
class CdtRule:
    arity: int
    check: Callable[[str, Args], None]
    apply: Callable[[WorkingBins, str, Args], Any]


CDT_RULES: dict[OpCode, CdtRule] = {
    OpCode.LIST_APPEND: CdtRule(1, _check_item, _list_append),
    OpCode.LIST_APPEND_ITEMS: CdtRule(1, _check_items, _list_append_items),
    OpCode.LIST_INSERT: CdtRule(2, _check_index_item, _list_insert),
    OpCode.LIST_POP: CdtRule(1, _check_index, _list_pop),
    OpCode.LIST_REMOVE: CdtRule(1, _check_index, _list_remove),
    OpCode.LIST_SET: CdtRule(2, _check_index_item, _list_set),
    OpCode.LIST_GET: CdtRule(1, _check_index, _list_get),
    OpCode.LIST_GET_RANGE: CdtRule(2, _check_range, _list_get_range),
    OpCode.LIST_SIZE: CdtRule(0, _no_check, _list_size),
    OpCode.LIST_CLEAR: CdtRule(0, _no_check, _list_clear),
    OpCode.LIST_SORT: CdtRule(0, _no_check, _list_sort),
    OpCode.MAP_PUT: CdtRule(2, _check_entry, _map_put),
    OpCode.MAP_PUT_ITEMS: CdtRule(1, _check_entries, _map_put_items),
    OpCode.MAP_INCREMENT: CdtRule(2, _check_key_delta, _map_increment),
    OpCode.MAP_GET_BY_KEY: CdtRule(1, _check_key, _map_get_by_key),
    OpCode.MAP_REMOVE_BY_KEY: CdtRule(1, _check_key, _map_remove_by_key),
    OpCode.MAP_SIZE: CdtRule(0, _no_check, _map_size),
    OpCode.MAP_CLEAR: CdtRule(0, _no_check, _map_clear),
}
