"""The SDK against one real 3-node cluster: records, policies, limits, batches, scans,
truncate, info, exactly-once over the wire, bad frames, and a shared client under threads.

One cluster per module (`running_cluster` stops its processes by pid). Each test writes to
sets of its own, so the tests do not depend on one another's records; the tests that count
objects wait for every replica to agree before they count. Raw-socket tests speak
`raftstore.wire` by hand, to send what the SDK never would (repeats, garbage, bad fields).
Every wait has a deadline and every socket is closed by a `with`.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import client
from client import exception as ex
from client import list_operations as lops
from client import map_operations as mops
from client import operations as ops
from raftstore import codec, limits, wire
from raftstore.errors import ResultCode
from raftstore.policy import WritePolicy
from raftstore.values import GeoJSON
from server import launcher
from tests.cluster_harness import Cluster, running_cluster

NS = "test"
WAIT_S = 20.0  # deadline of every wait for the cluster (loaded 2-core machines are slow)
POLL_S = 0.05
TIMEOUT_MS = 10_000
KINDS = ("read", "write", "operate", "remove", "batch", "batch_write", "batch_remove", "info")
POLICIES = {kind: {"total_timeout": TIMEOUT_MS} for kind in KINDS}
TEN_YEARS_S = limits.TTL_SECONDS_MAX


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("sdk-cluster"), 3) as running:
        yield running


@pytest.fixture(scope="module")
def pids(cluster: Cluster) -> dict[str, int]:
    """The node processes as they were at the start: no test may kill or restart one."""
    found = {node.node_id: node.pid() for node in cluster.nodes}
    assert all(pid is not None for pid in found.values())
    return {node_id: pid for node_id, pid in found.items() if pid is not None}


@pytest.fixture(scope="module")
def db(cluster: Cluster, pids: dict[str, int]) -> Iterator[client.Client]:
    connected = client.connect({"hosts": cluster.hosts, "policies": POLICIES})
    try:
        yield connected
    finally:
        connected.close()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(POLL_S)  # polling interval of a deadline-bounded wait


def key(set_name: str, user_key: int | str | bytes) -> tuple[str, str, int | str | bytes]:
    return (NS, set_name, user_key)


def digest_of(set_name: str, user_key: int | str | bytes) -> bytes:
    return client.calc_digest(NS, set_name, user_key)


def raises_code(exc_info: pytest.ExceptionInfo[ex.AerospikeError], code: int) -> None:
    """A definite failure with `code`: the write did not happen, and the SDK says so."""
    assert exc_info.value.code == code, exc_info.value
    assert exc_info.value.in_doubt is False


# -- raw connections --------------------------------------------------------------------------


class RawConnection:
    """One client connection spoken by hand: frames in, responses out, under deadlines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = wire.FrameReader()
        self.bodies: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> tuple[int, wire.Response]:
        deadline = time.monotonic() + WAIT_S
        while not self.bodies:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no response before the deadline"
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            assert data, "the server closed the connection instead of answering"
            self.bodies.extend(self.frames.feed(data))
        return wire.decode_response(self.bodies.pop(0))

    def ask(self, request_id: int, message: wire.Request) -> wire.Response:
        self.send(wire.encode_request(request_id, message))
        answered_id, response = self.receive()
        assert answered_id == request_id
        return response

    def closed_by_server(self, timeout_s: float = WAIT_S) -> bool:
        """True once the server closes this connection (EOF or reset) within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
            if not data:
                return True
            self.bodies.extend(self.frames.feed(data))
        return False


@contextlib.contextmanager
def raw_connection(address: tuple[str, int]) -> Iterator[RawConnection]:
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        yield RawConnection(sock)


def leader_address(partition_map: dict[str, Any], digest: bytes) -> tuple[str, int] | None:
    """The address of the leader of `digest`'s partition group as `partition_map` says
    (group = partition id % partition groups), or None while the map names no leader."""
    space = partition_map["namespaces"][NS]
    group = client.get_partition_id(digest) % space["partition_groups"]
    leader = space["leaders"][group]
    if leader is None:
        return None
    host, port = partition_map["nodes"][leader]
    return host, port


def ask_leader(
    db: client.Client, digest: bytes, frame: bytes, times: int = 1
) -> list[wire.Response]:
    """Send `frame` (a record request about `digest`) `times` times, one after another on one
    connection to its group's leader, and return the answers. A NOT_LEADER answer (nothing
    was applied: the request never reached the log) sends that attempt again to the leader
    the answer names, on a new connection, until the deadline."""
    deadline = time.monotonic() + WAIT_S
    partition_map = db.info("partition-map")
    answers: list[wire.Response] = []
    while len(answers) < times:
        address = leader_address(partition_map, digest)
        if address is not None:
            with raw_connection(address) as connection:
                while len(answers) < times:
                    connection.send(frame)
                    _, response = connection.receive()
                    if response.code == ResultCode.NOT_LEADER:
                        partition_map = response.partition_map or partition_map
                        break
                    answers.append(response)
        if len(answers) < times:
            assert time.monotonic() < deadline, "no leader answered before the deadline"
            time.sleep(POLL_S)  # a leadership change in progress: ask again shortly
            if address is None:
                partition_map = db.info("partition-map")
    return answers


def record_frame(
    request_id: int,
    set_name: str,
    user_key: int | str,
    record_ops: tuple[ops.Op, ...],
    *,
    client_id: int,
    request_seq: int,
    acked_seq: int,
    policy: WritePolicy | None = None,
) -> bytes:
    message = wire.RecordMsg(
        namespace=NS,
        digest=digest_of(set_name, user_key),
        set_name=set_name,
        ops=record_ops,
        client_id=client_id,
        request_seq=request_seq,
        acked_seq=acked_seq,
        timeout_ms=TIMEOUT_MS,
        policy=policy or WritePolicy(),
    )
    return wire.encode_request(request_id, message)


def new_client_id() -> int:
    return secrets.randbits(62) + 1


# -- single records: CRUD -------------------------------------------------------------------


def test_put_get_select_exists_remove(db: client.Client) -> None:
    k = key("crud", "ada")
    assert db.exists(k) == ((*k, digest_of("crud", "ada")), None)
    with pytest.raises(ex.RecordNotFound) as missing:
        db.get(k)
    raises_code(missing, ResultCode.RECORD_NOT_FOUND)

    db.put(k, {"name": "ada", "visits": 1, "score": 2.5, "ok": True})
    returned_key, meta, bins = db.get(k)
    assert returned_key == (NS, "crud", "ada", digest_of("crud", "ada"))
    assert meta == {"gen": 1, "ttl": -1}
    assert bins == {"name": "ada", "visits": 1, "score": 2.5, "ok": True}
    assert type(bins["ok"]) is bool and type(bins["visits"]) is int

    _, meta, selected = db.select(k, ["name", "absent"])
    assert selected == {"name": "ada"} and meta["gen"] == 1
    _, exists_meta = db.exists(k)
    assert exists_meta == {"gen": 1, "ttl": -1}

    db.put(k, {"visits": 2, "score": None})  # merge; None removes a bin
    _, meta, bins = db.get(k)
    assert bins == {"name": "ada", "visits": 2, "ok": True}
    assert meta["gen"] == 2

    db.remove_bin(k, ["ok", "name"])
    _, meta, bins = db.get(k)
    assert bins == {"visits": 2} and meta["gen"] == 3

    db.remove(k)
    assert db.exists(k)[1] is None
    with pytest.raises(ex.RecordNotFound) as gone:
        db.remove(k)
    raises_code(gone, ResultCode.RECORD_NOT_FOUND)


def test_record_whose_last_bin_is_removed_is_gone(db: client.Client) -> None:
    k = key("crud", "lastbin")
    db.put(k, {"only": 1})
    db.remove_bin(k, ["only"])
    assert db.exists(k)[1] is None


def test_integer_and_digest_keys_name_the_same_record(db: client.Client) -> None:
    db.put(key("crud", 77), {"n": 77})
    by_digest = (NS, "crud", None, digest_of("crud", 77))
    returned_key, _, bins = db.get(by_digest)
    assert bins == {"n": 77}
    assert returned_key == by_digest
    assert db.exists(key("crud", "77"))[1] is None, "the str key '77' is another record"


def test_touch_append_prepend_increment(db: client.Client) -> None:
    k = key("crud", "ops")
    db.put(k, {"s": "mid", "b": b"\x01", "n": 10, "f": 1.5})
    db.append(k, "s", "-end")
    db.prepend(k, "s", "start-")
    db.append(k, "b", b"\x02")
    db.prepend(k, "b", b"\x00")
    db.increment(k, "n", -3)
    db.increment(k, "f", 0.25)
    db.increment(k, "new", 5)  # a missing bin counts as 0
    _, meta, bins = db.get(k)
    assert bins == {"s": "start-mid-end", "b": b"\x00\x01\x02", "n": 7, "f": 1.75, "new": 5}
    assert meta["gen"] == 8

    db.touch(k, 500)
    _, meta, bins = db.get(k)
    assert meta["gen"] == 9 and 490 <= meta["ttl"] <= 500
    assert bins["n"] == 7

    with pytest.raises(ex.BinIncompatibleType) as mismatch:
        db.append(k, "s", b"bytes")
    raises_code(mismatch, ResultCode.BIN_INCOMPATIBLE_TYPE)
    with pytest.raises(ex.BinIncompatibleType):
        db.increment(k, "s", 1)
    with pytest.raises(ex.RecordNotFound):
        db.touch(key("crud", "never-written"))
    assert db.get(k)[1]["gen"] == 9, "failed writes do not bump the generation"


def test_operate_and_operate_ordered(db: client.Client) -> None:
    k = key("crud", "operate")
    db.put(k, {"n": 1, "s": "a"})
    returned_key, meta, bins = db.operate(
        k, [ops.increment("n", 4), ops.read("n"), ops.append("s", "b"), ops.read("s")]
    )
    assert returned_key[:3] == k
    assert bins == {"n": 5, "s": "ab"}
    assert meta["gen"] == 2

    _, meta, ordered = db.operate_ordered(
        k, [ops.read("n"), ops.write("n", 100), ops.read("n"), ops.read("s")]
    )
    assert ordered == [("n", 5), ("n", 100), ("s", "ab")]
    assert meta["gen"] == 3

    _, meta, everything = db.operate(k, [ops.read()])  # read-only: no new generation
    assert everything == {"n": 100, "s": "ab"} and meta["gen"] == 3

    _, meta, _ = db.operate(k, [ops.touch(200)])
    assert meta["gen"] == 4 and 190 <= meta["ttl"] <= 200

    db.operate(k, [ops.delete()])
    assert db.exists(k)[1] is None


def test_list_operations(db: client.Client) -> None:
    k = key("cdt", "list")
    _, _, ordered = db.operate_ordered(
        k,
        [
            lops.list_append("l", 3),
            lops.list_append_items("l", [1, 2]),
            lops.list_insert("l", 0, 9),
            lops.list_size("l"),
            lops.list_get("l", -1),
            lops.list_get_range("l", 1, 2),
        ],
    )
    assert ordered == [("l", 1), ("l", 3), ("l", 4), ("l", 4), ("l", 2), ("l", [3, 1])]
    assert db.get(k)[2] == {"l": [9, 3, 1, 2]}

    _, _, ordered = db.operate_ordered(
        k,
        [
            lops.list_pop("l", 0),
            lops.list_set("l", 0, "x"),
            lops.list_remove("l", 1),
            lops.list_get_range("l", 0),
        ],
    )
    assert ordered == [("l", 9), ("l", None), ("l", 1), ("l", ["x", 2])]

    db.put(k, {"l": [5, 1, 4]})
    db.operate(k, [lops.list_sort("l")])
    assert db.get(k)[2]["l"] == [1, 4, 5]
    db.operate(k, [lops.list_clear("l")])
    _, meta, bins = db.get(k)
    assert bins == {"l": []}
    assert meta["gen"] == 5
    # Reading a list op on a missing record is a definite RECORD_NOT_FOUND.
    with pytest.raises(ex.RecordNotFound):
        db.operate(key("cdt", "no-list"), [lops.list_size("l")])


def test_map_operations(db: client.Client) -> None:
    k = key("cdt", "map")
    _, _, ordered = db.operate_ordered(
        k,
        [
            mops.map_put("m", "a", 1),
            mops.map_put_items("m", {"b": 2, 3: "three", b"k": [1]}),
            mops.map_increment("m", "a", 10),
            mops.map_get_by_key("m", 3),
            mops.map_size("m"),
        ],
    )
    assert ordered[0] == ("m", 1)
    assert ordered[2:] == [("m", 11), ("m", "three"), ("m", 4)]
    assert db.get(k)[2] == {"m": {"a": 11, "b": 2, 3: "three", b"k": [1]}}

    _, _, ordered = db.operate_ordered(
        k,
        [
            mops.map_remove_by_key("m", "b"),
            mops.map_remove_by_key("m", "absent"),
            mops.map_get_by_key("m", "b"),
            mops.map_size("m"),
        ],
    )
    assert ordered == [("m", 2), ("m", None), ("m", None), ("m", 3)]
    db.operate(k, [mops.map_clear("m")])
    assert db.get(k)[2] == {"m": {}}


def test_geojson_nested_bytes_and_str_round_trip(db: client.Client) -> None:
    k = key("types", "all")
    point = GeoJSON.from_dict({"type": "Point", "coordinates": [13.4, 52.5]})
    nested = {
        "list": [1, "two", b"\x03", [4.0, {"five": [True, False]}]],
        1: {b"raw": {"deep": [[[]]]}},
    }
    bins = {
        "geo": point,
        "nested": nested,
        "str": "h\u00e9llo \u2603",
        "bytes": b"\x00\xff h\xc3\xa9llo",
        "text_digits": "123",
        "bytes_digits": b"123",
        "empty_s": "",
        "empty_b": b"",
        "max": limits.INT_MAX,
        "min": limits.INT_MIN,
        "float": -0.0,
    }
    db.put(k, bins)
    _, _, stored = db.get(k)
    assert stored == bins
    assert isinstance(stored["geo"], GeoJSON) and stored["geo"].to_dict()["type"] == "Point"
    assert type(stored["str"]) is str and type(stored["bytes"]) is bytes
    assert type(stored["text_digits"]) is str and type(stored["bytes_digits"]) is bytes
    assert type(stored["empty_s"]) is str and type(stored["empty_b"]) is bytes
    assert stored["max"] == 2**63 - 1 and stored["min"] == -(2**63)

    with pytest.raises(ex.InvalidGeoJSON):
        db.put(k, {"geo": GeoJSON('{"type": "Nowhere"}')})
    # Keys: the str "7" and the int 7 and bytes b"7" are three records.
    assert len({digest_of("types", 7), digest_of("types", "7"), digest_of("types", b"7")}) == 3
    db.put(key("types", "7"), {"v": "str"})
    db.put(key("types", b"7"), {"v": "bytes"})
    assert db.get(key("types", "7"))[2] == {"v": "str"}
    assert db.get(key("types", b"7"))[2] == {"v": "bytes"}
    assert db.exists(key("types", 7))[1] is None


def test_int64_limits(db: client.Client) -> None:
    k = key("types", "int")
    db.put(k, {"hi": limits.INT_MAX, "lo": limits.INT_MIN})
    for value in (2**63, -(2**63) - 1, 2**100):
        with pytest.raises(ex.ParamError) as too_big:
            db.put(k, {"hi": value})
        assert too_big.value.code == ResultCode.PARAM_ERROR
    with pytest.raises(ex.ParamError):
        db.operate(k, [lops.list_append("l", 2**64)])
    with pytest.raises(ex.InvalidRequest) as overflow:
        db.increment(k, "hi", 1)  # the server sees the sum overflow
    raises_code(overflow, ResultCode.PARAMETER_ERROR)
    with pytest.raises(ex.InvalidRequest):
        db.increment(k, "lo", -1)
    _, meta, bins = db.get(k)
    assert bins == {"hi": limits.INT_MAX, "lo": limits.INT_MIN}
    assert meta["gen"] == 1


# -- policies ----------------------------------------------------------------------------------


def test_exists_policies(db: client.Client) -> None:
    k = key("policy", "exists")
    with pytest.raises(ex.RecordNotFound) as update_absent:
        db.put(k, {"a": 1}, policy={"exists": client.POLICY_EXISTS_UPDATE})
    raises_code(update_absent, ResultCode.RECORD_NOT_FOUND)
    with pytest.raises(ex.RecordNotFound) as replace_absent:
        db.put(k, {"a": 1}, policy={"exists": client.POLICY_EXISTS_REPLACE})
    raises_code(replace_absent, ResultCode.RECORD_NOT_FOUND)
    assert db.exists(k)[1] is None

    db.put(k, {"a": 1, "b": 1}, policy={"exists": client.POLICY_EXISTS_CREATE})
    with pytest.raises(ex.RecordExistsError) as create_present:
        db.put(k, {"a": 2}, policy={"exists": client.POLICY_EXISTS_CREATE})
    raises_code(create_present, ResultCode.RECORD_EXISTS)
    assert db.get(k)[1:] == ({"gen": 1, "ttl": -1}, {"a": 1, "b": 1})

    db.put(k, {"a": 2}, policy={"exists": client.POLICY_EXISTS_IGNORE})  # merges
    assert db.get(k)[2] == {"a": 2, "b": 1}
    db.put(k, {"c": 3}, policy={"exists": client.POLICY_EXISTS_UPDATE})  # merges
    assert db.get(k)[2] == {"a": 2, "b": 1, "c": 3}
    db.put(k, {"d": 4}, policy={"exists": client.POLICY_EXISTS_REPLACE})  # replaces
    assert db.get(k)[2] == {"d": 4}
    db.put(k, {"e": 5}, policy={"exists": client.POLICY_EXISTS_CREATE_OR_REPLACE})
    _, meta, bins = db.get(k)
    assert bins == {"e": 5} and meta["gen"] == 5

    fresh = key("policy", "exists-fresh")
    db.put(fresh, {"x": 1}, policy={"exists": client.POLICY_EXISTS_CREATE_OR_REPLACE})
    assert db.get(fresh)[1:] == ({"gen": 1, "ttl": -1}, {"x": 1})


def test_generation_policies(db: client.Client) -> None:
    k = key("policy", "gen")
    db.put(k, {"v": 1})
    db.put(k, {"v": 2})
    eq = {"gen": client.POLICY_GEN_EQ}
    with pytest.raises(ex.RecordGenerationError) as stale:
        db.put(k, {"v": "stale"}, meta={"gen": 1}, policy=eq)
    raises_code(stale, ResultCode.GENERATION_ERROR)
    db.put(k, {"v": 3}, meta={"gen": 2}, policy=eq)
    assert db.get(k)[1:] == ({"gen": 3, "ttl": -1}, {"v": 3})

    gt = {"gen": client.POLICY_GEN_GT}
    for not_greater in (1, 3):
        with pytest.raises(ex.RecordGenerationError) as refused:
            db.put(k, {"v": "old"}, meta={"gen": not_greater}, policy=gt)
        raises_code(refused, ResultCode.GENERATION_ERROR)
    db.put(k, {"v": 4}, meta={"gen": 10}, policy=gt)
    _, meta, bins = db.get(k)
    assert bins == {"v": 4} and meta["gen"] == 4

    with pytest.raises(ex.RecordGenerationError):
        db.remove(k, meta={"gen": 1}, policy={"gen": client.POLICY_GEN_EQ})
    with pytest.raises(ex.RecordGenerationError):
        db.operate(k, [ops.increment("n", 1)], meta={"gen": 3}, policy=eq)
    db.remove(k, meta={"gen": 4}, policy={"gen": client.POLICY_GEN_EQ})
    assert db.exists(k)[1] is None


def test_generations_increase_and_continue_after_a_durable_delete(db: client.Client) -> None:
    k = key("policy", "tomb")
    for expected in (1, 2, 3):
        db.put(k, {"v": expected})
        assert db.get(k)[1]["gen"] == expected
    db.remove(k)  # a tombstone keeps the generation (3 -> 4)
    assert db.exists(k)[1] is None
    db.put(k, {"v": "again"})
    _, meta, bins = db.get(k)
    assert bins == {"v": "again"}
    assert meta["gen"] == 5, "a recreated record continues its generation after the tombstone"
    # The old generations are not reachable again: gen EQ on one of them fails.
    with pytest.raises(ex.RecordGenerationError):
        db.put(k, {"v": "x"}, meta={"gen": 1}, policy={"gen": client.POLICY_GEN_EQ})


def test_key_send_stores_the_user_key(db: client.Client) -> None:
    db.put(key("sendkey", "sent"), {"v": 1}, policy={"key": client.POLICY_KEY_SEND})
    db.put(key("sendkey", 42), {"v": 2}, policy={"key": client.POLICY_KEY_SEND})
    db.put(key("sendkey", "digest-only"), {"v": 3})
    found = {bins["v"]: scanned for scanned, _, bins in db.scan(NS, "sendkey")}
    assert found[1] == (NS, "sendkey", "sent", digest_of("sendkey", "sent"))
    assert found[2] == (NS, "sendkey", 42, digest_of("sendkey", 42))
    assert found[3] == (NS, "sendkey", None, digest_of("sendkey", "digest-only"))
    assert len(found) == 3


def test_ttl_policies(db: client.Client) -> None:
    k = key("ttl", "a")
    db.put(k, {"v": 1}, meta={"ttl": 1000})
    ttl = db.get(k)[1]["ttl"]
    assert 990 <= ttl <= 1000
    db.put(k, {"v": 2}, meta={"ttl": client.TTL_DONT_UPDATE})
    _, meta, bins = db.get(k)
    assert bins == {"v": 2} and 990 <= meta["ttl"] <= ttl
    db.put(k, {"v": 3}, policy={"ttl": client.TTL_DONT_UPDATE})
    assert 990 <= db.get(k)[1]["ttl"] <= ttl
    db.put(k, {"v": 4}, meta={"ttl": client.TTL_NEVER_EXPIRE})
    assert db.get(k)[1]["ttl"] == -1
    db.put(k, {"v": 5}, meta={"ttl": TEN_YEARS_S})
    assert TEN_YEARS_S - 10 <= db.get(k)[1]["ttl"] <= TEN_YEARS_S
    db.put(k, {"v": 6}, policy={"ttl": 300})
    assert 290 <= db.get(k)[1]["ttl"] <= 300
    db.put(k, {"v": 7}, meta={"ttl": client.TTL_NAMESPACE_DEFAULT})  # default-ttl 0: never
    assert db.get(k)[1]["ttl"] == -1

    with pytest.raises(ex.ParamError):
        db.put(k, {"v": 8}, meta={"ttl": TEN_YEARS_S + 1})
    with pytest.raises(ex.ParamError):
        db.put(k, {"v": 8}, policy={"ttl": TEN_YEARS_S + 1})
    with pytest.raises(ex.ParamError):
        db.touch(k, TEN_YEARS_S + 1)
    assert db.get(k)[1:] == ({"gen": 7, "ttl": -1}, {"v": 7})


def test_ttl_over_ten_years_on_the_wire_is_parameter_error(db: client.Client) -> None:
    """The server checks the ttl too, for clients that do not: code 4, nothing written."""
    set_name, user_key = "ttl", "wire"
    frame = record_frame(
        1,
        set_name,
        user_key,
        (ops.write("v", 1),),
        client_id=new_client_id(),
        request_seq=1,
        acked_seq=1,
        policy=WritePolicy(ttl=TEN_YEARS_S + 1),
    )
    (response,) = ask_leader(db, digest_of(set_name, user_key), frame)
    assert response.code == ResultCode.PARAMETER_ERROR, response
    assert response.in_doubt is False
    assert db.exists(key(set_name, user_key))[1] is None


@pytest.mark.parametrize(
    "mode", [client.POLICY_READ_MODE_SC_SESSION, client.POLICY_READ_MODE_SC_LINEARIZE]
)
def test_read_modes_read_your_writes(db: client.Client, mode: int) -> None:
    policy = {"read_mode_sc": mode}
    for n in range(10):
        k = key("readmode", f"{mode}-{n}")
        db.put(k, {"n": n})
        db.increment(k, "n", 1)
        _, meta, bins = db.get(k, policy=policy)
        assert bins == {"n": n + 1} and meta["gen"] == 2
        assert db.exists(k, policy=policy)[1] == {"gen": 2, "ttl": -1}
        db.remove(k)
        assert db.exists(k, policy=policy)[1] is None


# -- limits ------------------------------------------------------------------------------------


def test_bin_name_limit(db: client.Client) -> None:
    k = key("limits", "names")
    fifteen = {"a" * 15: 1, "\u00e9" * 7 + "x": 2}  # 15 bytes each, the second in UTF-8
    db.put(k, fifteen)
    assert db.get(k)[2] == fifteen
    for too_long in ("a" * 16, "\u00e9" * 8):  # 16 bytes
        with pytest.raises(ex.BinNameError) as refused:
            db.put(k, {too_long: 1})
        raises_code(refused, ResultCode.BIN_NAME_TOO_LONG)
        with pytest.raises(ex.BinNameError):
            db.operate(k, [ops.increment(too_long, 1)])
    assert db.get(k)[1]["gen"] == 1


def test_record_size_limit(db: client.Client) -> None:
    k = key("limits", "size")
    record_bytes_max = db.info(f"namespace/{NS}")["config"]["max-record-size"]
    assert record_bytes_max == limits.RECORD_BYTES_DEFAULT
    db.put(k, {"blob": b"x" * (record_bytes_max - 4096)})
    with pytest.raises(ex.RecordTooBig) as too_big:
        db.put(k, {"blob": b"y" * (record_bytes_max + 1)})
    raises_code(too_big, ResultCode.RECORD_TOO_BIG)
    with pytest.raises(ex.RecordTooBig):  # growing the stored record past the limit
        db.append(k, "blob", b"z" * 8192)
    _, meta, bins = db.get(k)
    assert meta["gen"] == 1 and bins["blob"] == b"x" * (record_bytes_max - 4096)
    db.remove(k)


def test_unsupported_values_are_param_errors(db: client.Client) -> None:
    k = key("limits", "types")
    for bad in (object(), {1, 2}, 1j, {"nested": [frozenset()]}, {1.5: "float map key"}):
        with pytest.raises(ex.ParamError) as refused:
            db.put(k, {"v": bad})
        assert refused.value.code == ResultCode.PARAM_ERROR
        assert "v" in refused.value.msg, "the message names the bin"
    with pytest.raises(ex.ParamError):
        db.put(k, {})  # nothing to write
    with pytest.raises(ex.ParamError):
        db.increment(k, "n", "1")  # type: ignore[arg-type]
    with pytest.raises(ex.ParamError):
        db.put(("test", "s"), {"v": 1})  # not a key tuple
    assert db.exists(k)[1] is None


def test_unknown_namespace_is_a_clear_error(db: client.Client) -> None:
    for call in (
        lambda: db.get(("nope", "s", 1)),
        lambda: db.put(("nope", "s", 1), {"v": 1}),
        lambda: db.info("namespace/nope"),
        lambda: db.truncate("nope", None),
        lambda: list(db.scan("nope", None)),
    ):
        with pytest.raises(ex.NamespaceNotFound) as unknown:
            call()
        raises_code(unknown, ResultCode.NAMESPACE_NOT_FOUND)
        assert "nope" in unknown.value.msg


def test_unknown_namespace_on_the_wire(cluster: Cluster) -> None:
    message = wire.RecordMsg(
        namespace="nope",
        digest=client.calc_digest("nope", "s", 1),
        set_name="s",
        ops=(ops.write("v", 1),),
    )
    with raw_connection(cluster.hosts[0]) as connection:
        response = connection.ask(3, message)
    assert response.code == ResultCode.NAMESPACE_NOT_FOUND
    assert response.in_doubt is False


# -- batches, scans, truncate ------------------------------------------------------------------


def partition_groups(db: client.Client) -> int:
    groups = db.info("partition-map")["namespaces"][NS]["partition_groups"]
    assert isinstance(groups, int) and groups >= 2
    return groups


def test_batches_across_every_partition_group(db: client.Client) -> None:
    set_name = "batch"
    written = [key(set_name, n) for n in range(200)]
    missing = [key(set_name, f"missing-{n}") for n in range(20)]
    groups = partition_groups(db)
    spread = {client.get_partition_id(digest_of(set_name, n)) % groups for n in range(200)}
    assert spread == set(range(groups))

    results = db.batch_write([(key(set_name, n), {"n": n, "sq": n**2}) for n in range(200)])
    assert [r.key for r in results] == [(*k, digest_of(set_name, k[2])) for k in written]
    for result in results:
        assert (result.result, result.in_doubt) == (0, False)
        assert result.record is not None and result.record[1] == {"gen": 1, "ttl": -1}

    updates = db.batch_write([(k, [ops.increment("n", 1000), ops.read("n")]) for k in written[:50]])
    for n, result in enumerate(updates):
        assert result.result == 0 and result.record is not None
        assert result.record[1]["gen"] == 2 and result.record[2] == {"n": n + 1000}

    present = range(0, 200, 10)
    mixed = [k for pair in zip(written[::10], missing, strict=True) for k in pair]
    answers = db.batch_read(mixed)
    assert [r.key[:3] for r in answers] == mixed
    for result in answers[1::2]:
        assert (result.result, result.record) == (ResultCode.RECORD_NOT_FOUND, None)
    for n, result in zip(present, answers[::2], strict=True):
        assert result.result == 0 and result.record is not None
        expected = {"n": n + 1000 if n < 50 else n, "sq": n**2}
        assert result.record[2] == expected
        assert result.record[1]["gen"] == (2 if n < 50 else 1)

    every = db.batch_read(written)
    assert [r.record[2]["sq"] for r in every if r.record] == [n**2 for n in range(200)]
    only_sq = db.batch_read(written[:5], ["sq", "absent"])
    assert [r.record[2] for r in only_sq if r.record] == [{"sq": n**2} for n in range(5)]
    meta_only = db.batch_read(written[:5], [])
    assert [(r.record[1]["gen"], r.record[2]) for r in meta_only if r.record] == [(2, {})] * 5

    create = db.batch_write(
        [(k, {"n": -1}) for k in written[:3] + missing[:2]],
        policy={"exists": client.POLICY_EXISTS_CREATE},
    )
    assert [r.result for r in create] == [ResultCode.RECORD_EXISTS] * 3 + [0, 0]
    assert not any(r.in_doubt for r in create)

    removed = db.batch_remove(written[:100] + missing)
    assert [r.result for r in removed] == [0] * 100 + [0, 0] + [ResultCode.RECORD_NOT_FOUND] * 18
    after = db.batch_read(written + missing)
    assert [r.result for r in after] == [ResultCode.RECORD_NOT_FOUND] * 100 + [0] * 100 + [
        ResultCode.RECORD_NOT_FOUND
    ] * 20


def test_scan_of_a_set_returns_each_live_record_once(db: client.Client) -> None:
    set_name = "scan"
    send_key = {"key": client.POLICY_KEY_SEND}
    written = db.batch_write([(key(set_name, n), {"n": n}) for n in range(60)], policy=send_key)
    assert all(r.result == 0 for r in written)
    db.put(key("scan-other", 1), {"n": -1})
    removed = set(range(0, 60, 6))
    assert all(r.result == 0 for r in db.batch_remove([key(set_name, n) for n in removed]))

    scanned = list(db.scan(NS, set_name))
    digests = [k[3] for k, _, _ in scanned]
    assert len(digests) == len(set(digests)) == 50, "each live record once, no tombstones"
    for scanned_key, meta, bins in scanned:
        n = bins["n"]
        assert n not in removed
        assert scanned_key == (NS, set_name, n, digest_of(set_name, n))
        assert meta == {"gen": 1, "ttl": -1}
    assert {bins["n"] for _, _, bins in scanned} == set(range(60)) - removed

    some = list(db.scan(NS, set_name, policy={"max_records": 7}))
    assert len(some) == 7 and {k[3] for k, _, _ in some} <= set(digests)


def test_scan_of_a_partition_range(db: client.Client) -> None:
    set_name = "scan-range"
    assert all(
        r.result == 0 for r in db.batch_write([(key(set_name, n), {"n": n}) for n in range(80)])
    )
    half = limits.PARTITIONS // 2
    pid = {n: client.get_partition_id(digest_of(set_name, n)) for n in range(80)}
    low = [bins["n"] for _, _, bins in db.scan(NS, set_name, partitions=range(half))]
    high = [
        bins["n"] for _, _, bins in db.scan(NS, set_name, partitions=range(half, limits.PARTITIONS))
    ]
    assert sorted(low) == sorted(n for n in range(80) if pid[n] < half)
    assert sorted(high) == sorted(n for n in range(80) if pid[n] >= half)
    assert low and high, "both halves hold records"
    one = list(db.scan(NS, set_name, partitions=[pid[7]]))
    assert [bins["n"] for _, _, bins in one] == [n for n in range(80) if pid[n] == pid[7]]


def test_truncate_of_a_set(db: client.Client) -> None:
    doomed = [key("trunc", n) for n in range(40)]
    kept = [key("trunc-keep", n) for n in range(5)]
    assert all(r.result == 0 for r in db.batch_write([(k, {"n": k[2]}) for k in doomed + kept]))

    assert db.truncate(NS, "trunc") == 40
    assert all(r.result == ResultCode.RECORD_NOT_FOUND for r in db.batch_read(doomed))
    assert list(db.scan(NS, "trunc")) == []
    assert [r.record[2] for r in db.batch_read(kept) if r.record] == [{"n": n} for n in range(5)]
    assert db.truncate(NS, "trunc") == 0

    db.put(doomed[0], {"n": "after"})  # the set takes new records after a truncate
    assert db.get(doomed[0])[2] == {"n": "after"}
    assert [bins for _, _, bins in db.scan(NS, "trunc")] == [{"n": "after"}]


# -- info ---------------------------------------------------------------------------------------


def agreed_counts(db: client.Client) -> tuple[int, int] | None:
    """(objects, tombstones) when every node reports the same numbers and the leaders' shares
    add up to them (every group led, every replica caught up); else None."""
    answers = db.info_all(f"namespace/{NS}")
    if len(answers) != 3 or any(isinstance(a, Exception) for a in answers.values()):
        return None
    counts = {(a["objects"], a["tombstones"]) for a in answers.values()}
    led = sum(a["groups_led"] for a in answers.values())
    leader_objects = sum(a.get("leader_objects", 0) for a in answers.values())
    if len(counts) != 1 or led != partition_groups(db):
        return None
    objects, tombstones = counts.pop()
    return (objects, tombstones) if leader_objects == objects else None


def test_info_object_counts_follow_writes(db: client.Client) -> None:
    found: list[tuple[int, int]] = []

    def settle(expected: tuple[int, int] | None = None) -> tuple[int, int]:
        def agreed() -> bool:
            counts = agreed_counts(db)
            if counts is not None and expected in (None, counts):
                found.append(counts)
                return True
            return False

        wait_until(agreed, f"every node to report {expected or 'the same counts'}")
        return found[-1]

    objects, tombstones = settle()
    fresh = [key("info-count", n) for n in range(25)]
    assert all(r.result == 0 for r in db.batch_write([(k, {"n": 1}) for k in fresh]))
    settle((objects + 25, tombstones))
    assert all(r.result == 0 for r in db.batch_remove(fresh[:5]))
    settle((objects + 20, tombstones + 5))


def every_node_stable(db: client.Client) -> bool:
    """Every node answers "cluster-stable": every group has a leader, every replica applied
    what it knows committed (briefly false after writes, while followers apply)."""
    answers = db.info_all("cluster-stable")
    return len(answers) == 3 and all(
        answer == {"stable": True, "unsettled": []} for answer in answers.values()
    )


def one_leader_per_group(db: client.Client) -> bool:
    statuses = db.info_all("status")
    if any(isinstance(status, Exception) for status in statuses.values()):
        return False
    leads = [group for status in statuses.values() for group in status["leads"]]
    return sorted(leads) == [f"{NS}/{g}" for g in range(launcher.PARTITION_GROUPS_DEFAULT)]


def requests_record(db: client.Client) -> int:
    return sum(s.get("requests_record", 0) for s in db.info_all("statistics").values())


def test_info_commands(db: client.Client, cluster: Cluster) -> None:
    requests_before = requests_record(db)
    written = db.batch_write([(key("info", n), {"n": n}) for n in range(10)])
    assert all(r.result == 0 for r in written)
    assert requests_record(db) >= requests_before + 10

    assert db.info("namespaces") == [NS]
    build = db.info("build")
    assert isinstance(build, str) and build.count(".") == 2

    namespace = db.info(f"namespace/{NS}")
    assert namespace["config"] == {
        "replication-factor": 3,
        "partition-groups": launcher.PARTITION_GROUPS_DEFAULT,
        "strong-consistency": True,
        "commit-to-device": False,
        "default-ttl": 0,
        "max-record-size": limits.RECORD_BYTES_DEFAULT,
        "tomb-raider-period": namespace["config"]["tomb-raider-period"],
    }
    assert namespace["groups_replicated"] == launcher.PARTITION_GROUPS_DEFAULT
    assert namespace["index_bytes"] > 0
    # The node asked may be a follower of a group: it applies an entry once it learns the
    # entry committed, with the leader's next message.
    wait_until(
        lambda: db.info(f"namespace/{NS}")["objects"] >= 10, "the node to apply the 10 writes"
    )

    node_ids = [node.node_id for node in cluster.nodes]
    wait_until(lambda: every_node_stable(db), "every node to report a stable cluster")
    wait_until(lambda: one_leader_per_group(db), "each group to have exactly one leader")
    partition_map = db.info("partition-map")
    assert partition_map["nodes"] == {
        n: list(a) for n, a in zip(node_ids, cluster.hosts, strict=True)
    }
    space = partition_map["namespaces"][NS]
    groups = launcher.PARTITION_GROUPS_DEFAULT
    assert space["partition_groups"] == len(space["leaders"]) == len(space["replicas"]) == groups
    assert all(sorted(replicas) == node_ids for replicas in space["replicas"])
    assert all(leader in node_ids for leader in space["leaders"])
    assert isinstance(partition_map["version"], int) and partition_map["version"] >= groups

    for node_id, address in zip(node_ids, cluster.hosts, strict=True):
        status = db.info("status", node_id)
        assert status["node"] == node_id and status["listen"] == list(address)
        assert sorted(status["groups"]) == [f"{NS}/{g}" for g in range(groups)]
        for name, group in status["groups"].items():
            assert group["role"] in ("leader", "follower", "candidate")
            assert (group["role"] == "leader") == (name in status["leads"])
            assert 0 < group["applied_index"] <= group["commit_index"]
            assert group["term"] >= 1 and group["log_entries"] >= 0

        statistics = db.info("statistics", address)  # a node named by its address
        assert statistics["node"] == node_id and statistics["groups"] == groups
        assert statistics["uptime_s"] > 0 and statistics["requests_info"] > 0
        assert 0 <= statistics["groups_led"] <= groups

    with pytest.raises(ex.InvalidRequest) as unknown:
        db.info("no-such-command")
    assert unknown.value.code == ResultCode.PARAMETER_ERROR


# -- exactly once over the wire --------------------------------------------------------------


def test_a_repeated_request_is_answered_from_the_session(db: client.Client) -> None:
    set_name, user_key = "exactly-once", "counter"
    db.put(key(set_name, user_key), {"n": 0})
    digest = digest_of(set_name, user_key)
    frame = record_frame(
        11,
        set_name,
        user_key,
        (ops.increment("n", 5), ops.read("n")),
        client_id=new_client_id(),
        request_seq=1,
        acked_seq=1,
    )
    # The reply was "lost": the client sends the same frame again, on the same connection
    # and then on a new one; the session table answers both.
    first, again = ask_leader(db, digest, frame, times=2)
    assert first.code == ResultCode.OK, first
    assert first.results == (("n", 5),) and first.generation == 2 and first.ttl == -1
    assert again == first
    assert ask_leader(db, digest, frame) == [first]
    assert db.get(key(set_name, user_key))[1:] == ({"gen": 2, "ttl": -1}, {"n": 5})


def test_a_retry_below_the_acked_floor_is_session_expired(db: client.Client) -> None:
    set_name, user_key = "exactly-once", "floor"
    digest = digest_of(set_name, user_key)
    client_id = new_client_id()

    def frame(request_seq: int) -> bytes:
        return record_frame(
            request_seq,
            set_name,
            user_key,
            (ops.increment("n", 1),),
            client_id=client_id,
            request_seq=request_seq,
            acked_seq=request_seq,
        )

    (first,) = ask_leader(db, digest, frame(1))
    assert first.code == ResultCode.OK
    (second,) = ask_leader(db, digest, frame(2))  # acked_seq 2: the reply of 1 was received
    assert second.code == ResultCode.OK and second.generation == 2
    (late,) = ask_leader(db, digest, frame(1))
    assert late.code == ResultCode.SESSION_EXPIRED, late
    assert late.in_doubt is True, "the server cannot know whether request 1 was applied"
    assert ask_leader(db, digest, frame(2)) == [second]
    assert db.get(key(set_name, user_key))[1:] == ({"gen": 2, "ttl": -1}, {"n": 2})


# -- bad frames ----------------------------------------------------------------------------------


def tampered(frame: bytes, index: int, value: Any) -> bytes:
    """`frame` with field `index` of its body array replaced."""
    fields = codec.unpack_value(frame[wire.LENGTH.size :])
    fields[index] = value
    return wire.frame(codec.pack_value(fields))


def test_bad_frames_are_answered_and_the_connection_keeps_serving(cluster: Cluster) -> None:
    valid_record = record_frame(
        30, "bad", 1, (ops.write("v", 1),), client_id=new_client_id(), request_seq=1, acked_seq=1
    )
    body_not_msgpack = wire.frame(b"\xc1\xc1 not msgpack")
    # Record body fields: 4 digest, 6 ops, 9 read mode, 10 client id (see wire.encode_request).
    cases: list[tuple[bytes, int, int]] = [  # frame, the id answered, the code answered
        (body_not_msgpack, 0, ResultCode.PROTOCOL_ERROR),
        (wire.frame(codec.pack_value({"not": "an array"})), 0, ResultCode.PROTOCOL_ERROR),
        (wire.frame(codec.pack_value([1, 21, wire.Kind.INFO])), 21, ResultCode.PROTOCOL_ERROR),
        (wire.frame(codec.pack_value([1, 22, 77, "x"])), 22, ResultCode.PROTOCOL_ERROR),
        (wire.frame(codec.pack_value([1, 23, wire.Kind.INFO, 5])), 23, ResultCode.PARAMETER_ERROR),
        (
            wire.frame(codec.pack_value([1, 24, wire.Kind.SCAN, NS, None, [5000], None, 10, 1])),
            24,
            ResultCode.PARAMETER_ERROR,
        ),
        (tampered(valid_record, 4, b"short"), 30, ResultCode.PARAMETER_ERROR),
        (tampered(valid_record, 6, "not a list"), 30, ResultCode.PARAMETER_ERROR),
        (tampered(valid_record, 9, 99), 30, ResultCode.PARAMETER_ERROR),
        (tampered(valid_record, 10, "not an int"), 30, ResultCode.PARAMETER_ERROR),
    ]
    for address in cluster.hosts:
        with raw_connection(address) as connection:
            for number, (frame, request_id, code) in enumerate(cases):
                connection.send(frame)
                answered_id, response = connection.receive()
                assert (answered_id, response.code) == (request_id, code), (number, response)
                assert response.message and response.in_doubt is False
                assert isinstance(connection.ask(100 + number, wire.InfoMsg("build")).value, str)


def test_frames_split_and_pipelined(cluster: Cluster) -> None:
    with raw_connection(cluster.hosts[1]) as connection:
        frame = wire.encode_request(1, wire.InfoMsg("namespaces"))
        for cut in (1, 3, 5, len(frame) - 1):
            connection.send(frame[:cut])
            connection.send(frame[cut:])
            assert connection.receive() == (1, wire.Response(value=[NS]))
        connection.send(b"".join(wire.encode_request(n, wire.InfoMsg("build")) for n in range(10)))
        answered = [connection.receive() for _ in range(10)]
        assert sorted(request_id for request_id, _ in answered) == list(range(10))
        assert all(response.code == ResultCode.OK for _, response in answered)


def test_an_oversized_frame_is_answered_then_the_connection_closed(cluster: Cluster) -> None:
    with raw_connection(cluster.hosts[2]) as connection:
        connection.send(wire.LENGTH.pack(wire.FRAME_BYTES_MAX + 1))
        request_id, response = connection.receive()
        assert (request_id, response.code) == (0, ResultCode.PROTOCOL_ERROR)
        assert "over the limit" in response.message
        assert connection.closed_by_server()


def test_a_truncated_frame_then_close_leaves_the_node_serving(cluster: Cluster) -> None:
    for address in cluster.hosts:
        with raw_connection(address) as connection:
            connection.send(wire.LENGTH.pack(100) + b"only part of the body")
        with raw_connection(address) as connection:
            connection.send(wire.encode_request(2, wire.InfoMsg("build"))[:-2])
        with raw_connection(address) as connection:
            assert connection.ask(3, wire.InfoMsg("namespaces")).value == [NS]


def test_a_foreign_protocol_version_closes_the_connection(cluster: Cluster) -> None:
    with raw_connection(cluster.hosts[0]) as connection:
        foreign = [wire.PROTOCOL_VERSION + 1, 3, wire.Kind.INFO, "build"]
        connection.send(wire.frame(codec.pack_value(foreign)))
        request_id, response = connection.receive()
        assert (request_id, response.code) == (3, ResultCode.PROTOCOL_ERROR)
        assert connection.closed_by_server(timeout_s=2.0)


def test_after_the_bad_frames_the_cluster_serves_normally(
    db: client.Client, cluster: Cluster, pids: dict[str, int]
) -> None:
    assert {node.node_id: node.pid() for node in cluster.nodes} == pids
    assert all(node.alive() for node in cluster.nodes)
    wait_until(lambda: every_node_stable(db), "every node to report a stable cluster")
    k = key("after-bad-frames", 1)
    db.put(k, {"v": 1})
    db.increment(k, "v", 1)
    assert db.get(k)[1:] == ({"gen": 2, "ttl": -1}, {"v": 2})


# -- threads -------------------------------------------------------------------------------------


def test_threads_sharing_one_client_count_exactly(db: client.Client) -> None:
    counters = [key("threads", n) for n in range(5)]
    thread_count, increments = 8, 50
    failures: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for n in range(increments):
                db.increment(counters[(thread + n) % len(counters)], "n", 1)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=(t,), name=f"inc-{t}") for t in range(thread_count)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0.001))
    assert not any(thread.is_alive() for thread in threads), "increments did not finish"
    assert failures == []
    per_key = thread_count * increments // len(counters)
    for result in db.batch_read(counters):
        assert result.record is not None
        assert result.record[2] == {"n": per_key}
        assert result.record[1]["gen"] == per_key, "one generation per increment, none lost"


def test_expired_records_read_as_absent_and_the_leader_buries_them(db: client.Client) -> None:
    def tombstones() -> int:
        return sum(
            int(answer["tombstones"])
            for answer in db.info_all("namespace/test").values()
            if isinstance(answer, dict)
        )

    before = tombstones()
    doomed = [key("expiry", n) for n in range(5)]
    for record_key in doomed:
        db.put(record_key, {"v": 1}, meta={"ttl": 1})
    db.put(key("expiry", "kept"), {"v": 1})
    wait_until(lambda: all(db.exists(k)[1] is None for k in doomed), "records to read as expired")
    # The expiry job (once a second on each group leader) turns them into tombstones on every
    # replica: 5 records x 3 replicas.
    wait_until(lambda: tombstones() >= before + 15, "expiry tombstones on every replica")
    assert db.exists(key("expiry", "kept"))[1] is not None
