"""Bin values and names: what may be stored, checked before anything is written.

Allowed values: int (signed 64-bit), float, str, bytes, bool, list, dict (map keys: str, int
or bytes), `GeoJSON`, nested up to `VALUE_DEPTH_MAX`. `None` as a written value means
"remove this bin". Everything else is a PARAMETER_ERROR with a message naming the bin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from raftstore import limits
from raftstore.errors import ResultCode, error


@dataclass(frozen=True, slots=True)
class GeoJSON:
    """A GeoJSON value, kept as its JSON text (Aerospike stores and returns the text)."""

    text: str

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> GeoJSON:
        return cls(json.dumps(value, separators=(",", ":"), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.text)
        return parsed


_GEO_TYPES = frozenset(
    {
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "AeroCircle",
        "GeometryCollection",
        "Feature",
        "FeatureCollection",
    }
)


def check_geojson(value: GeoJSON) -> None:
    try:
        parsed = json.loads(value.text)
    except (ValueError, TypeError) as exc:
        raise error(ResultCode.INVALID_GEOJSON, f"GeoJSON is not JSON: {exc}") from None
    if not isinstance(parsed, dict) or parsed.get("type") not in _GEO_TYPES:
        raise error(ResultCode.INVALID_GEOJSON, "GeoJSON needs an object with a known 'type'")


def check_bin_name(name: object) -> str:
    if not isinstance(name, str):
        raise error(ResultCode.PARAMETER_ERROR, f"bin name must be str, not {type(name).__name__}")
    if len(name.encode("utf-8")) > limits.BIN_NAME_BYTES_MAX:
        raise error(
            ResultCode.BIN_NAME_TOO_LONG,
            f"bin name {name!r} is over {limits.BIN_NAME_BYTES_MAX} bytes",
        )
    if not name:
        raise error(ResultCode.PARAMETER_ERROR, "bin name is empty")
    return name


def check_value(value: object, bin_name: str = "?", depth: int = 0) -> None:
    """Raise PARAMETER_ERROR (or INVALID_GEOJSON) unless `value` can be stored."""
    if depth > limits.VALUE_DEPTH_MAX:
        raise error(ResultCode.PARAMETER_ERROR, f"bin {bin_name!r}: nested deeper than allowed")
    if isinstance(value, bool | float | str | bytes):
        return
    if isinstance(value, int):
        if not limits.INT_MIN <= value <= limits.INT_MAX:
            raise error(ResultCode.PARAMETER_ERROR, f"bin {bin_name!r}: int out of 64-bit range")
        return
    if isinstance(value, GeoJSON):
        check_geojson(value)
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_value(item, bin_name, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            check_map_key(key, bin_name)
            check_value(item, bin_name, depth + 1)
        return
    raise error(
        ResultCode.PARAMETER_ERROR,
        f"bin {bin_name!r}: unsupported value type {type(value).__name__}",
    )


def check_map_key(key: object, bin_name: str = "?") -> None:
    if isinstance(key, bool) or not isinstance(key, str | int | bytes):
        raise error(
            ResultCode.PARAMETER_ERROR,
            f"bin {bin_name!r}: map keys must be str, int or bytes, not {type(key).__name__}",
        )
    if isinstance(key, int) and not limits.INT_MIN <= key <= limits.INT_MAX:
        raise error(ResultCode.PARAMETER_ERROR, f"bin {bin_name!r}: map key out of 64-bit range")
