"""The bytes of a Raft log entry: a batch of state-machine commands.

An entry is the msgpack array `[ENTRY_FORMAT, [command, ...]]`, each command an array
tagged by its type. Values inside operations go through `raftstore.codec` (GeoJSON as an
extension type). `decode_batch` checks the shape of everything and raises PROTOCOL_ERROR
for anything else; the caller turns that into per-command failures, never into a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raftstore import codec
from raftstore.commands import Barrier, Command, Expire, RecordRequest, TombRaid, Truncate
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.ops import Op, OpCode
from raftstore.policy import Exists, Gen, WritePolicy

ENTRY_FORMAT = 1
_RECORD, _TRUNCATE, _EXPIRE, _TOMB_RAID, _BARRIER = 1, 2, 3, 4, 5


def encode_batch(commands: Sequence[Command]) -> bytes:
    return codec.pack_value([ENTRY_FORMAT, [_encode(command) for command in commands]])


def decode_batch(entry: bytes) -> list[Command]:
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
    try:
        op_code = OpCode(code)
    except ValueError:
        raise error(ResultCode.PARAMETER_ERROR, f"unknown op code {code!r}") from None
    return Op(op_code, bin_name, tuple(args))


def encode_policy(policy: WritePolicy) -> list[Any]:
    return [int(policy.exists), int(policy.gen), policy.generation, policy.ttl, policy.send_key]


def decode_policy(raw: Any) -> WritePolicy:
    if not isinstance(raw, list) or len(raw) != 5:
        raise error(ResultCode.PARAMETER_ERROR, "a policy is [exists, gen, generation, ttl, key]")
    exists, gen, generation, ttl, send_key = raw
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in raw[:4]):
        raise error(ResultCode.PARAMETER_ERROR, "policy fields must be ints")
    try:
        return WritePolicy(Exists(exists), Gen(gen), generation, ttl, bool(send_key))
    except ValueError as exc:
        raise error(ResultCode.PARAMETER_ERROR, f"bad write policy: {exc}") from None


def _encode(command: Command) -> list[Any]:
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
    assert isinstance(command, Barrier), command
    return [_BARRIER]


def _decode(raw: Any) -> Command:
    tag = raw[0]
    if tag == _RECORD:
        _, client_id, seq, acked, now_ms, digest, set_name, ops, policy, user_key = raw
        return RecordRequest(
            client_id=int(client_id),
            request_seq=int(seq),
            acked_seq=int(acked),
            now_ms=int(now_ms),
            digest=bytes(digest),
            set_name=str(set_name),
            ops=tuple(decode_op(op) for op in ops),
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
    raise error(ResultCode.PROTOCOL_ERROR, f"unknown command tag {tag!r}")
