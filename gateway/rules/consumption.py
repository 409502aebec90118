"""Abnormal consumption: a circuit's kWh in a daily window against its own trailing baseline.

Windows are in site local time: `night` = night.start .. night.end (crossing midnight when
end <= start), `day` = 00:00 .. 24:00. The counter's value at each window edge is interpolated
linearly between the readings either side of it (not when they are more than MAX_GAP apart: that
window is then not judged). When a window's end has been passed, its kWh is compared with the
median of the meter's last `baseline_days` windows (judged once at least `min_days` exist):
strictly more than factor × median, and at least `min_excess_kwh` above it, raises (source =
meter); the next normal window clears. Every complete window joins the baseline, abnormal ones
too (the median shrugs off a few). A window with a counter going backwards or a recorded
replacement is not judged (a replacement recorded before the new meter's first reading breaks
the window at that reading; one recorded after it drops the open window if it began before the
replacement). `seed(meter, kwh_list)` preloads a baseline.

After a restart (gateway/rules/restore.py), `warm_edges(until)` says at which instants the rule
needs each meter's counter, and `warm(meter, around, last, replaced)` rebuilds from the ledger's
readings either side of those instants what the rule would have seen live: the baseline of the
last `baseline_days` complete windows, and the open window's start with the last reading, so a
window that spans the restart is still judged. Not seen by the warm-up (the live rule would skip
such a window): a counter that stepped backwards inside a window and was higher again by its end.
"""

from __future__ import annotations

import statistics
from bisect import insort
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
        self.replaced: dict[str, list[datetime]] = {}     # replacements no reading has reached yet

    def keys(self, event_type):
        return self.meters

    def seed(self, meter: str, kwh: list[float]) -> None:
        self.history[meter].extend(kwh)

    def note_replacement(self, meter: str, at: datetime, now: datetime | None = None) -> None:
        if meter not in self.history:
            return
        prev = self.last.get(meter)
        if prev is not None and at <= prev[0]:
            # readings after the swap are in already: the open window spans it if it began before
            store = self.edges.get(meter)
            if store and any(start < at for start in store):
                store.clear()
            return
        insort(self.replaced.setdefault(meter, []), at)

    # ---- after a restart ---------------------------------------------------------------------
    def restore_alert(self, a) -> bool | None:
        return False if a.source in self.history else None      # the next normal window clears it

    def warm_edges(self, until: datetime) -> list[datetime]:
        """The window edges (start and end instants, UTC-aware) of the last baseline_days + 1
        days up to `until`: the counter at each of them rebuilds the baseline."""
        days = self.cfg.baseline_days + 2
        out = {e for e, _ in self._edges_between(until - timedelta(days=days), until)}
        return sorted(out)

    @staticmethod
    def interpolate(e: datetime, t0: datetime, v0: float, t1: datetime, v1: float) -> float | None:
        """The counter at edge e from the readings either side (t0 < e <= t1), as the live rule
        does; None when they cannot tell it (too far apart, or the counter went backwards)."""
        if not t0 < e <= t1 or t1 - t0 > MAX_GAP or v1 < v0:
            return None
        return v0 + (v1 - v0) * (e - t0).total_seconds() / (t1 - t0).total_seconds()

    def warm(self, meter: str, around: dict[datetime, tuple], last: tuple[datetime, float] | None,
             replaced: list[datetime] = ()) -> int:
        """Rebuild the meter's baseline from the ledger. `around` maps each edge of `warm_edges`
        to the readings either side of it ((t0, v0) before it, (t1, v1) at or after it; either
        None), `last` is the meter's last reading, `replaced` the recorded replacement times.
        Windows that end by `last` join the baseline (oldest first), as they did live; the open
        window's start is kept and `last` becomes the reading the next one is compared with.
        Returns the number of windows added to the baseline."""
        if meter not in self.history or last is None:
            return 0
        t_last = last[0]
        values: dict[datetime, float] = {}
        for e, (before, after) in around.items():
            if before is None or after is None or after[0] > t_last:
                continue
            v = self.interpolate(e, before[0], before[1], after[0], after[1])
            if v is not None:
                values[e] = v
        added = 0
        edges = [e for e in sorted(around) if e <= t_last]
        store: dict[datetime, float] = {}
        for e in edges:
            # at one instant the window that ends is taken before the one that starts
            if self._is_end(e):
                start = self.window(e)
                if start in values and e in values and start in store \
                        and not any(start < r <= e for r in replaced):
                    kwh = values[e] - values[start]
                    if kwh >= 0:
                        self.history[meter].append(kwh)
                        added += 1
                store.clear()
            if self._is_start(e) and e in values:
                store[e] = values[e]
        open_store = {start: v for start, v in store.items() if not any(start < r <= t_last for r in replaced)}
        if open_store:
            self.edges[meter] = open_store
        self.last.setdefault(meter, last)
        return added

    def _is_end(self, e: datetime) -> bool:
        return e.astimezone(self.site.tz).time() == self.w_end

    def _is_start(self, e: datetime) -> bool:
        return e.astimezone(self.site.tz).time() == self.w_start

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
        pending = self.replaced.get(m)
        if pending and r.ts >= pending[0]:                  # the new meter's first reading
            while pending and pending[0] <= r.ts:
                pending.pop(0)
            if not pending:
                del self.replaced[m]
            self.edges.pop(m, None)
            return
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
