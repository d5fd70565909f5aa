"""Connections to one node: a socket each, many requests in flight, answers matched by id.

Theory of operation:
- A `Connection` owns one TCP socket. Senders take the writer lock for one whole frame, so
  frames never interleave; a reader thread cuts the byte stream into frames
  (`wire.FrameReader`) and hands each response to the `Pending` registered under its
  request id. A response whose waiter gave up (timeout) is dropped when it arrives late.
- Anything that makes the stream untrustworthy (EOF, a socket error, a frame that does not
  decode, a send that fails halfway) closes the connection and fails every pending request
  with `lost`: each of them was sent, so its outcome is unknown to the caller.
- `send` raises `NotSent` only when nothing of the request can have reached the server
  (the connection was already closed, or the frame could not be encoded). Once bytes may
  have left, failures arrive through the `Pending`.
- A `Node` keeps a bounded pool of connections and hands out the least busy one, opening a
  new one only while every open one has requests in flight and the pool is under its bound.
- Closing shuts the socket down (which wakes the reader), joins the reader, and only then
  releases the descriptor, so a reader can never touch a reused descriptor.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass

from client.logger import get_logger
from raftstore import wire
from raftstore.errors import RaftstoreError

log = get_logger(__name__)

RECV_BYTES = 256 * 1024
READER_JOIN_S = 5.0

Address = tuple[str, int]


class NotSent(Exception):
    """Nothing of the request reached the server: retrying cannot duplicate it."""


class Pending:
    """One request awaiting its response."""

    __slots__ = ("event", "lost", "request_id", "response")

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self.event = threading.Event()
        self.response: wire.Response | None = None
        self.lost: str | None = None  # why the connection closed before the answer came

    def wait(self, timeout_s: float | None) -> bool:
        return self.event.wait(timeout_s)


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    connect_timeout_s: float
    io_timeout_s: float  # a send that makes no progress this long closes the connection
    frame_bytes_max: int = wire.FRAME_BYTES_MAX


class Connection:
    def __init__(self, node_id: str, address: Address, options: ConnectionOptions) -> None:
        self.node_id = node_id
        self.address = address
        sock = socket.create_connection(address, timeout=options.connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(options.io_timeout_s)
        self._sock = sock
        self._frame_bytes_max = options.frame_bytes_max
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _pending, _next_id, _closed
        self._pending: dict[int, Pending] = {}
        self._next_id = 1
        self._closed = False
        self._reader = threading.Thread(
            target=self._read_loop, name=f"raftstore-client-{node_id}", daemon=True
        )
        self._reader.start()

    @property
    def is_open(self) -> bool:
        return not self._closed

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def send(self, message: wire.Request) -> Pending:
        with self._lock:
            if self._closed:
                raise NotSent(f"connection to {self.node_id} is closed")
            request_id = self._next_id
            self._next_id += 1
        try:
            data = wire.encode_request(request_id, message)
        except RaftstoreError as exc:
            raise NotSent(exc.msg) from exc
        pending = Pending(request_id)
        with self._lock:
            if self._closed:
                raise NotSent(f"connection to {self.node_id} is closed")
            self._pending[request_id] = pending
        try:
            with self._write_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self._shut(f"send failed: {exc}")
        return pending

    def abandon(self, pending: Pending) -> None:
        """The waiter gave up: a late answer will be dropped."""
        with self._lock:
            self._pending.pop(pending.request_id, None)

    def close(self) -> None:
        self._shut("closed by the client")
        if threading.current_thread() is not self._reader:
            self._reader.join(READER_JOIN_S)

    def _shut(self, reason: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            failed = list(self._pending.values())
            self._pending.clear()
        log.debug("connection_closed", node=self.node_id, reason=reason, failed=len(failed))
        with contextlib.suppress(OSError):  # already disconnected
            self._sock.shutdown(socket.SHUT_RDWR)
        for pending in failed:
            pending.lost = reason
            pending.event.set()

    def _read_loop(self) -> None:
        reader = wire.FrameReader(self._frame_bytes_max)
        reason = "closed by the client"
        try:
            while not self._closed:
                try:
                    data = self._sock.recv(RECV_BYTES)
                except TimeoutError:
                    continue  # idle; wake up to notice a close
                if not data:
                    reason = "closed by the server"
                    break
                for body in reader.feed(data):
                    request_id, response = wire.decode_response(body)
                    self._deliver(request_id, response)
        except OSError as exc:
            reason = f"socket error: {exc}"
        except RaftstoreError as exc:
            reason = f"bad response stream: {exc}"
        finally:
            self._shut(reason)
            with self._write_lock:  # no sender is inside sendall when the descriptor goes
                self._sock.close()

    def _deliver(self, request_id: int, response: wire.Response) -> None:
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is None:
            log.debug("late_response_dropped", node=self.node_id, request_id=request_id)
            return
        pending.response = response
        pending.event.set()


class Node:
    """A cluster node as the client knows it: its id, its address, its connection pool."""

    def __init__(
        self, node_id: str, address: Address, options: ConnectionOptions, max_connections: int
    ) -> None:
        assert max_connections >= 1
        self.node_id = node_id
        self.address = address
        self._options = options
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._connections: list[Connection] = []
        self._closed = False

    def connection(self, connect_timeout_s: float | None = None) -> Connection:
        """An open connection (the least busy, or a new one); OSError if none can be made."""
        with self._lock:
            if self._closed:
                raise NotSent(f"node {self.node_id} is closed")
            self._connections = [c for c in self._connections if c.is_open]
            best = min(self._connections, key=lambda c: c.in_flight, default=None)
            if best is not None and (
                best.in_flight == 0 or len(self._connections) >= self._max_connections
            ):
                return best
            options = self._options
            if connect_timeout_s is not None:
                timeout_s = max(min(options.connect_timeout_s, connect_timeout_s), 0.001)
                options = ConnectionOptions(
                    timeout_s, options.io_timeout_s, options.frame_bytes_max
                )
            connection = Connection(self.node_id, self.address, options)
            self._connections.append(connection)
            return connection

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections if c.is_open)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
