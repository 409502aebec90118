"""Reading the JSON that networked controllers publish: configurable keys, forgiving times.

Everything here reads input from outside: whatever a payload makes it raise is a `BadMessage`
(bad input, counted), never another exception. Texts for the log never quote the payload
itself (it may hold a card number): they give its size, a masked preview or a key's name.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

# A controller's time outside these years is garbage, and later arithmetic in local time
# (tariffs, rules, reports) could overflow near the ends of datetime's range.
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)

# What a value can make parsing raise. Anything else (AttributeError, NameError ...) is a bug
# in the gateway and stays visible as one (the MQTT link logs it with its traceback).
_INPUT_ERRORS = (ArithmeticError, LookupError, RecursionError, TypeError, ValueError, OSError)


class BadMessage(ValueError):
    """`kind` names the counter; the text says what was wrong, for the log."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


@contextmanager
def reading():
    """Around the parsing of one payload: what the payload makes it raise is bad input."""
    try:
        yield
    except BadMessage:
        raise
    except _INPUT_ERRORS as e:
        raise BadMessage("unreadable", f"{type(e).__name__}: {masked(str(e))}") from None


def masked(text: str | bytes, keep: int = 40) -> str:
    """A preview safe for the log: letters and digits (a card number, a name) become '*',
    the punctuation that shows the shape stays; at most `keep` characters."""
    if isinstance(text, bytes):
        text = text[:4 * keep].decode("utf-8", "replace")
    out = "".join("*" if c.isalnum() else c for c in text[:keep])
    return repr(out + ("…" if len(text) > keep else ""))


def shown(value: object, keep: int = 40) -> str:
    """A value from the payload that is no card number (a door, a reader), quoted and cut."""
    text = str(value)
    return repr(text[:keep] + ("…" if len(text) > keep else ""))


def load(payload: bytes) -> dict:
    try:
        doc = json.loads(payload)
    except RecursionError:
        raise BadMessage("not_json", f"nested too deeply ({len(payload)} bytes)") from None
    except (UnicodeDecodeError, ValueError) as e:
        # the error's text says where (line, column) and never quotes the payload
        raise BadMessage("not_json", f"{e}; {len(payload)} bytes, shape {masked(payload)}") from None
    if not isinstance(doc, dict):
        raise BadMessage("wrong_type", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def get(doc: dict, path: str, required: bool = True):
    """`a.b.c` walks nested objects."""
    cur = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if required:
                raise BadMessage("missing_key", f"no '{path}'")
            return None
        cur = cur[part]
    return cur


def text(doc: dict, path: str, required: bool = True) -> str | None:
    v = get(doc, path, required)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise BadMessage("wrong_type", f"'{path}' should be text or a number, got {type(v).__name__}")
    return str(v)


def timestamp(doc: dict, path: str, tz: ZoneInfo, default: datetime) -> datetime:
    """ISO 8601 (naive = site local time) or epoch seconds/milliseconds; absent = `default`.
    A time outside 2000-2099 is refused."""
    v = get(doc, path, required=False)
    if v is None:
        return default
    if isinstance(v, bool):
        raise BadMessage("bad_time", f"'{path}' is a boolean")
    if isinstance(v, (int, float)):
        try:
            t = datetime.fromtimestamp(v / 1000 if v > 1e11 else v, timezone.utc)
        except (ArithmeticError, OSError, ValueError):  # too large for a float, inf, nan
            raise BadMessage("bad_time", f"'{path}' is a number that is no time") from None
    elif isinstance(v, str):
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00"))
            t = (t if t.tzinfo else t.replace(tzinfo=tz)).astimezone(timezone.utc)
        except (ArithmeticError, ValueError):  # 9999-12-31T23:59:59-23:59 is past datetime's end in UTC
            raise BadMessage("bad_time", f"'{path}' {shown(v)} is not an ISO 8601 time") from None
    else:
        raise BadMessage("bad_time", f"'{path}' has type {type(v).__name__}")
    if not EARLIEST <= t < LATEST:
        raise BadMessage("bad_time", f"'{path}' {t.isoformat()} is outside {EARLIEST.year}-{LATEST.year - 1}")
    return t
