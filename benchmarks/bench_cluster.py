"""A local 3-node cluster under 64 concurrent requests, beside raw pysyncobj as the ceiling.

    python benchmarks/bench_cluster.py [--seconds 5] [--concurrency 64] [--processes 2]

Phases, each `--seconds` long after a one-second warm-up: writes (put of one 100-byte bin to
fresh keys), SESSION reads and LINEARIZE reads of the written keys. The load generator speaks
the wire protocol directly (asyncio, requests pipelined on one connection per node, routed by
the partition map) from `--processes` processes, so the SDK's threads are not what is
measured. Then raw pysyncobj (benchmarks/bench_raw_pysyncobj.py: 3 processes, one 100-byte
command per call, the same concurrency, password on) runs on the same machine.

Targets (issue 3): writes/s at least 3 times raw pysyncobj's commands/s; linearizable reads at
least as fast as writes. Prints a table, then one JSON object of the figures as the last line.
"per entry" is the batching: write commands per log entry, linearizable reads per barrier
(from the nodes' `status`, over the phase and its warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raftstore import keys, ops  # noqa: E402
from raftstore.wire import (  # noqa: E402
    FrameReader,
    InfoMsg,
    ReadMode,
    RecordMsg,
    decode_response,
    encode_request,
)
from server import launcher  # noqa: E402

VALUE = "v" * 100
WARMUP_S = 1.0
NOT_LEADER = 901
BALANCE_WAIT_S = 30.0


class Connection:
    """One pipelined connection: requests matched to answers by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        frames = FrameReader()
        while data := await self.reader.read(1 << 16):
            for body in frames.feed(data):
                request_id, response = decode_response(body)
                self.waiting.pop(request_id).set_result(response)

    async def call(self, message: Any) -> Any:
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = future
        self.writer.write(encode_request(self.next_id, message))
        return await future


async def load(
    hosts: list[tuple[str, int]], phase: str, seconds: float, concurrency: int, worker: int
) -> dict[str, Any]:
    connections = {}
    for host, port in hosts:
        reader, writer = await asyncio.open_connection(host, port)
        connections[(host, port)] = Connection(reader, writer)
    first = next(iter(connections.values()))
    layout = (await first.call(InfoMsg("partition-map"))).value
    nodes = {node: tuple(address) for node, address in layout["nodes"].items()}
    namespace = layout["namespaces"]["test"]
    groups, leaders = namespace["partition_groups"], namespace["leaders"]
    client_id = random.getrandbits(62) + 1
    seq = 0
    latencies: list[int] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + WARMUP_S
    stop_at = measure_from + seconds

    async def one(slot: int) -> None:
        nonlocal seq, errors
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            key = f"{worker}-{slot}-{n}" if phase == "write" else f"{worker}-{slot}-{n % 200 + 1}"
            digest = keys.calc_digest("test", "bench", key)
            leader = leaders[keys.partition_id(digest) % groups]
            seq += 1
            if phase == "write":
                message = RecordMsg(
                    "test",
                    digest,
                    "bench",
                    (ops.write("v", VALUE),),
                    client_id=client_id,
                    request_seq=seq,
                    acked_seq=seq,
                    timeout_ms=10_000,
                )
            else:
                mode = ReadMode.LINEARIZE if phase == "linearize" else ReadMode.SESSION
                message = RecordMsg(
                    "test", digest, "bench", (ops.read(),), read_mode=mode, timeout_ms=10_000
                )
            began = time.perf_counter_ns()
            response = await connections[nodes[leader]].call(message)
            while response.code == NOT_LEADER and response.partition_map:
                # Leadership moved: adopt the map the node sent and ask the new leader.
                leaders[:] = response.partition_map["namespaces"]["test"]["leaders"]
                leader = leaders[keys.partition_id(digest) % groups]
                response = await connections[nodes[leader]].call(message)
            if response.code != 0 and not (phase != "write" and response.code == 2):
                errors += 1
            if began / 1e9 >= measure_from:
                latencies.append(time.perf_counter_ns() - began)

    await asyncio.gather(*(one(slot) for slot in range(concurrency)))
    for connection in connections.values():
        connection.writer.close()
    return {"latencies": latencies, "errors": errors}


def worker_main(args: tuple[list[tuple[str, int]], str, float, int, int]) -> dict[str, Any]:
    return asyncio.run(load(*args))


def percentile(sorted_ns: list[int], fraction: float) -> float:
    index = min(len(sorted_ns) - 1, int(fraction * len(sorted_ns)))
    return sorted_ns[index] / 1e6


def run_phase(
    hosts: list[tuple[str, int]], phase: str, seconds: float, concurrency: int, processes: int
) -> dict[str, float]:
    per_process = max(1, concurrency // processes)
    with multiprocessing.Pool(processes) as pool:
        outputs = pool.map(
            worker_main, [(hosts, phase, seconds, per_process, w) for w in range(processes)]
        )
    latencies = sorted(ns for out in outputs for ns in out["latencies"])
    return {
        "ops_per_s": round(len(latencies) / seconds),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "p999_ms": round(percentile(latencies, 0.999), 2),
        "errors": sum(out["errors"] for out in outputs),
    }


def proposed(hosts: list[tuple[str, int]]) -> tuple[int, int]:
    """Log entries and requests (commands, or reads on bare barriers) the leaders proposed."""
    entries = requests = 0
    for host in hosts:
        for group in launcher.info(*host, "status", timeout_s=3.0)["groups"].values():
            entries += group.get("entries_proposed", 0)
            requests += group.get("commands_proposed", 0) + group.get("barriers_proposed", 0)
    return entries, requests


def wait_balanced(hosts: list[tuple[str, int]]) -> None:
    """Measure only once every group is led by its preferred replica (the nodes move
    leadership there in the first seconds after a start)."""
    deadline = time.monotonic() + BALANCE_WAIT_S
    while time.monotonic() < deadline:
        layout = launcher.info(*hosts[0], "partition-map", timeout_s=3.0)
        namespace = layout["namespaces"]["test"]
        if namespace["leaders"] == [replicas[0] for replicas in namespace["replicas"]]:
            return
        time.sleep(0.5)  # polling the cluster's layout under a deadline


def raw_pysyncobj(seconds: float, concurrency: int) -> dict[str, Any]:
    output = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_raw_pysyncobj.py"),
            "--seconds",
            str(seconds),
            "--concurrency",
            str(concurrency),
            "--passwords",
            "on",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    figures: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from cluster_harness import free_base_port  # noqa: PLC0415

    data = Path(tempfile.mkdtemp(prefix="raftstore-bench-cluster-"))
    nodes = launcher.start(data, 3, free_base_port(3), quiet=True)
    hosts = [(launcher.HOST, node.port) for node in nodes]
    figures: dict[str, Any] = {"concurrency": args.concurrency}
    try:
        wait_balanced(hosts)
        for phase in ("write", "session", "linearize"):
            entries_before, _ = proposed(hosts)
            figures[phase] = run_phase(hosts, phase, args.seconds, args.concurrency, args.processes)
            entries = proposed(hosts)[0] - entries_before
            # Requests per log entry over the phase and its warm-up (reads: per barrier).
            seconds = args.seconds + WARMUP_S
            figures[phase]["per_entry"] = (
                round(figures[phase]["ops_per_s"] * seconds / entries, 1) if entries else None
            )
    finally:
        launcher.stop(data)
    raw = raw_pysyncobj(args.seconds, args.concurrency)
    figures["raw_pysyncobj"] = raw
    # The ceiling: the better of pysyncobj's two replication modes at this concurrency.
    raw_rate = round(max(run["commands_per_s"] for run in raw["runs"]))
    figures["raw_pysyncobj_cmd_per_s"] = raw_rate
    print(
        f"{'phase':<12}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}{'errors':>8}"
        f"{'per entry':>11}"
    )
    for phase in ("write", "session", "linearize"):
        row = figures[phase]
        print(
            f"{phase:<12}{row['ops_per_s']:>10,}{row['p50_ms']:>10}{row['p99_ms']:>10}"
            f"{row['p999_ms']:>10}{row['errors']:>8}{row['per_entry'] or '-':>11}"
        )
    print(f"raw pysyncobj ({args.concurrency} in flight, password on): {raw_rate} commands/s")
    if raw_rate:
        print(f"writes / raw pysyncobj: {figures['write']['ops_per_s'] / raw_rate:.2f}x")
    print(f"(pid {os.getpid()}, {args.seconds:g} s per phase)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
