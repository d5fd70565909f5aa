"""One partition group's data on one node: the device store, the RAM index, the state machine.

This is the I/O shell around the pure `StateMachine`. Order of effects for a batch:
1. open an LMDB write transaction; 2. the state machine applies the batch through it;
3. commit (fsync first when the namespace is `commit-to-device`); 4. publish the batch's
index changes to RAM; 5. return the results. A crash anywhere before 3 leaves nothing of the
batch; after 3 the batch and its log position are on the device together, and the index is
rebuilt from the device at the next open.

Batches at or below the applied position are skipped (`apply` returns None): Raft replays
entries after a restart, and they must not be applied twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from raftstore import codec, operations
from raftstore.commands import Command, Result, failure
from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.index import IndexStats, PrimaryIndex
from raftstore.kv import Table
from raftstore.ops import Op, is_read_only
from raftstore.policy import DEFAULT_WRITE_POLICY
from raftstore.record import Record, RecordMeta
from raftstore.state_machine import CommandCrashed, StateMachine, load_sets, read_applied_index
from raftstore.store import LmdbStore

log = structlog.get_logger(__name__)


class Engine:
    def __init__(
        self, path: Path, namespace: NamespaceConfig, *, durable: bool | None = None
    ) -> None:
        self.path = path
        self.namespace = namespace
        self.store = LmdbStore(
            path, durable=namespace.commit_to_device if durable is None else durable
        )
        self.index = PrimaryIndex()
        self.machine = StateMachine(namespace, self.index)
        # Publishing to the index and iterating it must not interleave (scans, stats).
        self._index_lock = threading.Lock()
        self.corrupt_digests: list[bytes] = []
        self.applied_index = 0
        self._open()

    def _open(self) -> None:
        with self.store.begin() as txn:
            self.applied_index = read_applied_index(txn)
            for set_name, set_id in load_sets(txn).items():
                self.index.register_set(set_name, set_id)
            self.index.load(self._scan_metas(txn.scan(Table.RECORDS)))
        log.info(
            "engine_opened",
            path=str(self.path),
            applied_index=self.applied_index,
            entries=len(self.index),
            corrupt=len(self.corrupt_digests),
        )

    def _scan_metas(
        self, rows: Iterator[tuple[bytes, bytes]]
    ) -> Iterator[tuple[bytes, RecordMeta]]:
        for digest, raw in rows:
            try:
                yield digest, codec.decode_record(raw).meta
            except RaftstoreError as exc:
                # Reported, never served: reads of it answer RECORD_CORRUPT.
                self.corrupt_digests.append(digest)
                log.error(
                    "record_corrupt", path=str(self.path), digest=digest.hex(), reason=exc.msg
                )

    # -- writes ------------------------------------------------------------------------------

    def apply(self, log_index: int, commands: Sequence[Command]) -> list[Result] | None:
        """Apply a batch at `log_index`; None if that position is already applied."""
        if log_index <= self.applied_index:
            return None
        crashed: frozenset[int] = frozenset()
        while True:
            try:
                with self.store.begin(write=True) as txn:
                    applied = self.machine.apply_batch(txn, log_index, commands, crashed)
            except CommandCrashed as exc:
                log.error(
                    "command_crashed",
                    log_index=log_index,
                    position=exc.position,
                    command=repr(commands[exc.position])[:200],
                    cause=repr(exc.cause),
                )
                crashed = crashed | {exc.position}
                continue
            break
        with self._index_lock:
            self.machine.publish(applied)
        self.applied_index = log_index
        return applied.results

    # -- reads -------------------------------------------------------------------------------

    def read(self, digest: bytes, ops: Sequence[Op], now_ms: int) -> Result:
        """Apply read-only `ops` to the committed record (no log, no session)."""
        try:
            if not ops or not is_read_only(list(ops)):
                raise error(ResultCode.PARAMETER_ERROR, "a read takes only read operations")
            record = self.get(digest)
            outcome = operations.operate(
                record,
                ops,
                DEFAULT_WRITE_POLICY,
                now_ms=now_ms,
                set_name="" if record is None else record.set_name,
                user_key=None,
                namespace=self.namespace,
            )
        except RaftstoreError as exc:
            return failure(exc.code, exc.msg)
        assert record is not None  # a read of an absent record raised RECORD_NOT_FOUND
        return Result(
            generation=record.generation,
            void_time=record.void_time,
            results=tuple(outcome.results),
            last_update_ms=record.last_update_ms,
        )

    def get(self, digest: bytes) -> Record | None:
        """The stored record (tombstones and expired records included); RECORD_CORRUPT raises."""
        with self.store.begin() as txn:
            raw = txn.get(Table.RECORDS, digest)
        return None if raw is None else codec.decode_record(raw)

    def metadata(self, digest: bytes) -> RecordMeta | None:
        return self.index.get(digest)

    def scan(
        self, partition_ids: Sequence[int] | None = None, set_name: str | None = None
    ) -> Iterator[tuple[bytes, Record]]:
        """Stored records (tombstones included) of some partitions and/or one set, by digest."""
        wanted = [None] if partition_ids is None else list(partition_ids)
        for partition_id in wanted:
            with self._index_lock:
                digests = sorted(
                    digest
                    for digest, meta in self.index.items(partition_id)
                    if set_name is None or meta.set_name == set_name
                )
            for digest in digests:
                record = self.get(digest)
                if record is not None:
                    yield digest, record

    def stats(self) -> IndexStats:
        with self._index_lock:
            return self.index.stats()

    def close(self) -> None:
        self.store.close()
