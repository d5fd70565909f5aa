"""The bytes of a Raft log entry: a batch of state-machine commands.

An entry is the msgpack array `[ENTRY_FORMAT, [command, ...]]`, each command an array
tagged by its type: the engine's commands (`raftstore.commands`) by tags 1..5, the
transaction commands (`raftstore.txn_commands`, their own wire form) by tags 10..15; a
`LogCommand` is either. Values inside operations go through `raftstore.codec` (GeoJSON as
an extension type). `decode_batch` checks the shape of everything and raises PROTOCOL_ERROR
for anything else; the caller turns that into per-command failures, never into a crash.

msgpack nests by concatenation, so a command is encoded once (`encode_command`, when it is
queued) and an entry is joined from those bytes (`join_batch`): the same bytes as
`encode_batch` of the commands.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from raftstore import codec
from raftstore.commands import Barrier, Command, Expire, RecordRequest, TombRaid, Truncate
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.ops import Op, OpCode
from raftstore.policy import Exists, Gen, WritePolicy
from raftstore.txn_commands import (
    TXN_COMMAND_TYPES,
    TXN_TAGS,
    TxnCommand,
    txn_command_from_wire,
    txn_command_to_wire,
)

LogCommand = Command | TxnCommand
"""Anything a log entry carries: what `StateMachine.apply_batch` applies."""

ENTRY_FORMAT = 1
_RECORD, _TRUNCATE, _EXPIRE, _TOMB_RAID, _BARRIER = 1, 2, 3, 4, 5
assert not TXN_TAGS & {_RECORD, _TRUNCATE, _EXPIRE, _TOMB_RAID, _BARRIER}
_ENTRY_HEAD = b"\x92" + codec.pack_value(ENTRY_FORMAT)  # fixarray of 2, then the format
_ARRAY16 = struct.Struct(">BH")
_ARRAY32 = struct.Struct(">BI")
_FIXARRAY_LENGTH_MAX = 15
_ARRAY16_LENGTH_MAX = 0xFFFF


def encode_batch(commands: Sequence[LogCommand]) -> bytes:
    return codec.pack_value([ENTRY_FORMAT, [_encode(command) for command in commands]])


def encode_command(command: LogCommand) -> bytes:
    """One command's bytes inside an entry; raises for a value msgpack cannot encode."""
    return codec.pack_value(_encode(command))


def join_batch(encoded: Sequence[bytes]) -> bytes:
    """The entry of commands already encoded by `encode_command`, in order."""
    count = len(encoded)
    if count <= _FIXARRAY_LENGTH_MAX:
        head = bytes((0x90 | count,))
    elif count <= _ARRAY16_LENGTH_MAX:
        head = _ARRAY16.pack(0xDC, count)
    else:
        head = _ARRAY32.pack(0xDD, count)
    return b"".join((_ENTRY_HEAD, head, *encoded))


def decode_batch(entry: bytes) -> list[LogCommand]:
    try:
        version, commands = codec.unpack_value(entry)
        if version != ENTRY_FORMAT:
            raise error(ResultCode.PROTOCOL_ERROR, f"unknown log entry format {version!r}")
        return [_decode(command) for command in commands]
    except RaftstoreError:
        raise
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise error(ResultCode.PROTOCOL_ERROR, f"malformed log entry: {exc!r}") from None


def encode_op(op: Op) -> list[Any]:
    return [int(op.code), op.bin, list(op.args)]


_OP_CODES: dict[int, OpCode] = {int(code): code for code in OpCode}


def decode_op(raw: Any) -> Op:
    if not isinstance(raw, list) or len(raw) != 3:
        raise error(ResultCode.PARAMETER_ERROR, "an op is [code, bin, args]")
    code, bin_name, args = raw
    if bin_name is not None and not isinstance(bin_name, str):
        raise error(ResultCode.PARAMETER_ERROR, "op bin name must be str or None")
    if not isinstance(args, list):
        raise error(ResultCode.PARAMETER_ERROR, "op args must be a list")
    if not isinstance(code, int) or isinstance(code, bool):
        raise error(ResultCode.PARAMETER_ERROR, f"op code must be an int, not {code!r}")
    op_code = _OP_CODES.get(code)
    if op_code is None:
        raise error(ResultCode.PARAMETER_ERROR, f"unknown op code {code!r}")
    return Op(op_code, bin_name, tuple(args))


def encode_policy(policy: WritePolicy) -> list[Any]:
    return [int(policy.exists), int(policy.gen), policy.generation, policy.ttl, policy.send_key]


# Decoded policies by their fields: a few distinct ones carry nearly every request. Frozen,
# so shared; bounded, so a client varying generation or ttl cannot grow it without end.
_POLICIES: dict[tuple[int, int, int, int, bool], WritePolicy] = {}
_POLICIES_MAX = 4096


def decode_policy(raw: Any) -> WritePolicy:
    if not isinstance(raw, list) or len(raw) != 5:
        raise error(ResultCode.PARAMETER_ERROR, "a policy is [exists, gen, generation, ttl, key]")
    exists, gen, generation, ttl, send_key = raw
    if not (
        type(exists) is int and type(gen) is int and type(generation) is int and type(ttl) is int
    ) and not all(isinstance(v, int) and not isinstance(v, bool) for v in raw[:4]):
        raise error(ResultCode.PARAMETER_ERROR, "policy fields must be ints")
    key = (exists, gen, generation, ttl, bool(send_key))
    policy = _POLICIES.get(key)
    if policy is not None:
        return policy
    try:
        policy = WritePolicy(Exists(exists), Gen(gen), generation, ttl, key[4])
    except ValueError as exc:
        raise error(ResultCode.PARAMETER_ERROR, f"bad write policy: {exc}") from None
    if len(_POLICIES) < _POLICIES_MAX:
        _POLICIES[key] = policy
    return policy


def _encode(command: LogCommand) -> list[Any]:
    if isinstance(command, RecordRequest):
        return [
            _RECORD,
            command.client_id,
            command.request_seq,
            command.acked_seq,
            command.now_ms,
            command.digest,
            command.set_name,
            [encode_op(op) for op in command.ops],
            encode_policy(command.policy),
            command.user_key,
        ]
    if isinstance(command, Truncate):
        return [_TRUNCATE, command.now_ms, command.set_name, command.before_ms]
    if isinstance(command, Expire):
        return [_EXPIRE, command.now_ms, list(command.digests)]
    if isinstance(command, TombRaid):
        return [_TOMB_RAID, command.now_ms]
    if isinstance(command, TXN_COMMAND_TYPES):
        return txn_command_to_wire(command)
    assert isinstance(command, Barrier), command
    return [_BARRIER]


def _decode(raw: Any) -> LogCommand:
    tag = raw[0]
    if tag == _RECORD:
        _, client_id, seq, acked, now_ms, digest, set_name, ops, policy, user_key = raw
        return RecordRequest(
            client_id=int(client_id),
            request_seq=int(seq),
            acked_seq=int(acked),
            now_ms=int(now_ms),
            digest=digest if type(digest) is bytes else bytes(digest),
            set_name=set_name if type(set_name) is str else str(set_name),
            ops=tuple([decode_op(op) for op in ops]),
            policy=decode_policy(policy),
            user_key=user_key,
        )
    if tag == _TRUNCATE:
        _, now_ms, set_name, before_ms = raw
        return Truncate(int(now_ms), None if set_name is None else str(set_name), int(before_ms))
    if tag == _EXPIRE:
        _, now_ms, digests = raw
        return Expire(int(now_ms), tuple(bytes(d) for d in digests))
    if tag == _TOMB_RAID:
        return TombRaid(int(raw[1]))
    if tag == _BARRIER:
        return Barrier()
    if tag in TXN_TAGS:
        return txn_command_from_wire(raw)
    raise error(ResultCode.PROTOCOL_ERROR, f"unknown command tag {tag!r}")
