"""The RAM primary index: unit tests of every method, and a stateful test against a dict.

Digests in the stateful test are built to collide: few partitions, few 8-byte hash prefixes
(so many keys share one home slot, including the last home slot, where runs spill into the
overflow room), keys that differ only in the nibble the partition id leaves, and batches
large enough to make tables grow and shrink.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from raftstore import limits
from raftstore.index import IndexStats, PrimaryIndex
from raftstore.record import RecordMeta

SETS = {"users": 1, "orders": 7, "last": limits.SETS_PER_NAMESPACE_MAX}
META = RecordMeta(generation=1, void_time=0, last_update_ms=1_700_000_000_000, set_name="")


def new_index() -> PrimaryIndex:
    index = PrimaryIndex()
    for name, set_id in SETS.items():
        index.register_set(name, set_id)
    return index


def digest(partition_id: int, nibble: int = 0, head: bytes = b"", tail: bytes = b"") -> bytes:
    """A digest in `partition_id` with digest[1] >> 4 == nibble, then `head` and `tail`."""
    body = (head + bytes(8))[:8] + (tail + bytes(10))[:10]
    return bytes((partition_id & 0xFF, partition_id >> 8 | nibble << 4)) + body


def random_digests(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(limits.DIGEST_BYTES) for _ in range(count)]


def meta(**changes: object) -> RecordMeta:
    fields = {
        "generation": META.generation,
        "void_time": META.void_time,
        "last_update_ms": META.last_update_ms,
        "set_name": META.set_name,
        "tombstone": META.tombstone,
        "key_stored": META.key_stored,
    }
    fields.update(changes)
    return RecordMeta(**fields)  # type: ignore[arg-type]


def expected_stats(entries: Iterable[RecordMeta], set_names: Iterable[str]) -> IndexStats:
    metas = list(entries)
    sets = {name: (0, 0) for name in set_names}
    for item in metas:
        records, tombstones = sets.get(item.set_name, (0, 0))
        sets[item.set_name] = (
            (records, tombstones + 1) if item.tombstone else (records + 1, tombstones)
        )
    if sets.get("") == (0, 0):
        del sets[""]
    tombstones = sum(1 for item in metas if item.tombstone)
    return IndexStats(len(metas) - tombstones, tombstones, sets, memory_bytes=0)


# -- sets ---------------------------------------------------------------------------------------


def test_register_set_records_the_pair_and_is_idempotent() -> None:
    index = new_index()
    index.register_set("users", 1)
    assert index.set_id("users") == 1
    assert index.set_id("") == 0
    assert index.set_id("nobody") is None
    assert index.set_names() == SETS


@pytest.mark.parametrize(
    ("name", "set_id"),
    [
        ("users", 2),  # name already has another id
        ("other", 1),  # id already names another set
        ("", 3),
        ("x" * (limits.SET_NAME_BYTES_MAX + 1), 3),
        ("fine", 0),
        ("fine", limits.SETS_PER_NAMESPACE_MAX + 1),
    ],
)
def test_register_set_refuses_conflicts_and_bad_values(name: str, set_id: int) -> None:
    index = new_index()
    with pytest.raises(ValueError):
        index.register_set(name, set_id)
    assert index.set_names() == SETS


# -- one entry ----------------------------------------------------------------------------------


def test_an_empty_index_has_nothing() -> None:
    index = PrimaryIndex()
    some = random_digests(1, seed=1)[0]
    assert len(index) == 0
    assert index.get(some) is None
    assert some not in index
    assert index.remove(some) is False
    assert list(index.items()) == []
    assert list(index.digests()) == []
    assert index.partition_count(0) == 0
    assert index.stats() == IndexStats(0, 0, {}, memory_bytes=0)
    assert index.stats().memory_bytes == 0
    index.check()


@pytest.mark.parametrize(
    "stored",
    [
        META,
        meta(generation=limits.GENERATION_MAX, void_time=2**32 - 1, last_update_ms=2**48 - 1),
        meta(generation=0, void_time=0, last_update_ms=0),
        meta(set_name="users", tombstone=True),
        meta(set_name="last", key_stored=True),
        meta(set_name="orders", tombstone=True, key_stored=True),
    ],
)
def test_put_then_get_returns_equal_metadata(stored: RecordMeta) -> None:
    index = new_index()
    key = random_digests(1, seed=2)[0]
    index.put(key, stored)
    assert index.get(key) == stored
    assert key in index
    assert len(index) == 1
    assert list(index.items()) == [(key, stored)]
    index.check()


def test_put_replaces_and_moves_the_counters() -> None:
    index = new_index()
    key = random_digests(1, seed=3)[0]
    index.put(key, meta(set_name="users"))
    index.put(key, meta(set_name="orders", tombstone=True, generation=2))
    assert len(index) == 1
    assert index.get(key) == meta(set_name="orders", tombstone=True, generation=2)
    stats = index.stats()
    assert (stats.records, stats.tombstones) == (0, 1)
    assert stats.sets["users"] == (0, 0)
    assert stats.sets["orders"] == (0, 1)
    index.check()


def test_remove_says_whether_the_entry_was_there() -> None:
    index = new_index()
    first, second = random_digests(2, seed=4)
    index.put(first, META)
    index.put(second, meta(tombstone=True))
    assert index.remove(first) is True
    assert index.remove(first) is False
    assert index.get(first) is None
    assert index.get(second) == meta(tombstone=True)
    assert index.stats() == IndexStats(0, 1, {"": (0, 1), **dict.fromkeys(SETS, (0, 0))}, 0)
    assert index.remove(second) is True
    assert len(index) == 0
    assert index.stats().memory_bytes == 0, "an emptied partition gives its table back"
    index.check()


@pytest.mark.parametrize("thing", [None, 42, "x" * 20, b"short", b"x" * 21, bytearray(20)])
def test_contains_is_false_for_anything_but_a_stored_digest(thing: object) -> None:
    index = new_index()
    index.put(bytes(20), META)
    assert thing not in index
    assert bytes(20) in index


@pytest.mark.parametrize(
    "bad",
    [
        meta(set_name="unregistered"),
        meta(generation=limits.GENERATION_MAX + 1),
        meta(generation=-1),
        meta(void_time=2**32),
        meta(void_time=-1),
        meta(last_update_ms=2**48),
        meta(last_update_ms=-1),
    ],
)
def test_put_asserts_the_metadata_fits(bad: RecordMeta) -> None:
    index = new_index()
    with pytest.raises(AssertionError):
        index.put(bytes(20), bad)
    with pytest.raises(AssertionError):
        index.load([(bytes(20), bad)])
    assert len(index) == 0


def test_digests_must_be_20_bytes() -> None:
    index = new_index()
    for call in (index.get, index.remove, lambda d: index.put(d, META)):
        with pytest.raises(AssertionError):
            call(bytes(19))


# -- partitions ---------------------------------------------------------------------------------


def test_partition_id_is_the_low_12_bits_of_the_first_two_bytes() -> None:
    index = new_index()
    key = bytes((0x34, 0xA2)) + bytes(18)  # (0x34 | 0xA2 << 8) & 0xFFF == 0x234
    index.put(key, META)
    assert index.partition_count(0x234) == 1
    assert list(index.digests(0x234)) == [key]
    assert list(index.items(0x234)) == [(key, META)]
    assert list(index.digests(0x034)) == []
    assert sum(index.partition_count(pid) for pid in range(limits.PARTITIONS)) == 1


def test_expiring_count_follows_void_times_and_tombstones() -> None:
    index = new_index()
    key, other = digest(0x123, head=b"a"), digest(0x123, head=b"b")
    index.put(key, META)
    assert index.expiring_count(0x123) == 0, "no void time: never expires"
    index.put(key, meta(void_time=500))
    index.put(other, meta(void_time=900))
    assert index.expiring_count(0x123) == 2
    index.put(key, meta(void_time=600))  # a new TTL: still one record that can expire
    assert index.expiring_count(0x123) == 2
    index.put(key, meta(void_time=600, tombstone=True))  # a tombstone never expires
    assert index.expiring_count(0x123) == 1
    assert index.remove(other)
    assert index.expiring_count(0x123) == 0
    index.put(other, meta(void_time=7))
    items = list(index.items())
    index.clear()
    assert index.expiring_count(0x123) == 0
    for name, set_id in SETS.items():
        index.register_set(name, set_id)
    index.load(items)
    assert index.expiring_count(0x123) == 1 and index.expiring_count(0x124) == 0
    index.check()


def test_partition_ids_out_of_range_assert() -> None:
    index = new_index()
    for bad in (-1, limits.PARTITIONS):
        with pytest.raises(AssertionError):
            index.partition_count(bad)
        with pytest.raises(AssertionError):
            list(index.items(bad))


def test_items_and_digests_of_one_partition_and_of_all() -> None:
    index = new_index()
    keys = random_digests(3000, seed=5)
    for n, key in enumerate(keys):
        index.put(key, meta(generation=n % 7 + 1))
    everything = dict(index.items())
    assert everything == {key: meta(generation=n % 7 + 1) for n, key in enumerate(keys)}
    assert sorted(index.digests()) == sorted(keys)
    pid = (keys[0][0] | keys[0][1] << 8) & 0xFFF
    in_partition = sorted(k for k in keys if (k[0] | k[1] << 8) & 0xFFF == pid)
    assert sorted(index.digests(pid)) == in_partition
    assert sorted(k for k, _ in index.items(pid)) == in_partition
    assert index.partition_count(pid) == len(in_partition)


def test_digests_differing_only_in_the_free_nibble_are_distinct() -> None:
    index = new_index()
    keys = [digest(0x5A5, nibble) for nibble in range(16)]
    for nibble, key in enumerate(keys):
        index.put(key, meta(generation=nibble + 1))
    assert index.partition_count(0x5A5) == 16
    assert sorted(index.digests()) == sorted(keys)
    assert index.remove(keys[7])
    assert index.get(keys[7]) is None
    assert [index.get(k) for k in keys[8:]] == [meta(generation=n + 1) for n in range(8, 16)]
    index.check()


def test_iterating_while_changing_the_index_is_safe() -> None:
    index = new_index()
    keys = random_digests(2000, seed=6)
    for key in keys:
        index.put(key, META)
    # Each partition is copied when reached: a key put into a later partition shows up too.
    fresh = random_digests(8000, seed=7)
    seen = []
    for key, _ in index.items():
        seen.append(key)
        index.remove(key)
        index.put(fresh[len(seen)], META)
    assert len(seen) == len(set(seen))
    assert set(keys) <= set(seen) <= set(keys) | set(fresh)
    assert len(index) == len(keys)
    index.check()


# -- growth, shrink and probing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [b"", b"\xff" * 8, b"\x80" + bytes(7), None],
    ids=["all-home-0", "all-home-last", "all-home-middle", "random"],
)
def test_one_partition_grows_and_shrinks_with_shared_homes(head: bytes | None) -> None:
    index = new_index()
    rng = random.Random(8)
    keys = [
        digest(
            0x123, rng.randrange(16), rng.randbytes(8) if head is None else head, rng.randbytes(10)
        )
        for _ in range(600)
    ]
    keys = list(dict.fromkeys(keys))
    for key in keys:
        index.put(key, META)
    index.check()
    assert index.partition_count(0x123) == len(keys)
    full = index.stats().memory_bytes
    rng.shuffle(keys)
    for key in keys[: len(keys) - 10]:
        assert index.remove(key)
    index.check()
    assert index.stats().memory_bytes < full / 4, "the table shrank"
    assert sorted(index.digests()) == sorted(keys[len(keys) - 10 :])
    for key in keys[len(keys) - 10 :]:
        assert index.remove(key)
    assert index.stats().memory_bytes == 0
    index.check()


def test_tables_stay_under_64_bytes_a_record() -> None:
    index = new_index()
    keys = random_digests(100_000, seed=9)
    for key in keys:
        index.put(key, META)
    assert index.stats().memory_bytes / len(keys) < 60
    index.check()


@pytest.mark.slow
def test_traced_memory_stays_under_64_bytes_a_record() -> None:
    """The whole index as tracemalloc sees it; at 1M records see benchmarks/bench_index.py."""
    keys = random_digests(250_000, seed=10)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        index = new_index()
        for key in keys:
            index.put(key, META)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == len(keys)
    assert (after - before) / len(keys) < 64


# -- load and clear -----------------------------------------------------------------------------


def test_load_builds_the_same_index_as_put_in_smaller_tables() -> None:
    keys = random_digests(20_000, seed=11)
    sets = ["", "users", "orders", "last"]
    items = [
        (key, meta(generation=n % 9 + 1, set_name=sets[n % 4], tombstone=n % 5 == 0))
        for n, key in enumerate(keys)
    ]
    by_put = new_index()
    for key, item in items:
        by_put.put(key, item)
    by_load = new_index()
    by_load.load(iter(items))
    by_load.check()
    assert sorted(by_load.items()) == sorted(by_put.items())
    assert by_load.stats() == by_put.stats()
    assert by_load.stats().memory_bytes < by_put.stats().memory_bytes * 1.1
    for key, item in items[:100]:
        assert by_load.get(key) == item
    for key, _ in items[:5000]:
        assert by_load.remove(key)
    by_load.put(random_digests(1, seed=12)[0], META)
    by_load.check()


def test_load_of_nothing_and_of_colliding_digests() -> None:
    index = new_index()
    index.load([])
    assert len(index) == 0
    keys = [digest(0x777, nibble, b"\xff" * 8, bytes([n])) for nibble in (0, 15) for n in range(40)]
    index.load((key, META) for key in reversed(keys))
    index.check()
    assert sorted(index.digests()) == sorted(keys)


def test_load_refuses_a_non_empty_index_and_duplicates() -> None:
    index = new_index()
    index.put(bytes(20), META)
    with pytest.raises(AssertionError):
        index.load([(bytes([1]) * 20, META)])
    with pytest.raises(AssertionError):
        new_index().load([(bytes(20), META), (bytes(20), meta(tombstone=True))])


def test_clear_drops_entries_and_keeps_sets() -> None:
    index = new_index()
    for key in random_digests(500, seed=13):
        index.put(key, meta(set_name="users"))
    index.clear()
    assert len(index) == 0
    assert list(index.items()) == []
    assert index.stats() == IndexStats(0, 0, dict.fromkeys(SETS, (0, 0)), memory_bytes=0)
    assert index.stats().memory_bytes == 0
    assert index.set_names() == SETS
    index.register_set("users", 1)  # what a rebuild after clear does
    index.load([(bytes(20), meta(set_name="users"))])
    assert index.stats().sets["users"] == (1, 0)
    index.check()


def test_stats_lists_no_set_only_when_used_and_ignores_memory_in_equality() -> None:
    index = new_index()
    index.put(bytes(20), meta(set_name="users"))
    assert "" not in index.stats().sets
    index.put(bytes([1]) * 20, META)
    assert index.stats().sets[""] == (1, 0)
    assert IndexStats(1, 0, {}, memory_bytes=1) == IndexStats(1, 0, {}, memory_bytes=2)


# -- stateful: the index beside a dict ----------------------------------------------------------

PARTITIONS = st.sampled_from([0x000, 0x001, 0xFFF])
NIBBLES = st.sampled_from([0, 1, 15])
HEADS = st.one_of(
    st.sampled_from([bytes(8), b"\xff" * 8, b"\x80" + bytes(7), b"\x7f" + b"\xff" * 7]),
    st.binary(min_size=8, max_size=8),
)
TAILS = st.one_of(st.sampled_from([bytes(10), b"\xff" * 10]), st.binary(min_size=10, max_size=10))
DIGESTS = st.builds(digest, PARTITIONS, NIBBLES, HEADS, TAILS)
METAS = st.builds(
    RecordMeta,
    generation=st.integers(0, limits.GENERATION_MAX),
    void_time=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),  # half without a TTL
    last_update_ms=st.integers(0, 2**48 - 1),
    set_name=st.sampled_from(["", *SETS]),
    tombstone=st.booleans(),
    key_stored=st.booleans(),
)


class IndexVersusDict(RuleBasedStateMachine):
    stored = Bundle("stored")

    def __init__(self) -> None:
        super().__init__()
        self.index = new_index()
        self.model: dict[bytes, RecordMeta] = {}

    @rule(target=stored, key=DIGESTS, item=METAS)
    def put(self, key: bytes, item: RecordMeta) -> bytes:
        self.index.put(key, item)
        self.model[key] = item
        return key

    @rule(keys=st.lists(DIGESTS, min_size=20, max_size=120), item=METAS)
    def put_many(self, keys: list[bytes], item: RecordMeta) -> None:
        for key in keys:
            self.index.put(key, item)
            self.model[key] = item

    @rule(key=st.one_of(stored, DIGESTS))
    def remove(self, key: bytes) -> None:
        assert self.index.remove(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(data=st.data(), share=st.floats(0.5, 1.0))
    def remove_many(self, data: st.DataObject, share: float) -> None:
        present = sorted(self.model)
        chosen = data.draw(st.permutations(present))[: int(len(present) * share)]
        for key in chosen:
            assert self.index.remove(key)
            del self.model[key]

    @rule(key=st.one_of(stored, DIGESTS))
    def get(self, key: bytes) -> None:
        assert self.index.get(key) == self.model.get(key)
        assert (key in self.index) == (key in self.model)

    @rule()
    def clear(self) -> None:
        self.index.clear()
        self.model.clear()

    @rule(data=st.data())
    def reload(self, data: st.DataObject) -> None:
        """What a restart does: clear, register the sets again, load every entry."""
        items = data.draw(st.permutations(list(self.index.items())))
        self.index.clear()
        for name, set_id in SETS.items():
            self.index.register_set(name, set_id)
        self.index.load(items)

    @invariant()
    def same_entries_and_counts(self) -> None:
        assert len(self.index) == len(self.model)
        assert self.index.stats() == expected_stats(self.model.values(), ["", *SETS])
        for pid in (0x000, 0x001, 0xFFF):
            in_model = sum(1 for key in self.model if (key[0] | key[1] << 8) & 0xFFF == pid)
            assert self.index.partition_count(pid) == in_model
            expiring = sum(
                1
                for key, item in self.model.items()
                if (key[0] | key[1] << 8) & 0xFFF == pid and item.void_time and not item.tombstone
            )
            assert self.index.expiring_count(pid) == expiring

    @invariant()
    def same_items_and_sound_tables(self) -> None:
        assert dict(self.index.items()) == self.model
        assert sorted(self.index.digests()) == sorted(self.model)
        self.index.check()


IndexVersusDict.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_index_versus_dict = IndexVersusDict.TestCase
