"""The commands of multi-record transactions, and their msgpack form (docs/transactions.md).

Commands are frozen data, like `raftstore.commands`: everything that varies between replicas
(the clock) is stamped into the command (`now_ms`) by the node that proposes it.

- `TxnApply`   all keys in one group: validate and write atomically (the entry commits).
- `TxnBegin`   home group, when it is not a participant: create the transaction record OPEN.
- `TxnPrepare` each participant group: validate, then lock (intents); nothing else changes.
               The home group's prepare carries the participants and also creates the
               transaction record OPEN (TxnBegin folded in); the others carry none. (The
               coordinator no longer prepares the home group: see TxnCommit.)
- `TxnCommit`  home group, once every other participant prepared: validate the home group's
               own reads and writes and, in the same command, write them and record the
               transaction COMMITTED (or record it ABORTED with the failure). The home
               group's prepare, decide and resolve folded into one (last participant).
- `TxnDecide`  home group: OPEN takes the proposed state; a decided record keeps its own.
               With `resolve_here` it also resolves the home group's own prepared intents
               with that state, in the same command (the home group's TxnResolve folded in).
- `TxnResolve` each participant group: roll this transaction's intents forward or back.
- `TxnForget`  any group: drop decided records and resolved markers past the horizon.

Wire form. `txn_command_to_wire` gives a msgpack-ready array `[tag, field, ...]` whose tag
(10..16) is distinct from `raftstore.command_codec`'s (1..5), so a log entry can carry these
beside the engine's commands; `txn_command_from_wire` checks the shape of every field and
raises PROTOCOL_ERROR for anything else. `encode_txn_command` / `decode_txn_command` are the
same as standalone bytes (through `raftstore.codec`). The shorter forms written before
`TxnPrepare.participants` and `TxnDecide.resolve_here` existed still decode, with those fields
empty / false (what the commands meant then), so a log written earlier replays. Op lists and
write policies have the shape `command_codec` gives them; they are re-implemented here (not
imported) so that `command_codec` can import this module without a cycle.

Limits (to move into `raftstore.limits` when that file is free): `TXN_WRITES_MAX`,
`TXN_TIMEOUT_MS_*`, `TXN_FORGET_AFTER_MS_MIN`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from raftstore import codec, limits
from raftstore.commands import Result
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.frozen import fast_init
from raftstore.ops import Op, OpCode
from raftstore.policy import Exists, Gen, WritePolicy
from raftstore.record import UserKey

TXN_WRITES_MAX: Final = 4096  # records written per transaction (MRT_TOO_MANY_WRITES beyond)
TXN_TIMEOUT_MS_DEFAULT: Final = 10_000
TXN_TIMEOUT_MS_MIN: Final = 1_000
TXN_TIMEOUT_MS_MAX: Final = 120_000
# A deadline is stamped by the coordinator's wall clock and checked against the clock of the
# leader applying a command, maybe another node's (the coordinator leads one of the
# transaction's groups, not necessarily the home group): a deadline is "too far" only past
# the longest timeout plus this much, so that skewed clocks do not refuse a legal timeout.
TXN_CLOCK_SKEW_MS_MAX: Final = 5_000
# Decided records and resolved markers live at least this long past their deadline, so that
# any late duplicate of a command of theirs meets either them or its own passed deadline.
TXN_FORGET_AFTER_MS_MIN: Final = 2 * TXN_TIMEOUT_MS_MAX
TXN_ID_MAX: Final = 2**64 - 1
GROUP_MAX: Final = limits.PARTITIONS - 1  # a namespace has at most one group per partition
DECIDE_STATE_BIN: Final = "txn_state"  # the result entry of a TxnDecide carrying the state

TAG_APPLY, TAG_BEGIN, TAG_PREPARE, TAG_DECIDE, TAG_RESOLVE, TAG_FORGET = 10, 11, 12, 13, 14, 15
TAG_COMMIT: Final = 16
TXN_TAGS: Final = frozenset(
    {TAG_APPLY, TAG_BEGIN, TAG_PREPARE, TAG_DECIDE, TAG_RESOLVE, TAG_FORGET, TAG_COMMIT}
)


class TxnState(enum.IntEnum):
    """The state of a transaction record in its home group."""

    OPEN = 1
    COMMITTED = 2
    ABORTED = 3


@fast_init
@dataclass(frozen=True, slots=True)
class TxnRead:
    """A key the transaction read, and the version it saw: (0, 0) when absent."""

    digest: bytes
    generation: int
    last_update_ms: int


@fast_init
@dataclass(frozen=True, slots=True)
class TxnWrite:
    """The buffered op list of one key, applied at commit under `policy`."""

    digest: bytes
    set_name: str
    user_key: UserKey | None
    ops: tuple[Op, ...]
    policy: WritePolicy


@fast_init
@dataclass(frozen=True, slots=True)
class TxnApply:
    txn_id: int
    now_ms: int
    deadline_ms: int
    reads: tuple[TxnRead, ...]
    writes: tuple[TxnWrite, ...]


@dataclass(frozen=True, slots=True)
class TxnBegin:
    txn_id: int
    now_ms: int
    deadline_ms: int
    participants: tuple[int, ...]  # the groups that get a TxnPrepare, ascending


@fast_init
@dataclass(frozen=True, slots=True)
class TxnPrepare:
    """`participants` is empty except in the home group's prepare, which then also does what
    a TxnBegin with those participants does (ascending, `home` among them)."""

    txn_id: int
    home: int
    now_ms: int
    deadline_ms: int
    reads: tuple[TxnRead, ...]
    writes: tuple[TxnWrite, ...]
    participants: tuple[int, ...] = ()

    @property
    def is_home(self) -> bool:
        """Whether this is the home group's prepare (it creates the transaction record)."""
        return bool(self.participants)


@dataclass(frozen=True, slots=True)
class TxnDecide:
    """`state` is COMMITTED or ABORTED. `deadline_ms` is kept when the decide creates the
    record (ABORTED, when no record exists). `resolve_here`: the home group is a participant,
    and its prepared intents are resolved with the decided state in this same command."""

    txn_id: int
    now_ms: int
    deadline_ms: int
    state: TxnState
    resolve_here: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class TxnCommit:
    """The home group's part of a transaction over several groups, proposed once every other
    participant prepared: `reads` and `writes` are the home group's own; `participants` are
    every group of the transaction, ascending (kept in the record; the group applying the
    command does not know its own number, so that the home group is among them is the
    coordinator's to keep).
    Answered like a TxnDecide (`decide_result`) when it decides, or with the failure of the
    home group's checks (the record is then ABORTED)."""

    txn_id: int
    now_ms: int
    deadline_ms: int
    reads: tuple[TxnRead, ...]
    writes: tuple[TxnWrite, ...]
    participants: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class TxnResolve:
    """`decided_ms` is the decide's timestamp (its result's `last_update_ms`): the last-update
    time every record the transaction writes takes."""

    txn_id: int
    now_ms: int
    committed: bool
    decided_ms: int


@dataclass(frozen=True, slots=True)
class TxnForget:
    """Forget those of `txn_ids` that are final and past the horizon (the state machine
    checks each again; the leader proposes candidates from `txn_participant`)."""

    now_ms: int
    txn_ids: tuple[int, ...]


TxnCommand = TxnApply | TxnBegin | TxnPrepare | TxnDecide | TxnCommit | TxnResolve | TxnForget
TXN_COMMAND_TYPES: Final = (
    TxnApply,
    TxnBegin,
    TxnPrepare,
    TxnDecide,
    TxnCommit,
    TxnResolve,
    TxnForget,
)


# -- results ----------------------------------------------------------------------------------


def decide_result(state: TxnState, decided_ms: int) -> Result:
    """The answer of a TxnDecide: the record's final (or still open) state, and when."""
    return Result(results=((DECIDE_STATE_BIN, int(state)),), last_update_ms=decided_ms)


def state_of(result: Result) -> TxnState | None:
    """The state a TxnDecide answered, or None if `result` is not such an answer."""
    if not result.ok or len(result.results) != 1:
        return None
    name, value = result.results[0]
    if name != DECIDE_STATE_BIN or type(value) is not int:
        return None
    try:
        return TxnState(value)
    except ValueError:
        return None


# -- wire form --------------------------------------------------------------------------------


def encode_txn_command(command: TxnCommand) -> bytes:
    return codec.pack_value(txn_command_to_wire(command))


def decode_txn_command(data: bytes) -> TxnCommand:
    return txn_command_from_wire(codec.unpack_value(data))


def txn_command_to_wire(command: TxnCommand) -> list[Any]:
    if isinstance(command, TxnApply):
        return [
            TAG_APPLY,
            command.txn_id,
            command.now_ms,
            command.deadline_ms,
            *_parts_to_wire(command.reads, command.writes),
        ]
    if isinstance(command, TxnBegin):
        return [
            TAG_BEGIN,
            command.txn_id,
            command.now_ms,
            command.deadline_ms,
            list(command.participants),
        ]
    if isinstance(command, TxnPrepare):
        return [
            TAG_PREPARE,
            command.txn_id,
            command.home,
            command.now_ms,
            command.deadline_ms,
            *_parts_to_wire(command.reads, command.writes),
            list(command.participants),
        ]
    if isinstance(command, TxnDecide):
        return [
            TAG_DECIDE,
            command.txn_id,
            command.now_ms,
            command.deadline_ms,
            int(command.state),
            command.resolve_here,
        ]
    if isinstance(command, TxnCommit):
        return [
            TAG_COMMIT,
            command.txn_id,
            command.now_ms,
            command.deadline_ms,
            *_parts_to_wire(command.reads, command.writes),
            list(command.participants),
        ]
    if isinstance(command, TxnResolve):
        return [TAG_RESOLVE, command.txn_id, command.now_ms, command.committed, command.decided_ms]
    assert isinstance(command, TxnForget), command
    return [TAG_FORGET, command.now_ms, list(command.txn_ids)]


def txn_command_from_wire(raw: Any) -> TxnCommand:
    """The command `raw` (a decoded msgpack array) describes, or PROTOCOL_ERROR."""
    try:
        return _from_wire(raw)
    except RaftstoreError as exc:
        if exc.code == ResultCode.PROTOCOL_ERROR:
            raise
        raise _bad(exc.msg) from None


def _from_wire(raw: Any) -> TxnCommand:
    if type(raw) is not list or not raw:
        raise _bad("a transaction command is a non-empty array")
    tag = raw[0]
    fields = raw[1:]
    if tag == TAG_APPLY:
        _expect(fields, 5, "TxnApply")
        txn_id, now_ms, deadline_ms, reads, writes = fields
        return TxnApply(
            _txn_id(txn_id),
            _ms(now_ms),
            _ms(deadline_ms),
            reads_from_wire(reads),
            writes_from_wire(writes),
        )
    if tag == TAG_BEGIN:
        _expect(fields, 4, "TxnBegin")
        txn_id, now_ms, deadline_ms, participants = fields
        return TxnBegin(_txn_id(txn_id), _ms(now_ms), _ms(deadline_ms), _groups(participants))
    if tag == TAG_PREPARE:
        _expect(fields, (6, 7), "TxnPrepare")
        txn_id, home, now_ms, deadline_ms, reads, writes, *rest = fields
        return TxnPrepare(
            _txn_id(txn_id),
            _group(home),
            _ms(now_ms),
            _ms(deadline_ms),
            reads_from_wire(reads),
            writes_from_wire(writes),
            _groups(rest[0]) if rest else (),
        )
    if tag == TAG_DECIDE:
        _expect(fields, (4, 5), "TxnDecide")
        txn_id, now_ms, deadline_ms, state, *rest = fields
        resolve_here = rest[0] if rest else False
        if type(resolve_here) is not bool:
            raise _bad("TxnDecide's resolve_here flag must be a bool")
        return TxnDecide(
            _txn_id(txn_id), _ms(now_ms), _ms(deadline_ms), _decision(state), resolve_here
        )
    if tag == TAG_COMMIT:
        _expect(fields, 6, "TxnCommit")
        txn_id, now_ms, deadline_ms, reads, writes, participants = fields
        return TxnCommit(
            _txn_id(txn_id),
            _ms(now_ms),
            _ms(deadline_ms),
            reads_from_wire(reads),
            writes_from_wire(writes),
            _groups(participants),
        )
    if tag == TAG_RESOLVE:
        _expect(fields, 4, "TxnResolve")
        txn_id, now_ms, committed, decided_ms = fields
        if type(committed) is not bool:
            raise _bad("TxnResolve's committed flag must be a bool")
        return TxnResolve(_txn_id(txn_id), _ms(now_ms), committed, _ms(decided_ms))
    if tag == TAG_FORGET:
        _expect(fields, 2, "TxnForget")
        now_ms, txn_ids = fields
        if type(txn_ids) is not list:
            raise _bad("TxnForget's ids must be an array")
        return TxnForget(_ms(now_ms), tuple(_txn_id(t) for t in txn_ids))
    raise _bad(f"unknown transaction command tag {tag!r}")


def _parts_to_wire(reads: Sequence[TxnRead], writes: Sequence[TxnWrite]) -> list[list[Any]]:
    """A command's read set and write set, as its wire form carries them."""
    return [[read_to_wire(read) for read in reads], [write_to_wire(write) for write in writes]]


def read_to_wire(read: TxnRead) -> list[Any]:
    return [read.digest, read.generation, read.last_update_ms]


def write_to_wire(write: TxnWrite) -> list[Any]:
    policy = write.policy
    return [
        write.digest,
        write.set_name,
        write.user_key,
        [[int(op.code), op.bin, list(op.args)] for op in write.ops],
        [int(policy.exists), int(policy.gen), policy.generation, policy.ttl, policy.send_key],
    ]


def _bad(what: str) -> RaftstoreError:
    return error(ResultCode.PROTOCOL_ERROR, what)


def _expect(fields: list[Any], count: int | tuple[int, ...], what: str) -> None:
    counts = count if isinstance(count, tuple) else (count,)
    if len(fields) not in counts:
        allowed = " or ".join(str(c) for c in counts)
        raise _bad(f"{what} has {allowed} fields, not {len(fields)}")


def _int(value: Any, what: str, low: int, high: int) -> int:
    # Exact type: msgpack decodes true/false as bool, which isinstance(int) accepts.
    if type(value) is not int or not low <= value <= high:
        raise _bad(f"{what} must be an int in {low}..{high}, not {value!r}")
    return value


def _txn_id(value: Any) -> int:
    return _int(value, "txn id", 0, TXN_ID_MAX)


def _ms(value: Any) -> int:
    return _int(value, "a time in ms", 0, limits.INT_MAX)


def _group(value: Any) -> int:
    return _int(value, "a group", 0, GROUP_MAX)


def _groups(value: Any) -> tuple[int, ...]:
    if type(value) is not list:
        raise _bad("participants must be an array")
    return tuple(_group(group) for group in value)


def _decision(value: Any) -> TxnState:
    state = _int(value, "a decision", TxnState.COMMITTED, TxnState.ABORTED)
    return TxnState(state)


def _digest(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != limits.DIGEST_BYTES:
        raise _bad("a digest is 20 bytes")
    return value


def _array(value: Any, what: str) -> Sequence[Any]:
    if type(value) is not list:
        raise _bad(f"{what} must be an array")
    return value


def reads_from_wire(value: Any) -> tuple[TxnRead, ...]:
    """A read set in wire form (an array of `read_to_wire`), or PROTOCOL_ERROR: also for the
    client's commit message."""
    reads = []
    for raw in _array(value, "reads"):
        if type(raw) is not list or len(raw) != 3:
            raise _bad("a read is [digest, generation, last_update_ms]")
        digest, generation, last_update_ms = raw
        reads.append(
            TxnRead(
                _digest(digest),
                _int(generation, "a generation", 0, limits.GENERATION_MAX),
                _ms(last_update_ms),
            )
        )
    return tuple(reads)


def writes_from_wire(value: Any) -> tuple[TxnWrite, ...]:
    """A write set in wire form (an array of `write_to_wire`), or PROTOCOL_ERROR."""
    writes = []
    for raw in _array(value, "writes"):
        if type(raw) is not list or len(raw) != 5:
            raise _bad("a write is [digest, set, user key, ops, policy]")
        digest, set_name, user_key, ops, policy = raw
        if type(set_name) is not str:
            raise _bad("a set name must be a str")
        if user_key is not None and type(user_key) not in (int, str, bytes):
            raise _bad("a user key is an int, a str or bytes")
        writes.append(
            TxnWrite(
                _digest(digest),
                set_name,
                user_key,
                tuple(_op(op) for op in _array(ops, "ops")),
                _policy(policy),
            )
        )
    return tuple(writes)


_OP_CODES: Final = {int(code): code for code in OpCode}


def _op(raw: Any) -> Op:
    if type(raw) is not list or len(raw) != 3:
        raise _bad("an op is [code, bin, args]")
    code, bin_name, args = raw
    if bin_name is not None and type(bin_name) is not str:
        raise _bad("an op's bin name must be a str or nil")
    if type(args) is not list:
        raise _bad("an op's args must be an array")
    op_code = _OP_CODES.get(code) if type(code) is int else None
    if op_code is None:
        raise _bad(f"unknown op code {code!r}")
    return Op(op_code, bin_name, tuple(args))


# Decoded policies by their fields, as in `command_codec`: a few distinct ones carry nearly
# every write, and every replica decodes every prepare and commit. Bounded, so that varying
# generations or ttls cannot grow it without end. Keys are looked up only after the exact
# type checks (True == 1 as a dict key). Not shared with `command_codec`'s cache: that module
# imports this one, and a key it admitted has not passed the range checks made here.
_POLICIES: dict[tuple[int, int, int, int, bool], WritePolicy] = {}
_POLICIES_MAX: Final = 4096


def _policy(raw: Any) -> WritePolicy:
    if type(raw) is not list or len(raw) != 5:
        raise _bad("a policy is [exists, gen, generation, ttl, send_key]")
    exists, gen, generation, ttl, send_key = raw
    if type(send_key) is not bool:
        raise _bad("a policy's send_key must be a bool")
    key = (exists, gen, generation, ttl, send_key)
    if type(exists) is int and type(gen) is int and type(generation) is int and type(ttl) is int:
        cached = _POLICIES.get(key)
        if cached is not None:
            return cached
    try:
        policy = WritePolicy(
            Exists(_int(exists, "exists", 0, 255)),
            Gen(_int(gen, "gen", 0, 255)),
            # Ranges are `operations`' to check (PARAMETER_ERROR), as for any request.
            _int(generation, "generation", limits.INT_MIN, limits.INT_MAX),
            _int(ttl, "ttl", limits.INT_MIN, limits.INT_MAX),
            send_key,
        )
    except ValueError as exc:
        raise _bad(f"bad write policy: {exc}") from None
    if len(_POLICIES) < _POLICIES_MAX:
        _POLICIES[key] = policy
    return policy
