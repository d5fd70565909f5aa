"""Every limit of the engine in one place, units last in the names.

Aerospike's numbers where Aerospike has one (its source: `as/include/base/datamodel.h`,
`as/src/base/namespace.c`), so that data that fits there fits here.
"""

from __future__ import annotations

PARTITIONS = 4096  # per namespace; a partition id is the low 12 bits of the digest
DIGEST_BYTES = 20  # RIPEMD-160

NAMESPACE_NAME_BYTES_MAX = 31  # Aerospike: name < 32 bytes
SET_NAME_BYTES_MAX = 63  # Aerospike: name < 64 bytes
BIN_NAME_BYTES_MAX = 15
SETS_PER_NAMESPACE_MAX = 1023  # Aerospike's set-id space
BINS_PER_RECORD_MAX = 32767  # Aerospike's bin count limit (16-bit, signed)
KEY_BYTES_MAX = 1024 * 1024  # a key can never be larger than the largest record

RECORD_BYTES_DEFAULT = 1024 * 1024  # namespace option max-record-size
RECORD_BYTES_MAX = 8 * 1024 * 1024  # the largest max-record-size a namespace may set
VALUE_DEPTH_MAX = 64  # nesting of lists and maps, so a hostile value cannot blow the stack

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

TTL_SECONDS_MAX = 3600 * 24 * 365 * 10  # Aerospike MAX_ALLOWED_TTL: ten years
GENERATION_MAX = 0xFFFF  # 16-bit; wraps to 1, 0 is reserved for "no record"

OPS_PER_REQUEST_MAX = 1024
BATCH_COMMANDS_MAX = 4096  # commands the state machine applies in one store transaction

# The group runtime (raftstore/group.py): group commit and its bounds.
GROUP_QUEUE_COMMANDS_MAX = 4 * BATCH_COMMANDS_MAX  # writes waiting; more -> DEVICE_OVERLOAD
GROUP_READS_WAITING_MAX = 4 * BATCH_COMMANDS_MAX  # linearizable reads waiting for a barrier
# Proposed, unanswered log entries per group. One: the requests that arrive while it is in
# flight make the next entry (every entry costs about as much as a dozen commands).
GROUP_ENTRIES_IN_FLIGHT_MAX = 1
# A batch that could still grow waits up to this long for more requests (unless the last
# entry carried a lone request: `Batcher.full`).
GROUP_LINGER_S = 0.002
# A batch closes before this; a lone command over it is refused (RECORD_TOO_BIG). Below the
# pysyncobj adapter's own ceiling (RaftOptions.entry_bytes_max, about 16 MiB), above the
# largest record.
ENTRY_BYTES_MAX = RECORD_BYTES_MAX + RECORD_BYTES_MAX // 2
EXPIRE_DIGESTS_MAX = 1024  # candidates in one Expire command
EXPIRE_SCAN_ENTRIES_MAX = 65536  # index entries one expiry sweep call looks at
