"""What a partition group's state machine does with transaction commands: a pure core.

Theory of operation. `apply_txn_command(txn, command, tables=..., records=..., namespace=...)`
applies one `raftstore.txn_commands` command through the store transaction `txn` and returns
its `Result`. Records are read and written only through `records` (a `RecordStore` the state
machine provides), so record encoding, set ids, tombstones and the primary index stay the
state machine's; this module owns two tables of its own (`TxnTables`):

- intents: digest -> the intent locking that record: txn id, home group, deadline, and the
  provisional record (a write) or nothing (a read lock). One intent per record.
- txns: b"\\x01" + txn id -> the transaction record (home group only): state, deadline,
  participants, decided_ms. b"\\x02" + txn id -> this group's *marker* of the transaction:
  PREPARED (with the digests it locked), or final (COMMITTED / ABORTED) with the answer to
  repeat. The first TxnApply or TxnPrepare of a txn id applied in a group fixes its outcome
  there; every later one (a retry, or a duplicate delayed in the network) gets that answer
  and changes nothing. That is what makes every command idempotent, and what stops a late
  prepare from locking (and later re-applying) writes that were already resolved.

Rules (docs/transactions.md):
- A command that fails changes nothing but its marker: every check happens before the
  first write (`RecordStore.ensure_sets`, all-or-nothing, is the last check).
- Version of a record at `now_ms`: (generation, last-update ms) if live, else (0, 0).
- Conflicts, checked in this order: the deadline (MRT_EXPIRED), the write count
  (MRT_TOO_MANY_WRITES), repeated digests (PARAMETER_ERROR), intents (MRT_BLOCKED, naming the
  blocker so the node can recover it when its deadline has passed), read versions
  (MRT_VERSION_MISMATCH), then each write's own ops (their own code), record size
  (RECORD_TOO_BIG, checked with the largest metadata the record can get at resolve), sets.
- Every intent blocks a write and a TxnPrepare's read (which needs a lock of its own, and
  locks are exclusive). A TxnApply's read is blocked by a write intent only: a read-locked
  value cannot change before its lock goes, so reading through a read lock is safe.
- TxnBegin, and the home group's TxnPrepare (it carries the participants and begins too):
  a decided record refuses it (MRT_ABORTED / MRT_COMMITTED: nothing locked, no marker, the
  record answers a repeat); an OPEN record is kept as it is; else, once every check of the
  prepare passed, the record is created OPEN in the same command as the intents. A home
  prepare that fails creates no record (its marker keeps the answer; the decide that follows
  creates the record ABORTED). Checked after the marker: a repeat never rewrites the record.
- TxnDecide: no record -> it is created ABORTED; OPEN -> the proposed state, except that a
  COMMITTED stamped after the deadline becomes ABORTED (locks are bounded by the deadline);
  a decided record keeps its state. The answer is the state and the decision time. With
  `resolve_here`, a PREPARED marker of this group is then resolved with that state and time,
  exactly as TxnResolve does, in the same command (a final marker of the other state refuses
  the whole command, before any write; no marker: nothing more, the record refuses a late
  home prepare).
- TxnCommit (home group, last participant): the record decides first. COMMITTED -> its
  decide answer (a repeat); a final ABORTED marker (this command's own failure, or a
  resolve's abort) -> that marker's answer; a final COMMITTED marker (a recovery's resolve
  that outlived the record) -> COMMITTED; ABORTED -> its decide answer (a recovery came
  first). Else every check of a TxnApply on the home group's reads and writes, plus the
  participants' shape;
  failing -> the record is created ABORTED and a final marker keeps the failure (the answer);
  passing -> the writes are stored exactly as a TxnApply stores them and the record is
  created COMMITTED, decided at `now_ms`, in the same command: its answer is the decide's.
  The home group never holds intents of such a transaction.
- TxnResolve: committed -> every provisional record replaces the stored one with the next
  generation and last-update time max(decided_ms, stored's); aborted -> intents dropped.
  Idempotent; a resolve in a group that never prepared leaves a final marker.
- TxnForget: decided records and final markers go once `now_ms` is a horizon past both their
  deadline and their decision (horizon = max(tomb-raider-period, TXN_FORGET_AFTER_MS_MIN)).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from raftstore import codec, keys, limits, operations
from raftstore.commands import Result, decode_result, encode_result, failure
from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.frozen import fast_init
from raftstore.kv import KvTxn, Table
from raftstore.record import Record, next_generation
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
    TxnResolve,
    TxnState,
    TxnWrite,
    decide_result,
)

_FORMAT: Final = 1
_U64: Final = struct.Struct(">Q")
_RECORD_PREFIX: Final = b"\x01"
_MARKER_PREFIX: Final = b"\x02"
BLOCKER_BINS: Final = ("txn_id", "txn_home", "txn_deadline_ms")


@dataclass(frozen=True, slots=True)
class TxnTables:
    """The handles of this module's two tables: the state machine passes `TXN_TABLES`; a test
    may pass others."""

    intents: Table
    txns: Table


TXN_TABLES: Final = TxnTables(Table.INTENTS, Table.TXNS)


class RecordStore(Protocol):
    """The state machine's records, as this module may use them."""

    def load(self, digest: bytes) -> Record | None:
        """The stored record (tombstones and expired records included), seeing this
        batch's own writes."""

    def ensure_sets(self, set_names: Sequence[str]) -> None:
        """Give every set a set id, all or none: SET_LIMIT (and no effect) if they do not
        all fit."""

    def store(self, digest: bytes, record: Record, encoded: bytes | None = None) -> None:
        """Write `record` (index metadata follows after commit), given as `encoded` when
        the caller encoded it already. Called only for records whose size was checked and
        whose set was ensured: it must not fail."""


@fast_init
@dataclass(frozen=True, slots=True)
class Intent:
    txn_id: int
    home: int
    deadline_ms: int
    provisional: Record | None  # the record the transaction writes; None for a read lock

    @property
    def is_write(self) -> bool:
        return self.provisional is not None


@fast_init
@dataclass(frozen=True, slots=True)
class TxnRecord:
    """A transaction record, kept in the home group."""

    state: TxnState
    deadline_ms: int
    participants: tuple[int, ...]
    decided_ms: int  # 0 while OPEN


@dataclass(frozen=True, slots=True)
class Blocker:
    """The transaction whose intent refused a command: what a recovery needs."""

    txn_id: int
    home: int
    deadline_ms: int


class _Local(enum.IntEnum):
    """A group's marker of one transaction."""

    PREPARED = 1
    COMMITTED = 2
    ABORTED = 3


@fast_init
@dataclass(frozen=True, slots=True)
class _Marker:
    state: _Local
    home: int
    deadline_ms: int
    digests: tuple[bytes, ...]  # the records this group locked (PREPARED only)
    answer: Result  # what a repeat of the command that made it final is answered
    done_ms: int  # when it became final (the command's now_ms)


# -- entry point ------------------------------------------------------------------------------


def apply_txn_command(
    txn: KvTxn,
    command: TxnCommand,
    *,
    tables: TxnTables,
    records: RecordStore,
    namespace: NamespaceConfig,
) -> Result:
    """Apply `command` in one group's state machine; never raises a `RaftstoreError`."""
    store = _Store(txn, tables)
    if isinstance(command, TxnApply):
        return _apply(store, records, namespace, command)
    if isinstance(command, TxnPrepare):
        return _prepare(store, records, namespace, command)
    if isinstance(command, TxnCommit):
        return _commit(store, records, namespace, command)
    try:
        if isinstance(command, TxnBegin):
            return _begin(store, command)
        if isinstance(command, TxnDecide):
            return _decide(store, records, command)
        if isinstance(command, TxnResolve):
            return _resolve(store, records, command)
        if isinstance(command, TxnForget):
            return _forget(store, namespace, command)
    except RaftstoreError as exc:
        return failure(exc.code, exc.msg)
    raise AssertionError(f"not a transaction command: {command!r}")


# -- helpers for the state machine and the node ----------------------------------------------


def visible_version(record: Record | None, now_ms: int) -> tuple[int, int]:
    """The version a read at `now_ms` sees: (generation, last-update ms), (0, 0) if absent."""
    if record is None or not record.is_live(now_ms):
        return (0, 0)
    return (record.generation, record.last_update_ms)


def intent_of(txn: KvTxn, digest: bytes, *, tables: TxnTables) -> Intent | None:
    raw = txn.get(tables.intents, digest)
    return None if raw is None else _decode_intent(raw)


def decode_intent(raw: bytes) -> Intent:
    """An intent as stored in the intents table (for a caller that read the row itself, to
    keep a hot path at one lookup); RECORD_CORRUPT if it does not decode."""
    return _decode_intent(raw)


def txn_record_of(txn: KvTxn, txn_id: int, *, tables: TxnTables) -> TxnRecord | None:
    """The transaction record (home group), for `txn_status` and for reads meeting intents."""
    return _Store(txn, tables).record(txn_id)


def outcome_in_group(txn: KvTxn, txn_id: int, *, tables: TxnTables) -> TxnState | None:
    """What this group knows of the transaction: its record if this is the home group, else
    its marker (PREPARED reads as OPEN); None if nothing. For a one-group transaction (no
    record, a TxnApply's marker) this is its outcome. OPEN is not final: to end it, propose
    TxnDecide(ABORTED) at home, or repeat the TxnApply (idempotent)."""
    store = _Store(txn, tables)
    record = store.record(txn_id)
    if record is not None:
        return record.state
    marker = store.marker(txn_id)
    if marker is None:
        return None
    return {
        _Local.PREPARED: TxnState.OPEN,
        _Local.COMMITTED: TxnState.COMMITTED,
        _Local.ABORTED: TxnState.ABORTED,
    }[marker.state]


class WriteAccess(enum.Enum):
    FREE = "free"  # no intent: write
    BLOCKED = "blocked"  # locked, deadline not passed: MRT_BLOCKED, the client backs off
    RECOVER = "recover"  # locked past the deadline: MRT_BLOCKED, and the node recovers it


def write_access(intent: Intent | None, now_ms: int) -> WriteAccess:
    """What a non-transactional write of a record with `intent` does (a read lock too)."""
    if intent is None:
        return WriteAccess.FREE
    return WriteAccess.RECOVER if now_ms > intent.deadline_ms else WriteAccess.BLOCKED


def read_needs_home(intent: Intent | None) -> bool:
    """Whether a non-transactional read must ask the home group first (a write intent).
    A read lock never changes the record: the stored record is the answer."""
    return intent is not None and intent.is_write


def visible_record(
    intent: Intent | None, stored: Record | None, home: TxnRecord | None
) -> Record | None:
    """What a non-transactional read returns, given the transaction record `home` read
    (linearizably) in the intent's home group: the roll-forward if COMMITTED, else the stored
    record. After a COMMITTED answer the node proposes TxnResolve (lazy roll-forward)."""
    if intent is None or intent.provisional is None or home is None:
        return stored
    if home.state is not TxnState.COMMITTED:
        return stored
    return rolled_forward(intent, stored, home.decided_ms)


def rolled_forward(intent: Intent, stored: Record | None, decided_ms: int) -> Record:
    """The record a committed write intent becomes (exactly what TxnResolve stores)."""
    provisional = intent.provisional
    assert provisional is not None, "a read lock rolls forward to nothing"
    return replace(
        provisional,
        generation=next_generation(stored.generation if stored is not None else 0),
        last_update_ms=max(decided_ms, stored.last_update_ms if stored is not None else 0),
    )


def blocked_result(intent: Intent) -> Result:
    """The MRT_BLOCKED answer, naming the blocking transaction (see `blocker_of`)."""
    blocker = (intent.txn_id, intent.home, intent.deadline_ms)
    return Result(
        code=ResultCode.MRT_BLOCKED,
        message=f"record locked by transaction {intent.txn_id}",
        results=tuple(zip(BLOCKER_BINS, blocker, strict=True)),
    )


def blocker_of(result: Result) -> Blocker | None:
    """The blocking transaction an MRT_BLOCKED result names, if any."""
    if result.code != ResultCode.MRT_BLOCKED or len(result.results) != len(BLOCKER_BINS):
        return None
    names = tuple(name for name, _ in result.results)
    values = [value for _, value in result.results]
    if names != BLOCKER_BINS or not all(type(v) is int for v in values):
        return None
    return Blocker(*values)


def intents_past_deadline(
    txn: KvTxn, now_ms: int, *, tables: TxnTables, limit: int
) -> list[Blocker]:
    """Up to `limit` transactions holding intents in this group past their deadline, in the
    order of their first intent's digest: the background sweep recovers each."""
    found: dict[int, Blocker] = {}
    for _, raw in txn.scan(tables.intents):
        intent = _decode_intent(raw)
        if now_ms > intent.deadline_ms and intent.txn_id not in found:
            found[intent.txn_id] = Blocker(intent.txn_id, intent.home, intent.deadline_ms)
            if len(found) >= limit:
                break
    return list(found.values())


def forget_candidates(
    txn: KvTxn, now_ms: int, *, tables: TxnTables, namespace: NamespaceConfig, limit: int
) -> tuple[int, ...]:
    """Up to `limit` txn ids a TxnForget at `now_ms` would forget something of."""
    horizon_ms = _horizon_ms(namespace)
    found: list[int] = []
    for key, raw in txn.scan(tables.txns):
        txn_id = _U64.unpack_from(key, 1)[0]
        if key[:1] == _RECORD_PREFIX:
            forgettable = _record_forgettable(_decode_record(raw), now_ms, horizon_ms)
        else:
            forgettable = _marker_forgettable(_decode_marker(raw), now_ms, horizon_ms)
        if forgettable and txn_id not in found:
            found.append(txn_id)
            if len(found) >= limit:
                break
    return tuple(sorted(found))


# -- the commands -----------------------------------------------------------------------------


def _apply(store: _Store, records: RecordStore, ns: NamespaceConfig, cmd: TxnApply) -> Result:
    marker = store.marker(cmd.txn_id)
    if marker is not None:
        if marker.state is _Local.PREPARED:
            return failure(ResultCode.PARAMETER_ERROR, "TxnApply of a prepared transaction")
        return marker.answer
    try:
        _check_deadline_range(cmd.now_ms, cmd.deadline_ms)
        plan = _plan(store, records, ns, cmd)
    except RaftstoreError as exc:
        return _fail(store, cmd, exc)
    for digest, record, encoded in plan.writes:
        if record is not None:
            records.store(digest, record, encoded)
    answer = Result(count=len(plan.writes), last_update_ms=cmd.now_ms)
    final = _Marker(_Local.COMMITTED, 0, cmd.deadline_ms, (), answer, cmd.now_ms)
    store.put_marker(cmd.txn_id, final)
    return answer


def _prepare(store: _Store, records: RecordStore, ns: NamespaceConfig, cmd: TxnPrepare) -> Result:
    marker = store.marker(cmd.txn_id)
    if marker is not None:
        if marker.state is _Local.PREPARED:
            return Result(count=len(marker.digests))
        if marker.state is _Local.COMMITTED:
            return failure(ResultCode.MRT_COMMITTED, "transaction already resolved committed")
        return marker.answer if not marker.answer.ok else _aborted()
    record = store.record(cmd.txn_id) if cmd.is_home else None
    if record is not None and record.state is not TxnState.OPEN:
        # Decided before its home prepare applied (a recovery, or the coordinator's abort after
        # it gave up on this prepare): refused, nothing locked, no marker (the record answers).
        return _decided_refusal(cmd.txn_id, record.state)
    try:
        if cmd.is_home:
            _check_begin(cmd.now_ms, cmd.deadline_ms, cmd.participants)
            if cmd.home not in cmd.participants:
                raise error(ResultCode.PARAMETER_ERROR, "the home group is not a participant")
        plan = _plan(store, records, ns, cmd)
    except RaftstoreError as exc:
        return _fail(store, cmd, exc)  # no record: a decide creates it ABORTED
    if cmd.is_home and record is None:
        store.put_record(cmd.txn_id, TxnRecord(TxnState.OPEN, cmd.deadline_ms, cmd.participants, 0))
    locked: list[bytes] = []
    for digest, provisional, encoded in plan.writes:
        intent = Intent(cmd.txn_id, cmd.home, cmd.deadline_ms, provisional)
        store.put_intent(digest, intent, encoded)
        locked.append(digest)
    for digest in plan.read_only:
        store.put_intent(digest, Intent(cmd.txn_id, cmd.home, cmd.deadline_ms, None), None)
        locked.append(digest)
    prepared = _Marker(_Local.PREPARED, cmd.home, cmd.deadline_ms, tuple(locked), Result(), 0)
    store.put_marker(cmd.txn_id, prepared)
    return Result(count=len(locked))


def _commit(store: _Store, records: RecordStore, ns: NamespaceConfig, cmd: TxnCommit) -> Result:
    record = store.record(cmd.txn_id)
    if record is not None and record.state is TxnState.COMMITTED:
        return decide_result(record.state, record.decided_ms)
    marker = store.marker(cmd.txn_id)
    if marker is not None:
        if marker.state is _Local.PREPARED:
            return failure(ResultCode.PARAMETER_ERROR, "TxnCommit of a transaction prepared here")
        if marker.state is _Local.COMMITTED:  # a recovery's resolve; its record was forgotten
            return decide_result(TxnState.COMMITTED, marker.done_ms)
        return marker.answer
    if record is not None and record.state is TxnState.ABORTED:
        return decide_result(record.state, record.decided_ms)
    try:
        _check_begin(cmd.now_ms, cmd.deadline_ms, cmd.participants)
        plan = _plan(store, records, ns, cmd)
    except RaftstoreError as exc:
        answer = _fail(store, cmd, exc)
        aborted = TxnRecord(TxnState.ABORTED, cmd.deadline_ms, cmd.participants, cmd.now_ms)
        store.put_record(cmd.txn_id, aborted)
        return answer
    for digest, written, encoded in plan.writes:
        if written is not None:
            records.store(digest, written, encoded)
    committed = TxnRecord(TxnState.COMMITTED, cmd.deadline_ms, cmd.participants, cmd.now_ms)
    store.put_record(cmd.txn_id, committed)
    return decide_result(TxnState.COMMITTED, cmd.now_ms)


def _begin(store: _Store, cmd: TxnBegin) -> Result:
    record = store.record(cmd.txn_id)
    if record is not None:
        if record.state is not TxnState.OPEN:
            return _decided_refusal(cmd.txn_id, record.state)
        return Result()  # a retry of the begin that created it
    _check_begin(cmd.now_ms, cmd.deadline_ms, cmd.participants)
    if cmd.now_ms > cmd.deadline_ms:
        raise error(ResultCode.MRT_EXPIRED, "transaction deadline passed before it began")
    store.put_record(cmd.txn_id, TxnRecord(TxnState.OPEN, cmd.deadline_ms, cmd.participants, 0))
    return Result()


def _check_begin(now_ms: int, deadline_ms: int, participants: tuple[int, ...]) -> None:
    """The checks of a TxnBegin, and of the home group's TxnPrepare (which begins too)."""
    _check_deadline_range(now_ms, deadline_ms)
    if not participants or list(participants) != sorted(set(participants)):
        raise error(ResultCode.PARAMETER_ERROR, "participants must be distinct and ascending")


def _decided_refusal(txn_id: int, state: TxnState) -> Result:
    """The answer to a begin (or a home prepare) of a transaction already decided."""
    if state is TxnState.COMMITTED:
        return failure(ResultCode.MRT_COMMITTED, f"transaction {txn_id} was committed")
    return failure(ResultCode.MRT_ABORTED, f"transaction {txn_id} was aborted")


def _decide(store: _Store, records: RecordStore, cmd: TxnDecide) -> Result:
    if cmd.state not in (TxnState.COMMITTED, TxnState.ABORTED):
        raise error(ResultCode.PARAMETER_ERROR, "a transaction is decided COMMITTED or ABORTED")
    record = store.record(cmd.txn_id)
    if record is None:
        # Nothing began here: the home prepare has not applied (or failed, or was forgotten).
        # Record the abort, so that no late prepare, begin or decide can revive it.
        decided = TxnRecord(TxnState.ABORTED, cmd.deadline_ms, (), cmd.now_ms)
    elif record.state is TxnState.OPEN:
        state = cmd.state
        if state is TxnState.COMMITTED and cmd.now_ms > record.deadline_ms:
            state = TxnState.ABORTED  # too late: locks are bounded by the deadline
        decided = replace(record, state=state, decided_ms=cmd.now_ms)
    else:
        decided = record  # a repeat, or a recovery that lost the race: the record's state
    committed = decided.state is TxnState.COMMITTED
    marker = store.marker(cmd.txn_id) if cmd.resolve_here else None
    if marker is not None:
        _check_resolvable(cmd.txn_id, marker, committed)  # before any write: all or nothing
    if decided is not record:
        store.put_record(cmd.txn_id, decided)
    if marker is not None and marker.state is _Local.PREPARED:
        _resolve_prepared(
            store, records, cmd.txn_id, marker, committed=committed, decided_ms=decided.decided_ms
        )
        store.put_marker(cmd.txn_id, _final_marker(cmd.txn_id, marker, committed, cmd.now_ms))
    return decide_result(decided.state, decided.decided_ms)


def _resolve(store: _Store, records: RecordStore, cmd: TxnResolve) -> Result:
    marker = store.marker(cmd.txn_id)
    if marker is not None:
        _check_resolvable(cmd.txn_id, marker, cmd.committed)
        if marker.state is not _Local.PREPARED:
            return Result()  # a repeat
        written = _resolve_prepared(
            store, records, cmd.txn_id, marker, committed=cmd.committed, decided_ms=cmd.decided_ms
        )
    else:
        written = 0  # never prepared here: the final marker refuses a late prepare
    store.put_marker(cmd.txn_id, _final_marker(cmd.txn_id, marker, cmd.committed, cmd.now_ms))
    return Result(count=written)


def _check_resolvable(txn_id: int, marker: _Marker, committed: bool) -> None:
    final = _Local.COMMITTED if committed else _Local.ABORTED
    if marker.state is not _Local.PREPARED and marker.state is not final:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"transaction {txn_id} is already resolved {marker.state.name}",
        )


def _resolve_prepared(
    store: _Store,
    records: RecordStore,
    txn_id: int,
    marker: _Marker,
    *,
    committed: bool,
    decided_ms: int,
) -> int:
    """Roll the intents of a PREPARED marker forward (committed) or drop them; the count of
    records written. The caller then makes the marker final."""
    written = 0
    for digest in marker.digests:
        intent = store.intent(digest)
        assert intent is not None and intent.txn_id == txn_id, (digest.hex(), intent)
        if committed and intent.provisional is not None:
            records.store(digest, rolled_forward(intent, records.load(digest), decided_ms))
            written += 1
        store.delete_intent(digest)
    return written


def _final_marker(txn_id: int, marker: _Marker | None, committed: bool, now_ms: int) -> _Marker:
    if committed:
        answer = failure(ResultCode.MRT_COMMITTED, f"transaction {txn_id} committed")
        final = _Local.COMMITTED
    else:
        answer, final = _aborted(), _Local.ABORTED
    home, deadline_ms = (0, now_ms) if marker is None else (marker.home, marker.deadline_ms)
    return _Marker(final, home, deadline_ms, (), answer, now_ms)


def _forget(store: _Store, ns: NamespaceConfig, cmd: TxnForget) -> Result:
    horizon_ms = _horizon_ms(ns)
    count = 0
    for txn_id in sorted(set(cmd.txn_ids)):
        record = store.record(txn_id)
        if record is not None and _record_forgettable(record, cmd.now_ms, horizon_ms):
            store.delete_record(txn_id)
            count += 1
        marker = store.marker(txn_id)
        if marker is not None and _marker_forgettable(marker, cmd.now_ms, horizon_ms):
            store.delete_marker(txn_id)
            count += 1
    return Result(count=count)


# -- validation ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    # (digest, record, its encoding); record and encoding None: the ops change nothing (a
    # read lock). A provisional record is stored encoded as it is now (restamped at resolve).
    writes: list[tuple[bytes, Record | None, bytes | None]]
    read_only: list[bytes]  # digests read and not written


def _plan(
    store: _Store,
    records: RecordStore,
    ns: NamespaceConfig,
    cmd: TxnApply | TxnPrepare | TxnCommit,
) -> _Plan:
    """Every check of a TxnApply, TxnCommit or TxnPrepare, in the documented order; the
    records each write produces. Its only effect (set ids) comes last, all or nothing."""
    apply = not isinstance(cmd, TxnPrepare)  # writes now, not provisional ones
    now_ms, deadline_ms, reads, writes = cmd.now_ms, cmd.deadline_ms, cmd.reads, cmd.writes
    if now_ms > deadline_ms:
        raise error(ResultCode.MRT_EXPIRED, "transaction deadline passed")
    if len(writes) > TXN_WRITES_MAX:
        raise error(
            ResultCode.MRT_TOO_MANY_WRITES,
            f"{len(writes)} writes is over the limit of {TXN_WRITES_MAX}",
        )
    written = _distinct([w.digest for w in writes], "written")
    read_only = [d for d in _distinct([r.digest for r in reads], "read") if d not in written]
    for digest in written:
        _check_unlocked(store, digest, reads_through_read_locks=False)
    for digest in read_only:
        _check_unlocked(store, digest, reads_through_read_locks=apply)
    # A transfer reads the records it writes: each record is loaded (and decoded) once.
    loaded = {r.digest: records.load(r.digest) for r in reads}
    for digest in written:
        if digest not in loaded:
            loaded[digest] = records.load(digest)
    for read in reads:
        seen = (read.generation, read.last_update_ms)
        current = visible_version(loaded[read.digest], now_ms)
        if seen != current:
            raise error(
                ResultCode.MRT_VERSION_MISMATCH,
                f"record {read.digest.hex()} is at version {current}, the transaction read {seen}",
            )
    planned = [(w.digest, *_written(loaded[w.digest], ns, w, now_ms, exact=apply)) for w in writes]
    set_names = sorted({r.set_name for _, r, _ in planned if r is not None and r.set_name})
    if set_names:
        records.ensure_sets(set_names)
    return _Plan(planned, read_only)


def _check_deadline_range(now_ms: int, deadline_ms: int) -> None:
    furthest_ms = TXN_TIMEOUT_MS_MAX + TXN_CLOCK_SKEW_MS_MAX
    if deadline_ms - now_ms > furthest_ms:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"deadline is {deadline_ms - now_ms} ms away, over {furthest_ms} ms",
        )


def _distinct(digests: list[bytes], what: str) -> list[bytes]:
    for digest in digests:
        if len(digest) != limits.DIGEST_BYTES:
            raise error(ResultCode.PARAMETER_ERROR, "a digest is 20 bytes")
    if len(set(digests)) != len(digests):
        raise error(ResultCode.PARAMETER_ERROR, f"a key is {what} twice in one transaction")
    return digests


def _check_unlocked(store: _Store, digest: bytes, *, reads_through_read_locks: bool) -> None:
    intent = store.intent(digest)
    if intent is None or (reads_through_read_locks and not intent.is_write):
        return
    raise _Blocked(intent)


def _written(
    existing: Record | None, ns: NamespaceConfig, write: TxnWrite, now_ms: int, *, exact: bool
) -> tuple[Record, bytes] | tuple[None, None]:
    """The record `write` makes of `existing` and its encoding, checked against
    max-record-size; (None, None) if it changes nothing."""
    outcome = operations.operate(
        existing,
        write.ops,
        write.policy,
        now_ms=now_ms,
        set_name=keys.check_set_name(write.set_name),
        user_key=write.user_key,
        namespace=ns,
    )
    if not outcome.changed:
        return None, None
    record = outcome.record
    assert record is not None
    encoded = codec.encode_record(record)
    size = len(encoded)
    if not exact:  # restamped at resolve: size it with the widest metadata it may get
        size = codec.encoded_record_bytes_restamped(
            encoded, record, limits.GENERATION_MAX, limits.INT_MAX
        )
    if size > ns.max_record_bytes:
        raise error(
            ResultCode.RECORD_TOO_BIG,
            f"record of {size} bytes is over max-record-size {ns.max_record_bytes}",
        )
    return record, encoded


class _Blocked(RaftstoreError):
    """MRT_BLOCKED, carrying the intent so the answer can name its transaction."""

    def __init__(self, intent: Intent) -> None:
        super().__init__(
            f"record locked by transaction {intent.txn_id}", code=ResultCode.MRT_BLOCKED
        )
        self.intent = intent


def _fail(store: _Store, cmd: TxnApply | TxnPrepare | TxnCommit, exc: RaftstoreError) -> Result:
    """Answer a failed TxnApply / TxnPrepare / TxnCommit; remember the answer for repeats."""
    answer = blocked_result(exc.intent) if isinstance(exc, _Blocked) else failure(exc.code, exc.msg)
    home = cmd.home if isinstance(cmd, TxnPrepare) else 0
    final = _Marker(_Local.ABORTED, home, cmd.deadline_ms, (), answer, cmd.now_ms)
    store.put_marker(cmd.txn_id, final)
    return answer


def _aborted() -> Result:
    return failure(ResultCode.MRT_ABORTED, "transaction aborted")


def _horizon_ms(ns: NamespaceConfig) -> int:
    return max(ns.tomb_raider_period_s * 1000, TXN_FORGET_AFTER_MS_MIN)


def _record_forgettable(record: TxnRecord, now_ms: int, horizon_ms: int) -> bool:
    # An OPEN record a horizon past its deadline: a decide stamped before the deadline cannot
    # still be in flight (the same bound as tombstones), and any later one aborts (see
    # TxnDecide), as the decide that meets no record does: forgetting it loses nothing.
    past = max(record.deadline_ms, record.decided_ms) + horizon_ms
    return now_ms >= past


def _marker_forgettable(marker: _Marker, now_ms: int, horizon_ms: int) -> bool:
    if marker.state is _Local.PREPARED:
        return False  # its intents are resolved first (by the coordinator or a recovery)
    return now_ms >= max(marker.deadline_ms, marker.done_ms) + horizon_ms


# -- storage ----------------------------------------------------------------------------------


class _Store:
    """Typed access to the two tables."""

    def __init__(self, txn: KvTxn, tables: TxnTables) -> None:
        self.txn = txn
        self.tables = tables

    def intent(self, digest: bytes) -> Intent | None:
        raw = self.txn.get(self.tables.intents, digest)
        return None if raw is None else _decode_intent(raw)

    def put_intent(self, digest: bytes, intent: Intent, provisional: bytes | None) -> None:
        """`provisional`: `intent.provisional` encoded (`codec.encode_record`), or None."""
        self.txn.put(self.tables.intents, digest, _encode_intent(intent, provisional))

    def delete_intent(self, digest: bytes) -> None:
        deleted = self.txn.delete(self.tables.intents, digest)
        assert deleted, digest.hex()

    def record(self, txn_id: int) -> TxnRecord | None:
        raw = self.txn.get(self.tables.txns, _RECORD_PREFIX + _U64.pack(txn_id))
        return None if raw is None else _decode_record(raw)

    def put_record(self, txn_id: int, record: TxnRecord) -> None:
        self.txn.put(self.tables.txns, _RECORD_PREFIX + _U64.pack(txn_id), _encode_record(record))

    def delete_record(self, txn_id: int) -> None:
        self.txn.delete(self.tables.txns, _RECORD_PREFIX + _U64.pack(txn_id))

    def marker(self, txn_id: int) -> _Marker | None:
        raw = self.txn.get(self.tables.txns, _MARKER_PREFIX + _U64.pack(txn_id))
        return None if raw is None else _decode_marker(raw)

    def put_marker(self, txn_id: int, marker: _Marker) -> None:
        self.txn.put(self.tables.txns, _MARKER_PREFIX + _U64.pack(txn_id), _encode_marker(marker))

    def delete_marker(self, txn_id: int) -> None:
        self.txn.delete(self.tables.txns, _MARKER_PREFIX + _U64.pack(txn_id))


def _encode_intent(intent: Intent, provisional: bytes | None) -> bytes:
    assert (provisional is None) == (intent.provisional is None), intent
    return codec.pack_value([_FORMAT, intent.txn_id, intent.home, intent.deadline_ms, provisional])


def _decode_intent(raw: bytes) -> Intent:
    _, txn_id, home, deadline_ms, provisional = _fields(raw, 5, "intent")
    if provisional is not None and type(provisional) is not bytes:
        raise _corrupt("intent's provisional record is not bytes")
    record = None if provisional is None else codec.decode_record(provisional)
    return Intent(
        _uint(txn_id, "intent"), _uint(home, "intent"), _uint(deadline_ms, "intent"), record
    )


def _encode_record(record: TxnRecord) -> bytes:
    return codec.pack_value(
        [
            _FORMAT,
            int(record.state),
            record.deadline_ms,
            list(record.participants),
            record.decided_ms,
        ]
    )


def _decode_record(raw: bytes) -> TxnRecord:
    _, state, deadline_ms, participants, decided_ms = _fields(raw, 5, "transaction record")
    if type(participants) is not list:
        raise _corrupt("transaction record's participants are not a list")
    groups = tuple(_uint(group, "transaction record") for group in participants)
    return TxnRecord(
        _enum(TxnState, state, "transaction record"),
        _uint(deadline_ms, "transaction record"),
        groups,
        _uint(decided_ms, "transaction record"),
    )


def _encode_marker(marker: _Marker) -> bytes:
    return codec.pack_value(
        [
            _FORMAT,
            int(marker.state),
            marker.home,
            marker.deadline_ms,
            list(marker.digests),
            encode_result(marker.answer),
            marker.done_ms,
        ]
    )


def _decode_marker(raw: bytes) -> _Marker:
    _, state, home, deadline_ms, digests, answer, done_ms = _fields(raw, 7, "marker")
    if type(digests) is not list or not all(type(d) is bytes for d in digests):
        raise _corrupt("marker's digests are not a list of bytes")
    if type(answer) is not bytes:
        raise _corrupt("marker's answer is not bytes")
    try:
        result = decode_result(answer)
    except (RaftstoreError, TypeError, ValueError) as exc:
        raise _corrupt(f"marker's answer does not decode: {exc!r}") from None
    return _Marker(
        _enum(_Local, state, "marker"),
        _uint(home, "marker"),
        _uint(deadline_ms, "marker"),
        tuple(digests),
        result,
        _uint(done_ms, "marker"),
    )


def _fields(raw: bytes, count: int, what: str) -> list[Any]:
    try:
        fields = codec.unpack_value(raw)
    except RaftstoreError:
        raise _corrupt(f"{what} does not decode") from None
    if type(fields) is not list or len(fields) != count or fields[0] != _FORMAT:
        raise _corrupt(f"{what} is not a {count}-field array of format {_FORMAT}")
    return fields


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _corrupt(f"{what} has a bad field {value!r}")
    return value


def _enum(kind: type[TxnState] | type[_Local], value: Any, what: str) -> Any:
    try:
        return kind(_uint(value, what))
    except ValueError:
        raise _corrupt(f"{what} has a bad state {value!r}") from None


def _corrupt(what: str) -> RaftstoreError:
    return error(ResultCode.RECORD_CORRUPT, what)
