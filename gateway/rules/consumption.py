"""Abnormal consumption: a circuit's kWh in a daily window against its own trailing baseline.

Windows are in site local time: `night` = night.start .. night.end (crossing midnight when
end <= start), `day` = 00:00 .. 24:00. The counter's value at each window edge is interpolated
linearly between the readings either side of it (not when they are more than MAX_GAP apart: that
window is then not judged). When a window's end has been passed, its kWh is compared with the
median of the meter's last `baseline_days` windows (judged once at least `min_days` exist):
strictly more than factor × median, and at least `min_excess_kwh` above it, raises (source =
meter); the next normal window clears. Every complete window joins the baseline, abnormal ones
too (the median shrugs off a few). A window with a counter going backwards or a recorded
replacement is not judged. `seed(meter, kwh_list)` preloads a baseline (from the ledger).
"""

from __future__ import annotations

import statistics
from collections import deque
from datetime import datetime, time, timedelta

from ..events import Reading
from .base import Rule, fmt

MAX_GAP = timedelta(hours=3)


class ConsumptionRuleImpl(Rule):
    kind = "consumption"
    wants = (Reading,)

    def __init__(self, cfg, site, book):
        super().__init__(cfg, site, book)
        self.meters = self.select_meters()
        if cfg.period == "night":
            self.w_start, self.w_end = time.fromisoformat(cfg.night.start), time.fromisoformat(cfg.night.end)
        else:
            self.w_start = self.w_end = time(0, 0)
        self.last: dict[str, tuple[datetime, float]] = {}
        self.edges: dict[str, dict[datetime, float]] = {}
        self.history: dict[str, deque] = {m: deque(maxlen=cfg.baseline_days) for m in self.meters}

    def keys(self, event_type):
        return self.meters

    def seed(self, meter: str, kwh: list[float]) -> None:
        self.history[meter].extend(kwh)

    def note_replacement(self, meter: str, at: datetime) -> None:
        self.last.pop(meter, None)
        self.edges.pop(meter, None)

    def window(self, end: datetime) -> datetime:
        """The start of the window that ends at `end`."""
        if self.cfg.period == "day":
            return datetime.combine(end.date() - timedelta(days=1), self.w_start, end.tzinfo)
        d = end.date() if self.w_end > self.w_start else end.date() - timedelta(days=1)
        return datetime.combine(d, self.w_start, end.tzinfo)

    def _edges_between(self, t0: datetime, t1: datetime):
        """Window edges (local datetimes, start or end) in (t0, t1]."""
        tz = self.site.tz
        a, b = t0.astimezone(tz), t1.astimezone(tz)
        out = []
        d = a.date() - timedelta(days=1)
        while d <= b.date():
            for tt, what in ((self.w_start, "start"), (self.w_end, "end")):
                e = datetime.combine(d, tt, tz)
                if a < e <= b:
                    out.append((e, what))
            d += timedelta(days=1)
        out.sort()
        return out

    def on_event(self, r: Reading) -> None:
        v = r.counters.get(self.cfg.field) if r.counters else None
        v = float(v) if v is not None else r.values.get(self.cfg.field)
        if v is None:
            return
        m = r.meter
        prev = self.last.get(m)
        self.last[m] = (r.ts, v)
        if prev is None or r.ts <= prev[0]:
            return
        t0, v0 = prev
        if v < v0:                                          # counter went backwards: a broken window
            self.edges.pop(m, None)
            return
        edges = self._edges_between(t0, r.ts)
        if not edges:
            return
        store = self.edges.setdefault(m, {})
        if r.ts - t0 > MAX_GAP:                             # too long without readings to interpolate
            store.clear()
            return
        span = (r.ts - t0).total_seconds()
        for e, what in edges:                               # at one instant, "end" sorts before "start"
            val = v0 + (v - v0) * (e - t0).total_seconds() / span
            if what == "end":
                start = self.window(e)
                if start in store:
                    self._judge(m, start, e, val - store.pop(start), r.ts)
                store.clear()                               # nothing older can still be completed
            else:
                store[e] = val

    def _judge(self, m: str, start: datetime, end: datetime, kwh: float, at: datetime) -> None:
        hist = self.history[m]
        if len(hist) >= self.cfg.min_days:
            median = statistics.median(hist)
            name = self.site.meter_name(m)
            label = "夜间" if self.cfg.period == "night" else "当日"
            span = f"{start:%m-%d %H:%M}–{end:%H:%M}" if self.cfg.period == "night" else f"{start:%m-%d}"
            if kwh > self.cfg.factor * median + 1e-9 and kwh - median >= self.cfg.min_excess_kwh - 1e-9:
                ratio = f"{kwh / median:.1f} 倍" if median > 0 else "（基线为 0）"
                self.raise_(m, at, f"{name} {label}用电异常：{span} {fmt(kwh, 'kWh')}，近 {len(hist)} 天中位数 "
                                   f"{fmt(median, 'kWh')}，{ratio}",
                            f"{name} abnormal {self.cfg.period} consumption {span}: {fmt(kwh, 'kWh')} against a "
                            f"{len(hist)}-day median of {fmt(median, 'kWh')}",
                            value=kwh, details={"meter": m, "window_start": start.isoformat(),
                                                "window_end": end.isoformat(), "kwh": kwh, "median": median,
                                                "days": len(hist)})
            elif self.active(m) is not None:
                self.clear(m, at, "a normal window")
        hist.append(kwh)
