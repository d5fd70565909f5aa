"""Storage engine figures: apply rate by batch size, index RAM per record, reopen time.

    python benchmarks/bench_engine.py [--records 1000000] [--seconds 3]

Prints a table, then one JSON object of the figures as the last line. Targets (issue 2):
100,000 puts/s at batch 256; at most 64 bytes of index RAM per record; reopen of a store of
1,000,000 records under 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import structlog

from raftstore import keys
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.commands import Command, RecordRequest
from raftstore.config import NamespaceConfig
from raftstore.engine import Engine

NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000
VALUE = "v" * 100


class Writer:
    """One client issuing single-bin 100-byte puts to fresh keys."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seq = 0
        self.position = engine.applied_index

    def batch(self, size: int) -> list[Command]:
        commands: list[Command] = []
        for _ in range(size):
            self.seq += 1
            commands.append(
                RecordRequest(
                    client_id=1,
                    request_seq=self.seq,
                    acked_seq=self.seq - 1,
                    now_ms=NOW_MS,
                    digest=keys.calc_digest("bench", "s", self.seq),
                    set_name="s",
                    ops=(op.write("v", VALUE),),
                )
            )
        return commands

    def apply(self, commands: list[Command]) -> None:
        self.position += 1
        results = self.engine.apply(self.position, commands)
        assert results is not None and all(r.ok for r in results)


def apply_rate(path: Path, batch_size: int, seconds: float, durable: bool) -> float:
    engine = Engine(path, NamespaceConfig("bench", commit_to_device=durable))
    writer = Writer(engine)
    applied = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        commands = writer.batch(batch_size)
        writer.apply(commands)
        applied += batch_size
    elapsed = time.perf_counter() - started
    engine.close()
    return applied / elapsed


def fill(path: Path, records: int) -> float:
    engine = Engine(path, NamespaceConfig("bench"))
    writer = Writer(engine)
    started = time.perf_counter()
    while writer.seq < records:
        writer.apply(writer.batch(min(256, records - writer.seq)))
    engine.store.sync()
    engine.close()
    return time.perf_counter() - started


def reopen(path: Path) -> tuple[float, float, int]:
    """Time a reopen; then reopen again under tracemalloc (which slows allocation several
    times over, so it must not be on while timing) to measure what the engine keeps."""
    started = time.perf_counter()
    engine = Engine(path, NamespaceConfig("bench"))
    elapsed = time.perf_counter() - started
    engine.close()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = Engine(path, NamespaceConfig("bench"))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    entries = len(engine.index)
    engine.close()
    return elapsed, (after - before) / entries, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    root = Path(tempfile.mkdtemp(prefix="raftstore-bench-"))
    figures: dict[str, float | int] = {}
    rows = []
    try:
        for durable in (False, True):
            for batch_size in (1, 16, 256):
                path = root / f"rate-{batch_size}-{int(durable)}"
                rate = apply_rate(path, batch_size, args.seconds, durable)
                shutil.rmtree(path)
                mode = "fsync" if durable else "nosync"
                figures[f"puts_per_s_batch_{batch_size}_{mode}"] = round(rate)
                rows.append((f"puts/s, batch {batch_size}, {mode}", f"{rate:,.0f}"))
        fill_s = fill(root / "big", args.records)
        reopen_s, bytes_per_record, entries = reopen(root / "big")
        size = sum(f.stat().st_size for f in (root / "big").iterdir())
        figures |= {
            "records": entries,
            "fill_s": round(fill_s, 2),
            "reopen_s": round(reopen_s, 2),
            "index_bytes_per_record": round(bytes_per_record, 1),
            "store_bytes_per_record": round(size / entries, 1),
        }
        rows += [
            (f"fill {entries:,} records (batch 256, nosync)", f"{fill_s:.1f} s"),
            (f"reopen {entries:,} records", f"{reopen_s:.2f} s"),
            ("index RAM per record (tracemalloc)", f"{bytes_per_record:.1f} B"),
            ("store file bytes per record", f"{size / entries:.0f} B"),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    print(f"{'figure':<{width}}  value   (pid {os.getpid()}, {args.seconds:g} s per rate)")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
