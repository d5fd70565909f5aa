"""Transactions through the SDK against one real 3-node cluster of 4 partition groups.

Every error code of docs/transactions.md is produced on purpose here: 120 (a record locked by
a prepared transaction, made by sending the protocol's own steps by hand), 121 (a write
between a transaction's read and its commit), 122 (the deadline passes), 123 (too many
writes), 124/125 (commit after abort, abort after commit). The lock made by hand is left for
the nodes to recover once its deadline passes: that is the recovery without a coordinator.
Each test uses keys of its own set; waits have deadlines.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import client
from client import exception as ex
from client import list_operations as lops
from client import operations as ops
from client.policies import Policy
from raftstore import keys, wire
from raftstore.commands import decode_result
from raftstore.errors import ResultCode
from raftstore.ops import Op, OpCode
from raftstore.policy import DEFAULT_WRITE_POLICY
from raftstore.txn_commands import TxnBegin, TxnDecide, TxnPrepare, TxnState, TxnWrite, state_of
from tests.cluster_harness import Cluster, running_cluster

NS = "test"
GROUPS = 4  # more than the default 2, for transactions over four groups
WAIT_S = 30.0
TIMEOUT_MS = 10_000
POLICIES = {kind: {"total_timeout": TIMEOUT_MS} for kind in ("read", "write", "operate", "batch")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("txn-cluster"), 3, partition_groups=GROUPS
    ) as running:
        yield running


@pytest.fixture(scope="module")
def db(cluster: Cluster) -> Iterator[client.Client]:
    sdk = client.connect({"hosts": cluster.hosts, "policies": POLICIES})
    yield sdk
    sdk.close()


def group_of(key: tuple[str, str, Any]) -> int:
    return keys.partition_id(client.calc_digest(*key)) % GROUPS


def keys_in_groups(set_name: str, wanted: list[int]) -> list[tuple[str, str, str]]:
    """One key per entry of `wanted`, each in that group (distinct keys)."""
    found: list[tuple[str, str, str]] = []
    taken: set[str] = set()
    counter = 0
    for group in wanted:
        while True:
            counter += 1
            name = f"k{counter}"
            key = (NS, set_name, name)
            if name not in taken and group_of(key) == group:
                taken.add(name)
                found.append(key)
                break
    return found


def eventually(check: Any, what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a condition under a deadline


# -- commits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spread", ["one_group", "two_groups", "four_groups"])
def test_commit_applies_every_write_atomically_and_nothing_before(
    db: client.Client, spread: str
) -> None:
    groups = {"one_group": [1, 1, 1, 1], "two_groups": [0, 2, 0, 2], "four_groups": [0, 1, 2, 3]}
    accounts = keys_in_groups(f"commit-{spread}", groups[spread])
    for key in accounts:
        db.put(key, {"balance": 100})
    with db.transaction(timeout=10) as t:
        for key in accounts:
            _, _, bins = t.get(key)
            t.put(key, {"balance": bins["balance"] + 5, "touched": True})
        # own writes are visible inside; nothing is visible outside before the commit
        assert t.get(accounts[0])[2] == {"balance": 105, "touched": True}
        assert db.get(accounts[0])[2] == {"balance": 100}
    for key in accounts:
        _, meta, bins = db.get(key)
        assert bins == {"balance": 105, "touched": True}
        assert meta["gen"] == 2


def test_a_two_group_commit_is_coordinated_by_the_other_groups_leader(db: client.Client) -> None:
    """The SDK sends the commit to the leader of the written key outside the home group:
    that group's prepare and resolve are local calls there, so the transaction takes one
    node-to-node step (the commit at home), not two (a prepare and a resolve elsewhere)."""

    def balanced() -> list[str] | None:
        # Leaders move to each group's preferred replica in the first seconds after a start
        # (and then stay): wait for that, so that no leader moves while the test counts.
        space = db.info("partition-map")["namespaces"][NS]
        preferred = [replicas[0] for replicas in space["replicas"]]
        return preferred if space["leaders"] == preferred else None

    leaders = eventually(balanced, "every group led by its preferred replica")
    home_group = 0
    other_group = next(g for g in range(GROUPS) if leaders[g] != leaders[home_group])
    home, other = keys_in_groups("coordinator", [home_group, other_group])
    for key in (home, other):
        db.put(key, {"n": 1})

    def counts(name: str) -> dict[str, int]:
        return {node: stats.get(name, 0) for node, stats in db.info_all("statistics").items()}

    # A commit is counted by the node that coordinated it (commit *requests* are not used:
    # a node that redirects one counts it too); steps come from the nodes' own fresh maps.
    committed, steps = counts("txn_committed"), counts("requests_txn_step")
    with db.transaction(timeout=10) as t:
        t.get(home)  # the first key: its group is the home group
        t.put(home, {"n": 2})
        t.put(other, {"n": 2})
    committed_grown = {n: c - committed[n] for n, c in counts("txn_committed").items()}
    steps_grown = {n: c - steps[n] for n, c in counts("requests_txn_step").items()}
    assert {n: c for n, c in committed_grown.items() if c} == {leaders[other_group]: 1}
    assert {n: c for n, c in steps_grown.items() if c} == {leaders[home_group]: 1}
    assert [db.get(key)[2] for key in (home, other)] == [{"n": 2}, {"n": 2}]


def test_the_records_of_a_committed_transaction_are_usable_at_once(db: client.Client) -> None:
    """The answer may leave before the other group's resolve applies (it is only queued at
    that group's leader, docs/transactions.md), yet the client's next write, read and
    transaction on those records behave as if it had waited: none is blocked (120), none
    reads the old value, none fails its version check (121)."""
    home, other = keys_in_groups("at-once", [0, 3])
    for key in (home, other):
        db.put(key, {"n": 0})
    for n in range(1, 21):
        with db.transaction(timeout=10) as t:
            t.get(home)
            t.put(home, {"n": 2 * n - 1})
            t.put(other, {"n": 2 * n - 1})
        assert db.get(other)[2]["n"] == 2 * n - 1, "a read right after the commit"
        db.put(other, {"n": 2 * n - 1, "touched": n})  # a single-record write: not blocked
        with db.transaction(timeout=10) as t:
            first, second = t.batch_read([home, other])
            assert first.record is not None and second.record is not None
            assert second.record[2] == {"n": 2 * n - 1, "touched": n}
            t.put(home, {"n": 2 * n})
            t.put(other, {"n": 2 * n})
    assert [db.get(key)[2]["n"] for key in (home, other)] == [40, 40]


def test_aerospike_shape_with_policy_txn_and_commit_abort_statuses(db: client.Client) -> None:
    a, b = keys_in_groups("shape", [0, 3])
    db.put(a, {"n": 1})
    txn = client.Transaction()
    assert txn.state == client.TXN_STATE_OPEN and 0 < txn.id < 2**64
    _, _, bins = db.get(a, policy={"txn": txn})
    db.operate(a, [ops.increment("n", 1)], policy={"txn": txn})
    db.put(b, {"n": bins["n"]}, policy={"txn": txn})
    _, _, seen = db.operate(a, [ops.read("n")], policy={"txn": txn})
    assert seen == {"n": 2}
    assert db.commit(txn) == client.COMMIT_OK
    assert txn.state == client.TXN_STATE_COMMITTED
    assert db.commit(txn) == client.COMMIT_ALREADY_COMMITTED
    assert db.get(a)[2] == {"n": 2} and db.get(b)[2] == {"n": 1}
    with pytest.raises(ex.TxnCommitted) as committed:  # 124: abort after commit
        db.abort(txn)
    assert committed.value.code == ResultCode.MRT_COMMITTED

    dropped = client.Transaction()
    db.put(a, {"n": 99}, policy={"txn": dropped})
    assert db.abort(dropped) == client.ABORT_OK
    assert db.abort(dropped) == client.ABORT_ALREADY_ABORTED
    with pytest.raises(ex.TxnAborted) as aborted:  # 125: commit after abort
        db.commit(dropped)
    assert aborted.value.code == ResultCode.MRT_ABORTED
    assert db.get(a)[2] == {"n": 2}


def test_removes_list_ops_batch_reads_and_absent_records(db: client.Client) -> None:
    a, b, c = keys_in_groups("mixed", [0, 1, 2])
    db.put(a, {"items": [1]})
    db.put(b, {"gone": 1})
    with db.transaction() as t:
        assert t.exists(c)[1] is None
        t.operate(a, [lops.list_append("items", 2)])
        t.remove(b)
        t.put(c, {"new": "yes"})
        batch = t.batch_read([a, b, c])
        assert [r.result for r in batch] == [0, ResultCode.RECORD_NOT_FOUND, 0]
        assert batch[0].record is not None and batch[0].record[2] == {"items": [1, 2]}
    assert db.get(a)[2] == {"items": [1, 2]}
    assert db.exists(b)[1] is None
    assert db.get(c)[2] == {"new": "yes"}


def test_an_exception_in_the_block_aborts_and_writes_nothing(db: client.Client) -> None:
    (a,) = keys_in_groups("raises", [2])
    db.put(a, {"n": 1})
    with pytest.raises(RuntimeError), db.transaction() as t:
        t.put(a, {"n": 2})
        raise RuntimeError("the app changed its mind")
    assert t.txn.state == client.TXN_STATE_ABORTED
    assert db.get(a)[2] == {"n": 1}


# -- conflicts and limits -----------------------------------------------------------------------


@pytest.mark.parametrize("spread", [[1, 1], [1, 2]])
def test_a_write_between_read_and_commit_is_a_version_mismatch(
    db: client.Client, spread: list[int]
) -> None:
    a, b = keys_in_groups(f"mismatch-{spread[1]}", spread)
    db.put(a, {"n": 1})
    txn = client.Transaction()
    db.get(a, policy={"txn": txn})
    db.put(b, {"n": 1}, policy={"txn": txn})
    db.put(a, {"n": 7})  # someone else, after the transaction's read
    with pytest.raises(ex.TxnVersionMismatch) as raised:
        db.commit(txn)
    assert raised.value.code == ResultCode.MRT_VERSION_MISMATCH and not raised.value.in_doubt
    assert txn.state == client.TXN_STATE_ABORTED
    assert db.get(a)[2] == {"n": 7}
    assert db.exists(b)[1] is None


def test_a_transaction_past_its_deadline_is_expired(db: client.Client) -> None:
    (a,) = keys_in_groups("expired", [0])
    txn = client.Transaction(timeout=1)
    db.put(a, {"n": 1}, policy={"txn": txn})
    eventually(lambda: txn.time_left_ms() <= 0, "the transaction's deadline")
    with pytest.raises(ex.TxnExpired) as raised:
        db.commit(txn)
    assert raised.value.code == ResultCode.MRT_EXPIRED
    assert db.exists(a)[1] is None


def test_limits_are_clear_errors(db: client.Client) -> None:
    with pytest.raises(ex.ParamError):
        client.Transaction(timeout=121)
    with pytest.raises(ex.ParamError):
        client.Transaction(timeout=0.5)
    txn = client.Transaction()
    with pytest.raises(ex.ParamError, match="one namespace"):
        db.put((NS, "limits", 1), {"n": 1}, policy={"txn": txn})
        db.put(("other", "limits", 1), {"n": 1}, policy={"txn": txn})
    many = client.Transaction()
    for i in range(4096):
        db.put((NS, "limits", f"w{i}"), {"n": i}, policy={"txn": many})
    with pytest.raises(ex.TxnTooManyWrites) as raised:
        db.put((NS, "limits", "one-too-many"), {"n": 1}, policy={"txn": many})
    assert raised.value.code == ResultCode.MRT_TOO_MANY_WRITES
    with pytest.raises(ex.ParamError):
        db.get((NS, "limits", 1), policy={"txn": "not a transaction"})


def test_a_commit_whose_home_key_is_not_its_own_is_refused_at_once(db: client.Client) -> None:
    """Checked before routing: no node leads a group of a commit without keys, so a redirect
    would send it around until its timeout."""
    digest = client.calc_digest(NS, "limits", "home")
    policy = Policy(total_timeout_ms=TIMEOUT_MS)
    empty = wire.TxnCommitMsg(NS, 7, digest, TIMEOUT_MS, (), ())
    call = db.exchange(NS, keys.partition_id(digest), empty, policy)
    assert call.error is not None and call.error.code == ResultCode.PARAMETER_ERROR
    assert not call.error.in_doubt


# -- locks and recovery ---------------------------------------------------------------------------


def step(db: client.Client, group: int, command: Any) -> Any:
    """Propose one transaction step by hand, as a coordinator would."""
    call = db.exchange(
        NS, group, wire.TxnStepMsg(NS, group, command), Policy(total_timeout_ms=TIMEOUT_MS)
    )
    response = call.raise_for_error()
    return decode_result(response.value)


def test_a_prepared_lock_blocks_writers_until_recovered_after_its_deadline(
    db: client.Client,
) -> None:
    """A coordinator that prepared and died: its lock blocks writers (120, naming it), reads
    see the last committed value, and once the deadline passes a node recovers it (decide
    ABORTED at home, resolve) without any coordinator."""
    home_key, locked = keys_in_groups("orphan", [0, 2])
    db.put(locked, {"n": 1})
    txn_id = secrets.randbits(63)
    now_ms = time.time_ns() // 1_000_000
    deadline_ms = now_ms + 3000
    assert step(db, 0, TxnBegin(txn_id, now_ms, deadline_ms, (0, 2))).ok
    write = TxnWrite(
        client.calc_digest(*locked),
        "orphan",
        None,
        (Op(OpCode.WRITE, "n", (2,)),),
        DEFAULT_WRITE_POLICY,
    )
    assert step(db, 2, TxnPrepare(txn_id, 0, now_ms, deadline_ms, (), (write,))).ok

    with pytest.raises(ex.TxnBlocked) as blocked:
        db.put(locked, {"n": 3}, policy={"max_retries": 0})
    assert blocked.value.code == ResultCode.MRT_BLOCKED
    assert db.get(locked)[2] == {"n": 1}  # the transaction is open: the committed value
    with pytest.raises(ex.TxnBlocked), db.transaction() as t:
        t.put(locked, {"n": 4})
        t.put(home_key, {"n": 4})

    def unlocked() -> bool:
        try:
            db.put(locked, {"n": 5}, policy={"max_retries": 0})
        except ex.TxnBlocked:
            return False
        return True

    eventually(unlocked, "the recovery of the orphaned lock")
    assert db.get(locked)[2] == {"n": 5}  # rolled back: the provisional 2 never appeared


def test_a_committed_but_unresolved_write_is_what_readers_see(db: client.Client) -> None:
    """Decided COMMITTED at home, resolve not yet sent: a read of the locked record must see
    the committed value (asking the home group), not the old one."""
    (locked,) = keys_in_groups("unresolved", [3])
    db.put(locked, {"n": 1})
    txn_id = secrets.randbits(63)
    now_ms = time.time_ns() // 1_000_000
    deadline_ms = now_ms + 60_000
    assert step(db, 1, TxnBegin(txn_id, now_ms, deadline_ms, (3,))).ok
    write = TxnWrite(
        client.calc_digest(*locked),
        "unresolved",
        None,
        (Op(OpCode.WRITE, "n", (2,)),),
        DEFAULT_WRITE_POLICY,
    )
    assert step(db, 3, TxnPrepare(txn_id, 1, now_ms, deadline_ms, (), (write,))).ok
    decided = step(db, 1, TxnDecide(txn_id, now_ms, deadline_ms, TxnState.COMMITTED))
    assert state_of(decided) is TxnState.COMMITTED
    _, meta, bins = db.get(locked)
    assert bins == {"n": 2} and meta["gen"] == 2
    # the read rolled it forward lazily: writers are soon free again
    eventually(lambda: _writable(db, locked), "the lazy roll-forward")
    assert db.get(locked)[2]["n"] == 9


def _writable(db: client.Client, key: Any) -> bool:
    try:
        db.put(key, {"n": 9}, policy={"max_retries": 0})
    except ex.TxnBlocked:
        return False
    return True


# -- concurrency ----------------------------------------------------------------------------------


def test_concurrent_transfers_keep_the_total(db: client.Client) -> None:
    accounts = keys_in_groups("concurrent", [0, 1, 2, 3, 0, 1, 2, 3])
    for key in accounts:
        db.put(key, {"balance": 100})
    done = {"ok": 0, "conflict": 0}
    lock = threading.Lock()
    stop = time.monotonic() + 5

    def transfers(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            src, dst = rng.sample(accounts, 2)
            try:
                with db.transaction() as t:
                    _, _, a = t.get(src)
                    _, _, b = t.get(dst)
                    amount = rng.randint(1, 30)
                    if a["balance"] < amount:
                        continue
                    t.put(src, {"balance": a["balance"] - amount})
                    t.put(dst, {"balance": b["balance"] + amount})
                outcome = "ok"
            except (ex.TxnBlocked, ex.TxnVersionMismatch):
                outcome = "conflict"
            with lock:
                done[outcome] += 1

    threads = [threading.Thread(target=transfers, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    balances = [db.get(key)[2]["balance"] for key in accounts]
    assert sum(balances) == 800, balances
    assert min(balances) >= 0
    assert done["ok"] > 0, done
