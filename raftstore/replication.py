"""The seam between a partition group and its Raft log: `ReplicatedLog`.

The group runtime (`raftstore.group`) proposes opaque entries and learns their outcome; the
log calls back `apply(log_index, entry)` on every replica, in log order, and hands the value
`apply` returned on the proposing replica to the proposer's callback.

Two implementations pass one conformance suite: `raftstore.raft_log` (pysyncobj, the only
module that imports it) and `raftstore.fake_log` (deterministic, in memory, for tests that
need leader changes, lost acknowledgements, duplicate deliveries and restarts on demand).

Outcome of a proposal, as the proposer sees it:
- APPLIED: committed and applied here; `value` is what `apply` returned;
- REJECTED: definitely not applied (this replica is not the leader, the queue is full, the
  entry was discarded by a new leader);
- UNKNOWN: it may or may not be applied (leadership changed while it was in flight, timeout).
  The caller must report it as in doubt, never as failed.

`apply` must never raise: an exception inside it would make pysyncobj retry the same entry
forever. Errors become values.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Outcome(enum.Enum):
    APPLIED = "applied"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Proposal:
    outcome: Outcome
    value: Any = None
    reason: str = ""


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class LogStatus:
    role: Role
    term: int
    leader: str | None
    commit_index: int
    applied_index: int
    log_entries: int


ApplyFn = Callable[[int, bytes], Any]
ProposalCallback = Callable[[Proposal], None]


class ReplicatedLog(Protocol):
    """One Raft group as one replica sees it."""

    @property
    def node_id(self) -> str: ...

    def propose(self, entry: bytes, on_done: ProposalCallback) -> None:
        """Append `entry` if this replica leads; `on_done` is called exactly once."""

    def is_leader(self) -> bool:
        """This replica believes it leads. A hint for routing, never a proof for reads."""

    def leader(self) -> str | None: ...

    def status(self) -> LogStatus: ...

    def transfer_leadership(self, to: str) -> None: ...

    def close(self) -> None: ...
