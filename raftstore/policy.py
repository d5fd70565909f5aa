"""Write policies, with Aerospike's enum values (aerospike-client-c `as_policy.h`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from raftstore.clock import TTL_NAMESPACE_DEFAULT
from raftstore.frozen import fast_init


class Exists(enum.IntEnum):
    IGNORE = 0  # create or update (merge bins)
    CREATE = 1  # create only: RECORD_EXISTS if it exists
    UPDATE = 2  # update only: RECORD_NOT_FOUND if absent
    REPLACE = 3  # replace all bins, only if it exists
    CREATE_OR_REPLACE = 4  # replace all bins, or create


class Gen(enum.IntEnum):
    IGNORE = 0
    EQ = 1  # write only if the record's generation equals the policy's
    GT = 2  # write only if the policy's generation is greater than the record's


@fast_init
@dataclass(frozen=True, slots=True)
class WritePolicy:
    exists: Exists = Exists.IGNORE
    gen: Gen = Gen.IGNORE
    generation: int = 0  # compared with the record's under gen EQ / GT
    ttl: int = TTL_NAMESPACE_DEFAULT  # seconds, or one of the clock.TTL_* sentinels
    send_key: bool = False  # key policy SEND: store the user key with the record


DEFAULT_WRITE_POLICY = WritePolicy()
