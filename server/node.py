"""A raftstore node: the partition groups it replicates, and the answers to client requests.

The node is thread-safe and transport-free: `submit(request, now_ms, reply)` answers through
`reply` exactly once, on the calling thread when the answer is ready at once (a session read,
a refusal) and otherwise on a group's worker thread, one batch of answers after another (the
asyncio listener, server/listener.py, hands them to its loop). `dispatch(request, now_ms)` is
the same with a `concurrent.futures.Future[Response]`.

Routing rules:
- partition p of namespace ns belongs to group p % partition-groups; a group's replicas are
  fixed by the config (`NodeConfig.placements`);
- a record request for a group this node does not lead is answered NOT_LEADER with the
  partition map, so the client can go to the leader;
- writes go through the group's log (exactly-once sessions, group commit); read-only
  requests are served by the leader: LINEARIZE after a barrier, SESSION at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from raftstore import keys, limits
from raftstore.clock import ttl_left
from raftstore.commands import RecordRequest, Result, Truncate
from raftstore.config import NamespaceConfig
from raftstore.engine import Engine
from raftstore.errors import RaftstoreError, ResultCode, error, is_definite
from raftstore.group import GroupRuntime, make_apply
from raftstore.ops import is_read_only
from raftstore.raft_log import PysyncobjLog, RaftOptions
from raftstore.replication import Role
from raftstore.wire import (
    InfoMsg,
    ReadMode,
    RecordMsg,
    Request,
    Response,
    ScanMsg,
    TruncateMsg,
    TxnCommitMsg,
    TxnStepMsg,
)
from server.config import GroupPlacement, NodeConfig
from server.peer import Peer
from server.txn_service import TxnService

log = structlog.get_logger(__name__)

VERSION = "0.1.0"
JOBS_PERIOD_S = 1.0
BALANCE_PERIOD_S = 5.0
SCAN_PAGE_MAX = 10_000


@dataclass
class LocalGroup:
    placement: GroupPlacement
    engine: Engine
    log: PysyncobjLog
    runtime: GroupRuntime


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.started_s = time.monotonic()
        self.groups: dict[tuple[str, int], LocalGroup] = {}
        self._namespaces = {namespace.name: namespace for namespace in config.namespaces}
        self.counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()
        self._stop = threading.Event()
        self._jobs_thread: threading.Thread | None = None
        self.txns = TxnService(self, Peer(self.map))

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        me = self.config.node_id
        for placement in self.config.placements():
            if me not in placement.replicas:
                continue
            namespace = self.config.namespace(placement.namespace)
            assert namespace is not None
            group_dir = self.config.data_dir / placement.namespace / f"group-{placement.group}"
            engine = Engine(group_dir / "store", namespace)
            raft_log = self._open_log(placement, engine, group_dir)
            runtime = GroupRuntime(raft_log, engine)
            self.groups[(placement.namespace, placement.group)] = LocalGroup(
                placement, engine, raft_log, runtime
            )
        self._jobs_thread = threading.Thread(target=self._run_jobs, name="jobs", daemon=True)
        self._jobs_thread.start()
        log.info("node_started", node=me, groups=len(self.groups))

    def _open_log(self, placement: GroupPlacement, engine: Engine, group_dir: Path) -> PysyncobjLog:
        addresses = {
            node_id: self.config.node(node_id).raft_address(placement.index)
            for node_id in placement.replicas
        }
        return PysyncobjLog(
            self.config.node_id,
            addresses=addresses,
            apply=make_apply(engine),
            group_dir=group_dir / "raft",
            secret=self.config.secret,
            snapshot=engine,
            options=RaftOptions(
                durable=engine.namespace.commit_to_device,
                log_compaction_min_entries=self.config.log_compaction_entries,
            ),
        )

    def stop(self) -> None:
        self._stop.set()
        if self._jobs_thread is not None:
            self._jobs_thread.join(timeout=10)
        self.txns.close()
        for group in self.groups.values():
            group.runtime.close()
        for group in self.groups.values():
            group.log.close()
        for group in self.groups.values():
            group.engine.close()
        log.info("node_stopped", node=self.config.node_id)

    # -- requests ----------------------------------------------------------------------------

    def dispatch(self, request: Request, now_ms: int) -> Future[Response]:
        """Answer one request; never raises (errors become responses)."""
        answer: Future[Response] = Future()
        self.submit(request, now_ms, answer.set_result)
        return answer

    def submit(self, request: Request, now_ms: int, reply: Callable[[Response], None]) -> None:
        """Answer one request through `reply` (module docstring); never raises."""
        try:
            if isinstance(request, RecordMsg):
                self._record(request, now_ms, reply)
                return
            if isinstance(request, TxnCommitMsg):
                self._txn_commit(request, now_ms, reply)
                return
            if isinstance(request, TxnStepMsg):
                self._txn_step(request, reply)
                return
            if isinstance(request, InfoMsg):
                answer = _done(Response(value=self.info(request.command)))
            elif isinstance(request, ScanMsg):
                answer = self._scan(request, now_ms)
            else:
                answer = self._truncate(request, now_ms)
        except RaftstoreError as exc:
            reply(self._error_response(exc))
            return
        answer.add_done_callback(lambda done: reply(done.result()))

    def _error_response(self, exc: RaftstoreError) -> Response:
        redirect = self.map() if exc.code == ResultCode.NOT_LEADER else None
        return Response(code=exc.code, message=exc.msg, partition_map=redirect)

    def _record(self, request: RecordMsg, now_ms: int, reply: Callable[[Response], None]) -> None:
        self._count("requests_record")
        namespace = self._namespaces.get(request.namespace)
        if namespace is None:
            raise error(ResultCode.NAMESPACE_NOT_FOUND, f"no namespace {request.namespace!r}")
        if not request.ops or len(request.ops) > limits.OPS_PER_REQUEST_MAX:
            raise error(ResultCode.PARAMETER_ERROR, "a request has 1..1024 operations")
        if request.user_key is not None:
            expected = keys.calc_digest(request.namespace, request.set_name, request.user_key)
            if expected != request.digest:
                raise error(ResultCode.KEY_MISMATCH, "the digest does not match the user key")
        group = self._leading(namespace, request.digest)
        if is_read_only(request.ops):
            linearize = request.read_mode == ReadMode.LINEARIZE

            def read(result: Result) -> None:
                if result.code == ResultCode.MRT_BLOCKED:  # a write intent: ask its home
                    self.txns.read_through(
                        namespace.name,
                        group,
                        digest=request.digest,
                        ops=request.ops,
                        now=now_ms,
                        reply=lambda seen: self._reply(reply, seen, now_ms, write=False),
                    )
                    return
                self._reply(reply, result, now_ms, write=False)

            group.runtime.read_to(request.digest, request.ops, now_ms, linearize, read)
            return
        command = RecordRequest(
            client_id=request.client_id,
            request_seq=request.request_seq,
            acked_seq=request.acked_seq,
            now_ms=now_ms,
            digest=request.digest,
            set_name=request.set_name,
            ops=request.ops,
            policy=request.policy,
            user_key=request.user_key,
        )
        group_id = group.placement.group

        def written(result: Result) -> None:
            if result.code == ResultCode.MRT_BLOCKED:
                self.txns.note_blocked(namespace.name, group_id, result)
            self._reply(reply, result, now_ms, write=True)

        group.runtime.submit_to(command, written)

    def _txn_commit(
        self, request: TxnCommitMsg, now_ms: int, reply: Callable[[Response], None]
    ) -> None:
        self._count("requests_txn_commit")
        namespace = self._namespaces.get(request.namespace)
        if namespace is None:
            raise error(ResultCode.NAMESPACE_NOT_FOUND, f"no namespace {request.namespace!r}")
        # Any participant's leader may coordinate (docs/transactions.md, "How it runs"): the
        # SDK picks a group other than the home group when there is one.
        digests = [r.digest for r in request.reads] + [w.digest for w in request.writes]
        if request.home_digest not in digests:  # before routing: no node would take it
            raise error(ResultCode.PARAMETER_ERROR, "the home digest is not a key of the txn")
        groups = {keys.partition_id(d) % namespace.partition_groups for d in digests}
        if not any(self.local_leader(namespace.name, g) is not None for g in groups):
            raise _not_leader(f"this node leads no group of transaction {request.txn_id}")
        self.txns.commit(request, now_ms, reply)

    def _txn_step(self, request: TxnStepMsg, reply: Callable[[Response], None]) -> None:
        self._count("requests_txn_step")
        if not 0 <= request.group < self.group_count(request.namespace):
            raise error(ResultCode.PARAMETER_ERROR, f"no group {request.group}")
        group = self.local_leader(request.namespace, request.group)
        if group is None:
            raise _not_leader(f"this node does not lead {request.namespace}/{request.group}")
        self.txns.step(request, group, reply)

    def _reply(
        self, reply: Callable[[Response], None], result: Result, now_ms: int, *, write: bool
    ) -> None:
        try:
            response = self._record_response(result, now_ms, write=write)
        except Exception as exc:
            log.exception("response_failed")
            response = Response(code=ResultCode.SERVER_ERROR, message=repr(exc), in_doubt=write)
        reply(response)

    def _record_response(self, result: Result, now_ms: int, *, write: bool) -> Response:
        if result.code == ResultCode.NOT_LEADER:
            return Response(code=result.code, message=result.message, partition_map=self.map())
        if result.code != ResultCode.OK:
            self._count(f"error_{result.code}")
        return Response(
            code=result.code,
            message=result.message,
            generation=result.generation,
            ttl=ttl_left(result.void_time, now_ms) if result.generation else 0,
            results=result.results,
            in_doubt=write and not is_definite(result.code),
            last_update_ms=result.last_update_ms,
        )

    def _leading(self, namespace: NamespaceConfig, digest: bytes) -> LocalGroup:
        """The local group owning `digest`, if this node leads it; else NOT_LEADER."""
        group_id = keys.partition_id(digest) % namespace.partition_groups
        group = self.groups.get((namespace.name, group_id))
        if group is None or not group.runtime.is_leader():
            raise _not_leader(f"this node does not lead {namespace.name}/{group_id}")
        return group

    def local_leader(self, namespace: str, group_id: int) -> LocalGroup | None:
        """The local group `group_id` of `namespace` if this node leads it."""
        group = self.groups.get((namespace, group_id))
        if group is None or not group.runtime.is_leader():
            return None
        return group

    def group_count(self, namespace: str) -> int:
        config = self._namespaces.get(namespace)
        if config is None:
            raise error(ResultCode.NAMESPACE_NOT_FOUND, f"no namespace {namespace!r}")
        return config.partition_groups

    def _scan(self, request: ScanMsg, now_ms: int) -> Future[Response]:
        self._count("requests_scan")
        group_count = self.group_count(request.namespace)
        group_ids = {pid % group_count for pid in request.partition_ids}
        if len(group_ids) != 1:
            raise error(ResultCode.PARAMETER_ERROR, "a scan page covers one partition group")
        group = self.groups.get((request.namespace, group_ids.pop()))
        if group is None or not group.runtime.is_leader():
            raise _not_leader("this node does not lead the scanned group")
        if request.read_mode == ReadMode.LINEARIZE:
            barrier = group.runtime.barrier()
            return _then(barrier, lambda r: self._scan_page(group, request, now_ms, r))
        return _done(self._scan_page(group, request, now_ms, Result()))

    def _scan_page(
        self, group: LocalGroup, request: ScanMsg, now_ms: int, barrier: Result
    ) -> Response:
        if barrier.code != ResultCode.OK:
            return self._record_response(barrier, now_ms, write=False)
        page_max = min(request.max_records, SCAN_PAGE_MAX)
        records: list[list[Any]] = []
        remaining = list(request.partition_ids)
        after = request.after_digest
        while remaining and len(records) < page_max:
            pid = remaining[0]
            for digest, record in group.engine.scan([pid], request.set_name, after=after):
                if record.is_live(now_ms):
                    records.append(
                        [
                            digest,
                            record.set_name,
                            record.user_key,
                            record.generation,
                            ttl_left(record.void_time, now_ms),
                            record.bins,
                        ]
                    )
                after = digest
                if len(records) >= page_max:
                    break
            else:
                remaining.pop(0)
                after = None
        done = not remaining
        value = {
            "records": records,
            "next_partition_ids": None if done else remaining,
            "after_digest": None if done else after,
        }
        return Response(value=value)

    def _truncate(self, request: TruncateMsg, now_ms: int) -> Future[Response]:
        self._count("requests_truncate")
        group_count = self.group_count(request.namespace)
        wanted = request.groups or tuple(range(group_count))
        before_ms = request.before_ms or now_ms
        command = Truncate(now_ms=now_ms, set_name=request.set_name, before_ms=before_ms)
        pending: dict[int, Future[Result]] = {}
        for group_id in wanted:
            group = self.groups.get((request.namespace, group_id))
            if group is not None and group.runtime.is_leader():
                pending[group_id] = group.runtime.submit(command)
        answer: Future[Response] = Future()

        def collect(_: Future[Result]) -> None:
            if not all(f.done() for f in pending.values()) or answer.done():
                return
            done = [g for g, f in pending.items() if f.result().code == ResultCode.OK]
            count = sum(f.result().count for f in pending.values() if f.result().ok)
            answer.set_result(Response(value={"groups": sorted(done), "count": count}))

        if not pending:
            answer.set_result(Response(value={"groups": [], "count": 0}))
        for future in pending.values():
            future.add_done_callback(collect)
        return answer

    # -- info --------------------------------------------------------------------------------

    def info(self, command: str) -> Any:
        self._count("requests_info")
        name, _, argument = command.partition("/")
        if name == "namespaces":
            return [ns.name for ns in self.config.namespaces]
        if name == "namespace":
            return self._namespace_info(argument)
        if name == "statistics":
            return self._statistics()
        if name == "partition-map":
            return self.map()
        if name == "cluster-stable":
            return self._stability()
        if name == "status":
            return self._status()
        if name == "build":
            return VERSION
        raise error(ResultCode.PARAMETER_ERROR, f"unknown info command {command!r}")

    def map(self) -> dict[str, Any]:
        """The partition map as this node knows it (leaders it has heard of)."""
        nodes = {n.node_id: [n.host, n.port] for n in self.config.nodes}
        namespaces: dict[str, Any] = {}
        version = 0
        for placement in self.config.placements():
            entry = namespaces.setdefault(
                placement.namespace,
                {"partition_groups": 0, "leaders": [], "replicas": []},
            )
            entry["partition_groups"] += 1
            entry["replicas"].append(list(placement.replicas))
            group = self.groups.get((placement.namespace, placement.group))
            leader = None
            if group is not None:
                status = group.log.status()
                leader = status.leader
                version += status.term
            entry["leaders"].append(leader)
        return {"version": version, "nodes": nodes, "namespaces": namespaces}

    def _namespace_info(self, name: str) -> dict[str, Any]:
        config = self._namespaces.get(name)
        if config is None:
            raise error(ResultCode.NAMESPACE_NOT_FOUND, f"no namespace {name!r}")
        totals: Counter[str] = Counter()
        for (namespace, _), group in sorted(self.groups.items()):
            if namespace != name:
                continue
            stats = group.engine.stats()
            leading = group.runtime.is_leader()
            totals["objects"] += stats.records
            totals["tombstones"] += stats.tombstones
            totals["index_bytes"] += stats.memory_bytes
            totals["leader_objects" if leading else "replica_objects"] += stats.records
            totals["groups_led"] += int(leading)
            totals["groups_replicated"] += 1
        return {
            **{key: totals[key] for key in sorted(totals)},
            "config": {
                "replication-factor": config.replication_factor,
                "partition-groups": config.partition_groups,
                "strong-consistency": config.strong_consistency,
                "commit-to-device": config.commit_to_device,
                "default-ttl": config.default_ttl_s,
                "max-record-size": config.max_record_bytes,
                "tomb-raider-period": config.tomb_raider_period_s,
            },
        }

    def _statistics(self) -> dict[str, Any]:
        with self._counters_lock:
            counters = dict(self.counters)
        return {
            "node": self.config.node_id,
            "uptime_s": round(time.monotonic() - self.started_s, 1),
            "groups": len(self.groups),
            "groups_led": sum(g.runtime.is_leader() for g in self.groups.values()),
            **{f"txn_{name}": count for name, count in sorted(self.txns.counters.items())},
            **counters,
        }

    def _status(self) -> dict[str, Any]:
        groups = {}
        for (namespace, group_id), group in sorted(self.groups.items()):
            runtime = group.runtime.status()
            status = runtime.log
            groups[f"{namespace}/{group_id}"] = {
                "role": status.role.value,
                "term": status.term,
                "leader": status.leader,
                "commit_index": status.commit_index,
                "applied_index": status.applied_index,
                "log_entries": status.log_entries,
                # proposed by this replica while it led: commands per entry is the batching
                "entries_proposed": runtime.entries_proposed,
                "commands_proposed": runtime.commands_proposed,
                "barriers_proposed": runtime.barriers_proposed,
            }
        me = self.config.me
        return {
            "node": me.node_id,
            "listen": [me.host, me.port],
            "leads": sorted(name for name, g in groups.items() if g["role"] == "leader"),
            "groups": groups,
        }

    def _stability(self) -> dict[str, Any]:
        """Stable when every local group has a leader and this replica applied its commits."""
        unsettled = []
        for (namespace, group_id), group in sorted(self.groups.items()):
            status = group.log.status()
            if status.leader is None or status.applied_index < status.commit_index:
                unsettled.append(f"{namespace}/{group_id}")
        return {"stable": not unsettled, "unsettled": unsettled}

    # -- background --------------------------------------------------------------------------

    def _run_jobs(self) -> None:
        last_balance = time.monotonic()
        while not self._stop.wait(JOBS_PERIOD_S):
            now_ms = time.time_ns() // 1_000_000
            for group in list(self.groups.values()):
                try:
                    group.runtime.run_jobs(now_ms)
                except Exception:
                    log.exception("jobs_failed", group=group.placement.name)
            try:
                self.txns.sweep(now_ms)
            except Exception:
                log.exception("txn_sweep_failed")
            if time.monotonic() - last_balance >= BALANCE_PERIOD_S:
                last_balance = time.monotonic()
                self._balance_leaders()

    def _balance_leaders(self) -> None:
        """Hand each group back to its preferred leader (replicas[0]) once that one is back."""
        me = self.config.node_id
        for group in self.groups.values():
            preferred = group.placement.replicas[0]
            if preferred == me or group.log.status().role != Role.LEADER:
                continue
            # Best effort: pysyncobj refuses until the preferred replica has caught up.
            log.info("leadership_transfer", group=group.placement.name, to=preferred)
            group.log.transfer_leadership(preferred)

    def _count(self, name: str) -> None:
        with self._counters_lock:
            self.counters[name] += 1


def _not_leader(message: str) -> RaftstoreError:
    return error(ResultCode.NOT_LEADER, message)


def _done(response: Response) -> Future[Response]:
    future: Future[Response] = Future()
    future.set_result(response)
    return future


def _then(source: Future[Result], convert: Callable[[Result], Response]) -> Future[Response]:
    target: Future[Response] = Future()

    def forward(done: Future[Result]) -> None:
        try:
            target.set_result(convert(done.result()))
        except Exception as exc:
            log.exception("response_failed")
            target.set_result(Response(code=ResultCode.SERVER_ERROR, message=repr(exc)))

    source.add_done_callback(forward)
    return target
