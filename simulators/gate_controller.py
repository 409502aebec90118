"""A networked access controller behind an MQTT bridge: card swipes and door events as JSON.

Topics and payloads (the contract with the gateway's MQTT access driver; publish with QoS 1):

    <site>/acs/<controller>/swipe  {"card": "0012345678", "reader": "gate-s-in", "door": "gate-s",
                                    "direction": "in", "time": "2026-11-23T03:02:11+08:00"}
    <site>/acs/<controller>/door   {"door": "gate-s", "event": "opened", "time": ...}
                                   event: opened | closed | forced_open | held_open

A day at the gate is a pure function of (seed, local date): each resident's trips (a commute
out in the morning and back in the evening, errands by day, a few evenings out and night
shifts), unknown cards tried mostly at night, and the door's open spans merged into one
opened ... closed per span (a queue through an open gate is one opening); a span longer than
`held_open_s` raises held_open, an opening without a swipe is forced_open. So
`events_between(t0, t1)` gives the same events for the same window however it is cut, and
`run()` publishes them as (simulated) time passes through an injected `publish` coroutine, so
the simulator never owns the MQTT connection.

Times are whole seconds. The controller does not judge cards: every swipe is reported; only
cards in `residents` open the door (the gateway decides what is valid from its own card list).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from datetime import date, datetime, timedelta
from typing import AsyncIterator, Awaitable, Callable, Sequence
from zoneinfo import ZoneInfo

Publish = Callable[[str, bytes], Awaitable[object]]
Event = tuple[float, str, bytes]  # (unix time, topic, JSON payload)

DOOR_EVENTS = ("opened", "closed", "forced_open", "held_open")
NIGHT_START_H, NIGHT_END_H = 22, 6  # unknown cards are tried mostly between these hours
_CACHE_DAYS = 8


def iso_local(t: float, tz: ZoneInfo) -> str:
    """'2026-11-23T03:02:11+08:00': the site's local time with its offset, whole seconds."""
    return datetime.fromtimestamp(t, tz).isoformat(timespec="seconds")


def card_text(card: int) -> str:
    """A card value as controllers print it: 10 decimal digits."""
    return f"{card:010d}"


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:  # normal approximation; exact enough for counts this large
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _json(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def mqtt_publisher(client, qos: int = 1) -> Publish:
    """Adapt an aiomqtt client to the `publish(topic, payload)` the simulators take."""

    async def publish(topic: str, payload: bytes) -> None:
        await client.publish(topic, payload, qos=qos)

    return publish


class GateControllerSim:
    """One controller with its doors, the residents who use them, and some unknown cards."""

    def __init__(self, publish: Publish | None, site: str, controller: str,
                 doors: Sequence[dict], residents: Sequence[int], unknown: Sequence[int] = (),
                 seed: int = 1, clock: Callable[[], float] = time.time, tz: str = "Asia/Shanghai",
                 speed: float = 1.0, *, trip_prob: float = 0.7, unknown_per_day: float = 6.0,
                 held_open_per_day: float = 1.5, forced_open_per_day: float = 0.1,
                 held_open_s: int = 30):
        if not doors:
            raise ValueError("a controller needs at least one door")
        for d in doors:
            if not d.get("id") or not d.get("readers_in") or not d.get("readers_out"):
                raise ValueError(f"door needs id, readers_in and readers_out: {d!r}")
        if speed <= 0:
            raise ValueError("speed must be positive (math.inf: as fast as possible)")
        self.publish = publish
        self.site = site
        self.controller = controller
        self.doors = [dict(id=d["id"], readers_in=list(d["readers_in"]), readers_out=list(d["readers_out"]))
                      for d in doors]
        self.residents = list(residents)
        self.unknown = list(unknown)
        self.seed = seed
        self.clock = clock
        self.tz = ZoneInfo(tz)
        self.speed = speed
        self.trip_prob = trip_prob
        self.unknown_per_day = unknown_per_day
        self.held_open_per_day = held_open_per_day
        self.forced_open_per_day = forced_open_per_day
        self.held_open_s = held_open_s
        self.swipe_topic = f"{site}/acs/{controller}/swipe"
        self.door_topic = f"{site}/acs/{controller}/door"
        self.published = 0
        # each resident's usual gate (most use the one nearest home)
        home = random.Random(f"{seed}|{controller}|home")
        self._home = [home.randrange(len(self.doors)) for _ in self.residents]
        self._days: dict[date, tuple] = {}

    # ---- the day ---------------------------------------------------------------------------

    def _at(self, day: date, hour: float) -> int:
        """Unix seconds of `hour` (may exceed 24) local hours after the start of `day`."""
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return int((start + timedelta(seconds=round(hour * 3600))).timestamp())

    def _trips(self, rng: random.Random) -> list[tuple[float, float]]:
        """One resident's (out, back in) local hours for one day; nothing on a quiet day."""
        if rng.random() >= self.trip_prob:
            return []
        trips = []
        kind = rng.random()
        if kind < 0.50:  # commute: out in the morning, back in the evening
            out = min(max(rng.gauss(7.4, 0.6), 5.5), 10.0)
            back = min(max(rng.gauss(18.2, 0.9), 15.5), 23.0)
            trips.append((out, back))
        elif kind < 0.88:  # errands: shops, school run, market
            out = rng.choice((rng.uniform(8.5, 11.5), rng.uniform(13.5, 17.0), rng.uniform(8.0, 20.0)))
            trips.append((out, out + rng.uniform(0.3, 3.5)))
        elif kind < 0.97:  # an evening out, sometimes back after midnight
            out = min(max(rng.gauss(19.3, 1.0), 17.0), 22.5)
            trips.append((out, out + rng.uniform(1.0, 4.5)))
        else:  # night shift
            out = rng.uniform(0.0, 24.0)
            trips.append((out, out + rng.uniform(8.0, 10.0)))
        if rng.random() < 0.2:
            out = rng.uniform(9.0, 20.5)
            if all(out > b + 0.2 or out + 2.0 < o for o, b in trips):
                trips.append((out, out + rng.uniform(0.3, 1.5)))
        return trips

    def _door(self, rng: random.Random, i: int) -> int:
        if len(self.doors) == 1 or rng.random() < 0.8:
            return self._home[i]
        return rng.randrange(len(self.doors))

    def _day(self, day: date) -> tuple[list[tuple], list[list[tuple[int, int, bool]]]]:
        """What `day`'s trips and attempts cause: the swipes, sorted, as (t, day, seq, topic,
        payload), and each door's open spans (open, close, forced), not yet merged."""
        cached = self._days.get(day)
        if cached is not None:
            return cached
        rng = random.Random(f"{self.seed}|{self.controller}|{day.isoformat()}")
        swipes: list[tuple[int, int, int, str]] = []  # (t, card, door index, direction)
        spans: list[list[tuple[int, int, bool]]] = [[] for _ in self.doors]
        granted: list[list[int]] = [[] for _ in self.doors]  # index into spans per door

        def pass_through(t: int, card: int, door: int, direction: str) -> None:
            swipes.append((t, card, door, direction))
            opened = t + rng.randint(1, 3)
            granted[door].append(len(spans[door]))
            spans[door].append((opened, opened + rng.randint(3, 12), False))

        for i, card in enumerate(self.residents):
            for out, back in self._trips(rng):
                pass_through(self._at(day, out), card, self._door(rng, i), "out")
                pass_through(self._at(day, back), card, self._door(rng, i), "in")

        if self.unknown:
            for _ in range(poisson(rng, self.unknown_per_day)):
                card = rng.choice(self.unknown)
                hour = (NIGHT_START_H + rng.uniform(0.0, 24 - NIGHT_START_H + NIGHT_END_H) if rng.random() < 0.75
                        else rng.uniform(NIGHT_END_H, NIGHT_START_H))
                t, door = self._at(day, hour), rng.randrange(len(self.doors))
                direction = "in" if rng.random() < 0.8 else "out"
                for _ in range(rng.randint(1, 3)):  # tried again when the door stays shut
                    swipes.append((t, card, door, direction))
                    t += rng.randint(3, 10)

        for d in range(len(self.doors)):
            for _ in range(poisson(rng, self.held_open_per_day)):
                if granted[d]:  # someone props the gate open (moving in, a delivery)
                    k = rng.choice(granted[d])
                    opened, _, _ = spans[d][k]
                    spans[d][k] = (opened, opened + rng.randint(self.held_open_s + 10, 300), False)
            for _ in range(poisson(rng, self.forced_open_per_day)):
                hour = rng.uniform(22.0, 30.0) if rng.random() < 0.6 else rng.uniform(6.0, 22.0)
                opened = self._at(day, hour)
                spans[d].append((opened, opened + rng.randint(5, 90), True))

        events: list[tuple] = []
        ordinal = day.toordinal()
        for seq, (t, card, d, direction) in enumerate(swipes):
            door = self.doors[d]
            readers = door["readers_in"] if direction == "in" else door["readers_out"]
            body = {"card": card_text(card), "reader": rng.choice(readers), "door": door["id"],
                    "direction": direction, "time": iso_local(t, self.tz)}
            events.append((float(t), ordinal, seq, self.swipe_topic, _json(body)))
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        if len(self._days) >= _CACHE_DAYS:
            self._days.pop(next(iter(self._days)))
        self._days[day] = (events, spans)
        return events, spans

    @staticmethod
    def _merge(spans: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
        """Overlapping open spans of one door are one opening; forced if it began forced."""
        merged: list[list] = []
        for opened, closed, forced in sorted(spans):
            if merged and opened <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], closed)
            else:
                merged.append([opened, closed, forced])
        return [tuple(m) for m in merged]  # type: ignore[misc]

    def events_between(self, t0: float, t1: float) -> list[Event]:
        """Every event with t0 <= t < t1, in time order; the same for a seed however cut.

        A day's trips end by mid-morning of the next day, so the days from the one before t0
        hold every span that reaches the window; door spans are merged across those days.
        """
        if t1 <= t0:
            return []
        first = datetime.fromtimestamp(t0, self.tz).date() - timedelta(days=1)
        last = datetime.fromtimestamp(t1, self.tz).date()
        days = [self._day(first + timedelta(days=i)) for i in range((last - first).days + 1)]
        out: list[tuple] = [(t, 0, o, s, topic, payload) for swipes, _ in days
                            for t, o, s, topic, payload in swipes if t0 <= t < t1]
        for d, door in enumerate(self.doors):
            for opened, closed, forced in self._merge([sp for _, spans in days for sp in spans[d]]):
                if closed < t0 or opened >= t1:
                    continue
                evs = [(opened, "forced_open" if forced else "opened")]
                if closed - opened > self.held_open_s:
                    evs.append((opened + self.held_open_s, "held_open"))
                evs.append((closed, "closed"))
                for k, (t, what) in enumerate(evs):
                    if t0 <= t < t1:
                        body = {"door": door["id"], "event": what, "time": iso_local(t, self.tz)}
                        out.append((float(t), 1, d, k, self.door_topic, _json(body)))
        out.sort(key=lambda e: e[:4])
        return [(e[0], e[4], e[5]) for e in out]

    # ---- running ---------------------------------------------------------------------------

    async def events(self, start: float | None = None, until: float | None = None,
                     chunk_s: float = 3600.0) -> AsyncIterator[Event]:
        """Yield events when they are due: simulated time runs from `start` (default: the
        clock's now, so `clock` must then give unix time) at `speed` times the clock; with
        speed=math.inf, as fast as possible (give `until`, or it never stops)."""
        clock0 = self.clock()
        sim0 = clock0 if start is None else start
        a = sim0
        while until is None or a < until:
            b = a + chunk_s if until is None else min(a + chunk_s, until)
            for ev in self.events_between(a, b):
                if math.isinf(self.speed):
                    await asyncio.sleep(0)
                else:
                    while True:
                        lag = ev[0] - (sim0 + (self.clock() - clock0) * self.speed)
                        if lag <= 0:
                            break
                        await asyncio.sleep(min(lag / self.speed, 1.0))
                yield ev
            a = b

    async def run(self, start: float | None = None, until: float | None = None) -> int:
        """Publish events as they fall due until `until` (forever if None); returns how many."""
        if self.publish is None:
            raise RuntimeError("no publish coroutine given")
        n = 0
        async for _, topic, payload in self.events(start, until):
            await self.publish(topic, payload)
            self.published += 1
            n += 1
        return n
