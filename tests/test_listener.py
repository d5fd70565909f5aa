"""The asyncio listener against a scripted node: answers from the loop's thread and from
others, batches of answers, timeouts, exactly one answer per request, backpressure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from raftstore import keys
from raftstore import ops as op
from raftstore.errors import ResultCode
from raftstore.wire import (
    FrameReader,
    InfoMsg,
    RecordMsg,
    Request,
    Response,
    decode_response,
    encode_request,
)
from server import listener as listener_module
from server.listener import Listener

Reply = Callable[[Response], None]
DIGEST = keys.calc_digest("test", "s", 1)
SLOW_S = 0.3


class ScriptedNode:
    """`Node.submit` by the info command: "now" answers at once; "thread" from another
    thread; "slow" from another thread after SLOW_S; "batch:N" holds answers until N are
    waiting, then answers them all from one thread in a row; "never" (and a record request)
    is never answered."""

    def __init__(self) -> None:
        self.held: list[tuple[Reply, Response]] = []
        self.late: list[Reply] = []
        self.lock = threading.Lock()

    def submit(self, request: Request, now_ms: int, reply: Reply) -> None:
        command = request.command if isinstance(request, InfoMsg) else "never"
        answer = Response(value=command)
        if command == "now":
            reply(answer)
        elif command == "thread":
            threading.Thread(target=reply, args=(answer,)).start()
        elif command == "slow":
            threading.Timer(SLOW_S, reply, args=(answer,)).start()
        elif command.startswith("batch:"):
            with self.lock:
                self.held.append((reply, answer))
                if len(self.held) < int(command.split(":")[1]):
                    return
                held, self.held = self.held, []
            threading.Thread(target=lambda: [r(a) for r, a in held]).start()
        else:
            self.late.append(reply)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader()
        self.answers: list[tuple[int, Response]] = []

    def send(self, request_id: int, message: Any) -> None:
        self.writer.write(encode_request(request_id, message))

    async def receive(self, count: int, timeout_s: float = 5.0) -> list[tuple[int, Response]]:
        async with asyncio.timeout(timeout_s):
            while len(self.answers) < count:
                data = await self.reader.read(1 << 16)
                assert data, "the listener closed the connection"
                self.answers.extend(decode_response(body) for body in self.frames.feed(data))
        taken, self.answers = self.answers[:count], self.answers[count:]
        return taken


async def serving(node: ScriptedNode, test: Callable[[Client], Any]) -> None:
    listener = Listener(node, "127.0.0.1", 0)  # type: ignore[arg-type]
    await listener.start()
    assert listener.server is not None
    port = listener.server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await test(Client(reader, writer))
    finally:
        writer.close()
        await asyncio.sleep(0.05)  # the listener sees the end of the connection
        await listener.close()


def test_answers_from_the_loop_and_from_other_threads() -> None:
    async def test(client: Client) -> None:
        client.send(1, InfoMsg("now"))
        client.send(2, InfoMsg("thread"))
        for n in range(10, 74):
            client.send(n, InfoMsg("batch:64"))
        answers = await client.receive(66)
        assert sorted(request_id for request_id, _ in answers) == [1, 2, *range(10, 74)]
        assert {request_id: r.value for request_id, r in answers}[2] == "thread"
        assert all(r.code == ResultCode.OK for _, r in answers)

    asyncio.run(serving(ScriptedNode(), test))


def test_a_request_unanswered_by_its_timeout_is_answered_once_in_doubt() -> None:
    node = ScriptedNode()

    async def test(client: Client) -> None:
        write = RecordMsg("test", DIGEST, "s", (op.write("v", 1),), timeout_ms=50)
        read = RecordMsg("test", DIGEST, "s", (op.read(),), timeout_ms=50)
        began = time.monotonic()
        client.send(7, write)
        client.send(7, read)  # the same id again: each request is answered on its own
        answers = sorted(await client.receive(2), key=lambda a: a[1].in_doubt)
        assert time.monotonic() - began >= 0.05
        assert [(i, r.code, r.in_doubt) for i, r in answers] == [
            (7, ResultCode.TIMEOUT, False),
            (7, ResultCode.TIMEOUT, True),
        ]
        for reply in node.late:  # the node answers after all: dropped
            threading.Thread(target=reply, args=(Response(),)).start()
        client.send(8, InfoMsg("now"))
        assert [(i, r.value) for i, r in await client.receive(1)] == [(8, "now")]

    asyncio.run(serving(node, test))


def test_the_reader_stops_at_the_bound_of_requests_in_progress(monkeypatch: Any) -> None:
    monkeypatch.setattr(listener_module, "CONNECTION_REQUESTS_MAX", 4)

    async def test(client: Client) -> None:
        began = time.monotonic()
        for n in range(4):
            client.send(n, InfoMsg("slow"))
        client.send(4, InfoMsg("now"))  # read only once one of the four is answered
        first, *_ = await client.receive(5)
        assert first[0] != 4, "not read before a slot was free"
        assert time.monotonic() - began >= SLOW_S

    asyncio.run(serving(ScriptedNode(), test))
