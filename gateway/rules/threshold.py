"""Threshold on reading fields, with hysteresis and a `for` duration.

A value is bad when strictly above `above` or strictly below `below` (exactly at a limit is
fine). The alert is raised when a meter has been bad continuously for `for_s` seconds (measured
from the first bad reading, at a later reading or at tick). Once raised, it clears only when every
watched field is back inside by the hysteresis (<= above - h and >= below + h); in the band
between, the alert stays as it is, and a pending (not yet raised) condition is dropped.
With several fields (per-phase voltages), the meter has one alert naming the worst field.
An alert taken back after a restart needs nothing more: the next reading inside the limits (by
the hysteresis) clears it, a bad one keeps it (updated only if worse).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..events import Reading
from .base import Rule, fmt, label

_EPS = 1e-9   # 0.8 + 0.02 is 0.8200000000000001 in floats: the band edge must not depend on that


class ThresholdRuleImpl(Rule):
    kind = "threshold"
    wants = (Reading,)

    def __init__(self, cfg, site, book):
        super().__init__(cfg, site, book)
        self.fields = cfg.fields()
        self.above, self.below, self.h = cfg.above, cfg.below, cfg.hysteresis
        self.for_td = timedelta(seconds=cfg.for_s)
        self.require = list(cfg.require.items())
        self.meters = self.select_meters()
        self.since: dict[str, datetime] = {}                 # meter -> first bad reading (pending or raised)
        self.last_bad: dict[str, tuple[str, float, str]] = {}  # meter -> (field, value, "above"/"below")

    def keys(self, event_type):
        return self.meters

    def _worst(self, values) -> tuple[str, float, str] | None:
        worst, margin = None, 0.0
        for f in self.fields:
            v = values.get(f)
            if v is None:
                continue
            if self.above is not None and v > self.above and v - self.above > margin - 1e-12:
                worst, margin = (f, v, "above"), v - self.above
            if self.below is not None and v < self.below and self.below - v > margin - 1e-12:
                worst, margin = (f, v, "below"), self.below - v
        return worst

    def _inside(self, values) -> bool:
        """Back inside the limits by the hysteresis, for every watched field present."""
        for f in self.fields:
            v = values.get(f)
            if v is None:
                continue
            if self.above is not None and v > self.above - self.h + _EPS:
                return False
            if self.below is not None and v < self.below + self.h - _EPS:
                return False
        return True

    def on_event(self, r: Reading) -> None:
        values = r.values
        for f, least in self.require:
            v = values.get(f)
            if v is None or v < least:
                return                                          # not judged (no load for pf ...)
        m = r.meter
        bad = self._worst(values)
        if bad is not None:
            self.last_bad[m] = bad
            since = self.since.setdefault(m, r.ts)
            if r.ts - since >= self.for_td:
                a = self.active(m)
                if a is None or self._worse(bad, a):
                    self._raise(m, r.ts, since)
            return
        raised = self.active(m) is not None
        if not raised:
            self.since.pop(m, None)
            self.last_bad.pop(m, None)
        elif self._inside(values):
            self.since.pop(m, None)
            self.last_bad.pop(m, None)
            self.clear(m, r.ts, "back inside the limits")

    def restore_alert(self, a) -> bool | None:
        return False if a.source in self.meters else None

    @staticmethod
    def _worse(bad: tuple[str, float, str], a) -> bool:
        """An active alert is updated only when the value gets worse (not at every reading)."""
        _, v, side = bad
        return a.value is None or (v > a.value if side == "above" else v < a.value)

    def tick(self, now: datetime) -> None:
        if not self.since or not self.for_td:
            return
        for m, since in list(self.since.items()):
            if now - since >= self.for_td and self.active(m) is None:
                self._raise(m, now, since)

    def _raise(self, m: str, at: datetime, since: datetime) -> None:
        f, v, side = self.last_bad[m]
        zh, en, unit = label(f)
        limit = self.above if side == "above" else self.below
        name = self.site.meter_name(m)
        word = "超过上限" if side == "above" else "低于下限"
        msg = f"{name} {zh} {fmt(v, unit)} {word} {fmt(limit, unit)}"
        msg_en = f"{name} {en} {fmt(v, unit)} {'above' if side == 'above' else 'below'} limit {fmt(limit, unit)}"
        self.raise_(m, at, msg, msg_en, value=v,
                    details={"meter": m, "field": f, "limit": limit, "side": side, "since": since.isoformat()})
