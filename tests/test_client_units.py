"""The SDK's pure parts: key tuples, policies, meta, config, the partition map, sequence
numbers, the exported names, and that `import client` stays light."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import client
from client import exception as ex
from client import list_operations, map_operations, operations
from client.cluster import Sequences
from client.key_tuples import parse_key
from client.policies import DEFAULTS, Meta, Policy, parse_meta, resolve
from client.routing import parse_partition_map
from client.settings import parse_config
from raftstore import errors, keys
from raftstore import ops as raw_ops
from raftstore.errors import ResultCode
from raftstore.policy import Exists, Gen
from raftstore.wire import ReadMode, RecordMsg

ROOT = Path(__file__).resolve().parent.parent
DIGEST = bytes.fromhex("82d7213b469812947c109a6d341e3b5b1dedec1f")  # ("set", 1), Aerospike's


# -- keys -----------------------------------------------------------------------------------


def test_key_forms() -> None:
    ref = parse_key(("test", "set", 1))
    assert ref.digest == DIGEST and ref.user_key == 1 and ref.wire_set_name == "set"
    assert ref.as_tuple() == ("test", "set", 1, DIGEST)
    assert ref.as_tuple(with_user_key=False) == ("test", "set", None, DIGEST)
    assert parse_key(("test", "set", None, bytearray(DIGEST))).as_tuple() == (
        "test",
        "set",
        None,
        DIGEST,
    )
    assert parse_key(("test", "set", 1, DIGEST)) == ref  # a returned key can be passed back
    assert parse_key({"ns": "test", "set": "set", "key": 1}) == ref
    no_set = parse_key(("test", None, "k"))
    assert no_set.set_name is None and no_set.wire_set_name == ""
    assert no_set.digest == keys.calc_digest("test", None, "k")
    assert parse_key(("test", "s", bytearray(b"\x01"))).user_key == b"\x01"
    assert ref.partition_id == client.get_partition_id(DIGEST)
    assert client.calc_digest("test", "set", 1) == DIGEST


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("test", "tuple"),
        (("test", "s"), "tuple"),
        (("test", "s", 1, DIGEST, 5), "tuple"),
        ((1, "s", 1), "namespace"),
        (("", "s", 1), "namespace"),
        (("n" * 40, "s", 1), "namespace"),
        (("test", 5, 1), "set"),
        (("test", "s" * 64, 1), "set name"),
        (("test", "s", 1.5), "float"),
        (("test", "s", True), "bool"),
        (("test", "s", [1]), "list"),
        (("test", "s", 2**63), "int64"),
        (("test", "s", b""), "empty"),
        (("test", "s", None), "neither"),
        (("test", "s", None, b"short"), "20 bytes"),
        (("test", "s", None, "x" * 20), "bytes"),
        (("test", "s", 2, DIGEST), "not the digest"),
        ({"ns": "test", "user": 1}, "key dict"),
    ],
)
def test_bad_keys_are_param_errors(key: Any, words: str) -> None:
    with pytest.raises(ex.ParamError) as caught:
        parse_key(key)
    assert caught.value.code == ResultCode.PARAM_ERROR == -2
    assert words in caught.value.msg


# -- policies and meta ----------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = DEFAULTS["write"]
    assert policy == Policy()
    assert policy.read_mode == ReadMode.LINEARIZE and policy.max_retries == 2
    assert (policy.total_timeout_ms, policy.socket_timeout_ms) == (1000, 30000)
    assert DEFAULTS["scan"].total_timeout_ms == 30000


def test_policy_translation() -> None:
    policy = resolve(
        "operate",
        DEFAULTS["operate"],
        {
            "exists": client.POLICY_EXISTS_REPLACE,
            "gen": client.POLICY_GEN_GT,
            "key": client.POLICY_KEY_SEND,
            "ttl": client.TTL_DONT_UPDATE,
            "read_mode_sc": client.POLICY_READ_MODE_SC_SESSION,
            "total_timeout": 0,
            "socket_timeout": 50,
            "max_retries": 0,
            "sleep_between_retries": 5,
            "durable_delete": True,
        },
    )
    assert (policy.exists, policy.gen, policy.send_key) == (Exists.REPLACE, Gen.GT, True)
    assert (policy.ttl, policy.read_mode) == (-2, ReadMode.SESSION)
    assert (policy.total_timeout_ms, policy.socket_timeout_ms) == (0, 50)
    assert (policy.max_retries, policy.sleep_between_retries_ms) == (0, 5)
    write = policy.write_policy(Meta(gen=7, ttl=30))
    assert (write.exists, write.gen, write.generation, write.ttl, write.send_key) == (
        Exists.REPLACE,
        Gen.GT,
        7,
        30,
        True,
    )
    assert policy.write_policy(Meta(ttl=client.TTL_CLIENT_DEFAULT)).ttl == -2
    assert policy.write_policy(None).generation == 0
    assert resolve("read", DEFAULTS["read"], None) is DEFAULTS["read"]


@pytest.mark.parametrize(
    ("kind", "given", "words"),
    [
        ("read", {"exists": 1}, "unknown read policy key 'exists'"),
        ("write", {"read_mode_sc": 1}, "unknown write policy key"),
        ("write", {"timeout": 5}, "allowed:"),
        ("write", {"exists": 9}, "POLICY_EXISTS_CREATE=1"),
        ("write", {"gen": "eq"}, "POLICY_GEN_EQ"),
        ("write", {"key": 2}, "POLICY_KEY_SEND"),
        ("write", {"ttl": -4}, "ttl"),
        ("write", {"ttl": 10**10}, "ttl"),
        ("write", {"total_timeout": -1}, "total_timeout"),
        ("write", {"max_retries": True}, "bool"),
        ("write", {"durable_delete": 1}, "bool"),
        ("read", {"read_mode_sc": 2}, "ALLOW_REPLICA"),
        ("read", {"read_mode_sc": 7}, "POLICY_READ_MODE_SC_LINEARIZE"),
        ("read", [("key", 1)], "must be a dict"),
    ],
)
def test_bad_policies_are_param_errors(kind: str, given: Any, words: str) -> None:
    with pytest.raises(ex.ParamError) as caught:
        resolve(kind, DEFAULTS[kind], given)
    assert words in caught.value.msg


def test_meta() -> None:
    assert parse_meta(None) is None
    assert parse_meta({}) == Meta()
    assert parse_meta({"gen": 3, "ttl": -1}) == Meta(gen=3, ttl=-1)
    for bad, words in (
        ({"generation": 1}, "unknown meta key"),
        ({"gen": -1}, "gen"),
        ({"gen": 70000}, "gen"),
        ({"ttl": "1"}, "int"),
        ([1], "dict"),
    ):
        with pytest.raises(ex.ParamError, match=words):
            parse_meta(bad)


def test_config() -> None:
    settings = parse_config(
        {
            "hosts": [("127.0.0.1", 3000), ["::1", 3001]],
            "policies": {"read": {"read_mode_sc": 0}, "write": {"max_retries": 5}},
            "timeout_ms": 250,
            "max_conns_per_node": 2,
        }
    )
    assert settings.hosts == (("127.0.0.1", 3000), ("::1", 3001))
    assert settings.policies["read"].read_mode == ReadMode.SESSION
    assert settings.policies["write"].max_retries == 5
    assert settings.policies["operate"] == DEFAULTS["operate"]
    assert (settings.timeout_ms, settings.max_conns_per_node) == (250, 2)
    for bad, words in (
        ({}, "hosts"),
        ({"hosts": []}, "hosts"),
        ({"hosts": [("h",)]}, "host"),
        ({"hosts": [("h", 0)]}, "port"),
        ({"hosts": [("h", 1)], "lua": {}}, "unknown config key"),
        ({"hosts": [("h", 1)], "policies": {"query": {}}}, "unknown policy kind"),
        ({"hosts": [("h", 1)], "policies": {"read": {"ttl": 1}}}, "unknown read policy key"),
        ({"hosts": [("h", 1)], "max_conns_per_node": 0}, "max_conns_per_node"),
    ):
        with pytest.raises(ex.ParamError, match=words):
            parse_config(bad)
    with pytest.raises(ex.ParamError):
        client.client({"hosts": [("h", 1)], "policies": {"write": {"nope": 1}}})


# -- argument checks of the client's methods (before anything is sent) -----------------------------


def test_method_arguments_are_checked_before_connecting() -> None:
    db = client.client({"hosts": [("127.0.0.1", 1)]})
    # Not connected: a well-formed call says so; the checks below come first.
    with pytest.raises(ex.ConnectionError):
        db.get(("test", "s", 1))
    db._cluster = _never_used_cluster()  # reach the argument checks without a server
    for call, words in (
        (lambda: db.put(("test", "s", 1), {}), "at least one bin"),
        (lambda: db.put(("test", "s", 1), [("a", 1)]), "dict"),  # type: ignore[arg-type]
        (lambda: db.put(("test", "s", 1), {"a": object()}), "unsupported value"),
        (lambda: db.put(("test", "s", 1), {"": 1}), "empty"),
        (lambda: db.put(("test", "s", 1), {"a": 1}, meta={"x": 1}), "meta"),
        (lambda: db.put(("test", "s", 1), {"a": 1}, policy={"bogus": 1}), "bogus"),
        (lambda: db.get(("test", "s", 1.0)), "float"),
        (lambda: db.select(("test", "s", 1), []), "at least one bin"),
        (lambda: db.operate(("test", "s", 1), []), "at least one operation"),
        (lambda: db.operate(("test", "s", 1), [("read", "a")]), "client.operations"),  # type: ignore[list-item]
        (lambda: db.increment(("test", "s", 1), "n", "1"), "offset"),  # type: ignore[arg-type]
        (lambda: db.append(("test", "s", 1), "n", 1), "str or bytes"),  # type: ignore[arg-type]
        (lambda: db.touch(("test", "s", 1), -5), "ttl"),
        (lambda: db.batch_read("abc"), "list"),
        (lambda: db.batch_write([(("test", "s", 1),)]), "batch_write record"),
        (lambda: db.scan("test", partitions=[4096]), "partition id"),
        (lambda: db.scan("", None), "namespace"),
        (lambda: db.truncate("test", None, -1), "nanos"),
        (lambda: db.info(""), "info command"),
    ):
        with pytest.raises(ex.ParamError, match=words):
            call()
    with pytest.raises(ex.BinNameError):
        db.put(("test", "s", 1), {"x" * 16: 1})  # the official client's class for this


def _never_used_cluster() -> Any:
    from client.cluster import Cluster
    from client.connection import ConnectionOptions

    cluster = Cluster([("127.0.0.1", 1)], ConnectionOptions(0.1, 0.1), 1)
    return cluster


# -- the partition map -----------------------------------------------------------------------------


def test_partition_map_parsing_and_routing() -> None:
    parsed = parse_partition_map(
        {
            "version": 3,
            "nodes": {"A": ["127.0.0.1", 3000], 7: ["127.0.0.1", 3001]},
            "namespaces": {
                "test": {"partition_groups": 3, "leaders": ["A", 7, None], "replicas": [[], [], []]}
            },
        }
    )
    assert parsed.nodes == {"A": ("127.0.0.1", 3000), "7": ("127.0.0.1", 3001)}
    assert [parsed.leader("test", p) for p in range(4)] == ["A", "7", None, "A"]
    assert parsed.leader("other", 0) is None
    assert parsed.supersedes(None) and parsed.supersedes(parsed)
    older = parse_partition_map({"version": 2, "nodes": {}, "namespaces": {}})
    assert not older.supersedes(parsed)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {"version": "1", "nodes": {}, "namespaces": {}},
        {"version": 1, "nodes": [], "namespaces": {}},
        {"version": 1, "nodes": {"A": ["h"]}, "namespaces": {}},
        {"version": 1, "nodes": {"A": ["h", 70000]}, "namespaces": {}},
        {"version": 1, "nodes": {}, "namespaces": {"t": {"partition_groups": 0, "leaders": []}}},
        {"version": 1, "nodes": {}, "namespaces": {"t": {"partition_groups": 2, "leaders": ["A"]}}},
        {"version": 1, "nodes": {}, "namespaces": {"t": {"partition_groups": 1, "leaders": [1.5]}}},
    ],
)
def test_bad_partition_maps_are_protocol_errors(raw: Any) -> None:
    with pytest.raises(ex.ProtocolError):
        parse_partition_map(raw)


# -- sequence numbers ----------------------------------------------------------------------------


def test_sequences_track_the_smallest_outstanding() -> None:
    sequences = Sequences()
    assert sequences.acked() == 1
    first, second, third = sequences.begin(), sequences.begin(), sequences.begin()
    assert (first, second, third) == (1, 2, 3) and sequences.acked() == 1
    sequences.end(second)
    assert sequences.acked() == 1
    sequences.end(first)
    assert sequences.acked() == 3
    sequences.end(third)
    assert sequences.acked() == 4


def test_sequences_are_unique_across_threads() -> None:
    sequences = Sequences()
    seen: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [sequences.begin() for _ in range(500)]
        for seq in mine:
            sequences.end(seq)
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert sorted(seen) == list(range(1, 4001))
    assert sequences.acked() == 4001


def test_each_attempt_tells_the_server_how_long_the_client_waits() -> None:
    from client.cluster import UNBOUNDED_ATTEMPT_MS, Call, Target

    message = RecordMsg("test", DIGEST, "set", (raw_ops.read(),), client_id=9)

    def attempt(**policy: int) -> Any:
        call = Call(
            Target("test", 0), message, is_write=False, policy=replace(Policy(), **policy), seq=4
        )
        return call.attempt_message(acked_seq=2, now=call.retry_at)

    bounded = attempt(total_timeout_ms=1000, socket_timeout_ms=250)
    assert (bounded.request_seq, bounded.acked_seq, bounded.client_id) == (4, 2, 9)
    assert 240 <= bounded.timeout_ms <= 250
    assert 900 <= attempt(total_timeout_ms=1000, socket_timeout_ms=0).timeout_ms <= 1000
    unbounded = attempt(total_timeout_ms=0, socket_timeout_ms=0)
    assert unbounded.timeout_ms == UNBOUNDED_ATTEMPT_MS


# -- exported names -----------------------------------------------------------------------------


def test_constants_have_the_official_numbers() -> None:
    assert (
        client.POLICY_EXISTS_IGNORE,
        client.POLICY_EXISTS_CREATE,
        client.POLICY_EXISTS_UPDATE,
        client.POLICY_EXISTS_REPLACE,
        client.POLICY_EXISTS_CREATE_OR_REPLACE,
    ) == (0, 1, 2, 3, 4)
    assert (client.POLICY_GEN_IGNORE, client.POLICY_GEN_EQ, client.POLICY_GEN_GT) == (0, 1, 2)
    assert (client.POLICY_KEY_DIGEST, client.POLICY_KEY_SEND) == (0, 1)
    assert (client.POLICY_READ_MODE_SC_SESSION, client.POLICY_READ_MODE_SC_LINEARIZE) == (0, 1)
    assert (
        client.TTL_NAMESPACE_DEFAULT,
        client.TTL_NEVER_EXPIRE,
        client.TTL_DONT_UPDATE,
        client.TTL_CLIENT_DEFAULT,
    ) == (0, -1, -2, -3)


def test_every_error_class_is_exported() -> None:
    for row in errors.RESULT_CODES:
        if row.class_name == "Ok":
            continue
        assert getattr(ex, row.class_name) is errors.by_code(row.code), row.class_name
    assert ex.AerospikeError is errors.RaftstoreError
    assert issubclass(ex.RecordNotFound, ex.RecordError)
    assert issubclass(ex.ParamError, ex.ClientError)
    assert issubclass(ex.TimeoutError, ex.AerospikeError)
    assert set(ex.__all__) >= {"AerospikeError", "RecordNotFound", "TimeoutError", "NotLeader"}


def test_op_builders_are_the_engines() -> None:
    for module, names in (
        (operations, ["read", "write", "increment", "append", "prepend", "touch", "delete"]),
        (
            list_operations,
            [
                "list_append",
                "list_append_items",
                "list_insert",
                "list_pop",
                "list_remove",
                "list_set",
                "list_get",
                "list_get_range",
                "list_size",
                "list_clear",
                "list_sort",
            ],
        ),
        (
            map_operations,
            [
                "map_put",
                "map_put_items",
                "map_increment",
                "map_get_by_key",
                "map_remove_by_key",
                "map_size",
                "map_clear",
            ],
        ),
    ):
        for name in names:
            assert getattr(module, name) is getattr(raw_ops, name)
    assert operations.increment("n", 2) == raw_ops.Op(raw_ops.OpCode.INCREMENT, "n", (2,))


def test_public_api_names() -> None:
    methods = {
        "connect",
        "is_connected",
        "close",
        "put",
        "get",
        "select",
        "exists",
        "remove",
        "remove_bin",
        "touch",
        "operate",
        "operate_ordered",
        "append",
        "prepend",
        "increment",
        "batch_read",
        "batch_write",
        "batch_remove",
        "scan",
        "info",
        "info_all",
        "info_single_node",
        "info_random_node",
        "get_node_names",
        "truncate",
        "__enter__",
        "__exit__",
    }
    assert methods <= set(dir(client.Client))
    record = client.BatchRecord(("test", "s", 1, DIGEST), 0, None, False)
    with pytest.raises(AttributeError):
        record.result = 2  # type: ignore[misc]


def test_importing_client_pulls_in_no_heavy_module() -> None:
    # raftstore.operations is allowed: pure, and the transaction API applies a transaction's
    # buffered writes with it (read-your-writes).
    code = (
        "import sys, client, client.api, client.cluster;"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lmdb', 'pysyncobj', 'server', 'txn') or m in "
        "('raftstore.engine', 'raftstore.store', 'raftstore.kv', 'raftstore.replication',"
        " 'raftstore.state_machine'));"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
