"""Switching plans: when each circuit is on, from its schedule, the sun and the calendar.

A schedule describes *nights*, each named by the date of its evening. A night's lights go on in
the evening (sunset ± minutes from astral for the site's latitude and longitude, or a fixed time
from 13:00) and off in the morning (sunrise ± minutes, or a fixed time before 12:00), with an
optional curfew that switches them off at a time and back on at a time before dawn. The first
exception of the schedule that matches the night (dates, a season, weekdays, holidays; all that
are given) replaces what it names. `always_on` lights the whole day from 12:00 to 12:00.

So every night of a `schedule` lies within [evening 12:00, morning 12:00): the lights are off at
noon. The contactor's minimum times then shape the intervals: within a night a gap shorter than
the minimum off time is bridged (the lights stay on rather than blink through a short curfew),
an interval shorter than the minimum on time is dropped (no five minutes of light at dawn), and
a night that would start too soon after the previous one ended starts later.

Times are timezone-aware in the site's zone; `astral` gives sunrise and sunset to the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import sun

from ..config import LightingSchedule, SiteConfig, parse_date_span, parse_moment, parse_season
from . import holidays as builtin_holidays

NOON = time(12, 0)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Interval:
    start: datetime
    end: datetime
    why: str            # the schedule and the exception that made it, for people

    @property
    def length(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Switch:
    at: datetime
    on: bool
    why: str


@dataclass(frozen=True, slots=True)
class NightPlan:
    evening: date
    variant: str                    # the exception's name, or '' for the schedule itself
    mode: str
    lights_on: datetime | None
    lights_off: datetime | None
    curfew: tuple[datetime, datetime | None] | None


class Sun:
    """Sunrise and sunset of a local date, from astral (cached)."""

    def __init__(self, latitude: float, longitude: float, tz: ZoneInfo):
        self.observer = Observer(latitude, longitude)
        self.tz = tz
        self.times = lru_cache(maxsize=1024)(self._times)

    def _times(self, d: date) -> tuple[datetime | None, datetime | None]:
        try:
            s = sun(self.observer, date=d, tzinfo=self.tz)
        except ValueError:       # the sun does not rise or set that day (polar latitudes)
            return None, None
        return s["sunrise"], s["sunset"]


class Planner:
    """The plan of every circuit of a site, computed on demand (nights are cached)."""

    def __init__(self, cfg: SiteConfig):
        self.cfg = cfg
        self.tz = ZoneInfo(cfg.site.timezone)
        self.sun = Sun(cfg.site.latitude, cfg.site.longitude, self.tz)
        light = cfg.lighting
        self.schedules: dict[str, LightingSchedule] = {s.id: s for s in light.schedules}
        self.circuits = {c.id: c for c in light.circuits}
        self.holidays = {name: [parse_date_span(s) for s in spans] for name, spans in light.holidays.items()}
        self._min = {c.id: (timedelta(minutes=c.min_on_minutes if c.min_on_minutes is not None else light.min_on_minutes),
                            timedelta(minutes=c.min_off_minutes if c.min_off_minutes is not None
                                      else light.min_off_minutes)) for c in light.circuits}
        self.night = lru_cache(maxsize=4096)(self._night)
        self._raw = lru_cache(maxsize=4096)(self._raw_intervals)
        self._shaped = lru_cache(maxsize=8192)(self._shaped_night)

    def minimum_times(self, circuit_id: str) -> tuple[timedelta, timedelta]:
        """(minimum on, minimum off) of a circuit's contactor."""
        return self._min[circuit_id]

    # ---- the calendar ----

    def _holiday(self, name: str, evening: date) -> bool:
        if name in self.holidays:
            return any(a <= evening <= b for a, b in self.holidays[name])
        return builtin_holidays.builtin(name, evening)

    def _matches(self, e, evening: date) -> bool:
        if e.dates and not any(a <= evening <= b for a, b in map(parse_date_span, e.dates)):
            return False
        if e.season:
            a, b = parse_season(e.season)
            md = (evening.month, evening.day)
            if not (a <= md <= b if a <= b else md >= a or md <= b):
                return False
        if e.weekdays and WEEKDAYS[evening.weekday()] not in e.weekdays:
            return False
        if e.holidays and not any(self._holiday(h, evening) for h in e.holidays):
            return False
        return True

    # ---- one night of one schedule, before the minimum times ----

    def _at(self, moment: str, d: date, sun_index: int) -> datetime | None:
        kind, value = parse_moment(moment)
        if kind == "fixed":
            return datetime.combine(d, time(value // 60, value % 60), self.tz)
        base = self.sun.times(d)[sun_index]
        return None if base is None else base + timedelta(minutes=value)

    def _night(self, schedule_id: str, evening: date) -> NightPlan:
        s = self.schedules[schedule_id]
        variant = next((e for e in s.exceptions if self._matches(e, evening)), None)
        mode = (variant.mode if variant and variant.mode else s.mode) or "schedule"
        on_text = variant.lights_on if variant and variant.lights_on else s.lights_on
        off_text = variant.lights_off if variant and variant.lights_off else s.lights_off
        curfew = variant.curfew if variant and variant.curfew is not None else s.curfew
        morning = evening + timedelta(days=1)
        name = (variant.name or f"exception {s.exceptions.index(variant) + 1}") if variant else ""
        if mode != "schedule":
            return NightPlan(evening, name, mode, None, None, None)
        on = self._at(on_text, evening, 1)
        off = self._at(off_text, morning, 0)
        cf = None
        if curfew is not None and curfew != "none":
            h, m = map(int, curfew.from_.split(":"))
            start = datetime.combine(evening if h >= 12 else morning, time(h, m), self.tz)
            until = None
            if curfew.until is not None:
                h, m = map(int, curfew.until.split(":"))
                until = datetime.combine(morning if h < 12 else evening, time(h, m), self.tz)
            cf = (start, until)
        return NightPlan(evening, name, mode, on, off, cf)

    def _raw_intervals(self, schedule_id: str, evening: date) -> tuple[Interval, ...]:
        n = self.night(schedule_id, evening)
        why = schedule_id + (f" ({n.variant})" if n.variant else "")
        if n.mode == "always_on":
            return (Interval(datetime.combine(evening, NOON, self.tz),
                             datetime.combine(evening + timedelta(days=1), NOON, self.tz), why),)
        if n.mode == "always_off" or n.lights_on is None or n.lights_off is None or n.lights_on >= n.lights_off:
            return ()
        if n.curfew is None:
            return (Interval(n.lights_on, n.lights_off, why),)
        start, until = n.curfew
        out = []
        if start > n.lights_on:
            out.append(Interval(n.lights_on, min(start, n.lights_off), why))
        if until is not None and until < n.lights_off and until > start:
            out.append(Interval(max(until, n.lights_on), n.lights_off, why))
        return tuple(out)

    # ---- the contactor's minimum times ----

    def _shaped_night(self, circuit_id: str, evening: date) -> tuple[Interval, ...]:
        """One night of a circuit with the minimum times held, given the night before."""
        c = self.circuits[circuit_id]
        min_on, min_off = self._min[circuit_id]
        merged: list[Interval] = []
        for iv in self._raw(c.schedule, evening):
            if merged and iv.start - merged[-1].end < min_off:
                merged[-1] = Interval(merged[-1].start, iv.end, merged[-1].why)   # bridge a short gap
            else:
                merged.append(iv)
        before = self._last_end(circuit_id, evening - timedelta(days=1))
        out: list[Interval] = []
        for iv in merged:
            if before is not None and before < iv.start < before + min_off:
                iv = Interval(before + min_off, iv.end, iv.why)           # too soon after the last night
            elif before is not None and iv.start == before:
                pass                                                      # continues the last night (always_on)
            if iv.length >= min_on and iv.length > timedelta(0):
                out.append(iv)
        return tuple(out)

    def _last_end(self, circuit_id: str, evening: date) -> datetime | None:
        """When the night of `evening` ends (its raw last interval: one night back is enough,
        since a night's end does not depend on the night before it except when it starts late)."""
        c = self.circuits[circuit_id]
        raw = self._raw(c.schedule, evening)
        return raw[-1].end if raw else None

    # ---- what people and the controller ask ----

    def intervals(self, circuit_id: str, start: datetime, end: datetime) -> list[Interval]:
        """The circuit's on-intervals that overlap [start, end), joined where one night runs into
        the next (always_on)."""
        first = (start.astimezone(self.tz) - timedelta(hours=12)).date() - timedelta(days=1)
        last = (end.astimezone(self.tz) - timedelta(hours=12)).date()
        out: list[Interval] = []
        d = first
        while d <= last:
            for iv in self._shaped(circuit_id, d):
                if out and iv.start <= out[-1].end:
                    out[-1] = Interval(out[-1].start, max(out[-1].end, iv.end), out[-1].why)
                else:
                    out.append(iv)
            d += timedelta(days=1)
        return [iv for iv in out if iv.end > start and iv.start < end]

    def state_at(self, circuit_id: str, t: datetime) -> tuple[bool, Interval | None]:
        for iv in self.intervals(circuit_id, t, t + timedelta(seconds=1)):
            if iv.start <= t < iv.end:
                return True, iv
        return False, None

    def next_change(self, circuit_id: str, t: datetime) -> datetime | None:
        """The first switching of the plan after `t` (within two days)."""
        best = None
        for iv in self.intervals(circuit_id, t, t + timedelta(days=2)):
            for edge in (iv.start, iv.end):
                if edge > t and (best is None or edge < best):
                    best = edge
        return best

    def day(self, circuit_id: str, d: date) -> tuple[bool, list[Switch]]:
        """The state at the local midnight starting `d` and the switchings within that day."""
        start = datetime.combine(d, time(0), self.tz)
        end = start + timedelta(days=1)
        on_at_start, _ = self.state_at(circuit_id, start)
        out: list[Switch] = []
        for iv in self.intervals(circuit_id, start, end):
            if start < iv.start < end:
                out.append(Switch(iv.start, True, iv.why))
            if start < iv.end < end:
                out.append(Switch(iv.end, False, iv.why))
        out.sort(key=lambda s: s.at)
        return on_at_start, out

    def night_hours(self, d: date) -> float:
        """Hours from sunset of `d` to sunrise of the next day: the length of the night, which
        the savings are normalised by."""
        rise = self.sun.times(d + timedelta(days=1))[0]
        set_ = self.sun.times(d)[1]
        if rise is None or set_ is None:
            return 12.0
        return (rise - set_).total_seconds() / 3600
