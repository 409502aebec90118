"""The one source of time. Everything that needs "now" asks a Clock, so replay can swap it."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone


class Clock:
    """Wall time (timezone-aware UTC) for timestamps, monotonic time for deadlines."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


REAL_CLOCK = Clock()


def to_us(ts: datetime) -> int:
    """UTC microseconds since the epoch, exact (no float rounding)."""
    delta = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)
