"""The raftstore SDK, shaped like the official Aerospike Python client (`import aerospike`).

    import client
    from client import exception as ex, operations as ops

    with client.connect({"hosts": [("127.0.0.1", 3000)]}) as db:
        key = ("test", "users", 42)
        db.put(key, {"name": "ada", "visits": 1}, policy={"key": client.POLICY_KEY_SEND})
        key, meta, bins = db.get(key)
        db.operate(key, [ops.increment("visits", 1), ops.read("visits")])
        try:
            db.put(key, {"n": 1}, meta={"gen": meta["gen"]},
                   policy={"gen": client.POLICY_GEN_EQ})
        except ex.RecordGenerationError:
            ...                 # definite: the write did not happen
        except ex.AerospikeError as exc:
            if exc.in_doubt:    # the write may or may not have happened
                ...

Rules:
- Importing `client` stays light: only the I/O-free modules of `raftstore` (keys, values,
  errors, wire messages), never lmdb, pysyncobj or the server.
- Helpers keep Aerospike's names: `calc_digest(namespace, set, key)` returns the same 20
  bytes as `aerospike.calc_digest` (as `bytes`, not a bytearray), and
  `get_partition_id(digest)` the same partition id.
- Modules: `client.exception` (error classes), `client.operations`, `client.list_operations`,
  `client.map_operations` (op builders); the policy constants live here at the top level.
"""

from __future__ import annotations

from client import exception, list_operations, map_operations, operations
from client.api import BatchRecord, Client, TransactionContext, client, connect
from client.constants import (
    POLICY_EXISTS_CREATE,
    POLICY_EXISTS_CREATE_OR_REPLACE,
    POLICY_EXISTS_IGNORE,
    POLICY_EXISTS_REPLACE,
    POLICY_EXISTS_UPDATE,
    POLICY_GEN_EQ,
    POLICY_GEN_GT,
    POLICY_GEN_IGNORE,
    POLICY_KEY_DIGEST,
    POLICY_KEY_SEND,
    POLICY_READ_MODE_SC_LINEARIZE,
    POLICY_READ_MODE_SC_SESSION,
    TTL_CLIENT_DEFAULT,
    TTL_DONT_UPDATE,
    TTL_NAMESPACE_DEFAULT,
    TTL_NEVER_EXPIRE,
)
from client.txn import (
    ABORT_ALREADY_ABORTED,
    ABORT_OK,
    COMMIT_ALREADY_COMMITTED,
    COMMIT_OK,
    TXN_STATE_ABORTED,
    TXN_STATE_COMMITTED,
    TXN_STATE_OPEN,
    TXN_STATE_VERIFIED,
    Transaction,
)
from raftstore.keys import calc_digest
from raftstore.keys import partition_id as get_partition_id

__all__ = [
    "ABORT_ALREADY_ABORTED",
    "ABORT_OK",
    "COMMIT_ALREADY_COMMITTED",
    "COMMIT_OK",
    "POLICY_EXISTS_CREATE",
    "POLICY_EXISTS_CREATE_OR_REPLACE",
    "POLICY_EXISTS_IGNORE",
    "POLICY_EXISTS_REPLACE",
    "POLICY_EXISTS_UPDATE",
    "POLICY_GEN_EQ",
    "POLICY_GEN_GT",
    "POLICY_GEN_IGNORE",
    "POLICY_KEY_DIGEST",
    "POLICY_KEY_SEND",
    "POLICY_READ_MODE_SC_LINEARIZE",
    "POLICY_READ_MODE_SC_SESSION",
    "TTL_CLIENT_DEFAULT",
    "TTL_DONT_UPDATE",
    "TTL_NAMESPACE_DEFAULT",
    "TTL_NEVER_EXPIRE",
    "TXN_STATE_ABORTED",
    "TXN_STATE_COMMITTED",
    "TXN_STATE_OPEN",
    "TXN_STATE_VERIFIED",
    "BatchRecord",
    "Client",
    "Transaction",
    "TransactionContext",
    "calc_digest",
    "client",
    "connect",
    "exception",
    "get_partition_id",
    "list_operations",
    "map_operations",
    "operations",
]
