"""The raftstore SDK, shaped like the official Aerospike Python client (`import aerospike`).

Rules:
- Importing `client` stays light: only the I/O-free modules of `raftstore` (keys, values,
  errors, wire messages), never lmdb, pysyncobj or the server.
- Helpers keep Aerospike's names: `calc_digest(namespace, set, key)` returns the same 20
  bytes as `aerospike.calc_digest` (as `bytes`, not a bytearray), and
  `get_partition_id(digest)` the same partition id.
"""

from __future__ import annotations

from raftstore.keys import calc_digest
from raftstore.keys import partition_id as get_partition_id

__all__ = ["calc_digest", "get_partition_id"]
