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


# ---- for people (logs, `gateway status`) ----

def signed_duration(us: int) -> str:
    """A signed duration: '+3 h 02 min 05.123456 s', '-4.000000 s', '+20424 d 01 h 00 min 00.000000 s'."""
    sign = "-" if us < 0 else "+"
    us = abs(us)
    days, us = divmod(us, 86_400_000_000)
    hours, us = divmod(us, 3_600_000_000)
    minutes, us = divmod(us, 60_000_000)
    seconds = f"{us // 1_000_000:02d}.{us % 1_000_000:06d} s"
    if days:
        return f"{sign}{days} d {hours:02d} h {minutes:02d} min {seconds}"
    if hours:
        return f"{sign}{hours} h {minutes:02d} min {seconds}"
    if minutes:
        return f"{sign}{minutes} min {seconds}"
    return f"{sign}{us // 1_000_000}.{us % 1_000_000:06d} s"


def when_text(us: int) -> str:
    """An instant for a person (UTC, to the second); one out of datetime's range as it is."""
    try:
        return from_us(us).isoformat(timespec="seconds")
    except (OverflowError, ValueError):
        return f"{us} µs"
