"""A record: named bins plus the metadata the data model keeps for it.

Invariants (checked by `check_record` before a write and after a read):
- generation is in 1..GENERATION_MAX for every stored record, tombstones included; it only
  moves forward (wrapping from GENERATION_MAX to 1, never to 0);
- a tombstone has no bins; a live record has at least one bin;
- void_time 0 means "never expires"; last_update_ms never goes backwards for one digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from raftstore import limits
from raftstore.clock import is_expired
from raftstore.frozen import fast_init

UserKey = int | str | bytes
Bins = dict[str, Any]


class MetaFields(Protocol):
    """The metadata of one digest as the primary index reads it: a `RecordMeta`, or a
    `Record` itself (the state machine hands its records over without copying them out)."""

    @property
    def generation(self) -> int: ...

    @property
    def void_time(self) -> int: ...

    @property
    def last_update_ms(self) -> int: ...

    @property
    def set_name(self) -> str: ...

    @property
    def tombstone(self) -> bool: ...

    @property
    def key_stored(self) -> bool: ...


@fast_init
@dataclass(frozen=True, slots=True)
class RecordMeta:
    """What the primary index keeps per digest (no bins)."""

    generation: int
    void_time: int
    last_update_ms: int
    set_name: str
    tombstone: bool = False
    key_stored: bool = False

    def is_live(self, now_ms: int) -> bool:
        return not self.tombstone and not is_expired(self.void_time, now_ms)


@fast_init
@dataclass(frozen=True, slots=True)
class Record:
    """A stored record. `bins` is treated as read-only: operations build new dicts."""

    generation: int
    void_time: int
    last_update_ms: int
    set_name: str
    bins: Bins = field(default_factory=dict)
    tombstone: bool = False
    user_key: UserKey | None = None

    @property
    def meta(self) -> RecordMeta:
        return RecordMeta(
            generation=self.generation,
            void_time=self.void_time,
            last_update_ms=self.last_update_ms,
            set_name=self.set_name,
            tombstone=self.tombstone,
            key_stored=self.user_key is not None,
        )

    @property
    def key_stored(self) -> bool:
        return self.user_key is not None

    def is_live(self, now_ms: int) -> bool:
        """False for tombstones and for records past their void time."""
        return not self.tombstone and not is_expired(self.void_time, now_ms)


def next_generation(generation: int) -> int:
    """The generation after `generation` (0 = no record yet): wraps to 1, never 0."""
    return 1 if generation >= limits.GENERATION_MAX else generation + 1


def check_record(record: Record) -> None:
    """Assert the invariants of a record about to be written or just read."""
    assert 1 <= record.generation <= limits.GENERATION_MAX, record.generation
    assert record.void_time >= 0, record.void_time
    assert record.last_update_ms >= 0, record.last_update_ms
    if record.tombstone:
        assert not record.bins, "a tombstone has no bins"
    else:
        assert record.bins, "a live record has at least one bin"
