"""The cluster as the client sees it: the partition map, the nodes, and calls with retries.

Theory of operation:
- A `Call` is one logical request (a record request or a scan page) and all its attempts.
  `Cluster.run(calls)` drives a list of them in rounds: every call ready for an attempt is
  sent first, then the answers are awaited, so the calls of a batch are in flight together
  (pipelined on each node's connections), never one after another.
- Routing: an attempt goes to the leader of the partition group of its target partition in
  the current map. NOT_LEADER answers carry a map, adopted when not older; a connection that
  cannot be made or is lost makes the cluster refresh the map by asking another node.
- Exactly once: a record request takes a sequence number from `Sequences` when it is made and
  keeps it over all its attempts; every attempt carries `acked_seq`, the smallest number
  still outstanding. The server answers a repeat from its session table, so retrying a write
  cannot apply it twice.
- Retries. Free (bounded by the total timeout only): NOT_LEADER, PARTITION_UNAVAILABLE,
  CLUSTER_CHANGE, a connection refused before anything was sent; they back off a little
  (exponentially, from BACKOFF_MIN_S to BACKOFF_MAX_S, or `sleep_between_retries`).
  Counted (bounded by `max_retries` too): an attempt that reached or may have reached the
  server and whose outcome is unknown: no answer within the socket timeout, the connection
  lost after sending, TIMEOUT, or (writes only) any indeterminate code or an in-doubt answer.
- The in_doubt rule. A write is *in doubt* once an attempt was sent and its outcome is
  unknown. Only a later answer that speaks for the request's sequence number settles it: OK
  or a definite failure that the server decides by applying (or looking up) the request.
  Answers that turn an attempt away before it reaches the log (`TURNED_AWAY`) settle nothing.
  A call that ends while in doubt raises with `in_doubt=True`: never a definite failure,
  never a success. Reads are never in doubt.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from client.connection import Address, Connection, ConnectionOptions, Node, NotSent, Pending
from client.logger import get_logger
from client.policies import Policy
from client.routing import PartitionMap, parse_partition_map
from raftstore import wire
from raftstore.errors import RaftstoreError, ResultCode, error, is_definite

log = get_logger(__name__)

BACKOFF_MIN_S = 0.005
BACKOFF_MAX_S = 0.2
REFRESH_INTERVAL_MIN_S = 0.02  # map refreshes closer together than this are skipped
# The server deadline sent when the policy sets no timeout at all. Never 0: a server may read
# 0 as "already late" (ours clamps a request's timeout_ms to 10..120000 ms).
UNBOUNDED_ATTEMPT_MS = 120_000

# Definite answers that turn an attempt away before it reaches the replicated log: they say
# nothing about an earlier attempt of the same request, so they cannot settle a doubt.
TURNED_AWAY = frozenset(
    {
        ResultCode.NOT_LEADER,
        ResultCode.PARTITION_UNAVAILABLE,
        ResultCode.CLUSTER_CHANGE,
        ResultCode.PROTOCOL_ERROR,
        ResultCode.DEVICE_OVERLOAD,
        ResultCode.KEY_BUSY,
        ResultCode.SERVER_FULL,
        ResultCode.BATCH_MAX_REQUESTS,
    }
)
_FREE_RETRY_CODES = frozenset(
    {ResultCode.NOT_LEADER, ResultCode.PARTITION_UNAVAILABLE, ResultCode.CLUSTER_CHANGE}
)


class Sequences:
    """Request sequence numbers of one client, and the floor of those still outstanding."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 1
        self._outstanding: set[int] = set()
        self._heap: list[int] = []

    def begin(self) -> int:
        with self._lock:
            seq = self._next
            self._next += 1
            self._outstanding.add(seq)
            heapq.heappush(self._heap, seq)
            return seq

    def end(self, seq: int) -> None:
        with self._lock:
            self._outstanding.discard(seq)
            while self._heap and self._heap[0] not in self._outstanding:
                heapq.heappop(self._heap)

    def acked(self) -> int:
        """The smallest outstanding seq, or the next one when none is outstanding."""
        with self._lock:
            return self._heap[0] if self._heap else self._next


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    partition_id: int


class Call:
    """One logical request and the state of its attempts. Driven by `Cluster.run`."""

    def __init__(
        self,
        target: Target,
        message: wire.RecordMsg | wire.ScanMsg | wire.TxnCommitMsg | wire.TxnStepMsg,
        *,
        is_write: bool,
        policy: Policy,
        seq: int = 0,
    ) -> None:
        now = time.monotonic()
        self.target = target
        self.message = message
        self.is_write = is_write
        self.policy = policy
        self.seq = seq
        self.deadline = now + policy.total_timeout_ms / 1000 if policy.total_timeout_ms else None
        self.failures = 0  # counted retries used
        self.free_retries = 0
        self.doubt = False  # a sent attempt's outcome is unknown and nothing settled it
        self.problem = ""  # why the last attempt failed, for the final message
        self.retry_at = now
        self.node_id: str | None = None
        self.connection: Connection | None = None
        self.pending: Pending | None = None
        self.attempt_deadline: float | None = None
        self.response: wire.Response | None = None
        self.error: RaftstoreError | None = None

    @property
    def done(self) -> bool:
        return self.response is not None or self.error is not None

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def attempt_message(self, acked_seq: int, now: float) -> wire.Request:
        """The message of the next attempt; sets the attempt's deadline. The server gets the
        time the client will wait for this attempt (UNBOUNDED_ATTEMPT_MS when unbounded)."""
        ends = [] if self.deadline is None else [self.deadline]
        if self.policy.socket_timeout_ms:
            ends.append(now + self.policy.socket_timeout_ms / 1000)
        self.attempt_deadline = min(ends) if ends else None
        if not isinstance(self.message, wire.RecordMsg):
            return self.message
        timeout_ms = UNBOUNDED_ATTEMPT_MS
        if self.attempt_deadline is not None:
            timeout_ms = max(int((self.attempt_deadline - now) * 1000), 1)
        return replace(
            self.message, request_seq=self.seq, acked_seq=acked_seq, timeout_ms=timeout_ms
        )

    def raise_for_error(self) -> wire.Response:
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


class Cluster:
    """The partition map, the node pools, and the retry loop. Safe to share between threads."""

    def __init__(
        self,
        seeds: Sequence[Address],
        options: ConnectionOptions,
        max_connections: int,
    ) -> None:
        self.seeds = tuple(seeds)
        self.options = options
        self.max_connections = max_connections
        self.sequences = Sequences()
        self.closed = threading.Event()
        self._lock = threading.Lock()  # guards _map and _nodes
        self._refresh_lock = threading.Lock()
        self._map: PartitionMap | None = None
        self._nodes: dict[str, Node] = {}
        self._refreshed_at = 0.0

    # -- the map and the nodes ----------------------------------------------------------------

    @property
    def map(self) -> PartitionMap | None:
        return self._map

    def adopt(self, raw: Any) -> bool:
        """Use the map `raw` (a partition-map value) unless it is older than the current."""
        if raw is None:
            return False
        try:
            candidate = parse_partition_map(raw)
        except RaftstoreError as exc:
            log.warning("partition_map_rejected", reason=exc.msg)
            return False
        with self._lock:
            current = self._map
            merged = candidate if current is None else current.merged(candidate)
            if merged == current:
                return False
            log.debug("partition_map_adopted", version=merged.version)
            self._map = merged
        return True

    def forget_leader(self, namespace: str, partition_id: int, node_id: str) -> None:
        """`node_id` answered that it does not lead the partition's group: stop sending there
        until a map names a leader (replicas are asked meanwhile)."""
        with self._lock:
            current = self._map
            if current is not None and current.leader(namespace, partition_id) == node_id:
                self._map = current.without_leader(namespace, partition_id)

    def node(self, node_id: str) -> Node | None:
        """The node `node_id` of the current map (None if the map does not know it)."""
        with self._lock:
            current = self._map
            address = None if current is None else current.nodes.get(node_id)
            if address is None or self.closed.is_set():
                return None
            node = self._nodes.get(node_id)
            if node is not None and node.address == address:
                return node
            stale = node
            node = Node(node_id, address, self.options, self.max_connections)
            self._nodes[node_id] = node
        if stale is not None:
            stale.close()
        return node

    def node_ids(self) -> list[str]:
        current = self._map
        return [] if current is None else sorted(current.nodes)

    def connect(self) -> None:
        """Fetch the first map from the first seed that answers; ConnectionError if none."""
        problems = []
        for address in self.seeds:
            try:
                self.adopt(self._fetch_map(address))
            except RaftstoreError as exc:
                problems.append(f"{address[0]}:{address[1]}: {exc.msg}")
                continue
            if self._map is not None:
                log.info("connected", seed=address, version=self._map.version)
                return
            problems.append(f"{address[0]}:{address[1]}: the partition map did not parse")
        raise error(
            ResultCode.CONNECTION_ERROR,
            "no seed host answered with a partition map: " + "; ".join(problems),
        )

    def _fetch_map(self, address: Address) -> Any:
        seed = Node(f"seed {address[0]}:{address[1]}", address, self.options, 1)
        try:
            return self.exchange_value(seed, wire.InfoMsg("partition-map"), self._info_deadline())
        finally:
            seed.close()

    def _info_deadline(self) -> float:
        return time.monotonic() + self.options.connect_timeout_s

    def refresh(self, observed: PartitionMap | None, avoid: str | None = None) -> None:
        """Ask another node (or a seed) for the map, unless someone did since `observed`."""
        with self._refresh_lock:
            if self._map is not observed or self.closed.is_set():
                return  # another thread refreshed already, or the client is closing
            if time.monotonic() - self._refreshed_at < REFRESH_INTERVAL_MIN_S:
                return
            try:
                self._refresh(avoid)
            finally:
                self._refreshed_at = time.monotonic()

    def _refresh(self, avoid: str | None) -> None:
        candidates = [node_id for node_id in self.node_ids() if node_id != avoid]
        random.shuffle(candidates)
        for node_id in candidates:
            node = self.node(node_id)
            if node is None:
                continue
            try:
                if self.adopt(
                    self.exchange_value(node, wire.InfoMsg("partition-map"), self._info_deadline())
                ):
                    return
            except RaftstoreError as exc:
                log.debug("map_refresh_failed", node=node_id, reason=exc.msg)
        for address in self.seeds:
            try:
                if self.adopt(self._fetch_map(address)):
                    return
            except RaftstoreError as exc:
                log.debug("map_refresh_failed", seed=address, reason=exc.msg)
        log.warning("map_refresh_found_no_node")

    def close(self) -> None:
        self.closed.set()
        with self._lock:
            nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            node.close()

    # -- one request to one node (info, truncate, map fetches) ----------------------------------

    def start_exchange(
        self, node: Node, message: wire.Request, deadline: float | None
    ) -> tuple[Connection, Pending]:
        """Send `message` to `node`; ConnectionError (nothing sent) if it cannot be sent."""
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        try:
            connection = node.connection(remaining)
            return connection, connection.send(message)
        except (OSError, NotSent) as exc:
            raise error(
                ResultCode.CONNECTION_ERROR, f"cannot send to node {node.node_id}: {exc}"
            ) from None

    def finish_exchange(
        self,
        node: Node,
        sent: tuple[Connection, Pending],
        deadline: float | None,
        *,
        is_write: bool,
    ) -> wire.Response:
        """The answer to a started exchange; TimeoutError / ConnectionError (in doubt for a
        write) when it does not come."""
        connection, pending = sent
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not pending.wait(remaining):
            connection.abandon(pending)
            if not pending.event.is_set():
                raise error(
                    ResultCode.TIMEOUT, f"no answer from node {node.node_id}", in_doubt=is_write
                )
        if pending.response is None:
            raise error(
                ResultCode.CONNECTION_ERROR,
                f"connection to node {node.node_id} lost: {pending.lost}",
                in_doubt=is_write,
            )
        return pending.response

    def exchange_value(self, node: Node, message: wire.Request, deadline: float | None) -> Any:
        """The value of a read-only request's answer; the answer's error if it is one."""
        response = self.finish_exchange(
            node, self.start_exchange(node, message, deadline), deadline, is_write=False
        )
        if response.code != ResultCode.OK:
            raise error(response.code, response.message)
        return response.value

    # -- calls with routing and retries ---------------------------------------------------------

    def run(self, calls: Sequence[Call]) -> None:
        """Drive `calls` until each has a response or an error (never raises for them)."""
        active = [call for call in calls if not call.done]
        try:
            while active:
                now = time.monotonic()
                for call in active:
                    if call.retry_at <= now:
                        self._start(call)
                for call in active:
                    if call.pending is not None:
                        self._finish(call)
                active = [call for call in active if not call.done]
                if active:
                    delay = min(call.retry_at for call in active) - time.monotonic()
                    if delay > 0:
                        self.closed.wait(delay)
        finally:
            for call in active:  # only if interrupted: no call may keep its seq outstanding
                if not call.done:
                    sent = call.pending is not None
                    if call.pending is not None and call.connection is not None:
                        call.connection.abandon(call.pending)
                    doubt = call.doubt or (sent and call.is_write)
                    self._fail(call, ResultCode.CLIENT_ERROR, "interrupted", in_doubt=doubt)

    def _complete(
        self, call: Call, response: wire.Response | None, exc: RaftstoreError | None = None
    ) -> None:
        call.response = response
        call.error = exc
        call.pending = None
        if call.seq:
            self.sequences.end(call.seq)

    def _fail(self, call: Call, code: int, msg: str, *, in_doubt: bool = False) -> None:
        self._complete(call, None, error(code, msg, in_doubt=in_doubt))

    def _start(self, call: Call) -> None:
        now = time.monotonic()
        if self.closed.is_set():
            self._fail(call, ResultCode.CONNECTION_ERROR, "client is closed", in_doubt=call.doubt)
            return
        if call.expired(now):
            reason = f" (last: {call.problem})" if call.problem else ""
            self._fail(call, ResultCode.TIMEOUT, f"total timeout{reason}", in_doubt=call.doubt)
            return
        current = self._map
        namespace = call.target.namespace
        if current is None or namespace not in current.namespaces:
            if call.free_retries == 0:
                self.refresh(current)
                self._backoff(call, now, f"namespace {namespace!r} is not in the partition map")
                return
            self._fail(call, ResultCode.NAMESPACE_NOT_FOUND, f"no namespace {namespace!r}")
            return
        node_id = current.leader(namespace, call.target.partition_id)
        if node_id is None:
            # Not known to the node that sent the map: ask a replica of the group, which
            # redirects with its leader (or serves, if it leads by now).
            replicas = current.replicas(namespace, call.target.partition_id)
            if replicas:
                node_id = replicas[(call.free_retries + call.failures) % len(replicas)]
        node = None if node_id is None else self.node(node_id)
        if node is None:
            self.refresh(current)
            self._backoff(call, now, "no leader for the partition group in the map")
            return
        try:
            connection = node.connection(self._connect_timeout(call, now))
            message = call.attempt_message(self.sequences.acked(), now)
            call.pending = connection.send(message)
        except (OSError, NotSent) as exc:
            self.refresh(current, avoid=node.node_id)
            self._backoff(call, now, f"cannot send to node {node.node_id}: {exc}")
            return
        except RaftstoreError as exc:  # the request cannot be encoded: nothing was sent
            code = ResultCode.PARAM_ERROR if exc.code == ResultCode.PARAMETER_ERROR else exc.code
            self._fail(call, code, exc.msg, in_doubt=call.doubt)
            return
        call.node_id = node.node_id
        call.connection = connection

    def _connect_timeout(self, call: Call, now: float) -> float | None:
        return None if call.deadline is None else max(call.deadline - now, 0.001)

    def _backoff(self, call: Call, now: float, problem: str) -> None:
        """A free retry: nothing of this attempt reached the log."""
        call.problem = problem
        delay = call.policy.sleep_between_retries_ms / 1000 or min(
            BACKOFF_MIN_S * 2**call.free_retries, BACKOFF_MAX_S
        )
        call.free_retries += 1
        call.retry_at = now + delay
        if call.deadline is not None:
            call.retry_at = min(call.retry_at, call.deadline)
        log.debug("retry_free", problem=problem, seq=call.seq, retries=call.free_retries)

    def _finish(self, call: Call) -> None:
        pending, connection = call.pending, call.connection
        assert pending is not None and connection is not None and call.node_id is not None
        call.pending = None
        now = time.monotonic()
        timeout = None if call.attempt_deadline is None else max(call.attempt_deadline - now, 0)
        if not pending.wait(timeout):
            connection.abandon(pending)
        if not pending.event.is_set():
            self._unknown(call, ResultCode.TIMEOUT, f"no answer from node {call.node_id}")
            # A silent node may be paused or cut off while the others elect a new leader:
            # ask another node rather than keep waiting on this one.
            self.refresh(self._map, avoid=call.node_id)
        elif pending.response is None:
            self._unknown(
                call,
                ResultCode.CONNECTION_ERROR,
                f"connection to node {call.node_id} lost: {pending.lost}",
            )
            self.refresh(self._map, avoid=call.node_id)
        else:
            self._answered(call, pending.response)

    def _unknown(self, call: Call, code: int, problem: str) -> None:
        """A counted retry: the attempt may have reached the server."""
        now = time.monotonic()
        call.problem = problem
        if call.is_write:
            call.doubt = True
        call.failures += 1
        if call.failures > call.policy.max_retries or call.expired(now):
            self._fail(call, code, problem, in_doubt=call.doubt)
            return
        call.retry_at = now + call.policy.sleep_between_retries_ms / 1000
        log.debug("retry", problem=problem, seq=call.seq, failures=call.failures)

    def _answered(self, call: Call, response: wire.Response) -> None:
        code = response.code
        node_id = call.node_id
        if code == ResultCode.OK:
            self._complete(call, response)
            return
        self.adopt(response.partition_map)
        if code in _FREE_RETRY_CODES and not response.in_doubt:
            current = self._map
            leader = None if current is None else current.leader(*_where(call))
            if code == ResultCode.NOT_LEADER and leader is not None and leader != node_id:
                call.problem = f"node {node_id} is not the leader; redirected to {leader}"
                call.free_retries += 1
                call.retry_at = time.monotonic()
                return
            if code == ResultCode.NOT_LEADER:
                if leader is not None and leader == node_id:
                    self.forget_leader(*_where(call), leader)
                self.refresh(self._map, avoid=node_id)
            self._backoff(call, time.monotonic(), f"node {node_id}: {response.message or code}")
            return
        msg = response.message or f"node {node_id} answered {code}"
        if response.in_doubt or not is_definite(code):
            retryable = code == ResultCode.TIMEOUT or (
                call.is_write and code != ResultCode.SESSION_EXPIRED
            )
            if retryable:
                self._unknown(call, code, msg)
                return
            call.doubt = call.doubt or call.is_write
            self._fail(call, code, msg, in_doubt=call.doubt)
            return
        settles = code not in TURNED_AWAY
        self._fail(call, code, msg, in_doubt=call.doubt and not settles)


def _where(call: Call) -> tuple[str, int]:
    return call.target.namespace, call.target.partition_id
