"""`jepsen-like test`: the runner on real clusters, and on fake databases that must be caught.

- Real runs (subprocesses of the command, each well under 40 s): a register run under kill
  ends valid and writes its three files; a set run under partition does too when network
  namespaces are available, and is refused in one line (exit 2) when they are not. The
  histories are re-checked by `jepsen-like check` as a subprocess, with the same verdict.
  Afterwards no process of the run is left and the namespace list is what it was.
- Tests of the test: the runner's workers and checker, driven against in-memory databases.
  A correct one gives valid histories (also with in-doubt timeouts); one that serves stale
  reads, and one that loses acknowledged adds, give invalid ones.
- Pure parts: generators, pacing, run directories, fault windows.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import client
from jepsen_like import netns, runner
from jepsen_like.generator import Invocation, Pacer, RegisterGenerator, SetGenerator
from jepsen_like.history import History, Op, Operation, loads_json
from jepsen_like.report import nemesis_windows, write_store
from jepsen_like.workloads import Database, Workload, register_workload, set_workload
from raftstore import errors
from raftstore.ops import Op as RecordOp

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 120  # a hard stop for a run that should take ~25 s
CHECK_TIMEOUT_S = 60
INTERRUPT_GRACE_S = 30  # a run interrupted by Ctrl-C has this long to clean up


# -- real runs ----------------------------------------------------------------------------------


def netns_list() -> set[str]:
    if shutil.which("ip") is None:
        return set()
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
    )
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (a run's directory)."""
    found = []
    needle = os.fsencode(text)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in arguments and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class Done:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def jepsen_like(*argv: str, timeout_s: float, env: Mapping[str, str] | None = None) -> Done:
    """The command as a subprocess; killed by its pid if it outlives `timeout_s`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "jepsen_like.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # Ctrl-C first: the run then stops its nodes and removes its namespace; then kill.
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        raise
    return Done(process.pid, process.returncode, stdout, stderr)


def run_directory(store: Path) -> Path:
    (directory,) = [path for path in store.glob("*/*") if path.is_dir() and path.name != "latest"]
    return directory


def recheck(directory: Path, model: str) -> dict[str, Any]:
    """`jepsen-like check history.jsonl --model M --json`, as a user would run it."""
    done = jepsen_like(
        "check", str(directory / "history.jsonl"), "--model", model, "--json",
        timeout_s=CHECK_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode in (0, 1, 2), done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def assert_clean(store: Path, done: Done, namespaces_before: set[str]) -> None:
    """No process of the run is left, nor a namespace it made (named after its pid; other
    programs may make and remove namespaces meanwhile)."""
    assert processes_mentioning(str(store)) == []
    new = netns_list() - namespaces_before
    assert {name for name in new if name.startswith(f"{netns.NAME_PREFIX}{done.pid}-")} == set()


def valid_run(store: Path, *argv: str, timeout_s: float = RUN_TIMEOUT_S) -> tuple[Path, History]:
    """`jepsen-like test ARGV --store STORE`, which must end valid and leave nothing behind:
    its run directory and its history."""
    before = netns_list()
    done = jepsen_like("test", *argv, "--store", str(store), timeout_s=timeout_s)
    assert_clean(store, done, before)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("valid: ")
    directory = run_directory(store)
    return directory, loads_json((directory / "history.jsonl").read_text(encoding="utf-8"))


def last_read_after_heal(history: History) -> Operation:
    """The last successful read invoked after the nemesis healed everything."""
    heal = next(op.index for op in history.nemesis_ops if op.f == "heal")
    final_reads = [
        operation
        for operation in history.operations
        if operation.f == "read" and operation.type == "ok" and operation.call > heal
    ]
    assert final_reads, "no final read after the heal"
    return final_reads[-1]


def test_a_register_run_under_kill_is_valid_and_leaves_its_files(tmp_path: Path) -> None:
    directory, history = valid_run(
        tmp_path / "store",
        "--workload", "register", "--nemesis", "kill", "--nodes", "3",
        "--concurrency", "4", "--time-limit", "12", "--rate", "100", "--seed", "7",
        "--nemesis-interval", "1.5,3",
    )  # fmt: skip
    assert directory.parent.name == "register-kill"
    for name in ("history.jsonl", "results.json", "report.html"):
        assert (directory / name).stat().st_size > 0, name
    faults = [op.f for op in history.nemesis_ops]
    assert "start-kill" in faults and "stop-kill" in faults and faults[-1] == "heal"
    assert any(operation.type == "ok" for operation in history.operations)
    assert {operation.f for operation in history.operations} == {"read", "write", "cas"}
    assert_jepsen_fields(history)
    results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
    assert results["verdict"] == "valid" and results["exit_status"] == 0
    assert results["seed"] == 7 and "--seed 7" in results["command"]
    assert results["counts"]["ok"] > 0 and results["counts"]["faults"] >= 1
    page = (directory / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and ">valid<" in page
    again = recheck(directory, "cas-register")
    assert again["valid"] is True
    assert again["checker"] == results["checker"]["details"]["cas-register"]["checker"]


def partition_run(store: Path, workload: str, seed: int) -> tuple[Done, bool]:
    """A short 3-node run under partition; whether namespaces were available. Without them
    the run must be refused in one line and leave nothing."""
    before = netns_list()
    available, reason = netns.available()
    done = jepsen_like(
        "test", "--workload", workload, "--nemesis", "partition", "--nodes", "3",
        "--concurrency", "4", "--time-limit", "10", "--rate", "100", "--seed", str(seed),
        "--nemesis-interval", "1.5,3", "--store", str(store),
        timeout_s=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert_clean(store, done, before)
    if not available:
        assert done.returncode == 2
        assert done.stderr.strip() == f"jepsen-like test: {reason}"
        assert not store.exists()
    return done, available


def test_a_register_run_under_partition_is_valid_or_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done, available = partition_run(store, "register", 13)
    if not available:
        return
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("valid: ")
    directory = run_directory(store)
    history = loads_json((directory / "history.jsonl").read_text(encoding="utf-8"))
    assert "start-partition" in [op.f for op in history.nemesis_ops]
    assert {op.type for op in history.operations} >= {"ok"}
    again = recheck(directory, "cas-register")
    assert again["valid"] is True


def test_a_set_run_under_partition_is_valid_or_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done, available = partition_run(store, "set", 11)
    if not available:
        return
    assert done.returncode == 0, done.stdout + done.stderr
    directory = run_directory(store)
    history = loads_json((directory / "history.jsonl").read_text(encoding="utf-8"))
    assert "start-partition" in [op.f for op in history.nemesis_ops]
    assert_jepsen_fields(history)
    final_read = last_read_after_heal(history)
    acknowledged = {
        operation.invoke.value
        for operation in history.operations
        if operation.f == "add" and operation.type == "ok"
    }
    assert acknowledged and acknowledged <= set(final_read.value)
    results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
    assert results["namespace"] is not None and results["namespace"] not in netns_list()
    again = recheck(directory, "set")
    assert again["valid"] is True and results["valid"] is True


def test_partition_is_refused_in_one_line_without_namespaces(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = jepsen_like(
        "test", "--nemesis", "kill,partition", "--store", str(store),
        timeout_s=CHECK_TIMEOUT_S, env={netns.DISABLE_VARIABLE: "off"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "jepsen-like test: partition needs root and nftables: turned off by JEPSEN_LIKE_NETNS=off\n"
    )
    assert done.stdout == "" and not store.exists()


def assert_jepsen_fields(history: History) -> None:
    """Jepsen's contract: indexes in order, times non-decreasing, one open op per process,
    a retired process never invokes again."""
    open_ops: dict[Any, Op] = {}
    retired: set[Any] = set()
    last_time = -1
    for position, op in enumerate(history.ops):
        assert op.index == position
        assert op.time_ns is not None and op.time_ns >= last_time
        last_time = op.time_ns
        if op.is_nemesis:
            assert op.type == "info"
            continue
        assert isinstance(op.process, int) and op.process not in retired
        if op.type == "invoke":
            assert op.process not in open_ops
            open_ops[op.process] = op
            continue
        invoke = open_ops.pop(op.process)
        assert (op.f, op.key) == (invoke.f, invoke.key)
        if op.type == "info":
            retired.add(op.process)
        if op.type == "fail" and op.error is not None:
            assert "in doubt" not in op.error and "TimeoutError" not in op.error


# -- fake databases -----------------------------------------------------------------------------


class FakeStore:
    """Records of an in-memory database, shared by its clients: each call is atomic.

    `stale_every` > 0: reads are served from a snapshot refreshed every that many writes
    (a broken database). `lose_every` > 0: every that many creates is acknowledged and
    dropped. `in_doubt_every` > 0: every that many writes answers an in-doubt timeout, and
    is applied or not at random (a correct database with a flaky network)."""

    def __init__(self, *, stale_every: int = 0, lose_every: int = 0, in_doubt_every: int = 0):
        self.lock = threading.Lock()
        self.records: dict[tuple[Any, ...], tuple[int, dict[str, Any]]] = {}
        self.snapshot: dict[tuple[Any, ...], tuple[int, dict[str, Any]]] = {}
        self.stale_every = stale_every
        self.lose_every = lose_every
        self.in_doubt_every = in_doubt_every
        self.writes = 0
        self.creates = 0
        self.rng = random.Random(3)

    def read(self, key: tuple[Any, ...]) -> tuple[int, dict[str, Any]] | None:
        source = self.snapshot if self.stale_every else self.records
        return source.get(key)

    def write(self, key: tuple[Any, ...], bins: Mapping[str, Any]) -> None:
        """Apply a write (the lock is held); may raise an in-doubt timeout."""
        self.writes += 1
        doubtful = self.in_doubt_every and self.writes % self.in_doubt_every == 0
        if not doubtful or self.rng.random() < 0.5:
            generation = self.records.get(key, (0, {}))[0]
            self.records[key] = (generation + 1, dict(bins))
        if self.stale_every and self.writes % self.stale_every == 0:
            self.snapshot = dict(self.records)
        if doubtful:
            raise errors.TimeoutError("fake timeout", in_doubt=True)


class FakeDatabase:
    """One client of a `FakeStore`: the `Database` slice of the SDK."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def get(
        self, key: object, policy: Mapping[str, Any] | None = None
    ) -> tuple[Any, dict[str, int], dict[str, Any]]:
        assert isinstance(key, tuple)
        with self.store.lock:
            found = self.store.read(key)
        if found is None:
            raise errors.RecordNotFound()
        return key, {"gen": found[0], "ttl": -1}, dict(found[1])

    def put(
        self,
        key: object,
        bins: Mapping[str, Any],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        assert isinstance(key, tuple)
        with self.store.lock:
            if (policy or {}).get("exists") == client.POLICY_EXISTS_CREATE:
                if key in self.store.records:
                    raise errors.RecordExistsError()
                self.store.creates += 1
                if self.store.lose_every and self.store.creates % self.store.lose_every == 0:
                    return  # acknowledged, never stored
            self.store.write(key, bins)

    def operate(
        self,
        key: object,
        ops: Sequence[RecordOp],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[str, int], dict[str, Any]]:
        assert isinstance(key, tuple)
        with self.store.lock:
            generation = self.store.records.get(key, (0, {}))[0]
            if (policy or {}).get("gen") == client.POLICY_GEN_EQ:
                assert meta is not None
                if generation != meta["gen"]:
                    raise errors.RecordGenerationError()
            bins = dict(self.store.records.get(key, (0, {}))[1])
            for op in ops:
                assert op.bin is not None
                bins[op.bin] = op.args[0]
            self.store.write(key, bins)
            return key, {"gen": generation + 1, "ttl": -1}, {}

    def scan(
        self,
        namespace: str,
        set: str | None = None,
        partitions: Sequence[int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Iterator[tuple[Any, dict[str, int], dict[str, Any]]]:
        with self.store.lock:
            source = self.store.snapshot if self.store.stale_every else self.store.records
            found = [(k, g, b) for k, (g, b) in source.items() if k[:2] == (namespace, set)]
        for key, generation, bins in found:
            yield key, {"gen": generation, "ttl": -1}, dict(bins)

    def close(self) -> None:
        return None


def drive_fake(workload: Workload, store: FakeStore, *, seconds: float = 1.5) -> History:
    """The runner's main phase and final reads against a fake database; the history."""
    recorder = runner.Recorder()
    database: Database = FakeDatabase(store)
    workers = runner.Workers(
        workload, lambda rng: database, recorder, concurrency=3, rate=600.0, seed=5
    )
    nemesis = runner.NemesisThread(runner.NoFaults(), recorder, seed=5)
    outcome = runner.drive(workers, nemesis, seconds, lambda message: None)
    assert outcome.crash is None and outcome.stuck == []
    if workload.final_invocations:
        assert workers.final_reads(workload.final_invocations, 5.0) > 0
    recorder.close()
    return recorder.history()


def test_a_correct_fake_register_gives_a_valid_history() -> None:
    workload = register_workload(keys_active=3, ops_per_key=60)
    history = drive_fake(workload, FakeStore())
    assert_jepsen_fields(history)
    outcomes = {(operation.f, operation.type) for operation in history.operations}
    assert {("read", "ok"), ("write", "ok"), ("cas", "ok")} <= outcomes
    result = runner.check_history(history, workload, 30.0)
    assert result.valid is True, result.explanation


def test_in_doubt_writes_are_info_and_retire_their_process() -> None:
    workload = register_workload(keys_active=3, ops_per_key=60)
    history = drive_fake(workload, FakeStore(in_doubt_every=7))
    assert_jepsen_fields(history)
    infos = [operation for operation in history.operations if operation.type == "info"]
    assert infos and all(operation.f in ("write", "cas") for operation in infos)
    for info in infos:  # the worker comes back as process + concurrency
        later = [op.process for op in history.ops[info.ret or 0 :] if op.type == "invoke"]
        assert info.process not in later
    assert any(isinstance(p, int) and p >= 3 for p in {op.process for op in history.ops})
    assert runner.check_history(history, workload, 30.0).valid is True


def test_a_fake_register_with_stale_reads_is_caught() -> None:
    workload = register_workload(keys_active=3, ops_per_key=60)
    history = drive_fake(workload, FakeStore(stale_every=10))
    result = runner.check_history(history, workload, 30.0)
    assert result.valid is False
    assert result.details["cas-register"]["valid"] is False
    assert any("cannot be linearized" in line for line in result.explanation)


def test_a_fake_set_that_loses_acknowledged_adds_is_caught() -> None:
    good = set_workload(read_fraction=0.05)
    assert runner.check_history(drive_fake(good, FakeStore()), good, 30.0).valid is True
    bad = set_workload(read_fraction=0.05)
    result = runner.check_history(drive_fake(bad, FakeStore(lose_every=25)), bad, 30.0)
    assert result.valid is False
    assert result.details["set"]["details"]["lost_count"] > 0


def test_a_client_bug_crashes_the_run_and_stops_the_workers() -> None:
    class Broken(FakeDatabase):
        def put(self, *args: Any, **kwargs: Any) -> None:
            raise ValueError("a bug in the client")

    recorder = runner.Recorder()
    workload = register_workload(keys_active=3, ops_per_key=60)
    database = Broken(FakeStore())
    workers = runner.Workers(
        workload, lambda rng: database, recorder, concurrency=3, rate=600.0, seed=5
    )
    nemesis = runner.NemesisThread(runner.NoFaults(), recorder, seed=5)
    outcome = runner.drive(workers, nemesis, 10.0, lambda message: None)
    assert outcome.crash is not None and "ValueError: a bug in the client" in outcome.crash
    assert recorder.elapsed_s() < 5.0 and not workers.running()
    recorder.close()
    crashed = [op for op in recorder.history().operations if op.completion is None]
    assert crashed and crashed[0].type == "info"  # its invoke stays open: indeterminate


def test_a_fake_history_is_what_jepsen_like_check_reads(tmp_path: Path) -> None:
    workload = register_workload(keys_active=3, ops_per_key=60)
    history = drive_fake(workload, FakeStore(stale_every=10), seconds=1.0)
    outcome = runner.RunOutcome(
        config=runner.RunConfig(workload="register", seed=5),
        model=workload.model,
        directory=tmp_path,
        history=history,
        result=runner.check_history(history, workload, 30.0),
        crash=None,
        crash_traceback=None,
        duration_s=1.0,
        started_at="now",
    )
    document = write_store(outcome)
    assert document["verdict"] == "invalid" and document["anomalies"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "cannot be linearized" in page
    again = recheck(tmp_path, "cas-register")
    assert again["valid"] is False
    assert again["summary"] == document["checker"]["details"]["cas-register"]["summary"]


# -- pure parts ---------------------------------------------------------------------------------


def test_register_values_are_unique_per_key_and_keys_rotate() -> None:
    generator = RegisterGenerator(keys_active=2, ops_per_key=10)
    rng = random.Random(1)
    written: dict[Any, list[Any]] = {}
    per_key: dict[Any, int] = {}
    for _ in range(200):
        invocation = generator.next(rng)
        per_key[invocation.key] = per_key.get(invocation.key, 0) + 1
        if invocation.f == "write":
            written.setdefault(invocation.key, []).append(invocation.value)
        elif invocation.f == "cas":
            written.setdefault(invocation.key, []).append(invocation.value[1])
        generator.update(invocation, "ok", None if invocation.f == "read" else 1)
    assert max(per_key.values()) <= 10 and generator.keys_used >= 20
    for values in written.values():
        assert len(values) == len(set(values))


def test_a_cas_expects_the_last_value_known() -> None:
    generator = RegisterGenerator(keys_active=1, ops_per_key=100)
    generator.update(Invocation("write", 41, 0), "ok", 41)
    rng = random.Random(2)
    cases = [inv for inv in (generator.next(rng) for _ in range(30)) if inv.f == "cas"]
    assert cases and cases[0].value[0] == 41


def test_set_adds_are_unique() -> None:
    generator = SetGenerator(read_fraction=0.0)
    rng = random.Random(1)
    assert [generator.next(rng).value for _ in range(5)] == [0, 1, 2, 3, 4]


def test_pacing_gives_the_rate_and_does_not_burst() -> None:
    rng = random.Random(4)
    pacer = Pacer(rate=100.0, concurrency=10, start_s=0.0)
    times = [pacer.following(rng, 0.0) for _ in range(1000)]
    assert 90 <= len(times) / times[-1] * 10 <= 110  # 10 workers, each at 10 per second
    late = pacer.following(rng, times[-1] + 50.0)
    assert late >= times[-1] + 50.0 - 1.0


def test_run_directories_are_new_and_latest_points_at_the_last(tmp_path: Path) -> None:
    first = runner.make_run_directory(tmp_path, "register-kill", now=0.0)
    second = runner.make_run_directory(tmp_path, "register-kill", now=0.0)
    assert first != second and second.name == f"{first.name}-1"
    assert (tmp_path / "register-kill" / "latest").resolve() == second.resolve()


def test_options_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="--nodes"):
        runner.RunConfig(nodes=0).validate()
    with pytest.raises(ValueError, match="nemesis 'flood'"):
        runner.RunConfig(nemesis="flood").validate()
    with pytest.raises(ValueError, match="workload 'queue'"):
        runner.RunConfig(workload="queue").validate()
    assert runner.nemesis_names("all") == ["kill", "pause", "partition"]
    assert runner.RunConfig(time_limit_s=12).interval_s() == (1.5, 3.0)
    assert runner.RunConfig(time_limit_s=600).interval_s() == (5.0, 10.0)


def test_fault_windows_pair_starts_with_stops_or_the_heal() -> None:
    def nemesis(index: int, seconds: float, f: str) -> Op:
        return Op(index, int(seconds * 1e9), "nemesis", "info", f, {})

    history = History(
        (
            nemesis(0, 1.0, "start-kill"),
            nemesis(1, 2.0, "stop-kill"),
            nemesis(2, 3.0, "start-pause"),
            nemesis(3, 5.0, "heal"),
        )
    )
    assert list(nemesis_windows(history)) == [("kill", 1.0, 2.0), ("pause", 3.0, 5.0)]
