"""The transaction coordinator and the recovery of an intent, as pure state machines.

Sans I/O (h11 / etcd-raft style): the node feeds events in and performs the actions that come
out. No clock, no randomness, no network here; time comes in as `now_ms` arguments.

    coordinator = Coordinator(txn_id, home, deadline_ms, reads, writes, groups_of)
    actions = coordinator.start(now_ms)
    # for each Propose: propose its command in its group (through the group's leader, maybe
    # on another node); when the outcome is known, or given up on (a timeout), call
    actions = coordinator.on_reply(action_id, result_or_None, now_ms)
    # ... until an Answer comes out: tell the client. The coordinator is `done` once every
    # step is answered (its resolves may still be running after the Answer).
    # When a Propose went to a local leader's queue, which orders it before any command
    # that leader gets later, the node may also call
    actions = coordinator.on_placed(action_id, now_ms)

Every Propose gets exactly one `on_reply`: the command's `Result`, or None when its outcome
is unknown (timeout, lost acknowledgement, leadership lost). A definite result with a code of
`NOT_APPLIED_CODES` (not the leader, partition unavailable, ...) says the command was *not*
applied. Both are retried with a fresh action, at most `attempts_max` attempts per step;
every command here is idempotent (docs/transactions.md, raftstore.txn_participant).

The proposing node may restamp `now_ms` of a command with its own clock (it must when it is
the leader of another group than the coordinator's): commands are stamped by their proposer.

Steps (docs/transactions.md):
- all keys in one group: TxnApply; its answer is the transaction's.
- several groups, the home group among them: TxnPrepare in every other group at once; after
  every prepare answered, if all succeeded, TxnCommit at home: the home group's own reads
  and writes are checked and written with the decision, in one command (the home group is
  the last participant: it never locks). Its answer is the decision (or the home group's
  failure: aborted). If a prepare failed or stayed unknown, nothing is proposed at home: no
  one but this coordinator proposes a TxnCommit, so the transaction can only abort, and a
  recovery that meets a leftover intent records the abort at home itself. Then TxnResolve in
  every other group with the decided state; then the Answer.
  2 groups: 3 commands in 3 rounds (prepare, commit at home, resolve); the Answer after
  the second when the resolve is placed (below).
- a home group that is not a participant: TxnBegin first; once it answered, TxnPrepare in
  every group; TxnDecide at home (COMMITTED only if every prepare succeeded); TxnResolve in
  every group; then the Answer.
- outcome rules: the Answer is COMMITTED only after a decide (or an apply, or a commit)
  answered so; it is IN_DOUBT only when a TxnApply, a TxnCommit or a TxnDecide(COMMITTED) was
  possibly applied and no retry learnt the state; everything else is ABORTED, definite:
  nothing was or ever will be applied. A TxnCommit's definite failure aborts only if no
  earlier attempt may have applied: a later attempt's failure need not be the commit's own
  (a refusal before the log, say), while the earlier attempt may have committed.
  A decide (or commit) given up on whose every attempt was definitely not applied aborts,
  because nobody but this coordinator proposes COMMITTED. An abort that could not be decided
  still resolves every group aborted, the home group too: its final marker refuses any late
  TxnCommit, and no one can commit the transaction any more.
- a resolve given up on is left to recovery (past the deadline, anyone who meets the intent
  asks the home group); the Answer still tells the decided state.
- when the Answer goes: once the decision is final and every resolve has been answered *or
  placed* (`on_placed`: queued at the group's leader ahead of whatever that leader is sent
  later). The client's next command to that group then applies after the resolve, as if the
  answer had waited for it, and a read that comes first meets the intent and reads through
  it (docs/transactions.md, "Who meets an intent"). Without `on_placed` the Answer waits for
  every resolve's reply. A placed resolve that is then refused (the leader lost its term)
  is retried like any step and counts as placed no more.

`Recovery(txn_id, home, deadline_ms, group)` is what a node does with an intent past its
deadline: TxnDecide(ABORTED, resolve_here) at home, whose answer is the final state (COMMITTED
if the coordinator committed first; `resolve_here` resolves intents a home prepare left, which
only a coordinator before TxnCommit made), then TxnResolve in the intent's group with that
state (at home, where a status check recovers too, it leaves a final marker).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from raftstore.commands import Result
from raftstore.errors import ResultCode, is_definite
from raftstore.txn_commands import (
    TXN_WRITES_MAX,
    TxnApply,
    TxnBegin,
    TxnCommand,
    TxnCommit,
    TxnDecide,
    TxnPrepare,
    TxnRead,
    TxnResolve,
    TxnState,
    TxnWrite,
    state_of,
)

ATTEMPTS_MAX_DEFAULT: Final = 4
# Definite answers meaning "this command was not applied; try again (maybe elsewhere)".
NOT_APPLIED_CODES: Final = frozenset(
    {
        ResultCode.NOT_LEADER,
        ResultCode.PARTITION_UNAVAILABLE,
        ResultCode.CLUSTER_CHANGE,
        ResultCode.DEVICE_OVERLOAD,
    }
)


class CoordinatorMisuse(Exception):
    """The caller broke the protocol of this module (not a peer's fault)."""


class Outcome(enum.Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"  # definite: no write of the transaction is or will be visible
    IN_DOUBT = "in_doubt"  # the client learns the outcome later (txn_status)


@dataclass(frozen=True, slots=True)
class Propose:
    action_id: int
    group: int
    command: TxnCommand


@dataclass(frozen=True, slots=True)
class Answer:
    """The client's answer. `failure` is the definite failure that aborted the transaction
    (MRT_BLOCKED names its blocker: `txn_participant.blocker_of`)."""

    txn_id: int
    outcome: Outcome
    code: int
    message: str
    failure: Result | None = None


@dataclass(frozen=True, slots=True)
class Recovered:
    """A recovery's end: the transaction's final state, or None if it gave up (a later sweep
    tries again)."""

    txn_id: int
    group: int
    state: TxnState | None


Action = Propose | Answer | Recovered


class _Phase(enum.Enum):
    NEW = "new"
    APPLYING = "applying"
    BEGINNING = "beginning"
    PREPARING = "preparing"
    DECIDING = "deciding"
    RESOLVING = "resolving"
    DONE = "done"


class _Reply(enum.Enum):
    ANSWERED = "answered"  # the command's own answer (success or a definite failure)
    NOT_APPLIED = "not_applied"
    UNKNOWN = "unknown"


def _classify(reply: Result | None) -> _Reply:
    if reply is None or not is_definite(reply.code):
        return _Reply.UNKNOWN
    if reply.code in NOT_APPLIED_CODES:
        return _Reply.NOT_APPLIED
    return _Reply.ANSWERED


@dataclass(slots=True)
class _Step:
    """One command to get answered in one group, over its attempts."""

    group: int
    command: TxnCommand
    attempts: int = 1
    maybe_applied: bool = False  # some attempt's outcome is unknown


@dataclass(slots=True)
class _Proposals:
    """Action ids handed out and the steps waiting on them."""

    next_id: int = 1
    waiting: dict[int, _Step] = field(default_factory=dict)

    def propose(self, step: _Step) -> Propose:
        action = Propose(self.next_id, step.group, step.command)
        self.waiting[self.next_id] = step
        self.next_id += 1
        return action

    def take(self, action_id: int) -> _Step:
        step = self.waiting.pop(action_id, None)
        if step is None:
            raise CoordinatorMisuse(f"no action {action_id} is waiting for a reply")
        return step


def _restamp(command: TxnCommand, now_ms: int) -> TxnCommand:
    return replace(command, now_ms=now_ms)  # every command type has `now_ms`


class Coordinator:
    def __init__(  # noqa: PLR0917 - the transaction's own fields, in the documented order
        self,
        txn_id: int,
        home_group: int,
        deadline_ms: int,
        reads: Sequence[TxnRead],
        writes: Sequence[TxnWrite],
        groups_of: Callable[[bytes], int],
        *,
        attempts_max: int = ATTEMPTS_MAX_DEFAULT,
    ) -> None:
        if attempts_max < 1:
            raise CoordinatorMisuse("attempts_max must be at least 1")
        self.txn_id = txn_id
        self.home_group = home_group
        self.deadline_ms = deadline_ms
        self.reads = tuple(reads)
        self.writes = tuple(writes)
        self.attempts_max = attempts_max
        self._group_of = {d: groups_of(d) for d in self._digests()}
        self.groups = tuple(sorted(set(self._group_of.values())))
        self._home_participates = home_group in self.groups
        self._phase = _Phase.NEW
        self._proposals = _Proposals()
        self._prepared: dict[int, Result | None] = {}  # group -> answer (None: gave up)
        self._proposed = TxnState.ABORTED
        self._decision: TxnState | None = None
        self._decided_ms = 0
        self._resolved: set[int] = set()
        self._placed: set[int] = set()  # groups whose resolve sits in a leader's queue
        self.answer: Answer | None = None

    @property
    def done(self) -> bool:
        """Every step answered (or given up on): nothing more will be proposed."""
        return self._phase is _Phase.DONE

    # -- events ---------------------------------------------------------------------------------

    def start(self, now_ms: int) -> list[Action]:
        if self._phase is not _Phase.NEW:
            raise CoordinatorMisuse("start called twice")
        if not self.reads and not self.writes:
            return [self._finish(Outcome.COMMITTED, ResultCode.OK, "nothing to commit")]
        if len(self.writes) > TXN_WRITES_MAX:
            return [
                self._finish(
                    Outcome.ABORTED,
                    ResultCode.MRT_TOO_MANY_WRITES,
                    f"{len(self.writes)} writes is over the limit of {TXN_WRITES_MAX}",
                )
            ]
        if len(self.groups) == 1:
            self._phase = _Phase.APPLYING
            apply = TxnApply(self.txn_id, now_ms, self.deadline_ms, self.reads, self.writes)
            return [self._proposals.propose(_Step(self.groups[0], apply))]
        if self._home_participates:
            return self._prepare_all(now_ms)  # the home group commits last, without a prepare
        self._phase = _Phase.BEGINNING
        begin = TxnBegin(self.txn_id, now_ms, self.deadline_ms, self.groups)
        return [self._proposals.propose(_Step(self.home_group, begin))]

    def on_reply(self, action_id: int, reply: Result | None, now_ms: int) -> list[Action]:
        if self._phase in (_Phase.NEW, _Phase.DONE):
            raise CoordinatorMisuse(f"reply in phase {self._phase.value}")
        step = self._proposals.take(action_id)
        kind = _classify(reply)
        if kind is not _Reply.ANSWERED:
            step.maybe_applied = step.maybe_applied or kind is _Reply.UNKNOWN
            if step.attempts < self.attempts_max:
                step.attempts += 1
                step.command = _restamp(step.command, now_ms)
                self._placed.discard(step.group)  # that queue's promise is void
                return [self._proposals.propose(step)]
            return self._gave_up(step, now_ms)
        assert reply is not None
        return self._answered(step, reply, now_ms)

    def on_placed(self, action_id: int, now_ms: int) -> list[Action]:
        """The proposal `action_id` sits in its group's leader's queue, ahead of anything
        that leader is sent from now on. Only resolves count; an action already answered (a
        quick local apply) is ignored."""
        step = self._proposals.waiting.get(action_id)
        if self._phase is not _Phase.RESOLVING or step is None:
            return []
        self._placed.add(step.group)
        return self._answer_when_settled()

    # -- phases ---------------------------------------------------------------------------------

    def _answered(self, step: _Step, reply: Result, now_ms: int) -> list[Action]:
        phase = self._phase
        if phase is _Phase.APPLYING:
            if reply.ok:
                return [self._finish(Outcome.COMMITTED, ResultCode.OK, "committed")]
            return [self._finish(Outcome.ABORTED, reply.code, reply.message, reply)]
        if phase is _Phase.BEGINNING:
            if reply.ok:
                return self._prepare_all(now_ms)
            return [self._finish(Outcome.ABORTED, reply.code, reply.message, reply)]
        if phase is _Phase.PREPARING:
            self._prepared[step.group] = reply
            return self._decide_when_prepared(now_ms)
        if phase is _Phase.DECIDING:
            state = state_of(reply)
            home_resolved = self._home_participates  # a TxnCommit leaves nothing to resolve
            if state is TxnState.COMMITTED or state is TxnState.ABORTED:
                return self._resolve_all(
                    state, reply.last_update_ms, now_ms, home_resolved=home_resolved
                )
            if isinstance(step.command, TxnCommit) and not reply.ok and not step.maybe_applied:
                # Every earlier attempt was definitely not applied, so this failure is this
                # attempt's own: the home group's checks failed (it recorded the abort) or it
                # was refused before the log. Either way nothing commits there any more; the
                # failure is the transaction's answer, as a failed prepare's would be.
                self._prepared[self.home_group] = reply
                return self._resolve_all(TxnState.ABORTED, 0, now_ms, home_resolved=True)
            # A decide failing definitely (a bug) did not apply: like a decide given up on.
            return self._decide_given_up(step, now_ms)
        assert phase is _Phase.RESOLVING, phase
        return self._resolved_one(step.group)

    def _gave_up(self, step: _Step, now_ms: int) -> list[Action]:
        phase = self._phase
        if phase is _Phase.APPLYING:
            if step.maybe_applied:
                return [self._finish(Outcome.IN_DOUBT, ResultCode.TIMEOUT, "apply outcome unknown")]
            return [self._finish(Outcome.ABORTED, ResultCode.MRT_ABORTED, "apply not applied")]
        if phase is _Phase.BEGINNING:
            # Nothing is prepared: the transaction cannot commit, whatever became of the begin.
            return [self._finish(Outcome.ABORTED, ResultCode.MRT_ABORTED, "could not begin")]
        if phase is _Phase.PREPARING:
            self._prepared[step.group] = None
            return self._decide_when_prepared(now_ms)
        if phase is _Phase.DECIDING:
            return self._decide_given_up(step, now_ms)
        assert phase is _Phase.RESOLVING, phase
        return self._resolved_one(step.group)  # left to recovery

    def _prepare_all(self, now_ms: int) -> list[Action]:
        self._phase = _Phase.PREPARING
        actions: list[Action] = []
        for group in self._preparing():
            reads, writes = self._part_of(group)
            prepare = TxnPrepare(
                self.txn_id, self.home_group, now_ms, self.deadline_ms, reads, writes
            )
            actions.append(self._proposals.propose(_Step(group, prepare)))
        return actions

    def _preparing(self) -> tuple[int, ...]:
        """The groups that get a TxnPrepare: all but a participating home group."""
        return tuple(g for g in self.groups if g != self.home_group)

    def _part_of(self, group: int) -> tuple[tuple[TxnRead, ...], tuple[TxnWrite, ...]]:
        reads = tuple(r for r in self.reads if self._group_of[r.digest] == group)
        writes = tuple(w for w in self.writes if self._group_of[w.digest] == group)
        return reads, writes

    def _decide_when_prepared(self, now_ms: int) -> list[Action]:
        if len(self._prepared) < len(self._preparing()):
            return []
        self._phase = _Phase.DECIDING
        all_prepared = all(r is not None and r.ok for r in self._prepared.values())
        self._proposed = TxnState.COMMITTED if all_prepared else TxnState.ABORTED
        command: TxnCommand
        if not self._home_participates:
            command = TxnDecide(self.txn_id, now_ms, self.deadline_ms, self._proposed)
        elif all_prepared:
            reads, writes = self._part_of(self.home_group)
            command = TxnCommit(self.txn_id, now_ms, self.deadline_ms, reads, writes, self.groups)
        else:
            # Nothing was proposed at home, and nothing ever will be: the home group has
            # nothing to decide or resolve (a recovery records the abort if it needs to).
            return self._resolve_all(TxnState.ABORTED, 0, now_ms, home_resolved=True)
        return [self._proposals.propose(_Step(self.home_group, command))]

    def _decide_given_up(self, step: _Step, now_ms: int) -> list[Action]:
        if self._proposed is TxnState.COMMITTED and step.maybe_applied:
            return [self._finish(Outcome.IN_DOUBT, ResultCode.TIMEOUT, "decide outcome unknown")]
        # Only this coordinator ever proposes COMMITTED, and its proposal never applied (or it
        # proposed ABORTED): the transaction can only end aborted. No decide answered, so no
        # decide resolved the home group: it gets a TxnResolve like the others.
        return self._resolve_all(TxnState.ABORTED, 0, now_ms, home_resolved=False)

    def _resolve_all(
        self, state: TxnState, decided_ms: int, now_ms: int, *, home_resolved: bool
    ) -> list[Action]:
        """TxnResolve in every participant group, but the home group when `home_resolved`:
        a TxnCommit answered (the home group holds no intents), or nothing was proposed
        there (a failed prepare)."""
        self._phase = _Phase.RESOLVING
        self._decision = state
        self._decided_ms = decided_ms
        if home_resolved:
            self._resolved.add(self.home_group)
        committed = state is TxnState.COMMITTED
        actions: list[Action] = [
            self._proposals.propose(
                _Step(group, TxnResolve(self.txn_id, now_ms, committed, decided_ms))
            )
            for group in self.groups
            if group not in self._resolved
        ]
        return actions or self._resolved_one(None)

    def _resolved_one(self, group: int | None) -> list[Action]:
        if group is not None:
            self._resolved.add(group)
        actions = self._answer_when_settled()
        if self._resolved.issuperset(self.groups):
            self._phase = _Phase.DONE
        return actions

    def _answer_when_settled(self) -> list[Action]:
        """The decided answer, once every group is resolved or has its resolve placed."""
        if self.answer is not None or not (self._resolved | self._placed).issuperset(self.groups):
            return []
        if self._decision is TxnState.COMMITTED:
            return [self._answer(Outcome.COMMITTED, ResultCode.OK, "committed")]
        failed = [
            (group, r) for group, r in sorted(self._prepared.items()) if r is not None and not r.ok
        ]
        if failed:
            reply = failed[0][1]
            assert reply is not None
            return [self._answer(Outcome.ABORTED, reply.code, reply.message, reply)]
        if self._proposed is TxnState.COMMITTED:
            why = "aborted by a recovery, or decided after the deadline"
        else:
            why = "a prepare's outcome stayed unknown"
        return [self._answer(Outcome.ABORTED, ResultCode.MRT_ABORTED, why)]

    def _finish(
        self, outcome: Outcome, code: int, message: str, failure: Result | None = None
    ) -> Answer:
        """Answer, with nothing left to do."""
        self._phase = _Phase.DONE
        return self._answer(outcome, code, message, failure)

    def _answer(
        self, outcome: Outcome, code: int, message: str, failure: Result | None = None
    ) -> Answer:
        self.answer = Answer(self.txn_id, outcome, code, message, failure)
        return self.answer

    def _digests(self) -> list[bytes]:
        return [r.digest for r in self.reads] + [w.digest for w in self.writes]


class Recovery:
    """Resolve the intents of `txn_id` in `group`, found past the deadline (see the module)."""

    def __init__(
        self,
        txn_id: int,
        home_group: int,
        deadline_ms: int,
        group: int,
        *,
        attempts_max: int = ATTEMPTS_MAX_DEFAULT,
    ) -> None:
        if attempts_max < 1:
            raise CoordinatorMisuse("attempts_max must be at least 1")
        self.txn_id = txn_id
        self.home_group = home_group
        self.deadline_ms = deadline_ms
        self.group = group
        self.attempts_max = attempts_max
        self._proposals = _Proposals()
        self._state: TxnState | None = None
        self.result: Recovered | None = None
        self._started = False

    @property
    def done(self) -> bool:
        return self.result is not None

    def start(self, now_ms: int) -> list[Action]:
        if self._started:
            raise CoordinatorMisuse("start called twice")
        if now_ms <= self.deadline_ms:
            raise CoordinatorMisuse("recovering before the deadline would abort a live txn")
        self._started = True
        # resolve_here: the home group's own intents go in the same command (a home group
        # that never prepared is left as it is; the record refuses a late prepare).
        decide = TxnDecide(
            self.txn_id, now_ms, self.deadline_ms, TxnState.ABORTED, resolve_here=True
        )
        return [self._proposals.propose(_Step(self.home_group, decide))]

    def on_reply(self, action_id: int, reply: Result | None, now_ms: int) -> list[Action]:
        if not self._started or self.done:
            raise CoordinatorMisuse("reply to a recovery not running")
        step = self._proposals.take(action_id)
        if _classify(reply) is not _Reply.ANSWERED:
            if step.attempts < self.attempts_max:
                step.attempts += 1
                step.command = _restamp(step.command, now_ms)
                return [self._proposals.propose(step)]
            return [self._finish(None)]
        assert reply is not None
        if isinstance(step.command, TxnDecide):
            state = state_of(reply)
            if state is not TxnState.COMMITTED and state is not TxnState.ABORTED:
                return [self._finish(None)]
            self._state = state
            resolve = TxnResolve(
                self.txn_id, now_ms, state is TxnState.COMMITTED, reply.last_update_ms
            )
            return [self._proposals.propose(_Step(self.group, resolve))]
        return [self._finish(self._state if reply.ok else None)]

    def on_placed(self, action_id: int, now_ms: int) -> list[Action]:
        """Nobody waits on a recovery's placement: its end is its last reply."""
        return []

    def _finish(self, state: TxnState | None) -> Recovered:
        self.result = Recovered(self.txn_id, self.group, state)
        return self.result
