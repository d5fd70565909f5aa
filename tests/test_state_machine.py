"""The state machine on the in-memory store: exactly-once, atomicity, deletes, background jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from raftstore import keys, limits, operations
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.commands import (
    Barrier,
    Command,
    Expire,
    RecordRequest,
    Result,
    TombRaid,
    Truncate,
    decode_result,
    encode_result,
)
from raftstore.config import NamespaceConfig
from raftstore.errors import ResultCode
from raftstore.index import PrimaryIndex
from raftstore.kv import MemoryKv, Table
from raftstore.policy import Exists, WritePolicy
from raftstore.state_machine import (
    CommandCrashed,
    StateMachine,
    load_sets,
    read_applied_index,
)

NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000
NAMESPACE = NamespaceConfig("test", max_record_bytes=4096, tomb_raider_period_s=60)


def digest(n: int | str, set_name: str = "s") -> bytes:
    return keys.calc_digest("test", set_name, n)


class Replica:
    """A state machine over MemoryKv, applying batches at consecutive log positions."""

    def __init__(self, namespace: NamespaceConfig = NAMESPACE) -> None:
        self.kv = MemoryKv()
        self.index = PrimaryIndex()
        self.machine = StateMachine(namespace, self.index)
        self.log_index = 0

    def apply(self, commands: Sequence[Command]) -> list[Result]:
        self.log_index += 1
        with self.kv.begin(write=True) as txn:
            applied = self.machine.apply_batch(txn, self.log_index, commands)
        self.machine.publish(applied)
        return applied.results

    def one(self, command: Command) -> Result:
        return self.apply([command])[0]

    def rebuild_index(self) -> None:
        """What a restart does: the index from the device alone."""
        from raftstore import codec

        self.index.clear()
        with self.kv.begin() as txn:
            for name, set_id in load_sets(txn).items():
                self.index.register_set(name, set_id)
            self.index.load(
                (d, codec.decode_record(raw).meta) for d, raw in txn.scan(Table.RECORDS)
            )


class Client:
    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.seq = 0
        self.acked = 0

    def request(
        self,
        key: int | str,
        ops: Sequence[op.Op],
        *,
        policy: WritePolicy | None = None,
        now_ms: int = NOW_MS,
        set_name: str = "s",
        seq: int | None = None,
    ) -> RecordRequest:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return RecordRequest(
            client_id=self.client_id,
            request_seq=seq,
            acked_seq=self.acked,
            now_ms=now_ms,
            digest=digest(key, set_name),
            set_name=set_name,
            ops=tuple(ops),
            policy=policy or WritePolicy(),
        )


def bins_of(result: Result) -> dict[str | None, Any]:
    return dict(result.results)


def test_write_then_read_bumps_generation() -> None:
    replica, client = Replica(), Client(1)
    first = replica.one(client.request(1, [op.write("a", 1)]))
    assert (first.code, first.generation) == (ResultCode.OK, 1)
    second = replica.one(client.request(1, [op.write("b", "x"), op.read()]))
    assert second.generation == 2
    assert bins_of(second) == {"a": 1, "b": "x"}
    assert replica.index.get(digest(1)) is not None


def test_a_repeated_request_is_answered_not_applied_again() -> None:
    replica, client = Replica(), Client(7)
    request = client.request(1, [op.increment("n", 5)])
    first = replica.one(request)
    again = replica.one(request)  # a client retry after a lost reply, in a later batch
    assert again == first
    same_batch = replica.apply([client.request(2, [op.increment("n", 1)])] * 3)
    assert same_batch[0] == same_batch[1] == same_batch[2]
    read = replica.one(client.request(1, [op.read("n")]))
    assert bins_of(read) == {"n": 5}
    assert bins_of(replica.one(client.request(2, [op.read("n")]))) == {"n": 1}


def test_a_failure_is_remembered_too() -> None:
    replica, alice, bob = Replica(), Client(1), Client(2)
    replica.one(alice.request(1, [op.write("a", 1)]))
    create = bob.request(1, [op.write("a", 2)], policy=WritePolicy(exists=Exists.CREATE))
    assert replica.one(create).code == ResultCode.RECORD_EXISTS
    replica.one(alice.request(1, [op.delete()]))
    # The retry must get the first answer, not create the record now that it is gone.
    assert replica.one(create).code == ResultCode.RECORD_EXISTS
    assert replica.one(alice.request(1, [op.read()])).code == ResultCode.RECORD_NOT_FOUND


def test_acked_requests_are_forgotten_and_older_ones_refused() -> None:
    replica, client = Replica(), Client(3)
    for n in range(5):
        replica.one(client.request(n, [op.write("a", n)]))
    with replica.kv.begin() as txn:
        assert len(list(txn.scan(Table.SESSIONS))) == 5
    client.acked = 4  # the client holds the replies of 1..3
    replica.one(client.request(9, [op.write("a", 9)]))
    with replica.kv.begin() as txn:
        seqs = [int.from_bytes(k[8:], "big") for k, _ in txn.scan(Table.SESSIONS)]
    assert seqs == [4, 5, 6]
    stale = client.request(1, [op.write("a", 1)], seq=2)
    result = replica.one(stale)
    assert result.code == ResultCode.SESSION_EXPIRED
    assert bins_of(replica.one(client.request(1, [op.read("a")]))) == {"a": 1}


def test_the_applied_position_moves_with_the_batch() -> None:
    replica, client = Replica(), Client(1)
    replica.apply([client.request(1, [op.write("a", 1)]), Barrier()])
    with replica.kv.begin() as txn:
        assert read_applied_index(txn) == 1
    replica.apply([])
    with replica.kv.begin() as txn:
        assert read_applied_index(txn) == 2
    with replica.kv.begin(write=True) as txn, pytest.raises(AssertionError):
        replica.machine.apply_batch(txn, 2, [Barrier()])


def test_the_index_changes_only_when_published() -> None:
    replica, client = Replica(), Client(1)
    with replica.kv.begin(write=True) as txn:
        applied = replica.machine.apply_batch(txn, 1, [client.request(1, [op.write("a", 1)])])
        assert replica.index.get(digest(1)) is None
    replica.machine.publish(applied)
    meta = replica.index.get(digest(1))
    assert meta is not None and meta.generation == 1


def test_delete_leaves_a_tombstone_and_generations_continue() -> None:
    replica, client = Replica(), Client(1)
    for n in range(3):
        replica.one(client.request(1, [op.write("a", n)]))
    deleted = replica.one(client.request(1, [op.delete()]))
    assert deleted.code == ResultCode.OK
    meta = replica.index.get(digest(1))
    assert meta is not None and meta.tombstone and meta.generation == 4
    assert replica.one(client.request(1, [op.read()])).code == ResultCode.RECORD_NOT_FOUND
    again = replica.one(client.request(1, [op.write("a", "back")]))
    assert again.generation == 5
    stats = replica.index.stats()
    assert (stats.records, stats.tombstones) == (1, 0)


def test_truncate_buries_the_set_up_to_the_cutoff() -> None:
    replica, client = Replica(), Client(1)
    for n in range(4):
        replica.one(client.request(n, [op.write("a", n)], now_ms=NOW_MS + n))
    replica.one(client.request(0, [op.write("a", 0)], set_name="other"))
    result = replica.one(Truncate(now_ms=NOW_MS + 10, set_name="s", before_ms=NOW_MS + 1))
    assert result.count == 2
    alive = [n for n in range(4) if replica.one(client.request(n, [op.read()])).ok]
    assert alive == [2, 3]
    assert replica.one(client.request(0, [op.read()], set_name="other")).ok
    whole = replica.one(Truncate(now_ms=NOW_MS + 20, set_name=None, before_ms=NOW_MS + 20))
    assert whole.count == 3
    assert replica.index.stats().records == 0


def test_expire_buries_only_records_past_their_void_time() -> None:
    replica, client = Replica(), Client(1)
    short = WritePolicy(ttl=10)
    replica.one(client.request(1, [op.write("a", 1)], policy=short))
    replica.one(client.request(2, [op.write("a", 2)], policy=WritePolicy(ttl=1000)))
    replica.one(client.request(3, [op.write("a", 3)]))
    later = NOW_MS + 11_000
    # Expired records read as absent before the expiry command arrives.
    assert replica.one(client.request(1, [op.read()], now_ms=later)).code == 2
    result = replica.one(Expire(now_ms=later, digests=(digest(3), digest(2), digest(1))))
    assert result.count == 1
    meta = replica.index.get(digest(1))
    assert meta is not None and meta.tombstone
    assert replica.one(client.request(2, [op.read()], now_ms=later)).ok


def test_the_tomb_raider_removes_old_tombstones_and_idle_sessions() -> None:
    replica, client = Replica(), Client(1)
    replica.one(client.request(1, [op.write("a", 1)]))
    replica.one(client.request(1, [op.delete()]))
    replica.one(client.request(2, [op.write("a", 1)], now_ms=NOW_MS + 50_000))
    replica.one(client.request(2, [op.delete()], now_ms=NOW_MS + 50_000))
    raid = replica.one(TombRaid(now_ms=NOW_MS + 61_000))
    assert raid.count == 1
    assert replica.index.get(digest(1)) is None
    assert replica.index.get(digest(2)) is not None
    # A year of silence: the client's sessions are forgotten.
    replica.one(TombRaid(now_ms=NOW_MS + 365 * 86400 * 1000))
    with replica.kv.begin() as txn:
        assert list(txn.scan(Table.SESSIONS)) == []
        assert list(txn.scan(Table.CLIENTS)) == []


def test_sets_are_limited_and_persisted() -> None:
    replica, client = Replica(), Client(1)
    for n in range(limits.SETS_PER_NAMESPACE_MAX):
        assert replica.one(client.request(n, [op.write("a", n)], set_name=f"s{n}")).ok
    over = replica.one(client.request(0, [op.write("a", 0)], set_name="one-too-many"))
    assert over.code == ResultCode.SET_LIMIT
    with replica.kv.begin() as txn:
        assert len(load_sets(txn)) == limits.SETS_PER_NAMESPACE_MAX


def test_a_record_over_max_record_size_is_refused_whole() -> None:
    replica, client = Replica(), Client(1)
    replica.one(client.request(1, [op.write("a", "small")]))
    big = replica.one(client.request(1, [op.write("a", "x" * 5000), op.write("b", 1)]))
    assert big.code == ResultCode.RECORD_TOO_BIG
    assert bins_of(replica.one(client.request(1, [op.read()]))) == {"a": "small"}


def test_a_crashing_command_is_reported_by_position(monkeypatch: pytest.MonkeyPatch) -> None:
    replica, client = Replica(), Client(1)
    real = operations.operate

    def buggy(existing: Any, ops: Any, policy: Any, **kwargs: Any) -> Any:
        if any(o.bin == "boom" for o in ops):
            raise ZeroDivisionError("a bug")
        return real(existing, ops, policy, **kwargs)

    monkeypatch.setattr(operations, "operate", buggy)
    batch = [client.request(1, [op.write("a", 1)]), client.request(2, [op.write("boom", 1)])]
    with replica.kv.begin(write=True) as txn, pytest.raises(CommandCrashed) as caught:
        replica.machine.apply_batch(txn, 1, batch)
    assert caught.value.position == 1
    with replica.kv.begin(write=True) as txn:
        applied = replica.machine.apply_batch(txn, 1, batch, crashed=frozenset({1}))
    assert [r.code for r in applied.results] == [ResultCode.OK, ResultCode.SERVER_ERROR]


def test_results_survive_their_encoding() -> None:
    result = Result(generation=3, void_time=9, results=(("a", [1, {"k": b"v"}]), (None, 2.5)))
    assert decode_result(encode_result(result)) == result


def test_replicas_agree_whatever_their_index_history() -> None:
    """Two replicas apply the same log; one rebuilds its index from the device midway."""
    left, right, client = Replica(), Replica(), Client(1)
    script: list[list[Command]] = []
    for n in range(30):
        now = NOW_MS + n * 1000
        batch: list[Command] = [
            client.request(n % 7, [op.write("a", n), op.list_append("l", n)], now_ms=now),
            client.request(n % 5, [op.increment("c", 1)], now_ms=now, policy=WritePolicy(ttl=3)),
        ]
        if n % 4 == 3:
            batch.append(client.request(n % 7, [op.delete()], now_ms=now))
        if n % 9 == 8:
            batch.append(Expire(now_ms=now, digests=tuple(digest(k) for k in range(7))))
            batch.append(TombRaid(now_ms=now + 70_000))
            batch.append(Truncate(now_ms=now, set_name="s", before_ms=now - 5000))
        script.append(batch)
    outputs = []
    for replica in (left, right):
        results = []
        for n, batch in enumerate(script):
            if replica is right and n % 10 == 5:
                replica.rebuild_index()
            results.append(replica.apply(batch))
        outputs.append(results)
    assert outputs[0] == outputs[1]
    assert left.kv.tables == right.kv.tables


# -- sessions: answers held for the batch, the answered bound ------------------------------------


def sessions_of(replica: Replica) -> list[tuple[int, int]]:
    with replica.kv.begin() as txn:
        return [
            (int.from_bytes(key[:8], "big"), int.from_bytes(key[8:], "big"))
            for key, _ in txn.scan(Table.SESSIONS)
        ]


class CountingTxn:
    """A transaction that counts the reads of each table (to see which lookups happen)."""

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.gets: dict[Table, int] = dict.fromkeys(Table, 0)

    def get(self, table: Table, key: bytes) -> bytes | None:
        self.gets[table] += 1
        return self.txn.get(table, key)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.txn, name)


def apply_counting(replica: Replica, commands: Sequence[Command]) -> tuple[list[Result], int]:
    """Apply a batch; its results and how many times it read the session table."""
    replica.log_index += 1
    with replica.kv.begin(write=True) as txn:
        counting = CountingTxn(txn)
        applied = replica.machine.apply_batch(counting, replica.log_index, commands)
    replica.machine.publish(applied)
    return applied.results, counting.gets[Table.SESSIONS]


def test_answers_acknowledged_within_their_batch_are_never_stored() -> None:
    replica, client = Replica(), Client(4)
    batch = []
    for n in range(5):
        batch.append(client.request(n, [op.increment("n", 1)]))
        client.acked = client.seq  # the next request acknowledges the one before this
    results = replica.apply(batch)
    assert all(r.ok for r in results)
    assert sessions_of(replica) == [(4, 4), (4, 5)], "only the unacknowledged answers are kept"
    assert replica.one(batch[-1]) == results[-1], "and it answers a retry"
    assert replica.one(batch[2]).code == ResultCode.SESSION_EXPIRED


def test_a_request_above_the_answered_bound_needs_no_lookup() -> None:
    replica, client = Replica(), Client(5)
    first = [client.request(n, [op.increment("n", 1)]) for n in range(3)]
    _, lookups = apply_counting(replica, first)
    assert lookups == 0, "a new client has no answers"
    _, lookups = apply_counting(replica, [client.request(9, [op.write("a", 1)])])
    assert lookups == 0, "seq 4 is above every stored answer"
    again, lookups = apply_counting(replica, [first[1]])
    assert lookups == 1 and again[0].ok
    assert bins_of(replica.one(client.request(1, [op.read("n")]))) == {"n": 1}


def test_client_rows_without_the_bound_are_still_honoured() -> None:
    """A row written before the bound existed (16 bytes): every request is looked up."""
    replica, client = Replica(), Client(9)
    stored = Result(generation=42)
    with replica.kv.begin(write=True) as txn:
        txn.put(Table.CLIENTS, (9).to_bytes(8, "big"), (1).to_bytes(8, "big") * 2)
        txn.put(
            Table.SESSIONS, (9).to_bytes(8, "big") + (5).to_bytes(8, "big"), encode_result(stored)
        )
    client.acked = 1
    retry = client.request(1, [op.increment("n", 1)], seq=5)
    assert replica.one(retry) == stored, "answered from the table, not applied"
    assert replica.index.get(digest(1)) is None
    assert replica.one(client.request(1, [op.increment("n", 1)], seq=6)).ok
    with replica.kv.begin() as txn:
        row = txn.get(Table.CLIENTS, (9).to_bytes(8, "big"))
    assert row is not None and row[16:] == b"\xff" * 8, "the bound stays unknown"


def test_a_client_seen_in_a_batch_is_not_forgotten_by_the_raid_in_it() -> None:
    replica, client = Replica(), Client(6)
    replica.one(client.request(1, [op.increment("n", 1)]))
    later = NOW_MS + 2 * 3600 * 1000  # silent longer than SESSION_IDLE_MS_MAX
    request = client.request(1, [op.increment("n", 1)], now_ms=later)
    first = replica.apply([request, TombRaid(now_ms=later)])[0]
    assert replica.one(request) == first, "the answer outlived the raid"
    read = replica.one(client.request(1, [op.read("n")], now_ms=later))
    assert bins_of(read) == {"n": 2}


def test_a_result_that_cannot_be_stored_crashes_its_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raftstore import state_machine

    def buggy(result: Result) -> bytes:
        if result.generation == 2:
            raise TypeError("a bug")
        return encode_result(result)

    monkeypatch.setattr(state_machine, "encode_result", buggy)
    replica, client = Replica(), Client(1)
    batch = [client.request(1, [op.write("a", n)]) for n in range(3)]
    with replica.kv.begin(write=True) as txn, pytest.raises(CommandCrashed) as caught:
        replica.machine.apply_batch(txn, 1, batch)
    assert caught.value.position == 1
    with replica.kv.begin(write=True) as txn:
        applied = replica.machine.apply_batch(txn, 1, batch, crashed=frozenset({1}))
    assert [r.code for r in applied.results] == [ResultCode.OK, ResultCode.SERVER_ERROR, 0]
