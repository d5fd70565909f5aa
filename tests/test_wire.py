"""The client/server protocol: round trips, framing, and every kind of bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftstore import codec, keys
from raftstore import ops as op
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.policy import Exists, Gen, WritePolicy
from raftstore.values import GeoJSON
from raftstore.wire import (
    FRAME_BYTES_MAX,
    LENGTH,
    PROTOCOL_VERSION,
    FrameReader,
    InfoMsg,
    Kind,
    ReadMode,
    RecordMsg,
    Refused,
    Response,
    ScanMsg,
    TruncateMsg,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    peek_request_id,
    read_request,
    speaks_our_version,
)

DIGEST = keys.calc_digest("test", "s", 1)
REQUESTS = [
    RecordMsg(
        namespace="test",
        digest=DIGEST,
        set_name="s",
        ops=(op.write("a", GeoJSON('{"type":"Point","coordinates":[1,2]}')), op.read()),
        policy=WritePolicy(Exists.CREATE, Gen.EQ, 7, 60, True),
        user_key=1,
        read_mode=ReadMode.SESSION,
        client_id=2**63 - 1,
        request_seq=5,
        acked_seq=4,
        timeout_ms=250,
    ),
    InfoMsg("partition-map"),
    ScanMsg("test", None, (0, 4095), DIGEST, 10, ReadMode.LINEARIZE),
    TruncateMsg("test", "s", 123, (0, 2)),
]


def body_of(frame: bytes) -> bytes:
    (length,) = LENGTH.unpack_from(frame)
    assert len(frame) == LENGTH.size + length
    return frame[LENGTH.size :]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
def test_requests_round_trip(message: object) -> None:
    frame = encode_request(42, message)  # type: ignore[arg-type]
    assert decode_request(body_of(frame)) == (42, message)


def test_responses_round_trip() -> None:
    response = Response(
        code=ResultCode.NOT_LEADER,
        message="go elsewhere",
        generation=3,
        ttl=-1,
        results=(("a", [1, b"x"]), (None, {"k": 1.5})),
        value={"records": []},
        partition_map={"version": 1},
        in_doubt=True,
    )
    assert decode_response(body_of(encode_response(9, response))) == (9, response)


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(1, 7))
def test_frames_split_anywhere_come_back_whole(bodies: list[bytes], chunk: int) -> None:
    stream = b"".join(LENGTH.pack(len(b)) + b for b in bodies)
    reader = FrameReader()
    got = []
    for start in range(0, len(stream), chunk):
        got.extend(reader.feed(stream[start : start + chunk]))
    assert got == bodies
    assert not reader.buffer


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    reader = FrameReader()
    with pytest.raises(RaftstoreError) as caught:
        reader.feed(LENGTH.pack(FRAME_BYTES_MAX + 1) + b"x")
    assert caught.value.code == ResultCode.PROTOCOL_ERROR


BAD_BODIES = {
    "not msgpack": b"\xc1\xc1",
    "not an array": codec.pack_value({"a": 1}),
    "too short": codec.pack_value([PROTOCOL_VERSION, 1]),
    "wrong version": codec.pack_value([99, 1, Kind.INFO, "status"]),
    "id not int": codec.pack_value([PROTOCOL_VERSION, "x", Kind.INFO, "status"]),
    "unknown kind": codec.pack_value([PROTOCOL_VERSION, 1, 77]),
    "info without command": codec.pack_value([PROTOCOL_VERSION, 1, Kind.INFO]),
    "record missing fields": codec.pack_value([PROTOCOL_VERSION, 1, Kind.RECORD, "test"]),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_requests_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(RaftstoreError) as caught:
        decode_request(body)
    assert caught.value.code == ResultCode.PROTOCOL_ERROR


def record_fields(**changes: object) -> list[object]:
    fields: dict[str, object] = {
        "namespace": "test",
        "digest": DIGEST,
        "set": "s",
        "ops": [[1, None, []]],
        "policy": [0, 0, 0, 0, False],
        "key": None,
        "mode": 1,
        "client": 1,
        "seq": 1,
        "acked": 0,
        "timeout": 100,
    }
    fields.update(changes)
    return [PROTOCOL_VERSION, 3, Kind.RECORD, *fields.values()]


BAD_FIELDS = {
    "digest too short": {"digest": b"x" * 19},
    "namespace not str": {"namespace": 5},
    "unknown op code": {"ops": [[999, None, []]]},
    "op not a list": {"ops": ["read"]},
    "bool op code": {"ops": [[True, None, []]]},
    "bad exists policy": {"policy": [9, 0, 0, 0, False]},
    "policy too short": {"policy": [0, 0]},
    "bad read mode": {"mode": 7},
    "float key": {"key": 1.5},
    "seq not int": {"seq": "1"},
}


@pytest.mark.parametrize("changes", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_bad_fields_are_parameter_errors(changes: dict[str, object]) -> None:
    body = codec.pack_value(record_fields(**changes))
    with pytest.raises(RaftstoreError) as caught:
        decode_request(body)
    assert caught.value.code == ResultCode.PARAMETER_ERROR
    assert peek_request_id(body) == 3  # so the error can be answered to the right request


def test_scan_limits_are_checked() -> None:
    body = codec.pack_value([PROTOCOL_VERSION, 1, Kind.SCAN, "test", None, [4096], None, 10, 1])
    with pytest.raises(RaftstoreError) as caught:
        decode_request(body)
    assert caught.value.code == ResultCode.PARAMETER_ERROR


def test_peek_request_id_never_raises() -> None:
    assert peek_request_id(b"\xc1") == 0
    assert peek_request_id(codec.pack_value([1])) == 0


# -- read_request: the listener's one-decode path agrees with the others ----------------------


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
def test_read_request_decodes_what_decode_request_decodes(message: object) -> None:
    body = body_of(encode_request(42, message))  # type: ignore[arg-type]
    assert read_request(body) == decode_request(body) == (42, message)


BAD = {
    **BAD_BODIES,
    **{name: codec.pack_value(record_fields(**c)) for name, c in BAD_FIELDS.items()},
}


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_read_request_refuses_what_the_separate_steps_refuse(body: bytes) -> None:
    refused = read_request(body)
    assert isinstance(refused, Refused)
    assert refused.request_id == peek_request_id(body)
    assert refused.fatal is not speaks_our_version(body)
    if refused.fatal:
        assert refused.code == ResultCode.PROTOCOL_ERROR
        return
    with pytest.raises(RaftstoreError) as caught:
        decode_request(body)
    assert (refused.code, refused.message) == (caught.value.code, caught.value.msg)
