"""`PysyncobjLog` on real pysyncobj: three replicas in this process on 127.0.0.1, each with its
own group directory and its own `Engine` on LMDB.

Every wait is a condition polled until a deadline; every replica started is closed in a
`finally`. Timings: elections take 0.8-1.6 s (RaftOptions defaults).
"""

from __future__ import annotations

import base64
import collections
import os
import socket
import threading
import time
import types
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pysyncobj.pickle
import pytest
from cryptography.fernet import InvalidToken
from pysyncobj import encryptor as pysyncobj_encryptor
from pysyncobj.journal import FileJournal
from pysyncobj.syncobj import _COMMAND_TYPE

from raftstore import command_codec, keys, raft_log
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.commands import RecordRequest, Result
from raftstore.config import NamespaceConfig
from raftstore.engine import Engine
from raftstore.raft_log import (
    DUMP_FILE,
    JOURNAL_FILE,
    PysyncobjLog,
    RaftLogError,
    RaftOptions,
)
from raftstore.replication import Outcome, Proposal, Role

SECRET = "raft-log-test-secret"
NAMESPACE = NamespaceConfig("test")
NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000
COUNTER_DIGEST = keys.calc_digest("test", "s", "counter")
WAIT_S = 15.0
OPTIONS = RaftOptions(connection_retry_s=0.3)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def increment(seq: int, delta: int = 1) -> bytes:
    request = RecordRequest(
        client_id=7,
        request_seq=seq,
        acked_seq=0,
        now_ms=NOW_MS + seq,
        digest=COUNTER_DIGEST,
        set_name="s",
        ops=(op.increment("n", delta),),
    )
    return command_codec.encode_batch([request])


@dataclass
class Replica:
    node_id: str
    address: str
    group_dir: Path
    secret: str
    options: RaftOptions
    addresses: dict[str, str]
    engine: Engine | None = None
    log: PysyncobjLog | None = None
    applied: collections.Counter[int] = field(default_factory=collections.Counter)
    replays: int = 0

    def apply(self, log_index: int, entry: bytes) -> Any:
        assert self.engine is not None
        results = self.engine.apply(log_index, command_codec.decode_batch(entry))
        if results is None:
            self.replays += 1
        else:
            self.applied[log_index] += 1
        return results

    def start(self) -> None:
        assert self.log is None
        self.engine = Engine(self.group_dir / "store", NAMESPACE)
        try:
            self.log = PysyncobjLog(
                self.node_id,
                addresses=self.addresses,
                apply=self.apply,
                group_dir=self.group_dir,
                secret=self.secret,
                snapshot=self.engine,
                options=self.options,
            )
        except BaseException:
            self.engine.close()
            self.engine = None
            raise

    def stop(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    @property
    def running(self) -> bool:
        return self.log is not None

    def counter(self) -> int:
        assert self.engine is not None
        record = self.engine.get(COUNTER_DIGEST)
        return 0 if record is None else int(record.bins["n"])


class Cluster:
    def __init__(self, root: Path, size: int = 3, options: RaftOptions = OPTIONS) -> None:
        ports = free_ports(size)
        addresses = {f"n{i}": f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.replicas = {
            node_id: Replica(node_id, address, root / node_id, SECRET, options, addresses)
            for node_id, address in addresses.items()
        }

    def __getitem__(self, node_id: str) -> Replica:
        return self.replicas[node_id]

    def running(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.running]

    def start_all(self) -> None:
        for replica in self.replicas.values():
            replica.start()

    def stop_all(self) -> None:
        for replica in self.replicas.values():
            replica.stop()

    def leader(self, among: list[Replica] | None = None) -> Replica:
        """The one running replica that leads and that every running replica (or every one
        of `among`) follows."""
        found: list[Replica] = []

        def agreed() -> bool:
            running = self.running() if among is None else among
            leaders = [r for r in running if r.log is not None and r.log.is_leader()]
            if len(leaders) != 1:
                return False
            ids = {r.log.leader() for r in running if r.log is not None}
            if ids != {leaders[0].node_id}:
                return False
            found[:] = leaders
            return True

        wait_until(agreed, "one leader all running replicas agree on")
        return found[0]

    def followers(self) -> list[Replica]:
        leader = self.leader()
        return [r for r in self.running() if r is not leader]

    def converged(self) -> None:
        """Every running engine at the leader engine's applied position."""
        leader = self.leader()
        assert leader.engine is not None
        target = leader.engine.applied_index

        def caught_up() -> bool:
            return all(
                r.engine is not None and r.engine.applied_index == target for r in self.running()
            )

        wait_until(caught_up, f"all engines at applied index {target}")


def lone_replica(root: Path, options: RaftOptions = OPTIONS, port: int | None = None) -> Replica:
    address = f"127.0.0.1:{free_ports(1)[0] if port is None else port}"
    return Replica("solo", address, root / "solo", SECRET, options, {"solo": address})


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def propose(log: PysyncobjLog | None, entry: bytes, timeout_s: float = WAIT_S) -> Proposal:
    assert log is not None
    answers: list[Proposal] = []
    done = threading.Event()

    def on_done(proposal: Proposal) -> None:
        answers.append(proposal)
        done.set()

    log.propose(entry, on_done)
    assert done.wait(timeout_s), "no answer to a proposal"
    assert len(answers) == 1
    return answers[0]


def increments(cluster: Cluster, first_seq: int, count: int) -> None:
    for seq in range(first_seq, first_seq + count):
        answer = propose(cluster.leader().log, increment(seq))
        assert answer.outcome is Outcome.APPLIED, answer


def test_election_proposals_convergence_and_follower_rejection(cluster: Cluster) -> None:
    cluster.start_all()
    leader = cluster.leader()
    assert leader.log is not None
    status = leader.log.status()
    assert status.role is Role.LEADER and status.leader == leader.node_id and status.term >= 1

    answer = propose(leader.log, increment(1, delta=5))
    assert answer.outcome is Outcome.APPLIED
    results = answer.value
    assert isinstance(results, list) and len(results) == 1
    assert isinstance(results[0], Result) and results[0].ok
    assert results[0].generation == 1  # the record was created by this entry
    increments(cluster, 2, 4)
    cluster.converged()
    assert [r.counter() for r in cluster.running()] == [9, 9, 9]

    for follower in cluster.followers():
        rejected = propose(follower.log, increment(100))
        assert rejected == Proposal(Outcome.REJECTED, reason="not leader")
        assert follower.log is not None and follower.log.status().role is Role.FOLLOWER

    # An entry apply cannot decode: answered in doubt, the log goes on.
    broken = propose(leader.log, b"\x00 not a batch")
    assert broken.outcome is Outcome.UNKNOWN and "apply failed" in broken.reason
    increments(cluster, 6, 1)
    cluster.converged()
    assert [r.counter() for r in cluster.running()] == [10, 10, 10]
    assert all(r.log is not None and r.log.apply_failures == 1 for r in cluster.running())

    too_big = propose(leader.log, b"x" * (OPTIONS.entry_bytes_max + 1))
    assert too_big.outcome is Outcome.REJECTED and "over" in too_big.reason

    # pysyncobj denies a transfer until the leader has the target's ack of its last entry:
    # ask again until it happens.
    target = cluster.followers()[0]
    asked = [0.0]

    def transferred() -> bool:
        assert target.log is not None and leader.log is not None
        if target.log.is_leader():
            return True
        if time.monotonic() - asked[0] > 0.3:
            asked[0] = time.monotonic()
            leader.log.transfer_leadership(target.node_id)
        return False

    wait_until(transferred, f"leadership to move to {target.node_id}")
    assert cluster.leader() is target


def test_closing_the_leader_lets_another_take_over(tmp_path: Path) -> None:
    # Long enough for a leader left alone to keep believing it leads throughout.
    options = replace(OPTIONS, leader_fallback_timeout_s=10.0, proposal_timeout_s=0.5)
    cluster = Cluster(tmp_path, options=options)
    try:
        take_over_and_answer_in_doubt(cluster)
    finally:
        cluster.stop_all()


def take_over_and_answer_in_doubt(cluster: Cluster) -> None:
    cluster.start_all()
    first = cluster.leader()
    increments(cluster, 1, 3)
    first.stop()
    second = cluster.leader()
    assert second is not first
    increments(cluster, 4, 3)
    cluster.converged()
    assert [r.counter() for r in cluster.running()] == [6, 6]

    # Alone, the new leader cannot commit: what it holds is answered UNKNOWN, at the
    # proposal deadline or at close.
    (other,) = [r for r in cluster.running() if r is not second]
    other.stop()
    assert second.log is not None
    late = propose(second.log, increment(7))
    assert late == Proposal(Outcome.UNKNOWN, reason="no answer before the deadline")
    answers: list[Proposal] = []
    second.log.propose(increment(8), answers.append)
    assert answers == []  # still leader: held, not refused
    second.stop()
    assert answers == [Proposal(Outcome.UNKNOWN, reason="log closed")]


def test_a_replica_restarted_after_compaction_catches_up_from_a_snapshot(
    cluster: Cluster,
) -> None:
    cluster.start_all()
    increments(cluster, 1, 10)
    cluster.converged()
    for replica in cluster.running():
        assert replica.log is not None
        replica.log.force_compaction()
    for replica in cluster.running():
        wait_until(lambda r=replica: (r.group_dir / DUMP_FILE).exists(), "first dumps")

    lagging = cluster.followers()[0]
    lagging.stop()
    increments(cluster, 11, 20)
    cluster.converged()
    leader = cluster.leader()
    assert leader.log is not None
    before = leader.log.status().log_entries
    leader.log.force_compaction()
    wait_until(
        lambda: leader.log is not None and leader.log.status().log_entries < before,
        "the leader's log to be cut",
    )

    lagging.start()
    assert lagging.log is not None
    wait_until(lambda: lagging.log is not None and lagging.log.snapshots_installed == 1, "install")
    cluster.converged()
    assert lagging.counter() == 30
    increments(cluster, 31, 2)
    cluster.converged()
    assert [r.counter() for r in cluster.running()] == [32, 32, 32]
    assert all(count == 1 for r in cluster.running() for count in r.applied.values())


def test_a_full_restart_replays_without_applying_twice(cluster: Cluster) -> None:
    cluster.start_all()
    increments(cluster, 1, 12)
    cluster.converged()
    cluster.stop_all()

    cluster.start_all()
    increments(cluster, 13, 1)
    cluster.converged()
    for replica in cluster.running():
        assert replica.counter() == 13
        assert sum(replica.applied.values()) == 13
        assert set(replica.applied.values()) == {1}
    # pysyncobj did hand the old entries over again; the engine skipped every one.
    assert all(r.replays >= 12 for r in cluster.running())


def test_a_store_ahead_of_its_journal_rejoins_empty(cluster: Cluster) -> None:
    cluster.start_all()
    increments(cluster, 1, 8)
    cluster.converged()
    lost = cluster.followers()[0]
    lost.stop()
    (lost.group_dir / JOURNAL_FILE).unlink()  # a crash took the journal, not the store

    lost.start()
    assert lost.log is not None and lost.log.log_loss_repaired
    increments(cluster, 9, 3)
    cluster.converged()
    assert [r.counter() for r in cluster.running()] == [11, 11, 11]
    assert all(count == 1 for r in cluster.running() for count in r.applied.values())


def test_a_single_node_group_with_a_lost_journal_refuses_to_start(tmp_path: Path) -> None:
    alone = lone_replica(tmp_path)
    try:
        alone.start()
        wait_until(lambda: alone.log is not None and alone.log.is_leader(), "a lone leader")
        assert propose(alone.log, increment(1)).outcome is Outcome.APPLIED
    finally:
        alone.stop()
    (alone.group_dir / JOURNAL_FILE).unlink()
    with pytest.raises(RaftLogError, match="single-node"):
        alone.start()


def test_a_log_outlives_the_thread_that_made_it_and_close_releases_everything(
    tmp_path: Path,
) -> None:
    alone = lone_replica(tmp_path)
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    try:
        maker = threading.Thread(target=alone.start)
        maker.start()
        maker.join()  # pysyncobj alone would stop ticking once its creating thread ended
        wait_until(lambda: alone.log is not None and alone.log.is_leader(), "a lone leader")
        assert propose(alone.log, increment(1)).outcome is Outcome.APPLIED
    finally:
        alone.stop()
    assert threading.active_count() == threads_before
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_a_replica_with_the_wrong_secret_cannot_join(cluster: Cluster) -> None:
    intruder = cluster["n2"]
    intruder.secret = "not-the-secret"
    cluster.start_all()
    good = [cluster["n0"], cluster["n1"]]
    leader = cluster.leader(among=good)  # a majority without the intruder
    for seq in range(1, 4):
        assert propose(leader.log, increment(seq)).outcome is Outcome.APPLIED
    wait_until(lambda: all(r.counter() == 3 for r in good), "the good replicas")
    # The intruder never connected: no election, no leader, no entries.
    assert intruder.log is not None and intruder.log.leader() is None
    assert intruder.engine is not None and intruder.engine.applied_index == 0
    assert intruder.log.status().log_entries == 1
    assert propose(intruder.log, increment(9)).outcome is Outcome.REJECTED


def test_a_secret_is_required(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    engine = Engine(tmp_path / "store", NAMESPACE)
    try:
        with pytest.raises(RaftLogError, match="secret"):
            PysyncobjLog(
                "n0",
                addresses={"n0": f"127.0.0.1:{port}"},
                apply=lambda index, entry: None,
                group_dir=tmp_path / "group",
                secret="",
                snapshot=engine,
            )
    finally:
        engine.close()


def test_a_taken_port_fails_the_start_and_leaves_nothing_behind(tmp_path: Path) -> None:
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        options = replace(OPTIONS, bind_retries_max=2, bind_retry_s=0.1)
        replica = lone_replica(tmp_path, options, port)
        fds_before = len(os.listdir("/proc/self/fd"))
        threads_before = threading.active_count()
        with pytest.raises(RaftLogError, match="cannot bind"):
            replica.start()
        assert threading.active_count() == threads_before
        assert len(os.listdir("/proc/self/fd")) == fds_before
    finally:
        squatter.close()
    replica.start()  # the journal was released: the same group can start once the port is free
    replica.stop()


def test_durable_logs_sync_the_journal_before_answering(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, options=replace(OPTIONS, durable=True))
    try:
        cluster.start_all()
        increments(cluster, 1, 5)
        cluster.converged()
        for replica in cluster.running():
            assert replica.log is not None and replica.log.journal_syncs >= 5
            assert (replica.group_dir / (JOURNAL_FILE + ".meta")).exists()
    finally:
        cluster.stop_all()


def test_a_corrupt_dump_is_refused_before_it_replaces_the_store(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "store", NAMESPACE)
    try:
        engine.apply(3, command_codec.decode_batch(increment(1)))
        applied = engine.copy_to(tmp_path / "copy")
        assert applied == 3
    finally:
        engine.close()
    header = {
        "format": 1,
        "snapshot_index": 4,
        "store_applied": applied,
        "last": [b"\x01", 4, 1],
        "prev": [b"\x00", 3, 1],
        "cluster": ["127.0.0.1:1"],
    }
    dump = tmp_path / "dump"
    raft_log._write_dump(dump, header, tmp_path / "copy" / "data.mdb")
    assert raft_log._read_dump_header(dump) == header
    raft_log._extract_store(dump, tmp_path / "good.mdb")
    assert (tmp_path / "good.mdb").read_bytes() == (tmp_path / "copy" / "data.mdb").read_bytes()

    raw = bytearray(dump.read_bytes())
    raw[-100] ^= 0xFF  # a flipped bit in the store copy
    dump.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        raft_log._extract_store(dump, tmp_path / "bad.mdb")
    dump.write_bytes(bytes(raw[:-9]))  # cut short
    with pytest.raises(ValueError, match="truncated"):
        raft_log._extract_store(dump, tmp_path / "short.mdb")


# -- the transport: the same tokens, fewer messages --------------------------------------------


def test_our_fernet_tokens_are_stock_fernet_tokens() -> None:
    stock = pysyncobj_encryptor.getEncryptor(SECRET)
    ours = raft_log._fernet_of(SECRET)
    for size in (0, 1, 15, 16, 17, 1000, 70_000):
        message = os.urandom(size)
        sealed = ours.encrypt_at_time(message, 1234)
        assert stock.extract_timestamp(sealed) == 1234 and stock.decrypt(sealed) == message
        stock_sealed = stock.encrypt_at_time(message, 99)
        assert ours.extract_timestamp(stock_sealed) == 99 and ours.decrypt(stock_sealed) == message
    assert ours.encrypt_at_time(b"same", 1) != ours.encrypt_at_time(b"same", 1), "fresh IVs"
    sealed = bytearray(base64.urlsafe_b64decode(ours.encrypt_at_time(b"x" * 40, 7)))
    for position in (0, 5, 20, 40, len(sealed) - 1):  # version, time, IV, ciphertext, MAC
        tampered = bytearray(sealed)
        tampered[position] ^= 1
        with pytest.raises(InvalidToken):
            ours.extract_timestamp(base64.urlsafe_b64encode(bytes(tampered)))
    for garbage in (b"", b"not base64 !!", base64.urlsafe_b64encode(bytes(sealed[:-17]))):
        with pytest.raises(InvalidToken):
            ours.decrypt(garbage)
    with pytest.raises(InvalidToken):
        raft_log._fernet_of("another secret").decrypt(ours.encrypt_at_time(b"x", 1))


def test_an_idle_group_ticks_at_its_poll_period(cluster: Cluster) -> None:
    """The leader wakes early for a deferred commit notice, and only then (pysyncobj's times
    are on its own clock: mixing in time.monotonic() made it spin)."""
    cluster.start_all()
    leader = cluster.leader()
    increments(cluster, 1, 3)
    cluster.converged()  # followers learn the commit without another entry
    ticks = collections.Counter[str]()
    for replica in cluster.running():
        assert replica.log is not None
        sync_obj = replica.log._replica
        on_tick = sync_obj._onTick

        def counting(wait_s: float = 0.0, node: str = replica.node_id, tick: Any = on_tick) -> None:
            ticks[node] += 1
            tick(wait_s)

        sync_obj._onTick = counting
    time.sleep(1.0)
    assert ticks[leader.node_id] < 200, ticks  # heartbeats, acks, 20 polls a second
    assert max(ticks.values()) < 200, ticks


def test_commands_and_messages_are_pickled_with_protocol_5(cluster: Cluster) -> None:
    """Protocol 2 (pysyncobj's) stores bytes as latin-1 text in UTF-8: binary entries grew by
    half as commands and again inside messages."""
    cluster.start_all()
    increments(cluster, 1, 3)
    cluster.converged()
    follower = cluster.followers()[0]
    journal_path = str(follower.group_dir / raft_log.JOURNAL_FILE)
    cluster.stop_all()
    journal = FileJournal(journal_path)
    try:
        # A command is its type byte, then pysyncobj's pickle of (method, args, kwargs).
        commands = [journal[i][0] for i in range(len(journal))]
    finally:
        journal._destroy()
    regular = [c for c in commands if c[0] == _COMMAND_TYPE.REGULAR]  # not elections' no-ops
    assert len(regular) >= 3
    assert all(c[1:3] == b"\x80\x05" for c in regular), [c[:3] for c in regular]

    sent = bytearray()
    connection = types.SimpleNamespace(
        sendRandKey=None,
        encryptor=None,
        _TcpConnection__writeBuffer=sent,
        _TcpConnection__trySendBuffer=lambda: None,
    )
    message = {"type": "append_entries", "entries": [(regular[0], 7, 1)], "term": 1}
    raft_log._send(connection, message)
    body = zlib.decompress(bytes(sent[4:]))
    assert body[:2] == b"\x80\x05"
    assert pysyncobj.pickle.loads(body) == message  # what a stock peer does with it
