"""Transaction commands in one group: every command, every code, on MemoryKv.

`Group` below stands in for a partition group's state machine: a MemoryKv, a tiny record
store (records encoded by raftstore.codec in Table.RECORDS, set ids in Table.SETS) and
`txn_participant.apply_txn_command`. It is shared with tests/test_txn_coordinator.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftstore import codec, keys, operations
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.commands import Result
from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.kv import KvTxn, MemoryKv, Table
from raftstore.policy import Exists, WritePolicy
from raftstore.record import Record
from raftstore.txn_commands import (
    TXN_CLOCK_SKEW_MS_MAX,
    TXN_FORGET_AFTER_MS_MIN,
    TXN_TIMEOUT_MS_MAX,
    TXN_WRITES_MAX,
    TxnApply,
    TxnBegin,
    TxnCommand,
    TxnCommit,
    TxnDecide,
    TxnForget,
    TxnPrepare,
    TxnRead,
    TxnResolve,
    TxnState,
    TxnWrite,
    decide_result,
    decode_txn_command,
    encode_txn_command,
    state_of,
    txn_command_from_wire,
    txn_command_to_wire,
)
from raftstore.txn_participant import (
    TXN_TABLES,
    Blocker,
    Intent,
    TxnRecord,
    WriteAccess,
    apply_txn_command,
    blocked_result,
    blocker_of,
    forget_candidates,
    intent_of,
    intents_past_deadline,
    outcome_in_group,
    read_needs_home,
    rolled_forward,
    txn_record_of,
    visible_record,
    visible_version,
    write_access,
)

NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000
DEADLINE_MS = NOW_MS + 10_000
TOO_FAR_MS = NOW_MS + TXN_TIMEOUT_MS_MAX + TXN_CLOCK_SKEW_MS_MAX + 1  # a deadline refused
NAMESPACE = NamespaceConfig("test", max_record_bytes=1024, tomb_raider_period_s=60)


TABLES = TXN_TABLES


def digest(n: int | str, set_name: str = "s") -> bytes:
    return keys.calc_digest("test", set_name, n)


class KvRecords:
    """The state machine's side of `RecordStore`, in miniature."""

    def __init__(self, txn: KvTxn, sets_max: int) -> None:
        self.txn = txn
        self.sets_max = sets_max

    def load(self, digest: bytes) -> Record | None:
        raw = self.txn.get(Table.RECORDS, digest)
        return None if raw is None else codec.decode_record(raw)

    def ensure_sets(self, set_names: Sequence[str]) -> None:
        new = [name for name in set_names if self.txn.get(Table.SETS, name.encode()) is None]
        used = sum(1 for _ in self.txn.scan(Table.SETS))
        if used + len(new) > self.sets_max:
            raise error(ResultCode.SET_LIMIT, "too many sets")
        for offset, name in enumerate(new):
            self.txn.put(Table.SETS, name.encode(), (used + offset + 1).to_bytes(2, "big"))

    def store(self, digest: bytes, record: Record, encoded: bytes | None = None) -> None:
        if encoded is None:
            encoded = codec.encode_record(record)
        assert encoded == codec.encode_record(record), "the encoding given is the record's"
        assert len(encoded) <= NAMESPACE.max_record_bytes, "a store that fails is our bug"
        self.txn.put(Table.RECORDS, digest, encoded)


class Group:
    """One partition group: a store and the participant logic (and the single-record write
    rule the state machine follows: tests/test_txn_wiring.py runs the real one)."""

    def __init__(self, group_id: int = 0, *, sets_max: int = 1023) -> None:
        self.group_id = group_id
        self.sets_max = sets_max
        self.kv = MemoryKv()

    def apply(self, command: TxnCommand) -> Result:
        with self.kv.begin(write=True) as txn:
            return apply_txn_command(
                txn,
                command,
                tables=TABLES,
                records=KvRecords(txn, self.sets_max),
                namespace=NAMESPACE,
            )

    def write_single(self, key: bytes, ops: Sequence[op.Op], now_ms: int) -> Result:
        """A non-transactional write, as the state machine does it."""
        with self.kv.begin(write=True) as txn:
            intent = intent_of(txn, key, tables=TABLES)
            if write_access(intent, now_ms) is not WriteAccess.FREE:
                assert intent is not None
                return blocked_result(intent)
            records = KvRecords(txn, self.sets_max)
            try:
                outcome = operations.operate(
                    records.load(key),
                    ops,
                    WritePolicy(),
                    now_ms=now_ms,
                    set_name="s",
                    user_key=None,
                    namespace=NAMESPACE,
                )
            except RaftstoreError as exc:
                return Result(code=exc.code, message=exc.msg)
            if outcome.changed:
                assert outcome.record is not None
                records.store(key, outcome.record)
            return Result()

    def record(self, key: bytes) -> Record | None:
        raw = self.kv.tables[Table.RECORDS].get(key)
        return None if raw is None else codec.decode_record(raw)

    def bins(self, key: bytes) -> dict[str, Any] | None:
        record = self.record(key)
        return None if record is None or record.tombstone else dict(record.bins)

    def intent(self, key: bytes) -> Intent | None:
        with self.kv.begin() as txn:
            return intent_of(txn, key, tables=TABLES)

    def intents(self) -> dict[bytes, bytes]:
        return dict(self.kv.tables[TABLES.intents])

    def txn_record(self, txn_id: int) -> Any:
        with self.kv.begin() as txn:
            return txn_record_of(txn, txn_id, tables=TABLES)

    def put_record(self, key: bytes, bins: dict[str, Any], now_ms: int = NOW_MS) -> Record:
        record = Record(1, 0, now_ms, "s", bins)
        self.kv.tables[Table.RECORDS][key] = codec.encode_record(record)
        return record


def read_of(group: Group, key: bytes, now_ms: int = NOW_MS) -> TxnRead:
    generation, last_update_ms = visible_version(group.record(key), now_ms)
    return TxnRead(key, generation, last_update_ms)


def write_of(key: bytes, *ops: op.Op, policy: WritePolicy | None = None) -> TxnWrite:
    return TxnWrite(key, "s", None, tuple(ops), policy or WritePolicy())


def apply_cmd(
    txn_id: int,
    reads: Sequence[TxnRead] = (),
    writes: Sequence[TxnWrite] = (),
    *,
    now_ms: int = NOW_MS,
    deadline_ms: int = DEADLINE_MS,
) -> TxnApply:
    return TxnApply(txn_id, now_ms, deadline_ms, tuple(reads), tuple(writes))


def prepare_cmd(
    txn_id: int,
    reads: Sequence[TxnRead] = (),
    writes: Sequence[TxnWrite] = (),
    *,
    home: int = 0,
    now_ms: int = NOW_MS,
    deadline_ms: int = DEADLINE_MS,
) -> TxnPrepare:
    return TxnPrepare(txn_id, home, now_ms, deadline_ms, tuple(reads), tuple(writes))


A, B, C = digest(1), digest(2), digest(3)


# -- the wire form ----------------------------------------------------------------------------

POLICY = WritePolicy(exists=Exists.UPDATE, ttl=-1, send_key=True)
EXAMPLES: list[TxnCommand] = [
    apply_cmd(
        2**64 - 1,
        [TxnRead(A, 3, NOW_MS), TxnRead(B, 0, 0)],
        [
            TxnWrite(A, "s", 1, (op.increment("n", 1), op.write("b", b"\x00")), POLICY),
            TxnWrite(B, "", "k", (op.map_put("m", 1, [1.5, None]),), WritePolicy()),
        ],
    ),
    TxnBegin(7, NOW_MS, DEADLINE_MS, (0, 3, 4095)),
    prepare_cmd(7, [TxnRead(C, 1, 2)], [write_of(A, op.delete())], home=3),
    TxnDecide(7, NOW_MS, DEADLINE_MS, TxnState.COMMITTED),
    TxnDecide(7, NOW_MS, DEADLINE_MS, TxnState.ABORTED),
    TxnResolve(7, NOW_MS, True, NOW_MS - 5),
    TxnResolve(0, 0, False, 0),
    TxnForget(NOW_MS, (1, 2, 3)),
    TxnForget(NOW_MS, ()),
    replace(prepare_cmd(7, [], [write_of(A, op.write("x", 1))], home=3), participants=(3, 9)),
    TxnDecide(7, NOW_MS, DEADLINE_MS, TxnState.COMMITTED, resolve_here=True),
    TxnCommit(7, NOW_MS, DEADLINE_MS, (TxnRead(C, 1, 2),), (write_of(A, op.delete()),), (3, 9)),
]


@pytest.mark.parametrize("command", EXAMPLES, ids=lambda c: type(c).__name__)
def test_every_command_round_trips(command: TxnCommand) -> None:
    assert decode_txn_command(encode_txn_command(command)) == command
    assert txn_command_from_wire(txn_command_to_wire(command)) == command


def _wire_with(index: int, path: tuple[int, ...], value: Any) -> Any:
    raw = codec.unpack_value(encode_txn_command(EXAMPLES[index]))
    node = raw
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return raw


BAD_WIRES = [
    ("not an array", 5),
    ("empty", []),
    ("unknown tag", [99, 1]),
    ("engine tag", [1, 1]),
    ("short apply", _wire_with(0, (5,), None)[:5]),
    ("bool txn id", _wire_with(1, (1,), True)),
    ("negative txn id", _wire_with(1, (1,), -1)),
    ("huge txn id", _wire_with(1, (1,), 2**64)),
    ("float time", _wire_with(1, (2,), 1.5)),
    ("group too big", _wire_with(1, (4, 0), 4096)),
    ("participants not a list", _wire_with(1, (4,), 3)),
    ("short digest", _wire_with(0, (4, 0, 0), b"x" * 19)),
    ("str digest", _wire_with(0, (4, 0, 0), "x" * 20)),
    ("read shape", _wire_with(0, (4, 0), [A, 1])),
    ("generation too big", _wire_with(0, (4, 0, 1), 70000)),
    ("write shape", _wire_with(0, (5, 0), [A])),
    ("set not str", _wire_with(0, (5, 0, 1), 3)),
    ("user key float", _wire_with(0, (5, 0, 2), 1.5)),
    ("ops not list", _wire_with(0, (5, 0, 3), {})),
    ("op shape", _wire_with(0, (5, 0, 3, 0), [5, "n"])),
    ("unknown op", _wire_with(0, (5, 0, 3, 0, 0), 99)),
    ("bin not str", _wire_with(0, (5, 0, 3, 0, 1), 7)),
    ("args not list", _wire_with(0, (5, 0, 3, 0, 2), 7)),
    ("policy shape", _wire_with(0, (5, 0, 4), [0, 0])),
    ("unknown exists", _wire_with(0, (5, 0, 4, 0), 9)),
    ("send_key not bool", _wire_with(0, (5, 0, 4, 4), 1)),
    ("decide OPEN", _wire_with(3, (4,), int(TxnState.OPEN))),
    ("decide bool", _wire_with(3, (4,), True)),
    ("resolve flag int", _wire_with(5, (3,), 1)),
    ("forget ids", _wire_with(7, (2,), 1)),
    ("forget id str", _wire_with(7, (2, 0), "1")),
    ("participants of a prepare", _wire_with(9, (7,), 3)),
    ("participant too big", _wire_with(9, (7, 0), 4096)),
    ("prepare too long", [*_wire_with(9, (7,), []), []]),
    ("resolve_here int", _wire_with(10, (5,), 1)),
    ("decide too long", [*_wire_with(10, (5,), True), True]),
]


@pytest.mark.parametrize(("what", "raw"), BAD_WIRES, ids=[w for w, _ in BAD_WIRES])
def test_malformed_commands_are_protocol_errors(what: str, raw: Any) -> None:
    with pytest.raises(RaftstoreError) as caught:
        txn_command_from_wire(raw)
    assert caught.value.code == ResultCode.PROTOCOL_ERROR, what


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_fail_with_protocol_error(data: bytes) -> None:
    try:
        decode_txn_command(data)
    except RaftstoreError as exc:
        assert exc.code == ResultCode.PROTOCOL_ERROR


def test_the_shorter_forms_of_prepare_and_decide_still_decode() -> None:
    """Written before the folds: a prepare without participants, a decide without the flag."""
    prepare = prepare_cmd(7, [TxnRead(C, 1, 2)], [write_of(A, op.delete())], home=3)
    decide = TxnDecide(7, NOW_MS, DEADLINE_MS, TxnState.ABORTED)
    for command in (prepare, decide):
        wire = txn_command_to_wire(command)
        assert txn_command_from_wire(wire[:-1]) == command


def test_decide_results_carry_the_state() -> None:
    result = decide_result(TxnState.COMMITTED, 12)
    assert (state_of(result), result.last_update_ms) == (TxnState.COMMITTED, 12)
    assert state_of(Result()) is None
    assert state_of(Result(code=ResultCode.TIMEOUT)) is None
    assert state_of(Result(results=(("txn_state", 9),))) is None


# -- TxnApply ---------------------------------------------------------------------------------


def test_apply_writes_every_record_atomically_at_its_timestamp() -> None:
    group = Group()
    group.put_record(A, {"bal": 10}, NOW_MS - 100)
    reads = [read_of(group, A), read_of(group, B)]
    assert reads[1] == TxnRead(B, 0, 0)  # absent
    writes = [write_of(A, op.increment("bal", -3)), write_of(B, op.write("bal", 3))]
    result = group.apply(apply_cmd(1, reads, writes))
    assert (result.code, result.count, result.last_update_ms) == (ResultCode.OK, 2, NOW_MS)
    a, b = group.record(A), group.record(B)
    assert a is not None and b is not None
    assert (a.bins, a.generation, a.last_update_ms) == ({"bal": 7}, 2, NOW_MS)
    assert (b.bins, b.generation, b.last_update_ms) == ({"bal": 3}, 1, NOW_MS)
    assert group.intents() == {}


def test_a_repeated_apply_is_answered_not_applied_again() -> None:
    group = Group()
    command = apply_cmd(1, writes=[write_of(A, op.increment("n", 1))])
    first = group.apply(command)
    assert group.apply(command) == first
    assert group.apply(replace(command, now_ms=NOW_MS + 5)) == first  # a restamped retry
    assert group.bins(A) == {"n": 1}


def test_version_mismatch_is_121_and_changes_nothing() -> None:
    group = Group()
    group.put_record(A, {"bal": 10})
    stale = read_of(group, A)
    group.write_single(A, [op.increment("bal", 1)], NOW_MS)
    result = group.apply(apply_cmd(1, [stale], [write_of(B, op.write("x", 1))]))
    assert result.code == ResultCode.MRT_VERSION_MISMATCH
    assert group.record(B) is None
    # The failure is remembered: a late duplicate cannot commit what was answered aborted.
    assert group.apply(apply_cmd(1, [read_of(group, A)], [])).code == result.code


@pytest.mark.parametrize(
    "stored",
    [
        None,
        Record(4, 0, NOW_MS - 9, "s", {}, tombstone=True),
        Record(4, 1, NOW_MS - 9, "s", {"x": 1}),  # expired long ago
    ],
    ids=["none", "tombstone", "expired"],
)
def test_an_absent_record_has_version_zero(stored: Record | None) -> None:
    group = Group()
    if stored is not None:
        group.kv.tables[Table.RECORDS][A] = codec.encode_record(stored)
    assert visible_version(group.record(A), NOW_MS) == (0, 0)
    assert group.apply(apply_cmd(1, [TxnRead(A, 0, 0)], [])).ok
    result = group.apply(apply_cmd(2, [TxnRead(A, 4, NOW_MS - 9)], []))
    assert result.code == ResultCode.MRT_VERSION_MISMATCH


def test_apply_is_blocked_by_a_foreign_write_intent_and_names_it() -> None:
    group = Group()
    assert group.apply(prepare_cmd(9, writes=[write_of(A, op.write("x", 1))], home=2)).ok
    result = group.apply(apply_cmd(1, [read_of(group, A)], []))
    assert result.code == ResultCode.MRT_BLOCKED
    assert blocker_of(result) == Blocker(9, 2, DEADLINE_MS)
    result = group.apply(apply_cmd(2, [], [write_of(A, op.write("x", 2))]))
    assert result.code == ResultCode.MRT_BLOCKED


def test_apply_reads_through_a_read_lock_but_cannot_write_under_it() -> None:
    group = Group()
    group.put_record(A, {"x": 1})
    assert group.apply(prepare_cmd(9, reads=[read_of(group, A)])).ok
    assert group.apply(apply_cmd(1, [read_of(group, A)], [write_of(B, op.write("y", 1))])).ok
    result = group.apply(apply_cmd(2, [], [write_of(A, op.write("x", 2))]))
    assert result.code == ResultCode.MRT_BLOCKED


def test_apply_past_the_deadline_is_122() -> None:
    group = Group()
    late = apply_cmd(1, writes=[write_of(A, op.write("x", 1))], now_ms=DEADLINE_MS + 1)
    assert group.apply(late).code == ResultCode.MRT_EXPIRED
    assert group.record(A) is None


def test_a_deadline_too_far_away_is_a_parameter_error() -> None:
    group = Group()
    far = apply_cmd(1, writes=[write_of(A, op.write("x", 1))], deadline_ms=TOO_FAR_MS)
    assert group.apply(far).code == ResultCode.PARAMETER_ERROR
    begin = TxnBegin(2, NOW_MS, TOO_FAR_MS, (0, 1))
    assert group.apply(begin).code == ResultCode.PARAMETER_ERROR


def test_too_many_writes_is_123() -> None:
    group = Group()
    writes = [write_of(digest(i), op.write("x", 1)) for i in range(TXN_WRITES_MAX + 1)]
    assert group.apply(apply_cmd(1, [], writes)).code == ResultCode.MRT_TOO_MANY_WRITES
    assert group.apply(prepare_cmd(2, [], writes)).code == ResultCode.MRT_TOO_MANY_WRITES
    assert group.kv.tables[Table.RECORDS] == {} and group.intents() == {}


def test_a_failing_write_fails_the_whole_apply() -> None:
    group = Group()
    group.put_record(B, {"x": 1})
    writes = [
        write_of(A, op.write("x", 1)),
        write_of(B, op.write("x", 2), policy=WritePolicy(exists=Exists.CREATE)),
    ]
    assert group.apply(apply_cmd(1, [], writes)).code == ResultCode.RECORD_EXISTS
    assert group.record(A) is None
    assert group.bins(B) == {"x": 1}


def test_repeated_keys_are_parameter_errors() -> None:
    group = Group()
    twice = [write_of(A, op.write("x", 1)), write_of(A, op.write("x", 2))]
    assert group.apply(apply_cmd(1, [], twice)).code == ResultCode.PARAMETER_ERROR
    reads = [TxnRead(A, 0, 0), TxnRead(A, 0, 0)]
    assert group.apply(apply_cmd(2, reads, [])).code == ResultCode.PARAMETER_ERROR
    # Reading and writing one key is the usual read-modify-write, not a repeat.
    assert group.apply(apply_cmd(3, [TxnRead(A, 0, 0)], twice[:1])).ok


def test_a_record_too_big_fails_with_no_effect() -> None:
    group = Group()
    writes = [write_of(A, op.write("x", 1)), write_of(B, op.write("x", "y" * 2000))]
    assert group.apply(apply_cmd(1, [], writes)).code == ResultCode.RECORD_TOO_BIG
    assert group.record(A) is None


def _bins_of_encoded_size(size: int) -> dict[str, Any]:
    base = len(codec.encode_record(Record(1, 0, NOW_MS, "s", {"x": ""})))
    bins = {"x": "y" * (size - base - 2)}
    while len(codec.encode_record(Record(1, 0, NOW_MS, "s", bins))) < size:
        bins = {"x": bins["x"] + "y"}
    return bins


def test_a_prepare_sizes_the_provisional_record_as_resolve_will_stamp_it() -> None:
    bins = _bins_of_encoded_size(NAMESPACE.max_record_bytes)
    assert len(codec.encode_record(Record(1, 0, NOW_MS, "s", bins))) == 1024
    group = Group()
    assert group.apply(apply_cmd(1, [], [write_of(A, op.write("x", bins["x"]))])).ok
    # At resolve the generation and last-update time may take more bytes: refused up front.
    prepare = prepare_cmd(2, [], [write_of(B, op.write("x", bins["x"]))])
    assert group.apply(prepare).code == ResultCode.RECORD_TOO_BIG


def test_the_set_limit_is_checked_for_all_sets_before_any_write() -> None:
    group = Group(sets_max=1)
    writes = [
        TxnWrite(A, "one", None, (op.write("x", 1),), WritePolicy()),
        TxnWrite(B, "two", None, (op.write("x", 1),), WritePolicy()),
    ]
    assert group.apply(apply_cmd(1, [], writes)).code == ResultCode.SET_LIMIT
    assert group.kv.tables[Table.SETS] == {} and group.kv.tables[Table.RECORDS] == {}
    assert group.apply(apply_cmd(2, [], writes[:1])).ok
    assert list(group.kv.tables[Table.SETS]) == [b"one"]


# -- TxnBegin and TxnDecide -------------------------------------------------------------------


def test_begin_creates_an_open_record_and_is_idempotent() -> None:
    group = Group()
    begin = TxnBegin(5, NOW_MS, DEADLINE_MS, (0, 2))
    assert group.apply(begin).ok
    assert group.apply(replace(begin, now_ms=NOW_MS + 1)).ok
    record = group.txn_record(5)
    assert (record.state, record.participants, record.decided_ms) == (TxnState.OPEN, (0, 2), 0)


def test_begin_refuses_a_decided_transaction() -> None:
    group = Group()
    assert state_of(group.apply(TxnDecide(5, NOW_MS, DEADLINE_MS, TxnState.ABORTED))) is (
        TxnState.ABORTED
    )
    assert group.apply(TxnBegin(5, NOW_MS, DEADLINE_MS, (0, 1))).code == ResultCode.MRT_ABORTED
    group.apply(TxnBegin(6, NOW_MS, DEADLINE_MS, (0, 1)))
    group.apply(TxnDecide(6, NOW_MS, DEADLINE_MS, TxnState.COMMITTED))
    assert group.apply(TxnBegin(6, NOW_MS, DEADLINE_MS, (0, 1))).code == ResultCode.MRT_COMMITTED


def test_begin_checks_its_deadline_and_participants() -> None:
    group = Group()
    late = TxnBegin(5, DEADLINE_MS + 1, DEADLINE_MS, (0, 1))
    assert group.apply(late).code == ResultCode.MRT_EXPIRED
    for participants in [(), (1, 0), (1, 1)]:
        bad = TxnBegin(5, NOW_MS, DEADLINE_MS, participants)
        assert group.apply(bad).code == ResultCode.PARAMETER_ERROR
    assert group.txn_record(5) is None


def test_decide_moves_open_once_and_then_answers_the_final_state() -> None:
    group = Group()
    group.apply(TxnBegin(5, NOW_MS, DEADLINE_MS, (0, 1)))
    first = group.apply(TxnDecide(5, NOW_MS + 7, DEADLINE_MS, TxnState.COMMITTED))
    assert (state_of(first), first.last_update_ms) == (TxnState.COMMITTED, NOW_MS + 7)
    later = group.apply(TxnDecide(5, DEADLINE_MS + 1, DEADLINE_MS, TxnState.ABORTED))
    assert later == first  # a recovery learns the coordinator won
    assert group.txn_record(5).state is TxnState.COMMITTED


def test_decide_without_a_record_creates_it_aborted() -> None:
    group = Group()
    result = group.apply(TxnDecide(5, NOW_MS, DEADLINE_MS, TxnState.COMMITTED))
    assert state_of(result) is TxnState.ABORTED
    record = group.txn_record(5)
    assert (record.state, record.deadline_ms, record.decided_ms) == (
        TxnState.ABORTED,
        DEADLINE_MS,
        NOW_MS,
    )


def test_a_commit_decided_after_the_deadline_aborts() -> None:
    group = Group()
    group.apply(TxnBegin(5, NOW_MS, DEADLINE_MS, (0, 1)))
    late = group.apply(TxnDecide(5, DEADLINE_MS + 1, DEADLINE_MS, TxnState.COMMITTED))
    assert state_of(late) is TxnState.ABORTED


def test_decide_open_is_a_parameter_error() -> None:
    group = Group()
    result = group.apply(TxnDecide(5, NOW_MS, DEADLINE_MS, TxnState.OPEN))
    assert result.code == ResultCode.PARAMETER_ERROR
    assert group.txn_record(5) is None


# -- TxnCommit (the home group, last participant) -------------------------------------------


def commit_cmd(
    txn_id: int, reads: Sequence[TxnRead] = (), writes: Sequence[TxnWrite] = (), **fields: Any
) -> TxnCommit:
    """The home group 0's commit: the fields its prepare carried when it had one."""
    home = home_prepare_cmd(txn_id, reads, writes, **fields)
    return TxnCommit(
        txn_id, home.now_ms, home.deadline_ms, home.reads, home.writes, home.participants
    )


def test_a_commit_accepts_the_longest_timeout_from_a_coordinator_whose_clock_is_ahead() -> None:
    """The coordinator (another group's leader) stamped the deadline with its clock, a few
    seconds ahead of the home leader's: the longest timeout is still legal there."""
    group = Group()
    skewed = NOW_MS + TXN_TIMEOUT_MS_MAX + TXN_CLOCK_SKEW_MS_MAX
    commit = commit_cmd(5, [], [write_of(A, op.write("x", 1))], deadline_ms=skewed)
    assert state_of(group.apply(commit)) is TxnState.COMMITTED
    refused = commit_cmd(6, [], [write_of(C, op.write("x", 1))], deadline_ms=TOO_FAR_MS)
    assert group.apply(refused).code == ResultCode.PARAMETER_ERROR
    assert group.record(C) is None


def test_commit_writes_the_home_records_and_decides_in_one_command() -> None:
    group = Group()
    group.put_record(A, {"bal": 10}, NOW_MS - 100)
    reads = [read_of(group, A), read_of(group, C)]
    result = group.apply(commit_cmd(5, reads, [write_of(A, op.increment("bal", -3))]))
    assert (state_of(result), result.last_update_ms) == (TxnState.COMMITTED, NOW_MS)
    a = group.record(A)
    assert a is not None and (a.bins, a.generation, a.last_update_ms) == ({"bal": 7}, 2, NOW_MS)
    record = group.txn_record(5)
    assert (record.state, record.deadline_ms, record.participants, record.decided_ms) == (
        TxnState.COMMITTED,
        DEADLINE_MS,
        (0, 1),
        NOW_MS,
    )
    assert group.intents() == {}  # the last participant never locks


def test_a_repeated_commit_is_answered_from_the_record_not_applied_again() -> None:
    group = Group()
    command = commit_cmd(5, writes=[write_of(A, op.increment("n", 1))])
    first = group.apply(command)
    assert group.apply(replace(command, now_ms=NOW_MS + 9)) == first  # a restamped retry
    # A recovery's resolve at home (no intents there) leaves a COMMITTED marker: the record
    # still answers the repeat with the decision, never with the marker's refusal.
    assert group.apply(TxnResolve(5, NOW_MS + 10, True, NOW_MS)).ok
    assert group.apply(command) == first
    assert group.bins(A) == {"n": 1}


def test_a_commit_failing_its_checks_records_the_abort_and_keeps_its_failure() -> None:
    group = Group()
    group.put_record(A, {"bal": 10}, NOW_MS - 100)
    stale = TxnRead(A, 1, NOW_MS - 200)
    command = commit_cmd(5, [stale], [write_of(A, op.increment("bal", -3))])
    failed = group.apply(command)
    assert failed.code == ResultCode.MRT_VERSION_MISMATCH
    assert group.bins(A) == {"bal": 10}
    assert group.txn_record(5).state is TxnState.ABORTED  # a recovery learns it aborted
    assert group.apply(replace(command, reads=(read_of(group, A),))) == failed  # a repeat
    decided = group.apply(TxnDecide(5, DEADLINE_MS + 1, DEADLINE_MS, TxnState.ABORTED, True))
    assert state_of(decided) is TxnState.ABORTED


def test_a_commit_after_a_recovery_aborted_writes_nothing() -> None:
    group = Group()
    aborted = group.apply(TxnDecide(5, DEADLINE_MS + 1, DEADLINE_MS, TxnState.ABORTED, True))
    late = group.apply(commit_cmd(5, writes=[write_of(A, op.write("x", 1))]))
    assert late == aborted and state_of(late) is TxnState.ABORTED
    assert group.bins(A) is None
    # After the recovery also resolved the home group (a status check does), the same.
    assert group.apply(TxnResolve(5, DEADLINE_MS + 2, False, 0)).ok
    again = group.apply(commit_cmd(5, writes=[write_of(A, op.write("x", 1))]))
    assert again.code == ResultCode.MRT_ABORTED and group.bins(A) is None


def test_a_commit_meeting_a_committed_marker_answers_committed() -> None:
    """A status check's resolve at home leaves a COMMITTED marker that outlives the record
    (TxnForget): a commit meeting it is told COMMITTED, never a failure that would abort."""
    group = Group()
    assert group.apply(TxnResolve(5, NOW_MS, True, NOW_MS)).ok  # marker only, no record
    answer = group.apply(commit_cmd(5, writes=[write_of(A, op.write("x", 1))]))
    assert state_of(answer) is TxnState.COMMITTED and group.bins(A) is None


def test_a_commit_past_the_deadline_is_122_and_aborts() -> None:
    group = Group()
    late = group.apply(
        commit_cmd(5, writes=[write_of(A, op.write("x", 1))], now_ms=DEADLINE_MS + 1)
    )
    assert late.code == ResultCode.MRT_EXPIRED
    assert group.bins(A) is None and group.txn_record(5).state is TxnState.ABORTED


def test_a_commit_is_blocked_by_a_foreign_write_intent_and_names_it() -> None:
    group = Group()
    _prepared(group, txn_id=9)  # txn 9 write-locks A and B, read-locks C
    blocked = group.apply(commit_cmd(5, writes=[write_of(A, op.write("x", 1))]))
    assert blocker_of(blocked) == Blocker(9, 3, DEADLINE_MS)
    reads_through = group.apply(
        commit_cmd(6, [read_of(group, C)], [write_of(digest(4), op.write("x", 1))])
    )
    assert state_of(reads_through) is TxnState.COMMITTED  # a read lock does not block a read


def test_a_commit_checks_its_participants() -> None:
    group = Group()
    bad = group.apply(commit_cmd(5, writes=[write_of(A, op.write("x", 1))], participants=(1, 0)))
    assert bad.code == ResultCode.PARAMETER_ERROR and group.bins(A) is None


def test_a_commit_where_the_transaction_prepared_is_refused() -> None:
    group = Group()
    _prepared(group, txn_id=9)
    refused = group.apply(commit_cmd(9, writes=[write_of(digest(4), op.write("x", 1))]))
    assert refused.code == ResultCode.PARAMETER_ERROR and group.bins(digest(4)) is None


# -- TxnPrepare and TxnResolve ----------------------------------------------------------------


def _prepared(group: Group, txn_id: int = 9) -> None:
    group.put_record(A, {"bal": 10}, NOW_MS - 50)
    group.put_record(C, {"bal": 1}, NOW_MS - 50)
    reads = [read_of(group, A), read_of(group, C)]
    writes = [write_of(A, op.increment("bal", -4)), write_of(B, op.write("bal", 4))]
    result = group.apply(prepare_cmd(txn_id, reads, writes, home=3))
    assert (result.code, result.count) == (ResultCode.OK, 3)


def test_prepare_locks_and_changes_nothing_else() -> None:
    group = Group()
    _prepared(group)
    assert group.bins(A) == {"bal": 10} and group.record(B) is None
    a, b, c = group.intent(A), group.intent(B), group.intent(C)
    assert a is not None and b is not None and c is not None
    assert (a.txn_id, a.home, a.deadline_ms) == (9, 3, DEADLINE_MS)
    assert a.provisional is not None and a.provisional.bins == {"bal": 6}
    assert b.provisional is not None and b.provisional.bins == {"bal": 4}
    assert c.provisional is None  # a read lock
    assert group.apply(prepare_cmd(9)).count == 3  # a retry: answered, not redone


def test_prepare_is_blocked_by_any_foreign_intent() -> None:
    group = Group()
    _prepared(group)
    for key in (A, B, C):
        assert group.apply(prepare_cmd(10, [read_of(group, key)], [])).code == 120
    assert group.apply(prepare_cmd(11, [], [write_of(C, op.write("x", 1))])).code == 120


def test_a_failed_prepare_locks_nothing_and_its_answer_is_kept() -> None:
    group = Group()
    group.put_record(A, {"bal": 10})
    stale = TxnRead(A, 7, 7)
    result = group.apply(prepare_cmd(9, [stale], [write_of(B, op.write("x", 1))]))
    assert result.code == ResultCode.MRT_VERSION_MISMATCH
    assert group.intents() == {}
    assert group.apply(prepare_cmd(9, [read_of(group, A)], [])).code == result.code
    late = group.apply(prepare_cmd(8, [], [write_of(B, op.write("x", 1))], now_ms=DEADLINE_MS + 1))
    assert late.code == ResultCode.MRT_EXPIRED


def test_resolve_committed_rolls_forward_with_the_decide_timestamp() -> None:
    group = Group()
    _prepared(group)
    intent = group.intent(A)
    assert intent is not None
    expected_a = rolled_forward(intent, group.record(A), NOW_MS + 9)
    result = group.apply(TxnResolve(9, NOW_MS + 20, True, NOW_MS + 9))
    assert (result.code, result.count) == (ResultCode.OK, 2)
    a, b, c = group.record(A), group.record(B), group.record(C)
    assert a == expected_a
    assert a is not None and (a.bins, a.generation, a.last_update_ms) == ({"bal": 6}, 2, NOW_MS + 9)
    assert b is not None and (b.bins, b.generation, b.last_update_ms) == ({"bal": 4}, 1, NOW_MS + 9)
    assert c is not None and c.generation == 1  # read lock: untouched
    assert group.intents() == {}
    assert group.apply(TxnResolve(9, NOW_MS + 30, True, NOW_MS + 9)).count == 0
    assert group.bins(A) == {"bal": 6}


def test_resolve_never_moves_last_update_backwards() -> None:
    group = Group()
    _prepared(group)
    group.apply(TxnResolve(9, NOW_MS, True, NOW_MS - 1000))  # a decide stamped by a slow clock
    a = group.record(A)
    assert a is not None and a.last_update_ms == NOW_MS - 50


def test_resolve_aborted_drops_the_intents() -> None:
    group = Group()
    _prepared(group)
    assert group.apply(TxnResolve(9, NOW_MS, False, 0)).ok
    assert group.intents() == {}
    assert group.bins(A) == {"bal": 10} and group.record(B) is None
    assert group.apply(TxnResolve(9, NOW_MS, False, 0)).ok
    conflicting = group.apply(TxnResolve(9, NOW_MS, True, NOW_MS))
    assert conflicting.code == ResultCode.PARAMETER_ERROR


def test_a_late_prepare_after_resolve_cannot_lock_again() -> None:
    """The duplicate prepare delayed in the network: were it to lock after the roll-forward,
    a recovery would find the transaction COMMITTED and apply its writes a second time."""
    group = Group()
    group.put_record(A, {"n": 0})
    prepare = prepare_cmd(9, [], [write_of(A, op.increment("n", 1))])
    assert group.apply(prepare).ok
    group.apply(TxnResolve(9, NOW_MS, True, NOW_MS))
    assert group.apply(prepare).code == ResultCode.MRT_COMMITTED
    assert group.intents() == {} and group.bins(A) == {"n": 1}
    other = Group()
    assert other.apply(TxnResolve(9, NOW_MS, False, 0)).ok  # resolved before it prepared
    assert other.apply(prepare).code == ResultCode.MRT_ABORTED
    assert other.intents() == {}


def test_a_prepared_transaction_cannot_apply() -> None:
    group = Group()
    _prepared(group)
    assert group.apply(apply_cmd(9)).code == ResultCode.PARAMETER_ERROR


# -- the folds: the home group's prepare begins, its decide resolves -----------------------------


def home_prepare_cmd(
    txn_id: int,
    reads: Sequence[TxnRead] = (),
    writes: Sequence[TxnWrite] = (),
    *,
    now_ms: int = NOW_MS,
    deadline_ms: int = DEADLINE_MS,
    participants: tuple[int, ...] = (0, 1),
) -> TxnPrepare:
    """The prepare of the home group 0 (it carries the participants)."""
    command = prepare_cmd(txn_id, reads, writes, home=0, now_ms=now_ms, deadline_ms=deadline_ms)
    return replace(command, participants=participants)


def _home_prepared(group: Group, txn_id: int = 9) -> TxnPrepare:
    group.put_record(A, {"bal": 10}, NOW_MS - 50)
    group.put_record(C, {"bal": 1}, NOW_MS - 50)
    reads = [read_of(group, A), read_of(group, C)]
    writes = [write_of(A, op.increment("bal", -4)), write_of(B, op.write("bal", 4))]
    prepare = home_prepare_cmd(txn_id, reads, writes)
    result = group.apply(prepare)
    assert (result.code, result.count) == (ResultCode.OK, 3)
    return prepare


def _outcome(group: Group, txn_id: int) -> TxnState | None:
    with group.kv.begin() as txn:
        return outcome_in_group(txn, txn_id, tables=TABLES)


def test_the_home_prepare_creates_the_record_open_and_locks() -> None:
    group = Group()
    _home_prepared(group)
    record = group.txn_record(9)
    assert (record.state, record.deadline_ms, record.participants, record.decided_ms) == (
        TxnState.OPEN,
        DEADLINE_MS,
        (0, 1),
        0,
    )
    assert len(group.intents()) == 3 and group.bins(A) == {"bal": 10}
    assert _outcome(group, 9) is TxnState.OPEN


def test_a_repeated_home_prepare_is_answered_and_never_rewrites_the_record() -> None:
    group = Group()
    prepare = _home_prepared(group)
    intents = group.intents()
    retry = replace(prepare, now_ms=NOW_MS + 5, deadline_ms=DEADLINE_MS + 5, participants=(0, 2))
    assert group.apply(retry) == Result(count=3)
    assert group.intents() == intents
    assert group.txn_record(9) == TxnRecord(TxnState.OPEN, DEADLINE_MS, (0, 1), 0)
    decided = group.apply(TxnDecide(9, NOW_MS + 7, DEADLINE_MS, TxnState.COMMITTED, True))
    assert state_of(decided) is TxnState.COMMITTED
    late = group.apply(replace(prepare, now_ms=NOW_MS + 8))
    assert late.code == ResultCode.MRT_COMMITTED  # from the marker the decide left
    assert group.txn_record(9) == TxnRecord(TxnState.COMMITTED, DEADLINE_MS, (0, 1), NOW_MS + 7)
    assert group.intents() == {} and group.bins(A) == {"bal": 6}


def test_a_home_prepare_after_an_aborted_decide_locks_nothing() -> None:
    """The decide applied first (the coordinator gave up on this prepare, or a recovery): it
    created the record ABORTED; the late prepare is refused and locks nothing."""
    group = Group()
    aborted = group.apply(TxnDecide(9, NOW_MS, DEADLINE_MS, TxnState.ABORTED, resolve_here=True))
    assert state_of(aborted) is TxnState.ABORTED
    group.put_record(A, {"bal": 10})
    prepare = home_prepare_cmd(9, [read_of(group, A)], [write_of(A, op.increment("bal", 1))])
    assert group.apply(prepare).code == ResultCode.MRT_ABORTED
    assert group.intents() == {} and group.bins(A) == {"bal": 10}
    assert group.txn_record(9) == TxnRecord(TxnState.ABORTED, DEADLINE_MS, (), NOW_MS)
    assert group.apply(prepare).code == ResultCode.MRT_ABORTED  # and again: the record answers
    assert _outcome(group, 9) is TxnState.ABORTED


def test_a_home_prepare_meeting_a_committed_record_is_refused() -> None:
    group = Group()  # a TxnBegin's transaction, decided: nothing this prepare may lock
    group.apply(TxnBegin(9, NOW_MS, DEADLINE_MS, (0, 1)))
    group.apply(TxnDecide(9, NOW_MS, DEADLINE_MS, TxnState.COMMITTED))
    prepare = home_prepare_cmd(9, [], [write_of(A, op.write("x", 1))])
    assert group.apply(prepare).code == ResultCode.MRT_COMMITTED
    assert group.intents() == {}


def test_a_home_prepare_keeps_an_open_record_it_finds() -> None:
    group = Group()
    group.apply(TxnBegin(9, NOW_MS, DEADLINE_MS, (0, 1)))
    prepare = home_prepare_cmd(9, [], [write_of(A, op.write("x", 1))], participants=(0, 1, 2))
    assert group.apply(prepare).count == 1
    assert group.txn_record(9) == TxnRecord(TxnState.OPEN, DEADLINE_MS, (0, 1), 0)


def test_a_failed_home_prepare_leaves_no_record_and_the_decide_aborts() -> None:
    group = Group()
    assert group.apply(prepare_cmd(5, [], [write_of(A, op.write("x", 1))], home=1)).ok
    prepare = home_prepare_cmd(
        9, [], [write_of(A, op.write("x", 2)), write_of(B, op.write("y", 1))]
    )
    blocked = group.apply(prepare)
    assert blocker_of(blocked) == Blocker(5, 1, DEADLINE_MS)
    assert group.txn_record(9) is None and set(group.intents()) == {A}
    assert group.apply(replace(prepare, now_ms=NOW_MS + 1)) == blocked  # from its marker
    decided = group.apply(TxnDecide(9, NOW_MS + 2, DEADLINE_MS, TxnState.ABORTED, True))
    assert (state_of(decided), decided.last_update_ms) == (TxnState.ABORTED, NOW_MS + 2)
    assert group.txn_record(9).state is TxnState.ABORTED
    assert group.apply(prepare) == blocked
    assert set(group.intents()) == {A} and group.record(B) is None  # 5's lock only


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"now_ms": DEADLINE_MS + 1}, ResultCode.MRT_EXPIRED),
        ({"deadline_ms": TOO_FAR_MS}, ResultCode.PARAMETER_ERROR),
        ({"participants": (1, 0)}, ResultCode.PARAMETER_ERROR),
        ({"participants": (1, 1)}, ResultCode.PARAMETER_ERROR),
        ({"participants": (1, 2)}, ResultCode.PARAMETER_ERROR),  # home 0 not among them
    ],
    ids=["expired", "deadline too far", "descending", "repeated", "home missing"],
)
def test_the_home_prepare_checks_what_begin_checks(change: dict[str, Any], code: int) -> None:
    group = Group()
    prepare = replace(home_prepare_cmd(9, [], [write_of(A, op.write("x", 1))]), **change)
    assert group.apply(prepare).code == code
    assert group.txn_record(9) is None and group.intents() == {}
    assert group.apply(prepare).code == code  # remembered


def test_decide_with_resolve_here_commits_and_unlocks_the_home_group() -> None:
    group = Group()
    _home_prepared(group)
    intent = group.intent(A)
    assert intent is not None
    expected_a = rolled_forward(intent, group.record(A), NOW_MS + 9)
    decide = TxnDecide(9, NOW_MS + 9, DEADLINE_MS, TxnState.COMMITTED, resolve_here=True)
    first = group.apply(decide)
    assert first == decide_result(TxnState.COMMITTED, NOW_MS + 9)
    assert group.intents() == {}
    a, b, c = group.record(A), group.record(B), group.record(C)
    assert a == expected_a
    assert a is not None and (a.bins, a.generation, a.last_update_ms) == ({"bal": 6}, 2, NOW_MS + 9)
    assert b is not None and (b.bins, b.generation, b.last_update_ms) == ({"bal": 4}, 1, NOW_MS + 9)
    assert c is not None and c.generation == 1  # read lock: untouched
    # Repeats: a retried decide, a recovery's, a late TxnResolve: answered, nothing redone.
    assert group.apply(replace(decide, now_ms=NOW_MS + 20)) == first
    recovery = TxnDecide(9, DEADLINE_MS + 1, DEADLINE_MS, TxnState.ABORTED, resolve_here=True)
    assert group.apply(recovery) == first
    assert group.apply(TxnResolve(9, NOW_MS + 30, True, NOW_MS + 9)).count == 0
    assert group.record(A) == expected_a
    assert _outcome(group, 9) is TxnState.COMMITTED


def test_decide_with_resolve_here_aborts_and_unlocks_the_home_group() -> None:
    group = Group()
    _home_prepared(group)
    result = group.apply(TxnDecide(9, NOW_MS + 9, DEADLINE_MS, TxnState.ABORTED, True))
    assert state_of(result) is TxnState.ABORTED
    assert group.intents() == {} and group.bins(A) == {"bal": 10} and group.record(B) is None
    assert group.apply(TxnResolve(9, NOW_MS + 10, False, NOW_MS + 9)).ok


def test_a_commit_decided_after_the_deadline_resolves_the_home_group_aborted() -> None:
    group = Group()
    _home_prepared(group)
    late = TxnDecide(9, DEADLINE_MS + 1, DEADLINE_MS, TxnState.COMMITTED, resolve_here=True)
    assert state_of(group.apply(late)) is TxnState.ABORTED
    assert group.intents() == {} and group.bins(A) == {"bal": 10} and group.record(B) is None


def test_decide_without_resolve_here_leaves_the_home_intents() -> None:
    group = Group()
    _home_prepared(group)
    group.apply(TxnDecide(9, NOW_MS + 9, DEADLINE_MS, TxnState.COMMITTED))
    assert len(group.intents()) == 3
    assert group.apply(TxnResolve(9, NOW_MS + 10, True, NOW_MS + 9)).count == 2
    assert group.bins(A) == {"bal": 6}


def test_decide_with_resolve_here_refuses_whole_against_a_contrary_marker() -> None:
    """A home group resolved aborted while its record is OPEN (a coordinator whose decide never
    applied resolved every group aborted): a COMMITTED decide may not split the two. It cannot
    happen (only that coordinator proposes COMMITTED); if it did, nothing would be written."""
    group = Group()
    _home_prepared(group)
    group.apply(TxnResolve(9, NOW_MS + 5, False, 0))
    result = group.apply(TxnDecide(9, NOW_MS + 9, DEADLINE_MS, TxnState.COMMITTED, True))
    assert result.code == ResultCode.PARAMETER_ERROR
    assert group.txn_record(9).state is TxnState.OPEN
    aborted = group.apply(TxnDecide(9, DEADLINE_MS + 1, DEADLINE_MS, TxnState.ABORTED, True))
    assert state_of(aborted) is TxnState.ABORTED


# -- TxnForget ----------------------------------------------------------------------------------


def test_forget_waits_for_the_horizon_and_keeps_prepared_markers() -> None:
    group = Group()
    group.apply(TxnBegin(1, NOW_MS, DEADLINE_MS, (0, 1)))
    group.apply(prepare_cmd(1))
    group.apply(TxnDecide(1, NOW_MS, DEADLINE_MS, TxnState.COMMITTED))
    group.apply(TxnResolve(1, NOW_MS, True, NOW_MS))
    group.apply(TxnBegin(2, NOW_MS, DEADLINE_MS, (0, 1)))  # stays OPEN
    _prepared(group, txn_id=3)
    horizon = max(NAMESPACE.tomb_raider_period_s * 1000, TXN_FORGET_AFTER_MS_MIN)
    early = DEADLINE_MS + horizon - 1
    with group.kv.begin() as txn:
        assert forget_candidates(txn, early, tables=TABLES, namespace=NAMESPACE, limit=9) == ()
        later = forget_candidates(txn, early + 1, tables=TABLES, namespace=NAMESPACE, limit=9)
    assert later == (1, 2)
    assert group.apply(TxnForget(early, (1, 2, 3))).count == 0
    assert group.apply(TxnForget(early + 1, (1, 2, 3))).count == 3  # 1's record and marker, 2
    assert group.txn_record(1) is None and group.txn_record(2) is None
    assert len(group.intents()) == 3  # txn 3 still prepared
    # Forgotten, a transaction reads as never begun: a late decide aborts it.
    late = group.apply(TxnDecide(2, early + 2, DEADLINE_MS, TxnState.COMMITTED))
    assert state_of(late) is TxnState.ABORTED


# -- helpers for single-record requests and the node ----------------------------------------


def test_write_access_and_read_rules() -> None:
    lock = Intent(1, 0, DEADLINE_MS, None)
    write = Intent(1, 0, DEADLINE_MS, Record(1, 0, NOW_MS, "s", {"x": 1}))
    assert write_access(None, NOW_MS) is WriteAccess.FREE
    assert write_access(lock, DEADLINE_MS) is WriteAccess.BLOCKED
    assert write_access(write, DEADLINE_MS + 1) is WriteAccess.RECOVER
    assert not read_needs_home(None) and not read_needs_home(lock) and read_needs_home(write)


def test_single_record_writes_meet_intents() -> None:
    group = Group()
    _prepared(group)
    for key in (A, B, C):
        result = group.write_single(key, [op.write("z", 1)], NOW_MS)
        assert result.code == ResultCode.MRT_BLOCKED
        assert blocker_of(result) == Blocker(9, 3, DEADLINE_MS)
    assert group.write_single(digest(99), [op.write("z", 1)], NOW_MS).ok


def test_a_read_sees_the_roll_forward_only_once_committed() -> None:
    group = Group()
    _prepared(group)
    stored, intent = group.record(A), group.intent(A)
    home = Group()
    home.apply(TxnBegin(9, NOW_MS, DEADLINE_MS, (0, 3)))
    assert visible_record(intent, stored, home.txn_record(9)) == stored
    home.apply(TxnDecide(9, NOW_MS + 3, DEADLINE_MS, TxnState.COMMITTED))
    seen = visible_record(intent, stored, home.txn_record(9))
    group.apply(TxnResolve(9, NOW_MS + 8, True, NOW_MS + 3))
    assert seen == group.record(A)  # the same version before and after the resolve
    assert visible_record(None, stored, None) == stored


def test_the_sweep_finds_each_transaction_past_its_deadline_once() -> None:
    group = Group()
    _prepared(group, txn_id=9)
    later = prepare_cmd(
        10, [], [write_of(digest(50), op.write("x", 1))], deadline_ms=DEADLINE_MS + 5
    )
    group.apply(later)
    with group.kv.begin() as txn:
        assert intents_past_deadline(txn, DEADLINE_MS, tables=TABLES, limit=9) == []
        found = intents_past_deadline(txn, DEADLINE_MS + 1, tables=TABLES, limit=9)
        assert found == [Blocker(9, 3, DEADLINE_MS)]
        both = intents_past_deadline(txn, DEADLINE_MS + 6, tables=TABLES, limit=9)
        assert sorted(b.txn_id for b in both) == [9, 10]
        assert len(intents_past_deadline(txn, DEADLINE_MS + 6, tables=TABLES, limit=1)) == 1


def test_a_corrupt_intent_is_record_corrupt() -> None:
    group = Group()
    group.kv.tables[TABLES.intents][A] = b"\x93\x01\x02"
    with pytest.raises(RaftstoreError) as caught:
        group.intent(A)
    assert caught.value.code == ResultCode.RECORD_CORRUPT


def test_what_a_group_knows_of_a_transaction() -> None:
    group = Group()

    def outcome(txn_id: int) -> TxnState | None:
        with group.kv.begin() as txn:
            return outcome_in_group(txn, txn_id, tables=TABLES)

    assert outcome(1) is None
    group.apply(apply_cmd(1, [], [write_of(A, op.write("x", 1))]))
    assert outcome(1) is TxnState.COMMITTED  # a one-group transaction: its marker
    group.apply(apply_cmd(2, [TxnRead(A, 0, 0)], []))
    assert outcome(2) is TxnState.ABORTED
    group.apply(prepare_cmd(3, [], [write_of(B, op.write("x", 1))]))
    assert outcome(3) is TxnState.OPEN
    group.apply(TxnBegin(3, NOW_MS, DEADLINE_MS, (0, 1)))  # this group is also its home
    group.apply(TxnDecide(3, NOW_MS, DEADLINE_MS, TxnState.COMMITTED))
    assert outcome(3) is TxnState.COMMITTED
