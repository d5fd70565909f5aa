"""Commands the state machine applies, and the result it answers each with.

Commands are frozen data. Everything that varies between replicas (the clock, the client's
identity) is stamped into the command by the node that proposes it, so applying the same
commands in the same order gives the same results on every replica.

Exactly-once: a `RecordRequest` carries `(client_id, request_seq)`. The state machine stores
its `Result` in the session table; a repeat of the same pair is answered from there, never
applied twice. `acked_seq` is the client's promise that it holds every reply below it, so
those stored results may be forgotten; a request below that floor is answered
SESSION_EXPIRED (outcome unknown), never applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from raftstore import codec
from raftstore.errors import ResultCode
from raftstore.frozen import fast_init
from raftstore.ops import Op
from raftstore.policy import DEFAULT_WRITE_POLICY, WritePolicy
from raftstore.record import UserKey


@fast_init
@dataclass(frozen=True, slots=True)
class RecordRequest:
    """A client's operation list on one record."""

    client_id: int
    request_seq: int
    acked_seq: int
    now_ms: int
    digest: bytes
    set_name: str
    ops: tuple[Op, ...]
    policy: WritePolicy = DEFAULT_WRITE_POLICY
    user_key: UserKey | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    """Delete (durably) every record of a set, or of the namespace when `set_name` is None,
    last updated at or before `before_ms`."""

    now_ms: int
    set_name: str | None
    before_ms: int


@dataclass(frozen=True, slots=True)
class Expire:
    """Delete (durably) those of `digests` that are past their void time at `now_ms`.
    The leader proposes candidates; the state machine checks each again."""

    now_ms: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TombRaid:
    """Remove tombstones older than the namespace's tomb-raider-period, and forget idle
    client sessions."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class Barrier:
    """A no-op through the log: when it is applied, every earlier command is applied."""


Command = RecordRequest | Truncate | Expire | TombRaid | Barrier


_CODE_OK = int(ResultCode.OK)  # a global: an enum member is a slower read (CPython 3.11)


@fast_init
@dataclass(frozen=True, slots=True)
class Result:
    code: int = ResultCode.OK
    generation: int = 0
    void_time: int = 0
    results: tuple[tuple[str | None, Any], ...] = ()
    message: str = ""
    count: int = 0  # records affected, for truncate / expire / tomb raid
    last_update_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.code == _CODE_OK


OK = Result()
# Hot paths build results positionally (cheaper than by keyword): pin the order.
assert [f.name for f in fields(Result)] == [
    "code",
    "generation",
    "void_time",
    "results",
    "message",
    "count",
    "last_update_ms",
]


def failure(code: int, message: str) -> Result:
    return Result(code=code, message=message)


def encode_result(result: Result) -> bytes:
    return codec.pack_value(
        [
            result.code,
            result.generation,
            result.void_time,
            [list(entry) for entry in result.results],
            result.message,
            result.count,
            result.last_update_ms,
        ]
    )


def decode_result(data: bytes) -> Result:
    code, generation, void_time, results, message, count, last_update_ms = codec.unpack_value(data)
    return Result(
        code=code,
        generation=generation,
        void_time=void_time,
        results=tuple((entry[0], entry[1]) for entry in results),
        message=message,
        count=count,
        last_update_ms=last_update_ms,
    )


@dataclass(slots=True)
class BatchOutcome:
    results: list[Result] = field(default_factory=list)
