"""InfluxDB line protocol: escaping and formatting, nothing about which measurements exist.

Timestamps are written in milliseconds (`precision=ms`): readings are seconds apart, and every
engine we write to (InfluxDB 1.x/2.x/3.x, VictoriaMetrics) keeps milliseconds exactly, so a
point read back equals the point written and a resend overwrites instead of duplicating.
"""

from __future__ import annotations

import math
from functools import lru_cache
from decimal import Decimal
from typing import Any, Mapping

PRECISION = "ms"

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": " "})
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " "})
_STRING = str.maketrans({'"': r'\"', "\\": "\\\\", "\n": " "})


def field_value(v: Any) -> str | None:
    """Line-protocol text of one field value, or None when it cannot be written (NaN, inf)."""
    t = type(v)
    if t is float:
        return repr(v) if math.isfinite(v) else None
    if t is Decimal:
        # An exact counter: its decimal text as a float literal, never through binary rounding.
        return format(v, "f") if v.is_finite() else None
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return f"{v}i"
    if isinstance(v, float):
        return field_value(float(v))
    return '"' + str(v).translate(_STRING) + '"'


@lru_cache(maxsize=4096)
def _key(k: str) -> str:
    return k.translate(_KEY)


@lru_cache(maxsize=65536)
def series(measurement: str, tags: tuple[tuple[str, Any], ...]) -> str:
    """Measurement and sorted tags (sorted is what InfluxDB prefers); empty tags left out."""
    parts = [measurement.translate(_MEASUREMENT)]
    for k, v in sorted(tags):
        if v is not None and v != "":
            parts.append(f"{_key(k)}={str(v).translate(_KEY)}")
    return ",".join(parts)


def line(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], ts_ms: int) -> str | None:
    """One point, or None if it has no field that can be written."""
    body = []
    for k, v in fields.items():
        text = field_value(v)
        if text is not None:
            body.append(f"{_key(k)}={text}")
    if not body:
        return None
    return f"{series(measurement, tuple(tags.items()))} {','.join(body)} {ts_ms}"
