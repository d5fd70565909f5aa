"""Linearizability checking: Wing & Gong's search with Lowe's memoization, per key.

Theory of operation (the notes' §2.2, as Porcupine's `checkSingle` does it).

1. Partition. Operations are grouped by `key` (P-compositionality: a map of independent
   objects is linearizable iff each object is). `fail` operations are dropped: they did
   not happen. `info` operations that only read are dropped too: they change nothing and
   promise nothing.
2. Entries. Every `ok` operation gives a call entry and a return entry, ordered by history
   position, in a doubly linked list (arrays `following`/`preceding`, head sentinel 0).
   `info` operations have no return: they sit in a second linked list ordered by call.
3. Search, depth first, iterative. At a node (the ok operations linearized O, the info
   operations linearized I, the model state s), the candidates are the call entries
   before the first return entry R of the list (the operations whose real-time
   predecessors are all linearized), then the info operations called before R.
   Linearizing a candidate lifts it out of its list and pushes a frame; a dead end pops
   the last frame and tries the next candidate there. A cache remembers every node
   entered; a node met again has already failed (the sets only grow along a path).
4. Success when every ok operation is linearized: info operations may be left out, as
   operations that never took effect. Failure when a dead end has no frame to pop.

Refinements, each keeping the search complete (some linearization is found if one exists):
- Forced reads. A read legal at a node is linearized at once, with no alternative: if any
  linearization extends the node, one extends it with the read first, since the read
  changes nothing and all it must follow is linearized. Popping its frame fails its node.
- Info runs must matter. A run of info operations must be followed by an ok operation
  whose outcome they change (illegal without them, or leading elsewhere); any other run
  can be dropped from a linearization, since info operations may never happen.
- Alike info operations (same function and argument) are interchangeable once callable,
  so only the earliest called unused one of each class is tried.
- Subsumption. Nodes with equal O, s and run state are compared on I: having used fewer
  info operations leaves more choices, so a node whose I includes a failed node's I has
  failed too. The cache maps (hash of O, s, run) to the I sets met (Python int bitsets).
- O is kept as a 128-bit Zobrist hash (XOR of one random key per ok operation), so long
  histories neither copy nor store n-bit integers. Up to 128 ok operations the keys are
  single bits, which makes the hash the exact set; beyond, two sets share a hash with
  probability 2^-128 per pair, below 10^-22 for a run of 10^8 cache entries.
- Impossibility. A partition still undecided after a long search is tested for an ok
  operation legal in no state that any order of its operations reaches (a read of a
  value nobody wrote), which proves it not linearizable at once.

The failing operation reported is the `ok` operation whose return the search could never
pass: the earliest completion at which the history's prefix stops being linearizable, as
Knossos reports it. The longest linearizable prefix is the path of the first node that
reached that frontier, with the model state after each operation.

Partitions are searched round robin in slices of steps, and the check stops at the first
partition proven not linearizable. A budget of steps or seconds turns into "unknown".
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog

from jepsen_like.history import History, Operation, render_value, to_json_value
from jepsen_like.models import ILLEGAL, Call, Model, ModelError
from jepsen_like.result import UNKNOWN, Result

log = structlog.get_logger(__name__)

Verdict = Literal["valid", "invalid"]
SLICE_STEPS: Final = 4096
# A partition still undecided after this many steps (at least, and per operation) gets the
# impossibility test: a straight search spends a few steps per operation.
IMPOSSIBLE_TEST_AFTER_STEPS: Final = 1 << 17
IMPOSSIBLE_TEST_AFTER_STEPS_PER_OPERATION: Final = 16
IMPOSSIBLE_TEST_STATES_MAX: Final = 64
EXACT_KEYS_MAX: Final = 128
PREFIX_SHOWN_MAX: Final = 12  # steps of the longest prefix in the explanation
PREFIX_TAIL_MAX: Final = 100  # and in the details
_ZOBRIST_SEED: Final = 0x5EED_11AB


@dataclass(frozen=True)
class Budget:
    """How much search a check may spend before it answers "unknown"."""

    steps_max: int | None = None
    seconds_max: float | None = None


@dataclass(frozen=True)
class Progress:
    partitions: int
    decided: int
    steps: int
    elapsed_s: float


@dataclass
class PartitionOutcome:
    key: Hashable
    operations: int
    verdict: Verdict | None = None
    steps: int = 0
    cache_entries: int = 0
    failing: Operation | None = None
    prefix: list[tuple[Operation, Hashable]] = field(default_factory=list)
    impossible: bool = False  # the failing operation is legal in no reachable state
    linearization: list[Operation] = field(default_factory=list)


def _zobrist_keys(count: int) -> list[int]:
    if count <= EXACT_KEYS_MAX:
        return [1 << number for number in range(count)]
    generator = random.Random(_ZOBRIST_SEED)
    return [generator.getrandbits(128) for _ in range(count)]


def _call_of(operation: Operation) -> Call:
    definite = operation.type == "ok"
    return Call(
        operation.f,
        operation.invoke.value,
        operation.completion.value if definite and operation.completion else None,
        definite,
    )


class PartitionSearch:
    """The search over one partition's operations; `run(steps)` resumes it for a while."""

    def __init__(self, model: Model, key: Hashable, operations: Sequence[Operation]) -> None:
        self.model = model
        self.key = key
        definite = [op for op in operations if op.type == "ok"]
        possible = sorted(
            (op for op in operations if op.type == "info" and not model.read_only(_call_of(op))),
            key=lambda op: op.call,
        )
        self.operations: list[Operation] = definite + possible
        self.calls = [_call_of(op) for op in self.operations]
        self.read_only = [model.read_only(call) for call in self.calls]
        self.outcome = PartitionOutcome(key, len(self.operations))
        self._build_ok_list(len(definite))
        self._build_info_list(len(definite), len(possible))
        # Interned states: the search handles small ints, the model real states.
        self.states: list[Hashable] = [model.initial()]
        self.state_ids: dict[Hashable, int] = {self.states[0]: 0}
        self.transitions: list[dict[int, int]] = [{} for _ in self.operations]
        self.zobrist = _zobrist_keys(len(definite))
        # The search's registers, saved between slices.
        self.cache: dict[tuple[int, int, int], list[int]] = {}
        self.frames: list[tuple[int, int, int, int, int, int, int]] = []
        self.path: tuple[Any, ...] | None = None
        self.state = 0
        self.hash = 0  # of the ok operations linearized
        self.consumed = 0  # bit set of the info operations linearized
        self.remaining = len(definite)
        self.run_start = -1  # the state before the current run of info operations, or -1
        self.entry = self.following[0]
        self.in_info_phase = False
        self.frontier_entry = 0
        self.info_node = 0
        self.best_position = -1
        self.best_path: tuple[Any, ...] | None = None
        self.impossibility_tested = False

    def _build_ok_list(self, definite_count: int) -> None:
        events: list[tuple[int, int, int]] = []
        for number, op in enumerate(self.operations[:definite_count]):
            assert op.ret is not None
            events.append((op.call, 0, number))
            events.append((op.ret, 1, number))
        events.sort()
        size = len(events) + 1
        self.entry_op = [-1] * size
        self.entry_is_return = [True] * size  # the head reads as a return: an empty list
        self.entry_position = [1 << 62] * size
        self.match = [0] * size
        call_entry: dict[int, int] = {}
        for entry, (position, kind, number) in enumerate(events, start=1):
            self.entry_op[entry] = number
            self.entry_is_return[entry] = kind == 1
            self.entry_position[entry] = position
            if kind == 0:
                call_entry[number] = entry
            else:
                self.match[call_entry[number]] = entry
        # A circular list: the head (a "return" at +infinity) follows the last entry.
        self.following = [(entry + 1) % size for entry in range(size)]
        self.preceding = [(entry - 1) % size for entry in range(size)]

    def _build_info_list(self, definite_count: int, possible_count: int) -> None:
        """Info operations in call order; alike ones (same call) form a class."""
        size = possible_count + 1
        self.info_op = [-1] + [definite_count + i for i in range(possible_count)]
        self.info_call = [1 << 62] + [op.call for op in self.operations[definite_count:]]
        self.info_following = [(node + 1) % size for node in range(size)]
        self.info_preceding = [(node - 1) % size for node in range(size)]
        self.info_bit = [0] * len(self.operations)
        self.info_class = [0] * len(self.operations)
        self.info_rank = [0] * len(self.operations)
        classes: dict[tuple[str, Hashable], int] = {}
        members: list[int] = []
        for number in range(definite_count, len(self.operations)):
            call = self.calls[number]
            alike = classes.setdefault((call.f, call.argument), len(classes))
            if alike == len(members):
                members.append(0)
            self.info_bit[number] = 1 << (number - definite_count)
            self.info_class[number] = alike
            self.info_rank[number] = members[alike]
            members[alike] += 1
        self.class_used = [0] * len(members)

    def _next_state(self, number: int, state: int) -> int:
        """The interned state after operation `number` from `state`, or -1 when illegal."""
        table = self.transitions[number]
        found = table.get(state)
        if found is not None:
            return found
        after = self.model.step(self.states[state], self.calls[number])
        if after is ILLEGAL:
            result = -1
        else:
            result = self.state_ids.get(after, -1)
            if result < 0:
                result = len(self.states)
                self.states.append(after)
                self.state_ids[after] = result
        table[state] = result
        return result

    def run(self, steps: int) -> Verdict | None:
        """Search for up to `steps` steps; the verdict, or None when not done yet."""
        if self.outcome.verdict is not None:
            return self.outcome.verdict
        following, preceding = self.following, self.preceding
        entry_op, is_return, match = self.entry_op, self.entry_is_return, self.match
        entry_position = self.entry_position
        info_following, info_preceding = self.info_following, self.info_preceding
        info_op, info_call, info_bit = self.info_op, self.info_call, self.info_bit
        info_class, info_rank, class_used = self.info_class, self.info_rank, self.class_used
        read_only, transitions, zobrist = self.read_only, self.transitions, self.zobrist
        cache, frames, next_state = self.cache, self.frames, self._next_state
        state, hash_, consumed = self.state, self.hash, self.consumed
        remaining, run_start, path = self.remaining, self.run_start, self.path
        entry, in_info = self.entry, self.in_info_phase
        frontier, info_node = self.frontier_entry, self.info_node
        done = 0
        verdict: Verdict | None = None
        while done < steps:
            done += 1
            if remaining == 0:
                verdict = "valid"
                break
            dead_end = False
            if not in_info:
                if is_return[entry]:
                    # The first return: no ok operation after it can come next.
                    frontier = entry
                    if entry_position[entry] > self.best_position:
                        self.best_position = entry_position[entry]
                        self.best_path = path
                    in_info = True
                    info_node = info_following[0]
                    continue
                number = entry_op[entry]
                after = transitions[number].get(state)
                if after is None:
                    after = next_state(number, state)
                if after < 0:
                    entry = following[entry]
                    continue
                if run_start >= 0:
                    # After info operations, only an operation they changed may follow.
                    alone = transitions[number].get(run_start)
                    if alone is None:
                        alone = next_state(number, run_start)
                    if alone == after:
                        entry = following[entry]
                        continue
                forced = read_only[number] and run_start < 0
                node = (hash_ ^ zobrist[number], after, -1)
                seen = False
                masks = cache.get(node)
                if masks is None:
                    cache[node] = [consumed]
                else:
                    for mask in masks:
                        if not mask & ~consumed:
                            seen = True
                            break
                    else:
                        masks.append(consumed)
                if not seen:
                    frames.append((entry, state, hash_, 1 if forced else 0, 0, run_start, consumed))
                    # Lift the call and its return out of the list.
                    back, ahead = preceding[entry], following[entry]
                    following[back] = ahead
                    preceding[ahead] = back
                    returned = match[entry]
                    back, ahead = preceding[returned], following[returned]
                    following[back] = ahead
                    preceding[ahead] = back
                    path = (number, after, path)
                    state = after
                    hash_ = node[0]
                    remaining -= 1
                    run_start = -1
                    entry = following[0]
                    continue
                if forced:
                    dead_end = True
                else:
                    entry = following[entry]
                    continue
            elif info_call[info_node] > entry_position[frontier]:
                dead_end = True
            else:
                number = info_op[info_node]
                if info_rank[number] != class_used[info_class[number]]:
                    info_node = info_following[info_node]  # an earlier alike one stands in
                    continue
                after = transitions[number].get(state)
                if after is None:
                    after = next_state(number, state)
                if after < 0:
                    info_node = info_following[info_node]
                    continue
                child_run = run_start if run_start >= 0 else state
                with_it = consumed | info_bit[number]
                node = (hash_, after, child_run)
                seen = False
                masks = cache.get(node)
                if masks is None:
                    cache[node] = [with_it]
                else:
                    for mask in masks:
                        if not mask & ~with_it:
                            seen = True
                            break
                    else:
                        masks.append(with_it)
                if seen:
                    info_node = info_following[info_node]
                    continue
                frames.append((info_node, state, hash_, 2, frontier, run_start, consumed))
                back, ahead = info_preceding[info_node], info_following[info_node]
                info_following[back] = ahead
                info_preceding[ahead] = back
                class_used[info_class[number]] += 1
                path = (number, after, path)
                state = after
                consumed = with_it
                run_start = child_run
                in_info = False
                entry = following[0]
                continue
            if dead_end:
                # Pop forced frames (their nodes fail with their child), then one choice.
                while True:
                    if not frames:
                        verdict = "invalid"
                        break
                    lifted, state, hash_, kind, saved, run_start, consumed = frames.pop()
                    path = path[2] if path is not None else None
                    if kind == 2:
                        back, ahead = info_preceding[lifted], info_following[lifted]
                        info_following[back] = lifted
                        info_preceding[ahead] = lifted
                        class_used[info_class[info_op[lifted]]] -= 1
                        in_info = True
                        frontier = saved
                        info_node = info_following[lifted]
                        break
                    returned = match[lifted]
                    back, ahead = preceding[returned], following[returned]
                    following[back] = returned
                    preceding[ahead] = returned
                    back, ahead = preceding[lifted], following[lifted]
                    following[back] = lifted
                    preceding[ahead] = lifted
                    remaining += 1
                    if kind == 0:
                        in_info = False
                        entry = following[lifted]
                        break
                if verdict is not None:
                    break
        self.state, self.hash, self.consumed = state, hash_, consumed
        self.remaining, self.run_start, self.path = remaining, run_start, path
        self.entry, self.in_info_phase = entry, in_info
        self.frontier_entry, self.info_node = frontier, info_node
        self.outcome.steps += done
        if verdict is not None:
            self._conclude(verdict)
        return verdict

    def impossible_operation(self, states_max: int) -> Operation | None:
        """An ok operation legal in no state that any order of the partition's operations
        reaches: proof of "not linearizable" without the search. None when there is none,
        or when the reachable states number more than `states_max`."""
        self.impossibility_tested = True
        reachable = {0}
        pending = [0]
        while pending:
            state = pending.pop()
            for number in range(len(self.operations)):
                after = self._next_state(number, state)
                if after >= 0 and after not in reachable:
                    if len(reachable) >= states_max:
                        return None
                    reachable.add(after)
                    pending.append(after)
        definite = [n for n, op in enumerate(self.operations) if op.type == "ok"]
        for number in sorted(definite, key=lambda n: self.operations[n].ret or 0):
            if all(self._next_state(number, state) < 0 for state in reachable):
                return self.operations[number]
        return None

    def conclude_impossible(self, failing: Operation) -> None:
        self.outcome.verdict = "invalid"
        self.outcome.failing = failing
        self.outcome.impossible = True
        self.cache = {}
        self.frames = []

    def _unwind(self, path: tuple[Any, ...] | None) -> list[tuple[Operation, Hashable]]:
        walked: list[tuple[Operation, Hashable]] = []
        while path is not None:
            number, state, path = path
            walked.append((self.operations[number], self.states[state]))
        walked.reverse()
        return walked

    def _conclude(self, verdict: Verdict) -> None:
        outcome = self.outcome
        outcome.verdict = verdict
        outcome.cache_entries = sum(len(masks) for masks in self.cache.values())
        if verdict == "valid":
            outcome.linearization = [op for op, _ in self._unwind(self.path)]
        else:
            failing_entry = next(
                entry
                for entry in range(1, len(self.entry_op))
                if self.entry_is_return[entry] and self.entry_position[entry] == self.best_position
            )
            outcome.failing = self.operations[self.entry_op[failing_entry]]
            outcome.prefix = self._unwind(self.best_path)
        self.cache = {}
        self.frames = []


def partitions(operations: Iterable[Operation]) -> dict[Hashable, list[Operation]]:
    """Operations by key, `fail` ones dropped; keyless operations share the key None."""
    grouped: dict[Hashable, list[Operation]] = {}
    for op in operations:
        if op.type == "fail":
            continue
        grouped.setdefault(op.key, []).append(op)
    return grouped


def _previous_ok(history: History, failing: Operation) -> Operation | None:
    """The last `ok` operation completed before the failing one completed (Knossos)."""
    limit = failing.ret if failing.ret is not None else failing.call
    best: Operation | None = None
    for op in history.operations:
        if op.type != "ok" or op is failing or op.ret is None or op.ret >= limit:
            continue
        if best is None or (best.ret is not None and op.ret > best.ret):
            best = op
    return best


def _advance(search: PartitionSearch, steps: int) -> Verdict | None:
    """One slice of a partition's search, and the impossibility test once it drags on."""
    if steps <= 0:
        return None
    verdict = search.run(steps)
    patience = max(
        IMPOSSIBLE_TEST_AFTER_STEPS,
        IMPOSSIBLE_TEST_AFTER_STEPS_PER_OPERATION * search.outcome.operations,
    )
    if verdict is None and not search.impossibility_tested and search.outcome.steps >= patience:
        failing = search.impossible_operation(IMPOSSIBLE_TEST_STATES_MAX)
        if failing is not None:
            search.conclude_impossible(failing)
            verdict = "invalid"
    return verdict


def check_linearizable(
    history: History,
    model: Model,
    budget: Budget | None = None,
    progress: Callable[[Progress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """Is the history linearizable under `model`? See the module's theory of operation."""
    budget = budget or Budget()
    started = clock()
    grouped = partitions(history.operations)
    try:
        searches = [
            PartitionSearch(model, key, ops)
            for key, ops in sorted(grouped.items(), key=lambda item: (len(item[1]), repr(item[0])))
        ]
    except ModelError as error:
        return Result(UNKNOWN, model.name, f"history does not fit the model: {error}")
    active = list(searches)
    steps_total = 0
    while active:
        still: list[PartitionSearch] = []
        for number, search in enumerate(active):
            slice_steps = SLICE_STEPS
            if budget.steps_max is not None:
                slice_steps = min(slice_steps, budget.steps_max - steps_total)
            steps_before = search.outcome.steps
            try:
                verdict = _advance(search, slice_steps)
            except ModelError as error:
                return Result(UNKNOWN, model.name, f"history does not fit the model: {error}")
            steps_total += search.outcome.steps - steps_before
            if verdict == "invalid":
                return _invalid(history, model, search.outcome, searches, clock() - started)
            if verdict is None:
                still.append(search)
            out_of_steps = budget.steps_max is not None and steps_total >= budget.steps_max
            out_of_time = budget.seconds_max is not None and (
                clock() - started >= budget.seconds_max
            )
            if (out_of_steps or out_of_time) and (still or number + 1 < len(active)):
                undecided = still + list(active[number + 1 :])
                return _unknown(model, searches, undecided, clock() - started)
        active = still
        if progress is not None:
            decided = len(searches) - len(active)
            progress(Progress(len(searches), decided, steps_total, clock() - started))
    elapsed = clock() - started
    log.debug("linearizable", model=model.name, partitions=len(searches), seconds=elapsed)
    details = _common_details(searches, elapsed)
    summary = (
        f"linearizable: {sum(s.outcome.operations for s in searches)} operations "
        f"in {len(searches)} partition(s)"
    )
    return Result(True, model.name, summary, details)


def _steps(searches: Sequence[PartitionSearch]) -> int:
    return sum(search.outcome.steps for search in searches)


def _common_details(searches: Sequence[PartitionSearch], elapsed: float) -> dict[str, Any]:
    return {
        "partitions": len(searches),
        "operations": sum(search.outcome.operations for search in searches),
        "steps": _steps(searches),
        "cache_entries": sum(search.outcome.cache_entries for search in searches),
        "seconds": round(elapsed, 6),
    }


def _unknown(
    model: Model,
    searches: Sequence[PartitionSearch],
    active: Sequence[PartitionSearch],
    elapsed: float,
) -> Result:
    details = _common_details(searches, elapsed)
    details["cause"] = "timeout"
    details["undecided_keys"] = [render_value(search.key) for search in active]
    summary = f"unknown: search budget spent with {len(active)} partition(s) undecided"
    return Result(UNKNOWN, model.name, summary, details)


def _invalid(
    history: History,
    model: Model,
    outcome: PartitionOutcome,
    searches: Sequence[PartitionSearch],
    elapsed: float,
) -> Result:
    failing = outcome.failing
    assert failing is not None
    previous = _previous_ok(history, failing)
    prefix = outcome.prefix
    final_state = prefix[-1][1] if prefix else model.initial()
    details = _common_details(searches, elapsed)
    details.update(
        key=render_value(outcome.key),
        op=_op_json(failing),
        previous_ok=_op_json(previous) if previous is not None else None,
        prefix_length=len(prefix),
        prefix_tail=[
            {"op": _op_json(op), "state": model.describe(state)}
            for op, state in prefix[-PREFIX_TAIL_MAX:]
        ],
    )
    explanation = [f"Key {render_value(outcome.key)}: {failing.describe()} cannot be linearized."]
    if outcome.impossible:
        details["cause"] = "legal in no reachable state"
        explanation.append(
            "It is legal in no state that any order of the key's operations can reach."
        )
    else:
        explanation.append(
            f"The longest linearizable prefix has {len(prefix)} operation(s) and ends in state "
            f"{model.describe(final_state)}; its last steps:"
        )
        explanation.extend(
            f"  {op.describe()} -> {model.describe(state)}"
            for op, state in prefix[-PREFIX_SHOWN_MAX:]
        )
    if previous is not None:
        explanation.append(f"The last ok operation before it: {previous.describe()}.")
    summary = f"not linearizable: {failing.describe()}"
    return Result(False, model.name, summary, details, tuple(explanation))


def _op_json(op: Operation) -> dict[str, Any]:
    return {
        "process": op.process,
        "type": op.type,
        "f": op.f,
        "value": to_json_value(op.value),
        "index": op.index,
    }
