"""Child process for the crash test: applies batches until it is killed.

Batch at log position b writes keys "b:0" .. "b:{K-1}" with the value b and increments the
counter record "count" once, so a reader can tell whether a batch is wholly present.
It prints each applied position on stdout, which the parent uses to choose when to kill.
"""

from __future__ import annotations

import sys
from pathlib import Path

from raftstore import keys, logs
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.commands import Command, RecordRequest
from raftstore.config import NamespaceConfig
from raftstore.engine import Engine

NAMESPACE = NamespaceConfig("crash", commit_to_device=True)
KEYS_PER_BATCH = 40
NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000


def batch_at(position: int) -> list[Command]:
    commands: list[Command] = [
        RecordRequest(
            client_id=1,
            request_seq=position * (KEYS_PER_BATCH + 1) + i,
            acked_seq=position * (KEYS_PER_BATCH + 1),
            now_ms=NOW_MS + position,
            digest=keys.calc_digest("crash", "s", f"{position}:{i}"),
            set_name="s",
            ops=(op.write("value", position), op.write("pad", "x" * 200)),
        )
        for i in range(KEYS_PER_BATCH)
    ]
    commands.append(
        RecordRequest(
            client_id=1,
            request_seq=position * (KEYS_PER_BATCH + 1) + KEYS_PER_BATCH,
            acked_seq=position * (KEYS_PER_BATCH + 1),
            now_ms=NOW_MS + position,
            digest=keys.calc_digest("crash", "s", "count"),
            set_name="s",
            ops=(op.increment("count", 1),),
        )
    )
    return commands


def main() -> None:
    logs.configure(json=True)
    engine = Engine(Path(sys.argv[1]), NAMESPACE)
    position = engine.applied_index
    while True:
        position += 1
        engine.apply(position, batch_at(position))
        sys.stdout.write(f"{position}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
