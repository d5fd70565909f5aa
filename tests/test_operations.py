"""raftstore.operations: policies, scalar ops, metadata, failure without effect.

List and map ops are in test_operations_cdt.py.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from raftstore import limits, operations, ops
from raftstore.clock import citrusleaf_seconds, void_time_after
from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.operations import Outcome, operate
from raftstore.ops import Op, OpCode
from raftstore.policy import Exists, Gen, WritePolicy
from raftstore.record import Record, UserKey, check_record, next_generation
from raftstore.values import GeoJSON

NOW_MS = 1_700_000_000_000
EARLIER_MS = NOW_MS - 60_000
NAMESPACE = NamespaceConfig("test")
NAMESPACE_DAY_TTL = NamespaceConfig("test", default_ttl_s=86_400)
POINT = GeoJSON('{"type":"Point","coordinates":[1.0,2.0]}')


def live(
    bins: dict[str, Any] | None = None,
    *,
    generation: int = 5,
    void_time: int = 0,
    last_update_ms: int = EARLIER_MS,
    set_name: str = "people",
    user_key: UserKey | None = None,
) -> Record:
    return Record(
        generation=generation,
        void_time=void_time,
        last_update_ms=last_update_ms,
        set_name=set_name,
        bins={"a": 1, "b": "x"} if bins is None else bins,
        user_key=user_key,
    )


def tombstone(generation: int = 9, user_key: UserKey | None = None) -> Record:
    return Record(
        generation=generation,
        void_time=0,
        last_update_ms=EARLIER_MS,
        set_name="people",
        tombstone=True,
        user_key=user_key,
    )


def expired(generation: int = 3) -> Record:
    past_void_time = citrusleaf_seconds(NOW_MS) - 10
    return live({"old": 1}, generation=generation, void_time=past_void_time)


def run(
    existing: Record | None,
    op_list: Sequence[Op],
    policy: WritePolicy | None = None,
    *,
    now_ms: int = NOW_MS,
    set_name: str = "people",
    user_key: UserKey | None = None,
    namespace: NamespaceConfig = NAMESPACE,
) -> Outcome:
    return operate(
        existing,
        op_list,
        WritePolicy() if policy is None else policy,
        now_ms=now_ms,
        set_name=set_name,
        user_key=user_key,
        namespace=namespace,
    )


def fails(
    code: ResultCode,
    existing: Record | None,
    op_list: Sequence[Any],
    policy: Any = None,
    **kwargs: Any,
) -> RaftstoreError:
    """Assert the request fails with `code` and leaves `existing` and the ops untouched."""
    existing_before = copy.deepcopy(existing)
    ops_before = copy.deepcopy(list(op_list))
    with pytest.raises(RaftstoreError) as caught:
        run(existing, op_list, policy, **kwargs)
    assert caught.value.code == code, caught.value
    assert existing == existing_before
    assert list(op_list) == ops_before
    return caught.value


def stored(outcome: Outcome) -> Record:
    assert outcome.changed
    assert outcome.record is not None
    check_record(outcome.record)
    return outcome.record


# -- validation ---------------------------------------------------------------------------------


def test_an_empty_op_list_is_a_parameter_error() -> None:
    fails(ResultCode.PARAMETER_ERROR, live(), [])


def test_the_op_count_limit() -> None:
    assert len(run(live(), [ops.read("a")] * limits.OPS_PER_REQUEST_MAX).results) == 1024
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.read("a")] * (limits.OPS_PER_REQUEST_MAX + 1))


@pytest.mark.parametrize(
    "bad_op",
    [
        "read",
        ("READ", "a"),
        Op(99, "a"),  # type: ignore[arg-type]
        Op(True, "a"),  # type: ignore[arg-type]
        Op(OpCode.WRITE, None, (1,)),
        Op(OpCode.DELETE, "a"),
        Op(OpCode.TOUCH, "a"),
        Op(OpCode.READ, "a", (1,)),
        Op(OpCode.WRITE, "a", ()),
        Op(OpCode.WRITE, "a", (1, 2)),
        Op(OpCode.TOUCH, None, (10, 20)),
        Op(OpCode.WRITE, "a", "x"),  # type: ignore[arg-type]
        Op(OpCode.WRITE, 7, (1,)),  # type: ignore[arg-type]
        ops.write("", 1),
    ],
)
def test_malformed_ops_are_parameter_errors(bad_op: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, live(), [bad_op])


def test_a_long_bin_name_is_bin_name_too_long() -> None:
    fails(ResultCode.BIN_NAME_TOO_LONG, live(), [ops.write("b" * 16, 1)])
    assert stored(run(live(), [ops.write("b" * 15, 1)])).bins["b" * 15] == 1


@pytest.mark.parametrize(
    "value",
    [{1, 2}, 1j, {1.5: "float key"}, 2**63, -(2**63) - 1, {True: 1}, [None], {"k": None}],
)
def test_unstorable_values_are_parameter_errors(value: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.write("a", value)])


def test_invalid_geojson_is_refused() -> None:
    fails(ResultCode.INVALID_GEOJSON, live(), [ops.write("g", GeoJSON("{not json"))])
    assert stored(run(live(), [ops.write("g", POINT)])).bins["g"] == POINT


def test_validation_runs_before_the_record_is_looked_at() -> None:
    # An absent record would be RECORD_NOT_FOUND; the malformed op is reported first.
    fails(ResultCode.PARAMETER_ERROR, None, [ops.read("a"), Op(OpCode.READ, "a", (1,))])


@pytest.mark.parametrize("delta", [True, "1", None, 2**63, [1]])
def test_increment_needs_a_numeric_delta(delta: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.increment("a", delta)])


@pytest.mark.parametrize("value", [1, None, ["x"], bytearray(b"x")])
def test_append_and_prepend_need_str_or_bytes(value: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.append("b", value)])
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.prepend("b", value)])


@pytest.mark.parametrize("ttl", [-3, -4, limits.TTL_SECONDS_MAX + 1, True, 1.5, "10"])
def test_invalid_policy_ttl(ttl: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.write("a", 2)], WritePolicy(ttl=ttl))
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.touch(ttl)])


@pytest.mark.parametrize("ttl", [-2, -1, 0, 1, limits.TTL_SECONDS_MAX])
def test_valid_policy_ttl(ttl: int) -> None:
    assert run(live(), [ops.write("a", 2)], WritePolicy(ttl=ttl)).changed


@pytest.mark.parametrize("generation", [-1, 65536, True, 1.0])
def test_invalid_policy_generation(generation: Any) -> None:
    policy = WritePolicy(gen=Gen.EQ, generation=generation)
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.write("a", 2)], policy)


@pytest.mark.parametrize(
    "policy",
    [
        WritePolicy(exists=7),  # type: ignore[arg-type]
        WritePolicy(exists=True),  # type: ignore[arg-type]
        WritePolicy(gen=3),  # type: ignore[arg-type]
        WritePolicy(send_key=1),  # type: ignore[arg-type]
        "not a policy",
    ],
)
def test_invalid_policy_fields(policy: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, live(), [ops.write("a", 2)], policy)


@pytest.mark.parametrize("user_key", [1.5, True, 2**64, ["k"]])
def test_invalid_user_key(user_key: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, None, [ops.write("a", 1)], user_key=user_key)


# -- reads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("absent", [None, tombstone(), expired()], ids=["none", "tomb", "expired"])
def test_reading_an_absent_record_is_record_not_found(absent: Record | None) -> None:
    fails(ResultCode.RECORD_NOT_FOUND, absent, [ops.read("a")])
    fails(ResultCode.RECORD_NOT_FOUND, absent, [ops.read()])


def test_read_one_bin_and_a_missing_bin() -> None:
    existing = live({"a": 1, "b": "x"})
    outcome = run(existing, [ops.read("b"), ops.read("zz"), ops.read("a")])
    assert outcome.results == [("b", "x"), ("zz", None), ("a", 1)]
    assert outcome.record is existing
    assert not outcome.changed


def test_read_all_bins_keeps_the_record_bin_order() -> None:
    existing = live({"z": 1, "a": 2, "m": [3]})
    assert run(existing, [ops.read()]).results == [("z", 1), ("a", 2), ("m", [3])]


def test_reads_ignore_write_policies_and_never_touch_metadata() -> None:
    existing = live(generation=5, void_time=citrusleaf_seconds(NOW_MS) + 1_000)
    policy = WritePolicy(exists=Exists.CREATE, gen=Gen.EQ, generation=1, ttl=10)
    outcome = run(existing, [ops.read("a")], policy)
    assert outcome == Outcome(existing, [("a", 1)], changed=False)


def test_a_read_with_a_different_key_is_key_mismatch() -> None:
    existing = live(user_key="alice")
    fails(ResultCode.KEY_MISMATCH, existing, [ops.read("a")], user_key="bob")
    assert run(existing, [ops.read("a")], user_key="alice").results == [("a", 1)]


# -- exists policy ------------------------------------------------------------------------------


def test_ignore_creates_an_absent_record() -> None:
    record = stored(run(None, [ops.write("a", 1)]))
    assert record == Record(
        generation=1, void_time=0, last_update_ms=NOW_MS, set_name="people", bins={"a": 1}
    )


def test_ignore_merges_bins_into_a_present_record() -> None:
    record = stored(run(live({"a": 1, "b": "x"}), [ops.write("c", 3), ops.write("a", 9)]))
    assert record.bins == {"a": 9, "b": "x", "c": 3}
    assert list(record.bins) == ["a", "b", "c"]


def test_create_fails_on_a_present_record() -> None:
    policy = WritePolicy(exists=Exists.CREATE)
    fails(ResultCode.RECORD_EXISTS, live(), [ops.write("a", 2)], policy)


@pytest.mark.parametrize("absent", [None, tombstone(), expired()], ids=["none", "tomb", "expired"])
def test_create_succeeds_on_an_absent_record(absent: Record | None) -> None:
    record = stored(run(absent, [ops.write("a", 2)], WritePolicy(exists=Exists.CREATE)))
    assert record.bins == {"a": 2}


@pytest.mark.parametrize("exists", [Exists.UPDATE, Exists.REPLACE])
@pytest.mark.parametrize("absent", [None, tombstone(), expired()], ids=["none", "tomb", "expired"])
def test_update_and_replace_fail_on_an_absent_record(exists: Exists, absent: Record | None) -> None:
    fails(ResultCode.RECORD_NOT_FOUND, absent, [ops.write("a", 2)], WritePolicy(exists=exists))


def test_update_merges_bins() -> None:
    record = stored(run(live(), [ops.write("c", 3)], WritePolicy(exists=Exists.UPDATE)))
    assert record.bins == {"a": 1, "b": "x", "c": 3}


@pytest.mark.parametrize("exists", [Exists.REPLACE, Exists.CREATE_OR_REPLACE])
def test_replace_starts_from_empty_bins(exists: Exists) -> None:
    op_list = [ops.read("a"), ops.write("c", 3)]
    outcome = run(live(), op_list, WritePolicy(exists=exists))
    assert stored(outcome).bins == {"c": 3}
    assert outcome.results == [("a", None)]


def test_create_or_replace_creates_an_absent_record() -> None:
    policy = WritePolicy(exists=Exists.CREATE_OR_REPLACE)
    assert stored(run(None, [ops.write("c", 3)], policy)).bins == {"c": 3}


def test_replace_with_no_bins_left_makes_a_tombstone() -> None:
    policy = WritePolicy(exists=Exists.REPLACE)
    assert stored(run(live(), [ops.write("a", None)], policy)).tombstone


# -- generation policy --------------------------------------------------------------------------


def test_generation_eq() -> None:
    existing = live(generation=5)
    assert stored(run(existing, [ops.write("a", 2)], WritePolicy(gen=Gen.EQ, generation=5)))
    for generation in (4, 6, 0):
        policy = WritePolicy(gen=Gen.EQ, generation=generation)
        fails(ResultCode.GENERATION_ERROR, existing, [ops.write("a", 2)], policy)


def test_generation_gt() -> None:
    existing = live(generation=5)
    assert stored(run(existing, [ops.write("a", 2)], WritePolicy(gen=Gen.GT, generation=6)))
    for generation in (5, 4, 0):
        policy = WritePolicy(gen=Gen.GT, generation=generation)
        fails(ResultCode.GENERATION_ERROR, existing, [ops.write("a", 2)], policy)


@pytest.mark.parametrize("gen", [Gen.EQ, Gen.GT])
@pytest.mark.parametrize("absent", [None, tombstone(), expired()], ids=["none", "tomb", "expired"])
def test_generation_policy_is_not_checked_on_an_absent_record(
    gen: Gen, absent: Record | None
) -> None:
    policy = WritePolicy(gen=gen, generation=0)
    assert stored(run(absent, [ops.write("a", 2)], policy)).bins == {"a": 2}


def test_generation_ignore_accepts_any_generation() -> None:
    policy = WritePolicy(gen=Gen.IGNORE, generation=42)
    assert stored(run(live(generation=5), [ops.write("a", 2)], policy)).generation == 6


# -- generation, time, set, key -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, 1),
        (live(generation=5), 6),
        (tombstone(generation=9), 10),
        (expired(generation=3), 4),
        (live(generation=limits.GENERATION_MAX), 1),
        (tombstone(generation=limits.GENERATION_MAX), 1),
    ],
    ids=["new", "live", "tombstone", "expired", "wrap", "tombstone-wrap"],
)
def test_generation_continues_for_the_digest(existing: Record | None, expected: int) -> None:
    assert stored(run(existing, [ops.write("a", 2)])).generation == expected


def test_generation_moves_once_per_request_not_per_op() -> None:
    op_list = [ops.write("a", 2), ops.increment("a", 1), ops.append("b", "y"), ops.touch()]
    assert stored(run(live(generation=5), op_list)).generation == 6


def test_last_update_time_is_now_when_later() -> None:
    assert stored(run(live(last_update_ms=EARLIER_MS), [ops.write("a", 2)])).last_update_ms == (
        NOW_MS
    )


@pytest.mark.parametrize("existing", [live(), tombstone()], ids=["live", "tombstone"])
def test_last_update_time_never_goes_backwards(existing: Record) -> None:
    outcome = run(existing, [ops.write("a", 2)], now_ms=EARLIER_MS - 5_000)
    assert stored(outcome).last_update_ms == EARLIER_MS


def test_a_new_record_takes_the_set_name() -> None:
    assert stored(run(None, [ops.write("a", 1)], set_name="cars")).set_name == "cars"
    assert stored(run(tombstone(), [ops.write("a", 1)], set_name="")).set_name == ""


def test_a_present_record_keeps_its_set_name() -> None:
    assert stored(run(live(), [ops.write("a", 1)], set_name="cars")).set_name == "people"


def test_send_key_stores_the_key() -> None:
    policy = WritePolicy(send_key=True)
    assert stored(run(None, [ops.write("a", 1)], policy, user_key=b"\x01")).user_key == b"\x01"
    assert stored(run(live(), [ops.write("a", 1)], policy, user_key=7)).user_key == 7


def test_without_send_key_the_key_is_not_stored_but_a_stored_key_is_kept() -> None:
    assert stored(run(None, [ops.write("a", 1)], user_key="k")).user_key is None
    assert stored(run(live(user_key="k"), [ops.write("a", 1)])).user_key == "k"
    assert stored(run(live(user_key="k"), [ops.write("a", 1)], user_key="k")).user_key == "k"


@pytest.mark.parametrize("sent", ["other", 1, b"k"])
@pytest.mark.parametrize("existing", [live(user_key="k"), tombstone(user_key="k")])
def test_a_different_key_is_key_mismatch(sent: UserKey, existing: Record) -> None:
    policy = WritePolicy(send_key=True)
    fails(ResultCode.KEY_MISMATCH, existing, [ops.write("a", 1)], policy, user_key=sent)


def test_int_key_one_and_str_key_one_differ() -> None:
    fails(ResultCode.KEY_MISMATCH, live(user_key=1), [ops.write("a", 1)], user_key="1")


# -- ttl and void time --------------------------------------------------------------------------


def test_ttl_zero_takes_the_namespace_default() -> None:
    assert stored(run(None, [ops.write("a", 1)])).void_time == 0
    outcome = run(None, [ops.write("a", 1)], namespace=NAMESPACE_DAY_TTL)
    assert stored(outcome).void_time == void_time_after(NOW_MS, 86_400)


def test_ttl_never_expire() -> None:
    existing = live(void_time=citrusleaf_seconds(NOW_MS) + 50)
    policy = WritePolicy(ttl=-1)
    outcome = run(existing, [ops.write("a", 1)], policy, namespace=NAMESPACE_DAY_TTL)
    assert stored(outcome).void_time == 0


def test_ttl_seconds() -> None:
    outcome = run(live(), [ops.write("a", 1)], WritePolicy(ttl=30))
    assert stored(outcome).void_time == citrusleaf_seconds(NOW_MS) + 30


def test_ttl_dont_update_keeps_the_void_time_of_a_present_record() -> None:
    existing = live(void_time=citrusleaf_seconds(NOW_MS) + 50)
    outcome = run(existing, [ops.write("a", 1)], WritePolicy(ttl=-2))
    assert stored(outcome).void_time == existing.void_time


@pytest.mark.parametrize("absent", [None, tombstone(), expired()], ids=["none", "tomb", "expired"])
def test_ttl_dont_update_on_an_absent_record_takes_the_namespace_default(
    absent: Record | None,
) -> None:
    policy = WritePolicy(ttl=-2)
    outcome = run(absent, [ops.write("a", 1)], policy, namespace=NAMESPACE_DAY_TTL)
    assert stored(outcome).void_time == void_time_after(NOW_MS, 86_400)
    assert stored(run(absent, [ops.write("a", 1)], policy)).void_time == 0


# -- write and delete ---------------------------------------------------------------------------


def test_write_only_requests_return_no_results() -> None:
    op_list = [ops.write("a", 2), ops.increment("n", 1), ops.append("s", "x"), ops.touch()]
    assert run(live(), op_list).results == []


def test_writing_none_removes_the_bin() -> None:
    record = stored(run(live({"a": 1, "b": "x"}), [ops.write("a", None)]))
    assert record.bins == {"b": "x"}


def test_writing_none_to_a_missing_bin_changes_only_metadata() -> None:
    record = stored(run(live({"a": 1}), [ops.write("zz", None)]))
    assert record.bins == {"a": 1}
    assert record.generation == 6


def test_a_rewritten_bin_keeps_its_place_and_a_recreated_one_moves_last() -> None:
    record = stored(run(live({"a": 1, "b": 2, "c": 3}), [ops.write("a", 10)]))
    assert list(record.bins.items()) == [("a", 10), ("b", 2), ("c", 3)]
    op_list = [ops.write("a", None), ops.write("a", 11)]
    record = stored(run(live({"a": 1, "b": 2, "c": 3}), op_list))
    assert list(record.bins.items()) == [("b", 2), ("c", 3), ("a", 11)]


def test_reads_see_earlier_writes_in_the_same_request() -> None:
    op_list = [
        ops.read("a"),
        ops.write("a", 7),
        ops.read("a"),
        ops.increment("a", 3),
        ops.read("a"),
        ops.write("a", None),
        ops.read("a"),
        ops.read(),
    ]
    outcome = run(live({"a": 1, "b": "x"}), op_list)
    assert outcome.results == [("a", 1), ("a", 7), ("a", 10), ("a", None), ("b", "x")]


def test_removing_the_last_bin_leaves_a_tombstone() -> None:
    existing = live({"a": 1}, generation=5, user_key="k", void_time=citrusleaf_seconds(NOW_MS) + 9)
    record = stored(run(existing, [ops.write("a", None)]))
    assert record == Record(
        generation=6,
        void_time=0,
        last_update_ms=NOW_MS,
        set_name="people",
        bins={},
        tombstone=True,
        user_key="k",
    )


@pytest.mark.parametrize("absent", [None, tombstone(), expired()], ids=["none", "tomb", "expired"])
def test_a_write_that_creates_nothing_is_a_parameter_error(absent: Record | None) -> None:
    fails(ResultCode.PARAMETER_ERROR, absent, [ops.write("a", None)])
    fails(ResultCode.PARAMETER_ERROR, absent, [ops.write("a", 1), ops.write("a", None)])


def test_delete_makes_a_tombstone() -> None:
    existing = live({"a": 1, "b": [1]}, generation=41, user_key=b"key")
    outcome = run(existing, [ops.delete()], set_name="ignored")
    assert outcome.results == []
    assert stored(outcome) == Record(
        generation=42,
        void_time=0,
        last_update_ms=NOW_MS,
        set_name="people",
        bins={},
        tombstone=True,
        user_key=b"key",
    )


@pytest.mark.parametrize("absent", [None, tombstone(), expired()], ids=["none", "tomb", "expired"])
def test_delete_of_an_absent_record_is_record_not_found(absent: Record | None) -> None:
    fails(ResultCode.RECORD_NOT_FOUND, absent, [ops.delete()])
    fails(ResultCode.RECORD_NOT_FOUND, absent, [ops.write("a", 1), ops.delete()])


def test_ops_after_delete_see_an_empty_record_and_may_recreate_it() -> None:
    op_list = [ops.delete(), ops.read(), ops.read("a"), ops.write("c", 3), ops.read()]
    outcome = run(live({"a": 1, "b": 2}), op_list)
    assert outcome.results == [("a", None), ("c", 3)]
    record = stored(outcome)
    assert record.bins == {"c": 3}
    assert not record.tombstone


def test_delete_honours_the_generation_policy() -> None:
    policy = WritePolicy(gen=Gen.EQ, generation=4)
    fails(ResultCode.GENERATION_ERROR, live(generation=5), [ops.delete()], policy)


# -- touch --------------------------------------------------------------------------------------


def test_touch_bumps_generation_and_resets_the_void_time() -> None:
    existing = live({"a": 1}, generation=5, void_time=citrusleaf_seconds(NOW_MS) + 5)
    record = stored(run(existing, [ops.touch(100)]))
    assert record.generation == 6
    assert record.void_time == citrusleaf_seconds(NOW_MS) + 100
    assert record.bins == {"a": 1}


def test_touch_without_ttl_takes_the_policy_ttl() -> None:
    existing = live(void_time=citrusleaf_seconds(NOW_MS) + 5)
    assert stored(run(existing, [ops.touch()], WritePolicy(ttl=200))).void_time == (
        citrusleaf_seconds(NOW_MS) + 200
    )
    assert stored(run(existing, [ops.touch()])).void_time == 0


def test_touch_ttl_overrides_the_policy_ttl_and_the_last_touch_wins() -> None:
    policy = WritePolicy(ttl=200)
    record = stored(run(live(), [ops.touch(10), ops.write("a", 2), ops.touch(20)], policy))
    assert record.void_time == citrusleaf_seconds(NOW_MS) + 20


def test_touch_dont_update_keeps_the_void_time() -> None:
    existing = live(void_time=citrusleaf_seconds(NOW_MS) + 5)
    assert stored(run(existing, [ops.touch(-2)], WritePolicy(ttl=200))).void_time == (
        existing.void_time
    )


@pytest.mark.parametrize("absent", [None, tombstone(), expired()], ids=["none", "tomb", "expired"])
def test_touch_of_an_absent_record_is_record_not_found(absent: Record | None) -> None:
    fails(ResultCode.RECORD_NOT_FOUND, absent, [ops.touch()])
    fails(ResultCode.RECORD_NOT_FOUND, absent, [ops.write("a", 1), ops.touch(5)])


# -- increment, append, prepend -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "delta", "after"),
    [
        (None, 5, 5),
        (None, 2.5, 2.5),
        (None, -3, -3),
        (10, 5, 15),
        (10, -15, -5),
        (1.5, 2, 3.5),
        (1.5, 0.25, 1.75),
        (limits.INT_MAX - 1, 1, limits.INT_MAX),
        (limits.INT_MIN + 1, -1, limits.INT_MIN),
    ],
)
def test_increment(before: Any, delta: int | float, after: int | float) -> None:
    bins = {"x": 0} if before is None else {"x": 0, "n": before}
    record = stored(run(live(bins), [ops.increment("n", delta)]))
    assert record.bins["n"] == after
    assert type(record.bins["n"]) is type(after)


def test_increment_creates_an_absent_record() -> None:
    assert stored(run(None, [ops.increment("n", 1)])).bins == {"n": 1}


@pytest.mark.parametrize(("before", "delta"), [(limits.INT_MAX, 1), (limits.INT_MIN, -1)])
def test_increment_integer_overflow_is_a_parameter_error(before: int, delta: int) -> None:
    error = fails(ResultCode.PARAMETER_ERROR, live({"n": before}), [ops.increment("n", delta)])
    assert "integer overflow" in error.msg


@pytest.mark.parametrize("before", ["1", b"1", True, [1], {"a": 1}, POINT])
def test_increment_of_a_non_numeric_bin_is_incompatible(before: Any) -> None:
    fails(ResultCode.BIN_INCOMPATIBLE_TYPE, live({"n": before}), [ops.increment("n", 1)])


def test_a_float_delta_on_an_int_bin_is_incompatible() -> None:
    fails(ResultCode.BIN_INCOMPATIBLE_TYPE, live({"n": 1}), [ops.increment("n", 0.5)])


@pytest.mark.parametrize(
    ("before", "op", "after"),
    [
        ("ab", ops.append("s", "cd"), "abcd"),
        ("ab", ops.prepend("s", "cd"), "cdab"),
        (b"ab", ops.append("s", b"cd"), b"abcd"),
        (b"ab", ops.prepend("s", b"cd"), b"cdab"),
        (None, ops.append("s", "cd"), "cd"),
        (None, ops.prepend("s", b"cd"), b"cd"),
        ("", ops.append("s", ""), ""),
    ],
)
def test_append_and_prepend(before: Any, op: Op, after: Any) -> None:
    bins = {"x": 0} if before is None else {"x": 0, "s": before}
    assert stored(run(live(bins), [op])).bins["s"] == after


@pytest.mark.parametrize(
    ("before", "value"), [("ab", b"cd"), (b"ab", "cd"), (1, "cd"), ([1], "cd"), (True, b"x")]
)
def test_append_and_prepend_of_other_types_are_incompatible(before: Any, value: Any) -> None:
    fails(ResultCode.BIN_INCOMPATIBLE_TYPE, live({"s": before}), [ops.append("s", value)])
    fails(ResultCode.BIN_INCOMPATIBLE_TYPE, live({"s": before}), [ops.prepend("s", value)])


# -- limits -------------------------------------------------------------------------------------


def test_the_bin_count_limit() -> None:
    full = live({f"b{i}": i for i in range(limits.BINS_PER_RECORD_MAX)})
    fails(ResultCode.PARAMETER_ERROR, full, [ops.write("extra", 1)])
    assert stored(run(full, [ops.write("b0", -1)])).bins["b0"] == -1
    swapped = run(full, [ops.write("b0", None), ops.write("extra", 1)])
    assert len(stored(swapped).bins) == limits.BINS_PER_RECORD_MAX


# -- no effect on the inputs --------------------------------------------------------------------


def nested_record() -> Record:
    return live({"l": [1, [2, 3], {"k": [4]}], "m": {"a": [1], "b": {"c": 2}}, "s": "x", "n": 1})


def test_a_successful_request_mutates_neither_the_record_nor_the_ops() -> None:
    existing = nested_record()
    existing_before = copy.deepcopy(existing)
    op_list = [
        ops.list_append("l", 9),
        ops.list_sort("l"),
        ops.list_pop("l", 0),
        ops.map_put("m", "z", 1),
        ops.map_remove_by_key("m", "a"),
        ops.map_increment("m", "n", 1),
        ops.append("s", "y"),
        ops.increment("n", 1),
        ops.write("w", [1, 2]),
        ops.list_append("w", 3),
        ops.map_put_items("p", {"q": [1]}),
        ops.map_put("p", "r", 2),
    ]
    ops_before = copy.deepcopy(op_list)
    record = stored(run(existing, op_list))
    assert existing == existing_before
    assert op_list == ops_before
    assert record.bins["w"] == [1, 2, 3]
    assert record.bins["p"] == {"q": [1], "r": 2}


def test_a_failing_request_mutates_neither_the_record_nor_the_ops() -> None:
    op_list = [
        ops.list_append("l", 9),
        ops.list_clear("l"),
        ops.map_clear("m"),
        ops.write("s", None),
        ops.delete(),
        ops.list_pop("l", 0),  # the list is gone after delete: OP_NOT_APPLICABLE
    ]
    fails(ResultCode.OP_NOT_APPLICABLE, nested_record(), op_list)


def test_a_read_result_is_not_changed_by_later_ops_of_the_request() -> None:
    op_list = [
        ops.read("l"),
        ops.write("w", [1]),
        ops.list_append("w", 2),
        ops.read("w"),
        ops.list_append("w", 3),
        ops.read(),
        ops.map_put("m", "new", 0),
        ops.list_append("l", 4),
    ]
    outcome = run(live({"l": [0], "m": {"a": 1}}), op_list)
    assert outcome.results == [
        ("l", [0]),
        ("w", 2),
        ("w", [1, 2]),
        ("w", 3),
        ("l", [0]),
        ("m", {"a": 1}),
        ("w", [1, 2, 3]),
        ("m", 2),
        ("l", 2),
    ]
    assert stored(outcome).bins == {"l": [0, 4], "m": {"a": 1, "new": 0}, "w": [1, 2, 3]}


# -- properties ---------------------------------------------------------------------------------

BIN_NAMES = st.sampled_from(["a", "b", "c"])
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.booleans(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=6,
)
# Arguments are now and then of the wrong type or out of range: failures must have no effect.
INVALID = st.sampled_from([None, 2**64, 1j, {1, 2}, {1.5: 1}, 0.5, "x" * 20])


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` nine times in ten, else an invalid argument."""
    return st.integers(0, 9).flatmap(lambda roll: INVALID if roll == 0 else valid)


ANYTHING = mostly(VALUES)
INDEXES = mostly(st.integers(-4, 4))
DELTAS = mostly(st.integers(-3, 3) | st.floats(-2, 2) | st.just(2**63 - 1))

OPS = st.one_of(
    st.builds(ops.read, st.none() | BIN_NAMES),
    st.builds(ops.write, BIN_NAMES, st.none() | ANYTHING),
    st.just(ops.delete()),
    st.builds(ops.touch, st.none() | st.sampled_from([-3, -2, -1, 0, 5])),
    st.builds(ops.increment, BIN_NAMES, DELTAS),
    st.builds(ops.append, BIN_NAMES, mostly(st.text(max_size=2) | st.binary(max_size=2))),
    st.builds(ops.prepend, BIN_NAMES, st.text(max_size=2) | st.binary(max_size=2)),
    st.builds(ops.list_append, BIN_NAMES, ANYTHING),
    st.builds(ops.list_insert, BIN_NAMES, INDEXES, ANYTHING),
    st.builds(ops.list_pop, BIN_NAMES, INDEXES),
    st.builds(ops.list_set, BIN_NAMES, INDEXES, ANYTHING),
    st.builds(ops.list_get_range, BIN_NAMES, INDEXES, st.none() | st.integers(-1, 3)),
    st.builds(ops.list_remove, BIN_NAMES, INDEXES),
    st.builds(ops.list_get, BIN_NAMES, INDEXES),
    st.builds(ops.list_size, BIN_NAMES),
    st.builds(ops.list_sort, BIN_NAMES),
    st.builds(ops.list_clear, BIN_NAMES),
    st.builds(ops.map_put, BIN_NAMES, mostly(st.text(max_size=2) | st.integers()), ANYTHING),
    st.builds(ops.map_increment, BIN_NAMES, st.sampled_from(["k", "j"]), DELTAS),
    st.builds(ops.map_remove_by_key, BIN_NAMES, st.sampled_from(["k", "j"])),
    st.builds(ops.map_get_by_key, BIN_NAMES, st.sampled_from(["k", "j"])),
    st.builds(ops.map_size, BIN_NAMES),
)
BINS = st.dictionaries(BIN_NAMES, VALUES, max_size=3)
GENERATIONS = st.integers(1, limits.GENERATION_MAX) | st.just(limits.GENERATION_MAX)
VOID_TIMES = st.sampled_from([0, 0, citrusleaf_seconds(NOW_MS) + 99, citrusleaf_seconds(NOW_MS)])
KEYS: st.SearchStrategy[UserKey | None] = st.none() | st.sampled_from(["k", 1, b"k"])


@st.composite
def existing_records(draw: st.DrawFn) -> Record | None:
    kind = draw(st.sampled_from(["none", "live", "live", "live", "tombstone"]))
    if kind == "none":
        return None
    is_tombstone = kind == "tombstone"
    bins = draw(BINS.filter(bool)) if not is_tombstone else {}
    return Record(
        generation=draw(GENERATIONS),
        void_time=0 if is_tombstone else draw(VOID_TIMES),
        last_update_ms=draw(st.integers(NOW_MS - 10, NOW_MS + 10)),
        set_name="people",
        bins=bins,
        tombstone=is_tombstone,
        user_key=draw(KEYS),
    )


POLICIES = st.just(WritePolicy()) | st.builds(
    WritePolicy,
    exists=st.sampled_from([Exists.IGNORE, *Exists]),
    gen=st.sampled_from([Gen.IGNORE, Gen.IGNORE, Gen.IGNORE, Gen.EQ, Gen.GT]),
    generation=st.integers(0, limits.GENERATION_MAX),
    ttl=st.sampled_from([-2, -1, 0, 1, 3600, 0, -1, -2, 5, -3]),
    send_key=st.booleans(),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    existing=existing_records(),
    op_list=st.lists(OPS, min_size=1, max_size=8),
    policy=POLICIES,
    user_key=st.none() | KEYS,
)
def test_failures_have_no_effect_and_writes_advance_the_generation(
    existing: Record | None, op_list: list[Op], policy: WritePolicy, user_key: UserKey | None
) -> None:
    existing_before = copy.deepcopy(existing)
    ops_before = copy.deepcopy(op_list)
    try:
        outcome = run(existing, op_list, policy, user_key=user_key)
    except RaftstoreError as failure:
        assert failure.definite
        assert existing == existing_before
        assert op_list == ops_before
        return
    assert existing == existing_before
    assert op_list == ops_before
    if not outcome.changed:
        assert ops.is_read_only(op_list)
        assert outcome.record is existing
        return
    record = stored(outcome)
    previous = 0 if existing is None else existing.generation
    assert record.generation == next_generation(previous) != previous
    assert record.last_update_ms >= NOW_MS
    if existing is not None:
        assert record.last_update_ms >= existing.last_update_ms


# -- the fast path is the general path -----------------------------------------------------------

FAST_OPS = st.one_of(  # what the fast path takes
    st.builds(ops.read, st.none() | BIN_NAMES),
    st.builds(ops.write, BIN_NAMES, SCALARS | st.floats()),  # NaN too: compared by repr
)
# Each a little outside what the fast path takes: the general path must get it, and answer it.
NEAR_MISS_OPS: list[Any] = [
    ops.write("a", 2**63),
    ops.write("a", -(2**63) - 1),
    ops.write("x" * 16, 1),
    ops.write("é" * 8, 1),  # 8 characters, 16 bytes of UTF-8
    ops.write("é", 1),  # valid, but not ASCII
    ops.write("", 1),
    ops.write(1, "x"),  # type: ignore[arg-type]
    ops.read("x" * 16),
    ops.read(""),
    ops.write("a", None),
    ops.write("a", [1]),
    ops.write("a", {"k": 1}),
    ops.write("a", {1, 2}),
    ops.write("a", 1j),
    ops.write("a", bytearray(b"x")),
    ops.write("a", POINT),
    ops.increment("a", 1),
    ops.delete(),
    ops.touch(),
    Op(2, "a", ("x",)),  # type: ignore[arg-type]  # the code as a plain int
    Op(OpCode.WRITE, "a", ["x"]),  # type: ignore[arg-type]
    Op(OpCode.WRITE, "a", ("x", "y")),
    Op(OpCode.WRITE, None, ("x",)),
    Op(OpCode.READ, "a", ("x",)),
    ("write", "a", 1),
]
NEAR_MISS_POLICIES: list[Any] = [
    WritePolicy(exists=1),  # type: ignore[arg-type]  # a valid value, but not an Exists
    WritePolicy(exists=9),  # type: ignore[arg-type]
    WritePolicy(exists=True),  # type: ignore[arg-type]
    WritePolicy(gen=True),  # type: ignore[arg-type]
    WritePolicy(gen=5),  # type: ignore[arg-type]
    WritePolicy(generation=-1),
    WritePolicy(generation=limits.GENERATION_MAX + 1),
    WritePolicy(ttl=True),
    WritePolicy(ttl=-3),
    WritePolicy(ttl=limits.TTL_SECONDS_MAX + 1),
    WritePolicy(ttl=limits.TTL_SECONDS_MAX),
    WritePolicy(send_key=1),  # type: ignore[arg-type]
    "not a policy",
]
NEAR_MISS_KEYS: list[Any] = [-(2**63), 2**63 - 1, 2**63, True, 1.5, bytearray(b"k"), "", b""]


def outcome_of(operate_fn: Any, existing: Record | None, op_list: list[Any], **kwargs: Any) -> Any:
    """What a way of operating gave: its outcome, exactly (repr), or its error."""
    try:
        return repr(operate_fn(existing, op_list, now_ms=NOW_MS, set_name="people", **kwargs))
    except RaftstoreError as failure:
        return (type(failure), failure.code, failure.msg)


def check_fast_path_is_general_path(
    existing: Record | None,
    op_list: list[Any],
    policy: WritePolicy,
    user_key: Any,
    namespace: NamespaceConfig,
) -> None:
    kind = operations._plain_kind(op_list, policy, user_key)
    event(f"fast path: {['no', 'reads', 'writes'][kind]}")
    existing_before = copy.deepcopy(existing)
    ops_before = copy.deepcopy(op_list)
    kwargs = {"user_key": user_key, "namespace": namespace}
    fast = outcome_of(lambda *a, **k: operate(a[0], a[1], policy, **k), existing, op_list, **kwargs)
    general = outcome_of(
        lambda *a, **k: operations._operate_generic(a[0], a[1], policy, **k),
        existing,
        op_list,
        **kwargs,
    )
    assert fast == general
    assert repr(existing) == repr(existing_before) and repr(op_list) == repr(ops_before)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    existing=existing_records(),
    op_list=st.lists(FAST_OPS, min_size=1, max_size=5),
    policy=POLICIES,
    user_key=KEYS,
    namespace=st.sampled_from([NAMESPACE, NAMESPACE_DAY_TTL]),
)
def test_the_fast_path_gives_what_the_general_path_gives(
    existing: Record | None,
    op_list: list[Any],
    policy: WritePolicy,
    user_key: Any,
    namespace: NamespaceConfig,
) -> None:
    check_fast_path_is_general_path(existing, op_list, policy, user_key, namespace)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    existing=existing_records(),
    op_list=st.lists(FAST_OPS, max_size=4),
    policy=POLICIES,
    user_key=KEYS,
    namespace=st.sampled_from([NAMESPACE, NAMESPACE_DAY_TTL]),
    miss=st.sampled_from(["op", "policy", "key"]),
    data=st.data(),
)
def test_near_misses_of_the_fast_path_still_give_what_the_general_path_gives(  # noqa: PLR0917
    existing: Record | None,
    op_list: list[Any],
    policy: WritePolicy,
    user_key: Any,
    namespace: NamespaceConfig,
    miss: str,
    data: st.DataObject,
) -> None:
    if miss == "op":
        at = data.draw(st.integers(0, len(op_list)))
        op_list.insert(at, data.draw(st.sampled_from(NEAR_MISS_OPS)))
    elif miss == "policy":
        policy = data.draw(st.sampled_from(NEAR_MISS_POLICIES))
    else:
        user_key = data.draw(st.sampled_from(NEAR_MISS_KEYS))
    check_fast_path_is_general_path(existing, op_list, policy, user_key, namespace)


@pytest.mark.parametrize(
    ("op_list", "policy", "user_key", "kind"),
    [
        ([ops.write("v", "v" * 100)], WritePolicy(), None, operations._PLAIN_WRITES),
        ([ops.write("n", 2**63 - 1), ops.read("n")], WritePolicy(ttl=60), 7, 2),
        ([ops.read(), ops.read("a")], WritePolicy(exists=Exists.UPDATE), b"k", 1),
        ([ops.write("v", None)], WritePolicy(), None, operations._NOT_PLAIN),
        ([ops.write("v", [1])], WritePolicy(), None, operations._NOT_PLAIN),
        ([ops.increment("n", 1)], WritePolicy(), None, operations._NOT_PLAIN),
        ([ops.write("v", 1)], WritePolicy(), True, operations._NOT_PLAIN),
    ],
)
def test_plain_requests_take_the_fast_path(
    op_list: list[Op], policy: WritePolicy, user_key: Any, kind: int
) -> None:
    assert operations._plain_kind(op_list, policy, user_key) == kind
