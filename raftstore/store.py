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
from pathlib import Path
from types import TracebackType
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
            max_dbs=len(Table),  # one named database per table, no more
            max_readers=READERS_MAX,
            max_spare_txns=4,
            mode=0o700,
        )
        # Every table, created empty if missing (a store written before a table existed).
        self.dbs = {table: self.env.open_db(table.value, create=True) for table in Table}

    def begin(self, write: bool = False) -> StoreTransaction:
        """A transaction for a `with` block: it commits when the block ends, aborts if it
        raises; a full store raises SERVER_FULL."""
        return StoreTransaction(self, write)

    def sync(self) -> None:
        """Force everything committed so far to the device (for `durable=False` stores)."""
        self.env.sync(True)

    def copy_to(self, path: Path) -> None:
        """A consistent copy of the whole store (a read transaction; writers keep going)."""
        path.mkdir(parents=True, exist_ok=True)
        self.env.copy(str(path), compact=True)

    def close(self) -> None:
        self.env.close()


class StoreTransaction:
    """The context manager `LmdbStore.begin` returns. A class rather than a @contextmanager
    generator: it runs for every batch and every read, and is a few times cheaper."""

    __slots__ = ("_store", "_txn", "_write")

    def __init__(self, store: LmdbStore, write: bool) -> None:
        self._store = store
        self._write = write
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> LmdbTxn:
        store = self._store
        try:
            self._txn = store.env.begin(write=self._write, buffers=False)
        except lmdb.MapFullError:
            raise self._full() from None
        return LmdbTxn(self._txn, store.dbs)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        txn = self._txn
        assert txn is not None
        self._txn = None
        if exc is not None:
            txn.abort()
            if isinstance(exc, lmdb.MapFullError):
                raise self._full() from None
            return  # the block's exception goes on
        try:
            txn.commit()
        except lmdb.MapFullError:
            raise self._full() from None

    def _full(self) -> Exception:
        return error(ResultCode.SERVER_FULL, f"device store {self._store.path} is full")


class LmdbTxn:
    """`raftstore.kv.KvTxn` over one LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[Table, lmdb._Database]) -> None:
        self.txn = txn
        self.dbs = dbs

    def get(self, table: Table, key: bytes) -> bytes | None:
        # buffers=False (see `begin`): LMDB hands out bytes, never memoryviews. (Not `cast`:
        # a call on every read.)
        return self.txn.get(key, db=self.dbs[table])  # type: ignore[return-value]

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
