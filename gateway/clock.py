"""The one source of time. Everything that needs "now" asks a Clock, so replay can swap it."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone


class Clock:
    """Wall time (timezone-aware UTC) for timestamps, monotonic time for deadlines.

    The wall time may be wrong (a box without a battery clock, before NTP): the runtime watches
    it and repairs what was recorded meanwhile (gateway/timesync.py; `SourceClock` there is a
    Clock over a simulated source that tests can step)."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


REAL_CLOCK = Clock()


class LoopClock(Clock):
    """The time of an event loop, as wall time from `start`: now = start + (loop.time() - the
    loop's time when made). With a loop whose time() is simulated (`gateway replay --transports`,
    gateway/replay_live.py) the gateway's timestamps, its deadlines and every asyncio timeout
    (the scheduler's, pymodbus's) then run on one simulated clock."""

    def __init__(self, start: datetime, loop: asyncio.AbstractEventLoop):
        self.start = start
        self.loop = loop
        self.t0 = loop.time()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.loop.time() - self.t0)

    def monotonic(self) -> float:
        return self.loop.time()


def to_us(ts: datetime) -> int:
    """UTC microseconds since the epoch, exact (no float rounding)."""
    delta = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)
