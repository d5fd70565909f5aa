"""Workloads: what an operation does to the database, and which checker judges the history.

Rules:
- A workload's client speaks to a `Database`, the slice of the SDK's `client.Client` it
  uses (get, put, operate, scan, and `transaction(timeout)`: a context manager giving a
  `Transaction`, which commits on a normal exit and aborts when an exception leaves it);
  tests pass a fake of the same shape.
- `invoke(database, invocation)` performs one operation and returns its `Completion`:
  - `ok`: it happened; for reads the value is what was read (a missing record reads None);
  - `fail`: it definitely did not happen: the SDK says the error is definite and, for a
    write, not in doubt (`exception.in_doubt` False), or a cas's compare did not hold (the
    value read differs, or the generation moved before the write: nothing was written);
  - `info`: anything else: a timeout, a lost connection, an in-doubt write, an error the
    table calls indeterminate. Never `fail` for those.
  Errors that are not the database's (our own bugs) propagate: the run then crashes.
- register: records `("test", "jl-register", "k<key>")` with one bin `v`. A cas is atomic on
  the server: read the value and generation; if the value is not the expected one, `fail`;
  else `operate` a write of the new value under the policy generation-EQ the generation
  read, which the server applies only if nobody wrote since. The history records it as
  `cas [old new]`. A failure of the cas's read that is not definite (a timeout) is `info`,
  although nothing was written then: the rule above, kept without exceptions. Every record
  carries the `key` field, so the history is checked per key with `--model cas-register`
  (no `--independent` needed).
- set: each add creates its own record `("test", "jl-set", element)` with bin `v` (exists
  CREATE), spreading the adds over every partition group; an add answered "record exists"
  is `info` (only this add's earlier attempt can have made it). A read, now and then during
  the run and at the end, is a scan of the set, returning the sorted elements. Checked with
  `--model set`; the final reads after the heal are the ground truth.
- Transactions (bank, list-append): one operation is one transaction. An error raised
  before the commit (a read inside the transaction; the transaction is then aborted, its
  buffered writes never sent) is judged as a read's: `fail` if definite, else `info`. An
  error of the commit itself (raised on leaving the `with` block) is judged as a write's:
  `fail` only if definite and not in doubt (a conflict, 120 blocked or 121 version
  mismatch, is such a `fail`: the transaction was aborted, nothing applied), else `info`.
  A transaction that decides not to write (a transfer without the funds) raises `Declined`
  inside the block, which aborts it: `fail`. Reads use `t.get`, one key at a time: an
  absent record (RecordNotFound, caught inside the block) reads as missing and the
  transaction goes on.
- bank: `accounts` records `("test", "jl-bank", "a<i>")` with bin `balance`, made once by
  `setup` before the workers start (one transaction; a retry after an unknown outcome
  first reads which accounts exist, and creates only the missing ones, all at the initial
  balance; nothing transfers before the setup is done, so the total is `accounts *
  balance`). Accounts are named by their number `i` in the history, as in Jepsen. A
  `transfer {from, to, amount}` reads both balances and writes both, or `fail`s with
  `insufficient-funds` without writing. A `read` is one transaction reading every account,
  `{account: balance}` (None for a missing one). Final reads after the heal. Checked with
  `--model bank`, given the accounts and the total.
- list-append: records `("test", "jl-append", "k<key>")` with bin `v`, a list. A `txn`
  performs its micro-ops in order: `["r", k, None]` reads the list (which `t.get` shows
  with the transaction's own appends; an absent record reads `[]`), `["append", k, e]` is a
  `list_append` by `t.operate`. The `ok` value is the micro-ops with the reads filled in;
  `fail` and `info` keep the invocation's. Checked with `--model list-append` (Elle,
  strict-serializable by default).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import client
from client import list_operations, operations
from jepsen_like.check import CheckOptions
from jepsen_like.generator import (
    BANK_ACCOUNTS_DEFAULT,
    BANK_READ_FRACTION_DEFAULT,
    BANK_TRANSFER_MAX_DEFAULT,
    LIST_APPEND_APPENDS_PER_KEY_DEFAULT,
    LIST_APPEND_KEYS_ACTIVE_DEFAULT,
    LIST_APPEND_MICRO_OPS_MAX_DEFAULT,
    REGISTER_KEYS_ACTIVE_DEFAULT,
    REGISTER_OPS_PER_KEY_DEFAULT,
    SET_READ_FRACTION_DEFAULT,
    BankGenerator,
    Generator,
    Invocation,
    ListAppendGenerator,
    RegisterGenerator,
    SetGenerator,
)
from jepsen_like.history import freeze
from raftstore.errors import RaftstoreError, ResultCode
from raftstore.ops import Op

Outcome = Literal["ok", "fail", "info"]
NAMESPACE = "test"
REGISTER_SET = "jl-register"
SET_SET = "jl-set"
BANK_SET = "jl-bank"
APPEND_SET = "jl-append"
BIN = "v"
BALANCE_BIN = "balance"
BANK_BALANCE_INITIAL = 100
TXN_TIMEOUT_S = 5.0  # also bounds how long a vanished coordinator's locks block others
NAMES = ("register", "set", "bank", "list-append")

RecordTuple = tuple[Any, dict[str, int], dict[str, Any]]


class Transaction(Protocol):
    """The part of the SDK's transaction (`with client.transaction(...) as t`) used here:
    `get` raises RecordNotFound for an absent record (the absence is still part of what the
    transaction read) and sees the transaction's own writes; `put` and `operate` join it."""

    def get(self, key: object) -> RecordTuple: ...

    def put(self, key: object, bins: Mapping[str, Any]) -> None: ...

    def operate(self, key: object, ops: Sequence[Op]) -> RecordTuple: ...


class Database(Protocol):
    """The part of `client.Client` the workloads use."""

    def get(
        self, key: object, policy: Mapping[str, Any] | None = None
    ) -> tuple[Any, dict[str, int], dict[str, Any]]: ...

    def put(
        self,
        key: object,
        bins: Mapping[str, Any],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> None: ...

    def operate(
        self,
        key: object,
        ops: Sequence[Op],
        meta: Mapping[str, int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[str, int], dict[str, Any]]: ...

    def scan(
        self,
        namespace: str,
        set: str | None = None,
        partitions: Sequence[int] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Iterator[tuple[Any, dict[str, int], dict[str, Any]]]: ...

    def transaction(self, timeout: float) -> AbstractContextManager[Transaction]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Completion:
    type: Outcome
    value: Any = None
    error: str | None = None


def error_completion(error: RaftstoreError, value: Any, *, wrote: bool) -> Completion:
    """`fail` for a definite error (and, if a write was sent, one not in doubt); else `info`."""
    definite = error.definite and not (wrote and error.in_doubt)
    return Completion("fail" if definite else "info", value, str(error))


def io_completion(error: OSError, value: Any) -> Completion:
    """A socket error that escaped the SDK: the outcome is unknown."""
    return Completion("info", value, f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class Workload:
    """A workload: its generator, its client's `invoke`, its final reads and its checker.
    `setup`, when given, prepares the database before the workers start: one attempt,
    which raises `RaftstoreError` or `OSError` when it should be tried again."""

    name: str
    model: str
    generator: Generator
    invoke: Callable[[Database, Invocation], Completion]
    final_invocations: tuple[Invocation, ...] = ()
    check_options: CheckOptions = field(default_factory=CheckOptions)
    setup: Callable[[Database], None] | None = None


# -- register ---------------------------------------------------------------------------------


def register_key(key: Hashable) -> tuple[str, str, str]:
    return (NAMESPACE, REGISTER_SET, f"k{key}")


def _read_register(database: Database, key: Hashable) -> tuple[Any, int]:
    """The register's value and generation; (None, 0) when the record does not exist."""
    try:
        _, meta, bins = database.get(register_key(key))
    except RaftstoreError as error:
        if error.code == ResultCode.RECORD_NOT_FOUND:
            return None, 0
        raise
    return freeze(bins.get(BIN)), meta["gen"]


def invoke_register(database: Database, invocation: Invocation) -> Completion:
    f, key, value = invocation.f, invocation.key, invocation.value
    if f == "read":
        try:
            found, _ = _read_register(database, key)
        except RaftstoreError as error:
            return error_completion(error, None, wrote=False)
        except OSError as error:
            return io_completion(error, None)
        return Completion("ok", found)
    if f == "write":
        try:
            database.put(register_key(key), {BIN: value})
        except RaftstoreError as error:
            return error_completion(error, value, wrote=True)
        except OSError as error:
            return io_completion(error, value)
        return Completion("ok", value)
    if f == "cas":
        return _cas(database, key, value)
    raise ValueError(f"register has no operation {f!r}")


def _cas(database: Database, key: Hashable, value: tuple[Any, Any]) -> Completion:
    expected, new = value
    try:
        current, generation = _read_register(database, key)
    except RaftstoreError as error:
        return error_completion(error, value, wrote=False)
    except OSError as error:
        return io_completion(error, value)
    if current != expected or generation == 0:
        return Completion("fail", value, f"value-mismatch: read {current!r}")
    try:
        database.operate(
            register_key(key),
            [operations.write(BIN, new)],
            meta={"gen": generation},
            policy={"gen": client.POLICY_GEN_EQ},
        )
    except RaftstoreError as error:
        if error.code == ResultCode.GENERATION_ERROR and not error.in_doubt:
            return Completion("fail", value, f"generation-mismatch: {error.msg}")
        return error_completion(error, value, wrote=True)
    except OSError as error:
        return io_completion(error, value)
    return Completion("ok", value)


def register_workload(
    keys_active: int = REGISTER_KEYS_ACTIVE_DEFAULT,
    ops_per_key: int = REGISTER_OPS_PER_KEY_DEFAULT,
) -> Workload:
    return Workload(
        name="register",
        model="cas-register",
        generator=RegisterGenerator(keys_active, ops_per_key),
        invoke=invoke_register,
    )


# -- set --------------------------------------------------------------------------------------


def invoke_set(database: Database, invocation: Invocation) -> Completion:
    if invocation.f == "add":
        element = invocation.value
        try:
            database.put(
                (NAMESPACE, SET_SET, element),
                {BIN: element},
                policy={"exists": client.POLICY_EXISTS_CREATE},
            )
        except RaftstoreError as error:
            if error.code == ResultCode.RECORD_EXISTS:
                # Elements are unique: the record can only be this add's, applied by an
                # earlier attempt. Not a failure; not provably ok either.
                return Completion("info", element, str(error))
            return error_completion(error, element, wrote=True)
        except OSError as error:
            return io_completion(error, element)
        return Completion("ok", element)
    if invocation.f == "read":
        try:
            elements = sorted(bins[BIN] for _, _, bins in database.scan(NAMESPACE, SET_SET))
        except RaftstoreError as error:
            return error_completion(error, None, wrote=False)
        except OSError as error:
            return io_completion(error, None)
        return Completion("ok", tuple(elements))
    raise ValueError(f"set has no operation {invocation.f!r}")


def set_workload(read_fraction: float = SET_READ_FRACTION_DEFAULT) -> Workload:
    return Workload(
        name="set",
        model="set",
        generator=SetGenerator(read_fraction),
        invoke=invoke_set,
        final_invocations=(Invocation("read"),),
    )


# -- transactions -----------------------------------------------------------------------------


class Declined(Exception):
    """Raised inside a transaction that decides not to write: it aborts, the outcome `fail`."""


def transact(
    database: Database,
    attempted: Any,
    body: Callable[[Transaction], Any],
) -> Completion:
    """Run `body` in one transaction; `ok` with what it returns, or the outcome of its error
    by the module rules (`attempted` is the value recorded then)."""
    committing = False
    result: Any = None
    try:
        with database.transaction(timeout=TXN_TIMEOUT_S) as transaction:
            result = body(transaction)
            committing = True  # from here on, an error is the commit's
    except Declined as declined:
        return Completion("fail", attempted, str(declined))
    except RaftstoreError as error:
        return error_completion(error, attempted, wrote=committing)
    except OSError as error:
        return io_completion(error, attempted)
    return Completion("ok", result)


def read_bins(transaction: Transaction, key: object) -> dict[str, Any] | None:
    """The record's bins as the transaction sees them; None when it does not exist."""
    try:
        _, _, bins = transaction.get(key)
    except RaftstoreError as error:
        if error.code == ResultCode.RECORD_NOT_FOUND:
            return None
        raise
    return bins


# -- bank -------------------------------------------------------------------------------------


def account_key(account: int) -> tuple[str, str, str]:
    return (NAMESPACE, BANK_SET, f"a{account}")


def set_up_bank(database: Database, accounts: int, balance: int) -> None:
    """Create the accounts that do not exist yet, at `balance` each, in one transaction.
    Any error propagates: the caller tries again (a new attempt reads what exists first)."""
    with database.transaction(timeout=TXN_TIMEOUT_S) as transaction:
        for account in range(accounts):
            if read_bins(transaction, account_key(account)) is None:
                transaction.put(account_key(account), {BALANCE_BIN: balance})


def _balance(bins: Mapping[str, Any] | None) -> Any:
    return None if bins is None else bins.get(BALANCE_BIN)


def invoke_bank(database: Database, invocation: Invocation, accounts: int) -> Completion:
    if invocation.f == "read":
        return _read_accounts(database, accounts)
    if invocation.f == "transfer":
        return _transfer(database, invocation.value)
    raise ValueError(f"bank has no operation {invocation.f!r}")


def _read_accounts(database: Database, accounts: int) -> Completion:
    def read(transaction: Transaction) -> dict[int, Any]:
        return {
            account: _balance(read_bins(transaction, account_key(account)))
            for account in range(accounts)
        }

    return transact(database, None, read)


def _transfer(database: Database, value: Mapping[str, Any]) -> Completion:
    source, target, amount = value["from"], value["to"], value["amount"]

    def move(transaction: Transaction) -> Mapping[str, Any]:
        source_balance = _balance(read_bins(transaction, account_key(source)))
        target_balance = _balance(read_bins(transaction, account_key(target)))
        if not isinstance(source_balance, int) or not isinstance(target_balance, int):
            raise Declined(f"no balance: read {source_balance!r} and {target_balance!r}")
        if source_balance < amount:
            raise Declined(f"insufficient-funds: {source_balance} < {amount}")
        transaction.put(account_key(source), {BALANCE_BIN: source_balance - amount})
        transaction.put(account_key(target), {BALANCE_BIN: target_balance + amount})
        return value

    return transact(database, value, move)


def bank_workload(
    accounts: int = BANK_ACCOUNTS_DEFAULT,
    balance: int = BANK_BALANCE_INITIAL,
    transfer_max: int = BANK_TRANSFER_MAX_DEFAULT,
    read_fraction: float = BANK_READ_FRACTION_DEFAULT,
) -> Workload:
    if balance < 0:
        raise ValueError(f"balance must be >= 0, not {balance}")
    return Workload(
        name="bank",
        model="bank",
        generator=BankGenerator(accounts, transfer_max, read_fraction),
        invoke=lambda database, invocation: invoke_bank(database, invocation, accounts),
        final_invocations=(Invocation("read"),),
        check_options=CheckOptions(accounts=frozenset(range(accounts)), total=accounts * balance),
        setup=lambda database: set_up_bank(database, accounts, balance),
    )


# -- list-append ------------------------------------------------------------------------------


def append_key(key: Hashable) -> tuple[str, str, str]:
    return (NAMESPACE, APPEND_SET, f"k{key}")


def _read_list(transaction: Transaction, key: Hashable) -> tuple[Any, ...]:
    """The key's list as this transaction sees it; () when the record does not exist."""
    bins = read_bins(transaction, append_key(key))
    return tuple((bins or {}).get(BIN) or ())


def invoke_list_append(database: Database, invocation: Invocation) -> Completion:
    if invocation.f != "txn":
        raise ValueError(f"list-append has no operation {invocation.f!r}")
    micro_ops: tuple[tuple[str, Hashable, Any], ...] = invocation.value

    def perform(transaction: Transaction) -> tuple[tuple[str, Hashable, Any], ...]:
        done: list[tuple[str, Hashable, Any]] = []
        for f, key, element in micro_ops:
            if f == "r":
                done.append(("r", key, _read_list(transaction, key)))
            elif f == "append":
                transaction.operate(append_key(key), [list_operations.list_append(BIN, element)])
                done.append(("append", key, element))
            else:
                raise ValueError(f"list-append has no micro-op {f!r}")
        return tuple(done)

    return transact(database, micro_ops, perform)


def list_append_workload(
    keys_active: int = LIST_APPEND_KEYS_ACTIVE_DEFAULT,
    micro_ops_max: int = LIST_APPEND_MICRO_OPS_MAX_DEFAULT,
    appends_per_key: int = LIST_APPEND_APPENDS_PER_KEY_DEFAULT,
) -> Workload:
    return Workload(
        name="list-append",
        model="list-append",
        generator=ListAppendGenerator(keys_active, micro_ops_max, appends_per_key),
        invoke=invoke_list_append,
    )


def workload_named(
    name: str,
    *,
    keys_active: int = REGISTER_KEYS_ACTIVE_DEFAULT,
    ops_per_key: int = REGISTER_OPS_PER_KEY_DEFAULT,
) -> Workload:
    """The workload `name`; `keys_active` and `ops_per_key` are the register's."""
    if name == "register":
        return register_workload(keys_active, ops_per_key)
    if name == "set":
        return set_workload()
    if name == "bank":
        return bank_workload()
    if name == "list-append":
        return list_append_workload()
    raise ValueError(f"workload {name!r} is not one of {', '.join(NAMES)}")
