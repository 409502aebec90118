"""Reading the JSON that networked controllers publish: configurable keys, forgiving times."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo


class BadMessage(ValueError):
    """`kind` names the counter; the text says what was wrong, for the log."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


def load(payload: bytes) -> dict:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadMessage("not_json", f"{e}: {payload[:60]!r}") from None
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
    """ISO 8601 (naive = site local time) or epoch seconds/milliseconds; absent = `default`."""
    v = get(doc, path, required=False)
    if v is None:
        return default
    if isinstance(v, bool):
        raise BadMessage("bad_time", f"'{path}' is a boolean")
    if isinstance(v, (int, float)):
        seconds = v / 1000 if v > 1e11 else v
        try:
            return datetime.fromtimestamp(seconds, timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise BadMessage("bad_time", f"'{path}' {v} is not a time") from None
    if isinstance(v, str):
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise BadMessage("bad_time", f"'{path}' {v[:40]!r} is not an ISO 8601 time") from None
        return (t if t.tzinfo else t.replace(tzinfo=tz)).astimezone(timezone.utc)
    raise BadMessage("bad_time", f"'{path}' has type {type(v).__name__}")
