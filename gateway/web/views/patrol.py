"""Patrol: a day's rounds per route, each checkpoint with its due time and status.

The schedule comes from gateway/rules/patrol.py (`round_starts_on`) and the verdicts follow
that module's docstring, so the page and the alarms agree:
- a shift (start, end, every_minutes; local time; end <= start crosses midnight) that begins on
  local date d starts rounds at start, start + every, ... while before end; checkpoint k is due
  at round start + the first k legs; tolerance T is the patrol rule's, else the route's;
- a read belongs to the round whose due time for that checkpoint is nearest to the read's
  RECORDED time (rounds of shifts beginning the day before, the day of and the day after the
  read); the checkpoint's earliest read in that round decides: |delta| <= T on time, delta > T
  late, delta < -T early (the rule's fifth verdict, shown rather than hidden);
- a checkpoint with no read is missed once now > due + T (strictly), pending until then;
- a read from a reader the route's patrol rule does not list does not count.
A round is listed on the local date it starts (a round crossing midnight stays on its day).
Wand routes (every reader a wand) hear of reads only at a download: an unread checkpoint stays
pending until a download has arrived after the round's end, as the rule waits for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ...clock import from_us, to_us
from ...ledger.queries import last_download_us, patrol_checkins
from ...rules.patrol import round_starts_on


@dataclass(frozen=True)
class RouteSchedule:
    id: str
    name: str
    checkpoints: tuple[str, ...]
    offsets: tuple[timedelta, ...]            # due time of each checkpoint after the round start
    tolerance: timedelta
    shifts: tuple[tuple[str, str, int], ...]
    readers: frozenset[str]                   # empty: any reader
    wand: bool


def schedules(cfg) -> list[RouteSchedule]:
    """Each route with the tolerance and readers of the first enabled patrol rule covering it."""
    rules = [r for r in cfg.rules if r.kind == "patrol" and r.enabled]
    kinds = {r.id: r.type for r in cfg.patrol.readers}
    out = []
    for route in cfg.patrol.routes:
        rule = next((r for r in rules if not r.routes or route.id in r.routes), None)
        tol = rule.tolerance_minutes if rule is not None and rule.tolerance_minutes is not None \
            else route.tolerance_minutes
        readers = frozenset(rule.readers) if rule is not None else frozenset()
        route_readers = readers or set(kinds)
        acc, offs = 0.0, [0.0]
        for leg in route.legs():
            acc += leg
            offs.append(acc)
        out.append(RouteSchedule(route.id, route.name or route.id, tuple(route.checkpoints),
                                 tuple(timedelta(minutes=x) for x in offs), timedelta(minutes=tol),
                                 tuple((s.start, s.end, s.every_minutes) for s in route.shifts), readers,
                                 bool(route_readers) and all(kinds.get(x) == "wand" for x in route_readers)))
    return out


@lru_cache(maxsize=256)
def starts_on(route: RouteSchedule, d: date, tz: ZoneInfo) -> tuple[datetime, ...]:
    """Round starts of the shifts that begin on local date d (the rule's arithmetic: wall-clock
    steps on an aware local time). Cached: every read asks for three days of them."""
    return tuple(round_starts_on(route.shifts, d, tz))


@lru_cache(maxsize=256)
def _dues_around(route: RouteSchedule, d: date, tz: ZoneInfo) -> tuple[tuple[datetime, tuple[int, ...]], ...]:
    """(start, due µs of each checkpoint) of the rounds of the shifts beginning the day before d,
    on d and the day after, in that order. Due times as `judge` makes them (start + offset on the
    aware local time), in µs because comparing integers is what makes a month of reads cheap to
    judge (the monthly report judges every round of a month, and of the months before it)."""
    return tuple((s, tuple(to_us(s + o) for o in route.offsets))
                 for day in (d - timedelta(days=1), d, d + timedelta(days=1)) for s in starts_on(route, day, tz))


def nearest_start(route: RouteSchedule, k: int, ts: datetime, tz: ZoneInfo) -> datetime:
    """The start of the round whose due time for checkpoint k is nearest to ts (the earlier
    round on a tie, as the rule)."""
    t = to_us(ts)
    best = None
    for s, dues in _dues_around(route, ts.astimezone(tz).date(), tz):
        delta = abs(t - dues[k])
        if best is None or delta < best[0]:
            best = (delta, s)
    return best[1]


def rounds_of_day(route: RouteSchedule, day: date, tz: ZoneInfo) -> list[datetime]:
    found = {s for d in (day - timedelta(days=1), day) for s in starts_on(route, d, tz)
             if s.astimezone(tz).date() == day}
    return sorted(found)


Matched = dict[tuple[datetime, int], tuple[datetime, str, str]]   # (round start, k) -> earliest read


def match(route: RouteSchedule, checkins: list[tuple], tz: ZoneInfo, wanted: set[datetime] | None = None
          ) -> Matched:
    """Each read of the route's checkpoints by its readers to its round (the nearest due time):
    the earliest read of each checkpoint of each round (of the rounds `wanted`, default all)."""
    index = {cp: i for i, cp in enumerate(route.checkpoints)}
    first: Matched = {}
    for ts_us, reader, checkpoint, guard in checkins:
        k = index.get(checkpoint)
        if k is None or (route.readers and reader not in route.readers):
            continue
        ts = from_us(ts_us)
        s = nearest_start(route, k, ts, tz)
        if (wanted is None or s in wanted) and ((s, k) not in first or ts < first[(s, k)][0]):
            first[(s, k)] = (ts, reader, guard)
    return first


def judge(route: RouteSchedule, day: date, checkins: list[tuple], now: datetime, tz: ZoneInfo,
          downloaded_us: int | None = None, matched: Matched | None = None) -> list[dict]:
    """The route's rounds starting on `day`. checkins: (ts_us, reader, checkpoint, guard) of
    reads recorded around the day; downloaded_us: the latest arrival of a read from the
    route's readers (wand routes only); matched: the reads already matched by `match` (then
    checkins is not read), so that judging many days matches each read once."""
    starts = rounds_of_day(route, day, tz)
    first = matched if matched is not None else match(route, checkins, tz, set(starts))
    tol = route.tolerance
    out = []
    for s in starts:
        due = [s + o for o in route.offsets]
        end = due[-1] + tol
        awaiting = route.wand and (downloaded_us is None or downloaded_us <= to_us(end))
        reads = {k: first[(s, k)][0] for k in range(len(due)) if (s, k) in first}
        points = []
        for k, cp in enumerate(route.checkpoints):
            p = {"checkpoint": cp, "due": due[k].astimezone(tz).strftime("%H:%M"), "due_us": to_us(due[k]),
                 "recorded": "", "recorded_us": None, "reader": "", "guard": "", "delta_min": None,
                 "out_of_order": False}
            if (s, k) in first:
                ts, reader, guard = first[(s, k)]
                delta = ts - due[k]
                p.update(recorded=ts.astimezone(tz).strftime("%H:%M:%S"), recorded_us=to_us(ts), reader=reader,
                         guard=guard, delta_min=round(delta.total_seconds() / 60, 1),
                         status="late" if delta > tol else "early" if delta < -tol else "on_time",
                         # a later checkpoint of the round was read before this one
                         out_of_order=any(t < ts and j > k for j, t in reads.items()))
            else:
                p["status"] = "missed" if now > due[k] + tol and not awaiting else "pending"
            points.append(p)
        counts = {st: sum(1 for p in points if p["status"] == st)
                  for st in ("on_time", "late", "early", "missed", "pending")}
        out.append({"start": s.astimezone(tz).strftime("%H:%M"), "start_us": to_us(s), "end_us": to_us(end),
                    "source": f"{route.id}@{s.astimezone(tz):%Y-%m-%dT%H:%M}",
                    "phase": "upcoming" if now < s else "running" if now <= end else "over",
                    "awaiting_download": awaiting and now > end, "checkpoints": points, "counts": counts})
    return out


def patrol_day(cfg, db, day: date | None, now: datetime) -> dict:
    """Every route's rounds of `day` (default: today, site time) with the ledger's checkins."""
    tz = ZoneInfo(cfg.site.timezone)
    today = now.astimezone(tz).date()
    day = day or today
    lo = to_us(datetime.combine(day - timedelta(days=1), time(0), tz))
    hi = to_us(datetime.combine(day + timedelta(days=2), time(0), tz))
    rows = patrol_checkins(db, lo, hi) if db is not None else []
    names = {c.id: c.name or c.id for c in cfg.patrol.checkpoints}
    kinds = {r.id: r.type for r in cfg.patrol.readers}
    routes = []
    for route in schedules(cfg):
        downloaded = None
        if route.wand and db is not None:
            readers = sorted(route.readers or kinds)
            downloaded = last_download_us(db, lo, readers)
        rounds = judge(route, day, rows, now, tz, downloaded)
        for rd in rounds:
            for p in rd["checkpoints"]:
                p["name"] = names.get(p["checkpoint"], p["checkpoint"])
        routes.append({"id": route.id, "name": route.name, "tolerance_min": route.tolerance.total_seconds() / 60,
                       "wand": route.wand, "checkpoints": list(route.checkpoints), "rounds": rounds})
    return {"date": day.isoformat(), "today": day == today, "now": now.astimezone(tz).strftime("%H:%M:%S"),
            "prev": (day - timedelta(days=1)).isoformat(), "next": (day + timedelta(days=1)).isoformat(),
            "routes": routes}
