"""InfluxDB line protocol: escaping and formatting, nothing about which measurements exist.

Timestamps are written in milliseconds (`precision=ms`): readings are seconds apart, and every
engine we write to (InfluxDB 1.x/2.x/3.x, VictoriaMetrics) keeps milliseconds exactly, so a
point read back equals the point written and a resend overwrites instead of duplicating.

Escaping, as the engines read it (checked against a real InfluxDB 1.x by tests/test_influx.py):
a measurement escapes comma and space; tag keys, tag values and field keys escape comma, equals
sign and space; string field values escape double quote and backslash. A backslash in a name or
tag value stays as it is: InfluxDB 1.x/2.x read it literally, but before another backslash, an
escaped character or a double quote (or at the end) they read it differently from each other
(a field key's `\\"` is `"`) and from InfluxDB 3 and VictoriaMetrics, which take `\\\\` for one
backslash. So such a text, and a newline (which ends the point), cannot be written: `line()`
refuses the point (`Unwritable`) rather than write a point whose tags mean something else.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from decimal import Decimal
from typing import Any, Mapping

PRECISION = "ms"

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ "})
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING = str.maketrans({'"': r'\"', "\\": "\\\\", "\n": " "})
# A newline, or a backslash the engines would not all read as itself.
_UNWRITABLE = re.compile(r'\n|\\(?=[\\,= "]|\Z)')
# InfluxDB 1.x skips tabs and NULs before the first field key (as it does spaces).
_FIELD_KEY_START = ("\t", "\0")


class Unwritable(ValueError):
    """A name or tag value that line protocol cannot carry; the text says which and why."""


def _checked(text: str, what: str) -> str:
    bad = _UNWRITABLE.search(text)
    if bad:
        why = "a newline" if bad.group() == "\n" else 'a backslash before \\ , = " or a space, or at the end'
        shown = text[:40] + ("…" if len(text) > 40 else "")
        raise Unwritable(f"{what} {shown!r} has {why}, which line protocol cannot carry")
    return text


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
    return _checked(k, "key").translate(_KEY)


@lru_cache(maxsize=4096)
def _field_key(k: str) -> str:
    if k.startswith(_FIELD_KEY_START):
        raise Unwritable(f"field key {k[:40]!r} starts with a tab or NUL, which line protocol cannot carry")
    return _key(k)


@lru_cache(maxsize=65536)
def series(measurement: str, tags: tuple[tuple[str, Any], ...]) -> str:
    """Measurement and sorted tags (sorted is what InfluxDB prefers); empty tags left out.
    Raises Unwritable."""
    parts = [_checked(measurement, "measurement").translate(_MEASUREMENT)]
    for k, v in sorted(tags):
        if v is not None and v != "":
            parts.append(f"{_key(k)}={_checked(str(v), f'tag {k}').translate(_KEY)}")
    return ",".join(parts)


def line(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], ts_ms: int) -> str | None:
    """One point, or None if it has no field that can be written. Raises Unwritable when a name
    or a tag value cannot be written (see the module's text)."""
    body = []
    for k, v in fields.items():
        text = field_value(v)
        if text is not None:
            body.append(f"{_field_key(k)}={text}")
    if not body:
        return None
    return f"{series(measurement, tuple(tags.items()))} {','.join(body)} {ts_ms}"
