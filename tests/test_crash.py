"""SIGKILL a process applying batches at random moments: every batch is all or nothing.

After each kill the store is reopened and checked: the applied position A says exactly which
batches are present (all of 1..A, none above), the counter equals A, and the RAM index
rebuilt from the device equals the device.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from raftstore import codec, keys
from raftstore.engine import Engine
from raftstore.kv import Table
from tests.crash_child import KEYS_PER_BATCH, NAMESPACE

ROOT = Path(__file__).resolve().parent.parent
KILLS = 8
PROGRESS_DEADLINE_S = 60.0


def run_until_position(path: Path, target: int, delay_s: float) -> None:
    """Start the child, wait (with a deadline) until it reports `target`, then SIGKILL it
    `delay_s` later: the delay is the fault schedule that lands the kill inside a batch."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_child", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + PROGRESS_DEADLINE_S
        assert child.stdout is not None
        for line in child.stdout:
            if int(line) >= target:
                time.sleep(delay_s)
                break
            assert time.monotonic() < deadline, f"child too slow to reach {target}"
        else:
            raise AssertionError(f"child exited with {child.wait()} before {target}")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()


def check_store(path: Path) -> int:
    engine = Engine(path, NAMESPACE)
    try:
        applied = engine.applied_index
        count = engine.get(keys.calc_digest("crash", "s", "count"))
        assert count is not None and count.bins["count"] == applied
        for position in range(1, applied + 2):
            present = [
                engine.get(keys.calc_digest("crash", "s", f"{position}:{i}"))
                for i in range(KEYS_PER_BATCH)
            ]
            if position <= applied:
                assert all(r is not None and r.bins["value"] == position for r in present)
            else:
                assert all(r is None for r in present), f"batch {position} partly applied"
        with engine.store.begin() as txn:
            device = sorted(
                (digest, codec.decode_record(raw).meta) for digest, raw in txn.scan(Table.RECORDS)
            )
        assert sorted(engine.index.items()) == device
        assert len(device) == applied * KEYS_PER_BATCH + 1
        return applied
    finally:
        engine.close()


def test_sigkill_at_random_moments_never_tears_a_batch(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "store"
    applied = 0
    for kill in range(KILLS):
        target = applied + rng.randint(1, 25)
        run_until_position(path, target, rng.uniform(0.0, 0.05))
        now_applied = check_store(path)
        assert now_applied >= target, f"seed {seed}, kill {kill}: lost acknowledged batches"
        applied = now_applied
