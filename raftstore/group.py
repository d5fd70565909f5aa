"""`GroupRuntime`: one partition group on one node, over a `ReplicatedLog` and an `Engine`.

Theory of operation
-------------------
Writes (`submit`) and linearizable reads (`read(..., linearize=True)`) wait in a `Batcher`,
a pure object that decides what the next log entry carries:
- a write batch: the queued commands in arrival order, up to BATCH_COMMANDS_MAX of them and
  about ENTRY_BYTES_MAX bytes (group commit: one entry, one apply transaction);
- or, when reads wait and no write is queued, one `Barrier` command.
At most GROUP_ENTRIES_IN_FLIGHT_MAX entries (one by default) are proposed and unanswered at a
time, at most one of them a bare barrier. While they are in flight new requests pile up, so
batches grow with load. Every entry costs about as much CPU as a dozen commands (pysyncobj's
messages and ticks, a store transaction per replica), so the worker lingers: a batch that
could still grow waits up to `linger_s` for more requests, unless the last entry of its kind
carried a lone request (`Batcher.full`): a lone client waits for its answer before it sends
more, so its request goes out at once.

One worker does the rest (a thread, or the test through `pump()` when `background=False`):
it takes the log's answers (`on_done` only queues them: the log may call it on its own
thread or inside `propose`), proposes the next entries, then answers the requests. It never
holds the runtime's lock while calling the log or the engine. A command is encoded once,
when it is queued (its size bounds the batch); an entry is joined from those bytes.

What a request is answered
--------------------------
Each request is answered exactly once, through a future (`submit`, `read`) or through a
reply callback (`submit_to`, `read_to`: the listener's path, no future per request; a refusal
is replied at once on the caller's thread, anything else on the worker's thread, the requests
of one entry in a row).
- not leader when it arrives -> NOT_LEADER at once (definite); queue full -> DEVICE_OVERLOAD
  at once (definite); a command that cannot be encoded -> PARAMETER_ERROR, one larger than
  a log entry may be -> RECORD_TOO_BIG (both definite).
- write, entry APPLIED -> its own `Result` from apply's list; apply failed -> SERVER_ERROR
  (indeterminate); APPLIED without results (the position was applied before: a replay) ->
  TIMEOUT "outcome unknown".
- write, entry REJECTED -> NOT_LEADER (definite: not applied).
- write, entry UNKNOWN -> TIMEOUT "outcome unknown" (indeterminate: the server reports the
  write in doubt; a retry with the same (client_id, request_seq) gets the stored answer).
- linearizable read -> see below; session read -> `engine.read` now if this replica believes
  it leads, else NOT_LEADER.
- `close()` -> requests never proposed: NOT_LEADER (definite); proposed writes: TIMEOUT
  "outcome unknown"; reads: NOT_LEADER.

Linearizable reads
------------------
`is_leader()` is a hint: a deposed leader may not know yet. A read is served only after an
entry proposed after the read arrived (a write batch, or a `Barrier` if no write is queued)
comes back APPLIED here: this replica then led when that entry committed, and has applied
every entry committed before the read arrived, so `engine.read` sees every acknowledged
write. All reads waiting when an entry is proposed share it. If that entry is REJECTED the
reads answer NOT_LEADER; if UNKNOWN, TIMEOUT. A read has no effect, so neither is ever "in
doubt": both mean "ask the partition's leader again".

Background jobs
---------------
`run_jobs(now_ms)`, called by the server on a timer, proposes on the leader only: an `Expire`
of candidates from the RAM index (records past their void time; a resumable sweep over the
partitions, bounded per call, one Expire in flight at a time) and, at most once per
namespace `tomb_raider_period_s`, a `TombRaid` together with a `TxnForget` of up to
TXN_FORGET_IDS_MAX transactions the engine lists as past their horizon (none if it lists
none). The state machine checks every candidate again, so a stale candidate costs nothing.

Ownership: the caller builds the engine, the apply function (`make_apply(engine)`) and the
log, and closes them after `close()` (runtime first, then the log, then the engine).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from raftstore import command_codec, limits
from raftstore.clock import is_expired
from raftstore.command_codec import LogCommand
from raftstore.commands import Barrier, Expire, Result, TombRaid, failure
from raftstore.engine import Engine
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.ops import Op
from raftstore.record import RecordMeta
from raftstore.replication import ApplyFn, LogStatus, Outcome, Proposal, ReplicatedLog, Role
from raftstore.txn_commands import TxnForget

log = structlog.get_logger(__name__)

THREAD_JOIN_S = 10.0  # close() waits this long for the worker before giving up on it
TXN_FORGET_IDS_MAX = 256  # transactions one TxnForget names (about 2.3 KiB of entry)

W = TypeVar("W")
R = TypeVar("R")


# -- apply -----------------------------------------------------------------------------------

BARRIER_ENTRY = command_codec.encode_batch([Barrier()])  # what a bare barrier proposes


@dataclass(frozen=True, slots=True)
class ApplyFailed:
    """What apply returns instead of results when the entry could not be applied here."""

    code: int
    message: str


ApplyValue = list[Result] | ApplyFailed | None


def make_apply(engine: Engine) -> ApplyFn:
    """The function the log calls on every replica: decode, then `engine.apply`.

    Returns the batch's results, None when `log_index` was applied before (a replay), or
    `ApplyFailed`. Never raises: an exception would make pysyncobj retry the entry forever.

    A bare barrier (the entry `GroupRuntime` proposes for linearizable reads alone) changes
    no state: it skips the engine, whose applied position then stays at the last entry that
    did change something (positions only have to grow). Being applied here, after every
    entry before it, is all a barrier is for; it saves a store transaction on every replica.
    """

    def apply(log_index: int, entry: bytes) -> ApplyValue:
        if entry == BARRIER_ENTRY:
            return [Result()]
        try:
            commands = command_codec.decode_batch(entry)
        except Exception as exc:
            reason = exc.msg if isinstance(exc, RaftstoreError) else repr(exc)
            log.error("entry_undecodable", log_index=log_index, bytes=len(entry), reason=reason)
            return ApplyFailed(ResultCode.SERVER_ERROR, f"log entry {log_index}: {reason}")
        try:
            return engine.apply(log_index, commands)
        except Exception as exc:
            # The transaction was aborted here, while other replicas may have applied the
            # entry: this replica may now differ from them.
            log.critical(
                "apply_failed", log_index=log_index, commands=len(commands), error=repr(exc)
            )
            return ApplyFailed(ResultCode.SERVER_ERROR, f"apply of entry {log_index} failed")

    return apply


# -- outcome mapping (pure) --------------------------------------------------------------------

OUTCOME_UNKNOWN = "outcome unknown"


def write_results(proposal: Proposal, count: int) -> list[Result]:
    """The answer of each of the `count` writes of an entry, from the entry's outcome."""
    if proposal.outcome is Outcome.REJECTED:
        return [failure(ResultCode.NOT_LEADER, proposal.reason or "not the leader")] * count
    if proposal.outcome is Outcome.UNKNOWN:
        return [failure(ResultCode.TIMEOUT, OUTCOME_UNKNOWN)] * count
    value = proposal.value
    if value is None:
        return [failure(ResultCode.TIMEOUT, OUTCOME_UNKNOWN)] * count
    if isinstance(value, ApplyFailed):
        return [failure(value.code, value.message)] * count
    if isinstance(value, list) and len(value) == count:
        return value
    log.error("apply_value_unexpected", value=repr(value)[:200], commands=count)
    return [failure(ResultCode.SERVER_ERROR, "unexpected apply result")] * count


def read_failure(proposal: Proposal) -> Result | None:
    """None if the reads that waited for this entry may be served; else their answer."""
    if proposal.outcome is Outcome.REJECTED:
        return failure(ResultCode.NOT_LEADER, proposal.reason or "not the leader")
    if proposal.outcome is Outcome.UNKNOWN:
        return failure(ResultCode.TIMEOUT, "leadership not confirmed; retry the read")
    if isinstance(proposal.value, ApplyFailed):
        return failure(ResultCode.SERVER_ERROR, proposal.value.message)
    return None


def tomb_raid_due(last_raid_ms: int | None, now_ms: int, period_s: int) -> bool:
    return last_raid_ms is None or now_ms - last_raid_ms >= period_s * 1000


# -- batching (pure) ---------------------------------------------------------------------------


@dataclass(slots=True)
class Batch(Generic[W, R]):
    """One log entry's worth of requests. No writes: a bare barrier."""

    number: int
    writes: list[W]
    reads: list[R]

    @property
    def is_barrier(self) -> bool:
        return not self.writes


class Batcher(Generic[W, R]):
    """Decides what each log entry carries; no threads, no clock (rules: module docstring)."""

    def __init__(
        self,
        *,
        queue_commands_max: int = limits.GROUP_QUEUE_COMMANDS_MAX,
        reads_waiting_max: int = limits.GROUP_READS_WAITING_MAX,
        in_flight_max: int = limits.GROUP_ENTRIES_IN_FLIGHT_MAX,
        batch_commands_max: int = limits.BATCH_COMMANDS_MAX,
        entry_bytes_max: int = limits.ENTRY_BYTES_MAX,
    ) -> None:
        assert queue_commands_max >= 1 and reads_waiting_max >= 1 and in_flight_max >= 1
        assert 1 <= batch_commands_max <= limits.BATCH_COMMANDS_MAX
        self.queue_commands_max = queue_commands_max
        self.reads_waiting_max = reads_waiting_max
        self.in_flight_max = in_flight_max
        self.batch_commands_max = batch_commands_max
        self.entry_bytes_max = entry_bytes_max
        self._writes: deque[tuple[W, int]] = deque()
        self._reads: list[R] = []
        self._in_flight: dict[int, Batch[W, R]] = {}
        self._numbers = 0
        # Whether the last answered write batch (bare barrier) carried a single request: a
        # lone client is waiting for its answer before it sends more, so waiting for more
        # requests would only delay it (`full`).
        self._lone_writes = True
        self._lone_reads = True

    @property
    def queued_writes(self) -> int:
        return len(self._writes)

    @property
    def waiting_reads(self) -> int:
        return len(self._reads)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def offer_write(self, write: W, size_bytes: int) -> bool:
        if len(self._writes) >= self.queue_commands_max:
            return False
        self._writes.append((write, size_bytes))
        return True

    def offer_read(self, read: R) -> bool:
        if len(self._reads) >= self.reads_waiting_max:
            return False
        self._reads.append(read)
        return True

    def ready(self) -> bool:
        """`next_batch` would return a batch."""
        if len(self._in_flight) >= self.in_flight_max:
            return False
        if self._writes:
            return True
        barrier_in_flight = any(batch.is_barrier for batch in self._in_flight.values())
        return bool(self._reads) and not barrier_in_flight

    def full(self) -> bool:
        """Nothing is gained by waiting for more requests before the next batch: it has as
        many commands as a batch may, or the last one of its kind carried a lone request."""
        if self._writes:
            return self._lone_writes or len(self._writes) >= self.batch_commands_max
        return self._lone_reads or len(self._reads) >= self.reads_waiting_max

    def next_batch(self) -> Batch[W, R] | None:
        """The next entry to propose (now in flight), or None."""
        if not self.ready():
            return None
        writes: list[W] = []
        size_bytes = 0
        while self._writes and len(writes) < self.batch_commands_max:
            write, size = self._writes[0]
            if writes and size_bytes + size > self.entry_bytes_max:
                break
            self._writes.popleft()
            writes.append(write)
            size_bytes += size
        self._numbers += 1
        batch = Batch(self._numbers, writes, self._reads)
        self._reads = []
        self._in_flight[batch.number] = batch
        return batch

    def finish(self, number: int) -> Batch[W, R] | None:
        """The batch `number` was answered; None if it was answered before."""
        batch = self._in_flight.pop(number, None)
        if batch is not None:
            if batch.writes:
                self._lone_writes = len(batch.writes) == 1
            else:
                self._lone_reads = len(batch.reads) <= 1
        return batch

    def drain(self) -> tuple[list[W], list[R], list[Batch[W, R]]]:
        """Everything still held: queued writes, waiting reads, batches in flight."""
        writes = [write for write, _ in self._writes]
        reads, batches = self._reads, list(self._in_flight.values())
        self._writes.clear()
        self._reads = []
        self._in_flight.clear()
        return writes, reads, batches


# -- expiry sweep (pure) -----------------------------------------------------------------------


class ExpirySweep:
    """A resumable walk over the partitions, looking for records past their void time."""

    def __init__(self) -> None:
        self.next_partition = 0

    def candidates(
        self,
        expiring_of: Callable[[int], int],
        metas_of: Callable[[int], Sequence[tuple[bytes, RecordMeta]]],
        now_ms: int,
        *,
        digests_max: int = limits.EXPIRE_DIGESTS_MAX,
        scan_entries_max: int = limits.EXPIRE_SCAN_ENTRIES_MAX,
    ) -> list[bytes]:
        """Up to `digests_max` expired digests, sorted, looking at about `scan_entries_max`
        index entries and at most every partition once. A partition where `expiring_of`
        counts no record with a void time is skipped unread: without TTLs a sweep is
        free (it used to copy every index entry each second, a tenth of a busy leader's CPU)."""
        found: list[bytes] = []
        scanned = 0
        for _ in range(limits.PARTITIONS):
            if len(found) >= digests_max or scanned >= scan_entries_max:
                break
            partition_id = self.next_partition
            self.next_partition = (partition_id + 1) % limits.PARTITIONS
            if not expiring_of(partition_id):
                continue
            metas = metas_of(partition_id)
            scanned += len(metas)
            found.extend(
                digest
                for digest, meta in metas
                if not meta.tombstone and is_expired(meta.void_time, now_ms)
            )
        return sorted(found[:digests_max])


# -- the runtime (threads) ---------------------------------------------------------------------


Reply = Callable[[Result], None]
"""Receives a request's answer, exactly once: at once on the caller's thread when the request
is refused, else later on the worker's (or `close()`'s) thread. It must be quick and must
not raise (an exception is logged and the other answers still go out)."""


@dataclass(slots=True)
class QueuedWrite:
    """A write waiting in the `Batcher` for its log entry, encoded once when queued."""

    command: LogCommand
    encoded: bytes
    reply: Reply


@dataclass(slots=True)
class QueuedRead:
    """A linearizable read waiting for the next entry proposed after it arrived."""

    digest: bytes
    ops: tuple[Op, ...]
    now_ms: int
    reply: Reply


@dataclass(frozen=True, slots=True)
class GroupStatus:
    node_id: str
    leader: bool  # this replica believes it leads (a hint)
    log: LogStatus
    applied_index: int  # the engine's
    queued_writes: int
    waiting_reads: int
    entries_in_flight: int
    entries_proposed: int
    commands_proposed: int
    barriers_proposed: int
    closed: bool


@dataclass(slots=True)
class _Counters:
    entries: int = 0
    commands: int = 0
    barriers: int = 0


def _done(result: Result) -> Future[Result]:
    future: Future[Result] = Future()
    future.set_result(result)
    return future


def _resolve(future: Future[Result], result: Result) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled by the caller, or answered by close()
        future.set_result(result)


def _future_reply() -> tuple[Future[Result], Reply]:
    future: Future[Result] = Future()
    return future, functools.partial(_resolve, future)


def _answer(reply: Reply, result: Result) -> None:
    try:
        reply(result)
    except Exception as exc:  # a bug in the receiver: the other answers still go out
        log.error("reply_failed", error=repr(exc))


_ENTRY_HEAD_BYTES = 8  # join_batch's envelope around the commands, at most


class GroupRuntime:
    """Runs one partition group on one node (rules: module docstring).

    The worker lingers: when the next batch could still grow (`Batcher.full` is false), it
    waits up to `linger_s` for more requests before proposing it (module docstring).
    """

    def __init__(
        self,
        log: ReplicatedLog,
        engine: Engine,
        *,
        background: bool = True,
        batcher: Batcher[QueuedWrite, QueuedRead] | None = None,
        linger_s: float = limits.GROUP_LINGER_S,
    ) -> None:
        assert linger_s >= 0
        self._log = log
        self._engine = engine
        self._batcher: Batcher[QueuedWrite, QueuedRead] = batcher or Batcher()
        self._linger_s = linger_s
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._counters = _Counters()
        self._answers: list[tuple[int, Proposal]] = []  # (batch number, outcome), from on_done
        self._closed = False
        # The worker sleeps on `_wake`: "idle" until a request or an answer comes, or
        # "lingering" for a fuller batch; requests only notify it when that changes what
        # it would do (one wake-up per batch, not per request).
        self._worker_idle = False
        self._worker_lingering = False
        self._sweep = ExpirySweep()
        self._expire: Future[Result] | None = None
        self._last_raid_ms: int | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._run, name=f"group-{log.node_id}", daemon=True
            )
            self._thread.start()

    # -- requests ----------------------------------------------------------------------------

    def submit(self, command: LogCommand) -> Future[Result]:
        """Propose a write; the future answers as the module docstring says."""
        future, reply = _future_reply()
        self.submit_to(command, reply)
        return future

    def submit_to(self, command: LogCommand, reply: Reply) -> None:
        """`submit`, answering through `reply` instead of a future."""
        if not self._log.is_leader():
            reply(failure(ResultCode.NOT_LEADER, f"{self._log.node_id} is not the leader"))
            return
        self._enqueue(command, reply)

    def read(
        self, digest: bytes, ops: Sequence[Op], now_ms: int, linearize: bool
    ) -> Future[Result]:
        """Read-only `ops` on one record, LINEARIZE (`linearize`) or SESSION."""
        future, reply = _future_reply()
        self.read_to(digest, ops, now_ms, linearize, reply)
        return future

    def read_to(
        self, digest: bytes, ops: Sequence[Op], now_ms: int, linearize: bool, reply: Reply
    ) -> None:
        """`read`, answering through `reply` instead of a future."""
        if not self._log.is_leader():
            reply(failure(ResultCode.NOT_LEADER, f"{self._log.node_id} is not the leader"))
            return
        if not linearize:
            if self._closed:
                reply(failure(ResultCode.NOT_LEADER, "group closed"))
                return
            reply(self._engine_read(digest, tuple(ops), now_ms))
            return
        read = QueuedRead(digest, tuple(ops), now_ms, reply)
        with self._wake:
            if self._closed:
                refused = failure(ResultCode.NOT_LEADER, "group closed")
            elif not self._batcher.offer_read(read):
                refused = failure(ResultCode.DEVICE_OVERLOAD, "too many reads waiting")
            else:
                self._notify_worker()
                return
        reply(refused)

    def barrier(self) -> Future[Result]:
        """OK once an entry proposed after this call is applied here, so everything committed
        before the call is visible locally (a linearizable scan starts after it)."""
        return self.read(b"", (), 0, linearize=True)

    def run_jobs(self, now_ms: int) -> list[Future[Result]]:
        """On the leader: propose expiry of records past their void time and, when due, a
        tomb raid and a TxnForget (if there is something to forget). Returns the futures of
        what it proposed (none on a follower). Call it from one thread (the server's timer)."""
        if self._closed or not self._log.is_leader():
            return []
        futures: list[Future[Result]] = []
        if self._expire is None or self._expire.done():
            digests = self._sweep.candidates(
                self._engine.index.expiring_count, self._partition_metas, now_ms
            )
            if digests:
                self._expire = self.submit(Expire(now_ms, tuple(digests)))
                futures.append(self._expire)
        period_s = self._engine.namespace.tomb_raider_period_s
        if tomb_raid_due(self._last_raid_ms, now_ms, period_s):
            self._last_raid_ms = now_ms
            futures.append(self.submit(TombRaid(now_ms)))
            forgettable = self._forget_candidates(now_ms)
            if forgettable:
                futures.append(self.submit(TxnForget(now_ms, forgettable)))
        if futures:
            log.info("jobs_proposed", node=self._log.node_id, jobs=len(futures), now_ms=now_ms)
        return futures

    def is_leader(self) -> bool:
        return self._log.is_leader()

    def status(self) -> GroupStatus:
        log_status = self._log.status()
        with self._lock:
            return GroupStatus(
                node_id=self._log.node_id,
                leader=log_status.role is Role.LEADER,
                log=log_status,
                applied_index=self._engine.applied_index,
                queued_writes=self._batcher.queued_writes,
                waiting_reads=self._batcher.waiting_reads,
                entries_in_flight=self._batcher.in_flight,
                entries_proposed=self._counters.entries,
                commands_proposed=self._counters.commands,
                barriers_proposed=self._counters.barriers,
                closed=self._closed,
            )

    def close(self) -> None:
        """Stop; answer every outstanding request (module docstring). Idempotent."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(THREAD_JOIN_S)
            if self._thread.is_alive():
                log.error("group_worker_stuck", node=self._log.node_id)
        self._answer_all(self._take_answers())
        with self._lock:
            writes, reads, in_flight = self._batcher.drain()
        for write in writes:
            _answer(write.reply, failure(ResultCode.NOT_LEADER, "group closed"))
        for read in reads:
            _answer(read.reply, failure(ResultCode.NOT_LEADER, "group closed"))
        for batch in in_flight:
            for write in batch.writes:
                _answer(write.reply, failure(ResultCode.TIMEOUT, OUTCOME_UNKNOWN))
            for read in batch.reads:
                _answer(read.reply, failure(ResultCode.NOT_LEADER, "group closed"))
        log.info(
            "group_closed",
            node=self._log.node_id,
            unproposed=len(writes) + len(reads),
            in_flight=len(in_flight),
        )

    # -- the worker ----------------------------------------------------------------------------

    def pump(self) -> bool:
        """One round of work: take answers, propose everything ready (no lingering), answer
        the requests. Called by a test when the runtime was built with background=False.
        Returns whether it did anything."""
        assert self._thread is None or threading.current_thread() is self._thread, (
            "pump() belongs to the worker thread when background=True"
        )
        answered, proposed = self._step(propose_unfull=True)
        return answered or proposed

    def _step(self, *, propose_unfull: bool) -> tuple[bool, bool]:
        """Whether it answered, and whether it proposed."""
        answers = self._take_answers()  # first: an answer frees a slot and sets the targets
        with self._lock:
            batches = []
            while not self._closed and self._batcher.ready():
                if not (propose_unfull or self._batcher.full()):
                    break
                batch = self._batcher.next_batch()
                assert batch is not None
                batches.append(batch)
        for batch in batches:
            self._propose(batch)
        self._answer_all(answers)
        return bool(answers), bool(batches)

    def _run(self) -> None:
        linger_until: float | None = None
        while True:
            with self._wake:
                propose_unfull = False
                while True:
                    if self._closed:
                        return
                    if self._answers:
                        break
                    if not self._batcher.ready():
                        linger_until = None
                        self._sleep(None, lingering=False)
                        continue
                    if self._batcher.full():
                        break
                    now = time.monotonic()
                    if linger_until is None:
                        linger_until = now + self._linger_s
                    if now >= linger_until:
                        propose_unfull = True
                        break
                    self._sleep(linger_until - now, lingering=True)
            try:
                _, proposed = self._step(propose_unfull=propose_unfull)
                if proposed:
                    linger_until = None
            except Exception as exc:  # a bug: keep serving, never strand a request
                log.critical("group_worker_error", node=self._log.node_id, error=repr(exc))

    def _sleep(self, timeout_s: float | None, *, lingering: bool) -> None:
        """Under the lock: wait for a notification (or `timeout_s`)."""
        self._worker_idle = not lingering
        self._worker_lingering = lingering
        try:
            self._wake.wait(timeout_s)
        finally:
            self._worker_idle = self._worker_lingering = False

    def _notify_worker(self) -> None:
        """Under the lock, after a request was queued: wake the worker if it now has a batch
        to propose (idle and a slot is free, or lingering and the batch is full)."""
        if self._worker_idle:
            if self._batcher.ready():
                self._wake.notify()
        elif self._worker_lingering and self._batcher.full():
            self._wake.notify()

    def _enqueue(self, command: LogCommand, reply: Reply) -> None:
        try:
            encoded = command_codec.encode_command(command)
        except Exception as exc:
            reply(failure(ResultCode.PARAMETER_ERROR, f"command not encodable: {exc!r}"))
            return
        size_bytes = len(encoded) + _ENTRY_HEAD_BYTES
        if size_bytes > self._batcher.entry_bytes_max:
            reply(
                failure(
                    ResultCode.RECORD_TOO_BIG,
                    f"command of {size_bytes} bytes is over the log entry limit "
                    f"{self._batcher.entry_bytes_max}",
                )
            )
            return
        write = QueuedWrite(command, encoded, reply)
        with self._wake:
            if self._closed:
                refused = failure(ResultCode.NOT_LEADER, "group closed")
            elif not self._batcher.offer_write(write, size_bytes):
                refused = failure(ResultCode.DEVICE_OVERLOAD, "group write queue is full")
            else:
                self._notify_worker()
                return
        reply(refused)

    def _propose(self, batch: Batch[QueuedWrite, QueuedRead]) -> None:
        with self._lock:
            self._counters.entries += 1
            self._counters.commands += len(batch.writes)
            self._counters.barriers += int(batch.is_barrier)
        on_done = functools.partial(self._on_done, batch.number)
        if batch.writes:
            entry = command_codec.join_batch([write.encoded for write in batch.writes])
        else:
            entry = BARRIER_ENTRY
        try:
            self._log.propose(entry, on_done)
        except Exception as exc:
            log.error("propose_failed", node=self._log.node_id, error=repr(exc))
            on_done(Proposal(Outcome.UNKNOWN, reason=f"propose failed: {exc!r}"))

    def _on_done(self, number: int, proposal: Proposal) -> None:
        with self._wake:
            self._answers.append((number, proposal))
            self._wake.notify()

    def _take_answers(self) -> list[tuple[Batch[QueuedWrite, QueuedRead], Proposal]]:
        with self._lock:
            if not self._answers:
                return []
            answers, self._answers = self._answers, []
            finished = [(self._batcher.finish(number), proposal) for number, proposal in answers]
        return [(batch, proposal) for batch, proposal in finished if batch is not None]

    def _answer_all(self, answers: list[tuple[Batch[QueuedWrite, QueuedRead], Proposal]]) -> None:
        for batch, proposal in answers:
            if proposal.outcome is not Outcome.APPLIED:
                log.info(
                    "entry_not_applied",
                    node=self._log.node_id,
                    outcome=proposal.outcome.value,
                    reason=proposal.reason,
                    writes=len(batch.writes),
                    reads=len(batch.reads),
                )
            if batch.writes:
                results = write_results(proposal, len(batch.writes))
                for write, result in zip(batch.writes, results, strict=True):
                    _answer(write.reply, result)
            if batch.reads:
                refused = read_failure(proposal)
                for read in batch.reads:
                    if refused is None:
                        _answer(read.reply, self._engine_read(read.digest, read.ops, read.now_ms))
                    else:
                        _answer(read.reply, refused)

    def _engine_read(self, digest: bytes, ops: tuple[Op, ...], now_ms: int) -> Result:
        if not ops:
            return Result()  # a bare barrier: being answered is the whole point
        try:
            return self._engine.read(digest, ops, now_ms)
        except Exception as exc:
            log.error("read_failed", node=self._log.node_id, error=repr(exc))
            return failure(ResultCode.SERVER_ERROR, "read failed")

    def _partition_metas(self, partition_id: int) -> list[tuple[bytes, RecordMeta]]:
        return self._engine.partition_metas(partition_id)

    def _forget_candidates(self, now_ms: int) -> tuple[int, ...]:
        try:
            return self._engine.forget_candidates(now_ms, TXN_FORGET_IDS_MAX)
        except RaftstoreError as exc:  # a corrupt row: the tomb raid still goes, and is logged
            log.error("forget_candidates_failed", node=self._log.node_id, reason=exc.msg)
            return ()
