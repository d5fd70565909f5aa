"""Calls from this node to the leaders of partition groups it does not lead.

A transaction's coordinator prepares, decides and resolves in groups led by other nodes, and
a read that meets a write intent asks the intent's home group for the transaction's state.
Both send `TxnStepMsg` frames of the ordinary client protocol to the group's leader, which
answers as it answers any client (its redirects, its in-doubt rules): no second protocol.

Why not the SDK: a step through `client.Client` cost a pool thread's hand-off, the SDK's
reader thread's and its retry machinery, about ten thread switches a step and a tenth of a
cross-group transaction's CPU. Here one thread runs an asyncio loop with one pipelined
connection per node: a step is one frame out and one frame in.

`Peer.step(namespace, group, command, txn_id, reply)` may be called from any thread and
answers through `reply` exactly once, on the peer's thread (quick callbacks only: the
coordinator's next step, an engine read): the leader's `Response` (its `value` carries the
step's own result, see `server.txn_service`), or None when the outcome is unknown (no answer
in time, the connection lost after the frame went out, an in-doubt answer). A definite
refusal (NOT_LEADER after REDIRECTS_MAX redirects) is a `Response` with that code: the
coordinator's retry rules take it from there.

Routing: the leader named by the latest partition map (the node's own, `map_of`, or one a
redirect carried); a group whose leader is unknown is asked at its replicas in turn, which
redirect to the leader. A connection that cannot be opened sent nothing, so the next
address is tried; one lost after sending makes the step unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable
from typing import Any

import structlog

from raftstore import wire
from raftstore.errors import RaftstoreError, ResultCode, is_definite
from raftstore.txn_commands import TxnCommand

log = structlog.get_logger(__name__)

STEP_TIMEOUT_MS = 2000  # one step, redirects included; the coordinator retries a few times
REDIRECTS_MAX = 3
LAYOUT_TTL_S = 1.0  # the node's own map is asked again after this long
CONNECT_TIMEOUT_S = 1.0
READ_CHUNK_BYTES = 256 * 1024
CLOSE_JOIN_S = 5.0

StepReply = Callable[[wire.Response | None], None]
Address = tuple[str, int]


class _Lost(Exception):
    """The connection closed after the frame may have left: the outcome is unknown."""


class _Connection:
    """One pipelined connection to a node: requests matched to answers by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._waiting: dict[int, asyncio.Future[wire.Response]] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def call(self, message: wire.TxnStepMsg, timeout_s: float) -> wire.Response:
        """The answer; raises _Lost if the connection closes first, TimeoutError if late."""
        if self.closed:
            raise _Lost
        request_id = next(self._ids)
        answer: asyncio.Future[wire.Response] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            self._writer.write(wire.encode_request(request_id, message))
            return await asyncio.wait_for(answer, timeout_s)
        finally:
            self._waiting.pop(request_id, None)  # a late answer finds nobody and is dropped

    async def _read(self, reader: asyncio.StreamReader) -> None:
        frames = wire.FrameReader()
        try:
            while data := await reader.read(READ_CHUNK_BYTES):
                for body in frames.feed(data):
                    request_id, response = wire.decode_response(body)
                    answer = self._waiting.get(request_id)
                    if answer is not None and not answer.done():
                        answer.set_result(response)
        except (OSError, RaftstoreError) as exc:
            log.info("peer_connection_lost", reason=str(exc))
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(_Lost())
        self._writer.close()
        self._reading.cancel()


class Peer:
    def __init__(
        self, map_of: Callable[[], dict[str, Any]], *, timeout_ms: int = STEP_TIMEOUT_MS
    ) -> None:
        self._map_of = map_of
        self._timeout_s = timeout_ms / 1000
        self._layout: dict[str, Any] = {}  # the latest map: the node's own or a redirect's
        self._layout_until = 0.0
        self._connections: dict[Address, _Connection] = {}
        self._connecting: dict[Address, asyncio.Task[_Connection]] = {}
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="peer", daemon=True)
        self._thread.start()

    def step(
        self,
        namespace: str,
        group: int,
        command: TxnCommand | None,
        txn_id: int,
        reply: StepReply,
    ) -> None:
        message = wire.TxnStepMsg(namespace, group, command, txn_id)
        if self._closed:
            reply(None)
            return
        try:
            self._loop.call_soon_threadsafe(self._start, message, reply)
        except RuntimeError:  # the loop is closed: the node is stopping
            reply(None)

    def close(self) -> None:
        """Answer None to the steps in flight, close the connections, stop the thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        stopping = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            stopping.result(CLOSE_JOIN_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CLOSE_JOIN_S)
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the peer's thread ---------------------------------------------------------------

    def _start(self, message: wire.TxnStepMsg, reply: StepReply) -> None:
        if self._closed:  # queued just before close(): nobody will run it
            reply(None)
            return
        self._loop.create_task(self._run(message, reply))

    async def _run(self, message: wire.TxnStepMsg, reply: StepReply) -> None:
        try:
            response = await asyncio.wait_for(self._exchange(message), self._timeout_s)
        except (TimeoutError, asyncio.CancelledError):  # late, or close() in the middle
            response = None
        except Exception:
            log.exception("peer_step_failed", namespace=message.namespace, group=message.group)
            response = None
        try:
            reply(response)
        except Exception:
            log.exception("peer_reply_failed", namespace=message.namespace, group=message.group)

    async def _exchange(self, message: wire.TxnStepMsg) -> wire.Response | None:
        refused: wire.Response | None = None
        for attempt in range(REDIRECTS_MAX + 1):
            address = _address_of(self._map(), message.namespace, message.group, attempt)
            if address is None:
                return refused
            try:
                connection = await self._connection(address)
            except (OSError, TimeoutError) as exc:  # nothing was sent: ask another address
                log.info("peer_unreachable", host=address[0], port=address[1], reason=str(exc))
                self._adopt(self._map_of())
                continue
            try:
                response = await connection.call(message, self._timeout_s)
            except _Lost:
                return None
            if response.code == ResultCode.NOT_LEADER:
                refused = wire.Response(code=response.code, message=response.message)
                self._adopt(response.partition_map or self._map_of())
                continue
            if response.in_doubt or not is_definite(response.code):  # TIMEOUT among them
                return None
            return response
        return refused

    def _map(self) -> dict[str, Any]:
        if self._loop.time() >= self._layout_until:
            self._adopt(self._map_of())
        return self._layout

    def _adopt(self, layout: dict[str, Any]) -> None:
        self._layout = layout
        self._layout_until = self._loop.time() + LAYOUT_TTL_S

    async def _connection(self, address: Address) -> _Connection:
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        # Steps that need a connection while one is being opened wait for that one: one
        # connection per node. Shielded: a step that gives up does not cancel the others'.
        opening = self._connecting.get(address)
        if opening is None:
            opening = self._connecting[address] = self._loop.create_task(self._open(address))
            opening.add_done_callback(lambda _: self._connecting.pop(address, None))
        return await asyncio.shield(opening)

    async def _open(self, address: Address) -> _Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*address), CONNECT_TIMEOUT_S
        )
        connection = self._connections[address] = _Connection(reader, writer)
        return connection

    async def _shutdown(self) -> None:
        for connection in self._connections.values():
            connection.close()
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _address_of(layout: dict[str, Any], namespace: str, group: int, attempt: int) -> Address | None:
    """The node to send a step for `group` to: its leader in `layout`, else one of its
    replicas (by `attempt`), which redirects to the leader. None if the map has neither."""
    try:
        nodes = layout["nodes"]
        space = layout["namespaces"][namespace]
        leader = space["leaders"][group]
        replicas = list(space["replicas"][group])
    except (KeyError, IndexError, TypeError):
        return None
    node_id = leader if leader in nodes else None
    if node_id is None and replicas:
        node_id = replicas[attempt % len(replicas)]
    if node_id not in nodes:
        return None
    host, port = nodes[node_id]
    return (str(host), int(port))
