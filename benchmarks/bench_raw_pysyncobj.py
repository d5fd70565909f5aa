"""The ceiling raftstore builds on: plain pysyncobj, 3 node processes on 127.0.0.1.

Each node process runs a `SyncObj` with one `@replicated` counter method taking a 100-byte
command, its journal on disk (mmap, no fsync: pysyncobj has none) and compaction pushed out of
the window. The leader's process keeps `concurrency` commands in flight (async callbacks; each
answer submits the next) for a warm-up second plus `--seconds`, and reports commands/s and
latency (submit -> SUCCESS callback) over the measured window. One run per combination of
appendEntriesUseBatch, password (Fernet on every connection) and concurrency.

    python benchmarks/bench_raw_pysyncobj.py [--seconds 5] [--concurrency 1,64,1024]
        [--passwords on,off]

Prints a table, then as its last line one JSON object with every figure. Every process it
starts is stopped by pid before the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, replicated

COMMAND = b"c" * 100
WARMUP_S = 1.0
LEADER_WAIT_S = 20.0
NODES = 3


# -- node process ---------------------------------------------------------------------------


class Counter(SyncObj):  # type: ignore[misc]
    def __init__(self, self_address: str, others: list[str], conf: Any) -> None:
        super().__init__(self_address, others, conf=conf)
        self.count = 0

    @replicated  # type: ignore[untyped-decorator]
    def inc(self, command: bytes) -> int:
        self.count += len(command) > 0
        return self.count


def node_main(args: argparse.Namespace) -> None:
    ports = [int(p) for p in args.ports.split(",")]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    me = addresses[args.node]
    workdir = Path(args.dir)
    conf = SyncObjConf(
        password=args.password or None,
        autoTick=True,
        appendEntriesUseBatch=args.batch == 1,
        journalFile=str(workdir / f"node{args.node}.journal"),
        fullDumpFile=str(workdir / f"node{args.node}.dump"),
        logCompactionMinEntries=10**9,  # keep compaction out of the measured window
        logCompactionMinTime=10**6,
        commandsQueueSize=100_000,
        bindAddress=me,
        dynamicMembershipChange=False,
    )
    obj = Counter(me, [a for a in addresses if a != me], conf)
    deadline = time.monotonic() + LEADER_WAIT_S
    while obj._getLeader() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if obj._isLeader():
        result = run_load(obj, args.seconds, args.concurrency)
        out = workdir / "result.json"
        out.with_suffix(".tmp").write_text(json.dumps(result))
        out.with_suffix(".tmp").rename(out)
    while True:  # the parent stops every node by pid
        time.sleep(1.0)


def run_load(obj: Any, seconds: float, concurrency: int) -> dict[str, Any]:
    lock = threading.Lock()
    finished = threading.Event()
    window_start = time.perf_counter() + WARMUP_S
    window_end = window_start + seconds
    latencies: list[float] = []
    failures: dict[int, int] = {}
    in_flight = [concurrency]

    def submit() -> None:
        sent = time.perf_counter()
        obj.inc(COMMAND, callback=lambda _res, err: answered(sent, err))

    def answered(sent: float, error: int) -> None:
        now = time.perf_counter()
        with lock:
            if window_start <= now <= window_end:
                if error == 0:
                    latencies.append(now - sent)
                else:
                    failures[error] = failures.get(error, 0) + 1
            if now >= window_end:
                in_flight[0] -= 1
                if in_flight[0] == 0:
                    finished.set()
                return
        submit()

    for _ in range(concurrency):
        submit()
    finished.wait(WARMUP_S + seconds + 30)
    latencies.sort()

    def percentile(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "commands_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(0.50), 2),
        "p99_ms": round(percentile(0.99), 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "commands": len(latencies),
        "failures": failures,
    }


# -- driver ---------------------------------------------------------------------------------


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


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, 15)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait(timeout=5)


def one_run(batch: bool, password: str, concurrency: int, seconds: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-raw-pysyncobj-"))
    ports = ",".join(str(p) for p in free_ports(NODES))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for node in range(NODES):
            command = [
                sys.executable,
                __file__,
                "--node",
                str(node),
                "--ports",
                ports,
                "--dir",
                str(workdir),
                "--batch",
                "1" if batch else "0",
                "--password",
                password,
                "--seconds",
                str(seconds),
                "--concurrency",
                str(concurrency),
            ]
            with open(workdir / f"node{node}.stderr", "wb") as stderr:
                procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr))
        result_file = workdir / "result.json"
        deadline = time.monotonic() + LEADER_WAIT_S + WARMUP_S + seconds + 60
        while not result_file.exists():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"no result; see {workdir}/node*.stderr")
            time.sleep(0.1)
        result: dict[str, Any] = json.loads(result_file.read_text())
    finally:
        stop(procs)
    shutil.rmtree(workdir, ignore_errors=True)
    result.update(batch=batch, password=bool(password), concurrency=concurrency)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--node", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--password", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,64,1024", help="in-flight commands, a list")
    parser.add_argument("--passwords", default="on,off", help="on, off or both")
    args = parser.parse_args()
    if args.node >= 0:
        args.concurrency = int(args.concurrency)
        node_main(args)
        return

    runs = []
    header = (
        f"{'batch':>5} {'password':>8} {'in flight':>9} {'cmd/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    )
    print(f"pysyncobj raw: {NODES} processes on 127.0.0.1, 100-byte commands, journal on disk")
    print(header)
    for password in args.passwords.split(","):
        for batch in (True, False):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                secret = "bench-secret" if password == "on" else ""
                run = one_run(batch, secret, concurrency, args.seconds)
                runs.append(run)
                print(
                    f"{batch!s:>5} {password:>8} {concurrency:>9} {run['commands_per_s']:>9.0f} "
                    f"{run['p50_ms']:>8.2f} {run['p99_ms']:>8.2f}",
                    flush=True,
                )
    print(
        json.dumps(
            {
                "bench": "raw_pysyncobj",
                "nodes": NODES,
                "command_bytes": len(COMMAND),
                "seconds": args.seconds,
                "cpus": os.cpu_count(),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
