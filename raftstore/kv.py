"""The seam between the state machine and the device: an ordered key-value transaction.

The state machine (a pure core) reads and writes through `KvTxn` only, so the same logic runs
on LMDB (`raftstore.store`) and on `MemoryKv` below (tests, the deterministic log fake).
Both pass one conformance suite (tests/test_kv_conformance.py).

Rules every implementation keeps:
- tables are fixed (`Table`); keys and values are bytes;
- a transaction sees its own writes; `scan` yields keys in ascending byte order;
- nothing written in a transaction is visible outside it until it commits, and a transaction
  that raises is rolled back whole.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Table(enum.Enum):
    RECORDS = b"records"  # digest -> encoded record (codec.encode_record)
    SESSIONS = b"sessions"  # client id (8 B) + request seq (8 B) -> encoded result
    CLIENTS = b"clients"  # client id (8 B) -> session floor, last-seen time, answered bound
    SETS = b"sets"  # set name (UTF-8) -> set id (2 B)
    META = b"meta"  # small named values: the applied log position, the format version
    # Multi-record transactions (`raftstore.txn_participant`, docs/transactions.md):
    INTENTS = b"intents"  # digest -> the intent locking that record
    TXNS = b"txns"  # kind (1 B) + txn id (8 B) -> a transaction record or this group's marker

    # Every read and write looks its table up in a dict: Enum's own __hash__ is Python code
    # (hash of the name); members are singletons compared by identity, so the identity hash
    # (C code) agrees with equality and is cheaper.
    __hash__ = object.__hash__


class KvTxn(Protocol):
    def get(self, table: Table, key: bytes) -> bytes | None: ...

    def put(self, table: Table, key: bytes, value: bytes) -> None: ...

    def delete(self, table: Table, key: bytes) -> bool: ...

    def scan(self, table: Table, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


class MemoryKv:
    """A dict-backed store with the transaction rules above (copy-on-begin, swap on commit)."""

    def __init__(self) -> None:
        self.tables: dict[Table, dict[bytes, bytes]] = {table: {} for table in Table}

    @contextmanager
    def begin(self, write: bool = False) -> Iterator[MemoryTxn]:
        txn = MemoryTxn({table: dict(rows) for table, rows in self.tables.items()}, write)
        yield txn
        if write:
            self.tables = txn.tables


class MemoryTxn:
    def __init__(self, tables: dict[Table, dict[bytes, bytes]], write: bool) -> None:
        self.tables = tables
        self.write = write

    def get(self, table: Table, key: bytes) -> bytes | None:
        return self.tables[table].get(key)

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        assert self.write, "put in a read transaction"
        self.tables[table][bytes(key)] = bytes(value)

    def delete(self, table: Table, key: bytes) -> bool:
        assert self.write, "delete in a read transaction"
        return self.tables[table].pop(key, None) is not None

    def scan(self, table: Table, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        rows = self.tables[table]
        for key in sorted(k for k in rows if k.startswith(prefix)):
            yield key, rows[key]
