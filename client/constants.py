"""The official client's policy and TTL constants, with the official numbers.

`client.POLICY_EXISTS_CREATE` here equals `aerospike.POLICY_EXISTS_CREATE` there, so policy
dicts written for the official client mean the same here. The numbers come from the engine's
own enums (`raftstore.policy`, `raftstore.wire.ReadMode`, `raftstore.clock`), so the SDK and
the server can never disagree about them.
"""

from __future__ import annotations

from raftstore import clock
from raftstore.policy import Exists, Gen
from raftstore.wire import ReadMode

POLICY_EXISTS_IGNORE = int(Exists.IGNORE)
POLICY_EXISTS_CREATE = int(Exists.CREATE)
POLICY_EXISTS_UPDATE = int(Exists.UPDATE)
POLICY_EXISTS_REPLACE = int(Exists.REPLACE)
POLICY_EXISTS_CREATE_OR_REPLACE = int(Exists.CREATE_OR_REPLACE)

POLICY_GEN_IGNORE = int(Gen.IGNORE)
POLICY_GEN_EQ = int(Gen.EQ)
POLICY_GEN_GT = int(Gen.GT)

POLICY_KEY_DIGEST = 0
POLICY_KEY_SEND = 1

POLICY_READ_MODE_SC_SESSION = int(ReadMode.SESSION)
POLICY_READ_MODE_SC_LINEARIZE = int(ReadMode.LINEARIZE)

TTL_NAMESPACE_DEFAULT = clock.TTL_NAMESPACE_DEFAULT
TTL_NEVER_EXPIRE = clock.TTL_NEVER_EXPIRE
TTL_DONT_UPDATE = clock.TTL_DONT_UPDATE
TTL_CLIENT_DEFAULT = clock.TTL_CLIENT_DEFAULT
