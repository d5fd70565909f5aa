"""The deterministic fake log: the conformance suite, then each fault it offers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from raftstore.fake_log import FakeCluster, FakeLog
from raftstore.replication import ApplyFn, Outcome, Proposal, ReplicatedLog, Role
from tests import log_conformance
from tests.log_conformance import Answers, Recorder

SEEDS = (0, 1, 2, 7, 42)


class FakeGroup:
    """`log_conformance.LogGroup` over a `FakeCluster`; the first node is elected."""

    def __init__(self, node_ids: Sequence[str], applies: Mapping[str, ApplyFn], seed: int):
        self.cluster = FakeCluster(node_ids, seed, applies=applies)
        self.cluster.elect(node_ids[0])

    @property
    def logs(self) -> Mapping[str, ReplicatedLog]:
        return self.cluster.logs

    def drive(self, until: Callable[[], bool], timeout_s: float) -> None:
        while not until():
            assert self.cluster.step(), f"idle and not done (seed {self.cluster.seed})"

    def leader(self) -> str:
        self.cluster.run_until_idle()
        leader = self.cluster.leader_id
        assert leader is not None
        return leader

    def close(self) -> None:
        for replica in self.cluster.logs.values():
            replica.close()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("check", log_conformance.CHECKS, ids=lambda c: c.__name__)
def test_conformance(check: Callable[[log_conformance.GroupFactory], None], seed: int) -> None:
    check(lambda node_ids, applies: FakeGroup(node_ids, applies, seed))


def test_fake_log_is_a_replicated_log() -> None:
    log: ReplicatedLog = FakeCluster(["a"], 0).log("a")
    assert isinstance(log, FakeLog)


# -- helpers ----------------------------------------------------------------------------------


class RawApply:
    """Records every call, replays included."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []

    def __call__(self, log_index: int, entry: bytes) -> Any:
        self.calls.append((log_index, entry))
        return log_index


def three(seed: int = 0, **options: Any) -> tuple[FakeCluster, dict[str, Recorder]]:
    recorders = {node: Recorder(node) for node in "abc"}
    cluster = FakeCluster(list("abc"), seed, applies=recorders, **options)
    cluster.elect("a")
    return cluster, recorders


def propose(cluster: FakeCluster, node: str, answers: Answers, *entries: bytes) -> None:
    for entry in entries:
        cluster.log(node).propose(entry, answers.callback(entry))


def applied_entries(recorder: Recorder) -> list[bytes]:
    return [entry for _, entry in recorder.applied]


# -- the model --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_indexes_start_at_one_and_have_no_gaps(seed: int) -> None:
    cluster, recorders = three(seed)
    answers = Answers()
    propose(cluster, "a", answers, *(bytes([n]) for n in range(20)))
    cluster.run_until_idle()
    for recorder in recorders.values():
        assert [index for index, _ in recorder.applied] == list(range(1, 21))
    assert cluster.entries == tuple(bytes([n]) for n in range(20))


def test_nothing_happens_without_step() -> None:
    cluster, recorders = three()
    answers = Answers()
    propose(cluster, "a", answers, b"x")
    assert not answers.all_answered() and cluster.pending("a") == 1
    assert all(not r.applied for r in recorders.values())
    cluster.run_until_idle()
    assert answers.only(b"x") == Proposal(Outcome.APPLIED, ("a", 1, b"x"))
    assert not cluster.step()


def test_the_same_seed_replays_the_same_run() -> None:
    def run(seed: int) -> list[Any]:
        cluster, recorders = three(seed, discarded=Outcome.UNKNOWN)
        answers = Answers()
        transcript: list[Any] = []
        for round_ in range(5):
            propose(cluster, "a", answers, *(f"{round_}-{n}".encode() for n in range(5)))
            cluster.step()
            transcript.append(applied_entries(recorders["b"]))
        cluster.elect("b")
        propose(cluster, "b", answers, b"after")
        cluster.run_until_idle()
        transcript.append(applied_entries(recorders["c"]))
        transcript.append(sorted(answers.counts().items()))
        return transcript

    assert run(3) == run(3)
    assert any(run(3) != run(seed) for seed in range(4, 20))


def test_step_commits_a_random_prefix_of_the_pending_entries() -> None:
    sizes = set()
    for seed in range(20):
        cluster, _ = three(seed)
        propose(cluster, "a", Answers(), *(bytes([n]) for n in range(10)))
        cluster.step()
        sizes.add(len(cluster.entries))
        assert cluster.pending("a") == 10 - len(cluster.entries)
    assert len(sizes) > 1 and sizes <= set(range(1, 11))


# -- faults -----------------------------------------------------------------------------------


def test_a_new_leader_discards_uncommitted_entries_as_rejected() -> None:
    cluster, recorders = three()
    answers = Answers()
    propose(cluster, "a", answers, b"committed")
    cluster.run_until_idle()
    propose(cluster, "a", answers, b"lost-1", b"lost-2")
    cluster.elect("b")
    assert answers.only(b"lost-1").outcome is Outcome.REJECTED
    assert answers.only(b"lost-2").outcome is Outcome.REJECTED
    assert not cluster.log("a").is_leader() and cluster.log("b").is_leader()
    propose(cluster, "b", answers, b"next")
    cluster.run_until_idle()
    for recorder in recorders.values():
        assert applied_entries(recorder) == [b"committed", b"next"]
    assert cluster.log("c").leader() == "b"
    assert cluster.log("b").status().term == cluster.term == 2


def test_lost_ack_mode_answers_unknown_and_may_or_may_not_apply() -> None:
    taken_over = set()
    for seed in range(30):
        cluster, recorders = three(seed, discarded=Outcome.UNKNOWN)
        answers = Answers()
        entries = [bytes([n]) for n in range(6)]
        propose(cluster, "a", answers, *entries)
        cluster.elect("b")
        assert all(answers.only(e).outcome is Outcome.UNKNOWN for e in entries)
        cluster.run_until_idle()
        applied = applied_entries(recorders["c"])
        assert applied == entries[: len(applied)], "a prefix, in order, each once"
        assert all(applied_entries(r) == applied for r in recorders.values())
        taken_over.add(len(applied))
        assert answers.counts() == dict.fromkeys(entries, 1)
    assert 0 in taken_over and len(taken_over) > 2, taken_over


def test_lose_acks_applies_everywhere_but_answers_unknown() -> None:
    cluster, recorders = three()
    answers = Answers()
    cluster.lose_acks(2)
    propose(cluster, "a", answers, b"x", b"y", b"z")
    cluster.run_until_idle()
    assert answers.only(b"x") == Proposal(Outcome.UNKNOWN)
    assert answers.only(b"y") == Proposal(Outcome.UNKNOWN)
    assert answers.only(b"z").outcome is Outcome.APPLIED
    for recorder in recorders.values():
        assert applied_entries(recorder) == [b"x", b"y", b"z"]


def test_duplicate_deliveries_call_apply_twice_and_answer_the_first_value() -> None:
    raw = {node: RawApply() for node in "abc"}
    cluster = FakeCluster(list("abc"), 5, applies=raw)
    cluster.elect("a")
    cluster.duplicate_deliveries(True)
    answers = Answers()
    propose(cluster, "a", answers, b"x", b"y")
    cluster.run_until_idle()
    for apply in raw.values():
        assert apply.calls == [(1, b"x"), (1, b"x"), (2, b"y"), (2, b"y")]
    assert answers.only(b"y") == Proposal(Outcome.APPLIED, 2)


def test_a_restarted_replica_replays_from_index_one() -> None:
    cluster, recorders = three()
    answers = Answers()
    propose(cluster, "a", answers, b"1", b"2")
    cluster.run_until_idle()
    cluster.crash("c")
    propose(cluster, "a", answers, b"3")
    cluster.run_until_idle()
    assert applied_entries(recorders["c"]) == [b"1", b"2"]
    replay = RawApply()
    cluster.restart("c", replay)
    cluster.run_until_idle()
    assert replay.calls == [(1, b"1"), (2, b"2"), (3, b"3")]
    assert not cluster.log("c").is_leader() and cluster.log("c").leader() == "a"


def test_a_restarted_replica_replays_what_it_holds_even_when_cut_off() -> None:
    cluster, _ = three()
    propose(cluster, "a", Answers(), b"1")
    cluster.run_until_idle()
    cluster.crash("c")
    cluster.partition({"c"})
    propose(cluster, "a", Answers(), b"2")
    cluster.run_until_idle()
    replay = RawApply()
    cluster.restart("c", replay)
    cluster.run_until_idle()
    assert replay.calls == [(1, b"1")]
    cluster.heal()
    cluster.run_until_idle()
    assert replay.calls == [(1, b"1"), (2, b"2")]


def test_a_crash_answers_the_crashed_replicas_pending_entries_unknown() -> None:
    cluster, recorders = three()
    answers = Answers()
    propose(cluster, "a", answers, b"x")
    cluster.crash("a")
    assert answers.only(b"x").outcome is Outcome.UNKNOWN
    assert cluster.leader_id is None and not cluster.log("a").is_leader()
    cluster.run_until_idle()
    cluster.elect("b")
    propose(cluster, "b", answers, b"y")
    cluster.run_until_idle()
    assert applied_entries(recorders["c"]) == [b"y"]


def test_a_partitioned_leader_believes_it_leads_but_commits_nothing() -> None:
    cluster, recorders = three()
    answers = Answers()
    cluster.partition({"a"})
    propose(cluster, "a", answers, b"stale")
    cluster.run_until_idle()
    assert not answers.all_answered() and cluster.pending("a") == 1
    cluster.elect("b")
    propose(cluster, "b", answers, b"fresh")
    cluster.run_until_idle()
    assert cluster.log("a").is_leader() and cluster.log("a").status().role is Role.LEADER
    assert answers.only(b"fresh").outcome is Outcome.APPLIED
    assert applied_entries(recorders["a"]) == []
    cluster.heal()
    cluster.run_until_idle()
    assert answers.only(b"stale").outcome is Outcome.REJECTED
    assert not cluster.log("a").is_leader() and cluster.log("a").leader() == "b"
    assert all(applied_entries(r) == [b"fresh"] for r in recorders.values())


def test_a_minority_cannot_elect_and_a_crashed_replica_cannot_lead() -> None:
    cluster, _ = three()
    cluster.partition({"a"})
    with pytest.raises(AssertionError, match="majority"):
        cluster.elect("a")
    cluster.heal()
    cluster.crash("c")
    with pytest.raises(AssertionError, match="down"):
        cluster.elect("c")
    cluster.elect("b")  # b and a are a majority of three


def test_a_partitioned_follower_catches_up_after_heal() -> None:
    cluster, recorders = three()
    cluster.partition({"c"})
    propose(cluster, "a", Answers(), b"1", b"2")
    cluster.run_until_idle()
    assert applied_entries(recorders["c"]) == []
    cluster.heal()
    cluster.run_until_idle()
    assert applied_entries(recorders["c"]) == [b"1", b"2"]


def test_transfer_leadership_and_close() -> None:
    cluster, _ = three()
    cluster.log("b").transfer_leadership("c")  # not the leader: nothing happens
    assert cluster.leader_id == "a"
    cluster.log("a").transfer_leadership("c")
    assert cluster.leader_id == "c" and cluster.log("c").is_leader()
    answers = Answers()
    cluster.log("b").close()
    propose(cluster, "b", answers, b"x")
    assert answers.only(b"x").outcome is Outcome.REJECTED


# -- the suite catches broken logs ------------------------------------------------------------


class AnswersTwice:
    """A log that calls on_done twice."""

    def __init__(self, inner: FakeLog) -> None:
        self.inner = inner
        self.node_id = inner.node_id
        self.is_leader, self.leader, self.status = inner.is_leader, inner.leader, inner.status
        self.transfer_leadership, self.close = inner.transfer_leadership, inner.close

    def propose(self, entry: bytes, on_done: Callable[[Proposal], None]) -> None:
        def twice(proposal: Proposal) -> None:
            on_done(proposal)
            on_done(proposal)

        self.inner.propose(entry, twice)


class Forwards(AnswersTwice):
    """A log whose followers forward proposals to the leader (pysyncobj's default)."""

    def __init__(self, inner: FakeLog, cluster: FakeCluster) -> None:
        super().__init__(inner)
        self.cluster = cluster

    def propose(self, entry: bytes, on_done: Callable[[Proposal], None]) -> None:
        leader = self.cluster.leader_id
        target = self.inner if leader is None else self.cluster.log(leader)
        target.propose(entry, on_done)


class BrokenGroup(FakeGroup):
    def __init__(self, node_ids: Sequence[str], applies: Mapping[str, ApplyFn], kind: str):
        super().__init__(node_ids, applies, seed=0)
        logs = self.cluster.logs
        self.broken: dict[str, ReplicatedLog] = {
            node: AnswersTwice(log) if kind == "twice" else Forwards(log, self.cluster)
            for node, log in logs.items()
        }

    @property
    def logs(self) -> Mapping[str, ReplicatedLog]:
        return self.broken


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("twice", log_conformance.check_on_done_is_called_exactly_once),
        ("forwards", log_conformance.check_follower_proposal_is_rejected),
    ],
)
def test_the_suite_rejects_a_broken_log(
    kind: str, check: Callable[[log_conformance.GroupFactory], None]
) -> None:
    with pytest.raises(AssertionError):
        check(lambda node_ids, applies: BrokenGroup(node_ids, applies, kind))
