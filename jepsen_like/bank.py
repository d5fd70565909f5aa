"""Jepsen's bank checker: transfers between accounts never create or destroy money.

Theory of operation. `transfer {from, to, amount}` moves money between two accounts; a
`read` returns every account's balance, `{account: balance}`. Only `ok` reads are judged,
each against the first rule it breaks, in Jepsen's order of precedence:

1. `unexpected-key`: an account outside the known set;
2. `nil-balance`: an account without a balance;
3. `wrong-total`: the balances do not sum to the total;
4. `negative-value`: a negative balance (unless negative balances are allowed).

Reads are judged in the order they completed. Accounts and total are given, or taken
from the first `ok` read (as elle-cli does).
Account names read from JSON arrive as strings ("0"); digit strings are taken as ints so
both spellings name one account. No `ok` read at all gives "unknown".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jepsen_like.history import History, Operation, render_value, to_json_value
from jepsen_like.result import UNKNOWN, Result

ERROR_TYPES = ("unexpected-key", "nil-balance", "wrong-total", "negative-value")


@dataclass(frozen=True)
class BankOptions:
    accounts: frozenset[Any] | None = None
    total: int | None = None
    negative_balances: bool = False


def account(name: Any) -> Any:
    if isinstance(name, str) and name.lstrip("-").isdigit():
        return int(name)
    return name


def balances(operation: Operation) -> dict[Any, Any] | None:
    value = operation.value
    if not isinstance(value, Mapping):
        return None
    return {account(name): amount for name, amount in value.items()}


def read_error(
    read: Mapping[Any, Any], accounts: frozenset[Any], total: int, negative_ok: bool
) -> tuple[str, Any] | None:
    """The first rule a read breaks, with the evidence, or None."""
    unexpected = sorted((name for name in read if name not in accounts), key=repr)
    if unexpected:
        return "unexpected-key", unexpected
    missing = sorted((name for name in accounts if read.get(name) is None), key=repr)
    if missing:
        return "nil-balance", missing
    amount = sum(read.values())
    if amount != total:
        return "wrong-total", amount
    negative = sorted((name for name, balance in read.items() if balance < 0), key=repr)
    if negative and not negative_ok:
        return "negative-value", negative
    return None


def _summaries(errors: Iterable[tuple[str, Operation, Any, int]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for kind, operation, evidence, read_total in errors:
        entry = summary.get(kind)
        record = {
            "op": {"index": operation.index, "process": operation.process},
            "value": to_json_value(operation.value),
            "evidence": to_json_value(evidence),
            "total": read_total,
        }
        if entry is None:
            summary[kind] = entry = {
                "count": 0,
                "first": record,
                "lowest": record,
                "highest": record,
            }
        entry["count"] += 1
        entry["last"] = record
        if read_total < entry["lowest"]["total"]:
            entry["lowest"] = record
        if read_total > entry["highest"]["total"]:
            entry["highest"] = record
    return summary


def check_bank(history: History, options: BankOptions | None = None) -> Result:
    options = options or BankOptions()
    reads = [
        (op, found)
        for op in sorted(history.operations, key=lambda op: op.ret or op.call)
        if op.type == "ok" and op.f == "read" and (found := balances(op)) is not None
    ]
    if not reads:
        return Result(UNKNOWN, "bank", "no ok reads of the balances")
    first = reads[0][1]
    accounts = options.accounts if options.accounts is not None else frozenset(first)
    total = (
        options.total
        if options.total is not None
        else sum(amount for amount in first.values() if amount is not None)
    )
    errors: list[tuple[str, Operation, Any, int]] = []
    for operation, read in reads:
        error = read_error(read, accounts, total, options.negative_balances)
        if error is not None:
            read_total = sum(amount for amount in read.values() if amount is not None)
            errors.append((error[0], operation, error[1], read_total))
    details: dict[str, Any] = {
        "accounts": to_json_value(sorted(accounts, key=repr)),
        "total": total,
        "read_count": len(reads),
        "error_count": len(errors),
        "errors": _summaries(errors),
    }
    if not errors:
        return Result(True, "bank", f"{len(reads)} reads, all consistent", details)
    kind, operation, _, _ = errors[0]
    details["first_error"] = {"type": kind, "index": operation.index}
    counts = ", ".join(f"{k} x{v['count']}" for k, v in details["errors"].items())
    explanation = tuple(
        f"{operation.describe()}: {kind} ({render_value(evidence)}; expected total {total})"
        for kind, operation, evidence, _ in errors[:8]
    )
    return Result(
        False, "bank", f"{len(errors)} of {len(reads)} reads wrong: {counts}", details, explanation
    )
