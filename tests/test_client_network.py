"""The SDK against scripted servers: real sockets on 127.0.0.1, answers from a script.

Each `ScriptedServer` is a thread with a listening socket on an ephemeral port. It decodes
every request with `raftstore.wire`, logs it, and hands it to the test's script, which may
answer at once, hold the answer, answer out of order, or drop the connection. `KVScript` is a
small honest node (records applied with `raftstore.operations`, a session table for
exactly-once) for the tests that need one. Every wait has a deadline; every server, socket
and thread a test starts is stopped by the fixture that made it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import client
from client import exception as ex
from client import list_operations as lops
from client import map_operations as mops
from client import operations as ops
from raftstore import clock, keys, operations, wire
from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.record import Record

WAIT_S = 5.0
NS = "test"
FAST = {"total_timeout": 3000, "socket_timeout": 1000}


# -- the scripted server ----------------------------------------------------------------------


class Peer:
    """The server's end of one client connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def reply(self, request_id: int, response: wire.Response) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.sock.sendall(wire.encode_response(request_id, response))

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


Script = Callable[["ScriptedServer", Peer, int, wire.Request], None]


@dataclass
class Topology:
    """What INFO "partition-map" answers: shared by the servers of one test cluster."""

    partition_map: dict[str, Any] = field(default_factory=dict)


class ScriptedServer:
    def __init__(self, node_id: str, topology: Topology, script: Script | None = None) -> None:
        self.node_id = node_id
        self.topology = topology
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.log: list[tuple[Peer, int, wire.Request]] = []
        self.changed = threading.Condition()
        self.peers: list[Peer] = []
        self.threads: list[threading.Thread] = []
        self.stopping = False
        self.accepted = 0
        accept = threading.Thread(target=self._accept_loop, name=f"scripted-{node_id}")
        self.threads.append(accept)
        accept.start()

    # -- what arrived --

    def requests(self, kind: type[Any] = wire.RecordMsg) -> list[Any]:
        with self.changed:
            return [message for _, _, message in self.log if isinstance(message, kind)]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout_s), f"{self.node_id}: timed out"

    # -- the loops --

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # the listener was shut down
            peer = Peer(sock)
            with self.changed:
                if self.stopping:
                    sock.close()
                    return
                self.accepted += 1
                self.peers.append(peer)
                thread = threading.Thread(target=self._serve, args=(peer,), daemon=True)
                self.threads.append(thread)
            thread.start()

    def _serve(self, peer: Peer) -> None:
        reader = wire.FrameReader()
        try:
            while True:
                try:
                    data = peer.sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for body in reader.feed(data):
                    request_id, message = wire.decode_request(body)
                    with self.changed:
                        self.log.append((peer, request_id, message))
                        self.changed.notify_all()
                    self.handle(peer, request_id, message)
        finally:
            with contextlib.suppress(OSError):
                peer.sock.close()

    def handle(self, peer: Peer, request_id: int, message: wire.Request) -> None:
        if isinstance(message, wire.InfoMsg) and (
            self.script is None or message.command == "partition-map"
        ):
            peer.reply(request_id, wire.Response(value=self.info(message.command)))
            return
        assert self.script is not None, f"{self.node_id} has no script for {message!r}"
        self.script(self, peer, request_id, message)

    def info(self, command: str) -> Any:
        if command == "partition-map":
            return self.topology.partition_map
        return {"node": self.node_id, "command": command}

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            peers = list(self.peers)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for peer in peers:
            peer.drop()
        for thread in list(self.threads):
            thread.join(WAIT_S)
            assert not thread.is_alive(), f"{thread.name} did not stop"


def partition_map(
    version: int, nodes: dict[str, ScriptedServer], leaders: list[str | None]
) -> dict[str, Any]:
    return {
        "version": version,
        "nodes": {node_id: list(server.address) for node_id, server in nodes.items()},
        "namespaces": {
            NS: {
                "partition_groups": len(leaders),
                "leaders": leaders,
                "replicas": [sorted(nodes) for _ in leaders],
            }
        },
    }


class KVScript:
    """An honest single-node store: operations applied for real, exactly once per seq."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[bytes, Record] = {}
        self.sessions: dict[tuple[int, int], wire.Response] = {}
        self.applied = 0
        self.namespace = NamespaceConfig(NS)

    def __call__(
        self, server: ScriptedServer, peer: Peer, request_id: int, message: wire.Request
    ) -> None:
        if isinstance(message, wire.RecordMsg):
            peer.reply(request_id, self.apply(message))
        elif isinstance(message, wire.ScanMsg):
            peer.reply(request_id, self.scan(message))
        else:
            peer.reply(
                request_id, wire.Response(value=server.info(getattr(message, "command", "")))
            )

    def apply(self, message: wire.RecordMsg) -> wire.Response:
        session = (message.client_id, message.request_seq)
        with self.lock:
            if session in self.sessions:
                return self.sessions[session]
            now_ms = int(time.time() * 1000)
            try:
                outcome = operations.operate(
                    self.records.get(message.digest),
                    message.ops,
                    message.policy,
                    now_ms=now_ms,
                    set_name=message.set_name,
                    user_key=message.user_key,
                    namespace=self.namespace,
                )
            except RaftstoreError as exc:
                response = wire.Response(code=exc.code, message=exc.msg)
            else:
                record = outcome.record
                if outcome.changed and record is not None:
                    self.records[message.digest] = record
                    self.applied += 1
                assert record is not None
                response = wire.Response(
                    generation=record.generation,
                    ttl=clock.ttl_left(record.void_time, now_ms) if not record.tombstone else 0,
                    results=tuple(outcome.results),
                )
            if not message.ops or not all(o.is_read for o in message.ops):
                self.sessions[session] = response
            return response

    def scan(self, message: wire.ScanMsg) -> wire.Response:
        with self.lock:
            rows = [
                [digest, r.set_name, r.user_key, r.generation, -1, dict(r.bins)]
                for digest, r in sorted(self.records.items())
                if not r.tombstone and keys.partition_id(digest) in message.partition_ids
            ]
        return wire.Response(value={"records": rows, "next_partition_ids": None})


@pytest.fixture
def cluster() -> Iterator[Callable[..., ScriptedServer]]:
    """Make scripted servers; every one is stopped at the end of the test."""
    made: list[ScriptedServer] = []
    topology = Topology()

    def make(node_id: str, script: Script | None = None) -> ScriptedServer:
        server = ScriptedServer(node_id, topology, script)
        made.append(server)
        return server

    make.topology = topology  # type: ignore[attr-defined]
    yield make
    for server in made:
        server.stop()


@contextlib.contextmanager
def connected(*servers: ScriptedServer, **config: Any) -> Iterator[client.Client]:
    db = client.connect({"hosts": [s.address for s in servers], **config})
    try:
        yield db
    finally:
        db.close()


def single_node(
    cluster: Callable[..., ScriptedServer], script: Script | None = None, groups: int = 1
) -> ScriptedServer:
    server = cluster("A", script)
    cluster.topology.partition_map = partition_map(1, {"A": server}, ["A"] * groups)  # type: ignore[attr-defined]
    return server


def key_in_group(group: int, groups: int, start: int = 0) -> tuple[str, str, int]:
    """A key whose partition falls in `group` of `groups`."""
    for n in range(start, start + 10_000):
        if keys.partition_id(keys.calc_digest(NS, "s", n)) % groups == group:
            return (NS, "s", n)
    raise AssertionError("no key found")


# -- connecting ---------------------------------------------------------------------------------


def test_connect_fails_with_connection_error_when_no_host_answers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        port = reserved.getsockname()[1]
    # The port is free again: nothing listens on it.
    with pytest.raises(ex.ConnectionError) as caught:
        client.connect({"hosts": [("127.0.0.1", port)], "timeout_ms": 500})
    assert caught.value.code == ResultCode.CONNECTION_ERROR == -10
    assert isinstance(caught.value, ex.ClientError)


def test_connect_tries_the_next_host(cluster: Callable[..., ScriptedServer]) -> None:
    server = single_node(cluster, KVScript())
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        dead = reserved.getsockname()[:2]
    db = client.client({"hosts": [dead, server.address], "timeout_ms": 500})
    assert not db.is_connected()
    with db.connect() as same:
        assert same is db and db.is_connected()
        assert db.get_node_names() == ["A"]
    assert not db.is_connected()
    with pytest.raises(ex.ConnectionError):
        db.get((NS, "s", 1))


# -- routing and redirects ------------------------------------------------------------------------


def test_not_leader_redirect_then_ok_reuses_the_request_seq(
    cluster: Callable[..., ScriptedServer],
) -> None:
    def follower(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        new_map = partition_map(2, {"A": a, "B": b}, ["B"])
        peer.reply(rid, wire.Response(code=ResultCode.NOT_LEADER, partition_map=new_map))

    kv = KVScript()
    a = cluster("A", follower)
    b = cluster("B", kv)
    cluster.topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A"])
    with connected(a, **{"policies": {"write": FAST}}) as db:
        db.put((NS, "s", "k"), {"x": 1})
        first, second = a.requests()[0], b.requests()[0]
        assert first.request_seq == second.request_seq == 1
        assert first.client_id == second.client_id == db.client_id
        # The map was adopted: the next request goes straight to B.
        db.put((NS, "s", "k2"), {"x": 2})
        assert len(a.requests()) == 1 and len(b.requests()) == 2
    assert kv.applied == 2


def test_not_leader_without_a_newer_map_refreshes_from_another_node(
    cluster: Callable[..., ScriptedServer],
) -> None:
    kv = KVScript()

    def deposed(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        topology.partition_map = partition_map(2, {"A": a, "B": b}, ["B"])
        peer.reply(rid, wire.Response(code=ResultCode.NOT_LEADER))  # no map with it

    a = cluster("A", deposed)
    b = cluster("B", kv)
    topology = cluster.topology
    topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A"])
    with connected(a, policies={"write": FAST}) as db:
        db.put((NS, "s", 1), {"a": 1})
    assert len(a.requests()) == 1 and len(b.requests()) == 1
    assert b.requests(wire.InfoMsg)  # the new map came from B, not from A
    assert kv.applied == 1


def test_a_late_answer_is_dropped_and_the_connection_kept(
    cluster: Callable[..., ScriptedServer],
) -> None:
    kv = KVScript()
    held: list[tuple[Peer, int]] = []

    def late(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        if not held:
            held.append((peer, rid))  # no answer within the socket timeout
            return
        if len(held) == 1:
            first_peer, first_rid = held.pop()
            held.append((peer, rid))
            first_peer.reply(first_rid, wire.Response(code=ResultCode.GENERATION_ERROR))
        kv(server, peer, rid, msg)

    server = single_node(cluster, late)
    policy = {"total_timeout": 3000, "socket_timeout": 150, "max_retries": 2}
    with connected(server, max_conns_per_node=1) as db:
        db.put((NS, "s", 1), {"a": 1}, policy=policy)  # the late GENERATION_ERROR is not it
        assert db.get((NS, "s", 1))[2] == {"a": 1}
    # The map fetch, one connection for every request, and one map refresh after the silent
    # attempt (a silent node may be paused; the client asks for the map again).
    assert server.accepted == 3


def test_two_nodes_route_by_digest(cluster: Callable[..., ScriptedServer]) -> None:
    kv = KVScript()
    a, b = cluster("A", kv), cluster("B", kv)
    cluster.topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A", "B", "A", "B"])
    with connected(a, b) as db:
        for n in range(40):
            db.put((NS, "s", n), {"n": n})
        for n in range(40):
            assert db.get((NS, "s", n))[2] == {"n": n}
    for server, groups in ((a, {0, 2}), (b, {1, 3})):
        seen = {keys.partition_id(m.digest) % 4 for m in server.requests()}
        assert seen and seen <= groups
    assert len(a.requests()) + len(b.requests()) == 80


def test_partition_unavailable_backs_off_then_succeeds(
    cluster: Callable[..., ScriptedServer],
) -> None:
    kv = KVScript()
    answered = []

    def electing(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        answered.append(rid)
        if len(answered) <= 3:
            peer.reply(rid, wire.Response(code=ResultCode.PARTITION_UNAVAILABLE))
        else:
            kv(server, peer, rid, msg)

    server = single_node(cluster, electing)
    with connected(server, policies={"write": {**FAST, "max_retries": 0}}) as db:
        db.put((NS, "s", 1), {"a": 1})
    assert {m.request_seq for m in server.requests()} == {1}
    assert len(server.requests()) == 4


def test_refused_connection_refreshes_the_map_and_retries(
    cluster: Callable[..., ScriptedServer],
) -> None:
    kv = KVScript()
    a = cluster("A", kv)
    gone = cluster("GONE")
    topology = cluster.topology
    topology.partition_map = partition_map(1, {"A": a, "GONE": gone}, ["GONE"])
    with connected(a, policies={"write": FAST}) as db:
        gone.stop()  # the leader dies; the next map names A
        topology.partition_map = partition_map(2, {"A": a}, ["A"])
        db.put((NS, "s", 1), {"a": 1})
    assert kv.applied == 1


def test_namespace_not_in_the_map(cluster: Callable[..., ScriptedServer]) -> None:
    server = single_node(cluster, KVScript())
    with connected(server) as db, pytest.raises(ex.NamespaceNotFound) as caught:
        db.get(("other", "s", 1))
    assert not caught.value.in_doubt


# -- timeouts, dropped connections and the in_doubt rule -----------------------------------------


def test_timeout_answers_make_a_write_in_doubt(cluster: Callable[..., ScriptedServer]) -> None:
    def slow(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        peer.reply(rid, wire.Response(code=ResultCode.TIMEOUT, message="replication slow"))

    server = single_node(cluster, slow)
    with connected(server) as db:
        with pytest.raises(ex.TimeoutError) as caught:
            db.put((NS, "s", 1), {"a": 1}, policy={**FAST, "max_retries": 2})
        assert caught.value.in_doubt
        writes = server.requests()
        assert len(writes) == 3 and {m.request_seq for m in writes} == {1}
        with pytest.raises(ex.TimeoutError) as caught:
            db.get((NS, "s", 1), policy={**FAST, "max_retries": 1})
        assert not caught.value.in_doubt  # reads are never in doubt


def test_timeout_then_ok_is_a_success(cluster: Callable[..., ScriptedServer]) -> None:
    kv = KVScript()
    calls = []

    def flaky(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        calls.append(msg)
        if len(calls) == 1:
            kv.apply(msg)  # applied, but the answer says TIMEOUT: outcome unknown
            peer.reply(rid, wire.Response(code=ResultCode.TIMEOUT))
        else:
            kv(server, peer, rid, msg)

    server = single_node(cluster, flaky)
    with connected(server) as db:
        db.increment((NS, "s", 1), "n", 5, policy=FAST)
        assert db.get((NS, "s", 1))[2] == {"n": 5}  # applied once, not twice
    assert calls[0].request_seq == calls[1].request_seq


def test_dropped_connection_retries_with_the_same_seq(
    cluster: Callable[..., ScriptedServer],
) -> None:
    kv = KVScript()
    seen = []

    def drop_first(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        seen.append(msg)
        if len(seen) == 1:
            kv.apply(msg)  # it happened, but the client never hears of it
            peer.drop()
        else:
            kv(server, peer, rid, msg)

    server = single_node(cluster, drop_first)
    with connected(server) as db:
        db.increment((NS, "s", 1), "n", 1, policy=FAST)
        assert db.get((NS, "s", 1))[2] == {"n": 1}
    assert seen[0].request_seq == seen[1].request_seq == 1
    assert kv.applied == 1


def test_dropped_connection_every_time_is_in_doubt(
    cluster: Callable[..., ScriptedServer],
) -> None:
    def drop(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        peer.drop()

    server = single_node(cluster, drop)
    with connected(server) as db:
        with pytest.raises(ex.AerospikeError) as caught:
            db.put((NS, "s", 1), {"a": 1}, policy={**FAST, "max_retries": 2})
        assert caught.value.in_doubt
        assert caught.value.code == ResultCode.CONNECTION_ERROR
        writes = server.requests()
        assert len(writes) == 3 and {m.request_seq for m in writes} == {1}
        with pytest.raises(ex.ConnectionError) as caught:
            db.get((NS, "s", 1), policy={**FAST, "max_retries": 0})
        assert not caught.value.in_doubt


def test_no_answer_within_the_socket_timeout_is_in_doubt(
    cluster: Callable[..., ScriptedServer],
) -> None:
    def silent(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        return  # never answers

    server = single_node(cluster, silent)
    policy = {"total_timeout": 2000, "socket_timeout": 100, "max_retries": 1}
    with connected(server) as db:
        with pytest.raises(ex.TimeoutError) as caught:
            db.put((NS, "s", 1), {"a": 1}, policy=policy)
        assert caught.value.in_doubt
        assert [m.request_seq for m in server.requests()] == [1, 1]
        assert all(0 < m.timeout_ms <= 100 for m in server.requests())
        with pytest.raises(ex.TimeoutError) as caught:
            db.get((NS, "s", 1), policy=policy)
        assert not caught.value.in_doubt


def test_a_definite_answer_after_a_lost_attempt_settles_the_doubt(
    cluster: Callable[..., ScriptedServer],
) -> None:
    seen = []

    def drop_then_refuse(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        seen.append(msg)
        if len(seen) == 1:
            peer.drop()
        else:
            peer.reply(rid, wire.Response(code=ResultCode.GENERATION_ERROR))

    server = single_node(cluster, drop_then_refuse)
    with connected(server) as db, pytest.raises(ex.RecordGenerationError) as caught:
        db.put(
            (NS, "s", 1), {"a": 1}, meta={"gen": 3}, policy={**FAST, "gen": client.POLICY_GEN_EQ}
        )
    assert not caught.value.in_doubt
    assert caught.value.key == (NS, "s", 1, keys.calc_digest(NS, "s", 1))


def test_turned_away_answers_do_not_settle_the_doubt(
    cluster: Callable[..., ScriptedServer],
) -> None:
    seen = []

    def drop_then_unavailable(
        server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request
    ) -> None:
        seen.append(msg)
        if len(seen) == 1:
            peer.drop()
        else:
            peer.reply(rid, wire.Response(code=ResultCode.PARTITION_UNAVAILABLE))

    server = single_node(cluster, drop_then_unavailable)
    policy = {"total_timeout": 300, "socket_timeout": 200, "max_retries": 3}
    with connected(server) as db, pytest.raises(ex.TimeoutError) as caught:
        db.put((NS, "s", 1), {"a": 1}, policy=policy)
    assert caught.value.in_doubt
    assert len(seen) >= 2 and {m.request_seq for m in seen} == {1}


def test_an_in_doubt_answer_is_retried_and_reported(
    cluster: Callable[..., ScriptedServer],
) -> None:
    def doubtful(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        peer.reply(rid, wire.Response(code=ResultCode.SERVER_ERROR, in_doubt=True))

    server = single_node(cluster, doubtful)
    with connected(server) as db, pytest.raises(ex.ServerError) as caught:
        db.put((NS, "s", 1), {"a": 1}, policy={**FAST, "max_retries": 1})
    assert caught.value.in_doubt
    assert len(server.requests()) == 2


def test_session_expired_is_in_doubt_and_not_retried(
    cluster: Callable[..., ScriptedServer],
) -> None:
    def expired(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        peer.reply(rid, wire.Response(code=ResultCode.SESSION_EXPIRED))

    server = single_node(cluster, expired)
    with connected(server) as db, pytest.raises(ex.SessionExpired) as caught:
        db.put((NS, "s", 1), {"a": 1}, policy=FAST)
    assert caught.value.in_doubt
    assert len(server.requests()) == 1


# -- pipelining and batches ------------------------------------------------------------------------


def test_pipelined_answers_out_of_order(cluster: Callable[..., ScriptedServer]) -> None:
    count = 12
    held: list[tuple[Peer, int, wire.RecordMsg]] = []
    lock = threading.Lock()

    def hold_then_reverse(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        assert isinstance(msg, wire.RecordMsg)
        with lock:
            held.append((peer, rid, msg))
            if len(held) < count:
                return  # answers only once every request is in: they must be in flight together
            batch = list(reversed(held))
        for answer_peer, answer_rid, request in batch:
            results = (("digest", request.digest.hex()),)
            answer_peer.reply(answer_rid, wire.Response(generation=1, ttl=-1, results=results))

    server = single_node(cluster, hold_then_reverse)
    wanted = [(NS, "s", n) for n in range(count)]
    with connected(server, max_conns_per_node=2) as db:
        records = db.batch_read(wanted, policy=FAST)
    assert [r.key[2] for r in records] == list(range(count))
    for record in records:
        assert record.result == 0 and record.record is not None
        assert record.record[2] == {"digest": record.key[3].hex()}
        assert record.record[1] == {"gen": 1, "ttl": -1}
    assert len({m.request_seq for m in server.requests()}) == count
    assert server.accepted <= 3  # the map fetch, then at most max_conns_per_node


def test_batches_write_read_and_remove(cluster: Callable[..., ScriptedServer]) -> None:
    kv = KVScript()
    a, b = cluster("A", kv), cluster("B", kv)
    cluster.topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A", "B"])
    with connected(a) as db:
        written = db.batch_write(
            [
                ((NS, "s", 1), {"a": 1}),
                ((NS, "s", 2), {"a": 2}, {"ttl": client.TTL_NEVER_EXPIRE}),
                ((NS, "s", 3), [ops.write("l", [3]), lops.list_append("l", 4)]),
            ],
            policy={"exists": client.POLICY_EXISTS_CREATE},
        )
        assert [r.result for r in written] == [0, 0, 0]
        assert written[2].record is not None and written[2].record[2] == {"l": 2}
        again = db.batch_write([((NS, "s", 1), {"a": 9})], policy={"exists": 1})
        assert again[0].result == ResultCode.RECORD_EXISTS and not again[0].in_doubt
        read = db.batch_read([(NS, "s", 1), (NS, "s", 404), (NS, "s", 3)], bins=["a"])
        assert [r.result for r in read] == [0, ResultCode.RECORD_NOT_FOUND, 0]
        assert read[0].record is not None and read[0].record[2] == {"a": 1}
        assert read[2].record is not None and read[2].record[2] == {}
        removed = db.batch_remove([(NS, "s", 1), (NS, "s", 404)])
        assert [r.result for r in removed] == [0, ResultCode.RECORD_NOT_FOUND]
        assert db.exists((NS, "s", 1))[1] is None
    assert {m.request_seq for m in a.requests() + b.requests()} == set(range(1, 11))


# -- the record API against an honest node -------------------------------------------------------


def test_record_methods(cluster: Callable[..., ScriptedServer]) -> None:
    server = single_node(cluster, KVScript())
    key = (NS, "users", "ada")
    digest = keys.calc_digest(NS, "users", "ada")
    with connected(server) as db:
        assert db.exists(key) == ((NS, "users", "ada", digest), None)
        with pytest.raises(ex.RecordNotFound) as caught:
            db.get(key)
        assert caught.value.code == 2 and not caught.value.in_doubt
        db.put(key, {"name": "ada", "n": 1}, meta={"ttl": client.TTL_NEVER_EXPIRE})
        got_key, meta, bins = db.get(key)
        assert got_key == (NS, "users", "ada", digest)
        assert meta == {"gen": 1, "ttl": -1} and bins == {"name": "ada", "n": 1}
        assert db.select(key, ["n", "missing"])[2] == {"n": 1}
        assert db.exists(key)[1] == {"gen": 1, "ttl": -1}
        db.append(key, "name", "!")
        db.prepend(key, "name", ">")
        db.increment(key, "n", 2)
        assert db.get(key)[2] == {"name": ">ada!", "n": 3}
        with pytest.raises(ex.RecordExistsError):
            db.put(key, {"n": 0}, policy={"exists": client.POLICY_EXISTS_CREATE})
        with pytest.raises(ex.RecordGenerationError):
            db.put(key, {"n": 0}, meta={"gen": 1}, policy={"gen": client.POLICY_GEN_EQ})
        db.put(key, {"n": 0}, meta={"gen": 4}, policy={"gen": client.POLICY_GEN_EQ})
        _, meta, bins = db.operate(
            key,
            [
                ops.increment("n", 10),
                ops.read("n"),
                mops.map_put("m", "k", 1),
                mops.map_get_by_key("m", "k"),
            ],
        )
        assert meta["gen"] == 6 and bins == {"n": 10, "m": 1}
        _, _, ordered = db.operate_ordered(key, [ops.read("n"), lops.list_append("l", "x")])
        assert ordered == [("n", 10), ("l", 1)]
        db.touch(key, 60)
        assert 0 < db.get(key)[1]["ttl"] <= 60
        db.remove_bin(key, ["l", "m"])
        assert db.get(key)[2] == {"name": ">ada!", "n": 10}
        digest_key = (NS, "users", None, digest)
        assert db.get(digest_key)[0] == (NS, "users", None, digest)
        db.remove(digest_key)
        assert db.exists(key)[1] is None
        with pytest.raises(ex.RecordNotFound):
            db.remove(key)


def test_key_send_stores_the_user_key(cluster: Callable[..., ScriptedServer]) -> None:
    kv = KVScript()
    server = single_node(cluster, kv)
    with connected(server) as db:
        db.put((NS, "s", 7), {"a": 1}, policy={"key": client.POLICY_KEY_SEND})
        db.put((NS, "s", 8), {"a": 1})
        sent, plain = server.requests()
        assert sent.user_key == 7 and sent.policy.send_key
        assert plain.user_key is None and not plain.policy.send_key
        assert kv.records[keys.calc_digest(NS, "s", 7)].user_key == 7


def test_write_policy_reaches_the_wire(cluster: Callable[..., ScriptedServer]) -> None:
    server = single_node(cluster, KVScript())
    config = {"policies": {"write": {"ttl": 100, "exists": client.POLICY_EXISTS_IGNORE}}}
    with connected(server, **config) as db:
        db.put((NS, "s", 1), {"a": 1})
        db.put((NS, "s", 1), {"a": 2}, meta={"ttl": 5, "gen": 1}, policy={"gen": 1})
        db.put((NS, "s", 1), {"a": 3}, meta={"ttl": client.TTL_CLIENT_DEFAULT})
        db.get((NS, "s", 1), policy={"read_mode_sc": client.POLICY_READ_MODE_SC_SESSION})
    first, second, third, read = server.requests()
    assert (first.policy.ttl, first.policy.gen) == (100, 0)
    assert (second.policy.ttl, second.policy.gen, second.policy.generation) == (5, 1, 1)
    assert third.policy.ttl == 100
    assert first.read_mode == wire.ReadMode.LINEARIZE
    assert read.read_mode == wire.ReadMode.SESSION


def test_acked_seq_is_the_smallest_outstanding(cluster: Callable[..., ScriptedServer]) -> None:
    server = single_node(cluster, KVScript())
    with connected(server) as db:
        for n in range(3):
            db.put((NS, "s", n), {"a": n})
        db.batch_read([(NS, "s", n) for n in range(3)])
    messages = server.requests()
    assert [(m.request_seq, m.acked_seq) for m in messages[:3]] == [(1, 1), (2, 2), (3, 3)]
    assert sorted(m.request_seq for m in messages[3:]) == [4, 5, 6]  # several connections
    assert all(m.acked_seq == 4 for m in messages[3:])


# -- scan, info, truncate ------------------------------------------------------------------


def test_scan_pages_through_each_group(cluster: Callable[..., ScriptedServer]) -> None:
    digests = {pid: bytes([pid % 256, pid // 256]) + bytes(18) for pid in (0, 1, 2, 3)}

    def pager(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        assert isinstance(msg, wire.ScanMsg)
        pids = list(msg.partition_ids)
        first = pids[0]
        if msg.after_digest is None:  # first page of `first`: one record, more to come
            page = {"next_partition_ids": pids, "after_digest": digests[first]}
            rows = [[digests[first], "s", None, 1, -1, {"p": first}]]
        else:  # the rest of `first`: another record, then the next partition
            rest = pids[1:] or None
            page = {"next_partition_ids": rest, "after_digest": None}
            rows = [[bytes(19) + bytes([first]), "", "uk", 2, 9, {"p": first, "second": True}]]
        peer.reply(rid, wire.Response(value={"records": rows, **page}))

    a, b = cluster("A", pager), cluster("B", pager)
    cluster.topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A", "B"])
    with connected(a) as db:
        records = list(db.scan(NS, "s", partitions=[3, 0, 1, 2], policy=FAST))
        limited = list(db.scan(NS, "s", partitions=[0], policy={"max_records": 1}))
    assert [r[2]["p"] for r in records] == [0, 0, 2, 2, 1, 1, 3, 3]
    assert records[0] == ((NS, "s", None, digests[0]), {"gen": 1, "ttl": -1}, {"p": 0})
    assert records[1][0][1:3] == (None, "uk") and records[1][1] == {"gen": 2, "ttl": 9}
    scans_a = a.requests(wire.ScanMsg)
    assert [m.partition_ids for m in scans_a[:4]] == [(0, 2), (0, 2), (2,), (2,)]
    assert scans_a[1].after_digest == digests[0]
    assert {p for m in b.requests(wire.ScanMsg) for p in m.partition_ids} == {1, 3}
    assert len(limited) == 1 and scans_a[-1].max_records == 1


def test_scan_against_an_honest_node(cluster: Callable[..., ScriptedServer]) -> None:
    server = single_node(cluster, KVScript(), groups=2)
    with connected(server) as db:
        for n in range(20):
            db.put((NS, "s", n), {"n": n}, policy={"key": client.POLICY_KEY_SEND})
        found = {record[0][2]: record[2]["n"] for record in db.scan(NS, "s")}
    assert found == {n: n for n in range(20)}
    assert len(server.requests(wire.ScanMsg)) == 2  # one page per group


def test_info_and_info_all(cluster: Callable[..., ScriptedServer]) -> None:
    a, b = cluster("A"), cluster("B")
    cluster.topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A", "B"])
    with connected(a) as db:
        assert db.info("build", "B") == {"node": "B", "command": "build"}
        assert db.info("status", b.address) == {"node": "B", "command": "status"}
        assert db.info("status")["command"] == "status"
        assert db.info_all("statistics") == {
            "A": {"node": "A", "command": "statistics"},
            "B": {"node": "B", "command": "statistics"},
        }
        b.stop()
        everyone = db.info_all("status", policy={"total_timeout": 500})
        assert everyone["A"] == {"node": "A", "command": "status"}
        assert isinstance(everyone["B"], ex.AerospikeError)
        with pytest.raises(ex.ParamError):
            db.info("status", "Z")


def test_truncate_covers_every_group(cluster: Callable[..., ScriptedServer]) -> None:
    def leads(groups_led: list[int]) -> Script:
        def answer(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
            assert isinstance(msg, wire.TruncateMsg)
            if msg.groups:  # asked for one group by name: B has become its leader
                value = {"groups": list(msg.groups), "count": 5}
            else:
                value = {"groups": groups_led, "count": 10 * len(groups_led)}
            peer.reply(rid, wire.Response(value=value))

        return answer

    a, b = cluster("A", leads([0, 2])), cluster("B", leads([]))
    cluster.topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A", "B", "A"])
    with connected(a) as db:
        count = db.truncate(NS, "s", 1_700_000_000_123_456_789, policy=FAST)
    assert count == 25
    to_a, to_b = a.requests(wire.TruncateMsg), b.requests(wire.TruncateMsg)
    assert [m.groups for m in to_a] == [()]
    assert [m.groups for m in to_b] == [(), (1,)]
    assert to_a[0].before_ms == 1_700_000_000_123 and to_a[0].set_name == "s"


def test_truncate_that_cannot_cover_every_group_is_in_doubt(
    cluster: Callable[..., ScriptedServer],
) -> None:
    def partial(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        groups = [] if isinstance(msg, wire.TruncateMsg) and msg.groups else [0]
        peer.reply(rid, wire.Response(value={"groups": groups, "count": 1}))

    server = single_node(cluster, partial, groups=2)
    with connected(server) as db, pytest.raises(ex.TimeoutError) as caught:
        db.truncate(NS, None, 0, policy={"total_timeout": 200})
    assert caught.value.in_doubt
    assert server.requests(wire.TruncateMsg)[0].before_ms == 0


# -- sharing one client ---------------------------------------------------------------------------


def test_many_threads_share_one_client(cluster: Callable[..., ScriptedServer]) -> None:
    kv = KVScript()
    a, b = cluster("A", kv), cluster("B", kv)
    cluster.topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A", "B"])
    threads_count, rounds = 12, 40
    failures: list[BaseException] = []
    start = threading.Barrier(threads_count, timeout=WAIT_S)
    with connected(a, max_conns_per_node=3) as db:

        def work(worker: int) -> None:
            try:
                start.wait()
                for n in range(rounds):
                    db.increment((NS, "s", "shared"), "total", 1)
                    db.put((NS, "s", f"{worker}-{n}"), {"w": worker, "n": n})
                    assert db.get((NS, "s", f"{worker}-{n}"))[2] == {"w": worker, "n": n}
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        workers = [threading.Thread(target=work, args=(w,)) for w in range(threads_count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
            assert not worker.is_alive()
        assert not failures, failures
        assert db.get((NS, "s", "shared"))[2] == {"total": threads_count * rounds}
    messages = a.requests() + b.requests()
    seqs = [m.request_seq for m in messages]
    assert len(seqs) == len(set(seqs)) == threads_count * rounds * 3 + 1
    assert all(m.acked_seq <= m.request_seq for m in messages)


def test_close_stops_every_reader_thread(cluster: Callable[..., ScriptedServer]) -> None:
    server = single_node(cluster, KVScript())
    db = client.connect({"hosts": [server.address]})
    db.batch_read([(NS, "s", n) for n in range(20)])
    assert any(t.name.startswith("raftstore-client-") for t in threading.enumerate())
    db.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("raftstore-client-")]
    assert not db.is_connected()


def test_a_silent_leader_makes_the_client_learn_the_new_one_from_another_node(
    cluster: Callable[..., ScriptedServer],
) -> None:
    """A paused leader never answers: after the socket timeout the client must ask another
    node for the map (where a new leader has been elected), not keep waiting on the old."""
    kv = KVScript()

    def paused(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        topology.partition_map = partition_map(2, {"A": a, "B": b}, ["B"])
        # ... and never answers, like a SIGSTOPped process

    a = cluster("A", paused)
    b = cluster("B", kv)
    topology = cluster.topology
    topology.partition_map = partition_map(1, {"A": a, "B": b}, ["A"])
    policy = {"total_timeout": 5000, "socket_timeout": 200, "max_retries": 3}
    with connected(a, b) as db:
        db.put((NS, "s", 1), {"a": 1}, policy=policy)
    assert len(a.requests()) == 1, "kept sending to the silent leader"
    assert kv.applied == 1


def test_a_group_with_no_known_leader_is_asked_of_its_replicas(
    cluster: Callable[..., ScriptedServer],
) -> None:
    """With more nodes than replicas a node only knows the leaders of its own groups: its map
    says None for the others, whatever its version. The client asks a replica of the group,
    which redirects with the leader, and keeps that leader when a later map does not know it."""
    kv = KVScript()

    def follower(server: ScriptedServer, peer: Peer, rid: int, msg: wire.Request) -> None:
        knows = partition_map(1, {"A": a, "B": b, "C": c}, ["B"])
        peer.reply(rid, wire.Response(code=ResultCode.NOT_LEADER, partition_map=knows))

    a = cluster("A")
    b = cluster("B", kv)
    c = cluster("C", follower)
    topology = cluster.topology
    unknown = partition_map(5, {"A": a, "B": b, "C": c}, [None])
    unknown["namespaces"][NS]["replicas"] = [["C", "B"]]
    topology.partition_map = unknown
    with connected(a, policies={"write": FAST}) as db:
        db.put((NS, "s", 1), {"a": 1})
        db.put((NS, "s", 2), {"a": 2})
    assert len(c.requests()) == 1  # asked once, then the merged map routes to B directly
    assert kv.applied == 2
