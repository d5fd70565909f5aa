"""The one msgpack codec: bin values, and records as the device store keeps them.

Values (`pack_value` / `unpack_value`):
- int, float, str, bytes, bool, None, list, dict and `GeoJSON` round-trip with their types:
  str and bytes stay distinct (msgpack str vs bin), bool stays apart from int, a float stays
  a float (always 64-bit), a tuple comes back as a list, map keys may be str, int or bytes.
- `GeoJSON` is the msgpack extension type 23 (Aerospike's GeoJSON particle type), its
  payload the UTF-8 JSON text.
- `pack_value` trusts that values were checked by `values.check_value` (every write does);
  it only refuses what msgpack cannot encode, with PARAMETER_ERROR. `unpack_value` refuses
  bytes that do not decode to exactly one value with PROTOCOL_ERROR.

Records (`encode_record` / `decode_record`), format version 1:

    offset 0  u8      format version (1)
    offset 1  u32 BE  CRC-32 (zlib.crc32) of the body
    offset 5  body    msgpack array [generation, void_time, last_update_ms, set_name,
                                     tombstone, user_key, bins]

- `encode_record` asserts `record.check_record` first: writing a bad record is our bug.
- `decode_record` returns a record equal to the one encoded, or raises RECORD_CORRUPT saying
  what was wrong (length, version, checksum, body, field types, record invariants); it never
  raises anything else. CRC-32 catches every error confined to 32 consecutive bits (so every
  flipped byte), and every truncation or extension of one record makes the CRC disagree
  unless it collides at 2**-32.

Speed: this is on the path of every write and read, so nothing is built per call that can be
built once. Packers are reused from a small free list rather than shared: msgpack's Packer
keeps its buffer between calls and runs our Python `default` hook mid-pack (for GeoJSON),
where another thread could take the GIL and interleave its own pack into the same buffer.
`list.pop` and `list.append` are atomic under the GIL, so each Packer has one user at a time.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Final

import msgpack

from raftstore import limits
from raftstore.errors import RaftstoreError, ResultCode, error
from raftstore.record import Record, RecordMeta, check_record
from raftstore.values import GeoJSON

GEOJSON_EXT_CODE: Final = 23
RECORD_FORMAT_VERSION: Final = 1

_HEADER: Final = struct.Struct(">BI")  # format version, CRC-32 of the body
_HEADER_BYTES: Final = _HEADER.size
_RECORD_FIELDS: Final = 7
_USER_KEY_TYPES: Final = (int, str, bytes)  # exact types: a bool is not a user key
_IDLE_PACKERS_MAX: Final = 64  # enough for every thread of a busy process


def _pack_default(value: object) -> msgpack.ExtType:
    if isinstance(value, GeoJSON):
        return msgpack.ExtType(GEOJSON_EXT_CODE, value.text.encode("utf-8"))
    raise TypeError(f"cannot encode a value of type {type(value).__name__}")


def _ext_hook(code: int, data: bytes) -> GeoJSON:
    if code == GEOJSON_EXT_CODE:
        return GeoJSON(data.decode("utf-8"))
    raise ValueError(f"unknown msgpack extension type {code}")


def _new_packer() -> Any:
    # Every option written out: the encoding must not drift with a library default.
    return msgpack.Packer(
        default=_pack_default,
        use_single_float=False,
        autoreset=True,
        use_bin_type=True,
        strict_types=False,
        datetime=False,
        unicode_errors="strict",
    )


_idle_packers: list[Any] = [_new_packer()]


def pack_value(value: object) -> bytes:
    """msgpack bytes of a bin value (or of any tree of the allowed types)."""
    try:
        packer = _idle_packers.pop()
    except IndexError:  # every idle packer is in use by another thread
        packer = _new_packer()
    try:
        packed: bytes = packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise error(ResultCode.PARAMETER_ERROR, f"value cannot be encoded: {exc}") from None
    finally:
        if len(_idle_packers) < _IDLE_PACKERS_MAX:
            _idle_packers.append(packer)
    return packed


def _unpack(data: bytes | bytearray | memoryview) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        strict_map_key=False,
        ext_hook=_ext_hook,
        unicode_errors="strict",
    )


def unpack_value(data: bytes | bytearray | memoryview) -> Any:
    """The value `pack_value` encoded as `data`."""
    try:
        return _unpack(data)
    except Exception as exc:  # msgpack raises many types for bad input; all mean the same
        raise error(ResultCode.PROTOCOL_ERROR, f"value does not decode: {exc!r}") from None


def encode_record(record: Record) -> bytes:
    check_record(record)
    body = pack_value(
        (
            record.generation,
            record.void_time,
            record.last_update_ms,
            record.set_name,
            record.tombstone,
            record.user_key,
            record.bins,
        )
    )
    return _HEADER.pack(RECORD_FORMAT_VERSION, zlib.crc32(body)) + body


def encoded_record_bytes_restamped(
    encoded: bytes, record: Record, generation: int, last_update_ms: int
) -> int:
    """The length `encode_record` gives `record` with its generation and last-update time
    replaced, from `encoded` (its own encoding): only those two integers change width."""
    return (
        len(encoded)
        + _uint_bytes(generation)
        - _uint_bytes(record.generation)
        + _uint_bytes(last_update_ms)
        - _uint_bytes(record.last_update_ms)
    )


def _uint_bytes(value: int) -> int:
    """msgpack's width for a non-negative int (the packer picks the shortest form)."""
    if value < 0x80:
        return 1
    if value <= 0xFF:
        return 2
    if value <= 0xFFFF:
        return 3
    if value <= 0xFFFF_FFFF:
        return 5
    return 9


def decode_record(data: bytes | bytearray | memoryview) -> Record:
    """The record encoded in `data`, or RECORD_CORRUPT."""
    generation, void_time, last_update_ms, set_name, tombstone, user_key, bins = _fields(data)
    return Record(generation, void_time, last_update_ms, set_name, bins, tombstone, user_key)


def decode_meta(data: bytes | bytearray | memoryview) -> RecordMeta:
    """Only the metadata of the record in `data` (checked as wholly as `decode_record` does),
    without building the record: the index rebuild at open reads every record this way."""
    generation, void_time, last_update_ms, set_name, tombstone, user_key, _ = _fields(data)
    return RecordMeta(
        generation, void_time, last_update_ms, set_name, tombstone, user_key is not None
    )


def _fields(data: bytes | bytearray | memoryview) -> list[Any]:
    if len(data) < _HEADER_BYTES:
        raise _corrupt(f"record is {len(data)} bytes, shorter than its header")
    version, crc = _HEADER.unpack_from(data)
    if version != RECORD_FORMAT_VERSION:
        raise _corrupt(f"unknown record format version {version}")
    body = data[_HEADER_BYTES:]
    if zlib.crc32(body) != crc:
        raise _corrupt("record checksum mismatch")
    try:
        fields = _unpack(body)
    except Exception as exc:  # a checksummed body that does not decode is corrupt, whatever
        raise _corrupt(f"record body does not decode: {exc!r}") from None
    if type(fields) is not list or len(fields) != _RECORD_FIELDS:
        raise _corrupt(f"record body is not a {_RECORD_FIELDS}-field array")
    generation, void_time, last_update_ms, set_name, tombstone, user_key, bins = fields
    problem = _metadata_problem(generation, void_time, last_update_ms, set_name, tombstone)
    if problem is None:
        problem = _content_problem(tombstone, user_key, bins)
    if problem is not None:
        raise _corrupt(problem)
    return fields


def _metadata_problem(
    generation: Any, void_time: Any, last_update_ms: Any, set_name: Any, tombstone: Any
) -> str | None:
    # Exact type checks: msgpack decodes true/false as bool, which isinstance(int) accepts.
    if type(generation) is not int or not 1 <= generation <= limits.GENERATION_MAX:
        return f"bad generation {generation!r}"
    if type(void_time) is not int or void_time < 0:
        return f"bad void time {void_time!r}"
    if type(last_update_ms) is not int or last_update_ms < 0:
        return f"bad last-update time {last_update_ms!r}"
    if type(set_name) is not str:
        return f"set name is {type(set_name).__name__}, not str"
    if type(tombstone) is not bool:
        return f"tombstone flag is {type(tombstone).__name__}, not bool"
    return None


def _content_problem(tombstone: bool, user_key: Any, bins: Any) -> str | None:
    if user_key is not None and type(user_key) not in _USER_KEY_TYPES:
        return f"user key is {type(user_key).__name__}"
    if type(bins) is not dict:
        return f"bins are {type(bins).__name__}, not a map"
    if tombstone and bins:
        return "a tombstone has bins"
    if not tombstone and not bins:
        return "a live record has no bins"
    for name, value in bins.items():
        if type(name) is not str or value is None:
            return f"bad bin {name!r}"
    return None


def _corrupt(what: str) -> RaftstoreError:
    return error(ResultCode.RECORD_CORRUPT, what)
