"""One conformance suite for every `KvTxn` implementation: MemoryKv and the LMDB store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import pytest

from raftstore.errors import RaftstoreError, ResultCode
from raftstore.kv import MemoryKv, Table
from raftstore.store import LmdbStore


class Kv(Protocol):
    def begin(self, write: bool = False) -> AbstractContextManager[Any]: ...


@pytest.fixture(params=["memory", "lmdb"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kv]:
    if request.param == "memory":
        yield MemoryKv()
        return
    store = LmdbStore(tmp_path / "store", durable=True)
    yield store
    store.close()


def test_put_get_delete(kv: Kv) -> None:
    with kv.begin(write=True) as txn:
        assert txn.get(Table.RECORDS, b"a") is None
        txn.put(Table.RECORDS, b"a", b"1")
        assert txn.get(Table.RECORDS, b"a") == b"1"  # a transaction sees its own writes
        txn.put(Table.RECORDS, b"a", b"2")
        assert txn.get(Table.RECORDS, b"a") == b"2"
    with kv.begin() as txn:
        assert txn.get(Table.RECORDS, b"a") == b"2"
    with kv.begin(write=True) as txn:
        assert txn.delete(Table.RECORDS, b"a") is True
        assert txn.delete(Table.RECORDS, b"a") is False
    with kv.begin() as txn:
        assert txn.get(Table.RECORDS, b"a") is None


def test_tables_are_separate(kv: Kv) -> None:
    with kv.begin(write=True) as txn:
        txn.put(Table.RECORDS, b"k", b"record")
        txn.put(Table.SESSIONS, b"k", b"session")
    with kv.begin() as txn:
        assert txn.get(Table.RECORDS, b"k") == b"record"
        assert txn.get(Table.SESSIONS, b"k") == b"session"
        assert txn.get(Table.META, b"k") is None


def test_scan_is_ordered_and_prefixed(kv: Kv) -> None:
    keys = [b"b2", b"a1", b"b1", b"c", b"b", b"ba"]
    with kv.begin(write=True) as txn:
        for key in keys:
            txn.put(Table.SESSIONS, key, key.upper())
    with kv.begin() as txn:
        assert [k for k, _ in txn.scan(Table.SESSIONS)] == sorted(keys)
        assert list(txn.scan(Table.SESSIONS, b"b")) == [
            (b"b", b"B"),
            (b"b1", b"B1"),
            (b"b2", b"B2"),
            (b"ba", b"BA"),
        ]
        assert list(txn.scan(Table.SESSIONS, b"z")) == []


def test_a_failed_transaction_leaves_nothing(kv: Kv) -> None:
    with kv.begin(write=True) as txn:
        txn.put(Table.RECORDS, b"kept", b"1")
    with pytest.raises(RuntimeError), kv.begin(write=True) as txn:
        txn.put(Table.RECORDS, b"lost", b"2")
        txn.delete(Table.RECORDS, b"kept")
        raise RuntimeError("abort")
    with kv.begin() as txn:
        assert txn.get(Table.RECORDS, b"lost") is None
        assert txn.get(Table.RECORDS, b"kept") == b"1"


def test_uncommitted_writes_are_invisible_to_readers(kv: Kv) -> None:
    with kv.begin(write=True) as txn:
        txn.put(Table.RECORDS, b"x", b"old")
    with kv.begin() as reader:
        with kv.begin(write=True) as writer:
            writer.put(Table.RECORDS, b"x", b"new")
            assert reader.get(Table.RECORDS, b"x") == b"old"
        assert reader.get(Table.RECORDS, b"x") == b"old"  # a reader keeps its snapshot
    with kv.begin() as txn:
        assert txn.get(Table.RECORDS, b"x") == b"new"


def test_lmdb_store_survives_reopen(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s", durable=True)
    with store.begin(write=True) as txn:
        txn.put(Table.META, b"applied_index", b"\x00" * 7 + b"\x05")
    store.close()
    again = LmdbStore(tmp_path / "s", durable=True)
    with again.begin() as txn:
        assert txn.get(Table.META, b"applied_index") == b"\x00" * 7 + b"\x05"
    again.close()


def test_a_full_lmdb_store_answers_server_full_and_keeps_what_it_had(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "small", durable=False, map_size_bytes=256 * 1024)
    try:
        with store.begin(write=True) as txn:
            txn.put(Table.RECORDS, b"kept", b"1")
        with pytest.raises(RaftstoreError) as caught, store.begin(write=True) as txn:
            for n in range(10_000):
                txn.put(Table.RECORDS, n.to_bytes(4, "big"), bytes(1000))
        assert caught.value.code == ResultCode.SERVER_FULL
        with store.begin() as txn:
            assert [key for key, _ in txn.scan(Table.RECORDS)] == [b"kept"]
    finally:
        store.close()
