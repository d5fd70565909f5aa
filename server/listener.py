"""The client listener: asyncio over TCP, frames per raftstore/wire.py.

Per connection, requests are answered concurrently (pipelining), at most
CONNECTION_REQUESTS_MAX at a time (backpressure: the reader stops reading beyond that, and
while the client does not read its answers).
Rules for bad input:
- a body that does not decode is answered with its error code (to the request id when the id
  can be read) and the connection keeps serving;
- an oversized frame or a foreign protocol version closes the connection after the answer,
  because the byte stream can no longer be trusted;
- nothing a peer sends can raise out of a connection handler: the node keeps serving.
A request whose answer is not ready by its timeout is answered TIMEOUT; for a write that
answer is in doubt (the command may still be applied). Every request is answered exactly
once: a late answer after a TIMEOUT is dropped.

How answers travel (per batch, not per request: no task, no future per request)
- The reader decodes every frame of a chunk and hands each request to `Node.submit` with a
  reply callback.
- A reply on the loop's thread (a session read, a refusal) is delivered at once. A reply on
  another thread (a group's worker answers a whole log entry's requests in a row) goes to
  the listener's inbox; the first one into an idle inbox schedules one drain of the inbox on
  the loop (`call_soon_threadsafe`).
- Answers are encoded on the loop and gathered per connection: one socket write per
  connection per pass of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from raftstore.errors import RaftstoreError, ResultCode
from raftstore.ops import is_read_only
from raftstore.wire import (
    FrameReader,
    RecordMsg,
    Refused,
    Response,
    TxnCommitMsg,
    TxnStepMsg,
    encode_response,
    read_request,
)
from server.node import Node

log = structlog.get_logger(__name__)

CONNECTION_REQUESTS_MAX = 1024
REQUEST_TIMEOUT_MS_MIN = 10
REQUEST_TIMEOUT_MS_MAX = 120_000
INFO_TIMEOUT_MS = 10_000
READ_CHUNK_BYTES = 256 * 1024


class _Pending:
    """A request of a connection waiting for its answer."""

    __slots__ = ("request_id", "timer", "write")

    def __init__(self, request_id: int, write: bool) -> None:
        self.request_id = request_id
        self.write = write  # a TIMEOUT answer is then in doubt
        self.timer: asyncio.TimerHandle | None = None


class _Connection:
    """One client connection: its requests in progress and the answers not yet written."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending: dict[int, _Pending] = {}  # by a token of ours: request ids may repeat
        self.tokens = 0
        self.answers: list[bytes] = []
        self.flush_scheduled = False
        self.room = asyncio.Event()  # set while fewer than CONNECTION_REQUESTS_MAX pending
        self.room.set()

    def close(self) -> None:
        """Late answers find nothing to answer and are dropped."""
        for pending in self.pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self.pending.clear()
        self.answers.clear()
        self.room.set()


class Listener:
    def __init__(self, node: Node, host: str, port: int) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # Answers from other threads, drained on the loop. `_inbox_armed`: a drain is
        # scheduled and has not started emptying the inbox yet.
        self._inbox: deque[tuple[_Connection, int, Response]] = deque()
        self._inbox_armed = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("listening", host=self.host, port=self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")
        connection = _Connection(writer)
        frames = FrameReader()
        try:
            while True:
                await writer.drain()  # the client reads its answers before we read more
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                try:
                    bodies = frames.feed(data)
                except RaftstoreError as exc:
                    log.warning("frame_refused", peer=peer, reason=exc.msg)
                    self._deliver_now(connection, 0, Response(code=exc.code, message=exc.msg))
                    await self._write_and_drain(connection)
                    break
                if not await self._start_all(connection, bodies):
                    log.warning("foreign_protocol", peer=peer)
                    await self._write_and_drain(connection)
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("connection_failed", peer=peer)
        finally:
            connection.close()
            self.connections -= 1
            writer.close()

    async def _start_all(self, connection: _Connection, bodies: list[bytes]) -> bool:
        """Submit the requests of one chunk, waiting for a free slot when the connection has
        CONNECTION_REQUESTS_MAX in progress; False when the connection is to be closed."""
        now_ms = time.time_ns() // 1_000_000
        for body in bodies:
            if len(connection.pending) >= CONNECTION_REQUESTS_MAX:
                connection.room.clear()
                await connection.room.wait()
                now_ms = time.time_ns() // 1_000_000
            if not self._start(connection, body, now_ms):
                return False
        return True

    def _start(self, connection: _Connection, body: bytes, now_ms: int) -> bool:
        """Decode one body and submit it; False when the connection is to be closed."""
        parsed = read_request(body)
        if isinstance(parsed, Refused):
            response = Response(code=parsed.code, message=parsed.message)
            self._deliver_now(connection, parsed.request_id, response)
            return not parsed.fatal
        request_id, request = parsed
        if isinstance(request, RecordMsg):
            timeout_ms = min(
                max(request.timeout_ms, REQUEST_TIMEOUT_MS_MIN), REQUEST_TIMEOUT_MS_MAX
            )
            write = not is_read_only(request.ops)
        elif isinstance(request, TxnCommitMsg | TxnStepMsg):
            # A transaction's steps change state: an answer that does not come is in doubt.
            write = not isinstance(request, TxnStepMsg) or request.command is not None
            timeout_ms = INFO_TIMEOUT_MS * 3
        else:
            timeout_ms, write = INFO_TIMEOUT_MS * 3, False
        connection.tokens += 1
        token = connection.tokens
        pending = connection.pending[token] = _Pending(request_id, write)
        try:
            self.node.submit(request, now_ms, functools.partial(self._reply, connection, token))
        except Exception as exc:
            log.exception("request_failed", request_id=request_id)
            self._deliver(
                connection, token, Response(code=ResultCode.SERVER_ERROR, message=repr(exc))
            )
        if token in connection.pending:  # not answered at once: bound its wait
            assert self._loop is not None
            pending.timer = self._loop.call_later(
                timeout_ms / 1000, self._expire, connection, token, timeout_ms
            )
        return True

    # -- answers -------------------------------------------------------------------------------

    def _reply(self, connection: _Connection, token: int, response: Response) -> None:
        """The reply callback of one request; called once, on any thread."""
        if threading.get_ident() == self._loop_thread:
            self._deliver(connection, token, response)
            return
        self._inbox.append((connection, token, response))
        if self._inbox_armed:
            return  # the scheduled drain has not started: it takes this answer too
        self._inbox_armed = True
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: the node is stopping
            self._loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox_armed = False  # first: an answer appended from now on schedules a drain
        inbox = self._inbox
        while inbox:
            connection, token, response = inbox.popleft()
            self._deliver(connection, token, response)

    def _expire(self, connection: _Connection, token: int, timeout_ms: int) -> None:
        pending = connection.pending.get(token)
        if pending is None:
            return
        pending.timer = None
        response = Response(
            code=ResultCode.TIMEOUT,
            message=f"no answer within {timeout_ms} ms",
            in_doubt=pending.write,
        )
        self._deliver(connection, token, response)

    def _deliver(self, connection: _Connection, token: int, response: Response) -> None:
        """On the loop: queue the answer of request `token` for writing, unless answered."""
        pending = connection.pending.pop(token, None)
        if pending is None:
            return  # answered before (its timeout), or the connection is gone
        if pending.timer is not None:
            pending.timer.cancel()
        if len(connection.pending) < CONNECTION_REQUESTS_MAX:
            connection.room.set()
        self._deliver_now(connection, pending.request_id, response)

    def _deliver_now(self, connection: _Connection, request_id: int, response: Response) -> None:
        try:
            data = encode_response(request_id, response)
        except Exception as exc:  # a value msgpack cannot encode: a bug, answered as such
            log.exception("response_not_encodable", request_id=request_id)
            failed = Response(code=ResultCode.SERVER_ERROR, message=repr(exc)[:200])
            data = encode_response(request_id, failed)
        connection.answers.append(data)
        if not connection.flush_scheduled:
            connection.flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush, connection)

    def _flush(self, connection: _Connection) -> None:
        connection.flush_scheduled = False
        answers, connection.answers = connection.answers, []
        if not answers:
            return
        transport = connection.writer.transport
        if transport.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away
            transport.write(answers[0] if len(answers) == 1 else b"".join(answers))

    async def _write_and_drain(self, connection: _Connection) -> None:
        """Write what is gathered now (the connection is about to close)."""
        self._flush(connection)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await connection.writer.drain()


async def run(node: Node, stop: Callable[[], Awaitable[None]]) -> None:
    """Serve until `stop()` returns."""
    me = node.config.me
    listener = Listener(node, me.host, me.port)
    await listener.start()
    try:
        await stop()
    finally:
        await listener.close()
