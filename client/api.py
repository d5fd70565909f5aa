"""The `Client`: the official Python client's methods over raftstore's protocol.

Shapes (as in `aerospike`):
- a key is `(namespace, set, user_key)` or `(namespace, set, None, digest)` (see
  `client.key_tuples`); a returned key is `(namespace, set, user_key or None, digest)`, with
  the user key the caller gave;
- a record is `(key, meta, bins)`, meta `{"gen": generation, "ttl": seconds left}` (ttl -1:
  never expires), bins a dict;
- policies and meta are dicts with the official names (see `client.policies`);
- failures raise the classes of `client.exception`; a write whose outcome is unknown raises
  with `in_doubt=True` (see `client.cluster` for the rule).

Which policy kind each method reads: get/select/exists -> read; put/remove_bin -> write;
remove -> remove; operate/operate_ordered/touch/append/prepend/increment -> operate;
batch_read -> batch; batch_write -> batch_write; batch_remove -> batch_remove; scan -> scan;
info/info_all/truncate -> info.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from client import operations as op
from client.checks import check_int, param_error, param_errors
from client.cluster import Call, Cluster, Target
from client.connection import ConnectionOptions, Node
from client.key_tuples import KeyRef, KeyTuple, parse_key
from client.logger import get_logger
from client.policies import Meta, Policy, check_ttl, parse_meta, resolve
from client.routing import Address, PartitionMap
from client.settings import SEND_STALL_TIMEOUT_S, Settings, parse_config
from client.txn import (
    ABORT_ALREADY_ABORTED,
    ABORT_OK,
    COMMIT_ALREADY_COMMITTED,
    COMMIT_OK,
    TXN_STATE_ABORTED,
    TXN_STATE_COMMITTED,
    Transaction,
    apply_local,
    record_from_read,
)
from raftstore import keys, limits, wire
from raftstore.clock import ttl_left
from raftstore.config import check_namespace_name
from raftstore.errors import RaftstoreError, ResultCode, error, is_definite
from raftstore.ops import Op, is_read_only
from raftstore.policy import DEFAULT_WRITE_POLICY
from raftstore.record import Record
from raftstore.values import check_bin_name, check_value

log = get_logger(__name__)

Bins = dict[str, Any]
MetaDict = dict[str, int]
RecordTuple = tuple[KeyTuple, MetaDict, Bins]

BATCH_IN_FLIGHT_MAX = 1024  # calls of one batch in flight at once
SETTLE_ATTEMPTS = 3  # status checks of an in-doubt commit before raising in_doubt
COMMIT_MARGIN_MS = 10_000  # a commit's wait beyond the deadline: resolves and retries
# One status check's wait: a recovery per group at the coordinating leader, a few steps.
SETTLE_WAIT_MS = 4000
SCAN_PAGE_RECORDS = 1000


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """The outcome of one key of a batch: `result` 0 and `record` set, or the error code
    (`record` None). `in_doubt` is True when a write's outcome is unknown."""

    key: KeyTuple
    result: int
    record: RecordTuple | None
    in_doubt: bool = False


class Client:
    """A connection to a raftstore cluster. Safe to share between threads."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._settings: Settings = parse_config(config)
        self._lock = threading.Lock()
        self._cluster: Cluster | None = None
        self.client_id = secrets.randbits(63) or 1  # names this client's session on servers

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> Client:
        """Fetch the partition map from the first reachable host (ConnectionError if none)."""
        with self._lock:
            if self._cluster is not None and not self._cluster.closed.is_set():
                return self
            timeout_s = self._settings.timeout_ms / 1000
            cluster = Cluster(
                self._settings.hosts,
                ConnectionOptions(connect_timeout_s=timeout_s, io_timeout_s=SEND_STALL_TIMEOUT_S),
                self._settings.max_conns_per_node,
            )
            cluster.connect()
            self._cluster = cluster
        return self

    def is_connected(self) -> bool:
        cluster = self._cluster
        return cluster is not None and not cluster.closed.is_set()

    def close(self) -> None:
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close()
            log.info("closed", client_id=self.client_id)

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _live(self) -> Cluster:
        cluster = self._cluster
        if cluster is None or cluster.closed.is_set():
            raise error(ResultCode.CONNECTION_ERROR, "client is not connected")
        return cluster

    def _policy(self, kind: str, given: object) -> Policy:
        return resolve(kind, self._settings.policies[kind], given)

    # -- single-record commands ---------------------------------------------------------------

    def put(
        self,
        key: object,
        bins: Mapping[str, Any],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        """Write `bins` (a None value removes that bin)."""
        self._record("write", key, _write_ops(bins), policy, meta)

    def get(self, key: object, policy: Mapping[str, Any] | None = None) -> RecordTuple:
        """`(key, meta, bins)` of the record; RecordNotFound if it does not exist."""
        ref, response = self._record("read", key, (op.read(),), policy)
        return ref.as_tuple(), _meta(response), _bins(response.results)

    def select(
        self, key: object, bins: Sequence[str], policy: Mapping[str, Any] | None = None
    ) -> RecordTuple:
        """Like `get`, with only the named bins (those the record has)."""
        ops = tuple(op.read(name) for name in _bin_names(bins))
        ref, response = self._record("read", key, ops, policy)
        found = {
            name: value for name, value in _bins(response.results).items() if value is not None
        }
        return ref.as_tuple(), _meta(response), found

    def exists(
        self, key: object, policy: Mapping[str, Any] | None = None
    ) -> tuple[KeyTuple, MetaDict | None]:
        """`(key, meta)`, or `(key, None)` if the record does not exist."""
        ref = parse_key(key)
        try:
            _, response = self._record("read", ref.as_tuple(), (op.read(),), policy)
        except RaftstoreError as exc:
            if exc.code == ResultCode.RECORD_NOT_FOUND:
                return ref.as_tuple(), None
            raise
        return ref.as_tuple(), _meta(response)

    def remove(
        self,
        key: object,
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        """Delete the record (durably); RecordNotFound if it does not exist."""
        self._record("remove", key, (op.delete(),), policy, meta)

    def remove_bin(
        self,
        key: object,
        bin_names: Sequence[str],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        """Remove the named bins (the record goes when its last bin does)."""
        ops = tuple(op.write(name, None) for name in _bin_names(bin_names))
        self._record("write", key, ops, policy, meta)

    def touch(
        self,
        key: object,
        val: int = 0,
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        """Reset the record's ttl to `val` seconds (0: the namespace default) and bump its
        generation; RecordNotFound if it does not exist."""
        ttl = check_ttl(val, "touch ttl")
        self._record("operate", key, (op.touch(ttl),), policy, meta)

    def append(
        self,
        key: object,
        bin: str,
        val: str | bytes,
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        self._record("operate", key, (op.append(bin, _text(val, "append")),), policy, meta)

    def prepend(
        self,
        key: object,
        bin: str,
        val: str | bytes,
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        self._record("operate", key, (op.prepend(bin, _text(val, "prepend")),), policy, meta)

    def increment(
        self,
        key: object,
        bin: str,
        offset: int | float,
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(offset, bool) or not isinstance(offset, int | float):
            raise param_error(
                f"increment offset must be an int or float, not {type(offset).__name__}"
            )
        self._record("operate", key, (op.increment(bin, offset),), policy, meta)

    def operate(
        self,
        key: object,
        ops: Sequence[Op],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> RecordTuple:
        """Apply `ops` atomically; bins: one value per bin (the last op's on that bin)."""
        ref, response = self._record("operate", key, ops, policy, meta)
        return ref.as_tuple(), _meta(response), _bins(response.results)

    def operate_ordered(
        self,
        key: object,
        ops: Sequence[Op],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> tuple[KeyTuple, MetaDict, list[tuple[str | None, Any]]]:
        """Like `operate`, with every result as `(bin, value)` in op order."""
        ref, response = self._record("operate", key, ops, policy, meta)
        ordered = [(name, value) for name, value in response.results]
        return ref.as_tuple(), _meta(response), ordered

    def _record(
        self,
        kind: str,
        key: object,
        ops: Sequence[Op],
        policy: object,
        meta: object = None,
    ) -> tuple[KeyRef, wire.Response]:
        cluster = self._live()
        ref = parse_key(key)
        txn, policy = _take_txn(policy)
        resolved = self._policy(kind, policy)
        checked_meta = parse_meta(meta)
        checked_ops = _check_ops(ops)
        if txn is not None:
            return ref, self._txn_record(
                cluster,
                txn=txn,
                kind=kind,
                ref=ref,
                ops=checked_ops,
                policy=resolved,
                meta=checked_meta,
            )
        call = self._call(cluster, ref, checked_ops, resolved, checked_meta)
        cluster.run([call])
        if call.error is not None:
            call.error.key = ref.as_tuple()
        return ref, call.raise_for_error()

    def _call(
        self,
        cluster: Cluster,
        ref: KeyRef,
        ops: tuple[Op, ...],
        policy: Policy,
        meta: Meta | None,
    ) -> Call:
        is_write = not is_read_only(ops)
        message = wire.RecordMsg(
            namespace=ref.namespace,
            digest=ref.digest,
            set_name=ref.wire_set_name,
            ops=ops,
            policy=policy.write_policy(meta) if is_write else DEFAULT_WRITE_POLICY,
            user_key=ref.user_key if policy.send_key else None,
            read_mode=policy.read_mode,
            client_id=self.client_id,
        )
        target = Target(ref.namespace, ref.partition_id)
        seq = cluster.sequences.begin()
        return Call(target, message, is_write=is_write, policy=policy, seq=seq)

    def exchange(
        self,
        namespace: str,
        partition_id: int,
        message: wire.TxnCommitMsg | wire.TxnStepMsg,
        policy: Policy,
    ) -> Call:
        """One transaction message to the leader of `partition_id`'s group, with the routing
        and retry rules of any write (`client.cluster`); the finished call, never raises for
        the server's answer. For the transaction API and the server's peer calls."""
        call = Call(Target(namespace, partition_id), message, is_write=True, policy=policy)
        self._live().run([call])
        return call

    # -- transactions (client.txn) ----------------------------------------------------------------

    def transaction(self, timeout: float = 0) -> TransactionContext:
        """`with client.transaction(timeout=s) as t:` commits on leaving the block and
        aborts if it raises; `t.get/select/exists/put/operate/remove/batch_read` join it."""
        return TransactionContext(self, Transaction(timeout=timeout))

    def commit(self, txn: Transaction) -> int:
        """COMMIT_OK, or COMMIT_ALREADY_COMMITTED; raises if it aborted (nothing applied), or
        with in_doubt=True if the outcome stays unknown (`txn_status` asks again)."""
        self._live()
        with txn.lock:
            if txn.state == TXN_STATE_COMMITTED:
                return COMMIT_ALREADY_COMMITTED
            if txn.state == TXN_STATE_ABORTED:
                raise error(ResultCode.MRT_ABORTED, f"transaction {txn.id} was aborted")
            if txn.in_doubt:
                self._settle(txn)
                return COMMIT_OK
            first = txn.keys.first
            if first is None:
                txn.state = TXN_STATE_COMMITTED
                return COMMIT_OK
            reads, writes = txn.commit_parts()
            left_ms = txn.time_left_ms()
            if left_ms <= 0:
                txn.state = TXN_STATE_ABORTED
                raise error(ResultCode.MRT_EXPIRED, f"transaction {txn.id} passed its deadline")
            message = wire.TxnCommitMsg(
                first.namespace, txn.id, first.digest, left_ms, reads, writes
            )
            route = self._coordinator_key(txn, first.namespace)
            call = self.exchange(
                first.namespace, route.partition_id, message, _commit_policy(left_ms)
            )
            if call.error is None:
                txn.state = TXN_STATE_COMMITTED
                return COMMIT_OK
            if not call.error.in_doubt and is_definite(call.error.code):
                txn.state = TXN_STATE_ABORTED
                raise call.error
            txn.in_doubt = True
            self._settle(txn)
            return COMMIT_OK

    def abort(self, txn: Transaction) -> int:
        """ABORT_OK (nothing of it is applied, ever), or ABORT_ALREADY_ABORTED; raises
        TxnCommitted if it committed (also when an in-doubt commit turns out committed)."""
        with txn.lock:
            if txn.state == TXN_STATE_ABORTED:
                return ABORT_ALREADY_ABORTED
            if txn.state == TXN_STATE_COMMITTED:
                raise error(ResultCode.MRT_COMMITTED, f"transaction {txn.id} was committed")
            if txn.in_doubt:  # never abort blindly after an unknown commit: settle it
                try:
                    self._settle(txn)
                except RaftstoreError as exc:
                    if exc.in_doubt:
                        raise
                    return ABORT_OK
                raise error(ResultCode.MRT_COMMITTED, f"transaction {txn.id} was committed")
            txn.state = TXN_STATE_ABORTED  # writes were only buffered: nothing to undo
            return ABORT_OK

    def txn_status(self, txn: Transaction) -> str:
        """ "open" (not committed yet), "committed" or "aborted"; after an in-doubt commit
        this settles it (an unfinished one is aborted), raising in_doubt=True if the cluster
        cannot tell yet."""
        with txn.lock:
            if txn.in_doubt:
                try:
                    self._settle(txn)
                except RaftstoreError as exc:
                    if exc.in_doubt:
                        raise
            return {TXN_STATE_COMMITTED: "committed", TXN_STATE_ABORTED: "aborted"}.get(
                txn.state, "open"
            )

    def _settle(self, txn: Transaction) -> None:
        """Learn the outcome of an in-doubt commit (txn.lock held): committed returns,
        aborted raises the definite error, unknown raises in_doubt=True."""
        first = txn.keys.first
        assert first is not None
        reads, writes = txn.commit_parts()
        message = wire.TxnCommitMsg(
            first.namespace, txn.id, first.digest, max(txn.time_left_ms(), 0), reads, writes, True
        )
        route = self._coordinator_key(txn, first.namespace)
        last: RaftstoreError | None = None
        for _ in range(SETTLE_ATTEMPTS):
            call = self.exchange(first.namespace, route.partition_id, message, _settle_policy())
            if call.error is None:
                txn.state, txn.in_doubt = TXN_STATE_COMMITTED, False
                return
            last = call.error
            if not last.in_doubt and is_definite(last.code):
                txn.state, txn.in_doubt = TXN_STATE_ABORTED, False
                raise last
        assert last is not None
        raise error(last.code, f"transaction {txn.id} outcome unknown: {last.msg}", in_doubt=True)

    def _coordinator_key(self, txn: Transaction, namespace: str) -> KeyRef:
        partition_map = self._live().map
        space = None if partition_map is None else partition_map.namespaces.get(namespace)
        return txn.coordinator_key(None if space is None else space.partition_groups)

    def _txn_record(
        self,
        cluster: Cluster,
        *,
        txn: Transaction,
        kind: str,
        ref: KeyRef,
        ops: tuple[Op, ...],
        policy: Policy,
        meta: Meta | None,
    ) -> wire.Response:
        with txn.lock:
            txn.enter(ref)
            now = _now_ms()
            if is_read_only(ops):
                self._txn_fetch(cluster, txn, [ref], policy)
                view = txn.view(ref, now)
                if view is None:
                    raise error(ResultCode.RECORD_NOT_FOUND, "record does not exist")
                outcome = apply_local(view, ref, ops, DEFAULT_WRITE_POLICY, now)
                return _local_response(view, outcome.results, now)
            write_policy = policy.write_policy(meta)
            if kind != "operate":  # put, remove: blind writes, checked at commit
                txn.buffer(ref, ops, write_policy, policy.send_key)
                return wire.Response()
            self._txn_fetch(cluster, txn, [ref], policy)
            outcome = apply_local(txn.view(ref, now), ref, ops, write_policy, now)
            txn.buffer(ref, ops, write_policy, policy.send_key)
            return _local_response(outcome.record, outcome.results, now)

    def _txn_fetch(
        self, cluster: Cluster, txn: Transaction, refs: Sequence[KeyRef], policy: Policy
    ) -> None:
        """Read (in one round) the keys the transaction has not read yet.

        SESSION reads: the leader answers from what it has applied, with no round of the log.
        A deposed leader's stale answer cannot commit: the commit checks every read version
        under the transaction's locks, so a stale version fails it (121, definite)."""
        wanted = {ref.digest: ref for ref in refs if txn.cached(ref.digest) is None}
        if not wanted:
            return
        read_policy = replace(policy, read_mode=wire.ReadMode.SESSION)
        calls = [
            self._call(cluster, ref, (op.read(),), read_policy, None) for ref in wanted.values()
        ]
        cluster.run(calls)
        now = _now_ms()
        for ref, call in zip(wanted.values(), calls, strict=True):
            if call.error is not None:
                if call.error.code != ResultCode.RECORD_NOT_FOUND:
                    call.error.key = ref.as_tuple()
                    raise call.error
                txn.remember(ref.digest, None)
                continue
            response = call.raise_for_error()
            record = record_from_read(ref, response, _bins(response.results), now)
            txn.remember(ref.digest, record)

    def _txn_batch_read(
        self, txn: Transaction, refs: list[KeyRef], ops: tuple[Op, ...], policy: Policy
    ) -> list[BatchRecord]:
        cluster = self._live()
        with txn.lock:
            for ref in refs:
                txn.enter(ref)
            self._txn_fetch(cluster, txn, refs, policy)
            now = _now_ms()
            results = []
            for ref in refs:
                view = txn.view(ref, now)
                if view is None:
                    results.append(BatchRecord(ref.as_tuple(), ResultCode.RECORD_NOT_FOUND, None))
                    continue
                outcome = apply_local(view, ref, ops, DEFAULT_WRITE_POLICY, now)
                response = _local_response(view, outcome.results, now)
                found = {k: v for k, v in _bins(response.results).items() if v is not None}
                record = (ref.as_tuple(), _meta(response), found)
                results.append(BatchRecord(ref.as_tuple(), 0, record))
            return results

    # -- batches --------------------------------------------------------------------------------

    def batch_read(
        self,
        keys: Sequence[object],
        bins: Sequence[str] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> list[BatchRecord]:
        """One `BatchRecord` per key, in key order: every bin (bins None), the named bins, or
        only the metadata (bins empty: the record's bins are then `{}`)."""
        refs = [parse_key(key) for key in _items(keys, "keys")]
        txn, rest = _take_txn(policy)
        resolved = self._policy("batch", rest)
        names = None if bins is None else _bin_names(bins, allow_empty=True)
        ops = (op.read(),) if not names else tuple(op.read(name) for name in names)
        if txn is not None:
            return self._txn_batch_read(txn, refs, ops, resolved)

        def shape(response: wire.Response) -> Bins:
            if names is None:
                return _bins(response.results)
            found = _bins(response.results)
            return {name: found[name] for name in names if found.get(name) is not None}

        return self._batch([(ref, ops, None) for ref in refs], resolved, shape)

    def batch_write(
        self, records: Sequence[object], policy: Mapping[str, Any] | None = None
    ) -> list[BatchRecord]:
        """Write many records: each item is `(key, bins)` or `(key, bins, meta)`, where bins
        is a dict (a put) or a list of ops (an operate). Results in item order; a successful
        item's record holds the ops' results as bins (`{}` for a put)."""
        resolved = self._policy("batch_write", policy)
        requests = []
        for item in _items(records, "records"):
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise param_error("a batch_write record is (key, bins) or (key, bins, meta)")
            ref = parse_key(item[0])
            payload = item[1]
            ops = _write_ops(payload) if isinstance(payload, Mapping) else _check_ops(payload)
            meta = parse_meta(item[2] if len(item) == 3 else None)
            requests.append((ref, ops, meta))
        return self._batch(requests, resolved, lambda response: _bins(response.results))

    def batch_remove(
        self, keys: Sequence[object], policy: Mapping[str, Any] | None = None
    ) -> list[BatchRecord]:
        """Delete many records; a missing one has result RECORD_NOT_FOUND (2)."""
        refs = [parse_key(key) for key in _items(keys, "keys")]
        resolved = self._policy("batch_remove", policy)
        return self._batch([(ref, (op.delete(),), None) for ref in refs], resolved, lambda _: {})

    def _batch(
        self,
        requests: list[tuple[KeyRef, tuple[Op, ...], Meta | None]],
        policy: Policy,
        shape: Callable[[wire.Response], Bins],
    ) -> list[BatchRecord]:
        cluster = self._live()
        results: list[BatchRecord] = []
        for start in range(0, len(requests), BATCH_IN_FLIGHT_MAX):
            window = requests[start : start + BATCH_IN_FLIGHT_MAX]
            calls = [self._call(cluster, ref, ops, policy, meta) for ref, ops, meta in window]
            cluster.run(calls)
            for (ref, _, _), call in zip(window, calls, strict=True):
                key = ref.as_tuple()
                if call.error is not None:
                    code = int(call.error.code)
                    results.append(BatchRecord(key, code, None, call.error.in_doubt))
                else:
                    response = call.raise_for_error()
                    record = (key, _meta(response), shape(response))
                    results.append(BatchRecord(key, 0, record, False))
        return results

    # -- scan ------------------------------------------------------------------------------------

    def scan(
        self,
        namespace: str,
        set: str | None = None,
        partitions: Sequence[int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Iterator[RecordTuple]:
        """Every record of the namespace (or of one set), as `(key, meta, bins)`, fetched
        page by page as the iterator is consumed. `partitions`: only these partition ids.
        The policy's `total_timeout` bounds each page."""
        with param_errors("scan"):
            check_namespace_name(namespace)
            if set is not None:
                keys.check_set_name(set)
        pids = _partition_ids(partitions)
        resolved = self._policy("scan", policy)
        cluster = self._live()
        return self._scan(cluster, namespace, set, pids, resolved)

    def _scan(
        self,
        cluster: Cluster,
        namespace: str,
        set_name: str | None,
        pids: list[int],
        policy: Policy,
    ) -> Iterator[RecordTuple]:
        groups = self._namespace_groups(cluster, namespace)
        by_group: dict[int, list[int]] = {}
        for pid in pids:
            by_group.setdefault(pid % groups, []).append(pid)
        left = policy.max_records or None
        for group in sorted(by_group):
            todo: list[int] | None = by_group[group]
            after: bytes | None = None
            while todo:
                page = SCAN_PAGE_RECORDS if left is None else min(left, SCAN_PAGE_RECORDS)
                message = wire.ScanMsg(
                    namespace, set_name, tuple(todo), after, page, policy.read_mode
                )
                call = Call(Target(namespace, todo[0]), message, is_write=False, policy=policy)
                cluster.run([call])
                records, todo, after = _scan_page(call.raise_for_error().value)
                for record in records:
                    yield _scan_record(namespace, record)
                    if left is not None:
                        left -= 1
                        if left == 0:
                            return

    def _namespace_groups(self, cluster: Cluster, namespace: str) -> int:
        current = cluster.map
        if current is None or namespace not in current.namespaces:
            cluster.refresh(current)
            current = cluster.map
        if current is None or namespace not in current.namespaces:
            raise error(ResultCode.NAMESPACE_NOT_FOUND, f"no namespace {namespace!r}")
        return current.namespaces[namespace].partition_groups

    # -- info and admin ---------------------------------------------------------------------------

    def get_node_names(self) -> list[str]:
        """The node ids of the current partition map."""
        return self._live().node_ids()

    def info(
        self,
        command: str,
        host: str | tuple[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Any:
        """The value of an info command from one node: `host` (a node id or an address),
        else any node that answers."""
        cluster = self._live()
        if not isinstance(command, str) or not command:
            raise param_error("info command must be a non-empty str")
        deadline = _deadline(self._policy("info", policy))
        if host is not None:
            node, temporary = self._info_node(cluster, host)
            try:
                return cluster.exchange_value(node, wire.InfoMsg(command), deadline)
            finally:
                if temporary:
                    node.close()
        problem: RaftstoreError = error(ResultCode.CONNECTION_ERROR, "no node in the map")
        for node_id in _shuffled(cluster.node_ids()):
            member = cluster.node(node_id)
            if member is None:
                continue
            try:
                return cluster.exchange_value(member, wire.InfoMsg(command), deadline)
            except RaftstoreError as exc:
                if exc.code not in (ResultCode.CONNECTION_ERROR, ResultCode.TIMEOUT):
                    raise
                problem = exc
        raise problem

    info_single_node = info

    def info_random_node(self, command: str, policy: Mapping[str, Any] | None = None) -> Any:
        return self.info(command, None, policy)

    def info_all(self, command: str, policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`{node_id: value}` from every node of the map, asked at once; a node that fails
        has the exception instance as its value."""
        cluster = self._live()
        if not isinstance(command, str) or not command:
            raise param_error("info command must be a non-empty str")
        deadline = _deadline(self._policy("info", policy))
        return {
            node_id: outcome.failure if outcome.failure is not None else outcome.value
            for node_id, outcome in self._broadcast(cluster, wire.InfoMsg(command), deadline)
        }

    def _info_node(self, cluster: Cluster, host: object) -> tuple[Node, bool]:
        if isinstance(host, str):
            node = cluster.node(host)
            if node is None:
                raise param_error(f"no node {host!r} in the partition map")
            return node, False
        if not isinstance(host, tuple | list) or len(host) != 2:
            raise param_error("info host must be a node id or a (host, port) tuple")
        address: Address = (str(host[0]), check_int(host[1], "info host port", 1, 65535))
        current = cluster.map
        for node_id, known in ({} if current is None else current.nodes).items():
            if known == address:
                node = cluster.node(node_id)
                if node is not None:
                    return node, False
        return Node(f"{address[0]}:{address[1]}", address, cluster.options, 1), True

    def _broadcast(
        self,
        cluster: Cluster,
        message: wire.Request,
        deadline: float | None,
        node_ids: Sequence[str] | None = None,
        *,
        is_write: bool = False,
    ) -> list[tuple[str, _Outcome]]:
        """Send `message` to each node at once, then collect every answer."""
        started: list[tuple[str, Node | None, Any]] = []
        for node_id in cluster.node_ids() if node_ids is None else node_ids:
            node = cluster.node(node_id)
            try:
                if node is None:
                    raise error(ResultCode.CONNECTION_ERROR, f"no node {node_id!r} in the map")
                started.append((node_id, node, cluster.start_exchange(node, message, deadline)))
            except RaftstoreError as exc:
                started.append((node_id, None, exc))
        outcomes = []
        for node_id, node, sent in started:
            if node is None:
                outcomes.append((node_id, _Outcome(None, sent)))
                continue
            try:
                response = cluster.finish_exchange(node, sent, deadline, is_write=is_write)
            except RaftstoreError as exc:
                outcomes.append((node_id, _Outcome(None, exc)))
                continue
            if response.code == ResultCode.OK:
                outcomes.append((node_id, _Outcome(response.value, None)))
                continue
            unknown = response.in_doubt or not is_definite(response.code)
            failure = error(response.code, response.message, in_doubt=is_write and unknown)
            outcomes.append((node_id, _Outcome(None, failure)))
        return outcomes

    def truncate(
        self,
        namespace: str,
        set: str | None,
        nanos: int = 0,
        policy: Mapping[str, Any] | None = None,
    ) -> int:
        """Delete (durably) every record of the set (or of the namespace when `set` is None)
        last updated before `nanos` (ns since 1970; 0 = now). Returns the number of records
        deleted. Raises TimeoutError with in_doubt=True if only some partition groups were
        truncated within the total timeout."""
        with param_errors("truncate"):
            check_namespace_name(namespace)
            if set is not None:
                keys.check_set_name(set)
        cutoff = check_int(nanos, "truncate nanos", 0, limits.INT_MAX)
        before_ms = 0 if cutoff == 0 else max(cutoff // 1_000_000, 1)
        resolved = self._policy("info", policy)
        cluster = self._live()
        groups = self._namespace_groups(cluster, namespace)
        deadline = _deadline(resolved)
        progress = _TruncateProgress(groups)
        everyone = wire.TruncateMsg(namespace, set, before_ms, ())
        progress.record(self._broadcast(cluster, everyone, deadline, is_write=True))
        backoff_s = resolved.sleep_between_retries_ms / 1000 or 0.01
        while progress.missing():
            if deadline is not None and time.monotonic() >= deadline:
                raise error(
                    ResultCode.TIMEOUT,
                    f"truncate of {namespace}/{set}: groups {sorted(progress.missing())} not "
                    f"truncated ({progress.problem})",
                    in_doubt=progress.anything_may_have_happened(),
                )
            cluster.refresh(cluster.map)
            for group, leader in self._group_leaders(cluster, namespace, progress.missing()):
                one = wire.TruncateMsg(namespace, set, before_ms, (group,))
                progress.record(self._broadcast(cluster, one, deadline, [leader], is_write=True))
            if progress.missing():
                cluster.closed.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 0.2)
                if cluster.closed.is_set():
                    raise error(
                        ResultCode.CONNECTION_ERROR,
                        "client closed during truncate",
                        in_doubt=progress.anything_may_have_happened(),
                    )
        return progress.count

    def _group_leaders(
        self, cluster: Cluster, namespace: str, groups: set[int]
    ) -> list[tuple[int, str]]:
        current: PartitionMap | None = cluster.map
        space = None if current is None else current.namespaces.get(namespace)
        if space is None or current is None:
            return []
        found = []
        for group in sorted(groups):
            leader = space.leaders[group] if group < space.partition_groups else None
            if leader is not None and leader in current.nodes:
                found.append((group, leader))
        return found


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One node's part of a broadcast: the answer's value, or why there is none."""

    value: Any
    failure: RaftstoreError | None


class _TruncateProgress:
    """Which partition groups a truncate has covered, and whether any attempt is unknown."""

    _SETTLED_FAILURES = frozenset(
        {ResultCode.NAMESPACE_NOT_FOUND, ResultCode.PARAMETER_ERROR, ResultCode.FORBIDDEN}
    )

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.covered: set[int] = set()
        self.count = 0
        self.unknown = False
        self.problem = "no answer yet"

    def missing(self) -> set[int]:
        return set(range(self.groups)) - self.covered

    def anything_may_have_happened(self) -> bool:
        return self.unknown or bool(self.covered)

    def record(self, outcomes: list[tuple[str, _Outcome]]) -> None:
        for node_id, outcome in outcomes:
            failure = outcome.failure
            if failure is None:
                self._covered(node_id, outcome.value)
                continue
            self.problem = f"node {node_id}: {failure.msg}"
            if failure.in_doubt:
                self.unknown = True
            elif failure.code in self._SETTLED_FAILURES:
                raise error(failure.code, failure.msg, in_doubt=self.anything_may_have_happened())

    def _covered(self, node_id: str, value: Any) -> None:
        if not isinstance(value, Mapping):
            raise error(ResultCode.PROTOCOL_ERROR, f"node {node_id}: truncate value not a dict")
        groups, count = value.get("groups"), value.get("count", 0)
        if not isinstance(groups, list) or not all(_is_int(g) for g in groups):
            raise error(ResultCode.PROTOCOL_ERROR, f"node {node_id}: truncate groups not ints")
        if not _is_int(count):
            raise error(ResultCode.PROTOCOL_ERROR, f"node {node_id}: truncate count not an int")
        fresh = set(groups) - self.covered
        self.covered |= {g for g in fresh if 0 <= g < self.groups}
        self.count += count


# -- helpers ---------------------------------------------------------------------------------


def _text(value: object, what: str) -> str | bytes:
    if not isinstance(value, str | bytes):
        raise param_error(f"{what} value must be a str or bytes, not {type(value).__name__}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _deadline(policy: Policy) -> float | None:
    if not policy.total_timeout_ms:
        return None
    return time.monotonic() + policy.total_timeout_ms / 1000


def _shuffled(items: list[str]) -> list[str]:
    return random.sample(items, len(items))


def _items(value: object, what: str) -> list[Any]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise param_error(f"{what} must be a list, not {type(value).__name__}")
    return list(value)


def _bin_names(names: object, *, allow_empty: bool = False) -> list[str]:
    checked = []
    for name in _items(names, "bins"):
        with param_errors():
            checked.append(check_bin_name(name))
    if not checked and not allow_empty:
        raise param_error("bins must name at least one bin")
    return checked


def _write_ops(bins: object) -> tuple[Op, ...]:
    if not isinstance(bins, Mapping):
        raise param_error(f"bins must be a dict, not {type(bins).__name__}")
    if not bins:
        raise param_error("bins must hold at least one bin")
    ops = []
    for name, value in bins.items():
        with param_errors():
            check_bin_name(name)
            if value is not None:
                check_value(value, name)
        ops.append(op.write(name, value))
    return tuple(ops)


def _check_ops(ops: object) -> tuple[Op, ...]:
    checked = tuple(_items(ops, "ops"))
    if not checked:
        raise param_error("ops must hold at least one operation")
    if len(checked) > limits.OPS_PER_REQUEST_MAX:
        raise param_error(
            f"{len(checked)} operations is over the limit of {limits.OPS_PER_REQUEST_MAX}"
        )
    for item in checked:
        if not isinstance(item, Op):
            raise param_error(
                f"an operation must be built by client.operations / list_operations / "
                f"map_operations, not {type(item).__name__}"
            )
        with param_errors(f"operation {item.code.name}"):
            if item.bin is not None:
                check_bin_name(item.bin)
            for arg in item.args:
                _check_arg(arg, item.bin or "?")
    return checked


def _check_arg(arg: object, bin_name: str) -> None:
    if arg is not None:
        check_value(arg, bin_name)


def _meta(response: wire.Response) -> MetaDict:
    return {"gen": response.generation, "ttl": response.ttl}


def _bins(results: Sequence[tuple[str | None, Any]]) -> Bins:
    return {name: value for name, value in results if name is not None}


def _partition_ids(partitions: object) -> list[int]:
    if partitions is None:
        return list(range(limits.PARTITIONS))
    pids = sorted(
        {
            check_int(p, "partition id", 0, limits.PARTITIONS - 1)
            for p in _items(partitions, "partitions")
        }
    )
    if not pids:
        raise param_error("partitions must name at least one partition id")
    return pids


def _scan_page(value: Any) -> tuple[list[Any], list[int] | None, bytes | None]:
    if not isinstance(value, Mapping) or not isinstance(value.get("records"), list):
        raise error(ResultCode.PROTOCOL_ERROR, "scan page must be a dict with a records list")
    todo = value.get("next_partition_ids")
    after = value.get("after_digest")
    if todo is not None and (not isinstance(todo, list) or not all(_is_int(p) for p in todo)):
        raise error(ResultCode.PROTOCOL_ERROR, "scan next_partition_ids must be ints or None")
    if after is not None and (not isinstance(after, bytes) or len(after) != limits.DIGEST_BYTES):
        raise error(ResultCode.PROTOCOL_ERROR, "scan after_digest must be 20 bytes or None")
    return value["records"], todo or None, after


def _scan_record(namespace: str, record: Any) -> RecordTuple:
    try:
        digest, set_name, user_key, generation, ttl, bins = record
    except (TypeError, ValueError):
        raise error(ResultCode.PROTOCOL_ERROR, "scan record must have 6 fields") from None
    if not isinstance(digest, bytes) or len(digest) != limits.DIGEST_BYTES:
        raise error(ResultCode.PROTOCOL_ERROR, "scan record digest must be 20 bytes")
    if not isinstance(bins, dict) or not _is_int(generation) or not _is_int(ttl):
        raise error(ResultCode.PROTOCOL_ERROR, "scan record has a bad field")
    key: KeyTuple = (namespace, set_name or None, user_key, digest)
    return key, {"gen": generation, "ttl": ttl}, bins


class TransactionContext:
    """The `with client.transaction()` form: the record methods of `Client`, joined to one
    `Transaction` (`txn`)."""

    def __init__(self, client: Client, txn: Transaction) -> None:
        self.client = client
        self.txn = txn

    def __enter__(self) -> TransactionContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.client.commit(self.txn)
        elif not self.txn.in_doubt:
            self.client.abort(self.txn)

    def _policy(self, policy: Mapping[str, Any] | None) -> dict[str, Any]:
        return {**(policy or {}), "txn": self.txn}

    def get(self, key: object, policy: Mapping[str, Any] | None = None) -> RecordTuple:
        return self.client.get(key, self._policy(policy))

    def select(
        self, key: object, bins: Sequence[str], policy: Mapping[str, Any] | None = None
    ) -> RecordTuple:
        return self.client.select(key, bins, self._policy(policy))

    def exists(
        self, key: object, policy: Mapping[str, Any] | None = None
    ) -> tuple[KeyTuple, MetaDict | None]:
        return self.client.exists(key, self._policy(policy))

    def put(
        self,
        key: object,
        bins: Mapping[str, Any],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        self.client.put(key, bins, meta, self._policy(policy))

    def operate(
        self,
        key: object,
        ops: Sequence[Op],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> RecordTuple:
        return self.client.operate(key, ops, meta, self._policy(policy))

    def remove(
        self,
        key: object,
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        self.client.remove(key, meta, self._policy(policy))

    def batch_read(
        self,
        keys: Sequence[object],
        bins: Sequence[str] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> list[BatchRecord]:
        return self.client.batch_read(keys, bins, self._policy(policy))


def _take_txn(policy: object) -> tuple[Transaction | None, object]:
    """The policy's `txn` (a `Transaction`), and the policy without it."""
    if not isinstance(policy, Mapping) or "txn" not in policy:
        return None, policy
    txn = policy["txn"]
    if not isinstance(txn, Transaction):
        raise param_error(f"policy 'txn' must be a client.Transaction, not {type(txn).__name__}")
    rest = {name: value for name, value in policy.items() if name != "txn"}
    return txn, rest


def _settle_policy() -> Policy:
    return Policy(total_timeout_ms=SETTLE_WAIT_MS, socket_timeout_ms=SETTLE_WAIT_MS, max_retries=0)


def _commit_policy(time_left_ms: int) -> Policy:
    """A commit waits for the coordinator (up to the deadline, and its resolves after it);
    it is never resent: an unknown answer is settled by asking, not by committing again."""
    wait_ms = time_left_ms + COMMIT_MARGIN_MS
    return Policy(total_timeout_ms=wait_ms, socket_timeout_ms=wait_ms, max_retries=0)


def _local_response(
    record: Record | None, results: Sequence[tuple[str | None, Any]], now_ms: int
) -> wire.Response:
    if record is None or record.tombstone:
        return wire.Response(results=tuple(results))
    return wire.Response(
        generation=record.generation, ttl=ttl_left(record.void_time, now_ms), results=tuple(results)
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def client(config: Mapping[str, Any]) -> Client:
    """A client, not yet connected (as `aerospike.client(config)`); call `.connect()`."""
    return Client(config)


def connect(config: Mapping[str, Any]) -> Client:
    """A connected client."""
    return Client(config).connect()
