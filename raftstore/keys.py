"""Keys, digests and partition ids: Aerospike's rule, byte for byte.

Rules:
- `digest = RIPEMD160(set_bytes + particle_type + key_bytes)`, 20 bytes. The namespace is
  validated but not hashed; no set (None or "") hashes as zero set bytes.
- A user key is an int (particle type 1, 8-byte big-endian two's complement, int64 range),
  a str (type 3, UTF-8, "" allowed) or bytes/bytearray (type 4, raw, at least one byte, as
  the official Python client demands). Nothing else: not bool (Aerospike's Python client
  would hash True as the int 1; we refuse the ambiguity), not float, None, list or dict.
- Key bytes are at most `KEY_BYTES_MAX`; a set name is at most `SET_NAME_BYTES_MAX` bytes of
  UTF-8 with no NUL (Aerospike keeps set names as C strings, so a NUL would truncate there).
- `partition_id = (digest[0] | digest[1] << 8) & 0xFFF`: the low 12 bits of the little-endian
  u16 at offset 0, as the server and every official client compute it.
- Every rejected argument raises PARAMETER_ERROR with a message naming the problem.

The RIPEMD-160 implementation is chosen once, at import: OpenSSL's through `hashlib` when the
running OpenSSL provides it (OpenSSL 3 moved it to the "legacy" provider, which some
distributions leave out), else pycryptodome's. Both are exposed so tests can check each one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from raftstore import limits
from raftstore.config import check_namespace_name
from raftstore.errors import ResultCode, error
from raftstore.record import UserKey

PARTICLE_INTEGER = 1
PARTICLE_STRING = 3
PARTICLE_BLOB = 4

_INTEGER_PREFIX = bytes([PARTICLE_INTEGER])
_STRING_PREFIX = bytes([PARTICLE_STRING])
_BLOB_PREFIX = bytes([PARTICLE_BLOB])


def ripemd160_openssl(data: bytes) -> bytes:
    return hashlib.new("ripemd160", data).digest()


def ripemd160_pycryptodome(data: bytes) -> bytes:
    # Imported on first use: it costs ~40 ms and is only needed where OpenSSL lacks RIPEMD-160.
    from Crypto.Hash import RIPEMD160  # noqa: PLC0415

    return bytes(RIPEMD160.new(data).digest())


def _openssl_has_ripemd160() -> bool:
    try:
        hashlib.new("ripemd160")
    except ValueError:  # "unsupported hash type" when the legacy provider is not loaded
        return False
    return True


ripemd160 = ripemd160_openssl if _openssl_has_ripemd160() else ripemd160_pycryptodome


def check_set_name(name: object) -> str:
    """The set name as stored: None means no set and becomes ""."""
    if name is None:
        return ""
    if not isinstance(name, str):
        raise error(ResultCode.PARAMETER_ERROR, f"set name must be str, not {type(name).__name__}")
    if len(name.encode("utf-8")) > limits.SET_NAME_BYTES_MAX:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"set name {name[:80]!r} is over {limits.SET_NAME_BYTES_MAX} bytes",
        )
    if "\x00" in name:
        raise error(ResultCode.PARAMETER_ERROR, f"set name {name!r} contains a NUL character")
    return name


def check_user_key(key: object) -> UserKey:
    """The user key in its stored form (a bytearray becomes bytes); raise if it is not one."""
    _type_and_bytes(key)
    return _stored(key)


def _stored(key: object) -> UserKey:
    if isinstance(key, bytearray):
        return bytes(key)
    assert isinstance(key, int | str | bytes), key
    return key


def _type_and_bytes(key: object) -> bytes:
    """The particle type byte followed by the key's bytes: the digest's input after the set."""
    # bool first: it is an int subclass and would otherwise hash as 0 or 1.
    if isinstance(key, bool):
        raise error(ResultCode.PARAMETER_ERROR, "user key must be int, str or bytes, not bool")
    if isinstance(key, int):
        if not limits.INT_MIN <= key <= limits.INT_MAX:
            raise error(ResultCode.PARAMETER_ERROR, f"int user key {key} is out of int64 range")
        return _INTEGER_PREFIX + key.to_bytes(8, "big", signed=True)
    if isinstance(key, str):
        return _STRING_PREFIX + _bounded(key.encode("utf-8"), "str")
    if isinstance(key, bytes | bytearray):
        if not key:
            raise error(ResultCode.PARAMETER_ERROR, "bytes user key is empty")
        return _BLOB_PREFIX + _bounded(key, "bytes")
    raise error(
        ResultCode.PARAMETER_ERROR,
        f"user key must be int, str or bytes, not {type(key).__name__}",
    )


def _bounded(key_bytes: bytes | bytearray, kind: str) -> bytes | bytearray:
    if len(key_bytes) > limits.KEY_BYTES_MAX:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"{kind} user key is {len(key_bytes)} bytes, over {limits.KEY_BYTES_MAX}",
        )
    return key_bytes


def calc_digest(namespace: str, set_name: str | None, key: UserKey | bytearray) -> bytes:
    """The 20-byte digest of `(namespace, set_name, key)`, equal to Aerospike's."""
    check_namespace_name(namespace)
    return _digest(check_set_name(set_name), key)


def _digest(checked_set_name: str, key: object) -> bytes:
    return ripemd160(checked_set_name.encode("utf-8") + _type_and_bytes(key))


def check_digest(digest: object) -> bytes:
    if not isinstance(digest, bytes | bytearray):
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"digest must be bytes or bytearray, not {type(digest).__name__}",
        )
    if len(digest) != limits.DIGEST_BYTES:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"digest must be exactly {limits.DIGEST_BYTES} bytes, not {len(digest)}",
        )
    return bytes(digest)


def partition_id(digest: bytes | bytearray) -> int:
    """The partition (0..4095) that owns `digest`."""
    check_digest(digest)
    return (digest[0] | digest[1] << 8) & (limits.PARTITIONS - 1)


@dataclass(frozen=True, slots=True)
class Key:
    """A checked key. Build it with `Key.of` (user key known) or `Key.from_digest`."""

    namespace: str
    set_name: str  # "" = no set
    user_key: UserKey | None
    digest: bytes

    def __post_init__(self) -> None:
        assert len(self.digest) == limits.DIGEST_BYTES, self.digest

    @classmethod
    def of(cls, namespace: str, set_name: str | None, user_key: UserKey | bytearray) -> Key:
        check_namespace_name(namespace)
        checked_set_name = check_set_name(set_name)
        digest = _digest(checked_set_name, user_key)  # checks the user key too
        return cls(namespace, checked_set_name, _stored(user_key), digest)

    @classmethod
    def from_digest(cls, namespace: str, set_name: str | None, digest: bytes | bytearray) -> Key:
        check_namespace_name(namespace)
        return cls(namespace, check_set_name(set_name), None, check_digest(digest))

    @property
    def partition_id(self) -> int:
        return partition_id(self.digest)
