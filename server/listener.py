"""The client listener: asyncio over TCP, frames per raftstore/wire.py.

Per connection, requests are answered concurrently (pipelining), at most
CONNECTION_REQUESTS_MAX at a time (backpressure: the reader stops reading beyond that).
Rules for bad input:
- a body that does not decode is answered with its error code (to the request id when the id
  can be read) and the connection keeps serving;
- an oversized frame or a foreign protocol version closes the connection after the answer,
  because the byte stream can no longer be trusted;
- nothing a peer sends can raise out of a connection handler: the node keeps serving.
A request whose answer is not ready by its timeout is answered TIMEOUT; for a write that
answer is in doubt (the command may still be applied).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from raftstore.errors import RaftstoreError, ResultCode
from raftstore.ops import is_read_only
from raftstore.wire import (
    FrameReader,
    RecordMsg,
    Request,
    Response,
    decode_request,
    encode_response,
    peek_request_id,
    speaks_our_version,
)
from server.node import Node

log = structlog.get_logger(__name__)

CONNECTION_REQUESTS_MAX = 1024
REQUEST_TIMEOUT_MS_MIN = 10
REQUEST_TIMEOUT_MS_MAX = 120_000
INFO_TIMEOUT_MS = 10_000
READ_CHUNK_BYTES = 256 * 1024


class Listener:
    def __init__(self, node: Node, host: str, port: int) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("listening", host=self.host, port=self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")
        slots = asyncio.Semaphore(CONNECTION_REQUESTS_MAX)
        frames = FrameReader()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                try:
                    bodies = frames.feed(data)
                except RaftstoreError as exc:
                    log.warning("frame_refused", peer=peer, reason=exc.msg)
                    writer.write(encode_response(0, Response(code=exc.code, message=exc.msg)))
                    await writer.drain()
                    break
                if not all(speaks_our_version(body) for body in bodies):
                    log.warning("foreign_protocol", peer=peer)
                    message = "protocol version not spoken here; closing"
                    response = Response(code=ResultCode.PROTOCOL_ERROR, message=message)
                    writer.write(encode_response(peek_request_id(bodies[-1]), response))
                    await writer.drain()
                    break
                for body in bodies:
                    await slots.acquire()
                    task = asyncio.create_task(self._answer(body, writer))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(lambda _: slots.release())
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("connection_failed", peer=peer)
        finally:
            for task in list(tasks):
                task.cancel()
            self.connections -= 1
            writer.close()

    async def _answer(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        request_id = peek_request_id(body)
        try:
            request_id, request = decode_request(body)
            response = await self._respond(request)
        except RaftstoreError as exc:
            response = Response(code=exc.code, message=exc.msg)
        except Exception as exc:
            log.exception("request_failed", request_id=request_id)
            response = Response(code=ResultCode.SERVER_ERROR, message=repr(exc))
        try:
            writer.write(encode_response(request_id, response))
            await writer.drain()
        except (ConnectionError, RuntimeError):
            pass  # the client went away; its outcome is its own to learn

    async def _respond(self, request: Request) -> Response:
        now_ms = time.time_ns() // 1_000_000
        future = self.node.dispatch(request, now_ms)
        if isinstance(request, RecordMsg):
            timeout_ms = min(
                max(request.timeout_ms, REQUEST_TIMEOUT_MS_MIN), REQUEST_TIMEOUT_MS_MAX
            )
            write = not is_read_only(list(request.ops))
        else:
            timeout_ms, write = INFO_TIMEOUT_MS * 3, False
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_ms / 1000)
        except TimeoutError:
            return Response(
                code=ResultCode.TIMEOUT,
                message=f"no answer within {timeout_ms} ms",
                in_doubt=write,
            )


async def run(node: Node, stop: Callable[[], Awaitable[None]]) -> None:
    """Serve until `stop()` returns."""
    me = node.config.me
    listener = Listener(node, me.host, me.port)
    await listener.start()
    try:
        await stop()
    finally:
        await listener.close()
