"""The coordinator and recovery, driven through a deterministic simulation of groups and a
faulty network: crashes after every step, late duplicates, lost acks, concurrent transfers.

`Sim` holds several groups (tests/test_txn_participant.py's `Group`: a MemoryKv, a record
store and the participant logic), the messages in flight, and a clock. Every Propose of an
actor (a Coordinator or a Recovery) becomes a message; a step picks one at random (seeded)
and either applies it and answers, applies it and loses the answer, loses it, answers "not
the leader", times the owner out while the message stays in flight to be applied later, or
applies and answers it but leaves a copy in flight (those left in flight are *zombies*: the
duplicates delayed in the network, applied much later or never). The proposer stamps
`now_ms` when the command applies. With `places`, half the resolves are also reported
placed (`on_placed`) as they go out, as a node does for a group it leads, so the answer may
come before they apply. Every failure message carries the seed that replays it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from raftstore import keys, txn_participant
from raftstore import ops as op
from raftstore.commands import Result
from raftstore.errors import ResultCode
from raftstore.policy import WritePolicy
from raftstore.txn_commands import (
    TXN_TIMEOUT_MS_MAX,
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
    decide_result,
    state_of,
)
from raftstore.txn_participant import (
    Blocker,
    blocker_of,
    intents_past_deadline,
    read_needs_home,
    visible_record,
    visible_version,
)
from tests.test_txn_participant import NOW_MS, TABLES, Group
from txn.coordinator import (
    Answer,
    Coordinator,
    CoordinatorMisuse,
    Outcome,
    Propose,
    Recovered,
    Recovery,
    _Phase,
    _Step,
)

Actor = Coordinator | Recovery
TIMEOUT_MS = 1_000


@dataclass(slots=True)
class Flight:
    owner: Actor
    action: Propose
    zombie: bool = False  # the owner stopped waiting (timed out); it may still apply


@dataclass(slots=True)
class Watch:
    events_max: int  # stop the actor after this many events (start counts as one)
    mode: str  # "crash": never hears again; "pause": hears everything late, in settle()
    events: int = 0


@dataclass(slots=True)
class Sim:
    seed: int
    group_count: int
    faults: bool = True
    places: bool = False
    step_ms_max: int = 40
    rng: random.Random = field(init=False)
    groups: list[Group] = field(init=False)
    clock: int = NOW_MS
    steps: int = 0
    flights: list[Flight] = field(default_factory=list)
    watches: dict[int, Watch] = field(default_factory=dict)  # by id(actor)
    crashed: set[int] = field(default_factory=set)
    paused: dict[int, tuple[Actor, list[tuple[int, Result | None]]]] = field(default_factory=dict)
    recovering: dict[tuple[int, int], Recovery] = field(default_factory=dict)
    commit_order: list[int] = field(default_factory=list)
    commit_steps: dict[int, int] = field(default_factory=dict)
    answers: dict[int, tuple[Answer, int]] = field(default_factory=dict)
    early_answers: int = 0  # answers given while the coordinator's resolves still ran
    recovered: list[Recovered] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.groups = [Group(g) for g in range(self.group_count)]

    # -- actors -------------------------------------------------------------------------------

    def start(self, actor: Actor) -> None:
        actions = actor.start(self.clock)
        self._counted(actor)
        self._handle(actor, actions)

    def watch(self, actor: Actor, events_max: int, mode: str) -> None:
        self.watches[id(actor)] = Watch(events_max, mode)

    def _counted(self, actor: Actor) -> None:
        watch = self.watches.get(id(actor))
        if watch is None:
            return
        watch.events += 1
        if watch.events == watch.events_max:
            if watch.mode == "crash":
                self.crashed.add(id(actor))
            else:
                self.paused[id(actor)] = (actor, [])

    def _handle(self, actor: Actor, actions: Sequence[Any]) -> None:
        for action in actions:
            if isinstance(action, Propose):
                self.flights.append(Flight(actor, action))
                resolve = isinstance(action.command, TxnResolve)
                if self.places and resolve and self.rng.random() < 0.5 and self._hears(actor):
                    self._handle(actor, actor.on_placed(action.action_id, self.clock))
            elif isinstance(action, Answer):
                assert action.txn_id not in self.answers, "answered twice"
                self.answers[action.txn_id] = (action, self.steps)
                self.early_answers += not actor.done
            else:
                assert isinstance(action, Recovered)
                self.recovered.append(action)
                del self.recovering[(action.txn_id, action.group)]

    def _hears(self, actor: Actor) -> bool:
        return id(actor) not in self.crashed and id(actor) not in self.paused

    def _reply(self, actor: Actor, action_id: int, reply: Result | None) -> None:
        if id(actor) in self.crashed:
            return
        if id(actor) in self.paused:
            self.paused[id(actor)][1].append((action_id, reply))
            return
        actions = actor.on_reply(action_id, reply, self.clock)
        self._counted(actor)
        self._handle(actor, actions)

    # -- the network and the groups -----------------------------------------------------------

    def step(self) -> None:
        """One random event: a message moves, or time passes."""
        self.steps += 1
        if self.flights and self.rng.random() < 0.85:
            self._step_flight()
        else:
            self.clock += self.rng.randint(0, self.step_ms_max)

    def _step_flight(self) -> None:
        flight = self.flights.pop(self.rng.randrange(len(self.flights)))
        owner, action = flight.owner, flight.action
        if flight.zombie:  # delayed in the network: most often it stays there a while longer
            roll = self.rng.random()
            if roll < 0.1:
                self.apply(action.group, action.command)
            elif roll < 0.95:
                self.flights.append(flight)
            return
        roll = self.rng.random() if self.faults else 1.0
        if roll < 0.05:  # lost before it reached the leader
            self._reply(owner, action.action_id, None)
        elif roll < 0.10:
            self._reply(owner, action.action_id, Result(code=ResultCode.NOT_LEADER))
        elif roll < 0.18:  # the owner times out; the message arrives later, or never
            flight.zombie = True
            self.flights.append(flight)
            self._reply(owner, action.action_id, None)
        elif roll < 0.26:  # applied, the acknowledgement lost
            self.apply(action.group, action.command)
            self._reply(owner, action.action_id, None)
        elif roll < 0.36:  # applied and answered, and a duplicate stays in the network
            self.flights.append(Flight(owner, action, zombie=True))
            self._reply(owner, action.action_id, self.apply(action.group, action.command))
        else:
            self._reply(owner, action.action_id, self.apply(action.group, action.command))

    def apply(self, group_id: int, command: TxnCommand) -> Result:
        stamped = replace(command, now_ms=self.clock)  # the proposer stamps its commands
        result = self.groups[group_id].apply(stamped)
        committed = (isinstance(stamped, TxnApply) and result.ok) or (
            isinstance(stamped, TxnDecide | TxnCommit) and state_of(result) is TxnState.COMMITTED
        )
        if committed:
            txn_id = stamped.txn_id  # type: ignore[union-attr]
            if txn_id not in self.commit_steps:
                self.commit_steps[txn_id] = self.steps
                self.commit_order.append(txn_id)
        return result

    # -- recovery -----------------------------------------------------------------------------

    def sweep(self) -> None:
        for group in self.groups:
            with group.kv.begin() as txn:
                found = intents_past_deadline(txn, self.clock, tables=TABLES, limit=64)
            for blocker in found:
                self.recover(blocker, group.group_id)

    def status_check(self, txn_id: int, home: int, deadline_ms: int, groups: set[int]) -> None:
        """A client that gave up waiting asks for the outcome, as the node's status check
        does: a recovery in every group, its deadline taken as passed (an OPEN transaction
        is aborted; a COMMITTED decision stands)."""
        for group_id in sorted(groups):
            if (txn_id, group_id) in self.recovering:
                continue
            recovery = Recovery(txn_id, home, min(deadline_ms, self.clock - 1), group_id)
            self.recovering[(txn_id, group_id)] = recovery
            self._handle(recovery, recovery.start(self.clock))

    def recover(self, blocker: Blocker, group_id: int) -> None:
        if (blocker.txn_id, group_id) in self.recovering or self.clock <= blocker.deadline_ms:
            return
        recovery = Recovery(blocker.txn_id, blocker.home, blocker.deadline_ms, group_id)
        self.recovering[(blocker.txn_id, group_id)] = recovery
        self._handle(recovery, recovery.start(self.clock))

    def settle(self) -> None:
        """Faults off; every message (zombies too) delivered; time past every deadline;
        recoveries; then the paused actors wake up late; recoveries again, to quiescence."""
        self.faults = False
        self._drain()
        self.clock += TXN_TIMEOUT_MS_MAX + 1
        self.sweep()
        self._drain()
        for actor, held in list(self.paused.values()):
            del self.paused[id(actor)]
            for action_id, reply in held:
                self._reply(actor, action_id, reply)
            self._drain()
        for _ in range(20):
            self.clock += TXN_TIMEOUT_MS_MAX + 1
            self.sweep()
            if not self.flights:
                break
            self._drain()
        assert not self.flights and not self.recovering, self.why()

    def _drain(self) -> None:
        for _ in range(100_000):
            if not self.flights:
                return
            self.steps += 1
            self._step_flight()
        raise AssertionError(f"the network never drained ({self.why()})")

    # -- observations -------------------------------------------------------------------------

    def intents(self) -> dict[int, dict[bytes, bytes]]:
        return {g.group_id: g.intents() for g in self.groups if g.intents()}

    def read(self, key: bytes, group_id: int) -> tuple[dict[str, Any] | None, TxnRead]:
        """A linearizable single-record read, meeting intents as docs/transactions.md says."""
        group = self.groups[group_id]
        stored, intent = group.record(key), group.intent(key)
        home = None
        if read_needs_home(intent):
            assert intent is not None
            home = self.groups[intent.home].txn_record(intent.txn_id)
        record = visible_record(intent, stored, home)
        generation, last_update_ms = visible_version(record, self.clock)
        bins = None if record is None or not record.is_live(self.clock) else dict(record.bins)
        return bins, TxnRead(key, generation, last_update_ms)

    def why(self) -> str:
        return f"seed={self.seed} groups={self.group_count} steps={self.steps}"


def key_in(group_id: int, group_count: int, n: int) -> bytes:
    """A digest of the n-th key (of those) mapped to `group_id`."""
    found = 0
    for i in range(100_000):
        digest = keys.calc_digest("test", "s", f"k{i}")
        if group_by_digest(digest, group_count) == group_id:
            if found == n:
                return digest
            found += 1
    raise AssertionError("unreachable")


def group_by_digest(digest: bytes, group_count: int) -> int:
    return keys.partition_id(digest) % group_count


# -- unit tests of the coordinator's steps ------------------------------------------------------

A0 = key_in(0, 2, 0)
A1 = key_in(1, 2, 0)
A2 = key_in(2, 3, 0)
DEADLINE_MS = NOW_MS + TIMEOUT_MS


def groups_of_two(digest: bytes) -> int:
    return group_by_digest(digest, 2)


def groups_of_three(digest: bytes) -> int:
    """A0 and A1 where two groups put them (0 and 1), A2 in group 2."""
    return {A0: 0, A1: 1, A2: 2}[digest]


def increment(key: bytes, delta: int = 1) -> TxnWrite:
    return TxnWrite(key, "s", None, (op.increment("n", delta),), WritePolicy())


def coordinator(
    writes: Sequence[TxnWrite], reads: Sequence[TxnRead] = (), **kwargs: Any
) -> Coordinator:
    return Coordinator(9, 0, DEADLINE_MS, reads, writes, groups_of_two, **kwargs)


def proposals(actions: Sequence[Any]) -> list[Any]:
    """The actions, all Proposes (typed loosely: tests read their commands' fields)."""
    assert all(isinstance(action, Propose) for action in actions), actions
    return list(actions)


def only(actions: Sequence[Any]) -> Any:
    assert len(actions) == 1, actions
    return actions[0]


def test_one_group_is_one_apply() -> None:
    coord = coordinator([increment(A0)], [TxnRead(A0, 0, 0)])
    propose = only(coord.start(NOW_MS))
    assert propose.group == 0 and isinstance(propose.command, TxnApply)
    answer = only(coord.on_reply(propose.action_id, Result(count=1), NOW_MS))
    assert answer == Answer(9, Outcome.COMMITTED, ResultCode.OK, "committed")
    assert coord.done


def test_a_failed_apply_aborts_with_its_code() -> None:
    coord = coordinator([increment(A0)])
    propose = only(coord.start(NOW_MS))
    failed = Result(code=ResultCode.MRT_VERSION_MISMATCH, message="stale")
    answer = only(coord.on_reply(propose.action_id, failed, NOW_MS))
    assert (answer.outcome, answer.code, answer.failure) == (Outcome.ABORTED, 121, failed)


def test_an_apply_whose_outcome_stays_unknown_is_in_doubt() -> None:
    coord = coordinator([increment(A0)], attempts_max=3)
    propose = only(coord.start(NOW_MS))
    for _ in range(2):
        propose = only(coord.on_reply(propose.action_id, None, NOW_MS + 1))
        assert propose.command.now_ms == NOW_MS + 1  # restamped
    answer = only(coord.on_reply(propose.action_id, Result(code=ResultCode.TIMEOUT), NOW_MS))
    assert answer.outcome is Outcome.IN_DOUBT


def test_an_apply_never_applied_is_aborted() -> None:
    coord = coordinator([increment(A0)], attempts_max=2)
    propose = only(coord.start(NOW_MS))
    not_leader = Result(code=ResultCode.NOT_LEADER)
    propose = only(coord.on_reply(propose.action_id, not_leader, NOW_MS))
    answer = only(coord.on_reply(propose.action_id, not_leader, NOW_MS))
    assert answer.outcome is Outcome.ABORTED


def test_nothing_to_do_and_too_many_writes_are_answered_at_once() -> None:
    assert only(coordinator([]).start(NOW_MS)).outcome is Outcome.COMMITTED
    writes = [increment(key_in(0, 1, 0))] * (TXN_WRITES_MAX + 1)
    answer = only(coordinator(writes).start(NOW_MS))
    assert (answer.outcome, answer.code) == (Outcome.ABORTED, ResultCode.MRT_TOO_MANY_WRITES)


def _through_prepares(coord: Coordinator) -> Any:
    # The home group (0) is the last participant: only the other group gets a prepare.
    prepare = only(coord.start(NOW_MS))
    assert prepare.group == 1 and isinstance(prepare.command, TxnPrepare)
    assert (prepare.command.home, prepare.command.participants) == (0, ())
    assert prepare.command.writes == (increment(A1),)
    commit = only(coord.on_reply(prepare.action_id, Result(count=1), NOW_MS))
    home_reads = tuple(r for r in coord.reads if r.digest == A0)
    assert commit.group == 0 and commit.command == TxnCommit(
        9, NOW_MS, DEADLINE_MS, home_reads, (increment(A0),), (0, 1)
    )
    return commit


def test_several_groups_prepare_then_commit_at_home_then_resolve() -> None:
    coord = coordinator([increment(A0), increment(A1)])
    commit = _through_prepares(coord)
    resolve = only(coord.on_reply(commit.action_id, decide_result(TxnState.COMMITTED, 77), NOW_MS))
    # The commit wrote the home group's records: only the other group gets a TxnResolve.
    assert (resolve.group, resolve.command) == (1, TxnResolve(9, NOW_MS, True, 77))
    answer = only(coord.on_reply(resolve.action_id, Result(), NOW_MS))
    assert answer.outcome is Outcome.COMMITTED


def test_the_answer_goes_once_every_resolve_is_placed_and_the_resolves_still_finish() -> None:
    coord = Coordinator(
        9, 0, DEADLINE_MS, [], [increment(A0), increment(A1), increment(A2)], groups_of_three
    )
    prepares = proposals(coord.start(NOW_MS))
    assert coord.on_placed(prepares[0].action_id, NOW_MS) == [], "only resolves count"
    coord.on_reply(prepares[0].action_id, Result(count=1), NOW_MS)
    commit = only(coord.on_reply(prepares[1].action_id, Result(count=1), NOW_MS))
    resolves = proposals(
        coord.on_reply(commit.action_id, decide_result(TxnState.COMMITTED, 77), NOW_MS)
    )
    assert [r.group for r in resolves] == [1, 2]
    assert coord.on_placed(resolves[0].action_id, NOW_MS) == [], "group 2 is not placed yet"
    # Group 1's placed resolve is refused (its leader lost the term): placed no more.
    retry = only(coord.on_reply(resolves[0].action_id, Result(code=ResultCode.NOT_LEADER), NOW_MS))
    assert coord.on_placed(resolves[1].action_id, NOW_MS) == []
    answer = only(coord.on_placed(retry.action_id, NOW_MS))
    assert answer == Answer(9, Outcome.COMMITTED, ResultCode.OK, "committed")
    assert coord.answer == answer and not coord.done, "its resolves are still running"
    assert coord.on_reply(resolves[1].action_id, Result(), NOW_MS) == []
    assert coord.on_reply(retry.action_id, Result(), NOW_MS) == [], "answered once"
    assert coord.done
    with pytest.raises(CoordinatorMisuse):
        coord.on_reply(retry.action_id, Result(), NOW_MS)


def test_an_abort_is_answered_early_too_with_its_failure() -> None:
    coord = coordinator([increment(A0), increment(A1)], [TxnRead(A0, 1, 5)])
    commit = _through_prepares(coord)
    stale = Result(code=ResultCode.MRT_VERSION_MISMATCH, message="stale")
    resolve = only(coord.on_reply(commit.action_id, stale, NOW_MS))
    answer = only(coord.on_placed(resolve.action_id, NOW_MS))
    assert (answer.outcome, answer.failure) == (Outcome.ABORTED, stale)
    assert coord.on_reply(resolve.action_id, Result(), NOW_MS) == [] and coord.done


def test_a_home_group_failing_its_commit_checks_aborts_with_its_failure() -> None:
    coord = coordinator([increment(A0), increment(A1)], [TxnRead(A0, 1, 5)])
    commit = _through_prepares(coord)
    assert commit.command.reads == (TxnRead(A0, 1, 5),)
    stale = Result(code=ResultCode.MRT_VERSION_MISMATCH, message="stale")
    resolve = only(coord.on_reply(commit.action_id, stale, NOW_MS))
    assert (resolve.group, resolve.command.committed) == (1, False)
    answer = only(coord.on_reply(resolve.action_id, Result(), NOW_MS))
    assert (answer.outcome, answer.code, answer.failure) == (
        Outcome.ABORTED,
        ResultCode.MRT_VERSION_MISMATCH,
        stale,
    )


def test_a_home_group_outside_the_transaction_gets_a_begin_first() -> None:
    coord = Coordinator(9, 2, DEADLINE_MS, [], [increment(A0), increment(A1)], groups_of_two)
    begin = only(coord.start(NOW_MS))
    assert (begin.group, begin.command) == (2, TxnBegin(9, NOW_MS, DEADLINE_MS, (0, 1)))
    prepares = proposals(coord.on_reply(begin.action_id, Result(), NOW_MS))
    assert [(p.group, p.command.home, p.command.participants) for p in prepares] == [
        (0, 2, ()),
        (1, 2, ()),
    ]
    coord.on_reply(prepares[0].action_id, Result(count=1), NOW_MS)
    decide = only(coord.on_reply(prepares[1].action_id, Result(count=1), NOW_MS))
    assert decide.group == 2 and not decide.command.resolve_here
    resolves = proposals(
        coord.on_reply(decide.action_id, decide_result(TxnState.COMMITTED, 77), NOW_MS)
    )
    assert [r.group for r in resolves] == [0, 1]
    coord.on_reply(resolves[0].action_id, Result(), NOW_MS)
    assert only(coord.on_reply(resolves[1].action_id, Result(), NOW_MS)).outcome is (
        Outcome.COMMITTED
    )


def test_a_begin_refused_aborts_at_once() -> None:
    coord = Coordinator(9, 2, DEADLINE_MS, [], [increment(A0), increment(A1)], groups_of_two)
    begin = only(coord.start(NOW_MS))
    refused = Result(code=ResultCode.MRT_ABORTED, message="aborted")
    answer = only(coord.on_reply(begin.action_id, refused, NOW_MS))
    assert (answer.outcome, answer.code) == (Outcome.ABORTED, ResultCode.MRT_ABORTED)


def test_a_failed_prepare_aborts_everywhere_and_names_its_blocker() -> None:
    coord = Coordinator(
        9, 0, DEADLINE_MS, [], [increment(A0), increment(A1), increment(A2)], groups_of_three
    )
    prepares = proposals(coord.start(NOW_MS))
    assert [p.group for p in prepares] == [1, 2]
    blocked = Result(
        code=ResultCode.MRT_BLOCKED,
        results=(("txn_id", 5), ("txn_home", 1), ("txn_deadline_ms", 3)),
    )
    assert coord.on_reply(prepares[1].action_id, blocked, NOW_MS) == []
    # Nothing is proposed at home (no TxnCommit ever will be): the others resolve aborted.
    resolves = proposals(coord.on_reply(prepares[0].action_id, Result(), NOW_MS))
    assert [(r.group, r.command.committed) for r in resolves] == [(1, False), (2, False)]
    retry = only(coord.on_reply(resolves[0].action_id, None, NOW_MS))
    assert coord.on_reply(resolves[1].action_id, Result(), NOW_MS) == []
    answer = only(coord.on_reply(retry.action_id, Result(), NOW_MS))
    assert (answer.outcome, answer.code, blocker_of(answer.failure)) == (
        Outcome.ABORTED,
        ResultCode.MRT_BLOCKED,
        Blocker(5, 1, 3),
    )


def test_a_failure_after_an_unknown_commit_attempt_is_in_doubt_not_aborted() -> None:
    """Attempt 1 may have committed (its answer was lost); attempt 2's definite failure may
    be a refusal before the log, not the commit's own answer: resolving the other group
    aborted could leave half a transaction."""
    coord = coordinator([increment(A0), increment(A1)])
    commit = _through_prepares(coord)
    retry = only(coord.on_reply(commit.action_id, None, NOW_MS))
    refused = Result(code=ResultCode.NAMESPACE_NOT_FOUND, message="no namespace")
    answer = only(coord.on_reply(retry.action_id, refused, NOW_MS))
    assert isinstance(answer, Answer) and answer.outcome is Outcome.IN_DOUBT


def test_a_commit_refused_as_aborted_resolves_the_others() -> None:
    """A recovery (or a status check) decided first: the commit writes nothing, and the
    other group, prepared, is resolved aborted."""
    coord = coordinator([increment(A0), increment(A1)])
    commit = _through_prepares(coord)
    refused = decide_result(TxnState.ABORTED, 5)
    resolve = only(coord.on_reply(commit.action_id, refused, NOW_MS))
    assert (resolve.group, resolve.command.committed) == (1, False)
    answer = only(coord.on_reply(resolve.action_id, Result(), NOW_MS))
    assert (answer.outcome, answer.code) == (Outcome.ABORTED, ResultCode.MRT_ABORTED)


def test_a_commit_learnt_by_a_retry_is_not_in_doubt() -> None:
    coord = coordinator([increment(A0), increment(A1)])
    decide = _through_prepares(coord)
    retry = only(coord.on_reply(decide.action_id, None, NOW_MS))
    assert retry.command == decide.command
    resolve = only(coord.on_reply(retry.action_id, decide_result(TxnState.ABORTED, 3), NOW_MS))
    assert resolve.group == 1 and not resolve.command.committed  # a recovery got there first
    answer = only(coord.on_reply(resolve.action_id, Result(), NOW_MS))
    assert (answer.outcome, answer.code) == (Outcome.ABORTED, ResultCode.MRT_ABORTED)


def test_a_commit_never_answered_is_in_doubt() -> None:
    coord = coordinator([increment(A0), increment(A1)], attempts_max=2)
    decide = _through_prepares(coord)
    retry = only(coord.on_reply(decide.action_id, None, NOW_MS))
    answer = only(coord.on_reply(retry.action_id, Result(code=ResultCode.NOT_LEADER), NOW_MS))
    assert answer.outcome is Outcome.IN_DOUBT


def test_a_commit_never_applied_aborts() -> None:
    coord = coordinator([increment(A0), increment(A1)], attempts_max=2)
    decide = _through_prepares(coord)
    not_leader = Result(code=ResultCode.NOT_LEADER)
    retry = only(coord.on_reply(decide.action_id, not_leader, NOW_MS))
    resolves = proposals(coord.on_reply(retry.action_id, not_leader, NOW_MS))
    # No commit applied: every group gets a TxnResolve, the home group's final marker
    # refusing a commit that would come late.
    assert [(r.group, r.command.committed) for r in resolves] == [(0, False), (1, False)]
    coord.on_reply(resolves[0].action_id, Result(), NOW_MS)
    answer = only(coord.on_reply(resolves[1].action_id, Result(), NOW_MS))
    assert answer.outcome is Outcome.ABORTED


def test_misuse_is_refused() -> None:
    coord = coordinator([increment(A0)])
    with pytest.raises(CoordinatorMisuse):
        coord.on_reply(1, Result(), NOW_MS)
    propose = only(coord.start(NOW_MS))
    with pytest.raises(CoordinatorMisuse):
        coord.start(NOW_MS)
    with pytest.raises(CoordinatorMisuse):
        coord.on_reply(propose.action_id + 1, Result(), NOW_MS)
    coord.on_reply(propose.action_id, Result(), NOW_MS)
    with pytest.raises(CoordinatorMisuse):
        coord.on_reply(propose.action_id, Result(), NOW_MS)
    with pytest.raises(CoordinatorMisuse):
        Recovery(1, 0, DEADLINE_MS, 1).start(DEADLINE_MS)  # not past the deadline yet
    with pytest.raises(CoordinatorMisuse):
        coordinator([], attempts_max=0)


def test_recovery_decides_at_home_then_resolves_its_group() -> None:
    recovery = Recovery(9, 0, DEADLINE_MS, 1)
    decide = only(recovery.start(DEADLINE_MS + 1))
    assert (decide.group, decide.command.state) == (0, TxnState.ABORTED)
    assert decide.command.resolve_here  # the home group's own intents go with the decision
    retry = only(recovery.on_reply(decide.action_id, None, DEADLINE_MS + 2))
    answer = decide_result(TxnState.COMMITTED, NOW_MS + 5)
    resolve = only(recovery.on_reply(retry.action_id, answer, DEADLINE_MS + 3))
    assert (resolve.group, resolve.command) == (1, TxnResolve(9, DEADLINE_MS + 3, True, NOW_MS + 5))
    done = only(recovery.on_reply(resolve.action_id, Result(count=1), DEADLINE_MS + 4))
    assert done == Recovered(9, 1, TxnState.COMMITTED) and recovery.done


# -- the simulation: one transaction, crashed after every step ---------------------------------


@dataclass(slots=True)
class OneTxn:
    sim: Sim
    coordinator: Coordinator
    written: list[tuple[bytes, int]]  # (digest, group)


def one_txn(
    seed: int, group_count: int, *, home_outside: bool = False, places: bool = False
) -> OneTxn:
    """One transaction over `group_count` groups, its home the group of its first key, or
    with `home_outside` an extra group holding none of its keys (it gets a TxnBegin)."""
    sim = Sim(seed, group_count + 1 if home_outside else group_count, places=places)
    rng = random.Random(seed * 7919 + group_count)
    written = []
    reads = []
    for group in sim.groups[:group_count]:
        for n in range(rng.randint(1, 2)):
            key = key_in(group.group_id, group_count, n)
            group.put_record(key, {"n": 0})
            written.append((key, group.group_id))
        extra = key_in(group.group_id, group_count, 5)
        group.put_record(extra, {"r": 1})
        reads.append(sim.read(extra, group.group_id)[1])
    rng.shuffle(written)
    writes = [
        TxnWrite(key, "s", None, (op.increment("n", 1), op.write("by", 77)), WritePolicy())
        for key, _ in written
    ]
    reads.extend(sim.read(key, g)[1] for key, g in written if rng.random() < 0.25)
    home = group_count if home_outside else written[0][1]
    coord = Coordinator(
        77,
        home,
        sim.clock + TIMEOUT_MS,
        reads,
        writes,
        lambda d: group_by_digest(d, group_count),
        attempts_max=2,  # few retries: the give-up paths (in doubt, left to recovery) run too
    )
    return OneTxn(sim, coord, written)


def run_one_txn(
    seed: int,
    group_count: int,
    stop: tuple[int, str] | None,
    *,
    home_outside: bool = False,
    places: bool = False,
) -> OneTxn:
    case = one_txn(seed, group_count, home_outside=home_outside, places=places)
    sim, coord = case.sim, case.coordinator
    if stop is not None:
        sim.watch(coord, *stop)
    sim.start(coord)
    while sim.flights and not coord.done:
        sim.step()
    sim.settle()
    check_all_or_nothing(case)
    return case


def check_all_or_nothing(case: OneTxn) -> None:
    sim, coord = case.sim, case.coordinator
    why = sim.why()
    assert sim.intents() == {}, f"intents left behind ({why})"
    committed = coord.txn_id in sim.commit_steps
    for key, group_id in case.written:
        bins = sim.groups[group_id].bins(key)
        expected = {"n": 1, "by": 77} if committed else {"n": 0}
        assert bins == expected, f"{key.hex()} in group {group_id}: {bins} ({why})"
    home = sim.groups[coord.home_group].txn_record(coord.txn_id)
    if home is not None:
        assert (home.state is TxnState.COMMITTED) == committed, why
    if coord.answer is not None:
        outcome = coord.answer.outcome
        assert outcome is not Outcome.COMMITTED or committed, f"acknowledged, lost ({why})"
        assert outcome is not Outcome.ABORTED or not committed, f"aborted, applied ({why})"


SEEDS = range(24)


@pytest.mark.parametrize("group_count", [1, 2, 3])
@pytest.mark.parametrize("mode", ["crash", "pause"])
@pytest.mark.parametrize("places", [False, True], ids=["answer-after-resolves", "placed"])
def test_a_coordinator_stopped_after_any_step_leaves_all_or_nothing(
    group_count: int, mode: str, places: bool
) -> None:
    for seed in SEEDS:
        full = run_one_txn(seed, group_count, None, places=places)
        assert full.coordinator.done, full.sim.why()
        events = _events_of(seed, group_count, places=places)
        for stop_after in range(1, events + 1):
            run_one_txn(seed, group_count, (stop_after, mode), places=places)


@pytest.mark.parametrize("mode", ["crash", "pause"])
def test_a_home_group_outside_the_transaction_leaves_all_or_nothing(mode: str) -> None:
    """The TxnBegin path: the home group holds none of the keys (the server never picks such
    a home, the coordinator allows it)."""
    for seed in SEEDS:
        full = run_one_txn(seed, 2, None, home_outside=True)
        assert full.coordinator.done, full.sim.why()
        for stop_after in range(1, _events_of(seed, 2, home_outside=True) + 1):
            run_one_txn(seed, 2, (stop_after, mode), home_outside=True)


def _events_of(
    seed: int, group_count: int, *, home_outside: bool = False, places: bool = False
) -> int:
    case = one_txn(seed, group_count, home_outside=home_outside, places=places)
    case.sim.watch(case.coordinator, 10**9, "crash")
    case.sim.start(case.coordinator)
    while case.sim.flights and not case.coordinator.done:
        case.sim.step()
    return case.sim.watches[id(case.coordinator)].events


def test_the_simulation_reaches_every_outcome() -> None:
    """Test the tester: across the seeds, commits, aborts and doubts all happen, and with
    `places` some answers go before the resolves are done."""
    outcomes = set()
    early = 0
    for seed in SEEDS:
        for group_count in (1, 2, 3):
            answer = run_one_txn(seed, group_count, None).coordinator.answer
            assert answer is not None
            outcomes.add(answer.outcome)
            early += run_one_txn(seed, group_count, None, places=True).sim.early_answers
    assert outcomes == set(Outcome)
    assert early > 5, early


def test_the_checker_catches_a_half_applied_transaction() -> None:
    case = run_one_txn(0, 2, None)
    key, group_id = case.written[0]
    group = case.sim.groups[group_id]
    group.put_record(key, {"n": 5})
    with pytest.raises(AssertionError):
        check_all_or_nothing(case)


def _home_commit_in_flight(sim: Sim, coord: Coordinator) -> Flight:
    """Run until the coordinator's TxnCommit is in flight; take it out of the network."""
    while not any(isinstance(f.action.command, TxnCommit) for f in sim.flights):
        sim._step_flight()
    (flight,) = [f for f in sim.flights if isinstance(f.action.command, TxnCommit)]
    sim.flights.remove(flight)
    assert sim.groups[0].intents() == {}, "the home group commits last: it never locks"
    assert len(sim.groups[1].intents()) == 1, "the other group prepared"
    return flight


def test_a_late_coordinator_cannot_commit_after_recovery_aborted() -> None:
    sim = Sim(1, 2, faults=False)
    for group in sim.groups:
        group.put_record(key_in(group.group_id, 2, 0), {"n": 0})
    writes = [increment(key_in(0, 2, 0)), increment(key_in(1, 2, 0))]
    coord = Coordinator(5, 0, sim.clock + TIMEOUT_MS, [], writes, groups_of_two)
    sim.start(coord)
    commit = _home_commit_in_flight(sim, coord)
    sim.paused[id(coord)] = (coord, [])  # the commit is in flight; the coordinator stalls
    sim.clock = DEADLINE_MS + 1
    sim.sweep()
    sim._drain()
    assert sim.intents() == {} and [r.state for r in sim.recovered] == [TxnState.ABORTED]
    sim.flights.append(commit)  # the late TxnCommit arrives after the recovery
    sim.settle()
    assert coord.answer is not None and coord.answer.outcome is Outcome.ABORTED
    assert sim.commit_order == []
    assert [g.bins(key_in(g.group_id, 2, 0)) for g in sim.groups] == [{"n": 0}, {"n": 0}]


def run_late_commit() -> Sim:
    """A coordinator whose TxnCommit applies past the deadline, before any recovery: the
    commit aborts (MRT_EXPIRED) and writes nothing; the other group rolls back."""
    sim = Sim(1, 2, faults=False)
    for group in sim.groups:
        group.put_record(key_in(group.group_id, 2, 0), {"n": 0})
    writes = [increment(key_in(0, 2, 0)), increment(key_in(1, 2, 0))]
    coord = Coordinator(5, 0, sim.clock + TIMEOUT_MS, [], writes, groups_of_two)
    sim.start(coord)
    sim.flights.append(_home_commit_in_flight(sim, coord))
    sim.clock = coord.deadline_ms + 1  # the commit is delayed past the deadline
    sim.settle()
    assert coord.answer is not None and coord.answer.outcome is Outcome.ABORTED
    assert coord.answer.code == ResultCode.MRT_EXPIRED
    return sim


def check_late_commit(sim: Sim) -> None:
    assert sim.commit_order == [] and sim.intents() == {}
    assert [g.bins(key_in(g.group_id, 2, 0)) for g in sim.groups] == [{"n": 0}, {"n": 0}]


def test_a_commit_after_the_deadline_aborts_and_rolls_the_other_group_back() -> None:
    check_late_commit(run_late_commit())


# -- property: concurrent transfers against a serial model -----------------------------------

START_BALANCE = 100


@dataclass(slots=True)
class Transfer:
    txn_id: int
    source: int
    target: int
    amount: int
    started_step: int
    reads: dict[int, tuple[int, TxnRead]] = field(default_factory=dict)  # account -> read
    coordinator: Coordinator | None = None


@dataclass(slots=True)
class Bank:
    sim: Sim
    accounts: list[tuple[bytes, int]]  # (digest, group)
    clients: list[Transfer] = field(default_factory=list)
    done: list[Transfer] = field(default_factory=list)
    next_txn_id: int = 1

    def group_of(self, digest: bytes) -> int:
        return group_by_digest(digest, self.sim.group_count)

    def step(self, transfers_max: int) -> None:
        sim, rng = self.sim, self.sim.rng
        roll = rng.random()
        if roll < 0.06 and len(self.done) + len(self.clients) < transfers_max:
            source, target = rng.sample(range(len(self.accounts)), 2)
            txn_id = self.next_txn_id
            self.next_txn_id += 1
            self.clients.append(Transfer(txn_id, source, target, rng.randint(1, 60), sim.steps))
        elif roll < 0.26 and self.clients:
            self._advance(rng.choice(self.clients))
        elif roll < 0.27:
            self._touch(rng.randrange(len(self.accounts)))
        elif roll < 0.275:
            self._crash_one()
        elif roll < 0.29:
            sim.sweep()
        elif roll < 0.31:
            self._status_check()
        else:
            sim.step()

    def _advance(self, client: Transfer) -> None:
        """A client's next move: read the next account, or commit."""
        if client.coordinator is not None:
            return
        sim = self.sim
        for account in (client.source, client.target):
            if account not in client.reads:
                key, group_id = self.accounts[account]
                bins, read = sim.read(key, group_id)
                assert bins is not None
                client.reads[account] = (bins["bal"], read)
                return
        source_balance = client.reads[client.source][0]
        if source_balance < client.amount:
            self.clients.remove(client)  # the app gives up: nothing to commit
            return
        writes = []
        for account, delta in ((client.source, -client.amount), (client.target, client.amount)):
            key, _ = self.accounts[account]
            balance = client.reads[account][0] + delta
            writes.append(TxnWrite(key, "s", None, (op.write("bal", balance),), WritePolicy()))
        reads = [client.reads[a][1] for a in (client.source, client.target)]
        home = self.accounts[client.source][1]
        client.coordinator = Coordinator(
            client.txn_id, home, sim.clock + TIMEOUT_MS, reads, writes, self.group_of
        )
        self.clients.remove(client)
        self.done.append(client)
        sim.start(client.coordinator)

    def _touch(self, account: int) -> None:
        """A non-transactional write beside the transactions (no balance change)."""
        key, group_id = self.accounts[account]
        result = self.sim.groups[group_id].write_single(key, [op.write("note", 1)], self.sim.clock)
        blocker = blocker_of(result)
        assert result.ok or blocker is not None, result
        if blocker is not None and self.sim.clock > blocker.deadline_ms:
            self.sim.recover(blocker, group_id)

    def _status_check(self) -> None:
        waiting = [c for c in self.done if c.coordinator and not c.coordinator.done]
        if waiting:
            client = self.sim.rng.choice(waiting)
            coord = client.coordinator
            assert coord is not None
            groups = {self.accounts[a][1] for a in (client.source, client.target)}
            self.sim.status_check(client.txn_id, coord.home_group, coord.deadline_ms, groups)

    def _crash_one(self) -> None:
        running = [c.coordinator for c in self.done if c.coordinator and not c.coordinator.done]
        if running:
            victim = self.sim.rng.choice(running)
            if self.sim.rng.random() < 0.5:
                self.sim.crashed.add(id(victim))
            else:
                self.sim.paused.setdefault(id(victim), (victim, []))


def check_bank(bank: Bank) -> None:
    sim = bank.sim
    why = sim.why()
    assert sim.intents() == {}, f"intents left behind ({why})"
    by_id = {t.txn_id: t for t in bank.done}
    model = [START_BALANCE] * len(bank.accounts)
    assert len(set(sim.commit_order)) == len(sim.commit_order), why
    for txn_id in sim.commit_order:
        transfer = by_id[txn_id]
        for account, (balance, _) in transfer.reads.items():
            assert model[account] == balance, f"txn {txn_id} read a stale balance ({why})"
        model[transfer.source] -= transfer.amount
        model[transfer.target] += transfer.amount
        assert min(model) >= 0, why
        commit_step = sim.commit_steps[txn_id]
        assert transfer.started_step <= commit_step, why
        answered = sim.answers.get(txn_id)
        if answered is not None:
            assert commit_step <= answered[1], f"txn {txn_id} committed after its answer ({why})"
    stored = []
    for key, group_id in bank.accounts:
        bins = sim.groups[group_id].bins(key)
        assert bins is not None, why
        stored.append(bins["bal"])
    assert stored == model, f"balances {stored} != serial model {model} ({why})"
    assert sum(stored) == START_BALANCE * len(bank.accounts), why
    for txn_id, (answer, _) in sim.answers.items():
        committed = txn_id in sim.commit_steps
        assert answer.outcome is not Outcome.COMMITTED or committed, why
        assert answer.outcome is not Outcome.ABORTED or not committed, why


def run_bank(
    seed: int, account_count: int, group_count: int, transfers: int, *, places: bool = False
) -> Bank:
    sim = Sim(seed, group_count, places=places, step_ms_max=25)
    accounts = []
    for i in range(account_count):
        key = keys.calc_digest("test", "s", f"account-{i}")
        group_id = group_by_digest(key, group_count)
        sim.groups[group_id].put_record(key, {"bal": START_BALANCE})
        accounts.append((key, group_id))
    bank = Bank(sim, accounts)
    for _ in range(transfers * 60):
        bank.step(transfers)
    sim.settle()
    return bank


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    account_count=st.integers(2, 6),
    group_count=st.integers(1, 3),
    transfers=st.integers(1, 8),
    places=st.booleans(),
)
def test_concurrent_transfers_match_a_serial_order(
    seed: int, account_count: int, group_count: int, transfers: int, places: bool
) -> None:
    note(f"replay: run_bank({seed}, {account_count}, {group_count}, {transfers}, places={places})")
    check_bank(run_bank(seed, account_count, group_count, transfers, places=places))


def test_the_bank_reaches_commits_and_aborts() -> None:
    """Test the tester: the property runs see contention, not only quiet commits."""
    outcomes: dict[Outcome, int] = {}
    for seed in range(12):
        bank = run_bank(seed, 3, 2, 8)
        check_bank(bank)
        for answer, _ in bank.sim.answers.values():
            outcomes[answer.outcome] = outcomes.get(answer.outcome, 0) + 1
    assert outcomes.get(Outcome.COMMITTED, 0) > 10 and outcomes.get(Outcome.ABORTED, 0) > 3


def test_the_bank_catches_a_commit_that_ignores_a_status_checks_abort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A status check may decide ABORTED at home before the coordinator's TxnCommit applies
    (and resolve the other group aborted): the commit must then write nothing."""
    real_commit = txn_participant._commit

    def abort_blind_commit(store: Any, records: Any, ns: Any, cmd: TxnCommit) -> Result:
        record = store.record(cmd.txn_id)
        aborted = record is not None and record.state is TxnState.ABORTED
        if aborted and store.marker(cmd.txn_id) is None:
            store.delete_record(cmd.txn_id)
        return real_commit(store, records, ns, cmd)

    monkeypatch.setattr(txn_participant, "_commit", abort_blind_commit)
    with pytest.raises(AssertionError, match=r"serial model|stale"):
        for seed in range(12):
            check_bank(run_bank(seed, 3, 2, 8))


def test_the_bank_checker_catches_a_lost_update() -> None:
    bank = run_bank(3, 3, 2, 8)
    check_bank(bank)
    assert bank.sim.commit_order, "nothing committed: the checker would check nothing"
    key, group_id = bank.accounts[0]
    bins = bank.sim.groups[group_id].bins(key)
    assert bins is not None
    bank.sim.groups[group_id].put_record(key, {**bins, "bal": bins["bal"] + 1})
    with pytest.raises(AssertionError):
        check_bank(bank)


# -- test the tester: the simulation catches broken protocols -----------------------------------


def _some_run_fails(group_counts: Sequence[int] = (2, 3)) -> bool:
    for seed in SEEDS:
        for group_count in group_counts:
            for stop_after in range(1, _events_of(seed, group_count) + 1):
                try:
                    run_one_txn(seed, group_count, (stop_after, "pause"))
                except AssertionError:
                    return True
    return False


def test_the_simulation_catches_a_commit_despite_a_failed_prepare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def always_commit(self: Coordinator, now_ms: int) -> list[Any]:
        if len(self._prepared) < len(self._preparing()):
            return []
        self._phase = _Phase.DECIDING
        self._proposed = TxnState.COMMITTED
        reads, writes = self._part_of(self.home_group)
        commit = TxnCommit(self.txn_id, now_ms, self.deadline_ms, reads, writes, self.groups)
        return [self._proposals.propose(_Step(self.home_group, commit))]

    monkeypatch.setattr(Coordinator, "_decide_when_prepared", always_commit)
    assert _some_run_fails()


def test_the_simulation_catches_a_home_commit_that_forgets_its_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A TxnCommit must answer a repeat from the record: a duplicate delayed in the network
    that applied again would write the home group's records twice, or commit there after a
    recovery aborted the transaction."""
    real_commit = txn_participant._commit

    def forgetful_commit(store: Any, records: Any, ns: Any, cmd: TxnCommit) -> Result:
        store.delete_record(cmd.txn_id)
        store.delete_marker(cmd.txn_id)
        return real_commit(store, records, ns, cmd)

    monkeypatch.setattr(txn_participant, "_commit", forgetful_commit)
    assert _some_run_fails()


def test_the_late_commit_scenario_catches_a_commit_past_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The home group's commit must refuse a decision past the deadline: the other groups'
    locks are bounded by it, and a recovery may abort them from then on."""
    real_commit = txn_participant._commit

    def deadline_blind_commit(store: Any, records: Any, ns: Any, cmd: TxnCommit) -> Result:
        return real_commit(store, records, ns, replace(cmd, deadline_ms=cmd.now_ms))

    monkeypatch.setattr(txn_participant, "_commit", deadline_blind_commit)
    with pytest.raises(AssertionError):
        check_late_commit(run_late_commit())


def test_the_simulation_catches_resolved_groups_that_forget_too_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the marker a resolve leaves, a late duplicate prepare locks again, and its
    recovery rolls the committed writes forward a second time (docs/transactions.md)."""
    real_resolve = txn_participant._resolve

    def forgetful_resolve(store: Any, records: Any, cmd: TxnResolve) -> Result:
        result = real_resolve(store, records, cmd)
        store.delete_marker(cmd.txn_id)
        return result

    monkeypatch.setattr(txn_participant, "_resolve", forgetful_resolve)
    assert _some_run_fails()
