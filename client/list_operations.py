"""List operation builders, under the official helpers' names
(`aerospike_helpers.operations.list_operations`). Each returns a `raftstore.ops.Op` and puts
one value in the results (see each builder's docstring in `raftstore.ops`).
"""

from __future__ import annotations

from raftstore.ops import (
    list_append,
    list_append_items,
    list_clear,
    list_get,
    list_get_range,
    list_insert,
    list_pop,
    list_remove,
    list_set,
    list_size,
    list_sort,
)

__all__ = [
    "list_append",
    "list_append_items",
    "list_clear",
    "list_get",
    "list_get_range",
    "list_insert",
    "list_pop",
    "list_remove",
    "list_set",
    "list_size",
    "list_sort",
]
