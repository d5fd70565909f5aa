"""The verdict of a checker, as Jepsen shapes it.

`valid` is True, False or "unknown". A checker that ran out of time or memory, or met a
history it cannot judge, says "unknown", never True. Composition follows Jepsen: the whole
is False if any part is False, else "unknown" if any part is, else True. Exit statuses are
Maelstrom's: 0 valid, 1 invalid, 2 unknown.

`details` holds JSON-able facts (counts, the failing operation, anomalies); `explanation`
is the same story in sentences for a person.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

Validity: TypeAlias = bool | Literal["unknown"]
UNKNOWN: Literal["unknown"] = "unknown"


@dataclass(frozen=True)
class Result:
    valid: Validity
    checker: str
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    explanation: tuple[str, ...] = ()

    @property
    def exit_status(self) -> int:
        return exit_status(self.valid)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "checker": self.checker,
            "summary": self.summary,
            "details": dict(self.details),
            "explanation": list(self.explanation),
        }


def exit_status(valid: Validity) -> int:
    if valid is True:
        return 0
    if valid is False:
        return 1
    return 2


def merge_validity(parts: Iterable[Validity]) -> Validity:
    seen = list(parts)
    if any(part is False for part in seen):
        return False
    if any(part == UNKNOWN for part in seen):
        return UNKNOWN
    return True


def compose(checker: str, results: Iterable[Result]) -> Result:
    """One result of several checkers' results, valid only if every part is."""
    parts = list(results)
    valid = merge_validity(result.valid for result in parts)
    summary = "; ".join(f"{result.checker}: {result.summary}" for result in parts)
    explanation = tuple(line for result in parts for line in result.explanation)
    details = {result.checker: result.to_json() for result in parts}
    return Result(valid, checker, summary, details, explanation)


def verdict_word(valid: Validity) -> str:
    if valid is True:
        return "valid"
    if valid is False:
        return "INVALID"
    return "unknown"
