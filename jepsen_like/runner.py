"""The runner of `jepsen-like test`: a fresh cluster under faults, a history, a verdict.

Theory of operation. A run goes through phases, each bounded in time:

1. Setup. Refuse at once (`Refused`, one line) what cannot run here: a partition nemesis
   without a network namespace of our own. Make the run's directory
   `store/<test>/<YYYYmmddTHHMMSS>/`. When namespaces are available, create one, enter it
   in this (the main) thread, so that every thread started afterwards is inside too, and
   start a fresh cluster there; else start it on 127.0.0.1. Then the workload's own
   setup, if it has one (bank: the accounts), retried with fresh clients until it
   succeeds, within `SETUP_TIMEOUT_S` (else the run crashes: nothing could be tested).
2. Main phase (`time_limit_s`). `concurrency` worker threads, each a Jepsen process, invoke
   the workload's operations at about `rate` per second in all; a nemesis thread runs the
   seeded fault schedule (`nemesis.Combined`). Each worker has its own SDK client. After an
   `info` outcome the worker's process is retired: it continues under the id
   `process + concurrency`, with a fresh client (a fresh partition map), as Jepsen does.
3. Heal. Stop every fault, heal the network, resume paused nodes, restart any node that is
   down, wait until the cluster is stable.
4. Final reads (workloads that have them, e.g. set): each of a few processes reads until
   one read is `ok`, under a deadline.
5. Teardown, also on Ctrl-C, SIGTERM and errors: stop the cluster by pid, leave and delete
   the namespace (with `close_at_exit` as the last resort), close the history: completions
   that arrive later are dropped, and their invokes count as `info`.
6. Check the history with the workload's checker and the stats checker; write
   history.jsonl, results.json and report.html (see `report`).

History rules (Jepsen's contract): records are appended under one lock, each stamped with
ns since the start of the run from one monotonic clock, so `index` order is real-time
order; an invoke is recorded before the request is sent and its completion after the
answer. Nemesis events are recorded by the nemesis thread as they happen.

Exit statuses: 0 valid, 1 invalid, 2 unknown (the checker ran out of budget, or nothing
could be tested: a refused nemesis, like an argparse usage error), 3 a crashed or
interrupted run (the cluster would not start, a nemesis or a worker failed).
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

import client
from jepsen_like import cluster as cluster_module
from jepsen_like import nemesis as nemesis_module
from jepsen_like import netns
from jepsen_like.check import check
from jepsen_like.cluster import Cluster, ClusterError
from jepsen_like.generator import (
    REGISTER_KEYS_ACTIVE_DEFAULT,
    REGISTER_OPS_PER_KEY_DEFAULT,
    Invocation,
    Pacer,
)
from jepsen_like.history import NEMESIS, History, Op, OpType, freeze
from jepsen_like.linearizable import Budget
from jepsen_like.netns import Namespace, NamespaceError
from jepsen_like.result import UNKNOWN, Result, compose, exit_status
from jepsen_like.stats import check_stats
from jepsen_like.workloads import Completion, Database, Workload, workload_named
from raftstore.errors import RaftstoreError

log = structlog.get_logger(__name__)

EXIT_CRASHED = 3
CLUSTER_STABLE_TIMEOUT_S = 60.0
WORKER_JOIN_GRACE_S = 30.0  # after the time limit: the longest SDK call, and some
NEMESIS_JOIN_S = 90.0  # a fault's stop may restart nodes (the launcher waits up to 30 s)
FINAL_READERS_MAX = 2
FINAL_READ_ATTEMPTS_MAX = 10
FINAL_READS_TIMEOUT_S = 60.0
SETUP_TIMEOUT_S = 60.0
CONNECT_BACKOFF_S = 0.2
PROGRESS_INTERVAL_S = 0.5
CHECK_TIME_LIMIT_S_DEFAULT = 300.0
NODES_MAX = min(cluster_module.NODES_MAX, netns.MEMBERS_MAX)
CONCURRENCY_MAX = 1000
RATE_MAX = 100_000.0
TIME_LIMIT_S_MAX = 24 * 3600.0
RUN_DIRECTORIES_PER_SECOND_MAX = 100
INVOKES_MAX = 5_000_000  # a history's bound: about 2 GB of records in memory

# The SDK's policies for the workers: a call gives up after a few seconds, so a worker never
# stalls for long (its outcome is then info, and the worker takes a fresh client).
REQUEST_POLICY: dict[str, Any] = {"total_timeout": 3000, "socket_timeout": 1000}
WRITE_POLICY: dict[str, Any] = {**REQUEST_POLICY, "max_retries": 2}
SCAN_POLICY: dict[str, Any] = {"total_timeout": 10000, "socket_timeout": 3000}
CONNECT_TIMEOUT_MS = 1000


class Refused(Exception):
    """This run cannot be made here (one line saying why); nothing was started."""


class SetupFailed(Exception):
    """The workload's setup did not succeed in time (one line saying why)."""


@dataclass(frozen=True)
class RunConfig:
    workload: str = "register"
    nemesis: str = "none"
    nodes: int = 5
    concurrency: int = 10
    time_limit_s: float = 60.0
    rate: float = 200.0
    seed: int = 0
    store: Path = Path("store")
    nemesis_interval_s: tuple[float, float] | None = None  # None: from the time limit
    check_time_limit_s: float = CHECK_TIME_LIMIT_S_DEFAULT
    keys_active: int = REGISTER_KEYS_ACTIVE_DEFAULT
    ops_per_key: int = REGISTER_OPS_PER_KEY_DEFAULT
    keep_data: bool = False
    command_line: tuple[str, ...] = ()

    @property
    def test_name(self) -> str:
        return f"{self.workload}-{self.nemesis.replace(',', '+')}"

    def interval_s(self) -> tuple[float, float]:
        """The nemesis's quiet and fault intervals: given, or Jepsen's 5-10 s scaled down
        for short runs so that a 12 s run still sees faults."""
        if self.nemesis_interval_s is not None:
            return self.nemesis_interval_s
        low = min(5.0, max(0.5, self.time_limit_s / 8))
        return low, 2 * low

    def validate(self) -> None:
        """ValueError naming the first option out of range."""
        if not 1 <= self.nodes <= NODES_MAX:
            raise ValueError(f"--nodes must be in 1..{NODES_MAX}, not {self.nodes}")
        if not 1 <= self.concurrency <= CONCURRENCY_MAX:
            raise ValueError(f"--concurrency must be in 1..{CONCURRENCY_MAX}")
        if not 0 < self.time_limit_s <= TIME_LIMIT_S_MAX:
            raise ValueError(f"--time-limit must be in (0, {TIME_LIMIT_S_MAX:.0f}] seconds")
        if not 0 < self.rate <= RATE_MAX:
            raise ValueError(f"--rate must be in (0, {RATE_MAX:.0f}] operations per second")
        if self.check_time_limit_s <= 0:
            raise ValueError("--check-time-limit must be > 0")
        low, high = self.interval_s()
        if not 0 < low <= high:
            raise ValueError(f"--nemesis-interval {low},{high}: need 0 < low <= high")
        workload_named(self.workload, keys_active=self.keys_active, ops_per_key=self.ops_per_key)
        nemesis_names(self.nemesis)


def nemesis_names(spec: str) -> list[str]:
    """The nemeses a `--nemesis` spec names (`all` expanded); ValueError for unknown ones."""
    names: list[str] = []
    for part in (word.strip() for word in spec.split(",")):
        if part not in nemesis_module.NAMES:
            raise ValueError(f"nemesis {part!r} is not one of {', '.join(nemesis_module.NAMES)}")
        names += ["kill", "pause", "partition"] if part == "all" else [part]
    return [name for name in dict.fromkeys(names) if name != "none"]


# -- the history ------------------------------------------------------------------------------


class Recorder:
    """The history as it happens: records appended under one lock (see the module rules)."""

    def __init__(
        self, clock_ns: Callable[[], int] = time.monotonic_ns, invokes_max: int = INVOKES_MAX
    ) -> None:
        self._clock_ns = clock_ns
        self.invokes_max = invokes_max
        self.start_ns = clock_ns()
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._closed = False
        self.counts: dict[str, int] = {"invoke": 0, "ok": 0, "fail": 0, "info": 0}
        self.faults = 0
        self.last_nemesis = ""

    def restart_clock(self) -> None:
        """Time 0 of the history is now: the start of the main phase (nothing recorded yet)."""
        with self._lock:
            assert not self._ops, "the clock of a history already begun"
            self.start_ns = self._clock_ns()

    def elapsed_s(self) -> float:
        return (self._clock_ns() - self.start_ns) / 1e9

    def _append(
        self,
        process: int | str,
        kind: OpType,
        f: str,
        value: Any,
        *,
        key: Any = None,
        error: str | None = None,
    ) -> bool:
        with self._lock:
            if self._closed or (kind == "invoke" and self.counts["invoke"] >= self.invokes_max):
                return False
            index = len(self._ops)
            time_ns = self._clock_ns() - self.start_ns
            self._ops.append(Op(index, time_ns, process, kind, f, freeze(value), key, error))
            if process != NEMESIS:
                self.counts[kind] += 1
        return True

    def invoke(self, process: int, invocation: Invocation) -> bool:
        """Record an invoke; False when the history is closed or full (do not invoke then).
        Completions and nemesis events are always taken until the history is closed: each
        completion answers an invoke taken, and faults are bounded by their schedule."""
        return self._append(process, "invoke", invocation.f, invocation.value, key=invocation.key)

    def complete(self, process: int, invocation: Invocation, completion: Completion) -> None:
        self._append(
            process,
            completion.type,
            invocation.f,
            completion.value,
            key=invocation.key,
            error=completion.error,
        )

    def nemesis(self, event: nemesis_module.Event) -> None:
        f = str(event.get("f", ""))
        if f.startswith("start-"):
            self.faults += 1
        self.last_nemesis = f
        self._append(NEMESIS, "info", f, event.get("value"))

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def history(self) -> History:
        with self._lock:
            return History(tuple(self._ops), "jepsen-like test")


# -- workers ----------------------------------------------------------------------------------

OpenDatabase = Callable[[random.Random], Database]


class Workers:
    """`concurrency` worker threads, each a Jepsen process (see the module rules)."""

    def __init__(
        self,
        workload: Workload,
        open_database: OpenDatabase,
        recorder: Recorder,
        *,
        concurrency: int,
        rate: float,
        seed: int,
    ) -> None:
        self.workload = workload
        self.open_database = open_database
        self.recorder = recorder
        self.concurrency = concurrency
        self.rate = rate
        self.seed = seed
        self.processes = list(range(concurrency))
        self.stop = threading.Event()
        self.crash: str | None = None
        self.threads: list[threading.Thread] = []

    def start(self, deadline: float) -> None:
        """Start the workers; each stops invoking at the monotonic time `deadline`."""
        for number in range(self.concurrency):
            thread = threading.Thread(
                target=self._work, args=(number, deadline), name=f"worker-{number}", daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def join(self, timeout_s: float) -> list[str]:
        """Wait for the workers, at most `timeout_s` in all; the names of those still running."""
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in self.threads if thread.is_alive()]

    def _work(self, number: int, deadline: float) -> None:
        rng = random.Random(f"{self.seed}/worker/{number}")
        pacer = Pacer(self.rate, self.concurrency, time.monotonic())
        database: Database | None = None
        try:
            while not self.stop.is_set():
                at = pacer.following(rng, time.monotonic())
                if at >= deadline or self.stop.wait(max(0.0, at - time.monotonic())):
                    break
                if database is None:
                    database = self._connect(rng, deadline)
                    if database is None:
                        continue
                invocation = self.workload.generator.next(rng)
                completion = self.perform(number, invocation, database)
                if completion is None:
                    break
                if completion.type == "info":
                    _close(database)
                    database = None
        except Exception as exc:  # our own bug, or the fake's: the run crashes
            self.crash = f"worker {number}: {type(exc).__name__}: {exc}"
            log.exception("worker crashed", worker=number)
            self.stop.set()
        finally:
            if database is not None:
                _close(database)

    def _connect(self, rng: random.Random, deadline: float) -> Database | None:
        """A fresh client; None (after a short pause) when no node answers now."""
        try:
            return self.open_database(rng)
        except (RaftstoreError, OSError) as exc:
            log.debug("connect failed", error=str(exc))
            pause = min(CONNECT_BACKOFF_S, max(0.0, deadline - time.monotonic()))
            self.stop.wait(pause)
            return None

    def perform(self, number: int, invocation: Invocation, database: Database) -> Completion | None:
        """Invoke one operation as worker `number`'s process and record it; None when the
        history is closed. An info outcome retires the process."""
        process = self.processes[number]
        if not self.recorder.invoke(process, invocation):
            return None
        completion = self.workload.invoke(database, invocation)
        self.recorder.complete(process, invocation, completion)
        self.workload.generator.update(invocation, completion.type, completion.value)
        if completion.type == "info":
            self.processes[number] = process + self.concurrency
        return completion

    def set_up(self, timeout_s: float) -> None:
        """The workload's setup, each attempt with a fresh client, until one succeeds;
        `SetupFailed` after `timeout_s`. Nothing is recorded in the history."""
        setup = self.workload.setup
        if setup is None:
            return
        deadline = time.monotonic() + timeout_s
        rng = random.Random(f"{self.seed}/setup")
        last = "no node answered"
        while time.monotonic() < deadline:
            database = self._connect(rng, deadline)
            if database is None:
                continue
            try:
                setup(database)
                return
            except (RaftstoreError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.debug("setup failed", error=last)
            finally:
                _close(database)
            self.stop.wait(min(CONNECT_BACKOFF_S, max(0.0, deadline - time.monotonic())))
        raise SetupFailed(f"{self.workload.name} setup failed for {timeout_s:g} s: {last}")

    def final_reads(self, invocations: Sequence[Invocation], timeout_s: float) -> int:
        """Each of a few processes performs each final invocation until it is ok; the
        number of ok ones."""
        deadline = time.monotonic() + timeout_s
        done = 0
        rng = random.Random(f"{self.seed}/final")
        for number in range(min(self.concurrency, FINAL_READERS_MAX)):
            for invocation in invocations:
                for _ in range(FINAL_READ_ATTEMPTS_MAX):
                    if time.monotonic() > deadline:
                        return done
                    database = self._connect(rng, deadline)
                    if database is None:
                        continue
                    try:
                        completion = self.perform(number, invocation, database)
                    finally:
                        _close(database)
                    if completion is None:
                        return done
                    if completion.type == "ok":
                        done += 1
                        break
                    self.stop.wait(CONNECT_BACKOFF_S)
        return done


def _close(database: Database) -> None:
    with contextlib.suppress(RaftstoreError, OSError):
        database.close()


# -- the nemesis ------------------------------------------------------------------------------


class Schedule(Protocol):
    """What the runner needs of `nemesis.Combined`."""

    @property
    def active(self) -> bool: ...

    def run(
        self,
        rng: random.Random,
        record: Callable[[nemesis_module.Event], None],
        stop: threading.Event | None = None,
    ) -> int: ...

    def stop_all(self) -> list[nemesis_module.Event]: ...


class NemesisThread:
    """The fault schedule in a thread of its own; a failure is kept for the verdict."""

    def __init__(self, schedule: Schedule, recorder: Recorder, seed: int) -> None:
        self.schedule = schedule
        self.recorder = recorder
        self.rng = random.Random(f"{seed}/nemesis")
        self.stop = threading.Event()
        self.crash: str | None = None
        self.thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout_s: float) -> bool:
        """Stop the schedule (every fault is stopped on its way out); False if it hangs."""
        self.stop.set()
        self.thread.join(timeout_s)
        return not self.thread.is_alive()

    def _run(self) -> None:
        try:
            self.schedule.run(self.rng, self.recorder.nemesis, self.stop)
        except Exception as exc:  # a fault that could not be injected or stopped
            self.crash = f"nemesis: {type(exc).__name__}: {exc}"
            log.exception("nemesis failed")
            self.recorder.nemesis(nemesis_module.event("nemesis-error", {"error": self.crash}))


class NoFaults:
    """The schedule of `--nemesis none`, and of tests without a cluster."""

    active = False

    def run(
        self,
        rng: random.Random,
        record: Callable[[nemesis_module.Event], None],
        stop: threading.Event | None = None,
    ) -> int:
        return 0

    def stop_all(self) -> list[nemesis_module.Event]:
        return []


# -- one drive: the main phase, with or without a cluster ---------------------------------------


@dataclass
class DriveOutcome:
    crash: str | None = None
    stuck: list[str] = field(default_factory=list)  # threads still running at the end


def drive(
    workers: Workers,
    nemesis: NemesisThread,
    time_limit_s: float,
    progress: Callable[[str], None],
) -> DriveOutcome:
    """The main phase: workers and the nemesis for `time_limit_s`; stops early on a crash."""
    recorder = workers.recorder
    recorder.restart_clock()
    deadline = time.monotonic() + time_limit_s
    workers.start(deadline)
    nemesis.start()
    try:
        while workers.running() and workers.crash is None and nemesis.crash is None:
            _show(progress, recorder, time_limit_s)
            workers.stop.wait(PROGRESS_INTERVAL_S)
    finally:
        workers.stop.set()
        stuck = workers.join(WORKER_JOIN_GRACE_S)
        if not nemesis.join(NEMESIS_JOIN_S):
            stuck.append("nemesis")
    return DriveOutcome(workers.crash or nemesis.crash, stuck)


def _show(progress: Callable[[str], None], recorder: Recorder, time_limit_s: float) -> None:
    counts = recorder.counts
    done = counts["ok"] + counts["fail"] + counts["info"]
    progress(
        f"{recorder.elapsed_s():5.1f}/{time_limit_s:.0f} s  {done} ops "
        f"(ok {counts['ok']}, fail {counts['fail']}, info {counts['info']})  "
        f"faults {recorder.faults}  {recorder.last_nemesis}"
    )


# -- the whole run --------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    config: RunConfig
    model: str  # the checker's model, as `jepsen-like check --model` names it
    directory: Path
    history: History
    result: Result | None
    crash: str | None
    crash_traceback: str | None
    duration_s: float
    started_at: str
    notes: list[str] = field(default_factory=list)
    namespace: str | None = None

    @property
    def verdict(self) -> str:
        if self.crash is not None:
            return "crashed"
        if self.result is None:
            return "unknown"
        if self.result.valid is True:
            return "valid"
        return "invalid" if self.result.valid is False else "unknown"

    @property
    def exit_status(self) -> int:
        if self.crash is not None:
            return EXIT_CRASHED
        return exit_status(self.result.valid if self.result is not None else UNKNOWN)


def sdk_config(hosts: Sequence[tuple[str, int]], rng: random.Random) -> dict[str, Any]:
    """A worker's client config: the seeds in a random order, so bootstraps spread out."""
    seeds = list(hosts)
    rng.shuffle(seeds)
    return {
        "hosts": seeds,
        "timeout_ms": CONNECT_TIMEOUT_MS,
        "policies": {
            "read": REQUEST_POLICY,
            "write": WRITE_POLICY,
            "operate": WRITE_POLICY,
            "scan": SCAN_POLICY,
        },
    }


def make_run_directory(store: Path, test_name: str, now: float | None = None) -> Path:
    """store/<test>/<YYYYmmddTHHMMSS>[-N]/, new; `store/<test>/latest` points at it."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    base = store / test_name
    base.mkdir(parents=True, exist_ok=True)
    for attempt in range(RUN_DIRECTORIES_PER_SECOND_MAX):
        directory = base / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        latest = base / "latest"
        with contextlib.suppress(OSError):
            if latest.is_symlink():
                latest.unlink()
            latest.symlink_to(directory.name)
        return directory
    raise OSError(f"too many runs of {test_name} within one second in {base}")


def check_history(history: History, workload: Workload, time_limit_s: float) -> Result:
    """The workload's checker and the stats checker, composed as Jepsen does."""
    options = replace(workload.check_options, budget=Budget(None, time_limit_s))
    parts = [check(history, workload.model, options), check_stats(history)]
    return compose("jepsen-like test", parts)


class Run:
    """One `jepsen-like test` run; `execute()` does every phase (see the module rules)."""

    def __init__(
        self,
        config: RunConfig,
        progress: Callable[[str], None],
        phase: Callable[[str], None] | None = None,
    ) -> None:
        """`progress` gets frequent status lines; `phase` (default `progress`) each change of
        phase."""
        config.validate()
        self.config = config
        self.progress = progress
        self.phase = phase or progress
        self.workload = workload_named(
            config.workload, keys_active=config.keys_active, ops_per_key=config.ops_per_key
        )
        names = nemesis_names(config.nemesis)
        self.use_namespace, reason = netns.available()
        if "partition" in names and not self.use_namespace:
            raise Refused(reason)
        self.recorder = Recorder()
        self.notes: list[str] = []
        self.crash: str | None = None  # a worker's or the nemesis's failure
        self.namespace_name: str | None = None

    def execute(self) -> RunOutcome:
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        directory = make_run_directory(self.config.store, self.config.test_name)
        started = time.monotonic()
        crash: str | None = None
        crash_traceback: str | None = None
        try:
            self._phases(directory)
        except KeyboardInterrupt:
            crash = "interrupted (Ctrl-C)"
        except SystemExit as exc:  # SIGTERM or SIGHUP, through netns.close_at_exit
            crash = f"stopped by a signal (exit status {exc.code})"
        except (
            ClusterError,
            NamespaceError,
            nemesis_module.NemesisUnavailable,
            SetupFailed,
        ) as exc:
            crash = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            crash = f"{type(exc).__name__}: {exc}"
            crash_traceback = traceback.format_exc()
            log.exception("run crashed")
        finally:
            self.recorder.close()
        crash = crash or self.crash
        if not self.config.keep_data:
            _remove_node_data(directory / "cluster")
        history = self.recorder.history()
        result: Result | None = None
        if history.operations:
            self.phase(f"checking {len(history.operations)} operations")
            result = check_history(history, self.workload, self.config.check_time_limit_s)
        return RunOutcome(
            config=self.config,
            model=self.workload.model,
            directory=directory,
            history=history,
            result=result,
            crash=crash,
            crash_traceback=crash_traceback,
            duration_s=time.monotonic() - started,
            started_at=started_at,
            notes=self.notes,
            namespace=self.namespace_name,
        )

    def _phases(self, directory: Path) -> None:
        config = self.config
        with contextlib.ExitStack() as stack:
            namespace: Namespace | None = None
            if self.use_namespace:
                netns.remove_stale()
                namespace = Namespace(config.nodes)
                self.namespace_name = namespace.name
                _close_at_exit(stack, namespace.close)
                namespace.open()
                stack.enter_context(namespace.entered())
            cluster = Cluster(directory / "cluster", config.nodes, namespace=namespace)
            _close_at_exit(stack, cluster.stop)
            where = f" in namespace {namespace.name}" if namespace is not None else ""
            self.phase(f"starting {config.nodes} nodes{where}")
            cluster.start()
            cluster.wait_stable(CLUSTER_STABLE_TIMEOUT_S)
            schedule = nemesis_module.build(
                config.nemesis,
                cluster,
                namespace,
                interval_s=config.interval_s(),
                duration_s=config.time_limit_s,
            )
            workers = Workers(
                self.workload,
                lambda rng: client.connect(sdk_config(cluster.hosts, rng)),
                self.recorder,
                concurrency=config.concurrency,
                rate=config.rate,
                seed=config.seed,
            )
            if self.workload.setup is not None:
                self.phase(f"setting up the {self.workload.name} workload")
                workers.set_up(SETUP_TIMEOUT_S)
            nemesis = NemesisThread(schedule, self.recorder, config.seed)
            outcome = drive(workers, nemesis, config.time_limit_s, self.progress)
            if outcome.stuck:
                self.notes.append(f"still running after the main phase: {outcome.stuck}")
            self.crash = outcome.crash
            self.phase("healing")
            heal(cluster, namespace, schedule, self.recorder, self.notes)
            if self.crash is None and self.workload.final_invocations:
                self.phase("final reads")
                done = workers.final_reads(self.workload.final_invocations, FINAL_READS_TIMEOUT_S)
                if done == 0:
                    self.notes.append("no final read succeeded")
            self.recorder.close()
            self.phase("stopping the cluster")


def heal(
    cluster: Cluster,
    namespace: Namespace | None,
    schedule: Schedule,
    recorder: Recorder,
    notes: list[str],
) -> None:
    """End every fault: the schedule's own stops, then the network, paused and dead nodes;
    wait for a stable cluster. Problems become notes (the final reads may still work)."""
    errors: dict[str, str] = {}
    try:
        for ended in schedule.stop_all():
            recorder.nemesis(ended)
    except (ClusterError, NamespaceError) as exc:
        errors["schedule"] = str(exc)
    if namespace is not None:
        try:
            namespace.heal()
        except NamespaceError as exc:
            errors["network"] = str(exc)
    resumed, restarted = [], []
    for node_id in sorted(cluster.paused):
        try:
            cluster.resume(node_id)
            resumed.append(node_id)
        except ClusterError as exc:
            errors[node_id] = str(exc)
    for node_id in cluster.node_ids:
        if cluster.alive(node_id):
            continue
        try:
            cluster.restart(node_id)
            restarted.append(node_id)
        except ClusterError as exc:
            errors[node_id] = str(exc)
    value: dict[str, Any] = {"resumed": resumed, "restarted": restarted}
    try:
        cluster.wait_stable(CLUSTER_STABLE_TIMEOUT_S)
    except ClusterError as exc:
        errors["stable"] = str(exc)
    if errors:
        value["errors"] = errors
        notes.extend(f"heal: {what}: {why}" for what, why in errors.items())
    recorder.nemesis(nemesis_module.event("heal", value))


def _close_at_exit(stack: contextlib.ExitStack, close: Callable[[], None]) -> None:
    """`close` at the end of `stack`, and at interpreter exit or SIGTERM if it never ends."""
    netns.close_at_exit(close)
    stack.callback(atexit.unregister, close)
    stack.callback(close)


def _remove_node_data(directory: Path) -> None:
    """The nodes' stores (kept: their logs and configs), once the nodes are stopped."""
    for store in sorted(directory.glob(f"n*/{cluster_module.NAMESPACE}")):
        if store.is_dir():
            shutil.rmtree(store, ignore_errors=True)
