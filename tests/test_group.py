"""GroupRuntime over the fake log: three replicas, each an Engine on LMDB.

Most tests run the runtimes with `background=False` and drive everything from the test
(`pump()` the runtimes, `step()` the fake), so a seed replays a run exactly. The tests of
group commit under concurrency run the worker threads and wait on futures with a deadline.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from raftstore import command_codec, keys, limits
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.commands import Barrier, RecordRequest, Result, TombRaid, failure
from raftstore.config import NamespaceConfig
from raftstore.engine import Engine
from raftstore.errors import RaftstoreError, ResultCode, is_definite
from raftstore.fake_log import FakeCluster
from raftstore.group import (
    BARRIER_ENTRY,
    OUTCOME_UNKNOWN,
    ApplyFailed,
    Batcher,
    ExpirySweep,
    GroupRuntime,
    make_apply,
    read_failure,
    tomb_raid_due,
    write_results,
)
from raftstore.policy import Exists, WritePolicy
from raftstore.record import RecordMeta
from raftstore.replication import Outcome, Proposal

NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000
NAMESPACE = NamespaceConfig("test", tomb_raider_period_s=60)
NODES = ("a", "b", "c")
SEEDS = (0, 1, 2, 3, 5, 8, 13)
SETTLE_ROUNDS_MAX = 10_000
DEADLINE_S = 20.0


def digest(key: int | str) -> bytes:
    return keys.calc_digest("test", "s", key)


def request(
    client: int, seq: int, key: int | str, *ops: op.Op, policy: WritePolicy | None = None
) -> RecordRequest:
    return RecordRequest(
        client_id=client,
        request_seq=seq,
        acked_seq=0,
        now_ms=NOW_MS + seq,
        digest=digest(key),
        set_name="s",
        ops=ops,
        policy=policy or WritePolicy(),
    )


def incr(client: int, seq: int, key: int | str, delta: int = 1) -> RecordRequest:
    return request(client, seq, key, op.increment("n", delta))


def token(client: int, seq: int) -> RecordRequest:
    """Append this write's own token to one shared list: its presence shows it applied."""
    return request(client, seq, "history", op.list_append("tokens", f"{client}:{seq}"))


class Group:
    """Three replicas: a FakeCluster, an Engine and a GroupRuntime per node; `a` leads."""

    def __init__(
        self,
        root: Path,
        seed: int,
        *,
        background: bool = False,
        in_flight_max: int = limits.GROUP_ENTRIES_IN_FLIGHT_MAX,
        **fake: Any,
    ) -> None:
        self.in_flight_max = in_flight_max
        self.root = root
        self.background = background
        self.fake = FakeCluster(NODES, seed, **fake)
        self.engines: dict[str, Engine] = {}
        self.runtimes: dict[str, GroupRuntime] = {}
        for node in NODES:
            self.engines[node] = Engine(root / node, NAMESPACE, durable=False)
            self.fake.attach(node, make_apply(self.engines[node]))
            self.runtimes[node] = GroupRuntime(
                self.fake.log(node),
                self.engines[node],
                background=background,
                batcher=Batcher(in_flight_max=in_flight_max),
            )
        self.fake.elect("a")
        self.fake.run_until_idle()

    def settle(self) -> None:
        """Manual mode: pump and step until nothing moves."""
        assert not self.background
        for _ in range(SETTLE_ROUNDS_MAX):
            pumped = [runtime.pump() for runtime in self.runtimes.values()]
            if not self.fake.step() and not any(pumped):
                return
        raise AssertionError(f"not settled (seed {self.fake.seed})")

    def drive(self, futures: Iterable[Future[Result]]) -> list[Result]:
        """Background mode: step the fake until every future is answered."""
        waiting = list(futures)
        deadline = time.monotonic() + DEADLINE_S
        while not all(future.done() for future in waiting):
            assert time.monotonic() < deadline, f"futures not answered (seed {self.fake.seed})"
            if not self.fake.step():
                # Nothing to step: give the worker threads a moment to propose or answer.
                pending = [future for future in waiting if not future.done()]
                concurrent.futures.wait(pending, timeout=0.005)
        return [future.result(timeout=0) for future in waiting]

    def crash(self, node: str) -> None:
        self.fake.crash(node)
        self.runtimes[node].close()
        self.engines[node].close()

    def restart(self, node: str, directory: str) -> None:
        self.engines[node] = Engine(self.root / directory, NAMESPACE, durable=False)
        self.fake.restart(node, make_apply(self.engines[node]))
        self.runtimes[node] = GroupRuntime(
            self.fake.log(node),
            self.engines[node],
            background=self.background,
            batcher=Batcher(in_flight_max=self.in_flight_max),
        )

    def close(self) -> None:
        for node in NODES:
            self.runtimes[node].close()
            self.engines[node].close()

    def value(self, node: str, key: int | str, bin_name: str) -> Any:
        record = self.engines[node].get(digest(key))
        return None if record is None else record.bins.get(bin_name)

    def assert_identical(self) -> None:
        reference = self.snapshot("a")
        for node in NODES[1:]:
            assert self.snapshot(node) == reference, f"{node} differs from a"

    def snapshot(self, node: str) -> tuple[list[tuple[bytes, RecordMeta]], list[Any]]:
        engine = self.engines[node]
        return sorted(engine.index.items()), list(engine.scan())


@pytest.fixture
def group(tmp_path: Path) -> Any:
    group = Group(tmp_path, seed=0)
    yield group
    group.close()


def result_now(future: Future[Result]) -> Result:
    assert future.done(), "the future should be answered by now"
    return future.result(timeout=0)


# -- pure parts ----------------------------------------------------------------------------------


def test_batcher_takes_everything_queued_into_one_entry() -> None:
    batcher: Batcher[str, str] = Batcher()
    for n in range(10):
        assert batcher.offer_write(f"w{n}", 100)
    batch = batcher.next_batch()
    assert batch is not None and batch.writes == [f"w{n}" for n in range(10)]
    assert not batch.is_barrier and batcher.next_batch() is None and batcher.in_flight == 1


def test_batcher_bounds_the_queue_the_batch_and_the_entries_in_flight() -> None:
    batcher: Batcher[int, str] = Batcher(
        queue_commands_max=5, in_flight_max=2, batch_commands_max=2, entry_bytes_max=1000
    )
    assert all(batcher.offer_write(n, 10) for n in range(5))
    assert not batcher.offer_write(5, 10), "over the queue bound"
    first, second = batcher.next_batch(), batcher.next_batch()
    assert first is not None and second is not None
    assert (first.writes, second.writes) == ([0, 1], [2, 3])
    assert batcher.next_batch() is None and not batcher.ready(), "two entries in flight"
    assert batcher.finish(first.number) is first
    assert batcher.finish(first.number) is None, "an answer counts once"
    third = batcher.next_batch()
    assert third is not None and third.writes == [4]


def test_batcher_closes_a_batch_before_its_byte_budget_but_never_splits_a_command() -> None:
    batcher: Batcher[str, str] = Batcher(entry_bytes_max=100)
    for name, size in (("big", 150), ("x", 60), ("y", 40), ("z", 1)):
        batcher.offer_write(name, size)
    sizes = []
    while (batch := batcher.next_batch()) is not None:
        sizes.append(batch.writes)
        batcher.finish(batch.number)
    assert sizes == [["big"], ["x", "y"], ["z"]]


def test_batcher_reads_share_one_barrier_or_ride_on_writes() -> None:
    batcher: Batcher[str, str] = Batcher(in_flight_max=4)
    batcher.offer_read("r1")
    batcher.offer_read("r2")
    barrier = batcher.next_batch()
    assert barrier is not None and barrier.is_barrier and barrier.reads == ["r1", "r2"]
    batcher.offer_read("r3")
    assert batcher.next_batch() is None, "one bare barrier in flight at a time"
    batcher.offer_write("w", 1)
    ride = batcher.next_batch()
    assert ride is not None and ride.writes == ["w"] and ride.reads == ["r3"]
    batcher.offer_read("r4")
    batcher.finish(barrier.number)
    again = batcher.next_batch()
    assert again is not None and again.is_barrier and again.reads == ["r4"]
    assert batcher.drain() == ([], [], [ride, again])


def test_batcher_bounds_waiting_reads() -> None:
    batcher: Batcher[str, int] = Batcher(reads_waiting_max=3)
    assert [batcher.offer_read(n) for n in range(4)] == [True, True, True, False]


def test_outcomes_map_to_results() -> None:
    ok = [Result(generation=1), failure(ResultCode.RECORD_EXISTS, "exists")]
    assert write_results(Proposal(Outcome.APPLIED, ok), 2) == ok
    rejected = write_results(Proposal(Outcome.REJECTED, reason="deposed"), 2)
    assert [r.code for r in rejected] == [ResultCode.NOT_LEADER] * 2
    assert is_definite(ResultCode.NOT_LEADER)
    unknown = write_results(Proposal(Outcome.UNKNOWN), 1)[0]
    assert unknown == failure(ResultCode.TIMEOUT, OUTCOME_UNKNOWN)
    assert not is_definite(unknown.code)
    assert write_results(Proposal(Outcome.APPLIED, None), 1)[0].code == ResultCode.TIMEOUT
    failed = Proposal(Outcome.APPLIED, ApplyFailed(ResultCode.SERVER_ERROR, "boom"))
    assert write_results(failed, 1)[0].code == ResultCode.SERVER_ERROR
    assert write_results(Proposal(Outcome.APPLIED, ok), 3)[0].code == ResultCode.SERVER_ERROR
    assert read_failure(Proposal(Outcome.APPLIED, ok)) is None
    assert read_failure(Proposal(Outcome.APPLIED, None)) is None, "a replayed barrier still counts"
    assert read_failure(Proposal(Outcome.REJECTED)).code == ResultCode.NOT_LEADER  # type: ignore[union-attr]
    assert read_failure(Proposal(Outcome.UNKNOWN)).code == ResultCode.TIMEOUT  # type: ignore[union-attr]
    assert read_failure(failed).code == ResultCode.SERVER_ERROR  # type: ignore[union-attr]


def test_tomb_raid_is_due_once_per_period() -> None:
    assert tomb_raid_due(None, 5, 60)
    assert not tomb_raid_due(1_000, 60_999, 60)
    assert tomb_raid_due(1_000, 61_000, 60)


def test_expiry_sweep_is_bounded_and_resumes_where_it_stopped() -> None:
    expired = RecordMeta(generation=1, void_time=1, last_update_ms=0, set_name="s")
    live = RecordMeta(generation=1, void_time=0, last_update_ms=0, set_name="s")
    dead = RecordMeta(1, 1, 0, "s", tombstone=True)
    table = {
        pid: [(bytes([pid & 0xFF, pid >> 8, n]), m) for n, m in enumerate((expired, live, dead))]
        for pid in (3, 7, 4000)
    }

    no_ttl = 5  # a partition whose records cannot expire: never read
    table[no_ttl] = [(bytes([no_ttl, 0, 0]), live)]

    def expiring_of(pid: int) -> int:
        return sum(1 for _, m in table.get(pid, []) if m.void_time and not m.tombstone)

    read: list[int] = []

    def metas_of(pid: int) -> list[tuple[bytes, RecordMeta]]:
        read.append(pid)
        return table[pid]

    sweep = ExpirySweep()
    first = sweep.candidates(expiring_of, metas_of, NOW_MS, digests_max=1)
    assert first == [table[3][0][0]] and sweep.next_partition == 4
    second = sweep.candidates(expiring_of, metas_of, NOW_MS, scan_entries_max=1)
    assert second == [table[7][0][0]]
    rest = sweep.candidates(expiring_of, metas_of, NOW_MS)
    assert rest == sorted(table[pid][0][0] for pid in (3, 7, 4000)), "every partition once"
    assert sweep.next_partition == 8
    assert no_ttl not in read


def test_batcher_is_full_after_a_lone_request_or_at_the_batch_bound() -> None:
    batcher: Batcher[str, str] = Batcher(batch_commands_max=3)
    batcher.offer_write("w1", 1)
    assert batcher.full(), "at first, and after a lone request: go at once"
    first = batcher.next_batch()
    assert first is not None
    batcher.offer_write("w2", 1)
    batcher.offer_write("w3", 1)
    batcher.finish(first.number)  # answered a lone write: no one else is waiting
    assert batcher.full()
    second = batcher.next_batch()
    assert second is not None and second.writes == ["w2", "w3"]
    batcher.finish(second.number)  # two at once: concurrent clients, worth a wait
    batcher.offer_write("w4", 1)
    assert batcher.ready() and not batcher.full()
    batcher.offer_write("w5", 1)
    batcher.offer_write("w6", 1)
    assert batcher.full(), "a batch that cannot grow goes at once"
    batcher.offer_read("r1")
    assert batcher.full(), "reads ride on the writes"


def test_entries_joined_from_commands_encoded_once_are_encode_batch() -> None:
    commands = [incr(1, 1, "k"), Barrier(), TombRaid(NOW_MS), token(2, 3)]
    for count in (0, 1, 4, 15, 16, 17, 65535, 65536):
        batch = [commands[n % len(commands)] for n in range(count)]
        joined = command_codec.join_batch([command_codec.encode_command(c) for c in batch])
        assert joined == command_codec.encode_batch(batch), count
    assert command_codec.decode_batch(BARRIER_ENTRY) == [Barrier()]


def test_decoded_write_policies_are_shared_but_still_checked() -> None:
    raw = [int(Exists.CREATE), 0, 0, 60, True]
    first = command_codec.decode_policy(raw)
    assert first == WritePolicy(exists=Exists.CREATE, ttl=60, send_key=True)
    assert command_codec.decode_policy([int(Exists.CREATE), 0, 0, 60, 1]) is first
    for bad in ([True, 0, 0, 60, True], [int(Exists.CREATE), 0, 0, 60.0, True], [9, 0, 0, 0, 0]):
        with pytest.raises(RaftstoreError) as caught:
            command_codec.decode_policy(bad)
        assert caught.value.code == ResultCode.PARAMETER_ERROR, bad


def test_a_bare_barrier_skips_the_engine(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "e", NAMESPACE, durable=False)
    apply = make_apply(engine)
    try:
        written = apply(1, command_codec.encode_batch([incr(1, 1, "k")]))
        assert isinstance(written, list) and [r.generation for r in written] == [1]
        assert apply(2, BARRIER_ENTRY) == [Result()]
        assert engine.applied_index == 1, "no store transaction for a barrier"
        assert [r.code for r in apply(3, command_codec.encode_batch([incr(1, 2, "k")]))] == [0]
        assert engine.applied_index == 3, "positions only have to grow"
        assert apply(3, BARRIER_ENTRY) == [Result()], "a replayed barrier is still a barrier"
    finally:
        engine.close()


def test_the_worker_lingers_for_a_fuller_batch_under_concurrent_load(tmp_path: Path) -> None:
    fake = FakeCluster(["a"], 0)
    engine = Engine(tmp_path / "a", NAMESPACE, durable=False)
    fake.attach("a", make_apply(engine))
    fake.elect("a")
    linger_s = 0.5
    runtime = GroupRuntime(fake.log("a"), engine, linger_s=linger_s)
    try:

        def settled(futures: list[Future[Result]]) -> None:
            deadline = time.monotonic() + DEADLINE_S
            while not all(f.done() for f in futures):
                assert time.monotonic() < deadline
                if not fake.step():
                    concurrent.futures.wait(futures, timeout=0.005)

        lone = runtime.submit(incr(1, 1, "k"))
        deadline = time.monotonic() + DEADLINE_S
        while runtime.status().entries_in_flight == 0:  # a lone write: proposed at once
            assert time.monotonic() < deadline
            time.sleep(0.001)
        pair = [runtime.submit(incr(1, seq, "k")) for seq in (2, 3)]  # queued behind it
        settled([lone, *pair])
        assert runtime.status().entries_proposed == 2, "the pair shared an entry"
        began = time.monotonic()
        after_pair = runtime.submit(incr(1, 4, "k"))
        time.sleep(linger_s / 5)
        assert runtime.status().queued_writes == 1, "waiting for company"
        settled([after_pair])
        assert time.monotonic() - began >= linger_s * 0.9
        assert all(f.result().ok for f in [lone, *pair, after_pair])
    finally:
        runtime.close()
        engine.close()


def test_apply_never_raises(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "e", NAMESPACE, durable=False)
    apply = make_apply(engine)
    try:
        garbage = apply(1, b"\xc1 not msgpack")
        assert isinstance(garbage, ApplyFailed) and garbage.code == ResultCode.SERVER_ERROR
        entry = command_codec.encode_batch([incr(1, 1, "k"), Barrier()])
        results = apply(2, entry)
        assert isinstance(results, list) and [r.code for r in results] == [0, 0]
        assert apply(2, entry) is None, "a position applied before"
        engine.close()
        closed = apply(3, entry)  # the store is gone: an error value, not an exception
        assert isinstance(closed, ApplyFailed)
    finally:
        engine.close()


# -- writes ----------------------------------------------------------------------------------


def test_writes_answer_their_own_results(group: Group) -> None:
    leader = group.runtimes["a"]
    create = WritePolicy(exists=Exists.CREATE)
    futures = [
        leader.submit(request(1, 1, "k", op.write("v", 1), policy=create)),
        leader.submit(request(1, 2, "k", op.write("v", 2), policy=create)),
        leader.submit(request(1, 3, "k", op.increment("v", 10), op.read("v"))),
    ]
    group.settle()
    first, exists, third = (result_now(f) for f in futures)
    assert first.ok and first.generation == 1
    assert exists.code == ResultCode.RECORD_EXISTS
    assert third.ok and third.generation == 2 and dict(third.results) == {"v": 11}
    assert len(group.fake.entries) == 1, "one entry for the three"
    assert all(group.value(node, "k", "v") == 11 for node in NODES)
    group.assert_identical()


def test_a_follower_answers_not_leader_at_once(group: Group) -> None:
    for node in ("b", "c"):
        runtime = group.runtimes[node]
        assert not runtime.is_leader()
        for future in (
            runtime.submit(incr(1, 1, "k")),
            runtime.read(digest("k"), [op.read()], NOW_MS, linearize=True),
            runtime.read(digest("k"), [op.read()], NOW_MS, linearize=False),
            *runtime.run_jobs(NOW_MS),
        ):
            assert result_now(future).code == ResultCode.NOT_LEADER
    assert group.fake.entries == ()


def test_a_full_queue_fails_at_once_and_definitely(tmp_path: Path) -> None:
    fake = FakeCluster(["a"], 0)
    engine = Engine(tmp_path / "a", NAMESPACE, durable=False)
    fake.attach("a", make_apply(engine))
    fake.elect("a")
    runtime = GroupRuntime(
        fake.log("a"), engine, background=False, batcher=Batcher(queue_commands_max=2)
    )
    try:
        futures = [runtime.submit(incr(1, seq, "k")) for seq in (1, 2, 3)]
        overloaded = result_now(futures[2])
        assert overloaded.code == ResultCode.DEVICE_OVERLOAD and is_definite(overloaded.code)
        bad = runtime.submit(request(1, 4, "k", op.write("v", object())))
        assert result_now(bad).code == ResultCode.PARAMETER_ERROR
        huge = runtime.submit(request(1, 5, "k", op.write("v", b"x" * limits.ENTRY_BYTES_MAX)))
        assert result_now(huge).code == ResultCode.RECORD_TOO_BIG
        runtime.pump()
        fake.run_until_idle()
        runtime.pump()
        assert [result_now(f).ok for f in futures[:2]] == [True, True]
    finally:
        runtime.close()
        engine.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_writes_coalesce_under_concurrent_submitters(tmp_path: Path, seed: int) -> None:
    group = Group(tmp_path, seed, background=True)
    try:
        submitters, per_submitter = 4, 75
        futures: list[Future[Result]] = []
        lock = threading.Lock()

        def submit(client: int) -> None:
            for seq in range(1, per_submitter + 1):
                future = group.runtimes["a"].submit(incr(client, seq, "counter"))
                with lock:
                    futures.append(future)

        threads = [threading.Thread(target=submit, args=(c,)) for c in range(submitters)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE_S)
        results = group.drive(futures)
        commands = submitters * per_submitter
        assert all(result.ok for result in results)
        assert sorted(r.generation for r in results) == list(range(1, commands + 1))
        # Before the first step at most GROUP_ENTRIES_IN_FLIGHT_MAX entries go out; once
        # they are answered, the rest fits in as many more.
        entries = len(group.fake.entries)
        assert entries <= 2 * limits.GROUP_ENTRIES_IN_FLIGHT_MAX < commands
        assert group.runtimes["a"].status().commands_proposed == commands
        group.fake.run_until_idle()
        assert all(group.value(node, "counter", "n") == commands for node in NODES)
        group.assert_identical()
    finally:
        group.close()


def test_a_leader_change_mid_flight_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rejected = 0
    for seed in SEEDS:
        by_code, _ = _leader_change(tmp_path / str(seed), seed, Outcome.REJECTED)
        assert not by_code.get(ResultCode.TIMEOUT), "no unknown outcome in this mode"
        rejected += len(by_code.get(ResultCode.NOT_LEADER, []))
    assert rejected, "some seed discarded entries in flight"


def test_a_leader_change_in_lost_ack_mode_never_applies_twice(tmp_path: Path) -> None:
    unknown_applied = unknown_absent = 0
    for seed in SEEDS:
        by_code, applied = _leader_change(tmp_path / str(seed), seed, Outcome.UNKNOWN)
        unknown = by_code.get(ResultCode.TIMEOUT, [])
        unknown_applied += len(set(unknown) & set(applied))
        unknown_absent += len(set(unknown) - set(applied))
    assert unknown_applied and unknown_absent, "an unknown write may go either way"


def _leader_change(
    root: Path, seed: int, discarded: Outcome
) -> tuple[dict[int, list[str]], list[str]]:
    group = Group(root, seed, in_flight_max=3, discarded=discarded)
    try:
        leader = group.runtimes["a"]
        futures: dict[str, Future[Result]] = {}
        seq = 0
        for _ in range(3):  # three entries in flight at once
            for _ in range(4):
                seq += 1
                futures[f"1:{seq}"] = leader.submit(token(1, seq))
            leader.pump()
        for _ in range(2):  # and some queued behind them, never proposed
            seq += 1
            futures[f"1:{seq}"] = leader.submit(token(1, seq))
        group.fake.step()  # commits a random prefix of the entries in flight
        group.fake.elect("b")
        group.settle()
        by_code: dict[int, list[str]] = {}
        for name, future in futures.items():
            by_code.setdefault(result_now(future).code, []).append(name)
        assert set(by_code) <= {ResultCode.OK, ResultCode.NOT_LEADER, ResultCode.TIMEOUT}
        applied = group.value("b", "history", "tokens") or []
        assert len(applied) == len(set(applied)), "no write applied twice"
        acknowledged = by_code.get(ResultCode.OK, [])
        assert acknowledged, "the first step commits at least one entry"
        assert set(acknowledged) <= set(applied), "no acknowledged write lost"
        assert not set(by_code.get(ResultCode.NOT_LEADER, [])) & set(applied), (
            "a NOT_LEADER write is definitely absent"
        )
        group.fake.run_until_idle()
        group.assert_identical()
        # The new leader takes writes.
        after = group.runtimes["b"].submit(token(2, 1))
        group.settle()
        assert result_now(after).ok
        return by_code, applied
    finally:
        group.close()


def test_lost_ack_then_retry_returns_the_first_result_and_applies_once(group: Group) -> None:
    leader = group.runtimes["a"]
    group.fake.lose_acks(1)
    first = leader.submit(incr(9, 1, "k", 5))
    group.settle()
    lost = result_now(first)
    assert lost.code == ResultCode.TIMEOUT and lost.message == OUTCOME_UNKNOWN
    assert not is_definite(lost.code), "the server reports it in doubt"
    retry = leader.submit(incr(9, 1, "k", 5))  # same (client_id, request_seq)
    group.settle()
    answer = result_now(retry)
    assert answer.ok and answer.generation == 1
    assert all(group.value(node, "k", "n") == 5 for node in NODES)
    record = group.engines["a"].get(digest("k"))
    assert record is not None and record.generation == 1, "applied exactly once"
    following = leader.submit(incr(9, 2, "k", 5))
    group.settle()
    assert result_now(following).generation == 2
    assert group.value("c", "k", "n") == 10


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_duplicates_and_restarts_leave_replicas_identical(tmp_path: Path, seed: int) -> None:
    group = Group(tmp_path, seed)
    try:
        group.fake.duplicate_deliveries(True)
        acknowledged: dict[str, int] = {}
        seq = 0

        def write_round(keys_: Sequence[str]) -> None:
            nonlocal seq
            futures = []
            for key in keys_:
                seq += 1
                futures.append((key, group.runtimes["a"].submit(incr(1, seq, key))))
            group.settle()
            for key, future in futures:
                assert result_now(future).ok
                acknowledged[key] = acknowledged.get(key, 0) + 1

        write_round(["x", "y", "x", "z"])
        group.crash("c")
        write_round(["x", "y"])
        group.restart("c", "c")  # same store: replays, skipping what it applied
        write_round(["z", "x"])
        group.crash("b")
        group.restart("b", "b-wiped")  # empty store: replays the whole log from 1
        write_round(["y"])
        group.fake.run_until_idle()
        for node in NODES:
            for key, count in acknowledged.items():
                assert group.value(node, key, "n") == count, (node, key)
            assert group.engines[node].applied_index == len(group.fake.entries)
        group.assert_identical()
    finally:
        group.close()


# -- reads -----------------------------------------------------------------------------------


def _put(group: Group, node: str, seq: int, value: int) -> None:
    future = group.runtimes[node].submit(request(1, seq, "x", op.write("v", value)))
    group.settle()
    assert result_now(future).ok


def test_a_deposed_leader_never_answers_a_linearizable_read_with_a_stale_value(
    group: Group,
) -> None:
    _put(group, "a", 1, 1)
    group.fake.partition({"a"})
    group.fake.elect("b")
    _put(group, "b", 2, 2)
    old = group.runtimes["a"]
    assert old.is_leader(), "a has not learned it was deposed"
    session = result_now(old.read(digest("x"), [op.read("v")], NOW_MS, linearize=False))
    assert dict(session.results) == {"v": 1}, "a session read may be stale"
    linear = old.read(digest("x"), [op.read("v")], NOW_MS, linearize=True)
    group.settle()
    assert not linear.done(), "its barrier cannot commit: the read waits"
    group.fake.heal()
    group.settle()
    refused = result_now(linear)
    assert refused.code == ResultCode.NOT_LEADER and is_definite(refused.code)
    fresh = group.runtimes["b"].read(digest("x"), [op.read("v")], NOW_MS, linearize=True)
    group.settle()
    assert dict(result_now(fresh).results) == {"v": 2}


def test_a_linearizable_read_fails_retryably_when_its_barrier_is_unknown(group: Group) -> None:
    _put(group, "a", 1, 1)
    group.fake.lose_acks(1)
    read = group.runtimes["a"].read(digest("x"), [op.read("v")], NOW_MS, linearize=True)
    group.settle()
    assert result_now(read).code == ResultCode.TIMEOUT


def test_many_linearizable_reads_share_one_barrier(group: Group) -> None:
    _put(group, "a", 1, 7)
    leader = group.runtimes["a"]
    before = len(group.fake.entries)
    first = [leader.read(digest("x"), [op.read("v")], NOW_MS, True) for _ in range(50)]
    assert leader.pump(), "one barrier proposed"
    second = [leader.read(digest("x"), [op.read("v")], NOW_MS, True) for _ in range(20)]
    assert not leader.pump(), "they wait: a barrier is already in flight"
    assert not any(future.done() for future in first + second)
    group.settle()
    assert all(dict(result_now(f).results) == {"v": 7} for f in first + second)
    assert len(group.fake.entries) == before + 2
    assert leader.status().barriers_proposed == 2


def test_linearizable_reads_ride_on_a_pending_write_and_see_it(group: Group) -> None:
    _put(group, "a", 1, 7)
    leader = group.runtimes["a"]
    before = len(group.fake.entries)
    write = leader.submit(request(1, 2, "x", op.write("v", 8)))
    reads = [leader.read(digest("x"), [op.read("v")], NOW_MS, True) for _ in range(10)]
    group.settle()
    assert result_now(write).ok
    assert all(dict(result_now(f).results) == {"v": 8} for f in reads)
    assert len(group.fake.entries) == before + 1, "no barrier of its own"
    missing = leader.read(digest("nothing"), [op.read()], NOW_MS, True)
    group.settle()
    assert result_now(missing).code == ResultCode.RECORD_NOT_FOUND


def test_background_reads_and_writes(tmp_path: Path) -> None:
    group = Group(tmp_path, 4, background=True)
    try:
        leader = group.runtimes["a"]
        writes = [leader.submit(incr(1, seq, "k")) for seq in range(1, 21)]
        reads = [leader.read(digest("k"), [op.read("n")], NOW_MS, True) for _ in range(20)]
        results = group.drive(writes + reads)
        assert all(result.ok for result in results)
        last = leader.read(digest("k"), [op.read("n")], NOW_MS, True)
        assert dict(group.drive([last])[0].results) == {"n": 20}
    finally:
        group.close()


# -- background jobs ---------------------------------------------------------------------------


def test_jobs_propose_only_on_the_leader(group: Group) -> None:
    short = WritePolicy(ttl=10)
    futures = [
        group.runtimes["a"].submit(request(1, n, n, op.write("v", n), policy=short))
        for n in range(1, 6)
    ]
    futures.append(group.runtimes["a"].submit(request(1, 6, 6, op.write("v", 6))))
    group.settle()
    assert all(result_now(f).ok for f in futures)
    before = len(group.fake.entries)
    later_ms = NOW_MS + 20_000
    assert group.runtimes["b"].run_jobs(later_ms) == []
    assert group.runtimes["c"].run_jobs(later_ms) == []
    group.settle()
    assert len(group.fake.entries) == before

    expire, raid = group.runtimes["a"].run_jobs(later_ms)
    group.settle()
    assert result_now(expire).count == 5
    assert result_now(raid).count == 0, "the tombstones are younger than the period"
    for node in NODES:
        metas = [group.engines[node].metadata(digest(n)) for n in range(1, 7)]
        assert [m.tombstone for m in metas if m is not None] == [True] * 5 + [False]
    assert group.runtimes["a"].run_jobs(later_ms + 1000) == [], "nothing expired, raid not due"

    (raid,) = group.runtimes["a"].run_jobs(later_ms + 61_000)
    group.settle()
    assert result_now(raid).count == 5
    for node in NODES:
        assert [group.engines[node].metadata(digest(n)) is None for n in range(1, 7)] == [
            True
        ] * 5 + [False]
    group.assert_identical()


# -- close ---------------------------------------------------------------------------------------


def test_close_answers_every_outstanding_future(group: Group) -> None:
    leader = group.runtimes["a"]
    in_flight = leader.submit(incr(1, 1, "k"))
    waiting_read = leader.read(digest("k"), [op.read()], NOW_MS, True)
    leader.pump()
    queued = leader.submit(incr(1, 2, "k"))
    queued_read = leader.read(digest("k"), [op.read()], NOW_MS, True)
    leader.close()
    assert result_now(in_flight) == failure(ResultCode.TIMEOUT, OUTCOME_UNKNOWN)
    assert result_now(waiting_read).code == ResultCode.NOT_LEADER
    assert result_now(queued).code == ResultCode.NOT_LEADER
    assert result_now(queued_read).code == ResultCode.NOT_LEADER
    assert result_now(leader.submit(incr(1, 3, "k"))).code == ResultCode.NOT_LEADER
    assert leader.status().closed
    group.settle()  # the log answers later: ignored, nothing raises
    leader.close()


def test_close_joins_the_worker_thread(tmp_path: Path) -> None:
    group = Group(tmp_path, 0, background=True)
    leader = group.runtimes["a"]
    pending = leader.submit(incr(1, 1, "k"))
    group.close()
    assert result_now(pending).code in (ResultCode.TIMEOUT, ResultCode.NOT_LEADER)
    assert not any(t.name.startswith("group-") for t in threading.enumerate())
