"""The node's transaction work: coordinating commits, recovering intents, reading past them.

The protocol is docs/transactions.md; its logic is pure (`txn.coordinator`,
`raftstore.txn_participant`). This module is the thin shell that runs it on a node:

- `commit(TxnCommitMsg)`: on the leader of one of the transaction's groups (the SDK picks
  one other than the home group when there is one), a `Coordinator` runs the transaction;
  its `Propose` actions go to the local group when this node leads it
  (`GroupRuntime.submit_to`), else to the group's leader through `server.peer`. Every step
  is answered exactly once: its result, or None (unknown) after `STEP_TIMEOUT_S` or a lost
  peer call; the coordinator's own rules retry and decide from there.
- `commit(..., status_only=True)`: settle an earlier commit whose answer was lost. One group:
  repeat its `TxnApply` (the group's marker answers a repeat). Several: `Recovery` in every
  participant group, each proposing `TxnDecide(ABORTED)` at home (final: COMMITTED if the
  coordinator decided first) and resolving its group accordingly.
- `step(TxnStepMsg)`: a peer's step for a group this node leads. The step's own `Result`
  travels in the response's `value` (`encode_result`), so that the transport's codes
  (NOT_LEADER redirects) and the step's (MRT_BLOCKED with its blocker) never mix. With no
  command: a linearizable read of a transaction record (a barrier, then the record).
- `read_through`: a read that met a write intent asks the intent's home group for the
  transaction's state and answers the last committed version (`visible_record`); if the
  transaction committed it also proposes the resolve (lazy roll-forward).
- `note_blocked` / `sweep`: an intent met past its deadline (by a write, a read, or the
  background sweep of every group this node leads) starts a `Recovery`, once per intent.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import structlog

from raftstore import keys
from raftstore.commands import Result, decode_result, encode_result, failure
from raftstore.errors import ResultCode
from raftstore.ops import Op
from raftstore.record import Record
from raftstore.txn_commands import (
    TXN_TIMEOUT_MS_MAX,
    TxnApply,
    TxnCommand,
    TxnResolve,
    TxnState,
)
from raftstore.txn_participant import (
    Blocker,
    Intent,
    TxnRecord,
    blocker_of,
    visible_record,
)
from raftstore.wire import Response, TxnCommitMsg, TxnStepMsg
from server.peer import Peer
from txn.coordinator import Action, Answer, Coordinator, Outcome, Propose, Recovered, Recovery

if TYPE_CHECKING:
    from server.node import LocalGroup, Node

log = structlog.get_logger(__name__)

STEP_TIMEOUT_S = 3.0  # a local step unanswered this long counts as unknown
TIMEOUT_SLACK_S = 0.2
SWEEP_LIMIT = 16  # transactions recovered per group per sweep

StepResult = Callable[[Result | None], None]
RecordReply = Callable[[TxnRecord | None, bool], None]  # (record, known)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Once:
    """A reply that takes effect once: the first of the answer and the timeout wins."""

    def __init__(self, reply: StepResult) -> None:
        self._reply = reply
        self._lock = threading.Lock()
        self._done = False

    def __call__(self, result: Result | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._reply(result)


class _Timeouts:
    """One thread that answers None to the steps still unanswered at their deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Once]] = []
        self._counter = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="txn-timeouts", daemon=True)
        self._thread.start()

    def add(self, once: _Once, after_s: float) -> None:
        entry = (time.monotonic() + after_s, next(self._counter), once)
        with self._wake:
            heapq.heappush(self._heap, entry)
            # Wake the thread only for a new earliest deadline: every step adds one, and a
            # wake-up per step (a thread switch each) was a visible share of a node's CPU.
            if self._heap[0] is entry:
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            due: list[_Once] = []
            with self._wake:
                if self._closed:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    # Late by up to TIMEOUT_SLACK_S, so that one wake-up answers every step
                    # that fell due meanwhile (a timeout of seconds needs no precision).
                    timeout = self._heap[0][0] - now + TIMEOUT_SLACK_S if self._heap else None
                    self._wake.wait(timeout)
                    continue
            for once in due:
                once(None)


class _Run:
    """One coordinator or recovery, driven by the replies to its proposals."""

    def __init__(
        self,
        service: TxnService,
        namespace: str,
        machine: Coordinator | Recovery,
        finish: Callable[[Answer | Recovered], None],
    ) -> None:
        self._service = service
        self._namespace = namespace
        self._machine = machine
        self._finish = finish
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            actions = self._machine.start(now_ms())
        self._perform(actions)

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if not isinstance(action, Propose):
                self._finish(action)
                continue
            here = self._service.propose(
                self._namespace,
                action.group,
                action.command,
                functools.partial(self._reply, action.action_id),
            )
            if here:  # in this node's queue for the group: ordered before what comes later
                with self._lock:
                    placed = self._machine.on_placed(action.action_id, now_ms())
                self._perform(placed)

    def _reply(self, action_id: int, result: Result | None) -> None:
        with self._lock:
            actions = self._machine.on_reply(action_id, result, now_ms())
        self._perform(actions)


@dataclass
class _StatusCheck:
    """A status check of a transaction over several groups: one recovery per group."""

    groups: int
    reply: Callable[[Response], None]
    states: list[TxnState | None]
    lock: threading.Lock


class TxnService:
    def __init__(self, node: Node, peer: Peer) -> None:
        self._node = node
        self._peer = peer
        self._timeouts = _Timeouts()
        self._lock = threading.Lock()
        self._recovering: set[tuple[str, int, int]] = set()  # (namespace, txn id, group)
        self.counters = {"committed": 0, "aborted": 0, "in_doubt": 0, "recovered": 0}

    def close(self) -> None:
        self._timeouts.close()
        self._peer.close()

    # -- commits --------------------------------------------------------------------------------

    def commit(self, msg: TxnCommitMsg, now: int, reply: Callable[[Response], None]) -> None:
        """Coordinate `msg` here, the leader of one of its groups (Node checked that, and that
        the home digest is one of its keys)."""
        group_count = self._node.group_count(msg.namespace)
        if msg.timeout_ms > TXN_TIMEOUT_MS_MAX:
            reply(
                _refused(
                    ResultCode.PARAMETER_ERROR,
                    f"transaction timeout {msg.timeout_ms} ms is over {TXN_TIMEOUT_MS_MAX} ms",
                )
            )
            return
        if msg.timeout_ms <= 0 and not msg.status_only:
            reply(_refused(ResultCode.MRT_EXPIRED, "the transaction's deadline passed"))
            return

        def group_of(digest: bytes) -> int:
            return keys.partition_id(digest) % group_count

        home = group_of(msg.home_digest)
        deadline_ms = now + max(msg.timeout_ms, 0)
        if msg.status_only:
            self._status(msg, home, deadline_ms, group_of, reply)
            return
        coordinator = Coordinator(msg.txn_id, home, deadline_ms, msg.reads, msg.writes, group_of)

        def finish(action: Answer | Recovered) -> None:
            assert isinstance(action, Answer)
            reply(self._answer_response(action))

        _Run(self, msg.namespace, coordinator, finish).start()

    def _answer_response(self, answer: Answer) -> Response:
        self._count(answer.outcome.value)
        if answer.outcome is Outcome.COMMITTED:
            return Response(value="committed")
        if answer.outcome is Outcome.IN_DOUBT:
            return Response(code=ResultCode.TIMEOUT, message=answer.message, in_doubt=True)
        failure_ = answer.failure
        results = () if failure_ is None else failure_.results
        return Response(code=answer.code, message=answer.message, results=results)

    def _status(
        self,
        msg: TxnCommitMsg,
        home: int,
        deadline_ms: int,
        group_of: Callable[[bytes], int],
        reply: Callable[[Response], None],
    ) -> None:
        digests = [r.digest for r in msg.reads] + [w.digest for w in msg.writes]
        groups = sorted({group_of(d) for d in digests})
        if len(groups) == 1:
            apply = TxnApply(msg.txn_id, now_ms(), deadline_ms, msg.reads, msg.writes)

            def applied(result: Result | None) -> None:
                if result is None or result.code == ResultCode.TIMEOUT:
                    reply(_in_doubt("the transaction's group did not answer"))
                elif result.ok:
                    reply(Response(value="committed"))
                else:
                    reply(Response(code=result.code, message=result.message))

            self.propose(msg.namespace, groups[0], apply, applied)
            return
        check = _StatusCheck(len(groups), reply, [], threading.Lock())

        def recovered(action: Answer | Recovered) -> None:
            assert isinstance(action, Recovered)
            with check.lock:
                check.states.append(action.state)
                if len(check.states) < check.groups:
                    return
            states = set(check.states)
            if TxnState.COMMITTED in states:
                reply(Response(value="committed"))
            elif states == {TxnState.ABORTED}:
                reply(Response(code=ResultCode.MRT_ABORTED, message="transaction aborted"))
            else:
                reply(_in_doubt("the transaction's groups did not all answer"))

        for group in groups:
            # The deadline given is past on purpose: a status check aborts whatever is open
            # (the client gave up waiting); a COMMITTED decision stands.
            recovery = Recovery(msg.txn_id, home, min(deadline_ms, now_ms() - 1), group)
            _Run(self, msg.namespace, recovery, recovered).start()

    # -- steps ----------------------------------------------------------------------------------

    def propose(
        self, namespace: str, group_id: int, command: TxnCommand, reply: StepResult
    ) -> bool:
        """Propose `command` in the group, here or at its leader; `reply` once. True if it
        went into this node's own queue for the group (this node leads it)."""
        once = _Once(self._watching_blocks(namespace, group_id, reply))
        self._timeouts.add(once, STEP_TIMEOUT_S)
        local = self._node.local_leader(namespace, group_id)
        if local is not None:
            local.runtime.submit_to(replace(command, now_ms=now_ms()), once)
            return True

        def answered(response: Response | None) -> None:
            once(_step_result(response))

        self._peer.step(namespace, group_id, command, 0, answered)
        return False

    def _watching_blocks(self, namespace: str, group_id: int, reply: StepResult) -> StepResult:
        def watched(result: Result | None) -> None:
            if result is not None and result.code == ResultCode.MRT_BLOCKED:
                self.note_blocked(namespace, group_id, result)
            reply(result)

        return watched

    def step(self, msg: TxnStepMsg, group: LocalGroup, reply: Callable[[Response], None]) -> None:
        """A peer's step for `group`, which this node leads (Node checked that)."""
        if msg.command is None:

            def read(record: TxnRecord | None, known: bool) -> None:
                if not known:
                    reply(_refused(ResultCode.TIMEOUT, "barrier did not complete"))
                    return
                reply(Response(value=None if record is None else _record_to_wire(record)))

            self._read_record_here(group, msg.txn_id, read)
            return
        command = replace(msg.command, now_ms=now_ms())

        def applied(result: Result) -> None:
            if result.code == ResultCode.NOT_LEADER:
                reply(
                    Response(
                        code=result.code, message=result.message, partition_map=self._node.map()
                    )
                )
                return
            if result.code == ResultCode.MRT_BLOCKED:
                self.note_blocked(msg.namespace, msg.group, result)
            reply(Response(value=encode_result(result)))

        group.runtime.submit_to(command, applied)

    # -- transaction records ----------------------------------------------------------------------

    def read_record(self, namespace: str, group_id: int, txn_id: int, reply: RecordReply) -> None:
        """The transaction record `txn_id` in its home group, read linearizably."""
        local = self._node.local_leader(namespace, group_id)
        if local is not None:
            self._read_record_here(local, txn_id, reply)
            return

        def answered(response: Response | None) -> None:
            if response is None or response.code != ResultCode.OK:
                reply(None, False)
                return
            try:
                reply(_record_from_wire(response.value), True)
            except (TypeError, ValueError):
                log.warning("txn_record_malformed", value=repr(response.value)[:200])
                reply(None, False)

        self._peer.step(namespace, group_id, None, txn_id, answered)

    def _read_record_here(self, group: LocalGroup, txn_id: int, reply: RecordReply) -> None:
        def after_barrier(done: Any) -> None:
            result: Result = done.result()
            if not result.ok:
                reply(None, False)
                return
            reply(group.engine.txn_record(txn_id), True)

        group.runtime.barrier().add_done_callback(after_barrier)

    # -- reads that meet a write intent ---------------------------------------------------------

    def read_through(
        self,
        namespace: str,
        group: LocalGroup,
        *,
        digest: bytes,
        ops: tuple[Op, ...],
        now: int,
        reply: Callable[[Result], None],
    ) -> None:
        """Answer a read of a record another transaction wrote provisionally: the last
        committed version, as its home group decides (module docstring)."""
        intent, stored = group.engine.locked_view(digest)
        if intent is None or not intent.is_write:
            reply(group.engine.read_record(stored, ops, now))
            return

        def with_home(record: TxnRecord | None, known: bool) -> None:
            if not known:
                reply(failure(ResultCode.TIMEOUT, "the transaction's home group did not answer"))
                return
            visible: Record | None = visible_record(intent, stored, record)
            reply(group.engine.read_record(visible, ops, now))
            self._settle(namespace, group.placement.group, intent, record)

        self.read_record(namespace, intent.home, intent.txn_id, with_home)

    def _settle(
        self, namespace: str, group_id: int, intent: Intent, record: TxnRecord | None
    ) -> None:
        """After a read met `intent`: roll a committed transaction forward, recover one past
        its deadline."""
        if record is not None and record.state is TxnState.COMMITTED:
            resolve = TxnResolve(intent.txn_id, now_ms(), True, record.decided_ms)
            self.propose(namespace, group_id, resolve, lambda _: None)
            return
        blocker = Blocker(intent.txn_id, intent.home, intent.deadline_ms)
        self.recover_if_late(namespace, group_id, blocker)

    # -- recovery -------------------------------------------------------------------------------

    def note_blocked(self, namespace: str, group_id: int, result: Result) -> None:
        """A command was refused MRT_BLOCKED in `group_id`: recover its blocker if late."""
        blocker = blocker_of(result)
        if blocker is not None:
            self.recover_if_late(namespace, group_id, blocker)

    def recover_if_late(self, namespace: str, group_id: int, blocker: Blocker) -> None:
        if now_ms() <= blocker.deadline_ms:
            return
        key = (namespace, blocker.txn_id, group_id)
        with self._lock:
            if key in self._recovering:
                return
            self._recovering.add(key)
        recovery = Recovery(blocker.txn_id, blocker.home, blocker.deadline_ms, group_id)

        def finished(action: Answer | Recovered) -> None:
            assert isinstance(action, Recovered)
            with self._lock:
                self._recovering.discard(key)
            if action.state is not None:
                self._count("recovered")
            log.info(
                "txn_recovered",
                namespace=namespace,
                group=group_id,
                txn_id=blocker.txn_id,
                state=None if action.state is None else action.state.name,
            )

        _Run(self, namespace, recovery, finished).start()

    def sweep(self, now: int) -> None:
        """Recover the transactions holding intents past their deadline in the groups this
        node leads (a restarted node's leftovers included). From the jobs thread."""
        for (namespace, group_id), group in list(self._node.groups.items()):
            if not group.runtime.is_leader():
                continue
            for blocker in group.engine.intents_past_deadline(now, SWEEP_LIMIT):
                self.recover_if_late(namespace, group_id, blocker)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + 1


def _refused(code: int, message: str) -> Response:
    return Response(code=code, message=message)


def _in_doubt(message: str) -> Response:
    return Response(code=ResultCode.TIMEOUT, message=message, in_doubt=True)


def _step_result(response: Response | None) -> Result | None:
    """A peer's answer to a step as the step's `Result`; None if unknown."""
    if response is None:
        return None
    if response.code != ResultCode.OK:
        return failure(response.code, response.message)
    if not isinstance(response.value, bytes):
        log.warning("txn_step_malformed", value=repr(response.value)[:200])
        return None
    try:
        return decode_result(response.value)
    except Exception:
        log.warning("txn_step_malformed", value=repr(response.value)[:200])
        return None


def _record_to_wire(record: TxnRecord) -> list[Any]:
    return [int(record.state), record.deadline_ms, list(record.participants), record.decided_ms]


def _record_from_wire(value: Any) -> TxnRecord | None:
    if value is None:
        return None
    state, deadline_ms, participants, decided_ms = value
    return TxnRecord(TxnState(state), int(deadline_ms), tuple(participants), int(decided_ms))
