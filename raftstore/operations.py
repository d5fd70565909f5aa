"""Record operations: a pure function from (stored record, op list, policy, now) to an outcome.

Theory of operation. `operate` first validates the whole request (op count, bin names,
argument types and values, policy fields) without looking at the record. Then:

- Presence. `existing` is None, a live record, a tombstone or a record past its void time.
  Only a live record is *present*; the others are *absent* for every policy and read, but
  their generation and last-update time carry on into the next write of the digest.
- Stored key: a `user_key` given (not None) that differs from the key stored with
  `existing` (value or type) is KEY_MISMATCH, for reads and writes alike.
- Read-only op lists (`ops.is_read_only`) need a present record (else RECORD_NOT_FOUND) and
  change nothing: the outcome holds `existing`, unchanged, and `changed` is False. Exists
  and generation policies do not apply to reads.
- Any other list is a write. Checks, in order: exists policy (CREATE -> RECORD_EXISTS if
  present; UPDATE and REPLACE -> RECORD_NOT_FOUND if absent), generation policy when present
  (EQ: equal; GT: policy's greater; else GENERATION_ERROR), stored key. The bins start as
  the present record's (IGNORE, UPDATE) or empty (REPLACE, CREATE_OR_REPLACE, or absent).
- The ops run in order on a copy-on-write working copy (`operations_cdt.WorkingBins`); a
  read sees the writes before it. DELETE and TOUCH need the record present at the start of
  the request (else RECORD_NOT_FOUND). DELETE empties the bins; WRITE of None removes a bin.
- The result of a write: no bins left on a present record -> a tombstone (no bins, void
  time 0, set and key kept); no bins on an absent record -> PARAMETER_ERROR (nothing to
  create); else a live record. Either way the generation moves to
  `next_generation(existing generation, or 0)` once per request, the last-update time to
  `max(now_ms, existing's)`, the set name stays the present record's (a new record takes
  `set_name`), and the key is the sent one under `send_key`, else the one stored with
  `existing` (even a tombstone's: it is the same digest, hence the same key).
- Void time of a live record, from the last TOUCH's ttl, else the policy's: 0 -> namespace
  default-ttl (0 = never), -1 -> never, -2 -> keep the present record's (absent: namespace
  default), n > 0 -> n seconds after `now_ms`.
- A failed request raises `error(code, msg)` and has had no effect: `existing` and the ops
  are never modified. The outcome's record and results may share nested values with
  `existing` and with the op arguments; every party treats them as read-only.

Which ops return a value is `raftstore.ops`'s rule; list and map ops are in
`raftstore.operations_cdt`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

from raftstore import limits
from raftstore.clock import (
    TTL_DONT_UPDATE,
    TTL_NAMESPACE_DEFAULT,
    TTL_NEVER_EXPIRE,
    void_time_after,
)
from raftstore.config import NamespaceConfig
from raftstore.errors import ResultCode, error
from raftstore.operations_cdt import (
    CDT_RULES,
    Args,
    BinResult,
    CdtRule,
    WorkingBins,
    add_number,
    check_delta,
    check_int64,
)
from raftstore.ops import Op, OpCode, is_read_only
from raftstore.policy import DEFAULT_WRITE_POLICY, Exists, Gen, WritePolicy
from raftstore.record import Record, UserKey, next_generation
from raftstore.values import check_bin_name, check_value


class Outcome(NamedTuple):  # not a frozen dataclass: built per request, a NamedTuple is 3x cheaper
    record: Record | None  # the record to store when `changed`, else the input record
    results: list[BinResult]  # (bin, value) per returning op, in op order
    changed: bool  # True iff something must be written (incl. a new tombstone)


@dataclass(slots=True)
class _Request:
    """The mutable state of one request while its ops run."""

    bins: WorkingBins
    policy: WritePolicy
    present: bool
    results: list[BinResult]
    touch_ttl: int | None = None  # the ttl of the last TOUCH, if any


BinUse = Literal["required", "optional", "none"]


@dataclass(frozen=True, slots=True)
class _Rule:
    bin_use: BinUse
    arities: tuple[int, ...]
    check: Callable[[str, Args], None]  # the bin name, or "" for ops without one
    apply: Callable[[_Request, str | None, Args], None]


@dataclass(frozen=True, slots=True)
class _Step:
    rule: _Rule
    bin: str | None
    args: Args


# -- scalar ops -----------------------------------------------------------------------------


def _read(request: _Request, name: str | None, args: Args) -> None:
    if name is None:
        request.results.extend(request.bins.hand_out_all())
    else:
        request.results.append((name, request.bins.hand_out(name)))


def _write(request: _Request, name: str | None, args: Args) -> None:
    assert name is not None
    if args[0] is None:
        request.bins.remove(name)
    else:
        request.bins.put(name, args[0])


def _delete(request: _Request, name: str | None, args: Args) -> None:
    if not request.present:
        raise error(ResultCode.RECORD_NOT_FOUND, "delete of a record that does not exist")
    request.bins.clear()


def _touch(request: _Request, name: str | None, args: Args) -> None:
    if not request.present:
        raise error(ResultCode.RECORD_NOT_FOUND, "touch of a record that does not exist")
    request.touch_ttl = args[0] if args else request.policy.ttl


def _increment(request: _Request, name: str | None, args: Args) -> None:
    assert name is not None
    total = add_number(request.bins.peek(name), args[0], f"bin {name!r}")
    request.bins.put(name, total)


def _concatenate(request: _Request, name: str | None, value: Any, *, at_end: bool) -> None:
    assert name is not None
    current = request.bins.peek(name)
    if current is None:
        request.bins.put(name, value)
        return
    same_type = isinstance(current, str) and isinstance(value, str)
    same_type = same_type or (isinstance(current, bytes) and isinstance(value, bytes))
    if not same_type:
        raise error(
            ResultCode.BIN_INCOMPATIBLE_TYPE,
            f"bin {name!r} holds {type(current).__name__}, cannot join {type(value).__name__}",
        )
    request.bins.put(name, current + value if at_end else value + current)


def _append(request: _Request, name: str | None, args: Args) -> None:
    _concatenate(request, name, args[0], at_end=True)


def _prepend(request: _Request, name: str | None, args: Args) -> None:
    _concatenate(request, name, args[0], at_end=False)


def _check_ttl(ttl: object, what: str) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise error(ResultCode.PARAMETER_ERROR, f"{what} must be an int")
    if ttl in (TTL_DONT_UPDATE, TTL_NEVER_EXPIRE, TTL_NAMESPACE_DEFAULT):
        return ttl
    if not 1 <= ttl <= limits.TTL_SECONDS_MAX:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"{what} must be -2, -1, 0 or 1..{limits.TTL_SECONDS_MAX} seconds, not {ttl}",
        )
    return ttl


def _no_check(name: str, args: Args) -> None:
    return None


def _check_written(name: str, args: Args) -> None:
    if args[0] is not None:
        check_value(args[0], name)


def _check_touch(name: str, args: Args) -> None:
    if args:
        _check_ttl(args[0], "touch ttl")


def _check_increment(name: str, args: Args) -> None:
    check_delta(args[0], f"bin {name!r}: increment delta")


def _check_text(name: str, args: Args) -> None:
    if not isinstance(args[0], str | bytes):
        raise error(ResultCode.PARAMETER_ERROR, f"bin {name!r}: append/prepend takes str or bytes")


def _from_cdt(rule: CdtRule) -> _Rule:
    def apply(request: _Request, name: str | None, args: Args) -> None:
        assert name is not None
        request.results.append((name, rule.apply(request.bins, name, args)))

    return _Rule("required", (rule.arity,), rule.check, apply)


_RULES: dict[int, _Rule] = {
    OpCode.READ: _Rule("optional", (0,), _no_check, _read),
    OpCode.WRITE: _Rule("required", (1,), _check_written, _write),
    OpCode.DELETE: _Rule("none", (0,), _no_check, _delete),
    OpCode.TOUCH: _Rule("none", (0, 1), _check_touch, _touch),
    OpCode.INCREMENT: _Rule("required", (1,), _check_increment, _increment),
    OpCode.APPEND: _Rule("required", (1,), _check_text, _append),
    OpCode.PREPEND: _Rule("required", (1,), _check_text, _prepend),
    **{code: _from_cdt(rule) for code, rule in CDT_RULES.items()},
}
assert set(_RULES) == set(OpCode), "every op code has a rule"


# -- validation -------------------------------------------------------------------------------


def _validate_step(op: object) -> _Step:
    if not isinstance(op, Op):
        raise error(ResultCode.PARAMETER_ERROR, f"an operation must be an Op, not {op!r}")
    code: object = op.code  # decoded from a peer: any type until checked
    rule = None if isinstance(code, bool) or not isinstance(code, int) else _RULES.get(code)
    if rule is None:
        raise error(ResultCode.PARAMETER_ERROR, f"unknown operation code {code!r}")
    if op.bin is None:
        if rule.bin_use == "required":
            raise error(ResultCode.PARAMETER_ERROR, f"{OpCode(op.code).name} needs a bin name")
        name = ""
    else:
        if rule.bin_use == "none":
            raise error(ResultCode.PARAMETER_ERROR, f"{OpCode(op.code).name} takes no bin name")
        name = check_bin_name(op.bin)
    if not isinstance(op.args, tuple | list) or len(op.args) not in rule.arities:
        raise error(
            ResultCode.PARAMETER_ERROR, f"{OpCode(op.code).name}: wrong number of arguments"
        )
    args = tuple(op.args)
    rule.check(name, args)
    return _Step(rule, op.bin, args)


_ENUM_VALUES: dict[type[Exists] | type[Gen], frozenset[int]] = {
    Exists: frozenset(int(v) for v in Exists),
    Gen: frozenset(int(v) for v in Gen),
}


def _check_enum(value: object, kind: type[Exists] | type[Gen], what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in _ENUM_VALUES[kind]:
        raise error(ResultCode.PARAMETER_ERROR, f"unknown {what} policy {value!r}")


def _validate_policy(policy: WritePolicy) -> None:
    if not isinstance(policy, WritePolicy):
        raise error(ResultCode.PARAMETER_ERROR, "policy must be a WritePolicy")
    _check_enum(policy.exists, Exists, "exists")
    _check_enum(policy.gen, Gen, "generation")
    generation = check_int64(policy.generation, "policy generation")
    if not 0 <= generation <= limits.GENERATION_MAX:
        raise error(
            ResultCode.PARAMETER_ERROR, f"policy generation must be 0..65535, not {generation}"
        )
    _check_ttl(policy.ttl, "policy ttl")
    if not isinstance(policy.send_key, bool):
        raise error(ResultCode.PARAMETER_ERROR, "policy send_key must be a bool")


def _validate_user_key(user_key: object) -> None:
    if user_key is None or isinstance(user_key, str | bytes):
        return
    check_int64(user_key, "user key")


def _validate(ops: Sequence[Op], policy: WritePolicy, user_key: UserKey | None) -> list[_Step]:
    if not ops:
        raise error(ResultCode.PARAMETER_ERROR, "a request needs at least one operation")
    if len(ops) > limits.OPS_PER_REQUEST_MAX:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"{len(ops)} operations is over the limit of {limits.OPS_PER_REQUEST_MAX}",
        )
    _validate_policy(policy)
    _validate_user_key(user_key)
    return [_validate_step(op) for op in ops]


# -- the request ------------------------------------------------------------------------------


def _check_stored_key(existing: Record | None, user_key: UserKey | None) -> None:
    if existing is None or existing.user_key is None or user_key is None:
        return
    stored = existing.user_key
    if type(stored) is not type(user_key) or stored != user_key:
        raise error(ResultCode.KEY_MISMATCH, "the key sent differs from the stored key")


def _check_write_policy(policy: WritePolicy, existing: Record | None, present: bool) -> None:
    if present and policy.exists == Exists.CREATE:
        raise error(ResultCode.RECORD_EXISTS, "create-only write of a record that exists")
    if not present and policy.exists in (Exists.UPDATE, Exists.REPLACE):
        raise error(ResultCode.RECORD_NOT_FOUND, "update-only write of a record that is absent")
    if not present or policy.gen == Gen.IGNORE:
        return
    assert existing is not None
    if policy.gen == Gen.EQ and policy.generation != existing.generation:
        raise error(
            ResultCode.GENERATION_ERROR,
            f"generation is {existing.generation}, the policy expects {policy.generation}",
        )
    if policy.gen == Gen.GT and not policy.generation > existing.generation:
        raise error(
            ResultCode.GENERATION_ERROR,
            f"generation is {existing.generation}, the policy's {policy.generation} is not greater",
        )


def _void_time(ttl: int, kept: int | None, now_ms: int, namespace: NamespaceConfig) -> int:
    """The void time for `ttl`; `kept` is the present record's void time (None if absent)."""
    if ttl == TTL_DONT_UPDATE:
        if kept is not None:
            return kept
        ttl = TTL_NAMESPACE_DEFAULT
    if ttl == TTL_NAMESPACE_DEFAULT:
        ttl = namespace.default_ttl_s or TTL_NEVER_EXPIRE
    if ttl == TTL_NEVER_EXPIRE:
        return 0
    return void_time_after(now_ms, ttl)


def _run(steps: list[_Step], request: _Request) -> None:
    for step in steps:
        step.rule.apply(request, step.bin, step.args)


def _read_only(
    existing: Record | None, steps: list[_Step], present: bool, user_key: UserKey | None
) -> Outcome:
    if not present:
        raise error(ResultCode.RECORD_NOT_FOUND, "read of a record that does not exist")
    assert existing is not None
    _check_stored_key(existing, user_key)
    request = _Request(WorkingBins(existing.bins), WritePolicy(), True, [])
    _run(steps, request)
    return Outcome(existing, request.results, changed=False)


_REPLACING = frozenset({Exists.REPLACE, Exists.CREATE_OR_REPLACE})


def _start_bins(existing: Record | None, present: bool, policy: WritePolicy) -> dict[str, Any]:
    """The bins a write starts from (the caller copies them before changing any)."""
    if existing is None or not present:
        return {}
    if policy.exists in _REPLACING:
        return {}
    return existing.bins


# `_written` builds records positionally: pin the field order it assumes.
assert [f.name for f in fields(Record)] == [
    "generation",
    "void_time",
    "last_update_ms",
    "set_name",
    "bins",
    "tombstone",
    "user_key",
]


def _written(
    existing: Record | None,
    present: bool,
    bins: dict[str, Any],
    ttl: int,
    *,
    policy: WritePolicy,
    now_ms: int,
    set_name: str,
    user_key: UserKey | None,
    namespace: NamespaceConfig,
) -> Record:
    """The record a write leaves, from the bins its ops left (see the module's rules)."""
    if len(bins) > limits.BINS_PER_RECORD_MAX:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"{len(bins)} bins is over the limit of {limits.BINS_PER_RECORD_MAX}",
        )
    if not bins and not present:
        raise error(ResultCode.PARAMETER_ERROR, "write would create an empty record")
    # Positional arguments: cheaper than keywords (the order is pinned above).
    if existing is None:
        record = Record(
            1,  # next_generation(0)
            _void_time(ttl, None, now_ms, namespace),
            now_ms,
            set_name,
            bins,
            False,
            user_key if policy.send_key else None,
        )
    else:
        record = Record(
            next_generation(existing.generation),
            _void_time(ttl, existing.void_time if present else None, now_ms, namespace)
            if bins
            else 0,
            max(now_ms, existing.last_update_ms),
            existing.set_name if present else set_name,
            bins,
            not bins,
            user_key if policy.send_key and user_key is not None else existing.user_key,
        )
    return record  # `codec.encode_record` checks it before it is written


def _operate_generic(
    existing: Record | None,
    ops: Sequence[Op],
    policy: WritePolicy,
    *,
    now_ms: int,
    set_name: str,
    user_key: UserKey | None,
    namespace: NamespaceConfig,
) -> Outcome:
    """Every request the general way: validated steps run by their rules."""
    steps = _validate(ops, policy, user_key)
    present = existing is not None and existing.is_live(now_ms)
    if is_read_only(list(ops)):
        return _read_only(existing, steps, present, user_key)

    _check_write_policy(policy, existing, present)
    _check_stored_key(existing, user_key)
    request = _Request(WorkingBins(_start_bins(existing, present, policy)), policy, present, [])
    _run(steps, request)
    ttl = policy.ttl if request.touch_ttl is None else request.touch_ttl
    record = _written(
        existing,
        present,
        request.bins.values,
        ttl,
        policy=policy,
        now_ms=now_ms,
        set_name=set_name,
        user_key=user_key,
        namespace=namespace,
    )
    return Outcome(record, request.results, changed=True)


# -- the fast path ------------------------------------------------------------------------------
#
# Most requests are plain puts and gets: WRITE of a scalar, READ, under a policy and with a
# user key that pass validation at a glance. `_plain_kind` recognises them by exact type tests
# that imply every check `_validate` makes; such a request then runs as dict updates and
# lookups, without the per-op rule machinery (`_Step`, `WorkingBins`, `_Request`). Everything
# else, and every invalid request, goes the general way, so each failure keeps its one source.
# tests/test_operations.py proves the two ways give equal outcomes and errors.

# Enum members as module constants: reading `OpCode.WRITE` goes through the enum's metaclass
# (about 0.1 us on CPython 3.11), a global does not.
_WRITE, _READ = OpCode.WRITE, OpCode.READ
_PLAIN_SCALARS = frozenset({str, bytes, float, bool})  # `check_value` takes them as they are
_PLAIN_KEYS = frozenset({str, bytes})
_TTL_SENTINELS = frozenset({TTL_DONT_UPDATE, TTL_NEVER_EXPIRE, TTL_NAMESPACE_DEFAULT})
_NOT_PLAIN, _PLAIN_READS, _PLAIN_WRITES = 0, 1, 2


def _int64(value: object) -> bool:
    return type(value) is int and limits.INT_MIN <= value <= limits.INT_MAX


def _plain_bin(name: object) -> bool:
    # ASCII: the UTF-8 length is the length; anything else is left to `check_bin_name`.
    return type(name) is str and 0 < len(name) <= limits.BIN_NAME_BYTES_MAX and name.isascii()


def _plain_policy(policy: object) -> bool:
    if type(policy) is not WritePolicy:
        return False
    generation, ttl = policy.generation, policy.ttl
    return (
        type(policy.exists) is Exists  # an enum member is a valid value by construction
        and type(policy.gen) is Gen
        and type(generation) is int
        and 0 <= generation <= limits.GENERATION_MAX
        and type(ttl) is int
        and (ttl in _TTL_SENTINELS or 1 <= ttl <= limits.TTL_SECONDS_MAX)
        and type(policy.send_key) is bool
    )


def _plain_kind(ops: Sequence[Op], policy: WritePolicy, user_key: UserKey | None) -> int:
    """_PLAIN_READS or _PLAIN_WRITES if the fast path may run the request, else _NOT_PLAIN."""
    if not 0 < len(ops) <= limits.OPS_PER_REQUEST_MAX:
        return _NOT_PLAIN
    if policy is not DEFAULT_WRITE_POLICY and not _plain_policy(policy):
        return _NOT_PLAIN
    if user_key is not None and type(user_key) not in _PLAIN_KEYS and not _int64(user_key):
        return _NOT_PLAIN
    kind = _PLAIN_READS
    for op in ops:
        if type(op) is not Op or type(op.args) is not tuple:
            return _NOT_PLAIN
        code, name, args = op.code, op.bin, op.args
        if code is _WRITE:
            if len(args) != 1 or not _plain_bin(name):
                return _NOT_PLAIN
            value = args[0]
            if type(value) not in _PLAIN_SCALARS and not _int64(value):
                return _NOT_PLAIN
            kind = _PLAIN_WRITES
        elif code is not _READ or args or not (name is None or _plain_bin(name)):
            return _NOT_PLAIN
    return kind


def _operate_plain(
    existing: Record | None,
    ops: Sequence[Op],
    policy: WritePolicy,
    kind: int,
    *,
    now_ms: int,
    set_name: str,
    user_key: UserKey | None,
    namespace: NamespaceConfig,
) -> Outcome:
    """`_operate_generic`'s outcome for a request `_plain_kind` accepted. Values are never
    changed in place here (WRITE replaces, READ looks), so no copy on write is needed."""
    present = existing is not None and existing.is_live(now_ms)
    results: list[BinResult] = []
    if kind == _PLAIN_READS:
        if not present:
            raise error(ResultCode.RECORD_NOT_FOUND, "read of a record that does not exist")
        assert existing is not None
        _check_stored_key(existing, user_key)
        _plain_reads(existing.bins, ops, results)
        return Outcome(existing, results, False)
    if policy.exists or policy.gen:  # IGNORE is 0 for both: nothing to check
        _check_write_policy(policy, existing, present)
    if existing is None:  # a new digest: no stored key to match, no bins to start from
        bins: dict[str, Any] = {}
    else:
        _check_stored_key(existing, user_key)
        bins = dict(_start_bins(existing, present, policy))
    for op in ops:
        if op.code is _WRITE:
            bins[op.bin] = op.args[0]  # type: ignore[index]  # _plain_kind: a str
        else:
            _plain_reads(bins, (op,), results)
    record = _written(
        existing,
        present,
        bins,
        policy.ttl,
        policy=policy,
        now_ms=now_ms,
        set_name=set_name,
        user_key=user_key,
        namespace=namespace,
    )
    return Outcome(record, results, True)


def _plain_reads(bins: dict[str, Any], ops: Sequence[Op], results: list[BinResult]) -> None:
    for op in ops:
        if op.bin is None:
            results.extend(bins.items())
        else:
            results.append((op.bin, bins.get(op.bin)))


def operate(
    existing: Record | None,
    ops: Sequence[Op],
    policy: WritePolicy,
    *,
    now_ms: int,
    set_name: str,
    user_key: UserKey | None,
    namespace: NamespaceConfig,
) -> Outcome:
    """Apply `ops` to `existing` under `policy` at `now_ms` (see the module's rules)."""
    assert now_ms >= 0, now_ms
    assert isinstance(set_name, str), set_name
    kind = _plain_kind(ops, policy, user_key)
    if kind != _NOT_PLAIN:
        return _operate_plain(
            existing,
            ops,
            policy,
            kind,
            now_ms=now_ms,
            set_name=set_name,
            user_key=user_key,
            namespace=namespace,
        )
    return _operate_generic(
        existing,
        ops,
        policy,
        now_ms=now_ms,
        set_name=set_name,
        user_key=user_key,
        namespace=namespace,
    )
