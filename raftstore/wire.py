"""The client <-> server protocol: length-prefixed msgpack frames, typed messages, sans I/O.

A frame is a 4-byte big-endian body length followed by the body, at most FRAME_BYTES_MAX.
A body is the msgpack array `[PROTOCOL_VERSION, request_id, kind, payload...]`.

Requests (client -> server) and their kinds:
    RECORD    one operation list on one record (reads, writes, deletes, CDT ops)
    INFO      an info command: "namespaces", "namespace/<ns>", "statistics", "partition-map",
              "cluster-stable", "status", "build"
    SCAN      a page of records of some partitions (and optionally one set)
    TRUNCATE  truncate a set or a namespace, for the partition groups this node leads
    TXN_COMMIT  commit a transaction (its read versions and buffered writes) at the leader of
              its home group, which coordinates it; or (`status_only`) settle and report the
              outcome of an earlier commit whose answer was lost
    TXN_STEP  one transaction command for a partition group this node leads (node to node:
              a coordinator's prepare/decide/resolve, a recovery), or a linearizable read of a
              transaction record (`command` None)
Every request is answered by exactly one RESPONSE with the same request_id; a client may
have many requests outstanding on one connection (pipelining) and match answers by id.

Rules:
- Decoding validates shape and types and raises a `RaftstoreError` (PROTOCOL_ERROR for a
  malformed frame, PARAMETER_ERROR for a well-formed request with a bad field); the server
  answers it and keeps serving. `assert` is never used on peer input.
- A peer that sends an oversized frame, or a version this build does not speak, gets an
  error response and the connection is closed: the stream cannot be trusted after it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any

from raftstore import codec, limits
from raftstore.command_codec import decode_op, decode_policy, encode_op, encode_policy
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.ops import Op
from raftstore.policy import DEFAULT_WRITE_POLICY, WritePolicy
from raftstore.txn_commands import (
    GROUP_MAX,
    TXN_ID_MAX,
    TxnCommand,
    TxnRead,
    TxnWrite,
    read_to_wire,
    reads_from_wire,
    txn_command_from_wire,
    txn_command_to_wire,
    write_to_wire,
    writes_from_wire,
)

PROTOCOL_VERSION = 1
FRAME_BYTES_MAX = limits.RECORD_BYTES_MAX + 1024 * 1024  # a largest record plus its envelope
LENGTH = struct.Struct(">I")


class Kind(enum.IntEnum):
    RECORD = 1
    INFO = 2
    SCAN = 3
    TRUNCATE = 4
    TXN_COMMIT = 5
    TXN_STEP = 6
    RESPONSE = 100


class ReadMode(enum.IntEnum):
    """`read_mode_sc`, with the official client's numbers."""

    SESSION = 0
    LINEARIZE = 1


@dataclass(frozen=True, slots=True)
class RecordMsg:
    namespace: str
    digest: bytes
    set_name: str
    ops: tuple[Op, ...]
    policy: WritePolicy = DEFAULT_WRITE_POLICY
    user_key: int | str | bytes | None = None
    read_mode: ReadMode = ReadMode.LINEARIZE
    client_id: int = 0
    request_seq: int = 0
    acked_seq: int = 0
    timeout_ms: int = 1000


@dataclass(frozen=True, slots=True)
class InfoMsg:
    command: str


@dataclass(frozen=True, slots=True)
class ScanMsg:
    namespace: str
    set_name: str | None
    partition_ids: tuple[int, ...]
    after_digest: bytes | None = None  # resume after this digest (exclusive)
    max_records: int = 1000
    read_mode: ReadMode = ReadMode.LINEARIZE


@dataclass(frozen=True, slots=True)
class TruncateMsg:
    namespace: str
    set_name: str | None
    before_ms: int = 0  # 0: everything written up to now
    groups: tuple[int, ...] = ()  # the groups to truncate; empty: every group this node leads


@dataclass(frozen=True, slots=True)
class TxnCommitMsg:
    """A transaction to commit. `home_digest` (a key of the transaction) names the home
    group. The message goes to the leader of any group of the transaction, which
    coordinates. `timeout_ms` is the time left to the deadline as the client counts it when
    sending."""

    namespace: str
    txn_id: int
    home_digest: bytes
    timeout_ms: int
    reads: tuple[TxnRead, ...]
    writes: tuple[TxnWrite, ...]
    status_only: bool = False


@dataclass(frozen=True, slots=True)
class TxnStepMsg:
    """`command` proposed in `group` by its leader (restamped with the leader's clock); or,
    with `command` None, a linearizable read of the transaction record `txn_id` there."""

    namespace: str
    group: int
    command: TxnCommand | None
    txn_id: int = 0


Request = RecordMsg | InfoMsg | ScanMsg | TruncateMsg | TxnCommitMsg | TxnStepMsg


@dataclass(frozen=True, slots=True)
class Response:
    code: int = ResultCode.OK
    message: str = ""
    generation: int = 0
    ttl: int = 0  # seconds left, -1 never expires, 0 when not about a record
    results: tuple[tuple[str | None, Any], ...] = ()
    value: Any = None  # info value, scan page, truncate summary
    partition_map: dict[str, Any] | None = field(default=None)  # with NOT_LEADER
    in_doubt: bool = False
    last_update_ms: int = 0  # with a record: its version is (generation, last_update_ms)


# -- framing ---------------------------------------------------------------------------------


class FrameReader:
    """Cuts a byte stream into frame bodies. Sans I/O: feed bytes, take bodies."""

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        self.frame_bytes_max = frame_bytes_max
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        bodies = []
        while len(self.buffer) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self.buffer)
            if length > self.frame_bytes_max:
                raise error(
                    ResultCode.PROTOCOL_ERROR,
                    f"frame of {length} bytes is over the limit of {self.frame_bytes_max}",
                )
            end = LENGTH.size + length
            if len(self.buffer) < end:
                break
            bodies.append(bytes(self.buffer[LENGTH.size : end]))
            del self.buffer[:end]
        return bodies


def frame(body: bytes) -> bytes:
    if len(body) > FRAME_BYTES_MAX:
        raise error(ResultCode.PARAMETER_ERROR, f"message of {len(body)} bytes is too large")
    return LENGTH.pack(len(body)) + body


# -- requests --------------------------------------------------------------------------------


def encode_request(request_id: int, message: Request) -> bytes:
    return frame(codec.pack_value([PROTOCOL_VERSION, request_id, *_request_fields(message)]))


def _request_fields(message: Request) -> list[Any]:
    if isinstance(message, RecordMsg):
        return [
            Kind.RECORD,
            message.namespace,
            message.digest,
            message.set_name,
            [encode_op(op) for op in message.ops],
            encode_policy(message.policy),
            message.user_key,
            int(message.read_mode),
            message.client_id,
            message.request_seq,
            message.acked_seq,
            message.timeout_ms,
        ]
    if isinstance(message, InfoMsg):
        return [Kind.INFO, message.command]
    if isinstance(message, ScanMsg):
        return [
            Kind.SCAN,
            message.namespace,
            message.set_name,
            list(message.partition_ids),
            message.after_digest,
            message.max_records,
            int(message.read_mode),
        ]
    if isinstance(message, TruncateMsg):
        return [
            Kind.TRUNCATE,
            message.namespace,
            message.set_name,
            message.before_ms,
            list(message.groups),
        ]
    if isinstance(message, TxnCommitMsg):
        return [
            Kind.TXN_COMMIT,
            message.namespace,
            message.txn_id,
            message.home_digest,
            message.timeout_ms,
            [read_to_wire(read) for read in message.reads],
            [write_to_wire(write) for write in message.writes],
            message.status_only,
        ]
    command = None if message.command is None else txn_command_to_wire(message.command)
    return [Kind.TXN_STEP, message.namespace, message.group, command, message.txn_id]


def peek_request_id(body: bytes) -> int:
    """The request id of a body that may not decode further (0 when even that fails)."""
    try:
        fields = codec.unpack_value(body)
    except RaftstoreError:
        return 0
    return _request_id_of(fields)


def speaks_our_version(body: bytes) -> bool:
    """False when the body decodes to an envelope of another protocol version: the stream is
    then someone else's protocol, and the connection is to be closed after answering."""
    try:
        fields = codec.unpack_value(body)
    except RaftstoreError:
        return True  # not an envelope at all: a malformed message, answered, not fatal
    return _our_version(fields)


def _request_id_of(fields: Any) -> int:
    try:
        request_id = fields[1]
    except (TypeError, IndexError, KeyError):
        return 0
    return request_id if isinstance(request_id, int) else 0


def _our_version(fields: Any) -> bool:
    try:
        version = fields[0]
    except (TypeError, IndexError, KeyError):
        return True  # not an envelope at all: a malformed message, answered, not fatal
    return bool(version == PROTOCOL_VERSION)


@dataclass(frozen=True, slots=True)
class Refused:
    """A request body that does not decode: answer `code` to `request_id`; when `fatal` (a
    foreign protocol version) close the connection after the answer."""

    request_id: int
    code: int
    message: str
    fatal: bool = False


def read_request(body: bytes) -> tuple[int, Request] | Refused:
    """`decode_request` with the refusal as a value, decoding the body's msgpack once (the
    listener's path: `peek_request_id`, `speaks_our_version` and `decode_request` in one)."""
    try:
        fields = codec.unpack_value(body)
    except RaftstoreError as exc:
        return Refused(0, exc.code, exc.msg)
    request_id = _request_id_of(fields)
    if not _our_version(fields):
        message = "protocol version not spoken here; closing"
        return Refused(request_id, ResultCode.PROTOCOL_ERROR, message, fatal=True)
    try:
        return _decode_request_fields(_check_envelope(fields))
    except RaftstoreError as exc:
        return Refused(request_id, exc.code, exc.msg)


def decode_request(body: bytes) -> tuple[int, Request]:
    return _decode_request_fields(_unpack_envelope(body))


def _decode_request_fields(fields: list[Any]) -> tuple[int, Request]:
    request_id, kind, rest = fields[1], fields[2], fields[3:]
    try:
        if kind == Kind.RECORD:
            return request_id, _decode_record(rest)
        if kind == Kind.INFO:
            (command,) = rest
            return request_id, InfoMsg(_str(command, "info command"))
        if kind == Kind.SCAN:
            return request_id, _decode_scan(rest)
        if kind == Kind.TRUNCATE:
            namespace, set_name, before_ms, groups = rest
            return request_id, TruncateMsg(
                _str(namespace, "namespace"),
                _opt_str(set_name, "set"),
                _int(before_ms, "before_ms"),
                tuple(_int(g, "group") for g in _list(groups, "groups")),
            )
        if kind == Kind.TXN_COMMIT:
            return request_id, _decode_txn_commit(rest)
        if kind == Kind.TXN_STEP:
            namespace, group, command, txn_id = rest
            return request_id, TxnStepMsg(
                _str(namespace, "namespace"),
                _bounded(group, "group", GROUP_MAX),
                None if command is None else txn_command_from_wire(command),
                _bounded(txn_id, "txn id", TXN_ID_MAX),
            )
    except ValueError as exc:  # wrong number of fields
        raise error(ResultCode.PROTOCOL_ERROR, f"malformed request: {exc}") from None
    raise error(ResultCode.PROTOCOL_ERROR, f"unknown request kind {kind!r}")


def _unpack_envelope(body: bytes) -> list[Any]:
    return _check_envelope(codec.unpack_value(body))


def _check_envelope(fields: Any) -> list[Any]:
    if not isinstance(fields, list) or len(fields) < 3:
        raise error(ResultCode.PROTOCOL_ERROR, "a message is an array [version, id, kind, ...]")
    if fields[0] != PROTOCOL_VERSION:
        raise error(ResultCode.PROTOCOL_ERROR, f"protocol version {fields[0]!r} not spoken here")
    if not isinstance(fields[1], int) or isinstance(fields[1], bool):
        raise error(ResultCode.PROTOCOL_ERROR, "request id must be an int")
    return fields


def _decode_record(rest: list[Any]) -> RecordMsg:
    (
        namespace,
        digest,
        set_name,
        raw_ops,
        raw_policy,
        user_key,
        read_mode,
        client_id,
        request_seq,
        acked_seq,
        timeout_ms,
    ) = rest
    try:
        ops = tuple(decode_op(raw) for raw in _list(raw_ops, "ops"))
        policy = decode_policy(_list(raw_policy, "policy"))
        mode = ReadMode(_int(read_mode, "read_mode_sc"))
    except ValueError as exc:
        raise error(ResultCode.PARAMETER_ERROR, f"bad policy: {exc}") from None
    if user_key is not None and not isinstance(user_key, int | str | bytes):
        raise error(ResultCode.PARAMETER_ERROR, "user key must be int, str or bytes")
    return RecordMsg(
        namespace=_str(namespace, "namespace"),
        digest=_digest(digest),
        set_name=_str(set_name, "set"),
        ops=ops,
        policy=policy,
        user_key=user_key,
        read_mode=mode,
        client_id=_int(client_id, "client id"),
        request_seq=_int(request_seq, "request seq"),
        acked_seq=_int(acked_seq, "acked seq"),
        timeout_ms=_int(timeout_ms, "timeout"),
    )


def _decode_txn_commit(rest: list[Any]) -> TxnCommitMsg:
    namespace, txn_id, home_digest, timeout_ms, reads, writes, status_only = rest
    if not isinstance(status_only, bool):
        raise error(ResultCode.PARAMETER_ERROR, "status_only must be a bool")
    return TxnCommitMsg(
        namespace=_str(namespace, "namespace"),
        txn_id=_bounded(txn_id, "txn id", TXN_ID_MAX),
        home_digest=_digest(home_digest),
        timeout_ms=_int(timeout_ms, "timeout"),
        reads=reads_from_wire(reads),
        writes=writes_from_wire(writes),
        status_only=status_only,
    )


def _decode_scan(rest: list[Any]) -> ScanMsg:
    namespace, set_name, partition_ids, after_digest, max_records, read_mode = rest
    pids = tuple(_int(p, "partition id") for p in _list(partition_ids, "partition ids"))
    if any(not 0 <= p < limits.PARTITIONS for p in pids):
        raise error(ResultCode.PARAMETER_ERROR, "partition ids are 0..4095")
    count = _int(max_records, "max records")
    if not 1 <= count <= 100_000:
        raise error(ResultCode.PARAMETER_ERROR, "max records must be 1..100000")
    try:
        mode = ReadMode(_int(read_mode, "read_mode_sc"))
    except ValueError as exc:
        raise error(ResultCode.PARAMETER_ERROR, f"bad read mode: {exc}") from None
    return ScanMsg(
        namespace=_str(namespace, "namespace"),
        set_name=_opt_str(set_name, "set"),
        partition_ids=pids,
        after_digest=None if after_digest is None else _digest(after_digest),
        max_records=count,
        read_mode=mode,
    )


# -- responses -------------------------------------------------------------------------------


def encode_response(request_id: int, response: Response) -> bytes:
    return frame(
        codec.pack_value(
            [
                PROTOCOL_VERSION,
                request_id,
                Kind.RESPONSE,
                response.code,
                response.message,
                response.generation,
                response.ttl,
                [list(entry) for entry in response.results],
                response.value,
                response.partition_map,
                response.in_doubt,
                response.last_update_ms,
            ]
        )
    )


def decode_response(body: bytes) -> tuple[int, Response]:
    fields = _unpack_envelope(body)
    if fields[2] != Kind.RESPONSE:
        raise error(ResultCode.PROTOCOL_ERROR, f"expected a response, got kind {fields[2]!r}")
    try:
        (
            code,
            message,
            generation,
            ttl,
            results,
            value,
            partition_map,
            in_doubt,
            last_update_ms,
        ) = fields[3:]
        entries = tuple((entry[0], entry[1]) for entry in _list(results, "results"))
    except (ValueError, TypeError, IndexError) as exc:
        raise error(ResultCode.PROTOCOL_ERROR, f"malformed response: {exc}") from None
    return fields[1], Response(
        code=_int(code, "code"),
        message=_str(message, "message"),
        generation=_int(generation, "generation"),
        ttl=_int(ttl, "ttl"),
        results=entries,
        value=value,
        partition_map=partition_map if isinstance(partition_map, dict) else None,
        in_doubt=bool(in_doubt),
        last_update_ms=_int(last_update_ms, "last_update_ms"),
    )


# -- field checks ----------------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(ResultCode.PARAMETER_ERROR, f"{what} must be an int")
    return value


def _bounded(value: Any, what: str, high: int) -> int:
    number = _int(value, what)
    if not 0 <= number <= high:
        raise error(ResultCode.PARAMETER_ERROR, f"{what} must be in 0..{high}")
    return number


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise error(ResultCode.PARAMETER_ERROR, f"{what} must be a str")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise error(ResultCode.PARAMETER_ERROR, f"{what} must be a list")
    return value


def _digest(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != limits.DIGEST_BYTES:
        raise error(ResultCode.PARAMETER_ERROR, "digest must be 20 bytes")
    return value
