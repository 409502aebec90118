"""An AllocationResult as JSON and back, exactly (Decimals as their text), so that a run kept in
the ledger can be printed again when it is signed off without computing the month again (the
readings may have changed since: what was signed must be what is printed)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import fields, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from .model import AllocationResult


def dumps(result: AllocationResult) -> str:
    return json.dumps(_encode(result), ensure_ascii=False, separators=(",", ":"))


def loads(text: str) -> AllocationResult:
    result = _decode(AllocationResult, json.loads(text))
    tz = ZoneInfo(result.timezone)
    # JSON keeps the UTC offset, not the zone: give the site's zone back to the times that matter
    result.start, result.end = result.start.astimezone(tz), result.end.astimezone(tz)
    result.generated_at = result.generated_at.astimezone(tz)
    return result


def _encode(x):
    if is_dataclass(x):
        return {f.name: _encode(getattr(x, f.name)) for f in fields(x)}
    if isinstance(x, (Decimal, datetime, date)):
        return str(x) if isinstance(x, Decimal) else x.isoformat()
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    return x


@lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _decode(tp, v):
    if v is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _decode(next(a for a in args if a is not type(None)), v)
    if is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{f.name: _decode(hints[f.name], v[f.name]) for f in fields(tp) if f.name in v})
    if tp is Decimal:
        return Decimal(v)
    if tp is datetime:
        return datetime.fromisoformat(v)
    if tp is date:
        return date.fromisoformat(v)
    if origin is list:
        return [_decode(args[0], x) for x in v]
    if origin is dict:
        return {k: _decode(args[1], x) for k, x in v.items()}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], x) for x in v)
        return tuple(_decode(a, x) for a, x in zip(args, v))
    return v
