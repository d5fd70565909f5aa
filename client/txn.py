"""Multi-record transactions in the SDK, in the official client's shape.

    txn = client.Transaction()                    # timeout in seconds (0: 10 s), 1..120
    db.put(key_a, {"balance": 90}, policy={"txn": txn})
    _, _, bins = db.get(key_b, policy={"txn": txn})
    db.commit(txn)                                # client.COMMIT_OK, or raises
    db.abort(txn)                                 # drop it (nothing was sent)

    with db.transaction(timeout=10) as t:         # commits on leaving, aborts on exception
        _, _, a = t.get(key_a)
        t.put(key_a, {"balance": a["balance"] - 10})

Rules (docs/transactions.md has the server's half):
- One namespace per transaction. Its home group is the group of the first key it touches.
- A key's first read goes to its leader (SESSION: no log round; the commit validates it) and
  is kept with its version (generation, last-update ms; (0, 0) when absent): later reads of
  it are repeatable and see the transaction's own writes, applied locally by the pure
  `raftstore.operations`.
- `put` / `remove` are buffered as op lists, nothing is sent before the commit, and nothing
  is visible to anyone else before it. An `operate` reads the record first (its results
  depend on it). The first write of a key may carry exists/gen conditions; later writes of
  the same key may only change the ttl (they apply to what the transaction itself wrote).
- `commit` sends one `TxnCommitMsg` (read versions + write op lists) to the leader of a
  written key's group other than the home group if there is one (`coordinator_key`), else
  to the home group's leader; that leader coordinates. OK: committed. A definite failure:
  aborted, raised (120 blocked, 121 version mismatch, 122 expired, ...; nothing was
  applied). Unknown: the SDK asks the leader of the same group (by now maybe another node)
  to settle it (`status_only`; an open transaction is then aborted) and raises
  `in_doubt=True` only if that is unknown too; `txn_status` asks again later.
- Limits, checked as the transaction grows: 4096 written records (MRT_TOO_MANY_WRITES), the
  ops of one key (1024), and the encoded commit within the frame limit (RECORD_TOO_BIG).
- Local results (generation, ttl, ops' results inside the transaction) are computed with
  default namespace settings: the server computes the committed records itself.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from client.key_tuples import KeyRef
from raftstore import codec, limits, operations, wire
from raftstore.clock import TTL_NAMESPACE_DEFAULT, citrusleaf_seconds
from raftstore.config import NamespaceConfig
from raftstore.errors import ResultCode, error
from raftstore.ops import Op
from raftstore.policy import Exists, Gen, WritePolicy
from raftstore.record import Record
from raftstore.txn_commands import (
    TXN_TIMEOUT_MS_DEFAULT,
    TXN_TIMEOUT_MS_MAX,
    TXN_TIMEOUT_MS_MIN,
    TXN_WRITES_MAX,
    TxnRead,
    TxnWrite,
    read_to_wire,
    write_to_wire,
)

TXN_STATE_OPEN, TXN_STATE_VERIFIED, TXN_STATE_COMMITTED, TXN_STATE_ABORTED = 0, 1, 2, 3
COMMIT_OK, COMMIT_ALREADY_COMMITTED = 0, 1
ABORT_OK, ABORT_ALREADY_ABORTED = 0, 1
# The encoded commit must fit a frame with room for the envelope.
TXN_COMMIT_BYTES_MAX = limits.RECORD_BYTES_MAX


@dataclass(slots=True)
class _Read:
    version: tuple[int, int]
    record: Record | None  # the committed record read (None: absent)


@dataclass(slots=True)
class _Write:
    ref: KeyRef
    ops: list[Op]
    policy: WritePolicy
    send_key: bool


@dataclass(slots=True)
class _Keys:
    reads: dict[bytes, _Read] = field(default_factory=dict)
    writes: dict[bytes, _Write] = field(default_factory=dict)
    first: KeyRef | None = None  # the home key


class Transaction:
    """A multi-record transaction (`aerospike.Transaction`). Not shared between threads
    while it runs; `id`, `state`, `in_doubt` and `timeout` (seconds) as in the official."""

    def __init__(
        self, reads_capacity: int = 128, writes_capacity: int = 128, timeout: float = 0
    ) -> None:
        for name, capacity in (
            ("reads_capacity", reads_capacity),
            ("writes_capacity", writes_capacity),
        ):
            if not isinstance(capacity, int) or capacity < 16:
                raise error(ResultCode.PARAM_ERROR, f"{name} must be an int >= 16")
        self.id = secrets.randbits(64) or 1
        self.state = TXN_STATE_OPEN
        self.in_doubt = False
        self.namespace: str | None = None
        self.started: float | None = None  # monotonic seconds at the first operation
        self._timeout_ms = TXN_TIMEOUT_MS_DEFAULT
        self.timeout = timeout
        self.keys = _Keys()
        self.lock = threading.Lock()

    @property
    def timeout(self) -> float:
        return self._timeout_ms / 1000

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        if self.started is not None:
            raise error(ResultCode.PARAM_ERROR, "the timeout is fixed once the transaction ran")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise error(ResultCode.PARAM_ERROR, "timeout must be a number of seconds")
        if seconds == 0:
            self._timeout_ms = TXN_TIMEOUT_MS_DEFAULT
            return
        timeout_ms = int(seconds * 1000)
        if not TXN_TIMEOUT_MS_MIN <= timeout_ms <= TXN_TIMEOUT_MS_MAX:
            raise error(
                ResultCode.PARAM_ERROR,
                f"transaction timeout must be {TXN_TIMEOUT_MS_MIN // 1000}.."
                f"{TXN_TIMEOUT_MS_MAX // 1000} s (0: {TXN_TIMEOUT_MS_DEFAULT // 1000} s)",
            )
        self._timeout_ms = timeout_ms

    # -- for the client ---------------------------------------------------------------------------

    def enter(self, ref: KeyRef) -> None:
        """Check that `ref` may join: the transaction is open and of one namespace."""
        if self.state == TXN_STATE_COMMITTED:
            raise error(ResultCode.MRT_COMMITTED, f"transaction {self.id} is committed")
        if self.state == TXN_STATE_ABORTED:
            raise error(ResultCode.MRT_ABORTED, f"transaction {self.id} is aborted")
        if self.namespace is None:
            self.namespace = ref.namespace
            self.started = time.monotonic()
        elif ref.namespace != self.namespace:
            raise error(
                ResultCode.PARAM_ERROR,
                f"a transaction spans one namespace ({self.namespace!r}), not {ref.namespace!r}",
            )
        if self.keys.first is None:
            self.keys.first = ref
        if self.time_left_ms() <= 0:
            raise error(ResultCode.MRT_EXPIRED, f"transaction {self.id} passed its deadline")

    def time_left_ms(self) -> int:
        if self.started is None:
            return self._timeout_ms
        return self._timeout_ms - int((time.monotonic() - self.started) * 1000)

    def cached(self, digest: bytes) -> _Read | None:
        return self.keys.reads.get(digest)

    def remember(self, digest: bytes, record: Record | None) -> None:
        if digest not in self.keys.reads:
            version = (0, 0) if record is None else (record.generation, record.last_update_ms)
            self.keys.reads[digest] = _Read(version, record)

    def view(self, ref: KeyRef, now_ms: int) -> Record | None:
        """The record as this transaction sees it: the committed one read, with the
        transaction's own writes applied. The key must have been read (`remember`)."""
        read = self.keys.reads[ref.digest]
        write = self.keys.writes.get(ref.digest)
        record = read.record
        if write is not None:
            record = _apply(record, ref, write.ops, write.policy, now_ms).record
        return _live(record, now_ms)

    def buffer(self, ref: KeyRef, ops: Sequence[Op], policy: WritePolicy, send_key: bool) -> None:
        """Add a write of `ops` on `ref` (checked for the limits in the module docstring)."""
        writes = self.keys.writes
        write = writes.get(ref.digest)
        if write is None:
            if len(writes) >= TXN_WRITES_MAX:
                raise error(
                    ResultCode.MRT_TOO_MANY_WRITES,
                    f"a transaction writes at most {TXN_WRITES_MAX} records",
                )
            writes[ref.digest] = _Write(ref, list(ops), policy, send_key)
            return
        if policy.exists is not Exists.IGNORE or policy.gen is not Gen.IGNORE:
            raise error(
                ResultCode.PARAM_ERROR,
                "only the first write of a key in a transaction may carry exists/gen conditions",
            )
        if len(write.ops) + len(ops) > limits.OPS_PER_REQUEST_MAX:
            raise error(
                ResultCode.PARAM_ERROR,
                f"a transaction applies at most {limits.OPS_PER_REQUEST_MAX} ops to one key",
            )
        write.ops.extend(ops)
        if policy.ttl != TTL_NAMESPACE_DEFAULT:
            write.policy = replace(write.policy, ttl=policy.ttl)
        write.send_key = write.send_key or send_key

    def coordinator_key(self, partition_groups: int | None) -> KeyRef:
        """The key whose group's leader gets the commit and coordinates it: the first written
        key outside the home group if there is one, else the home key. Outside the home
        group, that leader's own prepare and resolve are local calls, not steps to another
        node: a two-group transaction then needs one node-to-node step instead of two.
        `partition_groups` None (no partition map yet): the home key."""
        home = self.keys.first
        assert home is not None
        if partition_groups is None:
            return home
        home_group = home.partition_id % partition_groups
        for write in self.keys.writes.values():
            if write.ref.partition_id % partition_groups != home_group:
                return write.ref
        return home

    def commit_parts(self) -> tuple[tuple[TxnRead, ...], tuple[TxnWrite, ...]]:
        reads = tuple(
            TxnRead(digest, read.version[0], read.version[1])
            for digest, read in self.keys.reads.items()
        )
        writes = tuple(
            TxnWrite(
                digest,
                write.ref.wire_set_name,
                write.ref.user_key if write.send_key else None,
                tuple(write.ops),
                write.policy,
            )
            for digest, write in self.keys.writes.items()
        )
        size = len(
            codec.pack_value([[read_to_wire(r) for r in reads], [write_to_wire(w) for w in writes]])
        )
        if size > TXN_COMMIT_BYTES_MAX:
            raise error(
                ResultCode.RECORD_TOO_BIG,
                f"transaction of {size} bytes is over the limit of {TXN_COMMIT_BYTES_MAX}",
            )
        return reads, writes


def apply_local(
    record: Record | None, ref: KeyRef, ops: Sequence[Op], policy: WritePolicy, now_ms: int
) -> operations.Outcome:
    """`ops` on the transaction's view of a record, as the server would (default settings)."""
    return _apply(_live(record, now_ms), ref, ops, policy, now_ms)


def record_from_read(
    ref: KeyRef, response: wire.Response, bins: dict[str, object], now_ms: int
) -> Record:
    """The committed record a full read answered, rebuilt for local use."""
    ttl = response.ttl
    void_time = 0 if ttl <= 0 else citrusleaf_seconds(now_ms) + ttl
    return Record(
        response.generation, void_time, response.last_update_ms, ref.wire_set_name, dict(bins)
    )


_NAMESPACE_DEFAULTS: dict[str, NamespaceConfig] = {}


def _apply(
    record: Record | None, ref: KeyRef, ops: Sequence[Op], policy: WritePolicy, now_ms: int
) -> operations.Outcome:
    namespace = _NAMESPACE_DEFAULTS.get(ref.namespace)
    if namespace is None:
        namespace = _NAMESPACE_DEFAULTS.setdefault(ref.namespace, NamespaceConfig(ref.namespace))
    return operations.operate(
        record,
        ops,
        policy,
        now_ms=now_ms,
        set_name=ref.wire_set_name,
        user_key=None,
        namespace=namespace,
    )


def _live(record: Record | None, now_ms: int) -> Record | None:
    return record if record is not None and record.is_live(now_ms) else None
