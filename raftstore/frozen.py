"""`fast_init`: a cheaper constructor for a frozen, slotted dataclass, same class otherwise.

`@dataclass(frozen=True, slots=True)` makes instances immutable by a `__setattr__` that
raises, so its generated `__init__` must store every field with
`object.__setattr__(self, name, value)`: a generic attribute lookup by name, per field. On the
engine's hot path, where a `RecordRequest`, its `Op`s, a `Record` and a `Result` are built
per command, that was a tenth of all the instructions of a write.

`fast_init` replaces only `__init__`, by one with the same signature (positional or keyword
arguments, the same defaults, a fresh value from each default factory) that stores each
field through its slot's own descriptor. Fields, equality, ordering, hashing, `repr`,
`dataclasses.replace` and immutability stay those of the dataclass;
tests/test_codec.py checks the constructors against the dataclass's own.

Rules: the class must be a frozen dataclass with slots, and without `__post_init__`,
`InitVar`s, keyword-only fields or fields left out of `__init__`; anything else is refused
at import.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_Class = TypeVar("_Class", bound=type)


def fast_init(cls: _Class) -> _Class:
    """Give the frozen slotted dataclass `cls` the cheaper `__init__` (see the module)."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen and "__slots__" in cls.__dict__, f"{cls.__name__}: frozen, slots"
    assert not hasattr(cls, "__post_init__"), f"{cls.__name__}: __post_init__"
    namespace: dict[str, Any] = {"_MISSING": dataclasses.MISSING}
    arguments = []
    stores = []
    for field in dataclasses.fields(cls):
        name = field.name
        assert field.init and not field.kw_only, f"{cls.__name__}.{name}: plain field"
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__  # the slot's member descriptor
        value = name
        if field.default is not dataclasses.MISSING:
            namespace[f"_default_{name}"] = field.default
            arguments.append(f"{name}=_default_{name}")
        elif field.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{name}"] = field.default_factory
            arguments.append(f"{name}=_MISSING")
            value = f"_factory_{name}() if {name} is _MISSING else {name}"
        else:
            arguments.append(name)
        stores.append(f"    _set_{name}(self, {value})")
    source = f"def __init__(self, {', '.join(arguments)}):\n" + "\n".join(stores) + "\n"
    exec(source, namespace)  # noqa: S102 - built from field names only, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls
