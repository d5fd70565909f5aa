"""The RAM primary index: digest -> RecordMeta, per partition, in under 50 bytes a record.

Aerospike keeps 64 bytes of RAM per record; a Python dict of bytes -> object costs 150 and
more, so the entries live in flat bytearrays instead, one hash table per partition.

Layout of one partition's table
-------------------------------
`slots` holds `physical` slots of 32 bytes, big-endian fields:

    offset  bytes  field
    0       18     key = digest[2:20]
    18      2      nibble << 12 | key_stored << 11 | tombstone << 10 | set_id
    20      2      generation
    22      4      void_time
    26      2      last_update_ms >> 32      (48 bits in all)
    28      4      last_update_ms & 0xFFFFFFFF

`nibble` is digest[1] >> 4, the 4 digest bits that neither the partition id (digest[0] and
the low nibble of digest[1]) nor the key hold, so a slot alone names its digest, and slot
images sort in (key, nibble) order. `tags` has one byte per slot: 0 if empty, else
0x10 | nibble, so probes test occupancy and nibble without decoding the slot; plus one
last byte that is always 0, a sentinel that ends every probe.

Hashing and probing
-------------------
Digests are RIPEMD-160 outputs, uniformly random, so the key is its own hash: the home slot
of a key is `(int(key[0:8]) * home_slots) >> 64`, which never decreases as the key grows.
The table is ordered linear probing (Robin Hood with ties broken by key). Invariants:

1. occupied slots, read in slot order, hold strictly increasing (key, nibble) pairs;
2. every entry sits at or after its home slot;
3. every slot between an entry's home slot and the entry itself is occupied.

So a lookup scans from the home slot and stops at an empty slot or a larger key; an insertion
moves the run after its place one slot right, up to the next empty slot (one memmove); a
deletion moves the displaced entries after it one slot left (backward-shift deletion: no
deleted markers, no degradation). Nothing wraps around: homes are below `home_slots` and the
slots past them are overflow room; a run that would reach the sentinel makes the table be
rebuilt with more room. A rebuild never probes: it takes the entries in order and puts each
at `max(home, previous + 1)`.

Sizing and memory
-----------------
A table grows when it holds 90% of its home slots, to 60%; it shrinks below 25%, to 60%;
a bulk `load` sizes each table once, at 75%. A slot costs 33 bytes (32 + its tag), so the
tables take 38 to 57 bytes a record, overflow room included, plus about 300 bytes of Python
objects per partition. Measured at 1,000,000 records with tracemalloc
(benchmarks/bench_index.py): 48 bytes a record after puts, 47 after a load, all included.
Empty partitions share one zero-slot table that is never written: inserting grows it first.

Counters (entries, tombstones, per-set records and tombstones, table bytes, and per partition
the live entries with a void time, which the expiry sweep reads to skip partitions where
nothing can expire) follow every change, so `stats` never scans. `check` scans everything
and asserts all of the above.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from itertools import compress, pairwise

from raftstore import limits
from raftstore.record import MetaFields, RecordMeta

SLOT_BYTES = 32
KEY_BYTES = 18  # digest[2:20]
HASH_BYTES = 8  # the first bytes of the key, read as the hash
DIGEST_KEY_START = limits.DIGEST_BYTES - KEY_BYTES

LOAD_GROW_AT = 0.9  # of home slots
LOAD_AFTER_RESIZE = 0.6
LOAD_SHRINK_BELOW = 0.25
LOAD_BULK = 0.75
HOME_SLOTS_MIN = 8

VOID_TIME_MAX = 2**32 - 1
LAST_UPDATE_MS_MAX = 2**48 - 1

_SLOT_SHIFT = 5
assert 1 << _SLOT_SHIFT == SLOT_BYTES
_PARTITION_MASK = limits.PARTITIONS - 1
assert limits.PARTITIONS == 4096, "partition id = low 12 bits of the digest"

# After the key: flags (with the nibble), generation, void_time, lut >> 32, lut & 0xFFFFFFFF.
_VALUE = struct.Struct(">HHIHI")
_SLOT = struct.Struct(f">{KEY_BYTES}sHHIHI")
assert _SLOT.size == SLOT_BYTES == KEY_BYTES + _VALUE.size
_SLOT_KEY = struct.Struct(f">{KEY_BYTES}sH{_VALUE.size - 2}x")  # key and flags only
_FLAGS_VOID = struct.Struct(">H2xI")  # flags and void_time, from the flags' offset
_SLOT_IMAGES = struct.Struct(f"{SLOT_BYTES}s")  # a slot as one bytes object
_FLAGS_OFFSET = KEY_BYTES
_LOW_32 = 2**32 - 1
_ZERO_SLOT = bytes(SLOT_BYTES)  # empty slots are zeroed, so equal tables have equal bytes

_SET_ID_MASK = 0x3FF
_TOMBSTONE = 1 << 10
_KEY_STORED = 1 << 11
_NIBBLE_SHIFT = 12
assert limits.SETS_PER_NAMESPACE_MAX <= _SET_ID_MASK
_TAG_OCCUPIED = 0x10
_TAG_NIBBLE = 0x0F

# The table of every empty partition; `_Table.insert` is never called on it (see `_insert`).
_NO_SLOTS = bytearray()
_NO_TAGS = bytearray(1)

# `_decode` builds RecordMeta positionally (a third faster than by keyword): pin the order.
assert [f.name for f in fields(RecordMeta)] == [
    "generation",
    "void_time",
    "last_update_ms",
    "set_name",
    "tombstone",
    "key_stored",
]
_WORD = "Q"
assert array(_WORD).itemsize == HASH_BYTES


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Counts of the index. Equality ignores `memory_bytes`: the same entries may sit in
    tables of other sizes (built by `load` rather than by `put`) and are still the same index."""

    records: int  # live entries (not tombstones); expiry is not looked at
    tombstones: int
    sets: dict[str, tuple[int, int]]  # set name -> (records, tombstones); "" = no set
    memory_bytes: int = field(compare=False)  # bytes of the tables the index owns


class _Table:
    """One partition's ordered linear-probing table (layout in the module docstring)."""

    __slots__ = ("count", "grow_at", "home_slots", "shrink_below", "slots", "tags")

    def __init__(self) -> None:
        self.count = 0
        self.make_empty()

    def make_empty(self) -> None:
        assert self.count == 0
        self.home_slots = 0
        self.grow_at = 0  # the first insertion grows the table
        self.shrink_below = 0
        self.slots = _NO_SLOTS
        self.tags = _NO_TAGS

    def nbytes(self) -> int:
        return 0 if self.slots is _NO_SLOTS else len(self.slots) + len(self.tags)

    def find(self, key: bytes, tag: int) -> int:
        """The slot of (key, tag) if present, else ~slot where it belongs (negative)."""
        tags = self.tags
        slots = self.slots
        slot = (int.from_bytes(key[:HASH_BYTES], "big") * self.home_slots) >> 64
        offset = slot << _SLOT_SHIFT
        while True:
            here = tags[slot]
            if not here:
                return ~slot
            stored = slots[offset : offset + KEY_BYTES]
            if stored == key:
                if here == tag:
                    return slot
                if here > tag:
                    return ~slot
            elif stored > key:
                return ~slot
            slot += 1
            offset += SLOT_BYTES

    def insert(self, slot: int, key: bytes, tag: int, value: bytes) -> bool:
        """Put a new entry at `slot` (from `find`); False if no slot is free after it."""
        tags = self.tags
        slots = self.slots
        free = tags.find(0, slot)
        if free == len(tags) - 1:
            return False  # only the sentinel is left
        if free > slot:
            # Shift the run [slot, free) one slot right; the source slice is a copy.
            slots[(slot + 1) << _SLOT_SHIFT : (free + 1) << _SLOT_SHIFT] = slots[
                slot << _SLOT_SHIFT : free << _SLOT_SHIFT
            ]
            tags[slot + 1 : free + 1] = tags[slot:free]
        offset = slot << _SLOT_SHIFT
        slots[offset : offset + KEY_BYTES] = key
        slots[offset + KEY_BYTES : offset + SLOT_BYTES] = value
        tags[slot] = tag
        self.count += 1
        return True

    def replace(self, slot: int, value: bytes) -> tuple[int, int]:
        """Overwrite the value at `slot`; the flags and void time it had."""
        slots = self.slots
        offset = slot << _SLOT_SHIFT
        old_flags, old_void_time = _FLAGS_VOID.unpack_from(slots, offset + _FLAGS_OFFSET)
        slots[offset + KEY_BYTES : offset + SLOT_BYTES] = value
        return old_flags, old_void_time

    def delete(self, slot: int) -> tuple[int, int]:
        """Remove the entry at `slot` by backward shift; the flags and void time it had."""
        tags = self.tags
        slots = self.slots
        home_slots = self.home_slots
        offset = slot << _SLOT_SHIFT
        old_flags, old_void_time = _FLAGS_VOID.unpack_from(slots, offset + _FLAGS_OFFSET)
        end = slot + 1
        # Entries after the hole that are not at their home move one slot left.
        while tags[end]:
            start = end << _SLOT_SHIFT
            home = (int.from_bytes(slots[start : start + HASH_BYTES], "big") * home_slots) >> 64
            if home == end:
                break
            end += 1
        if end > slot + 1:
            slots[offset : (end - 1) << _SLOT_SHIFT] = slots[
                offset + SLOT_BYTES : end << _SLOT_SHIFT
            ]
            tags[slot : end - 1] = tags[slot + 1 : end]
        last = (end - 1) << _SLOT_SHIFT
        slots[last : last + SLOT_BYTES] = _ZERO_SLOT
        tags[end - 1] = 0
        self.count -= 1
        return old_flags, old_void_time

    def rebuild(self, home_slots: int) -> None:
        """Re-place every entry for `home_slots` home slots (grow, shrink or make room)."""
        tags = self.tags
        images = [image for (image,) in compress(_SLOT_IMAGES.iter_unpack(self.slots), tags)]
        self.lay_out(home_slots, images, list(compress(tags, tags)))

    def lay_out(self, home_slots: int, images: list[bytes], tags: list[int]) -> None:
        """Fill the table with slot images sorted by (key, nibble), and their tags."""
        places = _places(images, home_slots)
        used_slots = places[-1] + 1 if places else 0
        # Spare room past the last entry, so a run at the end seldom forces a rebuild.
        physical = max(home_slots, used_slots) + 2 + home_slots // 32
        table_images = [_ZERO_SLOT] * physical
        table_tags = bytearray(physical + 1)
        for place, image, tag in zip(places, images, tags, strict=True):
            table_images[place] = image
            table_tags[place] = tag
        self.slots = bytearray().join(table_images)
        self.tags = table_tags
        self.count = len(images)
        self.home_slots = home_slots
        self.grow_at = int(home_slots * LOAD_GROW_AT)
        # The smallest table only shrinks to nothing, when its last entry goes.
        small = home_slots <= HOME_SLOTS_MIN
        self.shrink_below = 1 if small else int(home_slots * LOAD_SHRINK_BELOW)

    def occupied(self) -> Iterator[int]:
        """Every occupied slot, in slot order."""
        return compress(range(len(self.tags)), self.tags)

    def check(self) -> None:
        """Assert the layout and invariants 1-3 of the module docstring."""
        physical = len(self.tags) - 1
        assert len(self.slots) == physical << _SLOT_SHIFT
        assert self.tags[physical] == 0, "sentinel"
        assert physical >= self.home_slots
        assert self.count == sum(1 for _ in self.occupied())
        assert self.count == 0 or self.count <= self.grow_at
        previous = b""
        for slot in self.occupied():
            tag = self.tags[slot]
            assert tag & ~_TAG_NIBBLE == _TAG_OCCUPIED, tag
            offset = slot << _SLOT_SHIFT
            image = bytes(self.slots[offset : offset + SLOT_BYTES])
            assert image[_FLAGS_OFFSET] >> 4 == tag & _TAG_NIBBLE, "tag and slot agree"
            ordered = image[:KEY_BYTES] + bytes((tag,))
            assert ordered > previous, "entries in strictly increasing (key, nibble) order"
            previous = ordered
            home = (int.from_bytes(image[:HASH_BYTES], "big") * self.home_slots) >> 64
            assert home <= slot, "an entry sits at or after its home"
            assert all(self.tags[home:slot]), "no empty slot between home and entry"
        for slot in range(physical):
            if not self.tags[slot]:
                offset = slot << _SLOT_SHIFT
                assert self.slots[offset : offset + SLOT_BYTES] == _ZERO_SLOT


def _places(images: list[bytes], home_slots: int) -> list[int]:
    """Slots for images in key order: each at its home, or just after the one before.

    One plain loop: a running maximum by `itertools.accumulate(..., max)` looks cheaper but
    calls the builtin `max` per entry, and measured three times slower."""
    words = array(_WORD, b"".join(images))
    if sys.byteorder == "little":
        words.byteswap()  # the hash is the key's first 8 bytes read big-endian
    places: list[int] = []
    append = places.append
    free = 0  # the first slot after the entries placed so far
    for hash_value in words[:: SLOT_BYTES // HASH_BYTES]:
        home = (hash_value * home_slots) >> 64
        place = home if home > free else free
        append(place)
        free = place + 1
    return places


def _home_slots_for(count: int, load: float) -> int:
    return max(HOME_SLOTS_MIN, math.ceil(count / load))


def _partition_ids(partition_id: int | None) -> Iterable[int]:
    if partition_id is None:
        return range(limits.PARTITIONS)
    assert 0 <= partition_id < limits.PARTITIONS, partition_id
    return (partition_id,)


def _expires(flags: int, void_time: int) -> int:
    """1 if an entry with these flags and void time can expire (a live record with a TTL)."""
    return 1 if void_time and not flags & _TOMBSTONE else 0


def _digest_prefixes(partition_id: int) -> list[bytes]:
    """digest[0:2] of the partition's digests, by nibble (the 4 bits the partition leaves)."""
    low, high = partition_id & 0xFF, partition_id >> 8
    return [bytes((low, high | nibble << 4)) for nibble in range(16)]


class PrimaryIndex:
    """digest -> RecordMeta for one namespace, tombstones included (see module docstring)."""

    def __init__(self) -> None:
        self._set_ids: dict[str, int] = {"": 0}
        # Indexed by set id; ids never registered keep "" and are never stored.
        self._set_names: list[str] = [""] * (limits.SETS_PER_NAMESPACE_MAX + 1)
        self.clear()

    # -- sets ---------------------------------------------------------------------------------

    def register_set(self, set_name: str, set_id: int) -> None:
        """Record that `set_name` has id `set_id` (chosen and persisted by the caller).
        Registering the same pair again is a no-op; a conflicting pair is a ValueError."""
        if not set_name or len(set_name.encode("utf-8")) > limits.SET_NAME_BYTES_MAX:
            raise ValueError(f"bad set name {set_name!r}")
        if not 1 <= set_id <= limits.SETS_PER_NAMESPACE_MAX:
            raise ValueError(f"set id {set_id} outside 1..{limits.SETS_PER_NAMESPACE_MAX}")
        known = self._set_ids.get(set_name)
        if known == set_id:
            return
        if known is not None:
            raise ValueError(f"set {set_name!r} already has id {known}, not {set_id}")
        if self._set_names[set_id]:
            raise ValueError(f"set id {set_id} already names {self._set_names[set_id]!r}")
        self._set_ids[set_name] = set_id
        self._set_names[set_id] = set_name

    def set_id(self, set_name: str) -> int | None:
        """The id of `set_name`: 0 for "" (no set), None if not registered."""
        return self._set_ids.get(set_name)

    def set_names(self) -> dict[str, int]:
        """Every registered set and its id ("" is not a registered set)."""
        return {name: set_id for name, set_id in self._set_ids.items() if set_id}

    # -- one entry ----------------------------------------------------------------------------

    def get(self, digest: bytes) -> RecordMeta | None:
        assert len(digest) == limits.DIGEST_BYTES, digest
        table = self._tables[(digest[0] | digest[1] << 8) & _PARTITION_MASK]
        slot = table.find(digest[DIGEST_KEY_START:], _TAG_OCCUPIED | digest[1] >> 4)
        if slot < 0:
            return None
        return self._decode(table.slots, slot << _SLOT_SHIFT)

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, bytes) or len(digest) != limits.DIGEST_BYTES:
            return False
        table = self._tables[(digest[0] | digest[1] << 8) & _PARTITION_MASK]
        return table.find(digest[DIGEST_KEY_START:], _TAG_OCCUPIED | digest[1] >> 4) >= 0

    def put(self, digest: bytes, meta: MetaFields) -> None:
        """Insert or replace the entry of `digest`."""
        flags = self._flags(digest, meta)
        last_update_ms = meta.last_update_ms
        value = _VALUE.pack(
            flags,
            meta.generation,
            meta.void_time,
            last_update_ms >> 32,
            last_update_ms & _LOW_32,
        )
        partition_id = (digest[0] | digest[1] << 8) & _PARTITION_MASK
        table = self._tables[partition_id]
        key = digest[DIGEST_KEY_START:]
        tag = _TAG_OCCUPIED | digest[1] >> 4
        slot = table.find(key, tag)
        expiring = _expires(flags, meta.void_time)
        if slot >= 0:
            old_flags, old_void_time = table.replace(slot, value)
            if old_flags != flags:
                self._count(old_flags, -1)
                self._count(flags, 1)
            expiring -= _expires(old_flags, old_void_time)
        else:
            self._insert(table, ~slot, key, tag, value)
            self._entries += 1
            self._count(flags, 1)
        if expiring:
            self._expiring[partition_id] += expiring

    def remove(self, digest: bytes) -> bool:
        """Remove the entry of `digest`; True if it was there."""
        assert len(digest) == limits.DIGEST_BYTES, digest
        partition_id = (digest[0] | digest[1] << 8) & _PARTITION_MASK
        table = self._tables[partition_id]
        slot = table.find(digest[DIGEST_KEY_START:], _TAG_OCCUPIED | digest[1] >> 4)
        if slot < 0:
            return False
        old_flags, old_void_time = table.delete(slot)
        self._count(old_flags, -1)
        self._expiring[partition_id] -= _expires(old_flags, old_void_time)
        self._entries -= 1
        if table.count < table.shrink_below:
            home_slots = _home_slots_for(table.count, LOAD_AFTER_RESIZE) if table.count else 0
            self._resize(table, home_slots)
        return True

    def __len__(self) -> int:
        """Entries, tombstones included."""
        return self._entries

    # -- many entries -------------------------------------------------------------------------

    def load(self, items: Iterable[tuple[bytes, RecordMeta]]) -> None:
        """Build the empty index from `items` (distinct digests), sizing each table once."""
        assert self._entries == 0, "load builds an empty index"
        buckets: list[list[bytes]] = [[] for _ in range(limits.PARTITIONS)]
        for digest, meta in items:
            flags = self._flags(digest, meta)
            last_update_ms = meta.last_update_ms
            partition_id = (digest[0] | digest[1] << 8) & _PARTITION_MASK
            self._expiring[partition_id] += _expires(flags, meta.void_time)
            buckets[partition_id].append(
                _SLOT.pack(
                    digest[DIGEST_KEY_START:],
                    flags,
                    meta.generation,
                    meta.void_time,
                    last_update_ms >> 32,
                    last_update_ms & _LOW_32,
                )
            )
            self._count(flags, 1)
        for table, images in zip(self._tables, buckets, strict=True):
            if images:
                self._fill(table, images)

    def clear(self) -> None:
        """Drop every entry; registered sets stay (their ids are persisted, never reused)."""
        self._tables = [_Table() for _ in range(limits.PARTITIONS)]
        self._entries = 0
        self._tombstones = 0
        self._set_records = [0] * (limits.SETS_PER_NAMESPACE_MAX + 1)
        self._set_tombstones = [0] * (limits.SETS_PER_NAMESPACE_MAX + 1)
        self._table_bytes = 0
        # Per partition: live entries with a void time, so the expiry sweep skips the rest.
        self._expiring = [0] * limits.PARTITIONS

    def items(self, partition_id: int | None = None) -> Iterator[tuple[bytes, RecordMeta]]:
        """Entries of one partition or all, in no particular order. Each partition is copied
        out whole when the iteration reaches it, so changes meanwhile are safe."""
        names = self._set_names
        for pid in _partition_ids(partition_id):
            table = self._tables[pid]
            if not table.count:
                continue
            prefixes = _digest_prefixes(pid)
            rows = list(compress(_SLOT.iter_unpack(table.slots), table.tags))
            for key, flags, generation, void_time, lut_high, lut_low in rows:
                meta = RecordMeta(
                    generation,
                    void_time,
                    lut_high << 32 | lut_low,
                    names[flags & _SET_ID_MASK],
                    bool(flags & _TOMBSTONE),
                    bool(flags & _KEY_STORED),
                )
                yield prefixes[flags >> _NIBBLE_SHIFT] + key, meta

    def digests(self, partition_id: int | None = None) -> Iterator[bytes]:
        """Digests of one partition or all, in no particular order (copied out as `items`)."""
        for pid in _partition_ids(partition_id):
            table = self._tables[pid]
            if table.count:
                prefixes = _digest_prefixes(pid)
                keys = compress(_SLOT_KEY.iter_unpack(table.slots), table.tags)
                yield from [prefixes[flags >> _NIBBLE_SHIFT] + key for key, flags in keys]

    def partition_count(self, partition_id: int) -> int:
        """Entries (tombstones included) of one partition."""
        assert 0 <= partition_id < limits.PARTITIONS, partition_id
        return self._tables[partition_id].count

    def expiring_count(self, partition_id: int) -> int:
        """Live entries (not tombstones) of one partition that have a void time."""
        assert 0 <= partition_id < limits.PARTITIONS, partition_id
        return self._expiring[partition_id]

    def stats(self) -> IndexStats:
        """Counters kept by every change: no scan. Every registered set is listed, and ""
        (records in no set) when it has any."""
        names = self._set_names
        sets = {
            names[set_id]: (self._set_records[set_id], self._set_tombstones[set_id])
            for set_id in sorted(self._set_ids.values())
            if set_id or self._set_records[0] or self._set_tombstones[0]
        }
        return IndexStats(
            records=self._entries - self._tombstones,
            tombstones=self._tombstones,
            sets=sets,
            memory_bytes=self._table_bytes,
        )

    def check(self) -> None:
        """Assert every table's invariants and every counter, by a full scan (for tests)."""
        records = [0] * len(self._set_records)
        tombstones = [0] * len(self._set_tombstones)
        expiring = [0] * limits.PARTITIONS
        table_bytes = 0
        for partition_id, table in enumerate(self._tables):
            if table.slots is _NO_SLOTS:
                assert table.count == 0 and table.home_slots == 0 and not any(table.tags)
                continue
            table.check()
            table_bytes += table.nbytes()
            for slot in table.occupied():
                offset = (slot << _SLOT_SHIFT) + _FLAGS_OFFSET
                flags, void_time = _FLAGS_VOID.unpack_from(table.slots, offset)
                set_id = flags & _SET_ID_MASK
                assert set_id == 0 or self._set_names[set_id], set_id
                (tombstones if flags & _TOMBSTONE else records)[set_id] += 1
                expiring[partition_id] += _expires(flags, void_time)
        assert expiring == self._expiring
        assert records == self._set_records
        assert tombstones == self._set_tombstones
        assert sum(tombstones) == self._tombstones
        assert sum(records) + sum(tombstones) == self._entries
        assert sum(table.count for table in self._tables) == self._entries
        assert table_bytes == self._table_bytes

    # -- internals ----------------------------------------------------------------------------

    def _flags(self, digest: bytes, meta: MetaFields) -> int:
        """Check an entry about to be stored; its flags field (nibble, bits, set id)."""
        assert len(digest) == limits.DIGEST_BYTES, digest
        set_id = self._set_ids.get(meta.set_name)
        assert set_id is not None, f"set {meta.set_name!r} is not registered"
        assert 0 <= meta.generation <= limits.GENERATION_MAX, meta.generation
        assert 0 <= meta.void_time <= VOID_TIME_MAX, meta.void_time
        assert 0 <= meta.last_update_ms <= LAST_UPDATE_MS_MAX, meta.last_update_ms
        flags = set_id | (digest[1] >> 4) << _NIBBLE_SHIFT
        if meta.tombstone:
            flags |= _TOMBSTONE
        if meta.key_stored:
            flags |= _KEY_STORED
        return flags

    def _count(self, flags: int, delta: int) -> None:
        if flags & _TOMBSTONE:
            self._tombstones += delta
            self._set_tombstones[flags & _SET_ID_MASK] += delta
        else:
            self._set_records[flags & _SET_ID_MASK] += delta

    def _decode(self, slots: bytes | bytearray, offset: int) -> RecordMeta:
        flags, generation, void_time, lut_high, lut_low = _VALUE.unpack_from(
            slots, offset + KEY_BYTES
        )
        return RecordMeta(
            generation,
            void_time,
            lut_high << 32 | lut_low,
            self._set_names[flags & _SET_ID_MASK],
            bool(flags & _TOMBSTONE),
            bool(flags & _KEY_STORED),
        )

    def _insert(self, table: _Table, slot: int, key: bytes, tag: int, value: bytes) -> None:
        if table.count >= table.grow_at:
            self._resize(table, _home_slots_for(table.count + 1, LOAD_AFTER_RESIZE))
            slot = ~table.find(key, tag)
        if not table.insert(slot, key, tag, value):
            # The run reached the end of the table: rebuild with more room past it.
            self._resize(table, table.home_slots)
            inserted = table.insert(~table.find(key, tag), key, tag, value)
            assert inserted

    def _resize(self, table: _Table, home_slots: int) -> None:
        """Rebuild `table` for `home_slots` home slots; 0 makes it the shared empty table."""
        before = table.nbytes()
        if home_slots == 0:
            table.make_empty()
        else:
            table.rebuild(home_slots)
        self._table_bytes += table.nbytes() - before

    def _fill(self, table: _Table, images: list[bytes]) -> None:
        images.sort()
        tags = [_TAG_OCCUPIED | image[_FLAGS_OFFSET] >> 4 for image in images]
        for (before, before_tag), (after, after_tag) in pairwise(zip(images, tags, strict=True)):
            distinct = before_tag != after_tag or before[:KEY_BYTES] != after[:KEY_BYTES]
            assert distinct, "load: duplicate digest"
        table.lay_out(_home_slots_for(len(images), LOAD_BULK), images, tags)
        self._entries += len(images)
        self._table_bytes += table.nbytes()
