"""The engine on real LMDB files: reopen, replay skipping, corruption, scans, stats."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lmdb
import pytest

from raftstore import codec, keys, operations
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.commands import RecordRequest, Result
from raftstore.config import NamespaceConfig
from raftstore.engine import Engine
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.kv import Table
from raftstore.policy import WritePolicy

NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000
NAMESPACE = NamespaceConfig("test", commit_to_device=True)


def put(seq: int, key: int, bins: dict[str, Any], set_name: str = "s") -> RecordRequest:
    return RecordRequest(
        client_id=1,
        request_seq=seq,
        acked_seq=0,
        now_ms=NOW_MS + seq,
        digest=keys.calc_digest("test", set_name, key),
        set_name=set_name,
        ops=tuple(op.write(name, value) for name, value in bins.items()),
        policy=WritePolicy(send_key=True),
        user_key=key,
    )


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = Engine(tmp_path / "group", NAMESPACE)
    yield engine
    engine.close()


def test_reopen_rebuilds_the_index_from_the_device(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "g", NAMESPACE)
    for n in range(50):
        engine.apply(n + 1, [put(n + 1, n, {"a": n, "s": "x" * n}, set_name=f"set{n % 3}")])
    before = sorted(engine.index.items())
    stats = engine.stats()
    engine.close()
    again = Engine(tmp_path / "g", NAMESPACE)
    assert again.applied_index == 50
    assert sorted(again.index.items()) == before
    assert again.stats() == stats
    record = again.get(keys.calc_digest("test", "set1", 7))
    assert record is not None and record.bins == {"a": 7, "s": "x" * 7} and record.user_key == 7
    again.close()


def test_replayed_batches_are_skipped(engine: Engine) -> None:
    request = RecordRequest(
        client_id=1,
        request_seq=1,
        acked_seq=0,
        now_ms=NOW_MS,
        digest=keys.calc_digest("test", "s", 1),
        set_name="s",
        ops=(op.increment("n", 1),),
    )
    assert engine.apply(5, [request]) is not None
    other = dataclasses.replace(request, request_seq=2)
    assert engine.apply(5, [other]) is None  # position 5 again: a replay after restart
    assert engine.apply(4, [other]) is None
    result = engine.read(request.digest, [op.read("n")], NOW_MS)
    assert dict(result.results) == {"n": 1}


def test_reads_take_only_read_operations(engine: Engine) -> None:
    engine.apply(1, [put(1, 1, {"a": 1})])
    digest = keys.calc_digest("test", "s", 1)
    assert engine.read(digest, [op.write("a", 2)], NOW_MS).code == ResultCode.PARAMETER_ERROR
    assert engine.read(digest, [], NOW_MS).code == ResultCode.PARAMETER_ERROR
    missing = keys.calc_digest("test", "s", 2)
    assert engine.read(missing, [op.read()], NOW_MS).code == ResultCode.RECORD_NOT_FOUND
    found = engine.read(digest, [op.read()], NOW_MS)
    assert (found.generation, dict(found.results)) == (1, {"a": 1})


def test_a_corrupt_record_is_reported_never_returned(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "g", NAMESPACE)
    engine.apply(1, [put(1, 1, {"a": "precious"}), put(2, 2, {"a": "fine"})])
    engine.close()
    digest = keys.calc_digest("test", "s", 1)
    env = lmdb.open(str(tmp_path / "g"), max_dbs=8)
    records = env.open_db(Table.RECORDS.value)
    with env.begin(write=True) as txn:
        raw = bytearray(txn.get(digest, db=records))
        raw[-3] ^= 0xFF  # one flipped byte inside the bins
        txn.put(digest, bytes(raw), db=records)
    env.close()
    again = Engine(tmp_path / "g", NAMESPACE)
    assert again.corrupt_digests == [digest]
    with pytest.raises(RaftstoreError) as caught:
        again.get(digest)
    assert caught.value.code == ResultCode.RECORD_CORRUPT
    assert again.read(digest, [op.read()], NOW_MS).code == ResultCode.RECORD_CORRUPT
    healthy = again.read(keys.calc_digest("test", "s", 2), [op.read()], NOW_MS)
    assert dict(healthy.results) == {"a": "fine"}
    again.close()


def test_a_crashing_command_fails_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    real = operations.operate

    def buggy(existing: Any, ops: Any, policy: Any, **kwargs: Any) -> Any:
        if any(o.bin == "boom" for o in ops):
            raise KeyError("a bug")
        return real(existing, ops, policy, **kwargs)

    monkeypatch.setattr(operations, "operate", buggy)
    results = engine.apply(1, [put(1, 1, {"a": 1}), put(2, 2, {"boom": 1}), put(3, 3, {"c": 3})])
    assert results is not None
    assert [r.code for r in results] == [ResultCode.OK, ResultCode.SERVER_ERROR, ResultCode.OK]
    assert engine.applied_index == 1
    assert engine.get(keys.calc_digest("test", "s", 2)) is None


def test_scan_by_partition_and_set(engine: Engine) -> None:
    for n in range(40):
        engine.apply(n + 1, [put(n + 1, n, {"n": n}, set_name="even" if n % 2 == 0 else "odd")])
    evens = {record.bins["n"] for _, record in engine.scan(set_name="even")}
    assert evens == set(range(0, 40, 2))
    digest = keys.calc_digest("test", "odd", 5)
    partition = keys.partition_id(digest)
    in_partition = [d for d, _ in engine.scan([partition])]
    assert digest in in_partition
    assert all(keys.partition_id(d) == partition for d in in_partition)
    stats = engine.stats()
    assert stats.records == 40


def test_results_carry_metadata(engine: Engine) -> None:
    results = engine.apply(1, [put(1, 1, {"a": 1})])
    assert results is not None
    first: Result = results[0]
    assert first.generation == 1 and first.last_update_ms == NOW_MS + 1
    stored = engine.get(keys.calc_digest("test", "s", 1))
    assert stored is not None
    assert codec.decode_record(codec.encode_record(stored)) == stored
