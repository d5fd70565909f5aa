"""raftstore.operations_cdt: list and map operations, their errors, and the sort order."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftstore import limits, ops
from raftstore.config import NamespaceConfig
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.operations import Outcome, operate
from raftstore.operations_cdt import WorkingBins, sort_key
from raftstore.ops import Op
from raftstore.policy import WritePolicy
from raftstore.record import Record, check_record
from raftstore.values import GeoJSON

NOW_MS = 1_700_000_000_000
NAMESPACE = NamespaceConfig("test")
POINT = GeoJSON('{"type":"Point","coordinates":[1.0,2.0]}')


def live(bins: dict[str, Any]) -> Record:
    return Record(generation=3, void_time=0, last_update_ms=NOW_MS - 1, set_name="s", bins=bins)


def run(existing: Record | None, op_list: Sequence[Op]) -> Outcome:
    return operate(
        existing,
        op_list,
        WritePolicy(),
        now_ms=NOW_MS,
        set_name="s",
        user_key=None,
        namespace=NAMESPACE,
    )


def apply_one(bins: dict[str, Any], op: Op) -> tuple[Any, dict[str, Any]]:
    """Run one op on a live record holding `bins`: (the op's result, the bins after)."""
    existing = live(bins)
    outcome = run(existing, [op])
    assert len(outcome.results) == 1
    assert outcome.results[0][0] == op.bin
    assert outcome.record is not None
    if outcome.changed:
        check_record(outcome.record)
        assert outcome.record.generation == 4
    else:
        assert outcome.record is existing
    return outcome.results[0][1], outcome.record.bins


def fails(code: ResultCode, bins: dict[str, Any], op: Op) -> None:
    existing = live(bins)
    before = copy.deepcopy(existing)
    with pytest.raises(RaftstoreError) as caught:
        run(existing, [op])
    assert caught.value.code == code, caught.value
    assert existing == before


NOT_A_LIST = [1, "s", b"b", 1.5, True, {"k": 1}, POINT]
NOT_A_MAP = [1, "s", b"b", 1.5, True, [1], POINT]


# -- list: create and grow ----------------------------------------------------------------------


def test_list_append_creates_the_list_and_returns_the_size() -> None:
    assert apply_one({"x": 0}, ops.list_append("l", "a")) == (1, {"x": 0, "l": ["a"]})
    assert apply_one({"l": [1, 2]}, ops.list_append("l", [3])) == (3, {"l": [1, 2, [3]]})


def test_list_append_on_an_absent_record_creates_it() -> None:
    outcome = run(None, [ops.list_append("l", 1), ops.list_append("l", 2)])
    assert outcome.results == [("l", 1), ("l", 2)]
    assert outcome.record is not None
    assert outcome.record.bins == {"l": [1, 2]}
    assert outcome.record.generation == 1


def test_list_append_items() -> None:
    assert apply_one({"x": 0}, ops.list_append_items("l", [1, 2])) == (2, {"x": 0, "l": [1, 2]})
    assert apply_one({"l": [0]}, ops.list_append_items("l", [1, 2])) == (3, {"l": [0, 1, 2]})
    assert apply_one({"x": 0}, ops.list_append_items("l", [])) == (0, {"x": 0, "l": []})


def test_list_append_items_needs_a_list() -> None:
    fails(ResultCode.PARAMETER_ERROR, {"x": 0}, Op(ops.OpCode.LIST_APPEND_ITEMS, "l", ("ab",)))
    fails(ResultCode.PARAMETER_ERROR, {"x": 0}, Op(ops.OpCode.LIST_APPEND_ITEMS, "l", ({},)))


@pytest.mark.parametrize(
    ("index", "after"),
    [
        (0, ["new", "a", "b", "c"]),
        (1, ["a", "new", "b", "c"]),
        (3, ["a", "b", "c", "new"]),
        (-1, ["a", "b", "new", "c"]),
        (-3, ["new", "a", "b", "c"]),
    ],
)
def test_list_insert(index: int, after: list[str]) -> None:
    assert apply_one({"l": ["a", "b", "c"]}, ops.list_insert("l", index, "new")) == (
        4,
        {"l": after},
    )


@pytest.mark.parametrize("index", [4, 100, -4, -100])
def test_list_insert_out_of_range_is_not_applicable(index: int) -> None:
    fails(ResultCode.OP_NOT_APPLICABLE, {"l": ["a", "b", "c"]}, ops.list_insert("l", index, 1))


def test_list_insert_on_a_missing_bin_treats_it_as_empty() -> None:
    assert apply_one({"x": 0}, ops.list_insert("l", 0, "v")) == (1, {"x": 0, "l": ["v"]})
    fails(ResultCode.OP_NOT_APPLICABLE, {"x": 0}, ops.list_insert("l", 1, "v"))
    fails(ResultCode.OP_NOT_APPLICABLE, {"x": 0}, ops.list_insert("l", -1, "v"))


# -- list: remove and change --------------------------------------------------------------------


@pytest.mark.parametrize(("index", "item", "rest"), [(0, "a", ["b", "c"]), (-1, "c", ["a", "b"])])
def test_list_pop(index: int, item: str, rest: list[str]) -> None:
    assert apply_one({"l": ["a", "b", "c"]}, ops.list_pop("l", index)) == (item, {"l": rest})


def test_popping_the_last_item_keeps_an_empty_list() -> None:
    assert apply_one({"l": ["a"]}, ops.list_pop("l", 0)) == ("a", {"l": []})


@pytest.mark.parametrize(
    ("bins", "index"), [({"l": ["a"]}, 1), ({"l": ["a"]}, -2), ({"l": []}, 0), ({"x": 0}, 0)]
)
def test_list_pop_out_of_range_or_missing_is_not_applicable(
    bins: dict[str, Any], index: int
) -> None:
    fails(ResultCode.OP_NOT_APPLICABLE, bins, ops.list_pop("l", index))


def test_list_remove() -> None:
    assert apply_one({"l": ["a", "b", "c"]}, ops.list_remove("l", 1)) == (1, {"l": ["a", "c"]})
    assert apply_one({"l": ["a", "b", "c"]}, ops.list_remove("l", -3)) == (1, {"l": ["b", "c"]})
    fails(ResultCode.OP_NOT_APPLICABLE, {"l": ["a"]}, ops.list_remove("l", 1))
    fails(ResultCode.OP_NOT_APPLICABLE, {"x": 0}, ops.list_remove("l", 0))


def test_list_set() -> None:
    assert apply_one({"l": ["a", "b"]}, ops.list_set("l", 0, "z")) == (None, {"l": ["z", "b"]})
    assert apply_one({"l": ["a", "b"]}, ops.list_set("l", -1, "z")) == (None, {"l": ["a", "z"]})
    assert apply_one({"l": ["a", "b"]}, ops.list_set("l", 2, "z")) == (None, {"l": ["a", "b", "z"]})


@pytest.mark.parametrize(("bins", "index"), [({"l": ["a"]}, 2), ({"l": ["a"]}, -2), ({"x": 0}, 0)])
def test_list_set_out_of_range_or_missing_is_not_applicable(
    bins: dict[str, Any], index: int
) -> None:
    fails(ResultCode.OP_NOT_APPLICABLE, bins, ops.list_set("l", index, "z"))


def test_list_clear_keeps_an_empty_list() -> None:
    assert apply_one({"l": [1, 2]}, ops.list_clear("l")) == (None, {"l": []})


def test_list_clear_and_sort_of_a_missing_bin_create_nothing() -> None:
    assert apply_one({"x": 0}, ops.list_clear("l")) == (None, {"x": 0})
    assert apply_one({"x": 0}, ops.list_sort("l")) == (None, {"x": 0})


def test_list_sort() -> None:
    assert apply_one({"l": [3, 1.5, 2]}, ops.list_sort("l")) == (None, {"l": [1.5, 2, 3]})


# -- list: reads --------------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "item"), [(0, "a"), (2, "c"), (-1, "c"), (-3, "a")])
def test_list_get(index: int, item: str) -> None:
    existing = live({"l": ["a", "b", "c"]})
    outcome = run(existing, [ops.list_get("l", index)])
    assert outcome == Outcome(existing, [("l", item)], changed=False)


@pytest.mark.parametrize("index", [3, -4])
def test_list_get_out_of_range_is_not_applicable(index: int) -> None:
    fails(ResultCode.OP_NOT_APPLICABLE, {"l": ["a", "b", "c"]}, ops.list_get("l", index))


def test_list_reads_of_a_missing_bin_return_none() -> None:
    op_list = [ops.list_get("l", 0), ops.list_get_range("l", 0), ops.list_size("l")]
    assert run(live({"x": 0}), op_list).results == [("l", None)] * 3


def test_list_reads_of_an_absent_record_are_record_not_found() -> None:
    with pytest.raises(RaftstoreError) as caught:
        run(None, [ops.list_get("l", 0)])
    assert caught.value.code == ResultCode.RECORD_NOT_FOUND


@pytest.mark.parametrize(
    ("index", "count", "items"),
    [
        (1, 2, ["b", "c"]),
        (1, None, ["b", "c", "d"]),
        (0, 0, []),
        (2, 10, ["c", "d"]),
        (-2, None, ["c", "d"]),
        (-2, 1, ["c"]),
        (4, 1, []),
        (100, None, []),
        (-6, 3, ["a"]),
        (-100, None, ["a", "b", "c", "d"]),
        (-100, 2, []),
    ],
)
def test_list_get_range(index: int, count: int | None, items: list[str]) -> None:
    existing = live({"l": ["a", "b", "c", "d"]})
    assert run(existing, [ops.list_get_range("l", index, count)]).results == [("l", items)]


def test_list_get_range_needs_a_non_negative_count() -> None:
    fails(ResultCode.PARAMETER_ERROR, {"l": [1]}, ops.list_get_range("l", 0, -1))


def test_list_size() -> None:
    assert run(live({"l": [1, 2, 3]}), [ops.list_size("l")]).results == [("l", 3)]
    assert run(live({"l": []}), [ops.list_size("l")]).results == [("l", 0)]


def test_a_tuple_bin_is_a_list() -> None:
    assert apply_one({"l": (1, 2)}, ops.list_append("l", 3)) == (3, {"l": [1, 2, 3]})
    assert run(live({"l": (1, 2)}), [ops.list_get("l", 1)]).results == [("l", 2)]


# -- list: errors -------------------------------------------------------------------------------

LIST_OPS = [
    ops.list_append("l", 1),
    ops.list_append_items("l", [1]),
    ops.list_insert("l", 0, 1),
    ops.list_pop("l", 0),
    ops.list_remove("l", 0),
    ops.list_set("l", 0, 1),
    ops.list_get("l", 0),
    ops.list_get_range("l", 0, 1),
    ops.list_size("l"),
    ops.list_clear("l"),
    ops.list_sort("l"),
]


@pytest.mark.parametrize("op", LIST_OPS, ids=[op.code.name for op in LIST_OPS])
@pytest.mark.parametrize("value", NOT_A_LIST, ids=[type(v).__name__ for v in NOT_A_LIST])
def test_list_ops_on_another_type_are_incompatible(op: Op, value: Any) -> None:
    fails(ResultCode.BIN_INCOMPATIBLE_TYPE, {"l": value}, op)


@pytest.mark.parametrize("index", [True, 1.0, "0", None, 2**63])
def test_list_indexes_must_be_int64(index: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, {"l": [1]}, ops.list_get("l", index))
    fails(ResultCode.PARAMETER_ERROR, {"l": [1]}, ops.list_insert("l", index, 1))
    fails(ResultCode.PARAMETER_ERROR, {"l": [1]}, ops.list_get_range("l", index, 1))
    if index is not None:  # a count of None means "to the end"
        fails(ResultCode.PARAMETER_ERROR, {"l": [1]}, ops.list_get_range("l", 0, index))


@pytest.mark.parametrize("item", [None, {1, 2}, 2**63, {1.5: 0}])
def test_list_items_must_be_storable(item: Any) -> None:
    fails(ResultCode.PARAMETER_ERROR, {"l": [1]}, ops.list_append("l", item))
    fails(ResultCode.PARAMETER_ERROR, {"l": [1]}, ops.list_set("l", 0, item))
    fails(ResultCode.PARAMETER_ERROR, {"l": [1]}, ops.list_append_items("l", [1, item]))


def test_an_item_may_not_nest_the_bin_deeper_than_the_limit() -> None:
    deep: Any = 1
    for _ in range(limits.VALUE_DEPTH_MAX):
        deep = [deep]
    assert run(live({"x": 0}), [ops.write("l", deep)]).changed
    fails(ResultCode.PARAMETER_ERROR, {"l": []}, ops.list_append("l", deep))


# -- map ----------------------------------------------------------------------------------------


def test_map_put() -> None:
    assert apply_one({"x": 0}, ops.map_put("m", "k", 1)) == (1, {"x": 0, "m": {"k": 1}})
    assert apply_one({"m": {"k": 1}}, ops.map_put("m", "k", 2)) == (1, {"m": {"k": 2}})
    assert apply_one({"m": {"k": 1}}, ops.map_put("m", 7, [1])) == (2, {"m": {"k": 1, 7: [1]}})


def test_map_put_items() -> None:
    assert apply_one({"m": {"a": 1}}, ops.map_put_items("m", {"a": 2, b"b": 3})) == (
        2,
        {"m": {"a": 2, b"b": 3}},
    )
    assert apply_one({"x": 0}, ops.map_put_items("m", {})) == (0, {"x": 0, "m": {}})
    fails(ResultCode.PARAMETER_ERROR, {"x": 0}, Op(ops.OpCode.MAP_PUT_ITEMS, "m", ([1],)))


@pytest.mark.parametrize(
    ("before", "delta", "after"),
    [
        ({}, 2, 2),
        ({}, 0.5, 0.5),
        ({"k": 10}, -3, 7),
        ({"k": 1.5}, 1, 2.5),
        ({"k": limits.INT_MAX - 1}, 1, limits.INT_MAX),
    ],
)
def test_map_increment(before: dict[str, Any], delta: int | float, after: int | float) -> None:
    result, bins = apply_one({"m": before}, ops.map_increment("m", "k", delta))
    assert result == after
    assert type(result) is type(after)
    assert bins == {"m": {**before, "k": after}}


def test_map_increment_creates_the_map() -> None:
    assert apply_one({"x": 0}, ops.map_increment("m", 1, 5)) == (5, {"x": 0, "m": {1: 5}})


def test_map_increment_errors() -> None:
    fails(ResultCode.PARAMETER_ERROR, {"m": {"k": limits.INT_MAX}}, ops.map_increment("m", "k", 1))
    fails(ResultCode.BIN_INCOMPATIBLE_TYPE, {"m": {"k": 1}}, ops.map_increment("m", "k", 0.5))
    for entry in ["s", True, [1], {"a": 1}]:
        fails(ResultCode.BIN_INCOMPATIBLE_TYPE, {"m": {"k": entry}}, ops.map_increment("m", "k", 1))
    bad_deltas: list[Any] = [True, "1", None]
    for delta in bad_deltas:
        fails(ResultCode.PARAMETER_ERROR, {"m": {}}, ops.map_increment("m", "k", delta))


def test_map_get_by_key_and_size() -> None:
    existing = live({"m": {"a": 1, 2: "two"}})
    op_list = [
        ops.map_get_by_key("m", "a"),
        ops.map_get_by_key("m", 2),
        ops.map_get_by_key("m", "zz"),
        ops.map_size("m"),
        ops.map_get_by_key("missing", "a"),
        ops.map_size("missing"),
    ]
    outcome = run(existing, op_list)
    assert outcome == Outcome(
        existing,
        [("m", 1), ("m", "two"), ("m", None), ("m", 2), ("missing", None), ("missing", None)],
        changed=False,
    )


def test_map_remove_by_key() -> None:
    assert apply_one({"m": {"a": 1, "b": 2}}, ops.map_remove_by_key("m", "a")) == (
        1,
        {"m": {"b": 2}},
    )
    assert apply_one({"m": {"a": 1}}, ops.map_remove_by_key("m", "a")) == (1, {"m": {}})
    assert apply_one({"m": {"a": 1}}, ops.map_remove_by_key("m", "zz")) == (None, {"m": {"a": 1}})
    assert apply_one({"x": 0}, ops.map_remove_by_key("m", "a")) == (None, {"x": 0})


def test_map_clear() -> None:
    assert apply_one({"m": {"a": 1}}, ops.map_clear("m")) == (None, {"m": {}})
    assert apply_one({"x": 0}, ops.map_clear("m")) == (None, {"x": 0})


MAP_OPS = [
    ops.map_put("m", "k", 1),
    ops.map_put_items("m", {"k": 1}),
    ops.map_increment("m", "k", 1),
    ops.map_get_by_key("m", "k"),
    ops.map_remove_by_key("m", "k"),
    ops.map_size("m"),
    ops.map_clear("m"),
]


@pytest.mark.parametrize("op", MAP_OPS, ids=[op.code.name for op in MAP_OPS])
@pytest.mark.parametrize("value", NOT_A_MAP, ids=[type(v).__name__ for v in NOT_A_MAP])
def test_map_ops_on_another_type_are_incompatible(op: Op, value: Any) -> None:
    fails(ResultCode.BIN_INCOMPATIBLE_TYPE, {"m": value}, op)


@pytest.mark.parametrize("key", [1.5, True, None, (1,), 2**63])
def test_map_keys_must_be_str_int_or_bytes(key: Any) -> None:
    for op in [
        ops.map_put("m", key, 1),
        ops.map_increment("m", key, 1),
        ops.map_get_by_key("m", key),
        ops.map_remove_by_key("m", key),
        ops.map_put_items("m", {key: 1}),
    ]:
        fails(ResultCode.PARAMETER_ERROR, {"m": {}}, op)


def test_map_values_must_be_storable() -> None:
    fails(ResultCode.PARAMETER_ERROR, {"m": {}}, ops.map_put("m", "k", None))
    fails(ResultCode.PARAMETER_ERROR, {"m": {}}, ops.map_put("m", "k", {1, 2}))


# -- results and copies -------------------------------------------------------------------------


def test_every_list_and_map_op_returns_one_entry_in_op_order() -> None:
    op_list = [
        ops.list_append("l", 5),
        ops.write("w", 1),
        ops.map_put("m", "k", 1),
        ops.increment("w", 1),
        ops.list_size("l"),
        ops.map_clear("m"),
    ]
    outcome = run(live({"l": [1]}), op_list)
    assert outcome.results == [("l", 2), ("m", 1), ("l", 2), ("m", None)]


def test_container_ops_copy_a_shared_container_once_per_request() -> None:
    stored_list = [3, 1, 2]
    bins = WorkingBins({"l": stored_list})
    first = bins.list_to_write("l", create=False)
    assert first is not stored_list
    assert bins.list_to_write("l", create=False) is first  # already private: no second copy
    handed_out = bins.hand_out("l")
    again = bins.list_to_write("l", create=False)
    assert again is not handed_out  # a handed-out container is copied before the next change
    assert again == handed_out == [3, 1, 2]
    assert stored_list == [3, 1, 2]


# -- sort order ---------------------------------------------------------------------------------


def test_sort_orders_types_then_values() -> None:
    ordered = [
        None,
        False,
        True,
        -5,
        1.5,
        2,
        math.inf,
        math.nan,
        "",
        "a",
        "b",
        b"",
        b"\x00",
        [],
        [1],
        [1, 2],
        [2],
        {},
        {"a": 1},
        {"a": 2},
        {"b": 0},
        POINT,
    ]
    shuffled = ordered[::2] + ordered[1::2]
    # List equality compares identity first, so the one math.nan object matches itself.
    assert sorted(shuffled, key=sort_key) == ordered
    assert sorted(reversed(shuffled), key=sort_key) == ordered


def test_sort_of_maps_ignores_insertion_order() -> None:
    assert sort_key({"a": 1, "b": 2}) == sort_key({"b": 2, "a": 1})


def test_sort_keeps_equal_numbers_in_their_order() -> None:
    after = apply_one({"l": [2, 1.0, 1, 0]}, ops.list_sort("l"))[1]["l"]
    assert after == [0, 1, 1, 2]
    assert [type(item) for item in after] == [int, float, int, int]


def test_sort_of_an_unknown_type_is_incompatible() -> None:
    with pytest.raises(RaftstoreError) as caught:
        sort_key(object())
    assert caught.value.code == ResultCode.BIN_INCOMPATIBLE_TYPE


SORTABLE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=3)
    | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=8,
)


@given(st.lists(SORTABLE, max_size=8), st.randoms(use_true_random=False))
def test_sort_is_a_total_order_independent_of_the_input_order(items: list[Any], rng: Any) -> None:
    once = sorted(items, key=sort_key)
    shuffled = list(items)
    rng.shuffle(shuffled)
    assert [sort_key(x) for x in sorted(shuffled, key=sort_key)] == [sort_key(x) for x in once]
    for low, high in itertools.pairwise(once):
        assert sort_key(low) <= sort_key(high)
