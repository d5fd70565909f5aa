"""The codec: values keep their types, records round-trip, and damage is always detected.

Equality here is `same`: type-exact and bit-exact, because Python's `==` calls True equal to
1, 1.0 equal to 1 and 0.0 equal to -0.0, which is exactly what the codec must not blur.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import struct
import zlib
from dataclasses import MISSING
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftstore import codec, errors, limits
from raftstore.commands import RecordRequest, Result
from raftstore.errors import ResultCode
from raftstore.frozen import fast_init
from raftstore.ops import Op, OpCode
from raftstore.policy import WritePolicy
from raftstore.record import Record, RecordMeta
from raftstore.txn_commands import TxnApply, TxnCommit, TxnPrepare, TxnRead, TxnResolve, TxnWrite
from raftstore.txn_participant import Intent, TxnRecord
from raftstore.values import GeoJSON

POINT = GeoJSON('{"type":"Point","coordinates":[-122.5,37.7]}')


def same(a: Any, b: Any) -> bool:
    """Equal with types and float bits: [True] is not [1], {1.0: x} is not {1: x}."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        pairs = zip(a.items(), b.items(), strict=False)
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in pairs
        )
    return bool(a == b)


def same_record(a: Record, b: Record) -> bool:
    return same(
        [a.generation, a.void_time, a.last_update_ms, a.set_name, a.tombstone, a.user_key, a.bins],
        [b.generation, b.void_time, b.last_update_ms, b.set_name, b.tombstone, b.user_key, b.bins],
    )


# Strategies ------------------------------------------------------------------------------

ints = st.integers(limits.INT_MIN, limits.INT_MAX)
geojsons = st.builds(
    lambda x, y: GeoJSON(f'{{"type":"Point","coordinates":[{x},{y}]}}'),
    st.floats(-180, 180),
    st.floats(-90, 90),
)
scalars = st.one_of(ints, st.floats(), st.text(), st.binary(), st.booleans(), st.none(), geojsons)
map_keys = st.one_of(st.text(max_size=20), ints, st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(map_keys, children, max_size=6)
    ),
    max_leaves=30,
)
bin_values = values.filter(lambda v: v is not None)  # None as a bin value means "remove"
bin_names = st.text(min_size=1, max_size=limits.BIN_NAME_BYTES_MAX // 4)
set_names = st.text(max_size=limits.SET_NAME_BYTES_MAX // 4)
user_keys = st.one_of(st.none(), ints, st.text(max_size=50), st.binary(min_size=1, max_size=50))


@st.composite
def records(draw: st.DrawFn) -> Record:
    tombstone = draw(st.booleans())
    bins = {} if tombstone else draw(st.dictionaries(bin_names, bin_values, min_size=1))
    return Record(
        generation=draw(st.integers(1, limits.GENERATION_MAX)),
        void_time=draw(st.integers(0, 2**32 - 1)),
        last_update_ms=draw(st.integers(0, 2**63 - 1)),
        set_name=draw(set_names),
        bins=bins,
        tombstone=tombstone,
        user_key=draw(user_keys),
    )


SAMPLES = [
    Record(1, 0, 1_700_000_000_000, "users", {"b": "x" * 100}),
    Record(
        65535,
        480_000_000,
        1_700_000_000_123,
        "s",
        {
            "i": -(2**63),
            "f": -0.0,
            "s": "héllo",
            "y": b"\x00\xff",
            "t": True,
            "l": [1, 1.0, True, "1", b"1", None, [], {}],
            "m": {1: "int", "1": "str", b"1": "bytes", 2: {"deep": [POINT]}},
            "g": POINT,
        },
        user_key=b"\x01\x02",
    ),
    Record(7, 0, 0, "", {}, tombstone=True, user_key="alice"),
]


# Values ----------------------------------------------------------------------------------


@given(values)
def test_values_round_trip_with_their_types(value: Any) -> None:
    assert same(codec.unpack_value(codec.pack_value(value)), value)


@pytest.mark.parametrize(
    ("value", "expected_type"),
    [
        (True, bool),
        (False, bool),
        (1, int),
        (0, int),
        (1.0, float),
        (0.0, float),
        (float("inf"), float),
        ("a", str),
        (b"a", bytes),
        (bytearray(b"a"), bytes),
        (None, type(None)),
        ((1, 2), list),
        ([], list),
        ({}, dict),
    ],
)
def test_type_distinctions(value: Any, expected_type: type) -> None:
    decoded = codec.unpack_value(codec.pack_value(value))
    assert type(decoded) is expected_type
    assert decoded == value or (isinstance(value, tuple | bytearray) and decoded == list(value))


def test_str_bytes_bool_int_float_encode_differently() -> None:
    encodings = {codec.pack_value(v) for v in ("1", b"1", 1, 1.0, True)}
    assert len(encodings) == 5
    assert codec.pack_value(1.5) == b"\xcb" + struct.pack(">d", 1.5)  # always 64-bit


def test_nan_keeps_its_bits() -> None:
    decoded = codec.unpack_value(codec.pack_value(float("nan")))
    assert isinstance(decoded, float)
    assert math.isnan(decoded)


def test_tuples_come_back_as_lists() -> None:
    assert same(codec.unpack_value(codec.pack_value((1, (2, "x")))), [1, [2, "x"]])


def test_map_keys_of_every_allowed_type() -> None:
    value = {"k": 1, 7: 2, b"k": 3, -1: {b"": [None]}}
    assert same(codec.unpack_value(codec.pack_value(value)), value)


def test_geojson_is_extension_type_23() -> None:
    packed = codec.pack_value(POINT)
    assert packed == msgpack.packb(msgpack.ExtType(23, POINT.text.encode("utf-8")))
    decoded = codec.unpack_value(packed)
    assert type(decoded) is GeoJSON
    assert decoded == POINT
    nested = {"where": [POINT, {"again": POINT}]}
    assert same(codec.unpack_value(codec.pack_value(nested)), nested)


def test_geojson_text_is_utf8() -> None:
    place = GeoJSON('{"type":"Point","coordinates":[0,0],"name":"Zürich"}')
    assert codec.unpack_value(codec.pack_value(place)) == place


@pytest.mark.parametrize("value", [object(), {1, 2}, 1j, 2**64, -(2**63) - 1, [object()]])
def test_pack_value_refuses_what_it_cannot_encode(value: Any) -> None:
    with pytest.raises(errors.InvalidRequest) as exc_info:
        codec.pack_value(value)
    assert exc_info.value.code == ResultCode.PARAMETER_ERROR
    # The packer that failed is reused and must have dropped its partial output.
    assert codec.pack_value([1, "a"]) == msgpack.packb([1, "a"])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x92\x01",  # array of 2 with 1 item
        b"\x01\x02",  # two values
        b"\xa2\xff\xfe",  # str that is not UTF-8
        b"\xd4\x05\x00",  # extension type 5: unknown
        b"\xd5\x17\xff\xfe",  # GeoJSON whose text is not UTF-8
        b"\x81\x90\x01",  # map keyed by a list
        b"\xdd\xff\xff\xff\xff",  # array claiming 2**32-1 items
    ],
)
def test_unpack_value_refuses_bad_bytes(data: bytes) -> None:
    with pytest.raises(errors.ProtocolError) as exc_info:
        codec.unpack_value(data)
    assert exc_info.value.code == ResultCode.PROTOCOL_ERROR


def test_a_pack_inside_a_pack_does_not_share_a_packer(monkeypatch: pytest.MonkeyPatch) -> None:
    # msgpack runs our `default` hook mid-pack; another thread may pack at that moment. Packing
    # from inside the hook is the same interleaving, made deterministic.
    original = codec._pack_default
    inner: list[bytes] = []

    def interleaving_default(value: object) -> msgpack.ExtType:
        inner.append(codec.pack_value(["inner", 1]))
        return original(value)

    monkeypatch.setattr(codec, "_pack_default", interleaving_default)
    monkeypatch.setattr(codec, "_idle_packers", [codec._new_packer()])
    outer = codec.pack_value(["outer", POINT, 2])
    assert inner == [msgpack.packb(["inner", 1])]
    assert same(codec.unpack_value(outer), ["outer", POINT, 2])


# Records ---------------------------------------------------------------------------------


@pytest.mark.parametrize("record", SAMPLES)
def test_record_layout(record: Record) -> None:
    data = codec.encode_record(record)
    assert data[0] == codec.RECORD_FORMAT_VERSION == 1
    assert struct.unpack_from(">I", data, 1)[0] == zlib.crc32(data[5:])
    fields = msgpack.unpackb(data[5:], strict_map_key=False, ext_hook=codec._ext_hook)
    assert same(
        fields,
        [
            record.generation,
            record.void_time,
            record.last_update_ms,
            record.set_name,
            record.tombstone,
            record.user_key,
            record.bins,
        ],
    )


@pytest.mark.parametrize("record", SAMPLES)
def test_sample_records_round_trip(record: Record) -> None:
    data = codec.encode_record(record)
    assert same_record(codec.decode_record(data), record)
    assert same_record(codec.decode_record(bytearray(data)), record)
    assert same_record(codec.decode_record(memoryview(data)), record)


@given(records())
def test_records_round_trip(record: Record) -> None:
    decoded = codec.decode_record(codec.encode_record(record))
    assert same_record(decoded, record)


@given(
    records(),
    st.integers(1, limits.GENERATION_MAX),
    st.sampled_from([0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, limits.INT_MAX]),
)
def test_restamped_size_is_the_size_of_the_restamped_encoding(
    record: Record, generation: int, last_update_ms: int
) -> None:
    """A prepare sizes its provisional record this way: exactly, never by a byte less."""
    restamped = dataclasses.replace(record, generation=generation, last_update_ms=last_update_ms)
    encoded = codec.encode_record(record)
    size = codec.encoded_record_bytes_restamped(encoded, record, generation, last_update_ms)
    assert size == len(codec.encode_record(restamped))


def test_a_large_record_round_trips() -> None:
    record = Record(1, 0, 1, "big", {"blob": bytes(range(256)) * 4096, "n": 1})
    assert same_record(codec.decode_record(codec.encode_record(record)), record)


def test_encode_refuses_a_record_that_breaks_its_invariants() -> None:
    with pytest.raises(AssertionError):
        codec.encode_record(Record(0, 0, 0, "", {"b": 1}))
    with pytest.raises(AssertionError):
        codec.encode_record(Record(1, 0, 0, "", {}))
    with pytest.raises(AssertionError):
        codec.encode_record(Record(1, 0, 0, "", {"b": 1}, tombstone=True))


def test_encode_refuses_a_bin_it_cannot_encode() -> None:
    with pytest.raises(errors.InvalidRequest):
        codec.encode_record(Record(1, 0, 0, "", {"b": object()}))


# Corruption ------------------------------------------------------------------------------


def decodes_to_corrupt_or_same(data: bytes | bytearray, original: Record) -> bool:
    """True if decoding raised RecordCorrupt; False if it returned the original record.

    Anything else (another exception, a different record) fails the test.
    """
    try:
        decoded = codec.decode_record(data)
    except errors.RaftstoreError as exc:
        assert isinstance(exc, errors.RecordCorrupt), exc
        assert exc.code == ResultCode.RECORD_CORRUPT == 902
        assert exc.msg
        return True
    assert same_record(decoded, original)
    return False


@pytest.mark.parametrize("record", SAMPLES)
def test_every_flipped_byte_is_detected(record: Record) -> None:
    data = codec.encode_record(record)
    accepted = 0
    for position in range(len(data)):
        for mask in range(1, 256):
            damaged = bytearray(data)
            damaged[position] ^= mask
            accepted += not decodes_to_corrupt_or_same(damaged, record)
    assert accepted == 0  # CRC-32 catches every error within one byte


@pytest.mark.parametrize("record", SAMPLES)
def test_every_truncation_is_detected(record: Record) -> None:
    data = codec.encode_record(record)
    accepted = sum(
        not decodes_to_corrupt_or_same(data[:length], record) for length in range(len(data))
    )
    assert accepted == 0


@pytest.mark.parametrize("record", SAMPLES)
@pytest.mark.parametrize("tail", [b"\x00", b"\xc0", b"\x01\x02\x03\x04"])
def test_extra_bytes_are_detected(record: Record, tail: bytes) -> None:
    data = codec.encode_record(record)
    assert decodes_to_corrupt_or_same(data + tail, record)


@given(records(), st.data())
def test_random_damage_is_detected(record: Record, data: st.DataObject) -> None:
    encoded = bytearray(codec.encode_record(record))
    start = data.draw(st.integers(0, len(encoded) - 1))
    # A burst of up to 4 bytes (32 bits): CRC-32 detects every such burst.
    length = data.draw(st.integers(1, min(4, len(encoded) - start)))
    burst = data.draw(st.binary(min_size=length, max_size=length))
    damaged = bytearray(encoded)
    damaged[start : start + length] = bytes(
        x ^ y for x, y in zip(burst, encoded[start:], strict=False)
    )
    if damaged == encoded:
        return
    assert decodes_to_corrupt_or_same(damaged, record)


def frame(body: bytes, version: int = 1) -> bytes:
    """A record with a correct checksum around any body: reaches the shape checks."""
    return struct.pack(">BI", version, zlib.crc32(body)) + body


GOOD_FIELDS: list[Any] = [1, 0, 5, "set", False, None, {"b": 1}]
NOT_UTF8_BINS = b"\x81\xa1\xff\x01"  # {"\xff": 1}: a bin name that is not UTF-8


def with_field(index: int, value: Any) -> bytes:
    fields = list(GOOD_FIELDS)
    fields[index] = value
    return frame(msgpack.packb(fields))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "shorter"),
        (b"\x01\x00\x00\x00", "shorter"),
        (frame(msgpack.packb(GOOD_FIELDS), version=0), "version"),
        (frame(msgpack.packb(GOOD_FIELDS), version=2), "version"),
        (
            frame(msgpack.packb(GOOD_FIELDS))[:1]
            + b"\x00\x00\x00\x00"
            + msgpack.packb(GOOD_FIELDS),
            "checksum",
        ),
        (frame(b""), "decode"),
        (frame(b"\xc1"), "decode"),
        (frame(msgpack.packb(GOOD_FIELDS) + b"\x00"), "decode"),
        (frame(msgpack.packb(GOOD_FIELDS)[:-1]), "decode"),
        (frame(msgpack.packb({"generation": 1})), "array"),
        (frame(msgpack.packb(GOOD_FIELDS[:6])), "array"),
        (frame(msgpack.packb([*GOOD_FIELDS, 0])), "array"),
        (frame(msgpack.packb(1)), "array"),
        (with_field(0, 0), "generation"),
        (with_field(0, limits.GENERATION_MAX + 1), "generation"),
        (with_field(0, -1), "generation"),
        (with_field(0, True), "generation"),
        (with_field(0, 1.0), "generation"),
        (with_field(0, "1"), "generation"),
        (with_field(1, -1), "void time"),
        (with_field(1, None), "void time"),
        (with_field(1, False), "void time"),
        (with_field(2, -1), "last-update"),
        (with_field(2, 1.5), "last-update"),
        (with_field(3, b"set"), "set name"),
        (with_field(3, None), "set name"),
        (with_field(4, 0), "tombstone"),
        (with_field(4, None), "tombstone"),
        (with_field(5, 1.5), "user key"),
        (with_field(5, True), "user key"),
        (with_field(5, [1]), "user key"),
        (with_field(6, [["b", 1]]), "bins"),
        (with_field(6, None), "bins"),
        (with_field(6, {}), "no bins"),
        (with_field(6, {b"b": 1}), "bin"),
        (with_field(6, {1: 1}), "bin"),
        (with_field(6, {"b": None}), "bin"),
        (frame(msgpack.packb([1, 0, 5, "set", True, None, {"b": 1}])), "tombstone has bins"),
        (with_field(6, {"b": msgpack.ExtType(5, b"x")}), "decode"),
        (with_field(6, {"b": msgpack.ExtType(23, b"\xff")}), "decode"),
        (with_field(6, {"b": {(1, 2): 1}}), "decode"),  # packs as a list key: unhashable
        (frame(b"\x97" + b"".join(map(msgpack.packb, GOOD_FIELDS[:6])) + NOT_UTF8_BINS), "decode"),
    ],
)
def test_decode_names_what_is_wrong(data: bytes, words: str) -> None:
    with pytest.raises(errors.RecordCorrupt) as exc_info:
        codec.decode_record(data)
    assert exc_info.value.code == ResultCode.RECORD_CORRUPT
    assert words in exc_info.value.msg


def test_a_good_frame_from_the_helper_decodes() -> None:
    # The negative cases above differ from this one only in the field they change.
    decoded = codec.decode_record(frame(msgpack.packb(GOOD_FIELDS)))
    assert decoded == Record(1, 0, 5, "set", {"b": 1})


@given(records())
def test_decode_meta_is_the_record_s_metadata(record: Record) -> None:
    assert codec.decode_meta(codec.encode_record(record)) == record.meta


def test_decode_meta_refuses_what_decode_record_refuses() -> None:
    encoded = bytearray(codec.encode_record(Record(3, 0, 5, "s", {"a": 1})))
    encoded[-1] ^= 0x01
    with pytest.raises(errors.RaftstoreError) as caught:
        codec.decode_meta(bytes(encoded))
    assert caught.value.code == ResultCode.RECORD_CORRUPT


# -- frozen data: the cheaper constructors of raftstore.frozen -----------------------------------

FAST_INIT_CLASSES = [
    RecordMeta,
    Record,
    Op,
    WritePolicy,
    RecordRequest,
    Result,
    TxnRead,
    TxnWrite,
    TxnApply,
    TxnPrepare,
    TxnCommit,
    TxnResolve,
    Intent,
    TxnRecord,
]


@pytest.mark.parametrize("cls", FAST_INIT_CLASSES, ids=lambda cls: cls.__name__)
def test_fast_init_takes_the_dataclass_arguments(cls: type) -> None:
    """Same parameters as the dataclass's own __init__: names, order, defaults."""
    parameters = inspect.signature(cls).parameters.values()
    for field, parameter in zip(dataclasses.fields(cls), parameters, strict=True):
        assert parameter.name == field.name
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        if field.default_factory is MISSING:  # else a sentinel: see the factory test below
            empty = inspect.Parameter.empty
            assert parameter.default == (empty if field.default is MISSING else field.default)


@pytest.mark.parametrize("cls", FAST_INIT_CLASSES, ids=lambda cls: cls.__name__)
def test_fast_init_stores_every_field_and_stays_frozen(cls: type) -> None:
    names = [field.name for field in dataclasses.fields(cls)]
    values = [object() for _ in names]
    by_position = cls(*values)
    by_keyword = cls(**dict(zip(names, values, strict=True)))
    for name, value in zip(names, values, strict=True):
        assert getattr(by_position, name) is value
        assert getattr(by_keyword, name) is value
    assert by_position == by_keyword
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_position, names[0], 1)
    with pytest.raises(TypeError):
        cls(*values, object())
    with pytest.raises(TypeError):
        cls(**{"no_such_field": 1})


def test_fast_init_fills_defaults_and_calls_factories_per_instance() -> None:
    first, second = Record(1, 0, 0, "s"), Record(1, 0, 0, "s")
    assert first.bins == {} and first.bins is not second.bins
    assert (first.tombstone, first.user_key) == (False, None)
    assert Result() == Result(ResultCode.OK, 0, 0, (), "", 0, 0)
    assert WritePolicy().ttl == 0 and Op(OpCode.READ).args == ()


def test_fast_init_refuses_what_it_cannot_copy() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        x: int

    for cls in (NoSlots, PostInit, KeywordOnly):
        with pytest.raises(AssertionError):
            fast_init(cls)
