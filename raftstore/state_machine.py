"""The replicated state machine of one partition group: commands in, results out.

Theory of operation. `apply_batch(txn, log_index, commands)` applies every command of a
batch through one store transaction `txn` and returns one `Result` per command plus the
changes the primary index must take. The caller (the engine) commits the transaction, and
only then calls `publish(batch)`, so the RAM index never runs ahead of the device.

Rules:
- Deterministic: no clock, no randomness, no iteration over unordered collections that
  decides anything. Time comes inside the commands; candidates for truncate, expiry and the
  tomb raider are taken in ascending digest order.
- A command that fails (a `RaftstoreError`) has no effect: every check happens before the
  first write of that command. Its failure is its result, and is stored like a success so
  that a retry gets the same answer.
- Exactly-once: a `RecordRequest` whose `(client_id, request_seq)` is in the session table is
  answered from there. See `raftstore.commands` for the session floor (`acked_seq`).
  Within a batch, answers wait in RAM and are written to the session table at its end
  (`_Batch.flush_clients`), except those a later request of the batch acknowledged: storing
  and then deleting them in one transaction leaves the table as never writing them does.
  A client's row keeps a bound on the request seqs it has answers for (`answered_high`), so
  a new request above it is known to be new without a lookup.
- The applied log position is written in the same transaction as the commands it covers.
- A bug inside one command (any exception that is not a `RaftstoreError`) is reported as
  `CommandCrashed` with the command's position; the caller aborts the transaction and applies
  the batch again with that position answered SERVER_ERROR, on every replica alike.

Transactions (docs/transactions.md). Transaction commands (`raftstore.txn_commands`) go to
`txn_participant.apply_txn_command`, through `_TxnRecords`: the participant reads and writes
records only through it, so encoding, set ids and index changes stay this module's. They have
no session: each is idempotent by its transaction's marker. Locks:
- A `RecordRequest` on a digest that carries an intent answers MRT_BLOCKED naming the
  blocking transaction (`txn_participant.blocked_result`) and changes nothing; a read-only
  one on a read-locked record reads it (a read lock never changes the record). One intents
  lookup per request, after the session lookup (a repeat gets its first answer).
- `Expire`, `Truncate` and `TombRaid` skip digests that carry an intent: a provisional value
  was computed from the locked record, so the record must stay as it is; a later pass takes
  them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from raftstore import codec, keys, limits, operations
from raftstore.clock import is_expired
from raftstore.command_codec import LogCommand
from raftstore.commands import (
    Barrier,
    Expire,
    RecordRequest,
    Result,
    TombRaid,
    Truncate,
    decode_result,
    encode_result,
    failure,
)
from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.index import PrimaryIndex
from raftstore.kv import KvTxn, Table
from raftstore.ops import is_read_only
from raftstore.record import MetaFields, Record, next_generation
from raftstore.txn_commands import TXN_COMMAND_TYPES
from raftstore.txn_participant import (
    TXN_TABLES,
    apply_txn_command,
    blocked_result,
    decode_intent,
)

APPLIED_KEY = b"applied_index"
SESSION_IDLE_MS_MAX = 3600 * 1000  # a client silent this long is forgotten by the tomb raider
SESSION_DIRECT_DELETES_MAX = 32

# Enum members read as module constants: `Table.RECORDS` is an attribute lookup through the
# enum's metaclass (about 0.1 us, CPython 3.11); the hot path names tables several times a
# command.
_RECORDS, _SESSIONS, _CLIENTS = Table.RECORDS, Table.SESSIONS, Table.CLIENTS
_INTENTS = TXN_TABLES.intents
_OK = ResultCode.OK

_U64 = struct.Struct(">Q")
_U64_MAX = 2**64 - 1
_SESSION_KEY = struct.Struct(">QQ")  # client id, request seq
# Session floor, last-seen time (ms), answered_high: no answer of the client with a greater
# request seq is in the session table. Rows written before that field held only the first
# two; their bound is unknown, so every seq is looked up (`_U64_MAX`).
_CLIENT_ROW = struct.Struct(">QQQ")
_CLIENT_ROW_V1 = struct.Struct(">QQ")
_SET_ID = struct.Struct(">H")


class CommandCrashed(Exception):
    """A command raised something that is not a `RaftstoreError`: a bug, reported by position."""

    def __init__(self, position: int, cause: BaseException) -> None:
        super().__init__(f"command {position} crashed: {cause!r}")
        self.position = position
        self.cause = cause


@dataclass(slots=True)
class _Client:
    floor: int
    last_seen_ms: int
    answered_high: int  # no answer above this seq is stored or waiting
    stored_high: int  # answered_high when the batch began: nothing above it is in the table
    dirty: bool = False
    # Answers of this batch, not yet in the session table: seq -> (position, key, result).
    answers: dict[int, tuple[int, bytes, Result]] = field(default_factory=dict)


@dataclass(slots=True)
class AppliedBatch:
    """What one applied batch produced; `publish` it after the transaction commits."""

    log_index: int
    results: list[Result] = field(default_factory=list)
    # Digest -> its new metadata (the stored Record itself), or None if removed.
    metas: dict[bytes, MetaFields | None] = field(default_factory=dict)
    new_sets: dict[str, int] = field(default_factory=dict)


def read_applied_index(txn: KvTxn) -> int:
    raw = txn.get(Table.META, APPLIED_KEY)
    return 0 if raw is None else int(_U64.unpack(raw)[0])


def load_sets(txn: KvTxn) -> dict[str, int]:
    return {name.decode("utf-8"): _SET_ID.unpack(raw)[0] for name, raw in txn.scan(Table.SETS)}


def tombstone_of(record: Record, now_ms: int) -> Record:
    """The durable trace a delete leaves: no bins, the next generation, kept key and set."""
    return Record(
        generation=next_generation(record.generation),
        void_time=0,
        last_update_ms=max(now_ms, record.last_update_ms),
        set_name=record.set_name,
        bins={},
        tombstone=True,
        user_key=record.user_key,
    )


class StateMachine:
    def __init__(self, namespace: NamespaceConfig, index: PrimaryIndex) -> None:
        self.namespace = namespace
        self.index = index

    # -- batches ---------------------------------------------------------------------------

    def apply_batch(
        self,
        txn: KvTxn,
        log_index: int,
        commands: Sequence[LogCommand],
        crashed: frozenset[int] = frozenset(),
    ) -> AppliedBatch:
        applied = read_applied_index(txn)
        assert log_index > applied, f"log index {log_index} already applied (at {applied})"
        assert len(commands) <= limits.BATCH_COMMANDS_MAX, len(commands)
        batch = _Batch(txn, self.index, log_index)
        for position, command in enumerate(commands):
            if position in crashed:
                batch.applied.results.append(failure(ResultCode.SERVER_ERROR, "command crashed"))
                continue
            try:
                result = self._apply(batch, command, position)
            except RaftstoreError as exc:  # pragma: no cover - _apply turns these into results
                result = failure(exc.code, exc.msg)
            except Exception as exc:
                raise CommandCrashed(position, exc) from exc
            batch.applied.results.append(result)
        batch.flush_clients()
        txn.put(Table.META, APPLIED_KEY, _U64.pack(log_index))
        return batch.applied

    def publish(self, applied: AppliedBatch) -> None:
        """Apply a committed batch's changes to the RAM index."""
        for set_name, set_id in applied.new_sets.items():
            self.index.register_set(set_name, set_id)
        for digest, meta in applied.metas.items():
            if meta is None:
                self.index.remove(digest)
            else:
                self.index.put(digest, meta)

    # -- commands ----------------------------------------------------------------------------

    def _apply(self, batch: _Batch, command: LogCommand, position: int) -> Result:
        if type(command) is RecordRequest:  # the common case first, by the exact type
            return self._apply_request(batch, command, position)
        if isinstance(command, RecordRequest):
            return self._apply_request(batch, command, position)
        if isinstance(command, TXN_COMMAND_TYPES):
            return apply_txn_command(
                batch.txn,
                command,
                tables=TXN_TABLES,
                records=_TxnRecords(self, batch),
                namespace=self.namespace,
            )
        if isinstance(command, Truncate):
            return self._truncate(batch, command)
        if isinstance(command, Expire):
            return self._expire(batch, command)
        if isinstance(command, TombRaid):
            return self._tomb_raid(batch, command)
        if isinstance(command, Barrier):
            return Result()
        raise error(ResultCode.PARAMETER_ERROR, f"unknown command {type(command).__name__}")

    def _apply_request(self, batch: _Batch, request: RecordRequest, position: int) -> Result:
        client = batch.client(request.client_id, request.acked_seq)
        seq = request.request_seq
        if seq < client.floor:
            return failure(
                ResultCode.SESSION_EXPIRED,
                f"request {seq} is below the session floor {client.floor}",
            )
        session_key = _SESSION_KEY.pack(request.client_id, seq)
        waiting = client.answers.get(seq)
        if waiting is not None:  # answered earlier in this batch: as if read back from the table
            return decode_result(encode_result(waiting[2]))
        if seq <= client.stored_high:
            stored = batch.txn.get(_SESSIONS, session_key)
            if stored is not None:
                return decode_result(stored)
        if request.acked_seq > client.floor:
            batch.forget_sessions(request.client_id, client, request.acked_seq)
            client.floor = request.acked_seq
        client.last_seen_ms = max(client.last_seen_ms, request.now_ms)
        client.dirty = True
        try:
            result = self._operate(batch, request)
        except RaftstoreError as exc:
            result = failure(exc.code, exc.msg)
        client.answers[seq] = (position, session_key, result)
        client.answered_high = max(client.answered_high, seq)
        return result

    def _operate(self, batch: _Batch, request: RecordRequest) -> Result:
        if len(request.digest) != limits.DIGEST_BYTES:
            raise error(ResultCode.PARAMETER_ERROR, "digest must be 20 bytes")
        set_name = keys.check_set_name(request.set_name)
        locked = batch.txn.get(_INTENTS, request.digest)
        if locked is not None:
            intent = decode_intent(locked)
            if intent.is_write or not is_read_only(request.ops):
                return blocked_result(intent)
        existing = batch.load(request.digest)
        outcome = operations.operate(
            existing,
            request.ops,
            request.policy,
            now_ms=request.now_ms,
            set_name=set_name,
            user_key=request.user_key,
            namespace=self.namespace,
        )
        record = outcome.record
        if outcome.changed:
            assert record is not None
            self._store(batch, request.digest, record)
        if record is None:
            return Result(results=tuple(outcome.results))
        # Positional: cheaper than by keyword (the order is pinned in commands.py).
        return Result(
            _OK,
            record.generation,
            record.void_time,
            tuple(outcome.results),
            "",
            0,
            record.last_update_ms,
        )

    def _store(self, batch: _Batch, digest: bytes, record: Record) -> None:
        encoded = codec.encode_record(record)  # asserts `check_record` first
        if len(encoded) > self.namespace.max_record_bytes:
            raise error(
                ResultCode.RECORD_TOO_BIG,
                f"record of {len(encoded)} bytes is over max-record-size "
                f"{self.namespace.max_record_bytes}",
            )
        batch.ensure_set(record.set_name)
        batch.txn.put(_RECORDS, digest, encoded)
        batch.applied.metas[digest] = record

    def _truncate(self, batch: _Batch, command: Truncate) -> Result:
        def doomed(meta: MetaFields) -> bool:
            in_scope = command.set_name is None or meta.set_name == command.set_name
            return in_scope and not meta.tombstone and meta.last_update_ms <= command.before_ms

        digests = [d for d in batch.digests_where(doomed) if not batch.is_locked(d)]
        return Result(count=self._bury(batch, digests, command.now_ms))

    def _expire(self, batch: _Batch, command: Expire) -> Result:
        def expired(digest: bytes) -> bool:
            meta = batch.meta(digest)
            return (
                meta is not None
                and not meta.tombstone
                and is_expired(meta.void_time, command.now_ms)
                and not batch.is_locked(digest)
            )

        digests = sorted({d for d in command.digests if expired(d)})
        return Result(count=self._bury(batch, digests, command.now_ms))

    def _bury(self, batch: _Batch, digests: Iterable[bytes], now_ms: int) -> int:
        count = 0
        for digest in digests:
            record = batch.load(digest)
            assert record is not None and not record.tombstone
            self._store(batch, digest, tombstone_of(record, now_ms))
            count += 1
        return count

    def _tomb_raid(self, batch: _Batch, command: TombRaid) -> Result:
        horizon_ms = command.now_ms - self.namespace.tomb_raider_period_s * 1000

        def raidable(meta: MetaFields) -> bool:
            return meta.tombstone and meta.last_update_ms < horizon_ms

        count = 0
        for digest in batch.digests_where(raidable):
            if batch.is_locked(digest):
                continue  # a prepared transaction read or writes it: its generation counts
            batch.txn.delete(_RECORDS, digest)
            batch.applied.metas[digest] = None
            count += 1
        batch.forget_idle_clients(command.now_ms - SESSION_IDLE_MS_MAX)
        return Result(count=count)


class _Batch:
    """The working state of one batch: the transaction, pending index changes, client rows."""

    def __init__(self, txn: KvTxn, index: PrimaryIndex, log_index: int) -> None:
        self.txn = txn
        self.index = index
        self.applied = AppliedBatch(log_index)
        self.clients: dict[int, _Client] = {}

    def meta(self, digest: bytes) -> MetaFields | None:
        metas = self.applied.metas
        if digest in metas:
            return metas[digest]
        return self.index.get(digest)

    def load(self, digest: bytes) -> Record | None:
        raw = self.txn.get(_RECORDS, digest)
        return None if raw is None else codec.decode_record(raw)

    def is_locked(self, digest: bytes) -> bool:
        """Whether a transaction's intent (a write or a read lock) is on the record."""
        return self.txn.get(_INTENTS, digest) is not None

    def digests_where(self, keep: Callable[[MetaFields], bool]) -> list[bytes]:
        """Digests whose (pending or indexed) metadata passes `keep`, in ascending order."""
        pending = self.applied.metas
        chosen = [d for d, meta in self.index.items() if d not in pending and keep(meta)]
        chosen.extend(d for d, meta in pending.items() if meta is not None and keep(meta))
        chosen.sort()
        return chosen

    def ensure_set(self, set_name: str) -> None:
        if not set_name or self.index.set_id(set_name) is not None:
            return  # the common case, without building a list
        self.ensure_sets((set_name,))

    def ensure_sets(self, set_names: Sequence[str]) -> None:
        """Give every named set an id, all or none: SET_LIMIT (and no effect) if the new ones
        do not all fit. The empty name (no set) needs none."""
        new: list[str] = []
        for set_name in set_names:
            if not set_name or self.index.set_id(set_name) is not None:
                continue
            if set_name in self.applied.new_sets or set_name in new:
                continue
            new.append(set_name)
        if not new:
            return
        used = len(self.index.set_names()) + len(self.applied.new_sets)
        if used + len(new) > limits.SETS_PER_NAMESPACE_MAX:
            raise error(
                ResultCode.SET_LIMIT,
                f"namespace has {used} sets; {len(new)} more is over the limit of "
                f"{limits.SETS_PER_NAMESPACE_MAX}",
            )
        for set_name in new:
            used += 1
            self.txn.put(Table.SETS, set_name.encode("utf-8"), _SET_ID.pack(used))
            self.applied.new_sets[set_name] = used

    def client(self, client_id: int, acked_seq: int) -> _Client:
        client = self.clients.get(client_id)
        if client is None:
            raw = self.txn.get(_CLIENTS, _U64.pack(client_id))
            if raw is None:
                # A client we do not know (new, or forgotten after SESSION_IDLE_MS_MAX of
                # silence, far longer than any retry lives) starts at its own floor, with no
                # answer stored.
                client = _Client(acked_seq, 0, 0, 0, dirty=True)
            else:
                floor, last_seen_ms, answered_high = _decode_client_row(raw)
                client = _Client(floor, last_seen_ms, answered_high, answered_high)
            self.clients[client_id] = client
        return client

    def forget_sessions(self, client_id: int, client: _Client, below_seq: int) -> None:
        """Drop the answers of `client_id` below `below_seq`, waiting or stored (the stored
        ones are all at or above the client's floor and at or below its `stored_high`)."""
        answers = client.answers
        floor = client.floor
        if below_seq - floor <= SESSION_DIRECT_DELETES_MAX:
            # The usual case, a client acknowledging a few answers: no cursor. An answer that
            # is waiting was never stored (it was looked up and not found, or above the bound).
            for seq in range(floor, below_seq):
                if answers.pop(seq, None) is None and seq <= client.stored_high:
                    self.txn.delete(_SESSIONS, _SESSION_KEY.pack(client_id, seq))
            return
        for seq in [seq for seq in answers if seq < below_seq]:
            del answers[seq]
        doomed = []
        for key, _ in self.txn.scan(_SESSIONS, _U64.pack(client_id)):
            if _U64.unpack_from(key, 8)[0] >= below_seq:
                break
            doomed.append(key)
        for key in doomed:
            self.txn.delete(_SESSIONS, key)

    def forget_idle_clients(self, silent_since_ms: int) -> None:
        """Forget clients silent since `silent_since_ms`: their row and every answer. A client
        seen in this batch is judged by that, not by its row (not yet written)."""
        idle = []
        for key, raw in self.txn.scan(_CLIENTS):
            client_id = _U64.unpack(key)[0]
            seen = self.clients.get(client_id)
            last_seen_ms = _decode_client_row(raw)[1] if seen is None else seen.last_seen_ms
            if last_seen_ms < silent_since_ms:
                idle.append((key, client_id))
        for key, client_id in idle:
            client = self.clients.pop(client_id, None)
            if client is None:
                client = _Client(0, 0, _U64_MAX, _U64_MAX)
            self.forget_sessions(client_id, client, _U64_MAX)
            self.txn.delete(_CLIENTS, key)

    def flush_clients(self) -> None:
        """Write the waiting answers and the changed client rows, in client and seq order."""
        for client_id in sorted(self.clients):
            client = self.clients[client_id]
            for seq in sorted(client.answers):
                position, session_key, result = client.answers[seq]
                try:
                    encoded = encode_result(result)
                except Exception as exc:  # a result that cannot be stored: that command's bug
                    raise CommandCrashed(position, exc) from exc
                self.txn.put(_SESSIONS, session_key, encoded)
            if client.dirty:
                row = _CLIENT_ROW.pack(client.floor, client.last_seen_ms, client.answered_high)
                self.txn.put(_CLIENTS, _U64.pack(client_id), row)


class _TxnRecords:
    """`txn_participant.RecordStore` over one batch: records as `_operate` reads and writes
    them (encoded in the records table, set ids, index changes published after commit)."""

    __slots__ = ("_batch", "_machine")

    def __init__(self, machine: StateMachine, batch: _Batch) -> None:
        self._machine = machine
        self._batch = batch

    def load(self, digest: bytes) -> Record | None:
        return self._batch.load(digest)  # through the batch's transaction: sees its writes

    def ensure_sets(self, set_names: Sequence[str]) -> None:
        self._batch.ensure_sets(set_names)

    def store(self, digest: bytes, record: Record, encoded: bytes | None = None) -> None:
        """The participant checked the size and ensured the set first: a failure here is our
        bug, so it crashes the command (the batch is applied again without it) rather than
        leave the command half done. `encoded`: `record` encoded already, by the participant."""
        batch = self._batch
        if encoded is None:
            encoded = codec.encode_record(record)  # asserts `check_record` first
        max_record_bytes = self._machine.namespace.max_record_bytes
        assert len(encoded) <= max_record_bytes, (digest.hex(), len(encoded), max_record_bytes)
        assert not record.set_name or (
            record.set_name in batch.applied.new_sets
            or batch.index.set_id(record.set_name) is not None
        ), f"set {record.set_name!r} was not ensured"
        batch.txn.put(_RECORDS, digest, encoded)
        batch.applied.metas[digest] = record


def _decode_client_row(raw: bytes) -> tuple[int, int, int]:
    if len(raw) == _CLIENT_ROW_V1.size:
        floor, last_seen_ms = _CLIENT_ROW_V1.unpack(raw)
        return floor, last_seen_ms, _U64_MAX
    floor, last_seen_ms, answered_high = _CLIENT_ROW.unpack(raw)
    return floor, last_seen_ms, answered_high
