"""The device store: one LMDB environment holding the tables of `raftstore.kv.Table`.

Every `lmdb.open` option that matters for safety is written out rather than left to the
library's default. Durability has two settings:
- `durable=True` (namespace `commit-to-device`): every committed write transaction is fsynced
  (data and meta pages) before `commit` returns;
- `durable=False`: commits reach the page cache (LMDB writes with `pwrite`, no `writemap`), so
  they survive the kill of the process but not the loss of the machine; Raft's log replay
  above the applied position covers the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import lmdb

from raftstore.errors import ResultCode, error
from raftstore.kv import Table

MAP_SIZE_BYTES_DEFAULT = 64 * 1024**3  # address space, not disk: LMDB files grow as written
READERS_MAX = 512


class LmdbStore:
    def __init__(
        self, path: Path, *, durable: bool, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.durable = durable
        self.env = lmdb.open(
            str(path),
            map_size=map_size_bytes,
            subdir=True,
            readonly=False,
            create=True,
            lock=True,
            sync=durable,
            metasync=durable,
            writemap=False,  # a stray pointer in the process cannot scribble on the file
            map_async=False,
            meminit=False,
            readahead=False,  # point lookups by digest: readahead only pollutes the cache
            max_dbs=len(Table),
            max_readers=READERS_MAX,
            max_spare_txns=4,
            mode=0o700,
        )
        self.dbs = {table: self.env.open_db(table.value, create=True) for table in Table}

    @contextmanager
    def begin(self, write: bool = False) -> Iterator[LmdbTxn]:
        try:
            with self.env.begin(write=write, buffers=False) as txn:
                yield LmdbTxn(txn, self.dbs)
        except lmdb.MapFullError:
            raise error(ResultCode.SERVER_FULL, f"device store {self.path} is full") from None

    def sync(self) -> None:
        """Force everything committed so far to the device (for `durable=False` stores)."""
        self.env.sync(True)

    def copy_to(self, path: Path) -> None:
        """A consistent copy of the whole store (a read transaction; writers keep going)."""
        path.mkdir(parents=True, exist_ok=True)
        self.env.copy(str(path), compact=True)

    def close(self) -> None:
        self.env.close()


class LmdbTxn:
    """`raftstore.kv.KvTxn` over one LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[Table, lmdb._Database]) -> None:
        self.txn = txn
        self.dbs = dbs

    def get(self, table: Table, key: bytes) -> bytes | None:
        # buffers=False (see `begin`): LMDB hands out bytes, never memoryviews.
        return cast("bytes | None", self.txn.get(key, db=self.dbs[table]))

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.dbs[table])

    def delete(self, table: Table, key: bytes) -> bool:
        deleted: bool = self.txn.delete(key, db=self.dbs[table])
        return deleted

    def scan(self, table: Table, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        cursor = self.txn.cursor(db=self.dbs[table])
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not cast(bytes, key).startswith(prefix):
                return
            yield cast(bytes, key), cast(bytes, value)
