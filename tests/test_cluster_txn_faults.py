"""Bank transfers as transactions on a real 3-node cluster while group leaders are killed.

Accounts spread over every partition group; each transfer is one transaction that reads both
accounts and writes both, appending its own id to each account's `applied` list. Meanwhile
the leader of a random group is SIGKILLed and restarted, again and again, so coordinators
die mid-transaction and their intents are left to recovery. At the end:
- the total never changed and no balance is negative;
- every acknowledged transfer is in both accounts' lists exactly once, every definitely
  failed one in neither, every in-doubt one in both or neither;
- each balance is exactly what its list of applied transfers says.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import client
from client import exception as ex
from raftstore import keys
from server import launcher
from tests.cluster_harness import Cluster, running_cluster

NS = "test"
GROUPS = launcher.PARTITION_GROUPS_DEFAULT
ACCOUNTS = 12
START_BALANCE = 100
WORKERS = 4
RUN_S = 24.0
KILLS = 3
TXN_TIMEOUT_S = 3  # short: intents of killed coordinators are recovered soon after
POLICIES = {kind: {"total_timeout": 5000} for kind in ("read", "write", "operate", "batch")}


@dataclass
class Ledger:
    """What the clients were told, by transfer id."""

    transfers: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    in_doubt: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def account(name: str) -> tuple[str, str, str]:
    return (NS, "bank", name)


def account_names() -> list[str]:
    names = [f"acct{i}" for i in range(ACCOUNTS)]
    groups = {keys.partition_id(client.calc_digest(*account(n))) % GROUPS for n in names}
    assert len(groups) == GROUPS, "the accounts must span every group"
    return names


def transfer(db: client.Client, ledger: Ledger, tid: int, move: tuple[str, str, int]) -> None:
    src, dst, amount = move
    with ledger.lock:
        ledger.transfers[tid] = (src, dst, amount)
    context = db.transaction(timeout=TXN_TIMEOUT_S)
    try:
        with context as t:
            _, _, a = t.get(account(src))
            _, _, b = t.get(account(dst))
            if a["balance"] < amount:
                raise _Insufficient
            t.put(account(src), {"balance": a["balance"] - amount, "applied": [*a["applied"], tid]})
            t.put(account(dst), {"balance": b["balance"] + amount, "applied": [*b["applied"], tid]})
        outcome = ledger.acked
    except _Insufficient:
        outcome = ledger.failed
    except ex.AerospikeError as exc:
        outcome = ledger.in_doubt if exc.in_doubt else ledger.failed
    except OSError:
        outcome = ledger.in_doubt if context.txn.in_doubt else ledger.failed
    with ledger.lock:
        outcome.add(tid)


class _Insufficient(Exception):
    """Not enough money: the transaction is dropped (nothing written)."""


def leader_of(db: client.Client, group: int) -> str | None:
    answer = db.info_random_node("partition-map")
    leader = answer["namespaces"][NS]["leaders"][group]
    return None if leader is None else str(leader)


def test_bank_transfers_survive_leader_kills(tmp_path: Path) -> None:
    names = account_names()
    with running_cluster(tmp_path / "bank", 3) as cluster:
        db = client.connect({"hosts": cluster.hosts, "policies": POLICIES})
        try:
            for name in names:
                db.put(account(name), {"balance": START_BALANCE, "applied": []})
            ledger = Ledger()
            stop = threading.Event()
            workers = [
                threading.Thread(target=_work, args=(db, ledger, names, w, stop), daemon=True)
                for w in range(WORKERS)
            ]
            for worker in workers:
                worker.start()
            kills = _kill_leaders(cluster, db, stop)
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
                assert not worker.is_alive(), "a transfer hung"
            cluster.wait_stable()
            _check(db, ledger, names)
            assert kills == KILLS
        finally:
            db.close()


def _work(
    db: client.Client, ledger: Ledger, names: list[str], worker: int, stop: threading.Event
) -> None:
    rng = random.Random(worker)
    count = 0
    while not stop.is_set():
        count += 1
        src, dst = rng.sample(names, 2)
        transfer(db, ledger, worker * 1_000_000 + count, (src, dst, rng.randint(1, 25)))


def _kill_leaders(cluster: Cluster, db: client.Client, stop: threading.Event) -> int:
    rng = random.Random(7)
    kills = 0
    started = time.monotonic()
    for number in range(KILLS):
        # spread the kills over the run; the wait is the schedule, not a synchronisation
        stop.wait(max(0.0, started + (number + 1) * RUN_S / (KILLS + 1) - time.monotonic()))
        group = rng.randrange(GROUPS)
        victim = leader_of(db, group)
        if victim is None:
            continue
        cluster.kill(victim)
        kills += 1
        _wait_for(lambda g=group, v=victim: leader_of(db, g) not in (None, v), "a new leader")
        cluster.restart(victim)
    stop.wait(max(0.0, started + RUN_S - time.monotonic()))
    return kills


def _wait_for(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling the cluster under a deadline


def _check(db: client.Client, ledger: Ledger, names: list[str]) -> None:
    records = {name: db.get(account(name))[2] for name in names}
    balances = {name: bins["balance"] for name, bins in records.items()}
    assert sum(balances.values()) == START_BALANCE * ACCOUNTS, balances
    assert min(balances.values()) >= 0, balances
    seen: dict[str, Counter[int]] = {
        name: Counter(bins["applied"]) for name, bins in records.items()
    }
    for name, counts in seen.items():
        repeated = [tid for tid, n in counts.items() if n > 1]
        assert not repeated, f"{name} applied transfers twice: {repeated}"
    for tid in ledger.acked | ledger.failed | ledger.in_doubt:
        src, dst, _ = ledger.transfers[tid]
        in_src, in_dst = tid in seen[src], tid in seen[dst]
        assert in_src == in_dst, f"transfer {tid} applied to one account only"
        if tid in ledger.acked:
            assert in_src, f"acknowledged transfer {tid} is lost"
        if tid in ledger.failed:
            assert not in_src, f"failed transfer {tid} was applied"
    for name in names:
        expected = START_BALANCE
        for tid in seen[name]:
            src, dst, amount = ledger.transfers[tid]
            expected += amount if dst == name else -amount
        assert balances[name] == expected, (name, balances[name], expected)
    summary = (
        f"acked {len(ledger.acked)} failed {len(ledger.failed)} in doubt {len(ledger.in_doubt)}"
    )
    print(summary)  # shown with -s: how much the run exercised
    assert len(ledger.acked) >= 50, summary


def test_a_commit_nobody_answers_is_in_doubt_and_settled_later(tmp_path: Path) -> None:
    """Every node paused while the commit is sent: the SDK cannot learn the outcome and says
    so (in_doubt=True, never a failure); once the nodes run again, `txn_status` settles it,
    and what it says is what the records show."""
    with running_cluster(tmp_path / "doubt", 3) as cluster:
        db = client.connect({"hosts": cluster.hosts, "policies": POLICIES})
        pids = [pid for pid in (node.pid() for node in cluster.nodes) if pid is not None]
        try:
            key = account("doubt")
            db.put(key, {"balance": 1, "applied": []})
            txn = client.Transaction(timeout=1)
            _, _, bins = db.get(key, policy={"txn": txn})
            db.put(key, {"balance": bins["balance"] + 1}, policy={"txn": txn})
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(ex.AerospikeError) as raised:
                    db.commit(txn)
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            assert raised.value.in_doubt, raised.value
            assert txn.in_doubt
            cluster.wait_stable()
            status = None
            deadline = time.monotonic() + 60
            while status is None:
                try:
                    status = db.txn_status(txn)
                except ex.AerospikeError as exc:
                    assert exc.in_doubt and time.monotonic() < deadline, exc
            assert status in ("committed", "aborted")
            assert not txn.in_doubt
            expected = 2 if status == "committed" else 1
            assert db.get(key)[2]["balance"] == expected
        finally:
            db.close()
