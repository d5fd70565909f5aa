"""Transaction commands wired into the raftstore layer (docs/transactions.md).

The state machine on MemoryKv (dispatch, locks meeting single-record writes and the engine's
own commands, the record store it lends the participant); the engine on real LMDB (the log
codec round trip, reads meeting intents, the transaction views, reopen, snapshots); the group
runtime over the fake log (TxnForget from `run_jobs`) and over real pysyncobj (`submit_to`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import lmdb
import pytest

from raftstore import codec, command_codec, keys, limits
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.command_codec import LogCommand
from raftstore.commands import Expire, RecordRequest, Result, TombRaid, Truncate
from raftstore.config import NamespaceConfig
from raftstore.engine import Engine
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.group import TXN_FORGET_IDS_MAX, GroupRuntime, make_apply
from raftstore.index import PrimaryIndex
from raftstore.kv import MemoryKv, Table
from raftstore.policy import WritePolicy
from raftstore.raft_log import PysyncobjLog, RaftOptions
from raftstore.record import Record
from raftstore.state_machine import StateMachine, load_sets
from raftstore.txn_commands import (
    TXN_FORGET_AFTER_MS_MIN,
    TxnApply,
    TxnBegin,
    TxnDecide,
    TxnForget,
    TxnPrepare,
    TxnRead,
    TxnResolve,
    TxnState,
    TxnWrite,
    state_of,
)
from raftstore.txn_participant import (
    TXN_TABLES,
    Blocker,
    Intent,
    TxnRecord,
    blocker_of,
    visible_record,
)
from tests.test_group import Group, result_now
from tests.test_raft_log import free_ports, wait_until

NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000
DEADLINE_MS = NOW_MS + 10_000
HOME = 3
NAMESPACE = NamespaceConfig("test", max_record_bytes=4096, tomb_raider_period_s=60)


def digest(key: int | str, set_name: str = "s") -> bytes:
    return keys.calc_digest("test", set_name, key)


def request(
    seq: int, key: int | str, *ops: op.Op, policy: WritePolicy | None = None
) -> RecordRequest:
    return RecordRequest(
        client_id=1,
        request_seq=seq,
        acked_seq=0,
        now_ms=NOW_MS + seq,
        digest=digest(key),
        set_name="s",
        ops=ops,
        policy=policy or WritePolicy(),
    )


def write(key: int | str, *ops: op.Op, set_name: str = "s") -> TxnWrite:
    return TxnWrite(digest(key, set_name), set_name, None, ops, WritePolicy())


def read_of(key: int | str, result: Result) -> TxnRead:
    """The read a transaction makes of a record a write answered `result` for."""
    return TxnRead(digest(key), result.generation, result.last_update_ms)


def prepare(
    txn_id: int, *, reads: Sequence[TxnRead] = (), writes: Sequence[TxnWrite] = ()
) -> TxnPrepare:
    return TxnPrepare(txn_id, HOME, NOW_MS + 100, DEADLINE_MS, tuple(reads), tuple(writes))


def bins(result: Result) -> dict[str | None, Any]:
    return dict(result.results)


class Replica:
    """A state machine over MemoryKv, applying batches at consecutive log positions."""

    def __init__(self) -> None:
        self.kv = MemoryKv()
        self.index = PrimaryIndex()
        self.machine = StateMachine(NAMESPACE, self.index)
        self.log_index = 0

    def apply(self, commands: Sequence[LogCommand]) -> list[Result]:
        self.log_index += 1
        with self.kv.begin(write=True) as txn:
            applied = self.machine.apply_batch(txn, self.log_index, commands)
        self.machine.publish(applied)
        return applied.results

    def one(self, command: LogCommand) -> Result:
        return self.apply([command])[0]

    def record(self, key: int | str) -> Record | None:
        raw = self.kv.tables[Table.RECORDS].get(digest(key))
        return None if raw is None else codec.decode_record(raw)

    def locked(self) -> set[bytes]:
        return set(self.kv.tables[Table.INTENTS])


@pytest.fixture
def replica() -> Replica:
    return Replica()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(tmp_path / "group", NAMESPACE, durable=False)
    yield engine
    engine.close()


# -- the state machine ---------------------------------------------------------------------------


def test_the_tables_exist_in_both_stores(tmp_path: Path) -> None:
    assert TXN_TABLES.intents is Table.INTENTS and TXN_TABLES.txns is Table.TXNS
    assert Table.INTENTS.value == b"intents" and Table.TXNS.value == b"txns"
    assert {Table.INTENTS, Table.TXNS} <= set(MemoryKv().tables)
    engine = Engine(tmp_path / "g", NAMESPACE, durable=False)
    try:
        with engine.store.begin(write=True) as txn:
            txn.put(Table.INTENTS, b"i", b"1")
            txn.put(Table.TXNS, b"t", b"2")
        with engine.store.begin() as txn:
            assert txn.get(Table.INTENTS, b"i") == b"1" and txn.get(Table.TXNS, b"t") == b"2"
            assert txn.get(Table.RECORDS, b"i") is None, "a table of its own"
    finally:
        engine.close()


def test_a_txn_apply_in_a_batch_writes_records_sets_and_index(replica: Replica) -> None:
    first = replica.one(request(1, "a", op.write("n", 1)))
    # The same batch as a plain write: the transaction reads what that write left.
    results = replica.apply(
        [
            request(2, "c", op.write("n", 5)),
            TxnApply(
                7,
                NOW_MS + 10,
                DEADLINE_MS,
                (read_of("a", first), TxnRead(digest("c"), 1, NOW_MS + 2)),
                (write("a", op.increment("n", 10)), write("b", op.write("m", 2), set_name="t")),
            ),
        ]
    )
    assert [r.code for r in results] == [ResultCode.OK, ResultCode.OK], results
    assert results[1].count == 2
    a, b = replica.record("a"), replica.index.get(digest("b", "t"))
    assert a is not None and a.bins == {"n": 11} and a.generation == 2
    assert b is not None and b.set_name == "t" and b.generation == 1
    with replica.kv.begin() as txn:
        assert load_sets(txn) == {"s": 1, "t": 2}
    assert replica.index.set_id("t") == 2
    meta = replica.index.get(digest("a"))
    assert meta is not None and meta.generation == 2 and meta.last_update_ms == NOW_MS + 10

    again = replica.one(
        TxnApply(7, NOW_MS + 20, DEADLINE_MS, (read_of("a", first),), (write("a"),))
    )
    assert again == results[1], "a repeat is answered from the marker"
    record = replica.record("a")
    assert record is not None and record.generation == 2, "and changes nothing"
    assert len(replica.kv.tables[Table.SESSIONS]) == 2, "only the two plain writes' answers"


def test_a_txn_apply_takes_every_new_set_or_none(
    replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "SETS_PER_NAMESPACE_MAX", 2)
    assert replica.one(request(1, "a", op.write("n", 1))).ok  # set "s": one id used
    two_new = (
        write("x", op.write("n", 1), set_name="t"),
        write("y", op.write("n", 1), set_name="u"),
    )
    refused = replica.one(TxnApply(1, NOW_MS + 10, DEADLINE_MS, (), two_new))
    assert refused.code == ResultCode.SET_LIMIT, refused
    with replica.kv.begin() as txn:
        assert load_sets(txn) == {"s": 1}
    assert replica.index.set_names() == {"s": 1}
    assert replica.record("x") is None
    one_new = replica.one(TxnApply(2, NOW_MS + 20, DEADLINE_MS, (), two_new[:1]))
    assert one_new.ok, one_new
    with replica.kv.begin() as txn:
        assert load_sets(txn) == {"s": 1, "t": 2}


def test_a_plain_write_of_a_locked_record_is_blocked_and_changes_nothing(
    replica: Replica,
) -> None:
    a = replica.one(request(1, "a", op.write("n", 1)))
    b = replica.one(request(2, "b", op.write("n", 1)))
    prepared = replica.one(
        prepare(9, reads=[read_of("b", b)], writes=[write("a", op.increment("n", 1))])
    )
    assert prepared.ok and prepared.count == 2, prepared
    assert replica.locked() == {digest("a"), digest("b")}
    stored_a, meta_a = replica.record("a"), replica.index.get(digest("a"))

    blocker = Blocker(9, HOME, DEADLINE_MS)
    on_write_intent = replica.one(request(3, "a", op.write("n", 5)))
    assert on_write_intent.code == ResultCode.MRT_BLOCKED
    assert blocker_of(on_write_intent) == blocker
    assert replica.record("a") == stored_a and replica.index.get(digest("a")) == meta_a
    on_read_lock = replica.one(request(4, "b", op.write("n", 5)))
    assert blocker_of(on_read_lock) == blocker, on_read_lock
    stored_b = replica.record("b")
    assert stored_b is not None and stored_b.bins == {"n": 1}

    # Through the log, a read of a read-locked record reads it; a write intent blocks one.
    read_b = replica.one(request(5, "b", op.read("n")))
    assert read_b.ok and bins(read_b) == {"n": 1} and read_b.generation == b.generation
    assert blocker_of(replica.one(request(6, "a", op.read("n")))) == blocker

    resolved = replica.one(TxnResolve(9, NOW_MS + 200, False, NOW_MS + 150))
    assert resolved.ok and replica.locked() == set()
    again = replica.one(request(3, "a", op.write("n", 5)))
    assert blocker_of(again) == blocker, "a repeat gets its first answer (exactly once)"
    assert replica.record("a") == stored_a
    assert replica.one(request(7, "a", op.write("n", 5))).generation == a.generation + 1


def test_a_committed_resolve_rolls_forward_and_unlocks(replica: Replica) -> None:
    a = replica.one(request(1, "a", op.write("n", 1)))
    replica.one(prepare(9, writes=[write("a", op.increment("n", 1)), write("z", op.write("n", 7))]))
    decided_ms = NOW_MS + 500
    resolved = replica.one(TxnResolve(9, NOW_MS + 600, True, decided_ms))
    assert resolved.ok and resolved.count == 2, resolved
    record = replica.record("a")
    assert record is not None and record.bins == {"n": 2}
    assert (record.generation, record.last_update_ms) == (a.generation + 1, decided_ms)
    meta = replica.index.get(digest("z"))
    assert meta is not None and meta.generation == 1 and meta.last_update_ms == decided_ms
    assert replica.locked() == set()
    assert replica.one(request(2, "a", op.increment("n", 1))).ok
    assert replica.one(TxnResolve(9, NOW_MS + 700, True, decided_ms)).count == 0, "idempotent"


def test_expire_truncate_and_tomb_raid_skip_locked_digests(replica: Replica) -> None:
    short = WritePolicy(ttl=10)
    replica.one(request(1, "free", op.write("n", 1), policy=short))
    locked = replica.one(request(2, "locked", op.write("n", 2), policy=short))
    replica.one(request(3, "gone", op.write("n", 3)))
    replica.one(request(4, "gone", op.delete()))
    replica.one(request(5, "gone-locked", op.write("n", 5)))
    replica.one(request(6, "gone-locked", op.delete()))
    locking = prepare(
        9,
        reads=[read_of("locked", locked), TxnRead(digest("gone-locked"), 0, 0)],
    )
    assert replica.one(locking).count == 2

    later_ms = NOW_MS + 20_000
    expired = replica.one(Expire(later_ms, (digest("free"), digest("locked"))))
    assert expired.count == 1
    kept = replica.record("locked")
    assert kept is not None and not kept.tombstone and kept.bins == {"n": 2}
    raid = replica.one(TombRaid(NOW_MS + 120_000))
    assert raid.count == 2, "the unlocked tombstones of free and gone"
    assert replica.record("gone-locked") is not None
    assert replica.record("gone") is None and replica.record("free") is None

    replica.one(TxnResolve(9, NOW_MS + 121_000, False, 0))
    assert replica.one(Expire(later_ms, (digest("locked"),))).count == 1
    assert replica.one(TombRaid(NOW_MS + 240_000)).count == 2


def test_truncate_skips_locked_digests(replica: Replica) -> None:
    for n in range(1, 5):
        replica.one(request(n, n, op.write("n", n)))
    replica.one(prepare(9, writes=[write(2, op.increment("n", 1))]))
    truncated = replica.one(Truncate(NOW_MS + 1000, None, NOW_MS + 1000))
    assert truncated.count == 3
    records = [replica.record(n) for n in range(1, 5)]
    assert [r is not None and r.tombstone for r in records] == [True, False, True, True]
    replica.one(TxnResolve(9, NOW_MS + 2000, True, NOW_MS + 1500))
    record = replica.record(2)
    assert record is not None and record.bins == {"n": 3}, "rolled forward from the kept record"


# -- the engine (LMDB) -----------------------------------------------------------------------------


def every_txn_command() -> list[LogCommand]:
    return [
        request(1, "a", op.write("n", 1)),
        TxnBegin(5, NOW_MS, DEADLINE_MS, (0, HOME)),
        TxnPrepare(5, HOME, NOW_MS, DEADLINE_MS, (), (write("p", op.write("n", 1)),)),
        TxnDecide(5, NOW_MS + 1, DEADLINE_MS, TxnState.COMMITTED),
        TxnResolve(5, NOW_MS + 2, True, NOW_MS + 1),
        TxnApply(6, NOW_MS + 3, DEADLINE_MS, (), (write("q", op.write("n", 2)),)),
        TxnForget(NOW_MS + 4, (5, 6)),
    ]


def test_txn_commands_round_trip_the_log_codec_into_the_engine(engine: Engine) -> None:
    commands = every_txn_command()
    entry = command_codec.encode_batch(commands)
    assert command_codec.join_batch([command_codec.encode_command(c) for c in commands]) == entry
    decoded = command_codec.decode_batch(entry)
    assert decoded == commands
    results = engine.apply(1, decoded)
    assert results is not None
    assert [r.code for r in results] == [ResultCode.OK] * 7, results
    assert state_of(results[3]) is TxnState.COMMITTED
    assert results[4].count == 1 and results[5].count == 1
    assert results[6].count == 0, "nothing is past the horizon yet"
    assert bins(engine.read(digest("p"), [op.read("n")], NOW_MS + 10)) == {"n": 1}
    assert bins(engine.read(digest("q"), [op.read("n")], NOW_MS + 10)) == {"n": 2}


def test_the_folded_commands_round_trip_the_log_codec_into_the_engine(engine: Engine) -> None:
    """The home group's prepare begins the transaction; its decide resolves it there."""
    commands: list[LogCommand] = [
        TxnPrepare(7, HOME, NOW_MS, DEADLINE_MS, (), (write("h", op.write("n", 1)),), (HOME, 5)),
        TxnDecide(7, NOW_MS + 1, DEADLINE_MS, TxnState.COMMITTED, resolve_here=True),
    ]
    decoded = command_codec.decode_batch(command_codec.encode_batch(commands[:1]))
    assert decoded == commands[:1]
    prepared = engine.apply(1, decoded)
    assert prepared is not None and prepared[0].count == 1
    assert engine.txn_record(7) == TxnRecord(TxnState.OPEN, DEADLINE_MS, (HOME, 5), 0)
    assert engine.locked_view(digest("h"))[0] is not None
    decoded = command_codec.decode_batch(command_codec.encode_batch(commands[1:]))
    assert decoded == commands[1:]
    decided = engine.apply(2, decoded)
    assert decided is not None and state_of(decided[0]) is TxnState.COMMITTED
    assert engine.locked_view(digest("h"))[0] is None
    assert bins(engine.read(digest("h"), [op.read("n")], NOW_MS + 10)) == {"n": 1}


def test_a_malformed_txn_command_in_an_entry_is_a_protocol_error() -> None:
    good = command_codec.encode_batch([TxnForget(NOW_MS, (1,))])
    assert command_codec.decode_batch(good) == [TxnForget(NOW_MS, (1,))]
    for raw in ([15, NOW_MS], [15, NOW_MS, ["x"]], [16, NOW_MS, []]):
        entry = codec.pack_value([command_codec.ENTRY_FORMAT, [raw]])
        with pytest.raises(RaftstoreError) as caught:
            command_codec.decode_batch(entry)
        assert caught.value.code == ResultCode.PROTOCOL_ERROR


def test_a_txn_apply_commit_is_visible_to_engine_reads(engine: Engine) -> None:
    engine.apply(1, [request(1, "a", op.write("n", 1))])
    before = engine.read(digest("a"), [op.read("n")], NOW_MS + 5)
    commit = TxnApply(
        7, NOW_MS + 10, DEADLINE_MS, (read_of("a", before),), (write("a", op.increment("n", 4)),)
    )
    results = engine.apply(2, command_codec.decode_batch(command_codec.encode_batch([commit])))
    assert results is not None and results[0].ok, results
    after = engine.read(digest("a"), [op.read("n")], NOW_MS + 20)
    assert bins(after) == {"n": 5}
    assert (after.generation, after.last_update_ms) == (before.generation + 1, NOW_MS + 10)


def test_engine_reads_meet_intents(engine: Engine) -> None:
    engine.apply(1, [request(1, "a", op.write("n", 1)), request(2, "b", op.write("n", 2))])
    a = engine.read(digest("a"), [op.read("n")], NOW_MS + 5)
    b = engine.read(digest("b"), [op.read("n")], NOW_MS + 5)
    locked = engine.apply(
        3, [prepare(9, reads=[read_of("b", b)], writes=[write("a", op.increment("n", 10))])]
    )
    assert locked is not None and locked[0].count == 2

    blocked = engine.read(digest("a"), [op.read("n")], NOW_MS + 200)
    assert blocked.code == ResultCode.MRT_BLOCKED
    assert blocker_of(blocked) == Blocker(9, HOME, DEADLINE_MS)
    read_locked = engine.read(digest("b"), [op.read("n")], NOW_MS + 200)
    assert read_locked.ok and bins(read_locked) == {"n": 2}
    assert read_locked.generation == b.generation
    assert engine.read(digest("a"), [op.write("n", 1)], NOW_MS).code == ResultCode.PARAMETER_ERROR

    intent, stored = engine.locked_view(digest("a"))
    assert isinstance(intent, Intent) and intent.is_write and intent.txn_id == 9
    assert stored == engine.get(digest("a")) and stored is not None and stored.bins == {"n": 1}
    assert engine.locked_view(digest("b"))[0] == Intent(9, HOME, DEADLINE_MS, None)
    assert engine.locked_view(digest("nothing")) == (None, None)

    # A reader that learnt COMMITTED at home reads the roll-forward; the resolve stores it.
    home = TxnRecord(TxnState.COMMITTED, DEADLINE_MS, (0,), NOW_MS + 300)
    seen = engine.read_record(visible_record(intent, stored, home), [op.read("n")], NOW_MS + 400)
    assert bins(seen) == {"n": 11} and seen.generation == a.generation + 1
    engine.apply(4, [TxnResolve(9, NOW_MS + 350, True, NOW_MS + 300)])
    assert engine.read(digest("a"), [op.read("n")], NOW_MS + 400) == seen
    assert engine.locked_view(digest("a"))[0] is None


def test_read_record_answers_as_read_does(engine: Engine) -> None:
    reads = [op.read("n")]
    engine.apply(1, [request(1, "live", op.write("n", 1))])
    engine.apply(2, [request(2, "dead", op.write("n", 1)), request(3, "dead", op.delete())])
    engine.apply(3, [request(4, "old", op.write("n", 1), policy=WritePolicy(ttl=1))])
    later_ms = NOW_MS + 5000
    for key in ("live", "dead", "old", "never"):
        record = engine.get(digest(key))
        assert engine.read_record(record, reads, later_ms) == engine.read(
            digest(key), reads, later_ms
        )
    assert bins(engine.read_record(engine.get(digest("live")), reads, later_ms)) == {"n": 1}
    for key in ("dead", "old", "never"):
        code = engine.read_record(engine.get(digest(key)), reads, later_ms).code
        assert code == ResultCode.RECORD_NOT_FOUND, key
    live = engine.get(digest("live"))
    assert engine.read_record(live, [], later_ms).code == ResultCode.PARAMETER_ERROR
    assert engine.read_record(live, [op.touch()], later_ms).code == ResultCode.PARAMETER_ERROR


def test_engine_txn_views(engine: Engine) -> None:
    engine.apply(1, [TxnBegin(5, NOW_MS, DEADLINE_MS, (0,))])
    engine.apply(2, [prepare(8, writes=[write("b", op.write("n", 1))])])
    assert engine.txn_record(5) == TxnRecord(TxnState.OPEN, DEADLINE_MS, (0,), 0)
    assert engine.txn_record(8) is None, "a participant's marker is not a record"
    assert engine.txn_outcome(5) is TxnState.OPEN
    assert engine.txn_outcome(8) is TxnState.OPEN, "PREPARED reads as OPEN"
    assert engine.txn_outcome(404) is None
    assert engine.intents_past_deadline(DEADLINE_MS, 10) == []
    assert engine.intents_past_deadline(DEADLINE_MS + 1, 10) == [Blocker(8, HOME, DEADLINE_MS)]

    engine.apply(3, [TxnDecide(5, NOW_MS + 1, DEADLINE_MS, TxnState.ABORTED)])
    engine.apply(4, [TxnResolve(8, NOW_MS + 2, False, NOW_MS + 1)])
    assert engine.txn_outcome(5) is TxnState.ABORTED and engine.txn_outcome(8) is TxnState.ABORTED
    horizon_ms = DEADLINE_MS + TXN_FORGET_AFTER_MS_MIN
    assert engine.forget_candidates(horizon_ms - 1, 10) == ()
    assert engine.forget_candidates(horizon_ms, 10) == (5, 8)
    assert engine.forget_candidates(horizon_ms, 1) == (5,)
    forgot = engine.apply(5, [TxnForget(horizon_ms, (5, 8))])
    assert forgot is not None and forgot[0].count == 2
    assert engine.txn_record(5) is None and engine.txn_outcome(8) is None


def lock_some(engine: Engine) -> None:
    engine.apply(1, [request(1, "a", op.write("n", 1)), TxnBegin(5, NOW_MS, DEADLINE_MS, (0,))])
    engine.apply(2, [prepare(5, writes=[write("a", op.increment("n", 1))])])


def assert_locked(engine: Engine) -> None:
    intent, record = engine.locked_view(digest("a"))
    assert intent is not None and intent.txn_id == 5 and intent.provisional is not None
    assert intent.provisional.bins == {"n": 2}
    assert record is not None and record.bins == {"n": 1}
    assert engine.txn_record(5) == TxnRecord(TxnState.OPEN, DEADLINE_MS, (0,), 0)
    assert engine.txn_outcome(5) is TxnState.OPEN


def test_a_reopened_engine_keeps_intents_and_txn_records(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "g", NAMESPACE)
    lock_some(engine)
    engine.close()
    again = Engine(tmp_path / "g", NAMESPACE)
    try:
        assert_locked(again)
        blocked = again.apply(3, [request(3, "a", op.write("n", 9))])
        assert blocked is not None and blocked[0].code == ResultCode.MRT_BLOCKED
    finally:
        again.close()


def test_a_snapshot_carries_intents_and_txn_records(tmp_path: Path) -> None:
    source = Engine(tmp_path / "source", NAMESPACE, durable=False)
    target = Engine(tmp_path / "target", NAMESPACE, durable=False)
    try:
        lock_some(source)
        assert source.copy_to(tmp_path / "snapshot") == 2
        target.apply(1, [TxnBegin(77, NOW_MS, DEADLINE_MS, (0,))])  # replaced wholesale
        target.replace_with(tmp_path / "snapshot")
        assert target.applied_index == 2
        assert_locked(target)
        assert target.txn_record(77) is None
        resolved = target.apply(3, [TxnResolve(5, NOW_MS + 9, True, NOW_MS + 8)])
        assert resolved is not None and resolved[0].count == 1
        assert bins(target.read(digest("a"), [op.read("n")], NOW_MS + 10)) == {"n": 2}
    finally:
        source.close()
        target.close()


def test_a_store_from_before_the_txn_tables_opens(tmp_path: Path) -> None:
    """A store written when Table had five members: the new tables are created empty."""
    path = tmp_path / "old"
    path.mkdir()
    env = lmdb.open(str(path), max_dbs=5, subdir=True)
    old_tables = (b"records", b"sessions", b"clients", b"sets", b"meta")
    dbs = {name: env.open_db(name, create=True) for name in old_tables}
    record = Record(1, 0, NOW_MS, "", {"n": 1})  # in no set: the sets table stays empty
    key = digest("a", "")
    with env.begin(write=True) as txn:
        txn.put(key, codec.encode_record(record), db=dbs[b"records"])
        txn.put(b"applied_index", (4).to_bytes(8, "big"), db=dbs[b"meta"])
    env.close()
    engine = Engine(path, NAMESPACE, durable=False)
    try:
        assert engine.applied_index == 4 and engine.get(key) == record
        assert engine.locked_view(key) == (None, record)
        increment = TxnWrite(key, "", None, (op.increment("n", 1),), WritePolicy())
        locked = engine.apply(5, [prepare(5, writes=[increment])])
        assert locked is not None and locked[0].ok, locked
        intent = engine.locked_view(key)[0]
        assert intent is not None and intent.provisional is not None
        assert intent.provisional.bins == {"n": 2}
    finally:
        engine.close()


# -- the group runtime ----------------------------------------------------------------------------


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    group = Group(tmp_path, seed=0)
    yield group
    group.close()


def submitted(runtime: GroupRuntime, command: LogCommand) -> Future[Result]:
    future: Future[Result] = Future()
    runtime.submit_to(command, future.set_result)
    return future


def test_txn_commands_go_through_the_fake_log_and_run_jobs_forgets(group: Group) -> None:
    leader = group.runtimes["a"]
    futures = [
        submitted(leader, TxnBegin(5, NOW_MS, DEADLINE_MS, (0,))),
        submitted(leader, prepare(5, writes=[write("k", op.write("n", 1))])),
    ]
    group.settle()
    decided = submitted(leader, TxnDecide(5, NOW_MS + 200, DEADLINE_MS, TxnState.COMMITTED))
    group.settle()
    futures.append(submitted(leader, TxnResolve(5, NOW_MS + 300, True, NOW_MS + 200)))
    group.settle()
    assert all(result_now(f).ok for f in futures), [result_now(f) for f in futures]
    assert state_of(result_now(decided)) is TxnState.COMMITTED
    for node in ("a", "b", "c"):
        engine = group.engines[node]
        assert engine.txn_outcome(5) is TxnState.COMMITTED, node
        assert bins(engine.read(digest("k"), [op.read("n")], NOW_MS + 400)) == {"n": 1}

    (raid,) = leader.run_jobs(NOW_MS + 1000)  # nothing to forget yet: the raid alone
    group.settle()
    assert result_now(raid).ok
    horizon_ms = DEADLINE_MS + TXN_FORGET_AFTER_MS_MIN
    assert group.runtimes["b"].run_jobs(horizon_ms) == [], "a follower proposes nothing"
    raid, forget = leader.run_jobs(horizon_ms)
    group.settle()
    assert result_now(raid).ok
    assert result_now(forget).count == 2, "the record and the marker"
    for node in ("a", "b", "c"):
        assert group.engines[node].txn_outcome(5) is None, node
        assert group.engines[node].forget_candidates(horizon_ms, TXN_FORGET_IDS_MAX) == ()
    group.assert_identical()


def test_run_jobs_bounds_a_txn_forget(group: Group) -> None:
    leader = group.runtimes["a"]
    count = TXN_FORGET_IDS_MAX + 3
    futures = [
        submitted(leader, TxnDecide(n, NOW_MS, DEADLINE_MS, TxnState.ABORTED))
        for n in range(1, count + 1)
    ]
    group.settle()
    assert all(result_now(f).ok for f in futures)
    raid, forget = leader.run_jobs(DEADLINE_MS + TXN_FORGET_AFTER_MS_MIN)
    group.settle()
    assert result_now(raid).ok
    assert result_now(forget).count == TXN_FORGET_IDS_MAX
    assert group.engines["c"].txn_outcome(count) is TxnState.ABORTED, "left for the next raid"
    assert group.engines["c"].txn_outcome(1) is None


def test_submit_to_carries_txn_commands_through_pysyncobj(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    engine = Engine(tmp_path / "store", NAMESPACE, durable=False)
    raft: PysyncobjLog | None = None
    runtime: GroupRuntime | None = None
    try:
        raft = PysyncobjLog(
            "solo",
            addresses={"solo": address},
            apply=make_apply(engine),
            group_dir=tmp_path / "raft",
            secret="txn-wiring-test-secret",
            snapshot=engine,
            options=RaftOptions(connection_retry_s=0.3),
        )
        wait_until(raft.is_leader, "the lone replica to lead")
        runtime = GroupRuntime(raft, engine)
        answers: list[Result] = []
        answered = threading.Event()

        def reply(result: Result) -> None:
            answers.append(result)
            answered.set()

        commit = TxnApply(7, NOW_MS, DEADLINE_MS, (), (write("a", op.write("n", 1)),))
        runtime.submit_to(commit, reply)
        assert answered.wait(15), "no answer"
        assert answers == [Result(count=1, last_update_ms=NOW_MS)]
        locking = prepare(8, writes=[write("a", op.increment("n", 1))])
        assert runtime.submit(locking).result(timeout=15).count == 1
        blocked = runtime.submit(request(1, "a", op.write("n", 5))).result(timeout=15)
        assert blocker_of(blocked) == Blocker(8, HOME, DEADLINE_MS)
        read = runtime.read(digest("a"), [op.read("n")], NOW_MS + 200, True).result(timeout=15)
        assert blocker_of(read) == Blocker(8, HOME, DEADLINE_MS)
    finally:
        if runtime is not None:
            runtime.close()
        if raft is not None:
            raft.close()
        engine.close()
