"""The monthly service and safety report (月度服务与安全报告): the figures, computed from the
ledger's read model (gateway/ledger/service.py); rendering is service_render.py's, the InfluxDB
points service_points.py's.

A month is its local calendar month (site time), [first day 00:00, next month's first day 00:00).
What happened in it, counted where it began:
- alarms raised in the month, by kind: how many, acknowledged, cleared, still open, and the time
  from raising to acknowledgement and to clearing (whenever those came, next month too);
- repair orders created in the month, by category: response (on site) and repair (done) times
  from the report (or the reopening), and how many met the category's targets or missed them
  (one not there yet counts as missed once its target has passed at `as_of`);
- repeat faults: a device with `maintenance.repeat_faults` orders within `repeat_days` (the
  window (t - repeat_days, t] ending at one of its orders of this month) is flagged;
- inspection tasks due in the month (a month's task is due at its end): done on time, late, or
  not done;
- patrol rounds starting in the month, judged as the patrol page judges them at `as_of`: per
  route, and per guard, the guard who read most of a round's checkpoints answering for its
  missed ones (a round nobody read is nobody's: guard ""); rounds before the ledger's oldest
  patrol read are not judged (nothing was recorded then);
- refused cards (unknown, revoked, expired) and door alarms (forced open, held open) by gate and
  by local hour;
- the trend: the headline figures of this month and the `trend` months before it.

Durations are seconds; percentiles are nearest-rank (the smallest value with at least q % of
the values at or below it), so every figure shown is a duration that happened.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ..clock import from_us, to_us
from ..config import SiteConfig
from ..ledger import service as rm
from ..ledger.maintenance import equipment_rows, has_tables
from ..ledger.queries import last_download_us, patrol_checkins
from .orders import targets

DAY_US = 86_400_000_000


def month_bounds(month: str, tz: ZoneInfo) -> tuple[int, int]:
    """[start, end) of a month ('2026-11') in µs, local midnight to local midnight."""
    y, m = parse_month(month)
    start = datetime.combine(date(y, m, 1), time(0), tz)
    end = datetime.combine(date(y + m // 12, m % 12 + 1, 1), time(0), tz)
    return to_us(start), to_us(end)


def parse_month(month: str) -> tuple[int, int]:
    parts = month.split("-")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts) or len(parts[0]) != 4 \
            or len(parts[1]) != 2 or not 1 <= int(parts[1]) <= 12:
        raise ValueError(f"{month!r} is not a month like 2026-11")
    return int(parts[0]), int(parts[1])


def previous_months(month: str, n: int) -> list[str]:
    """The n months before `month`, oldest first."""
    y, m = parse_month(month)
    out = []
    for _ in range(n):
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
        out.append(f"{y:04d}-{m:02d}")
    return out[::-1]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank of the sorted `values` (None for none)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, math.ceil(len(s) * q / 100) - 1)
    return s[min(k, len(s) - 1)]


@dataclass(frozen=True)
class Durations:
    n: int
    p50: float | None
    p90: float | None
    mean: float | None

    @classmethod
    def of(cls, values: list[float]) -> "Durations":
        return cls(len(values), percentile(values, 50), percentile(values, 90),
                   sum(values) / len(values) if values else None)


@dataclass(frozen=True)
class AlarmKind:
    kind: str                      # "" for all kinds together
    raised: int
    acked: int
    cleared: int
    open: int                      # not cleared (at the time of the report)
    to_ack: Durations
    to_clear: Durations


@dataclass(frozen=True)
class OrderCategory:
    category: str                  # "" for all categories together
    name: str
    name_en: str
    respond_minutes: float | None
    repair_hours: float | None
    created: int
    responded: int
    response_on_time: int
    response_missed: int
    done: int
    repair_on_time: int
    repair_missed: int
    open: int
    reopened: int
    followed_up: int
    satisfaction: float | None     # mean of the residents' 1..5
    response: Durations
    repair: Durations


@dataclass(frozen=True)
class RepeatDevice:
    device: str
    name: str
    in_month: int                  # its orders created this month
    in_window: int                 # the most orders within repeat_days ending at one of this month's
    orders: list[int]              # the order ids of that window
    flagged: bool


@dataclass(frozen=True)
class InspectionPlanRow:
    plan: str
    name: str
    name_en: str
    due: int
    on_time: int
    late: int
    not_done: int
    failed_items: int


@dataclass(frozen=True)
class PatrolRow:
    key: str                       # route id, or guard name ("" for rounds nobody walked)
    name: str
    rounds: int
    due: int                       # checkpoints due (judged: read or missed; pending ones are not counted)
    read: int
    on_time: int
    late: int
    early: int
    missed: int

    @property
    def completeness(self) -> float | None:
        return self.read / self.due if self.due else None


@dataclass(frozen=True)
class GateRow:
    door: str
    name: str
    unknown: int
    revoked: int
    expired: int
    forced_open: int
    held_open: int


@dataclass(frozen=True)
class TrendPoint:
    month: str
    alarms: int
    ack_p50_s: float | None
    orders: int
    response_on_time: float | None   # shares 0..1 of what was judged
    repair_on_time: float | None
    inspections_on_time: float | None
    patrol_completeness: float | None
    card_refusals: int
    forced_doors: int


@dataclass
class ServiceMonth:
    site_id: str
    site_name: str
    month: str
    timezone: str
    start_us: int
    end_us: int
    as_of_us: int
    alarms: list[AlarmKind]
    alarm_total: AlarmKind
    orders: list[OrderCategory]
    order_total: OrderCategory
    repeats: list[RepeatDevice]
    repeat_faults: int
    repeat_days: int
    inspections: list[InspectionPlanRow]
    routes: list[PatrolRow]
    guards: list[PatrolRow]
    gates: list[GateRow]
    hours: list[dict]              # 24 of {hour, unknown, revoked, expired, forced_open, held_open}
    trend: list[TrendPoint] = field(default_factory=list)   # oldest first, this month last

    def headline(self) -> TrendPoint:
        t = self.order_total
        judged_resp = t.response_on_time + t.response_missed
        judged_rep = t.repair_on_time + t.repair_missed
        due = sum(i.due for i in self.inspections)
        p_due = sum(r.due for r in self.routes)
        return TrendPoint(
            self.month, self.alarm_total.raised, self.alarm_total.to_ack.p50, t.created,
            t.response_on_time / judged_resp if judged_resp else None,
            t.repair_on_time / judged_rep if judged_rep else None,
            sum(i.on_time for i in self.inspections) / due if due else None,
            sum(r.read for r in self.routes) / p_due if p_due else None,
            sum(g.unknown + g.revoked + g.expired for g in self.gates), sum(g.forced_open for g in self.gates))

    def as_json(self) -> dict:
        out = asdict(self)
        out["routes"] = [{**asdict(r), "completeness": r.completeness} for r in self.routes]
        out["guards"] = [{**asdict(r), "completeness": r.completeness} for r in self.guards]
        return out


# ---- the sections ------------------------------------------------------------------------------

def alarm_kinds(rows: list[rm.AlarmTimes]) -> tuple[list[AlarmKind], AlarmKind]:
    def one(kind: str, rs: list[rm.AlarmTimes]) -> AlarmKind:
        acks = [(r.acked_us - r.raised_us) / 1e6 for r in rs if r.acked_us is not None]
        clears = [(r.cleared_us - r.raised_us) / 1e6 for r in rs if r.cleared_us is not None]
        return AlarmKind(kind, len(rs), len(acks), len(clears), len(rs) - len(clears), Durations.of(acks),
                         Durations.of(clears))
    by: dict[str, list] = defaultdict(list)
    for r in rows:
        by[r.kind].append(r)
    kinds = sorted((one(k, rs) for k, rs in by.items()), key=lambda a: (-a.raised, a.kind))
    return kinds, one("", rows)


def order_categories(cfg: SiteConfig, rows: list[rm.OrderTimes], as_of_us: int
                     ) -> tuple[list[OrderCategory], OrderCategory]:
    cats = {c.id: c for c in cfg.maintenance.categories}

    def one(cid: str, rs: list[rm.OrderTimes]) -> OrderCategory:
        c = cats.get(cid)
        resp, rep = [], []
        counts = dict.fromkeys(("resp_ok", "resp_missed", "rep_ok", "rep_missed"), 0)
        for o in rs:
            tg = targets(cfg, o._asdict(), as_of_us)
            if tg.response_s is not None:
                resp.append(tg.response_s)
            if tg.repair_s is not None:
                rep.append(tg.repair_s)
            # on time once it happened within target; missed once late, or past the target and not yet
            if tg.respond_missed:
                counts["resp_missed"] += 1
            elif o.on_site_us is not None:
                counts["resp_ok"] += 1
            if tg.repair_missed:
                counts["rep_missed"] += 1
            elif o.done_us is not None:
                counts["rep_ok"] += 1
        sat = [o.satisfaction for o in rs if o.satisfaction is not None]
        return OrderCategory(
            cid, c.name if c else cid, (c.name_en or c.id) if c else cid, c.respond_minutes if c else None,
            c.repair_hours if c else None, len(rs), len(resp), counts["resp_ok"], counts["resp_missed"], len(rep),
            counts["rep_ok"], counts["rep_missed"], sum(1 for o in rs if o.state in ("new", "assigned", "on_site",
                                                                                      "reopened")),
            sum(1 for o in rs if o.reopened), sum(1 for o in rs if o.state == "followed_up"),
            sum(sat) / len(sat) if sat else None, Durations.of(resp), Durations.of(rep))
    by: dict[str, list] = defaultdict(list)
    for o in rows:
        by[o.category].append(o)
    order = {c.id: i for i, c in enumerate(cfg.maintenance.categories)}
    out = [one(cid, rs) for cid, rs in sorted(by.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))]
    return out, one("", rows)


def repeat_devices(cfg: SiteConfig, rows: list[tuple[str, int, int]], start_us: int, end_us: int,
                   names: dict[str, str]) -> list[RepeatDevice]:
    """`rows`: (device, order id, created_us) from repeat_days before the month to its end."""
    span = cfg.maintenance.repeat_days * DAY_US
    by: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for device, oid, created in rows:
        by[device].append((created, oid))
    out = []
    for device, orders in by.items():
        orders.sort()
        mine = [(t, o) for t, o in orders if start_us <= t < end_us]
        if not mine:
            continue
        times = [t for t, _ in orders]
        best: list[int] = []
        for t, _ in mine:
            # the window (t - span, t]: orders after t - span, up to and with t
            lo = bisect_right(times, t - span)
            hi = bisect_right(times, t)
            if hi - lo > len(best):
                best = [o for _, o in orders[lo:hi]]
        if len(best) >= 2:
            out.append(RepeatDevice(device, names.get(device, ""), len(mine), len(best), best,
                                    len(best) >= cfg.maintenance.repeat_faults))
    out.sort(key=lambda r: (not r.flagged, -r.in_window, r.device))
    return out


def inspection_plans(cfg: SiteConfig, rows: list[rm.TaskDue]) -> list[InspectionPlanRow]:
    plans = {p.id: p for p in cfg.maintenance.inspections}
    by: dict[str, list] = defaultdict(list)
    for t in rows:
        by[t.plan].append(t)
    order = {p.id: i for i, p in enumerate(cfg.maintenance.inspections)}
    out = []
    for pid, ts in sorted(by.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        p = plans.get(pid)
        out.append(InspectionPlanRow(
            pid, p.name if p else pid, (p.name_en or p.id) if p else pid, len(ts),
            sum(1 for t in ts if t.done_us is not None and t.done_us <= t.due_us),
            sum(1 for t in ts if t.done_us is not None and t.done_us > t.due_us),
            sum(1 for t in ts if t.done_us is None), sum(t.failed for t in ts)))
    return out


def patrol(cfg: SiteConfig, db, start_us: int, end_us: int, as_of: datetime
           ) -> tuple[list[PatrolRow], list[PatrolRow]]:
    """Per route and per guard, over the rounds starting in [start, end)."""
    from ..web.views.patrol import judge, match, schedules
    tz = ZoneInfo(cfg.site.timezone)
    # reads a day either side: a round near midnight takes reads of the next or previous day
    rows = patrol_checkins(db, start_us - DAY_US, end_us + DAY_US)
    first = from_us(start_us).astimezone(tz).date()
    last = from_us(end_us - 1).astimezone(tz).date()
    routes: list[PatrolRow] = []
    guards: dict[str, list[int]] = defaultdict(lambda: [0] * 7)   # rounds, due, read, on_time, late, early, missed
    readers = sorted(r.id for r in cfg.patrol.readers)
    # rounds before the ledger's first read are not judged: patrol was not recorded yet (a new
    # gateway, or reads gone with retention), which is not the guards' miss
    since = rm.first_checkin_us(db)
    for route in schedules(cfg):
        # each read matched to its round once for the month (judge's own rule), not once per day
        matched = match(route, rows, tz)
        c = [0] * 7
        if since is None or since >= end_us:
            routes.append(PatrolRow(route.id, route.name, *c))
            continue
        # a wand route's unread checkpoints are pending until a download after the round (as the page)
        downloaded = last_download_us(db, start_us - DAY_US, sorted(route.readers or readers)) if route.wand else None
        day = first
        while day <= last:
            for rd in judge(route, day, [], as_of, tz, downloaded, matched):
                if not start_us <= rd["start_us"] < end_us or since is None or rd["start_us"] < since:
                    continue
                n = rd["counts"]
                judged = n["on_time"] + n["late"] + n["early"] + n["missed"]
                if not judged:
                    continue          # not begun, or every checkpoint still pending
                read = judged - n["missed"]
                for i, v in enumerate((1, judged, read, n["on_time"], n["late"], n["early"], n["missed"])):
                    c[i] += v
                per: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])   # read, on_time, late, early
                for p in rd["checkpoints"]:
                    if p["status"] in ("on_time", "late", "early"):
                        g = per[p["guard"]]
                        g[0] += 1
                        g[("on_time", "late", "early").index(p["status"]) + 1] += 1
                owner = min(per, key=lambda g: (-per[g][0], g)) if per else ""
                for g, (r_, ot, lt, ea) in per.items():
                    acc = guards[g]
                    acc[1] += r_
                    acc[2] += r_
                    acc[3] += ot
                    acc[4] += lt
                    acc[5] += ea
                acc = guards[owner]
                acc[0] += 1
                acc[1] += n["missed"]
                acc[6] += n["missed"]
            day += timedelta(days=1)
        routes.append(PatrolRow(route.id, route.name, *c))
    guard_rows = [PatrolRow(g, g, *v) for g, v in sorted(guards.items(), key=lambda kv: (kv[0] == "", kv[0]))]
    return routes, guard_rows


def gates(cfg: SiteConfig, cards: list[rm.CardRefusal], doors: list[rm.DoorAlarm], tz: ZoneInfo
          ) -> tuple[list[GateRow], list[dict]]:
    names = {d.id: d.name or d.id for d in cfg.doors}
    kinds = ("unknown", "revoked", "expired", "forced_open", "held_open")
    per: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(kinds, 0))
    hours = [{"hour": h, **dict.fromkeys(kinds, 0)} for h in range(24)]
    for c in cards:
        per[c.door][c.category] += 1
        hours[from_us(c.ts_us).astimezone(tz).hour][c.category] += 1
    for d in doors:
        per[d.door][d.state] += 1
        hours[from_us(d.ts_us).astimezone(tz).hour][d.state] += 1
    order = {d.id: i for i, d in enumerate(cfg.doors)}
    rows = [GateRow(door, names.get(door, door), *(v[k] for k in kinds))
            for door, v in sorted(per.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))]
    return rows, hours


# ---- the month -----------------------------------------------------------------------------------

def build(cfg: SiteConfig, db, month: str, as_of: datetime, trend: int = 5,
          known: dict[str, TrendPoint] | None = None) -> ServiceMonth:
    """The month's report from the read-only ledger `db`, judged at `as_of` (what is not done by
    then is late once its target has passed). `known`: headline figures of months already built
    (by month), reused for the trend instead of building those months again."""
    tz = ZoneInfo(cfg.site.timezone)
    start, end = month_bounds(month, tz)
    as_of_us = to_us(as_of)
    alarms, alarm_total = alarm_kinds(rm.alarms_raised(db, start, end))
    orders, order_total = order_categories(cfg, rm.orders_created(db, start, end), as_of_us)
    names = {r["id"]: r["name"] for r in equipment_rows(db)} if has_tables(db) else {}
    names = {**{m.id: m.name for m in cfg.meters}, **names}
    repeats = repeat_devices(cfg, rm.device_orders(db, start - cfg.maintenance.repeat_days * DAY_US, end),
                             start, end, names)
    inspections = inspection_plans(cfg, rm.tasks_due(db, start, end))
    routes, guards = patrol(cfg, db, start, end, as_of)
    gate_rows, hours = gates(cfg, rm.card_refusals(db, start, end), rm.door_alarms(db, start, end), tz)
    report = ServiceMonth(cfg.site.id, cfg.site.name, month, cfg.site.timezone, start, end, as_of_us, alarms,
                          alarm_total, orders, order_total, repeats, cfg.maintenance.repeat_faults,
                          cfg.maintenance.repeat_days, inspections, routes, guards, gate_rows, hours)
    points = []
    for m in previous_months(month, trend):
        if known is not None and m in known:
            points.append(known[m])
        else:
            points.append(build(cfg, db, m, as_of, trend=0).headline())
    report.trend = points + [report.headline()]
    if known is not None:
        known[month] = report.trend[-1]
    return report
