"""Guards walking patrol routes, and the readers that record them.

`PatrolSim` says where each guard was when: every round of every route walked with realistic
timing (each leg normal around its planned minutes, never shorter than `MIN_LEG_MIN`), now and
then a checkpoint skipped, two adjacent checkpoints read in swapped order, or a leg held up
(`late`). Everything is a pure function of (seed, route, round start), so any window gives the
same reads. The ground truth (skipped checkpoints included, with the time the guard passed
them) is there for tests to judge the gateway's patrol rules against.

Two kinds of reader carry the reads to the gateway:
- `OnlinePatrolReaderSim` publishes each read as JSON on `<site>/patrol/<reader>/read` at its
  time (or at once, `fast=True`) through an injected `publish(topic, payload)` coroutine:
  {"reader": "pr-1", "guard": "0012345678", "tag": "04A1B2C3", "time": "2026-11-23T21:04:10+08:00"}
- `WandSim` is an offline wand on a pty: it stores reads and, when downloaded, writes the whole
  batch as `card_frames.wand_download(...)` produces it; its memory is kept, so a second
  download repeats the same records (the driver must drop duplicates), and
  `download(truncate_at=N)` stops after N bytes, as a cable pulled mid-download does.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time as _time
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Callable, Iterable, Sequence
from zoneinfo import ZoneInfo

from gateway.drivers import card_frames

from .card_reader import PtyPort
from .gate_controller import Publish, card_text, iso_local
from .modbus_server import LineTiming

MIN_LEG_MIN = 0.25  # a leg takes at least 15 s, however fast the guard walks
SHIFT_CHANGE_H = 8  # 24-hour rotation: the guard on duty changes at 08:00


@dataclass(frozen=True, slots=True)
class PatrolRead:
    """One checkpoint of one round as walked. `skipped` entries were never read (ground truth
    only; `time` is when the guard walked past); `reordered` reads were read in swapped order
    with their neighbour; `late` reads end a leg that was held up far beyond the jitter."""

    guard: int
    tag: str
    time: datetime  # site local time, aware, whole seconds
    route: str
    round_start: datetime  # site local time, aware
    position: int  # the checkpoint's index in the route
    skipped: bool = False
    reordered: bool = False
    late: bool = False

    @property
    def t(self) -> float:
        return self.time.timestamp()

    @property
    def local_time(self) -> datetime:
        """The naive local time a wand records."""
        return self.time.replace(tzinfo=None)

    @property
    def guard_tag(self) -> str:
        """The guard's card as a wand records it: hex."""
        return f"{self.guard:08X}"


def _as_t(x: float | datetime) -> float:
    return x.timestamp() if isinstance(x, datetime) else float(x)


class PatrolSim:
    """Rounds of routes; `routes` items: {id, checkpoints: [tag hex], leg_minutes: [one per
    leg], rounds: [start times]} where a start time is a datetime (naive = site local) for one
    round, or a `datetime.time` for a round every day at that time."""

    def __init__(self, routes: Sequence[dict], guards: Sequence[int], seed: int = 1, tz: str = "Asia/Shanghai",
                 skip_prob: float = 0.03, reorder_prob: float = 0.03, jitter_min: float = 1.5,
                 *, late_prob: float = 0.01, start_jitter_min: float = 1.0):
        if not guards:
            raise ValueError("no guards")
        self.tz = ZoneInfo(tz)
        self.routes: list[dict] = []
        for r in routes:
            cps = [str(c).upper() for c in r["checkpoints"]]
            legs = [float(x) for x in r["leg_minutes"]]
            if len(cps) < 2 or len(legs) != len(cps) - 1:
                raise ValueError(f"route {r.get('id')!r}: needs >= 2 checkpoints and one leg time per leg")
            if any(x <= 0 for x in legs):
                raise ValueError(f"route {r['id']!r}: leg times must be positive")
            once, daily = [], []
            for s in r.get("rounds", ()):
                if isinstance(s, datetime):
                    once.append(s.replace(tzinfo=self.tz) if s.tzinfo is None else s.astimezone(self.tz))
                elif isinstance(s, time):
                    daily.append(s)
                else:
                    raise ValueError(f"route {r['id']!r}: round start {s!r} is not a datetime or time")
            self.routes.append(dict(id=r["id"], checkpoints=cps, leg_minutes=legs, once=sorted(once),
                                    daily=sorted(daily)))
        self.guards = list(guards)
        self.seed = seed
        self.skip_prob = skip_prob
        self.reorder_prob = reorder_prob
        self.jitter_min = jitter_min
        self.late_prob = late_prob
        self.start_jitter_min = start_jitter_min

    def route(self, route_id: str) -> dict:
        for r in self.routes:
            if r["id"] == route_id:
                return r
        raise KeyError(route_id)

    def on_duty(self, route_index: int, start: datetime) -> int:
        """The guard walking a round: guards rotate daily at SHIFT_CHANGE_H."""
        shift_day = (start - timedelta(hours=SHIFT_CHANGE_H)).date().toordinal()
        return self.guards[(shift_day * len(self.routes) + route_index) % len(self.guards)]

    def round_starts(self, t0: float | datetime, t1: float | datetime) -> list[tuple[int, datetime]]:
        """(route index, start) of rounds that may have reads in [t0, t1)."""
        a, b = _as_t(t0), _as_t(t1)
        out = []
        for i, r in enumerate(self.routes):
            span = (sum(r["leg_minutes"]) * 3 + 120) * 60  # the longest a round can take, generously
            starts = [s for s in r["once"] if a - span <= s.timestamp() < b]
            if r["daily"]:
                d0 = datetime.fromtimestamp(a - span, self.tz).date()
                d1 = datetime.fromtimestamp(b, self.tz).date()
                for k in range((d1 - d0).days + 1):
                    day = d0 + timedelta(days=k)
                    for tm in r["daily"]:
                        s = datetime.combine(day, tm, tzinfo=self.tz)
                        if a - span <= s.timestamp() < b:
                            starts.append(s)
            out += [(i, s) for s in sorted(set(starts))]
        return out

    def walk(self, route_index: int, start: datetime) -> list[PatrolRead]:
        """Ground truth of one round, in the order walked (skipped checkpoints included)."""
        r = self.routes[route_index]
        start = start.astimezone(self.tz)
        rng = random.Random(f"{self.seed}|patrol|{r['id']}|{start.isoformat()}")
        cps, legs = r["checkpoints"], r["leg_minutes"]
        n = len(cps)
        order = list(range(n))
        swapped = [False] * n
        i = 0
        while i < n - 1:
            if rng.random() < self.reorder_prob:
                order[i], order[i + 1] = order[i + 1], order[i]
                swapped[i] = swapped[i + 1] = True
                i += 2
            else:
                i += 1
        skipped = [not swapped[k] and rng.random() < self.skip_prob for k in range(n)]
        guard = self.on_duty(route_index, start)
        minutes = rng.gauss(0.5, self.start_jitter_min)  # a guard may set off a little early
        out = []
        for k in range(n):
            late = False
            if k:
                leg = max(MIN_LEG_MIN, rng.gauss(legs[k - 1], self.jitter_min))
                if rng.random() < self.late_prob:
                    leg += rng.uniform(3 * self.jitter_min + 5.0, 3 * self.jitter_min + 20.0)
                    late = True
                minutes += leg
            t = datetime.fromtimestamp(round(start.timestamp() + minutes * 60), self.tz)
            out.append(PatrolRead(guard=guard, tag=cps[order[k]], time=t, route=r["id"], round_start=start,
                                  position=order[k], skipped=skipped[k], reordered=swapped[k],
                                  late=late and not skipped[k]))
        return out

    def ground_truth(self, t0: float | datetime, t1: float | datetime) -> list[PatrolRead]:
        """Every checkpoint passed in [t0, t1), read or skipped, in time order."""
        a, b = _as_t(t0), _as_t(t1)
        out = [p for i, s in self.round_starts(a, b) for p in self.walk(i, s) if a <= p.t < b]
        out.sort(key=lambda p: (p.t, p.route, p.position))
        return out

    def reads_between(self, t0: float | datetime, t1: float | datetime) -> list[PatrolRead]:
        """The reads the readers record in [t0, t1), in time order."""
        return [p for p in self.ground_truth(t0, t1) if not p.skipped]


class OnlinePatrolReaderSim:
    """A networked patrol reader: each read as one JSON message (publish with QoS 1)."""

    def __init__(self, publish: Publish, site: str, reader_id: str, *, clock: Callable[[], float] = _time.time,
                 tz: str = "Asia/Shanghai", speed: float = 1.0):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.publish = publish
        self.site = site
        self.reader_id = reader_id
        self.topic = f"{site}/patrol/{reader_id}/read"
        self.clock = clock
        self.tz = ZoneInfo(tz)
        self.speed = speed
        self.published = 0

    def payload(self, read: PatrolRead) -> bytes:
        return json.dumps({"reader": self.reader_id, "guard": card_text(read.guard), "tag": read.tag,
                           "time": iso_local(read.t, self.tz)}, separators=(",", ":")).encode()

    async def send(self, read: PatrolRead) -> None:
        await self.publish(self.topic, self.payload(read))
        self.published += 1

    async def run(self, reads: Iterable[PatrolRead], fast: bool = False, start: float | None = None) -> int:
        """Publish `reads` in time order, each when simulated time reaches it: simulated time
        starts at `start` (default: now by the clock) and runs at `speed`. A read already past
        goes at once; fast=True sends everything at once. Returns how many were sent."""
        reads = sorted((p for p in reads if not p.skipped), key=lambda p: p.t)
        clock0 = self.clock()
        sim0 = clock0 if start is None else start
        n = 0
        for p in reads:
            if fast or math.isinf(self.speed):
                await asyncio.sleep(0)
            else:
                while (lag := p.t - (sim0 + (self.clock() - clock0) * self.speed)) > 0:
                    await asyncio.sleep(min(lag / self.speed, 1.0))
            await self.send(p)
            n += 1
        return n


class WandSim(PtyPort):
    """An offline patrol wand in its USB-serial cradle."""

    def __init__(self, wand_id: str, line: LineTiming | None = None, link: str | None = None):
        super().__init__(line, link)
        self.wand_id = wand_id
        self.records: list[card_frames.WandRecord] = []  # seq from 1, guard hex, tag hex, local naive
        self.downloads = 0

    def record(self, read: PatrolRead) -> None:
        """The guard touches a checkpoint (skipped ground-truth entries are not reads)."""
        if read.skipped:
            return
        self.records.append(card_frames.WandRecord(len(self.records) + 1, read.guard_tag, read.tag,
                                                   read.local_time))

    def record_all(self, reads: Iterable[PatrolRead]) -> None:
        for p in reads:
            self.record(p)

    def clear(self) -> None:
        """Erase the wand's memory (after a good download, as the guard-room software does)."""
        self.records.clear()

    def batch(self) -> bytes:
        return card_frames.wand_download(self.wand_id, self.records)

    async def download(self, truncate_at: int | None = None) -> bytes:
        """Send the whole memory; `truncate_at` bytes only if the cable is pulled. Waits until
        it is on the line; returns what was sent."""
        data = self.batch()
        if truncate_at is not None:
            data = data[:max(0, truncate_at)]
        self.downloads += 1
        self.write_raw(data)
        await self.drain()
        return data
