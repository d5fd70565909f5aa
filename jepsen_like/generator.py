"""What each worker asks next, and when: Jepsen's generators, for our workloads.

Rules:
- An `Invocation` is one operation a worker is about to invoke: its function `f`, its
  argument `value` (None for reads) and, for keyed workloads, its `key`.
- Every choice comes from the `random.Random` the caller passes (one per worker, seeded from
  the run's seed and the worker's number), so a seed replays the choices. Timings and the
  database's answers are not replayed; they are recorded in the history instead.
- Generators are shared by the workers of a run: `next` and `update` take a lock.
- register (`RegisterGenerator`): `keys_active` keys are in use at once; a key takes at most
  `ops_per_key` invocations and is then replaced by a fresh key, as Jepsen's independent
  generator does, so each key's history stays short enough for the linearizability search.
  Writes and the new value of a cas are unique per key (a counter per key): a read then
  names the one write it saw. A cas expects the value last known for its key (from ok
  reads, writes and cas), which makes many of them succeed; a key with no known value gets
  a write instead.
- set (`SetGenerator`): adds of unique integers, and now and then (`read_fraction`) a read
  of the whole set.
- bank (`BankGenerator`), as Jepsen's bank test: a read of every account (`read_fraction`
  of the invocations, half by default), else a `transfer` {from, to, amount} between two
  distinct accounts of an amount in 1..`transfer_max`.
- list-append (`ListAppendGenerator`), as Elle's: a `txn` of 1..`micro_ops_max` micro-ops,
  each `["r", k, None]` or `["append", k, element]` (even odds) on a key drawn from
  `keys_active` keys in use. Elements are unique in the whole run (one counter), so a read
  names exactly which appends it saw. A key takes at most `appends_per_key` appends and is
  then replaced by a fresh key, so lists stay short.
- Pacing (`Pacer`): each worker waits a uniform random interval in [0, 2 * concurrency /
  rate] between invocations (Jepsen's stagger), on its own schedule, so the workers together
  invoke about `rate` operations per second. A worker that fell behind (slow answers) does
  not burst to catch up: it is at most `CATCH_UP_S` behind its schedule.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

REGISTER_KEYS_ACTIVE_DEFAULT = 10
REGISTER_OPS_PER_KEY_DEFAULT = 100
REGISTER_FUNCTIONS = ("read", "write", "cas")
SET_READ_FRACTION_DEFAULT = 0.01
BANK_ACCOUNTS_DEFAULT = 8
BANK_TRANSFER_MAX_DEFAULT = 5
BANK_READ_FRACTION_DEFAULT = 0.5
BANK_ACCOUNTS_MAX = 1000
LIST_APPEND_KEYS_ACTIVE_DEFAULT = 5
LIST_APPEND_MICRO_OPS_MAX_DEFAULT = 4
LIST_APPEND_APPENDS_PER_KEY_DEFAULT = 32
MICRO_OPS_MAX = 100
CATCH_UP_S = 1.0
KEYS_ACTIVE_MAX = 10_000
OPS_PER_KEY_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Invocation:
    f: str
    value: Any = None
    key: Hashable = None


class Generator(Protocol):
    def next(self, rng: random.Random) -> Invocation: ...

    def update(self, invocation: Invocation, outcome: str, value: Any) -> None: ...


class RegisterGenerator:
    """read / write / cas over a rotating pool of keys (see the module rules)."""

    def __init__(
        self,
        keys_active: int = REGISTER_KEYS_ACTIVE_DEFAULT,
        ops_per_key: int = REGISTER_OPS_PER_KEY_DEFAULT,
    ) -> None:
        if not 1 <= keys_active <= KEYS_ACTIVE_MAX:
            raise ValueError(f"keys_active must be in 1..{KEYS_ACTIVE_MAX}, not {keys_active}")
        if not 1 <= ops_per_key <= OPS_PER_KEY_MAX:
            raise ValueError(f"ops_per_key must be in 1..{OPS_PER_KEY_MAX}, not {ops_per_key}")
        self.ops_per_key = ops_per_key
        self._lock = threading.Lock()
        self._active: list[int] = list(range(keys_active))
        self._next_key = keys_active
        self._invoked: dict[int, int] = {}  # key -> invocations so far
        self._last_written: dict[int, int] = {}  # key -> the last unique value handed out
        self._known: dict[int, Any] = {}  # key -> the value last seen there (ok ops)

    @property
    def keys_used(self) -> int:
        return self._next_key

    def next(self, rng: random.Random) -> Invocation:
        with self._lock:
            slot = rng.randrange(len(self._active))
            key = self._active[slot]
            count = self._invoked.get(key, 0) + 1
            self._invoked[key] = count
            if count >= self.ops_per_key:  # this is the key's last invocation
                self._active[slot] = self._next_key
                self._next_key += 1
            f = rng.choice(REGISTER_FUNCTIONS)
            if f == "read":
                return Invocation("read", None, key)
            fresh = self._last_written.get(key, 0) + 1
            self._last_written[key] = fresh
            expected = self._known.get(key)
            if f == "cas" and expected is not None:
                return Invocation("cas", (expected, fresh), key)
            return Invocation("write", fresh, key)

    def update(self, invocation: Invocation, outcome: str, value: Any) -> None:
        if outcome != "ok" or not isinstance(invocation.key, int):
            return
        with self._lock:
            if invocation.f == "read":
                self._known[invocation.key] = value
            elif invocation.f == "write":
                self._known[invocation.key] = invocation.value
            elif invocation.f == "cas":
                self._known[invocation.key] = invocation.value[1]


class SetGenerator:
    """Unique adds, and reads of the whole set now and then."""

    def __init__(self, read_fraction: float = SET_READ_FRACTION_DEFAULT) -> None:
        if not 0.0 <= read_fraction <= 1.0:
            raise ValueError(f"read_fraction must be in [0, 1], not {read_fraction}")
        self.read_fraction = read_fraction
        self._lock = threading.Lock()
        self._next_element = 0

    def next(self, rng: random.Random) -> Invocation:
        if rng.random() < self.read_fraction:
            return Invocation("read")
        with self._lock:
            element = self._next_element
            self._next_element += 1
        return Invocation("add", element)

    def update(self, invocation: Invocation, outcome: str, value: Any) -> None:
        return None


class BankGenerator:
    """Reads of every account and transfers between two of them (see the module rules)."""

    def __init__(
        self,
        accounts: int = BANK_ACCOUNTS_DEFAULT,
        transfer_max: int = BANK_TRANSFER_MAX_DEFAULT,
        read_fraction: float = BANK_READ_FRACTION_DEFAULT,
    ) -> None:
        if not 2 <= accounts <= BANK_ACCOUNTS_MAX:
            raise ValueError(f"accounts must be in 2..{BANK_ACCOUNTS_MAX}, not {accounts}")
        if transfer_max < 1:
            raise ValueError(f"transfer_max must be >= 1, not {transfer_max}")
        if not 0.0 <= read_fraction <= 1.0:
            raise ValueError(f"read_fraction must be in [0, 1], not {read_fraction}")
        self.accounts = accounts
        self.transfer_max = transfer_max
        self.read_fraction = read_fraction

    def next(self, rng: random.Random) -> Invocation:
        if rng.random() < self.read_fraction:
            return Invocation("read")
        source, target = rng.sample(range(self.accounts), 2)
        amount = rng.randint(1, self.transfer_max)
        return Invocation("transfer", {"from": source, "to": target, "amount": amount})

    def update(self, invocation: Invocation, outcome: str, value: Any) -> None:
        return None


class ListAppendGenerator:
    """Elle's transactions of reads and unique appends over a rotating pool of keys."""

    def __init__(
        self,
        keys_active: int = LIST_APPEND_KEYS_ACTIVE_DEFAULT,
        micro_ops_max: int = LIST_APPEND_MICRO_OPS_MAX_DEFAULT,
        appends_per_key: int = LIST_APPEND_APPENDS_PER_KEY_DEFAULT,
    ) -> None:
        if not 1 <= keys_active <= KEYS_ACTIVE_MAX:
            raise ValueError(f"keys_active must be in 1..{KEYS_ACTIVE_MAX}, not {keys_active}")
        if not 1 <= micro_ops_max <= MICRO_OPS_MAX:
            raise ValueError(f"micro_ops_max must be in 1..{MICRO_OPS_MAX}, not {micro_ops_max}")
        if not 1 <= appends_per_key <= OPS_PER_KEY_MAX:
            raise ValueError(
                f"appends_per_key must be in 1..{OPS_PER_KEY_MAX}, not {appends_per_key}"
            )
        self.micro_ops_max = micro_ops_max
        self.appends_per_key = appends_per_key
        self._lock = threading.Lock()
        self._active: list[int] = list(range(keys_active))
        self._next_key = keys_active
        self._next_element = 1
        self._appended: dict[int, int] = {}  # key -> appends handed out

    @property
    def keys_used(self) -> int:
        return self._next_key

    def next(self, rng: random.Random) -> Invocation:
        micro_ops: list[tuple[str, int, Any]] = []
        with self._lock:
            for _ in range(rng.randint(1, self.micro_ops_max)):
                slot = rng.randrange(len(self._active))
                key = self._active[slot]
                if rng.random() < 0.5:
                    micro_ops.append(("r", key, None))
                    continue
                micro_ops.append(("append", key, self._next_element))
                self._next_element += 1
                self._appended[key] = self._appended.get(key, 0) + 1
                if self._appended[key] >= self.appends_per_key:  # the key's last append
                    self._active[slot] = self._next_key
                    self._next_key += 1
        return Invocation("txn", tuple(micro_ops))

    def update(self, invocation: Invocation, outcome: str, value: Any) -> None:
        return None


class Pacer:
    """One worker's invoke times: about `rate / concurrency` per second (module rules)."""

    def __init__(self, rate: float, concurrency: int, start_s: float) -> None:
        if rate <= 0 or concurrency <= 0:
            raise ValueError("rate and concurrency must be > 0")
        self.mean_interval_s = concurrency / rate
        self.next_s = start_s

    def following(self, rng: random.Random, now_s: float) -> float:
        """The time of the next invocation, after one at the scheduled time."""
        self.next_s = max(self.next_s, now_s - CATCH_UP_S)
        self.next_s += rng.uniform(0.0, 2.0 * self.mean_interval_s)
        return self.next_s
