"""Key tuples, the official client's way of naming a record, checked and turned into digests.

Accepted forms (anything else is a ParamError saying what is wrong):
- `(namespace, set, user_key)`: set is a str or None; the user key an int (int64), a str or
  bytes/bytearray (not empty), as `raftstore.keys` defines; the digest is computed here.
- `(namespace, set, None, digest)`: a record known by its 20-byte digest only.
- `(namespace, set, user_key, digest)`: the form the SDK returns, so results can be passed
  back in; the digest must be the user key's.
- a dict `{"ns", "set", "key", "digest"}` with the same meaning ("key"/"digest" optional).
Returned keys are always `(namespace, set, user_key or None, digest)` with digest as bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from client.checks import param_error, param_errors
from raftstore import keys
from raftstore.record import UserKey

KeyTuple = tuple[str, str | None, UserKey | None, bytes]


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A checked key: what the caller named, and its digest."""

    namespace: str
    set_name: str | None  # as given: None for "no set"
    user_key: UserKey | None
    digest: bytes

    @property
    def wire_set_name(self) -> str:
        return self.set_name or ""

    @property
    def partition_id(self) -> int:
        return keys.partition_id(self.digest)

    def as_tuple(self, *, with_user_key: bool = True) -> KeyTuple:
        user_key = self.user_key if with_user_key else None
        return (self.namespace, self.set_name, user_key, self.digest)


def parse_key(key: object) -> KeyRef:
    """The checked form of a key tuple (or key dict); ParamError if it is not one."""
    if isinstance(key, Mapping):
        unknown = set(key) - {"ns", "set", "key", "digest"}
        if unknown or "ns" not in key:
            raise param_error(
                f"a key dict has 'ns' and optionally 'set', 'key', 'digest'; got {sorted(key)}"
            )
        return _parse(key["ns"], key.get("set"), key.get("key"), key.get("digest"))
    if not isinstance(key, tuple | list) or len(key) not in (3, 4):
        raise param_error(
            "a key is a tuple (namespace, set, key) or (namespace, set, None, digest), "
            f"not {_describe(key)}"
        )
    digest = key[3] if len(key) == 4 else None
    return _parse(key[0], key[1], key[2], digest)


def _parse(namespace: object, set_name: object, user_key: object, digest: object) -> KeyRef:
    if not isinstance(namespace, str):
        raise param_error(f"key namespace must be a str, not {type(namespace).__name__}")
    if set_name is not None and not isinstance(set_name, str):
        raise param_error(f"key set must be a str or None, not {type(set_name).__name__}")
    with param_errors("invalid key"):
        if user_key is None:
            if digest is None:
                raise param_error("invalid key: neither a user key nor a digest is given")
            checked = keys.Key.from_digest(namespace, set_name, _digest_bytes(digest))
            return KeyRef(namespace, set_name, None, checked.digest)
        checked = keys.Key.of(namespace, set_name, user_key)  # type: ignore[arg-type]
    if digest is not None and _digest_bytes(digest) != checked.digest:
        raise param_error("invalid key: the digest given is not the digest of the user key")
    return KeyRef(namespace, set_name, checked.user_key, checked.digest)


def _digest_bytes(digest: object) -> bytes:
    with param_errors("invalid key"):
        return keys.check_digest(digest)


def _describe(value: object) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"
