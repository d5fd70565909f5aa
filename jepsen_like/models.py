"""Sequential specifications for linearizability checking (Porcupine's model interface).

A model is a pure function `step(state, call) -> next state | ILLEGAL` over hashable,
immutable states, plus `read_only(call)`: a read-only call never changes the state, which
lets the search linearize it as soon as it is legal (see `linearizable`).

`Call` is one operation as a model sees it: the function, the invoke's argument, and, for
an `ok` operation, the completion's result. An `info` operation has no result
(`definite=False`): any result is acceptable, and the search may also leave it out, as an
operation that never took effect. `fail` operations never reach a model.

Models:
- `register` (read, write) and `cas-register` (read, write, cas [from to]). A read's result
  is the value; `nil_read` says what a nil result means: "absent" (the register holds nil,
  our histories and Porcupine's etcd logs) or "unknown" (always legal, Knossos).
- `kv`: Porcupine's string register per key: get, put, append; the initial state is "".
- `mutex`: acquire when free, release when held (Knossos).
- `multi-register`: transactions of `[read k v]` / `[write k v]` over a map of registers
  (Knossos); a nil read is unknown, as in Knossos.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from jepsen_like.history import render_value


class Illegal:
    """The one value a step returns when the call cannot happen in that state."""

    def __repr__(self) -> str:
        return "ILLEGAL"


ILLEGAL: Final = Illegal()


class ModelError(ValueError):
    """The history holds an operation this model does not define."""


@dataclass(frozen=True, slots=True)
class Call:
    f: str
    argument: Any
    result: Any
    definite: bool


class Model(Protocol):
    @property
    def name(self) -> str: ...

    def initial(self) -> Hashable: ...

    def step(self, state: Hashable, call: Call) -> Hashable | Illegal: ...

    def read_only(self, call: Call) -> bool: ...

    def describe(self, state: Hashable) -> str: ...


def _cas_arguments(call: Call) -> tuple[Any, Any]:
    argument = call.argument
    if not isinstance(argument, tuple) or len(argument) != 2:
        raise ModelError(f"cas needs [from to], got {render_value(argument)}")
    return argument[0], argument[1]


@dataclass(frozen=True)
class Register:
    """A read/write register, with compare-and-set when `cas` is true."""

    initial_value: Hashable = None
    nil_read: Literal["absent", "unknown"] = "absent"
    cas: bool = True

    @property
    def name(self) -> str:
        return "cas-register" if self.cas else "register"

    def initial(self) -> Hashable:
        return self.initial_value

    def step(self, state: Hashable, call: Call) -> Hashable | Illegal:
        f = call.f
        if f == "read":
            if not call.definite:
                return state
            if call.result is None and self.nil_read == "unknown":
                return state
            return state if call.result == state else ILLEGAL
        if f == "write":
            written: Hashable = call.argument
            return written
        if f == "cas" and self.cas:
            expected, new = _cas_arguments(call)
            return new if state == expected else ILLEGAL
        raise ModelError(f"{self.name} has no operation {f!r}")

    def read_only(self, call: Call) -> bool:
        return call.f == "read"

    def describe(self, state: Hashable) -> str:
        return render_value(state)


@dataclass(frozen=True)
class KeyValue:
    """Porcupine's kv model for one key: a string, read by get, set by put, grown by append."""

    name: str = "kv"

    def initial(self) -> Hashable:
        return ""

    def step(self, state: Hashable, call: Call) -> Hashable | Illegal:
        assert isinstance(state, str)
        f = call.f
        if f == "get":
            if not call.definite:
                return state
            return state if (call.result or "") == state else ILLEGAL
        if f == "put":
            return str(call.argument)
        if f == "append":
            return state + str(call.argument)
        raise ModelError(f"kv has no operation {f!r}")

    def read_only(self, call: Call) -> bool:
        return call.f == "get"

    def describe(self, state: Hashable) -> str:
        return render_value(state)


@dataclass(frozen=True)
class Mutex:
    name: str = "mutex"

    def initial(self) -> Hashable:
        return False

    def step(self, state: Hashable, call: Call) -> Hashable | Illegal:
        if call.f == "acquire":
            return ILLEGAL if state else True
        if call.f == "release":
            return False if state else ILLEGAL
        raise ModelError(f"mutex has no operation {call.f!r}")

    def read_only(self, call: Call) -> bool:
        return False

    def describe(self, state: Hashable) -> str:
        return "held" if state else "free"


@dataclass(frozen=True)
class MultiRegister:
    """Registers by name, changed by transactions of reads and writes (Knossos)."""

    initial_values: tuple[tuple[Hashable, Hashable], ...] = ()
    name: str = "multi-register"

    @staticmethod
    def of(values: Mapping[Hashable, Hashable]) -> MultiRegister:
        return MultiRegister(tuple(sorted(values.items(), key=repr)))

    def initial(self) -> Hashable:
        return self.initial_values

    def step(self, state: Hashable, call: Call) -> Hashable | Illegal:
        if call.f != "txn":
            raise ModelError(f"multi-register has no operation {call.f!r}")
        assert isinstance(state, tuple)
        registers = dict(state)
        micro_ops = call.result if call.definite else call.argument
        for micro_op in micro_ops or ():
            kind, key, value = micro_op
            if kind in ("read", "r"):
                if call.definite and value is not None and registers.get(key) != value:
                    return ILLEGAL
            elif kind in ("write", "w"):
                registers[key] = value
            else:
                raise ModelError(f"multi-register has no micro-operation {kind!r}")
        return tuple(sorted(registers.items(), key=repr))

    def read_only(self, call: Call) -> bool:
        micro_ops = call.result if call.definite else call.argument
        return all(micro_op[0] in ("read", "r") for micro_op in micro_ops or ())

    def describe(self, state: Hashable) -> str:
        assert isinstance(state, tuple)
        return render_value(dict(state))


def model_named(
    name: str,
    initial: Any = None,
    nil_read: Literal["absent", "unknown"] = "absent",
) -> Model:
    """The model of a `--model` name; `initial` and `nil_read` apply to registers."""
    if name == "register":
        return Register(initial, nil_read, cas=False)
    if name == "cas-register":
        return Register(initial, nil_read, cas=True)
    if name == "kv":
        return KeyValue()
    if name == "mutex":
        return Mutex()
    if name == "multi-register":
        if initial is None:
            return MultiRegister()
        if not isinstance(initial, Mapping):
            raise ModelError("multi-register's initial value must be a map")
        return MultiRegister.of(initial)
    raise ModelError(f"no linearizability model {name!r}")


LINEARIZABLE_MODELS: Final = ("register", "cas-register", "kv", "mutex", "multi-register")
