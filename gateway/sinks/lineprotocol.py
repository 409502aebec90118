"""InfluxDB line protocol: escaping and formatting, nothing about which measurements exist.

Timestamps are written in milliseconds (`precision=ms`): readings are seconds apart, and every
engine we write to (InfluxDB 1.x/2.x/3.x, VictoriaMetrics) keeps milliseconds exactly, so a
point read back equals the point written and a resend overwrites instead of duplicating.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Mapping

PRECISION = "ms"

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": " "})
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " "})
_STRING = str.maketrans({'"': r'\"', "\\": "\\\\", "\n": " "})


def field_value(v: Any) -> str | None:
    """Line-protocol text of one field value, or None when it cannot be written (NaN, inf)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else None
    if isinstance(v, Decimal):
        # An exact counter: its decimal text as a float literal, never through binary rounding.
        return format(v, "f") if v.is_finite() else None
    return '"' + str(v).translate(_STRING) + '"'


def line(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], ts_ms: int) -> str | None:
    """One point; tags with empty values are left out (InfluxDB refuses them). None if no field."""
    parts = [measurement.translate(_MEASUREMENT)]
    for k in sorted(tags):  # sorted tags are what InfluxDB prefers (and cheaper to index)
        v = tags[k]
        if v is not None and v != "":
            parts.append(f"{k.translate(_KEY)}={str(v).translate(_KEY)}")
    body = []
    for k, v in fields.items():
        text = field_value(v)
        if text is not None:
            body.append(f"{k.translate(_KEY)}={text}")
    if not body:
        return None
    return f"{','.join(parts)} {','.join(body)} {ts_ms}"
