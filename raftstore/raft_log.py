"""`ReplicatedLog` over pysyncobj: one Raft group on one node. The only module importing it.

Theory of operation
- One `_Replica` (a pysyncobj `SyncObj`) per group per node: its own port, poller and tick
  thread (`autoTick`). It has exactly one replicated method, taking the opaque entry bytes.
  pysyncobj increments `raftLastApplied` after the method returns, so inside it the index of
  the entry being applied is `raftLastApplied + 1`; `apply(index, entry)` runs there, on the
  tick thread, in log order, on every replica. Entries at or below the store's applied
  position are replayed after a restart: the engine skips them (`Engine.apply`).
- Proposals are taken on the leader only (a follower answers REJECTED at once; pysyncobj's
  forwarding is not used). pysyncobj's `(result, FAIL_REASON)` becomes one `Proposal`:
  SUCCESS -> APPLIED with what `apply` returned; QUEUE_FULL, MISSING_LEADER, DISCARDED,
  NOT_LEADER, REQUEST_DENIED -> REJECTED (the entry is not in the log); LEADER_CHANGED,
  UNKNOWN_OUTCOME, an `apply` that raised, the proposal deadline and `close()` -> UNKNOWN.
- Snapshots use pysyncobj's custom serializer hooks. The dump file (`raft.dump`) holds the
  whole state: pysyncobj's raft data (two boundary entries, encoded with msgpack, no pickle)
  and a compacting LMDB copy taken in one read transaction, with a CRC-32 over everything.
  The serializer runs synchronously on the tick thread (pysyncobj renames the file when it
  returns): heartbeats pause for the length of the copy, see `RaftOptions`. The deserializer
  serves both a restart (our own dump) and a snapshot sent by the leader: when the local
  store's applied position is at least the dump's, the local store is kept; otherwise the
  dump's copy replaces it (`SnapshotHooks.replace_with`).
- Start: a store whose applied position is beyond the last index of the journal (and dump)
  lost log entries it had applied (the journal is not synced unless `durable`). Such a node
  must not take part as it is: its journal, dump and commit index are wiped (term and vote
  kept), so it rejoins empty and is sent the log or a snapshot; a single-node group cannot be
  repaired that way and refuses to start.
- Durability (`RaftOptions.durable`, the namespace's commit-to-device): stock pysyncobj never
  fsyncs. Here the journal is our `_Journal`; when durable, every append marks it dirty and
  it is flushed (msync + fdatasync) before any message leaves the node (a transport whose
  `send` syncs first: follower acks, vote grants, leader AppendEntries) and at the end of
  every tick (so a leader counts only synced entries of its own). Term and vote are written
  with fsync of the file and its directory before `setCurrentTerm` returns; the dump is
  fsynced, and the directory is fsynced before the log it replaces is cut. Not covered: a
  torn last journal record after a power loss during a sync (pysyncobj's journal has no
  checksums) and the store itself (the engine's own `durable` flag).

- Messages (cost: every log entry takes a few messages between every pair of replicas, each
  pickled, compressed, encrypted, sent, received, authenticated, decrypted and unpickled in
  Python): the transport (`_Transport`) sends them zlib-stored (level 0; any pysyncobj
  peer inflates them) and the cluster secret's Fernet tokens are made and opened by
  `_Fernet`, the same tokens with cipher contexts kept between them. A leader defers the
  commit notice pysyncobj sends after applying an entry by up to COMMIT_NOTICE_DELAY_S: under
  load the next entry carries the commit index, so an entry takes 4 messages instead of 8;
  followers learn a commit that late at most, the leader's answers are not delayed.

Rules
- Nothing raises into pysyncobj's tick thread from our code: `apply`, `on_done` and
  `on_role_changed` are wrapped; an exception there would make pysyncobj retry the same entry
  forever (or skip its accounting).
- `on_done` and `on_role_changed` run on the tick thread (or on the proposer's thread for an
  immediate answer): they must be quick and must not block on the log.
- A `PysyncobjLog` may be made on any thread: pysyncobj stops ticking once the thread that
  made the SyncObj ends, so the tick thread is re-tied to the main thread; it stops at
  `close()` or when the interpreter exits.

pysyncobj internals relied on (0.3.17 is pinned; each is exercised by tests/test_raft_log.py):
the module globals `pysyncobj.syncobj.createJournal` (our journal) and `getEncryptor` (our
Fernet), `FileJournal`'s meta storer (durable term and vote), `SyncObj`'s main-thread and
wake-up-pipe attributes (tick thread lifetime, the pipe its `destroy()` leaks), its
`__applyLogEntries`, `__newAppendEntriesTime`, `__raftState` and `_onTick` (the deferred
commit notice), `TcpConnection`'s write buffer and `__trySendBuffer` (the stored sends), its
clock `pysyncobj.monotonic`, `pysyncobj.pickle`'s protocol global (protocol 5), and
`_isLeader` / `_getLeader`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import itertools
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import msgpack
import pysyncobj.pickle
import structlog
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj import encryptor as pysyncobj_encryptor
from pysyncobj import syncobj as pysyncobj_syncobj
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import FileJournal, MetaStorer
from pysyncobj.monotonic import monotonic as pysyncobj_monotonic  # its clock: MONOTONIC_RAW
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import SyncObjException
from pysyncobj.transport import TCPTransport

from raftstore.replication import (
    ApplyFn,
    LogStatus,
    Outcome,
    Proposal,
    ProposalCallback,
    Role,
)

log = structlog.get_logger(__name__)

JOURNAL_FILE = "raft.journal"  # pysyncobj adds raft.journal.meta (term, vote, commit index)
DUMP_FILE = "raft.dump"  # pysyncobj adds raft.dump.tmp (ours) and raft.dump.1.tmp (received)
SNAPSHOT_WORK_DIR = "snapshot-work"
SNAPSHOT_INSTALL_DIR = "snapshot-install"

_DUMP_MAGIC = b"RAFTSTORE-DUMP\x00\x01"
_DUMP_FORMAT = 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_COPY_CHUNK_BYTES = 1 << 20
_DUMP_HEADER_BYTES_MAX = 1 << 20
_ENTRY_OVERHEAD_BYTES = 1024  # pysyncobj's pickled (method id, args) around an entry
_SWEEP_PERIOD_S = 0.1

_ROLES = {0: Role.FOLLOWER, 1: Role.CANDIDATE, 2: Role.LEADER}
_LEADER_STATE = 2
# A leader tells its followers the new commit index this long after applying an entry,
# unless an AppendEntries carries it before (`_Replica`).
COMMIT_NOTICE_DELAY_S = 0.005
_REJECTED_REASONS = {
    FAIL_REASON.QUEUE_FULL: "queue full",
    FAIL_REASON.MISSING_LEADER: "no leader",
    FAIL_REASON.DISCARDED: "discarded by a new leader",
    FAIL_REASON.NOT_LEADER: "not leader",
    FAIL_REASON.REQUEST_DENIED: "request denied",
}
_UNKNOWN_REASONS = {
    FAIL_REASON.LEADER_CHANGED: "leader changed",
    FAIL_REASON.UNKNOWN_OUTCOME: "unknown outcome",
}


class RaftLogError(Exception):
    """The log cannot start: no secret, its port taken, a store it cannot repair."""


class SnapshotHooks(Protocol):
    """What the log needs from the group's store to make and install snapshots (`Engine`).

    Called on the tick thread, never concurrently with `apply`."""

    @property
    def applied_index(self) -> int: ...

    def copy_to(self, path: Path) -> int:
        """A consistent copy of the store into directory `path`; its applied position."""

    def replace_with(self, snapshot_dir: Path) -> None:
        """Install the copy in `snapshot_dir` as the store and reopen."""


@dataclass(frozen=True, slots=True)
class RaftOptions:
    """Every pysyncobj option that matters, in our units; `SyncObjConf` gets them all.

    `append_entries_use_batch=False` (measured on 2 vCPUs, 3 replicas): batch mode ships
    entries once per `append_entries_period_s`, so a commit takes ~100 ms (raw pysyncobj p50
    102 ms; through this adapter 103 ms); without it 0.4-1.1 ms raw, 1.5 ms through this
    adapter (2.8 ms when `durable`). Batch mode only wins on throughput with ~1000 commands
    in flight (raw: ~8k/s at p50 ~125 ms); the group coalesces requests into one entry
    instead, so it never needs that many in flight.

    Compaction copies the store on the tick thread: ~2.7 ms per MB of store measured (61 ms
    for 100k records, 22 MB), so heartbeats pause past `raft_min_timeout_s` above ~300 MB.
    Installing a received dump also rebuilds the RAM index (0.6 s for 100k records).
    """

    durable: bool = False  # commit-to-device: fsync the journal before any message leaves
    append_entries_use_batch: bool = False
    append_entries_period_s: float = 0.1  # heartbeat period
    raft_min_timeout_s: float = 0.8  # election timeout range; > 3 heartbeats
    raft_max_timeout_s: float = 1.6
    connection_timeout_s: float = 3.5  # silence before a peer connection is dropped
    connection_retry_s: float = 1.0  # reconnect period (pysyncobj's 5 s slows rejoining)
    # A leader hearing from no majority for this long steps down (pysyncobj: 30 s). It keeps
    # `is_leader()` true meanwhile: a hint, never a proof.
    leader_fallback_timeout_s: float = 2.0
    commands_queue_max: int = 1024  # entries waiting for the tick thread; then QUEUE_FULL
    # Compaction copies the whole store on the tick thread: keep it rare.
    log_compaction_min_entries: int = 5000
    log_compaction_min_time_s: float = 3600.0
    snapshot_chunk_bytes: int = 1 << 16  # per message while shipping a dump
    # One AppendEntries carries up to this many bytes. A single entry at least this large
    # goes through pysyncobj's chunked path, which mislabels its last chunks for some sizes,
    # so `propose` refuses entries that would take it (`entry_bytes_max`).
    append_entries_bytes_max: int = 16 << 20
    proposal_timeout_s: float = 10.0  # no answer by then: UNKNOWN
    tick_period_s: float = 0.05  # poll timeout of the tick thread
    bind_retries_max: int = 10
    bind_retry_s: float = 0.5
    bind_address: str | None = None  # None: bind the node's own address, never 0.0.0.0

    def __post_init__(self) -> None:
        checks = [
            (self.append_entries_period_s > 0, "append_entries_period_s must be > 0"),
            (
                self.raft_min_timeout_s > 3 * self.append_entries_period_s,
                "raft_min_timeout_s must exceed 3 heartbeats",
            ),
            (self.raft_max_timeout_s > self.raft_min_timeout_s, "raft_max > raft_min"),
            (
                self.connection_timeout_s >= self.raft_max_timeout_s,
                "connection_timeout_s must be >= raft_max_timeout_s",
            ),
            (
                self.leader_fallback_timeout_s > self.append_entries_period_s,
                "leader_fallback_timeout_s must exceed append_entries_period_s",
            ),
            (self.commands_queue_max >= 1, "commands_queue_max must be >= 1"),
            (self.log_compaction_min_entries >= 2, "log_compaction_min_entries must be >= 2"),
            (self.log_compaction_min_time_s > 0, "log_compaction_min_time_s must be > 0"),
            (self.snapshot_chunk_bytes > 0, "snapshot_chunk_bytes must be > 0"),
            (
                self.append_entries_bytes_max > 2 * _ENTRY_OVERHEAD_BYTES,
                "append_entries_bytes_max too small",
            ),
            (self.proposal_timeout_s > 0, "proposal_timeout_s must be > 0"),
            (self.tick_period_s > 0, "tick_period_s must be > 0"),
            (self.bind_retries_max >= 1, "bind_retries_max must be >= 1 (0 retries forever)"),
            (self.bind_retry_s > 0, "bind_retry_s must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def entry_bytes_max(self) -> int:
        return self.append_entries_bytes_max - _ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class _ApplyFailed:
    """What the replicated method returns when `apply` raised (never raised to pysyncobj)."""

    reason: str


class PysyncobjLog:
    """One replica of one Raft group (see the module docstring).

    `addresses` maps every node id of the group, this one included, to its Raft
    "host:port" (the same mapping on every replica); node ids are what `leader()` answers
    and `transfer_leadership()` takes.
    """

    def __init__(
        self,
        node_id: str,
        *,
        addresses: Mapping[str, str],
        apply: ApplyFn,
        group_dir: Path,
        secret: str,
        snapshot: SnapshotHooks,
        options: RaftOptions | None = None,
        on_role_changed: Callable[[Role], None] | None = None,
    ) -> None:
        if not secret:
            raise RaftLogError("a secret is required: without one any peer gets pickle.loads")
        if node_id not in addresses:
            raise RaftLogError(f"node {node_id!r} is not among the group's addresses")
        if len(set(addresses.values())) != len(addresses):
            raise RaftLogError(f"two nodes share an address: {dict(addresses)}")
        self_address = addresses[node_id]
        self._node_id = node_id
        self._options = options or RaftOptions()
        self._apply = apply
        self._hooks = snapshot
        self._group_dir = group_dir
        self._on_role_changed = on_role_changed
        self._node_to_address = dict(addresses)
        self._address_to_node = {address: node for node, address in addresses.items()}
        self._pending: dict[int, tuple[ProposalCallback, float]] = {}
        self._pending_lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._tick_actions: list[Callable[[], None]] = []
        self._tick_thread_id: int | None = None
        self._next_sweep = 0.0
        self._closed = False
        self.apply_failures = 0  # committed entries this replica could not apply: alert
        self.snapshots_installed = 0  # dumps whose store replaced the local one
        self.log_loss_repaired = False  # started empty: the store was ahead of the journal

        group_dir.mkdir(parents=True, exist_ok=True)
        self._journal_path = str(group_dir / JOURNAL_FILE)
        self._dump_path = group_dir / DUMP_FILE
        self._repair_store_ahead_of_journal(peers_count=len(self._node_to_address) - 1)
        _use_our_fernet()
        _use_pickle_protocol_5()
        _register_journal(self._journal_path, durable=self._options.durable)
        try:
            self._replica = _Replica(
                self_address,
                [a for a in self._address_to_node if a != self_address],
                self._make_conf(self_address, secret),
                self._apply_entry,
                _SyncingTransport if self._options.durable else _Transport,
            )
        except BaseException:
            _unregister_journal(self._journal_path)
            raise
        try:
            self._replica.waitBinded()
        except SyncObjException:
            self._replica.destroy_synchronous()
            self._replica.close_wakeup_pipe()
            _unregister_journal(self._journal_path)
            raise RaftLogError(
                f"cannot bind {self._options.bind_address or self_address}"
            ) from None
        self._journal = _journals[self._journal_path]
        self._replica.addOnTickCallback(self._on_tick)
        log.info(
            "raft_log_started",
            node=node_id,
            address=self_address,
            group=sorted(self._node_to_address),
            group_dir=str(group_dir),
            durable=self._options.durable,
            batch=self._options.append_entries_use_batch,
        )

    def _make_conf(self, self_address: str, secret: str) -> Any:
        options = self._options
        return SyncObjConf(
            password=secret,  # Fernet on every connection: the transport unpickles its input
            autoTick=True,
            autoTickPeriod=options.tick_period_s,
            commandsQueueSize=options.commands_queue_max,
            raftMinTimeout=options.raft_min_timeout_s,
            raftMaxTimeout=options.raft_max_timeout_s,
            appendEntriesPeriod=options.append_entries_period_s,
            connectionTimeout=options.connection_timeout_s,
            connectionRetryTime=options.connection_retry_s,
            leaderFallbackTimeout=options.leader_fallback_timeout_s,
            appendEntriesUseBatch=options.append_entries_use_batch,
            appendEntriesBatchSizeBytes=options.append_entries_bytes_max,
            bindAddress=options.bind_address or self_address,
            preferredAddrType="ipv4",
            sendBufferSize=1 << 16,
            recvBufferSize=1 << 16,
            dnsCacheTime=600.0,
            dnsFailCacheTime=30.0,
            logCompactionMinEntries=options.log_compaction_min_entries,
            logCompactionMinTime=options.log_compaction_min_time_s,
            logCompactionSplit=False,
            logCompactionBatchSize=options.snapshot_chunk_bytes,
            commandsWaitLeader=False,  # fail fast (MISSING_LEADER, definite)
            fullDumpFile=str(self._dump_path),  # with journalFile, always both (notes 2.2)
            journalFile=self._journal_path,
            bindRetryTime=options.bind_retry_s,
            maxBindRetries=options.bind_retries_max,
            onReady=self._on_ready,
            onStateChanged=self._on_state_changed,
            dynamicMembershipChange=False,
            pollerType="auto",
            useFork=False,  # forced off by the custom serializer anyway
            serializer=self._serialize,
            deserializer=self._deserialize,
            serializeChecker=None,  # synchronous: the dump is complete when renamed
            onCodeVersionChanged=None,
            tcp_keepalive=(16, 3, 5),
        )

    # -- ReplicatedLog ------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    def propose(self, entry: bytes, on_done: ProposalCallback) -> None:
        if self._closed:
            _call(on_done, Proposal(Outcome.REJECTED, reason="log closed"))
            return
        if len(entry) > self._options.entry_bytes_max:
            reason = f"entry of {len(entry)} bytes over {self._options.entry_bytes_max}"
            _call(on_done, Proposal(Outcome.REJECTED, reason=reason))
            return
        if not self._replica._isLeader():
            _call(on_done, Proposal(Outcome.REJECTED, reason="not leader"))
            return
        token = next(self._tokens)
        deadline = time.monotonic() + self._options.proposal_timeout_s
        if not self._hold(token, on_done, deadline):
            _call(on_done, Proposal(Outcome.REJECTED, reason="log closed"))
            return
        self._replica._apply_entry(entry, callback=lambda r, e: self._on_result(token, r, e))

    def _hold(self, token: int, on_done: ProposalCallback, deadline: float) -> bool:
        """Keep a proposal until answered, unless closed: close() answers what it finds here
        under the same lock, so nothing held is ever left unanswered."""
        with self._pending_lock:
            if self._closed:
                return False
            self._pending[token] = (on_done, deadline)
            return True

    def is_leader(self) -> bool:
        return not self._closed and bool(self._replica._isLeader())

    def leader(self) -> str | None:
        if self._closed:
            return None
        node = self._replica._getLeader()
        return None if node is None else self._address_to_node.get(node.id)

    def status(self) -> LogStatus:
        for _ in range(10):
            try:
                status = self._replica.getStatus()
                break
            except RuntimeError:  # a dict changed size under us (the tick thread owns them)
                continue
        else:
            raise RuntimeError("getStatus kept racing the tick thread")
        leader = status["leader"]
        return LogStatus(
            role=_ROLES[status["state"]],
            term=status["raft_term"],
            leader=None if leader is None else self._address_to_node.get(leader.id),
            commit_index=status["commit_idx"],
            applied_index=status["last_applied"],
            log_entries=status["log_len"],
        )

    def transfer_leadership(self, to: str) -> None:
        """Ask the leader to hand over to `to` (Raft TimeoutNow); best effort, asynchronous.

        pysyncobj denies it unless `to` has every entry of the leader; watch `leader()`."""
        address = self._node_to_address.get(to)
        if address is None:
            raise ValueError(f"unknown node {to!r}")
        if to == self._node_id:
            return

        def transfer() -> None:
            def done(_result: Any, error: int) -> None:
                log.info("leadership_transfer", node=self._node_id, to=to, error=error)

            self._replica.transferLeadership(address, callback=done)

        with self._pending_lock:
            self._tick_actions.append(transfer)

    def close(self) -> None:
        """Stop the node (joins its tick thread) and answer everything outstanding UNKNOWN."""
        with self._pending_lock:
            if self._closed:
                return
            self._closed = True
        if threading.get_ident() == self._tick_thread_id:
            self._replica.destroy()  # the tick thread stops after this tick
        else:
            self._replica.destroy_synchronous()
            self._replica.close_wakeup_pipe()
        _unregister_journal(self._journal_path)
        with self._pending_lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for on_done, _ in pending:
            _call(on_done, Proposal(Outcome.UNKNOWN, reason="log closed"))
        log.info("raft_log_closed", node=self._node_id, outstanding=len(pending))

    # -- beyond the interface -----------------------------------------------------------------

    def force_compaction(self) -> None:
        """Snapshot and cut the log at the next tick, whatever its length."""
        self._replica.forceLogCompaction()

    @property
    def journal_syncs(self) -> int:
        """Journal flushes so far (always 0 unless durable)."""
        return self._journal.syncs

    # -- callbacks from the tick thread -------------------------------------------------------

    def _apply_entry(self, log_index: int, entry: bytes) -> Any:
        try:
            return self._apply(log_index, entry)
        except Exception as exc:
            # The entry is committed; this replica did not apply it. It may now differ from
            # the others: alert on it. Raising would make pysyncobj retry it forever.
            self.apply_failures += 1
            log.critical(
                "apply_failed",
                node=self._node_id,
                log_index=log_index,
                entry_bytes=len(entry),
                error=repr(exc),
                exc_info=True,
            )
            return _ApplyFailed(repr(exc))

    def _on_result(self, token: int, result: Any, error: int) -> None:
        with self._pending_lock:
            waiting = self._pending.pop(token, None)
        if waiting is None:
            return  # already answered (deadline or close)
        _call(waiting[0], _proposal_of(result, error))

    def _on_tick(self) -> None:
        self._tick_thread_id = threading.get_ident()
        if self._tick_actions:
            with self._pending_lock:
                actions, self._tick_actions = self._tick_actions, []
            for action in actions:
                try:
                    action()
                except Exception:
                    log.exception("tick_action_failed", node=self._node_id)
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_PERIOD_S
        expired = []
        with self._pending_lock:
            for token, (on_done, deadline) in self._pending.items():
                if deadline > now:
                    break  # insertion order is deadline order: one timeout for all
                expired.append((token, on_done))
            for token, _ in expired:
                del self._pending[token]
        for _, on_done in expired:
            _call(on_done, Proposal(Outcome.UNKNOWN, reason="no answer before the deadline"))

    def _on_ready(self) -> None:
        log.info("raft_log_ready", node=self._node_id)

    def _on_state_changed(self, old: int, new: int) -> None:
        role = _ROLES[new]
        log.info(
            "raft_role_changed",
            node=self._node_id,
            old=_ROLES[old].value,
            new=role.value,
        )
        if self._on_role_changed is not None:
            try:
                self._on_role_changed(role)
            except Exception:
                log.exception("on_role_changed_failed", node=self._node_id)

    # -- snapshots (tick thread) --------------------------------------------------------------

    def _serialize(self, tmp_file: str, raft_data: tuple[Any, Any, Any]) -> None:
        """pysyncobj's serializer: write the whole state to `tmp_file`; pysyncobj renames it."""
        started = time.monotonic()
        last_entry, prev_entry, cluster = raft_data
        work = self._group_dir / SNAPSHOT_WORK_DIR
        shutil.rmtree(work, ignore_errors=True)
        try:
            store_applied = self._hooks.copy_to(work)
            header = {
                "format": _DUMP_FORMAT,
                "snapshot_index": int(last_entry[1]),
                "store_applied": store_applied,
                "last": _entry_fields(last_entry),
                "prev": _entry_fields(prev_entry),
                "cluster": sorted(node.id for node in cluster),
            }
            store_bytes = _write_dump(Path(tmp_file), header, work / "data.mdb")
        except Exception:
            log.exception("snapshot_write_failed", node=self._node_id, tmp_file=tmp_file)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info(
            "snapshot_written",
            node=self._node_id,
            snapshot_index=header["snapshot_index"],
            store_applied=store_applied,
            store_bytes=store_bytes,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _deserialize(self, file_name: str) -> tuple[Any, Any, Any]:
        """pysyncobj's deserializer, at restart (our dump) and on a snapshot from the leader."""
        path = Path(file_name)
        try:
            header = _read_dump_header(path)
            local_applied = self._hooks.applied_index
            if self._options.durable:
                _fsync_file(path)  # a received dump was renamed in place unsynced
                _fsync_dir(path.parent)
            if local_applied >= header["store_applied"]:
                log.info(
                    "snapshot_kept_local_store",
                    node=self._node_id,
                    snapshot_index=header["snapshot_index"],
                    store_applied=header["store_applied"],
                    local_applied=local_applied,
                )
            else:
                self._install(path, header, local_applied)
            last = _entry_of(header["last"])
            prev = _entry_of(header["prev"])
            cluster = {TCPNode(address) for address in header["cluster"]}
        except Exception:
            log.exception("snapshot_load_failed", node=self._node_id, file=file_name)
            raise
        return last, prev, cluster

    def _install(self, path: Path, header: dict[str, Any], local_applied: int) -> None:
        started = time.monotonic()
        target = self._group_dir / SNAPSHOT_INSTALL_DIR
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        _extract_store(path, target / "data.mdb")
        _fsync_dir(target)
        self._hooks.replace_with(target)
        self.snapshots_installed += 1
        log.warning(
            "snapshot_installed",
            node=self._node_id,
            snapshot_index=header["snapshot_index"],
            store_applied=header["store_applied"],
            replaced_applied=local_applied,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    # -- start --------------------------------------------------------------------------------

    def _repair_store_ahead_of_journal(self, peers_count: int) -> None:
        store_applied = self._hooks.applied_index
        journal_last = _journal_last_index(self._journal_path)
        dump_index = 0
        if self._dump_path.exists():
            with contextlib.suppress(Exception):
                dump_index = _read_dump_header(self._dump_path)["snapshot_index"]
        log_last = max(journal_last, dump_index)
        if store_applied <= log_last:
            return
        if peers_count == 0:
            raise RaftLogError(
                f"store applied {store_applied} but the log ends at {log_last}: a single-node "
                "group cannot fetch the lost entries; restore the journal or the group"
            )
        log.warning(
            "store_ahead_of_journal",
            node=self._node_id,
            store_applied=store_applied,
            journal_last=journal_last,
            dump_index=dump_index,
            action="journal and dump wiped; the node rejoins and is sent the log or a snapshot",
        )
        self.log_loss_repaired = True
        for name in (JOURNAL_FILE, DUMP_FILE, DUMP_FILE + ".tmp", DUMP_FILE + ".1.tmp"):
            with contextlib.suppress(FileNotFoundError):
                (self._group_dir / name).unlink()
        meta_storer = MetaStorer(self._journal_path + ".meta")
        meta = meta_storer.getMeta()
        if meta:
            meta["raftCommitIndex"] = 1  # keep currentTerm and votedForNodeId
            meta_storer.storeMeta(meta)
        _fsync_dir(self._group_dir)


class _Replica(SyncObj):  # type: ignore[misc]
    """The SyncObj of one group: one replicated method taking the opaque entry."""

    def __init__(
        self,
        self_address: str,
        peer_addresses: list[str],
        conf: Any,
        apply_entry: Callable[[int, bytes], Any],
        transport_class: type,
    ) -> None:
        # Set before SyncObj.__init__: its tick thread may apply entries right away.
        self._apply_entry_at = apply_entry
        super().__init__(self_address, peer_addresses, conf=conf, transportClass=transport_class)
        # pysyncobj stops the tick thread when the creating thread ends; tie it to the main
        # thread instead, so a group made on a short-lived thread keeps running until close().
        self._SyncObj__mainThread = threading.main_thread()

    # Commit notices. pysyncobj (non-batch mode) sends every follower an AppendEntries
    # carrying the new commit index right after the leader applies an entry, and each
    # follower acknowledges it: 4 of the 8 messages per entry in a 3-replica group, each
    # pickled, encrypted, sent, received, authenticated and decrypted. Under load the next
    # entry follows within milliseconds and carries the commit index anyway, so the notice
    # is deferred by up to COMMIT_NOTICE_DELAY_S: the next AppendEntries (an entry or this
    # deferred heartbeat) takes it. Only followers learn their commit index later; the
    # leader answers its clients on its own commit and apply, as before.

    _SyncObj__newAppendEntriesTime: float  # pysyncobj's: when the leader next sends
    _SyncObj__raftState: int

    def _SyncObj__applyLogEntries(self) -> bool:  # noqa: N802 - overrides pysyncobj's
        if not SyncObj._SyncObj__applyLogEntries(self):
            return False
        self._SyncObj__newAppendEntriesTime = min(
            self._SyncObj__newAppendEntriesTime, pysyncobj_monotonic() + COMMIT_NOTICE_DELAY_S
        )
        return False

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803
        wait_s = timeToWait
        if wait_s > 0 and self._SyncObj__raftState == _LEADER_STATE:
            # Wake for the deferred notice (pysyncobj polls for autoTickPeriod otherwise). Its
            # times are on its own clock (`pysyncobj_monotonic`), not time.monotonic().
            due_s = self._SyncObj__newAppendEntriesTime - pysyncobj_monotonic()
            wait_s = max(0.0, min(wait_s, due_s))
        super()._onTick(wait_s)

    def close_wakeup_pipe(self) -> None:
        """Close the pipe pysyncobj wakes its poller with (non-batch mode); its destroy()
        leaks it. Only after the tick thread has stopped."""
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        if notifier is None:
            return
        for name in ("_PipeNotifier__pipeR", "_PipeNotifier__pipeW"):
            fd = getattr(notifier, name, -1)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(notifier, name, -1)

    @replicated  # type: ignore[untyped-decorator]
    def _apply_entry(self, entry: bytes) -> Any:
        # pysyncobj increments raftLastApplied after this returns: this entry's index.
        # `_apply_entry_at` never raises (PysyncobjLog._apply_entry catches everything).
        return self._apply_entry_at(self.raftLastApplied + 1, entry)


# -- the journal ------------------------------------------------------------------------------
#
# pysyncobj looks `createJournal` up in its syncobj module when a SyncObj is made. Ours makes
# a `_Journal` for paths registered by a PysyncobjLog (durable or not) and defers to
# pysyncobj's own for anything else.

_journal_lock = threading.Lock()
_journal_modes: dict[str, bool] = {}  # registered journal path -> durable
_journals: dict[str, _Journal] = {}
_original_create_journal = pysyncobj_syncobj.createJournal


def _create_journal(journal_file: str | None) -> Any:
    with _journal_lock:
        durable = None if journal_file is None else _journal_modes.get(journal_file)
    if journal_file is None or durable is None:
        return _original_create_journal(journal_file)
    journal = _Journal(journal_file, durable=durable)
    with _journal_lock:
        _journals[journal_file] = journal
    return journal


def _register_journal(path: str, *, durable: bool) -> None:
    with _journal_lock:
        if path in _journal_modes:
            raise RaftLogError(f"journal {path} is already open in this process")
        _journal_modes[path] = durable
        pysyncobj_syncobj.createJournal = _create_journal


def _unregister_journal(path: str) -> None:
    with _journal_lock:
        _journal_modes.pop(path, None)
        _journals.pop(path, None)


class _Journal(FileJournal):  # type: ignore[misc]
    """pysyncobj's mmap journal; when durable, flushed before anything depends on it."""

    def __init__(self, path: str, *, durable: bool) -> None:
        self.durable = durable
        self.syncs = 0
        self._dirty = False
        self._fd = -1
        self._dir = os.path.dirname(path) or "."
        super().__init__(path)
        if durable:
            # Term and vote must be on the device before a vote leaves (pysyncobj: no fsync).
            self._FileJournal__metaStorer = _DurableMetaStorer(path + ".meta")
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self._dirty = True

    def clear(self) -> None:
        super().clear()
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802, N803
        super().deleteEntriesFrom(entryFrom)
        self._dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802, N803
        if self.durable:
            # The new dump was renamed into place; make the rename durable before the log
            # entries it replaces are cut.
            _fsync_dir(self._dir)
        super().deleteEntriesTo(entryTo)
        self._dirty = True

    def sync(self) -> None:
        if not (self.durable and self._dirty):
            return
        self.flush()  # msync of the mapping
        os.fdatasync(self._fd)
        self._dirty = False
        self.syncs += 1

    def _destroy(self) -> None:
        self.sync()
        super()._destroy()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _DurableMetaStorer(MetaStorer):  # type: ignore[misc]
    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802
        path = self.getPath()
        with open(path + ".tmp", "wb") as file:
            file.write(pysyncobj.pickle.dumps(meta))  # pysyncobj's own format for this file
            file.flush()
            os.fsync(file.fileno())
        os.replace(path + ".tmp", path)
        _fsync_dir(os.path.dirname(path) or ".")


class _Transport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport; each connection sends its messages zlib-stored (level 0).

    pysyncobj compresses every message at level 3 before encrypting it: ~15-80 us of CPU per
    message for a few hundred bytes saved on the wire, several messages per log entry on
    every node. The receiver's `zlib.decompress` reads stored blocks as well, so peers need
    no change. `_send` is `TcpConnection.send` with only the level changed (0.3.17).
    """

    def addNode(self, node: Any) -> None:  # noqa: N802
        super().addNode(node)
        connection = self._connections.get(node)
        if connection is not None:
            _store_sends(connection)

    def _onNewIncomingConnection(self, conn: Any) -> None:  # noqa: N802
        super()._onNewIncomingConnection(conn)
        _store_sends(conn)


_MESSAGE_LENGTH = struct.Struct("i")  # pysyncobj's framing: native int


# -- the cluster secret: Fernet, made cheaper --------------------------------------------------
#
# With a password pysyncobj wraps every message in a Fernet token (AES-128-CBC, then
# HMAC-SHA256 over version, timestamp, IV and ciphertext), key from PBKDF2 of the password.
# cryptography's `Fernet` builds a new cipher context, padder and HMAC per token: ~25 us to
# make one and ~25-60 us to check and open one, several times per log entry on every node.
# `_Fernet` makes and reads the same tokens (either side may be stock pysyncobj) with
# contexts made once:
# - sealing: one CBC encryptor lives on; a token's IV is that encryptor's output for 16
#   fresh random bytes, E_K(R xor C_prev), and its ciphertext continues the chain from it.
#   This is the IV generation of NIST SP 800-38A appendix C (the forward cipher applied to a
#   nonce under the same key): unpredictable, fresh per token.
# - opening: the HMAC is checked first (constant-time compare); then one CBC decryptor that
#   lives on is fed the IV block before the ciphertext, which sets its chain to the IV: the
#   first output block is dropped, the rest is the plaintext. The padding is checked.
# pysyncobj reads the timestamp of a token, then decrypts it: the first call keeps what it
# opened for the second.

_FERNET_VERSION = 0x80
_BLOCK_BYTES = 16
_MAC_BYTES = 32
_TOKEN_HEAD_BYTES = 1 + 8 + _BLOCK_BYTES  # version, timestamp, IV
_PBKDF2_ITERATIONS = 100_000  # pysyncobj's, with its salt: the same key as a stock peer


class _Fernet:
    """pysyncobj's encryptor interface (`encrypt_at_time`, `extract_timestamp`,
    `decrypt`) over Fernet tokens; see the comment above."""

    def __init__(self, key: bytes) -> None:
        assert len(key) == 2 * _BLOCK_BYTES, "Fernet: 16 bytes signing key, 16 encryption key"
        self._mac = hmac.new(key[:_BLOCK_BYTES], digestmod=hashlib.sha256)
        aes = algorithms.AES(key[_BLOCK_BYTES:])
        self._chain = Cipher(aes, modes.CBC(os.urandom(_BLOCK_BYTES))).encryptor()
        self._unchain = Cipher(aes, modes.CBC(bytes(_BLOCK_BYTES))).decryptor()
        self._lock = threading.Lock()  # the two contexts carry state between tokens
        self._opened: tuple[bytes, int, bytes] = (b"", 0, b"")

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        pad = _BLOCK_BYTES - len(data) % _BLOCK_BYTES
        padded = data + bytes((pad,)) * pad
        with self._lock:
            iv = self._chain.update(os.urandom(_BLOCK_BYTES))
            ciphertext = self._chain.update(padded)
        assert len(iv) == _BLOCK_BYTES and len(ciphertext) == len(padded)
        sealed = bytes((_FERNET_VERSION,)) + current_time.to_bytes(8, "big") + iv + ciphertext
        mac = self._mac.copy()
        mac.update(sealed)
        return base64.urlsafe_b64encode(sealed + mac.digest())

    def extract_timestamp(self, token: bytes) -> int:
        return self._open(token)[1]

    def decrypt(self, token: bytes) -> bytes:
        opened = self._opened
        if opened[0] is not token:
            opened = self._open(token)
        return opened[2]

    def _open(self, token: bytes) -> tuple[bytes, int, bytes]:
        try:
            data = base64.urlsafe_b64decode(token)
        except (TypeError, ValueError):
            raise InvalidToken from None
        body_bytes = len(data) - _TOKEN_HEAD_BYTES - _MAC_BYTES
        if body_bytes < _BLOCK_BYTES or body_bytes % _BLOCK_BYTES or data[0] != _FERNET_VERSION:
            raise InvalidToken
        mac = self._mac.copy()
        mac.update(data[:-_MAC_BYTES])
        if not hmac.compare_digest(mac.digest(), data[-_MAC_BYTES:]):
            raise InvalidToken
        with self._lock:
            plain = self._unchain.update(data[_TOKEN_HEAD_BYTES - _BLOCK_BYTES : -_MAC_BYTES])
        plain = plain[_BLOCK_BYTES:]
        pad = plain[-1]
        if not 1 <= pad <= _BLOCK_BYTES or plain[-pad:] != bytes((pad,)) * pad:
            raise InvalidToken
        opened = (token, int.from_bytes(data[1:9], "big"), plain[:-pad])
        self._opened = opened
        return opened


def _fernet_of(password: str | bytes) -> _Fernet:
    """What pysyncobj's `getEncryptor` makes of the password, as a `_Fernet`."""
    secret = password if isinstance(password, bytes) else password.encode()
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=2 * _BLOCK_BYTES,
        salt=pysyncobj_encryptor.SALT,
        iterations=_PBKDF2_ITERATIONS,
    )
    return _Fernet(kdf.derive(secret))


def _use_our_fernet() -> None:
    """pysyncobj makes a SyncObj's encryptor with its module's `getEncryptor`."""
    pysyncobj_syncobj.getEncryptor = _fernet_of


# -- pickling ---------------------------------------------------------------------------------
#
# pysyncobj pickles every command and every message with protocol 2, which has no opcode for
# bytes: a bytes object becomes a call of `_codecs.encode` on its latin-1 text, stored as
# UTF-8, so every byte over 0x7f takes two. Our entries are binary (msgpack: digests, lengths),
# pickled once as a command and again inside the AppendEntries that carries them. An entry of
# 19 writes (2,988 bytes) went out as a 4,703-byte message; pickling the message, unpickling
# it and unpickling the command in it took 5.7 + 4.7 + 2.8 us. With protocol 5: 3,136 bytes,
# 0.6 + 1.0 + 0.4 us, and less for Fernet, base64 and the socket to carry. `pickle.loads` reads any
# protocol, so journals written with protocol 2 and stock peers still sending it are read.
PICKLE_PROTOCOL = 5


def _use_pickle_protocol_5() -> None:
    """pysyncobj's pickle module reads its protocol from a module global."""
    vars(pysyncobj.pickle)["__protocol"] = PICKLE_PROTOCOL


def _store_sends(connection: Any) -> None:
    connection.send = functools.partial(_send, connection)


def _send(connection: Any, message: Any) -> None:
    if connection.sendRandKey:
        message = (connection.sendRandKey, message)
    data = zlib.compress(pysyncobj.pickle.dumps(message), 0)  # at PICKLE_PROTOCOL
    if connection.encryptor:
        data = connection.encryptor.encrypt_at_time(data, int(pysyncobj_monotonic()))
    connection._TcpConnection__writeBuffer += _MESSAGE_LENGTH.pack(len(data)) + data
    connection._TcpConnection__trySendBuffer()


class _SyncingTransport(_Transport):
    """TCP transport that makes the journal durable before any message leaves."""

    def __init__(self, sync_obj: Any, self_node: Any, other_nodes: Any) -> None:
        # SyncObj.__init__ made the journal (via _create_journal) before its transport.
        self._journal = _journals[sync_obj.conf.journalFile]
        super().__init__(sync_obj, self_node, other_nodes)
        # Runs after the tick's own work: a leader's new entries are synced before the next
        # tick counts them toward the commit index.
        sync_obj.addOnTickCallback(self._journal.sync)

    def send(self, node: Any, message: Any) -> bool:
        self._journal.sync()
        return bool(super().send(node, message))


def _journal_last_index(path: str) -> int:
    if not os.path.exists(path):
        return 0
    journal = FileJournal(path)
    try:
        return int(journal[-1][1]) if len(journal) else 0
    finally:
        journal._destroy()


# -- the dump file ----------------------------------------------------------------------------
#
# MAGIC | u32 header length | header (msgpack map) | u64 store length | data.mdb | u32 CRC-32
# of everything before it. The header holds pysyncobj's raft data as plain values.


def _entry_fields(entry: Any) -> list[Any]:
    command, index, term = entry
    return [bytes(command), int(index), int(term)]


def _entry_of(fields: Any) -> tuple[bytes, int, int]:
    command, index, term = fields
    return bytes(command), int(index), int(term)


def _write_dump(path: Path, header: dict[str, Any], store_file: Path) -> int:
    raw_header = msgpack.packb(header, use_bin_type=True)
    store_bytes = store_file.stat().st_size
    crc = 0
    with open(path, "wb") as out:

        def put(data: bytes) -> None:
            nonlocal crc
            out.write(data)
            crc = zlib.crc32(data, crc)

        put(_DUMP_MAGIC + _U32.pack(len(raw_header)) + raw_header + _U64.pack(store_bytes))
        with open(store_file, "rb") as store:
            for chunk in _chunks(store, store_bytes):
                put(chunk)
        out.write(_U32.pack(crc))
        out.flush()
        os.fsync(out.fileno())
    return store_bytes


def _read_dump_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as dump:
        header, _ = _read_header(dump)
    return header


def _read_header(dump: BinaryIO) -> tuple[dict[str, Any], bytes]:
    magic = dump.read(len(_DUMP_MAGIC))
    if magic != _DUMP_MAGIC:
        raise ValueError("not a raftstore dump")
    (length,) = _U32.unpack(dump.read(_U32.size))
    if length > _DUMP_HEADER_BYTES_MAX:
        raise ValueError(f"dump header of {length} bytes")
    raw = dump.read(length)
    header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    if not isinstance(header, dict) or header.get("format") != _DUMP_FORMAT:
        raise ValueError("unknown dump format")
    return header, magic + _U32.pack(length) + raw


def _extract_store(path: Path, target: Path) -> None:
    """Copy the dump's store file to `target`, checking the CRC of the whole dump."""
    with open(path, "rb") as dump, open(target, "wb") as out:
        _, prefix = _read_header(dump)
        crc = zlib.crc32(prefix)
        raw_length = dump.read(_U64.size)
        crc = zlib.crc32(raw_length, crc)
        (store_bytes,) = _U64.unpack(raw_length)
        copied = 0
        for chunk in _chunks(dump, store_bytes):
            out.write(chunk)
            crc = zlib.crc32(chunk, crc)
            copied += len(chunk)
        trailer = dump.read(_U32.size)
        if copied != store_bytes or len(trailer) != _U32.size or _U32.unpack(trailer)[0] != crc:
            raise ValueError(f"dump {path} is truncated or corrupt")
        out.flush()
        os.fsync(out.fileno())


def _chunks(source: BinaryIO, length: int) -> Iterator[bytes]:
    left = length
    while left > 0:
        chunk = source.read(min(_COPY_CHUNK_BYTES, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- outcomes ---------------------------------------------------------------------------------


def _proposal_of(result: Any, error: int) -> Proposal:
    if error == FAIL_REASON.SUCCESS:
        if isinstance(result, _ApplyFailed):
            return Proposal(Outcome.UNKNOWN, reason=f"apply failed: {result.reason}")
        return Proposal(Outcome.APPLIED, value=result)
    if error in _REJECTED_REASONS:
        return Proposal(Outcome.REJECTED, reason=_REJECTED_REASONS[error])
    return Proposal(Outcome.UNKNOWN, reason=_UNKNOWN_REASONS.get(error, f"fail reason {error}"))


def _call(on_done: ProposalCallback, proposal: Proposal) -> None:
    try:
        on_done(proposal)
    except Exception:
        log.exception("on_done_failed", outcome=proposal.outcome.value, reason=proposal.reason)


__all__ = [
    "DUMP_FILE",
    "JOURNAL_FILE",
    "PysyncobjLog",
    "RaftLogError",
    "RaftOptions",
    "SnapshotHooks",
]
