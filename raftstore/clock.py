"""Time units of the data model, as pure conversions (no clock is read here).

- `now_ms`: Unix time in milliseconds, stamped on a command by the node that proposes it.
- void time: seconds since the citrusleaf epoch (2010-01-01 UTC), 0 = never expires.
- last-update time (lut): Unix milliseconds.
- ttl as a client sees it: seconds left, -1 = never expires.
"""

from __future__ import annotations

CITRUSLEAF_EPOCH_S = 1262304000  # 2010-01-01T00:00:00Z

TTL_NAMESPACE_DEFAULT = 0
TTL_NEVER_EXPIRE = -1
TTL_DONT_UPDATE = -2
TTL_CLIENT_DEFAULT = -3


def citrusleaf_seconds(now_ms: int) -> int:
    return now_ms // 1000 - CITRUSLEAF_EPOCH_S


def void_time_after(now_ms: int, ttl_s: int) -> int:
    """The void time of a record written at `now_ms` to live `ttl_s` seconds (> 0)."""
    assert ttl_s > 0
    return citrusleaf_seconds(now_ms) + ttl_s


def is_expired(void_time: int, now_ms: int) -> bool:
    return void_time != 0 and void_time <= citrusleaf_seconds(now_ms)


def ttl_left(void_time: int, now_ms: int) -> int:
    """Seconds a record has left as the client sees it: -1 never expires, at least 1 else."""
    if void_time == 0:
        return TTL_NEVER_EXPIRE
    return max(void_time - citrusleaf_seconds(now_ms), 1)
