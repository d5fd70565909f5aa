"""Digests and partition ids against the vectors Aerospike's own clients publish.

Vectors (namespace "namespace", which is not hashed; set "set" unless noted) come from
aerospike/aerospike-client-go `key_test.go`, aerospike/aerospike-client-rust `src/key.rs`
and aerospike/aerospike-client-python `test/new_tests/test_key_digest.py`; the partition
ids are those of notes/aerospike.md section 2.3. Further published vectors found since are
in EXTRA_VECTORS and RAW_VECTORS with their sources.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import client
from raftstore import errors, keys, limits
from raftstore.errors import ResultCode

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "namespace"
SET = "set"

# (user key, digest hex, partition id)
PUBLISHED_VECTORS: list[tuple[int | str | bytes, str, int]] = [
    (0, "93d943aae37b017ad7e011b0c1d2e2143c2fb37d", 2451),
    (-1, "22116d253745e29fc63fdf760b6e26f7e197e01d", 290),
    (1, "82d7213b469812947c109a6d341e3b5b1dedec1f", 1922),
    (-128, "93191e549f8f3548d7e2cfc958ddc8c65bcbe4c6", 2451),
    (127, "a58f7d98bf60e10fe369c82030b1c9dee053def9", 4005),
    (255, "5a7dd3ea237c30c8735b051524e66fd401a10f6a", 3418),
    (-32768, "7f41e9dd1f3fe3694be0430e04c8bfc7d51ec2af", 383),
    (32767, "309fc9c2619c4f65ff7f4cd82085c3ee7a31fc7c", 3888),
    (65535, "3f0dd44352749a9fd5b7ec44213441ef54c46d57", 3391),
    (-(2**31), "d635a867b755f8f54cdc6275e6fb437df82a728c", 1494),
    (2**31 - 1, "fa8c47b8b898af1bbcb20af0d729ca68359a2645", 3322),
    (2**32 - 1, "2cdf52bf5641027042b9cf9a499e509a58b330e2", 3884),
    (-(2**63), "7185c2a47fb02c996daed26b4e01b83240aee9d4", 1393),
    (2**63 - 1, "1698328974afa62c8e069860c1516f780d63dbb8", 2070),
    ("", "2819b1ff6e346a43b4f5f6b77a88bc3eaac22a83", 2344),
    ("s", "607cddba7cd111745ef0a3d783d57f0e83c8f311", 3168),
    ("a" * 10, "5979fb32a80da070ff356f7695455592272e36c2", 2393),
    ("m" * 100, "f00ad7dbcb4bd8122d9681bca49b8c2ffd4beeed", 2800),
    ("t" * 1000, "07ac412d4c33b8628ab147b8db244ce44ae527f8", 3079),
    ("-" * 10000, "b42e64afbfccb05912a609179228d9249ea1c1a0", 3764),
    ("+" * 100000, "0a3e888c20bb8958537ddd4ba835e4070bd51740", 3594),
    ("haha", "36eb02a807dbade8cd784e7800d76308b4e89212", 2870),
    (b"s", "ca2d96dc9a184d15a7fa2927565e844e9254e001", 3530),
    (b"a" * 10, "d10982327b2b04c7360579f252e164a75f83cd99", 2513),
    (b"m" * 100, "475786aa4ee664532a7d1ea69cb02e4695fcdeed", 1863),
    (b"t" * 1000, "5a32b507518a49bf47fdaa3deca53803f5b2e8c3", 602),
    (b"-" * 10000, "ed65c63f7a1f8c6697eb3894b6409a95461fd982", 1517),
    (b"+" * 100000, "fe19770c371774ba1a1532438d4851b8a773a9e6", 2558),
]

# (set, user key, digest hex, source)
EXTRA_VECTORS: list[tuple[str, int | str | bytes, str, str]] = [
    ("", 1, "a443f05d05d962202b59abb402afae1737dbf66a", "aerospike-client-python"),
    ("set", 123444, "6fa3f682162b45d3a96cd8a5adc86e20c68c3a9c", "aerospike/php-client"),
    ("set", "someValue", "fd70ae4e48c2cfa71b37cfcf05d0ae75f46796c7", "aerospike/php-client"),
    ("", 0, "b346137ba9189579da520162dfdcd61a10fe37d6", "third party: aerospike_driver"),
]
NO_SET_INT_1_PARTITION = 932  # notes section 2.3

# Inputs calc_digest refuses but whose published digests still check the hash and the
# framing: (RIPEMD-160 input, digest hex, partition id or -1 when the notes give none).
RAW_VECTORS: list[tuple[bytes, str, int]] = [
    # Empty blob key: Go, Rust, Ruby and PHP accept it; the Python client (and we) refuse it.
    (b"set\x04", "327e2877b8815c7aeede0d5a8620d4ef8df4a4b4", 3634),
    # List keys (particle type 20, Go client only): [] and [1, blob{1,17}, "str"].
    (b"set\x14\x90", "2af0111192df4ca297232d1641ff52c2ce51ce2d", 42),
    (
        b"set\x14\x93\x01\xa3\x04\x01\x11\xa4\x03str",
        "8f5129e079cf66333a8372192d93072a4c661be2",
        399,
    ),
    # aerospike-client-go key_reflect_test.go: []int{1, 2, 3}.
    (b"set\x14\x93\x01\x02\x03", "a8b63a8208ebebb49d027d51899121fd0d03d2f7", -1),
]

HASHES = [keys.ripemd160_openssl, keys.ripemd160_pycryptodome]


def hash_input(set_name: str, key: int | str | bytes) -> bytes:
    """The digest input written out from the rule, independently of raftstore.keys."""
    if isinstance(key, int):
        return set_name.encode() + b"\x01" + struct.pack(">q", key)
    if isinstance(key, str):
        return set_name.encode() + b"\x03" + key.encode("utf-8")
    return set_name.encode() + b"\x04" + key


def server_partition_id(digest: bytes) -> int:
    """The server's formula: a little-endian u32 at offset 0, masked to 4096 partitions."""
    return int(struct.unpack_from("<I", digest)[0]) & 0xFFF


def assert_parameter_error(exc_info: pytest.ExceptionInfo[errors.RaftstoreError]) -> None:
    exc = exc_info.value
    assert isinstance(exc, errors.InvalidRequest)
    assert exc.code == ResultCode.PARAMETER_ERROR
    assert exc.definite
    assert exc.msg


@pytest.mark.parametrize(("key", "digest_hex", "pid"), PUBLISHED_VECTORS)
def test_published_vectors(key: int | str | bytes, digest_hex: str, pid: int) -> None:
    digest = keys.calc_digest(NAMESPACE, SET, key)
    assert digest.hex() == digest_hex
    assert keys.partition_id(digest) == pid == server_partition_id(digest)


@pytest.mark.parametrize(("key", "digest_hex", "pid"), PUBLISHED_VECTORS)
@pytest.mark.parametrize("ripemd160", HASHES, ids=lambda f: f.__name__)
def test_both_hash_implementations_match_the_published_vectors(
    ripemd160: Callable[[bytes], bytes], key: int | str | bytes, digest_hex: str, pid: int
) -> None:
    assert ripemd160(hash_input(SET, key)).hex() == digest_hex


@pytest.mark.parametrize(("set_name", "key", "digest_hex", "source"), EXTRA_VECTORS)
def test_extra_published_vectors(
    set_name: str, key: int | str | bytes, digest_hex: str, source: str
) -> None:
    digest = keys.calc_digest(NAMESPACE, set_name, key)
    assert digest.hex() == digest_hex, source
    for ripemd160 in HASHES:
        assert ripemd160(hash_input(set_name, key)).hex() == digest_hex


def test_no_set_vector_and_its_partition() -> None:
    digest = keys.calc_digest(NAMESPACE, "", 1)
    assert digest.hex() == "a443f05d05d962202b59abb402afae1737dbf66a"
    assert keys.partition_id(digest) == NO_SET_INT_1_PARTITION
    assert keys.calc_digest(NAMESPACE, None, 1) == digest


@pytest.mark.parametrize(("data", "digest_hex", "pid"), RAW_VECTORS)
@pytest.mark.parametrize("ripemd160", HASHES, ids=lambda f: f.__name__)
def test_raw_vectors(
    ripemd160: Callable[[bytes], bytes], data: bytes, digest_hex: str, pid: int
) -> None:
    digest = ripemd160(data)
    assert digest.hex() == digest_hex
    if pid >= 0:
        assert keys.partition_id(digest) == pid


def test_architecture_example_and_notes_examples() -> None:
    assert keys.calc_digest("test", "set", 1).hex() == "82d7213b469812947c109a6d341e3b5b1dedec1f"
    assert keys.calc_digest("test", "demo", "key1").hex() == (
        "ec91192d4b7f8ce35d5d78d34bca65cbaaaac960"
    )
    assert keys.calc_digest("test", "demo", 42).hex() == "cf5a1365effa4dc53333f2166d103358f8711096"


def test_openssl_is_used_when_it_has_ripemd160() -> None:
    assert keys._openssl_has_ripemd160() is _stdlib_has_ripemd160()
    expected = keys.ripemd160_openssl if _stdlib_has_ripemd160() else keys.ripemd160_pycryptodome
    assert keys.ripemd160 is expected


def test_fallback_is_chosen_when_openssl_lacks_ripemd160(monkeypatch: pytest.MonkeyPatch) -> None:
    def new_without_ripemd160(name: str, data: bytes = b"") -> object:
        raise ValueError(f"unsupported hash type {name}")

    monkeypatch.setattr(hashlib, "new", new_without_ripemd160)
    assert keys._openssl_has_ripemd160() is False


def _stdlib_has_ripemd160() -> bool:
    return "ripemd160" in hashlib.algorithms_available


def test_namespace_is_not_hashed() -> None:
    assert keys.calc_digest("a", SET, 7) == keys.calc_digest("bb", SET, 7)


def test_bytes_and_bytearray_keys_are_the_same_blob() -> None:
    assert keys.calc_digest(NAMESPACE, SET, bytearray(b"xyz")) == keys.calc_digest(
        NAMESPACE, SET, b"xyz"
    )


def test_key_types_are_distinct() -> None:
    digests = {
        keys.calc_digest(NAMESPACE, SET, 1),
        keys.calc_digest(NAMESPACE, SET, "1"),
        keys.calc_digest(NAMESPACE, SET, b"1"),
    }
    assert len(digests) == 3


def test_limits_are_inclusive() -> None:
    keys.calc_digest("n" * limits.NAMESPACE_NAME_BYTES_MAX, "s" * limits.SET_NAME_BYTES_MAX, 1)
    keys.calc_digest(NAMESPACE, SET, b"k" * limits.KEY_BYTES_MAX)
    keys.calc_digest(NAMESPACE, SET, "k" * limits.KEY_BYTES_MAX)


@pytest.mark.parametrize(
    "namespace", ["", None, 7, b"test", "n" * (limits.NAMESPACE_NAME_BYTES_MAX + 1)]
)
def test_bad_namespace(namespace: object) -> None:
    with pytest.raises(errors.RaftstoreError) as exc_info:
        keys.calc_digest(namespace, SET, 1)  # type: ignore[arg-type]
    assert_parameter_error(exc_info)


@pytest.mark.parametrize(
    "set_name",
    [
        "s" * (limits.SET_NAME_BYTES_MAX + 1),
        "é" * 32,  # 32 characters, 64 bytes of UTF-8
        7,
        b"set",
        "a\x00b",
    ],
)
def test_bad_set_name(set_name: object) -> None:
    with pytest.raises(errors.RaftstoreError) as exc_info:
        keys.calc_digest(NAMESPACE, set_name, 1)  # type: ignore[arg-type]
    assert_parameter_error(exc_info)
    with pytest.raises(errors.RaftstoreError) as exc_info:
        keys.check_set_name(set_name)
    assert_parameter_error(exc_info)


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (1.0, "float"),
        (None, "NoneType"),
        ([1], "list"),
        ({"a": 1}, "dict"),
        ((1,), "tuple"),
        (True, "bool"),
        (False, "bool"),
        (2**63, "int64"),
        (-(2**63) - 1, "int64"),
        (b"", "empty"),
        (bytearray(), "empty"),
        (b"k" * (limits.KEY_BYTES_MAX + 1), "over"),
        (bytearray(limits.KEY_BYTES_MAX + 1), "over"),
        ("é" * (limits.KEY_BYTES_MAX // 2 + 1), "over"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v[:8],
)
def test_bad_user_key(key: object, words: str) -> None:
    with pytest.raises(errors.RaftstoreError) as exc_info:
        keys.calc_digest(NAMESPACE, SET, key)  # type: ignore[arg-type]
    assert_parameter_error(exc_info)
    assert words in exc_info.value.msg
    with pytest.raises(errors.RaftstoreError) as exc_info:
        keys.check_user_key(key)
    assert_parameter_error(exc_info)


def test_check_user_key_returns_the_stored_form() -> None:
    assert keys.check_user_key(bytearray(b"ab")) == b"ab"
    assert type(keys.check_user_key(bytearray(b"ab"))) is bytes
    assert keys.check_user_key("") == ""
    assert keys.check_user_key(-5) == -5


def test_check_set_name() -> None:
    assert keys.check_set_name(None) == ""
    assert keys.check_set_name("") == ""
    assert keys.check_set_name("users") == "users"


@pytest.mark.parametrize(
    "digest", [b"", b"\x00" * 19, b"\x00" * 21, "a" * 20, None, [0] * 20, 12345]
)
def test_partition_id_refuses_anything_but_20_bytes(digest: object) -> None:
    with pytest.raises(errors.RaftstoreError) as exc_info:
        keys.partition_id(digest)  # type: ignore[arg-type]
    assert_parameter_error(exc_info)


def test_partition_id_uses_byte_0_and_the_low_nibble_of_byte_1() -> None:
    assert keys.partition_id(bytes([0xFF, 0xFF]) + bytes(18)) == 4095
    assert keys.partition_id(bytes([0x34, 0xF2]) + bytes(18)) == 0x234
    assert keys.partition_id(bytearray([0x01, 0x00]) + bytearray(18)) == 1
    assert keys.partition_id(bytes(2) + b"\xff" * 18) == 0


@given(
    st.text(max_size=limits.SET_NAME_BYTES_MAX // 4).filter(lambda s: "\x00" not in s),
    st.one_of(
        st.integers(limits.INT_MIN, limits.INT_MAX),
        st.text(max_size=200),
        st.binary(min_size=1, max_size=200),
    ),
)
def test_digest_follows_the_rule(set_name: str, key: int | str | bytes) -> None:
    digest = keys.calc_digest(NAMESPACE, set_name, key)
    assert digest == hashlib.new("ripemd160", hash_input(set_name, key)).digest()
    assert 0 <= keys.partition_id(digest) < limits.PARTITIONS
    assert keys.partition_id(digest) == server_partition_id(digest)


@given(st.binary(min_size=20, max_size=20))
def test_partition_id_matches_the_server_formula(digest: bytes) -> None:
    assert keys.partition_id(digest) == server_partition_id(digest)


def test_key_of() -> None:
    key = keys.Key.of(NAMESPACE, None, bytearray(b"k"))
    assert key == keys.Key(NAMESPACE, "", b"k", keys.calc_digest(NAMESPACE, "", b"k"))
    assert type(key.user_key) is bytes
    assert key.partition_id == keys.partition_id(key.digest)
    assert keys.Key.of(NAMESPACE, SET, 1).digest.hex() == PUBLISHED_VECTORS[2][1]
    with pytest.raises(FrozenInstanceError):
        key.set_name = "other"  # type: ignore[misc]
    assert hash(key) == hash(keys.Key.of(NAMESPACE, "", b"k"))


def test_key_from_digest() -> None:
    digest = keys.calc_digest(NAMESPACE, SET, "haha")
    key = keys.Key.from_digest(NAMESPACE, SET, bytearray(digest))
    assert key == keys.Key(NAMESPACE, SET, None, digest)
    assert type(key.digest) is bytes
    assert key.partition_id == 2870


@pytest.mark.parametrize(
    ("namespace", "set_name", "digest"),
    [
        ("", SET, bytes(20)),
        (NAMESPACE, 5, bytes(20)),
        (NAMESPACE, SET, bytes(19)),
        (NAMESPACE, SET, "x" * 20),
    ],
)
def test_key_from_digest_checks_its_arguments(
    namespace: str, set_name: object, digest: object
) -> None:
    with pytest.raises(errors.RaftstoreError) as exc_info:
        keys.Key.from_digest(namespace, set_name, digest)  # type: ignore[arg-type]
    assert_parameter_error(exc_info)


@pytest.mark.parametrize(
    ("namespace", "set_name", "user_key"),
    [("", SET, 1), (NAMESPACE, "s" * 64, 1), (NAMESPACE, SET, 1.5), (NAMESPACE, SET, b"")],
)
def test_key_of_checks_its_arguments(namespace: str, set_name: object, user_key: object) -> None:
    with pytest.raises(errors.RaftstoreError) as exc_info:
        keys.Key.of(namespace, set_name, user_key)  # type: ignore[arg-type]
    assert_parameter_error(exc_info)


def test_client_reexports_under_aerospikes_names() -> None:
    digest = client.calc_digest(NAMESPACE, SET, 1)
    assert digest.hex() == "82d7213b469812947c109a6d341e3b5b1dedec1f"
    assert client.get_partition_id(digest) == 1922
    with pytest.raises(errors.RaftstoreError) as exc_info:
        client.get_partition_id(digest[:19])
    assert_parameter_error(exc_info)


def test_importing_client_loads_neither_lmdb_nor_pysyncobj() -> None:
    probe = (
        "import sys, client; "
        "assert client.calc_digest('test', 'set', 1); "
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lmdb', 'pysyncobj', 'server', 'txn'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
