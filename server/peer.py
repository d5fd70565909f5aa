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


class _Connection:
    """One pipelined connection to a node: requests matched to answers by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._waiting: dict[int, StepReply] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    def send(self, message: wire.TxnStepMsg, answer: StepReply) -> int:
        """Write the frame; `answer` gets the response, or None if the connection closes
        first. The request id, for `forget`. Raises RaftstoreError if it cannot be encoded
        (nothing was sent)."""
        data = wire.encode_request(request_id := next(self._ids), message)
        self._waiting[request_id] = answer
        self._writer.write(data)
        return request_id

    def forget(self, request_id: int) -> None:
        """The sender gave up: a late answer finds nobody and is dropped."""
        self._waiting.pop(request_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        frames = wire.FrameReader()
        try:
            while data := await reader.read(READ_CHUNK_BYTES):
                for body in frames.feed(data):
                    request_id, response = wire.decode_response(body)
                    answer = self._waiting.pop(request_id, None)
                    if answer is not None:
                        answer(response)
        except (OSError, RaftstoreError) as exc:
            log.info("peer_connection_lost", reason=str(exc))
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        waiting, self._waiting = list(self._waiting.values()), {}
        for answer in waiting:
            answer(None)
        self._writer.close()
        self._reading.cancel()


class _Step:
    """One step on the peer's thread: plain callbacks and one timer, no task of its own (a
    task and two `wait_for`s a step were half of this thread's time in a cross-group
    transaction). Tries the leader, follows redirects, answers `reply` exactly once."""

    def __init__(self, peer: Peer, message: wire.TxnStepMsg, reply: StepReply) -> None:
        self._peer = peer
        self._message = message
        self._reply = reply
        self._attempt = 0
        self._refused: wire.Response | None = None  # the last NOT_LEADER, as a definite answer
        self._sent: tuple[_Connection, int] | None = None
        self.done = False
        self._timer = peer.loop.call_later(peer.timeout_s, self.finish, None)

    def next(self) -> None:
        """Send to the node the map names for this attempt, or answer if none is left."""
        if self.done:
            return
        if self._attempt > REDIRECTS_MAX:
            self.finish(self._refused)
            return
        message = self._message
        address = _address_of(self._peer.map(), message.namespace, message.group, self._attempt)
        if address is None:
            self.finish(self._refused)
            return
        self._peer.connect(address, self)

    def send_on(self, connection: _Connection) -> None:
        if self.done:
            return
        try:
            self._sent = (connection, connection.send(self._message, self._answered))
        except Exception:
            self._failed()

    def unreachable(self) -> None:
        """No connection could be opened: nothing was sent; the next address."""
        self._attempt += 1
        self.next()

    def _answered(self, response: wire.Response | None) -> None:
        self._sent = None
        try:
            if response is None:  # the connection closed after the frame may have left
                self.finish(None)
            elif response.code == ResultCode.NOT_LEADER:
                self._refused = wire.Response(code=response.code, message=response.message)
                self._peer.adopt(response.partition_map or self._peer.map_of())
                self._attempt += 1
                self.next()
            elif response.in_doubt or not is_definite(response.code):  # TIMEOUT among them
                self.finish(None)
            else:
                self.finish(response)
        except Exception:
            self._failed()

    def _failed(self) -> None:
        message = self._message
        log.exception("peer_step_failed", namespace=message.namespace, group=message.group)
        self.finish(None)

    def finish(self, response: wire.Response | None) -> None:
        """Answer once (a late answer, a timeout or close() after that does nothing)."""
        if self.done:
            return
        self.done = True
        self._timer.cancel()
        if self._sent is not None:
            connection, request_id = self._sent
            connection.forget(request_id)
        self._peer.finished(self)
        try:
            self._reply(response)
        except Exception:
            message = self._message
            log.exception("peer_reply_failed", namespace=message.namespace, group=message.group)


class Peer:
    def __init__(
        self, map_of: Callable[[], dict[str, Any]], *, timeout_ms: int = STEP_TIMEOUT_MS
    ) -> None:
        self.map_of = map_of
        self.timeout_s = timeout_ms / 1000
        self._layout: dict[str, Any] = {}  # the latest map: the node's own or a redirect's
        self._layout_until = 0.0
        self._connections: dict[Address, _Connection] = {}
        self._connecting: dict[Address, list[_Step]] = {}  # steps waiting for the connection
        self._steps: set[_Step] = set()  # not answered yet
        self._closed = False
        self._close_lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="peer", daemon=True)
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
            self.loop.call_soon_threadsafe(self._start, message, reply)
        except RuntimeError:  # the loop is closed: the node is stopping
            reply(None)

    def close(self) -> None:
        """Answer None to the steps in flight, close the connections, stop the thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        stopping = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        with contextlib.suppress(Exception):
            stopping.result(CLOSE_JOIN_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=CLOSE_JOIN_S)
        if not self._thread.is_alive():
            self.loop.close()

    # -- on the peer's thread ---------------------------------------------------------------

    def _start(self, message: wire.TxnStepMsg, reply: StepReply) -> None:
        if self._closed:  # queued just before close(): nobody will run it
            reply(None)
            return
        step = _Step(self, message, reply)
        self._steps.add(step)
        step.next()

    def finished(self, step: _Step) -> None:
        self._steps.discard(step)

    def map(self) -> dict[str, Any]:
        if self.loop.time() >= self._layout_until:
            self.adopt(self.map_of())
        return self._layout

    def adopt(self, layout: dict[str, Any]) -> None:
        self._layout = layout
        self._layout_until = self.loop.time() + LAYOUT_TTL_S

    def connect(self, address: Address, step: _Step) -> None:
        """Send `step` on the connection to `address`, opened first if need be. Steps that
        need it while it is being opened wait for that one: one connection per node."""
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            step.send_on(connection)
            return
        waiting = self._connecting.get(address)
        if waiting is not None:
            waiting.append(step)
            return
        self._connecting[address] = [step]
        self.loop.create_task(self._open(address))

    async def _open(self, address: Address) -> None:
        connection: _Connection | None = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*address), CONNECT_TIMEOUT_S
            )
            connection = self._connections[address] = _Connection(reader, writer)
        except (OSError, TimeoutError) as exc:  # nothing was sent: ask another address
            log.info("peer_unreachable", host=address[0], port=address[1], reason=str(exc))
            self.adopt(self.map_of())
        finally:
            waiting = self._connecting.pop(address, [])
        for step in waiting:
            if connection is None:
                step.unreachable()
            else:
                step.send_on(connection)

    async def _shutdown(self) -> None:
        for connection in list(self._connections.values()):
            connection.close()
        for step in list(self._steps):
            step.finish(None)
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
