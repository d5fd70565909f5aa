"""One partition group's data on one node: the device store, the RAM index, the state machine.

This is the I/O shell around the pure `StateMachine`. Order of effects for a batch:
1. open an LMDB write transaction; 2. the state machine applies the batch through it;
3. commit (fsync first when the namespace is `commit-to-device`); 4. publish the batch's
index changes to RAM; 5. return the results. A crash anywhere before 3 leaves nothing of the
batch; after 3 the batch and its log position are on the device together, and the index is
rebuilt from the device at the next open.

Batches at or below the applied position are skipped (`apply` returns None): Raft replays
entries after a restart, and they must not be applied twice.

Reads (no log) each take one LMDB read transaction, so what one read returns is consistent:
`read` (a record under a transaction's write intent answers MRT_BLOCKED naming the
transaction; a read lock does not block), `locked_view` (a record and its intent together)
and `read_record` (what `read` answers for a record the caller chose, e.g. a roll-forward:
docs/transactions.md), and the transaction tables' views for the node: `txn_record`,
`txn_outcome`, `intents_past_deadline`, `forget_candidates`.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from raftstore import codec, operations, txn_participant
from raftstore.command_codec import LogCommand
from raftstore.commands import Result, failure
from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.index import IndexStats, PrimaryIndex
from raftstore.kv import Table
from raftstore.ops import Op, is_read_only
from raftstore.policy import DEFAULT_WRITE_POLICY
from raftstore.record import Record, RecordMeta
from raftstore.state_machine import CommandCrashed, StateMachine, load_sets, read_applied_index
from raftstore.store import LmdbStore
from raftstore.txn_commands import TxnState
from raftstore.txn_participant import (
    TXN_TABLES,
    Blocker,
    Intent,
    TxnRecord,
    blocked_result,
    decode_intent,
    read_needs_home,
)

log = structlog.get_logger(__name__)

# Enum members as module constants: cheaper on the read path (see state_machine.py).
_RECORDS, _INTENTS = Table.RECORDS, TXN_TABLES.intents


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
                yield digest, codec.decode_meta(raw)
            except RaftstoreError as exc:
                # Reported, never served: reads of it answer RECORD_CORRUPT.
                self.corrupt_digests.append(digest)
                log.error(
                    "record_corrupt", path=str(self.path), digest=digest.hex(), reason=exc.msg
                )

    # -- writes ------------------------------------------------------------------------------

    def apply(self, log_index: int, commands: Sequence[LogCommand]) -> list[Result] | None:
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
        """Apply read-only `ops` to the committed record (no log, no session). A record under
        a transaction's write intent answers MRT_BLOCKED naming the transaction
        (`txn_participant.blocker_of`): the node settles it with the home group and answers
        through `locked_view` and `read_record`. A read lock does not block a read."""
        try:
            _check_read_ops(ops)
            with self.store.begin() as txn:  # as `locked_view`, inline: every read runs it
                raw_intent = txn.get(_INTENTS, digest)
                raw = txn.get(_RECORDS, digest)
            if raw_intent is not None:
                intent = decode_intent(raw_intent)
                if read_needs_home(intent):
                    return blocked_result(intent)
            record = None if raw is None else codec.decode_record(raw)
        except RaftstoreError as exc:
            return failure(exc.code, exc.msg)
        return self._read(record, ops, now_ms)

    def read_record(self, record: Record | None, ops: Sequence[Op], now_ms: int) -> Result:
        """What `read` answers for read-only `ops` on `record` (None: absent): the same codes,
        RECORD_NOT_FOUND for an absent, deleted or expired record."""
        try:
            _check_read_ops(ops)
        except RaftstoreError as exc:
            return failure(exc.code, exc.msg)
        return self._read(record, ops, now_ms)

    def _read(self, record: Record | None, ops: Sequence[Op], now_ms: int) -> Result:
        try:
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

    def locked_view(self, digest: bytes) -> tuple[Intent | None, Record | None]:
        """The intent on the record (None: unlocked) and the stored record (as `get`), read in
        one read transaction; RECORD_CORRUPT raises."""
        with self.store.begin() as txn:
            raw_intent = txn.get(_INTENTS, digest)
            raw = txn.get(_RECORDS, digest)
        intent = None if raw_intent is None else decode_intent(raw_intent)
        return intent, None if raw is None else codec.decode_record(raw)

    # -- transaction tables (docs/transactions.md) ------------------------------------------------

    def txn_record(self, txn_id: int) -> TxnRecord | None:
        """The transaction record, if this is the home group and it has one."""
        with self.store.begin() as txn:
            return txn_participant.txn_record_of(txn, txn_id, tables=TXN_TABLES)

    def txn_outcome(self, txn_id: int) -> TxnState | None:
        """What this group knows of the transaction (`txn_participant.outcome_in_group`)."""
        with self.store.begin() as txn:
            return txn_participant.outcome_in_group(txn, txn_id, tables=TXN_TABLES)

    def intents_past_deadline(self, now_ms: int, limit: int) -> list[Blocker]:
        """Up to `limit` transactions holding intents here past their deadline: for the
        node's recovery sweep."""
        with self.store.begin() as txn:
            return txn_participant.intents_past_deadline(
                txn, now_ms, tables=TXN_TABLES, limit=limit
            )

    def forget_candidates(self, now_ms: int, limit: int) -> tuple[int, ...]:
        """Up to `limit` txn ids a `TxnForget` at `now_ms` would forget something of."""
        with self.store.begin() as txn:
            return txn_participant.forget_candidates(
                txn, now_ms, tables=TXN_TABLES, namespace=self.namespace, limit=limit
            )

    def metadata(self, digest: bytes) -> RecordMeta | None:
        return self.index.get(digest)

    def partition_metas(self, partition_id: int | None) -> list[tuple[bytes, RecordMeta]]:
        """A copy of the index entries of one partition (or all), taken between batches."""
        with self._index_lock:
            return list(self.index.items(partition_id))

    def scan(
        self,
        partition_ids: Sequence[int] | None = None,
        set_name: str | None = None,
        *,
        after: bytes | None = None,
    ) -> Iterator[tuple[bytes, Record]]:
        """Stored records (tombstones included) of some partitions and/or one set, in digest
        order within each partition; `after` resumes the first partition past that digest."""
        wanted: list[int | None] = [None] if partition_ids is None else list(partition_ids)
        for partition_id in wanted:
            digests = sorted(
                digest
                for digest, meta in self.partition_metas(partition_id)
                if (set_name is None or meta.set_name == set_name)
                and (after is None or digest > after)
            )
            after = None
            for digest in digests:
                record = self.get(digest)
                if record is not None:
                    yield digest, record

    def stats(self) -> IndexStats:
        with self._index_lock:
            return self.index.stats()

    # -- snapshots (raftstore.raft_log) --------------------------------------------------------

    def copy_to(self, path: Path) -> int:
        """Copy the store into the directory `path` (LMDB's compacting copy) and return the
        applied position the copy holds, both read in one read transaction."""
        path.mkdir(parents=True, exist_ok=True)
        with self.store.begin() as txn:
            applied = read_applied_index(txn)
            self.store.env.copy(str(path), compact=True, txn=txn.txn)
        return applied

    def replace_with(self, snapshot_dir: Path) -> None:
        """Make the LMDB copy in `snapshot_dir` (moved, not copied) this engine's store: close
        the store, swap the directories, reopen, rebuild the index from the new store.

        A crash between the two renames leaves no directory at `path`; the next open creates an
        empty store (applied position 0) and Raft installs the snapshot again. Readers must not
        use the engine meanwhile (a snapshot is installed on a follower or at start, where no
        SC read is served)."""
        durable = self.store.durable
        incoming = self.path.with_name(self.path.name + ".incoming")
        retired = self.path.with_name(self.path.name + ".retired")
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
        shutil.move(snapshot_dir, incoming)  # a copy only if on another file system
        self.store.close()
        if self.path.exists():
            os.replace(self.path, retired)
        os.replace(incoming, self.path)
        if durable:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        shutil.rmtree(retired, ignore_errors=True)
        self.store = LmdbStore(self.path, durable=durable)
        with self._index_lock:
            self.index = PrimaryIndex()
            self.machine = StateMachine(self.namespace, self.index)
        self.corrupt_digests = []
        self._open()

    def close(self) -> None:
        self.store.close()


def _check_read_ops(ops: Sequence[Op]) -> None:
    if not ops or not is_read_only(list(ops)):
        raise error(ResultCode.PARAMETER_ERROR, "a read takes only read operations")
