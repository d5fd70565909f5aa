"""Test the tester: hand-made histories of each anomaly class that every checker must reject,
each beside a valid twin it must accept; and properties of random histories.

Histories are written as event lists, `(process, type, f, value)` or with a key as a fifth
element, in real-time order.
"""

from __future__ import annotations

import io
import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like import consistency
from jepsen_like.bank import BankOptions, check_bank
from jepsen_like.check import CheckOptions, check, independent
from jepsen_like.edn import _fast_loads_all, _plain, dumps_edn, loads_all, loads_edn
from jepsen_like.elle import Options, check_list_append
from jepsen_like.formats import detect_format, loads_history
from jepsen_like.graph import RW, WR, WW, classify
from jepsen_like.history import History, Op, dumps_jsonl, freeze, loads_json, write_jsonl
from jepsen_like.linearizable import Budget, check_linearizable
from jepsen_like.long_fork import check_long_fork
from jepsen_like.models import ILLEGAL, Call, Register
from jepsen_like.rw_register import check_rw_register
from jepsen_like.sets import SetOptions, check_set
from jepsen_like.stats import check_stats, stats
from jepsen_like.synthetic import list_append_history, register_history

REGISTER = Register(initial_value=None, nil_read="absent", cas=False)
CAS_REGISTER = Register(initial_value=None, nil_read="absent", cas=True)
SERIALIZABLE = Options(("serializable",))


def history(*events: tuple[Any, ...]) -> History:
    ops = []
    for position, event in enumerate(events):
        process, kind, f, value, *rest = event
        key = rest[0] if rest else None
        ops.append(Op(position, position * 1000, process, kind, f, freeze(value), key))
    return History(tuple(ops))


def txn(process: int, kind: str, *micro_ops: tuple[str, Any, Any]) -> tuple[Any, ...]:
    return (process, kind, "txn", micro_ops)


def ok_txn(process: int, *micro_ops: tuple[str, Any, Any]) -> list[tuple[Any, ...]]:
    """An invoke (reads unknown) and its ok completion, back to back."""
    invoked = tuple((f, k, None if f == "r" else v) for f, k, v in micro_ops)
    return [txn(process, "invoke", *invoked), txn(process, "ok", *micro_ops)]


# Linearizability: registers.


def test_lost_write_is_rejected_and_its_twin_accepted() -> None:
    lost = history(
        (0, "invoke", "write", 1),
        (0, "ok", "write", 1),
        (1, "invoke", "read", None),
        (1, "ok", "read", None),  # the acknowledged write vanished
    )
    twin = history(
        (0, "invoke", "write", 1),
        (1, "invoke", "read", None),
        (1, "ok", "read", None),  # concurrent with the write: may precede it
        (0, "ok", "write", 1),
    )
    result = check_linearizable(lost, REGISTER)
    assert result.valid is False
    assert result.details["op"]["index"] == 3
    assert check_linearizable(twin, REGISTER).valid is True


def test_stale_read_is_rejected_and_its_twin_accepted() -> None:
    stale = history(
        (0, "invoke", "write", 1),
        (0, "ok", "write", 1),
        (0, "invoke", "write", 2),
        (0, "ok", "write", 2),
        (1, "invoke", "read", None),
        (1, "ok", "read", 1),
    )
    twin = history(
        (0, "invoke", "write", 1),
        (0, "ok", "write", 1),
        (0, "invoke", "write", 2),
        (1, "invoke", "read", None),
        (1, "ok", "read", 1),
        (0, "ok", "write", 2),
    )
    result = check_linearizable(stale, REGISTER)
    assert result.valid is False
    assert "cannot be linearized" in result.explanation[0]
    assert [step["state"] for step in result.details["prefix_tail"]] == ["1", "2"]
    assert check_linearizable(twin, REGISTER).valid is True


def test_info_write_may_take_effect_late_or_never() -> None:
    late = history(
        (0, "invoke", "write", 1),
        (0, "info", "write", 1),
        (1, "invoke", "read", None),
        (1, "ok", "read", None),
        (1, "invoke", "read", None),
        (1, "ok", "read", 1),
    )
    assert check_linearizable(late, REGISTER).valid is True
    never = history(
        (0, "invoke", "write", 1),
        (0, "info", "write", 1),
        (1, "invoke", "read", None),
        (1, "ok", "read", None),
    )
    assert check_linearizable(never, REGISTER).valid is True
    # But not before it was invoked.
    early = history(
        (1, "invoke", "read", None),
        (1, "ok", "read", 1),
        (0, "invoke", "write", 1),
        (0, "info", "write", 1),
    )
    assert check_linearizable(early, REGISTER).valid is False


def test_failed_operations_have_no_effect_and_info_cas_is_never_forced() -> None:
    failed = history(
        (0, "invoke", "write", 1),
        (0, "fail", "write", 1),
        (1, "invoke", "read", None),
        (1, "ok", "read", 1),
    )
    assert check_linearizable(failed, CAS_REGISTER).valid is False
    info_cas = history(
        (0, "invoke", "write", 1),
        (0, "ok", "write", 1),
        (1, "invoke", "cas", (0, 2)),  # cannot succeed; an info cas may simply not happen
        (1, "info", "cas", (0, 2)),
        (2, "invoke", "read", None),
        (2, "ok", "read", 1),
    )
    assert check_linearizable(info_cas, CAS_REGISTER).valid is True
    wrong_cas = history(
        (0, "invoke", "write", 1),
        (0, "ok", "write", 1),
        (1, "invoke", "cas", (0, 2)),
        (1, "ok", "cas", (0, 2)),
    )
    assert check_linearizable(wrong_cas, CAS_REGISTER).valid is False


def test_unmatched_invoke_counts_as_info() -> None:
    open_write = history(
        (0, "invoke", "write", 3),
        (1, "invoke", "read", None),
        (1, "ok", "read", 3),
    )
    assert open_write.operations[0].type == "info"
    assert check_linearizable(open_write, REGISTER).valid is True


def test_keys_are_checked_apart_and_the_first_invalid_key_stops_the_check() -> None:
    events: list[tuple[Any, ...]] = []
    # A hard key: many crashed writes, all concurrent with everything after them.
    for process in range(14):
        events.append((process, "invoke", "write", process, "hard"))
        events.append((process, "info", "write", process, "hard"))
    for number in range(40):
        events.append((100, "invoke", "read", None, "hard"))
        events.append((100, "ok", "read", number % 14, "hard"))
    events += [
        (200, "invoke", "write", 1, "easy"),
        (200, "ok", "write", 1, "easy"),
        (201, "invoke", "read", None, "easy"),
        (201, "ok", "read", 2, "easy"),
    ]
    result = check_linearizable(history(*events), REGISTER)
    assert result.valid is False
    assert result.details["key"] == "easy"


def test_budget_exhausted_is_unknown_never_valid() -> None:
    concurrent = register_history(400, processes=12, crash_rate=0.05, seed=3)
    result = check_linearizable(concurrent, CAS_REGISTER, Budget(steps_max=10))
    assert result.valid == "unknown"
    several_keys = register_history(400, processes=12, keys=5, crash_rate=0.05, seed=3)
    ticks = itertools.count()
    timed = check_linearizable(
        several_keys, CAS_REGISTER, Budget(seconds_max=0.5), clock=lambda: float(next(ticks))
    )
    assert timed.valid == "unknown"
    assert timed.details["cause"] == "timeout"


def test_independent_values_become_keys() -> None:
    tuples = history(
        (0, "invoke", "write", ("a", 1)),
        (0, "ok", "write", ("a", 1)),
        (1, "invoke", "write", ("b", 2)),
        (1, "ok", "write", ("b", 2)),
        (2, "invoke", "read", ("a", None)),
        (2, "ok", "read", ("a", 1)),
    )
    result = check(tuples, "register", CheckOptions(independent=True))
    assert result.valid is True
    assert result.details["partitions"] == 2
    assert independent(tuples).ops[0].key == "a"


def _brute_force(history_: History, model: Register) -> bool:
    """Every subset of info ops and every order: the definition, for tiny histories."""
    operations = [op for op in history_.operations if op.type != "fail"]
    definite = [op for op in operations if op.type == "ok"]
    possible = [op for op in operations if op.type == "info"]
    for size in range(len(possible) + 1):
        for chosen in itertools.combinations(possible, size):
            for order in itertools.permutations(definite + list(chosen)):
                # realtime: an ok op that returned before another was invoked precedes it
                if any(
                    later.type == "ok" and later.ret is not None and later.ret < earlier.call
                    for i, earlier in enumerate(order)
                    for later in order[i + 1 :]
                ):
                    continue
                state: Any = model.initial()
                for op in order:
                    result = op.completion.value if op.type == "ok" and op.completion else None
                    state = model.step(state, Call(op.f, op.invoke.value, result, op.type == "ok"))
                    if state is ILLEGAL:
                        break
                else:
                    return True
    return False


def test_search_agrees_with_brute_force_on_small_random_histories() -> None:
    rng = random.Random(7)
    verdicts = {True: 0, False: 0}
    for seed in range(300):
        base = register_history(
            rng.randint(2, 8),
            processes=rng.randint(2, 4),
            values=rng.randint(2, 3),
            crash_rate=rng.choice([0.1, 0.3, 0.5]),
            seed=seed,
        )
        ops = list(base.ops)
        reads = [i for i, op in enumerate(ops) if op.type == "ok" and op.f == "read"]
        if reads and rng.random() < 0.6:
            i = rng.choice(reads)
            ops[i] = Op(
                ops[i].index, ops[i].time_ns, ops[i].process, "ok", "read", rng.randrange(3)
            )
        mutated = History(tuple(ops))
        expected = _brute_force(mutated, CAS_REGISTER)
        verdicts[expected] += 1
        assert check_linearizable(mutated, CAS_REGISTER).valid is expected, mutated.ops
    assert verdicts[True] > 50
    assert verdicts[False] > 50


@st.composite
def sequential_histories(draw: st.DrawFn) -> History:
    """Non-overlapping operations, each result computed from the model: linearizable."""
    state: Any = None
    events: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(0, 40))):
        process = draw(st.integers(0, 4))
        key = draw(st.sampled_from([None, "k1", "k2"]))
        f = draw(st.sampled_from(["read", "write", "cas"]))
        current = state.get(key) if isinstance(state, dict) else None
        if f == "read":
            events += [(process, "invoke", f, None, key), (process, "ok", f, current, key)]
        elif f == "write":
            value = draw(st.integers(0, 3))
            events += [(process, "invoke", f, value, key), (process, "ok", f, value, key)]
            state = {**(state or {}), key: value}
        else:
            expected, new = draw(st.integers(0, 3)), draw(st.integers(0, 3))
            events.append((process, "invoke", f, (expected, new), key))
            if current == expected:
                events.append((process, "ok", f, (expected, new), key))
                state = {**(state or {}), key: new}
            else:
                events.append((process, "fail", f, (expected, new), key))
    return history(*events)


@given(sequential_histories())
@settings(max_examples=150, deadline=None)
def test_sequential_histories_are_linearizable(sequential: History) -> None:
    assert check_linearizable(sequential, CAS_REGISTER).valid is True


@given(st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_simulated_concurrent_histories_are_linearizable(seed: int) -> None:
    simulated = register_history(120, processes=6, keys=3, crash_rate=0.05, seed=seed)
    assert check_linearizable(simulated, CAS_REGISTER).valid is True


# Elle list-append.


def test_g0_write_cycle_is_rejected_and_its_twin_accepted() -> None:
    cycle = history(
        *ok_txn(0, ("append", "x", 1), ("append", "y", 1)),
        *ok_txn(1, ("append", "x", 2), ("append", "y", 2)),
        *ok_txn(2, ("r", "x", (1, 2)), ("r", "y", (2, 1))),
    )
    result = check_list_append(cycle, SERIALIZABLE)
    assert result.valid is False
    assert "G0" in result.details["anomaly_types"]
    explanation = "\n".join(result.explanation)
    assert "appended 2 after" in explanation and "a contradiction!" in explanation
    twin = history(
        *ok_txn(0, ("append", "x", 1), ("append", "y", 1)),
        *ok_txn(1, ("append", "x", 2), ("append", "y", 2)),
        *ok_txn(2, ("r", "x", (1, 2)), ("r", "y", (1, 2))),
    )
    assert check_list_append(twin, SERIALIZABLE).valid is True


def test_g1a_aborted_read_is_rejected_and_its_twin_accepted() -> None:
    aborted = history(
        txn(0, "invoke", ("append", "x", 1)),
        txn(0, "fail", ("append", "x", 1)),
        *ok_txn(1, ("r", "x", (1,))),
    )
    result = check_list_append(aborted, SERIALIZABLE)
    assert result.valid is False
    assert result.details["anomaly_types"] == ["G1a"]
    twin = history(
        txn(0, "invoke", ("append", "x", 1)),
        txn(0, "fail", ("append", "x", 1)),
        *ok_txn(1, ("r", "x", ())),
    )
    assert check_list_append(twin, SERIALIZABLE).valid is True


def test_g1b_intermediate_read_is_rejected_and_its_twin_accepted() -> None:
    intermediate = history(
        *ok_txn(0, ("append", "x", 1), ("append", "x", 2)),
        *ok_txn(1, ("r", "x", (1,))),
    )
    result = check_list_append(intermediate, SERIALIZABLE)
    assert result.valid is False
    assert "G1b" in result.details["anomaly_types"]
    twin = history(
        *ok_txn(0, ("append", "x", 1), ("append", "x", 2)),
        *ok_txn(1, ("r", "x", (1, 2))),
    )
    assert check_list_append(twin, SERIALIZABLE).valid is True


def test_g1c_circular_information_flow_is_rejected_and_its_twin_accepted() -> None:
    circular = history(
        txn(0, "invoke", ("append", "x", 1), ("r", "y", None)),
        txn(1, "invoke", ("append", "y", 1), ("r", "x", None)),
        txn(0, "ok", ("append", "x", 1), ("r", "y", (1,))),
        txn(1, "ok", ("append", "y", 1), ("r", "x", (1,))),
    )
    result = check_list_append(circular, SERIALIZABLE)
    assert result.valid is False
    assert "G1c" in result.details["anomaly_types"]
    twin = history(
        txn(0, "invoke", ("append", "x", 1), ("r", "y", None)),
        txn(1, "invoke", ("append", "y", 1), ("r", "x", None)),
        txn(0, "ok", ("append", "x", 1), ("r", "y", (1,))),
        txn(1, "ok", ("append", "y", 1), ("r", "x", ())),
    )
    assert check_list_append(twin, SERIALIZABLE).valid is True


def test_g_single_read_skew_is_rejected_and_its_twin_accepted() -> None:
    skew = history(
        txn(0, "invoke", ("append", "x", 1), ("append", "y", 1)),
        txn(1, "invoke", ("r", "x", None), ("r", "y", None)),
        txn(0, "ok", ("append", "x", 1), ("append", "y", 1)),
        txn(1, "ok", ("r", "x", (1,)), ("r", "y", ())),
    )
    result = check_list_append(skew, SERIALIZABLE)
    assert result.valid is False
    assert result.details["anomaly_types"] == ["G-single"]
    assert "snapshot-isolation" in result.details["not"]
    twin = history(
        txn(0, "invoke", ("append", "x", 1), ("append", "y", 1)),
        txn(1, "invoke", ("r", "x", None), ("r", "y", None)),
        txn(0, "ok", ("append", "x", 1), ("append", "y", 1)),
        txn(1, "ok", ("r", "x", (1,)), ("r", "y", (1,))),
    )
    assert check_list_append(twin, SERIALIZABLE).valid is True


def test_g2_item_write_skew_is_rejected_and_its_twin_accepted() -> None:
    write_skew = history(
        txn(0, "invoke", ("r", "x", None), ("append", "y", 1)),
        txn(1, "invoke", ("r", "y", None), ("append", "x", 1)),
        txn(0, "ok", ("r", "x", ()), ("append", "y", 1)),
        txn(1, "ok", ("r", "y", ()), ("append", "x", 1)),
    )
    result = check_list_append(write_skew, SERIALIZABLE)
    assert result.valid is False
    assert result.details["anomaly_types"] == ["G2-item"]
    assert result.details["not"] == ["repeatable-read"]
    # Snapshot isolation allows write skew.
    assert check_list_append(write_skew, Options(("snapshot-isolation",))).valid is True
    twin = history(
        txn(0, "invoke", ("r", "x", None), ("append", "y", 1)),
        txn(1, "invoke", ("r", "y", None), ("append", "x", 1)),
        txn(0, "ok", ("r", "x", ()), ("append", "y", 1)),
        txn(1, "ok", ("r", "y", (1,)), ("append", "x", 1)),
    )
    assert check_list_append(twin, SERIALIZABLE).valid is True


def test_internal_inconsistency_is_rejected_and_its_twin_accepted() -> None:
    internal = history(
        *ok_txn(0, ("append", "x", 1)),
        *ok_txn(1, ("r", "x", (1,)), ("append", "x", 2), ("r", "x", (1,))),
    )
    result = check_list_append(internal, SERIALIZABLE)
    assert result.valid is False
    assert "internal" in result.details["anomaly_types"]
    twin = history(
        *ok_txn(0, ("append", "x", 1)),
        *ok_txn(1, ("r", "x", (1,)), ("append", "x", 2), ("r", "x", (1, 2))),
    )
    assert check_list_append(twin, SERIALIZABLE).valid is True


def test_stale_transactional_read_is_serializable_but_not_strict() -> None:
    stale = history(
        *ok_txn(0, ("append", "x", 1)),
        *ok_txn(1, ("r", "x", ())),  # began after the append was acknowledged
    )
    strict = check_list_append(stale)
    assert strict.valid is False
    assert strict.details["anomaly_types"] == ["G-single-realtime"]
    assert strict.details["not"] == ["strong-snapshot-isolation"]
    assert check_list_append(stale, SERIALIZABLE).valid is True
    twin = history(
        txn(0, "invoke", ("append", "x", 1)),
        txn(1, "invoke", ("r", "x", None)),
        txn(0, "ok", ("append", "x", 1)),
        txn(1, "ok", ("r", "x", ())),
    )
    assert check_list_append(twin).valid is True


def test_duplicates_incompatible_orders_and_lost_updates() -> None:
    duplicated = history(*ok_txn(0, ("append", "x", 1)), *ok_txn(1, ("r", "x", (1, 1))))
    assert "duplicate-elements" in check_list_append(duplicated).details["anomaly_types"]
    incompatible = history(
        *ok_txn(0, ("append", "x", 1)),
        *ok_txn(1, ("append", "x", 2)),
        *ok_txn(2, ("r", "x", (1, 2))),
        *ok_txn(3, ("r", "x", (2, 1))),
    )
    result = check_list_append(incompatible, SERIALIZABLE)
    assert "incompatible-order" in result.details["anomaly_types"]
    assert result.valid is False
    lost = history(
        txn(0, "invoke", ("r", "x", None), ("append", "x", 1)),
        txn(1, "invoke", ("r", "x", None), ("append", "x", 2)),
        txn(0, "ok", ("r", "x", ()), ("append", "x", 1)),
        txn(1, "ok", ("r", "x", ()), ("append", "x", 2)),
    )
    assert "lost-update" in check_list_append(lost, SERIALIZABLE).details["anomaly_types"]


def test_duplicate_appends_make_the_verdict_unknown() -> None:
    twice = history(*ok_txn(0, ("append", "x", 1)), *ok_txn(1, ("append", "x", 1)))
    assert check_list_append(twice).valid == "unknown"


@given(st.integers(0, 10_000))
@settings(max_examples=20, deadline=None)
def test_simulated_transactions_are_strict_serializable(seed: int) -> None:
    simulated = list_append_history(150, processes=5, keys=4, crash_rate=0.05, seed=seed)
    result = check_list_append(simulated)
    assert result.valid is True, result.explanation


def test_simulated_aborts_are_never_read() -> None:
    simulated = list_append_history(300, processes=5, keys=3, abort_rate=0.2, seed=11)
    assert check_list_append(simulated).valid is True


def _serial_order_exists(history_: History, strict: bool) -> bool:
    """Some order of the committed transactions (and any info ones) explains every read."""
    operations = [op for op in history_.operations if op.type in ("ok", "info")]
    definite = [op for op in operations if op.type == "ok"]
    possible = [op for op in operations if op.type == "info"]
    for size in range(len(possible) + 1):
        for chosen in itertools.combinations(possible, size):
            for order in itertools.permutations(definite + list(chosen)):
                if strict and any(
                    later.type == "ok" and later.ret is not None and later.ret < earlier.call
                    for i, earlier in enumerate(order)
                    for later in order[i + 1 :]
                ):
                    continue
                lists: dict[str, list[int]] = {}
                if all(_replays(op, lists) for op in order):
                    return True
    return False


def _replays(op: Any, lists: dict[str, list[int]]) -> bool:
    for f, key, value in op.value:
        if f == "append":
            lists.setdefault(key, []).append(value)
        elif op.type == "ok" and tuple(value or ()) != tuple(lists.get(key, ())):
            return False
    return True


def _random_transactions(rng: random.Random) -> History:
    count = rng.randint(2, 4)
    appended = {"x": 0, "y": 0}
    bodies: list[list[tuple[str, str, Any]]] = []
    for _ in range(count):
        body: list[tuple[str, str, Any]] = []
        for _ in range(rng.randint(1, 3)):
            key = rng.choice("xy")
            if rng.random() < 0.5:
                appended[key] += 1
                body.append(("append", key, appended[key]))
            else:
                body.append(("r", key, None))
        bodies.append(body)
    orders = {key: rng.sample(range(1, top + 1), top) for key, top in appended.items()}
    started: set[int] = set()
    finished: set[int] = set()
    events: list[tuple[Any, ...]] = []
    while len(finished) < count:
        choices = [("invoke", t) for t in range(count) if t not in started]
        choices += [("done", t) for t in started - finished]
        step, t = rng.choice(choices)
        if step == "invoke":
            started.add(t)
            events.append(txn(t, "invoke", *bodies[t]))
            continue
        finished.add(t)
        kind = rng.choice(["ok", "ok", "ok", "info", "fail"])
        if kind != "ok":
            events.append(txn(t, kind, *bodies[t]))
            continue
        filled = [
            (f, key, tuple(orders[key][: rng.randint(0, len(orders[key]))]) if f == "r" else v)
            for f, key, v in bodies[t]
        ]
        events.append(txn(t, "ok", *filled))
    return history(*events)


def test_every_reported_transaction_anomaly_is_real() -> None:
    """Soundness: when the checker says invalid, no (strict) serial order explains the
    history. (Elle is not complete: the converse need not hold.)"""
    rng = random.Random(3)
    rejected = 0
    for _ in range(400):
        random_history = _random_transactions(rng)
        for strict, models in ((False, ("serializable",)), (True, ("strict-serializable",))):
            result = check_list_append(random_history, Options(models))
            if result.valid is False:
                rejected += 1
                assert not _serial_order_exists(random_history, strict), result.explanation
    assert rejected > 100


# rw-register and long fork.


def test_rw_register_write_skew_and_its_twin() -> None:
    skew = history(
        txn(0, "invoke", ("r", "x", None), ("w", "y", 1)),
        txn(1, "invoke", ("r", "y", None), ("w", "x", 1)),
        txn(0, "ok", ("r", "x", None), ("w", "y", 1)),
        txn(1, "ok", ("r", "y", None), ("w", "x", 1)),
    )
    result = check_rw_register(skew, SERIALIZABLE)
    assert result.valid is False
    assert result.details["anomaly_types"] == ["G2-item"]
    twin = history(
        txn(0, "invoke", ("r", "x", None), ("w", "y", 1)),
        txn(0, "ok", ("r", "x", None), ("w", "y", 1)),
        txn(1, "invoke", ("r", "y", None), ("w", "x", 1)),
        txn(1, "ok", ("r", "y", 1), ("w", "x", 1)),
    )
    assert check_rw_register(twin, SERIALIZABLE).valid is True


def test_long_fork_and_its_twin() -> None:
    fork = history(
        (0, "invoke", "read", (("r", 0, None), ("r", 1, None))),
        (0, "ok", "read", (("r", 0, 1), ("r", 1, None))),
        (1, "invoke", "read", (("r", 0, None), ("r", 1, None))),
        (1, "ok", "read", (("r", 0, None), ("r", 1, 1))),
    )
    assert check_long_fork(fork).valid is False
    twin = history(
        (0, "invoke", "read", (("r", 0, None), ("r", 1, None))),
        (0, "ok", "read", (("r", 0, 1), ("r", 1, None))),
        (1, "invoke", "read", (("r", 0, None), ("r", 1, None))),
        (1, "ok", "read", (("r", 0, 1), ("r", 1, 1))),
    )
    assert check_long_fork(twin).valid is True


# Bank and set.


def bank_read(process: int, balances: dict[Any, Any]) -> list[tuple[Any, ...]]:
    return [(process, "invoke", "read", None), (process, "ok", "read", balances)]


def test_bank_wrong_total_negative_balance_and_unexpected_account() -> None:
    start = bank_read(0, {0: 50, 1: 50})
    transfer = [
        (1, "invoke", "transfer", {"from": 0, "to": 1, "amount": 5}),
        (1, "ok", "transfer", {"from": 0, "to": 1, "amount": 5}),
    ]
    good = check_bank(history(*start, *transfer, *bank_read(0, {0: 45, 1: 55})))
    assert good.valid is True
    wrong_total = check_bank(history(*start, *transfer, *bank_read(0, {0: 45, 1: 50})))
    assert wrong_total.valid is False
    assert set(wrong_total.details["errors"]) == {"wrong-total"}
    negative = check_bank(history(*start, *bank_read(0, {0: -5, 1: 105})))
    assert set(negative.details["errors"]) == {"negative-value"}
    assert negative.valid is False
    allowed = check_bank(
        history(*start, *bank_read(0, {0: -5, 1: 105})), BankOptions(negative_balances=True)
    )
    assert allowed.valid is True
    unexpected = check_bank(history(*start, *bank_read(0, {0: 50, 1: 40, 9: 10})))
    assert set(unexpected.details["errors"]) == {"unexpected-key"}
    assert check_bank(history((0, "invoke", "read", None))).valid == "unknown"


def set_history(adds: dict[int, str], *reads: tuple[int, ...]) -> History:
    events: list[tuple[Any, ...]] = []
    for element, outcome in adds.items():
        events += [(0, "invoke", "add", element), (0, outcome, "add", element)]
    for read in reads:
        events += [(1, "invoke", "read", None), (1, "ok", "read", read)]
    return history(*events)


def test_set_lost_element_is_rejected_and_its_twin_accepted() -> None:
    lost = check_set(set_history({1: "ok", 2: "ok", 3: "info"}, (1,)))
    assert lost.valid is False
    assert lost.details["lost"] == [2]
    twin = check_set(set_history({1: "ok", 2: "ok", 3: "info"}, (1, 2, 3)))
    assert twin.valid is True
    assert twin.details["recovered"] == [3]
    unexpected = check_set(set_history({1: "ok"}, (1, 7)))
    assert unexpected.details["unexpected"] == [7]
    assert unexpected.valid is False
    stale = set_history({1: "ok", 2: "ok"}, (1,), (1, 2))
    assert check_set(stale).valid is False
    assert check_set(stale).details["stale_count"] == 1
    assert check_set(stale, SetOptions(linearizable=False)).valid is True
    assert check_set(set_history({1: "ok"})).valid == "unknown"


# Formats, statistics and the model table.


def test_json_lines_round_trip() -> None:
    original = register_history(200, processes=4, keys=3, crash_rate=0.05, seed=5)
    text = dumps_jsonl(original)
    assert detect_format(text) == "jsonl"
    again = loads_json(text)
    assert again.ops == original.ops
    stream = io.StringIO()
    write_jsonl(original, stream)
    assert stream.getvalue() == text
    assert check_linearizable(loads_history(text), CAS_REGISTER).valid is True


def test_edn_reader_matches_edn_format_and_round_trips() -> None:
    text = """; a comment
    [{:process 0, :type :invoke, :f :txn, :value [[:append :x 1] [:r :x nil]]}
     {:process 0 :type :ok :f :txn :value [[:append :x 1] [:r :x [1]]] :error "a \\"quote\\""}
     {:process :nemesis :type :info :f :start :value #{1 2} :time 12N}]
    """
    fast = _fast_loads_all(text)
    import edn_format  # type: ignore[import-untyped]

    assert fast == [_plain(value) for value in edn_format.loads_all(text)]
    parsed = loads_edn(text)
    assert parsed.ops[1].value == (("append", "x", 1), ("r", "x", (1,)))
    assert parsed.ops[2].is_nemesis
    assert len(parsed.operations) == 1
    assert loads_edn(dumps_edn(parsed)).ops[1].value == parsed.ops[1].value
    # Tagged literals and characters are beyond the fast reader: edn_format reads them.
    assert loads_all('#inst "2020-01-01T00:00:00Z" \\c') != []


def test_jepsen_console_log() -> None:
    text = (
        "INFO  jepsen.util - 2\t:invoke\t:cas\t[3 0]\n"
        "noise line\n"
        "INFO  jepsen.util - 2  :ok  :cas  [3 0]\n"
        "INFO  jepsen.util - 4\t:invoke\t:write\t3\n"
        "INFO  jepsen.util - 4\t:info\t:write\t:timed-out\n"
        "INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n"
    )
    assert detect_format(text) == "jepsen-log"
    parsed = loads_history(text)
    assert [op.type for op in parsed.ops] == ["invoke", "ok", "invoke", "info", "info"]
    assert parsed.ops[0].value == (3, 0)
    assert parsed.operations[1].type == "info"
    assert parsed.operations[1].value == 3
    assert len(parsed.nemesis_ops) == 1


def test_stats() -> None:
    events = []
    for number in range(10):
        events += [(0, "invoke", "read", None), (0, "ok", "read", number)]
    figures = stats(history(*events))
    (series,) = figures.series
    assert series.count == 10
    assert series.latency_ms["p50"] == pytest.approx(0.001)
    assert check_stats(history(*events)).valid is True
    assert check_stats(history((0, "invoke", "write", 1), (0, "fail", "write", 1))).valid is False


def test_consistency_models_and_cycle_classes() -> None:
    assert "G2-item" in consistency.prohibited(["repeatable-read"])
    assert "G2-item" not in consistency.prohibited(["snapshot-isolation"])
    assert consistency.needs_graphs(["strict-serializable"]) == (False, True)
    assert consistency.needs_graphs(["serializable"]) == (False, False)
    assert consistency.boundary(["G-single"])[0] == ["snapshot-isolation"]
    assert consistency.boundary(["G2-item"]) == (
        ["repeatable-read"],
        ["serializable", "strict-serializable", "strong-session-serializable"],
    )
    assert classify([WW, WW]) == "G0"
    assert classify([WW, WR]) == "G1c"
    assert classify([WR, RW]) == "G-single"
    assert classify([RW, WR, RW, WW]) == "G-nonadjacent"
    assert classify([RW, RW, WR]) == "G2-item"
