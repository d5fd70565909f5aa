"""server.peer against scripted nodes on loopback: routing, redirects, and what is unknown."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from raftstore import wire
from raftstore.errors import ResultCode
from server.peer import Peer, _address_of
from tests.test_client_network import (
    NS,
    ScriptedServer,
    Topology,
    partition_map,
)
from tests.test_client_network import (
    Peer as ServerEnd,
)

WAIT_S = 10.0


class Steps:
    """Collects the one answer of each step."""

    def __init__(self) -> None:
        self.answers: list[wire.Response | None] = []
        self.done = threading.Condition()

    def reply(self, response: wire.Response | None) -> None:
        with self.done:
            self.answers.append(response)
            self.done.notify_all()

    def wait(self, count: int = 1) -> list[wire.Response | None]:
        with self.done:
            assert self.done.wait_for(lambda: len(self.answers) >= count, WAIT_S)
            return list(self.answers)


@pytest.fixture
def servers() -> Iterator[dict[str, ScriptedServer]]:
    made: dict[str, ScriptedServer] = {}
    yield made
    for server in made.values():
        server.stop()


def answer(value: Any) -> Any:
    def script(_: ScriptedServer, peer: ServerEnd, request_id: int, __: wire.Request) -> None:
        peer.reply(request_id, wire.Response(value=value))

    return script


def one_step(layout: dict[str, Any], txn_id: int = 1, timeout_ms: int = 2000) -> Any:
    """The answer a fresh Peer, knowing `layout`, gets to one step for group 0."""
    peer = Peer(lambda: layout, timeout_ms=timeout_ms)
    steps = Steps()
    try:
        peer.step(NS, 0, None, txn_id, steps.reply)
        (response,) = steps.wait()
    finally:
        peer.close()
    return response


def start(servers: dict[str, ScriptedServer], scripts: dict[str, Any]) -> Topology:
    topology = Topology()
    for node_id, script in scripts.items():
        servers[node_id] = ScriptedServer(node_id, topology, script)
    return topology


def test_address_of_prefers_the_leader_then_the_replicas_in_turn() -> None:
    layout = {
        "nodes": {"a": ["127.0.0.1", 1], "b": ["127.0.0.1", 2]},
        "namespaces": {NS: {"leaders": ["b", None], "replicas": [["a", "b"], ["a", "b"]]}},
    }
    assert _address_of(layout, NS, 0, 0) == ("127.0.0.1", 2)
    assert [_address_of(layout, NS, 1, n) for n in range(3)] == [
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
        ("127.0.0.1", 1),
    ]
    assert _address_of(layout, "other", 0, 0) is None
    assert _address_of(layout, NS, 5, 0) is None
    assert _address_of({}, NS, 0, 0) is None


def test_a_redirect_is_followed_to_the_leader(servers: dict[str, ScriptedServer]) -> None:
    def not_leader(_: ScriptedServer, peer: ServerEnd, request_id: int, __: wire.Request) -> None:
        redirect = partition_map(2, servers, ["b"])
        response = wire.Response(code=ResultCode.NOT_LEADER, partition_map=redirect)
        peer.reply(request_id, response)

    start(servers, {"a": not_leader, "b": answer(b"stepped")})
    own_map = partition_map(1, servers, ["a"])  # this node still believes a leads
    response = one_step(own_map, txn_id=7)
    assert response is not None and response.value == b"stepped"
    asked = [server.requests(wire.TxnStepMsg) for server in (servers["a"], servers["b"])]
    assert asked == [[wire.TxnStepMsg(NS, 0, None, 7)]] * 2


def test_a_refusal_after_the_redirects_run_out_is_definite(
    servers: dict[str, ScriptedServer],
) -> None:
    def refuse(_: ScriptedServer, peer: ServerEnd, request_id: int, __: wire.Request) -> None:
        peer.reply(request_id, wire.Response(code=ResultCode.NOT_LEADER, message="not me"))

    start(servers, {"a": refuse, "b": refuse})
    response = one_step(partition_map(1, servers, [None]))
    assert response is not None and response.code == ResultCode.NOT_LEADER


@pytest.mark.parametrize("how", ["connection_lost", "in_doubt", "silent"])
def test_unknown_outcomes_answer_none(servers: dict[str, ScriptedServer], how: str) -> None:
    def script(_: ScriptedServer, peer: ServerEnd, request_id: int, __: wire.Request) -> None:
        if how == "connection_lost":
            peer.drop()
        elif how == "in_doubt":
            response = wire.Response(code=ResultCode.TIMEOUT, message="late", in_doubt=True)
            peer.reply(request_id, response)
        # silent: never answers

    start(servers, {"a": script})
    assert one_step(partition_map(1, servers, ["a"]), timeout_ms=500) is None


def test_an_unreachable_leader_sends_nothing_and_answers_none() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    layout = {
        "nodes": {"gone": ["127.0.0.1", port]},
        "namespaces": {NS: {"leaders": ["gone"], "replicas": [["gone"]]}},
    }
    assert one_step(layout) is None


def test_steps_after_close_answer_none() -> None:
    peer = Peer(dict)
    peer.close()
    steps = Steps()
    peer.step(NS, 0, None, 1, steps.reply)
    assert steps.wait() == [None]


def test_close_answers_the_steps_in_flight(servers: dict[str, ScriptedServer]) -> None:
    start(servers, {"a": lambda *_: None})  # never answers
    layout = partition_map(1, servers, ["a"])
    peer = Peer(lambda: layout, timeout_ms=60_000)
    steps = Steps()
    for txn_id in range(5):
        peer.step(NS, 0, None, txn_id, steps.reply)
    servers["a"].wait_for(lambda: len(servers["a"].requests(wire.TxnStepMsg)) == 5)
    peer.close()
    assert steps.wait(5) == [None] * 5
    assert len(steps.answers) == 5, "each step answered once"


def test_concurrent_steps_share_one_connection_per_node(
    servers: dict[str, ScriptedServer],
) -> None:
    start(servers, {"a": answer(b"ok")})
    layout = partition_map(1, servers, ["a"])
    peer = Peer(lambda: layout)
    steps = Steps()
    try:
        for txn_id in range(20):
            peer.step(NS, 0, None, txn_id, steps.reply)
        answers = steps.wait(20)
    finally:
        peer.close()
    assert [response.value for response in answers if response is not None] == [b"ok"] * 20
    servers["a"].wait_for(lambda: servers["a"].accepted >= 1)
    assert servers["a"].accepted == 1


def test_a_late_answer_after_the_timeout_is_dropped_and_the_connection_serves_on(
    servers: dict[str, ScriptedServer],
) -> None:
    late: list[tuple[ServerEnd, int]] = []

    def script(_: ScriptedServer, peer: ServerEnd, request_id: int, msg: wire.Request) -> None:
        assert isinstance(msg, wire.TxnStepMsg)
        if msg.txn_id == 1:
            late.append((peer, request_id))  # answered by the test, after the timeout
        else:
            peer.reply(request_id, wire.Response(value=b"prompt"))

    start(servers, {"a": script})
    layout = partition_map(1, servers, ["a"])
    peer = Peer(lambda: layout, timeout_ms=300)
    first, second = Steps(), Steps()
    try:
        peer.step(NS, 0, None, 1, first.reply)
        assert first.wait() == [None], "no answer within the step's timeout: unknown"
        ((end, request_id),) = late
        end.reply(request_id, wire.Response(value=b"late"))
        peer.step(NS, 0, None, 2, second.reply)
        (response,) = second.wait()
        assert response is not None and response.value == b"prompt"
    finally:
        peer.close()
    assert first.answers == [None], "the late answer reached nobody"
    assert servers["a"].accepted == 1, "the connection stayed open"
