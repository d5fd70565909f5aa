"""A deterministic, in-memory Raft group for tests: `FakeCluster` and its `FakeLog`s.

Nothing happens on its own: the test drives the group with `step()` / `run_until_idle()`
and the fault methods below. No threads, sockets, sleeps or wall clock; the only randomness
is `random.Random(seed)`, so a seed replays a run. One lock makes the methods safe to call
from another thread (a group runtime proposing while the test steps). Apply functions run
under that lock and must not call back into the cluster; proposal callbacks (`on_done`)
run after the lock is released, on the thread that caused them, in event order.

Rules
-----
- There is one committed log, the truth every replica shares: entry i (1, 2, 3, ... with no
  gaps) is the same bytes on every replica. A replica *holds* a prefix of it (`received`,
  its durable log) and has passed a prefix of that to its apply function (`applied`).
- Each replica believes a (term, leader). `propose` on a replica that does not believe it
  leads answers REJECTED at once; otherwise the entry waits in that replica's pending list,
  stamped with the replica's term. `on_done` is called exactly once per proposal.
- `step()` does, in order:
  1. learn: an alive replica that reaches the alive leader and does not know the current
     (term, leader) adopts it; if its term was older its pending entries are discarded;
  2. commit: if the leader is alive, believes it leads in the current term and reaches a
     majority, the first k of its pending entries are committed (k random, 1..all);
  3. deliver: every alive replica that reaches the leader receives the whole committed log;
     every alive replica with an apply function applies, in log order, what it holds and has
     not applied (replicas in random order). When the proposer applies its entry, its
     `on_done` gets APPLIED with the value its apply returned (UNKNOWN if the ack is lost).
  It returns whether anything happened.
- `elect(node)`: term + 1 and `node` leads; it must be alive and reach a majority. Replicas
  it reaches learn at once, the others in a later `step()`. Pending entries of a replica that
  learns of a newer term are discarded: the proposer gets `discarded` (REJECTED by default;
  UNKNOWN in "lost ack" mode, where the new leader also takes over a random prefix of the
  old leader's pending entries and commits them in its term: an UNKNOWN entry may or may not
  apply, as in real Raft; a REJECTED entry never does).
- `lose_acks(n)`: the next n accepted proposals commit and apply on every replica as usual,
  but their proposers get UNKNOWN (also if the entry ends up discarded).
- `duplicate_deliveries(True)`: every delivery calls apply twice with the same (index,
  entry); the proposer gets the first value.
- `crash(node)`: the replica stops (nothing delivered, not leader any more); its pending
  entries get UNKNOWN; it keeps the entries it holds. `restart(node, apply)`: alive again, a
  follower, and it replays everything it holds from index 1 through the new apply function.
- `partition(*sides)`: replicas talk only within their side; replicas named in no side make
  one more side together. `heal()`: everyone talks again.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raftstore.replication import (
    ApplyFn,
    LogStatus,
    Outcome,
    Proposal,
    ProposalCallback,
    Role,
)

RUN_STEPS_MAX = 10_000

_Callbacks = list[tuple[ProposalCallback, Proposal]]


@dataclass(slots=True)
class _Pending:
    entry: bytes
    term: int
    on_done: ProposalCallback | None  # None: taken over from a deposed leader, nobody waits
    ack_lost: bool


@dataclass(slots=True)
class _Committed:
    entry: bytes
    proposer: str
    on_done: ProposalCallback | None  # set to None once called
    ack_lost: bool


@dataclass(slots=True)
class _Replica:
    node_id: str
    apply: ApplyFn | None
    alive: bool = True
    term: int = 0
    leader: str | None = None
    received: int = 0  # entries of the committed log this replica holds
    applied: int = 0  # entries passed to apply since it (re)started
    pending: list[_Pending] = field(default_factory=list)


class FakeCluster:
    """One Raft group of `node_ids`, driven by the test (rules in the module docstring)."""

    def __init__(
        self,
        node_ids: Sequence[str],
        seed: int,
        *,
        applies: Mapping[str, ApplyFn] | None = None,
        discarded: Outcome = Outcome.REJECTED,
    ) -> None:
        assert node_ids and len(set(node_ids)) == len(node_ids), node_ids
        assert discarded in (Outcome.REJECTED, Outcome.UNKNOWN), discarded
        applies = applies or {}
        assert set(applies) <= set(node_ids), applies
        self.seed = seed
        self.discarded = discarded
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._replicas = {node: _Replica(node, applies.get(node)) for node in node_ids}
        self._order = sorted(node_ids)
        self._committed: list[_Committed] = []
        self._term = 0
        self._leader: str | None = None
        self._sides: dict[str, int] = {}
        self._acks_to_lose = 0
        self._duplicate = False
        self._callbacks: _Callbacks = []
        self.logs = {node: FakeLog(self, node) for node in node_ids}

    # -- wiring and inspection -------------------------------------------------------------

    def log(self, node_id: str) -> FakeLog:
        return self.logs[node_id]

    def attach(self, node_id: str, apply: ApplyFn) -> None:
        """Give a replica its apply function; it applies what it holds from index 1."""
        with self._lock:
            replica = self._replicas[node_id]
            assert replica.apply is None, f"{node_id} already has an apply function"
            replica.apply = apply
            replica.applied = 0

    @property
    def entries(self) -> tuple[bytes, ...]:
        """The committed log, index 1 first."""
        with self._lock:
            return tuple(committed.entry for committed in self._committed)

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> str | None:
        """The replica that really leads the current term (it may be crashed)."""
        return self._leader

    def pending(self, node_id: str) -> int:
        """Proposals waiting on a replica, not committed, not discarded."""
        with self._lock:
            return len(self._replicas[node_id].pending)

    def applied(self, node_id: str) -> int:
        with self._lock:
            return self._replicas[node_id].applied

    # -- driving -----------------------------------------------------------------------------

    def step(self) -> bool:
        with self._lock:
            learned = self._learn()
            committed = self._commit()
            delivered = self._deliver()
            callbacks = self._take_callbacks()
        _fire(callbacks)
        return learned or committed or delivered or bool(callbacks)

    def run_until_idle(self, max_steps: int = RUN_STEPS_MAX) -> int:
        """Step until nothing happens; the number of steps that did something."""
        for steps in range(max_steps):
            if not self.step():
                return steps
        raise AssertionError(f"not idle after {max_steps} steps (seed {self.seed})")

    # -- faults ------------------------------------------------------------------------------

    def elect(self, node_id: str) -> None:
        with self._lock:
            replica = self._replicas[node_id]
            assert replica.alive, f"{node_id} is down and cannot be elected"
            assert replica.apply is not None, f"attach an apply function to {node_id} first"
            assert self._has_majority(node_id), f"{node_id} cannot reach a majority"
            taken = self._taken_over()
            self._term += 1
            self._leader = node_id
            for other in self._order:
                if self._reaches(node_id, other) and self._replicas[other].alive:
                    self._adopt(self._replicas[other])
            replica.pending.extend(
                _Pending(entry, self._term, on_done=None, ack_lost=False) for entry in taken
            )
            callbacks = self._take_callbacks()
        _fire(callbacks)

    def lose_acks(self, count: int) -> None:
        assert count >= 0, count
        with self._lock:
            self._acks_to_lose = count

    def duplicate_deliveries(self, enabled: bool) -> None:
        with self._lock:
            self._duplicate = enabled

    def crash(self, node_id: str) -> None:
        with self._lock:
            replica = self._replicas[node_id]
            replica.alive = False
            replica.apply = None
            replica.leader = None
            self._discard(replica, Outcome.UNKNOWN, "replica crashed")
            if self._leader == node_id:
                self._leader = None
            callbacks = self._take_callbacks()
        _fire(callbacks)

    def restart(self, node_id: str, apply: ApplyFn) -> None:
        with self._lock:
            replica = self._replicas[node_id]
            assert not replica.alive, f"{node_id} is running"
            replica.alive = True
            replica.apply = apply
            replica.applied = 0
            replica.leader = None

    def partition(self, *sides: Iterable[str]) -> None:
        with self._lock:
            self._sides = {}
            for number, side in enumerate(sides, start=1):
                for node in side:
                    assert node in self._replicas and node not in self._sides, node
                    self._sides[node] = number

    def heal(self) -> None:
        with self._lock:
            self._sides = {}

    # -- FakeLog's side ------------------------------------------------------------------------

    def _propose(self, node_id: str, entry: bytes, on_done: ProposalCallback) -> None:
        with self._lock:
            replica = self._replicas[node_id]
            if not self._believes_leader(replica):
                self._callbacks.append(
                    (on_done, Proposal(Outcome.REJECTED, reason=f"{node_id} is not the leader"))
                )
            else:
                ack_lost = self._acks_to_lose > 0
                if ack_lost:
                    self._acks_to_lose -= 1
                replica.pending.append(_Pending(bytes(entry), replica.term, on_done, ack_lost))
            callbacks = self._take_callbacks()
        _fire(callbacks)

    def _is_leader(self, node_id: str) -> bool:
        with self._lock:
            return self._believes_leader(self._replicas[node_id])

    def _leader_of(self, node_id: str) -> str | None:
        with self._lock:
            return self._replicas[node_id].leader

    def _status(self, node_id: str) -> LogStatus:
        with self._lock:
            replica = self._replicas[node_id]
            return LogStatus(
                role=Role.LEADER if self._believes_leader(replica) else Role.FOLLOWER,
                term=replica.term,
                leader=replica.leader,
                commit_index=replica.received,
                applied_index=replica.applied,
                log_entries=replica.received + len(replica.pending),
            )

    # -- internals (called with the lock held) -----------------------------------------------

    def _believes_leader(self, replica: _Replica) -> bool:
        return replica.alive and replica.leader == replica.node_id

    def _reaches(self, one: str, other: str) -> bool:
        return self._sides.get(one, 0) == self._sides.get(other, 0)

    def _has_majority(self, node_id: str) -> bool:
        reached = sum(
            1 for r in self._replicas.values() if r.alive and self._reaches(node_id, r.node_id)
        )
        return reached > len(self._replicas) // 2

    def _leader_replica(self) -> _Replica | None:
        if self._leader is None:
            return None
        replica = self._replicas[self._leader]
        return replica if replica.alive else None

    def _learn(self) -> bool:
        leader = self._leader_replica()
        if leader is None:
            return False
        learned = False
        for node in self._order:
            replica = self._replicas[node]
            known = (replica.term, replica.leader) == (self._term, self._leader)
            if replica.alive and not known and self._reaches(node, leader.node_id):
                self._adopt(replica)
                learned = True
        return learned

    def _adopt(self, replica: _Replica) -> None:
        if replica.term < self._term:
            self._discard(replica, self.discarded, f"deposed by {self._leader}")
        replica.term = self._term
        replica.leader = self._leader

    def _discard(self, replica: _Replica, outcome: Outcome, reason: str) -> None:
        for pending in replica.pending:
            if pending.on_done is not None:
                lost = Outcome.UNKNOWN if pending.ack_lost else outcome
                self._callbacks.append((pending.on_done, Proposal(lost, reason=reason)))
        replica.pending.clear()

    def _taken_over(self) -> list[bytes]:
        """In lost-ack mode a new leader may hold a prefix of the old leader's pending
        entries (they reached it before the old leader fell); in REJECTED mode, none."""
        previous = self._leader_replica()
        if previous is None or self.discarded is not Outcome.UNKNOWN:
            return []
        current = [p.entry for p in previous.pending if p.term == self._term]
        return current[: self._random.randint(0, len(current))]

    def _commit(self) -> bool:
        leader = self._leader_replica()
        if leader is None or not leader.pending or not self._has_majority(leader.node_id):
            return False
        if not self._believes_leader(leader) or leader.term != self._term:
            return False
        count = self._random.randint(1, len(leader.pending))
        for pending in leader.pending[:count]:
            assert pending.term == self._term, (pending.term, self._term)
            self._committed.append(
                _Committed(pending.entry, leader.node_id, pending.on_done, pending.ack_lost)
            )
        del leader.pending[:count]
        return True

    def _deliver(self) -> bool:
        leader = self._leader_replica()
        delivered = False
        order = list(self._order)
        self._random.shuffle(order)
        for node in order:
            replica = self._replicas[node]
            if not replica.alive:
                continue
            if leader is not None and self._reaches(node, leader.node_id):
                replica.received = len(self._committed)
            if replica.apply is None:
                continue
            while replica.applied < replica.received:
                self._apply_next(replica, replica.apply)
                delivered = True
        return delivered

    def _apply_next(self, replica: _Replica, apply: ApplyFn) -> None:
        index = replica.applied + 1
        committed = self._committed[index - 1]
        value: Any = apply(index, committed.entry)
        if self._duplicate:
            apply(index, committed.entry)
        replica.applied = index
        if committed.proposer == replica.node_id and committed.on_done is not None:
            outcome = Outcome.UNKNOWN if committed.ack_lost else Outcome.APPLIED
            answer = value if outcome is Outcome.APPLIED else None
            self._callbacks.append((committed.on_done, Proposal(outcome, answer)))
            committed.on_done = None

    def _take_callbacks(self) -> _Callbacks:
        callbacks, self._callbacks = self._callbacks, []
        return callbacks


def _fire(callbacks: _Callbacks) -> None:
    for on_done, proposal in callbacks:
        on_done(proposal)


class FakeLog:
    """One replica's view of a `FakeCluster`; implements `ReplicatedLog`."""

    def __init__(self, cluster: FakeCluster, node_id: str) -> None:
        self._cluster = cluster
        self._node_id = node_id

    @property
    def node_id(self) -> str:
        return self._node_id

    def propose(self, entry: bytes, on_done: ProposalCallback) -> None:
        self._cluster._propose(self._node_id, entry, on_done)

    def is_leader(self) -> bool:
        return self._cluster._is_leader(self._node_id)

    def leader(self) -> str | None:
        return self._cluster._leader_of(self._node_id)

    def status(self) -> LogStatus:
        return self._cluster._status(self._node_id)

    def transfer_leadership(self, to: str) -> None:
        if self.is_leader():
            self._cluster.elect(to)

    def close(self) -> None:
        """Stops the replica, like a crash; `FakeCluster.restart` starts it again."""
        self._cluster.crash(self._node_id)
