"""Memory and speed of the RAM primary index (raftstore.index.PrimaryIndex).

Builds an index of N records (default 1,000,000) with seeded random digests, then reports:

- bytes per record, measured by tracemalloc (bytes allocated and still held after building,
  divided by N), for an index built by `put` one record at a time and for one built by
  `load`; the digests and metadata given to the index are allocated before tracing starts;
- microseconds per put (new digest, growth included), per put that replaces, per get that
  hits, per get that misses, per remove (shrinks included);
- seconds for `load` of N records, and for listing every entry with `items`.

Memory and time are measured in separate runs: tracemalloc slows every allocation.
The last line printed is one JSON object with every figure.

    python benchmarks/bench_index.py --records 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import time
import tracemalloc
from collections.abc import Callable, Iterable

from raftstore.index import PrimaryIndex
from raftstore.record import RecordMeta

SET_NAMES = ("users", "orders", "events")
META_VARIANTS = 1024  # distinct RecordMeta objects cycled over the records
NOW_MS = 1_760_000_000_000


def make_digests(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(20) for _ in range(count)]


def make_metas(count: int, seed: int) -> list[RecordMeta]:
    """Metadata for `count` records, cycling over a fixed pool (sets, tombstones, ttl)."""
    rng = random.Random(seed)
    pool = [
        RecordMeta(
            generation=rng.randint(1, 0xFFFF),
            void_time=rng.choice((0, rng.randint(1, 2**32 - 1))),
            last_update_ms=NOW_MS + rng.randint(0, 10**9),
            set_name=rng.choice(("", *SET_NAMES)),
            tombstone=rng.random() < 0.05,
            key_stored=rng.random() < 0.5,
        )
        for _ in range(META_VARIANTS)
    ]
    return [pool[n % META_VARIANTS] for n in range(count)]


def new_index() -> PrimaryIndex:
    index = PrimaryIndex()
    for set_id, set_name in enumerate(SET_NAMES, start=1):
        index.register_set(set_name, set_id)
    return index


def put_all(index: PrimaryIndex, digests: list[bytes], metas: list[RecordMeta]) -> None:
    put = index.put
    for digest, meta in zip(digests, metas, strict=True):
        put(digest, meta)


def traced_bytes(build: Callable[[], PrimaryIndex]) -> tuple[int, PrimaryIndex]:
    """Bytes allocated by `build` and still held when it returns, and what it built."""
    tracemalloc.start()
    baseline, _peak = tracemalloc.get_traced_memory()
    index = build()
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current - baseline, index


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def each(function: Callable[[bytes], object], digests: Iterable[bytes]) -> None:
    for digest in digests:
        function(digest)


def measure_memory(digests: list[bytes], metas: list[RecordMeta]) -> dict[str, float]:
    records = len(digests)

    def build_by_put() -> PrimaryIndex:
        index = new_index()
        put_all(index, digests, metas)
        return index

    def build_by_load() -> PrimaryIndex:
        index = new_index()
        index.load(zip(digests, metas, strict=True))
        return index

    put_bytes, by_put = traced_bytes(build_by_put)
    put_tables = by_put.stats().memory_bytes
    del by_put
    load_bytes, by_load = traced_bytes(build_by_load)
    load_tables = by_load.stats().memory_bytes
    del by_load
    return {
        "index_bytes_per_record": put_bytes / records,
        "index_bytes_per_record_load": load_bytes / records,
        "table_bytes_per_record": put_tables / records,
        "table_bytes_per_record_load": load_tables / records,
    }


def measure_speed(
    digests: list[bytes], metas: list[RecordMeta], absent: list[bytes]
) -> dict[str, float]:
    records = len(digests)
    index = new_index()
    put_s = seconds(lambda: put_all(index, digests, metas))
    replace_s = seconds(lambda: put_all(index, digests, metas[::-1]))
    get_s = seconds(lambda: each(index.get, digests))
    miss_s = seconds(lambda: each(index.get, absent))
    items_s = seconds(lambda: list(index.items()))
    remove_s = seconds(lambda: each(index.remove, digests))
    assert len(index) == 0
    loaded = new_index()
    load_s = seconds(lambda: loaded.load(zip(digests, metas, strict=True)))
    assert len(loaded) == records
    return {
        "put_us": put_s / records * 1e6,
        "put_replace_us": replace_s / records * 1e6,
        "get_us": get_s / records * 1e6,
        "get_miss_us": miss_s / len(absent) * 1e6,
        "remove_us": remove_s / records * 1e6,
        "load_s": load_s,
        "items_s": items_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    records = args.records
    digests = make_digests(records, args.seed)
    absent = make_digests(max(records // 10, 1), args.seed + 1)
    metas = make_metas(records, args.seed)

    figures: dict[str, float] = {"records": records}
    figures.update(measure_memory(digests, metas))
    figures.update(measure_speed(digests, metas, absent))

    rows = (
        ("records", "", figures["records"], "{:,.0f}"),
        ("RAM per record, built by put", "B", figures["index_bytes_per_record"], "{:.1f}"),
        ("RAM per record, built by load", "B", figures["index_bytes_per_record_load"], "{:.1f}"),
        ("  of which tables, by put", "B", figures["table_bytes_per_record"], "{:.1f}"),
        ("  of which tables, by load", "B", figures["table_bytes_per_record_load"], "{:.1f}"),
        ("put (new digest)", "us", figures["put_us"], "{:.2f}"),
        ("put (replace)", "us", figures["put_replace_us"], "{:.2f}"),
        ("get (hit)", "us", figures["get_us"], "{:.2f}"),
        ("get (miss)", "us", figures["get_miss_us"], "{:.2f}"),
        ("remove", "us", figures["remove_us"], "{:.2f}"),
        ("load of all records", "s", figures["load_s"], "{:.2f}"),
        ("items() of all records", "s", figures["items_s"], "{:.2f}"),
    )
    for name, unit, value, style in rows:
        print(f"{name:<32} {style.format(value):>12} {unit}")
    print(json.dumps({name: round(value, 3) for name, value in figures.items()}))


if __name__ == "__main__":
    main()
