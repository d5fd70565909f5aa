"""Operation builders for `operate` / `operate_ordered`, under the official helpers' names
(`aerospike_helpers.operations.operations`). Each returns a `raftstore.ops.Op`.

Which ops put a value in the results: `read` (one bin, or every bin when `bin` is None);
`write`, `delete`, `touch`, `increment`, `append` and `prepend` return nothing.
"""

from __future__ import annotations

from raftstore.ops import Op, append, delete, increment, prepend, read, touch, write

__all__ = ["Op", "append", "delete", "increment", "prepend", "read", "touch", "write"]
