"""The bank and list-append workloads, driven by the runner against in-memory transactional
databases that must be judged right.

- A serializable fake (optimistic: reads remember versions, writes are buffered, the commit
  validates every read and applies every write atomically under one lock) gives valid
  histories, also when some commits answer an in-doubt timeout.
- Broken fakes are caught: one that loses the second write of some transactions (bank:
  wrong-total), and one that serves stale reads and skips the validation (bank: money
  created or destroyed by lost updates; list-append: Elle's realtime cycles).
- Outcomes: a definite error is `fail`, an unknown or in-doubt one `info`; an error before
  the commit is judged as a read's; a transfer without the funds is `fail` and writes nothing.
- The setup of the accounts: retried until it succeeds, creating only missing accounts.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import pytest

from jepsen_like import runner, test_command
from jepsen_like.generator import BankGenerator, Invocation, ListAppendGenerator
from jepsen_like.history import History
from jepsen_like.workloads import (
    BALANCE_BIN,
    BIN,
    Completion,
    Database,
    Workload,
    account_key,
    append_key,
    bank_workload,
    invoke_bank,
    invoke_list_append,
    list_append_workload,
    set_up_bank,
    workload_named,
)
from raftstore import errors
from raftstore.ops import Op, OpCode

Key = tuple[Any, ...]
Bins = dict[str, Any]
Write = tuple[str, Any]  # ("put", bins) | ("ops", ops)


# -- fakes --------------------------------------------------------------------------------------


def apply_write(bins: Bins | None, write: Write) -> Bins:
    kind, argument = write
    if kind == "put":
        return {**(bins or {}), **argument}
    updated = dict(bins or {})
    for op in argument:
        assert op.bin is not None
        if op.code == OpCode.WRITE:
            updated[op.bin] = op.args[0]
        elif op.code == OpCode.LIST_APPEND:
            updated[op.bin] = [*updated.get(op.bin, []), op.args[0]]
        elif op.code != OpCode.READ:
            # The workloads send only the codes above: any other one is a workload change
            # this fake must learn first, so the test fails here rather than guess.
            raise AssertionError(f"the fake applies WRITE, LIST_APPEND and READ, not {op.code!r}")
    return updated


class TxnStore:
    """The records of a fake database, shared by its clients.

    `lose_every` > 0: every that many writing commits applies only its first record's write
    and acknowledges the whole (broken). `stale_every` > 0: reads come from a snapshot
    refreshed every that many commits, and commits do not validate reads (broken).
    `in_doubt_every` > 0: every that many commits answers an in-doubt timeout, applied or
    not at random (correct). `read_pause_s` > 0: each read takes that long, so concurrent
    transactions overlap and conflict (correct). `reject` is raised by every commit."""

    def __init__(
        self,
        *,
        lose_every: int = 0,
        stale_every: int = 0,
        in_doubt_every: int = 0,
        read_pause_s: float = 0.0,
        seed: int = 3,
    ) -> None:
        self.lock = threading.Lock()
        self.records: dict[Key, tuple[int, Bins]] = {}  # key -> (generation, bins)
        self.snapshot: dict[Key, tuple[int, Bins]] = {}
        self.lose_every = lose_every
        self.stale_every = stale_every
        self.in_doubt_every = in_doubt_every
        self.read_pause_s = read_pause_s
        self.commits = 0
        self.writing_commits = 0
        self.rng = random.Random(seed)
        self.reject: errors.RaftstoreError | None = None

    def read(self, key: Key) -> tuple[int, Bins | None]:
        if self.read_pause_s:
            time.sleep(self.read_pause_s)
        with self.lock:
            found = (self.snapshot if self.stale_every else self.records).get(key)
        return (0, None) if found is None else (found[0], dict(found[1]))

    def commit(self, reads: Mapping[Key, int], writes: Mapping[Key, list[Write]]) -> None:
        with self.lock:
            if self.reject is not None:
                raise self.reject
            if not self.stale_every:
                for key, version in reads.items():
                    if self.records.get(key, (0, {}))[0] != version:
                        raise errors.TxnVersionMismatch()
            self.commits += 1
            doubtful = self.in_doubt_every and self.commits % self.in_doubt_every == 0
            if not doubtful or self.rng.random() < 0.5:
                self._apply(writes)
            if self.stale_every and self.commits % self.stale_every == 0:
                self.snapshot = dict(self.records)
            if doubtful:
                raise errors.TimeoutError("fake commit timeout", in_doubt=True)

    def _apply(self, writes: Mapping[Key, list[Write]]) -> None:
        keys = list(writes)
        if keys:
            self.writing_commits += 1
            if self.lose_every and self.writing_commits % self.lose_every == 0:
                keys = keys[:1]  # acknowledged, the rest never stored
        for key in keys:
            generation, bins = self.records.get(key, (0, None))
            for write in writes[key]:
                bins = apply_write(bins, write)
            assert bins is not None
            self.records[key] = (generation + 1, bins)


class FakeTransaction:
    """One transaction of a `FakeDatabase`: the `Transaction` protocol of the workloads."""

    def __init__(self, store: TxnStore) -> None:
        self.store = store
        self.reads: dict[Key, int] = {}
        self.writes: dict[Key, list[Write]] = {}

    def __enter__(self) -> FakeTransaction:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.store.commit(self.reads, self.writes)
        # Else: aborted, the buffered writes are dropped; the exception goes on.

    def _view(self, key: object) -> tuple[Key, int, Bins | None]:
        assert isinstance(key, tuple)
        version, bins = self.store.read(key)
        self.reads.setdefault(key, version)
        for write in self.writes.get(key, []):
            bins = apply_write(bins, write)
        return key, version, bins

    def get(self, key: object) -> tuple[Any, dict[str, int], dict[str, Any]]:
        found, version, bins = self._view(key)
        if bins is None:
            raise errors.RecordNotFound()
        return found, {"gen": version, "ttl": -1}, bins

    def put(self, key: object, bins: Mapping[str, Any]) -> None:
        assert isinstance(key, tuple)
        self.writes.setdefault(key, []).append(("put", dict(bins)))

    def operate(self, key: object, ops: Sequence[Op]) -> tuple[Any, dict[str, int], dict[str, Any]]:
        """As the SDK does: the record is read (and joins the read set), the ops buffered."""
        found, version, bins = self._view(key)
        self.writes.setdefault(found, []).append(("ops", tuple(ops)))
        read = {op.bin: (bins or {}).get(op.bin) for op in ops if op.code == OpCode.READ}
        return found, {"gen": version, "ttl": -1}, {k: v for k, v in read.items() if k}


class FakeDatabase:
    """One client of a `TxnStore`: the transactional slice of the `Database` protocol."""

    def __init__(self, store: TxnStore) -> None:
        self.store = store
        self.transactions = 0

    def transaction(self, timeout: float) -> FakeTransaction:
        assert 0 < timeout <= 120
        self.transactions += 1
        return FakeTransaction(self.store)

    def close(self) -> None:
        return None


def drive_fake(workload: Workload, store: TxnStore, *, seconds: float = 1.5) -> History:
    """Setup, the runner's main phase and final reads against a fake; the history."""
    recorder = runner.Recorder()
    database: Database = FakeDatabase(store)  # type: ignore[assignment]
    workers = runner.Workers(
        workload, lambda rng: database, recorder, concurrency=3, rate=600.0, seed=5
    )
    workers.set_up(5.0)
    nemesis = runner.NemesisThread(runner.NoFaults(), recorder, seed=5)
    outcome = runner.drive(workers, nemesis, seconds, lambda message: None)
    assert outcome.crash is None and outcome.stuck == []
    if workload.final_invocations:
        assert workers.final_reads(workload.final_invocations, 5.0) > 0
    recorder.close()
    return recorder.history()


def outcomes(history: History) -> set[tuple[str, str]]:
    return {(operation.f, operation.type) for operation in history.operations}


# -- bank ---------------------------------------------------------------------------------------


def test_a_correct_fake_bank_gives_a_valid_history_with_jepsen_values() -> None:
    workload = bank_workload()
    store = TxnStore(read_pause_s=0.002)
    history = drive_fake(workload, store)
    assert {("read", "ok"), ("transfer", "ok")} <= outcomes(history)
    transfer = next(op for op in history.operations if op.f == "transfer" and op.type == "ok")
    assert set(transfer.value) == {"from", "to", "amount"}
    read = next(op for op in history.operations if op.f == "read" and op.type == "ok")
    assert set(read.value) == set(range(8)) and sum(read.value.values()) == 800
    result = runner.check_history(history, workload, 30.0)
    assert result.valid is True, result.explanation
    assert result.details["bank"]["details"]["total"] == 800
    balances = [bins[BALANCE_BIN] for _, bins in store.records.values()]
    assert len(balances) == 8 and sum(balances) == 800


def test_a_bank_with_in_doubt_commits_stays_valid_and_records_info() -> None:
    workload = bank_workload()
    history = drive_fake(workload, TxnStore(in_doubt_every=5))
    assert ("transfer", "info") in outcomes(history)
    assert runner.check_history(history, workload, 30.0).valid is True


def test_a_fake_bank_that_loses_a_transfers_second_write_is_caught() -> None:
    workload = bank_workload()
    history = drive_fake(workload, TxnStore(lose_every=3, read_pause_s=0.001))
    result = runner.check_history(history, workload, 30.0)
    assert result.valid is False
    assert "wrong-total" in result.details["bank"]["details"]["errors"]


def test_a_fake_bank_with_stale_unvalidated_reads_is_caught() -> None:
    workload = bank_workload()
    history = drive_fake(workload, TxnStore(stale_every=5))
    result = runner.check_history(history, workload, 30.0)
    assert result.valid is False
    assert "wrong-total" in result.details["bank"]["details"]["errors"]


def test_a_transfer_without_the_funds_fails_and_writes_nothing() -> None:
    store = TxnStore()
    set_up_bank(FakeDatabase(store), accounts=2, balance=3)  # type: ignore[arg-type]
    before = dict(store.records)
    database: Any = FakeDatabase(store)
    completion = invoke_bank(
        database, Invocation("transfer", {"from": 0, "to": 1, "amount": 4}), accounts=2
    )
    assert completion.type == "fail" and "insufficient-funds" in (completion.error or "")
    assert store.records == before and store.commits == 1  # only the setup committed
    completion = invoke_bank(
        database, Invocation("transfer", {"from": 0, "to": 1, "amount": 3}), accounts=2
    )
    assert completion.type == "ok"
    read = invoke_bank(database, Invocation("read"), accounts=2)
    assert read == Completion("ok", {0: 0, 1: 6})


def test_a_conflicting_transfer_fails_and_applies_nothing() -> None:
    store = TxnStore()
    set_up_bank(FakeDatabase(store), accounts=3, balance=10)  # type: ignore[arg-type]

    class Interfering(FakeDatabase):
        """Between this transaction's reads and its commit, another transfer commits."""

        def transaction(self, timeout: float) -> FakeTransaction:
            transaction = FakeTransaction(self.store)
            view = transaction._view

            def interfere(key: object) -> tuple[Key, int, Bins | None]:
                found = view(key)
                if len(transaction.reads) == 2:
                    other = Invocation("transfer", {"from": 1, "to": 2, "amount": 4})
                    database: Any = FakeDatabase(self.store)
                    assert invoke_bank(database, other, accounts=3).type == "ok"
                return found

            transaction._view = interfere  # type: ignore[method-assign]
            return transaction

    transfer = Invocation("transfer", {"from": 0, "to": 1, "amount": 3})
    completion = invoke_bank(Interfering(store), transfer, accounts=3)  # type: ignore[arg-type]
    assert completion.type == "fail" and "TxnVersionMismatch" in (completion.error or "")
    balances = {key[2]: bins[BALANCE_BIN] for key, (_, bins) in store.records.items()}
    assert balances == {"a0": 10, "a1": 6, "a2": 14}  # only the other transfer


def test_the_setup_creates_only_missing_accounts() -> None:
    store = TxnStore()
    database: Any = FakeDatabase(store)
    set_up_bank(database, accounts=3, balance=100)
    store.records[account_key(0)] = (2, {BALANCE_BIN: 90})
    store.records[account_key(1)] = (2, {BALANCE_BIN: 110})
    del store.records[account_key(2)]
    set_up_bank(database, accounts=3, balance=100)
    assert {key: bins[BALANCE_BIN] for key, (_, bins) in store.records.items()} == {
        account_key(0): 90,
        account_key(1): 110,
        account_key(2): 100,
    }


def test_the_setup_is_retried_until_it_succeeds() -> None:
    store = TxnStore(in_doubt_every=1)  # every commit: in doubt, applied or not
    recorder = runner.Recorder()
    database: Any = FakeDatabase(store)
    workers = runner.Workers(
        bank_workload(), lambda rng: database, recorder, concurrency=1, rate=1.0, seed=5
    )

    attempts = 0
    original = store.commit

    def commit(reads: Mapping[Key, int], writes: Mapping[Key, list[Write]]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts >= 4:
            store.in_doubt_every = 0
        original(reads, writes)

    store.commit = commit  # type: ignore[method-assign]
    workers.set_up(5.0)
    assert attempts >= 4
    assert sorted(bins[BALANCE_BIN] for _, bins in store.records.values()) == [100] * 8
    assert recorder.history().ops == ()


def test_a_setup_that_never_succeeds_fails_the_run_in_one_line() -> None:
    store = TxnStore()
    store.reject = errors.PartitionUnavailable()
    database: Any = FakeDatabase(store)
    workers = runner.Workers(
        bank_workload(), lambda rng: database, runner.Recorder(), concurrency=1, rate=1.0, seed=5
    )
    with pytest.raises(runner.SetupFailed, match=r"bank setup failed .*PartitionUnavailable"):
        workers.set_up(0.3)


# -- list-append --------------------------------------------------------------------------------


def test_a_correct_fake_list_append_gives_a_valid_history_with_elle_values() -> None:
    workload = list_append_workload()
    history = drive_fake(workload, TxnStore(in_doubt_every=11, read_pause_s=0.001))
    assert {("txn", "ok"), ("txn", "info")} <= outcomes(history)
    reads = [
        value
        for op in history.operations
        if op.type == "ok"
        for f, _, value in op.value
        if f == "r"
    ]
    assert reads and all(isinstance(value, tuple) for value in reads)
    assert any(len(value) > 1 for value in reads)
    info = next(op for op in history.operations if op.type == "info")
    assert all(value is None for f, _, value in info.value if f == "r")
    result = runner.check_history(history, workload, 30.0)
    assert result.valid is True, result.explanation
    assert result.details["list-append"]["details"]["transactions"] > 50


def test_a_fake_list_append_with_stale_reads_is_caught() -> None:
    workload = list_append_workload()
    history = drive_fake(workload, TxnStore(stale_every=4))
    result = runner.check_history(history, workload, 30.0)
    assert result.valid is False
    assert result.details["list-append"]["details"]["prohibited_anomaly_types"]


def test_a_transaction_reads_its_own_appends_and_absent_lists_are_empty() -> None:
    database: Any = FakeDatabase(TxnStore())
    micro_ops = (("r", 1, None), ("append", 1, 10), ("append", 1, 11), ("r", 1, None))
    completion = invoke_list_append(database, Invocation("txn", micro_ops))
    assert completion == Completion(
        "ok", (("r", 1, ()), ("append", 1, 10), ("append", 1, 11), ("r", 1, (10, 11)))
    )
    again = invoke_list_append(database, Invocation("txn", (("r", 1, None),)))
    assert again == Completion("ok", (("r", 1, (10, 11)),))
    assert database.store.records[append_key(1)][1] == {BIN: [10, 11]}


# -- outcomes -----------------------------------------------------------------------------------

TRANSFER = Invocation("transfer", {"from": 0, "to": 1, "amount": 1})
APPEND = Invocation("txn", (("append", 0, 1), ("r", 0, None)))
READ_ONLY = Invocation("txn", (("r", 0, None),))


def invoke(invocation: Invocation, database: Any) -> Completion:
    if invocation.f == "txn":
        return invoke_list_append(database, invocation)
    return invoke_bank(database, invocation, accounts=2)


@pytest.mark.parametrize(
    ("error", "invocation", "expected"),
    [
        (errors.TxnBlocked(), TRANSFER, "fail"),
        (errors.TxnVersionMismatch(), APPEND, "fail"),
        (errors.TxnExpired(), TRANSFER, "fail"),
        (errors.TxnAborted(), APPEND, "fail"),
        (errors.RecordGenerationError(), TRANSFER, "fail"),
        (errors.TimeoutError(in_doubt=True), TRANSFER, "info"),
        (errors.TimeoutError(in_doubt=True), APPEND, "info"),
        (errors.TimeoutError(), APPEND, "info"),  # indeterminate, even if not flagged
        (errors.NoResponse(), TRANSFER, "info"),
        (errors.TxnAborted(in_doubt=True), APPEND, "info"),  # in doubt: never fail
        (errors.TxnAborted(in_doubt=True), READ_ONLY, "info"),
        (errors.TimeoutError(), READ_ONLY, "info"),
        (errors.TxnBlocked(), READ_ONLY, "fail"),
    ],
    ids=lambda value: (
        str(value).split(" ")[0] if isinstance(value, errors.RaftstoreError) else None
    ),
)
def test_commit_errors_map_to_fail_when_definite_and_info_when_unknown(
    error: errors.RaftstoreError, invocation: Invocation, expected: str
) -> None:
    store = TxnStore()
    set_up_bank(FakeDatabase(store), accounts=2, balance=5)  # type: ignore[arg-type]
    store.reject = error
    completion = invoke(invocation, FakeDatabase(store))
    assert completion.type == expected
    assert completion.value == invocation.value and completion.error == str(error)


class FailingReads(FakeTransaction):
    error: errors.RaftstoreError | OSError = errors.PartitionUnavailable()

    def _view(self, key: object) -> tuple[Key, int, Bins | None]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.PartitionUnavailable(), "fail"),
        (errors.NotLeader(), "fail"),
        (errors.TimeoutError(), "info"),
        (errors.ConnectionError(), "info"),
        (ConnectionResetError("reset"), "info"),
    ],
)
@pytest.mark.parametrize("invocation", [TRANSFER, APPEND, Invocation("read")])
def test_errors_before_the_commit_are_judged_as_a_reads(
    error: errors.RaftstoreError | OSError, expected: str, invocation: Invocation
) -> None:
    store = TxnStore()

    class Failing(FakeDatabase):
        def transaction(self, timeout: float) -> FakeTransaction:
            failing = FailingReads(self.store)
            failing.error = error
            return failing

    completion = invoke(invocation, Failing(store))
    assert completion.type == expected
    assert store.commits == 0 and store.records == {}


# -- plumbing and generators ------------------------------------------------------------------


def test_the_command_line_offers_bank_and_list_append() -> None:
    parser = argparse.ArgumentParser()
    test_command.add_arguments(parser)
    for name, model in (("bank", "bank"), ("list-append", "list-append")):
        args = parser.parse_args(["--workload", name, "--nemesis", "kill", "--seed", "1"])
        config = test_command.config_of(args)
        config.validate()
        assert config.test_name == f"{name}-kill"
        workload = workload_named(name)
        assert workload.model == model and workload.name == name
    assert workload_named("bank").setup is not None
    assert workload_named("bank").final_invocations == (Invocation("read"),)


def test_bank_transfers_are_between_two_accounts_of_a_bounded_amount() -> None:
    generator = BankGenerator(accounts=4, transfer_max=3, read_fraction=0.25)
    rng = random.Random(1)
    invocations = [generator.next(rng) for _ in range(400)]
    transfers = [inv.value for inv in invocations if inv.f == "transfer"]
    reads = [inv for inv in invocations if inv.f == "read"]
    assert 50 <= len(reads) <= 150 and all(inv.value is None for inv in reads)
    assert all(value["from"] != value["to"] for value in transfers)
    assert {value["amount"] for value in transfers} == {1, 2, 3}
    assert {value["from"] for value in transfers} == {0, 1, 2, 3}


def test_list_append_elements_are_unique_and_keys_rotate() -> None:
    generator = ListAppendGenerator(keys_active=2, micro_ops_max=4, appends_per_key=5)
    rng = random.Random(1)
    appended: dict[Any, list[Any]] = {}
    lengths = set()
    for _ in range(200):
        invocation = generator.next(rng)
        assert invocation.f == "txn"
        lengths.add(len(invocation.value))
        for f, key, value in invocation.value:
            assert f in ("r", "append")
            if f == "append":
                appended.setdefault(key, []).append(value)
            else:
                assert value is None
    assert lengths == {1, 2, 3, 4}
    elements = [element for values in appended.values() for element in values]
    assert len(elements) == len(set(elements))
    assert max(len(values) for values in appended.values()) <= 5
    assert generator.keys_used > 20


def test_generator_options_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="accounts"):
        BankGenerator(accounts=1)
    with pytest.raises(ValueError, match="micro_ops_max"):
        ListAppendGenerator(micro_ops_max=0)
    with pytest.raises(ValueError, match="balance"):
        bank_workload(balance=-1)
