"""Namespace configuration, with Aerospike's option names (as used in the TOML config)."""

from __future__ import annotations

from dataclasses import dataclass

from raftstore import limits
from raftstore.errors import ResultCode, error


@dataclass(frozen=True, slots=True)
class NamespaceConfig:
    name: str
    replication_factor: int = 3  # replication-factor
    partition_groups: int = 2  # partition-groups: Raft groups the 4096 partitions spread over
    strong_consistency: bool = True  # strong-consistency
    commit_to_device: bool = False  # commit-to-device: fsync before acknowledging
    default_ttl_s: int = 0  # default-ttl: 0 = never expire
    max_record_bytes: int = limits.RECORD_BYTES_DEFAULT  # max-record-size
    tomb_raider_period_s: int = 86400  # tomb-raider-period: tombstone age before removal

    def __post_init__(self) -> None:
        check_namespace_name(self.name)
        if not 0 <= self.default_ttl_s <= limits.TTL_SECONDS_MAX:
            raise error(ResultCode.PARAMETER_ERROR, "default-ttl must be 0..10 years in seconds")
        if not 1024 <= self.max_record_bytes <= limits.RECORD_BYTES_MAX:
            raise error(
                ResultCode.PARAMETER_ERROR,
                f"max-record-size must be 1024..{limits.RECORD_BYTES_MAX} bytes",
            )
        if self.tomb_raider_period_s < 0:
            raise error(ResultCode.PARAMETER_ERROR, "tomb-raider-period must be >= 0")
        if not 1 <= self.partition_groups <= limits.PARTITIONS:
            raise error(ResultCode.PARAMETER_ERROR, "partition-groups must be 1..4096")
        if self.replication_factor < 1:
            raise error(ResultCode.PARAMETER_ERROR, "replication-factor must be >= 1")


def check_namespace_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise error(ResultCode.PARAMETER_ERROR, "namespace name must be a non-empty str")
    if len(name.encode("utf-8")) > limits.NAMESPACE_NAME_BYTES_MAX:
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"namespace name {name!r} is over {limits.NAMESPACE_NAME_BYTES_MAX} bytes",
        )
    return name
