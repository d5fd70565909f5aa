"""The conformance suite of `raftstore.replication.ReplicatedLog`.

Every implementation (the fake, the pysyncobj adapter) must pass every check in `CHECKS`.
A check is a function taking a `GroupFactory`: `factory(node_ids, applies)` starts a group
of replicas, replica `n` calling `applies[n]`, and returns a `LogGroup` that can drive it.
An implementation's test module runs them, e.g.:

    @pytest.mark.parametrize("check", log_conformance.CHECKS)
    def test_conformance(check): check(my_factory)

What the suite asks of a log (the docstring of `ReplicatedLog` says it in words):
- a proposal on the leader comes back APPLIED with the value the leader's apply returned;
- a proposal on a follower comes back REJECTED and is never applied;
- every replica applies the same entries at the same indexes, in increasing index order;
- `on_done` is called exactly once per proposal.
The suite does not ask that indexes start at 1 or have no gaps (pysyncobj keeps no-op
entries of its own); replays of an index already applied are allowed, and ignored here
exactly as the engine ignores them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from raftstore.replication import (
    ApplyFn,
    Outcome,
    Proposal,
    ProposalCallback,
    ReplicatedLog,
    Role,
)

NODES = ("n1", "n2", "n3")
DRIVE_TIMEOUT_S = 20.0


class LogGroup(Protocol):
    @property
    def logs(self) -> Mapping[str, ReplicatedLog]: ...

    def drive(self, until: Callable[[], bool], timeout_s: float) -> None:
        """Let the group work until `until()` holds; AssertionError if it never does."""

    def leader(self) -> str:
        """Drive until one replica leads and the others know it; its node id."""

    def close(self) -> None: ...


GroupFactory = Callable[[Sequence[str], Mapping[str, ApplyFn]], LogGroup]


class Recorder:
    """An apply function that remembers what it applied and skips replays, like the engine."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._lock = threading.Lock()
        self._applied: list[tuple[int, bytes]] = []

    def __call__(self, log_index: int, entry: bytes) -> Any:
        with self._lock:
            if self._applied and log_index <= self._applied[-1][0]:
                return None
            self._applied.append((log_index, entry))
            return (self.node_id, log_index, entry)

    @property
    def applied(self) -> list[tuple[int, bytes]]:
        with self._lock:
            return list(self._applied)

    def holds(self, entries: Sequence[bytes]) -> bool:
        applied = {entry for _, entry in self.applied}
        return all(entry in applied for entry in entries)


class Answers:
    """Callbacks that count their calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[bytes, list[Proposal]] = {}

    def callback(self, entry: bytes) -> ProposalCallback:
        with self._lock:
            self._calls[entry] = []

        def on_done(proposal: Proposal) -> None:
            with self._lock:
                self._calls[entry].append(proposal)

        return on_done

    def all_answered(self) -> bool:
        with self._lock:
            return all(self._calls.values())

    def only(self, entry: bytes) -> Proposal:
        with self._lock:
            calls = list(self._calls[entry])
        assert len(calls) == 1, f"on_done of {entry!r} called {len(calls)} times"
        return calls[0]

    def counts(self) -> dict[bytes, int]:
        with self._lock:
            return {entry: len(calls) for entry, calls in self._calls.items()}


def _start(factory: GroupFactory) -> tuple[LogGroup, dict[str, Recorder]]:
    recorders = {node: Recorder(node) for node in NODES}
    return factory(NODES, recorders), recorders


def check_leader_proposal_is_applied_with_apply_value(factory: GroupFactory) -> None:
    group, recorders = _start(factory)
    try:
        leader = group.leader()
        answers = Answers()
        group.logs[leader].propose(b"first", answers.callback(b"first"))
        group.drive(answers.all_answered, DRIVE_TIMEOUT_S)
        proposal = answers.only(b"first")
        assert proposal.outcome is Outcome.APPLIED, proposal
        index = next(i for i, entry in recorders[leader].applied if entry == b"first")
        assert proposal.value == (leader, index, b"first")
        group.drive(lambda: all(r.holds([b"first"]) for r in recorders.values()), DRIVE_TIMEOUT_S)
    finally:
        group.close()


def check_follower_proposal_is_rejected(factory: GroupFactory) -> None:
    group, recorders = _start(factory)
    try:
        leader = group.leader()
        follower = next(node for node in NODES if node != leader)
        assert not group.logs[follower].is_leader()
        answers = Answers()
        group.logs[follower].propose(b"on-follower", answers.callback(b"on-follower"))
        group.logs[leader].propose(b"on-leader", answers.callback(b"on-leader"))
        group.drive(answers.all_answered, DRIVE_TIMEOUT_S)
        assert answers.only(b"on-follower").outcome is Outcome.REJECTED
        assert answers.only(b"on-leader").outcome is Outcome.APPLIED
        group.drive(
            lambda: all(r.holds([b"on-leader"]) for r in recorders.values()), DRIVE_TIMEOUT_S
        )
        for recorder in recorders.values():
            assert not recorder.holds([b"on-follower"]), recorder.node_id
    finally:
        group.close()


def check_every_replica_applies_the_same_entries_in_order(factory: GroupFactory) -> None:
    group, recorders = _start(factory)
    try:
        leader = group.leader()
        answers = Answers()
        entries = [f"entry-{n}".encode() for n in range(30)]
        for entry in entries:
            group.logs[leader].propose(entry, answers.callback(entry))
        group.drive(answers.all_answered, DRIVE_TIMEOUT_S)
        assert all(answers.only(entry).outcome is Outcome.APPLIED for entry in entries)
        group.drive(lambda: all(r.holds(entries) for r in recorders.values()), DRIVE_TIMEOUT_S)
        histories = {node: recorder.applied for node, recorder in recorders.items()}
        reference = histories[leader]
        for node, history in histories.items():
            indexes = [index for index, _ in history]
            assert indexes == sorted(set(indexes)), f"{node} applied out of order: {indexes}"
            assert history == reference, f"{node} differs from the leader {leader}"
        # Proposals from one proposer are applied in the order they were proposed.
        assert [entry for _, entry in reference if entry in set(entries)] == entries
        for entry in entries:
            _, index, applied = answers.only(entry).value
            assert (index, applied) in reference
    finally:
        group.close()


def check_on_done_is_called_exactly_once(factory: GroupFactory) -> None:
    group, recorders = _start(factory)
    try:
        leader = group.leader()
        answers = Answers()
        for node in NODES:
            for n in range(5):
                entry = f"{node}-{n}".encode()
                group.logs[node].propose(entry, answers.callback(entry))
        group.drive(answers.all_answered, DRIVE_TIMEOUT_S)
        # More traffic afterwards must not call any callback again.
        late = Answers()
        group.logs[leader].propose(b"late", late.callback(b"late"))
        group.drive(late.all_answered, DRIVE_TIMEOUT_S)
        group.drive(lambda: all(r.holds([b"late"]) for r in recorders.values()), DRIVE_TIMEOUT_S)
        assert set(answers.counts().values()) == {1}, answers.counts()
        assert late.only(b"late").outcome is Outcome.APPLIED
    finally:
        group.close()


def check_status_names_the_leader(factory: GroupFactory) -> None:
    group, recorders = _start(factory)
    try:
        leader = group.leader()
        answers = Answers()
        group.logs[leader].propose(b"x", answers.callback(b"x"))
        group.drive(answers.all_answered, DRIVE_TIMEOUT_S)
        group.drive(lambda: all(r.holds([b"x"]) for r in recorders.values()), DRIVE_TIMEOUT_S)
        for node, replica in group.logs.items():
            status = replica.status()
            assert replica.node_id == node
            assert replica.leader() == leader == status.leader
            assert replica.is_leader() == (node == leader)
            assert status.role is (Role.LEADER if node == leader else Role.FOLLOWER)
            assert status.term >= 1
            assert status.commit_index >= status.applied_index >= 1
    finally:
        group.close()


CHECKS: tuple[Callable[[GroupFactory], None], ...] = (
    check_leader_proposal_is_applied_with_apply_value,
    check_follower_proposal_is_rejected,
    check_every_replica_applies_the_same_entries_in_order,
    check_on_done_is_called_exactly_once,
    check_status_names_the_leader,
)
