"""Map operation builders, under the official helpers' names
(`aerospike_helpers.operations.map_operations`). Each returns a `raftstore.ops.Op` and puts
one value in the results (see each builder's docstring in `raftstore.ops`).
"""

from __future__ import annotations

from raftstore.ops import (
    map_clear,
    map_get_by_key,
    map_increment,
    map_put,
    map_put_items,
    map_remove_by_key,
    map_size,
)

__all__ = [
    "map_clear",
    "map_get_by_key",
    "map_increment",
    "map_put",
    "map_put_items",
    "map_remove_by_key",
    "map_size",
]
